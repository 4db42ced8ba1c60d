"""An independent, fast implementation of :func:`qsnn.arith.int_lif_step`, held equal to it by ``tests/test_arith.py``.

The bit-accurate integer engine runs an :class:`~qsnn.network.IntegerNetwork` over T steps. Per
layer and time step it computes exactly the integer LIF step of :mod:`qsnn.arith` (all integers),
with its own in-place, layout-changed arithmetic (it takes only the rails, ``overflow_range``, from
:mod:`qsnn.arith`; the literal :mod:`qsnn.sim.reference` calls the step itself, and
``tests/test_sim_engine.py`` compares the two on random networks of every profile variant)::

    acc_t = sumpool_p( W ⊛ z_in,t−d ) · 2^e                d = profile.synaptic_delay, zeros before t = d
    c_t   = cur(shl(acc_t, s)) + b                         the current on the membrane grid
            (e = weight_exp ≥ 0 exact; e < 0 is a floor shift of the sum, before s; ``cur`` is
            the profile's current register of ``current_bits`` (Lava's u: c − 2^w where
            c > 2^(w−1), c + 2^w where c ≤ −2^(w−1)), the identity when 0)
    r_t   = [u_{t−1} > θ]  (= z_{t−1})
    u_t   = overflow( leak(u_{t−1}) + c_t − r_t·θ )        reset = "subtract"
    u_t   = overflow( leak((1 − r_t)·u_{t−1}) + c_t )      reset = "zero"
    z_t   = [u_t > θ]

with ``z_in`` the previous layer's spikes, or the input frame for the first layer (the same uint8
image at every step for ``encoding="static"``, frame t for ``"events"``). The class is the argmax of
the output spike counts over T, the first index winning ties.

How it is fast without giving up exactness:

* The network is feed-forward, so each layer runs over a chunk of time steps before the next one;
  its synaptic sums for the whole chunk and batch are matrix products over blocks of whole steps
  (im2col: one copy of an :func:`numpy.lib.stride_tricks.as_strided` window view).
* Sum-pooling folds into the kernel: ``sumpool_p(W ⊛ x)`` is one stride-p convolution with the
  integer kernel ``W'`` (k+p−1 wide, each tap a sum of up to p² weights), which needs fewer
  multiplies and no separate pooling. On spikes, in the integer kernel, it goes the other way:
  ``sumpool_p(W ⊛ x) = W ⊛_p S`` with S the p×p box sums of x (uint8, ≤ p²), the layer's own k×k
  kernel at stride p: k²/(k+p−1)² of the folded kernel's multiplies.
* Every partial sum of ``W'·x`` is bounded by ``B = max_o Σ|W'_o| · max x`` (proven per layer).
  Where the layer's operands are uint8 (spikes, pixels, small event counts) and int8 (the folded
  kernel) and no product pair can saturate int16, the sums run as uint8 × int8 → int32 in
  onnxruntime's integer kernel (:mod:`qsnn.kernels`, ``kernel="auto"``); elsewhere, and with
  ``kernel="numpy"`` (the reference path), in float32 BLAS when ``B < 2^24`` (float32 represents
  every integer below 2^24 exactly), float64 below 2^53, int64 otherwise.
* Spikes stay uint8/bool end to end (a bool array is viewed as uint8, never cast); the im2col copy
  of a spike layer is one byte per tap.
* The compiled layers (kernels, proofs, integer kernels' sessions) are cached per network, so a
  batch-1 call does not rebuild them; the statistics (``stats=False``) cost nothing when not asked
  for; ``threads`` splits a batch over the cores (NumPy and onnxruntime release the GIL).
* On a static image the first layer's current is the same at every step: computed once, and the
  layer is looked up rather than scanned (:class:`StaticTable`: its scan once per possible current
  and channel, each neuron's spikes gathered from the table's bit planes).
* The membrane update runs in int32 where the worst-case bound of every intermediate fits
  (e.g. a 16-bit membrane times a 12-bit leak), int64 otherwise.

The engine imports numpy (and tqdm for the optional progress bar; onnxruntime for the optional integer
kernel), never torch.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from threading import Lock
from typing import Sequence

import numpy as np

from qsnn.arith import check_leak_const, overflow_range
from qsnn.errors import InputError, NetworkError
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import ChipProfile

from qsnn.kernels import (OrtIntMatmul, box_kernel, box_sums, default_threads, im2col, int8_exact, ort_available,
                          weight_matrix)

#: Kernels :func:`simulate` accepts for the synaptic sums ``acc = X · W'`` (X the im2col'd input, W' the
#: pool-folded integer kernel); each computes the same integers, and a layer uses a kernel only where
#: its proven bounds make that kernel's arithmetic exact:
#:
#: * ``numpy`` (always available, the reference path, every layer): float32 BLAS when every partial
#:   sum is below 2^24, float64 below 2^53, int64 otherwise;
#: * ``ort``: onnxruntime's ``MatMulInteger`` (:class:`qsnn.kernels.OrtIntMatmul`, in the core because
#:   the float model's exact evaluation uses it too), uint8 inputs × int8 weights accumulated in int32,
#:   exact under the conditions of :func:`qsnn.kernels.int8_exact`: spikes into any 4- or 8-bit layer
#:   and uint8 pixels into a 4-bit layer (2·255·28 = 14,280) qualify;
#: * ``auto``: ``ort`` on the layers where it is exact and onnxruntime importable (it is a qsnn
#:   dependency), ``numpy`` elsewhere.
#:
#: The choice is reported per layer (``LayerStats.sum_kernel``); the tests hold the kernels equal
#: (``tests/test_sim_engine.py``, ``array_equal`` on random and trained networks); ``docs/engine.md``
#: says why the kernel sits outside the NumPy-only core.
KERNELS = ("auto", "numpy", "ort")

#: Integers of magnitude below these are exact in float32 / float64 (and so are sums that stay below).
FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53

#: Working-memory budget of one matrix product / current buffer (bytes); batches keep memory bounded.
CHUNK_BYTES = 48 * 2**20

#: im2col rows handed to one integer-kernel call (bytes of uint8 input): the copy, and the product
#: the shifts and bias then pass over, are still in cache (on this Zen 3 machine conv2's currents of
#: a 128-sample piece took, per call size 0.5 / 1 / 2 / 4 MiB, 24.6 / 22.9 / 24.1 / 30.1 ms; a
#: whole piece in one call ran about 1.4x slower than 2 MiB calls).
GEMM_BYTES = 2**20


# --------------------------------------------------------------------------------------------------
# Results


@dataclass
class LayerStats:
    """What one layer did over a simulation (all samples).

    Attributes:
        name, kind: the layer's name and kind.
        shape: spike shape of one sample (C, H, W) or (O,).
        neurons: neurons in the layer.
        spikes_per_step: (T,) total spikes of all samples at each step.
        saturation_low / saturation_high: neuron-steps whose membrane before ``sat`` lay below the
            low rail / above the high rail (clamped for ``saturate``, wrapped for ``wrap``).
        membrane_min / membrane_max: extremes of the membrane u_t seen (after ``sat``).
        current_min / current_max: extremes of the synaptic current shl(acc, s) seen (before
            the current register).
        current_wraps: neuron-steps whose current wrapped in the profile's current register.
        synops: synaptic operations, all samples: every nonzero input (spike, pixel, event count
            times its count) times the synapses it drives (its fan-out into this layer).
        dense_macs: multiply-accumulates a dense (non event-driven) evaluation needs, all samples.
        sum_dtype: how the synaptic sums were computed exactly (int32 accumulation of uint8 × int8,
            float32, float64 or int64).
        sum_kernel: which kernel computed them: ``"onnxruntime"`` (integer MatMulInteger) or ``"numpy"``.
        sum_bound: the proven bound of every partial synaptic sum.
        state_dtype: the integer type of the membrane update.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    neurons: int
    spikes_per_step: np.ndarray
    saturation_low: int = 0
    saturation_high: int = 0
    membrane_min: int = 0
    membrane_max: int = 0
    current_min: int = 0
    current_max: int = 0
    current_wraps: int = 0
    synops: int = 0
    dense_macs: int = 0
    sum_dtype: str = ""
    sum_kernel: str = ""
    sum_bound: int = 0
    state_dtype: str = ""

    def absorb(self, other: "LayerStats") -> None:
        """Add the figures of ``other`` (the same layer on other samples) to these, in place: counts
        and operations add up, extremes take the outer value. The one merge rule of the engine."""
        self.spikes_per_step = self.spikes_per_step + other.spikes_per_step
        for key in ("saturation_low", "saturation_high", "current_wraps", "synops", "dense_macs"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for key in ("membrane_min", "current_min"):
            setattr(self, key, min(getattr(self, key), getattr(other, key)))
        for key in ("membrane_max", "current_max", "sum_bound"):
            setattr(self, key, max(getattr(self, key), getattr(other, key)))

    @property
    def saturation_events(self) -> int:
        return self.saturation_low + self.saturation_high


@dataclass
class SimResult:
    """Output of :func:`simulate`.

    Attributes:
        counts: (N, classes) output spike counts over T.
        predictions: (N,) argmax of ``counts``, first index winning ties.
        layers: per-layer :class:`LayerStats`, first to last.
        num_steps: T.
        spikes: with ``record=True``, ``{"z1": (T, N, ...), ...}`` uint8 spike trains per layer
            (layout (T, N, C, H, W) for conv layers, (T, N, O) for dense ones); else ``None``.
        membranes: with ``record_membranes=True``, ``{"u1": (T, N, ...), ...}`` integer membranes.
    """

    counts: np.ndarray
    predictions: np.ndarray
    layers: tuple[LayerStats, ...]
    num_steps: int
    spikes: dict[str, np.ndarray] | None = None
    membranes: dict[str, np.ndarray] | None = None

    @property
    def num_samples(self) -> int:
        return int(len(self.predictions))

    def accuracy(self, labels: np.ndarray) -> float:
        """Fraction of samples whose prediction equals ``labels``."""
        labels = np.asarray(labels)
        return float(np.mean(self.predictions == labels)) if len(labels) else float("nan")


def predict(counts: np.ndarray) -> np.ndarray:
    """Argmax of spike counts over the last axis, first index winning ties (as torch.argmax)."""
    return np.argmax(np.asarray(counts), axis=-1).astype(np.int64)


# --------------------------------------------------------------------------------------------------
# One layer, compiled for the engine


def column_sums(x: np.ndarray, in_max: int) -> np.ndarray:
    """Σ over the rows of a (rows, units) uint8 array with entries ≤ ``in_max``, per unit (int64).

    Eight units at a time: the bytes of a row viewed as uint64 words add lane by lane without a
    carry into the next byte while a lane's sum stays ≤ 255, i.e. over ⌊255 / in_max⌋ rows (255
    rows of spikes); only those partial sums are widened. Other shapes take NumPy's int64 sum.
    """
    rows, units = x.shape
    per = 255 // max(1, int(in_max))
    if x.dtype != np.uint8 or per < 8 or units % 8 or not x.flags.c_contiguous:
        return x.sum(axis=0, dtype=np.int64)
    words = x.view(np.uint64)
    total = np.zeros(units, dtype=np.int64)
    for r0 in range(0, rows, per):
        total += np.add.reduce(words[r0:r0 + per], axis=0).view(np.uint8)
    return total


def _shl_bound(bound: int, s: int) -> int:
    """Largest |shl(a, s)| for |a| ≤ bound (a right shift floors −bound to −ceil(bound / 2^−s))."""
    return bound << s if s >= 0 else -((-bound) >> -s)


def _bits_needed(bound: int) -> int:
    return int(bound).bit_length()


class _Layer:
    """A layer's constants in the engine's layout (channels last) and its exactness proofs."""

    def __init__(self, layer: IntegerLayer, profile: ChipProfile, in_shape: tuple[int, ...],
                 in_max: int, kernel: str = "auto") -> None:
        self.layer = layer
        self.profile = profile
        self.name = layer.name
        self.in_shape = tuple(in_shape)                      # (C, H, W) or (n,), NCHW order
        self.out_shape = layer.output_shape(self.in_shape)   # NCHW order
        self.out_nhwc = (self.out_shape[1], self.out_shape[2], self.out_shape[0]) if layer.kind == "conv" \
            else self.out_shape
        self.neurons = int(np.prod(self.out_shape))
        self._check_constants()

        w = np.asarray(layer.weight, dtype=np.int64)
        if layer.kind == "conv":
            self.window = layer.kernel + layer.pool - 1                # the pool-folded kernel's side
            self.stride = layer.pool
        mat = weight_matrix(w, layer.kind, layer.pool, self.in_shape)
        self.cols = mat.shape[1]
        self.in_max = int(in_max)
        self.sum_bound = int(np.abs(mat).sum(axis=1).max()) * int(in_max)
        # the integer kernel where its arithmetic is proven exact (qsnn.kernels), else NumPy. A pooled
        # conv layer first tries its own k×k kernel on box sums of its input (qsnn.kernels.box_kernel)
        self.int_matmul: OrtIntMatmul | None = None
        self.box_matmul: OrtIntMatmul | None = None
        box = box_kernel(w, layer.pool, self.in_max) if kernel == "auto" and layer.kind == "conv" else None
        if box is not None:
            self.box_matmul = box[0]
            self.box_cols = self.box_matmul.k
            self.sum_dtype = np.dtype(np.int32)
        elif kernel == "auto" and int8_exact(self.in_max, int(np.abs(mat).max(initial=0)), self.sum_bound) \
                and ort_available():
            self.int_matmul = OrtIntMatmul(mat.T)
            self.sum_dtype = np.dtype(np.int32)
        elif self.sum_bound < FLOAT32_EXACT:
            self.sum_dtype = np.dtype(np.float32)
        elif self.sum_bound < FLOAT64_EXACT:
            self.sum_dtype = np.dtype(np.float64)
        else:
            self.sum_dtype = np.dtype(np.int64)
        if self.sum_bound * 2 ** max(0, layer.weight_exp) >= 2**62:
            raise NetworkError(f"layer {self.name}: synaptic sums up to {self.sum_bound} do not fit int64")
        self.sum_kernel = "onnxruntime" if self.int_matmul is not None or self.box_matmul is not None else "numpy"
        self.kernel = np.ascontiguousarray(mat.T.astype(self.sum_dtype))   # (cols, O); the NumPy path's

        # the current on the grid: c = shl(shl(acc, e), s) + b (see qsnn.arith); for e ≥ 0 that is
        # the single shift shl(acc, s + e); a negative exponent floors first, then s applies
        e, s = int(layer.weight_exp), int(layer.current_shift)
        self.exp_shift = min(e, 0)
        self.shift = s + max(e, 0) if e >= 0 else s
        cur_bound = _shl_bound(_shl_bound(self.sum_bound, self.exp_shift), self.shift)
        theta = np.asarray(layer.threshold, dtype=np.int64)
        bias = np.asarray(layer.bias, dtype=np.int64)
        self.lo, self.hi = overflow_range(profile)
        mem = max(-self.lo, self.hi)
        theta_max = int(theta.max(initial=0))
        # worst-case magnitudes: leak never grows |u| (m ≤ 2^F), so the pre-sat sum is bounded by
        self.pre_bound = mem + cur_bound + int(np.abs(bias).max(initial=0)) + theta_max
        product = mem * max(1 << profile.leak_bits, int(layer.leak_const)) if profile.leak != "shift" else mem
        # the raw sums land in the state dtype before their shift, so they must fit it too
        worst = max(self.pre_bound, product, cur_bound + int(np.abs(bias).max(initial=0)), self.sum_bound)
        if worst < 2**31 - 1:
            self.state_dtype = np.dtype(np.int32)
        elif worst < 2**63 - 1:
            self.state_dtype = np.dtype(np.int64)
        else:
            raise NetworkError(f"layer {self.name}: intermediate values up to 2^{_bits_needed(worst)} do not fit "
                             f"int64 (membrane {profile.membrane_bits} bits, leak {profile.leak_bits} bits)")
        self.theta = theta.astype(self.state_dtype)
        self.bias = bias.astype(self.state_dtype)
        self.leak_const = int(layer.leak_const)
        self.sign_shift = self.state_dtype.itemsize * 8 - 1
        self.round_mask = (1 << profile.leak_bits) - 1
        self.current_half = 1 << (profile.current_bits - 1) if profile.current_bits else 0
        self.fanout = self._fanout()
        fan = self.fanout if self.fanout.ndim == 1 else np.repeat(self.fanout[..., None], self.in_shape[0], axis=2)
        self.fan_vec = fan.reshape(-1).astype(np.int64)        # per input unit, NHWC flattened
        self._full: dict[tuple, np.ndarray] = {}
        # a static first layer's neuron tables (StaticTable), per (T, delay); see static_table
        self.lookup = kernel != "numpy"
        self._tables: dict[tuple[int, int], StaticTable] = {}
        self._tables_lock = Lock()
        self.cur_limit = cur_bound + int(np.abs(bias).max(initial=0))   # |c_t| ≤ this (proven)

    def _check_constants(self) -> None:
        check_leak_const(self.layer.leak_const, self.profile, self.layer.name)

    def _fanout(self) -> np.ndarray:
        """Synapses driven by one input unit, in the engine's input layout (NHWC flattened per sample)."""
        layer = self.layer
        if layer.kind == "dense":
            return np.full(int(np.prod(self.in_shape)), layer.out_channels, dtype=np.int64)
        _, h, w = self.in_shape
        side, p = layer.kernel, layer.pool
        ho, wo = self.out_shape[1], self.out_shape[2]

        def reach(size: int, used: int) -> np.ndarray:       # conv outputs in the pooled area a row reaches
            pos = np.arange(size)[:, None] - np.arange(side)[None, :]
            return ((pos >= 0) & (pos < used)).sum(axis=1)

        fan = layer.out_channels * reach(h, ho * p)[:, None] * reach(w, wo * p)[None, :]
        return fan.astype(np.int64)                           # (H, W): the same for every input channel

    # -- synaptic sums -------------------------------------------------------------------------
    def currents(self, x: np.ndarray, acc: "LayerStats | None" = None, track: bool = False,
                 steps: int = 1) -> tuple[list[np.ndarray], tuple[int, int], int]:
        """c = cur(shl(shl(acc, e), s)) + b for inputs ``x`` (n, *in_nhwc), whose rows are ``steps``
        equal groups (time steps): one (n / steps, *out_nhwc) array per step, in the state dtype.

        ``x`` is bool (spikes) or an unsigned integer array. With ``acc``, also adds the chunk's
        synaptic operations (Σ input × fan-out) to it. Returns the currents, their range before the
        current register and the bias (with ``track``, or when there is a register, which needs it;
        else (0, 0)) and how many of them the register wrapped. The sums run in blocks of whole
        steps (:data:`GEMM_BYTES` for the integer kernel), each block's currents are views of its
        product: no concatenation. Nothing is stored on the layer: threads share it.
        """
        n = x.shape[0]
        per_step = n // steps if steps else 0
        if steps < 1 or per_step * steps != n:
            raise ValueError(f"{n} input rows are not {steps} equal steps")
        kind = self.layer.kind
        out_shape = (self.kernel.shape[1],) if kind == "dense" else self.out_nhwc
        if x.dtype == np.bool_:
            x = x.view(np.uint8)                              # spikes: the same bytes, no cast
        if acc is not None:                                   # Σ_units (Σ_samples x) · fan-out, exact
            acc.synops += int(column_sums(x.reshape(n, -1), self.in_max) @ self.fan_vec)
        box = self.box_matmul is not None
        integer = self.int_matmul is not None or box
        if integer and x.dtype != np.uint8:
            x = x.astype(np.uint8)                            # values ≤ in_max ≤ 255 (proven)
        item = 1 if integer else self.sum_dtype.itemsize
        per_sample = (1 if kind == "dense" else self.out_nhwc[0] * self.out_nhwc[1]) * \
            (self.box_cols if box else self.cols)
        budget = min(CHUNK_BYTES, GEMM_BYTES) if integer else CHUNK_BYTES
        rows = max(1, budget // max(1, per_sample * item * max(1, per_step))) * per_step   # whole steps
        out: list[np.ndarray] = []
        lo_seen, hi_seen = None, None
        wraps = 0
        half = self.current_half
        for s0 in range(0, n, max(1, rows)):
            xs = x[s0:s0 + rows]
            if not integer and xs.dtype != self.sum_dtype:
                xs = xs.astype(self.sum_dtype)
            if kind == "dense":
                cols = xs.reshape(len(xs), -1)
            else:
                cols = im2col(box_sums(xs, self.layer.pool), self.layer.kernel, self.stride, self.out_nhwc[:2]) if box \
                    else im2col(xs, self.window, self.stride, self.out_nhwc[:2])
            if box:
                part = self.box_matmul(cols)
            else:
                part = self.int_matmul(cols) if integer else cols @ self.kernel
            if part.dtype != self.state_dtype:
                part = part.astype(self.state_dtype)
            part = part.reshape(-1, per_step, *out_shape)
            if self.exp_shift < 0:
                part >>= -self.exp_shift
            if self.shift > 0:
                part <<= self.shift
            elif self.shift < 0:
                part >>= -self.shift
            if (track or half) and part.size:
                lo_p, hi_p = int(part.min()), int(part.max())
                lo_seen = lo_p if lo_seen is None else min(lo_seen, lo_p)
                hi_seen = hi_p if hi_seen is None else max(hi_seen, hi_p)
                if half and (hi_p > half or lo_p <= -half):
                    high, low = part > half, part <= -half    # Lava's u: wraps once
                    wraps += int(np.count_nonzero(high)) + int(np.count_nonzero(low))
                    part[high] -= 2 * half
                    part[low] += 2 * half
            part += self.full(self.bias, part.shape[1:])         # same-shape add: the fast loop
            out.extend(part)
        rng = (lo_seen, hi_seen) if lo_seen is not None else (0, 0)
        return out, rng, wraps

    # -- the integer LIF step over a chunk of time steps --------------------------------------
    def scan(self, cur: Sequence[np.ndarray], u: np.ndarray, fired: np.ndarray, z_out: np.ndarray,
             stats: LayerStats, u_out: np.ndarray | None = None,
             sat_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run the step over ``len(cur)`` steps; ``cur[t]`` is c_t = shl(acc_t, s) + b.

        ``u`` is u_{t−1} and ``fired`` the reset mask r_t as integers (−1 where u_{t−1} > θ, else 0:
        all bits set, so ``fired & θ`` is r_t·θ and ``u & ~fired`` is (1 − r_t)·u without a
        multiply or a masked operation). Writes z_t into ``z_out[t]`` (bool) and, if given, u_t
        into ``u_out[t]`` and the neurons whose sum left the rails into ``sat_out[t]`` (+1 above
        the high rail, −1 below the low one; it must start as zeros). Returns (u, fired) after the chunk.
        """
        p = self.profile
        lo, hi = self.lo, self.hi
        shape = u.shape
        theta = self.theta_full(shape)
        sign = self.sign_shift
        v = np.empty_like(u)                                  # u_t is built here, then the two swap
        for t in range(len(cur)):
            if p.reset == "zero":
                np.invert(fired, out=fired)
                np.bitwise_and(u, fired, out=u)               # (1 − r_t)·u_{t−1}
            if p.leak == "mul":
                np.multiply(u, self.leak_const, out=v)
                v >>= p.leak_bits                             # floor
            elif p.leak == "shift":
                np.right_shift(u, self.leak_const, out=v)
                np.subtract(u, v, out=v)                      # u − (u >> d), floor
            else:                                             # loihi: sign(x)·(|x| >> F), toward zero
                np.multiply(u, (1 << p.leak_bits) - self.leak_const, out=v)
                v += (v >> sign) & self.round_mask
                v >>= p.leak_bits
            v += cur[t]
            if p.reset == "subtract":
                fired &= theta                                # r_t·θ
                v -= fired
            vmax, vmin = int(v.max()), int(v.min())
            if vmax > hi or vmin < lo:
                high, low = v > hi, v < lo
                stats.saturation_high += int(np.count_nonzero(high))
                stats.saturation_low += int(np.count_nonzero(low))
                if sat_out is not None:
                    sat_out[t][high] = 1
                    sat_out[t][low] = -1
                if p.overflow == "saturate":
                    np.clip(v, lo, hi, out=v)
                    vmax, vmin = min(vmax, hi), max(vmin, lo)
                else:                                         # two's complement wrap
                    v -= lo
                    v &= (1 << p.membrane_bits) - 1
                    v += lo
                    vmax, vmin = int(v.max()), int(v.min())
            stats.membrane_max = max(stats.membrane_max, vmax)
            stats.membrane_min = min(stats.membrane_min, vmin)
            u, v = v, u
            np.subtract(theta, u, out=fired)
            fired >>= sign                                    # −1 where u_t > θ (θ − u_t < 0), else 0
            np.not_equal(fired, 0, out=z_out[t])              # z_t = [u_t > θ]
            if u_out is not None:
                u_out[t] = u
        return u, fired

    def static_table(self, T: int, delay: int, c_min: int, c_max: int, membranes: bool) -> "StaticTable | None":
        """The :class:`StaticTable` of this layer covering currents ``c_min..c_max`` over T steps
        (cached; widened when a batch needs more), or None where it would not pay or fit
        (:data:`TABLE_CELLS`) or the layer runs the NumPy reference path."""
        if not self.lookup:
            return None
        key = (int(T), int(delay))
        with self._tables_lock:
            table = self._tables.get(key)
            if table is not None and table.lo <= c_min and c_max <= table.hi and (table.u is not None or not membranes):
                return table
            channels = self.out_nhwc[-1]
            if (2 * self.cur_limit + 1) * channels * T <= TABLE_CELLS:
                lo, hi = -self.cur_limit, self.cur_limit       # every current the proof allows: built once
            else:                                              # the currents seen so far
                lo, hi = (c_min, c_max) if table is None else (table.lo, table.hi)
            lo, hi = min(lo, c_min), max(hi, c_max)
            if (hi - lo + 1) * channels * T > TABLE_CELLS:
                return None
            table = StaticTable(self, T, delay, lo, hi, membranes or (table is not None and table.u is not None))
            self._tables[key] = table
            return table

    def theta_full(self, shape: tuple[int, ...]) -> np.ndarray:
        """θ broadcast to a state array's shape, contiguous (same-shape operations are the fast ones)."""
        return self.full(self.theta, shape)

    def full(self, const: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        """A per-channel constant (θ or b) broadcast to ``shape``, contiguous and cached (read only:
        threads share it)."""
        key = (id(const), tuple(shape))
        full = self._full.get(key)
        if full is None:
            full = np.ascontiguousarray(np.broadcast_to(const, shape))
            full.flags.writeable = False
            if len(self._full) >= 64:                         # many batch shapes: start over
                self._full.clear()
            self._full[key] = full
        return full


#: Largest static-layer table (entries × T neuron-steps) the engine builds; beyond, the layer is scanned.
TABLE_CELLS = 2**22

#: Bit 0 of every byte of a uint64 word.
LOW_BITS = np.uint64(0x0101010101010101)


class StaticTable:
    """Every spike train a static first layer can produce, by neuron current: the layer's scan once
    per possible (current, channel), then a lookup per neuron.

    With a static image the first layer's current c_t is the same at every step (c_t = b before
    the synaptic delay d), so a neuron's whole trajectory (u_t, z_t, saturation events) is a
    function of its channel (θ, b) and its current c alone: the engine's own :meth:`_Layer.scan`
    runs once on a state of shape (currents lo..hi, channels) and a batch's spikes are gathered
    from it (bit planes of 8 steps, one byte gather per plane and a shift per step), the same
    integers as scanning every neuron (``tests/test_sim_engine.py`` holds it to the NumPy path,
    which scans). The statistics come from the table weighted by how many neurons use each entry.
    """

    def __init__(self, layer: "_Layer", T: int, delay: int, lo: int, hi: int, membranes: bool) -> None:
        self.lo, self.hi = int(lo), int(hi)
        channels = layer.out_nhwc[-1]
        self.channels = channels
        shape = (self.hi - self.lo + 1, channels)
        dtype = layer.state_dtype
        c = np.ascontiguousarray(np.broadcast_to(np.arange(self.lo, self.hi + 1, dtype=dtype)[:, None], shape))
        bias = np.ascontiguousarray(np.broadcast_to(layer.bias, shape))
        z = np.zeros((T, *shape), dtype=bool)
        u_rec = np.empty((T, *shape), dtype=dtype)
        sat = np.zeros((T, *shape), dtype=np.int8)
        scratch = LayerStats(layer.name, layer.layer.kind, shape, 0, np.zeros(T, dtype=np.int64))
        layer.scan([bias if t < delay else c for t in range(T)], np.zeros(shape, dtype), np.zeros(shape, dtype),
                   z, scratch, u_rec, sat)
        size = shape[0] * channels
        # entries channel-major (entry = channel·R + c − lo): a neuron's index is one add to its current
        z, u_rec, sat = (a.transpose(0, 2, 1).reshape(T, size) for a in (z, u_rec, sat))
        self.planes = np.packbits(z, axis=0, bitorder="little")     # (⌈T/8⌉, entries)
        self.u = np.ascontiguousarray(u_rec) if membranes else None
        self.u_min = u_rec.min(axis=0, initial=0)                   # the engine's range starts at 0
        self.u_max = u_rec.max(axis=0, initial=0)
        self.sat_high = (sat == 1).sum(axis=0, dtype=np.int64)
        self.sat_low = (sat == -1).sum(axis=0, dtype=np.int64)
        self.saturates = bool(self.sat_high.any() or self.sat_low.any())
        self.offset = np.arange(channels, dtype=np.intp) * shape[0] - self.lo

    def index(self, cur: np.ndarray) -> np.ndarray:
        """The table entry of every neuron of a (..., channels) current array (the caller checks the range)."""
        idx = cur.astype(np.intp)
        idx += self.offset
        return idx

    def absorb_stats(self, idx: np.ndarray, stats: LayerStats) -> None:
        """Add the saturation events and membrane range of the neurons ``idx`` over all T steps."""
        uses = np.bincount(idx.reshape(-1), minlength=len(self.sat_low))
        if self.saturates:
            stats.saturation_high += int(uses @ self.sat_high)
            stats.saturation_low += int(uses @ self.sat_low)
        used = uses > 0
        if used.any():
            stats.membrane_min = min(stats.membrane_min, int(self.u_min[used].min()))
            stats.membrane_max = max(stats.membrane_max, int(self.u_max[used].max()))

    def spikes(self, idx: np.ndarray, t0: int, z_out: np.ndarray, planes: dict) -> None:
        """z_t of the neurons ``idx`` for steps t0 … t0 + len(z_out) − 1 into ``z_out`` (bool);
        ``planes`` caches the gathered bit planes between calls. Bit t mod 8 of each byte is
        extracted eight bytes at a time: (word >> b) & 0x0101…01 keeps bit b of every byte (the
        bits shifted in from the next byte land above bit 0, which the mask drops)."""
        wide = idx.size % 8 == 0
        for i in range(len(z_out)):
            t = t0 + i
            g, bit = divmod(t, 8)
            gathered = planes.get(g)
            if gathered is None:
                planes.clear()
                gathered = planes[g] = np.take(self.planes[g], idx)
            src, out = gathered.reshape(-1), z_out[i].view(np.uint8).reshape(-1)
            if wide:
                src, out = src.view(np.uint64), out.view(np.uint64)
            np.right_shift(src, bit, out=out)
            np.bitwise_and(out, LOW_BITS if wide else 1, out=out)


# --------------------------------------------------------------------------------------------------
# The simulation


def check_input(net: IntegerNetwork, x: np.ndarray) -> None:
    """Raise :class:`~qsnn.errors.InputError` unless ``x`` is a batch of the network's input (shape, encoding, dtype)."""
    x = np.asarray(x)
    c, h, w = net.input_shape
    if not np.issubdtype(x.dtype, np.integer):
        raise InputError(f"input must be integers (uint8 pixels or event counts), got {x.dtype}")
    if net.encoding == "static":
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise InputError(f"the network takes static images (N, {c}, {h}, {w}), got input of shape {x.shape}")
    else:
        if x.ndim != 5 or tuple(x.shape[2:]) != (c, h, w):
            raise InputError(f"the network takes event frames (N, T, {c}, {h}, {w}), got input of shape {x.shape}")
        if x.shape[1] != net.num_steps:
            raise InputError(f"the network runs T={net.num_steps} steps but the input has {x.shape[1]} frames")
    if x.size and x.min() < 0:
        raise InputError("input must be non-negative (pixels or event counts)")
    if x.size and x.max() > net.input_max:
        what = "event counts" if net.encoding == "events" else "pixels"
        raise InputError(f"the network takes {what} up to {net.input_max} per input cell and step (its input "
                         f"encoding, which the compiler's bound assumes), got {int(x.max())}; clip the input as "
                         "training did (qsnn.data.load_split with the model's event encoding)")


#: Compiled layers per network (content fingerprint, first-layer input bound, kernel), most recent last.
_COMPILED: "OrderedDict[tuple, list[_Layer]]" = OrderedDict()
_COMPILED_LOCK = Lock()
_COMPILED_MAX = 8

#: A batch runs in pieces whose largest membrane array stays about this size (in the core's L2
#: cache: at batch 512 the membrane update of an un-split batch is memory bound), at least
#: MIN_PIECE samples each; threads take pieces in turn. Below about 64 samples a piece's many
#: small NumPy calls contend for the GIL: on the demo net, 2 threads on 2 pieces of 16 ran 0.77×
#: one thread on the batch, of 32 1.0×, of 64 1.3×, of 128 1.5× (idle machine).
PIECE_BYTES = 512 * 2**10
MIN_PIECE = 64


def _fingerprint(net: IntegerNetwork) -> tuple:
    """Everything the compiled layers depend on, hashed (weights, constants, profile, shapes)."""
    crc = 0
    scalars = []
    for layer in net.layers:
        for arr in (layer.weight, layer.threshold, layer.bias):
            a = np.ascontiguousarray(arr)
            crc = zlib.crc32(repr((a.dtype.str, a.shape)).encode() + a.tobytes(), crc)
        scalars.append((layer.name, layer.kind, int(layer.pool), int(layer.current_shift), int(layer.leak_const),
                        int(layer.weight_exp)))
    return (crc, tuple(scalars), repr(net.profile), tuple(net.input_shape))


def _input_bound(in_max: int, input_max: int) -> int:
    """The first layer's proven input bound: ``in_max`` rounded up to 2^k − 1 (few distinct compilations), ≤ ``input_max``."""
    return max(1, min(int(input_max), (1 << max(1, int(in_max)).bit_length()) - 1)) if in_max > 0 else 1


def compile_layers(net: IntegerNetwork, in_max: int = 255, kernel: str = "auto") -> list[_Layer]:
    """The engine's layers of ``net`` for first-layer inputs up to ``in_max`` (cached per network)."""
    if kernel not in KERNELS:
        raise InputError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    bound = _input_bound(in_max, net.input_max)
    key = (_fingerprint(net), bound, kernel)
    with _COMPILED_LOCK:
        layers = _COMPILED.get(key)
        if layers is not None:
            _COMPILED.move_to_end(key)
            return layers
    layers = []
    shape: tuple[int, ...] = tuple(net.input_shape)
    for i, layer in enumerate(net.layers):
        el = _Layer(layer, net.profile, shape, bound if i == 0 else 1, kernel)
        layers.append(el)
        shape = el.out_shape
    with _COMPILED_LOCK:
        _COMPILED[key] = layers
        while len(_COMPILED) > _COMPILED_MAX:
            _COMPILED.popitem(last=False)
    return layers


def _new_stats(layers: list[_Layer], N: int, T: int) -> list[LayerStats]:
    return [LayerStats(name=el.name, kind=el.layer.kind, shape=tuple(el.out_shape), neurons=el.neurons,
                       spikes_per_step=np.zeros(T, dtype=np.int64), current_min=np.iinfo(np.int64).max,
                       current_max=np.iinfo(np.int64).min,
                       dense_macs=N * T * el.neurons * (el.layer.pool ** 2) * el.layer.fan_in,
                       sum_dtype=el.sum_dtype.name, sum_kernel=el.sum_kernel, sum_bound=el.sum_bound,
                       state_dtype=el.state_dtype.name)
            for el in layers]


def _merge_stats(into: list[LayerStats], parts: list[list[LayerStats]]) -> None:
    for i, st in enumerate(into):
        for part in parts:
            st.absorb(part[i])


def simulate(net: IntegerNetwork, x: np.ndarray, *, batch_size: int = 256, record: bool = False,
             record_membranes: bool = False, progress: bool = False, kernel: str = "auto",
             threads: int | None = None, stats: bool = True) -> SimResult:
    """Run ``net`` on inputs ``x`` over exactly T = ``net.num_steps`` steps, in integers.

    Args:
        net: the compiled network; its ``profile`` gives the arithmetic.
        x: uint8 images (N, C, H, W) for ``encoding="static"`` (the same image every step), or
            integer event counts (N, T, C, H, W) for ``"events"`` (frame t at step t).
        batch_size: samples per batch (bounds memory); a batch runs in cache-sized pieces
            (:data:`PIECE_BYTES`), spread over the threads.
        record: keep every layer's spike trains, ``result.spikes["z1"]`` ... (T, N, ...) uint8.
        record_membranes: keep every layer's membranes, ``result.membranes["u1"]`` ...
        progress: show a tqdm progress bar over samples.
        kernel: ``"auto"`` (onnxruntime's integer kernel on the layers where it is proven exact,
            NumPy elsewhere) or ``"numpy"`` (the NumPy reference path on every layer); see
            :data:`KERNELS`. Both give the same integers.
        threads: split each batch over this many threads (default :func:`default_threads`); the
            results do not depend on it.
        stats: gather the per-layer statistics (spikes per step, current ranges, synaptic
            operations). With ``False`` they are skipped and ``result.layers`` holds only what the
            membrane update sees anyway (saturation events, membrane range) and zeros elsewhere.
    """
    check_input(net, x)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    threads = default_threads() if threads is None else int(threads)
    if threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    x = np.asarray(x)
    T, delay = net.num_steps, net.profile.synaptic_delay
    static = net.encoding == "static"
    in_max = int(x.max()) if x.size else 0
    layers = compile_layers(net, in_max, kernel)
    N = len(x)
    # the statistics are accumulated in place over all batches
    all_stats = _new_stats(layers, N, T)
    counts = np.zeros((N, layers[-1].neurons), dtype=np.int64)
    spikes = {f"z{i + 1}": np.zeros((T, N, *el.out_shape), dtype=np.uint8) for i, el in enumerate(layers)} \
        if record else None
    membranes = {f"u{i + 1}": np.zeros((T, N, *el.out_shape), dtype=el.state_dtype)
                 for i, el in enumerate(layers)} if record_membranes else None

    def run(b0: int, b1: int) -> list[LayerStats]:
        part = _new_stats(layers, 0, T)
        _run_batch(layers, part, x[b0:b1], T, delay, static, counts[b0:b1], spikes, membranes, b0, stats)
        return part

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=N, unit="sample", desc="simulate", leave=False)
    pool = None
    try:
        # the membrane arrays that are scanned set the piece (a static first layer is looked up: StaticTable)
        scanned = [el for i, el in enumerate(layers) if not (i == 0 and static and el.lookup)] or layers
        per_piece = max(MIN_PIECE, PIECE_BYTES // max(el.neurons * el.state_dtype.itemsize for el in scanned))
        for b0 in range(0, N, batch_size):
            b1 = min(N, b0 + batch_size)
            ways = max(1, -(-(b1 - b0) // per_piece))
            if threads > 1 and ways < threads and b1 - b0 >= threads * MIN_PIECE:
                ways = threads                                # every thread gets a piece
            cuts = np.linspace(b0, b1, ways + 1).astype(int)
            if threads == 1 or ways == 1:
                parts = [run(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:])]
            else:
                if pool is None:
                    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="qsnn-sim")
                parts = list(pool.map(run, cuts[:-1], cuts[1:]))
            _merge_stats(all_stats, parts)
            if bar is not None:
                bar.update(b1 - b0)
    finally:
        if pool is not None:
            pool.shutdown()
        if bar is not None:
            bar.close()

    for st in all_stats:
        if st.current_min > st.current_max:          # no current seen (T ≤ delay, or stats=False)
            st.current_min = st.current_max = 0
    return SimResult(counts=counts, predictions=predict(counts), layers=tuple(all_stats), num_steps=T,
                     spikes=spikes, membranes=membranes)


def _to_nhwc(a: np.ndarray) -> np.ndarray:
    """(..., C, H, W) → (..., H, W, C)."""
    return np.moveaxis(a, -3, -1)


def _to_nchw(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, -1, -3)


def _time_chunk(layers: list[_Layer], batch: int, T: int) -> int:
    per_step = max(el.neurons * max(el.state_dtype.itemsize, 4) for el in layers) * batch
    return int(max(1, min(T, CHUNK_BYTES // max(1, per_step))))


def _run_batch(layers: list[_Layer], accs: list[LayerStats], xb: np.ndarray, T: int, delay: int, static: bool,
               counts: np.ndarray, spikes: dict | None, membranes: dict | None, b0: int, stats: bool = True) -> None:
    B = len(xb)
    tc = _time_chunk(layers, B, T)
    # state per layer: membrane, last spikes, delay line of its input (its last `delay` input steps)
    u = [np.zeros((B, *el.out_nhwc), dtype=el.state_dtype) for el in layers]
    fired = [np.zeros((B, *el.out_nhwc), dtype=el.state_dtype) for el in layers]
    tails: list[np.ndarray | None] = [None] * len(layers)
    first = layers[0]
    table: StaticTable | None = None
    if static:
        xs = xb.reshape(B, *first.in_shape)
        x_in = _to_nhwc(xs) if len(first.in_shape) == 3 else xs
        (cur_static,), rng, wraps = first.currents(np.ascontiguousarray(x_in), track=stats)
        if stats and delay < T:
            _update_current_range(accs[0], rng)
            accs[0].current_wraps += wraps * (T - delay)
            if first.layer.kind == "conv":
                synops = int(((x_in != 0) * first.fanout[..., None]).sum())
            else:
                synops = int(np.count_nonzero(x_in)) * first.layer.out_channels
            accs[0].synops += synops * (T - delay)
        if stats and delay > 0:
            _update_current_range(accs[0], (0, 0))
        bias_only = np.broadcast_to(first.bias, cur_static.shape)
        table = None
        if cur_static.size:
            c_min, c_max = int(cur_static.min()), int(cur_static.max())
            table = first.static_table(T, delay, c_min, c_max, membranes is not None)
        if table is not None:                                 # layer 1 by lookup (StaticTable)
            idx = table.index(cur_static)
            table.absorb_stats(idx, accs[0])
            gathered: dict = {}
    for t0 in range(0, T, tc):
        t1 = min(T, t0 + tc)
        n = t1 - t0
        prev_out: np.ndarray | None = None
        for li, (el, acc) in enumerate(zip(layers, accs)):
            if li == 0 and static:
                cur = [cur_static if t >= delay else bias_only for t in range(t0, t1)] if table is None else []
            else:
                if li == 0:
                    frames = np.moveaxis(xb[:, t0:t1], 1, 0)      # (n, B, C, H, W) events
                    src = _to_nhwc(frames) if len(el.in_shape) == 3 else frames.reshape(n, B, -1)
                else:
                    src = prev_out
                if delay > 0:
                    if tails[li] is None:
                        tails[li] = np.zeros((delay, *src.shape[1:]), dtype=src.dtype)
                    joined = np.concatenate([tails[li], src])
                    src, tails[li] = joined[:n], joined[n:]
                src = np.ascontiguousarray(src)
                flat = src.reshape(n * B, *src.shape[2:])
                cur, rng, wraps = el.currents(flat, acc if stats else None, track=stats, steps=n)
                if stats:
                    _update_current_range(acc, rng)
                    acc.current_wraps += wraps
            z_chunk = np.empty((n, B, *el.out_nhwc), dtype=bool)
            u_chunk = np.empty((n, B, *el.out_nhwc), dtype=el.state_dtype) if membranes is not None else None
            if li == 0 and table is not None:
                table.spikes(idx, t0, z_chunk, gathered)
                if u_chunk is not None:
                    for t in range(t0, t1):
                        np.take(table.u[t], idx, out=u_chunk[t - t0])
            else:
                u[li], fired[li] = el.scan(cur, u[li], fired[li], z_chunk, acc, u_chunk)
            if stats:                                         # one call for a small layer, else per step
                acc.spikes_per_step[t0:t1] += z_chunk.reshape(n, -1).sum(axis=1) if z_chunk[0].size < 2**14 \
                    else [np.count_nonzero(z) for z in z_chunk]
            name = f"{li + 1}"
            if spikes is not None:
                out = _to_nchw(z_chunk) if el.layer.kind == "conv" else z_chunk
                spikes["z" + name][t0:t1, b0:b0 + B] = out
            if membranes is not None:
                out = _to_nchw(u_chunk) if el.layer.kind == "conv" else u_chunk
                membranes["u" + name][t0:t1, b0:b0 + B] = out
            prev_out = z_chunk
        counts += prev_out.view(np.uint8).sum(axis=0, dtype=np.int64).reshape(B, -1)


def _update_current_range(acc: LayerStats, rng: tuple[int, int]) -> None:
    acc.current_min = min(acc.current_min, rng[0])
    acc.current_max = max(acc.current_max, rng[1])


def combine(results: Sequence[SimResult]) -> SimResult:
    """One :class:`SimResult` from runs on consecutive chunks of a dataset (same network)."""
    if not results:
        raise ValueError("nothing to combine")
    first = results[0]
    layers = []
    for i, stats in enumerate(first.layers):
        merged = replace(stats)
        for r in results[1:]:
            merged.absorb(r.layers[i])
        layers.append(merged)

    def join(attr: str) -> dict[str, np.ndarray] | None:
        if any(getattr(r, attr) is None for r in results):
            return None
        return {k: np.concatenate([getattr(r, attr)[k] for r in results], axis=1) for k in getattr(first, attr)}

    counts = np.concatenate([r.counts for r in results])
    return SimResult(counts=counts, predictions=predict(counts), layers=tuple(layers),
                     num_steps=first.num_steps, spikes=join("spikes"), membranes=join("membranes"))
