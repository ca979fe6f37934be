"""GGUF (ComfyUI-GGUF layout) files written by gguf's GGUFWriter: bit-exact block decoding against
gguf's numpy dequantize, whole-model parity, detection and actionable errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import load_transformer
from model.checkpoints import QuantizedLinear, open_checkpoint
from model.checkpoints.gguf_codec import GGUF_QTYPES, dequantize_gguf
from tools.make_test_checkpoints import write_file
from tools.make_test_quantized import gguf_tensors, random_blocks, write_gguf, write_raw_gguf

gguf = pytest.importorskip("gguf")
T = gguf.GGMLQuantizationType


@pytest.mark.parametrize("qtype", GGUF_QTYPES)
def test_block_codec_is_bit_identical_to_gguf_dequantize(qtype):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((6, 1024)).astype(np.float32)
    try:
        data = gguf.quants.quantize(w, T[qtype])
    except NotImplementedError:  # K-quants / IQ4_NL: gguf cannot quantise them — valid random blocks
        data = random_blocks(qtype, 6, 1024, 0.05, 3)
    want = gguf.quants.dequantize(data, T[qtype])
    got = dequantize_gguf(torch.from_numpy(data), qtype, (6, 1024), torch.float32)
    assert np.array_equal(got.numpy().view(np.int32), want.view(np.int32))
    # the compute-dtype result is the float32 result cast once
    assert torch.equal(dequantize_gguf(torch.from_numpy(data), qtype, (6, 1024), torch.bfloat16),
                       torch.from_numpy(want).to(torch.bfloat16))


def _reference_file(sd, qtype, tmp_path, every_2d=False):
    """float32 file of what gguf's own dequantize makes of every tensor of the GGUF file."""
    out = {}
    for key, (data, kind) in gguf_tensors(sd, qtype, every_2d=every_2d).items():
        value = data if kind in ("F32", "F16") else gguf.quants.dequantize(data, T[kind])
        out[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).reshape(sd[key].shape)
    return write_file(out, tmp_path / f"reference_{qtype}.safetensors", "fp32")


def _forward(model, cfg):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 15, cfg.in_channels, generator=g)
    feats = torch.randn(1, 6, cfg.llm_features_dim, generator=g)
    return model(x, torch.tensor([0.7]), feats, grid_hw=(3, 5))


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K", "Q5_1", "Q2_K", "IQ4_NL", "F16", "BF16"])
def test_gguf_model_output_equals_the_model_of_its_dequantised_weights(qtype, tiny_weights, tiny_cfg, tmp_path):
    sd = tiny_weights[0]
    path = write_gguf(sd, tmp_path / f"ideogram4-{qtype}.gguf", qtype, prefix="model.diffusion_model.")
    model = load_transformer(path, dtype=torch.float32)
    reference = load_transformer(_reference_file(sd, qtype, tmp_path), dtype=torch.float32)
    got, want = _forward(model, tiny_cfg), _forward(reference, tiny_cfg)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-5
    packed = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    if qtype in ("F16", "BF16"):  # the 2-D weights' type, not the float32 norms every such file has
        assert not packed
        assert model.checkpoint_format == f"GGUF {dict(F16='float16', BF16='bfloat16')[qtype]}, official key names"
    else:  # every Linear whose rows are whole blocks stays packed (raw block bytes)
        assert packed and all(m.weight.dtype == torch.uint8 and m.options["qtype"] == qtype for m in packed)
        assert f"GGUF ({qtype})" in model.checkpoint_format


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_K"])
def test_packed_embedding_is_decoded_at_load(qtype, tmp_path):
    """ComfyUI-GGUF's quantiser also packs the 2-row ``embed_image_indicator`` (above 1024 values, rows of whole
    blocks at the real width 4608): it stays an Embedding, decoded once at load, and the output is the model of the
    dequantised weights."""
    from tools.make_test_checkpoints import random_state_dict, tiny_config

    cfg = tiny_config(num_heads=3)  # width 768: 1536 indicator values, rows of whole Q4_K blocks
    sd = random_state_dict(cfg, 0)
    path = write_gguf(sd, tmp_path / f"ideogram4-{qtype}.gguf", qtype, every_2d=True)
    kinds = dict((k, kind) for k, (_, kind) in gguf_tensors(sd, qtype, every_2d=True).items())
    assert kinds["embed_image_indicator.weight"] == qtype
    model = load_transformer(path, dtype=torch.float32)
    assert isinstance(model.embed_image_indicator, torch.nn.Embedding)
    reference = load_transformer(_reference_file(sd, qtype, tmp_path, every_2d=True), dtype=torch.float32)
    assert torch.equal(model.embed_image_indicator.weight, reference.embed_image_indicator.weight)
    got, want = _forward(model, cfg), _forward(reference, cfg)
    assert float((got - want).abs().max() / want.abs().max()) <= 1e-5


