"""Sampling nodes (V3): the one-node reference sampler and the SamplerCustomAdvanced building blocks.

Latents are ComfyUI Flux2-layout LATENTs (B, 128, H/16, W/16) holding the model's *normalised*
space (the reference's ``z``, before ``z·scale + shift``) — decode them with Ideogram4 VAE Decode,
or convert them with Ideogram4 Latent To Flux2 VAE before core VAEDecode.
"""

from __future__ import annotations

from typing import Optional

from comfy_api.latest import io

from ..model.vae import latents as lat
from ..sampling import check_resolution
from ..sampling.euler import noise_rows
from .host.sampler_settings import (BATCH_KEY, DEFAULT_PRESET, GUIDANCE_WIDGETS, MAX_STEPS, PRESET_CHOICES, SCHEDULE_WIDGETS,
                                   GuidanceSpec, describe_settings, require_guidance_without_unconditional,
                                   settings_from_inputs, unused_widgets_note)

CATEGORY = "Ideogram4 Native/sampling"
SEED_MAX = 0xFFFFFFFFFFFFFFFF
LATENT_SPACE_KEY = "ideogram4_space"  # "model": normalised model space; "flux2_vae": VAE BatchNorm space


def _preset_input() -> io.Combo.Input:
    return io.Combo.Input("preset", options=list(PRESET_CHOICES), default=DEFAULT_PRESET,
                          tooltip="Reference presets: V4_QUALITY_48 (48 steps, the CLI default), V4_DEFAULT_20, "
                                  "V4_TURBO_12; the last 3/2/1 steps use guidance 3. custom: use the fields below.")


def _guidance_inputs() -> list:
    return [
        io.Float.Input("guidance", default=7.0, min=0.0, max=30.0, step=0.1, round=0.01,
                       tooltip="custom only: guidance g in v = g·v_cond + (1 − g)·v_uncond (presets use 7)."),
        io.Int.Input("polish_steps", default=2, min=0, max=MAX_STEPS,
                     tooltip="custom only: the last N steps use polish_guidance (presets: 3 / 2 / 1)."),
        io.Float.Input("polish_guidance", default=3.0, min=0.0, max=30.0, step=0.1, round=0.01,
                       tooltip="custom only: guidance of the polish steps (presets use 3)."),
        io.String.Input("guidance_schedule", default="", multiline=False, dynamic_prompts=False,
                        tooltip="custom only, optional: one guidance per step in sampling order (first step first), "
                                "comma separated, e.g. '7,7,7,3'. Overrides guidance/polish when not empty."),
    ]


def _schedule_inputs() -> list:
    return [
        io.Int.Input("steps", default=20, min=1, max=MAX_STEPS, tooltip="custom only: number of steps."),
        io.Float.Input("mu", default=0.0, min=-10.0, max=10.0, step=0.05, round=0.001,
                       tooltip="custom only: mean of the logit-normal schedule before the resolution shift "
                               "(presets: 0, 0, 0.5)."),
        io.Float.Input("std", default=1.75, min=0.05, max=10.0, step=0.05, round=0.001,
                       tooltip="custom only: spread of the logit-normal schedule (presets: 1.5, 1.75, 1.75)."),
    ]


def _size_inputs(prefix_tooltip: str) -> list:
    return [
        io.Int.Input("width", default=1024, min=256, max=2048, step=16,
                     tooltip=f"{prefix_tooltip}Image width in pixels: a multiple of 16 from 256 to 2048, aspect "
                             "ratio at most 6:1."),
        io.Int.Input("height", default=1024, min=256, max=2048, step=16,
                     tooltip=f"{prefix_tooltip}Image height in pixels: a multiple of 16 from 256 to 2048, aspect "
                             "ratio at most 6:1."),
    ]


def check_size(node: str, width, height) -> None:
    if width is None or height is None:  # linked inputs are checked when the node runs
        return
    try:
        check_resolution(int(width), int(height))
    except ValueError as exc:  # the message names the value, the rule and a supported value
        raise ValueError(f"{node}: {exc}") from None


def validation_message(node: str, width, height):
    try:
        check_size(node, width, height)
    except ValueError as exc:
        return str(exc)
    return True


def model_latent(samples, like: Optional[dict] = None) -> dict:
    """A LATENT of the pack: model-space samples, marked, with the batch size its noise is drawn for.  Made from
    ``like``, a latent with a ``batch_index`` (items picked out of a batch), it keeps that index and its batch's size,
    as core's KSampler keeps the index."""
    out = {"samples": samples, LATENT_SPACE_KEY: "model", BATCH_KEY: int(samples.shape[0])}
    if like is not None and "batch_index" in like:
        out["batch_index"] = list(like["batch_index"])
        out[BATCH_KEY] = int(like.get(BATCH_KEY, out[BATCH_KEY]))
    return out


