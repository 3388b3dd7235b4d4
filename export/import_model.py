"""python -m export.import_model MODEL --out artifacts/NAME [preprocessing]: serve a network trained elsewhere.

MODEL is an ONNX file, a TorchScript file, or ``package.module:function`` returning a ``torch.nn.Module`` (with its
weights loaded). The network keeps its own input convention, declared on the command line (size, layout, channel
order, mean/std and their units, scale); the import wraps it into the artifact a native export makes:

    images uint8 (N, H, W, 3) RGB
      -> [flip-TTA: the batch and its mirror] -> channel order -> ((pixel / units) - mean) / std * scale -> layout
      -> the network, unchanged -> its embedding output -> float32, (N, D) -> [flip-TTA: mean of both halves]
      -> [L2 normalisation] -> embeddings float32 (N, D)

The preprocessing and postprocessing are small ONNX graphs joined to the network with ``onnx.compose``, so the
network's own nodes are never edited. Torch networks are first exported to ONNX (a factory's module through the
dynamo exporter of ``python -m export``; TorchScript through the TorchScript exporter, which is the only one that
takes a ScriptModule). A parity gate then runs the wrapped graph against the network itself (ONNX Runtime on the
original ONNX file, or the torch module) fed the declared preprocessing computed in numpy; nothing is written
unless it passes. The artifact is the same as a native export's: model.onnx with the spec in its metadata,
spec.json, the Triton model repository, export_report.json and, with --int8 and a labelled --data folder, a
model.int8.onnx shipped only when its mAP on that folder stays within tolerance.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from formats.spec import SPEC_KEY, InputSpec, ModelSpec, NormalizationSpec, OutputSpec, Provenance

HASH_CHARS = 12
MIN_OPSET = 11  # the oldest default-domain opset the pre/post graphs are written for
PREFIX = "net/"  # the network's names inside the wrapped graph
_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}  # onnx.TensorProto element types
TORCH_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")

Layout = Literal["nchw", "nhwc"]
Colour = Literal["rgb", "bgr"]
Units = Literal["0-1", "0-255"]


class ModelImportError(ValueError):
    """The model or the declared preprocessing cannot make a served artifact; the message says why, in one line."""


# -- what the user declares ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """How the network expects its input, from uint8 RGB pixels p (0..255):

        v = p in the network's channel order (colour), divided by 255 when units is "0-1"
        x = (v - mean) / std * scale, in the network's layout

    mean and std are in the network's channel order and in ``units``.
    """

    height: int | None = None
    width: int | None = None
    layout: Layout = "nchw"
    colour: Colour = "rgb"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    units: Units = "0-255"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.layout not in ("nchw", "nhwc"):
            raise ModelImportError(f"--layout must be nchw or nhwc, not {self.layout!r}")
        if self.colour not in ("rgb", "bgr"):
            raise ModelImportError(f"--colour must be rgb or bgr, not {self.colour!r}")
        if self.units not in ("0-1", "0-255"):
            raise ModelImportError(f"--units must be 0-1 or 0-255, not {self.units!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ModelImportError("--mean and --std take 3 values (or 1 for all channels)")
        if any(s == 0 or not np.isfinite(s) for s in self.std) or not all(np.isfinite(self.mean)):
            raise ModelImportError("--std must be finite and non-zero, --mean finite")
        if not np.isfinite(self.scale) or self.scale == 0:
            raise ModelImportError("--scale must be finite and non-zero")
        if self.units == "0-1" and max(abs(m) for m in self.mean) > 1:
            raise ModelImportError(f"--mean {list(self.mean)} is outside 0-1 but --units says 0-1; is it 0-255?")
        default = self.mean == (0.0, 0.0, 0.0) and self.std == (1.0, 1.0, 1.0)
        if self.units == "0-255" and not default and max(self.std) < 1 and max(abs(m) for m in self.mean) <= 1:
            raise ModelImportError(f"--mean {list(self.mean)} --std {list(self.std)} look like 0-1 units, not 0-255")

    @property
    def divisor(self) -> float:
        return 255.0 if self.units == "0-1" else 1.0

    @property
    def channel_order(self) -> list[int]:
        """Indices into RGB giving the network's channel order."""
        return [0, 1, 2] if self.colour == "rgb" else [2, 1, 0]

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """(a, b) per network channel with x = v_255 * a + b, v_255 the pixel in 0..255 (the graph's two ops)."""
        mean, std = np.array(self.mean, np.float64), np.array(self.std, np.float64)
        a = self.scale / (self.divisor * std)
        b = -mean * self.scale / std
        return a.astype(np.float32), b.astype(np.float32)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """The declared preprocessing written out in numpy, as the parity gate's reference (not the folded form)."""
        v = images[..., self.channel_order].astype(np.float32) / np.float32(self.divisor)
        x = (v - np.array(self.mean, np.float32)) / np.array(self.std, np.float32) * np.float32(self.scale)
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2) if self.layout == "nchw" else x)

    def normalization_spec(self) -> NormalizationSpec:
        """The same map as the spec states it for native models, (p/255 - mean) / std in RGB order:
        mean' = mean * d / 255 and std' = std * d / (255 * scale), d the divisor of the units."""
        back = np.argsort(self.channel_order)  # network order -> RGB order
        mean = np.array(self.mean, np.float64)[back] * self.divisor / 255.0
        std = np.array(self.std, np.float64)[back] * self.divisor / (255.0 * self.scale)
        return NormalizationSpec(in_graph=True, mean=tuple(mean.tolist()), std=tuple(std.tolist()))