def test_mixed_k_quant_file_like_q4_k_m(tiny_weights, tmp_path):
    """Q4_K_M files mix Q4_K and Q6_K layers: one GGUF scheme, the type per layer."""
    sd = tiny_weights[0]
    tensors = gguf_tensors(sd, "Q4_K")
    w2 = "layers.1.feed_forward.w2.weight"
    tensors[w2] = (random_blocks("Q6_K", *sd[w2].shape, 0.05, 9), "Q6_K")
    path = tmp_path / "ideogram4-Q4_K_M.gguf"
    writer = gguf.GGUFWriter(str(path), "ideogram")  # the other published architecture name
    for key, (data, kind) in tensors.items():
        if kind in ("F32", "F16"):
            writer.add_tensor(key, data)
        else:
            writer.add_tensor(key, data, raw_shape=data.shape, raw_dtype=T[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    model = load_transformer(path, dtype=torch.float32)
    assert model.layers[1].feed_forward.w2.options == {"qtype": "Q6_K"}
    assert "GGUF (Q4_K, Q6_K)" in model.checkpoint_format
    want = gguf.quants.dequantize(tensors[w2][0], T.Q6_K)
    assert np.array_equal(model.layers[1].feed_forward.w2.dequantized_weight(torch.float32).numpy(), want)


def test_gguf_tensors_are_views_of_the_memory_map(tiny_weights, tmp_path):
    path = write_gguf(tiny_weights[0], tmp_path / "m.gguf", "Q8_0")
    reader = open_checkpoint(path)
    key = "layers.0.feed_forward.w1.weight"
    a, b = reader.get(key), reader.get(key)
    assert a.data_ptr() == b.data_ptr() and reader.block_type(key) == "Q8_0" and reader.dtype(key) == torch.uint8
    assert reader.shape(key) == tuple(tiny_weights[0][key].shape)


def test_gguf_errors_name_the_file_and_the_problem(tiny_weights, tmp_path):
    sd = tiny_weights[0]
    path = write_gguf(sd, tmp_path / "ok.gguf", "Q8_0")
    data = path.read_bytes()
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(data[: len(data) - 4096])
    with pytest.raises(ValueError, match=r"cut\.gguf: (truncated|not a readable GGUF file)"):
        load_transformer(cut)
    flux = write_gguf(sd, tmp_path / "flux.gguf", "Q8_0", arch="flux")
    with pytest.raises(ValueError, match=r"flux\.gguf: GGUF general\.architecture is 'flux'; an Ideogram 4 GGUF"):
        load_transformer(flux)
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\x00" * 64)
    with pytest.raises(ValueError, match=r"junk\.gguf: not a readable GGUF file"):
        load_transformer(tmp_path / "junk.gguf")
    half = {k: v for k, v in sd.items() if k != "layers.0.attention.o.weight"}
    missing = write_gguf(half, tmp_path / "missing.gguf", "Q8_0")
    with pytest.raises(ValueError, match=r"missing\.gguf.*missing keys \(1\): layers\.0\.attention\.o\.weight"):
        load_transformer(missing)


def test_comfyui_gguf_orig_shape_is_the_tensor_shape(tmp_path):
    """ComfyUI-GGUF stores some float tensors reshaped, with ``comfy.gguf.orig_shape.<name>``: read back in it."""
    values = np.arange(64, dtype=np.float16).reshape(4, 16)
    path = write_raw_gguf(tmp_path / "orig.gguf", {"a.weight": values},
                          arrays={"comfy.gguf.orig_shape.a.weight": [2, 32]})
    reader = open_checkpoint(path)
    assert reader.shape("a.weight") == (2, 32)
    assert torch.equal(reader.get("a.weight"), torch.from_numpy(values.reshape(2, 32)))


@pytest.mark.parametrize("tensor,orig,says", [
    (np.zeros((4, 16), np.float16), [3, 32], r"comfy\.gguf\.orig_shape\.a\.weight \[3, 32\] does not fit its F16 "
                                             r"shape \[4, 16\]"),
    ((np.zeros((4, 68), np.uint8), T.Q8_0), [2, 128], r"comfy\.gguf\.orig_shape\.a\.weight \[2, 128\] does not fit "
                                                      r"its Q8_0 shape \[4, 64\]"),  # blocks cannot be reshaped
])
def test_an_orig_shape_that_does_not_fit_is_named(tmp_path, tensor, orig, says):
    path = write_raw_gguf(tmp_path / "bad.gguf", {"a.weight": tensor}, arrays={"comfy.gguf.orig_shape.a.weight": orig})
    with pytest.raises(ValueError, match=r"bad\.gguf: tensor a\.weight: " + says):
        open_checkpoint(path)


def test_gguf_files_the_reader_cannot_use_are_named(tmp_path):
    ints = write_raw_gguf(tmp_path / "ints.gguf", {"a.weight": np.zeros((4, 16), np.int32)})
    with pytest.raises(ValueError, match=r"ints\.gguf: tensor a\.weight has GGUF type I32; supported: F32, F16, BF16, "
                                         r"Q4_0"):
        open_checkpoint(ints)
    empty = write_raw_gguf(tmp_path / "empty.gguf", {})
    with pytest.raises(ValueError, match=r"empty\.gguf: the GGUF file contains no tensors"):
        open_checkpoint(empty)
    from model.checkpoints.gguf_reader import GGUFCheckpointReader
    with pytest.raises(ValueError, match=r"gone\.gguf: file not found"):
        GGUFCheckpointReader(tmp_path / "gone.gguf")


def test_bf16_tensors_read_back_bit_exactly(tmp_path):
    values = torch.randn(4, 48, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    bits = values.view(torch.int16).numpy().view(np.uint8).reshape(4, 96)  # gguf's raw byte shape for BF16
    path = write_raw_gguf(tmp_path / "bf16.gguf", {"a.weight": (bits, T.BF16)})
    reader = open_checkpoint(path)
    assert reader.dtype("a.weight") == torch.bfloat16 and reader.shape("a.weight") == (4, 48)
    assert torch.equal(reader.get("a.weight").view(torch.int16), values.view(torch.int16))


def test_metadata_arrays_and_renamed_readers(tmp_path):
    path = write_raw_gguf(tmp_path / "two.gguf", {"a.weight": np.zeros((2, 32), np.float32),
                                              "b.weight": np.zeros((2, 32), np.float32)},
                          arrays={"tokenizer.ggml.tokens": ["<a>", "<b>", "<c>"]})
    reader = open_checkpoint(path)
    assert reader.array_length("tokenizer.ggml.tokens") == 3 and reader.array_length("no.such.key") is None
    assert reader.array_item("tokenizer.ggml.tokens", 2) == "<c>" and reader.array_item("tokenizer.ggml.tokens", 3) is None
    from model.checkpoints.gguf_reader import RenamedReader
    renamed = RenamedReader(reader, lambda name: "model." + name, lambda name: name.removeprefix("model."))
    assert sorted(renamed.keys()) == ["model.a.weight", "model.b.weight"] and renamed.shape("model.a.weight") == (2, 32)
    with pytest.raises(ValueError, match=r"two\.gguf: tensors a\.weight and b\.weight both map to w"):
        RenamedReader(reader, lambda name: "w", lambda name: name)
