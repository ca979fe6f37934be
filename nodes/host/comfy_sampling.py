"""Reference sampling inside ComfyUI: the one-node sampler and the SamplerCustomAdvanced blocks.

``run_reference_sampler`` — what ``Ideogram4NativeKSampler`` runs: both DiTs loaded together
through the memory policy, then ``sampling.sample`` (the reference loop, unchanged) with a
progress/preview/interrupt callback.  A patch it does not apply (CFG hooks, sampler wrappers, a shift…)
is a ``ValueError`` naming it (``model_patches``).

Building blocks for ``SamplerCustomAdvanced`` (together they reproduce ``sampling.sample``
bit for bit — ``tests/comfyui/test_inprocess.py``):

* :class:`Ideogram4Noise` (NOISE) — (B, N, 128) float32 from a seeded ``torch.Generator`` on the
  compute device, exactly the reference's draw, reshaped to the (B, 128, gh, gw) latent layout.
* :class:`Ideogram4Guider` (GUIDER, a ``CFGGuider``) — conditional pass with text, unconditional
  image-only pass, ``v = g·v_cond + (1 − g)·v_uncond`` with ``g`` looked up by step index (the
  step is found by matching the σ passed in against the SIGMAS being sampled; no cfg = 1
  shortcut).  Returns ComfyUI's denoised estimate ``x + σ·v`` and keeps the exact velocity for
  :func:`sample_ideogram4_euler`.  Each pass runs with its own model's options (wrappers, patches); the
  conditional model's CFG hooks (``sampler_cfg_function``, pre-/post-CFG functions: RescaleCFG, APG,
  SkipLayerGuidanceDiT…) are applied as ComfyUI's ``sampling_function`` applies them, and the step is then
  the plain Euler step (not reference-exact).  Patches it does not apply are refused (``model_patches``).
* :class:`Ideogram4KSampler` (SAMPLER, a ``KSAMPLER``) — starts from the raw noise (no CONST
  ``noise_scaling`` by σ₀ for an empty latent) and skips ``inverse_noise_scaling`` (the reference
  ends at σ = 1 − t_max ≈ 5.5e-4 without rescaling).  Its Euler step uses the guider's exact
  velocity and the reference's float32 times when available, else the standard
  ``x + (x − denoised)/σ · (σ_next − σ)``.
* SIGMAS come from ``sampling.sigmas``; the exact float32 model times ride along as the tensor
  attribute ``ideogram4_time`` (float32 σ cannot give back t exactly: t is rounded to bf16 inside
  the model, so 1 ulp matters).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Optional

import torch
from tqdm.auto import trange

import comfy.model_management as mm
import comfy.samplers
import comfy.utils
import latent_preview

from ...model.vae import latents as lat
from ...sampling import draw_noise, sample, schedule_steps, sigma_from_time, time_grid, token_grid
from ...sampling.masks import latent_mask
from .comfy_attention import kernel_note
from .comfy_model import decode_note, load_pair, loaded_summary, plan_pair
from .conditioning import batch_text, text_from_conditioning
from .model_call import HostModelCall, call_model
from .model_patches import CFG_HOOKS, applied_wrappers_note, require_applied
from .sampler_settings import BATCH_KEY, GuidanceSpec, require_guidance_without_unconditional

log = logging.getLogger("ideogram4_native")

TIME_ATTR = "ideogram4_time"


# --------------------------------------------------------------------------- SIGMAS

def empty_latent(batch_size: int, channels: int, gh: int, gw: int) -> torch.Tensor:
    """Zeros in latent layout on ComfyUI's intermediate device (as core's empty-latent nodes)."""
    return torch.zeros(batch_size, channels, gh, gw, device=mm.intermediate_device())


def make_sigmas(settings, width: int, height: int, denoise: float = 1.0) -> torch.Tensor:
    """Reference σ list (descending, ends at 1 − t_max) with the exact times attached.  ``denoise`` < 1:
    the last ``steps`` + 1 values of the ``int(steps / denoise)``-step schedule (ComfyUI BasicScheduler)."""
    n = settings.steps
    t = time_grid(schedule_steps(n, denoise), settings.mu, settings.std, width, height)  # ascending in loop index
    times = t[: n + 1].flip(0).contiguous()  # sampling order: t_0 … t_N (= t_max)
    sig = sigma_from_time(times)
    setattr(sig, TIME_ATTR, times)
    return sig


# --------------------------------------------------------------------------- NOISE

class Ideogram4Noise:
    """NOISE: the reference's token-layout draw on the compute device, in ComfyUI latent layout."""

    def __init__(self, seed: int, device=None):
        self.seed = int(seed)
        self.device = device

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        b, gh, gw = lat.comfy_grid(input_latent["samples"], "Ideogram4 Noise's latent")
        device = self.device if self.device is not None else mm.get_torch_device()
        z = draw_noise(b, gh, gw, self.seed, device, batch_index=input_latent.get("batch_index"),
                       drawn=input_latent.get(BATCH_KEY))
        return lat.tokens_to_comfy(z, gh, gw)


