"""Model runtimes side by side: PyTorch eager, ONNX Runtime fp32 and INT8 (TensorRT fp16 on a GPU), at batch 1
and 16, each with its speed-up over eager and over fp32 and the fraction of its compute floor.

    python -m benchmarks.models --artifact artifacts/demo [--checkpoint checkpoints/demo] [--out bench/models.json]
    python -m benchmarks.models --artifact artifacts/demo --int8-steps --data data/synth   # what each INT8 setting gives

The floor of a runtime is the model's GFLOP per image (Conv, Gemm and MatMul counted from the ONNX graph, flip-TTA
included) over the GFLOP/s that the same runtime's own matrix product reaches in the same run, on the same
threads: torch.matmul for eager, ONNX Runtime MatMul for fp32, ONNX Runtime MatMulInteger (uint8 x int8, the
integer GEMM its QLinearConv uses) for INT8. "% of floor" is how close a runtime comes to that ceiling.

Every cell's calls are spread over interleaved rounds, so other work on a shared host weighs on all alike; read
the ratios and medians. This module is the torch side of the benchmarks (benchmarks.embedders stays torch-free);
benchmarks.report merges its JSON with the serving benchmarks into one table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper, shape_inference

BATCHES = (1, 16)
FLOOR_SHAPE = (512, 1024, 1024)  # M, K, N of the floor's matrix product: conv-sized, 1.07 GFLOP


def log(message: str) -> None:
    sys.stderr.write(message + "\n")


# The model's arithmetic, counted from the graph.


def graph_gflop(path: Path | str) -> float:
    """GFLOP of one image through the graph: 2 * MACs of every Conv, Gemm and MatMul (flip-TTA runs the network
    twice inside the graph, so it counts twice). Elementwise ops are left out: they are memory-bound."""
    model = onnx.load_model(str(path))
    batch = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch.Clear()
    batch.dim_value = 1
    model = shape_inference.infer_shapes(model, data_prop=True)
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]
    }
    shapes.update({t.name: list(t.dims) for t in model.graph.initializer})
    total = 0
    for node in model.graph.node:
        out = shapes.get(node.output[0])
        if node.op_type == "Conv":
            kernel = shapes[node.input[1]]  # (Cout, Cin / groups, kh, kw)
            total += 2 * int(np.prod(out)) * int(np.prod(kernel[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            a = shapes[node.input[0]]
            trans_a = any(at.name == "transA" and at.i for at in node.attribute)
            k = a[-2] if trans_a else a[-1]
            total += 2 * int(np.prod(out)) * k
    return total / 1e9


# Sessions and the floors.


def ort_options(threads: int) -> ort.SessionOptions:
    """As the server runs a model (embedders.onnx.session_options): intra-op threads, no spinning, all passes."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def ort_session(path: Path | str | bytes, threads: int) -> ort.InferenceSession:
    source = path if isinstance(path, bytes) else str(path)
    return ort.InferenceSession(source, ort_options(threads), providers=["CPUExecutionProvider"])


