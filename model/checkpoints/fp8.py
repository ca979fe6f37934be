"""fp8 codec: float8_e4m3fn weights with float32 scales (pure torch).

* ``fp8_rowwise`` — official Ideogram fp8: ``weight`` float8_e4m3fn [out, in] and a float32
  ``weight_scale`` [out]; ``W = bf16(W8) * bf16(scale)[:, None]`` (both cast first, as the reference).
* ``fp8_tensorwise`` — ComfyUI ``fp8_scaled`` (``comfy_quant``): one float32 scale for the tensor.

On devices without float8 kernels (Apple MPS) the codes travel as a uint8 view and are decoded by a
256-entry table gather, bit-identical to the native cast for all 256 codes (tests/test_codecs_comfy.py);
on CPU and CUDA the native cast runs (the table gather measured no faster on this CPU: see
benchmarks/bench_formats.py), fused with the scale into one kernel where ``fp8_fused`` compiled and probed it
(CUDA with Triton by default), else as a cast and an in-place scale; the bits are the same either way.
"""

from __future__ import annotations

import functools

import torch

from . import fp8_fused

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


NO_FP8_DEVICES = ("mps",)  # device types whose kernels cannot cast float8: decode through the table


@functools.cache
def _fp8_table_cpu(dtype: torch.dtype) -> torch.Tensor:
    return torch.arange(256, dtype=torch.uint8).view(FP8_DTYPE).to(dtype)


def fp8_table(dtype: torch.dtype, device=None) -> torch.Tensor:
    """(256,) ``dtype``: the value of every float8_e4m3fn code (index = the code's byte), built by the CPU cast."""
    return _fp8_table_cpu(dtype).to(device or "cpu")


def needs_table(weight: torch.Tensor) -> bool:
    """The codes are a uint8 view, or on a device without a float8 cast: decode them through the 256-entry table."""
    return weight.dtype == torch.uint8 or weight.device.type in NO_FP8_DEVICES


def fp8_codes_to(weight: torch.Tensor, dtype: torch.dtype, *, table: bool | None = None) -> torch.Tensor:
    """float8_e4m3fn codes (as float8, or their uint8 view) → ``dtype``; ``table=None`` uses the 256-entry
    gather where the device has no float8 cast (or the codes are a uint8 view), else the native cast."""
    if table is None:
        table = needs_table(weight)
    if not table:
        return weight.to(dtype)
    codes = weight if weight.dtype == torch.uint8 else weight.view(torch.uint8)
    flat = codes.reshape(-1).to(torch.int32)
    return torch.index_select(fp8_table(dtype, weight.device), 0, flat).view(weight.shape)


def fp8_storage_to(weight: torch.Tensor, device) -> torch.Tensor:
    """Move float8 storage; to a device without float8 support it travels as its uint8 view."""
    device = torch.device(device)
    if weight.dtype == FP8_DTYPE and device.type in NO_FP8_DEVICES:
        return weight.view(torch.uint8).to(device)
    return weight.to(device)


def dequantize_fp8(weight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype, *,
                   table: bool | None = None) -> torch.Tensor:
    """``weight.to(dtype) * scale.to(dtype)`` broadcast per row (1-D scale) or per tensor (scalar).

    ``weight`` may be the uint8 view of the codes (decoded by the table, see :func:`fp8_codes_to`)."""
    s = scale.to(device=weight.device, dtype=dtype)
    if s.ndim == 1 and s.numel() == weight.shape[0] and weight.shape[0] != 1:
        s = s.unsqueeze(1)
    elif s.numel() == 1:
        s = s.reshape(())
    if table is None:
        table = needs_table(weight)
    if not table:  # one fused kernel where it is compiled and probed, else cast + scale in place (same bits)
        return fp8_fused.decode(weight, s)
    # One weight-sized temporary: scale the fresh copy in place (the same rounding as ``w * s``).
    return fp8_codes_to(weight, dtype, table=True).mul_(s)
