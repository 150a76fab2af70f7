"""jaxgd.check of any function: the functions JAX and optax ship pass (no false alarms), rules
nested inside bigger functions are found where they sit and diagnosed, and a function with no rule
is checked against finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxgd
from jaxgd import mistakes
from jaxgd.checker import anyfn

# differentiable at random normal points (no kink is hit there), each as a user would call it
SHIPPED = {
    "jax.nn.relu": jax.nn.relu,
    "jax.nn.softmax": jax.nn.softmax,
    "jax.nn.log_softmax": jax.nn.log_softmax,
    "jax.nn.silu": jax.nn.silu,
    "jax.nn.gelu": jax.nn.gelu,
    "jax.nn.gelu exact": lambda v: jax.nn.gelu(v, False),
    "jax.nn.softplus": jax.nn.softplus,
    "jax.nn.sigmoid": jax.nn.sigmoid,
    "jax.nn.elu": jax.nn.elu,
    "jax.nn.celu": jax.nn.celu,
    "jax.nn.selu": jax.nn.selu,
    "jax.nn.glu": jax.nn.glu,
    "jax.nn.standardize": jax.nn.standardize,
    "jax.nn.logsumexp": jax.nn.logsumexp,
    "jax.scipy.special.logsumexp": jax.scipy.special.logsumexp,
    "jax.scipy.special.xlogy": lambda v: jax.scipy.special.xlogy(v, jnp.abs(v) + 0.5),
    "jnp.linalg.norm": jnp.linalg.norm,
    "optax.safe_norm": lambda v: optax.safe_norm(v, 1e-6),
    "optax.safe_root_mean_squares": lambda v: optax.safe_root_mean_squares(v, 1e-6),
}
_S = jax.scipy.special
# labels and targets as float32 constants: a float64 NumPy constant that reaches a jitted function
# in both dtype passes meets a JAX dispatch-cache mismatch (see docs/checker.md)
_T = (np.random.default_rng(5).uniform(0.1, 0.9, (3, 6))).astype(np.float32)
_L = np.eye(6, dtype=np.float32)[[1, 4, 2]]
# the rest of jax.nn, jax.scipy.special and optax's losses, each on its domain: name -> (f, point maker)
MORE = {
    "jax.nn.log_sigmoid": (jax.nn.log_sigmoid, None),
    "jax.nn.hard_tanh": (jax.nn.hard_tanh, lambda x: 0.5 * x),
    "jax.nn.leaky_relu": (jax.nn.leaky_relu, None),
    "jax.nn.mish": (jax.nn.mish, None),
    "jax.nn.squareplus": (jax.nn.squareplus, None),
    "jax.nn.relu6": (jax.nn.relu6, None),
    "jax.nn.hard_sigmoid": (jax.nn.hard_sigmoid, None),
    "jax.nn.hard_silu": (jax.nn.hard_silu, None),
    "erf": (_S.erf, None),
    "erfc": (_S.erfc, None),
    "erfinv": (_S.erfinv, lambda x: np.tanh(x) * 0.9),
    "expit": (_S.expit, None),
    "logit": (_S.logit, lambda x: 1 / (1 + np.exp(-x))),
    "ndtr": (_S.ndtr, None),
    "ndtri": (_S.ndtri, lambda x: 1 / (1 + np.exp(-x))),
    "log_ndtr": (_S.log_ndtr, None),
    "gammaln": (_S.gammaln, lambda x: np.abs(x) + 0.5),
    "digamma": (_S.digamma, lambda x: np.abs(x) + 0.5),
    "gamma": (_S.gamma, lambda x: np.abs(x) + 0.5),
    "polygamma(1, x)": (lambda v: _S.polygamma(1, v), lambda x: np.abs(x) + 0.5),
    "i0e": (_S.i0e, None),
    "i1e": (_S.i1e, None),
    "entr": (_S.entr, lambda x: np.abs(x) + 0.5),
    "betaln": (lambda v: _S.betaln(v, 1.5 + v), lambda x: np.abs(x) + 0.5),
    "rel_entr": (lambda v: _S.rel_entr(v, _T), lambda x: np.abs(x) + 0.5),
    "kl_div": (lambda v: _S.kl_div(v, _T), lambda x: np.abs(x) + 0.5),
    "optax.l2_loss": (lambda v: optax.l2_loss(v, _T), None),
    "optax.huber_loss": (lambda v: optax.huber_loss(v, _T), None),
    "optax.log_cosh": (lambda v: optax.log_cosh(v, _T), None),
    "optax.softmax_cross_entropy": (lambda v: optax.softmax_cross_entropy(v, _L), None),
    "optax.sigmoid_binary_cross_entropy": (lambda v: optax.sigmoid_binary_cross_entropy(v, _T), None),
    "optax.sigmoid_focal_loss": (lambda v: optax.sigmoid_focal_loss(v, _T), None),
    "optax.cosine_similarity": (lambda v: optax.cosine_similarity(v, _T), None),
    "optax.squared_error": (lambda v: optax.squared_error(v, _T), None),
    "optax.kl_divergence": (lambda v: optax.kl_divergence(jax.nn.log_softmax(v), jax.nn.softmax(_T)), None),
    "optax.global_norm": (lambda v: optax.global_norm({"a": v}), None),
}


@pytest.mark.parametrize("name", list(SHIPPED))
def test_the_functions_jax_and_optax_ship_pass(name):
    x = np.random.default_rng(0).standard_normal((3, 6))
    report = jaxgd.check(SHIPPED[name], x)
    assert report.passed, report
    assert {r["mode"] for r in report.rows} <= {"grad", "jvp", "vjp"}


@pytest.mark.parametrize("name", list(MORE))
def test_and_the_rest_of_jax_nn_scipy_special_and_optax_losses(name):
    f, at = MORE[name]
    x = np.random.default_rng(0).standard_normal((3, 6))
    report = jaxgd.check(f, x if at is None else at(x))
    assert report.passed, report


def test_a_library_gradient_that_is_nan_where_the_function_is_smooth_is_reported():
    """jax.scipy.special.spence: on jax 0.10.2, jax.grad gives NaN at 1.5 and 2.0, where the
    derivative is -log(x) / (x - 1) (-0.8109 at 1.5). Whatever JAX does, the check agrees with it:
    it fails, naming the NaN coordinates, exactly where jax.grad is not finite."""
    x = np.array([0.6, 1.5, 2.0, 3.0])
    with jax.enable_x64(True):
        nan = ~np.isfinite(np.asarray(jax.grad(lambda v: jax.scipy.special.spence(v).sum())(x)))
    report = jaxgd.check(jax.scipy.special.spence, x, dtypes=("float64",))
    assert report.passed == (not nan.any()), report
    if nan.any():
        assert report.findings[0]["kind"] == "observation" and "NaN or infinite" in report.findings[0]["cause"]


@pytest.mark.parametrize("name", ["jax.nn.softmax", "jax.nn.softplus", "jax.nn.standardize", "jnp.linalg.norm"])
def test_and_at_another_shape(name):
    assert jaxgd.check(SHIPPED[name], np.random.default_rng(1).standard_normal((2, 3, 4))).passed


def test_softplus_holds_a_rule_and_it_is_found_where_it_sits():
    """jax.nn.softplus calls jnp.logaddexp, a custom_jvp, under jit: found, checked alone too."""
    found = anyfn.rules(jax.nn.softplus, np.ones((2, 3)))
    assert [(r.kind, r.name) for r in found] == [("custom_jvp", "logaddexp")]
    assert found[0].path == ("jit(softplus)",)
    report = jaxgd.check(jax.nn.softplus, np.random.default_rng(2).standard_normal((2, 3)))
    assert report.passed and any(r["leaf"].startswith("logaddexp arg") for r in report.rows), report


def test_the_stripped_function_has_the_same_values_and_autodiffs_the_primals():
    """stripped(f): every rule replaced by its primal, so a wrong rule shows as a gradient gap
    while the values stay the function's."""
    m = mistakes.NESTED_GALLERY[0]
    x, w = m.args(np.random.default_rng(0))
    g = anyfn.stripped(m.f)
    np.testing.assert_allclose(g(x, w), m.f(x, w), rtol=1e-6)
    true = jax.grad(lambda a: jnp.sum(jnp.sin(a @ w) ** 2))(x)
    np.testing.assert_allclose(jax.grad(g)(x, w), true, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(jax.grad(m.f)(x, w), 2 * true, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m", mistakes.NESTED_GALLERY, ids=[m.name for m in mistakes.NESTED_GALLERY])
def test_a_wrong_rule_inside_a_function_is_located_and_diagnosed(m):
    report = jaxgd.check(m.f, *m.args(np.random.default_rng(0)), dtypes=("float64",))
    assert not report.passed, report
    located = [f for f in report.findings if f.get("kind") == "rule" and f["where"] == m.where]
    assert located and "this rule is wrong: custom_vjp" in located[0]["cause"] and "mistakes.py" in located[0]["cause"]
    alone = [f for f in report.findings if f["where"].startswith(f"{m.where} arg 0")]
    assert alone and alone[0]["kind"] == "cause" and m.expect in alone[0]["cause"], report


def _remat(x):
    return jnp.sum(jax.checkpoint(lambda v: mistakes._SIN2(v) * v)(x))


def _cond(x):
    return jax.lax.cond(x.sum() > -100, lambda v: jnp.sum(mistakes._SIN2(v)), jnp.sum, x)


def _while(x):
    return jnp.sum(jax.lax.while_loop(lambda c: c[0] < 2, lambda c: (c[0] + 1, mistakes._SIN2(c[1])), (0, x))[1])


@pytest.mark.parametrize("f", [_remat, _cond, _while], ids=["remat", "cond", "while_loop"])
def test_a_rule_is_reached_and_checked_alone_under_remat_cond_and_while(f):
    """Each rule is checked at the arguments it receives (a loop's first iteration, the branch
    taken), and the check compiles a few programs per rule."""
    from jaxgd.compile_cache import CompileClock

    x = np.random.default_rng(0).standard_normal((3, 4))
    with CompileClock() as clock:
        report = jaxgd.check(f, x, dtypes=("float64",))
    alone = [x for x in report.findings if x["where"].startswith("sin arg 0")]
    assert alone and "off by a constant factor 2" in alone[0]["cause"], report
    assert "not reached" not in report.rules[0]
    assert clock.compiles <= 16, clock.compiles
