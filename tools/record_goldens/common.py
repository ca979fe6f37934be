"""What every golden recorder shares: the reference checkout, its dependencies, the machine, saving."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import platform
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch

PROJECT_ROOT = Path(__file__).resolve().parents[2]
REFERENCE_REPO = "RyukoMatoiFan/ideogram4"
# Modules the reference's pipeline imports at module level (import name -> pip name).  sentencepiece and
# accelerate, also in its pyproject, are not needed for these recipes.
REFERENCE_DEPENDENCIES = {
    "einops": "einops",
    "transformers": "transformers",
    "huggingface_hub": "huggingface_hub",
    "safetensors": "safetensors",
    "bitsandbytes": "bitsandbytes",
    "PIL": "pillow",
    "numpy": "numpy",
}
ISA_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


class RecordingError(SystemExit):
    """A problem the user can fix (bad --reference, missing package): printed without a traceback."""

    def __init__(self, message: str) -> None:
        super().__init__(f"record_goldens: {message}")


@dataclass(frozen=True)
class Reference:
    src: Path  # the directory holding the ``ideogram4`` package
    id: str    # metadata ``reference`` entry, e.g. "RyukoMatoiFan/ideogram4@9c167a2"


def _git_commit(path: Path) -> Optional[str]:
    """Short commit of the git checkout holding ``path`` (``-dirty`` if its files differ from it), or None."""
    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True)
    try:
        head = git("rev-parse", "--short=7", "HEAD")
    except OSError:  # no git installed
        return None
    if head.returncode != 0 or git("ls-files", "--error-unmatch", "ideogram4/__init__.py").returncode != 0:
        return None  # not a git checkout, or one that does not track this reference (an export inside it)
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".").stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def find_reference(path: Path, reference_id: Optional[str]) -> Reference:
    """The reference's ``src/`` (``path`` itself or ``path/src``) and the id its goldens are stamped with."""
    path = path.expanduser().resolve()
    src = next((p for p in (path, path / "src") if (p / "ideogram4" / "__init__.py").is_file()), None)
    if src is None:
        raise RecordingError(f"--reference {path}: no ideogram4/__init__.py there or in its src/ "
                             f"(pass a local checkout of github:{REFERENCE_REPO}, or its src/ directory)")
    if reference_id is None:
        commit = _git_commit(src)
        if commit is None:
            raise RecordingError(f"--reference {path} is not a git checkout, so its commit is unknown: "
                                 f"pass --reference-id (e.g. {REFERENCE_REPO}@9c167a2)")
        reference_id = f"{REFERENCE_REPO}@{commit}"
    return Reference(src, reference_id)


def check_dependencies() -> None:
    missing = [pip for mod, pip in REFERENCE_DEPENDENCIES.items() if importlib.util.find_spec(mod) is None]
    if missing:
        raise RecordingError(f"the reference needs {', '.join(missing)}, not installed in {sys.executable}: "
                             f"pip install {' '.join(missing)}")


def activate(reference: Reference) -> None:
    """Put the reference and the project on ``sys.path``; fail if another ``ideogram4`` would be imported."""
    check_dependencies()
    for p in (str(PROJECT_ROOT), str(reference.src)):
        if p in sys.path:
            sys.path.remove(p)
        sys.path.insert(0, p)
    module = importlib.import_module("ideogram4")
    where = Path(module.__file__).resolve()
    if reference.src not in where.parents:
        raise RecordingError(f"'import ideogram4' gives {where}, not the reference at {reference.src} "
                             f"(uninstall that copy or run in another environment)")


def reference_module(name: str, needed_by: str):
    """``ideogram4.<name>`` from the active reference; a clear error if it or one of its imports is missing."""
    try:
        return importlib.import_module(f"ideogram4.{name}")
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "ideogram4":
            raise RecordingError(f"{needed_by} needs {e.name} ({e.name.replace('.', '/')}.py), which this reference "
                                 f"lacks: use a newer checkout of github:{REFERENCE_REPO}") from e
        pip = REFERENCE_DEPENDENCIES.get((e.name or "").split(".")[0], e.name)
        raise RecordingError(f"the reference's ideogram4.{name} imports {e.name}: pip install {pip}") from e


@contextlib.contextmanager
def patched(target, **attrs) -> Iterator[None]:
    """Set attributes of ``target`` (a reference module, say) for the duration; restored afterwards."""
    saved = {k: getattr(target, k) for k in attrs}
    try:
        for k, v in attrs.items():
            setattr(target, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(target, k, v)


def use_test_threads() -> int:
    """The thread count the test suite runs with (tests/conftest.py): part of the kernel fingerprint.  Also the
    pack's vector-math warm-up (``model.cpu_math``), so the reference's first sin/cos is not the racy first call."""
    from model.cpu_math import warm_vector_math

    warm_vector_math()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    return torch.get_num_threads()


def cpu_description() -> str:
    """CPU model (``/proc/cpuinfo``) with the ISA flags that choose bf16 kernels, e.g. ``Xeon (x86_64; avx2 …)``."""
    model, flags = platform.processor() or "unknown CPU", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, val = line.partition(":")
            if key.strip() == "model name":
                model = val.strip()
            elif key.strip() == "flags":
                flags = set(val.split())
    except OSError:
        pass
    isa = [f for f in ISA_FLAGS if f in flags]
    return f"{model} ({platform.machine()}; {' '.join(isa) or 'no avx2/avx512/amx'})"


def machine_metadata() -> dict[str, str]:
    return {
        "torch": torch.__version__,
        "cpu": cpu_description(),
        "cpu_capability": str(torch.backends.cpu.get_cpu_capability()),
        "onednn": (re.findall(r"MKL-DNN (v[0-9.]+)", torch.__config__.show()) or ["n/a"])[0],
        "threads": str(torch.get_num_threads()),
    }


def save(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, str(path), metadata=metadata)