def _matmul_model(kind: str) -> tuple[bytes, dict[str, np.ndarray]]:
    m, k, n = FLOOR_SHAPE
    rng = np.random.default_rng(0)
    if kind == "fp32":
        weights = numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        node = helper.make_node("MatMul", ["a", "w"], ["y"])
        a_type, y_type, feed = TensorProto.FLOAT, TensorProto.FLOAT, rng.standard_normal((m, k)).astype(np.float32)
    else:  # uint8 activations x int8 weights, as QLinearConv / QGemm run the INT8 model
        weights = numpy_helper.from_array(rng.integers(-127, 128, (k, n)).astype(np.int8), "w")
        node = helper.make_node("MatMulInteger", ["a", "w"], ["y"])
        a_type, y_type, feed = TensorProto.UINT8, TensorProto.INT32, rng.integers(0, 256, (m, k)).astype(np.uint8)
    graph = helper.make_graph(
        [node],
        f"floor_{kind}",
        [helper.make_tensor_value_info("a", a_type, [m, k])],
        [helper.make_tensor_value_info("y", y_type, [m, n])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return model.SerializeToString(), {"a": feed}


def floor_runners(threads: int, torch_floor: bool) -> dict[str, Callable[[], Any]]:
    """One call of each runtime's matrix product (FLOOR_SHAPE), keyed by the floor it measures."""
    runners: dict[str, Callable[[], Any]] = {}
    for kind in ("fp32", "int8"):
        model, feed = _matmul_model(kind)
        session = ort_session(model, threads)
        runners[f"onnxruntime-{kind}"] = lambda s=session, f=feed: s.run(None, f)
    if torch_floor:
        import torch

        m, k, n = FLOOR_SHAPE
        a, b = torch.randn(m, k), torch.randn(k, n)
        runners["torch-fp32"] = lambda: torch.matmul(a, b)
    return runners


# The runtimes.


class Runtime:
    """A named way to embed a uint8 batch; ``floor`` names the floor_runners entry it is held against."""

    def __init__(self, name: str, floor: str | None, run: Callable[[np.ndarray], np.ndarray]):
        self.name, self.floor, self.run = name, floor, run


def onnx_runtime(name: str, path: Path, threads: int, floor: str) -> Runtime:
    session = ort_session(path, threads)
    feed = session.get_inputs()[0].name
    return Runtime(name, floor, lambda images: session.run(None, {feed: images})[0])


def eager_runtime(checkpoint: Path, spec: Any, threads: int) -> Runtime:
    """The checkpoint in PyTorch eager mode, wrapped exactly as the export wraps it (uint8 in, L2 rows out)."""
    import torch

    from export.wrap import ServingModel
    from training.checkpoint import load_checkpoint

    torch.set_num_threads(threads)
    model, _ = load_checkpoint(checkpoint)
    serving = ServingModel(model.eval(), spec.normalization.mean, spec.normalization.std, spec.flip_tta).eval()

    def run(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return serving(torch.from_numpy(images)).numpy()

    return Runtime("pytorch eager fp32", "torch-fp32", run)


def tensorrt_runtime(plan: Path, dim: int) -> Runtime | None:
    """The artifact's model.plan on the GPU (None without a CUDA GPU or tensorrt)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        from export.tensorrt import load_plan, plan_embed

        context = load_plan(plan)
    except (ImportError, RuntimeError) as exc:
        log(f"tensorrt: not measured ({exc})")
        return None
    return Runtime("tensorrt (GPU)", None, lambda images: plan_embed(context, images, dim, batch_size=len(images)))


# Timing.


def interleaved(
    cells: dict[Any, Callable[[], Any]], rounds: int, calls: Callable[[Any], int]
) -> dict[Any, list[float]]:
    """Seconds of every call of every cell; each round runs ``calls(key)`` calls of every cell in turn."""
    for fn in cells.values():
        fn()  # warm-up: first-call allocations and lazy initialisation stay out
    times: dict[Any, list[float]] = {key: [] for key in cells}
    for round_ in range(rounds):
        for key, fn in cells.items():
            for _ in range(calls(key)):
                start = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - start)
        log(f"round {round_ + 1}/{rounds}")
    return times


def host_info(threads: int) -> dict[str, Any]:
    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    model_name = ""
    try:
        model_name = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        pass
    isa = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags.split()]
    return {
        "cpu": model_name or platform.processor(),
        "isa": isa,
        "cpus": len(os.sched_getaffinity(0)),
        "threads": threads,
        "load_average": round(os.getloadavg()[0], 2),
        "onnxruntime": ort.__version__,
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
    }


def run_models(
    artifact: Path,
    checkpoint: Path | None,
    *,
    threads: int,
    rounds: int,
    batches: tuple[int, ...] = BATCHES,
    int8_path: Path | None = None,
) -> dict[str, Any]:
    from export.spec import spec_from_onnx

    onnx_path = artifact / "model.onnx"
    spec = spec_from_onnx(onnx_path)
    gflop = graph_gflop(onnx_path)
    runtimes: list[Runtime] = []
    if checkpoint is not None:
        runtimes.append(eager_runtime(checkpoint, spec, threads))
    runtimes.append(onnx_runtime("onnxruntime fp32", onnx_path, threads, "onnxruntime-fp32"))
    int8_path = int8_path or artifact / "model.int8.onnx"
    if int8_path.is_file():
        runtimes.append(onnx_runtime("onnxruntime int8", int8_path, threads, "onnxruntime-int8"))
    else:
        log(f"int8: {int8_path} does not exist (not shipped by the export?): no INT8 row")
    plan = artifact / "model.plan"
    if plan.is_file() and (trt := tensorrt_runtime(plan, spec.dim)) is not None:
        runtimes.append(trt)

    rng = np.random.default_rng(0)
    images = {b: rng.integers(0, 256, (b, spec.input.height, spec.input.width, 3), dtype=np.uint8) for b in batches}
    reference = runtimes[1 if checkpoint is not None else 0].run(images[max(batches)])
    agreement = {rt.name: float((rt.run(images[max(batches)]) * reference).sum(1).min()) for rt in runtimes}

    floors = floor_runners(threads, torch_floor=checkpoint is not None)
    cells: dict[Any, Callable[[], Any]] = {("floor", name): fn for name, fn in floors.items()}
    for rt in runtimes:
        for b in batches:
            cells[(rt.name, b)] = lambda rt=rt, b=b: rt.run(images[b])
    # about as many images per round in every cell; the floor's product weighs about 4 batch-16 calls
    times = interleaved(cells, rounds, lambda key: 4 if key[0] == "floor" else max(1, max(batches) // key[1]))

    m, k, n = FLOOR_SHAPE
    floor_gflops = {name: 2 * m * k * n / 1e9 / statistics.median(times[("floor", name)]) for name in floors}
    rows = []
    for rt in runtimes:
        for b in batches:
            ms = 1000 * statistics.median(times[(rt.name, b)])
            row = {"runtime": rt.name, "batch": b, "p50_ms": round(ms, 3), "images_per_s": round(1000 * b / ms, 2)}
            if rt.floor is not None:
                row["floor_gflops"] = round(floor_gflops[rt.floor], 1)
                row["floor_images_per_s"] = round(floor_gflops[rt.floor] / gflop, 2)
                row["fraction_of_floor"] = round(row["images_per_s"] / row["floor_images_per_s"], 3)
            row["min_cosine_vs_fp32"] = round(agreement[rt.name], 6)
            rows.append(row)
    by = {(r["runtime"], r["batch"]): r for r in rows}
    for row in rows:
        for ref, key in (("pytorch eager fp32", "vs_eager"), ("onnxruntime fp32", "vs_fp32")):
            if (ref, row["batch"]) in by:
                row[key] = round(row["images_per_s"] / by[(ref, row["batch"])]["images_per_s"], 2)
    return {
        "artifact": str(artifact),
        "model_id": spec.model_id,
        "input": [spec.input.height, spec.input.width],
        "flip_tta": spec.flip_tta,
        "gflop_per_image": round(gflop, 4),
        "floors_gflops": {name: round(v, 1) for name, v in floor_gflops.items()},
        "host": host_info(threads),
        "rounds": rounds,
        "rows": rows,
    }


def int8_recipe_steps() -> list[tuple[str, Any]]:
    """The INT8 recipe one step at a time, from the plainest to the shipped one, with two variants on the way."""
    from export.variants import Int8Recipe

    return [
        (
            "per-tensor weights, u8 x s8, float BN/means",
            Int8Recipe(per_channel=False, full_coverage=False, optimize_offline=False),
        ),
        ("per-channel weights (the earlier recipe)", Int8Recipe(full_coverage=False, optimize_offline=False)),
        ("  variant: u8 x u8 (uint8 weights)", Int8Recipe(weights="u8", full_coverage=False, optimize_offline=False)),
        (
            "  variant: s8 x s8 (int8 activations)",
            Int8Recipe(activations="s8", full_coverage=False, optimize_offline=False),
        ),
        ("+ every op quantised (no float island)", Int8Recipe(optimize_offline=False)),
        ("+ graph optimised offline (shipped)", Int8Recipe()),
    ]


def timed_sessions(models: dict[str, Path], threads: int) -> tuple[dict[str, Any], dict[str, float]]:
    """An ONNX Runtime session per model, and the seconds each took to start."""
    sessions, starts = {}, {}
    for label, path in models.items():
        t0 = time.perf_counter()
        sessions[label] = ort_session(path, threads)
        starts[label] = time.perf_counter() - t0
    return sessions, starts


def run_int8_steps(artifact: Path, data_root: Path, *, threads: int, rounds: int, workdir: Path) -> dict[str, Any]:
    """Build the INT8 model with each recipe step and measure speed (against fp32, interleaved), the retrieval
    change on the synthetic split, the float islands left and the session start time."""
    from export.config import ExportConfig
    from export.parity import load_parity_data, ort_embed, retrieval_metrics
    from export.spec import spec_from_onnx
    from export.variants import float_ops, quantize_int8

    onnx_path = artifact / "model.onnx"
    spec = spec_from_onnx(onnx_path)
    cfg = ExportConfig()
    data = load_parity_data(
        data_root,
        "auto",
        spec.input.height,
        spec.input.width,
        max_query=cfg.max_query,
        max_gallery=cfg.max_gallery,
        calibration_images=cfg.calibration_images,
        seed=cfg.seed,
    )
    steps = int8_recipe_steps()
    workdir.mkdir(parents=True, exist_ok=True)
    fp32 = ort_session(onnx_path, threads)
    fp32_metrics = retrieval_metrics(ort_embed(fp32, data.query.images), ort_embed(fp32, data.gallery.images), data)
    built = []
    for i, (label, recipe) in enumerate(steps):
        t0 = time.perf_counter()
        path = quantize_int8(onnx_path, workdir / f"step{i}.onnx", data.calibration, recipe=recipe)
        log(f"built {label.strip()} in {time.perf_counter() - t0:.0f} s")
        built.append((label, recipe, path))

    sessions, starts = timed_sessions({"fp32": onnx_path} | {label: path for label, _, path in built}, threads)
    sessions["fp32"] = fp32

    images = {b: data.crops[np.resize(np.arange(len(data.crops)), b)] for b in BATCHES}
    cells = {
        (name, b): (lambda s=s, b=b: s.run(None, {spec.input.name: images[b]}))
        for name, s in sessions.items()
        for b in BATCHES
    }
    times = interleaved(cells, rounds, lambda key: max(BATCHES) // key[1])
    med = {key: statistics.median(v) for key, v in times.items()}
    rows = []
    for label, recipe, path in built:
        session = sessions[label]
        metrics = retrieval_metrics(
            ort_embed(session, data.query.images), ort_embed(session, data.gallery.images), data
        )
        rows.append(
            {
                "step": label,
                "recipe": asdict(recipe),
                **{f"speedup_b{b}": round(med[("fp32", b)] / med[(label, b)], 2) for b in BATCHES},
                **{f"int8_ms_b{b}": round(1000 * med[(label, b)], 2) for b in BATCHES},
                "mAP_change": round(metrics["mAP"] - fp32_metrics["mAP"], 4),
                "rank1_change": round(metrics["rank1"] - fp32_metrics["rank1"], 4),
                "float_islands": sum(float_ops(path).values()),
                "session_start_s": round(starts[label], 3),
                "bytes": path.stat().st_size,
            }
        )
    return {
        "artifact": str(artifact),
        "model_id": spec.model_id,
        "fp32": {
            **{f"ms_b{b}": round(1000 * med[("fp32", b)], 2) for b in BATCHES},
            "mAP": round(fp32_metrics["mAP"], 4),
            "session_start_s": round(starts["fp32"], 3),
        },
        "host": host_info(threads),
        "rows": rows,
    }


# Output.


def markdown(report: dict[str, Any]) -> str:
    def ratio(row: dict, key: str) -> str:
        return f"x{row[key]:.2f}" if key in row else "-"

    lines = [
        "| runtime | batch | p50 ms | images/s | vs eager | vs fp32 | floor images/s | % of floor |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        floor = f"{r['floor_images_per_s']:.1f}" if "floor_images_per_s" in r else "-"
        frac = f"{100 * r['fraction_of_floor']:.0f}%" if "fraction_of_floor" in r else "-"
        lines.append(
            f"| {r['runtime']} | {r['batch']} | {r['p50_ms']:.2f} | {r['images_per_s']:.1f} | {ratio(r, 'vs_eager')} "
            f"| {ratio(r, 'vs_fp32')} | {floor} | {frac} |"
        )
    floors = ", ".join(f"{k} {v:.1f}" for k, v in report["floors_gflops"].items())
    lines.append(f"\n{report['gflop_per_image']:.3f} GFLOP per image; matrix-product floors (GFLOP/s): {floors}")
    return "\n".join(lines)


def markdown_steps(report: dict[str, Any]) -> str:
    fp32 = report["fp32"]
    lines = [
        f"fp32: {fp32['ms_b1']:.2f} ms at batch 1, {fp32['ms_b16']:.2f} ms at batch 16, mAP {fp32['mAP']:.4f}, "
        f"session start {fp32['session_start_s']:.2f} s",
        "",
        "| INT8 step | x fp32 batch 1 | x fp32 batch 16 | mAP change | float islands | session start s |",
        "|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['step']} | x{r['speedup_b1']:.2f} | x{r['speedup_b16']:.2f} | {r['mAP_change']:+.4f} "
            f"| {r['float_islands']} | {r['session_start_s']:.2f} |"
        )
    return "\n".join(lines)


def _default_checkpoint(artifact: Path) -> Path | None:
    try:
        report = json.loads((artifact / "export_report.json").read_text())
    except (OSError, ValueError):
        return None
    path = Path(report.get("checkpoint", ""))
    return path if (path / "model.pt").is_file() else None


def main(argv: list[str] | None = None) -> int:
    # ONNX Runtime runs here, as in the server, with its idle threads sleeping instead of spinning; give torch's
    # OpenMP threads the same policy (read when torch loads), or on a busy host each spinning thread steals the
    # core another needs and eager looks tens of times slower than it is.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, required=True, help="artifact folder (model.onnx, model.int8.onnx)")
    parser.add_argument("--checkpoint", type=Path, help="for the eager row (default: the one the artifact names)")
    parser.add_argument("--int8", type=Path, help="an INT8 model to measure instead of the artifact's")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)), help="as the server: all cores")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, nargs="+", default=list(BATCHES))
    parser.add_argument("--out", type=Path, default=Path("bench/models.json"))
    parser.add_argument("--int8-steps", action="store_true", help="measure each INT8 recipe step instead")
    parser.add_argument("--data", type=Path, help="with --int8-steps: data for calibration and the retrieval change")
    args = parser.parse_args(argv)
    if not (args.artifact / "model.onnx").is_file():
        parser.error(f"{args.artifact} has no model.onnx")
    command = " ".join(["python -m benchmarks.models", *(argv if argv is not None else sys.argv[1:])])
    if args.int8_steps:
        if args.data is None:
            parser.error("--int8-steps needs --data (calibration images and the retrieval split)")
        report = run_int8_steps(
            args.artifact, args.data, threads=args.threads, rounds=args.rounds, workdir=args.out.parent / "int8-steps"
        )
        text = markdown_steps(report)
    else:
        checkpoint = args.checkpoint or _default_checkpoint(args.artifact)
        if checkpoint is None:
            log("eager: no checkpoint (give --checkpoint): no eager row")
        report = run_models(
            args.artifact,
            checkpoint,
            threads=args.threads,
            rounds=args.rounds,
            batches=tuple(args.batches),
            int8_path=args.int8,
        )
        text = markdown(report)
    report["command"] = command
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(f"{text}\n\nwritten to {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
