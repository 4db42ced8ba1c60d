"""The integer arithmetic of a chip profile, in one place: the primitives and the integer LIF step.

:func:`int_lif_step` is the integer twin of the float step :func:`qsnn.train.lif.lif_step`: the
same pure step over an explicit state (:class:`IntLIFState`), side by side (per neuron of output
channel c, one time step; ``acc_t`` the exact integer synaptic sum after sum-pooling)::

    float (trained, snnTorch Leaky)          integer (compiled, under a ChipProfile)
    r_t = [u_{t−1} > θ]                      r_t = [u_{t−1} > θ_c]
                                             c_t = cur(shl(shl(acc_t, e), s)) + b_c
    u_t = β·u_{t−1} + I_t − r_t·θ            u_t = overflow( leak(u_{t−1}) + c_t − r_t·θ_c )      reset "subtract"
    u_t = β·((1 − r_t)·u_{t−1}) + I_t        u_t = overflow( leak((1 − r_t)·u_{t−1}) + c_t )      reset "zero"
    z_t = [u_t > θ]                          z_t = [u_t > θ_c]                                    (strict >)

with

* ``shl(a, s) = a << s`` for s ≥ 0 and ``a >> −s`` (arithmetic shift: floor) for s < 0; ``e`` is
  the layer's ``weight_exp`` (Loihi; 0 elsewhere), ``s`` its ``current_shift``: for e ≥ 0 the
  current is exactly ``shl(acc·2^e, s)``, a negative e floors the sum first;
* ``cur`` the profile's current register (:func:`wrap_current`; the identity when ``current_bits``
  is 0): Lava's 24-bit ``u``, which wraps once, c − 2^w where c > 2^(w−1) and c + 2^w where
  c ≤ −2^(w−1) (w = ``current_bits``), before the bias is added (Lava adds ``bias`` to ``v``);
* ``leak`` as the profile's ``leak`` says, with the layer's integer leak constant L and
  F = ``leak_bits``::

      mul:   u ← (L·u) >> F                      L = m = round(β·2^F): β in Q0.F, floor
      shift: u ← u − (u >> L)                    L = d = round(−log2(1 − β)), floor
      loihi: u ← rz(u·(2^F − L)),  rz(x) = sign(x)·(|x| >> F)      L = dv = round((1 − β)·2^F), toward zero

* ``overflow`` once per step on the exact sum (no intermediate rounding or clamping): ``saturate``
  clamps to [membrane_min, membrane_max] (``symmetric_clip`` narrows the low rail to
  −(2^(w−1) − 1)); ``wrap`` maps to [−2^(w−1), 2^(w−1) − 1] in two's complement whatever
  ``symmetric_clip`` says (w = ``membrane_bits``);
* ``u_{−1} = 0`` (so ``r_0 = 0``). Loihi's zero reset (``v = 0`` right after a spike) gives the same
  spikes as the delayed zero reset above: a neuron that spiked starts the next step from 0 either way.

What feeds ``acc_t`` (convolution, sum-pooling, flatten order, synaptic delay, the input frames) is
the layer's synapse, :mod:`qsnn.network`. Everything here is NumPy int64.

Who computes this step: :mod:`qsnn.sim.reference` (the literal simulator) and the compiler's
worst-case bound (:func:`qsnn.export.compile.membrane_bound`, through :func:`pre_overflow`) call
it. Three independent implementations are held equal to it, spike for spike and membrane for
membrane, by tests: the fast engine :mod:`qsnn.sim.engine`, the PyTorch integer mode
:mod:`qsnn.export.integer_torch` and the integer QONNX graph :mod:`qsnn.export.qonnx_int`
(``tests/test_arith.py``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from qsnn.network import IntegerLayer
    from qsnn.profiles import ChipProfile


# --------------------------------------------------------------------------------------------------
# Primitives


def shl(a, s: int) -> np.ndarray:
    """``a << s`` for s ≥ 0, ``a >> −s`` (floor) for s < 0, on int64."""
    a = np.asarray(a, dtype=np.int64)
    return a << s if s >= 0 else a >> (-s)


def leak(u, leak_const: int, profile: "ChipProfile") -> np.ndarray:
    """The profile's leak of integer membranes ``u`` with the layer's leak constant (module docstring)."""
    u = np.asarray(u, dtype=np.int64)
    bits = profile.leak_bits
    if profile.leak == "mul":
        return (u * leak_const) >> bits  # floor
    if profile.leak == "shift":
        return u - (u >> leak_const)  # floor
    x = u * ((1 << bits) - leak_const)  # loihi: round toward zero
    return np.sign(x) * (np.abs(x) >> bits)


def wrap_range(bits: int) -> tuple[int, int]:
    """The values a ``bits``-wide two's-complement register holds: [−2^(bits−1), 2^(bits−1) − 1]."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


