"""FLUX.2 VAE checkpoints → :class:`Flux2VAEDecoder`: one key-detection function for BFL/ComfyUI and diffusers naming."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn

from ..checkpoints import CheckpointReader, describe_other_family, key_problems, open_checkpoint, set_tensor
from ..cpu_math import warm_vector_math
from .decoder import LATENT_Z, Flux2VAEDecoder, VAEDecoderConfig, VAEOps
from .encoder import Flux2VAEEncoder, VAEEncoderConfig

log = logging.getLogger(__name__)


VAE_PREFIXES = ("first_stage_model.", "vae.", "model.", "autoencoder.")
_ATTN_DIFFUSERS = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out",
                   "query": "q", "key": "k", "value": "v", "proj_attn": "proj_out"}

_NOT_A_VAE = (
    ("layers.0.attention.qkv", "an Ideogram 4 DiT (transformer) checkpoint"),
    ("layers.0.attention.to_q", "an Ideogram 4 DiT (transformer) checkpoint in diffusers naming"),
    ("double_blocks.0.img_attn", "a FLUX-family diffusion model"),
    ("input_blocks.0.0.weight", "a Stable Diffusion / SDXL UNet"),
    ("self_attn.q_proj.weight", "a language / text-encoder model (e.g. Qwen3-VL)"),
    ("visual.blocks.0", "a vision-language model"),
    ("taesd_decoder", "a TAESD preview decoder"),
)


@dataclass
class VAEFormat:
    naming: str  # "bfl" | "diffusers"
    prefix: str
    sources: dict[str, str] = field(repr=False)  # our decoder name -> file key
    linear_to_conv: set[str] = field(repr=False, default_factory=set)  # our names stored as 2-D linears
    bn: dict[str, str] = field(repr=False, default_factory=dict)  # running_mean/running_var -> file key
    skipped: list[str] = field(repr=False, default_factory=list)  # encoder / quant_conv / bookkeeping keys
    #: our encoder name (``model.vae.encoder`` = BFL ``encoder.*`` without the prefix) -> file key; empty when
    #: the file has no encoder.  These keys are also in ``skipped`` (the decoder never reads them).
    encoder: dict[str, str] = field(repr=False, default_factory=dict)
    encoder_linear_to_conv: set[str] = field(repr=False, default_factory=set)
    encoder_unknown: list[str] = field(repr=False, default_factory=list)
    unknown: list[str] = field(repr=False, default_factory=list)

    @property
    def description(self) -> str:
        name = {"bfl": "BFL/ComfyUI key names (flux2-vae)", "diffusers": "diffusers key names (AutoencoderKLFlux2)"}[self.naming]
        return name + (", with bn statistics" if self.bn else ", no bn statistics")


def _describe_not_vae(keys: list[str]) -> str:
    known = describe_other_family(keys, _NOT_A_VAE, unknown=None)
    if known is not None:
        return known
    if any(k.startswith(("encoder.", "quant_conv.")) for k in keys):
        return "a VAE encoder without a decoder"
    return describe_other_family(keys, (), unknown="an unknown file")


def _map_diffusers_shared(rest: str) -> Optional[tuple[str, bool]]:
    """The parts both sides name alike (conv_in/out, conv_norm_out, mid block) → (our name, stored as linear)."""
    if rest.startswith(("conv_in.", "conv_out.")):
        return rest, False
    if rest.startswith("conv_norm_out."):
        return "norm_out." + rest[len("conv_norm_out."):], False
    m = re.match(r"^mid_block\.resnets\.(\d+)\.(.+)$", rest)
    if m:
        return f"mid.block_{int(m.group(1)) + 1}.{m.group(2).replace('conv_shortcut', 'nin_shortcut')}", False
    m = re.match(r"^mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0|query|key|value|proj_attn)\.(weight|bias)$", rest)
    if m:
        sub = _ATTN_DIFFUSERS[m.group(1)]
        return f"mid.attn_1.{sub}.{m.group(2)}", sub != "norm" and m.group(2) == "weight"
    return None


def _map_diffusers_decoder(rest: str, num_up: int) -> Optional[tuple[str, bool]]:
    """``decoder.<rest>`` in diffusers naming → (our name, stored as linear)."""
    shared = _map_diffusers_shared(rest)
    if shared is not None:
        return shared
    m = re.match(r"^up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", rest)
    if m:
        level = num_up - 1 - int(m.group(1))
        return f"up.{level}.block.{m.group(2)}.{m.group(3).replace('conv_shortcut', 'nin_shortcut')}", False
    m = re.match(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)$", rest)
    if m:
        return f"up.{num_up - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}", False
    return None


def _map_diffusers_encoder(rest: str) -> Optional[tuple[str, bool]]:
    """``encoder.<rest>`` in diffusers naming → (our encoder name, stored as linear)."""
    shared = _map_diffusers_shared(rest)
    if shared is not None:
        return shared
    m = re.match(r"^down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", rest)
    if m:
        return f"down.{m.group(1)}.block.{m.group(2)}.{m.group(3).replace('conv_shortcut', 'nin_shortcut')}", False
    m = re.match(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv\.(weight|bias)$", rest)
    if m:
        return f"down.{m.group(1)}.downsample.conv.{m.group(2)}", False
    return None


def _add_encoder_key(fmt: VAEFormat, k: str, src: str) -> None:
    """Record where an ``encoder.*`` / ``quant_conv.*`` tensor of the file goes in :class:`Flux2VAEEncoder`."""
    if k.startswith(("quant_conv.", "encoder.quant_conv.")):
        fmt.encoder["quant_conv." + k.rsplit(".", 1)[1]] = src
        return
    _place(k[len("encoder."):], src, None if fmt.naming == "bfl" else _map_diffusers_encoder,
           fmt.encoder, fmt.encoder_linear_to_conv, fmt.encoder_unknown)


def _place(rest: str, src: str, diffusers_map, sources: dict, linear_to_conv: set, unknown: list) -> None:
    """Record file key ``src`` (``rest`` without ``encoder.``/``decoder.``) under our module name: as is for BFL
    naming (``diffusers_map`` None), else through ``diffusers_map``; keys it cannot map go to ``unknown``."""
    mapped = (rest, False) if diffusers_map is None else diffusers_map(rest)
    if mapped is None:
        unknown.append(src)
        return
    name, is_linear = mapped
    sources[name] = src
    if is_linear:
        linear_to_conv.add(name)


def detect_vae_format(keys: Sequence[str], label: str = "VAE checkpoint") -> VAEFormat:
    """THE key-detection function: file keys → where each decoder tensor comes from.

    Raises ``ValueError`` naming ``label`` and what the file looks like when it is no FLUX-style KL VAE.
    """
    keys = list(keys)
    prefix = ""
    for p in VAE_PREFIXES:
        if any(k.startswith(p + "decoder.") for k in keys):
            prefix = p
            break
    body = {k[len(prefix):]: k for k in keys if k.startswith(prefix)}
    outside = [k for k in keys if not k.startswith(prefix)]
    if any(k.startswith(("decoder.up_blocks.", "decoder.mid_block.")) for k in body):
        naming = "diffusers"
    elif any(k.startswith(("decoder.up.", "decoder.mid.block_1.")) for k in body):
        naming = "bfl"
    else:
        raise ValueError(f"{label}: not a FLUX.2 VAE — looks like {_describe_not_vae(keys)}")
    fmt = VAEFormat(naming=naming, prefix=prefix, sources={})
    fmt.skipped.extend(outside)  # other components of a bundled checkpoint (only possible with a prefix)
    num_up = 1 + max((int(m.group(1)) for k in body if (m := re.match(r"^decoder\.up_blocks\.(\d+)\.", k))), default=-1)
    for k, src in body.items():
        if k in ("bn.running_mean", "bn.running_var"):
            fmt.bn[k[3:]] = src
        elif k == "bn.num_batches_tracked":
            fmt.skipped.append(src)
        elif k.startswith(("encoder.", "quant_conv.")):
            fmt.skipped.append(src)  # not read by the decoder; the encoder's map:
            _add_encoder_key(fmt, k, src)
        elif k.startswith("post_quant_conv.") or k.startswith("decoder.post_quant_conv."):
            fmt.sources["post_quant_conv." + k.rsplit(".", 1)[1]] = src
        elif k.startswith("decoder."):
            _place(k[len("decoder."):], src, None if naming == "bfl" else lambda r: _map_diffusers_decoder(r, num_up),
                   fmt.sources, fmt.linear_to_conv, fmt.unknown)
        else:
            fmt.unknown.append(src)
    return fmt


def _logical_shapes(reader: CheckpointReader, sources: dict[str, str], linear_to_conv: set[str]) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, src in sources.items():
        shape = reader.shape(src)
        if name in linear_to_conv and len(shape) == 2:
            shape = shape + (1, 1)
        shapes[name] = tuple(shape)
    return shapes


def _check_keys(model: nn.Module, shapes: dict[str, tuple[int, ...]], unknown: list[str], label: str, what: str) -> None:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = key_problems(want, shapes, [k for k in shapes if k not in want] + unknown)
    if problems:
        raise ValueError(f"{label}: not a loadable FLUX.2 VAE {what}: " + " | ".join(problems))


def _assign(model: nn.Module, reader: CheckpointReader, sources: dict[str, str], linear_to_conv: set[str],
            dtype: torch.dtype, device: torch.device) -> None:
    for name in model.state_dict():
        value = reader.get(sources[name])
        if name in linear_to_conv and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        set_tensor(model, name, value.to(dtype).contiguous().to(device))


def load_vae(source: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
             operations=VAEOps, require_z_channels: Optional[int] = LATENT_Z) -> Flux2VAEDecoder:
    """Load the decoder of a FLUX.2 VAE from a ``.safetensors`` file or an HF-layout folder (``vae/``).

    Accepts BFL/ComfyUI naming (``flux2-vae.safetensors``, fp32) and diffusers ``AutoencoderKLFlux2``
    naming (``vae/diffusion_pytorch_model.safetensors``); the configuration is read from the shapes.
    Built on the meta device, every tensor assigned from the file (no random init); encoder tensors are
    never read.  ``dtype`` is the compute dtype (REF decodes in bf16).  Wrong files raise ``ValueError``.
    """
    warm_vector_math()
    reader = open_checkpoint(source, "vae")
    fmt = detect_vae_format(reader.keys(), reader.label)
    shapes = _logical_shapes(reader, fmt.sources, fmt.linear_to_conv)
    try:
        cfg = VAEDecoderConfig.from_shapes(shapes)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{reader.label}: incomplete VAE decoder ({fmt.description}): {exc}") from None
    if require_z_channels is not None and cfg.z_channels != require_z_channels:
        what = {4: "an SD1.x/SDXL-style VAE (4 latent channels)", 16: "a FLUX.1/SD3-style VAE (16 latent channels)"}.get(
            cfg.z_channels, f"a VAE with {cfg.z_channels} latent channels")
        raise ValueError(f"{reader.label}: this is {what}; Ideogram 4 needs the FLUX.2 VAE ({require_z_channels} latent channels)")
    with torch.device("meta"):
        model = Flux2VAEDecoder(cfg, dtype=dtype, operations=operations)
    _check_keys(model, shapes, fmt.unknown, reader.label, f"decoder ({fmt.description})")
    device = torch.device(device)
    _assign(model, reader, fmt.sources, fmt.linear_to_conv, dtype, device)
    if fmt.bn:
        if set(fmt.bn) != {"running_mean", "running_var"}:
            raise ValueError(f"{reader.label}: incomplete bn statistics (has {sorted(fmt.bn)})")
        for leaf, src in fmt.bn.items():
            value = reader.get(src).to(torch.float32)
            if tuple(value.shape) != (4 * cfg.z_channels,):
                raise ValueError(f"{reader.label}: bn.{leaf} has shape {list(value.shape)}, expected [{4 * cfg.z_channels}]")
            model._buffers[f"bn_{leaf}"] = value.to(device)
    model.eval().requires_grad_(False)
    model.checkpoint_format = fmt.description
    log.info("Loaded FLUX.2 VAE decoder from %s (%s, channels %s)", reader.label, fmt.description, cfg.block_channels)
    return model


def load_vae_encoder(source: str | os.PathLike, *, device: torch.device | str = "cpu",
                     dtype: torch.dtype = torch.bfloat16, operations=VAEOps,
                     require_z_channels: Optional[int] = LATENT_Z) -> Flux2VAEEncoder:
    """Load the encoder (incl. ``quant_conv``) of a FLUX.2 VAE file/folder — same detection as :func:`load_vae`.

    Built on the meta device, every tensor assigned from the file.  ``dtype`` is the compute dtype (REF
    encodes in the pipeline dtype, bf16).  A file without encoder tensors raises ``ValueError``.
    """
    warm_vector_math()
    reader = open_checkpoint(source, "vae")
    fmt = detect_vae_format(reader.keys(), reader.label)
    if not fmt.encoder:
        raise ValueError(f"{reader.label}: this FLUX.2 VAE file has no encoder (encoder.* tensors); image → latent needs "
                         "the full VAE (flux2-vae.safetensors or the official vae/ folder)")
    shapes = _logical_shapes(reader, fmt.encoder, fmt.encoder_linear_to_conv)
    try:
        cfg = VAEEncoderConfig.from_shapes(shapes)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{reader.label}: incomplete VAE encoder ({fmt.description}): {exc}") from None
    if require_z_channels is not None and cfg.z_channels != require_z_channels:
        raise ValueError(f"{reader.label}: the encoder has {cfg.z_channels} latent channels; Ideogram 4 needs the "
                         f"FLUX.2 VAE ({require_z_channels})")
    with torch.device("meta"):
        model = Flux2VAEEncoder(cfg, dtype=dtype, operations=operations)
    _check_keys(model, shapes, fmt.encoder_unknown, reader.label, f"encoder ({fmt.description})")
    _assign(model, reader, fmt.encoder, fmt.encoder_linear_to_conv, dtype, torch.device(device))
    model.eval().requires_grad_(False)
    model.checkpoint_format = fmt.description
    log.info("Loaded FLUX.2 VAE encoder from %s (%s, channels %s)", reader.label, fmt.description, cfg.block_channels)
    return model
