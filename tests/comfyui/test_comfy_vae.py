"""Core ComfyUI's ``comfy.sd.VAE`` vs the reference decode, through ``model.latents.ref_to_bn_space``.

Question answered (spec §4.3): does ``comfy.sd.VAE(sd=...)`` load a FLUX.2 VAE in BFL naming
(``flux2-vae.safetensors``) and in the official diffusers naming, and does ``VAE.decode`` of our
BN-space conversion of a reference-space latent reproduce the reference pixels?

Uses the tiny seeded VAE of ``tools/make_test_vae.py`` (no encoder: ComfyUI sizes the encoder with
ch 128) and the reference outputs in ``tests/data/vae_golden.safetensors`` (see ``tests/test_vae.py``
for the recipe).  The ComfyUI side runs in a subprocess (``$COMFYUI_PYTHON``, default: this
interpreter) with ``$COMFYUI_PATH`` and the repo on ``sys.path``, ComfyUI in ``--cpu`` mode.

Skipped unless ``COMFYUI_PATH`` is set.  Run directly for the numbers:

    COMFYUI_PATH=/opt/ComfyUI /opt/cvenv/bin/python tests/comfyui/test_comfy_vae.py

Measured (ComfyUI 0.33.0, torch 2.9.1 CPU): both namings load as ``AutoencoderKL`` with
``batch_norm_latent`` (128 latent channels, ×16); fp32 decode == reference fp32 to 1.5e-6 (IMAGE
units), uint8 with REF rounding identical except ≤ 1 value at a rounding boundary; bf16 decode differs
from the reference bf16 by up to 7 LSB because ComfyUI's ResnetBlock uses ``SiLU`` instead of
``x·sigmoid(x)`` and its CPU VAE attention is ``normal_attention`` (patching both gives bit-exact
output).  Core ``VAEDecode`` on the unconverted REF-space latent is visibly wrong (per-channel affine).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

try:
    import pytest
except ImportError:  # the worker runs in ComfyUI's interpreter, which may not have pytest
    pytest = None

REPO = Path(__file__).resolve().parents[2]
COMFYUI_PATH = os.environ.get("COMFYUI_PATH", "")
COMFYUI_PYTHON = os.environ.get("COMFYUI_PYTHON", sys.executable)

if pytest is not None:
    pytestmark = [
        pytest.mark.comfyui,
        pytest.mark.skipif(not COMFYUI_PATH or not Path(COMFYUI_PATH, "comfy", "sd.py").is_file(),
                           reason="COMFYUI_PATH (a ComfyUI checkout) not set"),
    ]


def _worker(out_dir: str) -> dict:
    """Runs inside ComfyUI's Python. Returns the measurements as a dict."""
    sys.path.insert(0, COMFYUI_PATH)
    sys.path.insert(0, str(REPO))
    import comfy.options

    comfy.options.enable_args_parsing()
    sys.argv = [sys.argv[0], "--cpu"]
    import torch
    import comfy.sd
    from safetensors.torch import load_file

    from model.vae.latents import ref_to_bn_space, tokens_to_comfy
    from model.vae import load_vae
    from tools.make_test_vae import write_vae

    torch.set_num_threads(2)
    gold = load_file(str(REPO / "tests" / "data" / "vae_golden.safetensors"))
    tokens, gh, gw = gold["tokens"], 3, 5
    latent_ref = tokens_to_comfy(tokens, gh, gw)  # what a LATENT from the pack's sampler holds

    def u8(image):  # REF rounding applied to a ComfyUI IMAGE in [0, 1]
        return (image.float() * 255).round().to(torch.uint8).int()

    def ref_image(name):
        return gold[f"decoded_{name}"].float().clamp(-1, 1).add(1).div(2).permute(0, 2, 3, 1)

    res: dict = {"torch": torch.__version__}
    for naming in ("bfl", "diffusers"):
        path = write_vae(Path(out_dir) / f"{naming}.safetensors", naming, with_encoder=False)
        sd = load_file(str(path))
        z_bn = ref_to_bn_space(latent_ref, sd["bn.running_mean"], sd["bn.running_var"])
        for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            vae = comfy.sd.VAE(sd=dict(sd), dtype=dtype)
            image = vae.decode(z_bn).float()  # (B, H, W, 3) in [0, 1]
            ours = load_vae(path, dtype=dtype).decode_tokens(tokens, gh, gw).clamp(-1, 1).add(1).div(2).permute(0, 2, 3, 1)
            d_ref = (u8(image) - gold[f"uint8_{name}"].int()).abs()
            trunc = ((image * 255).to(torch.uint8).int() - gold[f"uint8_{name}"].int()).abs()
            res[f"{naming}_{name}"] = {
                "model": type(vae.first_stage_model).__name__,
                "latent_channels": vae.latent_channels,
                "upscale_ratio": vae.upscale_ratio,
                "has_bn": vae.first_stage_model.bn is not None,
                "shape": list(image.shape),
                "max_abs_vs_ref_float": float((image - ref_image(name)).abs().max()),
                "max_lsb_vs_ref_rounded": int(d_ref.max()),
                "n_diff_vs_ref_rounded": int((d_ref > 0).sum()),
                "max_lsb_vs_ref_truncated": int(trunc.max()),
                "n_diff_vs_ref_truncated": int((trunc > 0).sum()),
                "max_abs_vs_ours_float": float((image - ours).abs().max()),
                "n_values": int(d_ref.numel()),
            }
            if name == "fp32":
                wrong = vae.decode(latent_ref).float()  # core VAEDecode on the unconverted REF-space latent
                res[f"{naming}_{name}"]["unconverted_mean_abs_vs_ref"] = float((wrong - ref_image(name)).abs().mean())
    return res


