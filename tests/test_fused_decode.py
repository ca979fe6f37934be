"""The shared machinery of the compiled decodes (``model.checkpoints.fused_decode``): the bit comparison the probes
use, and what a failure of a probed kernel does."""

from __future__ import annotations

import logging

import pytest
import torch

from model.checkpoints.fused_decode import FusedDecode, compile_exact, differing, private_copy, same_bits


def test_same_bits_counts_differing_values_and_matches_nan_with_nan():
    a = torch.tensor([1.0, -0.0, float("inf"), float("nan"), 2.0])
    b = torch.tensor([1.0, 0.0, float("inf"), float("nan"), 2.0])
    assert same_bits(a, b) == 1  # -0.0 vs 0.0: equal as numbers, not as bits
    other_nan = a.clone()
    other_nan.view(torch.int32)[3] = 0x7FC00001  # another NaN payload
    assert same_bits(other_nan, a) == 0
    assert same_bits(a.to(torch.bfloat16), a) == a.numel()  # another dtype: every value differs
    assert same_bits(a[:4], a) == a.numel()
    assert same_bits(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4])) == 1


def test_private_copy_is_the_same_function_with_its_own_code():
    def make(k):
        def scaled(x):
            return x * k
        return scaled

    f = make(3)
    g = private_copy(f)
    assert g(2) == 6 and g.__code__ is not f.__code__ and g.__code__ == f.__code__


def _decode(kernel, env="IDEOGRAM4_TEST_DECODE"):
    return FusedDecode(what="test decode", env=env, eager_choice="eager", eager_name="the eager ops",
                       eager_short="eager", build=lambda variant: kernel, eager=lambda variant, x: x * 2,
                       probe_cases=lambda device, variant: [(torch.arange(8.0),)], describe=lambda variant: "float32",
                       logger=logging.getLogger("test_fused_decode"))


def test_out_of_memory_propagates_and_keeps_the_kernel(monkeypatch):
    """A full device is not a wrong kernel, in the probe or after it: the error reaches the host (ComfyUI frees
    memory and retries) and the compiled decode stays on."""
    monkeypatch.setenv("IDEOGRAM4_TEST_DECODE", "fused")
    state = {"oom": False}

    def kernel(x):
        if state["oom"]:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return x * 2

    state["oom"] = True  # in the probe: raised, not remembered as a broken kernel
    decode = _decode(kernel)
    with pytest.raises(torch.OutOfMemoryError):
        decode.decoder("cpu", ("v",))
    state["oom"] = False
    assert torch.equal(decode.run("cpu", ("v",), (torch.ones(3),)), torch.full((3,), 2.0))  # probed again
    state["oom"] = True
    with pytest.raises(torch.OutOfMemoryError):
        decode.run("cpu", ("v",), (torch.ones(3),))
    state["oom"] = False
    assert decode.decoder("cpu", ("v",))[0] is kernel


def test_another_failure_turns_the_kernel_off_for_that_variant_only(monkeypatch, caplog):
    monkeypatch.setenv("IDEOGRAM4_TEST_DECODE", "fused")

    def kernel(x):
        if x.numel() == 5:
            raise RuntimeError("a compiler error\nwith details")
        return x * 2

    decode = _decode(kernel)
    with caplog.at_level(logging.WARNING, logger="test_fused_decode"):
        assert decode.run("cpu", ("a",), (torch.ones(5),)) is None  # the caller runs its eager decode
    assert ("test decode: the fused kernel failed on cpu (float32) after its probe and is off there for this "
            "process: RuntimeError: a compiler error; decoding with the eager ops") in caplog.text
    assert decode.decoder("cpu", ("a",))[0] is None and decode.decoder("cpu", ("b",))[0] is kernel
    decode.forget()
    assert decode.decoder("cpu", ("a",))[0] is kernel


