"""The bench's ``attention`` section: memory and time of one attention gradient, four ways in JAX and PyTorch's.

For each sequence length ``n`` of ``attention_lengths`` (``attention_heads`` heads of ``attention_dim``
features, float32, one sequence), the compiled step ``value_and_grad(sum(attention(q, k, v)^2) / 2)`` with
respect to ``q, k, v``:

- ``jax.grad`` of the plain formula ``softmax(q k^T / sqrt(d)) v``;
- ``jax.grad`` of ``jax.nn.dot_product_attention`` (XLA's implementation on this backend);
- jaxgd's plain hand backward (``jaxgd.attention.attention``: keeps ``P``);
- jaxgd's FlashAttention-2 backward (``jaxgd.attention.flash_attention``, its default blocks);
- PyTorch's ``scaled_dot_product_attention`` forward and backward (its CPU kernel), where installed.

Memory is the compiled program's temporary buffers from XLA's ``memory_analysis()`` (exact: what XLA
allocates besides the arguments and outputs, not a noisy reading of the process); time is per step, the rows of
one length timed in interleaved rounds. FLOPs: the plain algorithm's ``12 n^2 d`` per head (two matrix products
forward, four backward), whatever each way recomputes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxgd import attention as att
from jaxgd.experiments import timing


def _plain(q, k, v):
    s = q @ jnp.swapaxes(k, -1, -2) * jnp.asarray(att.default_scale(q.shape[-1]), q.dtype)
    return jax.nn.softmax(s, axis=-1) @ v


def _jax_nn(q, k, v):
    # jax.nn's layout is (batch, tokens, heads, features); ours (heads, tokens, features)
    t = lambda x: x.transpose(1, 0, 2)[None]
    return jax.nn.dot_product_attention(t(q), t(k), t(v))[0].transpose(1, 0, 2)


WAYS = {
    "jax.grad of the formula": _plain,
    "jax.grad of jax.nn.dot_product_attention": _jax_nn,
    "jaxgd plain hand backward": att.attention,
    "jaxgd flash hand backward": att.flash_attention,
}


def _step(f):
    return jax.jit(jax.value_and_grad(lambda q, k, v: jnp.sum(jnp.square(f(q, k, v))) / 2, (0, 1, 2)))


def _torch_step(q, k, v):
    import torch

    tq, tk, tv = (torch.tensor(np.asarray(x))[None].requires_grad_(True) for x in (q, k, v))

    def run():
        for t in (tq, tk, tv):
            t.grad = None
        out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv)
        (out.square().sum() / 2).backward()

    return run


def bench_attention(cfg, have_torch) -> dict:
    """Rows per length (memory, compile and step time), and the ratios the goals are about: flash over
    ``jax.grad``'s temporaries and time at each length, and flash over the fastest other way at the longest."""
    rows, ratios = [], {}
    h, d = cfg.attention_heads, cfg.attention_dim
    for n in cfg.attention_lengths:
        ks = jax.random.split(jax.random.PRNGKey(n), 3)
        q, k, v = (jax.random.normal(key, (h, n, d), jnp.float32) for key in ks)
        flops = 12.0 * n * n * d * h
        specs, temp = [], {}
        for way, f in WAYS.items():
            name = f"attention n={n} {way}"
            compiled, compile_s = timing.compiled(_step(f), q, k, v)
            temp[way] = compiled.memory_analysis().temp_size_in_bytes
            row = {"name": name, "flops": flops, "compile_s": compile_s, "temp_bytes": temp[way]}
            specs.append((row, lambda c=compiled: timing.block(c(q, k, v))))
        if have_torch:
            import torch

            row = {"name": f"attention n={n} PyTorch {torch.__version__} scaled_dot_product_attention", "flops": flops}
            specs.append((row, _torch_step(q, k, v)))
        got = timing.rows(specs, cfg.repeats)
        rows += got
        med = {r["name"].removeprefix(f"attention n={n} "): r["median_s"] for r in got}
        flash, grad = med["jaxgd flash hand backward"], med["jax.grad of the formula"]
        ratios[f"attention n={n} flash/jax.grad temp memory"] = temp["jaxgd flash hand backward"] / max(
            temp["jax.grad of the formula"], 1
        )
        ratios[f"attention n={n} flash/jax.grad time"] = flash / grad
        for way, short in (("jax.grad of the formula", "jax.grad"), ("jaxgd flash hand backward", "flash")):
            ratios[f"attention n={n} {short} temp MB"] = temp[way] / 1e6
        if n == max(cfg.attention_lengths):
            others = [t for w, t in med.items() if not w.startswith("jaxgd flash")]
            ratios[f"attention n={n} flash/fastest other time"] = flash / min(others)
            torch_s = [t for w, t in med.items() if w.startswith("PyTorch")]
            if torch_s:
                ratios[f"attention n={n} flash/PyTorch time"] = flash / torch_s[0]
    return {"rows": rows, "ratios": ratios}
