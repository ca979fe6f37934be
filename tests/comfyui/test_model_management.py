"""Model-management behaviour of the pack's ComfyUI models that can be checked on a CPU.

Runs inside ComfyUI's Python in a subprocess (clean ``sys.path``: ComfyUI first, then the pack as
a package, then the repo for ``tools``), ComfyUI in ``--cpu`` mode:

* lowvram / partial loading — ``ModelPatcher.load(lowvram_model_memory=…)`` leaves most layers
  "offloaded" with ``comfy_cast_weights`` set, packed fp8 / nf4 ``ComfyQuantizedLinear`` layers
  included; their forward then moves the packed storage and decodes it per call.  On a CPU the
  copy is CPU→CPU, but it is the same code path a GPU streams through: outputs must equal the
  fully loaded model bit for bit, for every checkpoint format;
* ``model_size()`` counts packed bytes (== the checkpoint's tensor bytes, compute-dtype biases);
* ComfyUI's dynamic-VRAM mode (``aimdo_enabled``) makes its Linear/Embedding lazily skip
  parameter creation — our operations opt out, so loading still works;
* the text encoder: every layer with weights is castable (Linear, packed Linear, embedding, the
  Qwen RMSNorms), a partial load streams all of them and encodes bit for bit like a full load;
* the BaseModel convention: ``apply_model`` with x in Flux2 layout and σ returns
  ``x + σ·v`` (negated velocity, t = 1 − σ), and the memory plan read from live ComfyUI constants.

Skipped unless ``COMFYUI_PATH`` is set.
"""

from __future__ import annotations

import pytest
from comfy_harness import requires_comfyui, run_worker

pytestmark = requires_comfyui()

WORKER = r'''
import importlib.util
import comfy.memory_management
from safetensors import safe_open
from tools.make_test_checkpoints import FORMATS

feats[1, :3] = 0
sigma = torch.tensor([0.7, 0.3])

def run(patcher):
    m = patcher.model
    v = m.apply_model(x, sigma, c_crossattn=feats, text_lengths=torch.tensor([7, 4]), ideogram4_velocity=True)
    d = m.apply_model(x, sigma, c_crossattn=feats, text_lengths=torch.tensor([7, 4]))
    u = m.apply_model(x, sigma)
    return v, d, u

for fmt in FORMATS:
    path = write_file(convert(sd, fmt), Path(out_dir) / f"{fmt}.safetensors", fmt)
    p = cm.load_model_patcher(path, weight_dtype="bf16")
    with safe_open(str(path), "pt") as f:
        file_bytes = {k: f.get_slice(k).get_shape() for k in f.keys()}
    p.load(torch.device("cpu"), lowvram_model_memory=0, full_load=True)
    full = run(p)
    p.detach()
    budget = 64 * 1024
    p.load(torch.device("cpu"), lowvram_model_memory=budget)
    streamed = [n for n, mod in p.model.diffusion_model.named_modules() if getattr(mod, "comfy_cast_weights", False)]
    quant_streamed = [n for n, mod in p.model.diffusion_model.named_modules()
                      if getattr(mod, "comfy_cast_weights", False) and type(mod).__name__ == "ComfyQuantizedLinear"]
    part = run(p)
    p.detach()
    res[fmt] = {
        "size": int(p.model_size()),
        "streamed": len(streamed), "quant_streamed": len(quant_streamed),
        "equal": [bool(torch.equal(a, b)) for a, b in zip(full, part)],
        "denoised_ok": bool(torch.allclose(full[1], x + sigma.view(-1, 1, 1, 1) * full[0], atol=1e-6)),
        "quant_layers": sum(type(m).__name__ == "ComfyQuantizedLinear" for m in p.model.diffusion_model.modules()),
        "dtype": str(p.model_dtype()),
    }

# dynamic VRAM ("aimdo") makes comfy's Linear skip parameter creation unless opted out
comfy.memory_management.aimdo_enabled = True
try:
    p = cm.load_model_patcher(Path(out_dir) / "bf16.safetensors", weight_dtype="bf16")
    v = p.model.apply_model(x, sigma, ideogram4_velocity=True)
    res["aimdo"] = {"ok": bool(torch.isfinite(v).all()), "params": sum(t.numel() for t in p.model.parameters())}
finally:
    comfy.memory_management.aimdo_enabled = False

cond = cm.load_model_patcher(Path(out_dir) / "bf16.safetensors")
uncond = cm.load_model_patcher(Path(out_dir) / "fp8.safetensors")
plan = cm.plan_pair(cond, uncond, batch=1, n_img=4096, n_txt=512)
res["plan"] = {"mode": plan.mode, "summary": plan.summary(), "state": cm.memory_constants(cond.load_device).vram_state}
loaded = cm.load_pair(cond, uncond, batch=1, n_img=12, n_txt=7)
# decode temporaries per stage: the blocks' largest layer, and the text projection (which runs before the blocks)
fp8 = cm.load_model_patcher(Path(out_dir) / "fp8.safetensors", weight_dtype="bf16")
fp8_u = cm.load_model_patcher(Path(out_dir) / "fp8.safetensors", weight_dtype="bf16", image_only=True)
sizes = {n: m.in_features * m.out_features for n, m in cm.dit_of(fp8).named_modules() if hasattr(m, "in_features")}
res["decode_stages"] = {"got": list(cm.dequant_temp_bytes(cm.dit_of(fp8), "cpu")),
                        "image_only": list(cm.dequant_temp_bytes(cm.dit_of(fp8_u), "cpu")),
                        "want": [2 * max(v for n, v in sizes.items() if not n.startswith("llm_cond")),
                                 2 * sizes["llm_cond_proj"]]}
res["load_pair"] = {"mode": loaded.mode, "loaded": [l.model is cond or l.model is uncond for l in mm.current_loaded_models]}
# the text encoder: every weighted layer is castable, so a partial load streams and changes nothing
from collections import Counter
from tools.make_test_text_encoder import tiny_text_config, write_layout
te_mod = importlib.import_module("i4pack.nodes.host.comfy_text_encoder")
captions = ["a cat", '{"subject": "The red fox", "n": 2}']
res["te"] = {}
for layout in ("official_bf16", "official_fp8", "official_nf4"):
    folder = write_layout(layout, Path(out_dir) / "te", text=tiny_text_config(num_layers=36))
    p = te_mod.load_text_encoder_patcher(folder, tokenizer=None)
    enc = te_mod.encoder_of(p)
    p.load(torch.device("cpu"), lowvram_model_memory=0, full_load=True)
    full = enc.encode(captions, use_cache=False).features
    p.detach()
    p.load(torch.device("cpu"), lowvram_model_memory=1)
    streamed = Counter(type(m).__name__ for m in enc.modules() if getattr(m, "comfy_cast_weights", False))
    uncastable = [n for n, m in enc.named_modules()
                  if any(True for _ in m.parameters(recurse=False)) and not hasattr(m, "comfy_cast_weights")]
    part = enc.encode(captions, use_cache=False, compute_device="cpu").features
    p.detach()
    res["te"][layout] = {"streamed": dict(streamed), "uncastable": uncastable, "equal": bool(torch.equal(full, part))}
print("RESULT " + json.dumps(res))
'''


