"""Where ComfyUI keeps its bundled Qwen tokenizer (``comfy/text_encoders/qwen25_tokenizer``).

ComfyUI 0.33's ``comfy`` and ``comfy/text_encoders`` have no ``__init__.py``: they are PEP 420
namespace packages, whose ``__file__`` is ``None`` and whose folders are only known through
``__path__`` (``ModuleSpec.submodule_search_locations``).  Other installs ship ``comfy`` as a
regular package.  Both are found here from the import system, never from ``__file__``; ComfyUI
itself is not imported by this module, so it runs (and is tested) without ComfyUI.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

from ...model.text_encoder import has_tokenizer

TOKENIZER_DIR = "qwen25_tokenizer"


def package_dirs(name: str) -> list[Path]:
    """The folders of package ``name`` (regular or namespace); [] when it is not importable."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # a missing parent package, or a module without a spec
        return []
    if spec is None:
        return []
    dirs = [Path(p) for p in (spec.submodule_search_locations or [])]
    if not dirs and spec.origin and spec.has_location:  # a plain module: its folder
        dirs = [Path(spec.origin).parent]
    out: list[Path] = []
    for d in dirs:
        if d not in out:
            out.append(d)
    return out


def tokenizer_candidates(package: str = "comfy") -> list[Path]:
    """Every place the bundled tokenizer may be, in search order."""
    out: list[Path] = []
    for folder in [d / TOKENIZER_DIR for d in package_dirs(f"{package}.text_encoders")] + \
                  [d / "text_encoders" / TOKENIZER_DIR for d in package_dirs(package)]:
        if folder not in out:
            out.append(folder)
    return out


def find_bundled_tokenizer(package: str = "comfy") -> tuple[Optional[Path], list[Path]]:
    """(the tokenizer folder or None, the folders searched)."""
    searched = tokenizer_candidates(package)
    return next((f for f in searched if has_tokenizer(f)), None), searched


def missing_tokenizer_message(searched: list[Path], choices: list[str]) -> str:
    """What to do when ComfyUI has no bundled tokenizer: which tokenizer folder to pick."""
    where = ", ".join(str(p) for p in searched) or "no importable 'comfy' package"
    pick = (f"pick one of {', '.join(repr(c) for c in choices)} as tokenizer" if choices else
            "copy the official repository's tokenizer/ folder (ideogram-ai/ideogram-4-fp8/tokenizer/, or the "
            "tokenizer files of Qwen/Qwen3-VL-8B-Instruct) to models/text_encoders/qwen3vl_tokenizer/ and pick "
            "'qwen3vl_tokenizer/' as tokenizer")
    return (f"tokenizer: ComfyUI's bundled Qwen tokenizer ({TOKENIZER_DIR}, with vocab.json or tokenizer.json) "
            f"was not found (searched: {where}); a single-file text encoder needs a tokenizer folder: {pick}")
