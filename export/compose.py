"""The served graph of an imported network: small ONNX graphs for the declared preprocessing and the
postprocessing, joined to the network with ``onnx.compose`` (the network's own nodes are never edited):

    images uint8 (N, H, W, 3) RGB
      -> [flip-TTA: the batch and its mirror] -> channel order -> ((pixel / units) - mean) / std * scale -> layout
      -> the network, unchanged -> its embedding output -> float32, (N, D) -> [flip-TTA: mean of both halves]
      -> [L2 normalisation] -> embeddings float32 (N, D)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx.utils
from onnx import TensorProto, compose, helper, numpy_helper

from export.config import ImportConfig, Preprocessing
from export.loaders import Interface, Network
from export.onnx_export import BATCH_DIM, INPUT_NAME, OUTPUT_NAME
from formats.spec import SPEC_KEY, ModelSpec

PREFIX = "net/"  # the network's names inside the wrapped graph


def _const(name: str, value, dtype=np.float32):
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _reduce(op: str, x: str, out: str, axes: list[int], keepdims: int, opset: int, inits: list):
    """A Reduce* node for this opset (axes moved from an attribute to an input: ReduceSum at 13, the rest at 18)."""
    if opset >= (13 if op == "ReduceSum" else 18):
        inits.append(_const(f"{out}_axes", axes, np.int64))
        return helper.make_node(op, [x, f"{out}_axes"], [out], keepdims=keepdims)
    return helper.make_node(op, [x], [out], axes=axes, keepdims=keepdims)


def preprocess_graph(pre: Preprocessing, iface: Interface, flip_tta: bool, ir_version: int):
    """uint8 (N, H, W, 3) RGB "images" -> the network's input ("pre_out"); only a Cast reads the uint8 input
    (TensorRT accepts a uint8 network input only when a cast consumes it)."""
    o = iface.opset
    nodes = [helper.make_node("Cast", [INPUT_NAME], ["pixels"], to=TensorProto.FLOAT)]
    inits, x = [], "pixels"
    big = np.iinfo(np.int64).min
    if flip_tta:
        # One pass over [x; mirrored x] keeps a single copy of the network in the graph.
        inits += [_const("w_start", [-1], np.int64), _const("w_end", [big], np.int64)]
        inits += [_const("w_axis", [2], np.int64), _const("w_step", [-1], np.int64)]
        nodes += [
            helper.make_node("Slice", [x, "w_start", "w_end", "w_axis", "w_step"], ["mirrored"]),
            helper.make_node("Concat", [x, "mirrored"], ["both"], axis=0),
        ]
        x = "both"
    if pre.colour == "bgr":
        inits += [_const("c_start", [-1], np.int64), _const("c_end", [big], np.int64)]
        inits += [_const("c_axis", [3], np.int64), _const("c_step", [-1], np.int64)]
        nodes.append(helper.make_node("Slice", [x, "c_start", "c_end", "c_axis", "c_step"], ["reordered"]))
        x = "reordered"
    a, b = pre.affine()
    inits += [_const("norm_mul", a.reshape(1, 1, 1, 3)), _const("norm_add", b.reshape(1, 1, 1, 3))]
    nodes += [
        helper.make_node("Mul", [x, "norm_mul"], ["scaled"]),
        helper.make_node("Add", ["scaled", "norm_add"], ["normalised"]),
    ]
    x = "normalised"
    if pre.layout == "nchw":
        nodes.append(helper.make_node("Transpose", [x], ["planar"], perm=[0, 3, 1, 2]))
        x = "planar"
    if iface.input_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], ["typed"], to=iface.input_type))
        x = "typed"
    nodes.append(helper.make_node("Identity", [x], ["pre_out"]))
    graph = helper.make_graph(
        nodes,
        "preprocess",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [BATCH_DIM, iface.height, iface.width, 3])],
        [helper.make_tensor_value_info("pre_out", iface.input_type, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", o)], ir_version=ir_version)


def postprocess_graph(iface: Interface, dim: int, flip_tta: bool, normalise: str, ir_version: int):
    """The network's embedding output ("post_in") -> float32 (N, D) "embeddings"."""
    o = iface.opset
    nodes, inits, x = [], [], "post_in"
    if iface.output_type != TensorProto.FLOAT:
        nodes.append(helper.make_node("Cast", [x], ["as_float"], to=TensorProto.FLOAT))
        x = "as_float"
    nodes.append(helper.make_node("Flatten", [x], ["flat"], axis=1))
    x = "flat"
    if flip_tta:
        inits.append(_const("halves_shape", [2, -1, dim], np.int64))
        nodes.append(helper.make_node("Reshape", [x, "halves_shape"], ["halves"]))
        nodes.append(_reduce("ReduceMean", "halves", "averaged", [0], 0, o, inits))
        x = "averaged"
    if normalise == "l2":
        # As export.wrap.l2_normalize: dividing by the largest magnitude first keeps the sum of squares <= D, so
        # fp16 runtimes cannot overflow; max(., 1e-12) as torch's F.normalize.
        inits.append(_const("eps", 1e-12))
        nodes += [
            helper.make_node("Abs", [x], ["magnitude"]),
            _reduce("ReduceMax", "magnitude", "peak_raw", [1], 1, o, inits),
            helper.make_node("Max", ["peak_raw", "eps"], ["peak"]),
            helper.make_node("Div", [x, "peak"], ["unit_peak"]),
            _reduce("ReduceL2", "unit_peak", "norm_raw", [1], 1, o, inits),
            helper.make_node("Max", ["norm_raw", "eps"], ["norm"]),
            helper.make_node("Div", ["unit_peak", "norm"], ["unit"]),
        ]
        x = "unit"
    nodes.append(helper.make_node("Identity", [x], [OUTPUT_NAME]))
    graph = helper.make_graph(
        nodes,
        "postprocess",
        [helper.make_tensor_value_info("post_in", iface.output_type, None)],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [BATCH_DIM, dim])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", o)], ir_version=ir_version)


