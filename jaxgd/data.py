"""MNIST, CIFAR-10 and CIFAR-2 through tensorflow-datasets, as arrays ready for the device.

Reading uses ``tfds.data_source`` (ArrayRecord, random access, no TensorFlow).
Decoded uint8 splits are cached as ``.npz`` so a second load takes well under a
second; a stale or corrupt cache file is detected and rebuilt. ``export`` writes a dataset's
decoded splits to one compressed file that ``load`` reads without TFDS (``jaxgd data export``).

- Data directory: the ``data_dir`` argument, else ``$TFDS_DATA_DIR``, else TFDS's
  default ``~/tensorflow_datasets``.
- Validation: a seeded random permutation of the training split (not
  stratified); ``val_fraction`` of it (default 10%) or exactly ``val_size`` images.
- Preprocessing: scale to [0, 1], then subtract the per-channel mean and divide by
  the per-channel std of the *training part only*.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import socket
import threading
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from jaxgd.files import atomic_write

DATASETS = {
    # name: (tfds name, class names or None = from TFDS, labels kept (None = all))
    "mnist": ("mnist", [str(i) for i in range(10)], None),
    "cifar10": (
        "cifar10",
        ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
        None,
    ),
    # CIFAR-2: airplane (0) and bird (2), relabelled 0 and 1
    "cifar2": ("cifar10", ["airplane", "bird"], (0, 2)),
}


# the decoded images of each dataset: uint8 pixels 0..255, this shape per image
IMAGE_SHAPES = {"mnist": (28, 28, 1), "cifar10": (32, 32, 3), "cifar2": (32, 32, 3)}


class DataNotFoundError(FileNotFoundError):
    """The dataset is not prepared in the data directory and cannot be prepared here."""


class DataFormatError(ValueError):
    """Images or labels (an export, a decoded split) not as ``data`` reads them: another dtype,
    range, shape or channel count."""


def check_split(name, x, y, where="the data"):
    """Refuse, in one line, images or labels that ``load`` would turn into wrong numbers without a
    word: pixels not uint8 (float images in [0, 1] would all be pixel 0; an int16 300 would read
    another channel's entry of the normalisation table), images not of ``name``'s shape and
    channels, labels not integers in ``[0, classes)`` or not one per image."""
    want, classes = IMAGE_SHAPES[name], len(_spec(name)[1])
    x, y = np.asarray(x), np.asarray(y)
    fix = f"write it again with jaxgd.data.export({name!r}, folder)"
    if x.dtype != np.uint8:
        lo, hi = (float(x.min()), float(x.max())) if x.size and np.issubdtype(x.dtype, np.number) else (0, 0)
        raise DataFormatError(
            f"{where}: images are {x.dtype} (values {lo:g}..{hi:g}); jaxgd reads uint8 pixels 0..255 "
            f"(images in [0, 1]: multiply by 255 and round to uint8), or {fix}"
        )
    if x.ndim != 4 or x.shape[1:] != want:
        raise DataFormatError(
            f"{where}: images of shape {x.shape[1:]} (as an array {x.shape}); {name} images are "
            f"{want} (height, width, channels), one per row: {fix}"
        )
    if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1 or len(y) != len(x):
        raise DataFormatError(
            f"{where}: labels of dtype {y.dtype} and shape {y.shape} for {len(x)} images; jaxgd "
            f"reads one integer label per image: {fix}"
        )
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise DataFormatError(
            f"{where}: labels {int(y.min())}..{int(y.max())}, but {name} has {classes} classes "
            f"(0..{classes - 1}): {fix}"
        )


class Split(NamedTuple):
    """One split of a dataset: images ``x`` (float32, NHWC or flattened) and labels ``y`` (int32)."""

    x: np.ndarray  # float32, (n, h, w, c) or (n, h*w*c)
    y: np.ndarray  # int32, (n,)


class Dataset(NamedTuple):
    """A dataset's train, validation and test splits, and ``info``: its name, classes, normalisation statistics (from
    the training part only), sizes and where it was read."""

    train: Split
    val: Split
    test: Split
    info: dict  # class names, normalisation statistics, split sizes, source


def resolve_data_dir(explicit=None) -> Path:
    """Where TFDS data is looked for: ``explicit`` (``--data-dir``), else ``$TFDS_DATA_DIR``, else
    ``~/tensorflow_datasets``."""
    return Path(explicit or os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets").expanduser()


def resolve_cache_dir(explicit=None) -> Path:
    """Where decoded splits and compiled programs are cached: ``explicit``, else ``$JAXGD_CACHE_DIR``, else
    ``~/.cache/jaxgd``."""
    return Path(explicit or os.environ.get("JAXGD_CACHE_DIR") or Path.home() / ".cache" / "jaxgd").expanduser()


def _cache_dir(cache):
    """``load``'s ``cache`` argument (True: the default folder, False: none, or a folder) as a folder or None."""
    return None if cache is False else resolve_cache_dir(None if cache is True else cache)


