"""ComfyUI's model patches on the pack's MODELs: applied, or refused with a message naming them — never ignored.

* the Ideogram4 Guider runs each pass with its own model's options (a conditional-only APPLY_MODEL wrapper, as
  TorchCompileModel adds, never runs the unconditional pass) and applies the conditional model's CFG hooks (core
  RescaleCFG, CFGNorm, APG: ComfyUI's ``sampling_function`` order), numerically checked against ComfyUI's own
  ``cfg_function``;
* the one-node KSampler refuses what its reference loop does not run (CFG hooks, a shift, a denoise-mask
  function) with a ``ValueError`` naming the patch;
* the DiT applies ``("single_block", i)`` replacements and DIFFUSION_MODEL wrappers (ComfyUI's layout) on every
  sampler, and refuses attention / RoPE patches it has no hooks for, also under core's KSampler;
* ModelMergeSimple of packed (fp8 / nf4) models merges their decoded weights.

Runs inside ComfyUI's Python in a subprocess (``--cpu``).  Skipped unless ``COMFYUI_PATH`` is set.
"""

from __future__ import annotations

import pytest
from comfy_harness import LORA_WORKER_SETUP, requires_comfyui, worker_result

pytestmark = requires_comfyui()

WORKER = r'''
import comfy.patcher_extension as pe
import comfy.samplers
import nodes as core_nodes
from comfy_extras import nodes_model_advanced, nodes_cfg, nodes_apg, nodes_model_merging, nodes_pag
cond_mod = importlib.import_module("i4pack.nodes.host.conditioning")
sn = importlib.import_module("i4pack.nodes.sampler_nodes")

sds = [sd, random_state_dict(cfg, 1)]
paths = {fmt: [write_file(convert(sd, fmt), Path(out_dir) / f"{fmt}{i}.safetensors", fmt) for i, sd in enumerate(sds)]
         for fmt in ("bf16", "fp8", "nf4")}
g = torch.Generator().manual_seed(3)
feats = torch.randn(1, 4, cfg.llm_features_dim, generator=g)
positive = cond_mod.make_conditioning(feats, [4])
pc, pu = (cm.load_model_patcher(f, weight_dtype="bf16") for f in paths["bf16"])
W = H = 256; STEPS = 3; G = 5.0
latent = {"samples": torch.zeros(1, 128, H // 16, W // 16)}

def out(o):
    return o.result if hasattr(o, "result") else o

def one_node(c, u):
    o = sn.Ideogram4NativeKSampler.execute(model=c, unconditional_model=u, positive=positive, seed=5, preset="custom",
        width=W, height=H, batch_size=1, steps=STEPS, mu=0.0, std=1.75, guidance=G, polish_steps=0,
        polish_guidance=3.0, guidance_schedule="", denoise=1.0, latent=None)
    return o.result[0]["samples"]

def guided(c, u, guidance=G):
    guider = out(sn.Ideogram4NativeGuider.execute(c, u, positive, "custom", guidance, 0, 3.0, ""))[0]
    sampler = out(sn.Ideogram4NativeSampler.execute())[0]
    sigmas = out(sn.Ideogram4NativeSigmas.execute("custom", W, H, STEPS, 0.0, 1.75))[0]
    noise = out(sn.Ideogram4NativeNoise.execute(5))[0]
    return guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas, seed=5)

def error(fn):
    try:
        fn()
    except ValueError as exc:
        return str(exc)
    return None

def calls_by_model(patcher, kind=pe.WrappersMP.APPLY_MODEL):
    seen = []
    def wrapper(executor, *args, **kwargs):
        seen.append(id(executor.class_obj))
        return executor(*args, **kwargs)
    patched = patcher.clone()
    patched.add_wrapper_with_key(kind, "test", wrapper)
    return patched, seen

# 1. Guider: each pass with its own model's options
base_guided = guided(pc, pu)
wc, seen_c = calls_by_model(pc)
wu, seen_u = calls_by_model(pu)
res["guider_wrappers"] = {"same": bool(torch.equal(guided(wc, wu), base_guided)),
                          "cond_wrapper_models": sorted(set(seen_c) == {id(pc.model)} for _ in [0]),
                          "cond_calls": len(seen_c), "uncond_calls": len(seen_u),
                          "uncond_wrapper_only_uncond": set(seen_u) == {id(pu.model)}}

# 2. Guider applies the conditional model's CFG hooks as ComfyUI's sampling_function does
hooked = {}
hooked["RescaleCFG"] = nodes_model_advanced.RescaleCFG().patch(pc, 0.7)[0]
cfgnorm = nodes_cfg.CFGNorm.execute(pc, 0.5)
hooked["CFGNorm"] = out(cfgnorm)[0]
hooked["APG"] = out(nodes_apg.APG.execute(pc, 0.0, 5.0, 0.0))[0]
res["guider_hooks_change"] = {k: not bool(torch.equal(guided(m, pu), base_guided)) for k, m in hooked.items()}
# a CFG function that returns the conditional prediction = guidance 1 (no uncond term), up to the Euler form
nocfg = pc.clone()
nocfg.set_model_sampler_cfg_function(lambda args: args["cond"])
a, b = guided(nocfg, pu), guided(pc, pu, guidance=1.0)
res["cfg_function_cond_only_vs_guidance_1"] = float((a - b).abs().max() / b.abs().max())
res["guidance_1_vs_5"] = float((base_guided - b).abs().max() / b.abs().max())
# an identity post-CFG function: the plain Euler step on the same guided prediction as the exact path
ident = pc.clone()
ident.set_model_sampler_post_cfg_function(lambda args: args["denoised"])
a = guided(ident, pu)
res["identity_post_cfg_vs_exact"] = float((a - base_guided).abs().max() / base_guided.abs().max())
res["identity_post_cfg_bitwise"] = bool(torch.equal(a, base_guided))
# a hook on the unconditional model is not run by the Guider: refused
res["guider_uncond_hook"] = error(lambda: guided(pc, hooked["RescaleCFG"]))

# 3. one-node KSampler: refuses what its reference loop does not run
base_one = one_node(pc, pu)
res["ksampler_errors"] = {
    "RescaleCFG": error(lambda: one_node(hooked["RescaleCFG"], pu)),
    "CFGNorm": error(lambda: one_node(hooked["CFGNorm"], pu)),
    "ModelSamplingSD3": error(lambda: one_node(nodes_model_advanced.ModelSamplingSD3().patch(pc, 3.0)[0], pu)),
    "denoise_mask": error(lambda: one_node((lambda m: (m.set_model_denoise_mask_function(lambda s, d, extra_options: d), m)[1])(pc.clone()), pu)),
    "outer_sample_wrapper": error(lambda: one_node(calls_by_model(pc, pe.WrappersMP.OUTER_SAMPLE)[0], pu)),
}

ff = importlib.import_module("i4pack.nodes.host.fast_fp8")
fast_c, _ = ff.with_fast_fp8(cm.load_model_patcher(paths["fp8"][0], weight_dtype="bf16"), "test")
res["fast_fp8_one_node"] = error(lambda: one_node(fast_c, cm.load_model_patcher(paths["fp8"][1], weight_dtype="bf16")))

# 4. the DiT: single_block replacements, DIFFUSION_MODEL wrappers, refused attention patches (every sampler)
x = torch.randn(1, 128, 4, 4, generator=g); sig = torch.tensor([0.6])
def vel(p, opts):
    return p.model.apply_model(x, sig, c_crossattn=feats, text_lengths=[4], transformer_options=opts,
                               ideogram4_velocity=True)
plain = vel(pc, {})
block_args = []
def original(args, extra):
    block_args.append(sorted(args))
    return extra["original_block"](args)
def skip(args, extra):
    return args
res["block_replace"] = {
    "original_bitwise": bool(torch.equal(vel(pc, {"patches_replace": {"dit": {("single_block", 1): original}}}), plain)),
    "args": block_args[0] if block_args else None,
    "skip_changes": not bool(torch.equal(vel(pc, {"patches_replace": {"dit": {("single_block", 0): skip}}}), plain)),
    "double_block": error(lambda: vel(pc, {"patches_replace": {"dit": {("double_block", 0): skip}}})),
    "attn1_patch": error(lambda: vel(pc, {"patches": {"attn1_patch": [lambda q, k, v, extra_options: (q, k, v)]}})),
    "rope_options": error(lambda: vel(pc, {"rope_options": {"scale_x": 2.0}})),
}
res["width_error"] = error(lambda: pc.model.apply_model(x, sig, c_crossattn=torch.randn(1, 4, 13 * 16), text_lengths=[4],
                                                        ideogram4_velocity=True))
dm_seen = []
def dm_wrapper(executor, x_, sigma_, context, mask, opts, **kwargs):
    dm_seen.append((list(x_.shape), list(sigma_.shape), None if context is None else list(context.shape)))
    return executor(x_, sigma_, context, mask, opts, **kwargs)
dm_opts = {"wrappers": {pe.WrappersMP.DIFFUSION_MODEL: {"test": [dm_wrapper]}}}
res["diffusion_model_wrapper"] = {"bitwise": bool(torch.equal(vel(pc, dm_opts), plain)), "seen": dm_seen[:1]}
# core's KSampler (one model, core CFG) on a model with PerturbedAttentionGuidance: the DiT refuses its patch
pag = nodes_pag.PerturbedAttentionGuidance().patch(pc, 3.0)[0] if hasattr(nodes_pag.PerturbedAttentionGuidance, "patch") \
    else out(nodes_pag.PerturbedAttentionGuidance.execute(pc, 3.0))[0]
core_pos = [[feats, {"text_lengths": [4]}]]
res["core_ksampler_pag"] = error(lambda: core_nodes.common_ksampler(pag, 5, 2, 5.0, "euler", "simple", core_pos,
                                                                    core_pos, latent))
res["pag_one_node"] = error(lambda: one_node(pag, pu))
concat = core_nodes.ConditioningConcat().concat(positive, positive)[0]
res["concat_core_ksampler"] = error(lambda: core_nodes.common_ksampler(pc, 5, 2, 5.0, "euler", "simple", concat,
                                                                       [[None, {}]], latent))
# core's Dual Model CFG Guider hands the conditional model's options to both passes: TorchCompileModel's APPLY_MODEL
# wrapper (here with the uncompiled module, the same swap) would run the conditional DiT for the unconditional pass
from comfy_api.torch_helpers.torch_compile import apply_torch_compile_factory
from comfy_extras import nodes_custom_sampler as ncs
def dual(c):
    guider = out(ncs.DualModelGuider.execute(c, positive, G, model_negative=pu))[0]
    sampler = out(sn.Ideogram4NativeSampler.execute())[0]
    sigmas = out(sn.Ideogram4NativeSigmas.execute("custom", W, H, STEPS, 0.0, 1.75))[0]
    noise = out(sn.Ideogram4NativeNoise.execute(5))[0]
    return guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas, seed=5)
swapped = pc.clone()
swapped.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "torch.compile",
                             apply_torch_compile_factory({"diffusion_model": pc.model.diffusion_model}))
res["dual_guider_plain_runs"] = error(lambda: dual(pc)) is None
res["dual_guider_cross_model_wrapper"] = error(lambda: dual(swapped))
res["own_swap_runs"] = error(lambda: one_node(swapped, pu)) is None  # its own DiT swapped in: fine
# TorchCompileModel's wrapper (the real helper; backend eager: dynamo traces, no inductor build) on the one-node
# KSampler: it runs, and the node's report names it (a plain run has no such line)
from comfy_api.torch_helpers import set_torch_compile_wrapper
compiled = pc.clone()
set_torch_compile_wrapper(model=compiled, backend="eager")
def one_node_report(c, u):
    o = sn.Ideogram4NativeKSampler.execute(model=c, unconditional_model=u, positive=positive, seed=5, preset="custom",
        width=W, height=H, batch_size=1, steps=STEPS, mu=0.0, std=1.75, guidance=G, polish_steps=0,
        polish_guidance=3.0, guidance_schedule="", denoise=1.0, latent=None)
    return o.result[0]["samples"], o.ui["text"][0]
import torch._dynamo.utils as dynamo_utils
frames_before = sum(dynamo_utils.counters["frames"].values())
c_samples, c_text = one_node_report(compiled, pu)
res["compile_report"] = {"text": c_text, "plain_text": one_node_report(pc, pu)[1],
                         "frames_compiled": sum(dynamo_utils.counters["frames"].values()) - frames_before,
                         "rel": float((c_samples - base_one).abs().max() / base_one.abs().max()),
                         "other_wrapper_text": one_node_report(calls_by_model(pc)[0], pu)[1]}
res["pag_guider"] = error(lambda: guided(pag, pu))
# a sampling shift with the Guider: refused with Ideogram4 Sigmas (reads no model), applied by BasicScheduler
shifted = nodes_model_advanced.ModelSamplingSD3().patch(pc, 6.0)[0]
res["shift_pack_sigmas"] = error(lambda: guided(shifted, pu))
def with_scheduler(c):
    guider = out(sn.Ideogram4NativeGuider.execute(c, pu, positive, "custom", G, 0, 3.0, ""))[0]
    sampler = out(sn.Ideogram4NativeSampler.execute())[0]
    sigmas = comfy.samplers.calculate_sigmas(c.get_model_object("model_sampling"), "simple", STEPS).cpu()
    noise = out(sn.Ideogram4NativeNoise.execute(5))[0]
    return guider.sample(noise.generate_noise(latent), latent["samples"], sampler, sigmas, seed=5)
res["shift_basic_scheduler_changes"] = not bool(torch.equal(with_scheduler(shifted), with_scheduler(pc)))

# 5. ModelMergeSimple of packed models merges their decoded weights
res["merge"] = {}
for fmt in ("fp8", "nf4"):
    a, b = (cm.load_model_patcher(f, weight_dtype="fp32") for f in paths[fmt])
    merged = nodes_model_merging.ModelMergeSimple().merge(a, b, 0.5)[0]
    da, db = dequantised(cm.dit_of(a)), dequantised(cm.dit_of(b))
    avg = {k: (da[k] + db[k]) / 2 for k in da}
    ref_path = write_file(avg, Path(out_dir) / f"avg_{fmt}.safetensors", "fp32")
    ref = cm.load_model_patcher(ref_path, weight_dtype="fp32")
    def v(p):
        load_for_run(p)
        return p.model.apply_model(x, sig, c_crossattn=feats, text_lengths=[4], ideogram4_velocity=True)
    r, got, plain_a = v(ref), v(merged), v(a)
    res["merge"][fmt] = {"rel": rel(got, r), "rel_unmerged": rel(plain_a, r),
                         "buffer_patches": sorted(k for k in merged.patches if not k.endswith((".weight", ".bias")))}
    if fmt == "fp8":
        import comfy.sd
        res["merge"]["save_error"] = error(lambda: comfy.sd.save_checkpoint(str(Path(out_dir) / "merged.safetensors"),
                                                                             model=merged))

# 6. the pack's samplers refuse conditioning properties they do not apply; the DiT refuses a ControlNet
props = {"hooks": None, "area": (8, 8, 0, 0), "mask": torch.ones(1, 16, 16), "strength": 0.5,
         "start_percent": 0.2}
res["conditioning"] = {}
for key, value in props.items():
    extra = dict(positive[0][1]); extra[key] = value
    if key == "hooks":
        import comfy.hooks
        extra[key] = comfy.hooks.HookGroup()
    cond_p = [[positive[0][0], extra]]
    o = lambda: sn.Ideogram4NativeKSampler.execute(model=pc, unconditional_model=pu, positive=cond_p, seed=5,
        preset="custom", width=W, height=H, batch_size=1, steps=STEPS, mu=0.0, std=1.75, guidance=G, polish_steps=0,
        polish_guidance=3.0, guidance_schedule="", denoise=1.0, latent=None)
    res["conditioning"][key] = error(o)
res["controlnet"] = error(lambda: pc.model.apply_model(x, sig, c_crossattn=feats, text_lengths=[4], control={"output": []},
                                                       ideogram4_velocity=True))
# 6b. an unconditional-from-LoRA view runs on its base's blocks: a block replacement on it is applied, not refused
save_file(layout_state_dict(lora_factors(cfg, seed=41, rank=4, alpha=4.0), "ai-toolkit"), str(loras / "uncond.safetensors"))
view, _ = lora_host.unconditional_from_lora(pc, loras / "uncond.safetensors", 1.0, "u")
view_skip = view.clone()
view_skip.set_model_patch_replace(skip, "dit", "single_block", 0)
res["view_block_replace"] = {"refused": error(lambda: guided(pc, view_skip)),
                             "changes": not bool(torch.equal(guided(pc, view_skip), guided(pc, view)))}

# 7. the Guider without an unconditional model (CFG-distilled single branch) samples to the end
single = guided(pc, None, guidance=1.0)
res["guider_single_branch"] = {"shape": list(single.shape), "current_patcher_cleared": pc.model.current_patcher is None}
print("RESULT " + json.dumps(res))
'''

