"""Every layer's hand backward against jax.vjp, central finite differences and check_vjp."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_peer
from jax.test_util import check_vjp

from jaxgd import draws, gradcheck
from jaxgd import layers as L

# (layer, per-example input shape, batch size, train); train mode only where it changes the layer
CASES = [
    (L.dense(5), (7,), 4, False),
    (L.relu(), (6,), 4, False),
    (L.sigmoid(), (6,), 4, False),
    (L.tanh(), (6,), 4, False),
    (L.identity(), (6,), 4, False),
    (L.conv2d(4, 1), (5, 4, 3), 2, False),
    (L.conv2d(4, 3), (6, 5, 2), 2, False),
    (L.conv2d(3, 5), (6, 6, 1), 2, False),
    (L.conv2d(32, 3), (6, 6, 1), 2, False),
    (L.conv2d(5, 3, "im2col"), (6, 5, 2), 2, False),
    (L.conv2d(4, 5, "im2col"), (6, 6, 3), 2, False),
    (L.max_pool(2), (4, 6, 3), 2, False),
    (L.max_pool(3), (6, 3, 2), 2, False),
    (L.flatten(), (3, 2, 2), 3, False),
    (L.dropout(0.3), (20,), 4, False),
    (L.dropout(0.3), (20,), 4, True),
    (L.batch_norm(), (5,), 2, False),
    (L.batch_norm(), (5,), 2, True),
    (L.batch_norm(), (5,), 128, False),
    (L.batch_norm(), (5,), 128, True),
    (L.batch_norm(), (3, 3, 4), 2, True),
    # strides and 'valid' padding: odd and even sizes, so a stride leaves a last row unused
    (L.conv2d(4, 3, stride=2), (6, 5, 2), 2, False),
    (L.conv2d(3, 3, "lax", stride=2), (7, 7, 2), 2, False),
    (L.conv2d(4, 2, padding="valid"), (5, 6, 3), 2, False),
    (L.conv2d(3, 3, stride=2, padding="valid"), (7, 6, 2), 2, False),
    (L.conv2d(3, 3, "lax", stride=2, padding="valid"), (8, 7, 2), 2, False),
    (L.conv2d(4, 1, stride=2), (6, 6, 3), 2, False),
    # dW one matmul per kernel tap: "same", strided, "valid"
    (L.conv2d(4, 3, weight_grad="taps"), (6, 5, 2), 2, False),
    (L.conv2d(3, 3, "lax", stride=2, weight_grad="taps"), (7, 6, 2), 2, False),
    (L.conv2d(4, 2, padding="valid", weight_grad="taps"), (5, 6, 3), 2, False),
    # dW as a convolution (canonical operands): "same", strided with a last row unused, "valid" even
    (L.conv2d(4, 3, weight_grad="conv"), (6, 5, 2), 2, False),
    (L.conv2d(3, 3, "lax", stride=2, weight_grad="conv"), (8, 7, 2), 2, False),
    (L.conv2d(4, 2, padding="valid", weight_grad="conv"), (5, 6, 3), 2, False),
    (L.avg_pool(2), (4, 6, 3), 2, False),
    (L.avg_pool(3), (6, 3, 2), 2, False),
    (L.global_avg_pool(), (4, 5, 3), 3, False),
    (L.leaky_relu(0.1), (6,), 4, False),
    (L.gelu(), (6,), 4, False),
    (L.gelu(approximate=True), (6,), 4, False),
    (L.softmax(), (6,), 4, False),
    (L.layer_norm(), (5,), 3, False),
    (L.layer_norm(), (3, 3, 4), 2, False),
    # skip connections: the identity shortcut, a strided body with a 1x1 strided projection, concat
    # (in training, a bias right before batch norm has gradient exactly 0, read as rounding noise
    # of ~1e-15 against the floor of 1e-5: the training case is the pre-activation block)
    (L.residual((L.batch_norm(), L.relu(), L.conv2d(4, 3))), (4, 4, 4), 3, True),
    (L.residual((L.conv2d(4, 3), L.batch_norm(), L.relu(), L.conv2d(4, 3))), (4, 4, 4), 3, False),
    (
        L.residual((L.conv2d(6, 3, stride=2), L.relu(), L.conv2d(6, 3)), (L.conv2d(6, 1, stride=2),)),
        (6, 6, 3),
        2,
        False,
    ),
    (L.fan_in_concat((L.dense(3),), (L.tanh(),), ()), (4,), 3, False),
]
IDS = [f"{layer}-{shape}-n{n}-{'train' if t else 'eval'}" for layer, shape, n, t in CASES]
KEY = jax.random.PRNGKey(3)  # dropout's mask: a fixed key


def _setup(layer, shape, n, seed=0):
    """Parameters and running statistics moved off their constant initial values (a scale of ones
    would hide a missing factor), and a random input."""
    params, state = layer.init(jax.random.PRNGKey(seed), shape)[:2]  # op by op: its draws share programs
    params, state = gradcheck.off_constant(params, 7), gradcheck.off_constant(state, 5)  # on the host
    x = jnp.asarray(np.random.default_rng(seed + 1).standard_normal((n,) + shape))
    return params, state, x


def test_draws_are_jax_randoms_numbers():
    """Initial weights are drawn by ``jaxgd.draws``: jax.random's very numbers, bit for bit, for
    every shape and dtype, and eagerly a few programs for all shapes instead of one per shape."""
    from jaxgd.compile_cache import CompileClock

    key = jax.random.PRNGKey(7)
    cases = [
        ((), jnp.float32),
        ((0,), jnp.float32),
        ((3, 4), jnp.float32),
        ((1025,), jnp.float32),  # 1024, 2048
        ((5, 5, 3, 32), jnp.float32),
        ((3, 4), jnp.float64),
        ((40, 60), jnp.float64),
    ]  # 4096
    with jax.enable_x64(True):
        for shape, dtype in cases:
            for ours, theirs in [
                (draws.normal(key, shape, dtype), jax.random.normal(key, shape, dtype)),
                (draws.uniform(key, shape, dtype, -0.3, 0.7), jax.random.uniform(key, shape, dtype, -0.3, 0.7)),
            ]:
                assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
                np.testing.assert_array_equal(ours, theirs)
    typed = jax.random.key(3)  # a typed key, and a traced one, go to jax.random itself
    np.testing.assert_array_equal(draws.normal(typed, (5,)), jax.random.normal(typed, (5,)))
    np.testing.assert_array_equal(jax.jit(lambda k: draws.uniform(k, (2, 3)))(key), jax.random.uniform(key, (2, 3)))
    with CompileClock() as clock:
        for shape in [(11, 13), (12, 12), (6, 7, 8), (40,)]:  # all within one length: one program
            draws.uniform(jax.random.PRNGKey(1), shape, jnp.float32, -1.0, 1.0)
    assert clock.compiles <= 1, clock.compiles


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
    rep = gradcheck.check_gradients(
        f, g, (params, x), *args, dtype=jnp.float64, eps=1e-5, max_per_leaf=32, directional=False
    )  # check_vjp below is the random-direction check
    assert rep["fd_max"] <= 1e-6 and rep["autodiff_max"] <= 1e-10, rep


@pytest.mark.parametrize("layer,shape,n,train", CASES, ids=IDS)
def test_backward_equals_vjp_float32(layer, shape, n, train):
    params, state, x = _setup(layer, shape, n)
    c = draws.normal(
        jax.random.PRNGKey(4), jax.eval_shape(lambda: layer.forward(params, state, x, train=train, key=KEY)[0]).shape
    )

    @jax.jit  # both gradients in one program, not op by op
    def both(params, x, c):
        _, _, res = layer.forward(params, state, x, train=train, key=KEY)
        _, vjp = jax.vjp(lambda p, x: layer.forward(p, state, x, train=train, key=KEY)[0], params, x)
        return layer.backward(params, res, c), vjp(c)

    hand, auto = jax.device_get(both(params, x, c))
    # (the denominator floored at 1, the cotangent's scale: with a batch of 2, x_hat = +-1 whatever x
    # is, so batch norm's dx is ~0 and float32 leaves ~1e-6 of rounding there)
    errs = jax.tree_util.tree_map(
        lambda a, b: float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1.0)), hand, auto
    )
    assert max(jax.tree_util.tree_leaves(errs), default=0.0) <= 1e-4, errs


@pytest.mark.parametrize("layer,shape,n,train", CASES, ids=IDS)
def test_check_vjp(layer, shape, n, train):
    """JAX's own tool: <backward(ct), t> == <ct, numerical jvp(t)> along random directions."""
    with jax.enable_x64(True):
        params, state, x = gradcheck.cast(_setup(layer, shape, n), jnp.float64)

        # forward and backward each one compiled program (check_vjp calls them a few times)
        f = jax.jit(lambda p, x: layer.forward(p, state, x, train=train, key=KEY)[0])
        forward = jax.jit(lambda p, x: layer.forward(p, state, x, train=train, key=KEY)[::2])
        backward = jax.jit(layer.backward)

        def f_vjp(p, x):
            y, res = forward(p, x)
            return y, lambda dy: backward(p, res, dy)

        check_vjp(f, f_vjp, (params, x), atol=1e-6, rtol=1e-6, eps=1e-5)


@pytest.mark.parametrize("layer,shape,n,train", CASES, ids=IDS)
def test_custom_vjp_wrapper_is_a_third_path(layer, shape, n, train):
    """jax.grad through hand_vjp(layer) gives the hand backward, and the forward is unchanged."""
    params, state, x = _setup(layer, shape, n)
    wrapped = L.hand_vjp(layer, train)

    @jax.jit  # one program: the wrapped and the plain forward, jax.grad through the wrapper, the hand backward
    def paths(params, x, c):
        y, s = wrapped(params, state, x, KEY)
        y_ref, s_ref, res = layer.forward(params, state, x, train=train, key=KEY)
        got = jax.grad(lambda p, x: jnp.sum(c * wrapped(p, state, x, KEY)[0]), argnums=(0, 1))(params, x)
        return (y, s), (y_ref, s_ref), got, layer.backward(params, res, c)

    c = draws.normal(jax.random.PRNGKey(9), jax.eval_shape(lambda: wrapped(params, state, x, KEY)[0]).shape)
    out, ref, got, hand = paths(params, x, c)
    chex.assert_trees_all_equal(out, ref)
    chex.assert_trees_all_close(got, hand, rtol=1e-6, atol=1e-6)


def test_conv_implementations_equal_lax_conv():
    kx, kw, kb = jax.random.split(jax.random.PRNGKey(0), 3)
    for k, c_in, c_out in ((1, 1, 32), (3, 4, 8), (5, 2, 3)):
        x = draws.normal(kx, (2, 8, 6, c_in))
        p = {"W": draws.normal(kw, (k, k, c_in, c_out)), "b": draws.normal(kb, (c_out,))}
        ref = (
            jax.lax.conv_general_dilated(
                x, p["W"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), precision="highest"
            )
            + p["b"]
        )
        with jax.default_matmul_precision("highest"):
            for impl in L.CONV_IMPLS:
                y = L.conv2d(c_out, k, impl).forward(p, {}, x)[0]
                chex.assert_trees_all_close(y, ref, rtol=1e-5, atol=1e-5)


