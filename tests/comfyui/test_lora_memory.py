"""ComfyUI counts the device copies of LoRA patches that are applied when a layer runs (real ComfyUI, ``--cpu``).

A packed (fp8) layer's LoRA is never merged: its factors are copied once to the load device and applied as the
layer runs.  Those copies are memory ComfyUI must know of, or a card that looks full-enough runs out: they are
kept in the compute dtype (half the bytes of an fp32 LoRA file on a bf16 model, and no cast per call), they
are part of ``model_size()`` and ``loaded_size()``, a partial unload that streams a layer frees (and reports)
its copies, an unload leaves none, and a view ComfyUI drops while loaded leaves none on the base after the next model
call (its finalizer only records it: it may run anywhere the garbage collector runs); a patch merged into
the decoded weight on every call (LoHa…) has its temporaries in the decode estimate, also in the estimate ComfyUI asks
for under SamplerCustomAdvanced (before its own pre_run), and a failed run leaves no model pointing at its patcher.
The figures are checked against the factors written to the file, not against the code's own sums; the output with the
copies equals the streamed output, which casts per call.

Skipped unless ``COMFYUI_PATH`` is set.
"""

from __future__ import annotations

from comfy_harness import LORA_WORKER_SETUP, requires_comfyui, worker_result

pytestmark = requires_comfyui()

