"""What every experiment shares: provenance, atomic JSON writes, results folders."""
from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path

import jax
import numpy as np

RESULTS = Path(os.environ.get("JAXGD_RESULTS", Path(__file__).resolve().parents[2] / "results"))


def provenance() -> dict:
    """Versions, device, commit and date: stored beside every result."""
    import chex
    import matplotlib
    import optax
    import tensorflow_datasets as tfds

    here = Path(__file__).parent
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=here, timeout=5).stdout.strip() or None
        # uncommitted changes to the library: the commit alone does not say what computed the result
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", str(here.parent)], capture_output=True,
                                    text=True, cwd=here, timeout=5).stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit = dirty = None
    dev = jax.devices()[0]
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        "uncommitted_changes": dirty,
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "versions": {"jax": jax.__version__, "optax": optax.__version__, "chex": chex.__version__,
                     "numpy": np.__version__, "tensorflow_datasets": tfds.__version__,
                     "matplotlib": matplotlib.__version__},
    }


def _plain(x):
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, (np.ndarray, jax.Array)):
        return _plain(np.asarray(x).tolist())
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if np.isfinite(x) else str(x)  # JSON has no NaN/inf: "nan", "inf"
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, os.PathLike):
        return os.fspath(x)
    return x


def save_json(path, obj) -> Path:
    """Write JSON atomically (temp file + rename): an interrupted run never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_plain(obj), f, indent=1)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a result is for everyone to read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)  # a value JSON cannot hold fails the write, and leaves no stray file
    return path


def load_json(path):
    with open(path) as f:
        return json.load(f)


def outdir(name, root=None) -> Path:
    d = Path(root or RESULTS) / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def resume(partial, settings: dict, what: str, force=False, log=None) -> dict:
    """The finished entries (``what``: "configs", "models") that ``checkpoint`` saved in ``partial``
    by a run with the same ``settings``; ``{}`` when there are none, they differ, or ``force``."""
    if partial is None or force or not Path(partial).exists():
        return {}
    prev = load_json(partial)
    done = prev.get(what, {}) if prev.get("settings") == settings else {}
    if done and log is not None:
        log(f"resuming: {len(done)} finished {what} kept from {partial}")
    return done


def checkpoint(partial, settings: dict, what: str, done: dict):
    """Save the finished entries so far (atomically), for ``resume``."""
    if partial is not None:
        save_json(partial, {"settings": settings, what: done})
