"""LoRA key mapping (model/dit/lora_keys.py): every trainer's layout lands on the right weight rows.

The diffusers/PEFT file is written by the real writer (``Ideogram4Pipeline.save_lora_weights``) and
checked against PEFT's own merge; the other layouts are hand-written to their documented key names
from one set of factors, so each must reproduce the same merged weights.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model.dit.lora_keys import (LOW_RANK_DOWN, LOW_RANK_UP, adapter_kind, comfy_key_map, map_lora,
                                 mapping_problems, normalize_peft)
from tools.make_test_loras import LAYOUTS, layout_state_dict, lora_factors, merge_reference, write_peft_lora


def merge_mapped(sd: dict, lora: dict, cfg, strength: float = 1.0) -> dict:
    """Independent merge from the mapping alone: W[rows] += strength · alpha/rank · up @ down (ComfyUI's rule)."""
    mapping = map_lora({k: tuple(v.shape) for k, v in lora.items()}, cfg)
    assert not mapping.unmapped and not mapping.shape_errors
    out = {k: v.to(torch.float32).clone() for k, v in sd.items()}
    for prefix, target in mapping.targets.items():
        up = next(lora[prefix + s] for s in LOW_RANK_UP if prefix + s in lora).to(torch.float64)
        down = next(lora[prefix + s] for s in LOW_RANK_DOWN if prefix + s in lora).to(torch.float64)
        alpha = float(lora[prefix + ".alpha"]) if prefix + ".alpha" in lora else down.shape[0]
        delta = (strength * alpha / down.shape[0] * (up @ down)).to(torch.float32)
        w = out[target.weight_key]
        if target.offset is None:
            w += delta
        else:
            dim, start, size = target.offset
            w.narrow(dim, start, size).add_(delta)
    return out


def assert_same_weights(a: dict, b: dict, tol: float = 1e-6) -> None:
    for k in a:
        err = (a[k] - b[k]).abs().max().item()
        assert err <= tol * max(1.0, a[k].abs().max().item()), (k, err)


def test_diffusers_peft_file_matches_peft_merge(tmp_path, tiny_cfg, tiny_weights):
    base = tiny_weights[0]
    path, peft_merged = write_peft_lora(tmp_path, tiny_cfg, base, rank=4, lora_alpha=8.0)
    lora = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    assert any(k.startswith("transformer.layers.0.attention.to_q.lora_A") for k in lora)
    mapping = map_lora({k: tuple(v.shape) for k, v in lora.items()}, tiny_cfg)
    assert not mapping.unmapped and mapping.patched_weights == 6 * tiny_cfg.num_layers + 1  # + final_layer.adaln_modulation
    assert mapping.layouts == {"diffusers/PEFT, split q/k/v", "diffusers/PEFT"}
    ours = merge_mapped(base, normalize_peft(lora, metadata, tensor_factory=torch.tensor), tiny_cfg)
    changed = max((peft_merged[k] - base[k]).abs().max().item() for k in base)
    assert changed > 1e-2  # the LoRA's effect is far above the tolerance
    assert_same_weights(peft_merged, ours)
    # without the metadata's lora_alpha / r = 2 the merge would be off by that factor
    wrong = merge_mapped(base, lora, tiny_cfg)
    assert max((wrong[k] - peft_merged[k]).abs().max().item() for k in base) > 1e-3


def test_peft_rslora_and_patterns(tiny_cfg):
    lora = {"transformer.layers.0.feed_forward.w1.lora_A.weight": torch.zeros(4, tiny_cfg.emb_dim),
            "transformer.layers.0.feed_forward.w1.lora_B.weight": torch.zeros(tiny_cfg.intermediate_size, 4),
            "transformer.layers.1.feed_forward.w1.lora_A.weight": torch.zeros(2, tiny_cfg.emb_dim),
            "transformer.layers.1.feed_forward.w1.lora_B.weight": torch.zeros(tiny_cfg.intermediate_size, 2)}
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 8,
                                                 "transformer.use_rslora": True,
                                                 "transformer.rank_pattern": {"layers.1.feed_forward.w1": 2},
                                                 "transformer.alpha_pattern": {"layers.1.feed_forward.w1": 3}})}
    out = normalize_peft(lora, meta, tensor_factory=torch.tensor)
    # ComfyUI scales by alpha / rank; PEFT rsLoRA by lora_alpha / sqrt(r)
    assert float(out["transformer.layers.0.feed_forward.w1.alpha"]) / 4 == pytest.approx(8 / 2)
    assert float(out["transformer.layers.1.feed_forward.w1.alpha"]) / 2 == pytest.approx(3 / 2 ** 0.5)


