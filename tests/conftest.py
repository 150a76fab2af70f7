import importlib
import os
import shutil
import tempfile

import jax
import pytest

# The tests check arithmetic: float32 must mean float32. On NVIDIA GPUs XLA runs float32 matmuls and
# convolutions in TF32 by default (about 3e-4 relative error, see bench's precision probe), so the
# suite asks for full precision. On a CPU this changes nothing.
jax.config.update("jax_default_matmul_precision", "highest")

# Compiled programs: one persistent compilation cache (jaxgd.compile_cache) for the whole test run,
# in a temporary folder that the run creates and removes, shared by its processes (pytest-xdist's
# workers and the jaxgd commands the tests start, which inherit the environment). A program that
# several tests build (the same layer, model or step after a module's jax.clear_caches, in the other
# worker, or in a child process) is compiled once and then loaded. JAX keys an entry by the program,
# its compile options, the device and JAX's version, so a load gives what compiling would; the
# user's own cache is never read or written. JAXGD_COMPILE_CACHE=off runs the suite without it.
# Tests of the cache itself name their own folders.
_RUN_CACHE = None


def pytest_configure(config):
    global _RUN_CACHE
    from jaxgd import compile_cache
    worker = hasattr(config, "workerinput")  # an xdist worker: the controller chose the folder
    if not worker and os.environ.get(compile_cache.ENV, "").strip().lower() not in compile_cache.OFF:
        _RUN_CACHE = tempfile.mkdtemp(prefix="jaxgd-tests-xla-")
        os.environ[compile_cache.ENV] = _RUN_CACHE
    if os.environ.get(compile_cache.ENV):
        compile_cache.enable()


def pytest_unconfigure(config):
    if _RUN_CACHE is not None:
        shutil.rmtree(_RUN_CACHE, ignore_errors=True)


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
            pytest.fail(f"CI must run the cross-checks, but {name} does not import ({e}): .ci/run installs "
                        "the 'peers' extra")
        pytest.skip(f"{name} is not installed here: pip install -e '.[peers]' runs this cross-check",
                    allow_module_level=True)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Each test module's compiled programs are dropped when it ends: a test run's memory stays that of
    its largest module, not of all of them together."""
    yield
    jax.clear_caches()
