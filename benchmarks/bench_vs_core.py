"""Ours vs ComfyUI core's own Ideogram 4 model (``comfy/ldm/ideogram4``): same weights, same device, one run.

Prints, for one conditional + one unconditional (image-only) forward:

* seconds of ours (steady state inside a sampling run: the text projection, RoPE tables and mask are
  cached per run, as in sampling) and of core's model, and the ratio ours / core (target ≤ 0.9);
* ours with core's attention kernel for this device forced through a per-model attention override
  (``transformer_options["optimized_attention_override"]``, what attention-patch nodes do) — on the CPU
  ComfyUI's default is its sub-quadratic kernel, which is not the reference's SDPA;
* the max |ours − core| of the velocities at t = 0.5, relative to max |core|, with our exact kernel and with
  core's (Intel Xeon AMX, defaults: conditional pass 4.8e-2, image-only pass 7.4e-3, the same with either
  kernel; the text projection is identical — where the conditional pass's extra gap comes from in core was
  not isolated, ours equals the reference's goldens).  At a t that
  bf16 cannot represent the two differ completely: the reference (and ours) rounds t to bf16 before the
  1e4-scaled sinusoid, core's ``Ideogram4EmbedScalar`` does not (t = 0.4: 96 % relative difference of the
  time embedding, measured with forward hooks);
* where the time goes, from one profiled forward of each (``torch.profiler``): the linear layers' GEMMs
  (``aten::mm`` / ``aten::addmm`` outside attention), attention (everything inside the attention kernel,
  timed through a pass-through ``optimized_attention_override``) and the rest, and the **GEMM floor**: core's
  GEMM time over core's forward, the ratio ours would reach if its GEMMs ran as fast as core's (the same
  kernel on the same weights) and it spent no time outside them — a ratio target below that floor cannot be
  met on that device;
* aten ops dispatched per transformer block (``TorchDispatchMode``) for ours in bf16 / fp8 / nf4 and for core.

Both models use ComfyUI's operations (``comfy.ops.disable_weight_init``; ours: ``ComfyOps``).  Weights are
random, and by default the real block (4608 wide: 18 heads of 256, FFN 12288, text width 53248) in two layers;
``--width`` / ``--layers`` set others (a narrower model has fewer heads and smaller GEMMs, so attention and the
per-op overhead weigh more than in the real one).  The three timed forwards run interleaved, so a machine whose
speed drifts shifts them alike.  Nothing is downloaded.

    python benchmarks/bench_vs_core.py --comfyui /work/comfyui --size 512 -- --cpu
    python benchmarks/bench_vs_core.py --comfyui ~/ComfyUI --full --size 1024 -- --gpu-only   # on a GPU
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_comfyui import PACKAGE, import_comfy  # noqa: E402
from random_models import random_dit  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"))
    ap.add_argument("--width", type=int, default=4608, help="emb_dim (multiple of 256; default: the real 4608)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=0, help="FFN width (default 8/3 · width)")
    ap.add_argument("--text-dim", type=int, default=53248)
    ap.add_argument("--full", action="store_true", help="the real 34 × 4608 configuration")
    ap.add_argument("--size", type=int, default=512, help="square image size in pixels")
    ap.add_argument("--text-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--ops-only", action="store_true", help="only count aten ops (tiny width)")
    ap.add_argument("--formats", default="bf16,fp8,nf4", help="formats for the op counts")
    ap.add_argument("--json", type=Path)
    ap.add_argument("comfy_args", nargs="*")
    return ap.parse_args(argv)


def config(args, cfg_mod):
    if args.full:
        return cfg_mod.DiTConfig()
    inter = args.intermediate or (args.width * 8 // 3 // 256) * 256
    return cfg_mod.DiTConfig(emb_dim=args.width, num_layers=args.layers, num_heads=args.width // 256,
                             intermediate_size=inter, llm_features_dim=args.text_dim)


def build_pair(cfg, fmt: str, seed: int = 0, device="cpu"):
    """(ours with ComfyOps, core's model — bf16 only) on ``device`` with the same random weights."""
    import torch
    import comfy.ops
    from comfy.ldm.ideogram4.model import Ideogram4Transformer2DModel

    cm = importlib.import_module(f"{PACKAGE}.nodes.host.comfy_model")
    dit_mod = importlib.import_module(f"{PACKAGE}.model.dit")
    ck = importlib.import_module(f"{PACKAGE}.model.checkpoints")
    ours, sd = random_dit(dit_mod.Ideogram4DiT, cfg, fmt, ck=ck, operations=cm.ComfyOps, seed=seed, device=device)
    core = None
    if sd is not None:
        core = Ideogram4Transformer2DModel(
            num_layers=cfg.num_layers, num_attention_heads=cfg.num_heads, attention_head_dim=cfg.head_dim,
            intermediate_size=cfg.intermediate_size, adaln_dim=cfg.adaln_dim, llm_features_dim=cfg.llm_features_dim,
            dtype=torch.bfloat16, device="meta", operations=comfy.ops.disable_weight_init)
        missing, unexpected = core.load_state_dict(sd, strict=False, assign=True)
        if missing or unexpected:
            sys.exit(f"core's model does not take our weights: missing {missing[:5]}, unexpected {unexpected[:5]}")
        core.eval().requires_grad_(False)
    return ours, core


class OpCounter:
    def __init__(self, fused_attention=False):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        outer = self
        self.counts = collections.Counter()
        self.paused = False

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = str(func.overloadpacket)
                if not outer.paused and not name.startswith("prim."):
                    outer.counts[name] += 1
                return func(*args, **(kwargs or {}))

        self.mode = Mode()
        self.sdpa = None
        if fused_attention:
            original = torch.nn.functional.scaled_dot_product_attention

            def sdpa(*a, **k):  # one fused kernel on a GPU
                outer.counts["scaled_dot_product_attention (fused)"] += 1
                outer.paused = True
                try:
                    return original(*a, **k)
                finally:
                    outer.paused = False

            self.sdpa = (original, sdpa)

    def hook(self, block):
        import torch

        orig = block.forward

        def forward(*a, **k):
            if self.sdpa:
                torch.nn.functional.scaled_dot_product_attention = self.sdpa[1]
            try:
                with self.mode:
                    return orig(*a, **k)
            finally:
                if self.sdpa:
                    torch.nn.functional.scaled_dot_product_attention = self.sdpa[0]

        block.forward = forward
        return lambda: setattr(block, "forward", orig)


def inputs(cfg, args, gh, gw):
    import torch

    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, 128, gh, gw, generator=g)
    feats = torch.randn(1, args.text_tokens, cfg.llm_features_dim, generator=g)
    return x, feats, torch.tensor([0.5])  # t = 0.5 is exact in bf16 (see the module docstring)


