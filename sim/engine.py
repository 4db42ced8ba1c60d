"""An independent, fast implementation of :func:`qsnn.arith.int_lif_step`, held equal to it by ``tests/test_arith.py``.

The bit-accurate integer engine runs an :class:`~qsnn.network.IntegerNetwork` over T steps. Per
layer and time step it computes exactly the integer LIF step of :mod:`qsnn.arith` (all integers),
with its own in-place, layout-changed arithmetic (it takes only the rails, ``overflow_range``, from
:mod:`qsnn.arith`; the literal :mod:`qsnn.sim.reference` calls the step itself, and
``tests/test_sim_engine.py`` compares the two on random networks of every profile variant)::

    acc_t = sumpool_p( W ⊛_{s,pad} z_in,t−d ) · 2^e        d = profile.synaptic_delay, zeros before t = d
            (conv of stride s on the input with pad zeros on every side; any depth of layers)
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
* Sum-pooling folds into the kernel: ``sumpool_p(W ⊛_s x)`` is one stride-s·p convolution with the
  integer kernel ``W'`` (k+s(p−1) wide, each tap a sum of up to p² weights), which needs fewer
  multiplies and no separate pooling; zero padding is the input padded once per chunk. On spikes, in
  the integer kernel, a stride-1 layer goes the other way: ``sumpool_p(W ⊛ x) = W ⊛_p S`` with S the
  p×p box sums of x (uint8, ≤ p²), the layer's own k×k kernel at stride p: k²/(k+p−1)² of the folded
  kernel's multiplies (a strided layer pools cells s apart, which box sums of adjacent cells are not:
  it takes the folded kernel).
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
  layer is looked up rather than scanned (:class:`~qsnn.sim.static_table.StaticTable`: its scan once per possible current
  and channel, each neuron's spikes gathered from the table's bit planes).
* The membrane update runs in int32 where the worst-case bound of every intermediate fits
  (e.g. a 16-bit membrane times a 12-bit leak), int64 otherwise.

The engine imports numpy (and tqdm for the optional progress bar; onnxruntime for the optional integer
kernel), never torch. Its parts, one job each: this module checks the input and runs the batches
(:func:`simulate`: pieces over threads, time chunks, layer after layer); :mod:`qsnn.sim.layers`
compiles a layer (its proofs, synaptic currents and LIF scan) and caches the compiled layers;
:mod:`qsnn.sim.static_table` is a static first layer's lookup table; :mod:`qsnn.sim.results` holds
what a simulation returns.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor, wait
from threading import Lock

import numpy as np

from qsnn.errors import InputError
from qsnn.kernels import default_threads
from qsnn.network import IntegerNetwork

from .layers import _Layer, compile_layers, dense_macs, note_work, time_chunk
from .results import LayerStats, SimResult, predict
from .static_table import StaticTable

#: A batch runs in pieces whose largest membrane array stays about this size (in the core's L2
#: cache: at batch 512 the membrane update of an un-split batch is memory bound), at least
#: MIN_PIECE samples each; threads take pieces in turn. Below about 64 samples a piece's many
#: small NumPy calls contend for the GIL, and two threads lose to one (measured: docs/engine.md).
PIECE_BYTES = 512 * 2**10
MIN_PIECE = 64
#: With the compiled kernels (:mod:`qsnn.sim.kernels_numba`) a piece is a few long GIL-free calls per
#: layer, so smaller pieces overlap: batch 64 runs as two pieces of 32 on two threads, where a piece
#: holds at least MIN_PIECE_MACS multiply-accumulates (else the NumPy loops' MIN_PIECE: handing a
#: millisecond of work to a second thread costs more than it saves, measured: docs/benchmarks.md).
MIN_PIECE_ACCEL = 32
MIN_PIECE_MACS = 2**25
INT64_MAX, INT64_MIN = 2**63 - 1, -(2**63)  # (np.iinfo is slow to build at every call)


def check_input(net: IntegerNetwork, x: np.ndarray) -> int:
    """Raise :class:`~qsnn.errors.InputError` unless ``x`` is a batch of the network's input (shape,
    encoding, dtype); returns its largest value (0 for an empty batch)."""
    x = np.asarray(x)
    c, h, w = net.input_shape
    if x.dtype.kind not in "iu":
        raise InputError(f"input must be integers (uint8 pixels or event counts), got {x.dtype}")
    if net.encoding == "static":
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, h, w):
            raise InputError(f"the network takes static images (N, {c}, {h}, {w}), got input of shape {x.shape}")
    else:
        if x.ndim != 5 or tuple(x.shape[2:]) != (c, h, w):
            raise InputError(f"the network takes event frames (N, T, {c}, {h}, {w}), got input of shape {x.shape}")
        if x.shape[1] != net.num_steps:
            raise InputError(f"the network runs T={net.num_steps} steps but the input has {x.shape[1]} frames")
    if not x.size:
        return 0
    if x.dtype.kind == "i" and x.min() < 0:
        raise InputError("input must be non-negative (pixels or event counts)")
    top = int(x.max())
    if top > net.input_max:
        what = "event counts" if net.encoding == "events" else "pixels"
        raise InputError(
            f"the network takes {what} up to {net.input_max} per input cell and step (its input "
            f"encoding, which the compiler's bound assumes), got {top}; clip the input as "
            "training did (qsnn.data.load_split with the model's event encoding)"
        )
    return top


def _new_stats(layers: list[_Layer], N: int, T: int) -> list[LayerStats]:
    return [
        LayerStats(
            name=el.name,
            kind=el.layer.kind,
            shape=el.out_shape,
            neurons=el.neurons,
            spikes_per_step=np.zeros(T, dtype=np.int64),
            current_min=INT64_MAX,
            current_max=INT64_MIN,
            dense_macs=N * T * el.dense_macs,
            sum_dtype=el.sum_dtype_name,
            sum_kernel=el.sum_kernel,
            sum_bound=el.sum_bound,
            state_dtype=el.state_dtype_name,
        )
        for el in layers
    ]


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = Lock()


def _pool(threads: int) -> ThreadPoolExecutor:
    """The engine's worker threads, ``threads`` of them, kept between calls (starting threads at every
    batch-64 call costs more than the call's bookkeeping); idle workers wait on a queue, using no CPU."""
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = _POOLS[threads] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="qsnn-sim")
        return pool


