"""Which variant is served (embedders.variants), which galleries it may share, and OnnxEmbedder serving it."""

import asyncio
import json
import shutil

import numpy as np
import pytest

from embedders.base import create_embedder
from embedders.batcher import MicroBatcher
from embedders.onnx import OnnxEmbedder
from embedders.variants import VariantRefused, check_gallery, choose_variant, may_share, recorded_or_fp32
from formats.spec import CrossVariantGate, ModelSpec, Retrieval, VariantGate, VariantSpec, VariantSpeed
from tests.support import images_for, make_spec, write_toy_onnx

R = Retrieval(rank1=0.9, mAP=0.8)


def cross(passed: bool) -> CrossVariantGate:
    return CrossVariantGate(
        queries_in_fp32_gallery=R,
        fp32_queries_in_gallery=R,
        mAP_drop=0.001 if passed else 0.05,
        rank1_drop=0.0,
        max_mAP_drop=0.01,
        passed=passed,
    )


def variant(name, *, passed=True, shares=True, device="cpu", runtime="onnxruntime", ms=None, file="auto"):
    precision = {"int8": "int8", "fp32": "fp32"}.get(name.removeprefix("tensorrt-"), "fp16")
    return VariantSpec(
        name=name,
        file=(f"model.{name}.onnx" if name != "fp32" else "model.onnx") if file == "auto" else file,
        runtime=runtime,
        precision=precision,
        device=device,
        passed=passed,
        gate=VariantGate(rule="mAP drop <= 0.01 against fp32"),
        cross_variant_with_fp32=None if name == "fp32" else cross(shares),
        speed=None if ms is None else VariantSpeed(device="cpu", threads=0, batch=1, latency_ms=ms),
    )


FP32 = variant("fp32", device="any", ms=10.0)


def spec_with(*variants: VariantSpec) -> ModelSpec:
    return make_spec().model_copy(update={"variants": variants})


def test_the_fastest_passed_variant_for_the_device_is_chosen_by_default():
    spec = spec_with(FP32, variant("int8", ms=5.0), variant("fp16", device="gpu"))
    assert choose_variant(spec, device="cpu").name == "int8"
    assert choose_variant(spec, device="gpu").name == "fp16"  # int8 is for the CPU; fp16 before fp32 on a GPU


def test_a_variant_that_failed_or_may_not_share_an_fp32_gallery_is_not_a_default():
    assert choose_variant(spec_with(FP32, variant("int8", passed=False, ms=5.0)), device="cpu").name == "fp32"
    assert choose_variant(spec_with(FP32, variant("int8", shares=False, ms=5.0)), device="cpu").name == "fp32"
    slower = spec_with(FP32, variant("int8", ms=12.0))
    assert choose_variant(slower, device="cpu").name == "fp32"  # measured slower here: not served by default


def test_a_spec_without_variants_serves_fp32():
    assert choose_variant(make_spec(), device="cpu").file == "model.onnx"


def test_a_named_variant_is_served_or_refused_with_the_reason():
    spec = spec_with(
        FP32,
        variant("int8", shares=False),
        variant("fp16", passed=False, device="gpu", file=None),
        variant("tensorrt-fp16", device="gpu", runtime="tensorrt", file="model.plan"),
    )
    assert choose_variant(spec, device="cpu", requested="int8").name == "int8"  # named: its own gate is enough
    for name, device, why in [
        ("int4", "cpu", "no such variant.*fp32, int8, fp16, tensorrt-fp16"),
        ("fp16", "gpu", "did not pass its gate"),
        ("tensorrt-fp16", "gpu", "runs under tensorrt"),
        ("int8", "gpu", "meant for the CPU"),
    ]:
        with pytest.raises(VariantRefused, match=f"REID_MODEL_VARIANT={name}.*{why}"):
            choose_variant(spec, device=device, requested=name)


def test_galleries_are_shared_only_where_the_cross_variant_gate_passed():
    spec = spec_with(FP32, variant("int8"), variant("fp16", device="gpu", shares=False), variant("bf16"))
    assert may_share(spec, "int8", "int8") and may_share(spec, "fp32", "int8") and may_share(spec, "int8", "fp32")
    assert not may_share(spec, "fp32", "fp16") and not may_share(spec, "fp16", "fp32")
    assert not may_share(spec, "int8", "bf16")  # both passed against fp32, never measured against each other
    check_gallery(spec, "int8", {"fp32", "int8"})
    check_gallery(spec, "fp16", set())
    with pytest.raises(VariantRefused, match="variant fp32, which variant fp16.*REID_MODEL_VARIANT to fp32 or int8"):
        check_gallery(spec, "fp16", {"fp32"})
    with pytest.raises(VariantRefused, match="never measured against each other; set REID_MODEL_VARIANT to fp32"):
        check_gallery(spec, "bf16", {"int8", "fp32"})


