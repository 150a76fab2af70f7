"""Run every experiment and write results/REPORT.md (the engine behind ``jaxgd reproduce``).

Profiles: ``full`` (the course reports' protocols; results/) and ``quick`` (fewer epochs and
configs; results/quick/, labelled quick): ``QUICK_MINUTES`` on a 2-core CPU with an empty
compilation cache and with a warm one, as the bench's compile_cache section measures it (its
ratios ``cache_command wall s, empty cache`` and ``cache_command wall s, warm cache`` in
results/bench/cpu-2core.json).
"""

from __future__ import annotations

import gc
import json
import time
import traceback

from jaxgd import data, parallel, progress
from jaxgd.experiments import common
from jaxgd.experiments.registry import EXPERIMENTS, config, files, in_profile, root
from jaxgd.experiments.writeup import readme_results, update_readme, write_report

# minutes of `jaxgd reproduce --quick` on a 2-core CPU (empty compilation cache, warm cache): the bench's
# compile_cache section rounded up; a test keeps them equal to results/bench/cpu-2core.json
QUICK_MINUTES = (4, 2)

__all__ = [
    "EXPERIMENTS",
    "QUICK_MINUTES",
    "config",
    "readme_results",
    "root",
    "run_all",
    "run_one",
    "update_readme",
    "write_report",
]

# what run_one adds to a results file: facts of the process that ran it, not of the experiment
PROCESS_FIELDS = ("compilation", "run_wall_s", "process_peak_rss_mb")


def run_one(name, cfg, out=None, force=False, verbose=True, log=print):
    """Run experiment ``name`` with its typed ``cfg``. The programs it compiled and the seconds that
    took (``compile_cache.CompileClock``) are added to its results file as ``compilation``, and the
    run's wall time, data loading and figures included, as ``run_wall_s``: the time ``run_all`` says
    and REPORT.md prints; and the process's peak memory so far, ``process_peak_rss_mb``. Its
    memory is released (``common.release_memory``) whether it finished or raised."""
    from jaxgd.compile_cache import CompileClock

    t = time.time()
    try:
        with CompileClock() as clock:
            res = EXPERIMENTS[name].run(cfg, out=out, force=force, verbose=verbose, log=log)
    finally:
        common.release_memory()
    path = common.results_root(out) / files(name)[0]
    if isinstance(res, dict) and out is not False and parallel.is_writer() and path.exists():
        res["compilation"], res["run_wall_s"] = clock.as_dict(), round(time.time() - t, 1)
        res["process_peak_rss_mb"] = common.peak_rss_mb()  # of the process so far: run_all's earlier runs too
        common.save_json(path, {**common.load_json(path), **{k: res[k] for k in PROCESS_FIELDS}})
    return res


def _done(path, cfg, log) -> bool:
    """Whether ``path`` holds a finished result of ``cfg`` computed by this code (the config
    stored in it, the data folder aside, and its provenance's ``code_fingerprint``); a result of
    another config or other code is rerun, never reported as this one."""
    prev = common.read_result(path, log)
    if prev is None:
        return False
    strip = lambda c: {k: v for k, v in (c or {}).items() if k != "data_dir"}
    if strip(prev.get("config")) != strip(json.loads(json.dumps(cfg.to_dict()))):
        log(f"{path} was computed with another config: rerunning it")
        return False
    if (prev.get("provenance") or {}).get("code_fingerprint") != common.code_fingerprint():
        log(f"{path} was computed by other code (its code_fingerprint differs): rerunning it")
        return False
    return True


def run_all(profile="quick", only=None, force=False, base=None, data_dir=None, log=print, quiet=False) -> dict:
    """Run the experiments (all, or ``only``) of ``profile`` into ``root(profile, base)`` and write
    its REPORT.md (and, for the full profile in the default place, the README's results block).
    A finished experiment (a readable results file of the same config, by this code: ``_done``) is
    skipped unless ``force``; a corrupt one is set aside and rerun. Progress bars show unless ``quiet`` (see ``jaxgd.progress``). Every config is built, and every dataset found (or found downloadable),
    before anything runs: a bad config or missing data fails in seconds, not after an hour."""
    if profile not in ("quick", "full"):
        raise ValueError(f"profile must be 'quick' or 'full', got {profile!r}")
    names = [n for n in EXPERIMENTS if in_profile(n, profile)] if not only else list(only)
    for n in names:
        if n not in EXPERIMENTS:
            raise ValueError(f"unknown experiment {n!r}; choose from {list(EXPERIMENTS)}")
    out = root(profile, base)
    cfgs = {n: config(n, profile, data_dir) for n in names}
    todo = {}
    status = {}
    finished = [n for n in names if not force and parallel.is_writer() and _done(out / files(n)[0], cfgs[n], log)]
    finished = parallel.broadcast_json(finished)  # every process of a multi-host run decides alike
    for n in names:
        if n in finished:
            log(f"[{n}] done already ({out / files(n)[0]}, by this code and config); --force reruns it")
            status[n] = "skipped (done)"
        else:
            todo[n] = cfgs[n]
    for ds in dict.fromkeys(
        d for n, cfg in todo.items() for d in EXPERIMENTS[n].needs if not hasattr(cfg, "datasets") or d in cfg.datasets
    ):
        data.check_available(ds, data_dir)
    if profile == "quick" and not only and len(todo) == len(names):
        log(
            f"[reproduce] the quick profile: about {QUICK_MINUTES[0]} min on a 2-core CPU the first time, "
            f"{QUICK_MINUTES[1]} once its programs are in the compilation cache"
        )
    # what outlives each experiment's garbage collection (modules, JAX's caches: hundreds of thousands of
    # objects by the end) is frozen, so the next collection need not walk it again; only where the caller
    # froze nothing, so that unfreezing at the end leaves the process as it was
    freeze = gc.get_freeze_count() == 0
    try:
        for n, cfg in progress.bar(todo.items(), f"reproduce --{profile}", quiet=quiet, unit="experiment"):
            log(f"[{n}] running ({profile})")
            t = time.time()
            try:
                res = run_one(n, cfg, out, force, not quiet, log)
                wall = res.get("run_wall_s") if isinstance(res, dict) else None  # the time REPORT.md prints
                status[n] = f"ok ({time.time() - t if wall is None else wall:.0f} s)"
            except Exception as e:  # noqa: BLE001  (one failing experiment must not stop the others)
                traceback.print_exc()
                status[n] = f"FAILED: {type(e).__name__}: {e}"
            log(f"[{n}] {status[n]}")
            if status[n].startswith("FAILED"):
                common.release_memory()  # the failed run's frames, held by its traceback until now
            if freeze:
                gc.freeze()
    finally:
        if freeze:
            gc.unfreeze()  # the process's objects collectable again, as before run_all
    if parallel.is_writer():
        write_report(profile, base)
        readme = out.parent / "README.md"
        if profile == "full" and readme.exists() and "<!-- results:start -->" in readme.read_text():
            update_readme(readme, base)
    return status
