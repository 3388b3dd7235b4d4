"""import_model: a network trained elsewhere -> the artifact a native export makes, gated the same way.

MODEL is an ONNX file, a TorchScript file, or ``package.module:function`` returning a ``torch.nn.Module`` (with its
weights loaded). The network keeps its own input convention, declared by the caller (export.config.Preprocessing:
size, layout, channel order, mean/std and their units, scale). export.loaders reads the network and checks its
interface; export.compose joins the declared preprocessing and the postprocessing to it with ``onnx.compose``.
The one parity gate (export.parity.run_gate) then runs the wrapped graph against the network itself (ONNX Runtime
on the original ONNX file, or the torch module) fed the declared preprocessing computed in numpy; nothing is
written unless it passes. The artifact is the same as a native export's: model.onnx with the spec in its metadata
(the same spec builder and model_id recipe, export.spec), spec.json with the gated variants, the Triton model
repository, export_report.json and, with ``int8`` and a labelled data folder, a model.int8.onnx kept only when its
mAP on that folder stays within tolerance. The command line is export.cli (``python -m export.import_model``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from export.compose import declaration, wrap
from export.config import ImportConfig, ModelImportError, Preprocessing, check_model_name
from export.loaders import Interface, Network, inspect_network, load_network, np_type, probe_dim, raw_session, slug
from export.spec import build_spec
from formats.spec import ModelSpec

__all__ = ["ImportConfig", "ModelImportError", "Preprocessing", "import_model"]


def import_model(source: str, out_dir: str | Path, pre: Preprocessing, cfg: ImportConfig) -> Path:
    """Wrap ``source`` into an artifact at ``out_dir`` (replacing an earlier artifact there); returns ``out_dir``.

    Raises ModelImportError for a network or declaration that cannot be served, export.parity.GateError when the
    wrapped graph disagrees with the network (nothing is written then)."""
    out_dir = Path(out_dir)
    try:
        name = check_model_name(cfg.name or out_dir.name)
    except ValueError as exc:
        raise ModelImportError(f"{exc}; choose another --out or --name") from None
    if cfg.data_root and not Path(cfg.data_root).is_dir():
        raise ModelImportError(f"--data {cfg.data_root} is not a folder")
    started = time.perf_counter()
    # The network is checked before torch is imported (for an ONNX file), so a refusal answers at once; the
    # artifact's assembly (export.artifact, export.parity) loads torch and is imported after.
    net = load_network(source, pre, cfg)
    iface = inspect_network(net, pre, cfg.output)
    dim = probe_dim(net, iface, pre)

    from export.artifact import check_replaceable, publish_artifact

    try:
        check_replaceable(out_dir)
    except FileExistsError as exc:
        raise ModelImportError(str(exc)) from None
    return publish_artifact(out_dir, started, lambda folder: _build(net, iface, pre, dim, cfg, folder, name, source))


def imported_spec(
    net: Network,
    iface: Interface,
    pre: Preprocessing,
    dim: int,
    cfg: ImportConfig,
    *,
    l2: bool,
    metrics: dict[str, float] | None = None,
    dataset: str = "",
    exported_at: str | None = None,
) -> ModelSpec:
    """The spec of an imported network: export.spec.build_spec with the declaration hashed into the model_id, so
    two imports share a model_id (and may share a gallery) exactly when they compute the same embeddings."""
    return build_spec(
        architecture=slug(cfg.architecture) if cfg.architecture else net.architecture,
        weights_sha256=net.digest,
        declaration=declaration(pre, iface, cfg),
        height=iface.height,
        width=iface.width,
        normalization=pre.normalization_spec(),
        dim=dim,
        flip_tta=cfg.flip_tta,
        max_batch_size=cfg.max_batch_size,
        l2_normalized=l2,
        threshold=None,  # nobody calibrated this network's scores on our side
        dataset=dataset,
        metrics=metrics,
        code_version=f"imported {net.kind}",
        exported_at=exported_at,
    )


def _build(
    net: Network, iface: Interface, pre: Preprocessing, dim: int, cfg: ImportConfig, build: Path, name: str, source: str
) -> dict[str, Any]:
    import onnx
    import onnxruntime

    from export.artifact import ONNX_FILE, finish_artifact, gate_variants, onnx_report
    from export.parity import run_gate

    # A first spec (no measured metrics yet) for the gate; the written one adds what --data measured.
    spec = imported_spec(net, iface, pre, dim, cfg, l2=cfg.normalise == "l2")
    onnx_path = build / ONNX_FILE
    onnx.save_model(wrap(net, iface, pre, dim, cfg, spec), str(onnx_path))

    data, source_kind = _parity_data(cfg, iface)
    t0 = time.perf_counter()
    gate, features = run_gate(
        lambda images: reference_embed(net, iface, pre, cfg, images),
        onnx_path,
        data,
        cfg.tolerances,
        reference_name=f"{net.kind} network",
        unit_length=cfg.normalise == "l2",
        threads=cfg.threads,
    )
    gate["data_source"] = source_kind
    gate["seconds"] = round(time.perf_counter() - t0, 2)

    # With --normalise none the spec says whether the network's own output is unit length (the server checks it).
    norms = np.linalg.norm(np.concatenate([features["crops"], features["random"]]), axis=1)
    spec = imported_spec(
        net,
        iface,
        pre,
        dim,
        cfg,
        l2=cfg.normalise == "l2" or bool(np.abs(norms - 1).max() < 1e-3),
        metrics=gate["retrieval"]["onnx"] if cfg.data_root else None,
        dataset=Path(cfg.data_root).name if cfg.data_root else "",
        exported_at=spec.provenance.exported_at,
    )
    reports, variants = gate_variants(
        build, onnx_path, data, gate, features, cfg.tolerances, threads=cfg.threads, int8=cfg.int8, fp16=False
    )
    report: dict[str, Any] = {
        "name": name,
        "model_id": spec.model_id,
        "imported_from": {"source": source, "kind": net.kind, "sha256": net.digest},
        "preprocessing": declaration(pre, iface, cfg),
        "exported_at": spec.provenance.exported_at,
        "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "config": asdict(cfg),
        "onnx": onnx_report(onnx_path, iface.opset),
        "gate": gate,
        **reports,
        "tensorrt": {"enabled": False},
    }
    finish_artifact(build, spec, name, onnx_path, variants, report)
    return report


def _parity_data(cfg: ImportConfig, iface: Interface):
    """(ParityData, source): from --data when given (labelled crops: meaningful rank-1/mAP, INT8 calibration),
    else from a small synthetic set made for the gate."""
    from export.parity import load_parity_data

    with _parity_root(cfg, iface) as (root, source_kind):
        data = load_parity_data(
            root,
            "auto",
            iface.height,
            iface.width,
            max_query=cfg.max_query,
            max_gallery=cfg.max_gallery,
            calibration_images=cfg.calibration_images,
            seed=cfg.seed,
        )
    return data, source_kind


@contextlib.contextmanager
def _parity_root(cfg: ImportConfig, iface: Interface) -> Iterator[tuple[Path, str]]:
    if cfg.data_root:
        yield Path(cfg.data_root), "config"
        return
    from export.artifact import synthetic_parity_set

    with synthetic_parity_set(cfg.seed, iface.height, iface.width) as root:
        yield root, "synthetic"


def reference_embed(
    net: Network, iface: Interface, pre: Preprocessing, cfg: ImportConfig, images: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """The bare network on the declared preprocessing done in numpy; flip-TTA and L2 in numpy too."""

    def raw(x: np.ndarray) -> np.ndarray:
        x = x.astype(np_type(iface.input_type))
        if net.reference is not None:
            out = net.reference(x)[iface.output_index]
        else:
            out = raw_session(net).run([iface.output_name], {iface.input_name: x})[0]
        return out.astype(np.float32).reshape(len(x), -1)

    parts = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        feature = raw(pre.apply(chunk))
        if cfg.flip_tta:
            feature = (feature + raw(pre.apply(chunk[:, :, ::-1]))) / 2
        if cfg.normalise == "l2":
            feature = feature / np.maximum(np.linalg.norm(feature, axis=1, keepdims=True), 1e-12)
        parts.append(feature)
    return np.concatenate(parts)


if __name__ == "__main__":
    import sys

    from export.cli import import_main

    sys.exit(import_main())
