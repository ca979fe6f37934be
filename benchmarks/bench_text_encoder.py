"""Text-encoder loading memory and encoding speed on a mid-size synthetic Qwen3-VL (prints figures).

Writes a ~1.4 GB bf16 Qwen3-VL checkpoint in the stock Hugging Face layout (``model.language_model.*``
+ a ~0.35 GB ``model.visual.*`` vision tower + ``lm_head``, 3 shards + index, tiny tokenizer) and the
same weights in the official fp8 weight-only layout and as llama.cpp GGUF (Q8_0, Q4_K_M — the K-quant blocks
random, so only its figures, not its features, mean anything), then — each in a fresh process — loads them
with ``load_text_encoder`` and reports:

* peak RSS (``VmHWM``) above the pre-load baseline, against the file size and the
  bytes actually materialised (LM tensors only), plus anonymous vs file-backed RSS after loading
  and after encoding (safetensors hands out tensors backed by its file mapping, so a weight's pages
  only become resident once it is used);
* that the vision tower, lm_head and final norm were never materialised;
* encoding time of a 300-token caption (cold model run; cached repeat).

    python benchmarks/bench_text_encoder.py                       # CPU
    python benchmarks/bench_text_encoder.py --device cuda --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.proc_status import proc_status  # noqa: E402

GIB = 1 << 30


def _rss_breakdown() -> dict[str, int]:
    return proc_status("VmRSS", "RssAnon", "RssFile")


def _maxrss() -> int:
    return proc_status("VmHWM")["VmHWM"]


def _configs(args) -> tuple[dict, dict]:
    from tools import make_test_text_encoder as mk

    text = mk.tiny_text_config(num_layers=args.layers, vocab_size=args.vocab)
    text.update(hidden_size=args.hidden, intermediate_size=args.intermediate, num_attention_heads=args.heads,
                num_key_value_heads=args.kv_heads, head_dim=args.head_dim,
                rope_scaling={"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"})
    vision = mk.tiny_vision_config(args.hidden)
    vision.update(depth=args.vision_depth, hidden_size=args.vision_hidden, intermediate_size=4 * args.vision_hidden,
                  num_heads=16, patch_size=16, num_position_embeddings=2304, deepstack_visual_indexes=[1, 3, 5])
    return text, vision


def build(args) -> None:
    """Child process: write both layouts (weights generated with a fast seeded fill)."""
    import torch

    from tools import make_test_text_encoder as mk

    text, vision = _configs(args)
    out = Path(args.workdir)
    g = torch.Generator().manual_seed(0)

    def fill(shapes: dict) -> dict:
        res = {}
        for key, shape in shapes.items():
            t = torch.empty(shape, dtype=torch.float32)
            if key.endswith(".bias"):
                t.normal_(0, 0.02, generator=g)
            elif key.endswith("norm.weight") or ".norm" in key:
                t.normal_(1, 0.1, generator=g)
            elif len(shape) == 2 and "embed" not in key:
                t.normal_(0, shape[1] ** -0.5, generator=g)
            else:
                t.normal_(0, 0.5 if "embed" in key else 0.05, generator=g)
            res[key] = t.to(torch.bfloat16)
        return res

    lm = fill(mk.text_shapes(text))
    vis = fill(mk.vision_shapes(vision))
    head = fill({"lm_head.weight": (text["vocab_size"], text["hidden_size"])})
    hf = out / "qwen_hf"
    tensors = {**{"model.language_model." + k: v for k, v in lm.items()},
               **{"model.visual." + k: v for k, v in vis.items()}, **head}
    mk.write_safetensors(tensors, hf, shards=3)
    (hf / "config.json").write_text(json.dumps(mk.full_config(text, vision, "Qwen3VLForConditionalGeneration")))
    mk.write_tokenizer(hf)
    del tensors
    from tools.make_test_text_encoder_gguf import write_llama_cpp_gguf

    for file_type in GGUF_TYPES:  # llama.cpp's language-model file of the same weights (no vision tower)
        write_llama_cpp_gguf(out / gguf_layout(file_type), file_type, text=text, weights={**lm, **head})
    fp8 = out / "official_fp8"
    tensors = {**{"language_model." + k: v for k, v in mk.quantize(lm, "fp8_rowwise").items()},
               **{"visual." + k: v for k, v in mk.quantize(vis, "fp8_rowwise").items()}}
    mk.write_safetensors(tensors, fp8 / "text_encoder")
    cfg = mk.full_config(text, vision, "Qwen3VLModel")
    cfg["ideogram_fp8_weight_only"] = True
    (fp8 / "text_encoder" / "config.json").write_text(json.dumps(cfg))
    mk.write_tokenizer(fp8 / "tokenizer")


GGUF_TYPES = ("Q8_0", "Q4_K_M")


def gguf_layout(file_type: str) -> str:
    return f"Qwen3VL-bench-{file_type}.gguf"


def measure(args) -> None:
    """Child process: load one layout, print a JSON line of figures."""
    import torch

    torch.set_num_threads(args.threads) if args.threads else None
    from model.checkpoints import resolve_checkpoint_files
    from model.text_encoder import load_text_encoder

    source = Path(args.workdir) / args.layout
    files = resolve_checkpoint_files(source, "text_encoder")
    file_bytes = sum(p.stat().st_size for p in files)
    import transformers  # noqa: F401  (import cost is not part of the load)
    before, base_peak = _rss_breakdown(), _maxrss()
    t0 = time.perf_counter()
    tokenizer = Path(args.workdir) / "qwen_hf" if source.suffix == ".gguf" else None  # a single file names one
    enc = load_text_encoder(source, device=args.device, taps=tuple(args.taps), tokenizer=tokenizer)
    load_s = time.perf_counter() - t0
    peak = _maxrss()
    after = _rss_breakdown()
    tensors = list(enc.parameters()) + list(enc.buffers())
    loaded = sum(t.numel() * t.element_size() for t in tensors)
    names = [n for n, _ in enc.named_parameters()] + [n for n, _ in enc.named_buffers()]
    fmt = enc.checkpoint_format

    # A 300-token caption (templated length), built from the tokenizer itself.
    words = "The quick brown fox jumps over the lazy dog near a red barn at sunset. ".split()
    caption, i = "", 0
    while len(enc.tokenize([caption or "a"])[0]) < 300:
        caption += ("" if not caption else " ") + words[i % len(words)]
        i += 1
    while len(enc.tokenize([caption])[0]) > 300:
        caption = caption[:-1]
    n_tokens = len(enc.tokenize([caption])[0])
    sync = torch.cuda.synchronize if enc.device.type == "cuda" else (lambda: None)
    enc.encode([caption], use_cache=False)  # warm-up
    times = []
    for _ in range(args.runs):
        sync()
        t = time.perf_counter()
        enc.encode([caption], use_cache=False)
        sync()
        times.append(time.perf_counter() - t)
    enc.encode([caption])
    t = time.perf_counter()
    enc.encode([caption])
    cached_s = time.perf_counter() - t
    after_encode, peak_end = _rss_breakdown(), _maxrss()
    print(json.dumps({
        "rss_after_encode": after_encode, "peak_rss_end_above_baseline": peak_end - before.get("VmRSS", 0),
        "layout": args.layout, "description": enc.description, "device": str(enc.device),
        "file_bytes": file_bytes, "loaded_bytes": loaded, "baseline_rss": before.get("VmRSS", 0),
        # upper bound of the load's RSS growth: peak-so-far after loading minus RSS just before it
        "peak_rss_above_baseline": peak - before.get("VmRSS", 0), "peak_before_load": base_peak,
        "rss_after": after, "rss_before": before, "load_s": load_s,
        "visual_params": sum("visual" in n for n in names), "lm_head_params": sum("lm_head" in n for n in names),
        "layers_built": len(enc.language_model.layers), "layers_in_file": fmt.num_layers,
        "norm_built": enc.language_model.norm is not None, "skipped_unread": fmt.skipped,
        "tokens": n_tokens, "encode_s": times, "cached_encode_s": cached_s,
        "threads": torch.get_num_threads()}))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/ideogram4_te_bench")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=6144)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=4)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--vision-depth", type=int, default=8)
    ap.add_argument("--vision-hidden", type=int, default=1024)
    ap.add_argument("--taps", type=int, nargs="+", default=[0, 3, 6, 7])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--layouts", nargs="+", default=["qwen_hf", "official_fp8"] + [gguf_layout(t) for t in GGUF_TYPES])
    ap.add_argument("--rebuild", action="store_true")
    ap.add_argument("--_child", choices=["build", "measure"], help=argparse.SUPPRESS)
    ap.add_argument("--layout", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._child == "build":
        return build(args)
    if args._child == "measure":
        return measure(args)

    work = Path(args.workdir)
    passthrough = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--rebuild"]
    if args.rebuild or not (work / "qwen_hf" / "model.safetensors.index.json").is_file() or \
            not (work / "official_fp8" / "text_encoder" / "config.json").is_file() or \
            not all((work / gguf_layout(t)).is_file() for t in GGUF_TYPES):
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, *passthrough, "--_child", "build"], check=True)
        print(f"built synthetic checkpoints in {work} ({time.perf_counter() - t:.0f} s)")
    for layout in args.layouts:
        res = subprocess.run([sys.executable, __file__, *passthrough, "--_child", "measure", "--layout", layout],
                             check=True, capture_output=True, text=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        gb = lambda b: f"{b / GIB:.3f} GiB"
        print(f"\n== {layout}: {r['description']} on {r['device']} ({r['threads']} threads)")
        print(f"  file size            {gb(r['file_bytes'])}")
        print(f"  materialised tensors {gb(r['loaded_bytes'])}  (LM up to the last tap only)")
        print(f"  peak RSS above base  {gb(r['peak_rss_above_baseline'])}  = "
              f"{r['peak_rss_above_baseline'] / r['loaded_bytes']:.2f}x materialised, "
              f"{r['peak_rss_above_baseline'] / r['file_bytes']:.2f}x file   (baseline RSS {gb(r['baseline_rss'])})")
        ra, rb = r["rss_after"], r["rss_before"]
        if ra:
            print(f"  RSS growth after load: anon {gb(ra['RssAnon'] - rb['RssAnon'])}, "
                  f"file-backed {gb(ra['RssFile'] - rb['RssFile'])}")
        rc = r["rss_after_encode"]
        if rc:
            print(f"  RSS growth after the encodes (every weight page touched): anon "
                  f"{gb(rc['RssAnon'] - rb['RssAnon'])}, file-backed {gb(rc['RssFile'] - rb['RssFile'])}")
        print(f"  peak RSS above base over load + {len(r['encode_s']) + 3} encodes: "
              f"{gb(r['peak_rss_end_above_baseline'])} = "
              f"{r['peak_rss_end_above_baseline'] / r['loaded_bytes']:.2f}x materialised, "
              f"{r['peak_rss_end_above_baseline'] / r['file_bytes']:.2f}x file")
        print(f"  load time            {r['load_s']:.2f} s")
        print(f"  vision/lm_head params built: {r['visual_params']}/{r['lm_head_params']}; layers built "
              f"{r['layers_built']} of {r['layers_in_file']}; final norm built: {r['norm_built']}")
        print(f"  tensors skipped unread: {r['skipped_unread']}")
        enc = r["encode_s"]
        print(f"  encode {r['tokens']}-token caption: min {min(enc) * 1e3:.0f} ms, median {statistics.median(enc) * 1e3:.0f} ms "
              f"(runs: {', '.join(f'{t * 1e3:.0f}' for t in enc)} ms); cached repeat {r['cached_encode_s'] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
