"""Synaptic-sum kernels of the engine: the NumPy reference and an optional integer kernel (onnxruntime).

Every kernel computes the same integers, the synaptic sums ``acc = X · W'`` of one layer (X the
im2col'd input, W' the pool-folded integer kernel); a kernel is used for a layer only where the
layer's proven bounds make its arithmetic exact:

* ``numpy`` (always available, the reference path): float32 BLAS when every partial sum is below
  2^24, float64 below 2^53, int64 otherwise (see :mod:`qsnn.sim.engine`).
* ``ort``: onnxruntime's ``MatMulInteger`` (:class:`qsnn.kernels.OrtIntMatmul`, in the core because
  the float model's exact evaluation uses it too), uint8 inputs × int8 weights accumulated in int32
  with the CPU's integer dot products (AVX2 ``vpmaddubsw``/``vpmaddwd``, AVX-512 VNNI ``vpdpbusd``,
  Arm ``sdot``/``usdot``). Exact under the three conditions of :mod:`qsnn.kernels` (uint8 inputs and
  int8 weights, int32 partial sums, no int16 pair saturation: :func:`qsnn.kernels.int8_exact`).

  Spikes (x ≤ 1) of 4-bit (|W'| ≤ 4·7) and 8-bit (|W'| ≤ 4·127) pool-folded layers always qualify,
  and so do uint8 pixels into a 4-bit layer (2·255·28 = 14,280).

The engine's core stays NumPy; ``ort`` is an accelerator it uses when onnxruntime is importable
(it is a qsnn dependency) and the bound holds, else it falls back to ``numpy`` per layer. The choice
is reported per layer (``LayerStats.sum_kernel``) and the two are held equal by the tests
(``tests/test_sim_engine.py``, ``array_equal`` on random and trained networks). ``docs/engine.md``
says why the kernel sits outside the NumPy-only core.
"""

from __future__ import annotations

from qsnn.kernels import (INT16_MAX, INT32_MAX, OrtIntMatmul, box_kernel, box_sums, default_threads, im2col, int8_exact,
                          ort_available, weight_matrix)

__all__ = ["KERNELS", "INT16_MAX", "INT32_MAX", "OrtIntMatmul", "box_kernel", "box_sums", "default_threads", "im2col",
           "int8_exact", "ort_available", "weight_matrix"]

#: Kernels :func:`qsnn.sim.simulate` accepts: ``auto`` (``ort`` where exact and importable, else
#: ``numpy``), ``numpy`` (the reference path, every layer) or ``ort`` (required: an error if unavailable).
KERNELS = ("auto", "numpy", "ort")
