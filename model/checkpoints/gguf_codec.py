"""GGUF block codec: ggml quantisation blocks → weights in the compute dtype, on the weight's device.

The block arithmetic is ``gguf_blocks``' (bit-identical to ``gguf.quants.dequantize``; F16/BF16/F32 tensors the
reader hands over as plain tensors); the cast to the compute dtype happens once, at the end.  Storage is the raw
block bytes, uint8 (rows, bytes per row) — packed in memory, decoded per layer: in one compiled pass where
``gguf_fused`` compiled and probed it for the device (CUDA with Triton by default), else eagerly in chunks.
"""

from __future__ import annotations

import torch

from . import gguf_fused
from .gguf_blocks import BLOCKS, GGUF_QTYPES, QK_K, decode_blocks

__all__ = ["BLOCKS", "GGUF_QTYPES", "QK_K", "decode_blocks", "dequantize_gguf", "row_bytes"]

_CHUNK_BLOCKS = 1 << 16  # blocks decoded at once: bounds the float32/int temporaries (≈ 16M weights)


def row_bytes(qtype: str, row: int) -> int:
    """Bytes of one row of ``row`` elements; ValueError if the row is not whole blocks."""
    block, size = BLOCKS[qtype]
    if row % block:
        raise ValueError(f"{qtype} needs rows that are a multiple of {block} elements, got {row}")
    return row // block * size


def dequantize_gguf(data: torch.Tensor, qtype: str, shape: tuple[int, int], dtype: torch.dtype) -> torch.Tensor:
    """Raw ``qtype`` blocks (uint8, any shape holding rows × bytes per row) → ``shape`` in ``dtype``: the compiled
    decode where ``gguf_fused`` allows it, else the eager one in chunks (the same bits)."""
    if qtype not in BLOCKS:
        raise ValueError(f"GGUF quantisation {qtype} is not supported; supported: {', '.join(GGUF_QTYPES)}")
    block, size = BLOCKS[qtype]
    flat = data.reshape(-1) if data.dtype == torch.uint8 else data.reshape(-1).view(torch.uint8)
    n = shape[0] * shape[1]
    if flat.numel() != n // block * size or n % block:
        raise ValueError(f"GGUF {qtype}: {flat.numel()} bytes cannot hold a {list(shape)} weight")
    if not torch.compiler.is_compiling():  # inside a compiled model its own compiler fuses the traced chunks
        fused = gguf_fused.decode(flat, qtype, dtype)
        if fused is not None:
            return fused.view(shape)
    blocks = flat.view(-1, size)
    out = torch.empty(n, dtype=dtype, device=flat.device)
    for start in range(0, blocks.shape[0], _CHUNK_BLOCKS):
        part = decode_blocks(blocks[start:start + _CHUNK_BLOCKS], qtype)
        out[start * block:start * block + part.numel()] = part.reshape(-1)
    return out.view(shape)
