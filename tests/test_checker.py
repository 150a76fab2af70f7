"""jaxgd.check: every built-in layer and model passes it, every mistake of the gallery fails it
with the right diagnosis, and bad arguments get clear errors."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxgd
from jaxgd import checker, mistakes, models
from jaxgd import layers as L

LAYERS = [
    (L.dense(5), (7,)),
    (L.relu(), (6,)),
    (L.tanh(), (6,)),
    (L.leaky_relu(0.1), (6,)),
    (L.gelu(), (6,)),
    (L.gelu(approximate=True), (6,)),
    (L.softmax(), (6,)),
    (L.conv2d(4, 3), (6, 5, 2)),
    (L.conv2d(3, 3, "lax", stride=2), (7, 6, 2)),
    (L.conv2d(4, 2, padding="valid"), (5, 6, 3)),
    (L.max_pool(2), (4, 6, 3)),
    (L.avg_pool(2), (4, 6, 3)),
    (L.global_avg_pool(), (4, 5, 3)),
    (L.flatten(), (3, 2, 2)),
    (L.dropout(0.3), (20,)),
    (L.batch_norm(), (3, 3, 4)),
    (L.layer_norm(), (5,)),
    # a bias right before batch norm: its gradient is 0 on paper, rounding noise in practice
    (L.residual((L.conv2d(4, 3), L.batch_norm(), L.relu(), L.conv2d(4, 3))), (4, 4, 4)),
    (L.residual((L.conv2d(4, 3, stride=2), L.relu()), (L.conv2d(4, 1, stride=2),)), (6, 6, 3)),
    (L.fan_in_concat((L.dense(3),), (L.tanh(),), ()), (4,)),
]


@pytest.mark.parametrize("layer,shape", LAYERS, ids=[str(l) for l, _ in LAYERS])
def test_every_built_in_layer_passes(layer, shape):
    report = jaxgd.check(layer, shape)
    assert report.passed, report
    assert {r["mode"] for r in report.rows} == {"train", "eval"} and all(r["verdict"] != "wrong" for r in report.rows)
    assert report.batch not in shape and report.batch % 2 == 1  # a batch axis kept shows in the shape


def _small_resnet():
    return models.Model(
        (
            L.conv2d(4, 3, stride=2),
            L.batch_norm(),
            L.relu(),
            L.residual((L.conv2d(4, 3), L.batch_norm(), L.relu(), L.conv2d(4, 3))),
            L.global_avg_pool(),
            L.dense(3),
        ),
        (6, 6, 2),
    )


def test_models_pass_with_their_loss_gradient():
    for model in (models.mlp((6, 5, 3)), _small_resnet()):
        report = jaxgd.check(model)
        assert report.passed, report
        assert any(c["name"].startswith("loss gradient (train") and c["ok"] for c in report.checks)


def _perturbed(family):
    """``family`` with its prediction moved by a thousandth of its scale: no longer what hand is."""

    def moved(h, t, ctx):
        hyp = family(h, t, ctx)
        if hyp is None:
            return None
        p = np.asarray(hyp.predicted, np.float64)
        wiggle = np.cos(np.arange(p.size) + 1.0).reshape(p.shape)  # fixed, never all zero
        return dataclasses.replace(hyp, predicted=p + 1e-3 * max(float(np.max(np.abs(p))), 1.0) * wiggle)

    moved.__name__ = family.__name__
    return moved


def _finding(report, m):
    """The finding ``m`` (a gallery entry) names: on its gradient and mode, of its kind, with its phrase."""
    return [
        f
        for f in report.findings
        if f["where"].startswith(m.where) and f.get("kind") == m.kind and m.expect in f["cause"]
    ]


def _unverified_causes(report, m, monkeypatch, check_again):
    """The same check with every family's hypothesis perturbed: the causes it still prints."""
    from jaxgd.checker import diagnoses

    monkeypatch.setattr(diagnoses, "DIAGNOSES", tuple(_perturbed(f) for f in diagnoses.DIAGNOSES))
    return [f for f in check_again().findings if f.get("kind") == "cause"]


@pytest.mark.parametrize("m", mistakes.GALLERY, ids=[m.name for m in mistakes.GALLERY])
def test_every_gallery_mistake_fails_with_its_diagnosis(m, monkeypatch):
    """Each mistake's finding on the right gradient and mode, of the right kind; and a cause is
    printed only because its hypothesis reproduced hand: perturbed slightly, it is not printed."""
    store = checker.Programs()
    again = lambda: jaxgd.check(m.layer, m.in_shape, x=m.x(), programs=store)
    report = again()
    assert not report.passed, report
    assert _finding(report, m), report
    if m.kind == "cause":
        assert not _unverified_causes(report, m, monkeypatch, again)


