"""Experiments end to end on small slices of the real data."""
import pytest

from conftest import require_real_data
from jaxgd.experiments import cifar2


def test_cifar2_grid_resumes_and_marks_divergence(tmp_path):
    require_real_data("cifar2")
    cfg = {"epochs": 2, "batch_size": 50, "train_size": 600, "chunk": 2,
           "grid": [(0.01, 0.9, 0.001), (50.0, 0.9, 0.0)]}
    logs = []
    res = cifar2.run(cfg, out=tmp_path, log=logs.append)
    assert res["grid"]["lr=50 momentum=0.9 wd=0"]["diverged_at_epoch"] is not None
    assert res["best"]["label"] == "lr=0.01 momentum=0.9 wd=0.001" and res["best"]["reproduces_grid_run"]
    assert res["hand_vs_optax"]["max_abs_loss_curve_diff"] < 1e-4
    assert 0.5 < res["best"]["test_acc"] <= 1 and sum(map(sum, res["best"]["confusion_matrix"])) == 2000
    for f in ("results.json", "curves.png", "hand_vs_optax.png", "confusion_test.png", "misclassified_test.png"):
        assert (tmp_path / "cifar2" / f).stat().st_size > 0
    # a second run with one more config trains only the new one
    logs.clear()
    cifar2.run({**cfg, "grid": cfg["grid"] + [(0.02, 0.0, 0.0)]}, out=tmp_path, log=logs.append)
    assert any("resuming: 2 finished" in line for line in logs)
    assert any("configs 3..3 of 3" in line for line in logs)


def test_cifar2_bad_grid_fails_before_training():
    with pytest.raises(ValueError, match="momentum"):
        cifar2.run({"grid": [(0.01, 1.5, 0.0)]}, out=False)
