"""Write a tiny random Qwen3-VL language model as llama.cpp's GGUF, with ``gguf.GGUFWriter`` — the layout of
``Qwen3VL-8B-Instruct-Q4_K_M.gguf`` and its siblings (the language model only; the vision tower is the separate
``mmproj`` file, also writable here).

What llama.cpp's converter and ``llama-quantize`` write, reproduced:

* ``general.architecture`` ``qwen3vl``; ``qwen3vl.*`` sizes, rope base, RMSNorm epsilon, context length,
  ``rope.dimension_sections`` and ``n_deepstack_layers``; the tokenizer as ``tokenizer.ggml.*`` (model ``gpt2``,
  pre-tokeniser ``qwen2``, every id's token string, ids without a token as ``[PADn]``, merges, chat template);
* tensor names ``token_embd``, ``blk.N.attn_{q,k,v,output,q_norm,k_norm,norm}``, ``blk.N.ffn_{norm,gate,up,down}``,
  ``output_norm``, ``output``; shapes in ggml order (the writer reverses them); no weight reordered;
* tensor types per file type: norms F32; ``F16`` / ``BF16`` / ``Q8_0`` … every matrix; ``Q4_K_M`` / ``Q5_K_M``
  mix in Q6_K (``output``, and ``attn_v`` / ``ffn_down`` of the first half of the layers — a simplification of
  llama.cpp's "use more bits" rule, which picks the first and last eighth and every third layer; only the mix
  of block types matters here).

Types ``gguf.quants.quantize`` implements are quantised from the weights; K-quants get valid random blocks
(their truth is ``gguf.quants.dequantize``, as in ``tools.make_test_quantized``).

    python -m tools.make_test_text_encoder_gguf --out /tmp/te_gguf --file-type Q4_K_M
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from tools.make_test_quantized import _QUANTISABLE, random_blocks
from tools.make_test_text_encoder import (TINY_CHAT_TEMPLATE, SPECIAL_TOKENS, special_token_ids, tiny_text_config,
                                          tiny_vocab, tiny_weights, tiny_vision_config)

FILE_TYPES = ("F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_0", "Q4_K_M", "Q4_0", "Q3_K", "IQ4_NL", "IQ4_XS")
_FILE_TYPE_IDS = {"F32": 0, "F16": 1, "Q4_0": 2, "Q8_0": 7, "Q5_0": 8, "Q3_K": 12, "Q4_K_M": 15, "Q5_K_M": 17,
                  "Q6_K": 18, "IQ4_NL": 25, "IQ4_XS": 30, "BF16": 32}


def gguf_text_config(num_layers: int = 5, vocab_size: int = 320) -> dict:
    """A tiny Qwen3-VL text config whose matrices are whole K-quant blocks (rows of 256 and 512 values)."""
    cfg = tiny_text_config(num_layers=num_layers, vocab_size=vocab_size)
    cfg.update({"hidden_size": 256, "intermediate_size": 512, "num_attention_heads": 4, "num_key_value_heads": 2,
                "head_dim": 64,
                "rope_scaling": {"mrope_interleaved": True, "mrope_section": [12, 10, 10], "rope_type": "default"}})
    return cfg


@functools.lru_cache(maxsize=None)
def _tensor_map(num_layers: int):
    import gguf

    return gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3VL, num_layers)


def llama_cpp_name(hf_name: str, num_layers: int) -> str:
    """``layers.3.self_attn.q_proj.weight`` → ``blk.3.attn_q.weight``, by gguf's own tensor map for ``QWEN3VL``
    (what llama.cpp's converter uses after stripping ``model.language_model.`` to ``model.``)."""
    name = _tensor_map(num_layers).get_name(hf_name if hf_name.startswith("lm_head.") else "model." + hf_name,
                          try_suffixes=(".weight", ".bias"))
    if name is None:
        raise KeyError(f"gguf has no QWEN3VL tensor for {hf_name}")
    return name


def tensor_type(hf_name: str, shape: Sequence[int], file_type: str, num_layers: int) -> str:
    if len(shape) == 1:
        return "F32"
    if file_type in ("F32", "F16", "BF16"):
        return file_type
    base = {"Q4_K_M": "Q4_K", "Q5_K_M": "Q5_K"}.get(file_type, file_type)
    if file_type in ("Q4_K_M", "Q5_K_M"):
        if hf_name == "lm_head.weight":
            return "Q6_K"
        if hf_name.endswith(("self_attn.v_proj.weight", "mlp.down_proj.weight")) and \
                int(hf_name.split(".")[1]) < (num_layers + 1) // 2:
            return "Q6_K"
    return base


def _encode(w: np.ndarray, kind: str, seed: int):
    import gguf

    if kind == "F32":
        return w.astype(np.float32)
    if kind == "F16":
        return w.astype(np.float16)
    if kind in _QUANTISABLE:
        return gguf.quants.quantize(w, gguf.GGMLQuantizationType[kind])
    return random_blocks(kind, *w.shape, float(np.abs(w).max()), seed)


def vocabulary(vocab_size: int, tokens: Optional[Sequence[str]] = None) -> list[str]:
    """Token strings by id, as llama.cpp writes them: the tokenizer's (default: the tiny one), the ids it lacks
    up to the embedding's rows as ``[PADn]``."""
    if tokens is None:
        vocab = dict(tiny_vocab()[0])
        vocab.update(special_token_ids())
        tokens = [None] * (max(vocab.values()) + 1)
        for t, i in vocab.items():
            tokens[i] = t
    out = [t if t is not None else f"[PAD{i}]" for i, t in enumerate(tokens)]
    return out + [f"[PAD{i}]" for i in range(len(out), vocab_size)]


def write_llama_cpp_gguf(path: Path, file_type: str = "Q8_0", *, text: Optional[dict] = None, seed: int = 0,
                         tokens: Optional[Sequence[str]] = None, merges: Optional[Sequence[str]] = None,
                         architecture: str = "qwen3vl", with_metadata: bool = True,
                         weights: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """The language model of a tiny Qwen3-VL (``tiny_weights(text, …, seed)``, lm_head included) as llama.cpp's
    GGUF of ``file_type``; ``tokens`` / ``merges``: the vocabulary written into the file (default: the tiny
    tokenizer's).  ``with_metadata=False`` leaves out the ``qwen3vl.*`` keys (an old or stripped file).
    ``weights``: other Qwen3VLTextModel-named weights of ``text``'s shapes (``lm_head.weight`` optional)."""
    import gguf

    if file_type not in FILE_TYPES:
        raise ValueError(f"file_type must be one of {FILE_TYPES}, got {file_type!r}")
    text = text or gguf_text_config()
    if weights is None:
        lm, _ = tiny_weights(text, tiny_vision_config(text["hidden_size"]), seed)
        g = torch.Generator().manual_seed(seed + 2000)
        lm["lm_head.weight"] = (torch.randn(text["vocab_size"], text["hidden_size"], generator=g)
                                / text["hidden_size"] ** 0.5).to(torch.bfloat16)
    else:
        lm = dict(weights)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_name("Qwen3-VL tiny test model")
    writer.add_file_type(_FILE_TYPE_IDS[file_type])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    if with_metadata:
        llm, att, rope = gguf.Keys.LLM, gguf.Keys.Attention, gguf.Keys.Rope
        arch = architecture
        for key, value in ((llm.BLOCK_COUNT, text["num_hidden_layers"]),
                           (llm.CONTEXT_LENGTH, text["max_position_embeddings"]),
                           (llm.EMBEDDING_LENGTH, text["hidden_size"]),
                           (llm.FEED_FORWARD_LENGTH, text["intermediate_size"]),
                           (att.HEAD_COUNT, text["num_attention_heads"]), (att.HEAD_COUNT_KV, text["num_key_value_heads"]),
                           (att.KEY_LENGTH, text["head_dim"]), (att.VALUE_LENGTH, text["head_dim"]),
                           (llm.NUM_DEEPSTACK_LAYERS, 3)):
            writer.add_uint32(key.format(arch=arch), value)
        writer.add_float32(rope.FREQ_BASE.format(arch=arch), float(text["rope_theta"]))
        writer.add_float32(att.LAYERNORM_RMS_EPS.format(arch=arch), float(text["rms_norm_eps"]))
        writer.add_array(rope.DIMENSION_SECTIONS.format(arch=arch), list(text["rope_scaling"]["mrope_section"]) + [0])
    vocab = vocabulary(text["vocab_size"], tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(vocab)
    specials = set(SPECIAL_TOKENS)
    writer.add_token_types([gguf.TokenType.CONTROL if t in specials else
                            gguf.TokenType.UNUSED if t.startswith("[PAD") else gguf.TokenType.NORMAL for t in vocab])
    writer.add_token_merges(list(merges) if merges is not None else [f"{a} {b}" for a, b in tiny_vocab()[1]])
    if "<|im_end|>" in vocab:
        writer.add_eos_token_id(vocab.index("<|im_end|>"))
    if "<|endoftext|>" in vocab:
        writer.add_pad_token_id(vocab.index("<|endoftext|>"))
        writer.add_bos_token_id(vocab.index("<|endoftext|>"))
    writer.add_add_bos_token(False)
    writer.add_chat_template(TINY_CHAT_TEMPLATE)
    n = text["num_hidden_layers"]
    for i, (key, value) in enumerate(lm.items()):
        kind = tensor_type(key, value.shape, file_type, text["num_hidden_layers"])
        data = _encode(value.to(torch.float32).numpy(), kind, seed + i)
        if kind in ("F32", "F16"):
            writer.add_tensor(llama_cpp_name(key, n), data)
        else:
            writer.add_tensor(llama_cpp_name(key, n), data, raw_shape=data.shape,
                              raw_dtype=gguf.GGMLQuantizationType[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def write_mmproj(path: Path) -> Path:
    """A vision-projector file's header as llama.cpp writes it (``clip``), one tensor: what a user may pick by
    mistake."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), "clip")
    writer.add_bool("clip.has_vision_encoder", True)
    writer.add_string("clip.projector_type", "qwen3vl_merger")
    writer.add_tensor("v.patch_embd.weight", np.zeros((32, 3 * 16 * 16), dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--file-type", default="Q4_K_M", choices=FILE_TYPES)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    print(write_llama_cpp_gguf(args.out / f"Qwen3VL-tiny-{args.file_type}.gguf", args.file_type, seed=args.seed))


if __name__ == "__main__":
    main()
