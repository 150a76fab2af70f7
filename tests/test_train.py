"""Hand SGD == optax twin (== torch), vmapped configs == alone, hand backprop fit == jax.grad fit."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_peer

from jaxgd import draws, losses, models, optim, train


def _problem(n=256, d=20, k=3, seed=0):
    kx, kw = jax.random.split(jax.random.PRNGKey(seed))
    x = draws.normal(kx, (n, d))
    y = jnp.argmax(x @ draws.normal(kw, (d, k)), -1).astype(jnp.int32)
    return (np.asarray(x), np.asarray(y)), MODEL.init(jax.random.PRNGKey(seed + 1))[0]


MODEL = models.mlp((20, 16, 3), "relu")


def _grads_seq(params, steps=5, seed=0):
    keys = jax.random.split(jax.random.PRNGKey(seed), steps)
    return [jax.tree_util.tree_map(lambda p, k=k: draws.normal(k, p.shape, p.dtype), params) for k in keys]


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("lr,mom,wd", [(0.1, 0.0, 0.0), (0.05, 0.9, 0.01), (0.01, 0.99, 0.001)])
def test_hand_sgd_equals_optax(lr, mom, wd, jit):
    with jax.enable_x64(True):
        _, params = _problem()
        params = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), params)
        hp = optim.SGDHyperparams(jnp.float64(lr), jnp.float64(mom), jnp.float64(wd))
        results = []
        for opt in (optim.HAND_SGD, optim.optax_sgd()):
            upd = jax.jit(opt.update) if jit else opt.update
            p, s = params, opt.init(params)
            for g in _grads_seq(params):
                p, s = upd(g, s, p, hp)
            results.append(p)
        chex.assert_trees_all_close(*results, rtol=1e-14, atol=1e-15)


def test_first_step_rule_and_formula():
    p = {"W": jnp.array([1.0, -2.0])}
    g = {"W": jnp.array([0.5, 0.5])}
    hp = optim.sgd_hyperparams(0.1, 0.9, 0.01)
    p1, s1 = optim.sgd_update(g, optim.sgd_init(p), p, hp)
    b1 = g["W"] + 0.01 * p["W"]  # first step: b = g + wd p
    np.testing.assert_allclose(s1.momentum["W"], b1, rtol=1e-6)
    np.testing.assert_allclose(p1["W"], p["W"] - 0.1 * b1, rtol=1e-6)
    _p2, s2 = optim.sgd_update(g, s1, p1, hp)
    np.testing.assert_allclose(s2.momentum["W"], 0.9 * b1 + g["W"] + 0.01 * p1["W"], rtol=1e-6)


def test_matches_torch_sgd_in_float64():
    """sgd_hyperparams keeps lr = 0.01 exact in a float64 run (not float32's 0.0099999997...)."""
    torch = require_peer("torch")
    _, params = _problem()
    params = [p for p in params if p]
    tp = [torch.tensor(np.asarray(l[k]), dtype=torch.float64, requires_grad=True) for l in params for k in ("W", "b")]
    opt = torch.optim.SGD(tp, lr=0.01, momentum=0.9, weight_decay=0.001)
    with jax.enable_x64(True):
        p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), params)
        s = optim.sgd_init(p64)
        hp = optim.sgd_hyperparams(0.01, 0.9, 0.001)
        update = jax.jit(optim.sgd_update)
        for g in _grads_seq(p64, steps=200):
            p64, s = update(g, s, p64, hp)
            for t, gl in zip(tp, [l[k] for l in g for k in ("W", "b")]):
                t.grad = torch.tensor(np.asarray(gl))
            opt.step()
        for t, a in zip(tp, [l[k] for l in p64 for k in ("W", "b")]):
            np.testing.assert_allclose(t.detach().numpy(), np.asarray(a), rtol=1e-14, atol=1e-15)


def test_fit_hand_equals_autodiff_and_optax():
    tr, params = _problem()
    hp = optim.sgd_hyperparams(0.05, 0.9, 0.001)
    runs = {}
    for opt, gr in (("hand", "hand"), ("optax", "autodiff"), ("hand", "autodiff"), ("hand", "vjp")):
        p, _, h = train.fit(
            MODEL, params, tr, tr, hparams=hp, epochs=3, batch_size=32, step=train.Step(optimizer=opt, grads=gr)
        )
        runs[opt, gr] = (p, h)
    ref = runs["hand", "hand"][0]
    for _key, (p, _h) in runs.items():
        # float32 under XLA: an ulp or so per step from fused multiply-adds; 24 steps stay within 1e-5
        chex.assert_trees_all_close(p, ref, atol=1e-5, rtol=1e-5)
    assert runs["hand", "hand"][1].train_loss[-1] < runs["hand", "hand"][1].train_loss[0]


