"""GGUF files behind the ``CheckpointReader`` interface, memory-mapped by ``gguf``.

ComfyUI-GGUF and its forks write a diffusion model as its state dict: tensor names are the state-dict
keys (optionally prefixed), shapes are in ggml order (reversed), ``general.architecture`` names the
model (``ideogram4`` or ``ideogram`` for Ideogram 4), 1-D and small tensors are F32/F16/BF16 and the
Linear weights are ggml blocks.  llama.cpp's language models (a text encoder) use its own tensor names
(``blk.N.attn_q.weight``); their loader maps them (:class:`RenamedReader`).  Which architectures a caller
accepts is its choice (``architectures``, with a hint per known other architecture).  Tensors come back as
views of the read-only memory map (no copy): quantised ones as their raw block bytes, uint8 (rows, bytes per row), with :meth:`block_type` naming
the ggml type; float ones as typed tensors.  The codec is :mod:`.gguf_codec`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import numpy as np
import torch

from .gguf_codec import BLOCKS, row_bytes

ARCHITECTURES = ("ideogram4", "ideogram")  # a DiT's (the default of every reader)
# what a GGUF of another architecture is, for the DiT loader's error
DIT_HINTS = {"qwen3vl": "a Qwen3-VL language model, Ideogram 4's text encoder: load it with the Ideogram4 Text "
                        "Encoder Loader",
             "clip": "a vision projector (mmproj), not a diffusion model"}
_FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_ORIG_SHAPE = "comfy.gguf.orig_shape."


def _gguf():
    try:
        import gguf  # noqa: WPS433 (runtime dependency, imported only for .gguf files)
    except ImportError as exc:
        raise ValueError(f"reading .gguf files needs the `gguf` package ({exc}); pip install gguf") from None
    return gguf


def _field_value(field, index: Optional[int] = None):
    """A metadata value as gguf's ``ReaderField.contents()`` gives it (a number, a string, a list; ``index``: one
    entry of an array), decoded here because gguf before 0.11 — which ``requirements.txt`` allows — has no
    ``contents``."""
    if not field.types:
        return None
    string = lambda part: bytes(part).decode("utf-8", "replace")  # noqa: E731
    if field.types[0].name == "ARRAY":
        text = field.types[-1].name == "STRING"
        item = lambda i: string(field.parts[i]) if text else field.parts[i].tolist()[0]  # noqa: E731
        return item(field.data[index]) if index is not None else [item(i) for i in field.data]
    return string(field.parts[-1]) if field.types[0].name == "STRING" else field.parts[-1].tolist()[0]


def _as_torch(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # a read-only memory map: the tensor is a view, never written
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class GGUFCheckpointReader:
    """Keys, logical (torch-order) shapes, dtypes and zero-copy tensors of one GGUF file."""

    def __init__(self, path: Path, label: Optional[str] = None, *, architectures: Sequence[str] = ARCHITECTURES,
                 what: str = "an Ideogram 4 GGUF", hints: Optional[Mapping[str, str]] = DIT_HINTS) -> None:
        """``architectures``: the ``general.architecture`` values the caller reads (``what`` names them in the
        error); ``hints``: architecture → what such a file is, for the error when it is another."""
        gguf = _gguf()
        self.label = label or str(path)
        self.layout_note: Optional[str] = None  # GGUF has no older layouts read differently
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{path}: file not found")
        try:
            reader = gguf.GGUFReader(str(path), "r")
        except Exception as exc:  # truncated / corrupt: numpy or gguf raise their own errors
            raise ValueError(f"{path}: not a readable GGUF file — truncated or corrupt ({type(exc).__name__}: {exc})") from None
        arch_field = reader.fields.get("general.architecture")
        arch = str(_field_value(arch_field)) if arch_field is not None else None
        if arch not in architectures:
            hint = (hints or {}).get(arch)
            raise ValueError(f"{path}: GGUF general.architecture is {arch!r}" + (f" — {hint}" if hint else "")
                             + f"; {what} has {' or '.join(map(repr, architectures))}")
        self.architecture = arch
        self.metadata = {"general.architecture": arch}
        self._fields = reader.fields
        self._tensors = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        size = self.path.stat().st_size
        for t in reader.tensors:
            kind = t.tensor_type.name
            if kind not in _FLOAT_TYPES and kind not in BLOCKS:
                raise ValueError(f"{path}: tensor {t.name} has GGUF type {kind}; supported: "
                                 f"{', '.join(list(_FLOAT_TYPES) + list(BLOCKS))}")
            shape = tuple(int(v) for v in reversed(t.shape.tolist()))
            if t.data_offset + int(t.n_bytes) > size:
                raise ValueError(f"{path}: truncated — tensor {t.name} ends at byte {t.data_offset + int(t.n_bytes)}, "
                                 f"file has {size} (incomplete download?)")
            try:
                want = (int(np.prod(shape[:-1])) * row_bytes(kind, shape[-1]) if kind in BLOCKS
                        else int(np.prod(shape)) * _FLOAT_TYPES[kind].itemsize)
            except ValueError as exc:  # rows that are not whole blocks
                raise ValueError(f"{path}: tensor {t.name} {list(shape)}: {exc}") from None
            if int(t.n_bytes) != want:
                raise ValueError(f"{path}: tensor {t.name} ({kind} {list(shape)}) has {int(t.n_bytes)} bytes, "
                                 f"expected {want}")
            orig = reader.fields.get(_ORIG_SHAPE + t.name)
            if orig is not None:
                orig_shape = tuple(int(v) for v in _field_value(orig))
                if kind in BLOCKS and orig_shape != shape or int(np.prod(orig_shape)) != int(np.prod(shape)):
                    raise ValueError(f"{path}: tensor {t.name}: {_ORIG_SHAPE}{t.name} {list(orig_shape)} does not "
                                     f"fit its {kind} shape {list(shape)}")
                shape = orig_shape
            self._tensors[t.name] = t
            self._shapes[t.name] = shape
        if not self._tensors:
            raise ValueError(f"{path}: the GGUF file contains no tensors")

    def keys(self) -> list[str]:
        return list(self._tensors)

    @property
    def files(self) -> list[Path]:
        return [self.path]

    def __contains__(self, key: str) -> bool:
        return key in self._tensors

    def shape(self, key: str) -> tuple[int, ...]:
        return self._shapes[key]

    def block_type(self, key: str) -> Optional[str]:
        """The ggml block type of a quantised tensor ("Q4_K", ...), None for F32/F16/BF16."""
        kind = self._tensors[key].tensor_type.name
        return kind if kind in BLOCKS else None

    def dtype(self, key: str) -> torch.dtype:
        kind = self._tensors[key].tensor_type.name
        return torch.uint8 if kind in BLOCKS else _FLOAT_TYPES[kind]

    def get(self, key: str) -> torch.Tensor:
        t = self._tensors[key]
        kind = t.tensor_type.name
        data = _as_torch(t.data)
        if kind in BLOCKS:
            shape = self._shapes[key]
            return data.reshape(int(np.prod(shape[:-1])), row_bytes(kind, shape[-1]))
        if kind == "BF16":
            data = data.view(torch.uint8).reshape(-1).view(torch.bfloat16)
        return data.reshape(self._shapes[key])

    def file_size(self) -> int:
        return self.path.stat().st_size

    def field(self, key: str, default=None):
        """A metadata value (number, string or list), ``default`` when the file has none.  Not for the
        tokenizer's string arrays (151,936 entries): :meth:`array_item` reads one entry."""
        f = self._fields.get(key)
        return default if f is None else _field_value(f)

    def metadata_keys(self) -> list[str]:
        """Every metadata key of the file (``general.*``, ``<arch>.*``, ``tokenizer.*`` …)."""
        return [k for k in self._fields if not k.startswith("GGUF.")]  # GGUF.*: the header's own fields

    def array_length(self, key: str) -> Optional[int]:
        f = self._fields.get(key)
        return None if f is None else len(f.data)

    def array_item(self, key: str, index: int):
        """Entry ``index`` of an array field (a string array's entry decoded), without reading the others."""
        f = self._fields.get(key)
        if f is None or not 0 <= index < len(f.data):
            return None
        return _field_value(f, index)


class RenamedReader:
    """A reader under other tensor names: ``rename`` maps each of the file's names to the caller's, ``file_name``
    the other way (for messages, also about tensors the file lacks); everything else is the wrapped reader's."""

    def __init__(self, reader, rename: Callable[[str], str], file_name: Callable[[str], str]) -> None:
        self._reader = reader
        self._names: dict[str, str] = {}
        for name in reader.keys():
            new = rename(name)
            if new in self._names:
                raise ValueError(f"{reader.label}: tensors {self._names[new]} and {name} both map to {new}")
            self._names[new] = name
        self.file_name = file_name

    def __getattr__(self, attr):
        return getattr(self._reader, attr)

    def keys(self) -> list[str]:
        return list(self._names)

    def __contains__(self, key: str) -> bool:
        return key in self._names

    def shape(self, key: str) -> tuple[int, ...]:
        return self._reader.shape(self._names[key])

    def dtype(self, key: str) -> torch.dtype:
        return self._reader.dtype(self._names[key])

    def block_type(self, key: str) -> Optional[str]:
        return self._reader.block_type(self._names[key])

    def get(self, key: str) -> torch.Tensor:
        return self._reader.get(self._names[key])
