"""Which variant of an artifact to serve, and which galleries a variant may search or add to.

An artifact records its variants in the spec (``ModelSpec.variants``: fp32, int8, fp16, tensorrt-fp16/fp32), each
with the gate it passed or failed and, for a reduced-precision variant, whether its embeddings may share a gallery
with the fp32 model's (``cross_variant_with_fp32``). The rules, in one place:

* Serving: a variant is served only when it ``passed`` its gate, its file was kept, this runtime runs it, and it is
  meant for this device (``any`` or the same). By default the server takes the fastest such variant among fp32 and
  those whose cross-variant gate passed too (so a default never locks a server out of an fp32-built gallery):
  INT8 on a CPU, fp16 on a GPU. ``REID_MODEL_VARIANT`` names one instead; a name that does not exist, failed its
  gate, or cannot run here is refused with the reason.
* Sharing a gallery: a variant may search or add to a gallery holding embeddings of variant ``r`` when it is ``r``,
  or when one of the two is fp32 and the other passed ``cross_variant_with_fp32``. Two reduced-precision variants
  were never measured against each other, so they never share a gallery. A gallery that records no variant is
  taken as built by fp32 (the only variant served before variants were recorded); an artifact older than spec
  version 3 records none and serves fp32.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from embedders.protocol import EmbedderError
from formats.spec import ModelSpec, VariantSpec

FP32 = "fp32"
ONNX_FILE = "model.onnx"
Device = Literal["cpu", "gpu"]
Runtime = Literal["onnxruntime", "tensorrt"]
SETTING = "REID_MODEL_VARIANT"
# When the export measured no speed for a variant on this device, the usual order of speed there (fastest first).
_USUAL_ORDER: dict[str, tuple[str, ...]] = {
    "cpu": ("int8", FP32, "fp16"),
    "gpu": ("tensorrt-fp16", "tensorrt-fp32", "fp16", FP32, "int8"),
}


class VariantRefused(EmbedderError):  # noqa: N818 (a refusal, named for what the operator sees)
    """The named variant cannot be served here, or the served one may not share this gallery; the message says why
    and which setting to change. An EmbedderError that is not EmbedderUnavailable: retrying will not help."""


def fp32_of(spec: ModelSpec) -> VariantSpec:
    """The fp32 record; an artifact older than spec version 3 has none, and its model.onnx is fp32."""
    return spec.variant(FP32) or VariantSpec(
        name=FP32, file=ONNX_FILE, runtime="onnxruntime", precision="fp32", device="any", passed=True
    )


def variants_of(spec: ModelSpec) -> tuple[VariantSpec, ...]:
    return spec.variants or (fp32_of(spec),)


def why_not_servable(variant: VariantSpec, device: Device, runtime: Runtime) -> str:
    """ "" when ``variant`` can be served by ``runtime`` on ``device``, else the reason in words."""
    if not variant.passed:
        rule = f" ({variant.gate.rule})" if variant.gate.rule else ""
        return f"it did not pass its gate{rule}"
    if variant.file is None:
        return "its file was not kept"
    if variant.runtime != runtime:
        return f"it runs under {variant.runtime}, not {runtime}"
    if variant.device not in ("any", device):
        return f"it is meant for the {variant.device.upper()}, and this server runs on the {device.upper()}"
    return ""


def _speed_key(variant: VariantSpec, device: Device) -> tuple[float, int]:
    """Sort key, fastest first: the export's measured batch-1 latency on this device, then the usual order."""
    order = _USUAL_ORDER[device]
    rank = order.index(variant.name) if variant.name in order else len(order)
    speed = variant.speed
    measured = None
    if speed is not None and speed.device == device:
        measured = speed.batch1_latency_ms or speed.latency_ms
    return (measured if measured is not None else float("inf"), rank)


def choose_variant(
    spec: ModelSpec, *, device: Device, runtime: Runtime = "onnxruntime", requested: str | None = None
) -> VariantSpec:
    """The variant to serve: ``requested`` when it can be served here (else VariantRefused, saying why), or the
    fastest servable one among fp32 and the variants whose cross-variant gate passed."""
    known = variants_of(spec)
    if requested:
        variant = next((v for v in known if v.name == requested), None)
        if variant is None:
            names = ", ".join(v.name for v in known)
            raise VariantRefused(f"{SETTING}={requested}: the artifact has no such variant (it has: {names})")
        if why := why_not_servable(variant, device, runtime):
            raise VariantRefused(f"{SETTING}={requested} cannot be served: {why}")
        return variant
    candidates = [
        v
        for v in known
        if not why_not_servable(v, device, runtime)
        and (v.name == FP32 or (v.cross_variant_with_fp32 is not None and v.cross_variant_with_fp32.passed))
    ]
    if not candidates:
        raise VariantRefused(f"no variant of {spec.model_id} can be served by {runtime} on the {device.upper()}")
    # fp32 wins a tie: with equal measured speed, the reference model is the one to serve
    return min(candidates, key=lambda v: (*_speed_key(v, device), v.name != FP32))


def may_share(spec: ModelSpec, a: str, b: str) -> bool:
    """Whether embeddings of variants ``a`` and ``b`` may be compared (one gallery, searched by the other)."""
    if a == b:
        return True
    if FP32 not in (a, b):
        return False  # two reduced-precision variants: never measured against each other
    other = spec.variant(b if a == FP32 else a)
    return other is not None and other.cross_variant_with_fp32 is not None and other.cross_variant_with_fp32.passed


def recorded_or_fp32(recorded: Iterable[str] | None, gallery_items: int) -> frozenset[str]:
    """The variants a gallery's items were embedded by: its record, else fp32 when it holds items, else none."""
    if recorded:
        return frozenset(recorded)
    return frozenset({FP32}) if gallery_items else frozenset()


def check_gallery(spec: ModelSpec, served: str, built_by: Iterable[str]) -> None:
    """VariantRefused unless variant ``served`` may search and add to a gallery built by the variants ``built_by``;
    the message names the variants that may, and the setting to pick one."""
    built_by = sorted(set(built_by))
    clashing = [r for r in built_by if not may_share(spec, served, r)]
    if not clashing:
        return
    allowed = [
        v.name
        for v in variants_of(spec)
        if v.passed and v.file is not None and all(may_share(spec, v.name, r) for r in built_by)
    ]
    if FP32 in clashing or served == FP32:
        why = "their cross-variant gate did not pass (or was not measured)"
    else:
        why = "two reduced-precision variants were never measured against each other"
    hint = f"set {SETTING} to {' or '.join(allowed)}" if allowed else "re-index it with the served variant"
    raise VariantRefused(
        f"the gallery holds embeddings of variant {', '.join(clashing)}, which variant {served} may not search or "
        f"add to: {why}; {hint}"
    )
