"""The experiments' figures (matplotlib), drawn from their results' layouts: each takes a results dict (or
plain arrays) and a path, and writes one PNG."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure


def _subplots(nrows=1, ncols=1, figsize=None, **kw):
    """``plt.subplots`` without pyplot: a bare Figure renders to a file with no GUI backend, and
    importing this module leaves the user's matplotlib backend as it was."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kw)


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")  # long tick labels (the bench rows) stay whole
    return path


def matrix_chain(res, path):
    runs = res["runs"]
    fig, axes = _subplots(1, len(runs), figsize=(3.2 * len(runs), 3), squeeze=False)
    for ax, r in zip(axes[0], runs):
        ax.semilogy(np.asarray(r["loss_hand"], float), lw=3, alpha=0.5, label="by hand")
        ax.semilogy(np.asarray(r["loss_autodiff"], float), "k--", lw=1, label="jax.grad")
        ax.set_title(f"K = {r['K']}  (max |diff| {r['max_abs_loss_diff']:.1e})", fontsize=9)
        ax.set_xlabel("iteration")
    axes[0][0].set_ylabel("L = ||w||²")
    axes[0][0].legend()
    return _save(fig, path)


def _image(x):
    """An image for imshow: min-max scaled to [0, 1]; a single channel drawn grey."""
    x = np.asarray(x, float)
    x = (x - x.min()) / max(x.max() - x.min(), 1e-12)
    return x[..., 0] if x.shape[-1] == 1 else x


def samples_per_class(x, y, classes, path, per_class=8, seed=0):
    """A grid: one row per class, ``per_class`` random training images (NHWC)."""
    rng = np.random.default_rng(seed)
    fig, axes = _subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.95))
    axes = np.atleast_2d(axes)
    for c, name in enumerate(classes):
        idx = rng.choice(np.flatnonzero(y == c), per_class, replace=False)
        for j, i in enumerate(idx):
            axes[c, j].imshow(_image(x[i]), cmap="gray")
            axes[c, j].axis("off")
        axes[c, 0].set_title(name, fontsize=8, loc="left")
    return _save(fig, path)


def _floats(v):
    return np.asarray([float(a) for a in v])


def grid_curves(configs: dict, path):
    """Train/val loss and accuracy per epoch, one line per config (label -> history dict)."""
    fig, axes = _subplots(2, 2, figsize=(12, 8), sharex=True)
    for i, (name, h) in enumerate(configs.items()):
        style = "-" if i < 10 else "--"
        for ax, key in zip(axes.flat, ("train_loss", "val_loss", "train_acc", "val_acc")):
            ax.plot(np.arange(1, len(h[key]) + 1), _floats(h[key]), style, lw=1, label=name)
    for ax, key in zip(axes.flat, ("train loss", "validation loss", "train accuracy", "validation accuracy")):
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylim(top=min(1.0, axes[0, 0].get_ylim()[1]))
    axes[0, 1].set_ylim(top=min(1.0, axes[0, 1].get_ylim()[1]))
    for ax in axes[1]:
        ax.set_xlabel("epoch")
    axes[0, 1].legend(fontsize=6, ncol=2, loc="upper right")
    return _save(fig, path)


def overlay(h_a, h_b, title, path, labels=("hand backprop + hand SGD", "jax.grad + optax")):
    """Two histories' loss and accuracy curves on top of each other."""
    fig, axes = _subplots(1, 2, figsize=(10, 3.6))
    for h, lab, st in ((h_a, labels[0], dict(lw=4, alpha=0.4)), (h_b, labels[1], dict(lw=1, ls="--", color="k"))):
        for ax, kind in zip(axes, ("loss", "acc")):
            for split, _mark in (("train", ""), ("val", "")):
                y = _floats(h[f"{split}_{kind}"])
                ax.plot(np.arange(1, len(y) + 1), y, label=f"{split}: {lab}", **st)
    axes[0].set_title(f"{title}: loss")
    axes[1].set_title("accuracy")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    return _save(fig, path)


def confusion(cm, classes, path):
    cm = np.asarray(cm)
    fig, ax = _subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, cm[i, j], ha="center", va="center", color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, rotation=45 if len(classes) > 2 else 0)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    return _save(fig, path)


