"""Unconditional model = conditional base + an unconditional LoRA, sharing the base's weights (real ComfyUI, ``--cpu``).

Equal (fp32, ≤ 1e-5 relative) to a separately loaded *merged* unconditional checkpoint, also when a style
LoRA sits on the conditional model (it must not leak into the unconditional pass, and the LoRA must not leak
into the conditional pass — weight and bias patches alike; a norm patch, which cannot be kept to one pass, is an
error); the one-node sampler's latent equals the one from the merged pair; the pair
holds one base: no weight of its own in the unconditional model, ComfyUI's sizes are base (+ the style LoRA) and
the unconditional LoRA, and the process memory grows by far less than a second base when it is built and run.

Skipped unless ``COMFYUI_PATH`` is set.
"""

from __future__ import annotations

import pytest
from comfy_harness import LORA_WORKER_SETUP, requires_comfyui, worker_result

pytestmark = requires_comfyui()

WORKER = LORA_WORKER_SETUP + r'''
import gc
from i4pack.nodes.host import conditioning, sampler_settings
from i4pack.nodes.host.comfy_sampling import run_reference_sampler
from benchmarks.proc_status import proc_status
style = lora_factors(cfg, seed=21, rank=4, alpha=4.0)
ulora = lora_factors(cfg, seed=22, rank=8, alpha=4.0, modules=None)
ulora["llm_cond_proj"] = lora_factors(cfg, seed=23, rank=8, alpha=4.0, modules=["llm_cond_proj"])["llm_cond_proj"]
# bias patches (diff_b) too: on the shared base they must stay in their own pass like the weight patches
g = torch.Generator().manual_seed(24)
style_b = {"layers.0.adaln_modulation.bias": 0.05 * torch.randn(4 * cfg.emb_dim, generator=g)}
ulora_b = {"layers.1.adaln_modulation.bias": 0.05 * torch.randn(4 * cfg.emb_dim, generator=g)}
save_file({**layout_state_dict(style, "kohya"), "lora_unet_layers_0_adaln_modulation.diff_b": style_b[
    "layers.0.adaln_modulation.bias"]}, str(loras / "style.safetensors"))
save_file({**layout_state_dict(ulora, "ai-toolkit"), "diffusion_model.layers.1.adaln_modulation.diff_b": ulora_b[
    "layers.1.adaln_modulation.bias"]}, str(loras / "uncond.safetensors"))
save_file({"diffusion_model.layers.0.attention_norm1.diff": torch.zeros(cfg.emb_dim)}, str(loras / "norm.safetensors"))

def with_bias(sd_in, biases, strength):
    return {k: v + strength * biases[k] if k in biases else v for k, v in sd_in.items()}

def passes(c, u):
    mm.unload_all_models()
    cm.load_pair(c, u, batch=2, n_img=gh * gw, n_txt=7)
    vc = c.model.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)
    vu = u.model.apply_model(x, sigma, ideogram4_velocity=True)
    return vc, vu

positive = conditioning.make_conditioning(feats[:1], [7])
settings = sampler_settings.settings_from_inputs("custom", steps=3, mu=0.0, std=1.0, guidance=5.0, polish_steps=1,
                                                 polish_guidance=2.0)
for fmt in ("bf16", "fp8"):
    path = write_file(convert(sd, fmt), out / f"{fmt}.safetensors", fmt)
    r = res[fmt] = {}
    base = cm.load_model_patcher(path, weight_dtype="fp32")
    base_sd = dequantised(base.model.diffusion_model)
    mm.load_models_gpu([base])
    base_u = base.model.apply_model(x, sigma, ideogram4_velocity=True)  # warm-up; the plain image-only pass
    gc.collect()
    rss0 = proc_status("VmRSS")["VmRSS"]
    uncond, lines = lora_host.unconditional_from_lora(base, loras / "uncond.safetensors", 1.0, "uncond")
    cond = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, "style.safetensors", 0.7)[0]
    try:  # a norm patch cannot be kept to one pass of the shared base
        comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, "norm.safetensors", 1.0)
        r["norm_error"] = None
    except ValueError as exc:
        r["norm_error"] = str(exc)
    vc, vu = passes(cond, uncond)
    gc.collect()
    rss1 = proc_status("VmRSS")["VmRSS"]
    vc0, _ = passes(base, uncond)  # the view is there, the conditional model has no LoRA
    plan_names = list(cm.plan_pair(cond, uncond, batch=1, n_img=12, n_txt=7).totals)
    # references: separately loaded merged checkpoints
    ref_c = cm.load_model_patcher(write_file(with_bias(merge_reference(base_sd, style, 0.7), style_b, 0.7),
                                             out / f"rc_{fmt}.safetensors", "fp32"), weight_dtype="fp32")
    u_sd = with_bias(merge_reference(base_sd, {k: v for k, v in ulora.items() if k != "llm_cond_proj"}, 1.0), ulora_b, 1.0)
    ref_u = cm.load_model_patcher(write_file(u_sd, out / f"ru_{fmt}.safetensors", "fp32"), weight_dtype="fp32",
                                  image_only=True)
    gc.collect()
    rss2 = proc_status("VmRSS")["VmRSS"]
    rc, ru = passes(ref_c, ref_u)
    gc.collect()
    rss3 = proc_status("VmRSS")["VmRSS"]  # a separately loaded (merged) pair: two bases
    plain_c = cm.load_model_patcher(path, weight_dtype="fp32")
    pc, pu = passes(plain_c, ref_u)
    z, info = run_reference_sampler(cond, uncond, positive, settings, width=256, height=256, batch=1, seed=5)
    z_ref, _ = run_reference_sampler(ref_c, ref_u, positive, settings, width=256, height=256, batch=1, seed=5)
    r.update({
        "cond_err": rel(vc, rc), "uncond_err": rel(vu, ru), "cond_plain_equal": bool(torch.equal(vc0, pc)),
        "uncond_effect": rel(vu, base_u), "style_effect": rel(vc, pc), "latent_err": rel(z, z_ref),
        "view_params": sum(1 for _ in uncond.model.parameters()),
        "sizes": [int(cond.model_size()), int(uncond.model_size()), int(base.model_size())],
        # the style LoRA on the shared base runs as run-time patches: ComfyUI counts its tensors (fp32 compute: 4 B)
        "style_bytes": 4 * (sum(d.numel() + up.numel() for d, up, _ in style.values())
                            + sum(b.numel() for b in style_b.values())),
        "rss_view": int(rss1 - rss0), "rss_separate": int(rss3 - rss2), "plan": plan_names, "lines": lines,
    })
    # two unconditional models built on one base (two LoRAs): each keeps its own LoRA while both are loaded
    second, _ = lora_host.unconditional_from_lora(base, loras / "style.safetensors", 1.0, "style")
    mm.unload_all_models()
    mm.load_models_gpu([base, uncond])
    u_alone = uncond.model.apply_model(x, sigma, ideogram4_velocity=True)
    mm.load_models_gpu([base, uncond, second])
    u_both, s_both = (m.model.apply_model(x, sigma, ideogram4_velocity=True) for m in (uncond, second))
    r["two_views"] = {"first_kept": bool(torch.equal(u_both, u_alone)), "differ": rel(s_both, u_both),
                      "loaded": sum(l.model is uncond or l.model is second for l in mm.current_loaded_models)}
    mm.unload_all_models()
    # an unloaded view leaves no patch (nor device copy) on the base's layers
    r["view_patches_after_unload"] = sum(1 for m in base.model.diffusion_model.modules()
                                         if any(k[0].startswith("view:") for k in (getattr(m, "role_patches", None) or {})))
print("RESULT " + json.dumps(res))
'''


