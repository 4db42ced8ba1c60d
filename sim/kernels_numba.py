"""Compiled kernels of the integer engine (numba): the optional accelerator of :mod:`qsnn.sim.layers`.

The NumPy path of :class:`qsnn.sim.layers._Layer` is the reference; these kernels compute the same
integers in fewer passes over memory, and release the GIL (``nogil=True``) so that the engine's
threads overlap on the batch pieces. Each kernel is one loop nest that a reader can hold against the
NumPy code it replaces:

* :func:`lif_scan`: the current tail and the integer LIF step of :meth:`_Layer.scan`, fused: per
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
  range, spikes per step) as reductions in the same pass;
* :func:`windows`: zero padding, the p×p box sums and im2col in one copy (``qsnn.kernels.im2col``
  of ``qsnn.kernels.box_sums`` of ``np.pad``): the rows the integer matmul multiplies.

Nothing is compiled when this module is imported: numba compiles a kernel on its first call, and
``cache=True`` keeps the machine code beside this file (``__pycache__``, or ``NUMBA_CACHE_DIR``), so
later processes load it (docs/engine.md states the cost, warm and cold). This module imports numba;
:mod:`qsnn.sim.layers` imports it only when the accelerator is on (:func:`enabled`).
"""

from __future__ import annotations

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
    record,
    leak,
    leak_const,
    leak_bits,
    zero_reset,
    saturate,
    lo,
    hi,
    mem_bits,
    track,
    stats,
    counts,
):  # pragma: no cover - compiled
    """The current tail and the LIF step over ``n`` steps (module docstring), in place.

    ``acc`` (n, R, C): raw synaptic sums (integers) of n steps, R = samples × positions, C channels;
    ``bias``, ``theta`` (C,); ``u``, ``fired`` (R, C): u_{t−1} and the reset mask (−1 where
    u_{t−1} > θ, else 0: the NumPy path's representation, so either path continues the other's
    state); ``z`` (n, R, C) uint8 receives z_t; ``u_out`` (n, R, C) receives u_t when ``record``;
    ``counts`` (n,) gains the spikes of each step; ``stats`` the range and event counts (slots
    above; the current's with ``track``, or when there is a register, ``half`` > 0).
    """
    n, R, C = acc.shape
    wrap_mask = (1 << mem_bits) - 1
    round_mask = (1 << leak_bits) - 1
    keep = (1 << leak_bits) - leak_const  # loihi: u·(2^F − dv)
    cmin, cmax, wraps = stats[CUR_MIN], stats[CUR_MAX], stats[WRAPS]
    shigh, slow, mmin, mmax = stats[SAT_HIGH], stats[SAT_LOW], stats[MEM_MIN], stats[MEM_MAX]
    tracked = track or half > 0
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
                if half > 0:
                    over = a > half
                    under = a <= -half
                    wraps += over + under
                    a += (under - over) * 2 * half
                cur = a + bias[c]
                f = np.int64(fired[r, c])
                prev = np.int64(u[r, c])
                if zero_reset:
                    prev &= ~f  # (1 − r_t)·u_{t−1}
                if leak == 0:  # mul: (m·u) >> F, floor
                    v = (prev * leak_const) >> leak_bits
                elif leak == 1:  # shift: u − (u >> d), floor
                    v = prev - (prev >> leak_const)
                else:  # loihi: sign(x)·(|x| >> F), toward zero
                    v = prev * keep
                    v += (v >> 63) & round_mask
                    v >>= leak_bits
                v += cur
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
                fired[r, c] = -spike
                z[t, r, c] = spike
                spikes += spike
                if record:
                    u_out[t, r, c] = v
        counts[t] += spikes
    stats[CUR_MIN], stats[CUR_MAX], stats[WRAPS] = cmin, cmax, wraps
    stats[SAT_HIGH], stats[SAT_LOW], stats[MEM_MIN], stats[MEM_MAX] = shigh, slow, mmin, mmax


@njit(nogil=True, cache=True)
def windows(x, pad, box, window, stride, ho, wo, out):  # pragma: no cover - compiled
    """im2col of the p×p box sums of the zero-padded input, in one copy.

    ``x`` (m, H, W, C) uint8; with ``box`` = p the taps read S[h, w] = Σ_{i,j<p} x'[h+i, w+j] of the
    input x' padded by ``pad`` zeros on every side (p = 1: x' itself); ``out`` (m·ho·wo,
    window·window·C) uint8 receives, per output position, the ``window``² taps at ``stride`` in
    (row, column, channel) order: the rows :func:`qsnn.kernels.im2col` gives and the weight
    matrices of :func:`qsnn.kernels.weight_matrix` / ``conv_columns`` multiply. The caller proves
    p²·max x ≤ 255.
    """
    m, H, W, C = x.shape
    Hp, Wp = H + 2 * pad, W + 2 * pad
    Hs, Ws = Hp - box + 1, Wp - box + 1
    s = np.zeros((Hs, Ws, C), dtype=np.uint8)
    for i in range(m):
        # S of sample i (box sums of the padded input; p = 1: the padded input)
        for h in range(Hs):
            for w in range(Ws):
                for c in range(C):
                    s[h, w, c] = 0
                for a in range(box):
                    y = h + a - pad
                    if y < 0 or y >= H:
                        continue
                    for b in range(box):
                        xx = w + b - pad
                        if xx < 0 or xx >= W:
                            continue
                        for c in range(C):
                            s[h, w, c] += x[i, y, xx, c]
        row = i * ho * wo
        for oy in range(ho):
            for ox in range(wo):
                col = 0
                for ky in range(window):
                    for kx in range(window):
                        for c in range(C):
                            out[row, col] = s[oy * stride + ky, ox * stride + kx, c]
                            col += 1
                row += 1
