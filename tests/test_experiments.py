"""Experiments end to end on small slices of the real data."""

import dataclasses
import json

import jax
import pytest
from conftest import require_peer, require_real_data

from jaxgd.compile_cache import CompileClock
from jaxgd.experiments import cifar2


def test_cifar2_grid_resumes_and_marks_divergence(tmp_path):
    require_real_data("cifar2")
    cfg = {"epochs": 2, "batch_size": 50, "train_size": 600, "chunk": 2, "grid": [(0.01, 0.9, 0.001), (50.0, 0.9, 0.0)]}
    logs = []
    res = cifar2.run(cfg, out=tmp_path, log=logs.append)
    assert res["grid"]["lr=50 momentum=0.9 wd=0"]["diverged_at_epoch"] is not None
    assert res["best"]["label"] == "lr=0.01 momentum=0.9 wd=0.001", res["best"]
    grid_acc, retrain_acc = res["best"]["grid_vs_retrain_val_acc"]
    if jax.default_backend() == "cpu":  # lax.map: each config computes exactly as alone
        assert res["best"]["reproduces_grid_run"] and grid_acc == retrain_acc
    else:  # vmapped configs round differently from one alone: at most a few validation images flip
        assert abs(grid_acc - retrain_acc) <= 3 / res["data"]["sizes"]["val"], (grid_acc, retrain_acc)
    assert res["hand_vs_optax"]["max_abs_loss_curve_diff"] < 1e-4, res["hand_vs_optax"]["max_abs_loss_curve_diff"]
    assert 0.5 < res["best"]["test_acc"] <= 1 and sum(map(sum, res["best"]["confusion_matrix"])) == 2000
    for f in ("results.json", "curves.png", "hand_vs_optax.png", "confusion_test.png", "misclassified_test.png"):
        assert (tmp_path / "cifar2" / f).stat().st_size > 0
    # a second run with one more config trains only the new one
    logs.clear()
    cifar2.run({**cfg, "grid": cfg["grid"] + [(0.02, 0.0, 0.0)]}, out=tmp_path, log=logs.append)
    assert any("resuming: 2 finished" in line for line in logs)
    assert any("configs 3..3 of 3" in line for line in logs)


def test_cifar2_labels_tell_close_configs_apart():
    """The label is the grid's resume key: configs closer than %g's 6 digits collided, and one
    config's result stood for the other's."""
    assert cifar2.label((0.01, 0.9, 0.0)) == "lr=0.01 momentum=0.9 wd=0"  # the committed labels stay
    close = [(0.01, 0.9, 0.0), (0.0100001, 0.9, 0.0), (0.01, 0.9, 1e-9), (0.01, 0.9000001, 0.0)]
    assert len({cifar2.label(g) for g in close}) == len(close)
    assert all(float(cifar2.label(g).split()[0][3:]) == g[0] for g in close)


def test_cifar2_bad_grid_fails_before_training():
    with pytest.raises(ValueError, match="momentum"):
        cifar2.run({"grid": [(0.01, 1.5, 0.0)]}, out=False)


def test_readme_results_match_the_json():
    """The README's results block is exactly what the committed results/*.json generate."""
    from pathlib import Path

    from jaxgd.experiments import writeup

    repo = Path(__file__).parents[1]
    block = (repo / "README.md").read_text().split("<!-- results:start -->")[1].split("<!-- results:end -->")[0]
    assert block.strip() == writeup.readme_results(repo / "results").strip()


