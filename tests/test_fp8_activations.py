"""The fast fp8 path's per-token activation quantisation in one compiled pass (``model.checkpoints.fp8_activations``):
bit-identical to the eager quantisation (codes and scales), the probe, the policy, the note, and a fast-fp8 layer
through it.

On the CPU the compiled kernel is inductor's C++ code (``IDEOGRAM4_FP8_QUANTIZE=fused``); on CUDA Triton code,
checked by the CUDA test at the end (``benchmarks/gpu_check.sh`` runs it)."""

from __future__ import annotations

import logging

import pytest
import torch

from model.checkpoints import QuantizedLinear, fp8_activations, quantize_fp8_rowwise
from model.checkpoints.fp8_matmul import fp8_linear
from model.checkpoints.fused_decode import differing

FUSED = fp8_activations  # the ``policy`` and ``counted`` fixtures (conftest) work on it
CALL_KEY = lambda dtype, x2d: (dtype, tuple(x2d.shape))  # a call to a compiled kernel, as ``counted`` records it


def _activations(rows=37, cols=192, dtype=torch.bfloat16, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, cols, generator=g) * torch.logspace(-3, 3, rows).unsqueeze(1)
    x[5] = 0.0  # a zero row: the scale's lower clamp
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_compiled_quantisation_equals_the_eager_one(dtype, policy, counted):
    policy("fused")
    x = _activations(dtype=dtype)
    got = fp8_activations.quantize(x)
    assert counted[-1] == (dtype, (37, 192))  # the call itself ran the compiled kernel
    want = fp8_activations.quantize_rows(x)
    assert got[0].dtype == torch.float8_e4m3fn and got[1].shape == (37, 1)
    assert differing(got, want) == (0, 37 * 192 + 37)
    assert fp8_activations.quantize_note("cpu", dtype) == (
        "fp8 activations: quantised in one compiled pass (probed bit-identical to the eager quantisation)")


def test_the_probe_refuses_a_kernel_that_is_one_code_off(policy, corrupt_kernel, caplog):
    def one_code_off(out):
        codes, scale = out
        codes = codes.clone()
        codes.view(torch.uint8)[0, 3] ^= 1
        return codes, scale

    policy("fused")
    corrupt_kernel(one_code_off)
    with caplog.at_level(logging.WARNING, logger=fp8_activations.__name__):
        note = fp8_activations.quantize_note("cpu")
    assert note == ("fp8 activations: quantised by six eager kernels — the fused kernel is not used on cpu (bfloat16): "
                    "RuntimeError: its bfloat16 result differs from the eager quantisation in 1 of 20544 probe values")
    assert "; quantising with six eager kernels (cast, |x|, row max, scale, divide and clamp, cast)" in caplog.text
    x = _activations()
    assert differing(fp8_activations.quantize(x), fp8_activations.quantize_rows(x)) == (0, 37 * 192 + 37)


def test_policy_default_and_errors(policy, counted):
    policy("auto")  # on the CPU: eager unless asked
    assert fp8_activations.quantize_note("cpu") == ("fp8 activations: quantised by six eager kernels — not compiled "
                                                    "on the CPU unless IDEOGRAM4_FP8_QUANTIZE=fused (it needs a C++ "
                                                    "compiler)")
    fp8_activations.quantize(_activations())
    assert counted == []
    policy("sometimes")
    with pytest.raises(ValueError, match="IDEOGRAM4_FP8_QUANTIZE='sometimes' is not one of auto, fused, eager"):
        fp8_activations.quantize(_activations())


def test_inside_a_compiled_model_the_plain_expression_is_traced(policy, counted):
    policy("fused")
    outer = torch.compile(lambda x: fp8_activations.quantize(x), backend="eager", fullgraph=True)
    x = _activations()
    assert differing(outer(x), fp8_activations.quantize_rows(x)) == (0, 37 * 192 + 37)
    assert counted == []  # neither probed nor called from inside the traced model


def test_a_fast_fp8_layer_through_the_compiled_quantisation_equals_the_eager_one(policy, counted):
    """The user path: a packed fp8 layer with the fast path on (emulated on the CPU) gives the same output with
    the compiled quantisation as with the eager one, and its input went through the compiled kernel."""
    g = torch.Generator().manual_seed(1)
    layer = QuantizedLinear(192, 64, bias=True, scheme="fp8_rowwise", dtype=torch.bfloat16)
    layer.weight.data, layer.weight_scale.data = quantize_fp8_rowwise(torch.randn(64, 192, generator=g) * 0.05)
    layer.bias.data = torch.randn(64, generator=g).to(torch.bfloat16)
    layer.fast_fp8 = True
    x = _activations(rows=2 * 37).view(2, 37, 192)
    outs = {}
    for choice in ("eager", "fused"):
        policy(choice)
        with torch.inference_mode():
            outs[choice] = layer(x)
    assert torch.equal(outs["fused"], outs["eager"])
    assert torch.equal(outs["eager"], fp8_linear(x, layer.weight, layer.weight_scale, layer.bias, use_kernel=False))
    assert (torch.bfloat16, (74, 192)) in counted


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_cuda_quantisation_equals_the_eager_one(policy, dtype):
    policy("auto")
    fn, why = fp8_activations.fused_quantizer("cuda", dtype)
    assert fn is not None, why
    x = torch.randn(4608 + 77, 4608, device="cuda").to(dtype)
    assert differing(fp8_activations.quantize(x), fp8_activations.quantize_rows(x)) == (0, x.numel() + x.shape[0])
