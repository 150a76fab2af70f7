"""SGD with momentum and weight decay, by hand, with ``torch.optim.SGD`` semantics, and its optax twin.

An optimizer is a pair of pure functions (optax's contract, with the step applied):

    init(params) -> state
    update(grads, state, params, hparams) -> (new_params, new_state)

``hparams`` is an ``SGDHyperparams`` of scalars, or of 1-D arrays when many
configurations are trained at once. They are kept in float64 and take each parameter's
dtype where they are used, so a float64 run steps with lr 0.01, not with float32's
0.0099999997764825821 (and matches ``torch.optim.SGD`` to ~1e-15).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from jaxgd import schedules

Numbers = ArrayLike | Sequence[float]  # a number, or one per config of a grid


class SGDHyperparams(NamedTuple):
    """The hand SGD's numbers (``sgd_hyperparams`` builds and checks them): scalars, or one entry per config of a grid."""

    lr: Any
    momentum: Any = 0.0
    weight_decay: Any = 0.0
    dampening: Any = 0.0
    schedule: Any = None  # a schedules.Schedule, or None: constant lr


def _numbers(named: dict, schedule):
    """``named`` values as float64 arrays, scalars or 1-D of one length, the schedule's arguments broadcast to it."""
    vals = [np.asarray(v, np.float64) for v in named.values()]
    if schedule is not None and not isinstance(schedule, schedules.Schedule):
        raise ValueError(f"schedule must be a jaxgd.schedules.Schedule (e.g. schedules.cosine(1000)), got {schedule!r}")
    sched_vals = list(schedule.args.values()) if schedule is not None else []
    shapes = {v.shape for v in vals + sched_vals if v.ndim}
    if any(v.ndim > 1 for v in vals + sched_vals) or len(shapes) > 1:
        raise ValueError(
            f"hyperparameters must be scalars or 1-D of one length; got shapes {[v.shape for v in vals + sched_vals]}"
        )
    for (name, given), v in zip(named.items(), vals):
        if not np.all(np.isfinite(v)):
            raise ValueError(f"{name} must be finite, got {given}")
    n = shapes.pop()[0] if shapes else None
    if n == 0:
        raise ValueError("hyperparameters given as sequences must have at least one entry; got empty ones")
    full = (lambda v: np.broadcast_to(v, (n,)).copy()) if n else (lambda v: v)
    if schedule is not None:
        schedule = schedules.Schedule(schedule.kind, {k: full(v) for k, v in schedule.args.items()})
    return [full(v) for v in vals], schedule


def sgd_hyperparams(
    lr: Numbers,
    momentum: Numbers = 0.0,
    weight_decay: Numbers = 0.0,
    dampening: Numbers = 0.0,
    schedule: schedules.Schedule | None = None,
) -> SGDHyperparams:
    """Validated hyperparameters (scalars or equal-length 1-D sequences, one entry per config) as
    float64 numpy arrays; a ``schedule``'s numeric arguments are broadcast to the configs too."""
    named = {"learning rate": lr, "momentum": momentum, "weight decay": weight_decay, "dampening": dampening}
    (lr_, mom, wd, damp), schedule = _numbers(named, schedule)
    if not np.all(lr_ > 0):
        raise ValueError(f"learning rate must be finite and > 0, got {lr}")
    if not (np.all(mom >= 0) and np.all(mom < 1)):
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not np.all(wd >= 0):
        raise ValueError(f"weight decay must be finite and >= 0, got {weight_decay}")
    if not (np.all(damp >= 0) and np.all(damp <= 1)):
        raise ValueError(f"dampening must be in [0, 1], got {dampening}")
    return SGDHyperparams(lr_, mom, wd, damp, schedule)


class AdamWHyperparams(NamedTuple):
    """AdamW's numbers (``adamw_hyperparams`` builds and checks them; ``torch.optim.AdamW``'s defaults):
    scalars, or one entry per config of a grid."""

    lr: Any = 1e-3
    b1: Any = 0.9
    b2: Any = 0.999
    eps: Any = 1e-8
    weight_decay: Any = 0.01
    schedule: Any = None  # a schedules.Schedule, or None: constant lr


