"""Gradient checking's numbers: central finite differences, directional derivatives and the gap to
``jax.grad`` of a loss (PyTorch's ``torch.autograd.gradcheck``'s job). ``jaxgd.check`` (``checker``)
builds its verdicts and diagnoses on these; the ``gradcheck`` experiment runs them over every
layer and model.

The error measure is INF265 project 1's elementwise relative error

    rel(g_a, g_n) = |g_a - g_n| / max(eps, |g_a| + |g_n|)

reported as its max and mean per leaf. ``check_gradients`` runs a whole check
in float64 (``jax.enable_x64`` scoped to the call) or float32.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.typing import ArrayLike, DTypeLike

# Pass thresholds on the max relative error. float64 uses INF265 project 1's 1e-6 against
# finite differences. In float32 a finite difference is mostly rounding noise
# (about 1e-7 |L| / h), so it is reported but not judged (None); the float32 check
# is hand vs jax.grad.
TOLERANCES: dict[str, dict[str, float | None]] = {
    "float64": {"fd": 1e-6, "directional": 1e-6, "autodiff": 1e-10},
    "float32": {"fd": None, "directional": None, "autodiff": 1e-4},
}


def passed(report: dict) -> bool:
    """Whether every judged error of a ``check_gradients`` report is within ``TOLERANCES``."""
    tol = TOLERANCES[report["dtype"]]
    return all(report.get(f"{k}_max", 0.0) <= t for k, t in tol.items() if t is not None)


def rel_error(g_a: ArrayLike, g_n: ArrayLike, eps: float = 1e-12) -> np.ndarray:
    """Elementwise ``|g_a - g_n| / max(eps, |g_a| + |g_n|)``, on the host (NumPy), in the arrays' dtype."""
    g_a, g_n = np.asarray(g_a), np.asarray(g_n)
    return np.abs(g_a - g_n) / np.maximum(eps, np.abs(g_a) + np.abs(g_n))


def leaf_names(tree: Any) -> list[str]:
    """``"0.W"``-style names of a pytree's leaves, in ``tree_leaves`` order."""

    def name(path):
        return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)

    return [name(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def sample_coordinates(params: Any, max_per_leaf: int | None = None, seed: int = 0) -> list[np.ndarray]:
    """Flat indices into each leaf: all of them, or ``max_per_leaf`` drawn without replacement (seeded)."""
    rng = np.random.default_rng(seed)
    out = []
    for leaf in jax.tree_util.tree_leaves(params):
        n = leaf.size
        if max_per_leaf is None or n <= max_per_leaf:
            out.append(np.arange(n))
        else:
            out.append(np.sort(rng.choice(n, max_per_leaf, replace=False)))
    return out


def central_difference(f, h, order=2):
    """The derivative of the scalar function ``f(s)`` at 0 by a central stencil.

    order 2 (INF265's): ``(f(h) - f(-h)) / 2h``, error O(h^2).
    order 4: ``(-f(2h) + 8 f(h) - 8 f(-h) + f(-2h)) / 12h``, error O(h^4), which
    allows a larger h and so less rounding noise on small gradient components.
    """
    if order == 2:
        return (f(h) - f(-h)) / (2 * h)
    if order == 4:
        return (-f(2 * h) + 8 * f(h) - 8 * f(-h) + f(-2 * h)) / (12 * h)
    raise ValueError(f"order must be 2 or 4, got {order}")


STENCIL_POINTS = {2: (-1, 1), 4: (-2, -1, 1, 2)}  # the multiples of h a stencil evaluates f at


def _same(a, b):
    """Whether two pytrees of arrays are equal everywhere (a traced boolean)."""
    eq = [jnp.all(u == v) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))]
    return jnp.all(jnp.stack(eq)) if eq else jnp.bool_(True)


def fd_estimates(f, params, index, h, order=2, pattern=None):
    """Central differences of ``f`` along the flat coordinates ``index`` (an integer array into
    ``ravel_pytree(params)``), one after another with ``lax.map``: ``(estimates, valid)``. Traceable,
    so a caller can compile it once with its own arguments (``jaxgd.check`` does); see
    ``finite_difference_grads`` for ``pattern``."""
    flat, unravel = ravel_pytree(params)

    def one(i):
        e = jnp.zeros_like(flat).at[i].set(1.0)
        at = lambda s: unravel(flat + s * e)
        estimate = central_difference(lambda s: f(at(s)), h, order)
        if pattern is None:
            return estimate, jnp.bool_(True)
        centre = pattern(at(0.0))
        return estimate, jnp.all(jnp.stack([_same(pattern(at(k * h)), centre) for k in STENCIL_POINTS[order]]))

    return jax.lax.map(one, index)  # one after another: vmapped convs ran slower on XLA:CPU


def flat_index(params: Any, coords: list[np.ndarray]) -> np.ndarray:
    """``coords`` (one index array per leaf, see ``sample_coordinates``) as indices into the
    flattened ``params`` (``ravel_pytree``'s order)."""
    sizes = [x.size for x in jax.tree_util.tree_leaves(params)]
    offsets = np.cumsum([0] + sizes[:-1])
    return np.concatenate([o + c for o, c in zip(offsets, coords)]).astype(np.int32)