@dataclass(frozen=True)
class ImportConfig:
    name: str = ""  # Triton model name; empty: the output folder's name
    architecture: str = ""  # empty: from the model file's or factory's name
    output: str | None = None  # the embedding output; required when the network has several
    normalise: Literal["l2", "none"] = "l2"
    flip_tta: bool = False
    max_batch_size: int = 64
    opset: int = 18  # for torch networks exported here
    int8: bool = False  # needs data_root (a labelled folder: calibration and the retrieval gate)
    data_root: str | None = None
    max_query: int = 100
    max_gallery: int = 500
    calibration_images: int = 64
    threads: int = 0
    seed: int = 0
    max_abs_diff: float = 1e-4
    min_cosine: float = 0.99999
    batch_vs_single: float = 1e-5
    retrieval_delta: float = 0.001
    int8_max_map_drop: float = 0.01

    def __post_init__(self) -> None:
        from export.config import PARITY_BATCHES, check_model_name

        if self.normalise not in ("l2", "none"):
            raise ModelImportError(f"--normalise must be l2 or none, not {self.normalise!r}")
        if self.max_batch_size < max(PARITY_BATCHES):
            raise ModelImportError(
                f"--max-batch-size must be >= {max(PARITY_BATCHES)} (the parity gate runs that batch)"
            )
        if self.int8 and not self.data_root:
            raise ModelImportError("--int8 needs --data (a labelled folder to calibrate on and to judge mAP on)")
        if self.name:
            try:
                check_model_name(self.name)
            except ValueError as exc:
                raise ModelImportError(str(exc)) from None


# -- loading the network ----------------------------------------------------------------------------------------


@dataclass
class Network:
    """The network as ONNX (inputs/outputs as it defines them), the reference the gate compares against, and the
    bytes its identity is hashed from."""

    proto: Any  # onnx.ModelProto
    kind: Literal["onnx", "torchscript", "factory"]
    digest: str  # sha256 of the model file, or of the factory's name and weights
    architecture: str
    reference: Callable[[np.ndarray], list[np.ndarray]] | None = None  # float input -> every output, for torch nets
    notes: dict[str, Any] = field(default_factory=dict)


_FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def load_network(source: str, pre: Preprocessing, cfg: ImportConfig) -> Network:
    path = Path(source)
    if path.is_file():
        if path.suffix.lower() == ".onnx":
            return _load_onnx(path)
        return _load_torchscript(path, pre, cfg)
    if _FACTORY.match(source):
        return _load_factory(source, pre, cfg)
    if path.suffix.lower() in (".onnx", *TORCH_SUFFIXES) or "/" in source:
        raise ModelImportError(f"{source} does not exist")
    raise ModelImportError(f"{source} is neither a model file nor a module:function factory")


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def _load_onnx(path: Path) -> Network:
    import onnx

    try:
        proto = onnx.load_model(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelImportError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    return Network(proto, "onnx", _file_digest(path), _slug(path.stem))


def _torch_input(pre: Preprocessing, kind: str):
    import torch

    if pre.height is None or pre.width is None:
        raise ModelImportError(f"a {kind} network has no fixed input size; give it with --size HxW")
    shape = (2, 3, pre.height, pre.width) if pre.layout == "nchw" else (2, pre.height, pre.width, 3)
    return torch.zeros(shape, dtype=torch.float32)


def _torch_outputs(module, example) -> list[str]:
    """Names for the module's outputs: output0, output1, ... in the order it returns them."""
    import torch

    with torch.no_grad():
        out = module(example)
    if isinstance(out, torch.Tensor):
        return ["output0"]
    if isinstance(out, list | tuple) and out and all(isinstance(o, torch.Tensor) for o in out):
        return [f"output{i}" for i in range(len(out))]
    raise ModelImportError(f"the network returns {type(out).__name__}; it must return a tensor or a tuple of tensors")


def _torch_reference(module) -> Callable[[np.ndarray], list[np.ndarray]]:
    import torch

    def run(x: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(torch.from_numpy(x))
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        return [o.float().numpy() for o in outs]

    return run


def _load_torchscript(path: Path, pre: Preprocessing, cfg: ImportConfig) -> Network:
    import onnx
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit's deprecation notice
            module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # torch.jit raises RuntimeError subclasses with C++ traces
        raise ModelImportError(
            f"{path} is neither an .onnx file nor a TorchScript archive ({type(exc).__name__})"
        ) from None
    example = _torch_input(pre, "TorchScript")
    names = _torch_outputs(module, example)
    buf = tempfile.SpooledTemporaryFile()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        # torch.export (the dynamo exporter) cannot trace a ScriptModule; the TorchScript exporter can.
        torch.onnx.export(
            module,
            (example,),
            buf,
            input_names=["input"],
            output_names=names,
            opset_version=cfg.opset,
            dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            dynamo=False,
        )
    buf.seek(0)
    proto = onnx.load_model_from_string(buf.read())
    return Network(proto, "torchscript", _file_digest(path), _slug(path.stem), _torch_reference(module))


def _state_digest(source: str, module) -> str:
    """sha256 of the factory's name and every parameter and buffer (names, dtypes, shapes, bytes)."""
    import torch

    digest = hashlib.sha256(source.encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        digest.update((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy().tobytes())
    return digest.hexdigest()


def _load_factory(source: str, pre: Preprocessing, cfg: ImportConfig) -> Network:
    import torch

    from export.onnx_export import torch_to_onnx

    module_name, function_name = source.split(":")
    try:
        factory = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise ModelImportError(f"cannot import {source}: {exc}") from None
    module = factory()
    if not isinstance(module, torch.nn.Module):
        raise ModelImportError(f"{source}() returned {type(module).__name__}, not a torch.nn.Module")
    module = module.eval()
    example = _torch_input(pre, "factory's")
    names = _torch_outputs(module, example)
    proto = torch_to_onnx(module, example, names, opset=cfg.opset, max_batch=cfg.max_batch_size, input_name="input")
    return Network(proto, "factory", _state_digest(source, module), _slug(function_name), _torch_reference(module))


# -- checking the network's interface ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Interface:
    input_name: str
    input_type: int  # onnx element type
    output_name: str
    output_index: int
    output_type: int
    height: int
    width: int
    opset: int


def _dims(value_info) -> list[int | str | None]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def inspect_network(net: Network, pre: Preprocessing, output: str | None) -> Interface:
    """The input and embedding output to wrap, or ModelImportError with the reason."""
    graph = net.proto.graph
    initialisers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise ModelImportError(
            f"the network has {len(inputs)} inputs ({', '.join(i.name for i in inputs)}); it must take one image batch"
        )
    (inp,) = inputs
    in_type = inp.type.tensor_type.elem_type
    if in_type not in (1, 10):
        raise ModelImportError(
            f"input {inp.name!r} is {_type_name(in_type)}; a float32 or float16 image input is wrapped"
        )
    dims = _dims(inp)
    if len(dims) != 4:
        raise ModelImportError(f"input {inp.name!r} has shape {dims}; an image batch has 4 axes")
    nchw = pre.layout == "nchw"
    batch, spatial = dims[0], (dims[2:4] if nchw else dims[1:3])
    channels, last_or_first = (dims[1], dims[3]) if nchw else (dims[3], dims[1])
    if channels != 3 and last_or_first == 3:
        where, other = ("last", "nhwc") if nchw else ("first", "nchw")
        raise ModelImportError(f"input {inp.name!r} {dims} has its 3 channels {where}: is it --layout {other}?")
    if isinstance(channels, int) and channels != 3:
        raise ModelImportError(f"input {inp.name!r} {dims} has {channels} channels in layout {pre.layout}, not 3")
    if isinstance(batch, int) and batch != 0:
        raise ModelImportError(
            f"input {inp.name!r} {dims} has a fixed batch of {batch}; re-export it with a dynamic batch axis"
        )
    static = [d for d in spatial if isinstance(d, int) and d > 0]
    if len(static) < 2 and (pre.height is None or pre.width is None):
        raise ModelImportError(f"input {inp.name!r} {dims} has a dynamic spatial size; give it with --size HxW")
    if pre.height is not None and pre.width is not None:
        for want, have in zip((pre.height, pre.width), spatial, strict=True):
            if isinstance(have, int) and have > 0 and have != want:
                raise ModelImportError(
                    f"--size {pre.height}x{pre.width} does not match the static input {inp.name!r} {dims} "
                    f"(layout {pre.layout})"
                )
        height, width = pre.height, pre.width
    else:
        height, width = spatial

    outputs = list(graph.output)
    names = [o.name for o in outputs]
    if output is None:
        if len(outputs) != 1:
            raise ModelImportError(
                f"the network has {len(outputs)} outputs ({', '.join(names)}); say which is the embedding with --output"
            )
        index = 0
    elif output in names:
        index = names.index(output)
    else:
        raise ModelImportError(f"--output {output!r} is not an output of the network ({', '.join(names)})")
    out = outputs[index]
    out_type = out.type.tensor_type.elem_type
    if out_type not in _FLOAT_TYPES:
        raise ModelImportError(f"output {out.name!r} is {_type_name(out_type)}; an embedding must be a float tensor")
    out_dims = _dims(out)
    if len(out_dims) > 2 and any(d != 1 for d in out_dims[2:]):
        raise ModelImportError(f"output {out.name!r} has shape {out_dims}; an embedding is (N, D) (or (N, D, 1, 1))")
    opset = next((o.version for o in net.proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ModelImportError(f"the network uses opset {opset}; re-export it with opset {MIN_OPSET} or newer")
    return Interface(inp.name, in_type, out.name, index, out_type, int(height), int(width), opset)


def _type_name(elem_type: int) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "untyped"


# -- wrapping ---------------------------------------------------------------------------------------------------


def _const(name: str, value, dtype=np.float32):
    from onnx import numpy_helper

    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def _reduce(op: str, x: str, out: str, axes: list[int], keepdims: int, opset: int, inits: list):
    """A Reduce* node for this opset (axes moved from an attribute to an input: ReduceSum at 13, the rest at 18)."""
    from onnx import helper

    if opset >= (13 if op == "ReduceSum" else 18):
        inits.append(_const(f"{out}_axes", axes, np.int64))
        return helper.make_node(op, [x, f"{out}_axes"], [out], keepdims=keepdims)
    return helper.make_node(op, [x], [out], axes=axes, keepdims=keepdims)


def preprocess_graph(pre: Preprocessing, iface: Interface, flip_tta: bool, ir_version: int):
    """uint8 (N, H, W, 3) RGB "images" -> the network's input ("pre_out"); only a Cast reads the uint8 input
    (TensorRT accepts a uint8 network input only when a cast consumes it)."""
    from onnx import TensorProto, helper

    from export.onnx_export import BATCH_DIM, INPUT_NAME

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
    from onnx import TensorProto, helper

    from export.onnx_export import BATCH_DIM, OUTPUT_NAME

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


def probe_dim(net: Network, iface: Interface, pre: Preprocessing) -> int:
    """Run the bare network on a batch of 2 blank images: its embedding width, and proof the batch is dynamic."""
    h, w = iface.height, iface.width
    x = np.zeros((2, 3, h, w) if pre.layout == "nchw" else (2, h, w, 3), dtype=_np_type(iface.input_type))
    try:
        out = _raw_session(net).run([iface.output_name], {iface.input_name: x})[0]
    except Exception as exc:  # ONNX Runtime's own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelImportError(f"ONNX Runtime cannot run the network on a batch of 2 blank images: {first}") from None
    if out.ndim < 2 or out.shape[0] != 2 or int(np.prod(out.shape[1:])) != out.shape[1]:
        raise ModelImportError(
            f"output {iface.output_name!r} has shape {list(out.shape)} for 2 images; expected (2, D)"
        )
    return int(out.shape[1])


def _np_type(elem_type: int):
    return np.float16 if elem_type == 10 else np.float32


def _raw_session(net: Network):
    import onnxruntime as ort

    if "session" not in net.notes:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        net.notes["session"] = ort.InferenceSession(
            net.proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    return net.notes["session"]


def wrap(net: Network, iface: Interface, pre: Preprocessing, dim: int, cfg: ImportConfig, spec: ModelSpec):
    """The served graph: preprocess + the network (names prefixed, unused outputs dropped) + postprocess."""
    import onnx
    import onnx.utils
    from onnx import compose

    from export.onnx_export import OUTPUT_NAME

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


# -- identity and spec ----------------------------------------------------------------------------------------


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


def model_id_for(net: Network, decl: dict[str, Any], architecture: str) -> str:
    """architecture-flip|noflip-hash: the hash covers the network's content and the declared preprocessing, so two
    imports share a model_id (and may share a gallery) exactly when they compute the same embeddings."""
    digest = hashlib.sha256(net.digest.encode())
    digest.update(json.dumps(decl, sort_keys=True).encode())
    tta = "flip" if decl["flip_tta"] else "noflip"
    return f"{architecture}-{tta}-{digest.hexdigest()[:HASH_CHARS]}"


def build_spec(net, iface, pre, dim, cfg, *, l2: bool, metrics: dict[str, float] | None, dataset: str) -> ModelSpec:
    architecture = _slug(cfg.architecture) if cfg.architecture else net.architecture
    decl = declaration(pre, iface, cfg)
    return ModelSpec(
        model_id=model_id_for(net, decl, architecture),
        architecture=architecture,
        input=InputSpec(height=iface.height, width=iface.width),
        normalization=pre.normalization_spec(),
        output=OutputSpec(dim=dim, l2_normalized=l2),
        flip_tta=cfg.flip_tta,
        max_batch_size=cfg.max_batch_size,
        threshold=None,  # nobody calibrated this network's scores on our side
        provenance=Provenance(
            dataset=dataset,
            rank1=None if metrics is None else metrics["rank1"],
            mAP=None if metrics is None else metrics["mAP"],
            exported_at=datetime.now(UTC).isoformat(timespec="seconds"),
            code_version=f"imported {net.kind}",
        ),
    )


# -- the parity gate --------------------------------------------------------------------------------------------


def reference_embed(
    net: Network, iface: Interface, pre: Preprocessing, cfg: ImportConfig, images: np.ndarray, batch_size: int = 16
) -> np.ndarray:
    """The bare network on the declared preprocessing done in numpy; flip-TTA and L2 in numpy too."""

    def raw(x: np.ndarray) -> np.ndarray:
        x = x.astype(_np_type(iface.input_type))
        if net.reference is not None:
            out = net.reference(x)[iface.output_index]
        else:
            out = _raw_session(net).run([iface.output_name], {iface.input_name: x})[0]
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


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def run_import_gate(net, iface, pre, cfg, onnx_path: Path, data) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Wrapped graph (ONNX Runtime, uint8 in) vs the bare network with numpy preprocessing: batches 1/7/16 of crops
    and of random images, a batch against single runs, and rank-1/mAP on the query/gallery split."""
    from export.config import PARITY_BATCHES
    from export.parity import NUM_PARITY_IMAGES, GateError, compare, ort_embed, ort_session, retrieval_metrics

    session = ort_session(onnx_path, cfg.threads)
    failures: list[str] = []
    features: dict[str, np.ndarray] = {}
    tolerances = {
        "max_abs_diff": cfg.max_abs_diff,
        "min_cosine": cfg.min_cosine,
        "batch_vs_single": cfg.batch_vs_single,
        "retrieval_delta": cfg.retrieval_delta,
    }
    report: dict[str, Any] = {"data_root": data.root, "images": data.counts, "tolerances": tolerances}
    per_batch: dict[str, dict[str, dict[str, float]]] = {}
    batch_vs_single: dict[str, float] = {}
    for name, images in (("crops", data.crops), ("random", data.noise)):
        reference = reference_embed(net, iface, pre, cfg, images)
        # Unnormalised embeddings are judged relative to their size: 1e-4 of a norm-30 vector is 3e-3.
        size = 1.0 if cfg.normalise == "l2" else max(1.0, float(np.linalg.norm(reference, axis=1).max()))
        singles = ort_embed(session, images, batch_size=1)
        outputs = {b: singles[:b] if b == 1 else ort_embed(session, images[:b], batch_size=b) for b in PARITY_BATCHES}
        per_batch[name] = {}
        for b, output in outputs.items():
            figures = compare(reference[:b], output)
            per_batch[name][str(b)] = figures
            if figures["max_abs_diff"] > cfg.max_abs_diff * size:
                failures.append(
                    f"{name} batch {b}: max |diff| {figures['max_abs_diff']:.2e} > {cfg.max_abs_diff * size:.2e}"
                )
            if figures["min_cosine"] < cfg.min_cosine:
                failures.append(f"{name} batch {b}: cosine {figures['min_cosine']:.7f} < {cfg.min_cosine}")
        features[name] = outputs[NUM_PARITY_IMAGES]
        batch_vs_single[name] = float(np.abs(features[name] - singles).max())
        if batch_vs_single[name] > cfg.batch_vs_single * size:
            failures.append(f"{name}: batch vs single runs differ by {batch_vs_single[name]:.2e}")
    report["fp32"] = per_batch
    report["batch_vs_single_max_abs_diff"] = batch_vs_single

    reference_metrics = retrieval_metrics(
        _unit(reference_embed(net, iface, pre, cfg, data.query.images)),
        _unit(reference_embed(net, iface, pre, cfg, data.gallery.images)),
        data,
    )
    features["query"] = ort_embed(session, data.query.images)
    features["gallery"] = ort_embed(session, data.gallery.images)
    onnx_metrics = retrieval_metrics(_unit(features["query"]), _unit(features["gallery"]), data)
    deltas = {k: abs(reference_metrics[k] - onnx_metrics[k]) for k in ("rank1", "mAP")}
    report["retrieval"] = {"reference": reference_metrics, "onnx": onnx_metrics, "delta": deltas}
    for k, delta in deltas.items():
        if delta > cfg.retrieval_delta:
            failures.append(f"retrieval {k} differs by {delta:.4f} > {cfg.retrieval_delta}")
    figures = [f for group in per_batch.values() for f in group.values()]
    report["max_abs_diff"] = max(f["max_abs_diff"] for f in figures)
    report["min_cosine"] = min(f["min_cosine"] for f in figures)
    report["passed"] = not failures
    report["failures"] = failures
    if failures:
        raise GateError(failures, report)
    return report, features


# -- the artifact -----------------------------------------------------------------------------------------------


def import_model(source: str, out_dir: str | Path, pre: Preprocessing, cfg: ImportConfig) -> Path:
    """Wrap ``source`` into an artifact at ``out_dir`` (replacing an earlier artifact there); returns ``out_dir``.

    Raises ModelImportError for a network or declaration that cannot be served, export.parity.GateError when the
    wrapped graph disagrees with the network (nothing is written then)."""
    from export.config import check_model_name

    out_dir = Path(out_dir)
    try:
        name = check_model_name(cfg.name or out_dir.name)
    except ValueError as exc:
        raise ModelImportError(f"{exc}; choose another --out or --name") from None
    if cfg.data_root and not Path(cfg.data_root).is_dir():
        raise ModelImportError(f"--data {cfg.data_root} is not a folder")
    started = time.perf_counter()
    # The network is checked before torch is imported (for an ONNX file), so a refusal answers at once.
    net = load_network(source, pre, cfg)
    iface = inspect_network(net, pre, cfg.output)
    dim = probe_dim(net, iface, pre)

    from export.artifact import _check_replaceable, publish_artifact

    try:
        _check_replaceable(out_dir)
    except FileExistsError as exc:
        raise ModelImportError(str(exc)) from None
    return publish_artifact(out_dir, started, lambda folder: _build(net, iface, pre, dim, cfg, folder, name, source))


def _build(net, iface, pre, dim, cfg, build: Path, name: str, source: str) -> dict[str, Any]:
    import onnx
    import onnxruntime

    from export.artifact import INT8_FILE, ONNX_FILE, REPOSITORY_DIR, SPEC_FILE
    from export.parity import load_parity_data
    from export.triton_repo import write_model_repository

    # A first spec (no measured metrics yet) for the gate; the written one adds what --data measured.
    spec = build_spec(net, iface, pre, dim, cfg, l2=cfg.normalise == "l2", metrics=None, dataset="")
    onnx_path = build / ONNX_FILE
    onnx.save_model(wrap(net, iface, pre, dim, cfg, spec), str(onnx_path))

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
    t0 = time.perf_counter()
    gate, features = run_import_gate(net, iface, pre, cfg, onnx_path, data)
    gate["data_source"] = source_kind
    gate["seconds"] = round(time.perf_counter() - t0, 2)

    # With --normalise none the spec says whether the network's own output is unit length (the server checks it).
    l2 = cfg.normalise == "l2" or bool(
        np.abs(np.linalg.norm(np.concatenate([features["crops"], features["random"]]), axis=1) - 1).max() < 1e-3
    )
    measured = gate["retrieval"]["onnx"] if cfg.data_root else None
    final = build_spec(
        net, iface, pre, dim, cfg, l2=l2, metrics=measured, dataset=Path(cfg.data_root).name if cfg.data_root else ""
    )
    stamp = {"exported_at": spec.provenance.exported_at}
    final = final.model_copy(update={"provenance": final.provenance.model_copy(update=stamp)})
    if final != spec:
        model = onnx.load_model(str(onnx_path))
        onnx.helper.set_model_props(model, {SPEC_KEY: final.to_json()})
        onnx.save_model(model, str(onnx_path))
        spec = final

    report: dict[str, Any] = {
        "name": name,
        "model_id": spec.model_id,
        "imported_from": {"source": source, "kind": net.kind, "sha256": net.digest},
        "preprocessing": declaration(pre, iface, cfg),
        "exported_at": spec.provenance.exported_at,
        "versions": {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "config": asdict(cfg),
        "onnx": {
            "file": ONNX_FILE,
            "bytes": onnx_path.stat().st_size,
            "opset": iface.opset,
            "nodes": len(onnx.load_model(str(onnx_path), load_external_data=False).graph.node),
        },
        "gate": gate,
        "fp16": {"enabled": False},
        "tensorrt": {"enabled": False},
    }
    if cfg.int8:
        from export.artifact import _int8_variant
        from export.config import ExportConfig, GateTolerances

        export_cfg = ExportConfig(
            threads=cfg.threads, tolerances=GateTolerances(int8_max_map_drop=cfg.int8_max_map_drop)
        )
        report["int8"] = _int8_variant(build, onnx_path, data, gate["retrieval"]["onnx"], export_cfg)
        if report["int8"].get("shipped"):
            report["int8"]["file"] = INT8_FILE
    else:
        report["int8"] = {"enabled": False}
    model_dir = write_model_repository(build / REPOSITORY_DIR, spec, name, onnx_path)
    report["triton"] = {"model_name": name, "config": str(model_dir.relative_to(build) / "config.pbtxt")}
    (build / SPEC_FILE).write_text(spec.model_dump_json(indent=2) + "\n")
    return report


@contextlib.contextmanager
def _parity_root(cfg: ImportConfig, iface: Interface) -> Iterator[tuple[Path, str]]:
    """--data when given (labelled crops: meaningful rank-1/mAP, INT8 calibration), else a small synthetic set."""
    if cfg.data_root:
        yield Path(cfg.data_root), "config"
        return
    from export.artifact import synthetic_parity_set

    with synthetic_parity_set(cfg.seed, iface.height, iface.width) as root:
        yield root, "synthetic"


# -- command line -----------------------------------------------------------------------------------------------


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


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument("--atol", type=float, default=defaults.max_abs_diff, help="gate: max |diff| per element")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[str, Path, Preprocessing, ImportConfig]:
    args = build_parser().parse_args(argv)
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
        max_abs_diff=args.atol,
    )
    return args.model, args.out, pre, cfg


def summary(artifact: Path, report: dict[str, Any]) -> str:
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


def main(argv: list[str] | None = None) -> int:
    try:
        source, out, pre, cfg = parse_args(argv)
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
    from export.artifact import REPORT_FILE

    report = json.loads((artifact / REPORT_FILE).read_text())
    print(summary(artifact, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
