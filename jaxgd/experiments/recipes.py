"""The improved protocols' recipe and the harness of training seeds as one program: the update
(Nesterov SGD, weight decay on the weights only), the schedule (warm-up then cosine, as a fraction
of the steps), each run's best epoch by validation, the seeds' splits stacked, each seed's test
accuracy read once at its best epoch, and the hand gradient against ``jax.grad`` in float64."""

from __future__ import annotations

import time

import jax
import numpy as np

from jaxgd import models, optim, schedules, train, xla


def improved_step(augmentation=None) -> train.Step:
    """The improved protocols' update: Nesterov SGD with weight decay on the weights only (not
    biases or batch-norm parameters), training minibatches transformed by ``augmentation``."""
    return train.Step(optimizer=optim.sgd(nesterov=True, wd_mask=optim.weights_only), augment=augmentation)


BEST_BY_VAL = train.Monitor(select="val_acc")  # the improved protocols return each run's best epoch by validation
PER_SEED_DATA = train.Configs(per_config_data=True)  # one config per seed, each with its own split


def best_by_val(hist) -> tuple[list[float], int]:
    """Each config's validation accuracy at its best epoch (``History.best_epoch``, which
    ``BEST_BY_VAL`` chose; NaN for a config that never had a finite one, e.g. diverged at once), and
    the index of the config whose is highest (the first of equals)."""
    va = np.asarray(hist.val_acc, float)
    best = [float(va[e - 1, i]) if e else float("nan") for i, e in enumerate(hist.best_epoch)]
    if np.all(np.isnan(best)):
        raise ValueError("no config had a finite validation accuracy: every one diverged")
    return best, int(np.nanargmax(best))


def improved_schedule(fraction, epochs, n_train, batch_size):
    """The improved protocols' schedule: a linear warm-up over ``fraction`` of the ``epochs`` epochs'
    steps (``n_train // batch_size`` each, as ``fit`` drops the last partial batch), then a cosine to 0."""
    steps = epochs * (n_train // batch_size)
    return schedules.warmup_cosine(int(fraction * steps), steps, 0.0)


def stack_splits(splits, part):
    """``(x, y)`` of split ``part`` ("train" or "val") of each dataset in ``splits``, stacked on a
    leading seeds axis (``fit(configs=Configs(per_config_data=True))``)."""
    return tuple(np.stack([getattr(d, part)[i] for d in splits]) for i in (0, 1))


def seed_runs(model, params, state, hist, splits, seeds, train_curve):
    """The runs of a fit that trained one config per seed (each on its own split of ``splits``):
    per seed its best epoch, the validation accuracy there, the test accuracy (read once, on the same
    test images normalised with that seed's training statistics), the validation curve and the
    ``train_curve`` ("train_acc" or "train_loss") curve; with the test accuracies' mean and standard
    deviation (ddof 1)."""
    evaluate = xla.jit(train.make_eval(model))
    val_acc, curve, runs = np.asarray(hist.val_acc, float), np.asarray(getattr(hist, train_curve)), []
    for i, s in enumerate(seeds):
        _, acc = evaluate(*train.unstack_params((params, state), i), splits[i].test.x, splits[i].test.y)
        e = hist.best_epoch[i]
        runs.append(
            {
                "seed": s,
                "best_epoch": e,
                "val_acc": float(val_acc[e - 1, i]),
                "test_acc": float(acc),
                "val_curve": val_acc[:, i].tolist(),
                f"{train_curve}_curve": curve[:, i].tolist(),
            }
        )
    tests = np.array([r["test_acc"] for r in runs])
    return runs, float(tests.mean()), float(tests.std(ddof=1)) if len(tests) > 1 else 0.0


def seeds_record(dataset, model, inits, splits, seeds, epochs, check, fitted, t0) -> dict:
    """What a dataset trained over seeds as one program records (the ResNet's and the ViT's): the model, the
    protocol's numbers, the hand-vs-``jax.grad`` ``check``, ``fitted`` (``fit_seeds``'s ``(runs, mean, std,
    History)``) and the training time since ``t0``."""
    runs, mean, std, h = fitted
    return {
        "dataset": dataset,
        "layers": model.describe(),
        "n_params": models.count_params(inits[0][0]),
        "train_flops_per_image": model.train_flops(1),
        "epochs": epochs,
        "seeds": list(seeds),
        "n_train": len(splits[0].train.y),
        "hand_vs_autodiff": check,
        "runs": runs,
        "test_acc_mean": mean,
        "test_acc_std": std,
        "train_time_s": time.time() - t0,
        "epoch_time_s": h.epoch_time,
        "compile_time_s": h.compile_time,
        "diverged_at_epoch": h.diverged_at,
    }


def hand_vs_autodiff(model, params, state, x, y) -> dict:
    """The hand training gradient (``model.grad``) against ``jax.grad`` of the same loss, in
    float64 on the images ``x``: per leaf ``max |hand - jax.grad| / max |jax.grad|``, the
    denominator at least ``checker.ZERO_FLOOR`` of the largest gradient (a conv bias right before
    batch norm has gradient 0 on paper)."""
    from jaxgd import checker, gradcheck, losses

    loss_fn = losses.get_loss(model.loss)[0]

    def both(p, s, x, y):  # one compiled program: both gradients, the same dropout key
        key = jax.random.PRNGKey(0)
        return model.grad(p, s, x, y, key)[2], jax.grad(lambda p: loss_fn(model.apply(p, s, x, True, key)[0], y))(p)

    with jax.enable_x64(True):
        p, s, x = gradcheck.host_cast((params, state, x), np.float64)
        hand, true = jax.device_get(jax.jit(both)(p, s, x, np.asarray(y)))
    h, t = jax.tree_util.tree_leaves(hand), jax.tree_util.tree_leaves(true)
    top = max(float(np.max(np.abs(a))) for a in t)
    rel = [float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), checker.ZERO_FLOOR * top) for a, b in zip(h, t)]
    return {"dtype": "float64", "images": int(x.shape[0]), "leaves": len(rel), "max_rel": max(rel)}


