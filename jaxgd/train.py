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

``fit`` wires the parts, each public and usable alone:

    make_grad_fn(model)            (params, state, x, y, key) -> (loss, logits, grads, state)
    make_step(grad_fn, optimizer)  one minibatch: gradient, then update          (Step)
    make_epoch(step, batch_size)   one lax.scan over a seeded permutation
    share_configs(epoch, evaluate) a leading configs axis: vmap or lax.map       (Configs)
    run_epochs(epoch, evaluate, ...) compile once, then the epoch loop, History  (Monitor, Tracker)

and ``compile(model, batch_size, hparams=...)`` builds them once as a ``Trainer``, a value you hold
and pass to ``fit`` in place of the model: the loop over settings that compiles once.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from jax.typing import ArrayLike

from jaxgd import losses, optim, parallel, xla

if TYPE_CHECKING:
    from jaxgd import models

# How a training step gets its gradient: the model's hand-derived ``grad``; ``jax.grad`` of its
# forward; or ``jax.grad`` through the hand backwards wrapped as custom_vjps (models.Model only).
GRADS = ("hand", "autodiff", "vjp")


def make_grad_fn(model: models.Model, l2: float = 0.0, grads: str = "hand") -> Callable:
    """``(params, state, x, y, key) -> (loss, out, grads, new_state)`` of one training step.

    ``grads`` is one of ``GRADS``. ``l2 > 0`` adds ``l2 * sum ||W||^2`` to the loss and
    ``2 l2 W`` to the gradient (weights only; DD2424's cost), unlike the optimizer's weight decay.
    """
    core: Callable
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


def make_step(
    grad_fn: Callable, optimizer: optim.Optimizer, augment: Callable | None = None, batch_sharding: Any = None
) -> Callable:
    """``step(carry, xb, yb, hparams, key) -> (carry, (loss, accuracy))``: one minibatch's gradient
    and update, ``carry = (params, opt_state, model_state)``.

    ``grad_fn`` is ``make_grad_fn``'s; ``augment(key, xb)`` (e.g. ``jaxgd.augment.flip_crop``)
    transforms the minibatch first, on the device, seeded; ``batch_sharding`` (a ``NamedSharding``)
    spreads it over devices (data parallelism; see ``jaxgd.parallel``). The accuracy is that of the
    training-mode logits the gradient came from.
    """

    def step(carry, xb, yb, hparams, key):
        params, opt_state, mstate = carry
        x_in, y_in = xb, yb
        if augment is not None:
            k_aug, key = jax.random.split(key)
            x_in = augment(k_aug, x_in)
        if batch_sharding is not None:
            x_in, y_in = (jax.lax.with_sharding_constraint(v, batch_sharding) for v in (x_in, y_in))
        value, logits, g, mstate = grad_fn(params, mstate, x_in, y_in, key)
        params, opt_state = optimizer.update(g, opt_state, params, hparams)
        return (params, opt_state, mstate), (value, losses.accuracy(logits, yb))

    return step


def make_epoch(step: Callable, batch_size: int, per_step: bool = False) -> Callable:
    """``epoch(carry, x, y, hparams, key) -> (carry, (mean loss, mean accuracy))``: ``step``
    (``make_step``'s) ``lax.scan``-ned over one seeded permutation of ``x`` cut into
    ``len(x) // batch_size`` minibatches (the last partial one is dropped). Loss and accuracy are
    the running means over the minibatches (training mode), or with ``per_step`` one per minibatch.
    """

    def epoch(carry, x, y, hparams, key):
        n_batches = x.shape[0] // batch_size
        k_perm, k_steps = jax.random.split(key)
        idx = jax.random.permutation(k_perm, x.shape[0])[: n_batches * batch_size].reshape(n_batches, batch_size)

        def body(carry, inp):
            i, k = inp
            return step(carry, x[i], y[i], hparams, k)

        carry, (vals, accs) = jax.lax.scan(body, carry, (idx, jax.random.split(k_steps, n_batches)))
        return carry, ((vals, accs) if per_step else (jnp.mean(vals), jnp.mean(accs)))

    return epoch


