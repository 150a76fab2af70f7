"""Faults injected on purpose: interrupted runs, corrupt files, racing processes, bad configs,
no data and no network. Each must end in one clear error or a correct resumed run, never in lost
or mislabelled results. (Bad arguments to ``fit`` and ``sgd_hyperparams``: tests/test_train.py.)"""

import dataclasses
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from conftest import require_real_data

from jaxgd import data, models, optim, train
from jaxgd.experiments import common, reproduce
from jaxgd.experiments.config import ConfigError

# a CNN last: after the first model, seconds of work remain for the signal to land in
ZOO = [
    "--models",
    "softmax/plain",
    "mlp/plain",
    "mlp/dropout",
    "cnn/plain",
    "--epochs",
    "1",
    "--train-size",
    "1024",
    "--batch-size",
    "128",
    "--no-compare-epoch",
]


def _jaxgd(*args, env=None, **kw):
    # A child inherits an ignored SIGINT, and Python then leaves it ignored: in a full suite this
    # pytest-xdist worker's SIGINT was found ignored (SIG_IGN), and the interrupted run finished. A
    # Python handler is not inherited (the child starts with the default), so set one around the spawn.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "jaxgd", *args],
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,
        )
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)


def _wait_for_models(partial, n, proc, timeout=300):
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            pytest.fail(f"finished before it could be interrupted: {proc.communicate()}")
        try:
            if len(json.loads(partial.read_text())["models"]) >= n:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    proc.kill()
    pytest.fail("no model finished in time")


@functools.cache
def _uninterrupted_zoo():
    """The zoo run of test_interrupted_zoo_... in one piece, in this process (once for both signals)."""
    from jaxgd.experiments import mnist_zoo

    cfg = {"models": ZOO[1:5], "epochs": 1, "train_size": 1024, "batch_size": 128, "compare_epoch": False}
    return mnist_zoo.run(cfg, out=False, verbose=False)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_zoo_resumes_keeping_what_was_finished_and_its_provenance(tmp_path, sig):
    require_real_data("mnist")
    partial = tmp_path / "mnist" / "models_partial.json"
    # no compilation cache: the models left each compile for a second or more, so the signal lands
    # while they run (with a warm cache the last two can finish within the first signal's 0.5 s)
    proc = _jaxgd("mnist-zoo", *ZOO, "--results", str(tmp_path), env={"JAXGD_COMPILE_CACHE": "off"})
    _wait_for_models(partial, 1, proc)
    err = ""
    for _ in range(600):  # again while it runs: an interrupt that lands in a finalizer is ignored by Python
        proc.send_signal(sig)
        try:
            err = proc.communicate(timeout=0.5)[1]
            break
        except subprocess.TimeoutExpired:
            pass
    assert proc.returncode != 0, (
        f"the run finished despite the signal (this process's SIGINT handler: "
        f"{signal.getsignal(signal.SIGINT)}); its log ends: {err[-1500:]}"
    )
    first = json.loads(partial.read_text())  # whole: written atomically
    kept = set(first["models"])
    assert kept and not (tmp_path / "mnist" / "results.json").exists()
    if sig == signal.SIGINT:  # a clean stop leaves no temp or staging files behind
        assert not [p.name for p in (tmp_path / "mnist").iterdir() if p.name.startswith(".")]

    again = _jaxgd("mnist-zoo", *ZOO, "--results", str(tmp_path))
    _out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert f"resuming: {len(kept)} finished models kept" in err
    res = json.loads((tmp_path / "mnist" / "results.json").read_text())
    assert set(res["reused"]) == kept  # says what it reused ...
    for name in kept:  # ... with the provenance of the run that computed it
        assert res["reused"][name] == first["provenance"][name]
        assert res["reused"][name]["date"] <= res["provenance"]["date"]
    # and the resumed results are those of one uninterrupted run
    whole = _uninterrupted_zoo()
    for name in ZOO[1:5]:
        assert res["models"][name]["test_acc"] == pytest.approx(whole["models"][name]["test_acc"], abs=1e-6), name


