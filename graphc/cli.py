"""The ``graphc`` command line: compile, dump, bench and train model specs.

    graphc compile examples/mlp.toml --emit build/
    graphc dump examples/mlp.toml --graph backward --format dot --out grad.svg
    graphc bench examples/mlp.toml --batch 64 --steps 50
    graphc train examples/mlp.toml --data digits --epochs 20 --out runs/mlp

Every error is one line ``graphc: error: ...`` on stderr and a non-zero exit status;
set ``GRAPHC_DEBUG=1`` to see the traceback of an unexpected one.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time

from graphc.ir import GraphcError

GRAPH_ALIASES = {"backward": "gradients"}


class CliError(Exception):
    """A usage error found after argument parsing (exit status 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but an error is one line and raises instead of printing the usage."""

    def error(self, message):
        raise CliError(message)


def _add_common(p, target=True, fuse=True):
    p.add_argument("spec", metavar="SPEC",
                   help="model spec: a .toml or .json file, or path/to/file.py:ClassName")
    if target:
        p.add_argument("--target", choices=("cpu", "cuda"), default="cpu",
                       help="code generation target (default: cpu)")
    if fuse:
        p.add_argument("--no-fuse", action="store_true",
                       help="turn the fusion pass off (the unfused baseline)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="graphc", description="graphc: compile neural-network model specs "
                     "to native kernels; inspect, benchmark and train them.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser("compile", help="compile a spec; write the generated source and a "
                       "summary", description="Compile SPEC's forward and training-step "
                       "graphs and print a summary: nodes, kernels, parameters and the time "
                       "of each stage.")
    _add_common(p)
    p.add_argument("--emit", metavar="DIR", help="write the generated Numba source "
                   "(forward.py, train.py) and summary.txt to DIR")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("dump", help="print or write the IR (text, DOT or JSON)",
                       description="Print or write one graph's IR after the pass pipeline "
                       "(or after a given pass).")
    _add_common(p, target=False)
    p.add_argument("--graph", default="forward",
                   choices=("forward", "loss", "backward", "gradients", "train"),
                   help="which graph (backward = the gradients graph; default: forward)")
    p.add_argument("--format", default="text", choices=("text", "dot", "json"),
                   help="text (parses back), Graphviz DOT (fusion groups as clusters) or "
                   "networkx node-link JSON (default: text)")
    p.add_argument("--after", metavar="PASS", help="the IR after pass PASS ('input' = as "
                   "traced, 'all' = after every pass; text only); default: after the pipeline")
    p.add_argument("--out", metavar="FILE", help="write to FILE instead of stdout; a DOT "
                   "dump to FILE.svg/.png is rendered with Graphviz's dot when installed")
    p.set_defaults(func=cmd_dump)

    p = sub.add_parser("bench", help="fused vs unfused vs NumPy training steps, one table",
                       description="Time training steps of SPEC fused, unfused and (for "
                       "MLPs) as plain NumPy; print one table.")
    _add_common(p, fuse=False)
    p.add_argument("--batch", type=int, metavar="N", help="batch size (default: the spec's)")
    p.add_argument("--steps", type=int, default=30, metavar="N",
                   help="timed steps per variant (default: 30)")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the random batch (>= 0)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("train", help="train on a bundled data set; checkpoint + loss curve",
                       description="Train SPEC on a data set that ships with the installed "
                       "packages, print test accuracy, write a checkpoint and a loss curve.")
    _add_common(p)
    p.add_argument("--data", required=True, choices=("digits",),
                   help="data set: digits = scikit-learn's 8x8 digits (offline)")
    p.add_argument("--epochs", type=int, default=10, metavar="N", help="default: 10")
    p.add_argument("--batch", type=int, metavar="N", help="batch size (default: the spec's)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/SPEC_NAME)")
    p.set_defaults(func=cmd_train)
    return parser


def _positive(name, value):
    if value is not None and value <= 0:
        raise CliError(f"argument {name}: must be a positive int, got {value}")


def _load(args):
    from graphc.spec import load_spec
    return load_spec(args.spec)


def _fmt_shape(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _write(path, text):
    folder = os.path.dirname(path)
    if folder:
        os.makedirs(folder, exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


# ---------------------------------------------------------------- compile
def cmd_compile(args, out):
    spec = _load(args)
    t0 = time.perf_counter()
    model = spec.compile(target=args.target, fuse=not args.no_fuse)
    build_s = time.perf_counter() - t0
    kinds = ["forward"] + (["train"] if spec.loss else [])
    from graphc.bench import sample_batch
    x, y = sample_batch(spec, model, spec.batch_size)
    rows = []
    for kind in kinds:
        g = model._graph(kind)
        exe = model._exe(kind)
        t1 = time.perf_counter()
        model(x) if kind == "forward" else model.train_step(x, y)   # Numba compiles here
        jit_s = time.perf_counter() - t1
        tm = model.timings
        rows.append((kind, len(g), exe.kernel_count, tm.get(f"trace.{kind}", 0.0),
                     tm.get(f"passes.{kind}", 0.0), exe.timings.get("codegen", 0.0),
                     exe.timings.get("load", 0.0), jit_s,
                     exe))
    n_params = sum(a.size for a in model.parameters().values())
    out_shape = model.output_shape
    lines = [f"spec        {spec.source} ({spec.name})",
             f"model       input {_fmt_shape(('N', *spec.input_shape))} -> "
             f"{_fmt_shape(out_shape)}, {spec.dtype}, {n_params:,} parameters",
             f"target      {args.target}, fusion {'off' if args.no_fuse else 'on'}, "
             f"loss {spec.loss}, optimizer {model.optimizer!r}",
             "",
             f"{'graph':<10}{'nodes':>7}{'kernels':>9}{'trace ms':>10}{'passes ms':>11}"
             f"{'codegen ms':>12}{'load ms':>9}{'jit ms':>9}"]
    for kind, nodes, kernels, tr, ps, cg, ld, jit, _ in rows:
        lines.append(f"{kind:<10}{nodes:>7}{kernels:>9}{tr * 1e3:>10.1f}{ps * 1e3:>11.1f}"
                     f"{cg * 1e3:>12.1f}{ld * 1e3:>9.1f}{jit * 1e3:>9.1f}")
    lines.append(f"total {build_s + sum(r[7] + r[6] + r[5] for r in rows):.2f} s "
                 f"(jit = Numba compiling on the first call; a warm cache makes it small)")
    summary = "\n".join(lines)
    print(summary, file=out)
    for kind, *_, exe in rows:
        where = getattr(exe.module, "__graphc_path__", None)
        if args.emit:
            path = os.path.join(args.emit, f"{kind}.py")
            _write(path, exe.source)
            print(f"wrote {path}", file=out)
        elif where:
            print(f"source of {kind}: {where}", file=out)
    if args.emit:
        path = os.path.join(args.emit, "summary.txt")
        _write(path, summary + "\n")
        print(f"wrote {path}", file=out)
    return 0


# ---------------------------------------------------------------- dump
def _snapshots(model, kind, after):
    """{pass name: IR text} after ``after`` ('all' = every pass, 'input' = traced)."""
    from graphc.pipeline import optimize
    g = model._graph(kind, raw=True)
    _, pm = optimize(g, fuse=model.fuse, snapshot=after)
    names = ["input"] + [r.name for r in pm.records]
    if after != "all" and after not in pm.snapshots:
        raise CliError(f"argument --after: unknown pass {after!r}; one of "
                       f"{', '.join(names + ['all'])}")
    return pm.snapshots if after == "all" else {after: pm.snapshots[after]}


def cmd_dump(args, out):
    from graphc.ir import format_graph, parse_graph, to_dot, to_json
    spec = _load(args)
    kind = GRAPH_ALIASES.get(args.graph, args.graph)
    if kind != "forward" and not spec.loss:
        raise CliError(f"--graph {args.graph} needs a spec with a loss")
    if args.after == "all" and args.format != "text":
        raise CliError("--after all prints every pass's IR as text; use --format text")
    model = spec.compile(fuse=not args.no_fuse, with_optimizer=(kind == "train"))
    if args.after:
        snaps = _snapshots(model, kind, args.after)
        if args.after == "all":
            text = "\n\n".join(f"// after {name}\n{ir}" for name, ir in snaps.items())
            graph = None
        else:
            graph = parse_graph(snaps[args.after], f"<{kind} after {args.after}>")
            text = snaps[args.after]
    else:
        graph = model._graph(kind)
        text = format_graph(graph)
    if args.format == "dot":
        text = to_dot(graph)
    elif args.format == "json":
        text = to_json(graph)
    if not text.endswith("\n"):
        text += "\n"
    if not args.out:
        out.write(text)
        return 0
    ext = os.path.splitext(args.out)[1].lower()
    if args.format == "dot" and ext in (".svg", ".png"):
        dot_path = os.path.splitext(args.out)[0] + ".dot"
        _write(dot_path, text)
        exe = shutil.which("dot")
        if exe is None:
            print(f"wrote {dot_path}; Graphviz's 'dot' is not installed, so {args.out} was "
                  f"not rendered (install graphviz, then: dot -T{ext[1:]} {dot_path} -o "
                  f"{args.out})", file=out)
            return 0
        res = subprocess.run([exe, f"-T{ext[1:]}", dot_path, "-o", args.out],
                             capture_output=True, text=True)
        if res.returncode != 0:
            msg = (res.stderr.strip().splitlines() or ["failed"])[-1]
            raise CliError(f"dot could not render {args.out}: {msg}")
        print(f"wrote {dot_path} and {args.out}", file=out)
        return 0
    _write(args.out, text)
    note = ""
    if args.format == "dot":
        note = ("" if shutil.which("dot") else
                " (Graphviz's 'dot' is not installed; pass --out FILE.svg to render once it is)")
    print(f"wrote {args.out}{note}", file=out)
    return 0


# ---------------------------------------------------------------- bench
def cmd_bench(args, out):
    from graphc.bench import run_bench, format_table
    _positive("--batch", args.batch)
    _positive("--steps", args.steps)
    spec = _load(args)
    if not spec.loss:
        raise CliError("bench times training steps; the spec needs a loss")
    rows = run_bench(spec, batch=args.batch or spec.batch_size, steps=args.steps,
                     target=args.target, seed=args.seed)
    print(f"{spec.name}: training step (forward + backward + {spec.optimizer['type']} "
          f"update), batch {args.batch or spec.batch_size}, {args.steps} steps, "
          f"{spec.dtype}, target {args.target}", file=out)
    print(format_table(rows), file=out)
    return 0


# ---------------------------------------------------------------- train
def cmd_train(args, out):
    from graphc.train import train_spec
    _positive("--epochs", args.epochs)
    _positive("--batch", args.batch)
    spec = _load(args)
    train_spec(spec, data=args.data, epochs=args.epochs, batch=args.batch,
               out_dir=args.out or os.path.join("runs", spec.name), target=args.target,
               fuse=not args.no_fuse, out=out)
    return 0


# ---------------------------------------------------------------- entry point
def _seed(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an int >= 0, got {value}")
    return value


def main(argv=None) -> int:
    """Run ``graphc`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.func(args, sys.stdout)
    except SystemExit as exc:        # --help and argparse's own exits
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except CliError as exc:
        _error(exc)
        return 2
    except GraphcError as exc:
        _error(exc)
        return 1
    except OSError as exc:
        _error(f"{exc.filename + ': ' if exc.filename else ''}{exc.strerror or exc}")
        return 1
    except MemoryError:             # e.g. a batch size the machine cannot hold
        _error("out of memory (try a smaller --batch or smaller layers)")
        return 1
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as exc:  # a bug in graphc: still one line, traceback on request
        if os.environ.get("GRAPHC_DEBUG") == "1":
            raise
        _error(f"internal error: {type(exc).__name__}: {exc} (GRAPHC_DEBUG=1 shows the "
               f"traceback)")
        return 1


def _error(msg):
    text = " ".join(str(msg).split()) or "failed"
    print(f"graphc: error: {text}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
