"""Preflight of ``gpu_check.sh``: what this machine will run the checks with, in a few seconds.

Prints torch / CUDA / the GPU, and for each package the checks use its version or why it cannot be used —
bitsandbytes' native library (nf4 decode kernel), comfy-kitchen's backends (ComfyUI's nvfp4 / mxfp8 / int8
kernels), the fp8 ``_scaled_mm`` kernel — and imports ComfyUI from ``$COMFYUI_PATH`` the way the benchmarks do.
Exits 2 when a package the checks cannot do without is missing (the pack's own dependencies), so a device call
stops in seconds instead of failing step by step, and 3 when ComfyUI does not import (its steps are skipped).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
REQUIRED = ("safetensors", "transformers", "tokenizers", "jsonschema", "numpy", "PIL", "gguf")
OPTIONAL = ("triton", "bitsandbytes", "comfy_kitchen", "comfy_aimdo", "torchsde", "diffusers", "peft")
# What the ComfyUI benchmarks import: core's modules and the pack's host glue (the pack loaded as ComfyUI loads it).
COMFY_MODULES = ("comfy.sd", "comfy.ldm.ideogram4.model", "comfy.ldm.modules.attention")
PACK_HOST_MODULES = ("comfy_model", "comfy_attention", "comfy_sampling", "offload", "core_lora_loaders")
MISSING_REQUIRED, COMFYUI_BROKEN = 2, 3  # exit codes gpu_check.sh reads
DISTRIBUTIONS = {"PIL": "pillow", "comfy_kitchen": "comfy-kitchen", "comfy_aimdo": "comfy-aimdo"}


def version(name: str) -> str:
    importlib.import_module(name)
    return importlib.metadata.version(DISTRIBUTIONS.get(name, name))


def packages() -> list[str]:
    missing = []
    for name in REQUIRED + OPTIONAL:
        try:
            print(f"   {name:14s} {version(name)}")
        except Exception as exc:  # noqa: BLE001 - a report line per package
            print(f"   {name:14s} NOT USABLE: {type(exc).__name__}: {exc}")
            if name in REQUIRED:
                missing.append(name)
    return missing


def kernels():
    import torch

    from model.checkpoints.fp8_matmul import kernel_available
    from model.checkpoints.nf4 import bitsandbytes_decodes

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"   nf4 decode on {device}: "
          f"{'bitsandbytes kernel' if bitsandbytes_decodes(device) else 'pure torch'}"
          f" (bitsandbytes probed bit-exact on {device})")
    if device == "cuda":
        print(f"   fp8 _scaled_mm rowwise kernel: {kernel_available()}")
    try:
        import comfy_kitchen

        for name, info in comfy_kitchen.list_backends().items():
            state = "available" if info.get("available") else f"unavailable ({info.get('unavailable_reason')})"
            print(f"   comfy-kitchen backend {name}: {state}")
    except Exception as exc:  # noqa: BLE001
        print(f"   comfy-kitchen backends: NOT USABLE: {type(exc).__name__}: {exc}")


def decodes() -> None:
    """The compiled one-kernel decodes on this machine's device (``--decodes``, gpu_check's own step: the Triton
    compiles take seconds each): which decode each format uses, and on CUDA the times of both on a real-size layer."""
    import torch

    from model.checkpoints.nf4 import decode_note

    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"######## compiled decodes on {device}")
    print(f"   {decode_note(device)}")
    fp8_decode(device)
    gguf_decode(device)
    fp8_quantize(device)


def seconds_per_call(fn, *args, repeats: int = 20) -> float:
    """Mean seconds of ``fn(*args)`` after one warm-up call, waiting for the GPU (when there is one) around them."""
    import time

    import torch

    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn(*args)
    sync()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(*args)
    sync()
    return (time.perf_counter() - t0) / repeats


def fp8_decode(device: str) -> None:
    """The exact fp8 decode on ``device``: fused or two kernels (compiles and probes it), and on CUDA both timed on a
    real-size FFN weight (12288 × 4608) with their effective bandwidth and bit equality."""
    import torch

    from model.checkpoints import fp8_fused

    print(f"   {fp8_fused.decode_note(device)}")
    fn, _ = fp8_fused.fused_decoder(device)
    if device != "cuda":
        return
    w = torch.randn(12288, 4608, device=device).to(torch.float8_e4m3fn)
    s = torch.rand(12288, 1, device=device).to(torch.bfloat16)

    def timed(decode) -> float:
        return seconds_per_call(decode, w, s)

    two = timed(fp8_fused.two_kernel_decode)
    line = f"   fp8 decode of 12288×4608 → bf16: two kernels {two * 1e3:.3f} ms ({7 * w.numel() / two / 1e9:.0f} GB/s moved)"
    if fn is not None:
        fused = timed(fp8_fused.decode)
        same = torch.equal(fp8_fused.decode(w, s), fp8_fused.two_kernel_decode(w, s))
        line += (f"; fused {fused * 1e3:.3f} ms ({3 * w.numel() / fused / 1e9:.0f} GB/s moved), {two / fused:.2f}× "
                 f"faster, bit-identical: {same}")
    print(line)


def fp8_quantize(device: str) -> None:
    """The fast fp8 path's activation quantisation on ``device``: compiled or eager (compiles and probes it), and on
    CUDA both timed on a 1024² conditional pass's activations (4608 + 512 tokens × 4608) with bit equality."""
    import torch

    from model.checkpoints import fp8_activations
    from model.checkpoints.fused_decode import differing

    print(f"   {fp8_activations.quantize_note(device)}")
    fn, _ = fp8_activations.fused_quantizer(device)
    if device != "cuda":
        return
    x = torch.randn(4608 + 512, 4608, device=device).to(torch.bfloat16)

    def timed(quantize) -> float:
        return seconds_per_call(quantize, x)

    eager = timed(fp8_activations.quantize_rows)
    line = f"   fp8 activation quantisation of {x.shape[0]}×{x.shape[1]} bf16: eager {eager * 1e3:.3f} ms"
    if fn is not None:
        fused = timed(fp8_activations.quantize)
        same = differing(fp8_activations.quantize(x), fp8_activations.quantize_rows(x))[0] == 0
        line += f"; compiled {fused * 1e3:.3f} ms, {eager / fused:.2f}× faster, bit-identical: {same}"
    print(line)


