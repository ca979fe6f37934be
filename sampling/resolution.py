"""Supported output sizes: multiples of 16 px, 256–2048 per side, aspect ratio at most 6:1."""

from __future__ import annotations

import math

PIXELS_PER_TOKEN = 16
MIN_SIDE, MAX_SIDE = 256, 2048
MAX_ASPECT = 6.0


def nearest_side(value: float) -> int:
    """The supported side length (multiple of 16 inside 256–2048) closest to ``value``."""
    snapped = int(round(value / PIXELS_PER_TOKEN)) * PIXELS_PER_TOKEN
    return min(MAX_SIDE, max(MIN_SIDE, snapped))


def check_resolution(width: int, height: int) -> None:
    """ValueError naming the first offending value and a supported one to use instead."""
    for name, v in (("width", width), ("height", height)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise ValueError(f"{name} must be an integer number of pixels, got {v!r}")
        if not MIN_SIDE <= v <= MAX_SIDE:
            raise ValueError(f"{name} = {v} is outside the supported range {MIN_SIDE}–{MAX_SIDE} px "
                             f"(try {name} = {nearest_side(v)})")
        if v % PIXELS_PER_TOKEN:
            raise ValueError(f"{name} = {v} is not a multiple of {PIXELS_PER_TOKEN} (try {name} = {nearest_side(v)})")
    long_side, short_side = max(width, height), min(width, height)
    if long_side / short_side > MAX_ASPECT:
        name = "height" if height < width else "width"
        fixed = math.ceil(long_side / MAX_ASPECT / PIXELS_PER_TOKEN) * PIXELS_PER_TOKEN
        raise ValueError(f"{name} = {short_side} makes the aspect ratio {width}×{height} "
                         f"({long_side / short_side:.2f}:1), which exceeds the supported 6:1 (try {name} = {fixed})")


def token_grid(width: int, height: int) -> tuple[int, int]:
    """(grid_h, grid_w) image tokens for a checked size (16 px per token)."""
    check_resolution(width, height)
    return height // PIXELS_PER_TOKEN, width // PIXELS_PER_TOKEN
