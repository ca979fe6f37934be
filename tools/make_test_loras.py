"""Write tiny Ideogram 4 LoRA files in every trainer's key layout, and the reference merge they must equal.

* :func:`write_peft_lora` — the real writer: diffusers' ``Ideogram4Transformer2DModel`` + a PEFT
  ``LoraConfig`` (random, non-zero init), saved by ``Ideogram4Pipeline.save_lora_weights`` (needs the
  ``test`` extra: diffusers + peft).  Returns the file and diffusers' own merged weights (PEFT merge).
* :func:`lora_factors` + :func:`layout_state_dict` — one set of low-rank factors written in each
  documented layout (ai-toolkit ``diffusion_model.`` fused qkv; kohya / musubi-tuner ``lora_unet_``
  + ``alpha``; OneTrainer ``transformer.`` split q/k/v ``lora_down/up`` + ``alpha``; ComfyUI
  ``diffusion_model.`` ``lora_down/up``; PEFT ``base_model.model.``; SimpleTuner ``lycoris_``).
  Split layouts share the down matrix and split the up matrix in thirds (diffusers' own conversion),
  so every layout encodes the same weight delta.
* :func:`merge_reference` — official float32 weights + those factors, merged in pure torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional

import torch

from model.dit import DiTConfig

LAYER_MODULES = ("attention.qkv", "attention.o", "feed_forward.w1", "feed_forward.w2", "feed_forward.w3",
                 "adaln_modulation")
LAYOUTS = ("ai-toolkit", "kohya", "onetrainer", "comfyui", "peft-base-model", "simpletuner-lycoris")


def default_modules(cfg: DiTConfig) -> list[str]:
    return [f"layers.{n}.{m}" for n in range(cfg.num_layers) for m in LAYER_MODULES]


def _shape(cfg: DiTConfig, module: str) -> tuple[int, int]:
    from model.dit import expected_shapes

    return tuple(expected_shapes(cfg)[module + ".weight"])


def lora_factors(cfg: DiTConfig, seed: int, rank: int = 4, alpha: float = 2.0,
                 modules: Optional[Iterable[str]] = None, scale: float = 0.3) -> dict[str, tuple]:
    """official module -> (down (r, in), up (out, r), alpha), float32, seeded."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for module in modules or default_modules(cfg):
        o, i = _shape(cfg, module)
        down = torch.randn(rank, i, generator=g) * scale / i ** 0.5
        up = torch.randn(o, rank, generator=g) * scale
        out[module] = (down, up, float(alpha))
    return out


def _split(module: str, down, up):
    """Official module factors → [(diffusers name, down, up)] (q/k/v share down; up in thirds)."""
    if module.endswith(".attention.qkv"):
        base = module[: -len("qkv")]
        return [(f"{base}to_{c}", down, part.contiguous()) for c, part in zip("qkv", up.chunk(3, dim=0))]
    if module.endswith(".attention.o"):
        return [(module[: -len("o")] + "to_out.0", down, up)]
    return [(module, down, up)]


def layout_state_dict(factors: dict[str, tuple], layout: str) -> dict[str, torch.Tensor]:
    """The factors as a LoRA file of ``layout`` (see :data:`LAYOUTS`)."""
    out: dict[str, torch.Tensor] = {}
    for module, (down, up, alpha) in factors.items():
        if layout == "ai-toolkit":
            entries, names, prefix, sep = [(module, down, up)], (".lora_A.weight", ".lora_B.weight"), "diffusion_model.", "."
        elif layout == "kohya":
            entries, names, prefix, sep = [(module, down, up)], (".lora_down.weight", ".lora_up.weight"), "lora_unet_", "_"
        elif layout == "onetrainer":
            entries, names, prefix, sep = _split(module, down, up), (".lora_down.weight", ".lora_up.weight"), "transformer.", "."
        elif layout == "comfyui":
            entries, names, prefix, sep = [(module, down, up)], (".lora_down.weight", ".lora_up.weight"), "diffusion_model.", "."
        elif layout == "peft-base-model":
            entries, names, prefix, sep = _split(module, down, up), (".lora_A.weight", ".lora_B.weight"), "base_model.model.", "."
        elif layout == "simpletuner-lycoris":
            entries, names, prefix, sep = _split(module, down, up), (".lora_down.weight", ".lora_up.weight"), "lycoris_", "_"
        else:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        for name, d, u in entries:
            stem = prefix + (name.replace(".", "_") if sep == "_" else name)
            out[stem + names[0]] = d.clone()
            out[stem + names[1]] = u.clone()
            if layout != "peft-base-model":  # PEFT keeps its scaling in the config, not the file
                out[stem + ".alpha"] = torch.tensor(alpha)
    return out


