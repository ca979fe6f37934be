"""Pure-torch FLUX.2 KL VAE encoder (REF ``autoencoder.Encoder``) and the reference image → latent map.

Architecture: ``conv_in`` (3×3) → for each level from full resolution down: ``blocks_per_level``
ResnetBlocks (+ a stride-2 3×3 conv after zero padding (0, 1, 0, 1), except at the lowest
resolution) → mid (ResnetBlock, single-head attention, ResnetBlock) → GroupNorm → swish →
``conv_out`` (2·z channels) → ``quant_conv`` (1×1).  The output is the posterior's moments
``[mean (z) ; logvar (z)]``; like the reference (``train_edit.encode_image_tokens``) only the mean is
used: ``tokens = (patchify(mean) − shift) / scale`` in float32 — the exact inverse of what
:meth:`Flux2VAEDecoder.decode_tokens` undoes.

Module names are BFL's ``encoder.*`` names without the prefix (``quant_conv`` included, as REF
keeps it inside the encoder), so :func:`model.vae.loading.detect_vae_format` maps BFL and diffusers
files onto it.  Blocks are shared with the decoder (``decoder.ResnetBlock``/``MidBlock``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
import torch
import torch.nn as nn
import torch.nn.functional as F

from typing import Optional

from .decoder import GN_EPS, GROUPS, MidBlock, ResnetBlock, VAEOps, VAEPart, _global_group_stats, _group_norm_with_stats, swish
from .latents import normalise, patchify

#: image pixels per latent pixel of the FLUX.2 VAE (three stride-2 downsamples)
DOWNSCALE = 8


@dataclass(frozen=True)
class VAEEncoderConfig:
    z_channels: int = 32
    #: output channels of each level, level 0 = full resolution (REF ``ch · ch_mult[i]``)
    block_channels: tuple[int, ...] = (128, 256, 512, 512)
    blocks_per_level: int = 2  # REF num_res_blocks
    in_channels: int = 3

    @property
    def num_levels(self) -> int:
        return len(self.block_channels)

    @property
    def downscale(self) -> int:
        return 2 ** (self.num_levels - 1)

    @classmethod
    def from_shapes(cls, shapes: dict[str, tuple[int, ...]]) -> "VAEEncoderConfig":
        """Infer the configuration from encoder tensor shapes (BFL names without ``encoder.``)."""
        levels = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"^down\.(\d+)\.", k))})
        if not levels or levels != list(range(len(levels))):
            raise ValueError(f"encoder levels are not contiguous: down.{levels}")
        blocks = sorted({int(m.group(1)) for k in shapes if (m := re.match(r"^down\.0\.block\.(\d+)\.", k))})
        if not blocks or blocks != list(range(len(blocks))):
            raise ValueError("cannot find the encoder's res blocks (down.0.block.*)")
        channels = tuple(shapes[f"down.{i}.block.0.conv1.weight"][0] for i in levels)
        return cls(z_channels=shapes["quant_conv.weight"][0] // 2, block_channels=channels,
                   blocks_per_level=len(blocks), in_channels=shapes["conv_in.weight"][1])


class Downsample(nn.Module):
    """REF ``Downsample``: zero pad right/bottom by one, 3×3 conv with stride 2."""

    def __init__(self, c: int, ops, **kw) -> None:
        super().__init__()
        self.conv = ops.Conv2d(c, c, kernel_size=3, stride=2, padding=0, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1), mode="constant", value=0))


class Flux2VAEEncoder(VAEPart):
    """FLUX.2 KL encoder incl. ``quant_conv``: image (B, 3, H, W) in [−1, 1] → moments (B, 2z, H/8, W/8)."""

    def __init__(self, cfg: VAEEncoderConfig = VAEEncoderConfig(), *, dtype=None, device=None,
                 operations=VAEOps) -> None:
        super().__init__()
        self.cfg = cfg
        kw = dict(dtype=dtype, device=device)
        ops = operations
        z = cfg.z_channels
        chans = cfg.block_channels
        self.conv_in = ops.Conv2d(cfg.in_channels, chans[0], kernel_size=3, stride=1, padding=1, **kw)
        downs: list[nn.Module] = []
        block_in = chans[0]
        for i, cout in enumerate(chans):
            down = nn.Module()
            down.block = nn.ModuleList()
            for _ in range(cfg.blocks_per_level):
                down.block.append(ResnetBlock(block_in, cout, ops, **kw))
                block_in = cout
            if i != cfg.num_levels - 1:
                down.downsample = Downsample(block_in, ops, **kw)
            downs.append(down)
        self.down = nn.ModuleList(downs)
        self.mid = MidBlock(block_in, ops, **kw)
        self.norm_out = ops.GroupNorm(GROUPS, block_in, eps=GN_EPS, affine=True, **kw)
        self.conv_out = ops.Conv2d(block_in, 2 * z, kernel_size=3, stride=1, padding=1, **kw)
        self.quant_conv = ops.Conv2d(2 * z, 2 * z, kernel_size=1, **kw)
        self.checkpoint_format = "random init"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """REF ``Encoder.forward``: (B, 3, H, W) in the module dtype → moments (B, 2z, H/8, W/8)."""
        h = self.conv_in(x)
        for i in range(self.cfg.num_levels):
            down = self.down[i]
            for block in down.block:
                h = block(h)
            if i != self.cfg.num_levels - 1:
                h = down.downsample(h)
        h = self.mid(h)
        h = self.conv_out(swish(self.norm_out(h)))
        return self.quant_conv(h)

    # ------------------------------------------------------------------ tiling
    def tile_halo(self) -> int:
        """Image pixels of context a tile needs so that its core is exact through the tiled levels (all but the
        lowest): conv_in, 2 convs per ResnetBlock and the stride-2 downsample, each at its level's scale; rounded
        up to a multiple of the total downscale (so tiles stay aligned with every stride)."""
        cfg = self.cfg
        total = 1  # conv_in
        for i in range(cfg.num_levels - 1):
            s = 2 ** i
            total += 2 * cfg.blocks_per_level * s + 2 * s  # res convs, downsample (3×3, stride 2, pad right)
        d = cfg.downscale
        return -(-total // d) * d

    @torch.no_grad()
    def forward_tiled(self, x: torch.Tensor, *, tile: int = 512,
                      offload_device: Optional[torch.device | str] = None) -> torch.Tensor:
        """Exact tiled :meth:`forward` (the decoder's strategy, :meth:`Flux2VAEDecoder.decode_tiled`): every level
        but the lowest runs on non-overlapping ``tile``×``tile`` image-pixel cores with :meth:`tile_halo` pixels of
        context, in lock step, with every GroupNorm's statistics accumulated over all cores (float64); the
        lowest level, the mid block (global attention) and the output convs run on the whole 1/8-resolution map.
        Parked tiles live on ``offload_device`` (default: the CPU when encoding on an accelerator)."""
        cfg = self.cfg
        d = cfg.downscale
        if tile % d:
            raise ValueError(f"encoder tile = {tile} must be a multiple of {d} image pixels")
        dev = x.device
        store = torch.device(offload_device) if offload_device is not None else (
            torch.device("cpu") if dev.type != "cpu" else dev)
        dt = self.dtype
        H, W = x.shape[-2:]
        halo = self.tile_halo()
        boxes = []  # (core inside the tile at full resolution, core in the image)
        xs = []
        for y0 in range(0, H, tile):
            for x0 in range(0, W, tile):
                y1, x1 = min(y0 + tile, H), min(x0 + tile, W)
                ey0, ey1, ex0, ex1 = max(0, y0 - halo), min(H, y1 + halo), max(0, x0 - halo), min(W, x1 + halo)
                boxes.append(((y0 - ey0, y1 - ey0, x0 - ex0, x1 - ex0), (y0, y1, x0, x1)))
                xs.append(x[..., ey0:ey1, ex0:ex1].to(store))
        scale = 1

        def cores():
            return [tuple(v // scale for v in core) for core, _ in boxes]

        def run(fn, ts):
            return [fn(t.to(dev)).to(store) for t in ts]

        def gn(module, ts):
            mean, rstd = _global_group_stats(ts, cores(), dev)
            return lambda t: _group_norm_with_stats(t, mean, rstd, module, dt)

        xs = run(self.conv_in, xs)
        for i in range(cfg.num_levels - 1):
            for block in self.down[i].block:
                n1 = gn(block.norm1, xs)
                hs = run(lambda t: block.conv1(swish(n1(t))), xs)
                n2 = gn(block.norm2, hs)
                hs = run(lambda t: block.conv2(swish(n2(t))), hs)
                xs = [(block.shortcut(t.to(dev)) + hh.to(dev)).to(store) for t, hh in zip(xs, hs)]
                del hs
            xs = run(self.down[i].downsample, xs)
            scale *= 2
        h = torch.empty(x.shape[0], xs[0].shape[1], H // scale, W // scale, dtype=dt, device=dev)
        for t, (core, dest) in zip(xs, boxes):
            cy0, cy1, cx0, cx1 = (v // scale for v in core)
            gy0, gy1, gx0, gx1 = (v // scale for v in dest)
            h[..., gy0:gy1, gx0:gx1] = t[..., cy0:cy1, cx0:cx1].to(dev)
        del xs
        for block in self.down[cfg.num_levels - 1].block:
            h = block(h)
        h = self.mid(h)
        return self.quant_conv(self.conv_out(swish(self.norm_out(h))))

    # ------------------------------------------------------------------ encode
    def check_image(self, images: torch.Tensor) -> None:
        m = self.cfg.downscale * 2
        if images.ndim != 4 or images.shape[1] != self.cfg.in_channels or images.shape[2] % m or images.shape[3] % m:
            raise ValueError(f"images must be (B, {self.cfg.in_channels}, H, W) with H, W multiples of {m}, got "
                             f"{tuple(images.shape)}")

    @torch.no_grad()
    def encode_mean(self, images: torch.Tensor, *, tile: Optional[int] = None) -> torch.Tensor:
        """(B, 3, H, W) in [−1, 1] → posterior mean (B, z, H/8, W/8) float32 (the input is cast to the encoder's
        dtype, as REF ``encoder(images.to(dtype))``).  ``tile``: image pixels per tile (:meth:`forward_tiled`)."""
        self.check_image(images)
        x = images.to(device=self.device, dtype=self.dtype)
        moments = self.forward_tiled(x, tile=tile) if tile is not None and tile < max(x.shape[-2:]) else self(x)
        return moments[:, : self.cfg.z_channels].float()

    @torch.no_grad()
    def encode_tokens(self, images: torch.Tensor, *, tile: Optional[int] = None) -> tuple[torch.Tensor, int, int]:
        """(B, 3, H, W) in [−1, 1] → ((B, N, 128) model-space tokens float32, gh, gw): REF
        ``encode_image_tokens`` (mean, patchify, ``(tokens − shift) / scale``)."""
        tokens, gh, gw = patchify(self.encode_mean(images, tile=tile))
        return normalise(tokens), gh, gw


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float32 in [−1, 1]: REF ``images_to_tensor`` (x / 127.5 − 1)."""
    return images.float().div(127.5).sub(1.0).permute(0, 3, 1, 2).contiguous()


def from_unit_float(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, 3) float in [0, 1] → (B, 3, H, W) float32 in [−1, 1] (2x − 1)."""
    return images[..., :3].float().mul(2.0).sub(1.0).permute(0, 3, 1, 2).contiguous()


__all__ = ["DOWNSCALE", "VAEEncoderConfig", "Flux2VAEEncoder", "Downsample", "from_uint8", "from_unit_float",
           "fit_pixels"]


def fit_pixels(x: torch.Tensor, width: int, height: int, mode: str) -> torch.Tensor:
    """(B, C, H, W) pixels/mask → (B, C, height, width): centre crop (``crop``) or antialiased bicubic resize
    (``resize``, clamped to the input's range); ``error`` (or the same size) returns the input."""
    h, w = x.shape[-2:]
    if (h, w) == (height, width) or mode == "error":
        return x
    if mode == "crop":
        y0, x0 = (h - height) // 2, (w - width) // 2
        return x[..., y0:y0 + height, x0:x0 + width].contiguous()
    y = F.interpolate(x.float(), size=(height, width), mode="bicubic", antialias=True, align_corners=False)
    return y.clamp(float(x.min()), float(x.max()))
