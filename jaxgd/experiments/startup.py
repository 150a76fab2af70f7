"""The bench's ``startup`` section: what a person waits for before the first answer, measured in
fresh processes, each with an empty persistent compilation cache and then with the cache the first
one filled: ``import jaxgd``, and ``jaxgd.check`` of a dense and of a convolutional layer and of
``jax.nn.softmax`` (a function with no rule inside: autodiff against finite differences) (its
first call, and a second call of the same check in the same process). Each row has the seconds,
the XLA programs compiled (or loaded from the cache) and the process's peak memory (RSS).

``baseline``: a folder holding another jaxgd source tree (e.g. ``git worktree add /tmp/old
<commit>``): its rows are measured the same way, beside this tree's, and labelled with its commit,
so that a change's before and after are one run of the same probes on the same machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# name -> the statement timed in the child, after ``import jaxgd``; run twice for the second call
PROBES = {
    "import jaxgd": None,
    "check(dense(4), (3,))": "jaxgd.check(jaxgd.layers.dense(4), (3,))",
    "check(conv2d(8, 3), (8, 8, 3))": "jaxgd.check(jaxgd.layers.conv2d(8, 3), (8, 8, 3))",
    "check(jax.nn.softmax, x (3, 6))": "import jax, numpy; jaxgd.check(jax.nn.softmax, "
    "numpy.random.default_rng(0).standard_normal((3, 6)))",
}
# probes an older tree cannot run (a baseline measures the others): check of any function came with 29d23c1
NEW_PROBES = ("check(jax.nn.softmax, x (3, 6))",)

# The child: only what jaxgd has had since its compilation cache (compile_cache.enable and
# CompileClock), so that an older jaxgd tree (the baseline) runs the same code.
CHILD = r"""
import json, resource, sys, time
t0 = time.perf_counter()
import jaxgd
import_s = time.perf_counter() - t0
from jaxgd import compile_cache
compile_cache.enable(sys.argv[2])
out = {"import_s": import_s}
stmt = sys.argv[1]
if stmt != "None":
    for call in ("first", "second"):
        with compile_cache.CompileClock() as clock:
            t = time.perf_counter()
            exec(stmt)
            out[call + "_s"] = time.perf_counter() - t
        out[call + "_programs"], out[call + "_cache_loads"] = clock.compiles, clock.loads
try:  # this process's own peak: ru_maxrss can start at the forking parent's, VmHWM is the exec'd image's
    hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM:")][0]
    out["peak_rss_mb"] = int(hwm.split()[1]) / 1024
except (OSError, IndexError):
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps(out))
"""


def _commit(tree: Path) -> str:
    try:
        return (
            subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], cwd=tree, capture_output=True, text=True, timeout=5
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def measure(tree: Path | None = None, log=None) -> list[dict]:
    """The rows of one jaxgd tree (``None``: the installed one): every probe in a fresh process with
    an empty cache, then in another with the cache the first filled."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("JAXGD_COMPILE_CACHE", None)  # the probes set their own cache folder
    label = "" if tree is None else f" [baseline {_commit(tree)}]"
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    rows = []
    for name, stmt in PROBES.items():
        if tree is not None and name in NEW_PROBES:
            continue
        with tempfile.TemporaryDirectory() as cache:
            for state in ("empty cache", "warm cache"):
                t = time.perf_counter()
                r = subprocess.run(
                    [sys.executable, "-c", CHILD, str(stmt), cache],
                    capture_output=True,
                    text=True,
                    env=env,
                    cwd=tempfile.gettempdir(),
                )
                wall = time.perf_counter() - t
                if r.returncode != 0:
                    raise RuntimeError(f"startup probe {name!r}{label} failed: {r.stderr[-2000:]}")
                m = json.loads(r.stdout.strip().splitlines()[-1])
                secs = m["import_s"] if stmt is None else m["first_s"]
                rows.append(
                    {
                        "name": f"{name}, a fresh process, {state}{label}",
                        "median_s": secs,
                        "min_s": secs,
                        "max_s": secs,
                        "times_s": [secs],
                        "process_wall_s": wall,
                        **m,
                    }
                )
                if log:
                    log(
                        f"  {rows[-1]['name']}: {secs:.2f} s, {m.get('first_programs', 0)} programs, "
                        f"{m['peak_rss_mb']:.0f} MB"
                    )
    return rows


def bench_startup(cfg, have_torch=False, log=None) -> dict:
    """The section: this tree's rows, the baseline's if ``cfg.startup_baseline`` names one, and the
    ratios the targets judge (``bench.TARGETS``)."""
    rows = measure(log=log)
    by = {r["name"]: r for r in rows}
    dense, conv = "check(dense(4), (3,)), a fresh process", "check(conv2d(8, 3), (8, 8, 3)), a fresh process"
    d_cold, d_warm, c_cold = by[f"{dense}, empty cache"], by[f"{dense}, warm cache"], by[f"{conv}, empty cache"]
    ratios = {
        "startup: check(dense) s, empty cache": d_cold["first_s"],
        "startup: check(dense) programs": d_cold["first_programs"],
        "startup: check(dense) second call s": d_cold["second_s"],
        "startup: check(dense) second call programs": d_cold["second_programs"],
        "startup: check(dense) s, warm cache": d_warm["first_s"],
        "startup: check(conv2d) s, empty cache": c_cold["first_s"],
        "startup: import jaxgd s": by["import jaxgd, a fresh process, empty cache"]["import_s"],
    }
    soft = by.get("check(jax.nn.softmax, x (3, 6)), a fresh process, empty cache")
    if soft:
        ratios["startup: check(jax.nn.softmax) s, empty cache"] = soft["first_s"]
        ratios["startup: check(jax.nn.softmax) programs"] = soft["first_programs"]
    out = {"rows": rows, "ratios": ratios}
    if cfg.startup_baseline:
        base = measure(Path(cfg.startup_baseline).resolve(), log=log)
        rows += base
        b = {r["name"].split(" [baseline")[0]: r for r in base}
        out["baseline_commit"] = _commit(Path(cfg.startup_baseline))
        ratios["startup: check(dense) s, empty cache, this/baseline"] = (
            d_cold["first_s"] / b[f"{dense}, empty cache"]["first_s"]
        )
        ratios["startup: check(conv2d) s, empty cache, this/baseline"] = (
            c_cold["first_s"] / b[f"{conv}, empty cache"]["first_s"]
        )
    return out
