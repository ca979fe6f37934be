"""Weight patches (LoRA…) on the pack's DiT inside ComfyUI: the key-map hook and the patcher for packed layers.

* :func:`install_key_map_hook` — ``comfy.lora.model_lora_keys_unet`` (what core ``LoraLoader`` /
  ``LoraLoaderModelOnly`` / ``load_lora_for_models`` use) is wrapped once so that a model that
  offers ``lora_key_map()`` (only this pack's ``Ideogram4NativeModel``) adds its own table —
  every trainer's spelling, split q/k/v onto rows of the fused ``qkv`` (``model/dit/lora_keys.py``).
  Every other model gets core's map unchanged.
* :class:`Ideogram4ModelPatcher` — a ``ModelPatcher`` whose packed fp8 / nf4 layers are never
  merged into: ComfyUI's merge (``patch_weight_to_device``) would add the LoRA to the packed
  values without their scale (fp8) or fail on the packed shape (nf4).  For those weights the patch
  becomes a ``LowVramPatch`` (ComfyUI's own "apply the patches to the weight when the layer runs",
  every adapter type and fused-row offsets included) held by the layer and applied when it runs —
  plain LoRAs as a low-rank side branch (``lora_branch``), other adapters to its decoded weight;
  streamed layers already get exactly that from ComfyUI.  Memory overhead: the LoRA's own
  tensors, moved once to the load device in the model's compute dtype (the dtype ComfyUI's
  ``calculate_weight`` and the side branch cast them to on every call anyway, so the result is
  the same), plus the per-layer decode temporary that packed layers need anyway.  Those copies are
  ComfyUI's to count: they are part of the patched layer's size in the load list, of
  ``model_size()`` and so of ``loaded_size()``, and go when the layer is streamed or unloaded.
  Plain (bf16 / fp32) weights keep ComfyUI's normal merge.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import torch

import comfy.lora
import comfy.model_management
import comfy.model_patcher
import comfy.utils
import comfy.weight_adapter

from ...model.checkpoints import QuantizedLinear
from . import lora_branch
from .offload import HomePatcher


def install_key_map_hook() -> None:
    """Wrap ``comfy.lora.model_lora_keys_unet`` once; scoped to models with a ``lora_key_map()`` method."""
    original = comfy.lora.model_lora_keys_unet
    if getattr(original, "ideogram4_hook", False):
        return

    @functools.wraps(original)
    def model_lora_keys_unet(model, key_map={}):
        key_map = original(model, key_map)
        own = getattr(model, "lora_key_map", None)
        if callable(own):
            key_map.update(own())
        return key_map

    model_lora_keys_unet.ideogram4_hook = True
    comfy.lora.model_lora_keys_unet = model_lora_keys_unet


def split_key(key: str) -> tuple[str, str]:
    """(module name, leaf) of a patch key: ``"diffusion_model.layers.0.attention.qkv.weight"`` →
    (``"diffusion_model.layers.0.attention.qkv"``, ``"weight"``)."""
    module_name, _, leaf = key.rpartition(".")
    return module_name, leaf


def layer_of(model: torch.nn.Module, key) -> tuple:
    """(the module that holds ``key``'s tensor or None, the tensor's name in it); ``key`` is a name or ComfyUI's
    ``(name, offset…)`` for rows of a fused weight."""
    module_name, leaf = split_key(key if isinstance(key, str) else key[0])
    try:
        return comfy.utils.get_attr(model, module_name), leaf
    except AttributeError:
        return None, leaf


def packed_module(model: torch.nn.Module, key: str):
    """The packed layer whose ``weight`` is ``key``, or None."""
    module, leaf = layer_of(model, key)
    return module if leaf == "weight" and isinstance(module, QuantizedLinear) else None


def _device_dtype(tensor: torch.Tensor, dtype):
    """The dtype a patch tensor is kept in on the device: ``dtype`` for floating factors, as stored for scalars
    (a 0-d ``alpha``) and integer tensors."""
    return dtype if dtype is not None and tensor.is_floating_point() and tensor.ndim else tensor.dtype


def _decoded_by_source(value) -> bool:
    """A ``(stored weight, convert)`` pair of another model's packed layer (``get_key_patches``, model merging):
    the convert decodes that layer's own storage, so the stored tensor is neither moved nor counted."""
    return (isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], torch.Tensor)
            and isinstance(getattr(value[1], "__self__", None), QuantizedLinear))


