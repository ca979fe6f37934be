"""Latent layouts, normalisation constants and the BN-space conversion (spec §2.8, §4.2, §4.3)."""

from __future__ import annotations

import json

import pytest
import torch

from model.vae import latents as L


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- constants


def test_constants_match_spec_values():
    data = json.loads(L.LATENT_NORM_PATH.read_text())
    assert data["order"].startswith("token channel order (ph, pw, c)")
    shift, scale = L.latent_norm()
    assert shift.dtype == scale.dtype == torch.float32 and shift.shape == scale.shape == (128,)
    torch.testing.assert_close(shift[:4], torch.tensor([0.01984364, 0.10149707, 0.29689495, 0.27188619]), rtol=0, atol=1e-8)
    assert scale[127].item() == pytest.approx(1.68533454, abs=1e-7)
    assert 1.5307 < scale.min() < 1.5309 and 1.9406 < scale.max() < 1.9408
    assert -0.3491 < shift.min() < -0.3490 and 0.3840 < shift.max() < 0.3841
    torch.testing.assert_close(shift[[0, 32, 64, 96]], torch.tensor([0.0198, 0.0258, 0.0192, 0.0258]), rtol=0, atol=1e-4)


def test_constants_are_in_token_order_sanity_check():
    """§4.2: entries c, 32+c, 64+c, 96+c are one VAE channel at four sub-pixels → close to each other.
    Grouping the other way (4 consecutive entries = ComfyUI order) gives no such structure."""
    for v in L.latent_norm():
        by_subpixel = v.view(4, 32)  # [ph·2+pw, c]
        spread = by_subpixel.max(0).values - by_subpixel.min(0).values
        assert spread.max() < 0.06  # measured 0.052 (shift), 0.049 (scale)
        assert spread.mean() < 0.25 * by_subpixel.mean(0).std()  # within-channel spread ≪ across-channel spread
        wrong = v.view(32, 4)
        assert (wrong.max(1).values - wrong.min(1).values).mean() > 5 * spread.mean()
        # in ComfyUI order the four sub-pixels of channel c are consecutive
        comfy = L.token_vector_to_comfy(v).view(32, 4)
        torch.testing.assert_close(comfy, by_subpixel.T)


def test_comfy_order_constants_formula():
    shift_t, scale_t = L.latent_norm()
    shift_c, scale_c = L.latent_norm(order="comfy")
    for c in range(32):
        for ph in range(2):
            for pw in range(2):
                assert shift_c[c * 4 + ph * 2 + pw] == shift_t[ph * 64 + pw * 32 + c]
                assert scale_c[c * 4 + ph * 2 + pw] == scale_t[ph * 64 + pw * 32 + c]
    torch.testing.assert_close(L.comfy_vector_to_token(shift_c), shift_t, rtol=0, atol=0)
    with pytest.raises(ValueError):
        L.latent_norm(order="nope")


# --------------------------------------------------------------------------- layouts


@pytest.mark.parametrize("gh,gw", [(3, 5), (4, 4), (1, 7)])
def test_tokens_to_comfy_explicit_indices(gh, gw):
    b = 2
    z = _rand(b, gh * gw, 128)
    x = L.tokens_to_comfy(z, gh, gw)
    assert x.shape == (b, 128, gh, gw)
    for bi in range(b):
        for r in range(gh):
            for q in range(gw):
                for c in (0, 1, 17, 31):
                    for ph in range(2):
                        for pw in range(2):
                            assert x[bi, c * 4 + ph * 2 + pw, r, q] == z[bi, r * gw + q, ph * 64 + pw * 32 + c]
    torch.testing.assert_close(L.comfy_to_tokens(x), z, rtol=0, atol=0)


