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
decode; the reason is logged and shown on the sampler node (:func:`decode_note`).

``IDEOGRAM4_FP8_DECODE`` chooses: ``auto`` (default: fused on CUDA where Triton is installed, two kernels
elsewhere), ``fused`` (also on the CPU, where it needs a C++ compiler: a 2.4–2.8× faster decode on this project's
CPU, ≈ 23 s to compile and probe once per machine), ``two-kernel`` (never compile).
"""

from __future__ import annotations

import functools
import logging
import os
import types
from typing import Callable, Optional

import torch

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


def policy() -> str:
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in POLICIES:
        raise ValueError(f"{ENV}={value!r} is not one of {', '.join(POLICIES)}")
    return value


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
        return bool(has_triton())
    except Exception:  # noqa: BLE001 - an old torch without the helper
        return False


def wanted_on(device_type: str) -> tuple[bool, str]:
    """(whether the policy asks for the fused kernel on this device type, why not when it does not)."""
    choice = policy()
    if choice == "two-kernel":
        return False, f"{ENV}=two-kernel"
    if device_type == "cuda":
        if not _has_triton():
            return False, "Triton is not installed (it compiles the fused kernel; pip install triton)"
        return True, ""
    if device_type == "cpu":
        if choice == "fused":
            return True, ""
        return False, f"not compiled on the CPU unless {ENV}=fused (it needs a C++ compiler)"
    return False, f"no compiled kernel for {device_type}"


def _compiled() -> Callable:
    """A compiled private copy of :func:`scale_codes` (dynamic shapes).  Dynamo keeps its graphs, and counts them
    against its recompile limit (8), per code object: a copy per (device, dtype) holds this decode's own two or
    three graphs (per row, per tensor, a grad mode), so it never reaches the limit nor crowds other code."""
    code = scale_codes.__code__.replace()  # an equal, distinct code object
    return torch.compile(types.FunctionType(code, scale_codes.__globals__, scale_codes.__name__),
                         dynamic=True, fullgraph=True)


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


@functools.cache
def _fused_for(device_key: str, dtype: torch.dtype) -> tuple[Optional[Callable], str]:
    """(the compiled decode to ``dtype`` if it compiles on ``device_key`` and passes the bit-for-bit probe, else None;
    why not)."""
    device = torch.device(device_key)
    fn = _compiled()
    try:
        for weight, scale in _probe_cases(device, dtype):
            with torch.no_grad():
                got = fn(weight, scale)
            want = two_kernel_decode(weight, scale)
            if got.dtype != want.dtype or not torch.equal(got, want):
                bad = int((got != want).sum())
                raise RuntimeError(f"its {_name(dtype)} result differs from the two-kernel decode in {bad} of "
                                   f"{want.numel()} probe values")
    except Exception as exc:  # noqa: BLE001 - no compiler, a Triton error or wrong numbers: keep the exact eager path
        reason = (f"the fused kernel is not used on {device_key} ({_name(dtype)}): {type(exc).__name__}: "
                  f"{_first_line(exc)}")
        log.warning("fp8 decode: %s; decoding with two kernels (cast, then scale)", reason)
        return None, reason
    log.info("fp8 decode on %s (%s): one fused kernel per layer (compiled; probed bit-identical to the two-kernel "
             "decode)", device_key, _name(dtype))
    return fn, ""


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _device_key(device: torch.device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device() if device.index is None else device.index}"
    return device.type


_failed: dict[tuple[str, torch.dtype], str] = {}  # why a kernel that passed its probe failed later (kept off there)


def fused_decoder(device, dtype: torch.dtype = torch.bfloat16) -> tuple[Optional[Callable], str]:
    """(the fused decode to ``dtype`` on ``device`` or None, the reason when None); compiled and probed once per
    device and dtype."""
    device = torch.device(device)
    wanted, why_not = wanted_on(device.type)
    if not wanted:
        return None, why_not
    key = (_device_key(device), dtype)
    if key in _failed:
        return None, _failed[key]
    return _fused_for(*key)


def decode(codes: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``scale_codes`` in one kernel where :func:`fused_decoder` allows it, else in two (same bits either way)."""
    if torch.compiler.is_compiling():  # inside a compiled model: its own compiler fuses the plain expression
        return scale_codes(codes, scale)
    fn, _ = fused_decoder(codes.device, scale.dtype)
    if fn is None:
        return two_kernel_decode(codes, scale)
    try:
        with torch.no_grad():  # one compiled graph for every grad mode; a Parameter passed as the plain tensor it holds
            return fn(codes.detach(), scale.detach())
    except Exception as exc:  # noqa: BLE001 - e.g. a compiler error on a new shape
        key = (_device_key(codes.device), scale.dtype)
        _failed[key] = (f"the fused kernel failed on {key[0]} ({_name(key[1])}) after its probe and is off there for "
                        f"this process: {type(exc).__name__}: {_first_line(exc)}")
        log.warning("fp8 decode: %s; decoding with two kernels (cast, then scale)", _failed[key])
        return two_kernel_decode(codes, scale)


def decode_note(device, dtype: torch.dtype = torch.bfloat16) -> str:
    """The sampler's line about decoding fp8 weights to ``dtype`` on ``device`` (probes once if not done yet)."""
    fn, why_not = fused_decoder(device, dtype)
    if fn is not None:
        return "fp8 decode: one fused kernel per layer (compiled, probed bit-identical to the reference's decode)"
    return f"fp8 decode: two kernels per layer (cast, then scale; exact) — {why_not}"


def forget_probes() -> None:
    """Drop every probe result and compiled copy (the next decode probes again; tests and a changed policy)."""
    _fused_for.cache_clear()
    _failed.clear()