def test_quick_profile_end_to_end_on_tiny_slices(tmp_path, monkeypatch):
    require_real_data("cifar10")
    from jaxgd.experiments import reproduce, timing

    small = {
        "gradcheck": {"quick": True, "only": ["mlp-mixed-ce", "layer-maxpool2"]},
        "matrix_chain": {"Ks": [2, 4], "iters": 20},
        "cifar2": {"grid": [(0.01, 0.9, 0.0)], "epochs": 1, "train_size": 300, "batch_size": 50},
        "cifar10_softmax": {"settings": ["B"], "epochs": 1, "n_train": 500, "n_val": 500},
        "cifar2_improved": {"epochs": 1, "lrs": (0.01,), "seeds": (0, 1), "train_size": 300, "batch_size": 50},
        "cifar10_improved": {
            "epochs": 1,
            "lrs": (0.003,),
            "weight_decays": (1e-4, 1e-3),
            "n_val": 49_000,
        },  # 1,000 train
        "mnist_zoo": {"epochs": 1, "train_size": 256, "batch_size": 64, "models": ["softmax/plain", "mlp/batchnorm"]},
        "mnist_improved": {
            "softmax_epochs": 2,
            "cnn_epochs": 1,
            "train_size": 256,
            "batch_size": 64,
            "seeds": (0, 1),
            "models": ["softmax/dropout", "cnn/batchnorm"],
        },
        "resnet": {
            "datasets": ("cifar2",),
            "cifar2_epochs": 1,
            "cifar2_seeds": (0, 1),
            "train_size": 256,
            "batch_size": 64,
            "widths": (4, 8),
        },
        "vit": {
            "datasets": ("mnist",),
            "mnist_epochs": 1,
            "mnist_seeds": (0, 1),
            "train_size": 256,
            "batch_size": 64,
            "dim": 16,
            "depth": 1,
            "heads": 2,
            "mlp_dim": 32,
        },
        "bench": {
            "repeats": 1,
            "sections": ("matmul", "mlp_epoch"),
            "batch_sizes": (256,),
            "n_mlp": 512,
            "matmul_sizes": (64, 128),
            "torch": False,
            "eager": False,
        },
    }
    for name, cfg in small.items():
        monkeypatch.setitem(reproduce.EXPERIMENTS, name, dataclasses.replace(reproduce.EXPERIMENTS[name], quick=cfg))
    status = reproduce.run_all("quick", only=list(small), base=tmp_path, log=lambda s: None)
    assert all(s.startswith("ok") for s in status.values()), status
    report = (tmp_path / "quick" / "REPORT.md").read_text()
    for name in small:  # each result says what it compiled (the CompileClock of its run) and how long it took
        res = json.loads((tmp_path / "quick" / reproduce.files(name)[0]).read_text())
        assert res["compilation"]["programs"] > 0 and res["compilation"]["compile_s"] > 0, (name, res["compilation"])
        assert res["process_peak_rss_mb"] > 100, name  # JAX alone is more
        assert status[name] == f"ok ({res['run_wall_s']:.0f} s)"  # the time said is the time recorded...
        section = report.split(f"## {name}")[1].split("\n## ")[0]  # bench's: "## bench: <device>"
        assert f"wall time {status[name][4:-3]} s" in section, (name, status[name])  # ... and REPORT.md prints
        assert f"process peak memory {res['process_peak_rss_mb']:.0f} MB" in section, name
    assert "QUICK profile" in report and "## cifar2" in report and "## mnist_zoo" in report
    summary = report.split("## Summary")[1].split("\n## ")[0]  # a newcomer's opening: what passed, what applies
    assert "not expected to meet them" in summary and "gradient check passed" in summary
    assert "## cifar2_improved" in report and "+-" in report and "## cifar10_improved" in report
    assert "## mnist_improved" in report and "mnist_improved/test_acc.png" in report
    assert "## resnet" in report and "resnet/curves.png" in report and "ResNet-6" in report
    assert "## vit" in report and "vit/curves.png" in report and "hand AdamW" in report
    vit = json.loads((tmp_path / "quick" / reproduce.files("vit")[0]).read_text())["datasets"]["mnist"]
    assert vit["hand_vs_autodiff"]["max_rel"] < 1e-12  # the ViT's hand reverse pass is jax.grad's, float64
    assert f"bench/{timing.device_name()}.png" in report
    again = reproduce.run_all("quick", only=["matrix_chain"], base=tmp_path, log=lambda s: None)
    assert again == {"matrix_chain": "skipped (done)"}
    # a result of another config, or of other code, is rerun rather than reported as this run's
    path = tmp_path / "quick" / reproduce.files("matrix_chain")[0]
    kept = json.loads(path.read_text())
    for changed in (
        {**kept, "config": {**kept["config"], "iters": 1}},
        {**kept, "provenance": {**kept["provenance"], "code_fingerprint": "0" * 16}},
    ):
        path.write_text(json.dumps(changed))
        said = []
        again = reproduce.run_all("quick", only=["matrix_chain"], base=tmp_path, log=said.append)
        assert again["matrix_chain"].startswith("ok") and any("rerunning" in s for s in said), (again, said)


