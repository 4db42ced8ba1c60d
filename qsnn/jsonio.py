"""What qsnn's files share: one JSON policy and one hash.

JSON (:func:`to_jsonable`, :func:`dumps`, :func:`write_json`): the reports, manifests and ONNX
metadata qsnn writes hold plain JSON values only. NumPy scalars and arrays become numbers and
lists, tuples lists, paths strings, objects with ``to_dict()`` their dict, anything else its
``str``; a float that is not finite (NaN, ±inf) becomes ``null``, JSON's "no value" (JSON has no
NaN, and a reader should not have to parse ``"nan"``).

Hash (:func:`sha256_file`): the SHA-256 of a file, as checkpoints' provenance and target manifests
record it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from qsnn.atomic import atomic_write_text


def to_jsonable(value: Any) -> Any:
    """Plain JSON data (dicts with string keys, lists, str, int, float, bool, None) from ``value``."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "to_dict"):
        return to_jsonable(value.to_dict())
    return str(value)


def _dump(value: Any, indent: int) -> str:
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {_dump(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return json.dumps(value)  # lists of numbers/strings on one line
        return "[\n" + ",\n".join(inner + _dump(v, indent + 2) for v in value) + "\n" + pad + "]"
    return json.dumps(value)


def dumps(data: Any) -> str:
    """``data`` as JSON text (:func:`to_jsonable`): two-space indentation, lists of scalars on one line."""
    return _dump(to_jsonable(data), 0) + "\n"


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as JSON (:func:`dumps`) atomically."""
    atomic_write_text(path, dumps(data))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_key(path: Path) -> tuple[str, int, int]:
    """Cache key of a file: its path, and its mtime and size so a rewritten file is read again."""
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def readonly(a: "np.ndarray") -> "np.ndarray":
    """``a``, marked read-only (arrays shared from a cache must not be changed by a caller)."""
    a.setflags(write=False)
    return a
