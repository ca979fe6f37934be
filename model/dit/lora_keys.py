"""LoRA key names of every trainer in the wild → this DiT's module names (pure: no ComfyUI).

A LoRA file stores, per adapted Linear, tensors ``<prefix><module><suffix>``.  This module knows

* the module spellings: the official names (fused ``attention.qkv``, ``attention.o``) and the
  diffusers ones (split ``attention.to_q/to_k/to_v`` — rows ``[0, E)``, ``[E, 2E)``, ``[2E, 3E)`` of
  the fused ``qkv`` — and ``attention.to_out.0``), dotted or with ``_`` for ``.`` (kohya style);
* the prefixes: diffusers/PEFT ``transformer.`` (``Ideogram4Pipeline.save_lora_weights``, SimpleTuner,
  OneTrainer's diffusers export), PEFT ``base_model.model.``, ai-toolkit ``diffusion_model.`` /
  ``conditional_transformer.``, ComfyUI ``diffusion_model.``, kohya / musubi-tuner ``lora_unet_``,
  OneTrainer ``lora_transformer_``, SimpleTuner LyCORIS ``lycoris_``, and none;
* the suffixes ComfyUI's weight adapters read (LoRA ``lora_A/B``, ``lora_down/up`` (+ ``alpha``,
  ``lora_mid``, ``dora_scale``), LoHa ``hada_*``, LoKr ``lokr_*``, full ``diff`` / ``diff_b``…).

:func:`map_lora` splits a file's keys into mapped targets and unmapped keys; :func:`comfy_key_map`
is the same table in the form ``comfy.lora.load_lora`` consumes (values with a ``(dim, start, size)``
offset for the fused-qkv rows); :func:`normalize_peft` applies what PEFT keeps in the file's metadata
(``lora_alpha`` / ``r`` / ``rank_pattern`` / ``alpha_pattern`` / rsLoRA) as ComfyUI ``alpha`` tensors
and renames PEFT's DoRA ``lora_magnitude_vector`` to ``dora_scale``.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

from ..checkpoints.formats import describe_other_family
from .config import DiTConfig, expected_shapes

# Spellings of the file's prefix before the module name (longest first: they are tried in this order).
DOTTED_PREFIXES = ("transformer.base_model.model.", "base_model.model.", "model.diffusion_model.", "diffusion_model.",
                   "conditional_transformer.", "transformer.", "unet.", "")
UNDERSCORE_PREFIXES = ("lora_unet_", "lora_transformer_", "lycoris_")

# Suffixes of the tensors ComfyUI's adapters and comfy.lora.load_lora read (plus PEFT's DoRA magnitude).
LOW_RANK_UP = (".lora_up.weight", ".lora_B.weight", ".lora.up.weight", "_lora.up.weight", ".lora_B",
               ".lora_linear_layer.up.weight", ".lora_B.default.weight")
LOW_RANK_DOWN = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight", "_lora.down.weight", ".lora_A",
                 ".lora_linear_layer.down.weight", ".lora_A.default.weight")
OTHER_SUFFIXES = (".alpha", ".dora_scale", ".lora_magnitude_vector", ".lora_mid.weight", ".reshape_weight",
                  ".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".hada_t1", ".hada_t2",
                  ".lokr_w1", ".lokr_w2", ".lokr_w1_a", ".lokr_w1_b", ".lokr_w2_a", ".lokr_w2_b", ".lokr_t2",
                  ".oft_blocks", ".rescale", ".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight",
                  ".w_norm", ".b_norm", ".diff", ".diff_b", ".set_weight")
SUFFIXES = tuple(sorted(LOW_RANK_UP + LOW_RANK_DOWN + OTHER_SUFFIXES, key=len, reverse=True))
LOW_RANK = frozenset(LOW_RANK_UP + LOW_RANK_DOWN)
# factored adapters: none of them can patch a 1-D weight
FACTORED = LOW_RANK | {x for x in OTHER_SUFFIXES if x.startswith((".hada_", ".lokr_"))}

# What a LoRA that is not for Ideogram 4 looks like (markers are substrings of its keys).
OTHER_LORA_FAMILIES = (
    # the other model's own blocks first (most of those LoRAs also train its text encoder); then text-encoder keys,
    # before the Wan row, whose self_attn.q marker every text-encoder attention key has too
    (("double_blocks", "single_blocks", "single_transformer_blocks"), "a FLUX LoRA"),
    (("down_blocks", "input_blocks", "output_blocks", "mid_block"), "a Stable Diffusion / SDXL LoRA"),
    (("joint_blocks", "context_block"), "a Stable Diffusion 3 LoRA"),
    (("img_mod", "img_mlp", "txt_mlp"), "a Qwen-Image LoRA"),
    (("add_q_proj", "add_k_proj", "context_embedder"), "a Stable Diffusion 3 / FLUX / Qwen-Image LoRA (diffusers names)"),
    (("noise_refiner", "context_refiner"), "a Lumina 2 / Z-Image LoRA"),
    (("lora_te", "text_encoder", "text_model", "language_model", "base_model.model.model.layers",
      "self_attn.q_proj", "self_attn_q_proj"), "a text-encoder LoRA (Ideogram 4 LoRAs patch the DiT only)"),
    ((".lora_B.bias", ".lora_up.bias"), "PEFT lora_bias tensors (lora_B.bias), which no ComfyUI LoRA adapter "
                                        "applies — train or export the LoRA without lora_bias"),
    (("self_attn_q", "self_attn.q", "cross_attn"), "a Wan / video-model LoRA"),
    (("attention.to_q", "attention.qkv", "attention_qkv", "attention_to_q", "feed_forward"),
     "an Ideogram 4-style LoRA for a model of another size (layer count or widths differ)"),
)


@dataclass(frozen=True)
class Target:
    """Where one LoRA module lands: a weight of this DiT, optionally only some of its rows."""

    module: str  # official module name, e.g. "layers.0.attention.qkv"
    shape: tuple[int, ...]  # the full weight's shape
    offset: Optional[tuple[int, int, int]] = None  # (dim, start, size): rows of a fused weight

    @property
    def weight_key(self) -> str:
        return self.module + ".weight"

    @property
    def patched_shape(self) -> tuple[int, ...]:
        if self.offset is None:
            return self.shape
        dim, _, size = self.offset
        return tuple(size if i == dim else s for i, s in enumerate(self.shape))


@dataclass
class LoraMapping:
    """The result of mapping a LoRA file's keys onto one model."""

    targets: dict[str, Target] = field(default_factory=dict)  # file module prefix -> target
    unmapped: list[str] = field(default_factory=list)  # file keys that map nowhere
    shape_errors: list[str] = field(default_factory=list)
    layouts: set[str] = field(default_factory=set)  # e.g. {"diffusers/PEFT"}
    adapters: set[str] = field(default_factory=set)  # e.g. {"LoRA", "LoKr"}
    notes: list[str] = field(default_factory=list)  # what the user should know about how the file is applied
    members: dict[str, dict[str, str]] = field(default_factory=dict)  # file module prefix -> {suffix: key}

    @property
    def patched_weights(self) -> int:
        return len({t.weight_key for t in self.targets.values()})

    def describe(self) -> str:
        kept = [x for x in self.layouts if not any(y != x and y.startswith(x + ", ") for y in self.layouts)]
        layouts = "; ".join(sorted(kept)) or "?"
        adapters = "/".join(sorted(self.adapters)) or "?"
        return (f"{adapters} in {layouts} key names: {len(self.targets)} modules onto "
                f"{self.patched_weights} weights")