def test_max_pool_ties_go_to_the_first_maximum():
    # one 2x2 window, all four equal; another with a tie between its two bottom elements
    x = jnp.array([[1.0, 1.0, 0.0, -1.0], [1.0, 1.0, 2.0, 2.0]]).reshape(1, 2, 4, 1)
    pool = L.max_pool(2)
    y, _, res = pool.forward({}, {}, x)
    np.testing.assert_array_equal(np.asarray(y).ravel(), [1.0, 2.0])
    _, dx = pool.backward({}, res, jnp.array([10.0, 20.0]).reshape(1, 1, 2, 1))
    np.testing.assert_array_equal(np.asarray(dx).reshape(2, 4), [[10, 0, 0, 0], [0, 0, 20, 0]])
    # jax.grad of the max splits among ties instead: the two rules differ exactly at ties
    g = jax.grad(
        lambda x: jnp.sum(x.reshape(1, 1, 2, 2, 2, 1).max(axis=(2, 4)) * jnp.array([10.0, 20.0]).reshape(1, 1, 2, 1))
    )(x)
    np.testing.assert_allclose(np.asarray(g).reshape(2, 4), [[2.5, 2.5, 0, 0], [2.5, 2.5, 10, 10]])
    # but jax.grad of the layer's forward (a chain of selections) takes the first maximum, as the hand backward
    g = jax.grad(lambda x: jnp.sum(pool.forward({}, {}, x)[0] * jnp.array([10.0, 20.0]).reshape(1, 1, 2, 1)))(x)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(dx))


