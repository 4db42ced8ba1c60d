"""The leaky integrate-and-fire neuron as a pure step function over explicit state.

snnTorch ``Leaky`` semantics (``reset_delay=True``), which the paper trains with (eqs. 1-2)::

    r_t = [u_{t-1} > θ]                      reset, decided by the previous membrane (no gradient)
    u_t = β·u_{t-1} + I_t − r_t·θ            reset = "subtract"
    u_t = β·((1 − r_t)·u_{t-1}) + I_t        reset = "zero"
    z_t = Θ(u_t − θ) = [u_t > θ]             (strict >)

The Heaviside Θ has the fast-sigmoid surrogate gradient of slope k in the backward pass (eq. 5)::

    S ≈ U / (1 + k|U|),    ∂S/∂U = 1 / (1 + k|U|)²,    U = u_t − θ

The arithmetic is written in the same order as snnTorch's so that the two agree bit for bit in
float32; :func:`lif_scan` runs the step over T for a whole layer at once.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class LIFState(NamedTuple):
    """State of one LIF population: the membrane potential u."""

    u: torch.Tensor


class FastSigmoidSpike(torch.autograd.Function):
    """z = [U > 0] forward; ∂z/∂U = 1 / (1 + k|U|)² backward (eq. 5)."""

    @staticmethod
    def forward(ctx, U: torch.Tensor, slope: float) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(U)
        ctx.slope = slope
        return (U > 0).to(U.dtype)

    @staticmethod
    def backward(ctx, grad_z: torch.Tensor):  # type: ignore[override]
        (U,) = ctx.saved_tensors
        return grad_z / (ctx.slope * torch.abs(U) + 1.0) ** 2, None


def lif_step(
    I: torch.Tensor,
    state: LIFState,
    beta: torch.Tensor,
    theta: torch.Tensor,
    slope: float,
    reset: str = "subtract",
) -> tuple[torch.Tensor, LIFState]:
    """One time step: returns (z_t, LIFState(u_t)) given I_t and u_{t-1}.

    ``beta`` and ``theta`` are float32 scalar tensors, as snnTorch stores them; ``slope`` is k of the
    surrogate gradient. The integer twin of this step is :func:`qsnn.arith.int_lif_step`.
    """
    u_prev = state.u
    r = (u_prev - theta > 0).to(u_prev.dtype)  # detached: a comparison carries no gradient
    if reset == "subtract":
        u = beta.clamp(0, 1) * u_prev + I - r * theta
    elif reset == "zero":
        u = beta.clamp(0, 1) * ((1 - r) * u_prev) + I
    else:
        raise ValueError(f"reset must be 'subtract' or 'zero', got {reset!r}")
    z = FastSigmoidSpike.apply(u - theta, slope)
    return z, LIFState(u)


def lif_scan(
    I_seq: torch.Tensor,
    beta: torch.Tensor,
    theta: torch.Tensor,
    slope: float,
    reset: str = "subtract",
    u0: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run :func:`lif_step` over the leading time axis of ``I_seq`` (T, ...).

    Returns (z, u), both (T, ...); u0 defaults to zeros.
    """
    state = LIFState(torch.zeros_like(I_seq[0]) if u0 is None else u0)
    zs, us = [], []
    for I in I_seq:
        z, state = lif_step(I, state, beta, theta, slope, reset)
        zs.append(z)
        us.append(state.u)
    return torch.stack(zs), torch.stack(us)
