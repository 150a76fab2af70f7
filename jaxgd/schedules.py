"""Learning-rate schedules: pure functions of the step, evaluated inside the compiled epoch.

A ``Schedule`` is a kind (static: it picks the formula, so it is part of the compiled program)
and numeric arguments (dynamic: arrays that ``fit`` maps or vmaps over configs like the learning
rate). ``factor(step)`` multiplies the base learning rate at 0-based step ``step``:

- ``constant()``: 1.
- ``step_decay(step_size, gamma)``: ``gamma ** floor(step / step_size)`` (``torch.optim.lr_scheduler.StepLR``,
  ``optax.exponential_decay(staircase=True)``).
- ``cosine(total_steps, final_fraction=0)``: from 1 down to ``final_fraction`` along half a cosine over
  ``total_steps``, then flat (``CosineAnnealingLR(T_max, eta_min=final_fraction * lr)``,
  ``optax.cosine_decay_schedule(alpha=final_fraction)``).
- ``warmup_cosine(warmup_steps, total_steps, final_fraction=0)``: linear from 0 to 1 over
  ``warmup_steps``, then cosine down to ``final_fraction`` at ``total_steps``
  (``optax.warmup_cosine_decay_schedule``).
- ``one_cycle(total_steps, pct_start=0.3, div_factor=25, final_div_factor=1e4)``: the triangular
  one-cycle shape: linear from ``1/div_factor`` up to 1 at step ``pct_start * total_steps - 1``, then
  linear down to ``1/(div_factor * final_div_factor)`` at ``total_steps - 1``
  (``OneCycleLR(anneal_strategy="linear", three_phase=False)``).
- ``triangle(total_steps, peak_step, start=0.2, end=0.07)``: linear from ``start`` at step 0 up to 1
  at ``peak_step``, then linear down to ``end`` at ``total_steps`` (airbench's ``triangle``, with
  ``peak_step = int(0.23 * total_steps)``).

The step counts from the first update of a fit; with ``epochs`` epochs of ``b`` batches,
``total_steps = epochs * b``, ``b = n // batch_size`` (``train.make_epoch`` drops the last partial batch).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

KINDS = ("constant", "step_decay", "cosine", "warmup_cosine", "one_cycle", "triangle")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: its formula's name (``kind``, static) and its arguments (float64 scalars, or one entry
    per config). ``factor(step)`` is the multiplier of the learning rate at that step, inside the compiled
    epoch."""

    kind: str = dataclasses.field(metadata={"static": True})
    args: dict = dataclasses.field(default_factory=dict)  # name -> float64 scalar or 1-D array

    def factor(self, step):
        """The learning-rate multiplier at 0-based ``step`` (a traced integer is fine)."""
        return _FORMULAS[self.kind](jnp.asarray(step), **{k: jnp.asarray(v) for k, v in self.args.items()})


def _cos(t, total, final):
    frac = jnp.clip(t / total, 0.0, 1.0)
    return final + (1.0 - final) * 0.5 * (1.0 + jnp.cos(math.pi * frac))


def _one_cycle(t, total_steps, pct_start, div_factor, final_div_factor):
    up_end = pct_start * total_steps - 1.0
    down_end = total_steps - 1.0
    start, low = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)
    up = start + (t / up_end) * (1.0 - start)
    down = 1.0 + ((t - up_end) / (down_end - up_end)) * (low - 1.0)
    return jnp.where(t <= up_end, up, down)


_FORMULAS = {
    "constant": lambda t: jnp.ones_like(t, jnp.result_type(float)),
    "step_decay": lambda t, step_size, gamma: gamma ** jnp.floor(t / step_size),
    "cosine": lambda t, total_steps, final_fraction: _cos(t, total_steps, final_fraction),
    "warmup_cosine": lambda t, warmup_steps, total_steps, final_fraction: jnp.where(
        t < warmup_steps,
        t / jnp.maximum(warmup_steps, 1.0),
        _cos(t - warmup_steps, jnp.maximum(total_steps - warmup_steps, 1.0), final_fraction),
    ),
    "one_cycle": _one_cycle,
    "triangle": lambda t, total_steps, peak_step, start, end: jnp.where(
        t < peak_step,
        start + (1.0 - start) * t / peak_step,
        1.0 + (end - 1.0) * (t - peak_step) / (total_steps - peak_step),
    ),
}


def _make(kind, checks, **args):
    vals = {k: np.asarray(v, np.float64) for k, v in args.items()}
    for name, (ok, what) in checks.items():
        if not (np.all(np.isfinite(vals[name])) and np.all(ok(vals[name]))):
            raise ValueError(f"{kind} schedule: {name} must be {what}, got {args[name]}")
    return Schedule(kind, vals)


def constant() -> Schedule:
    """``factor(t) = 1``."""
    return Schedule("constant", {})


