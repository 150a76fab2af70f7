"""The one training loop: a jitted step, a compiled epoch, evaluation, history, many configs at once.

A model is anything with (``models.Model`` is one)

    apply(params, state, x, train, key) -> (out, new_state)
    grad(params, state, x, y, key)      -> (loss, out, grads, new_state)   # by hand, no jax.grad
    loss                                # the name (losses.LOSSES) that both use

``state`` is whatever the model threads through training (batch-norm running statistics);
``key`` feeds dropout. The loss is named once, in the model, so the hand gradient, ``jax.grad``
and the evaluation cannot disagree about it. An epoch is one compiled call: ``lax.scan`` over a
seeded permutation cut into ``n // batch_size`` minibatches; the last partial batch is dropped
(a fresh permutation each epoch means every example is used across epochs). Hyperparameters
given as 1-D arrays train that many configurations in one program (params stacked on a leading
axis), on the same minibatches.
"""
from __future__ import annotations

import functools
import time
from collections.abc import Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxgd import losses, optim, parallel

# How a training step gets its gradient: the model's hand-derived ``grad``; ``jax.grad`` of its
# forward; or ``jax.grad`` through the hand backwards wrapped as custom_vjps (models.Model only).
GRADS = ("hand", "autodiff", "vjp")


def make_grad_fn(model, l2=0.0, grads="hand"):
    """``(params, state, x, y, key) -> (loss, out, grads, new_state)`` of one training step.

    ``grads`` is one of ``GRADS``. ``l2 > 0`` adds ``l2 * sum ||W||^2`` to the loss and
    ``2 l2 W`` to the gradient (weights only; DD2424's cost), unlike the optimizer's weight decay.
    """
    if grads == "hand":
        if getattr(model, "grad", None) is None:
            raise ValueError("this model has no hand-derived gradient; use grads='autodiff'")
        core = model.grad
    elif grads in ("autodiff", "vjp"):
        apply = model.apply if grads == "autodiff" else functools.partial(model.apply, hand_vjp=True)
        loss_fn = losses.get_loss(model.loss)[0]

        def core(params, state, x, y, key):
            def objective(p):
                out, new_state = apply(p, state, x, True, key)
                return loss_fn(out, y), (out, new_state)
            (value, (out, new_state)), g = jax.value_and_grad(objective, has_aux=True)(params)
            return value, out, g, new_state
    else:
        raise ValueError(f"grads must be one of {GRADS}, got {grads!r}")
    if not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2 must be finite and >= 0, got {l2}")
    if not l2:
        return core

    def with_penalty(params, state, x, y, key):
        value, out, g, state = core(params, state, x, y, key)
        g = jax.tree_util.tree_map(jnp.add, g, losses.l2_penalty_grad(params, l2))
        return value + losses.l2_penalty(params, l2), out, g, state
    return with_penalty


def make_epoch(grad_fn, optimizer: optim.Optimizer, batch_size: int, per_step=False, batch_sharding=None,
               augment=None):
    """``epoch(carry, x, y, hparams, key) -> (carry, (mean loss, mean accuracy))`` over one shuffled pass.

    ``carry = (params, opt_state, model_state)``; loss and accuracy are the
    running means over the epoch's minibatches (in training mode), or with ``per_step``
    one value per minibatch. ``batch_sharding`` (a ``NamedSharding``) spreads each minibatch
    over devices (data parallelism; see ``jaxgd.parallel``). ``augment(key, xb)`` (e.g.
    ``jaxgd.augment.flip_crop``) transforms each training minibatch on the device, seeded.
    """
    def epoch(carry, x, y, hparams, key):
        n_batches = x.shape[0] // batch_size
        k_perm, k_steps = jax.random.split(key)
        idx = jax.random.permutation(k_perm, x.shape[0])[: n_batches * batch_size].reshape(n_batches, batch_size)

        def step(carry, inp):
            params, opt_state, mstate = carry
            i, k = inp
            xb, yb = x[i], y[i]
            if augment is not None:
                k_aug, k = jax.random.split(k)
                xb = augment(k_aug, xb)
            if batch_sharding is not None:
                xb, yb = (jax.lax.with_sharding_constraint(v, batch_sharding) for v in (xb, yb))
            value, logits, g, mstate = grad_fn(params, mstate, xb, yb, k)
            params, opt_state = optimizer.update(g, opt_state, params, hparams)
            return (params, opt_state, mstate), (value, losses.accuracy(logits, y[i]))

        carry, (vals, accs) = jax.lax.scan(step, carry, (idx, jax.random.split(k_steps, n_batches)))
        return carry, ((vals, accs) if per_step else (jnp.mean(vals), jnp.mean(accs)))
    return epoch


