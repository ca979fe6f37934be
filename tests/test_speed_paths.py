"""Speed paths that must not change a bit: per-run caching, the attention hook, the fp8 decode."""

from __future__ import annotations

import pytest
import torch

from model import load_transformer
from model.checkpoints.ops import TorchOps
from model.dit.attention import additive_mask, sdpa_attention
from sampling import sample

from test_dit_parity import _inputs


@pytest.fixture(scope="module")
def bf16_pair(tiny_files):
    return (load_transformer(tiny_files["bf16"]["cond"], dtype=torch.bfloat16),
            load_transformer(tiny_files["bf16"]["uncond"], dtype=torch.bfloat16))


def _count_calls(module):
    calls = []
    handle = module.register_forward_hook(lambda *_: calls.append(1))
    return calls, handle


@pytest.mark.parametrize("lengths", [[7], [7, 4]])
def test_cached_run_equals_uncached_bit_for_bit(bf16_pair, tiny_cfg, lengths):
    cond, uncond = bf16_pair
    feats, x = _inputs(11, lengths, 15, tiny_cfg.llm_features_dim)
    times = [torch.full((len(lengths),), v) for v in (0.2, 0.5, 0.9)]
    plain = [cond(x, t, feats, grid_hw=(3, 5), text_lengths=lengths) for t in times]
    plain_u = [uncond(x, t, None, grid_hw=(3, 5)) for t in times]
    calls, handle = _count_calls(cond.llm_cond_proj)
    try:
        with cond.sampling_run(), uncond.sampling_run():
            cached = [cond(x, t, feats, grid_hw=(3, 5), text_lengths=lengths) for t in times]
            cached_u = [uncond(x, t, None, grid_hw=(3, 5)) for t in times]
            # a different features tensor is a cache miss, not a stale hit
            other = cond(x, times[0], feats * 2, grid_hw=(3, 5), text_lengths=lengths)
    finally:
        handle.remove()
    assert len(calls) == 2  # the text projection ran once for `feats` (3 steps) and once for `feats * 2`
    assert all(torch.equal(a, b) for a, b in zip(plain + plain_u, cached + cached_u))
    assert torch.equal(other, cond(x, times[0], feats * 2, grid_hw=(3, 5), text_lengths=lengths))
    assert cond._run_cache is None and uncond._run_cache is None  # dropped after the run


def test_sample_runs_each_model_inside_one_cached_run(bf16_pair, tiny_cfg):
    cond, uncond = bf16_pair
    feats, _ = _inputs(12, [9], 1, tiny_cfg.llm_features_dim)
    calls, handle = _count_calls(cond.llm_cond_proj)
    try:
        sample(cond, uncond, feats, height=256, width=384, preset="V4_TURBO_12", seed=1234)
    finally:
        handle.remove()
    assert len(calls) == 1  # 12 steps, one text projection


# ops that read a tensor back to the host (``.item()``, ``bool(t)``, ``tolist()``) or build one from Python data
# (``torch.tensor(list)``, which on a GPU is a blocking host-to-device copy)
HOST_ROUND_TRIPS = ("aten._local_scalar_dense", "aten.lift_fresh", "aten.lift_fresh_copy")


