"""The graphc command line, driven through main(argv) and one real subprocess."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.bench import COLUMNS, NumpyMLP
from graphc.cli import main
from graphc.ir import format_graph, parse_graph
from graphc.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
MLP = str(ROOT / "examples" / "mlp.toml")


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err):
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("graphc: error: "), err
    assert "Traceback" not in err


@pytest.mark.parametrize("cmd", [[], ["compile"], ["dump"], ["bench"], ["train"]])
def test_help_on_every_command(capsys, cmd):
    code, out, _ = run(capsys, *cmd, "--help")
    assert code == 0 and out.startswith("usage: graphc")
    for flag in {"compile": ["--target", "--no-fuse", "--emit"],
                 "dump": ["--graph", "--format", "--after", "--out"],
                 "bench": ["--batch", "--steps", "--target"],
                 "train": ["--data", "--epochs", "--out"]}.get(cmd[0] if cmd else "", []):
        assert flag in out


def test_compile_writes_source_and_summary(capsys, tmp_path):
    code, out, err = run(capsys, "compile", MLP, "--emit", tmp_path)
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("graph "))
    assert header.split() == ["graph", "nodes", "kernels", "trace", "ms", "passes", "ms",
                              "codegen", "ms", "load", "ms", "jit", "ms"]
    assert "2,410 parameters" in out     # 64*32 + 32 + 32*10 + 10
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.split()[:1] in (["forward"], ["train"])}
    assert set(rows) == {"forward", "train"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["forward.py", "summary.txt",
                                                          "train.py"]
    src = (tmp_path / "train.py").read_text()
    kernels = re.findall(r"^def (k\d+_\w+)\(", src, re.M)
    assert len(kernels) == int(rows["train"][2])         # one function per kernel
    assert any("matmul" in k for k in kernels) and "def run(" in src
    assert re.search(r"^def k\d+_\w+\(.*\):\n    # %\d+: ", src, re.M)   # IR node comments
    compile(src, "train.py", "exec")
    assert (tmp_path / "summary.txt").read_text().startswith("spec ")


def test_dump_text_round_trips(capsys):
    code, out, _ = run(capsys, "dump", MLP, "--graph", "backward")
    assert code == 0 and out.startswith("graph gradients {")
    g = parse_graph(out)
    assert format_graph(g) + "\n" == out
    assert g.output_names[0] == "loss" and "grad.0.weight" in g.output_names
    model = load_spec(MLP).compile(with_optimizer=False)
    assert format_graph(model._graph("gradients")) + "\n" == out


def test_dump_after_passes(capsys):
    code, out, _ = run(capsys, "dump", MLP, "--graph", "train", "--after", "all")
    assert code == 0
    assert out.startswith("// after input\ngraph train {") and "// after dce" in out
    code, out, _ = run(capsys, "dump", MLP, "--after", "input")
    assert code == 0 and parse_graph(out).name == "forward"


def test_dump_dot_and_json(capsys, tmp_path):
    code, out, _ = run(capsys, "dump", MLP, "--format", "dot")
    assert code == 0 and out.startswith('digraph "forward" {')
    code, out, _ = run(capsys, "dump", MLP, "--format", "dot", "--out", tmp_path / "g.svg")
    assert code == 0 and (tmp_path / "g.dot").read_text().startswith("digraph")
    if shutil.which("dot"):
        assert (tmp_path / "g.svg").exists()
    else:
        assert "'dot' is not installed" in out and not (tmp_path / "g.svg").exists()
    code, out, _ = run(capsys, "dump", MLP, "--format", "json", "--graph", "train",
                       "--out", tmp_path / "g.json")
    data = json.loads((tmp_path / "g.json").read_text())
    assert code == 0 and data["graph"]["name"] == "train" and data["multigraph"]
    assert len(data["graph"]["aliases"]) == 8    # 4 parameters + 4 momentum buffers


def test_bench_table(capsys):
    code, out, err = run(capsys, "bench", MLP, "--steps", "3", "--batch", "16")
    assert code == 0, err
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("variant"))
    cols = [c for c in lines[header].split("  ") if c]
    assert [c.strip() for c in cols] == list(COLUMNS)
    rows = [line.split() for line in lines[header + 1:]]
    assert [r[0] + " " + r[1] if r[0] == "graphc" else r[0] for r in rows] == \
        ["graphc fused", "graphc unfused", "numpy"]
    width = len(lines[header])
    assert all(len(line) == width for line in lines[header:])   # aligned
    unfused = rows[1]
    assert unfused[-1] == "1.00x" and float(unfused[2]) > 0
    assert rows[2][3] == "-"                                    # numpy: no kernels


def test_numpy_reference_matches_graphc():
    """The bench's NumPy baseline is an independent implementation: one SGD step of it
    must agree with graphc's compiled step (same seed -> same initial parameters)."""
    spec = load_spec(MLP)
    model = spec.compile()
    ref = NumpyMLP.from_spec(spec)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 64)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    for _ in range(2):     # two steps so momentum buffers matter
        np.testing.assert_allclose(ref.train_step(x, y), model.train_step(x, y), rtol=1e-5)
    params = model.parameters()
    for name, p in zip(["0.weight", "0.bias", "2.weight", "2.bias"], ref.params):
        np.testing.assert_allclose(p, params[name], rtol=1e-4, atol=1e-6)


