"""ComfyUI-path benchmark: the template's sampler + decode inside ComfyUI's model management.

Prints, per preset: seconds per image (sampling + VAE decode), seconds per step, peak VRAM, and the
memory plan the pack chose; optionally under a simulated VRAM cap.  Needs a CUDA GPU for meaningful
figures (it runs on the CPU with ``--tiny`` as a smoke test).  Nothing is downloaded: both
full-size DiTs (9.3 B parameters each, 34 layers, width 4608) and the FLUX.2 VAE decoder are built
with random weights in the chosen storage format, text features are random (B, L, 53248).

    python benchmarks/bench_comfyui.py --comfyui /path/to/ComfyUI                       # bf16, all presets
    python benchmarks/bench_comfyui.py --comfyui ~/ComfyUI --format fp8 --vram-cap-gib 24,16
    python benchmarks/bench_comfyui.py --comfyui ~/ComfyUI --tiny --size 256 --presets V4_TURBO_12  # CPU smoke test
    python benchmarks/bench_comfyui.py --comfyui ~/ComfyUI -- --lowvram                  # extra ComfyUI flags

The VRAM cap allocates a ballast tensor so that ComfyUI's free-memory query (``torch.cuda.mem_get_info``)
sees a card of the requested size — ComfyUI then plans, evicts and partially loads exactly as on
that card.  Everything runs in this process; ComfyUI is imported, not started as a server.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "ideogram4_native_bench"
PRESETS = ("V4_QUALITY_48", "V4_DEFAULT_20", "V4_TURBO_12")
GiB = 1024 ** 3


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"),
                    help="ComfyUI checkout (default: $COMFYUI_PATH)")
    ap.add_argument("--presets", default=",".join(PRESETS), help="comma-separated presets (default: all three)")
    ap.add_argument("--format", choices=("bf16", "fp8", "nf4"), default="bf16",
                    help="weight storage of both DiTs (fp8 = official per-row fp8, nf4 = bitsandbytes layout)")
    ap.add_argument("--size", type=int, default=1024, help="square image size in pixels (default 1024)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--text-tokens", type=int, default=512, help="caption length after the chat template")
    ap.add_argument("--vram-cap-gib", default="", help="comma-separated simulated card sizes in GiB ('' = the real card)")
    ap.add_argument("--repeat", type=int, default=1, help="images per preset (after one warm-up step)")
    ap.add_argument("--no-decode", action="store_true", help="skip the VAE decode")
    ap.add_argument("--tiny", action="store_true", help="2-layer, 512-wide DiT and tiny VAE (CPU smoke test)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("comfy_args", nargs="*", help="after '--': extra ComfyUI command-line flags (e.g. --lowvram)")
    return ap.parse_args(argv)


# --------------------------------------------------------------------------- setup

def import_comfy(comfyui: Path, comfy_args: list[str]):
    if comfyui is None or not (comfyui / "comfy").is_dir():
        sys.exit("--comfyui (or $COMFYUI_PATH) must point at a ComfyUI checkout")
    sys.path.insert(0, str(comfyui))
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], *comfy_args]
    import comfy.model_management  # noqa: F401  (parses the flags, picks the device)

    spec = importlib.util.spec_from_file_location(PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = pack
    spec.loader.exec_module(pack)
    return pack


def random_dit(fmt: str, tiny: bool, seed: int):
    """A DiT with random weights in ``fmt`` storage, built with the pack's ComfyUI operations, on the CPU."""
    import torch

    cm = importlib.import_module(f"{PACKAGE}.nodes.host.comfy_model")
    dit_mod = importlib.import_module(f"{PACKAGE}.model.dit")
    cfg_mod = importlib.import_module(f"{PACKAGE}.model.dit.config")
    quant = importlib.import_module(f"{PACKAGE}.model.checkpoints")
    cfg = cfg_mod.DiTConfig(emb_dim=512, num_layers=2, num_heads=2, intermediate_size=1024, adaln_dim=64,
                            llm_features_dim=13 * 64) if tiny else cfg_mod.DiTConfig()
    g = torch.Generator().manual_seed(seed)
    with torch.device("meta"):
        model = dit_mod.Ideogram4DiT(cfg, dtype=torch.bfloat16, operations=cm.ComfyOps)
    if fmt != "bf16":
        scheme = "fp8_rowwise" if fmt == "fp8" else "nf4"
        for name, module in list(model.named_modules()):
            if isinstance(module, torch.nn.Linear):
                parent_name, _, leaf = name.rpartition(".")
                parent = model.get_submodule(parent_name) if parent_name else model
                q = cm.ComfyQuantizedLinear(module.in_features, module.out_features, bias=module.bias is not None,
                                            scheme=scheme, device="cpu", dtype=torch.bfloat16)
                n = module.in_features * module.out_features
                if scheme == "nf4":  # random codes: same bytes and decode cost as real weights
                    q.weight.data = torch.randint(0, 256, (n // 2, 1), dtype=torch.uint8, generator=g)
                    q.absmax.copy_(torch.rand(n // quant.NF4_BLOCKSIZE, generator=g) * 0.05)
                    q.quant_map.copy_(torch.tensor(quant.NF4_CODE))
                else:
                    w = torch.randn(module.out_features, module.in_features, generator=g, dtype=torch.bfloat16)
                    q.weight.data = w.to(quant.FP8_DTYPE)
                    q.weight_scale.fill_(0.02)
                if q.bias is not None:
                    q.bias.data.zero_()
                setattr(parent, leaf, q)
    for name, p in list(model.named_parameters()):
        if p.is_meta:
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            if p.ndim == 1:
                value = torch.ones(p.shape, dtype=torch.bfloat16) if leaf == "weight" else torch.zeros(p.shape, dtype=torch.bfloat16)
            else:
                value = (torch.randn(p.shape, generator=g, dtype=torch.bfloat16) * (p.shape[-1] ** -0.5))
            parent._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
    model.eval().requires_grad_(False)
    model.checkpoint_format = f"random {fmt}"
    return model


def wrap(dit):
    import comfy.model_management as mm
    import comfy.model_patcher
    import torch

    cm = importlib.import_module(f"{PACKAGE}.nodes.host.comfy_model")
    config = cm.Ideogram4NativeConfig(dict(cm.Ideogram4NativeConfig.unet_config))
    config.set_inference_dtype(torch.bfloat16, None)
    model = cm.Ideogram4NativeModel(config, dit, device=mm.unet_offload_device())
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def random_vae(tiny: bool):
    import comfy.model_management as mm
    import comfy.model_patcher
    import torch

    vae_mod = importlib.import_module(f"{PACKAGE}.model.vae")
    cv = importlib.import_module(f"{PACKAGE}.nodes.host.comfy_vae")
    cfg = vae_mod.VAEDecoderConfig.from_ch_mult(ch=32) if tiny else vae_mod.VAEDecoderConfig()
    dec = vae_mod.Flux2VAEDecoder(cfg, dtype=torch.bfloat16, operations=cv.VAEOpsComfy)
    for p in dec.parameters():
        p.data.normal_(0, 0.02)
    dec.eval().requires_grad_(False)
    return comfy.model_patcher.ModelPatcher(cv.VAEHolder(dec), load_device=mm.vae_device(),
                                            offload_device=mm.vae_offload_device())


class Ballast:
    """Occupy device memory so that only ``cap`` bytes look free to ComfyUI."""

    def __init__(self):
        self.tensor = None

    def set(self, cap_bytes):
        import torch

        self.tensor = None
        torch.cuda.empty_cache()
        if cap_bytes is None:
            return
        free, total = torch.cuda.mem_get_info()
        used_by_others = total - free
        ballast = total - used_by_others - cap_bytes
        if ballast > 0:
            self.tensor = torch.empty(int(ballast), dtype=torch.uint8, device="cuda")


# --------------------------------------------------------------------------- run

def main(argv=None) -> None:
    args = parse_args(argv)
    import_comfy(args.comfyui, args.comfy_args)
    import torch

    import comfy.model_management as mm

    cs = importlib.import_module(f"{PACKAGE}.nodes.host.comfy_sampling")
    cv = importlib.import_module(f"{PACKAGE}.nodes.host.comfy_vae")
    cond_mod = importlib.import_module(f"{PACKAGE}.nodes.host.conditioning")
    sampling = importlib.import_module(f"{PACKAGE}.sampling")
    device = mm.get_torch_device()
    cuda = device.type == "cuda"
    print(f"device: {mm.get_torch_device_name(device)} | torch {torch.__version__} | format {args.format}"
          f"{' | tiny' if args.tiny else ''}")
    t0 = time.perf_counter()
    cond = wrap(random_dit(args.format, args.tiny, 0))
    uncond = wrap(random_dit(args.format, args.tiny, 1))
    vae = None if args.no_decode else random_vae(args.tiny)
    print(f"built random models in {time.perf_counter() - t0:.1f} s: 2 × {cond.model_size() / GiB:.2f} GiB")
    feat_dim = cond.model.diffusion_model.config.llm_features_dim
    feats = torch.randn(args.batch, args.text_tokens, feat_dim)
    positive = cond_mod.make_conditioning(feats, [args.text_tokens] * args.batch)
    caps = [None] + [float(c) * GiB for c in args.vram_cap_gib.split(",") if c.strip()]
    if len(caps) > 1 and not cuda:
        sys.exit("--vram-cap-gib needs a CUDA device")
    ballast = Ballast()
    results = []
    for cap in caps:
        if cuda:
            mm.unload_all_models()
            ballast.set(cap)
        label = "full card" if cap is None else f"cap {cap / GiB:.0f} GiB"
        for preset in [p.strip() for p in args.presets.split(",") if p.strip()]:
            settings = sampling.PRESETS[preset]
            warm = sampling.custom_settings(1, settings.mu, settings.std, 7.0)
            cs.run_reference_sampler(cond, uncond, positive, warm, width=args.size, height=args.size,
                                     batch=args.batch, seed=0)
            for r in range(args.repeat):
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                t_start = time.perf_counter()
                latent, info = cs.run_reference_sampler(cond, uncond, positive, settings, width=args.size,
                                                         height=args.size, batch=args.batch, seed=r)
                if cuda:
                    torch.cuda.synchronize()
                t_sample = time.perf_counter() - t_start
                t_decode = 0.0
                if vae is not None:
                    t1 = time.perf_counter()
                    cv.decode(vae, latent)
                    if cuda:
                        torch.cuda.synchronize()
                    t_decode = time.perf_counter() - t1
                peak = torch.cuda.max_memory_allocated() / GiB if cuda else float("nan")
                plan = next(line for line in info if line.startswith("memory:")).splitlines()[0]
                row = {"setting": label, "preset": preset, "format": args.format, "size": args.size,
                       "batch": args.batch, "seconds_per_image": (t_sample + t_decode) / args.batch,
                       "seconds_sampling": t_sample, "seconds_decode": t_decode,
                       "seconds_per_step": t_sample / settings.steps, "peak_vram_gib": peak, "plan": plan,
                       "plan_detail": next(line for line in info if line.startswith("memory:"))}
                results.append(row)
                print(f"{label:>12} {preset:14s} {args.size}² ×{args.batch}: {row['seconds_per_image']:7.2f} s/image "
                      f"({row['seconds_per_step']:.3f} s/step, decode {t_decode:.2f} s) | peak VRAM {peak:6.2f} GiB | "
                      f"{plan}")
        print("\n".join("    " + l for l in row["plan_detail"].splitlines()[1:]))
    ballast.set(None)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