def test_nothing_is_dispatched_when_the_eager_decode_runs(monkeypatch):
    """The eager path's per-layer op count must not grow by the fused path's bookkeeping (a detach per argument was
    12 extra ops per block for fp8): asking ``run`` costs no aten op unless its kernel runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Watch(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func.overloadpacket))
            return func(*args, **(kwargs or {}))

    decode = _decode(lambda x: x * 2)
    weight = torch.nn.Parameter(torch.ones(4), requires_grad=False)
    monkeypatch.setenv("IDEOGRAM4_TEST_DECODE", "eager")
    with Watch():
        assert decode.run("cpu", ("v",), (weight,)) is None
    assert seen == []
    monkeypatch.setenv("IDEOGRAM4_TEST_DECODE", "fused")
    decode.decoder("cpu", ("v",))  # probe outside the watch
    with Watch():
        out = decode.run("cpu", ("v",), (weight,))
    assert torch.equal(out, torch.full((4,), 2.0))
    assert seen == ["aten.detach", "aten.mul"]  # the Parameter reaches the kernel as the plain tensor it holds



def test_a_graph_compiled_after_the_probe_is_checked_on_the_calls_values(monkeypatch, caplog):
    """A call the probed graph's guards refuse is compiled again, never run unchecked: that graph's result is
    compared bit for bit with the eager decode of the call's values; a wrong one gives the eager result and turns
    the kernel off."""
    monkeypatch.setenv("IDEOGRAM4_TEST_DECODE", "fused")

    def kernel(x):  # static shapes: every new length is a new graph; from 100 values on, a wrong one
        return x * 2 if x.shape[0] < 100 else x * 2 + 1

    decode = _decode(torch.compile(kernel, backend="eager", dynamic=False, fullgraph=True))
    with caplog.at_level(logging.INFO, logger="test_fused_decode"):
        assert decode.decoder("cpu", ("v",))[0] is not None  # the probe: 8 values
        x = torch.arange(16.0)
        assert torch.equal(decode.run("cpu", ("v",), (x,)), x * 2)
        assert "test decode on cpu (float32): a graph compiled again (" in caplog.text
        with torch.inference_mode():
            x_inference = torch.arange(16.0)
        caplog.clear()
        assert torch.equal(decode.run("cpu", ("v",), (x_inference,)), x * 2)
        assert "dispatch key set mismatch), bit-identical to the eager decode on the call's values" in caplog.text
        caplog.clear()
        assert torch.equal(decode.run("cpu", ("v",), (x,)), x * 2)  # a graph already checked: nothing compiled
        assert caplog.text == ""
        y = torch.arange(200.0)
        assert torch.equal(decode.run("cpu", ("v",), (y,)), y * 2)  # the eager result, not the wrong graph's
    assert "differs from the eager decode in 200 of 200 values; decoding with the eager ops" in caplog.text
    assert decode.decoder("cpu", ("v",))[0] is None
    assert decode.run("cpu", ("v",), (x,)) is None


def test_a_torch_without_set_stance_keeps_the_eager_decode(monkeypatch):
    monkeypatch.setenv("IDEOGRAM4_TEST_DECODE", "fused")
    monkeypatch.delattr(torch.compiler, "set_stance")
    decode = _decode(lambda x: x * 2)
    fn, why = decode.decoder("cpu", ("v",))
    assert fn is None and why == (f"torch {torch.__version__} has no torch.compiler.set_stance (torch 2.6 and later), "
                                  f"which keeps graphs that were not checked from running")
    assert decode.run("cpu", ("v",), (torch.ones(2),)) is None


def test_compile_exact_keeps_the_roundings_eager_torch_makes():
    """Inductor by default skips a cast's rounding between fused ops (and Triton contracts a·b ± c into an FMA);
    the decodes' compiler keeps eager's numerics, so their probes compare like with like."""
    def f(a, b):
        y = (a * b).to(torch.bfloat16)
        return y, y.to(torch.float32) * 3.0

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4096, generator=g), torch.randn(4096, generator=g)
    want = f(a, b)
    default = torch.compile(f, dynamic=False, fullgraph=True)(a, b)
    assert same_bits(default[1], want[1]) > 1000  # the bf16 rounding skipped: the setting is needed
    exact = compile_exact(f, dynamic=False)(a, b)
    assert [same_bits(x, y) for x, y in zip(exact, want)] == [0, 0]


def test_differing_compares_tuples_and_counts_a_wrong_kind_of_result_as_all_different():
    a, b = torch.arange(4.0), torch.tensor([1, 2], dtype=torch.uint8)
    assert differing((a, b), (a, b)) == (0, 6)
    assert differing((a, b + 1), (a, b)) == (2, 6)
    assert differing(a, (a, b)) == (6, 6) and differing((a,), (a, b)) == (6, 6)
    assert differing((a, b), a) == (4, 4)
