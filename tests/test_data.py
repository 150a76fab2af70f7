"""Data loading: logic on tfds.testing.mock_data, facts on the real prepared data."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import require_real_data

from jaxgd import data


@pytest.fixture
def mock_cifar(tmp_path, monkeypatch):
    # the default data folder must not hold a jaxgd export, which load would read instead of the mock
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    with tfds.testing.mock_data(num_examples=60, policy=tfds.testing.MockPolicy.USE_CODE):
        yield


def test_mock_splits_shapes_and_stats_from_train_only(mock_cifar, tmp_path):
    d = data.load("cifar10", val_fraction=0.25, cache=tmp_path, seed=3)
    assert d.info["sizes"] == {"train": 45, "val": 15, "test": 60}
    assert d.train.x.shape == (45, 3072) and d.train.x.dtype == np.float32 and d.train.y.dtype == np.int32
    # normalised with the training part's statistics: train is exactly zero-mean / unit-std per channel
    xt = d.train.x.reshape(-1, 32, 32, 3)
    np.testing.assert_allclose(xt.mean(axis=(0, 1, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(xt.std(axis=(0, 1, 2)), 1, atol=1e-4)
    raw = data.load("cifar10", val_fraction=0.25, cache=tmp_path, seed=3, normalize=False, layout="nhwc")
    np.testing.assert_allclose(raw.train.x.mean(axis=(0, 1, 2)), d.info["mean"], rtol=1e-5)
    assert raw.val.x.min() >= 0 and raw.val.x.max() <= 1 and raw.val.x.shape[1:] == (32, 32, 3)
    # the same seed gives the same split; another seed another one
    again = data.load("cifar10", val_fraction=0.25, cache=tmp_path, seed=3)
    np.testing.assert_array_equal(again.val.y, d.val.y)
    np.testing.assert_array_equal(again.val.x, d.val.x)


@pytest.mark.parametrize("shape", [(1000, 4, 4, 3), (999, 5, 5, 1), (3, 2, 2, 3), (2000, 6, 6, 2)])
def test_channel_moments_are_the_exact_ones_rounded(shape):
    """load's per-channel mean and variance, from counts of the 256 pixel values, are the exact
    ones (rational arithmetic on the float32 pixel values) to within an ulp, and rounded to float32
    (what load normalises with) they are numpy's x.mean and x.std in float64, what load used before."""
    from fractions import Fraction

    u8 = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    x = u8.astype(np.float32) / 255.0
    axes = (0, 1, 2)
    exact = []
    for k in range(shape[-1]):  # each distinct float32 value, exactly, times how often it occurs
        values, counts = np.unique(x[..., k], return_counts=True)
        pairs = [(Fraction(float(v)), int(c)) for v, c in zip(values, counts)]
        n = sum(c for _, c in pairs)
        m = sum(v * c for v, c in pairs) / n
        exact.append((m, sum((v - m) ** 2 * c for v, c in pairs) / n))
    for chunk in (64, 4096):  # the counting's chunk changes nothing
        mean, var = data.channel_moments(u8, chunk=chunk)
        for k, (exact_mean, exact_var) in enumerate(exact):
            assert abs(Fraction(float(mean[k])) - exact_mean) <= Fraction(float(np.spacing(mean[k])))
            assert abs(Fraction(float(var[k])) - exact_var) <= 2 * Fraction(float(np.spacing(var[k])))
    mean, std = data.channel_stats(u8)
    np.testing.assert_array_equal(mean, x.mean(axis=axes, dtype=np.float64).astype(np.float32), strict=True)
    np.testing.assert_array_equal(std, x.std(axis=axes, dtype=np.float64).astype(np.float32), strict=True)


@pytest.mark.parametrize("shape", [(130, 4, 4, 3), (65, 5, 5, 1), (1, 2, 2, 3)])
def test_normalisation_by_table_is_the_arithmetic_bit_for_bit(shape):
    """load looks each pixel up in a table of its 256 values' normalised numbers: the same float32
    numbers as (u8 / 255 - mean) / std computed on every pixel, chunks' edges included."""
    u8 = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    mean, std = data.channel_stats(u8)
    table = data.normalisation_table(mean, std)
    want = data.unit(u8)
    want -= mean
    want /= std
    got = data.lookup(table, u8, chunk=64)
    np.testing.assert_array_equal(got, want, strict=True)


