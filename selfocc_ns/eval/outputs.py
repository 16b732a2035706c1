"""Outputs checked before any work, and JSON reports that are always valid.

- `check_output_file` / `check_output_dir`: a path the command will write must be creatable and writable NOW
  (its first existing ancestor a writable folder, not a file), so a long evaluation or export never ends by
  losing its result. The check writes (and removes) one temporary file in that ancestor; nothing is left.
- `json_safe`: non-finite floats (NaN, inf: e.g. the IoU of a class absent from the split) become `null`,
  and the keys that had them are returned for one warning; `json.dumps(..., allow_nan=False)` then always works.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any, List, Tuple

import numpy as np


class OutputPathError(ValueError):
    """An output path that cannot be written (named with the flag that gave it)."""


def _first_existing(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_dir(path: Path, flag: str) -> None:
    """`path` is (or can be created as) a writable folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path}: exists and is not a folder")
    ancestor = _first_existing(path)
    if not ancestor.is_dir():
        raise OutputPathError(f"{flag} {path}: cannot be created, {ancestor} is a file")
    try:  # a real write (permission bits say nothing for root or on a read-only mount)
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as err:
        raise OutputPathError(f"{flag} {path}: {ancestor} is not writable ({err.strerror})") from err


def check_output_file(path: Path, flag: str) -> None:
    """`path` is (or can be created as) a writable file."""
    path = Path(path)
    if path.is_dir():
        raise OutputPathError(f"{flag} {path}: is a folder, expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{flag} {path}: exists and is not writable")
    check_output_dir(path.parent, flag + " (its folder)")


def json_safe(value: Any, key: str = "") -> Tuple[Any, List[str]]:
    """(value with every non-finite float replaced by None, the dotted keys replaced); numpy scalars become Python."""
    if isinstance(value, dict):
        out, bad = {}, []
        for k, v in value.items():
            out[k], sub = json_safe(v, f"{key}.{k}" if key else str(k))
            bad += sub
        return out, bad
    if isinstance(value, (list, tuple)):
        pairs = [json_safe(v, f"{key}[{i}]") for i, v in enumerate(value)]
        return [p[0] for p in pairs], [b for p in pairs for b in p[1]]
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None, [key]
    return value, []