# --------------------------------------------------------------------------- GUIDER

class Ideogram4Guider(comfy.samplers.CFGGuider):
    """Dual-model guider with the reference's step-indexed guidance and image-only unconditional pass."""

    def __init__(self, cond_patcher, uncond_patcher, guidance: GuidanceSpec):
        patcher = cond_patcher.clone()
        # Both models are then loaded by one load_models_gpu call (ComfyUI's prepare_sampling),
        # the unconditional one first — the same placement as nodes.host.memory_policy plans.
        # uncond_patcher None: a CFG-distilled single-branch model (guidance 1, conditional pass only).
        if uncond_patcher is not None:
            patcher.set_additional_models("ideogram4_unconditional", [uncond_patcher])
        super().__init__(patcher)
        self.uncond_patcher = uncond_patcher
        self.guidance = guidance
        self.features: Optional[torch.Tensor] = None
        self.lengths: Optional[list[int]] = None
        self.positive = None  # the CONDITIONING as given (its properties are checked before sampling)
        self._reset_run()

    def _reset_run(self):
        self._sigma_index: dict[float, int] = {}
        self._sigmas: list[float] = []
        self._times: Optional[list[float]] = None
        self._g: Optional[torch.Tensor] = None
        self._text: Optional[tuple] = None  # (device, batch, features on device, lengths tensor)
        self._last = None
        self._uncond_call: Optional[HostModelCall] = None
        self.step_hint: Optional[int] = None  # set by sample_ideogram4_euler before each model call

    def set_positive(self, positive) -> None:
        feats, lengths, _ = text_from_conditioning(positive)
        self.features, self.lengths, self.positive = feats, lengths, positive
        self.inner_set_conds({"positive": positive})

    # -- schedule bookkeeping
    def _prepare(self, sigmas: torch.Tensor) -> None:
        self._reset_run()
        n = int(sigmas.shape[-1]) - 1
        sig = sigmas.detach().to("cpu", torch.float32)
        self._sigmas = sig.tolist()
        for k, s in enumerate(self._sigmas[:-1]):
            self._sigma_index.setdefault(s, k)
        times = getattr(sigmas, TIME_ATTR, None)
        if times is not None and times.shape[-1] == n + 1 and torch.equal(sigma_from_time(times).cpu(), sig):
            self._times = times.tolist()
        self._values = self.guidance.values(n)
        if self.uncond_patcher is None:
            require_guidance_without_unconditional(self.model_patcher, self._values)

    def _step(self, timestep: torch.Tensor) -> tuple[int, float]:
        hint, self.step_hint = self.step_hint, None
        if hint is not None:  # our sampler says which step this is: no read-back of the device σ
            return hint, (self._times[hint] if self._times is not None
                          else float(torch.tensor(1.0 - self._sigmas[hint], dtype=torch.float32)))
        sigma = float(timestep.reshape(-1)[0].to(torch.float32))
        k = self._sigma_index.get(sigma)
        if k is not None and self._times is not None:
            return k, self._times[k]
        if k is None:  # a σ between list entries (multi-stage samplers): the step in progress
            k = 0
            for j, s in enumerate(self._sigmas[:-1]):
                if s >= sigma:
                    k = j
        return k, float(torch.tensor(1.0 - sigma, dtype=torch.float32))

    def step_times(self, k: int) -> tuple[float, float]:
        """(t, s) of step k: the reference's float32 times, or 1 − σ."""
        if self._times is not None:
            return self._times[k], self._times[k + 1]
        return 1.0 - self._sigmas[k], 1.0 - self._sigmas[k + 1]

    # -- ComfyUI entry points
    def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
               seed=None):
        if self.features is None:
            raise ValueError("Ideogram4 Guider has no positive conditioning")
        require_applied({"conditional": self.model_patcher, "unconditional": self.uncond_patcher}, path="guider",
                        hooks_of="conditional", conditioning=self.positive,
                        sigmas_read_model=getattr(sigmas, TIME_ATTR, None) is None)  # Ideogram4 Sigmas read none
        self._prepare(sigmas)  # before ComfyUI moves the sigmas (the time attribute lives on this tensor)
        gh, gw = latent_image.shape[-2:]
        plan = plan_pair(self.model_patcher, self.uncond_patcher, batch=int(latent_image.shape[0]),
                         n_img=int(gh * gw), n_txt=int(self.features.shape[1]))
        notes = [kernel_note()] + [n for n in (decode_note(self.model_patcher, self.uncond_patcher),
                                               applied_wrappers_note({"conditional": self.model_patcher,
                                                                      "unconditional": self.uncond_patcher})) if n]
        log.info("Ideogram4 guider %s | %s", plan.summary().replace("\n", " |"), " | ".join(notes))
        return super().sample(noise, latent_image, sampler, sigmas, denoise_mask=denoise_mask, callback=callback,
                              disable_pbar=disable_pbar, seed=seed)

    def outer_sample(self, *args, **kwargs):
        if self.uncond_patcher is not None:
            self.uncond_patcher.pre_run()
        # ComfyUI's prepare_sampling asks the model for its memory (``memory_required``) before its pre_run sets the
        # model's patcher: set it now, so the estimate sees this run's patches (LoHa… temporaries) and device
        if hasattr(self.model_patcher.model, "current_patcher"):
            self.model_patcher.model.current_patcher = self.model_patcher
        try:
            with contextlib.ExitStack() as runs:  # per-run cache of both DiTs (text rows, RoPE, mask): bit-identical
                for patcher in (self.model_patcher, self.uncond_patcher):
                    run = getattr(getattr(patcher, "model", None), "diffusion_model", None)
                    if hasattr(run, "sampling_run"):
                        runs.enter_context(run.sampling_run())
                return super().outer_sample(*args, **kwargs)
        finally:
            self._last = None
            for patcher in (self.model_patcher, self.uncond_patcher):  # ComfyUI's cleanup did not run (an error)
                model = getattr(patcher, "model", None)
                if model is not None and getattr(model, "current_patcher", None) is patcher:
                    model.current_patcher = None

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        k, t_val = self._step(timestep)
        b = x.shape[0]
        if self._g is None or self._g.device != x.device:
            self._g = torch.tensor(self._values, dtype=torch.float32, device=x.device)
        g = self._g[k]
        if self._text is None or self._text[:2] != (x.device, b):  # copy the text features once per run
            feats, lengths = batch_text(self.features, self.lengths, b)
            self._text = (x.device, b, feats.to(x.device), torch.tensor(lengths, dtype=torch.long))
        _, _, feats, lengths = self._text
        t = torch.full((b,), t_val, dtype=torch.float32, device=x.device)
        # each pass with its own model's options: the sampler's (the conditional model's, prepared by ComfyUI) for
        # the conditional pass, the unconditional patcher's own for the image-only pass
        v_pos = call_model(self.inner_model, x, timestep, {"c_crossattn": feats, "text_lengths": lengths,
                                                            "ideogram4_time": t, "ideogram4_velocity": True},
                           model_options.get("transformer_options", {}), model_options.get("model_function_wrapper"), 0)
        v_neg = None
        if self.uncond_patcher is not None:  # None: single-branch, guidance 1 was checked in _prepare
            if self._uncond_call is None:
                self._uncond_call = HostModelCall(self.uncond_patcher, 1)
                self._uncond_call.sample_sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
            v_neg = self._uncond_call.velocity(x, timestep, ideogram4_time=t)
        sigma = timestep.to(torch.float32).reshape(-1, *([1] * (x.ndim - 1)))
        if any(model_options.get(hook) for hook in CFG_HOOKS):
            self._last = None  # ComfyUI's CFG hooks run on the denoised estimates: the plain Euler step follows
            return self._with_cfg_hooks(x, timestep, sigma, v_pos, v_neg, self._values[k], model_options)
        v = v_pos if v_neg is None else g * v_pos + (1.0 - g) * v_neg  # the reference's expression and dtypes
        self._last = (x, k, v)
        return x + sigma * v  # ComfyUI's x0 = x − σ·(−v)

    def _with_cfg_hooks(self, x, timestep, sigma, v_pos, v_neg, g: float, model_options):
        """ComfyUI's pre-CFG, CFG and post-CFG functions of the conditional model (``comfy.samplers``' order and
        arguments) on the denoised estimates of both passes; guidance ``g`` is their ``cond_scale``."""
        cond_pred = x + sigma * v_pos
        uncond_pred = cond_pred if v_neg is None else x + sigma * v_neg
        positive = self.conds.get("positive")
        out = [cond_pred, uncond_pred]
        for fn in model_options.get("sampler_pre_cfg_function", []):
            out = fn({"conds": [positive, None], "conds_out": out, "cond_scale": g, "timestep": timestep, "input": x,
                      "sigma": timestep, "model": self.inner_model, "model_options": model_options})
        return comfy.samplers.cfg_function(self.inner_model, out[0], out[1], g, x, timestep,
                                           model_options=model_options, cond=positive, uncond=None)

    def exact_update(self, x: torch.Tensor, k: int):
        """The reference update for step k if the guider just evaluated exactly this x."""
        last = self._last
        if last is None or last[0] is not x or last[1] != k:
            return None
        t, s = self.step_times(k)
        return last[2], t, s


