"""Atomic file writes: a temporary file beside the target, fsync, then ``os.replace``.

A reader never sees a half-written file, and a failed write leaves the old file and no temporary file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO


def write_atomic(path: str | os.PathLike[str], write: Callable[[TextIO], object]) -> Path:
    """Create ``path`` (and its parents) with ``write(fh)`` on a UTF-8 text handle, atomically."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
