"""Declarative model specs: a TOML or JSON file (same schema) -> a gc.nn.Sequential.

A spec names the input shape (without the batch dimension), a list of layers, the loss,
the optimizer and its settings, the batch size and the dtype. Layer sizes that follow
from the previous layer (``in_features``, ``in_channels``, ``num_features``) are
inferred. Every key is checked: an unknown key, layer type or option is an error that
names the file, the layer index and the field. ``path/to/file.py:ClassName`` is also a
spec: the class (a gc.nn.Module) is built with no arguments, and class attributes
``input_shape``, ``loss``, ``optimizer`` (a dict), ``batch_size``, ``dtype`` supply the rest.

    name = "mlp"
    input_shape = [64]
    loss = "cross_entropy"
    batch_size = 32
    optimizer = { type = "sgd", lr = 0.05, momentum = 0.9 }

    [[layers]]
    type = "linear"
    out_features = 32

    [[layers]]
    type = "relu"

>>> spec = parse_spec({"input_shape": [4], "layers": [{"type": "linear", "out_features": 2}]})
>>> len(spec.build())
1
"""
from __future__ import annotations

import contextlib
import importlib.util
import inspect
import json
import math
import os
from dataclasses import dataclass, field

from graphc.ir import GraphcError, SpecError

from .nn.module import Module

TOP_KEYS = {"name", "input_shape", "layers", "loss", "optimizer", "batch_size", "dtype",
            "seed"}
ACTIVATIONS = {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "Tanh", "softplus": "Softplus",
               "silu": "SiLU", "mish": "Mish", "logsigmoid": "LogSigmoid",
               "softsign": "Softsign", "relu6": "ReLU6", "selu": "SELU"}
# layer type -> {field: (checker, default)}; REQUIRED marks fields with no default
REQUIRED = object()
# Upper bound on any size and on the elements of one sample's activations or one layer's
# weights: larger values are typos (or overflow int64 index arithmetic), not models.
MAX_SIZE = 2**31 - 1


def _pos_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def _nonneg_int(v):
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _pair(check):
    def ok(v):
        if isinstance(v, (list, tuple)):
            return len(v) == 2 and all(check(x) for x in v)
        return check(v)
    return ok


