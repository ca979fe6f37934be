#!/usr/bin/env bash
# Every GPU check in one command (step limits add up to 480 s, so one H100/H200 call stays within 8 min):
#   s/step + peak VRAM per format (bf16, fp8 exact, fp8 fast, nf4, Comfy fp8_scaled) at 1024² and 2048²,
#   s/step of every checkpoint family (nvfp4, mxfp8, int8, GGUF Q8_0/Q6_K/Q4_K too) through the real loader,
#   the memory plan under 24/16/12 GB caps, CUDA-vs-CPU-golden parity, each SDPA backend at the real attention
#   shapes, the compiled fp8 / GGUF / nf4 decodes (which runs, timed) and the fp8 kernel tests, and, when
#   COMFYUI_PATH points at a ComfyUI checkout: ours vs ComfyUI core's model on the same GPU, system RAM (private vs
#   file-backed) through a real load → forward → offload, the LoRA cost per step; last, issue 13's targets
#   against the figures, as a markdown table ($OUT/targets.md).
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine; log + JSON in $OUT (or /tmp)
#   bash benchmarks/gpu_check.sh --cpu-smoke     # code-path check on a CPU (tiny model), ~3 min
#   PYTHON=/path/to/python COMFYUI_PATH=~/ComfyUI bash benchmarks/gpu_check.sh
# On a bare GPU machine (no ComfyUI, no package index) build the kit first: python benchmarks/gpu_kit.py --help.
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEST="${OUT:-/tmp}"           # results only: small files (a device call brings back 8 files of ≤ 16 MiB)
SCRATCH="${TMPDIR:-/tmp}/gpu_check_scratch"   # checkpoint files the benchmarks write, never under $DEST
mkdir -p "$DEST" "$SCRATCH"
export PYTHONUNBUFFERED=1     # a step killed by its limit keeps what it printed
exec > >(tee "$DEST/gpu_check.log") 2>&1
TEE_PID=$!
trap 'exec >&- 2>&-; wait "$TEE_PID"' EXIT  # the last lines reach the log and the caller
SMOKE=""
[ "${1:-}" = "--cpu-smoke" ] && SMOKE="--cpu-smoke"
status=0
rc=0
step() {  # step <seconds> <label> <command...>; sets rc
  local limit="$1" label="$2"; shift 2
  echo; echo "######## $label (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@"; rc=$?
  [ $rc -eq 0 ] || { echo "!! $label failed or timed out (rc $rc)"; status=1; }
  echo "######## $label: $((SECONDS - t0)) s"
}
# The carried kit (benchmarks/gpu_kit.py): the packages and the ComfyUI sources a bare GPU machine lacks.
KIT="${GPU_KIT:-.carry/gpu_kit.tar.xz}"
if [ -f "$KIT" ]; then
  KIT_DIR="${TMPDIR:-/tmp}/gpu_kit"
  rm -rf "$KIT_DIR" && mkdir -p "$KIT_DIR"
  step 20 "unpack the kit $KIT" "$PY" -c \
    'import sys, tarfile; tarfile.open(sys.argv[1], "r:xz").extractall(sys.argv[2], filter="data")' "$KIT" "$KIT_DIR"
  [ $rc -eq 0 ] || exit 1
  export PYTHONPATH="$KIT_DIR/site${PYTHONPATH:+:$PYTHONPATH}"
  export COMFYUI_PATH="${COMFYUI_PATH:-$KIT_DIR/comfyui}"
  cat "$KIT_DIR/manifest.txt"
fi
echo "gpu_check: $(date -u)"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
# exit 2: a package the checks cannot run without is missing (stop here); 3: ComfyUI does not import (its steps skip)
step 30 "environment (benchmarks/gpu_env.py)" "$PY" benchmarks/gpu_env.py
[ $rc -eq 2 ] && { echo "gpu_check stopped: see the environment above"; exit 1; }
COMFY_OK=0
[ $rc -eq 0 ] && [ -n "${COMFYUI_PATH:-}" ] && COMFY_OK=1
if [ -n "$SMOKE" ]; then
  step 60 "compiled decodes (cpu smoke)" "$PY" benchmarks/gpu_env.py --decodes
  step 300 "speed + plan + parity (cpu smoke)" "$PY" benchmarks/gpu_check.py --cpu-smoke --steps 1 --json "$DEST/gpu_check.json"
  step 200 "every checkpoint family (cpu smoke)" "$PY" benchmarks/bench_families.py --device cpu --width 512 --size 256 \
    --text-tokens 16 --repeats 1 --out "$SCRATCH/families" --json "$DEST/families.json"
