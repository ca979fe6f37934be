"""FLUX.2 VAE encoder: parity with the reference ``Encoder`` (golden) and with diffusers, loading, normalisation.

Golden data (``tests/data/vae_encoder_golden.safetensors``, 240 KB) — made once outside the repo with
the reference fork (github:RyukoMatoiFan/ideogram4 @ HEAD; ``src/ideogram4/autoencoder.py`` and
``train_edit.patchify_latent`` run from a scratch copy, never imported here):

1. ``tools.make_test_vae.write_vae(..., "diffusers", cfg=tiny_vae_config(), seed=0, with_encoder=True)``,
   loaded strictly into REF ``AutoEncoder(AutoEncoderParams(ch=32, ch_mult=[1,2,4,4], num_res_blocks=2,
   z_channels=32))`` through REF ``convert_diffusers_state_dict`` (every tensor equal to the BFL naming).
2. ``images = rand(2, 3, 64, 80)·2 − 1`` (CPU generator, seed 4321).
3. For fp32 and bf16 (``ae.encoder.to(dtype)``): ``moments = encoder(images.to(dtype))``, and REF
   ``encode_image_tokens``' tokens ``(patchify_latent(mean, 2) − shift) / scale`` with REF
   ``get_latent_norm()``.  ``encoder_weight_fingerprint``: per-tensor sums (detects RNG drift).
   Metadata ``torch``: 2.13.0+cpu.

Goldens are kept per CPU kernel family (``tests/kernel_family.py``, ``data/golden_families.json``): the
file in ``data/`` is the AMD EPYC (avx512_bf16) family's, ``data/families/xeon-amx/`` holds the same recipe
recorded on an Intel Xeon with AMX by ``python -m tools.record_goldens`` (module ``vae_encoder``), where bf16 CPU
kernels round differently (the reference and ours agree bit for bit on each machine).
"""

from __future__ import annotations


import pytest
import torch
from safetensors.torch import load_file, save_file

from model.vae import (Flux2VAEEncoder, VAEEncoderConfig, denormalise, detect_vae_format, from_uint8, from_unit_float,
                       load_vae, load_vae_encoder, unpatchify)
from kernel_family import Goldens
from tools.make_test_vae import random_vae_state_dict, tiny_vae_config, write_vae

GOLDEN = Goldens("vae_encoder_golden.safetensors")  # per CPU kernel family: tests/kernel_family.py


@pytest.fixture(scope="module")
def golden():
    return GOLDEN.data, GOLDEN.metadata


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("vae_enc")
    return {n: write_vae(root / f"{n}.safetensors", n, with_encoder=True) for n in ("bfl", "diffusers")}


@pytest.fixture(scope="module")
def encoders(files):
    return {(n, name): load_vae_encoder(p, dtype=dt) for n, p in files.items()
            for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}


