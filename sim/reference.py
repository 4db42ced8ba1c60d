"""The reference simulator: a slow, literal reading of the integer contract, to check the others against.

The neuron is :func:`qsnn.arith.int_lif_step` itself; the synapse is written out as
:mod:`qsnn.network` states it, in NumPy int64 arithmetic with no pooling folded into kernels, no
floats and no layout changes: a convolution is a loop over kernel taps, sum-pooling a loop over
the p×p window (the input zero-padded first, the taps taken s apart), one time step after another,
one layer after another within a step. Only for
small networks (tests); :func:`qsnn.sim.simulate` is the engine to use.
"""

from __future__ import annotations

import numpy as np

from qsnn.arith import IntLIFState, int_lif_step
from qsnn.network import IntegerNetwork

from .results import predict


def synaptic_sum(layer, z_in: np.ndarray) -> np.ndarray:
    """acc = sumpool_p(W ⊛_{s,pad} z_in), as int64, on a batch (B, ...) (the exponent is applied by the caller)."""
    w = np.asarray(layer.weight, dtype=np.int64)
    z = np.asarray(z_in, dtype=np.int64)
    if layer.kind == "dense":
        acc = z.reshape(len(z), -1) @ w.T
    else:
        side, p, s, pad = layer.kernel, layer.pool, layer.stride, layer.padding
        z = np.pad(z, ((0, 0), (0, 0), (pad, pad), (pad, pad)))  # zeros on every side
        b, _, h, wd = z.shape
        hc, wc = (h - side) // s + 1, (wd - side) // s + 1
        conv = np.zeros((b, w.shape[0], hc, wc), dtype=np.int64)
        for a in range(side):
            for c in range(side):
                # conv[b, o, i, j] += Σ_ci w[o, ci, a, c] · z[b, ci, s·i + a, s·j + c]
                taps = z[:, :, a : a + s * (hc - 1) + 1 : s, c : c + s * (wc - 1) + 1 : s]
                conv += np.einsum("oi,bihw->bohw", w[:, :, a, c], taps)
        hp, wp = hc // p, wc // p
        acc = np.zeros((b, w.shape[0], hp, wp), dtype=np.int64)
        for i in range(p):
            for j in range(p):
                acc += conv[:, :, i : p * hp : p, j : p * wp : p]
    return acc


def simulate_reference(net: IntegerNetwork, x: np.ndarray) -> dict[str, np.ndarray]:
    """``{"z1": (T, N, ...), ..., "u1": ..., "counts": (N, classes), "predictions": (N,)}``."""
    profile, T, delay = net.profile, net.num_steps, net.profile.synaptic_delay
    x = np.asarray(x, dtype=np.int64)
    n = len(x)
    shapes = net.shapes()
    zs = [np.zeros((T, n, *s), dtype=np.uint8) for s in shapes]
    us = [np.zeros((T, n, *s), dtype=np.int64) for s in shapes]
    states = [IntLIFState(np.zeros((n, *s), dtype=np.int64)) for s in shapes]
    for t in range(T):
        for li, layer in enumerate(net.layers):
            src = t - delay  # the layer sees its input `delay` steps late, zeros before
            if src < 0:
                z_in = np.zeros((n, *(net.input_shape if li == 0 else shapes[li - 1])), dtype=np.int64)
            elif li == 0:
                z_in = x if net.encoding == "static" else x[:, src]
            else:
                z_in = zs[li - 1][src]
            z, states[li] = int_lif_step(synaptic_sum(layer, z_in), states[li], layer, profile)
            us[li][t] = states[li].u
            zs[li][t] = z
    out = {f"z{i + 1}": z for i, z in enumerate(zs)}
    out.update({f"u{i + 1}": v for i, v in enumerate(us)})
    out["counts"] = zs[-1].sum(axis=0, dtype=np.int64).reshape(n, -1)
    out["predictions"] = predict(out["counts"])
    return out
