"""The ``jaxgd`` command: one subcommand per experiment, plus ``reproduce`` and ``data report``.

    jaxgd reproduce --quick                  # every experiment, quick profile -> results/quick/REPORT.md
    jaxgd reproduce --full --only cifar2 --force
    jaxgd gradcheck --quick
    jaxgd cifar2 --epochs 5 --grid 0.01,0.9,0.001 0.02,0.8,0.005
    jaxgd mnist-zoo --models cnn/plain --epochs 3
    jaxgd bench --sections matmul cnn_epoch
    jaxgd data report --datasets mnist
    jaxgd data export cifar2 mnist --to /tmp/decoded   # then --data-dir /tmp/decoded, no TFDS needed
    jaxgd check my_layer.py:layer --in-shape 8,8,3     # a hand backward, checked (jaxgd.check)
    jaxgd check my_ops.py:safe_norm --args 5 --json    # a jax.custom_vjp / custom_jvp rule

An experiment's flags are generated from its typed config (``jaxgd.experiments.<name>.CONFIG``),
so ``--help`` shows every field with its default. Results go to ``./results`` (or ``--results``).
Bad flags or values print one line and exit with 2; missing data prints how to get it and exits 1.
Compiled programs are kept on disk for the next run (``jaxgd.compile_cache``; ``--no-compile-cache``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import re
import sys

from jaxgd import data
from jaxgd.data import DataFormatError, DataNotFoundError
from jaxgd.experiments import config as C
from jaxgd.experiments.common import CorruptFileError, peak_rss_mb, results_root


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kw):
        super().__init__(*args, allow_abbrev=False, **kw)  # --iter must not run --iters
        # a value such as "-0.01,0.9,0" (a grid config) is a value, not a flag: argparse's own rule
        # knows only plain negative numbers, and answered "expected at least one argument"
        self._negative_number_matcher = re.compile(r"^-\.?\d[\d.,eE+-]*$")

    def error(self, message):  # one line, not argparse's usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _plain(doc: str) -> str:
    """A docstring as --help text: no reStructuredText markup (``x`` -> x), no sentence about what
    the function returns (a command prints, it does not return), paragraphs kept."""
    text = re.sub(r"``([^`]*)``", r"\1", inspect.cleandoc(doc or ""))
    text = re.sub(r"\s*Returns [^.]*\.", "", text)
    return text.strip()


def _common(p, resumable=False):
    p.add_argument("--results", default=None, metavar="DIR", help="results root (default: ./results)")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bars or log lines, only the final table (bars show only on a terminal)",
    )
    if resumable:
        p.add_argument("--force", action="store_true", help="start over instead of resuming a stopped run")


def parser() -> argparse.ArgumentParser:
    from jaxgd.experiments import data_report, reproduce

    top = _Parser(
        prog="jaxgd",
        description="Backpropagation and SGD by hand in JAX: run, check and time it.",
        epilog="Each command's --help lists its flags and their defaults. A multi-host run starts the "
        "same command on every host with --coordinator, --num-processes and --process-id "
        "(or --distributed where the cluster's environment says them); process 0 writes the results.",
    )
    from jaxgd import __version__

    top.add_argument("--version", action="version", version=f"jaxgd {__version__}")
    g = top.add_argument_group("multi-host (jax.distributed)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="address of process 0's coordinator service")
    g.add_argument("--num-processes", type=int, metavar="N", help="processes in the run")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..N-1")
    g.add_argument(
        "--distributed",
        action="store_true",
        help="join a multi-host run described by the environment (SLURM, TPU pods, ...)",
    )
    c = top.add_argument_group("compilation cache (jaxgd.compile_cache)")
    c.add_argument(
        "--compile-cache",
        metavar="DIR",
        default=None,
        help="keep compiled XLA programs in DIR for later runs (default: $JAXGD_COMPILE_CACHE, else "
        "the xla folder of the data cache, ~/.cache/jaxgd/xla)",
    )
    c.add_argument("--no-compile-cache", action="store_true", help="compile everything afresh, store nothing")
    c.add_argument(
        "--compile-report",
        metavar="FILE",
        default=None,
        help="write the seconds spent getting compiled programs (compiling, or loading them from the "
        "cache) to FILE as JSON when the command ends",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser(
        "reproduce",
        help="run every experiment and write REPORT.md",
        description=_plain(reproduce.__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g = p.add_mutually_exclusive_group()
    g.add_argument(
        "--quick",
        action="store_const",
        dest="profile",
        const="quick",
        help="fewer epochs and configs -> results/quick/ (default); about %d min on a 2-core CPU with an "
        "empty compilation cache, %d with a warm one (the bench's compile_cache section)" % reproduce.QUICK_MINUTES,
    )
    g.add_argument(
        "--full",
        action="store_const",
        dest="profile",
        const="full",
        help="the course reports' protocols -> results/ (over an hour on a 2-core CPU)",
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=list(reproduce.EXPERIMENTS),
        metavar="EXPERIMENT",
        help=f"run only these: {', '.join(reproduce.EXPERIMENTS)}",
    )
    p.add_argument("--force", action="store_true", help="rerun finished experiments")
    p.add_argument(
        "--data-dir", default=None, help="TFDS data folder (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)"
    )
    _common(p)

    for exp in reproduce.EXPERIMENTS.values():
        if not exp.cli_name:
            continue
        p = sub.add_parser(
            exp.cli_name,
            aliases=[exp.name] if exp.name != exp.cli_name else [],
            help=exp.what,
            description=f"{exp.what}.",
        )
        C.add_flags(p, exp.config)
        for flag, _, what in exp.flags:
            p.add_argument(flag, action="store_true", help=what)
        _common(p, resumable=exp.resumable)

    p = sub.add_parser(
        "check",
        help="check a hand-written backward: a jaxgd layer or model, or a jax.custom_vjp "
        "/ custom_jvp function (jaxgd.check)",
        description=_plain(_CHECK_HELP),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "target",
        metavar="FILE.py:NAME",
        help="the object to check: NAME in a Python file, or in an importable module (package.module:NAME)",
    )
    p.add_argument("--in-shape", type=_shape, metavar="D,D,...", help="a layer's per-example input shape, e.g. 8,8,3")
    p.add_argument(
        "--args",
        type=_shape,
        nargs="+",
        metavar="SHAPE",
        help="a function's example arguments, as shapes (5 or 3,4; 'scalar' for ()): random normal "
        "arrays drawn with --seed",
    )
    p.add_argument(
        "--example",
        metavar="FACTORY",
        help="a function's example arguments from FACTORY, a function of "
        "no arguments in the same file or module that returns them "
        "(a tuple, or one array)",
    )
    p.add_argument(
        "--dtypes",
        nargs="+",
        default=None,
        choices=["float64", "float32"],
        help="precisions to check in (default: both)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random examples and cotangents")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of text")
    p.add_argument("--quiet", action="store_true", help="print only the report (no closing line on compilation)")

    d = sub.add_parser("data", help="dataset reports and decoded exports").add_subparsers(
        dest="data_command", required=True, metavar="report|export", parser_class=_Parser
    )
    p = d.add_parser(
        "report",
        help="split sizes, class counts, pixel statistics, sample images",
        description=_plain(data_report.__doc__),
    )
    C.add_flags(p, data_report.CONFIG)
    _common(p)
    p = d.add_parser(
        "export",
        help="write decoded datasets to one .npz each, readable without TFDS",
        description=_plain(data.export.__doc__ or ""),
    )
    p.add_argument(
        "datasets",
        nargs="+",
        choices=sorted(data.DATASETS),
        metavar="DATASET",
        help=f"any of {', '.join(sorted(data.DATASETS))}",
    )
    p.add_argument(
        "--to",
        required=True,
        metavar="DIR",
        help="folder to write jaxgd-decoded-<name>.npz into; then pass it as --data-dir (or TFDS_DATA_DIR)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="TFDS data folder to read (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)",
    )
    p.add_argument("--quiet", action="store_true", help="print only the files written")
    return top


_CHECK_HELP = """Check a hand-written backward and say what is wrong with it (jaxgd.check).