def _prob(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1


def _bool(v):
    return isinstance(v, bool)


def _num(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _pos_num(v):
    return _num(v) and v > 0


def _int(v):
    return isinstance(v, int) and not isinstance(v, bool)


FIELDS = {
    "linear": {"out_features": (_pos_int, REQUIRED, "a positive int"),
               "in_features": (_pos_int, None, "a positive int"),
               "bias": (_bool, True, "true or false")},
    "flatten": {"start_dim": (_int, 1, "an int")},
    "conv2d": {"out_channels": (_pos_int, REQUIRED, "a positive int"),
               "kernel_size": (_pair(_pos_int), REQUIRED, "a positive int or [h, w]"),
               "stride": (_pair(_pos_int), 1, "a positive int or [h, w]"),
               "padding": (_pair(_nonneg_int), 0, "an int >= 0 or [h, w]"),
               "in_channels": (_pos_int, None, "a positive int")},
    "max_pool2d": {"kernel_size": (_pair(_pos_int), REQUIRED, "a positive int or [h, w]"),
                   "stride": (_pair(_pos_int), None, "a positive int or [h, w]"),
                   "padding": (_pair(_nonneg_int), 0, "an int >= 0 or [h, w]")},
    "batch_norm": {"num_features": (_pos_int, None, "a positive int")},
    "dropout": {"p": (_prob, 0.5, "a number in [0, 1)")},
    "layer_norm": {"eps": (_pos_num, 1e-5, "a positive number")},
    "leaky_relu": {"negative_slope": (_num, 0.01, "a number")},
    "elu": {"alpha": (_num, 1.0, "a number")},
    "hardtanh": {"min_val": (_num, -1.0, "a number"), "max_val": (_num, 1.0, "a number")},
    "gelu": {"approximate": (lambda v: v in ("none", "tanh"), "none", '"none" or "tanh"')},
    "residual": {"layers": (lambda v: isinstance(v, list) and len(v) > 0, REQUIRED,
                            "a non-empty list of layers")},
}
FIELDS["avg_pool2d"] = FIELDS["max_pool2d"]
for _a in ACTIVATIONS:
    FIELDS[_a] = {}
LAYER_TYPES = sorted(FIELDS)


def _key(k):
    """A key for an error message's path: as written when it is a plain name, else its
    repr (a key holding a newline must not break the one-line message)."""
    return k if isinstance(k, str) and k.isidentifier() else repr(k)


def _hw(v):
    return tuple(v) if isinstance(v, (list, tuple)) else (v, v)


def _fmt(shape):
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


@dataclass
class ModelSpec:
    """A validated spec. ``build()`` makes the module; ``compile()`` the CompiledModel."""

    source: str
    name: str
    input_shape: tuple
    layers: list = field(default_factory=list)
    loss: str | None = "cross_entropy"
    optimizer: dict = field(default_factory=lambda: {"type": "sgd", "lr": 0.1})
    batch_size: int = 32
    dtype: str = "float32"
    seed: int = 0
    module_factory: object = None   # for file.py:ClassName specs

    def where(self, path=""):
        return f"{self.source}: {path}: " if path else f"{self.source}: "

    # ------------------------------------------------------------ building
    def build(self):
        """A fresh gc.nn module with deterministic initial parameters (``seed``)."""
        import graphc as gc
        gc.manual_seed(self.seed)
        if self.module_factory is not None:
            with self._user_code("building it"):
                return self.module_factory()
        modules, shape = _build_layers(self, self.layers, tuple(self.input_shape), "layers")
        return gc.nn.Sequential(*modules)

    def make_optimizer(self):
        import graphc as gc
        opts = dict(self.optimizer)
        kind = opts.pop("type")
        cls = _optimizer_class(kind)
        if cls is None:
            raise SpecError(f"{self.where('optimizer.type')}unknown optimizer {kind!r}; "
                            f"available: {', '.join(_optimizers())}")
        params = inspect.signature(cls).parameters
        for k, v in opts.items():
            if k not in params:
                raise SpecError(f"{self.where(f'optimizer.{_key(k)}')}unknown option {k!r} for "
                                f"{cls.__name__}; known: {', '.join(params)}")
            # the optimizers' own checks compare numbers: give them numbers of the kind
            # their defaults have (a bool for a bool flag, a pair for betas)
            default = params[k].default
            if isinstance(default, bool):
                ok, what = isinstance(v, bool), "true or false"
            elif isinstance(default, tuple):
                ok = (isinstance(v, list) and len(v) == len(default)
                      and all(_finite_number(x) for x in v))
                what = f"a list of {len(default)} finite numbers"
            else:
                ok, what = _finite_number(v), "a finite number"
            if not ok:
                raise SpecError(f"{self.where(f'optimizer.{k}')}must be {what}, got {v!r}")
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in opts.items()})
        except (gc.GraphcError, TypeError, ValueError, OverflowError) as exc:
            raise SpecError(f"{self.where('optimizer')}{exc}") from None

    def compile(self, target="cpu", fuse=True, with_optimizer=True):
        """``gc.compile`` of this spec (loss and optimizer included when set)."""
        import graphc as gc
        opt = self.make_optimizer() if (with_optimizer and self.loss) else None
        module = self.build()
        with self._user_code("tracing its forward"):
            return gc.compile(module, input_shape=(None, *self.input_shape), loss=self.loss,
                              optimizer=opt, target=target, fuse=fuse, dtype=self.dtype)

    @contextlib.contextmanager
    def _user_code(self, doing):
        """Errors name the spec: graphc's own errors get its path as a prefix; for a
        ``file.py:Class`` spec anything else the user's class raises says what failed."""
        try:
            yield
        except SpecError:
            raise
        except GraphcError as exc:
            if str(exc).startswith(self.source):
                raise
            raise type(exc)(f"{self.source}: {exc}") from None
        except Exception as exc:   # the user's __init__ or forward raised
            if self.module_factory is None:
                raise                  # a layer spec's modules are graphc's own code
            raise SpecError(f"{self.source}: {doing} failed: {type(exc).__name__}: "
                            f"{exc}") from None

    def output_shape(self):
        if self.module_factory is not None:
            return None
        return _build_layers(self, self.layers, tuple(self.input_shape), "layers",
                             check_only=True)[1]


def _finite_number(v):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:   # an int too large for a float
        return False


def _optimizers():
    import graphc as gc
    return sorted({n.lower() for n, c in vars(gc.optim).items()
                  if isinstance(c, type) and issubclass(c, gc.optim.Optimizer)
                  and c is not gc.optim.Optimizer})


