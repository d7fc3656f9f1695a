"""The CUDA backend under Numba's CUDA simulator, and its error paths without a GPU.

NUMBA_ENABLE_CUDASIM must be set before Numba is imported, so the simulator checks
(tests/cuda_sim_check.py) run in one subprocess per test session; each of its checks
is reported here as its own test. They compare the CUDA target with the CPU backend
and the NumPy interpreter (float64 to 1e-9 relative, float32 to 1e-4).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc as gc

HERE = Path(__file__).parent
CHECKS = ["mlp_f64_cross_entropy_momentum", "mlp_f32_log_softmax_nll",
          "mlp_f64_sigmoid_bce_and_mse", "lenet_f64_conv_maxpool_dropout", "lenet_f32",
          "batchnorm2d_net_f32_and_f64", "load_parameters_and_batch_sizes",
          "every_op_sample_matches_interpreter", "matmul_transposes_multi_tile",
          "fused_loop_group_and_unsupported_group_fallback", "liveness_shared_device_arrays",
          "missing_cuda_template_is_a_compile_error"]


def _env(**extra):
    env = dict(os.environ)
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def sim_results():
    proc = subprocess.run([sys.executable, str(HERE / "cuda_sim_check.py")],
                          env=_env(NUMBA_ENABLE_CUDASIM="1"), capture_output=True, text=True,
                          timeout=900)
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            r = json.loads(line)
            results[r["name"]] = r
    return results, proc


@pytest.mark.parametrize("name", CHECKS)
def test_cuda_simulator(sim_results, name):
    results, proc = sim_results
    if name not in results:
        pytest.fail(f"check {name} did not report (exit {proc.returncode}):\n"
                    f"{proc.stderr[-3000:]}")
    assert results[name]["ok"], results[name]["detail"]


def test_cpu_path_never_imports_numba_cuda():
    code = ("import sys, numpy as np, graphc as gc\n"
            "m = gc.compile(gc.nn.Linear(3, 2), input_shape=(None, 3), dtype='float64')\n"
            "assert m(np.ones((2, 3))).shape == (2, 2)\n"
            "bad = sorted(k for k in sys.modules if k.startswith('numba.cuda'))\n"
            "print(bad)\n"
            "sys.exit(1 if bad else 0)\n")
    env = _env()
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]


def _gpu_usable() -> bool:
    from numba import cuda
    try:
        return bool(cuda.is_available())
    except Exception:
        return False


def test_cuda_target_without_gpu_says_what_to_install():
    if _gpu_usable():
        pytest.skip("a GPU (or the simulator) is usable here: target='cuda' works")
    with pytest.raises(gc.CompileError, match=r"pip install 'graphc\[cuda\]'"):
        gc.compile(gc.nn.Linear(3, 2), input_shape=(None, 3), target="cuda")


def test_unknown_target_is_a_compile_error():
    with pytest.raises(gc.CompileError, match="unknown target"):
        gc.compile(gc.nn.Linear(3, 2), input_shape=(None, 3), target="tpu")


@pytest.mark.skipif(os.environ.get("GRAPHC_CUDA_PTX") != "1",
                    reason="set GRAPHC_CUDA_PTX=1 (and CUDA_HOME to an NVVM, e.g. the "
                           "nvidia-cuda-nvcc-cu12 wheel's nvidia/cuda_nvcc) to compile "
                           "every kernel to PTX; about a minute")
def test_every_kernel_compiles_to_ptx():
    proc = subprocess.run([sys.executable, str(HERE / "cuda_ptx_check.py")], env=_env(),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert proc.stdout.startswith("OK"), proc.stdout
