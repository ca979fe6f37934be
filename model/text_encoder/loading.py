"""``load_text_encoder``: any supported Qwen3-VL checkpoint → an ``Ideogram4TextEncoder``.

Accepted sources (spec §3.5):

* the official Ideogram 4 folder (``text_encoder/`` + ``tokenizer/``): bf16, the weight-only fp8
  variant (``"ideogram_fp8_weight_only": true``, per-row float32 ``weight_scale``) and the
  bitsandbytes nf4 variant (``quantization_config``; no double quantisation);
* a stock ``Qwen/Qwen3-VL-8B-Instruct`` folder (``model.language_model.*``, ``model.visual.*``,
  ``lm_head.*``, tokenizer at the root);
* a single file such as ComfyUI's ``qwen3vl_8b_fp8_scaled.safetensors`` (``comfy_quant`` fp8 with
  per-tensor scales; HF or ComfyUI ``model.layers.*`` names) with the tokenizer from a folder
  the caller names;
* llama.cpp's GGUF of the language model (``Qwen3VL-8B-Instruct-Q4_K_M.gguf`` …; :mod:`.gguf_layout`), likewise
  with a tokenizer folder, checked against the vocabulary the file lists.

Only the language model is built — with transformers' ``Qwen3VLTextModel`` on the meta device,
and only up to the last tapped layer: no vision tower, no lm_head, no final norm, no later
layers; their tensors are never read.  Weights are assigned tensor by tensor straight from the
safetensors file (``model.loading.assign_weights``), quantised Linears become
``model.quant.QuantizedLinear`` exactly as for the DiT.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
import torch.nn as nn

from ..checkpoints import (CheckpointFormat, CheckpointReader, TorchOps, assign_weights, classify_modules,
                           describe_other_family, key_problems, open_checkpoint, reader_traits, replace_module,
                           swap_quantized_linears)
from ..checkpoints.gguf_reader import RenamedReader
from ..cpu_math import warm_vector_math
from ..dit.constants import MAX_TEXT_TOKENS, TEXT_ENCODER_TAPS
from . import gguf_layout
from .encoder import Ideogram4TextEncoder

log = logging.getLogger(__name__)

COMPONENT = "text_encoder"
# Qwen3-VL constants that are not visible in the weights (used when there is no config.json).
QWEN3VL_ROPE_THETA = 5_000_000.0
QWEN3VL_RMS_NORM_EPS = 1e-6
QWEN3VL_MAX_POSITIONS = 262_144

_ANCHOR = "embed_tokens.weight"
_QK_NORM = "layers.0.self_attn.q_norm.weight"
_NAMINGS = {
    "model.language_model.": "Hugging Face Qwen3-VL names (model.language_model.*)",
    "language_model.": "Qwen3VLModel names (language_model.*)",
    "model.": "ComfyUI text-only names (model.layers.*)",
    "": "bare Qwen3-VL text-model names (layers.*)",
}
# Tensors under the language-model prefix that are skipped without being read.
_SKIP_UNDER_PREFIX = ("visual.", "lm_head.", "model.visual.", "model.lm_head.", "rotary_emb.")
_UNSUPPORTED_SUFFIXES = {
    ".nested_absmax": "bitsandbytes double quantisation (nested statistics)",
    ".nested_quant_map": "bitsandbytes double quantisation (nested statistics)",
    ".quant_state.bitsandbytes__fp4": "bitsandbytes fp4",
    ".SCB": "bitsandbytes 8-bit (LLM.int8)",
    ".weight_format": "bitsandbytes 8-bit (LLM.int8)",
}
# Characteristic keys of other model families, for a helpful "this is not Qwen3-VL" error.
_OTHER_FAMILIES = (
    (("llm_cond_proj.", "embed_image_indicator."),
     "an Ideogram 4 diffusion transformer (DiT) — load it with the Ideogram 4 model loader, not as the text encoder"),
    (("double_blocks.",), "a FLUX-family diffusion model"),
    (("input_blocks.0.0.",), "a Stable Diffusion / SDXL UNet"),
    (("joint_blocks.",), "a Stable Diffusion 3 MMDiT"),
    (("decoder.conv_in.", "decoder.up_blocks.", "decoder.mid.", "encoder.down_blocks."), "a VAE"),
    (("encoder.block.0.layer.0.",), "a T5 text encoder"),
    (("text_model.encoder.layers.",), "a CLIP text encoder"),
    (("linear_attn.",), "a Qwen3.5 / Qwen3-Next language model (linear attention), not Qwen3-VL"),
    (("post_feedforward_layernorm",), "a Gemma language model"),
    (("self_attn.k_proj.bias",), "a Qwen2 / Qwen2.5(-VL) language model (biased q/k/v, no q/k-norm), not Qwen3-VL"),
    (("self_attn.q_proj.",), "a Llama/Mistral-style language model without Qwen3's q/k-norm, not Qwen3-VL"),
    (("visual.blocks.", "vision_model.", "vision_tower."), "a vision model without a Qwen3 language model"),
)
_MODEL_TYPES = {
    "qwen3": "a text-only Qwen3 LLM (Ideogram 4 needs the Qwen3-VL-8B-Instruct language model)",
    "qwen3_moe": "a Qwen3 mixture-of-experts LLM",
    "qwen3_vl_moe": "a mixture-of-experts Qwen3-VL (e.g. 30B-A3B); Ideogram 4 needs the dense Qwen3-VL-8B",
    "qwen2_5_vl": "Qwen2.5-VL", "qwen2_vl": "Qwen2-VL", "qwen2": "a Qwen2 LLM",
}


# ----------------------------------------------------------------------------------- detection

@dataclass
class TextEncoderFormat:
    """What a text-encoder checkpoint holds, mapped to ``Qwen3VLTextModel`` parameter names."""
    label: str
    num_layers: int  # decoder layers present in the file
    kept_layers: int  # decoder layers that will be loaded
    checkpoint: CheckpointFormat = field(repr=False)  # kept tensors only (sources, linears, shapes)
    skipped: dict[str, int] = field(default_factory=dict)  # category -> tensors never read

    @property
    def prefix(self) -> str:
        """Language-model key prefix ("" if none)."""
        return self.checkpoint.prefix

    @property
    def quantization(self) -> str:
        return self.checkpoint.quantization

    @property
    def naming(self) -> str:
        return self.checkpoint.naming

    @property
    def description(self) -> str:
        fmt = self.checkpoint
        return f"Qwen3-VL text encoder, {fmt.storage_description}, {self.naming}{fmt.layout_suffix}"


def _describe_other(keys: Sequence[str]) -> str:
    return describe_other_family(keys, _OTHER_FAMILIES)


def _skip_category(key: str) -> str:
    if "visual." in key or "vision" in key:
        return "vision tower"
    if "lm_head" in key:
        return "lm_head"
    return "other"


def detect_text_encoder_format(reader: CheckpointReader, *, keep_layers: Optional[int] = None,
                               naming: Optional[str] = None) -> TextEncoderFormat:
    """Recognise a Qwen3-VL language model under any key prefix, or explain what the file is instead.

    The one naming-detection function: the prefix is whatever precedes ``embed_tokens.weight`` for
    a decoder that also has Qwen3's ``layers.0.self_attn.q_norm``.  ``keep_layers`` (max tap + 1)
    limits the tensors that will be read; vision, lm_head, final norm and later layers are
    skipped without being read.  ``naming`` describes the key names when the reader renamed them (GGUF).
    """
    keys = reader.keys()
    label = reader.label
    spell = getattr(reader, "file_name", str)  # a renamed reader (GGUF) spells a tensor as its file does
    if not keys:
        raise ValueError(f"{label}: the checkpoint contains no tensors")
    prefixes = sorted({k[: -len(_ANCHOR)] for k in keys
                       if k.endswith(_ANCHOR) and k[: -len(_ANCHOR)] + _QK_NORM in reader}, key=len)
    if not prefixes:
        raise ValueError(f"{label}: not a Qwen3-VL text encoder — it looks like {_describe_other(keys)}")
    if len(prefixes) > 1:
        names = ", ".join(repr(p) for p in prefixes)
        raise ValueError(f"{label}: holds several language models (prefixes {names}); expected one Qwen3-VL")
    prefix = prefixes[0]
    if any(".mlp.experts." in k for k in keys):
        raise ValueError(f"{label}: a mixture-of-experts Qwen3-VL; Ideogram 4 needs the dense Qwen3-VL-8B")
    for suffix, what in _UNSUPPORTED_SUFFIXES.items():
        bad = next((k for k in keys if k.endswith(suffix)), None)
        if bad:
            raise ValueError(f"{label}: uses {what} ({bad}), which is not supported; the official nf4 text encoder "
                             "has no nested statistics — use it, the bf16 or the fp8 text encoder")

    sources: dict[str, list[str]] = {}
    skipped: Counter = Counter()
    layer_ids: set[int] = set()
    for raw in keys:
        if not raw.startswith(prefix):
            skipped[_skip_category(raw)] += 1
            continue
        key = raw[len(prefix):]
        head = key.split(".", 1)[0]
        if head == "layers":
            try:
                idx = int(key.split(".")[1])
            except (IndexError, ValueError):
                raise ValueError(f"{label}: unexpected tensor {spell(raw)} for a Qwen3-VL text encoder") from None
            layer_ids.add(idx)
            if keep_layers is not None and idx >= keep_layers:
                skipped["in layers after the last tap"] += 1
                continue
        elif head == "norm":
            skipped["final norm"] += 1
            continue
        elif key.startswith(_SKIP_UNDER_PREFIX):
            skipped[_skip_category(key)] += 1
            continue
        elif head != "embed_tokens":
            raise ValueError(f"{label}: unexpected tensor {spell(raw)} for a Qwen3-VL text encoder "
                             f"({naming or _NAMINGS.get(prefix, prefix)})")
        sources[key] = [raw]
    num_layers = max(layer_ids) + 1
    if layer_ids != set(range(num_layers)):
        missing = sorted(set(range(num_layers)) - layer_ids)
        raise ValueError(f"{label}: decoder layers {missing[:8]} are missing (incomplete or damaged checkpoint)")
    kept = num_layers if keep_layers is None else keep_layers
    if kept > num_layers:
        raise ValueError(f"{label}: has {num_layers} decoder layers, but the requested taps need layer {kept - 1}")

    linears, logical, quantization, storage = classify_modules(reader, label, sources)
    ckpt = CheckpointFormat(naming=naming or _NAMINGS.get(prefix, f"key prefix {prefix!r}"),
                            quantization=quantization, prefix=prefix, storage_dtype=storage, sources=sources,
                            linears=linears, logical_shapes=logical, **reader_traits(reader))
    return TextEncoderFormat(label=label, num_layers=num_layers, kept_layers=kept, checkpoint=ckpt,
                             skipped=dict(skipped))


# ----------------------------------------------------------------------------------- config

def unconfirmed_qwen3vl(fmt: TextEncoderFormat, cfg_json: Optional[dict]) -> Optional[str]:
    """A warning when nothing in the checkpoint says Qwen3-VL: no config.json, no vision tower, no Qwen3-VL key names
    (``language_model.``), not a llama.cpp ``qwen3vl`` GGUF — a text-only Qwen3 LLM (Qwen3-8B) has the same tensors
    and shapes."""
    if cfg_json is not None or "vision tower" in fmt.skipped or "language_model." in fmt.prefix \
            or fmt.naming == gguf_layout.NAMING:
        return None
    return (f"cannot confirm this is Qwen3-VL: {fmt.naming}, no vision tower and no config.json — a text-only Qwen3 "
            "LLM (e.g. Qwen3-8B) has the same shapes but gives other features; Ideogram 4 needs the Qwen3-VL-8B-Instruct "
            "language model (qwen3vl_8b_fp8_scaled.safetensors or the official repository's text_encoder/)")


def _read_config_json(files: list[Path], source: Path, label: str) -> Optional[dict]:
    """config.json next to the weights: required to be Qwen3-VL for folders, optional for files."""
    path = files[0].parent / "config.json"
    if not path.is_file():
        return None
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        if source.is_dir():
            raise ValueError(f"{path}: unreadable config.json ({exc})") from None
        return None
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if model_type in ("qwen3_vl", "qwen3_vl_text"):
        return cfg
    if source.is_dir():
        what = _MODEL_TYPES.get(model_type, f"model_type {model_type!r}")
        raise ValueError(f"{label}: config.json describes {what}, not Qwen3-VL")
    log.debug("%s: ignoring %s (model_type %r)", label, path, model_type)
    return None


def _check_quantization_config(cfg: dict, label: str) -> None:
    q = cfg.get("quantization_config")
    if not q:
        return
    method = q.get("quant_method")
    if method != "bitsandbytes":
        raise ValueError(f"{label}: quantization_config.quant_method {method!r} is not supported (supported: "
                         "bitsandbytes nf4, the official fp8 weight-only layout, ComfyUI fp8_scaled)")
    if q.get("load_in_8bit") or q.get("_load_in_8bit"):
        raise ValueError(f"{label}: bitsandbytes 8-bit (LLM.int8) text encoders are not supported; use the nf4, fp8 "
                         "or bf16 text encoder")
    if q.get("bnb_4bit_quant_type", "nf4") != "nf4":
        raise ValueError(f"{label}: bitsandbytes {q.get('bnb_4bit_quant_type')} is not supported, only nf4")
    if q.get("bnb_4bit_use_double_quant"):
        raise ValueError(f"{label}: bitsandbytes double quantisation (bnb_4bit_use_double_quant: true) is not "
                         "supported — the official Ideogram 4 nf4 text encoder does not use it; re-quantise with "
                         "bnb_4bit_use_double_quant=False or use the bf16/fp8 text encoder")


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen3-VL's (24, 20, 20) split of head_dim/2 = 64, scaled to other head sizes."""
    half = head_dim // 2
    hw = half * 20 // 64
    return [half - 2 * hw, hw, hw]


