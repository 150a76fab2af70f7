"""What an experiment is to the harness: one ``Experiment`` record, kept at the foot of the
experiment's own module (``EXPERIMENT = Experiment(...)``). ``reproduce``, ``writeup`` and the
command line read only these records (``registry.EXPERIMENTS``), so adding an experiment is one
new module and one line in ``registry.MODULES``.

The record holds what runs (``run(cfg, out=None, force=False, verbose=True, log=print) -> dict``:
the results dict it also writes to ``results``), with which config (``config``, a ``Config``
class; ``quick``: the quick profile's overrides, or None for the full profile only), what it reads
(``needs``: datasets) and writes (``results``, ``figures``), and how its results are told:
``summary(res)`` (the table a command prints and REPORT.md shows), ``notes(res, out)`` (lines after
that table), ``about(res, out)`` (the paragraph that opens its REPORT.md section: what ran and
how), ``headline(res, out)`` (its row of the README's results table) and ``compare_with`` (the
course report's numbers or the target it is read against).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable


def _nothing(res, out) -> list[str]:
    return []


@dataclasses.dataclass(frozen=True)
class Experiment:
    name: str  # the name in results, --only and REPORT.md ("mnist_zoo")
    what: str  # one line: the command's help
    run: Callable  # run(cfg, out=None, force=False, verbose=True, log=print) -> dict
    config: type  # its Config class (flags, defaults, checks)
    results: str  # its results file under the results root ("{device}" for the bench's)
    summary: Callable  # res -> rows of the table a command prints and REPORT.md shows
    quick: dict | None = None  # the quick profile's config (overrides of the defaults); None: full only
    figures: tuple = ()  # the figures REPORT.md shows, under the results root
    needs: tuple = ()  # the datasets it reads (found before anything runs)
    resumable: bool = False  # keeps finished parts in a partial file (--force starts over)
    compare_with: str = ""  # what REPORT.md compares it with: the course report's numbers, the targets
    notes: Callable = _nothing  # (res, out) -> lines said after its table, by the command and in REPORT.md
    about: Callable | None = None  # (res, out) -> the paragraph that opens its REPORT.md section
    headline: Callable | None = None  # (res, out) -> its row of the README's results table
    command: str | None = None  # its command (default: the name with dashes); "" for none of its own
    flags: tuple = ()  # extra command flags: (flag, config overrides, help)

    @property
    def cli_name(self) -> str:
        return self.name.replace("_", "-") if self.command is None else self.command
