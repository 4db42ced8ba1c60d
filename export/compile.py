"""QONNX → :class:`~qsnn.network.IntegerNetwork` under a chip profile (reads only the ONNX file; no torch).

``compile_qonnx(path, profile)`` compiles the float export (:mod:`.qonnx_float`) into integers and
returns the network with a report of what the integer form costs. The compiler is a pipeline of
small passes, each a function with one job, run in order over a :class:`Plan` (one
:class:`LayerPlan` per layer) — in the manner of qonnx's graph transformations:

1. :func:`~.float_graph.read_float_graph` reads the float graph and checks every value the other
   passes use (the only pass that reads the file, and the only place a damaged file is reported
   as such: an error in a later pass is a bug, and keeps its traceback);
2. :func:`check_input_port`: the declared input range (``input_max``) fits the profile's input port;
   :func:`quantize_fp32_weights`: the integer weights (the ``Quant`` node's, or fp32 weights
   quantized here); :func:`check_profile_limits`: weight width, fan-in, neurons and the current
   register fit the profile (recorded, the passes go on);
3. :func:`fold_batchnorm_and_pooling`: the real value s_c of one accumulator unit per channel;
4. :func:`flip_negative_gains`: channels with BatchNorm γ < 0 get negated weights (γ = 0: none);
5. :func:`choose_membrane_grid`: the shift, thresholds and biases (the shift rule below; a layer
   whose threshold, bias or worst-case membrane no shift holds is recorded as a limit);
   :func:`refuse_limits`: every limit recorded so far, of every layer, in ONE
   :class:`~qsnn.errors.LimitsError` (``.problems``: one line each, naming the layer and the
   ``--profile-set`` field or the profile that would hold it);
6. :func:`emit_integer_layers`: the :class:`~qsnn.network.IntegerLayer` objects;
7. :func:`write_report`: the compile report, and the network that carries it in its metadata.

The integer export (:mod:`.qonnx_int`) is read back by its writer's module
(:func:`.qonnx_int.read_integer_qonnx`).

Folding (per layer, docs/architecture.md): the real current into channel c is

    I_c = g_c · AP_p(W ⊛_{s,pad} x_real + β_c) + h_c
        = g_c · (s_w · s_in / p²) · SP_p(q ⊛_{s,pad} x_int) + (g_c · β_c + h_c)

(q the integer weights, s_w their scale, s_in the input scale — 1/255 for pixels, 1 for counts and
spikes — SP the p×p sum-pool, β_c the trained synaptic bias (0 without one), added before the
pooling, which leaves a constant as it is; g_c = γ/√(σ²+ε) and h_c = b − μ·g_c from BatchNorm, or 1
and 0). The convolution's stride s and zero padding pad choose which inputs are summed, not what a
unit is worth: they pass to the integer layer unchanged. One integer accumulator unit is worth
s_c = |g_c|·s_w·s_in/p²; a negative g_c flips the signs of channel c's weights (safe: the range is
narrow). The constant part of the current, o_c = g_c·β_c + h_c, becomes the bias. With effective
shift e, one membrane grid unit is worth δ_c = s_c / 2^e, and

    θ_c = round(θ / δ_c / 2^ts) · 2^ts        (ts = profile.threshold_shift)
    b_c = round(o_c / δ_c / 2^bs) · 2^bs      (bs = profile.bias_shift)
    leak constant: mul  m  = round(β · 2^leak_bits)          (:func:`qsnn.arith.leak_const_of`)
                   shift d = round(−log2(1 − β))
                   loihi dv = round((1 − β) · 2^leak_bits)

The effective shift e is split into the layer's ``current_shift`` s ≤ frac_bits and a weight
multiplier 2^m (m ≥ 0, e = s + m): a profile whose weights are wider than the model's (Loihi 2:
8-bit mantissas for 4-bit weights) stores the integers scaled up by 2^m (m at most the spare bits,
4 for Loihi 2) to gain threshold resolution beyond ``frac_bits`` guard bits. m > 0 only when
s = frac_bits.

**Shift rule.** e is the largest value ≤ frac_bits + m_max such that (a) thresholds and biases fit
their registers and every θ_c is below the membrane maximum, and (b) the worst-case membrane bound
(:func:`membrane_bound`: every input at its extreme, every step of the T steps, starting from zero)
stays inside the membrane range, so saturation can never occur. If (b) would need thresholds below
:data:`MIN_THRESHOLD_STEPS` steps of 2^ts, the layer cannot be represented without risking
saturation: :class:`~qsnn.errors.ProfileError` naming the layer and the limit, unless
``allow_saturation`` — then e is the largest value meeting (a) whose thresholds and biases leave
:data:`SATURATION_HEADROOM`× room in the membrane range, and the report says saturation may occur.

**Fixed shift** (``profile.fixed_shift``; Loihi 2 through netx, always ``a_in << 6``): s = frac_bits
on every layer and only m varies, so e runs from frac_bits + m_max down to frac_bits. If no m meets
(b), the file cannot carry a smaller current: m = 0 is used without ``allow_saturation``, and the
report says the membrane may saturate (and the current register wrap); the simulator counts what
happens. Biases beyond their register are then clipped to it (the error is in the report's bias
figures). A threshold no m can hold is an error. With ``profile.current_bits`` the synaptic sums
(times 2^m) must also fit the current register (Lava's Conv wraps ``a_out`` at 24 bits): an error
otherwise. On a ``fold_pool`` profile the weight range and fan-in are checked on the kernel with
the pooling folded in (the taps the target stores), and m_max is counted on those taps.

Worst-case inputs: a channel's accumulator lies between the sums of its negative and of its
positive weights times the largest input (:func:`accumulator_range`), whatever the stride; zero
padding only puts zeros under some taps, which stays inside that range, so the bound holds for
padded layers too. The first layer's inputs ≤ the export's ``input_max`` (pixels 255; event counts
the encoding's clip 2^event_bits − 1, applied identically in training, simulation and on the chip,
so the bound is the real one), which must fit the profile's input port (``input_bits``); spikes ≤ 1.

**fp32 checkpoints** are quantized here, per tensor, to the profile's weight bits (narrow range,
scale max|W| / (2^(b−1)−1)): post-training quantization, with the weight error in the report. On a
``fold_pool`` profile b shrinks until p² taps of the largest weight fit the weight range; on a
``fixed_shift`` profile until θ fits the threshold register at shift frac_bits (a coarser scale
makes one grid unit larger).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from qsnn.arch import fan_in_fix, smaller_map_fix
from qsnn.arith import effective_beta, leak_const_of, pre_overflow, shl
from qsnn.errors import LimitsError, ProfileError
from qsnn.jsonio import to_jsonable
from qsnn.network import IntegerLayer, IntegerNetwork, fold_pool
from qsnn.profiles import PROFILES, ChipProfile

from .float_graph import FloatGraph, FloatLayer, read_float_graph

#: Smallest accepted threshold, in steps of 2^threshold_shift grid units (relative error ≤ 1/32).
MIN_THRESHOLD_STEPS = 16
#: With ``allow_saturation``: the membrane range must hold this many times max(θ_c) + max|b_c|.
SATURATION_HEADROOM = 4
LOWEST_SHIFT = -40


# --------------------------------------------------------------------------------------------------
# The worst-case membrane bound


def membrane_bound(
    acc_max: np.ndarray,
    acc_min: np.ndarray,
    shift: int,
    bias: np.ndarray,
    theta: np.ndarray,
    leak_const: int,
    profile: ChipProfile,
    num_steps: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (lowest, highest) membrane any input can produce within ``num_steps`` steps.

    Interval arithmetic over the integer step (:func:`qsnn.arith.pre_overflow`), starting from
    u = 0, with the accumulator anywhere in [acc_min, acc_max] at every step. Within the no-reset
    part of an interval (u ≤ θ) and within its reset part (u > θ) the step is monotone in u and in
    the current (the leak is), so the step at the ends of each part bounds the next membrane.
    Values are the ones before overflow (what the membrane would need to hold).
    """
    cmax = shl(acc_max, shift) + bias
    cmin = shl(acc_min, shift) + bias
    lo = np.zeros_like(cmax)
    hi = np.zeros_like(cmax)
    ext_lo, ext_hi = lo.copy(), hi.copy()
    big = np.iinfo(np.int64).max // 4

    def step(u: np.ndarray, current: np.ndarray) -> np.ndarray:
        return pre_overflow(u, current, theta, leak_const, profile)

    for _ in range(num_steps):
        no_reset = lo <= theta  # some u ≤ θ in [lo, hi]: u in [lo, min(hi, θ)]
        resets = hi > theta  # some u > θ in [lo, hi]: u in [max(lo, θ + 1), hi]
        lo_n, hi_n = step(lo, cmin), step(np.minimum(hi, theta), cmax)
        lo_r, hi_r = step(np.maximum(lo, theta + 1), cmin), step(hi, cmax)
        new_lo = np.minimum(np.where(no_reset, lo_n, big), np.where(resets, lo_r, big))
        new_hi = np.maximum(np.where(no_reset, hi_n, -big), np.where(resets, hi_r, -big))
        if np.array_equal(new_lo, lo) and np.array_equal(new_hi, hi):
            break  # a fixed point: every later step gives this interval again
        lo, hi = new_lo, new_hi
        ext_lo, ext_hi = np.minimum(ext_lo, lo), np.maximum(ext_hi, hi)
    return ext_lo, ext_hi


