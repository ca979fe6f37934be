"""Code layout contracts (README "Code layout"): no import cycles, one-way package layering, isolated imports.

The import graph is read from the source (``ast``): every ``import`` statement counts, also those
inside functions (a lazy import is still a dependency), so a circle cannot hide behind one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "sampling", "nodes")
HOST_MODULES = ("comfy", "comfy_api", "comfy_extras", "folder_paths", "nodes", "latent_preview", "server", "execution")

# What each model subpackage may import from the rest of the pack (besides itself).
MODEL_LAYERS = {
    "model.cpu_math": set(),
    "model.checkpoints": set(),
    "model.caption": set(),
    "model.dit": {"model.checkpoints", "model.cpu_math"},
    "model.vae": {"model.checkpoints", "model.cpu_math"},
    "model.text_encoder": {"model.checkpoints", "model.dit", "model.cpu_math"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Pack modules imported by module ``name`` (relative imports resolved; ``from x import y`` → x.y if a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            targets = [f"{prefix}.{a.name}" for a in node.names] + [prefix]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    graph = {n: _imports(n, p, known) for n, p in sources.items()}
    # a package's __init__ re-exports its modules: an edge into a module's own package is not a dependency of it
    return {n: {d for d in deps if not n.startswith(d + ".")} for n, deps in graph.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack)
        stack.pop()
        state[node] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])
    return cycles


def test_import_graph_reader_sees_known_edges():
    g = _graph()
    assert "model.checkpoints.reader" in g["model.checkpoints.formats"]
    assert "model.text_encoder.encoder" in g["model.text_encoder.loading"]
    assert "model.dit.transformer" in g["model.dit.loading"]
    assert "nodes.host.comfy_model" in g["nodes.host.comfy_sampling"]
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]


def test_no_import_cycles_anywhere():
    assert _cycles(_graph()) == []


def test_model_subpackages_are_layered_one_way():
    bad = []
    for name, deps in _graph().items():
        layer = next((lay for lay in MODEL_LAYERS if name == lay or name.startswith(lay + ".")), None)
        if layer is None:
            continue
        for dep in deps:
            dep_layer = next((lay for lay in MODEL_LAYERS if dep == lay or dep.startswith(lay + ".")), None)
            if dep_layer != layer and (dep_layer not in MODEL_LAYERS[layer] or dep.startswith(("nodes", "sampling"))):
                bad.append(f"{name} -> {dep}")
            if dep == "model" or dep in ("model.pipeline", "model.safety"):
                bad.append(f"{name} -> {dep}")
    assert bad == []


def test_caption_never_imports_torch_and_pure_packages_never_import_the_host():
    bad = []
    for name, path in _sources().items():
        tree = ast.parse(path.read_text())
        roots = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                roots.add(node.module.split(".")[0])
        if name.startswith("model.caption") and roots & {"torch", "numpy", "safetensors", "transformers"}:
            bad.append(f"{name} imports {sorted(roots & {'torch', 'numpy', 'safetensors', 'transformers'})}")
        if name.startswith(("model", "sampling")) and roots & set(HOST_MODULES):
            bad.append(f"{name} imports {sorted(roots & set(HOST_MODULES))}")
    assert bad == []


def test_only_host_glue_touches_comfy():
    """Node classes (``nodes/*_nodes.py``) talk to ComfyUI through ``comfy_api`` only; ``comfy.*`` lives in ``nodes/host/``."""
    bad = []
    for name, path in _sources().items():
        if not name.startswith("nodes.") or name.startswith("nodes.host"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import)
                    else [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
            bad += [f"{name} imports {m}" for m in mods if m.split(".")[0] in ("comfy", "folder_paths", "latent_preview")]
    assert bad == []


@pytest.mark.parametrize("package", ["model", "sampling"])
def test_every_module_imports_in_isolation(package):
    """Each module imported first, in a fresh set of pack modules: an import-order dependency or cycle fails here."""
    code = (
        "import importlib, pkgutil, sys\n"
        f"import {package} as pkg\n"
        "names = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.')]\n"
        "for name in names:\n"
        "    for k in [k for k in sys.modules if k.split('.')[0] in ('model', 'sampling')]:\n"
        "        del sys.modules[k]\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) >= (20 if package == "model" else 4)


def test_old_flat_names_still_resolve_from_model():
    code = ("import model\n"
            "from model import load_transformer, QuantizedLinear, check_caption, load_vae, Ideogram4TextEncoder\n"
            "from model import latents, quant, caption_builders\n"
            "assert latents.__name__ == 'model.vae.latents' and quant.QuantizedLinear is QuantizedLinear\n"
            "assert caption_builders.__name__ == 'model.caption.builders'\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "ok", out.stderr


def test_importing_the_caption_contract_does_not_load_torch():
    code = "import sys, model.caption, model.caption.magic_prompt\nprint('torch' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr
