"""Every GPU check of the speed/VRAM work in one run (``benchmarks/gpu_check.sh`` calls this).

Sections (each prints a table; ``--json`` writes everything):

1. ``speed``   — s/step (one conditional + one image-only unconditional forward, steady state inside a
   sampling run) and peak VRAM (``max_memory_allocated``, no ballast tensor) per format: bf16, fp8 exact,
   fp8 fast (opt-in ``_scaled_mm``), nf4, Comfy fp8_scaled; at 1024² and 2048².  Real-size (34 × 4608)
   random weights generated on the GPU; the same weights serve both passes (the pair's second model only
   changes residency, which section 2 plans).  Attention backend and a per-kernel breakdown (torch
   profiler, top CUDA kernels of one bf16 step) are printed.
2. ``plan``    — the memory plan (``nodes.host.memory_policy``) for the real checkpoint sizes under 24, 16 and
   12 GB caps, with the decode-temporary estimate of this machine (bitsandbytes kernel or not).
3. ``parity``  — CUDA vs the CPU goldens of ``tests/data/dit_golden.safetensors`` (tiny model, fp32 and bf16),
   with the stated tolerances (fp32: 1e-4 relative, TF32 off; bf16: 3e-2 relative — different kernels and
   summation orders; the CPU goldens are bit-exact only on the CPU kernel family that recorded them, and two
   families differ by 4e-3 in bf16, see tests/kernel_family.py).
4. ``gemm``    — the bf16 GEMM rate this GPU reaches (the "bf16 limit" of the targets).
5. ``attention`` — the DiT's SDPA call at the real shapes under each SDPA backend (flash, cuDNN, memory-efficient,
   math): ms, TFLOP/s, difference from the default and which one the default is; a padded batch with its mask.

Ours vs ComfyUI core's model on the same GPU is ``bench_vs_core.py``, a step of ``gpu_check.sh`` of its own.

They run quick ones first (plan, parity, GEMM, attention, then speed); ``--json`` is rewritten after every section
and every speed row, and a section or format that fails is reported and skipped, so a run stopped by its time limit
or by one broken kernel keeps everything else it measured.

``--cpu-smoke``: a 2-layer 512-wide model at 256² on the CPU, one timed step — checks the code paths only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]

FORMATS = ("bf16", "fp8", "fp8_fast", "nf4", "fp8_scaled")
GiB = 1024 ** 3


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--sections", default="speed,plan,parity,gemm,attention")
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--sizes", default="1024,2048")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per format and size (after one warm-up)")
    ap.add_argument("--text-tokens", type=int, default=512)
    ap.add_argument("--json", type=Path)
    return ap.parse_args(argv)


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def speed(args, device, out):
    import torch

    from model.dit.config import DiTConfig
    from model.checkpoints.fp8_matmul import kernel_available

    cfg = (DiTConfig(emb_dim=512, num_layers=2, num_heads=2, intermediate_size=1024, adaln_dim=64,
                     llm_features_dim=13 * 64) if args.cpu_smoke else DiTConfig())
    sizes = [256] if args.cpu_smoke else [int(s) for s in args.sizes.split(",")]
    n_txt = 16 if args.cpu_smoke else args.text_tokens
    cuda = device.type == "cuda"
    print(f"\n== speed: {cfg.num_layers}×{cfg.emb_dim}, {n_txt} text tokens, {device}"
          f"{' (' + torch.cuda.get_device_name() + ')' if cuda else ''}")
    if cuda:
        print(f"   attention: F.scaled_dot_product_attention; SDPA backends enabled: flash "
              f"{torch.backends.cuda.flash_sdp_enabled()}, cudnn {torch.backends.cuda.cudnn_sdp_enabled()}, "
              f"mem-efficient {torch.backends.cuda.mem_efficient_sdp_enabled()} (the kernel that ran is in the "
              f"profile below); fp8 _scaled_mm rowwise: {kernel_available()}")
    from model.checkpoints import fp8_fused

    out["fp8_decode"] = fp8_fused.decode_note(device)  # compiles and probes here, not inside the fp8 row's timing
    print(f"   {out['fp8_decode']} (fp8 exact and fp8_scaled rows)")
    from model.checkpoints.fp8_activations import quantize_note

    out["fp8_quantize"] = quantize_note(device)  # likewise for the fast fp8 row's activation quantisation
    print(f"   {out['fp8_quantize']} (fp8 fast row)")
    rows = out["speed"] = []
    for fmt in [f for f in args.formats.split(",") if f]:
        try:
            _speed_rows(args, device, cfg, sizes, n_txt, fmt, rows, out)
        except Exception as exc:  # noqa: BLE001 - a figure per format; one failure must not hide the rest
            rows.append({"format": fmt, "error": f"{type(exc).__name__}: {exc}"})
            print(f"   {fmt:10s} FAILED: {type(exc).__name__}: {exc}")
        if cuda:
            torch.cuda.empty_cache()
        out.save()


def _speed_rows(args, device, cfg, sizes, n_txt, fmt, rows, out):
    """Build one real-size model in ``fmt`` and time it at each size; each row is saved as soon as it is measured."""
    import torch

    from model.checkpoints import ops
    import model.checkpoints as ck
    from bench_families import time_forward
    from model.dit import Ideogram4DiT
    from random_models import random_dit

    cuda = device.type == "cuda"
    t0 = time.perf_counter()
    model, _ = random_dit(Ideogram4DiT, cfg, fmt, ck=ck, operations=ops.TorchOps, device=device)
    sync(device)
    build = time.perf_counter() - t0
    weights = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    for size in sizes:
        s_per_step = time_forward(model, device, size, n_txt, args.steps,
                                  after_warmup=torch.cuda.reset_peak_memory_stats if cuda else None)
        peak = torch.cuda.max_memory_allocated() / GiB if cuda else float("nan")
        row = {"format": fmt, "size": size, "s_per_step": s_per_step, "peak_vram_gib": peak,
               "weights_gib": weights / GiB, "build_s": build}
        rows.append(row)
        out.save()
        print(f"   {fmt:10s} {size:5d}²: {row['s_per_step']:7.3f} s/step | peak {peak:6.2f} GiB "
              f"(weights {weights / GiB:5.2f} GiB) | built in {build:.1f} s")
    if cuda and fmt == "bf16" and not args.cpu_smoke:
        kernels(model, cfg, n_txt, device)


def kernels(model, cfg, n_txt, device):
    import torch
    from torch.profiler import ProfilerActivity, profile

    gh = gw = 64
    x = torch.randn(1, gh * gw, 128, device=device)
    feats = torch.randn(1, n_txt, cfg.llm_features_dim, device=device)
    t = torch.tensor([0.5], device=device)
    with torch.no_grad(), model.sampling_run():
        model(x, t, feats, grid_hw=(gh, gw))
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            model(x, t, feats, grid_hw=(gh, gw))
            model(x, t, None, grid_hw=(gh, gw))
            torch.cuda.synchronize()
    print("   per-kernel breakdown (bf16, 1024², one step):")
    print("\n".join("     " + l for l in prof.key_averages().table(sort_by="cuda_time_total", row_limit=12).splitlines()))


def plan(args, device, out):
    from model.checkpoints.nf4 import NF4_CHUNK_TEMP_BYTES, bitsandbytes_decodes
    from nodes.host.memory_policy import ComfyMemoryConstants, ModelSize, activation_bytes, decode_temp_bytes, plan_memory
    from test_memory_policy import BF16, FP8, FULL, NF4, _full_size_linears_by_stage

    kernel = device.type == "cuda" and bitsandbytes_decodes("cuda")
    stages = _full_size_linears_by_stage()  # (blocks, text projection): their decodes peak at different times
    print(f"\n== memory plan (real checkpoint sizes; nf4 decode kernel: {kernel})")
    rows = []
    for name, sizes, kind in (("bf16", BF16, "linear"), ("fp8", FP8, "fp8"), ("nf4", NF4, "nf4")):
        blocks, text = (decode_temp_bytes([(kind, n) for n in linears], act_bytes=2, nf4_kernel=kernel,
                                          nf4_chunk_temp=NF4_CHUNK_TEMP_BYTES) for linears in stages)
        for px, n_img in ((1024, 4096), (2048, 16384)):
            act = activation_bytes(1, n_img, 512, **FULL, dequant_bytes=blocks, text_dequant_bytes=text)
            for cap in (24, 16, 12):
                p = plan_memory([ModelSize("conditional", sizes[0]), ModelSize("unconditional", sizes[1])],
                                int((cap - 0.6) * GiB), act, ComfyMemoryConstants())
                rows.append({"format": name, "size": px, "cap_gib": cap, "mode": p.mode,
                             "streamed_gib": p.streamed_per_step / GiB, "reserve_gib": p.reserve / GiB})
                print(f"   {name:5s} {px}² {cap:2d} GB: {p.mode:8s} streamed/step {p.streamed_per_step / GiB:6.2f} GiB"
                      f" | reserve {p.reserve / GiB:5.2f} GiB")
    out["plan"] = rows


def parity(args, device, out):
    import torch

    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False  # fp32 goldens: no TF32
    try:
        return _parity(args, device, out)
    finally:  # the speed sections after this one run with the process's own settings
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _parity(args, device, out):
    import tempfile

    import torch
    from safetensors.torch import load_file

    from model import load_transformer
    from tools.make_test_checkpoints import convert, parity_inputs as _inputs, random_state_dict, tiny_config, write_file

    golden = load_file(str(ROOT / "tests" / "data" / "dit_golden.safetensors"))
    cfg = tiny_config()
    tol = {"fp32": 1e-4, "bf16": 3e-2}
    rows = []
    print(f"\n== parity on {device} vs the CPU goldens (tolerances: {tol}, relative to max |golden|)")
    with tempfile.TemporaryDirectory() as tmp:
        paths = [write_file(convert(random_state_dict(cfg, s), "fp32"), Path(tmp) / f"{s}.safetensors", "fp32")
                 for s in (0, 1)]
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            cond = load_transformer(paths[0], dtype=dtype, device=device)
            uncond = load_transformer(paths[1], dtype=dtype, device=device)
            feats, x = _inputs(10, [7], 15, cfg.llm_features_dim)
            pf, px = _inputs(11, [7, 4], 15, cfg.llm_features_dim)
            t = torch.tensor([0.8989259], device=device)
            with torch.no_grad():
                got = {"cond": cond(x.to(device), t, feats.to(device), grid_hw=(3, 5)),
                       "uncond": uncond(x.to(device), t, None, grid_hw=(3, 5)),
                       "padded": cond(px.to(device), torch.tensor([0.3, 0.7], device=device), pf.to(device),
                                      grid_hw=(3, 5), text_lengths=[7, 4])}
            for case, v in got.items():
                ref = golden[f"{name}.{case}"]
                err = float((v.cpu() - ref).abs().max() / ref.abs().max())
                ok = err <= tol[name]
                rows.append({"dtype": name, "case": case, "rel_err": err, "tol": tol[name], "ok": ok})
                print(f"   {name} {case:7s}: rel err {err:.2e} (tol {tol[name]:.0e}) {'OK' if ok else 'FAIL'}")
    out["parity"] = rows
    return all(r["ok"] for r in rows)


def gemm_peak(args, device, out, n: int = 8192, repeats: int = 10):
    """The bf16 matmul rate this GPU reaches (an n³ GEMM; FLOP/s), the "bf16 limit" the targets judge the step
    against beside the data-sheet peak (an H200 measured ≈ 790 of its 989 TFLOP/s here)."""
    import torch

    if device.type != "cuda":
        n, repeats = 512, 2  # the code path only
    a, b = (torch.randn(n, n, device=device, dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    rate = 2 * n ** 3 * repeats / (time.perf_counter() - t0)
    out["bf16_gemm_flops"] = rate
    print(f"\n== bf16 GEMM {n}³ on {device}: {rate / 1e12:.1f} TFLOP/s")


ATTENTION_BACKENDS = ("default", "FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH")


def attention(args, device, out, repeats: int = 10):
    """The DiT's SDPA call at the real shapes (18 heads × 256, the conditional pass: image + 512 text tokens) under
    each SDPA backend torch has: seconds, TFLOP/s (4·H·L²·D), the max |difference| from the default backend's
    output relative to its max, and which backend the default is (the one whose output it equals bit for bit);
    then a padded batch of two with the bool mask the DiT builds for it (flash takes no mask)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    heads, dim = (2, 256) if args.cpu_smoke else (18, 256)
    sizes = [256] if args.cpu_smoke else [int(s) for s in args.sizes.split(",")]
    n_txt = 16 if args.cpu_smoke else args.text_tokens
    rows = out["attention"] = []
    print(f"\n== attention (F.scaled_dot_product_attention, bf16, {heads} heads × {dim}) on {device}")

    def run(q, k, v, mask, backend):
        ctx = sdpa_kernel([getattr(SDPBackend, backend)]) if backend != "default" else contextlib.nullcontext()
        with ctx, torch.no_grad():
            o = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # also the warm-up
            sync(device)
            t0 = time.perf_counter()
            for _ in range(repeats):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            sync(device)
        return o, (time.perf_counter() - t0) / repeats

    cases = [(size, False) for size in sizes] + [(sizes[0], True)]
    for size, padded in cases:
        length = (size // 16) ** 2 + n_txt
        batch = 2 if padded else 1
        q, k, v = (torch.randn(batch, heads, length, dim, device=device, dtype=torch.bfloat16) for _ in range(3))
        mask = None
        if padded:  # the second sample's caption is 100 tokens shorter: the DiT's segment mask (padding apart)
            seg = torch.zeros(batch, length, dtype=torch.long, device=device)
            seg[1, -100:] = 1
            mask = (seg.unsqueeze(2) == seg.unsqueeze(1)).unsqueeze(1)
        flops = 4 * batch * heads * length * length * dim
        ref = None
        for backend in ATTENTION_BACKENDS:
            if backend == "MATH" and device.type == "cuda" and length > 8192:
                continue  # materialises the L² scores: seconds, and nobody runs it
            label = f"{size}²{' padded ×2' if padded else ''}"
            try:
                o, secs = run(q, k, v, mask, backend)
            except Exception as exc:  # noqa: BLE001 - a backend this GPU / build lacks
                why = (str(exc).splitlines() or [""])[0].split(". ")[0][:100]
                print(f"   {label:16s} {backend:20s} unavailable ({type(exc).__name__}: {why})")
                rows.append({"size": size, "padded": padded, "backend": backend, "error": f"{type(exc).__name__}: {why}"})
                continue
            if padded:  # rows of padding tokens are thrown away by the DiT: not compared
                o = o.clone()
                o[1, :, -100:] = 0
            if ref is None:
                ref = o
            diff = float((o.float() - ref.float()).abs().max() / ref.float().abs().max())
            rows.append({"size": size, "padded": padded, "backend": backend, "s": secs, "tflops": flops / secs / 1e12,
                         "rel_diff_vs_default": diff, "equals_default": bool(torch.equal(o, ref))})
            print(f"   {label:16s} {backend:20s} {secs * 1e3:8.2f} ms {flops / secs / 1e12:7.1f} TFLOP/s"
                  f" | vs default {diff:.1e}{' (bit-identical)' if backend != 'default' and torch.equal(o, ref) else ''}")


class Results(dict):
    """What the run measured; written to ``--json`` after every section and every speed row, so a run stopped by
    its time limit keeps what it had measured."""

    def __init__(self, path, **fields):
        super().__init__(**fields)
        self.path = path

    def save(self):
        if self.path:
            self.path.write_text(json.dumps(self, indent=2))


def main(argv=None):
    args = parse_args(argv)
    import torch

    device = torch.device("cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda")
    if device.type == "cpu" and not args.cpu_smoke:
        sys.exit("no CUDA device: use --cpu-smoke for the code-path check")
    print(f"torch {torch.__version__}, device {device}")
    out = Results(args.json, device=str(device), torch=torch.__version__,
                  gpu=torch.cuda.get_device_name() if device.type == "cuda" else "")
    wanted = [s for s in args.sections.split(",") if s]
    ok = True
    # quick sections first: the long speed section must not keep the plan and the parity from being reported
    for name, section in (("plan", plan), ("parity", parity), ("gemm", gemm_peak), ("attention", attention),
                          ("speed", speed)):
        if name not in wanted:
            continue
        try:
            ok = section(args, device, out) is not False and ok
        except Exception as exc:  # noqa: BLE001 - one broken section must not hide the others
            ok = False
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"!! section {name} failed: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        out.save()
    sys.exit(0 if ok else 1)

if __name__ == "__main__":
    main()
