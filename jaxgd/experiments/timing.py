"""The bench's timing harness: interleaved rounds, per-repetition rows, the machine's matmul peak.

Every figure is the median (with min and max) of ``repeats`` timed runs after ``warmup`` untimed
ones. The rows that a ratio compares are timed in interleaved rounds (``interleaved``: one run of
each, then again), so that a machine slowing down for a while slows them alike. Nothing here
knows a model: ``jaxgd.experiments.bench_sections`` builds the rows, ``torch_peers`` the PyTorch ones.
"""

from __future__ import annotations

import os
import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def timeit(fn, repeats=5, warmup=1) -> dict:
    """Run ``fn`` (which must block until its work is done) ``warmup`` + ``repeats`` times."""
    return interleaved({"": fn}, repeats, warmup)[""]


def interleaved(fns: dict, repeats=5, warmup=1) -> dict:
    """Time the callables ``{name: fn}`` round-robin: ``warmup`` untimed runs of each, then
    ``repeats`` rounds of one timed run of each; ``{name: timeit-style result}``. A machine that
    slows down for a while (a shared VM does) then slows every row of a comparison alike. (Timed
    one row after another, two runs of this bench on one idle 2-core VM read ``jaxgd/torch CNN``
    as 1.03 and 1.28.)"""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {
        name: {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts), "times_s": ts}
        for name, ts in times.items()
    }


def rows(specs, repeats, per=1) -> list[dict]:
    """Time ``[(row, fn), ...]`` interleaved, ``fn`` doing ``per`` repetitions of what the row
    names; each ``row`` dict (its name and extras, e.g. ``compile_s``) gets its times per
    repetition, and ``gflops`` where it says how many ``flops`` one repetition does."""
    timed = interleaved({row["name"]: fn for row, fn in specs}, repeats)
    out = []
    for row, _ in specs:
        r = {**row, **per_repetition(timed[row["name"]], per)}
        flops = r.pop("flops", None)
        if flops:
            r["gflops"] = flops / r["median_s"] / 1e9
        out.append(r)
    return out


def per_repetition(r, n) -> dict:
    """A ``timeit`` result of ``n`` repetitions of something, per repetition."""
    return {k: (v / n if k != "times_s" else [t / n for t in v]) for k, v in r.items()}


def compiled(jitted, *args):
    """``(jitted.lower(*args).compile(), seconds it took)``: ahead-of-time, so compiling is timed apart."""
    t = time.perf_counter()
    c = jitted.lower(*args).compile()
    return c, time.perf_counter() - t


def block(tree):
    return jax.block_until_ready(tree)


def training(compiled, carry, *args):
    """A callable that runs one more compiled epoch from where the last one stopped, as ``fit`` does
    (re-running from the same carry measured 1.4x slower on XLA:CPU: fresh buffers every call)."""
    state = {"carry": carry}

    def run():
        state["carry"] = block(compiled(state["carry"], *args)[0])

    return run


def device_name() -> str:
    """``cpu-<n>core`` or the accelerator's kind, as a file name (results/bench/<name>.json)."""
    dev = jax.devices()[0]
    name = f"cpu-{os.cpu_count()}core" if dev.platform == "cpu" else f"{dev.platform}-{dev.device_kind}"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def matmul_peak(sizes=(1024, 2048, 4096), repeats=5) -> dict:
    """The fastest of square float32 matmuls (jitted) of the given sizes, in GFLOP/s (2 n^3 / t)."""
    if not sizes:
        raise ValueError("matmul_peak needs at least one size")
    best: dict = {}
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
        f = jax.jit(jnp.matmul)
        r = timeit(lambda: block(f(a, b)), repeats)
        r["gflops"] = 2.0 * n**3 / r["median_s"] / 1e9
        if not best or r["gflops"] > best["gflops"]:
            best = {"name": f"matmul {n}^3 float32 (jit), the fastest of sizes {list(sizes)}", **r}
    return best


def precision_probe() -> dict:
    """Whether this backend runs float32 matmuls and convolutions at full float32 precision or in
    TF32 (as XLA may on NVIDIA GPUs): the relative error of one of each against float64 numpy
    (float32 gives about 1e-7, TF32 about 1e-4 to 1e-3)."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((256, 2048)), rng.standard_normal((2048, 256))
    got = np.asarray(jax.jit(jnp.matmul)(a.astype(np.float32), b.astype(np.float32)), np.float64)
    dot = float(np.linalg.norm(got - a @ b) / np.linalg.norm(a @ b))
    x, w = rng.standard_normal((8, 16, 16, 64)), rng.standard_normal((3, 3, 64, 64))
    conv = lambda x, w: jax.lax.conv_general_dilated(
        x,
        w,
        (1, 1),
        "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    got = np.asarray(jax.jit(conv)(x.astype(np.float32), w.astype(np.float32)), np.float64)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    ref = sum(np.einsum("nhwc,cd->nhwd", xp[:, i : i + 16, j : j + 16], w[i, j]) for i in range(3) for j in range(3))
    cv = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
    return {
        "float32_matmul_rel_error": dot,
        "float32_conv_rel_error": cv,
        "tf32_matmul": dot > 1e-5,
        "tf32_conv": cv > 1e-5,
    }
