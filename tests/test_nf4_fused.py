"""nf4 decode in one compiled pass (``model.checkpoints.nf4_fused``), for devices where bitsandbytes' kernel is not
used: bit-identical to the pure-torch codec (itself bitsandbytes' numbers), the probe, the policy, the note, and the
loader's nf4 model through the compiled kernel.

On the CPU the compiled kernel is inductor's C++ code (``IDEOGRAM4_NF4_DECODE=fused``); on CUDA Triton code, checked
by the CUDA test at the end (``benchmarks/gpu_check.sh`` runs it)."""

from __future__ import annotations

import logging

import pytest
import torch

from model.checkpoints import QuantizedLinear, nf4, nf4_fused

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

FUSED = nf4_fused  # the ``policy`` and ``counted`` fixtures (conftest) work on it
# a call to a compiled kernel, as ``counted`` records it: (output dtype, packed bytes)
CALL_KEY = lambda dtype, flat, absmax, code: (dtype, flat.numel())


@pytest.fixture
def no_bitsandbytes(monkeypatch):
    """As on a machine without bitsandbytes (or with a broken one): the pure-torch codec decodes."""
    monkeypatch.setattr(nf4, "bitsandbytes_decodes", lambda device_type: False)


def _packed(rows=96, cols=256, seed=0):
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    packed, absmax = nf4.quantize_nf4(w)
    return packed, absmax, torch.tensor(nf4.NF4_CODE), (rows, cols)


def _bits(t):
    return t.view({2: torch.int16, 4: torch.int32}[t.element_size()])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_compiled_decode_equals_the_pure_torch_codec(dtype, policy, counted, no_bitsandbytes):
    policy("fused")
    packed, absmax, code, shape = _packed()
    got = nf4.dequantize_nf4(packed, absmax, code, shape, dtype)
    assert counted[-1] == (dtype, packed.numel())  # the decode itself ran the compiled kernel
    assert torch.equal(_bits(got), _bits(nf4.dequantize_nf4_reference(packed, absmax, code, shape, dtype)))
    assert nf4.decode_note("cpu", dtype) == ("nf4 decode: one compiled kernel per layer (probed bit-identical to the "
                                             "pure-torch decode)")


def test_the_probe_refuses_a_kernel_that_is_one_ulp_off(policy, corrupt_kernel, caplog, no_bitsandbytes):
    def one_ulp_off(out):
        out = out.clone()
        out.view(torch.int16)[100] += 1
        return out

    policy("fused")
    corrupt_kernel(one_ulp_off)
    with caplog.at_level(logging.WARNING, logger=nf4_fused.__name__):
        note = nf4.decode_note("cpu")
    assert note == ("nf4 decode: pure torch in chunks (exact; bitsandbytes not used) — the fused kernel is not used "
                    "on cpu (bfloat16): RuntimeError: its bfloat16 result differs from the pure-torch decode in 1 of "
                    "4096 probe values")
    assert "decoding with the pure-torch codec (in chunks)" in caplog.text
    packed, absmax, code, shape = _packed()
    assert torch.equal(nf4.dequantize_nf4(packed, absmax, code, shape, torch.bfloat16),
                       nf4.dequantize_nf4_reference(packed, absmax, code, shape, torch.bfloat16))


def test_policy_default_and_bitsandbytes_first(policy, counted, monkeypatch):
    policy("auto")
    monkeypatch.setattr(nf4, "bitsandbytes_decodes", lambda device_type: False)
    assert nf4.decode_note("cpu") == ("nf4 decode: pure torch in chunks (exact; bitsandbytes not used) — not compiled "
                                      "on the CPU unless IDEOGRAM4_NF4_DECODE=fused (it needs a C++ compiler)")
    packed, absmax, code, shape = _packed()
    nf4.dequantize_nf4(packed, absmax, code, shape, torch.bfloat16)
    assert counted == []
    monkeypatch.setattr(nf4, "bitsandbytes_decodes", lambda device_type: True)  # a probed bitsandbytes wins
    policy("fused")
    assert nf4.decode_note("cuda").startswith("nf4 decode: bitsandbytes' kernel, probed bit-identical")
    policy("bogus")
    monkeypatch.setattr(nf4, "bitsandbytes_decodes", lambda device_type: False)
    with pytest.raises(ValueError, match=r"IDEOGRAM4_NF4_DECODE='bogus' is not one of auto, fused, eager"):
        nf4.decode_note("cpu")


def test_the_loaders_nf4_model_through_the_compiled_kernel(policy, counted, no_bitsandbytes, tiny_files, tiny_forwards):
    policy("eager")
    _, eager = tiny_forwards(tiny_files["nf4"]["cond"])
    assert counted == []
    policy("fused")
    model, fused = tiny_forwards(tiny_files["nf4"]["cond"])
    assert all(torch.equal(a, b) for a, b in zip(fused, eager))
    n_nf4 = sum(isinstance(m, QuantizedLinear) and m.scheme == "nf4" for m in model.modules())
    assert n_nf4 > 0 and len(counted) - 1 >= n_nf4  # the first call is the probe


@cuda
def test_cuda_decode_equals_the_reference(policy, no_bitsandbytes):
    """On the GPU (``gpu_check.sh``): whichever decode the probe picked gives the reference's numbers."""
    policy("auto")
    packed, absmax, code, shape = _packed(1024, 4096)
    got = nf4.dequantize_nf4(packed.cuda(), absmax.cuda(), code.cuda(), shape, torch.bfloat16).cpu()
    note = nf4.decode_note("cuda")
    print(note)
    assert torch.equal(got, nf4.dequantize_nf4_reference(packed, absmax, code, shape, torch.bfloat16)), note


def test_a_single_block_layer_takes_the_pure_torch_codec(policy, counted, no_bitsandbytes):
    """One block's count would be specialised in the compiled kernel, so it is left to the pure-torch codec."""
    policy("fused")
    packed, absmax, code, shape = _packed(1, 64)
    got = nf4.dequantize_nf4(packed, absmax, code, shape, torch.bfloat16)
    assert torch.equal(got, nf4.dequantize_nf4_reference(packed, absmax, code, shape, torch.bfloat16))
    assert (torch.bfloat16, packed.numel()) not in counted


def test_inside_a_compiled_model_the_decode_is_traced_not_dispatched(policy, counted, no_bitsandbytes):
    """torch.compile of a layer traces the pure-torch codec (its own compiler fuses it) instead of calling the
    separately compiled kernel from inside the graph: one graph, the reference's numbers."""
    policy("fused")
    packed, absmax, code, shape = _packed()
    want = nf4.dequantize_nf4_reference(packed, absmax, code, shape, torch.float32)
    counted.clear()
    layer = torch.compile(lambda p, a, c: nf4.dequantize_nf4(p, a, c, shape, torch.float32), fullgraph=True,
                          backend="eager")
    assert torch.equal(layer(packed, absmax, code), want)
    assert counted == []


def test_compiled_decode_reads_packed_bytes_stored_as_int8(policy, counted, no_bitsandbytes):
    """The kernel's nibble shifts need unsigned bytes: int8 storage (the same bytes) is viewed as uint8 first."""
    policy("fused")
    packed, absmax, code, shape = _packed()
    assert packed.view(torch.int8).min() < 0
    got = nf4.dequantize_nf4(packed.view(torch.int8), absmax, code, shape, torch.bfloat16)
    assert counted[-1] == (torch.bfloat16, packed.numel())
    assert torch.equal(got, nf4.dequantize_nf4_reference(packed, absmax, code, shape, torch.bfloat16))
