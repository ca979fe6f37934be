"""llama.cpp GGUF text encoders (``Qwen3VL-8B-Instruct-Q4_K_M.gguf`` …): names, metadata, parity, errors.

Files are written by ``tools/make_test_text_encoder_gguf.py`` with ``gguf.GGUFWriter``, tensor names from
gguf's own ``QWEN3VL`` tensor map (an independent statement of llama.cpp's names), tiny Qwen3-VL weights
(hidden 256 so K-quant rows are whole blocks).  Truths: a float GGUF must give the safetensors encoder's
features bit for bit (so names, shapes and q/k order are right); a quantised one must equal the encoder of
the weights ``gguf.quants.dequantize`` makes of the file (the codec and the embedding decode are right).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from model.text_encoder import load_text_encoder
from tools import make_test_text_encoder as mk
from tools.make_test_quantized import write_raw_gguf
from tools.make_test_text_encoder_gguf import gguf_text_config, vocabulary, write_llama_cpp_gguf, write_mmproj

gguf = pytest.importorskip("gguf")

TAPS = (0, 2, 4)
CAPTIONS = ["a cat", '{"high_level_description": "The red fox and the dog", "style": "flat"}']


@pytest.fixture(scope="module")
def text():
    return gguf_text_config()


@pytest.fixture(scope="module")
def folder(tmp_path_factory, text):
    """A stock Qwen3-VL HF folder of the same weights (what llama.cpp converts from) + its tokenizer."""
    return mk.write_layout("qwen_hf", tmp_path_factory.mktemp("te_hf"), text=text)


@pytest.fixture(scope="module")
def want(folder):
    return load_text_encoder(folder, taps=TAPS).encode(CAPTIONS, use_cache=False)


def _dequantised_twin(path, tmp_path):
    """A safetensors file (ComfyUI ``model.*`` names) of what gguf's numpy dequantize makes of every tensor."""
    from model.text_encoder.gguf_layout import hf_name

    out = {}
    for t in gguf.GGUFReader(str(path)).tensors:
        value = gguf.quants.dequantize(t.data, t.tensor_type)
        shape = tuple(int(v) for v in reversed(t.shape.tolist()))
        out["model." + hf_name(t.name)] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32)).reshape(shape)
    twin = tmp_path / f"twin_{path.stem}.safetensors"
    save_file(out, str(twin))
    return twin


@pytest.mark.parametrize("file_type", ["BF16", "F32"])
def test_float_gguf_equals_the_safetensors_encoder_bit_for_bit(tmp_path, folder, want, text, file_type):
    path = write_llama_cpp_gguf(tmp_path / f"Qwen3VL-tiny-{file_type}.gguf", file_type, text=text)
    enc = load_text_encoder(path, taps=TAPS, tokenizer=folder)
    got = enc.encode(CAPTIONS, use_cache=False)
    assert torch.equal(got.features, want.features) and got.lengths == want.lengths
    assert enc.description == (f"Qwen3-VL text encoder, GGUF {dict(BF16='bfloat16', F32='float32')[file_type]}, "
                               "llama.cpp names (blk.N.*)")
    assert enc.warnings == ()  # general.architecture qwen3vl says Qwen3-VL: no "cannot confirm" warning


@pytest.mark.parametrize("file_type", ["Q8_0", "Q4_K_M", "Q5_K_M", "Q4_0", "IQ4_XS"])
def test_quantised_gguf_equals_the_encoder_of_its_dequantised_weights(tmp_path, folder, text, file_type):
    path = write_llama_cpp_gguf(tmp_path / f"Qwen3VL-tiny-{file_type}.gguf", file_type, text=text)
    enc = load_text_encoder(path, taps=TAPS, tokenizer=folder)
    twin = load_text_encoder(_dequantised_twin(path, tmp_path), taps=TAPS, tokenizer=folder)
    a, b = enc.encode(CAPTIONS, use_cache=False), twin.encode(CAPTIONS, use_cache=False)
    assert torch.equal(a.features, b.features)
    kinds = {"Q4_K_M": "Q4_K, Q6_K", "Q5_K_M": "Q5_K, Q6_K"}.get(file_type, file_type)
    assert enc.description == f"Qwen3-VL text encoder, GGUF ({kinds}), llama.cpp names (blk.N.*)"
    # the Linears stay packed (decoded per call); the token embedding was decoded once at load
    lm = enc.language_model
    assert lm.layers[0].self_attn.q_proj.scheme == "gguf" and lm.layers[0].self_attn.q_proj.weight.dtype == torch.uint8
    assert lm.embed_tokens.weight.dtype == torch.bfloat16


