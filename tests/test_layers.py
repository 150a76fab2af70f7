"""Every layer's hand backward against jax.vjp, central finite differences and check_vjp."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_vjp

from jaxgd import gradcheck
from jaxgd import layers as L

# (layer, per-example input shape, batch size, train); train mode only where it changes the layer
CASES = [
    (L.dense(5), (7,), 4, False),
    (L.relu(), (6,), 4, False), (L.sigmoid(), (6,), 4, False), (L.tanh(), (6,), 4, False),
    (L.identity(), (6,), 4, False),
    (L.conv2d(4, 1), (5, 4, 3), 2, False), (L.conv2d(4, 3), (6, 5, 2), 2, False),
    (L.conv2d(3, 5), (6, 6, 1), 2, False), (L.conv2d(32, 3), (6, 6, 1), 2, False),
    (L.conv2d(5, 3, "im2col"), (6, 5, 2), 2, False), (L.conv2d(4, 5, "im2col"), (6, 6, 3), 2, False),
    (L.max_pool(2), (4, 6, 3), 2, False), (L.max_pool(3), (6, 3, 2), 2, False),
    (L.flatten(), (3, 2, 2), 3, False),
    (L.dropout(0.3), (20,), 4, False), (L.dropout(0.3), (20,), 4, True),
    (L.batch_norm(), (5,), 2, False), (L.batch_norm(), (5,), 2, True), (L.batch_norm(), (5,), 128, False),
    (L.batch_norm(), (5,), 128, True), (L.batch_norm(), (3, 3, 4), 2, True),
]
IDS = [f"{layer}-{shape}-n{n}-{'train' if t else 'eval'}" for layer, shape, n, t in CASES]
KEY = jax.random.PRNGKey(3)  # dropout's mask: a fixed key


def _setup(layer, shape, n, seed=0):
    params, state, _ = layer.init(jax.random.PRNGKey(seed), shape)
    if state:  # batch norm: running statistics away from their initial 0 / 1
        c = state["mean"].shape
        state = {"mean": jax.random.normal(jax.random.PRNGKey(5), c),
                 "var": 0.5 + jax.random.uniform(jax.random.PRNGKey(6), c)}
    if "scale" in params:
        params = {"scale": 1 + 0.3 * jax.random.normal(jax.random.PRNGKey(7), c), "shift": params["shift"] + 0.1}
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (n,) + shape)
    return params, state, x


# The relative error's floor eps (gradcheck.rel_error). Dropped units, negative ReLU inputs and
# pooled-out elements have gradient exactly 0, where a float64 central difference reads rounding
# noise of ~1e-11 (an ulp of L over h = 1e-4): with eps = 1e-5, a component below 1e-5 must be
# within 1e-11 absolute, every other one within 1e-6 relative. float32: eps = 1e-4 for gradients
# within 1e-6 relative. float32 is judged per leaf as max |hand - vjp| / max |vjp|: batch norm's
# dx = (m dy - sum dy - x_hat sum dy x_hat) ... cancels to near 0 in places, where an elementwise
# relative error measures the rounding of that cancellation, not the derivative.


@pytest.mark.parametrize("layer,shape,n,train", CASES, ids=IDS)
def test_backward_equals_vjp_and_finite_differences_float64(layer, shape, n, train):
    params, state, x = _setup(layer, shape, n)
    f, g, args = gradcheck.layer_problem(layer, params, state, x, train=train, key=KEY)
    rep = gradcheck.check_gradients(f, g, (params, x), *args, dtype=jnp.float64, eps=1e-5, max_per_leaf=32,
                                    directional=False)  # check_vjp below is the random-direction check
    assert rep["fd_max"] <= 1e-6 and rep["autodiff_max"] <= 1e-10, rep


@pytest.mark.parametrize("layer,shape,n,train", CASES, ids=IDS)
def test_backward_equals_vjp_float32(layer, shape, n, train):
    params, state, x = _setup(layer, shape, n)
    y, _, res = layer.forward(params, state, x, train=train, key=KEY)
    c = jax.random.normal(jax.random.PRNGKey(4), y.shape)
    _, vjp = jax.vjp(lambda p, x: layer.forward(p, state, x, train=train, key=KEY)[0], params, x)
    # (the denominator floored at 1, the cotangent's scale: with a batch of 2, x_hat = +-1 whatever x
    # is, so batch norm's dx is ~0 and float32 leaves ~1e-6 of rounding there)
    errs = jax.tree_util.tree_map(lambda a, b: float(jnp.max(jnp.abs(a - b)) / max(float(jnp.max(jnp.abs(b))), 1.0)),
                                  layer.backward(params, res, c), vjp(c))
    assert max(jax.tree_util.tree_leaves(errs), default=0.0) <= 1e-4, errs


@pytest.mark.parametrize("layer,shape,n,train", CASES, ids=IDS)
def test_check_vjp(layer, shape, n, train):
    """JAX's own tool: <backward(ct), t> == <ct, numerical jvp(t)> along random directions."""
    with jax.enable_x64(True):
        params, state, x = gradcheck.cast(_setup(layer, shape, n), jnp.float64)

        def f(p, x):
            return layer.forward(p, state, x, train=train, key=KEY)[0]

        def f_vjp(p, x):
            y, _, res = layer.forward(p, state, x, train=train, key=KEY)
            return y, lambda dy: layer.backward(p, res, dy)
        check_vjp(f, f_vjp, (params, x), atol=1e-6, rtol=1e-6, eps=1e-5)


