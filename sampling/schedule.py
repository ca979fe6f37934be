"""Logit-normal time schedule with resolution shift and logSNR clamp (spec §5.2).

Model time t: 0 = noise, 1 = clean; ComfyUI's σ = 1 − t.  Recipe (as the reference): u grid
``linspace(0, 1, N+1)`` in float32, widened to float64; ``t = clamp(1 − sigmoid(mean + std·Φ⁻¹(u)),
t_min, t_max)`` in float64, then cast to float32.  Always computed on the CPU (MPS lacks float64).
"""

from __future__ import annotations

import math

import torch

LOGSNR_MIN, LOGSNR_MAX = -15.0, 18.0
T_MIN = 1.0 / (1.0 + math.exp(0.5 * LOGSNR_MAX))
T_MAX = 1.0 / (1.0 + math.exp(0.5 * LOGSNR_MIN))
KNOWN_PIXELS = 512 * 512


def resolution_mean(mu: float, width: int, height: int) -> float:
    """Shift the schedule's mean by half the log of the pixel-count ratio to 512²."""
    return mu + 0.5 * math.log((width * height) / KNOWN_PIXELS)


def time_grid(steps: int, mu: float, std: float, width: int, height: int) -> torch.Tensor:
    """t(u_i) for i = 0..steps, float32, ascending in i (t(u_0) = t_max ... t(u_N) = t_min)."""
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    mean = resolution_mean(mu, width, height)
    u = torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float32).to(torch.float64)
    y = mean + std * torch.special.ndtri(u)
    t = (1 - torch.special.expit(y)).clamp(T_MIN, T_MAX)
    return t.to(torch.float32)


def sigma_from_time(x: torch.Tensor) -> torch.Tensor:
    """σ = 1 − t formed in float64 and rounded to float32 (the same map gives t back from σ)."""
    return (1.0 - x.to(torch.float64)).to(torch.float32)


def sigmas(steps: int, mu: float, std: float, width: int, height: int) -> torch.Tensor:
    """ComfyUI SIGMAS in sampling order: σ_k = 1 − t_k, k = 0..N (descending, ends at 1 − t_max)."""
    return sigma_from_time(time_grid(steps, mu, std, width, height).flip(0))
