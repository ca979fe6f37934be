"""Per-token fp8 quantisation of activations for the opt-in fast fp8 matmul, in one compiled pass where it is exact.

The fast fp8 path (``fp8_matmul``, off by default, not reference-exact) quantises every Linear's input per row
before ``torch._scaled_mm``: a float32 copy, the row's max |x|, the scale, a divide, a clamp and the cast to e4m3.
Eagerly that is six activation-sized kernels (≈ 39 bytes moved per element); at 1024² on an H100-class GPU a
review estimated ≈ 0.1 s per step, as long as the fp8 GEMMs themselves (not measured: no GPU has been lent).
Compiled (Triton on CUDA) it is one row reduction and one element-wise pass.

The quantisation is already the fast path's deviation from the exact one; compiling it adds none.  It is used only
after a bit-for-bit probe on the device (:class:`model.checkpoints.fused_decode.FusedDecode`): rows from 1e-30 to
1e30 (within the input dtype), zeros, subnormals, a single non-zero value and outliers that set their row's scale,
codes and scales compared with the eager quantisation.  Elsewhere the eager one runs; the numbers are the same.

``IDEOGRAM4_FP8_QUANTIZE`` chooses: ``auto`` (default: compiled on CUDA where Triton is installed), ``fused`` (also
on the CPU, where it needs a C++ compiler), ``eager`` (never compile).
"""

from __future__ import annotations

import logging

import torch

from .fp8 import FP8_DTYPE, FP8_MAX
from .fused_decode import FusedDecode, compile_exact

log = logging.getLogger(__name__)

ENV = "IDEOGRAM4_FP8_QUANTIZE"


def quantize_rows(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row e4m3 quantisation of a (M, K) activation: (x8, scale (M, 1) float32)."""
    xf = x2d.to(torch.float32)
    scale = xf.abs().amax(dim=1, keepdim=True).clamp(min=1e-12) / FP8_MAX
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE), scale


def _compiled(dtype: torch.dtype):
    """The compiled :func:`quantize_rows` for inputs of ``dtype`` (symbolic row and column counts)."""
    return compile_exact(quantize_rows, dynamic=True)


def _probe_cases(device, variant: tuple) -> list[tuple[torch.Tensor]]:
    """64 rows of 320 values: magnitudes 1e-30 … 1e30 (those the dtype holds), a zero row, a row with one non-zero
    value, subnormals of the dtype, and a row near 1 whose scale comes from a few outliers (its other values land
    near zero and in e4m3's subnormals).  Rows whose max |x| is under 1e-12 (the scale's floor) quantise to zeros."""
    dtype = variant[0]
    info = torch.finfo(dtype)
    gen = torch.Generator().manual_seed(0)
    rows, cols = 64, 320
    mags = torch.logspace(-30, 30, rows, dtype=torch.float64).clamp(info.tiny * 4, info.max / 1e3)
    x = torch.randn(rows, cols, generator=gen, dtype=torch.float64) * mags.unsqueeze(1)
    x[0] = 0.0
    x[1] = 0.0
    x[1, 7] = -3.0
    x[2] = info.tiny * torch.rand(cols, generator=gen, dtype=torch.float64)  # subnormals
    x[32, ::5] *= 1e3  # outliers (a row near 1): they set its scale
    return [(x.to(dtype).to(device),), (x[:, :256].to(dtype).to(device),)]


_QUANTIZE = FusedDecode(
    what="fp8 activation quantisation", env=ENV, eager_choice="eager",
    eager_name="six eager kernels (cast, |x|, row max, scale, divide and clamp, cast)", eager_short="eager",
    logger=log, kind="quantisation", doing="quantising",
    build=lambda variant: _compiled(*variant),  # looked up per build: tests replace the compiler
    eager=lambda variant, x2d: quantize_rows(x2d),
    probe_cases=_probe_cases, describe=lambda variant: str(variant[0]).removeprefix("torch."))


def quantize(x2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`quantize_rows` in one compiled pass where the probe allows it, else eagerly (same bits)."""
    if torch.compiler.is_compiling():  # inside a compiled model: its own compiler fuses the plain expression
        return quantize_rows(x2d)
    out = _QUANTIZE.run(x2d.device, (x2d.dtype,), (x2d,))
    return quantize_rows(x2d) if out is None else out


def fused_quantizer(device, dtype: torch.dtype = torch.bfloat16):
    """(the compiled quantisation of ``dtype`` inputs on ``device`` or None, the reason when None); compiled and
    probed once per device and dtype."""
    return _QUANTIZE.decoder(device, (dtype,))


def quantize_note(device, dtype: torch.dtype = torch.bfloat16) -> str:
    """One line for the node: how the fast path quantises activations on ``device`` (probes once if not done)."""
    fn, why_not = fused_quantizer(device, dtype)
    if fn is not None:
        return "fp8 activations: quantised in one compiled pass (probed bit-identical to the eager quantisation)"
    return f"fp8 activations: quantised by six eager kernels — {why_not}"


def forget_probes() -> None:
    """Drop every probe result and compiled kernel (tests and a changed policy)."""
    _QUANTIZE.forget()
