"""LoRA files onto the pack's DiTs (what ``Ideogram4NativeLoraLoader`` runs): read, check every key, patch.

The key spelling of every trainer is resolved by ``model/dit/lora_keys.py``; the patches themselves
are ComfyUI's (``comfy.lora.load_lora`` → weight adapters: LoRA, LoCon, LoHa, LoKr, DoRA, …) added to
a clone of the ``ModelPatcher`` exactly as core ``LoraLoaderModelOnly`` does, so both loaders give
the same model.  Unlike core, a key that maps nowhere is an error, never a log line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

import comfy.lora
import comfy.utils

from ...model.dit import TEXT_PROJECTION_MODULES
from ...model.dit.lora_keys import map_lora, mapping_problems, normalize_peft
from .comfy_model import dit_of, require_ideogram4
from .lora_patching import packed_module

TARGETS = ("conditional", "unconditional", "both")


def read_lora(path: str | Path) -> tuple[dict, Optional[dict]]:
    sd, metadata = comfy.utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
    return sd, metadata


def prepare_lora(sd: dict, metadata: Optional[dict], patcher, label: str):
    """(state dict with PEFT scaling / DoRA names normalised, mapping) — or ValueError naming what does not map."""
    sd = normalize_peft(sd, metadata, tensor_factory=lambda v: torch.tensor(float(v)))
    cfg = dit_of(patcher).config
    mapping = map_lora({k: tuple(v.shape) for k, v in sd.items()}, cfg)
    problem = mapping_problems(mapping, list(sd), label)
    if problem:
        raise ValueError(problem)
    return sd, mapping


def _is_text_projection(model_key: str) -> bool:
    return model_key.removeprefix("diffusion_model.").split(".", 1)[0] in TEXT_PROJECTION_MODULES


def apply_lora(patcher, sd: dict, strength: float, label: str):
    """A clone of ``patcher`` with the LoRA added at ``strength``; returns (clone, patched weight keys, skipped)."""
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    patches = comfy.lora.load_lora(sd, key_map, log_missing=False)
    skipped = []
    if dit_of(patcher).image_only:  # the unconditional model has no text projection: those patches cannot act
        skipped = sorted({(k if isinstance(k, str) else k[0]) for k in patches
                          if _is_text_projection(k if isinstance(k, str) else k[0])})
        patches = {k: v for k, v in patches.items() if (k if isinstance(k, str) else k[0]) not in skipped}
    clone = patcher.clone()
    accepted = set(clone.add_patches(patches, strength))
    refused = [str(k if isinstance(k, str) else k[0]) for k in patches if k not in accepted]
    if refused:
        raise ValueError(f"{label}: ComfyUI refused {len(refused)} patches (no such weight): {', '.join(refused[:6])}")
    weights = sorted({k if isinstance(k, str) else k[0] for k in accepted})
    return clone, weights, skipped


def load_lora_onto(model, unconditional_model, path: str | Path, strength: float, target: str, name: str):
    """The LoRA Loader node's work: (model, unconditional_model, report lines)."""
    if target not in TARGETS:
        raise ValueError(f"target {target!r} is not one of {TARGETS}")
    require_ideogram4(model, "model")
    if target != "conditional":
        if unconditional_model is None:
            raise ValueError(f"target = {target} needs the unconditional_model input connected")
        require_ideogram4(unconditional_model, "unconditional_model")
    if strength == 0:
        return model, unconditional_model, [f"{name}: strength 0 — models unchanged"]
    sd, metadata = read_lora(path)
    lines = []
    out = {"conditional": model, "unconditional": unconditional_model}
    roles = ("conditional", "unconditional") if target == "both" else (target,)
    for role in roles:
        label = f"LoRA {name} on the {role} model"
        converted, mapping = prepare_lora(sd, metadata, out[role], label)
        out[role], weights, skipped = apply_lora(out[role], converted, strength, label)
        line = f"{role}: {name} ×{strength:g} — {mapping.describe()}; {len(weights)} weights patched"
        packed = sum(packed_module(out[role].model, k) is not None for k in weights)
        if packed:
            line += f" ({packed} packed: applied to the decoded weight when the layer runs)"
        if skipped:
            line += f"; {len(skipped)} text-projection weights skipped (the unconditional pass is image-only)"
        lines.append(line)
    return out["conditional"], out["unconditional"], lines
