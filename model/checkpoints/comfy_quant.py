"""ComfyUI per-layer ``comfy_quant`` codecs: ``nvfp4``, ``mxfp8``, ``int8_tensorwise`` (optionally ``convrot``).

The layout is ComfyUI's (``comfy/ops.py`` ``_load_quantized_module``, ``comfy/quant_ops.py``): each
quantised Linear has ``<module>.comfy_quant`` (UTF-8 JSON, ``{"format": ...}``) next to its weight and

* ``nvfp4`` — ``weight`` uint8 (rows, cols/2; padded to 16×16) E2M1 pairs, ``weight_scale`` float8_e4m3fn
  block scales (swizzled), ``weight_scale_2`` float32 per-tensor scale;
* ``mxfp8`` — ``weight`` float8_e4m3fn (padded to 32×32), ``weight_scale`` float8_e8m0fnu block scales;
* ``int8_tensorwise`` — ``weight`` int8, ``weight_scale`` float32 (scalar, or per row); with
  ``"convrot": true`` (``convrot_groupsize``, default 256) the weight is stored Hadamard-rotated.

Decoding is comfy-kitchen's own ``Layout.dequantize`` (its fast kernels where the device has them, its
eager torch ops elsewhere), called per layer on the compute device.  comfy-kitchen is imported lazily: it
ships with ComfyUI; outside ComfyUI a missing install is a clear error, raised only for these files.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Mapping, Optional

import torch


@dataclass(frozen=True)
class ComfyQuantCodec:
    scheme: str  # our scheme name == ComfyUI's format name
    layout: str  # comfy-kitchen layout class
    weight_dtype: torch.dtype  # storage dtype of ``weight``
    scales: tuple[tuple[str, torch.dtype], ...]  # sibling tensors (file tail, dtype they are viewed as)
    pad: int  # the layout pads rows and columns to a multiple of this
    pack: int  # logical columns per stored column


COMFY_CODECS = {
    "nvfp4": ComfyQuantCodec("nvfp4", "TensorCoreNVFP4Layout", torch.uint8,
                             (("weight_scale", torch.float8_e4m3fn), ("weight_scale_2", torch.float32)), 16, 2),
    "mxfp8": ComfyQuantCodec("mxfp8", "TensorCoreMXFP8Layout", torch.float8_e4m3fn,
                             (("weight_scale", torch.float8_e8m0fnu),), 32, 1),
    "int8_tensorwise": ComfyQuantCodec("int8_tensorwise", "TensorWiseINT8Layout", torch.int8,
                                       (("weight_scale", torch.float32),), 1, 1),
}
COMFY_SCHEMES = tuple(COMFY_CODECS)
SCALE_TAILS = ("weight_scale", "weight_scale_2", "input_scale")


@functools.cache
def kitchen():
    """comfy_kitchen.tensor, or a ValueError that says how to get it."""
    try:
        import comfy_kitchen.tensor as ckt  # noqa: WPS433 (optional: ComfyUI ships it)
    except ImportError as exc:
        raise ValueError("ComfyUI nvfp4 / mxfp8 / int8 checkpoints are decoded by comfy-kitchen, which is not "
                         f"installed ({exc}); install it with `pip install comfy-kitchen` (ComfyUI requires it)") from None
    return ckt


def layer_options(scheme: str, conf: Mapping) -> dict:
    """Per-layer options from the ``comfy_quant`` JSON (ComfyUI reads them top-level or under ``params``)."""
    if scheme != "int8_tensorwise":
        return {}
    params = conf.get("params", {}) if isinstance(conf.get("params", {}), dict) else {}
    if not conf.get("convrot", params.get("convrot", False)):
        return {}
    return {"convrot": True, "convrot_groupsize": int(conf.get("convrot_groupsize", params.get("convrot_groupsize", 256)))}


def logical_shape(scheme: str, storage_shape: tuple[int, ...]) -> tuple[int, int]:
    """(out, in) of the (padded) weight from its storage shape."""
    codec = COMFY_CODECS[scheme]
    return int(storage_shape[0]), int(storage_shape[1]) * codec.pack


def storage_shape(scheme: str, out_features: int, in_features: int) -> tuple[int, int]:
    codec = COMFY_CODECS[scheme]
    rows, cols = (-(-n // codec.pad) * codec.pad for n in (out_features, in_features))
    return rows, cols // codec.pack


def as_storage(tail: str, value: torch.Tensor, scheme: str) -> torch.Tensor:
    """A file tensor as the dtype the codec reads it in (legacy uint8-on-disk scales are re-viewed)."""
    codec = COMFY_CODECS[scheme]
    want = codec.weight_dtype if tail == "weight" else dict(codec.scales).get(tail, torch.float32)
    if value.dtype == want:
        return value
    if value.dtype.itemsize == want.itemsize:  # e.g. uint8 on disk → float8_e4m3fn / e8m0 / int8
        return value.view(want)
    return value.to(want)


def dequantize_comfy(scheme: str, weight: torch.Tensor, scales: Mapping[str, torch.Tensor],
                     shape: tuple[int, int], dtype: torch.dtype, options: Optional[Mapping] = None) -> torch.Tensor:
    """comfy-kitchen's decode of one layer → (out, in) ``dtype`` on ``weight``'s device."""
    ckt = kitchen()
    codec = COMFY_CODECS[scheme]
    layout = ckt.get_layout_class(codec.layout)
    extra = dict(options or {})
    if scheme == "nvfp4":
        params = layout.Params(scale=scales["weight_scale_2"], block_scale=scales["weight_scale"],
                               orig_dtype=dtype, orig_shape=tuple(shape))
    else:
        params = layout.Params(scale=scales["weight_scale"], orig_dtype=dtype, orig_shape=tuple(shape), **extra)
    out = layout.dequantize(weight, params)
    if tuple(out.shape) != tuple(shape):
        out = out[: shape[0], : shape[1]]
    return out.to(dtype)
