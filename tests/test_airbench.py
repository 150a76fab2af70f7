"""airbench94's network and recipe by hand (experiments.airbench): each new piece checked as every
layer is, the whole network's hand gradient against jax.grad, the recipe step for step against the
pinned PyTorch airbench (where torch is installed), and a short run on a slice."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_peer, require_real_data

from jaxgd import checker, draws, gradcheck, losses, models, schedules
from jaxgd import layers as L
from jaxgd.experiments import airbench


@pytest.mark.parametrize(
    "layer,shape",
    [
        (L.conv2d(5, 3, init="dirac", bias=False), (6, 6, 3)),
        (L.conv2d(4, 2, padding="valid"), (5, 5, 3)),
        (L.max_pool(2, crop=True), (5, 7, 2)),
        (L.scale(1 / 9), (5,)),
        (L.dense(3, bias=False), (4,)),
        (L.batch_norm(0.4, 1e-12), (3, 3, 2)),
    ],
)
def test_the_new_layers_pass_the_check(layer, shape):
    report = checker.check(layer, shape)
    assert report.passed, str(report)


def test_dirac_init_passes_the_first_channels_through_and_max_pool_crops_like_torch():
    conv = L.conv2d(5, 3, init="dirac", bias=False)
    p, _, _ = conv.init(jax.random.PRNGKey(0), (6, 6, 3))
    assert set(p) == {"W"}
    x = draws.normal(jax.random.PRNGKey(1), (2, 6, 6, 3))
    y = conv.forward(p, {}, x)[0]
    np.testing.assert_allclose(y[..., :3], x, atol=1e-6)  # filters 0..2 are the identity
    assert float(jnp.abs(y[..., 3:]).max()) > 0.1  # the rest keep PyTorch's random init
    pool = L.max_pool(2, crop=True)
    y, _, res = pool.forward({}, {}, jnp.arange(2 * 5 * 7 * 1.0).reshape(2, 5, 7, 1))
    assert y.shape == (2, 2, 3, 1)
    dx = pool.backward({}, res, jnp.ones_like(y))[1]
    assert dx.shape == (2, 5, 7, 1) and float(dx[:, 4:].sum() + dx[:, :, 6:].sum()) == 0.0
    with pytest.raises(ValueError, match="crop=True"):
        L.max_pool(2).out_shape((5, 7, 1))


def test_smoothed_summed_cross_entropy_and_its_derivative():
    ce = losses.CrossEntropy(0.2, "sum")
    with jax.enable_x64(True):
        z = draws.normal(jax.random.PRNGKey(0), (6, 4), jnp.float64)
        y = jnp.array([0, 1, 3, 2, 1, 0])
        np.testing.assert_allclose(ce.grad(z, y), jax.grad(ce)(z, y), rtol=1e-13, atol=1e-15)
        q = 0.8 * jax.nn.one_hot(y, 4) + 0.05
        assert float(ce(z, y)) == pytest.approx(float(-jnp.sum(q * jax.nn.log_softmax(z))), rel=1e-13)
        mean = losses.CrossEntropy(0.2)
        assert float(mean(z, y)) == pytest.approx(float(ce(z, y)) / 6, rel=1e-13)
    torch = require_peer("torch")
    t = torch.tensor(np.asarray(z, np.float64), requires_grad=True)
    ref = torch.nn.CrossEntropyLoss(label_smoothing=0.2, reduction="sum")(t, torch.tensor(np.asarray(y)))
    ref.backward()
    with jax.enable_x64(True):
        zz = jnp.asarray(np.asarray(z, np.float64))
        assert float(ce(zz, y)) == pytest.approx(ref.item(), rel=1e-13)
        np.testing.assert_allclose(ce.grad(zz, y), t.grad.numpy(), rtol=1e-12, atol=1e-15)
    for bad in (lambda: losses.CrossEntropy(1.0), lambda: losses.CrossEntropy(0.1, "max")):
        with pytest.raises(ValueError):
            bad()


def test_triangle_schedule_is_airbenchs():
    total = 476
    with jax.enable_x64(True):
        f = np.asarray(schedules.triangle(total, int(0.23 * total), 0.2, 0.07).factor(jnp.arange(total + 1)))
    np.testing.assert_allclose(
        f, np.interp(np.arange(total + 1), [0, int(0.23 * total), total], [0.2, 1, 0.07]), rtol=1e-12
    )
    with pytest.raises(ValueError, match="peak_step"):
        schedules.triangle(10, 10)


def test_whitening_makes_the_patches_covariance_the_identity():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 8, 8, 3)) @ rng.normal(size=(3, 3))  # correlated channels
    x[:, 1:] += 0.7 * x[:, :-1]  # and correlated neighbours
    W = airbench.whiten(x, 2, eps=0.0)
    assert W.shape == (2, 2, 3, 24)
    with jax.enable_x64(True):
        y = np.asarray(
            L.conv2d(24, 2, padding="valid").forward({"W": jnp.asarray(W), "b": jnp.zeros(24)}, {}, jnp.asarray(x))[0]
        ).reshape(-1, 24)
    cov = y.T @ y / len(y)  # about 0, as the whitening's covariance
    np.testing.assert_allclose(cov[:12, :12], np.eye(12), atol=1e-8)
    np.testing.assert_allclose(cov[12:, :12], -np.eye(12), atol=1e-8)  # the negated copies


def test_the_networks_hand_gradient_is_jax_grads_in_float64():
    model = models.airbench((4, 8, 8), 10)
    params, state = model.init(jax.random.PRNGKey(0))
    x = np.array(draws.normal(jax.random.PRNGKey(1), (6, 32, 32, 3)))
    x[:, :8, :8] = 1.5  # a saturated corner: ties in every max pool of a dirac-initialised network
    params[0] = {"W": jnp.asarray(airbench.whiten(x), jnp.float32), "b": jnp.zeros(24)}
    got = airbench.hand_vs_autodiff(model, params, state, x, np.arange(6) % 10)
    assert got["leaves"] == 21 and got["max_rel"] < 1e-12, got
    report = checker.check(model, batch=4, modes=("train",), dtypes=("float64",))
    # every leaf agrees with jax.vjp and finite differences; jax.test_util.check_vjp, which steps
    # along one random direction through all the network's max pools at once, is not asserted
    assert all(r["verdict"] != "wrong" for r in report.rows), str(report)


def test_the_other_conv_arithmetic_gives_the_same_gradient():
    """``models.airbench(conv_impl="lax", weight_grad="taps")``, which the bench's ``airbench_epoch``
    times beside the default: the same network, its hand gradient equal to the default's in float64."""
    with jax.enable_x64(True):
        base, other = (
            models.airbench((4, 8, 8), 10),
            models.airbench((4, 8, 8), 10, conv_impl="lax", weight_grad="taps"),
        )
        assert [str(a) for a in base.layers] != [str(b) for b in other.layers]
        params, state = base.init(jax.random.PRNGKey(0), jnp.float64)
        x = draws.normal(jax.random.PRNGKey(1), (4, 32, 32, 3), jnp.float64)
        y = jnp.arange(4) % 10
        (la, _, ga, _), (lb, _, gb, _) = (m.grad(params, state, x, y, None) for m in (base, other))
        assert float(la) == pytest.approx(float(lb), rel=1e-12)
        for a, b in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
            np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