def test_cifar10_softmax_cost_decreases_on_a_real_slice():
    require_real_data("cifar10")
    import numpy as np

    from jaxgd import data
    from jaxgd.experiments import cifar10_softmax as exp

    d = data.load("cifar10", val_size=500, train_size=1000)
    params, h = exp.train_one(d, 0.1, 0.01, {"epochs": 3}, __import__("jax").random.PRNGKey(0))
    assert params[0]["W"].shape == (3072, 10) and params[0]["b"].shape == (10,)
    assert h["train_cost"][-1] < h["train_cost"][0]
    np.testing.assert_array_less(h["train_loss"], h["train_cost"])  # cost = loss + lambda ||W||^2 > loss


@pytest.mark.parametrize(
    "lam,eta,n_batch,match",
    [(-0.1, 0.01, 100, "lambda"), (0.0, 0.0, 100, "eta"), (0.0, float("inf"), 100, "eta"), (0.0, 0.01, 0, "n_batch")],
)
def test_cifar10_softmax_bad_hyperparameters(lam, eta, n_batch, match):
    from jaxgd.experiments import cifar10_softmax as exp

    with pytest.raises(ValueError, match=match):
        exp.check_hparams(lam, eta, n_batch)


def test_mnist_zoo_resumes_per_model(tmp_path):
    require_real_data("mnist")
    from jaxgd.experiments import mnist_zoo

    cfg = {"epochs": 2, "train_size": 512, "batch_size": 64, "models": ["softmax/dropout", "mlp/batchnorm"]}
    said = []
    res = mnist_zoo.run(cfg, out=tmp_path, verbose=False, log=said.append)
    assert said == []  # verbose=False: no bar and no lines
    for name, r in res["models"].items():
        assert len(r["test_acc"]) == len(r["train_acc"]) == 2 and 0.5 < r["final_test_acc"] <= 1, name
        assert r["grads"] == "hand" and r["hand_vs_autodiff_epoch"]["max_abs_diff"] < 1e-4, name
    d = tmp_path / "mnist"
    for f in ("results.json", "softmax_dropout.png", "family_mlp.png", "variant_batchnorm.png", "hand_vs_autodiff.png"):
        assert (d / f).stat().st_size > 0
    logs = []
    again = mnist_zoo.run({**cfg, "models": cfg["models"] + ["softmax/plain"]}, out=tmp_path, log=logs.append)
    assert any("resuming: 2 finished models" in line for line in logs)
    assert again["models"]["mlp/batchnorm"] == res["models"]["mlp/batchnorm"]  # kept, not retrained
    with pytest.raises(ValueError, match="is not one of"):
        mnist_zoo.run({"models": ["cnn/resnet"]}, out=False)


