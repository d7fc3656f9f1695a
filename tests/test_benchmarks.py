"""The benchmark scripts' own arithmetic (timing rounds, the issue-8 target lines) and the
models they compare."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench  # noqa: E402
from timing import interleaved_medians  # noqa: E402


def test_interleaved_medians_times_only_steady_calls():
    calls = {"a": [], "b": []}
    order = []

    def make(name):
        def fn():
            calls[name].append(len(order))
            order.append(name)
        return fn
    medians = interleaved_medians({"a": make("a"), "b": make("b")}, reps=6, rounds=3,
                                  warmup=2, round_warmup=1)
    assert set(medians) == {"a", "b"}
    # 2 initial warm-up calls each, then 3 rounds of (1 untimed + 2 timed) each
    assert len(calls["a"]) == len(calls["b"]) == 2 + 3 * 3
    # rounds alternate: a's three calls, then b's three
    assert order[4:10] == ["a"] * 3 + ["b"] * 3


def test_target_lines_compute_ratios_from_rows():
    # rows as bench.add makes them: (workload, implementation, ms, samples/s, rate)
    rows = [("MLP b1024", "graphc fused (build 1.0s)", 8.0, 0, ""),
            ("MLP b1024", "jax jit", 10.0, 0, ""),
            ("chain 4M fwd+bwd", "graphc fused (build 0.1s)", 3.0, 0, ""),
            ("chain 4M fwd+bwd", "pytorch compile (build 2s)", 9.0, 0, ""),
            ("chain 4M fwd+bwd", "copy floor, 1 thread (build 0.0s)", 2.0, 0, ""),
            ("chain 4M fwd+bwd", "copy floor, 2 threads (build 0.0s)", 1.0, 0, ""),
            ("chain 4M fwd+bwd", bench.FASTEST_COPY, 0.75, 0, "")]
    peak = bench.mlp_flops(1024) / 8e-3 / 1e9 / 0.9      # graphc at 90% of this peak
    lines = bench.target_lines(rows, peak)
    assert "MLP b1024: graphc fused 1.25x faster than jax jit (target >= 1.1x): met" in lines
    assert (f"MLP b1024: graphc fused at 90.0% of the numpy sgemm peak ({peak:.0f} GFLOP/s "
            "at start-up; target >= 85%): met") in lines
    assert ("chain 4M fwd+bwd: graphc fused 3.00x faster than pytorch compile "
            "(target >= 4.0x): MISSED") in lines
    # judged against the fastest copy call; the faster copy's median is shown beside it
    assert ("chain 4M fwd+bwd: graphc fused 4.00x the fastest copy (0.750 ms; 3.00x the "
            "copy's median, 1.000 ms; target <= 2x): MISSED") in lines
    assert not any("LeNet" in line or "b128" in line for line in lines)


def test_target_lines_prefer_the_peak_timed_in_the_rounds():
    flops = bench.mlp_flops(1024)
    peak_ms = 2 * bench.PEAK_N**3 / 200e9 * 1e3           # 200 GFLOP/s in the rounds
    step_ms = flops / (0.8 * 200e9) * 1e3                  # graphc at 80% of that
    rows = [("MLP b1024", "graphc fused", step_ms, 0, ""),
            ("MLP b1024", bench.PEAK_ROW, peak_ms, 0, "")]
    lines = bench.target_lines(rows, peak_np=1.0)          # start-up figure ignored
    assert lines == ["MLP b1024: graphc fused at 80.0% of the numpy sgemm peak (200 GFLOP/s "
                     "in the rounds; target >= 85%): MISSED"]


def test_bench_resnet_compares_the_same_network():
    torch = pytest.importorskip("torch")
    import graphc as gc
    import bench_resnet
    m = gc.compile(bench_resnet.resnet_digits.ResNet(), input_shape=(None, 1, 8, 8))
    ours = sorted(v.shape for v in m.parameters().values())
    theirs = sorted(tuple(p.shape) for p in bench_resnet.torch_net().parameters())
    assert ours == theirs
    x = torch.zeros((3, 1, 8, 8))
    assert tuple(bench_resnet.torch_net()(x).shape) == m(np.zeros((3, 1, 8, 8), "float32")).shape


def test_mlp_profile_times_each_kernel_alone_and_in_the_step():
    import mlp_profile
    rows, t_run, t_step = mlp_profile.profile(batch=8, reps=2)
    names = [r[0] for r in rows]
    src = bench.graphc_mlp(True).model._exe("train").source
    driver = src.split("\ndef run(", 1)[1]
    assert names and all(f"{n}(" in driver for n in names)
    assert all(alone > 0 and in_step > 0 for _, alone, in_step, _ in rows)
    assert any(flops for *_, flops in rows)          # the matmul kernels' GFLOP/s
    assert t_run > 0 and t_step > 0


def test_numpy_lenet_step_matches_graphcs():
    """The benchmark's plain NumPy LeNet step against graphc's compiled step (float64,
    same initial weights): two steps, every parameter, the losses."""
    import bench_lenet
    import graphc as gc
    gc.manual_seed(0)
    m = gc.compile(bench_lenet.LeNet(), input_shape=(None, 1, 28, 28), loss="cross_entropy",
                   optimizer=gc.optim.SGD(lr=0.01, momentum=0.9), dtype="float64")
    params = {k: v.copy() for k, v in m.parameters().items()}
    step = bench_lenet.numpy_lenet_step(params, lr=0.01, momentum=0.9)
    rng = np.random.default_rng(3)
    x, y = rng.standard_normal((5, 1, 28, 28)), rng.integers(0, 10, 5)
    for _ in range(2):
        np.testing.assert_allclose(step(x, y), m.train_step(x, y), rtol=1e-10)
    for name, want in m.parameters().items():
        np.testing.assert_allclose(params[name], want, rtol=1e-9, atol=1e-12, err_msg=name)