def unmarked_latent_note(latent: dict, use: str) -> Optional[str]:
    """A note when a latent whose content is used carries no space mark (the pack's nodes set it; core's latent nodes
    copy it): core VAE Encode / Empty Flux 2 Latent latents are in the VAE's BatchNorm space, not the model's."""
    if LATENT_SPACE_KEY in latent:
        return None
    return (f"note: this latent carries no Ideogram 4 mark ('{LATENT_SPACE_KEY}') and {use}: if it comes from core "
            "VAE Encode or Empty Flux 2 Latent, convert it with Ideogram4 Flux2 VAE To Latent first (it is in the "
            "VAE's space); a latent an Ideogram4 node made and core Save/Load Latent or Rebatch passed on is right as it is")


def batch_index_note(latent: dict, seed: int) -> Optional[str]:
    index = latent.get("batch_index")
    if index is None:
        return None
    size, rows = noise_rows(len(index), index, latent.get(BATCH_KEY))
    if rows == list(range(size)):
        return None
    return f"noise: items {rows} of the batch of {size} that seed {seed} draws (the latent's batch_index)"


def size_from_latent(latent: dict) -> tuple[int, int, int]:
    if latent.get(LATENT_SPACE_KEY) == "flux2_vae":
        raise ValueError("latent was converted for core VAEDecode (Ideogram4 Latent To Flux2 VAE); connect the "
                         "Ideogram 4 latent itself (core VAEEncode output: use Ideogram4 Flux2 VAE To Latent)")
    b, gh, gw = lat.comfy_grid(latent["samples"], "latent",
                               hint="a latent from another model family? use Ideogram4 Empty Latent, Ideogram4 VAE "
                                    "Encode or Ideogram4 Flux2 VAE To Latent")
    return b, gw * 16, gh * 16


# Default of ``latent`` in validate_inputs: ComfyUI passes None for a linked input and leaves an unlinked optional
# input out, so this sentinel means "no latent connected" and the width/height widgets are the size.
NO_LATENT = object()


def size_note(width: int, height: int, batch: int | None, unused: str) -> str:
    return f"size {width}×{height}" + (f", batch {batch}" if batch is not None else "") + \
        f" from the latent ({unused} widgets not used)"


def _denoise_input() -> io.Float.Input:
    return io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01, round=0.001, optional=True,
                          tooltip="1 = text-to-image from pure noise (the latent's content is not used unless it has "
                                  "a noise_mask). < 1 = img2img: ComfyUI's KSampler convention — the schedule for "
                                  "int(steps / denoise) steps, its last steps run, starting from t·x0 + (1 − t)·noise "
                                  "with the seeded noise; needs a latent (Ideogram4 VAE Encode).")


def check_denoise(node: str, denoise: float, latent: dict | None) -> None:
    if not 0.0 < float(denoise) <= 1.0:
        raise ValueError(f"{node}: denoise = {denoise} is outside the allowed range (0, 1] (0 would run no step)")
    if float(denoise) < 1.0 and latent is None:
        raise ValueError(f"{node}: denoise = {denoise} < 1 is img2img and needs a latent to start from "
                         "(connect Ideogram4 VAE Encode to 'latent'), or set denoise to 1")