def test_steps_after_the_first_make_no_host_round_trips(bf16_pair, tiny_cfg):
    """Inside a sampling run, every step after the first (which fills the cache) dispatches no op that reads a
    tensor back or uploads Python data: the padded two-caption batch (mask) and the image-only pass, and the
    sampler's own loop."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if str(func.overloadpacket) in HOST_ROUND_TRIPS:
                seen.append(str(func))
            return func(*args, **(kwargs or {}))

    cond, uncond = bf16_pair
    feats, _ = _inputs(12, [9, 5], 1, tiny_cfg.llm_features_dim)
    watch = Watch()

    def after_step(k, n, z):  # count from the end of step 1 to the end of the run
        if k == 0:
            watch.__enter__()

    with torch.inference_mode():
        try:
            sample(cond, uncond, feats, height=256, width=256, preset="V4_TURBO_12", seed=3, text_lengths=[9, 5],
                   callback=after_step)
        finally:
            watch.__exit__(None, None, None)
    assert seen == []
    # the watch itself sees them: the first step's cache fill builds its tables from Python lists
    with torch.inference_mode(), Watch(), cond.sampling_run():
        cond(torch.zeros(2, 256, 128), torch.full((2,), 0.5), feats, grid_hw=(16, 16), text_lengths=[9, 5])
    assert seen


class RecordingOps(TorchOps):
    seen: list = []
    masks: list = []

    @staticmethod
    def attention(q, k, v, heads, mask=None, transformer_options=None):
        RecordingOps.seen.append((heads, None if mask is None else mask.dtype, transformer_options))
        return sdpa_attention(q, k, v, heads, mask)

    @staticmethod
    def attention_mask(allowed, dtype, transformer_options=None):
        RecordingOps.masks.append((dtype, transformer_options))
        return additive_mask(allowed, dtype)


def test_attention_and_mask_come_from_the_operations_namespace(tiny_files, tiny_cfg, bf16_pair):
    RecordingOps.seen.clear()
    RecordingOps.masks.clear()
    dit = load_transformer(tiny_files["bf16"]["cond"], dtype=torch.bfloat16, operations=RecordingOps)
    feats, x = _inputs(11, [7, 4], 15, tiny_cfg.llm_features_dim)
    opts = {"marker": 1}
    with dit.sampling_run():
        for t in (0.3, 0.6):
            out = dit(x, torch.full((2,), t), feats, grid_hw=(3, 5), text_lengths=[7, 4], transformer_options=opts)
    # the kernel-form mask is built once per run, knowing the options that may route the call elsewhere
    assert RecordingOps.masks == [(torch.bfloat16, opts)]
    assert len(RecordingOps.seen) == 2 * tiny_cfg.num_layers
    assert all(s == (tiny_cfg.num_heads, torch.bfloat16, opts) for s in RecordingOps.seen)
    # the additive mask gives SDPA's bool-mask result to within bf16 rounding of the softmax
    ref = bf16_pair[0](x, torch.full((2,), 0.6), feats, grid_hw=(3, 5), text_lengths=[7, 4])
    assert torch.allclose(out, ref, rtol=0, atol=2e-2 * float(ref.abs().max()))


def test_torch_compile_traces_the_block_loop_as_one_graph(bf16_pair, tiny_cfg):
    """torch._dynamo.explain: the only break is the per-run cache lookup before the blocks."""
    cond, _ = bf16_pair
    feats, x = _inputs(11, [7], 15, tiny_cfg.llm_features_dim)
    torch._dynamo.reset()
    with torch.no_grad(), cond.sampling_run():
        cond(x, torch.tensor([0.5]), feats, grid_hw=(3, 5))
        e = torch._dynamo.explain(cond)(x, torch.tensor([0.5]), feats, grid_hw=(3, 5))
    torch._dynamo.reset()
    assert e.graph_break_count == 1, [b.reason for b in e.break_reasons]
    assert "_memo" in e.break_reasons[0].reason
    assert all("TransformerBlock" not in str(frame) and "layer(" not in str(frame)
               for b in e.break_reasons for frame in b.user_stack)


def test_cache_works_under_inference_mode(bf16_pair, tiny_cfg):
    """ComfyUI samples under torch.inference_mode: inference tensors have no version counter."""
    cond, _ = bf16_pair
    feats, x = _inputs(11, [7], 15, tiny_cfg.llm_features_dim)
    plain = cond(x, torch.tensor([0.4]), feats, grid_hw=(3, 5))
    with torch.inference_mode():
        f_inf = feats.clone()
        with cond.sampling_run():
            outs = [cond(x, torch.tensor([0.4]), f_inf, grid_hw=(3, 5)) for _ in range(2)]
    assert all(torch.equal(o, plain) for o in outs)


# --------------------------------------------------------------------------- pinned staging ring

class _Event:
    def __init__(self, log):
        self.log, self.done = log, False

    def record(self, stream=None):
        self.log.append(("record", stream))

    def synchronize(self):
        self.log.append(("wait", id(self)))
        self.done = True


def _ring(log, slots=4, **kw):
    from nodes.host.staging_ring import StagingRing

    return StagingRing(slots, allocate=lambda n: torch.empty(n, dtype=torch.uint8),
                       new_event=lambda: _Event(log), min_bytes=1024, **kw)


def test_staging_ring_reuses_a_buffer_only_after_its_upload_finished():
    from nodes.host.staging_ring import upload

    log, uploads = [], []

    def cast_to(t, dtype, device, non_blocking=False, stream=None):
        uploads.append((t.data_ptr(), non_blocking, stream))
        return t.clone()  # "the device copy", taken when queued

    ring = _ring(log)
    g = torch.Generator().manual_seed(0)
    sources = [torch.randn(64, 80 - 8 * i, generator=g).to(torch.bfloat16) for i in range(6)]  # later ones fit
    outs = [upload(t, "cuda", "stream", False, cast_to, ring) for t in sources]
    assert all(torch.equal(o, t) for o, t in zip(outs, sources))
    assert all(nb and s == "stream" for _, nb, s in uploads)  # staged copies go non_blocking on the offload stream
    assert len({p for p, _, _ in uploads}) == 4  # four slots reused in turn, no new pinned buffer per tensor
    waits = [e for e in log if e[0] == "wait"]
    assert len(waits) == 2  # the 5th and 6th tensors waited for the uploads from slots 0 and 1
    assert log.index(waits[0]) > 3  # …only after four uploads were recorded
    assert ring.pinned_bytes == 4 * ring.slot_bytes == 4 * 16384  # one power-of-two size ≥ the largest tensor


def test_staging_ring_grows_all_slots_at_once_after_their_uploads_and_accounts_for_them():
    from nodes.host.staging_ring import upload

    log, accounted, released = [], [], []
    ring = _ring(log, account=accounted.append, release=lambda: released.append(len(log)))
    copy = lambda t, *a, **k: t.clone()
    small = [torch.zeros(600, dtype=torch.float16) for _ in range(4)]  # 1200 bytes → 2 KiB slots, all four used
    for t in small:
        upload(t, "cuda", "stream", True, copy, ring)
    assert ring.slot_bytes == 2048 and ring.pinned_bytes == 4 * 2048 and sum(accounted) == ring.pinned_bytes
    big = torch.zeros(5000, dtype=torch.float16)  # 10 000 bytes → 16 KiB slots
    assert torch.equal(upload(big, "cuda", "stream", True, copy, ring), big)
    assert ring.slot_bytes == 16384
    waits = [e for e in log if e[0] == "wait"]
    # every earlier upload (the last slot's too) finished before the buffers went and the pinned cache was
    # emptied, and each was waited for once
    assert len(waits) == 4 and released == [log.index(waits[-1]) + 1]
    assert [b.numel() for b in ring.buffers if b is not None] == [16384]  # old buffers gone, the new one allocated
    assert sum(accounted) == ring.pinned_bytes == 16384  # ComfyUI's total follows: −4 × 2 KiB, +16 KiB
    between = torch.arange(12000, dtype=torch.float16)  # 24 000 bytes: over the 16 KiB slots, under twice that
    assert torch.equal(upload(between, "cuda", "stream", True, copy, ring), between) and ring.slot_bytes == 32768


def test_staging_ring_leaves_small_pinned_and_huge_tensors_to_comfyui():
    from nodes.host.staging_ring import upload

    seen = []
    ring = _ring([], max_slot_bytes=1 << 16)
    small, huge = torch.zeros(8), torch.zeros(1 << 15)
    for t in (small, huge, None):
        upload(t, "cuda", None, True, lambda t, *a, **k: seen.append(t) or t, ring)
    assert [s is t for s, t in zip(seen, (small, huge))] == [True, True] and len(seen) == 2
    assert ring.pinned_bytes == 0
    pinned = torch.zeros(1024)
    pinned.is_pinned = lambda: True  # already page-locked (ComfyUI pinned it): uploaded as it is
    assert not ring.fits(pinned) and not ring.fits(torch.zeros(1024, device="meta"))  # on the CPU only
    assert ring.fits(torch.zeros(256)) and ring.fits(torch.zeros(1 << 14))  # min_bytes and max_slot_bytes themselves


def test_staging_ring_records_on_the_devices_current_stream_without_an_offload_stream(monkeypatch):
    from nodes.host.staging_ring import upload

    log = []
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device: f"current stream of {device}")
    upload(torch.zeros(512), "cuda:1", None, True, lambda t, *a, **k: t.clone(), _ring(log))
    assert log == [("record", "current stream of cuda:1")]
    strided = torch.randn(32, 24, generator=torch.Generator().manual_seed(1)).t()  # a transposed (strided) source
    assert torch.equal(upload(strided, "cuda:1", None, True, lambda t, *a, **k: t.clone(), _ring(log)), strided)


def test_torch_compile_traces_an_nf4_layer_without_graph_breaks():
    """bitsandbytes' nf4 kernel through its registered op, its probe result a constant: one graph per layer (a
    ``QuantState`` built per call broke the graph 7 times per Linear)."""
    pytest.importorskip("bitsandbytes.functional")
    from model.checkpoints import QuantizedLinear
    from model.checkpoints.nf4 import NF4_CODE, bitsandbytes_decodes, quantize_nf4

    assert bitsandbytes_decodes("cpu")  # the kernel path is the one traced
    lin = QuantizedLinear(128, 64, bias=True, scheme="nf4", dtype=torch.bfloat16)
    packed, absmax = quantize_nf4(torch.randn(64, 128, generator=torch.Generator().manual_seed(0)))
    lin.weight.data, lin.absmax, lin.quant_map = packed, absmax, torch.tensor(NF4_CODE)
    lin.bias.data = torch.zeros(64, dtype=torch.bfloat16)
    x = torch.randn(3, 128, dtype=torch.bfloat16)
    torch._dynamo.reset()
    e = torch._dynamo.explain(lin)(x)
    torch._dynamo.reset()
    assert e.graph_break_count == 0, [b.reason for b in e.break_reasons]
    assert torch.equal(torch.compile(lin, backend="eager")(x), lin(x))


def test_fast_fp8_kernel_check_is_a_compile_time_constant(monkeypatch):
    """The probe (a data-dependent ``bool(torch.all(...))`` on CUDA) must not be traced into a compiled DiT at every fp8
    layer: ``kernel_available`` is a constant to dynamo and the cached probe sits behind it (dynamo traces through a
    ``functools.cache`` wrapper and would ignore the marker on it)."""
    import functools

    from model.checkpoints import fp8_matmul

    @functools.cache
    def probe(device_index):  # what the CUDA probe does after its capability check
        return bool(torch.all(torch.ones(2) > 0))

    monkeypatch.setattr(fp8_matmul, "_probe_kernel", probe)
    torch._dynamo.reset()
    e = torch._dynamo.explain(lambda x: x * (2 if fp8_matmul.kernel_available(0) else 3))(torch.ones(2))
    torch._dynamo.reset()
    assert e.graph_break_count == 0, [b.reason for b in e.break_reasons]
