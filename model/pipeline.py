"""Pure-torch Ideogram 4 text-to-image pipeline (spec §1.2): caption → text features → dual-model
Euler sampling → de-normalise, unpatchify, VAE decode → uint8 images.

This is the reference's ``Ideogram4Pipeline.__call__`` + ``_decode`` with the pack's own parts:
``model.text_encoder`` (Qwen3-VL taps), ``model.dit`` (both transformers), ``sampling.sample``
(the reference loop, step for step), ``model.vae`` (FLUX.2 decoder, bf16) and REF rounding.  Used
by scripts, ``python -m tools.demo`` and as the oracle for the ComfyUI integration tests.  No
ComfyUI imports.

Captions are checked with ``model.caption.check_caption`` (when that module is present): a caption
with errors raises ``ValueError`` (``CaptionError``) listing them — as the reference raises on
verifier issues by default; with ``canonicalize=True`` (default) the model sees the canonical
minified JSON.  ``validate=False`` passes the text through untouched (the reference's
``--warn-on-caption-issues``).  After decoding, images are checked for the grey safety placeholder
(``model.safety``); a hit is logged as a warning and kept in ``pipeline.last_safety`` — nothing is
altered or retried.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

# ``model`` and ``sampling`` are sibling packages: top-level on sys.path for scripts and tests, or
# subpackages of the pack when ComfyUI imports it as ``<pack folder>.model``.
if __package__ and "." in __package__:
    from ..sampling import resolve_settings, sample, token_grid
    from ..sampling.presets import SamplerSettings
else:
    from sampling import resolve_settings, sample, token_grid
    from sampling.presets import SamplerSettings

from .caption import CaptionError, check_caption
from .safety import check_batch
from .vae import Flux2VAEDecoder, load_vae, to_pil

log = logging.getLogger(__name__)

DEFAULT_PRESET = "V4_QUALITY_48"  # REF run_inference.py default (--sampler-preset)
COMPONENT_KEYS = ("transformer", "unconditional", "text_encoder", "vae")


def prepare_caption(caption: str, *, canonicalize: bool = True, validate: bool = True) -> str:
    """Validate a caption with ``model.caption.check_caption`` and return the text the encoder sees.

    Raises ``CaptionError`` (a ``ValueError``) with every error of the report.  With ``validate=False``
    the caption is returned unchanged.
    """
    if not isinstance(caption, str):
        raise ValueError(f"caption must be a string, got {type(caption).__name__}")
    if not validate:
        return caption
    report = check_caption(caption)
    if report.errors:
        raise CaptionError(report)
    for fix in report.fixes:
        log.info("caption: %s", fix)
    return report.canonical if canonicalize and report.canonical is not None else caption


@contextmanager
def _timed(timings: dict, name: str):
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - start


@dataclass
class Ideogram4Pipeline:
    """The four loaded parts.  ``text_encoder`` needs ``.encode(captions) -> EncodedText(features, lengths)``."""
    cond: torch.nn.Module
    uncond: torch.nn.Module
    text_encoder: Any
    vae: Flux2VAEDecoder
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    last_timings: dict = field(default_factory=dict)
    last_safety: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.device = torch.device(self.device)
        feat = getattr(self.text_encoder, "feature_dim", None)
        want = getattr(getattr(self.cond, "config", None), "llm_features_dim", None)
        if feat is not None and want is not None and feat != want:
            raise ValueError(f"text encoder gives {feat}-wide features but the transformer expects {want} "
                             "(wrong text encoder for this model, or wrong taps)")

    def generate(self, caption: str | Sequence[str], *, width: int = 1024, height: int = 1024,
                 preset: Optional[str] = None, settings: Optional[SamplerSettings] = None, seed: int = 0,
                 canonicalize: bool = True, validate: bool = True, tile: Optional[int] = None,
                 callback: Optional[Callable[[int, int, torch.Tensor], None]] = None,
                 timings: Optional[dict] = None) -> list:
        """Caption(s) → PIL images (one per caption; one seed for the batch, sample b = slice b of one draw).

        ``preset`` ∈ ``sampling.PRESETS`` (default ``V4_QUALITY_48`` as REF's CLI) or a ready
        ``settings``; ``tile``: exact tiled VAE decode with this many latent pixels per tile.
        """
        captions = [caption] if isinstance(caption, str) else list(caption)
        if not captions:
            raise ValueError("no caption given")
        if settings is None:
            settings = resolve_settings(preset or DEFAULT_PRESET)
        elif preset is not None:
            raise ValueError("pass either preset or settings, not both")
        gh, gw = token_grid(width, height)  # validates the size
        timings = {} if timings is None else timings
        with _timed(timings, "caption"):
            texts = [prepare_caption(c, canonicalize=canonicalize, validate=validate) for c in captions]
        with _timed(timings, "encode"):
            enc = self.text_encoder.encode(texts)
        with _timed(timings, "sample"):
            z = sample(self.cond, self.uncond, enc.features.to(self.device), height=height, width=width,
                       settings=settings, seed=seed, text_lengths=enc.lengths, callback=callback, device=self.device)
        with _timed(timings, "decode"):
            pixels = self.vae.decode_to_uint8(z, gh, gw, tile=tile)
            images = to_pil(pixels)
        with _timed(timings, "safety"):
            self.last_safety = _safety_reports(pixels)
        self.last_timings = dict(timings)
        return images


def _safety_reports(pixels: torch.Tensor) -> list:
    reports = check_batch(pixels)
    for i, r in enumerate(reports):
        if r.blocked:
            log.warning("image %d: %s", i, r.message)
    return reports


def generate(caption: str | Sequence[str], *, cond, uncond, text_encoder, vae: Flux2VAEDecoder, width: int = 1024,
             height: int = 1024, preset: Optional[str] = None, settings: Optional[SamplerSettings] = None,
             seed: int = 0, device: Optional[torch.device | str] = None, **kwargs) -> list:
    """Functional form of :meth:`Ideogram4Pipeline.generate` (device: the transformers' device by default)."""
    if device is None:
        device = next(cond.parameters()).device
    pipe = Ideogram4Pipeline(cond, uncond, text_encoder, vae, device=torch.device(device))
    return pipe.generate(caption, width=width, height=height, preset=preset, settings=settings, seed=seed, **kwargs)


def _resolve_sources(models: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    if isinstance(models, Mapping):
        unknown = set(models) - set(COMPONENT_KEYS)
        if unknown:
            raise ValueError(f"unknown component(s) {sorted(unknown)}; expected {COMPONENT_KEYS}")
        sources = {k: models.get(k) for k in COMPONENT_KEYS}
    else:
        root = Path(models).expanduser() if models is not None else None
        if root is not None and not root.is_dir():
            raise ValueError(f"{root}: not a folder (expected the Ideogram 4 Hugging Face layout: transformer/, "
                             "unconditional_transformer/, text_encoder/, tokenizer/, vae/)")
        sources = {k: root for k in COMPONENT_KEYS}
    for k, v in overrides.items():
        if v is not None:
            sources[k] = v
    missing = [k for k, v in sources.items() if v is None]
    if missing:
        raise ValueError(f"no source for {', '.join(missing)}: pass a models folder or explicit paths")
    return sources


def load_pipeline(models: str | os.PathLike | Mapping[str, Any] | None = None, *,
                  transformer: str | os.PathLike | None = None, unconditional: str | os.PathLike | None = None,
                  text_encoder: str | os.PathLike | None = None, vae: str | os.PathLike | None = None,
                  device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                  text_encoder_dtype: Optional[torch.dtype] = None, vae_dtype: Optional[torch.dtype] = None,
                  tokenizer: Any = None, taps: Optional[Sequence[int]] = None) -> Ideogram4Pipeline:
    """Load all four parts.

    ``models``: the official Hugging Face layout folder (``transformer/``, ``unconditional_transformer/``,
    ``text_encoder/`` + ``tokenizer/``, ``vae/``) or a mapping with keys ``transformer``,
    ``unconditional``, ``text_encoder``, ``vae``; the keyword paths override single parts (e.g. a
    ComfyUI ``flux2-vae.safetensors`` or an fp8 transformer file).  ``dtype`` (bf16, as REF) is the
    compute dtype of the transformers and, unless overridden, of the text encoder and the VAE.
    ``taps``/``tokenizer`` are passed to ``load_text_encoder`` (defaults: the official 13 taps; the
    folder's own tokenizer).
    """
    from .dit import load_transformer
    from .text_encoder import load_text_encoder

    src = _resolve_sources(models, {"transformer": transformer, "unconditional": unconditional,
                                    "text_encoder": text_encoder, "vae": vae})
    device = torch.device(device)
    cond = load_transformer(src["transformer"], device=device, dtype=dtype, component="transformer")
    uncond = load_transformer(src["unconditional"], device=device, dtype=dtype, component="unconditional_transformer",
                              image_only=True)
    te_kwargs: dict[str, Any] = {"device": device, "dtype": text_encoder_dtype or dtype}
    if tokenizer is not None:
        te_kwargs["tokenizer"] = tokenizer
    if taps is not None:
        te_kwargs["taps"] = tuple(taps)
    te = load_text_encoder(src["text_encoder"], **te_kwargs)
    decoder = load_vae(src["vae"], device=device, dtype=vae_dtype or dtype)
    return Ideogram4Pipeline(cond, uncond, te, decoder, device=device)
