"""The pack's speed paths inside ComfyUI (CPU): attention dispatcher and overrides, the one-node
sampler through ComfyUI's model call (patches and wrappers honoured), packed layers and the LoRA'd layers of a
shared base streamed through ComfyUI's offload path (a mocked offload stream sees their buffers), core's Dual Model
CFG Guider on the pack's models.

Runs inside ComfyUI's Python in a subprocess (``--cpu``), like ``test_model_management.py``.
Skipped unless ``COMFYUI_PATH`` is set.
"""

from __future__ import annotations

import pytest
from comfy_harness import requires_comfyui, worker_result

pytestmark = requires_comfyui()

WORKER = r'''
import contextlib
import comfy.patcher_extension as pe
importlib.import_module("i4pack")
cm = importlib.import_module("i4pack.nodes.host.comfy_model")
ca = importlib.import_module("i4pack.nodes.host.comfy_attention")
cs = importlib.import_module("i4pack.nodes.host.comfy_sampling")
cond_mod = importlib.import_module("i4pack.nodes.host.conditioning")
sampling = importlib.import_module("i4pack.sampling")
from pathlib import Path
from tools.make_test_checkpoints import convert, random_state_dict, tiny_config, write_file

res = {"kernel": ca.kernel_name()}
cfg = tiny_config()
paths = {}
for fmt in ("bf16", "fp8", "nf4"):
    paths[fmt] = [write_file(convert(random_state_dict(cfg, s), fmt), Path(out_dir) / f"{fmt}{s}.safetensors", fmt)
                  for s in (0, 1)]
g = torch.Generator().manual_seed(3)
x = torch.randn(2, 128, 3, 4, generator=g)
feats = torch.randn(2, 7, cfg.llm_features_dim, generator=g)
feats[1, :3] = 0
sigma = torch.tensor([0.7, 0.3])

# 1. attention: ComfyUI's dispatcher, per-model override from transformer_options
p = cm.load_model_patcher(paths["bf16"][0], weight_dtype="bf16")
call = lambda opts: p.model.apply_model(x, sigma, c_crossattn=feats, text_lengths=torch.tensor([7, 4]),
                                        transformer_options=opts, ideogram4_velocity=True)
plain = call({})
seen = []
def override(func, q, k, v, heads, mask=None, **kw):
    seen.append((tuple(q.shape), None if mask is None else str(mask.dtype), kw.get("skip_reshape")))
    return func(q, k, v, heads, mask=mask, **kw)
hooked = call({"optimized_attention_override": override})
res["override"] = {"calls": len(seen), "first": seen[0], "equal": bool(torch.equal(plain, hooked))}
allowed = torch.tensor([[[[True, False], [True, True]]]])
res["override"]["mask_forms"] = [str(ca.attention_mask(allowed, torch.bfloat16, opts).dtype)
                                 for opts in ({}, {"optimized_attention_override": override})]
# an override that routes the call to another of ComfyUI's kernels gets a mask that kernel takes (fp32 model)
import comfy.ldm.modules.attention as comfy_attention
p32 = cm.load_model_patcher(paths["bf16"][0], weight_dtype="fp32")
call32 = lambda opts: p32.model.apply_model(x, sigma, c_crossattn=feats, text_lengths=torch.tensor([7, 4]),
                                            transformer_options=opts, ideogram4_velocity=True)
plain32 = call32({})
res["routed"] = {}
for name in ("attention_basic", "attention_sub_quad", "attention_split"):
    kernel = getattr(comfy_attention, name)
    try:
        got = call32({"optimized_attention_override": lambda func, *a, _k=kernel, **kw: _k(*a, **kw)})
        res["routed"][name] = float((got - plain32).abs().max() / plain32.abs().max())
    except Exception as exc:
        res["routed"][name] = f"{type(exc).__name__}: {exc}"
# ComfyUI's flash-attention kernel takes no mask: a masked call goes to SDPA, an unmasked one stays on flash
real_default = comfy_attention.optimized_attention
comfy_attention.optimized_attention = comfy_attention.attention_flash
try:
    res["flash"] = [ca.masked_kernel().__name__, ca.host_kernel().__name__,
                    str(ca.attention_mask(allowed, torch.bfloat16, {}).dtype)]
finally:
    comfy_attention.optimized_attention = real_default
# the sub-quadratic kernel: ComfyUI's CPU fallback runs SDPA (exact); asked for by --use-quad-cross-attention it runs
from comfy.cli_args import args as cli_args
comfy_attention.optimized_attention = comfy_attention.attention_sub_quad
try:
    res["quad"] = {"fallback": [ca.host_kernel().__name__, ca.kernel_note()]}
    cli_args.use_quad_cross_attention = True
    res["quad"]["asked"] = [ca.host_kernel().__name__, ca.kernel_note()]
finally:
    cli_args.use_quad_cross_attention = False
    comfy_attention.optimized_attention = real_default
oracle = cm.load_transformer(paths["bf16"][0], dtype=torch.bfloat16)  # plain torch, SDPA
from i4pack.model.vae import latents as lat
ref = oracle(lat.comfy_to_tokens(x), 1 - sigma, feats, grid_hw=(3, 4), text_lengths=[7, 4])
res["override"]["exact_vs_torch"] = bool(torch.equal(lat.comfy_to_tokens(plain), ref))

# 2. one-node sampler through ComfyUI's model call
settings = sampling.custom_settings(3, 0.0, 1.75, 5.0)
positive = cond_mod.make_conditioning(feats[:1, 3:], [4])
def one_node(cond, uncond):
    z, _ = cs.run_reference_sampler(cond, uncond, positive, settings, width=256, height=256, batch=1, seed=5)
    return z
pc, pu = (cm.load_model_patcher(f, weight_dtype="bf16") for f in paths["bf16"])
base = one_node(pc, pu)
oc = cm.load_transformer(paths["bf16"][0], dtype=torch.bfloat16)
ou = cm.load_transformer(paths["bf16"][1], dtype=torch.bfloat16)
z = sampling.sample(oc, ou, feats[:1, 3:], height=256, width=256, settings=settings, seed=5, text_lengths=[4])
res["one_node"] = {"exact": bool(torch.equal(lat.comfy_to_tokens(base), z))}
wrapped = pc.clone()
calls = []
def unet_wrapper(apply_model, args):
    calls.append(args["cond_or_uncond"])
    return apply_model(args["input"], args["timestep"], **args["c"]) * 0.5
wrapped.set_model_unet_function_wrapper(unet_wrapper)
res["one_node"]["wrapper_changes_output"] = not bool(torch.equal(one_node(wrapped, pu), base))
res["one_node"]["wrapper_calls"] = len(calls)
apply_calls = []
def apply_wrapper(executor, *args, **kwargs):
    apply_calls.append(1)
    return executor(*args, **kwargs)
w2 = pu.clone()
w2.add_wrapper_with_key(pe.WrappersMP.APPLY_MODEL, "test", apply_wrapper)
res["one_node"]["apply_model_wrapper_same_output"] = bool(torch.equal(one_node(pc, w2), base))
res["one_node"]["apply_model_wrapper_calls"] = len(apply_calls)
attn = []
w3 = pc.clone()
w3.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = \
    lambda func, *a, **k: (attn.append(1), func(*a, **k))[1]
one_node(w3, pu)
res["one_node"]["attention_override_calls"] = len(attn)

# 3. packed layers stream through ComfyUI's offload path (mocked stream)
class FakeStream:
    def __init__(self):
        self.waits = 0
    def as_context(self, stream):
        return contextlib.nullcontext()
    def wait_stream(self, other):
        self.waits += 1
fake = FakeStream()
seen_casts = []
real_cast_to, real_get = mm.cast_to, mm.get_offload_stream
def spy_cast_to(t, dtype=None, device=None, non_blocking=False, copy=False, stream=None, r=None):
    seen_casts.append((str(t.dtype), tuple(t.shape), stream is fake))
    return real_cast_to(t, dtype, device, non_blocking=non_blocking, copy=copy, stream=stream, r=r)
sr = importlib.import_module("i4pack.nodes.host.staging_ring")
class FakeEvent:
    recorded = 0
    def record(self, stream=None):
        FakeEvent.recorded += stream is fake
    def synchronize(self):
        pass
res["stream"] = {}
for fmt in ("fp8", "nf4"):
    p = cm.load_model_patcher(paths[fmt][0], weight_dtype="bf16")
    p.load(torch.device("cpu"), lowvram_model_memory=0, full_load=True)
    full = call.__class__  # placeholder to keep names short
    full = p.model.apply_model(x, sigma, c_crossattn=feats, text_lengths=torch.tensor([7, 4]), ideogram4_velocity=True)
    p.detach()
    p.load(torch.device("cpu"), lowvram_model_memory=1)
    seen_casts.clear(); fake.waits = 0; FakeEvent.recorded = 0
    # a pinned staging ring as on CUDA (here: plain CPU buffers, events that record which stream they were put on)
    ring = sr.StagingRing(allocate=lambda n: torch.empty(n, dtype=torch.uint8), new_event=FakeEvent, min_bytes=64)
    real_ring_for = sr.ring_for
    mm.cast_to, mm.get_offload_stream, sr.ring_for = spy_cast_to, (lambda device: fake), (lambda device: ring)
    try:
        part = p.model.apply_model(x, sigma, c_crossattn=feats, text_lengths=torch.tensor([7, 4]), ideogram4_velocity=True)
    finally:
        mm.cast_to, mm.get_offload_stream, sr.ring_for = real_cast_to, real_get, real_ring_for
    p.detach()
    res["stream"][fmt] = {"casts": seen_casts[:], "waits": fake.waits, "equal": bool(torch.equal(full, part)),
                          "staged_on_stream": FakeEvent.recorded, "ring_bytes": ring.pinned_bytes}

# 3b. a base shared with an unconditional-from-LoRA view: its role-patched plain Linears, when streamed, take the
# same offload path (stream + staging ring) instead of a blocking copy per layer
from safetensors.torch import save_file
from tools.make_test_loras import layout_state_dict, lora_factors
lora_host = importlib.import_module("i4pack.nodes.host.lora")
save_file(layout_state_dict(lora_factors(cfg, seed=41, rank=4, alpha=4.0), "ai-toolkit"),
          str(Path(out_dir) / "uncond_lora.safetensors"))
shared = cm.load_model_patcher(paths["bf16"][0], weight_dtype="bf16")
view, _ = lora_host.unconditional_from_lora(shared, Path(out_dir) / "uncond_lora.safetensors", 1.0, "u")
def view_pass(full_load):
    mm.unload_all_models()
    if full_load:
        shared.load(torch.device("cpu"), lowvram_model_memory=0, full_load=True)
    else:
        shared.load(torch.device("cpu"), lowvram_model_memory=1)
    view.load(torch.device("cpu"))
    return view.model.apply_model(x, sigma, ideogram4_velocity=True)
full = view_pass(True)
shared.detach(); view.detach()
seen_casts.clear(); fake.waits = 0; FakeEvent.recorded = 0
ring = sr.StagingRing(allocate=lambda n: torch.empty(n, dtype=torch.uint8), new_event=FakeEvent, min_bytes=64)
real_ring_for = sr.ring_for
mm.cast_to, mm.get_offload_stream, sr.ring_for = spy_cast_to, (lambda device: fake), (lambda device: ring)
try:
    part = view_pass(False)
finally:
    mm.cast_to, mm.get_offload_stream, sr.ring_for = real_cast_to, real_get, real_ring_for
dit = cm.dit_of(shared)
patched = [m for m in dit.modules() if any(k[0].startswith("view:") for k in (getattr(m, "role_patches", None) or {}))]
res["stream"]["shared"] = {"casts": seen_casts[:], "waits": fake.waits, "equal": bool(torch.equal(full, part)),
                           "staged_on_stream": FakeEvent.recorded, "view_layers": len(patched),
                           "streamed": sum(bool(m.comfy_cast_weights) for m in patched)}
shared.detach(); view.detach()
mm.unload_all_models()

# 4. core's Dual Model CFG Guider (SamplerCustomAdvanced) on the pack's models: the text features and their lengths
# arrive through extra_conds (the lengths as a host-side constant: read every step without a device sync); two
# left-padded captions; against a hand-written Euler loop over direct model calls
from comfy_extras.nodes_custom_sampler import Guider_DualModel
import comfy.samplers
pc32, pu32 = (cm.load_model_patcher(f, weight_dtype="fp32") for f in paths["bf16"])
positive2 = cond_mod.make_conditioning(feats, [7, 4])
conds = pc32.model.extra_conds(cross_attn=feats, text_lengths=[7, 4])
res["core_guider"] = {"lengths_cond": type(conds["text_lengths"]).__name__}
three = conds["text_lengths"].process_cond(batch_size=3)  # batched as ComfyUI batches the features: tiled, cut,
res["core_guider"]["batched"] = list(three.concat([three]))  # joined — rows (a, b, a) twice
guider = Guider_DualModel(pc32, pu32)
guider.set_conds(positive2, [[None, {}]])
guider.set_cfg(5.0)
sig = torch.tensor([0.9, 0.6, 0.3])
noise = torch.randn(2, 128, 16, 16, generator=torch.Generator().manual_seed(11))
z_core = guider.sample(noise, torch.zeros_like(noise), comfy.samplers.ksampler("euler"), sig, seed=1, disable_pbar=True)
z = sig[0] * noise  # ComfyUI's CONST noise scaling of an empty latent
mm.load_models_gpu([pc32, pu32])
for s0, s1 in zip(sig[:-1], sig[1:]):
    sb = s0.expand(2)
    vc = pc32.model.apply_model(z, sb, c_crossattn=feats, text_lengths=[7, 4], ideogram4_velocity=True)
    vu = pu32.model.apply_model(z, sb, ideogram4_velocity=True)
    z = z + (s1 - s0) * -(vu + 5.0 * (vc - vu))  # d = (x − x0)/σ = −v_cfg
z = z / (1.0 - sig[-1])  # CONST inverse noise scaling
res["core_guider"]["rel"] = float((z_core - z).abs().max() / z.abs().max())

# 5. the Ideogram4 Guider under our sampler never reads σ back from the device (a meta tensor cannot be read)
from i4pack.nodes.host.sampler_settings import GuidanceSpec
hinted = cs.Ideogram4Guider(pc, pu, GuidanceSpec.from_inputs("custom", 5.0, 0, 1.0))
hinted._prepare(cs.make_sigmas(settings, 256, 256))
hinted.step_hint = 2
k, t_val = hinted._step(torch.empty(1, device="meta"))
res["step_hint"] = {"k": k, "t_exact": t_val == hinted.step_times(2)[0], "consumed": hinted.step_hint is None}
print("RESULT " + json.dumps(res))
'''


