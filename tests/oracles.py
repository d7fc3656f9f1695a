"""Test oracles: random operands for an op's samples, finite differences, comparisons."""
from __future__ import annotations

import numpy as np

from graphc.ir import BATCH, Graph, TensorType, interpret
from graphc.ir.registry import label_range


def draw(rng, shape, domain, dtype="float64"):
    if domain.startswith("labels:"):
        return rng.integers(*label_range(domain), size=shape).astype(np.int64)
    if domain == "positive":
        x = rng.uniform(0.5, 2.0, size=shape)
    elif domain == "unit":
        x = rng.uniform(0.1, 0.9, size=shape)
    elif domain == "nonzero":
        x = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 2.0, size=shape)
    else:
        x = rng.normal(size=shape)
    return np.asarray(x, dtype=dtype)


def sample_graph(opdef, sample, rng, prefix=""):
    """Add inputs and one ``opdef`` node for ``sample``; returns (graph, node, values)."""
    g = Graph(f"sample_{opdef.name}")
    args, values = [], {}
    for i, shape in enumerate(sample.shapes):
        domain = sample.domain(i)
        dtype = "int64" if domain.startswith("labels:") else "float64"
        batch_axis = sample.batch_dims[i] if i < len(sample.batch_dims) else None
        sym = tuple(BATCH if a == batch_axis else d for a, d in enumerate(shape))
        name = f"{prefix}a{i}"
        args.append(g.add_input(TensorType(sym, dtype), name))
        values[name] = draw(rng, shape, domain, dtype)
    node = g.add(opdef.name, args, sample.attrs)
    return g, node, values


def central_difference(f, values: dict, name: str, eps=1e-6):
    """d f / d values[name] by central differences (f returns a float)."""
    base = values[name]
    grad = np.zeros_like(base)
    flat = grad.reshape(-1)
    for i in range(base.size):
        plus, minus = dict(values), dict(values)
        p, m = base.copy(), base.copy()
        p.reshape(-1)[i] += eps
        m.reshape(-1)[i] -= eps
        plus[name], minus[name] = p, m
        flat[i] = (f(plus) - f(minus)) / (2 * eps)
    return grad


def assert_close(actual, expected, rtol, atol=0.0, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = np.maximum(np.abs(expected), 1.0) if atol == 0.0 else np.abs(expected)
    err = np.abs(actual - expected)
    bad = err > rtol * scale + atol
    assert not bad.any(), (f"{what}: max error {err.max():.3g} "
                           f"(rtol {rtol}, atol {atol}) at {np.argwhere(bad)[:3].tolist()}")


def interpret_scalar(graph, output):
    """A function of the input dict returning ``output`` of ``graph`` as a float."""
    idx = graph.outputs.index(output)
    return lambda vals: float(interpret(graph, vals)[idx])
