"""Fuzzing of malformed model specs (TOML and JSON) with hypothesis.

Spec dicts are drawn by mutating valid specs (an MLP, a conv net, a residual net):
keys set to values of the wrong type, negative, zero or absurd sizes, missing fields,
unknown keys and layer types, nested garbage; and whole texts are mangled or random.
Through ``graphc.spec.parse_spec``, ``load_spec`` (as .json and .toml files) and the
CLI entry point ``graphc.cli.main(["compile", path])``:

* a rejected spec raises SpecError (a GraphcError) with a one-line message, never
  another exception type; the CLI exits non-zero with one ``graphc: error:`` line and
  never reports an internal error;
* an accepted spec builds and traces (``spec.compile`` traces and runs the passes;
  Numba is not involved) without an exception other than a GraphcError.

The CLI only sees rejected specs, so no case compiles native code.

    pytest tests/test_fuzz_spec.py
"""
from __future__ import annotations

import copy
import json
import math
import os
import re

import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from graphc.cli import main
from graphc.ir import GraphcError, SpecError
from graphc.spec import LAYER_TYPES, TOP_KEYS, load_spec, parse_spec

RANDOM = os.environ.get("GRAPHC_FUZZ_RANDOM") == "1"
EXAMPLES = int(os.environ.get("GRAPHC_SPEC_FUZZ_EXAMPLES", "150"))
STATS = {"cases": 0, "rejected": 0, "accepted": 0, "cli": 0}


def fuzz_settings(n):
    return settings(max_examples=n, deadline=None, derandomize=not RANDOM, database=None,
                    suppress_health_check=list(HealthCheck))


BASES = [
    {"name": "mlp", "input_shape": [6], "dtype": "float32", "batch_size": 4,
     "loss": "cross_entropy", "optimizer": {"type": "sgd", "lr": 0.05, "momentum": 0.9},
     "layers": [{"type": "linear", "out_features": 5}, {"type": "relu"},
                {"type": "dropout", "p": 0.1}, {"type": "linear", "out_features": 3}]},
    {"input_shape": [1, 6, 6], "loss": "mse", "optimizer": {"type": "adam", "lr": 0.01},
     "layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": 3, "padding": 1,
                 "stride": [1, 1]},
                {"type": "batch_norm"}, {"type": "tanh"},
                {"type": "max_pool2d", "kernel_size": 2},
                {"type": "avg_pool2d", "kernel_size": [1, 1], "stride": 1},
                {"type": "flatten", "start_dim": 1}, {"type": "linear", "out_features": 2}]},
    {"input_shape": [4], "dtype": "float64", "seed": 3,
     "layers": [{"type": "linear", "out_features": 4, "bias": False},
                {"type": "residual", "layers": [{"type": "linear", "out_features": 4},
                                                {"type": "sigmoid"}]},
                {"type": "softplus"}, {"type": "linear", "out_features": 2}]},
]

FIELD_NAMES = sorted({"type", "out_features", "in_features", "bias", "start_dim",
                      "out_channels", "kernel_size", "stride", "padding", "in_channels",
                      "num_features", "p", "layers", "lstm", ""})
OPT_KEYS = ["type", "lr", "momentum", "nesterov", "weight_decay", "betas", "eps", "rho"]

# sizes: small valid ones, and wrong ones (zero, negative, absurd, wrong type)
small = st.integers(-3, 8)
absurd = st.sampled_from([2**31, 2**40, 2**63, 2**70, 10**30, -2**63])
scalars = st.one_of(
    small, absurd, st.booleans(), st.none(),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["", "relu", "sgd", "adam", "float64", "float16", "3", "mse", "lstm",
                     "cross_entropy", "é\x00"]),
    st.text(max_size=6))
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.sampled_from(FIELD_NAMES + OPT_KEYS + sorted(TOP_KEYS)), inner,
                    max_size=3)), max_leaves=8)


