"""One-kernel fp8 decode: ``bf16(W8) · s`` in a single pass over the weight, bit-identical to the two-kernel one.

The exact decode of an fp8 layer is ``W8.to(bf16) * bf16(scale)`` (``model.checkpoints.fp8``).  Eager torch runs
it as two weight-sized kernels, a cast and a scale, because it cannot multiply float8 by bfloat16 in one op
("Promotion for Float8 Types is not supported").  That moves 7 bytes per weight (read 1, write 2, read 2,
write 2): ≈ 130 GB per step for the two 9.3B passes, ≈ 40 ms of an H100's ≈ 0.33 s fp8 step by our estimate
(not measured: no GPU has been lent).  torch's own compiler (inductor: Triton on CUDA, C++ on the CPU) fuses the
same expression into one kernel: read 1 byte, write 2.

The numbers cannot change: an e4m3 value (4 significant bits) times a bfloat16 / float16 scale (8 / 11 bits) is
exact in the float32 the kernel computes in, so both ways round once, from the same product, to the output dtype
(to float32, both are one float32 multiply).  That argument is not taken on trust: before a device decodes to a
dtype with the fused kernel, the kernel is compiled and run there on every finite e4m3 code against per-row
scales from 1e-8 to 1e2 and a per-tensor scale in that dtype, and compared bit for bit with the two-kernel
decode.  A device that fails the probe, or cannot compile (no Triton, no C++ compiler), keeps the two-kernel
decode; the reason is logged and shown on the sampler node (:func:`decode_note`).  Policy, probe and fallbacks
are :class:`model.checkpoints.fused_decode.FusedDecode`'s (GGUF layers use the same, ``gguf_fused``).

``IDEOGRAM4_FP8_DECODE`` chooses: ``auto`` (default: fused on CUDA where Triton is installed, two kernels
elsewhere), ``fused`` (also on the CPU, where it needs a C++ compiler: a 2.4–2.8× faster decode on this project's
CPU, ≈ 23 s to compile and probe once per machine), ``two-kernel`` (never compile).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch

from .fused_decode import FusedDecode, compile_exact

log = logging.getLogger(__name__)

ENV = "IDEOGRAM4_FP8_DECODE"
POLICIES = ("auto", "fused", "two-kernel")
FP8 = torch.float8_e4m3fn
PROBE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def scale_codes(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The exact decode expression: e4m3 codes in ``scale``'s dtype, times ``scale`` (broadcast)."""
    return codes.to(scale.dtype) * scale


def two_kernel_decode(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """:func:`scale_codes` in eager torch: a cast, then the scale in place (one weight-sized temporary)."""
    return codes.to(scale.dtype).mul_(scale)


def _compiled() -> Callable:
    """A compiled private copy of :func:`scale_codes` (dynamic shapes): its own two or three graphs (per row, per
    tensor, a grad mode) per (device, dtype), never near dynamo's recompile limit nor crowding other code."""
    return compile_exact(scale_codes, dynamic=True)


def _probe_cases(device, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Every finite e4m3 code (both signs, zeros, subnormals, 448) against per-row scales from 1e-8 to 1e2 and a
    per-tensor scale, in ``dtype``."""
    codes = torch.arange(256, dtype=torch.uint8).view(FP8)
    codes = codes[~torch.isnan(codes.to(torch.float32))]
    rows = 48
    weight = codes.unsqueeze(0).expand(rows, -1).contiguous().to(device)
    gen = torch.Generator().manual_seed(0)
    scale = (torch.rand(rows, 1, generator=gen) * torch.logspace(-8, 2, rows).unsqueeze(1)).to(dtype).to(device)
    return [(weight, scale), (weight, scale[rows // 2, 0].clone())]


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


_DECODE = FusedDecode(
    what="fp8 decode", env=ENV, eager_choice="two-kernel", eager_name="two kernels (cast, then scale)",
    eager_short="two-kernel", logger=log,
    build=lambda variant: _compiled(),  # looked up per build: tests replace the compiler
    eager=lambda variant, codes, scale: two_kernel_decode(codes, scale),
    probe_cases=lambda device, variant: _probe_cases(device, variant[0]),
    describe=lambda variant: _name(variant[0]))


def policy() -> str:
    return _DECODE.policy()


def wanted_on(device_type: str) -> tuple[bool, str]:
    """(whether the policy asks for the fused kernel on this device type, why not when it does not)."""
    return _DECODE.wanted_on(device_type)


def fused_decoder(device, dtype: torch.dtype = torch.bfloat16) -> tuple[Optional[Callable], str]:
    """(the fused decode to ``dtype`` on ``device`` or None, the reason when None); compiled and probed once per
    device and dtype."""
    return _DECODE.decoder(device, (dtype,))


def decode(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale_codes`` in one kernel where :func:`fused_decoder` allows it, else in two (same bits either way)."""
    if torch.compiler.is_compiling():  # inside a compiled model: its own compiler fuses the plain expression
        return scale_codes(codes, scale)
    out = _DECODE.run(codes.device, (scale.dtype,), (codes, scale))
    return two_kernel_decode(codes, scale) if out is None else out


def decode_note(device, dtype: torch.dtype = torch.bfloat16) -> str:
    """The sampler's line about decoding fp8 weights to ``dtype`` on ``device`` (probes once if not done yet)."""
    fn, why_not = fused_decoder(device, dtype)
    if fn is not None:
        return "fp8 decode: one fused kernel per layer (compiled, probed bit-identical to the reference's decode)"
    return f"fp8 decode: two kernels per layer (cast, then scale; exact) — {why_not}"


def forget_probes() -> None:
    """Drop every probe result and compiled copy (the next decode probes again; tests and a changed policy)."""
    _DECODE.forget()
