"""The user surface: the ``jaxgd`` command, progress bars, and the README's Python examples."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import require_real_data

from jaxgd import cli, draws, progress
from jaxgd.experiments import reproduce

README = Path(__file__).parents[1] / "README.md"


def test_jaxgd_is_on_path_and_python_m_works():
    exe = shutil.which("jaxgd")
    assert exe is not None, "pip install -e . must put the jaxgd command on PATH"
    for cmd in ([exe, "--help"], [sys.executable, "-m", "jaxgd", "--help"]):
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and "reproduce" in r.stdout and "mnist-zoo" in r.stdout, r


def test_one_version_from_the_package_metadata(capsys):
    import importlib.metadata

    import jaxgd

    assert jaxgd.__version__ == importlib.metadata.version("jaxgd")  # pyproject.toml's, as installed
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"jaxgd {jaxgd.__version__}"


COMMANDS = {e.cli_name: e.what for e in reproduce.EXPERIMENTS.values() if e.cli_name}


@pytest.mark.parametrize("argv", [["reproduce"], ["data", "report"], ["data", "export"]] + [[c] for c in COMMANDS])
def test_every_subcommand_has_help_with_defaults(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv + ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "``" not in out and "Returns" not in out  # plain text, not a docstring's markup
    if argv[0] in COMMANDS:  # the one-line description, said once
        assert " ".join(out.split()).count(" ".join(COMMANDS[argv[0]].split()[:4])) == 1, out
    if argv[:2] == ["data", "export"]:
        return
    assert "--results" in out and "--quiet" in out
    if argv[0] not in ("reproduce",):
        assert "(default: " in out  # generated from the experiment's typed config


def test_data_export_writes_what_load_reads_without_tfds(tmp_path, capsys):
    require_real_data("mnist", tfds=True)
    from jaxgd import data

    assert cli.main(["data", "export", "mnist", "--to", str(tmp_path)]) == 0
    assert "jaxgd-decoded-mnist.npz" in capsys.readouterr().out
    got, want = data.load("mnist", data_dir=tmp_path, val_size=5000), data.load("mnist", val_size=5000)
    assert got.info["source"] == str(tmp_path / "jaxgd-decoded-mnist.npz")
    np.testing.assert_array_equal(got.val.x, want.val.x)
    np.testing.assert_array_equal(got.test.y, want.test.y)
    with pytest.raises(SystemExit) as e:
        cli.main(["data", "export", "svhn", "--to", str(tmp_path)])
    assert e.value.code == 2


def test_flags_come_from_the_config():
    from jaxgd.experiments import cifar2, config

    p = cli.parser()
    a = p.parse_args(["cifar2", "--epochs", "3", "--grid", "0.01,0.9,0", "0.02,0,0.001", "--train-size", "100"])
    cfg = config.from_flags(cifar2.CONFIG, a)
    assert cfg == cifar2.CONFIG.make({"epochs": 3, "grid": [(0.01, 0.9, 0.0), (0.02, 0.0, 0.001)], "train_size": 100})
    assert config.from_flags(cifar2.CONFIG, p.parse_args(["cifar2"])) == cifar2.CONFIG()  # the defaults


def test_progress_is_off_when_not_a_terminal(monkeypatch):
    monkeypatch.delenv("JAXGD_PROGRESS", raising=False)
    assert not sys.stderr.isatty() or pytest.skip("stderr is a terminal here")
    assert not progress.enabled() and progress.bar(3, "x").disable
    monkeypatch.setenv("JAXGD_PROGRESS", "1")
    assert progress.enabled() and not progress.enabled(quiet=True)


def test_epoch_lines_name_the_held_out_set(monkeypatch):
    monkeypatch.setenv("JAXGD_PROGRESS", "0")
    lines = []
    show = progress.epoch_logger("x", 2, log=lines.append, val_name="test")
    show(
        {
            "epoch": 1,
            "epochs": 2,
            "train_loss": 0.5,
            "train_acc": 0.8,
            "val_loss": 0.25,
            "val_acc": [0.9, 0.95],
            "epoch_time": 1.0,
        }
    )
    show.close()
    assert lines == ["[x] epoch   1/2  train_loss 0.5  train_acc 0.8  test_loss 0.25  test_acc 0.9..0.95  1.00s"]
    quiet = progress.epoch_logger("x", 2, quiet=True, log=lines.append)
    quiet(
        {
            "epoch": 2,
            "epochs": 2,
            "train_loss": 0.5,
            "train_acc": 0.8,
            "val_loss": 0.25,
            "val_acc": 0.9,
            "epoch_time": 1.0,
        }
    )
    assert len(lines) == 1  # quiet: no bar and no line


def test_a_non_interactive_run_draws_no_bar(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "JAXGD_PROGRESS"}
    r = subprocess.run(
        [sys.executable, "-m", "jaxgd", "matrix-chain", "--Ks", "2", "--iters", "5", "--results", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr and "%|" not in r.stderr and "max |hand - autodiff|" in r.stdout


def test_results_are_identical_with_and_without_progress_bars(tmp_path, monkeypatch):
    require_real_data("mnist")
    from jaxgd.experiments import mnist_zoo

    cfg = {
        "models": ["softmax/dropout", "mlp/batchnorm"],
        "epochs": 2,
        "train_size": 512,
        "batch_size": 64,
        "compare_epoch": False,
    }
    runs = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("JAXGD_PROGRESS", mode)
        runs[mode] = mnist_zoo.run(cfg, out=tmp_path / mode, verbose=True, log=lambda s: None)
    drop = ("epoch_time_s", "compile_time_s")
    for name in cfg["models"]:
        a, b = ({k: v for k, v in runs[m]["models"][name].items() if k not in drop} for m in ("1", "0"))
        assert a == b, name
    assert (tmp_path / "1" / "mnist" / "results.json").exists() and (tmp_path / "0" / "mnist" / "results.json").exists()


def test_fit_reports_progress_and_prints_nothing(capsys):
    from jaxgd import models, optim, train

    model = models.mlp((4, 8, 3))
    params, _ = model.init(jax.random.PRNGKey(0))
    x = np.asarray(draws.normal(jax.random.PRNGKey(1), (64, 4)))
    y = np.arange(64) % 3
    seen = []
    train.fit(
        model, params, (x, y), (x, y), hparams=optim.sgd_hyperparams(0.1), epochs=3, batch_size=16, progress=seen.append
    )
    assert [m["epoch"] for m in seen] == [1, 2, 3] and all(m["epochs"] == 3 for m in seen)
    assert set(seen[0]) == {"epoch", "epochs", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time"}
    assert capsys.readouterr() == ("", "")


def python_blocks(page):
    return re.findall(r"```python\n(.*?)```", page.read_text(), re.S)


def test_readme_examples_run(monkeypatch):
    """Every Python block of the guide's pages (docs/), in order, one namespace per page, as pasted;
    on real data cut to a tiny slice and one epoch, so that none can drift from the code. The
    README's blocks are blocks of those pages, word for word (so they run here too)."""
    require_real_data("cifar2")
    require_real_data("mnist")
    from jaxgd import data, train

    load, fit = data.load, train.fit

    def small(*a, **k):  # a tiny slice: 256 training images, at most 512 validation and test ones
        d = load(*a, **{**k, "train_size": 256})
        cut = lambda s: type(s)(s.x[:512], s.y[:512])
        return d._replace(val=cut(d.val), test=cut(d.test))

    monkeypatch.setattr(data, "load", small)
    monkeypatch.setattr(train, "fit", lambda *a, **k: fit(*a, **{**k, "epochs": 1}))
    docs = sorted(README.parent.glob("docs/*.md"))
    in_docs = {b for page in docs for b in python_blocks(page)}
    assert python_blocks(README) and all(b in in_docs for b in python_blocks(README))
    pages = {}
    for page in docs:
        ns = pages[page.name] = {}
        for i, block in enumerate(python_blocks(page)):
            exec(compile(block, f"{page.name} python block {i + 1}", "exec"), ns)
    # what the blocks say they compute, they compute
    ns = pages["api.md"]
    hist = ns["hist"]  # "fit, taken apart": two configs as one program, 2 epochs (run_epochs is not cut)
    assert np.shape(hist.train_loss) == (2, 2) and np.all(np.isfinite(hist.train_loss))
    assert ns["out_shape"] == (28, 28, 8) and ns["dx"].shape == ns["x"].shape  # a layer on its own
    assert jax.tree_util.tree_structure(ns["dp"]) == jax.tree_util.tree_structure(ns["p"])


