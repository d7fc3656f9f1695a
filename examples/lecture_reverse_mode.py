"""The lecture's reverse-mode example: f(x1, x2) = ln x1 + x1 x2 - sin x2 at (2, 5).

Prints the value, both partial derivatives, and the optimized IR of the gradient
(forward trace and the adjoint nodes autodiff added), like the lecture's table.
"""
import numpy as np

import graphc as gc


def f(x1, x2):
    return gc.log(x1) + x1 * x2 - gc.sin(x2)


if __name__ == "__main__":
    value = gc.jit(f)(2.0, 5.0)
    df_dx1, df_dx2 = gc.grad(f, argnums=(0, 1))(2.0, 5.0)
    print(f"f(2, 5)      = {value:.6f}   (ln 2 + 10 - sin 5 = {np.log(2) + 10 - np.sin(5):.6f})")
    print(f"df/dx1(2, 5) = {df_dx1:.6f}   (1/x1 + x2 = 5.5)")
    print(f"df/dx2(2, 5) = {df_dx2:.6f}   (x1 - cos x2 = {2 - np.cos(5):.6f})")
    print()
    print(gc.grad(f, argnums=(0, 1)).lower(2.0, 5.0))
