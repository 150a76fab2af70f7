"""The persistent compilation cache of the jaxgd command: on by default in a private folder, a
second process loads what the first compiled and computes the same numbers, off on request, and
never loads code from a folder someone else can write to."""

import json
import os
import subprocess
import sys

import pytest

from jaxgd import compile_cache


def _jaxgd(*args, env=None):
    r = subprocess.run(
        [sys.executable, "-m", "jaxgd", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_a_second_process_loads_what_the_first_compiled_and_gets_the_same_numbers(tmp_path):
    cache = tmp_path / "xla"
    reports = []
    for i in range(2):
        _jaxgd(
            "--compile-cache",
            str(cache),
            "--compile-report",
            str(tmp_path / f"r{i}.json"),
            "matrix-chain",
            "--Ks",
            "2",
            "3",
            "--iters",
            "20",
            "--results",
            str(tmp_path / f"res{i}"),
            "--quiet",
        )
        reports.append(json.loads((tmp_path / f"r{i}.json").read_text()))
    assert oct(cache.stat().st_mode & 0o777) == "0o700" and any(cache.iterdir())
    first, second = reports
    assert first["cache_loads"] == 0 and second["cache_loads"] >= first["programs"] // 2, reports
    assert second["programs"] == first["programs"]
    assert all(r["peak_rss_mb"] > 100 for r in reports), reports  # each process's own peak memory: jax alone is more
    runs = [json.loads((tmp_path / f"res{i}" / "matrix_chain" / "results.json").read_text())["runs"] for i in range(2)]
    assert [r["loss_hand"] for r in runs[0]] == [r["loss_hand"] for r in runs[1]]  # loaded code, same numbers


def test_the_cache_is_off_on_request_and_where_the_environment_says(tmp_path):
    cache = tmp_path / "xla"
    _jaxgd(
        "--no-compile-cache",
        "--compile-cache",
        str(cache),
        "--compile-report",
        str(tmp_path / "r.json"),
        "matrix-chain",
        "--Ks",
        "2",
        "--iters",
        "5",
        "--results",
        str(tmp_path / "res"),
        "--quiet",
    )
    assert not cache.exists() and json.loads((tmp_path / "r.json").read_text())["cache_dir"] is None
    assert compile_cache.resolve("off") is None and compile_cache.resolve("0") is None
    env_dir = tmp_path / "from-env"
    _jaxgd(
        "matrix-chain",
        "--Ks",
        "2",
        "--iters",
        "5",
        "--results",
        str(tmp_path / "res2"),
        "--quiet",
        env={compile_cache.ENV: str(env_dir)},
    )
    assert any(env_dir.iterdir())


def test_the_default_folder_is_beside_the_data_cache(monkeypatch, tmp_path):
    monkeypatch.delenv(compile_cache.ENV, raising=False)
    monkeypatch.setenv("JAXGD_CACHE_DIR", str(tmp_path))
    assert compile_cache.resolve() == tmp_path / "xla"
    monkeypatch.setenv(compile_cache.ENV, "OFF")
    assert compile_cache.resolve() is None


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX permissions")
def test_a_folder_others_can_write_to_is_refused(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.warns(UserWarning, match="others can write to it"):
        assert compile_cache.enable(shared) is None  # refused before JAX's configuration is touched
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.warns(UserWarning, match="compilation cache off"):
        assert compile_cache.enable(not_a_dir) is None
