"""The model system: the generic reverse pass equals jax.grad, the custom_vjp path and the paper
derivations of backprop.py; the nine MNIST models; fit threads state and keys."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgd import backprop, draws, gradcheck, losses, models, optim, train
from jaxgd import layers as L

N_PARAMS = {("softmax", "plain"): 7_850, ("mlp", "plain"): 235_146, ("cnn", "plain"): 421_642}


def _batch(model, n=6, seed=1):
    kx, ky = jax.random.split(jax.random.PRNGKey(seed))
    x = draws.normal(kx, (n,) + model.in_shape)
    return x, jax.random.randint(ky, (n,), 0, model.shapes()[-1][-1])


def _normwise(a, b):
    """max |a - b| / max |b| over the whole gradient: a model's gradients contain components that are
    0 in exact arithmetic (a bias feeding batch norm) or cancel to near 0, where two exact float64
    formulas differ in the last bits and an elementwise relative error reads that rounding (the
    per-layer tests in test_layers.py judge each backward elementwise)."""
    diff = max(
        float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b))
    )
    return diff / max(float(jnp.max(jnp.abs(v))) for v in jax.tree_util.tree_leaves(b))


@pytest.mark.parametrize("family", models.ZOO_FAMILIES)
@pytest.mark.parametrize("variant", models.ZOO_VARIANTS)
def test_zoo_hand_gradient_equals_autodiff_and_vjp_paths(family, variant):
    """model.grad (hand) == jax.grad (JAX's own derivatives) == jax.grad through the hand layers,
    in float64 to 1e-12 of the largest gradient component, in training mode (dropout masks from one key, batch statistics)."""
    model = models.mnist_zoo(family, variant)
    with jax.enable_x64(True):
        params, state = gradcheck.cast(model.init(jax.random.PRNGKey(0)), jnp.float64)
        x, y = _batch(model)
        x = x.astype(jnp.float64)
        key = jax.random.PRNGKey(7)
        hand = jax.jit(train.make_grad_fn(model, grads="hand"))(params, state, x, y, key)
        for how in ("autodiff", "vjp"):
            other = jax.jit(train.make_grad_fn(model, grads=how))(params, state, x, y, key)
            np.testing.assert_allclose(other[0], hand[0], rtol=1e-12)
            assert _normwise(hand[2], other[2]) <= 1e-12, how
            chex.assert_trees_all_close(other[3], hand[3], rtol=1e-12)  # the same new batch-norm state


@pytest.mark.parametrize("family", models.ZOO_FAMILIES)
@pytest.mark.parametrize("variant", models.ZOO_VARIANTS)
def test_zoo_shapes_and_modes(family, variant):
    model = models.mnist_zoo(family, variant)
    params, state = model.init(jax.random.PRNGKey(0))
    if (family, variant) in N_PARAMS:
        assert models.count_params(params) == N_PARAMS[family, variant]
    x = draws.normal(jax.random.PRNGKey(1), (8, 28, 28, 1))
    out_eval, st_eval = model.apply(params, state, x, False)
    out_tr, st_tr = model.apply(params, state, x, True, jax.random.PRNGKey(3))
    assert out_eval.shape == out_tr.shape == (8, 10)
    chex.assert_trees_all_equal(st_eval, state)  # eval never moves the running statistics
    kinds = [type(l) for l in model.layers]
    assert (variant == "batchnorm") == (L.BatchNorm in kinds)
    assert (variant == "dropout") == (L.Dropout in kinds)
    if variant == "plain":  # no randomness, no statistics: training and eval agree
        chex.assert_trees_all_close(out_tr, out_eval, rtol=1e-6)
    else:
        assert not np.allclose(out_tr, out_eval)
    if variant == "batchnorm":
        assert not np.allclose(st_tr[kinds.index(L.BatchNorm)]["mean"], 0)


def test_conv_forwards_give_the_same_model():
    x, y = _batch(models.mnist_zoo("cnn"), n=4)
    outs = []
    for impl in L.CONV_IMPLS:
        model = models.mnist_zoo("cnn", "plain", impl)
        params, state = model.init(jax.random.PRNGKey(0))
        outs.append(model.grad(params, state, x, y))
    chex.assert_trees_all_close(outs[0][2], outs[1][2], rtol=1e-4, atol=1e-5)


def test_inf265_mlp_recursion_equals_the_generic_pass():
    """backprop.mlp_backward (the delta recursion as INF265 project 1 wrote it) == models.mlp's pass."""
    sizes = (12, 9, 7, 3)
    model = models.mlp(sizes, "tanh")
    with jax.enable_x64(True):
        mlp_params = backprop.init_mlp(jax.random.PRNGKey(0), sizes, dtype=jnp.float64)
        params = [mlp_params[0], {}, mlp_params[1], {}, mlp_params[2]]  # dense - tanh - dense - tanh - dense
        state = model.empty_state()
        x, y = _batch(model)
        x = x.astype(jnp.float64)
        loss, _, g_paper = backprop.mlp_loss_and_grads(mlp_params, x, y, "tanh")
        loss2, _, g_generic, _ = model.grad(params, state, x, y)
        np.testing.assert_allclose(loss, loss2, rtol=1e-14)
        chex.assert_trees_all_close(g_paper, [g for g in g_generic if g], rtol=1e-12, atol=1e-15)


def _compiled_dots(model, grads, x, y):
    """The dots (shape and contraction) of the compiled gradient, in program order."""
    import re

    params, state = model.init(jax.random.PRNGKey(0))
    g = jax.jit(train.make_grad_fn(model, grads=grads))
    txt = g.lower(params, state, x, y, None).compile().as_text()
    return re.findall(r"(f32\[[\d,]*\])\S* dot\(.*?(lhs_contracting_dims=\{\d*\}, rhs_contracting_dims=\{\d*\})", txt)


def test_hand_mlp_gradient_compiles_to_the_program_jax_grad_gives():
    """The INF265 MLP's hand gradient does exactly the matrix products of jax.grad's, no more (no dx
    of the first layer, no transposes): the bench's ``hand/jax.grad MLP`` compares two equal
    programs, so it reads 1.0 up to timing noise."""
    from jaxgd.experiments.cifar2 import MODEL

    x, y = _batch(MODEL, n=64)
    hand = _compiled_dots(MODEL, "hand", x, y)
    dense = sum(isinstance(layer, L.Dense) for layer in MODEL.layers)
    assert len(hand) == 3 * dense - 1  # a forward and a dW per layer, a dx for all but the first
    assert sorted(hand) == sorted(_compiled_dots(MODEL, "autodiff", x, y))


def test_dd2424_closed_form_equals_the_generic_pass():
    model = models.linear_softmax(20, 10)
    with jax.enable_x64(True):
        params, _ = gradcheck.cast(model.init(jax.random.PRNGKey(3)), jnp.float64)
        x, y = _batch(model, n=20)
        x = x.astype(jnp.float64)
        closed = backprop.linear_softmax_grads(params, x, y, 0.1)
        _, _, g, _ = train.make_grad_fn(model, l2=0.1)(params, None, x, y, None)
        chex.assert_trees_all_close(closed, g, rtol=1e-12, atol=1e-15)


def test_train_flops_count_forward_dw_and_dx():
    m = models.mnist_zoo("cnn")
    macs = [28 * 28 * 9 * 32, 14 * 14 * 288 * 64, 3136 * 128, 128 * 10]
    assert [v for v in m.macs() if v] == macs
    # forward 2 macs + dW 2 macs everywhere, dx 2 macs for every layer but the first conv
    assert m.train_flops(3) == 3 * (4 * sum(macs) + 2 * sum(macs[1:]))


def test_a_model_with_batch_norm_needs_its_state():
    model = models.mnist_zoo("mlp", "batchnorm")
    params, _ = model.init(jax.random.PRNGKey(0))
    x, y = _batch(model)
    with pytest.raises(ValueError, match="pass the state"):
        model.apply(params, None, x)
    with pytest.raises(ValueError, match="model_state"):
        train.fit(
            model, params, (np.asarray(x), np.asarray(y)), hparams=optim.sgd_hyperparams(0.1), epochs=1, batch_size=2
        )


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: models.Model((L.dense(3), "relu"), (4,)), "not a layer"),
        (lambda: models.Model((L.dense(3),), (28, 28, 1)), "flatten"),
        (lambda: models.Model((L.dense(3),), (4,), loss="hinge"), "unknown loss"),
        (lambda: models.mnist_zoo("resnet"), "families"),
        (lambda: models.mlp((3,)), "sizes"),
        (lambda: models.mlp((3, 4, 2), ("relu", "tanh")), "one per hidden layer"),
    ],
)
def test_bad_models_give_clear_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_model_input_shape_is_checked():
    model = models.mlp((3, 2))
    params, state = model.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"shape \(batch, 3\)"):
        model.apply(params, state, jnp.ones((4, 5)))


