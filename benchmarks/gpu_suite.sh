#!/usr/bin/env bash
# Every check and benchmark that needs an NVIDIA GPU, in one go, from the repository root:
#   benchmarks/gpu_suite.sh OUT_DIR [STEP...]
# Steps (default: all, in this order): env, tests (pytest -m gpu: kernels against the reference, gradcheck,
# compute-sanitizer, the TensorRT plugins' enqueue), kernels (benchmarks/kernels.py), end_to_end (network
# forward at batch 1 and 8 and an fp32 training step, eager reference vs the fused ops), end_to_end_bf16,
# server (benchmarks/server.py on CUDA, needs nvidia-pytriton and tritonclient).
# Needs: python3 with a CUDA PyTorch, Triton, numpy, pillow, scipy, pytest; nvcc, cmake and compute-sanitizer on
# PATH; the TensorRT headers for the plugin build (the kernel-lens wheel, or TENSORRT_INCLUDE_DIR). The project
# is used from the checkout (PYTHONPATH), nothing is installed. A failing step is recorded and the next one
# runs; each step is killed after STEP_TIMEOUT seconds (default 540), and the exit status is 1 if any step
# failed. Output: OUT_DIR/suite.log (every step's output), OUT_DIR/summary.txt (one line per step), result
# JSONs. All steps together take longer than one 10-minute command: run them in parts, e.g. `env tests`, then
# `kernels end_to_end`, then `end_to_end_bf16 server`.
# The server step needs nvidia-pytriton (its wheel bundles tritonserver) and tritonclient. On a machine
# without a package index, bring them as files: the pytriton wheel unpacked and re-packed with xz is about 36 MB
# (`unzip -q WHEEL -d t && tar -C t -cJf pytriton.tar.xz .`), unpack it into a folder on PYTHONPATH there, and
# pip install --no-deps the small wheels it needs (tritonclient, sh, typing_inspect, pyzmq, python-rapidjson).
# The bundled python-backend stub (one per Python 3.8-3.13) was built against numpy 1: the python3 the server
# finds first on PATH needs numpy < 2 (a numpy 1.26 wheel, about 12 MB xz-packed, fits beside the above).
set -u
OUT=${1:?usage: benchmarks/gpu_suite.sh OUT_DIR [STEP...]}
shift
STEPS=${*:-env tests kernels end_to_end end_to_end_bf16 server}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG="$OUT/suite.log"

FAILED=0
run_step() {
  local name=$1
  shift
  local start=$SECONDS
  echo "===== $name: $*" >>"$LOG"
  # a hung step is killed (rc 124) and recorded, and the next one runs
  timeout --kill-after=20 "${STEP_TIMEOUT:-540}" "$@" >>"$LOG" 2>&1
  local rc=$?
  [ "$rc" -eq 0 ] || FAILED=1
  echo "$name rc=$rc $((SECONDS - start))s" | tee -a "$OUT/summary.txt"
}

for step in $STEPS; do
  case $step in
    env) run_step env bash -c "nvidia-smi; nvcc --version; cmake --version | head -1; compute-sanitizer --version | head -2;
      $PY -c 'import torch, triton; print(torch.__version__, torch.version.cuda, triton.__version__, torch.cuda.get_device_name())'" ;;
    tests) run_step tests "$PY" -m pytest -q -m gpu -p no:cacheprovider --durations=10 tests ;;
    kernels) run_step kernels "$PY" benchmarks/kernels.py --out "$OUT/kernels.json" ;;
    end_to_end) run_step end_to_end "$PY" benchmarks/end_to_end.py --out "$OUT/end_to_end.json" ;;
    end_to_end_bf16) run_step end_to_end_bf16 "$PY" benchmarks/end_to_end.py --amp bf16 --batches 8 \
      --out "$OUT/end_to_end_bf16.json" ;;
    server) run_step server "$PY" benchmarks/server.py --device cuda --variant preview --out "$OUT/server_gpu.json" ;;
    *) echo "unknown step $step" | tee -a "$OUT/summary.txt"; FAILED=1 ;;
  esac
done
exit $FAILED
