"""Run ``qsnn-train`` with one atomic write paused half way, so that a test can kill the process there.

    python tests/pause_in_write.py NAME#K MARKER [qsnn-train arguments ...]

The K-th atomic write of a file called ``NAME`` in the process writes half of its data into its
temporary file, creates the file ``MARKER`` (holding the process id) and sleeps (at most
:data:`PAUSE_SECONDS`) before finishing. qsnn itself has no hook for this: the launcher replaces
``qsnn.atomic._write``, the one write of every atomic file's data, before the command starts
(``tests/test_faults_kill.py``, ``docs/faults.md``).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

import qsnn.atomic

PAUSE_SECONDS = 120.0


def pause_at(name: str, nth: int, marker: Path) -> None:
    """Make the ``nth`` atomic write of a file called ``name`` stop half way (see the module docstring)."""
    write = qsnn.atomic._write
    writes: Counter[str] = Counter()

    def paused(fh, data, file_name: str) -> None:
        writes[file_name] += 1
        if file_name == name and writes[file_name] == nth:
            half = len(data) // 2
            fh.write(data[:half])
            fh.flush()
            os.fsync(fh.fileno())
            marker.write_text(f"{os.getpid()}\n")
            time.sleep(PAUSE_SECONDS)
            data = data[half:]
        write(fh, data, file_name)

    qsnn.atomic._write = paused


def main(argv: list[str]) -> None:
    spec, marker, *args = argv
    name, _, nth = spec.partition("#")
    pause_at(name, int(nth), Path(marker))
    from qsnn.train.cli import main as train_main

    sys.argv = ["qsnn-train", *args]
    train_main()


if __name__ == "__main__":
    main(sys.argv[1:])