@pytest.mark.parametrize("layer,shape,n,train", CASES, ids=IDS)
def test_custom_vjp_wrapper_is_a_third_path(layer, shape, n, train):
    """jax.grad through hand_vjp(layer) gives the hand backward, and the forward is unchanged."""
    params, state, x = _setup(layer, shape, n)
    if True:
        wrapped = L.hand_vjp(layer, train)
        y, s = wrapped(params, state, x, KEY)
        y_ref, s_ref, res = layer.forward(params, state, x, train=train, key=KEY)
        chex.assert_trees_all_equal((y, s), (y_ref, s_ref))
        c = jax.random.normal(jax.random.PRNGKey(9), y.shape)
        got = jax.grad(lambda p, x: jnp.sum(c * wrapped(p, state, x, KEY)[0]), argnums=(0, 1))(params, x)
        chex.assert_trees_all_close(got, layer.backward(params, res, c), rtol=1e-6, atol=1e-6)


def test_conv_implementations_equal_lax_conv():
    kx, kw, kb = jax.random.split(jax.random.PRNGKey(0), 3)
    for k, c_in, c_out in ((1, 1, 32), (3, 4, 8), (5, 2, 3)):
        x = jax.random.normal(kx, (2, 8, 6, c_in))
        p = {"W": jax.random.normal(kw, (k, k, c_in, c_out)), "b": jax.random.normal(kb, (c_out,))}
        ref = jax.lax.conv_general_dilated(x, p["W"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                           precision="highest") + p["b"]
        with jax.default_matmul_precision("highest"):
            for impl in L.CONV_IMPLS:
                y = L.conv2d(c_out, k, impl).forward(p, {}, x)[0]
                chex.assert_trees_all_close(y, ref, rtol=1e-5, atol=1e-5)


def test_max_pool_ties_go_to_the_first_maximum():
    # one 2x2 window, all four equal; another with a tie between its two bottom elements
    x = jnp.array([[1.0, 1.0, 0.0, -1.0],
                   [1.0, 1.0, 2.0, 2.0]]).reshape(1, 2, 4, 1)
    pool = L.max_pool(2)
    y, _, res = pool.forward({}, {}, x)
    np.testing.assert_array_equal(np.asarray(y).ravel(), [1.0, 2.0])
    _, dx = pool.backward({}, res, jnp.array([10.0, 20.0]).reshape(1, 1, 2, 1))
    np.testing.assert_array_equal(np.asarray(dx).reshape(2, 4), [[10, 0, 0, 0], [0, 0, 20, 0]])
    # jax.grad of the max splits among ties instead: the two rules differ exactly at ties
    g = jax.grad(lambda x: jnp.sum(x.reshape(1, 1, 2, 2, 2, 1).max(axis=(2, 4)) * jnp.array([10.0, 20.0])
                                   .reshape(1, 1, 2, 1)))(x)
    np.testing.assert_allclose(np.asarray(g).reshape(2, 4), [[2.5, 2.5, 0, 0], [2.5, 2.5, 10, 10]])


def test_max_pool_ties_match_torch():
    torch = pytest.importorskip("torch", reason="torch not installed (pip install 'jaxgd[torch]')")
    x = np.round(np.random.default_rng(0).normal(size=(2, 4, 6, 3)), 0).astype(np.float32)  # many ties
    dy = np.random.default_rng(1).normal(size=(2, 2, 3, 3)).astype(np.float32)
    y, _, res = L.max_pool(2).forward({}, {}, jnp.asarray(x))
    dx = L.max_pool(2).backward({}, res, jnp.asarray(dy))[1]
    xt = torch.tensor(x).permute(0, 3, 1, 2).requires_grad_()
    yt = torch.nn.functional.max_pool2d(xt, 2)
    yt.backward(torch.tensor(dy).permute(0, 3, 1, 2))
    np.testing.assert_array_equal(np.asarray(y), yt.detach().permute(0, 2, 3, 1).numpy())
    np.testing.assert_array_equal(np.asarray(dx), xt.grad.permute(0, 2, 3, 1).numpy())


def test_dropout_mask_is_reused_and_scaled():
    drop = L.dropout(0.3)
    x = jnp.ones((200, 500))
    assert drop.forward({}, {}, x, train=False)[0] is x
    y, _, keep = drop.forward({}, {}, x, train=True, key=jax.random.PRNGKey(0))
    y = np.asarray(y)
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.7)}  # survivors scaled by 1/(1-p)
    assert abs((y == 0).mean() - 0.3) < 0.01                   # 100k draws: sd 0.0015
    _, dx = drop.backward({}, keep, jnp.full(x.shape, 2.0))
    np.testing.assert_array_equal(np.asarray(dx) == 0, y == 0)  # the same units are dropped
    np.testing.assert_allclose(np.asarray(dx)[y > 0], 2.0 / 0.7, rtol=1e-6)
    y2 = drop.forward({}, {}, x, train=True, key=jax.random.PRNGKey(0))[0]
    chex.assert_trees_all_equal(y2, jnp.asarray(y))  # a fixed key gives a fixed mask
    with pytest.raises(ValueError, match="PRNG key"):
        drop.forward({}, {}, x, train=True)
    with pytest.raises(ValueError, match="rate"):
        L.dropout(1.0)


