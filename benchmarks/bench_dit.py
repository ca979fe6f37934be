"""DiT benchmarks (a script that prints figures; not a test).

    python benchmarks/bench_dit.py load-memory            # peak host RAM while loading vs file size
    python benchmarks/bench_dit.py cpu-step --reference-src /path/to/ideogram4/src
                                                          # one denoising step, ours vs the reference, CPU
    python benchmarks/bench_dit.py gpu                    # full-size 34-layer model, random weights, CUDA

``load-memory`` writes a synthetic checkpoint (reduced width, real layout) in each format and loads
it in a fresh subprocess, printing the peak RSS increase over the process baseline.
``gpu`` builds the full-size DiT with random weights directly on the GPU (no files) in bf16, fp8
and nf4 and times one step (conditional + unconditional pass) at 1024² and 2048².
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from model import DiTConfig, Ideogram4DiT, load_transformer  # noqa: E402
from model.dit import expected_shapes  # noqa: E402
from model.checkpoints import NF4_CODE, QuantizedLinear, quantize_fp8_rowwise, quantize_nf4  # noqa: E402
from sampling import sample  # noqa: E402
from benchmarks.proc_status import proc_status  # noqa: E402


def _status_mb(field: str) -> float:
    return proc_status(field)[field] / 2**20


def _load_child(path: str) -> None:
    """Subprocess body: report baseline and peak RSS around load_transformer."""
    import gc
    gc.collect()
    base = _status_mb("VmRSS")
    t0 = time.perf_counter()
    model = load_transformer(path, dtype=torch.bfloat16)
    dt = time.perf_counter() - t0
    tensors = list(model.parameters()) + list(model.buffers())
    held = sum(t.numel() * t.element_size() for t in tensors) / 2**20
    peak_load = _status_mb("VmHWM")
    # Safetensors tensors are file-backed until touched: touch every byte (as a forward would) and
    # measure again, to show there is still no second copy.
    for t in tensors:
        t.reshape(-1).view(torch.uint8).max()  # reads every byte, allocates nothing big
    print(json.dumps({"baseline_mb": base, "peak_mb": peak_load, "touched_mb": _status_mb("VmHWM"),
                      "model_mb": held, "seconds": dt}))


def bench_load_memory(args) -> None:
    from tools.make_test_checkpoints import convert, random_state_dict, write_file
    cfg = DiTConfig(emb_dim=args.width, num_layers=args.layers, num_heads=args.width // 256,
                    intermediate_size=args.width * 8 // 3 // 64 * 64, adaln_dim=512)
    sd = random_state_dict(cfg, 0)
    with tempfile.TemporaryDirectory() as tmp:
        print(f"config: width {cfg.emb_dim}, {cfg.num_layers} layers, text width {cfg.llm_features_dim}")
        for fmt in args.formats:
            path = write_file(convert(sd, fmt), Path(tmp) / f"{fmt}.safetensors", fmt)
            size = path.stat().st_size / 2**20
            out = subprocess.run([sys.executable, __file__, "_load-child", str(path)], capture_output=True, text=True,
                                 check=True)
            r = json.loads(out.stdout.strip().splitlines()[-1])
            extra = r["peak_mb"] - r["baseline_mb"]
            touched = r["touched_mb"] - r["baseline_mb"]
            print(f"{fmt:10s} file {size:7.1f} MiB | load {r['seconds']:.2f} s | peak RSS over baseline while loading "
                  f"{extra:7.1f} MiB ({extra / size:.2f}x file), after touching every weight {touched:7.1f} MiB "
                  f"({touched / size:.2f}x file) | weights held {r['model_mb']:7.1f} MiB")
            path.unlink()


def bench_cpu_step(args) -> None:
    torch.set_num_threads(args.threads)
    cfg = DiTConfig(emb_dim=args.width, num_layers=args.layers, num_heads=args.width // 256,
                    intermediate_size=args.width * 8 // 3 // 64 * 64, adaln_dim=512, llm_features_dim=13 * 256)
    from tools.make_test_checkpoints import random_state_dict
    sd = {k: v.to(torch.bfloat16) for k, v in random_state_dict(cfg, 0).items()}
    with torch.device("meta"):
        ours = Ideogram4DiT(cfg, dtype=torch.bfloat16)
    ours.load_state_dict(sd, assign=True)
    gh = gw = args.res // 16
    n_txt = args.text_tokens
    feats = torch.randn(1, n_txt, cfg.llm_features_dim)
    x, t = torch.randn(1, gh * gw, 128), torch.tensor([0.5])

    def step_ours():
        ours(x, t, feats, grid_hw=(gh, gw))
        ours(x, t, None, grid_hw=(gh, gw))

    def timeit(fn):
        fn()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            fn()
        return (time.perf_counter() - t0) / args.repeats

    with torch.no_grad():
        ours_s = timeit(step_ours)
        print(f"config: width {cfg.emb_dim}, {cfg.num_layers} layers, {args.res}² ({gh * gw} image + {n_txt} text tokens), "
              f"bf16, {args.threads} threads")
        print(f"ours      : {ours_s:.3f} s / step (cond + image-only uncond)")
        if args.reference_src:
            sys.path.insert(0, args.reference_src)
            from ideogram4.modeling_ideogram4 import Ideogram4Config, Ideogram4Transformer
            ref = Ideogram4Transformer(Ideogram4Config(
                emb_dim=cfg.emb_dim, num_layers=cfg.num_layers, num_heads=cfg.num_heads,
                intermediate_size=cfg.intermediate_size, adanln_dim=cfg.adaln_dim,
                llm_features_dim=cfg.llm_features_dim))
            ref.load_state_dict(sd)
            ref = ref.to(torch.bfloat16).eval()
            L = n_txt + gh * gw
            r = torch.arange(gh).repeat_interleave(gw)
            c = torch.arange(gw).repeat(gh)
            img_pos = torch.stack([torch.zeros_like(r), r, c], 1) + 65536
            k = torch.arange(n_txt)
            pos = torch.cat([torch.stack([k, k, k], 1), img_pos])[None]
            ind = torch.cat([torch.full((n_txt,), 3), torch.full((gh * gw,), 2)])[None]
            full_feats = torch.cat([feats, torch.zeros(1, gh * gw, cfg.llm_features_dim)], 1)
            xx = torch.cat([torch.zeros(1, n_txt, 128), x], 1)

            def step_ref():
                ref(llm_features=full_feats, x=xx, t=t, position_ids=pos, segment_ids=torch.ones(1, L, dtype=torch.long),
                    indicator=ind)
                ref(llm_features=torch.zeros(1, gh * gw, cfg.llm_features_dim), x=x, t=t, position_ids=img_pos[None],
                    segment_ids=torch.ones(1, gh * gw, dtype=torch.long), indicator=torch.full((1, gh * gw), 2))
            ref_s = timeit(step_ref)
            print(f"reference : {ref_s:.3f} s / step  → ours is {ref_s / ours_s:.2f}x the reference's speed")


def _random_full_model(fmt: str, device: str) -> Ideogram4DiT:
    """Full-size DiT with random weights created on the device (no files): bf16, fp8 or nf4."""
    cfg = DiTConfig()
    with torch.device("meta"):
        model = Ideogram4DiT(cfg, dtype=torch.bfloat16)
    shapes = expected_shapes(cfg)
    for name, module in list(model.named_modules()):
        if isinstance(module, torch.nn.Linear) and fmt != "bf16":
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            scheme = "fp8_rowwise" if fmt == "fp8" else "nf4"
            q = QuantizedLinear(module.in_features, module.out_features, bias=module.bias is not None, scheme=scheme,
                                device=device, dtype=torch.bfloat16)
            w = torch.randn(module.out_features, module.in_features, device=device, dtype=torch.bfloat16) * 0.02
            if scheme == "nf4":
                packed, absmax = quantize_nf4(w)
                q.weight.data, q.absmax, q.quant_map = packed, absmax, torch.tensor(NF4_CODE, device=device)
            else:
                q.weight.data, q.weight_scale = quantize_fp8_rowwise(w)
            del w
            if q.bias is not None:
                q.bias.data = torch.zeros(module.out_features, device=device, dtype=torch.bfloat16)
            setattr(parent, leaf, q)
    for name, p in list(model.named_parameters()):
        if p.is_meta:
            parent_name, _, leaf = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            value = torch.randn(shapes[name], device=device, dtype=torch.bfloat16) * 0.02
            if leaf == "weight" and value.ndim == 1:
                value = torch.ones_like(value)
            parent._parameters[leaf] = torch.nn.Parameter(value, requires_grad=False)
    return model.eval()


def bench_gpu(args) -> None:
    if not torch.cuda.is_available():
        sys.exit("gpu: no CUDA device")
    dev = "cuda"
    print(torch.cuda.get_device_name(0))
    for fmt in args.formats:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        cond = _random_full_model(fmt, dev)
        uncond = _random_full_model(fmt, dev)
        weights_gb = torch.cuda.memory_allocated() / 1e9
        for res in args.resolutions:
            feats = torch.randn(1, args.text_tokens, DiTConfig().llm_features_dim, device=dev)
            torch.cuda.reset_peak_memory_stats()
            steps = 3
            sample(cond, uncond, feats, height=res, width=res, steps=1, mu=0.0, std=1.75, guidance=7.0, seed=0)  # warm-up
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            sample(cond, uncond, feats, height=res, width=res, steps=steps, mu=0.0, std=1.75, guidance=7.0, seed=0)
            torch.cuda.synchronize()
            per_step = (time.perf_counter() - t0) / steps
            print(f"{fmt:5s} {res}²: {per_step:.3f} s/step (cond+uncond, {args.text_tokens} text tokens) | "
                  f"weights {weights_gb:.1f} GB | peak VRAM {torch.cuda.max_memory_allocated() / 1e9:.1f} GB | "
                  f"Default-20 ≈ {20 * per_step:.1f} s")
        del cond, uncond


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "_load-child":
        return _load_child(sys.argv[2])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("load-memory")
    a.add_argument("--width", type=int, default=1536)
    a.add_argument("--layers", type=int, default=12)
    a.add_argument("--formats", nargs="+", default=["bf16", "fp8", "nf4", "diffusers"])
    b = sub.add_parser("cpu-step")
    b.add_argument("--width", type=int, default=1024)
    b.add_argument("--layers", type=int, default=4)
    b.add_argument("--res", type=int, default=512)
    b.add_argument("--text-tokens", type=int, default=128)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--repeats", type=int, default=3)
    b.add_argument("--reference-src", help="path to the official reference's src/ (optional comparison)")
    c = sub.add_parser("gpu")
    c.add_argument("--formats", nargs="+", default=["bf16", "fp8", "nf4"])
    c.add_argument("--resolutions", nargs="+", type=int, default=[1024, 2048])
    c.add_argument("--text-tokens", type=int, default=512)
    args = ap.parse_args()
    {"load-memory": bench_load_memory, "cpu-step": bench_cpu_step, "gpu": bench_gpu}[args.cmd](args)


if __name__ == "__main__":
    main()
