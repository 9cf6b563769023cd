#!/usr/bin/env bash
# The GPU run behind BENCHMARKS.md's "GPU" section: float32 then bfloat16, each suite's rows
# written as soon as it finishes (a run stopped by its time limit keeps the finished suites),
# then the optimised HLO of softmax's value_and_grad (jsoftmax and jax.nn) for reading.
# Uses the machine's own python3 with jax[cuda]; jsoftmax from this checkout, not installed.
# Usage: benchmarks/gpu.sh OUT_DIR [F32_SECONDS] [BF16_SECONDS] [MOSAIC_SECONDS] [LXENT_SECONDS]
#        [LLAMA_SECONDS]
set -uo pipefail
out=${1:?output folder}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c "import jax, optax; print('jax', jax.__version__, 'optax', optax.__version__, jax.devices())"
suites=fusion,core,bandwidth,losses,linear_xent,sparse,train_step
timeout "${2:-300}" python3 -m jsoftmax bench --suites "$suites" --out "$out/f32"
timeout "${3:-180}" python3 -m jsoftmax bench --dtype bfloat16 \
  --suites fusion,core,bandwidth,losses,sparse --out "$out/bf16"
timeout 60 python3 - "$out/hlo.txt" <<'PY'
import sys
import jax
import jax.numpy as jnp
import jsoftmax
from jsoftmax.bench.core import _weighted_sum_grad
x = jax.ShapeDtypeStruct((4096, 1024), jnp.float32)
with open(sys.argv[1], "w") as f:
    for name, fn in [("jsoftmax.softmax", jsoftmax.softmax), ("jax.nn.softmax", jax.nn.softmax)]:
        c = jax.jit(_weighted_sum_grad(fn)).lower(x, x).compile()
        f.write(f"==== {name} value_and_grad 4096x1024 float32\n{c.as_text()}\n")
PY
# issue 21: the Mosaic GPU kernels in strict mode against "xla", jax.nn and optax in the same
# run (fraction of copy bandwidth, speedups, kernels per program), float32 and bfloat16 at
# 4096 rows; shapes the kernels cannot serve are reported with the reason, not timed as XLA.
# Tested on CPU with: python benchmarks/mosaic_gpu_bench.py OUT --rows 5 --cols 512 --interpret
# (tests/test_mosaic_gpu.py runs it); 131072 columns run in the split layout (2-8 pieces)
timeout "${4:-240}" python3 benchmarks/mosaic_gpu_bench.py "$out/mosaic_gpu.json"
# issue 22: linear_cross_entropy value_and_grad at N=8192, D=1024, V in {32768, 65536}, float32
# and bfloat16: the Mosaic GPU block kernel (strict; at V=65536 the float32 logits rows exceed
# shared memory and are split in two pieces) against XLA's blocks, the naive loss and three
# matmuls; then the Llama-like shape N=8192, D=4096, V=128256 in bfloat16 (rows in 3 pieces).
# Tested on CPU with: python benchmarks/linear_xent_gpu_bench.py OUT --n 40 --d 16 --vocab 256
#   --dtypes float32 --reps 1 --interpret (tests/test_mosaic_gpu_linear_xent.py runs it)
timeout "${5:-180}" python3 benchmarks/linear_xent_gpu_bench.py "$out/linear_xent_gpu.json"
timeout "${6:-120}" python3 benchmarks/linear_xent_gpu_bench.py "$out/linear_xent_gpu_llama.json" \
  --d 4096 --vocab 128256 --dtypes bfloat16 --reps 5
