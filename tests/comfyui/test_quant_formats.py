"""ComfyUI nvfp4 / mxfp8 / int8 (convrot) / mixed, its two older fp8_scaled layouts, and GGUF files inside a real
ComfyUI (``--cpu``):

* partial loading streams the packed layers (``comfy_cast_weights``) and changes nothing, bit for bit;
* ``model_size()`` counts packed bytes;
* each comfy_quant layer decodes exactly like ComfyUI's own ``mixed_precision_ops`` Linear loaded from
  the same file (its ``QuantizedTensor`` dequantised) — the UNETLoader's path;
* the guider with ``unconditional_model=None`` (Model Loader ``unconditional: none``) runs the conditional
  pass only and refuses guidance ≠ 1.

Skipped unless ``COMFYUI_PATH`` is set.
"""

from __future__ import annotations

import pytest
from comfy_harness import requires_comfyui, run_worker

pytestmark = requires_comfyui()

WORKER = r'''
import comfy.ops
import comfy.utils
cs = importlib.import_module("i4pack.nodes.host.comfy_sampling")
settings = importlib.import_module("i4pack.nodes.host.sampler_settings")
from tools.make_test_quantized import older_comfy_layout, write_comfy, write_gguf
x = torch.randn(1, 128, gh, gw, generator=g)
feats = torch.randn(1, 7, cfg.llm_features_dim, generator=g)
sigma = torch.tensor([0.7])

def mixed(key):
    return "nvfp4" if ".attention." in key else ("fp8_scaled" if ".feed_forward." in key else None)

files = {f: write_comfy(sd, Path(out_dir) / f"{f}.safetensors", f) for f in ("nvfp4", "mxfp8", "int8_convrot")}
files["mixed"] = write_comfy(sd, Path(out_dir) / "mixed.safetensors", mixed)
files["gguf_Q4_K"] = write_gguf(sd, Path(out_dir) / "q4k.gguf", "Q4_K")
files["gguf_Q8_0"] = write_gguf(sd, Path(out_dir) / "q8.gguf", "Q8_0")

# ComfyUI's two older fp8_scaled layouts (comfy.utils.convert_old_quants still reads them), from today's file
from safetensors.torch import load_file, save_file
today = load_file(str(write_comfy(sd, Path(out_dir) / "fp8_scaled.safetensors", "fp8_scaled")))
for layout, name in (("quantization_metadata", "legacy_metadata"), ("scaled_fp8", "legacy_scaled_fp8")):
    files[name] = Path(out_dir) / f"{name}.safetensors"
    tensors, metadata = older_comfy_layout(today, layout, marker="model.diffusion_model.scaled_fp8")
    save_file(tensors, str(files[name]), metadata=metadata)
for name, path in files.items():
    p = cm.load_model_patcher(path, weight_dtype="bf16")
    p.load(torch.device("cpu"), lowvram_model_memory=0, full_load=True)
    full = p.model.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)
    p.detach()
    p.load(torch.device("cpu"), lowvram_model_memory=64 * 1024)
    streamed = [n for n, m in p.model.diffusion_model.named_modules()
                if getattr(m, "comfy_cast_weights", False) and type(m).__name__ == "ComfyQuantizedLinear"]
    part = p.model.apply_model(x, sigma, c_crossattn=feats, ideogram4_velocity=True)
    p.detach()
    entry = {"equal": bool(torch.equal(full, part)), "quant_streamed": len(streamed), "size": int(p.model_size()),
             "file": path.stat().st_size, "format": p.ideogram4_info["format"]}
    if path.suffix == ".safetensors":  # ComfyUI's own mixed-precision Linear on the same tensors, as it loads them
        raw, metadata = comfy.utils.load_torch_file(str(path), return_metadata=True)
        raw, _ = comfy.utils.convert_old_quants(raw, "model.diffusion_model.", metadata)
        ops = comfy.ops.mixed_precision_ops({}, compute_dtype=torch.bfloat16)
        same = []
        for mod_name, mod in p.model.diffusion_model.named_modules():
            if type(mod).__name__ != "ComfyQuantizedLinear":
                continue
            lin = ops.Linear(mod.in_features, mod.out_features, bias=mod.bias is not None)
            prefix = "model.diffusion_model." + mod_name + "."
            local = {k[len(prefix):]: v for k, v in raw.items() if k.startswith(prefix)}
            lin.load_state_dict(local, strict=False)
            theirs = lin.weight.dequantize() if hasattr(lin.weight, "dequantize") else lin.weight
            same.append(bool(torch.equal(mod.dequantized_weight(torch.bfloat16), theirs.to(torch.bfloat16))))
        entry["comfy_equal"] = [sum(same), len(same)]
    res[name] = entry

# unconditional: none — the guider runs the conditional pass only, guidance must be 1
cond = cm.load_model_patcher(files["gguf_Q8_0"], weight_dtype="bf16")
ones = settings.GuidanceSpec.from_inputs("custom", 1.0, 0, 1.0)
sevens = settings.GuidanceSpec.from_inputs("custom", 7.0, 0, 3.0)
guider = cs.Ideogram4Guider(cond, None, ones)
guider._values = [1.0, 1.0]
guider._sigmas, guider._sigma_index, guider._times = [0.7, 0.3, 0.0], {0.7: 0, 0.3: 1}, None
guider.features, guider.lengths = feats, [7]
guider.inner_model = cond.model  # ComfyUI sets it when sampling starts
out = guider.predict_noise(x, sigma)
v = cond.model.apply_model(x, sigma, c_crossattn=feats, text_lengths=torch.tensor([7]), ideogram4_velocity=True)
res["single_branch"] = {"equal": bool(torch.equal(out, x + 0.7 * v))}
bad = cs.Ideogram4Guider(cond, None, sevens)
try:
    bad._prepare(torch.tensor([0.7, 0.3, 0.0]))
    res["single_branch"]["error"] = None
except ValueError as exc:
    res["single_branch"]["error"] = str(exc)
plan = cm.plan_pair(cond, None, batch=1, n_img=4096, n_txt=512)
res["single_branch"]["plan"] = plan.summary()
print("RESULT " + json.dumps(res))
'''


