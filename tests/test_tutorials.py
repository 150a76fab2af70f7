"""The tutorials (tutorials/*.py, jupytext percent notebooks) run end to end, as a user runs them,
and their final checks say what their text says: each runs in a fresh Python process (some turn
on float64 for the whole process, as a notebook would) and hands back its ``CHECKS``."""

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_real_data

ROOT = Path(__file__).parents[1]
TUTORIALS = sorted((ROOT / "tutorials").glob("[0-9][0-9]_*.py"))
RUN = (
    "import json, runpy, sys; ns = runpy.run_path(sys.argv[1], run_name='__main__'); "
    "print('CHECKS=' + json.dumps(ns['CHECKS']))"
)


def run_tutorial(name):
    path = ROOT / "tutorials" / name
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}  # figures drawn, not shown
    r = subprocess.run(
        [sys.executable, "-c", RUN, str(path)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT / "tutorials",
        timeout=900,
    )
    assert r.returncode == 0, f"{name} failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return json.loads(r.stdout.rsplit("CHECKS=", 1)[1]), r.stdout


def test_the_series_is_seven_tutorials_in_order_each_linked_from_the_last():
    assert [p.name[:2] for p in TUTORIALS] == ["01", "02", "03", "04", "05", "06", "07"]
    for this, nxt in itertools.pairwise(TUTORIALS):
        assert f"]({nxt.name})" in this.read_text(), f"{this.name} does not lead to {nxt.name}"
    readme = (ROOT / "README.md").read_text()
    assert "](tutorials/01_chain_rule.py)" in readme and "](tutorials/README.md)" in readme
    index = (ROOT / "tutorials" / "README.md").read_text()
    assert all(f"]({p.name})" in index for p in TUTORIALS)


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.stem)
def test_each_tutorial_is_a_notebook_whose_links_exist(path):
    """jupytext reads it as a notebook (markdown and code cells, a python3 kernel), and every
    relative link in its text points at a file of this repository."""
    import jupytext  # in the test extra; the tutorials themselves run without it

    nb = jupytext.read(path)
    kinds = [c.cell_type for c in nb.cells]
    assert kinds[0] == "markdown" and nb.cells[0].source.startswith(f"# {int(path.name[:2])}.")
    assert kinds.count("markdown") >= 4 and kinds.count("code") >= 4
    assert nb.metadata["kernelspec"]["name"] == "python3"
    for link in re.findall(r"\]\(([^)#:]+)\)", path.read_text()):
        assert (path.parent / link).exists(), f"{path.name} links to {link}, which does not exist"


def test_01_chain_rule():
    c, _ = run_tutorial("01_chain_rule.py")
    assert c["vs_autodiff"] < 1e-12 and c["vs_finite_differences"] < 1e-6  # INF265's bar
    assert c["descent_gap"] < 1e-12 and c["loss_ratio"] < 1e-2


def test_02_mlp_backward():
    c, _ = run_tutorial("02_mlp_backward.py")
    assert max(c.values()) < 1e-12, c  # recursion == jax.grad == INF265's == the layers' == DD2424's


def test_03_your_own_layer():
    c, _out = run_tutorial("03_your_own_layer.py")
    assert not c["hasty_passed"] and c["leaky_passed"] and c["fixed_passed"]
    assert c["conv_7x7_passed"] and not c["conv_8x8_passed"]
    assert any("coordinates wrong" in s and "hand 0" in s for s in c["hasty_causes"])  # the text reads this
    assert any("wrong shape: (3, 7, 7, 2) instead of (3, 8, 8, 2)" in s for s in c["conv_8x8_causes"])
    assert any("error is in dx only" in s for s in c["conv_8x8_causes"])
    assert not c["gelu_passed"] and c["gelu_fixed_passed"]  # the custom_vjp section: its forgotten term, named
    assert any("that term of the derivative forgotten" in s and "x phi(x)" in s for s in c["gelu_causes"])


def test_04_sgd_by_hand():
    c, _ = run_tutorial("04_sgd_by_hand.py")
    for name, gap in c["gaps"].items():
        assert (gap is None and name.startswith("torch")) or gap < 1e-12, (name, gap)
    f = c["final_loss"]  # the plot's story: Nesterov < momentum < plain SGD on the valley
    assert f["Nesterov 0.9"] < f["momentum 0.9"] < f["plain SGD"]


def test_05_compiled_epoch():
    require_real_data("cifar2")
    c, _ = run_tutorial("05_compiled_epoch.py")
    assert c["loop_vs_epoch"] < 1e-6 and c["eager_vs_epoch"] < 1e-5
    assert c["grid_vs_alone"] == 0.0  # the text says so: lax.map on a CPU runs each config as alone


def test_06_batchnorm_dropout():
    c, _ = run_tutorial("06_batchnorm_dropout.py")
    assert max(c["gaps"].values()) < 1e-12 and c["ones_cotangent_dx"] < 1e-12
    assert c["batch_norm_passed"] and c["dropout_passed"]
    assert abs(c["running_mean"] - 3) < 0.3 and abs(c["running_var"] - 4) < 0.8
    assert c["dropout_mean_error"] < 0.1


def test_07_attention_by_hand():
    c, _ = run_tutorial("07_attention_by_hand.py")
    assert c["hand_vs_vjp"] < 1e-12 and c["d_forms"] < 1e-12 and c["flash_vs_vjp"] < 1e-12
    assert c["plain_passed"] and c["flash_passed"] and not c["wrong_passed"]
    assert any("coupling term dropped" in s for s in c["wrong_causes"])
    assert c["grad_growth"] > 3.5 and c["flash_growth"] < 2.5  # n^2 against n, as the text says
