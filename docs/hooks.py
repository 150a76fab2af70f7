"""mkdocs hooks: the pages of the jaxgd site that are generated from the code and the committed
results, so that none of them can drift from what they describe.

- ``index.md``: the README, its links made site links.
- ``gallery.md``: every entry of ``jaxgd.mistakes`` with its wrong backward's source and what
  ``jaxgd.check`` says of it, checked while the site builds.
- ``cli.md``: every ``jaxgd`` command's ``--help``, from the argparse parser.
- ``speed.md``: the bench's sections, from ``results/bench/*.json`` as REPORT.md tells them.
- ``api/*.md``: one mkdocstrings page per public module; a public name without a docstring stops
  the build.

After the build, MathJax 2 (from the ``jupyter-server-mathjax`` package, Apache-2.0, its LICENSE
copied with it) goes into ``assets/mathjax`` of the site, so that formulas render with no network.
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import io
import re
import shutil
from pathlib import Path

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]

# the API reference: page -> (module, what it is)
API = {
    "jaxgd": ("jaxgd", "the package: check, layers, models, ..."),
    "layers": ("jaxgd.layers", "every layer's forward and hand backward"),
    "conv": ("jaxgd.conv", "the convolution's arithmetic: im2col, the weight and input gradients"),
    "composite": ("jaxgd.composite", "sequences, residual blocks and branches; the pair as a custom_vjp"),
    "attention": ("jaxgd.attention", "scaled dot-product and FlashAttention-2, each with its hand backward"),
    "transformer": ("jaxgd.transformer", "a vision transformer's layers"),
    "models": ("jaxgd.models", "models as lists of layers, and the course reports' models"),
    "losses": ("jaxgd.losses", "each loss beside its derivative"),
    "optim": ("jaxgd.optim", "the hand SGD, its optax twin, parameter groups"),
    "schedules": ("jaxgd.schedules", "learning-rate schedules"),
    "train": ("jaxgd.train", "fit and its parts"),
    "xla": ("jaxgd.xla", "the compiler options jaxgd's own programs take"),
    "checker": ("jaxgd.checker", "jaxgd.check: prove a backward, diagnose a wrong one"),
    "testing": ("jaxgd.testing", "the check inside a test suite"),
    "mistakes": ("jaxgd.mistakes", "the gallery of wrong backwards"),
    "gradcheck": ("jaxgd.gradcheck", "finite differences and the gap to jax.grad"),
    "backprop": ("jaxgd.backprop", "the course reports' derivations"),
    "augment": ("jaxgd.augment", "flips and crops on the device"),
    "data": ("jaxgd.data", "datasets through tensorflow-datasets"),
    "parallel": ("jaxgd.parallel", "devices and hosts"),
    "progress": ("jaxgd.progress", "progress bars and log lines"),
}


def public_names(module) -> list[str]:
    """A module's public names: its ``__all__``, else the functions and classes it defines whose
    names do not start with an underscore."""
    names = getattr(module, "__all__", None)
    if names is not None:
        return list(names)
    return [
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and (inspect.isfunction(v) or inspect.isclass(v))
        and getattr(v, "__module__", None) == module.__name__
    ]


def undocumented(module) -> list[str]:
    """The public names of ``module`` without a docstring of their own (a dataclass's generated
    signature line is not one)."""
    out = []
    for n in public_names(module):
        obj = getattr(module, n)
        doc = obj.__doc__ if (inspect.isclass(obj) or inspect.isfunction(obj)) else "constant"
        if not doc or (inspect.isclass(obj) and doc.startswith(f"{obj.__name__}(")):
            out.append(n)
    return out


def _readme() -> str:
    """The README as the site's home page: links into docs/ become site links."""
    text = (ROOT / "README.md").read_text()
    return re.sub(r"\]\(docs/", "](", text)


