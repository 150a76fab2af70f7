"""What every experiment shares: provenance, the code fingerprint, atomic and all-or-nothing
writes, corrupt-file handling, resumable partial runs, the results folder."""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

from jaxgd import parallel, progress, xla
from jaxgd.files import atomic_write


class CorruptFileError(ValueError):
    """A results or partial file that cannot be read as JSON (truncated, overwritten, ...)."""


def results_root(explicit=None) -> Path:
    """Where results go: ``explicit`` (``--results``), else ``$JAXGD_RESULTS``, else ``./results``
    of the working directory (never the installed package's folder)."""
    return Path(explicit or os.environ.get("JAXGD_RESULTS") or Path.cwd() / "results")


@functools.cache
def code_fingerprint() -> str:
    """A hash of the jaxgd source files that computed a result: part of every resume key, so
    work saved by other code is never reused."""
    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parents[1]
    for f in sorted(pkg.rglob("*.py")):
        h.update(f.relative_to(pkg).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for results measured on it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MiB (Linux's VmHWM); None where /proc does not say."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) / 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration, ValueError):
        return None


def release_memory():
    """Hand the memory freed so far back to the operating system: collect garbage, and ask glibc's
    allocator (where there is one) to return the free parts of its heap, which it otherwise keeps
    for later. ``run_all`` calls it after each experiment, so that a run of several peaks at about
    its largest experiment rather than at what the earlier ones left behind (``process_peak_rss_mb``).
    An experiment's compiled programs go with the trainers (``train.compile``) it held."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to ask
        pass


def device_label() -> str:
    """``platform:kind`` of the first device (``cpu:cpu``, ``gpu:NVIDIA H100 ...``)."""
    dev = jax.devices()[0]
    return f"{dev.platform}:{getattr(dev, 'device_kind', '')}"


# Fixes that change what an experiment computes, which a committed result may predate: name ->
# (what changed, the experiments whose numbers it changes). A result stores the names of the fixes
# its code had (provenance "fixes"); REPORT.md and the README mark a result that lacks one of its
# experiment's (``predates``).
FIXES = {
    "key_streams": (
        "fit drew each epoch's batch order, dropout and augmentation from fold_in(PRNGKey(seed), e), "
        "layer e's initialisation key; it now has a stream of its own (train.data_key)",
        ("cifar2", "cifar2_improved", "cifar10_softmax", "cifar10_improved", "mnist_zoo", "mnist_improved", "resnet"),
    ),
    "conv_defaults": (
        "conv2d's defaults became the fastest path measured in the MNIST CNN's compiled epoch: the "
        "lax.conv forward above 4 input channels, dW computed as a convolution, and jaxgd's programs "
        "compiled with XLA:CPU's convolutions on its Eigen path (jaxgd.xla); the same arithmetic, "
        "rounded differently",
        ("gradcheck", "mnist_zoo", "mnist_improved", "resnet", "airbench"),
    ),
}


def predates(name, res) -> list[str]:
    """What changed since ``res`` (a results file of experiment ``name``) was computed: the
    ``FIXES`` of ``name`` its provenance does not list."""
    have = set((res.get("provenance") or {}).get("fixes") or ())
    return [what for fix, (what, names) in FIXES.items() if name in names and fix not in have]


def duration(seconds: float) -> str:
    """Seconds as a person reads them in a table: "95 s" under two minutes, else "12 min"."""
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def provenance() -> dict:
    """Versions, device, commit and date: stored beside every result."""
    import chex
    import matplotlib
    import optax

    try:
        import tensorflow_datasets as tfds

        tfds_version = tfds.__version__
    except Exception as e:  # noqa: BLE001  (data can come from a jaxgd export without TFDS)
        tfds_version = f"not importable ({type(e).__name__})"

    here = Path(__file__).parent
    try:
        commit = (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here, timeout=5
            ).stdout.strip()
            or None
        )
        # uncommitted changes to the library: the commit alone does not say what computed the result
        dirty = (
            bool(
                subprocess.run(
                    ["git", "status", "--porcelain", "--", str(here.parent)],
                    capture_output=True,
                    text=True,
                    cwd=here,
                    timeout=5,
                ).stdout.strip()
            )
            if commit
            else None
        )
    except (OSError, subprocess.SubprocessError):
        commit = dirty = None
    told = {}
    source = os.environ.get("JAXGD_SOURCE_COMMIT")
    if source and source != commit:
        # a copy of the tree sent elsewhere (a lent GPU machine) without its git history, or with
        # another one: the commit it was copied from, as told, and what git says there;
        # code_fingerprint below says whether the code is that commit's
        told = {"commit_from": "JAXGD_SOURCE_COMMIT", "git_here": {"commit": commit, "uncommitted_changes": dirty}}
        commit, dirty = source, None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit,
        **told,
        "uncommitted_changes": dirty,
        "device": device_label(),
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model(),
        "python": platform.python_version(),
        "code_fingerprint": code_fingerprint(),
        "fixes": sorted(FIXES),
        "xla": xla.describe(),  # the compiler options jaxgd's programs compiled with
        "versions": {
            "jax": jax.__version__,
            "optax": optax.__version__,
            "chex": chex.__version__,
            "numpy": np.__version__,
            "tensorflow_datasets": tfds_version,
            "matplotlib": matplotlib.__version__,
        },
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
    """Write JSON atomically: an interrupted run never leaves half a file, and a value JSON
    cannot hold fails before anything is written."""
    return atomic_write(path, json.dumps(_plain(obj), indent=1))


def load_json(path):
    """Read a JSON file; a truncated or corrupt one raises ``CorruptFileError`` naming it."""
    try:
        with open(path) as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(f"{path} is not valid JSON (truncated or corrupt: {e})") from None


def load_json_if(path):
    """``load_json(path)``, or None where there is no such file (another experiment's result, which a
    report cites beside its own when it has been run)."""
    return load_json(path) if Path(path).exists() else None


def set_aside(path, log=None) -> Path:
    """Rename a corrupt file to ``<name>.corrupt-<UTC time>`` (kept for a look, out of the way)."""
    path = Path(path)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S%f")
    new = path.with_name(f"{path.name}.corrupt-{stamp}")
    os.replace(path, new)
    if log is not None:
        log(f"{path} is corrupt (not valid JSON); set aside as {new.name}")
    return new


def read_result(path, log=None):
    """A finished result file's contents, or ``None`` if it is missing or corrupt (then set aside)."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return load_json(path)
    except CorruptFileError:
        set_aside(path, log)
        return None


def outdir(name, root=None) -> Path:
    d = results_root(root) / name
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def staged(d_out):
    """Write an experiment's outputs together: the body writes them into a staging folder, and only
    when it finishes are they moved into ``d_out``, the results JSON last; if it fails, nothing
    of this run is left in ``d_out`` and the previous results stay whole."""
    d_out = Path(d_out)
    d_out.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=d_out, prefix=".staging-"))
    try:
        yield stage
        for f in sorted(stage.iterdir(), key=lambda p: p.suffix == ".json") if parallel.is_writer() else ():
            os.replace(f, d_out / f.name)  # in a multi-host run, process 0 alone writes
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def record(name, cfg, t0, prov, **fields) -> dict:
    """A results dict as every experiment writes it: its name and config, its own ``fields``, the
    wall time since ``t0`` and the provenance ``prov`` taken when it started."""
    return {"experiment": name, "config": cfg.to_dict(), **fields, "wall_time_s": time.time() - t0, "provenance": prov}


