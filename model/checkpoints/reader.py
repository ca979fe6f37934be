"""Lazy, pickle-free access to safetensors checkpoints: single files, sharded indexes, HF folders.

Opening never unpickles anything; anything that is not a valid safetensors file is refused
with a ``ValueError`` naming the file and what it looks like instead.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Iterable, Optional

import torch
from safetensors import safe_open

from .comfy_legacy import legacy_quant_plan

log = logging.getLogger(__name__)

_ST_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "F8_E8M0": torch.float8_e8m0fnu,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}

FOLDER_FILENAMES = ("diffusion_pytorch_model.safetensors.index.json", "diffusion_pytorch_model.safetensors",
                    "model.safetensors.index.json", "model.safetensors")
FOLDER_STEMS = ("diffusion_pytorch_model", "model")
# A shard index, also a diffusers variant's (``save_pretrained(variant="bf16")``: ``….safetensors.index.bf16.json``).
INDEX_NAME = re.compile(r"\.safetensors\.index(?:\.[A-Za-z0-9_]+)?\.json$")
SHARD_NAME = re.compile(r"-(\d{5})-of-(\d{5})\.safetensors$")


def is_index_name(name: str) -> bool:
    return bool(INDEX_NAME.search(name))


def _variants(folder: Path, stem: str) -> dict[str, Path]:
    """A folder's diffusers ``variant`` checkpoints of ``stem``: variant → its index, else its single file."""
    index = re.compile(re.escape(stem) + r"\.safetensors\.index\.([A-Za-z0-9_]+)\.json")
    single = re.compile(re.escape(stem) + r"\.([A-Za-z0-9_]+)\.safetensors")  # shards have '-': never match
    files = sorted(folder.iterdir())
    found = {m[1]: f for f in files if (m := index.fullmatch(f.name))}
    for f in files:
        if (m := single.fullmatch(f.name)) and m[1] not in found:
            found[m[1]] = f
    return found


def folder_checkpoint(folder: Path, stems: tuple[str, ...] = FOLDER_STEMS) -> Optional[Path]:
    """The index or single file holding an HF folder's weights: the plain names (the index first, as the reference
    picks), else the one diffusers ``variant`` present; a ValueError naming them when there are several variants.
    ``stems``: the weight file stems to look for (a diffusers model's ``diffusion_pytorch_model``, ``model``)."""
    for name in FOLDER_FILENAMES:
        if name.split(".", 1)[0] in stems and (folder / name).is_file():
            return folder / name
    for stem in stems:
        variants = _variants(folder, stem)
        if len(variants) > 1:
            raise ValueError(f"{folder}: several variants of {stem} ({', '.join(sorted(variants))}); keep one of "
                             f"them in this folder (the others can move to a folder of their own)")
        if variants:
            return next(iter(variants.values()))
    return None


def _shard_problem(path: Path) -> Optional[str]:
    """Why one shard of a sharded checkpoint cannot be loaded alone (the index or folder names all of them)."""
    m = SHARD_NAME.search(path.name)
    if m is None or int(m[2]) <= 1:
        return None
    indexes = [f.name for f in sorted(path.parent.iterdir()) if is_index_name(f.name)]
    pick = f"pick its index ({', '.join(indexes)})" if indexes else "pick its .safetensors.index.json"
    return (f"{path}: shard {int(m[1])} of {int(m[2])} of a sharded checkpoint, which holds only part of the "
            f"weights; {pick} or the folder it is in")


def _describe_non_safetensors(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"PK"):
        return "a zip archive (a PyTorch .pt/.ckpt pickle checkpoint?)"
    if head[:1] == b"\x80":
        return "a Python pickle (a PyTorch .bin/.ckpt checkpoint?)"
    if head.startswith(b"GGUF"):
        return "a GGUF file"
    return "not a safetensors file"


MAX_HEADER_BYTES = 100_000_000  # a larger header length is not a safetensors file


