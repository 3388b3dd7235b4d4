"""python -m export CHECKPOINT --out artifacts/NAME [options]: build a gated serving artifact."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from export.config import ExportConfig, GateTolerances


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


def main(argv: list[str] | None = None) -> int:
    checkpoint, out, cfg = parse_args(argv)
    # Imported here so that --help and argument errors answer without loading torch.
    from export.artifact import REPORT_FILE, build_artifact
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
    print(summary(artifact, report))
    return 0


def summary(artifact: Path, report: dict) -> str:
    gate = report["gate"]
    worst = max(f["max_abs_diff"] for group in gate["fp32"].values() for f in group.values())
    cos = min(f["min_cosine"] for group in gate["fp32"].values() for f in group.values())
    lines = [
        f"{artifact}: {report['model_id']} in {report['export_seconds']} s",
        f"  model.onnx {report['onnx']['bytes'] / 1e6:.1f} MB, opset {report['onnx']['opset']}",
        f"  gate passed: max |diff| {worst:.2e}, min cosine {cos:.7f}, "
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


if __name__ == "__main__":
    sys.exit(main())
