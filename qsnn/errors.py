"""Errors a user can act on.

Every error the command-line tools expect to meet is a :class:`QsnnError`: the front ends print its
message on one line and exit non-zero, without a traceback unless ``--debug`` is given.
"""

from __future__ import annotations


class QsnnError(Exception):
    """An error whose message names the file or setting at fault and what to do about it."""


class DataError(QsnnError):
    """A dataset is missing, malformed or does not match the model."""


class CheckpointError(QsnnError):
    """A checkpoint is missing, truncated, from another version, or not a qsnn checkpoint."""


class ExportError(QsnnError):
    """A model cannot be exported, or a file is not a qsnn export."""


class ProfileError(QsnnError):
    """A network cannot be represented under a chip profile, or the profile itself is impossible."""
