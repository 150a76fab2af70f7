"""Any JAX function as a checker subject: the custom rules inside it, and the function with them
stripped.

``jax.make_jaxpr(f)`` shows every custom derivative rule ``f`` calls, wherever it sits (under
``jit``, ``vmap``, ``scan``, ``cond``, ``remat``, inside another rule's primal): a
``custom_jvp_call`` or ``custom_vjp_call`` equation whose ``call_jaxpr`` is the rule's primal.

- ``rules(f, *args)``: each such equation as a ``Rule`` (its name and the line that defines it, the
  line that calls it, the path of higher-order primitives around it).
- ``stripped(f)``: ``f`` with every rule replaced by its primal (``call_jaxpr`` evaluated), so that
  ``jax.grad`` of it is autodiff of the mathematics the rules claim to differentiate: the truth for
  the whole function's gradient.
- ``captured(f, *args)``: each rule with the arguments it receives in this call (in a ``scan`` or a
  ``while_loop``, its first iteration; in a ``cond``, the branch taken), to check the rule alone
  where it sits.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.extend import core as jcore

CUSTOM = ("custom_jvp_call", "custom_vjp_call")
_JAX = str(Path(jax.__file__).parent)


@dataclasses.dataclass(frozen=True)
class Rule:
    """A custom rule found inside a function: ``kind`` (``"custom_jvp"`` / ``"custom_vjp"``),
    ``name`` and ``defined`` (``file:line`` of the primal it differentiates), ``called`` (the line of
    your code that calls it), ``path`` (the primitives around it, outermost first), and ``eqn``."""

    kind: str
    name: str
    defined: str
    called: str | None  # None: JAX's own code calls it (jax.nn.softplus calls logaddexp)
    path: tuple
    eqn: Any = dataclasses.field(repr=False, compare=False)  # a jax.extend.core.JaxprEqn

    def where(self) -> str:
        inside = " > ".join(self.path)
        called = "called from JAX's own code" if self.called is None else f"called at {self.called}"
        return (
            f"{self.kind} {self.name} (defined at {self.defined}; {called}"
            + (f"; inside {inside}" if inside else "")
            + ")"
        )

    def hand(self, *args):
        """The rule's function: its primitive bound again (its derivative is the rule's)."""
        params = self.eqn.primitive.get_bind_params(self.eqn.params)
        out = self.eqn.primitive.bind(*args, **params)
        return out if self.eqn.primitive.multiple_results else [out]

    def primal(self, *args):
        """The rule's primal, its ``call_jaxpr`` evaluated with every rule inside it stripped too."""
        cj = self.eqn.params["call_jaxpr"]
        return _eval(cj.jaxpr, cj.consts, args)

    @property
    def num_consts(self) -> int:
        return int(self.eqn.params.get("num_consts", 0))


def _sub_jaxprs(params):
    """``(key, index or None, ClosedJaxpr or Jaxpr)`` of every jaxpr among an equation's params."""
    for k, v in params.items():
        for i, sub in enumerate(v) if isinstance(v, (tuple, list)) else [(None, v)]:
            if isinstance(sub, (jcore.ClosedJaxpr, jcore.Jaxpr)):
                yield k, i, sub


def _user_line(eqn) -> str | None:
    tb = getattr(eqn.source_info, "traceback", None)
    for frame in tb.frames if tb is not None else ():
        if not frame.file_name.startswith(_JAX):
            return f"{Path(frame.file_name).name}:{frame.line_num}"
    return None


def _defined(eqn) -> tuple[str, str]:
    info = getattr(eqn.params["call_jaxpr"].jaxpr, "debug_info", None)
    src = getattr(info, "func_src_info", None) or "?"
    name, _, at = src.partition(" at ")
    return name or "?", (Path(at.rpartition(":")[0]).name + ":" + at.rpartition(":")[2]) if at else "?"


def _walk(jaxpr, path=()):
    jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in CUSTOM:
            name, defined = _defined(eqn)
            yield Rule(eqn.primitive.name.removesuffix("_call"), name, defined, _user_line(eqn), path, eqn)
            yield from _walk(eqn.params["call_jaxpr"], path + (f"the primal of {name}",))
            continue
        label = eqn.params.get("name") if eqn.primitive.name in ("jit", "pjit", "closed_call") else None
        for _, _, sub in _sub_jaxprs(eqn.params):
            yield from _walk(sub, path + (f"{eqn.primitive.name}({label})" if label else eqn.primitive.name,))


def rules(f, *args) -> list[Rule]:
    """Every custom rule ``f`` calls at ``args``, in the order its jaxpr calls them."""
    return list(_walk(jax.make_jaxpr(f)(*args)))


# ------------------------------------------------------------------------------ the rules stripped


def _has_rules(jaxpr) -> bool:
    return next(_walk(jaxpr), None) is not None


def _strip_closed(cj):
    """``cj`` (a ClosedJaxpr) with every rule in it replaced by its primal, traced again."""
    if not _has_rules(cj):
        return cj
    avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in cj.jaxpr.invars]
    return jax.make_jaxpr(lambda *a: _eval(cj.jaxpr, cj.consts, a))(*avals)


