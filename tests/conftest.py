"""Shared fixtures: tiny DiT checkpoints written by the project's own tool, in every format."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.cpu_math import warm_vector_math
from tools.make_test_checkpoints import FORMATS, convert, random_state_dict, tiny_config, write_file

torch.set_num_threads(min(2, torch.get_num_threads()))
warm_vector_math()  # the first multi-threaded sin/cos/exp of a process can round differently: model/cpu_math.py

DATA = Path(__file__).parent / "data"
COND_SEED, UNCOND_SEED = 0, 1


@pytest.fixture(scope="session")
def tiny_cfg():
    return tiny_config()


@pytest.fixture(scope="session")
def tiny_weights(tiny_cfg):
    """Seeded float32 official-layout weights: (conditional, unconditional)."""
    return random_state_dict(tiny_cfg, COND_SEED), random_state_dict(tiny_cfg, UNCOND_SEED)


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory, tiny_weights) -> dict[str, dict[str, Path]]:
    """{format: {"cond": path, "uncond": path}} for every supported file format."""
    root = tmp_path_factory.mktemp("dit_ckpts")
    cond, uncond = tiny_weights
    return {fmt: {"cond": write_file(convert(cond, fmt), root / f"cond_{fmt}.safetensors", fmt),
                  "uncond": write_file(convert(uncond, fmt), root / f"uncond_{fmt}.safetensors", fmt)}
            for fmt in FORMATS}


@pytest.fixture
def tiny_forwards(tiny_cfg):
    """``run(path)`` → (model, [conditional, image-only] outputs): a DiT file through the loader in bf16, on fixed
    inputs (15 image tokens, 6 text tokens, t = 0.7)."""
    from model.dit import load_transformer

    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 15, tiny_cfg.in_channels, generator=g)
    feats = torch.randn(1, 6, tiny_cfg.llm_features_dim, generator=g)

    def run(path):
        model = load_transformer(path, dtype=torch.bfloat16)
        with torch.no_grad():
            return model, [model(x, torch.tensor([0.7]), f, grid_hw=(3, 5)) for f in (feats, None)]

    return run


# The compiled kernels' tests (test_fp8_fused, test_gguf_fused, test_nf4_fused, test_fp8_activations) name their module ``FUSED`` and how a call to its
# kernel is recorded, ``CALL_KEY(*variant, *args)``; ``policy``, ``counted`` and ``corrupt_kernel`` work on that module.

@pytest.fixture
def policy(request, monkeypatch):
    """``set_to(value)``: the test module's ``FUSED.ENV`` policy for one test; probes forgotten before and after."""
    module = request.module.FUSED

    def set_to(value: str) -> None:
        monkeypatch.setenv(module.ENV, value)
        module.forget_probes()

    module.forget_probes()
    yield set_to
    module.forget_probes()


@pytest.fixture
def counted(request, monkeypatch) -> list:
    """Every call that reaches one of ``FUSED``'s compiled kernels (probe calls included), as ``CALL_KEY`` records
    it: ``FUSED._compiled(*variant)`` is wrapped."""
    module, key = request.module.FUSED, request.module.CALL_KEY
    calls = []
    real = module._compiled

    def compiled(*variant):
        fn = real(*variant)

        def wrapper(*args):
            calls.append(key(*variant, *args))
            return fn(*args)
        return wrapper

    monkeypatch.setattr(module, "_compiled", compiled)
    return calls


@pytest.fixture
def corrupt_kernel(request, monkeypatch):
    """``corrupt_kernel(change)``: ``FUSED``'s compiled kernels return their real result passed through ``change``
    (one value nudged by an ulp, say) — what a compiler that rounds differently would give."""
    module = request.module.FUSED

    def install(change) -> None:
        real = module._compiled

        def compiled(*variant):
            fn = real(*variant)
            return lambda *args: change(fn(*args))

        monkeypatch.setattr(module, "_compiled", compiled)
    return install


def pytest_report_header(config):
    from kernel_family import describe
    return describe()
