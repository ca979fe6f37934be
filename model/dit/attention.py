"""The attention kernel contract of the DiT (no ComfyUI import).

The DiT never calls a kernel directly: it asks its ``operations`` namespace for

* ``attention(q, k, v, heads, mask=None, transformer_options=None)`` — q/k/v (B, H, L, D) →
  (B, L, H·D), the signature of ComfyUI's ``optimized_attention(..., skip_reshape=True)``;
* ``attention_mask(allowed, dtype, transformer_options=None)`` — the (B, 1, L, L) bool "may attend"
  matrix turned into the form the kernel that will run wants, once per sampling run (bool for SDPA,
  additive for kernels that need it; ``transformer_options`` says whether a per-model override may
  route the call to another kernel).

``TorchOps`` uses :func:`sdpa_attention` / :func:`bool_mask` (the reference's numerics); the
ComfyUI namespace routes through ComfyUI's attention dispatcher so ``--use-sage-attention``,
``--use-flash-attention``, xformers and per-model attention overrides apply.  A namespace
without these attributes gets the SDPA defaults (:func:`attention_ops`).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int,
                   mask: Optional[torch.Tensor] = None, transformer_options: Optional[dict] = None) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` on (B, H, L, D) → (B, L, H·D) (the reference's call)."""
    b, _, n, _ = q.shape
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).reshape(b, n, -1)


def bool_mask(allowed: torch.Tensor, dtype: torch.dtype, transformer_options: Optional[dict] = None) -> torch.Tensor:
    """SDPA takes the bool matrix as it is."""
    return allowed


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype,
                  transformer_options: Optional[dict] = None) -> torch.Tensor:
    """0 where attending is allowed, −max(dtype) elsewhere (what kernels without bool masks take)."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, -torch.finfo(dtype).max)


def attention_ops(operations) -> tuple[Callable, Callable]:
    """(attention, attention_mask) of an operations namespace, SDPA defaults where it has none."""
    attention = getattr(operations, "attention", None) or sdpa_attention
    mask = getattr(operations, "attention_mask", None) or bool_mask
    return attention, mask
