"""The pack's CONDITIONING contract (pure: torch only, no ComfyUI import).

``Ideogram4NativeTextEncode`` returns a standard ComfyUI CONDITIONING list with one entry::

    [[features, {"text_lengths": [n_0, …], "ideogram4": True, "ideogram4_captions": [...]}]]

``features`` is (B, L, 53248) float32, **left-padded** to the longest caption (padding rows are
zero), interleaved 13-tap Qwen3-VL features exactly as the reference's ``_encode_text`` returns
them; ``text_lengths[b]`` is caption b's real token count.  ComfyUI turns the tensor into
``cross_attn`` and passes ``text_lengths`` to ``extra_conds``; the unconditional model gets no
conditioning at all (image-only pass) — there is no negative prompt in Ideogram 4.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from ...model.dit.constants import TEXT_ENCODER_TAPS

MARKER = "ideogram4"
TAPS = len(TEXT_ENCODER_TAPS)  # interleaved Qwen3-VL layers per text row
QWEN3VL_8B_WIDTH = 4096  # the hidden size of the text encoder Ideogram 4 is trained with


def make_conditioning(features: torch.Tensor, lengths: Sequence[int], captions: Optional[Sequence[str]] = None) -> list:
    if features.ndim != 3:
        raise ValueError(f"text features must be (B, L, F), got {tuple(features.shape)}")
    lengths = [int(v) for v in lengths]
    if len(lengths) != features.shape[0]:
        raise ValueError(f"{len(lengths)} text lengths for a batch of {features.shape[0]}")
    extra = {"text_lengths": lengths, MARKER: True}
    if captions is not None:
        extra["ideogram4_captions"] = list(captions)
    return [[features, extra]]


def text_from_conditioning(conditioning, what: str = "positive") -> tuple[torch.Tensor, list[int], bool]:
    """(features (B, L, F) float32, lengths, made_by_this_pack) from a CONDITIONING list."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError(f"{what}: empty conditioning; connect an Ideogram4 Text Encode node")
    if len(conditioning) != 1:
        raise ValueError(f"{what}: {len(conditioning)} conditioning entries (combined conditionings?); Ideogram 4 "
                         "takes one caption per image — put everything into one JSON caption")
    entry = conditioning[0]
    features, extra = entry[0], (entry[1] if len(entry) > 1 else {})
    if features is None or not torch.is_tensor(features) or features.ndim != 3:
        raise ValueError(f"{what}: conditioning has no text features")
    lengths = extra.get("text_lengths")
    if lengths is None:
        mask = extra.get("attention_mask")
        if mask is not None and int(mask.sum()) != mask.numel():
            raise ValueError(f"{what}: padded conditioning without text_lengths is not supported; use the "
                             "Ideogram4 Native Text Encode node")
        lengths = [features.shape[1]] * features.shape[0]
    lengths = [int(v) for v in lengths]
    problem = rows_problem(int(features.shape[1]), lengths, what)
    if problem:
        raise ValueError(problem)
    return features.to(torch.float32), lengths, bool(extra.get(MARKER, False))


def rows_problem(rows: int, lengths: Sequence[int], what: str = "positive") -> Optional[str]:
    """The features' row count must be the longest caption's (left padding): a node that concatenates conditionings
    along the tokens (ConditioningConcat) keeps the first caption's ``text_lengths`` over a longer tensor, and the
    DiT would then mask the wrong rows."""
    if lengths and max(lengths) != rows:
        return (f"{what}: the text features hold {rows} token rows but the caption(s) {max(lengths)} "
                f"(text_lengths {list(lengths)}): a node such as ConditioningConcat joined conditionings along the "
                "tokens. Ideogram 4 takes one caption per image — put everything into one JSON caption")
    return None


def batch_text(features: torch.Tensor, lengths: list[int], batch: int, what: str = "positive") -> tuple[torch.Tensor, list[int]]:
    """Broadcast one caption to ``batch`` images (or check that there is one caption per image)."""
    if features.shape[0] == batch:
        return features, lengths
    if features.shape[0] == 1:
        return features.expand(batch, -1, -1), lengths * batch
    raise ValueError(f"{what}: {features.shape[0]} captions for a batch of {batch} images; use one caption or "
                     "one per image")


def _describe_width(width: int) -> str:
    return f"{TAPS} × {width // TAPS}" if width % TAPS == 0 else str(width)


def feature_width_problem(width: int, llm_features_dim: int, what: str = "positive") -> Optional[str]:
    """The message for text features of another width than the DiT reads (another text encoder), or None."""
    if width == llm_features_dim:
        return None
    if llm_features_dim == TAPS * QWEN3VL_8B_WIDTH:
        fix = (" (Qwen3-VL-8B's): load qwen3vl_8b_fp8_scaled.safetensors (or the official repository's "
               "text_encoder/) in Ideogram4 Text Encoder Loader")
    else:
        fix = ": load the text encoder that belongs to this DiT in Ideogram4 Text Encoder Loader"
    return (f"{what}: the text encoder gives {_describe_width(width)} features, this DiT expects "
            f"{_describe_width(llm_features_dim)}{fix}")


def check_feature_width(conditioning, llm_features_dim: int, what: str = "positive") -> None:
    """Refuse text features of another width than the DiT reads (another text encoder) before sampling."""
    problem = feature_width_problem(int(text_from_conditioning(conditioning, what)[0].shape[-1]), llm_features_dim,
                                    what)
    if problem:
        raise ValueError(problem)
