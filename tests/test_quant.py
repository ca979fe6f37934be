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


def _packed_layer(scheme, w, *, bias=None, dtype=torch.float32):
    """A ``scheme`` QuantizedLinear holding ``w`` quantised (and ``bias``, if given, in ``dtype``)."""
    layer = QuantizedLinear(w.shape[1], w.shape[0], bias=bias is not None, scheme=scheme, dtype=dtype)
    if scheme == "nf4":
        packed, absmax = quantize_nf4(w)
        layer.weight.data, layer.absmax, layer.quant_map = packed, absmax, torch.tensor(NF4_CODE)
    else:
        q, s = (quantize_fp8_rowwise if scheme == "fp8_rowwise" else quantize_fp8_tensorwise)(w)
        layer.weight.data, layer.weight_scale = q, s
    if bias is not None:
        layer.bias.data = bias.to(dtype)
    return layer


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
    layer = _packed_layer(scheme, w, bias=b)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nf4_quantiser_matches_bitsandbytes_on_ties_zero_blocks_and_block_maxima(dtype):
    """Values exactly between two codes take the lower one, an all-zero block code 0.0 with absmax 0, a block's
    maximum code 1.0 — bitsandbytes' choices, byte for byte."""
    code = torch.tensor(NF4_CODE)
    ties = (code[:-1] + code[1:]) / 2  # exact midpoints: with absmax 1 (or 0.5) the scaled values are these
    row = torch.cat([torch.tensor([1.0]), ties, -ties, torch.zeros(64 - 1 - 2 * len(ties))])
    w = torch.stack([row, torch.zeros(64), row * 0.5, -row]).to(dtype)
    packed, absmax = quantize_nf4(w)
    bnb_packed, state = bnb_functional.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
    assert torch.equal(packed, bnb_packed) and torch.equal(absmax, state.absmax)
    assert absmax[1] == 0 and torch.all(packed[32:64] == 0x77)  # the zero block: code 7 (0.0) everywhere
    if dtype == torch.float32:  # (bfloat16 rounds the midpoints off the ties)
        codes = torch.stack([packed[:8, 0] >> 4, packed[:8, 0] & 0xF], 1).reshape(-1)
        assert codes.tolist() == [15] + list(range(15))  # 1.0 → code 15; midpoint i → code i, the lower one


def test_nf4_decode_reads_packed_bytes_stored_as_int8():
    """A packed tensor stored as int8 (its bytes are the same) decodes like the uint8 one."""
    w = _weight(8, 128)
    packed, absmax = quantize_nf4(w)
    code = torch.tensor(NF4_CODE)
    want = dequantize_nf4_reference(packed, absmax, code, (8, 128), torch.float32)
    assert packed.view(torch.int8).min() < 0  # some bytes ≥ 0x80, which int8 reads as negative
    assert torch.equal(dequantize_nf4_reference(packed.view(torch.int8), absmax, code, (8, 128), torch.float32), want)


@pytest.mark.parametrize("nbytes,shape", [(32, (2, 64)), (16, (1, 32))])
def test_nf4_packed_bytes_that_cannot_hold_the_shape_in_whole_blocks_are_named(nbytes, shape):
    packed = torch.zeros(nbytes, 1, dtype=torch.uint8)
    with pytest.raises(ValueError, match=rf"nf4: {nbytes} packed bytes cannot hold a \[{shape[0]}, {shape[1]}\] "
                                         r"weight in blocks of 64"):
        dequantize_nf4_reference(packed, torch.ones(2), torch.tensor(NF4_CODE), shape, torch.float32)


