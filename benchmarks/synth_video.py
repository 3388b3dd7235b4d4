"""Synthetic camera video with exact ground truth: people drawn by training.synth walking across fixed backgrounds.

Truth for the tracker (benchmarks.tracking), which real footage here does not have. Several cameras, each a fixed
street background (training.synth.make_scene) under its own colour cast and sensor noise; people (training.synth's
identities: body shape, clothes, patterns, bags) walk across at 1.0 to 1.8 m/s, left or right, some on a slant
towards or away from the camera (their size follows their depth), some in pairs side by side (the case that swaps a
tracker's ids), and crossing each other. People come back: an identity may pass a camera several times and pass
other cameras too.

Each pass of a person through a camera is one ground-truth track (MOT id); ``identities.json`` says whose it is.
The box of a person in a frame is exact: the bounding box of the pixels drawn for it (rendered apart on two
blank canvases), whatever is in front of it; its visibility is the share of those pixels no nearer person hides.

    write_dataset("runs/synth-video", VideoSettings(cameras=3, seconds=40), seed=0)

writes, per camera, a MOTChallenge-like sequence::

    <out>/cam1/video.avi            MJPG (or .mp4, mp4v)
    <out>/cam1/gt/gt.txt            frame (1-based), id, x, y, w, h, conf (1; 0 = ignore), class 1, visibility
    <out>/cam1/seqinfo.ini          name, frameRate, seqLength, imWidth, imHeight
    <out>/identities.json           {pass id: {"person", "camera", "first_frame", "last_frame", "partner"}}
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from training.people import draw_person
from training.synth import make_camera, make_person, make_scene

METRES = 1.7  # a person's height, to turn walking speeds into pixels
_PEOPLE, _PLAN, _SCENE, _CAMERA, _NOISE = 21, 22, 23, 24, 25  # this module's random streams


@dataclass(frozen=True)
class VideoSettings:
    cameras: int = 3
    seconds: float = 40.0
    fps: float = 10.0
    width: int = 640
    height: int = 360
    people: int = 16  # identities, shared by all cameras
    passes_per_minute: float = 40.0  # people entering a camera's view (a pair counts twice)
    pairs: float = 0.3  # share of passes that are a pair walking side by side
    slant: float = 0.3  # share of passes walking on a slant (towards or away from the camera)
    horizon: float = 0.45  # the perspective's horizon line, as a share of the frame height from the top
    near: float = 0.6  # a person's height at the bottom of the frame, as a share of the frame height
    far: float = 0.2  # the same at the horizon line
    min_visibility: float = 0.25  # below this a box is marked "ignore" (conf 0): no detector can see it
    container: str = "avi"  # "avi" (MJPG) or "mp4" (mp4v)


@dataclass(frozen=True)
class Pass:
    """One walk of one person through one camera's view."""

    pid: int  # the ground-truth track id (unique over the data set)
    person: int
    camera: int  # 1-based
    t0: float  # seconds: the walk starts at the frame edge
    x0: float  # feet position at t0, pixels
    y0: float
    dx: float  # unit direction in the image
    dy: float
    speed: float  # m/s
    partner: int | None  # the pass walking side by side with this one
    phase: float


def _height_at(feet: float, horizon: float, s: VideoSettings) -> float:
    """Perspective: a person's height in pixels grows linearly from ``far`` at the horizon to ``near`` below."""
    depth = np.clip((feet - horizon) / max(s.height - horizon, 1.0), 0.0, 1.2)
    return s.height * (s.far + (s.near - s.far) * depth)