def _optimizer_class(kind):
    import graphc as gc
    for n, c in vars(gc.optim).items():
        if (isinstance(c, type) and issubclass(c, gc.optim.Optimizer)
                and c is not gc.optim.Optimizer and n.lower() == str(kind).lower()):
            return c
    return None


def _nn_class(spec, path, name):
    import graphc as gc
    cls = getattr(gc.nn, name, None)
    if cls is None:
        raise SpecError(f"{spec.where(path)}gc.nn.{name} is not available in this build "
                        f"of graphc")
    return cls


def _check_layer(spec, layer, path):
    if not isinstance(layer, dict):
        raise SpecError(f"{spec.where(path)}a layer must be a table with a 'type', got "
                        f"{layer!r}")
    kind = layer.get("type")
    if kind is None:
        raise SpecError(f"{spec.where(path)}missing field 'type' (one of "
                        f"{', '.join(LAYER_TYPES)})")
    if not isinstance(kind, str) or kind not in FIELDS:   # a list is unhashable: check type
        raise SpecError(f"{spec.where(path + '.type')}unknown layer type {kind!r}; known: "
                        f"{', '.join(LAYER_TYPES)}")
    fields = FIELDS[kind]
    out = {}
    for k, v in layer.items():
        if k == "type":
            continue
        if k not in fields:
            known = ", ".join(fields) or "none"
            raise SpecError(f"{spec.where(f'{path}.{_key(k)}')}unknown field {k!r} for a {kind} "
                            f"layer; known fields: {known}")
        check, _, what = fields[k]
        if v is not None and not check(v):
            raise SpecError(f"{spec.where(f'{path}.{k}')}must be {what}, got {v!r}")
        if any(abs(x) > MAX_SIZE for x in _ints(v)):
            raise SpecError(f"{spec.where(f'{path}.{k}')}{v!r} is too large (at most "
                            f"{MAX_SIZE})")
    for k, (_, default, _) in fields.items():
        if layer.get(k) is not None:     # JSON null means "the default", not a value
            out[k] = layer[k]
        elif default is REQUIRED:
            raise SpecError(f"{spec.where(path)}a {kind} layer needs field {k!r}")
        else:
            out[k] = default
    return kind, out


def _ints(v):
    """The ints in a field value (a number or an [h, w] pair)."""
    vals = v if isinstance(v, (list, tuple)) else [v]
    return [x for x in vals if isinstance(x, int) and not isinstance(x, bool)]