def _gallery() -> str:
    import jaxgd
    from jaxgd import mistakes

    lines = [
        "# Gallery of mistakes",
        "",
        "Every entry of `jaxgd.mistakes`, checked by `jaxgd.check` while this page was built: the wrong "
        "backward (a subclass of the right layer that overrides only the mistake, or a custom rule), and the "
        "causes the check printed. The test suite asserts each diagnosis "
        "(`tests/test_checker.py`).",
        "",
    ]
    for m in mistakes.GALLERY:
        report = jaxgd.check(m.layer, m.in_shape, x=m.x())
        cls = type(m.layer)
        lines += [
            f"## {m.name}",
            "",
            f"`{cls.__name__}`, checked on inputs of shape {m.in_shape}: {inspect.getdoc(cls)}",
            "",
            "```python",
            inspect.getsource(cls).rstrip(),
            "```",
            "",
            "What `jaxgd.check` says:",
            "",
            "```text",
            *sorted(set(report.causes())),
            "```",
            "",
        ]
    import numpy as np

    lines += ["## Custom rules (`FUNCTION_GALLERY`)", ""]
    for m in mistakes.FUNCTION_GALLERY:
        report = jaxgd.check(m.f, *m.args(np.random.default_rng(0)))
        lines += [f"### {m.name}", "", "```text", *sorted(set(report.causes())), "```", ""]
    return "\n".join(lines)


def _cli() -> str:
    from jaxgd import cli

    top = cli.parser()
    lines = [
        "# Command reference",
        "",
        "Every command's `--help`, generated from `jaxgd.cli.parser()`; [Commands](commands.md) says what each is for.",
        "",
        "```text",
        top.format_help().rstrip(),
        "```",
        "",
    ]
    sub = next(a for a in top._actions if a.__class__.__name__ == "_SubParsersAction")
    seen = set()
    for name, p in sub.choices.items():
        if id(p) in seen:  # an alias
            continue
        seen.add(id(p))
        lines += [f"## jaxgd {name}", "", "```text", p.format_help().rstrip(), "```", ""]
        inner = [a for a in p._actions if a.__class__.__name__ == "_SubParsersAction"]
        for q_name, q in inner[0].choices.items() if inner else ():
            lines += [f"### jaxgd {name} {q_name}", "", "```text", q.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


def _speed() -> str:
    from jaxgd.experiments import writeup
    from jaxgd.experiments.common import load_json
    from jaxgd.experiments.registry import EXPERIMENTS, result_files

    out = ROOT / "results"
    lines = [
        "# Speed",
        "",
        "The bench's results (`jaxgd bench`), as `results/REPORT.md` tells them, from the committed "
        "JSON: ratios measured side by side in one run, and fractions of the machine's own matmul peak.",
        "",
    ]
    for path, title in result_files("bench", out):
        lines += [f"## {title}", ""] + writeup.section(EXPERIMENTS["bench"], out, load_json(path))
    return re.sub(r"\]\((bench/)", r"](results/\1", "\n".join(lines))


def _api_page(module_name: str, what: str) -> str:
    what = what if what.startswith("jaxgd") else what[0].upper() + what[1:]  # a name keeps its case
    return f"# `{module_name}`\n\n{what}.\n\n::: {module_name}\n"


def on_files(files, config):
    missing = {}
    for _page, (module_name, _) in API.items():
        bad = undocumented(importlib.import_module(module_name))
        if bad:
            missing[module_name] = bad
    if missing:
        raise PluginError(
            "public names without a docstring: " + "; ".join(f"{m}: {', '.join(n)}" for m, n in missing.items())
        )
    with contextlib.redirect_stdout(io.StringIO()):
        pages = {"index.md": _readme(), "gallery.md": _gallery(), "cli.md": _cli(), "speed.md": _speed()}
    pages.update({f"api/{page}.md": _api_page(m, what) for page, (m, what) in API.items()})
    for uri, text in pages.items():
        files.append(File.generated(config, uri, content=text))
    return files


def on_post_build(config):
    import jupyter_server_mathjax

    static = Path(jupyter_server_mathjax.__file__).parent / "static"
    shutil.copytree(static, Path(config["site_dir"]) / "assets" / "mathjax", dirs_exist_ok=True)
