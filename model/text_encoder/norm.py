"""Qwen3-VL RMSNorm arithmetic, shared by transformers' layer and the host's castable one."""

from __future__ import annotations

import torch


def qwen_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3-VL's RMSNorm, operation for operation: normalise in float32, round, then scale."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(input_dtype)