def _build_layers(spec, layers, shape, path, check_only=False):
    """(modules, output shape without batch); shapes are checked layer by layer."""
    modules = []
    for i, layer in enumerate(layers):
        p = f"{path}[{i}]"
        kind, f = _check_layer(spec, layer, p)
        in_shape = shape

        def bad(msg):
            return SpecError(f"{spec.where(p)}({kind}) {msg}")

        def make(cls_name, *args, **kw):
            if check_only:
                return None
            return _nn_class(spec, p, cls_name)(*args, **kw)

        if kind == "linear":
            if len(shape) != 1:
                raise bad(f"needs a flat input, got shape {_fmt(shape)}; add a flatten layer")
            if f["in_features"] is not None and f["in_features"] != shape[0]:
                raise bad(f"in_features = {f['in_features']} but the input has {shape[0]} "
                          f"features")
            modules.append(make("Linear", shape[0], f["out_features"], bias=f["bias"]))
            shape = (f["out_features"],)
        elif kind in ACTIVATIONS:
            modules.append(make(ACTIVATIONS[kind]))
        elif kind == "flatten":
            sd = f["start_dim"]
            full = (None, *shape)
            sd = sd if sd >= 0 else len(full) + sd
            if not 1 <= sd <= len(shape):
                raise bad(f"start_dim {f['start_dim']} is out of range for input "
                          f"(N, {', '.join(map(str, shape))})")
            modules.append(make("Flatten", start_dim=f["start_dim"]))
            shape = shape[:sd - 1] + (math.prod(shape[sd - 1:]),)
        elif kind == "conv2d":
            if len(shape) != 3:
                raise bad(f"needs input (C, H, W), got shape {_fmt(shape)}")
            c, h, w = shape
            if f["in_channels"] is not None and f["in_channels"] != c:
                raise bad(f"in_channels = {f['in_channels']} but the input has {c} channels")
            (kh, kw), (sh, sw), (ph, pw) = _hw(f["kernel_size"]), _hw(f["stride"]), \
                _hw(f["padding"])
            oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            if oh <= 0 or ow <= 0:
                raise bad(f"kernel {kh}x{kw} does not fit input {_fmt(shape)} with padding "
                          f"{ph}x{pw}")
            modules.append(make("Conv2d", c, f["out_channels"], f["kernel_size"],
                                stride=f["stride"], padding=f["padding"]))
            shape = (f["out_channels"], oh, ow)
        elif kind in ("max_pool2d", "avg_pool2d"):
            if len(shape) != 3:
                raise bad(f"needs input (C, H, W), got shape {_fmt(shape)}")
            c, h, w = shape
            stride = f["stride"] if f["stride"] is not None else f["kernel_size"]
            (kh, kw), (sh, sw), (ph, pw) = _hw(f["kernel_size"]), _hw(stride), _hw(f["padding"])
            oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
            if oh <= 0 or ow <= 0:
                raise bad(f"window {kh}x{kw} does not fit input {_fmt(shape)}")
            name = "MaxPool2d" if kind == "max_pool2d" else "AvgPool2d"
            modules.append(make(name, f["kernel_size"], stride=f["stride"],
                                padding=f["padding"]))
            shape = (c, oh, ow)
        elif kind == "batch_norm":
            if len(shape) not in (1, 3):
                raise bad(f"needs input (C,) or (C, H, W), got shape {_fmt(shape)}")
            if f["num_features"] is not None and f["num_features"] != shape[0]:
                raise bad(f"num_features = {f['num_features']} but the input has "
                          f"{shape[0]}")
            modules.append(make("BatchNorm1d" if len(shape) == 1 else "BatchNorm2d", shape[0]))
        elif kind == "dropout":
            modules.append(make("Dropout", f["p"]))
        elif kind == "layer_norm":             # over the features (C,) or (C, H, W)
            modules.append(make("LayerNorm", shape, eps=f["eps"]))
        elif kind == "leaky_relu":
            modules.append(make("LeakyReLU", f["negative_slope"]))
        elif kind == "elu":
            modules.append(make("ELU", f["alpha"]))
        elif kind == "hardtanh":
            if f["min_val"] > f["max_val"]:
                raise bad(f"min_val = {f['min_val']} is greater than max_val = {f['max_val']}")
            modules.append(make("Hardtanh", f["min_val"], f["max_val"]))
        elif kind == "gelu":
            modules.append(make("GELU", f["approximate"]))
        elif kind == "residual":
            body, out = _build_layers(spec, f["layers"], shape, f"{p}.layers", check_only)
            if out != shape:
                raise bad(f"body maps {_fmt(shape)} to {_fmt(out)}; a residual block must "
                          f"keep the shape")
            if not check_only:
                import graphc as gc
                modules.append(Residual(gc.nn.Sequential(*body)))
        weights = {"linear": lambda: in_shape[0] * f["out_features"],
                   "conv2d": lambda: (in_shape[0] * f["out_channels"]
                                      * math.prod(_hw(f["kernel_size"])))}.get(kind)
        if math.prod(shape) > MAX_SIZE or (weights is not None and weights() > MAX_SIZE):
            raise bad(f"is too large: output {_fmt(shape)} per sample"
                      + (f", {weights():,} weights" if weights else "")
                      + f" (at most {MAX_SIZE:,} elements)")
    return modules, shape


