"""The weight gradient's contraction alone, on XLA:CPU: how fast is the matrix product itself?

A 3x3 convolution's weight gradient is one matrix product, ``cols^T dy``: ``cols`` the im2col
matrix (``batch * h * w`` rows, ``9 c_in`` columns) and ``dy`` the output gradient (the same rows,
``c_out`` columns), a long contraction into a small result. This times that product with both
operands already in memory (no im2col, no transposes inside the timed program), inside a
``lax.scan`` as an epoch runs it, with jaxgd's compiler options, at the ``conv_parts`` shapes of
``jaxgd bench`` (batch 128), and says what fraction of this machine's float32 matmul peak
(``timing.matmul_peak``: square products) it reaches. PyTorch's weight gradient at the same shapes
is in the bench's ``conv_parts`` rows.

Run: ``python scripts/xla_cpu_dw_dot.py`` (about 2 minutes on 2 cores).
"""

import jax
import jax.numpy as jnp
from jax import lax

from jaxgd import xla
from jaxgd.experiments import timing

STEPS, B = 6, 128
SHAPES = [(14, 32, 64), (32, 64, 64), (16, 64, 256), (8, 256, 256)]  # h, c_in, c_out


def main():
    peak = timing.matmul_peak()["gflops"]
    print(f"jax {jax.__version__}, {timing.device_name()}, matmul peak {peak:.0f} GFLOP/s, options {xla.describe()}")
    for h, c_in, c_out in SHAPES:
        n, k = B * h * h, 9 * c_in
        ka, kb = jax.random.split(jax.random.PRNGKey(0))
        cols, dy = jax.random.normal(ka, (STEPS, n, k)), jax.random.normal(kb, (STEPS, n, c_out))
        gflop = 2 * n * k * c_out / 1e9
        cells = []
        for name, f in (("cols^T dy", lambda a, d: a.T @ d), ("dy^T cols", lambda a, d: d.T @ a)):
            run = xla.jit(lambda A, D, f=f: lax.scan(lambda s, ad: (s + jnp.sum(f(*ad)), None), 0.0, (A, D))[0])
            ms = timing.timeit(lambda: timing.block(run(cols, dy)), repeats=3)["min_s"] / STEPS * 1e3  # best of 3
            cells.append(f"{name} {ms:6.1f} ms ({gflop / ms * 1e3 / peak:.2f} of peak)")
        print(f"{h}x{h} {c_in}->{c_out}: ({n} x {k})^T ({n} x {c_out}), {gflop:.2f} GFLOP: " + ", ".join(cells))


if __name__ == "__main__":
    main()
