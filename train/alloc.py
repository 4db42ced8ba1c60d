"""Allocator settings for training on CPU, applied by the tools themselves.

A training step allocates and frees the same large tensors every minibatch (T·B activations of
several MB each). glibc's malloc serves blocks above its mmap threshold (dynamic, from 128 KiB up to
32 MiB) with fresh ``mmap`` calls and returns freed heap tops to the system above its trim
threshold, so each minibatch pays page faults and zeroing again. :func:`keep_freed_memory` raises
both thresholds (``mallopt``), so freed blocks are reused; it changes no value computed, only where
the memory comes from (``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` in the environment
win, as glibc reads them at start-up).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's largest mmap threshold on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX: 4 MiB · sizeof(long)).
MMAP_THRESHOLD_MAX = 32 * 2**20
TRIM_THRESHOLD = 2**30

_applied = False


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for allocation-heavy training loops; True if applied.

    A no-op (False) off glibc/Linux, or when the environment sets the thresholds itself.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux") or any(
        k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
    ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    _applied = ok
    return ok
