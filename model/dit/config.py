"""DiT hyper-parameters, with inference from checkpoint tensor shapes.

The same code path builds the full 9.3B model and the tiny test models: the
configuration is read off the checkpoint's shapes, never special-cased.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, asdict
from typing import Mapping, Sequence


@dataclass(frozen=True)
class DiTConfig:
    emb_dim: int = 4608
    num_layers: int = 34
    num_heads: int = 18
    intermediate_size: int = 12288
    adaln_dim: int = 512
    in_channels: int = 128
    llm_features_dim: int = 4096 * 13
    rope_theta: float = 5_000_000.0
    mrope_section: tuple[int, int, int] = (24, 20, 20)
    norm_eps: float = 1e-5
    llm_norm_eps: float = 1e-6
    final_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        if self.emb_dim % self.num_heads:
            raise ValueError(f"emb_dim {self.emb_dim} is not divisible by num_heads {self.num_heads}")
        half = self.head_dim // 2
        needed = 3 * max(self.mrope_section[1], self.mrope_section[2])
        if needed > half:
            raise ValueError(
                f"head_dim {self.head_dim} too small for the interleaved MRoPE layout: "
                f"needs head_dim/2 >= {needed} (mrope_section {self.mrope_section})"
            )

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_shapes(cls, shapes: Mapping[str, Sequence[int]], *, head_dim: int | None = None) -> "DiTConfig":
        """Infer the configuration from official (fused-qkv) key names and *logical* weight shapes."""
        def shape(key: str) -> Sequence[int]:
            if key not in shapes:
                raise KeyError(key)
            return shapes[key]

        emb_dim, in_channels = shape("input_proj.weight")
        adaln_dim = shape("adaln_proj.weight")[0]
        (llm_features_dim,) = shape("llm_cond_norm.weight")
        intermediate = shape("layers.0.feed_forward.w1.weight")[0]
        hd = head_dim or shape("layers.0.attention.norm_q.weight")[0]
        layer_ids = {int(m.group(1)) for k in shapes if (m := re.match(r"layers\.(\d+)\.", k))}
        return cls(
            emb_dim=int(emb_dim),
            num_layers=max(layer_ids) + 1 if layer_ids else 0,
            num_heads=int(emb_dim) // int(hd),
            intermediate_size=int(intermediate),
            adaln_dim=int(adaln_dim),
            in_channels=int(in_channels),
            llm_features_dim=int(llm_features_dim),
        )


def expected_shapes(cfg: DiTConfig) -> dict[str, tuple[int, ...]]:
    """Every key of the official (fused-qkv, unquantised) layout with its shape (spec §2.9.1)."""
    e, a, f, i, c, hd = cfg.emb_dim, cfg.adaln_dim, cfg.llm_features_dim, cfg.intermediate_size, cfg.in_channels, cfg.head_dim
    out: dict[str, tuple[int, ...]] = {
        "input_proj.weight": (e, c),
        "input_proj.bias": (e,),
        "llm_cond_norm.weight": (f,),
        "llm_cond_proj.weight": (e, f),
        "llm_cond_proj.bias": (e,),
        "t_embedding.mlp_in.weight": (e, e),
        "t_embedding.mlp_in.bias": (e,),
        "t_embedding.mlp_out.weight": (e, e),
        "t_embedding.mlp_out.bias": (e,),
        "adaln_proj.weight": (a, e),
        "adaln_proj.bias": (a,),
        "embed_image_indicator.weight": (2, e),
        "final_layer.linear.weight": (c, e),
        "final_layer.linear.bias": (c,),
        "final_layer.adaln_modulation.weight": (e, a),
        "final_layer.adaln_modulation.bias": (e,),
    }
    for n in range(cfg.num_layers):
        p = f"layers.{n}."
        out.update({
            p + "attention.qkv.weight": (3 * e, e),
            p + "attention.o.weight": (e, e),
            p + "attention.norm_q.weight": (hd,),
            p + "attention.norm_k.weight": (hd,),
            p + "feed_forward.w1.weight": (i, e),
            p + "feed_forward.w3.weight": (i, e),
            p + "feed_forward.w2.weight": (e, i),
            p + "attention_norm1.weight": (e,),
            p + "attention_norm2.weight": (e,),
            p + "ffn_norm1.weight": (e,),
            p + "ffn_norm2.weight": (e,),
            p + "adaln_modulation.weight": (4 * e, a),
            p + "adaln_modulation.bias": (4 * e,),
        })
    return out
