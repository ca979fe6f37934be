"""Write tiny random Ideogram 4 DiT checkpoints in every official key layout.

The files go through the same quantisation rules as the real ones (``model.quant``) and are
loaded by tests with ``model.load_transformer`` — the path users hit with real files.  The tiny
configuration keeps head_dim 256 so the real MRoPE slot layout applies, and a text width of
13 × k like the real 13-tap encoder features.

    python -m tools.make_test_checkpoints --out /tmp/ckpts            # every format
    python -m tools.make_test_checkpoints --out /tmp/ckpts --format nf4 --hf-folder
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors.torch import save_file

from model.dit import DiTConfig, expected_shapes
from model.checkpoints import NF4_CODE, json_to_tensor, nf4_quant_state_json, quantize_fp8_rowwise, quantize_fp8_tensorwise, quantize_nf4

FORMATS = ("fp32", "bf16", "diffusers", "fp8", "comfy_fp8_scaled", "nf4")


def tiny_config(num_layers: int = 2, num_heads: int = 2, head_dim: int = 256, intermediate_size: int = 1024,
                adaln_dim: int = 64, text_width: int = 32) -> DiTConfig:
    """A few layers, small width, real head_dim (256) and a 13 × ``text_width`` feature width."""
    return DiTConfig(emb_dim=num_heads * head_dim, num_layers=num_layers, num_heads=num_heads,
                     intermediate_size=intermediate_size, adaln_dim=adaln_dim, llm_features_dim=13 * text_width)


def random_tensor(key: str, shape, g: torch.Generator) -> torch.Tensor:
    """One seeded float32 weight of the official layout, scaled so activations stay O(1)."""
    if key.endswith("norm.weight") or "norm" in key.rsplit(".", 2)[-2] and key.endswith(".weight"):
        value = 1.0 + 0.1 * torch.randn(shape, generator=g)
    elif key == "embed_image_indicator.weight":
        value = 0.5 * torch.randn(shape, generator=g)
    elif key.endswith(".bias"):
        value = 0.05 * torch.randn(shape, generator=g)
    else:  # Linear weights
        value = torch.randn(shape, generator=g) / shape[1] ** 0.5
        if "adaln_modulation" in key:
            value = value * 0.5
    return value.contiguous()


def random_state_dict(cfg: DiTConfig, seed: int) -> dict[str, torch.Tensor]:
    """Seeded float32 weights in the official (fused-qkv) layout, scaled so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    return {key: random_tensor(key, shape, g) for key, shape in expected_shapes(cfg).items()}