def adamw_hyperparams(
    lr: Numbers = 1e-3,
    b1: Numbers = 0.9,
    b2: Numbers = 0.999,
    eps: Numbers = 1e-8,
    weight_decay: Numbers = 0.01,
    schedule: schedules.Schedule | None = None,
) -> AdamWHyperparams:
    """Validated AdamW hyperparameters, as ``sgd_hyperparams`` (float64 arrays, scalars or one per config)."""
    named = {"learning rate": lr, "b1": b1, "b2": b2, "eps": eps, "weight decay": weight_decay}
    (lr_, b1_, b2_, eps_, wd), schedule = _numbers(named, schedule)
    if not np.all(lr_ > 0):
        raise ValueError(f"learning rate must be finite and > 0, got {lr}")
    for name, v, given in (("b1", b1_, b1), ("b2", b2_, b2)):
        if not (np.all(v >= 0) and np.all(v < 1)):
            raise ValueError(f"AdamW's {name} must be in [0, 1), got {given}")
    if not np.all(eps_ > 0):
        raise ValueError(f"AdamW's eps must be > 0, got {eps}")
    if not np.all(wd >= 0):
        raise ValueError(f"weight decay must be finite and >= 0, got {weight_decay}")
    return AdamWHyperparams(lr_, b1_, b2_, eps_, wd, schedule)


def validated(hparams: SGDHyperparams | AdamWHyperparams) -> SGDHyperparams | AdamWHyperparams:
    """``hparams`` checked again by its own builder (``sgd_hyperparams`` or ``adamw_hyperparams``): what ``fit``
    and ``train.compile`` do with hand-built ones."""
    if isinstance(hparams, AdamWHyperparams):
        return adamw_hyperparams(*hparams)
    if isinstance(hparams, SGDHyperparams):
        return sgd_hyperparams(*hparams)
    raise ValueError(
        f"hyperparameters must come from optim.sgd_hyperparams or optim.adamw_hyperparams, got {type(hparams).__name__}"
    )


def _expect(hparams, kind, who):
    if not isinstance(hparams, kind):
        builder = "adamw_hyperparams" if kind is AdamWHyperparams else "sgd_hyperparams"
        raise ValueError(f"{who} takes hyperparameters from optim.{builder}, got {type(hparams).__name__}")


class SGDState(NamedTuple):
    """The hand SGD's state: the momentum buffer ``b`` and the number of updates made."""

    momentum: Any  # the buffer b, same structure as params
    count: Any  # updates made so far (int32): the first-step rule and the schedule read it


def sgd_init(params: Any) -> SGDState:
    """``b = 0`` and no step made yet."""
    return SGDState(jax.tree_util.tree_map(jnp.zeros_like, params), jnp.zeros((), jnp.int32))


WEIGHT_NAMES = ("W", "W_qkv", "W_o")  # dense, conv and patch-embedding kernels; attention's projections


def weights_only(path: tuple, leaf: Any) -> bool:
    """A weight-decay mask: decay the weight matrices (leaves named in ``WEIGHT_NAMES``: dense, conv and patch
    kernels, attention's projections) and leave biases, norms' scales and shifts and embedding tables alone."""
    last = path[-1] if path else None
    return getattr(last, "key", getattr(last, "name", None)) in WEIGHT_NAMES


def _mask_tree(mask, params):
    """``mask``: None (every leaf), a pytree of bools like ``params``, or a predicate ``(path, leaf)``."""
    if mask is None:
        return jax.tree_util.tree_map(lambda _: True, params)
    if callable(mask):
        return jax.tree_util.tree_map_with_path(lambda p, x: bool(mask(p, x)), params)
    return mask


