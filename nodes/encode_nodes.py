"""Image → latent nodes (V3): the reference VAE encode (img2img / inpainting input) and the converter from
core Flux2 latents (core ``VAEEncode``, BatchNorm space) into ours (the inverse of Latent To Flux2 VAE).

The LATENT they produce holds the model's normalised space (like the sampler's output), optionally
with ComfyUI's ``noise_mask`` (1 = regenerate) — the Ideogram4 KSampler and core's samplers read it.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..sampling import FIT_MODES
from .latent_nodes import TILE_CHOICES, core_bn_stats
from .loader_nodes import Vae
from .sampler_nodes import LATENT_SPACE_KEY, model_latent

CATEGORY = "Ideogram4 Native/latent"
NOISE_MASK = "noise_mask"


def _mask_inputs() -> list:
    return [
        io.Mask.Input("mask", optional=True,
                      tooltip="Optional inpainting mask (white/1 = regenerate, e.g. LoadImage's mask or "
                              "ImagePadForOutpaint's): stored as the latent's noise_mask, cropped/resized with the "
                              "image."),
        io.Int.Input("mask_grow", default=0, min=0, max=256,
                     tooltip="Grow the mask by this many image pixels before use (0 = as given)."),
        io.Int.Input("mask_feather", default=0, min=0, max=256,
                     tooltip="Soften the mask edge over this many image pixels (0 = hard edge)."),
    ]


def prepare_mask(mask, images_hw: tuple[int, int], size: tuple[int, int], mode: str, grow: int, feather: int):
    """IMAGE-size mask → (B, 1, height, width) float32 in [0, 1], cropped/resized like the image, grown, feathered."""
    from ..model.vae.encoder import fit_pixels
    from ..sampling.masks import as_mask_batch, feather_mask, grow_mask

    m = as_mask_batch(mask, "mask")
    if tuple(m.shape[-2:]) != tuple(images_hw):
        hint = ""
        if tuple(m.shape[-2:]) == (64, 64) and not bool(m.any()):
            hint = "; LoadImage gives this empty 64×64 mask for an image without alpha: paint one in the mask editor"
        raise ValueError(f"mask is {m.shape[-1]}×{m.shape[-2]} px but the image is {images_hw[1]}×{images_hw[0]} px "
                         f"(allowed: a mask of the image's size){hint}")
    m = fit_pixels(m, size[0], size[1], mode).clamp(0.0, 1.0)
    return feather_mask(grow_mask(m, int(grow)), int(feather))


class Ideogram4NativeVAEEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeVAEEncode",
            display_name="Ideogram4 VAE Encode",
            category=CATEGORY,
            description="Reference encode (the inverse of Ideogram4 VAE Decode): pixels 2x − 1, FLUX.2 encoder in the "
                        "VAE's dtype, posterior mean, 2×2 patchify, (z − shift) / scale with the reference latent "
                        "constants. For img2img (Ideogram4 KSampler denoise < 1) and inpainting (mask). Also "
                        "outputs width/height for the Caption Builder.",
            inputs=[
                io.Image.Input("image", tooltip="Images to encode (e.g. LoadImage, ImagePadForOutpaint)."),
                Vae.Input("vae", tooltip="From Ideogram4 VAE Loader; the file must contain the encoder "
                                         "(flux2-vae.safetensors and the official vae/ do)."),
                io.Combo.Input("size", options=list(FIT_MODES), default="resize",
                               tooltip="Ideogram 4 needs sides that are multiples of 16 from 256 to 2048 px. "
                                       "error: refuse other sizes; crop: centre-crop to a multiple of 16 (≤ 2048); "
                                       "resize: scale into 256–2048 keeping the aspect ratio, sides rounded to 16."),
                *_mask_inputs(),
                io.Combo.Input("tiling", options=list(TILE_CHOICES), default="auto",
                               tooltip="auto: tile only when the untiled encode does not fit in free memory. off: never "
                                       "tile. A number: tile edge in latent pixels (×8 image pixels). Tiles are exact "
                                       "(global GroupNorm statistics), as in Ideogram4 VAE Decode."),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="latent",
                                 tooltip="(B, 128, H/16, W/16) latent in the model's normalised space (+ noise_mask)."),
                io.Int.Output("width", display_name="width", tooltip="Width in pixels of the encoded image."),
                io.Int.Output("height", display_name="height", tooltip="Height in pixels of the encoded image."),
            ],
        )

    @classmethod
    def execute(cls, image, vae, size: str, mask=None, mask_grow: int = 0, mask_feather: int = 0,
                tiling: str = "auto") -> io.NodeOutput:
        from ..model.vae.encoder import fit_pixels
        from ..sampling import fit_size
        from .host.comfy_vae import encode

        if image.ndim != 4 or image.shape[-1] < 3:
            raise ValueError(f"image must be a ComfyUI IMAGE (B, H, W, 3), got {tuple(image.shape)}")
        b, h, w = int(image.shape[0]), int(image.shape[1]), int(image.shape[2])
        width, height = fit_size(w, h, size, what="image")
        pixels = fit_pixels(image[..., :3].permute(0, 3, 1, 2), width, height, size).permute(0, 2, 3, 1)
        samples, info = encode(vae, pixels, tile_mode=tiling)
        lines = [info]
        if image.shape[-1] > 3:
            lines.append(f"note: the IMAGE has {int(image.shape[-1])} channels; only RGB is encoded (an alpha channel "
                         "is not used — connect it as mask for inpainting)")
        if (width, height) != (w, h):
            lines.insert(0, f"{size}: {w}×{h} → {width}×{height} px")
        out = model_latent(samples)
        if mask is not None:
            m = prepare_mask(mask, (h, w), (width, height), size, mask_grow, mask_feather)
            if m.shape[0] not in (1, b):
                raise ValueError(f"mask has batch {m.shape[0]}; the image has batch {b} (allowed: 1 or {b})")
            out[NOISE_MASK] = m
            lines.append(f"mask: {float(m.mean()) * 100:.1f}% to regenerate (grow {mask_grow}, feather {mask_feather})")
            if float(m.max()) < 1 / 255:  # all zero, or LoadImage's 4.6e-5 of an opaque GIF / palette image
                lines.append("note: the mask is empty — nothing will be regenerated and the output is the input; "
                             "paint the area to change in the mask editor (or leave mask unconnected for img2img)")
        return io.NodeOutput(out, width, height, ui={"text": ["\n".join(lines)]})


class Ideogram4NativeFlux2VAEToLatent(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="Ideogram4NativeFlux2VAEToLatent",
            display_name="Ideogram4 Flux2 VAE To Latent",
            category=CATEGORY,
            description="Convert a core Flux2 latent (core VAEEncode with flux2-vae, BatchNorm space) into the "
                        "model's normalised space for the Ideogram4 samplers: z_raw = z_bn·sqrt(running_var + eps) + "
                        "running_mean, then (z_raw − shift) / scale. The inverse of Ideogram4 Latent To Flux2 VAE. "
                        "A noise_mask is kept.",
            inputs=[
                io.Latent.Input("samples", tooltip="Latent from core VAEEncode (or SetLatentNoiseMask on it)."),
                io.Vae.Input("vae", tooltip="The core VAE that made the latent (flux2-vae.safetensors from Load VAE); "
                                            "its BatchNorm statistics are read."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent", tooltip="Latent for the Ideogram4 samplers.")],
        )

    @classmethod
    def execute(cls, samples: dict, vae) -> io.NodeOutput:
        from ..model.vae import latents as lat

        space = samples.get(LATENT_SPACE_KEY)
        if space == "model":
            raise ValueError("samples is already an Ideogram 4 model-space latent (from an Ideogram4 node); "
                             "connect it to the sampler directly")
        lat.comfy_grid(samples["samples"], "samples",
                       hint="a latent from another model family (Ideogram 4 / FLUX.2 latents have 128 channels)")
        mean, var, eps = core_bn_stats(vae)
        out = dict(samples)
        out["samples"] = lat.bn_space_to_ref(samples["samples"], mean, var, eps=eps)
        out[LATENT_SPACE_KEY] = "model"
        return io.NodeOutput(out)


NODES: list[type[io.ComfyNode]] = [Ideogram4NativeVAEEncode, Ideogram4NativeFlux2VAEToLatent]
