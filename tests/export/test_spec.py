"""checkpoint_spec: everything from meta.json and the weights file."""

import hashlib
import json

import pytest

from export.spec import checkpoint_spec, model_id_for

META = {
    "model": {"backbone": "resnet50", "level": 2, "num_classes": 751, "last_stride": 1},
    "data": {"height": 256, "width": 128, "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.2, 0.2], "interpolation": "bilinear"},
    "dataset": "market1501",
    "metrics": {},
    "threshold": None,
    "code_version": "abc123",
}


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"weights one")
    return path


def test_spec_fields_come_from_meta(weights):
    spec = checkpoint_spec(META, weights, dim=2048, flip_tta=True, max_batch_size=32, exported_at="2026-01-01T00:00:00")
    assert (spec.input.height, spec.input.width, spec.dim, spec.max_batch_size) == (256, 128, 2048, 32)
    assert spec.normalization.mean == (0.5, 0.4, 0.3) and spec.normalization.std == (0.2, 0.2, 0.2)
    assert spec.threshold is None and spec.provenance.rank1 is None
    assert (spec.provenance.dataset, spec.provenance.code_version) == ("market1501", "abc123")
    assert spec.architecture == "apnet-resnet50-level2"


def test_model_id_changes_with_weights_and_flip_tta(weights):
    ids = {checkpoint_spec(META, weights, dim=2048, flip_tta=flip, max_batch_size=8).model_id for flip in (True, False)}
    weights.write_bytes(b"weights two")
    ids.add(checkpoint_spec(META, weights, dim=2048, flip_tta=True, max_batch_size=8).model_id)
    assert len(ids) == 3


def test_threshold_and_metrics_are_carried(weights):
    meta = {**META, "threshold": {"score": 0.62, "fpr": 0.001}, "metrics": {"rank1": 0.9, "mAP": 0.8}}
    spec = checkpoint_spec(meta, weights, dim=2048, flip_tta=True, max_batch_size=8)
    assert (spec.threshold.score, spec.threshold.fpr) == (0.62, 0.001)
    assert (spec.provenance.rank1, spec.provenance.mAP) == (0.9, 0.8)


def test_a_resize_the_server_does_not_do_is_refused(weights):
    meta = {**META, "data": {**META["data"], "interpolation": "bicubic"}}
    with pytest.raises(ValueError, match="bicubic"):
        checkpoint_spec(meta, weights, dim=2048, flip_tta=True, max_batch_size=8)


def test_threshold_is_dropped_when_flip_tta_differs_from_the_evaluation(weights):
    meta = {**META, "threshold": {"score": 0.62, "fpr": 0.001}, "train": {"flip_tta": True}}
    assert checkpoint_spec(meta, weights, dim=2048, flip_tta=True, max_batch_size=8).threshold is not None
    assert checkpoint_spec(meta, weights, dim=2048, flip_tta=False, max_batch_size=8).threshold is None


def test_one_model_id_recipe_keeps_the_ids_of_existing_artifacts():
    """Galleries store model_ids: a native id is the weights' hash, an imported one hashes the declaration too."""
    weights = hashlib.sha256(b"weights").hexdigest()
    assert model_id_for("apnet-resnet50-level2", True, weights) == f"apnet-resnet50-level2-flip-{weights[:12]}"
    declaration = {"size": [64, 32], "flip_tta": False}
    both = hashlib.sha256((weights + json.dumps(declaration, sort_keys=True)).encode()).hexdigest()
    assert model_id_for("osnet", False, weights, declaration) == f"osnet-noflip-{both[:12]}"
    assert model_id_for("osnet", False, weights, {**declaration, "size": [128, 64]}) != f"osnet-noflip-{both[:12]}"
