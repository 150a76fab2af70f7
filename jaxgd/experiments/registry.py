"""The experiments ``jaxgd reproduce`` knows: a list of modules, each ending with its
``EXPERIMENT`` record (``protocol.Experiment``). The running (``reproduce``), the reporting
(``writeup``) and the command line read these records, and nothing else about the experiments.
"""

from __future__ import annotations

from pathlib import Path

from jaxgd.experiments import (
    airbench,
    bench,
    cifar2,
    cifar2_improved,
    cifar10_improved,
    cifar10_softmax,
    common,
    data_report,
    gradient_checks,
    matrix_chain,
    mnist_improved,
    mnist_zoo,
    resnet,
    vit,
)
from jaxgd.experiments.config import ConfigError

# in the order they run and REPORT.md tells them
MODULES = (
    gradient_checks,
    matrix_chain,
    data_report,
    cifar2,
    cifar2_improved,
    mnist_zoo,
    mnist_improved,
    cifar10_softmax,
    cifar10_improved,
    resnet,
    airbench,
    vit,
    bench,
)
EXPERIMENTS = {m.EXPERIMENT.name: m.EXPERIMENT for m in MODULES}


def files(name):
    """The results file and figures of an experiment on this device (bench's are named after it)."""
    exp, dev = EXPERIMENTS[name], bench.device_name()
    return exp.results.format(device=dev), [f.format(device=dev) for f in exp.figures]


def result_files(name, out) -> list[tuple[Path, str]]:
    """The results files of ``name`` under ``out`` with their REPORT.md titles: one file, or for a
    results file named after the device (the bench's) one per device that ran it."""
    rfile = EXPERIMENTS[name].results
    if "{device}" not in rfile:
        return [(out / rfile, name)] if (out / rfile).exists() else []
    return [(p, f"{name}: {p.stem}") for p in sorted(out.glob(rfile.format(device="*")))]


def root(profile, base=None) -> Path:
    base = common.results_root(base)
    return base / "quick" if profile == "quick" else base


def config(name, profile, data_dir=None):
    """The typed config an experiment runs with in ``profile``."""
    exp = EXPERIMENTS[name]
    if profile == "quick" and exp.quick is None:
        raise ConfigError(
            f"{name} runs in the full profile only: jaxgd reproduce --full --only {name}, or jaxgd {exp.cli_name}"
        )
    extra = {"data_dir": data_dir} if data_dir and exp.needs else {}
    return exp.config.make(exp.quick if profile == "quick" else {}, **extra)


def in_profile(name, profile) -> bool:
    """Whether ``jaxgd reproduce`` runs ``name`` in ``profile`` when not told which to run."""
    return profile == "full" or EXPERIMENTS[name].quick is not None
