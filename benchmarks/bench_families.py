"""Seconds per step of every checkpoint family on one device, through the real loader (a script that prints figures).

For each family (bf16, official fp8 / nf4, ComfyUI fp8_scaled / nvfp4 / mxfp8 / int8, GGUF Q8_0 / Q6_K / Q4_K)
a real-width file with ``--layers`` blocks (default 1: 34 × 4608 does not fit every disk and takes minutes to
write; the text projection, run once per sampling run and not timed, is made narrow) is written in the exact on-disk layout (``bench_formats``: streamed, random valid data), loaded by
``load_transformer`` onto ``--device`` and timed inside a sampling run (the text projection cached, as in
sampling): one conditional + one image-only forward at ``--size``².  The per-block time of each family (the
forward minus the same forward with no blocks) and the 34-block step it implies (``2 × 34 × block``) are
printed as each family is measured, with the ratio to bf16 and the comfy-kitchen backend that decoded it
(``cuda``, ``triton`` or ``eager``: without comfy-kitchen's compiled extension its rows are not its CUDA kernels').

    python benchmarks/bench_families.py --device cuda --out /tmp/families            # on a GPU
    python benchmarks/bench_families.py --device cpu --width 512 --size 256 --out /tmp/f  # code-path smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

FAMILIES = ("bf16", "fp8", "nf4", "fp8_scaled", "nvfp4", "mxfp8", "int8_tensorwise", "gguf_Q8_0", "gguf_Q6_K",
            "gguf_Q4_K")
REAL_LAYERS = 34


def write(family: str, cfg, out: Path) -> Path:
    """One file of ``family`` for ``cfg`` (official layouts via ``random_models``, the rest via ``bench_formats``)."""
    from bench_formats import comfy_entries, write_gguf_streamed, write_safetensors_streamed
    from random_models import official_entries

    out.mkdir(parents=True, exist_ok=True)
    if family.startswith("gguf_"):
        path = out / f"{family}.gguf"
        write_gguf_streamed(family[5:], cfg, path)
    elif family in ("bf16", "fp8", "nf4"):
        path = out / f"{family}.safetensors"
        write_safetensors_streamed(official_entries(cfg, family), path, prefix="")
    else:
        path = out / f"{family}.safetensors"
        write_safetensors_streamed(comfy_entries(family, cfg), path)
    return path


def time_forward(model, device, size: int, n_txt: int, repeats: int, after_warmup=None) -> float:
    """Median seconds of one conditional + one image-only forward inside a sampling run (``after_warmup()`` runs
    once the first, cache-filling forward pair has finished, e.g. to reset peak-memory counters)."""
    import torch

    gh = gw = size // 16
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(1, gh * gw, 128, generator=g, device=device)
    feats = torch.randn(1, n_txt, model.config.llm_features_dim, generator=g, device=device)
    t = torch.tensor([0.5], device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    with torch.no_grad(), model.sampling_run():
        for i in range(repeats + 1):  # the first fills the per-run cache
            t0 = time.perf_counter()
            model(x, t, feats, grid_hw=(gh, gw))
            model(x, t, None, grid_hw=(gh, gw))
            sync()
            if i:
                times.append(time.perf_counter() - t0)
            elif after_warmup is not None:
                after_warmup()
    return sorted(times)[len(times) // 2]


def time_blocks(model, device, size: int, n_txt: int, repeats: int) -> tuple[float, float]:
    """(step seconds, seconds per block and pass): the blocks' share is the step minus the same forward with no
    blocks (embeddings, final layer, launches), so the 34-block estimate does not multiply that overhead."""
    import torch

    step = time_forward(model, device, size, n_txt, repeats)
    blocks = model.layers
    model.layers = torch.nn.ModuleList()
    try:
        bare = time_forward(model, device, size, n_txt, repeats)
    finally:
        model.layers = blocks
    return step, max(step - bare, 0.0) / (2 * len(blocks))


@contextlib.contextmanager
def kitchen_backends():
    """Records which comfy-kitchen backend ran each of its functions (``{function: backend}``), when installed."""
    chosen = {}
    try:
        from comfy_kitchen.registry import registry
    except ImportError:
        yield chosen
        return
    original = registry.get_capable_backend

    def recording(func_name, kwargs=None):
        backend = original(func_name, kwargs)
        chosen[func_name] = backend
        return backend

    registry.get_capable_backend = recording
    try:
        yield chosen
    finally:
        del registry.get_capable_backend  # the instance attribute; the class method is back


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--layers", type=int, default=1)
    ap.add_argument("--width", type=int, default=4608)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--text-tokens", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    import torch

    from model.checkpoints.packed_linear import decode_notes
    from model.dit import DiTConfig, load_transformer

    device = torch.device(args.device)
    heads = args.width // 256
    # the text projection runs once per sampling run (cached) and is not timed: a narrow one keeps the files small
    cfg = DiTConfig(emb_dim=args.width, num_layers=args.layers, num_heads=heads,
                    intermediate_size=args.width * 8 // 3 // 256 * 256, llm_features_dim=13 * 64,
                    **({} if args.width == 4608 else {"adaln_dim": 64}))
    print(f"{args.layers} block(s) × {args.width} (real width: {args.width == 4608}), {args.size}², "
          f"{args.text_tokens} text tokens, {device}"
          + (f" ({torch.cuda.get_device_name()})" if device.type == "cuda" else ""))
    rows = []
    for family in [f for f in args.families.split(",") if f]:
        row = {"family": family}
        path = None
        try:
            t0 = time.perf_counter()
            path = write(family, cfg, args.out)
            row["written_s"] = time.perf_counter() - t0
            model = load_transformer(path, device=device, dtype=torch.bfloat16)
            with kitchen_backends() as kitchen:
                step, block = time_blocks(model, device, args.size, args.text_tokens, args.repeats)
            row.update(format=model.checkpoint_format, step_s=step, block_s=block,
                       real_step_estimate_s=2 * REAL_LAYERS * block, comfy_kitchen=kitchen,
                       decode="; ".join(decode_notes(model, device, torch.bfloat16)))
            del model
        except Exception as exc:  # noqa: BLE001 - a figure per family; one failure must not hide the rest
            row["error"] = f"{type(exc).__name__}: {exc}"
        finally:
            if path is not None:
                path.unlink(missing_ok=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
        rows.append(row)
        print_row(row, rows)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2))


def print_row(row: dict, rows: list[dict]) -> None:
    if "error" in row:
        print(f"  {row['family']:16s} FAILED: {row['error']}")
        return
    base = next((r["block_s"] for r in rows if r["family"] == "bf16" and "block_s" in r), None)
    ratio = f" ({row['block_s'] / base:.2f}× bf16)" if base else ""
    kitchen = ", ".join(f"{f} → {b}" for f, b in row["comfy_kitchen"].items())
    print(f"  {row['family']:16s} {row['block_s'] * 1e3:8.2f} ms per block and pass → ≈ "
          f"{row['real_step_estimate_s']:6.2f} s per 34-block step{ratio} | {row['format']}"
          + (f" | comfy-kitchen: {kitchen}" if kitchen else "") + (f" | {row['decode']}" if row.get("decode") else ""))


if __name__ == "__main__":
    main()