def test_bench_rows_and_ratios(tmp_path):
    from jaxgd.experiments import bench

    res = bench.run(
        {
            "repeats": 2,
            "sections": ("matmul", "grad", "cnn_epoch", "conv_parts"),
            "n_cnn": 128,
            "cnn_batch": 64,
            "matmul_sizes": (64, 128),
            "torch": False,
            "cnn_variants": False,
            "conv_shapes": [(6, 8, 4)],
        },
        out=tmp_path,
        verbose=False,
    )
    for s in res["sections"].values():
        for r in s["rows"]:
            assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"] and len(r["times_s"]) == 2, r
    assert set(res["sections"]["grad"]["ratios"]) == {"hand/jax.grad MLP", "hand/jax.grad CNN"}
    assert {"best training loop / matmul peak", "CNN epoch / matmul peak"} <= set(res["sections"]["matmul"]["ratios"])
    parts = res["sections"]["conv_parts"]["rows"]  # jaxgd's conv parts (no PyTorch here), each against the peak
    assert [r["name"].split(",")[0] for r in parts] == ["conv 6x6 8->4 forward"] * 3 + [
        "conv 6x6 8->4 weight gradient"
    ] * 4 + ["conv 6x6 8->4 input gradient"] * 2
    assert [r["name"].split("xla=")[1].split(",")[0] for r in parts] == [
        "default",
        "default",
        "tuned",
        "default",
        "default",
        "default",
        "tuned",
        "default",
        "tuned",
    ]
    assert all(r["fraction_of_peak"] > 0 for r in parts)
    cnn = res["sections"]["cnn_epoch"]  # jaxgd's defaults beside the earlier path, on the same data
    assert [r["name"].split(" (")[1].split(")")[0] for r in cnn["rows"] if r["name"].startswith("jaxgd")] == [
        "hand backprop, jaxgd's conv defaults, xla=tuned",
        "hand backprop, earlier path: im2col forward and dW, xla=default",
    ]
    assert {"earlier path/default, hand CNN epoch"} <= set(cnn["ratios"])
    assert (tmp_path / "bench" / f"{res['device_name']}.json").exists()
    assert (tmp_path / "bench" / f"{res['device_name']}.png").stat().st_size > 0
    assert not (tmp_path / "bench" / f"{res['device_name']}_partial.json").exists()  # written after each section
    assert res["precision"]["float32_matmul_rel_error"] < 1e-2 and isinstance(res["precision"]["tf32_matmul"], bool)
    with pytest.raises(ValueError, match="is not one of"):
        bench.run({"sections": ("gpu_magic",)}, out=False)


def test_bench_mlp_epoch_with_and_without_the_eager_loop():
    from jaxgd.experiments import bench

    for eager in (True, False):  # the quick profile leaves the op-by-op loop out: most of its bench programs
        res = bench.run(
            {
                "repeats": 1,
                "sections": ("mlp_epoch",),
                "batch_sizes": (256,),
                "n_mlp": 512,
                "torch": False,
                "flax": False,
                "eager": eager,
            },
            out=False,
            verbose=False,
        )
        sec = res["sections"]["mlp_epoch"]
        assert [r["name"].split(",")[0] for r in sec["rows"]] == ["JAX eager"] * eager + [
            "JAX jitted step + Python loop",
            "jaxgd compiled epoch",
        ]
        assert set(sec["ratios"]) == {"jit step / compiled epoch bs256"} | (
            {"eager / compiled epoch bs256"} if eager else set()
        )
        assert all(v > 0 for v in sec["ratios"].values())


def test_bench_keeps_the_sections_it_does_not_rerun_with_their_provenance(tmp_path):
    from jaxgd.experiments import bench, common

    first = bench.run({"repeats": 1, "sections": ("matmul",), "matmul_sizes": (128,)}, out=tmp_path, verbose=False)
    path = tmp_path / "bench" / f"{first['device_name']}.json"
    old = common.load_json(path)
    old["provenance"]["commit"] = "earlier"  # as if from an older commit
    common.save_json(path, old)
    res = bench.run(
        {"repeats": 1, "sections": ("grad",), "keep": str(path), "torch": False}, out=tmp_path, verbose=False
    )
    assert list(res["sections"]) == ["matmul", "grad"]  # in the bench's order
    assert res["sections"]["matmul"] == old["sections"]["matmul"] and res["reused"] == {"matmul": old["provenance"]}
    assert "Kept from an earlier run (not rerun by the run below): matmul (commit earlier" in bench.kept_line(res)[0]
    again = bench.run(
        {"repeats": 1, "sections": ("matmul",), "matmul_sizes": (128,), "keep": str(path)}, out=False, verbose=False
    )  # a rerun section keeps what it measured before, with that commit
    assert again["sections"]["matmul"]["before"] == {
        "commit": "earlier",
        "rows": old["sections"]["matmul"]["rows"],
        "ratios": old["sections"]["matmul"]["ratios"],
        "cpu_model": old["provenance"]["cpu_model"],
    }
    common.save_json(path, again)  # rerun once more: the baseline stays the first measurement, not the last
    third = bench.run(
        {"repeats": 1, "sections": ("matmul",), "matmul_sizes": (128,), "keep": str(path)}, out=False, verbose=False
    )
    assert third["sections"]["matmul"]["before"] == again["sections"]["matmul"]["before"]
    with pytest.raises(FileNotFoundError, match="no such bench results file"):
        bench.run({"sections": ("grad",), "keep": str(tmp_path / "nope.json")}, out=False)
    common.save_json(tmp_path / "other.json", {"experiment": "cifar2"})
    with pytest.raises(ValueError, match="not a bench result of this device"):
        bench.run({"sections": ("grad",), "keep": str(tmp_path / "other.json")}, out=False)


