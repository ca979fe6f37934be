"""Model locations: ComfyUI's folders plus the pack's ``ideogram4`` folder for Hugging Face layouts.

* Single files come from ComfyUI's usual keys: ``diffusion_models`` (``models/diffusion_models``,
  ``models/unet``), ``text_encoders`` (``models/text_encoders``, ``models/clip``), ``vae``.
* Whole official repositories (``ideogram-ai/ideogram-4-fp8`` / ``-nf4`` …, with ``transformer/``,
  ``unconditional_transformer/``, ``text_encoder/``, ``tokenizer/``, ``vae/``) go under
  ``models/ideogram4/<name>/`` (folder key ``ideogram4``, also settable in
  ``extra_model_paths.yaml``).  They are listed in the combos as ``<name>/`` (trailing slash).
  A plain Hugging Face Qwen3-VL folder (``config.json`` + weights) or a tokenizer folder may also
  sit directly under ``models/text_encoders/``; a bare diffusers ``transformer/`` folder (``config.json``
  + ``diffusion_pytorch_model*`` weights) directly under ``models/diffusion_models/``.
* DiT files (:data:`DIT_EXTENSIONS`): ``.safetensors`` / ``.sft``, ``.gguf``, and a sharded checkpoint
  as ONE entry — its ``*.safetensors.index.json``, the shards it names hidden.

Only ``folder_paths`` is used (imported lazily), so this module imports without ComfyUI.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable, Optional

from ...model.checkpoints.reader import folder_checkpoint, is_index_name

log = logging.getLogger("ideogram4_native")

FOLDER_KEY = "ideogram4"
FOLDER_SUFFIX = "/"
WEIGHT_EXTENSIONS = (".safetensors", ".sft")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")
INDEX_SUFFIX = ".safetensors.index.json"
DIT_EXTENSIONS = WEIGHT_EXTENSIONS + (".gguf", INDEX_SUFFIX)
DIFFUSERS_STEM = "diffusion_pytorch_model"

# Components of an official HF-layout folder and how to recognise each.
COMPONENT_DIRS = {
    "transformer": ("transformer", "unconditional_transformer"),
    "text_encoder": ("text_encoder",),
    "vae": ("vae",),
    "tokenizer": ("tokenizer",),
}


def _folder_paths():
    import folder_paths  # ComfyUI

    return folder_paths


def register() -> None:
    """Add the ``ideogram4`` folder key (``models/ideogram4``), keeping paths from extra_model_paths.yaml."""
    fp = _folder_paths()
    default = os.path.join(fp.models_dir, FOLDER_KEY)
    if FOLDER_KEY in fp.folder_names_and_paths:
        paths, exts = fp.folder_names_and_paths[FOLDER_KEY]
        if default not in paths:
            paths.append(default)
        fp.folder_names_and_paths[FOLDER_KEY] = (paths, set(exts))
    else:
        fp.folder_names_and_paths[FOLDER_KEY] = ([default], set())


def _base_dirs(keys: Iterable[str]) -> list[Path]:
    fp = _folder_paths()
    out: list[Path] = []
    for key in keys:
        if key not in fp.folder_names_and_paths:
            continue
        for d in fp.get_folder_paths(key):
            p = Path(d)
            if p.is_dir() and p not in out:
                out.append(p)
    return out


def _has_weights(folder: Path) -> bool:
    return any(f.suffix in WEIGHT_EXTENSIONS or is_index_name(f.name) for f in folder.iterdir() if f.is_file())


def is_hf_folder(folder: Path, kind: str) -> bool:
    """Whether ``folder`` can supply ``kind`` ("transformer", "text_encoder", "vae", "tokenizer")."""
    if not folder.is_dir():
        return False
    for sub in COMPONENT_DIRS[kind]:
        if (folder / sub).is_dir():
            return True
    if kind == "text_encoder":  # a plain Qwen3-VL folder
        return (folder / "config.json").is_file() and _has_weights(folder)
    if kind == "transformer":  # a bare diffusers transformer/ folder (also one saved with a ``variant``)
        if not (folder / "config.json").is_file():
            return False
        try:
            return folder_checkpoint(folder, (DIFFUSERS_STEM,)) is not None
        except ValueError:  # several variants: listed, and the loader says which
            return True
    if kind == "tokenizer":
        return any((folder / n).is_file() for n in TOKENIZER_FILES)
    return False


def list_folders(kind: str, keys: Iterable[str]) -> list[str]:
    """Sub-folders (one level) of the ``keys`` folders that can supply ``kind``, as ``name/``."""
    names: list[str] = []
    for base in _base_dirs(keys):
        for child in sorted(base.iterdir()):
            if child.is_dir() and not child.name.startswith(".") and is_hf_folder(child, kind):
                name = child.name + FOLDER_SUFFIX
                if name not in names:
                    names.append(name)
    return names


def list_files(key: str, extensions: tuple[str, ...] = WEIGHT_EXTENSIONS, hide_under: Iterable[str] = ()) -> list[str]:
    """Weight files of a ComfyUI folder key (safetensors / ``extensions`` only: pickles are never loaded).

    A ``*.safetensors.index.json`` (when in ``extensions``) is one entry and the shards it names are hidden;
    files inside the folders ``hide_under`` (``name/`` entries listed as folders) are hidden too.
    """
    fp = _folder_paths()
    if key not in fp.folder_names_and_paths:
        return []
    listed = fp.get_filename_list(key)
    names = [n for n in listed if n.lower().endswith(extensions)]
    _report_pickles(key, [n for n in listed if not n.lower().endswith(extensions)])
    extra = tuple(e for e in extensions if e not in WEIGHT_EXTENSIONS)  # ComfyUI's list has no .gguf / .json
    if extra:
        def wanted(n: str) -> bool:  # diffusers variant indexes (….safetensors.index.bf16.json) too
            return n.lower().endswith(extra) or (INDEX_SUFFIX in extra and is_index_name(n))

        names = sorted(set(names) | {n for base in _base_dirs([key]) for n in _walk(base) if wanted(n)})
    bases = _base_dirs([key])
    shards = set()
    for base in bases:
        for name in names:
            if is_index_name(name) and (base / name).is_file():
                shards |= _shards_of(base / name, name)
    folders = tuple(f.rstrip("/") + "/" for f in hide_under)
    return [n for n in names if n not in shards and not n.startswith(folders) and not _dangling(bases, n)]


_REPORTED_LINKS: set[Path] = set()
_REPORTED_PICKLES: set[tuple[str, str]] = set()


def _report_pickles(key: str, names: list[str]) -> None:
    """ComfyUI lists pickle checkpoints (``.ckpt`` / ``.pt`` / ``.pth`` / ``.bin`` / ``.pkl``); the pack never unpickles
    a file, so they are left out of its combos — logged once each, so a file the user put there is not just gone."""
    for name in names:
        if (key, name) not in _REPORTED_PICKLES:
            _REPORTED_PICKLES.add((key, name))
            log.warning("models/%s: %s is a pickle checkpoint, not listed by the Ideogram 4 loaders (they never "
                        "unpickle a file): use its .safetensors release, or convert it", key, name)


def _dangling(bases: list[Path], name: str) -> bool:
    """Whether ``name`` is, in our folders, only a symbolic link to nothing: left out of the combo (picking it could
    only fail) and logged once.  Names found nowhere stay: ComfyUI's own list is the authority."""
    if any((base / name).exists() for base in bases):
        return False
    links = [base / name for base in bases if (base / name).is_symlink()]
    for link in links:
        if link not in _REPORTED_LINKS:
            _REPORTED_LINKS.add(link)
            log.warning("%s is a symbolic link to %s, which does not exist: not listed", link, os.readlink(link))
    return bool(links)


