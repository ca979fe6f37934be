"""GGUF quantisation blocks → float32 weights, as torch ops on the blocks' device (the eager codec's arithmetic).

Types: Q8_0, Q6_K, Q5_K, Q5_0, Q5_1, Q4_K, Q4_0, Q4_1, Q3_K, Q2_K, IQ4_NL, IQ4_XS.  Every decoder is a line-for-line
torch port of ``gguf.quants``' numpy ``dequantize_blocks``: block scales are combined in float32 in the same order
(no fp16 scale arithmetic, unlike ComfyUI-GGUF's default), so the result is bit-identical to
``gguf.quants.dequantize`` (tests/test_gguf.py).  The same expressions run eagerly (``gguf_codec``, in chunks) and
compiled into one kernel (``gguf_fused``).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

QK_K = 256
# name: (elements per block, bytes per block) — ggml's GGML_QUANT_SIZES for the supported types
BLOCKS = {"Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24), "Q8_0": (32, 34),
          "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176), "Q6_K": (256, 210),
          "IQ4_NL": (32, 18), "IQ4_XS": (256, 136)}
GGUF_QTYPES = tuple(BLOCKS)
IQ4_NL_VALUES = (-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113)


def _f16(b: torch.Tensor) -> torch.Tensor:
    """(n, 2) bytes → (n, 1) float32 via float16 (what numpy's ``view(np.float16).astype(np.float32)`` does)."""
    return b.contiguous().view(torch.float16).to(torch.float32)


def _split(blocks: torch.Tensor, *sizes: int) -> list[torch.Tensor]:
    return list(torch.split(blocks, [*sizes, blocks.shape[1] - sum(sizes)], dim=1))


def _shifts(values, device, dtype=torch.uint8, shape=(1, 1, -1, 1)) -> torch.Tensor:
    return _constant(tuple(values), torch.device(device), dtype, tuple(shape))


def _constant(values: tuple, device: torch.device, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    """A small constant table on ``device``, made once: built per call it is a blocking host-to-device copy in
    every chunk of every GGUF layer at every step on a GPU.  Traced by torch.compile, it is a graph constant."""
    if torch.compiler.is_compiling():
        return torch.tensor(values, dtype=dtype, device=device).reshape(shape)
    return _cached_constant(values, device, dtype, shape)


@functools.lru_cache(maxsize=256)
def _cached_constant(values: tuple, device: torch.device, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype, device=device).reshape(shape)


def _nibbles(qs: torch.Tensor, n: int, half: int) -> torch.Tensor:
    """Low nibbles then high nibbles of each ``half``-byte group → (n, -1) uint8."""
    q = qs.reshape(n, -1, 1, half) >> _shifts((0, 4), qs.device)
    return (q & 0x0F).reshape(n, -1)


def _bits32(qh: torch.Tensor, n: int) -> torch.Tensor:
    """The 32 high bits of Q5_0/Q5_1 (little-endian uint32) → (n, 32) uint8."""
    word = qh.contiguous().view(torch.int32).reshape(n, 1)
    return ((word >> torch.arange(32, dtype=torch.int32, device=qh.device).reshape(1, 32)) & 1).to(torch.uint8)


def _q4_0(b):
    n = b.shape[0]
    d, qs = _split(b, 2)
    q = _nibbles(qs, n, 16).to(torch.int8) - 8
    return _f16(d) * q.to(torch.float32)


def _q4_1(b):
    n = b.shape[0]
    d, m, qs = _split(b, 2, 2)
    return _f16(d) * _nibbles(qs, n, 16).to(torch.float32) + _f16(m)


def _q5_0(b):
    n = b.shape[0]
    d, qh, qs = _split(b, 2, 4)
    q = (_nibbles(qs, n, 16) | (_bits32(qh, n) << 4)).to(torch.int8) - 16
    return _f16(d) * q.to(torch.float32)


def _q5_1(b):
    n = b.shape[0]
    d, m, qh, qs = _split(b, 2, 2, 4)
    q = (_nibbles(qs, n, 16) | (_bits32(qh, n) << 4)).to(torch.float32)
    return _f16(d) * q + _f16(m)


def _q8_0(b):
    d, x = _split(b, 2)
    return x.contiguous().view(torch.int8).to(torch.float32) * _f16(d)


def _iq4_nl(b):
    n = b.shape[0]
    d, qs = _split(b, 2)
    table = _constant(tuple(IQ4_NL_VALUES), b.device, torch.float32, (-1,))
    return _f16(d) * table[_nibbles(qs, n, 16).long()]


def _iq4_xs(b):
    """IQ4_NL's code book with a 6-bit signed scale per 32 values (4 low bits in ``scales_l``, 2 high in ``scales_h``)."""
    n = b.shape[0]
    d, scales_h, scales_l, qs = _split(b, 2, 2, QK_K // 64)
    low = (scales_l.reshape(n, -1, 1) >> _shifts((0, 4), b.device, shape=(1, 1, 2))).reshape(n, -1) & 0x0F
    word = scales_h.contiguous().view(torch.int16).to(torch.int32).reshape(n, 1) & 0xFFFF
    high = (word >> _shifts(tuple(range(0, 16, 2)), b.device, torch.int32, (1, -1))) & 0x03
    sc = (low.to(torch.int32) | (high << 4)) - 32
    dl = (_f16(d) * sc.to(torch.float32)).reshape(n, -1, 1)
    table = _constant(tuple(IQ4_NL_VALUES), b.device, torch.float32, (-1,))
    q = table[_nibbles(qs, n, 16).long()].reshape(n, -1, 32)
    return (dl * q).reshape(n, QK_K)


def _q2_k(b):
    n = b.shape[0]
    scales, qs, d, dmin = _split(b, QK_K // 16, QK_K // 4, 2)
    dl = (_f16(d) * (scales & 0xF).to(torch.float32)).reshape(n, QK_K // 16, 1)
    ml = (_f16(dmin) * (scales >> 4).to(torch.float32)).reshape(n, QK_K // 16, 1)
    q = (qs.reshape(n, -1, 1, 32) >> _shifts((0, 2, 4, 6), b.device)) & 3
    q = q.reshape(n, QK_K // 16, 16).to(torch.float32)
    return (dl * q - ml).reshape(n, -1)


def _q3_k(b):
    n = b.shape[0]
    hmask, qs, scales, d = _split(b, QK_K // 8, QK_K // 4, 12)
    lscales, hscales = scales[:, :8], scales[:, 8:]
    lscales = (lscales.reshape(n, 1, 8) >> _shifts((0, 4), b.device, shape=(1, 2, 1))).reshape(n, 16)
    hscales = (hscales.reshape(n, 1, 4) >> _shifts((0, 2, 4, 6), b.device, shape=(1, 4, 1))).reshape(n, 16)
    sc = (lscales & 0x0F) | ((hscales & 0x03) << 4)
    sc = (sc.to(torch.int8) - 32).to(torch.float32)
    dl = (_f16(d) * sc).reshape(n, 16, 1)
    ql = qs.reshape(n, -1, 1, 32) >> _shifts((0, 2, 4, 6), b.device)
    qh = hmask.reshape(n, -1, 1, 32) >> _shifts(tuple(range(8)), b.device)
    ql = ql.reshape(n, 16, QK_K // 16) & 3
    qh = (qh.reshape(n, 16, QK_K // 16) & 1) ^ 1
    q = (ql.to(torch.int8) - (qh << 2).to(torch.int8)).to(torch.float32)
    return (dl * q).reshape(n, QK_K)


def _k_scale_min(scales: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    s = scales.reshape(n, 3, 4)
    d, m, m_d = s[:, 0:1], s[:, 1:2], s[:, 2:3]
    sc = torch.cat([d & 0x3F, (m_d & 0x0F) | ((d >> 2) & 0x30)], dim=-1)
    mn = torch.cat([m & 0x3F, (m_d >> 4) | ((m >> 2) & 0x30)], dim=-1)
    return sc.reshape(n, 8), mn.reshape(n, 8)


def _q4_k(b):
    n = b.shape[0]
    d, dmin, scales, qs = _split(b, 2, 2, 12)
    sc, m = _k_scale_min(scales, n)
    dd = (_f16(d) * sc.to(torch.float32)).reshape(n, -1, 1)
    dm = (_f16(dmin) * m.to(torch.float32)).reshape(n, -1, 1)
    q = _nibbles(qs, n, 32).reshape(n, -1, 32).to(torch.float32)
    return (dd * q - dm).reshape(n, QK_K)


def _q5_k(b):
    n = b.shape[0]
    d, dmin, scales, qh, qs = _split(b, 2, 2, 12, QK_K // 8)
    sc, m = _k_scale_min(scales, n)
    dd = (_f16(d) * sc.to(torch.float32)).reshape(n, -1, 1)
    dm = (_f16(dmin) * m.to(torch.float32)).reshape(n, -1, 1)
    ql = _nibbles(qs, n, 32).reshape(n, -1, 32)
    qh = ((qh.reshape(n, -1, 1, 32) >> _shifts(tuple(range(8)), b.device)) & 1).reshape(n, -1, 32)
    q = (ql | (qh << 4)).to(torch.float32)
    return (dd * q - dm).reshape(n, QK_K)


def _q6_k(b):
    n = b.shape[0]
    ql, qh, scales, d = _split(b, QK_K // 2, QK_K // 4, QK_K // 16)
    sc = scales.contiguous().view(torch.int8).to(torch.float32)
    dd = (_f16(d) * sc).reshape(n, QK_K // 16, 1)
    ql = _nibbles(ql, n, 64).reshape(n, -1, 32)
    qh = ((qh.reshape(n, -1, 1, 32) >> _shifts((0, 2, 4, 6), b.device)) & 3).reshape(n, -1, 32)
    q = (ql | (qh << 4)).to(torch.int8) - 32
    return (dd * q.reshape(n, QK_K // 16, -1).to(torch.float32)).reshape(n, QK_K)


_DECODERS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0, "IQ4_NL": _iq4_nl, "IQ4_XS": _iq4_xs,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k}


def decode_blocks(blocks: torch.Tensor, qtype: str) -> torch.Tensor:
    """(n, bytes per block) uint8 ``qtype`` blocks → (n, elements per block) float32."""
    return _DECODERS[qtype](blocks)