NAME is a jaxgd layer or model (give --in-shape for a layer), or a JAX function: a
jax.custom_vjp / custom_jvp rule, a function that calls such rules, or any other (give --args).
Prints the report (or --json) and exits
0 when every gradient is right, 1 when one is wrong, 2 when the target cannot be checked."""


def _shape(text: str) -> tuple:
    """A shape flag's value: '8,8,3' -> (8, 8, 3), 'scalar' -> ()."""
    if text == "scalar":
        return ()
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        dims = ()
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a shape: give positive sizes separated by commas, e.g. 8,8,3 (or 'scalar')"
        )
    return dims


class CheckTargetError(ValueError):
    """``jaxgd check`` cannot load or check what it was given."""


def _load_target(target: str):
    """``FILE.py:NAME`` or ``package.module:NAME`` -> the object (NAME may be dotted)."""
    import importlib
    import importlib.util
    from pathlib import Path

    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise CheckTargetError(f"{target!r}: give FILE.py:NAME or package.module:NAME")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise CheckTargetError(f"{where}: no such file")
            # imported as Python imports a module: registered in sys.modules under its name while it
            # runs (dataclasses and postponed annotations look their module up there)
            name_in = path.stem if path.stem not in sys.modules else f"{path.stem}__jaxgd_check"
            spec = importlib.util.spec_from_file_location(name_in, path)
            assert spec is not None and spec.loader is not None  # a .py path always has a source loader
            module = importlib.util.module_from_spec(spec)
            sys.modules[name_in] = module
            sys.path.insert(0, str(path.resolve().parent))  # its own imports of files beside it
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(name_in, None)
                raise
            finally:
                sys.path.pop(0)
        else:
            module = importlib.import_module(where)
    except CheckTargetError:
        raise
    except SystemExit as e:  # the file calls sys.exit (a script's main guard missing): one line
        raise CheckTargetError(
            f"importing {where} called sys.exit({e.code!r}): guard its script part with if __name__ == '__main__':"
        ) from None
    except Exception as e:  # noqa: BLE001  (the user's file: say what failed, in one line)
        from jaxgd.checker.compare import user_line

        at = user_line(e)
        raise CheckTargetError(
            f"importing {where} failed: {type(e).__name__}: {e}" + (f" (at {at})" if at else "")
        ) from None
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            raise CheckTargetError(f"{where} has no {name!r}")
        obj = getattr(obj, part)
    return obj