# --------------------------------------------------------------------------- SAMPLER

@torch.no_grad()
def sample_ideogram4_euler(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """k-diffusion-style Euler over ``sigmas`` (flow: σ = 1 − t); reference-exact with our guider."""
    extra_args = {} if extra_args is None else extra_args
    s_in = x.new_ones([x.shape[0]])
    guider = getattr(model, "inner_model", None)
    exact_guider = guider if isinstance(guider, Ideogram4Guider) else None
    for i in trange(len(sigmas) - 1, disable=disable):
        sigma = sigmas[i]
        if exact_guider is not None:
            exact_guider.step_hint = i  # the guider needs not read σ back from the device (a sync per step)
        denoised = model(x, sigma * s_in, **extra_args)
        if callback is not None:
            callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})
        exact = exact_guider.exact_update(x, i) if exact_guider is not None else None
        if exact is not None:
            v, t_val, s_val = exact
            x = x + v * (s_val - t_val)  # z ← z + v·(s − t), (s − t) in float64 as the reference
        else:
            d = (x - denoised) / sigma
            x = x + d * (sigmas[i + 1] - sigma)
    return x


class Ideogram4KSampler(comfy.samplers.KSAMPLER):
    """KSAMPLER without CONST noise scaling of an empty latent and without inverse noise scaling."""

    def __init__(self):
        super().__init__(sample_ideogram4_euler)

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        extra_args["denoise_mask"] = denoise_mask
        model_k = comfy.samplers.KSamplerX0Inpaint(model_wrap, sigmas)
        model_k.latent_image = latent_image
        model_k.noise = noise
        if latent_image is None or not bool(torch.count_nonzero(latent_image)):
            x = noise  # the reference starts from the unscaled noise
        elif isinstance(model_wrap, Ideogram4Guider) and model_wrap._times is not None:
            t0 = model_wrap._times[0]  # img2img: z = t·x₀ + (1 − t)·ε at the first time run (exact float32 t)
            x = t0 * latent_image.to(noise.dtype) + (1.0 - t0) * noise
        else:  # a non-empty latent: start from the usual flow interpolation at σ₀
            x = model_wrap.inner_model.model_sampling.noise_scaling(sigmas[0], noise, latent_image,
                                                                     self.max_denoise(model_wrap, sigmas))
        total_steps = len(sigmas) - 1

        def k_callback(d):
            if callback is not None:
                callback(d["i"], d["denoised"], d["x"], total_steps)

        x = self.sampler_function(model_k, x, sigmas, extra_args=extra_args, callback=k_callback,
                                  disable=disable_pbar, **self.extra_options)
        if denoise_mask is not None and latent_image is not None:
            # the kept region is exactly the input, as core's samplers give it when they end at σ = 0 (ours ends
            # at 1 − t_max, so the last Euler step would leave a σ_end-sized trace of noise there)
            x = x * denoise_mask + latent_image.to(x.dtype) * (1.0 - denoise_mask)
        return x


