"""Adaptation from tracks without labels (training.adapt): it helps on a shifted domain, refuses too little data
and learns only from the crops captured inside the window it is given."""

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from training.adapt import AdaptConfig, adapt
from training.adapt_data import (
    MANIFEST,
    NotEnoughData,
    Requirements,
    TrackCrop,
    merge_tracks,
    read_track_set,
    sure_negatives,
    usable_tracks,
)
from training.checkpoint import data_meta, load_checkpoint, save_checkpoint
from training.data import read_dataset
from training.evaluate import evaluate_model
from training.model import APNet, APNetConfig
from training.synth import generate

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0


def shift(rgb: np.ndarray) -> np.ndarray:
    """Another camera's colour response: channels permuted, a dark gamma, a blue-green cast."""
    x = (rgb[..., [2, 0, 1]].astype(np.float32) / 255.0) ** 1.8
    return np.clip(255.0 * x * np.array([0.7, 1.0, 1.2]), 0, 255).astype(np.uint8)


def write_shifted(source: Path, out: Path) -> Path:
    for path in source.rglob("*.jpg"):
        target = out / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        rgb = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
        cv2.imwrite(str(target), cv2.cvtColor(shift(rgb), cv2.COLOR_RGB2BGR))
    return out


def write_track_set(images: list[Path], out: Path, start: float = T0) -> Path:
    """One track per person and camera of Market-1501 names, tracks of one camera overlapping in time."""
    entries, seen = [], {}
    for path in sorted(images):
        person, camera = path.name[:4], path.name.split("_")[1][:2]
        index = seen.setdefault((person, camera), len(seen))
        order = sum(1 for e in entries if e["track_id"] == f"{camera}:{person}")
        entries.append(
            {
                "file": str(path.resolve()),  # an absolute path is kept as it is by the reader
                "track_id": f"{camera}:{person}",
                "camera_id": camera,
                "captured_at": start + 2 * index + order,
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).write_text(json.dumps({"version": 1, "crops": entries}))
    return out


@pytest.fixture(scope="module")
def domains(tmp_path_factory) -> dict[str, Path]:
    """A small synthetic set, the same people seen through a shifted camera, and a model trained on the first."""
    tmp = tmp_path_factory.mktemp("adapt")
    source = generate(
        tmp / "source", ids=40, cams=2, seed=3, height=64, width=32, train_per_id=(6, 6), gallery_per_id=(4, 4),
        distractors=0, progress=False, workers=1,
    )  # fmt: skip
    shifted = write_shifted(source, tmp / "shifted")
    torch.manual_seed(0)
    model = APNet(APNetConfig("resnet18", level=0, num_classes=20))
    base = save_checkpoint(tmp / "base", model, {"data": data_meta(64, 32), "dataset": "random"})
    tracks = write_track_set(sorted((shifted / "bounding_box_train").glob("*.jpg")), tmp / "tracks")
    return {"source": source, "shifted": shifted, "base": base, "tracks": tracks, "tmp": tmp}


def _mean_ap(checkpoint: Path, data: Path) -> float:
    model, meta = load_checkpoint(checkpoint)
    result = evaluate_model(model, read_dataset(data), 64, 32, batch_size=64, flip=True)
    return result.metrics["mAP"]


def test_adaptation_on_tracks_improves_held_out_people_of_the_shifted_domain(domains):
    out = domains["tmp"] / "adapted"
    cfg = AdaptConfig(steps=60, lr=2e-3, freeze_stages=0, threads=1, requirements=Requirements(min_tracks=8))
    report = adapt(domains["base"], domains["tracks"], out, cfg, eval_data=domains["shifted"])
    before, after = report["evaluation"]["before"]["mAP"], report["evaluation"]["after"]["mAP"]
    assert after > before + 0.02, (before, after)
    assert _mean_ap(out, domains["shifted"]) == pytest.approx(after, abs=1e-6)  # the weights written are those
    meta = json.loads((out / "meta.json").read_text())
    counts = meta["adaptation"]["counts"]
    shots = Counter(p.name[:7] for p in (domains["shifted"] / "bounding_box_train").glob("*.jpg"))  # person, camera
    assert counts["tracks"] == sum(n >= 2 for n in shots.values())
    assert counts["crops"] == sum(n for n in shots.values() if n >= 2)
    assert counts["sure_negative_pairs"] > 0
    assert len(meta["adaptation"]["losses"]) > 1 and "triplet" in meta["adaptation"]["losses"][0]
    evaluation = meta["adaptation"]["evaluation"]
    assert set(evaluation) == {"data", "before", "after"} and meta["metrics"] == evaluation["after"]
    assert report["counts"] == counts


def test_too_little_data_is_refused_with_the_numbers(domains, tmp_path):
    images = sorted((domains["shifted"] / "bounding_box_train").glob("*.jpg"))[:18]  # 3 people x 2 cameras
    small = write_track_set(images, tmp_path / "small")
    with pytest.raises(
        NotEnoughData, match=r"\d tracks with at least 2 crops .*needed at least 8 such tracks and 48 crops"
    ):
        adapt(domains["base"], small, tmp_path / "never", AdaptConfig(steps=1))
    assert not (tmp_path / "never").exists()
    done = subprocess.run(
        [sys.executable, "-m", "training.adapt", "--track-set", str(small), "--checkpoint", str(domains["base"])]
        + ["--out", str(tmp_path / "never"), "--eval-data", "none"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and "too little to adapt on" in done.stderr


def test_only_crops_inside_the_window_are_learnt_from(domains, tmp_path):
    images = sorted((domains["shifted"] / "bounding_box_train").glob("*.jpg"))
    inside = write_track_set(images, tmp_path / "set")
    manifest = json.loads((inside / MANIFEST).read_text())
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    last = max(e["captured_at"] for e in manifest["crops"])
    # crops a day later are unreadable: adaptation fails if it reads any of them
    manifest["crops"] += [e | {"file": str(broken), "captured_at": e["captured_at"] + 86400} for e in manifest["crops"]]
    (inside / MANIFEST).write_text(json.dumps(manifest))
    assert len(read_track_set(inside)) == 240 and len(read_track_set(inside, time_to=last)) == 120
    cfg = AdaptConfig(steps=2, threads=1)
    report = adapt(domains["base"], inside, tmp_path / "out", cfg, time_from=T0, time_to=last)
    in_window = usable_tracks(read_track_set(inside, time_to=last), Requirements())
    assert report["counts"]["crops"] == sum(len(t) for t in in_window.values()) and report["captured"]["last"] <= last
    assert report["counts"]["crops_in_window"] == 120
    assert report["window"] == {"from": T0, "to": last}


def test_sure_negatives_and_merging():
    def track(name: str, camera: str, start: float, end: float) -> list[TrackCrop]:
        return [TrackCrop("", name, camera, start), TrackCrop("", name, camera, end)]

    tracks = [track("a", "c1", 0, 10), track("b", "c1", 5, 15), track("c", "c1", 20, 30), track("d", "c2", 0, 10)]
    negatives = sure_negatives(tracks)
    assert negatives.tolist() == [
        [False, True, False, False],
        [True, False, False, False],
        [False, False, False, False],
        [False, False, False, False],
    ]
    # a and b look the same but were seen together: never merged; c looks like a and comes later: merged
    features = np.array([[1.0, 0.0], [1.0, 0.05], [1.0, -0.01], [0.0, 1.0]])
    assert merge_tracks(features, negatives, threshold=0.1).tolist() == [0, 1, 0, 2]
    assert merge_tracks(features, negatives, threshold=0.0).tolist() == [0, 1, 2, 3]


def test_short_tracks_are_left_out():
    crops = [TrackCrop("", f"t{i}", "c", float(i)) for i in range(10)]  # one crop each
    crops += [TrackCrop("", f"u{i}", "c", float(i)) for i in range(8) for _ in range(2)]
    kept = usable_tracks(crops, Requirements(min_tracks=8, min_crops_per_track=2, min_crops=16))
    assert sorted(kept) == [f"u{i}" for i in range(8)]
    with pytest.raises(NotEnoughData, match="10 shorter tracks"):
        usable_tracks(crops, Requirements(min_tracks=9, min_crops=16))