def module_aliases(cfg: DiTConfig) -> dict[str, Target]:
    """Every dotted module spelling (official and diffusers) → its :class:`Target`."""
    e = cfg.emb_dim
    out: dict[str, Target] = {}
    for key, shape in expected_shapes(cfg).items():
        if not key.endswith(".weight"):
            continue
        module = key[: -len(".weight")]
        out[module] = Target(module, tuple(shape))
        if module.endswith(".attention.qkv"):
            base = module[: -len("qkv")]
            for i, letter in enumerate("qkv"):
                out[f"{base}to_{letter}"] = Target(module, tuple(shape), (0, i * e, e))
        elif module.endswith(".attention.o"):
            out[module[: -len("o")] + "to_out.0"] = Target(module, tuple(shape))
    return out


def lora_targets(cfg: DiTConfig) -> dict[str, tuple[Target, str]]:
    """Every accepted file module prefix (prefix + spelling) → (target, layout name)."""
    table: dict[str, tuple[Target, str]] = {}
    for name, target in module_aliases(cfg).items():
        attention = None
        if target.module.endswith((".attention.qkv", ".attention.o")):
            attention = "split q/k/v" if name != target.module else "fused qkv"
        for prefix in DOTTED_PREFIXES:
            table[prefix + name] = (target, _layout(prefix, attention))
        for prefix in UNDERSCORE_PREFIXES:
            table[prefix + name.replace(".", "_")] = (target, _layout(prefix, attention))
    return table