def _text_config(cfg_json: Optional[dict], fmt: TextEncoderFormat, constants: Optional[dict] = None):
    """``Qwen3VLTextConfig`` from config.json, or inferred from the tensor shapes; ``constants`` (a GGUF's metadata:
    ``rope_theta``, ``rms_norm_eps``, ``max_position_embeddings``) replace Qwen3-VL's where given."""
    from transformers import Qwen3VLConfig, Qwen3VLTextConfig

    if cfg_json is not None:
        if cfg_json.get("model_type") == "qwen3_vl":
            return Qwen3VLConfig.from_dict(cfg_json).text_config
        return Qwen3VLTextConfig.from_dict(cfg_json)
    shapes = fmt.checkpoint.logical_shapes
    try:
        vocab, hidden = shapes["embed_tokens.weight"]
        head_dim = shapes[_QK_NORM][0]
        num_heads = shapes["layers.0.self_attn.q_proj.weight"][0] // head_dim
        num_kv = shapes["layers.0.self_attn.k_proj.weight"][0] // head_dim
        inter = shapes["layers.0.mlp.gate_proj.weight"][0]
    except KeyError as exc:
        raise ValueError(f"{fmt.label}: missing tensor {fmt.prefix}{exc.args[0]} needed to determine the model size") from None
    values = {"rms_norm_eps": QWEN3VL_RMS_NORM_EPS, "max_position_embeddings": QWEN3VL_MAX_POSITIONS,
              "rope_theta": QWEN3VL_ROPE_THETA, **(constants or {})}
    return Qwen3VLTextConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=fmt.num_layers,
        num_attention_heads=num_heads, num_key_value_heads=num_kv, head_dim=head_dim, hidden_act="silu",
        attention_bias=False, **values,
        rope_scaling={"rope_type": "default", "mrope_section": _mrope_section(head_dim), "mrope_interleaved": True})