@pytest.mark.parametrize("gh,gw", [(3, 5), (2, 2)])
def test_unpatchify_explicit_indices(gh, gw):
    z = _rand(2, gh * gw, 128, seed=1)
    lat = L.unpatchify(z, gh, gw)
    assert lat.shape == (2, 32, 2 * gh, 2 * gw)
    for r in range(gh):
        for q in range(gw):
            for c in range(32):
                for ph in range(2):
                    for pw in range(2):
                        assert lat[1, c, 2 * r + ph, 2 * q + pw] == z[1, r * gw + q, ph * 64 + pw * 32 + c]
    back, gh2, gw2 = L.patchify(lat)
    assert (gh2, gw2) == (gh, gw)
    torch.testing.assert_close(back, z, rtol=0, atol=0)


def test_unpatchify_matches_reference_view_permute():
    """REF ``_decode``: view(B, gh, gw, 2, 2, C) → permute(0, 5, 1, 3, 2, 4) → view(B, C, 2gh, 2gw)."""
    gh, gw, b = 3, 4, 2
    z = _rand(b, gh * gw, 128, seed=2)
    ref = z.view(b, gh, gw, 2, 2, 32).permute(0, 5, 1, 3, 2, 4).contiguous().view(b, 32, gh * 2, gw * 2)
    torch.testing.assert_close(L.unpatchify(z, gh, gw), ref, rtol=0, atol=0)


def test_comfy_rearrange_equals_unpatchify():
    """ComfyUI's ``(c ph pw) i j → c (i ph) (j pw)`` on our ComfyUI latent = REF's unpatchify of the tokens."""
    gh, gw = 3, 5
    z = _rand(1, gh * gw, 128, seed=3)
    torch.testing.assert_close(L.comfy_to_raw(L.tokens_to_comfy(z, gh, gw)), L.unpatchify(z, gh, gw), rtol=0, atol=0)


def test_permutation_tables_are_inverse():
    assert sorted(L.COMFY_FROM_TOKEN) == list(range(128))
    for j, f in enumerate(L.COMFY_FROM_TOKEN):
        assert L.TOKEN_FROM_COMFY[f] == j
    assert L.COMFY_FROM_TOKEN[:5] == (0, 32, 64, 96, 1)


def test_shape_errors():
    with pytest.raises(ValueError, match="expected tokens"):
        L.tokens_to_comfy(torch.zeros(1, 10, 128), 3, 5)
    with pytest.raises(ValueError, match="expected tokens"):
        L.unpatchify(torch.zeros(1, 15, 64), 3, 5)
    with pytest.raises(ValueError):
        L.comfy_to_tokens(torch.zeros(1, 64, 3, 5))
    with pytest.raises(ValueError):
        L.patchify(torch.zeros(1, 32, 5, 4))


# --------------------------------------------------------------------------- normalisation


def test_denormalise_normalise_round_trip_and_dtype():
    z = _rand(2, 6, 128, seed=4).to(torch.bfloat16)
    raw = L.denormalise(z)
    assert raw.dtype == torch.float32
    shift, scale = L.latent_norm()
    torch.testing.assert_close(raw, z.float() * scale + shift, rtol=0, atol=0)
    torch.testing.assert_close(L.normalise(raw), z.float(), rtol=0, atol=1e-6)


def _bn(seed=5):
    g = torch.Generator().manual_seed(seed)
    return 0.2 * torch.randn(128, generator=g), 1.0 + 3.0 * torch.rand(128, generator=g)


def test_ref_to_bn_space_reproduces_raw_latent_through_comfy_decode_formula():
    """ComfyUI AutoencodingEngineLegacy.decode: z·sqrt(var+1e-4) + mean, then (c ph pw) i j → c (i ph) (j pw)."""
    gh, gw = 3, 5
    z = _rand(2, gh * gw, 128, seed=6)
    mean, var = _bn()
    z_bn = L.ref_to_bn_space(L.tokens_to_comfy(z, gh, gw), mean, var)
    assert z_bn.dtype == torch.float32 and z_bn.shape == (2, 128, gh, gw)
    comfy_raw = L.comfy_to_raw(z_bn * torch.sqrt(var.view(1, -1, 1, 1) + 1e-4) + mean.view(1, -1, 1, 1))
    ref_raw = L.unpatchify(L.denormalise(z), gh, gw)
    torch.testing.assert_close(comfy_raw, ref_raw, rtol=0, atol=2e-6)
    # inverse
    torch.testing.assert_close(L.bn_space_to_ref(z_bn, mean, var), L.tokens_to_comfy(z, gh, gw), rtol=0, atol=2e-6)


