"""python -m export.import_model: networks trained elsewhere become served, gated artifacts.

Two small networks are built and exported here (tests/export/import_nets.py): NCHW RGB with ImageNet mean/std in
0-1 units, and NHWC BGR in 0-255 units with flip-TTA. Each is imported, passes the parity gate, matches the bare
network fed preprocessing written independently below, and serves through the API from ONNX Runtime and from the
local Triton. Refusals answer in one line with exit code 2.
"""

import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import httpx
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from embedders.local_triton import LocalTriton
from embedders.onnx import OnnxEmbedder
from export.cli import import_main as main
from export.cli import parse_import_args as parse_args
from export.config import PARITY_BATCHES, Preprocessing
from export.import_model import import_model
from export.parity import GateError
from export.spec import spec_from_config_pbtxt, spec_from_onnx
from formats.images import load_image
from formats.spec import ModelSpec
from tests.export import import_nets as nets
from tests.support import LiveServer, gallery_settings

ROOT = Path(__file__).resolve().parents[2]
H, W = nets.HEIGHT, nets.WIDTH


@pytest.fixture(scope="module")
def onnx_nets(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("foreign")
    return {
        "rgb": nets.export_planar_rgb(tmp / "osnet_like.onnx"),
        "bgr": nets.export_interleaved_bgr(tmp / "caffe_like.onnx"),
    }


def _import(args: list[str]) -> Path:
    source, out, pre, cfg = parse_args(args)
    return import_model(source, out, pre, cfg)


@pytest.fixture(scope="module")
def artifacts(onnx_nets, synth_data, tmp_path_factory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("imported")
    return {
        # With a labelled folder: parity on its crops, rank-1/mAP on its split, and the INT8 variant judged there.
        "rgb": _import(
            nets.planar_rgb_args(onnx_nets["rgb"])
            + ["--out", str(out / "rgbnet"), "--data", str(synth_data), "--int8", "--threads", "1"]
        ),
        # Without: a small synthetic set made for the gate.
        "bgr": _import(nets.interleaved_bgr_args(onnx_nets["bgr"]) + ["--out", str(out / "bgrnet"), "--threads", "1"]),
    }


def report_of(artifact: Path) -> dict:
    return json.loads((artifact / "export_report.json").read_text())


def embed(path: Path, images: np.ndarray, name: str = "images") -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {name: images})[0]


def crops(synth_data: Path, n: int) -> np.ndarray:
    """n decoded test crops (resized by formats.images as the server does) of size HxW."""
    paths = sorted((synth_data / "bounding_box_test").glob("*.jpg"))[:n]
    return np.stack([load_image(p, H, W) for p in paths])


def test_both_networks_pass_the_parity_gate(artifacts):
    for kind, artifact in artifacts.items():
        gate = report_of(artifact)["gate"]
        assert gate["passed"] and not gate["failures"], kind
        figures = [f for group in gate["fp32"].values() for f in group.values()]
        assert {b for group in gate["fp32"].values() for b in group} == {str(b) for b in PARITY_BATCHES}
        assert max(f["max_abs_diff"] for f in figures) == gate["max_abs_diff"] <= gate["tolerances"]["max_abs_diff"]
        assert min(f["min_cosine"] for f in figures) == gate["min_cosine"] >= gate["tolerances"]["min_cosine"]
        assert max(gate["retrieval"]["delta"].values()) <= gate["tolerances"]["retrieval_delta"]
    assert report_of(artifacts["rgb"])["gate"]["data_source"] == "config"
    assert report_of(artifacts["bgr"])["gate"]["data_source"] == "synthetic"


def test_int8_is_judged_on_the_labelled_folder(artifacts):
    int8 = report_of(artifacts["rgb"])["int8"]
    assert int8["enabled"] and int8["calibration_images"] > 0
    assert int8["shipped"] == (artifacts["rgb"] / "model.int8.onnx").is_file()
    assert int8["shipped"] == (int8["fp32"]["mAP"] - int8["int8"]["mAP"] <= 0.01)
    assert report_of(artifacts["bgr"])["int8"] == {"enabled": False}
    # The spec records both variants, as a native export's does; without --int8 only fp32.
    rgb = ModelSpec.from_json((artifacts["rgb"] / "spec.json").read_text())
    assert [v.name for v in rgb.variants] == ["fp32", "int8"]
    record = rgb.variant("int8")
    assert record.passed == int8["shipped"] and record.cross_variant_with_fp32.model_dump() == int8["cross_variant"]
    if record.passed:
        assert spec_from_onnx(artifacts["rgb"] / record.file) == rgb
    bgr = ModelSpec.from_json((artifacts["bgr"] / "spec.json").read_text())
    assert [v.name for v in bgr.variants] == ["fp32"] and bgr.variants[0].passed


def test_wrapped_graph_is_the_network_with_its_declared_preprocessing(artifacts, onnx_nets, synth_data):
    """The reference here is written out by hand, independently of Preprocessing.apply (the gate's reference)."""
    images = crops(synth_data, 12)
    mean, std = np.array(nets.IMAGENET_MEAN, np.float32), np.array(nets.IMAGENET_STD, np.float32)
    planar = ((images / np.float32(255) - mean) / std).transpose(0, 3, 1, 2).astype(np.float32)
    feat = embed(onnx_nets["rgb"], planar, "input")
    expected = feat / np.linalg.norm(feat, axis=1, keepdims=True)
    np.testing.assert_allclose(embed(artifacts["rgb"] / "model.onnx", images), expected, atol=2e-6)

    bgr = images[..., ::-1].astype(np.float32)
    x = (bgr - np.array(nets.BGR_MEAN_255, np.float32)) / np.array(nets.BGR_STD_255, np.float32)
    both = embed(onnx_nets["bgr"], np.ascontiguousarray(x), "pixels") + embed(
        onnx_nets["bgr"], np.ascontiguousarray(x[:, :, ::-1]), "pixels"
    )
    expected = both / np.linalg.norm(both, axis=1, keepdims=True)
    np.testing.assert_allclose(embed(artifacts["bgr"] / "model.onnx", images), expected, atol=2e-6)
    # And the declarations matter: the two channel orders give different embeddings.
    assert np.abs(embed(artifacts["bgr"] / "model.onnx", images[..., ::-1].copy()) - expected).max() > 1e-3


def test_artifact_has_the_native_interface_spec_and_triton_repository(artifacts):
    for kind, artifact in artifacts.items():
        model = onnx.load(str(artifact / "model.onnx"))
        (inp,), (out,) = model.graph.input, model.graph.output
        dims = [d.dim_value or d.dim_param for d in inp.type.tensor_type.shape.dim]
        assert (inp.name, inp.type.tensor_type.elem_type, dims) == ("images", TensorProto.UINT8, ["batch", H, W, 3])
        assert (out.name, out.type.tensor_type.elem_type) == ("embeddings", TensorProto.FLOAT)
        assert [n.op_type for n in model.graph.node if "images" in n.input] == ["Cast"]  # TensorRT's condition
        spec = ModelSpec.from_json((artifact / "spec.json").read_text())
        name = artifact.name
        assert spec_from_onnx(artifact / "model.onnx") == spec
        assert spec_from_config_pbtxt(artifact / "model_repository" / name / "config.pbtxt") == spec
        assert (artifact / "model_repository" / name / "1" / "model.onnx").read_bytes() == (
            artifact / "model.onnx"
        ).read_bytes()
        assert (spec.input.height, spec.input.width, spec.output.l2_normalized) == (H, W, True)
        assert spec.dim == {"rgb": 32, "bgr": 24}[kind] and spec.flip_tta == (kind == "bgr")
        assert spec.threshold is None
    rgb = ModelSpec.from_json((artifacts["rgb"] / "spec.json").read_text())
    # The spec states the preprocessing as native specs do: (p/255 - mean) / std in RGB order.
    np.testing.assert_allclose(rgb.normalization.mean, nets.IMAGENET_MEAN)
    bgr = ModelSpec.from_json((artifacts["bgr"] / "spec.json").read_text())
    np.testing.assert_allclose(np.array(bgr.normalization.mean) * 255, nets.BGR_MEAN_255[::-1])
    np.testing.assert_allclose(np.array(bgr.normalization.std) * 255, nets.BGR_STD_255[::-1])
    assert rgb.provenance.mAP is not None and bgr.provenance.mAP is None  # measured only on labelled data


def test_onnx_runtime_embedder_serves_the_artifact(artifacts, synth_data):
    import asyncio

    async def run(artifact):
        async with OnnxEmbedder(artifact / "model.onnx", intra_op_threads=1) as embedder:
            return await embedder.embed(crops(synth_data, 3))

    for artifact in artifacts.values():
        out = asyncio.run(run(artifact))
        np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_model_id_follows_the_content_and_the_declaration(artifacts, onnx_nets, tmp_path):
    digest = hashlib.sha256(onnx_nets["bgr"].read_bytes()).hexdigest()
    first = ModelSpec.from_json((artifacts["bgr"] / "spec.json").read_text()).model_id
    assert first.startswith("caffe-like-flip-") and report_of(artifacts["bgr"])["imported_from"]["sha256"] == digest
    args = nets.interleaved_bgr_args(onnx_nets["bgr"])
    again = _import(args + ["--out", str(tmp_path / "again"), "--threads", "1"])
    assert ModelSpec.from_json((again / "spec.json").read_text()).model_id == first
    other_scale = _import(args + ["--out", str(tmp_path / "scaled"), "--scale", "2", "--threads", "1"])
    assert ModelSpec.from_json((other_scale / "spec.json").read_text()).model_id != first


def _non_float_output(path: Path) -> Path:
    """A network whose only output is the arg-max channel (int64): not an embedding."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("ArgMax", ["flat"], ["ids"], axis=1, keepdims=1),
        ],
        "argmax",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, H, W])],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 1])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _fixed_batch(path: Path) -> Path:
    """The NCHW network exported without a dynamic batch axis (a common export: batch 1 baked in)."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            nets.PlanarRGBNet().eval(),
            (torch.zeros(1, 3, H, W),),
            str(path),
            input_names=["input"],
            output_names=["feat", "logits"],
            opset_version=17,
            dynamo=False,
        )
    return path


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("two outputs", "2 outputs (feat, logits); say which is the embedding with --output"),
        ("non-float", "output 'ids' is int64; an embedding must be a float tensor"),
        ("dynamic size", "has a dynamic spatial size; give it with --size HxW"),
        ("size mismatch", "--size 128x64 does not match the static input 'input'"),
        ("units unstated", "state the units of --mean/--std with --units 0-1 or --units 0-255"),
        ("wrong layout", "has its 3 channels first: is it --layout nchw?"),
        ("0-255 as 0-1", "is outside 0-1 but --units says 0-1"),
        ("fixed batch", "has a fixed batch of 1; re-export it with a dynamic batch axis"),
        ("int8 without data", "--int8 needs --data"),
    ],
)
def test_refusals_are_one_line_with_exit_code_2(case, message, onnx_nets, tmp_path, capsys):
    rgb, bgr = str(onnx_nets["rgb"]), str(onnx_nets["bgr"])
    argv = {
        "two outputs": [rgb],
        "non-float": [str(_non_float_output(tmp_path / "argmax.onnx"))],
        "dynamic size": [bgr, "--layout", "nhwc"],
        "size mismatch": [rgb, "--size", "128x64", "--output", "feat"],
        "units unstated": [rgb, "--output", "feat", "--mean", "0.5", "--std", "0.2"],
        "wrong layout": [rgb, "--output", "feat", "--layout", "nhwc"],
        "0-255 as 0-1": [bgr, "--size", "64x32", "--layout", "nhwc", "--mean", "104,117,124", "--units", "0-1"],
        "fixed batch": [str(_fixed_batch(tmp_path / "batch1.onnx")), "--output", "feat"],
        "int8 without data": [rgb, "--output", "feat", "--int8"],
    }[case]
    out = tmp_path / "artifact"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob(".artifact*"))