def test_nf4_chunk_temporaries_are_what_the_memory_plan_reserves(monkeypatch):
    """The pure-torch decode's live temporaries beside its output, measured op by op, are the
    ``NF4_CHUNK_TEMP_BYTES`` the memory plan reserves for it (per packed byte of a chunk)."""
    import weakref
    from torch.utils._python_dispatch import TorchDispatchMode
    import model.checkpoints.nf4 as quant

    per_byte = quant.NF4_CHUNK_TEMP_BYTES / quant._NF4_CHUNK_BYTES
    chunk = 1 << 16
    monkeypatch.setattr(quant, "_NF4_CHUNK_BYTES", chunk)
    packed, absmax = quantize_nf4(_weight(48, 8192))  # 196608 bytes: three chunks
    live, peak = {}, [0, 0]

    class Live(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            schema = func._schema
            fresh = not any(r.alias_info for r in schema.returns)  # not a view nor an in-place result
            if fresh and isinstance(out, torch.Tensor):
                key = id(out)
                live[key] = out.untyped_storage().nbytes()
                weakref.finalize(out, live.pop, key, None)
                total = sum(live.values())
                if total > peak[0]:
                    peak[:] = [total, max(live.values())]
            return out

    with Live():
        out = quant.dequantize_nf4_reference(packed, absmax, torch.tensor(NF4_CODE), (48, 8192), torch.bfloat16)
    temporaries = peak[0] - out.numel() * out.element_size()  # the output is the caller's, not a temporary
    assert per_byte * chunk <= temporaries <= per_byte * chunk + 16 * 1024  # + the 256-entry table and its parts


@pytest.fixture
def fresh_probe():
    """bitsandbytes' probe forgotten before and after the test (it is cached per device type)."""
    import model.checkpoints.nf4 as quant
    quant._bnb_functional.cache_clear()
    yield quant
    quant._bnb_functional.cache_clear()


def _wrong_in(dtype, *, cast_to=None):
    """A bitsandbytes kernel that is one ulp off in ``dtype`` only, or (``cast_to``) returns that dtype instead."""
    import model.checkpoints.nf4 as quant
    real = quant._bnb_dequantize

    def kernel(packed, absmax, shape, want):
        out = real(packed, absmax, shape, want)
        if want == dtype and cast_to is not None:
            return out.to(cast_to)
        if want == dtype:
            out.view(torch.int16 if out.element_size() == 2 else torch.int32).view(-1)[3] += 1
        return out
    return kernel


@pytest.mark.parametrize("kernel", [lambda: _wrong_in(torch.bfloat16), lambda: _wrong_in(torch.float32),
                                    lambda: _wrong_in(torch.bfloat16, cast_to=torch.float32)],
                         ids=["bf16-ulp", "fp32-ulp", "bf16-as-fp32"])
def test_bitsandbytes_probe_checks_every_compute_dtype_and_the_result_dtype(fresh_probe, monkeypatch, caplog, kernel):
    monkeypatch.setattr(fresh_probe, "_bnb_dequantize", kernel())
    with caplog.at_level("WARNING"):
        assert fresh_probe._bnb_functional("cpu") is None
    assert "bitsandbytes is installed but not used for nf4 decoding on cpu" in caplog.text
    assert "decode on cpu differs from the NF4 reference" in caplog.text


def test_bitsandbytes_not_installed_is_not_a_warning(fresh_probe, monkeypatch, caplog):
    import sys
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", None)  # `import` raises ImportError
    with caplog.at_level("WARNING"):
        assert fresh_probe._bnb_functional("cpu") is None
    assert caplog.records == []
    assert fresh_probe.decode_note("cpu").startswith("nf4 decode: pure torch in chunks (exact; bitsandbytes not used)")


class _CudaStandIn:
    """Just what ``dequantize_nf4`` asks a packed tensor before choosing a kernel, for a CUDA tensor."""
    is_cuda = True
    device = torch.device("cuda")


def _choose(monkeypatch, quant, packed, shape, *, usable=True, **kwargs):
    """Which decode ``dequantize_nf4`` runs: 'bitsandbytes' or 'pure torch' (both recorded, not run)."""
    monkeypatch.setattr(quant, "bitsandbytes_decodes", lambda device_type: usable)
    monkeypatch.setattr(quant, "_bnb_dequantize", lambda *a: "bitsandbytes")
    monkeypatch.setattr(quant.nf4_fused, "fused_decoder", lambda device, dtype: (None, "off"))
    monkeypatch.setattr(quant, "dequantize_nf4_reference", lambda *a: "pure torch")
    return quant.dequantize_nf4(packed, None, None, shape, torch.bfloat16, **kwargs)


def test_nf4_decode_choice_by_device_row_width_and_request(monkeypatch):
    import model.checkpoints.nf4 as quant
    cpu = torch.zeros(1, dtype=torch.uint8)
    assert _choose(monkeypatch, quant, cpu, (8, 128)) == "bitsandbytes"  # CPU, rows of whole blocks
    assert _choose(monkeypatch, quant, cpu, (8, 96)) == "pure torch"  # CPU, a row of 1.5 blocks
    assert _choose(monkeypatch, quant, _CudaStandIn(), (8, 96)) == "bitsandbytes"  # CUDA: any row width
    assert _choose(monkeypatch, quant, cpu, (8, 96), use_bitsandbytes=True) == "bitsandbytes"
    assert _choose(monkeypatch, quant, cpu, (8, 128), use_bitsandbytes=False) == "pure torch"
    assert _choose(monkeypatch, quant, _CudaStandIn(), (8, 128), usable=False) == "pure torch"
    with pytest.raises(ValueError, match="use_bitsandbytes=True but bitsandbytes is not installed or has no usable"):
        _choose(monkeypatch, quant, cpu, (8, 128), usable=False, use_bitsandbytes=True)


def test_nf4_decode_note_names_the_kernel_per_device(monkeypatch):
    import model.checkpoints.nf4 as quant
    assert quant.decode_note("cpu") == ("nf4 decode: bitsandbytes' kernel (rows of whole 64-blocks; others: the "
                                        "pure-torch codec), probed bit-identical to the reference's decode")
    monkeypatch.setattr(quant, "bitsandbytes_decodes", lambda device_type: device_type == "cuda")
    assert quant.decode_note("cuda") == "nf4 decode: bitsandbytes' kernel, probed bit-identical to the reference's decode"
    monkeypatch.setattr(quant, "bitsandbytes_decodes", lambda device_type: True)  # a probe says yes everywhere
    assert not quant.decode_note("mps").startswith("nf4 decode: bitsandbytes")  # bitsandbytes is only used on cuda/cpu


def test_quantized_linear_refuses_an_unknown_scheme():
    with pytest.raises(ValueError, match=r"unknown quantisation scheme 'fp6'; expected one of \('fp8_rowwise', "):
        QuantizedLinear(64, 8, scheme="fp6")


@pytest.mark.parametrize("scheme", ["fp8_rowwise", "fp8_tensorwise", "nf4"])
def test_an_empty_quantized_linear_has_the_storage_shapes_its_codec_writes(scheme):
    """Before any file is read, the layer's parameters and buffers have the shapes and dtypes the codec produces
    (what ``state_dict`` sizes and ComfyUI's module-size accounting see), the bias the compute dtype."""
    w = _weight(32, 128)
    if scheme == "nf4":
        packed, absmax = quantize_nf4(w)
        want = {"weight": packed, "absmax": absmax, "quant_map": torch.tensor(NF4_CODE)}
    else:
        q, scale = (quantize_fp8_rowwise if scheme == "fp8_rowwise" else quantize_fp8_tensorwise)(w)
        want = {"weight": q, "weight_scale": scale}
    layer = QuantizedLinear(128, 32, bias=True, scheme=scheme, dtype=torch.float16)
    got = {k: (tuple(v.shape), v.dtype) for k, v in layer.state_dict().items()}
    assert got == {**{k: (tuple(v.shape), v.dtype) for k, v in want.items()}, "bias": ((32,), torch.float16)}


def test_quantized_linear_keeps_its_own_copy_of_the_options_and_shows_them():
    options = {"qtype": "Q8_0"}
    layer = QuantizedLinear(64, 8, bias=False, scheme="gguf", options=options)
    options["qtype"] = "Q4_K"  # the caller's dict changes later: the layer does not
    assert layer.options == {"qtype": "Q8_0"}
    assert repr(layer) == "QuantizedLinear(in_features=64, out_features=8, scheme=gguf, qtype=Q8_0)"


@pytest.mark.parametrize("scheme", ["fp8_rowwise", "nf4"])
def test_dequantized_weight_decodes_on_the_device_asked_for(scheme):
    """The packed tensors move to ``device`` and the decode runs there (``meta`` stands in for a GPU here)."""
    layer = _packed_layer(scheme, _weight(32, 128))
    got = layer.dequantized_weight(torch.bfloat16, device="meta")
    assert got.device.type == "meta" and got.shape == (32, 128) and got.dtype == torch.bfloat16
    assert layer.weight.device.type == "cpu"  # the layer's own storage stays where it is


def test_float8_storage_travels_as_uint8_to_a_device_without_float8(monkeypatch):
    import model.checkpoints.fp8 as fp8
    import model.checkpoints.packed_linear as packed_linear
    layer = _packed_layer("fp8_rowwise", _weight(32, 128))
    want = layer.dequantized_weight(torch.bfloat16)
    seen = []
    real = packed_linear.dequantize_fp8
    monkeypatch.setattr(packed_linear, "dequantize_fp8", lambda w, *a, **k: seen.append(w.dtype) or real(w, *a, **k))
    monkeypatch.setattr(fp8, "NO_FP8_DEVICES", ("cpu",))  # as on MPS
    got = layer.dequantized_weight(torch.bfloat16)
    assert seen == [torch.uint8] and torch.equal(got, want)  # the table decode, the same numbers


def test_the_fast_fp8_flag_leaves_other_schemes_exact():
    """In a mixed file the opt-in fp8 matmul applies to its fp8 layers only; an nf4 layer stays dequantise + linear."""
    layer = _packed_layer("nf4", _weight(32, 128))
    layer.fast_fp8 = True
    x = torch.randn(3, 128)
    assert torch.equal(layer(x), torch.nn.functional.linear(x, layer.dequantized_weight(torch.float32)))


def test_the_bias_follows_the_input_dtype():
    """A bias stored in the compute dtype (bfloat16) meets a float32 input as float32."""
    layer = _packed_layer("nf4", _weight(32, 128), bias=torch.randn(32), dtype=torch.bfloat16)
    x = torch.randn(3, 128)
    want = torch.nn.functional.linear(x, layer.dequantized_weight(torch.float32), layer.bias.float())
    assert layer.bias.dtype == torch.bfloat16 and torch.equal(layer(x), want)


def test_decode_notes_name_each_family_of_the_model_once():
    from model.checkpoints.packed_linear import decode_notes

    def model(*layers):
        return torch.nn.Sequential(*layers)

    gguf = lambda qtype: QuantizedLinear(256, 8, bias=False, scheme="gguf", options={"qtype": qtype})
    nf4_layer = QuantizedLinear(128, 8, bias=False, scheme="nf4")
    fp8_layer = QuantizedLinear(128, 8, bias=False, scheme="fp8_rowwise")
    assert decode_notes(model(torch.nn.Linear(4, 4)), "cpu", torch.bfloat16) == []
    only_nf4 = decode_notes(model(nf4_layer), "cpu", torch.bfloat16)
    assert len(only_nf4) == 1 and only_nf4[0].startswith("nf4 decode: ")
    only_fp8 = decode_notes(model(fp8_layer), "cpu", torch.bfloat16)
    assert len(only_fp8) == 1 and only_fp8[0].startswith("fp8 decode: ")
    (note,) = decode_notes(model(gguf("Q8_0"), gguf("Q4_K"), gguf("Q8_0")), "cpu", torch.bfloat16)
    assert note.startswith("GGUF decode: Q4_K, Q8_0: ")  # each type once, sorted
    assert [n.split(":")[0] for n in decode_notes(model(gguf("Q8_0"), nf4_layer, fp8_layer), "cpu", torch.bfloat16)] \
        == ["fp8 decode", "nf4 decode", "GGUF decode"]
