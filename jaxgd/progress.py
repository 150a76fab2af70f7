"""Progress of long runs: tqdm bars on stderr with the latest metrics and an ETA.

Bars are on only where someone watches: when stderr is a terminal (``JAXGD_PROGRESS=1`` forces
them on, ``=0`` off), and never with ``quiet``. They only display: nothing they do reaches a
result. Without bars, ``epoch_logger`` and ``items`` print one line per epoch or item instead
(if asked to).
"""

from __future__ import annotations

import os
import sys

import numpy as np
from tqdm.auto import tqdm


def enabled(quiet=False) -> bool:
    """Whether bars are shown: not ``quiet``, and stderr a terminal unless ``JAXGD_PROGRESS`` says."""
    if quiet:
        return False
    forced = os.environ.get("JAXGD_PROGRESS", "").strip().lower()
    if forced in ("1", "true", "on", "yes"):
        return True
    if forced in ("0", "false", "off", "no"):
        return False
    return sys.stderr.isatty()


def bar(total, desc, quiet=False, leave=True, unit="it"):
    """A tqdm bar on stderr (a disabled one that does nothing when ``enabled(quiet)`` is false).
    ``total`` is a count, or an iterable to wrap (``for s in bar(items, ...)``)."""
    it = None if isinstance(total, int) or total is None else total
    return tqdm(
        it,
        total=len(it) if it is not None and hasattr(it, "__len__") else total,
        desc=desc,
        leave=leave,
        unit=unit,
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not enabled(quiet),
    )


def items(seq, desc, quiet=False, log=None, name=str):
    """``seq`` with progress: a bar where bars are on, else one ``log`` line after each item with
    its name, the seconds so far and an estimate of the seconds left (nothing if ``log`` is None or
    ``quiet``), so that a long loop in a log file never sits silent."""
    import time

    seq = list(seq)
    b = bar(seq, desc, quiet, unit="item")
    t0 = time.perf_counter()
    for i, item in enumerate(b, 1):
        yield item
        if b.disable and log is not None and not quiet:
            spent = time.perf_counter() - t0
            log(
                f"[{desc}] {i}/{len(seq)} {name(item)} done, {spent:.0f} s so far, about "
                f"{spent / i * (len(seq) - i):.0f} s left"
            )


def _short(v):
    v = np.asarray(v, float)
    if v.ndim == 0:
        return f"{float(v):.4g}"
    return f"{np.nanmin(v):.4g}..{np.nanmax(v):.4g}" if np.isfinite(v).any() else "nan"


def epoch_logger(desc="epochs", epochs=None, quiet=False, log=None, val_name="val"):
    """A ``fit(progress=...)`` callback: a bar over the epochs with the latest train/val metrics
    (for several configs, their range), or, where bars are off, one ``log`` line per epoch
    (nothing if ``log`` is None or ``quiet``), led by ``desc`` where one is given, so that the
    blocks of several fits in one run say which is which. ``val_name`` names the held-out set
    shown (e.g. ``"test"`` where fit's ``val`` is the test set). Call ``.close()`` when the fit is
    done."""
    b = bar(epochs, desc, quiet, leave=False, unit="epoch")

    def progress(m):
        if b.total is None:
            b.reset(total=m["epochs"])
        shown = {
            k.replace("val_", f"{val_name}_"): _short(m[k])
            for k in ("train_loss", "train_acc", "val_loss", "val_acc")
            if np.isfinite(np.asarray(m[k], float)).any()
        }
        if not b.disable:
            b.set_postfix(shown, refresh=False)
            b.update(1)
        elif log is not None and not quiet:
            log(
                ("" if desc == "epochs" else f"[{desc}] ")
                + f"epoch {m['epoch']:3d}/{m['epochs']}  "
                + "  ".join(f"{k} {v}" for k, v in shown.items())
                + f"  {m['epoch_time']:.2f}s"
            )

    progress.close = b.close
    return progress