# --------------------------------------------------------------------------------------------------
# What the passes work on


@dataclass
class Grid:
    """The membrane grid of one layer: effective shift e = s + m, and the constants on that grid."""

    effective_shift: int  # e
    current_shift: int  # s ≤ frac_bits
    weight_mult_exp: int  # m: the weights are stored times 2^m
    theta: np.ndarray  # θ_c, int64
    bias: np.ndarray  # b_c, int64
    unit: np.ndarray  # δ_c = s_c / 2^e: real membrane value of one grid unit
    bound_lo: np.ndarray  # worst-case membrane per channel (before overflow)
    bound_hi: np.ndarray
    fits: bool  # the bound lies inside the membrane range
    note: str = ""


@dataclass
class LayerPlan:
    """One layer on its way through the passes; each pass fills its own fields."""

    source: FloatLayer
    index: int
    input_scale: float  # s_in: 1/255 for pixels, 1 for counts and spikes
    input_max: int  # the largest input value the bound assumes
    leak_const: int  # the layer's integer leak constant (of its own β)
    q: np.ndarray | None = None  # integer weights (quantize_fp32_weights, flip_negative_gains)
    weight_scale: np.ndarray | None = None  # s_w per channel
    weight_max_abs: int = 0  # max |q| as read or quantized
    stored_max_abs: int = 0  # max |tap| the target stores (the folded kernel on fold_pool)
    acc_range: tuple[np.ndarray, np.ndarray] | None = None  # worst-case (largest, smallest) sum per channel
    weight_quantization: dict[str, Any] | None = None
    acc_unit: np.ndarray | None = None  # s_c = |g_c|·s_w·s_in/p² (fold_batchnorm_and_pooling)
    offset: np.ndarray | None = None  # o_c = g_c·β_c + h_c: the constant current (real units)
    dead: np.ndarray | None = None  # channels with g_c = 0: the current is the bias alone
    flipped: np.ndarray | None = None  # channels with g_c < 0 (flip_negative_gains)
    grid: Grid | None = None  # choose_membrane_grid
    layer: IntegerLayer | None = None  # emit_integer_layers
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.source.name


