"""Layer factories for every model (the DiT, the text encoder) (the ``operations`` contract shared with ComfyUI's ``comfy.ops``).

``model/`` never imports ComfyUI.  Every layer of the DiT is built through an ``operations``
namespace with ``Linear``, ``RMSNorm``, ``LayerNorm``, ``Embedding`` (the ``comfy.ops``
signatures: ``dtype=`` / ``device=`` keywords) plus ``QuantizedLinear`` for packed weights.
``TorchOps`` is the plain-torch default; the node layer passes a ComfyUI-backed namespace so
ModelPatcher can cast, offload and partially load every layer.  A namespace may also supply the
attention kernel (``attention`` / ``attention_mask``, see ``model.dit.attention``); ``TorchOps``
leaves them out, so the DiT uses SDPA.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .packed_linear import QuantizedLinear

_FUSED_RMS_NORM = getattr(torch.ops.aten, "_fused_rms_norm", None)


def rms_norm(x: torch.Tensor, normalized_shape, weight, eps) -> torch.Tensor:
    """``F.rms_norm`` as one aten op where torch has ``_fused_rms_norm`` (the same numbers, one dispatch
    instead of eight on CPU: ``tests/test_speed_paths.py`` checks the equality)."""
    if _FUSED_RMS_NORM is not None and weight is not None and eps is not None and not torch.is_grad_enabled():
        return _FUSED_RMS_NORM(x, list(normalized_shape), weight, eps)[0]
    return F.rms_norm(x, normalized_shape, weight, eps)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (the reference's primitive) through :func:`rms_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.normalized_shape, self.weight, self.eps)


class TorchOps:
    Linear = nn.Linear
    RMSNorm = RMSNorm
    LayerNorm = nn.LayerNorm
    Embedding = nn.Embedding
    QuantizedLinear = QuantizedLinear
    # The text encoder keeps transformers' own Qwen3-VL RMSNorm unless a namespace supplies a
    # ``TextRMSNorm(hidden_size, eps, device=, dtype=)`` (ComfyUI's, so the host can stream its
    # weight); such a class must compute :func:`model.text_encoder.qwen_rms_norm`.
    TextRMSNorm = None