def predict(model: models.Model, params: Any, state: Any, x: jax.Array | np.ndarray, chunk: int = 256) -> jax.Array:
    """Eval-mode logits for ``x``, ``chunk`` rows at a time: bounded memory, and on XLA:CPU the
    CNN forward ran 2x faster in chunks of 256 than of 2000 (its im2col columns stay small)."""
    n = x.shape[0]
    if n <= chunk:
        return model.apply(params, state, x, False, None)[0]
    pad = -n % chunk
    xs = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)]).reshape((-1, chunk) + x.shape[1:])
    out = jax.lax.map(lambda xb: model.apply(params, state, xb, False, None)[0], xs)
    return out.reshape((-1,) + out.shape[2:])[:n]


def make_eval(model: models.Model, l2: float = 0.0) -> Callable:
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
    step_loss: Any = None  # with step_losses=: per epoch, every minibatch's training loss (per config)

    def as_dict(self):
        return {k: (np.asarray(v).tolist() if isinstance(v, list) else v) for k, v in self._asdict().items()}


SELECT = {"val_acc": 1.0, "val_loss": -1.0, "train_acc": 1.0, "train_loss": -1.0}  # metric -> sign (higher is better)
SHARE = ("auto", "vmap", "map")  # how the configs of a grid share one program (Configs.share)


@dataclasses.dataclass(frozen=True)
class Step:
    """How ``fit`` turns a minibatch into an update: ``optimizer`` is ``"hand"``, ``"optax"`` or an
    ``optim.Optimizer`` (e.g. ``optim.sgd(nesterov=True, wd_mask=optim.weights_only)``); ``grads``
    one of ``GRADS`` (the default: the model's hand-derived gradient); ``l2`` DD2424's penalty in the
    loss (``make_grad_fn``); ``augment(key, xb)`` (e.g. ``jaxgd.augment.flip_crop``) transforms
    training minibatches on the device, never evaluation."""

    optimizer: Any = "hand"
    grads: str = "hand"
    l2: float = 0.0
    augment: Callable | None = None

    def build(self, model, hparams, batch_sharding=None):
        """``make_step``'s step for ``model``, and the optimizer checked against ``hparams``."""
        opt = self.optimizer
        opt = optim.get_optimizer(opt, schedule=hparams.schedule, hparams=hparams) if isinstance(opt, str) else opt
        opt.check(hparams)
        return make_step(make_grad_fn(model, self.l2, self.grads), opt, self.augment, batch_sharding), opt


@dataclasses.dataclass(frozen=True)
class Configs:
    """How the N configs of 1-D hyperparameters share one program. ``share``: ``"vmap"`` (batched
    matmuls: fastest on a GPU), ``"map"`` (``lax.map``, one config after another inside the program:
    on XLA:CPU vmapped configs ran slower per config than sequential fits, and lax.map as fast; see
    the bench's ``configs`` ratios ``vmap/sequential`` and ``fit default/sequential``) or ``"auto"``
    (vmap on accelerators, map on CPU). ``mesh`` (``jaxgd.parallel.make_mesh``) spreads the configs
    (its ``"cfg"`` axis, padded to a multiple of it) and each minibatch (its ``"data"`` axis) over
    devices and hosts; the results equal one device's up to float reassociation. With
    ``per_config_data`` the train and val arrays carry a leading configs axis (e.g. a split per seed).
    ``xla`` is the compiler options the epoch and evaluation compile with (``jaxgd.xla``: ``"tuned"``,
    XLA:CPU's convolutions on its Eigen path; ``"default"``, XLA's own; None: ``$JAXGD_XLA``, else
    ``"tuned"``).
    """

    share: str = "auto"
    mesh: Any = None
    per_config_data: bool = False
    xla: str | None = None

    def __post_init__(self):
        if self.share not in SHARE:
            raise ValueError(f"Configs.share must be one of {SHARE}, got {self.share!r}")
        if self.xla is not None:
            xla.setting(self.xla)
        if self.mesh is not None:
            parallel.check_mesh(self.mesh)

    @property
    def devices(self) -> tuple[int, int]:
        """The mesh's ``(cfg, data)`` axis sizes (1 without a mesh)."""
        return parallel.axis_size(self.mesh, "cfg"), parallel.axis_size(self.mesh, "data")

    def check(self, n_cfg, batch_size):
        """Refuse what cannot share a program: ``n_cfg`` configs (None: one) in minibatches of ``batch_size``."""
        n_dev_cfg, n_dev_data = self.devices
        if batch_size % n_dev_data:
            raise ValueError(
                f"batch size {batch_size} must be a multiple of the mesh's data axis ({n_dev_data} devices)"
            )
        if n_dev_cfg > 1 and n_cfg is None:
            raise ValueError(
                f"the mesh's cfg axis spreads configs over {n_dev_cfg} devices, but there is one config: "
                "give the hyperparameters as 1-D arrays, or use a mesh with cfg=1"
            )
        if n_cfg is None and (self.share != "auto" or self.per_config_data):
            what = f"share={self.share!r}" if self.share != "auto" else "per_config_data (data per config)"
            raise ValueError(
                f"Configs {what} needs several configs: give the hyperparameters as 1-D arrays "
                "(one entry per config) and params stacked with stack_params"
            )
        if n_dev_cfg > 1 and self.share == "map":
            raise ValueError(
                "configs sharded over devices run as one vmapped program: Configs.share must be "
                "'vmap' or 'auto' with a mesh whose cfg axis is > 1"
            )

    def batch_sharding(self):
        """How each minibatch is laid out over the mesh's data axis (None: not spread)."""
        return NamedSharding(self.mesh, P("data")) if self.devices[1] > 1 else None

    def run(self, epoch, evaluate, per_config_key=False):
        """One config's ``epoch`` and ``evaluate`` with a leading configs axis (``share_configs``)."""
        how = self.share
        if how == "auto":
            how = "map" if jax.default_backend() == "cpu" and self.devices[0] == 1 else "vmap"
        spmd = "cfg" if self.devices[0] > 1 else None  # the vmapped axis is the sharded one
        return share_configs(epoch, evaluate, how, self.per_config_data, per_config_key, spmd)


