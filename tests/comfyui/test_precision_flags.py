"""ComfyUI's precision flags reach the pack's loaders: ``auto`` follows ``--force-fp32`` / ``--fp32-vae`` /
``--bf16-text-enc``; a flag the pack does not compute in (``--fp16-unet``, ``--fp8_e4m3fn-unet``) or one a dtype widget
overrides is said on the node — never dropped silently; ``--cache-none`` also turns off the pack's encoding cache.  In-process ComfyUI 0.33 (``--cpu``), tiny models.

Skipped unless ``COMFYUI_PATH`` is set.
"""

from __future__ import annotations

from comfy_harness import requires_comfyui, worker_result

pytestmark = requires_comfyui()

WORKER = r'''
import comfy.cli_args
from tools.make_test_vae import write_vae
args = comfy.cli_args.args
loaders = importlib.import_module("i4pack.nodes.loader_nodes")
cv = importlib.import_module("i4pack.nodes.host.comfy_vae")
out = Path(out_dir)
dit = write_file(convert(sd, "bf16"), out / "dit.safetensors", "bf16")
vae = write_vae(out / "vae.safetensors", "bfl")

def dit_case(flag, choice="auto"):
    for name in ("force_fp32", "fp16_unet", "fp8_e4m3fn_unet"):
        setattr(args, name, name == flag)
    p = cm.load_model_patcher(dit, weight_dtype=choice)
    return {"dtype": str(next(p.model.diffusion_model.parameters()).dtype), "note": p.ideogram4_info["dtype_note"],
            "text": loaders.Ideogram4NativeModelLoader._conditional_only("dit.safetensors", dit, "transformer",
                                                                         choice).ui["text"][0]}

res["none"] = dit_case(None)
res["force_fp32"] = dit_case("force_fp32")
res["force_fp32_bf16_widget"] = dit_case("force_fp32", "bf16")
res["fp16"] = dit_case("fp16_unet")
res["fp8"] = dit_case("fp8_e4m3fn_unet")
dtype_flags = importlib.import_module("i4pack.nodes.host.dtype_flags")
args.force_fp32 = False
args.bf16_unet = True
res["bf16_flag_bf16_widget"] = dit_case(None, "bf16")["note"]  # the widget asks what the flag asks: no override
args.bf16_unet = False
args.fp32_text_enc = True
res["te"] = [str(cm.resolve_dtype("auto", torch.device("cpu"), kind="text_enc")), dtype_flags.flag_note("text_enc", "auto")]
args.fp32_text_enc = False
args.force_fp16 = True
res["force_fp16"] = [dtype_flags.flag_note(k, "auto") for k in ("unet", "vae", "text_enc")]
args.force_fp16 = False
args.fp32_vae = True
p = cv.load_vae_patcher(vae, "auto")
res["vae"] = {"dtype": p.ideogram4_info["dtype"], "note": p.ideogram4_info["dtype_note"]}
te = importlib.import_module("i4pack.nodes.host.comfy_text_encoder")
from i4pack.model.text_encoder import cache_info
res["cache_before"] = cache_info()["max_entries"]
args.cache_none = True
te.follow_cache_flag.cache_clear()
res["cache_none"] = [te.follow_cache_flag(), cache_info()["max_entries"]]
print("RESULT " + json.dumps(res))
'''

result = worker_result(WORKER)


def test_auto_follows_the_flags_the_pack_computes_in(result):
    assert result["none"] == {**result["none"], "dtype": "torch.bfloat16", "note": None}
    assert result["force_fp32"]["dtype"] == "torch.float32"
    assert result["force_fp32"]["note"] == "compute float32 from ComfyUI flag --force-fp32 (the reference computes in bf16)"
    assert result["force_fp32"]["note"] in result["force_fp32"]["text"]
    assert result["vae"] == {"dtype": "float32", "note": "compute float32 from ComfyUI flag --fp32-vae (the reference "
                                                        "computes in bf16)"}


def test_flags_not_followed_are_said(result):
    assert result["force_fp32_bf16_widget"]["dtype"] == "torch.bfloat16"
    assert "flag --force-fp32 (float32) not used for the DiT: the node's dtype widget is 'bf16'" in \
        result["force_fp32_bf16_widget"]["note"]
    for case, flag in (("fp16", "--fp16-unet"), ("fp8", "--fp8_e4m3fn-unet")):
        r = result[case]
        assert r["dtype"] == "torch.bfloat16", r
        assert f"ComfyUI flag {flag} is not used for the DiT" in r["note"] and r["note"] in r["text"], r


def test_cache_none_turns_off_the_encoding_cache(result):
    assert result["cache_before"] > 0
    assert result["cache_none"] == [True, 0]


def test_text_encoder_flags_force_fp16_and_matching_widgets(result):
    assert result["te"] == ["torch.float32", "compute float32 from ComfyUI flag --fp32-text-enc (the reference "
                                             "computes in bf16)"]
    assert result["bf16_flag_bf16_widget"] is None
    unet, vae, te = result["force_fp16"]
    assert unet.startswith("ComfyUI flag --force-fp16 is not used for the DiT")
    assert vae.startswith("ComfyUI flag --force-fp16 is not used for the VAE")
    assert te.startswith("ComfyUI flag --force-fp16 is not used for the text encoder")