def test_fit_threads_batch_norm_state_and_dropout_keys():
    model = models.mnist_zoo("cnn", "batchnorm")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 28, 28, 1)).astype(np.float32)
    y = rng.integers(0, 10, 64).astype(np.int32)
    params, state = model.init(jax.random.PRNGKey(0))
    _, new_state, h = train.fit(
        model, params, (x, y), hparams=optim.sgd_hyperparams(0.01, 0.9), epochs=2, batch_size=32, model_state=state
    )
    i = [type(l) for l in model.layers].index(L.BatchNorm)
    assert not np.allclose(new_state[i]["mean"], 0) and len(h.train_loss) == 2


@pytest.mark.parametrize("family", models.ZOO_FAMILIES)
def test_a_few_hand_gradient_steps_reduce_the_loss_on_real_mnist(family):
    from conftest import require_real_data

    from jaxgd import data

    require_real_data("mnist")
    d = data.load("mnist", val_size=0, train_size=512, layout="nhwc")
    model = models.mnist_zoo(family, "batchnorm" if family == "cnn" else "dropout")
    params, state = model.init(jax.random.PRNGKey(0))
    evaluate = train.make_eval(model)
    before = float(evaluate(params, state, *map(jnp.asarray, d.train))[0])
    params, state, _ = train.fit(
        model, params, d.train, hparams=optim.sgd_hyperparams(0.05, 0.9), epochs=3, batch_size=64, model_state=state
    )  # grads="hand" by default
    after = float(evaluate(params, state, *map(jnp.asarray, d.train))[0])
    assert after < 0.7 * before, (before, after)


