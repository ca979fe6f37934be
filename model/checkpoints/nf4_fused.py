"""nf4 decode in one compiled pass per layer, for devices where bitsandbytes' kernel is not used.

The exact nf4 decode is ``quant_map[code] · absmax`` in float32, then one cast (what bitsandbytes does).  With
bitsandbytes installed and probed its kernel does this; without it the pure-torch codec (``nf4``) runs it in chunks
of 4 MiB of packed bytes through a 256-entry byte table: on a GPU a Python loop of gather, scale and copy kernels
per chunk.  Here the same arithmetic (look up both nibbles of each byte, multiply by the block's absmax, cast) is
compiled into one kernel that reads the packed bytes and writes the weight.

It is used only after a bit-for-bit probe on the device (:class:`model.checkpoints.fused_decode.FusedDecode`):
every byte value, absmax from 1e-8 to 1e2 and a random code book, against the same expression run eagerly.

``IDEOGRAM4_NF4_DECODE`` chooses: ``auto`` (default: compiled on CUDA where Triton is installed and bitsandbytes'
kernel is not used), ``fused`` (also on the CPU, where it needs a C++ compiler), ``eager`` (never compile).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from .fused_decode import FusedDecode, compile_exact

log = logging.getLogger(__name__)

ENV = "IDEOGRAM4_NF4_DECODE"
BLOCKSIZE = 64  # nf4's block: one absmax per 64 weights (``nf4.NF4_BLOCKSIZE``)


def nibble_decode(flat: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Packed bytes (n/2,), high nibble first → (n,) ``dtype``: ``code[nibble] · absmax`` in float32, one cast."""
    values = torch.stack((code[(flat >> 4).long()], code[(flat & 0x0F).long()]), dim=1)
    return (values.view(-1, BLOCKSIZE) * absmax.view(-1, 1)).to(dtype).view(-1)


def _compiled(dtype: torch.dtype) -> Callable:
    """The compiled :func:`nibble_decode` to ``dtype``: block size baked in, byte and block counts symbolic."""
    def decode_flat(flat: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        return nibble_decode(flat, absmax, code, dtype)

    compiled = compile_exact(decode_flat, dynamic=False)

    def run(flat: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor) -> torch.Tensor:
        torch._dynamo.maybe_mark_dynamic(flat, 0)  # one graph for every layer size
        torch._dynamo.maybe_mark_dynamic(absmax, 0)
        return compiled(flat, absmax, code)

    return run


def _probe_cases(device, variant: tuple) -> list[tuple[torch.Tensor, ...]]:
    """Every byte value in every position of a block, against absmax from 1e-8 to 1e2, with a code book of 16 random
    values in [-1, 1] (the arithmetic is checked, not NF4's particular table)."""
    blocks = 64
    flat = torch.arange(256, dtype=torch.uint8).repeat(blocks * BLOCKSIZE // 2 // 256 + 1)[:blocks * BLOCKSIZE // 2]
    flat = flat.view(blocks, -1).roll(1, dims=0).reshape(-1)  # byte values move across block positions
    gen = torch.Generator().manual_seed(0)
    absmax = torch.rand(blocks, generator=gen) * torch.logspace(-8, 2, blocks)
    code = torch.rand(16, generator=gen) * 2 - 1
    return [(flat.to(device), absmax.to(device), code.to(device))]


_DECODE = FusedDecode(
    what="nf4 decode", env=ENV, eager_choice="eager", eager_name="the pure-torch codec (in chunks)",
    eager_short="pure-torch", logger=log,
    build=lambda variant: _compiled(*variant),
    eager=lambda variant, flat, absmax, code: nibble_decode(flat, absmax, code, variant[0]),
    probe_cases=_probe_cases, describe=lambda variant: str(variant[0]).removeprefix("torch."))


def fused_decoder(device, dtype: torch.dtype = torch.bfloat16) -> tuple[Optional[Callable], str]:
    """(the compiled nf4 decode to ``dtype`` on ``device`` or None, the reason when None); probed once each."""
    return _DECODE.decoder(device, (dtype,))


def decode(flat: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The compiled decode (flat weights in ``dtype``), or None where the pure-torch codec must run."""
    if flat.numel() < BLOCKSIZE:  # a single block: its count would be specialised, not symbolic
        return None
    return _DECODE.run(flat.device, (dtype,), (flat, absmax, code))


def forget_probes() -> None:
    """Drop every probe result and compiled kernel (tests and a changed policy)."""
    _DECODE.forget()