@dataclass
class Plan:
    """The compilation of one float graph under one profile."""

    graph: FloatGraph
    profile: ChipProfile
    allow_saturation: bool
    input_max: int
    leak_const: int
    layers: list[LayerPlan]
    notes: list[str] = field(default_factory=list)
    limits: list[str] = field(default_factory=list)  # profile limits the network exceeds (one error)
    network: IntegerNetwork | None = None
    report: dict[str, Any] | None = None

    @classmethod
    def start(cls, graph: FloatGraph, profile: ChipProfile, *, allow_saturation: bool = False) -> "Plan":
        """The plan before any pass: the leak constant of β, the worst-case inputs (the export's declared
        ``input_max``), and the notes on them."""
        input_max = graph.input_max
        layers = [
            LayerPlan(
                source=layer,
                index=i,
                input_scale=graph.input_scale if i == 0 else 1.0,
                input_max=input_max if i == 0 else 1,
                leak_const=leak_const_of(layer.beta, profile),
            )
            for i, layer in enumerate(graph.layers)
        ]
        plan = cls(
            graph=graph,
            profile=profile,
            allow_saturation=allow_saturation,
            input_max=input_max,
            leak_const=leak_const_of(graph.beta, profile),
            layers=layers,
        )
        trained_for = mismatch_warning(graph.metadata, profile)
        if trained_for:
            plan.notes.append(trained_for)
        if graph.encoding == "events":
            plan.notes.append(
                f"event counts clipped to {input_max} per input cell and step ({input_max.bit_length()}-bit "
                "input, the training's encoding); the worst-case bound assumes exactly this"
            )
        return plan


# --------------------------------------------------------------------------------------------------
# The passes


def _folds(profile: ChipProfile, layer: FloatLayer) -> bool:
    """The target stores this layer's kernel with its pooling folded in."""
    return profile.fold_pool and layer.kind == "conv" and layer.pool > 1


def _stored(profile: ChipProfile, layer: FloatLayer, q: np.ndarray) -> np.ndarray:
    """The taps the target's weight memory holds: the kernel with its pooling folded in (stride s·p,
    :func:`qsnn.network.fold_pool`) on a ``fold_pool`` profile, the weights themselves elsewhere."""
    return fold_pool(q, layer.pool, stride=layer.stride) if _folds(profile, layer) else q