# ----------------------------------------------------------------------------------- model

def _build_language_model(text_cfg, keep_layers: int) -> nn.Module:
    """``Qwen3VLTextModel`` with ``keep_layers`` decoder layers on the meta device, no final norm."""
    from transformers import Qwen3VLTextModel

    text_cfg.num_hidden_layers = keep_layers
    text_cfg._attn_implementation = "sdpa"
    with torch.device("meta"):
        model = Qwen3VLTextModel(text_cfg)
    model.norm = None  # never applied: the taps are raw layer outputs (spec §3.3)
    model.rotary_emb = None  # rebuilt on the target device after the weights are assigned
    return model


def _rotary_embedding(text_cfg, device: torch.device) -> nn.Module:
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRotaryEmbedding

    with torch.device(device):
        return Qwen3VLTextRotaryEmbedding(config=text_cfg)


def _check_shapes(model: nn.Module, fmt: TextEncoderFormat, spell=None) -> None:
    """Missing / unexpected / wrong-shape tensors, named as the file spells them (``spell``: a model name → the
    file's, for a GGUF; otherwise the prefix is put back)."""
    spell = spell or (lambda k: k)
    want = {spell(name): tuple(p.shape) for name, p in model.named_parameters()}
    have = {spell(k): v for k, v in fmt.checkpoint.logical_shapes.items()}
    problems = key_problems(want, have, [k for k in have if k not in want], noun="tensors", prefix=fmt.prefix,
                            limits=(6, 6, 4))
    if problems:
        raise ValueError(f"{fmt.label}: does not match its Qwen3-VL configuration ({fmt.description}): "
                         + " | ".join(problems))
    for mod, spec in fmt.checkpoint.linears.items():
        # a GGUF's token embedding is ggml blocks too (llama.cpp quantises it): decoded once, at load
        if spec.scheme and spec.scheme != "gguf" and not isinstance(model.get_submodule(mod), nn.Linear):
            raise ValueError(f"{fmt.label}: {fmt.prefix}{mod} is quantised ({spec.scheme}) but is not a Linear layer")


