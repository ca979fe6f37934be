"""``vae_encoder_golden.safetensors``: the reference VAE encoder and image tokens (tests/test_vae_encoder.py).

1. ``tools.make_test_vae.write_vae(..., "diffusers", cfg=tiny_vae_config(), seed=0, with_encoder=True)``, loaded
   strictly into REF ``AutoEncoder`` (the tiny params of :func:`.vae.tiny_autoencoder_params`) through REF
   ``convert_diffusers_state_dict`` (every tensor equal to the BFL naming).
2. ``images = rand(2, 3, 64, 80) * 2 - 1`` (CPU generator, seed 4321).
3. For fp32 then bf16 (``ae.encoder.to(dtype)``): ``moments = encoder(images.to(dtype))`` (stored float32),
   ``tokens`` = REF ``train_edit.encode_image_tokens``, checked equal to ``(patchify_latent(mean, 2) - shift) / scale``
   with REF ``get_latent_norm()``; ``encoder_weight_fingerprint``: per-tensor sums.

Needs the reference's ``train_edit.py`` (9c167a2 has it, 415abf4 does not).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch

from .common import reference_module
from .vae import tiny_autoencoder_params

FILENAME = "vae_encoder_golden.safetensors"
SOURCE = "RyukoMatoiFan/ideogram4 autoencoder.Encoder + train_edit.patchify_latent"


def record() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors.torch import load_file

    TE = reference_module("train_edit", "the VAE-encoder golden")
    A = reference_module("autoencoder", "the VAE-encoder golden")
    get_latent_norm = reference_module("latent_norm", "the VAE-encoder golden").get_latent_norm
    from tools.make_test_vae import random_vae_state_dict, tiny_vae_config, write_vae

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        path = write_vae(Path(tmp) / "diffusers.safetensors", "diffusers", cfg=tiny_vae_config(), seed=0,
                         with_encoder=True)
        sd = A.convert_diffusers_state_dict(load_file(str(path)))
        bfl = random_vae_state_dict(tiny_vae_config(), 0, with_encoder=True)
        assert sd.keys() == bfl.keys() and all(torch.equal(sd[k], bfl[k]) for k in sd), "not the BFL naming"
        ae = A.AutoEncoder(tiny_autoencoder_params(A))
        ae.load_state_dict(sd)  # strict
        ae.eval()

        esd = ae.encoder.state_dict()
        fp = torch.stack([esd[k[len("encoder."):]].double().sum() for k in sorted(bfl) if k.startswith("encoder.")])
        fp_tool = torch.stack([bfl[k].double().sum() for k in sorted(bfl) if k.startswith("encoder.")])
        assert torch.equal(fp, fp_tool)

        images = torch.rand(2, 3, 64, 80, generator=torch.Generator().manual_seed(4321)) * 2 - 1
        shift, scale = get_latent_norm()
        out: dict[str, torch.Tensor] = {"images": images, "encoder_weight_fingerprint": fp.float()}
        for dt, tag in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
            ae.encoder.to(dt)
            moments = ae.encoder(images.to(dt))
            stand_in = SimpleNamespace(autoencoder=ae, dtype=dt, latent_shift=shift, latent_scale=scale,
                                       device=torch.device("cpu"))
            tokens = TE.encode_image_tokens(stand_in, images, patch_size=2)
            mean = moments[:, : moments.shape[1] // 2]
            manual = (TE.patchify_latent(mean, 2).to(torch.float32) - shift) / scale
            assert torch.equal(tokens, manual) and tokens.dtype == torch.float32
            out[f"moments_{tag}"] = moments.float()
            out[f"tokens_{tag}"] = tokens
    return out, {"source": SOURCE}
