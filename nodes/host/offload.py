"""Offload goes home: weights that came from a file return to their file mapping, never to a private copy.

Our loaders leave every weight as a view of the safetensors memory map (clean, file-backed pages the
kernel can drop and re-read).  ComfyUI moves a model to the accelerator with ``module.to(device)`` and
back with ``module.to(offload_device)`` (``ModelPatcher.unpatch_model`` / ``partially_unload``); the
way back allocates a **private** CPU copy of every weight — RAM the kernel cannot drop.

``HomePatcher`` (a ``ModelPatcher``) records, once per model, each parameter's and buffer's
file-backed CPU tensor (its *home*).  While ComfyUI offloads, moving a module to the CPU first
re-points each weight with a home to that home (the device copy is simply dropped), so the move
copies nothing.  Weights ComfyUI patched (a LoRA merged into a weight: ``patcher.backup``) are
restored by ComfyUI itself from its backup (which, for our models, *is* the home tensor); a weight
that differs from the file is never re-pointed.  Pinned (page-locked) host memory for streaming is
bounded per model (``PIN_LAYERS`` of its largest layers) instead of covering the whole model.

Only Linux exposes which memory is file-backed (``/proc/self/maps``); elsewhere nothing is recorded
and ComfyUI's own behaviour is unchanged.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Iterator, Optional

import torch
import comfy.model_patcher

log = logging.getLogger(__name__)

PIN_LAYERS = 4  # pinned staging for streaming: at most this many of the model's largest layers
_HOMES_ATTR = "_ideogram4_homes"
_move_lock = threading.RLock()


# ----------------------------------------------------------------------------------- file mappings

class FileMappings:
    """The process's file-backed memory ranges (from ``/proc/self/maps``), for ``contains`` look-ups."""

    def __init__(self, ranges: list[tuple[int, int, str]]) -> None:
        self.ranges = sorted(ranges)
        self._starts = [r[0] for r in self.ranges]

    @classmethod
    def read(cls) -> "FileMappings":
        ranges = []
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    parts = line.split(None, 5)
                    if len(parts) < 6 or not parts[5].startswith("/"):
                        continue
                    lo, hi = (int(x, 16) for x in parts[0].split("-"))
                    ranges.append((lo, hi, parts[5].strip()))
        except OSError:
            pass
        return cls(ranges)

    def file_of(self, ptr: int, nbytes: int) -> Optional[str]:
        """The file whose mapping holds ``[ptr, ptr + nbytes)``, or None (private / anonymous memory)."""
        i = bisect.bisect_right(self._starts, ptr) - 1
        if i < 0:
            return None
        lo, hi, path = self.ranges[i]
        end = ptr + max(nbytes, 1)
        # a file may be mapped as several adjacent ranges (one per protection)
        while end > hi and i + 1 < len(self.ranges) and self.ranges[i + 1][0] == hi and self.ranges[i + 1][2] == path:
            i += 1
            hi = self.ranges[i][1]
        return path if lo <= ptr and end <= hi else None


def storage_file(t: torch.Tensor, maps: Optional[FileMappings] = None) -> Optional[str]:
    """The file a CPU tensor's bytes live in (its storage is a view of that file's mapping), else None."""
    if t.device.type != "cpu" or t.numel() == 0:
        return None
    maps = maps or FileMappings.read()
    return maps.file_of(t.data_ptr(), t.numel() * t.element_size())


# ----------------------------------------------------------------------------------- homes

def _tensors(module: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, str, str, torch.Tensor]]:
    """(owner, attribute, dotted key, tensor) for every parameter and buffer under ``module``."""
    for prefix, sub in module.named_modules():
        for name, p in list(sub._parameters.items()) + list(sub._buffers.items()):
            if p is not None:
                yield sub, name, f"{prefix}.{name}" if prefix else name, p


