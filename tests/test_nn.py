"""The MNIST zoo's layers: conv and pool equal lax's, dropout and batch norm behave as specified."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgd import nn, optim, train


@pytest.mark.parametrize("k,c_in", [(3, 1), (3, 4), (5, 2)])
def test_conv2d_equals_lax_conv_forward_and_backward(k, c_in):
    kx, kw, kb = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (2, 8, 6, c_in))
    W = jax.random.normal(kw, (k, k, c_in, 5))
    b = jax.random.normal(kb, (5,))

    def ref(x, W, b):
        return jax.lax.conv_general_dilated(x, W, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                            precision="highest") + b
    with jax.default_matmul_precision("highest"):
        chex.assert_trees_all_close(nn.conv2d(x, W, b), ref(x, W, b), rtol=1e-5, atol=1e-5)
        g = lambda f: jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), argnums=(0, 1, 2))(x, W, b)
        chex.assert_trees_all_close(g(nn.conv2d), g(ref), rtol=1e-4, atol=1e-4)


def test_max_pool_equals_reduce_window_and_routes_gradient_to_the_max():
    x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 4, 3))
    ref = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), "VALID")
    chex.assert_trees_all_equal(nn.max_pool(x, 2), ref)
    g = jax.grad(lambda x: jnp.sum(nn.max_pool(x, 2)))(x)
    # one 1 per window, at its maximum (random normals: no ties)
    assert float(g.sum()) == ref.size
    np.testing.assert_array_equal(np.asarray(g) == 1, np.asarray(x == jnp.repeat(jnp.repeat(ref, 2, 1), 2, 2)))
    with pytest.raises(ValueError, match="divisible"):
        nn.max_pool(jnp.ones((1, 5, 4, 1)), 2)


def test_dropout_identity_at_eval_and_inverted_scaling_in_training():
    x = jnp.ones((200, 500))
    assert nn.dropout(jax.random.PRNGKey(0), x, 0.3, train=False) is x
    y = np.asarray(nn.dropout(jax.random.PRNGKey(0), x, 0.3, train=True))
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.7)}  # survivors scaled by 1/(1-p)
    assert abs((y == 0).mean() - 0.3) < 0.01                   # 100k draws: sd 0.0015
    assert abs(y.mean() - 1.0) < 0.02                          # expectation kept
    assert not np.array_equal(y, nn.dropout(jax.random.PRNGKey(1), x, 0.3, True))  # the key picks the mask
    with pytest.raises(ValueError, match="PRNG key"):
        nn.dropout(None, x, 0.3, train=True)


def test_batch_norm_batch_stats_in_training_running_stats_at_eval():
    x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(2), (64, 5, 5, 4))
    params = {"scale": jnp.full((4,), 2.0), "shift": jnp.full((4,), 0.5)}
    state = {"mean": jnp.zeros(4), "var": jnp.ones(4)}
    y, new = nn.batch_norm(params, state, x, train=True)
    y = np.asarray(y)
    np.testing.assert_allclose(y.mean((0, 1, 2)), 0.5, atol=1e-4)   # shift
    np.testing.assert_allclose(y.std((0, 1, 2)), 2.0, rtol=1e-3)     # scale * unit variance
    m = x.size // 4
    xs = np.asarray(x, np.float64).reshape(-1, 4)
    np.testing.assert_allclose(new["mean"], 0.1 * xs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * xs.var(0) * m / (m - 1), rtol=1e-5)  # unbiased, as torch
    # eval: running statistics, state unchanged
    ye, same = nn.batch_norm(params, new, x, train=False)
    np.testing.assert_allclose(ye, 2.0 * (x - new["mean"]) / np.sqrt(new["var"] + 1e-5) + 0.5, rtol=1e-5, atol=1e-5)
    assert same is new


def test_batch_norm_matches_torch():
    torch = pytest.importorskip("torch", reason="torch not installed (pip install 'jaxgd[torch]')")
    x = np.random.default_rng(0).normal(2, 3, (32, 6)).astype(np.float32)
    bn = torch.nn.BatchNorm1d(6)
    state = {"mean": jnp.zeros(6), "var": jnp.ones(6)}
    p = {"scale": jnp.ones(6), "shift": jnp.zeros(6)}
    for _ in range(3):
        yt = bn(torch.tensor(x)).detach().numpy()
        y, state = nn.batch_norm(p, state, jnp.asarray(x), True)
        np.testing.assert_allclose(y, yt, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(state["mean"], bn.running_mean.numpy(), rtol=1e-5)
    np.testing.assert_allclose(state["var"], bn.running_var.numpy(), rtol=1e-5)


N_PARAMS = {("softmax", "plain"): 7_850, ("mlp", "plain"): 235_146, ("cnn", "plain"): 421_642}


@pytest.mark.parametrize("family", nn.ZOO_FAMILIES)
@pytest.mark.parametrize("variant", nn.ZOO_VARIANTS)
def test_zoo_shapes_and_modes(family, variant):
    layers = nn.mnist_zoo(family, variant)
    params, state = nn.init_sequential(jax.random.PRNGKey(0), layers, (28, 28, 1))
    if (family, variant) in N_PARAMS:
        assert nn.count_params(params) == N_PARAMS[family, variant]
    x = jax.random.normal(jax.random.PRNGKey(1), (8, 28, 28, 1))
    out_eval, st_eval = nn.sequential_apply(layers, params, state, x, False)
    out_tr, st_tr = nn.sequential_apply(layers, params, state, x, True, jax.random.PRNGKey(3))
    assert out_eval.shape == out_tr.shape == (8, 10)
    chex.assert_trees_all_equal(st_eval, state)  # eval never moves the running statistics
    has_bn = any(l[0] == "batchnorm" for l in layers)
    assert (variant == "batchnorm") == has_bn
    assert (variant == "dropout") == any(l[0] == "dropout" for l in layers)
    if variant == "plain":  # no randomness, no statistics: training and eval agree
        chex.assert_trees_all_close(out_tr, out_eval, rtol=1e-6)
    else:
        assert not np.allclose(out_tr, out_eval)
    if has_bn:
        assert not np.allclose(st_tr[[l[0] for l in layers].index("batchnorm")]["mean"], 0)


def test_sequential_errors_are_readable():
    with pytest.raises(ValueError, match="unknown layer"):
        nn.init_sequential(jax.random.PRNGKey(0), [("dense", 3), ("softmaxx",)], (4,))
    with pytest.raises(ValueError, match="flatten"):
        nn.init_sequential(jax.random.PRNGKey(0), [("dense", 3)], (28, 28, 1))
    with pytest.raises(ValueError, match="families"):
        nn.mnist_zoo("resnet")
    with pytest.raises(ValueError, match="channels"):
        nn.conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 1, 4)), jnp.zeros(4))


def test_fit_threads_batch_norm_state_and_dropout_keys():
    layers = nn.mnist_zoo("cnn", "batchnorm")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 64).astype(np.int32)
    params, state = nn.init_sequential(jax.random.PRNGKey(0), layers, (28, 28, 1))
    _, new_state, h = train.fit(train.sequential(layers), params, (x, y), hparams=optim.sgd_hyperparams(0.01, 0.9),
                                epochs=2, batch_size=32, model_state=state)
    i = [l[0] for l in layers].index("batchnorm")
    assert not np.allclose(new_state[i]["mean"], 0) and len(h.train_loss) == 2


@pytest.mark.parametrize("family", nn.ZOO_FAMILIES)
def test_a_few_steps_reduce_the_loss_on_real_mnist(family):
    from conftest import require_real_data
    from jaxgd import data
    require_real_data("mnist")
    d = data.load("mnist", val_size=0, train_size=512, layout="nhwc")
    layers = nn.mnist_zoo(family, "batchnorm" if family == "cnn" else "dropout")
    params, state = nn.init_sequential(jax.random.PRNGKey(0), layers, (28, 28, 1))
    model = train.sequential(layers)
    evaluate = train.make_eval(model)
    before = float(evaluate(params, state, *map(jnp.asarray, d.train))[0])
    params, state, _ = train.fit(model, params, d.train, hparams=optim.sgd_hyperparams(0.05, 0.9),
                                 epochs=3, batch_size=64, model_state=state)
    after = float(evaluate(params, state, *map(jnp.asarray, d.train))[0])
    assert after < 0.7 * before, (before, after)
