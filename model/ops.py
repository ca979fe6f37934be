"""Layer factories for the DiT (the ``operations`` contract shared with ComfyUI's ``comfy.ops``).

``model/`` never imports ComfyUI.  Every layer of the DiT is built through an ``operations``
namespace with ``Linear``, ``RMSNorm``, ``LayerNorm``, ``Embedding`` (the ``comfy.ops``
signatures: ``dtype=`` / ``device=`` keywords) plus ``QuantizedLinear`` for packed weights.
``TorchOps`` is the plain-torch default; the node layer passes a ComfyUI-backed namespace so
ModelPatcher can cast, offload and partially load every layer.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .quant import QuantizedLinear


class TorchOps:
    Linear = nn.Linear
    RMSNorm = nn.RMSNorm  # forward is F.rms_norm, the reference's primitive
    LayerNorm = nn.LayerNorm
    Embedding = nn.Embedding
    QuantizedLinear = QuantizedLinear
    # The text encoder keeps transformers' own Qwen3-VL RMSNorm unless a namespace supplies a
    # ``TextRMSNorm(hidden_size, eps, device=, dtype=)`` (ComfyUI's, so the host can stream its
    # weight); such a class must compute :func:`qwen_rms_norm`.
    TextRMSNorm = None


def qwen_rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Qwen3-VL's RMSNorm, operation for operation: normalise in float32, round, then scale."""
    input_dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(input_dtype)
