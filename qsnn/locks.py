"""One writer per output: a lock file beside every path a command writes, held until its last rename.

A command's outputs (and a training run's directory) are held by an advisory lock (``fcntl.flock``)
on a lock file beside them, ``.NAME.lock`` in the same folder, from the output check to the final
rename. The lock file holds the holder's process id and command line, so a second writer is refused
at once with a message naming the holder::

    out/model.onnx: -o is being written by another qsnn process (PID 4242: qsnn-export ckpt.pt ...);
    wait for it to finish or choose another path for -o

The kernel drops a ``flock`` when its process dies, however it dies, so a lock file a killed process
left behind is stale by construction: the next writer takes it over (it checks that the file it
locked is still the one at the path, so two writers never both win through a file being unlinked).
On release the lock file is removed. Lock files are never anyone's data: the output checks do not
count them as foreign entries of a folder.

Once a writer holds a path, the temporaries an earlier, killed writer of the same path left beside it
(:mod:`qsnn.atomic`'s ``.NAME.XXXXXXXX.tmp`` files and ``.NAME.tmp-XXXXXXXX`` folders) are removed:
no live qsnn writer can own them any more.

Commands get their locks from :func:`qsnn.output_guard.check_outputs`, inside the scope that
:func:`qsnn.cli.friendly_errors` opens around every command (:func:`lock_scope`); the training loop
holds its run directory itself (:func:`holding`). Locks are reentrant within a process. Under
``torchrun`` only rank 0 (the rank that writes) takes them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import os
import re
import shlex
import shutil
import sys
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

from qsnn.errors import QsnnError


class LockedError(QsnnError):
    """An output path another live process is writing."""


LOCK_SUFFIX = ".lock"


def lock_file(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: ``.NAME.lock`` in the same folder (the folder as given, absolute)."""
    path = Path(os.path.abspath(os.fspath(path)))
    return path.parent / f".{path.name}{LOCK_SUFFIX}"


def is_lock_file_name(name: str) -> bool:
    """Whether ``name`` is spelled like one of qsnn's lock files (``.NAME.lock``)."""
    return name.startswith(".") and name.endswith(LOCK_SUFFIX) and len(name) > 1 + len(LOCK_SUFFIX)


def lock_holder(lock: str | os.PathLike) -> str | None:
    """``"PID n: command"`` of the live process holding the lock file ``lock``, or None when it is free
    (missing, or left by a process that died)."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return _describe_holder(fd)
            return None
        return None
    finally:
        os.close(fd)


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, OverflowError, ProcessLookupError):
        return False
    except OSError:  # exists, another user's
        return True
    return True


def _describe_holder(fd: int) -> str:
    text = ""
    for _ in range(20):  # the holder writes its name right after taking the lock (over a dead one's)
        with contextlib.suppress(OSError):
            text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
        if text.strip() and _alive(text.strip().partition("\n")[0]):
            break
        time.sleep(0.01)
    pid, _, command = text.strip().partition("\n")
    if not pid.strip().isdigit():
        return "a process that did not say its PID"
    return f"PID {pid.strip()}" + (f": {command.strip()}" if command.strip() else "")


def _command_line() -> str:
    args = list(sys.argv) or ["python"]
    args[0] = os.path.basename(args[0]) or args[0]
    text = " ".join(shlex.quote(a) for a in args)
    return text if len(text) <= 300 else text[:297] + "..."


# Temporaries of qsnn.atomic (mkstemp / mkdtemp add 8 characters of [a-z0-9_]).
def _temporary_patterns(name: str) -> tuple[re.Pattern[str], re.Pattern[str]]:
    stem = re.escape(name)
    return re.compile(rf"\.{stem}\.[a-z0-9_]{{8}}\.tmp"), re.compile(rf"\.{stem}\.tmp-[a-z0-9_]{{8}}")


def is_temporary_of(entry_name: str, name: str) -> bool:
    """Whether ``entry_name`` is one of :mod:`qsnn.atomic`'s temporaries for an output called ``name``."""
    return any(p.fullmatch(entry_name) for p in _temporary_patterns(name))


