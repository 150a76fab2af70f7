"""The paper derivations of backprop.py == jax.grad and finite differences, for random MLPs."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxgd import backprop, draws, gradcheck, losses
from jaxgd.layers import ACTIVATIONS

ACTS = sorted(ACTIVATIONS)


def _mlp_problem(seed, sizes, acts, loss, batch):
    kp, kx, ky = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = backprop.init_mlp(kp, sizes, "torch")
    x = draws.normal(kx, (batch, sizes[0]) if batch else (sizes[0],))
    ys = x.shape[:-1]
    y = jax.random.randint(ky, ys, 0, sizes[-1]) if loss == "cross_entropy" else draws.normal(ky, ys + (sizes[-1],))
    f = losses.get_loss(loss)[0]
    return (
        params,
        x,
        y,
        lambda p, x, y: f(backprop.mlp_apply(p, x, acts), y),
        lambda p, x, y: backprop.mlp_loss_and_grads(p, x, y, acts, loss)[2],
    )


@settings(max_examples=8, deadline=None, derandomize=True)  # the same 8 shapes every run
@given(
    seed=st.integers(0, 2**16),
    sizes=st.lists(st.integers(1, 9), min_size=2, max_size=5),
    act_idx=st.lists(st.integers(0, len(ACTS) - 1), min_size=4, max_size=4),
    loss=st.sampled_from(sorted(losses.LOSSES)),
    batch=st.sampled_from([None, 1, 7]),
)
def test_mlp_backward_equals_jax_grad(seed, sizes, act_idx, loss, batch):
    acts = tuple(ACTS[i] for i in act_idx[: len(sizes) - 1])
    params, x, y, f, g = _mlp_problem(seed, sizes, acts, loss, batch)
    both = jax.jit(lambda p, x, y: (g(p, x, y), jax.grad(f)(p, x, y)))  # one program per dtype, not op by op
    for dtype, tol in ((jnp.float64, 1e-10), (jnp.float32, 1e-4)):
        with jax.enable_x64(dtype == jnp.float64):
            hand, auto = jax.device_get(both(*gradcheck.cast((params, x, y), dtype)))
            err = jax.tree_util.tree_map(
                lambda a, b: gradcheck.rel_error(a, b, 1e-12 if dtype == jnp.float64 else 1e-6), hand, auto
            )
            assert max(float(e.max()) for e in jax.tree_util.tree_leaves(err)) <= tol, (dtype, err)


def test_grads_have_params_structure():
    params, x, y, _f, g = _mlp_problem(0, (4, 5, 3), "relu", "cross_entropy", 6)
    chex.assert_trees_all_equal_shapes_and_dtypes(g(params, x, y), params)


@pytest.mark.parametrize(
    "acts,loss,batch",
    [
        ("tanh", "ssr", 8),
        ("sigmoid", "mse", 8),
        (("tanh", "relu", "identity"), "cross_entropy", 8),
        ("tanh", "cross_entropy", None),
    ],
)
def test_mlp_finite_differences_float64(acts, loss, batch):
    sizes = (4, 6, 5, 3) if not isinstance(acts, str) else (4, 6, 3)
    params, x, y, f, g = _mlp_problem(1, sizes, acts, loss, batch)
    rep = gradcheck.check_gradients(f, g, params, x, y)
    assert rep["fd_max"] <= 1e-6 and rep["directional_max"] <= 1e-6, rep
    assert gradcheck.passed(rep)


def test_a_gradient_check_is_one_compiled_program():
    from jaxgd.compile_cache import CompileClock

    params, x, y, f, g = _mlp_problem(2, (4, 6, 3), "tanh", "cross_entropy", 5)
    with CompileClock() as clock:
        rep = gradcheck.check_gradients(f, g, params, x, y)
    assert gradcheck.passed(rep) and clock.compiles == 1, clock.compiles


def test_linear_softmax_closed_form():
    kp, kx, ky = jax.random.split(jax.random.PRNGKey(3), 3)
    params = backprop.init_mlp(kp, (20, 10), "torch")
    x, y = draws.normal(kx, (20, 20)), jax.random.randint(ky, (20,), 0, 10)
    rep = gradcheck.check_gradients(backprop.linear_softmax_cost, backprop.linear_softmax_grads, params, x, y, 0.1)
    assert rep["fd_max"] < 1e-6 and rep["autodiff_max"] < 1e-10
    # the closed form is the general MLP backprop plus the penalty's 2 lam W
    _, _, g = backprop.mlp_loss_and_grads(params, x, y, "identity")
    g = jax.tree_util.tree_map(jnp.add, g, losses.l2_penalty_grad(params, 0.1))
    chex.assert_trees_all_close(g, backprop.linear_softmax_grads(params, x, y, 0.1), atol=1e-6)


@pytest.mark.parametrize("K", [1, 3, 8])
def test_matrix_chain(K):
    kp, kx = jax.random.split(jax.random.PRNGKey(K))
    params, x = backprop.init_matrix_chain(kp, K), draws.normal(kx, (K,))
    rep = gradcheck.check_gradients(backprop.matrix_chain_loss, backprop.matrix_chain_grads, params, x)
    assert gradcheck.passed(rep) and rep["fd_max"] < 1e-6, rep


def test_matrix_chain_experiment_curves_overlap(tmp_path):
    from jaxgd.experiments import matrix_chain

    res = matrix_chain.run({"Ks": [2, 8], "iters": 50}, out=tmp_path)
    assert res["max_abs_loss_diff"] < 1e-4
    assert all(r["final_loss"] < r["initial_loss"] for r in res["runs"])
    assert (tmp_path / "matrix_chain" / "loss_curves.png").stat().st_size > 0


def test_gradcheck_detects_a_wrong_gradient():
    params, x, y, f, g = _mlp_problem(0, (3, 4, 2), "tanh", "ssr", 5)
    wrong = lambda p, x, y: jax.tree_util.tree_map(lambda a: 1.01 * a, g(p, x, y))
    rep = gradcheck.check_gradients(f, wrong, params, x, y)
    assert not gradcheck.passed(rep) and rep["fd_max"] > 1e-3


def test_kinked_stencils_are_left_out_and_only_they():
    """|x| has a kink at 0: a stencil around x = 1e-5 (h = 1e-4) reads the mean slope 0.1 instead of 1.
    With the sign pattern given, that coordinate is excluded; the others are still judged."""
    with jax.enable_x64(True):
        p = {"x": jnp.array([1e-5, 0.7, -1.3])}
        f = lambda p: jnp.sum(jnp.abs(p["x"]))
        right = lambda p: {"x": jnp.sign(p["x"])}
        plain = gradcheck.check_gradients(f, right, p)
        assert plain["fd_max"] > 0.5 and plain["fd_kinked"] == 0
        signs = lambda p: [p["x"] > 0]
        rep = gradcheck.check_gradients(f, right, p, pattern_fn=signs, directional=False)
        assert rep["fd_kinked"] == 1 and rep["leaves"][0]["fd_checked"] == 2 and gradcheck.passed(rep)
        wrong = lambda p: {"x": 1.01 * jnp.sign(p["x"])}
        assert not gradcheck.passed(gradcheck.check_gradients(f, wrong, p, pattern_fn=signs, directional=False))


def test_rel_error_formula():
    np.testing.assert_allclose(gradcheck.rel_error(1.0, 0.5), 0.5 / 1.5)
    assert float(gradcheck.rel_error(0.0, 0.0)) == 0.0


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: backprop.mlp_forward(backprop.init_mlp(jax.random.PRNGKey(0), (3, 2)), jnp.ones((4, 5))), "shape"),
        (
            lambda: backprop.mlp_forward(backprop.init_mlp(jax.random.PRNGKey(0), (3, 2)), jnp.ones((4, 3)), "swish"),
            "unknown activation",
        ),
        (lambda: backprop.resolve_activations(("relu",), 2), "one name per layer"),
        (lambda: backprop.init_mlp(jax.random.PRNGKey(0), (3,)), "sizes"),
        (lambda: backprop.init_mlp(jax.random.PRNGKey(0), (3, 2), init="xavier"), "unknown init"),
        (lambda: losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 3])), r"\[0, 3\)"),
        (lambda: losses.softmax_cross_entropy(jnp.zeros((2, 3)), jnp.array([0, 1, 2])), "labels shape"),
        (lambda: losses.sum_squared_residuals(jnp.zeros((2, 3)), jnp.zeros((2, 2))), "shape"),
        (lambda: losses.get_loss("hinge"), "unknown loss"),
        (
            lambda: backprop.matrix_chain_loss(backprop.init_matrix_chain(jax.random.PRNGKey(0), 3), jnp.ones(4)),
            "matrix chain",
        ),
    ],
)
def test_bad_input_raises_clear_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_losses_values():
    logits = jnp.array([[2.0, 0.0], [0.0, 1000.0]])  # stable with a huge logit
    ce = losses.softmax_cross_entropy(logits, jnp.array([0, 1]))
    np.testing.assert_allclose(ce, np.log1p(np.exp(-2.0)) / 2, rtol=1e-6)
    onehot = losses.softmax_cross_entropy(logits, jnp.eye(2))
    np.testing.assert_allclose(ce, onehot, rtol=1e-6)
    params = [{"W": jnp.ones((2, 2)), "b": jnp.ones(2)}]
    assert float(losses.l2_penalty(params, 0.5)) == 2.0  # biases excluded
    assert float(losses.accuracy(logits, jnp.array([0, 0]))) == 0.5
