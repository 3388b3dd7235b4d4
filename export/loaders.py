"""Loading a network trained elsewhere, per format, and checking the interface it offers.

An ONNX file is read as it is; a TorchScript file is exported to ONNX with the TorchScript exporter (the only one
that takes a ScriptModule); a ``package.module:function`` factory's module through the dynamo exporter of
``python -m export``. Torch networks also keep the module itself as the parity gate's reference. Nothing here
imports torch until a torch network is loaded, so a refused ONNX file answers at once.
"""

from __future__ import annotations

import hashlib
import importlib
import re
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from export.config import ImportConfig, ModelImportError, Preprocessing
from export.spec import weights_hash

MIN_OPSET = 11  # the oldest default-domain opset the pre/post graphs are written for
_FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}  # onnx.TensorProto element types
TORCH_SUFFIXES = (".pt", ".pth", ".ts", ".torchscript", ".jit")


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


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def _load_onnx(path: Path) -> Network:
    import onnx

    try:
        proto = onnx.load_model(str(path))
    except Exception as exc:  # protobuf's DecodeError and friends
        raise ModelImportError(f"{path} is not a readable ONNX model ({type(exc).__name__})") from None
    return Network(proto, "onnx", weights_hash(path), slug(path.stem))


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
    return Network(proto, "torchscript", weights_hash(path), slug(path.stem), _torch_reference(module))


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
    return Network(proto, "factory", _state_digest(source, module), slug(function_name), _torch_reference(module))


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
    inp, in_type, dims = _image_input(graph)
    height, width = _input_size(inp.name, dims, pre)
    out, index, out_type = _embedding_output(graph, output)
    opset = next((o.version for o in net.proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < MIN_OPSET:
        raise ModelImportError(f"the network uses opset {opset}; re-export it with opset {MIN_OPSET} or newer")
    return Interface(inp.name, in_type, out.name, index, out_type, int(height), int(width), opset)


def _image_input(graph):
    """The one input that is not an initialiser: (it, its element type, its dims), a float image batch of 4 axes."""
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
    return inp, in_type, dims


def _input_size(name: str, dims: list, pre: Preprocessing) -> tuple[int, int]:
    """(height, width) the wrapped model feeds the input: its static size or --size (which must agree with it);
    ModelImportError for channels in the wrong place or not 3, a fixed batch, or no size at all."""
    nchw = pre.layout == "nchw"
    batch, spatial = dims[0], (dims[2:4] if nchw else dims[1:3])
    channels, last_or_first = (dims[1], dims[3]) if nchw else (dims[3], dims[1])
    if channels != 3 and last_or_first == 3:
        where, other = ("last", "nhwc") if nchw else ("first", "nchw")
        raise ModelImportError(f"input {name!r} {dims} has its 3 channels {where}: is it --layout {other}?")
    if isinstance(channels, int) and channels != 3:
        raise ModelImportError(f"input {name!r} {dims} has {channels} channels in layout {pre.layout}, not 3")
    if isinstance(batch, int) and batch != 0:
        raise ModelImportError(
            f"input {name!r} {dims} has a fixed batch of {batch}; re-export it with a dynamic batch axis"
        )
    static = [d for d in spatial if isinstance(d, int) and d > 0]
    if len(static) < 2 and (pre.height is None or pre.width is None):
        raise ModelImportError(f"input {name!r} {dims} has a dynamic spatial size; give it with --size HxW")
    if pre.height is None or pre.width is None:
        return spatial[0], spatial[1]
    for want, have in zip((pre.height, pre.width), spatial, strict=True):
        if isinstance(have, int) and have > 0 and have != want:
            raise ModelImportError(
                f"--size {pre.height}x{pre.width} does not match the static input {name!r} {dims} (layout {pre.layout})"
            )
    return pre.height, pre.width


def _embedding_output(graph, output: str | None):
    """(the output named ``output``, or the only one; its index; its element type): a float (N, D) tensor."""
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
    return out, index, out_type


def _type_name(elem_type: int) -> str:
    import onnx

    return onnx.helper.tensor_dtype_to_np_dtype(elem_type).name if elem_type else "untyped"


def probe_dim(net: Network, iface: Interface, pre: Preprocessing) -> int:
    """Run the bare network on a batch of 2 blank images: its embedding width, and proof the batch is dynamic."""
    h, w = iface.height, iface.width
    x = np.zeros((2, 3, h, w) if pre.layout == "nchw" else (2, h, w, 3), dtype=np_type(iface.input_type))
    try:
        out = raw_session(net).run([iface.output_name], {iface.input_name: x})[0]
    except Exception as exc:  # ONNX Runtime's own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelImportError(f"ONNX Runtime cannot run the network on a batch of 2 blank images: {first}") from None
    if out.ndim < 2 or out.shape[0] != 2 or int(np.prod(out.shape[1:])) != out.shape[1]:
        raise ModelImportError(
            f"output {iface.output_name!r} has shape {list(out.shape)} for 2 images; expected (2, D)"
        )
    return int(out.shape[1])


def np_type(elem_type: int):
    return np.float16 if elem_type == 10 else np.float32


def raw_session(net: Network):
    import onnxruntime as ort

    if "session" not in net.notes:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        net.notes["session"] = ort.InferenceSession(
            net.proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    return net.notes["session"]
