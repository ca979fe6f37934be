"""Schedule, presets and sampler contract (values from spec §5.2–5.7 and the reference code)."""

from __future__ import annotations

import contextlib

import math

import pytest
import torch

from sampling import PRESETS, check_resolution, custom_settings, draw_noise, resolve_settings, sample, sigmas, time_grid
from sampling.presets import MAX_STEPS, parse_guidance_list
from sampling.schedule import T_MAX, T_MIN

SPEC_SIGMAS_1024 = {
    "V4_DEFAULT_20": "0.999877 0.972659 0.949591 0.924625 0.897153 0.866863 0.833529 0.796969 0.757037 0.713625 "
                     "0.666667 0.616150 0.562125 0.504709 0.444096 0.380551 0.314387 0.245898 0.175149 0.101074 0.000553",
    "V4_TURBO_12": "0.999877 0.973747 0.947157 0.914784 0.875110 0.826554 0.767303 0.695275 0.608110 0.503197 "
                   "0.377578 0.226691 0.000553",
    "V4_QUALITY_48": "0.999877 0.976987 0.964106 0.952317 0.940902 0.929589 0.918240 0.906773 0.895133 0.883280 "
                     "0.871185 0.858822 0.846171 0.833215 0.819938 0.806326 0.792365 0.778042 0.763345 0.748263 "
                     "0.732783 0.716895 0.700588 0.683849 0.666667 0.649030 0.630927 0.612345 0.593271 0.573691 "
                     "0.553590 0.532953 0.511762 0.489997 0.467636 0.444654 0.421020 0.396698 0.371642 0.345795 "
                     "0.319084 0.291407 0.262624 0.232527 0.200793 0.166862 0.129617 0.086109 0.000553",
}


@pytest.mark.parametrize("name", list(SPEC_SIGMAS_1024))
def test_sigmas_at_1024_match_spec_table(name):
    p = PRESETS[name]
    ours = sigmas(p.steps, p.mu, p.std, 1024, 1024)
    spec = torch.tensor([float(v) for v in SPEC_SIGMAS_1024[name].split()])
    assert ours.shape == (p.steps + 1,)
    assert torch.allclose(ours, spec, atol=6e-7)


def test_time_grid_endpoints_and_dtype():
    t = time_grid(20, 0.0, 1.75, 1024, 1024)
    assert t.dtype == torch.float32
    assert float(t[0]) == pytest.approx(T_MAX, abs=1e-7) and float(t[-1]) == pytest.approx(T_MIN, rel=1e-6)
    assert T_MIN == pytest.approx(1.2339457598623172e-4) and T_MAX == pytest.approx(0.9994472213630764)


def test_bf16_time_rounding_vector_from_spec():
    t = time_grid(20, 0.0, 1.75, 1024, 1024).flip(0)  # sampling order
    for k, fp32, bf16 in [(0, 0.00012339, 0.00012302), (1, 0.02734114, 0.02734375), (9, 0.28637522, 0.28710938),
                          (10, 0.33333334, 0.33398438), (18, 0.82485133, 0.82421875), (19, 0.89892590, 0.89843750)]:
        assert float(t[k]) == pytest.approx(fp32, abs=5e-8)
        assert float(t[k].to(torch.bfloat16)) == pytest.approx(bf16, abs=1e-8)  # spec rounds to 8 digits


def test_time_grid_is_the_spec_recipe_bit_for_bit():
    """Spec §5.2: u = linspace(0, 1, N+1) built in float32 and only then widened to float64 (the reference);
    a float64 grid (diffusers, core) moves some t by one float32 ulp, which the 6-digit table cannot see."""
    mean = 0.5 * math.log(1024 * 768 / (512 * 512))
    u32 = torch.linspace(0.0, 1.0, 21, dtype=torch.float32).to(torch.float64)
    u64 = torch.linspace(0.0, 1.0, 21, dtype=torch.float64)

    def recipe(u):
        return (1 - torch.special.expit(mean + 1.75 * torch.special.ndtri(u))).clamp(T_MIN, T_MAX).to(torch.float32)

    assert not torch.equal(recipe(u32), recipe(u64))  # the two grids are distinguishable here
    assert torch.equal(time_grid(20, 0.0, 1.75, 1024, 768), recipe(u32))
    # σ = 1 − t rounded once: the same bits as float32 arithmetic (correctly rounded), given back exactly
    assert torch.equal(sigmas(20, 0.0, 1.75, 1024, 768), (1 - recipe(u32)).flip(0))


@pytest.mark.parametrize("steps", [0, -1, 2.0])
def test_time_grid_refuses_a_non_positive_or_non_integer_step_count(steps):
    with pytest.raises(ValueError, match=rf"steps must be a positive integer, got {steps!r}"):
        time_grid(steps, 0.0, 1.75, 1024, 1024)


