#!/usr/bin/env bash
# fnn's checks and figures on a GPU, in one run of at most 9.5 minutes: for a machine that has a
# GPU and a Python with JAX for it (and Flax, Equinox, optax; PyTorch and Haiku when there),
# where nothing is installed first. Each part has its own time limit, so a slow part leaves
# the others' results; everything goes to $OUT (default ./gpu-out): each part's log (the MFU
# logs end with their table), the suite's markdown table and the MFU results as JSON.
#
#   OUT=/tmp/gpu bash benchmarks/gpu.sh
#
# CHECK_ARGS, SUITE_ARGS and MFU_ARGS replace each part's options (the tests run the script
# on a CPU with small ones).
#
# 1. benchmarks.device_check: every benchmark model's gradients on the GPU against JAX's on
#    the CPU, and 20 adam steps on the GPU that must lower its loss;
# 2. benchmarks.suite: the peer table on the GPU (PyTorch on CUDA too), 5 rounds;
# 3. benchmarks.mfu: the transformer at the size that fills the GPU, bfloat16: its MFU, with
#    fnn's attention and (on a GPU) with cuDNN's fused attention.
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
py=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
run() {  # run LIMIT NAME COMMAND...: the command's output in $out/NAME.log
    local limit=$1 name=$2
    shift 2
    echo "== $name: $*"
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || { echo "== $name exited with $rc"; status=1; }
}
# the MFU model fills most of the GPU: let JAX's allocator take 95% of it, not its default 75%
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-.95}
{ timeout 10 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  timeout 20 "$py" -c "import jax; print('jax', jax.__version__, jax.devices())"; } 2>&1 | tee "$out/machine.txt"
# shellcheck disable=SC2086  # the options are words
run 60 device_check "$py" -m benchmarks.device_check ${CHECK_ARGS:-}
# shellcheck disable=SC2086
run 240 suite "$py" -m benchmarks.suite ${SUITE_ARGS:---rounds 5 --first-rounds 1} --markdown "$out/suite.md"
# shellcheck disable=SC2086
run 125 mfu "$py" -m benchmarks.mfu ${MFU_ARGS:-} --json "$out/mfu.json"
if [ "$(timeout 20 "$py" -c 'import jax; print(jax.default_backend())')" = gpu ]; then
    # shellcheck disable=SC2086
    run 95 mfu_cudnn "$py" -m benchmarks.mfu ${MFU_ARGS:-} --attention cudnn --json "$out/mfu_cudnn.json"
else
    echo "== mfu_cudnn: skipped (cuDNN's attention needs a GPU)"
fi
exit $status