def _walk(base: Path) -> list[str]:
    out = []
    for root, dirs, files in os.walk(base, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = Path(root).relative_to(base)
        out += [(rel / f).as_posix() if str(rel) != "." else f for f in files]
    return out


def _shards_of(index: Path, name: str) -> set[str]:
    """The shard names (relative like ``name``) an index lists; an unreadable index hides nothing (it fails,
    with its own message, when loaded)."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        parent = name.rpartition("/")[0]
        return {f"{parent}/{v}" if parent else str(v) for v in set(weight_map.values())}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def resolve(name: str, *, file_key: Optional[str], folder_keys: Iterable[str]) -> Path:
    """A combo value back to a path: ``name/`` is a folder under ``folder_keys``, else a file of ``file_key``."""
    if not name:
        raise ValueError("no model selected")
    if name.endswith(FOLDER_SUFFIX):
        stem = name[: -len(FOLDER_SUFFIX)]
        for base in _base_dirs(folder_keys):
            candidate = base / stem
            if candidate.is_dir():
                return candidate
        where = ", ".join(str(b) for b in _base_dirs(folder_keys)) or "(no folder configured)"
        raise ValueError(f"folder {name!r} not found in {where}")
    if file_key is None:
        raise ValueError(f"{name!r} is not a folder (folder names end with '/')")
    path = _folder_paths().get_full_path(file_key, name)
    if path is None:
        raise ValueError(f"file {name!r} not found in the {file_key!r} model folders "
                         f"({', '.join(str(b) for b in _base_dirs([file_key]))})")
    return Path(path)


def auto_unconditional(conditional: str, files: list[str]) -> Optional[str]:
    """The unconditional file that pairs with a conditional single file, by Comfy-Org naming.

    ``ideogram4_fp8_scaled.safetensors`` → ``ideogram4_unconditional_fp8_scaled.safetensors``;
    also ``…_conditional…`` → ``…_unconditional…`` and ``cond`` → ``uncond``.
    """
    normalised = {f.replace("\\", "/"): f for f in files}
    return next((normalised[c] for c in unconditional_candidates(conditional) if c in normalised), None)


def unconditional_candidates(conditional: str) -> list[str]:
    """The names :func:`auto_unconditional` looks for, in order (same folder as ``conditional``, ``/``-separated)."""
    directory, _, base = conditional.replace("\\", "/").rpartition("/")
    prefix = f"{directory}/" if directory else ""
    candidates = []
    lower = base.lower()
    if "_conditional" in lower:
        i = lower.index("_conditional")
        candidates.append(base[:i] + "_unconditional" + base[i + len("_conditional"):])
    if "ideogram4" in lower and "unconditional" not in lower:
        i = lower.index("ideogram4") + len("ideogram4")
        candidates.append(base[:i] + "_unconditional" + base[i:])
    if "cond" in lower and "uncond" not in lower:
        i = lower.index("cond")
        candidates.append(base[:i] + "un" + base[i:])
    stem, dot, ext = base.rpartition(".")
    if "unconditional" not in lower and dot:
        cuts = [0] + [i + 1 for i, ch in enumerate(stem) if ch in "_-"]
        candidates += [stem[:i] + "unconditional" + ("_" if i == 0 or stem[i - 1] == "_" else "-") + stem[i:] + "." + ext
                       for i in cuts]
        candidates.append(stem + "_unconditional." + ext)
    return list(dict.fromkeys(prefix + c for c in candidates))
