"""Write tiny random FLUX.2 VAE files in BFL (ComfyUI ``flux2-vae``) and diffusers naming.

Same structure as the real VAE (z 32, four levels, 3 res blocks per decoder level, 2 per encoder
level, mid attention, ``bn`` statistics) with small channels: ``ch 32, ch_mult (1, 2, 4, 4)`` —
the ``(1, 2, 4, 4)`` multipliers are also what ComfyUI assumes when it infers a VAE's size, so the
tiny files load in core ComfyUI too.  Weights are seeded and scaled so activations stay O(1) and
the output spans roughly [−1, 1] (a few per cent of pixels clip).

    python -m tools.make_test_vae --out /tmp/vae                 # both namings
    python -m tools.make_test_vae --out /tmp/vae --naming diffusers --with-encoder

Core ComfyUI (``comfy.sd.VAE``, the *Load VAE* node) infers the decoder's width from the file but
always builds the encoder with ``ch 128, ch_mult (1, 2, 4, 4)`` and 2 blocks per level.  So
``--with-encoder`` writes an encoder of exactly that size by default (≈34 M parameters, the
decoder stays tiny) and the files load in core ``VAELoader``; ``--encoder-ch 32`` writes a small
encoder that only this pack reads, and the tool says so (:func:`core_vae_problem`).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Optional

import torch

from model.vae import VAEDecoderConfig
from tools.make_test_checkpoints import write_file

NAMINGS = ("bfl", "diffusers")
CORE_ENCODER_CH = 128  # what comfy.sd.VAE builds the encoder with, whatever the file holds
CORE_CH_MULT = (1, 2, 4, 4)
CORE_NUM_RES_BLOCKS = 2


def tiny_vae_config(ch: int = 32, ch_mult=(1, 2, 4, 4), num_res_blocks: int = 2, z_channels: int = 32) -> VAEDecoderConfig:
    return VAEDecoderConfig.from_ch_mult(ch=ch, ch_mult=ch_mult, num_res_blocks=num_res_blocks, z_channels=z_channels)


def _resnet_shapes(p: str, cin: int, cout: int) -> dict[str, tuple[int, ...]]:
    s = {f"{p}.norm1.weight": (cin,), f"{p}.norm1.bias": (cin,),
         f"{p}.conv1.weight": (cout, cin, 3, 3), f"{p}.conv1.bias": (cout,),
         f"{p}.norm2.weight": (cout,), f"{p}.norm2.bias": (cout,),
         f"{p}.conv2.weight": (cout, cout, 3, 3), f"{p}.conv2.bias": (cout,)}
    if cin != cout:
        s.update({f"{p}.nin_shortcut.weight": (cout, cin, 1, 1), f"{p}.nin_shortcut.bias": (cout,)})
    return s


def _mid_shapes(p: str, c: int) -> dict[str, tuple[int, ...]]:
    s = _resnet_shapes(f"{p}.mid.block_1", c, c)
    s.update({f"{p}.mid.attn_1.norm.weight": (c,), f"{p}.mid.attn_1.norm.bias": (c,)})
    for n in ("q", "k", "v", "proj_out"):
        s.update({f"{p}.mid.attn_1.{n}.weight": (c, c, 1, 1), f"{p}.mid.attn_1.{n}.bias": (c,)})
    s.update(_resnet_shapes(f"{p}.mid.block_2", c, c))
    return s


def _encoder_ch(cfg: VAEDecoderConfig, encoder_ch: Optional[int]) -> int:
    """The encoder's base channels: ``encoder_ch``, or the decoder's own when None."""
    return cfg.block_channels[0] // cfg.ch_mult[0] if encoder_ch is None else encoder_ch


def core_vae_problem(cfg: VAEDecoderConfig, with_encoder: bool, encoder_ch: Optional[int] = None) -> str | None:
    """Why core ComfyUI's ``comfy.sd.VAE`` cannot load such a file, or None when it can."""
    encoder_ch = _encoder_ch(cfg, encoder_ch)
    if cfg.ch_mult != CORE_CH_MULT or cfg.blocks_per_level != CORE_NUM_RES_BLOCKS + 1:
        return (f"core ComfyUI assumes ch_mult {CORE_CH_MULT} and {CORE_NUM_RES_BLOCKS + 1} decoder blocks per "
                f"level (this file: ch_mult {cfg.ch_mult}, {cfg.blocks_per_level} blocks)")
    if with_encoder and encoder_ch != CORE_ENCODER_CH:
        return (f"core ComfyUI builds the VAE encoder with ch {CORE_ENCODER_CH} (this file's encoder: ch "
                f"{encoder_ch}); core VAELoader cannot load it — only this pack's Ideogram4 VAE Loader can "
                f"(use --encoder-ch {CORE_ENCODER_CH}, or no --with-encoder, for a file core ComfyUI loads)")
    return None


