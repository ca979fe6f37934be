"""A diffusers ``transformer/config.json`` (``Ideogram4Transformer2DModel``) checked against the weights.

Shape fields must agree with the configuration read off the tensors; the fixed hyper-parameters
(``rope_theta``, ``mrope_section``, ``norm_eps``) must be Ideogram 4's, since this implementation computes
with those values: a differing value is an error naming the field, never silently ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .config import DiTConfig

log = logging.getLogger(__name__)


def _expected(cfg: DiTConfig) -> dict:
    return {"in_channels": cfg.in_channels, "num_layers": cfg.num_layers, "attention_head_dim": cfg.head_dim,
            "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.intermediate_size,
            "adaln_dim": cfg.adaln_dim, "llm_features_dim": cfg.llm_features_dim, "rope_theta": cfg.rope_theta,
            "mrope_section": list(cfg.mrope_section), "norm_eps": cfg.norm_eps}


def _quantization_note(q, quantization: str):
    """None when a ``quantization_config`` describes the weights' own format (``quantization``: the detected one),
    else what it says (the weights decide how they are read)."""
    if not isinstance(q, dict):
        return f"quantization_config = {q!r}"
    method = q.get("quant_method")
    if method == "bitsandbytes" and q.get("load_in_4bit") and q.get("bnb_4bit_quant_type", "fp4") == "nf4":
        says = "nf4"
    else:
        kind = q.get("bnb_4bit_quant_type") or ("int8" if q.get("load_in_8bit") else None) or q.get("quant_type")
        says = f"{method}{f' {kind}' if kind else ''}"
    if says == quantization:
        return None
    weights = "not quantised" if quantization == "none" else quantization
    return f"quantization_config ({says}; the weights are {weights}, read as they are)"


def check_diffusers_config(path: Path, cfg: DiTConfig, quantization: str = "none") -> list[str]:
    """Raise ValueError naming the first field of ``path`` that differs; returns the fields it did not use.

    A ``quantization_config`` (diffusers writes one for a bitsandbytes model) that describes the weights' own
    format (``quantization``, the detected one) is used; one that does not is returned, saying what it says."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a JSON object")
    expected = _expected(cfg)
    for name, want in expected.items():
        if name not in config:
            continue
        have = config[name]
        same = list(have) == want if isinstance(want, list) and isinstance(have, (list, tuple)) else have == want
        if not same:
            raise ValueError(f"{path}: {name} = {have!r}, but Ideogram 4 (and these weights) have {want!r}; "
                             f"this implementation computes with {name} = {want!r} only")
    unknown = sorted(k for k in config if k not in expected and not k.startswith("_") and k != "quantization_config")
    if "quantization_config" in config:
        note = _quantization_note(config["quantization_config"], quantization)
        unknown += [note] if note else []
    if unknown:
        log.warning("%s: fields not used by Ideogram 4: %s", path, ", ".join(unknown))
    return unknown
