"""Runs in its own process (XLA_FLAGS=--xla_force_host_platform_device_count=N is set before JAX
starts) for tests/test_parallel.py; prints one JSON line with what it trained.

    python tests/parallel_worker.py grid N_CONFIGS...  # configs over all devices, and on one device
    python tests/parallel_worker.py data MODEL...      # each minibatch over all devices, and on one
    python tests/parallel_worker.py mesh2d             # 4 configs on a 2 x 4 (cfg x data) mesh, and on one
    python tests/parallel_worker.py multi PROCESS_ID NUM_PROCESSES PORT   # grid 8 over all processes' devices
"""

import json
import sys

import jax
import numpy as np

from jaxgd import models, optim, parallel, train


def _grid_problem(n_cfg, n=256, seed=0):
    """CIFAR-2-shaped: 3072 inputs, 2 classes; a grid of n_cfg SGD configs from one init."""
    model = models.mlp((3072, 64, 32, 2))
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 3072)).astype(np.float32)
    y = (x[:, :10].sum(1) > 0).astype(np.int32)
    params, _ = model.init(jax.random.PRNGKey(0))
    lrs = np.linspace(0.005, 0.05, n_cfg)
    moms = np.resize([0.0, 0.9, 0.5], n_cfg)
    wds = np.resize([0.0, 1e-3], n_cfg)
    hp = optim.sgd_hyperparams(lrs, moms, wds)
    return model, train.stack_params([params] * n_cfg), (x, y), hp


def _out(params, h):
    leaves = [np.asarray(a, np.float64).tolist() for a in jax.tree_util.tree_leaves(params)]
    return {
        "params": leaves,
        "train_loss": np.asarray(h.train_loss, np.float64).tolist(),
        "val_acc": np.asarray(h.val_acc, np.float64).tolist(),
        "devices": jax.device_count(),
    }


def grid(n_cfg, how):
    model, params, data, hp = _grid_problem(n_cfg)
    mesh = parallel.make_mesh(configs=jax.device_count()) if how == "sharded" else None
    p, _, h = train.fit(
        model,
        params,
        data,
        data,
        hparams=hp,
        epochs=2,
        batch_size=32,
        configs=train.Configs(share="vmap" if how == "vmap" else "auto", mesh=mesh),
    )
    return _out(p, h)


def data_parallel(name, how):
    if name == "resnet":  # residual blocks with batch norm: the global batch's statistics in every branch
        model = models.resnet((4, 8, 8), 1, 10, in_shape=(28, 28, 1))
    else:
        model = models.mnist_zoo(*name.split("/"))
    rng = np.random.default_rng(1)
    x = rng.normal(size=(256, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 256).astype(np.int32)
    params, state = model.init(jax.random.PRNGKey(0))
    mesh = parallel.make_mesh(configs=1, data=jax.device_count()) if how == "sharded" else None
    p, s, h = train.fit(
        model,
        params,
        (x, y),
        (x, y),
        hparams=optim.sgd_hyperparams(0.05, 0.9, 5e-4),
        epochs=1,
        batch_size=128,
        model_state=state,
        configs=train.Configs(mesh=mesh),
    )
    return {**_out(p, h), "state": [np.asarray(a, np.float64).tolist() for a in jax.tree_util.tree_leaves(s)]}


def mesh2d():
    model, params, data, hp = _grid_problem(4)
    p, _, h = train.fit(
        model,
        params,
        data,
        data,
        hparams=hp,
        epochs=2,
        batch_size=32,
        configs=train.Configs(mesh=parallel.make_mesh(configs=2, data=4)),
    )
    return _out(p, h)


def multi(pid, nproc, port):
    parallel.initialize(f"localhost:{port}", nproc, pid)
    out = grid(8, "sharded")
    return {**out, "process": jax.process_index(), "processes": jax.process_count()}


if __name__ == "__main__":
    mode, *args = sys.argv[1:]
    if mode == "grid":  # several sizes or models in one process: one start of JAX for them all
        res = {n: {how: grid(int(n), how) for how in ("sharded", "single")} for n in args}
    elif mode == "data":
        res = {m: {how: data_parallel(m, how) for how in ("sharded", "single")} for m in args}
    elif mode == "mesh2d":
        res = {"sharded": mesh2d(), "single": grid(4, "single")}
    else:
        res = {"sharded": multi(int(args[0]), int(args[1]), int(args[2]))}
    if parallel.is_writer():
        print("RESULT " + json.dumps(res))
