"""The float32 fast-math functions: accuracy against NumPy over the whole float32 range,
special values, the codegen rewrite, and that LLVM really vectorises a loop using them."""
import platform
import re

import numpy as np
import pytest
from numba import njit

from graphc.codegen import compile_graph, fastmath
from graphc.codegen.fastmath import MAX_REL_ERROR
from graphc.ir import Graph, TensorType

TINY = float(np.finfo(np.float32).tiny)


def _loop(f, flags=False):
    @njit(error_model="numpy", boundscheck=False, fastmath=flags)
    def apply(x, out):
        for i in range(x.size):
            out[i] = f(x[i])
    return apply


# the functions are inlined, so they compile with the flags of the generated loop:
# none (plain loops), or fastmath.LOOP_FLAGS plus 'reassoc' (float32 reduction loops)
LOOP_FLAGS = set(fastmath.LOOP_FLAGS) | {"reassoc"}
_KERNELS = {(name, fl): _loop(f, LOOP_FLAGS if fl else False)
            for name, f in fastmath.FUNCTIONS.items() for fl in (False, True)}


def _run(name, x, loop_flags=False):
    out = np.empty_like(x)
    _KERNELS[name, loop_flags](x, out)
    return out


def _reference(name, x64):
    with np.errstate(all="ignore"):  # float64 NumPy, then compared in float32 terms
        return {"fexp32": np.exp, "flog32": np.log, "flog1p32": np.log1p, "ftanh32": np.tanh,
                "fsigmoid32": lambda v: np.exp(-np.logaddexp(0.0, -v)),
                "fsoftplus32": lambda v: np.logaddexp(0.0, v)}[name](x64)


def _inputs():
    """Random bit patterns (every exponent, denormals, inf, nan), a dense sweep over the
    interesting range, and the edge cases."""
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 300_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    sweep = np.linspace(-110, 95, 200_001, dtype=np.float32)
    small = np.float32(10.0) ** rng.uniform(-45, 0, 50_000).astype(np.float32)
    edges = np.float32([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, TINY, 88.72, 88.73,
                        -87.3, -103.9, -104.0, 0.625, -0.625, -1.0, -0.999999, 1e-30, 9.0])
    return np.concatenate([bits, sweep, small, -small, edges])


X = _inputs()


@pytest.mark.parametrize("loop_flags", [False, True], ids=["plain", "loop_flags"])
@pytest.mark.parametrize("name", sorted(fastmath.FUNCTIONS))
def test_accuracy_and_special_values(name, loop_flags):
    out = _run(name, X, loop_flags).astype(np.float64)
    ref = _reference(name, X.astype(np.float64))
    with np.errstate(all="ignore"):
        ref32 = ref.astype(np.float32).astype(np.float64)
    normal = np.isfinite(ref32) & (np.abs(ref32) >= TINY)
    rel = np.abs(out[normal] - ref[normal]) / np.abs(ref[normal])
    assert rel.max() <= MAX_REL_ERROR, (name, X[normal][rel.argmax()], rel.max())
    # outside the normal range: inf/nan/0 exactly as NumPy, denormals within 3 units plus
    # the functions' own relative bound (1e-6: near the normal range a denormal still
    # carries 22 bits, where sigmoid's 5e-7 is 3-4 units)
    rest = ~normal
    with np.errstate(invalid="ignore"):
        same = ((out[rest] == ref32[rest]) | (np.isnan(out[rest]) & np.isnan(ref32[rest]))
                | (np.abs(out[rest] - ref[rest]) <= 3 * 2.0 ** -149 + 1e-6 * np.abs(ref[rest])))
    assert same.all(), (name, X[rest][~same][:5], out[rest][~same][:5], ref32[rest][~same][:5])


