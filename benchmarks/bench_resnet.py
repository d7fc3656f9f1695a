"""examples/resnet_digits.py's residual net, one training step: graphc vs PyTorch eager.

stem conv 3x3 (16) + batch norm + relu, a residual block (16 channels, 8x8), a
down-sampling block (32 channels, 4x4, 1x1 projection shortcut), average pool, Linear;
cross-entropy, SGD with momentum; float32, 1x8x8 inputs. Median ms per step at each
batch size, graphc and PyTorch timed in alternating rounds (``timing.py``):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_resnet.py \
        [--batch 32 64 256] [--repeat 40]

PyTorch is compared only if importable. Both run their convolutions on every core:
PyTorch's oneDNN, graphc's kernels in parts of the batch (``ir/ops/conv.py``,
``codegen/parallel.py``; ``GRAPHC_THREADS=1`` makes them serial for comparison).
"""
import argparse
import os
import sys

import numpy as np

import graphc as gc

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, os.pardir, "examples"))
import resnet_digits  # noqa: E402
from bench_lenet import torch_training_step  # noqa: E402
from timing import interleaved_medians  # noqa: E402

LR, MOMENTUM = 0.05, 0.9


def make_graphc(x, y, fuse=True):
    """graphc's compiled training step on (x, y), already called once."""
    gc.manual_seed(0)
    m = gc.compile(resnet_digits.ResNet(), input_shape=(None, 1, 8, 8), loss="cross_entropy",
                   optimizer=gc.optim.SGD(lr=LR, momentum=MOMENTUM), fuse=fuse)
    m.train_step(x, y)

    def step():
        return m.train_step(x, y)
    step.model = m      # for benchmarks/mlp_profile.py --model resnet
    return step


def torch_net():
    """The same network in PyTorch (torch must be importable)."""
    import torch
    nn = torch.nn

    def conv_bn(cin, cout, k, stride):
        return [nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=False),
                nn.BatchNorm2d(cout)]

    class Block(nn.Module):
        def __init__(self, cin, cout, stride=1):
            super().__init__()
            self.body = nn.Sequential(*conv_bn(cin, cout, 3, stride), nn.ReLU(),
                                      *conv_bn(cout, cout, 3, 1))
            self.skip = (nn.Sequential(*conv_bn(cin, cout, 1, stride))
                         if stride != 1 or cin != cout else nn.Identity())

        def forward(self, h):
            return torch.relu(self.body(h) + self.skip(h))

    return nn.Sequential(*conv_bn(1, 16, 3, 1), nn.ReLU(), Block(16, 16), Block(16, 32, 2),
                         nn.AvgPool2d(4), nn.Flatten(), nn.Linear(32, 10))


def make_torch(x, y):
    """The same step in PyTorch eager, or None."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    return torch_training_step(torch_net(), x, y, LR, MOMENTUM)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, nargs="+", default=[32, 64, 256])
    ap.add_argument("--repeat", type=int, default=40)
    args = ap.parse_args()
    print("ResNet-digits training step, float32, median ms in alternating rounds")
    for batch in args.batch:
        rng = np.random.default_rng(batch)
        x = rng.standard_normal((batch, 1, 8, 8)).astype(np.float32)
        y = rng.integers(0, 10, batch)
        steps = {"graphc": make_graphc(x, y)}
        torch_step = make_torch(x, y)
        if torch_step is not None:
            steps["pytorch eager"] = torch_step
        med = interleaved_medians(steps, args.repeat)
        line = f"  batch {batch:4d}: graphc {med['graphc'] * 1e3:7.2f} ms"
        if "pytorch eager" in med:
            line += (f", pytorch eager {med['pytorch eager'] * 1e3:7.2f} ms: graphc "
                     f"{med['pytorch eager'] / med['graphc']:.2f}x eager's speed")
        print(line)


if __name__ == "__main__":
    main()
