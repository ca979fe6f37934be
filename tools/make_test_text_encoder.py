"""Write a tiny random Qwen3-VL text encoder (+ tokenizer) in every layout the loader accepts.

The weights are seeded float32 tensors, rounded to bf16 (the official files are bf16) and then
written through the same codecs as the real quantised files (``model.quant``):

=====================  =========================================================================
``official_bf16/``     Ideogram HF layout: ``text_encoder/`` (``Qwen3VLModel`` keys ``language_model.*``
                       + ``visual.*``, sharded with an index) + ``tokenizer/``
``official_fp8/``      same, ``"ideogram_fp8_weight_only": true``, every Linear (LM and vision)
                       float8_e4m3fn with a per-row float32 ``weight_scale``, single file
``official_nf4/``      same, transformers ``quantization_config`` (bitsandbytes nf4, no double
                       quant), every Linear packed with ``weight.absmax`` / ``weight.quant_map`` /
                       ``weight.quant_state.bitsandbytes__nf4``
``qwen_hf/``           a stock ``Qwen/Qwen3-VL-*-Instruct`` folder: ``model.language_model.*``,
                       ``model.visual.*``, ``lm_head.weight``, index + shards, tokenizer at the root
``comfy_fp8_scaled``   ComfyUI ``qwen3vl_*_fp8_scaled.safetensors``: one file, ``comfy_quant`` fp8 with a
                       per-tensor scale on the LM Linears; naming ``hf`` (``model.language_model.*`` +
                       ``model.visual.*``) or ``comfy`` (``model.layers.*``, no vision tower)
=====================  =========================================================================

The tokenizer is a byte-level BPE built with the ``tokenizers`` library (256 byte symbols + a
few hand-written merges, so it encodes any text) carrying Qwen's special tokens and a chat
template equivalent to Qwen3-VL's for text messages.  Nothing here is trained, so the files are
identical on every machine.

    python -m tools.make_test_text_encoder --out /tmp/te            # every layout
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Optional

import torch

from tools.make_test_checkpoints import quantize_linear, write_file, write_sharded

LAYOUTS = ("official_bf16", "official_fp8", "official_nf4", "qwen_hf", "comfy_fp8_scaled")

# ----------------------------------------------------------------------------------- tokenizer

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
# Qwen2/3 pre-tokenisation regex (what Qwen2Tokenizer builds in transformers 5).
_PRETOKENIZE_REGEX = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
                      r"""|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Hand-written merges (byte-level symbols; "Ġ" is a space).  Order = merge priority.