def test_the_check_can_fail():
    """A deliberately worse exp (float32 libm of x + 1 ulp) must break the bound."""
    x = np.float32(np.linspace(-80, 80, 1001))
    worse = np.exp(np.nextafter(x, np.float32(np.inf))).astype(np.float64)
    rel = np.abs(worse - np.exp(x.astype(np.float64))) / np.exp(x.astype(np.float64))
    assert rel.max() > MAX_REL_ERROR


def test_exp_limits_match_numpy():
    x = np.float32([88.7, 88.8, -103.0, -104.5, 0.0, -0.0])
    np.testing.assert_array_equal(_run("fexp32", x)[[1, 3, 4, 5]], np.float32([np.inf, 0, 1, 1]))
    assert np.isfinite(_run("fexp32", x)[0]) and _run("fexp32", x)[2] > 0
    t = _run("ftanh32", np.float32([-0.0, 50.0, -50.0]))
    assert np.signbit(t[0]) and t[1] == 1.0 and t[2] == -1.0


def test_rewrite_only_float32():
    e = "(math.exp(a) + math.log(b) * math.log1p(c) - math.tanh(d))"
    assert fastmath.rewrite(e, "float64") == e
    assert fastmath.rewrite(e, "float32") == "(fexp32(a) + flog32(b) * flog1p32(c) - ftanh32(d))"
    assert fastmath.rewrite("x", "float32", op="sigmoid", args=["t1"]) == "fsigmoid32(t1)"
    assert fastmath.rewrite("x", "float64", op="sigmoid", args=["t1"]) == "x"


def _chain_graph(dtype):
    g = Graph(f"chain_{dtype}")
    x = g.add_input(TensorType(("N",), dtype), "x")
    half = g.constant(0.5, dtype)
    a = g.add("mul", [g.add("sigmoid", [x]), g.add("tanh", [x])])
    b = g.add("mul", [half, g.add("relu", [x])])
    y = g.add("sub", [g.add("add", [a, b]), g.add("softplus", [x])])
    for n in g.topo_order():
        if g.op_of(n) != "input":
            g.set_group(n, 0)
    g.set_outputs([y])
    return g


def _chain_np(x):
    return 1 / (1 + np.exp(-x)) * np.tanh(x) + 0.5 * np.maximum(x, 0) - np.logaddexp(0, x)


