"""formats.spec: the variants a version-3 spec records, and older specs still reading."""

import json

import pytest

from formats.spec import READABLE_SPEC_VERSIONS, SPEC_VERSION, ModelSpec, VariantSpec

BASE = {
    "model_id": "m-flip-0123456789ab",
    "architecture": "m",
    "input": {"height": 64, "width": 32},
    "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
    "output": {"dim": 16},
    "max_batch_size": 8,
}

INT8 = {
    "name": "int8",
    "file": "model.int8.onnx",
    "runtime": "onnxruntime",
    "precision": "int8",
    "device": "cpu",
    "passed": True,
    "gate": {"rule": "mAP drop <= 0.01", "retrieval": {"rank1": 0.9, "mAP": 0.8}, "mAP_drop": 0.002},
    "cross_variant_with_fp32": {
        "queries_in_fp32_gallery": {"rank1": 0.9, "mAP": 0.801},
        "fp32_queries_in_gallery": {"rank1": 0.89, "mAP": 0.799},
        "mAP_drop": 0.003,
        "rank1_drop": 0.01,
        "max_mAP_drop": 0.01,
        "passed": True,
    },
    "speed": {"device": "cpu", "threads": 0, "batch": 16, "latency_ms": 12.5, "speedup_vs_fp32": 1.9},
}


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_spec_reads_with_no_variants(version):
    spec = ModelSpec.from_json(json.dumps({**BASE, "spec_version": version}))
    assert spec.variants == () and spec.variant("fp32") is None and spec.spec_version == version


def test_variants_round_trip_and_are_found_by_name():
    spec = ModelSpec.from_json(json.dumps({**BASE, "spec_version": SPEC_VERSION, "variants": [INT8]}))
    assert ModelSpec.from_json(spec.to_json()) == spec
    int8 = spec.variant("int8")
    assert isinstance(int8, VariantSpec) and int8.cross_variant_with_fp32.passed and int8.speed.batch == 16
    assert int8.gate.retrieval.mAP == 0.8 and int8.gate.min_cosine is None


def test_a_newer_version_and_unknown_variant_fields_are_refused():
    with pytest.raises(ValueError, match="not supported"):
        ModelSpec.from_json(json.dumps({**BASE, "spec_version": max(READABLE_SPEC_VERSIONS) + 1}))
    with pytest.raises(ValueError, match="extra"):
        ModelSpec.from_json(json.dumps({**BASE, "spec_version": SPEC_VERSION, "variants": [{**INT8, "x": 1}]}))