result = worker_result(WORKER)


def test_attention_goes_through_comfyui_dispatcher_and_overrides(result):
    assert result["kernel"] == "pytorch"  # the CPU default sub-quadratic kernel is replaced by SDPA (exact)
    r = result["override"]
    assert r["calls"] == 2  # one per block of the 2-layer model
    # (B, H, L, D); with an override the mask is additive (it may route elsewhere), without it bool for SDPA
    assert r["first"] == [[2, 2, 19, 256], "torch.bfloat16", True]
    assert r["mask_forms"] == ["torch.bool", "torch.bfloat16"]
    assert r["equal"] and r["exact_vs_torch"]


@pytest.mark.parametrize("kernel", ["attention_basic", "attention_sub_quad", "attention_split"])
def test_an_override_routing_to_another_kernel_gets_a_mask_it_takes(result, kernel):
    """A padded batch (captions of 7 and 4 tokens): a bool mask would crash attention_basic and be added as 0/1
    by the others; the additive mask gives SDPA's result (fp32)."""
    assert result["routed"][kernel] <= 1e-5, result["routed"]


def test_flash_attention_host_sends_masked_calls_to_sdpa(result):
    assert result["flash"] == ["attention_pytorch", "attention_flash", "torch.bool"]


def test_the_sub_quadratic_kernel_runs_when_asked_for_and_the_node_says_which_ran(result):
    q = result["quad"]
    assert q["fallback"] == ["attention_pytorch", "attention: pytorch (SDPA, the reference's kernel)"]
    assert q["asked"][0] == "attention_sub_quad" and "not the reference's SDPA" in q["asked"][1]


