"""The colour-histogram baseline: histogram maths, the protocol on known answers, and on synthetic data."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from training.baseline import HistogramConfig, distances, evaluate_histogram, histogram
from training.cli import baseline_main
from training.synth import generate


def _write(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def test_each_stripe_is_a_distribution():
    rng = np.random.default_rng(0)
    cfg = HistogramConfig(bins=(4, 4, 4), stripes=5)
    h = histogram(rng.integers(0, 256, size=(100, 50, 3), dtype=np.uint8), cfg)
    assert h.shape == (5 * 64,)
    np.testing.assert_allclose(h.reshape(5, 64).sum(axis=1), 1.0, rtol=1e-5)
    assert (h >= 0).all()


@pytest.mark.parametrize("space", ["rgb", "hsv"])
def test_centre_weighting_favours_the_person_over_the_sides(space: str):
    img = np.zeros((128, 64, 3), np.uint8)  # the baseline's own size: no resampling at the borders
    img[:] = (200, 30, 30)  # red background on both sides
    img[:, 24:40] = (30, 30, 200)  # a blue person in the middle quarter
    flat = histogram(img, HistogramConfig(space=space, stripes=1, centre=0))
    centred = histogram(img, HistogramConfig(space=space, stripes=1, centre=0.08))
    blue_bin = int(
        np.argmax(histogram(np.full((64, 32, 3), (30, 30, 200), np.uint8), HistogramConfig(space=space, stripes=1)))
    )
    assert flat[blue_bin] == pytest.approx(0.25, abs=0.02)
    assert centred[blue_bin] > 0.8


def test_distances_rank_the_same_histogram_first():
    rng = np.random.default_rng(1)
    g = rng.random((6, 20)).astype(np.float32)
    g /= g.sum(axis=1, keepdims=True)
    for metric in ("hellinger", "chi2"):
        d = distances(g[[4, 1]].copy(), g.copy(), metric)
        assert d.shape == (2, 6)
        assert list(d.argmin(axis=1)) == [4, 1]
        assert np.allclose(d[[0, 1], [4, 1]], 0, atol=1e-5)
    with pytest.raises(ValueError, match="metric"):
        distances(g, g, "euclid")


def test_perfect_score_when_colours_identify_people(tmp_path: Path):
    # Each person wears one distinct colour in every camera: colour alone then identifies everyone.
    colours = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (230, 230, 40), (30, 30, 30)]
    for pid, colour in enumerate(colours, start=1):
        img = np.full((64, 32, 3), colour, np.uint8)
        _write(tmp_path / "query" / f"{pid:04d}_c1s1_{pid:06d}_01.jpg", img)
        _write(tmp_path / "bounding_box_test" / f"{pid:04d}_c2s1_{pid:06d}_01.jpg", img)
        _write(tmp_path / "bounding_box_test" / f"{pid:04d}_c1s1_{pid + 100:06d}_01.jpg", img)  # same camera: ignored
    _write(tmp_path / "bounding_box_test" / "-1_c2s1_000999_01.jpg", np.full((64, 32, 3), 128, np.uint8))  # junk
    _write(tmp_path / "bounding_box_train" / "0100_c1s1_000001_01.jpg", np.full((64, 32, 3), 90, np.uint8))
    metrics = evaluate_histogram(tmp_path)
    assert metrics["rank1"] == pytest.approx(1.0)
    assert metrics["mAP"] == pytest.approx(1.0)


def test_missing_data_is_a_clear_error(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="bounding_box_train"):
        evaluate_histogram(tmp_path)


def test_runs_on_synthetic_data(synth_data: Path, capsys: pytest.CaptureFixture[str]):
    metrics = evaluate_histogram(synth_data)
    assert set(metrics) == {"rank1", "rank5", "rank10", "mAP", "mINP"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["rank1"] <= metrics["rank5"] <= metrics["rank10"]
    baseline_main([str(synth_data), "--space", "hsv", "--bins", "8", "4", "4"])
    assert "mAP" in capsys.readouterr().out


@pytest.mark.slow
def test_colour_alone_does_not_solve_the_synthetic_set(tmp_path: Path):
    # The generator's promise: identities share clothing colours, so a colour histogram stays below 0.5 mAP
    # while it still finds some people (it is a working baseline, not noise).
    data = generate(
        tmp_path / "mid", ids=120, cams=6, seed=11, height=128, width=64, train_per_id=(2, 2), progress=False
    )
    metrics = evaluate_histogram(data)
    chance = 1 / 60
    assert metrics["mAP"] < 0.5
    assert metrics["mAP"] > 3 * chance
