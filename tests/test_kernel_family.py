"""The per-CPU-family golden selection (``tests/kernel_family.py``) that the parity tests rely on."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

import kernel_family as kf


def test_fingerprint_is_stable_and_names_the_thread_count():
    fp = kf.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{12}", fp)
    kf.fingerprint.cache_clear()
    assert kf.fingerprint() == fp
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        kf.fingerprint.cache_clear()
        assert kf.fingerprint() != fp  # the thread count is part of the key (GEMM splits depend on it)
    finally:
        torch.set_num_threads(threads)
        kf.fingerprint.cache_clear()


def test_every_family_holds_the_same_files_keys_and_shapes():
    fams = kf.families()
    assert len(fams) >= 2 and all(f["recorded_on"] for f in fams.values())
    names = {p.name for p in (kf.DATA / fams[next(iter(fams))]["dir"]).glob("*_golden.safetensors")}
    assert names >= {"dit_golden.safetensors", "te_golden.safetensors", "te_packed_golden.safetensors",
                     "vae_golden.safetensors", "vae_encoder_golden.safetensors"}
    for name in names:
        sets = kf.Goldens(name).sets
        assert set(sets) == set(fams), name
        first = next(iter(sets.values()))[0]
        for fam, (tensors, _) in sets.items():
            assert {k: (v.shape, v.dtype) for k, v in tensors.items()} == \
                   {k: (v.shape, v.dtype) for k, v in first.items()}, (name, fam)
    seen = [fp for f in fams.values() for fp in f["fingerprints"]]
    assert len(seen) == len(set(seen)), "a fingerprint listed by two families"


@pytest.fixture
def two_families(tmp_path, monkeypatch):
    """Families "a" (fingerprint fa) and "b" (fb) holding x = 1.0 and x = 1.5."""
    for fam, value in (("a", 1.0), ("b", 1.5)):
        (tmp_path / fam).mkdir()
        save_file({"x": torch.tensor([value])}, str(tmp_path / fam / "g.safetensors"))
    manifest = {"recording": "record it.", "families": {
        "a": {"dir": "a", "recorded_on": "cpu A", "fingerprints": ["fa"]},
        "b": {"dir": "b", "recorded_on": "cpu B", "fingerprints": ["fb"]}}}
    monkeypatch.setattr(kf, "DATA", tmp_path)
    monkeypatch.setattr(kf, "manifest", lambda: manifest)  # families() and the warning read it

    def on(fp):
        monkeypatch.setattr(kf, "fingerprint", lambda: fp)
        return kf.Goldens("g.safetensors")
    return on


EQ = staticmethod(lambda o, g: torch.equal(o, g))
NEAR = staticmethod(lambda o, g: (o - g).abs().max() <= 0.6)


def test_a_known_family_is_held_to_its_own_values(two_families):
    g = two_families("fb")
    assert g.exact and g.family == "b" and g["x"].item() == 1.5
    g.expect("x", torch.tensor([1.5]), EQ, NEAR)
    with pytest.raises(AssertionError, match="recorded on this CPU family .b: cpu B"):
        g.expect("x", torch.tensor([1.0]), EQ, NEAR)  # another family's value is not good enough here


def test_an_unknown_cpu_passes_on_any_family_then_falls_back_to_the_bound(two_families):
    g = two_families("zz")
    assert not g.exact and g["x"].item() == 1.0  # the first family's data
    g.expect("x", torch.tensor([1.5]), EQ, NEAR)  # reproduces family b: no warning
    with pytest.warns(UserWarning, match="not bit-exact .* fingerprint zz .*record it"):
        g.expect("x", torch.tensor([1.25]), EQ, NEAR)
    with pytest.raises(AssertionError, match="outside the cross-CPU bound vs family b"):
        g.expect("x", torch.tensor([0.85]), EQ, NEAR)  # near a, too far from b
    with pytest.raises(AssertionError, match="equals no recorded family"):
        g.expect("x", torch.tensor([1.25]), EQ)  # no bound: exact everywhere


def test_the_recorder_refuses_a_folder_that_is_not_the_reference(tmp_path):
    """``python -m tools.record_goldens`` never downloads: without a local reference checkout it says what to pass."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "tools.record_goldens", "--reference", str(tmp_path),
                           "--out-dir", str(tmp_path / "out")], capture_output=True, text=True,
                          cwd=kf.DATA.parents[1], timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "no ideogram4/__init__.py" in proc.stderr and "RyukoMatoiFan/ideogram4" in proc.stderr
    assert not (tmp_path / "out").exists()
