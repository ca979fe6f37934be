"""Opt-in fp8 tensor-core matmul for fp8 checkpoints (NOT reference-exact).

The exact path decodes ``W = bf16(W8)·bf16(s)`` and runs a bf16 matmul.  The fast path keeps the
weight in float8_e4m3fn and also quantises the activations to e4m3 per token (row of x):

    y = (x8 @ W8ᵀ) · s_x[:, None] · s_w[None, :] (+ bias),   s_x = max|x_row| / 448

which ``torch._scaled_mm`` runs on fp8 tensor cores (CUDA sm89+, rowwise scales) in one kernel,
float32 accumulation, bf16 output.  Elsewhere :func:`emulate_scaled_mm` computes the same maths in
float32 (used by the tests and as the reference for the kernel's error).  The activation rounding
to e4m3 (3 mantissa bits) is the deviation from the exact path: :func:`measure_deviation` reports it.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from .fp8 import FP8_DTYPE
from .fp8_activations import quantize, quantize_rows  # noqa: F401 - quantize_rows: the eager expression, re-exported

FP8_SCHEMES = ("fp8_rowwise", "fp8_tensorwise")  # the packed-Linear schemes stored as float8_e4m3fn + scale


def weight_scales(weight_scale: torch.Tensor, out_features: int) -> torch.Tensor:
    """(1, N) float32 per-output-channel scales (a tensorwise scale is broadcast)."""
    s = weight_scale.to(torch.float32).reshape(-1)
    return (s.expand(out_features) if s.numel() == 1 else s).reshape(1, out_features).contiguous()


def emulate_scaled_mm(x8, w8, scale_x, scale_w, bias, out_dtype) -> torch.Tensor:
    """float32 reference of the kernel: exact products of e4m3 values, float32 sums, one rounding."""
    acc = x8.to(torch.float32) @ w8.to(torch.float32).t()
    out = acc * scale_x * scale_w
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(out_dtype)


@torch.compiler.assume_constant_result  # a compiled DiT takes the answer as a constant (no graph break per layer)
def kernel_available(device_index: int = 0) -> bool:
    """``torch._scaled_mm`` with rowwise scales works on this CUDA device (probed once).  Not itself cached:
    dynamo traces through a ``functools.cache`` wrapper (ignoring the marker), into the probe."""
    return _probe_kernel(device_index)


@functools.cache
def _probe_kernel(device_index: int) -> bool:
    if not torch.cuda.is_available() or torch.cuda.get_device_capability(device_index) < (8, 9):
        return False
    try:
        dev = torch.device("cuda", device_index)
        a = torch.ones(16, 32, device=dev).to(FP8_DTYPE)
        b = torch.ones(16, 32, device=dev).to(FP8_DTYPE)
        out = torch._scaled_mm(a, b.t(), scale_a=torch.ones(16, 1, device=dev), scale_b=torch.ones(1, 16, device=dev),
                               out_dtype=torch.bfloat16)
        return bool(torch.all(out == 32))
    except Exception:  # older torch / GPU without rowwise fp8 support
        return False


def fp8_linear(x: torch.Tensor, w8: torch.Tensor, weight_scale: torch.Tensor, bias: Optional[torch.Tensor],
               *, use_kernel: Optional[bool] = None) -> torch.Tensor:
    """``x @ W.T + b`` with fp8 activations and weights (see the module docstring)."""
    n, k = w8.shape
    x2 = x.reshape(-1, k).contiguous()  # the kernel takes row-major activations (elementwise ops keep x's strides)
    x8, sx = quantize(x2)  # one compiled pass where probed bit-identical (fp8_activations), else eager
    sw = weight_scales(weight_scale, n).to(x.device)
    # rowwise-scaled fp8 GEMMs write bf16 (cuBLAS and CUTLASS on sm89/sm90 alike; float32 output only on some
    # builds): bf16 out and bias, then the activation dtype — an fp32 model runs the kernel too
    b = None if bias is None else bias.to(device=x.device, dtype=torch.bfloat16)
    if use_kernel is None:
        use_kernel = x.is_cuda and k % 16 == 0 and n % 16 == 0 and kernel_available(x.device.index or 0)
    if use_kernel:  # mat2 must be column-major: the transpose of a row-major weight (a no-op for stored weights)
        out = torch._scaled_mm(x8, w8.contiguous().t(), scale_a=sx, scale_b=sw, bias=b, out_dtype=torch.bfloat16)
    else:
        out = emulate_scaled_mm(x8, w8, sx, sw, b, torch.bfloat16)
    return out.to(x.dtype).reshape(*x.shape[:-1], n)


def measure_deviation(layer, x: torch.Tensor) -> float:
    """max |fast − exact| / max |exact| of one packed fp8 layer on input x."""
    exact = F.linear(x, layer.dequantized_weight(x.dtype, x.device),
                     None if layer.bias is None else layer.bias.to(device=x.device, dtype=x.dtype))
    fast = fp8_linear(x, layer.weight.to(x.device), layer.weight_scale, layer.bias)
    return float((fast.float() - exact.float()).abs().max() / exact.float().abs().max().clamp(min=1e-30))


def fp8_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """(name, layer) of every packed fp8 Linear of ``model`` (the layers the fast path can run)."""
    return [(name, m) for name, m in model.named_modules()
            if getattr(m, "fast_fp8", None) is not None and getattr(m, "scheme", None) in FP8_SCHEMES]


def fast_fp8_report(layers: list, *, on_kernel: bool, probe_layers: Optional[int] = None, probe_tokens: int = 64,
                    seed: int = 0) -> str:
    """What to show on a node once the fast path is on for ``layers``: NOT reference-exact, the worst relative
    deviation from the exact path measured on a seeded N(0, 1) probe through ``probe_layers`` of them (all by
    default; the first ones in model order otherwise), and whether tensor cores run it."""
    g = torch.Generator().manual_seed(seed)
    probed = layers[:probe_layers] if probe_layers else layers
    worst = 0.0
    for _, m in probed:
        x = torch.randn(probe_tokens, m.in_features, generator=g).to(device=m.weight.device, dtype=m.compute_dtype)
        worst = max(worst, measure_deviation(m, x))
    where = "fp8 tensor cores" if on_kernel else "emulated in float32 — slower than the exact path; fast only on CUDA sm89+"
    sample = f"{len(probed)} of them" if len(probed) < len(layers) else "each"
    return (f"fp8 matmul: FAST ({where}), NOT reference-exact — {len(layers)} layers, max relative deviation "
            f"{worst:.2e} per layer on a random probe ({sample} measured)")


def set_fast_fp8(model: torch.nn.Module, enabled: bool, *, probe_tokens: int = 64, seed: int = 0) -> str:
    """Switch the fast path on/off for every packed fp8 layer of a plain-torch model; returns what to show."""
    layers = fp8_layers(model)
    for _, m in layers:
        m.fast_fp8 = bool(enabled)
    if not enabled or not layers:
        return "fp8 matmul: exact (decode to bf16, bf16 matmul)" if layers else "fp8 matmul: no fp8 layers"
    on_kernel = any(p.is_cuda for p in model.parameters()) and kernel_available()
    return fast_fp8_report(layers, on_kernel=on_kernel, probe_tokens=probe_tokens, seed=seed)
