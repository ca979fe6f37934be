"""Pure-torch FLUX.2 KL VAE decoder (spec §4): decode and tiled decode (loading: ``vae/loading.py``).

Architecture (REF ``autoencoder.Decoder``): ``post_quant_conv`` (1×1, z→z) → ``conv_in`` (3×3) →
mid (ResnetBlock, single-head spatial attention, ResnetBlock) → for each level from the lowest
resolution up: ``blocks_per_level`` ResnetBlocks (+ nearest ×2 upsample and a 3×3 conv, except at
full resolution) → GroupNorm → swish → ``conv_out``.  GroupNorm is 32 groups, eps 1e-6; swish is
``x·sigmoid(x)`` (as REF writes it — not ``F.silu``, which rounds differently in bf16).  The
configuration (z channels, channels per level, blocks per level) is read from tensor shapes, so
the real VAE and the tiny test VAEs go through the same code.

Module names are BFL's ``decoder.*`` names without the prefix (``post_quant_conv`` included), so
one key-detection function (:func:`model.vae.loading.detect_vae_format`) maps either file naming onto them:

* BFL / ComfyUI ``flux2-vae.safetensors`` (``decoder.*``, ``decoder.post_quant_conv.*`` or
  ``post_quant_conv.*``, ``bn.*``; ``encoder.*`` / ``quant_conv.*`` are skipped);
* diffusers ``AutoencoderKLFlux2`` (``vae/diffusion_pytorch_model.safetensors``:
  ``decoder.mid_block.resnets.i``, ``decoder.up_blocks.k``, attention ``to_q/to_k/to_v/to_out.0``
  linears, ``conv_norm_out``, ``conv_shortcut``, ``bn.*``).

The VAE's ``bn.running_mean/var`` are kept (``bn_running_mean``/``bn_running_var``, float32) but
not used by decode: like REF, decoding takes *model-space* tokens and un-normalises them with the
reference constants (``model/vae/latents.py``).  They are there for :func:`model.vae.ref_to_bn_space`.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .latents import denormalise, unpatchify

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


class MidBlock(nn.Module):
    """REF's ``mid``: ResnetBlock → single-head attention → ResnetBlock (encoder and decoder alike)."""

    def __init__(self, c: int, ops, **kw) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(c, c, ops, **kw)
        self.attn_1 = AttnBlock(c, ops, **kw)
        self.block_2 = ResnetBlock(c, c, ops, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class VAEPart(nn.Module):
    """Common to the encoder and the decoder: compute dtype and device are those of ``conv_in``."""

    @property
    def dtype(self) -> torch.dtype:
        return self.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.conv_in.weight.device


class Flux2VAEDecoder(VAEPart):
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
        self.mid = MidBlock(block_in, ops, **kw)
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
    def _mid(self, z: torch.Tensor) -> torch.Tensor:
        return self.mid(self.conv_in(self.post_quant_conv(z)))

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


def decode_to_uint8(vae: Flux2VAEDecoder, tokens_normalised: torch.Tensor, gh: int, gw: int, *,
                    tile: Optional[int] = None) -> torch.Tensor:
    """REF ``_decode`` without the PIL step: model-space tokens → (B, 16gh, 16gw, 3) uint8 (CPU)."""
    return vae.decode_to_uint8(tokens_normalised, gh, gw, tile=tile)