def plan_passes(s: VideoSettings, seed: int, horizon: float) -> list[Pass]:
    """Who walks where and when, on every camera: Poisson arrivals, a free identity for each (not already in view
    of that camera), pairs and slants in the shares asked for."""
    passes: list[Pass] = []
    for cam in range(1, s.cameras + 1):
        rng = np.random.default_rng([seed, _PLAN, cam])
        busy: dict[int, float] = {}  # person -> until when it is in view
        t = 1.5 + float(rng.exponential(60.0 / s.passes_per_minute))  # after the background is learned
        while t < s.seconds - 3.0:
            free = [p for p in range(s.people) if busy.get(p, -1.0) < t]
            if not free:  # everyone is in view: the next walk starts when someone has left
                t = min(busy.values()) + 0.1
                continue
            group = 2 if rng.random() < s.pairs and len(free) >= 2 else 1
            who = rng.choice(free, size=group, replace=False)
            direction = float(rng.choice([-1.0, 1.0]))
            slope = float(rng.uniform(0.12, 0.35) * rng.choice([-1, 1])) if rng.random() < s.slant else 0.0
            dx, dy = direction / math.hypot(1, slope), slope / math.hypot(1, slope)
            lo, hi = horizon + 0.3 * (s.height - horizon), s.height * 0.97
            # A slanted walk starts on the side of the ground it walks away from, so it crosses most of the view.
            lo, hi = (lo, (lo + hi) / 2) if slope > 0 else ((lo + hi) / 2, hi) if slope < 0 else (lo, hi)
            feet = float(rng.uniform(lo, hi))
            speed = float(rng.uniform(1.0, 1.8))
            ids = [len(passes) + k + 1 for k in range(group)]
            for k, person in enumerate(who):
                h = _height_at(feet, horizon, s)
                lateral = k * float(rng.uniform(0.22, 0.4)) * h  # side by side: a shoulder apart, a little deeper
                y = feet + k * float(rng.uniform(0.03, 0.08)) * h
                x = -0.4 * h - lateral if direction > 0 else s.width + 0.4 * h + lateral
                partner = ids[1 - k] if group == 2 else None
                phase = float(rng.uniform(0, 2 * math.pi))
                passes.append(Pass(ids[k], int(person), cam, t, x, y, dx, dy, speed, partner, phase))
                crossing = (s.width + 1.6 * h) / (speed / METRES * h)
                busy[int(person)] = t + crossing + 1.0
            t += float(rng.exponential(60.0 / s.passes_per_minute)) * group
    return passes


def _where(p: Pass, t: float, horizon: float, s: VideoSettings) -> tuple[float, float, float, float] | None:
    """(feet x, feet y, height, walking phase) of a pass at time t, or None when it is not in view."""
    if t < p.t0:
        return None
    # Integrate in small steps so the speed in pixels follows the size as a slanted walker changes depth.
    x, y, travelled, step = p.x0, p.y0, 0.0, 0.05
    for _ in range(int((t - p.t0) / step)):
        h = _height_at(y, horizon, s)
        move = p.speed / METRES * h * step
        x, y, travelled = x + p.dx * move, y + p.dy * move, travelled + move / h
    h = _height_at(y, horizon, s)
    if y < horizon + 0.15 * (s.height - horizon) or y > s.height * 1.1 or not (-0.6 * h < x < s.width + 0.6 * h):
        return None
    return x, y, h, p.phase + 2 * math.pi * travelled / 0.9  # a stride is about 0.9 of one's height


def _silhouette(person, view: str, phase: float, h: float) -> tuple[np.ndarray, np.ndarray, int, int]:
    """The person drawn alone (RGB patch), its exact pixel mask, and the patch's feet anchor (x, y)."""
    ph, pw = int(h * 1.15) + 4, int(h * 0.9) + 4
    ax, ay = pw // 2, int(h * 1.08) + 2
    on_black = np.zeros((ph, pw, 3), np.uint8)
    on_white = np.full((ph, pw, 3), 255, np.uint8)
    draw_person(on_black, person, view, phase, h, ax, ay)
    draw_person(on_white, person, view, phase, h, ax, ay)
    # A pixel the figure covers differs from at least one of the two blank backgrounds, whatever its colour.
    mask = (on_black != 0).any(axis=2) | (on_white != 255).any(axis=2)
    return on_black, mask, ax, ay


def _view(p: Pass) -> str:
    if abs(p.dx) >= abs(p.dy):
        return "right" if p.dx > 0 else "left"
    return "front" if p.dy > 0 else "back"


