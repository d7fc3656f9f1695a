"""Optimizer updates as IR nodes, so forward + backward + update is one graph.

Each rule maps (param, grad, state, hyper) node ids to the new param and new state.
The learning rate is a run-time rank-0 input (``lr``), so schedules never recompile;
the other hyper-parameters are constants in the graph. New values are graph outputs
aliased to the inputs they replace, which code generation updates in place.

>>> sorted(OPTIMIZER_RULES)[:1]
['adagrad']
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from graphc.ir import OpError, TensorType


@dataclass(frozen=True)
class OptimizerRule:
    """``state(hyper)`` names the per-parameter state slots; ``update`` builds the step."""

    name: str
    state: Callable[[dict], tuple]
    update: Callable   # (graph, p, grad, states: dict, hyper: dict, ids: dict) -> (new_p, {slot: new})
    # rules that need the step count t (bias correction, lr decay) get ids["step"] = t,
    # a rank-0 state input shared by all parameters and incremented by the graph
    uses_step: bool = False


def _c(g, value, dtype):
    return g.constant(value, dtype)


def _sgd_state(h):
    return ("momentum_buffer",) if h.get("momentum", 0.0) else ()


def _sgd_update(g, p, grad, states, h, ids):
    """torch.optim.SGD: d = g + wd p; buf = m buf + d; d = d + m buf (nesterov) or buf."""
    dt = g.type_of(p).dtype
    d = grad
    if h.get("weight_decay", 0.0):
        d = g.add("add", [d, g.add("mul", [_c(g, h["weight_decay"], dt), p])])
    new_states = {}
    m = h.get("momentum", 0.0)
    if m:
        buf = g.add("add", [g.add("mul", [_c(g, m, dt), states["momentum_buffer"]]), d])
        new_states["momentum_buffer"] = buf
        d = g.add("add", [d, g.add("mul", [_c(g, m, dt), buf])]) if h.get("nesterov") else buf
    new_p = g.add("sub", [p, g.add("mul", [ids["lr"], d])])
    return new_p, new_states


def _wd(g, grad, p, h, dt):
    """L2-style weight decay folded into the gradient: ``g + wd * p`` (torch's rule)."""
    if h.get("weight_decay", 0.0):
        return g.add("add", [grad, g.add("mul", [_c(g, h["weight_decay"], dt), p])])
    return grad


def _lerp(g, old, new, beta, dt):
    """``beta * old + (1 - beta) * new``: an exponential moving average."""
    return g.add("add", [g.add("mul", [_c(g, beta, dt), old]),
                         g.add("mul", [_c(g, 1.0 - beta, dt), new])])


def _one_minus_pow(g, beta, t, dt):
    """``1 - beta ** t`` with ``t`` the run-time step count (rank 0): exp(t log beta)."""
    if beta == 0.0:
        return _c(g, 1.0, dt)
    powt = g.add("exp", [g.add("mul", [t, _c(g, math.log(beta), dt)])])
    return g.add("sub", [_c(g, 1.0, dt), powt])


def _norm(g, x):
    """Frobenius norm of a whole tensor, rank 0."""
    return g.add("sqrt", [g.add("reduce_sum", [g.add("mul", [x, x])], {"axes": None})])


def _adam_state(h):
    return ("exp_avg", "exp_avg_sq")


def _adam_update(g, p, grad, states, h, ids):
    """torch.optim.Adam / AdamW (amsgrad=False).

    Adam:  g += wd p.  AdamW: p *= 1 - lr wd.  Then m = b1 m + (1-b1) g;
    v = b2 v + (1-b2) g^2; p -= (lr / (1 - b1^t)) m / (sqrt(v) / sqrt(1 - b2^t) + eps).
    """
    dt = g.type_of(p).dtype
    b1, b2 = h["betas"]
    lr, t = ids["lr"], ids["step"]
    if h.get("decoupled"):
        if h.get("weight_decay", 0.0):
            p = g.add("mul", [p, g.add("sub", [_c(g, 1.0, dt),
                                               g.add("mul", [lr, _c(g, h["weight_decay"], dt)])])])
    else:
        grad = _wd(g, grad, p, h, dt)
    m = _lerp(g, states["exp_avg"], grad, b1, dt)
    v = _lerp(g, states["exp_avg_sq"], g.add("mul", [grad, grad]), b2, dt)
    step_size = g.add("div", [lr, _one_minus_pow(g, b1, t, dt)])
    denom = g.add("add", [g.add("div", [g.add("sqrt", [v]),
                                        g.add("sqrt", [_one_minus_pow(g, b2, t, dt)])]),
                          _c(g, h["eps"], dt)])
    new_p = g.add("sub", [p, g.add("mul", [step_size, g.add("div", [m, denom])])])
    return new_p, {"exp_avg": m, "exp_avg_sq": v}


def _adagrad_update(g, p, grad, states, h, ids):
    """torch.optim.Adagrad: g += wd p; clr = lr / (1 + (t-1) lr_decay);
    sum += g^2; p -= clr g / (sqrt(sum) + eps)."""
    dt = g.type_of(p).dtype
    grad = _wd(g, grad, p, h, dt)
    clr = ids["lr"]
    if h.get("lr_decay", 0.0):
        tm1 = g.add("sub", [ids["step"], _c(g, 1.0, dt)])
        clr = g.add("div", [clr, g.add("add", [_c(g, 1.0, dt),
                                               g.add("mul", [tm1, _c(g, h["lr_decay"], dt)])])])
    s = g.add("add", [states["sum"], g.add("mul", [grad, grad])])
    std = g.add("add", [g.add("sqrt", [s]), _c(g, h["eps"], dt)])
    new_p = g.add("sub", [p, g.add("mul", [clr, g.add("div", [grad, std])])])
    return new_p, {"sum": s}


def _rmsprop_state(h):
    return (("square_avg",) + (("grad_avg",) if h.get("centered") else ())
            + (("momentum_buffer",) if h.get("momentum", 0.0) else ()))


def _rmsprop_update(g, p, grad, states, h, ids):
    """torch.optim.RMSprop: g += wd p; sq = a sq + (1-a) g^2;
    centered: ga = a ga + (1-a) g, avg = sqrt(sq - ga^2) + eps, else sqrt(sq) + eps;
    momentum: buf = mu buf + g / avg, p -= lr buf; else p -= lr g / avg."""
    dt = g.type_of(p).dtype
    a = h["alpha"]
    grad = _wd(g, grad, p, h, dt)
    new = {}
    sq = new["square_avg"] = _lerp(g, states["square_avg"], g.add("mul", [grad, grad]), a, dt)
    if h.get("centered"):
        ga = new["grad_avg"] = _lerp(g, states["grad_avg"], grad, a, dt)
        sq = g.add("sub", [sq, g.add("mul", [ga, ga])])
    avg = g.add("add", [g.add("sqrt", [sq]), _c(g, h["eps"], dt)])
    d = g.add("div", [grad, avg])
    if h.get("momentum", 0.0):
        d = new["momentum_buffer"] = g.add(
            "add", [g.add("mul", [_c(g, h["momentum"], dt), states["momentum_buffer"]]), d])
    return g.add("sub", [p, g.add("mul", [ids["lr"], d])]), new


def _lamb_update(g, p, grad, states, h, ids):
    """LAMB as torch_optimizer.Lamb (the paper's layer-wise trust ratio):
    m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; step = lr (x sqrt(1-b2^t)/(1-b1^t) if
    debias); u = m / (sqrt(v) + eps) + wd p; w = min(||p||, clamp_value);
    trust = w / ||u|| (1 when either norm is 0); p -= step trust u."""
    dt = g.type_of(p).dtype
    b1, b2 = h["betas"]
    m = _lerp(g, states["exp_avg"], grad, b1, dt)
    v = _lerp(g, states["exp_avg_sq"], g.add("mul", [grad, grad]), b2, dt)
    step = ids["lr"]
    if h.get("debias"):
        step = g.add("div", [g.add("mul", [step, g.add("sqrt", [_one_minus_pow(g, b2, ids["step"], dt)])]),
                             _one_minus_pow(g, b1, ids["step"], dt)])
    u = g.add("div", [m, g.add("add", [g.add("sqrt", [v]), _c(g, h["eps"], dt)])])
    if h.get("weight_decay", 0.0):
        u = g.add("add", [u, g.add("mul", [_c(g, h["weight_decay"], dt), p])])
    w = g.add("minimum", [_norm(g, p), _c(g, h["clamp_value"], dt)])
    un = _norm(g, u)
    zero, one = _c(g, 0.0, dt), _c(g, 1.0, dt)
    ok = g.add("mul", [g.add("gt", [w, zero]), g.add("gt", [un, zero])])   # 1.0 or 0.0
    not_ok = g.add("sub", [one, ok])
    # ok: w / un exactly; not ok: 0 * (w / 1) + 1 = 1, and never a division by zero
    trust = g.add("add", [g.add("mul", [ok, g.add("div", [w, g.add("add", [un, not_ok])])]),
                          not_ok])
    new_p = g.add("sub", [p, g.add("mul", [g.add("mul", [step, trust]), u])])
    return new_p, {"exp_avg": m, "exp_avg_sq": v}


OPTIMIZER_RULES: dict[str, OptimizerRule] = {
    "sgd": OptimizerRule("sgd", _sgd_state, _sgd_update),
    "adam": OptimizerRule("adam", _adam_state, _adam_update, uses_step=True),
    "adagrad": OptimizerRule("adagrad", lambda h: ("sum",), _adagrad_update, uses_step=True),
    "rmsprop": OptimizerRule("rmsprop", _rmsprop_state, _rmsprop_update),
    "lamb": OptimizerRule("lamb", _adam_state, _lamb_update, uses_step=True),
}

STEP_STATE = "optimizer.step"


def apply_optimizer(graph, rule_name: str, hyper: dict, params: list[tuple[str, int, int]]):
    """Append the update of every ``(name, param_id, grad_id)`` to ``graph``.

    Adds a rank-0 ``lr`` input (role ``hyper``), one ``state`` input per state slot
    (named ``<param>.<slot>``) and, for rules with ``uses_step``, the rank-0 step count
    ``optimizer.step``. Returns ``(new_outputs, output_names, aliases)`` where
    aliases maps each new output's position in ``new_outputs`` to its input id.
    """
    try:
        rule = OPTIMIZER_RULES[rule_name]
    except KeyError:
        raise OpError(f"unknown optimizer {rule_name!r}; known: {sorted(OPTIMIZER_RULES)}") from None
    if not params:
        raise OpError("the optimizer has no parameters to update")
    dtype = graph.type_of(params[0][1]).dtype
    ids = {"lr": graph.add_input(TensorType((), dtype), "lr", role="hyper")}
    slots = rule.state(hyper)
    outputs, names, alias_inputs = [], [], []
    if rule.uses_step:
        # t counts steps taken, starting at 0 (state starts zeroed); the update uses t + 1
        step_in = graph.add_input(TensorType((), dtype), STEP_STATE, role="state")
        ids["step"] = graph.add("add", [step_in, graph.constant(1.0, dtype)])
        outputs.append(ids["step"])
        names.append(STEP_STATE)
        alias_inputs.append(step_in)
    for name, p, grad in params:
        states = {s: graph.add_input(graph.type_of(p), f"{name}.{s}", role="state") for s in slots}
        new_p, new_states = rule.update(graph, p, grad, states, hyper, ids)
        outputs.append(new_p)
        names.append(name)
        alias_inputs.append(p)
        for s in slots:
            outputs.append(new_states[s])
            names.append(f"{name}.{s}")
            alias_inputs.append(states[s])
    return outputs, names, alias_inputs


def decays(name: str, shape: tuple) -> bool:
    """Whether L2 regularisation applies to parameter ``name`` of ``shape``.

    As in the lecture, biases are not regularised: a parameter is exempt when its name
    ends in ``bias`` or it has fewer than 2 dimensions (biases, norm-layer scales).

    >>> decays("fc1.weight", (4, 3)), decays("fc1.bias", (4,))
    (True, False)
    """
    return not name.split(".")[-1].startswith("bias") and len(shape) >= 2


def transform_gradients(graph, params, l2: float = 0.0, clip_grad_norm: float | None = None,
                        clip_grad_value: float | None = None) -> list[int]:
    """Regularise and clip the gradients of ``(name, param_id, grad_id)``; returns new ids.

    Applied in this order, all in the graph:

    1. L2: ``g + l2 * theta`` for parameters where :func:`decays` holds (the gradient of
       ``l2/2 * ||theta||^2``; the reported loss stays the data loss);
    2. clip by value: ``min(max(g, -c), c)`` (``torch.nn.utils.clip_grad_value_``);
    3. clip by global norm: ``total = sqrt(sum ||g||^2)`` over all parameters,
       ``g * min(1, max_norm / (total + 1e-6))`` (``torch.nn.utils.clip_grad_norm_``).
    """
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < float("inf")
    if not (number(l2) and l2 >= 0):    # NaN fails too
        raise OpError(f"l2 must be a finite number >= 0, got {l2!r}")
    for key, v in (("clip_grad_value", clip_grad_value), ("clip_grad_norm", clip_grad_norm)):
        if v is not None and not (number(v) and v > 0):
            raise OpError(f"{key} must be a finite number > 0, got {v!r}")
    grads = []
    for name, p, grad in params:
        dt = graph.type_of(p).dtype
        if l2 and decays(name, graph.type_of(p).shape):
            grad = graph.add("add", [grad, graph.add("mul", [_c(graph, l2, dt), p])])
        if clip_grad_value is not None:
            c = float(clip_grad_value)
            grad = graph.add("minimum", [graph.add("maximum", [grad, _c(graph, -c, dt)]),
                                         _c(graph, c, dt)])
        grads.append(grad)
    if clip_grad_norm is not None and grads:
        dt = graph.type_of(params[0][1]).dtype
        total = None
        for grad in grads:
            sq = graph.add("reduce_sum", [graph.add("mul", [grad, grad])], {"axes": None})
            total = sq if total is None else graph.add("add", [total, sq])
        total = graph.add("sqrt", [total], name="grad_norm")
        coef = graph.add("div", [_c(graph, clip_grad_norm, dt),
                                 graph.add("add", [total, _c(graph, 1e-6, dt)])])
        scale = graph.add("minimum", [coef, _c(graph, 1.0, dt)])
        grads = [graph.add("mul", [grad, scale]) for grad in grads]
    return grads