def test_a_diagnosis_is_printed_only_when_it_reproduces_hand_from_true():
    """Each cause is a hypothesis checked on the arrays: where none reproduces the hand gradient,
    the report says so and names no pattern as ruled out; where the wrong entries are is an
    observation, never a cause."""
    from jaxgd.checker import diagnose

    rng = np.random.default_rng(0)
    t = rng.standard_normal((5, 5))
    ctx = {"batch": 3, "dtype": np.dtype(np.float64), "tol": 1e-10, "is_input": False, "x": None, "c": None}
    unrelated = diagnose(t * rng.uniform(0.5, 1.5, t.shape), t, ctx)
    assert unrelated.kind == "unknown" and unrelated.text.startswith("wrong, cause not recognised")
    one = t.copy()
    one[1, 2] += 1e-9  # one entry, an error far smaller than the rest of the gradient: not a broadcast
    found = diagnose(one, t, ctx)
    assert found.kind == "observation" and "only 1 of 25 coordinates wrong: (1, 2)" in found.text
    row = t + rng.standard_normal((1, 5))  # one term broadcast over axis 0
    assert "same at every index of axis 0" in diagnose(row, t, ctx).text
    assert diagnose(t.T, t, ctx).family == "transposed"
    c = rng.standard_normal((3, 5))  # a bias's cotangent: dy summed over the features is not a wrong shape only
    assert diagnose(c.sum(1), c.sum(0), {**ctx, "c": c}).text.startswith(
        "reduced over the wrong axis: hand is dy summed over axis 1"
    )
    other = diagnose(rng.standard_normal(3), c.sum(0), {**ctx, "c": c})
    assert other.kind == "observation" and "wrong shape: (3,) instead of (5,)" in other.text


def test_new_families_name_a_cause_only_when_it_reproduces_hand():
    """The fitted families (a term of the input, softmax's coupling) and the recomputed ones (a
    parameter changed, the other pooling) stay silent on a gradient they do not reproduce, and the
    pooling family works both ways (average pooling routed to the maximum: not in the gallery)."""
    from jaxgd.checker import diagnose

    class AvgPoolRouted(L.AvgPool):
        def forward(self, params, state, x, *, train=False, key=None):
            return super().forward(params, state, x, train=train, key=key)[0], state, x

        def backward(self, params, x, dy):
            _, vjp = jax.vjp(lambda v: L.MaxPool(self.size).forward({}, {}, v)[0], x)
            return {}, vjp(dy)[0]

    assert (
        "max pooling's gradient: dy routed to each window's maximum"
        in jaxgd.check(AvgPoolRouted(2), (4, 4, 2)).causes()[0]
    )
    rng = np.random.default_rng(1)
    x, c, t = (rng.standard_normal((3, 6)) for _ in range(3))
    y = np.exp(x) / np.exp(x).sum(-1, keepdims=True)
    ctx = {"batch": 3, "dtype": np.dtype(np.float64), "tol": 1e-10, "is_input": True, "x": x, "c": c, "y": y}
    near = t + c * x * np.exp(-x * x / 2) / np.sqrt(2 * np.pi) * (1 + 1e-3 * rng.standard_normal(x.shape))
    assert diagnose(near, t, ctx).kind != "cause"  # close to a term, not it
    assert (
        "x phi(x) (GELU's second term): that term of the derivative counted twice"
        in diagnose(t + c * x * np.exp(-x * x / 2) / np.sqrt(2 * np.pi), t, ctx).text
    )
    assert diagnose(t - y * (c * y).sum(-1, keepdims=True), t, ctx).text.startswith("hand = true - y sum(dy y)")
    assert "coupling term of the derivative forgotten or scaled" in diagnose(t + 0.3 * y, t, ctx).text


@dataclasses.dataclass(frozen=True)
class _Scale(L.Layer):
    """A user's layer whose backward reads a class attribute (the review's reproduction)."""

    kf = 2.0
    kb = 2.0

    def forward(self, params, state, x, *, train=False, key=None):
        return self.kf * x, state, None

    def backward(self, params, res, dy):
        return {}, self.kb * dy


