"""Latent and decode nodes (V3): empty latent, reference VAE decode, conversion for core VAEDecode.

Our LATENT is a ComfyUI Flux2-layout tensor (B, 128, H/16, W/16), channel c·4 + ph·2 + pw, holding
the model's normalised space (the reference's z).  Ideogram4 VAE Decode de-normalises it with the
reference constants (``latent_norm.json``) and decodes with the pack's FLUX.2 decoder — the
reference pixels.  Core ``VAEDecode`` instead un-normalises with the VAE file's BatchNorm statistics;
Ideogram4 Latent To Flux2 VAE re-expresses our latent in that space first.
"""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..sampling import token_grid
from ..sampling.euler import LATENT_CHANNELS
from .loader_nodes import Vae
from .sampler_nodes import LATENT_SPACE_KEY, check_size, model_latent, validation_message

log = logging.getLogger("ideogram4_native")

CATEGORY = "Ideogram4 Native/latent"
CUSTOM = "custom"
# ≈1 MP sizes (multiples of 16) per aspect ratio, plus 512² and 2048².
ASPECT_SIZES = (
    (1024, 1024, "1:1"), (1152, 864, "4:3"), (864, 1152, "3:4"), (1248, 832, "3:2"), (832, 1248, "2:3"),
    (1360, 768, "16:9"), (768, 1360, "9:16"), (1120, 896, "5:4"), (896, 1120, "4:5"), (1440, 720, "2:1"),
    (720, 1440, "1:2"), (1568, 672, "21:9"), (672, 1568, "9:21"), (512, 512, "1:1"), (2048, 2048, "1:1"),
)
ASPECT_CHOICES = [f"{w}x{h} ({r})" for w, h, r in ASPECT_SIZES] + [CUSTOM]
TILE_CHOICES = ("auto", "off", "64", "32", "16")
BLOCKED_ADVICE = ("The image looks like Ideogram 4's grey 'Image blocked by safety filter' placeholder (the "
                  "behaviour is in the weights and is never bypassed). Plain-text or unusual captions trigger it more "
                  "often: use a JSON caption from the Ideogram4 Caption Builder (documented schema, no unknown keys "
                  "such as 'canvas'/'layout'), and rephrase content that may be considered unsafe.")


def safety_warnings(images_u8) -> list[str]:
    """UI lines (and a log warning) for decoded images that look like the grey safety placeholder."""
    from ..model import safety

    reports = safety.check_batch(images_u8)
    blocked = [i for i, r in enumerate(reports) if r.blocked]
    if not blocked:
        return []
    which = ", ".join(f"{i} (score {reports[i].score:.2f})" for i in blocked)
    log.warning("Ideogram4: image %s looks like the safety placeholder. %s", which, BLOCKED_ADVICE)
    return [f"WARNING image {which}: {BLOCKED_ADVICE}"]


def aspect_size(choice: str, width: int, height: int) -> tuple[int, int]:
    if choice == CUSTOM:
        return int(width), int(height)
    if choice not in ASPECT_CHOICES:
        raise ValueError(f"aspect_ratio {choice!r} is not one of {', '.join(ASPECT_CHOICES)}")
    w, h, _ = ASPECT_SIZES[ASPECT_CHOICES.index(choice)]
    return w, h


def core_bn_stats(vae):
    """(running_mean, running_var, eps) of a core FLUX.2 ``VAE`` (Load VAE); a ``ValueError`` for other VAEs."""
    from ..model.vae import latents as lat

    bn = getattr(getattr(vae, "first_stage_model", None), "bn", None)
    if bn is None or getattr(bn, "running_mean", None) is None:
        raise ValueError("vae has no BatchNorm latent statistics; it is not a FLUX.2 VAE (load flux2-vae.safetensors "
                         "with Load VAE)")
    return bn.running_mean, bn.running_var, float(getattr(vae.first_stage_model, "bn_eps", getattr(bn, "eps", lat.BN_EPS)))