_MERGES = (
    "Ġ t", "h e", "i n", "Ġ a", "e r", "o n", "Ġt he", "r e", "a n", "o r", "e n", "a t", "Ġ s", "Ġ c",
    "Ġ o", "e s", "Ġ w", "i s", "a r", "l e", "Ġ b", "Ġ f", "Ġ p", "o u", "Ġ m", "i t", "a l", "Ġa n",
    "Ġan d", "Ġ \"", "\" :", "Ġ {", "Ġ [", "e d", "in g", "Ġ in", "Ġo f", "Ġ l", "s t",
)
TINY_CHAT_TEMPLATE = (
    "{%- if messages[0].role == 'system' %}"
    "{{- '<|im_start|>system\\n' }}"
    "{%- if messages[0].content is string %}{{- messages[0].content }}"
    "{%- else %}{%- for c in messages[0].content %}{%- if 'text' in c %}{{- c.text }}{%- endif %}{%- endfor %}"
    "{%- endif %}{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role != 'system' or not loop.first %}"
    "{{- '<|im_start|>' + message.role + '\\n' }}"
    "{%- if message.content is string %}{{- message.content }}"
    "{%- else %}{%- for c in message.content %}"
    "{%- if c.type == 'text' or 'text' in c %}{{- c.text }}{%- endif %}"
    "{%- endfor %}{%- endif %}"
    "{{- '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _bytes_to_unicode() -> list[str]:
    """GPT-2 byte-level alphabet, ordered by byte value."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    vocab = {sym: i for i, sym in enumerate(_bytes_to_unicode())}
    merges = []
    for m in _MERGES:
        a, b = m.split(" ")
        if a not in vocab or b not in vocab:
            raise AssertionError(f"merge {m!r} uses an unknown symbol")
        merges.append((a, b))
        vocab.setdefault(a + b, len(vocab))
    return vocab, merges


def special_token_ids() -> dict[str, int]:
    base = len(tiny_vocab()[0])
    return {tok: base + i for i, tok in enumerate(SPECIAL_TOKENS)}


def build_tokenizer():
    """A ``tokenizers.Tokenizer`` with Qwen2's pipeline (NFC, regex split, byte-level BPE)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    vocab, merges = tiny_vocab()
    tok = Tokenizer(BPE(vocab=vocab, merges=merges, unk_token=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok


def write_tokenizer(folder: Path, *, chat_template: Optional[str] = TINY_CHAT_TEMPLATE) -> Path:
    """tokenizer.json + tokenizer_config.json (+ vocab.json / merges.txt) like a Qwen repo."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer()
    tok.save(str(folder / "tokenizer.json"))
    vocab, merges = tiny_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    ids = special_token_ids()
    config = {
        "add_bos_token": False, "add_prefix_space": False, "bos_token": None,
        "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": None,
        "errors": "replace", "model_max_length": 262144, "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer", "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                                          "single_word": False, "special": True} for t, i in ids.items()},
    }
    if chat_template is not None:
        config["chat_template"] = chat_template
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return folder


# ----------------------------------------------------------------------------------- model

def tiny_text_config(num_layers: int = 5, vocab_size: int = 320) -> dict:
    """Qwen3-VL ``text_config`` in the legacy (transformers 4.57) spelling the real files use."""
    return {
        "model_type": "qwen3_vl_text", "vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": num_layers, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "hidden_act": "silu", "rms_norm_eps": 1e-6, "max_position_embeddings": 4096, "attention_bias": False,
        "attention_dropout": 0.0, "initializer_range": 0.02,
        "bos_token_id": special_token_ids()["<|endoftext|>"], "eos_token_id": special_token_ids()["<|im_end|>"],
        "rope_theta": 5000000, "dtype": "bfloat16", "use_cache": True,
        "rope_scaling": {"mrope_interleaved": True, "mrope_section": [4, 2, 2], "rope_type": "default"},
    }


def packed_golden_text_config() -> dict:
    """The config of the packed-sequence goldens (``tests/data/te_packed_golden.safetensors``): Qwen3-VL-8B's
    depth (36 layers, so all 13 real taps exist), attention geometry (head_dim 128, GQA, mrope (24, 20, 20)),
    vocabulary (151,936) and rope; only the widths are small (hidden 128, MLP 256, 4 query / 2 KV heads)."""
    cfg = tiny_text_config(num_layers=36, vocab_size=151936)
    cfg.update({"hidden_size": 128, "intermediate_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 128, "max_position_embeddings": 262144,
                "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"}})
    return cfg


_WORDS = "the quick brown fox jumps over a lazy dog in warm evening light".split()


def golden_caption(objects: int) -> str:
    """A deterministic compact JSON caption; 0 objects → the shortest caption ("fox")."""
    if objects == 0:
        return "fox"
    objs = [{"name": f"{_WORDS[i % len(_WORDS)]} {_WORDS[(3 * i + 1) % len(_WORDS)]}", "pos": [i % 7, (5 * i) % 11]}
            for i in range(objects)]
    return json.dumps({"subject": "a poster", "objects": objs, "style": "flat"}, separators=(",", ":"))


# (caption objects, height, width) of the packed-sequence goldens: ~20 (the template alone is 18 tokens with the
# tiny tokenizer), ~200 and ~1500 tokens, at image-token counts 256 (256²), 4096 (1024²) and 1536 (512×768).
PACKED_GOLDEN_CASES = ((0, 256, 256), (0, 1024, 1024), (5, 512, 768), (50, 256, 256), (50, 1024, 1024))


def tiny_vision_config(out_hidden_size: int = 64) -> dict:
    return {
        "model_type": "qwen3_vl", "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
        "in_channels": 3, "patch_size": 4, "spatial_merge_size": 2, "temporal_patch_size": 2,
        "out_hidden_size": out_hidden_size, "num_position_embeddings": 16, "deepstack_visual_indexes": [0, 1],
        "hidden_act": "gelu_pytorch_tanh", "initializer_range": 0.02,
    }


def full_config(text: dict, vision: dict, architecture: str) -> dict:
    """A Qwen3-VL ``config.json`` (``model_type`` qwen3_vl) around the given sub-configs."""
    return {"architectures": [architecture], "model_type": "qwen3_vl", "image_token_id": 151655,
            "video_token_id": 151656, "vision_start_token_id": 151652, "vision_end_token_id": 151653,
            "tie_word_embeddings": False, "transformers_version": "4.57.0", "dtype": "bfloat16",
            "text_config": dict(text), "vision_config": dict(vision)}


def text_shapes(text: dict) -> dict[str, tuple[int, ...]]:
    """Qwen3VLTextModel parameter shapes (keys without prefix), final norm included."""
    h, i, hd = text["hidden_size"], text["intermediate_size"], text["head_dim"]
    nq, nkv = text["num_attention_heads"], text["num_key_value_heads"]
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (text["vocab_size"], h)}
    for n in range(text["num_hidden_layers"]):
        p = f"layers.{n}."
        shapes.update({
            p + "input_layernorm.weight": (h,), p + "post_attention_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (nq * hd, h), p + "self_attn.k_proj.weight": (nkv * hd, h),
            p + "self_attn.v_proj.weight": (nkv * hd, h), p + "self_attn.o_proj.weight": (h, nq * hd),
            p + "self_attn.q_norm.weight": (hd,), p + "self_attn.k_norm.weight": (hd,),
            p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h), p + "mlp.down_proj.weight": (h, i),
        })
    shapes["norm.weight"] = (h,)
    return shapes


def vision_shapes(vision: dict) -> dict[str, tuple[int, ...]]:
    """Qwen3VLVisionModel parameter shapes (keys without ``visual.``)."""
    d, i, o = vision["hidden_size"], vision["intermediate_size"], vision["out_hidden_size"]
    ps, tps, c, m = vision["patch_size"], vision["temporal_patch_size"], vision["in_channels"], vision["spatial_merge_size"]
    merged = d * m * m
    shapes: dict[str, tuple[int, ...]] = {"patch_embed.proj.weight": (d, c, tps, ps, ps), "patch_embed.proj.bias": (d,),
                                          "pos_embed.weight": (vision["num_position_embeddings"], d)}
    for n in range(vision["depth"]):
        p = f"blocks.{n}."
        shapes.update({p + "norm1.weight": (d,), p + "norm1.bias": (d,), p + "norm2.weight": (d,), p + "norm2.bias": (d,),
                       p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,),
                       p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                       p + "mlp.linear_fc1.weight": (i, d), p + "mlp.linear_fc1.bias": (i,),
                       p + "mlp.linear_fc2.weight": (d, i), p + "mlp.linear_fc2.bias": (d,)})
    for p, norm_dim in [("merger.", d)] + [(f"deepstack_merger_list.{k}.", merged)
                                           for k in range(len(vision["deepstack_visual_indexes"]))]:
        shapes.update({p + "norm.weight": (norm_dim,), p + "norm.bias": (norm_dim,),
                       p + "linear_fc1.weight": (merged, merged), p + "linear_fc1.bias": (merged,),
                       p + "linear_fc2.weight": (o, merged), p + "linear_fc2.bias": (o,)})
    return shapes


def random_weights(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Seeded float32 weights scaled so a few layers keep activations O(1)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        leaf = key.rsplit(".", 2)[-2]
        if key.endswith(".bias"):
            value = 0.02 * torch.randn(shape, generator=g)
        elif "norm" in leaf and key.endswith(".weight"):
            value = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(("embed_tokens.weight", "pos_embed.weight")):
            value = 0.5 * torch.randn(shape, generator=g)
        elif len(shape) == 2:
            value = torch.randn(shape, generator=g) / shape[1] ** 0.5
        else:
            value = 0.05 * torch.randn(shape, generator=g)
        out[key] = value.contiguous()
    return out


def tiny_weights(text: dict, vision: dict, seed: int = 0) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(language model, vision tower) bf16 weights; the LM's tensors come first in the RNG stream."""
    lm = {k: v.to(torch.bfloat16) for k, v in random_weights(text_shapes(text), seed).items()}
    vis = {k: v.to(torch.bfloat16) for k, v in random_weights(vision_shapes(vision), seed + 1000).items()}
    return lm, vis


def _is_linear(key: str, value: torch.Tensor) -> bool:
    return key.endswith(".weight") and value.ndim == 2 and not key.endswith(("embed_tokens.weight", "pos_embed.weight"))


def quantize(tensors: dict[str, torch.Tensor], scheme: Optional[str]) -> dict[str, torch.Tensor]:
    """bf16 tensors → the tensors of a file whose Linears use ``scheme`` (None keeps bf16)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        if scheme is None or not _is_linear(key, value):
            out[key] = value
            continue
        out.update(quantize_linear(key, value, {"comfy_fp8": "fp8_tensorwise"}.get(scheme, scheme)))
    return out


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in tensors.items()}


def write_safetensors(tensors: dict[str, torch.Tensor], folder: Path, *, shards: int = 1,
                      stem: str = "model") -> Path:
    """``stem.safetensors`` or ``stem-0000i-of-0000n.safetensors`` + index; returns the entry file."""
    if shards == 1:
        return write_file(tensors, folder / f"{stem}.safetensors", "text_encoder")
    return write_sharded(tensors, folder, "text_encoder", shards=shards, stem=stem)


def write_layout(layout: str, out: Path, *, text: Optional[dict] = None, vision: Optional[dict] = None,
                 seed: int = 0, comfy_naming: str = "hf") -> Path:
    """Write one layout under ``out``; returns what to pass to ``load_text_encoder``."""
    text = text or tiny_text_config()
    vision = vision or tiny_vision_config(text["hidden_size"])
    lm, vis = tiny_weights(text, vision, seed)
    if layout in ("official_bf16", "official_fp8", "official_nf4"):
        root = out / layout
        scheme = {"official_bf16": None, "official_fp8": "fp8_rowwise", "official_nf4": "nf4"}[layout]
        tensors = {**_prefixed(quantize(lm, scheme), "language_model."), **_prefixed(quantize(vis, scheme), "visual.")}
        cfg = full_config(text, vision, "Qwen3VLModel")
        if scheme == "fp8_rowwise":
            cfg["ideogram_fp8_weight_only"] = True
        elif scheme == "nf4":
            cfg["quantization_config"] = {
                "_load_in_4bit": True, "_load_in_8bit": False, "bnb_4bit_compute_dtype": "bfloat16",
                "bnb_4bit_quant_storage": "uint8", "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": False,
                "llm_int8_enable_fp32_cpu_offload": False, "llm_int8_has_fp16_weight": False,
                "llm_int8_skip_modules": None, "llm_int8_threshold": 6.0, "load_in_4bit": True,
                "load_in_8bit": False, "quant_method": "bitsandbytes"}
        write_safetensors(tensors, root / "text_encoder", shards=2 if scheme is None else 1)
        (root / "text_encoder" / "config.json").write_text(json.dumps(cfg, indent=2))
        write_tokenizer(root / "tokenizer")
        return root
    if layout == "qwen_hf":
        root = out / layout
        lm_head = random_weights({"lm_head.weight": (text["vocab_size"], text["hidden_size"])}, seed + 2000)
        tensors = {**_prefixed(lm, "model.language_model."), **_prefixed(vis, "model.visual."),
                   "lm_head.weight": lm_head["lm_head.weight"].to(torch.bfloat16)}
        write_safetensors(tensors, root, shards=3)
        (root / "config.json").write_text(json.dumps(full_config(text, vision, "Qwen3VLForConditionalGeneration"),
                                                     indent=2))
        write_tokenizer(root)
        return root
    if layout == "comfy_fp8_scaled":
        quant = quantize(lm, "comfy_fp8")
        if comfy_naming == "hf":
            tensors = {**_prefixed(quant, "model.language_model."), **_prefixed(vis, "model.visual.")}
        elif comfy_naming == "comfy":
            tensors = _prefixed(quant, "model.")
        else:
            raise ValueError(f"comfy_naming must be 'hf' or 'comfy', got {comfy_naming!r}")
        return write_file(tensors, out / f"qwen3vl_tiny_fp8_scaled_{comfy_naming}.safetensors", layout)
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")


def write_all(out: Path, *, seed: int = 0, text: Optional[dict] = None) -> dict[str, Path]:
    paths = {layout: write_layout(layout, out, seed=seed, text=text) for layout in LAYOUTS}
    paths["comfy_fp8_scaled_comfy_names"] = write_layout("comfy_fp8_scaled", out, seed=seed, text=text,
                                                         comfy_naming="comfy")
    return paths


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=5)
    args = ap.parse_args(argv)
    for name, path in write_all(args.out, seed=args.seed, text=tiny_text_config(args.layers)).items():
        print(f"{name}: {path}")


if __name__ == "__main__":
    main()