_worker = pytest.fixture(scope="module", name="worker_result")(lambda: run_worker(WORKER))  # one ComfyUI run per module


@pytest.mark.parametrize("name", ["nvfp4", "mxfp8", "int8_convrot", "mixed", "gguf_Q4_K", "gguf_Q8_0"])
def test_partial_loading_streams_packed_layers_bit_exactly(worker_result, name):
    r = worker_result[name]
    assert r["equal"] and r["quant_streamed"] > 0
    assert r["size"] < r["file"] * 1.2  # packed bytes, not decoded ones


@pytest.mark.parametrize("name", ["nvfp4", "mxfp8", "int8_convrot", "mixed", "legacy_metadata", "legacy_scaled_fp8"])
def test_comfy_quant_layers_decode_like_comfyui_mixed_precision_ops(worker_result, name):
    same, total = worker_result[name]["comfy_equal"]
    assert total > 0 and same == total


@pytest.mark.parametrize("name,says", [
    ("legacy_metadata", "; per-layer quantisation from its _quantization_metadata ("),
    ("legacy_scaled_fp8", "; legacy ComfyUI scaled_fp8 layout (scale_weight / scale_input, "),
])
def test_older_comfyui_layouts_load_and_the_loader_says_how(worker_result, name, says):
    """Read as ComfyUI's ``convert_old_quants`` reads them (the decode test above), streamed bit-exactly, and the
    Model Loader's format line names the older layout; today's files carry no such note."""
    r = worker_result[name]
    assert r["equal"] and r["quant_streamed"] > 0
    assert r["format"].startswith("ComfyUI fp8_scaled (per-tensor scales), official key names" + says)
    assert ";" not in worker_result["mixed"]["format"]


def test_single_branch_guider(worker_result):
    r = worker_result["single_branch"]
    assert r["equal"]
    assert r["error"] and "needs guidance 1 at every step; got 7 at step 1" in r["error"]
    assert "unconditional" not in r["plan"]
