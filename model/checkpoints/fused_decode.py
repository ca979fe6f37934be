"""An exact weight decode compiled into one kernel, used only where a bit-for-bit probe says it equals the eager one.

A packed layer's decode (fp8 ``cast × scale``, a GGUF block decode) is a handful of element-wise ops.  Eager torch
runs each as its own weight-sized kernel; torch's compiler (inductor: Triton on CUDA, C++ on the CPU) fuses them
into one pass that reads the packed bytes once and writes the weight once.  Compiled code is not trusted to give
the same bits (a compiler may contract ``a·b − c`` into an FMA, or mis-handle a shape), so before a device decodes
a variant (dtype, quantisation type) with it, the kernel is compiled and run there on probe inputs that cover the
format's codes, and compared bit for bit with the eager decode (NaN where eager gives NaN).  A compile failure or
any mismatch keeps the eager decode, logged with the reason; so does a kernel that passed and fails later.
No graph runs unchecked: calls run under dynamo's ``fail_on_recompile`` stance, so a call that the probed graphs'
guards refuse (inference-mode tensors after a probe outside inference mode, a shape a graph specialised on) is
compiled again and that graph's result on the call's own values compared bit for bit with the eager decode before
it is returned.

One :class:`FusedDecode` per format (``fp8_fused``, ``gguf_fused``, ``nf4_fused``) says how to build its kernel and its probes;
policy, probing, caching, fallbacks and the report line are here.  The policy is an environment variable per
format: ``auto`` (default: fused on CUDA where Triton is installed), ``fused`` (also on the CPU, where it needs a
C++ compiler) or the eager choice (never compile).
"""

from __future__ import annotations

import logging
import os
import types
from typing import Callable, Optional, Sequence

import torch

def private_copy(fn: Callable) -> Callable:
    """``fn`` with an equal but distinct code object (closure kept).  Dynamo keeps its graphs, and counts them
    against its recompile limit (8), per code object: a copy per variant holds only that variant's graphs."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)


# Eager torch rounds after every op; inductor by default keeps intermediates in float32 across a cast to a narrower
# dtype, and Triton lets LLVM contract ``a·b ± c`` into one FMA (one rounding instead of two): a GGUF decode
# (``d·q − m``) would then differ from the eager one in its last bit and the probe would refuse the kernel.  This
# inductor setting keeps eager's roundings and turns Triton's FMA contraction off (``enable_fp_fusion``).
EAGER_NUMERICS = {"emulate_precision_casts": True}


def compile_exact(fn: Callable, *, dynamic: bool) -> Callable:
    """``torch.compile`` of a private copy of ``fn`` (one graph, no breaks) with eager's numerics
    (:data:`EAGER_NUMERICS`)."""
    return torch.compile(private_copy(fn), dynamic=dynamic, fullgraph=True, options=dict(EAGER_NUMERICS))


def same_bits(got: torch.Tensor, want: torch.Tensor) -> int:
    """How many values of ``got`` differ from ``want`` bit for bit (a NaN matches any NaN); all of them if the
    shapes or dtypes differ."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return want.numel()
    if not want.is_floating_point():
        return int((got != want).sum())
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[want.element_size()]
    equal = (got.view(as_int) == want.view(as_int)) | (torch.isnan(got) & torch.isnan(want))
    return int((~equal).sum())


def differing(got, want) -> tuple[int, int]:
    """(values that differ bit for bit, values compared) of a result: one tensor or a tuple of them (a kernel
    with several outputs, such as fp8 codes and their scales)."""
    if isinstance(want, torch.Tensor):
        return (same_bits(got, want) if isinstance(got, torch.Tensor) else want.numel()), want.numel()
    if not isinstance(got, (tuple, list)) or len(got) != len(want):
        return sum(w.numel() for w in want), sum(w.numel() for w in want)
    counts = [differing(g, w) for g, w in zip(got, want)]
    return sum(c[0] for c in counts), sum(c[1] for c in counts)


