"""Atomic file output: write to a temporary file in the same folder, fsync, then rename.

A reader, or a process killed half way, sees either the previous complete file or the new complete
file, never a truncated one. A process killed mid-write leaves at most a temporary sibling
``.NAME.XXXXXXXX.tmp`` behind; :func:`remove_stale_temporaries` clears those of a folder one owns
(``qsnn-train`` does so for its run directory when it starts or resumes).

Test hook: with ``QSNN_TEST_PAUSE_IN_WRITE="NAME#K=MARKER"`` in the environment, the K-th
:func:`atomic_write_bytes` / :func:`atomic_write_text` of a file called ``NAME`` in this process
writes half of the data into its temporary file, creates the file ``MARKER`` and sleeps (at most
:data:`TEST_PAUSE_SECONDS`) before finishing, so that a test can kill the process mid-write at a
chosen point (see ``tests/test_faults_kill.py`` and ``docs/faults.md``). Unset, it costs nothing.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import IO, Iterable, Iterator

#: The environment variable of the test hook (see the module docstring).
TEST_PAUSE_ENV = "QSNN_TEST_PAUSE_IN_WRITE"
TEST_PAUSE_SECONDS = 120.0
_writes: Counter[str] = Counter()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` for writing; on success rename it over ``path``.

    On any exception the temporary file is removed and ``path`` is left untouched. The new file
    gets the permissions ``open(path, "w")`` would give it (0666 less the umask), not the private
    0600 of a temporary file.
    """
    if "w" not in mode:
        raise ValueError("atomic_open is for writing ('w' or 'wb')")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with contextlib.suppress(OSError):   # a file system without modes keeps its own
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            exc.filename = str(path)          # say which output failed (e.g. a full disk while publishing it)
        raise
    fsync_path(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as fh:
        _write(fh, data, Path(path).name)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as fh:
        _write(fh, text, Path(path).name)


def remove_stale_temporaries(folder: str | os.PathLike, names: Iterable[str]) -> list[Path]:
    """Delete the temporaries :func:`atomic_open` left in ``folder`` for the files ``names``.

    Only for a folder no other process is writing to (a killed writer leaves them; they are never
    read). Returns the paths removed.
    """
    folder = Path(folder)
    removed = []
    for name in names:
        for tmp in folder.glob(f".{name}.*.tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


def _write(fh: IO, data: bytes | str, name: str) -> None:
    spec = os.environ.get(TEST_PAUSE_ENV)
    if spec:
        _writes[name] += 1
        target, _, marker = spec.partition("=")
        if target == f"{name}#{_writes[name]}":
            half = len(data) // 2
            fh.write(data[:half])
            fh.flush()
            os.fsync(fh.fileno())
            Path(marker).write_text(f"{os.getpid()}\n")
            time.sleep(TEST_PAUSE_SECONDS)
            data = data[half:]
    fh.write(data)


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or folder (a folder's fsync makes the renames inside it durable); best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
