"""The bench's sections, each a measurement: ``section(cfg, have_torch) -> {"rows", "ratios"}``
(``SECTION_RUNS``). ``bench`` runs them in order, merges them with sections kept from an earlier
run, and renders the result; what each section measures is listed in ``bench``'s docstring."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxgd import compile_cache, conv, models, optim, parallel, train, xla
from jaxgd.experiments import bench_attention, flax_peers, startup, timing, torch_peers
from jaxgd.experiments.cifar2 import GRID
from jaxgd.experiments.cifar2 import MODEL as MLP
from jaxgd.experiments.cifar2 import SIZES as MLP_SIZES

HP = (0.01, 0.9, 0.001)  # lr, momentum, weight decay of every training loop here


def _mlp_data(n, seed=0):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(kx, (n,) + MLP.in_shape), jax.random.randint(ky, (n,), 0, MLP.shapes()[-1][0])


# ------------------------------------------------------------------------------------------
# mlp_epoch: the CIFAR-2 MLP epoch, four ways


def _mlp_jax_loops(x, y, batch_size, eager=True):
    """``[(row, fn), ...]``: JAX eager (with ``eager``), a jitted step in a Python loop, jaxgd's
    compiled epoch."""
    params, state = MLP.init(jax.random.PRNGKey(0))
    hp = optim.sgd_hyperparams(*HP)
    grad_fn = train.make_grad_fn(MLP, grads="hand")
    opt = optim.HAND_SGD
    n_b = x.shape[0] // batch_size
    idx = jax.random.permutation(jax.random.PRNGKey(1), x.shape[0])[: n_b * batch_size].reshape(n_b, batch_size)

    def step(params, s, xb, yb):
        value, _, g, _ = grad_fn(params, state, xb, yb, None)
        return (*opt.update(g, s, params, hp), value)

    def loop(step_fn):
        def run():
            p, s = params, opt.init(params)
            for i in idx:
                p, s, v = step_fn(p, s, x[i], y[i])
            timing.block(v)

        return run

    flops = MLP.train_flops(n_b * batch_size)
    specs = [({"name": f"JAX eager, bs {batch_size}", "flops": flops}, loop(step))] if eager else []
    t = time.perf_counter()
    jstep = jax.jit(step).lower(params, opt.init(params), x[idx[0]], y[idx[0]]).compile()
    specs.append(
        (
            {
                "name": f"JAX jitted step + Python loop, bs {batch_size}",
                "compile_s": time.perf_counter() - t,
                "flops": flops,
            },
            loop(jstep),
        )
    )
    epoch = train.make_epoch(train.make_step(grad_fn, opt), batch_size)
    carry = (params, opt.init(params), state)
    key = jax.random.PRNGKey(1)
    t = time.perf_counter()
    compiled = jax.jit(epoch).lower(carry, x, y, hp, key).compile()
    specs.append(
        (
            {"name": f"jaxgd compiled epoch, bs {batch_size}", "compile_s": time.perf_counter() - t, "flops": flops},
            timing.training(compiled, carry, x, y, hp, key),
        )
    )
    return specs


def _torch_mlp():
    return torch_peers.mlp(MLP_SIZES)


def bench_mlp_epoch(cfg, have_torch) -> dict:
    x, y = _mlp_data(cfg.n_mlp)
    rows, ratios = [], {}
    for bs in cfg.batch_sizes:
        flops = MLP.train_flops((cfg.n_mlp // bs) * bs)
        specs = _mlp_jax_loops(x, y, bs, cfg.eager) + _peer_rows(
            cfg,
            have_torch,
            f"bs {bs}",
            _torch_mlp,
            torch_peers.tensor,
            lambda: flax_peers.mlp(MLP_SIZES),
            x,
            y,
            bs,
            flops,
        )
        jr = timing.rows(specs, cfg.repeats)
        rows += jr
        t = {r["name"].split(",")[0]: r["median_s"] for r in jr}
        epoch_s = t["jaxgd compiled epoch"]
        ratios[f"jit step / compiled epoch bs{bs}"] = t["JAX jitted step + Python loop"] / epoch_s
        if cfg.eager:
            ratios[f"eager / compiled epoch bs{bs}"] = t["JAX eager"] / epoch_s
        ratios.update(_peer_ratios(epoch_s, jr, f" bs{bs}"))
    return {"rows": rows, "ratios": ratios}


# peer -> the start of its rows' names: the eager PyTorch loop, torch.compile, and flax + optax + jax.grad
PEERS = {"torch": "PyTorch eager", "torch.compile": "PyTorch torch.compile", "flax+optax": "flax + optax"}


def _peer_rows(
    cfg, have_torch, what, make_torch, to_torch, make_flax, x, y, bs, flops, flax_options=("default",)
) -> list:
    """The peers' rows for one epoch of a model: PyTorch eager (``torch_peers.rows``) and with
    ``torch.compile``, and flax + optax compiled with each ``jaxgd.xla`` setting of ``flax_options``;
    each where installed and asked for."""
    specs = []
    if have_torch:
        xt, yt = to_torch(x), torch_peers.long(y)
        specs += torch_peers.rows(what, make_torch, xt, yt, bs, flops, HP)
        if cfg.torch_compile:
            specs.append(torch_peers.compiled_row(what, make_torch, xt, yt, bs, flops, HP))
    if cfg.flax and flax_peers.available():
        specs += [flax_peers.row(what, make_flax(), x, y, bs, HP, flops, options) for options in flax_options]
    return specs


def _peer_ratios(jaxgd_s, rows, suffix) -> dict:
    """``jaxgd/<peer><suffix>``: jaxgd's time over each peer's (its fastest row) among ``rows``."""
    out = {}
    for peer, prefix in PEERS.items():
        ts = [r["median_s"] for r in rows if r["name"].startswith(prefix)]
        if ts:
            out[f"jaxgd/{peer}{suffix}"] = jaxgd_s / min(ts)
    return out


# ------------------------------------------------------------------------------------------
# grad: hand backprop vs jax.grad


def _cnn_data(n, seed=0):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    return jax.random.normal(kx, (n, 28, 28, 1)), jax.random.randint(ky, (n,), 0, 10)


def bench_grad(cfg) -> dict:
    rows, ratios = [], {}
    for what, model, (x, y) in (
        ("MLP", MLP, _mlp_data(64)),
        ("CNN", models.mnist_zoo("cnn"), _cnn_data(cfg.cnn_batch)),
    ):
        params, state = model.init(jax.random.PRNGKey(0))
        n = 50 if what == "MLP" else 10  # gradients per timed run, so dispatch overhead is not what we time
        specs = []
        for how in ("hand", "autodiff"):
            g = jax.jit(train.make_grad_fn(model, grads=how))
            specs.append(
                (
                    {
                        "name": f"{what} {'hand backprop' if how == 'hand' else 'jax.grad'}, one gradient, "
                        f"bs {x.shape[0]}"
                    },
                    lambda g=g, params=params, state=state, x=x, y=y: [
                        timing.block(g(params, state, x, y, None)[2]) for _ in range(n)
                    ],
                )
            )
        pair = timing.rows(specs, cfg.repeats, per=n)
        rows += pair
        ratios[f"hand/jax.grad {what}"] = pair[0]["median_s"] / pair[1]["median_s"]
    return {"rows": rows, "ratios": ratios}


# ------------------------------------------------------------------------------------------
# configs: many configs at once vs one after another


def _grid(cfg):
    """The grid of the configs and scaling sections: ``n_configs`` CIFAR-2 MLP configs (lr from
    0.002 to 0.02) from one init, on ``n_mlp`` random samples."""
    params, _ = MLP.init(jax.random.PRNGKey(0))
    return tuple(np.asarray(a) for a in _mlp_data(cfg.n_mlp)), params, np.geomspace(0.002, 0.02, cfg.n_configs)


def bench_configs(cfg) -> dict:
    (xs, ys), params, lrs = _grid(cfg)
    k = cfg.n_configs
    epochs = cfg.repeats + 1  # the first epoch is the warm-up
    common = dict(epochs=epochs, batch_size=64)  # hand gradients, hand SGD
    rows = []
    stacked = train.stack_params([params] * k)
    hp = optim.sgd_hyperparams(lrs, HP[1], HP[2])
    for mode in ("auto", "vmap", "map"):
        _, _, h = train.fit(MLP, stacked, (xs, ys), hparams=hp, configs=train.Configs(share=mode), **common)
        resolved = mode if mode != "auto" else ("map" if jax.default_backend() == "cpu" else "vmap")
        rows.append(
            {
                "name": f"{k} configs in one program ({mode}{' = ' + resolved if mode == 'auto' else ''}), "
                "per config-epoch",
                **_epoch_times(h, k),
            }
        )
    seq = []
    one = train.compile(MLP, common["batch_size"], hparams=optim.sgd_hyperparams(*HP))  # compiled once for the loop
    for lr in lrs:
        _, _, h = train.fit(one, params, (xs, ys), hparams=optim.sgd_hyperparams(lr, HP[1], HP[2]), epochs=epochs)
        seq.append(_epoch_times(h, 1))
    ts = [statistics.median(s["times_s"]) for s in seq]
    rows.append(
        {
            "name": f"{k} sequential fits, per config-epoch",
            "median_s": statistics.median(ts),
            "min_s": min(ts),
            "max_s": max(ts),
            "times_s": ts,
            "compile_s": sum(s["compile_s"] for s in seq) / k,
        }
    )
    seq_t = rows[-1]["median_s"]
    return {
        "rows": rows,
        "ratios": {
            "fit default/sequential": rows[0]["median_s"] / seq_t,
            "vmap/sequential": rows[1]["median_s"] / seq_t,
            "map/sequential": rows[2]["median_s"] / seq_t,
        },
    }


def _epoch_times(h, per=1) -> dict:
    ts = [t / per for t in h.epoch_time[1:]]  # the first epoch is the warm-up
    return {
        "median_s": statistics.median(ts),
        "min_s": min(ts),
        "max_s": max(ts),
        "times_s": ts,
        "compile_s": h.compile_time,
    }


# ------------------------------------------------------------------------------------------
# scaling: over devices


def scaling_point(devices, cfg) -> list[dict]:
    """With ``devices`` devices: the grid of ``n_configs`` CIFAR-2 MLP configs with its configs
    sharded over them (vmapped at every count, so only the device count changes), and one MNIST
    CNN with each minibatch sharded over them (data parallelism)."""
    devs = jax.devices()[:devices]
    data, params, lrs = _grid(cfg)
    k, epochs = cfg.n_configs, cfg.repeats + 1
    hp = optim.sgd_hyperparams(lrs, HP[1], HP[2])
    _, _, h = train.fit(
        MLP,
        train.stack_params([params] * k),
        data,
        hparams=hp,
        epochs=epochs,
        batch_size=64,
        configs=train.Configs(share="vmap", mesh=parallel.make_mesh(configs=devices, devices=devs)),
    )
    grid = {
        "name": f"{devices} device(s): {k}-config grid epoch, configs sharded",
        "devices": devices,
        **_epoch_times(h),
        "configs_per_s": k / statistics.median(h.epoch_time[1:]),
    }
    cnn = models.mnist_zoo("cnn")
    xc, yc = (np.asarray(a) for a in _cnn_data(cfg.n_cnn))
    params, state = cnn.init(jax.random.PRNGKey(0))
    _, _, h = train.fit(
        cnn,
        params,
        (xc, yc),
        hparams=optim.sgd_hyperparams(*HP),
        epochs=epochs,
        batch_size=cfg.cnn_batch,
        model_state=state,
        configs=train.Configs(mesh=parallel.make_mesh(configs=1, data=devices, devices=devs)),
    )
    n = cfg.n_cnn // cfg.cnn_batch * cfg.cnn_batch
    data = {
        "name": f"{devices} device(s): CNN epoch, minibatches sharded",
        "devices": devices,
        **_epoch_times(h),
        "samples_per_s": n / statistics.median(h.epoch_time[1:]),
    }
    return [grid, data]


def bench_scaling(cfg) -> dict:
    """configs/s and samples/s against the device count. On a CPU each count runs in a process of
    its own with that many forced host devices, which share the machine's cores: this measures
    the sharding's overhead, not a speed-up. On accelerators the real devices are used."""
    rows, forced = [], jax.default_backend() == "cpu"
    for d in cfg.scaling_devices:
        if forced:
            env = {
                **os.environ,
                "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={d}".strip(),
            }
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "jaxgd.experiments.bench_sections",
                    "--scaling-point",
                    str(d),
                    json.dumps(cfg.to_dict()),
                ],
                capture_output=True,
                text=True,
                env=env,
            )
            if r.returncode != 0:
                raise RuntimeError(f"the scaling run with {d} devices failed: {r.stderr[-2000:]}")
            rows += json.loads(r.stdout.splitlines()[-1])
        elif d <= jax.device_count():
            rows += scaling_point(d, cfg)
    grid = [r for r in rows if "configs_per_s" in r]
    data = [r for r in rows if "samples_per_s" in r]
    ratios = {}
    if len(grid) > 1:
        ratios[f"grid configs/s, {grid[-1]['devices']} devices / {grid[0]['devices']}"] = (
            grid[-1]["configs_per_s"] / grid[0]["configs_per_s"]
        )
        ratios[f"CNN samples/s, {data[-1]['devices']} devices / {data[0]['devices']}"] = (
            data[-1]["samples_per_s"] / data[0]["samples_per_s"]
        )
    return {
        "rows": rows,
        "ratios": ratios,
        "forced_cpu_devices": forced,
        "note": (
            "forced CPU devices share the machine's cores: these rows measure the cost of sharding, not a speed-up"
            if forced
            else "real devices"
        ),
    }