result = worker_result(WORKER)


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_unconditional_from_lora_equals_merged_checkpoint(result, fmt):
    r = result[fmt]
    assert r["uncond_err"] <= 1e-5 and r["cond_err"] <= 1e-5, r
    assert r["uncond_effect"] > 1e3 * max(r["uncond_err"], 1e-7) and r["style_effect"] > 1e-2, r
    assert r["cond_plain_equal"], r  # the view's LoRA never acts in the conditional pass
    assert r["latent_err"] <= 1e-5, r  # the one-node sampler on the shared pair
    assert "attention_norm1" in r["norm_error"] and "would act in both passes" in r["norm_error"], r


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_unconditional_from_lora_holds_one_base(result, fmt):
    r = result[fmt]
    cond_size, uncond_size, base_size = r["sizes"]
    assert r["view_params"] == 0 and cond_size == base_size + r["style_bytes"], r
    assert 0 < uncond_size < 0.2 * base_size, r  # ComfyUI counts only the LoRA for the unconditional model
    # process memory while building and running the shared pair vs a separately loaded merged pair
    assert r["rss_view"] < 0.5 * r["rss_separate"] and r["rss_separate"] > 0.5 * base_size, r
    assert "unconditional (shares the conditional weights; LoRA only)" in r["plan"], r["plan"]
    assert "1 text-projection weights skipped" in "\n".join(r["lines"]), r["lines"]
    assert "MiB in the file" in r["lines"][1] and "MiB on the device in float32" in r["lines"][1], r["lines"]
    assert r["view_patches_after_unload"] == 0, r


@pytest.mark.parametrize("fmt", ["bf16", "fp8"])
def test_two_unconditional_models_on_one_base_keep_their_own_lora(result, fmt):
    t = result[fmt]["two_views"]
    assert t["loaded"] == 2 and t["first_kept"] and t["differ"] > 1e-3, t
