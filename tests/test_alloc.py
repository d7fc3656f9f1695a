"""A steady-state training step allocates nothing: no array in Python (tracemalloc) and
no array inside the compiled code (Numba's NRT counters), for an MLP and for a small
conv net (conv + relu + max-pool + linear: its kernels' im2col columns and partial
products are planner scratch, not per-call arrays).

Each check is run on a deliberately allocating step too, so the test can fail.
"""
import tracemalloc

import numpy as np
import pytest
from numba.core.runtime import _nrt_python, rtsys

import graphc as gc
from graphc.codegen.schedule import scratch_arenas

STEPS = 100
X_ROWS, X_COLS, HIDDEN, CLASSES = 64, 16, 32, 4
# Calling any Numba function with 30-odd array arguments churns ~2 KB of Python objects
# (argument tuples, type fingerprints); measured per run as the baseline. On top of that a
# step may create and free only small Python objects (argument lists, the float
# returned): less than PEAK_BYTES, which is less than any batch-sized array of this model
# (labels 64 x 8 B, logits 64 x 4 x 4 B, activations 64 x 32 x 4 B) plus its header.
PEAK_BYTES = 512
LEAK_BYTES = 512      # net growth over all STEPS (a leak of one object per step exceeds it)


IMAGE = (1, 8, 8)


def _conv_net():
    return gc.nn.Sequential(gc.nn.Conv2d(1, 2, 3), gc.nn.ReLU(), gc.nn.MaxPool2d(2),
                            gc.nn.Flatten(), gc.nn.Linear(2 * 3 * 3, CLASSES))


class _Attention(gc.nn.Module):
    """Slices, batched products, softmax over a middle dim, cat, where, LayerNorm (whose
    means are scaled after their reduction loops: that line allocated once)."""

    def __init__(self):
        super().__init__()
        self.qkv = gc.nn.Linear(4, 12)
        self.norm = gc.nn.LayerNorm(4)
        self.out = gc.nn.Linear(8, CLASSES)

    def forward(self, x):
        h = x.reshape(-1, 4, 4)
        qkv = self.qkv(h)
        q, k, v = qkv[..., :4], qkv[..., 4:8], qkv[..., 8:]
        h = self.norm(h + gc.softmax(q @ k.transpose(-2, -1), dim=1) @ v)
        z = gc.cat([h[:, 0], gc.nn.functional.gelu(h[:, -1])], dim=1)
        return self.out(gc.where(z > 0, z, 0.1 * z))


@pytest.fixture(scope="module", params=["mlp", "conv", "attention"])
def model(request):
    gc.manual_seed(0)
    if request.param == "attention":
        net, shape = _Attention(), (X_COLS,)
    elif request.param == "mlp":
        net = gc.nn.Sequential(gc.nn.Linear(X_COLS, HIDDEN), gc.nn.ReLU(),
                               gc.nn.Linear(HIDDEN, CLASSES))
        shape = (X_COLS,)
    else:
        net = _conv_net()
        shape = IMAGE
    m = gc.compile(net, input_shape=(None,) + shape, loss="cross_entropy",
                   optimizer=gc.optim.SGD(lr=0.05))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((X_ROWS,) + shape).astype(np.float32)
    y = rng.integers(0, CLASSES, X_ROWS)
    for _ in range(3):   # warm-up: compile, allocate buffers for this batch size
        m.train_step(x, y)
    return m, x, y


def _python_bytes(step):
    """(peak bytes above the start, net bytes) over STEPS calls, tracemalloc's own excluded."""
    step()
    tracemalloc.start()
    try:
        for _ in range(200):  # fill lazily built caches and CPython free lists first
            step()
        before = tracemalloc.take_snapshot()
        tracemalloc.reset_peak()
        start, _ = tracemalloc.get_traced_memory()
        for _ in range(STEPS):
            step()
        _, peak = tracemalloc.get_traced_memory()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__)]
    growth = sum(d.size_diff for d in after.filter_traces(ignore).compare_to(
        before.filter_traces(ignore), "filename"))
    return peak - start, growth