def merge_reference(sd: dict[str, torch.Tensor], factors: dict[str, tuple], strength: float = 1.0,
                    *, with_alpha: bool = True) -> dict[str, torch.Tensor]:
    """Official weights with ``strength · alpha / rank · up @ down`` added (float32)."""
    out = {k: v.to(torch.float32).clone() for k, v in sd.items()}
    for module, (down, up, alpha) in factors.items():
        scale = alpha / down.shape[0] if with_alpha else 1.0
        out[module + ".weight"] += strength * scale * (up.to(torch.float64) @ down.to(torch.float64)).to(torch.float32)
    return out


def write_peft_lora(folder: Path, cfg: DiTConfig, official_sd: dict[str, torch.Tensor], *, rank: int = 4,
                    lora_alpha: float = 8.0, seed: int = 0, use_dora: bool = False,
                    target_modules=("to_q", "to_k", "to_v", "to_out.0", "w1", "w2", "w3", "adaln_modulation"),
                    ) -> tuple[Path, dict[str, torch.Tensor]]:
    """A LoRA saved by ``Ideogram4Pipeline.save_lora_weights`` and the diffusers weights PEFT merges it into.

    The base is ``official_sd`` (official naming, float32); the merged weights come back in official naming.
    """
    from diffusers import Ideogram4Transformer2DModel
    from diffusers.pipelines.ideogram4.pipeline_ideogram4 import Ideogram4Pipeline
    from peft import LoraConfig, get_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer

    torch.manual_seed(seed)
    model = Ideogram4Transformer2DModel(num_layers=cfg.num_layers, attention_head_dim=cfg.head_dim,
                                        num_attention_heads=cfg.num_heads, intermediate_size=cfg.intermediate_size,
                                        adaln_dim=cfg.adaln_dim, llm_features_dim=cfg.llm_features_dim).to(torch.float32)
    diffusers_sd = {}
    for key, value in official_sd.items():
        for name, part in _split_weight(key, value):
            diffusers_sd[name] = part
    missing, unexpected = model.load_state_dict(diffusers_sd, strict=False)
    if unexpected or [k for k in missing if "rotary" not in k]:
        raise RuntimeError(f"diffusers model layout differs: missing {missing[:4]}, unexpected {unexpected[:4]}")
    config = LoraConfig(r=rank, lora_alpha=lora_alpha, target_modules=list(target_modules), init_lora_weights=False,
                        use_dora=use_dora)
    model.add_adapter(config)
    with torch.no_grad():  # PEFT's random init keeps B small; make the effect clearly measurable
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.3)
            elif "lora_magnitude_vector" in name:
                p.mul_(1.0 + 0.1 * torch.randn_like(p))
    folder.mkdir(parents=True, exist_ok=True)
    Ideogram4Pipeline.save_lora_weights(str(folder), transformer_lora_layers=get_peft_model_state_dict(model),
                                        transformer_lora_adapter_metadata=config.to_dict())
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            module.merge()
    merged = {}
    for key, value in model.state_dict().items():
        if "lora_" in key:
            continue
        merged[key.replace(".base_layer.", ".")] = value.detach().clone()
    official = {}
    for key in official_sd:
        if key.endswith("attention.qkv.weight"):
            base = key[: -len("qkv.weight")]
            official[key] = torch.cat([merged[base + f"to_{c}.weight"] for c in "qkv"], dim=0)
        elif key.endswith("attention.o.weight"):
            official[key] = merged[key[: -len("o.weight")] + "to_out.0.weight"]
        else:
            official[key] = merged[key]
    return folder / "pytorch_lora_weights.safetensors", official


def _split_weight(key: str, value: torch.Tensor):
    if key.endswith("attention.qkv.weight"):
        base = key[: -len("qkv.weight")]
        return [(base + f"to_{c}.weight", part.contiguous()) for c, part in zip("qkv", value.chunk(3, dim=0))]
    if key.endswith("attention.o.weight"):
        return [(key[: -len("o.weight")] + "to_out.0.weight", value)]
    return [(key, value)]
