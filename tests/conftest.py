import importlib
import os

import jax
import pytest

# The tests check arithmetic: float32 must mean float32. On NVIDIA GPUs XLA runs float32 matmuls and
# convolutions in TF32 by default (about 3e-4 relative error, see bench's precision probe), so the
# suite asks for full precision. On a CPU this changes nothing.
jax.config.update("jax_default_matmul_precision", "highest")

# The jaxgd command keeps compiled programs on disk (jaxgd.compile_cache); the tests that call it, in
# this process or in children, compile afresh unless they ask for a cache (tests/test_compile_cache.py),
# so that no test reads what another one compiled, or writes into the user's cache. A cache shared by
# the whole run was tried (session 15): on the 2-core CI machine the suite took 798 s with it and 736 s
# without, one run each, back to back.
os.environ.setdefault("JAXGD_COMPILE_CACHE", "off")

# In CI (.ci/run exports CI=true) the real data must be present: a missing dataset fails.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_real_data(name, tfds=False):
    """Skip (locally) or fail (CI) when the prepared TFDS dataset ``name`` is absent. A decoded
    export (``jaxgd data export``) will do, unless ``tfds``: the test reads TFDS itself."""
    from jaxgd import data

    try:
        found = data.find_prepared(name)
    except FileNotFoundError as e:
        if IN_CI:
            pytest.fail(f"CI must have the real data: {e}")
        pytest.skip(f"real {name} not prepared here: {e}")
    if tfds and found.suffix == ".npz":
        if IN_CI:
            pytest.fail(f"CI must have the real TFDS data, not only the export {found}")
        pytest.skip(f"only a decoded export of {name} is here ({found}); this test reads TFDS")


def require_peer(name):
    """The peer library a cross-check compares with (``torch``, ``flax``): skipped where it is not
    installed, but in CI a cross-check must run, so there its absence fails the test."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        if IN_CI:
            pytest.fail(
                f"CI must run the cross-checks, but {name} does not import ({e}): .ci/run installs the 'peers' extra"
            )
        pytest.skip(
            f"{name} is not installed here: pip install -e '.[peers]' runs this cross-check", allow_module_level=True
        )


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Each test module's compiled programs are dropped when it ends: a test run's memory stays that of
    its largest module, not of all of them together."""
    yield
    jax.clear_caches()