WORKER = LORA_WORKER_SETUP + r'''
factors = lora_factors(cfg, seed=31, rank=4, alpha=2.0)  # float32, every default module
save_file(layout_state_dict(factors, "kohya"), str(loras / "kohya.safetensors"))
path = write_file(convert(sd, "fp8"), out / "fp8.safetensors", "fp8")

def copies(patcher, role="own"):
    """(bytes, dtypes) of the device copies the model's layers hold for ``role`` (tensors the patcher does not own)."""
    own = {id(t) for entries in patcher.patches.values() for e in entries for t in tensors(e[1])}
    held, dtypes = 0, set()
    for m in cm.dit_of(patcher).modules() if role == "own" else patcher.model.diffusion_model.base.modules():
        for (r, _), patch in (getattr(m, "role_patches", None) or {}).items():
            for e in (patch.prepared_patches or []) if r == role else []:
                for t in tensors(e[1]):
                    if id(t) not in own and t.ndim:
                        held += t.numel() * t.element_size()
                        dtypes.add(str(t.dtype))
    return held, sorted(dtypes)

def tensors(value):
    if isinstance(value, torch.Tensor):
        return [value]
    if hasattr(value, "weights"):
        return tensors(value.weights)
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in tensors(v)]
    return []

base = cm.load_model_patcher(path, weight_dtype="bf16")
dit = cm.dit_of(base)
packed = {name for name, m in dit.named_modules() if isinstance(m, QuantizedLinear)}
# what the file holds for the packed layers, in bf16 (2 bytes): down (r, in) + up (out, r)
expected = {name: 2 * (down.numel() + up.numel()) for name, (down, up, _) in factors.items() if name in packed}
lp = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, "kohya.safetensors", 0.8)[0]
r = res["own"] = {"packed_patched": len(expected), "expected": sum(expected.values()),
                  "base_size": int(base.model_size()), "size": int(lp.model_size())}
mm.unload_all_models()
mm.load_models_gpu([lp], force_full_load=True)
r["loaded_full"] = int(lp.loaded_size())
r["held_full"], r["dtypes"] = copies(lp)
y_resident = lp.model.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)
# ComfyUI streams about half of the model: the layers it streams drop their copies, and it is told so
streamed_before = {n for n, m in dit.named_modules() if getattr(m, "comfy_cast_weights", False)}
freed = lp.partially_unload(lp.offload_device, memory_to_free=lp.model_size() // 2)
streamed = {n for n, m in dit.named_modules() if getattr(m, "comfy_cast_weights", False)} - streamed_before
r["freed"] = int(freed)
r["freed_expected"] = sum(mm.module_size(dit.get_submodule(n)) + expected.get(n, 0) for n in streamed)
r["streamed_packed"] = len(streamed & set(expected))
r["loaded_partial"] = int(lp.loaded_size())
r["held_partial"], _ = copies(lp)
r["held_partial_expected"] = sum(v for n, v in expected.items() if n not in streamed)
y_streamed = lp.model.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)
r["streamed_equal"] = bool(torch.equal(y_resident, y_streamed))  # copies made once == ComfyUI's cast per call
mm.unload_all_models()
r["loaded_unloaded"] = int(lp.loaded_size())
r["held_unloaded"], _ = copies(lp)
# a partial load with a budget: what ComfyUI counts is the whole model less the layers it streams and their copies
lp.load(torch.device("cpu"), lowvram_model_memory=lp.model_size() // 2)
streamed = {n for n, m in dit.named_modules() if getattr(m, "comfy_cast_weights", False)}
r["budget_streamed_packed"] = len(streamed & set(expected))
r["budget_loaded"] = int(lp.loaded_size())
def listed(m):  # a layer ComfyUI loads one by one: its own parameters only (or a castable layer)
    own = dict(m.named_parameters(recurse=False))
    return (hasattr(m, "comfy_cast_weights") or own) and all(k in own for k, _ in m.named_parameters())
r["budget_loaded_expected"] = sum(mm.module_size(m) + expected.get(n, 0) for n, m in dit.named_modules()
                                  if listed(m) and n not in streamed)
r["budget_held"], _ = copies(lp)
r["budget_held_expected"] = sum(v for n, v in expected.items() if n not in streamed)
lp.detach()

# adapters that are merged into the decoded weight on every call (here LoHa) hold weight-sized temporaries there:
# the decode estimate counts them for those layers (ComfyUI's factor 2); a plain LoRA (a side branch) adds none
g = torch.Generator().manual_seed(32)
loha, loha_modules = {}, ["layers.0.attention.qkv", "llm_cond_proj"]
for name in loha_modules:
    o, i = dit.get_submodule(name).out_features, dit.get_submodule(name).in_features
    for a, shape in (("hada_w1_a", (o, 2)), ("hada_w1_b", (2, i)), ("hada_w2_a", (o, 2)), ("hada_w2_b", (2, i))):
        loha[f"diffusion_model.{name}.{a}"] = 0.3 * torch.randn(shape, generator=g)
    loha[f"diffusion_model.{name}.alpha"] = torch.tensor(2.0)
save_file(loha, str(loras / "loha.safetensors"))
lh = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, "loha.safetensors", 1.0)[0]
mm.unload_all_models()
mm.load_models_gpu([lh], force_full_load=True)  # resident: merged from the bf16 copies made once
loha_resident = lh.model.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)
lh.detach()
lh.load(torch.device("cpu"), lowvram_model_memory=1)  # streamed: ComfyUI's patch, cast on every call
loha_streamed = lh.model.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)
lh.detach()
n = {name: m.in_features * m.out_features for name, m in dit.named_modules() if isinstance(m, QuantizedLinear)}
block_n = max(v for k, v in n.items() if not k.startswith("llm_cond"))
res["merge"] = {"plain": sorted(lp.merged_layers()), "loha": sorted(lh.merged_layers()),
                "plain_temps": list(cm.dequant_temp_bytes(dit, "cpu", cm.merged_layers(lp))),
                "loha_temps": list(cm.dequant_temp_bytes(dit, "cpu", cm.merged_layers(lh))),
                # bf16 decode (2 B per weight), + 2 weight-sized bf16 temporaries where a patch is merged
                "want_plain": [2 * block_n, 2 * n["llm_cond_proj"]],
                "want_loha": [max(2 * block_n, 6 * n["layers.0.attention.qkv"]), 6 * n["llm_cond_proj"]],
                "act_plain": cm.activation_estimate(dit, 1, gh * gw, 7, "cpu", cm.merged_layers(lp)),
                "act_loha": cm.activation_estimate(dit, 1, gh * gw, 7, "cpu", cm.merged_layers(lh)),
                "loha_streamed_equal": bool(torch.equal(loha_resident, loha_streamed))}

# SamplerCustomAdvanced (the Ideogram4 Guider): ComfyUI asks the model for its memory before its own pre_run; the
# estimate must already see this run's patcher (the LoHa temporaries) and device
from i4pack.nodes.host import conditioning, sampler_settings
cs = importlib.import_module("i4pack.nodes.host.comfy_sampling")
settings = sampler_settings.settings_from_inputs("custom", steps=1, mu=0.0, std=1.0, guidance=5.0, polish_steps=0,
                                                 polish_guidance=1.0)
image_only = cm.load_model_patcher(path, weight_dtype="bf16", image_only=True)
asked, real_required = [], cm.Ideogram4NativeModel.memory_required
def spy(self, input_shape, cond_shapes={}):
    out = real_required(self, input_shape, cond_shapes)
    asked.append((self.current_patcher is not None, int(input_shape[0]), int(out)))
    return out
cm.Ideogram4NativeModel.memory_required = spy
try:
    for name, patcher in (("plain", lp), ("loha", lh)):
        mm.unload_all_models()
        asked.clear()
        guider = cs.Ideogram4Guider(patcher, image_only, sampler_settings.GuidanceSpec.from_inputs("custom", 5.0, 0, 1.0))
        guider.set_positive(conditioning.make_conditioning(feats[:1], [7]))
        latent = cs.empty_latent(1, 128, 16, 16)
        guider.sample(cs.Ideogram4Noise(5).generate_noise({"samples": latent}), latent, cs.Ideogram4KSampler(),
                      cs.make_sigmas(settings, 256, 256), seed=5, disable_pbar=True)
        res["merge"][f"guider_{name}"] = asked[:]
        res["merge"][f"guider_{name}_want"] = cm.activation_estimate(dit, 1, 256, 7, "cpu", cm.merged_layers(patcher))
finally:
    cm.Ideogram4NativeModel.memory_required = real_required
mm.unload_all_models()
# a run that fails (an interrupt, an error in a sampler) leaves neither model pointing at its patcher
class Failing(cs.Ideogram4KSampler):
    def sample(self, *args, **kwargs):
        raise RuntimeError("stopped")
guider = cs.Ideogram4Guider(lh, image_only, sampler_settings.GuidanceSpec.from_inputs("custom", 5.0, 0, 1.0))
guider.set_positive(conditioning.make_conditioning(feats[:1], [7]))
try:
    guider.sample(cs.Ideogram4Noise(5).generate_noise({"samples": latent}), latent, Failing(),
                  cs.make_sigmas(settings, 256, 256), seed=5, disable_pbar=True)
except RuntimeError:
    pass
res["merge"]["after_error"] = [lh.model.current_patcher is None, image_only.model.current_patcher is None]
mm.unload_all_models()

# the unconditional model = base + LoRA: its size is its copies (every LoRA tensor, bf16), all of them loaded
mm.unload_all_models()
uncond, _ = lora_host.unconditional_from_lora(base, loras / "kohya.safetensors", 1.0, "kohya")
u = res["view"] = {"expected": sum(2 * (d.numel() + up.numel()) for n, (d, up, _) in factors.items()
                                   if not n.startswith("llm_cond")),  # image-only: the text projection is skipped
                   "size": int(uncond.model_size()), "lora_bytes": int(uncond.lora_bytes())}
cm.load_pair(base, uncond, batch=1, n_img=gh * gw, n_txt=7)
u["loaded"] = int(uncond.loaded_size())
u["held"], u["dtypes"] = copies(uncond, uncond.model.diffusion_model.role)
mm.unload_all_models()
# loaded by ComfyUI with a budget (not whole): its copies are still made, so still counted
uncond.load(torch.device("cpu"), lowvram_model_memory=1)
u["partial_loaded"] = int(uncond.loaded_size())
u["partial_held"], _ = copies(uncond, uncond.model.diffusion_model.role)
uncond.detach()

# a view ComfyUI forgets while it is loaded (the node re-ran with another strength): its patches leave the base
import gc
dropped, _ = lora_host.unconditional_from_lora(base, loras / "kohya.safetensors", 0.5, "dropped")
role = dropped.model.diffusion_model.role
def role_layers():
    return sum(1 for m in dit.modules() if any(k[0] == role for k in (getattr(m, "role_patches", None) or {})))
mm.load_models_gpu([base, dropped])
res["dropped"] = {"while_loaded": role_layers()}
gc.disable()  # freed by reference counting, as ComfyUI drops a node's outputs (no cyclic collection needed)
del dropped
res["dropped"]["recorded_dead"] = role in getattr(dit, "_ideogram4_dead_roles", [])
base.model.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)  # the executor's next model call
gc.enable()
res["dropped"]["after_drop"] = role_layers()
mm.unload_all_models()
print("RESULT " + json.dumps(res))
'''


