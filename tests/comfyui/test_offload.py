"""Offload goes home: after ComfyUI's own load → offload cycle, every weight that came from a file is a view
of the file mapping again — no private CPU copy (``nodes/host/offload.py``).

Runs ComfyUI's real ``ModelPatcher.patch_model`` (full load) / ``load(lowvram_model_memory=…)`` (partial load)
and ``unpatch_model(offload_device)`` / ``partially_unload`` inside ComfyUI's Python (``--cpu``).  A CPU has
no device copy to observe, so the upload is simulated: while ComfyUI loads, ``Module.to`` gives every
parameter and buffer a private clone — exactly what an upload to a GPU leaves behind (the CPU tensor is
no longer the one in use).  On the way back, ComfyUI's plain ``ModelPatcher`` keeps those private copies
(the control: the test can fail); ``HomePatcher`` must leave none.  ``/proc/self/maps`` says which bytes
are file-backed.

Models: the tiny DiT in bf16, fp8 and nf4 (``tools/make_test_checkpoints``), each also with a LoRA-style
weight patch (``add_patches``: merged into bf16 weights, applied at run time on packed layers), the tiny text encoder (official bf16 / fp8 /
nf4 layouts) and the tiny VAE.

Skipped unless ``COMFYUI_PATH`` is set (Linux only: ``/proc/self/maps``).
"""

from __future__ import annotations

import sys

import pytest
from comfy_harness import UPLOADS_COPY, requires_comfyui, worker_result

pytestmark = [*requires_comfyui(), pytest.mark.skipif(not sys.platform.startswith("linux"),
                                                      reason="file-backed memory is read from /proc/self/maps")]

WORKER = UPLOADS_COPY + r'''
import comfy.model_patcher
te_mod = importlib.import_module("i4pack.nodes.host.comfy_text_encoder")
vae_mod = importlib.import_module("i4pack.nodes.host.comfy_vae")
off = importlib.import_module("i4pack.nodes.host.offload")
from tools.make_test_checkpoints import convert, random_state_dict, tiny_config, write_file
from tools.make_test_text_encoder import tiny_text_config, write_layout
from tools.make_test_vae import write_vae

def file_backed_keys(model):
    maps = off.FileMappings.read()
    return {k for _, _, k, t in off._tensors(model) if off.storage_file(t, maps)}

def cycle(patcher, *, partial=False, patches=None):
    """ComfyUI load → offload; returns figures before/after."""
    model = patcher.model
    before = off.host_memory(model)
    home_keys = file_backed_keys(model)
    if patches:
        patcher.add_patches(patches, 1.0)
    with uploads_copy():
        patcher.patch_model(device_to=torch.device("cpu"))
    loaded = off.host_memory(model)
    extra = {}
    if partial:  # ComfyUI frees half the model module by module (lowvram), then offloads the rest
        freed = patcher.partially_unload(patcher.offload_device, memory_to_free=patcher.model_size() // 2)
        half = off.host_memory(model)
        extra = {"freed": int(freed), "half_file_backed": half.file_backed}
    patcher.unpatch_model(patcher.offload_device)
    after = off.host_memory(model)
    lost = sorted(home_keys - file_backed_keys(model))
    return {"before": before.__dict__, "loaded": loaded.__dict__, "after": after.__dict__, "lost": lost[:5],
            "n_lost": len(lost), "n_home": len(home_keys), "homes": len(off.homes_of(model)), **extra}

res = {}
cfg = tiny_config()
sd = random_state_dict(cfg, 0)
key = "diffusion_model.layers.0.attention.qkv.weight"
for fmt in ("bf16", "fp8", "nf4"):
    path = write_file(convert(sd, fmt), Path(out_dir) / f"{fmt}.safetensors", fmt)
    # a LoRA-style weight patch on every format: merged into the bf16 weight (ComfyUI's backup restores it), on
    # packed fp8 / nf4 layers applied to the decoded weight when the layer runs (the packed bytes are never written)
    lora = {key: (0.01 * torch.randn(3 * cfg.emb_dim, cfg.emb_dim, generator=torch.Generator().manual_seed(1)),)}
    cases = [("full", False, None), ("partial", True, None), ("full_lora", False, lora), ("partial_lora", True, lora)]
    for name, partial, patches in cases:
        p = cm.load_model_patcher(path, weight_dtype="bf16")
        r = cycle(p, partial=partial, patches=patches)
        if patches:
            w = p.model.diffusion_model.layers[0].attention.qkv.weight
            with __import__("safetensors").safe_open(str(path), "pt") as f:
                stored = f.get_tensor(key.replace("diffusion_model.", ""))
            r["patch_undone"] = bool(torch.equal(w.view(torch.uint8), stored.view(torch.uint8)))
        res[f"dit_{fmt}_{name}"] = r
    # the control: ComfyUI's plain ModelPatcher on the same model keeps private copies
    p = cm.load_model_patcher(path, weight_dtype="bf16")
    plain = comfy.model_patcher.ModelPatcher(p.model, load_device=p.load_device, offload_device=p.offload_device)
    res[f"dit_{fmt}_plain"] = cycle(plain)

for layout in ("official_bf16", "official_fp8", "official_nf4"):
    folder = write_layout(layout, Path(out_dir) / "te", text=tiny_text_config(num_layers=36))
    for name, partial in (("full", False), ("partial", True)):
        p = te_mod.load_text_encoder_patcher(folder, tokenizer=None)
        res[f"te_{layout}_{name}"] = cycle(p, partial=partial)

vae_path = write_vae(Path(out_dir) / "vae.safetensors", dtype=torch.bfloat16)  # the file dtype = compute dtype
for name, partial in (("full", False), ("partial", True)):
    p = vae_mod.load_vae_patcher(vae_path)
    res[f"vae_{name}"] = cycle(p, partial=partial)

# pinned staging is bounded (a CPU build cannot pin: the budget arithmetic is what is checked)
p = cm.load_model_patcher(Path(out_dir) / "bf16.safetensors", weight_dtype="bf16")
sizes = sorted((sum(t.numel() * t.element_size() for t in m.parameters(recurse=False)) for m in p.model.modules()),
               reverse=True)
res["pin"] = {"budget": p.pin_budget(), "largest4": sum(sizes[:4]), "model": int(p.model_size())}
print("RESULT " + json.dumps(res))
'''


