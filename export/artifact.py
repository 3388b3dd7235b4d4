"""build_artifact: checkpoint folder -> serving artifact folder, all or nothing; and the steps every artifact
shares with an imported network's (export.import_model): the variants and their gates (``gate_variants``), the
final spec written everywhere it is read from (``finish_artifact``), and the all-or-nothing publication.

The artifact is built in a hidden temporary folder beside the destination and renamed into place only
after the parity gate passed, so a failed export never leaves a half or unchecked artifact behind.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from export.config import ExportConfig, GateTolerances, check_model_name
from export.onnx_export import export_onnx, write_spec
from export.parity import ParityData, load_parity_data, run_gate, torch_reference
from export.spec import checkpoint_spec
from export.triton_repo import write_model_repository
from export.variant_gates import (
    ONNX_FILE,
    PLAN_FILE,
    fp16_variant,
    fp32_variant,
    int8_variant,
    tensorrt_variant,
)
from export.wrap import ServingModel
from formats.spec import ModelSpec, VariantSpec
from training.checkpoint import MODEL_FILE, load_checkpoint

SPEC_FILE = "spec.json"
REPORT_FILE = "export_report.json"
REPOSITORY_DIR = "model_repository"
SYNTH_IDS, SYNTH_CAMS = 12, 3  # the fallback parity set: ~60 train, ~40 test images, a few seconds


def build_artifact(checkpoint_dir: str | Path, out_dir: str | Path, cfg: ExportConfig) -> Path:
    """Export ``checkpoint_dir`` into ``out_dir`` (replacing an earlier artifact there); returns ``out_dir``.

    Raises export.parity.GateError when the exported model disagrees with PyTorch (nothing is written then),
    export.tensorrt.TensorRTUnavailableError for --tensorrt without a GPU or tensorrt.
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    name = check_model_name(cfg.name or out_dir.name)
    check_replaceable(out_dir)
    if cfg.tensorrt:
        from export.tensorrt import require_tensorrt

        require_tensorrt()
    started = time.perf_counter()

    def build(folder: Path) -> dict[str, Any]:
        with _torch_threads(cfg.threads):
            return _build(checkpoint_dir, folder, name, cfg)

    return publish_artifact(out_dir, started, build)


