"""LoRA files onto the pack's DiTs (what ``Ideogram4NativeLoraLoader`` runs): read, check every key, patch.

The key spelling of every trainer is resolved by ``model/dit/lora_keys.py``; the patches themselves
are ComfyUI's (``comfy.lora.load_lora`` → weight adapters: LoRA, LoCon, LoHa, LoKr, DoRA, …) added to
a clone of the ``ModelPatcher`` exactly as core ``LoraLoaderModelOnly`` does, so both loaders give
the same model.  Unlike core, a key that maps nowhere is an error, never a log line.
"""

from __future__ import annotations

import json
import uuid
import weakref
from pathlib import Path
from typing import Optional

import torch

import comfy.lora
import comfy.model_management as mm
import comfy.utils

from ...model.checkpoints import check_safetensors_file
from ...model.dit import TEXT_PROJECTION_MODULES
from ...model.dit.lora_keys import alpha_notes, map_lora, mapping_problems, normalize_peft
from . import memory_policy as mp
from .comfy_model import Ideogram4NativeModel, dit_of, require_ideogram4
from .dora import with_row_norm_dora
from .lora_patching import (DEAD_ROLES, Ideogram4ModelPatcher, active_role, clear_role, packed_module, patch_tensors,
                            role_died, runtime_patch, split_key, unshareable_keys)

TARGETS = ("conditional", "unconditional", "both")
ADAPTER_CONFIG_MARK = "ideogram4.adapter_config"  # metadata entry: the adapter_config.json the LoraConfig came from


def read_lora(path: str | Path) -> tuple[dict, Optional[dict]]:
    """(tensors, metadata) of a LoRA file; a PEFT ``save_pretrained`` adapter's ``adapter_config.json`` next to it
    supplies its LoraConfig (``lora_alpha``, ``r``, patterns) where the file's metadata has none."""
    path = Path(path)
    try:
        check_safetensors_file(path)  # a truncated file: the pack's message, not safetensors' header error
    except ValueError as exc:
        raise ValueError(f"LoRA {exc}") from None
    sd, metadata = comfy.utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
    metadata = dict(metadata or {})
    config = path.with_name("adapter_config.json")  # PEFT pairs it with adapter_model.safetensors only
    if "lora_adapter_metadata" not in metadata and path.name == "adapter_model.safetensors" and config.is_file():
        try:
            conf = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"LoRA {path}: {config.name} next to it is not readable JSON ({exc})") from None
        metadata["lora_adapter_metadata"] = json.dumps(conf)
        metadata[ADAPTER_CONFIG_MARK] = str(config)
    return sd, metadata


def prepare_lora(sd: dict, metadata: Optional[dict], patcher, label: str):
    """(state dict with PEFT scaling / DoRA names normalised, mapping) — or ValueError naming what does not map.
    ``mapping.notes`` says how the scale was found where the user should know (alpha 0, none, adapter_config.json)."""
    applied: list[str] = []
    sd = normalize_peft(sd, metadata, tensor_factory=lambda v: torch.tensor(float(v)), report=applied)
    cfg = dit_of(patcher).config
    mapping = map_lora({k: tuple(v.shape) for k, v in sd.items()}, cfg)
    problem = mapping_problems(mapping, list(sd), label)
    if problem:
        raise ValueError(problem)
    alphas = {}
    for key, value in sd.items():
        if key.endswith(".alpha"):
            if value.numel() != 1:
                raise ValueError(f"{label}: {key} has {value.numel()} values; an alpha is one number")
            alphas[key] = float(value.reshape(()))
    mapping.notes += alpha_notes(alphas, mapping, label)
    if applied and metadata and ADAPTER_CONFIG_MARK in metadata:
        mapping.notes.append(f"{applied[0]}, from {metadata[ADAPTER_CONFIG_MARK]} (PEFT save_pretrained adapter)")
    return sd, mapping


def _is_text_projection(model_key: str) -> bool:
    return model_key.removeprefix("diffusion_model.").split(".", 1)[0] in TEXT_PROJECTION_MODULES


