"""The one-node sampler's model calls through ComfyUI's model call (as ``SamplerCustomAdvanced`` does).

:class:`HostModelCall` is a ``sampling.sample`` model callable (token layout, model time ``t``)
that goes through ``BaseModel.apply_model`` — so ``APPLY_MODEL`` / ``DIFFUSION_MODEL`` wrappers
(``TorchCompileModel``), ``model_function_wrapper`` (``set_model_unet_function_wrapper``), object
patches (the patched ``diffusion_model``), ``transformer_options`` (attention overrides, patches)
all apply.  The conversion to ComfyUI's latent layout and back is a permutation and the model
receives the exact float32 time (``ideogram4_time``): the numbers are those of a direct call.
"""

from __future__ import annotations

import contextlib

import comfy.patcher_extension as pe
import torch

from ...model.vae import latents as lat
from ...sampling import sigma_from_time


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

    def transformer_options(self, sigma: torch.Tensor) -> dict:
        """The patcher's transformer_options plus its wrappers and callbacks (as ComfyUI's sampler adds them)."""
        if self._options is None:
            opts = pe.copy_nested_dicts(self.patcher.model_options.get("transformer_options", {}))
            pe.merge_nested_dicts(opts.setdefault("wrappers", {}), self.patcher.wrappers, copy_dict1=False)
            pe.merge_nested_dicts(opts.setdefault("callbacks", {}), self.patcher.callbacks, copy_dict1=False)
            opts["cond_or_uncond"] = [self.cond_or_uncond]
            if self.sample_sigmas is not None:
                opts["sample_sigmas"] = self.sample_sigmas
            self._options = opts
        return {**self._options, "sigmas": sigma}

    def __call__(self, z: torch.Tensor, t: torch.Tensor, text_features=None, *, grid_hw, text_lengths=None):
        gh, gw = grid_hw
        x = lat.tokens_to_comfy(z, gh, gw)
        sigma = sigma_from_time(t)
        c = {"transformer_options": self.transformer_options(sigma), "ideogram4_time": t, "ideogram4_velocity": True}
        if text_features is not None:
            c["c_crossattn"] = text_features
            if text_lengths is not None:
                c["text_lengths"] = text_lengths
        wrapper = self.patcher.model_options.get("model_function_wrapper")
        if wrapper is not None:
            v = wrapper(self.model.apply_model, {"input": x, "timestep": sigma, "c": c,
                                                 "cond_or_uncond": [self.cond_or_uncond]})
        else:
            v = self.model.apply_model(x, sigma, **c)
        return lat.comfy_to_tokens(v)
