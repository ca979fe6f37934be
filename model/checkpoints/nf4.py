"""NF4 codec: bitsandbytes NF4, blocksize 64, no nested statistics (pure torch, bitsandbytes optional).

Packed uint8 (out*in/2, 1), high nibble first, float32 ``absmax`` per 64 elements;
``W = quant_map[code] * absmax`` in float32, then cast once to the compute dtype (what bitsandbytes
does on every backend).  With bitsandbytes installed the decode uses its kernel on CUDA and on the CPU
(identical numbers, ≈9× faster than the pure-torch codec on CPU); bitsandbytes is probed once — imported,
run on one small block set and compared with the pure-torch codec — and a broken native library falls
back to the pure-torch codec below, so every user and CI can run every format.  Without bitsandbytes the
pure-torch arithmetic runs in one compiled kernel where ``nf4_fused`` compiled and probed it (CUDA with Triton by
default), else in chunks.
"""

from __future__ import annotations

import functools
import logging
from typing import Optional

import torch

from . import nf4_fused
from .reader import json_from_tensor, json_to_tensor

log = logging.getLogger(__name__)

NF4_BLOCKSIZE = 64
# bitsandbytes' NF4 code book (float32), index = 4-bit code.
NF4_CODE = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)


def _nf4_code(device) -> torch.Tensor:
    return torch.tensor(NF4_CODE, dtype=torch.float32, device=device)


