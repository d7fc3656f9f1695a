"""Optimizer updates as IR nodes, so forward + backward + update is one graph.

Each rule maps (param, grad, state, hyper) node ids to the new param and new state.
The learning rate is a run-time rank-0 input (``lr``), so schedules never recompile;
the other hyper-parameters are constants in the graph. New values are graph outputs
aliased to the inputs they replace, which code generation updates in place.

>>> sorted(OPTIMIZER_RULES)[:1]
['sgd']
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from graphc.ir import OpError, TensorType


@dataclass(frozen=True)
class OptimizerRule:
    """``state(hyper)`` names the per-parameter state slots; ``update`` builds the step."""

    name: str
    state: Callable[[dict], tuple]
    update: Callable   # (graph, p, grad, states: dict, hyper: dict, ids: dict) -> (new_p, {slot: new})


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


OPTIMIZER_RULES: dict[str, OptimizerRule] = {
    "sgd": OptimizerRule("sgd", _sgd_state, _sgd_update),
}


def apply_optimizer(graph, rule_name: str, hyper: dict, params: list[tuple[str, int, int]]):
    """Append the update of every ``(name, param_id, grad_id)`` to ``graph``.

    Adds a rank-0 ``lr`` input (role ``hyper``) and one ``state`` input per state slot
    (named ``<param>.<slot>``). Returns ``(new_outputs, output_names, aliases)`` where
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