result = worker_result(WORKER)


def test_packed_lora_copies_are_counted_in_the_compute_dtype(result):
    r = result["own"]
    assert r["packed_patched"] > 0 and r["expected"] > 0, r
    assert r["size"] == r["base_size"] + r["expected"], r  # model_size: the weights plus the copies
    assert r["loaded_full"] == r["size"], r
    assert r["held_full"] == r["expected"] and r["dtypes"] == ["torch.bfloat16"], r  # what is held is what is counted


def test_partial_unload_frees_and_reports_the_copies_of_streamed_layers(result):
    r = result["own"]
    assert r["streamed_packed"] > 0 and r["freed"] == r["freed_expected"], r
    assert r["loaded_partial"] == r["loaded_full"] - r["freed"], r
    assert r["held_partial"] == r["held_partial_expected"] < r["held_full"], r
    assert r["streamed_equal"], r
    assert r["loaded_unloaded"] == 0 and r["held_unloaded"] == 0, r


def test_a_budgeted_load_counts_the_copies_of_the_resident_layers_only(result):
    r = result["own"]
    assert 0 < r["budget_streamed_packed"] < r["packed_patched"], r  # some packed layers resident, some streamed
    assert r["budget_loaded"] == r["budget_loaded_expected"], r
    assert r["budget_held"] == r["budget_held_expected"], r


