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

import torch.nn as nn

from .packed_linear import QuantizedLinear


class TorchOps:
    Linear = nn.Linear
    RMSNorm = nn.RMSNorm  # forward is F.rms_norm, the reference's primitive
    LayerNorm = nn.LayerNorm
    Embedding = nn.Embedding
    QuantizedLinear = QuantizedLinear
    # The text encoder keeps transformers' own Qwen3-VL RMSNorm unless a namespace supplies a
    # ``TextRMSNorm(hidden_size, eps, device=, dtype=)`` (ComfyUI's, so the host can stream its
    # weight); such a class must compute :func:`model.text_encoder.qwen_rms_norm`.
    TextRMSNorm = None
