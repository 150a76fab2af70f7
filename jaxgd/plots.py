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
