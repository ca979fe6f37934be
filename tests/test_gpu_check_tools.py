"""The tools around gpu_check.sh: the GPU kit (benchmarks/gpu_kit.py), the preflight (benchmarks/gpu_env.py) and
gpu_check.py's way of keeping what it measured when a section fails.

The kit is what a bare GPU machine needs to run gpu_check.sh: these tests check its rules on small fake trees
(which pins it takes, which binaries and files it leaves out) without pip or a network."""

from __future__ import annotations

import os
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_vs_core  # noqa: E402
import gpu_check  # noqa: E402
import gpu_env  # noqa: E402
import gpu_kit  # noqa: E402


def _write(path: Path, text: str = "x", size: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text if not size else "y" * size)
    return path


def test_requirements_take_comfyuis_pins_and_the_packs_own_lines(tmp_path):
    _write(tmp_path / "requirements.txt", "torch\ncomfy-kitchen==0.2.31\ncomfy_aimdo==0.4.13  # pinned\n"
                                          "av>=16.0.0\n\n#non essential\nkornia>=0.7.1\n")
    reqs = gpu_kit.kit_requirements(tmp_path)
    assert "comfy-kitchen==0.2.31" in reqs and "comfy_aimdo==0.4.13" in reqs and "av>=16.0.0" in reqs
    assert "torchsde" in reqs  # not pinned by this checkout: the bare name
    ours = gpu_kit.requirement_specs(ROOT / "requirements.txt")
    assert ours["gguf"] in reqs and ours["jsonschema"] in reqs
    assert not any(r.startswith(("safetensors", "transformers", "torch>", "torch=", "kornia")) for r in reqs)
    assert "bitsandbytes>=0.45" in reqs


def test_prune_keeps_this_gpus_libraries_and_lists_the_rest(tmp_path):
    site = tmp_path / "site"
    for name in ("libbitsandbytes_cuda130.so", "libbitsandbytes_cpu.so", "libbitsandbytes_cuda128.so",
                 "libbitsandbytes_rocm72.so"):
        _write(site / "bitsandbytes" / name, size=1024)
    _write(site / "comfy_kitchen" / "backends" / "cuda" / "_C.abi3.so", size=10)
    _write(site / "comfy_kitchen" / "backends" / "hip" / "_C.abi3.so", size=10)
    removed = gpu_kit.prune_binaries(site, "130")
    left = sorted(p.name for p in (site / "bitsandbytes").iterdir())
    assert left == ["libbitsandbytes_cpu.so", "libbitsandbytes_cuda130.so"]
    assert (site / "comfy_kitchen" / "backends" / "cuda" / "_C.abi3.so").exists()
    assert not (site / "comfy_kitchen" / "backends" / "hip" / "_C.abi3.so").exists()
    assert len(removed) == 3 and any("cuda128" in r for r in removed) and any("hip" in r for r in removed)
    with pytest.raises(SystemExit, match="no library for CUDA 129"):
        gpu_kit.prune_binaries(site, "129")


def test_comfyui_copy_keeps_code_and_configs_not_tests_or_vocabularies(tmp_path):
    src, dest = tmp_path / "ComfyUI", tmp_path / "out"
    keep = ["comfy/model_management.py", "comfy/sd1_clip_config.json", "nodes.py", "comfyui_version.py",
            "comfy/ldm/cosmos/cosmos_tokenizer/layers.py", "comfy_extras/nodes_lora.py"]
    drop = ["tests/test_x.py", "tests-unit/a.py", "comfy_api_nodes/big.py", "comfy/sd1_tokenizer/vocab.json",
            "comfy/text_encoders/qwen25_tokenizer/merges.txt", "comfy/comfy_types/examples/a.png",
            ".git/config.py", "comfy/__pycache__/x.py", "blueprints/a.json"]
    for rel in keep + drop:
        _write(src / rel)
    _write(src / "comfy" / "huge.json", size=gpu_kit.COMFY_MAX_FILE + 1)
    copied = gpu_kit.copy_comfyui(src, dest)
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == sorted(keep) and copied == len(keep)
    assert all((dest / d).is_dir() for d in ("custom_nodes", "models", "input", "output", "temp"))
    with pytest.raises(SystemExit, match="not a ComfyUI checkout"):
        gpu_kit.copy_comfyui(tmp_path / "nothing", dest)