# Where TFDS's builders download each dataset from: probed before a download, so that an
# offline machine fails in seconds instead of retrying for minutes.
DOWNLOAD_HOSTS = {"mnist": "storage.googleapis.com", "cifar10": "www.cs.toronto.edu"}


def how_to_prepare(tfds_name) -> str:
    """What to do, in words, to prepare ``tfds_name`` for ``load`` (the message of a missing dataset)."""
    import importlib.util

    have_tf = importlib.util.find_spec("tensorflow") is not None
    install = (
        ""
        if have_tf
        else "pip install 'jaxgd[prepare]' (in a checkout: pip install -e '.[prepare]'; "
        "TensorFlow is needed only for this step) and "
    )
    return (
        f"Prepare it once on a machine with internet access: {install}load it once (jaxgd.data.load or any "
        f"experiment), or run python -c \"import tensorflow_datasets as tfds; tfds.builder('{tfds_name}', "
        f"file_format='array_record').download_and_prepare()\"; or point TFDS_DATA_DIR / "
        f"--data-dir at a folder that already holds {tfds_name}/<version>/."
    )


def what_is_there(tfds_name, root) -> str:
    """What ``root`` holds of ``tfds_name``, in words: for the message when it cannot be read."""
    root = Path(root)
    if not root.is_dir():
        return f"the folder {root} does not exist"
    ds = root / tfds_name
    if not ds.is_dir():
        held = sorted(p.name for p in root.iterdir() if not p.name.startswith("."))[:8]
        return f"{root} holds no {tfds_name}/ folder ({'it holds: ' + ', '.join(held) if held else 'it is empty'})"
    versions = sorted(p for p in ds.iterdir() if p.is_dir())
    if not versions:
        return f"{ds} holds no version folder"
    v = versions[-1]
    if not (v / "dataset_info.json").exists():
        return f"{v} has no dataset_info.json (an unfinished preparation?)"
    names = [p.name for p in v.iterdir()]
    if not any(".array_record" in n for n in names):
        other = sorted(
            {n.split(".")[1].split("-")[0] for n in names if n.count(".") and "-" in n and not n.endswith(".json")}
        )
        return f"{v} holds no ArrayRecord files" + (
            f" (it holds {', '.join(other).upper()} files, which "
            "jaxgd cannot read without TensorFlow: prepare it again with file_format='array_record')"
            if other
            else ""
        )
    return f"{v} holds ArrayRecord files, but TFDS could not open them"


