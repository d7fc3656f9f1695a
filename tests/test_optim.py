"""Optimizer update rules, L2 and clipping against NumPy references of the published
formulas (and torch.optim where installed).

Gradients come from a compiled gradients-only model at the reference's own parameters,
so the reference is an independent re-implementation of each update rule in float64.
"""
import math

import numpy as np
import pytest

import graphc as gc
from graphc.ir import interpret

STEPS = 5
RTOL = 1e-10


def _net():
    gc.manual_seed(0)
    return gc.nn.Sequential(gc.nn.Linear(3, 4), gc.nn.Tanh(), gc.nn.Linear(4, 2))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    return rng.normal(size=(6, 3)), rng.normal(size=(6, 2))


@pytest.fixture(scope="module")
def grad_model():
    """Gradients only (no optimizer): the source of gradients for every reference."""
    return gc.compile(_net(), input_shape=(None, 3), loss="mse", dtype="float64")


@pytest.fixture(scope="module")
def init():
    """The initial parameters every test starts from (grad_model's change as tests run)."""
    return {k: p.data.astype("float64") for k, p in _net().named_parameters()}


def _grads(grad_model, params, x, y):
    grad_model.load_parameters(params)
    return grad_model.gradients(x, y)


# ---------------------------------------------------------------- NumPy references

def ref_adam(p, g, s, t, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    b1, b2 = betas
    if decoupled:
        p = p * (1 - lr * weight_decay)
    else:
        g = g + weight_decay * p
    s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
    denom = np.sqrt(s["v"]) / math.sqrt(1 - b2 ** t) + eps
    return p - lr / (1 - b1 ** t) * s["m"] / denom


def ref_adagrad(p, g, s, t, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10):
    g = g + weight_decay * p
    clr = lr / (1 + (t - 1) * lr_decay)
    s["sum"] = s.get("sum", 0.0) + g * g
    return p - clr * g / (np.sqrt(s["sum"]) + eps)


def ref_rmsprop(p, g, s, t, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                centered=False):
    g = g + weight_decay * p
    s["sq"] = alpha * s.get("sq", 0.0) + (1 - alpha) * g * g
    avg = s["sq"]
    if centered:
        s["ga"] = alpha * s.get("ga", 0.0) + (1 - alpha) * g
        avg = avg - s["ga"] ** 2
    avg = np.sqrt(avg) + eps
    if momentum:
        s["buf"] = momentum * s.get("buf", 0.0) + g / avg
        return p - lr * s["buf"]
    return p - lr * g / avg


def ref_lamb(p, g, s, t, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0,
             clamp_value=10.0, debias=False):
    b1, b2 = betas
    s["m"] = b1 * s.get("m", 0.0) + (1 - b1) * g
    s["v"] = b2 * s.get("v", 0.0) + (1 - b2) * g * g
    step = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) if debias else lr
    u = s["m"] / (np.sqrt(s["v"]) + eps) + weight_decay * p
    w = min(np.linalg.norm(p), clamp_value)
    un = np.linalg.norm(u)
    trust = 1.0 if w == 0 or un == 0 else w / un
    return p - step * trust * u


def ref_sgd(p, g, s, t, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    g = g + weight_decay * p
    if momentum:
        s["buf"] = momentum * s["buf"] + g if "buf" in s else g
        g = g + momentum * s["buf"] if nesterov else s["buf"]
    return p - lr * g


def reference(grad_model, init, x, y, rule, kw, steps=STEPS):
    params = {k: v.copy() for k, v in init.items()}
    states = {k: {} for k in params}
    lr = kw["lr"]
    rest = {k: v for k, v in kw.items() if k != "lr"}
    for t in range(1, steps + 1):
        grads = _grads(grad_model, params, x, y)
        params = {k: rule(params[k], grads[k], states[k], t, lr, **rest) for k in params}
    return params


def _adamw(*a, **k):
    return ref_adam(*a, decoupled=True, **k)


# (optimizer class, kwargs, reference, compiled?) -- compiled cases run through Numba
# (Adam: the rank-0 step state; LAMB: norms and the trust-ratio guard); the others run
# the same optimized train graph through the NumPy interpreter, as Numba compiles take
# 1-2 minutes each on the shared test machine. (All cases passed compiled once.)
CASES = [
    ("Adam", dict(lr=0.05, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1), ref_adam, True),
    ("AdamW", dict(lr=0.05, weight_decay=0.2), _adamw, False),
    ("Adagrad", dict(lr=0.1, lr_decay=0.3, weight_decay=0.05), ref_adagrad, False),
    ("RMSprop", dict(lr=0.01, alpha=0.9, weight_decay=0.1, momentum=0.5, centered=True),
     ref_rmsprop, False),
    ("LAMB", dict(lr=0.05, weight_decay=0.1, debias=True), ref_lamb, True),
    ("Adam", dict(lr=0.01), ref_adam, False),
    ("Adagrad", dict(lr=0.1), ref_adagrad, False),
    ("RMSprop", dict(lr=0.01), ref_rmsprop, False),
    ("RMSprop", dict(lr=0.01, momentum=0.9), ref_rmsprop, False),
    ("LAMB", dict(lr=0.05, clamp_value=0.5), ref_lamb, False),
    ("SGD", dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01), ref_sgd, False),
]