def test_one_node_sampler_is_exact_and_honours_model_patches(result):
    r = result["one_node"]
    assert r["exact"]  # through ComfyUI's model call, bit-identical to sampling.sample
    assert r["wrapper_changes_output"] and r["wrapper_calls"] == 3  # set_model_unet_function_wrapper
    assert r["apply_model_wrapper_same_output"] and r["apply_model_wrapper_calls"] == 3  # e.g. TorchCompileModel
    assert r["attention_override_calls"] == 3 * 2


@pytest.mark.parametrize("fmt", ["fp8", "nf4"])
def test_packed_layers_take_the_offload_stream(result, fmt):
    r = result["stream"][fmt]
    packed = "torch.float8_e4m3fn" if fmt == "fp8" else "torch.uint8"
    scale = "torch.float32"
    on_stream = [c for c in r["casts"] if c[2]]
    assert any(c[0] == packed for c in on_stream), r["casts"][:8]  # packed storage on the offload stream
    assert any(c[0] == scale for c in on_stream)  # its scales / absmax too
    assert all(c[2] for c in r["casts"] if c[0] in (packed, scale))
    assert r["waits"] > 0  # the stream waits for the compute before its buffers are reused
    assert r["equal"]
    assert r["staged_on_stream"] > 0 and 0 < r["ring_bytes"], r  # packed buffers went through the pinned ring


def test_streamed_layers_of_a_shared_base_take_the_offload_stream(result):
    r = result["stream"]["shared"]
    assert r["view_layers"] > 0 and r["streamed"] == r["view_layers"], r  # every LoRA'd layer streamed
    weights = [c for c in r["casts"] if c[0] == "torch.bfloat16" and c[2]]
    assert len(weights) >= r["view_layers"], r["casts"][:8]  # each one's weight uploaded on the offload stream
    assert r["waits"] >= r["view_layers"] and r["staged_on_stream"] > 0, r  # through the ring, buffers released
    assert r["equal"], r  # streamed == resident, bit for bit


def test_core_dual_model_guider_runs_the_pack_models(result):
    r = result["core_guider"]
    assert r["lengths_cond"] == "TextLengthsCond", r  # no device tensor to read back every step
    assert r["batched"] == [7, 4, 7, 7, 4, 7], r  # follows the feature rows of repeat_to_batch_size + cat
    assert r["rel"] <= 1e-5, r  # ComfyUI's denoised-space CFG and Euler vs the velocity-space loop, fp32


def test_guider_takes_the_step_from_the_sampler(result):
    assert result["step_hint"] == {"k": 2, "t_exact": True, "consumed": True}, result["step_hint"]