def overflow_range(profile: "ChipProfile") -> tuple[int, int]:
    """The values a membrane holds after :func:`overflow` (the saturating rails, or the wrap range)."""
    if profile.overflow == "saturate":
        return profile.membrane_min, profile.membrane_max
    return wrap_range(profile.membrane_bits)


def wrap(v, bits: int) -> np.ndarray:
    """``v`` wrapped into ``bits``-wide two's complement (what a ``bits``-wide adder keeps)."""
    half = 1 << (bits - 1)
    return ((np.asarray(v, dtype=np.int64) + half) & ((1 << bits) - 1)) - half


def wrap_current(c, bits: int) -> np.ndarray:
    """A ``bits``-wide current register as Lava's fixed-point LIF keeps it (``u``): c − 2^bits where
    c > 2^(bits−1), c + 2^bits where c ≤ −2^(bits−1), else c — once, not modulo (Lava's own rule;
    the range is (−2^(bits−1), 2^(bits−1)], one above two's complement's)."""
    c = np.asarray(c, dtype=np.int64)
    half = 1 << (bits - 1)
    return np.where(c > half, c - 2 * half, np.where(c <= -half, c + 2 * half, c))


def overflow(v, profile: "ChipProfile") -> np.ndarray:
    """The profile's overflow of an exact membrane sum: clamp to the rails (saturate) or wrap."""
    if profile.overflow == "saturate":
        return np.clip(np.asarray(v, dtype=np.int64), profile.membrane_min, profile.membrane_max)
    return wrap(v, profile.membrane_bits)


def to_twos_complement(values, bits: int) -> np.ndarray:
    """Signed integers → their ``bits``-wide two's-complement codes (uint64); ValueError if out of range."""
    v = np.asarray(values, dtype=np.int64)
    lo, hi = wrap_range(bits)
    if v.size and (v.min() < lo or v.max() > hi):
        raise ValueError(f"values outside the {bits}-bit two's-complement range [{lo}, {hi}]")
    return (v & ((1 << bits) - 1)).astype(np.uint64)


def from_twos_complement(codes, bits: int) -> np.ndarray:
    """``bits``-wide two's-complement codes → signed int64 (bits above ``bits`` are ignored)."""
    c = np.asarray(codes, dtype=np.int64) & ((1 << bits) - 1)
    return np.where(c >= (1 << (bits - 1)), c - (1 << bits), c)


# --------------------------------------------------------------------------------------------------
# The leak constant and the β it realises


def leak_const_of(beta: float, profile: "ChipProfile") -> int:
    """The integer leak constant L of β under ``profile``: m (mul), d (shift) or dv (loihi), clamped to its range."""
    bits = profile.leak_bits
    if profile.leak == "mul":
        return int(min(max(round(beta * 2**bits), 0), 2**bits))
    if profile.leak == "shift":
        if beta >= 1.0:
            return profile.membrane_bits
        if beta <= 0.0:
            return 0
        return int(min(max(round(-math.log2(1.0 - beta)), 0), profile.membrane_bits))
    # loihi: dv is a leak_bits-wide register (Loihi's 12-bit dv: 0..4095)
    return int(min(max(round((1.0 - beta) * 2**bits), 0), 2**bits - 1))


