"""The opt-in fast fp8 matmul on the pack's MODELs (what ``Ideogram4NativeFastFP8`` runs).

Each packed fp8 layer has a ``fast_fp8`` switch (``model.checkpoints.fp8_matmul``).  It is set on a
*clone* of the ``ModelPatcher`` as ComfyUI object patches, so ComfyUI applies it when that clone is
loaded and restores the exact path when it is unloaded: the model the loader gave to other nodes
stays reference-exact.  Plain LoRAs are added to the fast matmul as a low-rank side branch
(``lora_branch``); a layer with another adapter (LoHa, LoKr, DoRA…) keeps the exact path, which that
adapter needs the decoded weight for; streamed layers take the fast path on their moved fp8 storage.  On a CUDA
GPU without the fp8 kernel (below sm89) the models stay on the exact path and the node says so: an emulation there
would be slower and hold float32 copies of each weight; elsewhere (the CPU) the float32 emulation runs, labelled.
"""

from __future__ import annotations

import torch

from ...model.checkpoints.fp8_activations import quantize_note
from ...model.checkpoints.fp8_matmul import fast_fp8_report, fp8_layers, kernel_available
from .comfy_model import dit_of, require_ideogram4
from .lora_patching import computing_dit

PROBE_BLOCK = "layers.0."  # the deviation is measured on the first block's Linears (decoding all 200+: ~30 s on a CPU)


def _on_kernel(patcher) -> bool:
    device = torch.device(patcher.load_device)
    return device.type == "cuda" and kernel_available(device.index or 0)


def _gpu_name(device: torch.device) -> str:
    try:
        major, minor = torch.cuda.get_device_capability(device)
        return f"this GPU ({torch.cuda.get_device_name(device)}, sm{major}{minor})"
    except Exception:  # noqa: BLE001 - only a label
        return "this GPU"


def with_fast_fp8(patcher, what: str):
    """(clone of ``patcher`` whose fp8 layers run the fast matmul, report line) — ValueError without fp8 layers."""
    require_ideogram4(patcher, what)
    dit = dit_of(patcher)
    if computing_dit(dit) is not dit:  # an unconditional model built from a LoRA on the conditional base
        return patcher, (f"{what}: shares the conditional model's layers — its pass runs the fast fp8 matmul "
                         f"exactly when the conditional model does")
    layers = fp8_layers(dit)
    if not layers:
        raise ValueError(f"{what}: this model ({dit.checkpoint_format}) has no fp8 layers; the fast fp8 matmul "
                         f"applies to official fp8 and ComfyUI fp8_scaled checkpoints")
    device = torch.device(patcher.load_device)
    on_kernel = _on_kernel(patcher)
    if device.type == "cuda" and not on_kernel:  # an emulation there: slower, and float32-sized temporaries
        return patcher, (f"{what}: fp8 matmul NOT enabled — {_gpu_name(device)} has no fp8 tensor-core matmul "
                         f"(torch._scaled_mm with rowwise scales, sm89+: RTX 40xx, L4/L40, H100/H200); the exact "
                         f"path runs, which is faster here than emulating it")
    clone = patcher.clone()
    for name, _ in layers:
        clone.add_object_patch(f"diffusion_model.{name}.fast_fp8", True)
    probed = [item for item in layers if item[0].startswith(PROBE_BLOCK)]
    ordered = probed + [item for item in layers if item not in probed]
    report = fast_fp8_report(ordered, on_kernel=on_kernel, probe_layers=len(probed) or None)
    if on_kernel:  # how the activations are quantised on the GPU (compiled and probed there once)
        report += f"; {quantize_note(device, dit.compute_dtype)}"
    return clone, f"{what}: {report}"
