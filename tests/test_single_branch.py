"""Model Loader 'unconditional: none': the reference loop with no unconditional model (CFG-distilled)."""

from __future__ import annotations

import pytest
import torch

from model import load_transformer
from sampling import sample


def test_single_branch_sampling_is_the_guidance_1_loop_without_the_unconditional_pass(tiny_files):
    cond = load_transformer(tiny_files["bf16"]["cond"])
    uncond = load_transformer(tiny_files["bf16"]["uncond"], image_only=True)
    calls = []
    uncond.register_forward_hook(lambda *a: calls.append(1))
    feats = torch.randn(1, 5, cond.config.llm_features_dim, generator=torch.Generator().manual_seed(0))
    kw = dict(height=256, width=256, steps=3, mu=0.0, std=1.0, guidance=1.0, seed=4)
    single = sample(cond, None, feats, **kw)
    assert not calls
    both = sample(cond, uncond, feats, **kw)  # g = 1: 1·v_cond + 0·v_uncond
    assert calls and torch.equal(single, both)


def test_single_branch_needs_guidance_1(tiny_files):
    cond = load_transformer(tiny_files["bf16"]["cond"])
    feats = torch.zeros(1, 5, cond.config.llm_features_dim)
    with pytest.raises(ValueError, match=r"unconditional: none\) needs guidance 1 at every step; got 7 at step 1 of 3"):
        sample(cond, None, feats, height=256, width=256, steps=3, mu=0.0, std=1.0, guidance=7.0)
    with pytest.raises(ValueError, match=r"got 0.5 at step 2 of 3"):  # below 1 is not the conditional pass either
        sample(cond, None, feats, height=256, width=256, steps=3, mu=0.0, std=1.0, guidance=[1.0, 0.5, 1.0])