def test_q8_0_is_close_to_the_bf16_encoder(tmp_path, folder, want, text):
    """Q8_0 quantised from the same weights: a small, measured deviation (not reference-exact)."""
    path = write_llama_cpp_gguf(tmp_path / "Qwen3VL-tiny-Q8_0.gguf", "Q8_0", text=text)
    got = load_text_encoder(path, taps=TAPS, tokenizer=folder).encode(CAPTIONS, use_cache=False)
    rel = ((got.features - want.features).norm() / want.features.norm()).item()
    assert 0 < rel < 0.05, rel  # measured 0.022 (random weights, 5 layers); wrong names or order give ≈ 1


def test_later_layers_lm_head_and_final_norm_are_not_read(tmp_path, folder, text, monkeypatch):
    from model.checkpoints.gguf_reader import GGUFCheckpointReader

    path = write_llama_cpp_gguf(tmp_path / "Qwen3VL-tiny-Q8_0.gguf", "Q8_0", text=text)
    read = []
    original = GGUFCheckpointReader.get
    monkeypatch.setattr(GGUFCheckpointReader, "get", lambda self, key: read.append(key) or original(self, key))
    load_text_encoder(path, taps=(0, 1), tokenizer=folder)
    assert read and not [k for k in read if k.startswith(("blk.2.", "blk.3.", "blk.4.", "output"))]


def test_metadata_sets_the_rope_base_and_epsilon(tmp_path, folder, text):
    other = dict(text, rope_theta=10000.0, rms_norm_eps=1e-5)
    path = write_llama_cpp_gguf(tmp_path / "Qwen3VL-tiny-other-rope.gguf", "BF16", text=other)
    cfg = load_text_encoder(path, taps=TAPS, tokenizer=folder).language_model.config
    assert cfg.rope_parameters["rope_theta"] == 10000.0 and cfg.rms_norm_eps == pytest.approx(1e-5)
    assert cfg.max_position_embeddings == 4096  # qwen3vl.context_length
    # without the qwen3vl.* keys: Qwen3-VL's constants, and the same features as the full file
    bare = write_llama_cpp_gguf(tmp_path / "Qwen3VL-tiny-bare.gguf", "BF16", text=text, with_metadata=False)
    full = write_llama_cpp_gguf(tmp_path / "Qwen3VL-tiny-full.gguf", "BF16", text=text)
    bare_enc = load_text_encoder(bare, taps=TAPS, tokenizer=folder)
    cfg = bare_enc.language_model.config
    assert (cfg.rope_parameters["rope_theta"], cfg.rms_norm_eps, cfg.max_position_embeddings) == (5e6, 1e-6, 262144)
    a = bare_enc.encode(CAPTIONS, use_cache=False)
    b = load_text_encoder(full, taps=TAPS, tokenizer=folder).encode(CAPTIONS, use_cache=False)
    assert torch.equal(a.features, b.features)


@pytest.mark.parametrize("key,weights_give", [
    ("block_count", 5), ("embedding_length", 256), ("feed_forward_length", 512), ("attention.head_count", 4),
    ("attention.head_count_kv", 2), ("attention.key_length", 64), ("attention.value_length", 64)])
