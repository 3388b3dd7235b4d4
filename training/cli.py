"""The command lines of training/: each parses its arguments, calls the library with typed values and prints.

    python -m training.train --config configs/demo.yaml data_root=data/synth out_dir=checkpoints/demo
    python -m training.synth data/synth --ids 200 --cams 6 --seed 0
    python -m training.evaluate CHECKPOINT --data DIR [--protocol standard|apnet] [--rerank] [--write-meta]
    python -m training.baseline data/synth
    python -m training.viz CHECKPOINT --data DIR --out runs/viz [--num 6] [--top 10]
    python -m training.adapt --gallery DIR|URI --checkpoint CKPT --out NEW [--time-from ISO] [--time-to ISO]

Each module's ``if __name__ == "__main__"`` calls its function here. The library modules are imported inside
each command, so ``python -m training.synth`` (OpenCV and numpy only) does not pay for loading torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _log_to_stdout() -> None:
    """The library reports progress through logging (module loggers under ``training``); a command shows it."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout, force=True)


def train_main(argv: list[str] | None = None) -> None:
    from training.config import load_config
    from training.train import train

    parser = argparse.ArgumentParser(
        prog="python -m training.train", description="Train APNet (person re-identification)."
    )
    parser.add_argument("--config", help="YAML file of TrainConfig keys (training/config.py)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. data_root=data/synth epochs=10")
    args = parser.parse_args(argv)
    _log_to_stdout()
    train(load_config(args.config, args.overrides))


def synth_main(argv: list[str] | None = None) -> None:
    from training.synth import generate

    parser = argparse.ArgumentParser(
        prog="python -m training.synth", description="Synthetic ReID data in the Market-1501 layout."
    )
    parser.add_argument("out", type=Path, help="output folder (Market-1501 layout)")
    parser.add_argument("--ids", type=int, required=True, help="identities, half train and half test")
    parser.add_argument("--cams", type=int, required=True, help="cameras (2..9)")
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--distractors", type=int, default=None, help="gallery images of person 0 (default: ids/10)")
    parser.add_argument("--workers", type=int, default=None, help="writer threads (default: up to 4)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing non-empty output folder")
    args = parser.parse_args(argv)
    out = generate(
        args.out,
        ids=args.ids,
        cams=args.cams,
        seed=args.seed,
        height=args.height,
        width=args.width,
        distractors=args.distractors,
        workers=args.workers,
        overwrite=args.overwrite,
        progress=sys.stderr.isatty(),  # a bar for people; logs and pipes get the summary line only
    )
    counts = json.loads((out / "synth.json").read_text())["images"]
    print(f"wrote {out}: " + ", ".join(f"{split} {n}" for split, n in counts.items()))


def _evaluate_parser(protocols: tuple[str, ...], device: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m training.evaluate", description="Evaluate an APNet checkpoint with the Market-1501 protocol."
    )
    parser.add_argument("checkpoint", help="checkpoint folder (model.pt + meta.json)")
    parser.add_argument("--data", required=True, help="data root (Market-1501 layout or MSMT17 list files)")
    parser.add_argument("--dataset", default="auto", help="market1501 | duke | msmt17 | auto (a sub-folder of --data)")
    parser.add_argument("--metric", default="cosine", choices=("cosine", "euclidean"))
    parser.add_argument(
        "--protocol",
        default="standard",
        choices=protocols,
        help="the gallery of the threshold and of --write-meta's metrics: standard keeps the distractors (person 0), "
        "apnet drops them as the APNet authors' Market-1501 reader does; both are printed",
    )
    parser.add_argument("--rerank", action="store_true", help="k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3)")
    parser.add_argument("--no-flip", action="store_true", help="no flip test-time augmentation")
    parser.add_argument("--fpr", type=float, default=1e-3, help="false-positive rate of the match threshold")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--device", default=device)
    parser.add_argument(
        "--write-meta", action="store_true", help="store the metrics, threshold and calibration in meta.json"
    )
    parser.add_argument("--curve", help="DIR-vs-FAR curve PNG (default: CHECKPOINT/dir_far.png)")
    return parser


