"""The reference's dual-model Euler loop (spec §5.3), step for step.

    z ← randn(B, N, 128) float32 from a seeded generator on the sampling device (no σ₀ scaling)
    for i = N−1 … 0:  t = T(u_{i+1}), s = T(u_i)
        v = g_i · Cond(z, t, text) + (1 − g_i) · Uncond(z, t)     (image-only unconditional pass)
        z ← z + v · (s − t)
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional, Sequence

import torch

from .presets import SamplerSettings, resolve_settings
from .resolution import token_grid
from .schedule import time_grid

LATENT_CHANNELS = 128
Callback = Callable[[int, int, torch.Tensor], None]


def draw_noise(batch: int, grid_h: int, grid_w: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(B, N, 128) float32 noise in token layout, exactly as the reference draws it."""
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    return torch.randn(batch, grid_h * grid_w, LATENT_CHANNELS, dtype=torch.float32, device=device, generator=gen)


@torch.no_grad()
def sample(cond_model, uncond_model, text_features: torch.Tensor, *, height: int, width: int,
           preset: Optional[str] = None, steps: Optional[int] = None, mu: Optional[float] = None,
           std: Optional[float] = None, guidance: float | Sequence[float] | None = None,
           settings: Optional[SamplerSettings] = None, seed: int = 0,
           text_lengths: Optional[Sequence[int]] = None, callback: Optional[Callback] = None,
           noise: Optional[torch.Tensor] = None, device: Optional[torch.device | str] = None) -> torch.Tensor:
    """Sample latents (B, N, 128) float32 in the model's normalised token space.

    ``preset`` ∈ PRESETS, or custom ``steps``/``mu``/``std``/``guidance`` (constant or one value per
    step in sampling order), or a ready ``settings``.  ``callback(step, total, z)`` runs after each
    step (progress, previews, interruption: raise from it to stop).  Models (or callables) with a
    ``sampling_run()`` context (``Ideogram4DiT``) are run inside it: step-invariant inputs are then
    computed once per run.
    """
    if settings is None:
        settings = resolve_settings(preset, steps=steps, mu=mu, std=std, guidance=guidance)
    grid_h, grid_w = token_grid(width, height)
    device = torch.device(device) if device is not None else text_features.device
    batch = text_features.shape[0]
    if noise is None:
        z = draw_noise(batch, grid_h, grid_w, seed, device)
    else:
        if tuple(noise.shape) != (batch, grid_h * grid_w, LATENT_CHANNELS):
            raise ValueError(f"noise must be {(batch, grid_h * grid_w, LATENT_CHANNELS)}, got {tuple(noise.shape)}")
        z = noise.to(device=device, dtype=torch.float32)
    ts = time_grid(settings.steps, settings.mu, settings.std, width, height).tolist()
    gw = torch.tensor(settings.loop_order_guidance, dtype=torch.float32, device=device)
    text_features = text_features.to(device)
    n = settings.steps
    with contextlib.ExitStack() as stack:
        for m in {id(cond_model): cond_model, id(uncond_model): uncond_model}.values():
            run = getattr(m, "sampling_run", None)
            if run is not None:
                stack.enter_context(run())
        for k, i in enumerate(range(n - 1, -1, -1)):
            t_val, s_val = ts[i + 1], ts[i]
            t = torch.full((batch,), t_val, dtype=torch.float32, device=device)
            v_pos = cond_model(z, t, text_features, grid_hw=(grid_h, grid_w), text_lengths=text_lengths)
            v_neg = uncond_model(z, t, None, grid_hw=(grid_h, grid_w))
            g = gw[i]
            v = g * v_pos + (1.0 - g) * v_neg
            z = z + v * (s_val - t_val)
            if callback is not None:
                callback(k, n, z)
    return z
