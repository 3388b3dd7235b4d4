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

import json
import math
import os
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from training.people import RGB, VIEWS, Person, draw_person, make_person

__all__ = ["SPLITS", "Shot", "generate", "make_camera", "make_person", "make_scene", "plan_shots", "render"]

SPLITS = ("bounding_box_train", "query", "bounding_box_test")
GENERATOR_VERSION = 1

SCENE_SATURATION = 0.35  # backgrounds pulled towards grey, so the person carries most of the colour
CAST = 0.08  # camera colour cast: per-channel gains in 1 +- CAST
ILLUMINATION = 0.15  # per-image light level: gain in 1 +- ILLUMINATION
OWN_SCENES = 2  # backgrounds only one camera sees
SHARED_SCENES = 6  # backgrounds every camera sees (places in view of several cameras)
SHADOW = 0.1  # per-image light falloff across the box, 1 +- SHADOW at either end

# Salts keep the random streams of different kinds of things apart.
_PERSON, _PLAN, _SCENE, _CAMERA, _SHOT = 1, 2, 3, 4, 5


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


if __name__ == "__main__":
    from training.cli import synth_main

    synth_main()
