"""Market-1501 ranking metrics against a plain per-query reference, re-ranking, ROC and the threshold."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from training.checkpoint import data_meta, save_checkpoint
from training.cli import evaluate_main
from training.data import ImageDataset, eval_transform, read_dataset
from training.evaluate import (
    evaluate_features,
    evaluate_protocols,
    evaluate_rank,
    extract_features,
    pairwise_distance,
    re_rank,
    roc_summary,
    threshold_at_fpr,
)
from training.model import APNet, APNetConfig


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


def test_threshold_at_fpr_is_exact_on_distinct_scores_and_safe_on_ties():
    negatives = np.arange(1000, dtype=np.float32) / 1000
    score = threshold_at_fpr(negatives, 0.01)
    assert (negatives >= score).mean() == 0.01 and (negatives >= np.float32(0.989)).mean() > 0.01
    assert (negatives >= threshold_at_fpr(negatives, 1e-4)).mean() == 0.0
    tied = np.array([0.9] * 5 + [0.1] * 95, dtype=np.float32)
    assert (tied >= threshold_at_fpr(tied, 0.03)).mean() <= 0.03


def test_roc_summary_counts_cross_camera_positives_only():
    sim = np.array([[0.9, 0.8, 0.2, 0.1]])
    q_pids, q_cams = np.array([1]), np.array([0])
    g_pids, g_cams = np.array([1, 1, 2, 0]), np.array([0, 1, 1, 1])
    roc = roc_summary(sim, q_pids, g_pids, q_cams, g_cams, fprs=(0.0, 0.5))
    # negatives: 0.2 and 0.1; the same-camera positive (0.9) is ignored, the other one (0.8) is the positive.
    assert roc["0"]["tpr"] == 1.0 and 0.2 < roc["0"]["score"] <= 0.8 and roc["0"]["fpr"] == 0.0
    assert roc["0.5"]["fpr"] == 0.5


def _clustered(seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(30, 16))
    g_pids, g_cams = np.repeat(np.arange(30), 6), np.tile(np.arange(6), 30)
    q_pids, q_cams = np.arange(30), np.full(30, 6)
    gf = centers[g_pids] + 1.2 * rng.normal(size=(len(g_pids), 16))
    qf = centers[q_pids] + 1.2 * rng.normal(size=(30, 16))
    return qf, gf, q_pids, g_pids, q_cams, g_cams


def test_re_ranking_improves_map_on_noisy_clusters_and_reduces_to_the_original_at_lambda_1():
    gains = []
    for seed in range(3):
        qf, gf, q_pids, g_pids, q_cams, g_cams = _clustered(seed)
        dist = pairwise_distance(qf, gf, "euclidean")
        q_q, g_g = pairwise_distance(qf, qf, "euclidean"), pairwise_distance(gf, gf, "euclidean")
        reranked = re_rank(dist, q_q, g_g)
        assert reranked.shape == dist.shape
        gains.append(
            evaluate_rank(reranked, q_pids, g_pids, q_cams, g_cams)[1]
            - evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams)[1]
        )
        original = re_rank(dist, q_q, g_g, lambda_value=1.0)
        np.testing.assert_array_equal(np.argsort(original, axis=1), np.argsort(dist, axis=1))
    assert np.mean(gains) > 0.02


def test_distances():
    xq, xb = np.array([[3.0, 4.0]]), np.array([[6.0, 8.0], [0.0, 1.0]])
    np.testing.assert_allclose(pairwise_distance(xq, xb, "cosine"), [[0.0, 0.2]], atol=1e-7)
    np.testing.assert_allclose(pairwise_distance(xq, xb, "euclidean"), [[25.0, 18.0]])
    with pytest.raises(ValueError):
        pairwise_distance(xq, xb, "manhattan")


def test_flip_tta_features_are_mirror_invariant(tiny_market):
    torch.manual_seed(0)
    model = APNet(APNetConfig(backbone="resnet18", level=1, num_classes=3)).eval()
    data = read_dataset(tiny_market)
    dataset = ImageDataset(data.query, 64, 32, eval_transform())
    mirrored = ImageDataset(data.query, 64, 32, v2.Compose([v2.RandomHorizontalFlip(1.0), eval_transform()]))
    f, pids, camids = extract_features(model, DataLoader(dataset, batch_size=3), flip=True)
    f_mirror, _, _ = extract_features(model, DataLoader(mirrored, batch_size=3), flip=True)
    f_plain, _, _ = extract_features(model, DataLoader(dataset, batch_size=3), flip=False)
    assert f.shape == (len(data.query), 512) and list(pids) == [s.pid for s in data.query]
    np.testing.assert_allclose(f, f_mirror, atol=1e-4)
    assert not np.allclose(f, 2 * f_plain, atol=1e-4)


def test_cli_prints_metrics_and_writes_the_threshold(tiny_market, tmp_path, capsys):
    torch.manual_seed(0)
    model = APNet(APNetConfig(backbone="resnet18", level=2, num_classes=6))
    save_checkpoint(tmp_path / "ckpt", model, {"data": data_meta(64, 32)})
    evaluate_main([str(tmp_path / "ckpt"), "--data", str(tiny_market), "--write-meta", "--rerank", "--fpr", "0.01"])
    out = capsys.readouterr().out
    assert "rank1" in out and "mAP" in out and "mINP" in out and "FPR 0.01" in out
    # Both protocols are printed, the chosen one starred: the tiny gallery's one distractor is dropped by apnet.
    assert "standard* (9 gallery images)" in out and "apnet     (8 gallery images)" in out
    meta = json.loads((tmp_path / "ckpt" / "meta.json").read_text())
    assert set(meta["metrics"]) == {"rank1", "rank5", "rank10", "mAP", "mINP"}
    assert meta["threshold"]["fpr"] == 0.01 and -1.0 <= meta["threshold"]["score"] <= 1.0
    assert meta["protocol"] == "standard" and set(meta["metrics_by_protocol"]) == {"standard", "apnet"}

    evaluate_main([str(tmp_path / "ckpt"), "--data", str(tiny_market), "--write-meta", "--protocol", "apnet"])
    assert "apnet*" in capsys.readouterr().out
    meta = json.loads((tmp_path / "ckpt" / "meta.json").read_text())
    assert meta["protocol"] == "apnet"
    assert meta["metrics"] == {k: v for k, v in meta["metrics_by_protocol"]["apnet"].items() if k != "gallery"}
    with pytest.raises(SystemExit):
        evaluate_main([str(tmp_path / "ckpt"), "--data", str(tiny_market), "--protocol", "official"])


def _with_distractors():
    """Two queries, each with one cross-camera match; a distractor (person 0) sits nearer than query 0's match."""
    q_pids, q_cams = np.array([1, 2]), np.array([0, 0])
    g_pids, g_cams = np.array([0, 1, 2, 0, 3]), np.array([1, 1, 1, 2, 2])
    qf = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    gf = np.array([[0.95, 0.05, 0.0], [0.8, 0.2, 0.1], [0.0, 0.9, 0.1], [0.0, 0.0, 1.0], [0.3, 0.3, 0.9]])
    return qf, gf, q_pids, g_pids, q_cams, g_cams