def render_camera(s: VideoSettings, seed: int, cam: int, passes: list[Pass], horizon: float, scene: np.ndarray):
    """Yield (RGB frame, [(pid, xyxy, visibility)]) for each frame of one camera."""
    look = make_camera(np.random.default_rng([seed, _CAMERA, cam]))
    people = {p.person: make_person(np.random.default_rng([seed, _PEOPLE, p.person])) for p in passes}
    noise = np.random.default_rng([seed, _NOISE, cam])
    for index in range(int(round(s.seconds * s.fps))):
        t = index / s.fps
        frame = scene.copy()
        owner = np.zeros(frame.shape[:2], np.int32)  # which pass each pixel shows (0: the background)
        drawn = []
        placed = [(p, w) for p in passes if (w := _where(p, t, horizon, s)) is not None]
        for p, (x, y, h, phase) in sorted(placed, key=lambda pw: pw[1][1]):  # far (higher feet) first
            patch, mask, ax, ay = _silhouette(people[p.person], _view(p), phase, h * people[p.person].height)
            ox, oy = int(round(x)) - ax, int(round(y)) - ay
            ys, xs = np.nonzero(mask)
            ys, xs = ys + oy, xs + ox
            inside = (ys >= 0) & (ys < s.height) & (xs >= 0) & (xs < s.width)
            if not inside.any():
                continue
            frame[ys[inside], xs[inside]] = patch[ys[inside] - oy, xs[inside] - ox]
            owner[ys[inside], xs[inside]] = p.pid
            total = int(mask.sum())  # the frame edge hides the rest
            ys, xs = ys[inside], xs[inside]
            box = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)  # what the frame shows
            drawn.append((p.pid, box, total))
        counts = np.bincount(owner.ravel(), minlength=max([p.pid for p in passes], default=0) + 1)
        truth = [(pid, box, float(counts[pid]) / max(total, 1)) for pid, box, total in drawn]
        lit = frame.astype(np.float32) * look.gains * look.brightness
        lit += noise.standard_normal(frame.shape, dtype=np.float32) * look.noise
        yield np.clip(lit + 0.5, 0, 255).astype(np.uint8), truth


def write_dataset(out: str | Path, s: VideoSettings | None = None, seed: int = 0) -> Path:
    """Write the videos, MOT ground truth and identities of ``s`` under ``out``; returns ``out``."""
    s, out = s or VideoSettings(), Path(out)
    scenes = [make_scene(np.random.default_rng([seed, _SCENE, c]), s.height, s.width) for c in range(1, s.cameras + 1)]
    horizon = s.horizon * s.height
    passes = plan_passes(s, seed, horizon)
    seen: dict[int, list[int]] = {}
    for cam in range(1, s.cameras + 1):
        seq = out / f"cam{cam}"
        (seq / "gt").mkdir(parents=True, exist_ok=True)
        fourcc, name = (cv2.VideoWriter_fourcc(*"MJPG"), "video.avi")
        if s.container == "mp4":
            fourcc, name = cv2.VideoWriter_fourcc(*"mp4v"), "video.mp4"
        writer = cv2.VideoWriter(str(seq / name), fourcc, s.fps, (s.width, s.height))
        lines = []
        mine = [p for p in passes if p.camera == cam]
        for index, (frame, truth) in enumerate(render_camera(s, seed, cam, mine, horizon, scenes[cam - 1])):
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            for pid, (x0, y0, x1, y1), visibility in truth:
                conf = int(visibility >= s.min_visibility)
                lines.append(
                    f"{index + 1},{pid},{x0:.0f},{y0:.0f},{x1 - x0:.0f},{y1 - y0:.0f},{conf},1,{visibility:.3f}"
                )
                seen.setdefault(pid, []).append(index + 1)
        writer.release()
        (seq / "gt" / "gt.txt").write_text("\n".join(lines) + "\n")
        frames = int(round(s.seconds * s.fps))
        (seq / "seqinfo.ini").write_text(
            f"[Sequence]\nname=cam{cam}\nimDir=\nframeRate={s.fps:g}\nseqLength={frames}\n"
            f"imWidth={s.width}\nimHeight={s.height}\nimExt=\nvideo={name}\n"
        )
    identities = {
        str(p.pid): {
            "person": p.person,
            "camera": f"cam{p.camera}",
            "first_frame": min(seen[p.pid]),
            "last_frame": max(seen[p.pid]),
            "partner": p.partner,
        }
        for p in passes
        if p.pid in seen
    }
    (out / "identities.json").write_text(json.dumps({"settings": asdict(s), "seed": seed, "passes": identities}))
    return out
