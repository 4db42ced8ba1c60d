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


def _empty_steps(shape: tuple[int, ...], like: torch.Tensor, memory_format: torch.memory_format | None) -> torch.Tensor:
    """An empty (T, ...) tensor of ``shape`` with ``like``'s dtype and device; with ``torch.channels_last``
    and (T, B, C, H, W) each step is laid out channels-last (the fast path's convolutions run faster on
    it on CPU)."""
    if memory_format == torch.channels_last and len(shape) == 5:
        T, B, C, H, W = shape
        return torch.empty(T, B, H, W, C, dtype=like.dtype, device=like.device).permute(0, 1, 4, 2, 3)
    return torch.empty(shape, dtype=like.dtype, device=like.device)


class LIFScan(torch.autograd.Function):
    """:func:`lif_step` over T as one autograd node: forward and backward each one loop over t.

    Forward runs the step's arithmetic in the same float operations and order, so the values are
    bit-identical to T calls of :func:`lif_step`, without recording a graph, writing each step in place
    into the (T, ...) outputs. Two exact rewrites save passes over memory: the reset r_t = [u_{t−1} − θ > 0]
    is the previous step's spike z_{t−1} (the same comparison), and r·θ ∈ {0, θ} is exact, so subtracting
    it as ``sub(r, alpha=θ)`` rounds once, as ``− r·θ`` does; [u − θ > 0] is [u > θ] in IEEE arithmetic
    (with subnormals, PyTorch's default, a difference of floats is 0 only when they are equal). It keeps the membranes u and spikes z.
    Backward is the step's chain rule, run from t = T−1 down to 0, one step at a time so that its arrays
    stay in cache (r detached, as in the step)::

        g_t        = ∂L/∂u_t (from the u output) + ∂L/∂z_t / (1 + k|u_t − θ|)² + c_{t+1}
        ∂L/∂I_t    = g_t
        c_t        = β_c · g_t              reset = "subtract"
        c_t        = β_c · (1 − r_t) · g_t  reset = "zero"       (β_c = clamp(β, 0, 1))

    and ∂L/∂u0 = c_0. With ``steps`` = T the input is one step's current fed at every step (a static
    image's layer 1): its gradient Σ_t g_t is summed in the loop, with no (T, ...) gradient array.
    β and θ are constants here (buffers; :func:`lif_scan` falls back to the
    step-by-step graph when either needs a gradient). Gradients equal the step-by-step graph's up
    to the order of float additions (and c_{t+1} may be added as one fused multiply-add).
    """

    @staticmethod
    def forward(
        ctx,
        I_seq: torch.Tensor,
        u0: torch.Tensor,
        beta: torch.Tensor,
        theta: torch.Tensor,  # type: ignore[override]
        slope: float,
        reset: str,
        memory_format: torch.memory_format | None = None,
        steps: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)  # an unused output (often u) gets no zero-filled gradient
        bc = beta.clamp(0, 1)
        th = float(theta)  # a float32 value: exact as a Python float and back
        shape = tuple(I_seq.shape) if steps is None else (steps, *I_seq.shape)
        us = _empty_steps(shape, I_seq, memory_format)
        z = _empty_steps(shape, I_seq, memory_format)
        r = (u0 - theta > 0).to(u0.dtype)  # r_0 from u0; r_t = z_{t−1} after
        u_prev = u0
        for t in range(shape[0]):  # step by step: each step's arrays stay in cache
            u = us[t]
            torch.mul(u_prev, bc, out=u)  # β_c·u_{t−1}  (zero reset: β_c·((1 − r)·u_{t−1}), the same
            if reset == "zero":  # value: the factor (1 − r) ∈ {0, 1} is exact in either order)
                u.mul_(1 - r)
            u.add_(I_seq if steps is not None else I_seq[t])  # + I_t
            if reset == "subtract":
                u.sub_(r, alpha=th)  # − r·θ
            torch.gt(u, th, out=z[t])  # z_t = [u_t − θ > 0]
            r = z[t]
            u_prev = u
        ctx.save_for_backward(us, z, u0, bc, theta)
        ctx.slope, ctx.reset, ctx.steps = slope, reset, steps
        return z, us

    @staticmethod
    def backward(ctx, grad_z: torch.Tensor | None, grad_u: torch.Tensor | None):  # type: ignore[override]
        us, z, u0, bc, theta = ctx.saved_tensors
        bcf, th, k = float(bc), float(theta), ctx.slope
        T = us.shape[0]
        if ctx.steps is None:
            grad_I = torch.empty_like(us)
            step_grad = grad_I.__getitem__
        else:  # one current for all steps: two step buffers and a sum
            pair = (torch.empty_like(us[0]), torch.empty_like(us[0]))
            step_grad = lambda t: pair[t % 2]  # noqa: E731
            grad_I = None
        for t in range(T - 1, -1, -1):
            g = step_grad(t)
            if grad_z is not None:  # ∂L/∂z_t / (1 + k|u_t − θ|)², as FastSigmoidSpike
                torch.sub(us[t], th, out=g)
                g.abs_().mul_(k).add_(1.0).pow_(2)
                torch.div(grad_z[t], g, out=g)
            else:
                g.zero_()
            if grad_u is not None:
                g += grad_u[t]
            if t + 1 < T:  # + c_{t+1}; r_{t+1} = z_t
                if ctx.reset == "zero":
                    g.addcmul_(step_grad(t + 1), 1 - z[t], value=bcf)
                else:
                    g.add_(step_grad(t + 1), alpha=bcf)
            if ctx.steps is not None:
                grad_I = g.clone() if grad_I is None else grad_I.add_(g)
        grad_u0 = None
        if ctx.needs_input_grad[1]:
            grad_u0 = bc * step_grad(0)
            if ctx.reset == "zero":
                grad_u0 *= 1 - (u0 - theta > 0).to(grad_u0.dtype)
        return grad_I, grad_u0, None, None, None, None, None, None