@st.composite
def mutated_specs(draw):
    """A valid base spec with 1-4 random mutations anywhere in its tree."""
    spec = copy.deepcopy(draw(st.sampled_from(BASES)))
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):   # mostly one: errors mask
        # pick a container: the top level, the optimizer, a layer or a nested layer
        holders = [spec]
        if isinstance(spec.get("optimizer"), dict):
            holders.append(spec["optimizer"])
        stack = list(spec.get("layers") or []) if isinstance(spec.get("layers"), list) else []
        while stack:
            item = stack.pop()
            holders.append(item)
            if isinstance(item, dict) and isinstance(item.get("layers"), list):
                stack.extend(item["layers"])
        target = draw(st.sampled_from(holders))
        kind = draw(st.sampled_from(["set", "delete", "add_layer", "type", "size"]))
        if isinstance(target, list):
            if target and kind == "delete":
                target.pop(draw(st.integers(0, len(target) - 1)))
            else:
                target.insert(draw(st.integers(0, len(target))), draw(values))
            continue
        if not isinstance(target, dict):
            continue
        keys = sorted(target, key=str)
        if kind == "delete" and keys:
            target.pop(draw(st.sampled_from(keys)))
        elif kind == "type":
            target["type"] = draw(st.one_of(st.sampled_from(LAYER_TYPES + ["lstm", "SGD"]),
                                            values))
        elif kind == "size":
            key = draw(st.sampled_from(["out_features", "out_channels", "kernel_size",
                                        "stride", "padding", "num_features", "in_features",
                                        "in_channels", "start_dim", "input_shape",
                                        "batch_size", "seed", "p", "lr"]))
            target[key] = draw(st.one_of(small, absurd, st.lists(st.one_of(small, absurd),
                                                                 max_size=3)))
        elif kind == "add_layer" and isinstance(spec.get("layers"), list):
            spec["layers"].insert(draw(st.integers(0, len(spec["layers"]))),
                                  draw(st.one_of(values, st.fixed_dictionaries(
                                      {"type": st.sampled_from(LAYER_TYPES)},
                                      optional={k: values for k in FIELD_NAMES[:6]}))))
        else:   # mostly a key the spec already has: a wrong value where one is expected
            key = draw(st.sampled_from(keys)) if keys and draw(st.booleans()) else \
                draw(st.sampled_from(FIELD_NAMES + OPT_KEYS + sorted(TOP_KEYS)))
            target[key] = draw(st.one_of(scalars, values))
    return spec


any_spec = st.one_of(mutated_specs(), values, st.dictionaries(
    st.sampled_from(sorted(TOP_KEYS) + ["layer", "model"]), values, max_size=5))


# ----------------------------------------------------------------- writers

def to_toml(spec):
    """A TOML document for a dict (None values are dropped: TOML has no null); None
    when the top level is not a table (TOML cannot say that)."""
    if not isinstance(spec, dict):
        return None

    def key(k):
        return json.dumps(str(k))

    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") \
                if math.isinf(v) else repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v if x is not None) + "]"
        if isinstance(v, dict):
            return "{ " + ", ".join(f"{key(k)} = {val(x)}" for k, x in v.items()
                                    if x is not None) + " }"
        raise TypeError(v)
    return "\n".join(f"{key(k)} = {val(v)}" for k, v in spec.items() if v is not None) + "\n"


def assert_spec_error(exc):
    assert isinstance(exc, SpecError), f"{type(exc).__name__} instead of SpecError: {exc}"
    msg = str(exc).strip()
    assert msg and "\n" not in msg, f"message not one line: {msg!r}"


def check_cli(path, capsys):
    """The CLI on a spec load_spec rejected: exit != 0, one 'graphc: error:' line."""
    capsys.readouterr()
    code = main(["compile", str(path)])
    out, err = capsys.readouterr()
    STATS["cli"] += 1
    lines = err.strip().split("\n")
    assert code != 0, f"exit {code}\n{out}"
    assert len(lines) == 1 and lines[0].startswith("graphc: error: "), err
    assert "internal error" not in err, err


def check_accepted(spec):
    """An accepted spec must also build and trace (no Numba) without a non-graphc error."""
    try:
        spec.compile()
    except GraphcError as exc:
        assert "\n" not in str(exc).strip(), f"multi-line message: {exc}"


# ----------------------------------------------------------------- tests

@fuzz_settings(EXAMPLES)
@given(data=any_spec)
def test_malformed_spec_dicts(data, tmp_path_factory, capsys):
    note(repr(data))
    STATS["cases"] += 1
    try:
        spec = parse_spec(copy.deepcopy(data), "fuzz.json")
    except Exception as exc:  # noqa: BLE001 -- the point: which type leaks
        assert_spec_error(exc)
        STATS["rejected"] += 1
        rejected = True
    else:
        STATS["accepted"] += 1
        rejected = False
        check_accepted(spec)
    folder = tmp_path_factory.mktemp("spec")
    files = [folder / "s.json"]
    files[0].write_text(json.dumps(data))
    toml = to_toml(data)
    if toml is not None:
        files.append(folder / "s.toml")
        files[1].write_text(toml)
    for path in files:
        try:
            load_spec(str(path))
        except Exception as exc:  # noqa: BLE001
            assert_spec_error(exc)
            assert str(path) in str(exc), f"message does not name the file: {exc}"
            check_cli(path, capsys)
        else:
            # the JSON file holds the same dict, so it must be accepted as the dict was
            assert path.suffix == ".toml" or not rejected, f"{path.name} accepted, dict not"


