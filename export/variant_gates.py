"""The gates of the reduced-precision variants, and the record of every variant that the spec carries.

Each variant is judged against the fp32 model that passed the parity gate (``fp32_features`` of the gate's
crops, random images, query and gallery, and its ``fp32_metrics``): on its own (its queries in a gallery it
embedded) and across (its queries in the fp32 gallery, and fp32 queries in its gallery). The cross-variant
figures say whether a gallery built by one may be searched by the other: a server may serve a variant against a
gallery of fp32 embeddings (or add to one) only when ``cross_variant_with_fp32.passed``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from export.config import GateTolerances
from export.parity import ParityData, compare, ort_embed, ort_session, retrieval_metrics
from export.variants import convert_fp16, int8_decision, median_latency_ms, quantize_int8
from formats.spec import CrossVariantGate, Retrieval, VariantGate, VariantSpec, VariantSpeed

ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
FP16_FILE = "model.fp16.onnx"
PLAN_FILE = "model.plan"
TIMING_BATCH = 16


def cross_variant(
    fp32_features: dict[str, np.ndarray],
    query: np.ndarray,
    gallery: np.ndarray,
    data: ParityData,
    fp32_metrics: dict[str, float],
    max_map_drop: float,
) -> CrossVariantGate:
    """A variant's query and gallery embeddings mixed with fp32's, in both directions, against fp32 alone."""
    mine = retrieval_metrics(query, fp32_features["gallery"], data)
    theirs = retrieval_metrics(fp32_features["query"], gallery, data)
    map_drop = fp32_metrics["mAP"] - min(mine["mAP"], theirs["mAP"])
    return CrossVariantGate(
        queries_in_fp32_gallery=Retrieval(**mine),
        fp32_queries_in_gallery=Retrieval(**theirs),
        mAP_drop=map_drop,
        rank1_drop=fp32_metrics["rank1"] - min(mine["rank1"], theirs["rank1"]),
        max_mAP_drop=max_map_drop,
        passed=map_drop <= max_map_drop,
    )


def fp32_variant(gate: dict[str, Any], tol: GateTolerances, speed: VariantSpeed | None = None) -> VariantSpec:
    """model.onnx: passed, since nothing is written unless the parity gate passed."""
    return VariantSpec(
        name="fp32",
        file=ONNX_FILE,
        runtime="onnxruntime",
        precision="fp32",
        device="any",
        passed=gate["passed"],
        gate=VariantGate(
            rule=f"against the {gate['reference']} reference: max |diff| <= {tol.max_abs_diff}, cosine >= "
            f"{tol.min_cosine}, rank-1 and mAP within {tol.retrieval_delta}",
            retrieval=Retrieval(**gate["retrieval"]["onnx"]),
            max_abs_diff=gate["max_abs_diff"],
            min_cosine=gate["min_cosine"],
        ),
        speed=speed,
    )


def int8_variant(
    build: Path,
    onnx_path: Path,
    data: ParityData,
    fp32_features: dict[str, np.ndarray],
    fp32_metrics: dict[str, float],
    tol: GateTolerances,
    threads: int = 0,
) -> tuple[dict[str, Any], VariantSpec, VariantSpeed]:
    """model.int8.onnx for CPUs, kept when its mAP drops by at most ``tol.int8_max_map_drop``: (report, its record,
    the fp32 model's speed measured beside it)."""
    int8_path = build / INT8_FILE
    t0 = time.perf_counter()
    quantize_int8(onnx_path, int8_path, data.calibration)
    fp32_session, int8_session = ort_session(onnx_path, threads), ort_session(int8_path, threads)
    query, gallery = ort_embed(int8_session, data.query.images), ort_embed(int8_session, data.gallery.images)
    metrics = retrieval_metrics(query, gallery, data)
    batch = data.crops[:TIMING_BATCH]
    fp32_ms, int8_ms = median_latency_ms(fp32_session, batch), median_latency_ms(int8_session, batch)
    single_fp32_ms, single_int8_ms = (
        median_latency_ms(fp32_session, batch[:1]),
        median_latency_ms(int8_session, batch[:1]),
    )
    ship, reason = int8_decision(fp32_metrics["mAP"], metrics["mAP"], tol.int8_max_map_drop)
    cross = cross_variant(fp32_features, query, gallery, data, fp32_metrics, tol.cross_variant_max_map_drop)
    report = {
        "enabled": True,
        "shipped": ship,
        "decision": reason,
        "file": INT8_FILE if ship else None,
        "bytes": int8_path.stat().st_size,
        "calibration_images": len(data.calibration),
        "fp32": fp32_metrics,
        "int8": metrics,
        "mAP_change": metrics["mAP"] - fp32_metrics["mAP"],
        "rank1_change": metrics["rank1"] - fp32_metrics["rank1"],
        "cross_variant": cross.model_dump(),
        "latency_ms": {"batch": len(batch), "threads": threads or "default", "fp32": fp32_ms, "int8": int8_ms},
        "speedup": fp32_ms / int8_ms,
        "latency_ms_batch1": {"fp32": single_fp32_ms, "int8": single_int8_ms},
        "speedup_batch1": single_fp32_ms / single_int8_ms,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if not ship:
        int8_path.unlink()
    speed = {"device": "cpu", "threads": max(threads, 0), "batch": len(batch)}
    record = VariantSpec(
        name="int8",
        file=INT8_FILE if ship else None,
        runtime="onnxruntime",
        precision="int8",
        device="cpu",
        passed=ship,
        gate=VariantGate(
            rule=f"mAP drop <= {tol.int8_max_map_drop} against fp32",
            retrieval=Retrieval(**metrics),
            mAP_drop=fp32_metrics["mAP"] - metrics["mAP"],
        ),
        cross_variant_with_fp32=cross,
        speed=VariantSpeed(
            **speed,
            latency_ms=int8_ms,
            batch1_latency_ms=single_int8_ms,
            speedup_vs_fp32=fp32_ms / int8_ms,
            batch1_speedup_vs_fp32=single_fp32_ms / single_int8_ms,
        ),
    )
    return report, record, VariantSpeed(**speed, latency_ms=fp32_ms, batch1_latency_ms=single_fp32_ms)


def fp16_variant(
    build: Path,
    onnx_path: Path,
    data: ParityData,
    fp32_features: dict[str, np.ndarray],
    fp32_metrics: dict[str, float],
    tol: GateTolerances,
    threads: int = 0,
) -> tuple[dict[str, Any], VariantSpec]:
    """model.fp16.onnx for GPUs, checked on ONNX Runtime's CPU kernels against fp32 (GPU kernels round a little
    differently; the TensorRT gate covers a GPU path). Kept when its cosine against fp32 on the crops and random
    images meets the fp16 tolerance; its retrieval, on its own and across with fp32, is measured and recorded.
    No speed: fp16 on a CPU is slower than fp32, and this file is for GPUs."""
    t0 = time.perf_counter()
    fp16_path = convert_fp16(onnx_path, build / FP16_FILE)
    session = ort_session(fp16_path, threads)
    figures = {
        name: compare(fp32_features[name], ort_embed(session, images))
        for name, images in (("crops", data.crops), ("random", data.noise))
    }
    min_cosine = min(f["min_cosine"] for f in figures.values())
    ship = min_cosine >= tol.trt_fp16_min_cosine
    query, gallery = ort_embed(session, data.query.images), ort_embed(session, data.gallery.images)
    metrics = retrieval_metrics(query, gallery, data)
    cross = cross_variant(fp32_features, query, gallery, data, fp32_metrics, tol.cross_variant_max_map_drop)
    report = {
        "enabled": True,
        "shipped": ship,
        "file": FP16_FILE if ship else None,
        "bytes": fp16_path.stat().st_size,
        "vs_fp32": figures,
        "min_cosine": min_cosine,
        "min_cosine_required": tol.trt_fp16_min_cosine,
        "fp16": metrics,
        "cross_variant": cross.model_dump(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    if not ship:
        fp16_path.unlink()
    record = VariantSpec(
        name="fp16",
        file=FP16_FILE if ship else None,
        runtime="onnxruntime",
        precision="fp16",
        device="gpu",
        passed=ship,
        gate=VariantGate(
            rule=f"cosine >= {tol.trt_fp16_min_cosine} against fp32 (ONNX Runtime CPU kernels)",
            retrieval=Retrieval(**metrics),
            mAP_drop=fp32_metrics["mAP"] - metrics["mAP"],
            min_cosine=min_cosine,
        ),
        cross_variant_with_fp32=cross,
    )
    return report, record


def tensorrt_variant(
    trt_report: dict[str, Any],
    plan_features: dict[str, np.ndarray],
    fp32_features: dict[str, np.ndarray],
    data: ParityData,
    fp32_metrics: dict[str, float],
    tol: GateTolerances,
) -> VariantSpec:
    """model.plan's record from export.tensorrt.gate_plan's report (it raised unless the plan passed)."""
    precision = trt_report["precision"]
    cross = cross_variant(
        fp32_features,
        plan_features["query"],
        plan_features["gallery"],
        data,
        fp32_metrics,
        tol.cross_variant_max_map_drop,
    )
    trt_report["cross_variant"] = cross.model_dump()
    return VariantSpec(
        name=f"tensorrt-{precision}",
        file=PLAN_FILE,
        runtime="tensorrt",
        precision=precision,
        device="gpu",
        passed=trt_report["passed"],
        gate=VariantGate(
            rule=f"cosine >= {trt_report['min_cosine_required']} and |mAP change| <= "
            f"{trt_report['map_delta_allowed']} against fp32",
            retrieval=Retrieval(**trt_report["retrieval"]["tensorrt"]),
            mAP_drop=fp32_metrics["mAP"] - trt_report["retrieval"]["tensorrt"]["mAP"],
            min_cosine=min(trt_report[name]["min_cosine"] for name in ("crops", "random", "query", "gallery")),
        ),
        cross_variant_with_fp32=cross,
    )