class Ideogram4NativeKSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeKSampler",
            display_name="Ideogram4 KSampler",
            category=CATEGORY,
            description="The reference dual-model Euler sampler: both DiTs every step (conditional with text, "
                        "unconditional image-only), step-indexed guidance, token-layout noise drawn on the compute "
                        "device from the seed (same seed, same device type ⇒ the reference's image). Output: the "
                        "model's normalised latent in ComfyUI Flux2 layout.",
            inputs=[
                io.Model.Input("model", tooltip="Conditional DiT from Ideogram4 Model Loader."),
                io.Model.Input("unconditional_model", tooltip="Unconditional DiT from Ideogram4 Model Loader."),
                io.Conditioning.Input("positive", tooltip="From Ideogram4 Text Encode (there is no negative)."),
                io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                             tooltip="Noise seed; the noise is drawn with a torch.Generator on the compute device "
                                     "(CPU and CUDA give different images for the same seed, as in the reference)."),
                _preset_input(),
                *_size_inputs("Used when no latent is connected. "),
                io.Int.Input("batch_size", default=1, min=1, max=64,
                             tooltip="Used when no latent is connected: images per run (one noise draw, the "
                                     "reference's batch)."),
                *_schedule_inputs(),
                *_guidance_inputs(),
                _denoise_input(),
                io.Latent.Input("latent", optional=True,
                                tooltip="Optional: its size and batch are used; its content only for denoise < 1 "
                                        "(img2img) or with a noise_mask (inpainting: Ideogram4 VAE Encode with a mask, "
                                        "or SetLatentNoiseMask). E.g. Ideogram4 Empty Latent / VAE Encode."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent",
                                      tooltip="(B, 128, H/16, W/16) latent in the model's normalised space.")],
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None, latent=NO_LATENT):
        if latent is not NO_LATENT:  # a connected latent sets the size; the widgets are not used
            return True
        return validation_message("Ideogram4 KSampler", width, height)

    @classmethod
    def execute(cls, model, unconditional_model, positive, seed: int, preset: str, width: int, height: int,
                batch_size: int, steps: int, mu: float, std: float, guidance: float, polish_steps: int,
                polish_guidance: float, guidance_schedule: str, denoise: float = 1.0,
                latent: dict | None = None) -> io.NodeOutput:
        import torch

        from .host.comfy_model import dit_of, require_ideogram4
        from .host.conditioning import check_feature_width
        from .host.comfy_sampling import run_reference_sampler

        require_ideogram4(model, "model")
        if unconditional_model is not None:  # None: Model Loader 'unconditional: none' (single-branch model)
            require_ideogram4(unconditional_model, "unconditional_model")
        check_feature_width(positive, dit_of(model).config.llm_features_dim)
        check_denoise("Ideogram4 KSampler", denoise, latent)
        notes = [n for n in [unused_widgets_note(preset, SCHEDULE_WIDGETS + GUIDANCE_WIDGETS, guidance_schedule)] if n]
        init = mask = None
        if latent is not None:
            batch_size, width, height = size_from_latent(latent)
            notes.append(size_note(width, height, batch_size, "width/height/batch_size"))
            mask = latent.get("noise_mask")
            if denoise < 1.0 or mask is not None:
                init = latent["samples"]
                notes.append(f"img2img: denoise {denoise:g}" + (" with the latent's noise_mask (inpainting)"
                                                                 if mask is not None else ""))
                notes += [n for n in [unmarked_latent_note(latent, "its content is the img2img start")] if n]
                if mask is None and not bool(torch.count_nonzero(init)):
                    notes.append("note: the latent is empty (all zeros, e.g. Ideogram4 Empty Latent): denoise < 1 "
                                 "starts from a blank latent — connect Ideogram4 VAE Encode for img2img, or set "
                                 "denoise 1 for text-to-image")
            elif bool(torch.count_nonzero(latent["samples"])):
                notes.append("note: the input latent is not empty but denoise = 1 and no noise_mask: only its size "
                             "is used (set denoise < 1 for img2img)")
            notes += [n for n in [batch_index_note(latent, seed)] if n]
        check_size("Ideogram4 KSampler", width, height)
        settings = settings_from_inputs(preset, steps=steps, mu=mu, std=std, guidance=guidance,
                                        polish_steps=polish_steps, polish_guidance=polish_guidance,
                                        guidance_schedule=guidance_schedule)
        if unconditional_model is None:  # checked before the models load; the error names how to add one
            require_guidance_without_unconditional(model, settings.loop_order_guidance[::-1])
        samples, info = run_reference_sampler(model, unconditional_model, positive, settings, width=width,
                                              height=height, batch=batch_size, seed=seed, denoise=denoise,
                                              init_latent=init, noise_mask=mask,
                                              batch_index=None if latent is None else latent.get("batch_index"),
                                              drawn=None if latent is None else latent.get(BATCH_KEY))
        text = "\n".join([describe_settings(settings), f"seed {seed}"] + notes + info)
        return io.NodeOutput(model_latent(samples, like=latent), ui={"text": [text]})


class Ideogram4NativeSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeSigmas",
            display_name="Ideogram4 Sigmas",
            category=CATEGORY,
            description="The reference schedule as SIGMAS (σ = 1 − t, descending, ending at 1 − t_max ≈ 5.5e-4, not 0), "
                        "resolution-shifted. Carries the exact float32 times for Ideogram4 Guider/Sampler.",
            inputs=[
                _preset_input(),
                *_size_inputs("Used when no latent is connected. "),
                *_schedule_inputs(),
                _denoise_input(),
                io.Latent.Input("latent", optional=True, tooltip="Optional: take width/height from this latent."),
            ],
            outputs=[io.Sigmas.Output("sigmas", display_name="sigmas", tooltip="steps + 1 values.")],
        )

    @classmethod
    def validate_inputs(cls, width=None, height=None, latent=NO_LATENT):
        if latent is not NO_LATENT:
            return True
        return validation_message("Ideogram4 Sigmas", width, height)

    @classmethod
    def execute(cls, preset: str, width: int, height: int, steps: int, mu: float, std: float, denoise: float = 1.0,
                latent: dict | None = None) -> io.NodeOutput:
        from .host.comfy_sampling import make_sigmas

        if not 0.0 < float(denoise) <= 1.0:
            raise ValueError(f"Ideogram4 Sigmas: denoise = {denoise} is outside the allowed range (0, 1]")
        notes = [n for n in [unused_widgets_note(preset, SCHEDULE_WIDGETS)] if n]
        if latent is not None:
            _, width, height = size_from_latent(latent)
            notes.append(size_note(width, height, None, "width/height"))
        check_size("Ideogram4 Sigmas", width, height)
        settings = settings_from_inputs(preset, steps=steps, mu=mu, std=std, guidance=7.0, polish_steps=0,
                                        polish_guidance=3.0)
        sigmas = make_sigmas(settings, width, height, denoise)
        head = (f"denoise {denoise:g}: last {settings.steps} of {int(settings.steps / denoise)} steps; " if denoise < 1
                else "")
        text = "\n".join([head + f"{settings.steps} steps at {width}×{height}: σ " + ", ".join(f"{v:.6f}" for v in sigmas.tolist())]
                         + notes)
        return io.NodeOutput(sigmas, ui={"text": [text]})


