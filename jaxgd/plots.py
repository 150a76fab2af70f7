"""Matplotlib figures for the experiments. Each takes results (plain dicts/arrays) and a path."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def matrix_chain(res, path):
    runs = res["runs"]
    fig, axes = plt.subplots(1, len(runs), figsize=(3.2 * len(runs), 3), squeeze=False)
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
    fig, axes = plt.subplots(len(classes), per_class, figsize=(per_class * 0.9, len(classes) * 0.95))
    axes = np.atleast_2d(axes)
    for c, name in enumerate(classes):
        idx = rng.choice(np.flatnonzero(y == c), per_class, replace=False)
        for j, i in enumerate(idx):
            axes[c, j].imshow(_image(x[i]), cmap="gray")
            axes[c, j].axis("off")
        axes[c, 0].set_title(name, fontsize=8, loc="left")
    return _save(fig, path)
