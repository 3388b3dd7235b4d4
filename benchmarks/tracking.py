"""Tracking quality against exact truth: the detector + ByteTrack of ingestion.video on synthetic camera video.

    python -m benchmarks.tracking [--data DIR] [--cameras 3 --seconds 40 --seed 0] [--detector motion|DIR ...] \
        [--variants current,match_0.9,...] --out bench/tracking.json

The video and its truth come from benchmarks.synth_video (written to a temporary folder unless --data names one
already written). Each camera's frames are decoded once, each detector runs once over them, and every tracker
variant replays the same recorded boxes, so the variants differ only in the tracker. The tracks kept are those
ingestion.video would store (seen in at least ``min_frames`` frames).

Scored per camera and over all with motmetrics (CLEAR MOT and identity metrics, boxes matched at IoU >= 0.5):
IDF1, IDP, IDR, MOTA, ID switches, fragmentations, mostly tracked / lost; plus ``pair_switches`` (the ID switches
of people walking side by side with another) and ``purity`` (the share of a stored track's boxes that are its main
person's, over all tracks: a track that stays on one person is pure). Ground-truth boxes marked "ignore" (mostly
hidden) are left out, and so are the tracked boxes that cover one of them and no other person.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import cv2
import motmetrics as mm
import numpy as np

from benchmarks.synth_video import VideoSettings, write_dataset
from embedders.detector import create_detector
from formats.detections import Boxes, box_iou
from ingestion.video.tracking import PeopleTracker, TrackerSettings

METRICS = [
    "idf1",
    "idp",
    "idr",
    "mota",
    "motp",
    "num_switches",
    "num_fragmentations",
    "mostly_tracked",
    "mostly_lost",
    "num_false_positives",
    "num_misses",
    "num_unique_objects",
]
MATCH_IOU = 0.5

# The tracker settings compared: the current defaults and one change at a time.
VARIANTS: dict[str, dict] = {
    "current": {},
    "match_0.7": {"matching_threshold": 0.7},
    "match_0.9": {"matching_threshold": 0.9},
    "activation_0.3": {"activation_threshold": 0.3},
    "activation_0.5": {"activation_threshold": 0.5},
    "lost_1s": {"lost_seconds": 1.0},
    "lost_4s": {"lost_seconds": 4.0},
    "match_0.9_lost_4s": {"matching_threshold": 0.9, "lost_seconds": 4.0},
    "match_0.95": {"matching_threshold": 0.95},
    "activation_0.3_match_0.9": {"activation_threshold": 0.3, "matching_threshold": 0.9},
    "activation_0.3_lost_1s": {"activation_threshold": 0.3, "lost_seconds": 1.0},
}


@dataclass
class Sequence:
    name: str
    frames: list[np.ndarray]  # RGB
    fps: float
    truth: list[list[tuple[int, np.ndarray, bool]]]  # per frame: (id, xyxy, counted)
    partnered: set[int]  # ids of people walking side by side with another


def load_sequences(data: Path) -> list[Sequence]:
    """Every camera of a data set written by benchmarks.synth_video."""
    passes = json.loads((data / "identities.json").read_text())["passes"]
    partnered = {int(k) for k, v in passes.items() if v["partner"] is not None}
    sequences = []
    for seq in sorted(p for p in data.iterdir() if (p / "gt" / "gt.txt").is_file()):
        video = next(seq.glob("video.*"))
        capture = cv2.VideoCapture(str(video))
        fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
        frames = []
        while True:
            ok, bgr = capture.read()
            if not ok:
                break
            frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        capture.release()
        truth: list[list] = [[] for _ in frames]
        for line in (seq / "gt" / "gt.txt").read_text().split():
            f, pid, x, y, w, h, conf = (float(v) for v in line.split(",")[:7])
            if int(f) - 1 < len(frames):
                truth[int(f) - 1].append((int(pid), np.array([x, y, x + w, y + h], np.float32), conf > 0))
        sequences.append(Sequence(seq.name, frames, fps, truth, partnered))
    return sequences


def detect(detector_name: str, frames: list[np.ndarray]) -> tuple[list[Boxes], float]:
    detector = create_detector(detector_name)
    detector.start()
    started = time.perf_counter()
    boxes = [detector.detect(f) for f in frames]
    detector.close()
    return boxes, time.perf_counter() - started


def track(boxes: list[Boxes], fps: float, settings: TrackerSettings) -> list[list[tuple[int, np.ndarray]]]:
    """ByteTrack over recorded boxes; per frame the (track, xyxy) of the tracks ingestion.video would store."""
    tracker = PeopleTracker(fps, settings)
    per_frame = [[(t.local_id, t.xyxy) for t in tracker.update(b)] for b in boxes]
    lengths = Counter(tid for frame in per_frame for tid, _ in frame)
    return [[(tid, xyxy) for tid, xyxy in frame if lengths[tid] >= settings.min_frames] for frame in per_frame]


def accumulate(seq: Sequence, hyps: list[list[tuple[int, np.ndarray]]]) -> tuple[mm.MOTAccumulator, dict]:
    """motmetrics' accumulator over one sequence, and the purity counts of its tracks."""
    acc = mm.MOTAccumulator(auto_id=True)
    owners: dict[int, Counter] = defaultdict(Counter)
    for truth, hyp in zip(seq.truth, hyps, strict=True):
        counted = [(pid, box) for pid, box, ok in truth if ok]
        ignored = np.array([box for _, box, ok in truth if not ok], np.float32).reshape(-1, 4)
        gt_boxes = np.array([box for _, box in counted], np.float32).reshape(-1, 4)
        kept = []
        for tid, box in hyp:
            over_counted = box_iou(box[None], gt_boxes)[0] if len(gt_boxes) else np.zeros(0)
            over_ignored = box_iou(box[None], ignored)[0] if len(ignored) else np.zeros(0)
            if over_ignored.size and over_ignored.max() >= MATCH_IOU and not (over_counted >= MATCH_IOU).any():
                continue  # a box on a person nobody is asked to find: neither a hit nor a false positive
            kept.append((tid, box))
            if over_counted.size and over_counted.max() >= MATCH_IOU:
                owners[tid][counted[int(over_counted.argmax())][0]] += 1
            else:
                owners[tid][-1] += 1  # on nobody
        hyp_boxes = np.array([box for _, box in kept], np.float32).reshape(-1, 4)
        distances = mm.distances.iou_matrix(_xywh(gt_boxes), _xywh(hyp_boxes), max_iou=1 - MATCH_IOU)
        acc.update([pid for pid, _ in counted], [tid for tid, _ in kept], distances)
    pure = sum(c.most_common(1)[0][1] for c in owners.values() if c.most_common(1)[0][0] != -1)
    return acc, {"boxes": sum(sum(c.values()) for c in owners.values()), "on_main_person": pure}


