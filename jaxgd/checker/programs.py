"""The compiled pieces of a layer's or model's check, and where they are kept: in a ``Programs``
store that the caller holds, or, for subjects made only of jaxgd's own layers (frozen dataclasses
whose behaviour is their fields' values), in the checker's own store. A user's object is never a
key of a store the caller did not give: a class attribute changed between two checks (which a
frozen dataclass's equality does not see) would otherwise get the first check's programs."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp

from jaxgd import gradcheck
from jaxgd.checker.compare import FD_H, jit


class Programs:
    """Compiled pieces of checks, kept for the next check that passes the same store
    (``check(subject, ..., programs=store)``), the last ``size`` of them. Holding one is saying
    the subjects checked through it do not change between checks."""

    def __init__(self, size: int = 64):
        self.size = size
        self._kept: collections.OrderedDict = collections.OrderedDict()

    def get(self, key, build):
        """The pieces stored under ``key`` (a hashable description of subject and problem), built
        by ``build()`` the first time; an unhashable key is built afresh."""
        try:
            hash(key)
        except TypeError:
            return build()
        if key not in self._kept:
            self._kept[key] = build()
            if len(self._kept) > self.size:
                self._kept.popitem(last=False)
        self._kept.move_to_end(key)
        return self._kept[key]

    def __len__(self):
        return len(self._kept)


BUILT_IN = Programs()  # for subjects made only of jaxgd's own layers (``by_value``)


def by_value(obj) -> bool:
    """``obj`` is a jaxgd layer or ``models.Model`` made only of jaxgd's own layer classes (exactly
    those, no subclass): frozen dataclasses whose behaviour is their fields' values."""
    from jaxgd import layers as L
    from jaxgd import models

    layers = obj.layers if type(obj) is models.Model else (obj,)
    return all(
        type(layer).__module__ == L.__name__
        and getattr(type(layer), "__dataclass_params__", None) is not None
        and type(layer).__dataclass_params__.frozen
        for layer in (*layers, *L.walk(layers))
    )


def store_for(obj, programs):
    """Where a check of ``obj`` keeps its pieces: the caller's store; else the checker's own for a
    subject ``by_value``; else a store for this one check (its float64 and float32 passes share it)."""
    if programs is not None:
        return programs
    return BUILT_IN if by_value(obj) else Programs()


class Pieces:
    """The jitted pieces of checking one subject in one mode and dtype (kept in a ``Programs``
    store: a second check of the same layer and shape through it compiles nothing). ``both`` runs the forward, ``jax.vjp`` of it and the hand backward in one program (or ``truth``
    without the hand backward, where that cannot be traced: it then runs eagerly); ``stacked``
    runs the backward under ``vmap``; ``fd`` the finite-difference stencils; ``loss_grads`` a
    model's hand loss gradient beside ``jax.grad``'s."""

    def __init__(self, sub, n, train, dtype):
        self.sub, self.n, self.train, self.dt = sub, n, train, jnp.dtype(dtype)
        self.both, self.truth = jit(self._both), jit(self._truth)
        self.stacked = jit(jax.vmap(self.hand, in_axes=(None, None, 0, 0, None)))
        self.fd = jit(self._fd)
        self.loss_grads = jit(self._loss_grads)
        self.untraceable = None  # why the hand backward cannot be traced, once that is known
        self.raised = None  # the error the hand backward raised, run eagerly

    def run(self, p, state, x, c, key, with_hand=True):
        """``(y, new_state, jax.vjp's gradients, the hand gradients)``, compiled as one program
        when the backward can be traced. Where that raises, the forward and ``jax.vjp`` run as their
        own program and the backward eagerly: if it runs, ``untraceable`` holds the error it raised
        under jit; if it raises there too, ``raised`` holds that error and the hand gradients are
        ``None`` (as without ``with_hand``). An error of the forward itself propagates."""
        if self.untraceable is None and self.raised is None:
            try:
                return self.both(p, state, x, c, key)
            except Exception as e:  # noqa: BLE001  (the user's backward may raise anything)
                under_jit = e
        else:
            under_jit = None
        y, new_state, true = self.truth(p, state, x, c, key)
        if not with_hand or self.raised is not None:
            return y, new_state, true, None
        try:
            hand = self.hand(p, state, x, c, key)
        except Exception as e:  # noqa: BLE001
            self.raised = e
            return y, new_state, true, None
        if under_jit is not None:
            self.untraceable = under_jit
        return y, new_state, true, hand

    def forward(self, p, state, x, key):
        return self.sub.forward(p, state, x, self.train, key)

    def hand(self, p, state, x, c, key):
        return self.sub.backward(p, self.forward(p, state, x, key)[2], c)

    def _truth(self, p, state, x, c, key):
        y, new_state, _ = self.forward(p, state, x, key)
        true = jax.vjp(lambda p, x: self.forward(p, state, x, key)[0], p, x)[1](c)
        return y, new_state, true

    def _both(self, p, state, x, c, key):
        return self._truth(p, state, x, c, key) + (self.hand(p, state, x, c, key),)

    def _fd(self, p, state, x, c, key, index):
        from jaxgd import layers as L

        sub = self.sub

        def loss(px):
            return jnp.sum(c * self.forward(px[0], state, px[1], key)[0])

        def kinks(px):
            res = self.forward(px[0], state, px[1], key)[2]
            return gradcheck.kinks(sub.layers, res if sub.model is not None else [res])

        has_kinks = sub.layers and any(
            isinstance(l, (L.MaxPool, L.LeakyReLU, L.Activation)) for l in L.walk(sub.layers)
        )
        return gradcheck.fd_estimates(loss, (p, x), index, FD_H, 4, kinks if has_kinks else None)

    def _loss_grads(self, p, state, x, y, key):
        from jaxgd import losses

        model = self.sub.model
        loss_fn, _ = losses.get_loss(model.loss)
        hand = model.grad(p, state, x, y, key)[2]
        return hand, jax.grad(lambda p: loss_fn(model.forward(p, state, x, True, key)[0], y))(p)