def test_the_apnet_protocol_drops_distractors_from_the_gallery_and_standard_keeps_them():
    qf, gf, q_pids, g_pids, q_cams, g_cams = _with_distractors()
    standard = evaluate_protocols(qf, gf, q_pids, g_pids, q_cams, g_cams, "standard", threshold_fpr=0.5)
    apnet = evaluate_protocols(qf, gf, q_pids, g_pids, q_cams, g_cams, "apnet", threshold_fpr=0.5)
    assert standard.protocol == "standard" and apnet.protocol == "apnet"
    assert standard.by_protocol == apnet.by_protocol  # both report both
    assert standard.by_protocol["standard"]["gallery"] == 5 and standard.by_protocol["apnet"]["gallery"] == 3
    # Query 0's match ranks second behind a distractor in the standard gallery, first in the apnet one.
    assert standard.metrics["rank1"] == 0.5 and apnet.metrics["rank1"] == 1.0
    assert standard.metrics["mAP"] < apnet.metrics["mAP"] == 1.0
    keep = g_pids != 0
    direct = evaluate_features(qf, gf[keep], q_pids, g_pids[keep], q_cams, g_cams[keep], threshold_fpr=0.5)
    assert apnet.metrics == direct.metrics and apnet.threshold == direct.threshold
    # No distractor in the gallery: the protocols agree.
    plain = evaluate_protocols(qf, gf[keep], q_pids, g_pids[keep], q_cams, g_cams[keep], "apnet", threshold_fpr=0.5)
    assert plain.by_protocol["standard"] == plain.by_protocol["apnet"]
    with pytest.raises(ValueError, match="protocol"):
        evaluate_protocols(qf, gf, q_pids, g_pids, q_cams, g_cams, "official")
