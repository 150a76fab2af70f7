"""JAX's persistent compilation cache, on for the ``jaxgd`` command: compile a program once, reuse
it in every later process.

XLA compilation is a large part of a short run (the INF265 grid spent 4.75 s of 10.13 s compiling
on an H200; every CPU experiment pays seconds per program). With the cache on, a compiled program
is written to disk keyed by its HLO, the compile options, the device and the JAX version, and a
later process that builds the same program loads it instead of compiling.

- Where: ``<data cache>/xla`` (``~/.cache/jaxgd/xla``, or ``$JAXGD_CACHE_DIR/xla``), beside the
  decoded datasets. ``$JAXGD_COMPILE_CACHE`` names another folder, or turns the cache off with
  ``off`` (also ``0``, ``none``, ``false``); the ``jaxgd`` flags ``--compile-cache DIR`` and
  ``--no-compile-cache`` do the same for one command. The library alone never turns it on: a
  program that imports jaxgd decides for itself (``enable()``).
- What: programs that took at least ``MIN_COMPILE_SECS`` (0.01 s) to compile, up to ``MAX_BYTES`` on
  disk (the least recently used entries go first; JAX needs ``filelock``, a jaxgd dependency, for
  that cap: without it JAX would warn on every program and cache nothing, so the cap is then left
  off). JAX's default threshold is 1 s, made for slow shared file systems; it leaves out most of
  jaxgd's programs on a CPU. Measured on the 2-core CPU with ``jaxgd matrix-chain --Ks 2 4`` (25
  programs, 1.5 to 2 s of compiling): at 1 s nothing was cached, at 0.1 s 7 programs (the second
  process still compiled for 0.9 s), at 0.01 s 23 of the 25, which the second process loaded in 0.1
  s in all; the two left out compile in a few milliseconds. The bench's ``compile_cache`` section
  measures what the cache saves a run.
- Safety: a cache entry is machine code that runs in this process, so the folder must be the
  user's own: it is created private (mode 0700), and one that belongs to someone else or that
  others can write to is refused (the cache stays off, with a warning that says why).
"""

from __future__ import annotations

import importlib.util
import os
import stat
import warnings
from pathlib import Path

import jax

ENV = "JAXGD_COMPILE_CACHE"
OFF = ("off", "0", "none", "false", "no")
MIN_COMPILE_SECS = 0.01
MAX_BYTES = 4 << 30  # 4 GiB


def resolve(explicit=None) -> Path | None:
    """The cache folder ``explicit`` (a path, or one of ``OFF``) or ``$JAXGD_COMPILE_CACHE`` or the
    default names; None when it is turned off."""
    from jaxgd.data import resolve_cache_dir

    choice = explicit if explicit is not None else os.environ.get(ENV)
    if choice is not None and str(choice).strip().lower() in OFF:
        return None
    return Path(choice).expanduser() if choice else resolve_cache_dir() / "xla"


def unsafe(path: Path) -> str | None:
    """Why ``path`` must not hold compiled code this process will run, or None if it may."""
    try:
        st = path.stat()
    except OSError as e:
        return f"cannot read it ({e})"
    if not stat.S_ISDIR(st.st_mode):
        return "it is not a folder"
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        return f"it belongs to user id {st.st_uid}, not to you ({os.getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"others can write to it (mode {stat.S_IMODE(st.st_mode):o}); chmod 700 it"
    return None


def enable(explicit=None, min_compile_secs: float = MIN_COMPILE_SECS) -> Path | None:
    """Turn JAX's persistent compilation cache on in the folder ``resolve(explicit)`` names
    (created private if missing); returns the folder, or None when the cache is off or the folder
    was refused (with a warning). Call it before the first computation."""
    path = resolve(explicit)
    if path is None:
        return None
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        warnings.warn(f"jaxgd: compilation cache off: cannot create {path} ({e})", stacklevel=2)
        return None
    why = unsafe(path)
    if why is not None:
        warnings.warn(
            f"jaxgd: compilation cache off: {path} is not safe to load compiled code from: {why}. "
            f"Use another folder ({ENV}=DIR or --compile-cache DIR) or turn it off ({ENV}=off).",
            stacklevel=2,
        )
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_secs))
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    if importlib.util.find_spec("filelock") is not None:  # without it JAX would cache nothing
        jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)
    return path


class CompileClock:
    """While entered (``with CompileClock() as clock:``): the seconds this process spends getting
    executables, ``compile_s`` (XLA compiling each program, or loading it from the persistent cache
    where it is there), with ``cache_load_s``, the part spent loading. Tracing and lowering to HLO
    happen either way and are not counted."""

    _COMPILE = "/jax/core/compile/backend_compile_duration"
    _LOAD = "/jax/compilation_cache/cache_retrieval_time_sec"

    def __init__(self):
        self.compile_s = self.load_s = 0.0
        self.compiles = self.loads = 0
        self._on = False

    def _listen(self, event, secs, **_):
        if not self._on:
            return
        if event == self._COMPILE:
            self.compile_s += secs
            self.compiles += 1
        elif event == self._LOAD:
            self.load_s += secs
            self.loads += 1

    def __enter__(self):
        self._on = True
        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc):
        self._on = False
        jax.monitoring.unregister_event_duration_listener(self._listen)

    def as_dict(self) -> dict:
        return {
            "compile_s": self.compile_s,
            "programs": self.compiles,
            "cache_load_s": self.load_s,
            "cache_loads": self.loads,
        }