@pytest.mark.parametrize("share", ["map", "vmap"])
def test_many_configs_equal_each_alone(share):
    tr, _params = _problem()
    grid = [(0.05, 0.9, 0.001), (0.1, 0.0, 0.0), (0.02, 0.5, 0.01)]
    inits = [MODEL.init(jax.random.PRNGKey(s))[0] for s in range(3)]
    hp = optim.sgd_hyperparams(*zip(*grid))
    ps, _, hs = train.fit(
        MODEL, train.stack_params(inits), tr, tr, hparams=hp, epochs=2, batch_size=32, configs=train.Configs(share)
    )
    for i, (g, p0) in enumerate(zip(grid, inits)):
        p, _, h = train.fit(MODEL, p0, tr, tr, hparams=optim.sgd_hyperparams(*g), epochs=2, batch_size=32)
        chex.assert_trees_all_close(train.unstack_params(ps, i), p, atol=1e-5, rtol=1e-5)
        np.testing.assert_allclose(np.asarray(hs.val_loss)[:, i], h.val_loss, rtol=1e-5)


def _xy():
    x = np.random.default_rng(0).normal(size=(64, 20)).astype(np.float32)
    return x, np.arange(64) % 3


def test_a_trainer_compiles_once_and_trains_as_a_fresh_build():
    """A loop over learning rates that holds one ``train.compile`` value compiles its programs once,
    and each run equals a fresh ``fit(model, ...)``, which builds (and compiles) its own: no hidden
    cache serves it."""
    from jaxgd.compile_cache import CompileClock

    x, y = _xy()
    params, _ = MODEL.init(jax.random.PRNGKey(0))
    step = train.Step(l2=0.01)
    trainer = train.compile(MODEL, 16, hparams=optim.sgd_hyperparams(0.1, 0.9), step=step)
    counts, runs = [], []
    for lr in (0.05, 0.1, 0.05):
        with CompileClock() as clock:
            runs.append(train.fit(trainer, params, (x, y), (x, y), hparams=optim.sgd_hyperparams(lr, 0.9), epochs=2))
        counts.append(clock.compiles)
    assert counts[0] > 0 and counts[1:] == [0, 0], counts
    with CompileClock() as clock:  # a fresh build compiles again, and gives the same numbers
        fresh = train.fit(
            MODEL, params, (x, y), (x, y), hparams=optim.sgd_hyperparams(0.1, 0.9), epochs=2, batch_size=16, step=step
        )
    assert clock.compiles > 0
    chex.assert_trees_all_equal(runs[1][0], fresh[0])
    assert runs[1][2].train_loss == fresh[2].train_loss and runs[0][2].train_loss != runs[1][2].train_loss
    chex.assert_trees_all_equal(runs[0][0], runs[2][0])


class _Scaled:
    """A user's model as fit's docstring allows it: a plain class (hashed by identity) whose
    ``apply`` reads a mutable attribute."""

    loss = MODEL.loss

    def __init__(self, scale):
        self.scale = scale

    def empty_state(self):
        return MODEL.empty_state()

    def apply(self, params, state, x, train, key):
        out, state = MODEL.apply(params, state, x, train, key)
        return self.scale * out, state


def test_a_model_changed_between_fits_trains_the_changed_model():
    """The review's reproduction: fit a model, change an attribute its apply reads, fit again. The
    second fit must train the changed model (equal to a model built with that value), not replay
    the first fit's program."""
    x, y = _xy()
    params, _ = MODEL.init(jax.random.PRNGKey(0))
    kw = dict(hparams=optim.sgd_hyperparams(0.1, 0.9), epochs=2, batch_size=16, step=train.Step(grads="autodiff"))
    model = _Scaled(1.0)
    first = train.fit(model, params, (x, y), **kw)
    model.scale = 3.0
    second = train.fit(model, params, (x, y), **kw)
    built = train.fit(_Scaled(3.0), params, (x, y), **kw)
    assert second[2].train_loss == built[2].train_loss != first[2].train_loss
    chex.assert_trees_all_equal(second[0], built[0])


