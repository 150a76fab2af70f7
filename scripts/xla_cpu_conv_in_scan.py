"""A minimal reproduction, for XLA:CPU, of why ``jax.grad`` of a convnet's compiled epoch is slow on a CPU.

A convolution's weight gradient, written as ``jax.vjp`` of ``lax.conv_general_dilated`` writes it (a
convolution whose dimension numbers put the batch in the contracting position), runs far slower
inside a ``lax.scan`` than the same calls unrolled in one ``jax.jit``. The same gradient as a plain
NHWC/HWIO convolution of transposed operands (``jaxgd.conv.conv_weight_grad_as_conv``'s formula)
does not. Also timed: ``jax.grad`` of max pooling (``select-and-scatter``) against the
reshape-and-mask routing of ``jaxgd.layers.MaxPool``'s hand backward.

Run: ``python scripts/xla_cpu_conv_in_scan.py`` (jax only; about a minute on 2 cores). Each line
prints milliseconds per call, the best of 3 runs of ``STEPS`` calls, with XLA's default compiler
options and with ``xla_cpu_experimental_ynn_fusion_type`` set to dots and reductions only (XLA's
Eigen path for convolutions: what ``jaxgd.xla`` passes).
"""

import os
import time

import jax
import jax.numpy as jnp
from jax import lax

B, H, C_IN, C_OUT, STEPS = 128, 14, 32, 64, 10  # the MNIST CNN's second convolution, batch 128
EIGEN = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"}
DN = ("NHWC", "HWIO", "NHWC")


def conv(x, w):
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def dw_as_jax_writes_it(x, dy, w):
    return jax.vjp(lambda w: conv(x, w), w)[1](dy)[0]


def dw_canonical(x, dy, w):  # x as (c_in, h, w, batch) NHWC, dy as (h, w, batch, c_out) HWIO
    out = lax.conv_general_dilated(
        x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), (1, 1), [(1, 1), (1, 1)], dimension_numbers=DN
    )
    return out.transpose(1, 2, 0, 3)


def pool_grad_autodiff(x, dy, w):
    pool = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    return jax.vjp(pool, x)[1](dy[:, ::2, ::2, :C_IN])[0]


def pool_grad_mask(x, dy, w):  # jaxgd's: each window's first maximum found, dy routed by a reshape and a mask
    n, h, ww, c = x.shape
    x6 = x.reshape(n, h // 2, 2, ww // 2, 2, c)
    taps = [x6[:, :, i, :, j, :] for i in range(2) for j in range(2)]
    best, idx = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
    for k in range(1, 4):
        idx, best = jnp.where(taps[k] > best, jnp.int8(k), idx), jnp.maximum(best, taps[k])
    d = dy[:, ::2, ::2, :C_IN]
    where = jnp.arange(4, dtype=jnp.int8).reshape(1, 1, 2, 1, 2, 1)
    return jnp.where(idx[:, :, None, :, None, :] == where, d[:, :, None, :, None, :], 0.0).reshape(x.shape)


def timed(f, *args):
    f(*args).block_until_ready()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        f(*args).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return best / STEPS * 1e3


def main():
    kx, kd, kw = jax.random.split(jax.random.PRNGKey(0), 3)
    xs = jax.random.normal(kx, (STEPS, B, H, H, C_IN))
    dys = jax.random.normal(kd, (STEPS, B, H, H, C_OUT))
    w = jax.random.normal(kw, (3, 3, C_IN, C_OUT))

    def in_scan(part):
        def run(xs, dys, w):
            return lax.scan(lambda acc, xd: (acc + jnp.sum(part(xd[0], xd[1], w)), None), 0.0, (xs, dys))[0]

        return run

    def unrolled(part):
        def run(xs, dys, w):
            return sum(jnp.sum(part(xs[i], dys[i], w)) for i in range(STEPS))

        return run

    with open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    print(
        f"jax {jax.__version__}, jaxlib {jax.lib.__version__}, {jax.devices()[0].device_kind} ({cpu}, "
        f"{os.cpu_count()} cores); batch {B}, {H}x{H}, {C_IN} -> {C_OUT}, "
        f"ms per call (best of 3 runs of {STEPS} calls)"
    )
    for name, part in (
        ("forward conv", lambda x, dy, w: conv(x, w)),
        ("dW as jax.vjp writes it", dw_as_jax_writes_it),
        ("dW canonical operands", dw_canonical),
        ("max-pool dx, jax.vjp", pool_grad_autodiff),
        ("max-pool dx, reshape+mask", pool_grad_mask),
    ):
        cells = []
        for options in (None, EIGEN):
            for loop, how in (("scan", in_scan), ("unrolled", unrolled)):
                ms = timed(jax.jit(how(part), compiler_options=options), xs, dys, w)
                cells.append(f"{loop}{'' if options is None else '+eigen'} {ms:8.1f}")
        print(f"{name:28s} " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