def test_a_gallery_without_a_record_counts_as_built_by_fp32_once_it_holds_items():
    assert recorded_or_fp32(None, 0) == frozenset()
    assert recorded_or_fp32([], 3) == {"fp32"}
    assert recorded_or_fp32(["int8"], 3) == {"int8"}


# -- OnnxEmbedder serving an artifact's variant ----------------------------------------------------------------


def toy_artifact(tmp_path, *variants: VariantSpec):
    """An artifact folder: toy ONNX files for each kept variant, each carrying the spec with the records."""
    spec = spec_with(*variants)
    for v in variants:
        if v.file:
            write_toy_onnx(tmp_path / v.file, spec)
    (tmp_path / "spec.json").write_text(spec.model_dump_json())
    return tmp_path


def test_onnx_embedder_serves_the_chosen_variant_file(tmp_path):
    artifact = toy_artifact(tmp_path, FP32, variant("int8", ms=5.0))

    async def served(**kwargs):
        async with OnnxEmbedder(artifact=artifact, providers=["CPUExecutionProvider"], **kwargs) as embedder:
            out = await embedder.embed(images_for(embedder.spec, 2))
            return embedder.variant, embedder.model_path.name, out.shape

    assert asyncio.run(served()) == ("int8", "model.int8.onnx", (2, 16))
    assert asyncio.run(served(variant="fp32")) == ("fp32", "model.onnx", (2, 16))
    with pytest.raises(VariantRefused, match="no such variant"):
        asyncio.run(served(variant="fp16"))


def test_onnx_embedder_refuses_a_variant_file_of_another_model(tmp_path):
    artifact = toy_artifact(tmp_path, FP32, variant("int8", ms=5.0))
    write_toy_onnx(artifact / "model.int8.onnx", make_spec(model_id="other"))
    with pytest.raises(Exception, match="holds model other"):
        asyncio.run(OnnxEmbedder(artifact=artifact, providers=["CPUExecutionProvider"]).start())


def test_an_artifact_without_spec_json_serves_its_model_onnx_as_fp32(tmp_path):
    write_toy_onnx(tmp_path / "model.onnx", make_spec())

    async def served():
        async with create_embedder("onnx", artifact=tmp_path) as embedder:
            return embedder.variant, embedder.model_path.name

    assert asyncio.run(served()) == ("fp32", "model.onnx")


def test_the_exported_artifact_records_and_serves_its_fp32_variant(tiny_artifact, tmp_path):
    artifact = tmp_path / "a"
    shutil.copytree(tiny_artifact, artifact)
    spec = json.loads((artifact / "spec.json").read_text())
    assert [v["name"] for v in spec["variants"] if v["passed"]][0] == "fp32"

    async def served():
        async with create_embedder("onnx", artifact=artifact) as embedder:
            return embedder.variant

    assert asyncio.run(served()) == "fp32"


# -- the micro-batcher and a lone request ------------------------------------------------------------------------


def test_a_request_arriving_alone_does_not_wait_for_company():
    async def scenario():
        calls = []

        async def model(images):
            calls.append(len(images))
            return images[:, 0, 0, :1].astype(np.float32)

        batcher = MicroBatcher(model, max_batch=8, max_delay_s=600.0)  # a wait would outlast the test
        try:
            for i in range(3):
                await asyncio.wait_for(batcher.submit(np.full((1, 2, 2, 3), i, np.uint8)), timeout=60)
        finally:
            await batcher.close()
        return calls

    assert asyncio.run(scenario()) == [1, 1, 1]


def test_a_named_variant_is_refused_before_start_where_the_artifact_records_none(tmp_path):
    write_toy_onnx(tmp_path / "model.onnx", make_spec())
    assert OnnxEmbedder(artifact=tmp_path, variant="fp32").choose() is None
    with pytest.raises(VariantRefused, match="REID_MODEL_VARIANT=int8: .* has no spec.json"):
        OnnxEmbedder(artifact=tmp_path, variant="int8").choose()


def test_triton_reports_the_variant_its_model_repository_serves():
    from embedders.triton import config_variant

    spec = spec_with(FP32, variant("tensorrt-fp16", device="gpu", runtime="tensorrt", file="model.plan"))
    assert config_variant({"platform": "tensorrt_plan"}, spec) == "tensorrt-fp16"
    assert config_variant({"backend": "onnxruntime"}, spec) == "fp32"
