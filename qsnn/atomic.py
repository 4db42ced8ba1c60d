"""Atomic output: files and folders appear complete or not at all.

Files (:func:`atomic_open`, :func:`atomic_write_bytes`, :func:`atomic_write_text`): write to a
temporary file in the same folder, fsync, then rename. A reader, or a process killed half way, sees
either the previous complete file or the new complete file, never a truncated one. A process
killed mid-write leaves at most a temporary sibling ``.NAME.XXXXXXXX.tmp`` behind;
:func:`remove_stale_temporaries` clears those of a folder one owns (``qsnn-train`` does so for its
run directory when it starts or resumes).

Folders (:func:`atomic_directory`, the target tables): everything goes into a temporary sibling
folder (``.OUTDIR.tmp-XXXX``) which is renamed onto ``OUTDIR`` only once complete. An existing
``OUTDIR`` is refused unless ``force=True``; then the two folders are swapped in one atomic step
(Linux ``renameat2``) and the old one deleted; where that call is missing, the old folder is moved
aside, the new one renamed into place and the old one deleted (restored if the rename fails). On
any failure the temporary folder is removed, so no partial ``OUTDIR`` is ever left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterable, Iterator

from qsnn.errors import ExportError


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
        with contextlib.suppress(OSError):  # a file system without modes keeps its own
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and (exc.filename is None or os.fspath(exc.filename) == tmp):
            exc.filename, exc.filename2 = str(path), None  # name the output, not its temporary (e.g. a full disk)
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
    """The one write of an atomic file's data (a fault test replaces it to fail or pause half way)."""
    fh.write(data)


def fsync_path(path: str | os.PathLike) -> None:
    """fsync a file or folder (a folder's fsync makes the renames inside it durable); best effort."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --------------------------------------------------------------------------------------------------
# Folders


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.rglob("*"), folder]:
        fsync_path(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_directory(
    outdir: str | os.PathLike, *, force: bool = False, foreign: Callable[[Path], list[str]] | None = None
) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; on success it becomes ``outdir``.

    Raises :class:`ExportError` if ``outdir`` exists and ``force`` is false (checked before any work
    and again at the end). With ``force`` the old ``outdir`` is replaced only after the new one is
    complete, and only when ``foreign(old folder)`` (the entries qsnn did not write there) is empty:
    checked before the swap and again on the old folder after it (a file that appeared in between
    swaps the folders back), so a user's file in the folder is never deleted. On any exception the
    temporary folder is deleted and ``outdir`` is left as it was; an ``OSError`` names ``outdir``
    (and the file inside), not the temporary folder.
    """
    outdir = Path(outdir)
    if outdir.exists() and not force:
        raise ExportError(
            f"{outdir} already exists; choose another output folder or pass --force (force=True) to replace it"
        )
    parent = outdir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; OUTDIR gets the usual mode
        try:
            yield tmp
        except OSError as exc:
            _rename_error(exc, tmp, outdir)
            raise
        _fsync_tree(tmp)
        if outdir.exists() or outdir.is_symlink():
            if not force:
                raise ExportError(
                    f"{outdir} appeared while it was being written; nothing was replaced (pass --force to replace it)"
                )
            _refuse_foreign(outdir, outdir, foreign)
            if outdir.is_dir() and not outdir.is_symlink() and _exchange(tmp, outdir):
                try:  # tmp now holds the old folder: anything of the user's that arrived meanwhile?
                    _refuse_foreign(tmp, outdir, foreign)
                except ExportError:
                    _exchange(tmp, outdir)  # back as it was
                    raise
                _remove(tmp)
                fsync_path(parent)
                return
            old = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.old-", dir=parent))
            old.rmdir()
            os.replace(outdir, old)
            try:
                os.replace(tmp, outdir)
            except BaseException:
                os.replace(old, outdir)
                raise
            _remove(old)
        else:
            os.replace(tmp, outdir)
        fsync_path(parent)
    except BaseException:
        _remove(tmp)
        raise


def _refuse_foreign(folder: Path, outdir: Path, foreign: Callable[[Path], list[str]] | None) -> None:
    entries = foreign(folder) if foreign is not None and folder.is_dir() and not folder.is_symlink() else []
    if entries:
        raise ExportError(
            f"{outdir}: replaced only when it holds nothing but qsnn's own files, and it holds "
            f"{len(entries)} other entr{'y' if len(entries) == 1 else 'ies'}: {', '.join(entries[:8])}"
            f"{', ...' if len(entries) > 8 else ''}; nothing was changed: move them out or choose another folder"
        )


def _rename_error(exc: OSError, tmp: Path, outdir: Path) -> None:
    """Make an ``OSError`` met writing into the temporary folder name ``outdir`` and the file inside it."""
    names = [n for n in (exc.filename, exc.filename2) if isinstance(n, (str, bytes, os.PathLike))]
    inside = ""
    for name in names:
        with contextlib.suppress(ValueError):
            inside = Path(os.fsdecode(name)).resolve().relative_to(tmp.resolve()).as_posix()
            break
    if names and not inside and not any(Path(os.fsdecode(n)).resolve() == tmp.resolve() for n in names):
        return  # a file elsewhere (an input): its own name is the right one
    where = str(outdir / inside) if inside not in ("", ".") else str(outdir)
    if exc.errno is None:  # an OSError without an errno (raised by code, not the OS): keep its words, add the path
        if not names:
            exc.args = (f"{where}: {exc}",)
        return
    exc.filename = where
    exc.filename2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Replacing a folder otherwise takes two renames (old out of the way, new into place), and a
    process killed between them would leave no ``OUTDIR`` at all. Returns False where the call is
    not available (other systems, old kernels or file systems); raises ``OSError`` if it fails.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))
