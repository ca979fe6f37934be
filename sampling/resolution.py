"""Supported output sizes: multiples of 16 px, 256–2048 per side, aspect ratio at most 6:1."""

from __future__ import annotations

PIXELS_PER_TOKEN = 16
MIN_SIDE, MAX_SIDE = 256, 2048
MAX_ASPECT = 6.0


def check_resolution(width: int, height: int) -> None:
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{name} must be an integer number of pixels, got {v!r}")
        if v % PIXELS_PER_TOKEN:
            raise ValueError(f"{name} = {v} is not a multiple of {PIXELS_PER_TOKEN} (try {round(v / 16) * 16})")
        if not MIN_SIDE <= v <= MAX_SIDE:
            raise ValueError(f"{name} = {v} is outside the supported range {MIN_SIDE}–{MAX_SIDE} px")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT:
        raise ValueError(f"aspect ratio {width}×{height} ({ratio:.2f}:1) exceeds the supported 6:1")


def token_grid(width: int, height: int) -> tuple[int, int]:
    """(grid_h, grid_w) image tokens for a checked size (16 px per token)."""
    check_resolution(width, height)
    return height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN
