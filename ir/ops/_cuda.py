"""Building blocks for the ops' CUDA templates (``OpDef.cuda_kernel``).

A CUDA template writes the body of one ``@cuda.jit`` kernel through ``ctx.emit`` (the
kernel's parameters are ``ctx.args`` then ``ctx.out``) and sets ``ctx.launch`` to the
host-side ``(blocks, threads)`` expressions the driver launches it with. On the device
every rank-0 value is a 1-element array, indexed ``[0]``. ``ctx.threads`` is the block
size (a power of two), ``ctx.tile`` the matmul tile, ``ctx.nbtype`` the Numba type
name of the output dtype (``float32``), usable in ``cuda.shared.array``.

These helpers only produce text: nothing here imports Numba.

>>> class C:
...     lines = []
...     def emit(self, line): self.lines.append(line)
>>> c = C(); unravel(c, "idx", [("i0", "x.shape[0]"), ("i1", "x.shape[1]")])
>>> c.lines
['idx_r = idx', 'i1 = idx_r % x.shape[1]', 'idx_r = idx_r // x.shape[1]', 'i0 = idx_r']
"""
from __future__ import annotations


def unravel(ctx, flat: str, dims, ind: str = ""):
    """Emit lines splitting ``flat`` into indices: ``dims`` = [(name, extent), ...] outer first."""
    if not dims:
        return
    if len(dims) == 1:
        ctx.emit(f"{ind}{dims[0][0]} = {flat}")
        return
    rem = f"{flat}_r"
    ctx.emit(f"{ind}{rem} = {flat}")
    for name, extent in reversed(dims[1:]):
        ctx.emit(f"{ind}{name} = {rem} % {extent}")
        ctx.emit(f"{ind}{rem} = {rem} // {extent}")
    ctx.emit(f"{ind}{dims[0][0]} = {rem}")


def product(exprs) -> str:
    return " * ".join(exprs) if exprs else "1"


def index(names) -> str:
    """Subscript text; a rank-0 value is a 1-element array on the device."""
    return ", ".join(names) if names else "0"


def grid_stride(ctx, size: str, var: str = "idx", ind: str = ""):
    """Open a grid-stride loop over ``range(size)`` and launch enough blocks for it."""
    ctx.emit(f"{ind}for {var} in range(cuda.grid(1), {size}, cuda.gridsize(1)):")
    ctx.launch = (f"_blocks({size})", str(ctx.threads))


def block_rows(ctx, rows: str, var: str = "row", ind: str = ""):
    """Open a loop giving each block whole rows (block-stride), one block per row."""
    ctx.emit(f"{ind}for {var} in range(cuda.blockIdx.x, {rows}, cuda.gridDim.x):")
    ctx.launch = (f"_rows({rows})", str(ctx.threads))


def shared_scratch(ctx, name: str = "sh"):
    ctx.emit(f"tid = cuda.threadIdx.x")
    ctx.emit(f"{name} = cuda.shared.array({ctx.threads}, {ctx.nbtype})")


def tree_reduce(ctx, acc: str, combine, result: str, ind: str = "", sh: str = "sh"):
    """Shared-memory tree reduction of every thread's ``acc`` into ``result`` (all threads).

    ``combine(a, b)`` gives the expression folding two partial results. Every thread of
    the block must reach this code (it synchronises).
    """
    ctx.emit(f"{ind}{sh}[tid] = {acc}")
    ctx.emit(f"{ind}cuda.syncthreads()")
    ctx.emit(f"{ind}step = {ctx.threads // 2}")
    ctx.emit(f"{ind}while step > 0:")
    ctx.emit(f"{ind}    if tid < step:")
    ctx.emit(f"{ind}        {sh}[tid] = {combine(f'{sh}[tid]', f'{sh}[tid + step]')}")
    ctx.emit(f"{ind}    cuda.syncthreads()")
    ctx.emit(f"{ind}    step //= 2")
    ctx.emit(f"{ind}{result} = {sh}[0]")
    ctx.emit(f"{ind}cuda.syncthreads()   # everyone has read sh[0] before it is reused")


def add(a, b):
    return f"{a} + {b}"


def maximum(a, b):
    """``max`` as a conditional expression: the builtin max() goes through an overload
    that Numba's CUDA target cannot compile ahead of time (checked with compile_ptx).
    A NaN in either operand is the result, as torch.maximum and np.maximum give."""
    return f"({a} if ({a} >= {b}) | ({a} != {a}) else {b})"   # | not or: no branch


def minimum(a, b):
    return f"({a} if ({a} <= {b}) | ({a} != {a}) else {b})"