def test_golden_encoder_weights_are_reproducible(golden):
    data, _ = golden
    sd = random_vae_state_dict(tiny_vae_config(), 0, with_encoder=True)
    fp = torch.stack([sd[k].double().sum() for k in sorted(sd) if k.startswith("encoder.")]).float()
    torch.testing.assert_close(fp, data["encoder_weight_fingerprint"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("naming", ["bfl", "diffusers"])
def test_fp32_equals_reference_encoder(encoders, golden, naming):
    data, _ = golden
    enc = encoders[(naming, "fp32")]
    moments = enc(data["images"])
    assert moments.shape == (2, 64, 8, 10)
    assert (moments - data["moments_fp32"]).abs().max() <= 1e-5
    tokens, gh, gw = enc.encode_tokens(data["images"])
    assert (gh, gw) == (4, 5) and tokens.dtype == torch.float32
    assert (tokens - data["tokens_fp32"]).abs().max() <= 1e-5


@pytest.mark.parametrize("naming", ["bfl", "diffusers"])
def test_bf16_equals_reference_encoder(encoders, golden, naming):
    data, _ = golden
    enc = encoders[(naming, "bf16")]
    tokens, _, _ = enc.encode_tokens(data["images"])
    # bit-identical on the CPU family that recorded the golden; other kernels: bounded by twice the
    # reference's own bf16-vs-fp32 gap (measured across families: 0.022 max abs)
    ref_gap = (data["tokens_bf16"] - data["tokens_fp32"]).abs().max().item()
    GOLDEN.expect("tokens_bf16", tokens, equal=torch.equal,
                  bound=lambda o, g: (o - g).abs().max().item() <= 2 * ref_gap)


def test_equals_diffusers_autoencoder(files):
    diffusers = pytest.importorskip("diffusers")
    cfg = tiny_vae_config()
    ref = diffusers.AutoencoderKLFlux2(block_out_channels=cfg.block_channels, layers_per_block=2, latent_channels=32)
    missing, unexpected = ref.load_state_dict(load_file(str(files["diffusers"])), strict=False)
    assert not missing and not unexpected
    ref.eval()
    images = torch.rand(1, 3, 48, 96, generator=torch.Generator().manual_seed(5)) * 2 - 1
    ours = load_vae_encoder(files["diffusers"], dtype=torch.float32)
    with torch.no_grad():
        mean_ref = ref.encode(images).latent_dist.mean
    mean = ours.encode_mean(images)
    assert mean.shape == (1, 32, 6, 12)
    assert (mean - mean_ref).abs().max() <= 1e-5


def test_tokens_invert_the_decoders_denormalisation(encoders, golden):
    """decode_tokens applies unpatchify(denormalise(tokens)): that must give back the posterior mean."""
    data, _ = golden
    enc = encoders[("bfl", "fp32")]
    mean = enc.encode_mean(data["images"])
    tokens, gh, gw = enc.encode_tokens(data["images"])
    assert (unpatchify(denormalise(tokens), gh, gw) - mean).abs().max() <= 1e-5


def test_detect_format_maps_every_encoder_tensor(files):
    for naming, path in files.items():
        keys = list(load_file(str(path)))
        fmt = detect_vae_format(keys)
        enc_keys = [k for k in keys if k.startswith(("encoder.", "quant_conv."))]
        assert sorted(fmt.encoder.values()) == sorted(enc_keys) and not fmt.encoder_unknown, naming
        want = set(Flux2VAEEncoder(VAEEncoderConfig(block_channels=(32, 64, 128, 128))).state_dict())
        assert set(fmt.encoder) == want, naming
    assert load_vae(files["bfl"], dtype=torch.float32).checkpoint_format  # the decoder still loads


def test_both_namings_load_identical_encoders(encoders):
    a, b = encoders[("bfl", "fp32")].state_dict(), encoders[("diffusers", "fp32")].state_dict()
    assert set(a) == set(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_file_without_encoder_is_a_clear_error(tmp_path):
    path = write_vae(tmp_path / "dec_only.safetensors", "bfl")
    with pytest.raises(ValueError, match="has no encoder"):
        load_vae_encoder(path)


def test_broken_encoder_names_the_tensor(tmp_path, files):
    sd = load_file(str(files["bfl"]))
    sd.pop("encoder.down.1.block.0.conv1.weight")
    save_file(sd, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ValueError, match="encoder.*down.1.block.0.conv1.weight"):
        load_vae_encoder(tmp_path / "broken.safetensors")


def test_encoder_tensor_without_a_place_is_reported(tmp_path, files):
    sd = load_file(str(files["diffusers"]))
    sd["encoder.mid_block.extra.weight"] = torch.zeros(1)
    save_file(sd, str(tmp_path / "extra.safetensors"))
    with pytest.raises(ValueError, match=r"extra\.safetensors: not a loadable FLUX\.2 VAE encoder .*unexpected keys "
                                         r"\(1\): encoder\.mid_block\.extra\.weight$"):
        load_vae_encoder(tmp_path / "extra.safetensors")


def test_encoder_of_another_latent_width_is_refused(tmp_path):
    from model.vae import VAEDecoderConfig

    path = write_vae(tmp_path / "flux1.safetensors", "bfl", cfg=VAEDecoderConfig.from_ch_mult(ch=32, z_channels=16),
                     with_encoder=True, with_bn=False)
    with pytest.raises(ValueError, match=r"flux1\.safetensors: the encoder has 16 latent channels; Ideogram 4 needs the "
                                         r"FLUX\.2 VAE \(32\)$"):
        load_vae_encoder(path)


def test_bad_image_shape_is_a_value_error(encoders):
    enc = encoders[("bfl", "fp32")]
    with pytest.raises(ValueError, match="multiples of 16"):
        enc.encode_tokens(torch.zeros(1, 3, 40, 64))


def test_pixel_conversions():
    u8 = torch.tensor([[[[0, 127, 255]]]], dtype=torch.uint8)
    torch.testing.assert_close(from_uint8(u8).flatten(), torch.tensor([-1.0, 127 / 127.5 - 1, 1.0]))
    torch.testing.assert_close(from_unit_float(torch.tensor([[[[0.0, 0.5, 1.0, 0.3]]]])).flatten(),
                               torch.tensor([-1.0, 0.0, 1.0]))


@pytest.mark.parametrize("tile", [32, 64, 96])
def test_tiled_encode_equals_untiled(encoders, tile):
    enc = encoders[("bfl", "fp32")]
    x = torch.rand(1, 3, 160, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    full = enc.encode_mean(x)
    tiled = enc.encode_mean(x, tile=tile)
    assert (tiled - full).abs().max() <= 1e-5  # measured 2.6e-6: rounding, not seams


def test_tile_halo_is_needed(encoders, monkeypatch):
    enc = encoders[("bfl", "fp32")]
    x = torch.rand(1, 3, 160, 224, generator=torch.Generator().manual_seed(0)) * 2 - 1
    full = enc.encode_mean(x)
    assert enc.tile_halo() == 48
    monkeypatch.setattr(type(enc), "tile_halo", lambda self: 8)
    assert (enc.encode_mean(x, tile=32) - full).abs().max() > 1e-3
    with pytest.raises(ValueError, match="multiple of 8"):
        enc.forward_tiled(x, tile=20)
