"""Opt-in fp8 matmul: the scaling maths (CPU emulation) and its measured deviation from the exact path."""

from __future__ import annotations

import pytest
import torch

from model.checkpoints import QuantizedLinear, quantize_fp8_rowwise
from model.checkpoints.fp8_matmul import emulate_scaled_mm, fp8_linear, quantize_rows, set_fast_fp8, weight_scales


def _layer(out=96, inp=128, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out, inp, generator=g) * 0.05
    layer = QuantizedLinear(inp, out, bias=True, scheme="fp8_rowwise", dtype=torch.bfloat16)
    layer.weight.data, layer.weight_scale.data = quantize_fp8_rowwise(w)
    layer.bias.data = (torch.randn(out, generator=g) * 0.1).to(torch.bfloat16)
    return layer


def test_emulation_equals_dequantised_float32_matmul():
    layer = _layer()
    x = torch.randn(2, 10, 128, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    x8, sx = quantize_rows(x.reshape(-1, 128))
    assert x8.dtype == torch.float8_e4m3fn and sx.shape == (20, 1)
    # independent: both operands dequantised to float32 first, then one float32 matmul
    ref = (x8.float() * sx) @ (layer.weight.float() * layer.weight_scale.view(-1, 1)).t() + layer.bias.float()
    out = fp8_linear(x, layer.weight, layer.weight_scale, layer.bias, use_kernel=False)
    assert out.shape == (2, 10, 96) and out.dtype == torch.bfloat16
    assert torch.allclose(out.float().reshape(-1, 96), ref, rtol=1e-2, atol=1e-3 * float(ref.abs().max()))
    sw = weight_scales(layer.weight_scale, 96)
    f32 = emulate_scaled_mm(x8, layer.weight, sx, sw, layer.bias, torch.float32)
    assert torch.allclose(f32, ref, rtol=0, atol=1e-5 * float(ref.abs().max()))  # scales applied after the sums


def test_activation_quantisation_is_per_token():
    x = torch.tensor([[1.0, -2.0, 0.5], [100.0, 50.0, -400.0]])
    x8, s = quantize_rows(x)
    assert torch.allclose(s.squeeze(1), torch.tensor([2.0, 400.0]) / 448)
    assert float(x8.float().abs().amax(1)[0]) == 448.0 and float(x8.float().abs().amax(1)[1]) == 448.0


def test_fast_path_is_off_by_default_and_its_deviation_is_reported():
    layer = _layer()
    model = torch.nn.Sequential(layer)
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    exact = model(x)
    assert not layer.fast_fp8
    text = set_fast_fp8(model, True)
    fast = model(x)
    assert "NOT reference-exact" in text and "1 layers" in text
    dev = float((fast.float() - exact.float()).abs().max() / exact.float().abs().max())
    assert 0 < dev < 0.1  # e4m3 activations: a few percent at most, never exact
    reported = float(text.split("deviation ")[1].split()[0])
    assert 0 < reported < 0.1
    assert set_fast_fp8(model, False).startswith("fp8 matmul: exact")
    assert torch.equal(model(x), exact)


def test_an_fp32_model_gets_the_kernels_bf16_output_in_fp32():
    """Rowwise-scaled fp8 GEMMs write bf16 only: an fp32 model's call runs them with bf16 out and bias."""
    layer = _layer()
    x = torch.randn(16, 128, generator=torch.Generator().manual_seed(4))
    out = fp8_linear(x, layer.weight, layer.weight_scale, layer.bias, use_kernel=False)
    assert out.dtype == torch.float32
    assert torch.equal(out, out.to(torch.bfloat16).float())
    assert torch.equal(out, fp8_linear(x, layer.weight, layer.weight_scale, layer.bias.float(), use_kernel=False))


@pytest.mark.parametrize("scale_shape", ["rows", "vector", "tensor"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bias", [True, False])
def test_the_kernel_call_meets_torchs_own_argument_checks(scale_shape, dtype, bias):
    """The ``torch._scaled_mm`` call as the fast path makes it on a GPU, checked by torch's meta registration of
    the kernel (the checks its CUDA implementation makes: fp8 operands, column-major mat2, 2-D float32 rowwise
    scales of (M, 1) and (1, N), bias dtype) on meta tensors — the CPU's stand-in for the GPU this suite lacks.
    Every weight-scale layout a file brings: official (N, 1) rows, (N,) vectors, a Comfy fp8_scaled scalar."""
    n, k = 1024, 512
    w8 = torch.empty(n, k, device="meta", dtype=torch.float8_e4m3fn)
    scale = torch.empty({"rows": (n, 1), "vector": (n,), "tensor": ()}[scale_shape], device="meta")
    b = torch.empty(n, device="meta", dtype=torch.bfloat16) if bias else None
    x = torch.empty(2, 77, k, device="meta", dtype=dtype)
    out = fp8_linear(x, w8, scale, b, use_kernel=True)
    assert out.shape == (2, 77, n) and out.dtype == dtype and out.device.type == "meta"


def test_torchs_argument_checks_refuse_what_the_fast_path_must_not_pass():
    """The control of the test above: the meta checks are live, so a row-major weight or 1-D scales fail."""
    a8 = torch.empty(154, 512, device="meta", dtype=torch.float8_e4m3fn)
    w8 = torch.empty(1024, 512, device="meta", dtype=torch.float8_e4m3fn)
    sa, sb = torch.empty(154, 1, device="meta"), torch.empty(1, 1024, device="meta")
    assert torch._scaled_mm(a8, w8.t(), scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16).shape == (154, 1024)
    with pytest.raises(RuntimeError, match="col_major"):
        torch._scaled_mm(a8, w8, scale_a=sa, scale_b=sb, out_dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="2D"):
        torch._scaled_mm(a8, w8.t(), scale_a=sa, scale_b=sb.reshape(-1), out_dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="fp32"):
        torch._scaled_mm(a8, w8.t(), scale_a=sa.to(torch.bfloat16), scale_b=sb, out_dtype=torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="torch._scaled_mm needs CUDA sm89+")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_kernel_matches_emulation_on_cuda(dtype):
    from model.checkpoints.fp8_matmul import kernel_available

    if not kernel_available():
        pytest.skip("no rowwise fp8 _scaled_mm on this GPU")
    layer = _layer(256, 512).cuda()
    x = torch.randn(333, 512, device="cuda").to(dtype)
    k = fp8_linear(x, layer.weight, layer.weight_scale, layer.bias, use_kernel=True)
    e = fp8_linear(x, layer.weight, layer.weight_scale, layer.bias, use_kernel=False)
    assert torch.allclose(k.float(), e.float(), rtol=2e-2, atol=1e-2 * float(e.float().abs().max()))
