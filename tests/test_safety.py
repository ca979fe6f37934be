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