def write(name, out, res, json_name="results.json", figures=(), draw=None) -> None:
    """Write ``res`` as ``<out>/<name>/<json_name>`` with its ``figures`` (pairs ``(file name,
    draw(path))``, or ``draw(folder)`` drawing several), all together (``staged``); nothing when
    ``out`` is False."""
    if out is False:
        return
    with staged(outdir(name, out)) as st:
        save_json(st / json_name, res)
        for fname, draw_one in figures:
            draw_one(st / fname)
        if draw is not None:
            draw(st)


def run_datasets(
    name, cfg, train, note, *, desc, say, out=None, force=False, verbose=True, log=print, figures=lambda res: ()
) -> dict:
    """An experiment run over ``cfg.datasets``: ``train(dataset)`` for each, saved as soon as it
    finishes (``PartialRun``: a stopped run resumes at the next dataset), then the results
    ``{experiment, config, datasets, note, reused, wall_time_s, provenance}`` written with
    ``figures(res)`` (``(file, draw(path))`` pairs). ``say(dataset)`` is the line announcing each."""
    t0, prov = time.time(), provenance()
    part = PartialRun.of(name, out, cfg, "datasets", "datasets", prov, force, verbose, log)
    done = part.each(list(cfg.datasets), train, desc, quiet=not verbose, say=lambda ds: log(say(ds)))
    res = record(name, cfg, t0, prov, datasets=done, note=note, reused=part.reused(list(cfg.datasets)))
    write(name, out, res, figures=figures(res))
    return res


