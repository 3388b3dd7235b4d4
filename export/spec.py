"""The model spec of an export, built only from the checkpoint folder, and read back from what export writes."""

from __future__ import annotations

import hashlib
import json
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
    """sha256 of a file's bytes (a checkpoint's model.pt, an imported model file): the identity of the weights."""
    digest = hashlib.sha256()
    with open(weights_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def model_id_for(
    architecture: str, flip_tta: bool, weights_sha256: str, declaration: dict[str, Any] | None = None
) -> str:
    """The one model_id recipe: architecture-flip|noflip-hash.

    Embeddings of two artifacts are comparable (may share a gallery) exactly when their model_ids are equal. The
    hash is the weights' sha256, or, when the input and output handling is declared apart from the weights (an
    imported network), the sha256 of the weights' sha256 followed by that declaration as sorted JSON: the same
    network with another preprocessing computes other embeddings. Flip-TTA changes every embedding.
    """
    digest = weights_sha256
    if declaration is not None:
        digest = hashlib.sha256((weights_sha256 + json.dumps(declaration, sort_keys=True)).encode()).hexdigest()
    return f"{architecture}-{'flip' if flip_tta else 'noflip'}-{digest[:HASH_CHARS]}"


def build_spec(
    *,
    architecture: str,
    weights_sha256: str,
    height: int,
    width: int,
    normalization: NormalizationSpec,
    dim: int,
    flip_tta: bool,
    max_batch_size: int,
    declaration: dict[str, Any] | None = None,
    l2_normalized: bool = True,
    threshold: ThresholdSpec | None = None,
    calibration: Calibration | None = None,
    dataset: str = "",
    metrics: dict[str, float] | None = None,
    code_version: str = "",
    exported_at: str | None = None,
) -> ModelSpec:
    """The one spec builder of native exports and imported networks (the model_id from ``model_id_for``)."""
    metrics = metrics or {}
    return ModelSpec(
        model_id=model_id_for(architecture, flip_tta, weights_sha256, declaration),
        architecture=architecture,
        input=InputSpec(height=int(height), width=int(width)),
        normalization=normalization,
        output=OutputSpec(dim=dim, l2_normalized=l2_normalized),
        flip_tta=flip_tta,
        max_batch_size=max_batch_size,
        threshold=threshold,
        calibration=calibration,
        provenance=Provenance(
            dataset=dataset,
            rank1=metrics.get("rank1"),
            mAP=metrics.get("mAP"),
            exported_at=exported_at or datetime.now(UTC).isoformat(timespec="seconds"),
            code_version=code_version,
        ),
    )


def architecture_name(meta: dict[str, Any]) -> str:
    model = meta["model"]
    return f"apnet-{model['backbone']}-level{model['level']}"


def checkpoint_spec(
    meta: dict[str, Any],
    weights_path: Path,
    *,
    dim: int,
    flip_tta: bool,
    max_batch_size: int,
    exported_at: str | None = None,
) -> ModelSpec:
    """The spec of a native export, from meta.json and the weights file (``dim``: the rebuilt model's feature_dim)."""
    data = meta["data"]
    if data.get("interpolation", "bilinear") != "bilinear":
        raise ValueError(
            f"the checkpoint was trained with {data['interpolation']!r} resizing; serving resizes bilinear"
        )
    threshold = meta.get("threshold")
    calibration = meta.get("calibration")  # the verdict's operating points (training/evaluate.py)
    # The threshold and the calibration were measured on the training evaluation's features; another flip-TTA
    # setting moves every score, so they would not mean the same false-positive or false-alarm rates.
    if (meta.get("train") or {}).get("flip_tta", flip_tta) != flip_tta:
        threshold = calibration = None
    return build_spec(
        architecture=architecture_name(meta),
        weights_sha256=weights_hash(weights_path),
        height=data["height"],
        width=data["width"],
        normalization=NormalizationSpec(in_graph=True, mean=tuple(data["mean"]), std=tuple(data["std"])),
        dim=dim,
        flip_tta=flip_tta,
        max_batch_size=max_batch_size,
        threshold=None if threshold is None else ThresholdSpec(score=threshold["score"], fpr=threshold["fpr"]),
        calibration=None if calibration is None else Calibration.model_validate(calibration),
        dataset=meta.get("dataset") or "",
        metrics=meta.get("metrics"),
        code_version=meta.get("code_version") or "",
        exported_at=exported_at,
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