@pytest.fixture(scope="module")
def worker_result():
    return run_worker(WORKER)


@pytest.mark.parametrize("fmt", ["fp32", "bf16", "diffusers", "fp8", "comfy_fp8_scaled", "nf4"])
def test_partial_loading_streams_every_format_bit_exactly(worker_result, fmt):
    r = worker_result[fmt]
    assert r["streamed"] > 10, r
    if fmt in ("fp8", "comfy_fp8_scaled", "nf4"):
        assert r["quant_layers"] > 0 and r["quant_streamed"] > 0, r
    assert r["equal"] == [True, True, True], r  # velocity, denoised (cond pass), image-only pass
    assert r["denoised_ok"], r  # ComfyUI convention: denoised = x − σ·(−v)
    assert r["dtype"] == "torch.bfloat16"


def test_model_size_counts_packed_bytes(worker_result):
    sizes = {f: worker_result[f]["size"] for f in ("bf16", "fp8", "comfy_fp8_scaled", "nf4")}
    assert sizes["fp8"] < 0.6 * sizes["bf16"], sizes
    assert sizes["comfy_fp8_scaled"] < sizes["fp8"]  # per-tensor scales instead of per-row
    assert sizes["nf4"] < 0.4 * sizes["bf16"], sizes


def test_dynamic_vram_layers_still_load(worker_result):
    assert worker_result["aimdo"]["ok"] and worker_result["aimdo"]["params"] > 0


def test_decode_temporaries_are_split_by_stage(worker_result):
    d = worker_result["decode_stages"]
    assert d["got"] == d["want"] and d["want"][0] != d["want"][1], d  # bf16 copies of the fp8 weights
    assert d["image_only"] == [d["want"][0], 0], d  # the unconditional DiT has no text projection


def test_memory_plan_with_live_constants(worker_result):
    assert worker_result["plan"]["state"] == "disabled"
    assert worker_result["plan"]["mode"] == "cpu"
    assert worker_result["load_pair"]["mode"] == "cpu"
    assert worker_result["load_pair"]["loaded"].count(True) == 2  # both registered with ComfyUI


@pytest.mark.parametrize("layout", ["official_bf16", "official_fp8", "official_nf4"])
def test_text_encoder_partial_loading_streams_every_layer_bit_exactly(worker_result, layout):
    r = worker_result["te"][layout]
    assert r["uncastable"] == [], r  # nothing a partial load could leave behind in system RAM
    linear = "Linear" if layout == "official_bf16" else "ComfyQuantizedLinear"
    assert r["streamed"]["Embedding"] == 1 and r["streamed"]["ComfyTextRMSNorm"] > 0, r
    assert r["streamed"][linear] == 7 * 36, r  # every projection of the 36 kept layers
    assert r["equal"], r

