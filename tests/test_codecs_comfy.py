"""ComfyUI comfy_quant files (nvfp4, mxfp8, int8, int8 convrot, mixed) written by comfy-kitchen's own
quantisers, the fp8 table decode and the bitsandbytes CPU nf4 path."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from model import load_transformer
from model.checkpoints import QuantizedLinear, dequantize_nf4_reference, nf4
from model.checkpoints.fp8 import FP8_DTYPE, dequantize_fp8, fp8_codes_to
from tools.make_test_checkpoints import write_file
from tools.make_test_quantized import comfy_quant_tensors, convert_comfy, write_comfy

ckt = pytest.importorskip("comfy_kitchen.tensor")
PREFIX = "model.diffusion_model."
COMFY = ("nvfp4", "mxfp8", "int8_tensorwise", "int8_convrot")
STORAGE = {"nvfp4": torch.uint8, "mxfp8": torch.float8_e4m3fn, "int8_tensorwise": torch.int8,
           "int8_convrot": torch.int8, "fp8_scaled": torch.float8_e4m3fn}


def _mixed(key: str):
    """Like Comfy-Org's *_nvfp4_mixed files: attention nvfp4, feed-forward fp8, the rest unquantised."""
    if ".attention." in key:
        return "nvfp4"
    if ".feed_forward." in key:
        return "fp8_scaled"
    return None


def _comfy_truth(raw: dict, module: str, shape: tuple[int, int], dtype=torch.float32) -> torch.Tensor:
    """ComfyUI's own view of one layer: a QuantizedTensor rebuilt from the file, dequantised."""
    conf = json.loads(bytes(raw[f"{module}.comfy_quant"].tolist()))
    w = raw[f"{module}.weight"]
    fmt = conf["format"]
    if fmt == "float8_e4m3fn":
        return w.to(dtype) * raw[f"{module}.weight_scale"].to(dtype)
    layout = {"nvfp4": "TensorCoreNVFP4Layout", "mxfp8": "TensorCoreMXFP8Layout",
              "int8_tensorwise": "TensorWiseINT8Layout"}[fmt]
    cls = ckt.get_layout_class(layout)
    if fmt == "nvfp4":
        params = cls.Params(scale=raw[f"{module}.weight_scale_2"], block_scale=raw[f"{module}.weight_scale"],
                            orig_dtype=dtype, orig_shape=tuple(shape))
    else:
        extra = {"convrot": True, "convrot_groupsize": conf["convrot_groupsize"]} if conf.get("convrot") else {}
        params = cls.Params(scale=raw[f"{module}.weight_scale"], orig_dtype=dtype, orig_shape=tuple(shape), **extra)
    return ckt.QuantizedTensor(w, layout, params).dequantize()


def _reference_file(raw: dict, source: dict, tmp_path) -> str:
    """The float32 file of the dequantised weights (ComfyUI's decode of every quantised layer)."""
    plain = {k[len(PREFIX):]: v for k, v in raw.items()}
    out = {}
    for key in source:
        module = key[: -len(".weight")]
        quantised = key.endswith(".weight") and module + ".comfy_quant" in plain
        out[key] = _comfy_truth(plain, module, source[key].shape) if quantised else plain[key].to(torch.float32)
    return str(write_file(out, tmp_path / "reference_fp32.safetensors", "fp32"))


def _forward(model, cfg):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 15, cfg.in_channels, generator=g)
    feats = torch.randn(1, 6, cfg.llm_features_dim, generator=g)
    return model(x, torch.tensor([0.7]), feats, grid_hw=(3, 5))