def test_max_pool_of_large_windows_keeps_every_index():
    """A 12x12 window has 144 elements: the winner's index no longer fits int8 (it wrapped around
    silently and the gradient went to the wrong element)."""
    x = draws.normal(jax.random.PRNGKey(0), (2, 12, 12, 3))
    pool = L.max_pool(12)
    _, _, idx = pool.forward({}, {}, x)
    assert jnp.iinfo(idx.dtype).max >= 143
    dy = draws.normal(jax.random.PRNGKey(1), (2, 1, 1, 3))
    dx = pool.backward({}, idx, dy)[1]
    g = jax.grad(lambda x: jnp.sum(jnp.max(x, axis=(1, 2), keepdims=True) * dy))(x)  # no ties in random data
    np.testing.assert_array_equal(np.asarray(dx), np.asarray(g))


def test_max_pool_ties_match_torch():
    torch = require_peer("torch")
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
    assert abs((y == 0).mean() - 0.3) < 0.01  # 100k draws: sd 0.0015
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
    x = 3.0 + 2.0 * draws.normal(jax.random.PRNGKey(2), (64, 5, 5, 4))
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
    torch = require_peer("torch")
    rng = np.random.default_rng(0)
    bn_t = torch.nn.BatchNorm1d(6).double()
    bn = L.batch_norm()
    with jax.enable_x64(True):
        p, s, _ = gradcheck.cast(bn.init(None, (6,)), jnp.float64)
        for _step in range(3):
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


@pytest.mark.parametrize("by", ["taps", "conv"])
@pytest.mark.parametrize(
    "size,stride,padding", [(3, 1, "same"), (5, 1, "same"), (3, 2, "same"), (3, 2, "valid"), (2, 1, "valid")]
)
def test_conv_weight_grad_ways_equal_by_im2col(size, stride, padding, by):
    """The ways to ``dW`` sum the same products: equal to rounding in float32."""
    layer = L.conv2d(6, size, stride=stride, padding=padding)
    kx, kd = jax.random.split(jax.random.PRNGKey(2))
    x = draws.normal(kx, (3, 9, 8, 5))
    out = layer.out_shape(x.shape[1:])
    dy = draws.normal(kd, (3,) + out)
    w_shape = (size, size, 5, 6)
    a = L.conv_weight_grad(x, dy, w_shape, stride, layer.pad)
    b = L.conv_weight_grad(x, dy, w_shape, stride, layer.pad, by=by)
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="by must be one of"):
        L.conv_weight_grad(x, dy, w_shape, stride, layer.pad, by="fft")


