"""Quantisation codecs: bit-exact with the reference formulas and with bitsandbytes on CPU."""

from __future__ import annotations

import pytest
import torch

from model.checkpoints import (NF4_CODE, QuantizedLinear, dequantize_fp8, dequantize_nf4, dequantize_nf4_reference,
                         nf4_quant_state_json, parse_nf4_quant_state, quantize_fp8_rowwise, quantize_fp8_tensorwise,
                         quantize_nf4)

bnb_functional = pytest.importorskip("bitsandbytes.functional")


def _weight(out=96, inp=256, seed=0):
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed)) * 0.7


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nf4_quantise_and_dequantise_bit_exact_with_bitsandbytes(dtype):
    w = _weight().to(dtype)
    packed, absmax = quantize_nf4(w)
    bnb_packed, state = bnb_functional.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert torch.equal(packed, bnb_packed)
    assert torch.equal(absmax, state.absmax)
    assert torch.equal(torch.tensor(NF4_CODE), state.code.cpu())
    ours = dequantize_nf4_reference(packed, absmax, torch.tensor(NF4_CODE), tuple(w.shape), dtype)
    assert torch.equal(ours, bnb_functional.dequantize_4bit(bnb_packed, state))


def test_nf4_nibble_order_is_high_first():
    packed = torch.tensor([[0x0F]] * 32, dtype=torch.uint8)  # 64 elements: codes 0, 15, 0, 15, ...
    out = dequantize_nf4_reference(packed, torch.tensor([2.0]), torch.tensor(NF4_CODE), (1, 64), torch.float32)
    assert out[0, 0] == -2.0 and out[0, 1] == 2.0


def test_nf4_quant_state_roundtrip_matches_bitsandbytes_json():
    w = _weight(8, 64).to(torch.bfloat16)
    _, state = bnb_functional.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    bnb_json = parse_nf4_quant_state(state.as_dict(packed=True)["quant_state.bitsandbytes__nf4"])
    assert parse_nf4_quant_state(nf4_quant_state_json((8, 64), torch.bfloat16)) == bnb_json


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fp8_rowwise_matches_reference_formula(dtype):
    w = _weight()
    q, scale = quantize_fp8_rowwise(w)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (96,) and scale.dtype == torch.float32
    # Reference quantisation: scale = max|row| / 448, q = fp8(clamp(w / scale)).
    ref_scale = w.abs().amax(1, keepdim=True).clamp(min=1e-12) / 448.0
    assert torch.equal(scale, ref_scale.squeeze(1))
    assert torch.equal(q.float(), (w / ref_scale).clamp(-448, 448).to(torch.float8_e4m3fn).float())
    # Reference Fp8Linear.forward: weight.to(x.dtype) * weight_scale.to(x.dtype).unsqueeze(1)
    assert torch.equal(dequantize_fp8(q, scale, dtype), q.to(dtype) * scale.to(dtype).unsqueeze(1))


def test_fp8_tensorwise_has_scalar_scale_and_small_error():
    w = _weight()
    q, scale = quantize_fp8_tensorwise(w)
    assert scale.shape == ()
    err = (dequantize_fp8(q, scale, torch.float32) - w).abs().max() / w.abs().max()
    assert 0 < err < 0.07  # e4m3 has a 3-bit mantissa


@pytest.mark.parametrize("scheme", ["fp8_rowwise", "fp8_tensorwise", "nf4"])
def test_quantized_linear_forward_is_dequantise_then_linear(scheme):
    w, b = _weight(64, 128), torch.randn(64)
    layer = QuantizedLinear(128, 64, bias=True, scheme=scheme, dtype=torch.float32)
    if scheme == "nf4":
        packed, absmax = quantize_nf4(w)
        layer.weight.data, layer.absmax, layer.quant_map = packed, absmax, torch.tensor(NF4_CODE)
    else:
        q, s = (quantize_fp8_rowwise if scheme == "fp8_rowwise" else quantize_fp8_tensorwise)(w)
        layer.weight.data, layer.weight_scale = q, s
    layer.bias.data = b
    x = torch.randn(5, 128)
    wd = layer.dequantized_weight(torch.float32)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, wd, b))
    assert (wd - w).abs().max() / w.abs().max() < (0.15 if scheme == "nf4" else 0.07)


def test_dequantize_nf4_dispatch_on_cpu_uses_pure_torch():
    w = _weight(4, 64)
    packed, absmax = quantize_nf4(w)
    a = dequantize_nf4(packed, absmax, torch.tensor(NF4_CODE), (4, 64), torch.bfloat16)
    assert torch.equal(a, dequantize_nf4_reference(packed, absmax, torch.tensor(NF4_CODE), (4, 64), torch.bfloat16))


def test_nf4_rejects_sizes_not_multiple_of_blocksize():
    with pytest.raises(ValueError, match="multiple of the blocksize 64"):
        quantize_nf4(torch.randn(3, 10))


def test_nf4_chunked_decode_is_bit_exact_across_chunk_boundaries(monkeypatch):
    import model.checkpoints.nf4 as quant
    monkeypatch.setattr(quant, "_NF4_CHUNK_BYTES", 96)  # 3 blocks per chunk, forces many chunks
    w = _weight(40, 256).to(torch.bfloat16)
    packed, absmax = quantize_nf4(w)
    bnb_packed, state = bnb_functional.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    ours = quant.dequantize_nf4_reference(packed, absmax, torch.tensor(NF4_CODE), (40, 256), torch.bfloat16)
    assert torch.equal(ours, bnb_functional.dequantize_4bit(bnb_packed, state))


def test_bitsandbytes_branch_of_dequantize_nf4_matches_pure_torch():
    """The branch used on CUDA, run through bitsandbytes' CPU backend: same call, same numbers."""
    w = _weight(32, 128).to(torch.bfloat16)
    packed, absmax = quantize_nf4(w)
    code = torch.tensor(NF4_CODE)
    via_bnb = dequantize_nf4(packed, absmax, code, (32, 128), torch.bfloat16, use_bitsandbytes=True)
    assert torch.equal(via_bnb, dequantize_nf4(packed, absmax, code, (32, 128), torch.bfloat16, use_bitsandbytes=False))
