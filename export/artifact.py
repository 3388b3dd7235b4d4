"""build_artifact: checkpoint folder -> serving artifact folder, all or nothing.

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

from export.config import ExportConfig, check_model_name
from export.onnx_export import export_onnx
from export.parity import (
    ParityData,
    compare,
    load_parity_data,
    ort_embed,
    ort_session,
    retrieval_metrics,
    run_gate,
)
from export.spec import build_spec
from export.triton_repo import write_model_repository
from export.variants import convert_fp16, int8_decision, median_latency_ms, quantize_int8
from export.wrap import ServingModel
from formats.spec import ModelSpec
from training.checkpoint import MODEL_FILE, load_checkpoint

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
FP16_FILE = "model.fp16.onnx"
PLAN_FILE = "model.plan"
SPEC_FILE = "spec.json"
REPORT_FILE = "export_report.json"
REPOSITORY_DIR = "model_repository"
TIMING_BATCH = 16
SYNTH_IDS, SYNTH_CAMS = 12, 3  # the fallback parity set: ~60 train, ~40 test images, a few seconds


def build_artifact(checkpoint_dir: str | Path, out_dir: str | Path, cfg: ExportConfig) -> Path:
    """Export ``checkpoint_dir`` into ``out_dir`` (replacing an earlier artifact there); returns ``out_dir``.

    Raises export.parity.GateError when the exported model disagrees with PyTorch (nothing is written then),
    export.tensorrt.TensorRTUnavailableError for --tensorrt without a GPU or tensorrt.
    """
    checkpoint_dir, out_dir = Path(checkpoint_dir), Path(out_dir)
    name = check_model_name(cfg.name or out_dir.name)
    _check_replaceable(out_dir)
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
    spec = build_spec(
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
    report["onnx"] = {
        "file": ONNX_FILE,
        "bytes": onnx_path.stat().st_size,
        "opset": cfg.opset,
        "nodes": len(onnx.load_model(str(onnx_path), load_external_data=False).graph.node),
        "export_seconds": round(time.perf_counter() - t0, 2),
    }

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
    gate, features = run_gate(
        model, onnx_path, data, mean=mean, std=std, flip_tta=cfg.flip_tta, tol=cfg.tolerances, threads=cfg.threads
    )
    gate["data_source"] = source
    gate["seconds"] = round(time.perf_counter() - t0, 2)
    report["gate"] = gate
    onnx_metrics = gate["retrieval"]["onnx"]

    report["int8"] = _int8_variant(build, onnx_path, data, onnx_metrics, cfg) if cfg.int8 else {"enabled": False}
    report["fp16"] = _fp16_variant(build, onnx_path, data, features, cfg) if cfg.fp16 else {"enabled": False}

    served = onnx_path
    report["tensorrt"] = {"enabled": False}
    if cfg.tensorrt:
        from export.tensorrt import build_plan, gate_plan

        t0 = time.perf_counter()
        plan = build_plan(onnx_path, build / PLAN_FILE, spec, cfg.trt_precision)
        trt_report = gate_plan(plan, spec, data, features, onnx_metrics, cfg.trt_precision, cfg.tolerances)
        trt_report.update(enabled=True, file=PLAN_FILE, bytes=plan.stat().st_size)
        trt_report["seconds"] = round(time.perf_counter() - t0, 2)
        report["tensorrt"] = trt_report
        served = plan

    model_dir = write_model_repository(build / REPOSITORY_DIR, spec, name, served)
    report["triton"] = {"model_name": name, "config": str(model_dir.relative_to(build) / "config.pbtxt")}
    (build / SPEC_FILE).write_text(spec.model_dump_json(indent=2) + "\n")
    return report


def _int8_variant(
    build: Path, onnx_path: Path, data: ParityData, onnx_metrics: dict[str, float], cfg: ExportConfig
) -> dict[str, Any]:
    int8_path = build / INT8_FILE
    t0 = time.perf_counter()
    quantize_int8(onnx_path, int8_path, data.calibration)
    fp32_session, int8_session = ort_session(onnx_path, cfg.threads), ort_session(int8_path, cfg.threads)
    metrics = retrieval_metrics(
        ort_embed(int8_session, data.query.images), ort_embed(int8_session, data.gallery.images), data
    )
    batch = data.crops[:TIMING_BATCH]
    fp32_ms, int8_ms = median_latency_ms(fp32_session, batch), median_latency_ms(int8_session, batch)
    single_fp32_ms, single_int8_ms = (
        median_latency_ms(fp32_session, batch[:1]),
        median_latency_ms(int8_session, batch[:1]),
    )
    ship, reason = int8_decision(onnx_metrics["mAP"], metrics["mAP"], cfg.tolerances.int8_max_map_drop)
    result = {
        "enabled": True,
        "shipped": ship,
        "decision": reason,
        "file": INT8_FILE if ship else None,
        "bytes": int8_path.stat().st_size,
        "calibration_images": len(data.calibration),
        "fp32": onnx_metrics,
        "int8": metrics,
        "mAP_change": metrics["mAP"] - onnx_metrics["mAP"],
        "rank1_change": metrics["rank1"] - onnx_metrics["rank1"],
        "latency_ms": {"batch": len(batch), "threads": cfg.threads or "default", "fp32": fp32_ms, "int8": int8_ms},
        "speedup": fp32_ms / int8_ms,
        "latency_ms_batch1": {"fp32": single_fp32_ms, "int8": single_int8_ms},
        "speedup_batch1": single_fp32_ms / single_int8_ms,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if not ship:
        int8_path.unlink()
    return result


def _fp16_variant(
    build: Path, onnx_path: Path, data: ParityData, fp32_features: dict[str, np.ndarray], cfg: ExportConfig
) -> dict[str, Any]:
    """model.fp16.onnx, checked on ONNX Runtime's CPU kernels against the fp32 model on the crops and random
    images (GPU kernels round a little differently; the TensorRT gate covers a GPU path). Shipped when its
    cosine meets the fp16 tolerance. No mAP here: fp16 on a CPU is slower than fp32, and this file is for GPUs."""
    fp16_path = convert_fp16(onnx_path, build / FP16_FILE)
    session = ort_session(fp16_path, cfg.threads)
    figures = {
        name: compare(fp32_features[name], ort_embed(session, images))
        for name, images in (("crops", data.crops), ("random", data.noise))
    }
    min_cosine = min(f["min_cosine"] for f in figures.values())
    ship = min_cosine >= cfg.tolerances.trt_fp16_min_cosine
    result = {
        "enabled": True,
        "shipped": ship,
        "file": FP16_FILE if ship else None,
        "bytes": fp16_path.stat().st_size,
        "vs_fp32": figures,
        "min_cosine": min_cosine,
        "min_cosine_required": cfg.tolerances.trt_fp16_min_cosine,
    }
    if not ship:
        fp16_path.unlink()
    return result


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


def _check_replaceable(out_dir: Path) -> None:
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