def find_prepared(name, data_dir=None) -> Path:
    """The folder ``<data_dir>/<tfds name>/<version>`` of a prepared dataset, or the decoded copy
    ``<data_dir>/jaxgd-decoded-<name>.npz`` that ``export`` wrote; raises DataNotFoundError."""
    tfds_name = _spec(name)[0]
    root = resolve_data_dir(data_dir)
    exported = exported_path(name, root)
    if exported.is_file():
        return exported
    found = sorted(
        p
        for p in root.glob(f"{tfds_name}/*/dataset_info.json")
        if any(".array_record" in q.name for q in p.parent.iterdir())
    )
    if not found:
        raise DataNotFoundError(
            f"dataset {name!r} ({tfds_name}) is not prepared in {root}: "
            f"{what_is_there(tfds_name, root)}. " + how_to_prepare(tfds_name)
        )
    return found[-1].parent


def exported_path(name, data_dir=None) -> Path:
    """Where ``export`` puts ``name``'s decoded copy in ``data_dir``."""
    return resolve_data_dir(data_dir) / f"jaxgd-decoded-{name}.npz"


def export(name, folder, *, data_dir=None, cache=True) -> Path:
    """Write ``name``'s decoded TFDS train and test splits (uint8 images, int32 labels as ``load``
    numbers them, CIFAR-2's already relabelled 0/1) to ``<folder>/jaxgd-decoded-<name>.npz``,
    compressed. ``load(name, data_dir=folder)`` then reads that file and needs neither TFDS nor
    the TFDS folder: for a machine that takes only a few MB along and cannot download (a lent GPU
    box). Splits, normalisation and seeds are then computed exactly as from TFDS. Returns the path."""
    tfds_name, classes, _ = _spec(name)
    (xtr, ytr), (xte, yte), version = _from_tfds(name, resolve_data_dir(data_dir), _cache_dir(cache), download=False)
    path = Path(folder).expanduser() / f"jaxgd-decoded-{name}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(
        path,
        lambda f: np.savez_compressed(
            f,
            x_train=xtr,
            y_train=ytr,
            x_test=xte,
            y_test=yte,
            name=np.array(name),
            tfds_name=np.array(tfds_name),
            version=np.array(version),
            classes=np.array(classes),
        ),
    )
    return path


def _from_tfds(name, root, cache, download):
    """``(x_train, y_train), (x_test, y_test), version`` of ``name`` decoded from the TFDS folder
    ``root`` (through the cache), relabelled where ``name`` keeps some classes only (CIFAR-2)."""
    tfds_name, _, keep = _spec(name)
    raw = {s: _raw_split(tfds_name, s, root, cache, download) for s in ("train", "test")}
    (xtr, ytr), (xte, yte) = raw["train"][:2], raw["test"][:2]
    if keep is not None:
        (xtr, ytr), (xte, yte) = _relabel(xtr, ytr, keep), _relabel(xte, yte, keep)
    return (xtr, ytr), (xte, yte), raw["train"][2]


def _read_export(name, path):
    """``(x_train, y_train), (x_test, y_test), version`` from an ``export`` file, checked."""
    try:
        with np.load(path) as f:
            got = {k: f[k] for k in f.files}
    except Exception as e:  # noqa: BLE001  (np.load fails in many ways on a bad file)
        raise DataNotFoundError(
            f"{path} is not a readable jaxgd export ({type(e).__name__}: {e}); write it "
            f"again with jaxgd.data.export({name!r}, folder)"
        ) from None
    need = {"x_train", "y_train", "x_test", "y_test", "name", "version", "classes"}
    if (
        not need <= set(got)
        or str(got["name"]) != name
        or list(got["classes"]) != _spec(name)[1]
        or any(len(got[f"x_{s}"]) != len(got[f"y_{s}"]) for s in ("train", "test"))
    ):
        raise DataNotFoundError(
            f"{path} is not a complete export of {name!r} (it holds "
            f"{sorted(got)}); write it again with jaxgd.data.export({name!r}, folder)"
        )
    for s in ("train", "test"):
        check_split(name, got[f"x_{s}"], got[f"y_{s}"], f"{path} ({s} split)")
    return (
        (got["x_train"], got["y_train"].astype(np.int32)),
        (got["x_test"], got["y_test"].astype(np.int32)),
        str(got["version"]),
    )


