"""Reference uint8 pixels → ComfyUI IMAGE values that SaveImage writes back unchanged (pure: torch + numpy).

The reference rounds: ``round((clamp(x, −1, 1) + 1)·127.5)``.  ComfyUI's ``VAE.decode`` returns
``clamp((x + 1)/2, 0, 1)`` and ``SaveImage`` / ``PreviewImage`` truncate ``uint8(clip(255·v))``, so a
float IMAGE straight from a decoder comes out up to 1 LSB darker than the reference (about half of
all values).  The decode node therefore rounds exactly like the reference first and stores each
level ``u`` as a float32 ``v`` whose truncated ``255·v`` is ``u`` again.  ``float32(u/255)`` has that
property for all 256 levels in float32 and float64 arithmetic (measured); the table is built by
checking it (and would step up by one ulp where it failed) rather than assuming it.  All values are
in [0, 1] (255 ↦ 1.0).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


def _truncates_to(v: np.float32, u: int) -> bool:
    arr = np.array([v], dtype=np.float32)
    f32 = np.clip(255. * arr, 0, 255).astype(np.uint8)[0]  # SaveImage's expression on a float32 array
    f64 = np.clip(255. * arr.astype(np.float64), 0, 255).astype(np.uint8)[0]
    return int(f32) == u and int(f64) == u


@lru_cache(maxsize=1)
def save_exact_lut() -> torch.Tensor:
    """(256,) float32: value to store for each reference uint8 level."""
    values = np.empty(256, dtype=np.float32)
    for u in range(256):
        v = np.float32(u / 255.0)
        while not _truncates_to(v, u):
            v = np.nextafter(v, np.float32(2.0))
        values[u] = v
    return torch.from_numpy(values)


def uint8_to_image(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 → IMAGE float32 in [0, 1] that SaveImage writes back as exactly these bytes."""
    if images.dtype != torch.uint8:
        raise ValueError(f"expected uint8 images, got {images.dtype}")
    return save_exact_lut()[images.long()]