def _improved_hparams(cfg, lrs, schedule):
    return optim.sgd_hyperparams(lrs, cfg.momentum, cfg.weight_decay, schedule=schedule)


def fit_seeds(
    model, inits, splits, seeds, cfg, lr, epochs, augmentation, show, train_curve, stacked=None, hparams=None, step=None
):
    """The improved protocol at every seed as one program: seed ``seeds[i]``'s initial ``(params,
    state)`` (``inits[i]``) trained on its own split ``splits[i]`` (stacked on a seeds axis:
    ``stacked``, else ``stack_splits``) for ``epochs`` with learning rate ``lr`` and ``cfg``'s
    momentum, weight decay, warm-up and batch size (``improved_step`` with ``augmentation``,
    ``improved_schedule``), each run's best epoch by validation, under the progress callback
    ``show``. Another update: ``hparams(cfg, lrs, schedule)`` builds its hyperparameters and ``step``
    is its ``train.Step`` (the ViT's AdamW). Returns ``seed_runs``'s ``(runs, mean, std)`` and the
    ``History``."""
    train_xy, val_xy = stacked or (stack_splits(splits, "train"), stack_splits(splits, "val"))
    schedule = improved_schedule(cfg.warmup, epochs, train_xy[1].shape[-1], cfg.batch_size)
    hp = (hparams or _improved_hparams)(cfg, [lr] * len(seeds), schedule)
    params0, state0 = train.stack_params(inits)  # (params, state) per seed, stacked in one program
    p, st, h = train.fit(
        model,
        params0,
        train_xy,
        val_xy,
        hparams=hp,
        epochs=epochs,
        batch_size=cfg.batch_size,
        seed=list(seeds),
        configs=PER_SEED_DATA,
        model_state=state0,
        monitor=BEST_BY_VAL,
        step=step or improved_step(augmentation),
        progress=show,
    )
    return (*seed_runs(model, p, st, h, splits, seeds, train_curve), h)
