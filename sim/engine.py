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
  its synaptic sums for the whole chunk and batch are one matrix product (im2col with
  :func:`numpy.lib.stride_tricks.sliding_window_view`).
* Sum-pooling folds into the kernel: ``sumpool_p(W ⊛ x)`` is one stride-p convolution with the
  integer kernel ``W'`` (k+p−1 wide, each tap a sum of up to p² weights), which needs fewer
  multiplies and no separate pooling.
* Integer sums are computed in float32 BLAS only where they are provably exact: every partial
  sum of ``W'·x`` is bounded by ``B = max_o Σ|W'_o| · max x``, and float32 represents every
  integer below 2^24 exactly, so the product is exact when ``B < 2^24`` (asserted per layer;
  float64 below 2^53, int64 otherwise).
* On a static image the first layer's current is the same at every step: computed once.
* The membrane update runs in int32 where the worst-case bound of every intermediate fits
  (e.g. a 16-bit membrane times a 12-bit leak), int64 otherwise.

The engine imports numpy only (and tqdm for the optional progress bar), never torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from qsnn.arith import check_leak_const, overflow_range
from qsnn.errors import InputError, NetworkError
from qsnn.network import IntegerLayer, IntegerNetwork, fold_pool
from qsnn.profiles import ChipProfile

#: Integers of magnitude below these are exact in float32 / float64 (and so are sums that stay below).
FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53

#: Working-memory budget of one matrix product / current buffer (bytes); batches keep memory bounded.
CHUNK_BYTES = 48 * 2**20


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
        sum_dtype: how the synaptic sums were computed exactly (float32, float64 or int64).
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
    sum_bound: int = 0
    state_dtype: str = ""

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


def _shl_bound(bound: int, s: int) -> int:
    """Largest |shl(a, s)| for |a| ≤ bound (a right shift floors −bound to −ceil(bound / 2^−s))."""
    return bound << s if s >= 0 else -((-bound) >> -s)


def _bits_needed(bound: int) -> int:
    return int(bound).bit_length()