def _use_operations(model: nn.Module, fmt: TextEncoderFormat, dtype: torch.dtype, operations) -> None:
    """Rebuild the meta-device layers from ``operations`` before the weights are assigned.

    Quantised Linears always become ``operations.QuantizedLinear``.  A host namespace (ComfyUI's)
    also replaces every plain Linear, the token embedding and the RMSNorms, so the host can
    cast, offload and stream each weight (partial loading); with ``TorchOps`` those stay the
    transformers modules.
    """
    swap_quantized_linears(model, fmt.checkpoint.linears, dtype, operations)
    norm_cls = getattr(operations, "TextRMSNorm", None)
    for name, module in list(model.named_modules()):
        if type(module) is nn.Linear and operations.Linear is not nn.Linear:
            new = operations.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                                    device="meta", dtype=dtype)
        elif type(module) is nn.Embedding and operations.Embedding is not nn.Embedding:
            new = operations.Embedding(module.num_embeddings, module.embedding_dim, padding_idx=module.padding_idx,
                                       device="meta", dtype=dtype)
        elif norm_cls is not None and type(module).__name__ == "Qwen3VLTextRMSNorm":
            new = norm_cls(module.weight.shape[0], eps=module.variance_epsilon, device="meta", dtype=dtype)
        else:
            continue
        replace_module(model, name, new)


