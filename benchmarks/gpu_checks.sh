#!/usr/bin/env bash
# Every GPU check in one command, for a machine with an NVIDIA GPU (device time is scarce,
# so it is one prepared run): install graphc, run the CUDA checks of
# tests/cuda_sim_check.py on the real GPU (each check in its own process, in parallel),
# compile every kernel template to PTX, then the GPU training-step benchmark.
#
#     bash benchmarks/gpu_checks.sh            # results also under $OUT (default /tmp/gpu_out)
#     GPU_CHECKS_SMOKE=1 NUMBA_ENABLE_CUDASIM=1 bash benchmarks/gpu_checks.sh   # no GPU: the script itself
set -u
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 GRAPHC_CACHE_DIR=${GRAPHC_CACHE_DIR:-/tmp/graphc_gpu_cache}
PY=${PYTHON:-python3}
cd "$(dirname "$0")/.."

echo "== machine"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
$PY -c "import sys, numpy, numba; print(sys.version.split()[0], 'numpy', numpy.__version__, 'numba', numba.__version__)"
$PY -c "import numba_cuda; print('numba-cuda', numba_cuda.__version__)" 2>/dev/null || true

# numba-cuda 0.30 registers an overload for np.row_stack, which NumPy 2.5 removed: give
# it the alias in this command's interpreters only (a site hook, not graphc's code)
if ! $PY -c "import numpy; numpy.row_stack" 2>/dev/null; then
    mkdir -p /tmp/graphc_np_shim
    echo "import numpy; numpy.row_stack = numpy.vstack" > /tmp/graphc_np_shim/sitecustomize.py
    export PYTHONPATH=/tmp/graphc_np_shim${PYTHONPATH:+:$PYTHONPATH}
    echo "numpy.row_stack missing: aliased to vstack for numba-cuda"
fi

echo "== install"
if ! $PY -c "import graphc" 2>/dev/null; then
    $PY -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -3
fi
$PY -c "import graphc, sys; print('graphc from', graphc.__file__)" || exit 1

echo "== CUDA checks on the device (tests/cuda_sim_check.py, one process per check)"
checks=$($PY -c "import sys; sys.path.insert(0, 'tests'); import test_cuda_sim as t; print(' '.join(t.CHECKS))")
t0=$(date +%s)
printf '%s\n' $checks | xargs -P 6 -I{} timeout 400 $PY tests/cuda_sim_check.py {} \
    > "$OUT/cuda_checks.jsonl" 2> "$OUT/cuda_checks.stderr"
$PY - "$OUT/cuda_checks.jsonl" "$checks" <<'EOF'
import json, sys
got = {}
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line); got[r["name"]] = r
for name in sys.argv[2].split():
    r = got.get(name)
    if r is None:
        print(f"MISSING {name} (crashed or timed out; see cuda_checks.stderr)")
    else:
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {name:55s} {r['seconds']:7.1f} s  {r['detail'][:300] if not r['ok'] else r['detail'][:80]}")
EOF
echo "checks took $(( $(date +%s) - t0 )) s"
tail -c 3000 "$OUT/cuda_checks.stderr"

if [ -z "${GPU_CHECKS_SMOKE:-}" ]; then
    echo "== every kernel template to PTX"
    timeout 300 $PY tests/cuda_ptx_check.py 2>&1 | tail -15
fi

echo "== GPU benchmark"
if [ -n "${GPU_CHECKS_SMOKE:-}" ]; then
    timeout 300 $PY benchmarks/gpu_bench.py --smoke 2>&1 | tee "$OUT/gpu_bench.txt"
else
    timeout 300 $PY benchmarks/gpu_bench.py --steps 30 2>&1 | tee "$OUT/gpu_bench.txt"
fi