def _to_device(value, device, dtype=None):
    """A patch value (tensor / weight adapter / nested tuples) with its tensors on ``device`` (floating factors in
    ``dtype``)."""
    if _decoded_by_source(value):
        return value
    if isinstance(value, torch.Tensor):
        return value.to(device=device, dtype=_device_dtype(value, dtype))
    if isinstance(value, comfy.weight_adapter.WeightAdapterBase):
        return type(value)(value.loaded_keys, _to_device(value.weights, device, dtype))
    if isinstance(value, (tuple, list)):
        return type(value)(_to_device(v, device, dtype) for v in value)
    return value


def patch_tensors(entries):
    """Every tensor of a key's patch entries, in order (one that occurs twice is yielded twice)."""
    def walk(value):
        if _decoded_by_source(value):
            return
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, comfy.weight_adapter.WeightAdapterBase):
            yield from walk(value.weights)
        elif isinstance(value, (tuple, list)):
            for v in value:
                yield from walk(v)

    for entry in entries:
        yield from walk(entry[1])


def device_bytes(entries, dtype) -> int:
    """Bytes the tensors of a key's patch entries take on the load device once :func:`runtime_patch` moved them
    there in ``dtype`` (each occurrence is its own copy)."""
    return sum(t.numel() * _device_dtype(t, dtype).itemsize for t in patch_tensors(entries))


# ---------------------------------------------------------------- run-time patches, per pass ("role")
#
# A layer's run-time patches live in ``layer.role_patches`` ({role: LowVramPatch}), which ComfyUI never
# touches.  Role "own" holds the patches of the patcher that loaded the model; role "view:<id>" those of an
# unconditional model built on this base (:class:`SharedUnconditionalDiT`, one role each), active only inside its pass.
_ROLE = contextvars.ContextVar("ideogram4_lora_role", default="own")


@contextlib.contextmanager
def active_role(role: str):
    token = _ROLE.set(role)
    try:
        yield
    finally:
        _ROLE.reset(token)


class RolePatched:
    """Mixin for the DiT's layers: the run-time patch of the pass in progress for ``leaf`` (or None)."""

    role_patches = None

    def role_patch(self, leaf: str = "weight"):
        return self.role_patches.get((_ROLE.get(), leaf)) if self.role_patches else None

    def set_role_patch(self, role: str, patch, leaf: str = "weight") -> None:
        patches = dict(self.role_patches or {})
        if patch is None:
            patches.pop((role, leaf), None)
        else:
            patches[(role, leaf)] = patch
        self.role_patches = patches or None

    def clear_role_patches(self, role: str) -> None:
        for leaf in ("weight", "bias"):
            self.set_role_patch(role, None, leaf)


def computing_dit(dit: torch.nn.Module) -> torch.nn.Module:
    """The DiT whose layers run: the base of an unconditional model built as "base + LoRA", else ``dit``."""
    base = getattr(dit, "base", None)
    return dit if base is None else base


# A view dropped while loaded (ComfyUI forgets a model without unloading it) must take its run-time patches (and their
# device copies) off the base.  Its finalizer may run wherever the garbage collector runs — inside another update
# of a layer's patches, or on another thread — so it only appends the role to the base's list; the executor's next
# load, unload or model call clears those roles (:func:`clear_dead_roles`).
DEAD_ROLES = "_ideogram4_dead_roles"


def role_died(base_ref, role: str) -> None:
    """Finalizer of a view: ``role`` is dead (a weak reference to the base; gone: nothing to do)."""
    base = base_ref()
    if base is not None:
        getattr(base, DEAD_ROLES).append(role)


def clear_role(model: torch.nn.Module, role: str) -> None:
    """Remove ``role``'s run-time patches from every layer of ``model``."""
    for module in model.modules():
        if isinstance(module, RolePatched):
            module.clear_role_patches(role)


def clear_dead_roles(dit: torch.nn.Module) -> None:
    """Remove the run-time patches of every dead role from ``dit``'s layers (on the executor's thread)."""
    dead = getattr(dit, DEAD_ROLES, None)
    while dead:
        clear_role(dit, dead.pop())


