"""Real embeddings for a synthetic track world: every crop rendered by the crop generator (training/synth.py)
and embedded by an exported model (ONNX Runtime), in place of the noise model's vectors.

Each person of the world gets a generated look (``make_person``), each camera its own cast, blur, resolution and
noise (``make_camera``) and backgrounds (two of its own, six shared), each track a heading (the view it mostly
shows). A crop is rendered at its box's size (so a small box is a low-resolution crop), resized to the model's
input as the server does (formats.images.resize), and embedded. Its sharpness is measured on the rendered crop
(variance of the Laplacian); its detector score is set to 1, since no detector looked at it, so the score-only
weighting is the plain mean here and the box + sharpness weighting carries the quality.

    world = render_world(generate(seed=1), "artifacts/demo")      # benchmarks.linking --artifact DIR
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np

from benchmarks.synth_tracks import World
from embedders.onnx import OnnxEmbedder
from formats.images import resize
from training.synth import OWN_SCENES, SHARED_SCENES, VIEWS, Shot, make_camera, make_person, make_scene, render

BATCH = 64
_LOOK, _CAM, _SCENE, _HEADING = 11, 12, 13, 14  # random streams of this module, apart from training.synth's


def _scenes(seed: int, cameras: int, height: int, width: int) -> list[list[np.ndarray]]:
    h, w = int(height * 1.25), int(width * 1.6)
    shared = [make_scene(np.random.default_rng([seed, _SCENE, 0, k]), h, w) for k in range(SHARED_SCENES)]
    return [
        [make_scene(np.random.default_rng([seed, _SCENE, c + 1, k]), h, w) for k in range(OWN_SCENES)] + shared
        for c in range(cameras)
    ]


def render_crops(world: World, *, seed: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(crops resized to the model input (N, height, width, 3) uint8, sharpness measured at the box's size)."""
    cams = np.array([int(str(c).removeprefix("cam")) for c in world.camera_id])
    people = {p: make_person(np.random.default_rng([seed, _LOOK, p])) for p in np.unique(world.person).tolist()}
    cameras = [make_camera(np.random.default_rng([seed, _CAM, c])) for c in range(cams.max() + 1)]
    box_h = np.clip(np.round(world.box[:, 3]).astype(int), 32, None)
    scenes = _scenes(seed, len(cameras), int(box_h.max()), int(box_h.max()) // 2)
    heading = np.random.default_rng([seed, _HEADING]).integers(len(VIEWS), size=len(world.track_id))
    out = np.empty((len(world.crops), height, width, 3), np.uint8)
    sharpness = np.empty(len(world.crops))
    for i, t in enumerate(world.crop_track.tolist()):
        p, c = int(world.person[t]), int(cams[t])
        shot = Shot("", p, p, c + 1, 1, i, VIEWS[heading[t]], i)
        rgb = render(shot, seed, people[p], cameras[c], scenes[c], int(box_h[i]), int(box_h[i]) // 2)
        sharpness[i] = cv2.Laplacian(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var()
        out[i] = resize(rgb, height, width)
    return out, sharpness


async def _render_and_embed(world: World, model: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    embedder = OnnxEmbedder(model, micro_batch=False)
    await embedder.start()  # the spec (input size, dim) comes from the model itself
    images, sharpness = render_crops(
        world, seed=seed, height=embedder.spec.input.height, width=embedder.spec.input.width
    )
    parts = [await embedder.embed(images[i : i + BATCH]) for i in range(0, len(images), BATCH)]
    x = np.concatenate(parts) if parts else np.zeros((0, embedder.spec.dim), np.float32)
    return x.astype(np.float32), sharpness


def render_world(world: World, artifact: str | Path, *, seed: int) -> World:
    """``world`` with its crops rendered and embedded by the artifact's model.onnx (module docstring)."""
    x, sharpness = asyncio.run(_render_and_embed(world, Path(artifact) / "model.onnx", seed))
    return replace(world, crops=x, sharpness=sharpness, score=np.ones(len(x)))
