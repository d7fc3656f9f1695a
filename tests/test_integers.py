"""Integer (int64) arrays in traced code, with PyTorch's type promotion: +, -, *, //, %,
unary minus, comparisons and where stay int64 when every operand is an int64 tensor or a Python
integer; a float operand, true division, math functions, powers and reductions give the
trace's float dtype; float32 with float64 gives float64. Explicit conversions (astype,
float/double/long). Values against NumPy, dtypes against the rule."""
import numpy as np
import pytest

import graphc as gc

A = np.array([[-3, 0, 2], [5, 7, -1]])
B = np.array([[4, -2, 1], [0, 3, 6]])
F64 = np.linspace(-1.0, 1.0, 6).reshape(2, 3)
F32 = F64.astype(np.float32)

# (name, function, arguments, NumPy oracle, expected dtype)
CASES = [
    ("add int", lambda a: a + 1, (A,), lambda a: a + 1, "int64"),
    ("int minus tensor", lambda a, b: 2 - a * b, (A, B), lambda a, b: 2 - a * b, "int64"),
    ("unary minus", lambda a: -a, (A,), lambda a: -a, "int64"),
    ("F.neg", lambda a: gc.nn.functional.neg(a), (A,), lambda a: -a, "int64"),
    ("remainder", lambda a, b: a % 3 - b % -4 + 7 % (b + 10), (A, B),
     lambda a, b: a % 3 - b % -4 + 7 % (b + 10), "int64"),
    ("floor division", lambda a, b: a // 2 + gc.floor_divide(b, -3) + 20 // (a + 10), (A, B),
     lambda a, b: a // 2 + b // -3 + 20 // (a + 10), "int64"),
    ("comparison", lambda a, b: a > b, (A, B), lambda a, b: (a > b).astype(np.int64), "int64"),
    ("where", lambda a: gc.where(a > 0, a, 0), (A,), lambda a: np.where(a > 0, a, 0), "int64"),
    ("indexing", lambda a: a[:, 1:] * 3, (A,), lambda a: a[:, 1:] * 3, "int64"),
    ("true division", lambda a, b: a / (b + 10), (A, B), lambda a, b: a / (b + 10), "float64"),
    ("float number", lambda a: a * 0.5, (A,), lambda a: a * 0.5, "float64"),
    ("float64 tensor", lambda a, x: a * x + a, (A, F64), lambda a, x: a * x + a, "float64"),
    ("float32 tensor", lambda a, x: x - a, (A, F32), lambda a, x: x - a.astype(np.float32),
     "float32"),
    ("float32 with float64", lambda x, z: x * z + 1, (F32, F64),
     lambda x, z: x.astype(np.float64) * z + 1, "float64"),
    ("math function", lambda a: gc.tanh(a), (A,), np.tanh, "float64"),
    ("power", lambda a: a ** 2, (A,), lambda a: (a ** 2).astype(np.float64), "float64"),
    ("sum", lambda a: gc.sum(a, dim=1), (A,), lambda a: a.sum(axis=1).astype(np.float64),
     "float64"),
    ("mean", lambda a: gc.mean(a), (A,), lambda a: a.mean(), "float64"),
]


@pytest.mark.parametrize("name,fn,args,oracle,dtype", CASES, ids=[c[0] for c in CASES])
def test_integer_arithmetic_matches_numpy_with_pytorch_promotion(name, fn, args, oracle,
                                                                  dtype):
    out = np.asarray(gc.jit(fn)(*args))
    assert out.dtype == np.dtype(dtype), (name, out.dtype)
    want = oracle(*args)
    if dtype == "int64":
        np.testing.assert_array_equal(out, want)
    else:
        np.testing.assert_allclose(out, want, rtol=1e-6 if dtype == "float32" else 1e-12)


def test_gradients_flow_through_integer_weights():
    k = np.array([0, 1, 2, -3])
    x = np.array([0.5, -1.0, 2.0, 0.25])
    g = gc.grad(lambda v, w: gc.sum(v * w * w + gc.sin(v) * (w + 1)))(x, k)
    np.testing.assert_allclose(g, k * k + np.cos(x) * (k + 1), rtol=1e-12)


def test_integer_matmul_stays_a_clear_error():
    with pytest.raises(gc.ShapeError, match="matmul needs float operands"):
        gc.jit(lambda a, b: a @ b)(A, B.T.copy())


@pytest.mark.parametrize("convert,dtype", [(lambda v: v.astype("int64"), "int64"),
                                           (lambda v: v.astype(np.float32), "float32"),
                                           (lambda v: v.long(), "int64"),
                                           (lambda v: v.float(), "float32"),
                                           (lambda v: v.double(), "float64")],
                         ids=["astype int64", "astype float32", "long", "float", "double"])
def test_conversions_match_numpy(convert, dtype):
    x = np.array([[1.7, -2.5, 0.0], [-0.4, 3.0, 1e6]])
    out = gc.jit(convert)(x)
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, x.astype(dtype))   # truncation toward zero


def test_gradients_pass_through_float_conversions():
    x = np.array([0.5, -1.25, 3.0], dtype=np.float32)
    g = gc.grad(lambda v: gc.sum(v.double() * v.double() + v.long() * v))(x)
    assert g.dtype == np.float32
    np.testing.assert_allclose(g, 2 * x + x.astype(np.int64), rtol=1e-6)


def test_unsupported_conversions_name_the_input():
    with pytest.raises(gc.ir.DTypeError, match="input 'v': astype: unsupported dtype float16"):
        gc.jit(lambda v: v.astype("float16"))(np.ones(2))


def test_integer_constants_are_exact_beyond_two_to_the_53():
    """Constants went through a float: 2**53 + 1 lost its 1, 2**63 - 1 wrapped."""
    x = np.array([1, 0, -1])
    got = gc.jit(lambda a: (a + (2 ** 53 + 1), a * (2 ** 63 - 1), a + 123456789012345678))(x)
    want = (x + (2 ** 53 + 1), x * (2 ** 63 - 1), x + 123456789012345678)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
    with pytest.raises(gc.ShapeError, match="does not fit in int64"):
        gc.jit(lambda a: a + 2 ** 63)(x)
