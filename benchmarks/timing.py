"""Timing helpers shared by the benchmark scripts."""
import statistics
import time


def median_time(fn, reps: int, warmup: int = 3) -> float:
    """Median seconds per call of ``fn`` over ``reps`` calls, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def interleaved_times(fns: dict, reps: int, rounds: int = 5, warmup: int = 2,
                      round_warmup: int = 1) -> dict:
    """Seconds of every timed call of each function ({name: [s, ...]}), measured in
    ``rounds`` alternating rounds of ``reps // rounds`` calls each: on a shared machine the
    load drifts over a minute, and alternating lets every implementation see the same
    drift (the ratios are then fair even when the absolute times move).

    Each round starts with ``round_warmup`` untimed calls: the first call after a switch
    pays for its predecessor (caches refilled with its own data, the previous library's
    OpenMP or Eigen threads still spinning on the cores), which measured 2x slower for
    graphc's 4M-element chain right after PyTorch or JAX, and is not the steady state any
    of them runs in."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    per_round = max(reps // rounds, 1)
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(round_warmup):
                fn()
            for _ in range(per_round):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return times


def interleaved_medians(fns: dict, reps: int, rounds: int = 5, warmup: int = 2,
                        round_warmup: int = 1) -> dict:
    """Median seconds per call of each function over :func:`interleaved_times`."""
    times = interleaved_times(fns, reps, rounds, warmup, round_warmup)
    return {name: statistics.median(ts) for name, ts in times.items()}