def sgd(nesterov: bool = False, wd_mask: Any = None) -> Optimizer:
    """The hand SGD as an ``Optimizer``, with ``torch.optim.SGD``'s rules (``nesterov`` and the
    weight-decay mask are part of the program; every number is in ``hparams``):

        g <- g + wd * p                        (on the leaves ``wd_mask`` selects; all by default, as PyTorch)
        b <- g                    at the first step (PyTorch's rule: no dampening there)
        b <- mu * b + (1 - dampening) * g      afterwards
        d <- g + mu * b  if nesterov, else b   (with mu = 0 PyTorch keeps no buffer: d = g)
        p <- p - lr * schedule(step) * d
    """

    def check(hparams: SGDHyperparams):
        _expect(hparams, SGDHyperparams, "the hand SGD")
        if nesterov and (np.any(np.asarray(hparams.momentum) <= 0) or np.any(np.asarray(hparams.dampening) != 0)):
            raise ValueError("Nesterov momentum needs momentum > 0 and dampening 0 (as in torch.optim.SGD)")

    def update(grads, state: SGDState, params, hparams: SGDHyperparams):
        at = lambda h, p: jnp.asarray(h, p.dtype)
        mu, wd, first = hparams.momentum, hparams.weight_decay, state.count == 0
        mask = _mask_tree(wd_mask, params)
        g = jax.tree_util.tree_map(lambda g, p, m: g + at(wd, p) * p if m else g, grads, params, mask)
        damp = jnp.where(jnp.asarray(mu) == 0, 0.0, hparams.dampening)  # no buffer without momentum
        b = jax.tree_util.tree_map(
            lambda b, g: jnp.where(first, g, at(mu, b) * b + at(1 - damp, g) * g), state.momentum, g
        )
        d = jax.tree_util.tree_map(lambda g, b: g + at(mu, b) * b, g, b) if nesterov else b
        lr = hparams.lr if hparams.schedule is None else hparams.lr * hparams.schedule.factor(state.count)
        new = jax.tree_util.tree_map(lambda p, d: p - at(lr, p) * d, params, d)
        return new, SGDState(b, state.count + 1)

    return Optimizer(sgd_init, update, check)


def sgd_update(grads: Any, state: SGDState, params: Any, hparams: SGDHyperparams) -> tuple[Any, SGDState]:
    """One step of the default hand SGD (no Nesterov, decay on every leaf): see ``sgd``."""
    return HAND_SGD.update(grads, state, params, hparams)


class Optimizer(NamedTuple):
    """An optimizer as two pure functions, ``init(params) -> state`` and ``update(grads, state, params, hparams) ->
    (params, state)``, and ``check(hparams)``, which raises on hyperparameters it cannot take."""

    init: Callable
    update: Callable
    check: Callable = lambda hparams: None  # raises on hyperparameters this optimizer cannot take


def partition(optimizers: dict[str, Optimizer | None], labels: Any) -> Optimizer:
    """Parameter groups (``optax.multi_transform``'s idea, for these optimizers): ``labels`` has the
    parameters' structure and holds each leaf's group name; the leaves of group ``g`` (as one list)
    are updated by ``optimizers[g]`` with ``hparams[g]`` (``update``'s hparams: a dict group ->
    hyperparameters), and a group whose optimizer is None is frozen: never changed, no state.
    ``torch.optim.SGD`` with several parameter groups is ``partition`` of ``sgd()``s."""
    label_list = jax.tree_util.tree_leaves(labels)
    active = {g: o for g, o in optimizers.items() if o is not None}  # the frozen groups left out
    groups = list(active)

    def split(tree):
        leaves = jax.tree_util.tree_leaves(tree)
        return {g: [x for x, q in zip(leaves, label_list) if q == g] for g in groups}

    def merge(tree, parts):
        it = {g: iter(v) for g, v in parts.items()}
        leaves, treedef = jax.tree_util.tree_flatten(tree)
        return jax.tree_util.tree_unflatten(
            treedef, [next(it[q]) if q in it else x for x, q in zip(leaves, label_list)]
        )

    def init(params):
        return {g: active[g].init(part) for g, part in split(params).items()}

    def update(grads, state, params, hparams: dict):
        g_, p_ = split(grads), split(params)
        new, new_state = {}, {}
        for g in groups:
            new[g], new_state[g] = active[g].update(g_[g], state[g], p_[g], hparams[g])
        return merge(params, new), new_state

    def check(hparams: dict):
        for g in groups:
            active[g].check(hparams[g])

    return Optimizer(init, update, check)


def _optax_chain(learning_rate, momentum, weight_decay, nesterov=False, wd_mask=None):
    # add_decayed_weights must come before sgd's trace: decay enters the momentum buffer, as in PyTorch.
    return optax.chain(
        optax.add_decayed_weights(weight_decay, mask=wd_mask),
        optax.sgd(learning_rate, momentum=momentum, nesterov=nesterov),
    )