def _header_cut_off(f, header_len: int, size: int) -> bool:
    """A plausible header length, the header's ``{`` next, but the file ends inside the header."""
    return 0 < header_len <= MAX_HEADER_BYTES and header_len > size - 8 and f.read(1) == b"{"


def check_safetensors_file(path: Path) -> None:
    """Validate the header and the file length before any tensor is read."""
    if not path.is_file():
        raise ValueError(f"{path}: file not found")
    size = path.stat().st_size
    if size < 8:
        raise ValueError(f"{path}: file is {size} bytes — truncated or not a safetensors file")
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        if _header_cut_off(f, header_len, size):
            raise ValueError(f"{path}: truncated — header alone is {8 + header_len} bytes, file has {size}"
                             " (incomplete download?)")
        if header_len <= 0 or header_len > min(size - 8, MAX_HEADER_BYTES):
            raise ValueError(f"{path}: {_describe_non_safetensors(path)}; only .safetensors checkpoints are supported "
                             "(pickle checkpoints are never loaded)")
        try:
            header = json.loads(f.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError(f"{path}: corrupt safetensors header ({_describe_non_safetensors(path)})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: corrupt safetensors header")
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + header_len + end > size:
        raise ValueError(f"{path}: truncated — header describes {8 + header_len + end} bytes, file has {size}"
                         " (incomplete download?)")


class CheckpointReader:
    """Keys, shapes and dtypes of a (possibly sharded) safetensors checkpoint; tensors on demand."""

    def __init__(self, files: Iterable[Path], label: str) -> None:
        self.label = label
        self._handles: dict[Path, object] = {}
        self._where: dict[str, Path] = {}
        self.metadata: dict[str, str] = {}
        for path in files:
            check_safetensors_file(path)
            try:
                handle = safe_open(str(path), framework="pt", device="cpu")
            except Exception as exc:  # safetensors raises its own error type for a bad file
                raise ValueError(f"{path}: cannot be read as safetensors ({exc})") from None
            self._handles[path] = handle
            self.metadata.update(handle.metadata() or {})
            for key in handle.keys():
                self._where[key] = path
        self._file_key: dict[str, str] = {}  # presented key -> its name in the file, where they differ
        self._virtual: dict[str, torch.Tensor] = {}  # tensors presented but not stored (legacy comfy_quant)
        self.layout_note: Optional[str] = None  # how an older ComfyUI layout was read, shown with the format
        self._read_legacy_quant()

    def _read_legacy_quant(self) -> None:
        plan = legacy_quant_plan(list(self._where), self.metadata, self.label, self.shape)
        if plan is None:
            return
        for new, old in plan.renames.items():
            self._where[new] = self._where.pop(old)
            self._file_key[new] = old
        for key in plan.consumed:
            del self._where[key]
        for module, conf in plan.layers.items():
            self._virtual[f"{module}.comfy_quant"] = json_to_tensor(conf)
        self.layout_note = plan.description
        log.info("%s: %s", self.label, plan.description)

    def keys(self) -> list[str]:
        return list(self._where) + list(self._virtual)

    @property
    def files(self) -> list[Path]:
        """The safetensors files read (one, or every shard)."""
        return list(self._handles)

    def __contains__(self, key: str) -> bool:
        return key in self._where or key in self._virtual

    def _slice(self, key: str):
        return self._handles[self._where[key]].get_slice(self._file_key.get(key, key))

    def shape(self, key: str) -> tuple[int, ...]:
        if key in self._virtual:
            return tuple(self._virtual[key].shape)
        return tuple(self._slice(key).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        if key in self._virtual:
            return self._virtual[key].dtype
        name = self._slice(key).get_dtype()
        if name not in _ST_DTYPES:
            raise ValueError(f"{self.label}: tensor {key} has unsupported dtype {name}")
        return _ST_DTYPES[name]

    def block_type(self, key: str) -> Optional[str]:
        """ggml block type of a GGUF tensor; safetensors tensors never have one."""
        return None

    def get(self, key: str) -> torch.Tensor:
        if key in self._virtual:
            return self._virtual[key].clone()
        return self._handles[self._where[key]].get_tensor(self._file_key.get(key, key))

    def file_size(self) -> int:
        return sum(p.stat().st_size for p in self._handles)


def _files_from_index(index_path: Path) -> list[Path]:
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"{index_path}: not a safetensors index (needs a 'weight_map'): {exc}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index_path}: not a safetensors index: its 'weight_map' must map each tensor name to "
                         f"a shard file name, got {type(weight_map).__name__} {str(weight_map)[:80]}")
    files = sorted({index_path.parent / name for name in weight_map.values()})
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise ValueError(f"{index_path}: shard(s) missing: {', '.join(missing[:5])}")
    return files


def resolve_checkpoint_files(source: str | os.PathLike, component: Optional[str] = None) -> list[Path]:
    """A ``.safetensors`` file, a ``.safetensors.index.json`` or an HF-layout folder → shard files.

    For a folder, ``component`` picks the subfolder (``transformer``, ``unconditional_transformer``,
    ``text_encoder``...); the sharded index is preferred over the single file, as the reference does.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        candidates = [path / component] if component and (path / component).is_dir() else []
        candidates.append(path)
        for folder in candidates:
            found = folder_checkpoint(folder)
            if found is not None:
                return resolve_checkpoint_files(found)
        where = f"{path}/{component}" if component else str(path)
        ggufs = sorted(p.name for folder in candidates for p in folder.glob("*.gguf"))
        hint = f"; it holds {', '.join(ggufs[:3])}: pick the .gguf file itself, not its folder" if ggufs else ""
        raise ValueError(f"{where}: no checkpoint found (expected one of {', '.join(FOLDER_FILENAMES)}, or a "
                         f"diffusers variant of them such as diffusion_pytorch_model.bf16.safetensors){hint}")
    if not path.exists():
        raise ValueError(f"{path}: " + ("a symbolic link to a file that does not exist"
                                        if path.is_symlink() else "file not found"))
    if is_index_name(path.name):
        return _files_from_index(path)
    if path.suffix not in (".safetensors", ".sft", ".gguf"):
        raise ValueError(f"{path}: {_describe_non_safetensors(path)}; only .safetensors / .gguf files, "
                         ".safetensors.index.json shard indexes or Hugging Face folders are supported")
    problem = _shard_problem(path)
    if problem:
        raise ValueError(problem)
    return [path]


def open_checkpoint(source: str | os.PathLike, component: Optional[str] = None, **gguf_options) -> CheckpointReader:
    """A reader for any checkpoint: safetensors (file, shards, folder) or a GGUF file (same interface;
    ``gguf_options``: the architectures the caller reads, see ``GGUFCheckpointReader``)."""
    files = resolve_checkpoint_files(source, component)
    label = str(Path(source)) + (f" [{component}]" if component and Path(source).is_dir() else "")
    if len(files) == 1 and files[0].suffix == ".gguf":
        from .gguf_reader import GGUFCheckpointReader

        return GGUFCheckpointReader(files[0], label, **gguf_options)
    return CheckpointReader(files, label)


def json_from_tensor(raw: torch.Tensor) -> dict:
    """UTF-8 JSON stored as a uint8 tensor (bitsandbytes quant_state, ComfyUI comfy_quant)."""
    return json.loads(bytes(raw.to(torch.uint8).tolist()).decode("utf-8"))


def json_to_tensor(obj) -> torch.Tensor:
    """``obj`` as UTF-8 JSON in a uint8 tensor, as bitsandbytes and ComfyUI store it (``json_from_tensor`` reads it)."""
    return torch.tensor(list(json.dumps(obj).encode("utf-8")), dtype=torch.uint8)
