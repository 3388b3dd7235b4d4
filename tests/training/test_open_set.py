"""Evaluation's open-set calibration of the verdict: operating points into the result (meta.json), the printed
DIR at FAR 1 % and 10 %, and the DIR-vs-FAR curve PNG; features are simulated, so no model is needed."""

import numpy as np
import pytest
from PIL import Image

from formats.spec import Calibration
from training.evaluate import evaluate_protocols, format_open_set, plot_dir_far

N_IDS, DIM = 100, 32


@pytest.fixture(scope="module")
def result():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(N_IDS, DIM))

    def crops(per: int) -> tuple[np.ndarray, np.ndarray]:
        return np.repeat(centres, per, 0) + 0.8 * rng.normal(size=(N_IDS * per, DIM)), np.repeat(
            np.arange(1, N_IDS + 1), per
        )

    qf, q_pids = crops(2)
    gf, g_pids = crops(4)
    gf = np.concatenate([gf, rng.normal(size=(20, DIM))])  # distractors: person 0
    g_pids = np.concatenate([g_pids, np.zeros(20, dtype=int)])
    q_cams, g_cams = np.tile([1, 2], N_IDS), np.concatenate([np.tile([3, 4, 5, 6], N_IDS), np.ones(20, dtype=int)])
    return evaluate_protocols(qf, gf, q_pids, g_pids, q_cams, g_cams, "standard", dataset="simulated")


def test_the_operating_points_are_measured_on_folds_of_identities(result):
    cal = Calibration.model_validate(result.calibration)
    assert (cal.source, cal.method, cal.dataset, cal.top_k, cal.seed) == (
        "artifact",
        "identity-split",
        "simulated",
        10,
        0,
    )
    # four of five folds enrolled; the standard protocol keeps the 20 distractors, unlabelled
    assert cal.gallery_identities == 80 and cal.gallery_crops == 80 * 4 + 20
    assert [p.target_far for p in cal.operating_points] == [0.1, 0.01, 0.001]
    assert [p.reliable for p in cal.operating_points] == [True, False, False]  # 100 absent identities
    first, second, third = cal.operating_points
    assert first.absent_probes == 2 * N_IDS and first.enrolled_probes == 4 * 2 * N_IDS
    assert first.threshold < second.threshold <= third.threshold and first.dir >= second.dir >= third.dir
    assert all(p.far <= p.target_far for p in cal.operating_points)


def test_dir_at_far_is_printed_beside_rank1_and_map(result):
    line = format_open_set(result)
    dirs = {p["target_far"]: p["dir"] for p in result.calibration["operating_points"]}
    assert f"rank1 {result.metrics['rank1']:.4f}" in line and f"mAP {result.metrics['mAP']:.4f}" in line
    assert f"DIR@FAR1% {dirs[0.01]:.4f}" in line and f"DIR@FAR10% {dirs[0.1]:.4f}" in line


def test_the_curve_is_a_png(result, tmp_path):
    path = plot_dir_far(result, tmp_path / "curve" / "dir_far.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size[0] > 300
    far, dir_ = np.asarray(result.dir_far["far"]), np.asarray(result.dir_far["dir"])
    assert len(far) == len(dir_) > 10 and np.all(np.diff(far) >= 0) and np.all(np.diff(dir_) >= 0)
