"""The pack's FLUX.2 VAE decoder under ComfyUI model management, and reference-exact IMAGE values.

The decoder is ``model.vae.Flux2VAEDecoder`` (pure torch, the reference's numerics: bf16 decode,
reference latent de-normalisation — not the file's BatchNorm statistics), built with ComfyUI's
cast-aware Conv2d/GroupNorm so a ``ModelPatcher`` can load and offload it.

IMAGE values: see ``nodes/image_values.py`` (SaveImage truncates, the reference rounds).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.ops

from ...model.vae import latents as lat
from ...model.vae import Flux2VAEDecoder, Flux2VAEEncoder, from_unit_float, load_vae, load_vae_encoder
from . import memory_policy as mp
from .dtype_flags import flag_dtype, flag_note
from .offload import HomePatcher

log = logging.getLogger("ideogram4_native")

VAE_DTYPES = ("auto", "bf16", "fp32")


class VAEOpsComfy:
    class Conv2d(comfy.ops.disable_weight_init.Conv2d):
        pass

    class GroupNorm(comfy.ops.disable_weight_init.GroupNorm):
        pass


class VAEHolder(torch.nn.Module):
    """ModelPatcher target (ComfyUI writes ``model.device``; the decoder exposes it read-only)."""

    def __init__(self, decoder: Flux2VAEDecoder):
        super().__init__()
        self.decoder = decoder

    def get_dtype(self):
        return self.decoder.dtype


def load_vae_patcher(source: str | Path, dtype_choice: str = "auto") -> comfy.model_patcher.ModelPatcher:
    if dtype_choice not in VAE_DTYPES:
        raise ValueError(f"vae dtype {dtype_choice!r} is not one of {VAE_DTYPES}")
    # REF decodes in bf16; auto follows ComfyUI's --fp32-vae / --bf16-vae / --force-fp32 (dtype_flags)
    dtype = torch.float32 if dtype_choice == "fp32" else torch.bfloat16 if dtype_choice == "bf16" else \
        flag_dtype("vae") or torch.bfloat16
    load_device = mm.vae_device()
    offload_device = mm.vae_offload_device()
    decoder = load_vae(source, device=offload_device, dtype=dtype, operations=VAEOpsComfy)
    holder = VAEHolder(decoder)
    patcher = HomePatcher(holder, load_device=load_device, offload_device=offload_device)
    patcher.ideogram4_info = {"source": str(source), "format": decoder.checkpoint_format,
                              "dtype": str(dtype).replace("torch.", ""), "dtype_note": flag_note("vae", dtype_choice)}
    return patcher


def decoder_of(patcher) -> Flux2VAEDecoder:
    model = getattr(patcher, "model", None)
    if not isinstance(model, VAEHolder):
        raise ValueError("vae must come from the Ideogram4 VAE Loader (core VAE objects: use core VAEDecode after "
                         "Ideogram4 Latent To Flux2 VAE)")
    return model.decoder


def decode_bytes_per_pixel(decoder: Flux2VAEDecoder) -> int:
    """Peak activation bytes per output pixel of an untiled decode (full-resolution level dominates)."""
    act = torch.finfo(decoder.dtype).bits // 8
    c0 = decoder.cfg.block_channels[0]
    c1 = decoder.cfg.block_channels[1] if len(decoder.cfg.block_channels) > 1 else c0
    # at full resolution: input, GroupNorm/swish temporaries, conv output, residual (≈5 × c0), plus the
    # upsampled input of the last level (c1) and the float32 output (3 × 4 bytes)
    return (5 * c0 + c1) * act + 12


def plan_decode(decoder: Flux2VAEDecoder, batch: int, height: int, width: int, available: int) -> tuple[Optional[int], int]:
    """(tile in latent pixels or None, bytes needed) for decoding ``batch`` images of height×width."""
    per_px = decode_bytes_per_pixel(decoder)
    need = int(batch * height * width * per_px * 1.25)
    halo = decoder.tile_halo()
    tile = mp.vae_tile(height // 8, width // 8, batch=batch, bytes_per_latent_px=per_px * 64, halo=halo,
                       available=available)
    return tile, need


def decode(patcher, latent: torch.Tensor, *, tile_mode: str = "auto") -> tuple[torch.Tensor, str]:
    """Model-space latent (B, 128, gh, gw) → (uint8 images (B, H, W, 3) on the CPU, info text)."""
    decoder = decoder_of(patcher)
    b, gh, gw = lat.comfy_grid(latent, "the latent to decode")
    height, width = gh * 16, gw * 16
    mm.load_models_gpu([patcher], force_full_load=True)
    device = patcher.load_device
    if mm.is_device_cpu(device):
        available = int(mm.get_free_memory(device))
    else:
        available = int(mm.get_free_memory(device)) - int(mm.extra_reserved_memory())
    auto_tile, need = plan_decode(decoder, b, height, width, max(0, available))
    if tile_mode == "off":
        tile = None
    elif tile_mode == "auto":
        tile = auto_tile
    else:
        tile = int(tile_mode)
    tokens = lat.comfy_to_tokens(latent.to(torch.float32))
    images = decoder.decode_to_uint8(tokens, gh, gw, tile=tile)
    how = f"tiled ({tile}×{tile} latent px)" if tile else "untiled"
    info = (f"decoded {b}×{width}×{height} {how} on {device} (untiled needs ≈{mp.gib(need)}, "
            f"{mp.gib(max(0, available))} free)")
    return images, info


# --------------------------------------------------------------------------- encoder

class EncoderHolder(torch.nn.Module):
    """ModelPatcher target for the encoder (loaded lazily from the decoder's file on first encode)."""

    def __init__(self, encoder: Flux2VAEEncoder):
        super().__init__()
        self.encoder = encoder

    def get_dtype(self):
        return self.encoder.dtype


def encoder_patcher_of(patcher) -> comfy.model_patcher.ModelPatcher:
    """The encoder's ModelPatcher for an Ideogram4 VAE Loader output (same file, same compute dtype)."""
    decoder = decoder_of(patcher)
    enc = getattr(patcher, "ideogram4_encoder", None)
    if enc is None:
        info = getattr(patcher, "ideogram4_info", {})
        offload = mm.vae_offload_device()
        encoder = load_vae_encoder(info["source"], device=offload, dtype=decoder.dtype, operations=VAEOpsComfy)
        enc = comfy.model_patcher.ModelPatcher(EncoderHolder(encoder), load_device=patcher.load_device,
                                               offload_device=offload)
        patcher.ideogram4_encoder = enc
    return enc


def encode_bytes_per_pixel(encoder: Flux2VAEEncoder) -> int:
    """Peak activation bytes per input pixel of an untiled encode (the full-resolution level dominates)."""
    act = torch.finfo(encoder.dtype).bits // 8
    return 6 * encoder.cfg.block_channels[0] * act + 12


def plan_encode(encoder: Flux2VAEEncoder, height: int, width: int, available: int) -> tuple[Optional[int], int]:
    """(tile edge in image pixels or None, bytes an untiled encode of one image needs)."""
    per_px = encode_bytes_per_pixel(encoder)
    need = int(height * width * per_px * 1.25)
    if need <= available:
        return None, need
    halo, step = encoder.tile_halo(), 8 * encoder.cfg.downscale
    tile = step
    while tile + step < max(height, width) and (tile + step + 2 * halo) ** 2 * per_px * 1.25 <= available:
        tile += step
    return tile, need


def encode(patcher, images: torch.Tensor, *, tile_mode: str = "auto") -> tuple[torch.Tensor, str]:
    """ComfyUI IMAGE (B, H, W, 3) in [0, 1], H and W multiples of 16 → (model-space latent (B, 128, H/16, W/16)
    float32 on the intermediate device, info text).  ``tile_mode``: ``auto`` (tile only when one image does not fit
    in free memory; batches are split to fit), ``off``, or a tile edge in latent pixels (×8 image pixels)."""
    enc_patcher = encoder_patcher_of(patcher)
    encoder = enc_patcher.model.encoder
    mm.load_models_gpu([enc_patcher], force_full_load=True)
    device = enc_patcher.load_device
    b, h, w = int(images.shape[0]), int(images.shape[1]), int(images.shape[2])
    available = int(mm.get_free_memory(device))
    if not mm.is_device_cpu(device):
        available -= int(mm.extra_reserved_memory())
    available = max(0, available)
    auto_tile, per_image = plan_encode(encoder, h, w, available)
    if tile_mode == "auto":
        tile = auto_tile
    elif tile_mode == "off":
        tile = None
    else:
        tile = 8 * int(tile_mode)  # latent pixels → image pixels
    chunk = 1 if tile else max(1, min(b, available // max(1, per_image)))
    outs = []
    for i in range(0, b, chunk):
        x = from_unit_float(images[i:i + chunk]).to(device)
        tokens, gh, gw = encoder.encode_tokens(x, tile=tile)
        outs.append(lat.tokens_to_comfy(tokens, gh, gw).to(mm.intermediate_device()))
    how = f"tiled ({tile}×{tile} px)" if tile else "untiled"
    info = (f"encoded {b}×{w}×{h} {how} on {device} in {len(outs)} pass(es) (untiled ≈{mp.gib(per_image)} per image, "
            f"{mp.gib(available)} free), {encoder.checkpoint_format}, {str(encoder.dtype).replace('torch.', '')}")
    return torch.cat(outs, 0), info
