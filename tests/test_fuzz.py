"""Fuzzing with hypothesis: random graphs, pass combinations, IR text and call inputs.

* Random graphs are drawn from the op registry (each op's ``samples`` give valid operand
  shapes, attributes and value domains); every combination of passes (each pass of
  ``default_passes(fuse)`` on or off, fused and unfused) must give a graph that
  verifies and interprets to the same values (many graphs, no code generation), and
  compiled code must agree with the reference interpreter (few graphs, all passes on,
  all off and one drawn subset; float64 to 1e-9, and float32 graphs with every pass on,
  fused and unfused, to 1e-4 relative).
* Malformed IR text must raise a GraphcError (needs ``graphc.ir.parse_graph``).
* Malformed call-time inputs must raise InputError and leave the model untouched.

Each compile costs Numba time, so the graph fuzzer runs few, dense examples by default
(``GRAPHC_FUZZ_EXAMPLES=<n>`` for more; ``GRAPHC_FUZZ_RANDOM=1`` for fresh seeds instead
of the reproducible derandomized run CI uses).

    pytest tests/test_fuzz.py
"""
from __future__ import annotations

import itertools
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, note, settings
from hypothesis import strategies as st

import graphc as gc
import graphc.ir as ir
from graphc.codegen import compile_graph
from graphc.ir import BATCH, GraphcError, InputError, TensorType, interpret, verify
from graphc.ir.registry import label_range
from graphc.passes import PassManager
from graphc.pipeline import default_passes

EXAMPLES = int(os.environ.get("GRAPHC_FUZZ_EXAMPLES", "10"))
RANDOM = os.environ.get("GRAPHC_FUZZ_RANDOM") == "1"


def fuzz_settings(n):
    return settings(max_examples=n, deadline=None, derandomize=not RANDOM, database=None,
                    suppress_health_check=list(HealthCheck))


# ----------------------------------------------------------------- random graphs

SKIP_OPS = {"input"}
FUZZ_OPS = sorted(name for name, op in ir.all_ops().items()
                  if name not in SKIP_OPS and op.samples)
STATS = {"graphs": 0, "f32_graphs": 0, "pipelines": 0, "compiles": 0, "ops": set(),
         "interp_graphs": 0, "interp_pipelines": 0}


def draw_value(rng, shape, domain):
    if domain.startswith("labels:"):
        return rng.integers(*label_range(domain), size=shape).astype(np.int64)
    if domain == "positive":
        return rng.uniform(0.5, 2.0, size=shape)
    if domain == "unit":
        return rng.uniform(0.05, 0.95, size=shape)
    if domain == "nonzero":
        return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(0.5, 2.0, size=shape)
    return rng.normal(size=shape)