def _layout(prefix: str, attention: Optional[str]) -> str:
    names = {"transformer.": "diffusers/PEFT", "transformer.base_model.model.": "PEFT",
             "base_model.model.": "PEFT", "diffusion_model.": "ComfyUI / ai-toolkit",
             "model.diffusion_model.": "ComfyUI", "conditional_transformer.": "ai-toolkit", "unet.": "diffusers (unet.)",
             "": "bare module", "lora_unet_": "kohya / musubi-tuner", "lora_transformer_": "OneTrainer",
             "lycoris_": "SimpleTuner LyCORIS"}
    return names[prefix] + (f", {attention}" if attention else "")


def split_key(key: str) -> Optional[tuple[str, str]]:
    """'transformer.layers.0.attention.to_q.lora_A.weight' -> ('transformer.layers.0.attention.to_q', '.lora_A.weight')."""
    for suffix in SUFFIXES:
        if key.endswith(suffix) and len(key) > len(suffix):
            return key[: -len(suffix)], suffix
    return None


def adapter_kind(suffixes: Iterable[str]) -> str:
    s = set(suffixes)
    if any(x.startswith(".lokr_") for x in s):
        return "LoKr"
    if any(x.startswith(".hada_") for x in s):
        return "LoHa"
    if s & {".oft_blocks"}:
        return "OFT"
    if s & {".a1.weight", ".b1.weight"}:
        return "GLoRA"
    if s & {".dora_scale", ".lora_magnitude_vector"}:
        return "DoRA"
    if s & LOW_RANK:
        return "LoRA"
    return "weight diff"


def map_lora(shapes: Mapping[str, Sequence[int]], cfg: DiTConfig) -> LoraMapping:
    """Map a LoRA file (its keys and tensor shapes) onto the DiT of ``cfg``."""
    table = lora_targets(cfg)
    result = LoraMapping()
    groups: dict[str, dict[str, str]] = {}
    for key in shapes:
        parts = split_key(key)
        if parts is None or parts[0] not in table:
            result.unmapped.append(key)
            continue
        groups.setdefault(parts[0], {})[parts[1]] = key
    biases = {k[: -len(".bias")]: tuple(v) for k, v in expected_shapes(cfg).items() if k.endswith(".bias")}
    for prefix, members in groups.items():
        target, layout = table[prefix]
        result.targets[prefix] = target
        result.members[prefix] = members
        result.layouts.add(layout)
        result.adapters.add(adapter_kind(members))
        bias = biases.get(target.module)  # no row-offset target (q/k/v of the fused qkv) has a bias
        result.shape_errors += [f"{prefix}: {p}" for p in adapter_problems(members, shapes, target, bias)]
    result.unmapped.sort()
    return result


def _as_matrix(shape: Sequence[int]) -> tuple[int, int]:
    """(rows, everything else) — ComfyUI flattens a conv-shaped (…, 1, 1) factor the same way."""
    return int(shape[0]), int(math.prod(shape[1:])) if len(shape) > 1 else 1


def _product_shape(members: Mapping[str, str], shapes, a: str, b: str,
                   whole: str = "") -> tuple[Optional[tuple[int, int]], Optional[str]]:
    """(shape of ``a @ b`` or of ``whole`` when the file stores the factor whole — None when neither is there, the
    problem — None when there is none): a factor stored both ways, or a product whose two factors' ranks differ."""
    if whole and whole in members:
        if a in members or b in members:  # ComfyUI would use the whole factor and drop the product's
            return None, f"has both {whole[1:]} and {a[1:]}/{b[1:]}; keep one"
        return _as_matrix(shapes[members[whole]]), None
    if a in members and b in members:
        (rows, inner), (inner_b, cols) = _as_matrix(shapes[members[a]]), _as_matrix(shapes[members[b]])
        if inner != inner_b:
            return None, (f"{a[1:]} {list(shapes[members[a]])} and {b[1:]} {list(shapes[members[b]])} disagree on "
                          "the rank")
        return (rows, cols), None
    return None, None