@dataclasses.dataclass(frozen=True)
class Monitor:
    """What ``fit`` measures after each epoch and which parameters it returns. ``eval_train``
    re-evaluates the whole training set (eval mode) instead of reporting the epoch's running means.
    ``select`` (one of ``SELECT``, e.g. ``"val_acc"``) returns each config's parameters and model
    state from its best epoch by that metric (``History.best_epoch``) instead of the last;
    ``patience`` then stops a config after that many epochs without a better value: it stops
    changing (its later metrics are NaN; ``History.stopped_at``) while the others go on.
    ``step_losses`` also keeps every minibatch's training loss (``History.step_loss``), from the
    same program: the running means are unchanged."""

    eval_train: bool = False
    select: str | None = None
    patience: int | None = None
    step_losses: bool = False

    def __post_init__(self):
        if self.select is not None and self.select not in SELECT:
            raise ValueError(f"select must be one of {list(SELECT)} or None, got {self.select!r}")
        if self.patience is not None and (self.select is None or not _is_int(self.patience) or self.patience < 1):
            raise ValueError(
                f"patience must be an integer >= 1 and needs select=, got patience={self.patience!r}, "
                f"select={self.select!r}"
            )


@jax.jit
def data_key(seed: ArrayLike) -> jax.Array:
    """The stream ``fit`` draws from (epoch ``e``'s batch order, dropout masks and augmentation from
    ``fold_in(data_key(seed), e)``): the second half of a split of ``PRNGKey(seed)``, so that it
    never meets the keys ``model.init(PRNGKey(seed))`` gives its layers (``fold_in(PRNGKey(seed), i)``).
    Before, epoch ``e`` shuffled with ``fold_in(PRNGKey(seed), e)``, layer ``e``'s init key. One
    compiled program (integer arithmetic: the same key as op by op), vmapped over seeds as well."""
    return jax.random.split(jax.random.PRNGKey(seed))[1]


def epoch_key(seed: ArrayLike, epoch: int) -> jax.Array:
    """``fit``'s key for ``epoch`` (from 0) of a run with ``seed``."""
    return jax.random.fold_in(data_key(seed), epoch)


