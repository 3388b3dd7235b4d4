"""Procedural people for the synthetic data set (training.synth): what stays the same in every image of one
identity (``Person``: body shape, skin, hair, clothing colours and pattern, accessories), and how one pose of it is
drawn (``Figure``: walking phase, viewpoint, painter's order, accessories shown or hidden by the view).

Clothing colours come from one small, skewed palette shared by all identities, so colour alone does not
identify a person.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

RGB = tuple[int, int, int]

# Clothing palette with weights skewed like a street: many people wear black, grey, white or denim.
UPPER_COLOURS: dict[str, tuple[RGB, float]] = {
    "black": ((28, 28, 32), 3.0),
    "white": ((225, 225, 220), 2.5),
    "grey": ((125, 125, 130), 2.0),
    "navy": ((32, 42, 92), 1.5),
    "blue": ((50, 95, 175), 1.0),
    "red": ((180, 38, 42), 1.0),
    "green": ((45, 110, 62), 0.8),
    "beige": ((200, 180, 140), 1.0),
    "brown": ((110, 72, 42), 0.6),
    "yellow": ((222, 190, 55), 0.5),
    "pink": ((220, 135, 165), 0.5),
    "purple": ((100, 52, 130), 0.4),
}
LOWER_COLOURS: dict[str, tuple[RGB, float]] = {
    "black": ((28, 28, 32), 3.0),
    "denim": ((70, 95, 140), 3.0),
    "grey": ((125, 125, 130), 1.5),
    "navy": ((32, 42, 92), 1.5),
    "beige": ((200, 180, 140), 1.0),
    "khaki": ((150, 140, 95), 1.0),
    "brown": ((110, 72, 42), 0.6),
    "white": ((225, 225, 220), 0.4),
}
# Stripes, checks and logos are mostly white or black on a coloured garment: the accent says little about who it is.
ACCENT_COLOURS: dict[str, tuple[RGB, float]] = {
    "white": ((225, 225, 220), 3.0),
    "black": ((28, 28, 32), 3.0),
    "grey": ((125, 125, 130), 1.0),
    "navy": ((32, 42, 92), 1.0),
    "red": ((180, 38, 42), 1.0),
    "yellow": ((222, 190, 55), 0.6),
}
SKIN_TONES: list[RGB] = [(250, 215, 175), (236, 190, 140), (215, 165, 115), (190, 130, 80), (140, 90, 55), (95, 62, 42)]
HAIR_COLOURS: list[RGB] = [(22, 18, 16), (58, 40, 28), (108, 74, 42), (200, 170, 105), (150, 150, 150), (128, 60, 32)]
SHOE_COLOURS: list[RGB] = [(20, 20, 22), (235, 235, 235), (95, 65, 40), (120, 120, 125)]

PATTERNS = ("solid", "hstripes", "vstripes", "checks", "logo")
PATTERN_PERIODS = (0.06, 0.09, 0.13)  # fraction of the person's height; visible even at 64x32
LOGO_SHAPES = ("circle", "square", "triangle", "diamond")
HAIR_STYLES = ("short", "long", "bun", "bald")
LOWER_STYLES = ("trousers", "shorts", "skirt")
VIEWS = ("front", "back", "left", "right")


def _weighted(rng: np.random.Generator, table: dict[str, tuple[RGB, float]], exclude: RGB | None = None) -> RGB:
    colours = [c for c, _ in table.values() if c != exclude]
    weights = np.array([w for c, w in table.values() if c != exclude])
    return colours[rng.choice(len(colours), p=weights / weights.sum())]


@dataclass(frozen=True)
class Person:
    """The cues that stay the same in every image of one identity."""

    height: float  # of the box, at scale 1
    build: float  # width factor
    head: float  # head size factor
    legs: float  # legs' share of the height
    skin: RGB
    hair: RGB
    hair_style: str
    upper: RGB
    accent: RGB  # pattern colour
    pattern: str
    period: float
    logo: str
    long_sleeves: bool
    lower: RGB
    lower_style: str
    shoes: RGB
    hat: RGB | None
    bag: RGB | None
    bag_side: int  # +1: the person's right, -1: left
    backpack: RGB | None


def make_person(rng: np.random.Generator) -> Person:
    upper = _weighted(rng, UPPER_COLOURS)
    lower_style = LOWER_STYLES[rng.choice(3, p=[0.7, 0.15, 0.15])]
    return Person(
        height=float(rng.uniform(0.86, 1.0)),
        build=float(rng.uniform(0.8, 1.25)),
        head=float(rng.uniform(0.9, 1.12)),
        legs=float(rng.uniform(0.44, 0.51)),
        skin=SKIN_TONES[rng.integers(len(SKIN_TONES))],
        hair=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))],
        hair_style=HAIR_STYLES[rng.choice(4, p=[0.45, 0.3, 0.13, 0.12])],
        upper=upper,
        accent=_weighted(rng, ACCENT_COLOURS, exclude=upper),
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        period=float(PATTERN_PERIODS[rng.integers(len(PATTERN_PERIODS))]),
        logo=LOGO_SHAPES[rng.integers(len(LOGO_SHAPES))],
        long_sleeves=bool(rng.random() < 0.6),
        lower=_weighted(rng, LOWER_COLOURS),
        lower_style=lower_style,
        shoes=SHOE_COLOURS[rng.integers(len(SHOE_COLOURS))],
        hat=_weighted(rng, UPPER_COLOURS) if rng.random() < 0.2 else None,
        bag=_weighted(rng, UPPER_COLOURS) if rng.random() < 0.3 else None,
        bag_side=int(rng.choice([-1, 1])),
        backpack=_weighted(rng, UPPER_COLOURS) if rng.random() < 0.3 else None,
    )


def _pt(x: float, y: float) -> tuple[int, int]:
    return int(round(x)), int(round(y))


def _rect(img: np.ndarray, p0: tuple[int, int], p1: tuple[int, int], colour: RGB) -> None:
    cv2.rectangle(img, p0, p1, colour, -1, cv2.LINE_AA)


def _disc(img: np.ndarray, centre: tuple[int, int], radius: int, colour: RGB) -> None:
    cv2.circle(img, centre, radius, colour, -1, cv2.LINE_AA)


def _ellipse(
    img: np.ndarray, centre: tuple[int, int], axes: tuple[int, int], start: float, end: float, colour: RGB
) -> None:
    cv2.ellipse(img, centre, axes, 0, start, end, colour, -1, cv2.LINE_AA)


def _limb(img: np.ndarray, a: tuple[float, float], b: tuple[float, float], width: float, colour: RGB) -> None:
    cv2.line(img, _pt(*a), _pt(*b), colour, max(1, int(round(width))), cv2.LINE_AA)


def _pattern_texture(p: Person, shape: tuple[int, int], h: float, x0: float, y0: float, view: str) -> np.ndarray:
    """The upper garment's texture over the whole canvas, anchored at the shoulders so it moves with the body."""
    texture = np.empty((*shape, 3), np.uint8)
    texture[:] = p.upper
    half = max(1.0, p.period * h / 2)
    ys = ((np.arange(shape[0]) - y0) // half).astype(int) % 2 == 1
    xs = ((np.arange(shape[1]) - x0) // half).astype(int) % 2 == 1
    if p.pattern == "hstripes":
        texture[ys] = p.accent
    elif p.pattern == "vstripes":
        texture[:, xs] = p.accent
    elif p.pattern == "checks":
        texture[ys[:, None] ^ xs[None, :]] = p.accent
    elif p.pattern == "logo" and view != "back":
        size = 0.07 * h * (0.6 if view in ("left", "right") else 1.0)
        cx, cy = x0, y0 + 0.1 * h
        if p.logo == "circle":
            _disc(texture, _pt(cx, cy), max(1, int(size)), p.accent)
        elif p.logo == "square":
            cv2.rectangle(texture, _pt(cx - size, cy - size), _pt(cx + size, cy + size), p.accent, -1)
        else:
            if p.logo == "triangle":
                pts = [(cx, cy - size), (cx + size, cy + size), (cx - size, cy + size)]
            else:
                pts = [(cx, cy - size * 1.2), (cx + size, cy), (cx, cy + size * 1.2), (cx - size, cy)]
            cv2.fillPoly(texture, [np.array([_pt(*q) for q in pts], np.int32)], p.accent, cv2.LINE_AA)
    return texture


class Figure:
    """One person's pose in one image: the body's geometry, and the parts drawn in painter's order.

    ``h`` pixels tall, centred at ``cx``, feet at row ``feet``; ``view`` is where the person faces (front:
    towards the camera); ``phase`` is the walking phase in radians.
    """

    def __init__(self, p: Person, view: str, phase: float, h: float, cx: float, feet: float):
        self.p, self.view, self.h, self.cx, self.feet = p, view, h, cx, feet
        self.side = self.view in ("left", "right")
        self.facing = -1.0 if self.view == "left" else 1.0  # +x is the direction the person faces, in side views
        self.top = self.feet - self.h
        self.r_head = 0.062 * self.h * self.p.head
        self.head_c = (self.cx + (0.015 * self.h * self.facing if self.side else 0.0), self.top + self.r_head)
        self.shoulder_y = self.top + 2 * self.r_head + 0.02 * self.h
        self.hip_y = self.feet - self.p.legs * self.h
        self.sw = (0.075 if self.side else 0.12) * self.h * self.p.build  # half shoulder width
        self.hw = (0.07 if self.side else 0.10) * self.h * self.p.build  # half hip width
        self.limb_w = 0.075 * self.h * self.p.build
        self.arm_w = 0.055 * self.h * self.p.build
        self.swing = math.sin(phase)

        # Legs: in side views they swing; from the front or back one foot lifts a little.
        self.legs = []
        for s in (-1.0, 1.0):
            hip = (self.cx + (0.02 * self.h * s if self.side else 0.5 * self.hw * s), self.hip_y)
            if self.side:
                angle = 0.42 * self.swing * s
                foot = (
                    hip[0] + self.facing * math.sin(angle) * (self.feet - self.hip_y),
                    self.hip_y + math.cos(angle) * (self.feet - self.hip_y),
                )
            else:
                foot = (hip[0] + 0.01 * self.h * s, self.feet - 0.03 * self.h * max(0.0, self.swing * s))
            self.legs.append((hip, foot))
        # Arms swing against the legs.
        self.arms = []
        for s in (-1.0, 1.0):
            shoulder = (
                self.cx + (0.0 if self.side else (self.sw - 0.4 * self.arm_w) * s),
                self.shoulder_y + 0.02 * self.h,
            )
            angle = -0.4 * self.swing * s if self.side else 0.08 * s
            length = 0.36 * self.h * (1.0 if self.side else 1.0 - 0.06 * abs(self.swing))
            hand = (
                shoulder[0] + math.sin(angle) * length * (self.facing if self.side else 1.0),
                shoulder[1] + math.cos(angle) * length,
            )
            self.arms.append((shoulder, hand))

    def leg(self, img: np.ndarray, i: int) -> None:
        hip, foot = self.legs[i]
        knee = ((hip[0] + foot[0]) / 2, (hip[1] + foot[1]) / 2)
        if self.p.lower_style == "trousers":
            _limb(img, hip, foot, self.limb_w, self.p.lower)
        elif self.p.lower_style == "shorts":
            _limb(img, knee, foot, self.limb_w * 0.8, self.p.skin)
            _limb(img, hip, knee, self.limb_w * 1.05, self.p.lower)
        else:
            _limb(img, hip, foot, self.limb_w * 0.75, self.p.skin)
        _ellipse(
            img,
            _pt(foot[0] + (0.02 * self.h * self.facing if self.side else 0), foot[1]),
            _pt(0.045 * self.h, 0.022 * self.h),
            0,
            360,
            self.p.shoes,
        )

    def arm(self, img: np.ndarray, i: int) -> None:
        shoulder, hand = self.arms[i]
        sleeve_end = (
            hand if self.p.long_sleeves else (shoulder[0] * 0.65 + hand[0] * 0.35, shoulder[1] * 0.65 + hand[1] * 0.35)
        )
        _limb(img, shoulder, hand, self.arm_w * 0.85, self.p.skin)
        _limb(img, shoulder, sleeve_end, self.arm_w, self.p.upper)
        _disc(img, _pt(*hand), max(1, int(self.arm_w * 0.55)), self.p.skin)

    def backpack(self, img: np.ndarray) -> None:
        if self.p.backpack is None:
            return
        if self.view == "back":
            w, y0 = self.sw * 0.8, self.shoulder_y + 0.03 * self.h
            _rect(img, _pt(self.cx - w, y0), _pt(self.cx + w, y0 + 0.2 * self.h), self.p.backpack)
        elif self.side:
            x_back = self.cx - self.facing * self.sw
            x0, x1 = sorted((x_back, x_back - self.facing * 0.08 * self.h))
            _rect(
                img, _pt(x0, self.shoulder_y + 0.03 * self.h), _pt(x1, self.shoulder_y + 0.23 * self.h), self.p.backpack
            )
        else:  # from the front only the straps show
            for s in (-1.0, 1.0):
                _limb(
                    img,
                    (self.cx + 0.55 * self.sw * s, self.shoulder_y),
                    (self.cx + 0.6 * self.sw * s, self.shoulder_y + 0.2 * self.h),
                    0.02 * self.h,
                    self.p.backpack,
                )

    def bag(self, img: np.ndarray) -> None:
        if self.p.bag is None:
            return
        # Image x of the bag's side: the person's right is image-left from the front, image-right from the back.
        if self.side:
            visible = (self.p.bag_side == 1) == (self.view == "right")  # the near side carries it
            if not visible:
                return
            bx = self.cx - self.facing * 0.02 * self.h
        else:
            sign = -self.p.bag_side if self.view == "front" else self.p.bag_side
            bx = self.cx + sign * (self.hw + 0.07 * self.h)
            _limb(
                img,
                (self.cx - sign * self.sw * 0.7, self.shoulder_y),
                (bx, self.hip_y - 0.02 * self.h),
                0.012 * self.h,
                self.p.bag,
            )
        _rect(
            img,
            _pt(bx - 0.05 * self.h, self.hip_y - 0.04 * self.h),
            _pt(bx + 0.05 * self.h, self.hip_y + 0.07 * self.h),
            self.p.bag,
        )

    def head(self, img: np.ndarray) -> None:
        hx, hy = self.head_c
        neck = 0.35 * self.r_head
        _rect(img, _pt(hx - neck, hy), _pt(hx + neck, self.shoulder_y + 0.01 * self.h), self.p.skin)
        _disc(img, _pt(hx, hy), max(1, int(self.r_head)), self.p.skin)
        if self.p.hair_style != "bald":
            if self.view == "back":
                _disc(img, _pt(hx, hy), max(1, int(self.r_head * 1.05)), self.p.hair)
            else:
                off = -self.facing * 0.35 * self.r_head if self.side else 0.0
                _ellipse(
                    img,
                    _pt(hx + off, hy - 0.25 * self.r_head),
                    _pt(self.r_head * 1.02, self.r_head * 0.85),
                    180,
                    360,
                    self.p.hair,
                )
            if self.p.hair_style == "bun":
                bun_x = hx - self.facing * 0.8 * self.r_head if self.side else hx
                _disc(img, _pt(bun_x, hy - 0.9 * self.r_head), max(1, int(0.45 * self.r_head)), self.p.hair)
        if self.view == "front":
            for s in (-1.0, 1.0):
                cv2.circle(img, _pt(hx + 0.35 * self.r_head * s, hy), max(1, int(0.1 * self.r_head)), (30, 25, 25), -1)
        if self.p.hat is not None:
            _ellipse(
                img, _pt(hx, hy - 0.3 * self.r_head), _pt(self.r_head * 1.08, self.r_head * 0.9), 180, 360, self.p.hat
            )
            brim_x = hx + self.facing * 0.9 * self.r_head if self.side else hx
            brim_w = 0.7 * self.r_head if self.side else 1.1 * self.r_head
            _ellipse(img, _pt(brim_x, hy - 0.3 * self.r_head), _pt(brim_w, 0.18 * self.r_head), 0, 360, self.p.hat)

    def torso(self, img: np.ndarray) -> None:
        # Garment as a soft mask, filled with its texture: stripes and checks follow the body.
        y1 = self.hip_y + 0.03 * self.h
        x_lo, x_hi = int(max(0, self.cx - self.sw - 2)), int(min(img.shape[1], self.cx + self.sw + 3))
        y_lo, y_hi = int(max(0, self.shoulder_y - 0.03 * self.h - 2)), int(min(img.shape[0], y1 + 3))
        if x_hi <= x_lo or y_hi <= y_lo:
            return
        mask = np.zeros(img.shape[:2], np.uint8)
        pts = [
            (self.cx - self.sw, self.shoulder_y),
            (self.cx + self.sw, self.shoulder_y),
            (self.cx + self.hw * 1.05, y1),
            (self.cx - self.hw * 1.05, y1),
        ]
        cv2.fillPoly(mask, [np.array([_pt(*q) for q in pts], np.int32)], 255, cv2.LINE_AA)
        _ellipse(mask, _pt(self.cx, self.shoulder_y), _pt(self.sw, 0.03 * self.h), 180, 360, 255)
        texture = _pattern_texture(self.p, img.shape[:2], self.h, self.cx, self.shoulder_y, self.view)
        alpha = mask[y_lo:y_hi, x_lo:x_hi, None].astype(np.float32) / 255.0
        region = img[y_lo:y_hi, x_lo:x_hi]
        region[:] = (region * (1 - alpha) + texture[y_lo:y_hi, x_lo:x_hi] * alpha).astype(np.uint8)

    def hips(self, img: np.ndarray) -> None:
        if self.p.lower_style == "skirt":
            pts = [
                (self.cx - self.hw, self.hip_y),
                (self.cx + self.hw, self.hip_y),
                (self.cx + self.hw * 1.5, self.hip_y + 0.2 * self.h),
                (self.cx - self.hw * 1.5, self.hip_y + 0.2 * self.h),
            ]
        else:
            pts = [
                (self.cx - self.hw, self.hip_y),
                (self.cx + self.hw, self.hip_y),
                (self.cx + self.hw, self.hip_y + 0.07 * self.h),
                (self.cx - self.hw, self.hip_y + 0.07 * self.h),
            ]
        cv2.fillPoly(img, [np.array([_pt(*q) for q in pts], np.int32)], self.p.lower, cv2.LINE_AA)

    def long_hair(self, img: np.ndarray) -> None:
        if self.p.hair_style != "long":
            return
        hx, hy = self.head_c
        if self.view == "front":  # framing the face, down to the shoulders
            x0, x1, y1 = hx - 1.12 * self.r_head, hx + 1.12 * self.r_head, self.shoulder_y + 0.04 * self.h
        elif self.view == "back":  # over the upper back
            x0, x1, y1 = hx - self.r_head, hx + self.r_head, self.shoulder_y + 0.09 * self.h
        else:
            (x0, x1), y1 = sorted((hx, hx - self.facing * 1.1 * self.r_head)), self.shoulder_y + 0.09 * self.h
        _rect(img, _pt(x0, hy - 0.2 * self.r_head), _pt(x1, y1), self.p.hair)

    def draw(self, img: np.ndarray) -> None:
        leg, arm = self.leg, self.arm
        if self.view == "front":
            order = [(self.long_hair,), (leg, 0), (leg, 1), (self.hips,), (self.torso,), (self.bag,), (self.backpack,)]
            order += [(arm, 0), (arm, 1), (self.head,)]
        elif self.view == "back":
            order = [(leg, 0), (leg, 1), (self.hips,), (arm, 0), (arm, 1), (self.torso,), (self.long_hair,)]
            order += [(self.backpack,), (self.bag,), (self.head,)]
        else:  # the far limbs first, then the body, then the near limbs
            order = [(arm, 0), (leg, 0), (self.backpack,), (self.hips,), (self.torso,), (leg, 1), (self.bag,)]
            order += [(arm, 1), (self.long_hair,), (self.head,)]
        for part, *args in order:
            part(img, *args)


def draw_person(img: np.ndarray, p: Person, view: str, phase: float, h: float, cx: float, feet: float) -> None:
    """Draw person ``p`` in place (see ``Figure``)."""
    Figure(p, view, phase, h, cx, feet).draw(img)
