"""LoRA patches of a layer computed as a low-rank side branch instead of being merged into its weight.

For a layer whose weight is decoded on every call (packed fp8 / nf4 / GGUF / ``comfy_quant``, or a base
shared with an unconditional-from-LoRA view), merging a LoRA means one weight-sized ``up @ down`` product
and one weight-sized add per call.  For plain LoRAs the same result is

    y = x Wᵀ + b + Σ scale · (x downᵀ) upᵀ          (rows ``offset`` only, for fused q/k/v)

two thin matmuls (rank r) per LoRA — the same maths, summed in a different order (fp32: equal within
float rounding; bf16: within the bf16 noise of the merged weight, see ``tests/comfyui/test_lora.py``).
``scale = strength · alpha / rank`` exactly as ComfyUI's ``LoRAAdapter`` computes it.  Anything else —
LoHa, LoKr, DoRA, LoCon mid weights, ``diff`` patches, a ``strength_model`` ≠ 1, weight functions — keeps
ComfyUI's merge into the decoded weight (:func:`low_rank_terms` returns None), so every adapter type works.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

import comfy.weight_adapter.lora as comfy_lora_adapter

_TERMS_ATTR = "_ideogram4_low_rank"


class LowRankTerm:
    """One plain LoRA on one weight: ``scale · up @ down`` on output rows ``rows`` (None: all)."""

    __slots__ = ("scale", "down", "up", "rows")

    def __init__(self, scale: float, down: torch.Tensor, up: torch.Tensor, rows: Optional[tuple[int, int]]):
        self.scale, self.down, self.up, self.rows = scale, down, up, rows

    def factors(self, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """(down, up) on ``device`` in ``dtype`` for this call.  Nothing is kept: a streamed layer's LoRA stays in
        system RAM as ComfyUI keeps it (its memory accounting counts no device copy), a resident one is already
        on the device (moved once when the layer was loaded).  The copy does not block the host: the factors are
        read-only, and a blocking copy per layer would drain the GPU queue the offload stream keeps full."""
        return (self.down.to(device=device, dtype=dtype, non_blocking=True),
                self.up.to(device=device, dtype=dtype, non_blocking=True))


def _entries(patch):
    """The (strength, adapter, strength_model, offset, function) entries of a ``LowVramPatch`` (its copies already
    on the device when it has them, else the patcher's originals)."""
    prepared = getattr(patch, "prepared_patches", None)
    if prepared is not None:
        return prepared
    patches, key = getattr(patch, "patches", None), getattr(patch, "key", None)
    if patches is None or key not in patches:
        return None
    return patches[key]


def _terms_of(patch) -> Optional[list]:
    return terms_of_entries(_entries(patch))


def terms_of_entries(entries) -> Optional[list]:
    """The :class:`LowRankTerm` list of a key's patch entries when every one is a plain LoRA, else None."""
    if not entries:
        return None
    terms = []
    for strength, adapter, strength_model, offset, function in (tuple(e) + (None,) * (5 - len(e)) for e in entries):
        if not isinstance(adapter, comfy_lora_adapter.LoRAAdapter) or function is not None or strength_model != 1.0:
            return None
        up, down, alpha, mid, dora_scale, reshape = (tuple(adapter.weights) + (None,) * 6)[:6]
        if mid is not None or dora_scale is not None or reshape is not None or up.ndim != 2 or down.ndim != 2:
            return None
        if offset is not None and offset[0] != 0:
            return None
        scale = float(strength) * (float(alpha) / down.shape[0] if alpha is not None else 1.0)
        rows = None if offset is None else (int(offset[1]), int(offset[2]))
        terms.append(LowRankTerm(scale, down, up, rows))
    return terms


def low_rank_terms(patch) -> Optional[list]:
    """The :class:`LowRankTerm` list of a patch made only of plain LoRAs, else None (cached on the patch)."""
    cached = getattr(patch, _TERMS_ATTR, False)
    if cached is False:
        cached = _terms_of(patch)
        setattr(patch, _TERMS_ATTR, cached)
    return cached


def split_functions(functions: list) -> tuple[list, list]:
    """(weight functions, side-branch terms): all patches as side branches when every one is a plain LoRA,
    otherwise all of them applied to the weight (ComfyUI's order and maths)."""
    terms = []
    for fn in functions:
        t = low_rank_terms(fn)
        if t is None:
            return functions, []
        terms += t
    return [], terms


def add_side_branches(y: torch.Tensor, x: torch.Tensor, terms: list) -> torch.Tensor:
    """``y`` (…, out; a fresh layer output, updated in place) plus every term's ``scale · (x downᵀ) upᵀ``."""
    for term in terms:
        down, up = term.factors(x.device, x.dtype)
        delta = F.linear(F.linear(x, down), up)
        if term.scale != 1.0:
            delta = delta * term.scale
        if term.rows is None:
            y.add_(delta)
        else:
            start, size = term.rows
            y[..., start:start + size].add_(delta)
    return y