OPTAX_SCHEDULES: dict[str, Callable[..., Any]] = {
    # the optax function of each schedule kind, as a multiplier of 1 (the twin's lr = lr * it)
    "constant": lambda: optax.constant_schedule(1.0),
    "step_decay": lambda step_size, gamma: optax.exponential_decay(1.0, step_size, gamma, staircase=True),
    "cosine": lambda total_steps, final_fraction: optax.cosine_decay_schedule(1.0, total_steps, final_fraction),
    "warmup_cosine": lambda warmup_steps, total_steps, final_fraction: optax.warmup_cosine_decay_schedule(
        0.0, 1.0, warmup_steps, total_steps, final_fraction
    ),
}


def _optax_factor(schedule):
    """optax's own function ``f(step)`` of ``schedule`` (None for a constant learning rate)."""
    if schedule is None:
        return None
    if schedule.kind not in OPTAX_SCHEDULES:
        raise ValueError(f"optax has no twin of the {schedule.kind!r} schedule here; use the hand optimizer")
    args = {k: np.asarray(v) for k, v in schedule.args.items()}
    if any(v.ndim for v in args.values()):
        args = {k: v.reshape(-1) for k, v in args.items()}
        if any(np.any(v != v[0]) for v in args.values()):
            raise ValueError("the optax twin takes one schedule for all configs; these differ")
        args = {k: v[0] for k, v in args.items()}
    return OPTAX_SCHEDULES[schedule.kind](**{k: float(v) for k, v in args.items()})


def _same_schedule_kind(hparams, schedule):
    if (hparams.schedule is None) != (schedule is None) or (
        schedule is not None and hparams.schedule.kind != schedule.kind
    ):
        raise ValueError("build the optax twin with the hyperparameters' schedule (schedule=...)")


def optax_sgd(nesterov: bool = False, wd_mask: Any = None, schedule: schedules.Schedule | None = None) -> Optimizer:
    """The library twin: ``optax.chain(add_decayed_weights(wd, mask), sgd(lr, momentum, nesterov))``,
    with each step's learning rate ``lr * f(step)`` from optax's own function ``f`` of ``schedule``
    (one schedule for every config: optax checks its arguments in Python).

    Wrapped in ``optax.inject_hyperparams`` so the hyperparameters live in the state
    (the way to ``vmap`` over them) and set from ``hparams`` at every step. optax's trace has
    no dampening, and optax no one-cycle shape of PyTorch's: those are checked against PyTorch only.
    """
    factor = _optax_factor(schedule)

    def chain(learning_rate, momentum, weight_decay):
        mask = None if wd_mask is None else (lambda p: _mask_tree(wd_mask, p))
        return _optax_chain(learning_rate, momentum, weight_decay, nesterov, mask)

    tx = optax.inject_hyperparams(chain)(learning_rate=0.0, momentum=0.0, weight_decay=0.0)

    def check(hparams: SGDHyperparams):
        _expect(hparams, SGDHyperparams, "the optax SGD twin")
        if np.any(np.asarray(hparams.dampening) != 0):
            raise ValueError("the optax twin has no dampening (optax.trace); use the hand SGD")
        _same_schedule_kind(hparams, schedule)

    def update(grads, state, params, hparams: SGDHyperparams):
        lr = hparams.lr if schedule is None else hparams.lr * factor(state.count)
        hp = {"learning_rate": lr, "momentum": hparams.momentum, "weight_decay": hparams.weight_decay}
        state = state._replace(
            hyperparams={k: jnp.asarray(v, jnp.result_type(state.hyperparams[k])) for k, v in hp.items()}
        )
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return Optimizer(tx.init, update, check)


class AdamWState(NamedTuple):
    """AdamW's state: the moving averages of the gradient (``mu``) and of its square (``nu``), and the steps made."""

    mu: Any
    nu: Any
    count: Any


def adamw_init(params: Any) -> AdamWState:
    """``m = v = 0`` and no step made yet."""
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)  # immutable: m and v may start as the same arrays
    return AdamWState(zeros, zeros, jnp.zeros((), jnp.int32))


