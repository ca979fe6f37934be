"""Parity of the native DiT and sampler with the official reference implementation.

Golden tensors in ``data/dit_golden.safetensors`` were produced once by running the official
reference (``RyukoMatoiFan/ideogram4`` @ 415abf4: ``Ideogram4Transformer`` and
``Ideogram4Pipeline.__call__`` with tokenisation/encoding/decoding stubbed out) on the weights
``tools.make_test_checkpoints.random_state_dict(tiny_config(), seed)`` — seed 0 conditional,
seed 1 unconditional, head_dim 256, 2 layers, 2 heads, text width 13×32 — loaded with
``load_state_dict`` and ``.to(dtype)`` exactly as the reference's loader does.  Inputs
(``tools.make_test_checkpoints.parity_inputs``): ``torch.Generator().manual_seed(s)`` draws text features (B, L_max, 416)
with left-padding rows zeroed, then x (B, N, 128).  Forward cases use a 3×5 token grid and
t = 0.8989259 (single) or (0.3, 0.7) (padded batch of lengths 7 and 4).  Sampling cases run at
384×256 px (24×16 tokens) with each official preset at full length, seed 1234, text features
from seed 12 with 9 tokens (batch case: seeds 13/99, lengths 9 and 5, Turbo 12).

Goldens are kept per CPU kernel family (``tests/kernel_family.py``, ``data/golden_families.json``): the
file in ``data/`` is the AMD EPYC (avx512_bf16) family's, ``data/families/xeon-amx/`` holds the same recipe
recorded on an Intel Xeon with AMX by ``python -m tools.record_goldens`` (module ``dit``), where bf16 CPU
kernels round differently (the reference and ours agree bit for bit on each machine).
"""

from __future__ import annotations

import pytest
import torch

from model import load_transformer
from sampling import PRESETS, sample

from kernel_family import Goldens
from tools.make_test_checkpoints import parity_inputs

GOLDEN = Goldens("dit_golden.safetensors")  # per CPU kernel family: tests/kernel_family.py
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# fp32: max |ours − ref| relative to the output scale; bf16: the reference's own rounding is reproduced.
TOL = {"fp32": 1e-5, "bf16": 1e-6}
# On a CPU no family recorded: twice the largest deviation between the reference's own runs on two families
# (AMD EPYC vs Intel Xeon AMX: bf16 forward 4.0e-3, bf16 Turbo-12 sample 3.1e-3, fp32 1.2e-6 of max |x|).
BOUND = {"fp32": 1e-5, "bf16": 1e-2}


_inputs = parity_inputs