def bfl_shapes(cfg: VAEDecoderConfig, with_encoder: bool = False,
               encoder_ch: Optional[int] = None) -> dict[str, tuple[int, ...]]:
    """Every tensor of a BFL-named FLUX.2 VAE file (REF ``AutoEncoder`` names, minus ``bn``).

    The encoder (``with_encoder``) has ``encoder_ch`` base channels (default: the decoder's; core ComfyUI
    always builds a ch-128 encoder) and the decoder's multipliers."""
    z, chans = cfg.z_channels, cfg.block_channels
    s: dict[str, tuple[int, ...]] = {}
    if with_encoder:
        enc = tuple(_encoder_ch(cfg, encoder_ch) * m for m in cfg.ch_mult)
        enc_blocks = cfg.blocks_per_level - 1
        s.update({"encoder.conv_in.weight": (enc[0], 3, 3, 3), "encoder.conv_in.bias": (enc[0],)})
        cin = enc[0]
        for i, cout in enumerate(enc):
            for j in range(enc_blocks):
                s.update(_resnet_shapes(f"encoder.down.{i}.block.{j}", cin, cout))
                cin = cout
            if i != len(enc) - 1:
                s.update({f"encoder.down.{i}.downsample.conv.weight": (cin, cin, 3, 3),
                          f"encoder.down.{i}.downsample.conv.bias": (cin,)})
        s.update(_mid_shapes("encoder", cin))
        s.update({"encoder.norm_out.weight": (cin,), "encoder.norm_out.bias": (cin,),
                  "encoder.conv_out.weight": (2 * z, cin, 3, 3), "encoder.conv_out.bias": (2 * z,),
                  "encoder.quant_conv.weight": (2 * z, 2 * z, 1, 1), "encoder.quant_conv.bias": (2 * z,)})
    block_in = chans[-1]
    s.update({"decoder.post_quant_conv.weight": (z, z, 1, 1), "decoder.post_quant_conv.bias": (z,),
              "decoder.conv_in.weight": (block_in, z, 3, 3), "decoder.conv_in.bias": (block_in,)})
    s.update(_mid_shapes("decoder", block_in))
    for i in reversed(range(cfg.num_levels)):
        for j in range(cfg.blocks_per_level):
            s.update(_resnet_shapes(f"decoder.up.{i}.block.{j}", block_in, chans[i]))
            block_in = chans[i]
        if i != 0:
            s.update({f"decoder.up.{i}.upsample.conv.weight": (block_in, block_in, 3, 3),
                      f"decoder.up.{i}.upsample.conv.bias": (block_in,)})
    s.update({"decoder.norm_out.weight": (block_in,), "decoder.norm_out.bias": (block_in,),
              "decoder.conv_out.weight": (cfg.out_channels, block_in, 3, 3), "decoder.conv_out.bias": (cfg.out_channels,)})
    return s


def random_vae_state_dict(cfg: VAEDecoderConfig, seed: int = 0, *, with_encoder: bool = False,
                          with_bn: bool = True, encoder_ch: Optional[int] = None) -> dict[str, torch.Tensor]:
    """Seeded float32 weights in BFL naming (``decoder.*``, ``decoder.post_quant_conv.*``, ``bn.*``,
    optionally ``encoder.*``).  The decoder and bn values do not depend on ``with_encoder``/``with_bn``
    (the encoder has its own generator)."""
    g = torch.Generator().manual_seed(seed)
    g_enc = torch.Generator().manual_seed(seed + 7919)
    out: dict[str, torch.Tensor] = {}
    shapes = bfl_shapes(cfg, with_encoder, encoder_ch)
    order = [k for k in shapes if k.startswith("decoder.")] + [k for k in shapes if not k.startswith("decoder.")]
    for key in order:
        shape = shapes[key]
        gen = g if key.startswith("decoder.") else g_enc
        leaf = key.rsplit(".", 2)[-2]
        if len(shape) == 1 and leaf.startswith("norm"):
            value = (1.0 + 0.1 * torch.randn(shape, generator=gen)) if key.endswith("weight") else 0.05 * torch.randn(shape, generator=gen)
        elif key.endswith(".bias"):
            value = 0.02 * torch.randn(shape, generator=gen)
        else:
            fan_in = shape[1] * shape[2] * shape[3]
            value = torch.randn(shape, generator=gen) / fan_in ** 0.5
        out[key] = value.contiguous()
    if with_bn:
        c = 4 * cfg.z_channels
        out["bn.running_mean"] = 0.2 * torch.randn(c, generator=g)
        out["bn.running_var"] = 1.0 + 3.0 * torch.rand(c, generator=g)
        out["bn.num_batches_tracked"] = torch.tensor(1000, dtype=torch.int64)
    return out


