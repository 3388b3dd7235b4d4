"""Open-set calibration of the verdict (index.calibration, python -m index.calibrate, reid calibrate), on simulated
embeddings: identities are random unit centres, crops are centres plus noise, so no model is needed."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from formats.spec import SPEC_VERSION, Calibration, ModelSpec
from index import calibration as cal
from index.gallery import Gallery
from index.records import Record, aggregate_identities
from tests.support import FAKE_SPEC

DIM = 32


def people(rng, n_ids: int, per: int, prefix: str, noise: float = 0.9) -> tuple[np.ndarray, list[str]]:
    """``per`` crops of each of ``n_ids`` identities (unit vectors) and their labels."""
    centres = rng.normal(size=(n_ids, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.repeat(centres, per, axis=0) + noise * rng.normal(size=(n_ids * per, DIM)) / math.sqrt(DIM)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), [f"{prefix}{i:05d}" for i in range(n_ids) for _ in range(per)]


def binomial_interval(n: int, p: float, level: float = 0.95) -> tuple[float, float]:
    """Central ``level`` interval of the fraction of successes in n Bernoulli(p) trials (exact binomial)."""
    tail = (1 - level) / 2
    cdf, lo = 0.0, None
    for k in range(n + 1):
        log_pmf = math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
        cdf += math.exp(log_pmf + k * math.log(p) + (n - k) * math.log1p(-p))
        if lo is None and cdf >= tail:
            lo = k
        if cdf >= 1 - tail:
            return lo / n, k / n
    return lo / n, 1.0


@pytest.fixture(scope="module")
def split_world():
    """A gallery of 300 enrolled people (3 crops each, one query each), 8000 absent people to calibrate on and
    1000 other absent people, never seen by the calibration, to measure on."""
    rng = np.random.default_rng(0)
    x, labels = people(rng, 300, 4, "g")
    in_gallery = np.arange(len(labels)) % 4 != 3
    gallery = (x[in_gallery], [lab for lab, g in zip(labels, in_gallery, strict=True) if g])
    enrolled = (x[~in_gallery], [lab for lab, g in zip(labels, in_gallery, strict=True) if not g])
    absent = people(rng, 8000, 1, "a")
    held_out = people(rng, 1000, 1, "h")
    scores = cal.probe_scores(
        *gallery, absent=absent[0], absent_labels=absent[1], enrolled=enrolled[0], enrolled_labels=enrolled[1]
    )
    return gallery, held_out, scores


@pytest.mark.parametrize("target", [0.1, 0.01])
def test_far_on_disjoint_absent_identities_is_within_the_binomial_interval_of_the_target(split_world, target):
    gallery, (xh, _), scores = split_world
    (point,) = cal.operating_points(scores, [target])
    _, held_out_scores = cal.search_identities(xh, *gallery)
    far = float((held_out_scores >= point.threshold).mean())
    lo, hi = binomial_interval(len(held_out_scores), target)
    assert lo <= far <= hi, (far, (lo, hi), point)
    # DIR is reported, and it is a real trade-off: neither nothing nor everything at these rates
    assert 0.05 < point.dir < 0.99 and point.enrolled_probes == 300 and point.reliable
    assert point.far <= target


def test_a_lower_target_far_raises_the_threshold_and_lowers_dir(split_world):
    points = cal.operating_points(split_world[2], [0.001, 0.1, 0.01])
    assert [p.target_far for p in points] == [0.1, 0.01, 0.001]  # strictest last
    thresholds = [p.threshold for p in points]
    assert thresholds[0] < thresholds[1] < thresholds[2]
    assert points[0].dir >= points[1].dir >= points[2].dir
    # 8000 absent identities are enough for 0.001 (3000 needed); the rule is in identities_needed
    assert all(p.reliable for p in points) and cal.identities_needed(0.001) == 3000


def test_the_threshold_is_the_lowest_score_that_keeps_the_measured_far_at_the_target():
    absent = np.random.default_rng(1).uniform(0, 1, 1000).astype(np.float32)
    for far in (0.1, 0.01, 0.005):
        t = cal.threshold_at_far(absent, far)
        assert (absent >= t).mean() <= far
        lower = np.nextafter(np.float32(t), np.float32(-np.inf))
        assert (absent >= lower).mean() > far


def test_scores_are_the_servers_identity_scores(tmp_path):
    """Leave-one-identity-out equals searching real galleries (faiss, the server's aggregation) that lack the
    identity, or only the probe crop; unlabelled crops take places among the top k but are never an identity."""
    rng = np.random.default_rng(2)
    x, labels = people(rng, 12, 3, "p", noise=1.2)
    unlabelled = people(rng, 4, 1, "u")[0]
    xb = np.concatenate([x, unlabelled])
    all_labels = labels + [None] * len(unlabelled)
    scores = cal.leave_one_identity_out(xb, all_labels, top_k=5)
    assert len(scores.absent) == len(scores.enrolled) == len(labels)  # only labelled crops are probes

    def server_best(keep: np.ndarray, probe: np.ndarray, name: str) -> tuple[str | None, float]:
        with Gallery.create(tmp_path / name, model_id="m", dim=DIM) as gallery:
            gallery.add(xb[keep], [Record(person_id=all_labels[i]) for i in np.flatnonzero(keep)], model_id="m")
            identities = aggregate_identities(gallery.search(probe[None], 5, model_id="m")[0])
        return (identities[0].person_id, identities[0].score) if identities else (None, -np.inf)

    for probe in (0, 7, 20):  # crops of three identities
        without_identity = np.array([lab != labels[probe] for lab in all_labels])
        _, score = server_best(without_identity, xb[probe], f"absent{probe}")
        assert scores.absent[probe] == pytest.approx(score, abs=1e-5)
        without_crop = np.arange(len(xb)) != probe
        best, score = server_best(without_crop, xb[probe], f"enrolled{probe}")
        assert scores.enrolled[probe] == pytest.approx(score, abs=1e-5)
        assert bool(scores.enrolled_correct[probe]) == (best == labels[probe])


def test_split_scores_make_every_query_an_absent_probe_once():
    rng = np.random.default_rng(3)
    x, labels = people(rng, 20, 3, "p")
    query = np.arange(len(labels)) % 3 == 0
    distractors = people(rng, 5, 1, "d")[0]
    xb = np.concatenate([x[~query], distractors])
    b_labels = [lab for lab, q in zip(labels, query, strict=True) if not q] + [None] * 5
    q_labels = [lab for lab, q in zip(labels, query, strict=True) if q]
    scores = cal.split_scores(x[query], q_labels, xb, b_labels, folds=5, seed=0)
    assert sorted(scores.absent_identity) == sorted(q_labels)
    assert len(scores.enrolled) == 4 * len(q_labels)  # enrolled in the other four folds
    assert scores.gallery_identities == 16 and scores.gallery_crops == 16 * 2 + 5
    again = cal.split_scores(x[query], q_labels, xb, b_labels, folds=5, seed=0)
    assert np.array_equal(again.absent, scores.absent)  # deterministic for a seed


@pytest.mark.parametrize(
    ("n_ids", "fars", "needed"),
    [(29, [0.1], "FAR 0.1 needs at least 30"), (299, [0.1, 0.01], "FAR 0.01 needs at least 300")],
)
def test_too_few_identities_are_refused_with_the_number_needed(n_ids, fars, needed):
    labels = [f"p{i}" for i in range(n_ids) for _ in range(2)]
    with pytest.raises(cal.TooFewIdentitiesError, match=needed) as caught:
        cal.check_estimable(labels, fars)
    assert f"has {n_ids} labelled identities" in str(caught.value)
    cal.check_estimable([f"p{i}" for i in range(n_ids + 1) for _ in range(2)], fars)  # one more is enough


def test_dir_needs_a_person_with_two_crops():
    with pytest.raises(cal.TooFewIdentitiesError, match="two crops"):
        cal.check_estimable([f"p{i}" for i in range(40)], [0.1])


def test_choose_takes_the_target_or_the_nearest_stricter_point(split_world):
    calibration = cal.calibration(split_world[2], [0.1, 0.01], source="artifact", method="identity-split")
    point, exact = cal.choose(calibration, 0.01)
    assert exact and point.target_far == 0.01
    point, exact = cal.choose(calibration, 0.05)
    assert not exact and point.target_far == 0.01
    assert cal.choose(calibration, 0.001) == (None, False)


def test_dir_far_curve_is_monotone(split_world):
    far, dir_, thresholds = cal.dir_far_curve(split_world[2])
    assert np.all(np.diff(thresholds) < 0) and np.all(np.diff(far) >= 0) and np.all(np.diff(dir_) >= 0)
    assert far[-1] > 0.5 and far[0] <= 1 / len(split_world[2].absent)


# -- the spec and the gallery carry it ----------------------------------------------------------------------------


def test_the_spec_carries_the_calibration_and_an_older_spec_still_reads(split_world):
    calibration = cal.calibration(split_world[2], source="artifact", method="identity-split", dataset="synth")
    spec = FAKE_SPEC.model_copy(update={"calibration": calibration})
    again = ModelSpec.from_json(spec.to_json())
    assert again.calibration == calibration and again.spec_version == SPEC_VERSION
    old = json.loads(FAKE_SPEC.to_json()) | {"spec_version": 1}
    old.pop("calibration")
    legacy = ModelSpec.from_json(json.dumps(old))
    assert legacy.calibration is None and legacy.threshold.score == FAKE_SPEC.threshold.score
    with pytest.raises(ValueError, match="not supported"):
        ModelSpec.from_json(json.dumps(old | {"spec_version": SPEC_VERSION + 1}))


def test_the_embedded_gallery_stores_its_calibration(tmp_path):
    with Gallery.create(tmp_path / "g", model_id="m", dim=DIM) as gallery:
        assert gallery.calibration() is None
        gallery.set_calibration({"source": "gallery", "operating_points": []})
        assert gallery.calibration() is gallery.calibration()  # parsed once
    with Gallery.open(tmp_path / "g", readonly=True) as gallery:
        assert gallery.calibration() == {"source": "gallery", "operating_points": []}


def test_milvus_lite_stores_its_calibration(tmp_path):
    pytest.importorskip("milvus_lite")
    from index.backends import open_gallery

    with open_gallery(tmp_path / "g.db", model_id="m", dim=DIM) as gallery:
        gallery.set_calibration({"source": "gallery", "top_k": 10})
    with open_gallery(tmp_path / "g.db") as gallery:
        assert gallery.calibration() == {"source": "gallery", "top_k": 10}


# -- reid calibrate, end to end -----------------------------------------------------------------------------------


def reid(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "client.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture
def small_gallery(tmp_path):
    rng = np.random.default_rng(4)
    x, labels = people(rng, 40, 3, "p", noise=1.0)
    unlabelled = people(rng, 6, 1, "u")[0]
    with Gallery.create(tmp_path / "gallery", model_id="m", dim=DIM) as gallery:
        gallery.add(x, [Record(person_id=lab, camera_id="1") for lab in labels], model_id="m")
        gallery.add(unlabelled, [Record() for _ in range(len(unlabelled))], model_id="m")
    return tmp_path / "gallery", x, labels


def test_reid_calibrate_writes_the_gallerys_operating_points(small_gallery):
    path, x, labels = small_gallery
    out = reid("calibrate", str(path), "--far", "0.1", "0.075")
    assert out.returncode == 0, out.stderr
    assert "40 labelled identities, 126 crops (6 unlabelled)" in out.stdout
    with Gallery.open(path, readonly=True) as gallery:
        stored = Calibration.model_validate(gallery.calibration())
    assert (stored.source, stored.method, stored.gallery_identities, stored.top_k) == (
        "gallery",
        "leave-one-identity-out",
        40,
        10,
    )
    loose, strict = stored.operating_points
    assert (loose.target_far, strict.target_far) == (0.1, 0.075)
    assert loose.threshold < strict.threshold and loose.absent_probes == 120 and loose.reliable
    assert f"{loose.threshold:.4f}" in out.stdout  # the printed table is the stored one


def test_reid_calibrate_refuses_a_far_the_gallery_cannot_estimate(small_gallery):
    path = small_gallery[0]
    out = reid("calibrate", str(path), "--far", "0.01")
    assert out.returncode == 2
    assert "refused" in out.stderr and "FAR 0.01 needs at least 300" in out.stderr and "has 40" in out.stderr
    with Gallery.open(path, readonly=True) as gallery:
        assert gallery.calibration() is None  # nothing written


def test_reid_calibrate_says_to_stop_a_server_holding_the_gallery(small_gallery):
    path = small_gallery[0]
    with Gallery.open(path):  # the writer lock, as a running server holds it
        out = reid("calibrate", str(path), "--far", "0.1")
        dry = reid("calibrate", str(path), "--far", "0.1", "--dry-run", "--json")
    assert out.returncode == 1 and "stop it" in out.stderr
    assert dry.returncode == 0, dry.stderr  # a dry run only reads
    assert json.loads(dry.stdout)["operating_points"][0]["target_far"] == 0.1