def _rel_err(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    return float((ours - ref).abs().max() / ref.abs().max())


def _expect(key: str, out: torch.Tensor, name: str) -> None:
    """``out`` reproduces the reference's ``key``: within ``TOL`` on this CPU family, ``BOUND`` elsewhere."""
    GOLDEN.expect(key, out, equal=lambda o, g: _rel_err(o, g) <= TOL[name],
                  bound=lambda o, g: _rel_err(o, g) <= BOUND[name])


@pytest.fixture(scope="module", params=list(DTYPES))
def models(request, tiny_files):
    dtype = DTYPES[request.param]
    cond = load_transformer(tiny_files["fp32"]["cond"], dtype=dtype)
    uncond = load_transformer(tiny_files["fp32"]["uncond"], dtype=dtype)
    return request.param, cond, uncond


def test_conditional_forward_with_text(models, tiny_cfg):
    name, cond, _ = models
    feats, x = _inputs(10, [7], 15, tiny_cfg.llm_features_dim)
    out = cond(x, torch.tensor([0.8989259]), feats, grid_hw=(3, 5))
    _expect(f"{name}.cond", out, name)


def test_image_only_unconditional_forward(models, tiny_cfg):
    name, _, uncond = models
    feats, x = _inputs(10, [7], 15, tiny_cfg.llm_features_dim)
    out = uncond(x, torch.tensor([0.8989259]), None, grid_hw=(3, 5))
    _expect(f"{name}.uncond", out, name)


def test_left_padded_batch_of_two_captions(models, tiny_cfg):
    name, cond, _ = models
    feats, x = _inputs(11, [7, 4], 15, tiny_cfg.llm_features_dim)
    out = cond(x, torch.tensor([0.3, 0.7]), feats, grid_hw=(3, 5), text_lengths=[7, 4])
    _expect(f"{name}.padded", out, name)


def test_padded_sample_equals_its_unpadded_run(models, tiny_cfg):
    """The segment mask isolates padding: caption 2 padded in a batch == caption 2 alone."""
    name, cond, _ = models
    feats, x = _inputs(11, [7, 4], 15, tiny_cfg.llm_features_dim)
    t = torch.tensor([0.3, 0.7])
    batched = cond(x, t, feats, grid_hw=(3, 5), text_lengths=[7, 4])
    alone = cond(x[1:], t[1:], feats[1:, 3:], grid_hw=(3, 5))
    assert torch.allclose(batched[1], alone[0], rtol=0, atol=1e-5 if name == "fp32" else 0.05)


def test_non_square_grid_positions_matter(models, tiny_cfg):
    """3×5 and 5×3 grids give different outputs for the same tokens (row-major positions are used)."""
    _, cond, _ = models
    feats, x = _inputs(10, [7], 15, tiny_cfg.llm_features_dim)
    t = torch.tensor([0.5])
    assert not torch.allclose(cond(x, t, feats, grid_hw=(3, 5)), cond(x, t, feats, grid_hw=(5, 3)))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_full_sample_matches_reference_latents_fp32(preset, tiny_files, tiny_cfg):
    cond = load_transformer(tiny_files["fp32"]["cond"], dtype=torch.float32)
    uncond = load_transformer(tiny_files["fp32"]["uncond"], dtype=torch.float32)
    feats, _ = _inputs(12, [9], 1, tiny_cfg.llm_features_dim)
    z = sample(cond, uncond, feats, height=256, width=384, preset=preset, seed=1234)
    _expect(f"fp32.sample.{preset}", z, "fp32")


def test_batched_sample_with_padding_matches_reference(tiny_files, tiny_cfg):
    cond = load_transformer(tiny_files["fp32"]["cond"], dtype=torch.float32)
    uncond = load_transformer(tiny_files["fp32"]["uncond"], dtype=torch.float32)
    feats, _ = _inputs(13, [9, 5], 1, tiny_cfg.llm_features_dim)
    z = sample(cond, uncond, feats, height=256, width=384, preset="V4_TURBO_12", seed=99, text_lengths=[9, 5])
    _expect("fp32.sample.batch2.V4_TURBO_12", z, "fp32")


def test_bf16_sample_reproduces_reference_bit_for_bit(tiny_files, tiny_cfg):
    cond = load_transformer(tiny_files["fp32"]["cond"], dtype=torch.bfloat16)
    uncond = load_transformer(tiny_files["fp32"]["uncond"], dtype=torch.bfloat16)
    feats, _ = _inputs(12, [9], 1, tiny_cfg.llm_features_dim)
    z = sample(cond, uncond, feats, height=256, width=384, preset="V4_TURBO_12", seed=1234)
    _expect("bf16.sample.V4_TURBO_12", z, "bf16")


def test_image_only_unconditional_model_matches_reference(models, tiny_cfg, tiny_files):
    """Loading the unconditional model without its (unused) text projection changes nothing."""
    name = models[0]
    uncond = load_transformer(tiny_files["fp32"]["uncond"], dtype=DTYPES[name], image_only=True)
    feats, x = _inputs(10, [7], 15, tiny_cfg.llm_features_dim)
    out = uncond(x, torch.tensor([0.8989259]), None, grid_hw=(3, 5))
    _expect(f"{name}.uncond", out, name)
