"""A ring of a few page-locked staging buffers for streamed (partially loaded) packed layers (and the LoRA'd plain
Linears of a base shared with an unconditional-from-LoRA view).

A host → GPU copy overlaps compute only from page-locked memory.  Pinning every streamed weight in place
would lock gigabytes of the file mapping (ComfyUI's ``pin_weight_to_device``; ``offload.HomePatcher`` caps
that at a few layers).  Instead each packed layer's storage, scales and bias are copied (CPU memcpy from the
file mapping) into the next of ``SLOTS`` pinned buffers and uploaded from there with ``non_blocking`` on
ComfyUI's offload stream; a buffer is reused only after the event recorded behind its last upload has
completed.  All slots have one size, the largest staged tensor rounded up to a power of two (what torch's pinned
allocator hands out anyway): 4 × 128 MiB = 0.5 GiB for the real model (its largest packed weight is 113 MB; a
bf16 shared base's largest plain weight 127 MB), whatever the model size; 4 × 256 MiB for an fp32 shared base.
When a larger tensor arrives the slots are dropped once their uploads have finished, the pinned cache is emptied
(so the smaller blocks do not stay locked) and the slots are allocated anew at the new size.  The ring's bytes are counted in ComfyUI's pinned-memory total (``TOTAL_PINNED_MEMORY``), which its own
pinning budget reads.  Used only on CUDA, and not when ComfyUI runs with pinned memory disabled.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

SLOTS = 4
MIN_STAGED_BYTES = 2**20  # smaller tensors (scales, biases, code tables) take ComfyUI's plain copy: cheap anyway
MAX_SLOT_BYTES = 256 * 2**20  # so do larger ones (none in the real model: its largest packed weight is 113 MB)


class StagingRing:
    """``SLOTS`` reusable pinned byte buffers of one size; ``allocate`` / ``new_event`` are injectable for tests,
    ``account(delta_bytes)`` is told of every change of the pinned bytes, ``release()`` runs after buffers are
    dropped (returns cached pinned blocks to the system)."""

    def __init__(self, slots: int = SLOTS, *, allocate: Optional[Callable[[int], torch.Tensor]] = None,
                 new_event: Optional[Callable[[], object]] = None, min_bytes: int = MIN_STAGED_BYTES,
                 max_slot_bytes: int = MAX_SLOT_BYTES, account: Callable[[int], None] = lambda delta: None,
                 release: Optional[Callable[[], None]] = None):
        self.allocate = allocate or (lambda n: torch.empty(n, dtype=torch.uint8, pin_memory=True))
        self.new_event = new_event or torch.cuda.Event
        self.min_bytes = min_bytes
        self.max_slot_bytes = max_slot_bytes
        self.account = account
        self.release = release or getattr(torch._C, "_host_emptyCache", lambda: None)
        self.slot_bytes = 0
        self.buffers: list[Optional[torch.Tensor]] = [None] * slots
        self.events: list[Optional[object]] = [None] * slots
        self._next = 0

    @property
    def pinned_bytes(self) -> int:
        return sum(b.numel() for b in self.buffers if b is not None)

    def fits(self, t: torch.Tensor) -> bool:
        return t.device.type == "cpu" and not t.is_pinned() and self.min_bytes <= t.nbytes <= self.max_slot_bytes

    def _wait(self, slot: int) -> None:
        """Until the last upload from ``slot``'s buffer has finished."""
        event = self.events[slot]
        if event is not None:
            event.synchronize()
            self.events[slot] = None

    def _grow(self, n: int) -> None:
        """Every slot to the next power of two ≥ ``n``: the old buffers go once their uploads have finished."""
        for i in range(len(self.events)):
            self._wait(i)
        dropped = self.pinned_bytes
        self.buffers = [None] * len(self.buffers)
        if dropped:
            self.account(-dropped)
            self.release()
        self.slot_bytes = 1 << (n - 1).bit_length()

    def stage(self, t: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(a pinned copy of ``t``, its slot); call :meth:`uploaded` with the slot once its upload is queued."""
        n = t.nbytes
        if n > self.slot_bytes:
            self._grow(n)
        i = self._next
        self._next = (i + 1) % len(self.buffers)
        self._wait(i)
        buf = self.buffers[i]
        if buf is None:
            self.buffers[i] = buf = self.allocate(self.slot_bytes)
            self.account(buf.numel())
        view = buf[:n].view(t.dtype).view(t.shape)
        view.copy_(t)  # copy_ reads a strided source as it is
        return view, i

    def uploaded(self, slot: int, stream, device) -> None:
        """Record that slot's upload on ``stream`` (None: the current stream of ``device``, where the copy ran)."""
        event = self.new_event()
        event.record(stream if stream is not None else torch.cuda.current_stream(device))
        self.events[slot] = event


_RINGS: dict[str, StagingRing] = {}


def ring_for(device: torch.device) -> Optional[StagingRing]:
    """The process's ring for uploads to ``device`` (CUDA only, pinned memory allowed), else None."""
    if torch.device(device).type != "cuda":
        return None
    import comfy.model_management as mm

    if getattr(mm, "MAX_PINNED_MEMORY", 1) <= 0:  # --disable-pinned-memory
        return None
    key = str(device)
    if key not in _RINGS:
        _RINGS[key] = StagingRing(account=_comfy_pinned_account)
    return _RINGS[key]


def _comfy_pinned_account(delta: int) -> None:
    """The ring's pinned bytes in ComfyUI's total, so its own pinning stays within its budget."""
    import comfy.model_management as mm

    if hasattr(mm, "TOTAL_PINNED_MEMORY"):
        mm.TOTAL_PINNED_MEMORY += delta


def upload(t: Optional[torch.Tensor], device, stream, non_blocking: bool, cast_to, ring: Optional[StagingRing]):
    """``t`` on ``device`` through ``cast_to`` (ComfyUI's ``cast_to``), staged in ``ring`` when it can be."""
    if t is None:
        return None
    if ring is None or not ring.fits(t):
        return cast_to(t, None, device, non_blocking=non_blocking, stream=stream)
    staged, slot = ring.stage(t)
    out = cast_to(staged, None, device, non_blocking=True, stream=stream)
    ring.uploaded(slot, stream, device)
    return out