@pytest.mark.parametrize("fmt", COMFY + ("mixed",))
def test_comfy_quant_file_runs_like_the_model_of_its_dequantised_weights(fmt, tiny_weights, tiny_cfg, tmp_path):
    path = write_comfy(tiny_weights[0], tmp_path / f"ideogram4_{fmt}.safetensors", _mixed if fmt == "mixed" else fmt)
    raw = load_file(str(path))
    model = load_transformer(path, dtype=torch.float32)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, QuantizedLinear)}
    n_linear = sum(1 for k in raw if k.endswith(".comfy_quant"))
    assert len(layers) == n_linear > 0
    for name, layer in layers.items():  # packed storage stays packed; decode == ComfyUI's decode, bit for bit
        expected_fmt = _mixed(name + ".weight") if fmt == "mixed" else fmt
        assert layer.weight.dtype == STORAGE[expected_fmt], name
        truth = _comfy_truth({k[len(PREFIX):]: v for k, v in raw.items()}, name, (layer.out_features, layer.in_features))
        assert torch.equal(layer.dequantized_weight(torch.float32), truth), name
    reference = load_transformer(_reference_file(raw, tiny_weights[0], tmp_path), dtype=torch.float32)
    got, want = _forward(model, tiny_cfg), _forward(reference, tiny_cfg)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-5
    if fmt == "mixed":
        assert "mixed quantisation (fp8_tensorwise, nvfp4)" in model.checkpoint_format
        assert not isinstance(model.input_proj, QuantizedLinear)


def test_comfy_quant_errors_name_the_layer_and_the_problem(tiny_weights, tmp_path):
    path = write_comfy(tiny_weights[0], tmp_path / "nv.safetensors", "nvfp4")
    raw = load_file(str(path))
    key = PREFIX + "layers.0.attention.o"
    broken = {k: v for k, v in raw.items() if k != key + ".weight_scale_2"}
    save_file(broken, str(tmp_path / "no_scale2.safetensors"))
    with pytest.raises(ValueError, match=r"no_scale2.*layers\.0\.attention\.o is ComfyUI nvfp4 but has no weight_scale_2"):
        load_transformer(tmp_path / "no_scale2.safetensors")
    other = dict(raw)
    other[key + ".comfy_quant"] = torch.tensor(list(b'{"format": "convrot_w4a4"}'), dtype=torch.uint8)
    save_file(other, str(tmp_path / "w4a4.safetensors"))
    with pytest.raises(ValueError, match=r"format 'convrot_w4a4'; supported: float8_e4m3fn, nvfp4, mxfp8, int8_tensorwise"):
        load_transformer(tmp_path / "w4a4.safetensors")
    with open(path, "rb") as f:
        data = f.read()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 1000])
    with pytest.raises(ValueError, match=r"cut\.safetensors: truncated"):
        load_transformer(tmp_path / "cut.safetensors")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_fp8_table_equals_the_native_cast_for_all_256_codes(dtype):
    codes = torch.arange(256, dtype=torch.uint8)
    native = codes.view(FP8_DTYPE).to(dtype)
    bits = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}[dtype]
    for table_input in (codes, codes.view(FP8_DTYPE)):  # the uint8 view (MPS) and float8 storage
        got = fp8_codes_to(table_input, dtype, table=True)
        assert torch.equal(got.view(bits), native.view(bits))  # bit patterns, so NaN codes count too


def test_fp8_table_layer_decode_is_bit_identical(tiny_files):
    model = load_transformer(tiny_files["fp8"]["cond"], dtype=torch.bfloat16)
    layer = model.layers[0].feed_forward.w1
    native = dequantize_fp8(layer.weight, layer.weight_scale, torch.bfloat16, table=False)
    table = dequantize_fp8(layer.weight.view(torch.uint8), layer.weight_scale, torch.bfloat16)  # uint8 → table
    assert torch.equal(native.view(torch.int16), table.view(torch.int16))


def test_bitsandbytes_nf4_cpu_path_is_used_and_bit_identical_per_layer(tiny_files):
    pytest.importorskip("bitsandbytes.functional")
    assert nf4._bnb_functional() is not None  # the probe passed: the CPU kernel is used automatically
    model = load_transformer(tiny_files["nf4"]["cond"], dtype=torch.bfloat16)
    for name, layer in model.named_modules():
        if isinstance(layer, QuantizedLinear):
            shape = (layer.out_features, layer.in_features)
            ref = dequantize_nf4_reference(layer.weight, layer.absmax, layer.quant_map, shape, torch.bfloat16)
            assert torch.equal(layer.dequantized_weight(torch.bfloat16), ref), name