def evaluate_main(argv: list[str] | None = None) -> None:
    import torch

    from training.checkpoint import load_checkpoint, update_meta
    from training.data import read_dataset
    from training.evaluate import PROTOCOLS, evaluate_model, format_report, plot_dir_far

    args = _evaluate_parser(PROTOCOLS, "cuda" if torch.cuda.is_available() else "cpu").parse_args(argv)
    model, meta = load_checkpoint(args.checkpoint, map_location=args.device)
    data = read_dataset(args.data, args.dataset)
    print(data.summary())
    result = evaluate_model(
        model,
        data,
        meta["data"]["height"],
        meta["data"]["width"],
        device=args.device,
        batch_size=args.batch_size,
        num_workers=args.workers,
        flip=not args.no_flip,
        metric=args.metric,
        rerank=args.rerank,
        threshold_fpr=args.fpr,
        protocol=args.protocol,
    )
    print(format_report(result))
    if result.dir_far is not None:
        curve = plot_dir_far(result, args.curve or Path(args.checkpoint) / "dir_far.png")
        print(f"DIR-vs-FAR curve: {curve}")
    if args.write_meta:
        update_meta(
            args.checkpoint,
            metrics=result.metrics,
            threshold=result.threshold,
            protocol=result.protocol,
            metrics_by_protocol=result.by_protocol,
            calibration=result.calibration,
        )
        print(f"metrics, threshold and calibration written to {Path(args.checkpoint) / 'meta.json'}")


def baseline_main(argv: list[str] | None = None) -> None:
    from training.baseline import HistogramConfig, evaluate_histogram, format_baseline

    parser = argparse.ArgumentParser(
        prog="python -m training.baseline", description="A colour-histogram ReID baseline: what colour alone achieves."
    )
    parser.add_argument("data", type=Path, help="data root (Market-1501 layout or MSMT17 list files)")
    parser.add_argument("--dataset", default="auto", help="market1501 | duke | msmt17 | auto (the folder itself)")
    parser.add_argument("--space", choices=["rgb", "hsv"], default="rgb")
    parser.add_argument("--bins", type=int, nargs=3, default=[4, 4, 4], metavar=("C1", "C2", "C3"))
    parser.add_argument("--stripes", type=int, default=6)
    parser.add_argument("--centre", type=float, default=0.08, help="centre weighting sigma in widths (0: flat)")
    parser.add_argument("--metric", choices=["hellinger", "chi2"], default="hellinger")
    args = parser.parse_args(argv)
    cfg = HistogramConfig(
        space=args.space, bins=tuple(args.bins), stripes=args.stripes, metric=args.metric, centre=args.centre
    )
    print(format_baseline(evaluate_histogram(args.data, cfg, args.dataset), cfg, args.data))


def viz_main(argv: list[str] | None = None) -> None:
    from training.viz import visualise

    parser = argparse.ArgumentParser(
        prog="python -m training.viz", description="Ranked lists and Grad-CAM attention maps of an APNet checkpoint."
    )
    parser.add_argument("checkpoint")
    parser.add_argument("--data", required=True, help="data root in the Market-1501 layout")
    parser.add_argument("--out", default="runs/viz")
    parser.add_argument("--num", type=int, default=6, help="queries: half right at rank 1, half wrong")
    parser.add_argument("--top", type=int, default=10, help="gallery crops per ranked list")
    args = parser.parse_args(argv)
    for path in visualise(args.checkpoint, args.data, args.out, args.num, args.top):
        print(f"wrote {path}")


