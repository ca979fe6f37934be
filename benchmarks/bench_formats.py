"""Real-size checkpoint-format benchmark (a script that prints figures; not a test).

For each family it writes ONE real-size (34 layers × 4608, text width 53248) DiT file with random packed
data in the exact on-disk layout — streamed tensor by tensor, so writing needs one tensor of RAM — then,
each in a fresh subprocess:

* ours: ``load_transformer`` seconds, peak RSS over the baseline while loading, private (RssAnon) and
  file-backed (RssFile) RSS after touching every stored byte (the mmap claim: no more than the packed size
  plus one layer, no private copy);
* ComfyUI's own ``UNETLoader`` path (``comfy.sd.load_diffusion_model``, ``--cpu``) on the same file, run by
  ComfyUI's Python (``--comfy-python``, ``--comfyui``): seconds and the same RSS figures (Comfy formats only;
  core ComfyUI has no GGUF loader);
* per-step decode cost: the seconds to decode every quantised Linear of one forward (measured on layer 0's
  Linears + the text projection, times 34 for the blocks), i.e. the decode part of one pass on this CPU.

Also ``fp8-table`` (the exact fp8 decodes of a real-size layer: cast + scale, the 256-entry table, the fused kernel),
``gguf-decode`` (the eager GGUF decode in chunks vs the compiled kernel, per quantisation type, on a real-size layer)
and ``nf4-bnb`` (the pure-torch nf4 codec vs its compiled kernel and bitsandbytes' CPU kernel, on a real-size
layer).

    flock /tmp/heavy.lock python benchmarks/bench_formats.py run --out /work/scratch/issue12 \\
        --families nvfp4,int8_tensorwise,gguf_Q4_K --comfyui /work/comfyui --comfy-python /work/comfy-venv/bin/python
    python benchmarks/bench_formats.py fp8-table
    python benchmarks/bench_formats.py gguf-decode --threads 2
    python benchmarks/bench_formats.py nf4-bnb

Files are deleted after their family is measured unless ``--keep``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

REAL_LAYERS = 34
FAMILIES = ("fp8_scaled", "nvfp4", "mxfp8", "int8_tensorwise", "gguf_Q4_K", "gguf_Q8_0", "gguf_Q6_K")
PREFIX = "model.diffusion_model."
ST_NAMES = {torch.uint8: "U8", torch.int8: "I8", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e8m0fnu: "F8_E8M0",
            torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def _roundup(n: int, m: int) -> int:
    return -(-n // m) * m


def _is_linear(key: str, shape) -> bool:
    return key.endswith(".weight") and len(shape) == 2 and key != "embed_image_indicator.weight"


def _fp8_codes(shape, g) -> torch.Tensor:
    """Random finite float8_e4m3fn codes (no NaN: magnitude byte ≤ 0x7E)."""
    mag = torch.randint(0, 0x7F, shape, generator=g, dtype=torch.int16)
    sign = torch.randint(0, 2, shape, generator=g, dtype=torch.int16) << 7
    return (mag | sign).to(torch.uint8).view(torch.float8_e4m3fn)


def _conf(fmt: str) -> torch.Tensor:
    return torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)


def comfy_entries(family: str, cfg):
    """(name, dtype, shape, make()) of every tensor of a real-size Comfy-format file, in file order."""
    from model.dit import expected_shapes

    out = []
    for key, shape in expected_shapes(cfg).items():
        g_seed = abs(hash(key)) % (2 ** 31)
        # like Comfy-Org's nvfp4_mixed files, the 128-wide input projection stays unquantised (ComfyUI core reads
        # in_channels off input_proj.weight's stored shape, which nvfp4 packing halves)
        if not _is_linear(key, shape) or (family == "nvfp4" and key == "input_proj.weight"):
            out.append((key, torch.bfloat16, tuple(shape),
                        lambda s=tuple(shape), seed=g_seed: (torch.randn(s, generator=torch.Generator().manual_seed(seed))
                                                             * 0.02).to(torch.bfloat16)))
            continue
        rows, cols = shape
        mod = key[: -len(".weight")]
        gen = lambda seed=g_seed: torch.Generator().manual_seed(seed)  # noqa: E731
        if family == "nvfp4":
            out += [(key, torch.uint8, (rows, cols // 2), lambda r=rows, c=cols, gen=gen: torch.randint(
                        0, 256, (r, c // 2), generator=gen(), dtype=torch.uint8)),
                    (mod + ".weight_scale", torch.float8_e4m3fn, (_roundup(rows, 128), _roundup(math.ceil(cols / 16), 4)),
                     lambda r=rows, c=cols, gen=gen: torch.empty(_roundup(r, 128), _roundup(math.ceil(c / 16), 4)).uniform_(
                         16, 64, generator=gen()).to(torch.float8_e4m3fn)),
                    (mod + ".weight_scale_2", torch.float32, (), lambda c=cols: torch.tensor(0.1 / (6 * 64 * c ** 0.5)))]
        elif family == "mxfp8":
            out += [(key, torch.float8_e4m3fn, (rows, cols), lambda r=rows, c=cols, gen=gen: _fp8_codes((r, c), gen())),
                    (mod + ".weight_scale", torch.float8_e8m0fnu, (_roundup(rows, 128), _roundup(math.ceil(cols / 32), 4)),
                     lambda r=rows, c=cols: torch.full((_roundup(r, 128), _roundup(math.ceil(c / 32), 4)), 117,
                                                       dtype=torch.uint8).view(torch.float8_e8m0fnu))]
        elif family == "int8_tensorwise":
            out += [(key, torch.int8, (rows, cols), lambda r=rows, c=cols, gen=gen: torch.randint(
                        -127, 128, (r, c), generator=gen(), dtype=torch.int8)),
                    (mod + ".weight_scale", torch.float32, (), lambda c=cols: torch.tensor(1.0 / (127 * c ** 0.5)))]
        elif family == "fp8_scaled":
            out += [(key, torch.float8_e4m3fn, (rows, cols), lambda r=rows, c=cols, gen=gen: _fp8_codes((r, c), gen())),
                    (mod + ".weight_scale", torch.float32, (), lambda c=cols: torch.tensor(1.0 / (448 * c ** 0.5)))]
        else:
            raise ValueError(family)
        fmt = "float8_e4m3fn" if family == "fp8_scaled" else family
        out.append((mod + ".comfy_quant", torch.uint8, tuple(_conf(fmt).shape), lambda f=fmt: _conf(f)))
    return out


def write_safetensors_streamed(entries, path: Path, prefix: str = PREFIX) -> int:
    """A safetensors file written tensor by tensor (header first): RAM for one tensor only."""
    header, offset = {}, 0
    for name, dtype, shape, _ in entries:
        n = int(np.prod(shape)) * dtype.itemsize if shape else dtype.itemsize
        header[prefix + name] = {"dtype": ST_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with written_whole(path) as partial, open(partial, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name, dtype, shape, make in entries:
            t = make().contiguous()
            assert t.dtype == dtype and tuple(t.shape) == tuple(shape), (name, t.dtype, t.shape)
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return path.stat().st_size


@contextlib.contextmanager
def written_whole(path: Path):
    """Yields a temporary name next to ``path`` and renames it to ``path`` only once it is written, so a run
    stopped half-way (a time limit) leaves no truncated file that a later run would reuse."""
    partial = path.with_name(path.name + ".partial")
    try:
        yield partial
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def write_gguf_streamed(qtype: str, cfg, path: Path) -> int:
    """A ComfyUI-GGUF-layout file: random valid ``qtype`` blocks for the Linears, F16/F32 for the rest."""
    import gguf

    from model.dit import expected_shapes

    T = gguf.GGMLQuantizationType
    block, size = gguf.GGML_QUANT_SIZES[T[qtype]]
    plan = []
    for key, shape in expected_shapes(cfg).items():
        shape = tuple(shape)
        if len(shape) == 1:
            kind = "F32"
        elif _is_linear(key, shape) and shape[1] % block == 0:
            kind = qtype
        else:
            kind = "F16"
        plan.append((key, shape, kind))
    with written_whole(path) as partial:
        _write_gguf(gguf, T, block, size, plan, partial)
    return path.stat().st_size


def _write_gguf(gguf, T, block, size, plan, path: Path) -> None:
    from tools.make_test_quantized import random_blocks

    writer = gguf.GGUFWriter(str(path), "ideogram4")
    for key, shape, kind in plan:
        if kind in ("F32", "F16"):
            nbytes = int(np.prod(shape)) * (4 if kind == "F32" else 2)
            writer.add_tensor_info(key, shape, np.dtype(np.float32 if kind == "F32" else np.float16), nbytes)
        else:
            nbytes = shape[0] * shape[1] // block * size
            writer.add_tensor_info(key, (shape[0], shape[1] // block * size), np.dtype(np.uint8), nbytes, raw_dtype=T[kind])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for i, (key, shape, kind) in enumerate(plan):
        rng = np.random.default_rng(i)
        if kind == "F32":
            data = (1.0 + 0.02 * rng.standard_normal(shape)).astype(np.float32)
        elif kind == "F16":
            data = (0.02 * rng.standard_normal(shape)).astype(np.float16)
        else:
            data = random_blocks(kind, shape[0], shape[1], 0.1 / shape[1] ** 0.5, i)
        writer.write_tensor_data(data)
    writer.close()


def write_family(family: str, out: Path, layers: int = 34) -> Path:
    from model.dit import DiTConfig

    cfg = DiTConfig(num_layers=layers)
    out.mkdir(parents=True, exist_ok=True)
    if family.startswith("gguf_"):
        path = out / f"ideogram4-{family[5:]}.gguf"
        write_gguf_streamed(family[5:], cfg, path)
    else:
        path = out / f"ideogram4_{family}.safetensors"
        write_safetensors_streamed(comfy_entries(family, cfg), path)
    return path


# --------------------------------------------------------------------------- children

def _status():
    from benchmarks.proc_status import proc_status

    return proc_status("VmRSS", "VmHWM", "RssAnon", "RssFile")


def child_ours(path: str) -> dict:
    import gc

    from model import load_transformer
    from model.checkpoints import QuantizedLinear

    torch.set_num_threads(2)
    gc.collect()
    base = _status()
    t0 = time.perf_counter()
    model = load_transformer(path, dtype=torch.bfloat16)
    load_s = time.perf_counter() - t0
    after_load = _status()
    for t in list(model.parameters()) + list(model.buffers()):  # touch every stored byte
        t.reshape(-1).view(torch.uint8).max()
    touched = _status()
    # decode cost of one forward: layer 0's packed Linears × 34 + the rest
    layer0 = [m for n, m in model.named_modules() if isinstance(m, QuantizedLinear) and n.startswith("layers.0.")]
    others = [m for n, m in model.named_modules() if isinstance(m, QuantizedLinear) and not n.startswith("layers.")]

    def decode(mods):
        t = time.perf_counter()
        for m in mods:
            m.dequantized_weight(torch.bfloat16)
        return time.perf_counter() - t

    decode(layer0[:1])  # warm-up
    per_layer = decode(layer0)
    rest = decode(others)
    n_layers = REAL_LAYERS  # decode cost of the real 34-layer forward, whatever the file's depth
    return {"load_s": load_s, "base": base, "after_load": after_load, "touched": touched,
            "decode_forward_s": per_layer * n_layers + rest, "decode_layer_s": per_layer,
            "format": model.checkpoint_format, "packed_linears": sum(isinstance(m, QuantizedLinear) for m in model.modules())}


COMFY_CHILD = r'''
import json, sys, time, gc
comfy_path, path = sys.argv[1:3]
sys.path.insert(0, comfy_path)
import comfy.options
comfy.options.enable_args_parsing()
sys.argv = [sys.argv[0], "--cpu"]
import torch
torch.set_num_threads(2)
def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out
import comfy.sd
gc.collect()
base = status()
t0 = time.perf_counter()
patcher = comfy.sd.load_diffusion_model(path)
load_s = time.perf_counter() - t0
after = status()
for t in list(patcher.model.parameters()) + list(patcher.model.buffers()):
    data = getattr(t, "_qdata", None)
    (data if data is not None else t.data).reshape(-1).view(torch.uint8).max()
print("RESULT " + json.dumps({"load_s": load_s, "base": base, "after_load": after, "touched": status(),
                              "model": type(patcher.model).__name__}))
'''


def _run_child(cmd: list[str]) -> dict:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        return {"error": (proc.stdout[-1500:] + proc.stderr[-3000:]).strip()}
    return json.loads(line[len("RESULT "):])


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def _mem_line(r: dict, size: int) -> str:
    peak = r["after_load"]["VmHWM"] - r["base"]["VmRSS"]
    anon = r["touched"]["RssAnon"] - r["base"]["RssAnon"]
    filed = r["touched"]["RssFile"] - r["base"]["RssFile"]
    return (f"load {r['load_s']:6.1f} s | peak RSS while loading +{_gib(peak)} ({peak / size:.2f}× file) | after "
            f"touching every weight: private +{_gib(anon)}, file-backed +{_gib(filed)}")


def cmd_run(args) -> None:
    families = [f for f in args.families.split(",") if f]
    results = {}
    for family in families:
        if family not in FAMILIES:
            sys.exit(f"unknown family {family}; choose from {', '.join(FAMILIES)}")
        t0 = time.perf_counter()
        path = write_family(family, args.out, args.layers)
        size = path.stat().st_size
        print(f"\n== {family}: {path.name} {_gib(size)} (written in {time.perf_counter() - t0:.0f} s)", flush=True)
        ours = _run_child([sys.executable, __file__, "_child-ours", str(path)])
        entry = {"file_bytes": size, "ours": ours}
        if "error" in ours:
            print("ours: FAILED\n" + ours["error"])
        else:
            print(f"ours   : {_mem_line(ours, size)}")
            print(f"         {ours['packed_linears']} packed Linears ({ours['format']}); decode per forward "
                  f"{ours['decode_forward_s']:.1f} s ({ours['decode_layer_s'] * 1000:.0f} ms per block), "
                  f"per step (cond + uncond) {2 * ours['decode_forward_s']:.1f} s", flush=True)
        if args.comfyui and not family.startswith("gguf_"):
            script = args.out / "_comfy_child.py"
            script.write_text(COMFY_CHILD)
            comfy = _run_child([args.comfy_python, str(script), str(args.comfyui), str(path)])
            entry["comfyui"] = comfy
            if "error" in comfy:
                print("ComfyUI UNETLoader: FAILED\n" + comfy["error"][-1500:])
            else:
                print(f"ComfyUI: {_mem_line(comfy, size)} ({comfy['model']})", flush=True)
        elif family.startswith("gguf_"):
            print("ComfyUI: core ComfyUI has no GGUF loader (ComfyUI-GGUF does not know Ideogram 4): n/a")
        results[family] = entry
        if not args.keep:
            path.unlink()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def _rate(fn, n: int, repeat: int = 3) -> float:
    fn()
    t = time.perf_counter()
    for _ in range(repeat):
        fn()
    return n * repeat / (time.perf_counter() - t) / 1e9


def cmd_fp8_table(args) -> None:
    """The exact fp8 decodes of a real FFN layer on the CPU: two kernels (cast, scale), the 256-entry table, and
    the fused kernel (``fp8_fused``, compiled here as with ``IDEOGRAM4_FP8_DECODE=fused``); all must agree bit for
    bit."""
    import os

    from model.checkpoints import fp8_fused
    from model.checkpoints.fp8 import dequantize_fp8

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    w = _fp8_codes((4608, 12288), g)  # a real feed-forward w1
    s = torch.rand(4608, generator=g) * 1e-3  # per-row scales, as the official fp8 files
    os.environ[fp8_fused.ENV] = "two-kernel"
    native = _rate(lambda: dequantize_fp8(w, s, torch.bfloat16, table=False), w.numel())
    want = dequantize_fp8(w, s, torch.bfloat16, table=False).view(torch.int16)
    table = _rate(lambda: dequantize_fp8(w, s, torch.bfloat16, table=True), w.numel())
    same = torch.equal(dequantize_fp8(w, s, torch.bfloat16, table=True).view(torch.int16), want)
    os.environ[fp8_fused.ENV] = "fused"
    fp8_fused.forget_probes()
    t0 = time.perf_counter()
    note = fp8_fused.decode_note("cpu")  # compiles and probes
    compile_s = time.perf_counter() - t0
    fused = _rate(lambda: dequantize_fp8(w, s, torch.bfloat16, table=False), w.numel())
    same_fused = torch.equal(dequantize_fp8(w, s, torch.bfloat16, table=False).view(torch.int16), want)
    print(f"fp8 → bf16 decode of a 4608×12288 layer, {args.threads} thread(s): cast + scale (two kernels) {native:.2f} "
          f"G elements/s, 256-entry table {table:.2f} G elements/s ({table / native:.2f}×, bit-identical: {same}), "
          f"fused {fused:.2f} G elements/s ({fused / native:.2f}×, bit-identical: {same_fused}; compile + probe "
          f"{compile_s:.1f} s; {note})")


def cmd_gguf_decode(args) -> None:
    """The exact GGUF decodes of a real FFN layer on the CPU, per quantisation type: the eager ops in chunks and the
    compiled kernel (``gguf_fused``, compiled here as with ``IDEOGRAM4_GGUF_DECODE=fused``); bit for bit equal."""
    import os

    from model.checkpoints import gguf_fused
    from model.checkpoints.gguf_codec import dequantize_gguf
    from tools.make_test_quantized import random_blocks

    torch.set_num_threads(args.threads)
    shape = (4608, 12288)  # a real feed-forward w1
    n = shape[0] * shape[1]
    print(f"GGUF → bf16 decode of a {shape[0]}×{shape[1]} layer, {args.threads} thread(s), G elements/s:")
    for qtype in args.qtypes.split(","):
        data = torch.from_numpy(random_blocks(qtype, *shape, 0.05, 0))
        os.environ[gguf_fused.ENV] = "eager"
        gguf_fused.forget_probes()
        eager = _rate(lambda: dequantize_gguf(data, qtype, shape, torch.bfloat16), n)
        want = dequantize_gguf(data, qtype, shape, torch.bfloat16).view(torch.int16)
        os.environ[gguf_fused.ENV] = "fused"
        t0 = time.perf_counter()
        note = gguf_fused.decode_note("cpu", [qtype])  # compiles and probes
        compile_s = time.perf_counter() - t0
        fused = _rate(lambda: dequantize_gguf(data, qtype, shape, torch.bfloat16), n)
        same = torch.equal(dequantize_gguf(data, qtype, shape, torch.bfloat16).view(torch.int16), want)
        print(f"  {qtype:6s}: eager {eager:.2f}, compiled {fused:.2f} ({fused / eager:.2f}×, bit-identical: {same}; "
              f"compile + probe {compile_s:.1f} s; {note.removeprefix('GGUF decode: ')})")


def cmd_nf4_bnb(args) -> None:
    """nf4 decodes of a real FFN layer on the CPU: the pure-torch codec in chunks, the compiled kernel
    (``nf4_fused``, compiled here as with ``IDEOGRAM4_NF4_DECODE=fused``) and bitsandbytes' CPU kernel; bit for bit."""
    import os

    from model.checkpoints import nf4, nf4_fused

    torch.set_num_threads(args.threads)
    w = torch.randn(4608, 12288, generator=torch.Generator().manual_seed(0))
    packed, absmax = nf4.quantize_nf4(w)
    code = torch.tensor(nf4.NF4_CODE)
    shape = tuple(w.shape)
    ref = _rate(lambda: nf4.dequantize_nf4_reference(packed, absmax, code, shape, torch.bfloat16), w.numel())
    want = nf4.dequantize_nf4_reference(packed, absmax, code, shape, torch.bfloat16)
    os.environ[nf4_fused.ENV] = "fused"
    nf4_fused.forget_probes()
    t0 = time.perf_counter()
    fn, why = nf4_fused.fused_decoder("cpu")  # compiles and probes
    compile_s = time.perf_counter() - t0
    line = f"nf4 → bf16 decode of a 4608×12288 layer, {args.threads} thread(s): pure torch {ref:.2f} G elements/s"
    if fn is not None:
        flat, scales = packed.reshape(-1), absmax.float()
        fused = _rate(lambda: nf4_fused.decode(flat, scales, code, torch.bfloat16), w.numel())
        same = torch.equal(nf4_fused.decode(flat, scales, code, torch.bfloat16).view(shape), want)
        line += (f", compiled {fused:.2f} G elements/s ({fused / ref:.2f}×, bit-identical: {same}; compile + probe "
                 f"{compile_s:.1f} s)")
    else:
        line += f", compiled: not used ({why})"
    if nf4.bitsandbytes_decodes("cpu"):
        bnb = _rate(lambda: nf4.dequantize_nf4(packed, absmax, code, shape, torch.bfloat16, use_bitsandbytes=True),
                    w.numel())
        same = torch.equal(nf4.dequantize_nf4(packed, absmax, code, shape, torch.bfloat16, use_bitsandbytes=True), want)
        line += f", bitsandbytes CPU {bnb:.2f} G elements/s ({bnb / ref:.1f}×, bit-identical: {same})"
    else:
        line += "; bitsandbytes not usable here"
    print(line)


def main(argv=None) -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child-ours":
        print("RESULT " + json.dumps(child_ours(sys.argv[2])))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--families", default=",".join(FAMILIES))
    run.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"))
    run.add_argument("--comfy-python", default=os.environ.get("COMFYUI_PYTHON", sys.executable))
    run.add_argument("--keep", action="store_true")
    run.add_argument("--layers", type=int, default=REAL_LAYERS,
                     help="blocks in the written file (default 34 = real size; fewer = real width, smaller file)")
    run.add_argument("--json", type=Path)
    for name in ("fp8-table", "nf4-bnb", "gguf-decode"):
        p = sub.add_parser(name)
        if name == "gguf-decode":
            p.add_argument("--qtypes", default="Q8_0,Q4_K,Q5_K,Q6_K,IQ4_XS")
        p.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    {"run": cmd_run, "fp8-table": cmd_fp8_table, "nf4-bnb": cmd_nf4_bnb, "gguf-decode": cmd_gguf_decode}[args.cmd](args)


if __name__ == "__main__":
    main()
