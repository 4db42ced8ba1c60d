"""The trained model over T steps, layer by layer, with its synaptic sums in exact integers (no torch).

qsnn-sim's float reference: what the float QONNX export predicts, computed from the graph's parsed
layers (:func:`.float_graph.read_float_graph`: the same weights, pooling, BatchNorm constants, β and
θ that the graph holds) instead of running the one-step graph T times in onnxruntime
(:func:`.runtime.run_onnx_steps`, which stays available as ``--float-engine onnxruntime``). Per
layer and step, in float32 as the graph computes it::

    I_t = BN(s · (Σ_i x_i q_i) / p² + b)   synapse (codes q, scale s, bias b) → p×p average pooling → BatchNorm
    r_t = [u_{t−1} > θ]
    u_t = β·u_{t−1} + I_t − r_t·θ          subtract reset;   zero reset: β·((1 − r_t)·u_{t−1}) + I_t
    z_t = [u_t > θ]

What differs from the graph is only how the synaptic sum is formed. onnxruntime's ``Conv`` (and
PyTorch's, in training) adds the F float32 products ``x_i · fl(s·q_i)`` in an order of its kernel's
choosing, one rounding per addition, and the order changes with the CPU (AVX2, AVX-512). Here the
inputs of every spiking layer (spikes 0/1) and of an event or otherwise integer-valued input layer
are integers, so Σ x_i q_i is formed exactly with the integer kernel of :mod:`qsnn.kernels` (pooling
folded into one stride-p kernel, as the integer engine does), and the current is ``s·Σ/p²`` rounded
once to float32: the quantized model's real current (Brevitas' ``s·q`` weights) to within one
rounding, the same on every CPU. A non-integer input (pixels/255) is summed in float64 (products
exact, sums rounded at 2^−53) and rounded once; an fp32 export's real weights likewise. BatchNorm,
leak, reset and threshold are the graph's float32 (or float64, between its ``Cast`` nodes)
operations in its order, elementwise, so they round exactly as onnxruntime's do.

Any stack of layers: a convolution's stride s and zero padding (the input padded with code 0),
its pooling folded into one stride-s·p kernel, a synaptic bias b added to the exact sum as
fl32(c·Σ + b) before BatchNorm (:class:`_Layer`); the box-sum kernel serves stride-1 layers.

So the spikes equal the graph's wherever the graph's own sums are exact (power-of-two scales on
integer inputs and no bias: ``array_equal``, tested on several specs in tests/test_arch_export.py), and otherwise agree with onnxruntime and with PyTorch as two
float evaluations of one network do (``tests/float_compare.py``: a spike differs only where a
membrane lies within rounding of θ). Layers run one after the other over all T (a feed-forward
network: layer l at step t needs only layer l−1 up to step t), so each layer's sums for a chunk of
steps are one matrix product, and batch pieces run on several threads (NumPy and onnxruntime
release the GIL).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from qsnn.data import model_input
from qsnn.errors import ExportError
from qsnn.kernels import (
    OrtIntMatmul,
    box_kernel,
    box_sums,
    conv_columns,
    default_threads,
    im2col,
    int8_exact,
    ort_available,
    weight_matrix,
)

from .float_graph import FloatGraph, FloatLayer, read_float_graph
from .runtime import prepare_input

#: Bytes of im2col rows per matrix product (the rows of a chunk of steps; keeps them in cache).
CHUNK_BYTES = 4 << 20
#: Samples per batch piece (one thread at a time runs a piece through every layer and step).
PIECE = 128
#: Bytes of membrane and current a block of the LIF update keeps in cache.
SCAN_BYTES = 1 << 20
FLOAT32_EXACT = 2**24
FLOAT64_EXACT = 2**53


def fold_pool_strided(weight: np.ndarray, pool: int, stride: int, dtype: Any = np.int64) -> np.ndarray:
    """The kernel of ``sumpool_p(W ⊛_s x)`` as one convolution of stride s·p:
    ``W'[o, c, a·s + i, b·s + j] += W[o, c, i, j]`` for a, b < p, of side k + (p − 1)·s (for s = 1
    :func:`qsnn.network.fold_pool`). Its output has the pooled size ⌊(⌊(H + 2·pad − k)/s⌋ + 1)/p⌋."""
    w = np.asarray(weight, dtype=dtype)
    if pool == 1:
        return w
    o, c, k, _ = w.shape
    side = k + (pool - 1) * stride
    out = np.zeros((o, c, side, side), dtype=dtype)
    for a in range(pool):
        for b in range(pool):
            out[:, :, a * stride : a * stride + k, b * stride : b * stride + k] += w
    return out


class _Layer:
    """One layer of the float graph in channels-last layout: its sum kernels, scale, bias, BatchNorm and LIF constants.

    Fast paths (exact integer sums of spikes or input codes, box sums for a pooled layer) hold for any
    layer; a convolution's stride s and pooling p are one stride-s·p convolution with the pool-folded
    kernel (:func:`fold_pool_strided`), its zero padding pads the input (code 0 is the value 0), and a
    synaptic bias b enters the current as fl32(c·Σ + b) before BatchNorm. The box-sum kernel applies to
    stride-1 layers only.
    """

    def __init__(self, src: FloatLayer, in_shape: tuple[int, ...], out_shape: tuple[int, ...], where: str) -> None:
        self.name, self.kind = src.name, src.kind
        self.in_shape, self.out_shape = tuple(in_shape), tuple(out_shape)  # NCHW / (n,)
        pool = src.pool
        quantized = src.q is not None
        w = src.q if quantized else src.w_real
        dtype = np.int64 if quantized else np.float64
        conv_stride = int(getattr(src, "stride", 1)) if src.kind == "conv" else 1
        self.padding = int(getattr(src, "padding", 0)) if src.kind == "conv" else 0
        if conv_stride == 1:
            mat = weight_matrix(w, src.kind, pool, in_shape, dtype)
        else:
            mat = conv_columns(fold_pool_strided(w, pool, conv_stride, dtype))
        if src.kind == "conv":
            # the pool-folded kernel's side and stride
            self.window, self.stride = w.shape[2] + (pool - 1) * conv_stride, pool * conv_stride
            self.out_nhwc = (out_shape[1], out_shape[2], out_shape[0])
        else:
            self.window = self.stride = 1
            self.out_nhwc = tuple(out_shape)
        self.cols = mat.shape[1]
        area = pool * pool
        # c = s/p² per output channel (codes) or 1/p² (real weights): the current is fl32(c · Σ)
        scale = np.asarray(src.w_scale, dtype=np.float64) if quantized else np.ones(mat.shape[0])
        self.c64 = scale / area
        c32 = self.c64.astype(np.float32)
        self.c32 = c32 if np.array_equal(c32.astype(np.float64), self.c64) else None
        self.real = np.ascontiguousarray(mat.T.astype(np.float64))  # (cols, O), for non-integer inputs
        self.quantized = quantized
        self.abs_rows = np.abs(mat).sum(axis=1).max() if mat.size else 0
        self.weight_max = np.abs(mat).max(initial=0)
        self._int: dict[int, tuple[Callable[[np.ndarray], np.ndarray], int]] = {}
        self._codes: dict[tuple[int, float], tuple[np.ndarray, int]] = {}
        #: which kernel sums uint8 inputs up to 1 (spikes) and up to 255 (codes, in bytes)
        self.sum_kernels: dict[int, str] = {}
        self._mat = mat
        # the integer kernels, built now (threads share the layer): 0/1 inputs into a pooled conv layer
        # go through its own k×k kernel on their p×p box sums where that is exact (qsnn.kernels.box_kernel),
        # other 0/1 inputs through the folded kernel; input codes through the folded kernel, in bytes
        self.box: tuple[OrtIntMatmul, int, int] | None = None
        box = box_kernel(src.q, pool, 1) if quantized and src.kind == "conv" and conv_stride == 1 else None
        if box is not None:
            self.box = (box[0], src.q.shape[2], box[1])
            self.sum_kernels[1] = f"onnxruntime MatMulInteger on {pool}x{pool} box sums"
        elif quantized:
            self.int_sums(1)
        if quantized:
            self.int_sums(255)
        # BatchNorm as the graph computes it, per channel (last axis)
        self.bn_arith = src.bn_arith
        self.g64, self.h64 = np.asarray(src.bn_gain, np.float64), np.asarray(src.bn_offset, np.float64)
        self.g32, self.h32 = self.g64.astype(np.float32), self.h64.astype(np.float32)
        self.cg64 = self.c64 * self.g64
        bias = getattr(src, "bias", None)
        self.bias64 = None if bias is None else np.asarray(bias, np.float64).reshape(-1)
        if self.bn_arith == "float32" and not (
            np.array_equal(self.g32, self.g64) and np.array_equal(self.h32, self.h64)
        ):
            raise ExportError(
                f"{where}: layer {self.name}: float32 BatchNorm constants that are not float32 values; "
                "the file is damaged or edited: export the checkpoint again"
            )
        self.beta, self.theta, self.reset = np.float32(src.beta), np.float32(src.theta), src.reset

    # -- synaptic sums --------------------------------------------------------------------------
    def int_sums(self, in_max: int) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
        """(kernel, bound) for uint8 inputs in [0, in_max]: the first kernel exact under the bound."""
        if not 0 <= in_max <= 255:
            raise ValueError(f"int_sums takes uint8 inputs, in_max {in_max}")
        key = 1 if in_max <= 1 else 255
        if key not in self._int:
            bound = int(self.abs_rows) * key
            if key <= 255 and ort_available() and int8_exact(key, int(self.weight_max), bound):
                mm = OrtIntMatmul(self._mat.T)
                fn = lambda cols: mm(cols if cols.dtype == np.uint8 else cols.astype(np.uint8))  # noqa: E731
                self.sum_kernels[key] = "onnxruntime MatMulInteger"
            else:
                dt = np.float32 if bound < FLOAT32_EXACT else (np.float64 if bound < FLOAT64_EXACT else np.int64)
                kernel = np.ascontiguousarray(self._mat.T.astype(dt))
                fn = lambda cols, k=kernel, dt=dt: cols.astype(dt) @ k  # noqa: E731
                self.sum_kernels[key] = f"numpy {np.dtype(dt).name}"
            self._int[key] = (fn, bound)
        return self._int[key]

    def currents(self, x: np.ndarray, unit: float = 1.0) -> np.ndarray:
        """I = BN(c · Σ_i v(x_i) q_i) for inputs ``x`` (m, H, W, C) or (m, n) → float32.

        ``x``: bool spikes (v = 0, 1); integer codes, each worth ``v(p) = fl32(p · fl32(unit))`` in
        the model (uint8 pixels: p/255 as the float32 the model is fed, :func:`qsnn.data.model_input`);
        or real values (a float dtype; integer-valued ones count as codes of unit 1).
        """
        return self._apply(*self.sums_plan(x, unit))

    def sums(self, x: np.ndarray, unit: float = 1.0) -> tuple[np.ndarray, float]:
        """(Σ, w): the synaptic sums of ``x`` (m, Ho, Wo, O) / (m, O), exact integers where the inputs are
        codes or spikes (real inputs: float64), and w with ``c · w · Σ`` the real current before BatchNorm."""
        xs, fn, _, w, window = self.sums_plan(x, unit)
        return fn(self._cols(xs, window)).reshape(len(xs), *self.out_nhwc), w

    def _cols(self, xs: np.ndarray, window: int) -> np.ndarray:
        if self.kind == "dense":
            return xs.reshape(len(xs), -1)
        return im2col(xs, window, self.stride, self.out_nhwc[:2])

    def sums_plan(
        self, x: np.ndarray, unit: float
    ) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray], int, float, int]:
        """(input as the kernel takes it, kernel on im2col rows, bound of |Σ|, w, window): how to sum ``x``
        (see :meth:`sums`)."""
        if self.padding:  # zeros around H and W: code 0, spike 0, value 0
            pad = self.padding
            x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        if x.dtype == np.bool_:
            x, in_max = x.view(np.uint8), 1
        else:
            if not np.issubdtype(x.dtype, np.integer):
                counts = (
                    x.size
                    and np.isfinite(x).all()
                    and x.min() >= 0
                    and x.max() < 2**31
                    and np.array_equal(x, np.floor(x))
                )
                if not counts:  # real values: float64 products, one rounding
                    return x, lambda cols: cols.astype(np.float64) @ self.real, FLOAT64_EXACT, 1.0, self.window
                x, unit = x.astype(np.int64), 1.0
            in_max = int(x.max(initial=0))
        if not self.quantized:  # an fp32 export's real weights
            values = model_input(np.arange(in_max + 1), unit)
            return values[x], lambda cols: cols.astype(np.float64) @ self.real, FLOAT64_EXACT, 1.0, self.window
        ones = unit == 1.0 or in_max == 0  # each code is worth itself (or all are 0)
        if ones and in_max <= 1 and self.box is not None:  # spikes: box sums, the layer's own kernel
            mm, side, bound = self.box
            return box_sums(x if x.dtype == np.uint8 else x.astype(np.uint8), self.stride), mm, bound, 1.0, side
        if ones and in_max <= 255:  # one integer product
            fn, bound = self.int_sums(in_max)
            return (x if x.dtype == np.uint8 else x.astype(np.uint8)), fn, bound, 1.0, self.window
        # the codes' float32 values as integers V_p·2^e, summed exactly through the integer kernel
        table, e = self._code_values(in_max, unit)
        limb, _ = self.int_sums(255)
        if in_max <= 255:
            # V_p = p·R + D_p with R = V_1: Σ V q = R·Σ p q + Σ D q, two uint8 products (D offset to ≥ 0;
            # for pixels p·fl32(1/255) the residual D is the float32 rounding of each product, |D| ≤ 64)
            R = int(table[1])
            resid = table - np.arange(in_max + 1, dtype=np.int64) * R
            off = -int(resid.min())
            if int(resid.max()) + off <= 255:
                dtab = (resid + off).astype(np.uint8)
                offset = off * self._mat.sum(axis=1)  # Σ over the window of off·W', per output

                def linear_sums(cols: np.ndarray) -> np.ndarray:
                    total = limb(cols).astype(np.int64)
                    total *= R
                    total += limb(dtab[cols]).astype(np.int64)
                    total -= offset
                    return total

                return (
                    (x if x.dtype == np.uint8 else x.astype(np.uint8)),
                    linear_sums,
                    FLOAT64_EXACT,
                    2.0**e,
                    self.window,
                )
        nbytes = max(1, (int(table.max()).bit_length() + 7) // 8)

        def byte_sums(cols: np.ndarray) -> np.ndarray:  # V in byte limbs: Σ_k 2^{8k} Σ limb_k q
            total = None
            for k in range(nbytes):
                part = limb(((cols >> (8 * k)) & 255).astype(np.uint8)).astype(np.int64)
                total = part if total is None else total + (part << (8 * k))
            return total

        return table[x], byte_sums, FLOAT64_EXACT, 2.0**e, self.window

    def _code_values(self, in_max: int, unit: float) -> tuple[np.ndarray, int]:
        """(V, e): the model's value of each code p ≤ in_max, fl32(p · fl32(unit)) = V[p] · 2^e, V int64."""
        key = (in_max, unit)
        if key not in self._codes:
            values = model_input(np.arange(in_max + 1), unit)
            nonzero = values[values != 0].astype(np.float64)
            e = int(np.frexp(nonzero)[1].min()) - 24 if nonzero.size else 0  # the finest ulp among them
            table = np.ldexp(values.astype(np.float64), -e)
            if not np.array_equal(table, np.floor(table)) or np.abs(table).max(initial=0) >= 2**52:
                raise ExportError(
                    f"layer {self.name}: input codes p·{unit} whose float32 values are not multiples of 2^{e}"
                )
            self._codes[key] = (table.astype(np.int64), e)
        return self._codes[key]

    def _apply(
        self, x: np.ndarray, fn: Callable[[np.ndarray], np.ndarray], bound: int, unit: float, window: int
    ) -> np.ndarray:
        """``_current(fn(im2col(x)))`` in row chunks of about :data:`CHUNK_BYTES`."""
        m = x.shape[0]
        per_sample = (
            (1 if self.kind == "dense" else self.out_nhwc[0] * self.out_nhwc[1])
            * window
            * window
            * (x.shape[-1] if self.kind == "conv" else self.cols)
        )
        step = max(1, CHUNK_BYTES // max(1, per_sample * x.dtype.itemsize))
        parts = [self._current(fn(self._cols(x[s0 : s0 + step], window)), bound, unit) for s0 in range(0, m, step)]
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)).reshape(m, *self.out_nhwc)

    def _current(self, sums: np.ndarray, bound: int, unit: float = 1.0) -> np.ndarray:
        """I = BN(c · unit · Σ) in float32 from the sums Σ (``unit``: the real value of one input code).

        Without BatchNorm: fl32(c·Σ), one float32 multiply where Σ and c are float32 values. With the
        exporter's float32 BatchNorm (``Mul, Add``): its two float32 operations after that. With the
        float64 form (``Cast, Mul, Add, Cast``) or the standard op: ``Σ·(c·g) + h`` in float64,
        rounded to float32 (where c·Σ is a float32 value, as for power-of-two scales, the graph's
        own result; otherwise the real value to within float64 rounding).
        """
        if self.bias64 is not None:  # the synapse's output with its bias, once rounded
            cur = (sums.astype(np.float64) * (self.c64 * unit) + self.bias64).astype(np.float32)
            if self.bn_arith == "none":
                return cur
            if self.bn_arith == "float32":
                cur *= self.g32
                cur += self.h32
                return cur
            out = np.empty(cur.shape, np.float32)
            np.add(np.multiply(cur, self.g64, dtype=np.float64), self.h64, out=out, casting="unsafe")
            return out
        small = unit == 1.0 and self.c32 is not None and bound < FLOAT32_EXACT and sums.dtype != np.float64
        if self.bn_arith in ("none", "float32"):
            if small:
                cur = np.multiply(sums, self.c32, dtype=np.float32)
            else:
                cur = (sums.astype(np.float64) * (self.c64 * unit)).astype(np.float32)
            if self.bn_arith == "float32":  # the graph's Mul, Add in float32
                cur *= self.g32
                cur += self.h32
            return cur
        wide = np.multiply(sums, self.cg64 if unit == 1.0 else self.cg64 * unit, dtype=np.float64)
        cur = np.empty(wide.shape, np.float32)
        np.add(wide, self.h64, out=cur, casting="unsafe")  # the float64 sum, rounded once to float32 on store
        return cur

    # -- the LIF over a chunk of steps ---------------------------------------------------------
    def scan(
        self, cur: np.ndarray, static: bool, u: np.ndarray, r: np.ndarray, z_out: np.ndarray, u_out: np.ndarray | None
    ) -> None:
        """Steps ``t = 0 .. len(z_out)−1`` with currents ``cur[t]`` (or ``cur`` itself if ``static``).

        ``u`` is u_{t−1} (float32, updated in place), ``r`` the reset r_t = [u_{t−1} > θ] = z_{t−1}
        (bool); on return ``r`` holds the last step's spikes. Writes z_t into ``z_out[t]`` and, if
        given, u_t into ``u_out[t]``. Runs in blocks of samples whose state stays in L2.
        """
        n = len(u)
        block = max(1, SCAN_BYTES // max(1, u[0].nbytes * 2))
        for b0 in range(0, n, block):
            b1 = min(n, b0 + block)
            self._scan_block(
                cur[b0:b1] if static else cur[:, b0:b1],
                static,
                u[b0:b1],
                r[b0:b1],
                z_out[:, b0:b1],
                None if u_out is None else u_out[:, b0:b1],
            )

    def _scan_block(
        self, cur: np.ndarray, static: bool, u: np.ndarray, r: np.ndarray, z_out: np.ndarray, u_out: np.ndarray | None
    ) -> None:
        beta, theta = self.beta, self.theta
        one = np.float32(1)
        reset = r
        term = np.empty_like(u)
        for t in range(len(z_out)):
            if self.reset == "zero":  # (1 − r_t)·u_{t−1}, the graph's Sub, Mul
                np.subtract(one, reset, out=term, dtype=np.float32)
                u *= term
            np.multiply(u, beta, out=u)
            u += cur if static else cur[t]
            if self.reset == "subtract":  # − r_t·θ, the graph's Mul, Sub
                np.multiply(reset, theta, out=term, dtype=np.float32)
                u -= term
            np.greater(u, theta, out=z_out[t])  # z_t = [u_t > θ] = r_{t+1}
            reset = z_out[t]
            if u_out is not None:
                u_out[t] = u
        if len(z_out):
            r[...] = reset


class FloatEvaluator:
    """The float export of ``source`` (a path, ``ModelProto`` or ``ModelWrapper``), ready to run.

    ``evaluator(x_float, batch_size)`` returns ``{"zL": (T, N, classes)}`` (L layers; the ``run_float``
    callable of :func:`qsnn.sim.validate.float_model_counts`); :meth:`run` also records every layer.
    """

    def __init__(self, source: Any, threads: int | None = None) -> None:
        self.graph: FloatGraph = read_float_graph(source)
        g = self.graph
        self.where = g.where
        self.threads = default_threads() if threads is None else max(1, int(threads))
        shapes = [tuple(g.input_shape), *[tuple(s) for s in g.layer_shapes]]
        self.layers = [_Layer(layer, shapes[i], shapes[i + 1], g.where) for i, layer in enumerate(g.layers)]

    def __call__(self, x: np.ndarray, batch_size: int | None = None) -> dict[str, np.ndarray]:
        return self.run(x, batch_size=batch_size)

    def run(
        self, x: Any, num_steps: int | None = None, record: bool = False, batch_size: int | None = None
    ) -> dict[str, np.ndarray]:
        """The model over T steps on real-valued inputs, as :func:`.runtime.run_onnx_steps` returns it.

        ``x``: static frames (N, C, H, W) repeated every step or event frames (N, T, C, H, W), either
        as the integer codes the chip gets (uint8 pixels, event counts: an integer dtype; the model
        sees ``code · input_scale``) or as the real values the model sees (a float dtype: pixels/255,
        counts). Codes are the exact form: the first layer's sums are then integers too. Returns ``{"zL": (T, N, classes)}``
        (``z3`` for the paper's network) float32 and, with ``record``, ``z1..z(L−1)`` and ``u1..uL``
        (T, N, C, H, W) / (T, N, n) float32. ``batch_size`` is accepted for the runner interface; the
        batch is split into pieces of :data:`PIECE` samples over the threads regardless.
        """
        x, static, T = prepare_input(self.graph.metadata, x, num_steps)
        unit = 1.0
        if np.issubdtype(x.dtype, np.integer):
            g = self.graph
            if x.size and (x.min() < 0 or x.max() > g.input_max):
                raise ExportError(
                    f"{self.where}: integer inputs must lie in [0, {g.input_max}] (the model's "
                    f"{g.encoding} encoding), got [{x.min()}, {x.max()}]"
                )
            unit = float(g.input_scale)
        n = len(x)
        pieces = [(lo, min(lo + PIECE, n)) for lo in range(0, n, PIECE)] or [(0, 0)]
        if self.threads > 1 and len(pieces) > 1:
            with ThreadPoolExecutor(min(self.threads, len(pieces))) as pool:
                parts = list(pool.map(lambda p: self._piece(x[p[0] : p[1]], static, T, record, unit), pieces))
        else:
            parts = [self._piece(x[a:b], static, T, record, unit) for a, b in pieces]
        return {k: np.concatenate([p[k] for p in parts], axis=1) for k in parts[0]}

    def _piece(self, xb: np.ndarray, static: bool, T: int, record: bool, unit: float) -> dict[str, np.ndarray]:
        n = len(xb)
        delay = self.graph.synaptic_delay
        out: dict[str, np.ndarray] = {}
        # the input as the first layer sees it, channels last: (n, H, W, C) static or (T, n, H, W, C)
        src = np.ascontiguousarray(np.moveaxis(np.asarray(xb), -3, -1))
        if not static:
            src = np.ascontiguousarray(np.moveaxis(src, 0, 1)[:T])  # (T, n, H, W, C)
        for i, layer in enumerate(self.layers):
            shape = (n, *layer.out_nhwc)
            u = np.zeros(shape, np.float32)
            r = np.zeros(shape, np.bool_)
            z = np.zeros((T, *shape), np.bool_)
            u_rec = np.zeros((T, *shape), np.float32) if record else None
            if i == 0 and static:
                cur = layer.currents(src, unit)
                if delay:  # the delay line holds zeros at t = 0
                    zero = np.broadcast_to(layer.currents(np.zeros_like(src[:1]), unit), shape)
                    layer.scan(zero, True, u, r, z[:1], None if u_rec is None else u_rec[:1])
                    layer.scan(cur, True, u, r, z[1:], None if u_rec is None else u_rec[1:])
                else:
                    layer.scan(cur, True, u, r, z, u_rec)
            else:
                rows = 1 if layer.kind == "dense" else layer.out_nhwc[0] * layer.out_nhwc[1]
                step_bytes = n * rows * layer.cols * max(1, src.dtype.itemsize)  # im2col of one step
                chunk = max(1, min(T, CHUNK_BYTES // max(1, step_bytes)))
                for t0 in range(0, T, chunk):
                    t1 = min(T, t0 + chunk)
                    if delay:  # step t reads the input of step t − 1
                        seq = src[max(t0 - 1, 0) : t1 - 1]
                        if t0 == 0:
                            seq = np.concatenate([np.zeros_like(src[:1]), seq])
                    else:
                        seq = src[t0:t1]
                    cur = layer.currents(seq.reshape(-1, *seq.shape[2:]), unit if i == 0 else 1.0).reshape(
                        t1 - t0, *shape
                    )
                    layer.scan(cur, False, u, r, z[t0:t1], None if u_rec is None else u_rec[t0:t1])
            k = i + 1
            if record or k == len(self.layers):
                out[f"z{k}"] = _to_nchw(z, layer.kind).astype(np.float32)
            if record:
                out[f"u{k}"] = _to_nchw(u_rec, layer.kind)
            src = z
        return out


def _to_nchw(a: np.ndarray, kind: str) -> np.ndarray:
    """(T, n, H, W, C) → (T, n, C, H, W) for a conv layer's record; a dense layer's is unchanged."""
    return np.ascontiguousarray(np.moveaxis(a, -1, 2)) if kind == "conv" else a


def run_float_graph(
    source: Any, x: Any, num_steps: int | None = None, record: bool = False, threads: int | None = None
) -> dict[str, np.ndarray]:
    """One-call form of :class:`FloatEvaluator` (builds it, runs ``x``)."""
    return FloatEvaluator(source, threads=threads).run(x, num_steps=num_steps, record=record)
