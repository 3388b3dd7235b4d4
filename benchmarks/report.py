"""One table and the plots from the benchmarks' JSON files (what `make bench` prints last).

    python -m benchmarks.report bench [--plots bench]

Reads, from the folder, whichever of these exist: models.json (python -m benchmarks.models: eager / ONNX Runtime fp32
/ INT8 / TensorRT at batch 1 and 16, ratios, fraction of the compute floor), api_latency.json (python -m
benchmarks.http: HTTP search p50/p95/p99 and the server's own timings), embedders.json (python -m benchmarks.embedders),
index.json (python -m benchmarks.gallery), api_paths.json (python -m benchmarks.http --variants: the request path per
variant and form, beside that variant's model alone, in a second table). Prints one markdown table: the model rows, then the HTTP rows beside the
model's time alone (ONNX Runtime fp32 at batch 1, what the server runs per query, measured in-process by
benchmarks.models), the embed step as the server timed it, and the overhead: at concurrency 1, the median over requests of
latency less the server-timed embed step (HTTP, parsing, decoding, the gallery search, the response).
Plots (PNG, matplotlib imported only for them): latency.png (p50/p99 and throughput against concurrency),
index.png (recall@10 against latency per index type), runtimes.png (images/s per runtime and batch size).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

SERVED_RUNTIME = "onnxruntime fp32"  # what the embedded server runs (artifact/model.onnx)


def load(folder: Path) -> dict[str, Any]:
    reports = {}
    for name in ("models", "api_latency", "api_paths", "embedders", "index"):
        path = folder / f"{name}.json"
        if path.is_file():
            reports[name] = json.loads(path.read_text())
    return reports


def model_alone_ms(models: dict[str, Any] | None) -> float | None:
    """p50 of one query through the served model, measured in-process (benchmarks.models, batch 1)."""
    for row in (models or {}).get("rows", []):
        if row["runtime"] == SERVED_RUNTIME and row["batch"] == 1:
            return row["p50_ms"]
    return None


def _cell(value: Any, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def table(reports: dict[str, Any]) -> str:
    models, api = reports.get("models"), reports.get("api_latency")
    head = (
        "| path | batch / concurrency | p50 ms | p95 ms | p99 ms | images/s | x eager | x fp32 | % of floor "
        "| model alone ms | server embed ms | overhead ms |"
    )
    lines = [head, "|" + "---|" * 12]
    for r in (models or {}).get("rows", []):
        floor = r.get("fraction_of_floor")
        lines.append(
            f"| {r['runtime']} | batch {r['batch']} | {r['p50_ms']:.2f} | - | - | {r['images_per_s']:.1f} "
            f"| {_cell(r.get('vs_eager'), '.2f')} | {_cell(r.get('vs_fp32'), '.2f')} "
            f"| {'-' if floor is None else f'{100 * floor:.0f}%'} | - | - | - |"
        )
    alone = model_alone_ms(models)
    for r in (api or {}).get("results", []):
        # the request path's cost: at c=1, each request's latency less the server-timed model step (at higher
        # concurrency the difference is mostly queueing)
        overhead = r.get("outside_embed_p50_ms") if r["concurrency"] == 1 else None
        lines.append(
            f"| HTTP search ({r.get('backend', '?')}) | c={r['concurrency']} | {_cell(r.get('p50_ms'), '.2f')} "
            f"| {_cell(r.get('p95_ms'), '.2f')} | {_cell(r.get('p99_ms'), '.2f')} | {r['requests_per_s']:.1f} "
            f"| - | - | - | {_cell(alone, '.2f')} | {_cell(r.get('server_embed_p50_ms'), '.2f')} "
            f"| {_cell(overhead, '.2f')} |"
        )
    notes = []
    if models:
        host = models.get("host", {})
        notes.append(
            f"models: {models['model_id']} at {models['input'][0]}x{models['input'][1]}, "
            f"{models['gflop_per_image']:.3f} GFLOP per image; floors (GFLOP/s) "
            + ", ".join(f"{k} {v:.1f}" for k, v in models.get("floors_gflops", {}).items())
            + f"; {host.get('cpu', '?')} ({', '.join(host.get('isa', [])) or 'isa unknown'}), "
            f"{host.get('threads')} threads, load {host.get('load_average')}, {host.get('date', '')}"
        )
    if api:
        c1 = [r for r in api.get("results", []) if r["concurrency"] == 1 and r.get("server_embed_p50_ms") is not None]
        for r in c1:
            notes.append(
                f"HTTP {r.get('backend')} c=1 as the server timed it (p50): decode {r['server_decode_p50_ms']:.2f} ms, "
                f"embed {r['server_embed_p50_ms']:.2f} ms, search {r['server_search_p50_ms']:.2f} ms"
            )
    return "\n".join(lines + ([""] + notes if notes else []))


def plots(reports: dict[str, Any], out: Path) -> list[Path]:
    """The PNGs the reports allow; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    written = []
    curves = _latency_curves(reports)
    if curves:
        fig, (lat, thr) = plt.subplots(1, 2, figsize=(8, 3.2))
        for i, (label, points) in enumerate(curves.items()):
            xs = [p[0] for p in points]
            lat.plot(xs, [p[1] for p in points], "o-", color=f"C{i}", label=f"{label} p50")
            if all(p[2] is not None for p in points):
                lat.plot(xs, [p[2] for p in points], "o--", color=f"C{i}", alpha=0.6, label=f"{label} p99")
            thr.plot(xs, [p[3] for p in points], "o-", color=f"C{i}", label=label)
        for ax, ylabel in ((lat, "latency ms"), (thr, "per second")):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrency")
            ax.set_ylabel(ylabel)
            ax.grid(True, alpha=0.3)
        lat.legend(fontsize=6)
        thr.legend(fontsize=6)
        lat.set_title("latency (search requests / embed calls)", fontsize=8)
        thr.set_title("throughput (requests/s, images/s)", fontsize=8)
        written.append(_save(plt, fig, out / "latency.png"))
    runs = (reports.get("index") or {}).get("runs", [])
    if runs:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        kinds: dict[str, list[dict]] = {}
        for r in runs:
            kinds.setdefault(r["factory"].split(",")[0].rstrip("0123456789"), []).append(r)
        for i, (kind, rows) in enumerate(sorted(kinds.items())):
            rows = sorted(rows, key=lambda r: r["p50_ms"])
            ax.plot([r["p50_ms"] for r in rows], [r["recall_at_10"] for r in rows], "o-", color=f"C{i}", label=kind)
            for r in rows:
                ax.annotate(f"{r['factory']} {r['n'] // 1000}k", (r["p50_ms"], r["recall_at_10"]), fontsize=6)
        ax.set_xscale("log")
        ax.set_xlabel("search p50 ms (single query, k=10)")
        ax.set_ylabel("recall@10 vs exact search")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        written.append(_save(plt, fig, out / "index.png"))
    rows = (reports.get("models") or {}).get("rows", [])
    if rows:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        runtimes = list(dict.fromkeys(r["runtime"] for r in rows))
        batches = sorted({r["batch"] for r in rows})
        width = 0.8 / len(batches)
        by = {(r["runtime"], r["batch"]): r["images_per_s"] for r in rows}
        for j, b in enumerate(batches):
            xs = [i + j * width for i in range(len(runtimes))]
            ax.bar(xs, [by.get((rt, b), 0) for rt in runtimes], width, label=f"batch {b}")
        ax.set_xticks([i + width * (len(batches) - 1) / 2 for i in range(len(runtimes))])
        ax.set_xticklabels([rt.replace(" ", "\n", 1) for rt in runtimes], fontsize=7)
        ax.set_ylabel("images/s")
        ax.legend(fontsize=7)
        ax.grid(True, axis="y", alpha=0.3)
        written.append(_save(plt, fig, out / "runtimes.png"))
    return written


