"""ingestion.track_features: quality weights from crop metadata, pooled track vectors, running sums, and the
max-over-crops similarity baseline."""

from __future__ import annotations

import numpy as np
import pytest

from ingestion.track_features import TrackFeature, crop_quality, max_similarity, pool, track_feature


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _crops(seed=0, n=12, tracks=3, dim=16):
    rng = np.random.default_rng(seed)
    x = _unit(rng.standard_normal((n, dim))).astype(np.float32)
    idx = np.concatenate([np.arange(tracks), rng.integers(0, tracks, n - tracks)])
    return x, idx, rng.uniform(0.1, 1.0, n)


def test_pool_is_track_feature_per_track_and_unit_norm():
    x, idx, q = _crops()
    xb = pool(x, idx, 3, q)
    for t in range(3):
        np.testing.assert_allclose(xb[t], track_feature(x[idx == t], q[idx == t]), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(xb, axis=1), 1.0, atol=1e-6)


def test_mean_ignores_quality_and_weighted_without_quality_is_the_mean():
    x, idx, q = _crops(1)
    np.testing.assert_allclose(pool(x, idx, 3, q, method="mean"), pool(x, idx, 3), atol=1e-6)
    assert not np.allclose(pool(x, idx, 3, q), pool(x, idx, 3), atol=1e-4)


def test_all_zero_quality_falls_back_to_the_plain_mean():
    x, idx, q = _crops(2)
    q[idx == 1] = 0.0
    np.testing.assert_allclose(pool(x, idx, 3, q)[1], pool(x, idx, 3)[1], atol=1e-6)
    running = TrackFeature.empty(x.shape[1]).add(x[idx == 1], q[idx == 1])
    np.testing.assert_allclose(running.vector, pool(x, idx, 3)[1], atol=1e-6)


def test_running_sum_equals_the_batch_feature_whatever_the_order_of_arrival():
    x, idx, q = _crops(3, n=20, tracks=1)
    state = TrackFeature.empty(x.shape[1])
    for i in np.random.default_rng(0).permutation(len(x)):
        state = state.add(x[i], q[i : i + 1])
    assert state.n == len(x)
    np.testing.assert_allclose(state.vector, track_feature(x, q), atol=1e-6)
    with pytest.raises(ValueError, match="no crops"):
        _ = TrackFeature.empty(4).vector


def test_low_quality_outliers_pull_the_weighted_mean_less():
    rng = np.random.default_rng(4)
    centre = _unit(rng.standard_normal(64))
    clean = _unit(centre + 0.3 * _unit(rng.standard_normal((6, 64))))
    junk = _unit(rng.standard_normal((4, 64)))  # occluded crops: another direction, low detector score
    x = np.concatenate([clean, junk]).astype(np.float32)
    q = crop_quality(score=np.r_[np.full(6, 0.95), np.full(4, 0.35)])
    assert track_feature(x, q) @ centre > track_feature(x) @ centre + 0.02


def test_crop_quality_factors():
    q = crop_quality(score=[1.0, 0.5], box=[[0, 0, 50, 256], [0, 0, 50, 256]])
    np.testing.assert_allclose(q, [1.0, 0.5])
    small, big = crop_quality(box=[[0, 0, 10, 32], [0, 0, 60, 128]])
    assert small < big == 1.0
    blurred, sharp = crop_quality(sharpness=[5.0, 900.0])
    assert 0 < blurred < sharp < 1
    assert (crop_quality(score=[0.0]) > 0).all()  # a zero score still leaves a vector
    with pytest.raises(ValueError, match="at least one"):
        crop_quality()
    with pytest.raises(ValueError, match="box"):
        crop_quality(box=[1, 2, 3, 4])
    with pytest.raises(ValueError, match="one value per crop"):
        crop_quality(score=[0.5], sharpness=[1.0, 2.0])


def test_max_similarity_is_the_best_crop_pair():
    x, idx, _ = _crops(5, n=30, tracks=7)
    s = x @ x.T
    brute = np.array([[s[np.ix_(idx == a, idx == b)].max() for b in range(7)] for a in range(7)])
    np.testing.assert_allclose(max_similarity(x, idx, 7), brute, atol=1e-6)


def test_bad_track_numbers_are_refused():
    x, idx, q = _crops(6)
    with pytest.raises(ValueError, match="at least one crop"):
        pool(x, idx, 4, q)
    with pytest.raises(ValueError, match="lie in"):
        pool(x, idx + 1, 3, q)
    with pytest.raises(ValueError, match="quality"):
        pool(x, idx, 3, -q)
    with pytest.raises(ValueError, match="method"):
        pool(x, idx, 3, q, method="max")
