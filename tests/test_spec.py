"""Model specs: TOML/JSON/Python loading, shape inference, and errors that name the
file, the layer index and the field."""
import json
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.ir import SpecError
from graphc.spec import ACTIVATIONS, load_spec, parse_spec

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HAS_CONV = hasattr(gc.nn, "Conv2d") and hasattr(gc.nn, "MaxPool2d") and \
    hasattr(gc.nn, "Flatten")

BASE = {"input_shape": [8], "loss": "cross_entropy", "batch_size": 4,
        "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.5},
        "layers": [{"type": "linear", "out_features": 5}, {"type": "relu"},
                   {"type": "linear", "out_features": 3}]}


def _toml(d):
    """Just enough TOML for the specs in this file."""
    def val(v):
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + " }"
        if isinstance(v, bool):
            return "true" if v else "false"
        return json.dumps(v)
    lines = [f"{k} = {val(v)}" for k, v in d.items() if k != "layers"]
    for layer in d["layers"]:
        lines += ["", "[[layers]]"] + [f"{k} = {val(v)}" for k, v in layer.items()]
    return "\n".join(lines) + "\n"


def test_examples_load_and_infer_shapes():
    mlp = load_spec(EXAMPLES / "mlp.toml")
    assert (mlp.name, mlp.input_shape, mlp.output_shape()) == ("mlp", (64,), (10,))
    params = {n: p.data.shape for n, p in mlp.build().named_parameters()}
    assert params == {"0.weight": (32, 64), "0.bias": (32,), "2.weight": (10, 32),
                      "2.bias": (10,)}
    lenet = load_spec(EXAMPLES / "lenet.toml")
    assert lenet.output_shape() == (10,)     # (1,8,8) -conv-> (6,8,8) -pool-> ... -> 10
    res = load_spec(EXAMPLES / "mlp_residual.json")
    assert res.output_shape() == (10,)
    assert "2.body.0.weight" in dict(res.build().named_parameters())


def test_toml_and_json_are_the_same_schema(tmp_path):
    (tmp_path / "m.toml").write_text(_toml(BASE))
    (tmp_path / "m.json").write_text(json.dumps(BASE))
    a, b = load_spec(tmp_path / "m.toml"), load_spec(tmp_path / "m.json")
    pa = {n: p.data for n, p in a.build().named_parameters()}
    pb = {n: p.data for n, p in b.build().named_parameters()}
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(pa[k], pb[k])   # same seed, same init
    assert repr(a.make_optimizer()) == repr(b.make_optimizer()) == \
        "SGD(lr=0.1, momentum=0.5, nesterov=False, weight_decay=0.0)"


def _layers(*layers):
    return {**BASE, "layers": list(layers)}


@pytest.mark.parametrize("data, needles", [
    ({**BASE, "epochs": 3}, ["unknown key 'epochs'"]),
    ({k: v for k, v in BASE.items() if k != "input_shape"}, ["missing key 'input_shape'"]),
    ({**BASE, "input_shape": [0]}, ["input_shape"]),
    ({**BASE, "loss": "hinge"}, ["loss", "unknown loss 'hinge'"]),
    ({**BASE, "dtype": "int64"}, ["dtype"]),
    ({**BASE, "batch_size": -1}, ["batch_size"]),
    ({**BASE, "optimizer": {"type": "rmsprop_x"}}, ["optimizer.type", "rmsprop_x"]),
    ({**BASE, "optimizer": {"type": "sgd", "lr": 0.1, "betas": 3}},
     ["optimizer.betas", "unknown option 'betas'"]),
    ({**BASE, "optimizer": {"type": "sgd", "lr": -1.0}}, ["optimizer", "learning rate"]),
    (_layers({"type": "linear", "out_features": 3}, {"type": "conv3d"}),
     ["layers[1].type", "unknown layer type 'conv3d'"]),
    (_layers({"type": "linear", "out_features": 3, "activation": "relu"}),
     ["layers[0].activation", "unknown field 'activation'"]),
    (_layers({"type": "linear", "out_features": "ten"}), ["layers[0].out_features", "'ten'"]),
    (_layers({"type": "linear"}), ["layers[0]", "needs field 'out_features'"]),
    (_layers({"out_features": 3}), ["layers[0]", "missing field 'type'"]),
    (_layers({"type": "linear", "out_features": 3, "in_features": 9}),
     ["layers[0]", "in_features = 9", "8 features"]),
    (_layers({"type": "relu"}, {"type": "dropout", "p": 1.5}), ["layers[1].p"]),
    (_layers({"type": "residual", "layers": [{"type": "linear", "out_features": 4}]}),
     ["layers[0]", "residual", "(8,) to (4,)"]),
    (_layers({"type": "residual", "layers": [{"type": "relu", "x": 1}]}),
     ["layers[0].layers[0].x"]),
    (_layers({"type": "conv2d", "out_channels": 2, "kernel_size": 3}),
     ["layers[0]", "(C, H, W)", "(8,)"]),
    ({**BASE, "input_shape": [1, 4, 4], "layers": [{"type": "linear", "out_features": 2}]},
     ["layers[0]", "flatten"]),
    ({**BASE, "input_shape": [1, 4, 4], "layers": [
        {"type": "conv2d", "out_channels": 2, "kernel_size": 5}]}, ["layers[0]", "does not fit"]),
    (_layers({"type": "gelu", "approximate": "fast"}), ["layers[0].approximate", "'fast'"]),
    (_layers({"type": "layer_norm", "eps": 0}), ["layers[0].eps", "positive number"]),
    (_layers({"type": "leaky_relu", "negative_slope": "big"}), ["layers[0].negative_slope"]),
])
def test_spec_errors_name_file_layer_and_field(data, needles):
    with pytest.raises(SpecError) as info:
        parse_spec(data, "model.toml")
    msg = str(info.value)
    assert msg.startswith("model.toml: ") and "\n" not in msg
    for needle in needles:
        assert needle in msg