def test_peft_patterns_match_modules_as_peft_does():
    """alpha_pattern / rank_pattern keys are regexes on a name suffix at a dot (PEFT's get_pattern_key), the first
    matching key wins, and the name is the transformer's own (no ``transformer.`` prefix), so anchored ones work."""
    from peft.utils.other import get_pattern_key

    patterns = {"w1": 3.0, "layers.1.feed_forward.w1": 5.0, "1.feed_forward.w3": 7.0, "to_out": 9.0,
                r"^layers\.0\.attention\.to_.": 11.0}
    modules = ["layers.0.feed_forward.w1", "layers.1.feed_forward.w1", "layers.11.feed_forward.w3",
               "layers.1.feed_forward.w3", "layers.0.attention.to_out.0", "layers.0.attention.to_q",
               "layers.1.attention.to_k"]
    lora = {}
    for m in modules:
        lora[f"transformer.{m}.lora_A.weight"] = torch.zeros(2, 8)
        lora[f"transformer.{m}.lora_B.weight"] = torch.zeros(8, 2)
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 2, "transformer.lora_alpha": 2,
                                                 "transformer.alpha_pattern": patterns})}
    out = normalize_peft(lora, meta, tensor_factory=torch.tensor)
    alphas = {m: float(out[f"transformer.{m}.alpha"]) for m in modules}  # rank 2, r 2: the file's alpha = PEFT's
    assert alphas == {m: patterns.get(get_pattern_key(patterns, m), 2.0) for m in modules}
    assert alphas == {"layers.0.feed_forward.w1": 3.0, "layers.1.feed_forward.w1": 3.0,  # "w1" comes first
                      "layers.11.feed_forward.w3": 2.0, "layers.1.feed_forward.w3": 7.0,  # only at a dot
                      "layers.0.attention.to_out.0": 2.0,  # the whole suffix: "to_out" is not "to_out.0"
                      "layers.0.attention.to_q": 11.0, "layers.1.attention.to_k": 2.0}


def test_peft_metadata_keeps_an_alpha_the_file_has():
    a, b = "transformer.layers.0.feed_forward.w1", "transformer.layers.1.feed_forward.w1"
    lora = {f"{a}.lora_A.weight": torch.ones(4, 8), f"{a}.lora_B.weight": torch.ones(8, 4),
            f"{a}.alpha": torch.tensor(1.0),
            f"{b}.lora_A.weight": torch.ones(4, 8), f"{b}.lora_B.weight": torch.ones(8, 4)}
    meta = {"lora_adapter_metadata": json.dumps({"transformer.r": 4, "transformer.lora_alpha": 8})}
    report = []
    out = normalize_peft(lora, meta, tensor_factory=torch.tensor, report=report)
    assert float(out[f"{a}.alpha"]) == 1.0 and float(out[f"{b}.alpha"]) == 8.0  # scale 2 · rank 4
    assert report == ["PEFT scale 2 (lora_alpha / r) on 1 modules"]