def publish_artifact(out_dir: Path, started: float, build: Callable[[Path], dict[str, Any]]) -> Path:
    """Run ``build`` (which fills a folder and returns the export report) in a private folder beside out_dir, write
    the report, then move the folder into place: a failed build or gate leaves nothing behind."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".partial", dir=out_dir.parent))
    folder.chmod(0o755)  # mkdtemp makes it private; the artifact is read by servers running as other users
    try:
        report = build(folder)
        report["export_seconds"] = round(time.perf_counter() - started, 2)
        (folder / REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        _move_into_place(folder, out_dir)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return out_dir


def _build(checkpoint_dir: Path, build: Path, name: str, cfg: ExportConfig) -> dict[str, Any]:
    model, meta = load_checkpoint(checkpoint_dir)
    spec = checkpoint_spec(
        meta,
        checkpoint_dir / MODEL_FILE,
        dim=model.feature_dim,
        flip_tta=cfg.flip_tta,
        max_batch_size=cfg.max_batch_size,
    )
    mean, std = spec.normalization.mean, spec.normalization.std
    report: dict[str, Any] = {
        "name": name,
        "model_id": spec.model_id,
        "checkpoint": str(checkpoint_dir.resolve()),
        "exported_at": spec.provenance.exported_at,
        "versions": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "config": asdict(cfg),
    }

    onnx_path = build / ONNX_FILE
    t0 = time.perf_counter()
    export_onnx(ServingModel(model, mean, std, cfg.flip_tta).eval(), spec, onnx_path, opset=cfg.opset)
    report["onnx"] = onnx_report(onnx_path, cfg.opset) | {"export_seconds": round(time.perf_counter() - t0, 2)}

    with _parity_root(cfg, meta, spec) as (root, dataset, source):
        t0 = time.perf_counter()
        data = load_parity_data(
            root,
            dataset,
            spec.input.height,
            spec.input.width,
            max_query=cfg.max_query,
            max_gallery=cfg.max_gallery,
            calibration_images=cfg.calibration_images,
            seed=cfg.seed,
        )
    reference = torch_reference(model, mean, std, cfg.flip_tta)
    gate, features = run_gate(reference, onnx_path, data, cfg.tolerances, reference_name="torch", threads=cfg.threads)
    gate["data_source"] = source
    gate["seconds"] = round(time.perf_counter() - t0, 2)
    report["gate"] = gate

    reports, variants = gate_variants(
        build, onnx_path, data, gate, features, cfg.tolerances, threads=cfg.threads, int8=cfg.int8, fp16=cfg.fp16
    )
    report |= reports
    served = onnx_path
    report["tensorrt"] = {"enabled": False}
    if cfg.tensorrt:
        report["tensorrt"], trt_variant = _tensorrt_variant(build, onnx_path, spec, data, gate, features, cfg)
        variants.append(trt_variant)
        served = build / PLAN_FILE
    finish_artifact(build, spec, name, served, variants, report)
    return report


def _tensorrt_variant(
    build: Path,
    onnx_path: Path,
    spec: ModelSpec,
    data: ParityData,
    gate: dict[str, Any],
    features: dict[str, np.ndarray],
    cfg: ExportConfig,
) -> tuple[dict[str, Any], VariantSpec]:
    from export.tensorrt import build_plan, gate_plan

    t0 = time.perf_counter()
    plan = build_plan(onnx_path, build / PLAN_FILE, spec, cfg.trt_precision)
    onnx_metrics = gate["retrieval"]["onnx"]
    trt_report, plan_features = gate_plan(plan, spec, data, features, onnx_metrics, cfg.trt_precision, cfg.tolerances)
    trt_report.update(enabled=True, file=PLAN_FILE, bytes=plan.stat().st_size)
    trt_report["seconds"] = round(time.perf_counter() - t0, 2)
    variant = tensorrt_variant(trt_report, plan_features, features, data, onnx_metrics, cfg.tolerances)
    return trt_report, variant


def onnx_report(onnx_path: Path, opset: int) -> dict[str, Any]:
    return {
        "file": ONNX_FILE,
        "bytes": onnx_path.stat().st_size,
        "opset": opset,
        "nodes": len(onnx.load_model(str(onnx_path), load_external_data=False).graph.node),
    }


def gate_variants(
    build: Path,
    onnx_path: Path,
    data: ParityData,
    gate: dict[str, Any],
    features: dict[str, np.ndarray],
    tol: GateTolerances,
    *,
    threads: int,
    int8: bool,
    fp16: bool,
) -> tuple[dict[str, Any], list[VariantSpec]]:
    """The INT8 and fp16 variants of a model.onnx that passed the parity gate (``gate``, ``features``), each gated
    against it: ({"int8": report, "fp16": report}, the records of fp32 and of every variant built)."""
    fp32_metrics = gate["retrieval"]["onnx"]
    reports: dict[str, Any] = {"int8": {"enabled": False}, "fp16": {"enabled": False}}
    variants: list[VariantSpec] = []
    fp32_speed = None
    if int8:
        reports["int8"], record, fp32_speed = int8_variant(build, onnx_path, data, features, fp32_metrics, tol, threads)
        variants.append(record)
    if fp16:
        reports["fp16"], record = fp16_variant(build, onnx_path, data, features, fp32_metrics, tol, threads)
        variants.append(record)
    return reports, [fp32_variant(gate, tol, fp32_speed), *variants]


def finish_artifact(
    build: Path, spec: ModelSpec, name: str, served: Path, variants: list[VariantSpec], report: dict[str, Any]
) -> None:
    """Write the final spec, with the variants' records, everywhere a reader may take it from: every kept ONNX
    file's metadata, the Triton model repository (serving ``served``) and spec.json; the report gets the Triton
    entry and the files' final sizes."""
    spec = spec.model_copy(update={"variants": tuple(variants)})
    for variant in variants:
        if variant.file and variant.file.endswith(".onnx"):
            write_spec(build / variant.file, spec)
    model_dir = write_model_repository(build / REPOSITORY_DIR, spec, name, served)
    (build / SPEC_FILE).write_text(spec.model_dump_json(indent=2) + "\n")
    report["triton"] = {"model_name": name, "config": str(model_dir.relative_to(build) / "config.pbtxt")}
    for entry in report.values():
        if isinstance(entry, dict) and entry.get("file") and "bytes" in entry:
            entry["bytes"] = (build / entry["file"]).stat().st_size


@contextlib.contextmanager
def _parity_root(cfg: ExportConfig, meta: dict[str, Any], spec: ModelSpec) -> Iterator[tuple[Path, str, str]]:
    """(root, dataset, source) for the gate and calibration: --data, else the checkpoint's training data when it
    is on this disk, else a fresh synthetic set in a temporary folder."""
    if cfg.data_root:
        root = Path(cfg.data_root)
        if not root.is_dir():
            raise FileNotFoundError(f"--data {root} does not exist")
        yield root, "auto", "config"
        return
    train = meta.get("train") or {}
    candidate = train.get("data_root") or meta.get("data_root")
    if candidate and Path(candidate).is_dir():
        yield Path(candidate), train.get("dataset", "auto"), "checkpoint"
        return
    with synthetic_parity_set(cfg.seed, spec.input.height, spec.input.width) as root:
        yield root, "auto", "synthetic"


@contextlib.contextmanager
def synthetic_parity_set(seed: int, height: int, width: int) -> Iterator[Path]:
    """A small synthetic Market-layout set in a temporary folder, rendered at least 32x16 and at most the model's
    input size apart, for a gate that has no labelled crops of the user's."""
    from training.synth import generate

    with tempfile.TemporaryDirectory(prefix="export-synth-") as tmp:
        yield generate(
            Path(tmp) / "synth",
            ids=SYNTH_IDS,
            cams=SYNTH_CAMS,
            seed=seed,
            height=max(height, 32),
            width=max(width, 16),
            progress=False,
        )


def check_replaceable(out_dir: Path) -> None:
    """Only an earlier artifact (or an empty folder) may be replaced: never a folder of someone else's files."""
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / REPORT_FILE).is_file():
        raise FileExistsError(
            f"{out_dir} exists and is not an export artifact (no {REPORT_FILE}); choose another --out"
        )


def _move_into_place(build: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{datetime.now(UTC):%Y%m%dT%H%M%S%f}")
        out_dir.rename(old)
    build.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def _torch_threads(threads: int) -> Iterator[None]:
    if threads <= 0:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
