"""Pure-torch FLUX.2 KL VAE decoder (spec §4): loading (BFL and diffusers naming), decode, tiled decode.

Architecture (REF ``autoencoder.Decoder``): ``post_quant_conv`` (1×1, z→z) → ``conv_in`` (3×3) →
mid (ResnetBlock, single-head spatial attention, ResnetBlock) → for each level from the lowest
resolution up: ``blocks_per_level`` ResnetBlocks (+ nearest ×2 upsample and a 3×3 conv, except at
full resolution) → GroupNorm → swish → ``conv_out``.  GroupNorm is 32 groups, eps 1e-6; swish is
``x·sigmoid(x)`` (as REF writes it — not ``F.silu``, which rounds differently in bf16).  The
configuration (z channels, channels per level, blocks per level) is read from tensor shapes, so
the real VAE and the tiny test VAEs go through the same code.

Module names are BFL's ``decoder.*`` names without the prefix (``post_quant_conv`` included), so
one key-detection function (:func:`detect_vae_format`) maps either file naming onto them:

* BFL / ComfyUI ``flux2-vae.safetensors`` (``decoder.*``, ``decoder.post_quant_conv.*`` or
  ``post_quant_conv.*``, ``bn.*``; ``encoder.*`` / ``quant_conv.*`` are skipped);
* diffusers ``AutoencoderKLFlux2`` (``vae/diffusion_pytorch_model.safetensors``:
  ``decoder.mid_block.resnets.i``, ``decoder.up_blocks.k``, attention ``to_q/to_k/to_v/to_out.0``
  linears, ``conv_norm_out``, ``conv_shortcut``, ``bn.*``).

The VAE's ``bn.running_mean/var`` are kept (``bn_running_mean``/``bn_running_var``, float32) but
not used by decode: like REF, decoding takes *model-space* tokens and un-normalises them with the
reference constants (``model/latents.py``).  They are there for :func:`model.latents.ref_to_bn_space`.
"""

from __future__ import annotations

import logging
import math
import os
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoint import CheckpointReader, open_checkpoint
from .formats import describe_other_family
from .latents import denormalise, unpatchify
from .loading import key_problems, set_tensor

log = logging.getLogger(__name__)

GROUPS = 32
GN_EPS = 1e-6
LATENT_Z = 32  # FLUX.2 VAE latent channels


class VAEOps:
    """Layer factories (``comfy.ops`` signature subset); the node layer may pass a ComfyUI namespace."""
    Conv2d = nn.Conv2d
    GroupNorm = nn.GroupNorm


# --------------------------------------------------------------------------- #
# Configuration
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class VAEDecoderConfig:
    z_channels: int = 32
    #: output channels of each level, level 0 = full resolution (REF ``ch · ch_mult[i]``)
    block_channels: tuple[int, ...] = (128, 256, 512, 512)
    blocks_per_level: int = 3  # REF num_res_blocks + 1
    out_channels: int = 3

    @property
    def num_levels(self) -> int:
        return len(self.block_channels)

    @property
    def ch(self) -> int:
        return self.block_channels[0]

    @property
    def ch_mult(self) -> tuple[int, ...]:
        return tuple(c // self.ch for c in self.block_channels)

    @property
    def upscale(self) -> int:
        return 2 ** (self.num_levels - 1)

    @classmethod
    def from_ch_mult(cls, ch: int = 128, ch_mult: Sequence[int] = (1, 2, 4, 4), num_res_blocks: int = 2,
                     z_channels: int = 32, out_channels: int = 3) -> "VAEDecoderConfig":
        return cls(z_channels=z_channels, block_channels=tuple(ch * m for m in ch_mult),
                   blocks_per_level=num_res_blocks + 1, out_channels=out_channels)

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> "VAEDecoderConfig":
        """Infer the configuration from decoder tensor shapes (our / BFL-without-prefix names)."""
        levels = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"^up\.(\d+)\.", k))})
        if not levels or levels != list(range(len(levels))):
            raise ValueError(f"decoder levels are not contiguous: up.{levels}")
        blocks = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"^up\.0\.block\.(\d+)\.", k))})
        if not blocks or blocks != list(range(len(blocks))):
            raise ValueError("cannot find the decoder's res blocks (up.0.block.*)")
        channels = tuple(shapes[f"up.{i}.block.0.conv1.weight"][0] for i in levels)
        return cls(z_channels=shapes["conv_in.weight"][1], block_channels=channels,
                   blocks_per_level=len(blocks), out_channels=shapes["conv_out.weight"][0])