class Ideogram4NativeEmptyLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeEmptyLatent",
            display_name="Ideogram4 Empty Latent",
            category=CATEGORY,
            description="Empty (B, 128, H/16, W/16) latent at a supported size: multiples of 16 px, 256–2048 per "
                        "side, aspect ratio at most 6:1. Also outputs width/height for the Caption Builder.",
            inputs=[
                io.Combo.Input("aspect_ratio", options=ASPECT_CHOICES, default=ASPECT_CHOICES[0],
                               tooltip="A ≈1 megapixel size per aspect ratio (plus 512² and 2048²), or custom to "
                                       "use width/height."),
                io.Int.Input("width", default=1024, min=256, max=2048, step=16,
                             tooltip="custom only: width in pixels, a multiple of 16 from 256 to 2048."),
                io.Int.Input("height", default=1024, min=256, max=2048, step=16,
                             tooltip="custom only: height in pixels, a multiple of 16 from 256 to 2048."),
                io.Int.Input("batch_size", default=1, min=1, max=64, tooltip="Number of images."),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="latent", tooltip="Zeros in the Flux2 latent layout."),
                io.Int.Output("width", display_name="width", tooltip="Width in pixels."),
                io.Int.Output("height", display_name="height", tooltip="Height in pixels."),
            ],
        )

    @classmethod
    def validate_inputs(cls, aspect_ratio=None, width=None, height=None):
        if aspect_ratio is not None and aspect_ratio not in ASPECT_CHOICES:
            return f"aspect_ratio {aspect_ratio!r} is not one of {', '.join(ASPECT_CHOICES)}"
        if aspect_ratio == CUSTOM:
            return validation_message("Ideogram4 Empty Latent", width, height)
        return True

    @classmethod
    def execute(cls, aspect_ratio: str, width: int, height: int, batch_size: int) -> io.NodeOutput:
        from .host.comfy_sampling import empty_latent

        w, h = aspect_size(aspect_ratio, width, height)
        check_size("Ideogram4 Empty Latent", w, h)
        gh, gw = token_grid(w, h)
        samples = empty_latent(batch_size, LATENT_CHANNELS, gh, gw)
        text = f"{w}×{h}, batch {batch_size}" + ("" if aspect_ratio == CUSTOM else
                                                 f" (aspect_ratio {aspect_ratio}: width/height widgets not used)")
        return io.NodeOutput(model_latent(samples), w, h, ui={"text": [text]})


class Ideogram4NativeVAEDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeVAEDecode",
            display_name="Ideogram4 VAE Decode",
            category=CATEGORY,
            description="Reference decode: z·scale + shift with the reference latent constants, unpatchify, FLUX.2 "
                        "decoder (bf16), clamp, round to uint8 — then IMAGE values chosen so SaveImage writes exactly "
                        "those bytes. Tiled (exact, global GroupNorm statistics) when memory is short. Warns when "
                        "the image is the grey safety placeholder.",
            inputs=[
                io.Latent.Input("samples", tooltip="Latent from the Ideogram4 KSampler (model space)."),
                Vae.Input("vae", tooltip="From Ideogram4 VAE Loader."),
                io.Combo.Input("tiling", options=list(TILE_CHOICES), default="auto",
                               tooltip="auto: tile only when the untiled decode does not fit in free memory. off: never "
                                       "tile. A number: tile edge in latent pixels (×8 image pixels)."),
            ],
            outputs=[io.Image.Output("image", display_name="image", tooltip="Decoded images.")],
        )

    @classmethod
    def execute(cls, samples: dict, vae, tiling: str) -> io.NodeOutput:
        from .host.comfy_vae import decode
        from .host.image_values import uint8_to_image

        if samples.get(LATENT_SPACE_KEY) == "flux2_vae":
            raise ValueError("this latent was converted for core VAEDecode (Ideogram4 Latent To Flux2 VAE); connect the "
                             "sampler's latent directly")
        images_u8, info = decode(vae, samples["samples"], tile_mode=tiling)
        # no "unmarked" note here: core's SamplerCustomAdvanced on core Empty Flux 2 Latent gives a right, unmarked one
        lines = safety_warnings(images_u8) + [info]
        return io.NodeOutput(uint8_to_image(images_u8), ui={"text": ["\n".join(lines)]})


class Ideogram4NativeLatentToFlux2VAE(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeLatentToFlux2VAE",
            display_name="Ideogram4 Latent To Flux2 VAE",
            category=CATEGORY,
            description="Convert our model-space latent into the BatchNorm space of a core FLUX.2 VAE so core "
                        "VAEDecode decodes the reference's raw latent: z_raw = z·scale + shift, then "
                        "(z_raw − running_mean) / sqrt(running_var + eps). Pixels then differ from the reference "
                        "only by core's decoder numerics (≤ 1 LSB in fp32, up to ~7 LSB in bf16 — measured).",
            inputs=[
                io.Latent.Input("samples", tooltip="Latent from the Ideogram4 KSampler (model space)."),
                io.Vae.Input("vae", tooltip="The core VAE (e.g. flux2-vae.safetensors from Load VAE) that VAEDecode "
                                            "will use; its BatchNorm statistics are read."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent", tooltip="Latent for core VAEDecode.")],
        )

    @classmethod
    def execute(cls, samples: dict, vae) -> io.NodeOutput:
        from ..model.vae import latents as lat

        if samples.get(LATENT_SPACE_KEY) == "flux2_vae":
            raise ValueError("this latent is already converted to the Flux2 VAE space")
        mean, var, eps = core_bn_stats(vae)
        z = lat.ref_to_bn_space(samples["samples"], mean, var, eps=eps)
        out = dict(samples)
        out["samples"] = z
        out[LATENT_SPACE_KEY] = "flux2_vae"
        return io.NodeOutput(out)


NODES: list[type[io.ComfyNode]] = [Ideogram4NativeEmptyLatent, Ideogram4NativeVAEDecode, Ideogram4NativeLatentToFlux2VAE]