# ----------------------------------------------------------------------------------- tokenizer

def has_tokenizer(folder: Path) -> bool:
    """A folder holding a Qwen tokenizer (``tokenizer.json`` or ``vocab.json``)."""
    return folder.is_dir() and ((folder / "tokenizer.json").is_file() or (folder / "vocab.json").is_file())


def _tokenizer_candidates(source: Path, files: list[Path]) -> list[Path]:
    weights_dir = files[0].parent
    roots = [source] if source.is_dir() else []
    roots += [weights_dir, weights_dir.parent]
    out: list[Path] = []
    for root in roots:
        for folder in (root / "tokenizer", root):
            if folder not in out:
                out.append(folder)
    return out


def _folder_identity(folder: Path) -> tuple:
    stats = []
    for name in sorted(os.listdir(folder)):
        p = folder / name
        if p.is_file() and (name.startswith("tokenizer") or name in ("vocab.json", "merges.txt", "chat_template.jinja",
                                                                      "chat_template.json", "special_tokens_map.json")):
            st = p.stat()
            stats.append((name, st.st_size, st.st_mtime_ns))
    return (str(folder.resolve()), tuple(stats))


def resolve_tokenizer(tokenizer: Any, source: Path, files: list[Path], label: str) -> tuple[Any, tuple]:
    """(tokenizer object, identity) from an object, a folder path, or the checkpoint's own folder."""
    if tokenizer is not None and not isinstance(tokenizer, (str, os.PathLike)):
        if not callable(tokenizer):
            raise TypeError(f"tokenizer must be a folder path or a transformers tokenizer, got {type(tokenizer).__name__}")
        ident = ("object", type(tokenizer).__name__, str(getattr(tokenizer, "name_or_path", "")), len(tokenizer),
                 hash(getattr(tokenizer, "chat_template", None) or ""))
        return tokenizer, ident
    if tokenizer is not None:
        folder = Path(tokenizer).expanduser()
        if folder.is_file():
            folder = folder.parent
        if not has_tokenizer(folder):
            raise ValueError(f"{folder}: no tokenizer there (expected tokenizer.json, or vocab.json + merges.txt)")
    else:
        folder = next((c for c in _tokenizer_candidates(source, files) if has_tokenizer(c)), None)
        if folder is None:
            raise ValueError(f"{label}: no tokenizer found next to the text encoder; pass tokenizer=<folder with "
                             "tokenizer.json, or vocab.json + merges.txt> (e.g. the official repo's tokenizer/ folder, "
                             "a Qwen3-VL model folder, or ComfyUI's comfy/text_encoders/qwen25_tokenizer)")
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(folder))
    except Exception as exc:  # transformers raises many types for a bad folder
        raise ValueError(f"{folder}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None
    return tok, ("folder",) + _folder_identity(folder)


def _check_tokenizer(tok: Any, vocab_size: int, label: str) -> None:
    for special in ("<|im_start|>", "<|im_end|>"):
        ids = tok(special, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"{label}: the tokenizer does not know the Qwen chat token {special} — it is not a Qwen "
                             "tokenizer")
    if len(tok) > vocab_size:
        raise ValueError(f"{label}: the tokenizer has {len(tok)} tokens but the model's embedding only {vocab_size} "
                         "rows — tokenizer and text encoder do not belong together")


# ----------------------------------------------------------------------------------- entry point

def _check_taps(taps: Sequence[int]) -> tuple[int, ...]:
    taps = tuple(int(t) for t in taps)
    if not taps or min(taps) < 0 or len(set(taps)) != len(taps):
        raise ValueError(f"taps must be distinct non-negative layer indices, got {taps}")
    return taps


def load_text_encoder(source: str | os.PathLike, *, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.bfloat16, tokenizer: Any = None,
                      taps: Sequence[int] = TEXT_ENCODER_TAPS, max_text_tokens: int = MAX_TEXT_TOKENS,
                      expected_hidden_size: Optional[int] = None, operations=TorchOps):
    """Load the Ideogram 4 text encoder (Qwen3-VL language model, tapped) from any supported checkpoint.

    Args:
        source: official Ideogram 4 folder (``text_encoder/`` + ``tokenizer/``), its ``text_encoder/``
            folder, a Qwen3-VL Hugging Face folder, a ``.safetensors`` file or a shard index.
        device: where the weights live and the encoder runs.
        dtype: compute dtype (unquantised weights are stored in it, quantised ones dequantise to it).
        tokenizer: a folder with the Qwen tokenizer, or a transformers tokenizer object.  Needed for
            single files; folders use their own ``tokenizer/`` (or root) tokenizer.
        taps: decoder layers whose outputs are concatenated (interleaved); layers after ``max(taps)``
            and the final norm are neither built nor read.
        max_text_tokens: templated captions longer than this raise ``ValueError``.
        expected_hidden_size: if given, refuse a model of another width (e.g. 4096 for Ideogram 4).
        operations: layer namespace (``model.checkpoints.TorchOps`` by default; see :func:`_use_operations`).
    """

    warm_vector_math()
    taps = _check_taps(taps)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating-point torch.dtype, got {dtype!r}")
    device = torch.device(device)
    source = Path(source).expanduser()
    reader = open_checkpoint(source, COMPONENT, architectures=(gguf_layout.LLAMA_CPP_ARCH,), what=gguf_layout.WHAT,
                             hints=gguf_layout.OTHER_ARCHITECTURES)
    files = reader.files
    label = reader.label
    gguf = getattr(reader, "architecture", None) == gguf_layout.LLAMA_CPP_ARCH
    if gguf:
        reader = RenamedReader(reader, gguf_layout.hf_name, gguf_layout.file_name)
    cfg_json = None if gguf else _read_config_json(files, source, label)
    if cfg_json is not None:
        _check_quantization_config(cfg_json, label)
    fmt = detect_text_encoder_format(reader, keep_layers=max(taps) + 1, naming=gguf_layout.NAMING if gguf else None)
    text_cfg = _text_config(cfg_json, fmt, gguf_layout.config_constants(reader) if gguf else None)
    problem = gguf and gguf_layout.size_problem(reader, text_cfg, label)
    if problem:
        raise ValueError(problem)
    if text_cfg.num_hidden_layers != fmt.num_layers:
        raise ValueError(f"{label}: config.json says {text_cfg.num_hidden_layers} decoder layers, the weights have "
                         f"{fmt.num_layers}")
    if expected_hidden_size is not None and text_cfg.hidden_size != expected_hidden_size:
        raise ValueError(f"{label}: a Qwen3-VL with hidden size {text_cfg.hidden_size}, but {expected_hidden_size} is "
                         "needed (Ideogram 4 uses Qwen3-VL-8B-Instruct: hidden 4096, 36 layers)")
    if cfg_json is not None and cfg_json.get("ideogram_fp8_weight_only") and fmt.quantization != "fp8_rowwise":
        # The weights decide (like the reference, which swaps only Linears that have a weight_scale).
        log.warning("%s: config.json flags ideogram_fp8_weight_only but the loaded layers are %s", label,
                    fmt.description)

    model = _build_language_model(text_cfg, fmt.kept_layers)
    _check_shapes(model, fmt, getattr(reader, "file_name", None))
    tok, tok_identity = resolve_tokenizer(tokenizer, source, files, label)
    _check_tokenizer(tok, text_cfg.vocab_size, label)
    problem = gguf and gguf_layout.tokenizer_problem(reader, tok, label)
    if problem:
        raise ValueError(problem)
    _use_operations(model, fmt, dtype, operations)
    assign_weights(model, reader, fmt.checkpoint, device, dtype)
    model.rotary_emb = _rotary_embedding(text_cfg, device)
    model.eval().requires_grad_(False)
    leftover = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if leftover:  # pragma: no cover - would be a loader bug
        raise RuntimeError(f"{label}: tensors left unloaded: {leftover[:5]}")

    file_identity = tuple((str(p.resolve()), st.st_size, st.st_mtime_ns) for p in files for st in (p.stat(),))
    identity = (file_identity, tok_identity, taps)
    skipped = ", ".join(f"{n} {what}" for what, n in sorted(fmt.skipped.items()))
    log.info("Loaded Ideogram 4 text encoder from %s (%s; %d of %d layers; tensors skipped unread: %s)", label,
             fmt.description, fmt.kept_layers, fmt.num_layers, skipped or "nothing")
    if gguf:
        log.info("%s: GGUF metadata not used: %s", label, "; ".join(gguf_layout.unused_metadata(reader)) or "none")
    warnings = [w for w in [unconfirmed_qwen3vl(fmt, cfg_json)] if w]
    for warning in warnings:
        log.warning("%s: %s", label, warning)
    return Ideogram4TextEncoder(model, tok, taps=taps, max_text_tokens=max_text_tokens, identity=identity,
                                description=fmt.description, checkpoint_format=fmt, warnings=warnings)
