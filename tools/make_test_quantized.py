"""Write tiny Ideogram 4 DiT files in ComfyUI's ``comfy_quant`` formats and in GGUF, with the real writers.

* ComfyUI: every Linear is quantised by comfy-kitchen's ``QuantizedTensor.from_float`` (what ComfyUI's
  own quantisers call) and serialised by its ``state_dict`` plus the ``comfy_quant`` JSON ComfyUI writes
  (``comfy/ops.py`` ``_quantized_weight_state_dict``); a per-module ``schemes`` map makes mixed files.
* GGUF: ``gguf.GGUFWriter`` in the ComfyUI-GGUF layout (state-dict names, 1-D / small tensors F32 or F16).
  Types ``gguf.quants.quantize`` implements are quantised from the weights; for the others (K-quants,
  IQ4_NL, IQ4_XS) valid random blocks with small scales are written (their truth is ``gguf.quants.dequantize``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping, Optional

import numpy as np
import torch

from model.checkpoints import json_from_tensor, json_to_tensor
from tools.make_test_checkpoints import _is_linear_weight, write_file

COMFY_LAYOUTS = {"nvfp4": ("TensorCoreNVFP4Layout", {}), "mxfp8": ("TensorCoreMXFP8Layout", {}),
                 "int8_tensorwise": ("TensorWiseINT8Layout", {}),
                 "int8_convrot": ("TensorWiseINT8Layout", {"per_channel": True, "convrot": True, "convrot_groupsize": 16}),
                 "fp8_scaled": ("TensorCoreFP8Layout", {})}
# (offsets of fp16 super-scales d / dmin, the largest |q·sc| of the type) for random valid blocks
_RANDOM_BLOCKS = {"Q2_K": ((80, 82), 45), "Q3_K": ((108,), 128), "Q4_K": ((0, 2), 945), "Q5_K": ((0, 2), 1953),
                  "Q6_K": ((208,), 4064), "IQ4_NL": ((0,), 127), "IQ4_XS": ((0,), 4064), "Q8_0": ((0,), 127), "Q4_0": ((0,), 8),
                  "Q5_0": ((0,), 16), "Q4_1": ((0, 2), 15), "Q5_1": ((0, 2), 31)}
_QUANTISABLE = ("Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "F16", "BF16")  # what gguf.quants.quantize implements


def comfy_quant_tensors(key: str, weight: torch.Tensor, fmt: str, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """One Linear weight → the tensors ComfyUI writes for it in ``fmt`` (see COMFY_LAYOUTS)."""
    from comfy_kitchen.tensor import QuantizedTensor

    layout, kwargs = COMFY_LAYOUTS[fmt]
    qt = QuantizedTensor.from_float(weight.to(dtype), layout, **kwargs)
    module = key[: -len(".weight")]
    out = dict(qt.state_dict(key))
    conf = {"format": {"fp8_scaled": "float8_e4m3fn", "int8_convrot": "int8_tensorwise"}.get(fmt, fmt)}
    if kwargs.get("convrot"):
        conf.update(convrot=True, convrot_groupsize=kwargs["convrot_groupsize"])
    out[module + ".comfy_quant"] = json_to_tensor(conf)
    return {k: v.contiguous() for k, v in out.items()}


def convert_comfy(sd: Mapping[str, torch.Tensor], scheme: str | Callable[[str], Optional[str]],
                  prefix: str = "") -> dict[str, torch.Tensor]:
    """Official float32 state dict → a ComfyUI quantised file's tensors; ``scheme(key)`` may return None
    (kept bf16) for mixed files."""
    pick = scheme if callable(scheme) else (lambda key: scheme)
    out = {}
    for key, value in sd.items():
        fmt = pick(key) if _is_linear_weight(key, sd) else None
        tensors = comfy_quant_tensors(key, value, fmt) if fmt else {key: value.to(torch.bfloat16)}
        out.update({prefix + k: v for k, v in tensors.items()})
    return out


def write_comfy(sd, path: Path, scheme, prefix: str = "model.diffusion_model.") -> Path:
    return write_file(convert_comfy(sd, scheme, prefix), path, f"comfy_{scheme if isinstance(scheme, str) else 'mixed'}")


def older_comfy_layout(tensors: Mapping[str, torch.Tensor], layout: str, *,
                       marker: str = "scaled_fp8") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Today's ComfyUI fp8_scaled tensors (``<module>.comfy_quant`` tagged) → one of the two older layouts that
    ``comfy.utils.convert_old_quants`` still reads, as ``(tensors, metadata)`` for ``save_file``:

    * ``"quantization_metadata"``: untagged tensors and ``{"layers": {module: config}}`` in ``_quantization_metadata``;
    * ``"scaled_fp8"``: a ``marker`` tensor (``scaled_fp8`` under the file's prefix), ``scale_weight`` for
      ``weight_scale`` and a unit ``scale_input`` beside it, no configs.
    """
    configs = {k[:-len(".comfy_quant")]: json_from_tensor(v) for k, v in tensors.items() if k.endswith(".comfy_quant")}
    untagged = {k: v for k, v in tensors.items() if not k.endswith(".comfy_quant")}
    if layout == "quantization_metadata":
        return untagged, {"_quantization_metadata": json.dumps({"layers": configs})}
    if layout != "scaled_fp8":
        raise ValueError(f"layout {layout!r}: choose 'quantization_metadata' or 'scaled_fp8'")
    legacy = {marker: torch.empty(2, dtype=torch.float8_e4m3fn)}
    for key, value in untagged.items():
        module, _, tail = key.rpartition(".")
        legacy[f"{module}.scale_weight" if tail == "weight_scale" else key] = value
        if tail == "weight_scale":
            legacy[f"{module}.scale_input"] = torch.ones(())
    return legacy, {}