result = worker_result(LORA_WORKER_SETUP + WORKER)


def test_guider_runs_each_pass_with_its_own_models_options(result):
    r = result["guider_wrappers"]
    assert r["same"]  # pass-through wrappers: same numbers
    assert r["cond_calls"] == 3 and r["uncond_calls"] == 3  # one per step each (before: cond 6, uncond 0)
    assert r["cond_wrapper_models"] == [True] and r["uncond_wrapper_only_uncond"]


def test_guider_applies_the_conditional_models_cfg_hooks(result):
    assert result["guider_hooks_change"] == {"RescaleCFG": True, "CFGNorm": True, "APG": True}
    # float32 rounding of the x0-space form (x + σ·v, then (x − x0)/σ at σ down to 5.5e-4): measured 1.3e-3 / 2.4e-3
    assert result["cfg_function_cond_only_vs_guidance_1"] < 1e-2
    assert result["identity_post_cfg_vs_exact"] < 1e-2  # same guidance, only the Euler form differs
    assert result["guidance_1_vs_5"] > 0.1  # the checks above can tell guidance 1 from 5
    assert "unconditional model: a CFG function (e.g. RescaleCFG" in result["guider_uncond_hook"]


def test_ksampler_refuses_patches_its_reference_loop_does_not_run(result):
    e = result["ksampler_errors"]
    assert "conditional model: a CFG function (e.g. RescaleCFG" in e["RescaleCFG"]
    assert "SamplerCustomAdvanced + Ideogram4 Guider" in e["RescaleCFG"]
    assert "post-CFG functions (e.g. CFGNorm" in e["CFGNorm"]
    assert "sampling shift" in e["ModelSamplingSD3"] and "mu / std" in e["ModelSamplingSD3"]
    assert "denoise-mask function (e.g. DifferentialDiffusion" in e["denoise_mask"]
    assert "outer_sample wrappers (test)" in e["outer_sample_wrapper"]


