"""Pure-torch Ideogram 4 sampling: logit-normal schedule, presets, dual-model Euler loop.

Independent of ``model/`` and of ComfyUI: the loop takes any two callables with the DiT's
``forward(x, t, text_features, *, grid_hw, text_lengths)`` signature.
"""

from .presets import PRESETS, SamplerSettings, custom_settings, resolve_settings
from .resolution import FIT_MODES, check_resolution, fit_size, token_grid
from .schedule import sigma_from_time, sigmas, time_grid
from .euler import draw_noise, require_single_branch, sample, schedule_steps

__all__ = ["PRESETS", "SamplerSettings", "custom_settings", "resolve_settings", "check_resolution", "token_grid",
           "FIT_MODES", "fit_size",
           "time_grid", "sigmas", "sigma_from_time", "draw_noise", "require_single_branch", "sample", "schedule_steps"]
