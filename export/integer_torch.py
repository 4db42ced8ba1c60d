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

The same step, run over T for one layer, carries gradients (:func:`integer_lif_scan`, used by the
integer-exact fine-tuning :mod:`qsnn.train.finetune`): its forward pass is :func:`membrane_step`, the
step :func:`run_integer_torch` runs, and its backward pass replaces each integer operation by the
real-valued one it rounds (straight-through estimates), per channel c with grid unit δ_c::

    shl(acc, s), cur(·)        →  acc · 2^s          floor of a negative shift, current-register wrap: straight through
    leak(u)                    →  β_L · u            β_L = effective_beta(L): the floor (or Loihi's rz) straight through
    overflow(v)                →  v                  the clamp at the rails (or the wrap) straight through
    z = [u > θ_c]              →  ∂z/∂u = δ_c / (1 + k·|δ_c·(u − θ_c)|)²     the fast-sigmoid surrogate (eq. 5)
                                                   on the real membrane δ_c·(u − θ_c), slope k as trained
    r_t = [u_{t−1} > θ_c]      →  no gradient        (as in the float step, :func:`qsnn.train.lif.lif_step`)

θ_c and b_c receive the gradients of their real-valued sources (the rounding of θ/δ_c and o_c/δ_c is
straight through too): ∂u_t/∂b_c = 1, ∂u_t/∂θ_c = −r_t (subtract reset), ∂z_t/∂θ_c = −∂z_t/∂u_t.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from qsnn.arith import effective_beta
from qsnn.errors import InputError
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import ChipProfile


def _shl(a: torch.Tensor, s: int) -> torch.Tensor:
    if a.is_floating_point():  # integers held exactly in float64 (the fine-tuning's scan)
        return a * 2.0**s if s >= 0 else torch.floor(a * 2.0**s)
    return a << s if s >= 0 else a >> (-s)  # >> on int64 is arithmetic: floor


def _leak(u: torch.Tensor, leak_const: int, kind: str, bits: int) -> torch.Tensor:
    if u.is_floating_point():  # the same floors, on integers held exactly in float64
        if kind == "mul":
            return torch.floor(u * (leak_const * 2.0**-bits))
        if kind == "shift":
            return u - torch.floor(u * 2.0**-leak_const)
        return torch.trunc(u * (((1 << bits) - leak_const) * 2.0**-bits))  # loihi: round toward zero
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
    return c - (c > half).to(c.dtype) * (2 * half) + (c <= -half).to(c.dtype) * (2 * half)


def _synapse(layer, inp: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if layer.kind == "conv":
        acc = F.conv2d(inp, weight, stride=layer.stride, padding=layer.padding)
        if layer.pool > 1:
            acc = F.avg_pool2d(acc, layer.pool, divisor_override=1)  # sum-pool
    else:
        acc = inp.flatten(1) @ weight.T
    acc = torch.round(acc).to(torch.int64)
    return _shl(acc, layer.weight_exp)  # e ≥ 0: exact; e < 0: floor, before the current shift


def synaptic_current(acc: torch.Tensor, bias: torch.Tensor, layer: IntegerLayer, p: ChipProfile) -> torch.Tensor:
    """c_t = cur(shl(acc_t, s)) + b_c from the integer synaptic sum acc_t (after the weight exponent)."""
    return _current_register(_shl(acc, layer.current_shift), p.current_bits) + bias


def membrane_step(
    u: torch.Tensor, current: torch.Tensor, theta: torch.Tensor, layer: IntegerLayer, p: ChipProfile
) -> torch.Tensor:
    """u_t from u_{t−1} and the current c_t (:func:`synaptic_current`), θ per channel broadcasting: the
    step of the module docstring (the spike is z_t = [u_t > θ]). Integers, in int64 or held exactly in
    float64 (:func:`exact_dtype`)."""
    if p.reset == "subtract":
        pre = _leak(u, layer.leak_const, p.leak, p.leak_bits) + current - (u > theta).to(u.dtype) * theta
    else:
        pre = _leak(torch.where(u > theta, 0, u), layer.leak_const, p.leak, p.leak_bits) + current
    return _overflow(pre, p)


def channel_view(values, ndim: int, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """Per-channel constants (C,) as a tensor broadcasting along axis 1 of ``ndim`` dims."""
    return torch.as_tensor(np.asarray(values, np.int64)).to(dtype).view((1, -1) + (1,) * (ndim - 2))


def exact_dtype(p: ChipProfile, bound: float) -> torch.dtype:
    """float64 where it holds every integer of the step exactly (membranes, leak products and
    currents below 2^53), else int64. Elementwise float64 runs several times faster than int64 on CPUs."""
    widest = max(p.membrane_bits + p.leak_bits, math.log2(max(bound, 1.0)) + 1)
    return torch.float64 if widest < 53 else torch.int64


class IntegerLIFScan(torch.autograd.Function):
    """:func:`membrane_step` over T steps of one layer, with the straight-through backward pass of the
    module docstring (see :func:`integer_lif_scan`)."""

    @staticmethod
    def forward(ctx, acc, theta_src, bias_src, layer, profile, slope):  # type: ignore[override]
        ndim = acc.dim() - 1  # (T, N, C, ...) → one step's (N, C, ...)
        shape = acc.shape
        same = shape[0] > 1 and acc.stride(0) == 0  # one sum repeated (a static image's first layer)
        acc = torch.round((acc[:1] if same else acc).detach()).double()
        bound = float(acc.abs().max()) * 2.0 ** max(layer.weight_exp + layer.current_shift, 0) if acc.numel() else 0
        dtype = exact_dtype(profile, bound)
        theta = channel_view(layer.threshold, ndim, dtype).to(acc.device)
        bias = channel_view(layer.bias, ndim, dtype).to(acc.device)
        current = synaptic_current(_shl(acc.to(dtype), layer.weight_exp), bias, layer, profile)  # all T at once
        current = current.expand(shape) if same else current
        u = torch.zeros(shape[1:], dtype=dtype, device=acc.device)
        us = torch.empty(shape, dtype=dtype, device=acc.device)
        for t in range(shape[0]):
            u = membrane_step(u, current[t], theta, layer, profile)
            us[t] = u
        z = (us > theta).to(torch.float32)
        ctx.save_for_backward(us)
        ctx.layer, ctx.profile, ctx.slope = layer, profile, slope
        ctx.shapes = (theta_src is not None and theta_src.shape, bias_src is not None and bias_src.shape)
        ctx.mark_non_differentiable(us)
        return z, us.to(torch.int64)

    @staticmethod
    def backward(ctx, grad_z, _grad_u):  # type: ignore[override]
        (us,) = ctx.saved_tensors
        layer, p, k = ctx.layer, ctx.profile, ctx.slope
        ndim = us.dim() - 1
        theta = channel_view(layer.threshold, ndim, us.dtype).to(us.device)
        unit = torch.as_tensor(np.asarray(layer.scale, np.float64)).view((1, -1) + (1,) * (ndim - 2)).to(us.device)
        if grad_z is None:
            grad_z = torch.zeros(us.shape, dtype=torch.float32, device=us.device)
        distance = (us - theta).to(torch.float32) * unit.float()  # the real membrane above θ_c, all steps
        g_spike = grad_z * (unit.float() / (k * distance.abs() + 1.0) ** 2)  # ∂L/∂z_t · ∂z_t/∂u_t
        fired = us > theta  # r_{t+1} = z_t
        beta = effective_beta(layer.leak_const, p)
        g = torch.empty_like(g_spike)  # ∂L/∂u_t: the spike's part plus what u_{t+1} passes back
        carry = torch.zeros_like(g_spike[0])
        for t in range(us.shape[0] - 1, -1, -1):
            g[t] = g_spike[t] + carry
            keep = beta if p.reset == "subtract" else beta * (~fired[t - 1]).to(g.dtype) if t > 0 else beta
            carry = keep * g[t]
        sum_dims = [0, 1] + list(range(3, ndim + 1))  # all but the channel
        d_theta = d_bias = None
        if ctx.needs_input_grad[1]:
            d_theta = -g_spike.sum(sum_dims, dtype=torch.float64)
            if p.reset == "subtract" and us.shape[0] > 1:  # u_t − r_t·θ_c, r_t = z_{t−1}
                d_theta = d_theta - (g[1:] * fired[:-1]).sum(sum_dims, dtype=torch.float64)
            d_theta = d_theta.view(ctx.shapes[0])
        if ctx.needs_input_grad[2]:
            d_bias = g.sum(sum_dims, dtype=torch.float64).view(ctx.shapes[1])
        d_acc = g * 2.0 ** (layer.current_shift + layer.weight_exp)  # shl as a multiplication
        return d_acc, d_theta, d_bias, None, None, None


def integer_lif_scan(
    acc: torch.Tensor,
    layer: IntegerLayer,
    profile: ChipProfile,
    slope: float,
    theta: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer's spikes and membranes over T steps, exactly as :func:`run_integer_torch` computes
    them, differentiable (straight-through, module docstring).

    Args:
        acc: (T, N, C, ...) float tensor of the exact integer synaptic sums acc_t (after sum-pooling,
            the synaptic delay already applied: zeros where the input has not arrived), which may
            require a gradient.
        layer: the compiled layer (its θ_c, b_c, shift, leak constant and grid unit δ_c are used).
        profile: the profile whose arithmetic the layer follows.
        slope: k of the fast-sigmoid surrogate (the trained model's).
        theta, bias: optional (C,) tensors that receive the gradient of θ_c and b_c (their values are
            not used: the forward pass runs on the compiled integers).

    Returns (z, u): spikes (T, N, C, ...) float32 (0/1), membranes int64 (no gradient).
    """
    return IntegerLIFScan.apply(acc, theta, bias, layer, profile, slope)


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
                    u[i] = membrane_step(u[i], synaptic_current(acc, biases[i], layer, p), thetas[i], layer, p)
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
