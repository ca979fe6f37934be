"""Interleaved 3-axis MRoPE of Ideogram 4 (spec §2.6), computed in float32.

Positions reach 65536 + grid size, which bf16/fp16/TF32 cannot resolve, so angles are an
element-wise fp32 outer product (no matmul, so a global TF32 switch cannot touch it) with
autocast disabled.
"""

from __future__ import annotations

import torch


def mrope_axis_of_slot(half_dim: int, mrope_section: tuple[int, int, int]) -> torch.Tensor:
    """For each of the ``half_dim`` frequency slots, which position axis (0=T, 1=H, 2=W) drives it."""
    axis = torch.zeros(half_dim, dtype=torch.long)
    for a in (1, 2):
        idx = torch.arange(a, 3 * mrope_section[a], 3)
        axis[idx] = a
    return axis


def inverse_frequencies(head_dim: int, theta: float, weight_dtype: torch.dtype, device=None) -> torch.Tensor:
    """``theta^(-2j/head_dim)`` in float32, rounded through the model's weight dtype.

    The reference keeps ``inv_freq`` as a floating buffer, so ``model.to(bfloat16)`` (done by every
    official loading path: bf16, fp8 and nf4) rounds it to bf16 before it is widened back to fp32
    for the angles.  At image positions ≥ 65536 that rounding moves angles by whole radians, so
    it is part of the reference numerics and reproduced here.
    """
    # Built on the CPU like the reference's buffer (then moved), so the device's pow cannot differ by an ulp.
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    return inv.to(weight_dtype).to(device=device, dtype=torch.float32)


def mrope_cos_sin(position_ids: torch.Tensor, head_dim: int, theta: float,
                  mrope_section: tuple[int, int, int],
                  weight_dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """position_ids (B, L, 3) integer (t, h, w) → cos, sin (B, L, head_dim) float32."""
    device = position_ids.device
    with torch.autocast(device_type=device.type, enabled=False):
        half = head_dim // 2
        inv_freq = inverse_frequencies(head_dim, theta, weight_dtype, device)
        axis = mrope_axis_of_slot(half, mrope_section).to(device)
        pos = position_ids.to(torch.float32)  # (B, L, 3)
        pos_per_slot = pos[..., axis]  # (B, L, half): the axis each slot listens to
        freqs = pos_per_slot * inv_freq  # element-wise fp32 product
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos(), emb.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, L, D); cos/sin (B, L, D) already in x's dtype (the reference rotates in bf16)."""
    cos = cos.unsqueeze(1)
    sin = sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def rope_tables(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, L, D) cos/sin → (B, 1, L, D) cos and a sign-folded sin for :func:`apply_rope_tables` (once per run)."""
    half = sin.shape[-1] // 2
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos.unsqueeze(1), signed.unsqueeze(1)


def apply_rope_tables(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """:func:`apply_rope` in four ops: ``rotate_half(x)·sin = roll(x, D/2)·sin_signed`` exactly
    (the sign moves from one factor to the other; IEEE products are sign-symmetric)."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed
