"""The Ideogram 4 text encoder: Qwen3-VL language model → 13 tapped layers, interleaved (spec §3).

``Ideogram4TextEncoder.encode(captions)`` reproduces the reference (``_tokenize`` +
``_encode_text``):

* prompt = ``<|im_start|>user\\n{caption}<|im_end|>\\n<|im_start|>assistant\\n`` — rendered by the
  tokenizer's chat template (one user message, one text part, no system prompt, generation
  prompt on) and checked against that exact string; a tokenizer whose template renders anything
  else (e.g. Qwen2.5's default system prompt) or that has none gets the exact string;
* tokenised with ``add_special_tokens=False``; more than ``max_text_tokens`` (2048) → ValueError;
* each caption runs alone, followed by masked slots up to ``packed_length(n)`` (token id 0,
  attention mask 0, position id 0 — what the reference's image slots are): the reference encodes the
  caption inside the packed text + image sequence, and in bf16 the masked slots after the text change
  the attention kernel's blocking, so a text-only run differs (see ``packed_length``); attention mask 1
  on real tokens; position ids 0..n−1, the same id on all three MRoPE axes; causal mask by
  transformers' ``create_causal_mask`` (always materialised, as in the packed run);
* decoder layers run up to the last tap; the *outputs* of the tapped layers (no final norm) are
  stacked (T, B, L, H) → (B, L, H, T) → (B, L, H·T), so feature index = d·T + tap;
* padding rows are zeroed with a select (never NaN·0); the result is float32.

Encodings are cached per (encoder identity, caption) in a small process-wide LRU, so re-queuing a
caption does not run the model again.
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn

from ..dit.constants import MAX_TEXT_TOKENS

log = logging.getLogger(__name__)

CHAT_PREFIX = "<|im_start|>user\n"
CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
PAD_TOKEN_ID = 0  # what the reference puts in padding slots (masked out, never attended)


# The CPU flash-attention kernel's key/value block (ATen FlashAttentionKernel.cpp, kv_split_size 512).
KV_BLOCK = 512


def packed_length(num_text_tokens: int) -> int:
    """Sequence length at which a caption of ``num_text_tokens`` tokens is encoded (masked slots after the text):
    the next multiple of ``KV_BLOCK`` — the key block that holds the text's last token is always full.

    Why: the reference runs Qwen3-VL over text + one masked slot per image token (256 at 256², 4096 at 1024²), so
    SDPA gets an explicit mask and, on CPU, its flash kernel walks the keys in blocks of 512 from position 0.  A
    text row's numbers depend on the size of the block that holds its last keys (the softmax vectorises whole
    16-lane chunks only, a short tail is summed scalar with another ``exp``; oneDNN's bf16 GEMM for P·V picks its
    K-blocking from the block size), and on some CPUs (Intel Xeon with AMX) a block cut short by the end of the
    sequence rounds differently from a full one even when the cut-off keys are masked.  Every reference run whose
    sequence reaches the end of that block — every resolution from 384² up, for any caption — has it full, and
    fully masked blocks after it add exact zeros: padding to the block's end gives the reference's text rows at
    all those resolutions (attention kernel alone, ``benchmarks/bench_te_packed.py --kernel-sweep``: 0 of 75
    lengths 1…2048 differ at 384², 512², 1024² on Xeon AMX; 0 of 1…896 on AMD EPYC, where a cut block rounds like
    a full one and 256² agrees too).  At 256² (256 slots) the reference's own block is cut short when
    ``n mod 512`` is below 256; on Xeon AMX 17 of those 75 lengths (n mod 512 ≈ 136…255) then differ in the last
    bf16 bits from the reference's 256² run.  Shorter pads (to a multiple of 16, 64, 128 or 256) are not exact.
    """
    n = int(num_text_tokens)
    return max(1, -(-n // KV_BLOCK)) * KV_BLOCK


def build_chat_prompt(caption: str) -> str:
    """The exact templated string Ideogram 4 encodes (spec §3.2)."""
    return CHAT_PREFIX + caption + CHAT_SUFFIX


def chat_messages(caption: str) -> list[dict]:
    """One user message whose content is a single text part — what the reference templates."""
    return [{"role": "user", "content": [{"type": "text", "text": caption}]}]


@dataclass(frozen=True)
class EncodedText:
    """Text features for the DiT.

    features: (B, L_max, T·hidden) float32, left-padded, padding rows exactly zero; feature index
        d·T + tap (T = number of taps, 13 for Ideogram 4).
    lengths: real (templated) token count of each caption; caption b occupies rows
        ``L_max - lengths[b]:``.
    """
    features: torch.Tensor
    lengths: list[int]

    @property
    def attention_mask(self) -> torch.Tensor:
        """(B, L_max) bool, True on real tokens."""
        length = self.features.shape[1]
        idx = torch.arange(length, device=self.features.device)
        starts = torch.tensor([length - n for n in self.lengths], device=self.features.device)
        return idx[None, :] >= starts[:, None]


# ----------------------------------------------------------------------------------- cache

class _EncodingCache:
    """A small thread-safe LRU of per-caption features (real rows only, compute dtype, on CPU)."""

    def __init__(self, max_entries: int = 8, max_bytes: int = 1 << 30) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._data: OrderedDict[tuple, torch.Tensor] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()

    def get(self, key: tuple) -> Optional[torch.Tensor]:
        with self._lock:
            value = self._data.get(key)
            if value is None:
                self.misses += 1
                return None
            self._data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple, value: torch.Tensor) -> None:
        size = value.numel() * value.element_size()
        with self._lock:
            if key in self._data:
                self._bytes -= self._nbytes(self._data.pop(key))
            if self.max_entries <= 0 or size > self.max_bytes:
                return
            self._data[key] = value
            self._bytes += size
            self._evict()

    @staticmethod
    def _nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    def _evict(self) -> None:
        while self._data and (len(self._data) > self.max_entries or self._bytes > self.max_bytes):
            _, old = self._data.popitem(last=False)
            self._bytes -= self._nbytes(old)

    def configure(self, max_entries: Optional[int] = None, max_bytes: Optional[int] = None) -> None:
        with self._lock:
            if max_entries is not None:
                self.max_entries = int(max_entries)
            if max_bytes is not None:
                self.max_bytes = int(max_bytes)
            self._evict()

    def clear(self) -> None:
        with self._lock:
            self._data.clear()
            self._bytes = 0
            self.hits = self.misses = 0

    def info(self) -> dict:
        with self._lock:
            return {"hits": self.hits, "misses": self.misses, "entries": len(self._data), "bytes": self._bytes,
                    "max_entries": self.max_entries, "max_bytes": self.max_bytes}


_CACHE = _EncodingCache()


def cache_info() -> dict:
    """Process-wide encoding cache statistics: hits, misses, entries, bytes and the limits."""
    return _CACHE.info()


def clear_cache() -> None:
    _CACHE.clear()


def configure_cache(max_entries: Optional[int] = None, max_bytes: Optional[int] = None) -> None:
    """Bound the cache (``max_entries=0`` disables it); evicts least-recently-used entries."""
    _CACHE.configure(max_entries, max_bytes)


# ----------------------------------------------------------------------------------- encoder

@functools.cache
def _causal_mask_api() -> tuple[Callable, frozenset]:
    """transformers' ``create_causal_mask`` and its parameter names (looked up once)."""
    from transformers.masking_utils import create_causal_mask

    return create_causal_mask, frozenset(inspect.signature(create_causal_mask).parameters)


def _cache_kwarg(params) -> str:
    """The name of the (unused) KV-cache argument: ``cache`` where the installed transformers has it,
    else ``past_key_values`` (transformers 5.2x deprecates the latter with a FutureWarning per call)."""
    return "cache" if "cache" in params else "past_key_values"


@functools.cache
def _layer_cache_kwarg(layer_cls: type) -> str:
    return _cache_kwarg(inspect.signature(layer_cls.forward).parameters)


def _causal_mask(config, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor):
    """transformers' ``create_causal_mask`` (argument names differ between 4.57 and 5.x)."""
    create_causal_mask, params = _causal_mask_api()
    kwargs: dict[str, Any] = {"config": config, "attention_mask": attention_mask, _cache_kwarg(params): None,
                              "position_ids": position_ids}
    kwargs["inputs_embeds" if "inputs_embeds" in params else "input_embeds"] = inputs_embeds
    if "cache_position" in params:
        kwargs["cache_position"] = torch.arange(inputs_embeds.shape[1], device=inputs_embeds.device)
    return create_causal_mask(**kwargs)


class Ideogram4TextEncoder(nn.Module):
    """Tapped Qwen3-VL language model + tokenizer; build it with ``load_text_encoder``.

    ``language_model`` is a transformers ``Qwen3VLTextModel`` holding only ``embed_tokens``, the
    decoder layers up to ``max(taps)`` and the rotary embedding (``norm`` is ``None``).
    """

    def __init__(self, language_model: nn.Module, tokenizer: Any, *, taps: Sequence[int],
                 max_text_tokens: int = MAX_TEXT_TOKENS, identity: tuple = (), description: str = "",
                 checkpoint_format: Any = None, warnings: Sequence[str] = ()) -> None:
        super().__init__()
        self.language_model = language_model
        self.tokenizer = tokenizer
        self.taps = tuple(int(t) for t in taps)
        if max(self.taps) >= len(language_model.layers):
            raise ValueError(f"taps {self.taps} need {max(self.taps) + 1} layers, the model has {len(language_model.layers)}")
        self.max_text_tokens = int(max_text_tokens)
        self.identity = identity
        self.description = description
        self.checkpoint_format = checkpoint_format
        self.warnings = tuple(warnings)  # what the loader could not confirm (shown by the loader node)
        self._template_warned = False

    # -- properties ------------------------------------------------------------------
    @property
    def hidden_size(self) -> int:
        return self.language_model.config.hidden_size

    @property
    def feature_dim(self) -> int:
        return self.hidden_size * len(self.taps)

    @property
    def vocab_size(self) -> int:
        return self.language_model.embed_tokens.num_embeddings

    @property
    def device(self) -> torch.device:
        return self.language_model.embed_tokens.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.language_model.embed_tokens.weight.dtype

    def extra_repr(self) -> str:
        return f"taps={self.taps}, {self.description}"

    # -- tokenisation ----------------------------------------------------------------
    def prompt(self, caption: str) -> str:
        """The templated string for ``caption`` (the tokenizer's chat template, verified)."""
        expected = build_chat_prompt(caption)
        if getattr(self.tokenizer, "chat_template", None):
            try:
                rendered = self.tokenizer.apply_chat_template(chat_messages(caption), add_generation_prompt=True,
                                                              tokenize=False)
            except Exception as exc:  # a template that cannot render list content (e.g. ComfyUI's qwen25_tokenizer)
                if not self._template_warned:
                    self._template_warned = True
                    log.info("The tokenizer's chat template cannot render Ideogram 4's message (%s); the encoder uses "
                             "Ideogram 4's fixed template, as intended for this tokenizer.", type(exc).__name__)
                return expected
            if rendered == expected:
                return rendered
            if not self._template_warned:
                self._template_warned = True
                log.warning("The tokenizer's chat template renders %r instead of Ideogram 4's fixed template "
                            "(no system prompt, no think block); using the fixed template.", str(rendered)[:160])
        return expected

    def tokenize(self, captions: Sequence[str]) -> list[list[int]]:
        """Token ids of each templated caption; raises for empty or over-long captions."""
        if isinstance(captions, str):
            captions = [captions]
        out = []
        for i, caption in enumerate(captions):
            if not isinstance(caption, str):
                raise TypeError(f"caption {i} must be a str, got {type(caption).__name__}")
            if not caption.strip():
                raise ValueError(f"caption {i} is empty; Ideogram 4 needs a caption (the unconditional branch gets no "
                                 "text at all — there is no empty or negative prompt to encode)")
            ids = list(self.tokenizer(self.prompt(caption), add_special_tokens=False)["input_ids"])
            if len(ids) > self.max_text_tokens:
                raise ValueError(f"caption {i} has {len(ids)} tokens after the chat template, more than the limit of "
                                 f"{self.max_text_tokens}; Ideogram 4 does not truncate — shorten the caption")
            if ids and max(ids) >= self.vocab_size:
                raise ValueError(f"caption {i}: token id {max(ids)} is outside the model's vocabulary "
                                 f"({self.vocab_size}); tokenizer and text encoder do not belong together")
            out.append(ids)
        return out

    # -- model -----------------------------------------------------------------------
    def forward(self, token_ids: torch.Tensor, attention_mask: torch.Tensor,
                position_ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids, mask (1 = real token) and 1-D positions → (B, L, H·T) features, compute dtype.

        Padding rows are zero.  Mirrors the reference ``_get_qwen3_vl_embeddings`` + ``_encode_text``.
        """
        lm = self.language_model
        batch, length = token_ids.shape
        hidden = lm.embed_tokens(token_ids)
        if lm.rotary_emb.inv_freq.device != hidden.device:  # partially loaded: buffers stay where they were
            lm.rotary_emb.to(hidden.device)
        mask = _causal_mask(lm.config, hidden, attention_mask, position_ids)
        if mask is None:  # no masked slot (n a multiple of KV_BLOCK): keep the packed run's explicit mask
            causal = torch.ones(length, length, dtype=torch.bool, device=hidden.device).tril()
            mask = (causal[None] & attention_mask.to(torch.bool)[:, None, :])[:, None]
        mrope_ids = position_ids[None].expand(3, batch, length)
        position_embeddings = lm.rotary_emb(hidden, mrope_ids)
        wanted = set(self.taps)
        captured: dict[int, torch.Tensor] = {}
        for idx, layer in enumerate(lm.layers[: max(self.taps) + 1]):
            hidden = layer(hidden, attention_mask=mask, position_ids=position_ids,
                           position_embeddings=position_embeddings, **{_layer_cache_kwarg(type(layer)): None})
            if isinstance(hidden, tuple):  # older transformers return (hidden_states, ...)
                hidden = hidden[0]
            if idx in wanted:
                captured[idx] = hidden
        stacked = torch.stack([captured[t] for t in self.taps], dim=0)  # (T, B, L, H)
        features = stacked.permute(1, 2, 3, 0).reshape(batch, length, -1)  # index d*T + tap
        real = attention_mask.to(torch.bool)[..., None]
        return torch.where(real, features, torch.zeros((), dtype=features.dtype, device=features.device))

    def _encode_one(self, ids: list[int], dev: torch.device) -> torch.Tensor:
        """One caption's (n, H·T) features: text at rows 0..n−1, masked slots up to ``packed_length(n)``."""
        n = len(ids)
        length = packed_length(n)
        tokens = torch.full((1, length), PAD_TOKEN_ID, dtype=torch.long)
        mask = torch.zeros(1, length, dtype=torch.long)
        positions = torch.zeros(1, length, dtype=torch.long)
        tokens[0, :n] = torch.tensor(ids, dtype=torch.long)
        mask[0, :n] = 1
        positions[0, :n] = torch.arange(n)
        with torch.inference_mode():
            features = self(tokens.to(dev), mask.to(dev), positions.to(dev))
            return features[0, :n].to("cpu", copy=True)

    def _encode_batch(self, batch_ids: list[list[int]], dev: torch.device) -> list[torch.Tensor]:
        # One caption at a time: in a left-padded batch a shorter caption's keys would sit at other offsets
        # of the attention kernel's blocks, and its bf16 features would depend on the other captions.
        return [self._encode_one(ids, dev) for ids in batch_ids]

    def cache_key(self, device: torch.device | str | None = None) -> tuple:
        """Identity of this encoder for the encoding cache (files, tokenizer, taps, dtype and the device the
        encoding runs on — ``device`` or, by default, where the weights are now)."""
        return self.identity + (str(self.dtype), str(torch.device(device) if device is not None else self.device),
                                self.taps)

    def cached(self, caption: str, device: torch.device | str | None = None) -> Optional[EncodedText]:
        """The cached encoding of one caption as computed on ``device`` (default: the weights' device), or None.

        Lets a caller skip moving the encoder to an accelerator when the caption is already encoded.
        """
        feats = _CACHE.get((self.cache_key(device), caption))
        if feats is None:
            return None
        return EncodedText(features=feats.to(torch.float32).unsqueeze(0), lengths=[int(feats.shape[0])])

    def encode(self, captions: Sequence[str] | str, *, device: torch.device | str | None = None,
               use_cache: bool = True, compute_device: torch.device | str | None = None) -> EncodedText:
        """Encode captions → ``EncodedText`` (features float32 on ``device``, CPU by default).

        ``compute_device``: where the forward runs (default: where the weights are).  A host that
        streams weights (ComfyUI's partial loading) names its device here; the layers then cast
        what is not resident.
        """
        compute_device = torch.device(compute_device) if compute_device is not None else self.device
        if isinstance(captions, str):
            captions = [captions]
        captions = list(captions)
        if not captions:
            raise ValueError("no captions to encode")
        token_ids = self.tokenize(captions)
        key = self.cache_key(compute_device)
        results: list[Optional[torch.Tensor]] = [None] * len(captions)
        missing: dict[str, list[int]] = {}
        for i, caption in enumerate(captions):
            hit = _CACHE.get((key, caption)) if use_cache else None
            if hit is None:
                missing.setdefault(caption, []).append(i)
            else:
                results[i] = hit
        if missing:
            unique = list(missing)
            encoded = self._encode_batch([token_ids[missing[c][0]] for c in unique], compute_device)
            for caption, feats in zip(unique, encoded):
                if use_cache:
                    _CACHE.put((key, caption), feats)
                for i in missing[caption]:
                    results[i] = feats
        lengths = [len(ids) for ids in token_ids]
        length = max(lengths)
        out = torch.zeros(len(captions), length, self.feature_dim, dtype=torch.float32)
        for b, feats in enumerate(results):
            out[b, length - lengths[b]:] = feats.to(torch.float32)
        return EncodedText(features=out.to(device) if device is not None else out, lengths=lengths)

    def cache_info(self) -> dict:
        return cache_info()