def wrap(net: Network, iface: Interface, pre: Preprocessing, dim: int, cfg: ImportConfig, spec: ModelSpec):
    """The served graph: preprocess + the network (names prefixed, unused outputs dropped) + postprocess."""
    body = onnx.ModelProto()
    body.CopyFrom(net.proto)
    del body.metadata_props[:]
    if len(body.graph.output) > 1:  # only the embedding's part of the network is served
        body = onnx.utils.Extractor(body).extract_model([iface.input_name], [iface.output_name])
    body = compose.add_prefix(body, PREFIX)
    ir = body.ir_version
    head = preprocess_graph(pre, iface, cfg.flip_tta, ir)
    tail = postprocess_graph(iface, dim, cfg.flip_tta, cfg.normalise, ir)
    model = compose.merge_models(head, body, io_map=[("pre_out", PREFIX + iface.input_name)])
    model = compose.merge_models(model, tail, io_map=[(PREFIX + iface.output_name, "post_in")], outputs=[OUTPUT_NAME])
    # merge_models lists the (equal) opset of each part; tools such as ONNX Runtime's quantiser want one per domain.
    opsets = {o.domain or "": o.version for o in model.opset_import}
    del model.opset_import[:]
    model.opset_import.extend(onnx.helper.make_opsetid(domain, version) for domain, version in sorted(opsets.items()))
    model.producer_name, model.producer_version = "apnet-reid export.import_model", "1"
    model.graph.name = "reid_imported"
    model.doc_string = f"Person re-identification embedder {spec.model_id} (imported {net.kind} network)"
    onnx.helper.set_model_props(model, {SPEC_KEY: spec.to_json()})
    onnx.checker.check_model(model)
    return model


def declaration(pre: Preprocessing, iface: Interface, cfg: ImportConfig) -> dict[str, Any]:
    """Everything that decides what the served graph computes, besides the network itself."""
    return {
        "size": [iface.height, iface.width],
        "layout": pre.layout,
        "colour": pre.colour,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "units": pre.units,
        "scale": pre.scale,
        "input": iface.input_name,
        "output": iface.output_name,
        "normalise": cfg.normalise,
        "flip_tta": cfg.flip_tta,
    }