class Ideogram4NativeGuider(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeGuider",
            display_name="Ideogram4 Guider",
            category=CATEGORY,
            description="Dual-model guider for SamplerCustomAdvanced: v = g·v_cond + (1 − g)·v_uncond with the "
                        "unconditional model on image tokens only and g chosen by step index (found from the σ "
                        "being sampled). No cfg = 1 shortcut: both models run every step, as in the reference.",
            inputs=[
                io.Model.Input("model", tooltip="Conditional DiT from Ideogram4 Model Loader."),
                io.Model.Input("unconditional_model", tooltip="Unconditional DiT from Ideogram4 Model Loader."),
                io.Conditioning.Input("positive", tooltip="From Ideogram4 Text Encode."),
                io.Combo.Input("preset", options=list(PRESET_CHOICES), default=DEFAULT_PRESET,
                               tooltip="Guidance schedule of a preset (must match the SIGMAS' step count), or custom."),
                *_guidance_inputs(),
            ],
            outputs=[io.Guider.Output("guider", display_name="guider", tooltip="GUIDER for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, model, unconditional_model, positive, preset: str, guidance: float, polish_steps: int,
                polish_guidance: float, guidance_schedule: str) -> io.NodeOutput:
        from .host.comfy_model import dit_of, require_ideogram4
        from .host.conditioning import check_feature_width
        from .host.comfy_sampling import Ideogram4Guider

        require_ideogram4(model, "model")
        if unconditional_model is not None:  # None: Model Loader 'unconditional: none' (single-branch model)
            require_ideogram4(unconditional_model, "unconditional_model")
        check_feature_width(positive, dit_of(model).config.llm_features_dim)
        spec = GuidanceSpec.from_inputs(preset, guidance, polish_steps, polish_guidance, guidance_schedule)
        guider = Ideogram4Guider(model, unconditional_model, spec)
        guider.set_positive(positive)
        note = unused_widgets_note(preset, GUIDANCE_WIDGETS, guidance_schedule)
        return io.NodeOutput(guider, ui={"text": ["\n".join([spec.describe()] + ([note] if note else []))]})


class Ideogram4NativeSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeSampler",
            display_name="Ideogram4 Sampler",
            category=CATEGORY,
            description="Reference Euler SAMPLER for SamplerCustomAdvanced: starts from the raw noise (no σ₀ noise "
                        "scaling), no inverse noise scaling at the end, z ← z + v·(s − t). Bit-exact with Ideogram4 "
                        "Guider + Sigmas + Noise.",
            inputs=[],
            outputs=[io.Sampler.Output("sampler", display_name="sampler", tooltip="SAMPLER.")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        from .host.comfy_sampling import Ideogram4KSampler

        return io.NodeOutput(Ideogram4KSampler())


class Ideogram4NativeNoise(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeNoise",
            display_name="Ideogram4 Noise",
            category=CATEGORY,
            description="NOISE as the reference draws it: (B, N, 128) float32 from a seeded torch.Generator on the "
                        "compute device, reshaped to the (B, 128, H/16, W/16) latent layout.",
            inputs=[io.Int.Input("noise_seed", default=0, min=0, max=SEED_MAX, control_after_generate=True,
                                 tooltip="Seed of the device generator.")],
            outputs=[io.Noise.Output("noise", display_name="noise", tooltip="NOISE for SamplerCustomAdvanced.")],
        )

    @classmethod
    def execute(cls, noise_seed: int) -> io.NodeOutput:
        from .host.comfy_sampling import Ideogram4Noise

        return io.NodeOutput(Ideogram4Noise(noise_seed))


NODES: list[type[io.ComfyNode]] = [Ideogram4NativeKSampler, Ideogram4NativeSigmas, Ideogram4NativeGuider,
                                   Ideogram4NativeSampler, Ideogram4NativeNoise]
