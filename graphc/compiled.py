"""``gc.compile``: a Module -> forward, gradient and training-step graphs -> native code.

>>> import numpy as np, graphc as gc
>>> net = gc.nn.Sequential(gc.nn.Linear(4, 8), gc.nn.ReLU(), gc.nn.Linear(8, 3))
>>> m = gc.compile(net, input_shape=(None, 4), loss="cross_entropy",
...                optimizer=gc.optim.SGD(lr=0.1), dtype="float64")
>>> x, y = np.ones((5, 4)), np.array([0, 1, 2, 0, 1])
>>> m(x).shape
(5, 3)
>>> loss = m.train_step(x, y)
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from collections import OrderedDict

import numpy as np

from graphc.ir import (BATCH, CompileError, Graph, InputError, OpError, ShapeError, TensorType,
                       format_graph)
from graphc.ir.types import dtype_name, format_shape
from graphc.passes import add_gradients, apply_optimizer, transform_gradients

from . import functional as F
from .finite import run_checked
from .nn.module import Module
from .optim import Optimizer
from .pipeline import optimize
from .tracing import Tensor, as_tensor, tracing

GRAPH_KINDS = ("forward", "loss", "gradients", "train")
# traced-graph fingerprint -> (optimized graph, pass manager): compiling the same model
# again in one process skips the passes, and (through the shared graph object) the
# code generation and module import in ``codegen.runtime``
_OPTIMIZED: OrderedDict = OrderedDict()
_OPTIMIZED_MAX = 64
_OPTIMIZED_LOCK = threading.Lock()


def _canonical(value):
    """A repr-able stand-in for an attribute value: arrays by dtype, shape and a hash of
    their bytes (NumPy's repr elides long arrays, so two different constants could
    print alike)."""
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape,
                hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest())
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_canonical(v) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple(sorted((repr(k), _canonical(v)) for k, v in value.items())))
    return (type(value).__name__, repr(value))


def graph_fingerprint(g, **options) -> str:
    """A hash of everything in traced graph ``g`` that the passes and code generator
    read (nodes with ops, attributes, types, operands, names; inputs, outputs, aliases,
    meta) plus ``options``. Equal fingerprints give the same optimized graph.

    >>> from graphc.ir import Graph, TensorType
    >>> def g(n):
    ...     g = Graph("f"); x = g.add_input(TensorType(("N", n), "float32"), "x")
    ...     g.set_outputs([g.add("exp", [x])]); return g
    >>> graph_fingerprint(g(3)) == graph_fingerprint(g(3)) != graph_fingerprint(g(4))
    True
    >>> graph_fingerprint(g(3), fuse=True) == graph_fingerprint(g(3), fuse=False)
    False
    """
    nodes = tuple((nid, d["op"], str(d["type"]), tuple(d["args"]), d.get("name"),
                   d.get("group"), _canonical(d["attrs"]))
                  for nid, d in sorted(g.nx.nodes(data=True)))
    edges = tuple(sorted(g.nx.edges(keys=True)))
    text = repr((g.name, nodes, edges, tuple(g.inputs), tuple(g.outputs),
                 tuple(g.output_names), tuple(sorted(g.aliases.items())),
                 _canonical(g.meta), tuple(sorted(options.items()))))
    return hashlib.sha256(text.encode()).hexdigest()
_LOSS_ONLY = frozenset({0})   # outputs to copy out under the runtime's lock: the loss


def _input_shape(shape) -> tuple:
    if shape is None:
        raise ShapeError("gc.compile needs input_shape, e.g. (None, 64) with None the batch")
    shape = tuple(shape)
    if not shape:
        raise ShapeError("input_shape must have at least the batch dimension")
    out = []
    for i, d in enumerate(shape):
        if d is None or d == BATCH or d == -1:
            out.append(BATCH)
        elif isinstance(d, (int, np.integer)) and d > 0:
            out.append(int(d))
        else:
            raise ShapeError(f"input_shape {shape}: dimension {i} is {d!r}; use positive ints "
                             f"and None for the batch")
    return tuple(out)


class CompiledModel:
    """A model compiled to native code. See :func:`compile`."""

    def __init__(self, module, input_shape, loss=None, optimizer=None, target="cpu",
                 fuse=True, dtype="float32", check_finite=False, l2=0.0,
                 clip_grad_norm=None, clip_grad_value=None, input_dtype=None):
        if not isinstance(module, Module):
            raise CompileError(f"gc.compile expects a gc.nn.Module, got {type(module).__name__}")
        if target not in ("cpu", "cuda"):
            raise CompileError(f"unknown target {target!r}; use 'cpu' or 'cuda'")
        self._device = None     # the DeviceStore of parameters resident on the GPU
        if target == "cuda":
            from graphc.codegen.cuda_runtime import DeviceStore, check_cuda
            self._device = DeviceStore(check_cuda())
        if optimizer is not None and not isinstance(optimizer, Optimizer):
            raise OpError(f"optimizer must be a gc.optim optimizer, got {optimizer!r}")
        self.module = module
        self.input_shape = _input_shape(input_shape)
        self.dtype = dtype_name(dtype)
        if self.dtype == "int64":
            raise ShapeError("gc.compile dtype must be float32 or float64")
        # the model's input: its float dtype, or int64 token ids for a model that starts
        # with an Embedding
        self.input_dtype = self.dtype if input_dtype is None else dtype_name(input_dtype)
        if self.input_dtype not in (self.dtype, "int64"):
            raise ShapeError(f"gc.compile input_dtype must be {self.dtype!r} (the model's "
                             f"dtype) or 'int64', got {input_dtype!r}")
        self.loss_name = loss
        self.loss_fn = F.get_loss(loss) if loss is not None else None
        self._optimizer = optimizer
        if optimizer is not None:
            object.__setattr__(optimizer, "_compiled", True)
        self.target = target
        self.fuse = fuse
        self.check_finite = check_finite
        # L2 and clipping act on the gradients in the graph (gradients and train graphs)
        self.grad_transform = {"l2": float(l2), "clip_grad_norm": clip_grad_norm,
                               "clip_grad_value": clip_grad_value}
        for name, m in module.named_modules():
            object.__setattr__(m, "_name", name or type(m).__name__)
        self._train_modes = [(m, m.training) for _, m in module.named_modules()]
        self._params = {n: p.data.astype(self.dtype) for n, p in module.named_parameters()}
        self._buffers = {n: b.data.astype(self.dtype) for n, b in module.named_buffers()}
        # the other names of shared parameters and buffers (a PyTorch state_dict lists a
        # tied weight under each of them) -> the name the compiled model holds it under
        first = {id(v): n for n, v in (*module.named_parameters(), *module.named_buffers())}
        self._aliases = {n: first[id(v)] for n, v in
                         (*module.named_parameters(remove_duplicate=False),
                          *module.named_buffers(remove_duplicate=False)) if first[id(v)] != n}
        self._input_major = frozenset()   # see _choose_input_major
        self._state: dict = {}
        self._graphs: dict = {}
        self._managers: dict = {}
        self._exes: dict = {}
        self._arg_plans: dict = {}
        self.timings: dict = {}
        self._ran: set = set()
        self._build_lock = threading.RLock()
        self._lr = np.array(optimizer.lr if optimizer else 0.0, dtype=self.dtype)
        if target == "cpu":
            self._input_major = self._choose_input_major()
            for name in self._input_major:   # (out, in) views of (in, out) arrays
                self._params[name] = np.ascontiguousarray(self._params[name].T).T
        # trace everything now so shape errors surface at compile time
        self._graph("forward")
        if self.loss_fn is not None:
            self._graph("gradients")
            if optimizer is not None:
                self._graph("train")

    # ------------------------------------------------------------ tracing
    def _trace(self, kind):
        t0 = time.perf_counter()
        g = Graph(kind)
        g.meta["dtype"] = self.dtype
        # the forward and the loss of m(x) run in eval mode; the training graphs in the
        # modes the modules had when compiled (train by default; a module set to eval,
        # e.g. batch norm frozen for fine-tuning, stays so, as in PyTorch)
        training = kind in ("gradients", "train")
        x_id = g.add_input(TensorType(self.input_shape, self.input_dtype), "x", "data")
        with tracing(g, training=training) as ctx:
            params = []
            for name, p in self.module.named_parameters():
                held = name in self._input_major   # the graph holds W^T; the module sees W
                shape = p.data.shape[::-1] if held else p.data.shape
                pid = g.add_input(TensorType(shape, self.dtype), name, "param")
                ctx.bound[id(p)] = g.add("transpose", [pid], {"perm": (1, 0)}) if held else pid
                params.append((name, pid))
            if self._input_major:
                g.meta["input_major"] = tuple(sorted(self._input_major))
            buffers = []
            for name, b in self.module.named_buffers():
                bid = g.add_input(TensorType(b.data.shape, self.dtype), name, "state")
                ctx.bound[id(b)] = bid
                buffers.append((name, id(b), bid))
            modes = [(m, m.training) for _, m in self.module.named_modules()]
            for m, compiled_mode in self._train_modes:
                object.__setattr__(m, "training", training and compiled_mode)
            try:
                out = as_tensor(self.module(Tensor(g, x_id)))
            finally:
                for m, mode in modes:
                    object.__setattr__(m, "training", mode)
            if kind == "forward":
                g.set_outputs([out.id], ["output"])
            else:
                y_id = self._label_input(g, out)
                loss = as_tensor(self.loss_fn(out, Tensor(g, y_id)))
                if loss.type.rank != 0:
                    raise ShapeError(f"loss {self.loss_name!r} must give a scalar, got "
                                     f"{format_shape(loss.shape)}")
                outputs, names = [loss.id], ["loss"]
                if kind in ("gradients", "train"):
                    trainable = self._trainable(params)
                    grads = add_gradients(g, loss.id, [pid for _, pid in trainable],
                                          unreached=None)
                    # PyTorch leaves the grad of a parameter no gradient reaches None,
                    # and its optimizers skip it: no weight decay, no state, no change
                    learned = [p for p, gid in zip(trainable, grads) if gid is not None]
                    grads = [gid for gid in grads if gid is not None]
                    grads = transform_gradients(g, [(n, pid, gid) for (n, pid), gid in
                                                    zip(learned, grads)], **self.grad_transform)
                    if kind == "gradients":
                        outputs += grads
                        names += [f"grad.{n}" for n, _ in learned]
                    else:
                        new, new_names, targets = apply_optimizer(
                            g, self.optimizer.rule, self.optimizer.hyper(),
                            [(n, pid, gid) for (n, pid), gid in zip(learned, grads)])
                        aliases = {}
                        for value, name, target in zip(new, new_names, targets):
                            aliases[len(outputs)] = g.inputs.index(target)
                            outputs.append(value)
                            names.append(name)
                        for name, key, bid in buffers:
                            if key in ctx.buffer_updates:
                                aliases[len(outputs)] = g.inputs.index(bid)
                                outputs.append(ctx.buffer_updates[key])
                                names.append(name)
                        g.aliases = aliases
                g.set_outputs(outputs, names)
        self.timings[f"trace.{kind}"] = time.perf_counter() - t0
        return g

    @property
    def min_train_batch(self) -> int:
        """The smallest batch ``train_step`` takes: 2 when batch norm normalises over the
        batch alone in training (one value per channel is refused, as in PyTorch), else
        0."""
        return self._graph("train").meta.get("min_batch", 0)

    @property
    def output_shape(self) -> tuple:
        """Shape of what calling the model returns, the batch axis as ``"N"``.

        >>> import graphc as gc
        >>> gc.compile(gc.nn.Linear(3, 2), input_shape=(None, 3)).output_shape
        ('N', 2)
        """
        g = self._graph("forward")
        return tuple(g.type_of(g.outputs[0]).shape)

    @property
    def optimizer(self):
        """The optimizer compiled into ``train_step``; set its ``lr`` (or use
        :meth:`set_lr` or a schedule) to change the learning rate."""
        return self._optimizer

    @optimizer.setter
    def optimizer(self, value):
        raise OpError("a compiled model's optimizer is part of its training step: compile "
                      "again to use another (its lr can change: m.optimizer.lr = ...)")

    def _trainable(self, params):
        """The ``(name, input)`` of the parameters whose ``requires_grad`` was set when
        compiled (PyTorch's way of freezing one)."""
        frozen = {n for n, p in self.module.named_parameters() if not p.requires_grad}
        return [(n, pid) for n, pid in params if n not in frozen]

    def _choose_input_major(self) -> frozenset:
        """Names of the weights the graphs hold input-major, ``(in, out)``, instead of
        PyTorch's ``(out, in)``.

        A Linear layer computes ``A @ W^T``: with W stored ``(out, in)`` both operands
        have the inner dimension contiguous, a product OpenBLAS ran 14% slower here than
        the same one with W stored ``(in, out)`` (784 x 256 weight, batch 128: the MLP's
        training step is 4.6% faster so, 1% at batch 1024). Stored so, W turns the
        backward's ``dA = dY @ W`` into that slow form instead, so only weights whose
        every use is ``A @ W^T`` with ``A`` independent of the parameters (no dA is ever
        computed: the first layer's input) are chosen. Outside the graphs the layout
        stays PyTorch's: ``parameters()``, ``gradients()``, ``load_parameters()`` and
        ``optimizer_state()`` see ``(out, in)``; ``ir()`` shows ``meta input_major``.
        CPU target only (a BLAS measurement): the CUDA kernels keep PyTorch's layout.
        """
        g = self._trace("forward")
        params = [nid for nid in g.inputs if g.input_role(nid) == "param"]
        order = g.topo_order()
        depends = set(params)            # values computed from some parameter
        for nid in order:
            if any(a in depends for a in g.args_of(nid)):
                depends.add(nid)
        live = set(g.outputs)
        for nid in reversed(order):
            if nid in live:
                live.update(g.args_of(nid))

        def plain_product(use, pid):
            if g.op_of(use) != "matmul":
                return False
            a, b = g.args_of(use)
            return b == pid and a not in depends and g.node(use).attrs == {"ta": False,
                                                                             "tb": True}
        chosen = set()
        for pid in params:
            uses = [u for u in g.users(pid) if u in live]
            if g.type_of(pid).rank == 2 and uses and all(plain_product(u, pid) for u in uses):
                chosen.add(g.nx.nodes[pid]["name"])
        return frozenset(chosen)

    def _held_transposed(self, name) -> bool:
        """Whether the graphs hold array ``name`` (a parameter, or optimizer state named
        ``{parameter}.{slot}``) transposed."""
        return name in self._input_major or any(name.startswith(p + ".")
                                                for p in self._input_major)

    def _graph_array(self, store, name):
        """``store[name]`` as the graphs take it: an input-major array is kept as the
        ``(out, in)`` view of a C-contiguous ``(in, out)`` array, which is returned."""
        a = store[name]
        if not self._held_transposed(name):
            return a
        if not a.T.flags.c_contiguous:   # e.g. state a checkpoint set before any step
            store[name] = a = np.ascontiguousarray(a.T).T
        return a.T

    def _graph_parameters(self) -> dict:
        """``{name: array}``: copies of the parameters in the layout the graphs take
        (what ``interpret(m._graph(kind), ...)`` needs; see ``_choose_input_major``)."""
        self._pull()
        return {n: self._graph_array(self._params, n).copy() for n in self._params}

    def _public(self, name, array):
        """A graph's value of parameter (or state) ``name`` in PyTorch's layout."""
        return np.ascontiguousarray(array.T) if self._held_transposed(name) else array

    def _label_input(self, g, out):
        if self.loss_name in F.CLASS_LABEL_LOSSES:
            if out.ndim != 2:
                raise ShapeError(f"loss {self.loss_name!r} needs model output (N, classes), "
                                 f"got {format_shape(out.shape)}")
            return g.add_input(TensorType((out.shape[0],), "int64"), "y", "label")
        return g.add_input(TensorType(out.shape, self.dtype), "y", "label")

    def _graph(self, kind, raw=False):
        if kind not in GRAPH_KINDS:
            raise OpError(f"unknown graph {kind!r}; one of {GRAPH_KINDS}")
        if kind != "forward" and self.loss_fn is None:
            raise CompileError(f"the {kind!r} graph needs a loss: gc.compile(..., loss=...)")
        if kind == "train" and self.optimizer is None:
            raise CompileError("train_step needs an optimizer: gc.compile(..., optimizer=...)")
        if raw:
            return self._trace(kind)
        if kind not in self._graphs:
            with self._build_lock:   # tracing flips the module's train/eval mode
                if kind not in self._graphs:
                    g = self._trace(kind)
                    t0 = time.perf_counter()
                    g, pm = self._optimize(g)
                    self.timings[f"passes.{kind}"] = time.perf_counter() - t0
                    self._graphs[kind], self._managers[kind] = g, pm
        return self._graphs[kind]

    def _optimize(self, g):
        """The pass pipeline on traced graph ``g``, or the optimized graph of an earlier
        compile of an identical traced graph in this process (shared, read-only: the
        executables built on it own their buffers). CUDA graphs are not shared."""
        if self.target != "cpu":
            return optimize(g, fuse=self.fuse)
        key = graph_fingerprint(g, fuse=self.fuse, verify=os.environ.get("GRAPHC_VERIFY"))
        with _OPTIMIZED_LOCK:
            hit = _OPTIMIZED.get(key)
            if hit is not None:
                _OPTIMIZED.move_to_end(key)
                return hit
        hit = optimize(g, fuse=self.fuse)
        with _OPTIMIZED_LOCK:
            hit = _OPTIMIZED.setdefault(key, hit)   # a racing thread's result wins
            while len(_OPTIMIZED) > _OPTIMIZED_MAX:
                _OPTIMIZED.popitem(last=False)
        return hit

    def _exe(self, kind):
        exe = self._exes.get(kind)
        if exe is None:
            # threads racing to the first call must share one executable (one set of
            # buffers and one lock), so building is serialised
            with self._build_lock:
                exe = self._exes.get(kind)
                if exe is None:
                    # imported here: ``import graphc`` does not load Numba (~0.3-0.5 s);
                    # the first compiled graph does
                    from graphc.codegen import compile_graph
                    options = {"store": self._device} if self._device is not None else {}
                    exe = compile_graph(self._graph(kind), target=self.target, **options)
                    self._exes[kind] = exe
        return exe

    def _inputs(self, kind, x, y=None):
        """Argument list for graph ``kind``: x, y and the model-owned arrays.

        The model-owned part (parameters, optimizer state, hyper-parameters) is built
        once per graph; a step only drops x and y into a copy of it.
        """
        plan = self._arg_plans.get(kind)
        if plan is None:
            with self._build_lock:   # one plan (and one set of state arrays) per graph
                plan = self._arg_plans.get(kind)
                if plan is None:
                    plan = self._arg_plans[kind] = self._arg_plan(kind)
        vals, x_at, y_at, _ = plan
        vals = list(vals)
        for i in x_at:
            vals[i] = x
        for i in y_at:
            vals[i] = y
        if self.optimizer is not None:
            self._lr[()] = self.optimizer.lr   # a run-time input: no recompilation
        return vals

    def _arg_plan(self, kind):
        g = self._graph(kind)
        vals, x_at, y_at, owned = [], [], [], []
        for i, nid in enumerate(g.inputs):
            name = g.nx.nodes[nid]["name"]
            role = g.input_role(nid)
            value = None
            if role == "data":
                x_at.append(i)
            elif role == "label":
                y_at.append(i)
            elif role == "param":
                value = self._graph_array(self._params, name)
            elif role == "hyper":
                value = self._lr
            elif name in self._buffers:
                value = self._buffers[name]
            else:
                if name not in self._state:
                    zeros = np.zeros(g.type_of(nid).shape, dtype=self.dtype)
                    self._state[name] = zeros.T if self._held_transposed(name) else zeros
                value = self._graph_array(self._state, name)
            if value is not None:
                owned.append(i)
            vals.append(value)
        return vals, x_at, y_at, frozenset(owned)

    def _run(self, kind, x, y=None, copy=True):
        exe = self._exe(kind)
        if kind != "forward" and y is None:
            raise InputError(f"{kind} needs labels y")
        t0 = time.perf_counter()
        args = self._inputs(kind, x, y)
        if self.check_finite:   # debug mode: name the first node making a NaN/Inf
            outs = run_checked(exe, args, copy=copy)
        else:
            # model-owned arrays keep their dtype/shape (load_parameters copies in place)
            outs = exe.run(args, copy=copy, trusted=self._arg_plans[kind][3])
        if kind not in self._ran:
            self._ran.add(kind)
            self.timings[f"first_run.{kind}"] = time.perf_counter() - t0
        return outs

    # ------------------------------------------------------------ public API
    def __call__(self, x):
        """Forward pass (eval mode): NumPy in, NumPy out."""
        return self._run("forward", x)[0]

    def loss(self, x, y) -> float:
        """The loss of ``m(x)`` against ``y``: in eval mode, as the forward (batch norm's
        running statistics, no dropout); ``train_step`` returns the training-mode loss."""
        # copy the loss under the runtime's lock: another thread may reuse the buffer
        return float(self._run("loss", x, y, copy=_LOSS_ONLY)[0])

    def train_step(self, x, y) -> float:
        """Forward, backward and optimizer update in one native call; returns the loss."""
        outs = self._run("train", x, y, copy=_LOSS_ONLY)
        return float(outs[0])

    def gradients(self, x, y) -> dict:
        """``{parameter name: gradient}`` at the current parameters; nothing is updated."""
        outs = self._run("gradients", x, y)
        names = [n[len("grad."):] for n in self._graph("gradients").output_names[1:]]
        return {n: self._public(n, g) for n, g in zip(names, outs[1:])}

    def parameters(self) -> dict:
        """``{name: array}`` with PyTorch names and layouts (copies)."""
        self._pull()
        return {n: a.copy() for n, a in self._params.items()}

    def buffers(self) -> dict:
        self._pull()
        return {n: a.copy() for n, a in self._buffers.items()}

    def optimizer_state(self) -> dict:
        self._pull()
        return {n: a.copy() for n, a in self._state.items()}

    def reset_optimizer_state(self):
        """Zero the optimizer state (momentum buffers, Adam moments, step counts) in place,
        as a fresh ``torch.optim`` optimizer starts; parameters are untouched. In place
        because the compiled steps keep using the same arrays.

        >>> import graphc as gc
        >>> m = gc.compile(gc.nn.Linear(2, 2), input_shape=(None, 2), loss="mse",
        ...                optimizer=gc.optim.SGD(lr=0.1, momentum=0.9), dtype="float64")
        >>> _ = m.train_step(np.ones((1, 2)), np.zeros((1, 2)))
        >>> m.reset_optimizer_state()
        >>> all(not v.any() for v in m.optimizer_state().values())
        True
        """
        self._pull()
        for value in self._state.values():
            value[...] = 0
        if self._device is not None:
            self._device.push()

    def _pull(self):
        if self._device is not None:   # target="cuda": the device copies are the newest
            self._device.pull()

    def load_parameters(self, state: dict, strict: bool = True):
        """Load a ``{name: array}`` dict, e.g. a PyTorch ``state_dict`` converted to NumPy."""
        state = {k: (v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                 for k, v in state.items()}
        for alias, name in self._aliases.items():
            if alias in state:
                value = state.pop(alias)
                if name in state and not np.array_equal(np.asarray(state[name]), value):
                    raise ShapeError(f"load_parameters: {alias} and {name} are one shared "
                                     f"parameter in this model but differ in the dict")
                state.setdefault(name, value)
        self._pull()   # target="cuda": keep device-only updates (e.g. optimizer state)
        known = set(self._params) | set(self._buffers)
        extra = sorted(set(state) - known - {k for k in state if k.endswith("num_batches_tracked")})
        missing = sorted(set(self._params) - set(state))
        if strict and (extra or missing):
            raise ShapeError(f"load_parameters: missing {missing}, unexpected {extra}")
        for name, value in state.items():
            target = self._params.get(name, self._buffers.get(name))
            if target is None:
                continue
            arr = np.asarray(value)
            if arr.shape != target.shape:
                raise ShapeError(f"load_parameters: {name} has shape {format_shape(arr.shape)}, "
                                 f"the model expects {format_shape(target.shape)}")
            target[...] = arr   # in place: compiled steps keep using the same arrays
        if self._device is not None:
            self._device.push()   # the loaded host values replace the device copies

    def set_lr(self, lr: float):
        """Change the learning rate; no recompilation (it is a run-time input)."""
        if self.optimizer is None:
            raise OpError("set_lr: this model was compiled without an optimizer")
        self.optimizer.lr = lr

    def ir(self, graph: str = "train", after: str | None = None) -> str:
        """The IR as text: ``graph`` in forward|loss|gradients|train, after pass ``after``
        (``None`` = after the whole pipeline, ``"input"`` = as traced)."""
        if after is None:
            return format_graph(self._graph(graph))
        g = self._graph(graph, raw=True)
        _, pm = optimize(g, fuse=self.fuse, snapshot=after)
        if after not in pm.snapshots:
            names = ["input"] + [r.name for r in pm.records]
            raise OpError(f"unknown pass {after!r}; one of {names}")
        return pm.snapshots[after]

    def pass_report(self, graph: str = "train") -> str:
        self._graph(graph)
        return self._managers[graph].report()

    @property
    def source(self) -> str:
        """The emitted Numba source of the training step (or the forward pass)."""
        kind = "train" if self.optimizer is not None and self.loss_fn is not None else "forward"
        return self._exe(kind).source

    def kernel_count(self, graph: str = "train") -> int:
        return self._exe(graph).kernel_count


def compile(module, input_shape=None, loss=None, optimizer=None, target="cpu", fuse=True,  # noqa: A001
            dtype="float32", check_finite=False, l2=0.0, clip_grad_norm=None,
            clip_grad_value=None, input_dtype=None) -> CompiledModel:
    """Compile a :class:`gc.nn.Module` for inference and (with loss/optimizer) training.

    >>> import graphc as gc
    >>> m = gc.compile(gc.nn.Linear(3, 2), input_shape=(None, 3))
    >>> m(np.ones((4, 3))).shape
    (4, 2)

    ``l2`` adds ``l2 * theta`` to the gradient of every weight (not biases, see
    ``graphc.passes.optimizer.decays``); ``clip_grad_value`` clamps each gradient entry
    to ``[-c, c]``; ``clip_grad_norm`` rescales all gradients by
    ``min(1, max_norm / (total_norm + 1e-6))`` as ``torch.nn.utils.clip_grad_norm_``.
    ``m.gradients()`` returns the regularised, clipped gradients the optimizer uses.
    ``input_dtype="int64"`` makes the input integer token ids (a model that starts with
    ``gc.nn.Embedding``); by default it has the model's ``dtype``.
    """
    return CompiledModel(module, input_shape, loss, optimizer, target, fuse, dtype, check_finite,
                         l2, clip_grad_norm, clip_grad_value, input_dtype)
