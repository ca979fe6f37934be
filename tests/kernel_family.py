"""Reference goldens per CPU kernel family.

A golden is the official reference's output on one machine.  Its bf16 (and some float32) values depend
on the CPU kernels that ran: oneDNN picks AMX, AVX512-BF16 or AVX2 code and blocks GEMMs by cache size,
ATen's flash-attention kernel vectorises by ISA.  Measured: the reference DiT's bf16 output on an
Intel Xeon with AMX differs from its own run on an AMD EPYC (avx512_bf16) by 0.0156 max abs, while ours
equals the reference bit for bit on both.  Bit-exactness is a property of running the reference's ops
in the reference's order; the numbers it produces are a property of the machine.

So goldens are kept per kernel family (``data/golden_families.json``): each family names the machine it
was recorded on, the folder holding its files and the fingerprints of the machines known to run its
kernels.  The fingerprint (:func:`fingerprint`) hashes a few probe ops (bf16 GEMMs, convolutions, group
norm, SDPA with and without a mask at head dim 256, float32 GEMM) with the torch version and thread count.

:meth:`Goldens.expect` asserts exact agreement with this machine's family; on a machine whose fingerprint
no family lists, agreement with any recorded family passes, otherwise the test's stated bound applies
and a warning names the fingerprint and how to record the family (``tests/README``-style note in the
manifest).  The bound is never looser than the cross-family deviation measured between recorded families.
"""

from __future__ import annotations

import functools
import hashlib
import json
import warnings
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

DATA = Path(__file__).parent / "data"
MANIFEST = DATA / "golden_families.json"


@functools.lru_cache(maxsize=None)
def fingerprint() -> str:
    """12 hex digits naming this machine's CPU kernels (same digits ⇔ same probe outputs, bit for bit)."""
    from model.cpu_math import warm_vector_math

    warm_vector_math()  # the probes' softmax must not be the process's racy first exp (model/cpu_math.py)
    g = torch.Generator().manual_seed(20261202)
    rand = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    probes = []
    with torch.inference_mode():
        for m, k, n in ((22, 512, 1536), (37, 416, 512), (300, 1024, 1024)):
            probes.append(F.linear(rand(m, k).bfloat16(), rand(n, k).bfloat16()))
        probes.append(F.linear(rand(300, 1024), rand(1024, 1024)))
        q, kk, v = (rand(1, 2, 700, 256).bfloat16() for _ in range(3))
        probes.append(F.scaled_dot_product_attention(q, kk, v))
        mask = torch.ones(1, 1, 700, 700, dtype=torch.bool)
        mask[..., :40] = False
        probes.append(F.scaled_dot_product_attention(q, kk, v, attn_mask=mask))
        x = rand(1, 64, 24, 24).bfloat16()
        probes.append(F.conv2d(x, rand(64, 64, 3, 3).bfloat16(), padding=1))
        probes.append(F.group_norm(x, 32))
    h = hashlib.sha256(f"{torch.__version__}|{torch.get_num_threads()}".encode())
    for p in probes:
        h.update(p.contiguous().view(torch.uint8).numpy().tobytes() if p.dtype == torch.bfloat16
                 else p.contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


@functools.lru_cache(maxsize=None)
def manifest() -> dict:
    return json.loads(MANIFEST.read_text())


def families() -> dict:
    return manifest()["families"]


def this_family() -> Optional[str]:
    """The recorded family whose fingerprints include this machine's, or None."""
    fp = fingerprint()
    return next((name for name, fam in families().items() if fp in fam["fingerprints"]), None)


def describe() -> str:
    fam = this_family()
    if fam:
        return f"goldens: kernel family {fam!r} ({families()[fam]['recorded_on']}; fingerprint {fingerprint()})"
    return (f"goldens: this CPU's kernel fingerprint {fingerprint()} is in no recorded family "
            f"({', '.join(families())}); bf16 parity is exact only where it reproduces one of them")


class Goldens:
    """One golden file (``name``) as recorded by every family that has it."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.sets: dict[str, tuple[dict, dict]] = {}
        for fam, info in families().items():
            path = DATA / info["dir"] / name
            if path.exists():
                with safe_open(str(path), "pt") as f:
                    meta = f.metadata() or {}
                self.sets[fam] = (load_file(str(path)), meta)
        assert self.sets, f"no family has {name}"
        family = this_family()
        self.family = family if family in self.sets else None

    @property
    def exact(self) -> bool:
        """This machine's family recorded this file: its values are the reference's here."""
        return self.family is not None

    @property
    def data(self) -> dict:
        """This machine's family's tensors, else the first recorded family's (manifest order)."""
        return self.sets[self.family or next(iter(self.sets))][0]

    @property
    def metadata(self) -> dict:
        return self.sets[self.family or next(iter(self.sets))][1]

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.data[key]

    def expect(self, key: str, ours, equal: Callable, bound: Optional[Callable] = None) -> None:
        """Assert ``equal(ours, golden[key])`` for this machine's family (see :meth:`expect_each`)."""
        self.expect_each(f"{self.name}[{key}]", lambda tensors, meta: equal(ours, tensors[key]),
                         None if bound is None else (lambda tensors, meta: bound(ours, tensors[key])))

    def expect_each(self, what: str, equal: Callable, bound: Optional[Callable] = None) -> None:
        """Assert ``equal(tensors, metadata)`` of this machine's family.

        On a machine no family lists: passes when ``equal`` holds for any recorded family; otherwise asserts
        ``bound(tensors, metadata)`` for every family (the test's stated cross-CPU bound) and warns.
        ``bound=None`` makes the check exact everywhere (values that do not depend on the CPU's kernels).
        """
        if self.exact:
            tensors, meta = self.sets[self.family]
            assert equal(tensors, meta), (f"{what}: ours differs from the reference recorded on this CPU family "
                                          f"({self.family}: {families()[self.family]['recorded_on']})")
            return
        if any(equal(tensors, meta) for tensors, meta in self.sets.values()):
            return
        assert bound is not None, f"{what}: ours equals no recorded family's reference value — {describe()}"
        for fam, (tensors, meta) in self.sets.items():
            assert bound(tensors, meta), f"{what}: ours is outside the cross-CPU bound vs family {fam}"
        warnings.warn(f"{what}: within the cross-CPU bound but not bit-exact — {describe()}. "
                      f"{manifest()['recording']}")
