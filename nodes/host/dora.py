"""DoRA with the magnitude per output row, as PEFT (``use_dora``) and LyCORIS (``dora_wd``) train it.

DoRA rescales the adapted weight ``W' = W + ΔW`` row by row: ``m · W' / ‖W'‖``.  ComfyUI 0.33's
``weight_decompose`` takes that norm of ``W`` instead of ``W'`` when the magnitude is per output row
(the layout of PEFT's ``lora_magnitude_vector`` and of LyCORIS' default), so a DoRA file changes the
weights by a different amount than it was trained for; its per-input-column branch is right.

:func:`row_norm_dora` gives a LoRA / LoHa / LoKr / GLoRA adapter whose magnitude is per output row a
subclass of its own type that computes the trained formula (ComfyUI's strength rule kept:
``W + strength · (m · W' / ‖W'‖ − W)``, the same ``eps``); other adapters are returned unchanged.  The
subclasses keep their parent's constructor, so the pack's device copies (``type(a)(keys, weights)``)
keep the fix.  Only the pack's models get them: every other model keeps ComfyUI's own adapters.
"""

from __future__ import annotations

import functools

import torch

import comfy.model_management as mm
import comfy.weight_adapter as weight_adapter

# Where each adapter keeps its DoRA magnitude in ``weights`` (comfy/weight_adapter/*.py, ComfyUI 0.33).
_DORA_INDEX = {"LoRAAdapter": 4, "LoHaAdapter": 7, "LoKrAdapter": 8, "GLoRAAdapter": 5}


def _adapter_base(adapter) -> type | None:
    """The ComfyUI adapter class ``adapter`` is (or derives from) that keeps a DoRA magnitude."""
    return next((cls for cls in type(adapter).__mro__ if cls.__name__ in _DORA_INDEX), None)


def _per_output_row(dora_scale: torch.Tensor, weight: torch.Tensor) -> bool:
    return dora_scale.shape[0] == weight.shape[0]  # ComfyUI's own test (``wd_on_output_axis``)


@functools.cache
def _fixed_class(base: type) -> type:
    index = _DORA_INDEX[base.__name__]

    def calculate_weight(self, weight, key, strength, strength_model, offset, function,
                         intermediate_dtype=torch.float32, original_weight=None):
        dora_scale = self.weights[index]
        if dora_scale is None or not _per_output_row(dora_scale, weight):
            return base.calculate_weight(self, weight, key, strength, strength_model, offset, function,
                                         intermediate_dtype, original_weight)
        plain = base(self.loaded_keys, self.weights[:index] + (None,) + self.weights[index + 1:])
        adapted = plain.calculate_weight(weight.clone(), key, 1.0, strength_model, offset, function,
                                         intermediate_dtype, original_weight)  # W' = W + ΔW
        rows = adapted.shape[0]
        norm = adapted.reshape(rows, -1).norm(dim=1, keepdim=True).reshape(rows, *[1] * (adapted.dim() - 1))
        norm = norm + torch.finfo(weight.dtype).eps
        magnitude = mm.cast_to_device(dora_scale, weight.device, intermediate_dtype).reshape(norm.shape)
        adapted *= (magnitude / norm).type(weight.dtype)
        if strength != 1.0:
            adapted -= weight
            weight += strength * adapted
        else:
            weight[:] = adapted
        return weight

    return type(f"{base.__name__}RowNormDoRA", (base,), {"calculate_weight": calculate_weight,
                                                         "__module__": __name__})


def row_norm_dora(adapter):
    """``adapter`` as the subclass computing DoRA with the adapted weight's row norms (unchanged without DoRA)."""
    base = _adapter_base(adapter) if isinstance(adapter, weight_adapter.WeightAdapterBase) else None
    if base is None or adapter.weights[_DORA_INDEX[base.__name__]] is None or type(adapter).__module__ == __name__:
        return adapter
    return _fixed_class(base)(adapter.loaded_keys, adapter.weights)


def with_row_norm_dora(patches: dict) -> dict:
    """``comfy.lora.load_lora``'s patches with every DoRA adapter replaced by :func:`row_norm_dora`'s."""
    return {key: row_norm_dora(value) for key, value in patches.items()}