def test_peft_dora_magnitude_becomes_a_per_row_dora_scale(tiny_cfg):
    e, i = tiny_cfg.emb_dim, tiny_cfg.intermediate_size
    m = "transformer.layers.0.feed_forward.w1"
    lora = {f"{m}.lora_A.weight": torch.ones(4, e), f"{m}.lora_B.weight": torch.ones(i, 4),
            f"{m}.lora_magnitude_vector": torch.arange(i, dtype=torch.float32)}
    raw = map_lora({k: tuple(v.shape) for k, v in lora.items()}, tiny_cfg)
    assert not raw.unmapped and not raw.shape_errors and raw.adapters == {"DoRA"}
    out = normalize_peft(lora, None, tensor_factory=torch.tensor)
    assert sorted(out) == [f"{m}.dora_scale", f"{m}.lora_A.weight", f"{m}.lora_B.weight"]
    assert out[f"{m}.dora_scale"].shape == (i, 1)  # ComfyUI's layout of a per-output-row magnitude
    assert torch.equal(out[f"{m}.dora_scale"].flatten(), lora[f"{m}.lora_magnitude_vector"])
    mapped = map_lora({k: tuple(v.shape) for k, v in out.items()}, tiny_cfg)
    assert not mapped.unmapped and not mapped.shape_errors and mapped.adapters == {"DoRA"}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_gives_the_same_merge(layout, tiny_cfg, tiny_weights):
    base = tiny_weights[0]
    factors = lora_factors(tiny_cfg, seed=5, rank=4, alpha=2.0)
    lora = layout_state_dict(factors, layout)
    want = merge_reference(base, factors, with_alpha=layout != "peft-base-model")
    assert_same_weights(want, merge_mapped(base, lora, tiny_cfg))
    assert max((want[k] - base[k]).abs().max().item() for k in base) > 1e-2


def test_split_qkv_rows_and_comfy_key_map(tiny_cfg):
    e = tiny_cfg.emb_dim
    km = comfy_key_map(tiny_cfg)
    assert km["transformer.layers.1.attention.to_k"] == ("diffusion_model.layers.1.attention.qkv.weight", (0, e, e))
    assert km["lora_unet_layers_0_attention_to_v"] == ("diffusion_model.layers.0.attention.qkv.weight", (0, 2 * e, e))
    assert km["lora_unet_layers_0_attention_qkv"] == "diffusion_model.layers.0.attention.qkv.weight"
    assert km["transformer.layers.0.attention.to_out.0"] == "diffusion_model.layers.0.attention.o.weight"
    assert km["lora_transformer_layers_0_attention_to_out_0"] == "diffusion_model.layers.0.attention.o.weight"
    assert km["base_model.model.final_layer.linear"] == "diffusion_model.final_layer.linear.weight"
    assert km["lycoris_llm_cond_proj"] == "diffusion_model.llm_cond_proj.weight"


# Every file prefix of README's "LoRA formats" table and the layout name the node reports for it.
PREFIX_LAYOUTS = {"transformer.": "diffusers/PEFT", "transformer.base_model.model.": "PEFT",
                  "base_model.model.": "PEFT",
                  "diffusion_model.": "ComfyUI / ai-toolkit", "model.diffusion_model.": "ComfyUI",
                  "conditional_transformer.": "ai-toolkit", "unet.": "diffusers (unet.)", "": "bare module",
                  "lora_unet_": "kohya / musubi-tuner", "lora_transformer_": "OneTrainer",
                  "lycoris_": "SimpleTuner LyCORIS"}


@pytest.mark.parametrize("prefix", PREFIX_LAYOUTS)
def test_every_prefix_maps_each_spelling_to_its_rows(prefix, tiny_cfg):
    e, i, a = tiny_cfg.emb_dim, tiny_cfg.intermediate_size, tiny_cfg.adaln_dim
    qkv, o = "layers.1.attention.qkv", "layers.1.attention.o"
    spellings = {"layers.1.attention.to_q": (qkv, (0, 0, e), (e, e)),
                 "layers.1.attention.to_k": (qkv, (0, e, e), (e, e)),
                 "layers.1.attention.to_v": (qkv, (0, 2 * e, e), (e, e)), qkv: (qkv, None, (3 * e, e)),
                 "layers.1.attention.to_out.0": (o, None, (e, e)),
                 "layers.0.attention.o": ("layers.0.attention.o", None, (e, e)),
                 "layers.0.feed_forward.w2": ("layers.0.feed_forward.w2", None, (e, i)),
                 "final_layer.adaln_modulation": ("final_layer.adaln_modulation", None, (e, a))}
    lora, want = {}, {}
    for name, (module, offset, (rows, cols)) in spellings.items():
        stem = prefix + (name.replace(".", "_") if prefix.endswith("_") else name)
        lora |= {stem + ".lora_down.weight": (4, cols), stem + ".lora_up.weight": (rows, 4), stem + ".alpha": ()}
        want[stem] = (module, offset)
    m = map_lora(lora, tiny_cfg)
    assert not m.unmapped and not m.shape_errors
    assert {p: (t.module, t.offset) for p, t in m.targets.items()} == want
    layout = PREFIX_LAYOUTS[prefix]
    assert m.layouts == {layout, f"{layout}, fused qkv", f"{layout}, split q/k/v"}
    assert m.describe() == f"LoRA in {layout}, fused qkv; {layout}, split q/k/v key names: 8 modules onto 5 weights"


