"""Fusion: fused and unfused compiled training steps agree with each other and with the
NumPy interpreter; the MLP step needs at most half the kernels; random graphs compile
to the same values and gradients fused and unfused; groups are convex and capped."""
import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import graphc as gc
from graphc.codegen import build_schedule, compile_graph
from graphc.ir import Graph, TensorType, interpret
from graphc.passes.autodiff import add_gradients
from graphc.passes.fusion import MAX_GROUP
from graphc.pipeline import optimize

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from mlp_digits import MLP  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_passes import SHAPES, assert_close, random_graph, random_inputs  # noqa: E402

STEPS = 10


@pytest.fixture(autouse=True)
def _verify_each(monkeypatch):
    monkeypatch.setenv("GRAPHC_VERIFY", "1")


class SigmoidTanhMLP(gc.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = gc.nn.Linear(6, 8)
        self.fc2 = gc.nn.Linear(8, 5)
        self.fc3 = gc.nn.Linear(5, 3)

    def forward(self, x):
        h = gc.nn.functional.sigmoid(self.fc1(x))
        return self.fc3(gc.nn.functional.tanh(self.fc2(h)))


def interpret_steps(model, x, y, steps):
    """The traced (unoptimized) training graph run by the NumPy interpreter."""
    g = model._graph("train", raw=True)
    names = g.input_names()
    values = {"x": x, "y": y, "lr": np.array(model.optimizer.lr)}
    values.update(model._graph_parameters())   # the graphs' layout
    for nid in g.inputs:
        name = g.nx.nodes[nid]["name"]
        if name not in values:
            values[name] = np.zeros(g.type_of(nid).shape)
    for _ in range(steps):
        outs = interpret(g, values)
        for o, i in g.aliases.items():
            values[names[i]] = outs[o]
    return {n: model._public(n, values[n]) for n in model.parameters()}


def _case(name):
    gc.manual_seed(0)
    rng = np.random.default_rng(0)
    if name == "mlp_digits":
        net, shape, loss = MLP(hidden=16), (None, 64), "cross_entropy"
        x, y = rng.normal(size=(12, 64)), rng.integers(0, 10, 12)
    else:
        net, shape, loss = SigmoidTanhMLP(), (None, 6), "mse"
        x, y = rng.normal(size=(12, 6)), rng.normal(size=(12, 3))
    models = {fuse: gc.compile(net, input_shape=shape, loss=loss, dtype="float64", fuse=fuse,
                               optimizer=gc.optim.SGD(lr=0.1, momentum=0.9))
              for fuse in (True, False)}
    return models, x, y


@pytest.fixture(scope="module", params=["mlp_digits", "sigmoid_tanh_mse"])
def trained(request):
    models, x, y = _case(request.param)
    start = models[True].parameters()
    want = interpret_steps(models[True], x, y, STEPS)
    for m in models.values():
        for _ in range(STEPS):
            m.train_step(x, y)
    return request.param, models, start, want


def test_fused_and_unfused_steps_agree_with_the_interpreter(trained):
    _, models, start, want = trained
    fused, unfused = models[True].parameters(), models[False].parameters()
    for name in want:
        assert not np.allclose(fused[name], start[name])     # training moved the weights
        np.testing.assert_allclose(fused[name], unfused[name], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(fused[name], want[name], rtol=1e-9, atol=1e-12)


def test_fusion_at_least_halves_the_training_step_kernels(trained):
    name, models, _, _ = trained
    fused, unfused = models[True].kernel_count("train"), models[False].kernel_count("train")
    assert 2 * fused <= unfused, (name, fused, unfused)
    src = models[True].source
    assert "gemm(" in src and "prange" not in src and "parallel" not in src


def test_mlp_kernels_use_every_fused_kind(trained):
    name, models, _, _ = trained
    if name != "mlp_digits":
        pytest.skip("checked on the MLP")
    kinds = {k.kind for k in models[True]._exe("train").schedule.kernels}
    assert {"loop", "matmul_epilogue", "reduce_loop"} <= kinds
    # the four parameter updates are one in-place loop each
    sched = models[True]._exe("train").schedule
    assert len(sched.inplace) == 8 and not sched.copy_back


def test_groups_are_convex_and_capped(trained):
    _, models, _, _ = trained
    g = models[True]._graph("train")
    groups = {}
    for n, d in g.nx.nodes(data=True):
        if d.get("group") is not None:
            groups.setdefault(d["group"], set()).add(n)
    assert groups and all(len(m) <= MAX_GROUP for m in groups.values())
    for members in groups.values():
        outside = {d for n in members for d in nx.descendants(g.nx, n)} - members
        for n in outside:
            assert not (nx.descendants(g.nx, n) & members), "a path leaves the group and re-enters"
    build_schedule(g)      # raises on a cyclic kernel order


def test_relu_masks_are_recomputed_where_they_are_used(trained):
    """relu's gradient mask gt(h, 0) reads the stored activation h: fusion puts it in the
    backward kernel that multiplies by it, so no forward kernel writes a mask."""
    name, models, _, _ = trained
    if name != "mlp_digits":
        pytest.skip("checked on the MLP (ReLU)")
    g = models[True]._graph("train")
    masks = [n for n in g.nx if g.op_of(n) == "gt"]
    assert masks
    for n in masks:
        (user,) = g.users(n)
        assert g.op_of(user) == "mul"
        assert g.nx.nodes[n].get("group") == g.nx.nodes[user].get("group") is not None
        (h,) = {a for a in g.args_of(n) if g.op_of(a) != "constant"}
        assert g.op_of(h) == "relu" and g.nx.nodes[h].get("group") != g.nx.nodes[n]["group"]
    schedule = models[True]._exe("train").schedule
    stored = {g.op_of(v) for v in schedule.buffers}
    assert "gt" not in stored and "relu" in stored


def test_a_mask_whose_activation_is_not_stored_stays_with_its_producer():
    """relu(x) * 2 stores only the product: recomputing the mask in the backward kernel
    would need relu's output stored as well, so fusion keeps the mask in the forward
    kernel; the values match the interpreter either way."""
    g = Graph("relu_scaled")
    x = g.add_input(TensorType(("N", 4), "float64"), "x")
    w = g.add_input(TensorType((4, 4), "float64"), "w")
    two = g.constant(2.0, "float64")
    r = g.add("relu", [x])
    y = g.add("mul", [r, two])
    loss = g.add("reduce_sum", [g.add("matmul", [y, w])], {"axes": (0, 1), "keepdims": False})
    g.set_outputs([loss] + add_gradients(g, loss, [x, w]))
    inputs = {"x": np.random.default_rng(5).normal(size=(6, 4)),
              "w": np.random.default_rng(6).normal(size=(4, 4))}
    h, _ = optimize(g.copy())
    (mask,) = [n for n in h.nx if h.op_of(n) == "gt"]
    (relu,) = [n for n in h.nx if h.op_of(n) == "relu"]
    assert h.nx.nodes[mask].get("group") == h.nx.nodes[relu].get("group") is not None
    assert_close(compile_graph(h).run(inputs), interpret(g, inputs))


def test_a_mask_next_to_its_relu_compares_the_relus_operand():
    """In one loop with z, gt(relu(z), 0) is emitted as z > 0: the comparison sigmoid's
    numerator selection makes too, so the chain's loop does it once."""
    def chain(v):
        return gc.sum(gc.sigmoid(v) * gc.relu(v))
    x = np.linspace(-3, 3, 64).astype(np.float32)
    vg = gc.value_and_grad(chain)
    src = vg.source(x)
    (line,) = [ln for ln in src.splitlines() if " if " in ln and "else np.float32(0.0)" in ln]
    assert "if x0 > " in line, line
    _, grad = vg(x)
    s = 1 / (1 + np.exp(-x.astype(np.float64)))
    want = s * (1 - s) * np.maximum(x, 0) + s * (x > 0)
    np.testing.assert_allclose(grad, want, rtol=2e-5, atol=1e-6)


def test_fusion_dump_shows_the_kernel_of_each_node(trained):
    _, models, _, _ = trained
    text = models[True].ir("train", after="fusion")
    assert "@k" in text
    assert "fusion" in models[True].pass_report("train")


# ---------------------------------------------------------------- random graphs, compiled
# derandomized: the same graphs every run, so Numba's on-disk cache makes reruns cheap
# (each new graph costs seconds of compilation); the interpreter-only property test in
# test_passes.py explores freely
@settings(max_examples=8, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(random_graph(max_ops=6), st.integers(0, 2**16))
def test_random_graphs_compile_to_the_interpreters_values(g, seed):
    inputs = random_inputs(seed, batch=4)
    want = interpret(g, inputs)
    for fuse in (False, True):
        h, _ = optimize(g.copy(), fuse=fuse)
        assert_close(compile_graph(h).run(inputs), want)


def test_reduce_loop_kinds_and_keepdims_compile():
    g = Graph("reduce_loop")
    x = g.add_input(TensorType(("N", 5), "float64"), "x")
    b = g.add_input(TensorType((5,), "float64"), "b")
    e = g.add("tanh", [g.add("add", [x, b])])
    outs = [g.add(op, [e], {"axes": axes, "keepdims": keep})
            for op, axes, keep in (("reduce_sum", (0,), False), ("reduce_mean", (1,), True),
                                   ("reduce_max", None, False))]
    g.set_outputs(outs + [e])
    inputs = {"x": np.random.default_rng(2).normal(size=(7, 5)), "b": np.arange(5.0)}
    h, _ = optimize(g.copy())
    exe = compile_graph(h)
    assert [k.kind for k in exe.schedule.kernels] == ["reduce_loop"]
    assert_close(exe.run(inputs), interpret(g, inputs))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_blocked_whole_tensor_sums_match_the_interpreter_at_block_edges(dtype):
    """Whole-tensor sums run in blocks of SUM_BLOCK (unsigned inner index, float32 FMA):
    lengths around the block size, a rank-2 loop whose rows span two blocks, and the
    elementwise values stored next to the sums all agree with the interpreter."""
    from graphc.codegen.fused import SUM_BLOCK
    g = Graph(f"blocked_{dtype}")
    x = g.add_input(TensorType(("N",), dtype), "x")
    m = g.add_input(TensorType((2, SUM_BLOCK + 476), dtype), "m")
    e = g.add("add", [g.add("mul", [g.add("tanh", [x]), x]), g.add("sigmoid", [x])])
    f = g.add("mul", [g.add("softplus", [m]), m])
    g.set_outputs([g.add("reduce_sum", [e], {"axes": None, "keepdims": False}), e,
                   g.add("reduce_mean", [f], {"axes": None, "keepdims": False}), f])
    h, _ = optimize(g.copy())
    exe = compile_graph(h)
    assert [k.kind for k in exe.schedule.kernels] == ["reduce_loop", "reduce_loop"]
    assert exe.source.count("np.uint64(") == 4   # both loops took the blocked path
    rng = np.random.default_rng(5)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    for n in (1, SUM_BLOCK - 1, SUM_BLOCK, SUM_BLOCK + 1, 3 * SUM_BLOCK + 7):
        inputs = {"x": rng.normal(size=n).astype(dtype),
                  "m": rng.normal(size=(2, SUM_BLOCK + 476)).astype(dtype)}
        got, want = exe.run(inputs), interpret(g, inputs)
        for k in (1, 3):   # the stored elementwise values
            np.testing.assert_allclose(got[k], want[k], **tol)
        for k in (0, 2):   # the sums: rounding grows with the number of terms
            scale = np.abs(want[k + 1]).sum(dtype=np.float64) / want[k + 1].size ** (k == 2)
            np.testing.assert_allclose(got[k], want[k], rtol=tol["rtol"], atol=tol["rtol"] * scale)
            assert got[k].dtype == np.dtype(dtype)


def test_float32_matmul_epilogue():
    g = Graph("epilogue32")
    x = g.add_input(TensorType(("N", 3), "float32"), "x")
    w = g.add_input(TensorType((4, 3), "float32"), "w")
    b = g.add_input(TensorType((4,), "float32"), "b")
    z = g.add("matmul", [x, w], {"tb": True})
    g.set_outputs([g.add("sigmoid", [g.add("add", [z, b])]), z])
    rng = np.random.default_rng(3)
    inputs = {"x": rng.normal(size=(6, 3)).astype("float32"),
              "w": rng.normal(size=(4, 3)).astype("float32"),
              "b": rng.normal(size=(4,)).astype("float32")}
    h, _ = optimize(g.copy())
    exe = compile_graph(h)
    assert [k.kind for k in exe.schedule.kernels] == ["matmul_epilogue"]
    for a, want in zip(exe.run(inputs), interpret(g, inputs)):
        np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)


def test_reduction_over_a_loop_with_no_full_shaped_input_still_compiles():
    # the only (N, 4) operand is a constant, which fusion copies into the group: the
    # reduction must then not join (the loop would have no array to take extents from)
    g = Graph("extents")
    w = g.add_input(TensorType((4,), "float64"), "w")
    b = g.add_input(TensorType(("N", 1), "float64"), "b")
    e = g.add("mul", [g.add("add", [w, b]), g.constant(2.0, "float64", ("N", 4))])
    g.set_outputs([g.add("reduce_sum", [e], {"axes": (1,)})])
    inputs = {"w": np.arange(4.0), "b": np.ones((3, 1))}
    h, _ = optimize(g.copy())
    assert_close(compile_graph(h).run(inputs), interpret(g, inputs))


def test_softmax_heads_its_elementwise_consumers():
    g = Graph("softmax_head")
    x = g.add_input(TensorType(("N", 4), "float64"), "x")
    t = g.add_input(TensorType(("N", 4), "float64"), "t")
    p = g.add("softmax", [x])
    g.set_outputs([g.add("mul", [g.add("sub", [p, t]), t])])
    inputs = {"x": np.random.default_rng(4).normal(size=(5, 4)), "t": np.full((5, 4), 0.25)}
    h, _ = optimize(g.copy())
    exe = compile_graph(h)
    assert [k.kind for k in exe.schedule.kernels] == ["template_epilogue"]
    assert_close(exe.run(inputs), interpret(g, inputs))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("const_lr", [False, True])
def test_matmul_update_matches_the_interpreter(dtype, const_lr):
    """W - lr * (A^T @ B), updated in place, is one accumulating gemm (also with the
    learning rate a constant); values as the interpreter's."""
    g = Graph("upd")
    w = g.add_input(TensorType((3, 5), dtype), "w", role="param")
    a = g.add_input(TensorType(("N", 3), dtype), "a")
    b = g.add_input(TensorType(("N", 5), dtype), "b")
    lr = g.constant(0.25, dtype) if const_lr else g.add_input(TensorType((), dtype), "lr",
                                                                   role="hyper")
    mm = g.add("matmul", [a, b], {"ta": True, "tb": False})
    g.set_outputs([g.add("sub", [w, g.add("mul", [lr, mm])])])
    g.aliases = {0: 0}
    rng = np.random.default_rng(0)
    vals = {"w": rng.standard_normal((3, 5)).astype(dtype),
            "a": rng.standard_normal((4, 3)).astype(dtype),
            "b": rng.standard_normal((4, 5)).astype(dtype)}
    if not const_lr:
        vals["lr"] = np.array(0.25, dtype)
    want = interpret(g, vals)[0]
    fused, _ = optimize(g.copy(), fuse=True)
    exe = compile_graph(fused)
    assert [k.kind for k in exe.schedule.kernels] == ["matmul_update"]
    arrays = [vals[n] for n in exe.input_names]
    exe.run(arrays, copy=False)
    tol = 1e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(arrays[0], want, rtol=tol, atol=tol)   # updated in place


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_reductions_over_trailing_axes_match_the_interpreter(dtype):
    """Reduce loops whose reductions cover the trailing axes accumulate in registers over
    them (flattened when every array is whole or broadcast there, blocked by SUM_BLOCK):
    a conv bias gradient (0, 2, 3), keepdims, mean, max, a broadcast operand, odd sizes,
    a run longer than a block; axis 0 of (N, F) keeps the row-by-row order (float64:
    bit-equal to NumPy)."""
    from graphc.codegen.fused import SUM_BLOCK
    g = Graph(f"trailing_{dtype}")
    x = g.add_input(TensorType(("N", 3, 7, 9), dtype), "x")
    m = g.add_input(TensorType(("N", 3, 7, 9), dtype), "m")
    c = g.add_input(TensorType((3, 1, 1), dtype), "c")
    z = g.add_input(TensorType(("N", 2, SUM_BLOCK + 77), dtype), "z")
    f = g.add_input(TensorType(("N", 5), dtype), "f")
    e1 = g.add("mul", [x, m])                       # relu-mask * grad
    e2 = g.add("tanh", [g.add("add", [x, c])])
    e3 = g.add("mul", [z, z])
    e4 = g.add("sigmoid", [f])
    red = lambda op, v, axes, keep=False: g.add(op, [v], {"axes": axes, "keepdims": keep})  # noqa: E731
    g.set_outputs([red("reduce_sum", e1, (0, 2, 3)), e1,
                   red("reduce_mean", e2, (2, 3), True), red("reduce_max", e2, (0, 2, 3)), e2,
                   red("reduce_sum", e3, (0, 2)), red("reduce_mean", e3, (0, 1, 2), True),
                   red("reduce_sum", e4, (0,)), e4])
    h, _ = optimize(g.copy())
    exe = compile_graph(h)
    assert {k.kind for k in exe.schedule.kernels} == {"reduce_loop"}
    assert "n_run" in exe.source          # the (0, 2, 3) sum took the flattened run
    assert "for bu in range" in exe.source    # the run longer than a block runs in blocks
    if dtype == "float64":
        assert "reassoc" not in exe.source
    rng = np.random.default_rng(6)
    tol = dict(rtol=2e-5, atol=1e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-14)
    for n in (1, 4):
        inputs = {"x": rng.normal(size=(n, 3, 7, 9)), "m": rng.normal(size=(n, 3, 7, 9)),
                  "c": rng.normal(size=(3, 1, 1)), "z": rng.normal(size=(n, 2, SUM_BLOCK + 77)),
                  "f": rng.normal(size=(n, 5))}
        inputs = {k: v.astype(dtype) for k, v in inputs.items()}
        got, want = exe.run(inputs), interpret(g, inputs)
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_allclose(a, b, **tol)
        if dtype == "float64":
            np.testing.assert_array_equal(got[7], want[7])


@pytest.mark.parametrize("dtype,bias,collapsed", [("float32", (3, 1, 1), True),
                                                  ("float64", (7, 9), True),
                                                  ("float32", (9,), False)])
def test_loop_nests_run_trailing_broadcast_axes_as_one_loop(dtype, bias, collapsed):
    """A loop nest whose operands are all whole or broadcast over its trailing axes runs
    them as one flat loop (a conv bias + relu: (N, C, H, W) + (C, 1, 1)); a (W,) operand
    keeps the nest. Values equal the interpreter's exactly."""
    g = Graph(f"run_{dtype}_{len(bias)}")
    x = g.add_input(TensorType(("N", 3, 7, 9), dtype), "x")
    b = g.add_input(TensorType(bias, dtype), "b")
    e = g.add("add", [x, b])
    g.set_outputs([g.add("relu", [e]), g.add("gt", [e, g.constant(0.0, dtype)])])
    h, _ = optimize(g.copy())
    exe = compile_graph(h)
    assert [k.kind for k in exe.schedule.kernels] == ["loop"]
    assert ("for ir in range(n_run)" in exe.source) == collapsed
    rng = np.random.default_rng(8)
    inputs = {"x": rng.normal(size=(5, 3, 7, 9)).astype(dtype),
              "b": rng.normal(size=bias).astype(dtype)}
    for a, want in zip(exe.run(inputs), interpret(g, inputs)):
        np.testing.assert_array_equal(a, want)


@pytest.mark.parametrize("hw,literal", [((8, 8), False), ((4, 4), True)])
def test_a_bare_sum_of_a_long_run_reads_the_run_length_from_the_shape(hw, literal):
    """Batch norm's per-channel mean of a convolution's output is a reduce loop with no
    elementwise work: a 64-pixel run gets its length from the shape (a literal 64 was
    unrolled into 64 scalar adds), a 16-pixel run keeps the literal; values as the
    interpreter's."""
    g = Graph(f"bare_sum_{hw[0]}")
    x = g.add_input(TensorType(("N", 4) + hw, "float32"), "x")
    g.set_outputs([g.add("reduce_mean", [x], {"axes": (0, 2, 3), "keepdims": True})])
    h, _ = optimize(g.copy())
    exe = compile_graph(h)
    run = hw[0] * hw[1]
    assert (f"n_run = {run}\n" in exe.source) == literal
    assert (f"# one block of {run}" in exe.source) == literal
    xv = np.random.default_rng(3).standard_normal((5, 4) + hw).astype(np.float32)
    np.testing.assert_allclose(exe.run({"x": xv})[0], interpret(g, {"x": xv})[0],
                               rtol=2e-6, atol=1e-7)


def test_a_dead_reduction_is_not_fused():
    """Without dce first (the fuzzer's pass subsets), a reduction nobody reads joined its
    operand's loop, and the kernel wrote it to a buffer that was never planned."""
    from graphc.passes.fusion import fusion
    g = Graph("dead")
    x = g.add_input(TensorType((3, 4), "float64"), "x")
    a = g.add("abs", [x])
    g.add("reduce_max", [a], {"axes": (1,), "keepdims": False})
    g.set_outputs([a])
    fusion(g)
    v = -np.arange(12.0).reshape(3, 4)
    np.testing.assert_array_equal(compile_graph(g).run({"x": v})[0], np.abs(v))