def fit(
    model: models.Model | Trainer,
    params: Any,
    train: tuple,
    val: tuple | None = None,
    *,
    hparams: optim.SGDHyperparams | optim.AdamWHyperparams,
    epochs: int,
    batch_size: int | None = None,
    seed: int | Sequence[int] | np.ndarray = 0,
    model_state: Any = None,
    step: Step | None = None,
    configs: Configs | None = None,
    monitor: Monitor = Monitor(),
    progress: Callable | None = None,
    callback: Callable | None = None,
) -> tuple[Any, Any, History]:
    """Train with minibatch SGD; returns ``(params, model_state, History)``.

    ``model`` is a model, or a ``Trainer`` (``compile``) whose programs this fit runs: a loop over
    settings that passes one trainer compiles once; given a model, fit compiles afresh.
    ``train``/``val`` are ``(x, y)`` pairs (moved to the device once); the loss is ``model.loss``.
    ``hparams`` comes from ``optim.sgd_hyperparams`` (or ``optim.adamw_hyperparams``: AdamW): 1-D hyperparameters train one config per
    entry in one program (``params`` and ``model_state`` stacked on axis 0, ``stack_params``), and
    ``seed`` may then be one integer per config (batch order, dropout, augmentation: ``data_key``,
    a stream apart from the initial weights' ``PRNGKey(seed)``). ``step``
    (``Step``) says how a minibatch becomes an update, ``configs`` (``Configs``) how the configs
    share the program and the devices (a trainer has its own: give them to ``compile``),
    ``monitor`` (``Monitor``) what is measured and kept.
    ``progress(metrics)`` gets a dict after each epoch (``jaxgd.progress.epoch_logger`` shows it;
    fit prints nothing); ``callback(epoch, params, model_state)``'s returns go to
    ``History.extra``. A config whose training loss stops being finite is marked diverged (its later
    numbers are NaN); training stops once every config has. The parts, each usable alone:
    ``make_grad_fn`` -> ``make_step`` -> ``make_epoch`` -> ``share_configs`` -> ``run_epochs``.
    """
    hparams = optim.validated(hparams)  # checks hand-built ones too
    if isinstance(model, Trainer):
        trainer = model
        trainer.check(hparams, seed, monitor, batch_size, step, configs)
    else:
        if batch_size is None:
            raise ValueError("fit(model, ...) needs batch_size= (or pass a Trainer from train.compile)")
        trainer = compile(
            model,
            batch_size,
            hparams=hparams,
            step=step or Step(),
            configs=configs or Configs(),
            monitor=monitor,
            seed=seed,
        )
    model, batch_size, configs = trainer.model, trainer.batch_size, trainer.configs
    n_cfg = None if jnp.ndim(hparams.lr) == 0 else int(hparams.lr.shape[0])
    seeds = _check_fit(model, train, val, epochs, batch_size, seed, n_cfg, configs, monitor)
    if model_state is None and hasattr(model, "empty_state"):
        model_state = model.empty_state()  # a clear error if the model needs its state
    base = data_key(seed) if seeds is None else jax.vmap(data_key)(jnp.asarray(seeds))
    data = tuple(_to_device(a) for a in (*train, *(val if val is not None and len(val[1]) else ())))
    if configs.mesh is not None:  # lay everything out on the mesh (global arrays, across hosts too)
        params, model_state, hparams, base, data = parallel.lay_out(
            configs.mesh, n_cfg, (params, model_state, hparams), base, data, seeds is not None, configs.per_config_data
        )
    carry = (params, trainer.init(params), model_state)
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None)) if seeds is not None else jax.random.fold_in
    return run_epochs(
        trainer.epoch,
        trainer.evaluate,
        carry,
        data,
        hparams,
        lambda e: fold(base, e),
        int(epochs),
        n_cfg=n_cfg,
        monitor=monitor,
        progress=progress,
        callback=callback,
        options=configs.xla,
    )