class _Layer:
    """A layer's constants in the engine's layout (channels last) and its exactness proofs."""

    def __init__(self, layer: IntegerLayer, profile: ChipProfile, in_shape: tuple[int, ...],
                 in_max: int) -> None:
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
            wf = fold_pool(w, layer.pool)
            self.window = wf.shape[2]
            self.stride = layer.pool
            mat = wf.transpose(0, 2, 3, 1).reshape(wf.shape[0], -1)   # columns in (K, K, C) order
        else:
            if len(self.in_shape) == 3:                       # NCHW flatten → our NHWC flatten
                c, h, wd = self.in_shape
                mat = w.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
            else:
                mat = w
        self.cols = mat.shape[1]
        self.sum_bound = int(np.abs(mat).sum(axis=1).max()) * int(in_max)
        if self.sum_bound < FLOAT32_EXACT:
            self.sum_dtype = np.dtype(np.float32)
        elif self.sum_bound < FLOAT64_EXACT:
            self.sum_dtype = np.dtype(np.float64)
        else:
            self.sum_dtype = np.dtype(np.int64)
        if self.sum_bound * 2 ** max(0, layer.weight_exp) >= 2**62:
            raise NetworkError(f"layer {self.name}: synaptic sums up to {self.sum_bound} do not fit int64")
        self.kernel = np.ascontiguousarray(mat.T.astype(self.sum_dtype))   # (cols, O)

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
        self.last_range, self.last_wraps = (0, 0), 0       # of the latest currents() call
        self.fanout = self._fanout()
        fan = self.fanout if self.fanout.ndim == 1 else np.repeat(self.fanout[..., None], self.in_shape[0], axis=2)
        per_sample_synops = int(fan.sum()) * int(in_max)     # Σ x·fanout of one sample, worst case
        self.fan_vec = fan.reshape(-1).astype(np.float32 if per_sample_synops < FLOAT32_EXACT and
                                              self.sum_dtype == np.float32 else np.float64)

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
    def currents(self, x: np.ndarray, acc: "LayerStats | None" = None) -> np.ndarray:
        """cur(shl(shl(acc, e), s)) for inputs ``x`` (n, *in_nhwc) → (n, *out_nhwc), in the state dtype.

        With ``acc``, also adds the chunk's synaptic operations (Σ input × fan-out) to it. Leaves the
        range of the currents before the current register in ``last_range`` and the number of
        currents the register wrapped in ``last_wraps``.
        """
        n = x.shape[0]
        kind = self.layer.kind
        o = self.kernel.shape[1]
        out_shape = (n, o) if kind == "dense" else (n, *self.out_nhwc)
        out = np.empty(out_shape, dtype=self.state_dtype)
        per_sample = (1 if kind == "dense" else self.out_nhwc[0] * self.out_nhwc[1]) * self.cols
        samples_per = max(1, CHUNK_BYTES // max(1, per_sample * self.sum_dtype.itemsize))
        for s0 in range(0, n, samples_per):
            xs = x[s0:s0 + samples_per]
            if xs.dtype != self.sum_dtype:
                xs = xs.astype(self.sum_dtype)
            if acc is not None:                               # Σ x·fanout: one exact gemv
                flat = xs.reshape(len(xs), -1)
                if self.fan_vec.dtype != xs.dtype:
                    flat = flat.astype(self.fan_vec.dtype)
                acc.synops += int((flat @ self.fan_vec).astype(np.int64).sum())
            if kind == "dense":
                out[s0:s0 + samples_per] = xs.reshape(len(xs), -1) @ self.kernel
            else:
                ho, wo, _ = self.out_nhwc
                side, p = self.window, self.stride
                win = sliding_window_view(xs, (side, side), axis=(1, 2))[:, ::p, ::p][:, :ho, :wo]
                # im2col (m·Ho·Wo, K·K·C): channels innermost, so each copied run is contiguous
                cols = win.transpose(0, 1, 2, 4, 5, 3).reshape(-1, self.cols)
                out[s0:s0 + samples_per] = (cols @ self.kernel).reshape(len(xs), ho, wo, o)
        if self.exp_shift < 0:
            out >>= -self.exp_shift
        if self.shift > 0:
            out <<= self.shift
        elif self.shift < 0:
            out >>= -self.shift
        self.last_range = (int(out.min()), int(out.max())) if out.size else (0, 0)
        self.last_wraps = 0
        half = self.current_half
        if half and (self.last_range[1] > half or self.last_range[0] <= -half):
            high, low = out > half, out <= -half              # Lava's u: wraps once
            self.last_wraps = int(np.count_nonzero(high)) + int(np.count_nonzero(low))
            out[high] -= 2 * half
            out[low] += 2 * half
        return out

    # -- the integer LIF step over a chunk of time steps --------------------------------------
    def scan(self, cur: Sequence[np.ndarray], u: np.ndarray, fired: np.ndarray, z_out: np.ndarray,
             stats: LayerStats, u_out: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Run the step over ``len(cur)`` steps; ``cur[t]`` is c_t = shl(acc_t, s) + b.

        ``u`` is u_{t−1} and ``fired`` the reset mask r_t as integers (−1 where u_{t−1} > θ, else 0:
        all bits set, so ``fired & θ`` is r_t·θ and ``u & ~fired`` is (1 − r_t)·u without a
        multiply or a masked operation). Writes z_t into ``z_out[t]`` (bool) and, if given, u_t
        into ``u_out[t]``. Returns (u, fired) after the chunk.
        """
        p = self.profile
        lo, hi = self.lo, self.hi
        shape = u.shape
        theta = self.theta_full(shape)
        sign = self.sign_shift
        for t in range(len(cur)):
            if p.reset == "zero":
                np.invert(fired, out=fired)
                u = u & fired                                 # (1 − r_t)·u_{t−1}
            if p.leak == "mul":
                v = u * self.leak_const
                v >>= p.leak_bits                             # floor
            elif p.leak == "shift":
                v = u >> self.leak_const
                np.subtract(u, v, out=v)                      # u − (u >> d), floor
            else:                                             # loihi: sign(x)·(|x| >> F), toward zero
                v = u * ((1 << p.leak_bits) - self.leak_const)
                v += (v >> sign) & self.round_mask
                v >>= p.leak_bits
            v += cur[t]
            if p.reset == "subtract":
                fired &= theta                                # r_t·θ
                v -= fired
            vmax, vmin = int(v.max()), int(v.min())
            if vmax > hi or vmin < lo:
                stats.saturation_high += int(np.count_nonzero(v > hi))
                stats.saturation_low += int(np.count_nonzero(v < lo))
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
            u = v
            np.subtract(theta, u, out=fired)
            fired >>= sign                                    # −1 where u_t > θ (θ − u_t < 0), else 0
            np.not_equal(fired, 0, out=z_out[t])              # z_t = [u_t > θ]
            if u_out is not None:
                u_out[t] = u
        return u, fired

    def theta_full(self, shape: tuple[int, ...]) -> np.ndarray:
        """θ broadcast to a state array's shape, contiguous (same-shape operations are the fast ones)."""
        if getattr(self, "_theta_full", None) is None or self._theta_full.shape != shape:
            self._theta_full = np.ascontiguousarray(np.broadcast_to(self.theta, shape))
        return self._theta_full


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


def simulate(net: IntegerNetwork, x: np.ndarray, *, batch_size: int = 256, record: bool = False,
             record_membranes: bool = False, progress: bool = False) -> SimResult:
    """Run ``net`` on inputs ``x`` over exactly T = ``net.num_steps`` steps, in integers.

    Args:
        net: the compiled network; its ``profile`` gives the arithmetic.
        x: uint8 images (N, C, H, W) for ``encoding="static"`` (the same image every step), or
            integer event counts (N, T, C, H, W) for ``"events"`` (frame t at step t).
        batch_size: samples simulated together (bounds memory).
        record: keep every layer's spike trains, ``result.spikes["z1"]`` ... (T, N, ...) uint8.
        record_membranes: keep every layer's membranes, ``result.membranes["u1"]`` ...
        progress: show a tqdm progress bar over samples.
    """
    check_input(net, x)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    x = np.asarray(x)
    profile, T, delay = net.profile, net.num_steps, net.profile.synaptic_delay
    static = net.encoding == "static"
    in_max = int(x.max()) if x.size else 0
    layers: list[_Layer] = []
    shape: tuple[int, ...] = tuple(net.input_shape)
    for i, layer in enumerate(net.layers):
        el = _Layer(layer, profile, shape, max(in_max, 1) if i == 0 else 1)
        layers.append(el)
        shape = el.out_shape
    N = len(x)
    # the statistics are accumulated in place over all batches
    stats = [LayerStats(name=el.name, kind=el.layer.kind, shape=tuple(el.out_shape), neurons=el.neurons,
                        spikes_per_step=np.zeros(T, dtype=np.int64), current_min=np.iinfo(np.int64).max,
                        current_max=np.iinfo(np.int64).min,
                        dense_macs=N * T * el.neurons * (el.layer.pool ** 2) * el.layer.fan_in,
                        sum_dtype=el.sum_dtype.name, sum_bound=el.sum_bound, state_dtype=el.state_dtype.name)
             for el in layers]
    counts = np.zeros((N, layers[-1].neurons), dtype=np.int64)
    spikes = {f"z{i + 1}": np.zeros((T, N, *el.out_shape), dtype=np.uint8) for i, el in enumerate(layers)} \
        if record else None
    membranes = {f"u{i + 1}": np.zeros((T, N, *el.out_shape), dtype=el.state_dtype)
                 for i, el in enumerate(layers)} if record_membranes else None

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=N, unit="sample", desc="simulate", leave=False)
    try:
        for b0 in range(0, N, batch_size):
            xb = x[b0:b0 + batch_size]
            _run_batch(layers, stats, xb, T, delay, static, counts[b0:b0 + len(xb)],
                       spikes, membranes, b0)
            if bar is not None:
                bar.update(len(xb))
    finally:
        if bar is not None:
            bar.close()

    for st in stats:
        if st.current_min > st.current_max:          # no current seen (T ≤ delay)
            st.current_min = st.current_max = 0
    return SimResult(counts=counts, predictions=predict(counts), layers=tuple(stats), num_steps=T,
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
               counts: np.ndarray, spikes: dict | None, membranes: dict | None, b0: int) -> None:
    B = len(xb)
    tc = _time_chunk(layers, B, T)
    # state per layer: membrane, last spikes, delay line of its input (its last `delay` input steps)
    u = [np.zeros((B, *el.out_nhwc), dtype=el.state_dtype) for el in layers]
    fired = [np.zeros((B, *el.out_nhwc), dtype=el.state_dtype) for el in layers]
    tails: list[np.ndarray | None] = [None] * len(layers)
    first = layers[0]
    if static:
        xs = xb.reshape(B, *first.in_shape)
        x_in = _to_nhwc(xs) if len(first.in_shape) == 3 else xs
        cur_static = first.currents(np.ascontiguousarray(x_in))
        if delay < T:
            _update_current_range(accs[0], first.last_range)
            accs[0].current_wraps += first.last_wraps * (T - delay)
            if first.layer.kind == "conv":
                synops = int(((x_in != 0) * first.fanout[..., None]).sum())
            else:
                synops = int(np.count_nonzero(x_in)) * first.layer.out_channels
            accs[0].synops += synops * (T - delay)
        if delay > 0:
            _update_current_range(accs[0], (0, 0))
        cur_static += first.bias
        bias_only = np.broadcast_to(first.bias, cur_static.shape)
    for t0 in range(0, T, tc):
        t1 = min(T, t0 + tc)
        n = t1 - t0
        prev_out: np.ndarray | None = None
        for li, (el, acc) in enumerate(zip(layers, accs)):
            if li == 0 and static:
                cur = [cur_static if t >= delay else bias_only for t in range(t0, t1)]
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
                cur = el.currents(flat, acc).reshape(n, B, *el.out_nhwc)
                _update_current_range(acc, el.last_range)
                acc.current_wraps += el.last_wraps
                cur += el.bias
            z_chunk = np.empty((n, B, *el.out_nhwc), dtype=bool)
            u_chunk = np.empty((n, B, *el.out_nhwc), dtype=el.state_dtype) if membranes is not None else None
            u[li], fired[li] = el.scan(cur, u[li], fired[li], z_chunk, acc, u_chunk)
            acc.spikes_per_step[t0:t1] += np.count_nonzero(z_chunk.reshape(n, -1), axis=1)
            name = f"{li + 1}"
            if spikes is not None:
                out = _to_nchw(z_chunk) if el.layer.kind == "conv" else z_chunk
                spikes["z" + name][t0:t1, b0:b0 + B] = out
            if membranes is not None:
                out = _to_nchw(u_chunk) if el.layer.kind == "conv" else u_chunk
                membranes["u" + name][t0:t1, b0:b0 + B] = out
            prev_out = z_chunk
        counts += np.count_nonzero(prev_out, axis=0).reshape(B, -1)


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
        parts = [r.layers[i] for r in results]
        layers.append(LayerStats(
            name=stats.name, kind=stats.kind, shape=stats.shape, neurons=stats.neurons,
            spikes_per_step=np.sum([p.spikes_per_step for p in parts], axis=0),
            saturation_low=sum(p.saturation_low for p in parts),
            saturation_high=sum(p.saturation_high for p in parts),
            membrane_min=min(p.membrane_min for p in parts), membrane_max=max(p.membrane_max for p in parts),
            current_min=min(p.current_min for p in parts), current_max=max(p.current_max for p in parts),
            current_wraps=sum(p.current_wraps for p in parts),
            synops=sum(p.synops for p in parts), dense_macs=sum(p.dense_macs for p in parts),
            sum_dtype=stats.sum_dtype, sum_bound=max(p.sum_bound for p in parts), state_dtype=stats.state_dtype))

    def join(attr: str) -> dict[str, np.ndarray] | None:
        if any(getattr(r, attr) is None for r in results):
            return None
        return {k: np.concatenate([getattr(r, attr)[k] for r in results], axis=1) for k in getattr(first, attr)}

    counts = np.concatenate([r.counts for r in results])
    return SimResult(counts=counts, predictions=predict(counts), layers=tuple(layers),
                     num_steps=first.num_steps, spikes=join("spikes"), membranes=join("membranes"))
