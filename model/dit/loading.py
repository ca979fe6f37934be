"""``load_transformer``: any supported DiT checkpoint → an ``Ideogram4DiT`` ready for inference.

The model is built on the meta device and every tensor is assigned straight from the
safetensors file (one tensor in flight at a time): no random init of billions of parameters and
no second full copy in host memory.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ..checkpoints import (CheckpointFormat, CheckpointReader, TorchOps, assign_weights, detect_format, key_problems, module_of,
                           open_checkpoint, swap_quantized_linears)
from ..cpu_math import warm_vector_math
from .config import DiTConfig, expected_shapes
from .diffusers_config import check_diffusers_config
from .transformer import Ideogram4DiT

log = logging.getLogger(__name__)

COMPONENTS = ("transformer", "unconditional_transformer")
TEXT_PROJECTION_MODULES = ("llm_cond_norm", "llm_cond_proj")


def _is_text_projection(key: str) -> bool:
    return key.split(".", 1)[0] in TEXT_PROJECTION_MODULES


def _check_keys(fmt: CheckpointFormat, cfg: DiTConfig, label: str) -> None:
    want = expected_shapes(cfg)
    quant_tails = ("weight_scale", "weight_scale_2", "input_scale", "comfy_quant", "weight.absmax", "weight.quant_map",
                   "weight.quant_state.bitsandbytes__nf4")
    quantised = {mod for mod, spec in fmt.linears.items() if spec.scheme}

    def used_sibling(key: str) -> bool:
        """A quantisation sibling is used only beside a weight stored quantised: next to a float weight (or none) it
        would be silently ignored, so it is reported like any other tensor the model has no place for."""
        mod, tail = module_of(key)
        return tail in quant_tails and mod in quantised

    extra = [k for k in fmt.sources if k not in want and not used_sibling(k)]
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


def inspect_transformer(source: str | os.PathLike, component: str = "transformer"
                        ) -> tuple[CheckpointReader, CheckpointFormat, DiTConfig]:
    """Open a DiT checkpoint and check it from its headers alone (no tensor is read): the reader, its format and
    the model size, or the ValueError saying what is wrong (what the file looks like, truncation, missing
    shards, missing keys, wrong shapes)."""
    if component not in COMPONENTS:
        raise ValueError(f"component must be one of {COMPONENTS}, got {component!r}")
    reader = open_checkpoint(source, component)
    fmt = detect_format(reader)
    cfg = infer_config(fmt, reader.label)
    _check_keys(fmt, cfg, reader.label)
    return reader, fmt, cfg


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
        operations: layer namespace (``model.checkpoints.TorchOps`` or a ComfyUI-backed one).
        image_only: skip the text projection (``llm_cond_norm``/``llm_cond_proj``, never read from the
            file): for the unconditional model, which only runs the image-only pass (saves ≈0.49 GB bf16).

    Supported formats: official bf16/fp32 (fused qkv), diffusers split q/k/v, official fp8
    (float8_e4m3fn + per-row ``weight_scale``), ComfyUI ``fp8_scaled`` (``comfy_quant``, per-tensor
    scale), official bitsandbytes nf4 (blocksize 64, no nested statistics), ComfyUI ``comfy_quant`` nvfp4 /
    mxfp8 / int8_tensorwise (convrot) and mixed files, GGUF (ComfyUI-GGUF layout, ``.gguf``).
    """
    warm_vector_math()
    reader, fmt, cfg = inspect_transformer(source, component)
    config_json = reader.files[0].parent / "config.json"
    unknown = check_diffusers_config(config_json, cfg, fmt.quantization) if Path(source).is_dir() and config_json.is_file() else []
    with torch.device("meta"):
        model = Ideogram4DiT(cfg, dtype=dtype, operations=operations, image_only=image_only)
    linears = {k: v for k, v in fmt.linears.items() if not (image_only and _is_text_projection(k))}
    swap_quantized_linears(model, linears, dtype, operations, reader.label)
    assign_weights(model, reader, fmt, torch.device(device), dtype)
    model.eval().requires_grad_(False)
    model.checkpoint_format = fmt.description + (", image-only (no text projection)" if image_only else "") + \
        (f"; config.json fields not used: {', '.join(unknown)}" if unknown else "")
    log.info("Loaded Ideogram 4 DiT from %s (%s, %d layers, width %d)", reader.label, fmt.description,
             cfg.num_layers, cfg.emb_dim)
    return model