def _small(**kw):
    return airbench.AirbenchConfig.make(
        {"widths": (4, 8, 8), "batch_size": 16, "epochs": 1.5, "whiten_bias_epochs": 1, **kw}
    )


def test_the_optimizer_freezes_what_airbench_freezes():
    model = models.airbench((4, 8, 8), 10)
    params, _ = model.init(jax.random.PRNGKey(0))
    roles = airbench.roles(model, params)
    assert roles[0] == {"W": "frozen", "b": "whiten_bias"} and roles[4] == {"scale": "frozen", "shift": "norm_bias"}
    opt = airbench.make_optimizer(roles)
    hp, total = airbench.hyperparams(_small(), 4)
    assert total == 6
    grads = jax.tree_util.tree_map(jnp.ones_like, params)
    new, _ = opt.update(grads, opt.init(params), params, hp._replace(whiten_on=jnp.asarray(False)))
    for r, p, q in zip(
        jax.tree_util.tree_leaves(roles), jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(new)
    ):
        assert bool(jnp.all(p == q)) == (r in ("frozen", "whiten_bias")), r


def test_the_recipe_step_for_step_equals_airbenchs_pytorch():
    torch = require_peer("torch")
    from jaxgd.experiments import airbench_torch as AT

    cfg = _small()
    model = models.airbench(cfg.widths, 10)
    x = np.asarray(draws.normal(jax.random.PRNGKey(1), (64, 32, 32, 3)))
    y = np.arange(64) % 10
    params, state, _ = airbench.init_run(model, cfg, 0, x)
    steps = 4
    hp, total = airbench.hyperparams(cfg, steps)
    batches = [np.random.default_rng(i).permutation(64)[:16] for i in range(total)]
    net = AT.make_net(cfg.widths, 10, dtype=torch.float64)
    AT.load_jaxgd(net, params, state)
    trainer = AT.Trainer(net, cfg.batch_size, total)
    with jax.enable_x64(True):
        p64, s64 = gradcheck.cast((params, state), jnp.float64)
        opt = airbench.make_optimizer(airbench.roles(model, p64))
        step = jax.jit(airbench.make_lookahead_step(model, opt, total))
        carry = (p64, opt.init(p64), s64, jax.tree_util.tree_map(jnp.copy, (p64, s64)), jnp.zeros((), jnp.int32))
        for i, b in enumerate(batches):
            e = i // steps
            if i % steps == 0:
                trainer.start_epoch(e, cfg.whiten_bias_epochs)
            carry, _ = step(
                carry,
                jnp.asarray(x[b], jnp.float64),
                jnp.asarray(y[b]),
                hp._replace(whiten_on=jnp.asarray(e < cfg.whiten_bias_epochs)),
            )
            assert trainer.step(AT.nchw(x[b], torch.float64), torch.tensor(y[b]))
        assert not trainer.step(AT.nchw(x[:16], torch.float64), torch.tensor(y[:16]))  # all steps taken
        mine = AT.make_net(cfg.widths, 10, dtype=torch.float64)
        AT.load_jaxgd(mine, carry[0], carry[2])
    theirs, ours = net.state_dict(), mine.state_dict()
    for k in theirs:
        if theirs[k].dtype == torch.float64:  # torch keeps the schedules in float32: ~1e-7 relative
            np.testing.assert_allclose(
                ours[k].numpy(), theirs[k].numpy(), rtol=2e-6, atol=2e-6 * float(theirs[k].abs().max()), err_msg=k
            )
    assert not np.allclose(ours["0.bias"].numpy(), 0)  # the whitening bias trained, then froze