def apply_lora(patcher, sd: dict, strength: float, label: str, nothing_ok: bool = False):
    """A clone of ``patcher`` with the LoRA added at ``strength``; returns (clone, patched weight keys, skipped).
    ``nothing_ok``: an image-only model whose every patch is a skipped text-projection one is reported by the
    caller (the LoRA Loader's ``target = both``), not an error."""
    key_map = comfy.lora.model_lora_keys_unet(patcher.model, {})
    patches = with_row_norm_dora(comfy.lora.load_lora(sd, key_map, log_missing=False))  # DoRA as trained
    skipped = []
    if dit_of(patcher).image_only:  # the unconditional model has no text projection: those patches cannot act
        skipped = sorted({(k if isinstance(k, str) else k[0]) for k in patches
                          if _is_text_projection(k if isinstance(k, str) else k[0])})
        patches = {k: v for k, v in patches.items() if (k if isinstance(k, str) else k[0]) not in skipped}
        if skipped and not patches and not nothing_ok:
            raise ValueError(f"{label}: every weight this LoRA patches is in the text projection (llm_cond_norm / "
                             f"llm_cond_proj: {', '.join(skipped[:3])}), which the unconditional model does not run "
                             "(its pass is image-only), so it would change nothing there; load it on the "
                             "conditional model")
    _refuse_unshareable(patcher, patches, label)
    clone = patcher.clone()
    accepted = set(clone.add_patches(patches, strength))
    refused = [str(k if isinstance(k, str) else k[0]) for k in patches if k not in accepted]
    if refused:
        raise ValueError(f"{label}: ComfyUI refused {len(refused)} patches (no such weight): {', '.join(refused[:6])}")
    weights = sorted({k if isinstance(k, str) else k[0] for k in accepted})
    return clone, weights, skipped


def _refuse_unshareable(patcher, patches: dict, label: str) -> None:
    """On a base shared by the conditional and an unconditional-from-LoRA model, a patch must act in one pass only:
    that holds for Linear weights and biases (applied when the layer runs), not for norms or embeddings."""
    dit = dit_of(patcher)
    root = dit.base if isinstance(dit, SharedUnconditionalDiT) else dit if getattr(dit, "shared_view", False) else None
    if root is None:
        return
    keys = {(k if isinstance(k, str) else k[0]).removeprefix("diffusion_model.") for k in patches}
    bad = unshareable_keys(root, keys)
    if bad:
        raise ValueError(f"{label}: {len(bad)} patched weights are not Linear weights or biases ({', '.join(bad[:6])}); "
                         f"on a base shared with an unconditional-from-LoRA model they would act in both passes. "
                         f"Load a separate unconditional checkpoint instead, or use a LoRA without those keys")


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
        out[role], weights, skipped = apply_lora(out[role], converted, strength, label, nothing_ok=target == "both")
        line = f"{role}: {name} ×{strength:g} — {mapping.describe()}; {len(weights)} weights patched"
        packed = sum(packed_module(out[role].model, k) is not None for k in weights)
        if packed:
            line += f" ({packed} packed: applied when the layer runs, never merged into the packed bytes)"
        runtime = out[role].runtime_patch_bytes()
        if runtime:
            line += f"; the model's run-time patches take {runtime / 2**20:.1f} MiB on the device"
        if skipped:
            line += f"; {len(skipped)} text-projection weights skipped (the unconditional pass is image-only)"
        lines.append(line)
        lines += [f"  note: {note}" for note in mapping.notes]
    return out["conditional"], out["unconditional"], lines


# --------------------------------------------------------------------------- unconditional = base + LoRA

class SharedUnconditionalDiT(torch.nn.Module):
    """The unconditional DiT as "conditional base + LoRA", computed on the base's own layers.

    Holds no weights (the base is kept outside the module tree, so ComfyUI neither counts nor moves it
    twice); its pass runs the base image-only with its own role (``view:<id>``: several views can share one
    base, each with its own LoRA) active, so each base layer applies
    this model's patches (and not the conditional model's) to its weight when it runs.
    """

    image_only = True

    def __init__(self, base: torch.nn.Module, lora_name: str):
        super().__init__()
        self._base = (base,)  # a tuple: not registered as a submodule
        self.config = base.config
        self.checkpoint_format = f"{base.checkpoint_format} + LoRA {lora_name} (shared base)"
        self.role = f"view:{uuid.uuid4().hex[:12]}"  # this view's slot in the base layers' run-time patches
        base.shared_view = True
        if not hasattr(base, DEAD_ROLES):
            setattr(base, DEAD_ROLES, [])
        # dropped while loaded: its patches leave the base's layers at the next load or model call (lora_patching)
        weakref.finalize(self, role_died, weakref.ref(base), self.role).atexit = False

    @property
    def base(self) -> torch.nn.Module:
        return self._base[0]

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.base.compute_dtype

    def forward(self, x, t, text_features=None, *, grid_hw, text_lengths=None, transformer_options=None):
        if text_features is not None:
            raise ValueError("the unconditional model built from a LoRA runs the image-only pass only")
        with active_role(self.role):
            return self.base(x, t, None, grid_hw=grid_hw, transformer_options=transformer_options)