def test_train_writes_checkpoint_and_curve(capsys, tmp_path):
    code, out, err = run(capsys, "train", MLP, "--data", "digits", "--epochs", "2",
                         "--out", tmp_path)
    assert code == 0, err
    acc = float(out.split("test accuracy: ")[1].split()[0])
    assert 0.5 < acc <= 1.0        # two epochs of the MLP on digits
    ckpt = np.load(tmp_path / "checkpoint.npz")
    assert sorted(ckpt.files) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert ckpt["0.weight"].shape == (32, 64)
    losses = (tmp_path / "losses.csv").read_text().splitlines()
    assert losses[0] == "epoch,loss" and len(losses) == 3
    try:
        import matplotlib  # noqa: F401
        assert (tmp_path / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    except ImportError:
        assert "matplotlib is not installed" in out


def _cuda_available():
    try:
        from numba import cuda
        return cuda.is_available()
    except Exception:
        return False


@pytest.mark.parametrize("argv", [
    ["compile", "no/such/spec.toml"],
    ["frobnicate", MLP],
    ["dump", MLP, "--format", "xml"],
    ["dump", MLP, "--after", "no_such_pass"],
    ["dump", MLP, "--after", "all", "--format", "dot"],
    ["bench", MLP, "--steps", "0"],
    ["train", MLP, "--data", "mnist"],
    ["train", MLP],
    ["compile", MLP, "--optimise"],
    ["compile", str(ROOT / "examples" / "mlp_digits.py") + ":NoSuchClass"],
])
def test_errors_are_one_line(capsys, argv):
    code, _, err = run(capsys, *argv)
    assert_one_line_error(code, err)


def test_spec_errors_are_one_line(capsys, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('input_shape = [64]\n[[layers]]\ntype = "lstm"\n')
    code, _, err = run(capsys, "compile", bad)
    assert_one_line_error(code, err)
    assert f"{bad}: layers[0].type: unknown layer type 'lstm'" in err
    bad.write_text("input_shape = [64\n")
    code, _, err = run(capsys, "dump", bad)
    assert_one_line_error(code, err)
    assert "malformed TOML" in err


@pytest.mark.skipif(_cuda_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_a_compile_error(capsys):
    code, _, err = run(capsys, "compile", MLP, "--target", "cuda")
    assert_one_line_error(code, err)
    assert code == 1 and "cuda" in err


def test_real_subprocess(tmp_path):
    env = dict(os.environ)
    ok = subprocess.run([sys.executable, "-m", "graphc.cli", "dump", MLP, "--out",
                         str(tmp_path / "f.ir")], capture_output=True, text=True, env=env,
                        cwd=tmp_path, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert parse_graph((tmp_path / "f.ir").read_text()).name == "forward"
    bad = subprocess.run([sys.executable, "-m", "graphc", "compile", "missing.json"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr == "graphc: error: missing.json: no such file\n"


def test_errors_of_a_python_spec_name_it(capsys, tmp_path):
    """The user's own class failing is not 'an internal error' of graphc."""
    (tmp_path / "models.py").write_text(
        "import graphc as gc\n"
        "class Raises(gc.nn.Module):\n"
        "    input_shape = (4,)\n"
        "    def forward(self, x):\n"
        "        raise RuntimeError('boom in forward')\n"
        "class NeedsArgs(gc.nn.Module):\n"
        "    input_shape = (4,)\n"
        "    def __init__(self, n):\n"
        "        super().__init__()\n")
    spec = tmp_path / "models.py"
    code, _, err = run(capsys, "dump", f"{spec}:Raises")
    assert code == 1 and "models.py:Raises: tracing its forward failed: RuntimeError: boom" in err
    code, _, err = run(capsys, "dump", f"{spec}:NeedsArgs")
    assert code == 1 and "NeedsArgs: building it failed: TypeError" in err
    code, _, err = run(capsys, "bench", MLP, "--seed", "-5")
    assert code == 2 and "--seed: must be an int >= 0" in err


def test_spec_errors_found_when_compiling_name_the_file(capsys, tmp_path):
    two = tmp_path / "two.json"
    two.write_text('{"input_shape": [64], "layers": [{"type": "linear", "out_features": 2}]}')
    code, _, err = run(capsys, "train", two, "--data", "digits", "--epochs", "1",
                       "--out", tmp_path / "run")
    assert_one_line_error(code, err)
    assert "two.json: the model gives 2 outputs per sample but digits has 10 classes" in err
    conv = tmp_path / "conv.json"
    conv.write_text('{"input_shape": [1, 8, 8], "layers": [{"type": "conv2d", '
                    '"out_channels": 2, "kernel_size": 3}]}')
    code, _, err = run(capsys, "dump", conv)
    assert_one_line_error(code, err)
    assert "conv.json: loss 'cross_entropy' needs model output (N, classes)" in err