def test_losses_pair_with_their_derivatives():
    y_hat = draws.normal(jax.random.PRNGKey(0), (5, 3))
    for name, (f, df) in losses.LOSSES.items():
        y = (
            jax.random.randint(jax.random.PRNGKey(1), (5,), 0, 3)
            if name == "cross_entropy"
            else draws.normal(jax.random.PRNGKey(1), (5, 3))
        )
        chex.assert_trees_all_close(df(y_hat, y), jax.grad(f)(y_hat, y), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("variant", ["dropout", "batchnorm"])
def test_hand_and_autodiff_training_agree_in_float64(variant):
    """The MNIST zoo's one-epoch comparison shows float32 CNN loss curves drifting apart after a few
    dozen steps; in float64 the same two trainings (same init, batches and dropout masks) stay within
    rounding, so the drift is float32 rounding amplified by training, not a gradient difference."""
    model = models.mnist_zoo("cnn", variant)
    with jax.enable_x64(True):
        params, state = gradcheck.cast(model.init(jax.random.PRNGKey(0)), jnp.float64)
        x, y = _batch(model, n=32 * 30)
        x = x.astype(jnp.float64)
        hp = optim.sgd_hyperparams(0.05, 0.9, 5e-4)
        curves = []
        for how in ("hand", "autodiff"):
            epoch = train.make_epoch(
                train.make_step(train.make_grad_fn(model, grads=how), optim.HAND_SGD), 32, per_step=True
            )
            _, (steps, _) = jax.jit(epoch)((params, optim.sgd_init(params), state), x, y, hp, jax.random.PRNGKey(1))
            curves.append(np.asarray(steps))
        np.testing.assert_allclose(curves[0], curves[1], rtol=1e-12)


def _tiny_resnet(classes=3):
    return models.resnet((4, 6, 8), 1, classes, in_shape=(8, 8, 3))


def test_resnet_shape_and_parameters():
    m = models.resnet()
    assert m.shapes()[-1] == (10,) and models.count_params(m.init(jax.random.PRNGKey(0))[0]) == 78_378
    blocks = [l for l in m.layers if isinstance(l, L.Branches)]
    assert len(blocks) == 3 and blocks[0].branches[1] == ()  # the first block keeps width and size: identity
    assert all(str(b.branches[1][0]) == str(L.conv2d(w, 1, stride=2)) for b, w in zip(blocks[1:], (32, 64)))
    assert len(models.resnet(blocks=3).layers) == len(m.layers) + 12  # ResNet-20: two more blocks per stage
    with pytest.raises(ValueError, match="blocks >= 1"):
        models.resnet(blocks=0)


def test_resnet_hand_gradient_equals_autodiff_and_vjp_paths():
    """Through the residual blocks: the hand reverse pass adds the shortcut's input gradient."""
    model = _tiny_resnet()
    with jax.enable_x64(True):
        params, state = gradcheck.cast(model.init(jax.random.PRNGKey(0)), jnp.float64)
        x, y = _batch(model, n=5)
        x = x.astype(jnp.float64)
        hand = jax.jit(train.make_grad_fn(model, grads="hand"))(params, state, x, y, None)
        for how in ("autodiff", "vjp"):
            other = jax.jit(train.make_grad_fn(model, grads=how))(params, state, x, y, None)
            np.testing.assert_allclose(other[0], hand[0], rtol=1e-12)
            assert _normwise(hand[2], other[2]) <= 1e-12, how
            chex.assert_trees_all_close(other[3], hand[3], rtol=1e-12)


def test_train_flops_count_a_residual_block_as_one_layer():
    m = _tiny_resnet()
    macs = m.macs()
    block = m.layers[3]
    assert isinstance(block, L.Branches)
    # the block's two 3x3 convs, 8 x 8 x 4 -> 4 channels each (the identity shortcut costs nothing)
    assert macs[3] == 2 * 8 * 8 * 9 * 4 * 4


def _matmul_flops(jaxpr) -> int:
    """2 x the multiply-adds of every dot and convolution in ``jaxpr`` (nested programs included)."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            k = math.prod(eqn.invars[0].aval.shape[d] for d in contract)
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * k
        elif eqn.primitive.name == "conv_general_dilated":
            rhs, dn = eqn.invars[1].aval.shape, eqn.params["dimension_numbers"]
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // rhs[dn.rhs_spec[0]]
        for v in eqn.params.values():
            for sub in v if isinstance(v, (tuple, list)) else (v,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    total += _matmul_flops(inner)
    return total


@pytest.mark.parametrize(
    "model",
    [
        models.mlp((6, 5, 3)),
        models.mnist_zoo("cnn", "plain"),
        models.Model(
            (
                L.conv2d(4, 3),
                L.batch_norm(),
                L.relu(),
                L.residual((L.conv2d(4, 3), L.batch_norm(), L.relu(), L.conv2d(4, 3))),
                L.global_avg_pool(),
                L.dense(3),
            ),
            (8, 8, 3),
        ),
    ],
    ids=["mlp", "mnist-cnn", "residual"],
)
def test_train_flops_are_the_products_the_hand_step_computes(model):
    """train_flops, counted from the layer shapes, equals the dots and convolutions of the hand
    training step's own program, counted from that program once dead code is dropped (the first
    layer's dx, which nothing uses). A strided convolution's hand dx also multiplies the zeros it
    dilates dy with, so a strided model's step does more work than train_flops counts."""
    from jax._src.interpreters import partial_eval as pe

    params, state = model.init(jax.random.PRNGKey(0))
    x, y = jnp.ones((2,) + model.in_shape), jnp.zeros((2,), jnp.int32)
    closed = jax.make_jaxpr(lambda p: model.grad(p, state, x, y)[2])(params)
    live, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    assert _matmul_flops(live) == model.train_flops(2)


@pytest.mark.parametrize("share", ["map", "vmap"])
def test_a_resnet_trains_through_fit_as_one_program_per_config(share):
    """fit takes a model with branches unchanged: two learning rates as one program equal each
    trained alone, and the training loss falls."""
    model = _tiny_resnet()
    x, y = _batch(model, n=64)
    xy = (np.asarray(x), np.asarray(y))
    params, state = model.init(jax.random.PRNGKey(0))
    lrs = (0.05, 0.1)
    kw = dict(epochs=2, batch_size=16, step=train.Step(optim.sgd(nesterov=True, wd_mask=optim.weights_only)))
    ps, _, _hs = train.fit(
        model,
        train.stack_params([params] * 2),
        xy,
        xy,
        hparams=optim.sgd_hyperparams(list(lrs), 0.9, 5e-4),
        model_state=train.stack_params([state] * 2),
        configs=train.Configs(share),
        **kw,
    )
    for i, lr in enumerate(lrs):
        p, _, h = train.fit(
            model, params, xy, xy, hparams=optim.sgd_hyperparams(lr, 0.9, 5e-4), model_state=state, **kw
        )
        chex.assert_trees_all_close(train.unstack_params(ps, i), p, atol=1e-5, rtol=1e-5)
        assert h.train_loss[-1] < h.train_loss[0]