def _spec(name):
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}")
    return DATASETS[name]


def reachable(host, port=443, timeout=3.0) -> bool:
    """Whether a TCP connection to ``host`` (or the HTTPS proxy) opens within ``timeout`` seconds,
    name lookup included."""
    proxy = urllib.request.getproxies().get("https")
    if proxy:
        u = urllib.parse.urlparse(proxy)
        host, port = u.hostname or host, u.port or 8080
    ok = []

    def connect():
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            ok.append(True)
        except OSError:
            pass

    t = threading.Thread(target=connect, daemon=True)  # a stuck name lookup must not hold us
    t.start()
    t.join(timeout)
    return bool(ok)


def can_download(tfds_name, download=True) -> str | None:
    """``None`` if TFDS can download and prepare ``tfds_name`` here (and ``download`` allows it),
    else why not."""
    if not download:
        return "downloading is off"
    if importlib.util.find_spec("tensorflow") is None:
        return "TensorFlow is not installed, and TFDS needs it to prepare a download"
    if os.environ.get("JAXGD_OFFLINE"):
        return "JAXGD_OFFLINE is set, so nothing is downloaded"
    host = DOWNLOAD_HOSTS.get(tfds_name)
    if host and not reachable(host):
        return f"{host} cannot be reached (no network?), so TFDS cannot download it"
    return None


def check_available(name, data_dir=None, download=True):
    """Raise ``DataNotFoundError`` at once when ``name`` is neither prepared nor downloadable here."""
    try:
        find_prepared(name, data_dir)
    except DataNotFoundError as e:
        why = can_download(_spec(name)[0], download)
        if why is not None:
            raise DataNotFoundError(f"{e} ({why}.)") from None


def _open(tfds_name, split, root, download):
    """``tfds.data_source`` that fails fast with one clear message when the data is missing."""
    import tensorflow_datasets as tfds

    try:
        return tfds.data_source(tfds_name, split=split, data_dir=str(root), download=False)
    except Exception as e:  # noqa: BLE001  (TFDS raises several types for "not prepared")
        missing = e
    why = can_download(tfds_name, download)
    if why is None:
        return tfds.data_source(
            tfds_name, split=split, data_dir=str(root), download=True, builder_kwargs={"file_format": "array_record"}
        )
    found = what_is_there(tfds_name, root)
    cause = (
        f" TFDS said: {type(missing).__name__}: {str(missing).splitlines()[0][:200]}."
        if found.endswith("could not open them")
        else ""
    )
    raise DataNotFoundError(
        f"dataset {tfds_name!r} split {split!r} could not be read from {root}: {found} "
        f"({why}).{cause} " + how_to_prepare(tfds_name)
    )


def _decode(source):
    rows = [source[i] for i in range(len(source))]  # as fast as __getitems__, which TFDS's mock lacks
    x = np.stack([r["image"] for r in rows])  # uint8 from TFDS: check_split refuses anything else, never casts
    y = np.asarray([r["label"] for r in rows], np.int32)
    return x, y


def _raw_split(tfds_name, split, root, cache, download):
    """Decoded ``(uint8 images, int32 labels)`` of one TFDS split, through the cache."""
    source = _open(tfds_name, split, root, download)
    info = getattr(source, "dataset_info", None)
    version = str(getattr(info, "version", "unknown"))
    key = f"{tfds_name}|{version}|{split}|{len(source)}|{root.resolve()}"
    path = None
    if cache is not None:
        path = cache / f"{tfds_name}-{version}-{split}-{hashlib.sha1(key.encode()).hexdigest()[:10]}.npz"
        if path.exists():
            try:
                with np.load(path) as f:  # each f[name] reads (and checks) the array again: once each
                    stored, x, y = str(f["key"]), f["x"], f["y"]
                if stored == key and len(x) == len(y) == len(source):
                    return x, y, version
                warnings.warn(f"stale cache {path} (made from other data); rebuilding it", stacklevel=2)
            except Exception as e:  # noqa: BLE001  (truncated / corrupt zip, missing arrays)
                warnings.warn(f"corrupt cache {path} ({type(e).__name__}); rebuilding it", stacklevel=2)
    x, y = _decode(source)
    if path is not None:  # a temp file of its own per writer: two processes may fill a cold cache
        atomic_write(path, lambda f: np.savez(f, x=x, y=y, key=np.array(key)))
    return x, y, version


