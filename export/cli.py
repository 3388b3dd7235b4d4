"""The command lines of export/: ``python -m export`` (a checkpoint) and ``python -m export.import_model`` (a
network trained elsewhere). They parse arguments into ExportConfig / ImportConfig, call the library, and print
a summary; nothing else in export/ parses arguments or prints.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from export.config import ExportConfig, GateTolerances, ImportConfig, ModelImportError, Preprocessing

# export.artifact, export.parity and export.import_model are imported inside the mains: --help and argument errors
# answer without loading torch.

# -- python -m export CHECKPOINT --out artifacts/NAME -------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> tuple[Path, Path, ExportConfig]:
    defaults = ExportConfig()
    p = argparse.ArgumentParser(
        prog="python -m export",
        description="Checkpoint -> serving artifact (model.onnx + spec, INT8/fp16 variants, Triton model repository), "
        "written only when the parity gate against PyTorch passes.",
    )
    p.add_argument("checkpoint", type=Path, help="checkpoint folder (model.pt + meta.json)")
    p.add_argument("--out", type=Path, required=True, help="artifact folder to create or replace (artifacts/NAME)")
    p.add_argument("--name", default="", help="Triton model name (default: the --out folder's name)")
    p.add_argument("--opset", type=int, default=defaults.opset)
    p.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    p.add_argument("--no-flip-tta", action="store_true", help="leave flip test-time augmentation out of the graph")
    p.add_argument("--no-int8", action="store_true", help="skip the INT8 CPU variant")
    p.add_argument("--no-fp16", action="store_true", help="skip the fp16 GPU variant")
    p.add_argument("--tensorrt", action="store_true", help="also build model.plan and serve it from Triton (GPU)")
    p.add_argument("--trt-precision", choices=("fp16", "fp32"), default=defaults.trt_precision)
    p.add_argument("--data", default=None, help="Market-1501-layout data for the gate and calibration")
    p.add_argument("--max-query", type=int, default=defaults.max_query)
    p.add_argument("--max-gallery", type=int, default=defaults.max_gallery)
    p.add_argument("--calibration-images", type=int, default=defaults.calibration_images)
    p.add_argument("--threads", type=int, default=defaults.threads, help="CPU threads (0: library default)")
    p.add_argument("--atol", type=float, default=GateTolerances().max_abs_diff, help="fp32 gate: max |diff|")
    args = p.parse_args(argv)
    cfg = ExportConfig(
        name=args.name,
        opset=args.opset,
        max_batch_size=args.max_batch_size,
        flip_tta=not args.no_flip_tta,
        int8=not args.no_int8,
        fp16=not args.no_fp16,
        tensorrt=args.tensorrt,
        trt_precision=args.trt_precision,
        tolerances=GateTolerances(max_abs_diff=args.atol),
        data_root=args.data,
        max_query=args.max_query,
        max_gallery=args.max_gallery,
        calibration_images=args.calibration_images,
        threads=args.threads,
    )
    return args.checkpoint, args.out, cfg


def export_main(argv: list[str] | None = None) -> int:
    checkpoint, out, cfg = parse_args(argv)
    from export.artifact import REPORT_FILE, SPEC_FILE, build_artifact
    from export.parity import GateError
    from export.tensorrt import TensorRTUnavailableError

    try:
        artifact = build_artifact(checkpoint, out, cfg)
    except GateError as exc:
        print(json.dumps(exc.report, indent=2), file=sys.stderr)
        print(f"export failed, no artifact written: {exc}", file=sys.stderr)
        return 1
    except TensorRTUnavailableError as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, FileExistsError) as exc:  # a wrong path on the command line: no traceback
        print(f"export failed: {exc}", file=sys.stderr)
        return 1
    report = json.loads((artifact / REPORT_FILE).read_text())
    print(export_summary(artifact, report))
    print(variants_summary(json.loads((artifact / SPEC_FILE).read_text())))
    return 0


def export_summary(artifact: Path, report: dict[str, Any]) -> str:
    gate = report["gate"]
    lines = [
        f"{artifact}: {report['model_id']} in {report['export_seconds']} s",
        f"  model.onnx {report['onnx']['bytes'] / 1e6:.1f} MB, opset {report['onnx']['opset']}",
        f"  gate passed: max |diff| {gate['max_abs_diff']:.2e}, min cosine {gate['min_cosine']:.7f}, "
        f"batch-vs-single {max(gate['batch_vs_single_max_abs_diff'].values()):.2e}, "
        f"rank-1/mAP deltas {gate['retrieval']['delta']['rank1']:.4f}/{gate['retrieval']['delta']['mAP']:.4f}",
    ]
    int8 = report["int8"]
    if int8.get("enabled"):
        lines.append(
            f"  int8: speed-up x{int8['speedup']:.2f} (batch {int8['latency_ms']['batch']}), "
            f"x{int8['speedup_batch1']:.2f} (batch 1), mAP change {int8['mAP_change']:+.4f} -> {int8['decision']}"
        )
    fp16 = report["fp16"]
    if fp16.get("enabled"):
        lines.append(
            f"  fp16: {'shipped' if fp16['shipped'] else 'not shipped'}, min cosine vs fp32 {fp16['min_cosine']:.6f}"
        )
    if report["tensorrt"].get("enabled"):
        lines.append(f"  tensorrt {report['tensorrt']['precision']}: gate passed")
    return "\n".join(lines)


def variants_summary(spec: dict[str, Any]) -> str:
    """One line per recorded variant: whether it passed, and whether it may share a gallery with fp32."""
    lines = ["  variants:"]
    for v in spec.get("variants", []):
        line = f"    {v['name']} ({v['file'] or 'not kept'}, {v['device']}): {'passed' if v['passed'] else 'failed'}"
        if v.get("speed"):
            line += f", {v['speed']['latency_ms']:.1f} ms at batch {v['speed']['batch']}"
        cross = v.get("cross_variant_with_fp32")
        if cross:
            verdict = "yes" if cross["passed"] else "no"
            line += f", shares an fp32 gallery: {verdict} (mAP drop {cross['mAP_drop']:+.4f}, {cross['max_mAP_drop']} allowed)"
        lines.append(line)
    return "\n".join(lines)


# -- python -m export.import_model MODEL --out artifacts/NAME [preprocessing] ----------------------------------------


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*", text)
    if not match or 0 in (int(match[1]), int(match[2])):
        raise argparse.ArgumentTypeError(f"--size is HxW, e.g. 256x128, not {text!r}")
    return int(match[1]), int(match[2])


def _triple(values: list[str], flag: str) -> tuple[float, float, float]:
    numbers = []
    for value in values:
        for part in value.replace(",", " ").split():
            try:
                numbers.append(float(part))
            except ValueError:
                raise ModelImportError(f"{flag} takes numbers, not {part!r}") from None
    if len(numbers) == 1:
        numbers *= 3
    if len(numbers) != 3:
        raise ModelImportError(f"{flag} takes 3 values (one per channel) or 1, got {len(numbers)}")
    return tuple(numbers)  # type: ignore[return-value]


def build_import_parser() -> argparse.ArgumentParser:
    defaults = ImportConfig()
    p = argparse.ArgumentParser(
        prog="python -m export.import_model",
        description="A ReID network trained elsewhere -> a served artifact (uint8 RGB in, preprocessing, flip-TTA "
        "and L2 in the graph, spec, Triton repository), written only when the parity gate passes.",
        epilog="The network sees x = (v - mean) / std * scale, v = the pixel in its channel order (--colour) and in "
        "--units (0-255, or 0-1 = pixel / 255), laid out as --layout. Example (torchreid OSNet): --size 256x128 "
        "--layout nchw --colour rgb --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --units 0-1",
    )
    p.add_argument("model", help="MODEL.onnx, a TorchScript file, or package.module:function returning an nn.Module")
    p.add_argument("--out", type=Path, required=True, help="artifact folder to create or replace (artifacts/NAME)")
    p.add_argument("--size", type=_size, help="input HxW (required when the model's spatial size is not fixed)")
    p.add_argument("--layout", choices=("nchw", "nhwc"), default="nchw", help="the network's input layout")
    p.add_argument(
        "--colour", "--color", dest="colour", choices=("rgb", "bgr"), default="rgb", help="its channel order"
    )
    p.add_argument("--mean", nargs="+", help="per-channel mean in the network's channel order, in --units")
    p.add_argument("--std", nargs="+", help="per-channel std in the network's channel order, in --units")
    p.add_argument(
        "--units", choices=("0-1", "0-255"), help="units of the pixels, --mean and --std (required with them)"
    )
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the normalised input (default 1)")
    p.add_argument("--output", help="the output holding the embedding (torch: output0, output1, ... in return order)")
    p.add_argument("--normalise", "--normalize", dest="normalise", choices=("l2", "none"), default="l2")
    p.add_argument("--flip-tta", action="store_true", help="average the embeddings of the image and its mirror")
    p.add_argument("--name", default="", help="Triton model name (default: the --out folder's name)")
    p.add_argument("--architecture", default="", help="name in the model_id (default: the file or factory name)")
    p.add_argument("--max-batch-size", type=int, default=defaults.max_batch_size)
    p.add_argument("--opset", type=int, default=defaults.opset, help="opset for torch networks exported here")
    p.add_argument("--data", help="labelled Market-1501-layout folder: parity crops, rank-1/mAP, INT8 calibration")
    p.add_argument("--int8", action="store_true", help="also build model.int8.onnx (needs --data)")
    p.add_argument("--max-query", type=int, default=defaults.max_query)
    p.add_argument("--max-gallery", type=int, default=defaults.max_gallery)
    p.add_argument("--calibration-images", type=int, default=defaults.calibration_images)
    p.add_argument("--threads", type=int, default=defaults.threads, help="CPU threads (0: library default)")
    p.add_argument("--atol", type=float, default=defaults.tolerances.max_abs_diff, help="gate: max |diff| per element")
    return p


def parse_import_args(argv: list[str] | None = None) -> tuple[str, Path, Preprocessing, ImportConfig]:
    args = build_import_parser().parse_args(argv)
    if (args.mean or args.std) and not args.units:
        raise ModelImportError("state the units of --mean/--std with --units 0-1 or --units 0-255")
    height, width = args.size or (None, None)
    pre = Preprocessing(
        height=height,
        width=width,
        layout=args.layout,
        colour=args.colour,
        mean=_triple(args.mean, "--mean") if args.mean else (0.0, 0.0, 0.0),
        std=_triple(args.std, "--std") if args.std else (1.0, 1.0, 1.0),
        units=args.units or "0-255",
        scale=args.scale,
    )
    cfg = ImportConfig(
        name=args.name,
        architecture=args.architecture,
        output=args.output,
        normalise=args.normalise,
        flip_tta=args.flip_tta,
        max_batch_size=args.max_batch_size,
        opset=args.opset,
        int8=args.int8,
        data_root=args.data,
        max_query=args.max_query,
        max_gallery=args.max_gallery,
        calibration_images=args.calibration_images,
        threads=args.threads,
        tolerances=GateTolerances(max_abs_diff=args.atol),
    )
    return args.model, args.out, pre, cfg


def import_summary(artifact: Path, report: dict[str, Any]) -> str:
    gate = report["gate"]
    lines = [
        f"{artifact}: {report['model_id']} ({report['imported_from']['kind']}) in {report['export_seconds']} s",
        f"  model.onnx {report['onnx']['bytes'] / 1e6:.2f} MB, opset {report['onnx']['opset']}, "
        f"{report['onnx']['nodes']} nodes",
        f"  gate passed: max |diff| {gate['max_abs_diff']:.2e}, min cosine {gate['min_cosine']:.7f}, "
        f"batch-vs-single {max(gate['batch_vs_single_max_abs_diff'].values()):.2e}, "
        f"rank-1/mAP deltas {gate['retrieval']['delta']['rank1']:.4f}/{gate['retrieval']['delta']['mAP']:.4f} "
        f"({gate['data_source']} data)",
    ]
    int8 = report["int8"]
    if int8.get("enabled"):
        lines.append(
            f"  int8: speed-up x{int8['speedup']:.2f}, mAP change {int8['mAP_change']:+.4f} -> {int8['decision']}"
        )
    return "\n".join(lines)


def import_main(argv: list[str] | None = None) -> int:
    from export.import_model import import_model

    try:
        source, out, pre, cfg = parse_import_args(argv)
        artifact = import_model(source, out, pre, cfg)
    except ModelImportError as exc:
        print(f"import refused: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from export.parity import GateError  # imported late: a refusal answers without loading torch

        if not isinstance(exc, GateError):
            raise
        print(json.dumps(exc.report, indent=2), file=sys.stderr)
        print(f"import failed, no artifact written: {exc}", file=sys.stderr)
        return 1
    from export.artifact import REPORT_FILE, SPEC_FILE

    report = json.loads((artifact / REPORT_FILE).read_text())
    print(import_summary(artifact, report))
    print(variants_summary(json.loads((artifact / SPEC_FILE).read_text())))
    return 0