def test_resolution_shift_changes_schedule():
    assert not torch.equal(sigmas(20, 0.0, 1.75, 512, 512), sigmas(20, 0.0, 1.75, 2048, 2048))
    # mean = mu + 0.5 ln(HW / 512²): the 512² schedule with mu = ln 2 equals 1024² with mu = 0
    assert torch.allclose(sigmas(20, 0.6931471805599453, 1.75, 512, 512), sigmas(20, 0.0, 1.75, 1024, 1024))


@pytest.mark.parametrize("name,steps,mu,std,polish", [("V4_QUALITY_48", 48, 0.0, 1.5, 3),
                                                      ("V4_DEFAULT_20", 20, 0.0, 1.75, 2),
                                                      ("V4_TURBO_12", 12, 0.5, 1.75, 1)])
def test_presets_and_guidance_order(name, steps, mu, std, polish):
    p = PRESETS[name]
    assert (p.steps, p.mu, p.std) == (steps, mu, std)
    # Sampling order: high guidance first, the last `polish` steps at 3.
    assert p.guidance == (7.0,) * (steps - polish) + (3.0,) * polish
    # Reference storage (loop-index order): index 0 is the LAST step.
    assert p.loop_order_guidance == (3.0,) * polish + (7.0,) * (steps - polish)


def test_custom_settings():
    s = custom_settings(10, 0.2, 1.2, 5.0, polish_steps=2, polish_guidance=2.0)
    assert s.guidance == (5.0,) * 8 + (2.0,) * 2
    assert custom_settings(3, 0.0, 1.0, [9, 8, 7]).guidance == (9.0, 8.0, 7.0)
    assert parse_guidance_list("7, 7 ,3") == [7.0, 7.0, 3.0]
    assert parse_guidance_list("7 6.5\t3") == [7.0, 6.5, 3.0]  # whitespace alone separates too
    assert custom_settings(2, 0.0, 1.0, 5.0, polish_steps=2).guidance == (3.0, 3.0)  # every step polished
    assert custom_settings(MAX_STEPS, 0.0, 1.0).steps == MAX_STEPS
    # custom without a guidance: the presets' 7 at every step
    assert resolve_settings(steps=4, mu=0.0, std=1.0) == custom_settings(4, 0.0, 1.0, [7.0] * 4)


@pytest.mark.parametrize("call,message", [
    (lambda: resolve_settings("V4_FAST"), "unknown preset 'V4_FAST'"),
    (lambda: custom_settings(4, 0.0, 1.0, [7.0, 3.0]), "has 2 values but steps = 4"),
    (lambda: custom_settings(4, 0.0, 1.0, 7.0, polish_steps=5), "polish_steps = 5 is outside 0–4"),
    (lambda: custom_settings(0, 0.0, 1.0), "steps = 0 is outside"),
    (lambda: custom_settings(4, 0.0, 0.0), "std = 0.0 must be > 0"),
    (lambda: resolve_settings("V4_TURBO_12", steps=3), "either a preset or"),
    (lambda: resolve_settings("V4_TURBO_12", guidance=3.0), "either a preset or"),
    (lambda: custom_settings(MAX_STEPS + 1, 0.0, 1.0), f"steps = {MAX_STEPS + 1} is outside the allowed range 1–{MAX_STEPS}"),
    (lambda: custom_settings(2, 0.0, 1.0, [7.0, 3.0], polish_steps=1), "polish_steps applies to a constant guidance"),
    (lambda: parse_guidance_list("7, x"), "must be numbers"),
])
def test_settings_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("w,h,message", [
    (1000, 1024, "width = 1000 is not a multiple of 16"),
    (1024, 240, "height = 240 is outside the supported range 256–2048"),
    (2064, 1024, "width = 2064 is outside"),
    (2048, 336, "exceeds the supported 6:1"),
    (1020, 1024, r"\(try width = 1024\)"),  # the nearest multiple of 16, not the one below
    (True, 1024, "width must be an integer number of pixels, got True"),
    (1024, 1024.0, "height must be an integer number of pixels, got 1024.0"),
])
def test_resolution_errors(w, h, message):
    with pytest.raises(ValueError, match=message):
        check_resolution(w, h)


def test_resolution_limits_accepted():
    check_resolution(256, 256)
    check_resolution(2048, 2048)
    check_resolution(1536, 256)  # exactly 6:1


def test_noise_is_token_layout_fp32_from_seeded_generator():
    z = draw_noise(2, 3, 5, seed=42)
    g = torch.Generator().manual_seed(42)
    assert z.shape == (2, 15, 128) and z.dtype == torch.float32
    assert torch.equal(z, torch.randn(2, 15, 128, generator=g))