class Residual(Module):
    """``x + body(x)``: a residual block; the body must keep the shape."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x + self.body(x)


# ---------------------------------------------------------------- reading
def parse_spec(data: dict, source: str = "<spec>") -> ModelSpec:
    """Validate a spec already read into a dict (from TOML or JSON)."""
    where = f"{source}: "
    if not isinstance(data, dict):
        raise SpecError(f"{where}a spec is a table of keys, got {type(data).__name__}")
    unknown = sorted(set(data) - TOP_KEYS)
    if unknown:
        raise SpecError(f"{where}{_key(unknown[0])}: unknown key {unknown[0]!r}; known keys: "
                        f"{', '.join(sorted(TOP_KEYS))}")
    if "input_shape" not in data:
        raise SpecError(f"{where}missing key 'input_shape' (the shape of one sample, e.g. [64])")
    shape = data["input_shape"]
    if not (isinstance(shape, list) and shape and all(_pos_int(d) for d in shape)
            and math.prod(shape) <= MAX_SIZE):
        raise SpecError(f"{where}input_shape: must be a list of positive ints (one sample, no "
                        f"batch dimension), got {shape!r}")
    layers = data.get("layers")
    if not isinstance(layers, list) or not layers:
        raise SpecError(f"{where}layers: must be a non-empty list of layer tables")
    from graphc.functional import LOSSES
    loss = data.get("loss", "cross_entropy")
    if loss is not None and (not isinstance(loss, str) or loss not in LOSSES):
        raise SpecError(f"{where}loss: unknown loss {loss!r}; known: "
                        f"{', '.join(sorted(LOSSES))}")
    dtype = data.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise SpecError(f"{where}dtype: must be 'float32' or 'float64', got {dtype!r}")
    batch = data.get("batch_size", 32)
    if not (_pos_int(batch) and batch <= MAX_SIZE):
        raise SpecError(f"{where}batch_size: must be a positive int, got {batch!r}")
    seed = data.get("seed", 0)
    if not _nonneg_int(seed):
        raise SpecError(f"{where}seed: must be an int >= 0, got {seed!r}")
    opt = data.get("optimizer", {"type": "sgd", "lr": 0.1})
    if not isinstance(opt, dict) or "type" not in opt:
        raise SpecError(f"{where}optimizer: must be a table with a 'type', e.g. "
                        f"{{ type = \"sgd\", lr = 0.1 }}, got {opt!r}")
    name = data.get("name", os.path.splitext(os.path.basename(source))[0])
    if not isinstance(name, str):
        raise SpecError(f"{where}name: must be a string, got {name!r}")
    spec = ModelSpec(source, name, tuple(shape), layers, loss, dict(opt), batch, dtype, seed)
    spec.output_shape()     # validates every layer and the shapes between them
    spec.make_optimizer()   # validates the optimizer options
    return spec


def _read_file(path):
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if path.endswith(".json"):
        try:
            return json.loads(raw.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            line = getattr(exc, "lineno", "?")
            raise SpecError(f"{path}:{line}: malformed JSON: "
                            f"{getattr(exc, 'msg', exc)}") from None
    if path.endswith(".toml"):
        try:
            import tomllib
        except ModuleNotFoundError:  # Python 3.10
            import tomli as tomllib
        try:
            return tomllib.loads(raw.decode("utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise SpecError(f"{path}: malformed TOML: {exc}") from None
    raise SpecError(f"{path}: unknown spec format; use .toml, .json or file.py:ClassName")


def _load_python(text):
    path, _, cls_name = text.rpartition(":")
    if not os.path.exists(path):
        raise SpecError(f"{path}: no such file")
    mod_name = "graphc_spec_" + os.path.splitext(os.path.basename(path))[0]
    try:
        loader = importlib.util.spec_from_file_location(mod_name, path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    except Exception as exc:  # the user's file: report its error in one line
        raise SpecError(f"{path}: importing it failed: {type(exc).__name__}: {exc}") from None
    cls = getattr(module, cls_name, None)
    import graphc as gc
    if not (isinstance(cls, type) and issubclass(cls, gc.nn.Module)):
        raise SpecError(f"{text}: {path} has no gc.nn.Module class named {cls_name!r}")
    data = {"input_shape": _listify(getattr(cls, "input_shape", None)),
            "layers": [{"type": "relu"}]}   # placeholder, validated but unused
    for key in ("loss", "batch_size", "dtype", "optimizer", "seed"):
        if hasattr(cls, key):
            data[key] = getattr(cls, key)
    if data["input_shape"] is None:
        raise SpecError(f"{text}: class {cls_name} needs an 'input_shape' attribute, e.g. "
                        f"input_shape = (64,)")
    spec = parse_spec(data, text)
    spec.name = cls_name
    spec.layers = []
    spec.module_factory = cls
    return spec


def _listify(v):
    return list(v) if isinstance(v, (list, tuple)) else v


def load_spec(path: str) -> ModelSpec:
    """Read and validate a ``.toml``/``.json`` spec or ``file.py:ClassName``.

    >>> spec = load_spec("examples/mlp.toml")     # doctest: +SKIP
    >>> model = spec.compile(fuse=True)           # doctest: +SKIP
    """
    path = os.fspath(path)
    if ".py:" in path:
        return _load_python(path)
    return parse_spec(_read_file(path), path)