def _interpret_steps(m, x, y, steps):
    """Run the train graph ``steps`` times with the NumPy interpreter, as the runtime
    would: aliased outputs replace their inputs."""
    g = m._graph("train")
    vals = dict(zip(g.input_names(), [np.array(v, copy=True) for v in m._inputs("train", x, y)]))
    names = g.input_names()
    for _ in range(steps):
        outs = interpret(g, vals)
        for o, i in g.aliases.items():
            vals[names[i]] = outs[o]
    return {k: m._public(k, vals[k]) for k in m.parameters()}


@pytest.mark.parametrize("name,kw,rule,compiled", CASES,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_update_rule_matches_numpy_reference(name, kw, rule, compiled, grad_model, data, init):
    x, y = data
    opt = getattr(gc.optim, name)(**kw)
    m = gc.compile(_net(), input_shape=(None, 3), loss="mse", optimizer=opt, dtype="float64")
    m.load_parameters(init)
    if compiled:
        for _ in range(STEPS):
            m.train_step(x, y)
        got = m.parameters()
        if any(s.endswith("step") for s in m.optimizer_state()):
            assert m.optimizer_state()["optimizer.step"] == STEPS
    else:
        got = _interpret_steps(m, x, y, STEPS)
    want = reference(grad_model, init, x, y, rule, kw)
    for k in want:
        assert not np.allclose(want[k], init[k]), k     # the rule really moved it
        np.testing.assert_allclose(got[k], want[k], rtol=RTOL, atol=0, err_msg=k)


@pytest.mark.parametrize("name,kw", [(c[0], c[1]) for c in CASES if c[0] != "LAMB"],
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES) if c[0] != "LAMB"])
def test_reference_matches_torch(name, kw, grad_model, data, init):
    """Our NumPy references agree with torch.optim fed the same gradients."""
    torch = pytest.importorskip("torch")
    x, y = data
    ps = {k: torch.tensor(v.copy(), dtype=torch.float64, requires_grad=True)
          for k, v in init.items()}
    opt = getattr(torch.optim, name)(list(ps.values()), **kw)
    for _ in range(STEPS):
        grads = _grads(grad_model, {k: p.detach().numpy() for k, p in ps.items()}, x, y)
        for k, p in ps.items():
            p.grad = torch.tensor(grads[k])
        opt.step()
    rule = dict((c[0], c[2]) for c in CASES)[name] if name != "AdamW" else _adamw
    want = reference(grad_model, init, x, y, rule, kw)
    for k in want:
        np.testing.assert_allclose(ps[k].detach().numpy(), want[k], rtol=RTOL, err_msg=k)


def test_optimizer_kwargs_follow_torch():
    assert gc.optim.AdamW().weight_decay == 0.01
    assert gc.optim.Adagrad().eps == 1e-10
    r = gc.optim.RMSprop()
    assert (r.alpha, r.eps, r.momentum, r.centered) == (0.99, 1e-8, 0.0, False)
    with pytest.raises(gc.OpError, match="betas"):
        gc.optim.Adam(betas=(0.9, 1.0))
    with pytest.raises(gc.OpError, match="eps"):
        gc.optim.RMSprop(eps=-1)


def test_bad_learning_rates_are_one_line_errors():
    for lr in (-1, float("nan"), float("inf"), "fast", None, True):
        with pytest.raises(gc.OpError, match=r"SGD: invalid learning rate .* \(a finite number"):
            gc.optim.SGD(lr=lr)
    m = gc.compile(_net(), input_shape=(None, 3), loss="mse", optimizer=gc.optim.Adam(lr=0.1))
    m.set_lr(np.float32(0.5))
    assert m.optimizer.lr == 0.5
    with pytest.raises(gc.OpError, match="Adam: invalid learning rate 'fast'"):
        m.set_lr("fast")
    assert m.optimizer.lr == 0.5
    with pytest.raises(gc.OpError, match="compiled without an optimizer"):
        gc.compile(_net(), input_shape=(None, 3)).set_lr(0.1)


