"""Synthetic multi-camera tracks with known identities, times and transit limits (truth for track linking).

Track-level data, generated directly: no video, no model. People walk between cameras placed in a square site;
each visit to a camera is a track (sometimes two, as a tracker breaks a track at an occlusion), with a few crop
embeddings and the crop metadata footage ingestion stores (detector score, box, sharpness).

Appearance is a controlled noise model of a ReID embedding (unit vectors in ``dim`` dimensions):

    crop = normalise(person + camera cast + track view + noise)

- people come in look-alike groups (shared clothing palettes): a person's centre is its group's centre plus a
  smaller personal part, so look-alikes are close and colour alone does not separate them;
- a camera adds the same cast to every crop it sees (so two strangers on one camera can look closer than one
  person on two cameras: the same-camera constraint matters);
- a track adds one view (pose, viewpoint) to all its crops;
- noise grows as the detector score, the box height and the sharpness fall, and a low-score crop may be
  half another person (occlusion by a passer-by). The noise depends on those fields through a different formula
  than ingestion.track_features.crop_quality, so a quality weighting is not handed its answer.

Times: a person appears at a random time, visits 1 to 5 cameras (the next one chosen with probability
falling with distance, a camera may be visited again later), walks at 1.0 to 1.8 m/s along a path up to 30 %
longer than the straight line and may linger up to ``LINGER`` s out of view. The true topology therefore has,
per camera pair, min transit = distance / 1.8 and max transit = 1.3 * distance / 1.0 + LINGER.

    world = generate(seed=1, people=300)
    world.crops (N, D), world.crop_track (N,), world.score, world.box, world.sharpness
    world.track_id / camera_id / first_seen / last_seen (T,), world.person (T,) truth, world.topology
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ingestion.link import Topology, Transit

SITE_M = 250.0  # side of the square site the cameras stand in
V_MIN, V_MAX = 1.0, 1.8  # walking speeds, m/s
DETOUR = 1.3  # a path is up to this much longer than the straight line
LINGER = 60.0  # seconds a person may spend out of view between two cameras
DWELL = (4.0, 40.0)  # seconds in a camera's view
SPLIT_P = 0.2  # a visit broken into two tracks (occlusion)
MAX_CROPS = 8  # crops kept per track (the footage path's K)
GROUP_SIZE = 4  # people per look-alike group


@dataclass(frozen=True)
class Noise:
    """Magnitudes (vector norms) of the parts of a crop embedding; the person's centre has norm 1."""

    personal: float = 0.75  # the personal part added to the group centre (smaller: closer look-alikes)
    cast: float = 0.45
    view: float = 0.45
    crop: float = 0.55  # a clean crop's noise; grows with low score, small box, blur
    occlusion: float = 0.5  # a passer-by's share of an occluded crop