def _check(a) -> int:
    """``jaxgd check``: the report of ``jaxgd.check`` on the target, as text or JSON."""
    import numpy as np

    from jaxgd import checker

    obj = _load_target(a.target)
    if isinstance(obj, type):
        raise CheckTargetError(
            f"{a.target} is a class: name an instance of it (e.g. layer = {obj.__name__}(...) in a file)"
        )
    kw = {"seed": a.seed, **({"dtypes": tuple(a.dtypes)} if a.dtypes else {})}
    is_layer = checker.is_layer(obj)
    if checker.custom_rule(obj) is not None or (callable(obj) and not is_layer):
        if a.in_shape is not None:
            raise CheckTargetError(
                f"{a.target} is a function: give its example arguments with --args or --example, not --in-shape"
            )
        if bool(a.args) == bool(a.example):
            raise CheckTargetError(
                f"{a.target} is a function: give its example arguments either "
                "as shapes with --args (e.g. --args 5 or --args 3,4 4) or from a factory with "
                "--example"
            )
        if a.example:
            factory = _load_target(f"{a.target.rpartition(':')[0]}:{a.example}")
            try:
                args = factory()
            except Exception as e:  # the user's factory: one line
                raise CheckTargetError(f"--example {a.example}() failed: {type(e).__name__}: {e}") from e
            args = args if isinstance(args, tuple) else (args,)
        else:
            rng = np.random.default_rng(a.seed)
            args = tuple(rng.standard_normal(s) for s in a.args)
        try:
            report = checker.check(obj, *args, **kw)
        except (TypeError, ValueError) as e:
            raise CheckTargetError(str(e).splitlines()[0]) from e
        except Exception as e:  # noqa: BLE001  (the function itself raised at these arguments)
            from jaxgd.checker.compare import explain

            raise CheckTargetError(f"{a.target} cannot be checked at these arguments: it raised {explain(e)}") from None
    else:
        if a.args or a.example:
            raise CheckTargetError(
                f"{a.target} is not a function: --args and --example are for functions; a layer takes --in-shape"
            )
        if not is_layer:
            raise CheckTargetError(
                f"{a.target} is a {type(obj).__name__}, not a layer (init, forward, backward: see "
                "jaxgd.layers), a models.Model or a function"
            )
        from jaxgd import models

        if a.in_shape is None and not isinstance(obj, models.Model):
            raise CheckTargetError(
                f"{a.target} is a layer: give its per-example input shape with --in-shape (e.g. --in-shape 6 or 8,8,3)"
            )
        try:
            report = checker.check(obj, in_shape=a.in_shape, **kw)
        except (TypeError, ValueError) as e:
            raise CheckTargetError(str(e).splitlines()[0]) from e
        except Exception as e:  # noqa: BLE001  (its forward or init raised: nothing to compare with)
            from jaxgd.checker.compare import explain

            raise CheckTargetError(f"{a.target} cannot be checked: its forward or init raised {explain(e)}") from None
    print(json.dumps(report.as_dict(), indent=1, default=str) if a.json else report)
    return 0 if report.passed else 1


