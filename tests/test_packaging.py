"""Project layout contracts: dependency lists, import boundaries, pack metadata."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _names(lines):
    return {re.split(r"[<>=!~\[; ]", l.strip(), maxsplit=1)[0].lower() for l in lines if l.strip() and not l.startswith("#")}


def test_requirements_match_pyproject_and_exclude_torch():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = pyproject["project"]["dependencies"]
    reqs = [l for l in (ROOT / "requirements.txt").read_text().splitlines()]
    assert _names(deps) == _names(reqs)
    assert sorted(d.replace(" ", "") for d in deps) == sorted(l.replace(" ", "") for l in reqs if l.strip() and not l.startswith("#"))
    assert not {"torch", "torchvision", "torchaudio"} & _names(reqs)
    assert "test" in pyproject["project"]["optional-dependencies"]
    assert pyproject["tool"]["comfy"]["DisplayName"]


def test_pure_packages_import_without_comfyui_and_never_import_nodes():
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name.split('.')[0] in ('comfy', 'comfy_api', 'folder_paths', 'nodes'):\n"
        "        raise ImportError('forbidden import ' + name)\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import pkgutil, importlib, model, sampling\n"
        "for pkg in (model, sampling):\n"
        "    for m in pkgutil.iter_modules(pkg.__path__):\n"
        "        importlib.import_module(pkg.__name__ + '.' + m.name)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_sampling_does_not_depend_on_model():
    for path in (ROOT / "sampling").glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(\.\.)?model\b", text, re.M), path


def test_pack_entry_point_does_not_import_comfyui_at_import_time():
    text = (ROOT / "__init__.py").read_text()
    top_level = [l for l in text.splitlines() if l.startswith(("import ", "from "))]
    assert not any("comfy" in l or "nodes" in l for l in top_level)
    assert 'WEB_DIRECTORY = "./js"' in text and "async def comfy_entrypoint" in text
