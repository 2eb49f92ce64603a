"""Files written so that a reader sees the old content or the new, never half of either.

Every artifact driftloop writes in place of an older one (the champion and shadow pointers, an
imported archive, a training report, the guard set's copy) goes through :func:`replace_atomically`:
the content is written to a temporary file in the same directory, flushed to disk, and renamed
over the target (``os.replace``: atomic on POSIX and Windows within one filesystem).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np


def replace_atomically(path: str | Path, write: Callable[[Path], None], *, mode: int = 0o644) -> Path:
    """Write ``path`` through ``write(tmp)`` (which fills the temporary file it is given), then
    rename it over ``path``. A failure leaves ``path`` as it was and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # mkstemp's 0600 would surprise whoever reads the file next
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def jsonable(value: Any) -> Any:
    """JSON-safe values, for every JSON driftloop writes (reports, HTTP answers, the CLI): numpy
    values as Python ones, times as ISO 8601, NaN and infinities as null (``json`` would write NaN,
    which is not JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_text_atomically(path: str | Path, text: str) -> Path:
    """:func:`replace_atomically` for a text file (UTF-8)."""
    return replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))