def test_unet_attention_guidance_is_refused_without_sending_it_to_the_guider(result):
    for key in ("pag_one_node", "pag_guider"):
        e = result[key]
        assert "No Ideogram 4 sampler can apply conditional model: PerturbedAttentionGuidance" in e, e
        assert "remove the node" in e and "To use them" not in e, e  # it is not a CFG hook the Guider would run


def test_conditioning_concat_is_refused_in_the_model_call(result):
    e = result["concat_core_ksampler"]
    assert e and "hold 8 token rows but the caption(s) 4" in e and "ConditioningConcat" in e, e


def test_another_models_dit_swapped_in_by_a_wrapper_is_refused(result):
    assert result["dual_guider_plain_runs"] and result["own_swap_runs"]
    e = result["dual_guider_cross_model_wrapper"]
    assert e and "would run another model's DiT" in e and "Ideogram4 Guider" in e, e


def test_the_ksampler_report_names_torch_compile_and_other_model_call_wrappers(result):
    r = result["compile_report"]
    assert "host wrappers: conditional model compiled (TorchCompileModel, backend eager; the first step compiles)" \
        in r["text"], r["text"]
    assert r["frames_compiled"] > 0  # the compiled module really ran (dynamo traced it)
    assert "unconditional model" not in r["text"].split("host wrappers:")[1]
    assert "host wrappers" not in r["plain_text"]
    assert "host wrappers: conditional model: apply_model wrapper 'test'" in r["other_wrapper_text"]
    assert r["rel"] < 1e-2, r["rel"]  # compiled (eager backend) ≈ the eager run


