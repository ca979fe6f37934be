"""GGUF decode in one compiled pass (``model.checkpoints.gguf_fused``): every quantisation type against gguf's own
numpy dequantize, the probe refusing a kernel that is off, the policy, and a GGUF model through the real loader —
bit-identical to the eager decode.

On the CPU the compiled kernel is inductor's C++ code (``IDEOGRAM4_GGUF_DECODE=fused``); on CUDA the same expressions
are Triton code, checked by the CUDA test at the end (``benchmarks/gpu_check.sh`` runs it)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from model.checkpoints import QuantizedLinear, gguf_fused
from model.checkpoints.gguf_codec import BLOCKS, GGUF_QTYPES, dequantize_gguf
from tools.make_test_quantized import random_blocks, write_gguf

gguf = pytest.importorskip("gguf")
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


FUSED = gguf_fused  # the ``policy`` and ``counted`` fixtures (conftest) work on it
# a call to a compiled kernel, as ``counted`` records it: the quantisation type
CALL_KEY = lambda qtype, dtype, flat: qtype


def _file_blocks(qtype, rows=8, cols=1024, seed=5):
    """(numpy blocks as a file holds them, gguf's float32 dequantize of them)."""
    data = random_blocks(qtype, rows, cols, 0.05, seed)
    return data, gguf.quants.dequantize(data, gguf.GGMLQuantizationType[qtype])


@pytest.mark.parametrize("qtype", GGUF_QTYPES)
def test_compiled_decode_of_every_type_equals_gguf_dequantize(qtype, policy, counted):
    """Run in GGUF_QTYPES order in one process: Q2_K, Q3_K and Q6_K after other types is where a symbolic block
    size made inductor mis-broadcast the last scale (the probe caught it; the graph now has static block bytes)."""
    policy("fused")
    data, want = _file_blocks(qtype)
    note = gguf_fused.decode_note("cpu", [qtype], torch.float32)
    assert note == (f"GGUF decode: {qtype}: one compiled kernel per layer (probed bit-identical to the reference's "
                    f"decode)")
    n = len(counted)
    got = dequantize_gguf(torch.from_numpy(data), qtype, (8, 1024), torch.float32)
    assert len(counted) == n + 1  # the layer went through the compiled kernel
    assert np.array_equal(got.numpy().view(np.int32), want.view(np.int32))
    bf16 = dequantize_gguf(torch.from_numpy(data), qtype, (8, 1024), torch.bfloat16)
    assert torch.equal(bf16, torch.from_numpy(want).to(torch.bfloat16))
    assert counted.count(qtype) >= n + 3  # bf16 is its own probed kernel


def test_the_probe_refuses_a_kernel_that_is_one_ulp_off(policy, corrupt_kernel, caplog):
    def one_ulp_off(out):
        out = out.clone()
        out.view(torch.int32)[3, 7] += 1
        return out

    policy("fused")
    corrupt_kernel(one_ulp_off)
    with caplog.at_level(logging.WARNING, logger=gguf_fused.__name__):
        fn, why = gguf_fused.fused_decoder("cpu", "Q4_K", torch.float32)
    assert fn is None
    assert why == ("the fused kernel is not used on cpu (Q4_K → float32): RuntimeError: its Q4_K → float32 result "
                   f"differs from the eager decode in 1 of {gguf_fused.PROBE_BLOCKS * 256} probe values")
    assert "decoding with the eager torch ops (in chunks)" in caplog.text
    data, want = _file_blocks("Q4_K")
    got = dequantize_gguf(torch.from_numpy(data), "Q4_K", (8, 1024), torch.float32)
    assert np.array_equal(got.numpy().view(np.int32), want.view(np.int32))  # the eager decode ran
    assert gguf_fused.decode_note("cpu", ["Q4_K"], torch.float32).startswith(
        "GGUF decode: Q4_K: eager torch ops (exact) — the fused kernel is not used on cpu (Q4_K → float32)")


def test_policy_default_and_errors(policy, counted):
    policy("auto")
    assert gguf_fused.fused_decoder("cpu", "Q8_0") == (
        None, f"not compiled on the CPU unless {gguf_fused.ENV}=fused (it needs a C++ compiler)")
    data, want = _file_blocks("Q8_0")
    assert np.array_equal(dequantize_gguf(torch.from_numpy(data), "Q8_0", (8, 1024), torch.float32).numpy(), want)
    assert counted == []  # nothing compiled by default on the CPU
    policy("eager")
    assert gguf_fused.decode_note("cuda", ["Q4_K", "Q6_K"]) == (
        f"GGUF decode: Q4_K, Q6_K: eager torch ops (exact) — {gguf_fused.ENV}=eager")
    policy("two-kernel")  # fp8's word, not this variable's
    with pytest.raises(ValueError, match=r"IDEOGRAM4_GGUF_DECODE='two-kernel' is not one of auto, fused, eager"):
        gguf_fused.decode_note("cpu", ["Q8_0"])


def test_one_block_tensors_take_the_eager_decode(policy, counted):
    """A block count of one would be specialised by the compiler rather than symbolic: such tiny tensors (never a
    real layer) are decoded eagerly."""
    policy("fused")
    data, want = _file_blocks("Q8_0", rows=1, cols=32)
    got = dequantize_gguf(torch.from_numpy(data), "Q8_0", (1, 32), torch.float32)
    assert np.array_equal(got.numpy(), want) and counted == []


def test_inside_a_compiled_model_the_eager_expressions_are_traced(policy, counted):
    policy("fused")
    data, want = _file_blocks("Q4_K")
    outer = torch.compile(lambda b: dequantize_gguf(b, "Q4_K", (8, 1024), torch.float32), backend="eager",
                          fullgraph=True)
    assert np.array_equal(outer(torch.from_numpy(data)).numpy().view(np.int32), want.view(np.int32))
    assert counted == []  # neither probed nor called from inside the traced model


@pytest.mark.parametrize("qtype", ["Q4_K", "Q8_0"])
def test_a_gguf_model_through_the_compiled_kernel_equals_the_eager_one(qtype, policy, counted, tiny_weights,
                                                                        tiny_forwards, tmp_path):
    """The user path: a ComfyUI-GGUF-layout file through the loader, bf16 forwards with and without text."""
    path = write_gguf(tiny_weights[0], tmp_path / f"ideogram4-{qtype}.gguf", qtype, prefix="model.diffusion_model.")
    policy("eager")
    _, eager = tiny_forwards(path)
    assert counted == []
    policy("fused")
    model, fused = tiny_forwards(path)
    assert all(torch.equal(a, b) for a, b in zip(fused, eager))
    packed = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    layer_calls = len(counted) - 1  # the first call of the type is its probe
    assert packed and layer_calls >= len(packed)  # every packed layer decoded through the kernel (text rows too)


@cuda
@pytest.mark.parametrize("qtype", ["Q4_K", "Q5_K"])  # K-quants (FMA risk); Q8_0, Q6_K: gpu_check's families
def test_cuda_decode_equals_gguf_dequantize(qtype, policy):
    """On the GPU (``gpu_check.sh``): whichever decode the probe picked gives gguf's numbers; the note says which."""
    policy("auto")
    data, want = _file_blocks(qtype, rows=64, cols=4096)
    got = dequantize_gguf(torch.from_numpy(data).cuda(), qtype, (64, 4096), torch.bfloat16).cpu()
    note = gguf_fused.decode_note("cuda", [qtype])
    print(note)
    assert torch.equal(got, torch.from_numpy(want).to(torch.bfloat16)), note