# ------------------------------------------------------------------------------------------
# grid: the INF265 grid as one program vs PyTorch one config after another


def bench_grid(cfg, have_torch) -> dict:
    (x, y), params, _ = _grid(cfg)  # the configs section's data and init
    xv, yv = (np.asarray(a) for a in _mlp_data(1000, seed=1))
    grid = list(dict.fromkeys(GRID))  # 18: one config is listed twice, and cifar2 trains it once
    lrs, moms, wds = map(list, zip(*grid))
    hp = optim.sgd_hyperparams(lrs, moms, wds)
    k, e, bs = len(grid), cfg.grid_epochs, 64
    t = time.perf_counter()
    _, _, h = train.fit(MLP, train.stack_params([params] * k), (x, y), (xv, yv), hparams=hp, epochs=e, batch_size=bs)
    timing.block(h.val_acc[-1])
    wall = time.perf_counter() - t
    rows = [
        {
            "name": f"jaxgd: {k} configs x {e} epochs, bs {bs}, one fit, wall incl. compile",
            "median_s": wall,
            "min_s": wall,
            "max_s": wall,
            "times_s": [wall],
            "compile_s": h.compile_time,
            "gflops": MLP.train_flops(k * e * (cfg.n_mlp // bs) * bs) / wall / 1e9,
        }
    ]
    ratios = {"INF265 grid wall s, jaxgd": wall}
    if have_torch:
        m = min(cfg.grid_torch_configs, k)
        xt, yt, xvt, yvt = torch_peers.tensor(x), torch_peers.long(y), torch_peers.tensor(xv), torch_peers.long(yv)
        ts = [torch_peers.time_config(_torch_mlp(), grid[i], xt, yt, xvt, yvt, bs, e) for i in range(m)]
        total = statistics.mean(ts) * k
        rows.append(
            {
                "name": f"PyTorch: {k} configs one after another, {e} epochs each ({m} timed, mean x {k})",
                "median_s": total,
                "min_s": min(ts) * k,
                "max_s": max(ts) * k,
                "times_s": ts,
                "torch_device": torch_peers.device(),
                "gflops": MLP.train_flops(k * e * (cfg.n_mlp // bs) * bs) / total / 1e9,
            }
        )
        ratios["INF265 grid wall s, PyTorch sequential"] = total
        ratios["INF265 grid jaxgd/torch"] = wall / total
    return {"rows": rows, "ratios": ratios}


# ------------------------------------------------------------------------------------------
# cnn_epoch and conv_parts: the MNIST CNN


def _cnn_epoch(model, params, x, y, batch_size, grads="hand", options=None):
    """``(compile_s, fn)``, ``fn`` running one more compiled CNN epoch per call, compiled with the
    ``jaxgd.xla`` setting ``options`` (None: jaxgd's, as ``fit`` compiles)."""
    hp = optim.sgd_hyperparams(*HP)
    epoch = train.make_epoch(train.make_step(train.make_grad_fn(model, grads=grads), optim.HAND_SGD), batch_size)
    carry = (params, optim.sgd_init(params), model.empty_state())
    key = jax.random.PRNGKey(1)
    t = time.perf_counter()
    compiled = xla.jit(epoch, options).lower(carry, x, y, hp, key).compile()
    return time.perf_counter() - t, timing.training(compiled, carry, x, y, hp, key)


# the CNN's convolutions as jaxgd computed them before the measured defaults (im2col forward and dW,
# XLA's default compiler options): (label, mnist_zoo keywords, xla setting)
EARLIER_CNN: tuple[str, dict[str, str], str] = (
    "earlier path: im2col forward and dW",
    {"conv_impl": "im2col", "weight_grad": "im2col"},
    "default",
)


def bench_cnn_epoch(cfg, have_torch) -> dict:
    """jaxgd's default (hand gradients; ``conv2d``'s default forward and weight gradient, compiled
    with ``jaxgd.xla``'s options) first, then the earlier path (``EARLIER_CNN``) on the same data;
    with ``cnn_variants`` also the defaults compiled with XLA's default options (what the options
    alone change), the lax.conv forward, ``jax.grad`` of the im2col forward, and the
    slow ``jax.grad`` of lax.conv on ``n_lax_conv`` samples beside the default on the same
    samples. The peers: PyTorch eager and compiled, and flax with XLA's default options and with
    jaxgd's (the same compiler, so a fair peer)."""
    bs, n, m = cfg.cnn_batch, cfg.n_cnn, cfg.n_lax_conv
    x, y = _cnn_data(n)
    # (key, label, mnist_zoo keywords, grads, samples, xla setting)
    variants = [
        ("default", "hand backprop, jaxgd's conv defaults", {}, "hand", n, None),
        ("earlier", f"hand backprop, {EARLIER_CNN[0]}", EARLIER_CNN[1], "hand", n, EARLIER_CNN[2]),
    ]
    if cfg.cnn_variants:
        variants += [
            ("default, xla=default", "hand backprop, jaxgd's conv defaults", {}, "hand", n, "default"),
            ("lax", "hand backprop, lax.conv forward", {"conv_impl": "lax"}, "hand", n, None),
            ("autodiff", "jax.grad, im2col forward", {"conv_impl": "im2col"}, "autodiff", n, None),
            ("default small", "hand backprop, jaxgd's conv defaults", {}, "hand", m, None),
            ("lax autodiff", "jax.grad, lax.conv forward", {"conv_impl": "lax"}, "autodiff", m, None),
        ]
    specs = {}  # key -> (row, fn)
    for key, label, kw, grads, k, options in variants:
        model = models.mnist_zoo("cnn", **kw)
        params, _ = model.init(jax.random.PRNGKey(0))
        compile_s, fn = _cnn_epoch(model, params, x[:k], y[:k], bs, grads, options)
        specs[key] = (
            {
                "name": f"jaxgd CNN compiled epoch ({label}, xla={xla.setting(options)}), {k} samples bs {bs}",
                "compile_s": compile_s,
                "flops": model.train_flops((k // bs) * bs),
            },
            fn,
        )
    full = [sp for (_, _, _, _, k, _), sp in zip(variants, specs.values()) if k == n]  # interleaved with the peers
    full += _peer_rows(
        cfg,
        have_torch,
        f"CNN, {n} samples bs {bs}",
        torch_peers.cnn,
        torch_peers.nchw,
        flax_peers.cnn,
        x,
        y,
        bs,
        models.mnist_zoo("cnn").train_flops((n // bs) * bs),
        flax_options=("default", "tuned"),
    )
    small = [sp for (_, _, _, _, k, _), sp in zip(variants, specs.values()) if k != n]  # jax.grad of lax.conv: slow
    rows = timing.rows(full, cfg.repeats) + timing.rows(small, cfg.repeats)
    t = {key: next(r["median_s"] for r in rows if r["name"] == row["name"]) for key, (row, _) in specs.items()}
    ratios = {"earlier path/default, hand CNN epoch": t["earlier"] / t["default"]}
    if cfg.cnn_variants:
        ratios["hand/jax.grad CNN epoch"] = t["default"] / t["autodiff"]
        ratios["XLA's default options/jaxgd's, hand CNN epoch"] = t["default, xla=default"] / t["default"]
        ratios["lax.conv/default forward, hand CNN epoch"] = t["lax"] / t["default"]
        ratios["jax.grad of lax.conv / hand, CNN epoch"] = t["lax autodiff"] / t["default small"]
    ratios.update(_peer_ratios(t["default"], rows, " CNN"))
    ratios.update(_peer_ratios(t["earlier"], rows, " CNN, earlier path"))
    return {"rows": rows, "ratios": ratios}


CONV_STEPS = 10  # minibatches per timed run of a conv part (different ones, so nothing is hoisted)


def _conv_parts_of(c_out, b):
    """``[(label, xla setting, part(x, dy, W))]``: the forward, weight gradient and input gradient
    ways timed, each with XLA's default options or jaxgd's (``xla.SETTINGS``)."""
    from jaxgd import layers as L

    fwd = lambda impl: lambda x, dy, W: L.conv2d(c_out, 3, impl).forward({"W": W, "b": b}, {}, x)[0]
    dw = lambda by: lambda x, dy, W: L.conv_weight_grad(x, dy, W.shape, by=by)
    dx = lambda x, dy, W: L.conv_input_grad(dy, W)
    return [
        ("forward, im2col matmul", "default", fwd("im2col")),
        ("forward, lax.conv", "default", fwd("lax")),
        ("forward, lax.conv", "tuned", fwd("lax")),
        ("weight gradient, im2col matmul", "default", dw("im2col")),
        ("weight gradient, one matmul per kernel tap", "default", dw("taps")),
        ("weight gradient, as a convolution", "default", dw("conv")),
        ("weight gradient, as a convolution", "tuned", dw("conv")),
        ("input gradient, lax.conv", "default", dx),
        ("input gradient, lax.conv", "tuned", dx),
    ]


def bench_conv_parts(cfg, have_torch) -> dict:
    """Each 3x3 convolution of ``conv_shapes`` (height = width, c_in, c_out; batch ``cnn_batch``;
    the first is the MNIST CNN's conv2, 85% of its training FLOPs, the others airbench's), part by
    part: each way of the forward, the weight gradient and the input gradient, with XLA's default
    compiler options and with jaxgd's (``_conv_parts_of``), compiled over ``CONV_STEPS`` minibatches
    in one ``lax.scan`` as in an epoch, time per minibatch; then PyTorch's forward, weight gradient
    and input gradient (``aten.convolution_backward``) of the same tensors. The ratios per shape:
    jaxgd's default way (``conv2d``'s defaults, jaxgd's options) over PyTorch, and the earlier
    default (im2col forward and dW, XLA's options) over PyTorch. A part timed alone is not its
    time inside the epoch (other programs around it, other fusions): ``cnn_epoch`` is the verdict."""
    rows, ratios = [], {}
    for h, c_in, c_out in cfg.conv_shapes:
        bs, tag = cfg.cnn_batch, f"{h}x{h} {c_in}->{c_out}"
        kx, kd, kw = jax.random.split(jax.random.PRNGKey(0), 3)
        xs = jax.random.normal(kx, (CONV_STEPS, bs, h, h, c_in))
        dys = jax.random.normal(kd, (CONV_STEPS, bs, h, h, c_out))
        W = jax.random.normal(kw, (3, 3, c_in, c_out)) * 0.05
        flops = 2.0 * 9 * h * h * c_in * c_out * bs

        def scanned(part, options):
            def run(xs, dys, W):
                def step(acc, xd):
                    return acc + jnp.sum(part(xd[0], xd[1], W)), None

                return jax.lax.scan(step, jnp.zeros(()), (xs, dys))[0]

            return xla.jit(run, options)

        specs = [
            (
                {"name": f"conv {tag} {label}, xla={options}, bs {bs}", "flops": flops},
                lambda f=scanned(part, options): timing.block(f(xs, dys, W)),
            )
            for label, options, part in _conv_parts_of(c_out, jnp.zeros((c_out,)))
        ]
        if have_torch:
            import torch

            specs += [
                (
                    {"name": f"conv {tag} {name}, PyTorch {torch.__version__}, bs {bs}", "flops": flops},
                    torch_peers.under(torch.no_grad(), lambda op=op: [op(i) for i in range(CONV_STEPS)]),
                )
                for name, op in torch_peers.conv_parts(xs, dys, W).items()
            ]
        got = timing.rows(specs, cfg.repeats, per=CONV_STEPS)
        rows += got
        if have_torch:
            med = {r["name"]: r["median_s"] for r in got}
            torch_s = {
                part: next(v for k, v in med.items() if k.startswith(f"conv {tag} {part}, PyTorch"))
                for part in ("forward", "weight gradient", "input gradient")
            }
            mine = lambda label, options: med[f"conv {tag} {label}, xla={options}, bs {bs}"]
            default_fwd = "forward, lax.conv" if c_in > conv.IM2COL_MAX_CHANNELS else "forward, im2col matmul"
            for part, now, then in (
                (
                    "forward",
                    mine(default_fwd, "tuned" if "lax" in default_fwd else "default"),
                    mine("forward, im2col matmul", "default"),
                ),
                (
                    "weight gradient",
                    mine("weight gradient, as a convolution", "tuned"),
                    mine("weight gradient, im2col matmul", "default"),
                ),
                (
                    "input gradient",
                    mine("input gradient, lax.conv", "tuned"),
                    mine("input gradient, lax.conv", "default"),
                ),
            ):
                ratios[f"conv {tag} {part} jaxgd/torch"] = now / torch_s[part]
                ratios[f"conv {tag} {part} jaxgd/torch, earlier path"] = then / torch_s[part]
    return {"rows": rows, "ratios": ratios}


# ------------------------------------------------------------------------------------------

# ------------------------------------------------------------------------------------------
# compile_cache: the persistent compilation cache, the same command in fresh processes


def bench_compile_cache(cfg, have_torch=False) -> dict:
    """``cache_command`` (a ``jaxgd`` command line) run in two fresh processes, one after the
    other: with an empty compilation cache (it compiles everything, as with no cache, and fills
    it), then again with that cache (it loads what it can). Each reports the seconds it spent
    getting compiled programs (``jaxgd --compile-report``; ``compile_cache.CompileClock``) and its
    wall time."""
    import tempfile

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, label in enumerate(("empty cache", "warm cache")):
            report = f"{tmp}/report{i}.json"
            t = time.perf_counter()
            r = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "jaxgd",
                    "--compile-cache",
                    f"{tmp}/xla",
                    "--compile-report",
                    report,
                    *cfg.cache_command,
                    "--results",
                    f"{tmp}/results{i}",
                    "--quiet",
                ],
                capture_output=True,
                text=True,
            )
            wall = time.perf_counter() - t
            if r.returncode != 0:
                raise RuntimeError(f"jaxgd {' '.join(cfg.cache_command)} ({label}) failed: {r.stderr[-2000:]}")
            c = json.loads(Path(report).read_text())
            rows.append(
                {
                    "name": f"jaxgd {' '.join(cfg.cache_command)}, a fresh process, {label}: compile s",
                    "median_s": c["compile_s"],
                    "min_s": c["compile_s"],
                    "max_s": c["compile_s"],
                    "times_s": [c["compile_s"]],
                    "wall_s": wall,
                    "programs": c["programs"],
                    "cache_loads": c["cache_loads"],
                    "cache_load_s": c["cache_load_s"],
                    "peak_rss_mb": c.get("peak_rss_mb"),
                }
            )
    cold, warm = rows
    ratios = {
        "compile s, warm cache / empty cache": warm["median_s"] / cold["median_s"],
        "cache_command wall s, empty cache": cold["wall_s"],
        "cache_command wall s, warm cache": warm["wall_s"],
        "cache_command programs, empty cache": cold["programs"],
        "cache_command peak RSS MB": max(cold["peak_rss_mb"] or 0, warm["peak_rss_mb"] or 0),
    }
    return {
        "rows": rows,
        "ratios": ratios,
        "command": list(cfg.cache_command),
        "min_compile_secs": compile_cache.MIN_COMPILE_SECS,
    }


def bench_matmul(cfg, have_torch=False) -> dict:
    return {"rows": [timing.matmul_peak(tuple(cfg.matmul_sizes), cfg.repeats)], "ratios": {}}


# section -> its run(cfg, have_torch); the sections without PyTorch rows ignore have_torch
def bench_airbench_epoch(cfg, have_torch) -> dict:
    """airbench94's network (``models.airbench``), one training epoch of ``n_airbench`` images at its
    batch size 1,024 with its whole recipe (crops, flips, two parameter groups, lookahead): jaxgd's
    compiled epoch on the hand reverse pass (``experiments.airbench.make_crop_epoch``) beside airbench's
    own PyTorch loop (``experiments.airbench_torch``, the pinned copy; eager, as airbench94 runs),
    from the same initial network, interleaved. A second jaxgd row trains the same network with its
    convolutions computed the earlier way (``AIRBENCH_EARLIER``: im2col forward and ``dW``, XLA's
    default compiler options), the same arithmetic up to rounding."""
    from jaxgd.experiments import airbench

    n, bs = cfg.n_airbench, 1024
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int32)
    acfg = airbench.AirbenchConfig.make({"datasets": ["cifar10"]})
    model = models.airbench()
    params, state, x_pad = airbench.init_run(model, acfg, 0, x)
    steps = n // bs
    hp, _ = airbench.hyperparams(acfg, 10 * steps)  # a schedule as long as airbench's 9.9 epochs; all steps active
    opt = airbench.make_optimizer(airbench.roles(model, params))
    carry = (
        params,
        opt.init(params),
        state,
        jax.tree_util.tree_map(jnp.copy, (params, state)),
        jnp.zeros((), jnp.int32),
    )
    args = (x_pad, jnp.asarray(y), hp._replace(whiten_on=jnp.asarray(True)), jnp.asarray(False), jax.random.PRNGKey(1))
    flops = model.train_flops(steps * bs)
    specs = []
    for label, m, options in (
        ("jaxgd airbench epoch", model, None),
        (f"jaxgd airbench epoch, {AIRBENCH_EARLIER[0]}", models.airbench(**AIRBENCH_EARLIER[1]), AIRBENCH_EARLIER[2]),
    ):
        epoch = airbench.make_crop_epoch(
            airbench.make_lookahead_step(m, opt, 10 * steps), bs, steps, 10 * steps, acfg.translate
        )
        t = time.perf_counter()
        compiled = xla.jit(epoch, options).lower(carry, *args).compile()
        specs.append(
            (
                {
                    "name": f"{label} (hand backprop, compiled), {n} images bs {bs}",
                    "compile_s": time.perf_counter() - t,
                    "flops": flops,
                },
                timing.training(compiled, carry, *args),
            )
        )
    if have_torch:
        import torch

        from jaxgd.experiments import airbench_torch as AT

        torch.manual_seed(0)
        net = AT.make_net()
        AT.load_jaxgd(net, params, state)
        trainer = AT.Trainer(net, bs, 10 * steps)
        padded, labels = AT.nchw(np.asarray(x_pad)), torch.tensor(y, dtype=torch.int64)
        count = iter(range(10**9))
        specs.append(
            (
                {
                    "name": f"airbench94 PyTorch epoch (autograd, eager; airbench 0.1.8's loop), {n} images bs {bs}",
                    "flops": flops,
                },
                lambda: AT.train_epoch(trainer, padded, labels, next(count) % 2, bs),
            )
        )
    rows = timing.rows(specs, cfg.repeats)
    ratios = (
        {
            "jaxgd/airbench PyTorch epoch": rows[0]["median_s"] / rows[2]["median_s"],
            f"jaxgd ({AIRBENCH_EARLIER[0]})/airbench PyTorch epoch": rows[1]["median_s"] / rows[2]["median_s"],
        }
        if have_torch
        else {}
    )
    ratios["earlier path/default, airbench epoch"] = rows[1]["median_s"] / rows[0]["median_s"]
    return {"rows": rows, "ratios": ratios}


# the airbench_epoch section's second jaxgd row: its label, models.airbench's keywords, the xla setting
AIRBENCH_EARLIER: tuple[str, dict[str, Any], str] = (
    EARLIER_CNN[0] + ", XLA's default options",
    {"conv_impl": "im2col", "weight_grad": "im2col"},
    "default",
)


SECTION_RUNS = {
    "matmul": bench_matmul,
    "mlp_epoch": bench_mlp_epoch,
    "grad": lambda cfg, _: bench_grad(cfg),
    "configs": lambda cfg, _: bench_configs(cfg),
    "cnn_epoch": bench_cnn_epoch,
    "conv_parts": bench_conv_parts,
    "scaling": lambda cfg, _: bench_scaling(cfg),
    "compile_cache": bench_compile_cache,
    "startup": startup.bench_startup,
    "airbench_epoch": bench_airbench_epoch,
    "grid": bench_grid,
    "attention": bench_attention.bench_attention,
}


def _bench_config(d):
    from jaxgd.experiments.bench import BenchConfig

    return BenchConfig.make(d)


if __name__ == "__main__" and sys.argv[1:2] == ["--scaling-point"]:  # bench_scaling's child process
    print(json.dumps(scaling_point(int(sys.argv[2]), _bench_config(json.loads(sys.argv[3])))))
