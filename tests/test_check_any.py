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
    "jax.nn.relu": jax.nn.relu, "jax.nn.softmax": jax.nn.softmax, "jax.nn.log_softmax": jax.nn.log_softmax,
    "jax.nn.silu": jax.nn.silu, "jax.nn.gelu": jax.nn.gelu, "jax.nn.gelu exact": lambda v: jax.nn.gelu(v, False),
    "jax.nn.softplus": jax.nn.softplus, "jax.nn.sigmoid": jax.nn.sigmoid, "jax.nn.elu": jax.nn.elu,
    "jax.nn.celu": jax.nn.celu, "jax.nn.selu": jax.nn.selu, "jax.nn.glu": jax.nn.glu,
    "jax.nn.standardize": jax.nn.standardize, "jax.nn.logsumexp": jax.nn.logsumexp,
    "jax.scipy.special.logsumexp": jax.scipy.special.logsumexp,
    "jax.scipy.special.xlogy": lambda v: jax.scipy.special.xlogy(v, jnp.abs(v) + 0.5),
    "jnp.linalg.norm": jnp.linalg.norm, "optax.safe_norm": lambda v: optax.safe_norm(v, 1e-6),
    "optax.safe_root_mean_squares": lambda v: optax.safe_root_mean_squares(v, 1e-6),
}


@pytest.mark.parametrize("name", list(SHIPPED))
def test_the_functions_jax_and_optax_ship_pass(name):
    x = np.random.default_rng(0).standard_normal((3, 6))
    report = jaxgd.check(SHIPPED[name], x)
    assert report.passed, report
    assert {r["mode"] for r in report.rows} <= {"grad", "jvp", "vjp"}


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
