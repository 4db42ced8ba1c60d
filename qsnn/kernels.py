"""Exact integer matrix products for the synaptic sums: onnxruntime's ``MatMulInteger`` and its proof.

The synaptic sums of a spiking layer are integers: spikes (0/1), pixels or event counts times the
integer weight codes. Two evaluations use them and so share this module (the core): the integer
engine (:mod:`qsnn.sim.engine`) and the float model's evaluation with exact sums
(:mod:`qsnn.export.float_eval`).

* :class:`OrtIntMatmul`: onnxruntime's ``MatMulInteger``, uint8 inputs × int8 weights accumulated in
  int32 with the CPU's integer dot products (AVX2 ``vpmaddubsw``/``vpmaddwd``, AVX-512 VNNI
  ``vpdpbusd``, Arm ``sdot``/``usdot``);
* :func:`int8_exact`: when its result is the exact integer (below);
* :func:`im2col`: the input windows of a stride-p convolution as rows, channels last;
* :func:`weight_matrix`: a layer's weights as the matrix the im2col rows multiply;
* :func:`box_sums`, :func:`box_kernel`: the p×p window sums a pooled stride-1 layer's own kernel runs on;
* :func:`default_threads`: how many threads a batch is split over.

``MatMulInteger`` is exact when

- every input is a uint8 (0 ≤ x ≤ 255) and every weight an int8 (|W'| ≤ 127),
- every partial sum fits int32: ``max_o Σ|W'_o| · max x < 2^31``,
- no pair of products saturates int16: ``2 · max x · max|W'| ≤ 2^15 − 1``. AVX2's ``vpmaddubsw``
  adds two adjacent u8×s8 products into a *saturating* int16 before widening (onnxruntime's
  documentation names this for its U8S8 kernels); below this bound the saturation never acts, so
  the result is the exact integer on every x86 and Arm kernel alike.
"""

from __future__ import annotations

import os

import numpy as np
from numpy.lib.stride_tricks import as_strided

from qsnn.errors import InputError
from qsnn.network import fold_pool

INT16_MAX = 2**15 - 1
INT32_MAX = 2**31 - 1


def int8_exact(in_max: int, weight_max: int, sum_bound: int) -> bool:
    """Whether uint8 × int8 → int32 sums are exact for a layer (the three conditions above)."""
    return 0 <= in_max <= 255 and weight_max <= 127 and sum_bound <= INT32_MAX and 2 * in_max * weight_max <= INT16_MAX


def ort_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


