"""Cost and exactness of the text encoder's packed-length run (``model.text_encoder.packed_length``).

The reference encodes a caption inside the packed text + image sequence (``_build_inputs``: one masked
slot per image token after the text); our encoder appends masked slots only up to the next multiple of
512.  This builds a random Qwen3-VL text model at the real width (hidden 4096, 32 query / 8 KV heads of
128, MLP 12288) with ``--layers`` decoder layers (the real encoder runs 36; the figures are scaled by
36 / layers) and, per caption length, times and compares in ``--dtype`` on ``--device``:

* ``text-only``      — the caption alone (what the encoder did before; NOT the reference's numbers);
* ``packed_length``  — our run (text + masked slots to the next multiple of 512);
* ``ref 256²`` / ``ref 1024²`` (``--sides``) — the reference's layout: text + 256 / 4096 masked image slots.

It prints ms per caption and whether our text rows equal each reference layout bit for bit (max |diff|
otherwise).  ``--kernel-sweep`` checks the rule on the attention kernel alone (what decides it), for many
caption lengths against the reference's layouts at several resolutions: run it on a new kind of CPU.  On CUDA this is the check of the CPU finding: SDPA picks another kernel there (flash for the
unmasked text-only run; memory-efficient / cuDNN with a mask) and cuBLAS picks GEMM algorithms by shape.

    python benchmarks/bench_te_packed.py                         # CPU, 2 layers
    python benchmarks/bench_te_packed.py --device cuda --layers 36
    python benchmarks/bench_te_packed.py --kernel-sweep --lengths 1-896:5 --sides 256,384,512,768,1024
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from model.text_encoder import packed_length  # noqa: E402
from model.text_encoder.encoder import Ideogram4TextEncoder  # noqa: E402


def build(layers: int, device: str, dtype: torch.dtype) -> Ideogram4TextEncoder:
    from transformers import Qwen3VLTextConfig
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel

    cfg = Qwen3VLTextConfig(vocab_size=151936, hidden_size=4096, intermediate_size=12288, num_hidden_layers=layers,
                            num_attention_heads=32, num_key_value_heads=8, head_dim=128, rms_norm_eps=1e-6,
                            max_position_embeddings=262144, rope_theta=5000000,
                            rope_scaling={"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"})
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with torch.device(device):
        lm = Qwen3VLTextModel(cfg).to(dtype).eval()
    lm.norm = None
    return Ideogram4TextEncoder(lm, tokenizer=None, taps=tuple(range(layers)))


def run(enc: Ideogram4TextEncoder, ids: torch.Tensor, length: int, device: str) -> tuple[torch.Tensor, float]:
    n = ids.numel()
    tok = torch.zeros(1, length, dtype=torch.long)
    mask = torch.zeros(1, length, dtype=torch.long)
    pos = torch.zeros(1, length, dtype=torch.long)
    tok[0, :n], mask[0, :n], pos[0, :n] = ids, 1, torch.arange(n)
    args = [t.to(device) for t in (tok, mask, pos)]
    with torch.inference_mode():
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = enc(*args)[0, :n]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return out.float().cpu(), time.perf_counter() - t0


def _lengths(spec: str) -> list[int]:
    """``20,200`` or ``1-896:5`` (start-stop:step, inclusive) or both, comma-separated."""
    out: list[int] = []
    for part in spec.split(","):
        if "-" in part:
            span, _, step = part.partition(":")
            lo, hi = (int(x) for x in span.split("-"))
            out.extend(range(lo, hi + 1, int(step or 1)))
        else:
            out.append(int(part))
    return out


def kernel_sweep(lengths: list[int], sides: list[int], device: str, dtype: torch.dtype, heads: int = 2) -> None:
    """SDPA as Qwen3-VL calls it in the packed run (head_dim 128, explicit causal + key-padding bool mask): per
    caption length, are the text rows at ``packed_length(n)`` equal to those at ``n + (side/16)²`` for each side?"""
    from tools.packed_attention import text_rows

    def rows(q, k, v, n, length):
        return text_rows(q, k, v, n, length).float().cpu()

    g = torch.Generator().manual_seed(7)
    longest = max(lengths) + max(side // 16 for side in sides) ** 2
    q, k, v = (torch.randn(1, heads, longest, 128, generator=g).to(device, dtype) for _ in range(3))
    differ = {side: [] for side in sides}
    for n in lengths:
        ours = rows(q, k, v, n, packed_length(n))
        for side in sides:
            if not torch.equal(rows(q, k, v, n, n + (side // 16) ** 2), ours):
                differ[side].append(n)
    print(f"attention kernel alone ({device}, {dtype}, torch {torch.__version__}, {torch.get_num_threads()} threads),"
          f" {len(lengths)} caption lengths {lengths[0]}…{lengths[-1]}: text rows at packed_length(n) vs the "
          "reference's packed run")
    for side in sides:
        bad = differ[side]
        print(f"  {side}² ({(side // 16) ** 2} image slots): {len(bad)} differ" + (f" — n = {bad[:20]}" if bad else ""))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--lengths", default="20,200,600,1500")
    ap.add_argument("--sides", default="256,1024", help="square resolutions of the reference layouts")
    ap.add_argument("--kernel-sweep", action="store_true", help="the attention kernel alone, many lengths")
    args = ap.parse_args(argv)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.kernel_sweep:
        kernel_sweep(_lengths(args.lengths), [int(s) for s in args.sides.split(",")], args.device, dtype)
        return
    enc = build(args.layers, args.device, dtype)
    scale = 36 / args.layers
    print(f"device {args.device}, {args.dtype}, {args.layers} layers at real width (ms scaled to 36 layers), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    g = torch.Generator().manual_seed(1)
    for n in _lengths(args.lengths):
        ids = torch.randint(1, 151936, (n,), generator=g)
        run(enc, ids, n, args.device)  # warm-up
        layouts = {"text-only": n, "packed_length": packed_length(n)}
        layouts.update({f"ref {side}²": n + (int(side) // 16) ** 2 for side in args.sides.split(",")})
        res = {name: run(enc, ids, length, args.device) for name, length in layouts.items()}
        ours = res["packed_length"][0]
        parts = []
        for name, (out, dt) in res.items():
            same = "" if name == "packed_length" else (
                " =ours" if torch.equal(out, ours) else f" diff {(out - ours).abs().max().item():.2e}")
            parts.append(f"{name} [{layouts[name]}] {dt * 1000 * scale:.0f} ms{same}")
        print(f"{n:5d} tokens: " + " | ".join(parts), flush=True)


if __name__ == "__main__":
    main()
