"""Running a test's function in a child process made by fork, with a time limit."""
from __future__ import annotations

import multiprocessing as mp

import pytest


def _call_and_send(target, args, queue):
    queue.put(target(*args))


def run_in_forked_child(target, args, timeout=120):
    """``target(*args)`` in a forked child; returns its result (skips without fork,
    fails the test if the child hangs or dies)."""
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("no fork on this platform")
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_call_and_send, args=(target, args, queue))
    child.start()
    child.join(timeout=timeout)
    if child.is_alive():
        child.kill()
        pytest.fail(f"the forked child running {target.__name__} hung")
    assert child.exitcode == 0, f"the forked child died (exit code {child.exitcode})"
    return queue.get(timeout=5)