def adapter_problems(members: Mapping[str, str], shapes: Mapping[str, Sequence[int]], target: Target,
                     bias: Optional[tuple[int, ...]]) -> list[str]:
    """Why one module's tensors cannot patch ``target`` (empty when they can): each adapter's result must have the
    weight's (or the fused rows') shape, the two factors of a product the same rank, ``diff_b`` the bias's shape, a
    DoRA magnitude one value per output row (or input column) — ComfyUI itself only logs and skips such a patch."""
    want = tuple(target.patched_shape)
    where = f"the model's {target.module}{' rows' if target.offset else ''}"
    present = set(members)
    if present <= {".alpha"}:
        return ["has only an alpha (no LoRA matrices or weight difference)"]
    if len(want) != 2 and present & FACTORED:
        return [f"a low-rank adapter on {target.module}, a {len(want)}-D weight {list(want)}: only a full weight "
                "difference (.diff) can patch it"]
    problems = []
    # ComfyUI pairs an up matrix with the down matrix of the same spelling (LoRAAdapter.load): one spelling per module
    spellings = [(u, d) for u, d in zip(LOW_RANK_UP, LOW_RANK_DOWN) if u in members or d in members]
    up = down = None
    if len(spellings) > 1:
        problems.append("has LoRA matrices in " + " and ".join(f"{u[1:]}/{d[1:]}" for u, d in spellings)
                        + " spellings: ComfyUI would use one set and drop the other; keep one")
    elif spellings:
        up, down = (members.get(x) for x in spellings[0])
        if up is None or down is None:
            problems.append("has only one of the two LoRA matrices")
    if up is not None and down is not None:
        (out_rows, up_rank), (down_rank, in_cols) = _as_matrix(shapes[up]), _as_matrix(shapes[down])
        if ".lora_mid.weight" in members:  # LoCon / Tucker: the middle factor joins the ranks
            in_cols = -1 if len(shapes[down]) < 2 else int(shapes[down][1])
            if out_rows != want[0] or in_cols != want[1]:
                problems.append(f"LoRA is {out_rows}×{in_cols}, {where} are {want[0]}×{want[1]}")
        elif up_rank != down_rank:
            problems.append(f"its two LoRA matrices disagree on the rank: up {list(shapes[up])}, down "
                            f"{list(shapes[down])}")
        elif (out_rows, in_cols) != want:
            problems.append(f"LoRA is {out_rows}×{in_cols}, {where} are {want[0]}×{want[1]}")
    if ".diff" in members and tuple(shapes[members[".diff"]]) != want:
        problems.append(f"diff is {list(shapes[members['.diff']])}, {where} are {list(want)}")
    if ".diff_b" in members:
        got = tuple(shapes[members[".diff_b"]])
        if bias is None:
            problems.append(f"diff_b patches a bias, and {target.module} has none")
        elif got != bias:
            problems.append(f"diff_b is {list(got)}, the bias of {target.module} is {list(bias)}")
    if ".hada_w1_a" in members and ".hada_t1" not in members:
        for one in ("1", "2"):
            got, problem = _product_shape(members, shapes, f".hada_w{one}_a", f".hada_w{one}_b")
            if problem:
                problems.append(f"LoHa {problem}")
            elif got is None:
                problems.append(f"LoHa factor hada_w{one}_a / hada_w{one}_b missing")
            elif got != want:
                problems.append(f"LoHa hada_w{one}_a·hada_w{one}_b is {got[0]}×{got[1]}, {where} are {want[0]}×{want[1]}")
    if any(x.startswith(".lokr_") for x in members) and ".lokr_t2" not in members:
        (w1, p1), (w2, p2) = (_product_shape(members, shapes, f".lokr_w{n}_a", f".lokr_w{n}_b", f".lokr_w{n}")
                              for n in "12")
        if p1 or p2:
            problems += [f"LoKr {p}" for p in (p1, p2) if p]
        elif w1 is None or w2 is None:
            problems.append("LoKr needs both factors (lokr_w1 or lokr_w1_a/b, lokr_w2 or lokr_w2_a/b)")
        elif (w1[0] * w2[0], w1[1] * w2[1]) != want:
            problems.append(f"LoKr kron(w1 {w1[0]}×{w1[1]}, w2 {w2[0]}×{w2[1]}) is {w1[0] * w2[0]}×{w1[1] * w2[1]}, "
                            f"{where} are {want[0]}×{want[1]}")
    scale = members.get(".dora_scale") or members.get(".lora_magnitude_vector")
    if scale is not None:
        got = tuple(int(x) for x in shapes[scale])
        if got not in ((want[0], 1), (want[0],), (1, want[1])):
            problems.append(f"DoRA magnitude is {list(got)}: one value per output row ({want[0]}, 1) or per input "
                            f"column (1, {want[1]}) of {target.module}")
    return problems