result = worker_result(WORKER)


CASES = ([f"dit_{f}_{c}" for f in ("bf16", "fp8", "nf4") for c in ("full", "partial")]
         + [f"dit_{f}_{c}_lora" for f in ("bf16", "fp8", "nf4") for c in ("full", "partial")]
         + [f"te_official_{f}_{c}" for f in ("bf16", "fp8", "nf4") for c in ("full", "partial")]
         + ["vae_full", "vae_partial"])


@pytest.mark.parametrize("case", CASES)
def test_offload_returns_every_file_weight_to_the_mapping(result, case):
    r = result[case]
    assert r["n_home"] > 0 and r["homes"] == r["n_home"], r  # the loaders leave the weights file-backed
    assert r["before"]["file_backed"] > 0
    assert r["loaded"]["private"] >= r["before"]["file_backed"], r  # the simulated upload did copy
    assert r["n_lost"] == 0, r
    assert r["after"]["file_backed"] == r["before"]["file_backed"], r
    assert r["after"]["private"] == r["before"]["private"], r  # no new private bytes (computed buffers only)
    assert r["after"]["on_device"] == 0
    if "freed" in r:  # partially_unload: what it freed went home, not to private copies
        assert r["freed"] > 0 and r["half_file_backed"] >= r["freed"] - r["before"]["private"], r


@pytest.mark.parametrize("case", [f"dit_{f}_{c}_lora" for f in ("bf16", "fp8", "nf4") for c in ("full", "partial")])
def test_patched_weight_is_restored_to_the_file_weight(result, case):
    assert result[case]["patch_undone"], result[case]


@pytest.mark.parametrize("fmt", ["bf16", "fp8", "nf4"])
def test_plain_comfy_patcher_keeps_private_copies(result, fmt):
    """The control: ComfyUI's own ModelPatcher offloads into private copies — what HomePatcher removes."""
    r = result[f"dit_{fmt}_plain"]
    assert r["n_lost"] == r["n_home"] > 0, r
    assert r["after"]["private"] >= r["before"]["file_backed"] + r["before"]["private"], r


def test_pinned_staging_is_bounded(result):
    r = result["pin"]
    assert r["budget"] == r["largest4"] < r["model"], r