def test_generated_float32_loop_uses_fast_math_and_vectorises():
    exe = compile_graph(_chain_graph("float32"))
    assert "fsigmoid32(" in exe.source and "ftanh32(" in exe.source
    assert "math.exp(" not in exe.source and "math.tanh(" not in exe.source
    x = np.linspace(-30, 30, 1000, dtype=np.float32)
    (y,) = exe.run([x])
    np.testing.assert_allclose(y, _chain_np(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("packed-instruction check is written for x86")
    kernel = next(getattr(exe.module, k.name) for k in exe.schedule.kernels if k.kind == "loop")
    # recompile without the disk cache: a kernel loaded from cache has no assembly to show
    fresh = njit(error_model="numpy", boundscheck=False)(kernel.py_func)
    fresh(x, np.empty_like(x))
    asm = "\n".join(fresh.inspect_asm().values())
    packed = re.findall(r"\bv?(?:mul|add|sub|div|fmadd\w*)ps\s+[^\n]*[xyz]mm", asm)
    assert len(packed) > 20, "the float32 fast-math loop did not vectorise"
    assert not re.search(r"call\w*\s+\S*(expf|logf|tanhf|log1pf)", asm)


def test_generated_float32_reduction_loop_loads_and_stores_packed():
    """The chain's value and gradient of sum(y) is one blocked reduction loop. Its loads and
    stores must be vector ones: with Numba's negative-index wraparound on int64 indices
    they stayed scalar (and hit 4K aliasing, 10-20x slower); the loop indexes with uint64."""
    from graphc.pipeline import optimize
    g = Graph("chain_sum")
    x = g.add_input(TensorType(("N",), "float32"), "x")
    a = g.add("mul", [g.add("sigmoid", [x]), g.add("tanh", [x])])
    b = g.add("mul", [g.constant(0.5, "float32"), g.add("relu", [x])])
    y = g.add("sub", [g.add("add", [a, b]), g.add("softplus", [x])])
    g.set_outputs([g.add("reduce_sum", [y], {"axes": None, "keepdims": False}), y])
    exe = compile_graph(optimize(g)[0])
    (k,) = exe.schedule.kernels
    assert k.kind == "reduce_loop"
    x = np.linspace(-30, 30, 3001, dtype=np.float32)
    total, y = exe.run([x])
    np.testing.assert_allclose(y, _chain_np(x.astype(np.float64)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(total, _chain_np(x.astype(np.float64)).sum(), rtol=1e-5)
    kernel = getattr(exe.module, k.name)
    fresh = njit(error_model="numpy", boundscheck=False,
                 fastmath=set(fastmath.LOOP_FLAGS) | {"reassoc"})(kernel.py_func)
    fresh(x, *[np.empty(exe.graph.type_of(o).concrete(x.size), np.float32) for o in k.outputs])
    ir = "\n".join(fresh.inspect_llvm().values())
    assert re.search(r"load <\d+ x float>", ir), "the reduction loop's loads stayed scalar"
    assert re.search(r"store <\d+ x float>", ir), "the reduction loop's stores stayed scalar"


def test_float64_keeps_libm():
    exe = compile_graph(_chain_graph("float64"))
    assert "fsigmoid32" not in exe.source.split("# fastmath")[-1].split("\n", 1)[1]
    assert "math.tanh(" in exe.source
    x = np.linspace(-30, 30, 101)
    np.testing.assert_allclose(exe.run([x])[0], _chain_np(x), rtol=1e-12, atol=1e-14)


def test_float32_bias_gradient_loop_sums_in_vector_registers():
    """A conv bias gradient ((N, C, H, W) summed over (0, 2, 3)) accumulated into the
    output element in its innermost loop: a dependency through memory, scalar, 8-12x
    slower. It must now run one flat run of H*W per (n, c) with packed loads, stores and
    vector partial sums."""
    from graphc.pipeline import optimize
    g = Graph("bias_grad")
    x = g.add_input(TensorType(("N", 3, 6, 6), "float32"), "x")
    gy = g.add_input(TensorType(("N", 3, 6, 6), "float32"), "gy")
    e = g.add("mul", [g.add("gt", [x, g.constant(0.0, "float32")]), gy])
    g.set_outputs([g.add("reduce_sum", [e], {"axes": (0, 2, 3), "keepdims": False}), e])
    exe = compile_graph(optimize(g)[0])
    (k,) = exe.schedule.kernels
    assert k.kind == "reduce_loop" and "n_run" in exe.source
    rng = np.random.default_rng(1)
    xs, gys = rng.normal(size=(2, 5, 3, 6, 6)).astype(np.float32)
    total, e = exe.run([xs, gys])
    want = (xs > 0) * gys
    np.testing.assert_array_equal(e, want)
    np.testing.assert_allclose(total, want.sum(axis=(0, 2, 3), dtype=np.float64), rtol=1e-5)
    if platform.machine().lower() not in ("x86_64", "amd64"):
        pytest.skip("packed-instruction check is written for x86")
    kernel = getattr(exe.module, k.name)
    fresh = njit(error_model="numpy", boundscheck=False,
                 fastmath=set(fastmath.LOOP_FLAGS) | {"reassoc"})(kernel.py_func)
    fresh(xs, gys, *[np.empty(exe.graph.type_of(o).concrete(5), np.float32) for o in k.outputs])
    ir = "\n".join(fresh.inspect_llvm().values())
    assert re.search(r"load <\d+ x float>", ir), "the bias-gradient loop's loads stayed scalar"
    assert re.search(r"store <\d+ x float>", ir), "the bias-gradient loop's stores stayed scalar"
    assert re.search(r"fadd reassoc[\w ]* <\d+ x float>", ir), "its sums stayed scalar"
