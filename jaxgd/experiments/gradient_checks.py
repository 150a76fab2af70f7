"""Experiment 1 (``jaxgd gradcheck``): every hand-derived gradient against finite differences and
``jax.grad``, run with ``jaxgd.gradcheck``'s machinery over every layer and model (``jaxgd.check``
is the one-call checker of a single layer, model or custom rule, with diagnoses).

Checked: every layer kind's backward (``layers``: strided and 'valid' convolutions, the
poolings, the activations, batch and layer norm, residual and concat blocks), the generic
reverse pass of all nine MNIST models, the CIFAR ResNet-8 and the 1.6M-parameter CIFAR-2 MLP
(``models``), and the derivations of
``backprop``: INF265's MLP delta recursion, DD2424's closed form and the matrix chain.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxgd import backprop, gradcheck, losses, models, progress
from jaxgd import layers as L
from jaxgd.experiments.common import provenance, record, write
from jaxgd.experiments.config import Config, ConfigError, option
from jaxgd.experiments.protocol import Experiment


@dataclasses.dataclass(frozen=True)
class GradcheckConfig(Config):
    NAME = "gradcheck"
    quick: bool = option(
        False,
        "one case per layer kind (QUICK_LAYERS), every MLP activation and loss once "
        "(QUICK_SKIP), one matrix chain and one MNIST model instead of all of them; no "
        "ResNet-8 and no 1.6M-parameter CIFAR-2 MLP",
    )
    only: tuple[str, ...] | None = option(None, "run only the checks of these names (see the results' 'name')")


CONFIG = GradcheckConfig


def _init(init, seed):
    """``init(PRNGKey(seed))`` as one compiled program: a model's initialisers called one by one
    would compile a program for every shape they draw."""
    return jax.jit(init)(jax.random.PRNGKey(seed))


def _data(seed, shape, classes, labels):
    """A random input of ``shape`` and, for its examples (all but the last axis), labels below
    ``classes`` or regression targets with ``classes`` outputs: drawn on the host, so nothing compiles."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    out = shape[:-1] if len(shape) < 3 else shape[:1]
    y = rng.integers(0, classes, out).astype(np.int32) if labels else rng.standard_normal(out + (classes,))
    return x, y


def _mlp_case(name, sizes, acts, loss, batch=8, seed=0, max_per_leaf=None):
    # PyTorch-style init gives non-zero biases, so no ReLU input sits exactly on its kink at 0
    params = _init(lambda k: backprop.init_mlp(k, sizes, "torch"), seed)
    shape = (batch, sizes[0]) if batch else (sizes[0],)
    x, y = _data(seed, shape, sizes[-1], labels=loss == "cross_entropy")
    loss_fn = losses.get_loss(loss)[0]
    names = backprop.resolve_activations(acts, len(sizes) - 1)

    def relu_signs(p, x, y):  # where a ReLU input changes sign inside the stencil, FD is not a derivative
        return [z > 0 for z, a in zip(backprop.mlp_forward(p, x, acts)[1]["z"], names) if a == "relu"]

    return {
        "name": name,
        "model": f"INF265 MLP recursion {'-'.join(map(str, sizes))} {acts}",
        "loss": loss,
        "pattern_fn": relu_signs,
        "loss_fn": lambda p, x, y: loss_fn(backprop.mlp_apply(p, x, acts), y),
        "grad_fn": lambda p, x, y: backprop.mlp_loss_and_grads(p, x, y, acts, loss)[2],
        "params": params,
        "args": (x, y),
        "max_per_leaf": max_per_leaf,
        # a ReLU unit off for every example has gradient exactly 0, where the stencil reads ~1e-13
        # of rounding: eps = 1e-5 judges components below 1e-5 within 1e-11 absolute, as for the layers
        "eps64": 1e-5,
    }


