"""The text projection leaves VRAM once it has done its one job of a sampling run.

Inside a sampling run the DiT computes the text rows ``llm_cond_proj(llm_cond_norm(features))`` once
and caches them (``Ideogram4DiT.sampling_run``); ``llm_cond_norm`` / ``llm_cond_proj`` (245 M
parameters: 0.49 GB in bf16, 0.25 GB in fp8) are then not needed until the next run.  Right after
the projection, :func:`release_text_projection` re-points their weights to their file-backed homes on
the CPU (nothing is copied; the device copies are freed) and leaves the two modules exactly in
ComfyUI's own "offloaded by a partial load" state — ``comfy_cast_weights`` on, the previous value
kept in ``prev_comfy_cast_weights``, ``comfy_patched_weights`` off, the model's loaded-weight count
lowered — so the next run streams them (one upload per run) or ComfyUI's next load puts them back
when there is room.  Modules that carry a patch (a merged LoRA) or have no file home stay as they are.
"""

from __future__ import annotations

import weakref

import torch

import comfy.model_management as mm

from ...model.dit import TEXT_PROJECTION_MODULES
from . import offload


def _loaded_patcher(base_model):
    for loaded in mm.current_loaded_models:
        patcher = loaded.model
        if patcher is not None and patcher.model is base_model:
            return patcher
    return None


def release_text_projection(dit: torch.nn.Module, base_model) -> int:
    """Send the text projection of ``dit`` (the ``diffusion_model`` of ``base_model``) home; returns the bytes ComfyUI
    counts as freed on the compute device (0 when nothing was resident there)."""
    patcher = _loaded_patcher(base_model)
    if patcher is None:
        return 0
    homes = offload.homes_of(base_model)
    freed = 0
    for name in TEXT_PROJECTION_MODULES:
        module = getattr(dit, name, None)
        if module is None or getattr(module, "comfy_cast_weights", True) or not getattr(module, "comfy_patched_weights",
                                                                                         False):
            continue  # absent, already streamed, or not loaded by ComfyUI
        prefix = f"diffusion_model.{name}."
        tensors = {prefix + key: t for _, _, key, t in offload._tensors(module)}
        if (any(k in patcher.patches for k in tensors) or getattr(module, "role_patches", None)
                or any(k not in homes for k in tensors)):
            continue  # patched weights are not the file's; no home to return to
        if all(offload._is(t, homes[k]) for k, t in tensors.items()):
            continue  # already the file's tensors (a CPU run): nothing to free
        offload.send_home(base_model, module, prefix)
        module.prev_comfy_cast_weights = module.comfy_cast_weights
        module.comfy_cast_weights = True
        module.comfy_patched_weights = False
        freed += mm.module_size(module)  # ComfyUI's own measure of an offloaded module (partially_unload)
    if freed:
        base_model.model_loaded_weight_memory = max(0, getattr(base_model, "model_loaded_weight_memory", 0) - freed)
        base_model.model_lowvram = True
    return freed


def text_projection_hook(base_model):
    """``Ideogram4DiT.after_text_projection`` for the DiT of ``base_model``; holds the model weakly (no reference
    cycle: a dropped model is freed by reference counting, as ComfyUI's model management expects)."""
    ref = weakref.ref(base_model)

    def hook(dit) -> None:
        model = ref()
        if model is not None:
            release_text_projection(dit, model)

    return hook