def test_bitsandbytes_is_probed_on_each_device_type_it_decodes_on():
    """A CPU probe says nothing of the CUDA library (bitsandbytes stubs a CUDA library it cannot load while its
    CPU path works): the CUDA decision probes on CUDA — here, with no usable CUDA device, it is refused."""
    pytest.importorskip("bitsandbytes.functional")
    assert nf4._bnb_functional("cpu") is not None
    if not torch.cuda.is_available():
        assert nf4._bnb_functional("cuda") is None
    assert nf4._bnb_functional("meta") is None  # a device bitsandbytes cannot decode on


def test_bitsandbytes_cpu_kernel_is_not_used_for_rows_that_are_not_whole_blocks():
    """bitsandbytes' CPU dequantize_4bit is wrong for a (512, 416) weight (rows of 6.5 blocks): not used there."""
    pytest.importorskip("bitsandbytes.functional")
    w = torch.randn(512, 416, generator=torch.Generator().manual_seed(0))
    packed, absmax = nf4.quantize_nf4(w)
    code = torch.tensor(nf4.NF4_CODE)
    ref = dequantize_nf4_reference(packed, absmax, code, (512, 416), torch.float32)
    assert torch.equal(nf4.dequantize_nf4(packed, absmax, code, (512, 416), torch.float32), ref)
    # the guarded-against behaviour itself (so the guard can be dropped when bitsandbytes fixes it)
    if torch.equal(nf4._bnb_dequantize(packed, absmax, (512, 416), torch.float32), ref):
        pytest.skip("this bitsandbytes decodes partial-block rows correctly; the CPU guard could be relaxed")


def test_broken_bitsandbytes_falls_back_to_the_pure_torch_codec(monkeypatch):
    pytest.importorskip("bitsandbytes.functional")

    def broken(*args, **kwargs):
        raise RuntimeError("native library failed to load")

    nf4._bnb_functional.cache_clear()
    monkeypatch.setattr(nf4, "_bnb_dequantize", broken)  # its kernel call
    try:
        assert nf4._bnb_functional() is None
        w = torch.randn(8, 64)
        packed, absmax = nf4.quantize_nf4(w)
        code = torch.tensor(nf4.NF4_CODE)
        assert torch.equal(nf4.dequantize_nf4(packed, absmax, code, (8, 64), torch.float32),
                           dequantize_nf4_reference(packed, absmax, code, (8, 64), torch.float32))
    finally:
        monkeypatch.undo()
        nf4._bnb_functional.cache_clear()


def test_comfy_quant_split_qkv_and_awq_smoothing_are_refused(tiny_weights, tmp_path):
    """comfy-kitchen layers are not fused from split q/k/v parts, and an AWQ pre_quant_scale (never applied) is refused."""
    sd = tiny_weights[0]
    split = {k: v for k, v in convert_comfy(sd, "int8_tensorwise").items() if ".0.attention.qkv." not in k}
    for letter, part in zip("qkv", sd["layers.0.attention.qkv.weight"].chunk(3)):
        split.update(comfy_quant_tensors(f"layers.0.attention.to_{letter}.weight", part.contiguous(), "int8_tensorwise"))
    path = write_file(split, tmp_path / "split_int8.safetensors", "comfy_int8_tensorwise")
    with pytest.raises(ValueError) as info:
        load_transformer(path)
    assert str(info.value) == (f"{path}: layers.0.attention.qkv: split q/k/v int8_tensorwise weights cannot be fused; "
                               "use the fused-qkv file")
    awq = dict(convert_comfy(sd, "int8_tensorwise"), **{"layers.0.attention.o.pre_quant_scale": torch.ones(512)})
    path = write_file(awq, tmp_path / "awq.safetensors", "comfy_int8_tensorwise")
    with pytest.raises(ValueError) as info:
        load_transformer(path)
    assert str(info.value) == f"{path}: layers.0.attention.o has a pre_quant_scale (AWQ smoothing), which is not supported"