def _packed_buffer(model: torch.nn.Module, key: str) -> bool:
    """``key`` (a patch key: a name, or ComfyUI's ``(name, offset…)`` for rows of a fused weight) is a packed layer's
    scale / absmax / code-table buffer (not its weight or bias)."""
    module, leaf = layer_of(model, key)
    return leaf not in ("weight", "bias") and isinstance(module, QuantizedLinear)


def runtime_patch(patches: dict, key: str, device=None, dtype=None):
    """ComfyUI's ``LowVramPatch`` for ``key`` (applied to a weight when the layer runs), its tensors on ``device``
    in ``dtype`` (the compute dtype)."""
    patch = comfy.model_patcher.LowVramPatch(key, patches)
    if device is not None:
        patch.prepared_patches = [(p[0], _to_device(p[1], device, dtype), *p[2:]) for p in patches[key]]
    return patch


def _is_shared(model) -> bool:
    return bool(getattr(getattr(model, "diffusion_model", None), "shared_view", False))


def role_layer(model, key: str):
    """The layer that can apply ``key``'s patch when it runs (a Linear's weight or bias), or None."""
    module, leaf = layer_of(model, key)
    return module if leaf in ("weight", "bias") and isinstance(module, RolePatched) else None


def unshareable_keys(model, keys) -> list[str]:
    """Patched keys that a base shared by two passes cannot keep to one pass (not a Linear's weight or bias)."""
    return sorted(k for k in keys if role_layer(model, k) is None)