def random_blocks(qtype: str, rows: int, cols: int, target: float, seed: int) -> np.ndarray:
    """Valid random ``qtype`` blocks (rows, bytes per row) whose weights are about ``target`` in size."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[qtype]]
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    offsets, qmax = _RANDOM_BLOCKS[qtype]
    for off in offsets:
        d = (rng.uniform(0.5, 1.0, size=data.shape[0]) * target / qmax).astype(np.float16)
        data[:, off:off + 2] = d.view(np.uint8).reshape(-1, 2)
    return data.reshape(rows, cols // block * size)


def gguf_tensors(sd: Mapping[str, torch.Tensor], qtype: str, seed: int = 0,
                 every_2d: bool = False) -> dict[str, tuple[np.ndarray, str]]:
    """name → (numpy data as GGUFWriter takes it, ggml type name), ComfyUI-GGUF style: 1-D and small tensors F32,
    Linear weights whose rows are whole blocks ``qtype``, the rest F16.  ``every_2d``: also pack the other 2-D
    weights (``embed_image_indicator``), as ComfyUI-GGUF's llama-quantize step does for names off its keep-lists."""
    import gguf

    T = gguf.GGMLQuantizationType
    block = gguf.GGML_QUANT_SIZES[T[qtype]][0]
    out = {}
    for i, (key, value) in enumerate(sd.items()):
        w = value.detach().to(torch.float32).numpy()
        if value.ndim == 1 or value.numel() <= 1024:
            out[key] = (w, "F32")
        elif qtype in ("F16", "BF16"):
            out[key] = (gguf.quants.quantize(w, T[qtype]), qtype)
        elif not (every_2d or _is_linear_weight(key, sd)) or w.shape[1] % block:
            out[key] = (w.astype(np.float16), "F16")  # what ComfyUI-GGUF's converter keeps unquantised
        elif qtype not in _QUANTISABLE:
            out[key] = (random_blocks(qtype, *w.shape, float(np.abs(w).max()), seed + i), qtype)
        else:
            out[key] = (gguf.quants.quantize(w, T[qtype]), qtype)
    return out


def write_gguf(sd: Mapping[str, torch.Tensor], path: Path, qtype: str, *, arch: str = "ideogram4",
               prefix: str = "", seed: int = 0, every_2d: bool = False) -> Path:
    """A ComfyUI-GGUF-layout file: every tensor of ``sd`` under ``prefix + key`` (``every_2d``: see
    :func:`gguf_tensors`)."""
    tensors = gguf_tensors(sd, qtype, seed, every_2d)
    return write_raw_gguf(path, {prefix + key: pair for key, pair in tensors.items()}, arch=arch)


def write_raw_gguf(path: Path, tensors: Mapping, *, arch: str = "ideogram4", arrays: Optional[Mapping] = None) -> Path:
    """A GGUF written by gguf's own GGUFWriter: ``tensors`` name → numpy array (its own type), or (array as gguf
    maps it — block bytes (rows, bytes per row) or elements —, ggml type or its name); ``arrays`` metadata key → list."""
    import gguf

    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(str(path), arch)
    for key, values in (arrays or {}).items():
        writer.add_array(key, values)
    for name, data in tensors.items():
        if isinstance(data, tuple):
            kind = data[1] if not isinstance(data[1], str) else gguf.GGMLQuantizationType[data[1]]
            writer.add_tensor(name, data[0], raw_shape=data[0].shape, raw_dtype=kind)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
