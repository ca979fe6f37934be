"""One-kernel fp8 decode (``model.checkpoints.fp8_fused``): the probe, the policy, the fallbacks, and the real
loader's fp8 and fp8_scaled models through the fused kernel — bit-identical to the two-kernel decode.

On the CPU the fused kernel is inductor's C++ code (``IDEOGRAM4_FP8_DECODE=fused``); on CUDA the same expression
is Triton code, checked by the CUDA tests at the end (``benchmarks/gpu_check.sh`` runs them)."""

from __future__ import annotations

import logging

import pytest
import torch

from model.checkpoints import dequantize_fp8, fp8_fused, fused_decode, quantize_fp8_rowwise, quantize_fp8_tensorwise
from model.dit import load_transformer

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


FUSED = fp8_fused  # the ``policy`` and ``counted`` fixtures (conftest) work on it
# a call to a compiled kernel, as ``counted`` records it: (codes shape, scale dtype)
CALL_KEY = lambda codes, scale: (tuple(codes.shape), scale.dtype)


def _weights(out=96, inp=256, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * 0.7


@pytest.mark.parametrize("dtype", fp8_fused.PROBE_DTYPES)
def test_probe_covers_every_finite_code(dtype):
    cases = fp8_fused._probe_cases("cpu", dtype)
    codes = cases[0][0][0].view(torch.uint8)
    assert codes.numel() == 254 and 0x7F not in codes.tolist() and 0xFF not in codes.tolist()  # all but the NaNs
    assert [(s.dtype, s.ndim) for _, s in cases] == [(dtype, 2), (dtype, 0)]  # per row and per tensor
    row_scales = cases[0][1].float().squeeze(1)
    assert row_scales.min() < 1e-7 and row_scales.max() > 10


@pytest.mark.parametrize("dtype", fp8_fused.PROBE_DTYPES)
@pytest.mark.parametrize("quantise", [quantize_fp8_rowwise, quantize_fp8_tensorwise])
def test_fused_cpu_decode_is_bit_identical(policy, counted, dtype, quantise):
    policy("fused")
    q, scale = quantise(_weights(seed=1))
    fused = dequantize_fp8(q, scale, dtype)
    assert counted[-1] == (tuple(q.shape), dtype)  # the decode itself ran the compiled kernel
    policy("two-kernel")
    two = dequantize_fp8(q, scale, dtype)
    assert fused.dtype == dtype and torch.equal(fused, two)
    # and both are the reference formula: weight.to(dtype) * scale.to(dtype) per row
    s = scale.to(dtype)
    assert torch.equal(fused, q.to(dtype) * (s.unsqueeze(1) if s.ndim else s))


def test_policy_choices_and_reasons(policy, monkeypatch):
    policy("auto")
    assert fp8_fused.fused_decoder("cpu") == (None, f"not compiled on the CPU unless {fp8_fused.ENV}=fused "
                                                    "(it needs a C++ compiler)")
    assert "two kernels per layer" in fp8_fused.decode_note("cpu")
    monkeypatch.setattr(fused_decode, "_has_triton", lambda: False)
    assert fp8_fused.wanted_on("cuda") == (False, "Triton is not installed (it compiles the fused kernel; "
                                                  "pip install triton)")
    monkeypatch.setattr(fused_decode, "_has_triton", lambda: True)
    assert fp8_fused.wanted_on("cuda") == (True, "")
    assert fp8_fused.wanted_on("mps")[0] is False
    policy("two-kernel")
    assert fp8_fused.wanted_on("cuda") == (False, f"{fp8_fused.ENV}=two-kernel")
    policy("Fused")  # case and spaces do not matter
    assert fp8_fused.wanted_on("cpu") == (True, "")
    policy("fast")
    with pytest.raises(ValueError, match=r"IDEOGRAM4_FP8_DECODE='fast' is not one of auto, fused, two-kernel"):
        fp8_fused.decode_note("cpu")


def test_probe_refuses_a_kernel_one_ulp_off(policy, monkeypatch, caplog):
    """A compiled kernel whose numbers differ anywhere is not used: the decode stays exact, the node says why."""
    def off_by_one_ulp(codes, scale):
        out = fp8_fused.two_kernel_decode(codes, scale)
        flat = out.view(-1)
        flat[7] = torch.nextafter(flat[7], torch.tensor(float("inf"), dtype=flat.dtype))
        return out

    policy("fused")
    monkeypatch.setattr(fp8_fused, "_compiled", lambda: off_by_one_ulp)
    with caplog.at_level(logging.WARNING, logger=fp8_fused.__name__):
        fn, why = fp8_fused.fused_decoder("cpu")
    assert fn is None and why.startswith("the fused kernel is not used on cpu (bfloat16): RuntimeError: its bfloat16 "
                                         "result differs from the two-kernel decode in 1 of 12192 probe values")
    assert "decoding with two kernels" in caplog.text
    q, scale = quantize_fp8_rowwise(_weights())
    assert torch.equal(dequantize_fp8(q, scale, torch.bfloat16), fp8_fused.two_kernel_decode(q, scale.to(torch.bfloat16).unsqueeze(1)))
    assert fp8_fused.decode_note("cpu").startswith("fp8 decode: two kernels per layer (cast, then scale; exact) — "
                                                   "the fused kernel is not used on cpu (bfloat16): RuntimeError: ")


def test_a_compiler_that_fails_keeps_two_kernels(policy, monkeypatch, caplog):
    def no_compiler(codes, scale):
        raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found\nmore lines")

    policy("fused")
    monkeypatch.setattr(fp8_fused, "_compiled", lambda: no_compiler)
    with caplog.at_level(logging.WARNING, logger=fp8_fused.__name__):
        assert fp8_fused.decode_note("cpu") == ("fp8 decode: two kernels per layer (cast, then scale; exact) — the "
                                                "fused kernel is not used on cpu (bfloat16): RuntimeError: InvalidCxxCompiler: "
                                                "No working C++ compiler found")
    assert "No working C++ compiler found" in caplog.text


def test_a_failure_after_the_probe_falls_back_and_says_so(policy, monkeypatch, caplog):
    """A kernel that passed its probe and fails on a later shape (a recompile limit, a compiler error): that decode
    and every later one on the device take two kernels, with the same bits; the warning and the note say why."""
    calls = []

    def fails_after_probe(codes, scale):
        calls.append(codes.shape)
        if tuple(codes.shape) == (96, 256) and scale.dtype == torch.bfloat16:  # the probes' (48, 254) cases pass
            raise RuntimeError("recompile limit (8) hit")
        return fp8_fused.two_kernel_decode(codes, scale)

    policy("fused")
    monkeypatch.setattr(fp8_fused, "_compiled", lambda: fails_after_probe)
    q, scale = quantize_fp8_rowwise(_weights())
    want = fp8_fused.two_kernel_decode(q, scale.to(torch.bfloat16).unsqueeze(1))
    with caplog.at_level(logging.WARNING, logger=fp8_fused.__name__):
        assert torch.equal(dequantize_fp8(q, scale, torch.bfloat16), want)
    assert ("failed on cpu (bfloat16) after its probe and is off there for this process: RuntimeError: recompile "
            "limit (8) hit") in caplog.text
    n = len(calls)
    assert torch.equal(dequantize_fp8(q, scale, torch.bfloat16), want) and len(calls) == n  # not tried again
    assert "failed on cpu (bfloat16) after its probe" in fp8_fused.decode_note("cpu")
    assert fp8_fused.fused_decoder("cpu", torch.float16)[0] is not None  # another dtype is its own kernel


def test_inside_a_compiled_model_the_plain_expression_is_traced(policy, counted):
    """Under torch.compile (TorchCompileModel) the decode is the plain expression in the outer graph: no nested
    compile, no graph break (fullgraph), same bits."""
    policy("fused")
    q, scale = quantize_fp8_rowwise(_weights())
    outer = torch.compile(lambda w, s: dequantize_fp8(w, s, torch.bfloat16), backend="eager", fullgraph=True)
    assert torch.equal(outer(q, scale), fp8_fused.two_kernel_decode(q, scale.to(torch.bfloat16).unsqueeze(1)))
    assert counted == []  # neither probed nor called from inside the traced model


@pytest.mark.parametrize("fmt", ["fp8", "comfy_fp8_scaled"])
def test_loaded_models_through_the_fused_kernel_equal_the_two_kernel_ones(fmt, policy, counted, tiny_files, tiny_cfg):
    """The user path: the loader's fp8 (per row) and fp8_scaled (per tensor) files, forward passes in bf16 with and
    without text, Parameters as the codes — the same bits as the two-kernel decode, and every fp8 layer decoded
    by the compiled kernel."""
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(1, 15, 128, generator=g), torch.tensor([0.4])
    feats = torch.randn(1, 6, tiny_cfg.llm_features_dim, generator=g)
    outs = {}
    for choice in ("two-kernel", "fused"):
        policy(choice)
        model = load_transformer(tiny_files[fmt]["cond"], dtype=torch.bfloat16)
        with torch.inference_mode():
            outs[choice] = (model(x, t, feats, grid_hw=(3, 5)), model(x, t, None, grid_hw=(3, 5)))
    assert all(torch.equal(a, b) for a, b in zip(outs["fused"], outs["two-kernel"]))
    probe = 2
    n_fp8 = sum(1 for m in model.modules() if getattr(m, "scheme", "").startswith("fp8"))
    # The image-only pass skips llm_cond_proj; the first call in inference mode is refused by the probed graph's
    # guards (inference tensors) and made again, compiled and checked: one more call.
    assert n_fp8 > 0 and len(counted) - probe == 2 * n_fp8 - 1 + 1


@cuda
@pytest.mark.parametrize("dtype", fp8_fused.PROBE_DTYPES)
def test_cuda_fused_decode_is_bit_identical(policy, counted, dtype):
    policy("auto")
    fn, why = fp8_fused.fused_decoder("cuda")
    if fn is None:
        pytest.skip(why)
    q, scale = quantize_fp8_rowwise(_weights(1536, 4608, seed=2))
    q, scale = q.cuda(), scale.cuda()
    fused = dequantize_fp8(q, scale, dtype)
    assert counted[-1] == (tuple(q.shape), dtype)
    assert torch.equal(fused, fp8_fused.two_kernel_decode(q, scale.to(dtype).unsqueeze(1)))
    assert torch.equal(fused.cpu(), q.cpu().to(dtype) * scale.to(dtype).unsqueeze(1))  # and the CPU's bits


@cuda
def test_cuda_note_names_the_kernel(policy):
    policy("auto")
    fn, why = fp8_fused.fused_decoder("cuda")
    note = fp8_fused.decode_note("cuda")
    assert note.startswith("fp8 decode: one fused kernel") if fn is not None else why in note
