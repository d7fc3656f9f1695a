"""What a PyTorch user's training code means, kept: tied weights, frozen and unused
parameters, module modes at compile time, eval-mode losses, batch norm's batch of one,
optimizer settings fixed at compile time and chainable schedules. PyTorch is the oracle
where it is installed; the structural checks need no oracle."""
import numpy as np
import pytest

import graphc as gc

G = gc.nn
try:
    import torch
except ImportError:
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="needs PyTorch as the oracle")

RNG = np.random.default_rng(5)
X = RNG.normal(size=(33, 4))
Y = np.arange(33) % 2


def _compile(net, loss="cross_entropy", opt=None, **kw):
    return gc.compile(net, input_shape=(None, 4), loss=loss,
                      optimizer=opt or gc.optim.SGD(lr=0.1), dtype="float64", **kw)


@needs_torch
def test_a_shared_module_is_one_parameter_whose_gradient_sums_its_uses():
    class Net(G.Module):
        def __init__(self):
            super().__init__()
            self.a = G.Linear(4, 4)
            self.b = self.a                   # tied: both names, one module
            self.out = G.Linear(4, 2)

        def forward(self, x):
            return self.out(gc.tanh(self.b(gc.tanh(self.a(x)))))

    class TorchNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Linear(4, 4)
            self.b = self.a
            self.out = torch.nn.Linear(4, 2)

        def forward(self, x):
            return self.out(torch.tanh(self.b(torch.tanh(self.a(x)))))

    torch.manual_seed(0)
    tnet, net = TorchNet().double(), Net()
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in tnet.named_parameters()]
    m = _compile(net, opt=gc.optim.AdamW(lr=0.05, weight_decay=0.5))
    # a PyTorch state_dict lists the tied weight under both names
    m.load_parameters({k: v.detach().numpy() for k, v in tnet.state_dict().items()})
    opt = torch.optim.AdamW(tnet.parameters(), lr=0.05, weight_decay=0.5)
    for i in range(3):
        xb, yb = X[8 * i:8 * i + 8], Y[8 * i:8 * i + 8]
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(tnet(torch.tensor(xb)), torch.tensor(yb))
        loss.backward()
        opt.step()
        assert abs(m.train_step(xb, yb) - loss.item()) < 1e-12
    params = m.parameters()
    assert sorted(params) == ["a.bias", "a.weight", "out.bias", "out.weight"]
    for name, value in tnet.named_parameters():
        np.testing.assert_allclose(params[name], value.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_frozen_and_unused_parameters_are_left_alone():
    """PyTorch's optimizers skip parameters whose grad is None: frozen ones and ones the
    loss does not use, so weight decay and Adam do not move them either."""
    class Net(G.Module):
        def __init__(self):
            super().__init__()
            self.a = G.Linear(4, 4)
            self.spare = G.Linear(4, 4)       # never called
            self.out = G.Linear(4, 2)
            self.a.weight.requires_grad_(False)

        def forward(self, x):
            return self.out(gc.tanh(self.a(x)))

    net = Net()
    before = {n: p.data.copy() for n, p in net.named_parameters()}
    m = _compile(net, opt=gc.optim.AdamW(lr=0.1, weight_decay=0.5), l2=0.1)
    assert sorted(m.gradients(X, Y)) == ["a.bias", "out.bias", "out.weight"]
    for _ in range(3):
        m.train_step(X, Y)
    after = m.parameters()
    for name in ("a.weight", "spare.weight", "spare.bias"):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    assert not np.allclose(after["a.bias"], before["a.bias"])
    assert not any(k.startswith(("a.weight.", "spare.")) for k in m.optimizer_state())


def test_loss_and_evaluate_are_the_eval_mode_loss():
    """With batch norm and dropout, m.loss and gc.evaluate report the loss of m(x) (eval
    mode), whatever the batch size, not a training-mode loss."""
    net = G.Sequential(G.Linear(4, 8), G.BatchNorm1d(8), G.Dropout(0.5), G.Linear(8, 2))
    m = _compile(net)
    for _ in range(4):
        m.train_step(X[:32], Y[:32])
    out = m(X)
    logp = out - np.log(np.exp(out).sum(1, keepdims=True))
    want = -logp[np.arange(len(Y)), Y].mean()
    assert m.loss(X, Y) == pytest.approx(want, rel=1e-12)
    for batch_size in (8, 256):
        assert gc.evaluate(m, X, Y, batch_size=batch_size)[0] == pytest.approx(want, rel=1e-12)


def test_modules_in_eval_mode_when_compiled_train_so():
    """model.eval() before compiling (batch norm frozen for fine-tuning) trains with the
    running statistics and leaves them alone, as PyTorch does; the model's own modes
    are unchanged by compiling."""
    net = G.Sequential(G.Linear(4, 3), G.BatchNorm1d(3), G.Linear(3, 2))
    net[1].eval()
    m = _compile(net)
    x, y = X[:8], Y[:8]
    # in eval mode batch norm is an affine map: a sample's gradient does not depend on
    # the others in the batch, so the batch gradient is the mean of one-sample ones
    grads = m.gradients(x, y)
    singles = [m.gradients(x[i:i + 1], y[i:i + 1])["0.weight"] for i in range(8)]
    np.testing.assert_allclose(grads["0.weight"], np.mean(singles, axis=0), rtol=1e-10)
    m.train_step(x, y)
    np.testing.assert_array_equal(m.buffers()["1.running_mean"], np.zeros(3))
    np.testing.assert_array_equal(m.buffers()["1.running_var"], np.ones(3))
    assert net.training and not net[1].training


def test_batch_norm_refuses_a_training_batch_of_one():
    m = _compile(G.Sequential(G.Linear(4, 3), G.BatchNorm1d(3), G.Linear(3, 2)))
    with pytest.raises(gc.InputError, match="batch size 1.*at least 2 samples"):
        m.train_step(X[:1], Y[:1])
    with pytest.raises(gc.InputError, match="last batch of 1.*drop_last=True"):
        gc.fit(m, X, Y, epochs=1, batch_size=32, progress=False)
    np.testing.assert_array_equal(m.buffers()["1.running_var"], np.ones(3))   # untouched
    history = gc.fit(m, X, Y, epochs=1, batch_size=32, progress=False, drop_last=True)
    assert np.isfinite(history.loss[0]) and np.isfinite(m.buffers()["1.running_var"]).all()
    assert np.isfinite(m(X[:1])).all() and np.isfinite(m.loss(X[:1], Y[:1]))   # eval: fine
    # a 2-D batch norm with more than one pixel per channel takes a batch of one
    conv = gc.compile(G.Sequential(G.Conv2d(1, 2, 3), G.BatchNorm2d(2), G.Flatten(),
                                   G.Linear(8, 2)), input_shape=(None, 1, 4, 4),
                      loss="cross_entropy", optimizer=gc.optim.SGD(lr=0.1), dtype="float64")
    assert np.isfinite(conv.train_step(np.ones((1, 1, 4, 4)), np.array([1])))


def test_optimizer_settings_are_fixed_once_compiled():
    opt = gc.optim.SGD(lr=0.1, momentum=0.9)
    m = _compile(G.Linear(4, 2), opt=opt)
    with pytest.raises(gc.OpError, match="SGD.momentum is compiled into .* only lr can change"):
        opt.momentum = 0.0
    with pytest.raises(gc.OpError, match="compile again"):
        m.optimizer = gc.optim.Adam()
    opt.lr = 0.5                               # the learning rate is a run-time input
    assert m.optimizer.lr == 0.5 and "momentum=0.9" in repr(opt)


@needs_torch
@pytest.mark.filterwarnings("ignore:Detected call of")   # torch: no optimizer.step here
@pytest.mark.parametrize("case", ["chained", "set_by_hand", "cosine_past_T_max", "linear"])
def test_schedules_step_as_pytorch(case):
    S, TS = gc.schedules, torch.optim.lr_scheduler
    makers = {
        "chained": (lambda o: [S.StepLR(o, 1, 0.5), S.ExponentialLR(o, 0.9)],
                    lambda o: [TS.StepLR(o, 1, 0.5), TS.ExponentialLR(o, 0.9)]),
        "set_by_hand": (lambda o: [S.StepLR(o, 2, 0.5)], lambda o: [TS.StepLR(o, 2, 0.5)]),
        "cosine_past_T_max": (lambda o: [S.CosineAnnealingLR(o, 3, 0.1)],
                              lambda o: [TS.CosineAnnealingLR(o, 3, 0.1)]),
        "linear": (lambda o: [S.LinearLR(o, 0.5, 1.0, 3), S.CosineAnnealingLR(o, 5)],
                   lambda o: [TS.LinearLR(o, 0.5, 1.0, 3), TS.CosineAnnealingLR(o, 5)]),
    }
    ours, theirs = gc.optim.SGD(lr=1.0), torch.optim.SGD([torch.zeros(1, requires_grad=True)],
                                                         lr=1.0)
    mine, ref = makers[case][0](ours), makers[case][1](theirs)
    for epoch in range(12):
        if case == "set_by_hand" and epoch == 3:
            ours.lr = 0.3
            theirs.param_groups[0]["lr"] = 0.3
        for s in mine:
            s.step()
        for s in ref:
            s.step()
        assert ours.lr == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-12, abs=1e-15)


