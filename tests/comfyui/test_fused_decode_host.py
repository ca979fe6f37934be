"""The compiled one-kernel decodes inside a real ComfyUI (``--cpu``; ``IDEOGRAM4_FP8_DECODE=fused`` /
``IDEOGRAM4_GGUF_DECODE=fused`` so the CPU compiles them):

* official fp8 (per row), ComfyUI ``fp8_scaled`` (per tensor) and ComfyUI-GGUF Q4_K models through the pack's
  loader, resident and partially loaded (streamed layers decode on ComfyUI's offload path), give the same bits as
  the eager decode;
* the streamed layers really took the compiled kernel;
* the sampler's note names the decode: fused with the policy, the eager one with the reason under ``auto`` on the
  CPU, nothing for a bf16 model;
* the memory plan counts no float32 intermediate for GGUF layers the compiled kernel decodes.

Skipped unless ``COMFYUI_PATH`` is set.
"""

from __future__ import annotations

import pytest
from comfy_harness import requires_comfyui, worker_result

pytestmark = requires_comfyui()

WORKER = r'''
import os
from tools.make_test_quantized import write_comfy, write_gguf
fused = importlib.import_module("i4pack.model.checkpoints.fp8_fused")
gfused = importlib.import_module("i4pack.model.checkpoints.gguf_fused")
sigma = torch.tensor([0.7, 0.7])
files = {"fp8": write_file(convert(sd, "fp8"), Path(out_dir) / "fp8.safetensors", "fp8"),
         "fp8_scaled": write_comfy(sd, Path(out_dir) / "fp8_scaled.safetensors", "fp8_scaled"),
         "bf16": write_file(convert(sd, "bf16"), Path(out_dir) / "bf16.safetensors", "bf16"),
         "gguf": write_gguf(sd, Path(out_dir) / "ideogram4-Q4_K.gguf", "Q4_K", prefix="model.diffusion_model.")}
calls = []
real = fused._compiled
def counted():
    fn = real()
    def wrapper(codes, scale):
        calls.append(tuple(codes.shape))
        return fn(codes, scale)
    return wrapper
fused._compiled = counted
greal = gfused._compiled
def gcounted(qtype, dtype):
    fn = greal(qtype, dtype)
    def wrapper(flat):
        calls.append(tuple(flat.shape))
        return fn(flat)
    return wrapper
gfused._compiled = gcounted

def run(path, policy, module=fused):
    os.environ[module.ENV] = policy
    module.forget_probes()
    p = cm.load_model_patcher(path, weight_dtype="bf16")
    out = {}
    p.load(torch.device("cpu"), lowvram_model_memory=0, full_load=True)
    out["resident"] = p.model.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)
    p.detach()
    p.load(torch.device("cpu"), lowvram_model_memory=64 * 1024)
    out["streamed_layers"] = sum(1 for m in p.model.diffusion_model.modules()
                                 if getattr(m, "comfy_cast_weights", False) and type(m).__name__ == "ComfyQuantizedLinear")
    before = len(calls)
    out["partial"] = p.model.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)
    out["fused_calls_partial"] = len(calls) - before
    p.detach()
    out["note"] = cm.decode_note(p, None)
    out["temp"] = list(cm.dequant_temp_bytes(p.model.diffusion_model, torch.device("cpu")))
    return out

for name in ("fp8", "fp8_scaled"):
    two, one = run(files[name], "two-kernel"), run(files[name], "fused")
    auto = run(files[name], "auto")
    res[name] = {"equal": [bool(torch.equal(one[k], two[k])) for k in ("resident", "partial")],
                 "auto_equal": bool(torch.equal(auto["resident"], two["resident"])),
                 "streamed_layers": one["streamed_layers"], "fused_calls_partial": one["fused_calls_partial"],
                 "two_calls_partial": two["fused_calls_partial"],
                 "notes": {"two-kernel": two["note"], "fused": one["note"], "auto": auto["note"]}}
two, one, auto = run(files["gguf"], "eager", gfused), run(files["gguf"], "fused", gfused), run(files["gguf"], "auto", gfused)
res["gguf"] = {"equal": [bool(torch.equal(one[k], two[k])) for k in ("resident", "partial")],
               "auto_equal": bool(torch.equal(auto["resident"], two["resident"])),
               "streamed_layers": one["streamed_layers"], "fused_calls_partial": one["fused_calls_partial"],
               "two_calls_partial": two["fused_calls_partial"],
               "notes": {"eager": two["note"], "fused": one["note"], "auto": auto["note"]},
               "temp": {"eager": two["temp"], "fused": one["temp"]}}
os.environ[fused.ENV] = "fused"
res["bf16_note"] = cm.decode_note(cm.load_model_patcher(files["bf16"], weight_dtype="bf16"))
print("RESULT " + json.dumps(res))
'''

result = worker_result(WORKER)


@pytest.mark.parametrize("name", ["fp8", "fp8_scaled", "gguf"])
def test_fused_decode_in_comfyui_is_bit_identical_resident_and_streamed(result, name):
    r = result[name]
    assert r["equal"] == [True, True] and r["auto_equal"]
    assert r["streamed_layers"] > 0 and r["fused_calls_partial"] >= r["streamed_layers"]  # they took the kernel
    assert r["two_calls_partial"] == 0


@pytest.mark.parametrize("name", ["fp8", "fp8_scaled"])
def test_sampler_note_names_the_decode(result, name):
    notes = result[name]["notes"]
    assert notes["fused"] == ("fp8 decode: one fused kernel per layer (compiled, probed bit-identical to the "
                              "reference's decode)")
    assert notes["two-kernel"] == ("fp8 decode: two kernels per layer (cast, then scale; exact) — "
                                   "IDEOGRAM4_FP8_DECODE=two-kernel")
    assert notes["auto"].endswith("not compiled on the CPU unless IDEOGRAM4_FP8_DECODE=fused (it needs a C++ compiler)")
    assert result["bf16_note"] is None


def test_sampler_note_names_the_gguf_decode(result):
    notes = result["gguf"]["notes"]
    assert notes["fused"] == ("GGUF decode: Q4_K: one compiled kernel per layer (probed bit-identical to the "
                              "reference's decode)")
    assert notes["eager"] == "GGUF decode: Q4_K: eager torch ops (exact) — IDEOGRAM4_GGUF_DECODE=eager"
    assert notes["auto"].endswith("not compiled on the CPU unless IDEOGRAM4_GGUF_DECODE=fused (it needs a C++ compiler)")


def test_the_memory_plan_counts_no_float32_intermediate_for_compiled_gguf_layers(result):
    """The eager GGUF decode holds a float32 intermediate per chunk (counted as one of the layer's size); the compiled
    kernel writes the bf16 weight directly, so the plan's decode temporary is a third (the largest layer: 2 vs 6
    bytes per weight)."""
    temp = result["gguf"]["temp"]
    assert temp["fused"][0] * 3 == temp["eager"][0], temp
