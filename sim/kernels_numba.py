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
  each compiled kernel, so its loop has no branch (the loop itself is :func:`_lif_rows`, inlined);
* :func:`int16_matmul`: the synaptic sums of a layer whose proven bound fits int16, by AVX2's
  ``vpmaddubsw`` (uint8 × int8 pairs added into int16 lanes);
* :func:`layer_kernel` (``layer_scan``): a layer on the int16 product over a chunk of steps in one
  call: per block, its input's rows (as :func:`im2col` or :func:`box_im2col`), the product and the
  LIF step, no return to Python between them;
* :func:`table_lookup` (a static first layer from its table), :func:`im2col`, :func:`box_im2col`,
  :func:`synops`.

Nothing is compiled when this module is imported: numba compiles a kernel on its first call, and
``cache=True`` keeps the machine code beside this file (``__pycache__``, or ``NUMBA_CACHE_DIR``), so
later processes load it (docs/engine.md states the cost, warm and cold). This module imports numba;
:mod:`qsnn.sim.layers` imports it only when the accelerator is on (:func:`qsnn.sim.layers.accel_wanted`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

from qsnn.kernels import INT16_MAX, int8_exact, pixel_words

#: Leak kinds as the kernels number them (``ChipProfile.leak``).
LEAKS = {"mul": 0, "shift": 1, "loihi": 2}

#: Slots of the ``stats`` vector :func:`lif_scan` updates in place.
CUR_MIN, CUR_MAX, WRAPS, SAT_HIGH, SAT_LOW, MEM_MIN, MEM_MAX = range(7)
INT64_MAX = 2**63 - 1  # (np.iinfo is slow to build at every call)


def _shift(op: str):
    def shift(typingctx, x, count):  # pragma: no cover - compile time
        if not (isinstance(x, types.Integer) and isinstance(count, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            value, by = args
            return getattr(builder, op)(value, context.cast(builder, by, signature.args[1], signature.args[0]))

        return x(x, count), codegen

    return shift


#: ``x >> k`` (arithmetic, floor) and ``x << k`` in x's own integer width, for 0 ≤ k < the width.
#: numba widens a narrower integer's shift to 64 bits, which AVX2 has no arithmetic shift for; these
#: keep an int32 state in eight lanes per vector.
sar = intrinsic(_shift("ashr"))
shl = intrinsic(_shift("shl"))
shr = intrinsic(_shift("lshr"))  # logical: an unsigned word's bits


def _item(typingctx, x, arr):  # pragma: no cover - compile time
    if not (isinstance(arr, types.Array) and isinstance(x, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return context.cast(builder, args[0], signature.args[0], signature.return_type)

    return arr.dtype(x, arr), codegen


#: ``x`` as an item of array ``arr`` (its integer type): arithmetic that stays in the array's width,
#: where numba would widen a narrower integer's to 64 bits.
as_item = intrinsic(_item)


def new_stats() -> np.ndarray:
    """A ``stats`` vector for :func:`lif_scan`: empty ranges (the membrane's starts at 0, as LayerStats')."""
    s = np.zeros(7, dtype=np.int64)
    s[CUR_MIN], s[CUR_MAX] = INT64_MAX, -INT64_MAX - 1
    return s


@njit(inline="always")
def _lif_rows(
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
    silent,
    cast,
    sign,
    kind,
    zero_reset,
    saturate,
    tracked,
    wrapped,
    record,
    static,
):  # pragma: no cover - compiled
    """The current tail and the LIF step over ``n`` steps (module docstring), in place; inlined into
    :func:`lif_kernel`'s and :func:`layer_kernel`'s kernels, whose constants ``cast`` (the state's
    integer type), ``sign`` (its width − 1) and the profile's choices (``kind`` … ``static``) it takes.

    ``acc`` (n, N): raw synaptic sums (integers) of n steps and N neurons (samples × positions ×
    channels, flat); ``bias``, ``theta`` (N,): b_c and θ_c of each neuron; ``u``, ``fired`` (N,):
    u_{t−1} and the reset mask (−1 where u_{t−1} > θ, else 0: the NumPy path's representation,
    so either path continues the other's state; it is [u > θ] of the u it comes with, so the
    loop derives r_t from u and writes the mask once at the end); ``z`` (n, N) uint8 receives
    z_t; ``u_out`` (n, N) receives u_t when recording; ``counts`` (n,) gains the spikes of each
    step; ``stats`` the ranges and event counts (slots above). The first ``silent`` steps get no
    synaptic input (acc = 0: before the synaptic delay), the bias still.

    Every operation stays in the state dtype (the shifts by :func:`sar`/:func:`shl`), each row
    is a contiguous view, and the shift counts are clamped, so LLVM vectorises the loop.
    """
    n = len(z)
    N = acc.shape[1]
    wrap_mask = cast((1 << mem_bits) - 1)
    round_mask = cast((1 << leak_bits) - 1)
    keep = cast((1 << leak_bits) - leak_const)  # loihi: u·(2^F − dv)
    m, d, F = cast(leak_const), cast(min(leak_const, sign)), cast(min(leak_bits, sign))
    # floor shifts of the sum, each by 0 where it does not apply (a no-op): e = −weight_exp
    # where that is negative, then shl(·, s) up or down. A right shift by the width or more
    # leaves the sign bits, as NumPy's (a left shift that far cannot occur: the layer's proof
    # fits its currents in the state dtype), hence the clamps
    e = cast(min(max(0, -exp_shift), sign))
    s_up = cast(min(max(0, shift), sign))
    s_down = cast(min(max(0, -shift), sign))
    h, h2, low, high, top = cast(half), cast(2 * half), cast(lo), cast(hi), cast(sign)
    # this call's current range, in the state dtype (merged into stats at the end)
    cmin, cmax = cast((1 << sign) - 1), cast(-(1 << sign))
    mmin, mmax = cast(stats[MEM_MIN]), cast(stats[MEM_MAX])
    wraps, shigh, slow = stats[WRAPS], stats[SAT_HIGH], stats[SAT_LOW]
    quiet = np.zeros(N if silent > 0 else 0, acc.dtype)  # the sums before the synaptic delay
    for t in range(n):
        # per-step event counts in 32-bit lanes (a step has far fewer than 2^31 neurons)
        spikes, n_high, n_low, n_wrap = cast(0), cast(0), cast(0), cast(0)
        row = quiet if t < silent else acc[0 if static else t]
        zr = z[t]
        ur = u_out[t if record else 0]
        for i in range(N):
            a = sar(shl(sar(cast(row[i]), e), s_up), s_down)
            if tracked:
                cmin = min(cmin, a)
                cmax = max(cmax, a)
            if wrapped:  # the current register: wraps once
                over = a > h
                under = a <= -h
                n_wrap = cast(n_wrap + cast(over) + cast(under))
                a = cast(a + (cast(under) - cast(over)) * h2)
            prev = u[i]
            th = theta[i]
            f = -cast(prev > th)  # r_t·(−1)
            if zero_reset:
                prev = cast(prev & ~f)  # (1 − r_t)·u_{t−1}
            if kind == 0:  # mul: (m·u) >> F, floor
                v = sar(cast(prev * m), F)
            elif kind == 1:  # shift: u − (u >> d), floor
                v = cast(prev - sar(prev, d))
            else:  # loihi: sign(x)·(|x| >> F), toward zero
                v = cast(prev * keep)
                v = cast(v + (sar(v, top) & round_mask))
                v = sar(v, F)
            v = cast(v + a + bias[i])
            if not zero_reset:
                v = cast(v - (f & th))  # r_t·θ
            n_high = cast(n_high + cast(v > high))
            n_low = cast(n_low + cast(v < low))
            if saturate:
                v = min(max(v, low), high)
            else:  # two's complement wrap
                v = cast(cast(cast(v - low) & wrap_mask) + low)
            mmin = min(mmin, v)
            mmax = max(mmax, v)
            u[i] = v
            spike = v > th
            zr[i] = spike
            spikes = cast(spikes + cast(spike))
            if record:
                ur[i] = v
        counts[t] += spikes
        shigh += n_high
        slow += n_low
        wraps += n_wrap
    for i in range(N):  # the reset mask of the last step, for whichever path runs next
        fired[i] = -cast(u[i] > theta[i])
    if tracked and n * N:
        stats[CUR_MIN], stats[CUR_MAX] = min(stats[CUR_MIN], cmin), max(stats[CUR_MAX], cmax)
    stats[WRAPS], stats[SAT_HIGH], stats[SAT_LOW] = wraps, shigh, slow
    stats[MEM_MIN], stats[MEM_MAX] = mmin, mmax


@lru_cache(maxsize=None)
def lif_kernel(
    leak: str,
    reset: str,
    overflow: str,
    record: bool,
    track: bool,
    register: bool,
    state: str = "int64",
    static: bool = False,
):
    """The compiled :func:`lif_scan` for a profile's leak, reset and overflow, whether membranes are
    recorded, the current's range tracked (``track``, or a current ``register``) and wrapped in a
    current register: these are constants of its loop, which then has no branch and vectorises.
    With ``static`` the sums are one row for every step (a static image's first layer, scanned where
    no table holds it). The arithmetic runs in the layer's ``state`` dtype (int32 where the layer's proof allows: eight
    lanes per AVX2 vector), as the NumPy path's. One kernel per combination, compiled on its first
    call and cached on disk (numba keys the cache on these values)."""
    kind = LEAKS[leak]
    zero_reset, saturate, tracked, wrapped = reset == "zero", overflow == "saturate", track or register, register
    cast = np.int32 if state == "int32" else np.int64
    sign = 31 if state == "int32" else 63

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
        silent,
    ):  # pragma: no cover - compiled
        """:func:`_lif_rows` with this kernel's constants."""
        _lif_rows(
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
            silent,
            cast,
            sign,
            kind,
            zero_reset,
            saturate,
            tracked,
            wrapped,
            record,
            static,
        )

    return lif_scan


@njit(nogil=True, cache=True)
def table_lookup(cur, offset, words, t0, z, counts, figures, out, with_stats):  # pragma: no cover - compiled
    """A static first layer by lookup (:class:`qsnn.sim.static_table.StaticTable`), in one pass:
    neuron (p, c) with current ``cur[p, c]`` is table entry ``cur[p, c] + offset[c]``; its z_t is bit
    t mod b of ``words[t // b, entry]`` (b the words' bits: 32 where T ≤ 32, else 64), for the steps
    t0 … t0 + n − 1 into ``z`` (n, P·C) uint8, and ``counts`` (n,) gains the spikes of each step. With
    ``with_stats``, ``out`` = [saturations above, below, membrane min, max] gains the entries'
    ``figures`` (entries, 4) over all T.

    Blocks of about 2,048 neurons: their entries and words are gathered once into buffers that stay
    in L1, then each step is a shift and a mask per neuron in the words' own width (:func:`shr`,
    :func:`as_item`: eight 32-bit lanes per AVX2 vector, 1.5–1.7× four 64-bit ones), vectorised."""
    P, C = cur.shape
    n = z.shape[0]
    bits = words.itemsize * 8
    rows = max(1, 2048 // C)
    idx = np.empty(rows * C, np.intp)
    w = np.empty(rows * C, words.dtype)
    one = as_item(1, w)
    per_step = np.zeros(n, np.uint64)
    high, low, lo, hi = out[0], out[1], out[2], out[3]
    for p0 in range(0, P, rows):
        p1 = min(P, p0 + rows)
        m = (p1 - p0) * C
        j = 0
        for p in range(p0, p1):
            for c in range(C):
                idx[j] = cur[p, c] + offset[c]
                j += 1
        if with_stats:
            for j in range(m):
                e = idx[j]
                high += figures[e, 0]
                low += figures[e, 1]
                lo = min(lo, figures[e, 2])
                hi = max(hi, figures[e, 3])
        base = p0 * C
        loaded = -1
        for t in range(n):
            step = t0 + t
            g = step // bits
            if g != loaded:
                for j in range(m):
                    w[j] = words[g, idx[j]]
                loaded = g
            b = as_item(step % bits, w)
            zr = z[t, base : base + m]  # a view indexed from 0: the loop vectorises
            spikes = as_item(0, w)  # m < 2^32 neurons per block
            for j in range(m):
                bit = as_item(shr(w[j], b) & one, w)
                zr[j] = np.uint8(bit)
                spikes = as_item(spikes + bit, w)
            per_step[t] += np.uint64(spikes)
    for t in range(n):
        counts[t] += np.int64(per_step[t])
    out[0], out[1], out[2], out[3] = high, low, lo, hi


@njit(inline="always")
def _copy_windows(img, stride, ho, wo, out, r, k, c):  # pragma: no cover - compiled
    """Rows ``out[r:]`` of the k×k windows at ``stride`` of ``img`` (H, W·c) words, ``ho`` × ``wo`` of
    them, each window row one run of k·c words; returns the next row. Inlined into the kernels that
    call it (:func:`im2col_kernel`, :func:`box_im2col_kernel`), where k and c are constants."""
    kc = k * c
    for oh in range(ho):
        for ow in range(wo):
            row = out[r]
            off = ow * stride * c
            for i in range(k):
                src = img[oh * stride + i, off : off + kc]
                dst = row[i * kc : i * kc + kc]
                for j in range(kc):
                    dst[j] = src[j]
            r += 1
    return r


@njit(inline="always")
def _padded_sample(x, b, pad, padded, c):  # pragma: no cover - compiled
    """Sample ``b`` of ``x`` (m, H, W·c) words with ``pad`` zeros on every side: ``x[b]`` itself where
    there is no padding, else its copy in the middle of ``padded`` (H + 2·pad, (W + 2·pad)·c), whose
    border stays zero. Inlined into the im2col kernels."""
    if pad == 0:
        return x[b]
    WC = x.shape[2]
    for h in range(x.shape[1]):
        src = x[b, h]
        dst = padded[h + pad, pad * c : pad * c + WC]
        for j in range(WC):
            dst[j] = src[j]
    return padded


@lru_cache(maxsize=None)
def im2col_kernel(k: int, c: int):
    """The compiled im2col for k×k windows of ``c`` words per pixel: ``k`` and ``c`` are constants of
    its loops, so a window row (k·c words, often a few) is copied without a loop's overhead; one
    kernel per shape, compiled on first use and cached on disk."""

    @njit(nogil=True, cache=True)
    def _im2col(x, stride, pad, ho, wo, padded, out):  # pragma: no cover - compiled
        """Rows ``out`` (m·ho·wo, k·k·c) of the k×k windows at ``stride`` of ``x`` (m, H, W·c) words
        with ``pad`` zeros on every side: each sample is first copied into the middle of ``padded``
        (H + 2·pad, (W + 2·pad)·c), whose border stays zero, so that every window row is one run of
        k·c words, with no test of the border."""
        r = 0
        for b in range(x.shape[0]):
            img = _padded_sample(x, b, pad, padded, c)
            r = _copy_windows(img, stride, ho, wo, out, r, k, c)

    return _im2col


def im2col(x: np.ndarray, window: int, stride: int, pad: int, out_hw: tuple[int, int]) -> np.ndarray:
    """:func:`qsnn.kernels.im2col` of ``x`` (m, H, W, C) uint8 with ``pad`` zeros on every side, in
    one compiled pass (each sample copied once into a zero-bordered buffer, not the whole batch padded
    first; a pixel's C bytes moved as 8-, 4- or 2-byte words where they
    allow): the same rows, (m·Ho·Wo, K·K·C)."""
    words = pixel_words(np.ascontiguousarray(x))
    m, h, _, c = words.shape
    ho, wo = out_hw
    out = np.empty((m * ho * wo, window * window * c), dtype=words.dtype)
    padded, _, _ = sample_buffers(words, pad)
    im2col_kernel(window, c)(words.reshape(m, h, -1), stride, pad, ho, wo, padded, out)
    return out.view(np.uint8)


def sample_buffers(words: np.ndarray, pad: int, p: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The per-sample buffers of the im2col kernels for ``words`` (m, H, W, c): the zero-bordered
    ``padded`` (H + 2·pad, (W + 2·pad)·c), and for p×p box sums (``p`` > 0) ``rows`` (H', (W' − p + 1)·c)
    and ``sums`` (H' − p + 1, (W' − p + 1)·c), H', W' the padded sizes; (1, 1) placeholders where a
    buffer is not used (no padding, no box sums)."""
    _, h, w, c = words.shape
    hp, wp = h + 2 * pad, w + 2 * pad
    padded = np.zeros((hp, wp * c) if pad else (1, 1), dtype=words.dtype)
    rows = np.empty((hp, (wp - p + 1) * c) if p else (1, 1), dtype=words.dtype)
    sums = np.empty((hp - p + 1, (wp - p + 1) * c) if p else (1, 1), dtype=words.dtype)
    return padded, rows, sums


@njit(inline="always")
def _box_sample(img, p, c, rows, sums):  # pragma: no cover - compiled
    """The p×p box sums S[h, w] = Σ_{i, j < p} img[h + i, w + j] of one (padded) sample ``img``
    (H', W'·c) words into ``sums`` (H' − p + 1, (W' − p + 1)·c), which it returns: p − 1 adds along W
    into ``rows`` (H', (W' − p + 1)·c), then p − 1 along H. Inlined into the kernels that call it."""
    H = img.shape[0]
    n = (img.shape[1] // c - p + 1) * c
    for y in range(H):
        src = img[y]
        dst = rows[y]
        for j in range(n):
            dst[j] = src[j]
        for q in range(1, p):
            part = src[q * c : q * c + n]
            for j in range(n):
                dst[j] += part[j]
    for y in range(H - p + 1):
        dst = sums[y]
        first = rows[y]
        for j in range(n):
            dst[j] = first[j]
        for a in range(1, p):
            part = rows[y + a]
            for j in range(n):
                dst[j] += part[j]
    return sums


@lru_cache(maxsize=None)
def box_im2col_kernel(k: int, c: int):
    """The compiled box sums and im2col for k×k windows of ``c`` words per pixel (constants of its
    loops, as :func:`im2col_kernel`)."""

    @njit(nogil=True, cache=True)
    def _box_im2col(x, p, stride, pad, ho, wo, padded, rows, sums, out):  # pragma: no cover - compiled
        """Rows ``out`` (m·ho·wo, k·k·c) of the k×k windows at ``stride`` of the p×p box sums
        S[h, w] = Σ_{i, j < p} x[h + i, w + j] of ``x`` (m, H, W·c) words with ``pad`` zeros on every
        side, c words per pixel: per sample (padded as in :func:`im2col_kernel`), p − 1 adds along W into
        ``rows`` (H', (W' − p + 1)·c), p − 1 along H into ``sums``, then each window row one copied run of
        k·c words (H', W' the padded sizes). A word holds several channels' bytes, which add lane by lane
        without a carry (the caller proves p²·max x ≤ 255, as for :func:`qsnn.kernels.box_sums`)."""
        r = 0
        for b in range(x.shape[0]):
            img = _padded_sample(x, b, pad, padded, c)
            r = _copy_windows(_box_sample(img, p, c, rows, sums), stride, ho, wo, out, r, k, c)

    return _box_im2col


def box_im2col(x: np.ndarray, p: int, window: int, stride: int, pad: int, out_hw: tuple[int, int]) -> np.ndarray:
    """``qsnn.kernels.im2col(qsnn.kernels.box_sums(x padded, p), window, stride, out_hw)`` of ``x``
    (m, H, W, C) uint8 in one compiled pass per sample (each sample padded in a zero-bordered buffer,
    as :func:`im2col`; the box sums stay in cache, no strided copy): the same rows, (m·Ho·Wo, K·K·C)."""
    words = pixel_words(np.ascontiguousarray(x))
    m, h, _, c = words.shape
    ho, wo = out_hw
    padded, rows, sums = sample_buffers(words, pad, p)
    out = np.empty((m * ho * wo, window * window * c), dtype=words.dtype)
    box_im2col_kernel(window, c)(words.reshape(m, h, -1), p, stride, pad, ho, wo, padded, rows, sums, out)
    return out.view(np.uint8)


def _pmadd_rows(rows: int, blocks: int = 1):
    """An LLVM intrinsic: ``rows`` × 16 int16 sums of uint8 rows × an int8 column block, by AVX2's
    ``vpmaddubsw`` (:func:`int16_matmul`).

    ``pmadd(x, x0, xstride, w, w0, pairs, out, o0, ostride)``: for r < ``rows`` and lane l < 16,
    ``out[o0 + r·ostride + l] = Σ_j x[x0 + r·xstride + 2j]·w[w0 + 32j + 2l] + x[… + 2j + 1]·w[w0 + 32j + 2l + 1]``
    over the ``pairs`` byte pairs j. Per pair, the two input bytes of a row are broadcast to the 16
    lanes and one ``vpmaddubsw`` multiplies them with the 32 weight bytes (unsigned × signed) and adds
    each lane's two products into an int16; the rows share the weight load; the sums stay in int16
    registers (``vpaddw``) and are stored once. Exact where no pair reaches 2^15 and no partial sum
    leaves int16 (the caller's proof, :func:`int16_exact`)."""

    def pmadd(typingctx, x, x0, xstride, w, w0, pairs, out, o0, ostride):  # pragma: no cover - compile time
        if not all(isinstance(a, types.Array) for a in (x, w, out)):
            return None

        def codegen(context, builder, signature, args):
            i8, i16, i32, i64 = (ir.IntType(b) for b in (8, 16, 32, 64))
            v16, v32 = ir.VectorType(i16, 16), ir.VectorType(i8, 32)
            xa, x0, xs, wa, w0, n, oa, o0, os_ = (
                context.cast(builder, v, t, types.intp) if isinstance(t, types.Integer) else v
                for v, t in zip(args, signature.args)
            )
            ptr = [
                context.make_array(signature.args[i])(context, builder, v).data for i, v in ((0, xa), (3, wa), (6, oa))
            ]
            xbase = builder.gep(builder.bitcast(ptr[0], i8.as_pointer()), [x0])
            wbase = builder.gep(builder.bitcast(ptr[1], i8.as_pointer()), [w0])
            obase = builder.gep(builder.bitcast(ptr[2], i16.as_pointer()), [o0])
            name = "llvm.x86.avx2.pmadd.ub.sw"
            fn = builder.module.globals.get(name) or ir.Function(builder.module, ir.FunctionType(v16, [v32, v32]), name)
            zero, one, two, lane32 = (
                ir.Constant(v16, None),
                ir.Constant(i64, 1),
                ir.Constant(i64, 2),
                ir.Constant(i64, 32),
            )
            start = builder.block
            loop, done = builder.append_basic_block("pairs"), builder.append_basic_block("store")
            builder.cbranch(builder.icmp_signed(">", n, ir.Constant(i64, 0)), loop, done)
            builder.position_at_end(loop)
            j = builder.phi(i64)
            accs = [builder.phi(v16) for _ in range(rows * blocks)]  # row r, block b: accs[r·blocks + b]
            block_bytes = builder.mul(n, lane32)
            wvs = [
                builder.load(
                    builder.bitcast(
                        builder.gep(
                            wbase, [builder.add(builder.mul(ir.Constant(i64, b), block_bytes), builder.mul(j, lane32))]
                        ),
                        v32.as_pointer(),
                    ),
                    align=1,
                )
                for b in range(blocks)
            ]
            sums = []
            for r in range(rows):
                at = builder.add(builder.mul(ir.Constant(i64, r), xs), builder.mul(j, two))
                pair = builder.load(builder.bitcast(builder.gep(xbase, [at]), i16.as_pointer()), align=1)
                vec = builder.insert_element(ir.Constant(v16, ir.Undefined), pair, ir.Constant(i32, 0))
                vec = builder.shuffle_vector(
                    vec, ir.Constant(v16, ir.Undefined), ir.Constant(ir.VectorType(i32, 16), [0] * 16)
                )
                vec = builder.bitcast(vec, v32)
                for b in range(blocks):
                    sums.append(builder.add(accs[r * blocks + b], builder.call(fn, [vec, wvs[b]])))
            nxt = builder.add(j, one)
            end = builder.block
            j.add_incoming(ir.Constant(i64, 0), start)
            j.add_incoming(nxt, end)
            for a, s in zip(accs, sums):
                a.add_incoming(zero, start)
                a.add_incoming(s, end)
            builder.cbranch(builder.icmp_signed("<", nxt, n), loop, done)
            builder.position_at_end(done)
            finals = [builder.phi(v16) for _ in sums]  # (a block's phi nodes come first)
            for final, s in zip(finals, sums):
                final.add_incoming(zero, start)
                final.add_incoming(s, end)
            for r in range(rows):  # row by row, each row's last block first (see _int16_matmul)
                for b in range(blocks - 1, -1, -1):
                    off = builder.add(builder.mul(ir.Constant(i64, r), os_), ir.Constant(i64, 16 * b))
                    at = builder.gep(obase, [off])
                    builder.store(finals[r * blocks + b], builder.bitcast(at, v16.as_pointer()), align=2)
            return context.get_dummy_value()

        return types.void(x, x0, xstride, w, w0, pairs, out, o0, ostride), codegen

    return intrinsic(pmadd)


#: Rows per :func:`_pmadd_rows` call in :func:`_int16_matmul`: 8 rows share each weight load where a
#: layer has one block of 16 outputs; with two or more, 6 rows × 2 blocks share each row's broadcast
#: too (measured on the engine's shapes: 1.1-1.35x 8 × 1 for 32-128 outputs).
PMADD_ROWS = 8
PAIR_ROWS = 6
_pmadd_block = _pmadd_rows(PMADD_ROWS)
_pmadd_pair = _pmadd_rows(PAIR_ROWS, 2)
_pmadd_pair_rows = _pmadd_rows(PAIR_ROWS)
_pmadd_row = _pmadd_rows(1)


@njit(nogil=True, cache=True)
def _int16_matmul(x, m, k, w, pairs, out, o):  # pragma: no cover - compiled
    """``out`` (m·o + 16,) int16: its first m·o entries = ``x`` (m·k,) uint8 rows · the packed columns ``w``
    (:class:`Int16Weights`), by :func:`_pmadd_rows` calls: :data:`PMADD_ROWS` rows × one block of 16
    outputs, or :data:`PAIR_ROWS` rows × two blocks (the last pair first, an odd block 0 last). A last
    block of fewer than 16 columns is stored whole too: its extra lanes land on the next rows' first
    columns (or the 16 spare entries), which are written after it (the rows go in order, and in each
    the last block first). With k odd the weights' last pair reads one byte past a row (its weight is
    0): the next row's first byte, or for the last row a zero-padded copy."""
    blocks = -(-o // 16)
    step = pairs * 32  # bytes of one block of packed weights
    padded = np.zeros(2 * pairs, np.uint8)
    safe = m - (k & 1)  # rows whose last pair stays inside x
    R = PAIR_ROWS if blocks >= 2 else PMADD_ROWS
    r = 0
    while r + R <= safe:
        if blocks >= 2:
            b = blocks - 2
            while b >= 0:
                _pmadd_pair(x, r * k, k, w, b * step, pairs, out, r * o + b * 16, o)
                b -= 2
            if b == -1:  # an odd block count: block 0 left
                _pmadd_pair_rows(x, r * k, k, w, 0, pairs, out, r * o, o)
        else:
            _pmadd_block(x, r * k, k, w, 0, pairs, out, r * o, o)
        r += R
    while r < m:
        src, s0 = x, r * k
        if r >= safe:
            for i in range(k):
                padded[i] = x[r * k + i]
            src, s0 = padded, 0
        for b in range(blocks - 1, -1, -1):
            _pmadd_row(src, s0, k, w, b * step, pairs, out, r * o + b * 16, o)
        r += 1


def int16_exact(in_max: int, weight_max: int, sum_bound: int) -> bool:
    """Whether :func:`int16_matmul` gives the exact sums of a layer: the operands of onnxruntime's kernel
    (:func:`qsnn.kernels.int8_exact`: uint8 inputs ≤ ``in_max``, int8 weights, no ``vpmaddubsw`` pair past
    int16), every partial sum within int16 too (``sum_bound`` = max_o Σ|W_o| · in_max ≤ 2^15 − 1: whatever
    order the sums are added in, none leaves the range, so int16's wrapping adds are exact), on a CPU
    with AVX2 (:func:`avx2`)."""
    return int8_exact(in_max, weight_max, sum_bound) and sum_bound <= INT16_MAX and avx2()


@lru_cache(maxsize=None)
def avx2() -> bool:
    """Whether the code numba generates here may use AVX2 (the host's CPU, or ``NUMBA_CPU_NAME`` /
    ``NUMBA_CPU_FEATURES`` where they are set)."""
    from llvmlite import binding
    from numba.core import config

    features = config.CPU_FEATURES
    if features is None:
        if config.CPU_NAME not in (None, "host"):
            return False  # a named target without its features: assume none
        features = binding.get_host_cpu_features().flatten()
    return "+avx2" in features.split(",")


class Int16Weights:
    """A layer's int8 weight matrix ``w`` (K, O) packed for :func:`int16_matmul`: per block of 16
    output columns and per pair j of input rows, 32 bytes ``w[2j, o], w[2j + 1, o]`` for the block's
    16 columns o (zeros past K and O)."""

    def __init__(self, w: np.ndarray) -> None:
        w = np.asarray(w)
        self.k, self.o = w.shape
        self.pairs = -(-self.k // 2)
        blocks = -(-self.o // 16)
        full = np.zeros((2 * self.pairs, 16 * blocks), np.int8)
        full[: self.k, : self.o] = w
        packed = full.reshape(self.pairs, 2, blocks, 16).transpose(2, 0, 3, 1)  # block, pair, lane, byte
        self.packed = np.ascontiguousarray(packed).reshape(-1)


def int16_matmul(x: np.ndarray, weights: Int16Weights) -> np.ndarray:
    """``x`` (M, K) uint8 · ``weights`` → (M, O) int16, exact under :func:`int16_exact`: the synaptic sums
    of a layer whose bound fits int16, in one compiled GIL-free call (:func:`_int16_matmul`)."""
    m, k = x.shape
    if k != weights.k:
        raise ValueError(f"int16_matmul takes (M, {weights.k}) rows, got {x.shape}")
    out = np.empty(m * weights.o + 16, np.int16)  # 16 spare entries: a last block's whole store
    if m:
        flat = np.ascontiguousarray(x).reshape(-1)
        _int16_matmul(flat, m, k, weights.packed, weights.pairs, out, weights.o)
    return out[: m * weights.o].reshape(m, weights.o)


#: How a layer's input becomes the rows of its product in :func:`layer_kernel`: a dense layer's input
#: rows as they are, a conv layer's windows (:func:`im2col`), or the windows of its box sums (:func:`box_im2col`).
GEOMETRIES = {"dense": 0, "conv": 1, "box": 2}


@lru_cache(maxsize=None)
def layer_kernel(
    leak: str,
    reset: str,
    overflow: str,
    record: bool,
    track: bool,
    register: bool,
    state: str,
    geometry: str,
    k: int = 0,
    c: int = 0,
):
    """The compiled ``layer_scan``: a layer whose sums run in :func:`int16_matmul`, over a chunk of time
    steps in one GIL-free call. Per block of whole steps (``block`` input rows): the block's rows of the
    product (its input rows for a ``dense`` layer; for ``conv``, the k×k windows of ``c`` words per
    pixel of each zero-padded sample, as :func:`im2col`; for ``box``, the windows of its p×p box sums,
    as :func:`box_im2col`), the int16 product (:func:`_int16_matmul`) and the current tail and LIF step
    on its sums (:func:`_lif_rows`), while they are in cache. The same integers as those kernels called
    one after the other (:meth:`qsnn.sim.layers._Layer.fused_scan`), without a return to Python (and the
    GIL) between them: two threads' pieces then overlap (docs/engine.md). The profile's choices,
    the geometry, k and c are constants, as in :func:`lif_kernel` and :func:`im2col_kernel`."""
    kind = LEAKS[leak]
    zero_reset, saturate, tracked, wrapped = reset == "zero", overflow == "saturate", track or register, register
    cast = np.int32 if state == "int32" else np.int64
    sign = 31 if state == "int32" else 63
    mode = GEOMETRIES[geometry]

    @njit(nogil=True, cache=True)
    def layer_scan(
        x,
        block,
        per_step,
        p,
        stride,
        pad,
        ho,
        wo,
        padded,
        box_rows,
        box_sums,
        cols,
        cols_flat,
        w,
        pairs,
        o,
        sums,
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
        """``x``: the chunk's input rows, steps × ``per_step`` samples (dense: (n, K) uint8; conv,
        box: (n, H, W·c) words); ``block``: input rows per block (whole steps); ``padded``,
        ``box_rows``, ``box_sums``, ``cols`` (its bytes: ``cols_flat``) and ``sums`` (int16, 16
        spare entries) the blocks' buffers; ``w``, ``pairs``, ``o``: :class:`Int16Weights`; the rest
        as :func:`_lif_rows` (``z``, ``u_out``, ``counts`` over the chunk's steps)."""
        n = x.shape[0]
        t = 0
        for s0 in range(0, n, block):
            s1 = min(n, s0 + block)
            steps = (s1 - s0) // per_step
            if mode == 0:
                K = x.shape[1]
                m = s1 - s0
                _int16_matmul(x.reshape(-1)[s0 * K : s1 * K], m, K, w, pairs, sums, o)
            else:
                m = 0
                for b in range(s0, s1):
                    img = _padded_sample(x, b, pad, padded, c)
                    if mode == 2:
                        img = _box_sample(img, p, c, box_rows, box_sums)
                    m = _copy_windows(img, stride, ho, wo, cols, m, k, c)
                K = cols_flat.size // cols.shape[0]
                _int16_matmul(cols_flat, m, K, w, pairs, sums, o)
            N = m * o // max(1, steps)
            _lif_rows(
                sums[: steps * N].reshape((steps, N)),
                exp_shift,
                shift,
                half,
                bias,
                theta,
                u,
                fired,
                z[t : t + steps],
                u_out[t : t + steps] if record else u_out[0:1],
                leak_const,
                leak_bits,
                lo,
                hi,
                mem_bits,
                stats,
                counts[t : t + steps],
                0,
                cast,
                sign,
                kind,
                zero_reset,
                saturate,
                tracked,
                wrapped,
                record,
                False,
            )
            t += steps

    return layer_scan


#: :func:`synops`' per-unit counters and their largest values (np.iinfo is slow to build at every call).
_COUNTERS = ((np.uint8, 2**8 - 1), (np.uint16, 2**16 - 1), (np.uint32, 2**32 - 1))


@njit(nogil=True, cache=True)
def _synops(x, fan, nonzero, inner, per):  # pragma: no cover - compiled
    """Σ_units (Σ_rows x) · fan of ``x`` (rows, units) (or the count of its nonzero entries per unit):
    per-unit sums in ``inner``'s narrow integers over blocks of ``per`` rows (whose sums cannot
    overflow them: 32 uint8 lanes per AVX2 vector for spikes), added into int64 after each block,
    then their dot with ``fan``."""
    rows, units = x.shape
    total = np.zeros(units, np.int64)
    for r0 in range(0, rows, per):
        inner[:] = 0
        for r in range(r0, min(rows, r0 + per)):
            xr = x[r]
            if nonzero:
                for i in range(units):
                    inner[i] += xr[i] != 0
            else:
                for i in range(units):
                    inner[i] += xr[i]
        for i in range(units):
            total[i] += inner[i]
    out = 0
    for i in range(units):
        out += total[i] * fan[i]
    return out


def synops(x: np.ndarray, fan: np.ndarray, nonzero: bool = False, top: int | None = None) -> int:
    """Σ_units (Σ_rows x) · ``fan`` of ``x`` (rows, units) unsigned integers (or bool), or with
    ``nonzero`` the count of nonzero entries per unit: the synaptic operations of a layer's input
    (:meth:`qsnn.sim.layers._Layer.synops`), exact, in one GIL-free pass (:func:`_synops`): per-unit
    sums in the narrowest of uint8, uint16, uint32 that 128 rows of ``x``'s largest value fit, over
    as many rows as fit; ``top`` bounds x where it is known (else its dtype's maximum)."""
    if x.dtype == np.bool_:
        x, top = x.view(np.uint8), 1
    if nonzero:
        top = 1  # a count of the nonzero entries
    elif top is None:
        top = (1 << (8 * x.dtype.itemsize)) - 1
    top = int(top)
    inner, most = next((t, m) for t, m in _COUNTERS if m // top >= 128 or t is np.uint32)  # blocks of 128+ rows
    return int(_synops(np.ascontiguousarray(x), fan, nonzero, np.empty(x.shape[1], inner), max(1, most // top)))