@pytest.mark.parametrize("experiment", ["mnist", "mnist_improved", "cifar2", "cifar10_softmax", "cifar10_improved"])
def test_real_normalisation_is_the_committed_results(experiment):
    """Each committed result stores the statistics its data was normalised with (its first split's):
    load gives the same float32 numbers today, so the results are reproducible on this data code."""
    import json
    from pathlib import Path

    info = json.loads((Path(__file__).parents[1] / "results" / experiment / "results.json").read_text())["data"]
    require_real_data(info["name"])
    sizes = info["sizes"]
    d = data.load(
        info["name"], seed=info["seed"], val_size=sizes["val"], train_size=sizes["train"], layout=info["layout"]
    )
    assert d.info["sizes"] == sizes
    assert (d.info["mean"], d.info["std"]) == (info["mean"], info["std"])


def test_mock_cifar2_relabels(mock_cifar, tmp_path):
    full = data.load("cifar10", val_fraction=0.0, cache=tmp_path, normalize=False)
    two = data.load("cifar2", val_fraction=0.0, cache=tmp_path, normalize=False)
    keep = np.isin(full.train.y, (0, 2))
    assert set(np.unique(two.train.y)) <= {0, 1} and len(two.train.y) == keep.sum()
    assert (two.train.y == 1).sum() == (full.train.y == 2).sum()  # bird -> 1
    # the same images (order differs: each split is permuted)
    key = lambda x: np.sort(x.sum(axis=1))
    np.testing.assert_allclose(key(two.train.x[two.train.y == 0]), key(full.train.x[full.train.y == 0]), rtol=1e-6)
    assert two.info["classes"] == ["airplane", "bird"]


def test_export_loads_without_tfds_exactly_as_from_tfds(mock_cifar, tmp_path, monkeypatch):
    kw = dict(val_size=7, seed=4, cache=tmp_path / "cache")
    via_tfds = {n: data.load(n, **kw) for n in ("cifar2", "cifar10")}
    out = tmp_path / "decoded"
    paths = {n: data.export(n, out, cache=tmp_path / "cache") for n in ("cifar2", "cifar10")}
    assert paths["cifar2"] == out / "jaxgd-decoded-cifar2.npz" == data.find_prepared("cifar2", out)

    def no_tfds(*a, **k):
        raise AssertionError("TFDS was opened although an export is there")

    monkeypatch.setattr(data, "_open", no_tfds)
    for n, want in via_tfds.items():
        got = data.load(n, data_dir=out, **kw)
        for a, b in zip(got[:3], want[:3]):
            np.testing.assert_array_equal(a.x, b.x)
            np.testing.assert_array_equal(a.y, b.y)
        assert got.info["source"] == str(paths[n]) and "source" not in want.info
        assert {k: v for k, v in got.info.items() if k not in ("source", "data_dir")} == {
            k: v for k, v in want.info.items() if k != "data_dir"
        }
    data.check_available("cifar2", out, download=False)
    with pytest.raises(data.DataNotFoundError, match="not prepared"):  # mnist was not exported
        data.check_available("mnist", out, download=False)


def test_a_wrong_or_broken_export_is_refused(mock_cifar, tmp_path):
    out = tmp_path / "decoded"
    path = data.export("cifar2", out, cache=False)
    path.rename(out / "jaxgd-decoded-cifar10.npz")  # CIFAR-2 passed off as CIFAR-10
    with pytest.raises(data.DataNotFoundError, match="not a complete export of 'cifar10'"):
        data.load("cifar10", data_dir=out)
    (out / "jaxgd-decoded-cifar2.npz").write_bytes(b"not a zip")
    with pytest.raises(data.DataNotFoundError, match="not a readable jaxgd export"):
        data.load("cifar2", data_dir=out)


@pytest.mark.parametrize(
    "change,match",
    [
        (
            lambda x, y: (x.astype(np.float32) / 255, y),
            r"images are float32 \(values 0\.\.0\.99\d*\); jaxgd reads uint8",
        ),
        (lambda x, y: (x.astype(np.int16) + 44, y), "images are int16"),
        (lambda x, y: (x[..., :1], y), r"images of shape \(32, 32, 1\).*are \(32, 32, 3\)"),
        (lambda x, y: (x.reshape(len(x), -1), y), r"images of shape \(3072,\)"),
        (lambda x, y: (x, y + 1), "labels 1..2, but cifar2 has 2 classes"),
        (lambda x, y: (x, y.astype(np.float32)), "one integer label per image"),
    ],
)
def test_an_export_of_another_dtype_range_or_shape_is_refused(mock_cifar, tmp_path, change, match):
    """Unguarded, float images in [0, 1] would all become pixel 0 and an int16 300 would read
    another channel's table entry: wrong statistics, wrong training data, no error."""
    out = tmp_path / "decoded"
    path = data.export("cifar2", out, cache=False)
    with np.load(path) as f:
        got = {k: f[k] for k in f.files}
    got["x_train"], got["y_train"] = change(got["x_train"], got["y_train"])
    np.savez_compressed(path, **got)
    with pytest.raises(data.DataFormatError, match=match):
        data.load("cifar2", data_dir=out)


