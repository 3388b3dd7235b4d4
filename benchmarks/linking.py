"""Track linking benchmark: track features and linking against truth, with the baselines in the same run.

    python -m benchmarks.linking                       # tune seed 0, evaluate on fresh seed 1
    python -m benchmarks.linking --eval-seed 7 --people 500 --far 0.1 --out bench/linking.json
    python -m benchmarks.linking --artifact artifacts/demo       # rendered crops through a real model

Data: benchmarks/synth_tracks.py (synthetic multi-camera tracks, known identities and times; embeddings from a
controlled noise model), or with ``--artifact DIR`` the same tracks with every crop rendered by training/synth.py
and embedded by that exported model (benchmarks/synth_render.py). Each linker's threshold is calibrated on the tuning world's labelled tracks (ingestion.link.calibrate_links: the
verdict calibration's leave-one-identity-out, at false-link rate ``--far``, leaving out the pairs that linker's
constraints forbid); the evaluation world is generated from another seed and its labels are used only to score.
The defaults (``--far`` 0.7, confident links at 0.05, the learned minimum eased by half) were chosen on seed 0.

Tables:

1. Track features: the quality-weighted mean (ingestion.track_features; quality from the detector score alone,
   and from score, box height and sharpness), the plain mean and the maximum over crop pairs, each with its own threshold calibrated the same way: cross-camera track retrieval (rank-1, mAP:
   a track against the other cameras' tracks) and linking (with constraints and the true topology).
2. Linking: no linking (every track alone), appearance only (no constraints), same-camera constraints,
   + the learned topology, + the true topology; average and complete linkage.

Metrics: pairwise precision / recall / F1 over track pairs (sklearn.metrics.pair_confusion_matrix), and
identity F1 of the assignment, IDF1 = 2 IDTP / (2 T) with IDTP the tracks on the optimal one-to-one mapping of
true to found identities (scipy.optimize.linear_sum_assignment on sklearn's contingency matrix; every track
counts once). Violations: pairs linked against a constraint of the true topology.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import pair_confusion_matrix
from sklearn.metrics.cluster import contingency_matrix

from benchmarks.synth_tracks import World, generate
from ingestion.link import (
    TrackSet,
    calibrate_links,
    cannot_link,
    learn_topology,
    link,
    threshold_for,
    violations,
)
from ingestion.track_features import crop_quality, max_similarity, pool

TUNE_SEED, EVAL_SEED = 0, 1
FAR = 0.7  # the false-link rate the thresholds are calibrated at (the best F1 on the tuning seed)
CONFIDENT_FAR = 0.05  # the stricter rate of the confident links a topology is learned from
DURATION = 600.0
POOLINGS = ("weighted", "weighted+box+sharp", "mean", "max")  # weighted: by detector score alone


def pair_scores(truth, labels) -> dict[str, float]:
    """Pairwise precision, recall and F1 of same-identity track pairs (precision 1 when nothing is linked)."""
    (_, fp), (fn, tp) = pair_confusion_matrix(truth, labels)
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": float(precision), "recall": float(recall), "f1": float(f1)}


def idf1(truth, labels) -> float:
    """Identity F1 of a track assignment: 2 IDTP / (2 T), each track counting once (module docstring)."""
    if len(truth) == 0:
        return 1.0
    c = contingency_matrix(truth, labels)
    rows, cols = linear_sum_assignment(c, maximize=True)
    return float(c[rows, cols].sum() / len(truth))


def similarity(world: World, pooling: str) -> tuple[np.ndarray, np.ndarray]:
    """(track features (T, D), track similarity (T, T)) for one pooling of POOLINGS; max has no features of its
    own (the score-weighted mean's are returned) but its own similarity."""
    n = len(world.track_id)
    if pooling == "weighted+box+sharp":
        q = crop_quality(world.score, world.box, world.sharpness)
    else:
        q = crop_quality(world.score)
    xb = pool(world.crops, world.crop_track, n, q, method="mean" if pooling == "mean" else "weighted")
    s = max_similarity(world.crops, world.crop_track, n) if pooling == "max" else xb @ xb.T
    return xb, s


def tracks_of(world: World, xb: np.ndarray) -> TrackSet:
    return TrackSet.of(world.track_id, world.camera_id, world.first_seen, world.last_seen, xb)


def calibrated(world: World, pooling: str, far: float, *, constraints: bool = True, topology=None) -> float:
    """The similarity threshold at false-link rate ``far`` on ``world``'s labelled tracks, for a linker with
    (same-camera, plus ``topology``'s transit) or without constraints."""
    xb, s = similarity(world, pooling)
    cannot = cannot_link(tracks_of(world, xb), topology) if constraints else None
    return threshold_for(calibrate_links(s, world.person, (far,), cannot=cannot), far).threshold


def retrieval(world: World, s: np.ndarray) -> dict[str, float]:
    """Cross-camera track retrieval: each track against the other cameras' tracks (rank-1 and mAP over the
    tracks whose person another camera saw)."""
    cams, person = world.camera_id, world.person
    rank1, aps = [], []
    for i in range(len(person)):
        other = np.flatnonzero(cams != cams[i])
        rel = person[other] == person[i]
        if not rel.any():
            continue
        order = np.argsort(-s[i, other], kind="stable")
        hits = rel[order]
        rank1.append(hits[0])
        ranks = np.flatnonzero(hits) + 1
        aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
    return {"rank1": float(np.mean(rank1)), "mAP": float(np.mean(aps)), "queries": len(aps)}


def _row(name: str, world: World, tracks: TrackSet, labels: np.ndarray, seconds: float) -> dict:
    return {
        "method": name,
        **pair_scores(world.person, labels),
        "idf1": idf1(world.person, labels),
        "identities": int(len(np.unique(labels))),
        "violations": int(len(violations(tracks, labels, world.topology))),
        "seconds": seconds,
    }


def feature_table(tune: World, world: World, far: float) -> list[dict]:
    rows = []
    for pooling in POOLINGS:
        threshold = calibrated(tune, pooling, far, topology=tune.topology)
        xb, s = similarity(world, pooling)
        tracks = tracks_of(world, xb)
        t0 = time.perf_counter()
        labels = link(tracks, threshold=threshold, topology=world.topology, similarity=s).labels
        row = _row(pooling, world, tracks, labels, time.perf_counter() - t0)
        rows.append({**row, **retrieval(world, s), "threshold": threshold})
    return rows


def linking_table(tune: World, world: World, far: float) -> tuple[list[dict], dict]:
    """Each variant links ``world`` at the threshold calibrated for it on ``tune`` at the same false-link rate."""
    xb_tune, _ = similarity(tune, "weighted")
    confident = calibrated(tune, "weighted", CONFIDENT_FAR, constraints=False)
    learned_tune = learn_topology(tracks_of(tune, xb_tune), confident=confident)
    xb, _ = similarity(world, "weighted")
    tracks = tracks_of(world, xb)
    learned = learn_topology(tracks, confident=confident)
    runs = [  # (name, calibration constraints and topology, link arguments)
        ("no linking", None, None),
        ("appearance only", (False, None), {"constraints": False}),
        ("same camera", (True, None), {}),
        ("learned topology", (True, learned_tune), {"topology": learned}),
        ("true topology", (True, tune.topology), {"topology": world.topology}),
        ("true topology, complete", (True, tune.topology), {"topology": world.topology, "linkage": "complete"}),
    ]
    rows = []
    for name, cal, kwargs in runs:
        t0 = time.perf_counter()
        if kwargs is None:
            labels, threshold = np.arange(len(tracks)), float("nan")
        else:
            threshold = calibrated(tune, "weighted", far, constraints=cal[0], topology=cal[1])
            t0 = time.perf_counter()
            labels = link(tracks, threshold=threshold, **kwargs).labels
        rows.append({**_row(name, world, tracks, labels, time.perf_counter() - t0), "threshold": threshold})
    return rows, {"confident": confident, "learned": learned.model_dump()}


def topology_check(world: World, learned: dict) -> list[dict]:
    """Each learned pair's min / max transit beside the truth."""
    truth = {frozenset(p.cameras): p for p in world.topology.pairs}
    out = []
    for p in learned["pairs"]:
        t = truth[frozenset(p["cameras"])]
        out.append(
            {
                "cameras": "-".join(p["cameras"]),
                "links": p["links"],
                "min": p["min_transit_s"],
                "true_min": t.min_transit_s,
                "max": p["max_transit_s"],
                "true_max": t.max_transit_s,
            }
        )
    return out


def format_rows(rows: list[dict], columns: list[str]) -> str:
    head = f"  {'':<24}" + "".join(f"{c:>11}" for c in columns)
    lines = [head]
    for r in rows:
        cells = "".join(f"{r[c]:>11.3f}" if isinstance(r[c], float) else f"{r[c]:>11}" for c in columns)
        lines.append(f"  {r['method']:<24}" + cells)
    return "\n".join(lines)


def run(
    *, tune_seed: int, eval_seed: int, people: int, cameras: int, duration: float, far: float, artifact=None
) -> dict:
    tune = generate(seed=tune_seed, people=people, cameras=cameras, duration=duration)
    world = generate(seed=eval_seed, people=people, cameras=cameras, duration=duration)
    embeddings = "noise model (benchmarks.synth_tracks)"
    if artifact is not None:
        from benchmarks.synth_render import render_world  # draws with training.synth: only when asked

        tune = render_world(tune, artifact, seed=tune_seed)
        world = render_world(world, artifact, seed=eval_seed)
        embeddings = f"crops rendered by training.synth, embedded by {artifact}"
    features = feature_table(tune, world, far)
    rows, info = linking_table(tune, world, far)
    return {
        "embeddings": embeddings,
        "tune_seed": tune_seed,
        "eval_seed": eval_seed,
        "people": people,
        "cameras": cameras,
        "duration_s": duration,
        "tracks": len(world.track_id),
        "crops": len(world.crops),
        "far": far,
        "features": features,
        "linking": rows,
        "confident": info["confident"],
        "learned_topology": topology_check(world, info["learned"]),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tune-seed", type=int, default=TUNE_SEED)
    ap.add_argument("--eval-seed", type=int, default=EVAL_SEED)
    ap.add_argument("--people", type=int, default=300)
    ap.add_argument("--cameras", type=int, default=6)
    ap.add_argument("--duration", type=float, default=DURATION, help="seconds of footage the people arrive in")
    ap.add_argument("--far", type=float, default=FAR, help="false-link rate of the calibrated threshold")
    ap.add_argument("--artifact", type=Path, help="embed rendered crops with this exported model instead")
    ap.add_argument("--out", type=Path, help="write the figures as JSON")
    args = ap.parse_args(argv)
    res = run(
        tune_seed=args.tune_seed,
        eval_seed=args.eval_seed,
        people=args.people,
        cameras=args.cameras,
        duration=args.duration,
        far=args.far,
        artifact=args.artifact,
    )
    print(
        f"synthetic tracks: tuned on seed {res['tune_seed']}, evaluated on seed {res['eval_seed']}: "
        f"{res['people']} people, {res['cameras']} cameras, {res['tracks']} tracks, {res['crops']} crops; "
        f"thresholds at false-link rate {res['far']:g}; embeddings: {res['embeddings']}"
    )
    print("\ntrack features (linking with the true topology; retrieval across cameras):")
    cols = ["rank1", "mAP", "precision", "recall", "f1", "idf1", "threshold"]
    print(format_rows(res["features"], cols))
    print("\nlinking (weighted-mean features):")
    print(format_rows(res["linking"], ["precision", "recall", "f1", "idf1", "identities", "violations", "threshold"]))
    print(f"\nlearned topology (confident links at similarity >= {res['confident']:.4f}):")
    for p in res["learned_topology"]:
        print(
            f"  {p['cameras']:<10} links {p['links']:>3}  min {p['min']:7.1f} s (true {p['true_min']:6.1f})  "
            f"max {p['max']:7.1f} s (true {p['true_max']:6.1f})"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