def _model_case(name, model, batch, max_per_leaf, seed=0, h=None, eps=None, eps32=None):
    """A whole model's hand gradient (``model.grad``: the generic reverse pass) in training mode:
    dropout with a fixed key, batch norm on batch statistics."""
    kd = jax.random.PRNGKey(seed + 1)
    params, state = _init(model.init, seed)
    x, y = _data(seed, (batch,) + model.in_shape, model.shapes()[-1][-1], labels=True)
    loss_fn = losses.get_loss(model.loss)[0]
    return {
        "name": name,
        "model": " - ".join(model.describe()),
        "loss": model.loss,
        "loss_fn": lambda p, x, y, s: loss_fn(model.apply(p, s, x, True, kd)[0], y),
        "grad_fn": lambda p, x, y, s: model.grad(p, s, x, y, kd)[2],
        "params": params,
        "args": (x, y, state),
        "max_per_leaf": max_per_leaf,
        "h": h,
        "eps64": eps,
        "eps32": eps32,
        "pattern_fn": gradcheck.model_kinks(model, kd),
    }


# Every layer kind, alone: (name, layer, per-example input shape, batch, train)
LAYER_CASES = [
    ("dense", L.dense(5), (7,), 4, False),
    ("relu", L.relu(), (6,), 4, False),
    ("sigmoid", L.sigmoid(), (6,), 4, False),
    ("tanh", L.tanh(), (6,), 4, False),
    ("identity", L.identity(), (6,), 4, False),
    ("conv1x1", L.conv2d(32, 1), (5, 4, 1), 2, False),
    ("conv3x3-lax", L.conv2d(4, 3, "lax"), (6, 5, 2), 2, False),
    ("conv3x3-im2col", L.conv2d(4, 3, "im2col"), (6, 5, 2), 2, False),
    ("conv5x5", L.conv2d(3, 5), (6, 6, 3), 2, False),
    ("maxpool2", L.max_pool(2), (4, 6, 3), 2, False),
    ("flatten", L.flatten(), (3, 2, 2), 3, False),
    ("dropout-train", L.dropout(0.3), (20,), 4, True),
    ("batchnorm-train", L.batch_norm(), (3, 3, 4), 8, True),
    ("batchnorm-eval", L.batch_norm(), (5,), 8, False),
    # strides and 'valid' padding, odd and even sizes
    ("conv3x3-stride2", L.conv2d(4, 3, stride=2), (7, 6, 2), 2, False),
    ("conv3x3-stride2-valid", L.conv2d(3, 3, "lax", stride=2, padding="valid"), (8, 7, 2), 2, False),
    ("conv2x2-valid", L.conv2d(4, 2, padding="valid"), (5, 6, 3), 2, False),
    ("conv1x1-stride2", L.conv2d(4, 1, stride=2), (6, 6, 3), 2, False),
    ("avgpool2", L.avg_pool(2), (4, 6, 3), 2, False),
    ("global-avgpool", L.global_avg_pool(), (4, 5, 3), 3, False),
    ("leaky-relu", L.leaky_relu(0.1), (6,), 4, False),
    ("gelu-exact", L.gelu(), (6,), 4, False),
    ("gelu-tanh", L.gelu(approximate=True), (6,), 4, False),
    ("softmax", L.softmax(), (6,), 4, False),
    ("layernorm", L.layer_norm(), (3, 3, 4), 2, False),
    # skip connections: identity shortcut (pre-activation, in training), 1x1 strided projection, concat
    ("residual-identity-train", L.residual((L.batch_norm(), L.relu(), L.conv2d(4, 3))), (4, 4, 4), 3, True),
    (
        "residual-projection",
        L.residual((L.conv2d(6, 3, stride=2), L.relu(), L.conv2d(6, 3)), (L.conv2d(6, 1, stride=2),)),
        (6, 6, 3),
        2,
        False,
    ),
    ("fan-in-concat", L.fan_in_concat((L.dense(3),), (L.tanh(),), ()), (4,), 3, False),
]


