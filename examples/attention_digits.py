"""A small transformer block on scikit-learn's 8x8 digits: each image is a sequence of 8
rows (tokens) of 8 pixels; two-head self-attention with a residual and LayerNorm, a GELU
feed-forward, then a classifier on the mean token. Trained with Adam; prints loss and
test accuracy.

    python examples/attention_digits.py [--epochs 40] [--no-fuse]
"""
import argparse

import numpy as np

import graphc as gc

T, D, HEADS = 8, 8, 2         # tokens (image rows), features per token (pixels), heads


class Block(gc.nn.Module):
    def __init__(self, width=32, classes=10):
        super().__init__()
        self.embed = gc.nn.Linear(D, width)
        self.pos = gc.nn.Parameter(np.zeros((T, width)))      # learned positions
        self.qkv = gc.nn.Linear(width, 3 * width)
        self.proj = gc.nn.Linear(width, width)
        self.norm1, self.norm2 = gc.nn.LayerNorm(width), gc.nn.LayerNorm(width)
        self.ff1, self.ff2 = gc.nn.Linear(width, 2 * width), gc.nn.Linear(2 * width, width)
        self.head = gc.nn.Linear(width, classes)
        self.width = width

    def forward(self, x):
        F, w, dh = gc.nn.functional, self.width, self.width // HEADS
        h = self.embed(x.reshape(-1, T, D)) + self.pos                  # (N, T, w)
        qkv = self.qkv(h)
        heads = []
        for i in range(HEADS):                        # each head: a slice of q, k and v
            q = qkv[..., i * dh:(i + 1) * dh]
            k = qkv[..., w + i * dh:w + (i + 1) * dh]
            v = qkv[..., 2 * w + i * dh:2 * w + (i + 1) * dh]
            att = F.softmax(q @ k.transpose(-2, -1) * (1.0 / np.sqrt(dh)), dim=-1)
            heads.append(att @ v)                                       # (N, T, dh)
        mixed = self.proj(gc.cat(heads, dim=-1))
        h = self.norm1(h + mixed)
        h = self.norm2(h + self.ff2(F.gelu(self.ff1(h))))
        return self.head(h.mean(1))


def train(epochs=40, batch_size=64, lr=3e-3, fuse=True, seed=0, verbose=True):
    """Returns (test accuracy, per-epoch losses)."""
    gc.manual_seed(seed)
    xtr, ytr, xte, yte = gc.datasets.load_digits(seed=seed)
    model = gc.compile(Block(), input_shape=(None, T * D), loss="cross_entropy",
                       optimizer=gc.optim.Adam(lr=lr), fuse=fuse)
    history = gc.fit(model, xtr, ytr, epochs=epochs, batch_size=batch_size, seed=seed,
                     validation_data=(xte, yte), progress=verbose)
    accuracy = float(np.mean(model(xte).argmax(axis=1) == yte))
    if verbose:
        print(f"test accuracy: {accuracy:.4f} on {len(yte)} held-out digits")
    return accuracy, history.loss


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--no-fuse", action="store_true")
    args = ap.parse_args()
    train(args.epochs, fuse=not args.no_fuse)
