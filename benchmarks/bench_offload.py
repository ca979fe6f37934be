"""System RAM of a DiT through ComfyUI's load → forward → offload cycle: private vs file-backed RSS.

Writes a random DiT (``--layers`` × ``--width``; 34 × 4608 is the real 9.3 B model) in each ``--formats``
layout to ``--out`` (once; reused), then per format, in a fresh ComfyUI process (``--cpu``), prints
``RssAnon`` (private) and ``RssFile`` (file-backed) after ``load_model_patcher``, after one forward
(256², 64 text tokens) and after a simulated GPU round trip: ComfyUI's ``patch_model`` with a
``Module.to`` that turns every file weight into a ``meta`` tensor (an upload that keeps nothing on the host)
and ``unpatch_model(offload_device)``.  With ``HomePatcher`` every weight is a view of the file mapping
again (ComfyUI's plain ``ModelPatcher`` would copy every weight back into private memory — see
``tests/comfyui/test_offload.py``).

    COMFYUI_PATH=~/ComfyUI python benchmarks/bench_offload.py --out /tmp/offload [--layers 34 --width 4608]
    COMFYUI_PATH=~/ComfyUI python benchmarks/bench_offload.py --out /tmp/offload --device cuda   # on a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHILD = r'''
import importlib, json, sys
comfy_path, pack_parent, repo, path, device = sys.argv[1:6]
sys.path[:0] = [comfy_path]
sys.path += [pack_parent, repo]
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0]] + (["--cpu"] if device == "cpu" else [])
import torch
import comfy.model_management as mm
from benchmarks.proc_status import proc_status
cm = importlib.import_module("i4pack.nodes.host.comfy_model")
off = importlib.import_module("i4pack.nodes.host.offload")

def rss(label):
    s = proc_status("RssAnon", "RssFile")
    m = off.host_memory(p.model)
    return {"at": label, "private_rss_gib": s["RssAnon"] / 2**30, "file_rss_gib": s["RssFile"] / 2**30,
            "weights_private_gib": m.private / 2**30, "weights_file_gib": m.file_backed / 2**30}

p = cm.load_model_patcher(path, weight_dtype="bf16")
out = [rss("after load")]
cfg = cm.dit_of(p).config
dev = mm.get_torch_device()
x = torch.randn(1, 128, 16, 16).to(dev)
feats = torch.randn(1, 64, cfg.llm_features_dim).to(dev)
import time
def forward():
    t0 = time.perf_counter()
    with torch.inference_mode():
        p.model.apply_model(x, torch.tensor([0.5], device=dev), c_crossattn=feats)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0
if dev.type == "cuda":  # a real load → forward → offload cycle on the GPU
    mm.load_models_gpu([p], force_full_load=True)
    out.append(rss("loaded on " + str(dev)))
first = forward()  # warm-up (first touch of the mapped file, kernels' first calls)
seconds = {"first_forward_s": first, "forward_s": forward()}
out.append(rss("after a forward (256²)"))
if "nf4" in cm.dit_of(p).checkpoint_format.lower():  # the decode before this change: pure torch
    nf4 = importlib.import_module("i4pack.model.checkpoints.nf4")
    fast = nf4._bnb_functional
    nf4._bnb_functional = lambda *device: None
    seconds["forward_pure_torch_decode_s"] = forward()
    nf4._bnb_functional = fast
if dev.type == "cuda":
    mm.unload_all_models()
    mm.soft_empty_cache()
    out.append(rss("after offload (unload_all_models)"))
    out.append(seconds)
    print("RESULT " + json.dumps(out))
    sys.exit(0)
original_to = torch.nn.Module.to
def upload(mod, *a, **k):  # what reaches the device leaves nothing on the host: file weights become meta tensors
    homes = off.homes_of(p.model)
    prefixes = {id(m): (n + "." if n else "") for n, m in p.model.named_modules()}
    for owner, name, key, t in off._tensors(mod):
        if prefixes.get(id(mod), "") + key in homes and t.device.type == "cpu":
            meta = torch.empty_like(t, device="meta")
            if name in owner._parameters:
                owner._parameters[name] = torch.nn.Parameter(meta, requires_grad=False)
            else:
                owner._buffers[name] = meta
    return mod
torch.nn.Module.to = upload
p.patch_model(device_to=torch.device("cpu"))
torch.nn.Module.to = original_to
out.append(rss("on the (simulated) device"))
p.unpatch_model(p.offload_device)
out.append(rss("after offload"))
out.append(seconds)
print("RESULT " + json.dumps(out))
'''


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--formats", default="bf16,fp8,nf4")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                    help="cpu: simulated upload/offload (ComfyUI --cpu); cuda: a real load → forward → offload")
    ap.add_argument("--comfyui", default=os.environ.get("COMFYUI_PATH", ""))
    ap.add_argument("--python", default=os.environ.get("COMFYUI_PYTHON", sys.executable))
    args = ap.parse_args(argv)
    from bench_formats import write_safetensors_streamed
    from model.dit.config import DiTConfig
    from random_models import official_entries

    cfg = DiTConfig(emb_dim=args.width, num_layers=args.layers, num_heads=args.width // 256,
                    intermediate_size=args.width * 8 // 3 // 64 * 64, adaln_dim=512)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "i4pack").symlink_to(ROOT, target_is_directory=True)
        script = Path(tmp) / "child.py"
        script.write_text(CHILD)
        for fmt in args.formats.split(","):
            path = args.out / f"dit_{args.layers}x{args.width}_{fmt}.safetensors"
            if not path.exists():  # streamed tensor by tensor: RAM for one layer, also at the real size
                write_safetensors_streamed(official_entries(cfg, fmt), path, prefix="")
            proc = subprocess.run([args.python, str(script), args.comfyui, tmp, str(ROOT), str(path), args.device],
                                  capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                raise SystemExit(proc.stdout[-2000:] + proc.stderr[-4000:])
            print(f"{fmt} ({path.stat().st_size / 2**30:.2f} GiB file)")
            *rows, seconds = json.loads(line[len("RESULT "):])
            print(f"  {args.device.upper()} seconds per forward (256², 64 text tokens): " + ", ".join(
                f"{k.removesuffix('_s').replace('_', ' ')} {v:.1f}" for k, v in seconds.items()))
            for r in rows:
                print(f"  {r['at']:24s} RSS private {r['private_rss_gib']:6.2f} GiB, file-backed {r['file_rss_gib']:6.2f}"
                      f" GiB | weights: private {r['weights_private_gib']:6.2f} GiB, file views "
                      f"{r['weights_file_gib']:6.2f} GiB")


if __name__ == "__main__":
    main()
