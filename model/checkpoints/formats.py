"""The one format-detection function for DiT checkpoints, and the logical view it yields.

Naming (official fused ``qkv`` / diffusers split ``to_q,to_k,to_v`` + ``to_out.0``, with an optional
``model.diffusion_model.`` prefix) and quantisation (none / official fp8 per-row / ComfyUI
``comfy_quant`` fp8 per-tensor / bitsandbytes nf4) are detected independently, so every
combination goes through one code path.  The result maps each *official* tensor name to the
source tensors it is made of.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from . import comfy_quant
from .fp8 import FP8_DTYPE
from .nf4 import NF4_BLOCKSIZE, parse_nf4_quant_state
from .reader import CheckpointReader, json_from_tensor

PREFIXES = ("model.diffusion_model.", "diffusion_model.", "transformer.")
MODEL_MARKER = "embed_image_indicator.weight"  # a tensor only Ideogram 4's DiT has
_DIFFUSERS_QKV = re.compile(r"^(layers\.\d+\.attention\.)to_([qkv])\.(.+)$")
_DIFFUSERS_OUT = re.compile(r"^(layers\.\d+\.attention\.)to_out\.0\.(.+)$")
_NESTED_SUFFIXES = (".nested_absmax", ".nested_quant_map", ".quant_state.bitsandbytes__fp4")

# Characteristic keys of other model families, for a helpful "this is not Ideogram 4" error.
_OTHER_FAMILIES = (
    ("double_blocks.0.img_attn", "a FLUX-family diffusion model"),
    ("input_blocks.0.0.weight", "a Stable Diffusion / SDXL UNet"),
    ("joint_blocks.0", "a Stable Diffusion 3 MMDiT"),
    ("transformer_blocks.0.img_mod", "a Qwen-Image diffusion model"),
    ("noise_refiner.0", "a Lumina 2 / Z-Image diffusion model"),
    ("blocks.0.self_attn", "a Wan video model"),
    ("self_attn.q_proj.weight", "a language / text-encoder model (e.g. Qwen), not a diffusion model"),
    ("decoder.conv_in.weight", "a VAE"),
    ("decoder.up_blocks.0", "a VAE"),
    ("visual.blocks.0", "a vision-language model"),
)


@dataclass
class LinearSpec:
    """How one official Linear weight is stored."""
    scheme: Optional[str]  # None, "fp8_rowwise", "fp8_tensorwise", "nf4", "nvfp4", "mxfp8", "int8_tensorwise", "gguf"
    shape: tuple[int, int]  # logical (out, in)
    options: dict = field(default_factory=dict)  # per-layer codec options (gguf {"qtype"}, int8 {"convrot"...})


QUANT_DESCRIPTIONS = {"fp8_rowwise": "official fp8 (per-row scales)",
                      "fp8_tensorwise": "ComfyUI fp8_scaled (per-tensor scales)", "nf4": "bitsandbytes nf4",
                      "nvfp4": "ComfyUI nvfp4", "mxfp8": "ComfyUI mxfp8", "int8_tensorwise": "ComfyUI int8",
                      "gguf": "GGUF", "mixed": "mixed quantisation"}


@dataclass
class CheckpointFormat:
    naming: str  # "official" | "diffusers"
    quantization: str  # "none" | "fp8_rowwise" | "fp8_tensorwise" | "nf4" | "mixed"
    prefix: str  # stripped key prefix ("" if none)
    storage_dtype: Optional[torch.dtype]  # dtype holding most bytes of the unquantised float tensors
    # official key -> list of source keys (3 for diffusers q/k/v, else 1); includes quant siblings
    sources: dict[str, list[str]] = field(repr=False, default_factory=dict)
    linears: dict[str, LinearSpec] = field(repr=False, default_factory=dict)  # "<module>" -> spec
    logical_shapes: dict[str, tuple[int, ...]] = field(repr=False, default_factory=dict)

    container: str = "safetensors"  # "safetensors" | "gguf"
    layout_note: Optional[str] = None  # how an older layout was read (the reader's ``layout_note``), else None

    @property
    def storage_description(self) -> str:
        """'bfloat16', 'official fp8 (per-row scales)', 'GGUF (Q4_K, Q6_K)', 'mixed quantisation (nvfp4, ...)'."""
        if self.quantization in ("gguf", "mixed"):
            kinds = sorted({s.options.get("qtype", s.scheme) for s in self.linears.values() if s.scheme})
            return f"{QUANT_DESCRIPTIONS[self.quantization]} ({', '.join(kinds)})"
        text = QUANT_DESCRIPTIONS.get(self.quantization) or str(self.storage_dtype).replace("torch.", "")
        return f"GGUF {text}" if self.container == "gguf" and self.quantization == "none" else text

    @property
    def layout_suffix(self) -> str:
        """``"; <layout note>"`` for a file read from an older layout, else ``""``: the end of a format line."""
        return f"; {self.layout_note}" if self.layout_note else ""

    @property
    def description(self) -> str:
        return f"{self.storage_description}, {self.naming} key names{self.layout_suffix}"


def reader_traits(reader) -> dict:
    """The ``CheckpointFormat`` fields that come from the reader itself: its container and layout note."""
    return {"container": "gguf" if any(p.suffix == ".gguf" for p in reader.files) else "safetensors",
            "layout_note": reader.layout_note}


def describe_other_family(keys: Sequence[str], families: Sequence[tuple] = _OTHER_FAMILIES, *,
                          unknown: str = "an unknown model") -> Optional[str]:
    """What a checkpoint looks like, from the first (markers, description) row whose marker (a substring, or
    a tuple of alternatives) occurs in a key; ``unknown`` (with the first keys) when none does, or None
    when ``unknown`` is None so the caller can try its own fallbacks first."""
    for markers, what in families:
        markers = (markers,) if isinstance(markers, str) else markers
        if any(m in k for k in keys for m in markers):
            return what
    if unknown is None:
        return None
    return f"{unknown} (first keys: {', '.join(sorted(keys)[:4])})"


def _strip_prefix(keys: list[str]) -> str:
    """The prefix every key has; else the one the model's own marker tensor has, so that a stray key beside a
    prefixed model (e.g. a legacy ``scaled_fp8`` marker) is reported by name instead of hiding the model."""
    for p in PREFIXES:
        if keys and all(k.startswith(p) for k in keys):
            return p
    return next((p for p in PREFIXES if p + MODEL_MARKER in keys), "")


def _official_name(key: str) -> tuple[str, Optional[str]]:
    """Map a (prefix-stripped) key to (official key, q/k/v letter or None)."""
    m = _DIFFUSERS_QKV.match(key)
    if m:
        return f"{m.group(1)}qkv.{m.group(3)}", m.group(2)
    m = _DIFFUSERS_OUT.match(key)
    if m:
        return f"{m.group(1)}o.{m.group(2)}", None
    return key, None


def module_of(official_key: str) -> tuple[str, str]:
    """'layers.0.attention.qkv.weight.absmax' -> ('layers.0.attention.qkv', 'weight.absmax')."""
    for tail in ("weight.quant_state.bitsandbytes__nf4", "weight.absmax", "weight.quant_map", "weight_scale",
                 "weight_scale_2", "input_scale", "pre_quant_scale", "comfy_quant", "weight", "bias"):
        if official_key.endswith("." + tail):
            return official_key[: -len(tail) - 1], tail
    return official_key.rpartition(".")[0], official_key.rpartition(".")[2]


def linear_scheme(reader: CheckpointReader, label: str, mod: str, tails: dict[str, str],
                   sources: dict[str, list[str]]) -> Optional[str]:
    """None for a plain weight, else the quantisation scheme of module ``mod`` (validated)."""
    wdtype = reader.dtype(sources[tails["weight"]][0])
    qtypes = {reader.block_type(k) for k in sources[tails["weight"]]}
    if qtypes != {None}:
        if len(qtypes) > 1:
            raise ValueError(f"{label}: {mod}: split q/k/v GGUF weights of different types ({sorted(map(str, qtypes))}) "
                             "cannot be fused")
        return "gguf"
    if "weight.quant_state.bitsandbytes__nf4" in tails:
        for need in ("weight.absmax", "weight.quant_map"):
            if need not in tails:
                raise ValueError(f"{label}: nf4 layer {mod} lacks its {need} tensor")
        return "nf4"  # its quant_state is parsed and checked once, in _nf4_logical_shape
    if wdtype == FP8_DTYPE:
        if "weight_scale" not in tails:
            raise ValueError(f"{label}: {mod}.weight is float8 but has no weight_scale")
        scale_shapes = [reader.shape(s) for s in sources[tails["weight_scale"]]]
        if all(int(torch.Size(s).numel()) == 1 for s in scale_shapes):
            if len(scale_shapes) > 1:
                raise ValueError(f"{label}: {mod}: split q/k/v fp8 weights with per-tensor scales cannot be fused; "
                                 "use the official fused-qkv file")
            return "fp8_tensorwise"
        return "fp8_rowwise"
    if wdtype == torch.uint8:
        raise ValueError(f"{label}: {mod}.weight is packed uint8 without a bitsandbytes quant_state")
    if wdtype.is_floating_point:
        return None
    raise ValueError(f"{label}: {mod}.weight has dtype {wdtype}, expected a float, float8 or nf4 weight")


def _comfy_quant_scheme(reader: CheckpointReader, label: str, mod: str, tails: dict[str, str],
                        sources: dict[str, list[str]]) -> tuple[Optional[str], dict]:
    """Check a ``comfy_quant`` layer; (scheme, options) for the comfy-kitchen families, (None, {}) for
    float8_e4m3fn (fp8_scaled, classified by its dtype like every fp8 file)."""
    conf = json_from_tensor(reader.get(sources[tails["comfy_quant"]][0]))
    fmt = conf.get("format")
    if fmt == "float8_e4m3fn":
        if reader.dtype(sources[tails["weight"]][0]) == torch.uint8:
            raise ValueError(f"{label}: {mod}.weight stores float8 data as uint8 (legacy ComfyUI layout), which is "
                             "not supported; re-save it with float8_e4m3fn tensors")
        return None, {}
    if fmt not in comfy_quant.COMFY_CODECS:
        raise ValueError(f"{label}: {mod} uses ComfyUI quantisation format {fmt!r}; supported: float8_e4m3fn, "
                         f"{', '.join(comfy_quant.COMFY_SCHEMES)}")
    if len(sources[tails["weight"]]) > 1:
        raise ValueError(f"{label}: {mod}: split q/k/v {fmt} weights cannot be fused; use the fused-qkv file")
    codec = comfy_quant.COMFY_CODECS[fmt]
    wdtype = reader.dtype(sources[tails["weight"]][0])
    if wdtype not in (codec.weight_dtype, torch.uint8):
        raise ValueError(f"{label}: {mod} is marked ComfyUI {fmt} but its weight is {str(wdtype).replace('torch.', '')}"
                         f" (a {fmt} weight is {str(codec.weight_dtype).replace('torch.', '')})")
    for tail, _ in codec.scales:
        if tail not in tails:
            raise ValueError(f"{label}: {mod} is ComfyUI {fmt} but has no {tail} tensor")
    if "pre_quant_scale" in tails:
        raise ValueError(f"{label}: {mod} has a pre_quant_scale (AWQ smoothing), which is not supported")
    return fmt, comfy_quant.layer_options(fmt, conf)


def _nf4_logical_shape(reader: CheckpointReader, label: str, mod: str, tails: dict[str, str],
                       sources: dict[str, list[str]]) -> tuple[int, int]:
    """(out, in) from the quant_state JSON (summed over split q/k/v parts), checked against the packed size.

    Also the one place the state itself is validated: nf4 with blocksize 64 only.
    """
    shapes = []
    for state_key, weight_key in zip(sources[tails["weight.quant_state.bitsandbytes__nf4"]], sources[tails["weight"]]):
        state = parse_nf4_quant_state(reader.get(state_key))
        if state.get("quant_type") != "nf4" or int(state.get("blocksize", 0)) != NF4_BLOCKSIZE:
            raise ValueError(f"{label}: {mod} is bitsandbytes {state.get('quant_type')} with blocksize "
                             f"{state.get('blocksize')}; only nf4 with blocksize {NF4_BLOCKSIZE} is supported")
        shape = tuple(int(v) for v in state["shape"])
        packed = reader.shape(weight_key)
        if len(shape) != 2 or int(torch.Size(packed).numel()) * 2 != shape[0] * shape[1]:
            raise ValueError(f"{label}: {mod}: packed nf4 size {list(packed)} does not match its shape {list(shape)}")
        shapes.append(shape)
    return sum(p[0] for p in shapes), shapes[0][1]


def classify_modules(reader: CheckpointReader, label: str, sources: dict[str, list[str]]
                     ) -> tuple[dict[str, LinearSpec], dict[str, tuple[int, ...]], str, Optional[torch.dtype]]:
    """Group official keys by module and classify every Linear weight.

    Returns (linears, logical shapes of weights/biases, overall quantisation, storage dtype of unquantised
    floats: the one holding most of their bytes, so a bf16 file with float32 norms — every ComfyUI-GGUF F16 /
    BF16 file — is bf16).  Shared by the DiT and text-encoder format detection.
    """
    modules: dict[str, dict[str, str]] = {}
    for official in sources:
        mod, tail = module_of(official)
        modules.setdefault(mod, {})[tail] = official
    linears: dict[str, LinearSpec] = {}
    logical: dict[str, tuple[int, ...]] = {}
    float_bytes: dict[torch.dtype, int] = {}
    schemes: set[str] = set()
    for mod, tails in modules.items():
        for tail in ("weight", "bias"):
            if tail in tails:
                src = sources[tails[tail]]
                shapes = [reader.shape(s) for s in src]
                logical[tails[tail]] = (sum(s[0] for s in shapes), *shapes[0][1:]) if len(src) > 1 else shapes[0]
                dtype = reader.dtype(src[0])
                if dtype.is_floating_point and dtype.itemsize > 1:
                    numel = sum(int(torch.Size(s).numel()) for s in shapes)
                    float_bytes[dtype] = float_bytes.get(dtype, 0) + numel * dtype.itemsize
        if "weight" not in tails:
            continue
        scheme, options = _comfy_quant_scheme(reader, label, mod, tails, sources) if "comfy_quant" in tails \
            else (None, {})
        if scheme is None:
            scheme = linear_scheme(reader, label, mod, tails, sources)
        if scheme == "nf4":
            logical[tails["weight"]] = _nf4_logical_shape(reader, label, mod, tails, sources)
        elif scheme in comfy_quant.COMFY_CODECS:
            logical[tails["weight"]] = comfy_quant.logical_shape(scheme, logical[tails["weight"]])
        elif scheme == "gguf":
            options = {"qtype": reader.block_type(sources[tails["weight"]][0])}
        if scheme:
            schemes.add(scheme)
        linears[mod] = LinearSpec(scheme=scheme, shape=tuple(logical[tails["weight"]]), options=options)
    quantization = "none" if not schemes else (next(iter(schemes)) if len(schemes) == 1 else "mixed")
    storage = max(float_bytes, key=float_bytes.get) if float_bytes else None
    return linears, logical, quantization, storage


def detect_format(reader: CheckpointReader) -> CheckpointFormat:
    """Recognise naming + quantisation of an Ideogram 4 DiT checkpoint, or explain what it is instead."""
    raw_keys = reader.keys()
    label = reader.label
    if not raw_keys:
        raise ValueError(f"{label}: the checkpoint contains no tensors")
    prefix = _strip_prefix(raw_keys)
    keys = [k[len(prefix):] if k.startswith(prefix) else k for k in raw_keys]
    if MODEL_MARKER not in keys or not any(k.startswith("llm_cond_proj.") for k in keys):
        raise ValueError(f"{label}: not an Ideogram 4 diffusion model — it looks like {describe_other_family(keys)}")
    nested = [k for k in keys if k.endswith(_NESTED_SUFFIXES)]
    if nested:
        raise ValueError(f"{label}: bitsandbytes nested statistics / fp4 ({nested[0]}) are not used by the official "
                         "nf4 files and are not supported; re-export with compress_statistics=False")

    sources: dict[str, list[str]] = {}
    letters: dict[str, dict[str, str]] = {}
    naming = "official"
    for raw, key in zip(raw_keys, keys):
        official, letter = _official_name(key)
        if official != key:
            naming = "diffusers"
        if letter:
            letters.setdefault(official, {})[letter] = raw
        else:
            sources.setdefault(official, []).append(raw)
    for official, parts in letters.items():
        if set(parts) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(parts))
            raise ValueError(f"{label}: split attention weights incomplete for {official} (missing to_{', to_'.join(missing)})")
        sources[official] = [parts["q"], parts["k"], parts["v"]]
    dup = [k for k, v in sources.items() if len(v) > 1 and k not in letters]
    if dup:
        raise ValueError(f"{label}: tensor {dup[0]} appears under two names ({', '.join(sources[dup[0]])})")

    linears, logical, quantization, storage = classify_modules(reader, label, sources)
    return CheckpointFormat(naming=naming, quantization=quantization, prefix=prefix, storage_dtype=storage,
                            sources=sources, linears=linears, logical_shapes=logical, **reader_traits(reader))