def _merge_stats(into: list[LayerStats], parts: list[list[LayerStats]]) -> None:
    for i, st in enumerate(into):
        for part in parts:
            st.absorb(part[i])


def simulate(
    net: IntegerNetwork,
    x: np.ndarray,
    *,
    batch_size: int = 256,
    record: bool = False,
    record_membranes: bool = False,
    progress: bool = False,
    kernel: str = "auto",
    threads: int | None = None,
    stats: bool = True,
    accel: bool | None = None,
) -> SimResult:
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
            :data:`qsnn.sim.layers.KERNELS`. Both give the same integers.
        threads: split each batch over this many threads (default :func:`default_threads`); the
            results do not depend on it.
        stats: gather the per-layer statistics (spikes per step, current ranges, synaptic
            operations). With ``False`` they are skipped and ``result.layers`` holds only what the
            membrane update sees anyway (saturation events, membrane range) and zeros elsewhere.
        accel: run the hot loops in the compiled kernels of :mod:`qsnn.sim.kernels_numba` (numba;
            ``True``/``False``); default ``QSNN_SIM_ACCEL``: ``auto`` (on once the process's calls
            add up to enough work to repay loading them: :data:`qsnn.sim.layers.ACCEL_MIN_MACS`), ``numba``
            (on) or ``numpy`` (NumPy's loops); never without numba. The same integers either way;
            ``kernel="numpy"`` never uses them.
    """
    in_max = check_input(net, x)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    threads = default_threads() if threads is None else int(threads)
    if threads < 1:
        raise InputError(f"threads must be >= 1, got {threads}")
    x = np.asarray(x)
    T, delay = net.num_steps, net.profile.synaptic_delay
    static = net.encoding == "static"
    N = len(x)
    work = N * dense_macs(net) if accel is None else None
    layers = compile_layers(net, in_max, kernel, accel, work)
    if work is not None:
        note_work(work)
    # the statistics are accumulated in place over all batches
    all_stats = _new_stats(layers, N, T)
    counts = np.zeros((N, layers[-1].neurons), dtype=np.int64)
    spikes = (
        {f"z{i + 1}": np.zeros((T, N, *el.out_shape), dtype=np.uint8) for i, el in enumerate(layers)}
        if record
        else None
    )
    membranes = (
        {f"u{i + 1}": np.zeros((T, N, *el.out_shape), dtype=el.state_dtype) for i, el in enumerate(layers)}
        if record_membranes
        else None
    )

    def run(b0: int, b1: int, into: list[LayerStats] | None = None) -> list[LayerStats]:
        """Samples b0 … b1 − 1, their statistics added to ``into`` (a piece run on its own thread: fresh ones)."""
        part = _new_stats(layers, 0, T) if into is None else into
        _run_batch(layers, part, x[b0:b1], T, delay, static, counts[b0:b1], spikes, membranes, b0, stats)
        return part

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=N, unit="sample", desc="simulate", leave=False)
    try:
        # the membrane arrays that are scanned set the piece (a static first layer is looked up: StaticTable)
        scanned = [el for i, el in enumerate(layers) if not (i == 0 and static and el.lookup)] or layers
        floor = MIN_PIECE
        if layers[0].accel is not None:
            macs = sum(el.macs * (1 if i == 0 and static else T) for i, el in enumerate(layers))
            floor = min(MIN_PIECE, max(MIN_PIECE_ACCEL, -(-MIN_PIECE_MACS // max(1, macs))))
        per_piece = max(floor, PIECE_BYTES // max(el.neurons * el.state_dtype.itemsize for el in scanned))
        for b0 in range(0, N, batch_size):
            b1 = min(N, b0 + batch_size)
            ways = max(1, -(-(b1 - b0) // per_piece))
            if threads > 1 and ways < threads and b1 - b0 >= threads * floor:
                ways = threads  # every thread gets a piece
            cuts = [b0 + (b1 - b0) * i // ways for i in range(ways + 1)]  # as even as can be
            parts = []
            if threads == 1 or ways == 1:  # one after the other, into the totals directly
                for lo, hi in zip(cuts[:-1], cuts[1:]):
                    run(lo, hi, all_stats)
            else:
                # the calling thread takes the last piece itself (one worker fewer to wake, and it
                # would only wait); whatever fails, no piece is left running when simulate returns
                rest = [_pool(threads - 1).submit(run, lo, hi) for lo, hi in zip(cuts[:-2], cuts[1:-1])]
                try:
                    last = run(cuts[-2], cuts[-1])
                except BaseException:
                    for f in rest:
                        f.cancel()  # those not started yet
                    wait(rest)
                    raise
                wait(rest)  # all of them, before any error of theirs is raised
                parts = [f.result() for f in rest] + [last]
            _merge_stats(all_stats, parts)
            if bar is not None:
                bar.update(b1 - b0)
    finally:
        if bar is not None:
            bar.close()

    for st in all_stats:
        if st.current_min > st.current_max:  # no current seen (T ≤ delay, or stats=False)
            st.current_min = st.current_max = 0
    return SimResult(
        counts=counts,
        predictions=predict(counts),
        layers=tuple(all_stats),
        num_steps=T,
        spikes=spikes,
        membranes=membranes,
    )


def _to_nhwc(a: np.ndarray) -> np.ndarray:
    """(..., C, H, W) → (..., H, W, C)."""
    return np.moveaxis(a, -3, -1)


def _to_nchw(a: np.ndarray) -> np.ndarray:
    return np.moveaxis(a, -1, -3)


def _run_batch(
    layers: list[_Layer],
    accs: list[LayerStats],
    xb: np.ndarray,
    T: int,
    delay: int,
    static: bool,
    counts: np.ndarray,
    spikes: dict | None,
    membranes: dict | None,
    b0: int,
    stats: bool = True,
) -> None:
    B = len(xb)
    tc = time_chunk(layers, B, T)
    # state per layer: membrane, last spikes, delay line of its input (its last `delay` input steps)
    u = [np.zeros((B, *el.out_nhwc), dtype=el.state_dtype) for el in layers]
    fired = [np.zeros((B, *el.out_nhwc), dtype=el.state_dtype) for el in layers]
    tails: list[np.ndarray | None] = [None] * len(layers)
    first = layers[0]
    table: StaticTable | None = None
    if static:
        xs = xb.reshape(B, *first.in_shape)
        x_in = np.ascontiguousarray(_to_nhwc(xs) if len(first.in_shape) == 3 else xs)
        (cur_static,), rng, wraps = first.currents(x_in, track=stats)
        if stats and delay < T:
            _update_current_range(accs[0], rng)
            accs[0].current_wraps += wraps * (T - delay)
            accs[0].synops += first.synops(x_in.reshape(B, -1), nonzero=True) * (T - delay)
        if stats and delay > 0:
            _update_current_range(accs[0], (0, 0))
        table = None
        if cur_static.size:
            c_min, c_max = int(cur_static.min()), int(cur_static.max())
            table = first.static_table(T, delay, c_min, c_max, membranes is not None)
        scratch: dict = {}  # the table's entries and bit planes of this batch (StaticTable.lookup)
    for t0 in range(0, T, tc):
        t1 = min(T, t0 + tc)
        n = t1 - t0
        prev_out: np.ndarray | None = None
        for li, (el, acc) in enumerate(zip(layers, accs)):
            if li == 0 and static:
                cur = []  # the NumPy scan's currents: c_t, the bias alone before the synaptic delay
                if table is None:
                    bias_only = np.broadcast_to(first.bias, cur_static.shape)
                    cur = [cur_static if t >= delay else bias_only for t in range(t0, t1)]
            else:
                if li == 0:
                    frames = np.moveaxis(xb[:, t0:t1], 1, 0)  # (n, B, C, H, W) events
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
                if el.accel is None:
                    cur, rng, wraps = el.currents(flat, acc if stats else None, track=stats, steps=n)
                    if stats:
                        _update_current_range(acc, rng)
                        acc.current_wraps += wraps
            z_chunk = np.empty((n, B, *el.out_nhwc), dtype=bool)
            u_chunk = np.empty((n, B, *el.out_nhwc), dtype=el.state_dtype) if membranes is not None else None
            counted = None
            if el.accel is not None and not (li == 0 and static):  # the sums, current tail and LIF compiled
                counted = el.fused_scan(flat, n, u[li], fired[li], z_chunk, acc, u_chunk, stats)
            elif li == 0 and static and table is None and el.accel is not None:
                counted = el.static_scan(cur_static, max(0, delay - t0), u[li], fired[li], z_chunk, acc, u_chunk)
            elif li == 0 and table is not None:  # layer 1 by lookup; its T steps' statistics with the first chunk
                counted = table.lookup(cur_static, t0, z_chunk, scratch, acc if t0 == 0 else None)
                if u_chunk is not None:
                    table.membranes(cur_static, t0, u_chunk, scratch)
            else:
                u[li], fired[li] = el.scan(cur, u[li], fired[li], z_chunk, acc, u_chunk)
            if stats:  # one call for a small layer, else per step
                acc.spikes_per_step[t0:t1] += (
                    counted
                    if counted is not None
                    else z_chunk.reshape(n, -1).sum(axis=1)
                    if z_chunk[0].size < 2**14
                    else [np.count_nonzero(z) for z in z_chunk]
                )
            name = f"{li + 1}"
            if spikes is not None:
                out = _to_nchw(z_chunk) if el.layer.kind == "conv" else z_chunk
                spikes["z" + name][t0:t1, b0 : b0 + B] = out
            if membranes is not None:
                out = _to_nchw(u_chunk) if el.layer.kind == "conv" else u_chunk
                membranes["u" + name][t0:t1, b0 : b0 + B] = out
            prev_out = z_chunk
        per_chunk = np.uint16 if n < 2**16 else np.int64  # n steps' spikes: the narrow sum is 2.5x faster
        counts += prev_out.view(np.uint8).sum(axis=0, dtype=per_chunk).reshape(B, -1)


def _update_current_range(acc: LayerStats, rng: tuple[int, int]) -> None:
    acc.current_min = min(acc.current_min, rng[0])
    acc.current_max = max(acc.current_max, rng[1])
