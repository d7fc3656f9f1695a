"""The on-disk kernel cache: generated source in real files, keyed by content.

The file name is a hash of the source text (which encodes the optimized graph, dtype,
target and flags), plus the Numba and Python versions, so a stale entry can never be
loaded. Writes go to a temporary file that is renamed into place, so concurrent
compiles and interrupted writes never leave a half-written module. Numba's own
``cache=True`` stores machine code beside each file. No global lock is taken.

>>> import os
>>> cache_dir() == (Path(os.environ["GRAPHC_CACHE_DIR"]) if "GRAPHC_CACHE_DIR" in os.environ
...                 else Path.home() / ".cache" / "graphc")
True
"""
from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import pickle
import sys
import tempfile
import threading
from pathlib import Path

import numba

from .numba_start import load_without_refresh

_MODULES: dict = {}
_LOCK = threading.Lock()


def cache_dir() -> Path:
    """``$GRAPHC_CACHE_DIR``, else ``~/.cache/graphc``."""
    root = os.environ.get("GRAPHC_CACHE_DIR")
    path = Path(root) if root else Path.home() / ".cache" / "graphc"
    return path


def source_key(source: str) -> str:
    h = hashlib.sha256()
    h.update(source.encode())
    h.update(f"numba={numba.__version__};python={sys.version_info[:2]}".encode())
    return h.hexdigest()[:24]


def module_version(name: str) -> str:
    """Hash of module ``name``'s source text. Generated modules name it in the comment of
    their import line of that module, so a change to the helpers they call (gemm, the
    fast-math functions) gives them new cache keys.

    >>> len(module_version("graphc.codegen.cache"))
    12
    """
    text = inspect.getsource(sys.modules[name])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _write_atomic(path: Path, text: str):
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _readable_numba_index(index: Path) -> bool:
    """Whether Numba's index ``index`` and every data file it names unpickle cleanly.

    Numba unpickles these on a kernel's first call and lets any error escape, so a
    truncated or garbled file would surface as a raw UnpicklingError/EOFError instead
    of a recompile."""
    try:
        with open(index, "rb") as f:
            pickle.load(f)                       # numba version
            _stamp, overloads = pickle.loads(f.read())
        for name in dict(overloads).values():
            pickle.loads((index.parent / name).read_bytes())
        return True
    except FileNotFoundError:
        return True     # removed meanwhile (or never written): Numba recompiles anyway
    except Exception:   # noqa: BLE001 - anything unreadable is rebuilt
        return False


def numba_cache_folder(path: Path) -> Path:
    """Where Numba caches the kernels of module ``path``: ``__pycache__`` beside it, or,
    when NUMBA_CACHE_DIR is set, the folder Numba derives from the module's folder there."""
    from numba.core import config
    if config.CACHE_DIR:
        from numba.core.caching import UserProvidedCacheLocator
        return Path(config.CACHE_DIR) / UserProvidedCacheLocator.get_suitable_cache_subpath(
            str(path))
    return path.parent / "__pycache__"


def purge_unreadable_numba_cache(path: Path) -> list:
    """Delete Numba's cached index/data files of module ``path`` that cannot be read
    back, so Numba recompiles those kernels; returns the removed paths."""
    removed = []
    pycache = numba_cache_folder(path)
    if not pycache.is_dir():
        return removed
    for index in pycache.glob(f"{path.stem}.*.nbi"):
        if _readable_numba_index(index):
            continue
        prefix = index.name[:-len(".nbi")]
        for f in [index, *pycache.glob(f"{prefix}.*.nbc")]:
            try:
                f.unlink()
                removed.append(f)
            except FileNotFoundError:
                pass
    # data files whose index is gone are unreachable; a garbled one that is still
    # listed was caught above
    return removed


def module_path(source: str, tag: str = "graph") -> Path:
    return cache_dir() / f"{tag}_{source_key(source)}.py"


def load_module(source: str, tag: str = "graph"):
    """Write ``source`` to the cache (unless an identical file is there) and import it."""
    key = source_key(source)
    with _LOCK:
        mod = _MODULES.get(key)
        if mod is not None:
            return mod
        path = cache_dir() / f"{tag}_{key}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            intact = path.read_text() == source
        except (OSError, UnicodeDecodeError):
            intact = False
        if not intact:   # missing, truncated or tampered with: rebuild it
            _write_atomic(path, source)
        spec = importlib.util.spec_from_file_location(f"graphc_generated_{key}", path)
        mod = importlib.util.module_from_spec(spec)
        # Numba's cache pickles references to sibling kernels by module name
        sys.modules[spec.name] = mod
        spec.loader.exec_module(mod)
        # after exec (Numba's data pickles refer to this module), before the first call
        # (when Numba would read them)
        purge_unreadable_numba_cache(path)
        for value in vars(mod).values():      # its own kernels, not those it imports
            if getattr(getattr(value, "py_func", None), "__module__", None) == spec.name:
                load_without_refresh(value)   # a warm start reads machine code only
        mod.__graphc_path__ = str(path)
        _MODULES[key] = mod
        return mod