@dataclass(frozen=True)
class World:
    crops: np.ndarray  # (N, D) float32 unit vectors
    crop_track: np.ndarray  # (N,) track number
    score: np.ndarray  # (N,)
    box: np.ndarray  # (N, 4) [x, y, w, h]
    sharpness: np.ndarray  # (N,)
    track_id: np.ndarray  # (T,) str
    camera_id: np.ndarray  # (T,) str
    first_seen: np.ndarray  # (T,) seconds
    last_seen: np.ndarray
    person: np.ndarray  # (T,) truth
    topology: Topology  # the true transit limits


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _centres(rng: np.random.Generator, people: int, dim: int, noise: Noise) -> np.ndarray:
    groups = _unit(rng.standard_normal((people // GROUP_SIZE + 1, dim)))
    own = _unit(rng.standard_normal((people, dim))) * noise.personal
    return _unit(groups[np.arange(people) // GROUP_SIZE] + own)


def _visits(rng: np.random.Generator, dist: np.ndarray, duration: float) -> list[tuple[int, float, float]]:
    """(camera, enter, leave) of one person's walk."""
    cams = len(dist)
    n = int(rng.choice([1, 2, 3, 4, 5], p=[0.15, 0.3, 0.25, 0.2, 0.1]))
    cam, t = int(rng.integers(cams)), float(rng.uniform(0, duration))
    speed = rng.uniform(V_MIN, V_MAX)
    out = []
    for _ in range(n):
        dwell = rng.uniform(*DWELL)
        out.append((cam, t, t + dwell))
        w = 1.0 / np.where(np.arange(cams) == cam, np.inf, dist[cam])
        nxt = int(rng.choice(cams, p=w / w.sum()))
        t += dwell + dist[cam, nxt] * rng.uniform(1.0, DETOUR) / speed + rng.uniform(0, LINGER)
        cam = nxt
    return out


def _tracks(rng: np.random.Generator, visits: list[tuple[int, float, float]]) -> list[tuple[int, float, float]]:
    out = []
    for cam, t0, t1 in visits:
        if rng.random() < SPLIT_P and t1 - t0 > 6:
            cut = rng.uniform(t0 + 2, t1 - 3)
            out += [(cam, t0, cut), (cam, cut + rng.uniform(1, 3), t1)]
        else:
            out.append((cam, t0, t1))
    return out


def _crops(rng, n: int, centre, cast, view, centres, noise: Noise):
    score = np.clip(rng.beta(5, 2, n), 0.3, 1.0)
    height = np.exp(rng.uniform(np.log(40), np.log(300), n))
    box = np.stack([rng.uniform(0, 600, n), rng.uniform(0, 300, n), height * 0.45, height], axis=1)
    sharp = rng.gamma(2.0, 120.0, n)
    sigma = noise.crop * (1 + 2.5 * (1 - score)) * (1 + 1.5 * np.clip((120 - height) / 120, 0, 1))
    sigma *= 1 + 1.0 / (1 + sharp / 60)
    dim = len(centre)
    x = centre + cast + view + _unit(rng.standard_normal((n, dim))) * sigma[:, None]
    occluded = rng.random(n) < 0.6 * (1 - score)
    if occluded.any():
        passer = centres[rng.integers(len(centres), size=occluded.sum())]
        x[occluded] = (1 - noise.occlusion) * x[occluded] + noise.occlusion * 2 * passer
    return _unit(x).astype(np.float32), score, box, sharp


def _topology(dist: np.ndarray) -> Topology:
    pairs = []
    for a in range(len(dist)):
        for b in range(a + 1, len(dist)):
            pairs.append(
                Transit(
                    cameras=(f"cam{a}", f"cam{b}"),
                    min_transit_s=float(dist[a, b] / V_MAX),
                    max_transit_s=float(dist[a, b] * DETOUR / V_MIN + LINGER),
                )
            )
    return Topology(pairs=tuple(pairs))


def generate(
    *, seed: int, people: int = 300, cameras: int = 6, dim: int = 128, duration: float = 1800.0, noise: Noise = Noise()
) -> World:
    """A site of ``cameras`` cameras seen for ``duration`` seconds by ``people`` people (module docstring)."""
    rng = np.random.default_rng(seed)
    pos = rng.uniform(0, SITE_M, (cameras, 2))
    dist = np.linalg.norm(pos[:, None] - pos[None, :], axis=2)
    centres = _centres(rng, people, dim, noise)
    casts = _unit(rng.standard_normal((cameras, dim))) * noise.cast
    parts = {k: [] for k in ("x", "track", "score", "box", "sharp")}
    meta = {k: [] for k in ("cam", "t0", "t1", "person")}
    for p in range(people):
        for cam, t0, t1 in _tracks(rng, _visits(rng, dist, duration)):
            n = int(rng.integers(2, MAX_CROPS + 1))
            view = _unit(rng.standard_normal(dim)) * noise.view
            x, score, box, sharp = _crops(rng, n, centres[p], casts[cam], view, centres, noise)
            for key, value in zip(parts, (x, np.full(n, len(meta["cam"])), score, box, sharp), strict=True):
                parts[key].append(value)
            for key, value in zip(meta, (cam, t0, t1, p), strict=True):
                meta[key].append(value)
    return World(
        crops=np.concatenate(parts["x"]),
        crop_track=np.concatenate(parts["track"]).astype(np.int64),
        score=np.concatenate(parts["score"]),
        box=np.concatenate(parts["box"]),
        sharpness=np.concatenate(parts["sharp"]),
        track_id=np.array([f"s{seed}-t{i}" for i in range(len(meta["cam"]))], dtype=object),
        camera_id=np.array([f"cam{c}" for c in meta["cam"]], dtype=object),
        first_seen=np.asarray(meta["t0"]),
        last_seen=np.asarray(meta["t1"]),
        person=np.asarray(meta["person"], dtype=np.int64),
        topology=_topology(dist),
    )