def test_a_full_profile_only_experiment_in_the_quick_profile_is_one_line(tmp_path, capsys):
    """Not a traceback, and the command it suggests exists."""
    assert cli.main(["reproduce", "--quick", "--only", "airbench", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "jaxgd reproduce --full --only airbench" in err[0], err
    cli.parser().parse_args(["reproduce", "--full", "--only", "airbench"])  # the suggested flags parse


def test_a_grid_value_with_a_minus_sign_is_a_value_not_a_flag(capsys):
    """argparse read "-0.01,0.9,0" as a flag ("expected at least one argument"); the value's own
    check must answer, as it does for --grid=-0.01,0.9,0."""
    for argv in (["cifar2", "--grid", "-0.01,0.9,0"], ["cifar2", "--grid=-0.01,0.9,0"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "learning rate must be finite and > 0, got -0.01" in err[0], err


def test_a_long_loop_says_each_item_in_a_log(monkeypatch):
    """In a log (no terminal, so no bar) a loop such as the gradient checks prints a line per item
    with an estimate of what is left, instead of sitting silent for minutes (gradcheck.run uses it)."""
    monkeypatch.setenv("JAXGD_PROGRESS", "0")
    lines = []
    seen = list(progress.items(["a", "b", "c"], "gradient checks", log=lines.append, name=str.upper))
    assert seen == ["a", "b", "c"] and len(lines) == 3
    assert lines[0].startswith("[gradient checks] 1/3 A done, ") and lines[2].endswith("about 0 s left")
    assert not list(progress.items([], "x", log=lines.append)) and len(lines) == 3
    quiet = []
    list(progress.items(["a"], "x", quiet=True, log=quiet.append))
    assert quiet == []


CHECK_FILE = """
import jax
import jax.numpy as jnp
from jaxgd import layers, mistakes

dense = layers.dense(4)
transposed = mistakes.DenseTransposed(5)


@jax.custom_vjp
def safe_norm(x):
    return jnp.sqrt(jnp.sum(x ** 2))


def _fwd(x):
    n = safe_norm(x)
    return n, (x, n)


def _bwd(res, g):
    x, n = res
    return (2 * g * x / n,)  # wrong: d|x|/dx is x / |x|


safe_norm.defvjp(_fwd, _bwd)
not_a_layer = 3


def norm_example():
    return (jnp.arange(1.0, 6.0),)


def broken_example():
    raise RuntimeError("no data here")
"""


def test_check_command_checks_a_layer_and_a_custom_vjp_from_a_file(tmp_path, capsys):
    import json

    f = tmp_path / "mine.py"
    f.write_text(CHECK_FILE)
    assert cli.main(["--no-compile-cache", "check", f"{f}:dense", "--in-shape", "3", "--dtypes", "float64"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(": PASSED")
    # the gallery's square transposed weight gradient: wrong, and said to be transposed
    assert cli.main(["--no-compile-cache", "check", f"{f}:transposed", "--in-shape", "5", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] is False
    assert any(
        f["where"].startswith("param W (train") and f["kind"] == "cause" and f["cause"].startswith("transposed")
        for f in report["findings"]
    ), report
    assert cli.main(["--no-compile-cache", "check", f"{f}:safe_norm", "--args", "5"]) == 1
    assert "constant factor 2" in capsys.readouterr().out
    assert cli.main(["--no-compile-cache", "check", f"{f}:safe_norm", "--example", "norm_example", "--quiet"]) == 1
    assert "at arguments of shapes (5,)" in capsys.readouterr().out


FUTURE_FILE = """
from __future__ import annotations

import dataclasses

from jaxgd import layers


@dataclasses.dataclass(frozen=True)
class Double(layers.Layer):
    factor: float = 2.0

    def forward(self, params, state, x, *, train=False, key=None):
        return self.factor * x, state, None

    def backward(self, params, res, dy):
        return {}, self.factor * dy


class Broken(layers.Dense):
    def backward(self, params, x, dy):
        return {"W": x.T @ dy, "b": dy.sum(0)}, dy @ params["W"]  # W where W^T belongs


double = Double()
broken = Broken(3)
"""


def test_check_command_imports_a_file_as_python_does_and_a_raising_backward_is_wrong(tmp_path, capsys):
    """A file in jaxgd's own style (postponed annotations, a dataclass layer) checks from the
    command line; a backward that raises is a wrong backward (exit 1, its line in the report),
    not a target that cannot be checked."""
    f = tmp_path / "future_style.py"
    f.write_text(FUTURE_FILE)
    assert cli.main(["--no-compile-cache", "check", f"{f}:double", "--in-shape", "3", "--dtypes", "float64"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(": PASSED")
    assert cli.main(["--no-compile-cache", "check", f"{f}:broken", "--in-shape", "5", "--dtypes", "float64"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "the backward raised" in out and "future_style.py" in out, out


@pytest.mark.parametrize(
    "argv, says",
    [
        (["{exits}:x"], "called sys.exit(3)"),
        (["{f}:nope", "--in-shape", "3"], "has no 'nope'"),
        (["{d}/missing.py:x"], "no such file"),
        (["{f}"], "give FILE.py:NAME"),
        (["{f}:dense"], "give its per-example input shape with --in-shape"),
        (["{f}:safe_norm"], "give its example arguments"),
        (["{f}:safe_norm", "--in-shape", "3"], "not --in-shape"),
        (["{f}:dense", "--args", "3"], "--args and --example are for"),
        (["{f}:safe_norm", "--args", "5", "--example", "norm_example"], "either as shapes"),
        (["{f}:safe_norm", "--example", "broken_example"], "--example broken_example() failed: RuntimeError: no data"),
        (["{f}:safe_norm", "--example", "nothing"], "has no 'nothing'"),
        (["{f}:not_a_layer", "--in-shape", "3"], "is a int, not a layer"),
        (["jaxgd.mistakes:GALLERY", "--in-shape", "3"], "is a tuple, not a layer"),
        (["jax.numpy:sin", "--in-shape", "3"], "is a function: give its example arguments"),
        (["jax.nn:glu", "--args", "3,5"], "cannot be checked at these arguments: it raised"),
        (["{bad}:x"], "importing"),
        (["{f}:dense", "--in-shape", "0,3"], "is not a shape"),
        (["jaxgd.mistakes:DenseOneEntryOff", "--in-shape", "4"], "is a class"),
    ],
)
def test_check_command_refuses_what_it_cannot_check_in_one_line(tmp_path, capsys, argv, says):
    f, bad = tmp_path / "mine.py", tmp_path / "broken.py"
    f.write_text(CHECK_FILE)
    bad.write_text("import no_such_module_here\n")
    exits = tmp_path / "script.py"
    exits.write_text("import sys\nsys.exit(3)\n")
    argv = [a.format(f=f, d=tmp_path, bad=bad, exits=exits) for a in argv]
    try:
        rc = cli.main(["--no-compile-cache", "check"] + argv)
    except SystemExit as e:  # argparse's own refusals
        rc = e.code
    err = capsys.readouterr().err
    assert rc == 2 and says in err and len(err.strip().splitlines()) == 1, err


LOSS_FILE = """
import jax
import jax.numpy as jnp


@jax.custom_vjp
def clip_grad(x):
    return x


clip_grad.defvjp(lambda x: (x, None), lambda _, g: (2 * g,))  # wrong: the identity's cotangent doubled


def loss(x, w):
    return jnp.sum(jnp.tanh(clip_grad(x @ w)) ** 2)
"""


def test_check_command_checks_any_function_and_names_the_wrong_rule_inside(tmp_path, capsys):
    f = tmp_path / "losses.py"
    f.write_text(LOSS_FILE)
    assert cli.main(["--no-compile-cache", "check", f"{f}:loss", "--args", "3,4", "4,2", "--dtypes", "float64"]) == 1
    out = capsys.readouterr().out
    assert "this rule is wrong: custom_vjp clip_grad (defined at losses.py:6; called at losses.py:15" in out, out
    assert cli.main(["--no-compile-cache", "check", "jax.nn:softmax", "--args", "3,5"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith(": PASSED")
