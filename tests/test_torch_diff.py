"""Differential tests against PyTorch autograd (an oracle graphc did not write).

Random MLPs and two conv nets (conv + batch norm + max pool, strided padded conv + avg
pool; the conv net with batch norm fused, the other unfused) are built twice, in graphc and in
torch, with torch's initial parameters loaded into graphc through ``load_parameters``.
Forward output, loss, every parameter gradient and the parameters after three SGD
steps (momentum, nesterov, weight decay) must agree: float64 to 1e-9 and float32 to
1e-4, relative to each tensor's magnitude; fused and unfused.

Compile time is what costs here, so the generator draws few architectures and runs
each on several batch sizes (1, odd, even: a new batch size does not recompile).
``GRAPHC_DIFF_CASES=<n>`` draws more architectures.

    pytest tests/test_torch_diff.py
"""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import graphc as gc  # noqa: E402

torch.set_num_threads(1)

RTOL = {"float64": 1e-9, "float32": 1e-4}
TORCH_DTYPE = {"float64": torch.float64, "float32": torch.float32}
ACTIVATIONS = ("relu", "sigmoid", "tanh", "softplus")
LOSSES = ("cross_entropy", "mse", "bce_with_logits", "bce")
BATCHES = (1, 3, 8)
N_MLP = int(os.environ.get("GRAPHC_DIFF_CASES", "4"))


# ----------------------------------------------------------------- model specs
# A spec is a tuple of layers, each ("name", *args) with torch.nn's signature, built
# identically by both libraries.

def _gc_flatten():
    if hasattr(gc.nn, "Flatten"):
        return gc.nn.Flatten()

    class Flatten(gc.nn.Module):
        def forward(self, x):
            return x.flatten(1)
    return Flatten()


GC_LAYERS = {
    "linear": lambda *a: gc.nn.Linear(*a),
    "relu": lambda: gc.nn.ReLU(), "sigmoid": lambda: gc.nn.Sigmoid(),
    "tanh": lambda: gc.nn.Tanh(), "softplus": lambda: gc.nn.Softplus(),
    "conv": lambda *a, **k: gc.nn.Conv2d(*a, **k),
    "maxpool": lambda *a, **k: gc.nn.MaxPool2d(*a, **k),
    "avgpool": lambda *a, **k: gc.nn.AvgPool2d(*a, **k),
    "bn": lambda *a: gc.nn.BatchNorm2d(*a),
    "flatten": _gc_flatten,
}
TORCH_LAYERS = {
    "linear": lambda *a: torch.nn.Linear(*a),
    "relu": lambda: torch.nn.ReLU(), "sigmoid": lambda: torch.nn.Sigmoid(),
    "tanh": lambda: torch.nn.Tanh(), "softplus": lambda: torch.nn.Softplus(),
    "conv": lambda *a, **k: torch.nn.Conv2d(*a, **k),
    "maxpool": lambda *a, **k: torch.nn.MaxPool2d(*a, **k),
    "avgpool": lambda *a, **k: torch.nn.AvgPool2d(*a, **k),
    "bn": lambda *a: torch.nn.BatchNorm2d(*a),
    "flatten": lambda: torch.nn.Flatten(),
}


def _build(table, spec):
    layers = []
    for layer in spec["layers"]:
        name, args = layer[0], layer[1:]
        kwargs = args[-1] if args and isinstance(args[-1], dict) else {}
        args = args[:-1] if kwargs else args
        layers.append(table[name](*args, **kwargs))
    return layers