def load(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    val_size: int | None = None,
    train_size: int | None = None,
    seed: int = 0,
    layout: str = "flat",
    normalize: bool = True,
    cache: bool | str | os.PathLike = True,
    download: bool = True,
) -> Dataset:
    """Load ``"mnist"``, ``"cifar10"`` or ``"cifar2"`` as float32 images and int32 labels.

    The TFDS train split is permuted with ``seed`` and cut into validation
    (``val_size`` images, else ``val_fraction`` of it) and training (the rest, or
    its first ``train_size`` images). The TFDS test split is the test set.
    ``layout`` is ``"flat"`` (n, h*w*c) or ``"nhwc"``. ``cache`` is True (default
    cache dir), False, or a folder. ``download`` lets TFDS prepare missing data
    when TensorFlow is installed; otherwise a missing dataset raises
    ``DataNotFoundError`` at once. Where ``data_dir`` holds ``jaxgd-decoded-<name>.npz``
    (see ``export``), that file is read instead of TFDS.
    """
    tfds_name, classes, _ = _spec(name)
    if layout not in ("flat", "nhwc"):
        raise ValueError(f"layout must be 'flat' or 'nhwc', got {layout!r}")
    if val_size is None and not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    for what, v in (("val_size", val_size), ("train_size", train_size)):
        if v is not None and (isinstance(v, bool) or int(v) != v or v < (0 if what == "val_size" else 1)):
            raise ValueError(f"{what} must be a whole number >= {0 if what == 'val_size' else 1}, got {v}")
    val_size = None if val_size is None else int(val_size)
    train_size = None if train_size is None else int(train_size)
    root = resolve_data_dir(data_dir)
    source = exported_path(name, root)
    if source.is_file():  # a decoded copy written by export: no TFDS needed
        (xtr, ytr), (xte, yte), version = _read_export(name, source)
    else:
        source = root
        (xtr, ytr), (xte, yte), version = _from_tfds(name, root, _cache_dir(cache), download)
        for split, (xs, ys) in (("train", (xtr, ytr)), ("test", (xte, yte))):
            check_split(name, xs, ys, f"{name}'s decoded {split} split")
    counts_before = {
        "train": np.bincount(ytr, minlength=len(classes)).tolist(),
        "test": np.bincount(yte, minlength=len(classes)).tolist(),
    }

    n = len(ytr)
    n_val = int(val_size) if val_size is not None else round(val_fraction * n)
    if n_val >= n:
        raise ValueError(f"val_size {n_val} leaves no training images out of {n}")
    perm = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = perm[:n_val], perm[n_val:]
    if train_size is not None:
        if train_size > len(train_idx):
            raise ValueError(f"train_size {train_size} > the {len(train_idx)} images left after validation")
        train_idx = train_idx[:train_size]

    x_train = xtr[train_idx]  # gathered once: the statistics and the training split both read it
    mean, std = channel_stats(x_train)
    table = normalisation_table(mean, std, normalize)

    def prep(x):
        x = lookup(table, x)
        return x.reshape(len(x), int(np.prod(x.shape[1:]))) if layout == "flat" else x

    info = {
        "name": name,
        "tfds_name": tfds_name,
        "version": version,
        "classes": classes,
        "image_shape": list(xtr.shape[1:]),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "normalized": normalize,
        "layout": layout,
        "seed": seed,
        "sizes": {"train": len(train_idx), "val": n_val, "test": len(yte)},
        "class_counts_before_split": counts_before,
        "data_dir": str(root),
        **({"source": str(source)} if source != root else {}),
        "split": "seeded random permutation of the TFDS train split (not stratified)",
    }
    return Dataset(
        Split(prep(x_train), ytr[train_idx]),
        Split(prep(xtr[val_idx]), ytr[val_idx]),
        Split(prep(xte), yte.copy()),
        info,
    )