def misclassified(images, y_true, y_pred, classes, path, cols=8):
    n = len(images)
    rows = max(1, -(-n // cols))
    fig, axes = _subplots(rows, cols, figsize=(cols * 1.3, rows * 1.5), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img, t, p in zip(axes.flat, images, y_true, y_pred):
        ax.imshow(np.clip(img, 0, 1).squeeze(), cmap="gray")
        ax.set_title(f"true {classes[t]}\npred {classes[p]}", fontsize=7)
    return _save(fig, path)


def templates(W_images, classes, title, path):
    """Rows of W as class-template images, min-max scaled per class."""
    fig, axes = _subplots(1, len(classes), figsize=(1.3 * len(classes), 1.7))
    for ax, img, name in zip(axes, W_images, classes):
        ax.imshow(_image(img))
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def curves(h, title, path):
    """Each metric pair train_*/val_* of a history in its own panel."""
    kinds = sorted({k.split("_", 1)[1] for k in h})
    fig, axes = _subplots(1, len(kinds), figsize=(4 * len(kinds), 3.2), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        for split in ("train", "val"):
            if f"{split}_{kind}" in h:
                y = _floats(h[f"{split}_{kind}"])
                ax.plot(np.arange(1, len(y) + 1), y, label=split)
        ax.set_title(kind)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def accuracy_curves(curves: dict, title, path):
    """Accuracy vs epoch, one line per named curve (e.g. train and test)."""
    fig, ax = _subplots(figsize=(4.5, 3.2))
    for name, y in curves.items():
        y = _floats(y)
        ax.plot(np.arange(1, len(y) + 1), y, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def compare_curves(runs: dict, title, path):
    """Test accuracy (solid) and train accuracy (dashed) of several runs, and their test loss."""
    fig, (ax, axl) = _subplots(1, 2, figsize=(9, 3.4))
    for i, (name, r) in enumerate(runs.items()):
        c = f"C{i}"
        ep = np.arange(1, len(r["test_acc"]) + 1)
        ax.plot(ep, _floats(r["test_acc"]), color=c, label=f"{name} test")
        ax.plot(ep, _floats(r["train_acc"]), color=c, ls="--", lw=1, label=f"{name} train")
        axl.plot(ep, _floats(r["test_loss"]), color=c, label=name)
    ax.set(xlabel="epoch", ylabel="accuracy")
    axl.set(xlabel="epoch", ylabel="test loss")
    for a in (ax, axl):
        a.grid(alpha=0.3)
    ax.legend(fontsize=7)
    axl.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def step_loss_pairs(pairs: dict, title, path):
    """Per-step training loss of two runs per model (``loss_hand``, ``loss_autodiff``), one panel each."""
    n = len(pairs)
    cols = min(3, n)
    rows = -(-n // cols)
    fig, axes = _subplots(rows, cols, figsize=(3.6 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (name, p) in zip(axes.flat, pairs.items()):
        ax.plot(_floats(p["loss_hand"]), lw=3, alpha=0.4, label="hand backprop")
        ax.plot(_floats(p["loss_autodiff"]), "k--", lw=0.8, label="jax.grad")
        ax.set_yscale("log")
        ax.set_title(f"{name}  (max |diff| {p['max_abs_diff']:.1e})", fontsize=8)
        ax.set_xlabel("step", fontsize=7)
        ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def bench(res, path):
    """Median time of every benchmark row (min-max as error bars), one colour per section."""
    rows = [(sec, r) for sec, s in res["sections"].items() for r in s["rows"]]
    fig, ax = _subplots(figsize=(9, 0.32 * len(rows) + 1.2))
    secs = list(res["sections"])
    for i, (sec, r) in enumerate(rows):
        m = r["median_s"]
        ax.barh(i, m, xerr=[[m - r["min_s"]], [r["max_s"] - m]], color=f"C{secs.index(sec)}", capsize=2)
    ax.set_yticks(range(len(rows)), [r["name"] for _, r in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel("seconds (median of repeats, min-max bars; log scale)")
    ax.set_title(f"jaxgd benchmarks on {res['device_name']}", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def seed_curves(res, path):
    """CIFAR-2 improved protocol: validation accuracy per learning rate (the choice, seed 0) and
    per seed for the chosen one, best epochs marked."""
    fig, (a, b) = _subplots(1, 2, figsize=(10, 3.6))
    ch = res["choice"]
    va = np.asarray(ch["val_acc"], float)
    for i, lr in enumerate(ch["lrs"]):
        a.plot(np.arange(1, len(va) + 1), va[:, i], label=f"lr {lr:g}" + (" (chosen)" if lr == ch["chosen_lr"] else ""))
    a.set_title("choosing lr on validation (seed 0)", fontsize=9)
    for r in res["runs"]:
        v = np.asarray(r["val_curve"], float)
        (line,) = b.plot(np.arange(1, len(v) + 1), v, label=f"seed {r['seed']}: test {r['test_acc']:.4f}")
        b.plot([r["best_epoch"]], [r["val_acc"]], "o", color=line.get_color())
    b.set_title(
        f"lr {ch['chosen_lr']:g} over seeds: test {res['test_acc_mean']:.4f} +- {res['test_acc_std']:.4f}", fontsize=9
    )
    for ax in (a, b):
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.set_ylim(0.75, 0.95)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _seed_curves(res, path, curve, ylabel, loss_label, label, title, best=False):
    """One panel per dataset of ``res["datasets"]``, one line per run: its ``curve`` per epoch
    (solid, with the best epoch marked if ``best``) and its training loss (dashed, right axis)."""
    sets = res["datasets"]
    fig, axes = _subplots(1, len(sets), figsize=(5 * len(sets), 3.6), squeeze=False)
    for ax, (ds, r) in zip(axes[0], sets.items()):
        loss_ax = ax.twinx()
        for run in r["runs"]:
            v, tl = np.asarray(run[curve], float), np.asarray(run["train_loss_curve"], float)
            e = np.arange(1, len(v) + 1)
            (line,) = ax.plot(e, v, label=label(run))
            if best:
                ax.plot([run["best_epoch"]], [run["val_acc"]], "o", color=line.get_color())
            loss_ax.plot(e, tl, "--", color=line.get_color(), alpha=0.6)
        ax.set_title(title(ds, r), fontsize=9)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        loss_ax.set_ylabel(loss_label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    return _save(fig, path)


def resnet_curves(res, path):
    """ResNet: validation accuracy (solid) and training loss (dashed, right axis) per epoch, one
    panel per dataset, one line per seed with its best epoch marked."""
    from jaxgd.models import resnet_depth

    depth = resnet_depth(res["config"]["widths"], res["config"]["blocks"])
    return _best_by_val_curves(res, path, f"ResNet-{depth}")


def vit_curves(res, path):
    """ViT: validation accuracy (solid) and training loss (dashed, right axis) per epoch, one panel per
    dataset, one line per seed with its best epoch marked."""
    return _best_by_val_curves(res, path, "ViT")


def _best_by_val_curves(res, path, model_name):
    """Each seed's validation accuracy and training loss per epoch, its best epoch by validation marked."""
    return _seed_curves(
        res,
        path,
        "val_curve",
        "validation accuracy (solid)",
        "training loss (dashed)",
        lambda run: f"seed {run['seed']}: test {run['test_acc']:.4f}",
        lambda ds, r: f"{ds}: {model_name}, {len(r['runs'])} seed(s)",
        best=True,
    )


def airbench_curves(res, path):
    """airbench94 by hand: training accuracy (solid) and loss (dashed, right axis) per epoch of each
    run (the training batches' own, in training mode, augmented), one panel per dataset."""
    return _seed_curves(
        res,
        path,
        "train_acc_curve",
        "training accuracy (solid)",
        "training loss, smoothed labels (dashed)",
        lambda run: f"seed {run['seed']}: test {run['test_acc_tta']:.4f} (TTA)",
        lambda ds, r: f"{ds}: airbench94's network, {r['total_steps']} steps",
    )


def zoo_seeds(res, path):
    """MNIST improved protocol: each model's test accuracy per seed (dots) and their mean (bar),
    one panel per family, with the family's target (dashed)."""
    groups = {}
    for _name, r in res["models"].items():
        groups.setdefault(r["family"], []).append(r)
    fig, axes = _subplots(1, len(groups), figsize=(3.4 * len(groups), 3.4), squeeze=False)
    for ax, (family, rs) in zip(axes[0], groups.items()):
        for i, r in enumerate(rs):
            accs = [x["test_acc"] for x in r["runs"]]
            ax.bar(i, r["test_acc_mean"], width=0.6, color="C0", alpha=0.35)
            ax.plot([i] * len(accs), accs, "o", color="C0", ms=4)
            ax.text(i, r["test_acc_mean"], f"{r['test_acc_mean']:.4f}", ha="center", va="bottom", fontsize=8)
        lo = min(x["test_acc"] for r in rs for x in r["runs"])
        if rs[0]["target"] is not None:
            ax.axhline(rs[0]["target"], color="C3", ls="--", lw=1, label=f"target {rs[0]['target']}")
            lo = min(lo, rs[0]["target"])
            ax.legend(fontsize=7, loc="lower right")
        ax.set_ylim(lo - 0.004, 1.0 if family != "softmax" else lo + 0.02)
        ax.set_xticks(range(len(rs)), [r["variant"] for r in rs])
        ax.set_title(f"{family} ({rs[0]['epochs']} epochs, {len(rs[0]['runs'])} seeds)", fontsize=9)
        ax.set_ylabel("test accuracy")
        ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)