def split_by_leaf(values: np.ndarray, coords: list[np.ndarray]) -> list[np.ndarray]:
    """A flat array of per-coordinate values cut back into one array per leaf."""
    return np.split(np.asarray(values), np.cumsum([len(c) for c in coords])[:-1])


def random_directions(params: Any, seed: int = 0) -> np.ndarray:
    """One random unit direction per leaf, drawn on the host (NumPy, seeded) and laid end to end in
    ``ravel_pytree(params)``'s order: the directions ``directional_estimates`` differentiates along."""
    rng = np.random.default_rng(seed)
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(params)]
    dirs = [rng.standard_normal(x.size) for x in leaves]
    return np.concatenate([(v / np.linalg.norm(v)).astype(x.dtype) for v, x in zip(dirs, leaves)])


def directional_estimates(f, grads, params, directions, h, order=2, pattern=None):
    """Along each leaf's direction v (``random_directions``; zero on the other leaves):
    ``(<g, v>, d/ds f(p + s v), valid)`` by central differences, one leaf after another with
    ``lax.map``; ``valid`` is False where the stencil straddles a kink (see ``fd_estimates``). Traceable.

    One random direction per leaf checks every coordinate at once, like
    ``jax.test_util.check_grads``, in ``order`` evaluations of ``f``.
    """
    leaves = jax.tree_util.tree_leaves(params)
    owner = jnp.asarray(np.repeat(np.arange(len(leaves)), [x.size for x in leaves]))  # the leaf of each coordinate
    flat, unravel = ravel_pytree(params)
    g_flat, _ = ravel_pytree(grads)

    def one(i):
        v = jnp.where(owner == i, directions, 0)
        at = lambda s: unravel(flat + s * v)
        numeric = central_difference(lambda s: f(at(s)), h, order)
        valid = jnp.bool_(True)
        if pattern is not None:
            centre = pattern(at(0.0))
            valid = jnp.all(jnp.stack([_same(pattern(at(k * h)), centre) for k in STENCIL_POINTS[order]]))
        return jnp.sum(g_flat * v), numeric, valid

    return jax.lax.map(one, jnp.arange(len(leaves)))


