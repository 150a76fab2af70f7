"""The hand SGD's Nesterov, dampening, weight-decay mask and schedules against their twins:
optax where optax has one, torch.optim.SGD + torch.optim.lr_scheduler where torch is installed
(float64, a few hundred steps: parameters within 1e-12 relative)."""

import jax
import numpy as np
import pytest
from conftest import require_peer

from jaxgd import draws, models, optim, schedules, train

MODEL = models.mlp((6, 5, 3), "relu")
STEPS = 300


def _params64():
    return jax.tree_util.tree_map(lambda p: np.asarray(p, np.float64), MODEL.init(jax.random.PRNGKey(0))[0])


def _grads(params, steps=STEPS):
    rng = np.random.default_rng(0)
    return [jax.tree_util.tree_map(lambda p: rng.normal(size=p.shape), params) for _ in range(steps)]


def _run(opt, hp, params, grads):
    with jax.enable_x64(True):
        upd = jax.jit(opt.update)
        p, s = params, opt.init(params)
        for g in grads:
            p, s = upd(g, s, p, hp)
        return jax.tree_util.tree_map(np.asarray, p)


def _close(a, b, rtol=1e-12):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-13)


CASES = [  # (nesterov, wd mask, momentum, weight decay, schedule)
    (False, None, 0.9, 1e-3, None),
    (True, None, 0.9, 1e-3, None),
    (True, optim.weights_only, 0.8, 1e-2, None),
    (False, optim.weights_only, 0.9, 1e-2, "step"),
    (True, None, 0.9, 0.0, "cosine"),
    (False, None, 0.5, 1e-3, "warmup_cosine"),
]


def _schedule(name):
    return {
        None: None,
        "step": schedules.step_decay(50, 0.5),
        "cosine": schedules.cosine(STEPS, 0.1),
        "warmup_cosine": schedules.warmup_cosine(30, 250, 0.05),
        "one_cycle": schedules.one_cycle(STEPS, 0.3, 25.0, 1e4),
    }[name]


@pytest.mark.parametrize("nesterov,mask,mom,wd,sched", CASES)
def test_hand_sgd_equals_optax(nesterov, mask, mom, wd, sched):
    params = _params64()
    hp = optim.sgd_hyperparams(0.05, mom, wd, schedule=_schedule(sched))
    grads = _grads(params)
    hand = _run(optim.sgd(nesterov, mask), hp, params, grads)
    twin = _run(optim.optax_sgd(nesterov, mask, hp.schedule), hp, params, grads)
    _close(hand, twin)
    if mask is not None:  # the mask did something: biases decay without it
        other = _run(optim.sgd(nesterov, None), hp, params, grads)
        assert not np.allclose(other[0]["b"], hand[0]["b"])


def _torch_run(torch, params, grads, lr, mom, wd, damp, nesterov, mask, sched):
    leaves = [(l[k], k) for l in params for k in ("W", "b")]
    tp = [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a, _ in leaves]
    if mask is None:
        groups = [{"params": tp}]
    else:
        groups = [
            {"params": [t for t, (_, k) in zip(tp, leaves) if k == "W"]},
            {"params": [t for t, (_, k) in zip(tp, leaves) if k != "W"], "weight_decay": 0.0},
        ]
    opt = torch.optim.SGD(groups, lr=lr, momentum=mom, weight_decay=wd, dampening=damp, nesterov=nesterov)
    S = torch.optim.lr_scheduler
    scheduler = {
        None: None,
        "step": lambda: S.StepLR(opt, 50, 0.5),
        # within T_max (PyTorch's cosine then rises again; ours and optax's stay flat)
        "cosine": lambda: S.CosineAnnealingLR(opt, STEPS, eta_min=0.1 * lr),
        "one_cycle": lambda: S.OneCycleLR(
            opt,
            max_lr=lr,
            total_steps=STEPS,
            pct_start=0.3,
            anneal_strategy="linear",
            cycle_momentum=False,
            div_factor=25.0,
            final_div_factor=1e4,
        ),
    }[sched]
    scheduler = scheduler() if scheduler else None
    for g in grads:
        for t, a in zip(tp, [l[k] for l in g for k in ("W", "b")]):
            t.grad = torch.tensor(a)
        opt.step()
        if scheduler is not None:
            scheduler.step()
    out, i = [], 0
    for layer in params:
        out.append({k: tp[i + j].detach().numpy() for j, k in enumerate(("W", "b"))} if layer else {})
        i += 2 if layer else 0
    return out


