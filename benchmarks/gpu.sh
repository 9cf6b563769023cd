#!/usr/bin/env bash
# The GPU run behind BENCHMARKS.md's "GPU" section, in named sections, each with its own time
# limit (seconds) and its rows written as soon as they are measured (a section stopped by its
# limit keeps what it finished). Uses the machine's own python3 with jax[cuda]; jsoftmax from
# this checkout, not installed.
#
# Usage: benchmarks/gpu.sh OUT_DIR [SECTION[=SECONDS] ...]   (no sections: all, default limits)
#   check   the Mosaic GPU kernels' values and gradients on this device against "xla" (whole and
#           split rows, edge rows, every option; exits 1 on a disagreement)          [150 s]
#   f32     jsoftmax bench, float32 suites (fusion, core, bandwidth, losses, linear_xent, sparse,
#           train_step)                                                            [300 s]
#   bf16    jsoftmax bench, bfloat16 suites                                        [180 s]
#   hlo     optimised HLO of softmax's value_and_grad, jsoftmax and jax.nn         [60 s]
#   mosaic  issue 21: the Mosaic GPU kernels (strict) against "xla", jax.nn and optax: fraction
#           of copy bandwidth at 4096 rows x {1024, 8192, 32768, 131072}, float32 and bfloat16,
#           whole rows and the split layout, kernels per program                   [240 s]
#   lxent   issue 22: linear_cross_entropy value_and_grad, N=8192, D=1024, V in {32768, 65536},
#           float32 and bfloat16: the block kernel (strict) against XLA's blocks, the naive
#           loss and three plain matmuls                                           [180 s]
#   llama   issue 22: the same at N=8192, D=4096, V=128256, bfloat16             [120 s]
# The device tool allows 600 s a call: run the sections over several calls, e.g.
#   benchmarks/gpu.sh OUT check mosaic=300 lxent=150   then   benchmarks/gpu.sh OUT llama f32 bf16
# The check, mosaic and lxent scripts are tested on CPU in GPU interpret mode
# (tests/test_mosaic_gpu.py, tests/test_mosaic_gpu_linear_xent.py).
set -uo pipefail
out=${1:?output folder}
shift
mkdir -p "$out"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
declare -A limit=([check]=150 [f32]=300 [bf16]=180 [hlo]=60 [mosaic]=240 [lxent]=180 [llama]=120)
order=(check f32 bf16 hlo mosaic lxent llama)
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=("${order[@]}")
for s in "${sections[@]}"; do
  name=${s%%=*}
  [ -n "${limit[$name]+x}" ] || { echo "unknown section: $name (one of ${order[*]})" >&2; exit 2; }
  [ "$s" != "$name" ] && limit[$name]=${s#*=}
done
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv
python3 -c "import jax, optax; print('jax', jax.__version__, 'optax', optax.__version__, jax.devices())"
status=0
for s in "${sections[@]}"; do
  name=${s%%=*}
  t=${limit[$name]}
  echo "== $name (limit ${t} s)"
  case $name in
    f32) timeout "$t" python3 -m jsoftmax bench \
      --suites fusion,core,bandwidth,losses,linear_xent,sparse,train_step --out "$out/f32" ;;
    bf16) timeout "$t" python3 -m jsoftmax bench --dtype bfloat16 \
      --suites fusion,core,bandwidth,losses,sparse --out "$out/bf16" ;;
    hlo) timeout "$t" python3 - "$out/hlo.txt" <<'PY'
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
      ;;
    check) timeout "$t" python3 benchmarks/mosaic_gpu_check.py "$out/mosaic_gpu_check.json" ;;
    mosaic) timeout "$t" python3 benchmarks/mosaic_gpu_bench.py "$out/mosaic_gpu.json" ;;
    lxent) timeout "$t" python3 benchmarks/linear_xent_gpu_bench.py "$out/linear_xent_gpu.json" ;;
    llama) timeout "$t" python3 benchmarks/linear_xent_gpu_bench.py \
      "$out/linear_xent_gpu_llama.json" --d 4096 --vocab 128256 --dtypes bfloat16 --reps 5 ;;
  esac
  rc=$?
  [ $rc -ne 0 ] && { echo "== $name ended with status $rc"; status=$rc; }
done
exit $status
