"""The DiT's attention through ComfyUI's dispatcher (``comfy.ldm.modules.attention``).

``optimized_attention`` is what ComfyUI picked from its flags (``--use-sage-attention``,
``--use-flash-attention``, xformers, ``--use-pytorch-cross-attention``, ``--use-split-cross-attention``)
and every kernel is ``wrap_attn``-decorated, so a per-model override in
``transformer_options["optimized_attention_override"]`` (attention-patch nodes) applies too.

One exception keeps the default path reference-exact: when ComfyUI falls back to its
sub-quadratic kernel only because PyTorch attention is not enabled (the CPU default), we use its
``attention_pytorch`` (SDPA, the reference's kernel; overrides still apply).  ``--use-quad-cross-attention``
asks for the sub-quadratic kernel by name: then it runs (not reference-exact).

Masks (padded caption batches only) are built once per sampling run in the form of the kernel that
will run: bool for SDPA (the reference's call); additive (0 / −max, ComfyUI's convention, which every
one of its kernels and SDPA take) for the others and whenever a per-model override may route the call
elsewhere — a bool mask there would be added as 0/1 (xformers, split, sub-quadratic) or fail to reshape
(basic).  ComfyUI's flash-attention kernel takes no mask: a masked call goes to SDPA directly instead of
failing inside it and logging a warning per layer.
"""

from __future__ import annotations

from typing import Optional

import torch

import comfy.ldm.modules.attention as comfy_attention

from ...model.dit.attention import additive_mask, bool_mask


def _quad_asked_for() -> bool:
    """``--use-quad-cross-attention`` on the command line: the user chose the sub-quadratic kernel."""
    try:
        from comfy.cli_args import args
    except ImportError:  # pragma: no cover - ComfyUI without cli_args
        return False
    return bool(getattr(args, "use_quad_cross_attention", False))


def host_kernel():
    """The attention function ComfyUI dispatches to (see the module docstring for the one exception: the
    sub-quadratic kernel as ComfyUI's fallback, not when ``--use-quad-cross-attention`` asks for it)."""
    fn = comfy_attention.optimized_attention
    if fn is comfy_attention.attention_sub_quad and not _quad_asked_for():
        return comfy_attention.attention_pytorch
    return fn


def kernel_name() -> str:
    return host_kernel().__name__.removeprefix("attention_")


def kernel_note() -> str:
    """What the node says about attention: the kernel ComfyUI's flags select, and whether it is the reference's."""
    fn = host_kernel()
    return f"attention: {fn.__name__.removeprefix('attention_')}" + (
        " (SDPA, the reference's kernel)" if fn is comfy_attention.attention_pytorch else
        " (ComfyUI's flags; not the reference's SDPA: close, not bit-exact)")


def masked_kernel():
    """The kernel for a call with a mask: ComfyUI's flash-attention kernel takes none, SDPA does."""
    fn = host_kernel()
    return comfy_attention.attention_pytorch if fn is getattr(comfy_attention, "attention_flash", None) else fn


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, mask: Optional[torch.Tensor] = None,
              transformer_options: Optional[dict] = None) -> torch.Tensor:
    kernel = host_kernel() if mask is None else masked_kernel()
    return kernel(q, k, v, heads, mask=mask, skip_reshape=True, transformer_options=transformer_options or {})


def attention_mask(allowed: torch.Tensor, dtype: torch.dtype, transformer_options: Optional[dict] = None) -> torch.Tensor:
    overridden = "optimized_attention_override" in (transformer_options or {})
    if masked_kernel() is comfy_attention.attention_pytorch and not overridden:
        return bool_mask(allowed, dtype)
    return additive_mask(allowed, dtype)
