"""Market-1501 ranking metrics against a plain per-query reference, re-ranking, ROC and the threshold."""

import numpy as np
import pytest

from training.evaluate import evaluate_rank


def _reference(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """One query at a time, written the obvious way."""
    all_cmc, all_ap, all_inp = [], [], []
    for i in range(len(q_pids)):
        order = np.argsort(distmat[i], kind="stable")
        kept = [g for g in order if not (g_pids[g] == q_pids[i] and g_camids[g] == q_camids[i])]
        matches = np.array([g_pids[g] == q_pids[i] for g in kept], dtype=float)
        if matches.sum() == 0:
            continue
        positions = np.flatnonzero(matches)
        cmc = np.array([1.0 if positions[0] <= r else 0.0 for r in range(max_rank)])
        precisions = [(n + 1) / (p + 1) for n, p in enumerate(positions)]
        all_cmc.append(cmc)
        all_ap.append(np.mean(precisions))
        all_inp.append(len(positions) / (positions[-1] + 1))
    return np.mean(all_cmc, axis=0), np.mean(all_ap), np.mean(all_inp)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_a_per_query_reference_on_random_data(seed):
    rng = np.random.default_rng(seed)
    num_q, num_g = 40, 120
    q_pids, g_pids = rng.integers(0, 12, num_q), rng.integers(0, 12, num_g)
    q_camids, g_camids = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    q_pids[0], q_camids[0] = 99, 0  # a query with no match at all: skipped
    distmat = rng.random((num_q, num_g)).astype(np.float32)
    distmat[:, :10] = distmat[:, 10:20]  # ties
    cmc, mean_ap, minp = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=20, chunk=7)
    ref_cmc, ref_ap, ref_inp = _reference(distmat, q_pids, g_pids, q_camids, g_camids, 20)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-6)
    assert mean_ap == pytest.approx(ref_ap, abs=1e-9)
    assert minp == pytest.approx(ref_inp, abs=1e-9)
    assert cmc.shape == (20,) and 0 < mean_ap < 1


def test_same_camera_matches_are_ignored_and_perfect_ranking_scores_one():
    q_pids, q_camids = np.array([1, 2]), np.array([0, 0])
    g_pids, g_camids = np.array([1, 1, 2, 3]), np.array([0, 1, 1, 1])
    # gallery 0 is the same person from the same camera: ranked first but ignored.
    distmat = np.array([[0.0, 0.1, 0.5, 0.6], [0.4, 0.5, 0.0, 0.6]])
    cmc, mean_ap, minp = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=3)
    np.testing.assert_allclose(cmc, [1.0, 1.0, 1.0])
    assert mean_ap == minp == 1.0
    distmat[0] = [0.0, 0.9, 0.1, 0.2]  # the only valid match of query 0 now ranks third of three kept
    cmc, mean_ap, minp = evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=3)
    np.testing.assert_allclose(cmc, [0.5, 0.5, 1.0])
    assert mean_ap == pytest.approx((1 / 3 + 1) / 2)


def test_no_valid_query_raises():
    with pytest.raises(ValueError, match="no query"):
        evaluate_rank(np.zeros((1, 2)), np.array([1]), np.array([1, 2]), np.array([0]), np.array([0, 0]))
