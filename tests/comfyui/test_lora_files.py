"""LoRA files as trainers write them, inside a real ComfyUI (``--cpu``): DoRA, PEFT adapters, scales, shapes.

* A PEFT DoRA file (``use_dora``, written by diffusers + peft) through core ``LoraLoaderModelOnly`` and the pack
  node equals the model of PEFT's own merge (ComfyUI 0.33's own DoRA takes the row norm of the base weight instead
  of the adapted one: ≈ 75 % of the LoRA's effect off), on a bf16 and an fp8 base.
* A PEFT ``save_pretrained`` adapter (``adapter_model.safetensors`` + ``adapter_config.json``, no metadata in the
  file) is scaled by the config's ``lora_alpha / r``, and the node says where the scale came from.
* A LoRA whose matrices disagree on the rank, or whose alpha is NaN, is refused at the loader; ``alpha = 0`` and a
  missing alpha are said on the node; core's loader on the unconditional model with only text-projection keys fails.

Skipped unless ``COMFYUI_PATH`` is set.
"""

from __future__ import annotations

import pytest
from comfy_harness import LORA_WORKER_SETUP, requires_comfyui, worker_result

pytestmark = requires_comfyui()

WORKER = LORA_WORKER_SETUP + r'''
import json
from safetensors import safe_open

def run(patcher):
    load_for_run(patcher)
    m = patcher.model
    v = m.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)
    u = m.apply_model(x, sigma, ideogram4_velocity=True)
    return torch.cat([v.flatten(), u.flatten()]).float()

def merged_run(ref_sd, name):
    path = write_file({k: v.contiguous() for k, v in ref_sd.items()}, out / f"merged_{name}.safetensors", "fp32")
    return run(cm.load_model_patcher(path, weight_dtype="fp32"))

def core_lora(patcher, file_name, strength):
    return comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(patcher, file_name, strength)[0]

def node_lora(patcher, file_name, strength, target="conditional", uncond=None):
    return lora_host.load_lora_onto(patcher, uncond, loras / file_name, strength, target, file_name)

def error_of(fn):
    try:
        fn()
    except ValueError as exc:
        return str(exc)
    return None

strength = 0.8
for fmt in ("bf16", "fp8"):
    base = cm.load_model_patcher(write_file(convert(sd, fmt), out / f"{fmt}.safetensors", fmt), weight_dtype="fp32")
    deq = dequantised(cm.dit_of(base))
    path, ref = write_peft_lora(out / f"dora_{fmt}", cfg, deq, rank=4, lora_alpha=8.0, use_dora=True)
    (loras / f"dora_{fmt}.safetensors").write_bytes(path.read_bytes())
    ref = {k: b + strength * (ref[k] - b) for k, b in deq.items()}  # ComfyUI's strength: W + s·(W_dora − W)
    y0, want = run(base), merged_run(ref, f"dora_{fmt}")
    node_model, _, lines = node_lora(base, f"dora_{fmt}.safetensors", strength)
    res[f"dora_{fmt}"] = {"core": rel(run(core_lora(base, f"dora_{fmt}.safetensors", strength)), want),
                          "node": rel(run(node_model), want), "effect": rel(want, y0), "lines": lines}

# a PEFT save_pretrained adapter: the scale lives in adapter_config.json only
base = cm.load_model_patcher(out / "bf16.safetensors", weight_dtype="fp32")
deq = dequantised(cm.dit_of(base))
path, ref = write_peft_lora(out / "plain", cfg, deq, rank=4, lora_alpha=8.0)
with safe_open(str(path), "pt") as f:
    tensors = {k.replace("transformer.", "base_model.model.", 1): f.get_tensor(k) for k in f.keys()}
    config = json.loads(f.metadata()["lora_adapter_metadata"])
adapter = loras / "peftdir"
adapter.mkdir()
save_file(tensors, str(adapter / "adapter_model.safetensors"))
(adapter / "adapter_config.json").write_text(json.dumps(config.get("transformer", config)))
ref = {k: b + (ref[k] - b) for k, b in deq.items()}
model, _, lines = node_lora(base, "peftdir/adapter_model.safetensors", 1.0)
res["adapter_dir"] = {"node": rel(run(model), merged_run(ref, "adapter")), "lines": lines,
                      "core": rel(run(core_lora(base, "peftdir/adapter_model.safetensors", 1.0)), run(base))}
save_file(tensors, str(loras / "no_alpha.safetensors"))  # the same tensors with no config anywhere: scale 1, said
res["no_alpha_lines"] = node_lora(base, "no_alpha.safetensors", 1.0)[2]

# refusals and notes
e, i = cfg.emb_dim, cfg.intermediate_size
w1 = "diffusion_model.layers.0.feed_forward.w1"
g = torch.Generator().manual_seed(5)
save_file({f"{w1}.lora_down.weight": torch.randn(8, e, generator=g), f"{w1}.lora_up.weight": torch.randn(i, 4, generator=g)},
          str(loras / "rank_mismatch.safetensors"))
good = {f"{w1}.lora_down.weight": torch.randn(4, e, generator=g), f"{w1}.lora_up.weight": torch.randn(i, 4, generator=g)}
save_file({**good, f"{w1}.alpha": torch.tensor(float("nan"))}, str(loras / "nan_alpha.safetensors"))
save_file({**good, f"{w1}.alpha": torch.tensor(0.0)}, str(loras / "zero_alpha.safetensors"))
res["rank_node"] = error_of(lambda: node_lora(base, "rank_mismatch.safetensors", 1.0))
res["rank_core"] = error_of(lambda: core_lora(base, "rank_mismatch.safetensors", 1.0))
res["nan_core"] = error_of(lambda: core_lora(base, "nan_alpha.safetensors", 1.0))
res["zero_lines"] = node_lora(base, "zero_alpha.safetensors", 1.0)[2]
uncond = cm.load_model_patcher(out / "bf16.safetensors", weight_dtype="fp32", image_only=True)
save_file(layout_state_dict(lora_factors(cfg, seed=3, modules=["llm_cond_proj"]), "comfyui"),
          str(loras / "text_projection_only.safetensors"))
res["textproj_core_uncond"] = error_of(lambda: core_lora(uncond, "text_projection_only.safetensors", 1.0))
print("RESULT " + json.dumps(res))
'''