def step_decay(step_size: ArrayLike, gamma: ArrayLike = 0.1) -> Schedule:
    """``factor(t) = gamma ** floor(t / step_size)`` (``torch.optim.lr_scheduler.StepLR``)."""
    return _make(
        "step_decay",
        {"step_size": (lambda v: v >= 1, ">= 1"), "gamma": (lambda v: v > 0, "> 0")},
        step_size=step_size,
        gamma=gamma,
    )


def cosine(total_steps: ArrayLike, final_fraction: ArrayLike = 0.0) -> Schedule:
    """``factor(t) = f + (1 - f) (1 + cos(pi min(t / total_steps, 1))) / 2`` with ``f = final_fraction``
    (``CosineAnnealingLR`` with ``eta_min = f lr``)."""
    return _make(
        "cosine",
        {"total_steps": (lambda v: v >= 1, ">= 1"), "final_fraction": (lambda v: (v >= 0) & (v <= 1), "in [0, 1]")},
        total_steps=total_steps,
        final_fraction=final_fraction,
    )


def warmup_cosine(warmup_steps: ArrayLike, total_steps: ArrayLike, final_fraction: ArrayLike = 0.0) -> Schedule:
    """A linear warm-up ``factor(t) = t / warmup_steps`` for ``t < warmup_steps``, then ``cosine`` over the remaining
    ``total_steps - warmup_steps`` steps down to ``final_fraction``."""
    s = _make(
        "warmup_cosine",
        {
            "warmup_steps": (lambda v: v >= 0, ">= 0"),
            "total_steps": (lambda v: v >= 1, ">= 1"),
            "final_fraction": (lambda v: (v >= 0) & (v <= 1), "in [0, 1]"),
        },
        warmup_steps=warmup_steps,
        total_steps=total_steps,
        final_fraction=final_fraction,
    )
    if np.any(s.args["warmup_steps"] >= s.args["total_steps"]):
        raise ValueError(f"warmup_cosine schedule: warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")
    return s


def one_cycle(
    total_steps: ArrayLike, pct_start: ArrayLike = 0.3, div_factor: ArrayLike = 25.0, final_div_factor: ArrayLike = 1e4
) -> Schedule:
    """PyTorch's ``OneCycleLR`` with linear annealing: from ``1 / div_factor`` up to 1 at ``pct_start`` of the steps,
    then down to ``1 / (div_factor final_div_factor)``."""
    s = _make(
        "one_cycle",
        {
            "total_steps": (lambda v: v >= 2, ">= 2"),
            "pct_start": (lambda v: (v > 0) & (v < 1), "in (0, 1)"),
            "div_factor": (lambda v: v > 0, "> 0"),
            "final_div_factor": (lambda v: v > 0, "> 0"),
        },
        total_steps=total_steps,
        pct_start=pct_start,
        div_factor=div_factor,
        final_div_factor=final_div_factor,
    )
    up_end = s.args["pct_start"] * s.args["total_steps"] - 1
    if np.any(up_end <= 0) or np.any(up_end >= s.args["total_steps"] - 1):
        raise ValueError(
            f"one_cycle schedule: pct_start * total_steps - 1 must lie in (0, total_steps - 1); "
            f"got pct_start {pct_start}, total_steps {total_steps}"
        )
    return s


def triangle(total_steps: ArrayLike, peak_step: ArrayLike, start: ArrayLike = 0.2, end: ArrayLike = 0.07) -> Schedule:
    """airbench's schedule: linear from ``start`` to 1 at ``peak_step``, then linear to ``end`` at ``total_steps``."""
    s = _make(
        "triangle",
        {
            "total_steps": (lambda v: v >= 2, ">= 2"),
            "peak_step": (lambda v: v >= 1, ">= 1"),
            "start": (lambda v: v >= 0, ">= 0"),
            "end": (lambda v: v >= 0, ">= 0"),
        },
        total_steps=total_steps,
        peak_step=peak_step,
        start=start,
        end=end,
    )
    if np.any(s.args["peak_step"] >= s.args["total_steps"]):
        raise ValueError(f"triangle schedule: peak_step ({peak_step}) must be < total_steps ({total_steps})")
    return s


def by_name(kind: str, **args: Any) -> Schedule:
    """``by_name("cosine", total_steps=100)``: a schedule from its kind's name (for configs)."""
    makers: dict[str, Callable[..., Schedule]] = {
        "constant": constant,
        "step_decay": step_decay,
        "cosine": cosine,
        "warmup_cosine": warmup_cosine,
        "one_cycle": one_cycle,
        "triangle": triangle,
    }
    if kind not in makers:
        raise ValueError(f"unknown schedule {kind!r}; choose from {KINDS}")
    return makers[kind](**args)