# The up / down names comfy/weight_adapter/lora.py (LoRAAdapter.load) reads.
LOW_RANK_PAIRS = ((".lora_up.weight", ".lora_down.weight"), ("_lora.up.weight", "_lora.down.weight"),
                  (".lora_B.weight", ".lora_A.weight"), (".lora.up.weight", ".lora.down.weight"),
                  (".lora_B", ".lora_A"),
                  (".lora_linear_layer.up.weight", ".lora_linear_layer.down.weight"),
                  (".lora_B.default.weight", ".lora_A.default.weight"))


@pytest.mark.parametrize("up,down", LOW_RANK_PAIRS)
def test_every_low_rank_spelling_maps_up_and_down(up, down, tiny_cfg):
    e, i = tiny_cfg.emb_dim, tiny_cfg.intermediate_size
    w1 = "transformer.layers.0.feed_forward.w1"
    m = map_lora({w1 + up: (i, 4), w1 + down: (4, e)}, tiny_cfg)
    assert not m.unmapped and not m.shape_errors and m.adapters == {"LoRA"}
    assert m.members == {w1: {up: w1 + up, down: w1 + down}}
    swapped = map_lora({w1 + up: (4, e), w1 + down: (i, 4)}, tiny_cfg)
    assert swapped.shape_errors == [f"{w1}: its two LoRA matrices disagree on the rank: up [4, {e}], down [{i}, 4]"]