def test_metadata_that_contradicts_the_weights_is_refused(tmp_path, folder, text, key, weights_give):
    from model.checkpoints.gguf_reader import GGUFCheckpointReader

    path = write_llama_cpp_gguf(tmp_path / "Qwen3VL-tiny-Q8_0.gguf", "Q8_0", text=text)
    original = GGUFCheckpointReader.field

    def field(self, name, default=None):
        return 7 if name == f"qwen3vl.{key}" else original(self, name, default)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GGUFCheckpointReader, "field", field)
        with pytest.raises(ValueError) as err:
            load_text_encoder(path, taps=TAPS, tokenizer=folder)
    assert str(err.value) == (f"{path}: GGUF metadata qwen3vl.{key} is 7, but the weights give {weights_give} "
                              "(a damaged or hand-edited file)")


def test_a_tokenizer_of_another_vocabulary_is_refused(tmp_path, folder, text):
    vocab = vocabulary(text["vocab_size"])
    swapped = list(vocab)
    swapped[40], swapped[41] = swapped[41], swapped[40]
    path = write_llama_cpp_gguf(tmp_path / "Qwen3VL-tiny-other-vocab.gguf", "Q8_0", text=text, tokens=swapped)
    with pytest.raises(ValueError, match=r"other-vocab\.gguf: the tokenizer does not match the GGUF's own vocabulary "
                                         r"\(2 of 298 ids differ; token 40 is .* in the tokenizer, .* in the file\)"):
        load_text_encoder(path, taps=TAPS, tokenizer=folder)


def test_other_gguf_files_are_named(tmp_path, folder, text):
    mmproj = write_mmproj(tmp_path / "mmproj-Qwen3VL-8B-Instruct-F16.gguf")
    with pytest.raises(ValueError, match=r"mmproj-Qwen3VL-8B-Instruct-F16\.gguf: GGUF general\.architecture is "
                                         r"'clip' — the vision projector \(mmproj\) .* pick the larger Qwen3-VL-8B-"
                                         r"Instruct GGUF without 'mmproj' in its name; a Qwen3-VL text encoder GGUF"):
        load_text_encoder(mmproj, tokenizer=folder)
    qwen3 = write_llama_cpp_gguf(tmp_path / "Qwen3-8B-Q8_0.gguf", "Q8_0", text=text, architecture="qwen3")
    with pytest.raises(ValueError, match=r"'qwen3' — a text-only Qwen3 LLM"):
        load_text_encoder(qwen3, tokenizer=folder)
    from tools.make_test_checkpoints import random_state_dict, tiny_config
    from tools.make_test_quantized import write_gguf

    dit = write_gguf(random_state_dict(tiny_config(), 0), tmp_path / "ideogram4-Q8_0.gguf", "Q8_0")
    with pytest.raises(ValueError, match=r"'ideogram4' — an Ideogram 4 diffusion model \(DiT\): load it with the "
                                         r"Ideogram4 model loader"):
        load_text_encoder(dit, tokenizer=folder)
    # and the other way round: the DiT loader names a text-encoder GGUF
    from model.dit.loading import load_transformer

    te_file = write_llama_cpp_gguf(tmp_path / "Qwen3VL-tiny-Q8_0.gguf", "Q8_0", text=text)
    with pytest.raises(ValueError, match=r"'qwen3vl' — a Qwen3-VL language model, Ideogram 4's text encoder: load "
                                         r"it with the Ideogram4 Text Encoder Loader"):
        load_transformer(te_file)


def test_a_folder_holding_only_a_gguf_says_to_pick_the_file(tmp_path, folder, text):
    sub = tmp_path / "qwen3vl_gguf"
    write_llama_cpp_gguf(sub / "Qwen3VL-tiny-Q8_0.gguf", "Q8_0", text=text)
    with pytest.raises(ValueError, match=r"qwen3vl_gguf/text_encoder: no checkpoint found .*; it holds Qwen3VL-tiny-Q8_0\.gguf: "
                                         r"pick the \.gguf file itself, not its folder"):
        load_text_encoder(sub, taps=TAPS, tokenizer=folder)