def remove_leftover_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries a killed writer of ``path`` left beside it (call it holding ``path``'s lock)."""
    path = Path(os.path.abspath(os.fspath(path)))
    file_tmp, dir_tmp = _temporary_patterns(path.name)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        try:
            if file_tmp.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
            elif dir_tmp.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                continue
        except OSError:
            continue
        removed.append(Path(entry.path))
    return removed


@dataclass
class _Held:
    fd: int
    inode: tuple[int, int]
    count: int = 1
    made: list[Path] = field(default_factory=list)  # folders created to hold the lock file


_HELD: dict[Path, _Held] = {}


def secondary_rank() -> bool:
    """True in a ``torchrun`` process other than rank 0 (which does all the writing)."""
    return os.environ.get("RANK", "0").strip() not in ("", "0")


def _make_parents(folder: Path) -> list[Path]:
    made = []
    missing = folder
    while not (missing.exists() or missing.is_symlink()):
        made.append(missing)
        missing = missing.parent
    for d in reversed(made):
        os.mkdir(d)
    return made


def acquire(path: str | os.PathLike, label: str | None = None) -> Path:
    """Take the lock of ``path`` (reentrant); raise :class:`LockedError` naming the live holder.

    Returns the lock file. Folders missing above ``path`` are created for the lock file (and removed
    again on :func:`release` when they are still empty). An ``OSError`` creating the lock file (a
    read-only folder, a file in the way) propagates.
    """
    lock = lock_file(path)
    held = _HELD.get(lock)
    if held is not None:
        held.count += 1
        return lock
    made = _make_parents(lock.parent)
    try:
        for _ in range(100):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = _describe_holder(fd) if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN) else None
                os.close(fd)
                if holder is None:
                    raise
                raise LockedError(
                    f"{path}: {label or 'this path'} is being written by another qsnn process ({holder}); "
                    f"wait for it to finish or choose another path" + (f" for {label}" if label else "")
                ) from None
            st = os.fstat(fd)
            try:
                now = os.stat(lock)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                os.close(fd)  # the previous holder removed it as we locked it: lock the new one
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n{_command_line()}\n".encode(), 0)
            _HELD[lock] = _Held(fd, (st.st_dev, st.st_ino), made=made)
            break
        else:  # pragma: no cover - a lock file replaced 100 times in a row
            raise LockedError(f"{path}: its lock file {lock} keeps changing; try again")
    except BaseException:
        _remove_made(made)
        raise
    remove_leftover_temporaries(path)
    return lock


def release(lock: Path) -> None:
    """Give back a lock taken with :func:`acquire` (the lock file is removed at the last release)."""
    held = _HELD.get(lock)
    if held is None:
        return
    held.count -= 1
    if held.count:
        return
    del _HELD[lock]
    with contextlib.suppress(OSError):
        st = os.stat(lock)
        if (st.st_dev, st.st_ino) == held.inode:
            os.unlink(lock)  # still holding it: no one else can have locked this file
    os.close(held.fd)
    _remove_made(held.made)


def _remove_made(made: list[Path]) -> None:
    for d in made:  # deepest first; only while empty (the output did not get written)
        try:
            os.rmdir(d)
        except OSError:
            break


@contextlib.contextmanager
def hold(path: str | os.PathLike, label: str | None = None, *, enabled: bool = True) -> Iterator[None]:
    """Hold the lock of ``path`` for the ``with`` block (see :func:`acquire`); a no-op on a torchrun rank > 0."""
    if not enabled or secondary_rank():
        yield
        return
    lock = acquire(path, label)
    try:
        yield
    finally:
        release(lock)


_SCOPE: ContextVar[list[Path] | None] = ContextVar("qsnn_lock_scope", default=None)


@contextlib.contextmanager
def lock_scope() -> Iterator[None]:
    """The scope of one command: the locks :func:`hold_in_scope` takes are released when it ends."""
    locks: list[Path] = []
    token = _SCOPE.set(locks)
    try:
        yield
    finally:
        _SCOPE.reset(token)
        for lock in reversed(locks):
            release(lock)


def in_scope() -> bool:
    return _SCOPE.get() is not None


def hold_in_scope(path: str | os.PathLike, label: str | None = None) -> bool:
    """Take ``path``'s lock until the current :func:`lock_scope` ends; False (nothing taken) outside one
    or on a torchrun rank > 0."""
    locks = _SCOPE.get()
    if locks is None or secondary_rank():
        return False
    locks.append(acquire(path, label))
    return True


def holding(parameter: str, label: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: hold the lock of the function's argument ``parameter`` (a path) while it runs."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            path = signature.bind(*args, **kwargs).arguments[parameter]
            with hold(path, label):
                return fn(*args, **kwargs)

        return wrapper

    return wrap


__all__ = [
    "LockedError",
    "acquire",
    "release",
    "hold",
    "holding",
    "hold_in_scope",
    "lock_scope",
    "lock_file",
    "lock_holder",
    "is_lock_file_name",
    "is_temporary_of",
    "remove_leftover_temporaries",
]