def test_resume_key_holds_the_code_fingerprint(tmp_path):
    settings = {"epochs": 2}
    part = common.PartialRun(tmp_path / "p.json", settings, "models", {"date": "then"})
    part.add("a", {"acc": 0.5})
    logs = []
    again = common.PartialRun(tmp_path / "p.json", settings, "models", {"date": "now"}, log=logs.append)
    assert again.reused(["a", "b"]) == {"a": {"date": "then"}}
    stored = json.loads((tmp_path / "p.json").read_text())
    stored["key"]["code_fingerprint"] = "0" * 16  # as if written by other code
    (tmp_path / "p.json").write_text(json.dumps(stored))
    logs.clear()
    changed = common.PartialRun(tmp_path / "p.json", settings, "models", {"date": "now"}, log=logs.append)
    assert changed.done == {} and "code_fingerprint" in logs[0]
    assert common.PartialRun(tmp_path / "p.json", {"epochs": 3}, "models", {}).done == {}
    assert common.PartialRun(tmp_path / "p.json", settings, "models", {}, force=True).done == {}


@pytest.mark.parametrize("content", ["", '{"key": {"settings": ', "\x00\xff garbage"])
def test_truncated_partial_is_named_and_set_aside(tmp_path, content):
    p = tmp_path / "grid_partial.json"
    p.write_text(content, errors="surrogateescape")
    logs = []
    part = common.PartialRun(p, {"epochs": 1}, "configs", {}, log=logs.append)
    assert part.done == {} and not p.exists()
    aside = list(tmp_path.glob("grid_partial.json.corrupt-*"))
    assert len(aside) == 1 and str(p) in logs[0] and aside[0].name in logs[0]


def test_truncated_result_is_rerun_by_reproduce_and_named_in_the_report(tmp_path, monkeypatch):
    exp = reproduce.EXPERIMENTS["matrix_chain"]
    rfile = exp.results
    monkeypatch.setitem(reproduce.EXPERIMENTS, "matrix_chain", dataclasses.replace(exp, quick={"Ks": [2], "iters": 5}))
    quiet = {"log": lambda s: None}
    assert reproduce.run_all("quick", only=["matrix_chain"], base=tmp_path, **quiet)["matrix_chain"].startswith("ok")
    result = tmp_path / "quick" / rfile
    result.write_text(result.read_text()[:100])  # truncated
    logs = []
    status = reproduce.run_all("quick", only=["matrix_chain"], base=tmp_path, log=logs.append)
    assert status["matrix_chain"].startswith("ok")  # rerun, not "done already"
    assert any("is corrupt" in line for line in logs) and json.loads(result.read_text())["runs"]
    assert list(result.parent.glob("results.json.corrupt-*"))
    # a report over a corrupt file names it instead of crashing
    result.write_text("{")
    report = reproduce.write_report("quick", tmp_path).read_text()
    assert f"could not read {result}" in report and "## cifar2" in report


def test_outputs_are_written_all_or_nothing(tmp_path, monkeypatch):
    from jaxgd.experiments import figures, matrix_chain

    matrix_chain.run({"Ks": [2], "iters": 5}, out=tmp_path)
    d = tmp_path / "matrix_chain"
    before = {p.name: p.read_bytes() for p in d.iterdir()}

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(figures, "matrix_chain", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        matrix_chain.run({"Ks": [2, 4], "iters": 5}, out=tmp_path)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # the old result, whole; no staging left


@pytest.mark.slow
def test_concurrent_cold_cache_loads(tmp_path):
    require_real_data("mnist", tfds=True)  # the cache holds what TFDS decodes
    code = "from jaxgd import data; d = data.load('mnist'); print(len(d.train.y))"
    env = {"JAXGD_CACHE_DIR": str(tmp_path / "cache")}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code],
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert [o.strip() for o, _ in outs] == ["54000", "54000"]
    files = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(files) == 2 and all(f.endswith(".npz") and not f.startswith(".") for f in files), files


