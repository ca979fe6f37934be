"""ComfyUI's precision flags (``--fp32-unet``, ``--force-fp32``, ``--fp16-vae``, ``--fp8_e4m3fn-text-enc`` …) for the
pack's loaders: followed by ``auto`` where they name a dtype the pack computes in (bf16, the reference's, or fp32),
reported on the node where they do not (fp16 / fp64 compute, fp8 storage of a bf16 file) or where a loader's own
dtype widget overrides them — never ignored silently."""

from __future__ import annotations

from typing import Optional

import torch

# kind → (flag attribute of comfy.cli_args.args, the dtype it asks for or None when the pack does not compute in it)
FLAGS: dict[str, tuple[tuple[str, Optional[torch.dtype]], ...]] = {
    # --force-fp16 sets fp16_unet too (comfy/cli_args.py): named first, so the note names the flag the user passed
    "unet": (("force_fp16", None), ("fp32_unet", torch.float32), ("bf16_unet", torch.bfloat16), ("fp64_unet", None),
             ("fp16_unet", None),
             ("fp8_e4m3fn_unet", None), ("fp8_e5m2_unet", None), ("fp8_e8m0fnu_unet", None),
             ("force_fp32", torch.float32)),
    "vae": (("fp32_vae", torch.float32), ("bf16_vae", torch.bfloat16), ("fp16_vae", None), ("force_fp32", torch.float32),
            ("force_fp16", None)),
    "text_enc": (("fp32_text_enc", torch.float32), ("bf16_text_enc", torch.bfloat16), ("fp16_text_enc", None),
                 ("fp8_e4m3fn_text_enc", None), ("fp8_e5m2_text_enc", None), ("force_fp32", torch.float32),
                 ("force_fp16", None)),
}
WHAT = {"unet": "the DiT", "vae": "the VAE", "text_enc": "the text encoder"}


def _args():
    import comfy.cli_args

    return comfy.cli_args.args


def flag_request(kind: str) -> Optional[tuple[str, Optional[torch.dtype]]]:
    """(``--flag-name``, dtype or None) of the first precision flag set for ``kind``, or None."""
    args = _args()
    for attr, dtype in FLAGS[kind]:
        if getattr(args, attr, False):
            return "--" + attr.replace("_", "-").replace("fp8-e", "fp8_e"), dtype
    return None


def flag_dtype(kind: str) -> Optional[torch.dtype]:
    """The dtype ``auto`` takes from a flag (None: no flag, or one the pack does not compute in)."""
    request = flag_request(kind)
    return request[1] if request else None


def flag_note(kind: str, choice: str) -> Optional[str]:
    """What the node says about a precision flag for ``kind`` given its dtype widget ``choice``."""
    request = flag_request(kind)
    if request is None:
        return None
    flag, dtype = request
    if dtype is None:
        return (f"ComfyUI flag {flag} is not used for {WHAT[kind]}: this pack computes in bf16 (the reference's) or "
                "fp32, chosen by the dtype widget; for fp8 weights load an fp8 file")
    name = str(dtype).removeprefix("torch.")
    widget = {"bf16": torch.bfloat16, "fp32": torch.float32}.get(choice)
    if widget == dtype:
        return None  # the widget asks for what the flag asks for: nothing is overridden
    if choice != "auto":
        return f"ComfyUI flag {flag} ({name}) not used for {WHAT[kind]}: the node's dtype widget is {choice!r}"
    return f"compute {name} from ComfyUI flag {flag}" + ("" if dtype == torch.bfloat16 else
                                                           " (the reference computes in bf16)")