class Ideogram4ViewPatcher(Ideogram4ModelPatcher):
    """Patcher of a :class:`SharedUnconditionalDiT`: its patches name the base's weights and are installed on
    the base's layers as run-time patches of the view's own role when it is loaded."""

    def _view(self) -> SharedUnconditionalDiT:
        return self.model.diffusion_model

    def model_state_dict(self, filter_prefix=None):
        sd = {"diffusion_model." + k: v for k, v in self._view().base.state_dict().items()}
        return {k: v for k, v in sd.items() if filter_prefix is None or k.startswith(filter_prefix)}

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        """ComfyUI's add_patches, checked against the base's weights (the view itself holds none)."""
        known = set(self.model_state_dict())
        accepted = []
        for k in patches:
            key, offset, function = (k, None, None) if isinstance(k, str) else (k[0], k[1], k[2] if len(k) > 2 else None)
            if key in known:
                self.patches.setdefault(key, []).append((strength_patch, patches[k], strength_model, offset, function))
                accepted.append(k)
        self.patches_uuid = uuid.uuid4()
        return accepted

    def runtime_keys(self) -> list:
        """Every patch of the view is a run-time patch of a base layer, its copies on the load device: ComfyUI
        counts them as this model's size (the base belongs to the conditional model)."""
        return list(self.patches)

    def lora_bytes(self) -> int:
        """Bytes of the LoRA's tensors as they were read (each counted once)."""
        tensors = {id(t): t for entries in self.patches.values() for t in patch_tensors(entries)}
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def _clear_view_patches(self) -> None:
        clear_role(self._view().base, self._view().role)

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        super().unpatch_model(device_to=device_to, unpatch_weights=unpatch_weights)
        if unpatch_weights:  # the base's layers keep no patch (nor its device copies) of an unloaded view
            self._clear_view_patches()

    def load(self, device_to=None, *args, **kwargs):
        out = super().load(device_to, *args, **kwargs)
        base = self._view().base
        self._clear_view_patches()
        dtype = self._compute_dtype()
        for key in self.patches:
            module_name, leaf = split_key(key.removeprefix("diffusion_model."))
            comfy.utils.get_attr(base, module_name).set_role_patch(
                self._view().role, runtime_patch(self.patches, key, device_to, dtype), leaf)
        if device_to is not None:  # the copies are on the device whether ComfyUI loaded this model whole or not
            self.model.model_loaded_weight_memory = self.model_size()
        return out


def _unload_merged(model) -> None:
    """Unload every loaded patcher of ``model`` so no LoRA stays merged into weights the view will share."""
    for i in reversed(range(len(mm.current_loaded_models))):
        loaded = mm.current_loaded_models[i]
        if loaded.model is not None and loaded.model.model is model:
            mm.current_loaded_models.pop(i).model_unload()


def unconditional_from_lora(model, path: str | Path, strength: float, name: str):
    """(unconditional MODEL = ``model``'s base + the LoRA, sharing the base's weights; report lines)."""
    require_ideogram4(model, "model")
    base = dit_of(model)
    if base.image_only:
        raise ValueError("model: connect the conditional model (this one is an unconditional, image-only DiT)")
    label = f"unconditional LoRA {name}"
    sd, metadata = read_lora(path)
    _unload_merged(model.model)
    view = SharedUnconditionalDiT(base, name)
    config = model.model.model_config
    wrapper = Ideogram4NativeModel(config, view, device=model.offload_device)
    patcher = Ideogram4ViewPatcher(wrapper, load_device=model.load_device, offload_device=model.offload_device)
    converted, mapping = prepare_lora(sd, metadata, patcher, label)
    patcher, weights, skipped = apply_lora(patcher, converted, strength, label)
    patcher.ideogram4_info = {"source": f"{model.ideogram4_info['source']} + {name}", "component": "shared base",
                              "format": view.checkpoint_format, "dtype": model.ideogram4_info["dtype"]}
    lines = [f"unconditional = conditional base + {name} ×{strength:g}: {mapping.describe()}; {len(weights)} weights "
             f"patched when the layers run (image-only pass)",
             f"shares the conditional model's weights ({mp.gib(model.model_size())}, resident once); "
             f"adds the LoRA: {patcher.lora_bytes() / 2**20:.1f} MiB in the file, "
             f"{patcher.runtime_patch_bytes() / 2**20:.1f} MiB on the device in {str(view.compute_dtype).removeprefix('torch.')}"]
    if skipped:
        lines.append(f"{len(skipped)} text-projection weights skipped (the unconditional pass is image-only)")
    lines += [f"note: {note}" for note in mapping.notes]
    return patcher, lines
