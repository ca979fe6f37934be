"""GGUF files (ComfyUI-GGUF layout) behind the ``CheckpointReader`` interface, memory-mapped by ``gguf``.

ComfyUI-GGUF and its forks write a diffusion model as its state dict: tensor names are the state-dict
keys (optionally prefixed), shapes are in ggml order (reversed), ``general.architecture`` names the
model (``ideogram4`` or ``ideogram`` for Ideogram 4), 1-D and small tensors are F32/F16/BF16 and the
Linear weights are ggml blocks.  Tensors come back as views of the read-only memory map (no copy):
quantised ones as their raw block bytes, uint8 (rows, bytes per row), with :meth:`block_type` naming
the ggml type; float ones as typed tensors.  The codec is :mod:`.gguf_codec`.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .gguf_codec import BLOCKS, row_bytes

ARCHITECTURES = ("ideogram4", "ideogram")
_FLOAT_TYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
_ORIG_SHAPE = "comfy.gguf.orig_shape."


def _gguf():
    try:
        import gguf  # noqa: WPS433 (runtime dependency, imported only for .gguf files)
    except ImportError as exc:
        raise ValueError(f"reading .gguf files needs the `gguf` package ({exc}); pip install gguf") from None
    return gguf


def _field_value(field):
    try:
        return field.contents()
    except Exception:  # older gguf: decode the last part by hand
        return bytes(field.parts[field.data[0]]).decode("utf-8") if field.types and field.types[0].name == "STRING" \
            else field.parts[field.data[0]].tolist()


def _as_torch(array: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():  # a read-only memory map: the tensor is a view, never written
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


class GGUFCheckpointReader:
    """Keys, logical (torch-order) shapes, dtypes and zero-copy tensors of one GGUF file."""

    def __init__(self, path: Path, label: Optional[str] = None) -> None:
        gguf = _gguf()
        self.label = label or str(path)
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{path}: file not found")
        try:
            reader = gguf.GGUFReader(str(path), "r")
        except Exception as exc:  # truncated / corrupt: numpy or gguf raise their own errors
            raise ValueError(f"{path}: not a readable GGUF file — truncated or corrupt ({type(exc).__name__}: {exc})") from None
        arch_field = reader.fields.get("general.architecture")
        arch = str(_field_value(arch_field)) if arch_field is not None else None
        if arch not in ARCHITECTURES:
            raise ValueError(f"{path}: GGUF general.architecture is {arch!r}; an Ideogram 4 GGUF has one of "
                             f"{', '.join(ARCHITECTURES)}")
        self.metadata = {"general.architecture": arch}
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
