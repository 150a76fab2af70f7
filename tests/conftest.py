import os

import pytest

# In CI (.ci/run exports CI=true) the real data must be present: a missing dataset fails.
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_real_data(name):
    """Skip (locally) or fail (CI) when the prepared TFDS dataset ``name`` is absent."""
    from jaxgd import data
    try:
        data.find_prepared(name)
    except FileNotFoundError as e:
        if IN_CI:
            pytest.fail(f"CI must have the real data: {e}")
        pytest.skip(f"real {name} not prepared here: {e}")