def test_bench_grid_section_times_the_inf265_grid_as_one_fit(tmp_path):
    """jaxgd's one fit of the 18 distinct INF265 configs beside PyTorch's configs one after another
    (2 of them timed, their mean scaled to the 18), and the ratio of the two."""
    from jaxgd.experiments import bench
    from jaxgd.experiments.cifar2 import GRID

    require_peer("torch")
    res = bench.run(
        {"sections": ("grid",), "grid_epochs": 1, "n_mlp": 128, "grid_torch_configs": 2}, out=False, verbose=False
    )
    ours, theirs = res["sections"]["grid"]["rows"]
    k = len(set(GRID))
    assert k == 18 and ours["name"].startswith(f"jaxgd: {k} configs x 1 epochs")
    assert 0 < ours["compile_s"] < ours["median_s"]  # the wall time includes the one compilation
    assert theirs["name"].startswith(f"PyTorch: {k} configs one after another") and len(theirs["times_s"]) == 2
    assert theirs["median_s"] == pytest.approx(k * sum(theirs["times_s"]) / 2)
    ratios = res["sections"]["grid"]["ratios"]
    assert ratios["INF265 grid jaxgd/torch"] == pytest.approx(ours["median_s"] / theirs["median_s"])
    defaults = bench.BenchConfig.make({}).sections
    assert "grid" not in defaults and "airbench_epoch" not in defaults  # minutes on a CPU: only when named


def test_results_are_written_whole_readable_and_with_paths(tmp_path):
    import json
    import os
    from pathlib import Path

    from jaxgd.experiments.common import save_json

    p = save_json(tmp_path / "r.json", {"data_dir": Path("/some/where")})
    assert json.loads(p.read_text()) == {"data_dir": "/some/where"} and os.stat(p).st_mode & 0o777 == 0o644
    with pytest.raises(TypeError):
        save_json(tmp_path / "bad.json", {"x": object()})
    assert sorted(f.name for f in tmp_path.iterdir()) == ["r.json"]  # no stray temp file, no half a file


def test_mnist_improved_seeds_in_one_program_equal_each_seed_alone(tmp_path):
    """Each seed of the one-program run (its own split, init, batch order, shifts) gives the same
    best epoch and test accuracy as that seed trained alone; the best epoch is the validation max."""
    require_real_data("mnist")
    from jaxgd.experiments import mnist_improved

    cfg = {
        "softmax_epochs": 3,
        "train_size": 512,
        "batch_size": 64,
        "val_size": 500,
        "seeds": (0, 3),
        "models": ["softmax/batchnorm"],
    }
    both = mnist_improved.run(cfg, out=tmp_path, verbose=False)["models"]["softmax/batchnorm"]
    alone = mnist_improved.run({**cfg, "seeds": (3,)}, out=False, verbose=False)["models"]["softmax/batchnorm"]
    r, a = both["runs"][1], alone["runs"][0]
    assert r["seed"] == a["seed"] == 3 and r["best_epoch"] == a["best_epoch"]
    assert abs(r["test_acc"] - a["test_acc"]) < 1e-6 and r["val_curve"] == pytest.approx(a["val_curve"], abs=1e-6)
    for run in both["runs"]:
        assert run["val_acc"] == max(run["val_curve"]) and run["val_acc"] == run["val_curve"][run["best_epoch"] - 1]
    assert both["runs"][0]["val_curve"] != r["val_curve"]  # the seeds differ
    assert (tmp_path / "mnist_improved" / "test_acc.png").stat().st_size > 0
    with pytest.raises(ValueError, match="seeds must differ"):
        mnist_improved.run({"seeds": (1, 1)}, out=False)