def record_homes(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Remember each file-backed CPU weight of ``model`` (once; kept on the model object)."""
    homes = getattr(model, _HOMES_ATTR, None)
    if homes is None:
        maps = FileMappings.read()
        homes = {key: t.detach() for _, _, key, t in _tensors(model) if storage_file(t, maps)}
        object.__setattr__(model, _HOMES_ATTR, homes)
    return homes


def homes_of(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return getattr(model, _HOMES_ATTR, None) or {}


def _is(t: torch.Tensor, home: torch.Tensor) -> bool:
    return t.device == home.device and t.data_ptr() == home.data_ptr() and t.shape == home.shape


def send_home(model: torch.nn.Module, root: Optional[torch.nn.Module] = None, prefix: str = "",
              skip: frozenset = frozenset()) -> int:
    """Re-point every weight under ``root`` (default ``model``) that has a home to that home.

    ``skip``: keys left alone (weights ComfyUI holds patched, restored from its backup).  Returns the
    number of bytes that did not need a copy.
    """
    homes = homes_of(model)
    if not homes:
        return 0
    saved = 0
    for owner, name, key, t in _tensors(root if root is not None else model):
        key = prefix + key
        home = homes.get(key)
        if home is None or key in skip or _is(t, home) or t.shape != home.shape or t.dtype != home.dtype:
            continue
        if isinstance(t, torch.nn.Parameter):
            try:
                t.data = home
            except RuntimeError:  # a device whose tensors cannot take CPU data in place (e.g. meta)
                owner._parameters[name] = torch.nn.Parameter(home, requires_grad=t.requires_grad)
        else:
            owner._buffers[name] = home
        saved += home.numel() * home.element_size()
    return saved


@dataclass(frozen=True)
class HostMemory:
    """Where a model's CPU-side weights live: file-backed (droppable) or private bytes."""
    file_backed: int
    private: int
    on_device: int


def host_memory(model: torch.nn.Module) -> HostMemory:
    maps = FileMappings.read()
    fb = priv = dev = 0
    for _, _, _, t in _tensors(model):
        n = t.numel() * t.element_size()
        if t.device.type != "cpu":
            dev += n
        elif storage_file(t, maps):
            fb += n
        else:
            priv += n
    return HostMemory(fb, priv, dev)


# ----------------------------------------------------------------------------------- the patcher

def _is_cpu_target(args, kwargs) -> bool:
    device = kwargs.get("device", args[0] if args else None)
    if isinstance(device, (str, torch.device)):
        return torch.device(device).type == "cpu"
    return False


@contextlib.contextmanager
def _moves_go_home(model: torch.nn.Module, skip: frozenset) -> Iterator[None]:
    """While ComfyUI offloads ``model``, ``module.to(cpu)`` on any of its modules re-points homes first."""
    if not homes_of(model):
        yield
        return
    prefixes = {id(m): (n + "." if n else "") for n, m in model.named_modules()}
    original = torch.nn.Module.to

    def to(self, *args, **kwargs):
        prefix = prefixes.get(id(self))
        if prefix is not None and _is_cpu_target(args, kwargs):
            send_home(model, self, prefix, skip)
        return original(self, *args, **kwargs)

    with _move_lock:
        torch.nn.Module.to = to
        try:
            yield
        finally:
            torch.nn.Module.to = original


def _patched_keys(patcher) -> frozenset:
    return frozenset(getattr(patcher, "backup", {}).keys())


class HomePatcher(comfy.model_patcher.ModelPatcher):
    """``ModelPatcher`` whose offload returns file-backed weights to their mapping (module docstring)."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        record_homes(model)
        self._pinned_bytes = 0
        self._pin_budget = None

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        if not unpatch_weights:
            return super().unpatch_model(device_to, unpatch_weights)
        with _moves_go_home(self.model, _patched_keys(self)):
            out = super().unpatch_model(device_to, unpatch_weights)
        if device_to is not None and torch.device(device_to).type == "cpu":
            send_home(self.model)  # unpatched now: a weight restored from a private backup goes home too
        return out

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
        with _moves_go_home(self.model, _patched_keys(self)):
            return super().partially_unload(device_to, memory_to_free, force_patch_weights)

    # -- bounded pinned staging --------------------------------------------------------
    def pin_budget(self) -> int:
        """Bytes of pinned staging this model may hold: its ``PIN_LAYERS`` largest layers."""
        budget = getattr(self, "_pin_budget", None)
        if budget is None:
            sizes = sorted((sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))
                            for m in self.model.modules()), reverse=True)
            budget = self._pin_budget = sum(sizes[:PIN_LAYERS])
        return budget

    def pin_weight_to_device(self, key):
        weight, _, _ = comfy.model_patcher.get_key_weight(self.model, key)
        size = weight.numel() * weight.element_size()
        if key in self.pinned or self._pinned_bytes + size > self.pin_budget():
            return
        before = len(self.pinned)
        super().pin_weight_to_device(key)
        if len(self.pinned) > before:
            self._pinned_bytes += size

    def unpin_weight(self, key):
        if key in self.pinned:
            weight, _, _ = comfy.model_patcher.get_key_weight(self.model, key)
            self._pinned_bytes = max(0, self._pinned_bytes - weight.numel() * weight.element_size())
        return super().unpin_weight(key)

    def host_memory(self) -> HostMemory:
        return host_memory(self.model)


# ----------------------------------------------------------------------------------- RAM budget

def patched_bytes(patcher) -> int:
    """Bytes of the weights ComfyUI patches (LoRA): the only private weight memory once merged."""
    total = 0
    for key in getattr(patcher, "patches", {}):
        try:
            weight, _, _ = comfy.model_patcher.get_key_weight(patcher.model, key)
        except (AttributeError, KeyError):
            continue
        total += weight.numel() * weight.element_size()
    return total


def system_ram_budget(plan, patchers: dict, activation: int):
    """``plan`` with the system-RAM figures of ``patchers`` (name → patcher) and of this machine."""
    import psutil

    from . import memory_policy as mp

    vm = psutil.virtual_memory()
    private = 0
    mapped: dict = {}
    for name, patcher in patchers.items():
        mem = host_memory(patcher.model)
        homes = homes_of(patcher.model)
        home_bytes = sum(t.numel() * t.element_size() for t in homes.values())
        mapped[name] = max(home_bytes, mem.file_backed)
        private += mem.private + (0 if getattr(patcher, "backup", None) else patched_bytes(patcher))  # merged: counted
    return mp.ram_budget(plan, total=vm.total, available=vm.available, private_weights=private, file_backed=mapped,
                         activation_cpu=activation)