@dataclasses.dataclass(frozen=True, eq=False)
class Trainer:
    """``fit``'s compiled programs as a value you hold: the optimizer, and the epoch, evaluation and
    optimizer-init functions built for one model, step, configs layout and batch size
    (``compile``). ``fit(trainer, ...)`` reuses them: JAX keeps what it traced and compiled for a
    function with that function, so a loop over learning rates, seeds or data that passes one
    trainer compiles once, and ``fit(model, ...)`` builds a fresh one each call. Nothing is kept
    anywhere else: a model changed after ``compile`` (an attribute its ``apply`` reads) trains as
    it was when compiled until you compile again, which is what holding the value says."""

    model: Any
    batch_size: int
    step: Step
    configs: Configs
    stacked: bool  # hyperparameters given one per config (1-D), params stacked on axis 0
    seed_per_config: bool
    step_losses: bool
    schedule: Any  # the hyperparameters' schedule when compiled (its kind is part of the program)
    optimizer: optim.Optimizer
    epoch: Callable  # (carry, x, y, hparams, key) -> (carry, (loss, accuracy[, step losses]))
    evaluate: Callable  # (params, model_state, x, y) -> (loss, accuracy)
    init: Callable  # jitted: params -> optimizer state

    def check(self, hparams, seed, monitor, batch_size=None, step=None, configs=None):
        """Refuse a ``fit`` this trainer was not compiled for, in one line that says what differs."""
        given = {"batch_size": batch_size, "step": step, "configs": configs}
        for name, v in given.items():
            if v is not None and v != getattr(self, name):
                raise ValueError(
                    f"fit(trainer, {name}={v!r}): the trainer was compiled with {name}="
                    f"{getattr(self, name)!r}; compile another (train.compile) or leave {name} out"
                )
        stacked, per_seed = _per_config(hparams, seed)
        for what, now, then in (
            ("1-D hyperparameters (one per config)", stacked, self.stacked),
            ("a seed per config", per_seed, self.seed_per_config),
            ("Monitor(step_losses=True)", monitor.step_losses, self.step_losses),
        ):
            if now != then:
                raise ValueError(
                    f"fit(trainer, ...) {'with' if now else 'without'} {what}, but the trainer was "
                    f"compiled {'with' if then else 'without'}: compile one for this fit (train.compile)"
                )
        if not _same_schedule(
            hparams.schedule,
            self.schedule,
            numbers=isinstance(self.step.optimizer, str) and self.step.optimizer != "hand",
        ):
            raise ValueError(
                "fit(trainer, ...) with another learning-rate schedule than the trainer was compiled "
                "with: compile one for this schedule (train.compile)"
            )
        self.optimizer.check(hparams)


def compile(
    model: models.Model,
    batch_size: int,
    *,
    hparams: optim.SGDHyperparams | optim.AdamWHyperparams,
    step: Step = Step(),
    configs: Configs = Configs(),
    monitor: Monitor = Monitor(),
    seed: int | Sequence[int] | np.ndarray = 0,
) -> Trainer:
    """Build ``fit``'s programs for ``model`` once (``Trainer``): ``fit(trainer, params, ...)`` with
    hyperparameters of the same layout (scalars, or 1-D with ``seed`` one per config or not) and the
    same schedule kind runs them without tracing or compiling again. ``hparams``, ``seed`` and
    ``monitor`` are what ``fit`` will get (their values are not baked in: only whether they are per
    config, the schedule's kind, and ``monitor.step_losses``)."""
    hparams = optim.validated(hparams)
    if not _is_int(batch_size) or batch_size < 1:
        raise ValueError(f"batch size must be an integer >= 1, got {batch_size!r}")
    stacked, per_seed = _per_config(hparams, seed)
    configs.check(int(hparams.lr.shape[0]) if stacked else None, batch_size)
    step_fn, opt = step.build(model, hparams, configs.batch_sharding())
    epoch_fn, eval_fn = make_epoch(step_fn, batch_size, per_step=monitor.step_losses), make_eval(model, step.l2)
    if monitor.step_losses:
        epoch_fn = _with_means(epoch_fn)
    if stacked:
        epoch_fn, eval_fn = configs.run(epoch_fn, eval_fn, per_config_key=per_seed)
    init = _init_program(opt.init, stacked)
    return Trainer(
        model,
        int(batch_size),
        step,
        configs,
        stacked,
        per_seed,
        bool(monitor.step_losses),
        hparams.schedule,
        opt,
        epoch_fn,
        eval_fn,
        init,
    )


def _per_config(hparams, seed) -> tuple[bool, bool]:
    """The layout a program is built for: hyperparameters one per config (1-D), and a seed per config."""
    return bool(jnp.ndim(hparams.lr) == 1), bool(not _is_int(seed) and np.ndim(seed) == 1)


def _vmapped_init(init, params):
    return jax.vmap(init)(params)


# jaxgd's own optimizers' init functions (module-level, pure) compiled once per process for stacked
# configs: JAX keys this program on the function, which for them is their behaviour
_stacked_own_init = jax.jit(_vmapped_init, static_argnums=0)