def quantize_nf4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bitsandbytes-compatible NF4 (blocksize 64): returns (packed uint8 (n/2, 1), absmax float32 (n/64,)).

    Each value takes the nearest code, a value exactly between two codes the lower one, an all-zero block code 7
    (0.0) with absmax 0 — as bitsandbytes does.  A scaled value a rounding step beyond ±1 lands in the end code
    (the buckets are open-ended), so it needs no clamp."""
    flat = weight.detach().reshape(-1).to(torch.float32)
    n = flat.numel()
    if n % NF4_BLOCKSIZE:
        raise ValueError(f"nf4 needs a weight whose size ({n}) is a multiple of the blocksize {NF4_BLOCKSIZE}")
    blocks = flat.view(-1, NF4_BLOCKSIZE)
    absmax = blocks.abs().amax(dim=1)
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38).view(-1, 1))).reshape(-1)
    code = _nf4_code(flat.device)
    bounds = (code[:-1] + code[1:]) / 2
    q = torch.bucketize(scaled, bounds, out_int32=True).to(torch.uint8)
    packed = ((q[::2] << 4) | q[1::2]).unsqueeze(1)
    return packed, absmax


_NF4_CHUNK_BYTES = 1 << 22  # packed bytes decoded per chunk (8M weights): bounds the temporaries
# temporaries of one chunk besides the output: int64 indices (8 B) + two float32 values (8 B) per byte
NF4_CHUNK_TEMP_BYTES = 16 * _NF4_CHUNK_BYTES


def _nf4_byte_table(quant_map: torch.Tensor, device) -> torch.Tensor:
    """(256, 2) float32: the two code values of every packed byte (high nibble first)."""
    code = quant_map.to(device=device, dtype=torch.float32)
    byte = torch.arange(256, device=device)
    return torch.stack([code[byte >> 4], code[byte & 0xF]], dim=1)


def _packed_bytes(packed: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """The packed bytes as a flat uint8 view; ValueError if they cannot hold ``shape`` in whole blocks."""
    flat = packed.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    n = shape[0] * shape[1]
    if flat.numel() * 2 != n or n % NF4_BLOCKSIZE:
        raise ValueError(f"nf4: {flat.numel()} packed bytes cannot hold a {list(shape)} weight in blocks of {NF4_BLOCKSIZE}")
    return flat


def dequantize_nf4_reference(packed: torch.Tensor, absmax: torch.Tensor, quant_map: torch.Tensor,
                             shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """Pure-torch NF4 decode: element 2k = high nibble of byte k; float32 product, one cast.

    Decoded in chunks through a 256-entry byte table so temporaries stay small (a few tens of MB)
    even for the 245M-weight ``llm_cond_proj``; the arithmetic (code · absmax in float32, then one
    cast) is exactly bitsandbytes'.
    """
    flat = _packed_bytes(packed, shape)
    n = shape[0] * shape[1]
    table = _nf4_byte_table(quant_map, flat.device)
    scales = absmax.to(device=flat.device, dtype=torch.float32)
    out = torch.empty(n, dtype=dtype, device=flat.device)
    step = _NF4_CHUNK_BYTES  # a multiple of NF4_BLOCKSIZE / 2, so chunks hold whole blocks
    for start in range(0, flat.numel(), step):
        chunk = flat[start:start + step]
        _decode_chunk(chunk, table, scales[start * 2 // NF4_BLOCKSIZE:], out[start * 2:start * 2 + chunk.numel() * 2])
    return out.view(shape)


def _decode_chunk(chunk: torch.Tensor, table: torch.Tensor, scales: torch.Tensor, out: torch.Tensor) -> None:
    """Decode one chunk of whole blocks into ``out``; its temporaries die on return, before the next chunk's
    (so they are ``NF4_CHUNK_TEMP_BYTES``, not that plus the previous chunk's values)."""
    values = table[chunk.long()].view(-1, NF4_BLOCKSIZE)  # (blocks, 64) float32
    values *= scales[:values.shape[0]].unsqueeze(1)
    out.copy_(values.reshape(-1))


def _bnb_dequantize(packed, absmax, shape, dtype) -> torch.Tensor:
    """bitsandbytes' nf4 kernel through its registered op (``bitsandbytes.functional.dequantize_4bit`` without the
    ``QuantState`` object, which torch.compile cannot trace; the op has a fake kernel): the same kernel, which
    decodes with the standard NF4 table — the files' ``quant_map`` — as the probe checks."""
    return torch.ops.bitsandbytes.dequantize_4bit.default(packed, absmax.to(device=packed.device, dtype=torch.float32),
                                                          NF4_BLOCKSIZE, "nf4", list(shape), dtype)


@torch.compiler.assume_constant_result  # a compiled DiT takes the answer as a constant (no graph break per layer)
def bitsandbytes_decodes(device_type: str) -> bool:
    """bitsandbytes' kernel is installed and passed its probe on ``device_type``."""
    return _bnb_functional(device_type) is not None


@functools.cache
def _bnb_functional(device_type: str = "cpu"):
    """bitsandbytes.functional if it imports AND its kernel on ``device_type`` ("cpu" or "cuda") decodes a probe
    layer bit-identically to the pure-torch codec, else None (probed once per device type).  A broken or
    mismatching native library is logged and not used — bitsandbytes substitutes a stub for a CUDA library it
    cannot load, whose CPU path still works, so each device type is probed on that device."""
    try:
        import bitsandbytes.functional as bnbf  # noqa: WPS433 (optional dependency)
        device = torch.device(device_type)
        gen = torch.Generator().manual_seed(0)
        probe = torch.randn(64, 128, generator=gen)
        packed, absmax = quantize_nf4(probe)
        code = torch.tensor(NF4_CODE, dtype=torch.float32)
        for dtype in (torch.bfloat16, torch.float32):
            got = _bnb_dequantize(packed.to(device), absmax.to(device), (64, 128), dtype)
            want = dequantize_nf4_reference(packed, absmax, code, (64, 128), dtype)
            if got.dtype != dtype or not torch.equal(got.cpu(), want):
                raise RuntimeError(f"its {dtype} decode on {device_type} differs from the NF4 reference")
    except Exception as exc:  # not installed, no usable native library, or wrong numbers
        if not isinstance(exc, ImportError):
            log.warning("bitsandbytes is installed but not used for nf4 decoding on %s (%s); using the pure-torch "
                        "codec", device_type, exc)
        return None
    return bnbf


def dequantize_nf4(packed: torch.Tensor, absmax: torch.Tensor, quant_map: torch.Tensor,
                   shape: tuple[int, int], dtype: torch.dtype, *, use_bitsandbytes: Optional[bool] = None) -> torch.Tensor:
    """NF4 decode. ``use_bitsandbytes=None`` (auto): bitsandbytes' kernel on CUDA, and on CPU for rows of whole
    blocks, when it is installed and passed its probe; else the pure-torch codec (identical numbers)."""
    # bitsandbytes' CPU kernel decodes per row: it is wrong when a row is not whole 64-blocks (measured
    # on 0.50.2: a (512, 416) weight differs from element 448 on), so it is used on CPU only for rows of
    # whole blocks — every Linear of the real model; the tiny test models' 416-wide text projection is not.
    auto = packed.is_cuda or (packed.device.type == "cpu" and shape[1] % NF4_BLOCKSIZE == 0)
    wanted = auto if use_bitsandbytes is None else use_bitsandbytes
    usable = bitsandbytes_decodes(packed.device.type) if wanted else False
    if use_bitsandbytes and not usable:
        raise ValueError("use_bitsandbytes=True but bitsandbytes is not installed or has no usable backend")
    if usable:
        return _bnb_dequantize(packed, absmax, shape, dtype)
    # (inside a compiled model its own compiler fuses the traced chunks)
    if not torch.compiler.is_compiling() and nf4_fused.fused_decoder(packed.device, dtype)[0] is not None:
        flat = _packed_bytes(packed, shape)
        fused = nf4_fused.decode(flat, absmax.to(device=flat.device, dtype=torch.float32),
                                 quant_map.to(device=flat.device, dtype=torch.float32), dtype)
        if fused is not None:
            return fused.view(shape)
    return dequantize_nf4_reference(packed, absmax, quant_map, shape, dtype)


def decode_note(device, dtype: torch.dtype = torch.bfloat16) -> str:
    """The sampler's line about decoding nf4 weights to ``dtype`` on ``device`` (probes once if not done yet)."""
    device = torch.device(device)
    if device.type in ("cuda", "cpu") and bitsandbytes_decodes(device.type):
        rows = " (rows of whole 64-blocks; others: the pure-torch codec)" if device.type == "cpu" else ""
        return f"nf4 decode: bitsandbytes' kernel{rows}, probed bit-identical to the reference's decode"
    fn, why_not = nf4_fused.fused_decoder(device, dtype)
    if fn is not None:
        return "nf4 decode: one compiled kernel per layer (probed bit-identical to the pure-torch decode)"
    return f"nf4 decode: pure torch in chunks (exact; bitsandbytes not used) — {why_not}"


def nf4_quant_state_json(shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """The ``quant_state.bitsandbytes__nf4`` tensor bitsandbytes writes (UTF-8 JSON as uint8)."""
    return json_to_tensor({"quant_type": "nf4", "blocksize": NF4_BLOCKSIZE,
                           "dtype": str(dtype).replace("torch.", ""), "shape": list(shape)})


parse_nf4_quant_state = json_from_tensor
