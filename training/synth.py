"""Synthetic person re-identification data in the Market-1501 layout.

No public ReID data set can be downloaded here, so the tests and the demo train on people drawn with OpenCV.
An identity is a fixed set of cues (body shape, skin, hair, clothing colours and pattern, accessories); every
image of it varies the pose, viewpoint, scale, position, background, camera colour cast, blur, illumination and
occlusion. Clothing colours come from one small, skewed palette shared by all identities, so colour alone
does not identify a person: a colour histogram stays well below what a CNN learns from shape and pattern.

Every image draws from its own random stream, seeded by (seed, person, camera, shot), so the output is
byte-identical for a seed whatever the number of threads.

    python -m training.synth data/synth --ids 200 --cams 6 --seed 0
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

SPLITS = ("bounding_box_train", "query", "bounding_box_test")
GENERATOR_VERSION = 1

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
SCENE_SATURATION = 0.35  # backgrounds pulled towards grey, so the person carries most of the colour
CAST = 0.08  # camera colour cast: per-channel gains in 1 +- CAST
ILLUMINATION = 0.15  # per-image light level: gain in 1 +- ILLUMINATION
OWN_SCENES = 2  # backgrounds only one camera sees
SHARED_SCENES = 6  # backgrounds every camera sees (places in view of several cameras)
SHADOW = 0.1  # per-image light falloff across the box, 1 +- SHADOW at either end

# Salts keep the random streams of different kinds of things apart.
_PERSON, _PLAN, _SCENE, _CAMERA, _SHOT = 1, 2, 3, 4, 5


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


@dataclass(frozen=True)
class Camera:
    """What one camera does to every image it takes."""

    gains: np.ndarray  # (3,) colour cast
    gamma: float
    brightness: float
    blur: float  # Gaussian sigma, in pixels of a 128-pixel-high image
    resolution: float  # < 1: a low-resolution sensor, upsampled
    noise: float
    quality: int  # JPEG


def make_camera(rng: np.random.Generator) -> Camera:
    return Camera(
        gains=rng.uniform(1 - CAST, 1 + CAST, size=3).astype(np.float32),
        gamma=float(rng.uniform(0.85, 1.15)),
        brightness=float(rng.uniform(0.85, 1.1)),
        blur=float(rng.uniform(0.0, 0.9)),
        resolution=float(rng.uniform(0.45, 1.0)),
        noise=float(rng.uniform(1.5, 6.0)),
        quality=int(rng.integers(72, 96)),
    )


def _muted(rng: np.random.Generator, lo: int, hi: int, saturation: float) -> RGB:
    """A random colour pulled towards grey: streets are mostly concrete, glass and brick."""
    grey = rng.uniform(lo, hi)
    return tuple(int(np.clip(grey + saturation * (c - grey), 0, 255)) for c in rng.uniform(lo, hi, size=3))


def make_scene(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A street-like background larger than the box (walls, windows, signs, ground), RGB uint8."""
    scene = np.empty((height, width, 3), np.uint8)
    horizon = int(height * rng.uniform(0.45, 0.75))
    scene[:horizon] = _muted(rng, 60, 220, SCENE_SATURATION)
    scene[horizon:] = _muted(rng, 60, 170, SCENE_SATURATION * 0.6)
    for _ in range(int(rng.integers(4, 10))):  # facades, windows, doors, signs
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, horizon))
        w, h = int(rng.integers(width // 10, width // 2)), int(rng.integers(height // 12, height // 3))
        cv2.rectangle(scene, (x0, y0), (x0 + w, y0 + h), _muted(rng, 30, 240, SCENE_SATURATION * 1.5), -1)
    for _ in range(int(rng.integers(2, 6))):  # kerbs, paving lines
        y = int(rng.integers(horizon, height))
        end = y + int(rng.integers(-height // 8, height // 8))
        cv2.line(scene, (0, y), (width, end), _muted(rng, 40, 200, SCENE_SATURATION), 2)
    # Low-frequency shading so flat areas are not flat.
    shade = cv2.resize(rng.uniform(0.8, 1.2, size=(6, 4)).astype(np.float32), (width, height))
    return np.clip(scene * shade[:, :, None], 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- drawing one person


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


# ---------------------------------------------------------------- one image


def _occlude(img: np.ndarray, rng: np.random.Generator) -> None:
    """Something between the camera and the person: a passer-by at the edge, or an object from below."""
    height, width = img.shape[:2]
    if rng.random() < 0.5:
        edge = float(rng.choice([-0.45, 1.45]))
        draw_person(
            img,
            make_person(rng),
            VIEWS[rng.integers(4)],
            rng.uniform(0, 2 * math.pi),
            height * rng.uniform(0.9, 1.1),
            width * (edge + rng.uniform(-0.1, 0.1)),
            height * rng.uniform(0.98, 1.1),
        )
    else:
        x0 = int(width * rng.uniform(-0.3, 0.7))
        y0 = int(height * rng.uniform(0.6, 0.85))
        colour = tuple(int(c) for c in rng.integers(20, 230, size=3))
        cv2.rectangle(img, (x0, y0), (x0 + int(width * rng.uniform(0.3, 0.8)), height), colour, -1)


def _apply_camera(img: np.ndarray, cam: Camera, rng: np.random.Generator) -> np.ndarray:
    """Sensor resolution, blur, colour cast, gamma, illumination with a shadow ramp, and noise."""
    height, width = img.shape[:2]
    out = img.astype(np.float32) / 255.0
    if cam.resolution < 0.95:
        small = cv2.resize(
            out,
            (max(8, int(width * cam.resolution)), max(8, int(height * cam.resolution))),
            interpolation=cv2.INTER_AREA,
        )
        out = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    sigma = (cam.blur + rng.uniform(0.0, 0.6)) * height / 128
    if sigma > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), sigma)
    out = np.power(out, cam.gamma * rng.uniform(0.92, 1.08))
    gains = (
        cam.gains * rng.uniform(0.94, 1.06, size=3) * cam.brightness * rng.uniform(1 - ILLUMINATION, 1 + ILLUMINATION)
    )
    vertical = rng.random() < 0.5  # a shadow or light falloff across the box
    ramp = np.linspace(
        rng.uniform(1 - SHADOW, 1 + SHADOW),
        rng.uniform(1 - SHADOW, 1 + SHADOW),
        height if vertical else width,
        dtype=np.float32,
    )
    ramp = ramp[:, None, None] if vertical else ramp[None, :, None]
    out = out * (gains.astype(np.float32) * 255.0) * ramp
    out += rng.standard_normal(out.shape, dtype=np.float32) * cam.noise
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Shot:
    """One image to write: whose look, in which split and camera, under which file name."""

    split: str
    pid: int  # the id in the file name; 0 for distractors
    person: int  # key of the look's random stream (== pid, except for distractors)
    cam: int  # 1-based
    seq: int
    frame: int
    heading: str  # the view this person mostly shows this camera (people walk one way past a camera)
    index: int  # shot number of (person, cam): keys the image's random stream

    @property
    def name(self) -> str:
        return f"{self.pid:04d}_c{self.cam}s{self.seq}_{self.frame:06d}_01.jpg"


def render(
    shot: Shot, seed: int, person: Person, cam: Camera, scenes: list[np.ndarray], height: int, width: int
) -> np.ndarray:
    """The RGB uint8 (height, width, 3) image of one shot."""
    rng = np.random.default_rng([seed, _SHOT, shot.person, shot.cam, shot.index])
    view = shot.heading if rng.random() < 0.65 else VIEWS[rng.integers(4)]
    scene = scenes[rng.integers(len(scenes))]
    y0 = int(rng.integers(0, scene.shape[0] - height + 1))
    x0 = int(rng.integers(0, scene.shape[1] - width + 1))
    img = scene[y0 : y0 + height, x0 : x0 + width].copy()
    if rng.random() < 0.12:  # a passer-by further away, behind
        draw_person(
            img,
            make_person(rng),
            VIEWS[rng.integers(4)],
            rng.uniform(0, 2 * math.pi),
            height * rng.uniform(0.5, 0.7),
            width * float(rng.choice([0.0, 1.0])),
            height * rng.uniform(0.6, 0.8),
        )
    size = height * person.height * rng.uniform(0.76, 0.94)
    feet = height * rng.uniform(0.93, 0.995)
    draw_person(img, person, view, rng.uniform(0, 2 * math.pi), size, width * (0.5 + rng.uniform(-0.1, 0.1)), feet)
    if rng.random() < 0.18:
        _occlude(img, rng)
    return _apply_camera(img, cam, rng)


# ---------------------------------------------------------------- the data set


def _spread(rng: np.random.Generator, total: int, cameras: list[int]) -> list[int]:
    """``total`` images over ``cameras``, at least one each."""
    extra = rng.multinomial(total - len(cameras), np.full(len(cameras), 1.0 / len(cameras)))
    return [1 + int(e) for e in extra]


def plan_shots(
    ids: int, cams: int, seed: int, train_per_id: tuple[int, int], gallery_per_id: tuple[int, int], distractors: int
) -> list[Shot]:
    """Which images to render: disjoint train and test identities, each seen by at least two cameras.

    A test identity gets one query image in one to three of its cameras, and gallery images in all of them,
    so every query has a match in another camera (the Market-1501 protocol ignores same-camera matches).
    """
    rng = np.random.default_rng([seed, _PLAN])
    pids = rng.permutation(np.arange(1, ids + 1))
    train_ids, test_ids = sorted(pids[: ids // 2].tolist()), sorted(pids[ids // 2 :].tolist())
    shots: list[Shot] = []
    used: set[tuple[int, int, int]] = set()  # (pid, cam, frame): file names must be unique

    def track(split_of: Callable[[int], str], pid: int, person: int, cam: int, count: int) -> None:
        seq, frame = int(rng.integers(1, 7)), int(rng.integers(1, 400_000))
        heading = VIEWS[rng.integers(4)]
        for index in range(count):
            frame += int(rng.integers(5, 80))
            while (pid, cam, frame) in used:
                frame += 1
            used.add((pid, cam, frame))
            shots.append(Shot(split_of(index), pid, person, cam, seq, frame, heading, index))

    def cameras_of(images: int) -> list[int]:
        n = int(rng.integers(2, min(cams, images) + 1))
        return sorted((rng.choice(cams, size=n, replace=False) + 1).tolist())

    for pid in train_ids:
        n = int(rng.integers(train_per_id[0], train_per_id[1] + 1))
        cameras = cameras_of(n)
        for cam, count in zip(cameras, _spread(rng, n, cameras), strict=True):
            track(lambda _: "bounding_box_train", pid, pid, cam, count)
    for pid in test_ids:
        n = int(rng.integers(gallery_per_id[0], gallery_per_id[1] + 1))
        cameras = cameras_of(n)
        query_cams = set(rng.choice(cameras, size=min(len(cameras), int(rng.integers(1, 4))), replace=False).tolist())
        for cam, count in zip(cameras, _spread(rng, n, cameras), strict=True):
            if cam in query_cams:  # the track's first image is the query, the others go to the gallery
                track(lambda i: "query" if i == 0 else "bounding_box_test", pid, pid, cam, count + 1)
            else:
                track(lambda _: "bounding_box_test", pid, pid, cam, count)
    for j in range(distractors):  # people never queried, with person id 0 as in Market-1501
        track(lambda _: "bounding_box_test", 0, ids + 1 + j, int(rng.integers(1, cams + 1)), 1)
    return shots


def _check_args(
    ids: int, cams: int, height: int, width: int, train_per_id: tuple[int, int], gallery_per_id: tuple[int, int]
) -> None:
    if not 4 <= ids <= 9999:
        raise ValueError(f"ids must be in 4..9999 (a 4-digit person id, half train and half test), got {ids}")
    if not 2 <= cams <= 9:
        raise ValueError(
            f"cams must be in 2..9 (each test identity needs two cameras; names hold one digit), got {cams}"
        )
    if min(height, width) < 16 or max(height / width, width / height) > 8:
        raise ValueError(f"image size {height}x{width}: both sides must be >= 16 and the aspect ratio within 1:8")
    for name, (lo, hi) in (("train_per_id", train_per_id), ("gallery_per_id", gallery_per_id)):
        if not 2 <= lo <= hi:
            raise ValueError(f"{name} must be (lo, hi) with 2 <= lo <= hi (two cameras per identity), got {(lo, hi)}")


def generate(
    out_dir: str | Path,
    *,
    ids: int,
    cams: int,
    seed: int,
    height: int = 256,
    width: int = 128,
    train_per_id: tuple[int, int] = (12, 16),
    gallery_per_id: tuple[int, int] = (6, 10),
    distractors: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write a synthetic data set in the Market-1501 layout under ``out_dir`` and return its path.

    ``ids`` identities, half for training and half for testing, over ``cams`` cameras. The same arguments
    give the same bytes. ``distractors`` (person id 0 gallery images) defaults to a tenth of ``ids``. The set
    is written to ``<out_dir>.partial`` and moved into place when complete, so an interrupted run leaves no
    half set behind; an existing non-empty ``out_dir`` is an error unless ``overwrite``.
    """
    _check_args(ids, cams, height, width, train_per_id, gallery_per_id)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; pass overwrite=True (--overwrite) to replace it")
    distractors = max(1, ids // 10) if distractors is None else distractors
    shots = plan_shots(ids, cams, seed, train_per_id, gallery_per_id, distractors)
    people = {
        key: make_person(np.random.default_rng([seed, _PERSON, key])) for key in sorted({s.person for s in shots})
    }
    cameras = {c: make_camera(np.random.default_rng([seed, _CAMERA, c])) for c in range(1, cams + 1)}
    scene_h, scene_w = int(height * 1.25), int(width * 1.6)
    shared = [make_scene(np.random.default_rng([seed, _SCENE, 0, k]), scene_h, scene_w) for k in range(SHARED_SCENES)]
    scenes = {
        c: [make_scene(np.random.default_rng([seed, _SCENE, c, k]), scene_h, scene_w) for k in range(OWN_SCENES)]
        + shared
        for c in cameras
    }

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    for split in SPLITS:
        (partial / split).mkdir(parents=True)

    def write(shot: Shot) -> None:
        rgb = render(shot, seed, people[shot.person], cameras[shot.cam], scenes[shot.cam], height, width)
        quality = cameras[shot.cam].quality + int(
            np.random.default_rng([seed, _SHOT, shot.person, shot.cam, shot.index, 1]).integers(-5, 6)
        )
        ok, jpeg = cv2.imencode(".jpg", rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise RuntimeError(f"JPEG encoding failed for {shot.name}")
        (partial / shot.split / shot.name).write_bytes(jpeg.tobytes())

    workers = workers or min(4, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(pool.map(write, shots), total=len(shots), desc="synth", unit="img", disable=not progress):
            pass

    counts = {split: sum(s.split == split for s in shots) for split in SPLITS}
    manifest = {
        "generator": "training.synth",
        "version": GENERATOR_VERSION,
        "ids": ids,
        "cams": cams,
        "seed": seed,
        "height": height,
        "width": width,
        "train_per_id": list(train_per_id),
        "gallery_per_id": list(gallery_per_id),
        "distractors": distractors,
        "images": counts,
        "identities": {"train": ids // 2, "test": ids - ids // 2},
    }
    (partial / "synth.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if out.exists():
        shutil.rmtree(out)
    partial.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="output folder (Market-1501 layout)")
    parser.add_argument("--ids", type=int, required=True, help="identities, half train and half test")
    parser.add_argument("--cams", type=int, required=True, help="cameras (2..9)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--distractors", type=int, default=None, help="gallery images of person 0 (default: ids/10)")
    parser.add_argument("--workers", type=int, default=None, help="writer threads (default: up to 4)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    args = parser.parse_args(argv)
    out = generate(
        args.out,
        ids=args.ids,
        cams=args.cams,
        seed=args.seed,
        height=args.height,
        width=args.width,
        distractors=args.distractors,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),  # a bar for people; logs and pipes get the summary line only
    )
    counts = json.loads((out / "synth.json").read_text())["images"]
    print(f"wrote {out}: " + ", ".join(f"{split} {n}" for split, n in counts.items()))


if __name__ == "__main__":
    main()