def _run_worker(tmp: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([COMFYUI_PYTHON, str(Path(__file__).resolve()), "--worker", str(tmp)],
                          capture_output=True, text=True, env=env, cwd=str(REPO), timeout=600)
    if proc.returncode != 0:
        raise AssertionError(f"ComfyUI worker failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_comfy_vae_loads_both_namings_and_reproduces_reference(tmp_path):
    res = _run_worker(tmp_path)
    for naming in ("bfl", "diffusers"):
        for name in ("fp32", "bf16"):
            r = res[f"{naming}_{name}"]
            assert r["model"] == "AutoencoderKL" and r["has_bn"], r
            assert r["latent_channels"] == 128 and r["upscale_ratio"] == 16, r
            assert r["shape"] == [2, 48, 80, 3], r
        f32, b16 = res[f"{naming}_fp32"], res[f"{naming}_bf16"]
        # fp32: the BN-space conversion round-trips to the reference raw latent; decoder numerics agree.
        assert f32["max_abs_vs_ref_float"] < 1e-4, f32
        assert f32["max_lsb_vs_ref_rounded"] <= 1 and f32["n_diff_vs_ref_rounded"] <= 0.001 * f32["n_values"], f32
        assert f32["max_abs_vs_ours_float"] < 1e-4, f32
        # SaveImage truncates: never above REF, at most 1 LSB below.
        assert f32["max_lsb_vs_ref_truncated"] <= 1, f32
        # bf16: ComfyUI's SiLU / CPU attention differ from REF's x·sigmoid(x) / SDPA in the last bits.
        assert b16["max_abs_vs_ours_float"] < 0.06, b16
        assert b16["max_lsb_vs_ref_rounded"] <= 16, b16
        # Without the conversion, core VAEDecode is off by the per-channel affine.
        assert f32["unconverted_mean_abs_vs_ref"] > 0.02, f32


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "--worker":
        result = _worker(sys.argv[2])
        print(json.dumps(result))
    else:
        import tempfile

        if not COMFYUI_PATH:
            sys.exit("set COMFYUI_PATH")
        with tempfile.TemporaryDirectory() as d:
            print(json.dumps(_worker(d), indent=1))