def main(argv=None) -> int:
    import logging

    logging.getLogger("absl").setLevel(logging.ERROR)  # TFDS's warnings: the command says what matters itself
    p = parser()
    a = p.parse_args(argv)
    prog = f"jaxgd {a.command.replace('_', '-')}"
    from jaxgd import compile_cache

    # before any computation; the bench times compiling itself, so it compiles afresh (its compile_cache
    # section runs fresh processes with a cache of their own)
    cache = compile_cache.enable("off" if a.no_compile_cache or a.command == "bench" else a.compile_cache)
    if a.distributed or any(v is not None for v in (a.coordinator, a.num_processes, a.process_id)):
        from jaxgd import parallel

        parallel.initialize(a.coordinator, a.num_processes, a.process_id)  # before any computation
        if not parallel.is_writer():
            a.quiet = True  # process 0 reports
    log = (lambda s: None) if a.quiet else (lambda s: print(s, file=sys.stderr, flush=True))
    clock = compile_cache.CompileClock()
    try:
        with clock:
            rc = _run(a, log)
    except C.ConfigError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)  # the one line a failed command prints
        return 2
    except CheckTargetError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except (DataNotFoundError, CorruptFileError, DataFormatError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    c = clock.as_dict()
    log(
        f"compilation: {c['programs']} programs in {c['compile_s']:.1f} s ({c['cache_loads']} loaded from "
        f"the cache in {c['cache_load_s']:.1f} s; cache {cache or 'off'})"
    )
    if a.compile_report:
        from jaxgd.files import atomic_write

        atomic_write(
            a.compile_report, json.dumps({**c, "cache_dir": cache and str(cache), "peak_rss_mb": peak_rss_mb()})
        )
    return rc


def _run(a, log) -> int:
    from jaxgd.experiments import reproduce
    from jaxgd.report import print_table

    if a.command == "reproduce":
        profile = a.profile or "quick"
        status = reproduce.run_all(profile, a.only, a.force, a.results, a.data_dir, log=log, quiet=a.quiet)
        for name, s in status.items():
            print(f"{name:16s} {s}")
        print(f"report: {reproduce.root(profile, a.results) / 'REPORT.md'}")
        return 0 if all(not s.startswith("FAILED") for s in status.values()) else 1
    if a.command == "check":
        return _check(a)
    if a.command == "data" and a.data_command == "export":
        for name in dict.fromkeys(a.datasets):
            path = data.export(name, a.to, data_dir=a.data_dir)
            print(f"{name}: {path} ({path.stat().st_size / 1e6:.1f} MB)")
        return 0
    if a.command == "data":
        from jaxgd.experiments import data_report

        for res in data_report.run(C.from_flags(data_report.CONFIG, a), out=a.results).values():
            print_table(data_report.summary(res))
        return 0
    exp = next(e for e in reproduce.EXPERIMENTS.values() if a.command in (e.cli_name, e.name))  # a command or alias
    extra = {
        k: v
        for flag, overrides, _ in exp.flags
        if getattr(a, flag.lstrip("-").replace("-", "_"))
        for k, v in overrides.items()
    }
    cfg = C.from_flags(exp.config, a, **extra)
    res = reproduce.run_one(exp.name, cfg, a.results, getattr(a, "force", False), not a.quiet, log)
    from jaxgd import parallel

    if not parallel.is_writer():
        return 0
    print_table(exp.summary(res))
    for note in exp.notes(res, results_root(a.results)):  # Markdown, as REPORT.md shows it
        print("\n" + re.sub(r"</?sub>", "", note))
    return 1 if res.get("all_passed") is False else 0  # a check that failed


if __name__ == "__main__":
    sys.exit(main())
