#!/usr/bin/env bash
# Every GPU check in one command (step limits add up to 470 s: < 8 min on one H100/H200):
#   s/step + peak VRAM per format (bf16, fp8 exact, fp8 fast, nf4, Comfy fp8_scaled) at 1024² and 2048²,
#   s/step of every checkpoint family (nvfp4, mxfp8, int8, GGUF Q8_0/Q6_K/Q4_K too) through the real loader,
#   the memory plan under 24/16/12 GB caps, CUDA-vs-CPU-golden parity, the fp8 kernel test,
#   and, when COMFYUI_PATH points at a ComfyUI checkout: ours vs ComfyUI core's model on the same GPU, system RAM
#   (private vs file-backed) through a real load → forward → offload, the LoRA cost per step.
#
#   bash benchmarks/gpu_check.sh                 # on the GPU machine; results also in $OUT (or /tmp)/gpu_check.json
#   bash benchmarks/gpu_check.sh --cpu-smoke     # code-path check on a CPU (tiny model), ~1 min
#   PYTHON=/path/to/python COMFYUI_PATH=~/ComfyUI bash benchmarks/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
DEST="${OUT:-/tmp}"
mkdir -p "$DEST"
SMOKE=""
[ "${1:-}" = "--cpu-smoke" ] && SMOKE="--cpu-smoke"
status=0
step() {  # step <seconds> <label> <command...>
  local limit="$1" label="$2"; shift 2
  echo; echo "######## $label (limit ${limit}s)"
  local t0=$SECONDS
  timeout "$limit" "$@" || { echo "!! $label failed or timed out (rc $?)"; status=1; }
  echo "######## $label: $((SECONDS - t0)) s"
}
echo "gpu_check: $(date -u) | $("$PY" -c 'import torch;print("torch", torch.__version__, "cuda", torch.version.cuda)')"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ -n "$SMOKE" ]; then
  step 300 "speed + plan + parity (cpu smoke)" "$PY" benchmarks/gpu_check.py --cpu-smoke --steps 1 --json "$DEST/gpu_check.json"
  step 200 "every checkpoint family (cpu smoke)" "$PY" benchmarks/bench_families.py --device cpu --width 512 --size 256 \
    --text-tokens 16 --repeats 1 --out "$DEST/families"
else
  step 190 "speed (5 formats × 1024², 2048²) + plan + parity" "$PY" benchmarks/gpu_check.py --steps 3 --json "$DEST/gpu_check.json"
  step 90 "every checkpoint family through the real loader (1 real-width block each, 1024²)" "$PY" \
    benchmarks/bench_families.py --device cuda --out "$DEST/families" --json "$DEST/families.json"
  step 30 "fp8 _scaled_mm kernel vs emulation" "$PY" -m pytest -q -p no:cacheprovider tests/test_fp8_matmul.py
fi
if [ -n "${COMFYUI_PATH:-}" ] && [ -d "${COMFYUI_PATH}/comfy" ]; then
  if [ -n "$SMOKE" ]; then
    step 300 "ours vs core (tiny, cpu)" "$PY" benchmarks/bench_vs_core.py --comfyui "$COMFYUI_PATH" --width 512 --layers 2 \
      --text-dim 832 --size 128 --text-tokens 16 --repeats 1 --json "$DEST/vs_core.json" -- --cpu
    step 120 "system RAM, simulated offload (tiny, cpu)" "$PY" benchmarks/bench_offload.py --out "$DEST/offload" \
      --layers 2 --width 512 --formats fp8,nf4
    step 120 "LoRA cost per step (tiny, cpu)" "$PY" benchmarks/bench_lora.py --comfyui "$COMFYUI_PATH" --layers 2 \
      --heads 2 --intermediate 1024 --grid 8 --repeats 1
  else
    step 80 "ours vs core (34×4608, 1024²)" "$PY" benchmarks/bench_vs_core.py --comfyui "$COMFYUI_PATH" --full --size 1024 \
      --text-tokens 512 --repeats 3 --json "$DEST/vs_core.json"
    step 40 "system RAM through a real CUDA load → forward → offload (2 × 4608, fp8)" "$PY" \
      benchmarks/bench_offload.py --out "$DEST/offload" --layers 2 --width 4608 --formats fp8 --device cuda
    step 40 "LoRA cost per step on CUDA (0/1/3 LoRAs, bf16 + fp8, 4 × 4608)" "$PY" benchmarks/bench_lora.py \
      --comfyui "$COMFYUI_PATH" --layers 4 --heads 18 --intermediate 12288 --grid 64 --device cuda
  fi
else
  echo; echo "######## ours vs core: skipped (set COMFYUI_PATH to a ComfyUI checkout)"
fi
echo; echo "gpu_check done: status $status (JSON in $DEST)"
exit $status