def gguf_decode(device: str, qtype: str = "Q4_K", shape: tuple[int, int] = (12288, 4608), *, time_on_cpu: bool = False) -> None:
    """The GGUF decode of ``qtype`` on ``device``: compiled or eager (compiles and probes it), and on CUDA (on the CPU
    with ``time_on_cpu``) both timed on a layer of ``shape`` (default a real FFN weight) with bit equality."""
    import torch

    from model.checkpoints import gguf_fused
    from model.checkpoints.fused_decode import same_bits
    from model.checkpoints.gguf_codec import BLOCKS, dequantize_gguf

    print(f"   {gguf_fused.decode_note(device, [qtype])}")
    if device != "cuda" and not time_on_cpu:
        return
    data = torch.randint(0, 256, (shape[0] * shape[1] // BLOCKS[qtype][0] * BLOCKS[qtype][1],), dtype=torch.uint8,
                         device=device)

    def timed(policy: str) -> tuple[float, torch.Tensor]:
        os.environ[gguf_fused.ENV] = policy
        return (seconds_per_call(dequantize_gguf, data, qtype, shape, torch.bfloat16, repeats=10),
                dequantize_gguf(data, qtype, shape, torch.bfloat16))

    before = os.environ.get(gguf_fused.ENV)
    try:
        fn, _ = gguf_fused.fused_decoder(device, qtype)  # under the caller's policy, before timed() sets its own
        eager, want = timed("eager")
        line = f"   GGUF {qtype} decode of {shape[0]}×{shape[1]} → bf16: eager (chunked) {eager * 1e3:.3f} ms"
        if fn is not None:
            fused, got = timed(before or "auto")
            same = same_bits(got, want) == 0  # random bytes: NaN scales occur (a NaN matches any NaN)
            line += f"; compiled {fused * 1e3:.3f} ms, {eager / fused:.2f}× faster, bit-identical: {same}"
        print(line)
    finally:
        if before is None:
            os.environ.pop(gguf_fused.ENV, None)
        else:
            os.environ[gguf_fused.ENV] = before


def comfyui() -> bool:
    path = os.environ.get("COMFYUI_PATH")
    if not path:
        print("   COMFYUI_PATH not set: the ComfyUI steps are skipped")
        return True
    from bench_comfyui import PACKAGE, import_comfy

    argv = sys.argv
    try:
        import_comfy(Path(path), [] if _has_cuda() else ["--cpu"])
        for name in COMFY_MODULES + tuple(f"{PACKAGE}.nodes.host.{m}" for m in PACK_HOST_MODULES):
            importlib.import_module(name)
        import comfyui_version

        print(f"   ComfyUI {comfyui_version.__version__} from {path}: {', '.join(COMFY_MODULES)} and the pack's "
              f"host modules import")
        return True
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the one line the developer needs
        print(f"   ComfyUI from {path} does NOT import: {type(exc).__name__}: {exc}")
        return False
    finally:
        sys.argv = argv


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main() -> int:
    import torch

    if sys.argv[1:] == ["--decodes"]:
        decodes()
        return 0

    gpu = (f"{torch.cuda.get_device_name()} (sm{''.join(map(str, torch.cuda.get_device_capability()))}, "
           f"{torch.cuda.get_device_properties(0).total_memory / 1024 ** 3:.0f} GiB)" if _has_cuda() else "no CUDA device")
    print(f"######## environment: Python {sys.version.split()[0]}, torch {torch.__version__} "
          f"(CUDA {torch.version.cuda}), {gpu}")
    missing = packages()
    kernels()
    if missing:
        print(f"!! missing: {', '.join(missing)} (build the kit: python benchmarks/gpu_kit.py --comfyui PATH)")
        return MISSING_REQUIRED
    return 0 if comfyui() else COMFYUI_BROKEN


if __name__ == "__main__":
    sys.exit(main())