@st.composite
def random_graphs(draw, max_ops=10, dtype="float64"):
    """(graph, inputs): a random DAG of registry ops on ``dtype`` values, batch size B."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    batch = draw(st.sampled_from([1, 2, 3]))
    g = ir.Graph("fuzz")
    inputs, values = {}, []          # values: node ids usable as "real" operands

    def fresh(shape, domain, batch_axis):
        t_shape = tuple(BATCH if k == batch_axis else d for k, d in enumerate(shape))
        concrete = tuple(batch if k == batch_axis else d for k, d in enumerate(shape))
        kind = "int64" if domain.startswith("labels:") else dtype
        name = f"in{len(g.inputs)}"
        nid = g.add_input(TensorType(t_shape, kind), name,
                          "label" if kind == "int64" else "data")
        inputs[name] = draw_value(rng, concrete, domain).astype(kind)
        return nid

    for _ in range(draw(st.integers(2, max_ops))):
        op = draw(st.sampled_from(FUZZ_OPS))
        sample = draw(st.sampled_from(get_samples(op)))
        args = []
        for i, shape in enumerate(sample.shapes):
            domain = sample.domain(i)
            axis = sample.batch_dims[i] if i < len(sample.batch_dims) else None
            t_shape = tuple(BATCH if k == axis else d for k, d in enumerate(shape))
            reusable = [v for v in values
                        if g.type_of(v) == TensorType(t_shape, dtype)]
            if domain == "real" and reusable and draw(st.booleans()):
                args.append(draw(st.sampled_from(reusable)))
            else:
                args.append(fresh(shape, domain, axis))
        try:
            nid = g.add(op, args, dict(sample.attrs))
        except GraphcError:
            continue   # a sample valid on its own shapes may not fit reused operands
        STATS["ops"].add(op)
        if g.type_of(nid).dtype == dtype:
            values.append(nid)
    assume(values)
    # some sinks stay unused (dead code for dce, or for codegen when dce is off)
    sinks = [v for v in values if not g.users(v)]
    outs = [v for v in values if draw(st.booleans())] or [sinks[-1]]
    g.set_outputs(outs, [f"out{k}" for k in range(len(outs))])
    return g, inputs


def get_samples(op):
    return list(ir.get_op(op).samples)


def pass_names():
    names = []
    for fuse in (True, False):
        for name, _ in default_passes(fuse):
            if name not in names:
                names.append(name)
    return names


def pipelines(draw_mask):
    """Pass-combinations to run: all on, all off, and one drawn at random (fused and
    unfused); every combination when the pipeline is short."""
    names = pass_names()
    combos = set()
    if len(names) <= 3:
        for bits in itertools.product([False, True], repeat=len(names)):
            combos.add(frozenset(n for n, b in zip(names, bits) if not b))
    else:
        combos |= {frozenset(), frozenset(names), frozenset(n for n, b in zip(names, draw_mask)
                                                            if not b)}
    return [(fuse, disabled) for fuse in (True, False) for disabled in sorted(combos, key=sorted)]


def run_pipeline(graph, fuse, disabled):
    passes = default_passes(fuse)
    disabled = [n for n in disabled if n in {p for p, _ in passes}]
    pm = PassManager(passes, disabled=disabled, verify_each=True)
    return pm.run(graph.copy())


def assert_same(got, want, what):
    for k, (a, b) in enumerate(zip(got, want)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape, f"{what} output {k}: shape {a.shape} vs {b.shape}"
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9, err_msg=f"{what} output {k}")


@fuzz_settings(EXAMPLES)
@given(case=random_graphs(), mask=st.lists(st.booleans(), min_size=16, max_size=16))
def test_random_graphs_through_every_pass_combination(case, mask):
    graph, inputs = case
    verify(graph)
    with np.errstate(all="ignore"):
        want = interpret(graph, inputs)
    # only finite reference values: NaN propagation rules are not what is tested here
    assume(all(np.all(np.isfinite(w)) for w in want))
    note(ir.format_graph(graph))
    STATS["graphs"] += 1
    seen = {}
    for fuse, disabled in pipelines(mask):
        g = run_pipeline(graph, fuse, disabled)
        STATS["pipelines"] += 1
        what = f"fuse={fuse} disabled={sorted(disabled)}"
        verify(g)
        assert_same(interpret(g, inputs), want, f"interpreter after passes ({what})")
        text = ir.format_graph(g)
        if text not in seen:       # identical graphs compile to identical code
            exe = compile_graph(g)
            STATS["compiles"] += 1
            seen[text] = exe.run(inputs)
        assert_same(seen[text], want, f"compiled ({what})")


PASS_EXAMPLES = int(os.environ.get("GRAPHC_FUZZ_PASS_EXAMPLES", "100"))


@fuzz_settings(PASS_EXAMPLES)
@given(case=random_graphs())
def test_random_graphs_every_pass_subset_interpreted(case):
    """Without code generation (cheap): every subset of the passes, fused and unfused, on
    many graphs; the optimized graph must verify and interpret to the same values."""
    graph, inputs = case
    with np.errstate(all="ignore"):
        want = interpret(graph, inputs)
    assume(all(np.all(np.isfinite(w)) for w in want))
    note(ir.format_graph(graph))
    STATS["interp_graphs"] += 1
    names = pass_names()
    for fuse in (True, False):
        for bits in itertools.product([False, True], repeat=len(names)):
            disabled = frozenset(n for n, b in zip(names, bits) if not b)
            g = run_pipeline(graph, fuse, disabled)
            verify(g)
            STATS["interp_pipelines"] += 1
            assert_same(interpret(g, inputs), want,
                        f"interpreter after passes (fuse={fuse} disabled={sorted(disabled)})")


F32_EXAMPLES = int(os.environ.get("GRAPHC_FUZZ_F32_EXAMPLES", "4"))


def assert_close_f32(got, want, what):
    """float32: 1e-4 relative to each output's magnitude (summation order differs
    between the interpreter's NumPy calls and the generated loops; fast-math functions
    are within 5e-6, see codegen/fastmath.py)."""
    for k, (a, b) in enumerate(zip(got, want)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        assert a.shape == b.shape, f"{what} output {k}: shape {a.shape} vs {b.shape}"
        scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-3)
        err = float(np.max(np.abs(a - b), initial=0.0))
        assert err <= 1e-4 * scale, f"{what} output {k}: error {err:.3g} > 1e-4 x {scale:.3g}"


@fuzz_settings(F32_EXAMPLES)
@given(case=random_graphs(dtype="float32"))
def test_random_float32_graphs_compiled_match_interpreter(case):
    """float32 graphs, full pipeline fused and unfused: compiled code vs the interpreter."""
    graph, inputs = case
    verify(graph)
    with np.errstate(all="ignore"):
        want = interpret(graph, inputs)
    assume(all(np.all(np.isfinite(w)) for w in want))
    note(ir.format_graph(graph))
    STATS["f32_graphs"] += 1
    seen = {}
    for fuse in (True, False):
        g = run_pipeline(graph, fuse, frozenset())
        verify(g)
        text = ir.format_graph(g)
        if text not in seen:
            STATS["compiles"] += 1
            seen[text] = compile_graph(g).run(inputs)
        for out in seen[text]:
            assert np.asarray(out).dtype in (np.float32, np.int64), np.asarray(out).dtype
        assert_close_f32(seen[text], want, f"float32 compiled (fuse={fuse})")


def test_fuzzer_reached_the_registry():
    """Runs after the fuzzer: report and check how much of the registry it exercised."""
    if not STATS["graphs"]:
        pytest.skip("graph fuzzer did not run in this session")
    print(f"\nfuzz: {STATS['graphs']} float64 graphs, {STATS['f32_graphs']} float32 graphs, "
          f"{STATS['pipelines']} pipelines, {STATS['compiles']} compiles; interpreter only: "
          f"{STATS['interp_graphs']} graphs, {STATS['interp_pipelines']} pipelines; "
          f"{len(STATS['ops'])}/{len(FUZZ_OPS)} ops")
    assert len(STATS["ops"]) >= min(10, len(FUZZ_OPS))


# ----------------------------------------------------------------- malformed IR text

def _valid_text():
    g = ir.Graph("t")
    x = g.add_input(TensorType((BATCH, 3), "float32"), "x")
    w = g.add_input(TensorType((4, 3), "float32"), "w", "param")
    h = g.add("matmul", [x, w], {"tb": True})
    g.set_outputs([g.add("reduce_sum", [g.add("relu", [h])], {"axes": (1,)})], ["out"])
    return ir.format_graph(g)


TOKENS = ["%", "%99", "(", ")", "[", "]", "=", ":", ",", "f32", "f64", "i64", "[N, 3]",
          "input", "matmul", "nope", "reduce_sum", "axes=(7,)", "return", "}", "{", "#",
          "'", "\n", "alias output 5 -> input 9", "-1", "1e999", "\x00", "é"]


@st.composite
def mangled_ir(draw):
    text = _valid_text()
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["delete", "insert", "swap_lines", "truncate", "dup"]))
        i = draw(st.integers(0, max(len(text) - 1, 0)))
        if kind == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 8)):]
        elif kind == "insert":
            text = text[:i] + draw(st.sampled_from(TOKENS)) + text[i:]
        elif kind == "truncate":
            text = text[:i]
        elif kind == "dup":
            lines = text.split("\n")
            k = draw(st.integers(0, len(lines) - 1))
            text = "\n".join(lines[:k + 1] + lines[k:])
        else:
            lines = text.split("\n")
            a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
            lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
    return text


@fuzz_settings(300)
@given(text=st.one_of(mangled_ir(), st.text(max_size=80)))
def test_malformed_ir_text_gives_a_graphc_error(text):
    parse = getattr(ir, "parse_graph", None)
    if parse is None:
        pytest.skip("graphc.ir.parse_graph is not available in this build")
    try:
        g = parse(text)
    except GraphcError as exc:
        assert str(exc).strip(), "error without a message"
        assert "\n" not in str(exc).strip(), f"multi-line message: {exc}"
        return
    verify(g)    # whatever parses must be a well-formed graph


def test_valid_ir_text_round_trips():
    parse = getattr(ir, "parse_graph", None)
    if parse is None:
        pytest.skip("graphc.ir.parse_graph is not available in this build")
    text = _valid_text()
    assert ir.format_graph(parse(text)) == text


# ----------------------------------------------------------------- malformed call inputs

@pytest.fixture(scope="module")
def model():
    gc.manual_seed(0)
    return gc.compile(gc.nn.Linear(3, 4), input_shape=(None, 3), loss="cross_entropy",
                      optimizer=gc.optim.SGD(lr=0.1, momentum=0.9), dtype="float64")


def _bad_arrays():
    """Values that are wrong as x (N, 3) float64 or as labels y (N,) int64 in [0, 4)."""
    shapes = st.sampled_from([(), (2,), (2, 2), (2, 4), (2, 3, 1), (0, 2), (3, 3, 3)])
    numeric = st.builds(lambda s, dt: np.zeros(s, dtype=dt), shapes,
                        st.sampled_from(["float64", "float32", "int64", "bool"]))
    weird = st.sampled_from([None, "abc", [[1, 2], [3]], {"a": 1}, object(),
                             np.array(["a", "b"]), np.zeros((2, 3), dtype=complex),
                             np.zeros((2, 3), dtype=object), [[None] * 3] * 2])
    return st.one_of(numeric, weird)


def _bad_labels():
    return st.one_of(
        st.builds(lambda v: np.array([0, v]), st.sampled_from([-1, 4, 5, 2**40, -2**40])),
        st.just(np.array([0.0, np.nan])), st.just(np.array([0.5, 1.0])),
        st.just(np.array([0, 1, 2])), st.just(np.array([[0, 1]])), _bad_arrays())


@fuzz_settings(200)
@given(x=st.one_of(_bad_arrays(), st.just(np.zeros((2, 3)))), y=_bad_labels(),
       call=st.sampled_from(["forward", "loss", "gradients", "train_step"]))
def test_malformed_inputs_raise_input_error(model, x, y, call):
    good_x = isinstance(x, np.ndarray) and x.shape == (2, 3) and x.dtype.kind in "fiub"
    good_y = (isinstance(y, np.ndarray) and y.shape == (2,) and y.dtype.kind in "iu"
              and y.min() >= 0 and y.max() < 4)
    if good_x and good_y:
        return
    before = model.parameters()
    state = model.optimizer_state()
    try:
        if call == "forward":
            if good_x:
                return
            model(x)
        else:
            getattr(model, call)(x, y)
    except InputError as exc:
        assert str(exc).strip() and "\n" not in str(exc).strip()
    else:
        raise AssertionError(f"{call}(x={x!r}, y={y!r}) was accepted")
    after = model.parameters()
    for k in before:   # a rejected call changes nothing
        np.testing.assert_array_equal(after[k], before[k])
    for k, v in model.optimizer_state().items():
        np.testing.assert_array_equal(v, state.get(k, np.zeros_like(v)))


def test_missing_labels_raise_input_error(model):
    with pytest.raises(InputError):
        model.loss(np.zeros((2, 3)), None)