def test_a_short_run_on_a_slice_learns_and_reports(tmp_path):
    require_real_data("cifar2")
    res = airbench.run(
        {
            "datasets": ["cifar2"],
            "cifar2_seeds": [0, 1],
            "widths": [8, 16, 16],
            "train_size": 1024,
            "batch_size": 256,
            "epochs": 2.5,
            "whiten_images": 500,
            "together": 1,
            # mirror only: level 2's six forward passes per image were a third of this test's
            # time; test_whitening_augmentation_and_tta_equal_airbenchs_pytorch checks level 2
            "tta_level": 1,
        },
        out=False,
        verbose=False,
    )
    r = res["datasets"]["cifar2"]
    assert r["total_steps"] == 10 and [x["steps"] for x in r["runs"]] == [10, 10]
    assert r["hand_vs_autodiff"]["max_rel"] < 1e-10
    accs = [x["test_acc_tta"] for x in r["runs"]]
    assert min(accs) > 0.7 and accs[0] != accs[1]  # well above chance (0.5); the seeds differ
    assert airbench.summary(res)[0]["seeds"] == 2
    part = airbench.about(res, tmp_path) + "".join(airbench.notes(res, tmp_path)) + airbench.headline(res, tmp_path)[0]
    assert "airbench94" in part and f"{r['test_acc_mean']:.4f}" in part
    from jaxgd.experiments import figures

    assert figures.airbench_curves(res, tmp_path / "curves.png").stat().st_size > 0


