"""Pure helpers of the node layer, tested in CI without ComfyUI (the pack imported with stub APIs).

Widget values → sampler settings, guidance per step for the GUIDER, caption-check modes of the text
encoder node, empty-latent sizes, the SaveImage-exact IMAGE values, the safety-placeholder warning,
the conditioning contract and the automatic unconditional-file pairing.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch

from comfy_api_stub import stubbed_pack


@pytest.fixture(scope="module")
def pack():
    with stubbed_pack() as p:
        mods = {name.rpartition(".")[2]: importlib.import_module(f"{p.__name__}.nodes.{name}") for name in (
            "host.sampler_settings", "text_encoder_nodes", "latent_nodes", "host.image_values", "host.conditioning", "host.folders",
            "sampler_nodes", "loader_nodes")}
        mods["caption"] = importlib.import_module(f"{p.__name__}.model.caption")
        yield mods


def test_presets_ignore_custom_fields(pack):
    ss = pack["sampler_settings"]
    s = ss.settings_from_inputs("V4_TURBO_12", steps=3, mu=9.0, std=0.1, guidance=1.0, polish_steps=0,
                                polish_guidance=1.0, guidance_schedule="1,2")
    assert (s.steps, s.mu, s.std, s.guidance) == (12, 0.5, 1.75, (7.0,) * 11 + (3.0,))
    assert ss.PRESET_CHOICES[-1] == "custom" and ss.DEFAULT_PRESET in ss.PRESET_CHOICES


def test_custom_settings_from_widgets(pack):
    ss = pack["sampler_settings"]
    s = ss.settings_from_inputs("custom", steps=6, mu=0.2, std=1.3, guidance=5.0, polish_steps=2, polish_guidance=2.0)
    assert s.guidance == (5.0,) * 4 + (2.0,) * 2 and (s.mu, s.std) == (0.2, 1.3)
    s = ss.settings_from_inputs("custom", steps=3, mu=0.0, std=1.0, guidance=5.0, polish_steps=2, polish_guidance=2.0,
                                guidance_schedule="9, 8 7")
    assert s.guidance == (9.0, 8.0, 7.0)  # sampling order, polish ignored for a list
    s = ss.settings_from_inputs("custom", steps=4, mu=0.0, std=1.0, guidance=5.0, polish_steps=0, polish_guidance=2.0,
                                guidance_schedule="4.5")
    assert s.guidance == (4.5,) * 4
    assert "3×7 then 1×3" in ss.describe_settings(
        ss.settings_from_inputs("custom", steps=4, mu=0, std=1, guidance=7, polish_steps=1, polish_guidance=3))
    with pytest.raises(ValueError, match="has 2 values but steps = 4"):
        ss.settings_from_inputs("custom", steps=4, mu=0.0, std=1.0, guidance=5.0, polish_steps=0, polish_guidance=2.0,
                                guidance_schedule="1,2")
    with pytest.raises(ValueError, match="outside"):
        ss.settings_from_inputs("custom", steps=0, mu=0.0, std=1.0, guidance=5.0, polish_steps=0, polish_guidance=2.0)
    with pytest.raises(ValueError, match="numbers"):
        ss.settings_from_inputs("custom", steps=2, mu=0.0, std=1.0, guidance=5.0, polish_steps=0, polish_guidance=2.0,
                                guidance_schedule="7, x")
    for steps in (1001, 2.5):
        with pytest.raises(ValueError, match=rf"steps = {steps} is outside the allowed range 1–1000"):
            ss.settings_from_inputs("custom", steps=steps, mu=0.0, std=1.0, guidance=5.0, polish_steps=0,
                                    polish_guidance=2.0)
    assert ss.settings_from_inputs("custom", steps=1000, mu=0.0, std=1.0, guidance=5.0, polish_steps=0,
                                   polish_guidance=2.0).steps == 1000


@pytest.mark.parametrize("make", ["settings", "guider"])
def test_an_unknown_preset_is_named_with_the_choices(pack, make):
    ss = pack["sampler_settings"]
    with pytest.raises(ValueError, match=r"preset 'V4_FAST' is not one of V4_QUALITY_48, V4_DEFAULT_20, V4_TURBO_12, custom"):
        if make == "settings":
            ss.settings_from_inputs("V4_FAST", steps=4, mu=0.0, std=1.0, guidance=5.0, polish_steps=0, polish_guidance=2.0)
        else:
            ss.GuidanceSpec.from_inputs("V4_FAST", 6.0, 0, 2.0)


def test_guider_guidance_follows_the_sigmas_step_count(pack):
    GuidanceSpec = pack["sampler_settings"].GuidanceSpec
    assert GuidanceSpec.from_inputs("V4_DEFAULT_20", 1.0, 0, 1.0).values(20) == (7.0,) * 18 + (3.0,) * 2
    with pytest.raises(ValueError, match="20 steps\\) but the SIGMAS have 48"):
        GuidanceSpec.from_inputs("V4_DEFAULT_20", 1.0, 0, 1.0).values(48)
    custom = GuidanceSpec.from_inputs("custom", 6.0, 1, 2.0)
    assert custom.values(3) == (6.0, 6.0, 2.0) and custom.values(1) == (2.0,)
    assert GuidanceSpec.from_inputs("custom", 6.0, 1, 2.0, "1,2,3").values(3) == (1.0, 2.0, 3.0)
    with pytest.raises(ValueError, match="3 values but the SIGMAS have 4"):
        GuidanceSpec.from_inputs("custom", 6.0, 1, 2.0, "1,2,3").values(4)
    with pytest.raises(ValueError, match="polish_steps = 5"):
        GuidanceSpec.from_inputs("custom", 6.0, 5, 2.0).values(3)
    # a preset never reads the custom-only schedule text, even one that would not parse
    assert GuidanceSpec.from_inputs("V4_TURBO_12", 6.0, 1, 2.0, "7, x").schedule is None
    with pytest.raises(ValueError, match="guidance_schedule has no numbers"):
        GuidanceSpec.from_inputs("custom", 6.0, 1, 2.0, " , ,")
    assert [GuidanceSpec.from_inputs(*a).describe() for a in (("V4_TURBO_12", 6.0, 1, 2.0),
                                                             ("custom", 6.0, 1, 2.0), ("custom", 6.0, 0, 2.0),
                                                             ("custom", 6.0, 3, 2.0),
                                                             ("custom", 6.0, 1, 2.0, "7 3"))] == [
        "preset V4_TURBO_12", "custom guidance 6, last step at 2", "custom guidance 6", "custom guidance 6, last 3 steps at 2",
        "custom per-step guidance 7, 3"]


VALID = ('{"high_level_description":"A fox.","compositional_deconstruction":{"background":"snow",'
         '"elements":[{"type":"obj","desc":"a fox"}]}}')


def test_caption_check_modes(pack):
    te = pack["text_encoder_nodes"]
    CaptionError = pack["caption"].CaptionError
    pretty = '{\n  "high_level_description": "A fox.",\n  "compositional_deconstruction": {"background": "snow", ' \
             '"elements": [{"type": "obj", "desc": "a fox"}]}\n}'
    text, lines = te.check_caption_text(pretty, "canonicalize")
    assert text == VALID  # minified canonical form is what gets encoded
    text, _ = te.check_caption_text(pretty, "strict")
    assert text == pretty  # verbatim, as the reference
    with pytest.raises(CaptionError, match="Ideogram4 Text Encode"):
        te.check_caption_text("a fox in the snow", "canonicalize")
    with pytest.raises(CaptionError):
        te.check_caption_text("a fox in the snow", "strict")
    text, lines = te.check_caption_text("a fox in the snow", "warn")
    assert text == "a fox in the snow" and any("error" in l for l in lines)
    assert te.check_caption_text("anything", "off")[0] == "anything"
    lower = VALID.replace('"desc":"a fox"', '"desc":"a fox","color_palette":["#ffffff"]')
    assert te.check_caption_text(lower, "canonicalize")[0].count("#FFFFFF") == 1  # repaired
    with pytest.raises(CaptionError, match="strict"):
        te.check_caption_text(lower, "strict")  # the reference verifier rejects lowercase hex
    with pytest.raises(ValueError):
        te.check_caption_text(VALID, "lenient")


def test_empty_latent_sizes(pack):
    ln = pack["latent_nodes"]
    for choice in ln.ASPECT_CHOICES[:-1]:
        w, h = ln.aspect_size(choice, 0, 0)
        assert w % 16 == 0 and h % 16 == 0 and 256 <= min(w, h) and max(w, h) <= 2048
        assert f"{w}x{h}" in choice
    assert ln.aspect_size("custom", 640, 480) == (640, 480)
    assert ln.Ideogram4NativeEmptyLatent.validate_inputs("custom", 1000, 1024).startswith(
        "Ideogram4 Empty Latent: width = 1000 is not a multiple of 16")
    assert ln.Ideogram4NativeEmptyLatent.validate_inputs(ln.ASPECT_CHOICES[0], 1000, 1024) is True  # ignored
    assert "6:1" in ln.Ideogram4NativeEmptyLatent.validate_inputs("custom", 2048, 256)
    assert "not one of" in ln.Ideogram4NativeEmptyLatent.validate_inputs("7:5", 1024, 1024)
    ks = pack["sampler_nodes"].Ideogram4NativeKSampler
    assert ks.validate_inputs(1024, 1024) is True and ks.validate_inputs(None, None) is True  # linked inputs
    assert "outside the supported range 256–2048" in ks.validate_inputs(4096, 1024)


def test_image_values_survive_saveimage_truncation(pack):
    iv = pack["image_values"]
    lut = iv.save_exact_lut().numpy()
    u = np.arange(256)
    assert lut.dtype == np.float32 and lut[0] == 0.0 and lut[255] == 1.0
    assert np.all(np.diff(lut) > 0) and np.abs(lut - u / 255).max() < 1e-6
    # SaveImage: np.clip(255. * image.numpy(), 0, 255).astype(np.uint8)
    assert np.array_equal(np.clip(255. * lut, 0, 255).astype(np.uint8), u)
    assert np.array_equal(lut, (u / 255).astype(np.float32))  # float32(u/255) already survives (measured)
    # Why the decode node rounds first: ComfyUI's float IMAGE (x+1)/2 is truncated by SaveImage.
    x = torch.linspace(-1, 1, 100_001)
    reference = ((x + 1) * 127.5).round().to(torch.uint8).numpy()
    comfy = np.clip(255. * ((x + 1) / 2).clamp(0, 1).numpy(), 0, 255).astype(np.uint8)
    assert 0.3 < (comfy != reference).mean() < 0.7 and (reference.astype(int) - comfy).max() == 1
    ours = np.clip(255. * iv.uint8_to_image(torch.from_numpy(reference)).numpy(), 0, 255).astype(np.uint8)
    assert np.array_equal(ours, reference)
    pixels = torch.randint(0, 256, (2, 5, 7, 3), dtype=torch.uint8)
    image = iv.uint8_to_image(pixels)
    assert image.dtype == torch.float32 and image.shape == pixels.shape
    assert torch.equal(torch.from_numpy(np.clip(255. * image.numpy(), 0, 255).astype(np.uint8)), pixels)
    with pytest.raises(ValueError):
        iv.uint8_to_image(pixels.float())


def test_safety_placeholder_warning(pack):
    ln = pack["latent_nodes"]
    grey = np.full((256, 256, 3), 128, dtype=np.uint8)
    grey[120:136, 60:196] = 30  # a line of dark "text"
    photo = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)
    lines = ln.safety_warnings(torch.from_numpy(np.stack([photo, grey])))
    assert len(lines) == 1 and "image 1" in lines[0] and "JSON caption" in lines[0] and "never bypassed" in lines[0]
    assert ln.safety_warnings(torch.from_numpy(photo[None])) == []


def test_conditioning_contract(pack):
    c = pack["conditioning"]
    feats = torch.randn(2, 5, 13 * 4)
    cond = c.make_conditioning(feats, [5, 3], ["a", "b"])
    f, lengths, ours = c.text_from_conditioning(cond)
    assert f is feats and lengths == [5, 3] and ours
    one = c.make_conditioning(feats[:1], [5])
    f2, l2 = c.batch_text(*c.text_from_conditioning(one)[:2], 3)
    assert f2.shape == (3, 5, 52) and l2 == [5, 5, 5]
    with pytest.raises(ValueError, match="2 captions for a batch of 3"):
        c.batch_text(feats, [5, 3], 3)
    with pytest.raises(ValueError, match="one caption per image"):
        c.text_from_conditioning(cond + cond)
    assert cond[0][1] == {"text_lengths": [5, 3], c.MARKER: True, "ideogram4_captions": ["a", "b"]}
    assert "ideogram4_captions" not in one[0][1]
    with pytest.raises(ValueError, match="^1 text lengths for a batch of 2$"):
        c.make_conditioning(feats, [5])
    core = [[torch.randn(1, 4, 8), {}]]  # e.g. core ConditioningZeroOut-style entry without lengths
    assert c.text_from_conditioning(core)[1:] == ([4], False)
    assert c.text_from_conditioning([[torch.randn(2, 4, 8), {}]])[1] == [4, 4]  # one length per image
    padded = [[torch.randn(1, 4, 8), {"attention_mask": torch.tensor([[0, 1, 1, 1]])}]]
    with pytest.raises(ValueError, match="padded"):
        c.text_from_conditioning(padded)
    # core ConditioningConcat joins two captions' features along the tokens and keeps the first one's text_lengths
    concat = [[torch.cat([feats[:1], feats[1:]], dim=1), {"text_lengths": [5], c.MARKER: True}]]
    with pytest.raises(ValueError, match=r"hold 10 token rows but the caption\(s\) 5 .*ConditioningConcat"):
        c.text_from_conditioning(concat)


def test_feature_width_is_checked_against_the_dit(pack):
    c = pack["conditioning"]
    cond = c.make_conditioning(torch.zeros(1, 58, 13 * 2560), [58])  # a Qwen3-4B-like (2560-wide) text encoder
    c.check_feature_width(cond, 13 * 2560)
    with pytest.raises(ValueError) as info:
        c.check_feature_width(cond, 13 * 4096)
    assert str(info.value) == (
        "positive: the text encoder gives 13 × 2560 features, this DiT expects 13 × 4096 (Qwen3-VL-8B's): load "
        "qwen3vl_8b_fp8_scaled.safetensors (or the official repository's text_encoder/) in Ideogram4 Text Encoder "
        "Loader")
    with pytest.raises(ValueError, match=r"^positive: the text encoder gives 13 × 32 features, this DiT expects "
                                         r"13 × 64: load the text encoder that belongs to this DiT"):
        c.check_feature_width(c.make_conditioning(torch.zeros(1, 4, 13 * 32), [4]), 13 * 64)


def test_unconditional_auto_pairing(pack):
    auto = pack["folders"].auto_unconditional
    files = ["ideogram4_fp8_scaled.safetensors", "ideogram4_unconditional_fp8_scaled.safetensors",
             "sub/i4_bf16.safetensors", "sub/i4_unconditional_bf16.safetensors", "x_cond.safetensors",
             "x_uncond.safetensors", "lonely.safetensors"]
    assert auto("ideogram4_fp8_scaled.safetensors", files) == "ideogram4_unconditional_fp8_scaled.safetensors"
    assert auto("sub/i4_bf16.safetensors", files) == "sub/i4_unconditional_bf16.safetensors"
    assert auto("x_cond.safetensors", files) == "x_uncond.safetensors"
    assert auto("lonely.safetensors", files) is None


def test_unconditional_auto_error_lists_the_names_it_looked_for(pack, monkeypatch):
    monkeypatch.setattr(pack["folders"], "list_files", lambda *a, **k: ["sub/i4_cond_bf16.safetensors", "x.gguf"])
    with pytest.raises(ValueError) as info:
        pack["loader_nodes"].auto_unconditional_file("sub/i4_cond_bf16.safetensors")
    assert str(info.value) == (
        "unconditional = auto found no unconditional file for 'sub/i4_cond_bf16.safetensors' in the diffusion_models "
        "folders (looked for sub/i4_uncond_bf16.safetensors, sub/unconditional_i4_cond_bf16.safetensors, "
        "sub/i4_unconditional_cond_bf16.safetensors, sub/i4_cond_unconditional_bf16.safetensors, "
        "sub/i4_cond_bf16_unconditional.safetensors); choose the unconditional file explicitly")


def test_guidance_without_unconditional_names_unconditional_from_lora(pack):
    from types import SimpleNamespace

    ss = pack["sampler_settings"]
    plain, from_lora = SimpleNamespace(model=SimpleNamespace()), SimpleNamespace(model=SimpleNamespace())
    setattr(from_lora.model, ss.FROM_LORA_MARK, True)
    for model in (plain, from_lora):
        ss.require_guidance_without_unconditional(model, (1.0, 1.0))  # guidance 1: the conditional pass alone
    with pytest.raises(ValueError) as info:
        ss.require_guidance_without_unconditional(from_lora, (7.0, 3.0))
    assert str(info.value) == (
        "no unconditional model (unconditional: none (from a LoRA)) needs guidance 1 at every step; got 7 at step 1 of "
        "2 — connect Ideogram4 Unconditional From LoRA → unconditional_model (its model ← the loader's model, "
        "lora_name = the unconditional LoRA), or set preset 'custom' with guidance 1 and polish_steps 0")
    with pytest.raises(ValueError) as info:
        ss.require_guidance_without_unconditional(plain, (1.0, 3.0))
    assert str(info.value) == (
        "no unconditional model (unconditional: none) needs guidance 1 at every step; got 3 at step 2 of 2 — set "
        "preset 'custom' with guidance 1 and polish_steps 0, or load an unconditional model")


def test_connected_latent_skips_size_validation_and_reports_unused_widgets(pack):
    sn = pack["sampler_nodes"]
    for node in (sn.Ideogram4NativeKSampler, sn.Ideogram4NativeSigmas):
        # ComfyUI passes None for a linked input: the latent sets the size, stale widget values are not checked
        assert node.validate_inputs(100, 1024, latent=None) is True
        msg = node.validate_inputs(4096, 1024)  # no latent: the widgets are the size and are checked
        assert msg is not True and "width" in msg
    ss = pack["sampler_settings"]
    assert ss.unused_widgets_note("custom", ss.SCHEDULE_WIDGETS) is None
    assert ss.unused_widgets_note("custom", ss.GUIDANCE_WIDGETS, "") is None
    assert ss.unused_widgets_note("custom", ss.GUIDANCE_WIDGETS, "  ") is None  # blank: no schedule (as _schedule)
    assert ss.unused_widgets_note("custom", ss.SCHEDULE_WIDGETS, "7,3") is None  # a node without guidance widgets
    assert ss.unused_widgets_note("custom", ss.GUIDANCE_WIDGETS, "7,7,7,3") == (
        "guidance_schedule gives every step's guidance: guidance, polish_steps, polish_guidance not used")
    assert ss.unused_widgets_note("V4_TURBO_12", ss.SCHEDULE_WIDGETS + ss.GUIDANCE_WIDGETS) == (
        "preset V4_TURBO_12 ran: steps, mu, std, guidance, polish_steps, polish_guidance, guidance_schedule not used "
        "(custom only)")
    assert sn.size_note(768, 512, 2, "width/height/batch_size") == (
        "size 768×512, batch 2 from the latent (width/height/batch_size widgets not used)")
    # the custom-only names are real inputs of the nodes (the JS greys out the same names)
    ks = {i.id for i in sn.Ideogram4NativeKSampler.define_schema().inputs}
    assert set(ss.SCHEDULE_WIDGETS + ss.GUIDANCE_WIDGETS) <= ks
    # ... and js/lib/node_ui.js holds the same lists, in the same order
    import json
    import re
    from pathlib import Path

    js = (Path(__file__).resolve().parents[1] / "js" / "lib" / "node_ui.js").read_text(encoding="utf-8")
    for name in ("SCHEDULE_WIDGETS", "GUIDANCE_WIDGETS"):
        listed = re.search(rf"export const {name} = Object\.freeze\((\[[^\]]*\])\);", js)
        assert listed and tuple(json.loads(listed.group(1))) == getattr(ss, name), name