def random_mlp(rng, index):
    """An MLP spec: random depth, widths, activations; losses and dtypes rotate."""
    loss = LOSSES[index % len(LOSSES)]
    dtype = ("float64", "float32")[(index // 2) % 2]
    depth = int(rng.integers(1, 4))
    widths = [int(w) for w in rng.integers(1, 8, size=depth + 1)]
    if loss == "cross_entropy":
        widths[-1] = max(widths[-1], 2)
    layers = []
    for i in range(depth):
        layers.append(("linear", widths[i], widths[i + 1]))
        if i < depth - 1:
            layers.append((str(rng.choice(ACTIVATIONS)),))
    if loss == "bce":
        layers.append(("sigmoid",))
    momentum = float(rng.choice([0.0, 0.5, 0.9]))
    opt = dict(lr=float(rng.uniform(0.05, 0.3)), momentum=momentum,
               nesterov=bool(momentum and rng.random() < 0.5),
               weight_decay=float(rng.choice([0.0, 1e-2])))
    return dict(id=f"mlp{index}", layers=tuple(layers), input=(widths[0],),
                out=widths[-1], loss=loss, dtype=dtype, opt=opt, seed=index)


def conv_specs():
    """Small conv nets: strides, paddings, both pools, batch norm; conv layers need
    ``gc.nn.Conv2d`` (the specs skip without it)."""
    return [
        dict(id="conv_bn_max", input=(2, 6, 6), out=4, loss="cross_entropy", dtype="float64",
             layers=(("conv", 2, 3, 3, {"stride": 1, "padding": 1}), ("bn", 3), ("relu",),
                     ("maxpool", 2), ("flatten",), ("linear", 27, 4)),
             opt=dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2), seed=100),
        dict(id="conv_s2_avg", input=(1, 7, 7), out=3, loss="mse", dtype="float32",
             layers=(("conv", 1, 2, 3, {"stride": 2, "padding": 1}), ("tanh",),
                     ("avgpool", 2, {"stride": 2}), ("flatten",), ("linear", 8, 3)),
             opt=dict(lr=0.05, momentum=0.5, nesterov=False, weight_decay=0.0), seed=101),
    ]


_rng = np.random.default_rng(20261127)
MLP_SPECS = [random_mlp(_rng, i) for i in range(N_MLP)]
CONV_SPECS = conv_specs()


# ----------------------------------------------------------------- helpers

def torch_model(spec):
    torch.manual_seed(spec["seed"])
    model = torch.nn.Sequential(*_build(TORCH_LAYERS, spec))
    # non-trivial running stats so eval-mode batch norm is really checked
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.to(TORCH_DTYPE[spec["dtype"]])


def data(spec, batch, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch,) + spec["input"]).astype(spec["dtype"])
    if spec["loss"] == "cross_entropy":
        y = rng.integers(0, spec["out"], size=batch).astype(np.int64)
    elif spec["loss"] == "mse":
        y = rng.normal(size=(batch, spec["out"])).astype(spec["dtype"])
    else:
        y = rng.uniform(0, 1, size=(batch, spec["out"])).astype(spec["dtype"])
    return x, y


def torch_loss(spec, out, y):
    F = torch.nn.functional
    y = torch.from_numpy(y)
    return {"cross_entropy": F.cross_entropy, "mse": F.mse_loss,
            "bce_with_logits": F.binary_cross_entropy_with_logits,
            "bce": F.binary_cross_entropy}[spec["loss"]](out, y)


def assert_close(got, want, dtype, what):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} vs torch {want.shape}"
    assert np.all(np.isfinite(got)), f"{what}: non-finite values {got}"
    scale = max(float(np.max(np.abs(want), initial=0.0)), 1e-3)
    err = float(np.max(np.abs(got - want), initial=0.0))
    assert err <= RTOL[dtype] * scale, \
        f"{what}: max error {err:.3g} > {RTOL[dtype]} x {scale:.3g}\ngraphc {got}\ntorch {want}"


def state_numpy(model):
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


_COMPILED: dict = {}


def compiled(spec, fuse):
    """One graphc model per (spec, fuse), shared by every batch size (module cache)."""
    key = (spec["id"], fuse)
    if key not in _COMPILED:
        gc.manual_seed(0)
        net = gc.nn.Sequential(*_build(GC_LAYERS, spec))
        _COMPILED[key] = gc.compile(net, input_shape=(None,) + spec["input"], loss=spec["loss"],
                                    optimizer=gc.optim.SGD(**spec["opt"]), fuse=fuse,
                                    dtype=spec["dtype"])
    m = _COMPILED[key]
    m.reset_optimizer_state()   # momentum buffers start at zero again, as in torch
    return m