def test_a_layer_made_wrong_between_two_checks_fails_the_second():
    """A frozen dataclass's equality does not see class attributes: a check must not reuse the
    first check's programs for it (a false pass), unless the caller holds a store and says so."""
    assert jaxgd.check(_Scale(), (4,), dtypes=("float64",)).passed
    _Scale.kb = 3.0
    try:
        second = jaxgd.check(_Scale(), (4,), dtypes=("float64",))
    finally:
        _Scale.kb = 2.0
    assert not second.passed and "off by a constant factor" in second.causes()[0], second


def test_a_kernel_gradient_wrong_in_one_channel_gets_no_border_cause():
    """The review's reproduction: a conv's weight gradient halved for input channel 0 is told
    where the wrong entries are (that channel of W, by a factor), never the padding or the border."""

    class HalvedChannel(L.Conv2D):
        def backward(self, params, x, dy):
            g, dx = super().backward(params, x, dy)
            return {**g, "W": g["W"].at[:, :, 0, :].multiply(0.5)}, dx

    report = jaxgd.check(HalvedChannel(4, 3), (6, 6, 2), dtypes=("float64",))
    assert not report.passed
    w = [f for f in report.findings if f["where"].startswith("param W")]
    assert w and all(f["kind"] == "observation" for f in w), report
    assert "all in input channel 0 of param W, where hand = 0.5 * true" in w[0]["cause"], report
    assert not any("border" in f["cause"] or "padding" in f["cause"] for f in report.findings), report


class _RaisingDense(L.Dense):
    def backward(self, params, x, dy):
        return {"W": x.T @ dy, "b": dy.sum(0)}, dy @ params["W"]  # W, not W^T: shapes disagree


def test_a_backward_that_raises_is_a_failed_report_in_every_kind_of_check():
    """The commonest first mistake, a shape bug: a FAILED report with the error and the user's
    line, for a layer, for a model holding it, and for a custom rule; never an exception."""
    for report in (
        jaxgd.check(_RaisingDense(3), (5,), dtypes=("float64",)),
        jaxgd.check(models.Model((_RaisingDense(3), L.tanh()), (5,)), dtypes=("float64",)),
    ):
        assert not report.passed
        raised = [c for c in report.checks if not c["ok"] and c["name"].startswith("backward runs")]
        assert raised and "test_checker.py" in raised[0]["detail"] and "dy @ params" in raised[0]["detail"], report
        assert all(r["verdict"] == "wrong" for r in report.rows)

    @jax.custom_vjp
    def scale(x, w):
        return x * w

    scale.defvjp(lambda x, w: (x * w, (x, w)), lambda r, g: (g @ r[1], g * r[0]))  # a matmul where * belongs
    rng = np.random.default_rng(0)
    report = jaxgd.check(scale, rng.standard_normal((3, 4)), rng.standard_normal((3, 4)), dtypes=("float64",))
    assert not report.passed and any("test_checker.py" in c["detail"] for c in report.checks if not c["ok"]), report


@dataclasses.dataclass(frozen=True)
class _Sigmoid(L.Layer):
    """A sigmoid whose backward uses x where the output belongs: x (1 - x)."""

    def forward(self, params, state, x, *, train=False, key=None):
        return jax.nn.sigmoid(x), state, x

    def backward(self, params, x, dy):
        return {}, dy * x * (1 - x)


@dataclasses.dataclass(frozen=True)
class _TanhFromInput(_Sigmoid):
    """tanh whose backward is 1 - x^2 (the input), not 1 - y^2."""

    def forward(self, params, state, x, *, train=False, key=None):
        return jnp.tanh(x), state, x

    def backward(self, params, x, dy):
        return {}, dy * (1 - x * x)


class _DenseDoubled(L.Dense):
    """dW = 2 x^T dy: a factor of a squared loss carried into the layer."""

    def backward(self, params, x, dy):
        g, dx = super().backward(params, x, dy)
        return {**g, "W": 2 * g["W"]}, dx


class _DenseBiasFromX(L.Dense):
    """db = sum of x over the batch, not of dy."""

    def backward(self, params, x, dy):
        g, dx = super().backward(params, x, dy)
        return {**g, "b": jnp.sum(dy, 0) + jnp.sum(x[:, :1], 0)}, dx


def _exp_rule():
    f = jax.custom_vjp(jnp.exp)
    f.defvjp(lambda x: (jnp.exp(x), x), lambda x, g: (g * x,))  # the input where exp(x) belongs
    return f