def test_whole_float_sizes_are_accepted(mock_cifar, tmp_path):
    d = data.load("cifar10", val_size=10.0, train_size=20.0, cache=tmp_path)
    assert d.info["sizes"]["train"] == 20 and d.info["sizes"]["val"] == 10


def test_cache_hit_and_corruption(mock_cifar, tmp_path):
    data.load("mnist", cache=tmp_path)
    files = sorted(tmp_path.glob("mnist-*.npz"))
    assert len(files) == 2  # train and test
    before = [f.stat().st_mtime_ns for f in files]
    data.load("mnist", cache=tmp_path)  # a hit rewrites nothing
    assert [f.stat().st_mtime_ns for f in files] == before
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncate: corrupt
    with pytest.warns(UserWarning, match="corrupt cache"):
        d = data.load("mnist", cache=tmp_path)
    assert d.train.x.shape[1] == 784
    with np.load(files[0]) as f:  # rebuilt
        assert len(f["x"]) == 60
    np.savez(files[0], x=np.zeros((3, 28, 28, 1), np.uint8), y=np.zeros(3, np.int32), key=np.array("other"))
    with pytest.warns(UserWarning, match="stale cache"):
        data.load("mnist", cache=tmp_path)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"name": "imagenet"}, "unknown dataset"),
        ({"name": "mnist", "val_fraction": 1.0}, "val_fraction"),
        ({"name": "mnist", "val_fraction": -0.1}, "val_fraction"),
        ({"name": "mnist", "val_size": 2.5}, "val_size"),
        ({"name": "mnist", "layout": "nchw"}, "layout"),
    ],
)
def test_bad_arguments(kwargs, match, mock_cifar):
    with pytest.raises(ValueError, match=match):
        data.load(**kwargs, cache=False)


def test_missing_data_fails_fast_with_instructions(tmp_path, monkeypatch):
    import time

    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: None)  # as without TensorFlow
    t = time.time()
    with pytest.raises(data.DataNotFoundError) as e:
        data.load("cifar2", data_dir=tmp_path / "nowhere", cache=False)
    assert time.time() - t < 10
    msg = str(e.value)
    assert "cifar10" in msg and "nowhere" in msg and "pip install -e '.[prepare]'" in msg
    monkeypatch.setattr(data.importlib.util, "find_spec", lambda name: object())  # TensorFlow installed:
    assert "pip install" not in data.how_to_prepare("cifar10")  # no install hint, only how to prepare
    with pytest.raises(data.DataNotFoundError, match="not prepared"):
        data.find_prepared("mnist", tmp_path)


# ------------------------------------------------------------------ real data
def test_real_cifar2_sizes():
    require_real_data("cifar2")
    d = data.load("cifar2")
    assert d.info["sizes"] == {"train": 9000, "val": 1000, "test": 2000}
    assert d.info["class_counts_before_split"] == {"train": [5000, 5000], "test": [1000, 1000]}
    assert d.train.x.shape == (9000, 3072)


def test_real_mnist_counts():
    require_real_data("mnist")
    d = data.load("mnist", val_fraction=0.0, normalize=False)
    assert d.info["sizes"] == {"train": 60000, "val": 0, "test": 10000}
    assert d.info["class_counts_before_split"]["train"] == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    np.testing.assert_allclose(d.info["mean"], [0.1307], atol=1e-4)
    np.testing.assert_allclose(d.info["std"], [0.3081], atol=1e-4)


def test_real_cifar10_channel_means_and_dd2424_protocol():
    require_real_data("cifar10")
    d = data.load("cifar10", val_fraction=0.0)
    np.testing.assert_allclose(d.info["mean"], [0.4914, 0.4822, 0.4465], atol=1e-4)
    np.testing.assert_allclose(d.info["std"], [0.2470, 0.2435, 0.2616], atol=1e-4)
    dd = data.load("cifar10", val_size=10000, train_size=10000)
    assert dd.info["sizes"] == {"train": 10000, "val": 10000, "test": 10000}