# --------------------------------------------------------------------------- one-node sampler

def run_reference_sampler(cond, uncond, positive, settings, *, width: int, height: int, batch: int, seed: int,
                          denoise: float = 1.0, init_latent: Optional[torch.Tensor] = None,
                          noise_mask: Optional[torch.Tensor] = None, batch_index=None, drawn=None):
    """Run ``sampling.sample`` on the two loaded DiTs. Returns (latent (B,128,gh,gw) float32, info lines).

    ``init_latent`` (B, 128, gh, gw) model space and ``noise_mask`` (any size, 1 = regenerate) are used only
    for ``denoise`` < 1 or with a mask (img2img / inpainting, ``sampling.euler``); ``batch_index`` (the latent's)
    picks the rows of the batch's noise (``sampling.draw_noise``)."""
    gh, gw = token_grid(width, height)
    feats, lengths, ours = text_from_conditioning(positive)
    feats, lengths = batch_text(feats, lengths, batch)
    info = []
    if not ours:
        info.append("warning: the conditioning was not made by Ideogram4 Native Text Encode; parity not guaranteed")
    require_applied({"conditional": cond, "unconditional": uncond}, path="ksampler", conditioning=positive)
    t0 = time.perf_counter()
    plan = load_pair(cond, uncond, batch=batch, n_img=gh * gw, n_txt=int(feats.shape[1]))
    info += [plan.summary(), loaded_summary([cond, uncond], ["conditional", "unconditional"])]
    device = cond.load_device
    n = settings.steps
    ts = time_grid(schedule_steps(n, denoise), settings.mu, settings.std, width, height).tolist()
    init = None if init_latent is None else lat.comfy_to_tokens(init_latent.to(torch.float32)).to(device)
    mask = None if noise_mask is None else latent_mask(noise_mask, batch, gh, gw, what="noise_mask").to(device)
    preview = latent_preview.prepare_callback(cond, n)
    noise = draw_noise(batch, gh, gw, seed, device, batch_index=batch_index, drawn=drawn)
    prev = {"z": noise if init is None or denoise >= 1.0 else ts[n] * init + (1.0 - ts[n]) * noise}  # preview only

    def callback(k: int, total: int, z: torch.Tensor) -> None:
        i = total - 1 - k
        t, s = ts[i + 1], ts[i]
        z_prev = prev["z"]
        x0 = z_prev + (1.0 - t) * (z - z_prev) / (s - t)  # the guided x0 prediction of step k (preview only)
        prev["z"] = z
        preview(k, lat.tokens_to_comfy(x0, gh, gw), lat.tokens_to_comfy(z, gh, gw), total)
        mm.throw_exception_if_processing_interrupted()

    cond.pre_run()
    if uncond is not None:
        uncond.pre_run()
    try:
        # Through ComfyUI's model call, so wrappers, object/model patches and TorchCompileModel apply.
        models = tuple(HostModelCall(p, label) if p is not None else None for p, label in ((cond, 0), (uncond, 1)))
        sample_sigmas = make_sigmas(settings, width, height, denoise).to(device)
        for m in models:
            if m is not None:
                m.sample_sigmas = sample_sigmas
        z = sample(*models, feats.to(device), height=height, width=width, settings=settings, seed=seed,
                   text_lengths=lengths, callback=callback, noise=noise, device=device, denoise=denoise,
                   init_latent=init, mask=mask)
    finally:
        cond.cleanup()
        if uncond is not None:
            uncond.cleanup()
    elapsed = time.perf_counter() - t0
    info.append(f"sampled {batch}×{width}×{height} in {elapsed:.1f} s ({elapsed / n:.2f} s/step) on {device}; "
                f"{kernel_note()}")
    for note in (decode_note(cond, uncond), applied_wrappers_note({"conditional": cond, "unconditional": uncond})):
        if note:
            info.append(note)
    return lat.tokens_to_comfy(z, gh, gw).to(mm.intermediate_device()), info
