"""Ideogram 4 end to end, without ComfyUI: caption → encode → sample → decode → PNG.

    python -m tools.demo                              # tiny random models, ~seconds on a CPU (see README: Slow VAE)
    python -m tools.demo --models /path/to/ideogram-4 --caption caption.json --width 1024 --height 1024
    python -m tools.demo --transformer t.safetensors --unconditional u.safetensors \\
        --text-encoder /path/to/ideogram-4 --vae flux2-vae.safetensors --device cuda

With no model arguments it writes tiny random checkpoints (both transformers, a 13-layer Qwen3-VL
text encoder with its tokenizer, a FLUX.2-structured VAE) into a temporary folder in the official
Hugging Face layout and runs the real loading and inference code on them: the output is noise, but
every stage — loaders, caption check, tokenizer + chat template, 13-tap features, the reference's
Euler loop with both transformers, de-normalisation, unpatchify, the VAE decoder and REF rounding —
is the one used with the real weights.  It writes ``ideogram4_demo.png`` (``--out``) and prints the
time of each stage.

``--caption`` takes JSON text or the path of a ``.json``/``.txt`` file holding it.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

DEFAULT_CAPTION = (
    '{"high_level_description":"A red fox sitting in fresh snow at sunrise, looking at the camera.",'
    '"style_description":{"aesthetics":"calm, warm, crisp","lighting":"golden hour backlight",'
    '"photo":"wildlife photograph, telephoto lens","medium":"photograph"},'
    '"compositional_deconstruction":{"background":"a snowy forest edge with soft bokeh",'
    '"elements":[{"type":"obj","desc":"a red fox with a thick winter coat, sitting"},'
    '{"type":"text","text":"WINTER","desc":"small white serif letters in the top left corner"}]}}'
)
TINY_TE_LAYERS = 13
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def build_tiny_models(root: Path, seed: int = 0) -> Path:
    """Write tiny random Ideogram 4 parts in the official HF layout under ``root``; returns the folder."""
    from tools.make_test_checkpoints import random_state_dict, tiny_config, write_hf_folder
    from tools.make_test_text_encoder import tiny_text_config, write_layout
    from tools.make_test_vae import write_vae

    root = Path(root)
    text = tiny_text_config(num_layers=TINY_TE_LAYERS)
    te_width = int(text["hidden_size"])
    folder = write_layout("official_bf16", root, text=text, seed=seed)  # text_encoder/ + tokenizer/
    cfg = tiny_config(text_width=te_width)  # 13 taps × hidden
    write_hf_folder(folder, random_state_dict(cfg, seed), random_state_dict(cfg, seed + 1), "bf16")
    write_vae(folder, "diffusers", seed=seed)  # vae/diffusion_pytorch_model.safetensors
    return folder


def _read_caption(text: str) -> str:
    path = Path(text)
    if not text.lstrip().startswith("{") and path.suffix in (".json", ".txt") and path.is_file():
        return path.read_text(encoding="utf-8")
    return text


def main(argv: Optional[list[str]] = None) -> Path:
    ap = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", type=Path, help="official Ideogram 4 Hugging Face folder")
    ap.add_argument("--transformer", type=Path, help="conditional transformer (file or folder)")
    ap.add_argument("--unconditional", type=Path, help="unconditional transformer (file or folder)")
    ap.add_argument("--text-encoder", type=Path, help="text encoder folder (with tokenizer) or file")
    ap.add_argument("--tokenizer", type=Path, help="tokenizer folder (for a single-file text encoder)")
    ap.add_argument("--vae", type=Path, help="FLUX.2 VAE: flux2-vae.safetensors or the diffusers vae/ file")
    ap.add_argument("--caption", default=DEFAULT_CAPTION, help="JSON caption text or a .json/.txt file")
    ap.add_argument("--width", type=int, default=None, help="pixels (default 256 tiny / 1024 real)")
    ap.add_argument("--height", type=int, default=None, help="pixels (default 256 tiny / 1024 real)")
    ap.add_argument("--preset", default="V4_TURBO_12", help="V4_QUALITY_48 | V4_DEFAULT_20 | V4_TURBO_12")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="compute dtype (REF: bf16)")
    ap.add_argument("--tile", type=int, default=None, help="exact tiled VAE decode, latent pixels per tile")
    ap.add_argument("--no-validate", action="store_true", help="pass the caption through unchecked")
    ap.add_argument("--out", type=Path, default=Path("ideogram4_demo.png"))
    args = ap.parse_args(argv)

    from model.pipeline import load_pipeline

    real = any(v is not None for v in (args.models, args.transformer, args.unconditional, args.text_encoder, args.vae))
    width = args.width or (1024 if real else 256)
    height = args.height or (1024 if real else 256)
    caption = _read_caption(args.caption)
    dtype = DTYPES[args.dtype]
    t0 = time.perf_counter()

    def stage(name: str, seconds: float) -> None:
        print(f"  {name:<22s} {seconds:8.3f} s", flush=True)

    print(f"Ideogram 4 demo — {'real models' if real else 'tiny random models'}, {width}×{height}, "
          f"{args.preset}, seed {args.seed}, {args.device}/{args.dtype}", flush=True)
    with tempfile.TemporaryDirectory(prefix="ideogram4_demo_") as tmp:
        if real:
            models, taps = args.models, None
        else:
            t = time.perf_counter()
            models, taps = build_tiny_models(Path(tmp)), tuple(range(TINY_TE_LAYERS))
            stage("write tiny checkpoints", time.perf_counter() - t)
        t = time.perf_counter()
        pipe = load_pipeline(models, transformer=args.transformer, unconditional=args.unconditional,
                             text_encoder=args.text_encoder, vae=args.vae, device=args.device, dtype=dtype,
                             tokenizer=args.tokenizer, taps=taps)
        stage("load models", time.perf_counter() - t)
        timings: dict[str, float] = {}

        def progress(step: int, total: int, _z) -> None:
            if total <= 16 or (step + 1) % max(1, total // 8) == 0 or step + 1 == total:
                print(f"    step {step + 1}/{total}", flush=True)

        images = pipe.generate(caption, width=width, height=height, preset=args.preset, seed=args.seed,
                               validate=not args.no_validate, tile=args.tile, callback=progress, timings=timings)
        for name in ("caption", "encode", "sample", "decode", "safety"):
            stage(name, timings[name])
    t = time.perf_counter()
    out = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    images[0].save(out)
    stage("save png", time.perf_counter() - t)
    for r in pipe.last_safety:
        if r.blocked:
            print(f"warning: {r.message}")
    print(f"  {'total':<22s} {time.perf_counter() - t0:8.3f} s")
    print(f"wrote {out.resolve()} ({images[0].width}×{images[0].height})")
    return out


if __name__ == "__main__":
    try:
        main()
    except ValueError as exc:  # wrong files, bad caption, bad size: a message, not a traceback
        sys.exit(f"error: {exc}")
