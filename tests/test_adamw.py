"""The hand AdamW against optax.adamw and torch.optim.AdamW (float64, 300 steps of random gradients: parameters
within 1e-12 relative), with a weight-decay mask, schedules and configs as one program; and fit trains with it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import require_peer
from test_optim import _close, _grads, _params64, _run, _schedule

from jaxgd import models, optim, train

CASES = [  # (mask, lr, b1, b2, eps, weight decay, schedule)
    (None, 1e-3, 0.9, 0.999, 1e-8, 1e-2, None),
    (optim.weights_only, 3e-3, 0.8, 0.99, 1e-6, 0.1, None),
    (None, 1e-2, 0.9, 0.95, 1e-8, 0.05, "cosine"),
    (optim.weights_only, 1e-3, 0.9, 0.999, 1e-8, 1e-2, "warmup_cosine"),
]


@pytest.mark.parametrize("mask,lr,b1,b2,eps,wd,sched", CASES)
def test_hand_adamw_equals_optax(mask, lr, b1, b2, eps, wd, sched):
    params = _params64()
    hp = optim.adamw_hyperparams(lr, b1, b2, eps, wd, schedule=_schedule(sched))
    grads = _grads(params)
    hand = _run(optim.adamw(mask), hp, params, grads)
    _close(hand, _run(optim.optax_adamw(mask, hp.schedule), hp, params, grads))
    if mask is not None:  # the mask did something
        assert not np.allclose(_run(optim.adamw(None), hp, params, grads)[0]["b"], hand[0]["b"])


@pytest.mark.parametrize("mask,lr,b1,b2,eps,wd,sched", CASES[:2] + [(None, 1e-2, 0.9, 0.95, 1e-8, 0.05, "step")])
def test_hand_adamw_equals_torch(mask, lr, b1, b2, eps, wd, sched):
    torch = require_peer("torch")
    params = [l for l in _params64() if l]
    grads = _grads(params)
    hp = optim.adamw_hyperparams(lr, b1, b2, eps, wd, schedule=_schedule(sched))
    hand = _run(optim.adamw(mask), hp, params, grads)

    keys = [(i, k) for i in range(len(params)) for k in ("W", "b")]
    tp = {ik: torch.tensor(params[ik[0]][ik[1]], requires_grad=True) for ik in keys}
    decay = [t for (i, k), t in tp.items() if mask is None or k == "W"]
    groups = [{"params": decay}] + (
        [{"params": [tp[i, "b"] for i in range(len(params))], "weight_decay": 0.0}] * (mask is not None)
    )
    opt = torch.optim.AdamW(groups, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 50, 0.5) if sched == "step" else None
    for g in grads:
        for (i, k), t in tp.items():
            t.grad = torch.tensor(g[i][k])
        opt.step()
        if scheduler is not None:
            scheduler.step()
    _close(hand, [{k: tp[i, k].detach().numpy() for k in ("W", "b")} for i in range(len(params))])


def test_configs_as_one_program_equal_one_at_a_time():
    params = _params64()
    grads = _grads(params, 50)
    lrs, wds = [1e-3, 3e-3, 1e-2], [0.0, 0.01, 0.1]
    opt = optim.adamw()
    with jax.enable_x64(True):
        stacked = jax.tree_util.tree_map(lambda p: np.stack([p] * 3), params)
        hp = optim.adamw_hyperparams(lrs, weight_decay=wds)
        upd = jax.jit(jax.vmap(opt.update, in_axes=(None, 0, 0, 0)))
        p, s = stacked, jax.vmap(opt.init)(stacked)
        for g in grads:
            p, s = upd(g, s, p, hp)
    for c in range(3):
        one = _run(opt, optim.adamw_hyperparams(lrs[c], weight_decay=wds[c]), params, grads)
        _close(jax.tree_util.tree_map(lambda x: x[c], p), one)


def test_fit_trains_with_adamw_and_the_optax_twin_agrees():
    r = np.random.default_rng(0)
    x = jnp.asarray(r.standard_normal((256, 8)), jnp.float32)
    y = jnp.asarray(np.argmax(np.asarray(x) @ r.standard_normal((8, 3)), 1))
    model = models.mlp((8, 16, 3), "relu")
    params, _ = model.init(jax.random.PRNGKey(0))
    hp = optim.adamw_hyperparams(3e-3, weight_decay=0.01)
    out = {}
    for name in ("hand", "optax"):
        p, _, hist = train.fit(
            model, params, (x, y), hparams=hp, epochs=3, batch_size=32, step=train.Step(optimizer=name)
        )
        out[name] = p
        assert hist.train_loss[-1] < hist.train_loss[0]
    _close(out["hand"], out["optax"], rtol=1e-4)


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: optim.adamw_hyperparams(b2=1.0), "b2 must be in"),
        (lambda: optim.adamw_hyperparams(eps=0.0), "eps must be > 0"),
        (lambda: optim.adamw_hyperparams(lr=[1e-3, 2e-3], weight_decay=[0.1, 0.2, 0.3]), "1-D of one length"),
        (lambda: optim.adamw().check(optim.sgd_hyperparams(0.1)), "adamw_hyperparams"),
        (lambda: optim.sgd().check(optim.adamw_hyperparams()), "sgd_hyperparams"),
        (lambda: optim.get_optimizer("hand", nesterov=True, hparams=optim.adamw_hyperparams()), "Nesterov"),
    ],
)
def test_bad_adamw_settings(make, match):
    with pytest.raises(ValueError, match=match):
        make()
