"""``jax.random``'s own numbers, drawn so that a new shape compiles no new program.

Called eagerly, ``jax.random.uniform(key, shape)`` compiles one program per shape and dtype (the
threefry rounds: about a third of a second on a 2-core CPU; ``normal``'s inverse error function
makes it twice that), and a model's layers, a checker's problems and the tests' inputs meet
dozens of shapes. With JAX's partitionable threefry (``jax_threefry_partitionable``, the default
since JAX 0.5) each number is a function of the key and of its position in the flattened shape
only, so the numbers of ``shape`` are the first ``prod(shape)`` numbers of a flat draw of any
greater length. These functions draw a flat vector whose length is a power of two (at least
``MIN_LENGTH``) and cut it on the host: a few programs serve every shape, and every number is
the one ``jax.random`` gives (``tests/test_layers.py::test_draws_are_jax_randoms_numbers``).

Inside a trace (``jit``, ``vmap``, ``grad``), with another PRNG implementation or with the
partitionable flag off, they call ``jax.random`` itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

MIN_LENGTH = 1024


def _flat_draw_is_exact(key) -> bool:
    """Whether a flat draw gives ``jax.random``'s numbers for ``key``: a concrete raw key (not a
    tracer, not a typed key) under JAX's default, partitionable threefry."""
    return (
        not isinstance(key, jax.core.Tracer)
        and not jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        and jax.config.jax_threefry_partitionable  # type: ignore[attr-defined]  # jax sets its flags at import
        and jax.config.jax_default_prng_impl == "threefry2x32"  # type: ignore[attr-defined]
    )


def _drawn(key, draw, shape, dtype, *args):
    shape = tuple(int(s) for s in shape)
    if not _flat_draw_is_exact(key):
        return draw(key, shape, dtype, *args)
    n = math.prod(shape)
    flat = np.asarray(draw(key, (max(MIN_LENGTH, 1 << max(n - 1, 0).bit_length()),), dtype, *args))
    return jax.device_put(flat[:n].reshape(shape))


def uniform(
    key: jax.Array, shape: Sequence[int], dtype: DTypeLike = jnp.float32, minval: float = 0.0, maxval: float = 1.0
) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)``."""
    return _drawn(key, jax.random.uniform, shape, dtype, minval, maxval)


def normal(key: jax.Array, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``."""
    return _drawn(key, jax.random.normal, shape, dtype)