def check_against_torch(spec, fuse, batch):
    dt = spec["dtype"]
    tm = torch_model(spec)
    m = compiled(spec, fuse)
    m.load_parameters(tm.state_dict())
    names = [k for k, _ in tm.named_parameters()]
    x, y = data(spec, batch, seed=batch)
    tx = torch.from_numpy(x)

    # forward and its loss (eval mode)
    tm.eval()
    with torch.no_grad():
        out = tm(tx)
        assert_close(m(x), out.numpy(), dt, f"{spec['id']} forward")
        assert_close(m.loss(x, y), torch_loss(spec, out, y).item(), dt, f"{spec['id']} loss")

    # gradients (train mode) on a copy, so batch norm's running stats stay put; the
    # training-mode loss is checked by the steps below
    tcopy = copy.deepcopy(tm).train()
    loss = torch_loss(spec, tcopy(tx), y)
    loss.backward()
    grads = m.gradients(x, y)
    assert sorted(grads) == sorted(names)
    for name, p in tcopy.named_parameters():
        assert_close(grads[name], p.grad.numpy(), dt, f"{spec['id']} grad {name}")

    # three SGD steps, each on a different batch of the same size
    tm.train()
    opt = torch.optim.SGD(tm.parameters(), **spec["opt"])
    for step in range(3):
        xs, ys = data(spec, batch, seed=1000 * step + batch)
        opt.zero_grad()
        tloss = torch_loss(spec, tm(torch.from_numpy(xs)), ys)
        tloss.backward()
        opt.step()
        assert_close(m.train_step(xs, ys), tloss.item(), dt, f"{spec['id']} step {step} loss")
    want = state_numpy(tm)
    got = {**m.parameters(), **m.buffers()}
    for name, value in got.items():
        assert_close(value, want[name], dt, f"{spec['id']} after 3 steps: {name}")


# ----------------------------------------------------------------- tests

@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("fuse", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("spec", MLP_SPECS, ids=[s["id"] for s in MLP_SPECS])
def test_mlp_matches_torch(spec, fuse, batch):
    check_against_torch(spec, fuse, batch)


# A conv net's training graphs are 30-120 kernels each and Numba compiles them cold in
# 30-70 s, so by default each conv spec runs in one mode, and the two specs in opposite
# modes (fused and unfused are both covered); GRAPHC_DIFF_CONV_ALL=1 runs both modes of
# both specs.
CONV_ALL = os.environ.get("GRAPHC_DIFF_CONV_ALL") == "1"
CONV_CASES = [(spec, fuse) for k, spec in enumerate(CONV_SPECS) for fuse in (True, False)
              if CONV_ALL or fuse == (k % 2 == 0)]


@pytest.mark.parametrize("batch", (1, 5))
@pytest.mark.parametrize("spec,fuse", CONV_CASES,
                         ids=[f"{s['id']}-{'fused' if f else 'unfused'}" for s, f in CONV_CASES])
def test_convnet_matches_torch(spec, fuse, batch):
    if not hasattr(gc.nn, "Conv2d"):
        pytest.skip("gc.nn.Conv2d is not available in this build")
    check_against_torch(spec, fuse, batch)


def test_convnets_cover_fused_and_unfused():
    assert {f for _, f in CONV_CASES} == {True, False}


def test_generator_covers_every_loss_and_activation():
    """The drawn cases really exercise what the suite claims to test."""
    losses = {s["loss"] for s in MLP_SPECS}
    acts = {layer[0] for s in MLP_SPECS for layer in s["layers"]} - {"linear"}
    dtypes = {s["dtype"] for s in MLP_SPECS}
    if N_MLP >= 4:
        assert losses == set(LOSSES)
        assert dtypes == {"float32", "float64"}
    assert acts & set(ACTIVATIONS)