def _resume_key(settings: dict) -> dict:
    return {
        "settings": _plain(settings),
        "code_fingerprint": code_fingerprint(),
        "device": device_label(),
        "jax": jax.__version__,
    }


class PartialRun:
    """The finished entries (``what``: "configs", "models") of a long run, saved after each one in
    ``path`` with the provenance of the run that computed it, so that a stopped run resumes.

    Entries are taken back only from a run with the same ``settings``, code (``code_fingerprint``),
    device and JAX version, and never with ``force``; a corrupt file is set aside. ``reused(names)``
    says which entries came from an earlier run, with that run's provenance."""

    def __init__(self, path, settings: dict, what: str, provenance: dict, force=False, log=None):
        self.path, self.what, self.provenance = path, what, provenance
        self.key = _resume_key(settings)
        self.done, self.made_by = {}, {}
        log = log or (lambda s: None)
        prev = None if path is None or force or not parallel.is_writer() else read_result(path, log)
        prev = parallel.broadcast_json(prev)  # every process of a multi-host run skips the same entries
        if prev is not None:
            changed = [k for k in self.key if prev.get("key", {}).get(k) != self.key[k]]
            if changed:
                log(f"not resuming from {path}: the {' and '.join(changed)} changed since it was written")
            else:
                self.done, self.made_by = dict(prev.get(what, {})), dict(prev.get("provenance", {}))
                if self.done:
                    log(
                        f"resuming: {len(self.done)} finished {what} kept from {path} "
                        "(each keeps the provenance of the run that computed it)"
                    )
        self._earlier = set(self.done)

    @classmethod
    def of(cls, folder, out, cfg, over, what, prov, force=False, verbose=True, log=print, settings=None):
        """The partial run of an experiment that trains the entries of ``cfg.<over>`` one by one (its
        ``what``), kept in ``<folder>/<over>_partial.json`` under the results root ``out`` (nowhere
        when ``out`` is False) and resumed only from a run whose ``settings`` were the same (by
        default every config field but ``over`` and the data folder)."""
        path = outdir(folder, out) / f"{over}_partial.json" if out is not False else None
        if settings is None:
            settings = {k: v for k, v in cfg.to_dict().items() if k not in (over, "data_dir")}
        return cls(path, settings, what, prov, force, log if verbose else None)

    def __contains__(self, name):
        return name in self.done

    def add(self, name, entry):
        self.done[name], self.made_by[name] = entry, self.provenance
        self._earlier.discard(name)
        if self.path is not None and parallel.is_writer():
            save_json(self.path, {"key": self.key, self.what: self.done, "provenance": self.made_by})

    def each(self, names, train, desc, quiet=False, say=None) -> dict:
        """``train(name)`` for every name not finished yet, each saved as soon as it is done, under a
        bar over ``names``; where no bar shows and not ``quiet``, ``say(name)`` (if given) announces
        each. Returns name -> entry for all ``names``."""
        with progress.bar(len(names), desc, quiet=quiet, unit=self.what.rstrip("s")) as bar:
            for name in names:
                if name not in self:
                    if say is not None and bar.disable and not quiet:
                        say(name)
                    bar.set_postfix_str(name)
                    self.add(name, train(name))
                bar.update(1)
        return {n: self.done[n] for n in names}

    def reused(self, names) -> dict:
        """Entry -> provenance of the earlier run that computed it, for the ``names`` taken back."""
        return {n: self.made_by.get(n) for n in names if n in self._earlier}
