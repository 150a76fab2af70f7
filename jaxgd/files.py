"""Atomic file writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path, payload, mode=0o644) -> Path:
    """Write ``payload`` (str, bytes, or a function that writes to a binary file object) to a
    temp file of its own beside ``path``, then rename it over ``path``. On failure the temp
    file is removed and ``path`` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if callable(payload):
                payload(f)
            else:
                f.write(payload.encode() if isinstance(payload, str) else payload)
        os.chmod(tmp, mode)  # mkstemp makes it 0600; results are for everyone to read
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path