def adamw(wd_mask: Any = None) -> Optimizer:
    """AdamW by hand (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", 2019; Adam: Kingma & Ba
    2015), ``torch.optim.AdamW``'s and ``optax.adamw``'s update, with ``lr_t = lr * schedule(step)``, step
    ``t = 1, 2, ...``:

        m <- b1 m + (1 - b1) g
        v <- b2 v + (1 - b2) g^2
        p <- p - lr_t * ( m / (1 - b1^t) / (sqrt(v / (1 - b2^t)) + eps)  +  wd * p )

    The decay is decoupled: ``wd * p`` is added to the step, not to the gradient (Adam with L2 would put it
    in ``g``, where ``v`` rescales it), on the leaves ``wd_mask`` selects (all by default, as both libraries).
    """

    def check(hparams):
        _expect(hparams, AdamWHyperparams, "the hand AdamW")

    def update(grads, state: AdamWState, params, hparams: AdamWHyperparams):
        at = lambda h, p: jnp.asarray(h, p.dtype)
        b1, b2 = hparams.b1, hparams.b2
        t = state.count + 1
        mu = jax.tree_util.tree_map(lambda m, g: at(b1, g) * m + at(1 - b1, g) * g, state.mu, grads)
        nu = jax.tree_util.tree_map(lambda v, g: at(b2, g) * v + at(1 - b2, g) * (g * g), state.nu, grads)
        # the bias corrections in float64 where the parameters are (b^t of a float64 b), else in their dtype
        c1, c2 = 1 - jnp.asarray(b1) ** t, 1 - jnp.asarray(b2) ** t
        lr = hparams.lr if hparams.schedule is None else hparams.lr * hparams.schedule.factor(state.count)
        mask = _mask_tree(wd_mask, params)

        def step(p, m, v, decay):
            d = (m / at(c1, m)) / (jnp.sqrt(v / at(c2, v)) + at(hparams.eps, v))
            return p - at(lr, p) * (d + at(hparams.weight_decay, p) * p if decay else d)

        new = jax.tree_util.tree_map(step, params, mu, nu, mask)
        return new, AdamWState(mu, nu, t)

    return Optimizer(adamw_init, update, check)


def optax_adamw(wd_mask: Any = None, schedule: schedules.Schedule | None = None) -> Optimizer:
    """The library twin of ``adamw``: ``optax.adamw`` (in ``optax.inject_hyperparams``, its numbers set from
    ``hparams`` at every step), with each step's learning rate ``lr * f(step)`` from optax's ``f`` of ``schedule``."""
    factor = _optax_factor(schedule)
    mask = None if wd_mask is None else (lambda p: _mask_tree(wd_mask, p))
    tx = optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
        learning_rate=0.0, b1=0.0, b2=0.0, eps=1.0, weight_decay=0.0, mask=mask
    )

    def check(hparams):
        _expect(hparams, AdamWHyperparams, "the optax AdamW twin")
        _same_schedule_kind(hparams, schedule)

    def update(grads, state, params, hparams: AdamWHyperparams):
        lr = hparams.lr if schedule is None else hparams.lr * factor(state.count)
        hp = {"learning_rate": lr, "b1": hparams.b1, "b2": hparams.b2, "eps": hparams.eps}
        hp["weight_decay"] = hparams.weight_decay
        numbers = {k: jnp.asarray(v, jnp.result_type(state.hyperparams[k])) for k, v in hp.items()}
        state = state._replace(hyperparams={**state.hyperparams, **numbers})  # eps_root stays 0
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    return Optimizer(tx.init, update, check)


HAND_SGD = sgd()
OPTIMIZERS = {"hand": lambda nesterov, wd_mask, schedule: sgd(nesterov, wd_mask), "optax": optax_sgd}
ADAMW_OPTIMIZERS = {"hand": lambda wd_mask, schedule: adamw(wd_mask), "optax": optax_adamw}


def get_optimizer(
    name: str,
    nesterov: bool = False,
    wd_mask: Any = None,
    schedule: schedules.Schedule | None = None,
    hparams: Any = None,
) -> Optimizer:
    """``"hand"`` (``sgd``, which reads the schedule from the hyperparameters) or ``"optax"``
    (``optax_sgd``, built with ``schedule``), with the given Nesterov flag and weight-decay mask; for
    ``hparams`` from ``adamw_hyperparams``, ``adamw`` or ``optax_adamw`` instead."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(OPTIMIZERS)}")
    if isinstance(hparams, AdamWHyperparams):
        if nesterov:
            raise ValueError("Nesterov momentum is SGD's; AdamW has none")
        return ADAMW_OPTIMIZERS[name](wd_mask, schedule)
    return OPTIMIZERS[name](nesterov, wd_mask, schedule)
