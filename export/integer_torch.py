"""An independent PyTorch implementation of :func:`qsnn.arith.int_lif_step`, held equal to it by ``tests/test_arith.py``.

``run_integer_torch(net, x_int)`` (the PyTorch integer mode) runs an
:class:`~qsnn.network.IntegerNetwork` with int64 torch tensors, written from the contract's
equations alone (not from :mod:`qsnn.arith`, ``sim/`` or the integer graph), so that the
implementations — :mod:`qsnn.arith` with the reference simulator, the NumPy engine, this one and
the integer QONNX graph — can be compared. Per layer and step t (d = ``profile.synaptic_delay``;
the layer's input at step t is the previous layer's spikes — the input frame for layer 1 — of step
t − d, zeros before)::

    acc_t = sumpool_p(W ⊛_{s,pad} in_{t−d}) · 2^weight_exp   (float64 convolution of exact integers,
                                                          stride s, zero padding pad)
    r_t   = [u_{t−1} > θ]
    u_t   = overflow(leak(u_{t−1}) + shl(acc_t, s) + b − r_t·θ)          subtract reset
    u_t   = overflow(leak((1 − r_t)·u_{t−1}) + shl(acc_t, s) + b)        zero reset
    z_t   = [u_t > θ]

with shl(acc_t, s) passed through the profile's current register first when ``current_bits`` = w > 0
(Lava's u: c − 2^w where c > 2^(w−1), c + 2^w where c ≤ −2^(w−1), once).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from qsnn.errors import InputError
from qsnn.network import IntegerNetwork


def _shl(a: torch.Tensor, s: int) -> torch.Tensor:
    return a << s if s >= 0 else a >> (-s)  # >> on int64 is arithmetic: floor


def _leak(u: torch.Tensor, leak_const: int, kind: str, bits: int) -> torch.Tensor:
    if kind == "mul":
        return (u * leak_const) >> bits
    if kind == "shift":
        return u - (u >> leak_const)
    x = u * ((1 << bits) - leak_const)  # loihi: round toward zero
    return torch.sign(x) * (x.abs() >> bits)


def _overflow(v: torch.Tensor, profile) -> torch.Tensor:
    if profile.overflow == "saturate":
        return v.clamp(profile.membrane_min, profile.membrane_max)
    w = profile.membrane_bits
    half = 1 << (w - 1)
    return torch.remainder(v + half, 1 << w) - half


def _current_register(c: torch.Tensor, bits: int) -> torch.Tensor:
    if not bits:
        return c
    half = 1 << (bits - 1)
    return c - (c > half).to(torch.int64) * (2 * half) + (c <= -half).to(torch.int64) * (2 * half)


def _synapse(layer, inp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if layer.kind == "conv":
        acc = F.conv2d(inp, weight, stride=layer.stride, padding=layer.padding)
        if layer.pool > 1:
            acc = F.avg_pool2d(acc, layer.pool, divisor_override=1)  # sum-pool
    else:
        acc = inp.flatten(1) @ weight.T
    acc = torch.round(acc).to(torch.int64)
    return _shl(acc, layer.weight_exp)  # e ≥ 0: exact; e < 0: floor, before the current shift


def run_integer_torch(
    net: IntegerNetwork, x_int: np.ndarray, *, batch_size: int = 256, record: bool = False
) -> dict[str, np.ndarray]:
    """Run ``net`` for exactly T = ``net.num_steps`` steps on integer inputs.

    Args:
        net: the compiled network.
        x_int: static uint8 frames (N, C, H, W), the same frame every step, or event counts
            (N, T, C, H, W) with exactly T frames.
        batch_size: samples per batch (memory bound).
        record: also return the membranes ``u1 .. uL`` (int64, (T, N, ...)).

    Returns ``{"z1", ..., "zL"}`` spike trains, uint8, (T, N, ...) (one entry per layer, ``z<i>``),
    for a network of any depth L.
    """
    x_int = np.asarray(x_int)
    T = net.num_steps
    shape = tuple(net.input_shape)
    if x_int.ndim == 4 and x_int.shape[1:] == shape:
        static = True
    elif x_int.ndim == 5 and x_int.shape[2:] == shape:
        static = False
        if x_int.shape[1] != T:
            raise InputError(f"event input has {x_int.shape[1]} frames but the network runs T={T} steps")
    else:
        raise InputError(f"input of shape {x_int.shape} does not match (N, {shape}) or (N, T, {shape})")
    if not np.issubdtype(x_int.dtype, np.integer):
        raise InputError(f"x_int must hold integers (uint8 pixels or counts), got {x_int.dtype}")
    p = net.profile
    delay = p.synaptic_delay
    L = len(net.layers)
    weights = [torch.from_numpy(np.asarray(l.weight, dtype=np.float64)) for l in net.layers]
    thetas, biases = [], []
    for l in net.layers:
        view = (1, -1, 1, 1) if l.kind == "conv" else (1, -1)
        thetas.append(torch.from_numpy(np.asarray(l.threshold, np.int64)).view(view))
        biases.append(torch.from_numpy(np.asarray(l.bias, np.int64)).view(view))
    keys = [f"z{i + 1}" for i in range(L)] + ([f"u{i + 1}" for i in range(L)] if record else [])
    parts: dict[str, list[np.ndarray]] = {key: [] for key in keys}
    with torch.no_grad():
        for lo in range(0, len(x_int), batch_size):
            xb = torch.from_numpy(x_int[lo : lo + batch_size].astype(np.float64))
            n = xb.shape[0]
            u = [torch.zeros((n, *s), dtype=torch.int64) for s in net.shapes()]
            in_shapes = [shape] + net.shapes()[:-1]
            # history[l][t] = input of layer l produced at step t (float64 integers)
            history: list[list[torch.Tensor]] = [[] for _ in range(L)]
            rec: dict[str, list[torch.Tensor]] = {key: [] for key in keys}
            for t in range(T):
                frame = xb if static else xb[:, t]
                history[0].append(frame)
                for i, layer in enumerate(net.layers):
                    src = t - delay
                    inp = history[i][src] if src >= 0 else torch.zeros((n, *in_shapes[i]), dtype=torch.float64)
                    acc = _synapse(layer, inp, weights[i])
                    cur = _current_register(_shl(acc, layer.current_shift), p.current_bits) + biases[i]
                    reset = (u[i] > thetas[i]).to(torch.int64)
                    if p.reset == "subtract":
                        pre = _leak(u[i], layer.leak_const, p.leak, p.leak_bits) + cur - reset * thetas[i]
                    else:
                        pre = _leak((1 - reset) * u[i], layer.leak_const, p.leak, p.leak_bits) + cur
                    u[i] = _overflow(pre, p)
                    z = u[i] > thetas[i]
                    if i + 1 < L:
                        history[i + 1].append(z.to(torch.float64))
                    rec[f"z{i + 1}"].append(z.to(torch.uint8))
                    if record:
                        rec[f"u{i + 1}"].append(u[i].clone())
                for h in history:  # keep only what the delay still needs
                    if len(h) > delay:
                        h[: len(h) - delay - 1] = [None] * (len(h) - delay - 1)  # type: ignore[list-item]
            for key in keys:
                parts[key].append(torch.stack(rec[key]).numpy())
    return {key: np.concatenate(v, axis=1) for key, v in parts.items()}
