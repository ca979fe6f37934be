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


@pytest.mark.parametrize("op", ["cos", "sin"])
def test_first_large_call_after_the_warm_up_equals_the_later_ones_in_fresh_processes(op):
    if torch.get_num_threads() < 2:
        pytest.skip("one thread: nothing races")
    code = PROBE.format(root=str(ROOT), op=op)
    results = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
               for _ in range(4)}
    assert len(results) == 1 and next(iter(results)).startswith("True "), results


def test_every_loader_warms_up_first(tiny_files, tmp_path):
    from model.dit.loading import load_transformer
    from model.text_encoder import load_text_encoder
    from model.vae.loading import load_vae, load_vae_encoder
    from tools import make_test_text_encoder as mk
    from tools.make_test_vae import write_vae

    te = mk.write_layout("official_bf16", tmp_path)
    vae = write_vae(tmp_path / "vae.safetensors", "bfl", with_encoder=True)
    for load in (lambda: load_transformer(tiny_files["bf16"]["cond"]), lambda: load_text_encoder(te, taps=(0, 1)),
                 lambda: load_vae(vae), lambda: load_vae_encoder(vae)):
        warm_vector_math.cache_clear()
        load()
        assert warm_vector_math.cache_info().currsize == 1