# One case per layer kind, for the quick profile: ResNet-8's blocks are here as the two residual cases.
QUICK_LAYERS = (
    "dense",
    "relu",
    "leaky-relu",
    "gelu-exact",
    "softmax",
    "conv3x3-im2col",
    "maxpool2",
    "avgpool2",
    "global-avgpool",
    "flatten",
    "dropout-train",
    "batchnorm-train",
    "layernorm",
    "residual-identity-train",
    "residual-projection",
    "fan-in-concat",
)


def _layer_case(name, layer, shape, n, train):
    """One layer alone, its parameters and running statistics moved off their constant initial
    values (a scale of ones hides a missing factor); stencils across a ReLU or max-pool kink are
    left out (``gradcheck.kinks``)."""
    params, state = _init(lambda k: layer.init(k, shape)[:2], 0)
    params, state = gradcheck.off_constant(params, 7), gradcheck.off_constant(state, 5)
    x = np.random.default_rng(1).standard_normal((n,) + shape)
    key = jax.random.PRNGKey(3)
    loss_fn, grad_fn, args = gradcheck.layer_problem(layer, params, state, x, train=train, key=key)

    def kinks(px, state, c):
        return gradcheck.kinks([layer], [layer.forward(px[0], state, px[1], train=train, key=key)[2]])

    return {
        "name": f"layer-{name}",
        "model": f"{layer} ({'train' if train else 'eval'}) on {(n,) + shape}",
        "loss": "sum(c * y), c ~ N(0, 1)",
        "loss_fn": loss_fn,
        "grad_fn": grad_fn,
        "params": (params, x),
        "args": args,
        "max_per_leaf": None,
        "eps64": 1e-5,
        "pattern_fn": kinks,
        # float32 (judged against jax.grad): a component that cancels to near 0 (a strided conv's dx
        # sums taps of both signs) carries float32 rounding of its terms, ~1e-7: eps = 1e-3 judges
        # components below 1e-3 within 1e-7 absolute, the rest within 1e-4 relative
        "eps32": 1e-3,
    }


# The INF265 MLP recursion: (name, sizes, activations, loss, batch; None: one example without a batch axis)
MLP_CASES = [
    ("mlp-relu-ce", (5, 7, 6, 3), "relu", "cross_entropy", 8),
    ("mlp-tanh-ssr", (4, 9, 2), "tanh", "ssr", 8),
    ("mlp-sigmoid-mse", (6, 5, 5, 4), "sigmoid", "mse", 8),
    ("mlp-mixed-ce", (3, 8, 8, 8, 2), ("tanh", "relu", "sigmoid", "identity"), "cross_entropy", 8),
    ("mlp-single-example", (5, 6, 3), "tanh", "cross_entropy", None),
]

# Left out of the quick profile: mlp-mixed-ce has ReLU and cross-entropy too, matrix-chain-K4 the same code.
QUICK_SKIP = ("mlp-relu-ce", "matrix-chain-K8")