def _latency_curves(reports: dict[str, Any]) -> dict[str, list[tuple]]:
    """label -> [(concurrency, p50 ms, p99 ms or None, per second)] from the HTTP and embedder benchmarks."""
    curves: dict[str, list[tuple]] = {}
    for r in (reports.get("api_latency") or {}).get("results", []):
        if r.get("p50_ms") is not None:
            curves.setdefault(f"HTTP {r.get('backend')}", []).append(
                (r["concurrency"], r["p50_ms"], r.get("p99_ms"), r["requests_per_s"])
            )
    for r in (reports.get("embedders") or {}).get("results", []):
        curves.setdefault(f"embed {r['backend']}", []).append((r["concurrency"], r["p50_ms"], None, r["images_per_s"]))
    return {k: sorted(v) for k, v in curves.items()}


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def paths_table(paths: dict[str, Any]) -> str:
    """The request path per served variant and request form, each beside its own model alone (api_paths.json)."""
    lines = [
        "| server | form | concurrency | p50 ms | p95 ms | p99 ms | req/s | model alone p50 ms | p50 - model ms "
        "| HTTP + parsing ms | decode ms | search ms | p50 / baseline |",
        "|" + "---|" * 13,
    ]
    ratios = paths.get("ratios", {})
    for r in paths.get("rows", []):
        ratio = ratios.get(f"{r['config']}/{r['form']}") if r["concurrency"] == 1 else None
        lines.append(
            f"| {r['config']} | {r['form']} | c={r['concurrency']} | {_cell(r['p50_ms'], '.2f')} "
            f"| {_cell(r['p95_ms'], '.2f')} | {_cell(r['p99_ms'], '.2f')} | {_cell(r['requests_per_s'], '.1f')} "
            f"| {_cell(r['model_alone_p50_ms'], '.2f')} | {_cell(r.get('p50_minus_model_alone_p50_ms'), '.2f')} "
            f"| {_cell(r['http_and_parsing_p50_ms'], '.2f')} | {_cell(r['server_decode_p50_ms'], '.2f')} "
            f"| {_cell(r['server_search_p50_ms'], '.2f')} | {_cell(ratio, '.3f')} |"
        )
    meta = paths.get("meta", {})
    lines.append(f"\nrequest paths: {meta.get('artifact')}, {meta.get('started')}, load {meta.get('load')}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, nargs="?", default=Path("bench"), help="where the JSON files are")
    parser.add_argument("--plots", type=Path, help="write the PNGs here (default: the folder)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    reports = load(args.folder)
    if not reports:
        sys.stderr.write(f"no benchmark JSON in {args.folder} (run make bench)\n")
        return 1
    sys.stdout.write(table(reports) + "\n")
    if "api_paths" in reports:
        sys.stdout.write("\n" + paths_table(reports["api_paths"]) + "\n")
    if not args.no_plots:
        for path in plots(reports, args.plots or args.folder):
            sys.stdout.write(f"plot: {path}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
