"""Typed experiment configs: one frozen dataclass per experiment is the single source of its
defaults, its checks and its command-line flags.

A config is built from a dict (``Config.make({"epochs": 5})``), rejects keys it does not know
and values of the wrong type or range with one message naming the field, and turns lists into
tuples and ``pathlib.Path`` into ``str`` so that it hashes and serialises. ``add_flags`` makes
an ``argparse`` flag of every field (``--batch-size``), with the field's help, choices and
default, and ``from_flags`` builds the config back from the parsed flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import types
import typing
from collections.abc import Mapping

import numpy as np


class ConfigError(ValueError):
    """A config key or value is not what the experiment accepts."""


def option(default, help, *, choices=None, check=None, metavar=None, shown=None):
    """A config field: its ``default``, a ``help`` line (with units), the allowed ``choices`` and a
    ``check`` ``(predicate, "must be ...")``, both applied to each element of a tuple field; the
    flag's ``metavar`` and how ``--help`` shows the default (``shown``)."""
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "check": check, "metavar": metavar, "shown": shown}
    )


def at_least(lo):
    return (lambda v: v >= lo), f">= {lo}"


POSITIVE = ((lambda v: v > 0), "> 0")
NON_NEGATIVE = at_least(0)


def data_dir_option():
    """The ``data_dir`` field every data experiment has."""
    return option(None, "TFDS data folder (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)")


def warmup_option():
    """The ``warmup`` field of the improved protocols (``recipes.improved_schedule``)."""
    return option(
        0.05, "fraction of the steps of linear warm-up before the cosine", check=((lambda v: 0 <= v < 1), "in [0, 1)")
    )


def _unwrap_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
        raise TypeError(f"unsupported config type {tp}")
    return tp, False


def _describe(tp) -> str:
    tp, optional = _unwrap_optional(tp)
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        s = (
            f"a list of {_describe(args[0])}"
            if len(args) == 2 and args[1] is Ellipsis
            else f"a list of {len(args)} ({', '.join(_describe(a) for a in args)})"
        )
    else:
        s = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string"}[tp]
    return s + " or None" if optional else s


def _coerce(value, tp, where):
    tp, optional = _unwrap_optional(tp)
    if value is None and optional:
        return None
    bad = ConfigError(f"{where} must be {_describe(tp)}{' or None' if optional else ''}, got {value!r}")
    if typing.get_origin(tp) is tuple:
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple, np.ndarray)):
            raise bad
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise bad
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
    elif tp is int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            return int(value)
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
            if math.isfinite(float(value)):
                return float(value)
    elif tp is str:
        if isinstance(value, (str, os.PathLike)):
            return os.fspath(value)
    else:
        raise TypeError(f"unsupported config type {tp}")
    raise bad


def _each(value):
    return value if isinstance(value, tuple) else (value,)


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every experiment's config (a frozen dataclass)."""

    NAME: typing.ClassVar[str] = "experiment"

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            where = f"{self.NAME} config {f.name!r}"
            v = _coerce(getattr(self, f.name), hints[f.name], where)
            choices, check = f.metadata.get("choices"), f.metadata.get("check")
            for item in () if v is None else _each(v):
                if choices is not None and item not in choices:
                    raise ConfigError(f"{where}: {item!r} is not one of {list(choices)}")
                if check is not None and not check[0](item):
                    raise ConfigError(f"{where} must be {check[1]}, got {item!r}")
            object.__setattr__(self, f.name, v)
        try:
            self.validate()
        except ConfigError:
            raise
        except ValueError as e:  # a library check (e.g. optim.sgd_hyperparams) said what is wrong
            raise ConfigError(f"{self.NAME} config: {e}") from None

    def validate(self):
        """Checks across fields (subclasses); raise ``ConfigError``."""

    @classmethod
    def make(cls, config=None, **overrides):
        """``config`` as this class: ``None`` (the defaults), an instance, or a dict of some fields."""
        if config is None:
            config = {}
        if isinstance(config, cls):
            return dataclasses.replace(config, **overrides) if overrides else config
        if not isinstance(config, Mapping):
            raise ConfigError(f"{cls.NAME} config must be a {cls.__name__} or a dict, got {type(config).__name__}")
        config = {**config, **overrides}
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(config) - set(names), key=str)
        if unknown:
            raise ConfigError(
                f"unknown {cls.NAME} config key{'s' * (len(unknown) > 1)} "
                f"{', '.join(map(repr, unknown))}; the keys are: {', '.join(names)}"
            )
        return cls(**config)

    def to_dict(self) -> dict:
        """The config as plain JSON values (tuples become lists)."""

        def plain(v):
            return [plain(x) for x in v] if isinstance(v, tuple) else v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


# ------------------------------------------------------------------------------------------
# command-line flags


def _parse_tuple(args, name):
    def parse(s):
        parts = [p for p in s.replace(" ", "").split(",") if p]
        if len(parts) != len(args):
            raise argparse.ArgumentTypeError(f"{name} takes {len(args)} comma-separated values, got {s!r}")
        return tuple(_scalar_type(a)(p) for a, p in zip(args, parts))

    parse.__name__ = f"{len(args)} comma-separated values"
    return parse


def _scalar_type(tp):
    if typing.get_origin(tp) is tuple:
        return _parse_tuple(typing.get_args(tp), "a value")
    return {int: int, float: float, str: str}[tp]


def add_flags(parser: argparse.ArgumentParser, cls, skip=()):
    """One flag per field of ``cls``: ``--field-name``, with its help, default and choices.
    Flags not given stay out of the parsed namespace, so the dataclass's defaults apply."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        tp, _optional = _unwrap_optional(hints[f.name])
        shown = f.metadata.get("shown") or (
            " ".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
        )
        kw = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f.metadata["help"] + ("" if f.default is None else f" (default: {shown})"),
        }
        for k in ("choices", "metavar"):
            if f.metadata.get(k) is not None:
                kw[k] = list(f.metadata[k]) if k == "choices" else f.metadata[k]
        flag = "--" + f.name.replace("_", "-")
        if tp is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            continue
        if typing.get_origin(tp) is tuple and typing.get_args(tp)[-1] is Ellipsis:
            kw.update(nargs="+", type=_scalar_type(typing.get_args(tp)[0]))
        else:
            kw["type"] = _scalar_type(tp)
        parser.add_argument(flag, **kw)


def from_flags(cls, namespace: argparse.Namespace, **overrides):
    """The config of the flags given on the command line (the rest: defaults)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls.make({k: v for k, v in vars(namespace).items() if k in names}, **overrides)