def _norm_rule():
    def normalize(x):
        return x / jnp.linalg.norm(x, axis=-1, keepdims=True)

    f = jax.custom_vjp(normalize)
    f.defvjp(lambda x: (normalize(x), x), lambda x, g: (g / jnp.linalg.norm(x, axis=-1, keepdims=True),))
    return f


# wrong backwards in neither gallery, as a new user writes them: (subject, args, causes it may get)
NEW_USER = [
    (_Sigmoid(), ((6,),), ()),
    (_TanhFromInput(), ((6,),), ()),
    (_DenseDoubled(4), ((5,),), ("constant_factor",)),
    (_DenseBiasFromX(4), ((5,),), ()),
    (_exp_rule(), (np.linspace(-1, 1, 6).reshape(2, 3),), ()),
    (_norm_rule(), (np.random.default_rng(2).standard_normal((3, 4)),), ()),
]


@pytest.mark.parametrize(
    "subject,args,allowed", NEW_USER, ids=[getattr(s, "__name__", type(s).__name__) for s, _, _ in NEW_USER]
)
def test_new_user_mistakes_are_caught_and_get_no_cause_but_how_they_were_made(subject, args, allowed):
    report = jaxgd.check(subject, *args, dtypes=("float64",))
    assert not report.passed, report
    assert {f["family"] for f in report.findings if f.get("kind") == "cause"} <= set(allowed), report


def test_a_wrong_layer_inside_a_model_is_found_by_its_leaf():
    model = models.Model((mistakes.DenseMean(4), L.tanh(), L.dense(2)), (5,))
    report = jaxgd.check(model, dtypes=("float64",))
    wrong = {r["leaf"] for r in report.rows if r["verdict"] == "wrong"}
    assert wrong == {"param 0.W", "param 0.b"}, report
    assert any("input gradient is right" in c for c in report.causes())
    assert any(c["name"].startswith("loss gradient") and not c["ok"] for c in report.checks)


def test_report_is_json_and_prints_a_table():
    report = jaxgd.check(mistakes.DenseTransposed(3), (4,), modes=("eval",), dtypes=("float64",))
    back = json.loads(json.dumps(report.as_dict()))
    assert back["passed"] is False and back["subject"] == str(mistakes.DenseTransposed(3))
    assert [r["leaf"] for r in back["rows"]] == ["param W", "param b", "x"]
    text = str(report)
    assert text.startswith("check ") and "FAILED (1 of 3 gradients wrong)" in text and "transposed" in text


def test_check_on_given_inputs_with_zeros_sees_the_kink():
    """Random inputs never land on ReLU's kink; inputs with exact zeros do."""
    m = next(m for m in mistakes.GALLERY if m.zeros)
    assert jaxgd.check(m.layer, m.in_shape).passed  # the mistake is invisible on random inputs
    assert not jaxgd.check(m.layer, x=m.x()).passed


@pytest.mark.parametrize(
    "call,error,match",
    [
        (lambda: jaxgd.check(L.dense(3)), ValueError, "needs the per-example input shape"),
        (lambda: jaxgd.check(object(), (3,)), TypeError, "has no init"),
        (lambda: jaxgd.check(L.dense(3), (4,), x=np.zeros((2, 5))), ValueError, "give one of them"),
        (lambda: jaxgd.check(L.dense(3), (4,), modes=("test",)), ValueError, "modes must be among"),
        (lambda: jaxgd.check(L.dense(3), (4,), dtypes=("float16",)), ValueError, "dtypes must be among"),
        (lambda: jaxgd.check(models.mlp((4, 3)), x=np.zeros((2, 5))), ValueError, "takes"),
    ],
)
def test_bad_arguments_give_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_off_constant_moves_initial_scales_but_keeps_signs():
    from jaxgd import gradcheck

    p = {"scale": jax.numpy.ones(4), "shift": jax.numpy.zeros(4), "W": jax.numpy.arange(4.0)}
    q = gradcheck.off_constant(p, 0)
    assert np.all(np.asarray(q["scale"]) > 0) and len(set(np.asarray(q["scale"]).tolist())) == 4
    assert len(set(np.asarray(q["shift"]).tolist())) == 4
    np.testing.assert_array_equal(q["W"], p["W"])  # not constant: left as it is