def test_a_parameter_reached_only_through_a_comparison_is_left_alone():
    """No gradient crosses a comparison, argmax, detach or a where's condition: PyTorch
    leaves such a parameter's grad None, so weight decay does not move it either."""
    class Gated(G.Module):
        def __init__(self):
            super().__init__()
            self.a = G.Linear(4, 2)
            self.gate = G.Linear(4, 4)

        def forward(self, x):
            return self.a(x) * (self.gate.weight.sum() > -100.0) + self.gate.bias.detach().sum()

    net = Gated()
    before = {n: p.data.copy() for n, p in net.named_parameters()}
    m = _compile(net, loss="mse", opt=gc.optim.SGD(lr=0.1, weight_decay=0.5))
    x, y = X[:4], np.zeros((4, 2))
    assert sorted(m.gradients(x, y)) == ["a.bias", "a.weight"]
    m.train_step(x, y)
    after = m.parameters()
    for name in ("gate.weight", "gate.bias"):
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_fit_drop_last_with_too_few_samples_is_an_error():
    m = _compile(G.Linear(4, 2))
    with pytest.raises(gc.InputError, match="drop_last with batch_size 8 leaves no batch"):
        gc.fit(m, X[:3], Y[:3], batch_size=8, drop_last=True, progress=False)