def test_manifest_is_read_back_from_the_kit(tmp_path):
    kit = tmp_path / "gpu_kit.tar.xz"
    _write(tmp_path / "stage" / "manifest.txt", "gpu_kit built … for Python 3.12\n")
    with tarfile.open(kit, "w:xz", preset=0) as tar:
        tar.add(tmp_path / "stage" / "manifest.txt", arcname="manifest.txt")
    assert gpu_kit.read_manifest(kit).startswith("gpu_kit built")


def test_preflight_stops_the_run_naming_what_is_missing(monkeypatch, capsys):
    monkeypatch.setattr(gpu_env, "REQUIRED", gpu_env.REQUIRED + ("no_such_package_i4",))
    monkeypatch.setattr(gpu_env, "OPTIONAL", ("another_missing_optional_i4",))
    assert gpu_env.main() == gpu_env.MISSING_REQUIRED == 2  # gpu_check.sh stops on 2
    out = capsys.readouterr().out
    assert "no_such_package_i4" in out.split("!! missing:")[1]
    assert "another_missing_optional_i4 NOT USABLE" in " ".join(out.split())
    assert "another_missing_optional_i4" not in out.split("!! missing:")[1]


def test_preflight_passes_without_comfyui_and_says_its_steps_are_skipped(monkeypatch, capsys):
    monkeypatch.setattr(gpu_env, "OPTIONAL", ())
    monkeypatch.delenv("COMFYUI_PATH", raising=False)
    assert gpu_env.main() == 0
    out = capsys.readouterr().out
    assert "COMFYUI_PATH not set" in out and "nf4 decode on cpu: bitsandbytes kernel" in out  # probed where it runs


