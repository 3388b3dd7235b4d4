"""Adaptation to real footage, measured on people the adaptation never saw: before, after, and colour alone.

    python -m benchmarks.adapt --checkpoint checkpoints/demo --out bench/adapt.json \
        [--video /usr/share/doc/opencv-doc/examples/data/vtest.avi] [--detector artifacts/detector] [--work DIR]

1. The whole video is indexed as one camera (``python -m ingestion.video --keep-crops``, up to 16 crops a track,
   at least 1 s apart) with the base model's export.
2. Split in time at the video's midpoint: ``python -m training.adapt --gallery ... --time-to MIDPOINT`` learns
   from the crops captured in the first half only (its tracks are the pseudo-identities; no labels).
3. The adapted checkpoint is exported (``python -m export``), as a user would serve it.
4. Evaluation: the tracks none of whose stored crops was captured before the midpoint (people who came into view
   in the second half; a first-half person who left and came back under a new track would count too: without
   labels that cannot be told), each with at least 2 crops. Each crop is a query once; the gallery is every other
   crop of those tracks (crops of one track are at least 1 s apart, so a query's own track is searched with
   other moments of it); the right answers are the crops of the query's track. Pseudo-truth from the tracker: a
   person split into two tracks counts the other track's crops as wrong for every method alike. rank-1 and mAP
   (training.evaluate.evaluate_rank) for the base artifact, the adapted artifact (ONNX Runtime, as served) and
   4-stripe colour histograms (training.baseline), all on the same crops in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from embedders.base import create_embedder
from formats.images import load_image
from ingestion.track_dataset import MANIFEST, export_tracks
from training.baseline import HistogramConfig, distances, histogram
from training.evaluate import evaluate_rank, l2_normalize

START = "2026-12-07T10:00:00+00:00"
CAMERA = "street"
HISTOGRAMS = {
    "histogram_rgb": HistogramConfig(space="rgb", stripes=4),
    "histogram_hsv": HistogramConfig(space="hsv", bins=(8, 3, 3), stripes=4),
}


def _run(command: list[str], log: Path) -> float:
    """Run a step as a user would (its own process); its output goes to ``log``; seconds it took."""
    started = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    return time.perf_counter() - started


def _export(checkpoint: Path, out: Path, work: Path) -> float:
    command = [sys.executable, "-m", "export", str(checkpoint), "--out", str(out), "--no-int8", "--no-fp16"]
    command += ["--max-query", "50", "--max-gallery", "300"]  # the parity gate's sample: the figures come from step 4
    return _run(command, work / f"export-{out.name}.log")


def video_seconds(video: Path) -> float:
    capture = cv2.VideoCapture(str(video))
    frames, fps = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS) or 10.0
    capture.release()
    return frames / fps


def held_out_tracks(folder: Path, midpoint: float, min_crops: int = 2) -> list[dict]:
    """The crops of tracks with no crop captured before ``midpoint`` and at least ``min_crops`` crops."""
    entries = json.loads((folder / MANIFEST).read_text())["crops"]
    by_track = defaultdict(list)
    for e in entries:
        by_track[e["track_id"]].append(e)
    kept = [t for t in by_track.values() if min(e["captured_at"] for e in t) >= midpoint and len(t) >= min_crops]
    return [e | {"path": str(folder / e["file"])} for t in kept for e in sorted(t, key=lambda e: e["captured_at"])]


def leave_one_out(distmat: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Every crop a query against all the others (its own crop ignored: a camera id of its own)."""
    own = np.arange(len(labels))
    cmc, mean_ap, _ = evaluate_rank(distmat, labels, labels, own, own, max_rank=10)
    return {"rank1": round(float(cmc[0]), 4), "rank5": round(float(cmc[4]), 4), "mAP": round(mean_ap, 4)}


async def embed_crops(artifact: Path, paths: list[str]) -> np.ndarray:
    embedder = create_embedder("onnx", artifact=artifact)
    await embedder.start()
    try:
        h, w = embedder.spec.input.height, embedder.spec.input.width
        batch = np.stack([load_image(p, h, w) for p in paths])
        return np.concatenate([await embedder.embed(batch[i : i + 64]) for i in range(0, len(batch), 64)])
    finally:
        await embedder.close()


def ranked_lists(paths: list[str], labels: np.ndarray, distmats: dict[str, np.ndarray], out: Path, top: int = 6):
    """A picture: for a few queries (rows), each method's top crops (other crops of the query's track framed green)."""
    h, w, gap = 96, 48, 8
    rng = np.random.default_rng(0)
    queries = rng.choice(len(paths), size=min(6, len(paths)), replace=False)
    rows = []
    for q in queries:
        cells = [cv2.resize(load_image(paths[q]), (w, h))]
        for distmat in distmats.values():
            cells.append(np.full((h, gap, 3), 255, np.uint8))
            order = [int(i) for i in np.argsort(distmat[q], kind="stable") if i != q][:top]
            for i in order:
                colour = (0, 170, 0) if labels[i] == labels[q] else (220, 0, 0)
                cells.append(
                    cv2.copyMakeBorder(
                        cv2.resize(load_image(paths[i]), (w - 6, h - 6)), *[3] * 4, cv2.BORDER_CONSTANT, value=colour
                    )
                )
        rows.append(np.concatenate(cells, axis=1))
    image = np.concatenate([np.pad(r, ((2, 2), (0, 0), (0, 0)), constant_values=255) for r in rows])
    title = "query | " + " | ".join(f"{name}: top {top}" for name in distmats)
    image = np.pad(image, ((24, 0), (0, 0), (0, 0)), constant_values=255)
    cv2.putText(image, title, (4, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))


