"""The pack's model calls through ComfyUI's model call, each model with its own options.

:func:`pass_options` — a patcher's ``transformer_options`` with its wrappers and callbacks (what ComfyUI's
sampler adds for the model it samples).  :func:`call_model` — one pass through ``BaseModel.apply_model``
(``APPLY_MODEL`` / ``DIFFUSION_MODEL`` wrappers such as ``TorchCompileModel``'s, object patches such as the
patched ``diffusion_model``, attention overrides and ``("single_block", i)`` replacements apply) or through the
model's ``model_function_wrapper`` (``set_model_unet_function_wrapper``), with ComfyUI's per-call keys
(``sigmas``, ``cond_or_uncond``).  Used by the Ideogram4 Guider for both passes, and by :class:`HostModelCall`,
a ``sampling.sample`` model callable (token layout, model time ``t``) for the one-node sampler.  The
conversion to ComfyUI's latent layout and back is a permutation and the model receives the exact float32
time (``ideogram4_time``): the numbers are those of a direct call.  Patches the DiT cannot apply are refused
in the model call (``model_patches``).
"""

from __future__ import annotations

import contextlib

import comfy.patcher_extension as pe
import torch

from ...model.vae import latents as lat
from ...sampling import sigma_from_time


def pass_options(patcher, sample_sigmas=None) -> dict:
    """``patcher``'s transformer_options plus its wrappers and callbacks (a copy), with ``sample_sigmas``."""
    opts = pe.copy_nested_dicts(patcher.model_options.get("transformer_options", {}))
    pe.merge_nested_dicts(opts.setdefault("wrappers", {}), patcher.wrappers, copy_dict1=False)
    pe.merge_nested_dicts(opts.setdefault("callbacks", {}), patcher.callbacks, copy_dict1=False)
    if sample_sigmas is not None:
        opts["sample_sigmas"] = sample_sigmas
    return opts


def call_model(model, x: torch.Tensor, sigma: torch.Tensor, c: dict, options: dict, wrapper, cond_or_uncond: int):
    """``model.apply_model`` on the (B, 128, gh, gw) latent ``x`` (through ``wrapper``, a
    ``model_function_wrapper``, when there is one) with ``options`` as its transformer_options."""
    c = {**c, "transformer_options": {**options, "sigmas": sigma, "cond_or_uncond": [cond_or_uncond]}}
    if wrapper is not None:
        return wrapper(model.apply_model, {"input": x, "timestep": sigma, "c": c, "cond_or_uncond": [cond_or_uncond]})
    return model.apply_model(x, sigma, **c)


class HostModelCall:
    def __init__(self, patcher, cond_or_uncond: int):
        self.patcher = patcher
        self.cond_or_uncond = cond_or_uncond  # ComfyUI's label: 0 = cond, 1 = uncond
        self.sample_sigmas = None
        self._options = None

    @property
    def model(self):
        return self.patcher.model

    def sampling_run(self):
        run = getattr(self.model.diffusion_model, "sampling_run", None)  # a LoRA view of a shared base has none
        return run() if run is not None else contextlib.nullcontext()

    def options(self) -> dict:
        if self._options is None:
            self._options = pass_options(self.patcher, self.sample_sigmas)
        return self._options

    def velocity(self, x: torch.Tensor, sigma: torch.Tensor, **c) -> torch.Tensor:
        """The velocity (ComfyUI layout) of this model at ``x`` (ComfyUI layout)."""
        return call_model(self.model, x, sigma, {**c, "ideogram4_velocity": True}, self.options(),
                          self.patcher.model_options.get("model_function_wrapper"), self.cond_or_uncond)

    def __call__(self, z: torch.Tensor, t: torch.Tensor, text_features=None, *, grid_hw, text_lengths=None):
        gh, gw = grid_hw
        c = {"ideogram4_time": t}
        if text_features is not None:
            c["c_crossattn"] = text_features
            if text_lengths is not None:
                c["text_lengths"] = text_lengths
        v = self.velocity(lat.tokens_to_comfy(z, gh, gw), sigma_from_time(t), **c)
        return lat.comfy_to_tokens(v)