def test_conv_weight_grad_as_conv_equals_jax_vjp():
    """``dW`` as a convolution against ``jax.vjp`` of ``lax.conv`` (the same sum, which JAX writes with
    other dimension numbers), float64: strides that leave input rows unused, "valid", a 1x1."""
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        for k, stride, pad, hw in (
            (3, 1, 1, (7, 7)),
            (3, 2, 1, (8, 8)),
            (3, 2, 0, (7, 9)),
            (5, 3, 2, (10, 10)),
            (1, 2, 0, (6, 5)),
            (2, 1, 0, (5, 6)),
        ):
            x, w = rng.standard_normal((3,) + hw + (2,)), rng.standard_normal((k, k, 2, 4))
            y, vjp = jax.vjp(
                lambda w: jax.lax.conv_general_dilated(
                    x, w, (stride, stride), [(pad, pad)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC")
                ),
                w,
            )
            dy = rng.standard_normal(y.shape)
            np.testing.assert_allclose(
                L.conv_weight_grad(x, dy, w.shape, stride, pad, by="conv"), vjp(dy)[0], rtol=1e-12, atol=1e-12
            )


def test_strided_and_valid_convs_equal_lax_conv():
    """Both forwards against lax.conv with explicit symmetric padding (PyTorch's ``padding=k//2``
    convention for "same" with a stride, not XLA's asymmetric "SAME")."""
    kx, kw, kb = jax.random.split(jax.random.PRNGKey(1), 3)
    for k, stride, padding, hw in (
        (3, 2, "same", (7, 6)),
        (3, 2, "valid", (8, 7)),
        (2, 1, "valid", (5, 6)),
        (1, 2, "same", (6, 5)),
        (5, 3, "same", (9, 10)),
    ):
        x = draws.normal(kx, (2,) + hw + (3,))
        p = {"W": draws.normal(kw, (k, k, 3, 4)), "b": draws.normal(kb, (4,))}
        pad = k // 2 if padding == "same" else 0
        ref = (
            jax.lax.conv_general_dilated(
                x,
                p["W"],
                (stride, stride),
                [(pad, pad)] * 2,
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision="highest",
            )
            + p["b"]
        )
        with jax.default_matmul_precision("highest"):
            for impl in L.CONV_IMPLS:
                layer = L.conv2d(4, k, impl, stride=stride, padding=padding)
                y = layer.forward(p, {}, x)[0]
                assert y.shape[1:] == layer.out_shape(x.shape[1:])
                chex.assert_trees_all_close(y, ref, rtol=1e-5, atol=1e-5)


def _torch_nhwc(torch, a):
    t = torch.tensor(np.asarray(a))
    return (t.permute(0, 3, 1, 2) if t.ndim == 4 else t).requires_grad_()


def _to_nhwc(t):
    t = t.detach()
    return (t.permute(0, 2, 3, 1) if t.ndim == 4 else t).numpy()


@pytest.mark.parametrize(
    "layer,shape,torch_fn",
    [
        (L.conv2d(4, 3, stride=2), (7, 6, 3), lambda F, x, p: F.conv2d(x, p["W"], p["b"], stride=2, padding=1)),
        (L.conv2d(4, 3, stride=2, padding="valid"), (8, 7, 3), lambda F, x, p: F.conv2d(x, p["W"], p["b"], stride=2)),
        (L.conv2d(4, 1, stride=2), (6, 6, 3), lambda F, x, p: F.conv2d(x, p["W"], p["b"], stride=2)),
        (L.avg_pool(2), (4, 6, 3), lambda F, x, p: F.avg_pool2d(x, 2)),
        (L.global_avg_pool(), (4, 5, 3), lambda F, x, p: F.adaptive_avg_pool2d(x, 1).flatten(1)),
        (L.leaky_relu(0.1), (6,), lambda F, x, p: F.leaky_relu(x, 0.1)),
        (L.gelu(), (6,), lambda F, x, p: F.gelu(x)),
        (L.gelu(approximate=True), (6,), lambda F, x, p: F.gelu(x, approximate="tanh")),
        (L.softmax(), (6,), lambda F, x, p: F.softmax(x, -1)),
        (L.layer_norm(), (5,), lambda F, x, p: F.layer_norm(x, (5,), p["scale"], p["shift"], 1e-5)),
    ],
    ids=lambda v: str(v) if isinstance(v, (L.Layer, tuple)) else "",
)
def test_new_layers_match_torch_forward_and_backward(layer, shape, torch_fn):
    """PyTorch (float64, NCHW) computes the same output and the same gradients."""
    torch = require_peer("torch")
    with jax.enable_x64(True):
        params, state, x = gradcheck.cast(_setup(layer, shape, 3), jnp.float64)
        y, _, res = layer.forward(params, state, x)
        dy = draws.normal(jax.random.PRNGKey(2), y.shape, jnp.float64)
        grads, dx = layer.backward(params, res, dy)
        pt = {
            k: torch.tensor(np.asarray(v.transpose(3, 2, 0, 1) if k == "W" else v)).requires_grad_()
            for k, v in params.items()
        }
        xt = _torch_nhwc(torch, x)
        yt = torch_fn(torch.nn.functional, xt, pt)
        yt.backward(_torch_nhwc(torch, dy).detach())
        np.testing.assert_allclose(np.asarray(y), _to_nhwc(yt), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(np.asarray(dx), _to_nhwc(xt.grad), rtol=1e-12, atol=1e-12)
        for k, g in grads.items():
            g_t = pt[k].grad.permute(2, 3, 1, 0) if k == "W" else pt[k].grad
            np.testing.assert_allclose(np.asarray(g), g_t.numpy(), rtol=1e-12, atol=1e-12)


def test_residual_block_adds_gradients_where_the_paths_meet():
    """y = x + f(x): dx is dy (the shortcut) plus f's input gradient; concat splits dy by width."""
    body = (L.dense(4), L.tanh())
    block = L.residual(body)
    params, state, x = _setup(block, (4,), 3)
    y, _, res = block.forward(params, state, x)
    dy = draws.normal(jax.random.PRNGKey(0), y.shape)
    grads, dx = block.backward(params, res, dy)
    yb, _, rb = L.sequence_forward(body, params[0], state[0], x)
    gb, dxb = L.sequence_backward(body, params[0], rb, dy)
    chex.assert_trees_all_close(y, yb + x)
    chex.assert_trees_all_close((grads[0], dx), (gb, dxb + dy))
    cat = L.fan_in_concat(body, ())
    y, _, res = cat.forward(params, state, x)
    assert y.shape == (3, 8) and cat.out_shape((4,)) == (8,)
    dy = draws.normal(jax.random.PRNGKey(1), y.shape)
    _, dx = cat.backward(params, res, dy)
    chex.assert_trees_all_close(dx, L.sequence_backward(body, params[0], rb, dy[:, :4])[1] + dy[:, 4:])


@pytest.mark.parametrize(
    "make,shape,match",
    [
        (lambda: L.dense(3), (28, 28, 1), "flatten"),
        (lambda: L.conv2d(3), (10,), "height, width, channels"),
        (lambda: L.max_pool(2), (5, 4, 1), "divisible"),
        (lambda: L.conv2d(3, 4), None, "odd kernel"),
        (lambda: L.conv2d(3, 3, "fft"), None, "impl"),
        (lambda: L.conv2d(3, 3, weight_grad="fft"), None, "weight_grad"),
        (lambda: L.Activation("swish"), None, "unknown activation"),
        (lambda: L.dense(3, "xavier"), (4,), "unknown init"),
        (lambda: L.conv2d(3, 3, stride=0), None, "stride must be an integer >= 1"),
        (lambda: L.conv2d(3, 3, padding="full"), None, "padding must be one of"),
        (lambda: L.conv2d(3, 5, padding="valid"), (4, 4, 1), "at least 5 x 5"),
        (lambda: L.avg_pool(2), (5, 4, 1), "divisible"),
        (lambda: L.global_avg_pool(), (10,), "height, width, channels"),
        (lambda: L.residual((L.conv2d(4, 3, stride=2),)), (6, 6, 4), "shortcut that matches"),
        (lambda: L.residual((L.conv2d(8, 3),)), (6, 6, 4), "add needs branch outputs of one shape"),
        (lambda: L.fan_in_concat((L.flatten(),), ()), (2, 2, 1), "differ in the last axis only"),
        (lambda: L.residual((L.dense(3), "relu")), None, "not a layer"),
        (lambda: L.Branches(((L.relu(),),)), None, "at least 2 branches"),
        (lambda: L.Branches(((), ()), "mul"), None, "merge must be one of"),
        (lambda: L.residual((L.dense(3),)), (2, 2, 1), "branch 0: .*flatten"),
    ],
)
def test_bad_layers_give_clear_errors(make, shape, match):
    with pytest.raises(ValueError, match=match):
        make().init(jax.random.PRNGKey(0), shape)


def test_bench_conv_parts_time_what_pytorch_computes():
    """The bench's ``conv_parts`` rows compare jaxgd's conv forward, weight gradient and input
    gradient with PyTorch's on the same tensors: the three give the same numbers."""
    torch = require_peer("torch")
    from jaxgd.experiments.torch_peers import conv_parts

    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(3), 3)
    xs, dys = draws.normal(k1, (2, 4, 6, 6, 3)), draws.normal(k2, (2, 4, 6, 6, 5))
    W = draws.normal(k3, (3, 3, 3, 5))
    ops = conv_parts(xs, dys, W)
    nhwc = lambda t: np.asarray(t.permute(0, 2, 3, 1))
    with torch.no_grad():
        np.testing.assert_allclose(
            nhwc(ops["forward"](1)),
            L.conv2d(5).forward({"W": W, "b": jnp.zeros(5)}, {}, xs[1])[0],
            rtol=1e-4,
            atol=1e-4,
        )
        np.testing.assert_allclose(
            np.asarray(ops["weight gradient"](1).permute(2, 3, 1, 0)),
            L.conv_weight_grad(xs[1], dys[1], W.shape),
            rtol=1e-4,
            atol=1e-4,
        )
        np.testing.assert_allclose(nhwc(ops["input gradient"](1)), L.conv_input_grad(dys[1], W), rtol=1e-4, atol=1e-4)
