"""``gc.jit``, ``gc.grad`` and ``gc.value_and_grad`` for plain Python functions.

Arguments may be Python numbers (traced as float64 scalars) or NumPy arrays (their own
shape and dtype). Each new signature is traced and compiled once, then cached. NumPy
arrays the function closes over (or reads as globals) are captured when it is traced, as
``jax.jit`` bakes in constants: they become inputs of role ``const`` (named as in the
function, visible in ``lower()``), passed on every call from copies made at tracing time,
in the dtype of the arguments; no gradient flows to them.

>>> import graphc as gc
>>> def f(x1, x2):
...     return gc.log(x1) + x1 * x2 - gc.sin(x2)
>>> round(float(gc.jit(f)(2.0, 5.0)), 3)
11.652
>>> [round(float(g), 3) for g in gc.grad(f, argnums=(0, 1))(2.0, 5.0)]
[5.5, 1.716]
"""
from __future__ import annotations

import functools

import numpy as np

from graphc.ir import DTypeError, OpError, ShapeError, format_graph
from graphc.ir.types import dtype_name
from graphc.passes import add_gradients

from .pipeline import optimize
from .tracing import TensorOps, trace_function


def _signature(args):
    sig = []
    for i, a in enumerate(args):
        if isinstance(a, (bool, int, float, np.floating)) and not isinstance(a, np.ndarray):
            sig.append(((), "float64"))
            continue
        if isinstance(a, TensorOps):
            raise OpError(f"argument {i} is a traced Tensor: gc.jit, gc.grad and "
                          f"gc.value_and_grad cannot be called inside another traced function "
                          f"or model (no nesting, no higher-order gradients); call them on "
                          f"NumPy arrays")
        try:
            arr = np.asarray(a)
        except Exception:
            hint = " (pass x.detach().cpu().numpy())" if type(a).__module__.startswith(
                "torch") else ""
            raise DTypeError(f"argument {i}: cannot use a {type(a).__module__}."
                             f"{type(a).__name__}{hint}") from None
        if arr.dtype.kind in "iub":
            # an integer array, 0-d included (np.int64(2), an index), stays int64; Python
            # ints are numbers like floats (the scalar branch above)
            dt = "int64" if arr.dtype.kind in "iu" else "float64"
        elif arr.dtype.kind == "f":
            dt = dtype_name(arr.dtype) if arr.dtype in (np.float32, np.float64) else "float64"
        else:
            raise DTypeError(f"argument {i}: unsupported dtype {arr.dtype}")
        sig.append((tuple(arr.shape), dt))
    return tuple(sig)


def _scalarize(out):
    return out[()] if out.ndim == 0 else out


class _Traced:
    def __init__(self, fn, fuse=True):
        self.fn = fn
        self.fuse = fuse
        # signature -> (executable, captured arrays passed after the arguments)
        self._cache = {}
        functools.update_wrapper(self, fn)

    def build(self, sig, captures):
        raise NotImplementedError

    def _entry(self, args):
        """(executable, captured arrays) for arguments like ``args``, built once."""
        sig = _signature(args)
        entry = self._cache.get(sig)
        if entry is None:
            captures = []
            graph = self.build(sig, captures)
            graph, _ = optimize(graph, fuse=self.fuse)
            from graphc.codegen import compile_graph   # Numba loads on first compile
            entry = self._cache[sig] = (compile_graph(graph), captures)
        return entry

    def compiled(self, args):
        """The executable for arguments like ``args``; its inputs are the arguments, then
        the captured arrays (``captured(args)``)."""
        return self._entry(args)[0]

    def captured(self, args) -> list:
        """The arrays captured when tracing for arguments like ``args``, in input order.

        >>> import numpy as np, graphc as gc
        >>> w = np.array([1.0, 2.0])
        >>> f = gc.jit(lambda x: x * w)
        >>> f(np.ones(2)), f.captured((np.ones(2),))
        (array([1., 2.]), [array([1., 2.])])
        """
        return self._entry(args)[1]

    def lower(self, *args) -> str:
        """The optimized IR text for these arguments (like ``jax.make_jaxpr``)."""
        return format_graph(self.compiled(args).graph)

    def source(self, *args) -> str:
        return self.compiled(args).source

    def _run(self, args):
        """(executable, outputs for ``args``, rank-0 ones as scalars)."""
        exe, consts = self._entry(args)
        # captured arrays are ours, made with the graph's dtype and shape: unchecked
        trusted = range(len(args), len(args) + len(consts)) if consts else ()
        return exe, [_scalarize(o) for o in exe.run(list(args) + consts, trusted=trusted)]


class jit(_Traced):
    """Compile ``fn`` (traced on first call per argument signature)."""

    def build(self, sig, captures):
        return trace_function(self.fn, sig, dtype=_float_dtype(sig), captures=captures)

    def __call__(self, *args):
        exe, outs = self._run(args)
        return tuple(outs) if exe.graph.meta.get("multi_output") else outs[0]


def _float_dtype(sig):
    dts = {d for _, d in sig if d != "int64"}
    return "float32" if dts == {"float32"} else "float64"


def _argnums(argnums, nargs):
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for a in nums:
        if not 0 <= a < nargs:
            raise ShapeError(f"argnums {argnums} out of range for {nargs} argument(s)")
    return nums


class value_and_grad(_Traced):
    """``fn``'s value and its gradient with respect to ``argnums`` (scalar output)."""

    def __init__(self, fn, argnums=0, fuse=True):
        super().__init__(fn, fuse)
        self.argnums = argnums

    def build(self, sig, captures):
        graph = trace_function(self.fn, sig, dtype=_float_dtype(sig), captures=captures)
        if len(graph.outputs) != 1 or graph.type_of(graph.outputs[0]).rank != 0:
            shapes = [graph.type_of(o).shape for o in graph.outputs]
            raise ShapeError(f"grad needs a function with one scalar output, got shapes {shapes}")
        nums = _argnums(self.argnums, len(sig))
        for a in nums:
            if sig[a][1] == "int64":
                raise DTypeError(f"argument {a} is an integer array and has no gradient")
        loss = graph.outputs[0]
        grads = add_gradients(graph, loss, [graph.inputs[a] for a in nums])
        graph.set_outputs([loss] + grads)
        graph.name = f"grad_{graph.name}"
        return graph

    def __call__(self, *args):
        _, outs = self._run(args)
        value, grads = outs[0], outs[1:]
        return value, (tuple(grads) if not isinstance(self.argnums, int) else grads[0])


class grad(value_and_grad):
    """The gradient of scalar-valued ``fn`` with respect to ``argnums`` (like ``jax.grad``)."""

    def __call__(self, *args):
        return super().__call__(*args)[1]
