"""Registry-driven op tests: every op, every sample, compiled vs interpreter vs FD.

Each op's samples are compiled once into one graph that outputs the op's value and the
gradient of a random projection sum(out * r) with respect to every float operand, so a
new op without samples, a wrong kernel or a wrong VJP fails here.
"""
import numpy as np
import pytest

from graphc.codegen import compile_graph
from graphc.ir import Graph, all_ops, interpret
from graphc.passes import add_gradients, dce
from oracles import assert_close, central_difference, draw

OPS = sorted(n for n in all_ops() if n != "input")


def test_every_op_is_testable():
    for name in OPS:
        op = all_ops()[name]
        assert op.samples, f"op {name!r} declares no samples: it cannot be tested"
        assert op.impl is not None, f"op {name!r} has no NumPy reference implementation"
        assert op.scalar is not None or op.kernel is not None, f"op {name!r} has no code template"
        if op.differentiable:
            assert op.vjp is not None, f"differentiable op {name!r} has no VJP"


def build_op_graph(name, rng):
    """One graph holding every sample of op ``name`` plus its gradient checks."""
    from oracles import sample_graph  # noqa: F401  (documents where shapes come from)
    from graphc.ir import BATCH, TensorType
    op = all_ops()[name]
    g = Graph(f"op_{name}")
    values, checks, outputs = {}, [], []
    for s_idx, sample in enumerate(op.samples):
        args = []
        for i, shape in enumerate(sample.shapes):
            domain = sample.domain(i)
            dtype = "int64" if domain.startswith("labels:") else "float64"
            batch_axis = sample.batch_dims[i] if i < len(sample.batch_dims) else None
            sym = tuple(BATCH if a == batch_axis else d for a, d in enumerate(shape))
            nm = f"s{s_idx}_a{i}"
            args.append(g.add_input(TensorType(sym, dtype), nm))
            values[nm] = draw(rng, shape, domain, dtype)
        out = g.add(name, args, sample.attrs)
        outputs.append(out)
        entry = {"sample": s_idx, "out": out, "args": args, "grads": []}
        if op.differentiable:
            t = g.type_of(out)
            proj = g.add_input(t, f"s{s_idx}_r")
            batch = next((values[f"s{s_idx}_a{i}"].shape[axis] for i, axis in
                          enumerate(sample.batch_dims) if axis is not None), None)
            shape = tuple(batch if d == BATCH else d for d in t.shape)
            values[f"s{s_idx}_r"] = rng.normal(size=shape)
            loss = g.add("reduce_sum", [g.add("mul", [out, proj])], {"axes": None})
            float_args = [a for a in args if g.type_of(a).dtype != "int64"]
            grads = add_gradients(g, loss, float_args)
            entry["loss"] = loss
            entry["grads"] = list(zip(float_args, grads))
            outputs += [loss] + grads
        checks.append(entry)
    g.set_outputs(list(dict.fromkeys(outputs)))
    dce(g)
    return g, values, checks


@pytest.mark.parametrize("name", OPS)
def test_op_matches_interpreter_and_finite_differences(name):
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    g, values, checks = build_op_graph(name, rng)
    exe = compile_graph(g)
    compiled = dict(zip(g.outputs, exe.run(values)))
    reference = dict(zip(g.outputs, interpret(g, values)))
    for value in g.outputs:
        assert_close(compiled[value], reference[value], 1e-9, what=f"{name} %{value}")
    for entry in checks:
        for arg, grad in entry["grads"]:
            arg_name = g.nx.nodes[arg]["name"]
            idx = g.outputs.index(entry["loss"])

            def f(vals, idx=idx):
                return float(interpret(g, vals)[idx])

            fd = central_difference(f, values, arg_name)
            assert_close(compiled[grad], fd, 1e-5,
                         what=f"{name} sample {entry['sample']} d/d{arg_name}")