@pytest.mark.parametrize(
    "nesterov,mask,mom,wd,damp,sched",
    [
        (False, None, 0.9, 1e-3, 0.3, None),  # dampening, with PyTorch's first-step rule
        (False, None, 0.0, 1e-3, 0.5, None),  # dampening without momentum: PyTorch keeps no buffer
        (True, optim.weights_only, 0.9, 1e-2, 0.0, "step"),
        (False, optim.weights_only, 0.9, 1e-3, 0.1, "cosine"),
        (True, None, 0.9, 1e-3, 0.0, "one_cycle"),
    ],
)
def test_hand_sgd_equals_torch(nesterov, mask, mom, wd, damp, sched):
    torch = require_peer("torch")
    params = [l for l in _params64() if l]
    grads = _grads(params)
    hp = optim.sgd_hyperparams(0.05, mom, wd, damp, schedule=_schedule(sched))
    hand = _run(optim.sgd(nesterov, mask), hp, params, grads)
    _close(hand, _torch_run(torch, params, grads, 0.05, mom, wd, damp, nesterov, mask, sched))


def test_schedule_values_equal_optax_and_torch_formulas():
    import optax

    t = np.arange(400)
    pairs = [
        (schedules.step_decay(30, 0.7), optax.exponential_decay(1.0, 30, 0.7, staircase=True)),
        (schedules.cosine(250, 0.2), optax.cosine_decay_schedule(1.0, 250, 0.2)),
        (schedules.warmup_cosine(40, 300, 0.1), optax.warmup_cosine_decay_schedule(0.0, 1.0, 40, 300, 0.1)),
    ]
    with jax.enable_x64(True):
        for ours, theirs in pairs:
            np.testing.assert_allclose(np.asarray(ours.factor(t)), np.asarray(theirs(t)), rtol=1e-12, atol=1e-15)
        f = np.asarray(schedules.one_cycle(100, 0.3, 25.0, 1e4).factor(t[:100]))
    assert f[0] == pytest.approx(1 / 25) and f[29] == pytest.approx(1.0) and f[99] == pytest.approx(1 / 25e4)
    assert np.all(np.diff(f[:30]) > 0) and np.all(np.diff(f[29:]) < 0)


