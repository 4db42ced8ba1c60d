"""Compiled kernels of the integer engine (numba): the optional accelerator of :mod:`qsnn.sim.layers`.

The NumPy path of :class:`qsnn.sim.layers._Layer` is the reference; these kernels compute the same
integers in fewer passes over memory, and release the GIL (``nogil=True``) so that the engine's
threads overlap on the batch pieces. Each kernel is one loop nest that a reader can hold against the
NumPy code it replaces:

* :func:`lif_kernel` (``lif_scan``): the current tail and the integer LIF step of :meth:`_Layer.scan`, fused: per
  time step t and neuron (channel c), reading the raw synaptic sum ``acc`` of the integer kernel,

  .. code-block:: text

      a    = shl(shl(acc, e), s)                 floor shifts, as _Layer.currents
      a    = a − 2^w if a > 2^(w−1); a + 2^w if a ≤ −2^(w−1)      (the current register, w > 0)
      c_t  = a + b_c
      u    = (1 − r_t)·u_{t−1}                   reset = "zero"
      v    = leak(u) + c_t − r_t·θ_c             (− r_t·θ_c: reset = "subtract")
      u_t  = sat(v)  (clip to [lo, hi], or wrap in the membrane's bits)
      z_t  = r_{t+1} = [u_t > θ_c]

  with the statistics the NumPy path gathers (current range and wraps, saturation events, membrane
  range, spikes per step) as reductions in the same pass; the profile's choices are constants of
  each compiled kernel, so its loop has no branch.

Nothing is compiled when this module is imported: numba compiles a kernel on its first call, and
``cache=True`` keeps the machine code beside this file (``__pycache__``, or ``NUMBA_CACHE_DIR``), so
later processes load it (docs/engine.md states the cost, warm and cold). This module imports numba;
:mod:`qsnn.sim.layers` imports it only when the accelerator is on (:func:`enabled`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from numba import njit

#: Leak kinds as the kernels number them (``ChipProfile.leak``).
LEAKS = {"mul": 0, "shift": 1, "loihi": 2}

#: Slots of the ``stats`` vector :func:`lif_scan` updates in place.
CUR_MIN, CUR_MAX, WRAPS, SAT_HIGH, SAT_LOW, MEM_MIN, MEM_MAX = range(7)


def new_stats() -> np.ndarray:
    """A ``stats`` vector for :func:`lif_scan`: empty ranges (the membrane's starts at 0, as LayerStats')."""
    s = np.zeros(7, dtype=np.int64)
    s[CUR_MIN], s[CUR_MAX] = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    return s


@lru_cache(maxsize=None)
def lif_kernel(leak: str, reset: str, overflow: str, record: bool, track: bool, register: bool):
    """The compiled :func:`lif_scan` for a profile's leak, reset and overflow, whether membranes are
    recorded, the current's range tracked (``track``, or a current ``register``) and wrapped in a
    current register: these are constants of its loop, which then has no branch and vectorises.
    One kernel per combination, compiled on its first call and cached on disk (numba keys the cache
    on these values)."""
    kind = LEAKS[leak]
    zero_reset, saturate, tracked, wrapped = reset == "zero", overflow == "saturate", track or register, register

    @njit(nogil=True, cache=True)
    def lif_scan(
        acc,
        exp_shift,
        shift,
        half,
        bias,
        theta,
        u,
        fired,
        z,
        u_out,
        leak_const,
        leak_bits,
        lo,
        hi,
        mem_bits,
        stats,
        counts,
    ):  # pragma: no cover - compiled
        """The current tail and the LIF step over ``n`` steps (module docstring), in place.

        ``acc`` (n, R, C): raw synaptic sums (integers) of n steps, R = samples × positions, C
        channels; ``bias``, ``theta`` (C,); ``u``, ``fired`` (R, C): u_{t−1} and the reset mask (−1
        where u_{t−1} > θ, else 0: the NumPy path's representation, so either path continues the
        other's state); ``z`` (n, R, C) uint8 receives z_t; ``u_out`` (n, R, C) receives u_t when
        recording; ``counts`` (n,) gains the spikes of each step; ``stats`` the ranges and event
        counts (slots above).
        """
        n, R, C = acc.shape
        wrap_mask = (1 << mem_bits) - 1
        round_mask = (1 << leak_bits) - 1
        keep = (1 << leak_bits) - leak_const  # loihi: u·(2^F − dv)
        cmin, cmax, wraps = stats[CUR_MIN], stats[CUR_MAX], stats[WRAPS]
        shigh, slow, mmin, mmax = stats[SAT_HIGH], stats[SAT_LOW], stats[MEM_MIN], stats[MEM_MAX]
        for t in range(n):
            spikes = 0
            for r in range(R):
                for c in range(C):
                    a = np.int64(acc[t, r, c])
                    if exp_shift < 0:
                        a >>= -exp_shift
                    if shift > 0:
                        a <<= shift
                    elif shift < 0:
                        a >>= -shift
                    if tracked:
                        cmin = min(cmin, a)
                        cmax = max(cmax, a)
                    if wrapped:  # the current register: wraps once
                        over = a > half
                        under = a <= -half
                        wraps += over + under
                        a += (np.int64(under) - np.int64(over)) * 2 * half
                    f = np.int64(fired[r, c])
                    prev = np.int64(u[r, c])
                    if zero_reset:
                        prev &= ~f  # (1 − r_t)·u_{t−1}
                    if kind == 0:  # mul: (m·u) >> F, floor
                        v = (prev * leak_const) >> leak_bits
                    elif kind == 1:  # shift: u − (u >> d), floor
                        v = prev - (prev >> leak_const)
                    else:  # loihi: sign(x)·(|x| >> F), toward zero
                        v = prev * keep
                        v += (v >> 63) & round_mask
                        v >>= leak_bits
                    v += a + bias[c]
                    if not zero_reset:
                        v -= f & theta[c]  # r_t·θ
                    shigh += v > hi
                    slow += v < lo
                    if saturate:
                        v = min(max(v, lo), hi)
                    else:  # two's complement wrap
                        v = ((v - lo) & wrap_mask) + lo
                    mmin = min(mmin, v)
                    mmax = max(mmax, v)
                    u[r, c] = v
                    spike = v > theta[c]
                    fired[r, c] = -np.int64(spike)
                    z[t, r, c] = spike
                    spikes += spike
                    if record:
                        u_out[t, r, c] = v
            counts[t] += spikes
        stats[CUR_MIN], stats[CUR_MAX], stats[WRAPS] = cmin, cmax, wraps
        stats[SAT_HIGH], stats[SAT_LOW], stats[MEM_MIN], stats[MEM_MAX] = shigh, slow, mmin, mmax

    return lif_scan
