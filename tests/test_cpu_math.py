"""The loaders' vector-math warm-up (``model/cpu_math.py``): a process's first multi-threaded sin/cos/exp can
round differently from every later call (measured on Intel Xeon AMX, torch 2.13, 2 threads: 3 of 16 processes);
after ``warm_vector_math`` the first large call equals the later ones in every fresh process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.cpu_math import warm_vector_math

ROOT = Path(__file__).resolve().parents[1]
# Qwen3-VL's RoPE angles at 512 positions (the table whose cos changed): 65,536 elements, two threads' worth
PROBE = """
import hashlib, sys, torch
sys.path.insert(0, {root!r})
torch.set_num_threads(2)
from model.cpu_math import warm_vector_math
warm_vector_math()
inv = 1.0 / (5000000.0 ** (torch.arange(0, 128, 2, dtype=torch.float32) / 128))
emb = torch.outer(torch.arange(512, dtype=torch.float32), inv)
emb = torch.cat([emb, emb], -1)[None]
first = emb.{op}()
print(torch.equal(first, emb.{op}()), hashlib.sha256(first.numpy().tobytes()).hexdigest())
"""


def test_first_large_call_after_the_warm_up_equals_the_later_ones_in_fresh_processes():
    """12 fresh processes (without the warm-up about 1 in 6 differ on the racing CPU, so a regression there is
    caught with ≈ 89 % probability; a CPU without the race passes either way)."""
    if torch.get_num_threads() < 2:
        pytest.skip("one thread: nothing races")
    code = PROBE.format(root=str(ROOT), op="cos")
    results = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
               for _ in range(12)}
    assert len(results) == 1 and next(iter(results)).startswith("True "), results


def test_every_loader_warms_up_before_it_opens_the_file(tiny_files, tmp_path, monkeypatch):
    import model.dit.loading as dit_loading
    import model.text_encoder.loading as te_loading
    import model.vae.loading as vae_loading
    from tools import make_test_text_encoder as mk
    from tools.make_test_vae import write_vae

    te = mk.write_layout("official_bf16", tmp_path)
    vae = write_vae(tmp_path / "vae.safetensors", "bfl", with_encoder=True)
    order = []
    for module in (dit_loading, te_loading, vae_loading):
        monkeypatch.setattr(module, "warm_vector_math", lambda: order.append("warm"))
        opener = module.open_checkpoint
        monkeypatch.setattr(module, "open_checkpoint",
                            lambda *a, _open=opener, **k: order.append("open") or _open(*a, **k))
    for load in (lambda: dit_loading.load_transformer(tiny_files["bf16"]["cond"]),
                 lambda: te_loading.load_text_encoder(te, taps=(0, 1)),
                 lambda: vae_loading.load_vae(vae), lambda: vae_loading.load_vae_encoder(vae)):
        order.clear()
        load()
        assert order[:2] == ["warm", "open"], order