def test_the_readme_example_prints_what_the_readme_shows(capsys):
    """The check example (the README's, and the checker page's, the same block) prints what it shows."""
    from pathlib import Path

    root = Path(__file__).parents[1]
    blocks = [
        (root / p).read_text().split("<!-- check-example:start -->")[1].split("<!-- check-example:end -->")[0]
        for p in ("README.md", "docs/checker.md")
    ]
    assert blocks[0] == blocks[1]
    code = blocks[0].split("```python\n")[1].split("```")[0]
    shown = blocks[0].split("```text\n")[1].split("```")[0]
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == shown.strip()


def _programs_compiled(fn):
    """How many XLA programs ``fn()`` compiles (JAX's own compilation events)."""
    from jaxgd.compile_cache import CompileClock

    with CompileClock() as clock:
        fn()
    return clock.compiles


def test_a_check_is_a_few_programs_and_a_second_one_none():
    """One check of a dense layer is a handful of compiled programs (it was 133 eager ones), and
    checking the same layer on the same shapes again in the process compiles nothing."""
    first = _programs_compiled(lambda: jaxgd.check(L.dense(3), (2,)))
    assert 0 < first <= 20
    assert _programs_compiled(lambda: jaxgd.check(L.dense(3), (2,))) == 0
    # a model: its loss gradients too, still a few programs per mode and dtype
    assert _programs_compiled(lambda: jaxgd.check(models.mlp((3, 4, 2)))) <= 30


# ---------------------------------------------------------------- check(f, *args): a function's custom rule


@jax.custom_vjp
def _logsumexp(x):
    m = jax.numpy.max(x, -1, keepdims=True)
    return (m + jax.numpy.log(jax.numpy.sum(jax.numpy.exp(x - m), -1, keepdims=True)))[..., 0]


def _lse_fwd(x):
    y = _logsumexp(x)
    return y, (x, y)


_logsumexp.defvjp(_lse_fwd, lambda res, g: (g[..., None] * jax.numpy.exp(res[0] - res[1][..., None]),))


@jax.custom_vjp
def _lse_doubled(x):  # the same primal, a rule off by a factor 2
    return _logsumexp.fun(x)


_lse_doubled.defvjp(_lse_fwd, lambda res, g: (2 * g[..., None] * jax.numpy.exp(res[0] - res[1][..., None]),))


def test_a_right_custom_vjp_passes_and_a_wrong_one_is_diagnosed():
    x = np.random.default_rng(0).standard_normal((3, 5))
    report = jaxgd.check(_logsumexp, x)
    assert report.passed, report
    assert [r["leaf"] for r in report.rows] == ["arg 0"] and report.rows[0]["mode"] == "vjp"
    assert {c["name"].split(" (")[0] for c in report.checks} == {"jit", "vmap"}
    wrong = jaxgd.check(_lse_doubled, x)
    assert not wrong.passed and wrong.rows[0]["verdict"] == "wrong"
    assert any("off by a constant factor 2" in c for c in wrong.causes()), wrong


@jax.custom_jvp
def _softplus(x):
    return jax.numpy.logaddexp(x, 0.0)


@_softplus.defjvp
def _softplus_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    return _softplus(x), jax.nn.sigmoid(x) * t


@jax.custom_jvp
def _softplus_wrong(x):
    return jax.numpy.logaddexp(x, 0.0)


@_softplus_wrong.defjvp
def _softplus_wrong_jvp(primals, tangents):  # the slope where x < 0 forgotten: 1 there
    (x,), (t,) = primals, tangents
    return _softplus_wrong(x), jax.numpy.where(x > 0, jax.nn.sigmoid(x), 1.0) * t


def test_custom_jvp_rules_are_checked_through_their_transpose():
    x = np.random.default_rng(1).standard_normal((4, 3))
    assert jaxgd.check(_softplus, x).passed
    report = jaxgd.check(_softplus_wrong, x)
    assert not report.passed and report.rows[0]["mode"] == "jvp"
    assert any("where the input is negative" in c for c in report.causes()), report


def test_nondiff_arguments_integer_arguments_and_several_outputs():
    @functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
    def f(x, idx, power):  # idx: integer, held fixed; two outputs
        return x[idx] ** power, {"w": jax.numpy.sin(x)}

    def fwd(x, idx, power):
        return f(x, idx, power), (x, idx)

    def bwd(power, res, g):
        x, idx = res
        dx = jax.numpy.zeros_like(x).at[idx].add(power * x[idx] ** (power - 1) * g[0]) + jax.numpy.cos(x) * g[1]["w"]
        return dx, np.zeros(idx.shape, jax.dtypes.float0)

    f.defvjp(fwd, bwd)
    report = jaxgd.check(f, np.linspace(0.5, 2.0, 6), np.array([0, 3, 3]), 3)
    assert report.passed, report
    assert [r["leaf"] for r in report.rows] == ["arg 0"]  # the integer argument has no gradient row