def test_bad_configs_are_refused():
    from jaxgd.experiments.config import ConfigError

    for bad in ({"widths": (8, 8)}, {"cifar2_seeds": ()}, {"momentum": 1.0}, {"tta_level": 3}):
        with pytest.raises((ConfigError, ValueError)):
            airbench.AirbenchConfig.make({"datasets": ["cifar2"], **bad})


def test_whitening_augmentation_and_tta_equal_airbenchs_pytorch():
    """The parts of the recipe the step test does not reach, against the pinned airbench copy in
    float64: the whitening filters, the reflect padding, the crops and the test-time augmentation."""
    torch = require_peer("torch")
    from jaxgd.experiments import airbench_torch as AT

    rng = np.random.default_rng(0)
    x = rng.normal(size=(24, 32, 32, 3)) @ rng.normal(size=(3, 3))  # correlated channels
    # whitening: the same filters, each up to the sign eigh gives its eigenvector
    net = AT.make_net((4, 8, 8), 10, dtype=torch.float64)
    AT.init_whitening_conv(net[0], AT.nchw(x, torch.float64))
    theirs = net[0].weight.detach().numpy()  # OIHW
    ours = airbench.whiten(x).transpose(3, 2, 0, 1)
    signs = np.sign(np.sum(ours * theirs, axis=(1, 2, 3)))
    assert np.all(signs != 0)
    # airbench's get_patches casts to float32, so its covariance and filters carry float32 rounding
    np.testing.assert_allclose(ours * signs[:, None, None, None], theirs, rtol=0, atol=1e-3 * np.abs(theirs).max())
    # reflect padding and crops: airbench's batch_crop, each image's shift read back from its output
    pad = 2
    with jax.enable_x64(True):
        padded = np.asarray(airbench.reflect_pad(jnp.asarray(x), pad))
        tpad = torch.nn.functional.pad(AT.nchw(x, torch.float64), (pad,) * 4, "reflect")
        np.testing.assert_array_equal(padded, tpad.permute(0, 2, 3, 1).numpy())
        torch.manual_seed(0)
        cropped = AT.batch_crop(tpad, 32).permute(0, 2, 3, 1).numpy()
        windows = {
            (a, b): np.asarray(airbench.crop(jnp.asarray(padded), jnp.tile(jnp.array([a, b]), (24, 1)), pad))
            for a in range(2 * pad + 1)
            for b in range(2 * pad + 1)
        }
        offsets = [next(o for o, w in windows.items() if np.array_equal(w[i], cropped[i])) for i in range(24)]
        assert len(set(offsets)) > 5  # the shifts vary, and each is one of jaxgd's offsets
        np.testing.assert_array_equal(
            np.asarray(airbench.crop(jnp.asarray(padded), jnp.asarray(offsets), pad)), cropped
        )
    # test-time augmentation, levels 0, 1 and 2, on the same network
    model = models.airbench((4, 8, 8), 10)
    params, state, _ = airbench.init_run(model, _small(), 0, x)
    with jax.enable_x64(True):
        p64, s64 = gradcheck.cast((params, state), jnp.float64)
        AT.load_jaxgd(net, p64, s64)
        for level in (0, 1, 2):
            ours = np.asarray(airbench.tta_logits(model, p64, s64, jnp.asarray(x), level))
            theirs = AT.infer(net, AT.nchw(x, torch.float64), level).numpy()
            np.testing.assert_allclose(ours, theirs, rtol=1e-9, atol=1e-9 * np.abs(theirs).max(), err_msg=level)