def test_a_shift_is_refused_with_ideogram4_sigmas_and_used_by_a_scheduler_that_reads_it(result):
    e = result["shift_pack_sigmas"]
    assert "conditional model: carries a sampling shift" in e and "Ideogram4 Sigmas, which reads no model" in e, e
    assert "BasicScheduler" in e
    assert result["shift_basic_scheduler_changes"]


def test_dit_applies_block_replacements_and_refuses_what_it_has_no_hook_for(result):
    r = result["block_replace"]
    assert r["original_bitwise"] and r["skip_changes"]
    assert r["args"] == ["attn_mask", "block_index", "img", "pe", "transformer_options", "vec"]
    assert "('double_block', 0)" in r["double_block"] and "('single_block', 0…1)" in r["double_block"]
    assert "'attn1_patch'" in r["attn1_patch"]
    assert "RoPE options (ScaleROPE)" in r["rope_options"]
    assert "'attn1' replacement patch" in result["core_ksampler_pag"]


def test_diffusion_model_wrappers_see_comfyuis_layout(result):
    r = result["diffusion_model_wrapper"]
    assert r["bitwise"]
    assert r["seen"] == [[[1, 128, 4, 4], [1], [1, 4, 13 * 32]]]


@pytest.mark.parametrize("fmt", ["fp8", "nf4"])
def test_merging_packed_models_merges_their_decoded_weights(result, fmt):
    r = result["merge"][fmt]
    assert r["rel"] < 1e-5, r  # before: fp8 2e15, nf4 0.88 (raw codes blended)
    assert r["rel_unmerged"] > 0.1  # the check can tell merged from unmerged
    assert r["buffer_patches"] == []


