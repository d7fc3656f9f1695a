"""Bad input gets one clear line naming the node/layer and the shapes, never a traceback
from Numba or a KeyError."""
import numpy as np
import pytest

import graphc as gc
from graphc.ir import Graph, GraphcError, TensorType


def one_line(exc):
    text = str(exc.value)
    assert "\n" not in text and text, text
    assert isinstance(exc.value, GraphcError)
    return text


class Mismatched(gc.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = gc.nn.Linear(8, 4)
        self.fc2 = gc.nn.Linear(5, 3)

    def forward(self, x):
        return self.fc2(self.fc1(x))


class Good(gc.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = gc.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc1(x)


@pytest.fixture(scope="module")
def good():
    gc.manual_seed(0)
    return gc.compile(Good(), input_shape=(None, 8), loss="cross_entropy",
                      optimizer=gc.optim.SGD(lr=0.1), dtype="float64")


def test_layer_shape_mismatch_names_layer_and_shapes():
    with pytest.raises(gc.ShapeError) as exc:
        gc.compile(Mismatched(), input_shape=(None, 8))
    text = one_line(exc)
    assert "fc2" in text and "(N, 4)" in text and "5" in text


def test_matmul_mismatch_in_traced_function():
    with pytest.raises(gc.ShapeError) as exc:
        gc.jit(lambda a, b: a @ b)(np.ones((2, 3)), np.ones((4, 5)))
    text = one_line(exc)
    assert "matmul" in text and "(2, 3)" in text and "(4, 5)" in text


def test_wrong_input_shape_at_call_time(good):
    with pytest.raises(gc.InputError) as exc:
        good(np.ones((4, 7)))
    text = one_line(exc)
    assert "'x'" in text and "(N, 8)" in text and "(4, 7)" in text


def test_wrong_input_dtype_at_call_time(good):
    with pytest.raises(gc.InputError) as exc:
        good(np.array([["a"] * 8]))
    assert "dtype" in one_line(exc)
    with pytest.raises(gc.InputError) as exc:
        good.train_step(np.ones((2, 8)), np.array([0.5, 1.0]))
    assert "'y'" in one_line(exc) and "integer" in str(exc.value)


def test_labels_out_of_range(good):
    with pytest.raises(gc.InputError) as exc:
        good.train_step(np.ones((3, 8)), np.array([0, 3, 1]))
    text = one_line(exc)
    assert "label 3" in text and "3 classes" in text
    with pytest.raises(gc.InputError):
        good.gradients(np.ones((2, 8)), np.array([-1, 0]))


@pytest.mark.parametrize("loss", [
    lambda x, y: gc.nn.functional.cross_entropy(x, y),
    lambda x, y: gc.nn.functional.nll_loss(x, y),
    lambda x, y: gc.nn.functional.cross_entropy(x, y.reshape(3)),   # through a reshape
])
def test_labels_out_of_range_in_traced_functions(loss):
    """A label past the classes (or negative) is an error in gc.jit and gc.grad too: the
    compiled kernels read x[i, y[i]] unchecked, so it used to return a number."""
    x = np.linspace(-1.0, 1.0, 12).reshape(3, 4)
    assert np.isfinite(gc.jit(loss)(x, np.array([0, 1, 3])))
    for bad, shown in (([0, 4, 1], "label 4"), ([0, -1, 1], "label -1")):
        for fn in (gc.jit(loss), gc.grad(loss)):
            with pytest.raises(gc.InputError) as exc:
                fn(x, np.array(bad))
            text = one_line(exc)
            assert "'y'" in text and shown in text and "4 classes" in text \
                and "valid 0..3" in text


def test_batch_sizes_must_agree(good):
    with pytest.raises(gc.InputError) as exc:
        good.train_step(np.ones((3, 8)), np.array([0, 1]))
    assert "batch size" in one_line(exc)


def test_unknown_op_and_loss_names():
    g = Graph()
    x = g.add_input(TensorType((2,), "float32"), "x")
    with pytest.raises(gc.OpError) as exc:
        g.add("expp", [x])
    assert "expp" in one_line(exc) and "exp" in str(exc.value)
    with pytest.raises(gc.OpError) as exc:
        gc.compile(Good(), input_shape=(None, 8), loss="hinge")
    assert "hinge" in one_line(exc) and "cross_entropy" in str(exc.value)


def test_unknown_attribute_is_an_error():
    g = Graph()
    x = g.add_input(TensorType((2, 3), "float32"), "x")
    with pytest.raises(gc.OpError) as exc:
        g.add("reduce_sum", [x], {"axis": 1})
    assert "axis" in one_line(exc)


def test_bad_view_is_a_shape_error():
    with pytest.raises(gc.ShapeError) as exc:
        gc.jit(lambda a: a.view(-1, 5))(np.ones((2, 3)))
    assert "(2, 3)" in one_line(exc)
