"""``load_transformer``: any supported DiT checkpoint → an ``Ideogram4DiT`` ready for inference.

The model is built on the meta device and every tensor is assigned straight from the
safetensors file (one tensor in flight at a time): no random init of billions of parameters and
no second full copy in host memory.
"""

from __future__ import annotations

import logging
import os
from typing import Mapping, Sequence

import torch
import torch.nn as nn

from .checkpoint import CheckpointReader, open_checkpoint
from .config import DiTConfig, expected_shapes
from .dit import Ideogram4DiT
from .formats import CheckpointFormat, LinearSpec, detect_format
from .ops import TorchOps
from .quant import FP8_DTYPE, NF4_CODE

log = logging.getLogger(__name__)

COMPONENTS = ("transformer", "unconditional_transformer")
TEXT_PROJECTION_MODULES = ("llm_cond_norm", "llm_cond_proj")


def _is_text_projection(key: str) -> bool:
    return key.split(".", 1)[0] in TEXT_PROJECTION_MODULES


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


def _check_keys(fmt: CheckpointFormat, cfg: DiTConfig, label: str) -> None:
    want = expected_shapes(cfg)
    quant_tails = ("weight_scale", "input_scale", "comfy_quant", "weight.absmax", "weight.quant_map",
                   "weight.quant_state.bitsandbytes__nf4")
    extra = [k for k in fmt.sources if k not in want and not any(k.endswith("." + t) for t in quant_tails)]
    problems = key_problems(want, fmt.logical_shapes, extra)
    if problems:
        raise ValueError(f"{label}: not a loadable Ideogram 4 DiT checkpoint ({fmt.description}): " + " | ".join(problems))


def infer_config(fmt: CheckpointFormat, label: str) -> DiTConfig:
    try:
        return DiTConfig.from_shapes(fmt.logical_shapes)
    except KeyError as exc:
        raise ValueError(f"{label}: missing key {exc.args[0]} needed to determine the model size") from None
    except ValueError as exc:
        raise ValueError(f"{label}: {exc}") from None


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


def swap_quantized_linears(model: nn.Module, linears: dict[str, LinearSpec], dtype: torch.dtype, operations) -> None:
    for mod_name, spec in linears.items():
        if spec.scheme is None:
            continue
        old = model.get_submodule(mod_name)
        replace_module(model, mod_name, operations.QuantizedLinear(
            old.in_features, old.out_features, bias=old.bias is not None, scheme=spec.scheme, device="meta",
            dtype=dtype))


def assign_weights(model: nn.Module, reader: CheckpointReader, fmt: CheckpointFormat, device, dtype: torch.dtype) -> None:
    src = fmt.sources
    for mod_name, module in model.named_modules():
        scheme = getattr(module, "scheme", None)
        p = f"{mod_name}." if mod_name else ""
        local = list(module.named_parameters(recurse=False)) + list(module.named_buffers(recurse=False))
        for leaf, _ in local:
            name = p + leaf
            if scheme == "nf4" and leaf in ("absmax", "quant_map"):
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
                if value.is_floating_point():
                    value = value.to(dtype)
            set_tensor(model, name, value.to(device))


def load_transformer(source: str | os.PathLike, *, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.bfloat16, component: str = "transformer",
                     operations=TorchOps, image_only: bool = False) -> Ideogram4DiT:
    """Load an Ideogram 4 DiT from any supported checkpoint.

    Args:
        source: a ``.safetensors`` file, a ``.safetensors.index.json`` shard index, or a folder in the
            official Hugging Face layout (then ``component`` picks ``transformer/`` or
            ``unconditional_transformer/``).
        device: where the weights live.
        dtype: compute dtype (unquantised weights are stored in it, quantised ones dequantise to it).
        component: subfolder of an HF-layout folder.
        operations: layer namespace (``model.ops.TorchOps`` or a ComfyUI-backed one).
        image_only: skip the text projection (``llm_cond_norm``/``llm_cond_proj``, never read from the
            file): for the unconditional model, which only runs the image-only pass (saves ≈0.49 GB bf16).

    Supported formats: official bf16/fp32 (fused qkv), diffusers split q/k/v, official fp8
    (float8_e4m3fn + per-row ``weight_scale``), ComfyUI ``fp8_scaled`` (``comfy_quant``, per-tensor
    scale), official bitsandbytes nf4 (blocksize 64, no nested statistics).
    """
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
    reader = open_checkpoint(source, component)
    fmt = detect_format(reader)
    cfg = infer_config(fmt, reader.label)
    _check_keys(fmt, cfg, reader.label)
    with torch.device("meta"):
        model = Ideogram4DiT(cfg, dtype=dtype, operations=operations, image_only=image_only)
    linears = {k: v for k, v in fmt.linears.items() if not (image_only and _is_text_projection(k))}
    swap_quantized_linears(model, linears, dtype, operations)
    assign_weights(model, reader, fmt, torch.device(device), dtype)
    model.eval().requires_grad_(False)
    model.checkpoint_format = fmt.description + (", image-only (no text projection)" if image_only else "")
    log.info("Loaded Ideogram 4 DiT from %s (%s, %d layers, width %d)", reader.label, fmt.description,
             cfg.num_layers, cfg.emb_dim)
    return model