def _iso_seconds(text: str) -> float:
    from datetime import UTC, datetime

    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO-8601 time: {text!r} (e.g. 2026-12-07T14:02:00+01:00)") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def _adapt_parser() -> argparse.ArgumentParser:
    from training.adapt import AdaptConfig

    d = AdaptConfig()
    p = argparse.ArgumentParser(
        prog="python -m training.adapt",
        description="Adapt a checkpoint to a gallery's footage from its own tracks (no labels).",
    )
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--gallery", help="gallery folder or URI whose kept crops of tracks are learnt from")
    source.add_argument("--track-set", type=Path, help="a folder python -m ingestion.track_dataset wrote")
    p.add_argument("--crops-dir", help="the gallery's crop store (default: <gallery>/crops)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder to start from")
    p.add_argument("--out", required=True, type=Path, help="new checkpoint folder")
    p.add_argument("--time-from", help="first capture time learnt from (ISO-8601)")
    p.add_argument("--time-to", help="last capture time learnt from (ISO-8601)")
    p.add_argument(
        "--eval-data",
        default="auto",
        help="labelled data set evaluated before and after: what the adaptation gave up there (auto: data/synth "
        "when it is there; none: no evaluation)",
    )
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--merge-threshold", type=float, default=d.merge_threshold, help="cosine distance; 0: no merging")
    p.add_argument("--freeze-stages", type=int, default=d.freeze_stages)
    p.add_argument("--min-tracks", type=int, default=d.requirements.min_tracks)
    p.add_argument("--min-crops", type=int, default=d.requirements.min_crops)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--seed", type=int, default=d.seed)
    return p


def _export_track_set(args: argparse.Namespace, folder: Path) -> None:
    """The gallery side writes the window's tracked crops (a child process: training never opens a gallery)."""
    import subprocess

    command = [sys.executable, "-m", "ingestion.track_dataset", "--gallery", str(args.gallery), "--out", str(folder)]
    for flag, value in (("--time-from", args.time_from), ("--time-to", args.time_to), ("--crops-dir", args.crops_dir)):
        if value:
            command += [flag, value]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"training.adapt: the gallery export failed: {done.stderr.strip() or done.stdout.strip()}")
    print(done.stdout.strip())


def adapt_main(argv: list[str] | None = None) -> None:
    import tempfile

    from training.adapt import AdaptConfig, adapt
    from training.adapt_data import NotEnoughData, Requirements

    args = _adapt_parser().parse_args(argv)
    window = [_iso_seconds(t) if t else None for t in (args.time_from, args.time_to)]
    if None not in window and window[1] < window[0]:
        raise SystemExit("training.adapt: --time-to is before --time-from")
    eval_data = None if args.eval_data == "none" else args.eval_data
    if args.eval_data == "auto":
        eval_data = "data/synth" if Path("data/synth/query").is_dir() else None
    cfg = AdaptConfig(
        steps=args.steps,
        lr=args.lr,
        merge_threshold=args.merge_threshold,
        freeze_stages=args.freeze_stages,
        threads=args.threads,
        seed=args.seed,
        requirements=Requirements(min_tracks=args.min_tracks, min_crops=args.min_crops),
    )
    _log_to_stdout()
    source = {"gallery": args.gallery} if args.gallery else {"track_set": str(args.track_set)}
    source |= {"time_from": args.time_from, "time_to": args.time_to}
    with tempfile.TemporaryDirectory(prefix="adapt-tracks-") as tmp:
        folder = args.track_set or Path(tmp) / "tracks"
        if args.gallery:
            _export_track_set(args, folder)
        try:
            report = adapt(
                args.checkpoint,
                folder,
                args.out,
                cfg,
                source=source,
                time_from=window[0],
                time_to=window[1],
                eval_data=eval_data,
            )
        except NotEnoughData as exc:
            raise SystemExit(f"training.adapt: {exc}") from None
    counts = report["counts"]
    print(
        f"adapted {args.checkpoint} on {counts['crops']} crops of {counts['tracks']} tracks "
        f"({counts['pseudo_identities']} pseudo-identities) in {report['seconds']:.0f} s: {args.out}"
    )
    if "evaluation" in report:
        e = report["evaluation"]
        print(
            f"on {e['data']}: rank-1 {e['before']['rank1']:.3f} -> {e['after']['rank1']:.3f}, "
            f"mAP {e['before']['mAP']:.3f} -> {e['after']['mAP']:.3f} (what the adaptation gave up there)"
        )