def _init_program(init, stacked):
    """An optimizer's ``init`` as one jitted function (run eagerly, it compiled one small program
    per leaf and op), vmapped over stacked configs. A user's init gets a jit of its own, held by
    the trainer; jaxgd's own (``optim``'s module-level functions) share one program per shape."""
    if not stacked:
        return jax.jit(init)
    if getattr(init, "__module__", None) == optim.__name__ and getattr(optim, init.__name__, None) is init:
        return functools.partial(_stacked_own_init, init)
    return jax.jit(jax.vmap(init))


def _same_schedule(a, b, numbers) -> bool:
    """The same schedule kind (and, with ``numbers``, the same arguments: an optax schedule holds them)."""
    if a is None or b is None:
        return a is b
    return a.kind == b.kind and (
        not numbers or (a.args.keys() == b.args.keys() and all(np.array_equal(a.args[k], b.args[k]) for k in a.args))
    )


def _with_means(epoch):
    """A ``per_step`` epoch that returns the running means as ``make_epoch`` computes them, and the
    per-step losses: ``(carry, (mean loss, mean accuracy, losses))``."""

    def run(*args):
        carry, (vals, accs) = epoch(*args)
        return carry, (jnp.mean(vals), jnp.mean(accs), vals)

    return run


def run_epochs(
    epoch_fn,
    eval_fn,
    carry,
    data,
    hparams,
    key_of,
    epochs,
    *,
    n_cfg=None,
    monitor=Monitor(),
    progress=None,
    callback=None,
    options=None,
):
    """The epoch loop of ``fit``: compile ``epoch_fn`` once, then per epoch train, evaluate, track
    (``Tracker``), report; returns ``(params, model_state, History)``.

    ``carry = (params, opt_state, model_state)``; ``data = (x, y)`` or ``(x, y, x_val, y_val)``,
    on the device; ``key_of(e)`` is epoch ``e``'s key. ``epoch_fn`` may return the per-step losses
    third (``(carry, (loss, accuracy, losses))``: ``History.step_loss``). With ``n_cfg`` configs
    (None: one) every leaf has a leading configs axis, possibly padded beyond ``n_cfg`` (a mesh's
    cfg axis): the padding is dropped from what is returned. ``options``: the ``jaxgd.xla`` setting
    both compile with (``Configs.xla``).
    """
    x, y, val = data[0], data[1], (data[2:] or None)
    t0 = time.perf_counter()
    epoch_fn = xla.jit(epoch_fn, options).lower(carry, x, y, hparams, key_of(0)).compile()
    compile_time = time.perf_counter() - t0
    eval_fn = xla.jit(eval_fn, options)
    n_run = None if n_cfg is None else int(np.shape(hparams.lr)[0])  # padding included
    track = Tracker(() if n_cfg is None else (n_run,), monitor.select, monitor.patience)
    hist = {k: [] for k in ("train_loss", "train_acc", "val_loss", "val_acc", "epoch_time")}
    real = (lambda a: a) if n_cfg is None else (lambda a: a[:n_cfg])  # padding dropped from the results
    best = (carry[0], carry[2])
    extra, step_loss = [], []
    for e in range(epochs):
        t = time.perf_counter()
        new, (tl, ta, *steps) = epoch_fn(carry, x, y, hparams, key_of(e))
        carry = new if monitor.patience is None else _where_configs(~track.stopped, new, carry)
        tl, ta = parallel.fetch((tl, ta))  # waits for the epoch
        if steps:
            step_loss.append(real(parallel.fetch(steps[0])))
        if monitor.eval_train:
            tl, ta = parallel.fetch(eval_fn(carry[0], carry[2], x, y))
        vl = va = np.full(track.shape, np.nan)
        if val is not None:
            vl, va = parallel.fetch(eval_fn(carry[0], carry[2], *val))
        metrics = {"train_loss": tl, "train_acc": ta, "val_loss": vl, "val_acc": va}
        improved, gone = track.update(e, metrics)
        if monitor.select is not None and np.any(improved):
            best = _where_configs(improved, (carry[0], carry[2]), best)
        for k, v in metrics.items():
            hist[k].append(real(np.where(gone, np.nan, v)))
        hist["epoch_time"].append(time.perf_counter() - t)
        if callback is not None:
            extra.append(callback(e, carry[0], carry[2]))
        if progress is not None:
            progress({"epoch": e + 1, "epochs": epochs, **{k: hist[k][-1] for k in hist}})
        if track.done():
            break
    params_out, state_out = best if monitor.select is not None else (carry[0], carry[2])
    if n_run != n_cfg or not all(
        getattr(a, "is_fully_addressable", True) for a in jax.tree_util.tree_leaves((params_out, state_out))
    ):
        params_out, state_out = jax.tree_util.tree_map(real, parallel.fetch((params_out, state_out)))
    summary = track.summary(n_cfg)
    _warn_diverged(summary["diverged_at"], hparams, n_cfg)
    return (
        params_out,
        state_out,
        History(**hist, compile_time=compile_time, extra=extra, **summary, step_loss=step_loss or None),
    )


