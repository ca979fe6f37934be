"""FLUX.2 VAE: the decoder, the encoder, its checkpoint loading, latent layouts and the reference latent normalisation."""

from . import latents
from .decoder import Flux2VAEDecoder, VAEDecoderConfig, VAEOps, decode_to_uint8, to_pil, to_uint8
from .encoder import Flux2VAEEncoder, VAEEncoderConfig, from_uint8, from_unit_float
from .latents import (bn_space_to_ref, comfy_grid, comfy_to_raw, comfy_to_tokens, denormalise, latent_norm, normalise,
                      patchify, ref_to_bn_space, tokens_to_comfy, unpatchify)
from .loading import VAEFormat, detect_vae_format, load_vae, load_vae_encoder

__all__ = ["latents", "Flux2VAEDecoder", "VAEDecoderConfig", "VAEOps", "decode_to_uint8", "to_pil", "to_uint8",
           "bn_space_to_ref", "comfy_grid", "comfy_to_raw", "comfy_to_tokens", "denormalise", "latent_norm", "normalise",
           "patchify", "ref_to_bn_space", "tokens_to_comfy", "unpatchify", "VAEFormat", "detect_vae_format", "load_vae",
           "Flux2VAEEncoder", "VAEEncoderConfig", "from_uint8", "from_unit_float", "load_vae_encoder"]
