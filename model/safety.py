"""Detector for Ideogram 4's grey "Image blocked by safety filter" placeholder (spec §6.6).

The model itself answers NSFW prompts (and some false positives, mostly plain-text prompts) with a
flat mid-grey image carrying a short line of text.  This module only *recognises* that output so the
node layer can warn and suggest a JSON caption; it never alters prompts, sampling or images, and
it must not be used to work around the filter.

Heuristic (no model, numpy only), on a copy downscaled to at most 256 px:

* ``grey_level`` — the median luminance (the background) is mid-grey: 1 inside [0.25, 0.80],
  falling linearly to 0 at 0.15 / 0.90;
* ``neutral`` — the image is nearly colourless: mean chroma (max−min of RGB) ≤ 0.03 → 1, ≥ 0.08 → 0,
  and its 99th percentile ≤ 0.10 → 1, ≥ 0.25 → 0;
* ``flat`` — most pixels sit on the background: fraction within ±0.05 of the median ≥ 0.85 → 1,
  ≤ 0.60 → 0;
* ``text`` — a little ink: 0.05 %–15 % of pixels darker or lighter than the background by > 0.12
  → 1; no ink at all → 0.3 (a plain grey image is reported but not flagged); > 30 % → 0.

``score`` = the minimum of the four (fuzzy AND); ``blocked`` = ``score ≥ THRESHOLD`` (0.5).  The
thresholds were set on synthetic images (``tests/test_safety.py``): a grey canvas with text is
flagged, photos, gradients, noise and white pages with text are not.  They are not tuned on real
model outputs, so the result is advisory — a warning, never a hard decision.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

THRESHOLD = 0.5
MAX_SIDE = 256


@dataclass(frozen=True)
class PlaceholderReport:
    score: float  # 0 … 1, higher = more like the placeholder
    blocked: bool  # score >= THRESHOLD
    features: dict[str, float] = field(default_factory=dict)

    @property
    def message(self) -> str:
        if not self.blocked:
            return ""
        return ("The output looks like Ideogram 4's grey 'Image blocked by safety filter' placeholder "
                f"(score {self.score:.2f}). The model produces it for prompts it refuses and sometimes for "
                "plain-text prompts; a structured JSON caption is less likely to trigger it.")


def _ramp(x: float, lo: float, hi: float) -> float:
    """0 at ``lo``, 1 at ``hi`` (either order), linear between."""
    if lo == hi:
        return float(x >= hi)
    t = (x - lo) / (hi - lo)
    return float(min(1.0, max(0.0, t)))


def _to_array(image: Any) -> np.ndarray:
    """PIL image, HWC numpy array (uint8 or float in [0, 1]) or torch tensor (H, W, C) → float32 HWC RGB."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        img = image.convert("RGB")
        if max(img.size) > MAX_SIDE:
            scale = MAX_SIDE / max(img.size)
            img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BOX)
        return np.asarray(img, dtype=np.float32) / 255.0
    if hasattr(image, "detach"):  # torch tensor: uint8 pixels, or one ComfyUI IMAGE (H, W, C) float in [0, 1]
        t = image.detach().cpu()
        image = (t if t.dtype == torch.uint8 else t.float()).numpy()
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ValueError(f"expected an H×W×C image, got shape {arr.shape}")
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    arr = arr[..., :3]
    arr = arr.astype(np.float32) / 255.0 if arr.dtype == np.uint8 else arr.astype(np.float32)
    step = int(np.ceil(max(arr.shape[:2]) / MAX_SIDE))
    if step > 1:  # cheap box downscale
        h, w = (arr.shape[0] // step) * step, (arr.shape[1] // step) * step
        arr = arr[:h, :w].reshape(h // step, step, w // step, step, 3).mean(axis=(1, 3))
    return np.clip(arr, 0.0, 1.0)


def placeholder_score(image: Any) -> PlaceholderReport:
    """Score one image (PIL, HWC array, or an (H, W, C) tensor) for the safety placeholder."""
    arr = _to_array(image)
    lum = arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    chroma = arr.max(axis=-1) - arr.min(axis=-1)
    bg = float(np.median(lum))
    dev = np.abs(lum - bg)
    bg_frac = float((dev <= 0.05).mean())
    ink_frac = float((dev > 0.12).mean())
    sat_mean = float(chroma.mean())
    sat_p99 = float(np.percentile(chroma, 99))

    grey_level = min(_ramp(bg, 0.15, 0.25), _ramp(bg, 0.90, 0.80))
    neutral = min(_ramp(sat_mean, 0.08, 0.03), _ramp(sat_p99, 0.25, 0.10))
    flat = _ramp(bg_frac, 0.60, 0.85)
    if ink_frac <= 0.0:
        text = 0.3
    elif ink_frac < 0.0005:
        text = 0.3 + 0.7 * ink_frac / 0.0005
    else:
        text = _ramp(ink_frac, 0.30, 0.15)
    score = min(grey_level, neutral, flat, text)
    features = {"background": bg, "background_fraction": bg_frac, "ink_fraction": ink_frac,
                "mean_chroma": sat_mean, "p99_chroma": sat_p99, "grey_level": grey_level,
                "neutral": neutral, "flat": flat, "text": text}
    return PlaceholderReport(score=float(score), blocked=score >= THRESHOLD, features=features)


def is_safety_placeholder(image: Any) -> bool:
    return placeholder_score(image).blocked


def check_batch(images: Any) -> list[PlaceholderReport]:
    """A ComfyUI IMAGE batch (B, H, W, C) or a list of images → one report per image."""
    if hasattr(images, "ndim") and images.ndim == 4:
        return [placeholder_score(images[i]) for i in range(images.shape[0])]
    return [placeholder_score(im) for im in images]