else
  step 130 "speed (5 formats × 1024², 2048²) + plan + parity + bf16 GEMM rate + SDPA backends" "$PY" benchmarks/gpu_check.py --steps 3 --json "$DEST/gpu_check.json"
  step 45 "compiled decodes: fp8 / GGUF Q4_K / nf4, fp8 activation quantisation — which runs, timed" "$PY" \
    benchmarks/gpu_env.py --decodes
  step 65 "every checkpoint family through the real loader (1 real-width block each, 1024²)" "$PY" \
    benchmarks/bench_families.py --device cuda --out "$SCRATCH/families" --json "$DEST/families.json"
  step 45 "fp8 kernels: _scaled_mm vs emulation, fused decode vs two kernels; GGUF and nf4 compiled decodes" "$PY" \
    -m pytest -q -p no:cacheprovider -rA tests/test_fp8_matmul.py tests/test_fp8_fused.py tests/test_gguf_fused.py \
    tests/test_nf4_fused.py tests/test_fp8_activations.py -k "cuda or test_fp8_matmul"
fi
if [ $COMFY_OK -eq 1 ]; then
  if [ -n "$SMOKE" ]; then
    step 300 "ours vs core (tiny, cpu)" "$PY" benchmarks/bench_vs_core.py --comfyui "$COMFYUI_PATH" --width 512 --layers 2 \
      --text-dim 832 --size 128 --text-tokens 16 --repeats 1 --json "$DEST/vs_core.json" -- --cpu
    step 120 "system RAM, simulated offload (tiny, cpu)" "$PY" benchmarks/bench_offload.py --out "$SCRATCH/offload" \
      --layers 2 --width 512 --formats fp8,nf4
    step 120 "LoRA cost per step (tiny, cpu)" "$PY" benchmarks/bench_lora.py --comfyui "$COMFYUI_PATH" --layers 2 \
      --heads 2 --intermediate 1024 --grid 8 --repeats 1
    step 120 "streamed layers == resident (tiny, cpu)" "$PY" benchmarks/gpu_streaming.py --comfyui "$COMFYUI_PATH" \
      --width 512 --grid 8 --json "$DEST/streaming.json" -- --cpu
  else
    step 40 "ours vs core (34×4608, 1024²)" "$PY" benchmarks/bench_vs_core.py --comfyui "$COMFYUI_PATH" --full --size 1024 \
      --text-tokens 512 --repeats 3 --json "$DEST/vs_core.json"
    step 30 "system RAM through a real CUDA load → forward → offload (2 × 4608, fp8)" "$PY" \
      benchmarks/bench_offload.py --out "$SCRATCH/offload" --layers 2 --width 4608 --formats fp8 --device cuda
    step 35 "LoRA cost per step on CUDA (0/1/3 LoRAs, bf16 + fp8, 2 × 4608)" "$PY" benchmarks/bench_lora.py \
      --comfyui "$COMFYUI_PATH" --layers 2 --heads 18 --intermediate 12288 --grid 64 --device cuda
    step 30 "streamed layers == resident on the device (offload stream, pinned ring; fp8, fast fp8, nf4)" "$PY" \
      benchmarks/gpu_streaming.py --comfyui "$COMFYUI_PATH" --json "$DEST/streaming.json"
  fi
else
  echo; echo "######## ours vs core, system RAM, LoRA cost: skipped (COMFYUI_PATH unset or ComfyUI does not import)"
fi
rm -rf "$SCRATCH"
# issue 13's targets against what was measured, as a markdown table (also in $DEST/targets.md)
step 10 "targets (benchmarks/gpu_targets.py)" "$PY" benchmarks/gpu_targets.py --dir "$DEST" --out "$DEST/targets.md"
echo; echo "gpu_check done: status $status (log and JSON in $DEST)"
exit $status