def _has_triton() -> bool:
    try:
        from torch.utils._triton import has_triton
        return bool(has_triton())
    except Exception:  # noqa: BLE001 - an old torch without the helper
        return False


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else ""


def _is_recompile(exc: RuntimeError) -> bool:
    """Whether ``exc`` is dynamo refusing to compile a new graph under the ``fail_on_recompile`` stance."""
    return "fail_on_recompile" in str(exc)


def _guard_line(exc: RuntimeError) -> str:
    """The first guard that failed, from dynamo's recompile message ("tensor 'codes' dispatch key set mismatch")."""
    lines = [line.strip(" -") for line in str(exc).splitlines()]
    guards = [line.split(": ", 1)[-1] for line in lines if line[:1].isdigit() and "/" in line.split(":")[0]]
    return (guards[0].split(". ")[0] if guards else "a guard failed")[:160]


def device_key(device) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda:{torch.cuda.current_device() if device.index is None else device.index}"
    return device.type


class FusedDecode:
    """Policy, probe and fallbacks of one format's compiled decode.

    ``build(variant)`` returns the compiled callable for a variant (a tuple such as ``(dtype,)`` or
    ``(qtype, dtype)``); ``eager(variant, *args)`` the reference decode; ``probe_cases(device, variant)`` the
    argument tuples the probe runs; ``describe(variant)`` how messages name a variant ("bfloat16",
    "Q4_K → bfloat16").  ``what`` starts log lines ("fp8 decode"), written to ``logger``; ``eager_name`` says
    what runs instead ("two kernels (cast, then scale)"); ``eager_choice`` is the policy value that never compiles;
    ``kind`` and ``doing`` name the operation in messages ("decode", "decoding"; "quantisation", "quantising" for
    the fast fp8 path's activations).  A result may be a tuple of tensors: every one of them is compared.
    """

    def __init__(self, *, what: str, env: str, eager_choice: str, eager_name: str, eager_short: str,
                 build: Callable, eager: Callable, probe_cases: Callable, describe: Callable,
                 logger: logging.Logger, kind: str = "decode", doing: str = "decoding") -> None:
        self.log, self.kind, self.doing = logger, kind, doing
        self.what, self.env, self.eager_choice = what, env, eager_choice
        self.eager_name, self.eager_short = eager_name, eager_short
        self.policies = ("auto", "fused", eager_choice)
        self._build, self._eager, self._probe_cases, self.describe = build, eager, probe_cases, describe
        self._probed: dict[tuple, tuple[Optional[Callable], str]] = {}
        self._failed: dict[tuple, str] = {}  # why a kernel that passed its probe failed later (kept off there)

    def policy(self) -> str:
        value = os.environ.get(self.env, "auto").strip().lower() or "auto"
        if value not in self.policies:
            raise ValueError(f"{self.env}={value!r} is not one of {', '.join(self.policies)}")
        return value

    def wanted_on(self, device_type: str) -> tuple[bool, str]:
        """(whether the policy asks for the fused kernel on this device type, why not when it does not)."""
        choice = self.policy()
        if choice == self.eager_choice:
            return False, f"{self.env}={self.eager_choice}"
        if not hasattr(torch.compiler, "set_stance"):
            return False, (f"torch {torch.__version__} has no torch.compiler.set_stance (torch 2.6 and later), which "
                           f"keeps graphs that were not checked from running")
        if device_type == "cuda":
            if not _has_triton():
                return False, "Triton is not installed (it compiles the fused kernel; pip install triton)"
            return True, ""
        if device_type == "cpu":
            if choice == "fused":
                return True, ""
            return False, f"not compiled on the CPU unless {self.env}=fused (it needs a C++ compiler)"
        return False, f"no compiled kernel for {device_type}"

    def _probe(self, key: str, variant: tuple) -> tuple[Optional[Callable], str]:
        device = torch.device(key)
        where = f"{key} ({self.describe(variant)})"
        try:
            fn = self._build(variant)
            for args in self._probe_cases(device, variant):
                with torch.no_grad():
                    got = fn(*args)
                want = self._eager(variant, *args)
                bad, total = differing(got, want)
                if bad:
                    raise RuntimeError(f"its {self.describe(variant)} result differs from the {self.eager_short} "
                                       f"{self.kind} in {bad} of {total} probe values")
        except torch.OutOfMemoryError:  # a full device says nothing about the kernel: not remembered, raised
            raise
        except Exception as exc:  # noqa: BLE001 - no compiler, a Triton error or wrong numbers: keep the exact eager path
            reason = f"the fused kernel is not used on {where}: {type(exc).__name__}: {_first_line(exc)}"
            self.log.warning("%s: %s; %s with %s", self.what, reason, self.doing, self.eager_name)
            return None, reason
        self.log.info("%s on %s: one fused kernel per layer (compiled; probed bit-identical to the %s %s)",
                      self.what, where, self.eager_short, self.kind)
        return fn, ""

    def decoder(self, device, variant: tuple) -> tuple[Optional[Callable], str]:
        """(the fused decode of ``variant`` on ``device`` or None, the reason when None); compiled and probed once
        per device and variant."""
        device = torch.device(device)
        wanted, why_not = self.wanted_on(device.type)
        if not wanted:
            return None, why_not
        key = (device_key(device), variant)
        if key in self._failed:
            return None, self._failed[key]
        if key not in self._probed:
            self._probed[key] = self._probe(*key)
        return self._probed[key]

    def run(self, device, variant: tuple, args: Sequence[torch.Tensor]) -> Optional[torch.Tensor]:
        """The fused decode of ``args``, or None where the eager decode must run (not wanted, not probed equal,
        or failed now: then it stays off for this device and variant, and says so once).  Nothing is dispatched
        before the decoder is known to run (the eager path's op count stays what it was)."""
        fn, _ = self.decoder(device, variant)
        if fn is None:
            return None
        try:
            with torch.no_grad():  # one grad mode for every call; a Parameter as the plain tensor it holds
                args = tuple(a.detach() for a in args)
                try:
                    with torch.compiler.set_stance("fail_on_recompile"):  # only graphs already checked run
                        return fn(*args)
                except RuntimeError as exc:
                    if not _is_recompile(exc):
                        raise
                    return self._check_new_graph(device, variant, fn, args, _guard_line(exc))
        except torch.OutOfMemoryError:  # the device is full, not the kernel wrong: the host's OOM handling decides
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. a compiler error on a new shape
            self._turn_off(device, variant, f"{type(exc).__name__}: {_first_line(exc)}")
            return None

    def _check_new_graph(self, device, variant: tuple, fn: Callable, args: tuple, why: str) -> torch.Tensor:
        """A call the compiled graphs' guards refuse (inference-mode tensors after a probe outside inference mode,
        a shape a graph specialised on): compiled again, and that graph's result on the call's own values compared
        bit for bit with the eager decode before it is returned; a mismatch returns the eager result and turns
        the kernel off."""
        got = fn(*args)
        want = self._eager(variant, *args)
        bad, total = differing(got, want)
        if bad:
            self._turn_off(device, variant, f"a graph compiled again ({why}) differs from the {self.eager_short} "
                                            f"{self.kind} in {bad} of {total} values")
            return want
        self.log.info("%s on %s (%s): a graph compiled again (%s), bit-identical to the %s %s on the call's values",
                      self.what, device_key(device), self.describe(variant), why, self.eager_short, self.kind)
        return got

    def _turn_off(self, device, variant: tuple, why: str) -> None:
        key = (device_key(device), variant)
        self._failed[key] = (f"the fused kernel failed on {key[0]} ({self.describe(variant)}) after its probe "
                             f"and is off there for this process: {why}")
        self.log.warning("%s: %s; %s with %s", self.what, self._failed[key], self.doing, self.eager_name)

    def forget(self) -> None:
        """Drop every probe result and compiled kernel (the next decode probes again; tests and a changed policy)."""
        self._probed.clear()
        self._failed.clear()
