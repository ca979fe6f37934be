"""Safety-placeholder detector on synthetic images (spec §6.6). Detection only; nothing is bypassed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from model.safety import THRESHOLD, check_batch, is_safety_placeholder, placeholder_score

TEXT = "Image blocked by safety filter"


def _font(size):
    try:
        return ImageFont.load_default(size=size)  # Pillow ≥ 10.1 with FreeType
    except TypeError:  # pragma: no cover - older Pillow: fixed bitmap font
        return ImageFont.load_default()


def placeholder(w=1024, h=1024, grey=128, ink=40, size=40, noise=0.0, seed=0):
    img = Image.new("RGB", (w, h), (grey, grey, grey))
    d = ImageDraw.Draw(img)
    font = _font(size)
    box = d.textbbox((0, 0), TEXT, font=font)
    d.text(((w - (box[2] - box[0])) // 2, (h - (box[3] - box[1])) // 2), TEXT, fill=(ink, ink, ink), font=font)
    if noise:
        arr = np.asarray(img, dtype=np.float32)
        arr += np.random.default_rng(seed).normal(0, noise, arr.shape)
        img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    return img


@pytest.mark.parametrize("kw", [
    {},
    {"grey": 100},
    {"grey": 175, "ink": 70},
    {"w": 1376, "h": 768, "size": 48},
    {"w": 512, "h": 512, "size": 24},
    {"noise": 3.0},  # a generated placeholder is not perfectly flat
    {"grey": 140, "ink": 230},  # light text on grey
])
def test_grey_placeholder_detected(kw):
    r = placeholder_score(placeholder(**kw))
    assert r.blocked and r.score >= THRESHOLD, r
    assert r.features["ink_fraction"] > 0
    assert "safety filter" in r.message


def test_tensor_and_array_inputs_agree():
    img = placeholder()
    arr = np.array(img)
    t = torch.from_numpy(arr).float() / 255.0  # a ComfyUI IMAGE entry (H, W, C) in [0, 1]
    a, b, c = placeholder_score(img), placeholder_score(arr), placeholder_score(t)
    assert a.blocked and b.blocked and c.blocked
    assert abs(a.score - b.score) < 0.1 and abs(b.score - c.score) < 1e-6
    reports = check_batch(torch.stack([t, torch.rand(t.shape, generator=torch.Generator().manual_seed(0))]))
    assert [r.blocked for r in reports] == [True, False]


def _gradient(w=768, h=512):
    x = np.linspace(0, 1, w)[None, :, None]
    y = np.linspace(0, 1, h)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.broadcast_to(1 - x, (h, w, 1))], axis=-1)
    return Image.fromarray((rgb * 255).astype(np.uint8))


def _photo_like(seed=0, grey=False):
    """Smooth random texture (blurred noise at several scales), like natural-image statistics."""
    rng = np.random.default_rng(seed)
    acc = np.zeros((512, 512, 3), np.float32)
    for s in (4, 16, 64):
        small = rng.random((512 // s, 512 // s, 3)).astype(np.float32)
        acc += np.asarray(Image.fromarray((small * 255).astype(np.uint8)).resize((512, 512), Image.BICUBIC), np.float32) / 3
    if grey:
        acc = np.repeat(acc.mean(-1, keepdims=True), 3, -1)
    return Image.fromarray(np.clip(acc, 0, 255).astype(np.uint8))


def _white_page():
    img = Image.new("RGB", (800, 1000), (255, 255, 255))
    d = ImageDraw.Draw(img)
    font = _font(28)
    for i in range(20):
        d.text((60, 60 + 44 * i), "Lorem ipsum dolor sit amet, consectetur adipiscing", fill=(0, 0, 0), font=font)
    return img


@pytest.mark.parametrize("name,image", [
    ("noise", Image.fromarray(np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8))),
    ("gradient", _gradient()),
    ("photo", _photo_like(2)),
    ("grey photo", _photo_like(3, grey=True)),
    ("white page with text", _white_page()),
    ("black page with grey text", placeholder(grey=10, ink=128)),
    ("coloured canvas with text", Image.fromarray(
        (np.asarray(placeholder(), np.float32) * np.array([1.6, 0.9, 0.5])).clip(0, 255).astype(np.uint8))),
])
def test_other_images_not_detected(name, image):
    r = placeholder_score(image)
    assert not r.blocked and r.score < THRESHOLD, (name, r)
    assert r.message == ""


def test_plain_grey_without_text_is_reported_but_not_flagged():
    r = placeholder_score(Image.new("RGB", (256, 256), (128, 128, 128)))
    assert not r.blocked and 0.2 < r.score < THRESHOLD
    assert not is_safety_placeholder(Image.new("RGB", (256, 256), (128, 128, 128)))


def test_bad_input_shape():
    with pytest.raises(ValueError):
        placeholder_score(np.zeros((4, 4, 5), np.uint8))


def test_uint8_tensor_is_scaled_like_its_numpy_array():
    """A (H, W, 3) uint8 torch tensor (the pipeline's decoded pixels) scores like the same numpy array."""
    arr = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    assert placeholder_score(torch.from_numpy(arr)).features == placeholder_score(arr).features


# -- the documented heuristic, feature by feature (module docstring) ---------------------------------------------


def _canvas(h, w, level=0.5, patches=()):
    """A float grey canvas in [0, 1]; ``patches``: (pixel count, luminance) laid out row-major after the background."""
    flat = np.full((h * w, 3), level, np.float32)
    start = h * w
    for count, value in patches:
        start -= count
        flat[start:start + count] = value
    return flat.reshape(h, w, 3)


@pytest.mark.parametrize("level,expected", [
    (0.05, 0.0), (0.15, 0.0), (0.20, 0.5), (0.25, 1.0), (0.5, 1.0), (0.80, 1.0), (0.85, 0.5), (0.90, 0.0), (0.97, 0.0)])
def test_grey_level_ramps_between_015_025_and_080_090(level, expected):
    f = placeholder_score(_canvas(64, 64, level)).features
    assert f["background"] == pytest.approx(level, abs=1e-6)
    assert f["grey_level"] == pytest.approx(expected, abs=1e-5)


def test_background_is_the_median_luminance_with_rec601_weights():
    img = np.broadcast_to(np.array([0.2, 0.6, 0.9], np.float32), (32, 32, 3))
    assert placeholder_score(img).features["background"] == pytest.approx(0.299 * 0.2 + 0.587 * 0.6 + 0.114 * 0.9,
                                                                         abs=1e-6)


def test_neutral_is_the_weaker_of_mean_chroma_and_its_99th_percentile():
    tinted = _canvas(100, 100)
    tinted[..., 0] += 0.055  # every pixel: chroma 0.055 → mean ramp (0.08 → 0.03) gives 0.5, p99 ramp gives 1
    f = placeholder_score(tinted).features
    assert f["mean_chroma"] == pytest.approx(0.055, abs=1e-6) and f["neutral"] == pytest.approx(0.5, abs=1e-4)
    speckled = _canvas(100, 100)
    speckled.reshape(-1, 3)[:200, 0] += 0.175  # 2 % of pixels at chroma 0.175: mean 0.0035, p99 ramp (0.25 → 0.10) 0.5
    f = placeholder_score(speckled).features
    assert f["p99_chroma"] == pytest.approx(0.175, abs=1e-6) and f["neutral"] == pytest.approx(0.5, abs=1e-4)


def test_flat_counts_pixels_within_005_of_the_background():
    # 72.5 % background, 26.5 % at +0.08 (neither background nor ink), 1 % ink: flat = (0.725 − 0.60) / 0.25
    r = placeholder_score(_canvas(100, 100, 0.5, [(2650, 0.58), (100, 0.30)]))
    assert r.features["background_fraction"] == 0.725 and r.features["ink_fraction"] == 0.01
    assert r.features["flat"] == 0.5 and r.features["text"] == 1.0
    assert r.score == THRESHOLD and r.blocked  # the threshold itself is flagged


@pytest.mark.parametrize("ink_pixels,expected", [
    (0, 0.3), (1, 0.3 + 0.7 * 0.0001 / 0.0005), (2, 0.3 + 0.7 * 0.0002 / 0.0005), (5, 1.0), (1500, 1.0),
    (2250, 0.5), (3000, 0.0)])
def test_text_ramps_up_to_005_percent_ink_and_down_from_15_to_30_percent(ink_pixels, expected):
    # ink 0.15 below a 0.5 background: above the 0.12 ink threshold
    f = placeholder_score(_canvas(100, 100, 0.5, [(ink_pixels, 0.35)])).features
    assert f["ink_fraction"] == ink_pixels / 10000
    assert f["text"] == pytest.approx(expected, abs=1e-9)


def test_a_faint_ink_trace_scores_below_the_threshold():
    r = placeholder_score(_canvas(100, 100, 0.5, [(1, 0.35)]))  # 0.01 % ink: text 0.44, the only weak feature
    assert r.score == pytest.approx(0.44) and not r.blocked and r.message == ""


def test_large_arrays_are_box_downscaled_to_at_most_256_pixels():
    stripes = np.where(np.arange(512) % 4 < 2, 0.4, 0.6).astype(np.float32)  # period 4: a step of 2 keeps them
    img = np.broadcast_to(stripes[None, :, None], (512, 512, 3))
    assert placeholder_score(img).features["background_fraction"] == 0.0
    alternate = np.where(np.arange(300) % 2 == 0, 0.4, 0.6).astype(np.float32)  # 300 px: step ceil(300/256) = 2
    img = np.broadcast_to(alternate[None, :, None], (300, 300, 3))
    assert placeholder_score(img).features["background_fraction"] == 1.0


def test_large_pil_images_are_box_resized_before_scoring():
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(np.repeat(rng.choice([102, 153], (1024, 1024, 1)).astype(np.uint8), 3, -1))
    # every pixel is 0.1 from the median at full size; a 4×4 box average pulls most of them to the median
    assert placeholder_score(noisy).features["background_fraction"] > 0.8


@pytest.mark.parametrize("convert", [
    lambda rgb: Image.fromarray(rgb).convert("L"),
    lambda rgb: Image.fromarray(rgb).convert("RGBA"),
    lambda rgb: rgb[..., 0],
    lambda rgb: rgb[..., :1],
    lambda rgb: np.concatenate([rgb, np.full_like(rgb[..., :1], 7)], -1),
])
def test_grey_alpha_and_single_channel_inputs_score_like_rgb(convert):
    rgb = np.asarray(placeholder(200, 200, size=16))
    assert placeholder_score(convert(rgb)).features == pytest.approx(placeholder_score(rgb).features, abs=2e-3)


def test_out_of_range_float_pixels_are_clipped():
    img = _canvas(32, 32, 0.5, [(100, 1.0), (100, 0.0)])  # white in the last 100 pixels, black in the 100 before
    img.reshape(-1, 3)[-100:, 0] = 1.3  # overshoot past white: no colour once clipped
    img.reshape(-1, 3)[-200:-100, 2] = -0.4  # undershoot past black
    f = placeholder_score(img).features
    assert f == placeholder_score(np.clip(img, 0.0, 1.0)).features
    assert f["p99_chroma"] == 0.0 and f["mean_chroma"] == 0.0
