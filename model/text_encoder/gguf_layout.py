"""llama.cpp's Qwen3-VL language model as a GGUF file (``general.architecture`` ``qwen3vl``): its tensor names mapped
to ``Qwen3VLTextModel``'s, its metadata checked against the weights, its vocabulary against the tokenizer.

llama.cpp's converter (``Qwen3VLTextModel``, a ``Qwen3Model``) writes the language model of
``Qwen3VLForConditionalGeneration`` under llama.cpp names — ``token_embd``, ``blk.N.attn_q`` … ``ffn_down``,
``output_norm``, ``output`` — without reordering any weight (q/k are not permuted: only its Llama classes do
that), and the vision tower goes to a separate ``mmproj`` file (architecture ``clip``).  Shapes are in ggml order;
the reader reverses them.  Quantised tensors stay ggml blocks and decode per layer (``model.checkpoints.gguf_codec``),
the token embedding is decoded once at load.
"""

from __future__ import annotations

import logging
import re
from typing import Optional

log = logging.getLogger(__name__)

LLAMA_CPP_ARCH = "qwen3vl"
NAMING = "llama.cpp names (blk.N.*)"
WHAT = "a Qwen3-VL text encoder GGUF (llama.cpp's language-model file)"

# general.architecture of GGUF files users keep with their text encoders → what such a file is.
OTHER_ARCHITECTURES = {
    "clip": "the vision projector (mmproj) of a vision-language model, not its language model: pick the larger "
            "Qwen3-VL-8B-Instruct GGUF without 'mmproj' in its name",
    "qwen3": "a text-only Qwen3 LLM (Ideogram 4 needs the Qwen3-VL-8B-Instruct language model)",
    "qwen3vlmoe": "a mixture-of-experts Qwen3-VL (e.g. 30B-A3B); Ideogram 4 needs the dense Qwen3-VL-8B",
    "qwen3moe": "a Qwen3 mixture-of-experts LLM",
    "qwen2vl": "Qwen2-VL / Qwen2.5-VL (Qwen-Image's text encoder), not Qwen3-VL",
    "qwen2": "a Qwen2 / Qwen2.5 LLM",
    "llama": "a Llama-family LLM",
    "t5": "a T5 text encoder", "t5encoder": "a T5 text encoder",
    "ideogram4": "an Ideogram 4 diffusion model (DiT): load it with the Ideogram4 model loader, not as the text encoder",
    "ideogram": "an Ideogram 4 diffusion model (DiT): load it with the Ideogram4 model loader, not as the text encoder",
}

_TOP = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight",
        "output.weight": "lm_head.weight"}
_LAYER = re.compile(r"^blk\.(\d+)\.(\w+)\.(weight|bias)$")
_IN_LAYER = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
             "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm",
             "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "ffn_gate": "mlp.gate_proj",
             "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


_TOP_FILE = {v: k for k, v in _TOP.items()}
_IN_LAYER_FILE = {v: k for k, v in _IN_LAYER.items()}
_HF_LAYER = re.compile(r"^layers\.(\d+)\.(.+)\.(weight|bias)$")


def _translate(name: str, top: dict, layer: re.Pattern, in_layer: dict, block: str) -> str:
    if name in top:
        return top[name]
    m = layer.match(name)
    return f"{block}.{m[1]}.{in_layer[m[2]]}.{m[3]}" if m and m[2] in in_layer else name


def hf_name(file_name: str) -> str:
    """``blk.3.attn_q.weight`` → ``layers.3.self_attn.q_proj.weight``; a name llama.cpp's Qwen3-VL has no
    counterpart for stays as it is (the format detection then names it as unexpected)."""
    return _translate(file_name, _TOP, _LAYER, _IN_LAYER, "layers")


def file_name(hf: str) -> str:
    """The other way: ``layers.3.self_attn.q_proj.weight`` → ``blk.3.attn_q.weight`` (for messages about a tensor the
    file lacks); a name without a llama.cpp counterpart stays as it is."""
    return _translate(hf, _TOP_FILE, _HF_LAYER, _IN_LAYER_FILE, "blk")


def _meta(reader, key: str):
    return reader.field(f"{LLAMA_CPP_ARCH}.{key}")


# config value → (metadata key, type); llama.cpp writes them from the model's config.json
_CONSTANTS = {"rope_theta": ("rope.freq_base", float), "rms_norm_eps": ("attention.layer_norm_rms_epsilon", float),
              "max_position_embeddings": ("context_length", int)}


