"""LoRA cost per sampling step: 0, 1 and 3 LoRAs on bf16 and fp8 bases, inside ComfyUI (a script that prints figures).

    flock /tmp/heavy.lock python benchmarks/bench_lora.py --comfyui /path/to/ComfyUI [--layers 4 --width 1536]

Run with ComfyUI's Python.  A reduced-size DiT (real layout, head_dim 256) with random weights is
written in bf16 and official fp8, LoRAs of rank 16 on every layer's attention and MLP are added through
ComfyUI's core ``load_lora_for_models`` (what ``LoraLoaderModelOnly`` calls), the model is loaded by
``load_models_gpu`` and one step (conditional + image-only pass) is timed.  On bf16 ComfyUI merges the
LoRA into the weights once (no per-step cost); on fp8 the patch is applied to the decoded weight each
time a layer runs (from copies of the LoRA made once on the device, counted in ComfyUI's loaded size).  Each row
also prints what ComfyUI counts as loaded and, on CUDA, what the device allocated for the load, so the two can be
compared.  ``--device cuda`` times on a GPU (if ComfyUI sees one).
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--intermediate", type=int, default=4096)
    ap.add_argument("--grid", type=int, default=32, help="token grid edge (32 → 512 px)")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    sys.path[:0] = [args.comfyui]
    import comfy.options
    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0]] + (["--cpu"] if args.device == "cpu" else [])
    import torch
    import comfy.model_management as mm
    import comfy.sd

    with tempfile.TemporaryDirectory() as tmp:
        parent = Path(tmp) / "pkgs"
        parent.mkdir()
        (parent / "i4pack").symlink_to(ROOT, target_is_directory=True)
        sys.path += [str(parent), str(ROOT)]
        importlib.import_module("i4pack")
        cm = importlib.import_module("i4pack.nodes.host.comfy_model")
        importlib.import_module("i4pack.nodes.host.core_lora_loaders").install_core_loader_hooks()  # as on_load
        from tools.make_test_checkpoints import convert, random_state_dict, tiny_config, write_file
        from tools.make_test_loras import layout_state_dict, lora_factors

        cfg = tiny_config(num_layers=args.layers, num_heads=args.heads, intermediate_size=args.intermediate,
                          adaln_dim=256, text_width=64)
        sd = random_state_dict(cfg, 0)
        loras = [layout_state_dict(lora_factors(cfg, seed=10 + i, rank=args.rank, alpha=args.rank), "kohya")
                 for i in range(3)]
        device = mm.get_torch_device()
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(1, 128, args.grid, args.grid, generator=g).to(device)
        feats = torch.randn(1, 64, cfg.llm_features_dim, generator=g).to(device)
        sigma = torch.tensor([0.5], device=device)
        print(f"DiT: {cfg.num_layers} layers, width {cfg.emb_dim}, MLP {cfg.intermediate_size}; "
              f"{args.grid}×{args.grid} image tokens + 64 text; LoRA rank {args.rank}; device {device}; "
              f"torch threads {torch.get_num_threads()}")
        base_times = {}
        for fmt in ("bf16", "fp8"):
            path = write_file(convert(sd, fmt), Path(tmp) / f"{fmt}.safetensors", fmt)
            base = cm.load_model_patcher(path, weight_dtype="bf16")
            for n in (0, 1, 3):
                patcher = base
                for lora in loras[:n]:
                    patcher = comfy.sd.load_lora_for_models(patcher, None, lora, 1.0, 0.0)[0]
                mm.unload_all_models()
                sync()
                allocated0 = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
                t0 = time.perf_counter()
                mm.load_models_gpu([patcher], force_full_load=True)
                sync()
                load_s = time.perf_counter() - t0
                # what ComfyUI counts as loaded (weights + the LoRA's run-time copies) against what the device holds
                memory = f"ComfyUI counts {patcher.loaded_size() / 2**20:.1f} MiB loaded"
                if allocated0 is not None:
                    held = torch.cuda.memory_allocated(device) - allocated0
                    memory += f", the device holds {held / 2**20:.1f} MiB more than before the load"
                model = patcher.model
                with torch.no_grad():
                    model.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)  # warm-up
                    sync()
                    times = []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        model.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)
                        model.apply_model(x, sigma, ideogram4_velocity=True)
                        sync()
                        times.append(time.perf_counter() - t0)
                del model  # the next load replaces this patcher: ComfyUI warns of a leak if its model outlives it
                step = min(times)
                base_times.setdefault(fmt, step)
                print(f"{fmt:5s} {n} LoRA(s): {step:.3f} s/step (×{step / base_times[fmt]:.2f} vs no LoRA), "
                      f"load+patch {load_s:.2f} s; {memory}")
        mm.unload_all_models()


if __name__ == "__main__":
    main()
