"""Many devices (forced CPU devices, in processes of their own) and many processes
(jax.distributed on localhost, gloo collectives): the same numbers as one device."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

WORKER = str(Path(__file__).with_name("parallel_worker.py"))


def _env(devices):
    return {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}


def _result(proc_out):
    line = [ln for ln in proc_out.splitlines() if ln.startswith("RESULT ")]
    assert line, proc_out[-2000:]
    return json.loads(line[-1][len("RESULT ") :])


def run_worker(*args, devices=8):
    r = subprocess.run(
        [sys.executable, WORKER, *map(str, args)], capture_output=True, text=True, env=_env(devices), timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return _result(r.stdout)


def max_rel_diff(a, b):
    return max(
        float(np.max(np.abs(np.subtract(x, y))) / max(np.max(np.abs(y)), 1e-12))
        for x, y in zip(a["params"], b["params"])
    )


@pytest.mark.slow
def test_sharded_grid_equals_one_device():
    sizes = [5, 8, 12]  # padded to 8, exact, padded to 16; in one process (each start of JAX costs seconds)
    for n_cfg, res in zip(sizes, run_worker("grid", *sizes).values()):
        s, one = res["sharded"], res["single"]
        assert s["devices"] == 8 and np.shape(s["train_loss"]) == (2, n_cfg), n_cfg  # the padding is dropped
        # float reassociation only: a config's matmuls run unbatched on its device, batched on one
        assert max_rel_diff(s, one) < 1e-6, n_cfg
        np.testing.assert_allclose(s["train_loss"], one["train_loss"], rtol=1e-6, err_msg=f"{n_cfg} configs")
        assert s["val_acc"] == one["val_acc"], n_cfg


@pytest.mark.slow
def test_data_parallel_epoch_matches_one_device():
    names = ["mlp/batchnorm", "cnn/batchnorm", "cnn/dropout", "resnet"]  # in one process
    for model, res in zip(names, run_worker("data", *names).values()):
        s, one = res["sharded"], res["single"]
        assert max_rel_diff(s, one) < 1e-5, model  # batch norm: statistics of the global batch, as on one device
        np.testing.assert_allclose(s["train_loss"], one["train_loss"], rtol=1e-5, err_msg=model)
        for a, b in zip(s["state"], one["state"]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=model)


@pytest.mark.slow
def test_configs_and_data_on_a_2d_mesh():
    res = run_worker("mesh2d")
    assert max_rel_diff(res["sharded"], res["single"]) < 1e-6


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_joined_by_jax_distributed_give_one_process_numbers():
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, "multi", str(i), "2", str(port)],
            env=_env(4),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert "RESULT" not in outs[1][0]  # only process 0 reports
    multi = _result(outs[0][0])["sharded"]
    assert multi["processes"] == 2 and multi["devices"] == 8
    one = run_worker("grid", 8)["8"]  # one process, 8 devices, and one device
    assert multi["params"] == one["sharded"]["params"] and multi["train_loss"] == one["sharded"]["train_loss"]
    assert max_rel_diff(multi, one["single"]) < 1e-6
