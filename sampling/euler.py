"""The reference's dual-model Euler loop (spec §5.3), step for step.

    z ← randn(B, N, 128) float32 from a seeded generator on the sampling device (no σ₀ scaling)
    for i = N−1 … 0:  t = T(u_{i+1}), s = T(u_i)
        v = g_i · Cond(z, t, text) + (1 − g_i) · Uncond(z, t)     (image-only unconditional pass)
        z ← z + v · (s − t)

img2img / inpainting (``denoise`` d < 1, ``init_latent`` x₀, ``mask``), ComfyUI's KSampler convention:
the schedule is computed for M = int(N / d) steps and its last N steps are run (d = 1: M = N, the loop
above unchanged).  d < 1 starts from z = t·x₀ + (1 − t)·ε at the first time run (ε: the same seeded
draw).  With a mask m (1 = regenerate), the kept region is the exactly noised input,
z ← m·z + (1 − m)·(s·x₀ + (1 − s)·ε) after every step (and before the first), and x₀ itself after
the last one — what ComfyUI's ``KSamplerX0Inpaint`` gives for a binary mask.
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


def schedule_steps(steps: int, denoise: float) -> int:
    """M = int(steps / denoise): the length of the schedule whose last ``steps`` steps are run (ComfyUI KSampler)."""
    d = float(denoise)
    if not 0.0 < d <= 1.0:
        raise ValueError(f"denoise = {denoise!r} is outside the allowed range (0, 1] (1 = from pure noise; "
                         "0 would run no step)")
    return int(steps / d)  # ≥ steps: a correctly rounded steps / d is never below steps for d ≤ 1


def draw_noise(batch: int, grid_h: int, grid_w: int, seed: int, device: torch.device | str = "cpu",
               batch_index: Optional[Sequence[int]] = None, drawn: Optional[int] = None) -> torch.Tensor:
    """(B, N, 128) float32 noise in token layout, exactly as the reference draws it.

    ``batch_index`` (ComfyUI's latent ``batch_index``: which items of a batch these ``batch`` latents are, e.g. from
    core Latent From Batch): those rows of the reference's draw for the whole batch — ``drawn`` images (the size of
    the batch they came from, which the pack's latents carry), else ``max(batch_index) + 1`` — so item i re-sampled
    alone with the same seed gets the noise it had in its batch.  Without ``drawn`` that is exact on the CPU (its
    ``randn`` fills in order: a smaller draw is a prefix of a larger one), not on CUDA, whose kernel spreads a draw
    over a grid sized by the draw."""
    device = torch.device(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(int(seed))
    drawn, rows = noise_rows(batch, batch_index, drawn)
    z = torch.randn(drawn, grid_h * grid_w, LATENT_CHANNELS, dtype=torch.float32, device=device, generator=gen)
    return z if rows is None or rows == list(range(drawn)) else z[rows]


def noise_rows(batch: int, batch_index: Optional[Sequence[int]] = None,
               drawn: Optional[int] = None) -> tuple[int, Optional[list[int]]]:
    """(images :func:`draw_noise` draws, the rows it takes — None: all) for ``batch`` latents that are the items
    ``batch_index`` of a batch of ``drawn`` images."""
    if batch_index is None:
        return batch, None
    rows = [int(i) for i in batch_index]
    if len(rows) != batch or min(rows, default=0) < 0:
        raise ValueError(f"latent batch_index {list(batch_index)} must list one item index ≥ 0 per latent "
                         f"(the batch has {batch})")
    return max(max(rows, default=-1) + 1, int(drawn or 0)), rows


SINGLE_BRANCH_FIX = "set preset 'custom' with guidance 1 and polish_steps 0, or load an unconditional model"


def require_single_branch(guidance: Sequence[float], *, unconditional: str = "none",
                          fix: str = SINGLE_BRANCH_FIX) -> None:
    """Without an unconditional model (a CFG-distilled checkpoint) only guidance 1 is defined.

    ``unconditional``: the Model Loader choice that left it out; ``fix``: what to do instead."""
    bad = [(k + 1, g) for k, g in enumerate(guidance) if float(g) != 1.0]
    if bad:
        raise ValueError(f"no unconditional model (unconditional: {unconditional}) needs guidance 1 at every step; "
                         f"got {bad[0][1]:g} at step {bad[0][0]} of {len(guidance)} — {fix}")


@torch.no_grad()
def sample(cond_model, uncond_model, text_features: torch.Tensor, *, height: int, width: int,
           preset: Optional[str] = None, steps: Optional[int] = None, mu: Optional[float] = None,
           std: Optional[float] = None, guidance: float | Sequence[float] | None = None,
           settings: Optional[SamplerSettings] = None, seed: int = 0,
           text_lengths: Optional[Sequence[int]] = None, callback: Optional[Callback] = None,
           noise: Optional[torch.Tensor] = None, device: Optional[torch.device | str] = None,
           denoise: float = 1.0, init_latent: Optional[torch.Tensor] = None,
           mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Sample latents (B, N, 128) float32 in the model's normalised token space.

    ``preset`` ∈ PRESETS, or custom ``steps``/``mu``/``std``/``guidance`` (constant or one value per
    step in sampling order), or a ready ``settings``.  ``callback(step, total, z)`` runs after each
    step (progress, previews, interruption: raise from it to stop).  ``uncond_model=None`` (a CFG-distilled
    single-branch checkpoint) runs the conditional pass only and requires guidance 1 at every step.
    Models (or callables) with a ``sampling_run()`` context (``Ideogram4DiT``) are run inside it:
    step-invariant inputs are then computed once per run.

    ``denoise`` < 1 needs ``init_latent`` (B, N, 128) model-space tokens; ``mask`` (B or 1, N, 1) in [0, 1]
    (1 = regenerate, see :mod:`sampling.masks`) needs it too.  See the module docstring.
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
    n = settings.steps
    ts = time_grid(schedule_steps(n, denoise), settings.mu, settings.std, width, height).tolist()
    if uncond_model is None:
        require_single_branch(settings.loop_order_guidance[::-1])
    gw = torch.tensor(settings.loop_order_guidance, dtype=torch.float32, device=device)
    text_features = text_features.to(device)
    keep = _Inpaint.make(z, init_latent, mask, denoise, device)
    if keep is not None:
        z = keep.start(z, ts[n])
    with contextlib.ExitStack() as stack:
        for m in {id(cond_model): cond_model, id(uncond_model): uncond_model}.values():
            run = getattr(m, "sampling_run", None)
            if run is not None:
                stack.enter_context(run())
        for k, i in enumerate(range(n - 1, -1, -1)):
            t_val, s_val = ts[i + 1], ts[i]
            t = torch.full((batch,), t_val, dtype=torch.float32, device=device)
            v_pos = cond_model(z, t, text_features, grid_hw=(grid_h, grid_w), text_lengths=text_lengths)
            if uncond_model is None:  # CFG-distilled single-branch model: guidance 1, the conditional pass only
                v = v_pos
            else:
                v_neg = uncond_model(z, t, None, grid_hw=(grid_h, grid_w))
                g = gw[i]
                v = g * v_pos + (1.0 - g) * v_neg
            z = z + v * (s_val - t_val)
            if keep is not None:
                z = keep.blend(z, s_val if i > 0 else None)  # no-op without a mask
            if callback is not None:
                callback(k, n, z)
    return z


class _Inpaint:
    """The img2img start and the per-step mask blend of :func:`sample` (noise ε = the loop's own draw)."""

    def __init__(self, x0: torch.Tensor, noise: torch.Tensor, mask: Optional[torch.Tensor], img2img: bool):
        self.x0, self.noise, self.mask, self.img2img = x0, noise, mask, img2img

    @classmethod
    def make(cls, noise, init_latent, mask, denoise, device) -> Optional["_Inpaint"]:
        img2img = float(denoise) < 1.0
        if not img2img and mask is None:
            return None  # text-to-image: the input latent's content is not used (reference loop unchanged)
        if init_latent is None:
            raise ValueError("denoise < 1 and masks need the input latent (init_latent) to start from")
        if tuple(init_latent.shape) != tuple(noise.shape):
            raise ValueError(f"init_latent must be {tuple(noise.shape)}, got {tuple(init_latent.shape)}")
        x0 = init_latent.to(device=device, dtype=torch.float32)
        if mask is not None:
            if mask.ndim != 3 or mask.shape[1:] != (noise.shape[1], 1) or mask.shape[0] not in (1, noise.shape[0]):
                raise ValueError(f"mask must be (B or 1, {noise.shape[1]}, 1), got {tuple(mask.shape)}")
            mask = mask.to(device=device, dtype=torch.float32)
        return cls(x0, noise, mask, img2img)

    def noised(self, t: float) -> torch.Tensor:
        """z = t·x₀ + (1 − t)·ε (model time t: 0 = noise, 1 = clean)."""
        return t * self.x0 + (1.0 - t) * self.noise

    def start(self, z: torch.Tensor, t0: float) -> torch.Tensor:
        if self.img2img:
            z = self.noised(t0)
        return z if self.mask is None else self.blend(z, t0)

    def blend(self, z: torch.Tensor, s: Optional[float]) -> torch.Tensor:
        """Put the kept region back: noised to time ``s``, or x₀ itself after the last step (``s`` None)."""
        if self.mask is None:
            return z
        known = self.x0 if s is None else self.noised(s)
        return self.mask * z + (1.0 - self.mask) * known
