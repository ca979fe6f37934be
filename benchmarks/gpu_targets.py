"""Issue 13's GPU targets against what ``gpu_check.sh`` measured: one markdown table, ready for a closing note.

    python benchmarks/gpu_targets.py --dir "$OUT"        # reads gpu_check.json, vs_core.json, families.json

Reads the JSON files the GPU check wrote (any of them may be missing or partial: a step stopped by its time limit
keeps what it measured) and prints, for each target, the measured figure and whether it is met:

* sampling time for ``Default-20`` at 1024² (20 steps × s/step; the text encoder and the VAE excluded) in bf16
  (≤ 5 s), fp8 exact (≤ bf16 + 5 %), fp8 fast (≤ 3.5 s), nf4 (≤ bf16 + 10 %);
* the bf16 step against the bf16 limit (≥ 85 %): the step's FLOPs (both passes' Linears and attention, from the
  real configuration) over the bf16 GEMM rate ``gpu_check`` measured on the GPU (the data sheet's dense peak from
  :data:`BF16_PEAK` beside it, or alone when not measured; none for an unknown GPU: "n/a");
* ours vs ComfyUI core's model on the same GPU (≥ 1.3× faster), from ``vs_core.json``;
* the memory plan: both nf4 models resident on a 16 GB card, 2048² within 12 GB (resident or streaming);
* CUDA vs the CPU goldens within the stated tolerances.

Then the s/step and peak VRAM per format and size, the SDPA backends at the real attention shapes, and the
checkpoint families' per-block figures.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Dense bf16 tensor-core peak (FLOP/s, no sparsity) by a substring of torch.cuda.get_device_name().
BF16_PEAK = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L40": 181e12, "RTX 4090": 165e12,
             "RTX 6000 Ada": 364e12}
DEFAULT_STEPS = 20  # the Default preset


def step_flops(size: int, text_tokens: int) -> float:
    """FLOPs of one step (conditional pass with ``text_tokens`` + image-only pass) of the real 9.3B DiT."""
    from model.dit.config import DiTConfig

    cfg = DiTConfig()
    e, i = cfg.emb_dim, cfg.intermediate_size
    per_layer = e * 3 * e + e * e + 3 * e * i  # qkv, o, w1 + w3 + w2
    n_img = (size // 16) ** 2

    def one_pass(length: int) -> float:
        return cfg.num_layers * (2 * length * per_layer + 4 * length * length * e)

    return one_pass(n_img + text_tokens) + one_pass(n_img)


def _read(folder: Path, name: str):
    path = folder / name
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        return {"error": f"{name} unreadable: {exc}"}


def _speed(check: dict) -> dict:
    """{(format, size): row} of the rows that measured something."""
    rows = check.get("speed") if isinstance(check, dict) else None
    if not isinstance(rows, list):
        return {}
    return {(r["format"], r["size"]): r for r in rows if "s_per_step" in r and not math.isnan(r["s_per_step"])}


def _verdict(ok) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def targets(check: dict, vs_core, text_tokens: int = 512, streaming=None) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) rows."""
    speed = _speed(check)
    rows = []

    def seconds(fmt):
        r = speed.get((fmt, 1024))
        return None if r is None else DEFAULT_STEPS * r["s_per_step"]

    bf16, fp8, fast, nf4 = (seconds(f) for f in ("bf16", "fp8", "fp8_fast", "nf4"))
    fmt_s = lambda s: "not measured" if s is None else f"{s:.2f} s"  # noqa: E731
    rows.append(("bf16, 1024² Default-20 ≤ 5 s", fmt_s(bf16), _verdict(None if bf16 is None else bf16 <= 5.0)))
    gpu = check.get("gpu", "") if isinstance(check, dict) else ""
    sheet = next((v for k, v in BF16_PEAK.items() if k in gpu), None)
    measured = check.get("bf16_gemm_flops") if isinstance(check, dict) else None
    limit = measured or sheet  # what this GPU's matmuls reach when measured, else the data sheet
    if bf16 is not None and limit:
        share = step_flops(1024, text_tokens) / limit / (bf16 / DEFAULT_STEPS)
        basis = (f"{measured / 1e12:.0f} TFLOP/s measured (bf16 GEMM 8192³)" if measured else
                 f"{sheet / 1e12:.0f} TFLOP/s data sheet")
        if measured and sheet:
            basis += f"; data sheet {sheet / 1e12:.0f}: {100 * share * limit / sheet:.0f} %"
        rows.append((f"bf16 step ≥ 85 % of the bf16 limit ({gpu})", f"{100 * share:.0f} % ({basis})",
                     _verdict(share >= 0.85)))
    else:
        rows.append(("bf16 step ≥ 85 % of the bf16 limit", f"no peak known for {gpu or 'this device'}", "n/a"))
    for label, value, limit in (("fp8 exact ≤ bf16 + 5 %", fp8, 1.05), ("nf4 ≤ bf16 + 10 %", nf4, 1.10)):
        if value is None or bf16 is None:
            rows.append((label, "not measured", "n/a"))
        else:
            decode = check.get("fp8_decode", "") if label.startswith("fp8") else ""
            how = " — one fused decode kernel" if decode.startswith("fp8 decode: one fused") else (
                " — two decode kernels" if decode else "")
            rows.append((label, f"{fmt_s(value)} (×{value / bf16:.2f}){how}", _verdict(value <= limit * bf16)))
    quantize = check.get("fp8_quantize", "") if isinstance(check, dict) else ""
    how = (" — activations quantised in one compiled pass" if quantize.startswith("fp8 activations: quantised in one")
           else " — activations quantised by six eager kernels" if quantize and fast is not None else "")
    rows.append(("fp8 fast, 1024² Default-20 ≤ 3.5 s", fmt_s(fast) + how,
                 _verdict(None if fast is None else fast <= 3.5)))
    if isinstance(vs_core, dict) and vs_core.get("ours_s") and vs_core.get("core_s"):
        speedup = vs_core["core_s"] / vs_core["ours_s"]
        rows.append((f"≥ 1.3× faster than ComfyUI core's model ({vs_core.get('config', '?')}, {vs_core.get('size')}²)",
                     f"{speedup:.2f}× (ours {vs_core['ours_s']:.3f} s, core {vs_core['core_s']:.3f} s)",
                     _verdict(speedup >= 1.3)))
    else:
        rows.append(("≥ 1.3× faster than ComfyUI core's model", "not measured", "n/a"))
    plan = {(r["format"], r["size"], r["cap_gib"]): r for r in (check.get("plan") or [])
            if isinstance(r, dict) and "mode" in r} if isinstance(check, dict) else {}
    r = plan.get(("nf4", 1024, 16))
    rows.append(("16 GB card: both nf4 models resident (plan, 1024²)", r["mode"] if r else "not planned",
                 _verdict(None if r is None else r["mode"] == "resident")))
    for fmt in ("nf4", "fp8", "bf16"):
        r = plan.get((fmt, 2048, 12))
        if r:
            rows.append((f"2048² within 12 GB, {fmt} (plan)",
                         f"{r['mode']}, {r['streamed_gib']:.2f} GiB streamed per step, {r['reserve_gib']:.2f} GiB reserve",
                         _verdict(r["mode"] in ("resident", "partial"))))
    parity = check.get("parity") if isinstance(check, dict) else None
    if isinstance(parity, list) and parity:
        worst = max(parity, key=lambda p: p["rel_err"] / p["tol"])
        rows.append(("CUDA vs CPU goldens within tolerance", f"worst {worst['dtype']} {worst['case']}: "
                     f"{worst['rel_err']:.1e} (tol {worst['tol']:.0e})", _verdict(all(p["ok"] for p in parity))))
    else:
        rows.append(("CUDA vs CPU goldens within tolerance", "not measured", "n/a"))
    rows.append(streaming_row(streaming))
    return rows


