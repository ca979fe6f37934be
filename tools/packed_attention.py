"""The text encoder's attention call in the reference's packed run, alone: what decides whether the text rows of
one sequence length equal another's (``benchmarks/bench_te_packed.py --kernel-sweep``, the packed-length test)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def text_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """SDPA as Qwen3-VL calls it over the first ``length`` positions of (B, heads, L, head_dim) ``q, k, v`` — an
    explicit bool mask, causal with the keys from ``n`` on masked (transformers' ``create_causal_mask`` with key
    padding) — and its first ``n`` (text) rows."""
    keep = torch.ones(length, length, dtype=torch.bool, device=q.device).tril_()
    keep[:, n:] = False
    with torch.inference_mode():
        return F.scaled_dot_product_attention(q[:, :, :length], k[:, :, :length], v[:, :, :length],
                                              attn_mask=keep[None, None])[:, :, :n]
