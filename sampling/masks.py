"""Inpainting masks (pure torch): image-size mask → latent-grid mask, grow and feather.

Convention (ComfyUI's ``noise_mask``): 1 = regenerate, 0 = keep the input image.  A mask of any
image size is resized to the (gh, gw) token grid with bilinear interpolation, exactly as
``comfy.utils.reshape_mask`` does for a 2-D latent, so our sampler and core's samplers see the same
per-token weights.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: how far a mask's aspect ratio may differ from the latent's (relative) before it is called a mismatch
ASPECT_TOLERANCE = 0.02


def as_mask_batch(mask: torch.Tensor, what: str = "mask") -> torch.Tensor:
    """(H, W), (B, H, W) or (B, 1, H, W) → (B, 1, H, W) float32."""
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    elif mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"{what} must be (H, W), (B, H, W) or (B, 1, H, W), got {tuple(mask.shape)}")
    return mask.to(torch.float32)


def grow_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Dilate a (B, 1, H, W) mask by ``pixels`` (square max filter); 0 leaves it unchanged."""
    if pixels < 0:
        raise ValueError(f"mask grow = {pixels} must be ≥ 0")
    if pixels == 0:
        return mask
    return F.max_pool2d(mask, kernel_size=2 * pixels + 1, stride=1, padding=pixels)


def feather_mask(mask: torch.Tensor, pixels: int) -> torch.Tensor:
    """Soften a (B, 1, H, W) mask's edge over about ``pixels`` (box blur, edges not darkened); 0: unchanged."""
    if pixels < 0:
        raise ValueError(f"mask feather = {pixels} must be ≥ 0")
    if pixels == 0:
        return mask
    return F.avg_pool2d(mask, kernel_size=2 * pixels + 1, stride=1, padding=pixels, count_include_pad=False)


def check_mask_matches(mask: torch.Tensor, batch: int, gh: int, gw: int, what: str = "mask") -> None:
    """A ``ValueError`` naming ``what`` when the mask's batch or aspect ratio does not fit the latent."""
    mb, _, mh, mw = mask.shape
    if mb not in (1, batch):
        raise ValueError(f"{what} has batch {mb}; the latent has batch {batch} (allowed: 1 or {batch})")
    if abs(mh * gw - mw * gh) > ASPECT_TOLERANCE * mw * gh:
        raise ValueError(f"{what} is {mw}×{mh} px but the image is {gw * 16}×{gh * 16} px: the aspect ratios differ "
                         f"(allowed: the image's size or any size with the same aspect ratio)")


def latent_mask(mask: torch.Tensor, batch: int, gh: int, gw: int, *, what: str = "mask") -> torch.Tensor:
    """Any-size mask → (B, gh·gw, 1) float32 token-layout weights in [0, 1] (``comfy.utils.reshape_mask``'s
    bilinear resize, then clamped)."""
    m = as_mask_batch(mask, what)
    check_mask_matches(m, batch, gh, gw, what)
    m = F.interpolate(m, size=(gh, gw), mode="bilinear").clamp(0.0, 1.0)
    if m.shape[0] != batch:
        m = m.expand(batch, -1, -1, -1)
    return m.reshape(batch, gh * gw, 1).contiguous()