class DivergedWarning(UserWarning):
    """A config's training loss stopped being finite (``History.diverged_at``)."""


def _warn_diverged(diverged_at, hparams, n_cfg):
    """Tell the user, once per fit, which configs diverged: fit prints nothing, and a NaN curve
    otherwise ends a run without a word."""
    import warnings

    at = diverged_at if n_cfg else [diverged_at]
    bad = [(i, e) for i, e in enumerate(at) if e is not None]
    if not bad:
        return
    lrs = np.atleast_1d(np.asarray(parallel.fetch(hparams.lr)))
    which = "; ".join(f"config {i} (learning rate {float(lrs[i]):g}) at epoch {e}" for i, e in bad[:5])
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    warnings.warn(
        f"fit: the training loss stopped being finite for {len(bad)} of {len(at)} config(s): {which}{more}; "
        "their later numbers are NaN (History.diverged_at). A smaller learning rate usually fixes this.",
        DivergedWarning,
        stacklevel=4,
    )


def _check_fit(model, train, val, epochs, batch_size, seed, n_cfg, configs, monitor):
    """``fit``'s boundary checks; returns the per-config seeds (None for one seed)."""
    for what, v in (("epochs", epochs), ("batch size", batch_size)):
        if not _is_int(v) or v < 1:
            raise ValueError(f"{what} must be an integer >= 1, got {v!r}")
    seeds = np.asarray(seed) if not _is_int(seed) and np.ndim(seed) == 1 else None
    if (seeds is None and not _is_int(seed)) or (seeds is not None and not all(_is_int(v) for v in seed)):
        raise ValueError(f"seed must be an integer, or one integer per config, got {seed!r}")
    if seeds is not None and n_cfg is None:
        raise ValueError("seed per config needs several configs (1-D hyperparameters)")
    if seeds is not None and len(seeds) != n_cfg:
        raise ValueError(f"{len(seeds)} seeds for {n_cfg} configs")
    configs.check(n_cfg, batch_size)
    if monitor.select is not None and monitor.select.startswith("val") and (val is None or not len(val[1])):
        raise ValueError(f"select={monitor.select!r} needs a validation set")
    per_cfg = configs.per_config_data
    _check_labels(model, train[1], "train", per_cfg)
    if val is not None:
        _check_labels(model, val[1], "val", per_cfg)
    arrays = tuple(train) + (tuple(val) if val is not None and len(val[1]) else ())
    if per_cfg and any(np.shape(a)[0] != n_cfg for a in arrays):
        raise ValueError(f"per_config_data: train and val arrays need a leading axis of {n_cfg} configs")
    row = 1 if per_cfg else 0  # the examples axis
    n_x, n_y = np.shape(train[0])[row], np.shape(train[1])[row]
    if n_x != n_y:
        raise ValueError(f"train x has {n_x} rows but y has {n_y}")
    if batch_size > n_x:
        raise ValueError(f"batch size {batch_size} > {n_x} training examples")
    return seeds


class Tracker:
    """Per-config bookkeeping of an epoch loop, on the host: divergence, the best epoch by the
    ``select``-ed metric (one of ``SELECT``, or None), and ``patience`` (``Monitor``)."""

    def __init__(self, shape, select=None, patience=None):
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

    def summary(self, n_cfg=None):
        """``History``'s ``diverged_at``, ``best_epoch`` and ``stopped_at`` (1-based epochs, None
        where it never happened), one per config for the first ``n_cfg`` (None: one config)."""

        def per_config(a):
            out = [int(v) if v else None for v in np.atleast_1d(a)[:n_cfg]]
            return out if n_cfg else out[0]

        return {
            "diverged_at": per_config(self.diverged_at),
            "best_epoch": per_config(self.best_epoch) if self.select else None,
            "stopped_at": per_config(self.stopped_at) if self.patience else None,
        }