def test_norm_and_activation_layers_build_and_train():
    spec = parse_spec(_layers({"type": "linear", "out_features": 6}, {"type": "layer_norm"},
                              {"type": "gelu"}, {"type": "linear", "out_features": 5},
                              {"type": "leaky_relu", "negative_slope": 0.2},
                              {"type": "elu", "alpha": 0.5},
                              {"type": "linear", "out_features": 3}))
    names = [type(m).__name__ for m in spec.build()]
    assert names == ["Linear", "LayerNorm", "GELU", "Linear", "LeakyReLU", "ELU", "Linear"]
    m = spec.compile()
    x = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    first = m.train_step(x, np.array([0, 1, 2, 0]))
    for _ in range(20):
        last = m.train_step(x, np.array([0, 1, 2, 0]))
    assert np.isfinite(first) and last < first


def test_every_activation_layer_type_builds_its_module():
    kinds = sorted(ACTIVATIONS)
    spec = parse_spec(_layers(*[{"type": k} for k in kinds],
                              {"type": "hardtanh", "min_val": -2, "max_val": 0.5}))
    built = spec.build()
    assert [type(m).__name__ for m in built] == [ACTIVATIONS[k] for k in kinds] + ["Hardtanh"]
    assert (built[-1].min_val, built[-1].max_val) == (-2.0, 0.5)
    with pytest.raises(SpecError, match=r"layers\[0\]: \(hardtanh\) min_val = 2 is "
                                        r"greater than max_val = 1.0"):
        parse_spec(_layers({"type": "hardtanh", "min_val": 2})).build()


def test_file_errors(tmp_path):
    with pytest.raises(SpecError, match="no such file"):
        load_spec(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("input_shape = [64\n")
    with pytest.raises(SpecError, match=r"bad.toml: malformed TOML"):
        load_spec(tmp_path / "bad.toml")
    (tmp_path / "bad.json").write_text('{\n "input_shape": [64],\n "layers": [,]\n}')
    with pytest.raises(SpecError, match=r"bad.json:3: malformed JSON"):
        load_spec(tmp_path / "bad.json")
    (tmp_path / "m.yaml").write_text("x: 1")
    with pytest.raises(SpecError, match="unknown spec format"):
        load_spec(tmp_path / "m.yaml")


def test_python_class_spec(tmp_path):
    (tmp_path / "net.py").write_text(
        "import graphc as gc\n"
        "class Net(gc.nn.Module):\n"
        "    input_shape = (6,)\n"
        "    optimizer = {'type': 'sgd', 'lr': 0.2}\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = gc.nn.Linear(6, 2)\n"
        "    def forward(self, x):\n"
        "        return self.fc(x)\n"
        "class NoShape(gc.nn.Module):\n"
        "    pass\n")
    spec = load_spec(f"{tmp_path / 'net.py'}:Net")
    assert spec.name == "Net" and spec.input_shape == (6,)
    assert list(dict(spec.build().named_parameters())) == ["fc.weight", "fc.bias"]
    assert spec.make_optimizer().lr == 0.2
    with pytest.raises(SpecError, match="input_shape"):
        load_spec(f"{tmp_path / 'net.py'}:NoShape")
    with pytest.raises(SpecError, match="no gc.nn.Module class named 'Nope'"):
        load_spec(f"{tmp_path / 'net.py'}:Nope")


@pytest.mark.skipif(HAS_CONV, reason="gc.nn.Conv2d is available")
def test_missing_layer_class_is_a_spec_error():
    with pytest.raises(SpecError, match=r"layers\[0\]: gc.nn.Conv2d is not available"):
        load_spec(EXAMPLES / "lenet.toml").build()


@pytest.mark.skipif(not HAS_CONV, reason="needs gc.nn.Conv2d")
def test_lenet_builds_with_pytorch_names():
    params = {n: p.data.shape for n, p in load_spec(EXAMPLES / "lenet.toml")
              .build().named_parameters()}
    assert params["0.weight"] == (6, 1, 3, 3) and params["3.weight"] == (16, 6, 3, 3)
    assert params["6.weight"] == (32, 64)