def ours_step(ours, x, feats, sigma, opts):
    lat = importlib.import_module(f"{PACKAGE}.model.vae.latents")
    gh, gw = x.shape[-2:]
    tokens = lat.comfy_to_tokens(x)
    t = 1 - sigma
    v = ours(tokens, t, feats, grid_hw=(gh, gw), transformer_options=opts)
    u = ours(tokens, t, None, grid_hw=(gh, gw), transformer_options=opts)
    return lat.tokens_to_comfy(v, gh, gw), lat.tokens_to_comfy(u, gh, gw)


def core_step(core, x, feats, sigma, opts=None):
    """Core's model as its BaseModel calls it: inputs in the model dtype, output −v."""
    import torch

    x, feats = x.to(torch.bfloat16), feats.to(torch.bfloat16)
    return (-core(x, sigma, context=feats, transformer_options=dict(opts or {})).float(),
            -core(x, sigma, context=None, transformer_options=dict(opts or {})).float())


def gpu_attention_override():
    """A per-model attention override that sends core's attention to ComfyUI's SDPA kernel, the one it runs on a
    GPU (on fake CUDA tensors ComfyUI still picks its CPU kernel, which asks the device for free memory)."""
    import comfy.ldm.modules.attention as comfy_attention

    return {"optimized_attention_override": lambda _func, *a, **k: comfy_attention.attention_pytorch(*a, **k)}


GEMMS = ("aten::mm", "aten::addmm")
ATTENTION_RANGE = "bench_vs_core.attention"


def attention_range_override():
    """A pass-through per-model attention override that marks each attention call as a profiler range."""
    import torch

    def override(func, *a, **k):
        with torch.profiler.record_function(ATTENTION_RANGE):
            return func(*a, **k)

    return {"optimized_attention_override": override}


def split_time(events, device_time: bool) -> dict:
    """Seconds in the linear GEMMs (``GEMMS`` outside an attention range, self time) and in attention (the
    ranges, inclusive) from profiler events (``FunctionEvent``: ``name``, ``cpu_parent``, ``*_time_total`` in
    µs); ``device_time``: the kernels' time on the device instead of the host's."""
    from torch.autograd import DeviceType

    def inside_attention(e):
        p = e.cpu_parent
        while p is not None:
            if p.name == ATTENTION_RANGE:
                return True
            p = p.cpu_parent
        return False

    gemm = attention = 0.0
    for e in events:
        if e.device_type != DeviceType.CPU:
            continue  # the device's copy of a range (gpu_user_annotation): its host event already counts the kernels
        if e.name == ATTENTION_RANGE and not inside_attention(e):
            attention += e.device_time_total if device_time else e.cpu_time_total
        elif e.name in GEMMS and not inside_attention(e):
            gemm += e.self_device_time_total if device_time else e.self_cpu_time_total
    return {"gemm_s": gemm / 1e6, "attention_s": attention / 1e6}