def parity_inputs(seed: int, lengths: list[int], n_img: int, feat_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The DiT parity cases' inputs (tests/test_dit_parity.py, tools/record_goldens/dit.py): text features
    (B, L_max, feat_dim) with left-padding rows zeroed, then x (B, n_img, 128), from one seeded CPU generator."""
    g = torch.Generator().manual_seed(seed)
    l_max = max(lengths)
    feats = torch.randn(len(lengths), l_max, feat_dim, generator=g)
    for b, n in enumerate(lengths):
        feats[b, : l_max - n] = 0
    x = torch.randn(len(lengths), n_img, 128, generator=g)
    return feats, x


def _is_linear_weight(key: str, sd: dict[str, torch.Tensor]) -> bool:
    return key.endswith(".weight") and sd[key].ndim == 2 and key != "embed_image_indicator.weight"


def quantize_linear(key: str, weight: torch.Tensor, scheme: str) -> dict[str, torch.Tensor]:
    """One Linear ``<module>.weight`` → the tensors a real file stores for it under ``scheme``
    ("fp8_rowwise": official fp8; "fp8_tensorwise": ComfyUI fp8_scaled with ``comfy_quant``; "nf4":
    bitsandbytes, quantised from bf16 like the official files)."""
    module = key[: -len(".weight")]
    if scheme == "fp8_rowwise":
        q, scale = quantize_fp8_rowwise(weight)
        return {key: q, module + ".weight_scale": scale}
    if scheme == "fp8_tensorwise":
        q, scale = quantize_fp8_tensorwise(weight)
        return {key: q, module + ".weight_scale": scale,
                module + ".comfy_quant": json_to_tensor({"format": "float8_e4m3fn"})}
    if scheme == "nf4":
        packed, absmax = quantize_nf4(weight.to(torch.bfloat16))
        return {key: packed, key + ".absmax": absmax, key + ".quant_map": torch.tensor(NF4_CODE, dtype=torch.float32),
                key + ".quant_state.bitsandbytes__nf4": nf4_quant_state_json(tuple(weight.shape), torch.bfloat16)}
    raise ValueError(f"unknown quantisation scheme {scheme!r}")


def convert(sd: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    """Official float32 state dict → the tensors of a file in format ``fmt``."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if fmt == "fp32":
            out[key] = value.to(torch.float32)
        elif fmt == "bf16":
            out[key] = value.to(torch.bfloat16)
        elif fmt == "diffusers":
            if key.endswith("attention.qkv.weight"):
                q, k, v = value.to(torch.bfloat16).chunk(3, dim=0)
                base = key[: -len("qkv.weight")]
                out.update({base + "to_q.weight": q.contiguous(), base + "to_k.weight": k.contiguous(),
                            base + "to_v.weight": v.contiguous()})
            elif key.endswith("attention.o.weight"):
                out[key[: -len("o.weight")] + "to_out.0.weight"] = value.to(torch.bfloat16)
            else:
                out[key] = value.to(torch.bfloat16)
        elif not _is_linear_weight(key, sd):
            out[key] = value.to(torch.bfloat16)
        else:
            out.update(quantize_linear(key, value, {"fp8": "fp8_rowwise", "comfy_fp8_scaled": "fp8_tensorwise",
                                                    "nf4": "nf4"}[fmt]))
    return out


def write_file(tensors: dict[str, torch.Tensor], path: Path, fmt: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt", "ideogram4_test_format": fmt})
    return path


def write_sharded(tensors: dict[str, torch.Tensor], folder: Path, fmt: str, shards: int = 2,
                  stem: str = "diffusion_pytorch_model", variant: Optional[str] = None) -> Path:
    """Write ``stem-0000i-of-0000n.safetensors`` shards plus ``stem.safetensors.index.json``; with a diffusers
    ``variant`` (``save_pretrained(variant="bf16")``) ``stem.bf16-0000i-of-0000n.safetensors`` plus
    ``stem.safetensors.index.bf16.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(tensors)
    weight_map = {}
    shard_stem = f"{stem}.{variant}" if variant else stem
    for i in range(shards):
        name = f"{shard_stem}-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: tensors[k] for k in keys[i::shards]}
        write_file(part, folder / name, fmt)
        weight_map.update({k: name for k in part})
    index = folder / (f"{stem}.safetensors.index.{variant}.json" if variant else f"{stem}.safetensors.index.json")
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    index.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return index


def write_hf_folder(root: Path, cond: dict[str, torch.Tensor], uncond: dict[str, torch.Tensor], fmt: str,
                    sharded: bool = False) -> Path:
    """Official Hugging Face layout: transformer/ and unconditional_transformer/."""
    for component, sd in (("transformer", cond), ("unconditional_transformer", uncond)):
        tensors = convert(sd, fmt)
        folder = root / component
        if sharded:
            write_sharded(tensors, folder, fmt)
        else:
            write_file(tensors, folder / "diffusion_pytorch_model.safetensors", fmt)
    return root


def write_all(out: Path, cfg: DiTConfig, seed: int, formats: Iterable[str] = FORMATS) -> dict[str, Path]:
    sd = random_state_dict(cfg, seed)
    return {fmt: write_file(convert(sd, fmt), out / f"ideogram4_tiny_{fmt}.safetensors", fmt) for fmt in formats}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--format", choices=FORMATS + ("all",), default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--uncond-seed", type=int, default=1)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--hf-folder", action="store_true", help="write transformer/ + unconditional_transformer/")
    ap.add_argument("--sharded", action="store_true")
    args = ap.parse_args(argv)
    cfg = tiny_config(num_layers=args.layers, num_heads=args.heads)
    formats = FORMATS if args.format == "all" else (args.format,)
    for fmt in formats:
        if args.hf_folder:
            path = write_hf_folder(args.out / fmt, random_state_dict(cfg, args.seed),
                                   random_state_dict(cfg, args.uncond_seed), fmt, sharded=args.sharded)
        else:
            path = write_all(args.out, cfg, args.seed, (fmt,))[fmt]
        print(path)


if __name__ == "__main__":
    main()
