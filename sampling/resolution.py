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


FIT_MODES = ("error", "crop", "resize")


def fit_size(width: int, height: int, mode: str = "error", what: str = "image") -> tuple[int, int]:
    """A supported (width, height) for an input image of ``width``×``height`` px.

    ``error``: the size itself, or a ``ValueError`` naming the problem and the options; ``crop``: the
    largest multiple of 16 ≤ each side, at most 2048 (centre crop); ``resize``: scale (keeping the aspect
    ratio) into 256–2048 and round each side to the nearest multiple of 16.
    """
    if mode not in FIT_MODES:
        raise ValueError(f"size mode {mode!r} is not one of {', '.join(FIT_MODES)}")
    if mode == "error":
        try:
            check_resolution(int(width), int(height))
        except ValueError as exc:
            raise ValueError(f"{what} is {width}×{height} px: {exc}. Supported: multiples of 16 from {MIN_SIDE} to "
                             f"{MAX_SIDE} px, aspect ratio up to 6:1 — or set the size option to crop or resize")\
                from None
        return int(width), int(height)
    if mode == "crop":
        w, h = min(MAX_SIDE, width // 16 * 16), min(MAX_SIDE, height // 16 * 16)
    else:
        s = min(1.0, MAX_SIDE / max(width, height))
        s = max(s, MIN_SIDE / min(width, height))
        w = min(MAX_SIDE, max(MIN_SIDE, int(round(width * s / 16)) * 16))
        h = min(MAX_SIDE, max(MIN_SIDE, int(round(height * s / 16)) * 16))
    try:
        check_resolution(w, h)
    except ValueError as exc:
        raise ValueError(f"{what} is {width}×{height} px; after {mode} it would be {w}×{h}: {exc}") from None
    return w, h