def predict(model, params, state, x, chunk=256):
    """Eval-mode logits for ``x``, ``chunk`` rows at a time: bounded memory, and on XLA:CPU the
    CNN forward ran 2x faster in chunks of 256 than of 2000 (its im2col columns stay small)."""
    n = x.shape[0]
    if n <= chunk:
        return model.apply(params, state, x, False, None)[0]
    pad = -n % chunk
    xs = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]).reshape((-1, chunk) + x.shape[1:])
    out = jax.lax.map(lambda xb: model.apply(params, state, xb, False, None)[0], xs)
    return out.reshape((-1,) + out.shape[2:])[:n]


def make_eval(model, l2=0.0):
    """``evaluate(params, state, x, y) -> (loss, accuracy)`` in eval mode (loss includes the l2 term)."""
    loss_fn = losses.get_loss(model.loss)[0]

    def evaluate(params, state, x, y):
        logits = predict(model, params, state, x)
        value = loss_fn(logits, y) + (losses.l2_penalty(params, l2) if l2 else 0.0)
        return value, losses.accuracy(logits, y)
    return evaluate


class History(NamedTuple):
    """Per-epoch metrics. With N configs each entry is a list of N-vectors."""
    train_loss: list
    train_acc: list
    val_loss: list
    val_acc: list
    epoch_time: list
    compile_time: float
    diverged_at: Any  # epoch (1-based) of the first non-finite loss per config, or None
    extra: list  # what fit's callback returned after each epoch
    best_epoch: Any = None  # with select=: the epoch (1-based) whose parameters fit returned, per config
    stopped_at: Any = None  # with patience=: the epoch after which a config stopped, per config, or None

    def as_dict(self):
        return {k: (np.asarray(v).tolist() if isinstance(v, list) else v) for k, v in self._asdict().items()}


def _as_device(split):
    x, y = split
    return jnp.asarray(x), jnp.asarray(y)


SELECT = {"val_acc": 1.0, "val_loss": -1.0, "train_acc": 1.0, "train_loss": -1.0}  # metric -> sign (higher is better)