def test_truncated_gguf_is_named(tmp_path, folder, text):
    path = write_llama_cpp_gguf(tmp_path / "Qwen3VL-tiny-Q8_0.gguf", "Q8_0", text=text)
    data = path.read_bytes()
    broken = tmp_path / "Qwen3VL-tiny-partial.gguf"
    broken.write_bytes(data[: len(data) - 4096])
    with pytest.raises(ValueError, match=r"partial\.gguf: (truncated|not a readable GGUF file)"):
        load_text_encoder(broken, taps=TAPS, tokenizer=folder)


def test_host_operations_own_every_layer_and_change_nothing(tmp_path, folder, text):
    """Under a host namespace (ComfyUI's ops, here ``test_text_encoder._HostOps``) the GGUF Linears are the host's
    QuantizedLinear (ComfyUI casts / streams them), the decoded embedding and the norms the host's classes, and
    the features are those of the default ops."""
    from test_text_encoder import _HostOps

    path = write_llama_cpp_gguf(tmp_path / "Qwen3VL-tiny-Q4_K_M.gguf", "Q4_K_M", text=text)
    plain = load_text_encoder(path, taps=TAPS, tokenizer=folder)
    hosted = load_text_encoder(path, taps=TAPS, tokenizer=folder, operations=_HostOps)
    lm = hosted.language_model
    packed = [m for m in lm.modules() if isinstance(m, _HostOps.QuantizedLinear)]
    assert len(packed) == 5 * 7 and {m.options["qtype"] for m in packed} == {"Q4_K", "Q6_K"}
    assert isinstance(lm.embed_tokens, _HostOps.Embedding) and lm.embed_tokens.weight.dtype == torch.bfloat16
    assert isinstance(lm.layers[0].input_layernorm, _HostOps.TextRMSNorm)
    assert torch.equal(hosted.encode(CAPTIONS, use_cache=False).features, plain.encode(CAPTIONS, use_cache=False).features)


def test_metadata_values_are_read_as_gguf_reads_them(tmp_path, text):
    """``_field_value`` (decoded by hand: gguf < 0.11 has no ``ReaderField.contents``) equals gguf's own
    ``contents()`` for every field of a llama.cpp file, and one token list entry equals ``contents(i)``."""
    from model.checkpoints.gguf_reader import _field_value

    path = write_llama_cpp_gguf(tmp_path / "Qwen3VL-tiny-Q8_0.gguf", "Q8_0", text=text)
    fields = gguf.GGUFReader(str(path)).fields
    assert len(fields) > 20
    for name, f in fields.items():
        assert _field_value(f) == f.contents(), name
    tokens = fields["tokenizer.ggml.tokens"]
    assert [_field_value(tokens, i) for i in (0, 257, 297)] == [tokens.contents(i) for i in (0, 257, 297)]


def _rewritten(path, out, *, drop=(), extra=None):
    """``path``'s tensors (without metadata) in a new qwen3vl GGUF, ``drop`` left out, ``extra`` {name: array} added."""
    kept = {t.name: (np.asarray(t.data), t.tensor_type)  # as the reader maps it: elements, or block bytes
            for t in gguf.GGUFReader(str(path)).tensors if t.name not in drop}
    write_raw_gguf(out, {**kept, **(extra or {})}, arch="qwen3vl")
    return out


def test_tensor_names_in_messages_are_the_files(tmp_path, folder, text):
    """A GGUF without a tensor the model needs, or with one it does not know, is named as the file spells it."""
    path = write_llama_cpp_gguf(tmp_path / "Qwen3VL-tiny-BF16.gguf", "BF16", text=text)
    unknown = _rewritten(path, tmp_path / "unknown.gguf", extra={"rope_freqs.weight": np.ones(32, dtype=np.float32)})
    with pytest.raises(ValueError, match=r"unknown\.gguf: unexpected tensor rope_freqs\.weight for a Qwen3-VL text "
                                         r"encoder \(llama\.cpp names \(blk\.N\.\*\)\)"):
        load_text_encoder(unknown, taps=TAPS, tokenizer=folder)
    missing = _rewritten(path, tmp_path / "missing.gguf", drop=("blk.1.attn_k_norm.weight",))
    with pytest.raises(ValueError, match=r"missing\.gguf: does not match its Qwen3-VL configuration .*missing tensors "
                                         r"\(1\): blk\.1\.attn_k_norm\.weight$"):
        load_text_encoder(missing, taps=TAPS, tokenizer=folder)
    from model.text_encoder.gguf_layout import file_name, hf_name

    names = [t.name for t in gguf.GGUFReader(str(path)).tensors]
    assert all(file_name(hf_name(n)) == n for n in names) and len(names) == 5 * 11 + 3  # both directions agree