class _Recorder:
    """A stand-in model recording (t, has_text) and returning a constant velocity."""

    def __init__(self, value):
        self.calls, self.value, self.lengths, self.runs = [], value, [], []

    def __call__(self, x, t, text_features=None, *, grid_hw, text_lengths=None):
        self.calls.append((float(t[0]), text_features is not None, grid_hw))
        self.lengths.append(text_lengths)
        return torch.full_like(x, self.value)

    @contextlib.contextmanager
    def sampling_run(self):  # what Ideogram4DiT offers: step-invariant inputs computed once per run
        self.runs.append(len(self.calls))
        yield
        self.runs.append(len(self.calls))


def test_loop_order_times_guidance_and_image_only_uncond():
    cond, uncond = _Recorder(1.0), _Recorder(0.0)
    steps = []
    z = sample(cond, uncond, torch.zeros(1, 4, 8), height=256, width=512, preset="V4_TURBO_12", seed=0,
               callback=lambda k, n, x: steps.append((k, n)))
    t = time_grid(12, 0.5, 1.75, 512, 256)
    assert [c[0] for c in cond.calls] == [float(t[i + 1]) for i in range(11, -1, -1)]
    assert [c[0] for c in uncond.calls] == [c[0] for c in cond.calls]  # same t, every step, incl. polish
    assert all(c[1] for c in cond.calls) and not any(c[1] for c in uncond.calls)
    assert cond.calls[0][2] == (16, 32)
    assert steps == [(k, 12) for k in range(12)]
    # v = g·1 + (1−g)·0 = g: z = noise + Σ g_i (s_i − t_i)
    expected = sum(g * (float(t[i]) - float(t[i + 1])) for i, g in enumerate(PRESETS["V4_TURBO_12"].loop_order_guidance))
    assert torch.allclose(z - draw_noise(1, 16, 32, 0), torch.full_like(z, expected), atol=1e-5)


def test_every_step_runs_inside_each_models_sampling_run_with_the_text_lengths():
    cond, uncond = _Recorder(1.0), _Recorder(0.0)
    sample(cond, uncond, torch.zeros(2, 6, 8), height=256, width=256, preset="V4_TURBO_12", text_lengths=[6, 3])
    assert cond.runs == [0, 12] and uncond.runs == [0, 12]  # entered before the first step, left after the last
    assert cond.lengths == [[6, 3]] * 12 and uncond.lengths == [None] * 12  # the image-only pass has no text
    same = _Recorder(0.5)
    sample(same, same, torch.zeros(1, 4, 8), height=256, width=256, preset="V4_TURBO_12")
    assert same.runs == [0, 24]  # one model for both passes: one run


def test_callback_can_interrupt():
    class Stop(Exception):
        pass

    def cb(k, n, x):
        if k == 2:
            raise Stop

    cond = _Recorder(0.0)
    with pytest.raises(Stop):
        sample(cond, _Recorder(0.0), torch.zeros(1, 4, 8), height=256, width=256, preset="V4_QUALITY_48", callback=cb)
    assert len(cond.calls) == 3


def test_batch_index_picks_the_rows_of_the_batch_draw():
    """Core Latent From Batch → re-sample item i alone with the same seed: the noise item i had in its batch."""
    from sampling import draw_noise

    full = draw_noise(3, 4, 5, seed=11)
    assert torch.equal(draw_noise(1, 4, 5, seed=11, batch_index=[2]), full[2:3])
    assert torch.equal(draw_noise(2, 4, 5, seed=11, batch_index=[2, 0]), full[[2, 0]])
    assert torch.equal(draw_noise(3, 4, 5, seed=11, batch_index=[0, 1, 2]), full)
    # the batch size the latent carries: item 0 of 3 from a draw of all 3 (what CUDA needs: no prefix rule there)
    drawn = []
    real = torch.randn
    try:
        torch.randn = lambda *a, **k: drawn.append(a[0]) or real(*a, **k)
        assert torch.equal(draw_noise(1, 4, 5, seed=11, batch_index=[0], drawn=3), full[0:1])
    finally:
        torch.randn = real
    assert drawn == [3]
    for bad in ([0, 1], [-1]):  # one index per latent, none negative
        with pytest.raises(ValueError, match=r"batch_index .* must list one item index ≥ 0 per latent \(the batch has 1\)"):
            draw_noise(1, 4, 5, seed=11, batch_index=bad)
    with pytest.raises(ValueError, match=r"batch_index \[0\] must list one item index ≥ 0 per latent \(the batch has 2\)"):
        draw_noise(2, 4, 5, seed=11, batch_index=[0])