def alpha_notes(alphas: Mapping[str, float], mapping: LoraMapping, label: str) -> list[str]:
    """Check the ``alpha`` values of a mapped LoRA (``alphas``: file key → value, after :func:`normalize_peft` wrote
    PEFT's scaling as alphas); the notes for the node.

    A non-finite alpha is a ValueError naming the keys (the output would be NaN).  ``alpha = 0`` makes ComfyUI's
    scale ``alpha / rank`` zero — no effect — and low-rank modules without an alpha (nor a PEFT ``lora_alpha``) are
    applied at scale 1 (alpha = rank), as ComfyUI and diffusers do: both are said, since a trainer may have meant
    something else."""
    bad = sorted(k for k, v in alphas.items() if not math.isfinite(v))
    if bad:
        raise ValueError(f"{label}: alpha is not a finite number in {len(bad)} modules ({', '.join(bad[:4])}); "
                         "the output would be NaN — the file is damaged")
    notes = []
    zero = sorted(k for k, v in alphas.items() if v == 0)
    if zero:
        notes.append(f"alpha = 0 in {len(zero)} modules ({', '.join(zero[:3])}{' …' if len(zero) > 3 else ''}): "
                     "their scale alpha/rank is 0, so they have no effect (kohya / LyCORIS trainers write alpha = "
                     "rank, never 0 — re-save the LoRA with its real alpha)")
    without = [p for p, members in mapping.members.items() if ".alpha" not in members and LOW_RANK & set(members)]
    if without:
        notes.append(f"{len(without)} LoRA modules carry no alpha and the file no PEFT lora_alpha: applied at scale 1 "
                     "(alpha = rank), as ComfyUI and diffusers do")
    return notes


def describe_lora(keys: Sequence[str]) -> str:
    """What a LoRA file that does not map looks like."""
    return describe_other_family(keys, OTHER_LORA_FAMILIES, unknown="an unknown LoRA layout")


def mapping_problems(mapping: LoraMapping, keys: Sequence[str], label: str) -> Optional[str]:
    """The user-facing error for a LoRA that does not fully map (None when every key maps)."""
    if not keys:
        return f"{label}: the file holds no tensors"
    if not mapping.targets:
        what = describe_lora(keys)
        first = "" if "(first keys:" in what else f"; first keys: {', '.join(sorted(keys)[:4])}"
        return f"{label}: no key of this LoRA maps onto the Ideogram 4 DiT — it looks like {what}{first}"
    problems = []
    if mapping.unmapped:
        problems.append(f"{len(mapping.unmapped)} keys map nowhere: {', '.join(mapping.unmapped[:8])}"
                        f"{' …' if len(mapping.unmapped) > 8 else ''} (the rest is {mapping.describe()}; "
                        f"the unmapped part looks like {describe_lora(mapping.unmapped)})")
    if mapping.shape_errors:
        problems.append("wrong shapes: " + "; ".join(mapping.shape_errors[:5]))
    return f"{label}: " + " | ".join(problems) if problems else None


