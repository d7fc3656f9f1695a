"""graphc.codegen: graph -> Numba source -> compiled callables, and the runtime that runs them."""
from .schedule import Kernel, Schedule, build_schedule
from .cpu import emit_cpu_source
from .cache import load_module, cache_dir
from .runtime import Executable, compile_graph

__all__ = ["Kernel", "Schedule", "build_schedule", "emit_cpu_source", "load_module",
           "cache_dir", "Executable", "compile_graph"]