def cast(tree: Any, dtype: DTypeLike) -> Any:
    """Floating leaves of ``tree`` as ``dtype``; other leaves (integer labels, keys) as they are."""
    return jax.tree_util.tree_map(
        lambda x: jnp.asarray(x, dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else jnp.asarray(x), tree
    )


def host_cast(tree: Any, dtype: DTypeLike) -> Any:
    """``cast`` done by NumPy on the host: no device program per leaf shape. Scalars become arrays."""

    def one(x):
        if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return x
        a = np.asarray(x)
        return a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a

    return jax.tree_util.tree_map(one, tree)


def check_gradients(
    loss_fn: Callable,
    grad_fn: Callable,
    params: Any,
    *args: Any,
    dtype: DTypeLike = jnp.float64,
    h: float | None = None,
    eps: float | None = None,
    order: int = 4,
    max_per_leaf: int | None = None,
    directional: bool = True,
    seed: int = 0,
    pattern_fn: Callable | None = None,
) -> dict:
    """Check ``grad_fn(params, *args)`` against finite differences and ``jax.grad(loss_fn)``.

    Floating params and args are cast to ``dtype``; float64 runs inside
    ``jax.enable_x64``. Defaults: the 4-point stencil; float64 ``h = 1e-4, eps = 1e-12``; float32
    ``h = 1e-2, eps = 1e-6`` (float32 central differences carry an error of about
    ``1e-7 |L| / h``, so only the comparison with ``jax.grad`` is judged there: see
    ``TOLERANCES``). ``order`` picks the stencil (``central_difference``): INF265's
    2-point stencil at h = 1e-5 leaves rounding errors near 1e-11, i.e. a relative
    error above 1e-6 on gradient components of 1e-6; the 4-point one at h = 1e-4 does not. ``max_per_leaf`` samples that many coordinates per
    leaf for the finite differences (all when None); ``directional`` adds one
    random-direction check per leaf. ``pattern_fn(params, *args)``, if given, returns the forward
    pass's discrete choices (``model_kinks``): finite differences whose stencil changes them are
    left out of the maxima and counted (``fd_kinked``). Returns a report with per-leaf errors and
    ``fd_max``, ``autodiff_max``, ``directional_max``.

    Everything on the device is one compiled program (the hand gradient, ``jax.grad``, the finite
    differences and the directional derivatives); the errors are computed on the host.
    """
    is64 = jnp.dtype(dtype) == jnp.float64
    h = (1e-4 if is64 else 1e-2) if h is None else h
    eps = (1e-12 if is64 else 1e-6) if eps is None else eps

    def measure(params, args, index, directions):
        f = lambda p: loss_fn(p, *args)
        pattern = None if pattern_fn is None else (lambda p: pattern_fn(p, *args))
        grads = grad_fn(params, *args)
        fd, valid = fd_estimates(f, params, index, h, order, pattern)
        dirs = directional_estimates(f, grads, params, directions, h, order, pattern) if directional else None
        return grads, jax.grad(f)(params), fd, valid, dirs

    with jax.enable_x64(is64):
        params, args = host_cast(params, dtype), host_cast(args, dtype)
        coords = sample_coordinates(params, max_per_leaf, seed)
        grads, auto, fd, valid, dirs = jax.device_get(
            jax.jit(measure)(params, args, flat_index(params, coords), random_directions(params, seed))
        )
    fd, valid = split_by_leaf(fd, coords), split_by_leaf(valid, coords)
    leaves = []
    for i, (name, g, a, c, n, ok) in enumerate(
        zip(leaf_names(params), jax.tree_util.tree_leaves(grads), jax.tree_util.tree_leaves(auto), coords, fd, valid)
    ):
        e = rel_error(np.asarray(g).reshape(-1)[c], n, eps)[ok]
        ea = rel_error(g, a, eps)
        leaf = {
            "name": name,
            "size": int(g.size),
            "fd_checked": int(ok.sum()),
            "fd_kinked": int((~ok).sum()),
            "fd_max": float(e.max()) if e.size else 0.0,
            "fd_mean": float(e.mean()) if e.size else 0.0,
            "autodiff_max": float(ea.max()),
            "autodiff_mean": float(ea.mean()),
        }
        if directional:
            analytic, numeric, ok_dir = (float(dirs[0][i]), float(dirs[1][i]), bool(dirs[2][i]))
            leaf["directional"] = {
                "analytic": analytic,
                "numeric": numeric,
                "straddles_kink": not ok_dir,
                "rel": float(rel_error(dirs[0][i], dirs[1][i], eps)) if ok_dir else 0.0,
            }
        leaves.append(leaf)
    report = {
        "dtype": jnp.dtype(dtype).name,
        "h": h,
        "order": order,
        "eps": eps,
        "leaves": leaves,
        "fd_kinked": sum(l["fd_kinked"] for l in leaves),
        "fd_max": max(l["fd_max"] for l in leaves),
        "autodiff_max": max(l["autodiff_max"] for l in leaves),
    }
    if directional:
        report["directional_max"] = max(l["directional"]["rel"] for l in leaves)
    return report


def off_constant(tree, rng):
    """Leaves whose entries are all equal (ones, zeros: initial scales, shifts, running statistics)
    moved to random values, positive ones kept positive; on the host, as NumPy arrays. ``rng`` is a
    ``numpy.random.Generator`` or a seed. Drawing with NumPy compiles nothing (a ``jax.random``
    draw compiles a program for every shape it is asked for)."""
    rng = np.random.default_rng(rng)

    def move(a):
        a = np.asarray(a)
        if not (np.issubdtype(a.dtype, np.floating) and a.size and np.all(a == a.flat[0])):
            return a
        z = rng.standard_normal(a.shape).astype(a.dtype)
        return a * np.exp(0.3 * z) if a.flat[0] > 0 else a + 0.3 * z

    return jax.tree_util.tree_map(move, tree)


def layer_problem(layer, params, state, x, *, train=False, key=None, seed=0):
    """A layer as a gradient-check problem over ``(params, x)``: the scalar
    ``L(params, x) = sum(c * layer.forward(params, state, x)[0])`` with a fixed random ``c``, and
    its hand gradient ``layer.backward(params, residuals, c)``. Returns ``(loss_fn, grad_fn, args)``
    for ``check_gradients(loss_fn, grad_fn, (params, x), *args)``."""
    y = jax.eval_shape(lambda p, s, x: layer.forward(p, s, x, train=train, key=key)[0], params, state, x)
    c = np.random.default_rng(seed).standard_normal(y.shape)  # drawn on the host: no program to compile

    def loss_fn(px, state, c):
        return jnp.sum(c * layer.forward(px[0], state, px[1], train=train, key=key)[0])

    def grad_fn(px, state, c):
        _, _, res = layer.forward(px[0], state, px[1], train=train, key=key)
        return layer.backward(px[0], res, c.astype(px[1].dtype))

    return loss_fn, grad_fn, (state, c)


def kinks(layers, residuals) -> list:
    """The discrete choices of a forward pass, read from its residuals: the sign of every ReLU
    and leaky-ReLU output and the winner of every max-pool window (branches opened)."""
    from jaxgd import layers as L

    out = []
    for layer, r in L.walk(layers, residuals):
        if isinstance(layer, L.MaxPool):
            out.append(r)
        elif isinstance(layer, L.LeakyReLU) or (isinstance(layer, L.Activation) and layer.name == "relu"):
            out.append(r > 0)
    return out


def model_kinks(model, key=None):
    """``pattern_fn(params, x, y, state)`` for ``check_gradients`` of a ``models.Model`` in training
    mode: ``kinks`` of its forward pass."""

    def pattern(params, x, y, state):
        return kinks(model.layers, model.forward(params, state, x, True, key)[2])

    return pattern