def test_a_refusal_from_the_command_line_has_no_traceback(onnx_nets, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "export.import_model", str(onnx_nets["rgb"]), "--out", str(tmp_path / "a")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("import refused: the network has 2 outputs") and "Traceback" not in result.stderr


def test_a_wrong_graph_fails_the_gate_and_writes_nothing(onnx_nets, tmp_path, monkeypatch):
    """The gate's reference is the declared preprocessing in numpy; a graph that normalises the channels in the
    wrong order (the folded form the graph uses, swapped) must not ship."""
    honest = Preprocessing.affine
    monkeypatch.setattr(Preprocessing, "affine", lambda self: tuple(v[::-1] for v in honest(self)))
    with pytest.raises(GateError) as failed:
        _import(nets.planar_rgb_args(onnx_nets["rgb"]) + ["--out", str(tmp_path / "bad"), "--threads", "1"])
    assert any("cosine" in f or "diff" in f for f in failed.value.failures)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_torchscript_files_and_module_factories_import_through_torch_export(tmp_path, monkeypatch):
    import torch

    scripted = tmp_path / "planar.pt"
    torch.jit.script(nets.PlanarRGBNet(seed=3).eval()).save(str(scripted))
    (tmp_path / "my_reid_models.py").write_text(
        "from tests.export.import_nets import PlanarRGBNet\n\n"
        "def osnet_like():\n    return PlanarRGBNet(seed=3)\n\n"
        "def other_weights():\n    return PlanarRGBNet(seed=4)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    common = ["--size", f"{H}x{W}", "--mean", "0.5", "--std", "0.25", "--units", "0-1", "--output", "output0"]
    reports, specs = {}, {}
    for name, source in [
        ("ts", str(scripted)),
        ("factory", "my_reid_models:osnet_like"),
        ("other", "my_reid_models:other_weights"),
    ]:
        artifact = _import([source, *common, "--out", str(tmp_path / name), "--threads", "1"])
        reports[name] = report_of(artifact)
        specs[name] = ModelSpec.from_json((artifact / "spec.json").read_text())
        assert reports[name]["gate"]["passed"] and reports[name]["gate"]["max_abs_diff"] < 1e-5
        assert specs[name].dim == 32
    assert [reports[n]["imported_from"]["kind"] for n in reports] == ["torchscript", "factory", "factory"]
    # The same weights computed through either path agree; other weights get another model_id.
    images = np.random.default_rng(0).integers(0, 256, (4, H, W, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        embed(tmp_path / "ts" / "model.onnx", images), embed(tmp_path / "factory" / "model.onnx", images), atol=1e-5
    )
    assert len({s.model_id for s in specs.values()}) == 3
    # A torch network has no static size to read: --size is required.
    assert main([str(scripted), "--out", str(tmp_path / "nosize"), "--units", "0-1"]) == 2


def test_imports_serve_through_the_api_from_onnx_runtime_and_the_local_triton(artifacts, synth_data, tmp_path):
    both = tmp_path / "both"  # one Triton hosting the two models, as a model repository can
    for artifact in artifacts.values():
        shutil.copytree(artifact / "model_repository", both / "model_repository", dirs_exist_ok=True)
    paths = sorted((synth_data / "bounding_box_test").glob("*.jpg"))[:6]
    with LocalTriton(both) as triton:
        assert sorted(triton.model_names) == sorted(a.name for a in artifacts.values())
        for artifact in artifacts.values():
            embeddings = {}
            for backend in ("onnx", "triton"):
                settings = gallery_settings(
                    tmp_path / f"{artifact.name}-{backend}",
                    backend=backend,
                    artifact=artifact if backend == "onnx" else None,
                    triton_url=triton.url_grpc if backend == "triton" else None,
                    model_name=artifact.name if backend == "triton" else None,
                )
                with LiveServer(settings) as url, httpx.Client(base_url=url, timeout=60) as client:
                    assert client.get("/readyz").status_code == 200
                    files = [("images", (p.name, p.read_bytes(), "image/jpeg")) for p in paths]
                    r = client.post("/v1/gallery", files=files, data={"person_id": [p.name[:4] for p in paths]})
                    assert r.status_code == 201, r.text
                    ids = r.json()["ids"]
                    for item_id, path in zip(ids, paths, strict=True):
                        hit = client.post("/v1/search", files={"image": path.read_bytes()}).json()["hits"][0]
                        assert hit["id"] == item_id and hit["score"] == pytest.approx(1.0, abs=1e-5)
                    r = client.post("/v1/embed", files={"image": paths[0].read_bytes()})
                    assert r.json()["model_id"] == ModelSpec.from_json((artifact / "spec.json").read_text()).model_id
                    embeddings[backend] = np.array(r.json()["embedding"])
            np.testing.assert_allclose(embeddings["onnx"], embeddings["triton"], atol=1e-5)
