"""CUDA-backend checks run under Numba's CUDA simulator; prints one JSON result per line.

Run by tests/test_cuda_sim.py in a subprocess, because NUMBA_ENABLE_CUDASIM must be set
before Numba is first imported. On a machine with a GPU, run it without the variable to
check the real kernels the same way:

    NUMBA_ENABLE_CUDASIM=1 python tests/cuda_sim_check.py [check names...]   # simulator
    python tests/cuda_sim_check.py                                           # real GPU

Every check compares the CUDA target against an oracle: the CPU backend for whole
models (forward, gradients, training steps), the NumPy interpreter for single ops.
"""
from __future__ import annotations

import json
import sys
import time
import traceback
import warnings

import numpy as np

import graphc as gc
from graphc.codegen import compile_graph
from graphc.ir import BATCH, CompileError, Graph, TensorType, all_ops, get_op, interpret
from graphc.ir.registry import label_range

TOL = {"float64": 1e-9, "float32": 1e-4}
# The simulator's launcher busy-waits on its Python threads; a short GIL switch interval
# lets them run instead of waiting 5 ms per turn (about 4x faster here).
sys.setswitchinterval(1e-4)
RESULTS = []


def _serialise_simulator_shared_arrays():
    """The simulator gives a block's threads one shared array per call site through an
    unlocked check-then-insert; a thread preempted between the two makes its own array,
    so its writes never reach its block (seen as a wrong tiled matmul, about one run in
    six under load). Real GPUs have no such race: serialise the lookup."""
    import threading

    from numba import config
    if not config.ENABLE_CUDASIM:
        return
    from numba.cuda.simulator import kernelapi
    from numba.core import types
    from numba.np import numpy_support
    lock = threading.Lock()
    dynamic = kernelapi.FakeCUDAShared.array

    def array(self, shape, dtype):
        if shape == 0:   # dynamic shared memory: one buffer, no lookup
            return dynamic(self, shape, dtype)
        caller = sys._getframe(1)
        site = (caller.f_code.co_filename, caller.f_lineno)   # the simulator's own key
        with lock:
            res = self._allocations.get(site)
            if res is None:
                if isinstance(dtype, types.Type):
                    dtype = numpy_support.as_dtype(dtype)
                res = self._allocations[site] = np.empty(shape, dtype)
        return res
    kernelapi.FakeCUDAShared.array = array


_serialise_simulator_shared_arrays()
# the simulator runs dropout's uint64 hash on NumPy scalars, which warn on the (intended)
# wrap-around of its multiplications; on a GPU it wraps silently
warnings.filterwarnings("ignore", "overflow encountered", RuntimeWarning)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        return float("inf")
    if not a.size:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


CHECKS = {}


def check(name):
    """Register a check; ``main`` runs them and prints one JSON line each."""
    def deco(fn):
        CHECKS[name] = fn
        return fn
    return deco


