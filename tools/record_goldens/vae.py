"""``vae_golden.safetensors``: the reference VAE decoder and ``Ideogram4Pipeline._decode`` (tests/test_vae.py).

1. ``tools.make_test_vae.write_vae(..., naming, cfg=tiny_vae_config(), seed=0, with_encoder=True)``, both namings.
2. REF ``AutoEncoder(AutoEncoderParams(ch=32, ch_mult=[1,2,4,4], num_res_blocks=2, z_channels=32))`` loaded
   strictly through REF ``_load_autoencoder`` (``convert_diffusers_state_dict(load_file(diffusers file))``) and,
   separately, strictly from the BFL file; both state dicts must be equal.
3. ``tokens = randn(2, 15, 128)`` (CPU generator, seed 1234), grid 3x5; ``z_raw`` = the input REF ``_decode``
   hands the decoder (fp32); ``decoded_<dt> = ae.decoder(z_raw.to(dt)).float()`` with ``ae.to(dt)``;
   ``uint8_<dt>`` = the images of the real ``Ideogram4Pipeline._decode`` called with a stand-in ``self``;
   ``weight_fingerprint``: per-tensor sums of the decoder weights.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from .common import patched, reference_module

FILENAME = "vae_golden.safetensors"
GH, GW = 3, 5
RECIPE = ("tools.make_test_vae tiny_vae_config(), seed 0; tokens randn(2,15,128) Generator seed 1234; grid 3x5; "
          "REF AutoEncoder + convert_diffusers_state_dict + Ideogram4Pipeline._decode")


def tiny_autoencoder_params(autoencoder_mod):
    """REF ``AutoEncoderParams`` of ``tools.make_test_vae.tiny_vae_config()``."""
    return autoencoder_mod.AutoEncoderParams(ch=32, ch_mult=[1, 2, 4, 4], num_res_blocks=2, z_channels=32)


def record() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import numpy as np
    from safetensors.torch import load_file

    P = reference_module("pipeline_ideogram4", "the VAE golden")
    A = reference_module("autoencoder", "the VAE golden")
    get_latent_norm = reference_module("latent_norm", "the VAE golden").get_latent_norm
    from tools.make_test_vae import random_vae_state_dict, tiny_vae_config, write_vae

    cpu = torch.device("cpu")
    # REF _load_autoencoder builds AutoEncoderParams(): the tiny size instead
    with patched(P, AutoEncoderParams=lambda: tiny_autoencoder_params(A)), \
            tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        files = {n: write_vae(Path(tmp) / f"{n}.safetensors", n, cfg=tiny_vae_config(), seed=0, with_encoder=True)
                 for n in ("bfl", "diffusers")}
        aes = {dt: P._load_autoencoder(str(files["diffusers"]), cpu, dt) for dt in (torch.float32, torch.bfloat16)}
        ae_bfl = A.AutoEncoder(tiny_autoencoder_params(A))
        ae_bfl.load_state_dict(load_file(str(files["bfl"])))  # strict
        a, b = aes[torch.float32].state_dict(), ae_bfl.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "BFL vs diffusers load differ"

        shift, scale = get_latent_norm()
        tokens = torch.randn(2, GH * GW, 128, generator=torch.Generator().manual_seed(1234))

        out: dict[str, torch.Tensor] = {"tokens": tokens}
        for dt, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            ae = aes[dt]
            seen = []
            hook = ae.decoder.register_forward_pre_hook(lambda m, inp: seen.append(inp[0].clone()))
            stand_in = SimpleNamespace(config=P.Ideogram4PipelineConfig(), latent_shift=shift.to(cpu),
                                       latent_scale=scale.to(cpu), dtype=dt, autoencoder=ae, device=cpu)
            images = P.Ideogram4Pipeline._decode(stand_in, tokens.clone(), grid_h=GH, grid_w=GW)
            hook.remove()
            assert len(seen) == 1 and seen[0].dtype == dt
            if dt == torch.float32:
                out["z_raw"] = seen[0]
            z_raw = out["z_raw"]
            assert torch.equal(seen[0], z_raw.to(dt))
            decoded = ae.decoder(z_raw.to(dt)).float()
            out[f"decoded_{tag}"] = decoded if dt == torch.float32 else decoded.to(torch.bfloat16)
            assert torch.equal(out[f"decoded_{tag}"].float(), decoded)  # bf16 output stored losslessly
            out[f"uint8_{tag}"] = torch.from_numpy(np.stack([np.asarray(im) for im in images]))

        sd_ref = aes[torch.float32].state_dict()
        fp = torch.stack([sd_ref[k].double().sum() for k in sorted(sd_ref) if k.startswith("decoder.")]).float()
        sd_tool = random_vae_state_dict(tiny_vae_config(), 0)
        fp_tool = torch.stack([sd_tool[k].double().sum() for k in sorted(sd_tool) if k.startswith("decoder.")]).float()
        assert torch.equal(fp, fp_tool)
        out["weight_fingerprint"] = fp
    return out, {"recipe": RECIPE}