def evaluate(crops: list[dict], artifacts: dict[str, Path], picture: Path | None = None) -> dict[str, dict]:
    tracks = {t: i for i, t in enumerate(sorted({c["track_id"] for c in crops}))}
    labels = np.array([tracks[c["track_id"]] for c in crops])
    paths = [c["path"] for c in crops]
    results, distmats = {}, {}
    for name, artifact in artifacts.items():
        x = l2_normalize(asyncio.run(embed_crops(artifact, paths)))
        distmats[name] = 1.0 - x @ x.T
        results[name] = leave_one_out(distmats[name], labels)
    if picture is not None:
        ranked_lists(paths, labels, distmats, picture)
    images = [load_image(p) for p in paths]
    for name, cfg in HISTOGRAMS.items():
        h = np.stack([histogram(im, cfg) for im in images])
        results[name] = leave_one_out(distances(h, h.copy(), cfg.metric), labels)
    return results


def prepare(args: argparse.Namespace, work: Path) -> dict[str, float]:
    """Steps 1-3 (each skipped when its output is there from an earlier run with the same --work)."""
    seconds = {}
    if not (work / "art-before" / "spec.json").is_file():
        seconds["export_before"] = _export(args.checkpoint, work / "art-before", work)
    if not (work / "gallery" / "manifest.json").is_file():
        command = [sys.executable, "-m", "ingestion.video", str(args.video), "--gallery", str(work / "gallery")]
        command += ["--artifact", str(work / "art-before"), "--detector", str(args.detector), "--camera", CAMERA]
        command += ["--start", START, "--max-crops-per-track", "16", "--keep-crops", "--no-progress"]
        seconds["index"] = _run(command, work / "index.log")
    after = work / "ckpt-after"
    if args.redo_adapt or not (after / "meta.json").is_file():
        midpoint_iso = datetime.fromtimestamp(args.midpoint, UTC).isoformat()
        command = [sys.executable, "-m", "training.adapt", "--gallery", str(work / "gallery")]
        command += ["--checkpoint", str(args.checkpoint), "--out", str(after), "--time-to", midpoint_iso]
        command += ["--steps", str(args.steps), "--merge-threshold", str(args.merge_threshold)]
        command += ["--threads", str(args.threads)] + (["--eval-data", args.eval_data] if args.eval_data else [])
        seconds["adapt"] = _run(command, work / "adapt.log")
        seconds["export_after"] = _export(after, work / "art-after", work)
    return seconds


def run(args: argparse.Namespace) -> dict:
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-adapt-"))
    work.mkdir(parents=True, exist_ok=True)
    start = datetime.fromisoformat(START).timestamp()
    args.midpoint = start + video_seconds(args.video) / 2
    seconds = prepare(args, work)
    held_out = work / "held-out"
    if not (held_out / MANIFEST).is_file():
        export_tracks(work / "gallery", held_out)  # all of it: a track with any crop before the midpoint is left out
    crops = held_out_tracks(held_out, args.midpoint)
    results = evaluate(crops, {"before": work / "art-before", "after": work / "art-after"}, args.picture)
    adaptation = json.loads((work / "ckpt-after" / "meta.json").read_text())["adaptation"]
    return {
        "video": str(args.video),
        "checkpoint": str(args.checkpoint),
        "midpoint_s": round(args.midpoint - start, 2),
        "held_out": {"tracks": len({c["track_id"] for c in crops}), "crops": len(crops)},
        "results": results,
        "adaptation": {k: adaptation[k] for k in ("counts", "window", "losses", "seconds", "config")}
        | {"synthetic": adaptation.get("evaluation")},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "work": str(work),
        "machine": {"cpus": len(os.sched_getaffinity(0)), "platform": platform.platform()},
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def format_table(report: dict) -> str:
    lines = [f"held out: {report['held_out']['tracks']} tracks, {report['held_out']['crops']} crops (each a query)"]
    lines += [f"{'method':<16} {'rank-1':>7} {'rank-5':>7} {'mAP':>7}"]
    for name, m in report["results"].items():
        lines.append(f"{name:<16} {m['rank1']:>7.1%} {m['rank5']:>7.1%} {m['mAP']:>7.1%}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.adapt", description=__doc__.split("\n\n")[0])
    p.add_argument("--video", type=Path, default=Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi"))
    p.add_argument("--detector", default="artifacts/detector")
    p.add_argument("--checkpoint", type=Path, required=True, help="the base checkpoint (e.g. checkpoints/demo)")
    p.add_argument("--work", type=Path, help="keep the gallery, checkpoints and artifacts here (reused when there)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--merge-threshold", type=float, default=0.0)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--eval-data", help="labelled set the adaptation is also evaluated on (default: data/synth)")
    p.add_argument("--redo-adapt", action="store_true", help="adapt again in an existing --work")
    p.add_argument("--picture", type=Path, help="write ranked lists of a few held-out queries, before and after")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    report = run(args)
    print(format_table(report))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