def test_patches_merged_on_every_call_are_in_the_decode_estimate(result):
    m = result["merge"]
    assert m["plain"] == [] and m["plain_temps"] == m["want_plain"], m  # a plain LoRA runs as a side branch
    assert m["loha"] == ["layers.0.attention.qkv", "llm_cond_proj"], m
    assert m["loha_temps"] == m["want_loha"] and m["act_loha"] > m["act_plain"], m
    assert m["loha_streamed_equal"], m  # a merged adapter from the compute-dtype copies == ComfyUI's cast per call


def test_the_guiders_memory_estimate_sees_the_runs_patches(result):
    m = result["merge"]
    for name in ("plain", "loha"):
        asked = m[f"guider_{name}"]
        assert asked and all(has_patcher for has_patcher, _, _ in asked), asked  # asked with the patcher set
        assert [est for _, b, est in asked if b == 1] == [m[f"guider_{name}_want"]], (name, asked)
    assert m["guider_loha_want"] > m["guider_plain_want"], m
    assert m["after_error"] == [True, True], m


def test_a_dropped_view_leaves_no_patch_on_the_base(result):
    d = result["dropped"]
    assert d["while_loaded"] > 0 and d["recorded_dead"] and d["after_drop"] == 0, d


def test_unconditional_lora_size_is_its_device_copies(result):
    u = result["view"]
    assert u["size"] >= u["expected"] > 0 and u["size"] - u["expected"] < 4096, u  # + the wrapper's few buffers
    assert u["lora_bytes"] == 2 * u["expected"], u  # the file's float32 tensors
    assert u["loaded"] == u["size"] and u["held"] == u["expected"] and u["dtypes"] == ["torch.bfloat16"], u
    assert u["partial_loaded"] == u["size"] and u["partial_held"] == u["expected"], u