def _nrt_allocations(step):
    """NRT (data + meminfo) allocations and frees over STEPS calls."""
    was_on = _nrt_python.memsys_stats_enabled()
    _nrt_python.memsys_enable_stats()
    try:
        step()
        a0 = rtsys.get_allocation_stats()
        for _ in range(STEPS):
            step()
        a1 = rtsys.get_allocation_stats()
    finally:
        if not was_on:
            _nrt_python.memsys_disable_stats()
    return a1.alloc - a0.alloc, a1.free - a0.free


def _driver_arrays(m):
    """Array arguments of the driver: Numba wraps each in an NRT meminfo per call."""
    exe = m._exe("train")
    # plus one for each index input (labels) handed to the compiled range check, plus the
    # scratch arenas (one per dtype)
    return len(exe.graph.inputs) + len(exe.schedule.buffers) + len(exe.schedule.out_copies) \
        + len(exe.index_bounds) + len(scratch_arenas(exe.schedule))


def _dispatch_baseline(m, x, y):
    """Peak bytes of calling the compiled driver alone (Numba's own argument handling)."""
    exe = m._exe("train")
    arrays, batch = exe.prepare(m._inputs("train", x, y))
    bufs = exe.buffers_for(batch)
    return _python_bytes(lambda: exe.module.run(*arrays, *bufs))[0]


def test_train_step_allocates_no_python_memory(model):
    m, x, y = model
    base = _dispatch_baseline(m, x, y)
    peak, growth = _python_bytes(lambda: m.train_step(x, y))
    assert peak - base < PEAK_BYTES, f"a step allocated {peak} bytes at peak ({base} in numba)"
    assert growth < LEAK_BYTES, f"memory grew by {growth} bytes over {STEPS} steps"


def test_python_check_catches_a_small_array(model):
    m, x, y = model
    base = _dispatch_baseline(m, x, y)
    rows = x[:8]     # 8 samples (MLP: 8 x 16 floats = 512 bytes), less than a batch
    # a temporary alive during the native call, as one made in prepare() would be
    peak, _ = _python_bytes(lambda: (rows.copy(), m.train_step(x, y)))
    assert peak - base >= PEAK_BYTES
    kept = []
    _, growth = _python_bytes(lambda: (m.train_step(x, y), kept.append(np.float32(1.0))))
    assert growth >= LEAK_BYTES


def test_compiled_code_allocates_no_arrays(model):
    m, x, y = model
    allocs, frees = _nrt_allocations(lambda: m.train_step(x, y))
    # only the per-call wrappers of the driver's arguments, all freed again
    assert allocs == frees == STEPS * _driver_arrays(m), (allocs, frees)


def test_nrt_check_catches_an_allocating_kernel(model):
    m, x, y = model
    exe = m._exe("train")
    from numba import njit

    @njit(cache=False)
    def alloc_one(a):
        return np.empty(a.shape[0], np.float32).shape[0]

    alloc_one(x)
    allocs, _ = _nrt_allocations(lambda: (m.train_step(x, y), alloc_one(x)))
    assert allocs > STEPS * _driver_arrays(m)
    assert exe is m._exe("train")


def test_conv_net_kernels_take_planned_scratch(model):
    m, x, y = model
    exe = m._exe("train")
    if not any(exe.graph.op_of(n).startswith("conv2d") for n in exe.graph.nx.nodes):
        pytest.skip("no conv in this model")
    assert scratch_arenas(exe.schedule) == ["float32"]
    assert "np.empty" not in exe.source and "np.zeros" not in exe.source


def test_buffers_are_reused(model):
    m, x, y = model
    exe = m._exe("train")
    before = [id(b) for b in exe.buffers_for(X_ROWS)]
    m.train_step(x, y)
    assert [id(b) for b in exe.buffers_for(X_ROWS)] == before