def config_constants(reader) -> dict:
    """The values that are not visible in the weights, from the file's metadata (those it has)."""
    return {name: kind(value) for name, (key, kind) in _CONSTANTS.items() if (value := _meta(reader, key)) is not None}


def size_problem(reader, text_cfg, label: str) -> Optional[str]:
    """The first metadata size that disagrees with the weights (a damaged or hand-edited file), else None."""
    sizes = dict(zip(_SIZES, (text_cfg.num_hidden_layers, text_cfg.hidden_size, text_cfg.intermediate_size,
                              text_cfg.num_attention_heads, text_cfg.num_key_value_heads, text_cfg.head_dim,
                              text_cfg.head_dim)))
    for key, want in sizes.items():
        have = _meta(reader, key)
        if have is not None and int(have) != int(want):
            return (f"{label}: GGUF metadata {LLAMA_CPP_ARCH}.{key} is {have}, but the weights give {want} "
                    "(a damaged or hand-edited file)")
    return None


_TOKENS = "tokenizer.ggml.tokens"
_SIZES = ("block_count", "embedding_length", "feed_forward_length", "attention.head_count", "attention.head_count_kv",
          "attention.key_length", "attention.value_length")
# metadata the loader does not use, and why (exact keys before key prefixes ending in "."); keys outside these and
# general.* are listed as not used without a reason
_NOT_NEEDED = {"rope.dimension_sections": "text positions are equal on all three MRoPE axes",
               "n_deepstack_layers": "image inputs only",
               "tokenizer.chat_template": "Ideogram 4's prompt is fixed",
               "tokenizer.": "the tokenizer picked is used, checked against tokenizer.ggml.tokens"}


def unused_metadata(reader) -> list[str]:
    """The file's metadata keys the loader does not read (``general.*`` — name, file type — aside), grouped by the
    reason where there is one: for the load log, so nothing in the file is passed over unsaid."""
    read = {f"{LLAMA_CPP_ARCH}.{k}" for k in (*_SIZES, *(key for key, _ in _CONSTANTS.values()))} | {_TOKENS}
    groups: dict[Optional[str], list[str]] = {}
    for key in reader.metadata_keys():
        if key in read or key.startswith("general."):
            continue
        short = key.removeprefix(f"{LLAMA_CPP_ARCH}.")
        why = _NOT_NEEDED.get(short) or next((w for k, w in _NOT_NEEDED.items()
                                             if k.endswith(".") and key.startswith(k)), None)
        groups.setdefault(why, []).append(key)
    return [", ".join(keys) + (f" ({why})" if why else "") for why, keys in groups.items()]


def tokenizer_problem(reader, tok, label: str) -> Optional[str]:
    """Why ``tok`` does not belong to this GGUF's vocabulary (None if it does, or the file lists none): every id
    the tokenizer has must be the same token string in the file's ``tokenizer.ggml.tokens`` (llama.cpp writes
    them from the model's own tokenizer; the ids past the tokenizer's are ``[PADn]`` rows)."""
    count = reader.array_length(_TOKENS)
    if not count:
        return None
    by_id = _tokens_by_id(tok)
    if by_id is None:
        log.warning("%s: the tokenizer object lists no vocabulary (no get_vocab / convert_ids_to_tokens): not checked "
                    "against the GGUF's %d tokens", label, count)
        return None
    if max(by_id) >= count:
        return (f"{label}: the GGUF lists {count} tokens, the tokenizer has ids up to {max(by_id)} — they do not "
                "belong together; pick this model's tokenizer (auto: ComfyUI's bundled Qwen tokenizer)")
    bad = [i for i in sorted(by_id) if reader.array_item(_TOKENS, i) != by_id[i]]
    if not bad:
        return None
    i = bad[0]
    return (f"{label}: the tokenizer does not match the GGUF's own vocabulary ({len(bad)} of {len(by_id)} ids differ; "
            f"token {i} is {by_id[i]!r} in the tokenizer, {reader.array_item(_TOKENS, i)!r} in the file) — pick this "
            "model's tokenizer (auto: ComfyUI's bundled Qwen tokenizer)")


def _tokens_by_id(tok) -> Optional[dict[int, str]]:
    vocab = getattr(tok, "get_vocab", None)
    if callable(vocab):
        return {i: t for t, i in vocab().items()}
    convert = getattr(tok, "convert_ids_to_tokens", None)
    if callable(convert):
        return dict(enumerate(convert(list(range(len(tok))))))
    return None
