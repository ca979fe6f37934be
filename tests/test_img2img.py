"""img2img (denoise < 1) and inpainting in the pure-torch sampler, against a plain re-statement of the
reference loop started from the first time run; masks resized/grown/feathered; bad input."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F

from sampling import custom_settings, draw_noise, sample, schedule_steps, sigmas, time_grid
from sampling.masks import feather_mask, grow_mask, latent_mask

GH, GW = 16, 20  # 256×320 px
W, H = GW * 16, GH * 16


class Toy(torch.nn.Module):
    """A deterministic stand-in DiT: mixes tokens (so masked and kept regions interact) and uses t and text."""

    def __init__(self, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(128, 128, generator=g) / 128 ** 0.5
        self.mix = torch.randn(GH * GW, GH * GW, generator=g) / (GH * GW)

    def forward(self, z, t, text, *, grid_hw, text_lengths=None):
        h = torch.tanh(z @ self.w) + self.mix @ z
        bias = 0.0 if text is None else text.mean(dim=(1, 2)).view(-1, 1, 1)
        return h * (1.0 + t.view(-1, 1, 1)) + bias


@pytest.fixture(scope="module")
def setup():
    cond, uncond = Toy(1), Toy(2)
    feats = torch.randn(2, 7, 16, generator=torch.Generator().manual_seed(3))
    x0 = torch.randn(2, GH * GW, 128, generator=torch.Generator().manual_seed(4))
    settings = custom_settings(8, 0.0, 1.75, 6.0, polish_steps=2, polish_guidance=2.5)
    return cond, uncond, feats, x0, settings


def reference_loop_from(cond, uncond, feats, z, times, guidance):
    """The reference update z ← z + v·(s − t) over the given times (sampling order), guidance per step."""
    for k in range(len(times) - 1):
        t_val, s_val = times[k], times[k + 1]
        t = torch.full((z.shape[0],), t_val, dtype=torch.float32)
        v = guidance[k] * cond(z, t, feats, grid_hw=(GH, GW)) + (1.0 - guidance[k]) * uncond(z, t, None, grid_hw=(GH, GW))
        z = z + v * (s_val - t_val)
    return z


@pytest.mark.parametrize("denoise", [0.35, 0.6, 0.999])
def test_img2img_equals_reference_loop_from_the_first_time_run(setup, denoise):
    cond, uncond, feats, x0, settings = setup
    n = settings.steps
    m = int(n / denoise)
    # ComfyUI KSampler convention: sigmas for int(steps / denoise) steps, keep the last steps + 1
    sig = sigmas(m, settings.mu, settings.std, W, H)[-(n + 1):]
    times = time_grid(m, settings.mu, settings.std, W, H).flip(0)[-(n + 1):].tolist()
    assert torch.equal((1.0 - torch.tensor(times, dtype=torch.float64)).float(), sig)
    eps = draw_noise(2, GH, GW, seed=11)
    z0 = times[0] * x0 + (1.0 - times[0]) * eps
    want = reference_loop_from(cond, uncond, feats, z0, times, settings.guidance)
    got = sample(cond, uncond, feats, height=H, width=W, settings=settings, seed=11, denoise=denoise, init_latent=x0)
    assert (got - want).abs().max() <= 1e-5
    assert m > n or denoise == 0.999


def test_denoise_one_is_the_text_to_image_loop(setup):
    cond, uncond, feats, x0, settings = setup
    plain = sample(cond, uncond, feats, height=H, width=W, settings=settings, seed=5)
    same = sample(cond, uncond, feats, height=H, width=W, settings=settings, seed=5, denoise=1.0, init_latent=x0)
    assert torch.equal(plain, same)  # the latent's content is not used at d = 1 without a mask


def test_lower_denoise_stays_closer_to_the_input(setup):
    cond, uncond, feats, x0, settings = setup
    dist = [float((sample(cond, uncond, feats, height=H, width=W, settings=settings, seed=5, denoise=d,
                          init_latent=x0) - x0).norm()) for d in (0.2, 0.5, 1.0)]
    assert dist[0] < dist[1] < dist[2]


@pytest.mark.parametrize("denoise", [1.0, 0.7])
def test_inpainting_keeps_the_unmasked_region_exact_at_every_step(setup, denoise):
    cond, uncond, feats, x0, settings = setup
    n = settings.steps
    mask_img = torch.zeros(1, H, W)
    mask_img[:, 64:192, 80:240] = 1.0  # regenerate a 128×160 px box
    mask = latent_mask(mask_img, 2, GH, GW)
    keep = mask[..., 0] == 0
    assert keep.any() and (~keep).any()
    times = time_grid(schedule_steps(n, denoise), settings.mu, settings.std, W, H).flip(0)[-(n + 1):].tolist()
    eps = draw_noise(2, GH, GW, seed=9)
    seen, first_input = [], []

    class Recording(torch.nn.Module):  # the conditional model, recording the latent of the first step
        def forward(self, z, *a, **k):
            if not first_input:
                first_input.append(z.clone())
            return cond(z, *a, **k)

    def callback(k, total, z):
        s = times[k + 1]
        known = x0 if k == total - 1 else s * x0 + (1.0 - s) * eps
        assert torch.equal(z[keep], known[keep]), f"step {k}"
        seen.append(z.clone())

    out = sample(Recording(), uncond, feats, height=H, width=W, settings=settings, seed=9, denoise=denoise,
                 init_latent=x0, mask=mask, callback=callback)
    assert len(seen) == n and torch.equal(out[keep], x0[keep])
    # before the first step too: the kept region is the input noised to the first time run, the rest starts
    # from noise (d = 1) or from the same noised input (d < 1)
    t0 = times[0]
    start = t0 * x0 + (1.0 - t0) * eps
    assert torch.equal(first_input[0][keep], start[keep])
    assert torch.equal(first_input[0][~keep], (eps if denoise == 1.0 else start)[~keep])
    # the masked region was regenerated (and, with token mixing, saw the kept region)
    plain = sample(cond, uncond, feats, height=H, width=W, settings=settings, seed=9, denoise=denoise, init_latent=x0)
    assert not torch.equal(out[~keep], x0[~keep]) and not torch.equal(out[~keep], plain[~keep])


def test_full_mask_equals_no_mask(setup):
    cond, uncond, feats, x0, settings = setup
    ones = torch.ones(1, GH * GW, 1)
    a = sample(cond, uncond, feats, height=H, width=W, settings=settings, seed=2, denoise=0.5, init_latent=x0, mask=ones)
    b = sample(cond, uncond, feats, height=H, width=W, settings=settings, seed=2, denoise=0.5, init_latent=x0)
    assert torch.equal(a, b)


def test_latent_mask_resizes_like_comfy_reshape_mask():
    m = torch.rand(1, 517, 645, generator=torch.Generator().manual_seed(0))  # any size, same aspect as 256×320
    got = latent_mask(m, 3, GH, GW)
    want = F.interpolate(m.reshape(-1, 1, 517, 645), size=(GH, GW), mode="bilinear").repeat(3, 1, 1, 1)
    assert got.shape == (3, GH * GW, 1)
    assert torch.equal(got, want.reshape(3, GH * GW, 1))


def test_grow_and_feather():
    m = torch.zeros(1, 1, 32, 32)
    m[..., 16, 16] = 1.0
    g = grow_mask(m, 3)
    assert g.sum() == 49 and g[..., 13:20, 13:20].min() == 1.0
    f = feather_mask(g, 2)
    assert f[..., 16, 16] == 1.0 and 0 < f[..., 12, 16] < 1 and f[..., 10, 16] == 0
    assert torch.equal(grow_mask(m, 0), m) and torch.equal(feather_mask(m, 0), m)
    # the image border is not darkened: a full mask stays full after feathering
    assert torch.equal(feather_mask(torch.ones(1, 1, 8, 8), 3), torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match="grow = -1"):
        grow_mask(m, -1)


def test_bad_input_is_a_clear_error(setup):
    cond, uncond, feats, x0, settings = setup
    for d in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=r"denoise = .* outside the allowed range \(0, 1\]"):
            sample(cond, uncond, feats, height=H, width=W, settings=settings, denoise=d, init_latent=x0)
    with pytest.raises(ValueError, match="need the input latent"):
        sample(cond, uncond, feats, height=H, width=W, settings=settings, denoise=0.5)
    with pytest.raises(ValueError, match="aspect ratios differ"):
        latent_mask(torch.ones(1, 100, 100), 2, GH, GW)
    with pytest.raises(ValueError, match="batch 3"):
        latent_mask(torch.ones(3, H, W), 2, GH, GW)
    with pytest.raises(ValueError, match=r"has batch 2; the latent has batch 3 \(allowed: 1 or 3\)"):
        latent_mask(torch.ones(2, H, W), 3, GH, GW)
    # aspect ratio: within 2 % is the same picture (a rounded resize), 5 % off is not
    assert latent_mask(torch.ones(1, 100, 101 * W // H), 1, GH, GW).shape == (1, GH * GW, 1)
    with pytest.raises(ValueError, match="aspect ratios differ"):
        latent_mask(torch.ones(1, 100, 105 * W // H), 1, GH, GW)
    with pytest.raises(ValueError, match=r"init_latent must be \(2, 320, 128\), got \(1, 320, 128\)"):
        sample(cond, uncond, feats, height=H, width=W, settings=settings, denoise=0.5, init_latent=x0[:1])
    for bad in (torch.ones(2, GH * GW), torch.ones(2, GH * GW, 2), torch.ones(3, GH * GW, 1)):
        with pytest.raises(ValueError, match=rf"mask must be \(B or 1, 320, 1\), got {re.escape(str(tuple(bad.shape)))}"):
            sample(cond, uncond, feats, height=H, width=W, settings=settings, init_latent=x0, mask=bad)
    with pytest.raises(ValueError, match=r"noise must be \(2, 320, 128\), got \(2, 320, 64\)"):
        sample(cond, uncond, feats, height=H, width=W, settings=settings, noise=torch.zeros(2, GH * GW, 64))


def test_float64_noise_and_mask_sample_in_float32(setup):
    """The loop runs in float32 whatever the dtype of the noise and mask it is given (the reference's latents)."""
    cond, uncond, feats, x0, settings = setup
    eps = draw_noise(2, GH, GW, seed=4)
    mask = torch.rand(1, GH * GW, 1, generator=torch.Generator().manual_seed(5))  # a feathered mask
    kw = dict(height=H, width=W, settings=settings, denoise=0.6, init_latent=x0)
    want = sample(cond, uncond, feats, noise=eps, mask=mask, **kw)
    got = sample(cond, uncond, feats, noise=eps.double(), mask=mask.double(), **kw)
    assert want.dtype == got.dtype == torch.float32 and torch.equal(got, want)


@pytest.mark.parametrize("size,mode,want", [((320, 256), "error", (320, 256)), ((300, 270), "crop", (288, 256)),
                                            ((300, 270), "resize", (304, 272)), ((4000, 3000), "resize", (2048, 1536)),
                                            ((200, 180), "resize", (288, 256)), ((2100, 1000), "crop", (2048, 992))])
def test_fit_size(size, mode, want):
    from sampling import fit_size

    assert fit_size(*size, mode) == want


def test_fit_size_errors_name_the_value_and_the_options():
    from sampling import fit_size

    with pytest.raises(ValueError, match=r"image is 250×260 px: width = 250 is outside the supported range 256–2048 px "
                                         r"\(try width = 256\).*crop or resize"):
        fit_size(250, 260, "error")
    with pytest.raises(ValueError, match=r"image is 272×260 px: height = 260 is not a multiple of 16 "
                                         r"\(try height = 256\).*crop or resize"):
        fit_size(272, 260, "error")
    with pytest.raises(ValueError, match="after crop it would be 240×256"):
        fit_size(250, 260, "crop")
    with pytest.raises(ValueError, match="exceeds the supported 6:1"):
        fit_size(3000, 256, "resize")
    with pytest.raises(ValueError, match="not one of error, crop, resize"):
        fit_size(256, 256, "stretch")


def test_fit_pixels_crops_centre_and_resizes():
    from model.vae.encoder import fit_pixels

    x = torch.arange(2 * 3 * 270 * 300, dtype=torch.float32).reshape(2, 3, 270, 300)
    c = fit_pixels(x, 288, 256, "crop")
    assert torch.equal(c, x[..., 7:263, 6:294])
    r = fit_pixels(torch.rand(1, 3, 270, 300), 304, 272, "resize")
    assert r.shape == (1, 3, 272, 304) and 0 <= float(r.min()) and float(r.max()) <= 1
    assert fit_pixels(x, 300, 270, "resize") is x