def cases(quick=False, only=None):
    """The checked models (``only``: those of these names). ReLU has a kink at 0 where a stencil
    reads the mean of the two slopes; a stencil that straddles one is left out (``pattern_fn``) and
    counted (``fd_kinked``). A case's parameters are drawn only if it is chosen."""
    P = functools.partial
    todo = [(c[0], P(_mlp_case, *c)) for c in MLP_CASES] + [("linear-softmax", _linear_softmax_case)]
    todo += [(f"matrix-chain-K{K}", P(_matrix_chain_case, K)) for K in (4, 8)]
    todo += [(f"layer-{c[0]}", P(_layer_case, *c)) for c in LAYER_CASES if not quick or c[0] in QUICK_LAYERS]
    zoo = [("cnn", "batchnorm")] if quick else [(f, v) for f in models.ZOO_FAMILIES for v in models.ZOO_VARIANTS]
    # h = 1e-6: tens of thousands of ReLU inputs, and a stencil that straddles a kink (|z| < 2h)
    # reads the mean of two slopes; 1e-6 makes that unlikely, at a rounding noise of ~1e-10.
    # A bias that feeds batch norm, or a weight into a unit that ReLU switched off for the whole
    # batch, has gradient exactly 0, where a central difference reads rounding noise (~1e-10 at
    # h = 1e-6) and two exact formulas ~1e-17: the relative error's floor eps = 1e-3 judges the
    # components below 1e-3 in absolute terms (1e-9 for finite differences), the rest relatively.
    # In float32 (judged against jax.grad only) a batch-norm model's gradient cancels to near 0 in
    # places: eps = 1e-2 there, i.e. components below 1e-2 within 1e-6 absolute.
    todo += [
        (
            f"mnist-{f}-{v}",
            lambda f=f, v=v: _model_case(
                f"mnist-{f}-{v}", models.mnist_zoo(f, v), batch=4, max_per_leaf=8, h=1e-6, eps=1e-3, eps32=1e-2
            ),
        )
        for f, v in zoo
    ]
    if not quick:
        # the residual network: the same floors as the batch-norm models above (a conv bias right before
        # batch norm has gradient exactly 0)
        todo.append(
            (
                "cifar10-resnet8",
                lambda: _model_case(
                    "cifar10-resnet8", models.resnet(), batch=4, max_per_leaf=8, h=1e-6, eps=1e-3, eps32=1e-2
                ),
            )
        )
        # 1.6M parameters: 40 sampled coordinates per leaf + one random direction per leaf.
        # eps = 1e-5 as for the layers: a weight into a ReLU unit that is off for all 16 examples has
        # gradient exactly 0, where a central difference at h = 1e-4 reads ~1e-12 of rounding.
        todo.append(
            (
                "cifar2-mlp",
                lambda: _model_case(
                    "cifar2-mlp", models.mlp((3072, 512, 128, 32, 2)), batch=16, max_per_leaf=40, eps=1e-5
                ),
            )
        )
    if quick:
        todo = [(name, build) for name, build in todo if name not in QUICK_SKIP]
    if only is not None:
        unknown = set(only) - {name for name, _ in todo}
        if unknown:
            raise ConfigError(f"unknown checks {sorted(unknown)}; choose from {[name for name, _ in todo]}")
        todo = [(name, build) for name, build in todo if name in only]
    return [build() for _, build in todo]


def _linear_softmax_case():
    """DD2424's check: 20 images, first 20 dimensions, lambda = 0.1."""
    return {
        "name": "linear-softmax",
        "model": "linear softmax 20->10",
        "loss": "CE + lam||W||^2",
        "loss_fn": backprop.linear_softmax_cost,
        "grad_fn": backprop.linear_softmax_grads,
        "params": _init(lambda k: backprop.init_mlp(k, (20, 10), "torch"), 1),
        "args": (*_data(1, (20, 20), 10, labels=True), 0.1),
        "max_per_leaf": None,
    }


def _matrix_chain_case(K):
    return {
        "name": f"matrix-chain-K{K}",
        "model": f"matrix chain K={K}",
        "loss": "||w||^2",
        "loss_fn": backprop.matrix_chain_loss,
        "grad_fn": backprop.matrix_chain_grads,
        "params": _init(lambda k: backprop.init_matrix_chain(k, K), K),
        "args": (np.random.default_rng(K).standard_normal(K),),
        "max_per_leaf": None,
    }


def run(config=None, out=None, force=False, verbose=True, log=print) -> dict:
    cfg = GradcheckConfig.make(config)
    todo = cases(cfg.quick, cfg.only)
    t0, prov = time.time(), provenance()  # the code as it was when the checks started
    rows = []
    for c in progress.items(todo, "gradient checks", quiet=not verbose, log=log, name=lambda c: c["name"]):
        for dtype in (jnp.float64, jnp.float32):
            is64 = dtype == jnp.float64
            rep = gradcheck.check_gradients(
                c["loss_fn"],
                c["grad_fn"],
                c["params"],
                *c["args"],
                dtype=dtype,
                max_per_leaf=c["max_per_leaf"],
                h=c.get("h") if is64 else None,
                eps=c.get("eps64" if is64 else "eps32"),
                pattern_fn=c.get("pattern_fn"),
            )
            rows.append(
                {"name": c["name"], "model": c["model"], "loss": c["loss"], "passed": gradcheck.passed(rep), **rep}
            )
    res = record(
        "gradcheck",
        cfg,
        t0,
        prov,
        tolerances=gradcheck.TOLERANCES,
        checks=rows,
        all_passed=all(r["passed"] for r in rows),
    )
    write("gradcheck", out, res)
    return res