result = worker_result(WORKER)


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_peft_dora_equals_pefts_own_merge(result, fmt):
    r = result[f"dora_{fmt}"]
    assert r["effect"] > 1e-2, r  # the LoRA changes the output clearly
    assert r["core"] < 1e-5 and r["node"] < 1e-5, r  # ComfyUI's own DoRA: ≈ 0.75 × the effect off
    assert "DoRA" in r["lines"][0], r["lines"]


def test_peft_adapter_folder_takes_its_scale_from_adapter_config(result):
    r = result["adapter_dir"]
    assert r["node"] < 1e-5, r  # scale lora_alpha / r = 2, not 1
    assert any(line.startswith("  note: PEFT scale 2 (lora_alpha / r) on ") and "adapter_config.json" in line
               for line in r["lines"]), r["lines"]
    assert r["core"] > 1e-3, r  # core's loader reads the file alone (scale 1) — still a LoRA, not a no-op
    assert any("carry no alpha" in line and "scale 1" in line for line in result["no_alpha_lines"]), \
        result["no_alpha_lines"]


def test_bad_loras_are_refused_and_odd_ones_explained(result):
    for key in ("rank_node", "rank_core"):
        assert result[key] and "disagree on the rank: up [1024, 4], down [8, 512]" in result[key], result[key]
    assert result["nan_core"] and "alpha is not a finite number" in result["nan_core"], result["nan_core"]
    assert any("alpha = 0 in 1 modules" in line for line in result["zero_lines"]), result["zero_lines"]
    msg = result["textproj_core_uncond"]
    assert msg and "text projection" in msg and "load it on the conditional model" in msg, msg