def _taps_per_weight(layer: FloatLayer) -> int:
    """The most pooled positions one folded tap adds up: min(p, ⌈k/s⌉)² (p² at stride 1)."""
    k = layer.w_real.shape[2]
    return min(layer.pool, -(-k // layer.stride)) ** 2


def _fp32_bits(plan: Plan, lp: LayerPlan, amax: float) -> int:
    """Bits for quantizing an fp32 layer: the profile's, fewer where folded taps or θ would not fit."""
    p, src = plan.profile, lp.source
    bits = p.weight_bits
    while _folds(p, src) and bits > 2 and (2 ** (bits - 1) - 1) * _taps_per_weight(src) > p.weight_max:
        bits -= 1
    if p.fixed_shift and amax > 0:
        # the shift cannot drop below frac_bits, so one grid unit is s_c / 2^frac_bits: a coarser
        # weight scale (fewer bits) until θ fits the threshold register at that shift
        gains = np.abs(src.bn_gain)
        g_min = float(np.min(gains[gains > 0], initial=1.0))
        while bits > 2:
            unit = g_min * amax / (2 ** (bits - 1) - 1) * lp.input_scale / src.pool**2 / 2.0**p.frac_bits
            if src.theta / unit <= min(p.threshold_max, p.membrane_max - 1):
                break
            bits -= 1
    return bits


def quantize_fp32_weights(plan: Plan) -> None:
    """Integer weights per layer: the ``Quant`` node's integers, or fp32 weights quantized per tensor
    to the profile's bits (narrow range, scale max|W| / (2^(b−1) − 1); fewer bits where the module
    docstring says), with the error in the report."""
    for lp in plan.layers:
        src = lp.source
        if src.q is not None:
            lp.q, lp.weight_scale = src.q.copy(), src.w_scale
        else:
            w = src.w_real
            amax = float(np.max(np.abs(w))) if w.size else 0.0
            bits = _fp32_bits(plan, lp, amax)
            qmax = 2 ** (bits - 1) - 1
            scale = amax / qmax if amax > 0 else 1.0
            lp.q = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int64)
            lp.weight_scale = np.full(w.shape[0], scale)
            err = float(np.max(np.abs(w - lp.q * scale))) if w.size else 0.0
            lp.weight_quantization = {"bits": bits, "max_abs_error": err, "max_rel_error": err / (amax or 1.0)}
            if lp.index == 0:
                plan.notes.append(
                    f"fp32 checkpoint: weights quantized per tensor to {plan.profile.weight_bits} bits "
                    "or fewer at compile time (post-training quantization); expect an accuracy change"
                )
        lp.weight_max_abs = int(np.max(np.abs(lp.q))) if lp.q.size else 0


def check_input_port(plan: Plan) -> None:
    """A network whose inputs exceed the profile's input port (``input_bits``) cannot go to the chip
    (it could not receive them, and the bound would not hold): recorded in ``plan.limits``, refused
    with the other limits by :func:`check_profile_limits`."""
    p, graph = plan.profile, plan.graph
    if plan.input_max <= p.input_max:
        return
    what = "event counts up to" if graph.encoding == "events" else "pixels up to"
    fix = f"retrain with --event-bits {p.input_bits} or fewer, or " if graph.encoding == "events" else ""
    plan.limits.append(
        f"the model takes {what} {plan.input_max} per input cell and step but the {p.name} profile's "
        f"input port carries {p.input_bits}-bit values (up to {p.input_max}); {fix}widen the port "
        f"(--profile-set input_bits={plan.input_max.bit_length()})"
    )


def _weight_bits_needed(max_abs: int) -> int:
    """The narrow signed width b that holds ±max_abs: 2^(b−1) − 1 ≥ max_abs."""
    return max(2, int(max_abs).bit_length() + 1)


def _weight_limit(plan: Plan, lp: LayerPlan, stored: np.ndarray) -> str:
    """The sentence refusing a layer whose stored weights are wider than the profile's, with the
    ``--profile-set weight_bits=N`` and the built-in profiles that would hold them."""
    p, src = plan.profile, lp.source
    folds = _folds(p, src)
    what = (
        f"weights with the {src.pool}×{src.pool} pooling folded into the kernel"
        if folds
        else f"{src.bit_width}-bit weights"
        if src.bit_width
        else "weights"
    )
    bits = _weight_bits_needed(lp.stored_max_abs)
    others = [
        name
        for name, other in PROFILES.items()
        if name != p.name and np.max(np.abs(_stored(other, src, lp.q)), initial=0) <= other.weight_max
    ]
    alt = "".join(f" or --profile {name}" for name in others)
    fit = ""
    if folds:  # the folded kernel sums p² trained weights: narrower training weights fit the chip's own width
        fitting = [b for b in range(2, 9) if (2 ** (b - 1) - 1) * src.pool**2 <= p.weight_max]
        train_bits = max(fitting, default=None)
        if train_bits:
            fit = f", or train with --weight-bits {train_bits} (the {src.pool}×{src.pool} pooling sums {src.pool**2} weights)"
    return (
        f"layer {lp.name}: {what} reach ±{lp.stored_max_abs} but profile {p.name!r} holds {p.weight_bits}-bit "
        f"weights (±{p.weight_max}); use --profile-set weight_bits={bits}{alt}{fit}"
    )


def check_profile_limits(plan: Plan) -> None:
    """Record in ``plan.limits`` weights wider than the profile's (per layer: each layer has its own
    width), layers beyond its fan-in or neuron limits (on the folded kernel for a ``fold_pool``
    profile) and synaptic sums beyond its current register, each naming the layer and the
    ``--profile-set`` field (or the profile) that would hold it. The passes go on (the membrane grid
    adds its own limits); :func:`refuse_limits` raises them all in one error."""
    p = plan.profile
    shapes = plan.graph.layer_shapes
    for i, (lp, shape) in enumerate(zip(plan.layers, shapes)):
        folds = _folds(p, lp.source)
        stored = _stored(p, lp.source, lp.q)  # what the target's weight memory holds
        lp.stored_max_abs = int(np.max(np.abs(stored))) if stored.size else 0
        if lp.stored_max_abs > p.weight_max:
            plan.limits.append(_weight_limit(plan, lp, stored))
        fan_in = stored[0].size
        # the network change that fits comes first: raising the limit only simulates beyond the chip's
        if p.max_fan_in and fan_in > p.max_fan_in:
            in_channels = stored.shape[1]
            source = plan.layers[i - 1].name if i else None
            in_shape = shapes[i - 1] if i else plan.graph.input_shape
            fix = fan_in_fix(lp.source.kind, in_channels, fan_in // in_channels, in_shape, p.max_fan_in, source)
            plan.limits.append(
                f"layer {lp.name}: fan-in {fan_in}{' (pooling folded in)' if folds else ''} exceeds "
                f"profile {p.name!r}'s limit of {p.max_fan_in} synapses per neuron; {fix} (or simulate "
                f"beyond the limit: --profile-set max_fan_in={fan_in})"
            )
        neurons = int(np.prod(shape))
        if p.max_neurons and neurons > p.max_neurons:
            fix = smaller_map_fix(tuple(shape), p.max_neurons, f"layer {lp.name}", "neurons")
            plan.limits.append(
                f"layer {lp.name}: {neurons} neurons exceed profile {p.name!r}'s limit {p.max_neurons}; {fix} "
                f"(or simulate beyond the limit: --profile-set max_neurons={neurons})"
            )
        if p.current_bits:
            live = np.where((lp.source.bn_gain != 0).reshape((-1,) + (1,) * (lp.q.ndim - 1)), lp.q, 0)
            acc_max, acc_min = accumulator_range(live, lp.source.pool, lp.input_max)
            big, half = max(int(acc_max.max()), int(-acc_min.min())), 2 ** (p.current_bits - 1)
            if big >= half:
                plan.limits.append(
                    f"layer {lp.name}: synaptic sums reach ±{big} (every input at {lp.input_max}), beyond the "
                    f"{p.name} profile's {p.current_bits}-bit dendritic accumulator (±{half - 1}); use smaller "
                    f"weights or fewer inputs per neuron (or --profile-set current_bits={big.bit_length() + 1})"
                )


def fold_batchnorm_and_pooling(plan: Plan) -> None:
    """s_c = |g_c|·s_w·s_in/p²: the real value of one accumulator unit of channel c (average pooling
    becomes sum pooling, BatchNorm's gain and the input and weight scales fold into it); and
    o_c = g_c·β_c + h_c: the constant current (the synaptic bias through BatchNorm, and its shift)."""
    for lp in plan.layers:
        src = lp.source
        per_unit = lp.weight_scale * lp.input_scale / src.pool**2
        unit = np.abs(src.bn_gain) * per_unit
        lp.dead = ~(unit > 0)
        lp.acc_unit = np.where(lp.dead, per_unit, unit)  # γ = 0: any unit; the current is the constant o_c
        lp.offset = constant_current(src)


def constant_current(src: FloatLayer) -> np.ndarray:
    """o_c = g_c·β_c + h_c per channel, in real units: the synaptic bias β_c, added before pooling (a
    constant pools to itself), through BatchNorm (gain g_c, shift h_c); h_c alone without a bias."""
    return src.bn_offset if src.bias is None else src.bn_gain * np.asarray(src.bias, np.float64) + src.bn_offset


def trained_neurons(graph: FloatGraph) -> list[dict[str, Any]]:
    """Per layer, the trained LIF constants the integer form approximates: β, θ, reset, the constant
    current o_c per channel (:func:`constant_current`) and the synaptic delay (what
    :class:`qsnn.sim.explain.TrainedNeurons` takes)."""
    return [
        {
            "beta": float(layer.beta),
            "theta": float(layer.theta),
            "reset": layer.reset,
            "offset": np.asarray(constant_current(layer), np.float64),
            "delay": int(graph.synaptic_delay),
        }
        for layer in graph.layers
    ]


def flip_negative_gains(plan: Plan) -> None:
    """Negate the weights of channels whose BatchNorm gain is negative (safe: the range is narrow);
    zero those of channels whose gain is 0 (they carry only their bias)."""
    for lp in plan.layers:
        lp.flipped = lp.source.bn_gain < 0
        lp.q[lp.flipped] = -lp.q[lp.flipped]
        if np.any(lp.dead):
            lp.q[lp.dead] = 0
            lp.notes.append(f"{lp.name}: {int(lp.dead.sum())} channel(s) with BatchNorm γ = 0 carry only their bias")


def choose_membrane_grid(plan: Plan) -> None:
    """The effective shift, thresholds and biases of every layer by the shift rule (module docstring)."""
    p = plan.profile
    for lp in plan.layers:
        m_max = 0
        while lp.stored_max_abs and lp.stored_max_abs * 2 ** (m_max + 1) <= p.weight_max:
            m_max += 1
        acc_max, acc_min = accumulator_range(lp.q, lp.source.pool, lp.input_max)
        lp.acc_range = (acc_max, acc_min)
        if p.current_bits:  # the sums fit the register (check_profile_limits)
            big, half = max(int(acc_max.max()), int(-acc_min.min())), 2 ** (p.current_bits - 1)
            while m_max and big << m_max >= half:  # the weight multiplier scales the sums too
                m_max -= 1
        try:
            lp.grid = _choose_grid(
                lp.name,
                lp.acc_unit,
                lp.offset,
                lp.source.theta,
                acc_max,
                acc_min,
                lp.leak_const,
                p,
                plan.graph.num_steps,
                m_max,
                plan.allow_saturation,
                trained_for_chip=plan.graph.trained_profile == p.name,
            )
        except ProfileError as exc:  # threshold or bias register, membrane bound: one limit of this layer
            plan.limits.append(str(exc))
            continue
        if lp.grid.note:
            lp.notes.append(lp.grid.note)


def refuse_limits(plan: Plan) -> None:
    """Raise every limit the passes recorded (input port, weight width, fan-in, neurons, current
    register, threshold and bias registers, membrane bound) in ONE :class:`~qsnn.errors.LimitsError`."""
    if plan.limits:
        raise LimitsError(plan.limits, f"profile {plan.profile.name!r} cannot hold this network")


def emit_integer_layers(plan: Plan) -> None:
    """The :class:`~qsnn.network.IntegerLayer` of every layer (weights times 2^m in the profile's dtype)."""
    p = plan.profile
    dtype = np.int8 if p.weight_bits <= 8 else (np.int16 if p.weight_bits <= 16 else np.int32)
    for lp in plan.layers:
        g = lp.grid
        weight = lp.q << g.weight_mult_exp
        lp.layer = IntegerLayer(
            name=lp.name,
            kind=lp.source.kind,
            weight=weight.astype(dtype),
            pool=lp.source.pool,
            current_shift=g.current_shift,
            threshold=g.theta,
            bias=g.bias,
            leak_const=lp.leak_const,
            scale=g.unit.astype(np.float64),
            weight_exp=0,
            stride=lp.source.stride,
            padding=lp.source.padding,
        )


def write_report(plan: Plan) -> None:
    """The compile report (per layer: shift, multiplier, threshold and bias errors, worst-case bound
    against the membrane range; the leak error; notes) and the network that carries it."""
    p, graph = plan.profile, plan.graph
    layers = []
    for lp in plan.layers:
        g, weight = lp.grid, lp.layer.weight
        src = lp.source
        rep: dict[str, Any] = {
            "name": lp.name,
            "kind": src.kind,
            "pool": src.pool,
            "stride": src.stride,
            "padding": src.padding,
            "weight_bits": src.bit_width or (lp.weight_quantization or {}).get("bits"),
            "synaptic_bias": src.bias is not None,
        }
        if lp.weight_quantization is not None:
            rep["weight_quantization"] = lp.weight_quantization
        theta, beta_l = src.theta, effective_beta(lp.leak_const, p)
        th_err = np.abs(g.theta * g.unit - theta)
        b_err = np.abs(g.bias * g.unit - lp.offset)
        bound_abs = max(abs(int(g.bound_lo.min())), abs(int(g.bound_hi.max())), 1)
        rep.update(
            {
                "beta": src.beta,
                "decay": lp.leak_const,
                "beta_integer": beta_l,
                "theta": theta,
                "current_shift": g.current_shift,
                "weight_multiplier": 2**g.weight_mult_exp,
                "effective_shift": g.effective_shift,
                "weight_max_abs": int(np.max(np.abs(weight))) if weight.size else 0,
                "flipped_channels": int(lp.flipped.sum()),
                "threshold": {
                    "min": int(g.theta.min()),
                    "max": int(g.theta.max()),
                    "max_abs_error": float(th_err.max()),
                    "max_rel_error": float(th_err.max() / theta),
                },
                "bias": {
                    "max_abs": int(np.abs(g.bias).max()),
                    "max_abs_error": float(b_err.max()),
                    "max_rel_error": float(b_err.max() / theta),
                },
                "grid_unit": {"min": float(g.unit.min()), "max": float(g.unit.max())},
                "bound": {"min": int(g.bound_lo.min()), "max": int(g.bound_hi.max())},
                "membrane_range": [p.membrane_min, p.membrane_max],
                "headroom_bits": float(math.log2(p.membrane_max / bound_abs)),
                "saturation_possible": not g.fits,
                "current_wrap_possible": _current_wraps(lp, p),
            }
        )
        layers.append(rep)
    beta_int = effective_beta(plan.leak_const, p)
    leak_err = max(
        [abs(graph.beta - beta_int)] + [abs(lp.source.beta - effective_beta(lp.leak_const, p)) for lp in plan.layers]
    )
    report = {
        "profile": p.name,
        "profile_fields": p.to_dict(),
        "trained": {
            "beta": graph.beta,
            "threshold": graph.theta,
            "reset": graph.reset,
            "precision": graph.precision,
            "profile": graph.trained_profile,
            "synaptic_delay": graph.synaptic_delay,
        },
        "leak": {
            "kind": p.leak,
            "decay": plan.leak_const,
            "beta": graph.beta,
            "beta_integer": beta_int,
            "abs_error": leak_err,
        },
        "num_steps": graph.num_steps,
        "input_max": plan.input_max,
        "layers": layers,
        "saturation_possible": any(not lp.grid.fits for lp in plan.layers),
        "notes": plan.notes + [note for lp in plan.layers for note in lp.notes],
        "rules": {
            "shift": "largest shift whose worst-case membrane bound fits (module qsnn.export.compile)",
            "min_threshold_steps": MIN_THRESHOLD_STEPS,
            "saturation_headroom": SATURATION_HEADROOM,
        },
    }
    plan.report = to_jsonable(report)
    net_meta = {k: v for k, v in graph.metadata.items() if k not in ("profile", "network", "compile_report")}
    net_meta["compile_report"] = plan.report
    plan.network = IntegerNetwork(
        layers=tuple(lp.layer for lp in plan.layers),
        profile=p,
        input_shape=graph.input_shape,
        num_steps=graph.num_steps,
        encoding=graph.encoding,
        classes=graph.classes,
        metadata=net_meta,
        input_max=plan.input_max,
    )


#: The passes after reading the float graph, in order.
PASSES: tuple[Callable[[Plan], None], ...] = (
    check_input_port,
    quantize_fp32_weights,
    check_profile_limits,
    fold_batchnorm_and_pooling,
    flip_negative_gains,
    choose_membrane_grid,
    refuse_limits,
    emit_integer_layers,
    write_report,
)


def compile_plan(graph: FloatGraph, profile: ChipProfile, *, allow_saturation: bool = False) -> Plan:
    """Run :data:`PASSES` over a read float graph and return the whole :class:`Plan`: besides the network
    and report, what each integer came from (per layer the weight scale s_w, flipped and dead channels,
    the grid's shift e = s + m and unit δ_c), which integer-exact fine-tuning (:mod:`qsnn.train.finetune`)
    needs to route gradients through the compiler's own rounding."""
    plan = Plan.start(graph, profile, allow_saturation=allow_saturation)
    for compile_pass in PASSES:
        compile_pass(plan)
    return plan


def compile_graph(
    graph: FloatGraph, profile: ChipProfile, *, allow_saturation: bool = False
) -> tuple[IntegerNetwork, dict[str, Any]]:
    """Run :data:`PASSES` over a read float graph: (network, compile report)."""
    plan = compile_plan(graph, profile, allow_saturation=allow_saturation)
    return plan.network, plan.report


def compile_qonnx(
    onnx_path: str | os.PathLike, profile: ChipProfile, *, allow_saturation: bool = False
) -> tuple[IntegerNetwork, dict[str, Any]]:
    """Compile a float qsnn QONNX export to an :class:`IntegerNetwork` under ``profile``.

    Reads only the ONNX file. Returns the network (its ``metadata`` holds the ONNX metadata and the
    report under ``"compile_report"``) and the report: per layer the current shift, weight
    multiplier, threshold and bias errors (real units and relative to θ), worst-case membrane bound
    versus the profile's range and whether saturation may occur; the leak error; notes.

    Raises :class:`~qsnn.errors.ExportError` if the file is not a float qsnn export and
    :class:`~qsnn.errors.ProfileError` if the network cannot be represented under ``profile``.
    """
    graph = read_float_graph(onnx_path)  # the one pass that reads the file (and may call it damaged)
    return compile_graph(graph, profile, allow_saturation=allow_saturation)


# --------------------------------------------------------------------------------------------------
# The membrane grid


def accumulator_range(q: np.ndarray, pool: int, x_max: int) -> tuple[np.ndarray, np.ndarray]:
    """(largest, smallest) accumulator per channel for non-negative inputs ≤ x_max, sum-pooled p×p."""
    flat = q.reshape(q.shape[0], -1)
    pos = np.where(flat > 0, flat, 0).sum(axis=1)
    neg = np.where(flat < 0, flat, 0).sum(axis=1)
    return pos * x_max * pool * pool, neg * x_max * pool * pool


def mismatch_warning(meta: dict[str, Any], profile: ChipProfile) -> str:
    """A sentence when ``profile`` is not what the model (its float export's metadata) was trained
    for — another reset or synaptic delay, or another chip profile — else "". A model trained with
    the paper's semantics under a profile with the same semantics (fpga) gets no warning."""
    trained = str(meta.get("trained_profile") or "")
    delay = int(meta.get("synaptic_delay") or 0)
    diffs = []
    if meta.get("reset") != profile.reset:
        diffs.append(f"{meta.get('reset')} reset (the profile: {profile.reset} reset)")
    if delay != profile.synaptic_delay:
        diffs.append(f"synaptic delay {delay} (the profile: {profile.synaptic_delay})")
    if not diffs and trained in ("", profile.name):
        return ""
    what = f"trained for profile {trained!r}" if trained else "not trained for a chip profile"
    detail = f" with {', '.join(diffs)}" if diffs else ""
    return (
        f"the model was {what}{detail} but is simulated under profile {profile.name!r}: spikes can differ from "
        f"the trained model (train with qsnn-train run --profile {profile.name})"
    )


def _current_wraps(lp: LayerPlan, p: ChipProfile) -> bool:
    """Some input can drive the layer's shifted sum out of the current register (it would wrap)."""
    if not p.current_bits:
        return False
    g, (acc_max, acc_min) = lp.grid, lp.acc_range
    half = 1 << (p.current_bits - 1)
    m, s = g.weight_mult_exp, g.current_shift
    return bool(shl(acc_max << m, s).max() > half or shl(acc_min << m, s).min() <= -half)


def _on_grid(
    e: int, frac_bits: int, m_max: int, acc_unit: np.ndarray, theta: float, offset: np.ndarray, profile: ChipProfile
):
    """(s, m, δ, θ_c, b_c) for effective shift e: θ_c and b_c still float (rounded), for the register checks."""
    ts, bs = profile.threshold_shift, profile.bias_shift
    m = min(max(e - frac_bits, 0), m_max)
    s = e - m
    unit = acc_unit / 2.0**e
    th = np.rint(theta / unit / 2.0**ts) * 2.0**ts
    b = np.rint(offset / unit / 2.0**bs) * 2.0**bs
    return s, m, unit, th, b


def _choose_grid(
    name: str,
    acc_unit: np.ndarray,
    offset: np.ndarray,
    theta: float,
    acc_max: np.ndarray,
    acc_min: np.ndarray,
    leak_const: int,
    profile: ChipProfile,
    T: int,
    m_max: int,
    allow_saturation: bool,
    suggest: bool = True,
    trained_for_chip: bool = False,
) -> Grid:
    """Pick the effective shift e by the rule of the module docstring (and its fixed-shift variant); a
    fixed-shift refusal computes the ``--threshold`` that would fit unless ``suggest`` is False, and
    advises training for the chip unless the model already was (``trained_for_chip``)."""
    p = profile
    ts = p.threshold_shift
    e_top = p.frac_bits + m_max
    e_low = p.frac_bits if p.fixed_shift else LOWEST_SHIFT
    last = None

    def regs_ok(th, b):
        return (
            np.all(th <= p.threshold_max)
            and np.all(np.abs(b) <= p.bias_max)
            and np.all(th < p.membrane_max)
            and np.all(np.abs(b) < 2**61)
        )

    for e in range(e_top, e_low - 1, -1):
        s, m, unit, th, b = _on_grid(e, p.frac_bits, m_max, acc_unit, theta, offset, p)
        if not regs_ok(th, b):
            continue
        if np.min(th) < MIN_THRESHOLD_STEPS * 2**ts:
            break
        th_i, b_i = th.astype(np.int64), b.astype(np.int64)
        lo, hi = membrane_bound(acc_max << m, acc_min << m, s, b_i, th_i, leak_const, p, T)
        last = (e, int(lo.min()), int(hi.max()), int(th_i.min()))
        if lo.min() >= p.membrane_min and hi.max() <= p.membrane_max:
            return Grid(e, s, m, th_i, b_i, unit, lo, hi, fits=True)
    if p.fixed_shift:
        return _fixed_shift_fallback(
            name, acc_unit, offset, theta, acc_max, acc_min, leak_const, p, T, m_max, allow_saturation, suggest,
            trained_for_chip,
        )  # fmt: skip
    if not allow_saturation:
        detail = (
            f"at the lowest usable shift {last[0]} the bound is [{last[1]}, {last[2]}] with thresholds from {last[3]}"
            if last
            else "no shift keeps its thresholds and biases inside the registers"
        )
        raise ProfileError(
            f"layer {name}: the worst-case membrane over T={T} steps does not fit the {p.name} profile's "
            f"{p.membrane_bits}-bit membrane [{p.membrane_min}, {p.membrane_max}] with thresholds of at least "
            f"{MIN_THRESHOLD_STEPS} steps ({detail}); widen the membrane (--profile-set membrane_bits=N) or allow "
            "saturation (--allow-saturation)"
        )
    for e in range(e_top, LOWEST_SHIFT - 1, -1):
        s, m, unit, th, b = _on_grid(e, p.frac_bits, m_max, acc_unit, theta, offset, p)
        if not regs_ok(th, b) or np.max(th) <= 0:
            continue
        if SATURATION_HEADROOM * (np.max(th) + np.max(np.abs(b))) > p.membrane_max:
            continue
        th_i, b_i = th.astype(np.int64), b.astype(np.int64)
        lo, hi = membrane_bound(acc_max << m, acc_min << m, s, b_i, th_i, leak_const, p, T)
        note = (
            f"{name}: worst-case membrane [{int(lo.min())}, {int(hi.max())}] exceeds the {p.membrane_bits}-bit "
            f"range; allowed to saturate, it uses current shift {s}"
            + (f" with weights x{2**m}" if m else "")
            + f" (thresholds {int(th_i.min())}..{int(th_i.max())})"
        )
        return Grid(e, s, m, th_i, b_i, unit, lo, hi, fits=False, note=note)
    raise ProfileError(
        f"layer {name}: no current shift puts threshold θ={theta:g} on the {p.name} profile's "
        f"{p.membrane_bits}-bit membrane with {SATURATION_HEADROOM}x headroom and a nonzero threshold "
        f"(thresholds ≤ {p.threshold_max}, biases ≤ {p.bias_max}); widen the membrane (--profile-set "
        "membrane_bits=N) or the threshold register (--profile-set threshold_bits=N)"
    )


def _threshold_steps(m: int, acc_unit: np.ndarray, theta: float, offset: np.ndarray, p: ChipProfile):
    """(s, δ, θ_c, b_c, θ_c in steps of 2^ts) at a fixed-shift profile's current shift s = frac_bits with
    weights x2^m, i.e. :func:`_on_grid` at effective shift e = frac_bits + m."""
    s, _, unit, th, b = _on_grid(p.frac_bits + m, p.frac_bits, m, acc_unit, theta, offset, p)
    return s, unit, th, b, th / 2**p.threshold_shift


def _round_sig(x: float, up: bool, digits: int = 3) -> float:
    """``x`` rounded up (or down) to ``digits`` significant digits: a number a user types."""
    scale = 10.0 ** (digits - 1 - math.floor(math.log10(x)))
    return (math.ceil(x * scale) if up else math.floor(x * scale)) / scale


def _threshold_fix(
    name: str,
    acc_unit: np.ndarray,
    offset: np.ndarray,
    theta: float,
    acc_max: np.ndarray,
    acc_min: np.ndarray,
    leak_const: int,
    p: ChipProfile,
    T: int,
    m_max: int,
) -> str:
    """The ``--threshold`` nearest to θ with which this layer compiles at these weights on a fixed-shift profile,
    as a phrase for its refusal. θ_c = rint(θ·2^(frac_bits+m) / s_c / 2^ts) steps of 2^ts: at least
    :data:`MIN_THRESHOLD_STEPS` from θ_m = (MIN_THRESHOLD_STEPS − ½)·s_c·2^ts / 2^(frac_bits+m) with weights x2^m,
    and within the threshold register (largest at m = 0) up to θ_hi. A θ too small for every m tries θ_m for m
    from m_max down (the bound grows with θ, so at a given m the smallest θ is the best chance; m = 0 always
    compiles, saturating), a θ too large takes θ_hi; each candidate, rounded to 3 significant digits (outward)
    and stored as float32 (as training stores ``--threshold``), is checked by :func:`_choose_grid` itself."""
    ts = p.threshold_shift
    k = 2.0**p.frac_bits / (np.asarray(acc_unit, np.float64) * 2.0**ts)  # steps of 2^ts per unit of θ at m = 0
    largest_steps = min(p.threshold_max, p.membrane_max - 1) // 2**ts
    up = theta < (MIN_THRESHOLD_STEPS - 0.5) / float(k.min())
    if up:
        candidates = [(MIN_THRESHOLD_STEPS - 0.5) / float(k.min()) / 2**m for m in range(m_max, -1, -1)]
    else:
        candidates = [(largest_steps + 0.5) / float(k.max())]

    def compiles(value: float) -> bool:
        try:
            _choose_grid(name, acc_unit, offset, float(np.float32(value)), acc_max, acc_min, leak_const, p, T, m_max,
                         False, suggest=False)  # fmt: skip
        except ProfileError:
            return False
        return True

    for raw in candidates:
        value = _round_sig(raw, up=up)
        for _ in range(3):  # a boundary that float32 rounding moves by a digit in the last place
            if compiles(value):
                sign = "≥" if up else "≤"
                return f"at these weights this layer compiles with --threshold {sign} {value:g} (retrain with it)"
            value = _round_sig(value * (1.001 if up else 0.999), up=up)
    return "no --threshold makes this layer fit at these weights"


def _fixed_shift_fallback(
    name: str,
    acc_unit: np.ndarray,
    offset: np.ndarray,
    theta: float,
    acc_max: np.ndarray,
    acc_min: np.ndarray,
    leak_const: int,
    p: ChipProfile,
    T: int,
    m_max: int = 0,
    allow_saturation: bool = False,
    suggest: bool = True,
    trained_for_chip: bool = False,
) -> Grid:
    """No weight multiplier keeps the worst case inside the membrane on a fixed-shift profile: the
    file cannot carry a smaller current, so m = 0 at s = frac_bits (the least overflow), biases
    clipped to their register, and the report says the membrane may saturate (counted in simulation).

    Where m = 0 leaves θ fewer than :data:`MIN_THRESHOLD_STEPS` steps, ``allow_saturation`` takes the
    smallest m ≤ m_max that gives it that many (more current per input, so more saturation: counted);
    without it, or where no m does, the layer is refused with the computed changes that would hold it:
    the ``--threshold`` range at these weights (:func:`_threshold_fix`) and the multiplier
    ``--allow-saturation`` would use."""
    ts = p.threshold_shift
    largest = min(p.threshold_max, p.membrane_max - 1)
    m = 0
    s, unit, th, b, steps = _threshold_steps(m, acc_unit, theta, offset, p)

    def fix() -> str:
        chip = "" if trained_for_chip else f"train for the chip (qsnn-train run --profile {p.name})"
        if not suggest:
            return chip or "retrain with another --threshold"
        found = _threshold_fix(name, acc_unit, offset, theta, acc_max, acc_min, leak_const, p, T, m_max)
        return f"{found}, or {chip}" if chip else found

    if np.any(th > largest):
        raise ProfileError(
            f"layer {name}: threshold θ={theta:g} needs {int(th.max())} grid units at the {p.name} profile's fixed "
            f"current shift {p.frac_bits}, beyond its largest threshold {largest} ({p.threshold_bits}-bit vth << {ts}); "
            f"the weights are too small for this threshold: {fix()}"
        )
    if np.min(th) < MIN_THRESHOLD_STEPS * 2**ts:

        def fewest_steps(k: int) -> int | None:  # θ's fewest steps at weights x2^k, None where the register overflows
            _, _, th_k, _, steps_k = _threshold_steps(k, acc_unit, theta, offset, p)
            return int(steps_k.min()) if th_k.max() <= largest else None

        finer, finer_steps = next(
            ((k, n) for k in range(1, m_max + 1) if (n := fewest_steps(k)) is not None and n >= MIN_THRESHOLD_STEPS),
            (None, None),
        )
        if finer is None or not allow_saturation:
            saturating = (
                f"; or compile with --allow-saturation (weights x{2**finer}: θ then {finer_steps} "
                "steps; the membrane may saturate, as qsnn-sim counts and Lava clamps)"
                if finer is not None
                else f" (no weight multiplier up to x{2**m_max} gives it {MIN_THRESHOLD_STEPS} steps)"
            )
            raise ProfileError(
                f"layer {name}: threshold θ={theta:g} is only {int(th.min())} grid units at the {p.name} profile's "
                f"fixed current shift {p.frac_bits} ({int(steps.min())} steps of 2^{ts}, fewer than "
                f"{MIN_THRESHOLD_STEPS}), and no weight multiplier gives it {MIN_THRESHOLD_STEPS} steps with the "
                f"worst-case membrane inside {p.membrane_bits} bits; the weights are too large for this threshold: "
                f"{fix()}{saturating}"
            )
        m = finer
        s, unit, th, b, steps = _threshold_steps(m, acc_unit, theta, offset, p)
    clipped = np.abs(b) > p.bias_max
    th_i, b_i = th.astype(np.int64), np.clip(b, -p.bias_max, p.bias_max).astype(np.int64)
    lo, hi = membrane_bound(acc_max << m, acc_min << m, s, b_i, th_i, leak_const, p, T)
    fits = bool(lo.min() >= p.membrane_min and hi.max() <= p.membrane_max)
    notes = []
    if m:
        notes.append(
            f"allowed to saturate (--allow-saturation), weights x{2**m} give threshold θ {int(steps.min())} steps of "
            f"2^{ts} (x1 would leave fewer than {MIN_THRESHOLD_STEPS})"
        )
    if not fits:
        notes.append(
            f"worst-case membrane [{int(lo.min())}, {int(hi.max())}] exceeds the {p.membrane_bits}-bit range "
            f"and the {p.name} profile's current shift is fixed at {p.frac_bits} (no smaller current can be "
            "expressed): the membrane may saturate"
            + (" and the current register wrap" if p.current_bits else "")
            + " (counted in simulation)"
        )
    if np.any(clipped):
        notes.append(
            f"{int(clipped.sum())} bias(es) clipped to the {p.bias_bits}-bit mantissa (±{p.bias_max} grid units)"
        )
    return Grid(
        p.frac_bits + m, s, m, th_i, b_i, unit, lo, hi, fits=fits, note=f"{name}: " + "; ".join(notes) if notes else ""
    )