def test_a_trainer_refuses_a_fit_it_was_not_compiled_for():
    x, y = _xy()
    params, _ = MODEL.init(jax.random.PRNGKey(0))
    trainer = train.compile(MODEL, 16, hparams=optim.sgd_hyperparams(0.1))
    one = dict(hparams=optim.sgd_hyperparams(0.1), epochs=1)
    with pytest.raises(ValueError, match="batch_size=32"):
        train.fit(trainer, params, (x, y), batch_size=32, **one)
    with pytest.raises(ValueError, match="one per config"):
        train.fit(
            trainer, train.stack_params([params] * 2), (x, y), hparams=optim.sgd_hyperparams([0.1, 0.2]), epochs=1
        )
    with pytest.raises(ValueError, match="step="):
        train.fit(trainer, params, (x, y), step=train.Step(l2=0.1), **one)
    with pytest.raises(ValueError, match="needs batch_size"):
        train.fit(MODEL, params, (x, y), **one)
    train.fit(trainer, params, (x, y), batch_size=16, step=train.Step(), **one)  # the same values are fine


def test_divergence_is_marked_and_others_continue():
    tr, params = _problem()
    hp = optim.sgd_hyperparams([0.05, 1e6], [0.9, 0.9], [0.0, 0.0])
    _, _, h = train.fit(MODEL, train.stack_params([params] * 2), tr, tr, hparams=hp, epochs=3, batch_size=32)
    assert h.diverged_at[0] is None and h.diverged_at[1] == 1
    assert np.all(np.isfinite(np.asarray(h.train_loss)[:, 0])) and np.isnan(h.train_loss[-1][1])


def test_the_parts_wired_by_hand_are_fit():
    """make_grad_fn -> make_step -> make_epoch -> share_configs -> run_epochs, wired as the README's
    "fit, taken apart" shows, is fit: the same parameters and curves, bit for bit, for a grid of
    configs (map and vmap), selection by validation, and an augmentation."""
    tr, params = _problem()
    val = (tr[0][:64], tr[1][:64])
    hp = optim.sgd_hyperparams([0.1, 0.05, 0.2], [0.9, 0.0, 0.5], [0.0, 1e-3, 0.0])
    flip = lambda k, xb: jnp.where(jax.random.bernoulli(k, 0.5, (xb.shape[0], 1)), -xb, xb)
    monitor = train.Monitor(select="val_loss")
    for share in ("map", "vmap"):
        ps = train.stack_params([params] * 3)
        p_fit, _, h_fit = train.fit(
            MODEL,
            ps,
            tr,
            val,
            hparams=hp,
            epochs=3,
            batch_size=32,
            seed=4,
            step=train.Step(augment=flip),
            configs=train.Configs(share),
            monitor=monitor,
        )
        step = train.make_step(train.make_grad_fn(MODEL), optim.HAND_SGD, augment=flip)
        epoch, evaluate = train.share_configs(train.make_epoch(step, 32), train.make_eval(MODEL), share)
        carry = (ps, jax.vmap(optim.HAND_SGD.init)(ps), MODEL.empty_state())
        p_hand, _, h_hand = train.run_epochs(
            epoch, evaluate, carry, (*tr, *val), hp, lambda e: train.epoch_key(4, e), 3, n_cfg=3, monitor=monitor
        )
        chex.assert_trees_all_equal(p_hand, p_fit)
        for k in ("train_loss", "train_acc", "val_loss", "val_acc"):
            np.testing.assert_array_equal(getattr(h_hand, k), getattr(h_fit, k))
        assert h_hand.best_epoch == h_fit.best_epoch and len(h_fit.best_epoch) == 3


def test_epoch_compiles_once():
    tr, params = _problem()
    grad_fn = train.make_grad_fn(MODEL, grads="hand")
    epoch = jax.jit(chex.assert_max_traces(train.make_epoch(train.make_step(grad_fn, optim.HAND_SGD), 32), n=1))
    carry = (params, optim.sgd_init(params), MODEL.empty_state())
    x, y = map(jnp.asarray, tr)
    for e in range(3):
        carry, _ = epoch(carry, x, y, optim.sgd_hyperparams(0.1, 0.5, 0.0), jax.random.PRNGKey(e))