def test_a_primal_jax_cannot_differentiate_is_checked_against_finite_differences():
    @jax.custom_vjp
    def root(x):  # sqrt by Newton's iteration in a while_loop: reverse mode cannot go through it
        return jax.lax.while_loop(
            lambda y: jax.numpy.max(jax.numpy.abs(y * y - x)) > 1e-12, lambda y: 0.5 * (y + x / y), x
        )

    def fwd(x):
        y = root(x)
        return y, y

    root.defvjp(fwd, lambda y, g: (g / (2 * y),))
    report = jaxgd.check(root, np.linspace(1.0, 3.0, 5), dtypes=("float64",))
    assert report.passed and report.rows[0]["verdict"] == "close", report


def test_a_function_without_a_custom_rule_is_checked_against_finite_differences():
    """No rule inside: JAX's own derivative against central differences (check_grads' comparison),
    with jaxgd's report; a gradient that autodiff gets NaN where the function is smooth is named."""
    report = jaxgd.check(jax.numpy.sin, np.linspace(-1, 1, 6))
    assert report.passed and report.subject == "function sin" and not report.rules, report
    nan_leak = jaxgd.check(
        lambda v: jax.numpy.where(v > 0, jax.numpy.sqrt(v), 0.0), np.array([[1.0, -2.0, 0.5]]), dtypes=("float64",)
    )
    assert not nan_leak.passed
    found = nan_leak.findings[0]
    assert found["kind"] == "observation" and "NaN or infinite ((0, 1))" in found["cause"], nan_leak
    assert "jnp.where whose branch not taken has a NaN gradient" in found["cause"]
    with pytest.raises(ValueError, match="takes its example arguments"):
        jaxgd.check(_logsumexp, np.ones((2, 3)), batch=4)


def test_assert_backward_correct_raises_with_the_verdict_as_its_message():
    from jaxgd.testing import assert_backward_correct

    x = np.random.default_rng(0).standard_normal((3, 5))
    assert assert_backward_correct(_logsumexp, x).passed
    assert assert_backward_correct(L.dense(3), (4,)).passed
    with pytest.raises(AssertionError, match=r"(?s)FAILED.*off by a constant factor 2"):
        assert_backward_correct(_lse_doubled, x)
    with pytest.raises(AssertionError, match=r"(?s)FAILED.*transposed"):
        assert_backward_correct(mistakes.DenseTransposed(5), (7,))


@pytest.mark.parametrize("m", mistakes.FUNCTION_GALLERY, ids=[m.name for m in mistakes.FUNCTION_GALLERY])
def test_every_wrong_custom_rule_fails_with_its_diagnosis(m, monkeypatch):
    again = lambda: jaxgd.check(m.f, *m.args(np.random.default_rng(0)))
    report = again()
    assert not report.passed, report
    assert _finding(report, m), report
    if m.kind == "cause":
        assert not _unverified_causes(report, m, monkeypatch, again)


def test_the_custom_rules_of_jaxs_own_docs_pass():
    """The custom_jvp and custom_vjp examples of JAX's "Custom derivative rules" tutorial."""

    @jax.custom_jvp
    def log1pexp(x):
        return jax.numpy.log(1.0 + jax.numpy.exp(x))

    @log1pexp.defjvp
    def log1pexp_jvp(primals, tangents):
        (x,) = primals
        (x_dot,) = tangents
        return log1pexp(x), (1 - 1 / (1 + jax.numpy.exp(x))) * x_dot

    @jax.custom_vjp
    def f(x, y):
        return jax.numpy.sin(x) * y

    f.defvjp(
        lambda x, y: (f(x, y), (jax.numpy.cos(x), jax.numpy.sin(x), y)),
        lambda res, g: (res[0] * g * res[2], res[1] * g),
    )
    rng = np.random.default_rng(3)
    assert jaxgd.check(log1pexp, rng.standard_normal(6)).passed
    assert jaxgd.check(f, rng.standard_normal((2, 3)), rng.standard_normal((2, 3))).passed
