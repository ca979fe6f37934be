"""fp8 codec: float8_e4m3fn weights with float32 scales (pure torch).

* ``fp8_rowwise`` — official Ideogram fp8: ``weight`` float8_e4m3fn [out, in] and a float32
  ``weight_scale`` [out]; ``W = bf16(W8) * bf16(scale)[:, None]`` (both cast first, as the reference).
* ``fp8_tensorwise`` — ComfyUI ``fp8_scaled`` (``comfy_quant``): one float32 scale for the tensor.
"""

from __future__ import annotations

import torch

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0


def quantize_fp8_rowwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Official per-row e4m3 quantisation: scale = max|row| / 448 (clamped >= 1e-12)."""
    w = weight.detach().to(torch.float32)
    scale = w.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale.squeeze(1)


def quantize_fp8_tensorwise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ComfyUI ``fp8_scaled`` style: one float32 scale per tensor."""
    w = weight.detach().to(torch.float32)
    scale = w.abs().amax().clamp(min=1e-12) / FP8_MAX
    q = (w / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)
    return q, scale.reshape(())


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``weight.to(dtype) * scale.to(dtype)`` broadcast per row (1-D scale) or per tensor (scalar)."""
    s = scale.to(device=weight.device, dtype=dtype)
    if s.ndim == 1 and s.numel() == weight.shape[0] and weight.shape[0] != 1:
        s = s.unsqueeze(1)
    elif s.numel() == 1:
        s = s.reshape(())
    w = weight.to(dtype)
    # One weight-sized temporary: scale the fresh copy in place (the same rounding as ``w * s``).
    return w.mul_(s) if w is not weight else w * s