class Ideogram4ModelPatcher(HomePatcher):
    """``HomePatcher`` (offload returns file-backed weights to their mapping) that applies patches of packed
    layers (and, on a base shared with an unconditional view, of every layer) to the weight when the layer
    runs, instead of merging them into the stored weights; the device copies of those patches are counted
    in the layer's size (module docstring)."""

    def _runtime_layer(self, key: str, strict: bool = True):
        """The layer that applies ``key``'s patch when it runs (packed, or on a shared base), or None (merged).
        ``strict``: a patch a shared base cannot keep to one pass is a ValueError (else None)."""
        module = packed_module(self.model, key)
        if module is None and _is_shared(self.model):
            module = role_layer(self.model, key)
            if module is None and strict:
                raise ValueError(f"{key}: a patch of this weight would also act in the unconditional pass that "
                                 f"shares this base (only Linear weights and biases can be patched per pass); "
                                 f"load this LoRA on a model that is not shared, or without that key")
        return module

    def _compute_dtype(self):
        return self.model.diffusion_model.compute_dtype

    def runtime_keys(self) -> list:
        """The patched keys applied when their layer runs (never merged into the stored weight)."""
        return [k for k in self.patches if self._runtime_layer(k, strict=False) is not None]

    def layer_patch_bytes(self) -> dict:
        """{layer name: bytes its run-time patches take on the load device} (cached per patch set)."""
        key = (self.patches_uuid, self._compute_dtype(), len(self.patches), _is_shared(self.model))
        cached = getattr(self, "_runtime_patch_bytes", None)
        if cached is None or cached[0] != key:
            sizes: dict = {}
            for k in self.runtime_keys():
                name = split_key(k)[0]
                sizes[name] = sizes.get(name, 0) + device_bytes(self.patches[k], key[1])
            cached = self._runtime_patch_bytes = (key, sizes)
        return cached[1]

    def runtime_patch_bytes(self) -> int:
        """Bytes of the device copies of this model's run-time patches when every layer is resident."""
        return sum(self.layer_patch_bytes().values())

    def merged_layers(self) -> frozenset:
        """Names (in the DiT) of the layers whose run-time weight patch is merged into the decoded weight on every
        call (not only plain LoRAs, which run as a side branch): each such call holds weight-sized temporaries."""
        return frozenset(split_key(k)[0].removeprefix("diffusion_model.") for k in self.runtime_keys()
                         if split_key(k)[1] == "weight" and lora_branch.terms_of_entries(self.patches[k]) is None)

    def weight_bytes(self) -> int:
        """ComfyUI's size of the weights alone (``module_size``; a clone is handed its parent's ``model_size()``,
        which holds the parent's patches, so it is measured here)."""
        if getattr(self, "_weight_bytes", None) is None:
            self._weight_bytes = comfy.model_management.module_size(self.model)
        return self._weight_bytes

    def model_size(self) -> int:
        return self.weight_bytes() + self.runtime_patch_bytes()

    def _load_list(self, *args, **kwargs):
        """ComfyUI's load list with each layer's size counting the device copies of its run-time patches, so what
        fits, what is loaded and what a partial unload frees include them (``module_mem`` is the 4th entry from
        the end of each row)."""
        loading = super()._load_list(*args, **kwargs)
        extra = self.layer_patch_bytes()
        if not extra:
            return loading
        return [row[:-4] + (row[-4] + extra.get(row[-3], 0),) + row[-3:] for row in loading]

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        """ComfyUI's ``add_patches``, without the scale / absmax / code-table buffers of packed layers: another model
        hands them out with its weights for merging (its packed weights arrive with the convert that decodes them
        from those buffers, :meth:`ComfyQuantizedLinear.convert_weight`), and this model's own buffers belong to its
        packed weight, which is patched as a whole."""
        kept = {k: v for k, v in patches.items() if not _packed_buffer(self.model, k)}
        return super().add_patches(kept, strength_patch, strength_model)

    def model_state_dict_for_saving(self, model=None, prefix=""):
        """ComfyUI's saving state dict (ModelSave, CheckpointSave…) — refused while packed layers carry patches: ComfyUI
        would write their decoded, patched weights into the packed keys next to the file's scales (a checkpoint that
        loads as garbage)."""
        packed = sorted(k for k in self.patches if packed_module(self.model, k) is not None)
        if packed:
            fmt = getattr(self.model.diffusion_model, "checkpoint_format", "packed")
            raise ValueError(f"saving this {fmt} model with patches (LoRA or merge) on {len(packed)} packed layers "
                             f"(e.g. {packed[0]}) is not supported: their patched weights are decoded and would not "
                             f"match the file's scales. Save the LoRA itself, or patch and save a bf16 / fp32 model")
        return super().model_state_dict_for_saving(model, prefix)

    def patch_weight_to_device(self, key, device_to=None, inplace_update=False, return_weight=False, force_cast=False):
        if key not in self.patches and packed_module(self.model, key) is not None:
            return comfy.utils.get_attr(self.model, key)  # packed storage is never cast (no force_cast copy back)
        module = self._runtime_layer(key) if key in self.patches else None
        if module is None:
            return super().patch_weight_to_device(key, device_to=device_to, inplace_update=inplace_update,
                                                  return_weight=return_weight, force_cast=force_cast)
        leaf = split_key(key)[1]
        if return_weight:  # a merged copy was asked for (saving, merging): this layer only
            weight = (module.dequantized_weight(torch.float32, device_to)
                      if isinstance(module, QuantizedLinear) and leaf == "weight"
                      else getattr(module, leaf).to(device=device_to, dtype=torch.float32, copy=True))
            return comfy.lora.calculate_weight(self.patches[key], weight, key)
        module.set_role_patch("own", runtime_patch(self.patches, key, device_to, self._compute_dtype()), leaf)
        return None

    def _settle_lowvram_patches(self) -> None:
        """ComfyUI gave streamed layers its own ``LowVramPatch`` (``weight_function`` / ``bias_function``).  On a
        shared base that patch would also act in the view's pass: it becomes this pass's run-time patch instead.
        Elsewhere it replaces the run-time patch the layer held while resident (whose device copies are dropped)."""
        shared = _is_shared(self.model)
        for module in self.model.modules():
            if not isinstance(module, RolePatched):
                continue
            for leaf in ("weight", "bias"):
                functions = getattr(module, f"{leaf}_function", None) or []
                lowvram = [f for f in functions if getattr(f, "is_lowvram_patch", False)]
                if not lowvram:
                    continue
                if shared:
                    setattr(module, f"{leaf}_function", [f for f in functions if f not in lowvram])
                    module.set_role_patch("own", lowvram[-1], leaf)
                else:
                    module.set_role_patch("own", None, leaf)

    def load(self, *args, **kwargs):
        clear_dead_roles(computing_dit(self.model.diffusion_model))
        out = super().load(*args, **kwargs)
        self._settle_lowvram_patches()
        return out

    def partially_unload(self, *args, **kwargs):
        out = super().partially_unload(*args, **kwargs)
        self._settle_lowvram_patches()
        return out

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        super().unpatch_model(device_to=device_to, unpatch_weights=unpatch_weights)
        clear_dead_roles(computing_dit(self.model.diffusion_model))
        if unpatch_weights:
            clear_role(self.model, "own")
