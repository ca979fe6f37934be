"""The Qwen3-VL text encoder (``model.text_encoder``) as a ComfyUI-managed model.

The encoder is wrapped in a ``ModelPatcher`` so ComfyUI can put it on the GPU for encoding and
evict it when the DiTs need the memory (``load_models_gpu`` for the DiT pair frees other models
first).  Every layer with weights — Linears (plain and packed), the token embedding, the
RMSNorms — is a ``comfy.ops``-style layer (``ComfyOps``), so when the encoder does not fit it is
partially loaded and the rest streamed, exactly like the DiTs
(:func:`memory_policy.plan_text_encoder`).
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Optional

import torch

import comfy.model_management as mm
import comfy.model_patcher

from ...model.checkpoints.packed_linear import decode_notes
from ...model.text_encoder import configure_cache, load_text_encoder
from . import memory_policy as mp
from .offload import HomePatcher
from .comfy_model import ComfyOps, available_memory, memory_constants, resolve_dtype
from .dtype_flags import flag_note

log = logging.getLogger("ideogram4_native")

DEVICE_CHOICES = ("auto", "cpu")


class TextEncoderHolder(torch.nn.Module):
    """ModelPatcher target (ComfyUI writes ``model.device``, the encoder exposes it read-only)."""

    def __init__(self, encoder: torch.nn.Module):
        super().__init__()
        self.encoder = encoder

    def get_dtype(self):
        return self.encoder.dtype


def load_text_encoder_patcher(source: str | Path, *, tokenizer: Optional[str | Path], dtype_choice: str = "auto",
                              device_choice: str = "auto") -> comfy.model_patcher.ModelPatcher:
    if device_choice not in DEVICE_CHOICES:
        raise ValueError(f"device {device_choice!r} is not one of {DEVICE_CHOICES}")
    load_device = torch.device("cpu") if device_choice == "cpu" else mm.text_encoder_device()
    offload_device = mm.text_encoder_offload_device()
    dtype = resolve_dtype(dtype_choice, load_device, kind="text_enc")
    encoder = load_text_encoder(source, device=offload_device, dtype=dtype, tokenizer=tokenizer, operations=ComfyOps)
    patcher = HomePatcher(TextEncoderHolder(encoder), load_device=load_device, offload_device=offload_device)
    patcher.ideogram4_info = {"source": str(source), "format": encoder.description,
                              "dtype": str(dtype).replace("torch.", ""), "tokenizer": str(tokenizer or "auto"),
                              "warnings": list(encoder.warnings), "dtype_note": flag_note("text_enc", dtype_choice)}
    return patcher


def encoder_of(patcher):
    model = getattr(patcher, "model", None)
    if not isinstance(model, TextEncoderHolder):
        raise ValueError("text_encoder must come from the Ideogram4 Text Encoder Loader")
    return model.encoder


def activation_bytes(encoder, n_tokens: int) -> int:
    cfg = encoder.language_model.config
    act = torch.finfo(encoder.dtype).bits // 8
    hidden, inter, heads = cfg.hidden_size, cfg.intermediate_size, cfg.num_attention_heads
    per_layer = n_tokens * (4 * hidden + 3 * inter) * act + heads * n_tokens * n_tokens * act
    taps = len(encoder.taps) * n_tokens * hidden * act
    features = n_tokens * hidden * len(encoder.taps) * 4 * 2
    return int((per_layer + taps + features) * 1.25) + 64 * mp.MiB


@functools.cache
def follow_cache_flag() -> bool:
    """ComfyUI's ``--cache-none`` also turns off the pack's encoding cache (once; True when it did)."""
    import comfy.cli_args

    if getattr(comfy.cli_args.args, "cache_none", False):
        configure_cache(max_entries=0)
        log.info("Ideogram4: --cache-none: the text-encoding cache is off")
        return True
    return False


def encode(patcher, caption: str) -> tuple[torch.Tensor, list[int], str]:
    """(features (1, L, F) float32 on the CPU, lengths, info) — loads/offloads through ComfyUI."""
    no_cache = follow_cache_flag()
    encoder = encoder_of(patcher)
    ids = encoder.tokenize([caption])
    n_tokens = len(ids[0])
    device = patcher.load_device
    t0 = time.perf_counter()
    act = activation_bytes(encoder, n_tokens)
    mode = "cpu" if mm.is_device_cpu(device) else mp.plan_text_encoder(
        int(patcher.model_size()), available_memory(device), act, memory_constants(device))
    run_on = torch.device("cpu") if mode == "cpu" else device
    head = f"{n_tokens} tokens (limit {encoder.max_text_tokens})"
    hit = encoder.cached(caption, run_on)
    if hit is not None:  # re-queued caption: no need to move 8B parameters onto the GPU
        return hit.features, hit.lengths, f"{head}, cached ({run_on})"
    where = str(run_on)
    if mode == "device":
        mm.load_models_gpu([patcher], memory_required=act, force_full_load=True)
    elif mode == "partial":  # what fits stays resident, the rest is streamed layer by layer
        mm.load_models_gpu([patcher], memory_required=act, minimum_memory_required=act)
        where += f", partially loaded ({mp.gib(patcher.loaded_size())} of {mp.gib(patcher.model_size())} resident)"
    elif not mm.is_device_cpu(device):
        mm.unload_model_and_clones(patcher)  # run where the weights live: system RAM
        log.warning("Ideogram4: not even the text encoder's %s of activations fit on %s; encoding on the CPU",
                    mp.gib(act), device)
    encoded = encoder.encode([caption], compute_device=run_on)
    info = f"{head}, encoded on {where} in {time.perf_counter() - t0:.2f} s" + \
        (" (not cached: --cache-none)" if no_cache else "")
    notes = decode_notes(encoder, run_on, encoder.dtype)  # fp8 / GGUF layers: compiled kernel or eager ops
    return encoded.features, list(encoded.lengths), "\n".join([info, *notes])