def test_cifar2_improved_seed_reads_its_own_normalisation_of_the_test_set():
    """A seed's test accuracy does not depend on the other seeds run beside it (each seed's split
    has its own normalisation statistics, so its test images are normalised with them)."""
    require_real_data("cifar2")
    from jaxgd.experiments import cifar2_improved

    cfg = {"epochs": 2, "lrs": (0.01,), "seeds": (0, 3), "train_size": 300, "batch_size": 50}
    both = cifar2_improved.run(cfg, out=False, verbose=False)["runs"][1]
    alone = cifar2_improved.run({**cfg, "seeds": (3,)}, out=False, verbose=False)["runs"][0]
    assert both["seed"] == alone["seed"] == 3 and abs(both["test_acc"] - alone["test_acc"]) < 1e-6


def test_a_result_computed_before_a_fix_says_so():
    """A results file whose provenance lacks a fix that changes its experiment's numbers is marked
    in REPORT.md and the README; one computed with every fix is not."""
    from jaxgd.experiments import common, writeup

    old = {"provenance": {"commit": "abc1234"}}
    assert common.predates("cifar2", old) and not common.predates("matrix_chain", old)
    assert not common.predates("cifar2", {"provenance": {"fixes": sorted(common.FIXES)}})
    assert common.provenance()["fixes"] == sorted(common.FIXES)  # what a run records
    line = writeup.predates_line("cifar2", old)
    assert "abc1234" in line and "--only cifar2 --force" in line and "data_key" in line


def test_startup_section_measures_fresh_processes(monkeypatch):
    """The startup probes run in fresh processes, empty cache then warm: a check's first call
    compiles its programs, its second call in the same process none, and peak memory is read."""
    from jaxgd.experiments import bench, startup

    monkeypatch.setattr(
        startup,
        "PROBES",
        {
            "import jaxgd": None,
            "check(dense(4), (3,))": startup.PROBES["check(dense(4), (3,))"],
            "check(conv2d(8, 3), (8, 8, 3))": startup.PROBES["check(dense(4), (3,))"],
        },
    )
    res = startup.bench_startup(bench.BenchConfig.make({"sections": ("startup",)}))
    cold, warm = (r for r in res["rows"] if r["name"].startswith("check(dense(4), (3,))"))
    assert 0 < cold["first_programs"] <= 20 and cold["second_programs"] == 0
    assert warm["first_cache_loads"] > cold["first_cache_loads"]  # the second process found what the first compiled
    assert all(r["peak_rss_mb"] > 50 for r in res["rows"])
    assert res["ratios"]["startup: check(dense) programs"] == cold["first_programs"]


def test_the_quick_profiles_stated_duration_is_the_benchs():
    """`jaxgd reproduce --help` and the run's first line state QUICK_MINUTES: the committed bench's
    measured wall time of the quick profile (empty cache, warm cache), rounded up to the minute."""
    import math
    from pathlib import Path

    from jaxgd.experiments import common, reproduce

    r = common.load_json(Path(__file__).parents[1] / "results" / "bench" / "cpu-2core.json")
    ratios = r["sections"]["compile_cache"]["ratios"]
    assert (
        tuple(math.ceil(ratios[f"cache_command wall s, {c} cache"] / 60) for c in ("empty", "warm"))
        == reproduce.QUICK_MINUTES
    )


def test_gradcheck_only_draws_the_chosen_cases():
    from jaxgd.experiments import gradient_checks
    from jaxgd.experiments.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown checks \['nope'\]; choose from .*layer-maxpool2"):
        gradient_checks.run({"only": ["nope"]}, out=False)
    gradient_checks.cases(quick=True, only=["matrix-chain-K4", "mlp-tanh-ssr"])  # the keys' own small programs
    with CompileClock() as clock:
        got = gradient_checks.cases(quick=True, only=["matrix-chain-K4", "mlp-tanh-ssr"])
    assert [c["name"] for c in got] == ["mlp-tanh-ssr", "matrix-chain-K4"]
    assert clock.compiles == 2  # one initialiser program each, none for the cases left out