def test_object_patches_of_the_dits_layers_are_not_refused(result):
    assert result["fast_fp8_one_node"] is None  # Fast FP8's per-layer switches (object patches) run on the KSampler


def test_another_text_encoders_features_are_named_in_the_model_call(result):
    """Core's samplers and guiders reach the model without the pack nodes' width check: the model call says it."""
    assert result["width_error"] == ("positive: the text encoder gives 13 × 16 features, this DiT expects 13 × 32: "
                                     "load the text encoder that belongs to this DiT in Ideogram4 Text Encoder Loader")


def test_saving_a_merged_packed_model_is_refused_by_name(result):
    e = result["merge"]["save_error"]
    assert e.startswith("saving this ") and "patches (LoRA or merge) on " in e and "packed layers" in e


@pytest.mark.parametrize("key,words", [("hooks", "hooks (Cond Set Props"), ("area", "an area (ConditioningSetArea)"),
                                       ("mask", "a mask (ConditioningSetMask)"), ("strength", "a strength of 0.5"),
                                       ("start_percent", "a timestep range")])
def test_conditioning_properties_the_samplers_do_not_apply_are_refused(result, key, words):
    assert f"positive: {words}" in result["conditioning"][key]


def test_a_controlnet_is_refused_by_the_dit(result):
    assert "ControlNet" in result["controlnet"] and "no ControlNet inputs" in result["controlnet"]


def test_guider_without_an_unconditional_model_samples(result):
    assert result["guider_single_branch"] == {"shape": [1, 128, 16, 16], "current_patcher_cleared": True}


def test_a_block_replacement_on_an_unconditional_view_runs_on_its_base(result):
    assert result["view_block_replace"] == {"refused": None, "changes": True}
