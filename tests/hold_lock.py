"""A second process that holds qsnn's output locks, so that a test can write the same paths at once.

    python tests/hold_lock.py locks MARKER PATH [PATH ...]
    python tests/hold_lock.py command MARKER MODULE [arguments ...]

``locks``: take the lock of every ``PATH`` (:func:`qsnn.locks.acquire`, as a command does), create
``MARKER`` (holding the process id) and sleep. ``command``: run the real command line of
``MODULE`` (``qsnn.export.cli``, ``qsnn.sim.cli``, ``qsnn.targets.fpga.cli``, ``qsnn.train.cli``)
and stop it right after its output check, holding the locks it took there, as a slow writer would
(the launcher wraps :func:`qsnn.output_guard.check_outputs` before the command is imported; qsnn has
no test hook). Either way the process sleeps at most :data:`PAUSE_SECONDS`; the test kills it (a
SIGKILL leaves a stale lock file, which the next writer takes over).
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

PAUSE_SECONDS = 120.0


def _paused(marker: Path) -> None:
    marker.write_text(f"{os.getpid()}\n")
    time.sleep(PAUSE_SECONDS)
    sys.exit(3)


def main(argv: list[str]) -> None:
    mode, marker, *rest = argv
    if mode == "locks":
        from qsnn.locks import acquire

        for path in rest:
            acquire(path, "held by tests/hold_lock.py")
        _paused(Path(marker))
    elif mode == "command":
        import qsnn.output_guard as guard

        check = guard.check_outputs

        def check_then_pause(*args, **kwargs):
            out = check(*args, **kwargs)
            _paused(Path(marker))
            return out

        guard.check_outputs = check_then_pause
        module, *args = rest
        sys.argv = [module, *args]
        importlib.import_module(module).main()
    else:
        raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
