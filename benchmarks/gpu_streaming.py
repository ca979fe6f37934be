"""Streamed (partially loaded) layers on the device against the same model fully resident: bit for bit.

The other GPU steps load their models whole; this one runs the code that only a partial load reaches on a
GPU: packed storage uploaded through ComfyUI's offload stream and the pinned staging ring
(``nodes/host/staging_ring.py``), decoded on the device, for fp8 (exact and fast matmul) and nf4, on a batch of
two left-padded captions (so the attention mask is built and dispatched through ComfyUI's attention).  Per
format it prints whether the streamed velocity equals the resident one, how many layers streamed, the ring's
pinned bytes and the seconds of one streamed forward.  A small random DiT (2 layers, width 1536, real head dim),
written with the project's tools and loaded through the loader users hit; nothing is downloaded.

    python benchmarks/gpu_streaming.py --comfyui ~/ComfyUI --json streaming.json           # on a GPU
    python benchmarks/gpu_streaming.py --comfyui ~/ComfyUI --json streaming.json -- --cpu  # smoke test
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_comfyui import PACKAGE, import_comfy  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"))
    ap.add_argument("--formats", default="fp8,fp8_fast,nf4")
    ap.add_argument("--width", type=int, default=1536)
    ap.add_argument("--grid", type=int, default=32, help="token grid side (32 = 512² pixels)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("comfy_args", nargs="*")
    return ap.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import_comfy(args.comfyui, args.comfy_args)
    import torch
    import comfy.model_management as mm
    from tools.make_test_checkpoints import convert, random_state_dict, tiny_config, write_file

    cm = importlib.import_module(f"{PACKAGE}.nodes.host.comfy_model")
    sr = importlib.import_module(f"{PACKAGE}.nodes.host.staging_ring")
    ff = importlib.import_module(f"{PACKAGE}.nodes.host.fast_fp8")
    device = mm.get_torch_device()
    cfg = tiny_config(num_heads=args.width // 256, intermediate_size=args.width * 8 // 3 // 256 * 256)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 128, args.grid, args.grid, generator=g).to(device)
    feats = torch.randn(2, 24, cfg.llm_features_dim, generator=g)
    feats[1, :5] = 0
    feats = feats.to(device)
    sigma = torch.tensor([0.7, 0.3], device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    out = {"device": str(device), "config": f"{cfg.num_layers}×{cfg.emb_dim}", "formats": {}}
    sd = random_state_dict(cfg, 0)
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in [f for f in args.formats.split(",") if f]:
            stored = "fp8" if fmt == "fp8_fast" else fmt
            row = out["formats"][fmt] = {}
            try:
                path = write_file(convert(sd, stored), Path(tmp) / f"{stored}.safetensors", stored)
                p = cm.load_model_patcher(path, weight_dtype="bf16")
                if fmt == "fp8_fast":
                    p, report = ff.with_fast_fp8(p, "streaming check")
                    row["fast_fp8"] = report.splitlines()[0][:160]

                def velocity():
                    with torch.no_grad():
                        v = p.model.apply_model(x, sigma, c_crossattn=feats, text_lengths=torch.tensor([24, 19]),
                                                ideogram4_velocity=True)
                    sync()
                    return v

                mm.unload_all_models()
                mm.load_models_gpu([p], force_full_load=True)
                resident = velocity()
                p.detach()
                mm.unload_all_models()
                p.patch_model(device, lowvram_model_memory=1)  # every layer streamed
                streamed = velocity()  # first pass: the ring is allocated
                t0 = time.perf_counter()
                again = velocity()  # second pass: the slots are reused behind their events
                row["streamed_forward_s"] = time.perf_counter() - t0
                row["streamed_layers"] = sum(bool(getattr(m, "comfy_cast_weights", False))
                                             for m in p.model.diffusion_model.modules())
                ring = sr.ring_for(device)
                row["ring_pinned_bytes"] = None if ring is None else ring.pinned_bytes
                row["equal"] = bool(torch.equal(resident, streamed)) and bool(torch.equal(resident, again))
                row["max_abs_diff"] = float((resident - streamed).abs().max())
                p.detach()
            except Exception as exc:  # noqa: BLE001 - a figure per format; the error is the result
                row["error"] = f"{type(exc).__name__}: {exc}"[:400]
            print(f"{fmt:9s} " + json.dumps(row), flush=True)
    mm.unload_all_models()
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    failed = [f for f, r in out["formats"].items() if not r.get("equal")]
    print("streamed == resident: " + ("all formats" if not failed else f"NOT for {failed}"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
