"""The text projection leaves the compute device after its one use per sampling run (real ComfyUI, ``--cpu``).

A CPU has no device copy to free, so the upload is simulated (``uploads_copy``: ComfyUI's load leaves a
private copy of every weight, as an upload to a GPU does).  After a run of the one-node sampler and of the
SamplerCustomAdvanced guider, ``llm_cond_norm`` / ``llm_cond_proj`` are views of the file again, in ComfyUI's
own partially-loaded state (cast on the fly, the loaded-weight count lowered by exactly their size), while
the latents are bit-identical to a run that keeps them resident; the next runs (streaming them, or after
ComfyUI reloads them) are bit-identical too.  A LoRA-patched projection stays put.

Skipped unless ``COMFYUI_PATH`` is set (Linux only: ``/proc/self/maps``).
"""

from __future__ import annotations

import sys

import pytest
from comfy_harness import LORA_WORKER_SETUP, UPLOADS_COPY, requires_comfyui, worker_result

pytestmark = [*requires_comfyui(), pytest.mark.skipif(not sys.platform.startswith("linux"),
                                                      reason="file-backed memory is read from /proc/self/maps")]

WORKER = UPLOADS_COPY + LORA_WORKER_SETUP + r'''
from i4pack.nodes.host import conditioning, sampler_settings
from i4pack.nodes.host.comfy_sampling import Ideogram4Guider, Ideogram4KSampler, Ideogram4Noise, run_reference_sampler
from i4pack.nodes.host.sampler_settings import GuidanceSpec
from i4pack.sampling import sigmas as make_sigmas
off = importlib.import_module("i4pack.nodes.host.offload")

positive = conditioning.make_conditioning(feats[:1], [7])
settings = sampler_settings.settings_from_inputs("custom", steps=3, mu=0.0, std=1.0, guidance=5.0, polish_steps=1,
                                                 polish_guidance=2.0)
cond_path = write_file(convert(sd, "bf16"), out / "c.safetensors", "bf16")
uncond_path = write_file(convert(random_state_dict(cfg, 1), "bf16"), out / "u.safetensors", "bf16")

def state(p):
    dit = p.model.diffusion_model
    maps = off.FileMappings.read()
    m = dit.llm_cond_proj
    return {"file_backed": bool(off.storage_file(m.weight, maps)), "cast": bool(m.comfy_cast_weights),
            "norm_file_backed": bool(off.storage_file(dit.llm_cond_norm.weight, maps)),
            "loaded": int(p.model.model_loaded_weight_memory)}

def one_node(c, u):
    return run_reference_sampler(c, u, positive, settings, width=256, height=256, batch=1, seed=5)[0]

def text_bytes(p):
    dit = p.model.diffusion_model
    return sum(t.numel() * t.element_size() for m in (dit.llm_cond_norm, dit.llm_cond_proj) for t in m.parameters())

cond = cm.load_model_patcher(cond_path, weight_dtype="bf16")
uncond = cm.load_model_patcher(uncond_path, weight_dtype="bf16", image_only=True)
calls = []
cond.model.diffusion_model.llm_cond_proj.register_forward_hook(lambda *a: calls.append(1))
mm.unload_all_models()
baseline = one_node(cond, uncond)  # CPU weights are their file tensors: nothing to release
res["baseline_state"] = state(cond)
res["size"] = int(cond.model_size())
res["text_bytes"] = text_bytes(cond)
res["calls_one_node"] = len(calls)
mm.unload_all_models()
with uploads_copy():
    z1 = one_node(cond, uncond)
res["after_run"] = state(cond)
res["first_equal"] = bool(torch.equal(z1, baseline))
z2 = one_node(cond, uncond)  # the projection streams from the file this time
res["second_equal"] = bool(torch.equal(z2, baseline))
mm.unload_all_models()
with uploads_copy():  # ComfyUI loads everything again, and the run releases it again
    z3 = one_node(cond, uncond)
res["third_equal"] = bool(torch.equal(z3, baseline))
res["after_reload"] = state(cond)

# SamplerCustomAdvanced: the guider runs both DiTs inside their per-run cache (one projection per run, released)
from i4pack.nodes.host.comfy_sampling import empty_latent, make_sigmas
def custom_advanced():
    guider = Ideogram4Guider(cond, uncond, GuidanceSpec.from_inputs("custom", 5.0, 1, 2.0))
    guider.set_positive(positive)
    latent = empty_latent(1, 128, 16, 16)
    noise = Ideogram4Noise(5).generate_noise({"samples": latent})
    return guider.sample(noise, latent, Ideogram4KSampler(), make_sigmas(settings, 256, 256), seed=5,
                         disable_pbar=True)
mm.unload_all_models()
calls.clear()
z_adv0 = custom_advanced()
res["calls_guider"] = len(calls)
mm.unload_all_models()
with uploads_copy():
    z_adv1 = custom_advanced()
res["guider_state"] = state(cond)
res["guider_equal"] = bool(torch.equal(z_adv0, z_adv1))

# a LoRA on the projection: its merged (private) weight stays where ComfyUI put it
save_file(layout_state_dict(lora_factors(cfg, seed=3, rank=2, alpha=2.0, modules=["llm_cond_proj"]), "ai-toolkit"),
          str(loras / "proj.safetensors"))
patched = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(cond, "proj.safetensors", 1.0)[0]
mm.unload_all_models()
with uploads_copy():
    one_node(patched, uncond)
res["lora_state"] = state(patched)

# the hook holds its model weakly: a dropped model is freed by reference counting (no cycle for ComfyUI to leak)
import gc, weakref
gc.disable()
dropped = cm.load_model_patcher(cond_path, weight_dtype="bf16")
ref = weakref.ref(dropped.model)
del dropped
res["freed_by_refcount"] = ref() is None
gc.enable()
print("RESULT " + json.dumps(res))
'''


result = worker_result(WORKER)


def test_projection_released_after_use_and_results_unchanged(result):
    assert result["baseline_state"]["file_backed"] and not result["baseline_state"]["cast"], result
    after = result["after_run"]
    assert after["file_backed"] and after["norm_file_backed"] and after["cast"], result
    assert after["loaded"] == result["size"] - result["text_bytes"], result  # ComfyUI's count: exactly their size
    assert result["first_equal"] and result["second_equal"] and result["third_equal"], result
    assert result["after_reload"]["file_backed"] and result["after_reload"]["cast"], result


def test_one_projection_per_run(result):
    assert result["calls_one_node"] == 1, result


def test_guider_path_caches_and_releases_too(result):
    assert result["calls_guider"] == 1, result  # was once per step before the guider entered the per-run cache
    assert result["guider_state"]["file_backed"] and result["guider_state"]["cast"], result
    assert result["guider_equal"], result


def test_patched_projection_stays(result):
    assert not result["lora_state"]["file_backed"] and not result["lora_state"]["cast"], result


def test_dropped_model_is_freed_without_the_garbage_collector(result):
    assert result["freed_by_refcount"], result
