"""Pure-torch Ideogram 4, one subpackage per subsystem; importable without ComfyUI, never imports ``nodes/``.

* ``checkpoints`` — lazy safetensors reader, the one format-detection function, packed-weight codecs;
* ``dit`` — the transformer, RoPE, config, constants, ``load_transformer``;
* ``text_encoder`` — the Qwen3-VL multi-layer encoder and its loader;
* ``vae`` — the FLUX.2 decoder, latent layouts and normalisation;
* ``caption`` — schema, checker, builders, Magic Prompt (no torch);
* ``pipeline`` and ``safety`` — the end-to-end reference pipeline and the placeholder detector.

Names are resolved lazily (PEP 562), so ``import model.caption`` does not import torch models.
For one release the public names of the old flat modules keep working from here
(``from model import load_transformer, QuantizedLinear, check_caption``; ``from model import latents``).
"""

from __future__ import annotations

import importlib

_SUBPACKAGES = ("caption", "checkpoints", "dit", "vae", "text_encoder")
# Old flat module → its new home (kept for one release).
_MOVED_MODULES = {
    "caption_schema": "caption.schema", "caption_builders": "caption.builders", "magic_prompt": "caption.magic_prompt",
    "checkpoint": "checkpoints.reader", "formats": "checkpoints.formats", "quant": "checkpoints", "ops": "checkpoints.ops",
    "config": "dit.config", "constants": "dit.constants", "rope": "dit.rope", "loading": "dit.loading",
    "text_encoder_loading": "text_encoder.loading", "latents": "vae.latents",
}

__all__ = ["DiTConfig", "Ideogram4DiT", "Ideogram4TextEncoder", "load_text_encoder", "load_transformer"]


def __getattr__(name: str):
    if name in _MOVED_MODULES:
        return importlib.import_module(f"{__name__}.{_MOVED_MODULES[name]}")
    for sub in _SUBPACKAGES:
        module = importlib.import_module(f"{__name__}.{sub}")
        if name in getattr(module, "__all__", ()):
            return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_MOVED_MODULES) | set(_SUBPACKAGES))