# --------------------------------------------------------------------------- #
# Modules (names = BFL decoder names)
# --------------------------------------------------------------------------- #


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, ops, **kw) -> None:
        super().__init__()
        self.in_channels, self.out_channels = cin, cout
        self.norm1 = ops.GroupNorm(GROUPS, cin, eps=GN_EPS, affine=True, **kw)
        self.conv1 = ops.Conv2d(cin, cout, kernel_size=3, stride=1, padding=1, **kw)
        self.norm2 = ops.GroupNorm(GROUPS, cout, eps=GN_EPS, affine=True, **kw)
        self.conv2 = ops.Conv2d(cout, cout, kernel_size=3, stride=1, padding=1, **kw)
        if cin != cout:
            self.nin_shortcut = ops.Conv2d(cin, cout, kernel_size=1, stride=1, padding=0, **kw)

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        return self.nin_shortcut(x) if self.in_channels != self.out_channels else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = self.conv2(swish(self.norm2(h)))
        return self.shortcut(x) + h


class AttnBlock(nn.Module):
    def __init__(self, c: int, ops, **kw) -> None:
        super().__init__()
        self.norm = ops.GroupNorm(GROUPS, c, eps=GN_EPS, affine=True, **kw)
        self.q = ops.Conv2d(c, c, kernel_size=1, **kw)
        self.k = ops.Conv2d(c, c, kernel_size=1, **kw)
        self.v = ops.Conv2d(c, c, kernel_size=1, **kw)
        self.proj_out = ops.Conv2d(c, c, kernel_size=1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h_ = self.norm(x)
        q, k, v = self.q(h_), self.k(h_), self.v(h_)
        b, c, h, w = q.shape

        def seq(t: torch.Tensor) -> torch.Tensor:  # b c h w -> b 1 (h w) c
            return t.reshape(b, c, h * w).transpose(1, 2).unsqueeze(1).contiguous()

        o = F.scaled_dot_product_attention(seq(q), seq(k), seq(v))
        # b 1 (h w) c -> b c h w as a view (same strides as REF's einops rearrange)
        o = o.reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + self.proj_out(o)


class Upsample(nn.Module):
    def __init__(self, c: int, ops, **kw) -> None:
        super().__init__()
        self.conv = ops.Conv2d(c, c, kernel_size=3, stride=1, padding=1, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Flux2VAEDecoder(nn.Module):
    """FLUX.2 KL decoder incl. ``post_quant_conv``: raw latent (B, z, h, w) → image (B, 3, 8h, 8w) in [−1, 1]."""

    def __init__(self, cfg: VAEDecoderConfig = VAEDecoderConfig(), *, dtype=None, device=None, operations=VAEOps) -> None:
        super().__init__()
        self.cfg = cfg
        kw = dict(dtype=dtype, device=device)
        ops = operations
        z = cfg.z_channels
        block_in = cfg.block_channels[-1]
        self.post_quant_conv = ops.Conv2d(z, z, kernel_size=1, **kw)
        self.conv_in = ops.Conv2d(z, block_in, kernel_size=3, stride=1, padding=1, **kw)
        self.mid = nn.Module()
        self.mid.block_1 = ResnetBlock(block_in, block_in, ops, **kw)
        self.mid.attn_1 = AttnBlock(block_in, ops, **kw)
        self.mid.block_2 = ResnetBlock(block_in, block_in, ops, **kw)
        ups: list[nn.Module] = []
        for i in reversed(range(cfg.num_levels)):
            up = nn.Module()
            up.block = nn.ModuleList()
            cout = cfg.block_channels[i]
            for _ in range(cfg.blocks_per_level):
                up.block.append(ResnetBlock(block_in, cout, ops, **kw))
                block_in = cout
            if i != 0:
                up.upsample = Upsample(block_in, ops, **kw)
            ups.insert(0, up)
        self.up = nn.ModuleList(ups)
        self.norm_out = ops.GroupNorm(GROUPS, block_in, eps=GN_EPS, affine=True, **kw)
        self.conv_out = ops.Conv2d(block_in, cfg.out_channels, kernel_size=3, stride=1, padding=1, **kw)
        # The file's BatchNorm statistics (ComfyUI channel order), float32; None if the file has none.
        self.register_buffer("bn_running_mean", None, persistent=False)
        self.register_buffer("bn_running_var", None, persistent=False)
        self.checkpoint_format = "random init"

    # ------------------------------------------------------------------ basics
    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device

    def _mid(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(self.post_quant_conv(z))
        h = self.mid.block_1(h)
        h = self.mid.attn_1(h)
        return self.mid.block_2(h)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """REF ``Decoder.forward``: (B, z, h, w) in the module dtype → (B, out, 8h, 8w) in the module dtype."""
        h = self._mid(z)
        for i in reversed(range(self.cfg.num_levels)):
            up = self.up[i]
            for block in up.block:
                h = block(h)
            if i != 0:
                h = up.upsample(h)
        return self.conv_out(swish(self.norm_out(h)))

    # ------------------------------------------------------------------ decode
    @torch.no_grad()
    def decode_raw(self, z_raw: torch.Tensor, *, tile: Optional[int] = None,
                   offload_device: Optional[torch.device | str] = None) -> torch.Tensor:
        """Raw VAE latent (B, 32, h, w) → float32 image (B, 3, 8h, 8w), unclamped.

        The input is cast to the decoder's dtype (REF: ``z.to(self.dtype)``).  ``tile``: decode in
        tiles of ``tile`` latent pixels with :meth:`decode_tiled` (exact strategy, see there).
        """
        z = z_raw.to(device=self.device, dtype=self.dtype)
        if tile is not None and tile < max(z.shape[-2:]):
            return self.decode_tiled(z, tile=tile, offload_device=offload_device)
        return self(z).float()

    @torch.no_grad()
    def decode_tokens(self, tokens: torch.Tensor, gh: int, gw: int, *, tile: Optional[int] = None,
                      offload_device: Optional[torch.device | str] = None) -> torch.Tensor:
        """Model-space tokens (B, gh·gw, 128) → float32 image (B, 3, 16gh, 16gw), unclamped (REF ``_decode``
        up to the clamp: de-normalise in float32, unpatchify, decoder in the decoder's dtype)."""
        z_raw = unpatchify(denormalise(tokens.to(self.device)), gh, gw)
        return self.decode_raw(z_raw, tile=tile, offload_device=offload_device)

    @torch.no_grad()
    def decode_to_uint8(self, tokens: torch.Tensor, gh: int, gw: int, *, tile: Optional[int] = None,
                        offload_device: Optional[torch.device | str] = None) -> torch.Tensor:
        """Model-space tokens → (B, 16gh, 16gw, 3) uint8 on the CPU, bit-for-bit REF's rounding."""
        return to_uint8(self.decode_tokens(tokens, gh, gw, tile=tile, offload_device=offload_device))

    # ------------------------------------------------------------------ tiling
    def tile_halo(self) -> int:
        """Latent pixels of context a tile needs so that its core is exact: the receptive-field growth
        of every 3×3 conv after the (global) mid block, measured in latent pixels, rounded up."""
        cfg = self.cfg
        total = 0.0
        for i in reversed(range(cfg.num_levels)):
            s = 2 ** (cfg.num_levels - 1 - i)  # resolution of level i relative to the latent
            total += 2 * cfg.blocks_per_level / s
            if i != 0:
                total += 1 / (2 * s)  # upsample conv, at twice the resolution
        total += 1 / cfg.upscale  # conv_out
        return math.ceil(total - 1e-9)

    @torch.no_grad()
    def decode_tiled(self, z: torch.Tensor, *, tile: int = 64,
                     offload_device: Optional[torch.device | str] = None) -> torch.Tensor:
        """Exact tiled decode: (B, z, h, w) in the decoder dtype → float32 (B, 3, 8h, 8w).

        Strategy (exact, no blending): the cheap low-resolution part (``post_quant_conv``, ``conv_in``,
        mid block with its global attention) runs on the whole latent.  The rest runs on
        non-overlapping ``tile``×``tile`` latent cores, each with :meth:`tile_halo` latent pixels of
        context (enough that zero padding at a tile edge never reaches the core).  The only non-local
        operation left, GroupNorm, uses *global* statistics: the tiles advance in lock step and every
        GroupNorm's mean/variance is accumulated over all tile cores (float64) before any tile is
        normalised.  The result equals the untiled decode up to floating-point rounding (GroupNorm is
        evaluated in float32 with externally supplied statistics instead of the native kernel).
        Measured on the tiny test VAE (24×24 latent, 9 tiles): fp32 max |Δ| 2.6e-6, uint8 ≤ 1 LSB on
        6 of 110,592 values; bf16 max |Δ| 0.04, ≤ 5 LSB — bf16 re-rounding noise of the same size as
        the reference's own bf16-vs-fp32 gap (6 LSB on the golden), not a seam.

        Memory: one tile's activations on the compute device at a time; the parked tiles live on
        ``offload_device`` (default: the CPU when decoding on an accelerator).  Costs extra compute
        for the halos ((tile + 2·halo)² / tile² per tile) and one host round trip per GroupNorm.
        """
        cfg = self.cfg
        dev = z.device
        store = torch.device(offload_device) if offload_device is not None else (
            torch.device("cpu") if dev.type != "cpu" else dev)
        dt = self.dtype
        h = self._mid(z)
        H, W = h.shape[-2:]
        halo = self.tile_halo()
        tiles: list[_Tile] = []
        for y0 in range(0, H, tile):
            for x0 in range(0, W, tile):
                y1, x1 = min(y0 + tile, H), min(x0 + tile, W)
                ey0, ey1, ex0, ex1 = max(0, y0 - halo), min(H, y1 + halo), max(0, x0 - halo), min(W, x1 + halo)
                tiles.append(_Tile((y0 - ey0, y1 - ey0, x0 - ex0, x1 - ex0), (y0, y1, x0, x1),
                                   h[..., ey0:ey1, ex0:ex1].to(store)))
        del h
        scale = 1

        def run(fn, xs: list[torch.Tensor]) -> list[torch.Tensor]:
            return [fn(x.to(dev)).to(store) for x in xs]

        def gn(module, xs: list[torch.Tensor]):
            mean, rstd = _global_group_stats(xs, [t.core(scale) for t in tiles], dev)

            def apply(x: torch.Tensor) -> torch.Tensor:
                return _group_norm_with_stats(x, mean, rstd, module, dt)
            return apply

        xs = [t.x for t in tiles]
        for t in tiles:
            t.x = None
        for i in reversed(range(cfg.num_levels)):
            up = self.up[i]
            for block in up.block:
                n1 = gn(block.norm1, xs)
                hs = run(lambda x: block.conv1(swish(n1(x))), xs)
                n2 = gn(block.norm2, hs)
                hs = run(lambda x: block.conv2(swish(n2(x))), hs)
                xs = [(block.shortcut(x.to(dev)) + hh.to(dev)).to(store) for x, hh in zip(xs, hs)]
                del hs
            if i != 0:
                xs = run(up.upsample, xs)
                scale *= 2
        nout = gn(self.norm_out, xs)
        b = z.shape[0]
        out = torch.empty(b, cfg.out_channels, H * scale, W * scale, dtype=torch.float32, device=dev)
        for t, x in zip(tiles, xs):
            y = self.conv_out(swish(nout(x.to(dev)))).float()
            cy0, cy1, cx0, cx1 = t.core(scale)
            gy0, gy1, gx0, gx1 = (v * scale for v in t.dest)
            out[..., gy0:gy1, gx0:gx1] = y[..., cy0:cy1, cx0:cx1]
        return out


@dataclass
class _Tile:
    core0: tuple[int, int, int, int]  # core rows/cols inside the tile at latent resolution
    dest: tuple[int, int, int, int]  # core rows/cols in the full latent
    x: Optional[torch.Tensor] = field(default=None, repr=False)

    def core(self, scale: int) -> tuple[int, int, int, int]:
        return tuple(v * scale for v in self.core0)  # type: ignore[return-value]


def _global_group_stats(xs: list[torch.Tensor], cores, dev) -> tuple[torch.Tensor, torch.Tensor]:
    s = ss = None
    n = 0
    for x, (y0, y1, x0, x1) in zip(xs, cores):
        c = x[..., y0:y1, x0:x1].to(device=dev, dtype=torch.float64)
        b = c.shape[0]
        g = c.reshape(b, GROUPS, -1)
        s_i, ss_i = g.sum(-1), (g * g).sum(-1)
        s, ss = (s_i, ss_i) if s is None else (s + s_i, ss + ss_i)
        n += g.shape[-1]
    mean = s / n
    var = (ss / n - mean * mean).clamp_min(0)
    return mean, torch.rsqrt(var + GN_EPS)


def _group_norm_with_stats(x: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor, module, dtype) -> torch.Tensor:
    b, c, hh, ww = x.shape
    g = x.to(torch.float32).reshape(b, GROUPS, -1)
    y = (g - mean.to(torch.float32)[..., None]) * rstd.to(torch.float32)[..., None]
    y = y.reshape(b, c, hh, ww)
    w = module.weight.to(device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    bias = module.bias.to(device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    return (y * w + bias).to(dtype)


# --------------------------------------------------------------------------- #
# Output conversion
# --------------------------------------------------------------------------- #


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float (B, 3, H, W) in ~[−1, 1] → (B, H, W, 3) uint8 on the CPU: clamp, ``round((x+1)·127.5)``
    (round-half-to-even), exactly as REF ``_decode``."""
    x = images.float().clamp(-1.0, 1.0)
    return ((x + 1.0) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()


def to_pil(images_uint8: torch.Tensor) -> list:
    from PIL import Image

    return [Image.fromarray(a) for a in images_uint8.numpy()]


# --------------------------------------------------------------------------- #
# Key detection and loading
# --------------------------------------------------------------------------- #

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


def _map_diffusers_decoder(rest: str, num_up: int) -> Optional[tuple[str, bool]]:
    """``decoder.<rest>`` in diffusers naming → (our name, stored as linear)."""
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
    m = re.match(r"^up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$", rest)
    if m:
        level = num_up - 1 - int(m.group(1))
        return f"up.{level}.block.{m.group(2)}.{m.group(3).replace('conv_shortcut', 'nin_shortcut')}", False
    m = re.match(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv\.(weight|bias)$", rest)
    if m:
        return f"up.{num_up - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}", False
    return None


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
        elif k == "bn.num_batches_tracked" or k.startswith(("encoder.", "quant_conv.")):
            fmt.skipped.append(src)
        elif k.startswith("post_quant_conv.") or k.startswith("decoder.post_quant_conv."):
            fmt.sources["post_quant_conv." + k.rsplit(".", 1)[1]] = src
        elif k.startswith("decoder."):
            rest = k[len("decoder."):]
            if naming == "bfl":
                fmt.sources[rest] = src
            else:
                mapped = _map_diffusers_decoder(rest, num_up)
                if mapped is None:
                    fmt.unknown.append(src)
                    continue
                name, is_linear = mapped
                fmt.sources[name] = src
                if is_linear:
                    fmt.linear_to_conv.add(name)
        else:
            fmt.unknown.append(src)
    return fmt


def _logical_shapes(reader: CheckpointReader, fmt: VAEFormat) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, src in fmt.sources.items():
        shape = reader.shape(src)
        if name in fmt.linear_to_conv and len(shape) == 2:
            shape = shape + (1, 1)
        shapes[name] = tuple(shape)
    return shapes


def _check_keys(model: nn.Module, shapes: dict[str, tuple[int, ...]], fmt: VAEFormat, label: str) -> None:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    problems = key_problems(want, shapes, [k for k in shapes if k not in want] + fmt.unknown)
    if problems:
        raise ValueError(f"{label}: not a loadable FLUX.2 VAE decoder ({fmt.description}): " + " | ".join(problems))


def load_vae(source: str | os.PathLike, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
             operations=VAEOps, require_z_channels: Optional[int] = LATENT_Z) -> Flux2VAEDecoder:
    """Load the decoder of a FLUX.2 VAE from a ``.safetensors`` file or an HF-layout folder (``vae/``).

    Accepts BFL/ComfyUI naming (``flux2-vae.safetensors``, fp32) and diffusers ``AutoencoderKLFlux2``
    naming (``vae/diffusion_pytorch_model.safetensors``); the configuration is read from the shapes.
    Built on the meta device, every tensor assigned from the file (no random init); encoder tensors are
    never read.  ``dtype`` is the compute dtype (REF decodes in bf16).  Wrong files raise ``ValueError``.
    """
    reader = open_checkpoint(source, "vae")
    fmt = detect_vae_format(reader.keys(), reader.label)
    shapes = _logical_shapes(reader, fmt)
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
    _check_keys(model, shapes, fmt, reader.label)
    device = torch.device(device)
    for name in model.state_dict():
        value = reader.get(fmt.sources[name])
        if name in fmt.linear_to_conv and value.ndim == 2:
            value = value.reshape(*value.shape, 1, 1)
        set_tensor(model, name, value.to(dtype).contiguous().to(device))
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


def decode_to_uint8(vae: Flux2VAEDecoder, tokens_normalised: torch.Tensor, gh: int, gw: int, *,
                    tile: Optional[int] = None) -> torch.Tensor:
    """REF ``_decode`` without the PIL step: model-space tokens → (B, 16gh, 16gw, 3) uint8 (CPU)."""
    return vae.decode_to_uint8(tokens_normalised, gh, gw, tile=tile)