def streaming_row(streaming) -> tuple[str, str, str]:
    """Streamed layers (offload stream, pinned ring) against the same model resident (``gpu_streaming.py``)."""
    label = "streamed layers == resident, bit for bit (offload stream, pinned ring)"
    formats = streaming.get("formats") if isinstance(streaming, dict) else None
    if not formats:
        return label, "not measured", "n/a"
    parts = []
    for fmt, r in formats.items():
        if "error" in r:
            parts.append(f"{fmt} FAILED {r['error'][:80]}")
            continue
        ring = r.get("ring_pinned_bytes")
        parts.append(f"{fmt} {'equal' if r.get('equal') else 'DIFFERS'} ({r.get('streamed_layers')} layers"
                     + ("" if ring is None else f", ring {ring / 2**20:.0f} MiB") + ")")
    return label, "; ".join(parts), _verdict(all(r.get("equal") for r in formats.values()))


def attention_table(rows) -> list[str]:
    """gpu_check's SDPA backends at the real shapes: ms, TFLOP/s and the difference from the default backend."""
    measured = [r for r in rows or [] if isinstance(r, dict) and "s" in r]
    if not measured:
        return []
    def case(r):
        return f"{r['size']}²{' padded ×2' if r.get('padded') else ''}"

    lines = ["", "| attention (cond pass) | backend | ms | TFLOP/s | vs default |", "|---|---|---|---|---|"]
    for r in measured:
        same = " (bit-identical)" if r["backend"] != "default" and r.get("equals_default") else ""
        lines.append(f"| {case(r)} | {r['backend']} | {r['s'] * 1e3:.2f} | {r['tflops']:.1f} "
                     f"| {r['rel_diff_vs_default']:.1e}{same} |")
    refused = {}
    for r in rows:
        if isinstance(r, dict) and "error" in r:
            refused.setdefault(r["backend"], []).append(case(r))
    return lines + [f"- {backend} refused at {', '.join(cases)}" for backend, cases in refused.items()]