def summary(res) -> list[dict]:
    """A row per check. In float32 the finite differences are rounding noise on small components
    (about 1e-7 |L| / h), so they are shown but not judged (``gradcheck.TOLERANCES``): a float32
    row passes on its comparison with ``jax.grad``, and its cells say so."""

    def judged(r, key, value):
        return value if gradcheck.TOLERANCES[r["dtype"]][key] is not None else f"{value:.3g} (not judged)"

    def model(r):  # a model's whole layer list is its case name and a count in the table (JSON keeps it all)
        n = r["model"].count(" - ") + 1
        return (
            r["model"]
            if n < 5
            else f"{r['name']} ({n} layers: {r['model'].split(' - ')[0]} ... {r['model'].split(' - ')[-1]})"
        )

    return [
        {
            "model": model(r),
            "loss": r["loss"],
            "dtype": r["dtype"],
            "stencil": f"{r['order']}-point, h={r['h']:g}",
            "max rel err vs FD": judged(r, "fd", r["fd_max"]),
            "max rel err (random direction)": judged(r, "directional", r["directional_max"]),
            "max rel err vs jax.grad": r["autodiff_max"],
            "pass": "yes" if r["passed"] else "NO",
        }
        for r in res["checks"]
    ]


def _extremes(res):
    """The largest float64 relative error against finite differences, and against jax.grad per dtype."""
    fd = max(c["fd_max"] for c in res["checks"] if c["dtype"] == "float64")
    auto = {dt: max(c["autodiff_max"] for c in res["checks"] if c["dtype"] == dt) for dt in ("float64", "float32")}
    return fd, auto


def about(res, out) -> str:
    fd, auto = _extremes(res)
    ok = sum(bool(c["passed"]) for c in res["checks"])
    return (
        f"**Gradient checks** ({len(res['checks'])} checks: every layer's backward, the generic reverse pass of "
        "the nine MNIST models, the CIFAR ResNet-8 and the CIFAR-2 MLP, INF265's MLP recursion, DD2424's closed "
        f"form and the matrix chain, each in float64 and float32; {ok} passed): the largest float64 relative "
        f"error against finite differences is {fd:.1e} (INF265 project 1's bar: 1e-6). Against `jax.grad` it is "
        f"{auto['float64']:.1e} in float64 and {auto['float32']:.1e} in float32."
    )


def headline(res, out) -> tuple[str, str]:
    fd, auto = _extremes(res)
    ok = sum(bool(c["passed"]) for c in res["checks"])
    return (
        f"{ok} of {len(res['checks'])} checks pass; largest relative error {fd:.0e} against finite differences "
        f"(float64), {auto['float64']:.0e} against `jax.grad`",
        "INF265 project 1's bar: 1e-6",
    )


def notes(res, out) -> list[str]:
    return ["All checks passed." if res["all_passed"] else "SOME CHECKS FAILED: the rows marked NO."]


EXPERIMENT = Experiment(
    name="gradcheck",
    what="every hand-derived gradient against finite differences and jax.grad",
    run=run,
    config=GradcheckConfig,
    results="gradcheck/results.json",
    summary=summary,
    quick={"quick": True},
    compare_with="INF265 project 1: relative error < 1e-6 against finite differences. In float32 a finite "
    "difference carries rounding of about 1e-7 |L| / h, all of a small component, so float32 rows are "
    "judged against jax.grad only (their finite-difference columns are shown, marked not judged)",
    notes=notes,
    about=about,
    headline=headline,
)