def comfy_key_map(cfg: DiTConfig, model_prefix: str = "diffusion_model.") -> dict[str, object]:
    """The table in ``comfy.lora.model_lora_keys_unet`` form: file prefix → model key, or
    (model key, (dim, start, size)) for rows of a fused weight."""
    out: dict[str, object] = {}
    for prefix, (target, _) in lora_targets(cfg).items():
        key = model_prefix + target.weight_key
        out[prefix] = key if target.offset is None else (key, target.offset)
    return out


# --------------------------------------------------------------------------- PEFT metadata

def _peft_pattern_value(pattern_map: Mapping[str, float], module: str, default: float) -> float:
    """PEFT's rank_pattern / alpha_pattern lookup: a pattern matches a module name suffix (regex)."""
    for pattern, value in pattern_map.items():
        if re.match(rf"(.*\.)?({pattern})$", module):
            return value
    return default


def peft_config(metadata: Optional[Mapping[str, str]]) -> Optional[dict]:
    """The transformer's PEFT LoraConfig from ``save_lora_weights`` metadata (``lora_adapter_metadata``)."""
    if not metadata or "lora_adapter_metadata" not in metadata:
        return None
    raw = json.loads(metadata["lora_adapter_metadata"])
    conf = {k.split(".", 1)[1]: v for k, v in raw.items() if k.startswith("transformer.")}
    return conf or raw


# PEFT LoHa / LoKr: the factor that carries the module's scale (ComfyUI's adapters read no alpha PEFT would mean)
_PEFT_SCALED_FACTOR = (".hada_w1_a", ".lokr_w1", ".lokr_w1_a")


def normalize_peft(tensors: dict, metadata: Optional[Mapping[str, str]], *, tensor_factory,
                   report: Optional[list] = None) -> dict:
    """State dict with PEFT's scaling made explicit and DoRA magnitudes named ``dora_scale``.

    PEFT scales ``B·A`` by ``lora_alpha / r`` (``/ sqrt(r)`` with rsLoRA, per-module values from
    ``alpha_pattern`` / ``rank_pattern``) and keeps that only in its config (the file's metadata, or a
    ``save_pretrained`` folder's ``adapter_config.json``); ComfyUI scales by ``alpha / rank`` with ``alpha`` read
    from the file, so ``alpha = scale · rank`` is added.  PEFT's LoHa / LoKr configs keep ``alpha`` and ``r``
    (scale ``alpha / r``), which ComfyUI's LoHa / LoKr adapters cannot express for every factorisation, so the
    module's first factor is multiplied by the scale instead.  ``report`` (a list) receives one line saying what
    was applied.  ``tensor_factory(value)`` makes a scalar tensor (keeps this module free of torch).
    """
    out = dict(tensors)
    conf = peft_config(metadata)
    for key in list(out):
        if key.endswith(".lora_magnitude_vector"):  # PEFT DoRA: (out,) per-row magnitude
            value = out.pop(key)
            out[key[: -len(".lora_magnitude_vector")] + ".dora_scale"] = value.reshape(-1, 1)
    if conf is None:
        return out
    r, lora_alpha = conf.get("r"), conf.get("lora_alpha", conf.get("alpha"))
    if r is None or lora_alpha is None:
        return out
    scales = []
    for key in list(out):
        parts = split_key(key)
        if parts is None or parts[0] + ".alpha" in out:
            continue
        module = parts[0].split("base_model.model.", 1)[-1].removeprefix("transformer.")
        alpha = _peft_pattern_value(conf.get("alpha_pattern") or {}, module, lora_alpha)
        module_r = _peft_pattern_value(conf.get("rank_pattern") or {}, module, r)
        scale = alpha / math.sqrt(module_r) if conf.get("use_rslora") else alpha / module_r
        if parts[1] in LOW_RANK_DOWN:
            out[parts[0] + ".alpha"] = tensor_factory(scale * int(out[key].shape[0]))
        elif parts[1] in _PEFT_SCALED_FACTOR and not (parts[1] == ".lokr_w1" and parts[0] + ".lokr_w1_a" in out):
            out[key] = out[key] * scale
        else:
            continue
        scales.append(scale)
    if report is not None and scales:
        shown = sorted({f"{x:g}" for x in scales})
        report.append(f"PEFT scale {'/'.join(shown)} ({'lora_alpha' if 'lora_alpha' in conf else 'alpha'} / r) "
                      f"on {len(scales)} modules")
    return out