#: lif_scan runs as the single autograd node LIFScan (False: the step-by-step graph; bench/training.py
#: measures both).
FUSED = True


def lif_scan(
    I_seq: torch.Tensor,
    beta: torch.Tensor,
    theta: torch.Tensor,
    slope: float,
    reset: str = "subtract",
    u0: torch.Tensor | None = None,
    memory_format: torch.memory_format | None = None,
    steps: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run :func:`lif_step` over the leading time axis of ``I_seq`` (T, ...), or, with ``steps`` = T,
    feed the one current ``I_seq`` (...) at each of T steps (the same values as ``I_seq.expand(T, ...)``;
    the gradient summed over the steps inside the scan).

    Returns (z, u), both (T, ...); u0 defaults to zeros. Unless β or θ needs a gradient the scan is
    the single autograd node :class:`LIFScan` (the same values, one node instead of T steps' graphs).
    ``memory_format=torch.channels_last`` lays each step of a (T, B, C, H, W) output out channels-last
    (values unchanged; the step-by-step graph keeps its layout).
    """
    if reset not in ("subtract", "zero"):
        raise ValueError(f"reset must be 'subtract' or 'zero', got {reset!r}")
    if steps is not None and steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    if FUSED and (steps or I_seq.shape[0]) and not (beta.requires_grad or theta.requires_grad):
        start = torch.zeros_like(I_seq if steps else I_seq[0]) if u0 is None else u0
        return LIFScan.apply(I_seq, start, beta, theta, slope, reset, memory_format, steps)
    if steps is not None:
        I_seq = I_seq.expand(steps, *I_seq.shape)
    state = LIFState(torch.zeros_like(I_seq[0]) if u0 is None else u0)
    zs, us = [], []
    for I in I_seq:
        z, state = lif_step(I, state, beta, theta, slope, reset)
        zs.append(z)
        us.append(state.u)
    return torch.stack(zs), torch.stack(us)
