"""Node widget values → sampling settings (pure: no ComfyUI import).

Presets are the reference's three (``sampling.PRESETS``); ``custom`` uses steps / mu / std and a
guidance that is a constant with an optional polish tail (the presets' pattern: the last
``polish_steps`` steps at ``polish_guidance``) or an explicit per-step list in sampling order
(first step first, e.g. ``"7, 7, 7, 3"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...sampling import PRESETS, SamplerSettings, custom_settings, require_single_branch
from ...sampling.presets import MAX_STEPS, parse_guidance_list

CUSTOM = "custom"
# Set (True) on the conditional model's BaseModel by Model Loader 'unconditional: none (from a LoRA)'; clones share it.
FROM_LORA_MARK = "ideogram4_unconditional_from_lora"
# Latent key: the batch size the pack's latents were made in, kept by core's latent nodes (they copy the dict), so an
# item picked out of it (batch_index) gets its rows of that batch's noise on every device (``sampling.draw_noise``).
BATCH_KEY = "ideogram4_batch"
FROM_LORA_FIX = ("connect Ideogram4 Unconditional From LoRA → unconditional_model (its model ← the loader's model, "
                 "lora_name = the unconditional LoRA), or set preset 'custom' with guidance 1 and polish_steps 0")
PRESET_CHOICES = (*PRESETS, CUSTOM)
DEFAULT_PRESET = "V4_DEFAULT_20"


def _steps(n: int) -> str:
    return "step" if n == 1 else f"{n} steps"


def _schedule(text: Optional[str]) -> Optional[list[float]]:
    if text is None or not text.strip():
        return None
    values = parse_guidance_list(text)
    if not values:
        raise ValueError("guidance_schedule has no numbers")
    return values


def _custom_guidance(steps: int, guidance: float, polish_steps: int, polish_guidance: float,
                     schedule: Optional[tuple[float, ...]], steps_name: str) -> tuple[float, ...]:
    """Per-step guidance (sampling order) of the ``custom`` widgets: a per-step list (one number = constant),
    else ``guidance`` with the last ``polish_steps`` steps at ``polish_guidance``."""
    if schedule is not None:
        if len(schedule) == 1:
            return (schedule[0],) * steps
        if len(schedule) != steps:
            raise ValueError(f"guidance_schedule has {len(schedule)} values but {steps_name}; give one value per "
                             "step in sampling order (first step first), or a single number")
        return tuple(schedule)
    return custom_settings(steps, 0.0, 1.0, float(guidance), polish_steps=int(polish_steps),
                           polish_guidance=float(polish_guidance)).guidance


def settings_from_inputs(preset: str, *, steps: int, mu: float, std: float, guidance: float,
                         polish_steps: int, polish_guidance: float, guidance_schedule: str = "") -> SamplerSettings:
    """The sampler node's widgets → ``SamplerSettings`` (custom fields are ignored for a preset)."""
    if preset != CUSTOM:
        if preset not in PRESETS:
            raise ValueError(f"preset {preset!r} is not one of {', '.join(PRESET_CHOICES)}")
        return PRESETS[preset]
    if not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps = {steps!r} is outside the allowed range 1–{MAX_STEPS}")
    values = _schedule(guidance_schedule)
    guidance_per_step = _custom_guidance(steps, guidance, polish_steps, polish_guidance,
                                         tuple(values) if values else None, f"steps = {steps}")
    return custom_settings(steps, float(mu), float(std), guidance_per_step)


@dataclass(frozen=True)
class GuidanceSpec:
    """Guidance of the GUIDER node; the step count comes from the SIGMAS at sampling time."""

    preset: str
    guidance: float = 7.0
    polish_steps: int = 0
    polish_guidance: float = 3.0
    schedule: Optional[tuple[float, ...]] = None

    @classmethod
    def from_inputs(cls, preset: str, guidance: float, polish_steps: int, polish_guidance: float,
                    guidance_schedule: str = "") -> "GuidanceSpec":
        if preset not in PRESET_CHOICES:
            raise ValueError(f"preset {preset!r} is not one of {', '.join(PRESET_CHOICES)}")
        values = _schedule(guidance_schedule) if preset == CUSTOM else None
        return cls(preset=preset, guidance=float(guidance), polish_steps=int(polish_steps),
                   polish_guidance=float(polish_guidance), schedule=tuple(values) if values else None)

    def values(self, steps: int) -> tuple[float, ...]:
        """Guidance per step in sampling order for a schedule of ``steps`` steps."""
        if self.preset != CUSTOM:
            p = PRESETS[self.preset]
            if p.steps != steps:
                raise ValueError(f"the guider uses preset {self.preset} ({p.steps} steps) but the SIGMAS have "
                                 f"{steps} steps; use the same preset in Ideogram4 Sigmas, or preset 'custom'")
            return p.guidance
        return _custom_guidance(steps, self.guidance, self.polish_steps, self.polish_guidance, self.schedule,
                                f"the SIGMAS have {steps} steps")

    def describe(self) -> str:
        if self.preset != CUSTOM:
            return f"preset {self.preset}"
        if self.schedule is not None:
            return "custom per-step guidance " + ", ".join(f"{g:g}" for g in self.schedule)
        return (f"custom guidance {self.guidance:g}"
                + (f", last {_steps(self.polish_steps)} at {self.polish_guidance:g}" if self.polish_steps else ""))


# Widgets a preset replaces (the node's "custom only" fields), per node kind; the JS greys out the same names.
SCHEDULE_WIDGETS = ("steps", "mu", "std")
GUIDANCE_WIDGETS = ("guidance", "polish_steps", "polish_guidance", "guidance_schedule")


def unused_widgets_note(preset: str, names: tuple[str, ...], guidance_schedule: str = "") -> Optional[str]:
    """The report line naming the widgets that did not apply: the custom-only ones under a preset; under ``custom``,
    guidance / polish_steps / polish_guidance when a ``guidance_schedule`` gives every step's guidance."""
    if preset == CUSTOM:
        if "guidance_schedule" in names and str(guidance_schedule).strip():
            return "guidance_schedule gives every step's guidance: guidance, polish_steps, polish_guidance not used"
        return None
    return f"preset {preset} ran: {', '.join(names)} not used (custom only)"


def describe_settings(s: SamplerSettings) -> str:
    runs: list[str] = []
    prev, count = None, 0
    for g in s.guidance + (None,):
        if g == prev:
            count += 1
            continue
        if prev is not None:
            runs.append(f"{count}×{prev:g}")
        prev, count = g, 1
    return f"{s.name}: {s.steps} steps, mu {s.mu:g}, std {s.std:g}, guidance {' then '.join(runs)}"


def require_guidance_without_unconditional(model, guidance) -> None:
    """Guidance 1 at every step for a run without an unconditional model; the fix named for how ``model`` (the
    conditional MODEL) was loaded: 'none (from a LoRA)' needs Ideogram4 Unconditional From LoRA."""
    if getattr(getattr(model, "model", None), FROM_LORA_MARK, False):
        require_single_branch(guidance, unconditional="none (from a LoRA)", fix=FROM_LORA_FIX)
    else:
        require_single_branch(guidance)