def _xywh(xyxy: np.ndarray) -> np.ndarray:
    out = xyxy.copy()
    out[:, 2:] -= out[:, :2]
    return out


def pair_switches(acc: mm.MOTAccumulator, partnered: set[int]) -> int:
    events = acc.mot_events
    switches = events[events["Type"] == "SWITCH"]
    return int(switches["OId"].isin(partnered).sum())


def score(sequences: list[Sequence], hyps: dict[str, list], settings: TrackerSettings) -> dict:
    """The metrics of one tracker variant, per camera and over all."""
    accs, names, purity, pairs = [], [], {"boxes": 0, "on_main_person": 0}, 0
    for seq in sequences:
        acc, counts = accumulate(seq, hyps[seq.name])
        accs.append(acc)
        names.append(seq.name)
        pairs += pair_switches(acc, seq.partnered)
        for k in purity:
            purity[k] += counts[k]
    summary = mm.metrics.create().compute_many(accs, names=names, metrics=METRICS, generate_overall=True)
    table = {
        name: {k: round(float(v), 4) if isinstance(v, float) else int(v) for k, v in row.items()}
        for name, row in summary.to_dict(orient="index").items()
    }
    overall = table["OVERALL"]
    overall["pair_switches"] = pairs
    overall["purity"] = round(purity["on_main_person"] / max(purity["boxes"], 1), 4)
    tracks = sum(len({tid for frame in hyps[s.name] for tid, _ in frame}) for s in sequences)
    return {"settings": asdict(settings), "overall": overall, "tracks": tracks, "per_camera": table}


def run(
    data: Path | None,
    video: VideoSettings,
    seed: int,
    detectors: list[str],
    variants: list[str],
) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-tracking-") as work:
        root = data if data is not None else write_dataset(Path(work) / "synth", video, seed)
        sequences = load_sequences(root)
    truth_people = len({pid for s in sequences for frame in s.truth for pid, _, ok in frame if ok})
    report: dict = {
        "data": str(data) if data is not None else "generated",
        "video": asdict(video),
        "seed": seed,
        "cameras": len(sequences),
        "frames": sum(len(s.frames) for s in sequences),
        "truth_tracks": truth_people,
        "detectors": {},
    }
    for name in detectors:
        recorded, seconds = {}, 0.0
        for seq in sequences:
            recorded[seq.name], spent = detect(name, seq.frames)
            seconds += spent
        results = {}
        for variant in variants:
            settings = replace(TrackerSettings(), **VARIANTS[variant])
            hyps = {s.name: track(recorded[s.name], s.fps, settings) for s in sequences}
            results[variant] = score(sequences, hyps, settings)
        frames = sum(len(s.frames) for s in sequences)
        report["detectors"][name] = {"detector_fps": round(frames / max(seconds, 1e-9), 1), "variants": results}
    return report


def format_table(report: dict) -> str:
    cols = ["idf1", "mota", "num_switches", "pair_switches", "num_fragmentations", "purity", "mostly_tracked"]
    lines = []
    for detector, result in report["detectors"].items():
        lines.append(f"{detector} ({result['detector_fps']} frames/s)")
        lines.append(f"  {'variant':16s} " + " ".join(f"{c:>18s}" for c in cols) + f" {'tracks':>7s}")
        for variant, r in result["variants"].items():
            cells = " ".join(f"{r['overall'][c]:>18}" for c in cols)
            lines.append(f"  {variant:16s} {cells} {r['tracks']:>7d}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tracking", description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, help="a data set benchmarks.synth_video wrote (default: generate one)")
    p.add_argument("--cameras", type=int, default=3)
    p.add_argument("--seconds", type=float, default=40.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--detector", action="append", help="motion or a detector artifact folder (repeatable)")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    video = VideoSettings(cameras=args.cameras, seconds=args.seconds)
    report = run(args.data, video, args.seed, args.detector or ["motion"], variants)
    report["date"] = datetime.now(UTC).isoformat(timespec="seconds")
    sys.stdout.write(format_table(report) + "\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