def test_a_path_in_a_config_is_kept_as_text(tmp_path):
    require_real_data("mnist")
    from jaxgd.experiments import data_report

    res = data_report.run({"datasets": ["mnist"], "data_dir": data.resolve_data_dir()}, out=tmp_path)
    assert res["mnist"]["config"]["data_dir"] == str(data.resolve_data_dir())
    assert json.loads((tmp_path / "data" / "mnist.json").read_text())["config"]["data_dir"] == str(
        data.resolve_data_dir()
    )


@pytest.mark.parametrize("name", list(reproduce.EXPERIMENTS))
def test_unknown_and_bad_config_keys_are_refused(name):
    exp = reproduce.EXPERIMENTS[name]
    with pytest.raises(ConfigError, match=r"unknown .* config key 'iter'"):
        exp.run({"iter": 5}, out=False)
    first = next(iter(exp.config.__dataclass_fields__))
    with pytest.raises(ConfigError, match=repr(first)):
        exp.config.make({first: object()})


def test_cli_bad_flags_and_values_give_one_line_and_exit_2(capsys, tmp_path, monkeypatch):
    from jaxgd import cli

    monkeypatch.chdir(tmp_path)  # were one to run, its results land here
    for argv in (
        ["cifar2", "--epochs", "0"],
        ["cifar2", "--epochs", "x"],
        ["mnist-zoo", "--models", "cnn/resnet"],
        ["matrix-chain", "--iter", "5"],
        ["cifar2", "--grid", "0.1,2,0"],
        ["nonsense"],
    ):
        with pytest.raises(SystemExit) as e:
            sys.exit(cli.main(argv))
        assert e.value.code == 2, argv
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "error" in err, (argv, err)


def test_first_command_without_data_or_network_fails_before_any_work(tmp_path):
    """The README's first command on a machine with no prepared data and no network: one line,
    before anything runs (the timeout is a hang guard, not a speed claim)."""
    p = _jaxgd(
        "reproduce",
        "--quick",
        "--results",
        str(tmp_path / "results"),
        env={"TFDS_DATA_DIR": str(tmp_path / "empty"), "JAXGD_OFFLINE": "1"},
    )
    _out, err = p.communicate(timeout=120)
    assert p.returncode == 1
    assert "not prepared" in err and "does not exist" in err and "pip install -e '.[prepare]'" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "results" / "quick" / "gradcheck").exists()  # nothing ran before the check


def test_an_unfinished_preparation_is_one_line_without_absl_warnings_before_it(tmp_path):
    """TFDS warned through absl ('Variant folder ... has no dataset_info.json') before jaxgd's own
    message; the command's answer is its one line."""
    (tmp_path / "tfds" / "mnist" / "3.0.1").mkdir(parents=True)
    p = _jaxgd(
        "mnist-zoo",
        "--epochs",
        "1",
        "--results",
        str(tmp_path / "results"),
        env={"TFDS_DATA_DIR": str(tmp_path / "tfds"), "JAXGD_CACHE_DIR": str(tmp_path / "cache"), "JAXGD_OFFLINE": "1"},
    )
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1 and "has no dataset_info.json" in err
    assert len(err.strip().splitlines()) == 1 and "absl" not in err, err


def test_no_network_is_found_in_seconds_when_tensorflow_could_download(tmp_path, monkeypatch):
    """As with TensorFlow installed but offline: the download host cannot be reached."""
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: object())  # "TensorFlow is installed"
    monkeypatch.setitem(data.DOWNLOAD_HOSTS, "mnist", "no-such-host.invalid")
    t = time.time()
    with pytest.raises(data.DataNotFoundError, match="cannot be reached"):
        data.load("mnist", data_dir=tmp_path, cache=False)
    assert time.time() - t < 10


