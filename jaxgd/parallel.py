"""Many devices and many hosts, through ``jax.sharding`` (XLA SPMD): no process pools, no pmap.

A ``Mesh`` with axes ``("cfg", "data")`` (``make_mesh``) tells ``train.fit(configs=Configs(mesh=...))`` how to spread
the work:

- ``cfg``: the stacked configs of a grid are sharded over the devices (``P("cfg")``); the grid is
  padded to a multiple of the axis size with copies of its last config, and the copies are
  dropped from what ``fit`` returns. The data is replicated.
- ``data``: each minibatch is sharded over the devices (``P("data")``) and the parameters are
  replicated; the compiler sums the gradients. The program means what it means on one device, so
  batch-norm statistics are those of the global batch, and each shard gets its own part of the
  global dropout mask.

Both axes at once make a 2-D mesh. Results differ from one device's only by float reassociation.
Across hosts, call ``initialize`` first (before any computation): every process then runs the same
program over the global mesh, holds the (small) datasets whole, and ``is_writer()`` (process 0)
alone writes results.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXES = ("cfg", "data")


def initialize(coordinator=None, num_processes=None, process_id=None):
    """Join a multi-process run (``jax.distributed.initialize``; with no arguments it reads them
    from the environment, as on SLURM or a TPU pod). On CPU, collectives go through gloo."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by the CPU backend only
    kw = {
        k: v
        for k, v in (("coordinator_address", coordinator), ("num_processes", num_processes), ("process_id", process_id))
        if v is not None
    }
    jax.distributed.initialize(**kw)


def is_writer() -> bool:
    """Whether this process writes results (process 0; the only one in a single-process run)."""
    return jax.process_index() == 0


def broadcast_json(obj):
    """Process 0's JSON-able ``obj``, on every process (so that all of them take the same
    decisions, e.g. which finished configs to skip); ``obj`` itself in a single-process run."""
    if jax.process_count() == 1:
        return obj
    import json

    from jax.experimental import multihost_utils

    raw = np.frombuffer(json.dumps(obj).encode(), np.uint8) if is_writer() else np.zeros(0, np.uint8)
    n = int(multihost_utils.broadcast_one_to_all(np.int64(raw.size)))
    buf = np.zeros(n, np.uint8)
    buf[: raw.size] = raw
    return json.loads(bytes(np.asarray(multihost_utils.broadcast_one_to_all(buf))).decode())


def make_mesh(configs=None, data=1, devices=None) -> Mesh:
    """A ``("cfg", "data")`` mesh of ``configs x data`` devices (``configs`` defaults to all the
    devices that ``data`` leaves)."""
    devices = list(jax.devices() if devices is None else devices)
    if configs is None:
        configs = len(devices) // data
    for name, v in (("configs", configs), ("data", data)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"mesh axis {name} must be an integer >= 1, got {v!r}")
    if configs * data > len(devices):
        raise ValueError(f"a {configs} x {data} mesh needs {configs * data} devices; there are {len(devices)}")
    return Mesh(np.asarray(devices[: configs * data]).reshape(configs, data), AXES)


def axis_size(mesh, name) -> int:
    """How many devices the mesh axis ``name`` spans (1 without a mesh or without that axis)."""
    return int(mesh.shape[name]) if mesh is not None and name in mesh.axis_names else 1


def check_mesh(mesh):
    """Refuse (``ValueError``) anything but a ``jax.sharding.Mesh`` whose axes are among ``AXES``."""
    if not isinstance(mesh, Mesh):
        raise ValueError(f"mesh must be a jax.sharding.Mesh (see jaxgd.parallel.make_mesh), got {type(mesh).__name__}")
    unknown = set(mesh.axis_names) - set(AXES)
    if unknown:
        raise ValueError(f"mesh axes must be among {AXES}, got {mesh.axis_names}")


def pad_configs(tree, n, multiple):
    """Pad the leading (configs) axis of every leaf from ``n`` to a multiple of ``multiple`` with
    copies of the last config."""
    extra = -n % multiple
    if not extra:
        return tree
    return jax.tree_util.tree_map(
        lambda a: np.concatenate([np.asarray(a), np.repeat(np.asarray(a)[-1:], extra, 0)]), tree
    )


def put(tree, mesh, spec):
    """Host values as global arrays laid out by ``spec`` on ``mesh`` (every process passes the
    same values; each keeps the shards of its own devices)."""
    sharding = NamedSharding(mesh, spec)

    def one(a):
        a = np.asarray(a)
        s = sharding if a.ndim >= len(spec) else NamedSharding(mesh, P())
        return jax.make_array_from_callback(a.shape, s, lambda idx: a[idx])

    return jax.tree_util.tree_map(one, tree)


def lay_out(mesh, n_cfg, per_config, key, data, key_per_config=False, data_per_config=False):
    """``fit``'s values as global arrays on ``mesh``: ``per_config`` (a tuple of trees with a
    leading configs axis when ``n_cfg`` is not None) padded to a multiple of the mesh's cfg axis
    (``pad_configs``) and split along it, so are ``key`` and ``data`` where they are per config;
    otherwise replicated. Returns ``(*per_config, key, data)``."""
    n_dev = axis_size(mesh, "cfg")
    split = [per_config] + [key] * key_per_config + [data] * data_per_config
    split = put(pad_configs(split, n_cfg or 1, n_dev if n_cfg else 1), mesh, P("cfg") if n_dev > 1 else P())
    key = split[1] if key_per_config else put(key, mesh, P())
    data = split[-1] if data_per_config else put(data, mesh, P())
    return (*split[0], key, data)


def fetch(tree):
    """A global array's values on this host, from every process's shards."""

    def one(a):
        if isinstance(a, jax.Array) and not a.is_fully_addressable:
            from jax.experimental import multihost_utils

            return np.asarray(multihost_utils.process_allgather(a, tiled=True))
        return np.asarray(a)

    return jax.tree_util.tree_map(one, tree)