class _TokenList:
    """The two reader calls ``tokenizer_problem`` makes, over a given token list."""

    def __init__(self, tokens):
        self.tokens = tokens

    def array_length(self, key):
        return len(self.tokens)

    def array_item(self, key, index):
        return self.tokens[index]


def test_a_short_token_list_or_a_tokenizer_object_without_a_vocabulary(folder, caplog):
    from transformers import AutoTokenizer

    from model.text_encoder.gguf_layout import tokenizer_problem

    tok = AutoTokenizer.from_pretrained(str(folder))
    full = vocabulary(320)
    assert tokenizer_problem(_TokenList(full), tok, "t.gguf") is None
    assert tokenizer_problem(_TokenList([]), tok, "t.gguf") is None  # an empty list lists nothing to check against
    assert tokenizer_problem(_TokenList(full[:250]), tok, "t.gguf") == (
        "t.gguf: the GGUF lists 250 tokens, the tokenizer has ids up to 297 — they do not belong together; pick this "
        "model's tokenizer (auto: ComfyUI's bundled Qwen tokenizer)")
    # one token short of the tokenizer's largest id (297) is short too
    assert tokenizer_problem(_TokenList(full[:297]), tok, "t.gguf").startswith(
        "t.gguf: the GGUF lists 297 tokens, the tokenizer has ids up to 297 — they do not belong together")

    class IdsOnly:  # a tokenizer object with convert_ids_to_tokens but no get_vocab: still checked
        def __len__(self):
            return len(tok)

        def convert_ids_to_tokens(self, ids):
            return tok.convert_ids_to_tokens(ids)

    swapped = list(full)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    assert tokenizer_problem(_TokenList(full), IdsOnly(), "t.gguf") is None
    assert "2 of 298 ids differ; token 3" in tokenizer_problem(_TokenList(swapped), IdsOnly(), "t.gguf")

    class Opaque:
        def __len__(self):
            return 298

    with caplog.at_level(logging.WARNING):
        assert tokenizer_problem(_TokenList(full), Opaque(), "t.gguf") is None
    assert "t.gguf: the tokenizer object lists no vocabulary (no get_vocab / convert_ids_to_tokens): not checked " \
           "against the GGUF's 320 tokens" in caplog.text


def test_loading_logs_what_was_read(tmp_path, folder, text, caplog):
    path = write_llama_cpp_gguf(tmp_path / "Qwen3VL-tiny-Q8_0.gguf", "Q8_0", text=text)
    with caplog.at_level(logging.INFO):
        load_text_encoder(path, taps=(0, 1), tokenizer=folder)
    assert "GGUF (Q8_0), llama.cpp names (blk.N.*); 2 of 5 layers; tensors skipped unread: 1 final norm, " \
           "33 in layers after the last tap, 1 lm_head" in caplog.text
    # every metadata key outside general.* that the loader does not read is named, with why
    assert "Qwen3VL-tiny-Q8_0.gguf: GGUF metadata not used: qwen3vl.n_deepstack_layers (image inputs only); " \
           "qwen3vl.rope.dimension_sections (text positions are equal on all three MRoPE axes); tokenizer.ggml.model, " \
           "tokenizer.ggml.pre, tokenizer.ggml.token_type, tokenizer.ggml.merges, tokenizer.ggml.eos_token_id, " \
           "tokenizer.ggml.padding_token_id, tokenizer.ggml.bos_token_id, tokenizer.ggml.add_bos_token (the tokenizer " \
           "picked is used, checked against tokenizer.ggml.tokens); tokenizer.chat_template (Ideogram 4's prompt is " \
           "fixed)" in caplog.text
