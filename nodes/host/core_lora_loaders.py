"""Core ComfyUI's LoRA loaders on this pack's models: the same checks and patches as the pack's LoRA node.

Core ``LoraLoader`` / ``LoraLoaderModelOnly`` (and the LoRA managers that call the same function) go
through ``comfy.sd.load_lora_for_models``; ``LoraLoaderBypass`` through ``load_bypass_lora_for_models``.
Both are wrapped once.  When the model is this pack's ``Ideogram4NativeModel`` the DiT part of the LoRA
is handled by :mod:`.lora` instead of core's code:

* a key that maps nowhere is a ``ValueError`` naming it and what the file looks like (core only logs
  "lora key not loaded" and returns the unchanged model);
* a PEFT / diffusers LoRA is scaled by its saved ``lora_alpha`` / ``rank_pattern`` metadata, which core
  reads into ``lora_metadata`` but never applies;
* strength 0 returns the model itself (bit-identical, no patches).

Bypass mode gives the same model as the normal mode here: packed layers are never merged into anyway,
and every patch is applied on the fly or merged exactly as ComfyUI merges.  Any other model — and the
CLIP part of a LoRA — goes to core's own code unchanged.
"""

from __future__ import annotations

import functools
import logging

import comfy.lora
import comfy.sd

from .comfy_model import Ideogram4NativeModel
from .lora import apply_lora, prepare_lora

log = logging.getLogger(__name__)

LABEL = "LoRA on the Ideogram 4 model"


def _clip_keys(lora: dict, clip) -> set[str]:
    """Keys of ``lora`` that core's text-encoder key map claims (they go to the CLIP, not to the DiT)."""
    if clip is None:
        return set()
    prefixes = tuple(p + "." for p in comfy.lora.model_lora_keys_clip(clip.cond_stage_model, {}))
    return {k for k in lora if k.startswith(prefixes)}


def _ours(model) -> bool:
    return model is not None and isinstance(getattr(model, "model", None), Ideogram4NativeModel)


def _load(original, model, clip, lora, strength_model, strength_clip, lora_metadata=None):
    """``original`` (core's function, normal or bypass) takes the CLIP part; the DiT part goes the pack's way."""
    clip_keys = _clip_keys(lora, clip)
    new_clip = None
    if clip is not None:
        new_clip = original(None, clip, {k: lora[k] for k in clip_keys}, 0.0, strength_clip)[1]
    if strength_model == 0:
        return model, new_clip
    dit_part = {k: v for k, v in lora.items() if k not in clip_keys}
    converted, mapping = prepare_lora(dit_part, lora_metadata, model, LABEL)
    new_model, weights, skipped = apply_lora(model, converted, strength_model, LABEL)
    log.info("Ideogram 4: %s ×%g — %s; %d weights patched%s", LABEL, strength_model, mapping.describe(), len(weights),
             f"; {len(skipped)} text-projection weights skipped (image-only model)" if skipped else "")
    for note in mapping.notes:  # core's node shows no text: what the pack's node would say goes to the log
        log.warning("Ideogram 4: %s: %s", LABEL, note)
    if lora_metadata:
        new_model.set_attachments("lora_metadata", lora_metadata)
    return new_model, new_clip


def install_core_loader_hooks() -> None:
    """Wrap ``comfy.sd.load_lora_for_models`` and ``load_bypass_lora_for_models`` once (scoped to this pack's models)."""
    if getattr(comfy.sd.load_lora_for_models, "ideogram4_hook", False):
        return
    def make(original):
        @functools.wraps(original)
        def wrapped(model, clip, lora, strength_model, strength_clip, *args, **kwargs):
            if not _ours(model):
                return original(model, clip, lora, strength_model, strength_clip, *args, **kwargs)
            metadata = kwargs.get("lora_metadata", args[0] if args else None)
            return _load(original, model, clip, lora, strength_model, strength_clip, metadata)  # CLIP part: core's

        wrapped.ideogram4_hook = True
        return wrapped

    for name in ("load_lora_for_models", "load_bypass_lora_for_models"):
        if hasattr(comfy.sd, name):
            setattr(comfy.sd, name, make(getattr(comfy.sd, name)))