def test_batch_norm_statistics_and_too_small_batch():
    bn = L.batch_norm()
    x = 3.0 + 2.0 * jax.random.normal(jax.random.PRNGKey(2), (64, 5, 5, 4))
    params = {"scale": jnp.full((4,), 2.0), "shift": jnp.full((4,), 0.5)}
    state = {"mean": jnp.zeros(4), "var": jnp.ones(4)}
    y, new, _ = bn.forward(params, state, x, train=True)
    np.testing.assert_allclose(np.asarray(y).mean((0, 1, 2)), 0.5, atol=1e-4)
    np.testing.assert_allclose(np.asarray(y).std((0, 1, 2)), 2.0, rtol=1e-3)
    m = x.size // 4
    xs = np.asarray(x, np.float64).reshape(-1, 4)
    np.testing.assert_allclose(new["mean"], 0.1 * xs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.9 + 0.1 * xs.var(0) * m / (m - 1), rtol=1e-5)  # unbiased, as torch
    ye, same, _ = bn.forward(params, new, x, train=False)
    np.testing.assert_allclose(ye, 2.0 * (x - new["mean"]) / np.sqrt(new["var"] + 1e-5) + 0.5, rtol=1e-5, atol=1e-5)
    assert same is new
    with pytest.raises(ValueError, match="more than one value per feature"):
        bn.forward(params, state, jnp.ones((1, 4)), train=True)
    bn.forward(params, state, jnp.ones((1, 4)), train=False)  # eval needs no batch statistics


def test_batch_norm_matches_torch_forward_backward_and_running_stats():
    torch = pytest.importorskip("torch", reason="torch not installed (pip install 'jaxgd[torch]')")
    rng = np.random.default_rng(0)
    bn_t = torch.nn.BatchNorm1d(6).double()
    bn = L.batch_norm()
    with jax.enable_x64(True):
        p, s, _ = gradcheck.cast(bn.init(None, (6,)), jnp.float64)
        for step in range(3):
            x = rng.normal(2, 3, (32, 6))
            dy = rng.normal(size=(32, 6))
            xt = torch.tensor(x, requires_grad=True)
            yt = bn_t(xt)
            yt.backward(torch.tensor(dy))
            y, s, res = bn.forward(p, s, jnp.asarray(x), train=True)
            dp, dx = bn.backward(p, res, jnp.asarray(dy))
            np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(dp["scale"], bn_t.weight.grad.numpy(), rtol=1e-10)
            bn_t.zero_grad()
        np.testing.assert_allclose(s["mean"], bn_t.running_mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(s["var"], bn_t.running_var.numpy(), rtol=1e-12)


@pytest.mark.parametrize("make,shape,match", [
    (lambda: L.dense(3), (28, 28, 1), "flatten"),
    (lambda: L.conv2d(3), (10,), "height, width, channels"),
    (lambda: L.max_pool(2), (5, 4, 1), "divisible"),
    (lambda: L.conv2d(3, 4), None, "odd kernel"),
    (lambda: L.conv2d(3, 3, "fft"), None, "impl"),
    (lambda: L.Activation("swish"), None, "unknown activation"),
    (lambda: L.dense(3, "xavier"), (4,), "unknown init"),
])
def test_bad_layers_give_clear_errors(make, shape, match):
    with pytest.raises(ValueError, match=match):
        make().init(jax.random.PRNGKey(0), shape)


def test_bench_conv_parts_time_what_pytorch_computes():
    """The bench's ``conv_parts`` rows compare jaxgd's conv forward, weight gradient and input
    gradient with PyTorch's on the same tensors: the three give the same numbers."""
    torch = pytest.importorskip("torch")
    from jaxgd.experiments.bench import _torch_conv_parts
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    xs, dys = jax.random.normal(k1, (2, 4, 6, 6, 3)), jax.random.normal(k2, (2, 4, 6, 6, 5))
    W = jax.random.normal(k3, (3, 3, 3, 5))
    ops = _torch_conv_parts(xs, dys, W)
    nhwc = lambda t: np.asarray(t.permute(0, 2, 3, 1))  # noqa: E731
    with torch.no_grad():
        np.testing.assert_allclose(nhwc(ops["forward"](1)), L.conv2d(5).forward({"W": W, "b": jnp.zeros(5)}, {}, xs[1])[0],
                                   rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(ops["weight gradient"](1).permute(2, 3, 1, 0)),
                                   L.conv_weight_grad(xs[1], dys[1], W.shape), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(nhwc(ops["input gradient"](1)), L.conv_input_grad(dys[1], W), rtol=1e-4, atol=1e-4)