def time_split_table(vs_core) -> list[str]:
    """``bench_vs_core``'s profiled forward of each model: linear GEMMs, attention, the rest, and the GEMM floor."""
    where = vs_core.get("where_the_time_goes") if isinstance(vs_core, dict) else None
    if not isinstance(where, dict) or not where:
        return []
    lines = ["", "| cond + uncond forward (profiled) | linear GEMMs (s) | attention (s) | rest (s) | total (s) |",
             "|---|---|---|---|---|"]
    lines += [f"| {name} | FAILED: {w['error']} | | | |" if "error" in w else
              f"| {name} | {w['gemm_s']:.3f} | {w['attention_s']:.3f} | {w['rest_s']:.3f} | {w['wall_s']:.3f} |"
              for name, w in where.items()]
    if vs_core.get("gemm_floor") is not None:
        lines.append(f"- GEMM floor: ours/core ≥ {vs_core['gemm_floor']:.2f}× while both run the same GEMM kernel "
                     f"(core's GEMM time over core's forward)")
    return lines


def markdown(check, vs_core, families, streaming=None) -> str:
    lines = [f"GPU check on {check.get('gpu') or check.get('device', '?')}, torch {check.get('torch', '?')}", "",
             "| target | measured | |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in targets(check, vs_core, streaming=streaming)]
    speed = _speed(check)
    if speed:
        lines += ["", "| format | size | s/step | peak VRAM (GiB) | weights (GiB) |", "|---|---|---|---|---|"]
        lines += [f"| {f} | {s}² | {r['s_per_step']:.3f} | {r['peak_vram_gib']:.2f} | {r['weights_gib']:.2f} |"
                  for (f, s), r in speed.items()]
    errors = [r for r in (check.get("speed") or []) if isinstance(r, dict) and "error" in r]
    lines += [f"- {r['format']}: FAILED {r['error']}" for r in errors]
    lines += attention_table(check.get("attention"))
    lines += time_split_table(vs_core)
    if isinstance(families, list) and families:
        lines += ["", "| family | s per block | real-step estimate (s) | decoded by |", "|---|---|---|---|"]
        for r in families:
            if "error" in r:
                lines.append(f"| {r.get('family')} | FAILED: {r['error']} | | |")
                continue
            kitchen = ", ".join(f"{k} → {v}" for k, v in (r.get("comfy_kitchen") or {}).items()) or "torch"
            if r.get("decode"):  # fp8 / GGUF: one compiled kernel or the eager ops
                kitchen += f" ({r['decode']})"
            lines.append(f"| {r['family']} | {r['block_s']:.4f} | {r['real_step_estimate_s']:.2f} | {kitchen} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("/tmp"), help="where gpu_check.sh wrote its JSON ($OUT)")
    ap.add_argument("--out", type=Path, help="also write the table to this file")
    args = ap.parse_args(argv)
    check = _read(args.dir, "gpu_check.json")
    if not isinstance(check, dict):
        print(f"no gpu_check.json in {args.dir}")
        return 1
    table = markdown(check, _read(args.dir, "vs_core.json"), _read(args.dir, "families.json"),
                     _read(args.dir, "streaming.json"))
    print(table)
    if args.out:
        args.out.write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