def _mangle(draw, text):
    tokens = ["[", "]", "{", "}", "=", ",", '"', "'", "\n", "[[layers]]", "type", "-1",
              "nan", "1e999", "\x00", "\ufeff", "é", "null", "true", "input_shape = ",
              "\\", "#"]
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(len(text) - 1, 0)))
        kind = draw(st.sampled_from(["delete", "insert", "truncate", "dup"]))
        if kind == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 10)):]
        elif kind == "insert":
            text = text[:i] + draw(st.sampled_from(tokens)) + text[i:]
        elif kind == "truncate":
            text = text[:i]
        else:
            text = text[:i] + text[max(0, i - 20):]
    return text


@st.composite
def mangled_texts(draw):
    base = draw(st.sampled_from(BASES))
    suffix = draw(st.sampled_from([".json", ".toml"]))
    text = json.dumps(base, indent=1) if suffix == ".json" else to_toml(base)
    return suffix, _mangle(draw, text)


@fuzz_settings(EXAMPLES)
@given(case=st.one_of(mangled_texts(), st.tuples(st.sampled_from([".json", ".toml", ".yaml"]),
                                                 st.text(max_size=60))),
       raw=st.booleans())
def test_malformed_spec_text(case, raw, tmp_path_factory, capsys):
    suffix, text = case
    STATS["cases"] += 1
    path = tmp_path_factory.mktemp("spec") / f"s{suffix}"
    data = text.encode("utf-8", "surrogatepass")
    if raw:   # invalid UTF-8 as well
        data = b"\xff\xfe" + data[:len(data) // 2] + b"\xc3"
    path.write_bytes(data)
    try:
        spec = load_spec(str(path))
    except Exception as exc:  # noqa: BLE001
        assert_spec_error(exc)
        STATS["rejected"] += 1
        check_cli(path, capsys)
    else:
        STATS["accepted"] += 1
        check_accepted(spec)


def test_spec_fuzzer_counts():
    """Runs after the fuzzers: how many cases ran; most must have been rejected."""
    if not STATS["cases"]:
        pytest.skip("spec fuzzers did not run in this session")
    print(f"\nspec fuzz: {STATS['cases']} cases, {STATS['rejected']} rejected by parse/load, "
          f"{STATS['accepted']} accepted, {STATS['cli']} CLI runs")
    assert STATS["rejected"] > STATS["cases"] // 4
    assert STATS["cli"] > 0


# ----------------------------------------------------------------- what the fuzzer found
# Each of these leaked a TypeError, was accepted with a NaN, was accepted with sizes
# that then failed in NumPy (MemoryError/ValueError) when the model was built, or put a
# line break from a key into the one-line message.
FOUND = [
    ({"loss": [1]}, "loss: unknown loss"),
    ({"layers": [{"type": []}]}, "layers[0].type: unknown layer type"),
    ({"optimizer": {"type": "sgd", "lr": 1, "momentum": float("nan")}},
     "optimizer.momentum: must be a finite number"),
    ({"optimizer": {"type": "sgd", "lr": "0.1"}}, "optimizer.lr: must be a finite number"),
    ({"optimizer": {"type": "sgd", "lr": 1, "nesterov": 1, "momentum": 0.5}},
     "optimizer.nesterov: must be true or false"),
    ({"layers": [{"type": "linear", "out_features": 2**70}]}, "is too large"),
    ({"layers": [{"type": "linear", "out_features": 2**30}]}, "is too large"),
    ({"input_shape": [2**40, 2**40]}, "input_shape: must be"),
    ({"na\nme": 1}, "'na\\nme': unknown key"),
    ({"optimizer": {"type": "sgd", "l\rr": 1}}, "optimizer.'l\\rr': unknown option"),
    ({"input_shape": [1, 6, 6], "layers": [{"type": "conv2d", "out_channels": 2,
                                            "kernel_size": None}]},
     "layers[0]: a conv2d layer needs field 'kernel_size'"),
]


@pytest.mark.parametrize("change,message", FOUND, ids=[m.split(":")[0] for _, m in FOUND])
def test_found_spec_leaks_are_spec_errors(change, message):
    data = {"input_shape": [4], "layers": [{"type": "relu"}], **change}
    with pytest.raises(SpecError, match=re.escape(message)) as info:
        parse_spec(data, "found.json")
    assert "\n" not in str(info.value) and "\r" not in str(info.value)
