"""The checker's tolerances and its one per-leaf comparison, shared by the layer check and the
custom-rule check; the compile helper; and the user's error said in one line with its place."""

from __future__ import annotations

import functools
import traceback
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxgd import xla
from jaxgd.checker.diagnoses import diagnose, maxabs

# The checker's programs run once, on a few examples: compiling them is most of a check's time. XLA:CPU
# spends half of that in LLVM's optimisation of the generated code, which these programs do not need:
# they are compiled with it off. The HLO (what is computed, and XLA's own passes) is the same; the
# rounding may differ in the last bits (on the suite's layers and the gallery, the errors a report
# prints moved at the 1e-11 level, and no verdict or diagnosis changed), which the checker's tolerances
# allow for. The bench's ``startup`` section counts the programs and the seconds. They take jaxgd's
# other compiler options too (``jaxgd.xla``: XLA:CPU's convolutions on its Eigen path).
jit = functools.partial(xla.jit, compiler_options={"xla_backend_optimization_level": 0})

VJP_TOLERANCES = {"float64": 1e-10, "float32": 1e-4}  # max |hand - vjp| / max |vjp| per leaf
# A leaf whose true gradient is zero or nearly (in training, a bias right before batch norm: exactly
# 0 on paper, rounding noise of ~1e-15 in float64) is measured against this fraction of the
# problem's largest gradient instead of its own largest entry, which would be the noise itself.
ZERO_FLOOR = 1e-2
# float32 rounding grows with depth and with batch norm over a small batch, and spreads through the
# quantities gradients share (a bias before batch norm sums dx, 0 on paper, noise of dx's size in
# float32): a float32 gradient may also differ from jax.vjp's by F32_SLACK times the largest float32
# error jax.vjp itself makes on any gradient of the problem (against float64).
F32_SLACK = 10.0
FD_TOLERANCE, FD_EPS, FD_H, FD_PER_LEAF = 1e-6, 1e-5, 1e-4, 16
MODES = ("train", "eval")
DTYPES = ("float64", "float32")


def within(a, b, limit) -> bool:
    """``a`` and ``b`` of one shape, non-finite in the same places, and within ``limit`` elsewhere:
    two runs of the same computation agree (NaN where the other has NaN is agreement)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return False
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb):
        return False
    odd_a, odd_b = a[~fa], b[~fb]
    if not np.all((odd_a == odd_b) | (np.isnan(odd_a) & np.isnan(odd_b))):
        return False
    return maxabs(a[fa] - b[fb]) <= limit


def numpy_tree(tree):
    return jax.tree_util.tree_map(np.asarray, tree)


def cast(tree, dtype):
    """Floating leaves as ``dtype``, on the host (``gradcheck.cast`` compiles a conversion per shape)."""
    return jax.tree_util.tree_map(lambda a: a.astype(dtype) if np.issubdtype(a.dtype, np.floating) else a, tree)


def allowances(true, tol, ref=None):
    """The largest ``|hand - true|`` each leaf may show: ``tol`` times the leaf's largest entry (at
    least ``ZERO_FLOOR`` of the problem's largest gradient), or, in float32, ``F32_SLACK`` times
    the largest ``|true - ref|`` of any leaf, the float32 error of ``true`` itself against the
    float64 ``ref``."""
    floor = max(max((maxabs(t) for t in true), default=0.0) * ZERO_FLOOR, 1e-300)
    out = [tol * max(maxabs(t), floor) for t in true]
    if ref is not None:  # rounding spreads through shared intermediates: the largest error anywhere
        noise = max(
            (
                maxabs(np.asarray(t, np.float64) - np.asarray(r))
                for t, r in zip(true, ref)
                if np.shape(t) == np.shape(r)
            ),
            default=0.0,
        )
        out = [max(a, F32_SLACK * noise) for a in out]
    return {"floor": floor, "abs": out}


def compare_leaf(h, t, dtype, allow, floor, context) -> dict:
    """One gradient, hand ``h`` against true ``t``: the largest absolute and relative differences,
    the worst index, and where it is wrong (another shape or dtype, or a difference over ``allow``)
    its diagnosis (``diagnose`` with ``context()``, its ``allow`` added)."""
    h, t = np.asarray(h), np.asarray(t)
    leaf: dict[str, Any] = {"abs": None, "rel": None, "cause": None}
    if h.shape == t.shape:
        diff = np.abs(h.astype(np.float64) - t.astype(np.float64))
        leaf["abs"] = float(diff.max(initial=0.0))
        leaf["rel"] = leaf["abs"] / max(float(np.max(np.abs(t), initial=0.0)), floor) if leaf["abs"] else 0.0
        if diff.size:
            j = np.unravel_index(int(np.argmax(diff)), diff.shape)
            leaf.update(index=tuple(int(v) for v in j), hand_at=float(h[j]), true_at=float(t[j]))
    # NaN compares as neither more nor less: a non-finite hand entry where the truth is finite is wrong
    nonfinite = h.shape == t.shape and bool(np.any(~np.isfinite(h.astype(np.float64)) & np.isfinite(t)))
    if h.shape != t.shape or h.dtype != dtype or nonfinite or leaf["abs"] > allow:
        found = diagnose(h, t, {**context(), "allow": allow})
        leaf.update(cause=found.text, kind=found.kind, family=found.family)
    return leaf


def fd_eps(terms: float) -> float:
    """The floor of finite differences' relative error for ``L = sum(c * y)`` whose terms have
    absolute sum ``terms``: the quotient's rounding, ten ulps of those terms over ``FD_H``; below it
    central differences cannot tell 0 from noise. The same for a layer and a custom-rule function."""
    return max(FD_EPS, 10 * float(np.finfo(np.float64).eps) * terms / FD_H / FD_TOLERANCE)


_OURS = (Path(jax.__file__).parent, Path(np.__file__).parent, Path(__file__).parent)


def user_line(e: BaseException) -> str | None:
    """``file:line: code`` of the innermost frame of ``e``'s traceback in the user's code (not
    JAX's, NumPy's or the checker's), or None."""
    for frame in reversed(traceback.extract_tb(e.__traceback__)):
        path = Path(frame.filename)
        if not any(p in path.parents for p in _OURS) and "site-packages/jaxlib" not in frame.filename:
            return f"{path.name}:{frame.lineno}: {(frame.line or '').strip()}"
    return None


def explain(e) -> str:
    """An error raised by the user's code, in one line: what it was, a hint for the tracing
    mistakes, and where in the user's code it was raised."""
    name = type(e).__name__
    first = (str(e).strip().splitlines() or [""])[0][:160]
    if "TracerArrayConversion" in name:
        text = f"{name}: the backward turns a traced array into a NumPy one (np.* on a jax array): use jax.numpy"
    elif "Concretization" in name or "TracerBool" in name:
        text = f"{name}: the backward branches in Python on an array's value: use jnp.where or lax.cond"
    else:
        text = f"{name}: {first}"
    at = user_line(e)
    return text + (f" (at {at})" if at else "")