def profiled(fn, sync, device) -> dict:
    """One forward under ``torch.profiler``: its wall time and :func:`split_time`; the rest is what is left."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        t0 = time.perf_counter()
        fn()
        sync()
        wall = time.perf_counter() - t0
    out = {"wall_s": wall, **split_time(prof.events(), device_time=cuda)}
    if out["gemm_s"] <= 0:  # e.g. CUPTI unavailable: no kernel times, so no split to report
        return {"error": f"the profiler recorded no GEMM time on {device.type}"}
    out["rest_s"] = max(0.0, wall - out["gemm_s"] - out["attention_s"])
    return out


def timed(fn, repeats):
    return timed_interleaved([fn], repeats)[0]


def timed_interleaved(fns, repeats):
    """Median seconds of each of ``fns``, run in turn ``repeats`` times after one warm-up each (which also fills
    ours' per-run cache): a machine that slows down or speeds up mid-run shifts them all alike."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [statistics.median(ts) for ts in times]


def count_ops(cfg, args, fmt, fake_cuda=False):
    """aten ops dispatched per block (cond + uncond pass, halved).  ``fake_cuda``: the same forward on fake CUDA
    tensors (``FakeTensorMode``; needs a CUDA build of torch, no GPU), where torch dispatches ``F.rms_norm`` to its
    fused CUDA kernel; metadata queries (``prim.*``) are not counted and attention counts as the one fused kernel a
    GPU runs (fake devices report no flash support, so SDPA would otherwise unfold into its math ops; core's
    attention is sent to ComfyUI's SDPA kernel, as on a GPU: :func:`gpu_attention_override`)."""
    import contextlib

    ours, core = build_pair(cfg, fmt)
    gh = gw = max(2, args.size // 16)
    x, feats, sigma = inputs(cfg, args, gh, gw)
    fake = contextlib.nullcontext()
    if fake_cuda:
        from torch._subclasses.fake_tensor import FakeTensorMode

        fake = FakeTensorMode(allow_non_fake_inputs=True)
    res = {}
    for name, model in (("ours", ours), ("core", core)):
        if model is None:
            continue
        counter = OpCounter(fused_attention=fake_cuda)
        try:
            _run_counted(counter, name, model, fake, fake_cuda, x, feats, sigma)
        except Exception as exc:  # noqa: BLE001 - a figure, not a check (core asks CUDA for memory stats)
            res[name] = f"n/a ({type(exc).__name__}: {exc})"
            continue
        res[name] = sum(counter.counts.values()) // 2  # two passes through the block
    return res


def _run_counted(counter, name, model, fake, fake_cuda, x, feats, sigma):
    import torch

    with fake:
        if fake_cuda:
            model, x, feats, sigma = model.to("cuda"), x.to("cuda"), feats.to("cuda"), sigma.to("cuda")
        undo = counter.hook(model.layers[0])
        try:
            with torch.no_grad():
                if name == "ours":
                    with model.sampling_run():
                        ours_step(model, x, feats, sigma, {})
                else:
                    core_step(model, x, feats, sigma, gpu_attention_override() if fake_cuda else None)
        finally:
            undo()


def main(argv=None):
    args = parse_args(argv)
    import_comfy(args.comfyui, args.comfy_args)
    import torch
    import comfy.ldm.modules.attention as comfy_attention
    import comfy.model_management as mm

    ca = importlib.import_module(f"{PACKAGE}.nodes.host.comfy_attention")
    cfg_mod = importlib.import_module(f"{PACKAGE}.model.dit.config")
    device = mm.get_torch_device()
    out = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads()}
    ops_cfg = cfg_mod.DiTConfig(emb_dim=512, num_layers=2, num_heads=2, intermediate_size=1024, adaln_dim=64,
                                llm_features_dim=13 * 64)
    small = argparse.Namespace(**{**vars(args), "size": 128, "text_tokens": 16})
    out["ops_per_block"] = {fmt: count_ops(ops_cfg, small, fmt) for fmt in args.formats.split(",") if fmt}
    for fmt, r in out["ops_per_block"].items():
        print(f"aten ops per block on the CPU, {fmt:4s}: ours {r['ours']}"
              + (f" | core {r['core']}" if "core" in r else ""))
    if torch.backends.cuda.is_built():
        for fmt in ("bf16", "fp8"):  # nf4 decodes with bitsandbytes' CUDA kernel, which fake tensors cannot run
            r = out.setdefault("ops_per_block_cuda", {})[fmt] = count_ops(ops_cfg, small, fmt, fake_cuda=True)
            print(f"aten ops per block on (fake) CUDA, {fmt:4s}: ours {r['ours']}"
                  + (f" | core {r['core']}" if "core" in r else ""))
    if args.ops_only:
        return out
    cfg = config(args, cfg_mod)
    ours, core = build_pair(cfg, "bf16", device=device)
    gh = gw = args.size // 16
    x, feats, sigma = (t.to(device) for t in inputs(cfg, args, gh, gw))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    host_kernel = comfy_attention.optimized_attention_for_device(device)
    override = {"optimized_attention_override": lambda func, *a, **k: host_kernel(*a, **k)}
    with torch.no_grad(), ours.sampling_run():
        ov, ou = ours_step(ours, x, feats, sigma, {})
        hv, hu = ours_step(ours, x, feats, sigma, override)
        cv, cu = core_step(core, x, feats, sigma)
        t_ours, t_ours_host, t_core = timed_interleaved(
            [lambda: (ours_step(ours, x, feats, sigma, {}), sync()),
             lambda: (ours_step(ours, x, feats, sigma, override), sync()),
             lambda: (core_step(core, x, feats, sigma), sync())], args.repeats)
        marked = attention_range_override()
        where = {}
        for name, step in (("ours", lambda: ours_step(ours, x, feats, sigma, marked)),
                           ("core", lambda: core_step(core, x, feats, sigma, marked))):
            try:
                where[name] = profiled(step, sync, device)
            except Exception as exc:  # noqa: BLE001 - a figure, not a check: the timings above still stand
                where[name] = {"error": f"{type(exc).__name__}: {exc}"}
    with torch.no_grad():
        t_first = timed(lambda: (ours_step(ours, x, feats, sigma, {}), sync()), 1)  # uncached: outside a run
    def rel(a, b):  # per pass (cond, uncond): max |a − b| / max |b|
        return [round(float((x - y).abs().max() / y.abs().max()), 5) for x, y in zip(a, b)]

    diff = max(rel((ov, ou), (cv, cu)))
    diff_host = max(rel((hv, hu), (cv, cu)))
    out.update(config=f"{cfg.num_layers}×{cfg.emb_dim} (ffn {cfg.intermediate_size}, text {cfg.llm_features_dim})",
               size=args.size, text_tokens=args.text_tokens, ours_kernel=ca.kernel_name(),
               core_kernel=comfy_attention.optimized_attention.__name__, host_kernel=host_kernel.__name__,
               ours_s=t_ours, ours_uncached_s=t_first, ours_host_attention_s=t_ours_host, core_s=t_core,
               ratio=t_ours / t_core, ratio_host_attention=t_ours_host / t_core, rel_diff_vs_core=diff,
               rel_diff_vs_core_same_kernel=diff_host, rel_diff_vs_core_per_pass=rel((ov, ou), (cv, cu)),
               where_the_time_goes=where,
               gemm_floor=where["core"]["gemm_s"] / where["core"]["wall_s"] if "gemm_s" in where["core"] else None)
    print(f"{out['config']} at {args.size}², {args.text_tokens} text tokens, {device}, {out['threads']} threads:")
    print(f"  ours (exact, {out['ours_kernel']} attention, cached run): {t_ours:.3f} s per cond+uncond forward "
          f"(first step, uncached: {t_first:.3f} s)")
    print(f"  ours with the host's {host_kernel.__name__} via an attention override: {t_ours_host:.3f} s")
    print(f"  core comfy/ldm/ideogram4 ({out['core_kernel']}): {t_core:.3f} s")
    print(f"  ratio ours/core: {out['ratio']:.2f}× (exact) | {out['ratio_host_attention']:.2f}× (same kernel as core)"
          f" | max rel |ours − core| {diff:.2e} ({diff_host:.2e} with the same kernel)")
    print("  where the time goes (one profiled forward each, s): linear GEMMs | attention | rest | total")
    for name, w in where.items():
        print(f"    {name:5s} " + (w["error"] if "error" in w else
                                   f"{w['gemm_s']:.3f} | {w['attention_s']:.3f} | {w['rest_s']:.3f} | {w['wall_s']:.3f}"))
    if out["gemm_floor"] is not None:
        print(f"  GEMM floor (core's GEMM time / core's forward): {out['gemm_floor']:.2f}× — ours/core if ours' GEMMs "
              f"took core's time (same kernel, same weights) and nothing else took any")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