def effective_beta(leak_const: int, profile: "ChipProfile") -> float:
    """The β the integer leak realises (to first order): m/2^F, 1 − 2^−d, or 1 − dv/2^F."""
    bits = profile.leak_bits
    if profile.leak == "mul":
        return leak_const / 2**bits
    if profile.leak == "shift":
        return 1.0 - 2.0**-leak_const
    return (2**bits - leak_const) / 2**bits


def beta_on_grid(beta: float, profile: "ChipProfile") -> float:
    """β rounded to the nearest value the profile's leak register holds (what training for a chip uses)."""
    return effective_beta(leak_const_of(beta, profile), profile)


def check_leak_const(leak_const: int, profile: "ChipProfile", layer_name: str) -> None:
    """Raise :class:`~qsnn.errors.NetworkError` unless the profile's leak can use this constant:
    0 ≤ L ≤ 2^leak_bits for ``mul`` and ``loihi`` (a larger one would grow |u|), 0 ≤ d ≤ 62 for ``shift``."""
    from qsnn.errors import NetworkError

    p, d = profile, int(leak_const)
    if p.leak in ("mul", "loihi") and not 0 <= d <= (1 << p.leak_bits):
        raise NetworkError(f"layer {layer_name}: {p.leak} leak constant {d} outside [0, 2^{p.leak_bits}]")
    if p.leak == "shift" and not 0 <= d <= 62:
        raise NetworkError(f"layer {layer_name}: shift leak d={d} outside [0, 62]")


# --------------------------------------------------------------------------------------------------
# The integer LIF step


class IntLIFState(NamedTuple):
    """State of one integer LIF population: the membrane u (int64, on the layer's membrane grid)."""

    u: np.ndarray


def per_channel(values, ndim: int) -> np.ndarray:
    """Per-channel constants (C,) as int64 broadcasting along axis 1 of a (N, C, ...) array of ``ndim`` dims."""
    return np.asarray(values, dtype=np.int64).reshape((1, -1) + (1,) * max(ndim - 2, 0))


def synaptic_current(acc, layer: "IntegerLayer", profile: "ChipProfile") -> np.ndarray:
    """c_t = cur(shl(shl(acc_t, e), s)) + b_c: the current on the membrane grid, for acc of shape (N, C, ...)."""
    acc = np.asarray(acc, dtype=np.int64)
    current = shl(shl(acc, layer.weight_exp), layer.current_shift)
    if profile.current_bits:
        current = wrap_current(current, profile.current_bits)
    return current + per_channel(layer.bias, acc.ndim)


def pre_overflow(u_prev, current, theta, leak_const: int, profile: "ChipProfile") -> np.ndarray:
    """The exact membrane sum before :func:`overflow`: ``leak(u_{t−1}) + c_t − r_t·θ`` (subtract) or
    ``leak((1 − r_t)·u_{t−1}) + c_t`` (zero), with r_t = [u_{t−1} > θ]. Arguments broadcast."""
    u_prev = np.asarray(u_prev, dtype=np.int64)
    theta = np.asarray(theta, dtype=np.int64)
    r = (u_prev > theta).astype(np.int64)
    if profile.reset == "subtract":
        return leak(u_prev, leak_const, profile) + current - r * theta
    return leak((1 - r) * u_prev, leak_const, profile) + current


def int_lif_step(
    acc, state: IntLIFState, layer: "IntegerLayer", profile: "ChipProfile"
) -> tuple[np.ndarray, IntLIFState]:
    """One time step of a layer's LIF population: returns (z_t, IntLIFState(u_t)) given acc_t and u_{t−1}.

    ``acc`` is the integer synaptic sum of this step (after sum-pooling, before the weight
    exponent), shape (N, C, H, W) for a conv layer or (N, O) for a dense one; ``state.u`` has the
    same shape (zeros before the first step). The equations are in the module docstring; z_t is
    uint8 (1 = spike).
    """
    acc = np.asarray(acc, dtype=np.int64)
    theta = per_channel(layer.threshold, acc.ndim)
    u = overflow(
        pre_overflow(state.u, synaptic_current(acc, layer, profile), theta, layer.leak_const, profile), profile
    )
    return (u > theta).astype(np.uint8), IntLIFState(u)
