"""Concurrency and reuse: threads sharing a compiled model, two models sharing a cache
directory, and corrupted or stale cache entries (graphc's .py files and Numba's
index/data files) being rebuilt rather than loaded.

    pytest tests/test_cache_threads.py
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import graphc as gc

W = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -0.75]])
B = np.array([0.1, -0.2])
X = np.arange(12, dtype=np.float64).reshape(4, 3) / 7.0


def _mlp(seed):
    gc.manual_seed(seed)
    return gc.nn.Sequential(gc.nn.Linear(3, 5), gc.nn.Tanh(), gc.nn.Linear(5, 2))


def _numpy_forward(params, x):
    h = np.tanh(x @ params["0.weight"].T + params["0.bias"])
    return h @ params["2.weight"].T + params["2.bias"]


def _numpy_mse(params, x, y):
    return float(np.mean((_numpy_forward(params, x) - y) ** 2))


@pytest.fixture(scope="module")
def shared():
    m = gc.compile(_mlp(0), input_shape=(None, 3), loss="mse", optimizer=gc.optim.SGD(lr=0.05),
                   dtype="float64")
    return m


def _in_threads(n, fn):
    errors = []

    def wrap(i):
        try:
            fn(i)
        except BaseException as exc:   # noqa: BLE001 - reported below
            errors.append(exc)
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)        # switch threads as often as possible
    try:
        threads = [threading.Thread(target=wrap, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    if errors:
        raise errors[0]


def test_threads_share_one_model(shared):
    params = shared.parameters()
    rng = np.random.default_rng(0)
    # the same batch size in every thread: they share the runtime's buffers
    cases = [(rng.normal(size=(3, 3)), rng.normal(size=(3, 2))) for _ in range(8)]

    def work(i):
        for k in range(40):
            x, y = cases[(i + k) % len(cases)]
            np.testing.assert_allclose(shared(x), _numpy_forward(params, x), rtol=1e-12)
            assert shared.loss(x, y) == pytest.approx(_numpy_mse(params, x, y), rel=1e-12)
    _in_threads(4, work)


def test_threads_train_steps_are_serialised(shared):
    """Concurrent train_steps on one batch equal the same number of serial steps."""
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 3)), rng.normal(size=(5, 2))
    start = shared.parameters()
    steps = 4 * 10
    _in_threads(4, lambda i: [shared.train_step(x, y) for _ in range(10)])
    threaded = shared.parameters()
    shared.load_parameters(start)
    for _ in range(steps):
        shared.train_step(x, y)
    for k, v in shared.parameters().items():
        np.testing.assert_allclose(threaded[k], v, rtol=1e-12, atol=1e-15)


def test_two_models_one_cache_dir(shared):
    """Same architecture (same generated module) and a different one, in one process."""
    other = gc.compile(_mlp(1), input_shape=(None, 3), loss="mse",
                       optimizer=gc.optim.SGD(lr=0.05), dtype="float64")
    p0, p1 = shared.parameters(), other.parameters()
    assert not np.allclose(p0["0.weight"], p1["0.weight"])
    np.testing.assert_allclose(shared(X), _numpy_forward(p0, X), rtol=1e-12)
    np.testing.assert_allclose(other(X), _numpy_forward(p1, X), rtol=1e-12)
    y = np.zeros((4, 2))
    other.train_step(X, y)                      # training one leaves the other alone
    for k, v in shared.parameters().items():
        np.testing.assert_array_equal(v, p0[k])
    assert not np.array_equal(other.parameters()["0.weight"], p1["0.weight"])


# ----------------------------------------------------------------- on-disk cache

SCRIPT = """
import json, sys, numpy as np, graphc as gc
m = gc.compile(gc.nn.Linear(3, 2), input_shape=(None, 3), dtype="float64")
m.load_parameters({"weight": np.array(%r), "bias": np.array(%r)})
x = np.array(%r)
print(json.dumps({"out": m(x).tolist(), "path": m._exe("forward").module.__graphc_path__}))
""" % (W.tolist(), B.tolist(), X.tolist())


def _run(cache):
    env = dict(os.environ, GRAPHC_CACHE_DIR=str(cache))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(result["out"], X @ W.T + B, rtol=1e-12)
    return Path(result["path"])


def _numba_files(path, suffix):
    """Numba's cache files of generated module ``path`` (beside it, or under
    NUMBA_CACHE_DIR when that is set)."""
    from graphc.codegen.cache import numba_cache_folder
    files = sorted(numba_cache_folder(path).glob(f"{path.stem}.*{suffix}"))
    assert files, f"no Numba cache files *{suffix} for {path}"
    return files


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("graphc_cache")
    path = _run(root)                     # cold: writes the module and Numba's cache
    return root, path, path.read_text()


def test_cached_entry_is_reused(cache):
    root, path, source = cache
    before = {f: f.stat().st_mtime_ns for f in _numba_files(path, ".nb*")}
    assert _run(root) == path
    after = {f: f.stat().st_mtime_ns for f in _numba_files(path, ".nb*")}
    assert before == after, "a warm run should load Numba's cache, not rewrite it"


@pytest.mark.parametrize("damage", ["truncate", "garble", "stale"])
def test_damaged_module_file_is_rebuilt(cache, damage):
    root, path, source = cache
    if damage == "truncate":
        path.write_text(source[: len(source) // 2])
    elif damage == "garble":
        path.write_bytes(b"\xff\xfe garbage \x00" + os.urandom(64))
    else:   # valid Python that computes something else: must not be trusted
        assert " + " in source
        path.write_text(source.replace(" + ", " - "))
    assert _run(root) == path
    assert path.read_text() == source


@pytest.mark.parametrize("which,damage", [(".nbi", "garble"), (".nbi", "truncate"),
                                          (".nbc", "garble"), (".nbc", "truncate")])
def test_damaged_numba_cache_is_rebuilt(cache, which, damage):
    root, path, _ = cache
    for f in _numba_files(path, which):
        data = f.read_bytes()
        f.write_bytes(os.urandom(len(data)) if damage == "garble" else data[: len(data) // 3])
    assert _run(root) == path       # correct output, no UnpicklingError
    _run(root)                      # and the rebuilt cache is readable again


def test_first_calls_from_many_threads_share_one_executable():
    """Threads racing to a model's first train_step must not build separate executables
    (each with its own buffers and lock) that then update the parameters unsynchronised."""
    m = gc.compile(_mlp(3), input_shape=(None, 3), loss="mse", optimizer=gc.optim.SGD(lr=0.05),
                   dtype="float64")
    barrier = threading.Barrier(4)
    got = []

    def first_call(i):
        barrier.wait()
        got.append((m._exe("train"), id(m._inputs("train", None, None)[1])))

    _in_threads(4, first_call)
    assert len({id(exe) for exe, _ in got}) == 1
    assert len({param for _, param in got}) == 1