def unit(u8):
    """uint8 images as float32 in [0, 1]."""
    x = u8.astype(np.float32)
    x /= 255.0
    return x


def _value_index(u8):
    """Each pixel's place in a table of 256 entries per channel (channels last): ``256 c + v``."""
    if u8.dtype != np.uint8:  # a 256-entry table per channel: any other dtype reads the wrong entries
        raise DataFormatError(f"pixels must be uint8 (0..255) to index the per-channel value table, got {u8.dtype}")
    idx = u8.astype(np.intp)
    idx += np.arange(u8.shape[-1], dtype=np.intp) * 256
    return idx


def normalisation_table(mean, std, normalize=True):
    """``load``'s normalisation of each of the 256 pixel values per channel, ``(v / 255 - mean) /
    std`` in float32 (``unit(v)`` alone without ``normalize``): ``(channels, 256)``."""
    table = np.tile(unit(np.arange(256, dtype=np.uint8)), (len(mean), 1))
    if normalize:
        table -= mean[:, None]
        table /= std[:, None]
    return table


def lookup(table, u8, chunk=64):
    """Each pixel of the uint8 images ``u8`` (channels last) replaced by its entry of ``table``
    (``normalisation_table``), as float32: the same numbers bit for bit as that arithmetic on every
    pixel (tests/test_data.py), with one pass over the images instead of four. ``chunk`` images at a
    time: the gather's indices stay small."""
    flat = table.ravel()
    out = np.empty(u8.shape, np.float32)
    for i in range(0, len(u8), chunk):
        np.take(flat, _value_index(u8[i : i + chunk]), out=out[i : i + chunk])
    return out


def channel_stats(u8):
    """The per-channel mean and standard deviation (float32) of ``unit(u8)`` over every axis but
    the last: ``channel_moments`` in float32."""
    mean, var = channel_moments(u8)
    return mean.astype(np.float32), np.sqrt(var).astype(np.float32)


def channel_moments(u8, chunk=4096):
    """The per-channel mean and variance (float64) of ``unit(u8)`` over every axis but the last,
    from how often each of the 256 pixel values occurs in each channel. A count times a value is
    exact in float64 (a float32 value has 24 significant bits, a count under 2**29), and
    ``math.fsum`` adds the 256 products of a channel with one rounding: the mean is the exact one
    rounded twice (the sum, then the division), the variance within two ulps of the exact one. numpy's
    ``x.mean(axes, dtype=float64)``, which load used before, rounds at every pixel of its running sum
    (4e-11 relative from these on CIFAR-10's training split); rounded to float32, as ``load`` uses
    them, the two agree on every split the committed results were computed with (tests/test_data.py).
    One pass over the images, ``chunk`` of them at a time."""
    c = u8.shape[-1]
    counts = np.zeros((c, 256), np.int64)
    for i in range(0, len(u8), chunk):
        counts += np.bincount(_value_index(u8[i : i + chunk]).ravel(), minlength=256 * c).reshape(c, 256)
    n = u8.size // c
    values = unit(np.arange(256, dtype=np.uint8)).astype(np.float64)
    mean = np.array([math.fsum(k * values) for k in counts]) / n
    var = np.array([math.fsum(k * (values - m) ** 2) for k, m in zip(counts, mean)]) / n
    return mean, var


def _relabel(x, y, keep):
    mask = np.isin(y, keep)
    lut = np.full(max(keep) + 1, -1, np.int32)
    lut[list(keep)] = np.arange(len(keep))
    return x[mask], lut[y[mask]]