_DIFF_ATTN = {"norm": "group_norm", "q": "to_q", "k": "to_k", "v": "to_v", "proj_out": "to_out.0"}


def to_diffusers(sd: dict[str, torch.Tensor], num_levels: int = 4) -> dict[str, torch.Tensor]:
    """BFL-named state dict → diffusers ``AutoencoderKLFlux2`` names (attention weights as 2-D linears)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        k = key
        if k.startswith("bn."):
            out[k] = value
            continue
        if k.startswith("decoder.post_quant_conv."):
            out[k[len("decoder."):]] = value
            continue
        if k.startswith("encoder.quant_conv."):
            out[k[len("encoder."):]] = value
            continue
        side, rest = k.split(".", 1)
        m = re.match(r"^mid\.attn_1\.(norm|q|k|v|proj_out)\.(weight|bias)$", rest)
        if m:
            if m.group(1) != "norm" and m.group(2) == "weight":
                value = value.reshape(value.shape[0], value.shape[1])
            out[f"{side}.mid_block.attentions.0.{_DIFF_ATTN[m.group(1)]}.{m.group(2)}"] = value
            continue
        rest = rest.replace("nin_shortcut", "conv_shortcut")
        m = re.match(r"^mid\.block_(\d)\.(.+)$", rest)
        if m:
            rest = f"mid_block.resnets.{int(m.group(1)) - 1}.{m.group(2)}"
        elif (m := re.match(r"^up\.(\d+)\.block\.(\d+)\.(.+)$", rest)):
            rest = f"up_blocks.{num_levels - 1 - int(m.group(1))}.resnets.{m.group(2)}.{m.group(3)}"
        elif (m := re.match(r"^up\.(\d+)\.upsample\.conv\.(.+)$", rest)):
            rest = f"up_blocks.{num_levels - 1 - int(m.group(1))}.upsamplers.0.conv.{m.group(2)}"
        elif (m := re.match(r"^down\.(\d+)\.block\.(\d+)\.(.+)$", rest)):
            rest = f"down_blocks.{m.group(1)}.resnets.{m.group(2)}.{m.group(3)}"
        elif (m := re.match(r"^down\.(\d+)\.downsample\.conv\.(.+)$", rest)):
            rest = f"down_blocks.{m.group(1)}.downsamplers.0.conv.{m.group(2)}"
        elif rest.startswith("norm_out."):
            rest = "conv_norm_out." + rest[len("norm_out."):]
        out[f"{side}.{rest}"] = value
    return out


def convert(sd: dict[str, torch.Tensor], naming: str, dtype: Optional[torch.dtype] = None,
            num_levels: int = 4) -> dict[str, torch.Tensor]:
    if naming not in NAMINGS:
        raise ValueError(f"naming must be one of {NAMINGS}, got {naming!r}")
    out = dict(sd) if naming == "bfl" else to_diffusers(sd, num_levels)
    if dtype is not None:
        out = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in out.items()}
    return out


def write_vae(path: Path, naming: str = "bfl", *, cfg: Optional[VAEDecoderConfig] = None, seed: int = 0,
              with_encoder: bool = False, with_bn: bool = True, dtype: Optional[torch.dtype] = None,
              encoder_ch: Optional[int] = None) -> Path:
    """Write one tiny VAE file; ``path`` may be a folder in HF layout (then ``path/vae/...``)."""
    cfg = cfg or tiny_vae_config()
    sd = random_vae_state_dict(cfg, seed, with_encoder=with_encoder, with_bn=with_bn, encoder_ch=encoder_ch)
    tensors = convert(sd, naming, dtype, cfg.num_levels)
    path = Path(path)
    if path.suffix != ".safetensors":
        path = path / "vae" / "diffusion_pytorch_model.safetensors"
    return write_file(tensors, path, f"vae_{naming}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--naming", choices=NAMINGS + ("all",), default="all")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-encoder", action="store_true",
                    help=f"also write encoder.* (ch {CORE_ENCODER_CH} by default, what core ComfyUI loads)")
    ap.add_argument("--encoder-ch", type=int, default=CORE_ENCODER_CH,
                    help="encoder base channels; anything but 128 only loads in this pack, not in core VAELoader")
    args = ap.parse_args(argv)
    for naming in NAMINGS if args.naming == "all" else (args.naming,):
        print(write_vae(args.out / f"flux2_vae_tiny_{naming}.safetensors", naming, seed=args.seed,
                        with_encoder=args.with_encoder, encoder_ch=args.encoder_ch))
    problem = core_vae_problem(tiny_vae_config(), args.with_encoder, args.encoder_ch)
    print(f"note: {problem}" if problem else "these files load in core ComfyUI's VAELoader too (comfy.sd.VAE)")


if __name__ == "__main__":
    main()
