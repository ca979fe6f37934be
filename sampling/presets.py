"""The three official presets and custom settings.

The reference stores ``guidance_schedule`` in LOOP-INDEX order (index 0 = the LAST step).
``SamplerSettings.guidance`` here is in SAMPLING order (index 0 = the first step), which is what
users read and type; ``loop_order_guidance`` converts for the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence


MAX_STEPS = 1000


@dataclass(frozen=True)
class SamplerSettings:
    steps: int
    mu: float
    std: float
    guidance: tuple[float, ...]  # sampling order, one per step
    name: str = "custom"

    def __post_init__(self) -> None:
        if not isinstance(self.steps, int) or self.steps < 1 or self.steps > MAX_STEPS:
            raise ValueError(f"steps = {self.steps!r} is outside the allowed range 1–{MAX_STEPS}")
        if len(self.guidance) != self.steps:
            raise ValueError(f"guidance schedule has {len(self.guidance)} values but steps = {self.steps}; "
                             "give one value per step (or a single constant)")
        if not self.std > 0:
            raise ValueError(f"std = {self.std} must be > 0")

    @property
    def loop_order_guidance(self) -> tuple[float, ...]:
        """The reference's storage order: index i is used at loop index i (i = N−1 is the first step)."""
        return tuple(reversed(self.guidance))


def _preset(name: str, steps: int, mu: float, std: float, polish: int) -> SamplerSettings:
    return SamplerSettings(steps=steps, mu=mu, std=std, guidance=(7.0,) * (steps - polish) + (3.0,) * polish, name=name)


PRESETS: dict[str, SamplerSettings] = {
    "V4_QUALITY_48": _preset("V4_QUALITY_48", 48, 0.0, 1.5, 3),
    "V4_DEFAULT_20": _preset("V4_DEFAULT_20", 20, 0.0, 1.75, 2),
    "V4_TURBO_12": _preset("V4_TURBO_12", 12, 0.5, 1.75, 1),
}


def custom_settings(steps: int, mu: float, std: float, guidance: float | Sequence[float] = 7.0,
                    polish_steps: int = 0, polish_guidance: float = 3.0) -> SamplerSettings:
    """Custom schedule. ``guidance``: a constant or one value per step in sampling order; with a
    constant, the last ``polish_steps`` steps use ``polish_guidance`` (the presets' pattern)."""
    if isinstance(guidance, (int, float)):
        if not 0 <= polish_steps <= steps:
            raise ValueError(f"polish_steps = {polish_steps} is outside 0–{steps} (steps)")
        values = (float(guidance),) * (steps - polish_steps) + (float(polish_guidance),) * polish_steps
    else:
        values = tuple(float(g) for g in guidance)
        if polish_steps:
            raise ValueError("polish_steps applies to a constant guidance; a per-step list already sets every step")
    return SamplerSettings(steps=steps, mu=float(mu), std=float(std), guidance=values)


def parse_guidance_list(text: str) -> list[float]:
    """'7, 7, 7, 3' → [7.0, 7.0, 7.0, 3.0] (commas or whitespace)."""
    parts = [p for p in text.replace(",", " ").split() if p]
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"guidance schedule {text!r} must be numbers separated by commas") from None


def resolve_settings(preset: Optional[str] = None, *, steps: Optional[int] = None, mu: Optional[float] = None,
                     std: Optional[float] = None, guidance: float | Sequence[float] | None = None) -> SamplerSettings:
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)} or pass steps/mu/std/guidance")
        if any(v is not None for v in (steps, mu, std, guidance)):
            raise ValueError("pass either a preset or steps/mu/std/guidance, not both")
        return PRESETS[preset]
    if steps is None or mu is None or std is None:
        raise ValueError("custom sampling needs steps, mu and std (or a preset)")
    return custom_settings(steps, mu, std, 7.0 if guidance is None else guidance)
