"""ComfyUI's two older ways of storing per-layer quantisation, read as today's ``comfy_quant`` layout.

ComfyUI still loads both (``comfy/utils.py`` ``convert_old_quants``), so the pack does too:

* ``_quantization_metadata`` in the safetensors header metadata: JSON ``{"layers": {module: config}}`` in place
  of a ``<module>.comfy_quant`` tensor beside each quantised weight;
* the ``scaled_fp8`` marker tensor of the first fp8_scaled files, whose ``<module>.scale_weight`` /
  ``<module>.scale_input`` are today's ``weight_scale`` / ``input_scale``; every module with a ``scale_weight``
  is ``float8_e4m3fn`` (a two-element marker asks for full-precision matmuls, which the exact path always does).

``legacy_quant_plan`` is pure: from a file's keys and metadata it gives the key renames and the ``comfy_quant``
configs to present, and a sentence for the log; ``CheckpointReader`` applies it.  A file that already has
``comfy_quant`` tensors is left as it is (a marker beside them is then reported as an unexpected key).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence

METADATA_KEY = "_quantization_metadata"
MARKER = "scaled_fp8"
_LEGACY_TAILS = {"scale_weight": "weight_scale", "scale_input": "input_scale"}


@dataclass(frozen=True)
class LegacyQuantPlan:
    renames: dict[str, str]  # presented key -> key in the file
    consumed: tuple[str, ...]  # file keys the plan reads and hides (the scaled_fp8 marker)
    layers: dict[str, dict]  # module -> its comfy_quant config, presented as ``<module>.comfy_quant``
    description: str


def _metadata_layers(raw: str, label: str) -> dict[str, dict]:
    try:
        layers = json.loads(raw)["layers"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{label}: its {METADATA_KEY} is not ComfyUI's {{\"layers\": {{module: config}}}} JSON "
                         f"({exc})") from None
    if not isinstance(layers, dict):
        bad = ["layers"]
    else:
        bad = [m for m, conf in layers.items() if not isinstance(conf, dict) or "format" not in conf]
    if bad:
        raise ValueError(f"{label}: its {METADATA_KEY} needs a {{\"format\": ...}} config for each layer; "
                         f"{', '.join(map(str, bad[:5]))} has none")
    return layers


def legacy_quant_plan(keys: Sequence[str], metadata: Mapping[str, str], label: str,
                      shape: Callable[[str], tuple[int, ...]]) -> Optional[LegacyQuantPlan]:
    """How to present a file in an older ComfyUI quantisation layout as today's; None for any other file."""
    present = set(keys)
    if METADATA_KEY in metadata:
        layers = _metadata_layers(metadata[METADATA_KEY], label)
        both = sorted(m for m in layers if f"{m}.comfy_quant" in present)
        if both:
            raise ValueError(f"{label}: {', '.join(both[:5])} has both a comfy_quant tensor and a {METADATA_KEY} "
                             "entry; ComfyUI would use the metadata's, re-save the file with one of the two")
        return LegacyQuantPlan({}, (), layers, f"per-layer quantisation from its {METADATA_KEY} "
                                               f"({len(layers)} layers)")
    markers = tuple(k for k in present if k.rpartition(".")[2] == MARKER)
    scaled = [k for k in present if k.rpartition(".")[2] == "scale_weight"]
    if not markers or not scaled or any(k.endswith(".comfy_quant") for k in present):
        return None
    renames = {}
    for key in present:
        module, _, tail = key.rpartition(".")
        if tail in _LEGACY_TAILS:
            new = f"{module}.{_LEGACY_TAILS[tail]}"
            if new in present:
                raise ValueError(f"{label}: {module} has both {tail} (legacy scaled_fp8) and {_LEGACY_TAILS[tail]}; "
                                 "keep one of the two")
            renames[new] = key
    conf = {"format": "float8_e4m3fn"}
    if any(shape(m) == (2,) for m in markers):
        conf["full_precision_matrix_mult"] = True
    layers = {k.rpartition(".")[0]: dict(conf) for k in scaled}
    return LegacyQuantPlan(renames, markers, layers, f"legacy ComfyUI scaled_fp8 layout (scale_weight / "
                                                     f"scale_input, {len(layers)} layers) read as fp8_scaled")