def _to_device(a):
    """``a`` as a JAX array, moved as it is (``jax.device_put``, the dtype made JAX's default as
    ``jnp.asarray`` makes it). ``jnp.asarray`` of a numpy array runs a compiled identity program, one
    per shape, that copies the array a second time: for a training split that is a program and a
    copy of every image per ``fit``."""
    return a if isinstance(a, jax.Array) else jax.device_put(np.asarray(a))


@jax.jit
def _where_configs(mask, new, old):
    """Per config (the leading axis of every leaf; a scalar mask for one config): ``new`` where
    ``mask``, else ``old``. One compiled program per tree, not one per leaf shape."""

    def pick(a, b):
        m = jnp.reshape(mask, mask.shape + (1,) * (a.ndim - mask.ndim))
        return jnp.where(m, a, b)

    return jax.tree_util.tree_map(pick, new, old)


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _check_labels(model, y, split, per_config=False):
    """Integer class labels must lie in [0, classes) (one-hot targets pass as they are): out of
    range, a row would silently drop out of the cross-entropy inside the compiled epoch.
    ``per_config``: ``y`` has a leading configs axis (``Configs.per_config_data``)."""
    y = np.asarray(y)
    if per_config:
        y = y.reshape((-1,) + y.shape[2:])
    if not losses.takes_labels(getattr(model, "loss", None)) or y.ndim != 1:
        return
    shapes = getattr(model, "shapes", None)
    losses.check_labels(y, shapes()[-1][-1] if shapes else None, f"{split} labels")


def share_configs(epoch_fn, eval_fn, how="map", per_config_data=False, per_config_key=False, spmd_axis=None):
    """``make_epoch``'s ``epoch`` and ``make_eval``'s ``evaluate`` for one config, given a leading
    configs axis on the carry, the hyperparameters and the model state: ``how="vmap"`` batches the
    configs (``spmd_axis``: the mesh axis that axis is sharded over), ``"map"`` runs them one after
    another with ``lax.map`` inside the program. ``per_config_data``: the data has a configs axis
    too; ``per_config_key``: so has the epoch's key (a seed per config)."""
    if how not in ("vmap", "map"):
        raise ValueError(f"share_configs: how must be 'vmap' or 'map', got {how!r}")
    dax, kax = (0 if per_config_data else None), (0 if per_config_key else None)
    if how == "vmap":
        return (
            jax.vmap(epoch_fn, in_axes=(0, dax, dax, 0, kax), spmd_axis_name=spmd_axis),
            jax.vmap(eval_fn, in_axes=(0, 0, dax, dax), spmd_axis_name=spmd_axis),
        )

    def epoch(carry, x, y, hparams, key):
        def one(c):
            carry_i, hp_i, x_i, y_i, k_i = c
            return epoch_fn(
                carry_i, x if x_i is None else x_i, y if y_i is None else y_i, hp_i, key if k_i is None else k_i
            )

        data = (x, y) if per_config_data else (None, None)
        return jax.lax.map(one, (carry, hparams, *data, key if per_config_key else None))

    def evaluate(params, state, x, y):
        if per_config_data:
            return jax.lax.map(lambda c: eval_fn(*c), (params, state, x, y))
        return jax.lax.map(lambda ps: eval_fn(ps[0], ps[1], x, y), (params, state))

    return epoch, evaluate


def stack_params(trees: Sequence[Any]) -> Any:
    """Stack equal-structure pytrees on a new leading axis (the configs axis of a vmapped fit)."""
    return _stack(list(trees))


def unstack_params(tree: Any, i: int) -> Any:
    """Entry ``i`` of every leaf of a stacked pytree (the inverse of ``stack_params``)."""
    return _unstack(tree, i)


# one compiled program per tree structure, not one per leaf shape as op-by-op stacking and indexing
_stack = jax.jit(lambda trees: jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *trees))
_unstack = jax.jit(lambda tree, i: jax.tree_util.tree_map(lambda x: x[i], tree))
