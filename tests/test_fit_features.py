"""fit's best-epoch selection, patience, seeds as a dimension, and on-device augmentation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxgd import augment, models, optim, train

MODEL = models.mlp((12, 16, 3), "relu")


def _data(n=192, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12)).astype(np.float32)
    y = (x[:, :3].argmax(1)).astype(np.int32)
    return x, y


def test_select_returns_the_best_epochs_parameters():
    (x, y), (xv, yv) = _data(), _data(96, 1)
    params, _ = MODEL.init(jax.random.PRNGKey(0))
    hp = optim.sgd_hyperparams(0.5, 0.9)  # a large step: validation loss goes up and down
    kw = dict(hparams=hp, epochs=12, batch_size=32)
    last, _, h = train.fit(MODEL, params, (x, y), (xv, yv), **kw)
    best, _, hb = train.fit(MODEL, params, (x, y), (xv, yv), monitor=train.Monitor(select="val_loss"), **kw)
    e = hb.best_epoch
    assert e == int(np.nanargmin(h.val_loss)) + 1  # the same run: same curves
    assert e < 12 and h.val_loss[-1] > h.val_loss[e - 1]  # this run's best epoch is not its last
    np.testing.assert_array_equal(hb.val_loss, h.val_loss)
    loss, _ = train.make_eval(MODEL)(best, None, jnp.asarray(xv), jnp.asarray(yv))
    assert float(loss) == pytest.approx(float(h.val_loss[e - 1]), rel=1e-6)  # the best epoch's parameters...
    assert not np.allclose(np.asarray(best[0]["W"]), np.asarray(last[0]["W"]))  # ... not the last epoch's


def test_patience_stops_a_config_while_the_others_go_on():
    (x, y), (xv, yv) = _data(), _data(96, 1)
    params, _ = MODEL.init(jax.random.PRNGKey(0))
    hp = optim.sgd_hyperparams([3.0, 0.05], [0.9, 0.0])  # the first one thrashes and stops early
    p, _, h = train.fit(
        MODEL,
        train.stack_params([params] * 2),
        (x, y),
        (xv, yv),
        hparams=hp,
        epochs=15,
        batch_size=32,
        monitor=train.Monitor(select="val_acc", patience=2),
    )
    stop = h.stopped_at[0]
    assert stop is not None and stop < 15 and (h.stopped_at[1] is None or h.stopped_at[1] > stop)
    va = np.asarray(h.val_acc)
    assert np.all(np.isnan(va[stop:, 0])) and np.all(np.isfinite(va[:stop, 0])) and np.isfinite(va[stop, 1])
    # the stopped config returned its best epoch's parameters; the other kept training
    alone, _, ha = train.fit(
        MODEL,
        params,
        (x, y),
        (xv, yv),
        hparams=optim.sgd_hyperparams(3.0, 0.9),
        epochs=stop,
        batch_size=32,
        monitor=train.Monitor(select="val_acc"),
    )
    assert ha.best_epoch == h.best_epoch[0]
    np.testing.assert_allclose(np.asarray(train.unstack_params(p, 0)[0]["W"]), np.asarray(alone[0]["W"]), rtol=1e-5)


def test_seeds_as_a_dimension_equal_each_seed_alone():
    _x, _y = _data()
    inits = [MODEL.init(jax.random.PRNGKey(s))[0] for s in (0, 1, 2)]
    splits = [_data(192, s) for s in (0, 1, 2)]  # one data set per seed, stacked on the configs axis
    xs, ys = np.stack([a for a, _ in splits]), np.stack([b for _, b in splits])
    hp = optim.sgd_hyperparams([0.1] * 3, 0.9)
    for mode in ("map", "vmap"):
        p, _, h = train.fit(
            MODEL,
            train.stack_params(inits),
            (xs, ys),
            (xs, ys),
            hparams=hp,
            epochs=3,
            batch_size=32,
            seed=[0, 1, 2],
            configs=train.Configs(mode, per_config_data=True),
        )
        for i in range(3):
            q, _, g = train.fit(
                MODEL,
                inits[i],
                splits[i],
                splits[i],
                hparams=optim.sgd_hyperparams(0.1, 0.9),
                epochs=3,
                batch_size=32,
                seed=i,
            )
            np.testing.assert_allclose(
                np.asarray(train.unstack_params(p, i)[0]["W"]), np.asarray(q[0]["W"]), rtol=1e-5, atol=1e-6
            )
            np.testing.assert_allclose(np.asarray(h.val_acc)[:, i], g.val_acc)
    assert len({float(np.asarray(h.val_loss)[-1, i]) for i in range(3)}) == 3


def test_step_losses_are_the_epochs_own_and_change_nothing_else():
    """Monitor(step_losses=True): every minibatch's loss, whose mean is the epoch's training loss,
    from the same program: parameters and curves equal a run without it bit for bit."""
    (x, y), (xv, yv) = _data(), _data(96, 1)
    params, _ = MODEL.init(jax.random.PRNGKey(0))
    for hp in (optim.sgd_hyperparams(0.1, 0.9), optim.sgd_hyperparams([0.1, 0.3], 0.9)):
        p0 = params if np.ndim(hp.lr) == 0 else train.stack_params([params, params])
        kw = dict(hparams=hp, epochs=3, batch_size=32)
        p, _, h = train.fit(MODEL, p0, (x, y), (xv, yv), monitor=train.Monitor(step_losses=True), **kw)
        q, _, g = train.fit(MODEL, p0, (x, y), (xv, yv), **kw)
        assert g.step_loss is None and len(h.step_loss) == 3
        steps = np.asarray(h.step_loss)  # epochs x (configs x) 6 minibatches
        assert steps.shape == ((3, 6) if np.ndim(hp.lr) == 0 else (3, 2, 6))
        np.testing.assert_allclose(steps.mean(-1), h.train_loss, rtol=1e-6)
        np.testing.assert_array_equal(h.train_loss, g.train_loss)
        np.testing.assert_array_equal(h.val_loss, g.val_loss)
        for a, b in zip(jax.tree_util.tree_leaves(p), jax.tree_util.tree_leaves(q)):
            np.testing.assert_array_equal(a, b)
        assert not np.allclose(steps[0, ..., 0], steps[0, ..., -1])  # the loss moves within the epoch


def test_flip_crop_is_seeded_and_stays_inside_the_padded_image():
    x = np.arange(2 * 32 * 32 * 3, dtype=np.float32).reshape(2, 32, 32, 3) + 1.0  # no zero pixel
    f = augment.flip_crop((32, 32, 3), pad=4)
    a, b = f(jax.random.PRNGKey(0), x), f(jax.random.PRNGKey(0), x)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(np.asarray(f(jax.random.PRNGKey(1), x)), np.asarray(a))
    np.testing.assert_array_equal(augment.hflip(augment.hflip(x)), x)
    flat = f(jax.random.PRNGKey(0), x.reshape(2, -1))
    np.testing.assert_array_equal(np.asarray(flat).reshape(a.shape), a)  # flattened images alike
    for key in range(20):  # every crop is a window of the padded image: at most 4 rows/cols of zeros
        out = np.asarray(augment.flip_crop((32, 32, 3), pad=4, flip=False)(jax.random.PRNGKey(key), x))
        for img in out:
            zero_rows = np.all(img == 0, axis=(1, 2))
            zero_cols = np.all(img == 0, axis=(0, 2))
            assert zero_rows.sum() <= 4 and zero_cols.sum() <= 4
            inner = img[~zero_rows][:, ~zero_cols]
            assert inner.size and np.all(inner > 0)


def test_evaluation_never_augments():
    x, y = _data()
    params, _ = MODEL.init(jax.random.PRNGKey(0))
    calls = []

    def spy(key, xb):
        calls.append(xb.shape)
        return xb * 0.0  # trains on nothing; evaluation must still see the real data

    p, _, h = train.fit(
        MODEL,
        params,
        (x, y),
        (x, y),
        hparams=optim.sgd_hyperparams(0.1),
        epochs=2,
        batch_size=32,
        step=train.Step(augment=spy),
        monitor=train.Monitor(eval_train=True),
    )
    assert calls and all(s == (32, 12) for s in calls)  # traced once, on training minibatches only
    _loss, acc = train.make_eval(MODEL)(p, None, jnp.asarray(x), jnp.asarray(y))
    assert float(acc) == pytest.approx(h.val_acc[-1]) and float(acc) == pytest.approx(h.train_acc[-1])


@pytest.mark.parametrize(
    "kw,match",
    [
        (lambda: {"monitor": train.Monitor(select="val_f1")}, "select"),
        (lambda: {"monitor": train.Monitor(patience=3)}, "patience"),
        (lambda: {"monitor": train.Monitor(select="val_acc", patience=0)}, "patience"),
        (lambda: {"monitor": train.Monitor(select="val_acc")}, "validation set"),
        (lambda: {"seed": [0, 1]}, "per config"),
        (lambda: {"configs": train.Configs(per_config_data=True)}, "per config"),
    ],
)
def test_bad_selection_arguments(kw, match):
    """Each is refused with its reason, whether the typed object (Monitor, Configs) or fit sees it."""
    x, y = _data()
    params, _ = MODEL.init(jax.random.PRNGKey(0))
    val = None if match == "validation set" else (x, y)
    with pytest.raises(ValueError, match=match):
        train.fit(MODEL, params, (x, y), val, hparams=optim.sgd_hyperparams(0.1), epochs=1, batch_size=32, **kw())
