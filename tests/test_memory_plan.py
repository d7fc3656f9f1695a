"""Memory planned by liveness (codegen/schedule.py: share_buffers): values whose lifetimes
are apart share one array; no kernel writes an array it reads; sharing changes no result."""
import dataclasses

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.schedule import _readers_through_views, view_bases


def _convnet():
    return gc.nn.Sequential(
        gc.nn.Conv2d(1, 4, 3, padding=1), gc.nn.ReLU(), gc.nn.MaxPool2d(2),
        gc.nn.Conv2d(4, 8, 3, padding=1), gc.nn.BatchNorm2d(8), gc.nn.ReLU(),
        gc.nn.Conv2d(8, 8, 3, padding=1), gc.nn.ReLU(),
        gc.nn.Flatten(), gc.nn.Linear(8 * 4 * 4, 10))


def _compiled():
    gc.manual_seed(0)
    return gc.compile(_convnet(), input_shape=(None, 1, 8, 8), loss="cross_entropy",
                      optimizer=gc.optim.SGD(lr=0.05, momentum=0.9))


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((6, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 6)


def _lifetimes(exe):
    g, s = exe.graph, exe.schedule
    position = {n: k.index for k in s.kernels for n in k.nodes}
    readers = _readers_through_views(g, s.views, position)
    end = len(s.kernels)
    keep = view_bases(g, set(g.outputs) | set(s.copy_back), s.views)
    return {v: (position[v], end if v in keep else max(readers.get(v, ()), default=position[v]))
            for v in s.buffers}


def _array_of(exe, batch=6):
    """{buffer value: id of the array the runtime passes for it}."""
    bufs = exe.buffers_for(batch)[:len(exe.schedule.buffers)]
    return dict(zip(exe.schedule.buffers, map(id, bufs)))


def test_buffers_with_lifetimes_apart_share_an_array():
    m = _compiled()
    x, y = _data()
    m.train_step(x, y)
    exe = m._exe("train")
    array_of = _array_of(exe)
    assert len(set(array_of.values())) < len(array_of)   # some arrays hold several values
    life = _lifetimes(exe)
    by_array: dict = {}
    for v, a in array_of.items():
        by_array.setdefault(a, []).append(v)
    for values in by_array.values():
        spans = sorted(life[v] for v in values)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end < start, spans         # the next value is made after the last read
    for k in exe.schedule.kernels:
        reads = {array_of[v] for v in k.inputs if v in array_of}
        writes = {array_of[v] for v in k.outputs if v in array_of}
        assert not reads & writes, k.name


def test_sharing_changes_no_result():
    x, y = _data()
    shared, own = _compiled(), _compiled()
    exe = own._exe("train")
    assert exe.schedule.shares
    # every value its own array (a copy: both models' executables hold one schedule)
    exe.schedule = dataclasses.replace(exe.schedule, shares={})
    exe._buffers.clear()
    for _ in range(3):
        a, b = shared.train_step(x, y), own.train_step(x, y)
        assert a == b
    for name, p in shared.parameters().items():
        np.testing.assert_array_equal(p, own.parameters()[name])
    np.testing.assert_array_equal(shared(x), own(x))


@pytest.mark.parametrize("kind", ["train", "forward"])
def test_an_output_array_is_never_reused_after_it(kind):
    m = _compiled()
    x, y = _data()
    m.train_step(x, y)
    m(x)
    exe = m._exe(kind)
    array_of = _array_of(exe)
    life = _lifetimes(exe)
    outs = [o for o in exe.graph.outputs if o in array_of]
    assert outs
    for out in outs:
        for v, a in array_of.items():
            if a == array_of[out] and v != out:
                assert life[v][0] < life[out][0], (v, out)


@pytest.mark.parametrize("fuse", [True, False])
def test_an_output_that_is_a_view_keeps_the_array_it_views(fuse):
    """A graph output that is a reshape is copied out of its source's array after the
    run, so no later kernel may take that array: here a later value of the source's
    type (2, 1, 4) would have."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 3, 4))

    def f(a, b):
        return ((gc.exp(a).sum(1, keepdim=True) * 2.0).reshape(2, 4),
                gc.exp(b).mean(1, keepdim=True) * 3.0)
    first, second = gc.jit(f, fuse=fuse)(x, y)
    np.testing.assert_allclose(first, (np.exp(x).sum(1, keepdims=True) * 2.0).reshape(2, 4))
    np.testing.assert_allclose(second, np.exp(y).mean(1, keepdims=True) * 3.0)
    exe = gc.jit(f, fuse=fuse).compiled((x, y))
    (view,) = [o for o in exe.graph.outputs if o in exe.schedule.views]
    source = exe.graph.args_of(view)[0]
    assert source not in exe.schedule.shares.values()
