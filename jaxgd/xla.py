"""The XLA compiler options jaxgd compiles its own programs with (its epochs, evaluations and checks),
passed per ``jax.jit`` so that nothing changes for the caller's other JAX code.

Since jaxlib 0.10.2 XLA:CPU hands every float32 convolution to YNNPACK, which is slow on the shapes
of a convolution's gradients; the option ``xla_cpu_experimental_ynn_fusion_type`` set to dots and
reductions only (XLA's default less ``INDIVIDUAL_CONVOLUTION``) takes convolutions back to XLA's Eigen
path and keeps the rest on YNNPACK. The bench's ``conv_parts`` rows (``xla=default`` against ``xla=tuned``) and ``cnn_epoch`` /
``airbench_epoch`` rows measure the two side by side.

Settings (``Configs.xla``, ``train.compile``, or the environment variable ``JAXGD_XLA`` when the
code gives none):

- ``"tuned"``: the options above, on a CPU backend only (on a GPU or TPU nothing is passed);
- ``"default"``: XLA's own defaults, no option passed.

An option the jaxlib in use does not have is dropped without a word (jaxgd then compiles as XLA's
defaults would): each is tried once per process on a one-number program.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax

ENV = "JAXGD_XLA"
SETTINGS = {
    # XLA's default set less INDIVIDUAL_CONVOLUTION: dots and reductions stay on YNNPACK (its
    # reductions sum in a tree; XLA's own, the same program's batch-norm sums, rounded up to 10x more
    # in float32 on the ResNet's gradient)
    "tuned": {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"},
    "default": {},
}


def setting(value: str | None = None) -> str:
    """The setting in force: ``value`` if given, else ``$JAXGD_XLA``, else ``"tuned"``."""
    chosen = value if value is not None else (os.environ.get(ENV) or "tuned")
    if chosen not in SETTINGS:
        where = f"${ENV}" if value is None else "xla"
        raise ValueError(f"{where} must be one of {tuple(SETTINGS)}, got {chosen!r}")
    return chosen


def options(value: str | None = None) -> dict:
    """The compiler options of ``setting(value)`` that this backend and jaxlib take (possibly none)."""
    wanted = SETTINGS[setting(value)]
    if not wanted or jax.default_backend() != "cpu":
        return {}
    return {k: v for k, v in wanted.items() if _takes(k, v)}


@functools.cache
def _takes(name: str, value: str) -> bool:
    """Whether XLA compiles a one-number program with the option ``name=value`` (keyed on jaxgd's own
    option names, never on a caller's object)."""
    try:
        jax.jit(_one, compiler_options={name: value}).lower(0.0).compile()
    except Exception:  # noqa: BLE001  ("No such compile option" / not a valid value: an older or newer jaxlib)
        return False
    return True


def _one(x):
    return x + 1


def jit(fun: Callable, xla: str | None = None, **kwargs: Any) -> Any:
    """``jax.jit(fun, **kwargs)`` with ``options(xla)`` merged under any ``compiler_options`` given."""
    opts = {**options(xla), **(kwargs.pop("compiler_options", None) or {})}
    return jax.jit(fun, compiler_options=opts or None, **kwargs)


def describe(value: str | None = None) -> dict:
    """For a result's provenance: the setting and the options it passed."""
    return {"setting": setting(value), "options": options(value)}