def run_check(name, fn):
    t0 = time.perf_counter()
    try:
        detail = fn()
        RESULTS.append({"name": name, "ok": True, "detail": detail or ""})
    except Exception as exc:
        RESULTS.append({"name": name, "ok": False,
                        "detail": f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"})
    RESULTS[-1]["seconds"] = round(time.perf_counter() - t0, 2)
    print(json.dumps(RESULTS[-1]), flush=True)


def assert_close(what, got, want, dtype):
    err = rel_err(got, want)
    if not err <= TOL[dtype]:
        raise AssertionError(f"{what}: relative error {err:.3g} > {TOL[dtype]} "
                             f"(got {np.ravel(got)[:4]}, want {np.ravel(want)[:4]})")
    return err


# ------------------------------------------------------------------ models
class LogSoftmaxNet(gc.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = gc.nn.Linear(5, 6)
        self.fc2 = gc.nn.Linear(6, 4)

    def forward(self, x):
        return gc.log_softmax(self.fc2(gc.tanh(self.fc1(x))))


def interpreted(model, kind, x, y=None):
    """The NumPy interpreter on ``model``'s optimized ``kind`` graph (the oracle)."""
    g = model._graph(kind)
    return interpret(g, dict(zip(g.input_names(), model._inputs(kind, x, y))))


def compare_models(net, dtype, loss, opt_args, x, y, steps=2, cpu=("gradients", "train")):
    """CUDA vs CPU backend (graphs in ``cpu``) or vs the interpreter (the others) on one
    module: forward, gradients, ``steps`` training steps, parameters, optimizer state.

    The CPU backend's Numba compile is the slow part of this suite, so each model
    compares the graphs named in ``cpu`` with it and the rest with the interpreter.
    """
    shape = (None,) + x.shape[1:]
    opt = gc.optim.SGD(**opt_args)
    dev = gc.compile(net, input_shape=shape, loss=loss, optimizer=opt, dtype=dtype,
                     target="cuda")
    ref = gc.compile(net, input_shape=shape, loss=loss, optimizer=gc.optim.SGD(**opt_args),
                     dtype=dtype)
    worst = 0.0
    want = ref(x) if "forward" in cpu else interpreted(ref, "forward", x)[0]
    worst = max(worst, assert_close("forward", dev(x), want, dtype))
    gd = dev.gradients(x, y)
    if "gradients" in cpu:
        gref = ref.gradients(x, y)
    else:
        # the CPU model's graphs may hold a weight input-major: ref._public undoes it
        gref = {k: ref._public(k, v) for k, v in zip(gd, interpreted(ref, "gradients", x, y)[1:])}
    for k in gref:
        worst = max(worst, assert_close(f"gradient {k}", gd[k], gref[k], dtype))
    if "train" in cpu:
        for step in range(steps):
            ld, lc = dev.train_step(x, y), ref.train_step(x, y)
            worst = max(worst, assert_close(f"loss of step {step}", ld, lc, dtype))
        pd, pc = dev.parameters(), ref.parameters()
        sd, sc = dev.optimizer_state(), ref.optimizer_state()
        # the device copies stay authoritative: a step after parameters() continues from them
        ld, lc = dev.train_step(x, y), ref.train_step(x, y)
        worst = max(worst, assert_close("loss after parameters()", ld, lc, dtype))
    else:
        g = ref._graph("train")
        outs = interpreted(ref, "train", x, y)
        ld = dev.train_step(x, y)
        worst = max(worst, assert_close("loss of a step", ld, outs[0], dtype))
        new = dict(zip(g.output_names, outs))
        pd, pc = dev.parameters(), {k: ref._public(k, new[k]) for k in ref.parameters()}
        sd = dev.optimizer_state()
        sc = {k: ref._public(k, new[k]) for k in sd}
    for k in pc:
        worst = max(worst, assert_close(f"parameter {k} after the steps", pd[k], pc[k], dtype))
    bd = dev.buffers()         # running statistics, dropout seeds
    bc = ref.buffers() if "train" in cpu else {k: new[k] for k in bd if k in new}
    for k in bc:
        worst = max(worst, assert_close(f"buffer {k} after the steps", bd[k], bc[k], dtype))
    for k in sc:
        worst = max(worst, assert_close(f"optimizer state {k}", sd[k], sc[k], dtype))
    return f"max relative error {worst:.2g} (CPU backend: {', '.join(cpu) or 'none'})"


rng = np.random.default_rng(0)


@check("mlp_f64_cross_entropy_momentum")
def _():
    gc.manual_seed(1)
    net = gc.nn.Sequential(gc.nn.Linear(4, 8), gc.nn.ReLU(), gc.nn.Linear(8, 3))
    x = rng.normal(size=(6, 4))
    y = rng.integers(0, 3, size=6)
    # the train graph holds forward, backward and update: its CPU build checks them all
    return compare_models(net, "float64", "cross_entropy",
                          dict(lr=0.1, momentum=0.9, weight_decay=0.01), x, y, cpu=("train",))


@check("mlp_f32_log_softmax_nll")
def _():
    gc.manual_seed(2)
    x = rng.normal(size=(7, 5)).astype(np.float32)
    y = rng.integers(0, 4, size=7)
    return compare_models(LogSoftmaxNet(), "float32", "nll", dict(lr=0.05, momentum=0.5), x, y,
                          cpu=("train",))


@check("mlp_f64_sigmoid_bce_and_mse")
def _():
    gc.manual_seed(3)
    net = gc.nn.Sequential(gc.nn.Linear(3, 5), gc.nn.Softplus(), gc.nn.Linear(5, 2),
                           gc.nn.Sigmoid())
    x = rng.normal(size=(4, 3))
    y = rng.uniform(0.05, 0.95, size=(4, 2))
    a = compare_models(net, "float64", "bce", dict(lr=0.2), x, y, cpu=())
    b = compare_models(net, "float64", "mse", dict(lr=0.2, momentum=0.5), x, y, cpu=())
    return f"bce {a}; mse {b}"


def lenet(dropout=0.0):
    """conv -> relu -> maxpool -> flatten -> (dropout) -> linear on (N, 1, 6, 6)."""
    layers = [gc.nn.Conv2d(1, 3, 3), gc.nn.ReLU(), gc.nn.MaxPool2d(2), gc.nn.Flatten()]
    layers += [gc.nn.Dropout(dropout)] if dropout else []
    return gc.nn.Sequential(*layers, gc.nn.Linear(3 * 2 * 2, 3))


@check("lenet_f64_conv_maxpool_dropout")
def _():
    gc.manual_seed(5)
    x = rng.normal(size=(2, 1, 6, 6))
    y = rng.integers(0, 3, size=2)
    # dropout in the train graph: the device masks must equal the CPU kernel's bit for bit
    return compare_models(lenet(dropout=0.25), "float64", "cross_entropy",
                          dict(lr=0.1, momentum=0.9), x, y, cpu=("train",))


@check("lenet_f32")
def _():
    gc.manual_seed(6)
    x = rng.normal(size=(2, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=2)
    return compare_models(lenet(), "float32", "cross_entropy", dict(lr=0.1, momentum=0.5), x,
                          y, cpu=())


@check("batchnorm2d_net_f32_and_f64")
def _():
    def net():
        # no conv bias: batch norm cancels it, so its gradient is pure rounding noise
        return gc.nn.Sequential(gc.nn.Conv2d(1, 2, 3, padding=1, bias=False),
                                gc.nn.BatchNorm2d(2),
                                gc.nn.ReLU(), gc.nn.AvgPool2d(2), gc.nn.Flatten(),
                                gc.nn.Linear(2 * 3 * 3, 3))
    x = rng.normal(size=(2, 1, 6, 6))
    y = rng.integers(0, 3, size=2)
    gc.manual_seed(7)
    a = compare_models(net(), "float32", "cross_entropy", dict(lr=0.1, momentum=0.9),
                       x.astype(np.float32), y, cpu=("train",))
    gc.manual_seed(8)
    b = compare_models(net(), "float64", "cross_entropy", dict(lr=0.1), x, y, cpu=())
    return f"float32 {a}; float64 {b}"


@check("load_parameters_and_batch_sizes")
def _():
    gc.manual_seed(4)
    net = gc.nn.Sequential(gc.nn.Linear(2, 3))
    dev = gc.compile(net, input_shape=(None, 2), dtype="float64", target="cuda")
    x = rng.normal(size=(3, 2))
    new = {"0.weight": np.ones((3, 2)), "0.bias": np.arange(3.0)}
    dev(x)
    dev.load_parameters(new)
    assert_close("forward after load_parameters", dev(x), x @ new["0.weight"].T + new["0.bias"],
                 "float64")
    for batch in (1, 5, 3):     # one compile serves every batch size
        xb = rng.normal(size=(batch, 2))
        assert_close(f"forward at batch {batch}", dev(xb), xb @ new["0.weight"].T + new["0.bias"],
                     "float64")


@check("liveness_shared_device_arrays")
def _():
    """Scratch device arrays follow the liveness plan (schedule.shares), and sharing
    changes no result: bitwise the same steps as a model whose values each have their
    own array."""
    import dataclasses

    def model():
        gc.manual_seed(9)
        net = gc.nn.Sequential(gc.nn.Conv2d(1, 2, 3, padding=1), gc.nn.ReLU(),
                               gc.nn.Conv2d(2, 2, 3, padding=1), gc.nn.ReLU(),
                               gc.nn.MaxPool2d(2), gc.nn.Flatten(), gc.nn.Linear(2 * 3 * 3, 3))
        return gc.compile(net, input_shape=(None, 1, 6, 6), loss="cross_entropy",
                          optimizer=gc.optim.SGD(lr=0.1, momentum=0.9), target="cuda")
    x = rng.normal(size=(2, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, size=2)
    shared, own = model(), model()
    shared.train_step(x, y)
    exe = shared._exe("train")
    s = exe.schedule
    arrays = exe.buffers_for(2)[1][:len(s.buffers)]
    array_of = dict(zip(s.buffers, map(id, arrays)))
    if not s.shares or len(set(array_of.values())) != len(s.buffers) - len(s.shares):
        raise AssertionError(f"{len(s.buffers)} values, {len(s.shares)} shared in the plan, "
                             f"{len(set(array_of.values()))} device arrays")
    for k in s.kernels:
        reads = {array_of[v] for v in k.inputs if v in array_of}
        if reads & {array_of[v] for v in k.outputs if v in array_of}:
            raise AssertionError(f"kernel {k.name} writes a device array it reads")
    other = own._exe("train")
    other.schedule = dataclasses.replace(other.schedule, shares={})
    other._buffers.clear()
    own.train_step(x, y)
    for step in range(2):
        a, b = shared.train_step(x, y), own.train_step(x, y)
        if a != b:
            raise AssertionError(f"step {step + 2}: loss {a} with shared arrays, {b} without")
    for name, p in shared.parameters().items():
        if not np.array_equal(p, own.parameters()[name]):
            raise AssertionError(f"parameter {name} differs with shared arrays")
    return (f"{len(s.buffers)} values in {len(set(array_of.values()))} device arrays; "
            "3 steps bitwise equal to an array per value")


# ------------------------------------------------------------------ single ops
def _draw(shape, domain, dtype):
    if domain.startswith("labels:"):
        return rng.integers(*label_range(domain), size=shape)
    x = rng.normal(size=shape)
    if domain == "positive":
        x = np.abs(x) + 0.1
    elif domain == "unit":
        x = rng.uniform(0.05, 0.95, size=shape)
    elif domain == "nonzero":
        x = np.sign(x) * (np.abs(x) + 0.5)
    return x.astype(dtype)


def _op_graph(op, sample, dtype):
    g = Graph(f"op_{op.name}")
    ids, feeds = [], {}
    for i, shape in enumerate(sample.shapes):
        dom = sample.domain(i)
        bdim = sample.batch_dims[i] if i < len(sample.batch_dims) else None
        sym = tuple(BATCH if k == bdim else d for k, d in enumerate(shape))
        t = TensorType(sym, "int64" if dom.startswith("labels:") else dtype)
        ids.append(g.add_input(t, f"a{i}"))
        feeds[f"a{i}"] = _draw(shape, dom, t.dtype)
    g.set_outputs([g.add(op.name, ids, sample.attrs)])
    return g, feeds


@check("every_op_sample_matches_interpreter")
def _():
    done, without = [], []
    for name, op in sorted(all_ops().items()):
        if name == "input" or not op.samples:
            continue
        if op.cuda_kernel is None and op.scalar is None:
            if name != "cpu_only_test_op":    # registered by the check below
                without.append(name)
            continue
        for dtype in ("float64", "float32"):
            for si, sample in enumerate(op.samples):
                g, feeds = _op_graph(op, sample, dtype)
                want = interpret(g, feeds)[0]
                got = compile_graph(g, target="cuda").run(feeds)[0]
                assert_close(f"op {name} sample {si} {dtype}", got, want, dtype)
        done.append(name)
    if without:     # every registered op must run on the GPU
        raise AssertionError(f"ops without CUDA code: {', '.join(without)}")
    return f"{len(done)} ops: {', '.join(done)}"


@check("matmul_transposes_multi_tile")
def _():
    # several tiles in every direction (simulator tile is 4), all four layouts
    for ta in (False, True):
        for tb in (False, True):
            g = Graph("mm")
            a_shape = (9, 6) if ta else (6, 9)
            b_shape = (7, 9) if tb else (9, 7)
            a = g.add_input(TensorType(a_shape, "float64"), "a")
            b = g.add_input(TensorType(b_shape, "float64"), "b")
            g.set_outputs([g.add("matmul", [a, b], {"ta": ta, "tb": tb})])
            feeds = {"a": rng.normal(size=a_shape), "b": rng.normal(size=b_shape)}
            got = compile_graph(g, target="cuda").run(feeds)[0]
            assert_close(f"matmul ta={ta} tb={tb}", got, interpret(g, feeds)[0], "float64")


@check("fused_loop_group_and_unsupported_group_fallback")
def _():
    g = Graph("fused")
    x = g.add_input(TensorType((BATCH, 3), "float64"), "x")
    w = g.add_input(TensorType((4, 3), "float64"), "w")
    b = g.add_input(TensorType((4,), "float64"), "b")
    h = g.add("matmul", [x, w], {"tb": True})
    z = g.add("add", [h, b])
    r = g.add("relu", [z])
    e = g.add("mul", [g.add("exp", [g.add("neg", [r])]), g.constant(2.0, "float64")])
    s = g.add("reduce_sum", [e], {"axes": (1,)})
    for n in (z, r):
        g.set_group(n, 1)            # an elementwise loop group: one kernel
    for n in (h,):
        g.set_group(n, 2)            # a group of a kind the CUDA emitter lacks
    g.set_group(e, 3)
    g.set_group(s, 3)
    g.meta["group_kinds"] = {2: "matmul_epilogue", 3: "reduce_epilogue"}
    g.set_outputs([r, s])
    feeds = {"x": rng.normal(size=(5, 3)), "w": rng.normal(size=(4, 3)),
             "b": rng.normal(size=(4,))}
    exe = compile_graph(g, target="cuda")
    for got, want in zip(exe.run(feeds), interpret(g, feeds)):
        assert_close("fused graph", got, want, "float64")
    loops = [k for k in exe.schedule.kernels if k.kind == "loop" and len(k.nodes) > 1]
    assert loops, "the elementwise group was not emitted as one loop kernel"
    return f"{exe.kernel_count} kernels"


@check("missing_cuda_template_is_a_compile_error")
def _():
    from graphc.ir import FusionKind, OpDef, register
    from graphc.ir.ops.core import _size_infer, _size_impl, _size_kernel
    register(OpDef(name="cpu_only_test_op", infer=_size_infer, impl=_size_impl,
                   kind=FusionKind.OPAQUE, kernel=_size_kernel, arity=1,
                   attrs={"axes": (0,), "dtype": "float64"}, differentiable=False))
    g = Graph("nocuda")
    x = g.add_input(TensorType((3,), "float64"), "x")
    g.set_outputs([g.add("cpu_only_test_op", [x])])
    try:
        compile_graph(g, target="cuda")
    except CompileError as exc:
        if "cpu_only_test_op" not in str(exc):
            raise AssertionError(f"the error does not name the op: {exc}")
        return str(exc)
    raise AssertionError("compiling an op without a CUDA template did not raise")


if __name__ == "__main__":
    # python tests/cuda_sim_check.py [check names...]   (all by default)
    for name in sys.argv[1:] or list(CHECKS):
        run_check(name, CHECKS[name])
    sys.exit(0 if all(r["ok"] for r in RESULTS) else 1)