def test_offline_with_real_tensorflow_fails_in_seconds(tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("tensorflow") is None:
        pytest.skip(
            "TensorFlow is not installed here (pip install -e '.[prepare]' in the jaxgd checkout); the offline check "
            "without it is test_first_command_without_data_or_network_fails_before_any_work"
        )
    monkeypatch.setitem(data.DOWNLOAD_HOSTS, "mnist", "no-such-host.invalid")
    t = time.time()
    with pytest.raises(data.DataNotFoundError, match="cannot be reached"):
        data.load("mnist", data_dir=tmp_path, cache=False)
    assert time.time() - t < 10


def test_missing_data_message_says_what_was_found(tmp_path):
    (tmp_path / "mnist" / "3.0.1").mkdir(parents=True)
    (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").write_text("{}")
    (tmp_path / "mnist" / "3.0.1" / "mnist-train.tfrecord-00000-of-00001").write_bytes(b"")
    with pytest.raises(data.DataNotFoundError, match="TFRECORD files"):
        data.find_prepared("mnist", tmp_path)
    (tmp_path / "cifar10").mkdir()
    with pytest.raises(data.DataNotFoundError, match="holds no version folder"):
        data.find_prepared("cifar10", tmp_path)
    with pytest.raises(data.DataNotFoundError, match="does not exist"):
        data.find_prepared("cifar10", tmp_path / "nowhere")


def test_results_go_to_the_working_directory_or_the_flag(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JAXGD_RESULTS", raising=False)
    assert common.results_root() == tmp_path / "results"
    assert reproduce.root("quick") == tmp_path / "results" / "quick"
    assert common.results_root("elsewhere") == Path("elsewhere")


def _tiny_fit(**kw):
    model = kw.pop("model", models.mlp((4, 3)))
    params = kw.pop("params", None) or model.init(jax.random.PRNGKey(0))[0]
    x = np.ones((8, 4), np.float32)
    y = kw.pop("y", np.zeros(8, np.int32))
    args = {"hparams": optim.sgd_hyperparams(0.1), "epochs": 1, "batch_size": 4, **kw}
    return train.fit(model, params, (x, y), **args)


def test_formerly_refused_valid_inputs_and_missing_model_state():
    """(fit's bad arguments, each one clear error, are test_train.test_bad_fit_arguments.)"""
    hist = _tiny_fit(epochs=np.int64(2), batch_size=np.int64(4))[2]  # numpy integers are integers
    assert len(hist.train_loss) == 2 and np.all(np.isfinite(hist.train_loss))
    with pytest.raises(ValueError, match="at least one entry"):
        optim.sgd_hyperparams([])
    bn = models.Model((models.L.dense(3), models.L.batch_norm()), (4,))
    params, state = bn.init(jax.random.PRNGKey(0))
    _, new_state, _ = _tiny_fit(model=bn, params=params, model_state=state)
    moved = [
        not np.allclose(a, b) for a, b in zip(jax.tree_util.tree_leaves(new_state), jax.tree_util.tree_leaves(state))
    ]
    assert any(moved)  # the running statistics went through fit and were updated
    for wrong in (None, ()):  # no state, or a wrong one: say how to make the right one
        with pytest.raises(ValueError, match=r"model.init"):
            _tiny_fit(model=bn, params=params, model_state=wrong)


def test_a_failed_experiment_releases_its_memory_and_run_all_leaves_gc_as_it_was(tmp_path, monkeypatch):
    """run_one frees memory whether the experiment finished or raised; run_all frees the failed
    run's frames once its traceback is gone, and leaves what the caller had frozen frozen."""
    import dataclasses
    import gc

    from jaxgd.experiments import common, reproduce

    released = []
    monkeypatch.setattr(common, "release_memory", lambda: released.append(1))

    def failing(cfg, **kw):
        raise RuntimeError("boom")

    exp = reproduce.EXPERIMENTS["matrix_chain"]
    monkeypatch.setitem(reproduce.EXPERIMENTS, "matrix_chain", dataclasses.replace(exp, run=failing))
    with pytest.raises(RuntimeError, match="boom"):
        reproduce.run_one("matrix_chain", reproduce.config("matrix_chain", "quick", None), tmp_path)
    assert released == [1]
    gc.freeze()
    frozen = gc.get_freeze_count()
    try:
        status = reproduce.run_all("quick", only=["matrix_chain"], base=tmp_path, log=lambda s: None, quiet=True)
        assert status["matrix_chain"].startswith("FAILED: RuntimeError: boom")
        # the caller's frozen objects stay frozen (fewer only by those freed since), and none are added
        assert 0 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()
    assert len(released) == 3  # run_one's finally, then run_all's once the traceback is gone
