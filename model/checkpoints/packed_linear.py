"""``QuantizedLinear``: a Linear whose weight stays packed and is decoded per call (pure torch).

The layer type hides the storage scheme (``fp8_rowwise``, ``fp8_tensorwise`` — ``fp8``; ``nf4`` —
``nf4``; ComfyUI ``nvfp4``, ``mxfp8``, ``int8_tensorwise`` — ``comfy_quant``; ``gguf`` — ``gguf_codec``;
one codec module per family) from the models: they only ever see a Linear.  Decoding happens per layer on the fly,
never for the whole model.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fp8_fused, gguf_fused
from .comfy_quant import COMFY_CODECS, COMFY_SCHEMES, dequantize_comfy, storage_shape
from .fp8 import FP8_DTYPE, dequantize_fp8, fp8_storage_to
from .fp8_matmul import FP8_SCHEMES, fp8_linear
from .gguf_codec import dequantize_gguf, row_bytes
from .nf4 import NF4_BLOCKSIZE, dequantize_nf4
from .nf4 import decode_note as nf4_decode_note

SCHEMES = ("fp8_rowwise", "fp8_tensorwise", "nf4") + COMFY_SCHEMES + ("gguf",)


class QuantizedLinear(nn.Module):
    """A Linear whose weight is stored quantised and dequantised on each call.

    Storage is registered as parameters/buffers (so ``.to()``, ``state_dict`` sizes and ComfyUI's
    module-size accounting see it).  ``dequantized_weight(dtype, device)`` is the one decode entry
    point; ``forward`` is ``F.linear(x, dequantized_weight(x.dtype), bias)`` — the reference's
    dequantise-then-linear numerics.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, scheme: str,
                 device=None, dtype: Optional[torch.dtype] = None, options: Optional[dict] = None) -> None:
        super().__init__()
        if scheme not in SCHEMES:
            raise ValueError(f"unknown quantisation scheme {scheme!r}; expected one of {SCHEMES}")
        self.in_features = in_features
        self.out_features = out_features
        self.scheme = scheme
        self.compute_dtype = dtype or torch.bfloat16
        self.options = dict(options or {})  # per-layer codec options (gguf qtype, int8 convrot)
        self.fast_fp8 = False  # opt-in fp8 tensor-core matmul (model.checkpoints.fp8_matmul), not reference-exact
        if scheme == "gguf":
            shape = (out_features, row_bytes(self.options["qtype"], in_features))
            self.weight = nn.Parameter(torch.empty(shape, dtype=torch.uint8, device=device), requires_grad=False)
        elif scheme in COMFY_CODECS:
            codec = COMFY_CODECS[scheme]
            self.weight = nn.Parameter(torch.empty(storage_shape(scheme, out_features, in_features),
                                                   dtype=codec.weight_dtype, device=device), requires_grad=False)
            for tail, scale_dtype in codec.scales:  # block-scale shapes are the layout's: taken from the file
                self.register_buffer(tail, torch.empty(0, dtype=scale_dtype, device=device))
        elif scheme == "nf4":
            n = in_features * out_features
            self.weight = nn.Parameter(torch.empty(n // 2, 1, dtype=torch.uint8, device=device), requires_grad=False)
            self.register_buffer("absmax", torch.empty(n // NF4_BLOCKSIZE, dtype=torch.float32, device=device))
            self.register_buffer("quant_map", torch.empty(16, dtype=torch.float32, device=device))
        else:
            self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=FP8_DTYPE, device=device),
                                       requires_grad=False)
            scale_shape = (out_features,) if scheme == "fp8_rowwise" else ()
            self.register_buffer("weight_scale", torch.empty(scale_shape, dtype=torch.float32, device=device))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, dtype=self.compute_dtype, device=device),
                                     requires_grad=False)
        else:
            self.register_parameter("bias", None)

    def extra_repr(self) -> str:
        opts = "".join(f", {k}={v}" for k, v in self.options.items())
        return f"in_features={self.in_features}, out_features={self.out_features}, scheme={self.scheme}{opts}"

    def storage(self) -> tuple[torch.Tensor, ...]:
        """The packed tensors :meth:`decode` takes (what a streamed layer copies to the device)."""
        if self.scheme == "gguf":
            return (self.weight,)
        if self.scheme in COMFY_CODECS:
            return (self.weight, *(getattr(self, tail) for tail, _ in COMFY_CODECS[self.scheme].scales))
        if self.scheme == "nf4":
            return self.weight, self.absmax, self.quant_map
        return self.weight, self.weight_scale

    def decode(self, storage: tuple[torch.Tensor, ...], dtype: torch.dtype) -> torch.Tensor:
        """The weight in ``dtype`` from :meth:`storage` tensors that are already on one device."""
        shape = (self.out_features, self.in_features)
        if self.scheme == "gguf":
            return dequantize_gguf(storage[0], self.options["qtype"], shape, dtype)
        if self.scheme in COMFY_CODECS:
            tails = [tail for tail, _ in COMFY_CODECS[self.scheme].scales]
            return dequantize_comfy(self.scheme, storage[0], dict(zip(tails, storage[1:])), shape, dtype, self.options)
        if self.scheme == "nf4":
            return dequantize_nf4(*storage, shape, dtype)
        return dequantize_fp8(*storage, dtype)

    def dequantized_weight(self, dtype: torch.dtype, device=None) -> torch.Tensor:
        device = device or self.weight.device
        storage = self.storage()
        if self.scheme in FP8_SCHEMES:  # float8 travels as its uint8 view to devices without float8
            storage = (fp8_storage_to(storage[0], device), *storage[1:])
        return self.decode(tuple(t.to(device) for t in storage), dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast_fp8 and self.scheme in FP8_SCHEMES:
            return fp8_linear(x, self.weight.to(x.device), self.weight_scale, self.bias)
        w = self.dequantized_weight(x.dtype, x.device)
        b = self.bias.to(device=x.device, dtype=x.dtype) if self.bias is not None else None
        return F.linear(x, w, b)


def decode_notes(model: nn.Module, device, dtype: torch.dtype) -> list[str]:
    """How ``model``'s fp8, nf4 and GGUF layers decode to ``dtype`` on ``device`` (one compiled kernel, or the eager ops
    and why): ``fp8_fused`` / ``nf4`` / ``gguf_fused``'s report lines, probing each once; empty for a model without them."""
    packed = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    notes = []
    if any(m.scheme in FP8_SCHEMES for m in packed):
        notes.append(fp8_fused.decode_note(device, dtype))
    if any(m.scheme == "nf4" for m in packed):
        notes.append(nf4_decode_note(device, dtype))
    qtypes = sorted({m.options["qtype"] for m in packed if m.scheme == "gguf"})
    if qtypes:
        notes.append(gguf_fused.decode_note(device, qtypes, dtype))
    return notes