def fit(model, params, train, val=None, *, hparams: optim.SGDHyperparams, epochs: int,
        batch_size: int, seed=0, optimizer="hand", grads="hand", l2=0.0, model_state=None,
        eval_train=False, batch_configs="auto", callback=None, progress=None, mesh=None,
        select=None, patience=None, augment=None, per_config_data=False):
    """Train with minibatch SGD; returns ``(params, model_state, History)``.

    ``train``/``val`` are ``(x, y)`` pairs (moved to the device once).
    ``hparams`` comes from ``optim.sgd_hyperparams``; 1-D hyperparameters train
    one config per entry (``params`` and ``model_state`` stacked on axis 0) in
    one program. ``optimizer`` is ``"hand"``, ``"optax"`` or an ``optim.Optimizer`` (e.g.
    ``optim.sgd(nesterov=True, wd_mask=optim.weights_only)``); ``grads`` is one of ``GRADS``
    (default: the model's hand-derived gradient); the loss is ``model.loss``. ``eval_train`` re-evaluates the whole training
    set after each epoch (eval mode) instead of reporting the epoch's running
    means. ``batch_configs`` says how N configs share the program: ``"vmap"``
    (batched matmuls: fastest on a GPU), ``"map"`` (``lax.map``, one config after
    another inside the program: on XLA:CPU vmapped configs ran slower per config than
    sequential fits, and lax.map as fast; see the bench's ``configs`` ratios
    ``vmap/sequential`` and ``fit default/sequential``), or ``"auto"`` (vmap on
    accelerators, map on CPU).

    Seeds as a dimension: ``seed`` may be one integer per config (batch order, dropout and
    augmentation then differ per config), and with ``per_config_data`` the ``train``/``val``
    arrays carry a leading configs axis too (e.g. one data split per seed).

    Selection: ``select`` (one of ``SELECT``, e.g. ``"val_acc"``) returns each config's
    parameters and model state from its best epoch by that metric (``History.best_epoch``)
    instead of the last; ``patience`` then stops a config after that many epochs without a
    better value: it stops changing (its later metrics are NaN; ``History.stopped_at``) while
    the others go on. ``augment(key, xb)`` transforms training minibatches (never evaluation).

    ``callback(epoch, params, model_state)``, if given, runs after each epoch and
    its return values are kept in ``History.extra``. ``progress(metrics)``, if given, gets
    a dict after each epoch (``epoch`` (1-based), ``epochs``, ``train_loss``, ``train_acc``,
    ``val_loss``, ``val_acc``, ``epoch_time``) to show: ``jaxgd.progress.epoch_logger``
    draws a bar or prints a line; fit itself prints nothing.
    A config whose training loss stops being finite is marked diverged
    (its later numbers are NaN); training stops early once every config has.
    ``mesh`` (``jaxgd.parallel.make_mesh``) spreads the configs (its ``"cfg"`` axis, padded to
    a multiple of it) and each minibatch (its ``"data"`` axis) over devices and hosts; the
    results equal one device's up to float reassociation.
    """
    for what, v in (("epochs", epochs), ("batch size", batch_size)):
        if not _is_int(v) or v < 1:
            raise ValueError(f"{what} must be an integer >= 1, got {v!r}")
    epochs, batch_size = int(epochs), int(batch_size)
    seeds = np.asarray(seed) if not _is_int(seed) and np.ndim(seed) == 1 else None
    if seeds is None and not _is_int(seed) or seeds is not None and not all(_is_int(v) for v in seed):
        raise ValueError(f"seed must be an integer, or one integer per config, got {seed!r}")
    hparams = optim.sgd_hyperparams(*hparams)  # validates hand-built SGDHyperparams too
    n_cfg = None if jnp.ndim(hparams.lr) == 0 else int(hparams.lr.shape[0])
    for what, v in (("seed", seeds), ("per_config_data", per_config_data or None)):
        if v is not None and n_cfg is None:
            raise ValueError(f"{what} per config needs several configs (1-D hyperparameters)")
    if seeds is not None and len(seeds) != n_cfg:
        raise ValueError(f"{len(seeds)} seeds for {n_cfg} configs")
    if select is not None and select not in SELECT:
        raise ValueError(f"select must be one of {list(SELECT)} or None, got {select!r}")
    if patience is not None and (select is None or not _is_int(patience) or patience < 1):
        raise ValueError(f"patience must be an integer >= 1 and needs select=, got patience={patience!r}, "
                         f"select={select!r}")
    if select is not None and select.startswith("val") and (val is None or not len(val[1])):
        raise ValueError(f"select={select!r} needs a validation set")
    _check_labels(model, train[1], "train", per_config_data)
    if val is not None:
        _check_labels(model, val[1], "val", per_config_data)
    if model_state is None and hasattr(model, "empty_state"):
        model_state = model.empty_state()  # a clear error if the model needs its state
    x, y = _as_device(train)
    val = _as_device(val) if val is not None and len(val[1]) else None
    row = 1 if per_config_data else 0  # the examples axis
    if per_config_data and any(a.shape[0] != n_cfg for a in (x, y) + (val or ())):
        raise ValueError(f"per_config_data: train and val arrays need a leading axis of {n_cfg} configs")
    if x.shape[row] != y.shape[row]:
        raise ValueError(f"train x has {x.shape[row]} rows but y has {y.shape[row]}")
    if batch_size > x.shape[row]:
        raise ValueError(f"batch size {batch_size} > {x.shape[row]} training examples")
    opt = optim.get_optimizer(optimizer, schedule=hparams.schedule) if isinstance(optimizer, str) else optimizer
    opt.check(hparams)
    if mesh is not None:
        parallel.check_mesh(mesh)
    n_dev_cfg, n_dev_data = parallel.axis_size(mesh, "cfg"), parallel.axis_size(mesh, "data")
    if batch_size % n_dev_data:
        raise ValueError(f"batch size {batch_size} must be a multiple of the mesh's data axis ({n_dev_data} devices)")
    if n_dev_cfg > 1 and n_cfg is None:
        raise ValueError(f"the mesh's cfg axis spreads configs over {n_dev_cfg} devices, but there is one config: "
                         "give the hyperparameters as 1-D arrays, or use a mesh with cfg=1")

    batch_sharding = NamedSharding(mesh, P("data")) if n_dev_data > 1 else None
    epoch_fn = make_epoch(make_grad_fn(model, l2, grads), opt, batch_size, batch_sharding=batch_sharding,
                          augment=augment)
    eval_fn = make_eval(model, l2)
    if batch_configs not in ("auto", "vmap", "map"):
        raise ValueError(f"batch_configs must be 'auto', 'vmap' or 'map', got {batch_configs!r}")
    if n_cfg is None and batch_configs != "auto":
        raise ValueError(f"batch_configs={batch_configs!r} needs several configs: give the hyperparameters as "
                         "1-D arrays (one entry per config) and params stacked with stack_params")
    base = jax.random.PRNGKey(seed) if seeds is None else jax.vmap(jax.random.PRNGKey)(jnp.asarray(seeds))
    n_run = n_cfg  # configs run, padding included
    if n_cfg is not None:
        if batch_configs == "auto":
            batch_configs = "map" if jax.default_backend() == "cpu" and n_dev_cfg == 1 else "vmap"
        if n_dev_cfg > 1 and batch_configs != "vmap":
            raise ValueError("configs sharded over devices run as one vmapped program: batch_configs must be "
                             "'vmap' or 'auto' with a mesh whose cfg axis is > 1")
        dax, kax = (0 if per_config_data else None), (None if seeds is None else 0)
        if batch_configs == "vmap":
            spmd = "cfg" if n_dev_cfg > 1 else None  # the vmapped axis is the sharded one
            epoch_fn = jax.vmap(epoch_fn, in_axes=(0, dax, dax, 0, kax), spmd_axis_name=spmd)
            eval_fn = jax.vmap(eval_fn, in_axes=(0, 0, dax, dax), spmd_axis_name=spmd)
        else:
            epoch_fn, eval_fn = _map_configs(epoch_fn, eval_fn, dax is not None, kax is not None)
        n_run = n_cfg + (-n_cfg % n_dev_cfg)
    if mesh is not None:  # lay everything out on the mesh (global arrays, across hosts too)
        spec = P("cfg") if n_dev_cfg > 1 else P()
        per_cfg = [params, model_state, hparams] + ([base] if seeds is not None else []) + (
            [x, y] + list(val or ()) if per_config_data else [])
        per_cfg = parallel.put(parallel.pad_configs(per_cfg, n_cfg or 1, n_dev_cfg if n_cfg else 1), mesh, spec)
        params, model_state, hparams = per_cfg[:3]
        rest = per_cfg[3:]
        base = rest.pop(0) if seeds is not None else parallel.put(base, mesh, P())
        if per_config_data:
            x, y, val = rest[0], rest[1], (tuple(rest[2:]) or None)
        else:
            x, y = parallel.put((x, y), mesh, P())
            val = None if val is None else parallel.put(val, mesh, P())
    compiled_init = _cached_init if isinstance(opt.init, Hashable) else _compiled_init
    carry = (params, compiled_init(opt.init, n_cfg is not None)(params), model_state)
    epoch_key = jax.vmap(jax.random.fold_in, in_axes=(0, None)) if seeds is not None else jax.random.fold_in
    t0 = time.perf_counter()
    epoch_fn = jax.jit(epoch_fn).lower(carry, x, y, hparams, epoch_key(base, 0)).compile()
    compile_time = time.perf_counter() - t0
    eval_fn = jax.jit(eval_fn)
    track = _Tracker(() if n_cfg is None else (n_run,), select, patience)
    hist = {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_time")}
    real = (lambda a: a) if n_cfg is None else (lambda a: a[:n_cfg])  # padding dropped from the results
    best = (carry[0], carry[2])
    extra = []
    for e in range(epochs):
        t = time.perf_counter()
        new, (tl, ta) = epoch_fn(carry, x, y, hparams, epoch_key(base, e))
        carry = new if patience is None else _where_configs(jnp.asarray(~track.stopped), new, carry)
        tl, ta = parallel.fetch((tl, ta))  # waits for the epoch
        if eval_train:
            tl, ta = parallel.fetch(eval_fn(carry[0], carry[2], x, y))
        vl = va = np.full(track.shape, np.nan)
        if val is not None:
            vl, va = parallel.fetch(eval_fn(carry[0], carry[2], *val))
        metrics = {"train_loss": tl, "train_acc": ta, "val_loss": vl, "val_acc": va}
        improved, gone = track.update(e, metrics)
        if select is not None and np.any(improved):
            best = _where_configs(jnp.asarray(improved), (carry[0], carry[2]), best)
        for k, v in metrics.items():
            hist[k].append(real(np.where(gone, np.nan, v)))
        hist["epoch_time"].append(time.perf_counter() - t)
        if callback is not None:
            extra.append(callback(e, carry[0], carry[2]))
        if progress is not None:
            progress({"epoch": e + 1, "epochs": epochs, **{k: hist[k][-1] for k in hist}})
        if track.done():
            break
    params_out, state_out = best if select is not None else (carry[0], carry[2])
    if mesh is not None and (n_run != n_cfg or not all(a.is_fully_addressable
                                                       for a in jax.tree_util.tree_leaves((params_out, state_out)))):
        params_out, state_out = jax.tree_util.tree_map(real, parallel.fetch((params_out, state_out)))

    def per_config(a):
        out = [int(v) if v else None for v in np.atleast_1d(real(a))]
        return out if n_cfg else out[0]
    history = History(**hist, compile_time=compile_time, diverged_at=per_config(track.diverged_at), extra=extra,
                      best_epoch=per_config(track.best_epoch) if select else None,
                      stopped_at=per_config(track.stopped_at) if patience else None)
    return params_out, state_out, history


def _compiled_init(init, stacked):
    """An optimizer's ``init`` (vmapped over stacked configs) as one jitted function: run eagerly,
    it compiled one small program per leaf and op."""
    return jax.jit(jax.vmap(init) if stacked else init)


# made once per (hashable) init, so that the next fit finds it compiled: a new jit of the vmap compiles again
_cached_init = functools.lru_cache(maxsize=64)(_compiled_init)


class _Tracker:
    """Per-config bookkeeping of ``fit`` on the host: divergence, the best epoch by the selected
    metric, and patience."""

    def __init__(self, shape, select, patience):
        self.shape, self.select, self.patience = shape, select, patience
        self.diverged = np.zeros(shape, bool)
        self.diverged_at = np.zeros(shape, int)
        self.stopped = np.zeros(shape, bool)
        self.stopped_at = np.zeros(shape, int)
        self.best = np.full(shape, -np.inf)
        self.best_epoch = np.zeros(shape, int)
        self.waited = np.zeros(shape, int)

    def update(self, e, metrics):
        """After epoch ``e`` (0-based): which configs improved, and which were out of the run
        (stopped earlier, or diverged now or before: their metrics are NaN)."""
        was_stopped = self.stopped.copy()
        new = ~np.isfinite(metrics["train_loss"]) & ~self.diverged
        self.diverged_at = np.where(new, e + 1, self.diverged_at)
        self.diverged |= new
        improved = np.zeros(self.shape, bool)
        if self.select is not None:
            v = SELECT[self.select] * np.asarray(metrics[self.select], float)
            improved = np.isfinite(v) & (v > self.best) & ~was_stopped & ~self.diverged
            self.best = np.where(improved, v, self.best)
            self.best_epoch = np.where(improved, e + 1, self.best_epoch)
        if self.patience is not None:
            self.waited = np.where(improved, 0, self.waited + 1)
            now = ~was_stopped & (self.waited >= self.patience)
            self.stopped_at = np.where(now, e + 1, self.stopped_at)
            self.stopped |= now
        return improved, was_stopped | self.diverged

    def done(self) -> bool:
        return bool(np.all(self.diverged | self.stopped))


def _where_configs(mask, new, old):
    """Per config (the leading axis of every leaf; a scalar mask for one config): ``new`` where
    ``mask``, else ``old``."""
    def pick(a, b):
        m = jnp.reshape(mask, mask.shape + (1,) * (a.ndim - mask.ndim))
        return jnp.where(m, a, b)
    return jax.tree_util.tree_map(pick, new, old)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_labels(model, y, split, per_config=False):
    """Integer class labels must lie in [0, classes) (one-hot targets pass as they are): out of
    range, a row would silently drop out of the cross-entropy inside the compiled epoch.
    ``per_config``: ``y`` has a leading configs axis (``fit(per_config_data=True)``)."""
    y = np.asarray(y)
    if per_config:
        y = y.reshape((-1,) + y.shape[2:])
    if getattr(model, "loss", None) != "cross_entropy" or y.ndim != 1:
        return
    shapes = getattr(model, "shapes", None)
    losses.check_labels(y, shapes()[-1][-1] if shapes else None, f"{split} labels")


def _map_configs(epoch_fn, eval_fn, per_config_data=False, per_config_key=False):
    """The vmap signatures of ``fit``, run one config after another with ``lax.map``."""
    def epoch(carry, x, y, hparams, key):
        def one(c):
            carry_i, hp_i, x_i, y_i, k_i = c
            return epoch_fn(carry_i, x if x_i is None else x_i, y if y_i is None else y_i, hp_i,
                            key if k_i is None else k_i)
        data = (x, y) if per_config_data else (None, None)
        return jax.lax.map(one, (carry, hparams, *data, key if per_config_key else None))

    def evaluate(params, state, x, y):
        if per_config_data:
            return jax.lax.map(lambda c: eval_fn(*c), (params, state, x, y))
        return jax.lax.map(lambda ps: eval_fn(ps[0], ps[1], x, y), (params, state))
    return epoch, evaluate


def stack_params(trees):
    """Stack equal-structure pytrees on a new leading axis (the configs axis of a vmapped fit)."""
    return jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees)


def unstack_params(tree, i):
    return jax.tree_util.tree_map(lambda x: x[i], tree)

