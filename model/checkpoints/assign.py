"""Checkpoint tensors → model parameters: key checks, module swaps and assignment without copies.

Shared by the DiT, text-encoder and VAE loaders.  Models are built on the meta device; every
tensor is assigned straight from the lazy reader (one tensor in flight at a time).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .comfy_quant import COMFY_CODECS, as_storage
from .formats import CheckpointFormat, LinearSpec
from .fp8 import FP8_DTYPE
from .gguf_codec import dequantize_gguf
from .nf4 import NF4_CODE
from .reader import CheckpointReader


def key_problems(want: Mapping[str, Sequence[int]], have: Mapping[str, Sequence[int]], extra: Sequence[str], *,
                 noun: str = "keys", prefix: str = "", limits: tuple[int, int, int] = (8, 8, 5)) -> list[str]:
    """Missing / unexpected / wrong-shape messages for a checkpoint against what a model needs.

    ``extra`` is computed by the caller (each loader knows which extra tensors are legitimate);
    ``prefix`` is prepended to names as the file spells them; ``limits`` caps each list.
    """
    missing = [k for k in want if k not in have]
    wrong = [f"{prefix}{k}: expected {list(want[k])}, file has {list(have[k])}"
             for k in want if k in have and tuple(have[k]) != tuple(want[k])]
    problems = []
    if missing:
        problems.append(f"missing {noun} ({len(missing)}): " + ", ".join(prefix + k for k in missing[:limits[0]]))
    if extra:
        problems.append(f"unexpected {noun} ({len(extra)}): " + ", ".join(prefix + k for k in extra[:limits[1]]))
    if wrong:
        problems.append(f"wrong shapes ({len(wrong)}): " + "; ".join(wrong[:limits[2]]))
    return problems


def _read(reader: CheckpointReader, keys: list[str]) -> torch.Tensor:
    parts = [reader.get(k) for k in keys]
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)


def set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    """Replace parameter or buffer ``name`` of ``model`` by ``value`` (assign, no copy, no grad)."""
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    if leaf in parent._parameters:
        parent._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    elif leaf in parent._buffers:
        parent._buffers[leaf] = value
    else:
        raise KeyError(name)


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where submodule ``name`` of ``model`` is."""
    parent_name, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, leaf, new)


def swap_quantized_linears(model: nn.Module, linears: dict[str, LinearSpec], dtype: torch.dtype, operations,
                           label: str = "checkpoint") -> None:
    """Replace each Linear whose weight the file stores packed by the namespace's ``QuantizedLinear``.

    A packed GGUF tensor of another module (ComfyUI-GGUF's quantiser packs every large 2-D ``*.weight``, the DiT's
    2-row ``embed_image_indicator`` included) stays that module and is decoded once at load (:func:`assign_weights`);
    any other packed non-Linear weight is refused by name."""
    for mod_name, spec in linears.items():
        if spec.scheme is None:
            continue
        old = model.get_submodule(mod_name)
        if not isinstance(old, nn.Linear):
            if spec.scheme == "gguf":
                continue
            raise ValueError(f"{label}: {mod_name}.weight is stored as {spec.scheme}, but {mod_name} is a "
                             f"{type(old).__name__}, which is only read unquantised")
        replace_module(model, mod_name, operations.QuantizedLinear(
            old.in_features, old.out_features, bias=old.bias is not None, scheme=spec.scheme, device="meta",
            dtype=dtype, options=spec.options))


def assign_weights(model: nn.Module, reader: CheckpointReader, fmt: CheckpointFormat, device, dtype: torch.dtype) -> None:
    src = fmt.sources
    for mod_name, module in model.named_modules():
        scheme = getattr(module, "scheme", None)
        p = f"{mod_name}." if mod_name else ""
        local = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for leaf, _ in local:
            name = p + leaf
            if scheme in COMFY_CODECS and (leaf == "weight" or leaf in dict(COMFY_CODECS[scheme].scales)):
                value = as_storage(leaf, _read(reader, src[name]), scheme)
            elif scheme == "gguf" and leaf == "weight":
                value = _read(reader, src[name])
            elif scheme == "nf4" and leaf in ("absmax", "quant_map"):
                keys = src[f"{p}weight.{leaf}"]
                if leaf == "quant_map":
                    value = reader.get(keys[0]).to(torch.float32)
                    if not torch.equal(value.cpu(), torch.tensor(NF4_CODE, dtype=torch.float32)):
                        raise ValueError(f"{reader.label}: {p}weight.quant_map is not the NF4 code book")
                else:
                    value = _read(reader, keys).to(torch.float32)
            elif scheme and leaf == "weight":
                value = _read(reader, src[name])
                value = value if scheme == "nf4" else value.to(FP8_DTYPE)
            elif scheme and leaf == "weight_scale":
                value = _read(reader, src[name]).to(torch.float32)
                value = value.reshape(()) if scheme == "fp8_tensorwise" else value.reshape(-1)
            else:
                value = _read(reader, src[name])
                qtype = reader.block_type(src[name][0])
                if qtype:  # a quantised GGUF tensor outside a Linear (rare): decoded once, at load
                    value = dequantize_gguf(value, qtype, tuple(fmt.logical_shapes.get(name, value.shape)), dtype)
                if value.is_floating_point():
                    value = value.to(dtype)
            set_tensor(model, name, value.to(device))
