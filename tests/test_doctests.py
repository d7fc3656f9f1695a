"""Every docstring example in graphc's modules runs and gives what it says."""
import doctest
import importlib
import pkgutil

import pytest

import graphc

PACKAGES = ["graphc", "graphc.nn", "graphc.ir", "graphc.ir.ops", "graphc.passes", "graphc.codegen"]
SKIP = {"graphc.__main__", "graphc.cli"}


def _modules():
    names = []
    for pkg_name in PACKAGES:
        pkg = importlib.import_module(pkg_name)
        names.append(pkg_name)
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.ispkg:
                names.append(f"{pkg_name}.{info.name}")
    return [n for n in dict.fromkeys(names) if n not in SKIP]


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples(name):
    try:
        module = importlib.import_module(name)
    except ImportError as exc:   # optional back ends (numba.cuda) may be absent
        pytest.skip(f"{name}: {exc}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {name}"