def test_lokr_loha_dora_keys_map(tiny_cfg):
    e = tiny_cfg.emb_dim
    lora = {"lycoris_layers_0_attention_to_q.lokr_w1": torch.zeros(4, 4),
            "lycoris_layers_0_attention_to_q.lokr_w2": torch.zeros(e // 4, e // 4),
            "lora_unet_layers_0_feed_forward_w1.hada_w1_a": torch.zeros(tiny_cfg.intermediate_size, 2),
            "lora_unet_layers_0_feed_forward_w1.hada_w1_b": torch.zeros(2, e),
            "lora_unet_layers_0_feed_forward_w1.hada_w2_a": torch.zeros(tiny_cfg.intermediate_size, 2),
            "lora_unet_layers_0_feed_forward_w1.hada_w2_b": torch.zeros(2, e),
            "lora_unet_layers_0_feed_forward_w1.alpha": torch.tensor(2.0),
            "diffusion_model.layers.1.attention.o.lora_down.weight": torch.zeros(2, e),
            "diffusion_model.layers.1.attention.o.lora_up.weight": torch.zeros(e, 2),
            "diffusion_model.layers.1.attention.o.dora_scale": torch.zeros(e, 1)}
    m = map_lora({k: tuple(v.shape) for k, v in lora.items()}, tiny_cfg)
    assert not m.unmapped and not m.shape_errors
    assert m.adapters == {"LoKr", "LoHa", "DoRA"}
    assert m.targets["lycoris_layers_0_attention_to_q"].offset == (0, 0, e)
    # a DoRA magnitude on LoKr / LoHa keeps the factorisation's name
    assert adapter_kind({".lokr_w1", ".lokr_w2", ".dora_scale"}) == "LoKr"
    assert adapter_kind({".hada_w1_a", ".hada_w1_b", ".hada_w2_a", ".hada_w2_b", ".dora_scale"}) == "LoHa"
    assert adapter_kind({".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"}) == "DoRA"


def test_unmapped_keys_are_an_error_naming_them(tiny_cfg):
    flux = {"lora_unet_double_blocks_0_img_attn_qkv.lora_down.weight": (4, 3072),
            "lora_unet_double_blocks_0_img_attn_qkv.lora_up.weight": (9216, 4)}
    m = map_lora(flux, tiny_cfg)
    msg = mapping_problems(m, list(flux), "LoRA x")
    assert "no key of this LoRA maps" in msg and "a FLUX LoRA" in msg
    e = tiny_cfg.emb_dim
    mixed = {"transformer.layers.0.attention.to_q.lora_A.weight": (4, e),
             "transformer.layers.0.attention.to_q.lora_B.weight": (e, 4),
             "transformer.layers.9.attention.to_q.lora_A.weight": (4, e),  # layer 9 does not exist here
             "transformer.layers.0.attention.to_q.lora_B.bias": (e,)}  # PEFT lora_bias: no ComfyUI adapter
    msg = mapping_problems(map_lora(mixed, tiny_cfg), list(mixed), "LoRA y")
    assert "2 keys map nowhere" in msg and "layers.9" in msg and "lora_B.bias" in msg
    assert map_lora(mixed, tiny_cfg).unmapped == ["transformer.layers.0.attention.to_q.lora_B.bias",
                                                  "transformer.layers.9.attention.to_q.lora_A.weight"]  # sorted
    wrong = {"transformer.layers.0.attention.to_q.lora_A.weight": (4, e + 1),
             "transformer.layers.0.attention.to_q.lora_B.weight": (e, 4)}
    assert "wrong shapes" in mapping_problems(map_lora(wrong, tiny_cfg), list(wrong), "LoRA z")


# --------------------------------------------------------------------------- every adapter's shapes are checked

def _problems(tiny_cfg, lora):
    return mapping_problems(map_lora(lora, tiny_cfg), list(lora), "LoRA s")


def test_adapter_shapes_are_checked_against_the_weight(tiny_cfg):
    """ComfyUI only logs (and skips) a patch whose shapes do not fit: each such module is an error naming it."""
    e, i = tiny_cfg.emb_dim, tiny_cfg.intermediate_size
    w1 = "diffusion_model.layers.0.feed_forward.w1"
    ok = {f"{w1}.lora_down.weight": (4, e), f"{w1}.lora_up.weight": (i, 4), f"{w1}.alpha": ()}
    assert _problems(tiny_cfg, ok) is None
    cases = {
        "rank": ({f"{w1}.lora_down.weight": (8, e), f"{w1}.lora_up.weight": (i, 4)},
                 "disagree on the rank: up [1024, 4], down [8, 512]"),
        "diff": ({f"{w1}.diff": (e, e)}, f"diff is [{e}, {e}], the model's layers.0.feed_forward.w1 are [{i}, {e}]"),
        "diff_b": ({"diffusion_model.layers.0.adaln_modulation.diff_b": (e,)},
                   f"diff_b is [{e}], the bias of layers.0.adaln_modulation is [{4 * e}]"),
        "diff_b_none": ({f"{w1}.diff_b": (i,)}, "diff_b patches a bias, and layers.0.feed_forward.w1 has none"),
        "loha": ({f"{w1}.hada_w1_a": (e, 4), f"{w1}.hada_w1_b": (4, e), f"{w1}.hada_w2_a": (i, 4),
                  f"{w1}.hada_w2_b": (4, e)}, f"LoHa hada_w1_a·hada_w1_b is {e}×{e}"),
        "lokr": ({f"{w1}.lokr_w1": (16, 16), f"{w1}.lokr_w2": (16, 16)}, "LoKr kron(w1 16×16, w2 16×16) is 256×256"),
        "dora": ({f"{w1}.lora_down.weight": (4, e), f"{w1}.lora_up.weight": (i, 4), f"{w1}.dora_scale": (e, 1)},
                 f"DoRA magnitude is [{e}, 1]"),
        "norm": ({"diffusion_model.layers.0.attention_norm1.lora_down.weight": (4, e),
                  "diffusion_model.layers.0.attention_norm1.lora_up.weight": (e, 4)},
                 "a low-rank adapter on layers.0.attention_norm1, a 1-D weight"),
        "alpha_only": ({**ok, "diffusion_model.layers.1.feed_forward.w2.alpha": ()}, "has only an alpha"),
        "conv_shaped": ({f"{w1}.lora_down.weight": (4, e + 8, 1, 1), f"{w1}.lora_up.weight": (i, 4, 1, 1)},
                        f"LoRA is {i}×{e + 8}"),
        "one_matrix": ({f"{w1}.lora_down.weight": (4, e), f"{w1}.alpha": ()}, "has only one of the two LoRA matrices"),
        "loha_rank": ({f"{w1}.hada_w1_a": (i, 4), f"{w1}.hada_w1_b": (2, e), f"{w1}.hada_w2_a": (i, 4),
                       f"{w1}.hada_w2_b": (4, e)}, f"LoHa hada_w1_a [{i}, 4] and hada_w1_b [2, {e}] disagree on the rank"),
        "lokr_rank": ({f"{w1}.lokr_w1": (2, 2), f"{w1}.lokr_w2_a": (i // 2, 4), f"{w1}.lokr_w2_b": (3, e // 2)},
                      f"LoKr lokr_w2_a [{i // 2}, 4] and lokr_w2_b [3, {e // 2}] disagree on the rank"),
        "lokr_w1_twice": ({f"{w1}.lokr_w1": (2, 2), f"{w1}.lokr_w1_a": (2, 1), f"{w1}.lokr_w1_b": (1, 2),
                           f"{w1}.lokr_w2": (i // 2, e // 2)}, "LoKr has both lokr_w1 and lokr_w1_a/lokr_w1_b; keep one"),
        # ComfyUI pairs lora_B with lora_A and lora_up with lora_down: a mixed pair, or two sets, is not one LoRA
        "mixed_spellings": ({f"{w1}.lora_B.weight": (i, 4), f"{w1}.lora_down.weight": (4, e)},
                            "has LoRA matrices in lora_up.weight/lora_down.weight and lora_B.weight/lora_A.weight "
                            "spellings: ComfyUI would use one set and drop the other; keep one"),
        "two_sets": ({f"{w1}.lora_up.weight": (i, 4), f"{w1}.lora_down.weight": (4, e),
                      f"{w1}.lora_B.weight": (i, 4), f"{w1}.lora_A.weight": (4, e)},
                     "in lora_up.weight/lora_down.weight and lora_B.weight/lora_A.weight spellings"),
        "loha_norm": ({f"diffusion_model.layers.0.ffn_norm1.hada_w{n}_{ab}": (e, 1) for n in "12" for ab in "ab"},
                      "a low-rank adapter on layers.0.ffn_norm1, a 1-D weight"),
        "lokr_norm": ({"diffusion_model.layers.0.ffn_norm1.lokr_w1": (1, 1),
                       "diffusion_model.layers.0.ffn_norm1.lokr_w2": (e, 1)},
                      "a low-rank adapter on layers.0.ffn_norm1, a 1-D weight"),
        "locon": ({f"{w1}.lora_down.weight": (4, e + 8, 1, 1), f"{w1}.lora_mid.weight": (4, 4, 1, 1),
                   f"{w1}.lora_up.weight": (i, 4, 1, 1)}, f"LoRA is {i}×{e + 8}"),
        "dora_cols": ({**ok, f"{w1}.dora_scale": (1, i)}, f"DoRA magnitude is [1, {i}]"),
        "peft_dora": ({f"{w1}.lora_A.weight": (4, e), f"{w1}.lora_B.weight": (i, 4), f"{w1}.lora_magnitude_vector": (e,)},
                      f"DoRA magnitude is [{e}]"),
        "loha_w2": ({f"{w1}.hada_w1_a": (i, 4), f"{w1}.hada_w1_b": (4, e), f"{w1}.hada_w2_a": (e, 4),
                     f"{w1}.hada_w2_b": (4, e)}, f"LoHa hada_w2_a·hada_w2_b is {e}×{e}"),
        "loha_half": ({f"{w1}.hada_w1_a": (i, 4), f"{w1}.hada_w1_b": (4, e), f"{w1}.hada_w2_a": (i, 4)},
                      "LoHa factor hada_w2_a / hada_w2_b missing"),
        "lokr_half": ({f"{w1}.lokr_w1": (4, 8)}, "LoKr needs both factors"),
    }
    for name, (lora, want) in cases.items():
        msg = _problems(tiny_cfg, lora)
        assert msg and want in msg, (name, msg)
    good = {"lokr": {f"{w1}.lokr_w1": (4, 8), f"{w1}.lokr_w2_a": (i // 4, 2), f"{w1}.lokr_w2_b": (2, e // 8)},
            "loha": {f"{w1}.hada_w{n}_{ab}": ((i, 4) if ab == "a" else (4, e)) for n in "12" for ab in "ab"},
            "conv_shaped": {f"{w1}.lora_down.weight": (4, e, 1, 1), f"{w1}.lora_up.weight": (i, 4, 1, 1)},
            "dora_rows": {**ok, f"{w1}.dora_scale": (i, 1)},
            "dora_cols": {**ok, f"{w1}.dora_scale": (1, e)},
            "locon": {f"{w1}.lora_down.weight": (4, e, 1, 1), f"{w1}.lora_mid.weight": (4, 4, 1, 1),
                      f"{w1}.lora_up.weight": (i, 4, 1, 1)},
            "diff_b": {"diffusion_model.layers.0.adaln_modulation.diff_b": (4 * e,)},
            # a factor of any shape is flattened to (rows, the rest), as ComfyUI reshapes it
            "flattened": {f"{w1}.lora_down.weight": (4, e // 2, 2), f"{w1}.lora_up.weight": (i, 4)}}
    for name, lora in good.items():
        assert _problems(tiny_cfg, lora) is None, name


def test_alpha_values_are_checked_and_explained(tiny_cfg):
    from model.dit.lora_keys import alpha_notes

    e, i = tiny_cfg.emb_dim, tiny_cfg.intermediate_size
    w1 = "diffusion_model.layers.0.feed_forward.w1"
    lora = {f"{w1}.lora_down.weight": (4, e), f"{w1}.lora_up.weight": (i, 4), f"{w1}.alpha": ()}
    mapping = map_lora(lora, tiny_cfg)
    assert alpha_notes({f"{w1}.alpha": 4.0}, mapping, "LoRA a") == []
    for bad in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError, match=r"LoRA a: alpha is not a finite number in 1 modules .*feed_forward.w1.alpha"):
            alpha_notes({f"{w1}.alpha": bad}, mapping, "LoRA a")
    assert "alpha = 0 in 1 modules" in alpha_notes({f"{w1}.alpha": 0.0}, mapping, "LoRA a")[0]
    bare = {k: v for k, v in lora.items() if not k.endswith(".alpha")}
    assert "1 LoRA modules carry no alpha" in alpha_notes({}, map_lora(bare, tiny_cfg), "LoRA a")[0]
    diff_only = {f"{w1}.diff": (i, e), "diffusion_model.layers.0.feed_forward.w2.lokr_w1": (2, 4),
                 "diffusion_model.layers.0.feed_forward.w2.lokr_w2": (e // 2, i // 4)}  # read no alpha
    assert alpha_notes({}, map_lora(diff_only, tiny_cfg), "LoRA a") == []


def test_adapter_kinds_and_long_lists_are_cut_with_an_ellipsis(tiny_cfg):
    from model.dit.lora_keys import alpha_notes

    assert adapter_kind({".oft_blocks", ".alpha"}) == "OFT"
    assert adapter_kind({".a1.weight", ".a2.weight", ".b1.weight", ".b2.weight"}) == "GLoRA"
    assert adapter_kind({".lora_A.weight", ".lora_B.weight", ".lora_magnitude_vector"}) == "DoRA"
    e, i = tiny_cfg.emb_dim, tiny_cfg.intermediate_size
    mods = [f"diffusion_model.layers.{n}.feed_forward.{w}" for n in range(tiny_cfg.num_layers) for w in ("w1", "w2", "w3")]
    assert len(mods) >= 6
    lora = {}
    for m in mods:
        lora.update({f"{m}.lora_down.weight": (4, e if not m.endswith("w2") else i),
                     f"{m}.lora_up.weight": (i if not m.endswith("w2") else e, 4), f"{m}.alpha": ()})
    mapping = map_lora(lora, tiny_cfg)
    zero = {f"{m}.alpha": 0.0 for m in mods}
    three = alpha_notes(dict(list(zero.items())[:3]), mapping, "LoRA z")[0]
    four = alpha_notes(dict(list(zero.items())[:4]), mapping, "LoRA z")[0]
    assert "alpha = 0 in 3 modules" in three and " …" not in three and "alpha = 0 in 4 modules" in four and " …)" in four
    for n, cut in ((8, False), (9, True)):  # unmapped keys: the first eight named
        msg = _problems(tiny_cfg, {**lora, **{f"text_encoder.x{k}.lora_A.weight": (4, 4) for k in range(n)}})
        assert f"{n} keys map nowhere" in msg and (" … (the rest" in msg) == cut, msg
    wrong = {k: ((5, v[1]) if k.endswith("lora_down.weight") else v) for k, v in lora.items()}  # rank 5 vs 4
    shape_errors = map_lora(wrong, tiny_cfg).shape_errors
    assert len(shape_errors) >= 6
    msg = _problems(tiny_cfg, wrong)
    assert all(err in msg for err in shape_errors[:5]) and shape_errors[5] not in msg  # the first five


def test_an_unknown_lora_layout_lists_its_first_keys_once(tiny_cfg):
    msg = _problems(tiny_cfg, {"something.else.weight": (4, 4), "another.tensor": (2,)})
    assert "no key of this LoRA maps onto the Ideogram 4 DiT" in msg and msg.count("first keys:") == 1, msg


def test_other_families_are_named_right(tiny_cfg):
    te = {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_down.weight": (4, 64),
          "lora_te1_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight": (64, 4)}
    qwen = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": (4, 64)}
    sd3 = {"transformer.transformer_blocks.0.attn.add_q_proj.lora_A.weight": (4, 64)}
    sdxl = {**te, "lora_unet_input_blocks_4_1_proj_in.lora_down.weight": (4, 64)}  # most kohya LoRAs train both
    for lora, want in ((te, "a text-encoder LoRA"), (qwen, "a text-encoder LoRA"), (sd3, "(diffusers names)"),
                       (sdxl, "a Stable Diffusion / SDXL LoRA")):
        msg = _problems(tiny_cfg, lora)
        assert want in msg and "Wan" not in msg, msg
        assert msg.count(sorted(lora)[0]) == 1, msg  # the first keys are listed once
    assert _problems(tiny_cfg, {}) == "LoRA s: the file holds no tensors"


def test_peft_loha_and_lokr_configs_scale_the_first_factor():
    """PEFT LoHa / LoKr keep ``alpha`` / ``r`` in their config: the module's first factor carries the scale."""
    m = "base_model.model.layers.0.feed_forward.w1"
    tensors = {f"{m}.hada_w1_a": torch.ones(8, 4), f"{m}.hada_w1_b": torch.ones(4, 8), f"{m}.hada_w2_a": torch.ones(8, 4),
               f"{m}.hada_w2_b": torch.ones(4, 8), "base_model.model.layers.1.feed_forward.w1.lokr_w1": torch.ones(2, 2),
               "base_model.model.layers.1.feed_forward.w1.lokr_w2_a": torch.ones(4, 4),
               "base_model.model.layers.1.feed_forward.w1.lokr_w2_b": torch.ones(4, 4),
               "base_model.model.layers.2.feed_forward.w1.lokr_w1_a": torch.ones(2, 1),
               "base_model.model.layers.2.feed_forward.w1.lokr_w1_b": torch.ones(1, 2),
               "base_model.model.layers.2.feed_forward.w1.lokr_w2": torch.ones(4, 4)}
    meta = {"lora_adapter_metadata": '{"peft_type": "LOHA", "r": 4, "alpha": 8}'}
    report = []
    out = normalize_peft(tensors, meta, tensor_factory=torch.tensor, report=report)
    assert torch.equal(out[f"{m}.hada_w1_a"], 2 * tensors[f"{m}.hada_w1_a"])
    assert torch.equal(out[f"{m}.hada_w2_a"], tensors[f"{m}.hada_w2_a"])
    assert torch.equal(out["base_model.model.layers.1.feed_forward.w1.lokr_w1"], 2 * torch.ones(2, 2))
    lokr2 = "base_model.model.layers.2.feed_forward.w1"  # w1 stored as w1_a · w1_b: w1_a carries the scale
    assert torch.equal(out[f"{lokr2}.lokr_w1_a"], 2 * torch.ones(2, 1))
    assert torch.equal(out[f"{lokr2}.lokr_w1_b"], torch.ones(1, 2))
    assert torch.equal(out[f"{lokr2}.lokr_w2"], torch.ones(4, 4))
    assert report == ["PEFT scale 2 (alpha / r) on 3 modules"]
    assert normalize_peft(tensors, None, tensor_factory=torch.tensor, report=report) == tensors  # no config: as is
