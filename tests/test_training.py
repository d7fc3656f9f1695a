"""Training loop, schedules, checkpoints (atomic, kill-safe, bit-identical resume),
NaN detection and plots. One tiny model, compiled once per module."""
import math
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import graphc as gc
import graphc.checkpoint as ckpt
from graphc.schedules import CosineAnnealingLR, ExponentialLR, LinearLR, LinearWarmup, StepLR


def _net():
    gc.manual_seed(3)
    return gc.nn.Linear(4, 3)


def _compile():
    return gc.compile(_net(), input_shape=(None, 4), loss="cross_entropy",
                      optimizer=gc.optim.Adam(lr=0.05), dtype="float64")


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 4))
    y = np.argmax(X[:, :3] + 0.1 * rng.normal(size=(40, 3)), axis=1)
    return X, y


@pytest.fixture(scope="module")
def init():
    return {k: p.data.astype("float64") for k, p in _net().named_parameters()}


@pytest.fixture
def model(init):
    """A fresh CompiledModel (tracing only; Numba code is shared through the cache)."""
    m = _compile()
    m.load_parameters(init)
    return m


def _batches(X, y, steps, bs=8):
    return [(X[(i * bs) % 40:(i * bs) % 40 + bs], y[(i * bs) % 40:(i * bs) % 40 + bs])
            for i in range(steps)]


# ---------------------------------------------------------------- schedules