def test_schedules_map_over_configs_like_lr():
    """Two configs with different schedule arguments in one program == each trained alone."""
    x = np.asarray(draws.normal(jax.random.PRNGKey(1), (128, 6)), np.float32)
    y = np.arange(128) % 3
    params, _ = MODEL.init(jax.random.PRNGKey(0))
    common = dict(epochs=3, batch_size=16)
    many = optim.sgd_hyperparams([0.1, 0.05], 0.9, 0.0, schedule=schedules.cosine([24, 10], [0.0, 0.5]))
    for mode in ("map", "vmap"):
        p, _, h = train.fit(
            MODEL,
            train.stack_params([params] * 2),
            (x, y),
            hparams=many,
            configs=train.Configs(mode),
            step=train.Step(optim.sgd(nesterov=True)),
            **common,
        )
        for i, (lr, T, fin) in enumerate([(0.1, 24, 0.0), (0.05, 10, 0.5)]):
            one = optim.sgd_hyperparams(lr, 0.9, 0.0, schedule=schedules.cosine(T, fin))
            q, _, g = train.fit(MODEL, params, (x, y), hparams=one, step=train.Step(optim.sgd(nesterov=True)), **common)
            _close(train.unstack_params(p, i), q, rtol=1e-5)
            np.testing.assert_allclose(np.asarray(h.train_loss)[:, i], g.train_loss, rtol=1e-5)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: optim.sgd_hyperparams(0.1, 0.9, 0.0, dampening=1.5), "dampening"),
        (lambda: schedules.cosine(0), "total_steps"),
        (lambda: schedules.step_decay(10, 0.0), "gamma"),
        (lambda: schedules.warmup_cosine(100, 50), "warmup_steps"),
        (lambda: schedules.one_cycle(10, 0.05), "pct_start"),
        (lambda: schedules.by_name("linear"), "unknown schedule"),
        (lambda: optim.sgd_hyperparams(0.1, schedule="cosine"), "Schedule"),
        (lambda: optim.optax_sgd(schedule=schedules.one_cycle(100)), "one_cycle"),
    ],
)
def test_bad_optimizer_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_nesterov_needs_momentum_and_no_dampening():
    x = np.ones((32, 6), np.float32)
    y = np.zeros(32, np.int32)
    params, _ = MODEL.init(jax.random.PRNGKey(0))
    for hp in (optim.sgd_hyperparams(0.1, 0.0), optim.sgd_hyperparams(0.1, 0.9, 0.0, 0.2)):
        with pytest.raises(ValueError, match="Nesterov"):
            train.fit(
                MODEL, params, (x, y), hparams=hp, epochs=1, batch_size=16, step=train.Step(optim.sgd(nesterov=True))
            )


def test_parameter_groups_update_each_group_as_its_own_optimizer_and_leave_frozen_ones_alone():
    """optim.partition: each group's leaves step exactly as that group's optimizer would step them
    alone, with that group's hyperparameters; a group mapped to None never changes and has no state."""
    key = iter(jax.random.split(jax.random.PRNGKey(0), 16))
    params = [
        {"W": draws.normal(next(key), (3, 2)), "b": draws.normal(next(key), (2,))},
        {"scale": draws.normal(next(key), (2,)), "shift": draws.normal(next(key), (2,))},
    ]
    labels = [{"W": "weights", "b": "biases"}, {"scale": "frozen", "shift": "biases"}]
    sgd, nesterov = optim.sgd(), optim.sgd(nesterov=True)
    opt = optim.partition({"weights": nesterov, "biases": sgd, "frozen": None}, labels)
    hp = {"weights": optim.sgd_hyperparams(0.1, 0.9, 0.01), "biases": optim.sgd_hyperparams(0.5, 0.5)}
    state = opt.init(params)
    assert set(state) == {"weights", "biases"}
    w_state, b_state = nesterov.init([params[0]["W"]]), sgd.init([params[0]["b"], params[1]["shift"]])
    for _ in range(3):
        grads = jax.tree_util.tree_map(lambda p: draws.normal(next(key), p.shape), params)
        new, state = opt.update(grads, state, params, hp)
        (w,), w_state = nesterov.update([grads[0]["W"]], w_state, [params[0]["W"]], hp["weights"])
        (b, shift), b_state = sgd.update(
            [grads[0]["b"], grads[1]["shift"]], b_state, [params[0]["b"], params[1]["shift"]], hp["biases"]
        )
        np.testing.assert_array_equal(new[0]["W"], w)
        np.testing.assert_array_equal(new[0]["b"], b)
        np.testing.assert_array_equal(new[1]["shift"], shift)
        np.testing.assert_array_equal(new[1]["scale"], params[1]["scale"])  # frozen
        params = new
    with pytest.raises(ValueError, match="Nesterov"):
        opt.check({"weights": optim.sgd_hyperparams(0.1, 0.0), "biases": hp["biases"]})