def test_preflight_reports_a_comfyui_that_does_not_import(monkeypatch, tmp_path, capsys):
    _write(tmp_path / "comfy" / "__init__.py", "")
    _write(tmp_path / "comfy" / "options.py", "raise ImportError('broken checkout')\n")
    monkeypatch.setattr(gpu_env, "OPTIONAL", ())
    monkeypatch.setenv("COMFYUI_PATH", str(tmp_path))
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.setattr(sys, "argv", ["gpu_env.py"])
    for name in ("comfy", "comfy.options"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    assert gpu_env.main() == gpu_env.COMFYUI_BROKEN == 3  # gpu_check.sh skips the ComfyUI steps on 3
    assert "does NOT import: ImportError: broken checkout" in capsys.readouterr().out
    assert sys.argv == ["gpu_env.py"]


def test_a_failing_section_keeps_the_others_and_their_json(monkeypatch, tmp_path, capsys):
    """gpu_check.py runs the quick sections first and writes the JSON after each: one that raises is reported
    (exit 1) while the others' figures stay in the file."""
    def broken(args, device, out):
        raise RuntimeError("no kernel image is available")

    monkeypatch.setattr(gpu_check, "parity", broken)
    json_path = tmp_path / "gpu_check.json"
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--cpu-smoke", "--sections", "plan,parity,gemm", "--json", str(json_path)])
    assert exit_info.value.code == 1
    saved = __import__("json").loads(json_path.read_text())
    assert saved["parity"] == {"error": "RuntimeError: no kernel image is available"}
    nf4_16 = [r for r in saved["plan"] if r["format"] == "nf4" and r["cap_gib"] == 16]
    assert nf4_16 and all(r["mode"] == "resident" for r in nf4_16)
    assert saved["bf16_gemm_flops"] > 0  # the section after the broken one ran (the GEMM rate: the bf16 limit)
    assert "!! section parity failed" in capsys.readouterr().out


def test_targets_table_judges_each_issue_13_target(tmp_path):
    import json

    import gpu_targets

    # the step's FLOPs from the real configuration: the issue's ≈ 1.7e14 for both passes at 1024²
    assert 1.65e14 < gpu_targets.step_flops(1024, 512) < 1.8e14
    rows = [{"format": f, "size": 1024, "s_per_step": s, "peak_vram_gib": 40.0, "weights_gib": 18.0, "build_s": 1.0}
            for f, s in (("bf16", 0.25), ("fp8", 0.27), ("fp8_fast", 0.17), ("nf4", 0.27))]
    rows.append({"format": "fp8_scaled", "error": "RuntimeError: boom"})
    check = {"device": "cuda", "gpu": "NVIDIA H200", "torch": "2.11.0", "speed": rows,
             "plan": [{"format": "nf4", "size": 1024, "cap_gib": 16, "mode": "resident", "streamed_gib": 0.0,
                       "reserve_gib": 1.0},
                      {"format": "bf16", "size": 2048, "cap_gib": 12, "mode": "partial", "streamed_gib": 26.4,
                       "reserve_gib": 3.3}],
             "parity": [{"dtype": "bf16", "case": "cond", "rel_err": 0.01, "tol": 0.03, "ok": True}]}
    (tmp_path / "gpu_check.json").write_text(json.dumps(check))
    (tmp_path / "vs_core.json").write_text(json.dumps({"ours_s": 0.2, "core_s": 0.3, "config": "34×4608", "size": 1024}))
    assert gpu_targets.main(["--dir", str(tmp_path), "--out", str(tmp_path / "targets.md")]) == 0
    verdicts = {a: (b, c) for a, b, c in gpu_targets.targets(check, json.loads((tmp_path / "vs_core.json").read_text()))}
    assert verdicts["bf16, 1024² Default-20 ≤ 5 s"] == ("5.00 s", "met")  # 20 × 0.25 s
    share = next(v for k, v in verdicts.items() if k.startswith("bf16 step ≥ 85 %"))
    assert share == (f"{100 * gpu_targets.step_flops(1024, 512) / 989e12 / 0.25:.0f} % (989 TFLOP/s data sheet)",
                     "**not met**")
    # with the GEMM rate gpu_check measured on the GPU, that is the limit (the data sheet's share beside it)
    measured = {a: b for a, b, _ in gpu_targets.targets({**check, "bf16_gemm_flops": 790e12}, None)}
    share = 100 * gpu_targets.step_flops(1024, 512) / 0.25
    assert next(v for k, v in measured.items() if k.startswith("bf16 step ≥ 85 %")) == (
        f"{share / 790e12:.0f} % (790 TFLOP/s measured (bf16 GEMM 8192³); data sheet 989: {share / 989e12:.0f} %)")
    assert verdicts["fp8 exact ≤ bf16 + 5 %"] == ("5.40 s (×1.08)", "**not met**")
    assert verdicts["nf4 ≤ bf16 + 10 %"] == ("5.40 s (×1.08)", "met")
    for note, how in (("fp8 decode: one fused kernel per layer (compiled, …)", " — one fused decode kernel"),
                      ("fp8 decode: two kernels per layer (cast, then scale; exact) — Triton is not installed", " — two "
                       "decode kernels")):  # the fp8 row says which decode ran (gpu_check's "fp8_decode")
        judged = {a: b for a, b, _ in gpu_targets.targets({**check, "fp8_decode": note}, None)}
        assert judged["fp8 exact ≤ bf16 + 5 %"] == "5.40 s (×1.08)" + how
        assert judged["nf4 ≤ bf16 + 10 %"] == "5.40 s (×1.08)"
    assert verdicts["fp8 fast, 1024² Default-20 ≤ 3.5 s"] == ("3.40 s", "met")
    for note, how in (("fp8 activations: quantised in one compiled pass (probed …)", " — activations quantised in one "
                       "compiled pass"), ("fp8 activations: quantised by six eager kernels — Triton is not installed",
                                          " — activations quantised by six eager kernels")):
        judged = {a: b for a, b, _ in gpu_targets.targets({**check, "fp8_quantize": note}, None)}
        assert judged["fp8 fast, 1024² Default-20 ≤ 3.5 s"] == "3.40 s" + how
    assert next(v for k, v in verdicts.items() if k.startswith("≥ 1.3× faster"))[1] == "met"  # 0.3 / 0.2 = 1.5×
    assert verdicts["16 GB card: both nf4 models resident (plan, 1024²)"] == ("resident", "met")
    assert verdicts["2048² within 12 GB, bf16 (plan)"][1] == "met"
    table = (tmp_path / "targets.md").read_text()
    assert "NVIDIA H200" in table and "fp8_scaled: FAILED RuntimeError: boom" in table
    # nothing measured (a run stopped early): every target says so instead of failing
    empty = gpu_targets.targets({"device": "cuda"}, None)
    assert all(c == "n/a" for _, _, c in empty), empty
    # gpu_streaming.py's figures: a format whose streamed velocity differs (or failed) is not met
    streaming = {"formats": {"fp8": {"equal": True, "streamed_layers": 34, "ring_pinned_bytes": 2**29},
                             "nf4": {"equal": False, "streamed_layers": 34, "ring_pinned_bytes": 2**29}}}
    label = "streamed layers == resident, bit for bit (offload stream, pinned ring)"
    assert gpu_targets.streaming_row(streaming) == (label, "fp8 equal (34 layers, ring 512 MiB); nf4 DIFFERS (34 "
                                                    "layers, ring 512 MiB)", "**not met**")
    streaming["formats"]["nf4"] = {"error": "RuntimeError: CUDA error"}
    assert gpu_targets.streaming_row(streaming)[1:] == ("fp8 equal (34 layers, ring 512 MiB); nf4 FAILED "
                                                        "RuntimeError: CUDA error", "**not met**")
    (tmp_path / "streaming.json").write_text(json.dumps({"formats": {"fp8": streaming["formats"]["fp8"]}}))
    assert gpu_targets.main(["--dir", str(tmp_path), "--out", str(tmp_path / "targets.md")]) == 0
    assert f"| {label} | fp8 equal (34 layers, ring 512 MiB) | met |" in (tmp_path / "targets.md").read_text()
    # bench_families' rows say how each packed family decoded (comfy-kitchen, or the compiled / eager decode)
    families = [{"family": "gguf_Q4_K", "block_s": 0.01, "real_step_estimate_s": 0.68, "comfy_kitchen": {},
                 "decode": "GGUF decode: Q4_K: one compiled kernel per layer (probed …)"},
                {"family": "nvfp4", "block_s": 0.02, "real_step_estimate_s": 1.36, "comfy_kitchen": {"nvfp4": "cuda"}}]
    lines = gpu_targets.markdown(check, None, families).splitlines()
    assert "| gguf_Q4_K | 0.0100 | 0.68 | torch (GGUF decode: Q4_K: one compiled kernel per layer (probed …)) |" in lines
    assert "| nvfp4 | 0.0200 | 1.36 | nvfp4 → cuda |" in lines


def test_attention_section_times_each_sdpa_backend_and_the_table_shows_them(tmp_path):
    """gpu_check's attention section on the CPU: the default SDPA is the CPU's flash kernel (bit-identical), the
    math kernel differs by a bf16 rounding, the GPU-only backends are recorded as refused; gpu_targets prints
    what was measured and names each backend and case that was refused."""
    import gpu_targets

    out = gpu_check.Results(None)
    gpu_check.attention(gpu_check.parse_args(["--cpu-smoke"]), __import__("torch").device("cpu"), out, repeats=1)
    rows = {(r["padded"], r["backend"]): r for r in out["attention"]}
    assert {k for k, r in rows.items() if "error" in r} == {
        (p, b) for p in (False, True) for b in ("CUDNN_ATTENTION", "EFFICIENT_ATTENTION")}
    flash, math_ = rows[(False, "FLASH_ATTENTION")], rows[(False, "MATH")]
    assert flash["equals_default"] and flash["rel_diff_vs_default"] == 0.0
    assert not math_["equals_default"] and 0 < math_["rel_diff_vs_default"] < 1e-2
    assert 0 < rows[(True, "MATH")]["rel_diff_vs_default"] < 1e-2  # the padded batch's mask is honoured by both
    assert all(r["s"] > 0 and r["tflops"] > 0 for r in out["attention"] if "s" in r)
    lines = gpu_targets.attention_table(out["attention"])
    assert any(line.startswith("| 256² | FLASH_ATTENTION |") and line.endswith("(bit-identical) |") for line in lines)
    assert any(line.startswith("| 256² padded ×2 | MATH |") for line in lines)
    assert lines[-2:] == ["- CUDNN_ATTENTION refused at 256², 256² padded ×2",
                          "- EFFICIENT_ATTENTION refused at 256², 256² padded ×2"]
    assert gpu_targets.attention_table(None) == []


def test_gpu_steps_fit_one_eight_minute_call():
    """The GPU run's step limits (every ``step <seconds>`` outside the --cpu-smoke branches) add up to ≤ 480 s, the
    figure the script's header states."""
    import re

    script = (Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh").read_text()
    gpu, branch = [], []
    for line in script.splitlines():
        stripped = line.strip()
        if stripped.startswith("if [ -n \"$SMOKE\" ]"):
            branch.append("smoke")
        elif stripped == "else" and branch:
            branch[-1] = "gpu" if branch[-1] == "smoke" else branch[-1]
        elif stripped.startswith("if "):
            branch.append("other")
        elif stripped == "fi" and branch:
            branch.pop()
        m = re.match(r"\s*step (\d+) ", line)
        if m and "smoke" not in branch:
            gpu.append(int(m.group(1)))
    header = int(re.search(r"step limits add up to (\d+) s", script).group(1))
    assert len(gpu) == 11 and sum(gpu) == header <= 480


def test_gguf_decode_step_times_the_compiled_kernel_under_the_callers_policy(monkeypatch, capsys):
    """The step's eager timing sets the policy to eager; the compiled kernel is looked up before that, so it is
    timed too (on the CPU here, where IDEOGRAM4_GGUF_DECODE=fused compiles it), and the policy is put back."""
    from model.checkpoints import gguf_fused

    monkeypatch.setenv(gguf_fused.ENV, "fused")
    gguf_fused.forget_probes()
    try:
        gpu_env.gguf_decode("cpu", "Q4_K", (16, 1024), time_on_cpu=True)
    finally:
        gguf_fused.forget_probes()
    out = capsys.readouterr().out
    assert "GGUF decode: Q4_K: one compiled kernel per layer" in out
    assert "GGUF Q4_K decode of 16×1024 → bf16: eager (chunked) " in out
    assert "× faster, bit-identical: True" in out
    assert os.environ[gguf_fused.ENV] == "fused"  # put back


def test_time_split_counts_linear_gemms_outside_attention_and_attention_whole():
    import torch
    from torch.profiler import ProfilerActivity, profile

    x, w = torch.randn(64, 96), torch.randn(128, 96)
    q = torch.randn(1, 2, 32, 16)
    override = bench_vs_core.attention_range_override()["optimized_attention_override"]

    def attention(q, k, v, **_):
        torch.mm(q[0, 0], k[0, 0].t())  # a GEMM inside attention is attention's, not the linear layers'
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.nn.functional.linear(x, w)
        torch.addmm(torch.zeros(128), x, w.t())
        override(attention, q, q, q)
    events = prof.events()
    split = bench_vs_core.split_time(events, device_time=False)
    gemm = sum(e.self_cpu_time_total for e in events if e.name in ("aten::mm", "aten::addmm")
               and (e.cpu_parent is None or e.cpu_parent.name != bench_vs_core.ATTENTION_RANGE)) / 1e6
    inner = [e for e in events if e.name == "aten::mm" and e.cpu_parent is not None
             and e.cpu_parent.name == bench_vs_core.ATTENTION_RANGE]
    ranges = [e for e in events if e.name == bench_vs_core.ATTENTION_RANGE]
    assert len(inner) == 1 and len(ranges) == 1
    assert split["gemm_s"] == pytest.approx(gemm) and split["gemm_s"] > 0
    assert split["attention_s"] == pytest.approx(ranges[0].cpu_time_total / 1e6)
    assert split["attention_s"] >= inner[0].self_cpu_time_total / 1e6 > 0
    # on a GPU a range also appears as the device's annotation event: only the host event (kernels inclusive) counts
    from types import SimpleNamespace
    from torch.autograd import DeviceType

    host = SimpleNamespace(name=bench_vs_core.ATTENTION_RANGE, cpu_parent=None, device_type=DeviceType.CPU,
                           device_time_total=300.0)
    copy = SimpleNamespace(name=bench_vs_core.ATTENTION_RANGE, cpu_parent=None, device_type=DeviceType.CUDA,
                           device_time_total=310.0)
    mm = SimpleNamespace(name="aten::mm", cpu_parent=None, device_type=DeviceType.CPU, self_device_time_total=2e6)
    assert bench_vs_core.split_time([host, copy, mm], device_time=True) == {"gemm_s": 2.0, "attention_s": 3e-4}


def test_targets_table_shows_where_the_time_goes_and_the_gemm_floor():
    import gpu_targets

    split = {"ours": {"gemm_s": 0.5, "attention_s": 0.1, "rest_s": 0.05, "wall_s": 0.65},
             "core": {"gemm_s": 0.5, "attention_s": 0.15, "rest_s": 0.1, "wall_s": 0.75}}
    table = gpu_targets.markdown({"gpu": "H200"}, {"ours_s": 0.65, "core_s": 0.75, "where_the_time_goes": split,
                                                  "gemm_floor": 0.5 / 0.75}, None)
    assert "| ours | 0.500 | 0.100 | 0.050 | 0.650 |" in table
    assert "| core | 0.500 | 0.150 | 0.100 | 0.750 |" in table
    assert "GEMM floor: ours/core ≥ 0.67×" in table
    assert "GEMM floor" not in gpu_targets.markdown({"gpu": "H200"}, {"ours_s": 0.65, "core_s": 0.75}, None)
    failed = {"ours": split["ours"], "core": {"error": "the profiler recorded no GEMM time on cuda"}}
    table = gpu_targets.markdown({"gpu": "H200"}, {"where_the_time_goes": failed, "gemm_floor": None}, None)
    assert "| core | FAILED: the profiler recorded no GEMM time on cuda | | | |" in table
    assert "| ours | 0.500 |" in table and "GEMM floor" not in table