def test_schedule_formulas():
    opt = gc.optim.SGD(lr=0.8)
    s = StepLR(opt, step_size=3, gamma=0.5)
    assert [s.step() for _ in range(7)] == [0.8 * 0.5 ** (e // 3) for e in range(1, 8)]
    s = ExponentialLR(gc.optim.SGD(lr=0.8), gamma=0.9)
    assert [s.step() for _ in range(3)] == pytest.approx([0.8 * 0.9 ** e for e in (1, 2, 3)])
    s = CosineAnnealingLR(gc.optim.SGD(lr=1.0), T_max=4, eta_min=0.1)
    # past T_max the rate follows the cosine back up, as PyTorch's recursive form does
    want = [0.1 + 0.9 * (1 + math.cos(math.pi * e / 4)) / 2 for e in (1, 2, 3, 4, 5, 6)]
    assert [s.step() for _ in range(6)] == pytest.approx(want)
    opt = gc.optim.SGD(lr=1.0)
    s = LinearLR(opt, start_factor=0.25, total_iters=3)
    assert opt.lr == 0.25
    assert [s.step() for _ in range(4)] == pytest.approx([0.5, 0.75, 1.0, 1.0])
    w = LinearWarmup(gc.optim.SGD(lr=0.4), warmup_steps=4)
    assert w.get_last_lr() == pytest.approx(0.1)


def test_schedule_takes_effect_without_recompiling(model, data, tmp_path):
    X, y = data
    xb, yb = X[:8], y[:8]
    model.train_step(xb, yb)
    exe = model._exes["train"]
    path = tmp_path / "before.npz"
    gc.save_checkpoint(model, path)
    before = model.parameters()
    model.train_step(xb, yb)
    delta_full = {k: v - before[k] for k, v in model.parameters().items()}
    gc.load_checkpoint(model, path)
    sched = StepLR(model, step_size=1, gamma=0.25)
    sched.step()
    assert model.optimizer.lr == pytest.approx(0.05 * 0.25)
    model.train_step(xb, yb)
    assert model._exes["train"] is exe                   # same compiled executable
    for k, v in model.parameters().items():
        # Adam's step is linear in lr given the same state: a quarter of the step
        np.testing.assert_allclose(v - before[k], 0.25 * delta_full[k], rtol=1e-9, err_msg=k)


# ---------------------------------------------------------------- checkpoints

def test_resume_is_bit_identical(init, data, tmp_path):
    X, y = data
    batches = _batches(X, y, 7)
    straight = _compile()
    straight.load_parameters(init)
    for xb, yb in batches:
        straight.train_step(xb, yb)
    first = _compile()
    first.load_parameters(init)
    for xb, yb in batches[:3]:
        first.train_step(xb, yb)
    path = tmp_path / "ckpt.npz"
    gc.save_checkpoint(first, path, step=3)
    del first
    resumed = _compile()                   # a new model: state comes from the file only
    info = gc.load_checkpoint(resumed, path)
    assert info["step"] == 3
    for xb, yb in batches[3:]:
        resumed.train_step(xb, yb)
    for k, v in straight.parameters().items():
        assert np.array_equal(resumed.parameters()[k], v), k
    for k, v in straight.optimizer_state().items():
        assert np.array_equal(resumed.optimizer_state()[k], v), k


def test_fit_resume_is_bit_identical(init, data, tmp_path):
    X, y = data
    a = _compile()
    a.load_parameters(init)
    ha = gc.fit(a, X, y, epochs=4, batch_size=16, seed=5, progress=False)
    path = str(tmp_path / "fit.npz")
    b = _compile()
    b.load_parameters(init)
    gc.fit(b, X, y, epochs=2, batch_size=16, seed=5, progress=False, checkpoint=path)
    c = _compile()                          # "after the crash": a fresh model, same seed
    hc = gc.fit(c, X, y, epochs=4, batch_size=16, seed=5, progress=False, checkpoint=path,
                resume=True)
    for k, v in a.parameters().items():
        assert np.array_equal(c.parameters()[k], v), k
    assert hc.loss == ha.loss and hc.epoch == [1, 2, 3, 4]


def test_interrupted_save_keeps_previous_checkpoint(model, data, tmp_path, monkeypatch):
    X, y = data
    model.train_step(X[:8], y[:8])
    path = tmp_path / "ckpt.npz"
    gc.save_checkpoint(model, path, epoch=1)
    good = model.parameters()
    model.train_step(X[8:16], y[8:16])

    def dying_savez(f, **arrays):
        f.write(b"PK\x03\x04 partial archive")      # some bytes reach the temp file
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(ckpt.np, "savez", dying_savez)
    with pytest.raises(KeyboardInterrupt):
        gc.save_checkpoint(model, path, epoch=2)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.npz"]           # the temp file was cleaned up
    fresh = _compile()
    assert gc.load_checkpoint(fresh, path)["epoch"] == 1
    for k, v in good.items():
        assert np.array_equal(fresh.parameters()[k], v), k


def test_sigkill_during_save_keeps_previous_checkpoint(tmp_path):
    """A real SIGKILL while the archive is being written (no Numba compile needed)."""
    script = textwrap.dedent(f"""
        import os, signal, numpy as np, graphc as gc, graphc.checkpoint as ckpt
        m = gc.compile(gc.nn.Linear(2, 2), input_shape=(None, 2), loss="mse",
                       optimizer=gc.optim.SGD(lr=0.1), dtype="float64")
        m.load_parameters({{k: np.full_like(v, 1.5) for k, v in m.parameters().items()}})
        gc.save_checkpoint(m, {str(tmp_path / 'c.npz')!r}, epoch=1)
        real = np.savez
        def savez(f, **arrays):
            f.write(b"PK partial")
            f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        ckpt.np.savez = savez
        m.load_parameters({{k: np.full_like(v, 9.0) for k, v in m.parameters().items()}})
        gc.save_checkpoint(m, {str(tmp_path / 'c.npz')!r}, epoch=2)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    leftovers = sorted(os.listdir(tmp_path))
    assert "c.npz" in leftovers and any(n.endswith(".tmp") for n in leftovers)
    m = gc.compile(gc.nn.Linear(2, 2), input_shape=(None, 2), loss="mse",
                   optimizer=gc.optim.SGD(lr=0.1), dtype="float64")
    assert gc.load_checkpoint(m, tmp_path / "c.npz")["epoch"] == 1
    assert all(np.all(v == 1.5) for v in m.parameters().values())


def test_checkpoint_errors(model, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not an archive")
    with pytest.raises(gc.InputError, match="cannot read checkpoint"):
        gc.load_checkpoint(model, bad)


# ---------------------------------------------------------------- fit, NaN, plots

def test_nan_in_data_stops_training(model, data):
    X, y = data
    X = X.copy()
    X[13, 2] = np.nan
    with pytest.raises(gc.NumericError, match=r"batch 2: loss is nan; first non-finite "
                                              r"tensor: input 'x'.*index \(5, 2\)"):
        gc.fit(model, X, y, epochs=1, batch_size=8, shuffle=False, progress=False)
    assert all(np.all(np.isfinite(v)) for v in model.parameters().values())
    assert all(np.all(np.isfinite(v)) for v in model.optimizer_state().values())


def test_nonfinite_node_is_named(model, data):
    """A NaN produced inside the graph is traced to the first node that makes it."""
    X, y = data
    params = model.parameters()
    params["weight"][:] = 1e308                  # finite, but the matmul overflows
    model.load_parameters(params)
    xb = np.abs(X[:8]) + 1.0
    msg = gc.training.find_nonfinite(model, xb, y[:8])
    assert msg.startswith("%") and "= matmul(" in msg, msg
    params["weight"][0, 0] = np.inf
    model.load_parameters(params)
    assert gc.training.find_nonfinite(model, xb, y[:8]).startswith("input 'weight'")


def test_fit_history_validation_and_plot(model, data, tmp_path):
    X, y = data
    h = gc.fit(model, X[:32], y[:32], epochs=3, batch_size=8, seed=1, progress=True,
               validation_data=(X[32:], y[32:]))
    assert h.epoch == [1, 2, 3] and len(h.loss) == len(h.val_loss) == 3
    assert h.loss[-1] < h.loss[0]
    assert all(0 <= a <= 1 for a in h.val_accuracy)
    assert all(s > 0 for s in h.samples_per_sec)
    # the reported validation numbers are the model's own, recomputed here
    logits = model(X[32:])
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    assert h.val_loss[-1] == pytest.approx(-logp[np.arange(8), y[32:]].mean(), rel=1e-10)
    assert h.val_accuracy[-1] == np.mean(logits.argmax(1) == y[32:])
    pytest.importorskip("matplotlib")
    out = gc.plots.plot_history(h, tmp_path / "curve.png")
    with open(out, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib(monkeypatch, tmp_path):
    import graphc.plots as plots
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(gc.GraphcError, match="needs matplotlib"):
        plots.plot_history(gc.History(epoch=[1], loss=[1.0]), tmp_path / "x.png")
