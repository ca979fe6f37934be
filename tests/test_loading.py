"""load_transformer: every checkpoint format through one path, and actionable errors."""

from __future__ import annotations

import json
import pickle
import re

import pytest
import torch
from safetensors.torch import save_file

from model import load_transformer
from model.checkpoints import QuantizedLinear, detect_format, open_checkpoint
from model.checkpoints.formats import QUANT_DESCRIPTIONS
from model.dit import inspect_transformer
from tools.make_test_checkpoints import (convert, quantize_linear, random_state_dict, tiny_config, write_file,
                                         write_hf_folder, write_sharded)
from tools.make_test_quantized import older_comfy_layout

QUANT_TOL = {"fp32": 0.0, "bf16": 2 ** -8, "diffusers": 2 ** -8, "fp8": 0.07, "comfy_fp8_scaled": 0.07, "nf4": 0.15}
EXPECTED_SCHEME = {"fp8": "fp8_rowwise", "comfy_fp8_scaled": "fp8_tensorwise", "nf4": "nf4"}


def _effective_weights(model) -> dict[str, torch.Tensor]:
    """Official-layout float32 view of a loaded model (quantised layers dequantised)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, QuantizedLinear):
            out[f"{name}.weight"] = mod.dequantized_weight(torch.float32)
            if mod.bias is not None:
                out[f"{name}.bias"] = mod.bias.float()
        else:
            for leaf, p in mod.named_parameters(recurse=False):
                out[f"{name}.{leaf}" if name else leaf] = p.float()
    return out


@pytest.mark.parametrize("fmt", list(QUANT_TOL))
def test_every_format_loads_to_the_source_weights(fmt, tiny_files, tiny_weights):
    model = load_transformer(tiny_files[fmt]["cond"], dtype=torch.float32)
    weights = _effective_weights(model)
    source = tiny_weights[0]
    assert set(weights) == set(source)
    for key, ref in source.items():
        err = float((weights[key] - ref).abs().max() / ref.abs().max())
        assert err <= QUANT_TOL[fmt], (key, err)
    schemes = {m.scheme for m in model.modules() if isinstance(m, QuantizedLinear)}
    assert schemes == ({EXPECTED_SCHEME[fmt]} if fmt in EXPECTED_SCHEME else set())
    if fmt in EXPECTED_SCHEME:  # all 211-equivalent Linears quantised, norms/biases/embedding not
        n_linear = sum(1 for k in source if k.endswith(".weight") and source[k].ndim == 2) - 1
        assert sum(isinstance(m, QuantizedLinear) for m in model.modules()) == n_linear


def test_diffusers_split_qkv_equals_fused_bf16_exactly(tiny_files):
    a = load_transformer(tiny_files["bf16"]["cond"], dtype=torch.bfloat16).state_dict()
    b = load_transformer(tiny_files["diffusers"]["cond"], dtype=torch.bfloat16).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fp8_layers_dequantise_like_the_reference(tiny_files):
    from safetensors.torch import load_file
    raw = load_file(str(tiny_files["fp8"]["cond"]))
    model = load_transformer(tiny_files["fp8"]["cond"], dtype=torch.bfloat16)
    layer = model.layers[0].attention.qkv
    expected = raw["layers.0.attention.qkv.weight"].to(torch.bfloat16) * \
        raw["layers.0.attention.qkv.weight_scale"].to(torch.bfloat16).unsqueeze(1)
    assert torch.equal(layer.dequantized_weight(torch.bfloat16), expected)


def test_nf4_layers_dequantise_like_bitsandbytes(tiny_files):
    bnbf = pytest.importorskip("bitsandbytes.functional")
    from safetensors.torch import load_file
    raw = load_file(str(tiny_files["nf4"]["cond"]))
    model = load_transformer(tiny_files["nf4"]["cond"], dtype=torch.bfloat16)
    key = "layers.1.feed_forward.w2.weight"
    state = bnbf.QuantState.from_dict({k[len(key) + 1:]: v for k, v in raw.items() if k.startswith(key + ".")},
                                      device=torch.device("cpu"))
    expected = bnbf.dequantize_4bit(raw[key], state)
    assert expected.dtype == torch.bfloat16
    assert torch.equal(model.layers[1].feed_forward.w2.dequantized_weight(torch.bfloat16), expected)


@pytest.mark.parametrize("fmt", ["diffusers", "fp8", "comfy_fp8_scaled", "nf4"])
def test_quantised_formats_give_close_velocity(fmt, tiny_files, tiny_cfg):
    """Same compute dtype (bf16) as the bf16 file, so only the weight quantisation differs."""
    g = torch.Generator().manual_seed(3)
    x, t = torch.randn(1, 15, 128, generator=g), torch.tensor([0.4])
    feats = torch.randn(1, 6, tiny_cfg.llm_features_dim, generator=g)
    ref = load_transformer(tiny_files["bf16"]["cond"])(x, t, feats, grid_hw=(3, 5))
    out = load_transformer(tiny_files[fmt]["cond"])(x, t, feats, grid_hw=(3, 5))
    err = float((out - ref).abs().max() / ref.abs().max())
    bound = {"diffusers": 0.0, "fp8": 0.1, "comfy_fp8_scaled": 0.1, "nf4": 0.3}[fmt]
    assert err <= bound


@pytest.mark.parametrize("sharded", [False, True])
def test_hf_folder_layout_picks_component(tmp_path, tiny_weights, sharded):
    cond, uncond = tiny_weights
    root = write_hf_folder(tmp_path / "ideogram-4", cond, uncond, "bf16", sharded=sharded)
    a = load_transformer(root, component="transformer", dtype=torch.float32)
    b = load_transformer(root, component="unconditional_transformer", dtype=torch.float32)
    assert torch.equal(a.input_proj.weight, cond["input_proj.weight"].to(torch.bfloat16).float())
    assert torch.equal(b.input_proj.weight, uncond["input_proj.weight"].to(torch.bfloat16).float())
    if sharded:
        index = root / "transformer" / "diffusion_pytorch_model.safetensors.index.json"
        c = load_transformer(index, dtype=torch.float32)
        assert torch.equal(c.input_proj.weight, a.input_proj.weight)


def test_comfy_prefixed_keys_are_accepted(tmp_path, tiny_weights):
    tensors = {"model.diffusion_model." + k: v for k, v in convert(tiny_weights[0], "bf16").items()}
    path = write_file(tensors, tmp_path / "prefixed.safetensors", "bf16")
    assert load_transformer(path).config.num_layers == 2


def test_meta_build_leaves_no_meta_tensors_and_no_grad(tiny_files):
    model = load_transformer(tiny_files["nf4"]["cond"])
    tensors = list(model.parameters()) + list(model.buffers())
    assert all(not t.is_meta for t in tensors)
    assert all(not p.requires_grad for p in model.parameters())


# ----------------------------------------------------------------------------- errors

def _err(path, **kw) -> str:
    with pytest.raises(ValueError) as info:
        load_transformer(path, **kw)
    return str(info.value)


def test_truncated_file(tmp_path, tiny_files):
    data = tiny_files["bf16"]["cond"].read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    msg = _err(bad)
    assert str(bad) in msg and "truncated" in msg


def test_file_cut_inside_its_header_is_truncated(tmp_path, tiny_files):
    data = tiny_files["bf16"]["cond"].read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    bad = tmp_path / "cut_header.safetensors"
    bad.write_bytes(data[: 8 + header_len // 2])
    msg = _err(bad)
    assert (f"{bad}: truncated — header alone is {8 + header_len} bytes, file has {8 + header_len // 2} "
            "(incomplete download?)") in msg
    assert "pickle" not in msg


def test_pickle_checkpoint_is_refused_without_unpickling(tmp_path, monkeypatch):
    bad = tmp_path / "model.ckpt"
    bad.write_bytes(pickle.dumps({"x": 1}))
    monkeypatch.setattr(pickle, "loads", lambda *a, **k: pytest.fail("pickle was loaded"))
    msg = _err(bad)
    assert str(bad) in msg and "pickle" in msg


def test_pickle_bytes_renamed_to_safetensors(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(pickle.dumps({"x": list(range(100))}))
    msg = _err(bad)
    assert "only .safetensors" in msg and str(bad) in msg


@pytest.mark.parametrize("keys,looks_like", [
    ({"decoder.conv_in.weight": (4, 4), "encoder.conv_in.weight": (4, 4)}, "a VAE"),
    ({"double_blocks.0.img_attn.qkv.weight": (4, 4)}, "FLUX"),
    ({"model.layers.0.self_attn.q_proj.weight": (4, 4)}, "language / text-encoder"),
    ({"foo.bar": (2,)}, "unknown model"),
])
def test_other_model_family_is_named(tmp_path, keys, looks_like):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(s) for k, s in keys.items()}, str(path))
    msg = _err(path)
    assert "not an Ideogram 4 diffusion model" in msg and looks_like in msg and str(path) in msg


def test_missing_unexpected_and_wrong_shape_keys(tmp_path, tiny_weights):
    sd = dict(convert(tiny_weights[0], "bf16"))
    del sd["layers.1.ffn_norm2.weight"]
    sd["layers.0.attention.extra.weight"] = torch.zeros(3)
    sd["layers.0.attention.norm_k.weight"] = torch.zeros(255)
    path = write_file(sd, tmp_path / "broken.safetensors", "bf16")
    msg = _err(path)
    assert "missing keys (1): layers.1.ffn_norm2.weight" in msg
    assert "unexpected keys (1): layers.0.attention.extra.weight" in msg
    assert re.search(r"layers\.0\.attention\.norm_k\.weight: expected \[256\], file has \[255\]", msg)


def test_nested_nf4_statistics_are_rejected(tmp_path, tiny_weights):
    sd = dict(convert(tiny_weights[0], "nf4"))
    sd["input_proj.weight.nested_absmax"] = torch.zeros(2)
    msg = _err(write_file(sd, tmp_path / "nested.safetensors", "nf4"))
    assert "nested statistics" in msg


def test_incomplete_diffusers_split(tmp_path, tiny_weights):
    sd = dict(convert(tiny_weights[0], "diffusers"))
    del sd["layers.0.attention.to_v.weight"]
    assert "missing to_v" in _err(write_file(sd, tmp_path / "split.safetensors", "diffusers"))


def test_folder_without_checkpoint_and_missing_file(tmp_path):
    (tmp_path / "transformer").mkdir()
    assert "no checkpoint found" in _err(tmp_path)
    assert "file not found" in _err(tmp_path / "nope.safetensors")
    assert "component must be one of" in _err(tmp_path, component="vae")


def test_index_with_missing_shard(tmp_path, tiny_weights):
    index = write_sharded(convert(tiny_weights[0], "bf16"), tmp_path / "t", "bf16")
    data = json.loads(index.read_text())
    next(iter(data["weight_map"].values()))
    (tmp_path / "t" / sorted(set(data["weight_map"].values()))[0]).unlink()
    assert "shard(s) missing" in _err(index)


def test_source_file_untouched(tiny_files):
    path = tiny_files["nf4"]["cond"]
    before = (path.stat().st_mtime_ns, path.read_bytes())
    load_transformer(path)
    assert (path.stat().st_mtime_ns, path.read_bytes()) == before


def test_comfy_quant_other_formats_are_rejected(tmp_path, tiny_weights):
    sd = dict(convert(tiny_weights[0], "comfy_fp8_scaled"))
    sd["input_proj.comfy_quant"] = torch.tensor(list(json.dumps({"format": "convrot_w4a4"}).encode()),
                                                dtype=torch.uint8)
    msg = _err(write_file(sd, tmp_path / "w4a4.safetensors", "comfy_fp8_scaled"))
    assert "input_proj uses ComfyUI quantisation format 'convrot_w4a4'; supported: float8_e4m3fn, nvfp4" in msg
    sd["input_proj.comfy_quant"] = torch.tensor(list(json.dumps({"format": "int8_tensorwise"}).encode()),
                                                dtype=torch.uint8)
    msg = _err(write_file(sd, tmp_path / "int8.safetensors", "comfy_fp8_scaled"))
    assert "input_proj is marked ComfyUI int8_tensorwise but its weight is float8_e4m3fn (a int8_tensorwise weight is int8)" in msg


def test_nf4_packed_size_must_match_quant_state(tmp_path, tiny_weights):
    sd = dict(convert(tiny_weights[0], "nf4"))
    sd["final_layer.linear.weight"] = sd["final_layer.linear.weight"][:-32].contiguous()
    msg = _err(write_file(sd, tmp_path / "short.safetensors", "nf4"))
    assert "final_layer.linear: packed nf4 size" in msg


@pytest.mark.parametrize("fmt", ["bf16", "fp8", "nf4"])
def test_image_only_load_skips_the_text_projection(fmt, tiny_files, tiny_cfg):
    full = load_transformer(tiny_files[fmt]["uncond"])
    lean = load_transformer(tiny_files[fmt]["uncond"], component="unconditional_transformer", image_only=True)

    def nbytes(m):
        return sum(t.numel() * t.element_size() for t in list(m.parameters()) + list(m.buffers()))

    assert not hasattr(lean, "llm_cond_proj") and not hasattr(lean, "llm_cond_norm")
    assert lean.checkpoint_format == full.checkpoint_format + ", image-only (no text projection)"
    saved = nbytes(full) - nbytes(lean)
    expected = sum(t.numel() * t.element_size() for n, t in list(full.named_parameters()) + list(full.named_buffers())
                   if n.startswith(("llm_cond_norm.", "llm_cond_proj.")))
    assert saved == expected > 0
    x, t = torch.randn(1, 15, 128), torch.tensor([0.3])
    assert torch.equal(full(x, t, None, grid_hw=(3, 5)), lean(x, t, None, grid_hw=(3, 5)))
    with pytest.raises(ValueError, match="loaded image_only"):
        lean(x, t, torch.randn(1, 4, tiny_cfg.llm_features_dim), grid_hw=(3, 5))


def test_nf4_state_with_other_blocksize_is_rejected(tmp_path, tiny_weights):
    sd = dict(convert(tiny_weights[0], "nf4"))
    key = "layers.0.attention.o.weight.quant_state.bitsandbytes__nf4"
    state = json.loads(bytes(sd[key].tolist()).decode())
    sd[key] = torch.tensor(list(json.dumps({**state, "blocksize": 128}).encode()), dtype=torch.uint8)
    msg = _err(write_file(sd, tmp_path / "bs128.safetensors", "nf4"))
    assert "layers.0.attention.o is bitsandbytes nf4 with blocksize 128" in msg


# ----------------------------------------------------------------------------- detection, config inference

@pytest.mark.parametrize("fmt,naming,quantization,storage,description", [
    ("fp32", "official", "none", torch.float32, "float32, official key names"),
    ("bf16", "official", "none", torch.bfloat16, "bfloat16, official key names"),
    ("diffusers", "diffusers", "none", torch.bfloat16, "bfloat16, diffusers key names"),
    ("fp8", "official", "fp8_rowwise", torch.bfloat16, "official fp8 (per-row scales), official key names"),
    ("comfy_fp8_scaled", "official", "fp8_tensorwise", torch.bfloat16,
     "ComfyUI fp8_scaled (per-tensor scales), official key names"),
    ("nf4", "official", "nf4", torch.bfloat16, "bitsandbytes nf4, official key names"),
])
def test_detected_format_of_every_file_kind(fmt, naming, quantization, storage, description, tiny_files):
    """storage_dtype is the dtype of the unquantised floats only (fp8 weights are not counted)."""
    found = detect_format(open_checkpoint(tiny_files[fmt]["cond"]))
    assert (found.naming, found.quantization, found.prefix, found.storage_dtype, found.container, found.description) \
        == (naming, quantization, "", storage, "safetensors", description)
    if fmt == "diffusers":
        base = "layers.1.attention."
        assert found.sources[base + "qkv.weight"] == [base + "to_q.weight", base + "to_k.weight", base + "to_v.weight"]
        assert found.sources[base + "o.weight"] == [base + "to_out.0.weight"]


def test_config_is_read_off_the_tensor_shapes(tmp_path):
    """Every size from the shapes alone: layers, heads (width / norm_q's head_dim), FFN, adaLN and text widths."""
    cfg = tiny_config(num_layers=3, num_heads=4, head_dim=128, intermediate_size=768, adaln_dim=96, text_width=16)
    path = write_file(convert(random_state_dict(cfg, 0), "bf16"), tmp_path / "other_size.safetensors", "bf16")
    _, _, found = inspect_transformer(path)
    assert found == cfg
    assert (found.num_layers, found.num_heads, found.head_dim, found.emb_dim, found.intermediate_size,
            found.adaln_dim, found.llm_features_dim) == (3, 4, 128, 512, 768, 96, 208)


def test_a_whole_missing_layer_is_reported_missing(tmp_path):
    """Layers 0 and 2 present, layer 1 gone: the model has 3 layers and layer 1's 13 tensors are missing."""
    sd = convert(random_state_dict(tiny_config(num_layers=3), 0), "bf16")
    sd = {k: v for k, v in sd.items() if not k.startswith("layers.1.")}
    msg = _err(write_file(sd, tmp_path / "gap.safetensors", "bf16"))
    assert "missing keys (13): layers.1.attention.qkv.weight, layers.1.attention.o.weight" in msg
    assert "unexpected" not in msg


def test_a_key_needed_for_the_size_is_named(tmp_path, tiny_weights):
    sd = {k: v for k, v in convert(tiny_weights[0], "bf16").items() if k != "layers.0.attention.norm_q.weight"}
    path = write_file(sd, tmp_path / "no_norm_q.safetensors", "bf16")
    assert _err(path) == f"{path}: missing key layers.0.attention.norm_q.weight needed to determine the model size"


def test_unknown_model_is_described_by_its_first_keys(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file({k: torch.zeros(2) for k in ("e.w", "b.w", "d.w", "a.w", "c.w")}, str(path))
    assert _err(path) == (f"{path}: not an Ideogram 4 diffusion model — it looks like an unknown model "
                          "(first keys: a.w, b.w, c.w, d.w)")


def test_a_tensor_under_two_names_is_refused(tmp_path, tiny_weights):
    sd = dict(convert(tiny_weights[0], "bf16"))
    sd["layers.0.attention.to_out.0.weight"] = sd["layers.0.attention.o.weight"].clone()
    path = write_file(sd, tmp_path / "twice.safetensors", "bf16")
    assert _err(path) == (f"{path}: tensor layers.0.attention.o.weight appears under two names "
                          "(layers.0.attention.o.weight, layers.0.attention.to_out.0.weight)")


def _split_quantised(sd: dict, scheme: str) -> dict:
    """Diffusers names (to_q/to_k/to_v, to_out.0) with each of q, k, v quantised on its own, like a diffusers save."""
    fmt = {"fp8_rowwise": "fp8", "fp8_tensorwise": "comfy_fp8_scaled", "nf4": "nf4"}[scheme]
    out = {}
    for key, value in sd.items():
        base = key[: -len("qkv.weight")]
        if key.endswith("attention.qkv.weight"):
            for letter, part in zip("qkv", value.chunk(3)):
                out.update(quantize_linear(f"{base}to_{letter}.weight", part.contiguous(), scheme))
        elif key.endswith("attention.o.weight"):
            out.update(quantize_linear(key[: -len("o.weight")] + "to_out.0.weight", value, scheme))
        else:
            out.update(convert({key: value}, fmt))
    return out


@pytest.mark.parametrize("scheme", ["fp8_rowwise", "nf4"])
def test_split_qkv_quantised_files_load_like_the_fused_file(scheme, tmp_path, tiny_files, tiny_weights):
    """Naming and quantisation are independent: per-row fp8 / nf4 q, k, v parts fuse to the official file's layer
    (the tiny rows are whole nf4 blocks, so the parts quantise exactly like the fused weight)."""
    fmt = {"fp8_rowwise": "fp8", "nf4": "nf4"}[scheme]
    path = write_file(_split_quantised(tiny_weights[0], scheme), tmp_path / f"split_{fmt}.safetensors", fmt)
    split = load_transformer(path, dtype=torch.float32)
    assert split.checkpoint_format == f"{QUANT_DESCRIPTIONS[scheme]}, diffusers key names"
    fused = load_transformer(tiny_files[fmt]["cond"], dtype=torch.float32)
    a, b = _effective_weights(split), _effective_weights(fused)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_split_qkv_fp8_with_per_tensor_scales_is_refused(tmp_path, tiny_weights):
    path = write_file(_split_quantised(tiny_weights[0], "fp8_tensorwise"), tmp_path / "split_scaled.safetensors",
                      "comfy_fp8_scaled")
    assert _err(path) == (f"{path}: layers.0.attention.qkv: split q/k/v fp8 weights with per-tensor scales cannot "
                          "be fused; use the official fused-qkv file")


def _drop(sd, *keys):
    return {k: v for k, v in sd.items() if k not in keys}


@pytest.mark.parametrize("fmt,change,problem", [
    ("nf4", lambda sd: _drop(sd, "layers.0.attention.o.weight.quant_state.bitsandbytes__nf4"),
     "layers.0.attention.o.weight is packed uint8 without a bitsandbytes quant_state"),
    ("nf4", lambda sd: _drop(sd, "layers.0.attention.o.weight.absmax"),
     "nf4 layer layers.0.attention.o lacks its weight.absmax tensor"),
    ("nf4", lambda sd: _drop(sd, "layers.0.attention.o.weight.quant_map"),
     "nf4 layer layers.0.attention.o lacks its weight.quant_map tensor"),
    ("fp8", lambda sd: _drop(sd, "layers.0.attention.o.weight_scale"),
     "layers.0.attention.o.weight is float8 but has no weight_scale"),
    ("bf16", lambda sd: {**sd, "input_proj.weight": sd["input_proj.weight"].to(torch.int32)},
     "input_proj.weight has dtype torch.int32, expected a float, float8 or nf4 weight"),
    ("comfy_fp8_scaled", lambda sd: {**sd, "layers.0.attention.o.weight": sd["layers.0.attention.o.weight"].view(torch.uint8)},
     "layers.0.attention.o.weight stores float8 data as uint8 (legacy ComfyUI layout), which is not supported; "
     "re-save it with float8_e4m3fn tensors"),
])
def test_a_layer_stored_wrongly_is_named_with_its_problem(fmt, change, problem, tmp_path, tiny_weights):
    path = write_file(change(dict(convert(tiny_weights[0], fmt))), tmp_path / "bad_layer.safetensors", fmt)
    assert _err(path) == f"{path}: {problem}"


def _comfy_fp8_marker() -> torch.Tensor:
    return torch.tensor(list(json.dumps({"format": "float8_e4m3fn"}).encode()), dtype=torch.uint8)


@pytest.mark.parametrize("fmt,extra", [
    ("bf16", {"input_proj.weight_scale": torch.ones(())}),  # a scale next to a float weight would never be applied
    ("bf16", {"input_proj.comfy_quant": _comfy_fp8_marker(), "input_proj.weight_scale": torch.ones(())}),
    ("bf16", {"layers.0.attention.o.weight.absmax": torch.ones(4)}),
    ("fp8", {"embed_image_indicator.weight_scale": torch.ones(2)}),  # the embedding is not quantised
    ("comfy_fp8_scaled", {"layers.0.ffn_norm1.input_scale": torch.ones(())}),
    ("nf4", {"layers.9.attention.o.weight_scale": torch.ones(())}),  # no such layer at all
])
def test_a_quantisation_tensor_beside_an_unquantised_weight_is_reported(fmt, extra, tmp_path, tiny_weights):
    path = write_file({**convert(tiny_weights[0], fmt), **extra}, tmp_path / "stray.safetensors", fmt)
    assert f"unexpected keys ({len(extra)}): {', '.join(sorted(extra))}" in _err(path)


def test_a_stray_key_beside_a_prefixed_model_is_named(tmp_path, tiny_weights):
    """A legacy ``scaled_fp8`` marker (unprefixed) beside ``model.diffusion_model.*`` keys: the file is still seen as
    Ideogram 4 and the odd key is reported by name."""
    sd = {f"model.diffusion_model.{k}": v for k, v in convert(tiny_weights[0], "comfy_fp8_scaled").items()}
    sd["scaled_fp8"] = torch.zeros(0, dtype=torch.float8_e4m3fn)
    path = write_file(sd, tmp_path / "prefixed_with_marker.safetensors", "comfy_fp8_scaled")
    assert detect_format(open_checkpoint(path)).prefix == "model.diffusion_model."
    assert "unexpected keys (1): scaled_fp8" in _err(path)


def test_an_activation_scale_of_a_quantised_layer_is_accepted(tmp_path, tiny_weights, tiny_files):
    """ComfyUI writes ``input_scale`` for fp8 layers calibrated for fp8 activations; the weight decode does not need
    it, and the weights are the same as without it."""
    sd = {**convert(tiny_weights[0], "comfy_fp8_scaled"), "layers.0.attention.o.input_scale": torch.tensor(0.5)}
    model = load_transformer(write_file(sd, tmp_path / "with_input_scale.safetensors", "comfy_fp8_scaled"))
    plain = load_transformer(tiny_files["comfy_fp8_scaled"]["cond"])
    assert model.checkpoint_format == plain.checkpoint_format
    a, b = model.state_dict(), plain.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- the safetensors reader, byte by byte

from model.checkpoints.reader import folder_checkpoint, json_from_tensor  # noqa: E402


def _bytes_file(tmp_path, data: bytes, name="model.safetensors"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _header_file(tmp_path, header: bytes, payload: bytes = b"", name="model.safetensors"):
    return _bytes_file(tmp_path, len(header).to_bytes(8, "little") + header + payload, name)


@pytest.mark.parametrize("data,says", [
    (pickle.dumps({"x": list(range(100))}), "a Python pickle (a PyTorch .bin/.ckpt checkpoint?)"),
    (b"PK\x03\x04" + bytes(200), "a zip archive (a PyTorch .pt/.ckpt pickle checkpoint?)"),
    (b"GGUF\x03\x00\x00\x00" + bytes(200), "a GGUF file"),
    (bytes(200), "not a safetensors file"),  # header length 0
    ((200).to_bytes(8, "little") + b"xx", "not a safetensors file"),  # a short file whose length is not a header's
])
def test_a_file_that_is_not_safetensors_says_what_it_looks_like(tmp_path, data, says):
    path = _bytes_file(tmp_path, data)
    with pytest.raises(ValueError) as info:
        open_checkpoint(path)
    assert str(info.value) == (f"{path}: {says}; only .safetensors checkpoints are supported "
                               "(pickle checkpoints are never loaded)")


def test_a_seven_byte_file_is_too_short(tmp_path):
    path = _bytes_file(tmp_path, b"{}     ")
    with pytest.raises(ValueError, match=r"file is 7 bytes — truncated or not a safetensors file"):
        open_checkpoint(path)


def test_a_file_ending_inside_its_header_is_truncated_by_any_amount(tmp_path):
    path = _bytes_file(tmp_path, (100).to_bytes(8, "little") + b"{" + bytes(94))  # 95 of the header's 100 bytes
    with pytest.raises(ValueError, match=r"truncated — header alone is 108 bytes, file has 103"):
        open_checkpoint(path)


@pytest.mark.parametrize("header", [b'{"\xff": 1}', b"[1, 2]"])
def test_a_corrupt_header_is_a_value_error(tmp_path, header):
    with pytest.raises(ValueError, match="corrupt safetensors header"):
        open_checkpoint(_header_file(tmp_path, header))


def test_a_file_missing_its_last_bytes_is_truncated(tmp_path):
    path = tmp_path / "full.safetensors"
    save_file({"a": torch.zeros(4), "b": torch.ones(8)}, str(path))
    data = path.read_bytes()
    cut = _bytes_file(tmp_path, data[:-4], "cut.safetensors")
    with pytest.raises(ValueError, match=rf"truncated — header describes {len(data)} bytes, file has {len(data) - 4}"):
        open_checkpoint(cut)


def test_a_header_safetensors_cannot_read_is_named(tmp_path):
    header = json.dumps({"a": {"dtype": "XX", "shape": [1], "data_offsets": [0, 4]}}).encode()
    path = _header_file(tmp_path, header, bytes(4))
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: cannot be read as safetensors \("):
        open_checkpoint(path)


def test_reader_dtypes_metadata_and_size(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"e5": torch.zeros(2, dtype=torch.float8_e5m2), "e4": torch.zeros(2, dtype=torch.float8_e4m3fn),
               "u16": torch.zeros(2, dtype=torch.uint16)}, str(path), metadata={"format": "pt", "note": "x"})
    reader = open_checkpoint(path)
    assert reader.dtype("e5") == torch.float8_e5m2 and reader.dtype("e4") == torch.float8_e4m3fn
    assert reader.metadata == {"format": "pt", "note": "x"}
    assert reader.file_size() == path.stat().st_size
    with pytest.raises(ValueError, match=r"tensor u16 has unsupported dtype U16"):
        reader.dtype("u16")


def test_a_sharded_reader_sums_its_shards_and_labels_the_component(tmp_path, tiny_weights):
    write_sharded(convert(tiny_weights[0], "bf16"), tmp_path / "transformer", "bf16", shards=3)
    reader = open_checkpoint(tmp_path, "transformer")
    assert len(reader.files) == 3 and reader.file_size() == sum(p.stat().st_size for p in reader.files)
    assert reader.label == f"{tmp_path} [transformer]"


def test_a_single_shard_checkpoint_loads_alone(tmp_path):
    path = tmp_path / "model-00001-of-00001.safetensors"
    save_file({"a": torch.zeros(2)}, str(path))
    assert open_checkpoint(path).keys() == ["a"]


@pytest.mark.parametrize("index", ['[1, 2]', '{"weight_map": {"a": 1}}'])
def test_a_malformed_index_is_named(tmp_path, index):
    path = tmp_path / "model.safetensors.index.json"
    path.write_text(index)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: not a safetensors index"):
        open_checkpoint(path)


def test_folder_checkpoint_prefers_the_index_and_keeps_to_its_stems(tmp_path):
    for name in ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.safetensors.index.json"):
        (tmp_path / name).write_bytes(b"")
    assert folder_checkpoint(tmp_path).name == "diffusion_pytorch_model.safetensors.index.json"
    other = tmp_path / "other"
    other.mkdir()
    (other / "model.safetensors").write_bytes(b"")
    assert folder_checkpoint(other, ("diffusion_pytorch_model",)) is None
    assert folder_checkpoint(other).name == "model.safetensors"
    variant = tmp_path / "variant"
    variant.mkdir()
    for name in ("model.bf16.safetensors", "model.safetensors.index.bf16.json"):
        (variant / name).write_bytes(b"")
    assert folder_checkpoint(variant).name == "model.safetensors.index.bf16.json"


def test_json_from_tensor_reads_utf8_from_uint8_or_int8():
    raw = torch.tensor(list('{"format": "é"}'.encode()), dtype=torch.uint8)
    assert json_from_tensor(raw) == json_from_tensor(raw.view(torch.int8)) == {"format": "é"}


# ----------------------------------------------------------------------------- ComfyUI's older quantisation layouts

def _comfy_fp8_tensors(tiny_weights, tmp_path):
    from safetensors.torch import load_file
    path = write_file(convert(tiny_weights[0], "comfy_fp8_scaled"), tmp_path / "today.safetensors", "comfy_fp8_scaled")
    return path, load_file(str(path))


def _same_weights(a, b):
    wa, wb = _effective_weights(a), _effective_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_quantization_metadata_in_place_of_comfy_quant_tensors(tmp_path, tiny_weights, caplog):
    """ComfyUI's ``_quantization_metadata`` header entry (``convert_old_quants``) loads like the comfy_quant tensors."""
    today, tensors = _comfy_fp8_tensors(tiny_weights, tmp_path)
    layers = {k[:-len(".comfy_quant")]: json_from_tensor(v) for k, v in tensors.items() if k.endswith(".comfy_quant")}
    assert layers
    path = tmp_path / "metadata.safetensors"
    untagged, metadata = older_comfy_layout(tensors, "quantization_metadata")
    assert untagged.keys() == {k for k in tensors if not k.endswith(".comfy_quant")}
    assert json.loads(metadata["_quantization_metadata"]) == {"layers": layers}
    save_file(untagged, str(path), metadata=metadata)
    with caplog.at_level("INFO"):
        model = load_transformer(path, dtype=torch.float32)
        _same_weights(model, load_transformer(today, dtype=torch.float32))
    says = f"per-layer quantisation from its _quantization_metadata ({len(layers)} layers)"
    assert says in caplog.text
    assert model.checkpoint_format.endswith(f"key names; {says}")  # what the loader node shows
    reader = open_checkpoint(path)
    assert json_from_tensor(reader.get(next(iter(layers)) + ".comfy_quant")) == layers[next(iter(layers))]


def test_legacy_scaled_fp8_layout_loads_like_fp8_scaled(tmp_path, tiny_weights, caplog):
    """The first fp8_scaled files: a ``scaled_fp8`` marker, ``scale_weight`` / ``scale_input`` (ComfyUI still loads them)."""
    today, tensors = _comfy_fp8_tensors(tiny_weights, tmp_path)
    legacy, metadata = older_comfy_layout(tensors, "scaled_fp8")
    assert not metadata and legacy["scaled_fp8"].dtype == torch.float8_e4m3fn
    assert all(torch.equal(legacy[k[:-len("weight_scale")] + "scale_weight"], v) and
               legacy[k[:-len("weight_scale")] + "scale_input"].item() == 1.0
               for k, v in tensors.items() if k.endswith(".weight_scale"))
    path = tmp_path / "legacy.safetensors"
    save_file(legacy, str(path))
    with caplog.at_level("INFO"):
        model = load_transformer(path, dtype=torch.float32)
        _same_weights(model, load_transformer(today, dtype=torch.float32))
    n = sum(k.endswith(".scale_weight") for k in legacy)
    says = f"legacy ComfyUI scaled_fp8 layout (scale_weight / scale_input, {n} layers) read as fp8_scaled"
    assert says in caplog.text and model.checkpoint_format.endswith(f"key names; {says}")
    assert load_transformer(today, dtype=torch.float32).checkpoint_format.endswith("key names")  # no note
    reader = open_checkpoint(path)
    assert "scaled_fp8" not in reader and not any(k.endswith((".scale_weight", ".scale_input")) for k in reader.keys())
    assert json_from_tensor(reader.get("adaln_proj.comfy_quant")) == {"format": "float8_e4m3fn",
                                                                      "full_precision_matrix_mult": True}
    assert torch.equal(reader.get("adaln_proj.weight_scale"), legacy["adaln_proj.scale_weight"])


@pytest.mark.parametrize("metadata,says", [
    ("not json", "is not ComfyUI's {\"layers\": {module: config}} JSON"),
    (json.dumps({"layers": {"adaln_proj": "fp8"}}), "needs a {\"format\": ...} config for each layer; adaln_proj"),
    (json.dumps({"layers": {"adaln_proj": {"format": "float8_e4m3fn"}}}), "adaln_proj has both a comfy_quant tensor"),
])
def test_bad_quantization_metadata_is_named(tmp_path, tiny_weights, metadata, says):
    _, tensors = _comfy_fp8_tensors(tiny_weights, tmp_path)
    path = tmp_path / "bad.safetensors"
    save_file(tensors, str(path), metadata={"_quantization_metadata": metadata})
    msg = _err(path)
    assert str(path) in msg and says in msg


def test_a_legacy_key_beside_its_new_name_is_an_error(tmp_path, tiny_weights):
    _, tensors = _comfy_fp8_tensors(tiny_weights, tmp_path)
    tensors = {k: v for k, v in tensors.items() if not k.endswith(".comfy_quant")}
    tensors["adaln_proj.scale_weight"] = tensors["adaln_proj.weight_scale"].clone()
    tensors["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)
    path = tmp_path / "both.safetensors"
    save_file(tensors, str(path))
    assert "adaln_proj has both scale_weight (legacy scaled_fp8) and weight_scale" in _err(path)


def test_quantization_metadata_of_a_comfy_kitchen_format(tmp_path, tiny_weights):
    """int8 convrot: the Hadamard rotation is only named in the config, so the metadata must be read, not guessed."""
    pytest.importorskip("comfy_kitchen")
    from safetensors.torch import load_file
    from tools.make_test_quantized import write_comfy
    today = write_comfy(tiny_weights[0], tmp_path / "int8.safetensors", "int8_convrot")
    tensors = load_file(str(today))
    layers = {k[:-len(".comfy_quant")]: json_from_tensor(v) for k, v in tensors.items() if k.endswith(".comfy_quant")}
    assert any(conf.get("convrot") for conf in layers.values())
    path = tmp_path / "int8_metadata.safetensors"
    untagged, metadata = older_comfy_layout(tensors, "quantization_metadata")
    assert json.loads(metadata["_quantization_metadata"]) == {"layers": layers}
    save_file(untagged, str(path), metadata=metadata)
    _same_weights(load_transformer(path, dtype=torch.float32), load_transformer(today, dtype=torch.float32))


# ----------------------------------------------------------------------------- what classify_modules decides

def test_per_tensor_scales_stored_with_shape_1_are_tensorwise(tmp_path, tiny_weights):
    """A per-tensor fp8 scale saved as shape (1,) instead of () is still one scale per tensor."""
    today, tensors = _comfy_fp8_tensors(tiny_weights, tmp_path)
    path = tmp_path / "scales_1.safetensors"
    save_file({k: (v.reshape(1) if k.endswith(".weight_scale") else v) for k, v in tensors.items()}, str(path))
    assert detect_format(open_checkpoint(path)).quantization == "fp8_tensorwise"
    _same_weights(load_transformer(path, dtype=torch.float32), load_transformer(today, dtype=torch.float32))


def test_storage_dtype_is_the_one_holding_most_bytes(tmp_path, tiny_weights):
    """bf16 weights with float32 biases and norms (every ComfyUI-GGUF F16 / BF16 file): a bf16 file."""
    sd = convert(tiny_weights[0], "bf16")
    path = tmp_path / "mixed_floats.safetensors"
    first = sorted(sd)[0].rpartition(".")[0]  # and the first module whole, so the first tensor counted is float32
    save_file({k: (v.float() if v.ndim == 1 or k.startswith(first + ".") else v) for k, v in sd.items()}, str(path))
    reader = open_checkpoint(path)
    assert all(reader.dtype(k) == torch.float32 for k in reader.keys() if k.startswith(first + "."))
    assert detect_format(reader).storage_dtype == torch.bfloat16


def test_the_image_indicator_alone_is_not_an_ideogram_4_dit(tmp_path, tiny_weights):
    sd = {k: v for k, v in convert(tiny_weights[0], "bf16").items() if not k.startswith("llm_cond_proj.")}
    path = tmp_path / "no_text_projection.safetensors"
    save_file(sd, str(path))
    assert "not an Ideogram 4 diffusion model" in _err(path)


def test_split_qkv_gguf_weights_of_different_types_are_named(tmp_path, tiny_weights):
    import numpy as np
    from tools.make_test_quantized import gguf_tensors, write_raw_gguf

    tensors = gguf_tensors(convert(tiny_weights[0], "diffusers"), "Q8_0")
    key = next(k for k in tensors if k.endswith("attention.to_k.weight"))
    data, kind = tensors[key]
    assert kind == "Q8_0"
    tensors[key] = (tiny_weights[0][key.replace("to_k", "qkv")].float().numpy()[:data.shape[0]].astype(np.float16), "F16")
    path = write_raw_gguf(tmp_path / "mixed_qkv.gguf", tensors)
    assert "split q/k/v GGUF weights of different types" in _err(path)
