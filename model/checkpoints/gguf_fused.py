"""GGUF block decode in one compiled pass per layer, bit-identical to the eager codec (``gguf_codec``).

The eager decode of a GGUF layer is 10–30 small torch ops (split the block bytes, unpack nibbles and high bits,
combine the block scales in float32, cast), run in chunks of 65,536 blocks so the float32 and integer temporaries
stay bounded.  On a GPU each op is a kernel over the chunk.  torch's compiler turns the same expressions
(``gguf_blocks``' decoders, unchanged) into fused kernels that read the block bytes and write the weight in the
compute dtype, with no weight-sized temporaries and no Python loop.

Exactness is probed, not assumed (:class:`model.checkpoints.fused_decode.FusedDecode`): before a device decodes a
quantisation type to a dtype with the compiled kernel, the kernel runs there on 1,024 random blocks (every code
and sub-block scale bit pattern; 1,024 random fp16 block scales, subnormal, infinite and NaN ones among them) and
must equal the eager decode bit for bit (NaN for NaN).  Triton may contract the K-quants' ``d·sc·q − dmin·m`` into an FMA; a kernel that does is refused
by the probe, logged, and the eager ops run.  The graph has a symbolic block count and static block bytes:
symbolic byte offsets made inductor mis-broadcast a per-block scale (Q2_K, Q3_K, Q6_K gave wrong values on torch
2.13's CPU backend; the probe caught it).

``IDEOGRAM4_GGUF_DECODE`` chooses: ``auto`` (default: compiled on CUDA where Triton is installed), ``fused`` (also
on the CPU, where it needs a C++ compiler), ``eager`` (never compile).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from .fused_decode import FusedDecode, compile_exact
from .gguf_blocks import BLOCKS, decode_blocks

log = logging.getLogger(__name__)

ENV = "IDEOGRAM4_GGUF_DECODE"
PROBE_BLOCKS = 1024


def _compiled(qtype: str, dtype: torch.dtype) -> Callable:
    """The compiled :func:`_eager` of flat ``qtype`` bytes to ``dtype``: block bytes baked in, block count symbolic."""
    variant = (qtype, dtype)

    def decode_flat(flat: torch.Tensor) -> torch.Tensor:
        return _eager(variant, flat)

    compiled = compile_exact(decode_flat, dynamic=False)

    def run(flat: torch.Tensor) -> torch.Tensor:
        torch._dynamo.mark_dynamic(flat, 0)  # one graph for every layer size (only the block count varies)
        return compiled(flat)

    return run


def _eager(variant: tuple, flat: torch.Tensor) -> torch.Tensor:
    """Flat ``qtype`` bytes → (blocks, elements per block) in ``dtype``, unchunked (the expression compiled)."""
    qtype, dtype = variant
    return decode_blocks(flat.view(-1, BLOCKS[qtype][1]), qtype).to(dtype)


def _probe_cases(device, variant: tuple) -> list[tuple[torch.Tensor]]:
    """``PROBE_BLOCKS`` blocks of random bytes (a fixed seed): every nibble and sub-block scale pattern occurs."""
    qtype, _ = variant
    gen = torch.Generator().manual_seed(0)
    flat = torch.randint(0, 256, (PROBE_BLOCKS * BLOCKS[qtype][1],), dtype=torch.uint8, generator=gen)
    return [(flat.to(device),)]


_DECODE = FusedDecode(
    what="GGUF decode", env=ENV, eager_choice="eager", eager_name="the eager torch ops (in chunks)",
    eager_short="eager", logger=log,
    build=lambda variant: _compiled(*variant), eager=_eager, probe_cases=_probe_cases,
    describe=lambda variant: f"{variant[0]} → {str(variant[1]).removeprefix('torch.')}")


def fused_decoder(device, qtype: str, dtype: torch.dtype = torch.bfloat16) -> tuple[Optional[Callable], str]:
    """(the compiled decode of ``qtype`` to ``dtype`` on ``device`` or None, the reason when None); compiled and
    probed once per device, type and dtype."""
    return _DECODE.decoder(device, (qtype, dtype))


def decode(flat: torch.Tensor, qtype: str, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """Flat uint8 ``qtype`` blocks → (blocks, elements per block) in ``dtype`` with the compiled kernel, or None
    where the eager decode must run."""
    if flat.numel() < 2 * BLOCKS[qtype][1]:  # a one-block tensor: its count would be specialised, not symbolic
        return None
    return _DECODE.run(flat.device, (qtype, dtype), (flat,))


def decode_note(device, qtypes, dtype: torch.dtype = torch.bfloat16) -> str:
    """The sampler's line about decoding the GGUF types ``qtypes`` to ``dtype`` on ``device`` (probes each once)."""
    fused, eager = [], []
    for qtype in qtypes:
        fn, why_not = fused_decoder(device, qtype, dtype)
        (fused if fn is not None else eager).append((qtype, why_not))
    parts = []
    if fused:
        parts.append(f"{', '.join(q for q, _ in fused)}: one compiled kernel per layer (probed bit-identical to "
                     f"the reference's decode)")
    if eager:
        reasons = sorted({why for _, why in eager})
        parts.append(f"{', '.join(q for q, _ in eager)}: eager torch ops (exact) — {'; '.join(reasons)}")
    return "GGUF decode: " + "; ".join(parts)


def forget_probes() -> None:
    """Drop every probe result and compiled kernel (tests and a changed policy)."""
    _DECODE.forget()