def test_bn_space_is_identity_when_bn_equals_reference_constants():
    shift_c, scale_c = L.latent_norm(order="comfy")
    var = scale_c ** 2 - L.BN_EPS
    z = _rand(1, 128, 2, 3, seed=7)
    torch.testing.assert_close(L.ref_to_bn_space(z, shift_c, var), z, rtol=0, atol=2e-6)
    stats = L.bn_vs_ref(shift_c, var)
    assert stats["max_abs_shift_diff"] == 0 and stats["max_abs_scale_diff"] < 1e-6
    mean, var2 = _bn()
    assert L.bn_vs_ref(mean, var2)["max_abs_scale_diff"] > 0.1


def test_bn_buffer_shape_checked():
    with pytest.raises(ValueError, match="128"):
        L.ref_to_bn_space(torch.zeros(1, 128, 2, 2), torch.zeros(64), torch.ones(64))


def test_comfy_grid_names_the_input_and_the_expected_shape():
    assert L.comfy_grid(torch.zeros(2, 128, 3, 5)) == (2, 3, 5)
    with pytest.raises(ValueError, match=r"^the latent to decode must be an Ideogram 4 / Flux2 latent "
                                         r"\(B, 128, H/16, W/16\), got \(1, 16, 8, 8\); use X$"):
        L.comfy_grid(torch.zeros(1, 16, 8, 8), "the latent to decode", hint="use X")


def test_odd_raw_latent_sizes_and_other_layouts_are_refused():
    with pytest.raises(ValueError, match=r"with even H, W, got \(1, 32, 4, 5\)"):
        L.patchify(torch.zeros(1, 32, 4, 5))
    for convert in (L.ref_to_bn_space, L.bn_space_to_ref):
        with pytest.raises(ValueError, match=r"expected \(B, 128, gh, gw\), got \(1, 64, 2, 2\)"):
            convert(torch.zeros(1, 64, 2, 2), torch.zeros(128), torch.ones(128))


def test_bn_eps_is_the_one_given():
    mean, var = _bn()
    z = _rand(1, 128, 2, 3, seed=8)
    shift, scale = L.latent_norm(order="comfy")
    want = (z * scale.view(1, -1, 1, 1) + shift.view(1, -1, 1, 1) - mean.view(1, -1, 1, 1)) / \
        torch.sqrt(var.view(1, -1, 1, 1) + 0.5)
    assert torch.equal(L.ref_to_bn_space(z, mean, var, eps=0.5), want)


def test_bn_vs_ref_reports_magnitudes_of_differences_either_way():
    shift, scale = L.latent_norm(order="comfy")
    mean = shift.clone()
    mean[3] -= 0.5  # below the constant
    std = scale.clone()
    std[7] = scale[7] * 0.25  # a quarter of it: −0.75 relative
    stats = L.bn_vs_ref(mean, std ** 2 - L.BN_EPS)
    assert stats["max_abs_shift_diff"] == pytest.approx(0.5, abs=1e-6)
    assert stats["max_abs_scale_diff"] == pytest.approx(float(scale[7] * 0.75), rel=1e-4)
    assert stats["max_rel_scale_diff"] == pytest.approx(0.75, rel=1e-4)


def test_a_damaged_latent_norm_file_is_named(tmp_path, monkeypatch):
    bad = tmp_path / "latent_norm.json"
    bad.write_text(json.dumps({"shift": [0.0] * 127, "scale": [1.0] * 128}))
    monkeypatch.setattr(L, "LATENT_NORM_PATH", bad)
    L._load_norm.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"latent_norm\.json: expected 128 shift and 128 scale values"):
            L.latent_norm()
    finally:
        monkeypatch.undo()
        L._load_norm.cache_clear()