@pytest.mark.parametrize(
    "hp,match",
    [
        (([], [], []), "at least one entry"),
        ((0.0, 0.0, 0.0), "learning rate"),
        ((float("nan"), 0.0, 0.0), "learning rate"),
        ((0.1, 1.0, 0.0), "momentum"),
        ((0.1, -0.1, 0.0), "momentum"),
        ((0.1, 0.0, -1e-3), "weight decay"),
        (([0.1, 0.2], [0.0, 0.1, 0.2], 0.0), "one length"),
    ],
)
def test_bad_hyperparameters(hp, match):
    with pytest.raises(ValueError, match=match):
        optim.sgd_hyperparams(*hp)


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"batch_size": 0}, "batch size"),
        ({"epochs": 0}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"epochs": 1.0}, "epochs"),
        ({"seed": 1.5}, "seed"),
        ({"step": train.Step(l2=-0.1)}, "l2"),
        ({"configs": train.Configs(share="vmap")}, "several configs"),
        ({"hparams": optim.SGDHyperparams(-1.0)}, "learning rate"),
        ({"batch_size": 10_000}, "batch size"),
        ({"step": train.Step(optimizer="adam")}, "unknown optimizer"),
        ({"step": train.Step(grads="numeric")}, "grads"),
    ],
)
def test_bad_fit_arguments(kw, match):
    tr, params = _problem()
    args = {"hparams": optim.sgd_hyperparams(0.1), "epochs": 1, "batch_size": 32, **kw}
    with pytest.raises(ValueError, match=match):
        train.fit(MODEL, params, tr, **args)


def test_numpy_integers_are_accepted_and_bad_labels_refused():
    tr, params = _problem()
    hist = train.fit(
        MODEL, params, tr, hparams=optim.sgd_hyperparams(0.1), epochs=np.int64(2), batch_size=np.int64(32)
    )[2]
    assert len(hist.train_loss) == 2 and hist.train_loss[1] < hist.train_loss[0]
    x, y = tr
    # every loss that takes class labels checks them, a CrossEntropy object as well as the name
    smoothed = dataclasses.replace(MODEL, loss=losses.CrossEntropy(0.1))
    for model in (MODEL, smoothed):
        for bad, match in ((np.where(y == 0, 7, y), r"\[0, 3\)"), (y.astype(np.float32), "integer")):
            with pytest.raises(ValueError, match=match):
                train.fit(model, params, (x, bad), hparams=optim.sgd_hyperparams(0.1), epochs=1, batch_size=32)


def test_one_hot_targets_train_like_integer_labels():
    (x, y), params = _problem()
    hp = optim.sgd_hyperparams(0.1, 0.9)
    _, _, h_int = train.fit(MODEL, params, (x, y), hparams=hp, epochs=2, batch_size=32)
    _, _, h_hot = train.fit(MODEL, params, (x, np.eye(3, dtype=np.float32)[y]), hparams=hp, epochs=2, batch_size=32)
    np.testing.assert_allclose(h_hot.train_loss, h_int.train_loss, rtol=1e-6)


def test_fit_never_shuffles_with_a_key_init_gave_a_layer():
    """Epoch e's key and layer i's init key come from separate streams of the same seed: before,
    epoch e shuffled with fold_in(PRNGKey(seed), e), which is layer e's init key."""
    for seed in (0, 1, 7):
        layer_keys = {tuple(np.asarray(jax.random.fold_in(jax.random.PRNGKey(seed), i)).tolist()) for i in range(20)}
        epoch_keys = {tuple(np.asarray(train.epoch_key(seed, e)).tolist()) for e in range(20)}
        assert not layer_keys & epoch_keys and len(epoch_keys) == 20
    # and fit uses those keys: a one-epoch fit is the epoch run with epoch_key(seed, 0)
    tr, params = _problem()
    hp = optim.sgd_hyperparams(0.1, 0.9)
    p_fit = train.fit(MODEL, params, tr, hparams=hp, epochs=1, batch_size=32, seed=3)[0]
    epoch = jax.jit(train.make_epoch(train.make_step(train.make_grad_fn(MODEL), optim.HAND_SGD), 32))
    (p_hand, _, _), _ = epoch(
        (params, optim.HAND_SGD.init(params), MODEL.empty_state()), *tr, hp, train.epoch_key(3, 0)
    )
    chex.assert_trees_all_equal(p_hand, p_fit)


def test_a_diverging_fit_says_so():
    """fit prints nothing, but a run whose loss turns NaN must not end without a word."""
    tr, params = _problem()
    with pytest.warns(train.DivergedWarning, match=r"1 of 1 config\(s\): config 0 \(learning rate 1e\+06\) at epoch"):
        hist = train.fit(MODEL, params, tr, hparams=optim.sgd_hyperparams(1e6), epochs=3, batch_size=32)[2]
    assert hist.diverged_at is not None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", train.DivergedWarning)  # a healthy run: no warning
        train.fit(MODEL, params, tr, hparams=optim.sgd_hyperparams(0.1), epochs=1, batch_size=32)
