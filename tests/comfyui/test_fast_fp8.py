"""The opt-in fast fp8 matmul node on a real ComfyUI (``--cpu``: the kernel's maths, emulated in float32).

The fast model deviates from the exact one by the e4m3 activation rounding (a few percent on this tiny
random model, never zero) and says so on the node; the loader's own model stays bit-exact (ComfyUI
object patches on a clone); streamed layers give the same output as resident ones; a plain LoRA is added
to the fast matmul as a low-rank side branch, other adapters (LoHa) keep the exact path on their layers; a
bf16 model is a clear error.

Skipped unless ``COMFYUI_PATH`` is set.
"""

from __future__ import annotations

from comfy_harness import LORA_WORKER_SETUP, requires_comfyui, worker_result

pytestmark = requires_comfyui()

WORKER = LORA_WORKER_SETUP + r'''
from i4pack.nodes.speed_nodes import Ideogram4NativeFastFP8
ff = importlib.import_module("i4pack.nodes.host.fast_fp8")

def run(patcher, full=True):
    load_for_run(patcher, full)
    if not full:
        res.setdefault("streamed_layers", sum(1 for m in patcher.model.modules() if getattr(m, "comfy_cast_weights", False)))
    v = patcher.model.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)
    return v.float()

path = write_file(convert(sd, "fp8"), out / "fp8.safetensors", "fp8")
base = cm.load_model_patcher(path, weight_dtype="bf16")
exact = run(base)
node_out = Ideogram4NativeFastFP8.execute(base, None)
fast_model = node_out.result[0]
res["report"] = node_out.ui["text"][0]
res["uncond_none"] = node_out.result[1] is None
fast = run(fast_model)
res["fast_dev"] = rel(fast, exact)
res["streamed_equal"] = bool(torch.equal(run(fast_model, full=False), fast))
res["base_exact_after"] = bool(torch.equal(run(base), exact))
# a plain LoRA on the fast model: added as a low-rank side branch to the fast matmul of every fp8 layer (the layers
# stay fast, the LoRA acts as on the exact model); a LoHa has to be merged into the decoded weight: exact path there
fp8_modules = [k[: -len(".weight_scale")] for k in convert(sd, "fp8") if k.endswith(".weight_scale")]
factors = lora_factors(cfg, seed=7, rank=4, alpha=4.0, modules=fp8_modules)
save_file(layout_state_dict(factors, "ai-toolkit"), str(loras / "all.safetensors"))
lora_exact = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, "all.safetensors", 1.0)[0]
lora_fast = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(fast_model, "all.safetensors", 1.0)[0]
y_lora_exact, y_lora_fast = run(lora_exact), run(lora_fast)
res["lora_fast_dev"] = rel(y_lora_fast, y_lora_exact)
res["lora_effect_exact"], res["lora_effect_fast"] = rel(y_lora_exact, exact), rel(y_lora_fast, fast)
g = torch.Generator().manual_seed(9)
loha = {}
for m in fp8_modules:
    o, i = cm.dit_of(base).get_submodule(m).out_features, cm.dit_of(base).get_submodule(m).in_features
    for a, b in (("hada_w1_a", (o, 2)), ("hada_w1_b", (2, i)), ("hada_w2_a", (o, 2)), ("hada_w2_b", (2, i))):
        loha[f"diffusion_model.{m}.{a}"] = 0.3 * torch.randn(b, generator=g)
    loha[f"diffusion_model.{m}.alpha"] = torch.tensor(2.0)
save_file(loha, str(loras / "loha.safetensors"))
loha_exact = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(base, "loha.safetensors", 1.0)[0]
loha_fast = comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(fast_model, "loha.safetensors", 1.0)[0]
res["loha_fast_equal_exact"] = bool(torch.equal(run(loha_fast), run(loha_exact)))
view, _ = lora_host.unconditional_from_lora(base, loras / "all.safetensors", 1.0, "all")
res["view_line"] = Ideogram4NativeFastFP8.execute(base, view).ui["text"][0].splitlines()[1]
bf16 = cm.load_model_patcher(write_file(sd, out / "bf16.safetensors", "bf16"), weight_dtype="bf16")
try:
    Ideogram4NativeFastFP8.execute(bf16, None)
    res["bf16_error"] = None
except ValueError as exc:
    res["bf16_error"] = str(exc)
# a CUDA GPU without the fp8 kernel (here: a CUDA load device on a machine whose probe finds none)
cuda_like = cm.load_model_patcher(write_file(convert(sd, "fp8"), out / "fp8_cuda.safetensors", "fp8"), weight_dtype="bf16")
cuda_like.load_device = torch.device("cuda", 0)
kept, line = ff.with_fast_fp8(cuda_like, "model")
res["no_kernel"] = {"same_patcher": kept is cuda_like, "object_patches": len(kept.object_patches), "line": line}
print("RESULT " + json.dumps(res))
'''


result = worker_result(WORKER)


def test_fast_fp8_deviates_a_little_and_says_so(result):
    assert 1e-4 < result["fast_dev"] < 0.1, result  # e4m3 activations: never exact, a few percent at most
    report = result["report"]
    assert "NOT reference-exact" in report and "emulated" in report and "max relative deviation" in report, report
    assert result["uncond_none"]


def test_fast_fp8_leaves_the_loader_model_exact_and_streams(result):
    assert result["base_exact_after"] and result["streamed_equal"] and result["streamed_layers"] > 0, result


def test_plain_lora_rides_the_fast_path_other_adapters_keep_the_exact_one(result):
    assert result["lora_fast_dev"] < 0.1, result  # the fast path's own deviation, nothing more
    assert abs(result["lora_effect_fast"] - result["lora_effect_exact"]) < 0.2 * result["lora_effect_exact"], result
    assert result["loha_fast_equal_exact"], result  # merged into the decoded weight: those layers run exact


def test_unconditional_view_follows_its_base(result):
    assert "shares the conditional model's layers" in result["view_line"], result


def test_fast_fp8_needs_fp8_layers(result):
    assert "has no fp8 layers" in result["bf16_error"] and "fp8_scaled" in result["bf16_error"], result


def test_a_gpu_without_the_fp8_kernel_keeps_the_exact_path_and_says_so(result):
    r = result["no_kernel"]
    assert r["same_patcher"] and r["object_patches"] == 0
    assert "fp8 matmul NOT enabled" in r["line"] and "sm89+" in r["line"] and "the exact path runs" in r["line"]