class OrtIntMatmul:
    """``x (M, K) uint8 → x · W (M, O) int32`` with onnxruntime's MatMulInteger, W an int8 constant.

    One single-threaded session per weight matrix (callers split batches over threads themselves;
    onnxruntime's own pool would spin between calls). ``W`` is a graph initializer, so onnxruntime
    packs it once. The session's ``run`` releases the GIL and may be called from several threads.
    """

    def __init__(self, weight: np.ndarray) -> None:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper

        w = np.asarray(weight)
        if w.ndim != 2 or w.size == 0 or np.abs(w.astype(np.int64)).max() > 127:
            raise ValueError("OrtIntMatmul takes a non-empty 2-D int8 weight matrix")
        self.k, self.o = w.shape
        self.weight = w.astype(np.int8)  # (K, O), for a caller that runs the product elsewhere
        graph = helper.make_graph(
            [helper.make_node("MatMulInteger", ["x", "w"], ["y"])],
            "int_matmul",
            [helper.make_tensor_value_info("x", TensorProto.UINT8, [None, self.k])],
            [helper.make_tensor_value_info("y", TensorProto.INT32, [None, self.o])],
            initializer=[numpy_helper.from_array(w.astype(np.int8), "w")],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = min(model.ir_version, 8)
        onnx.checker.check_model(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != self.k:
            raise ValueError(f"OrtIntMatmul takes (M, {self.k}) uint8, got {x.shape} {x.dtype}")
        if len(x) == 0:
            return np.zeros((0, self.o), np.int32)
        return self.session.run(["y"], {"x": np.ascontiguousarray(x)})[0]


def pixel_words(x: np.ndarray) -> np.ndarray:
    """``x`` (..., C) C-contiguous, viewed with each pixel's C values as the widest of 8-, 4- or 2-byte
    words that its bytes divide into (unchanged where none is wider than its own values): the same
    bytes, fewer and wider elements to copy."""
    row = x.shape[-1] * x.dtype.itemsize
    wide = next((w for w in (8, 4, 2) if row % w == 0), 1)
    return x.view(np.dtype(f"u{wide}")) if wide > x.dtype.itemsize else x


def im2col(x: np.ndarray, window: int, stride: int, out_hw: tuple[int, int]) -> np.ndarray:
    """Rows ``(m·Ho·Wo, K·K·C)`` of the ``window``² patches at ``stride`` of ``x`` (m, H, W, C).

    Channels innermost (each copied run is K·C contiguous values; a weight matrix in (K, K, C)
    column order multiplies it): one copy of a strided view, a pixel's C values moved as 8-, 4- or
    2-byte words where their bytes allow.
    """
    xs = np.ascontiguousarray(x)
    dtype = xs.dtype
    xs = pixel_words(xs)  # copy a pixel's C values as wider words
    m, _, _, c = xs.shape
    ho, wo = out_hw
    s0, s1, s2, s3 = xs.strides
    win = as_strided(xs, (m, ho, wo, window, window, c), (s0, stride * s1, stride * s2, s1, s2, s3), writeable=False)
    return win.reshape(m * ho * wo, -1).view(dtype)


def conv_columns(weight: np.ndarray) -> np.ndarray:
    """(O, C, K, K) conv weights as (O, K·K·C): the column order of :func:`im2col`'s rows."""
    return weight.transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)


def weight_matrix(
    weight: np.ndarray, kind: str, pool: int, in_shape: tuple[int, ...], dtype=np.int64, stride: int = 1
) -> np.ndarray:
    """A layer's weights as the (O, cols) matrix its inputs, channels last, multiply: a conv layer's
    pool-folded kernel (:func:`qsnn.network.fold_pool`, k + s(p−1) wide for conv stride s, applied at
    stride s·p) in :func:`im2col` column order; a dense layer's columns in the NHWC order of its
    flattened (C, H, W) input (the graph flattens NCHW)."""
    w = np.asarray(weight, dtype=dtype)
    if kind == "conv":
        return conv_columns(fold_pool(w, pool, dtype, stride=stride))
    if len(in_shape) == 3:
        c, h, wd = in_shape
        return w.reshape(w.shape[0], c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
    return w


def box_sums(x: np.ndarray, p: int) -> np.ndarray:
    """S[h, w] = Σ_{i, j < p} x[h + i, w + j] of (m, H, W, C) uint8 inputs, in uint8 (the caller
    proves p²·max x ≤ 255), separably: p − 1 adds along H, then p − 1 along W. Eight channels at a
    time where C is a multiple of 8: bytes of uint64 words add lane by lane, and no lane reaches
    256, so no carry crosses into the next byte.

    With it a p×p sum-pooled convolution is the layer's own k×k kernel at stride p over S: k²/(k+p−1)²
    of the pool-folded kernel's multiplies.
    """
    xs = np.ascontiguousarray(x)
    wide = xs.shape[3] % 8 == 0
    v = xs.view(np.uint64) if wide else xs
    _, h, w, _ = v.shape
    if p == 1:
        return xs
    rows = np.add(v[:, : h - p + 1], v[:, 1 : h - p + 2])
    for i in range(2, p):
        rows += v[:, i : h - p + 1 + i]
    out = np.add(rows[:, :, : w - p + 1], rows[:, :, 1 : w - p + 2])
    for j in range(2, p):
        out += rows[:, :, j : w - p + 1 + j]
    return out.view(np.uint8) if wide else out


def box_kernel(weight: np.ndarray, pool: int, in_max: int) -> tuple[OrtIntMatmul, int] | None:
    """The integer kernel of a p×p sum-pooled conv layer of stride 1 on the p×p box sums of its inputs (values
    ≤ p²·in_max): ``sumpool_p(W ⊛ x) = W ⊛_p S``, the layer's own k×k kernel at stride p, k²/(k+p−1)²
    of the folded kernel's multiplies. Returns (kernel, proven bound of every sum), or None where
    that is not exact (:func:`int8_exact`, box sums above 255) or onnxruntime is missing."""
    box_max = pool * pool * int(in_max)
    if pool < 2 or box_max > 255 or not ort_available():
        return None
    wmat = conv_columns(np.asarray(weight, dtype=np.int64))
    bound = int(np.abs(wmat).sum(axis=1).max()) * box_max
    if not int8_exact(box_max, int(np.abs(wmat).max(initial=0)), bound):
        return None
    return OrtIntMatmul(wmat.T), bound


def default_threads() -> int:
    """Threads a batch is split over by default: the usable cores, at most 4 (``QSNN_SIM_THREADS`` overrides)."""
    env = os.environ.get("QSNN_SIM_THREADS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise InputError(f"QSNN_SIM_THREADS must be a positive integer, got {env!r}") from None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(4, cores))
