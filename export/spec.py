"""The model spec of an export, built only from the checkpoint folder, and read back from what export writes."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from formats.spec import (
    SPEC_KEY,
    Calibration,
    InputSpec,
    ModelSpec,
    NormalizationSpec,
    OutputSpec,
    Provenance,
    ThresholdSpec,
)

HASH_CHARS = 12


def weights_hash(weights_path: Path) -> str:
    """sha256 of the checkpoint's model.pt bytes, the identity of the weights."""
    digest = hashlib.sha256()
    with open(weights_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def architecture_name(meta: dict[str, Any]) -> str:
    model = meta["model"]
    return f"apnet-{model['backbone']}-level{model['level']}"


def build_spec(
    meta: dict[str, Any],
    weights_path: Path,
    *,
    dim: int,
    flip_tta: bool,
    max_batch_size: int,
    exported_at: str | None = None,
) -> ModelSpec:
    """ModelSpec from meta.json and the weights file (``dim``: the rebuilt model's feature_dim), no constants.

    model_id = architecture + flip-TTA + weights hash: embeddings of two artifacts are comparable (may share a
    gallery) exactly when their model_ids are equal, and flip-TTA changes every embedding.
    """
    data = meta["data"]
    if data.get("interpolation", "bilinear") != "bilinear":
        raise ValueError(
            f"the checkpoint was trained with {data['interpolation']!r} resizing; serving resizes bilinear"
        )
    architecture = architecture_name(meta)
    tta = "flip" if flip_tta else "noflip"
    model_id = f"{architecture}-{tta}-{weights_hash(weights_path)[:HASH_CHARS]}"
    metrics = meta.get("metrics") or {}
    threshold = meta.get("threshold")
    calibration = meta.get("calibration")  # the verdict's operating points (training/evaluate.py)
    # The threshold and the calibration were measured on the training evaluation's features; another flip-TTA
    # setting moves every score, so they would not mean the same false-positive or false-alarm rates.
    if (meta.get("train") or {}).get("flip_tta", flip_tta) != flip_tta:
        threshold = calibration = None
    return ModelSpec(
        model_id=model_id,
        architecture=architecture,
        input=InputSpec(height=int(data["height"]), width=int(data["width"])),
        normalization=NormalizationSpec(in_graph=True, mean=tuple(data["mean"]), std=tuple(data["std"])),
        output=OutputSpec(dim=dim, l2_normalized=True),
        flip_tta=flip_tta,
        max_batch_size=max_batch_size,
        threshold=None if threshold is None else ThresholdSpec(score=threshold["score"], fpr=threshold["fpr"]),
        calibration=None if calibration is None else Calibration.model_validate(calibration),
        provenance=Provenance(
            dataset=meta.get("dataset") or "",
            rank1=metrics.get("rank1"),
            mAP=metrics.get("mAP"),
            exported_at=exported_at or datetime.now(UTC).isoformat(timespec="seconds"),
            code_version=meta.get("code_version") or "",
        ),
    )


def spec_from_onnx(path: Path) -> ModelSpec:
    """The spec in an ONNX file's metadata_props (what an in-process ONNX Runtime server reads)."""
    from export.onnx_export import read_spec_json

    return ModelSpec.from_json(read_spec_json(path))


def spec_from_config_pbtxt(path: Path) -> ModelSpec:
    """The spec in a Triton config.pbtxt's parameters, parsed into Triton's ModelConfig message."""
    from export.triton_repo import parse_config

    config = parse_config(Path(path).read_text())
    if SPEC_KEY not in config.parameters:
        raise ValueError(f"{path} has no {SPEC_KEY!r} parameter")
    return ModelSpec.from_json(config.parameters[SPEC_KEY].string_value)
