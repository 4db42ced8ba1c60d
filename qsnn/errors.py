"""Errors a user can act on, and the one net that turns a damaged file into one of them.

Every error the command-line tools expect to meet is a :class:`QsnnError`, raised where the
problem is detected: the front ends print its message on one line and exit non-zero, without a
traceback unless ``--debug`` is given. Anything else is a bug and keeps its traceback.

:func:`damaged_file` goes around *parsing only* (reading a file into plain values): what a reader
trips over in a damaged or edited file (:data:`PARSE_ERRORS`: a ``KeyError`` for a missing field, a
``TypeError`` for a value of the wrong type, ...) becomes an :class:`ExportError` naming the file.
The code that works on the parsed values (the compiler, the simulator) has no such net.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class QsnnError(Exception):
    """An error whose message names the file or setting at fault and what to do about it."""


class DataError(QsnnError):
    """A dataset is missing, malformed or does not match the model."""


class InputError(DataError, ValueError):
    """An input batch does not fit the network (shape, dtype, values, number of frames).

    Also a ``ValueError``, which the simulator raised for it before this class existed.
    """


class CheckpointError(QsnnError):
    """A checkpoint is missing, truncated, from another version, or not a qsnn checkpoint."""


class ExportError(QsnnError):
    """A model cannot be exported, or a file is not a qsnn export."""


class ProfileError(QsnnError):
    """A network cannot be represented under a chip profile, or the profile itself is impossible."""


class LimitsError(ProfileError):
    """A network breaks one or more limits of a profile or target; ``problems`` lists every one (each
    naming the layer and the fix), the message joins them on one line."""

    def __init__(self, problems: list[str], what: str = "the profile cannot hold this network") -> None:
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            message = f"{what} ({len(self.problems)} limits): " + "; ".join(self.problems)
        super().__init__(message)


class NetworkError(ProfileError, ValueError):
    """An :class:`~qsnn.network.IntegerNetwork` is inconsistent (shapes, kinds, constants), or holds
    values its profile's arithmetic (or int64) cannot run.

    Also a ``ValueError``, which the network and the simulator raised for it before this class existed.
    """


#: What a parser trips over in a damaged or edited file (never raised on purpose by qsnn's readers).
PARSE_ERRORS: tuple[type[BaseException], ...] = (
    KeyError,
    TypeError,
    ValueError,
    AttributeError,
    IndexError,
    OverflowError,
    ZeroDivisionError,
)


@contextmanager
def damaged_file(where: str, what: str, remedy: str) -> Iterator[None]:
    """Around the parsing of one file: :data:`PARSE_ERRORS` become ``ExportError("WHERE: damaged or edited
    WHAT (reason); REMEDY")``; a :class:`QsnnError` (which already says what is wrong) passes through."""
    try:
        yield
    except QsnnError:
        raise
    except PARSE_ERRORS as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else ""
        raise ExportError(f"{where}: damaged or edited {what} ({type(exc).__name__}: {reason}); {remedy}") from None


def not_a_regular_file(path) -> str:
    """Why ``path`` cannot be read as a file (``"does not exist"``, ``"is a folder"``, ``"is a FIFO (named
    pipe), not a regular file"``, ...), or ``""`` for a regular file. Checked before opening: reading a FIFO
    blocks, ``/dev/zero`` never ends."""
    import os
    import stat

    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file" if not os.path.lexists(path) else "a symbolic link to nothing (no such file)"
    except NotADirectoryError:
        return "no such file (a part of the path is a file, not a folder)"
    except OSError as exc:
        return f"cannot be read ({exc.strerror or type(exc).__name__})"
    if stat.S_ISREG(mode):
        return ""
    kinds = (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    )
    kind = next((name for test, name in kinds if test(mode)), "a special file")
    return f"is {kind}, not a regular file"