def _strip_open(j):
    """An open Jaxpr (``remat``'s) stripped; its constants, if tracing made any, stay literals' job."""
    if not _has_rules(j):
        return j
    out = _strip_closed(jcore.ClosedJaxpr(j, ()))
    if out.consts:
        raise NotImplementedError("a rule inside remat whose primal closes over arrays")
    return out.jaxpr


def _stripped_params(params):
    new = dict(params)
    for k, v in params.items():
        if isinstance(v, jcore.ClosedJaxpr):
            new[k] = _strip_closed(v)
        elif isinstance(v, jcore.Jaxpr):
            new[k] = _strip_open(v)
        elif isinstance(v, (tuple, list)) and any(isinstance(s, (jcore.ClosedJaxpr, jcore.Jaxpr)) for s in v):
            new[k] = type(v)(
                _strip_closed(s)
                if isinstance(s, jcore.ClosedJaxpr)
                else _strip_open(s)
                if isinstance(s, jcore.Jaxpr)
                else s
                for s in v
            )
    return new


def _eval(jaxpr, consts, args, on_rule=None):
    """Evaluate ``jaxpr`` with every custom rule replaced by its primal. ``on_rule(eqn, invals)``,
    when given, sees each rule's arguments as they arrive (concrete values when evaluated eagerly)."""
    env = {}

    def read(v):
        return v.val if isinstance(v, jcore.Literal) else env[v]

    for v, c in zip(jaxpr.constvars, consts):
        env[v] = c
    for v, a in zip(jaxpr.invars, args):
        env[v] = a
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        if eqn.primitive.name in CUSTOM:
            if on_rule is not None:
                on_rule(eqn, invals)
            cj = eqn.params["call_jaxpr"]
            outs = _eval(cj.jaxpr, cj.consts, invals, on_rule)
        else:
            if on_rule is not None:
                _capture_inside(eqn, invals, on_rule)
            params = eqn.primitive.get_bind_params(_stripped_params(eqn.params))
            outs = eqn.primitive.bind(*invals, **params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        for v, o in zip(eqn.outvars, outs):
            if not isinstance(v, jcore.DropVar):
                env[v] = o
    return [read(v) for v in jaxpr.outvars]


def stripped(f):
    """``f`` with every custom rule inside replaced by its primal: the same values, and
    ``jax.grad`` of it is plain autodiff of what the rules claim to differentiate."""

    def g(*args):
        leaves, tree = jax.tree_util.tree_flatten(args)
        closed, out_shape = jax.make_jaxpr(lambda *l: f(*jax.tree_util.tree_unflatten(tree, l)), return_shape=True)(
            *leaves
        )
        outs = _eval(closed.jaxpr, closed.consts, leaves)
        return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outs)

    return g


# ------------------------------------------------------------------------------ rules at their arguments


def _capture_inside(eqn, invals, on_rule):
    """Where a higher-order primitive holds rules, run its body once eagerly to see their arguments:
    a call's (or remat's) body, a scan's or while loop's first iteration, a cond's branch taken."""
    name, p = eqn.primitive.name, eqn.params
    if not any(_has_rules(sub) for _, _, sub in _sub_jaxprs(p)):
        return
    if name in ("jit", "pjit", "closed_call", "core_call", "remat", "remat2", "checkpoint"):
        sub = p.get("jaxpr") or p.get("call_jaxpr")
        _eval(getattr(sub, "jaxpr", sub), getattr(sub, "consts", ()), invals, on_rule)
    elif name == "scan" and int(p["length"]) > 0:
        n_c, n_carry = int(p["num_consts"]), int(p["num_carry"])
        i = int(p["length"]) - 1 if p.get("reverse") else 0
        xs = [np.asarray(x)[i] for x in invals[n_c + n_carry :]]
        body = p["jaxpr"]
        _eval(body.jaxpr, body.consts, invals[: n_c + n_carry] + xs, on_rule)
    elif name == "cond":
        branch = p["branches"][int(np.asarray(invals[0]))]
        _eval(branch.jaxpr, branch.consts, invals[1:], on_rule)
    elif name == "while":
        n_cc, n_bc = int(p["cond_nconsts"]), int(p["body_nconsts"])
        carry = invals[n_cc + n_bc :]
        cond, body = p["cond_jaxpr"], p["body_jaxpr"]
        if bool(np.asarray(_eval(cond.jaxpr, cond.consts, invals[:n_cc] + carry)[0])):  # its first iteration
            _eval(body.jaxpr, body.consts, invals[n_cc : n_cc + n_bc] + carry, on_rule)


def captured(f, *args) -> list[tuple[Rule, list]]:
    """Each rule ``f`` calls at ``args`` with the (concrete) arguments it receives there: the first
    time it is reached, evaluating ``f`` eagerly."""
    leaves, tree = jax.tree_util.tree_flatten(args)
    closed = jax.make_jaxpr(lambda *l: f(*jax.tree_util.tree_unflatten(tree, l)))(*leaves)
    found = {id(r.eqn): r for r in _walk(closed)}
    seen = {}

    def on_rule(eqn, invals):
        if id(eqn) in found and id(eqn) not in seen:
            seen[id(eqn)] = (found[id(eqn)], [np.asarray(v) for v in invals])

    _eval(closed.jaxpr, closed.consts, leaves, on_rule)
    return list(seen.values())