# ---------------------------------------------------------------- L2 and clipping

@pytest.fixture(scope="module")
def regularised():
    """One graph with all three transforms: L2 -> clip by value -> clip by global norm."""
    return gc.compile(_net(), input_shape=(None, 3), loss="mse", dtype="float64",
                      l2=0.3, clip_grad_value=0.1, clip_grad_norm=0.2)


def test_l2_and_clipping_follow_their_formulas(regularised, grad_model, data, init):
    x, y = data
    params = init
    regularised.load_parameters(params)
    raw = _grads(grad_model, params, x, y)
    want = {}
    for k, g in raw.items():
        if k.endswith("weight"):                      # L2 on weights, never on biases
            g = g + 0.3 * params[k]
        want[k] = np.clip(g, -0.1, 0.1)
    assert any(np.abs(raw[k]).max() > 0.1 for k in raw)        # value clipping is active
    total = math.sqrt(sum(float(np.sum(g * g)) for g in want.values()))
    scale = min(1.0, 0.2 / (total + 1e-6))
    assert scale < 1                                            # norm clipping is active
    got = regularised.gradients(x, y)
    for k in want:
        np.testing.assert_allclose(got[k], want[k] * scale, rtol=1e-12, atol=0, err_msg=k)
    total_after = math.sqrt(sum(float(np.sum(g * g)) for g in got.values()))
    assert total_after == pytest.approx(0.2, rel=1e-5)


def test_each_transform_alone_in_the_interpreter(grad_model, data, init):
    """Each transform on its own (interpreted, no Numba compile) against its formula."""
    x, y = data
    params = init
    raw = _grads(grad_model, params, x, y)
    names = list(params)

    def grads_of(**kw):
        m = gc.compile(_net(), input_shape=(None, 3), loss="mse", dtype="float64", **kw)
        g = m._graph("gradients")
        m.load_parameters(params)
        outs = interpret(g, dict(zip(g.input_names(), m._inputs("gradients", x, y))))
        return {k: m._public(k, v) for k, v in zip(names, outs[1:])}

    got = grads_of(l2=0.7)
    for k in names:
        want = raw[k] + (0.7 * params[k] if params[k].ndim >= 2 else 0.0)
        np.testing.assert_allclose(got[k], want, rtol=1e-12, err_msg=k)
    got = grads_of(clip_grad_value=0.1)
    assert any(np.abs(g).max() > 0.1 for g in raw.values())
    for k in names:
        np.testing.assert_allclose(got[k], np.clip(raw[k], -0.1, 0.1), rtol=1e-12, err_msg=k)
    total = math.sqrt(sum(float(np.sum(g * g)) for g in raw.values()))
    got = grads_of(clip_grad_norm=total * 10)          # under the limit: unchanged
    for k in names:
        np.testing.assert_allclose(got[k], raw[k], rtol=1e-12, err_msg=k)
    with pytest.raises(gc.OpError, match="clip_grad_norm"):
        grads_of(clip_grad_norm=0.0)


def test_lamb_zero_norm_guard():
    """A zero parameter gets trust ratio 1, not 0/0."""
    p, g = np.zeros((2, 2)), np.full((2, 2), 0.5)
    got = ref_lamb(p, g, {}, 1, 0.1)
    assert np.all(np.isfinite(got)) and not np.allclose(got, 0)
    net = gc.nn.Linear(2, 2, bias=False) if "bias" in gc.nn.Linear.__init__.__code__.co_varnames \
        else gc.nn.Linear(2, 2)
    m = gc.compile(net, input_shape=(None, 2), loss="mse", dtype="float64",
                   optimizer=gc.optim.LAMB(lr=0.1))
    m.load_parameters({k: np.zeros_like(v) for k, v in m.parameters().items()})
    x, y = np.ones((3, 2)), np.ones((3, 2))
    g = m._graph("train")
    outs = interpret(g, dict(zip(g.input_names(), m._inputs("train", x, y))))
    new = dict(zip(g.output_names, outs))
    for k in m.parameters():
        assert np.all(np.isfinite(new[k])) and np.any(new[k] != 0), k
