"""Qwen3-VL multi-layer text encoder: the encoder (``encoder``) and the loader that builds it (``loading``)."""

from .encoder import (KV_BLOCK, EncodedText, Ideogram4TextEncoder, build_chat_prompt, cache_info,
                      chat_messages, clear_cache, configure_cache, packed_length)
from .loading import TextEncoderFormat, detect_text_encoder_format, has_tokenizer, load_text_encoder, resolve_tokenizer
from .norm import qwen_rms_norm

__all__ = ["KV_BLOCK", "packed_length", "EncodedText", "Ideogram4TextEncoder", "build_chat_prompt",
           "cache_info", "chat_messages", "clear_cache", "configure_cache", "TextEncoderFormat",
           "detect_text_encoder_format", "has_tokenizer", "load_text_encoder", "resolve_tokenizer", "qwen_rms_norm"]
