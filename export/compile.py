"""QONNX → :class:`~qsnn.network.IntegerNetwork` under a chip profile (reads only the ONNX file; no torch).

``compile_qonnx(path, profile)`` reads the float export (:mod:`.qonnx_float`), recovers every
layer's integer weights from its ``Quant`` node (or quantizes fp32 weights, see below), folds the
rest into per-channel integers on a membrane grid, and returns the network with a report of what
the integer form costs. ``read_integer_qonnx(path)`` reads an integer export (:mod:`.qonnx_int`)
back into the same network.

Folding (per layer, DESIGN.md): the real current into channel c is

    I_c = g_c · AP_p(W ⊛ x_real) + h_c = g_c · (s_w · s_in / p²) · SP_p(q ⊛ x_int) + h_c

(q the integer weights, s_w their scale, s_in the input scale — 1/255 for pixels, 1 for counts and
spikes — SP the p×p sum-pool, g_c = γ/√(σ²+ε) and h_c = b − μ·g_c from BatchNorm, or 1 and 0).
One integer accumulator unit is worth s_c = |g_c|·s_w·s_in/p²; a negative g_c flips the signs of
channel c's weights (safe: the range is narrow). With effective shift e, one membrane grid unit is
worth δ_c = s_c / 2^e, and

    θ_c = round(θ / δ_c / 2^ts) · 2^ts        (ts = profile.threshold_shift)
    b_c = round(h_c / δ_c)
    leak:  mul  m  = round(β · 2^leak_bits)
           shift d = round(−log2(1 − β))
           loihi dv = round((1 − β) · 2^leak_bits)

The effective shift e is split into the layer's ``current_shift`` s ≤ frac_bits and a weight
multiplier 2^k (k ≥ 0, e = s + k): a profile whose weights are wider than the model's (Loihi 2:
8-bit mantissas for 4-bit weights) stores the integers scaled up by 2^k (k at most the spare bits,
4 for Loihi 2) to gain threshold resolution beyond ``frac_bits`` guard bits. k > 0 only when
s = frac_bits.

**Shift rule.** e is the largest value ≤ frac_bits + k_max such that (a) thresholds and biases fit
their registers and every θ_c is below the membrane maximum, and (b) the worst-case membrane bound
(:func:`membrane_bound`: every input at its extreme, every step of the T steps, starting from zero)
stays inside the membrane range, so saturation can never occur. If (b) would need thresholds below
:data:`MIN_THRESHOLD_STEPS` steps of 2^ts, the layer cannot be represented without risking
saturation: :class:`~qsnn.errors.ProfileError` naming the layer and the limit, unless
``allow_saturation`` — then e is the largest value meeting (a) whose thresholds and biases leave
:data:`SATURATION_HEADROOM`× room in the membrane range, and the report says saturation may occur.

Worst-case inputs: pixels ≤ 255; event counts ≤ ``input_max`` (default
:data:`DEFAULT_EVENT_INPUT_MAX`, i.e. at most 15 events per input cell and step: per-bin counts of
DVS recordings are small, and a 16-bit worst case would leave no resolution); spikes ≤ 1.

**fp32 checkpoints** are quantized here, per tensor, to the profile's weight bits (narrow range,
scale max|W| / (2^(b−1)−1)): post-training quantization, with the weight error in the report.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from qsnn.arith import effective_beta, leak_const_of, pre_overflow, shl
from qsnn.errors import ExportError, ProfileError
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import ChipProfile

from .format import FLOAT_OPS, INPUT, OUTPUT, STATE_INPUTS, check_ops, check_qsnn_model, damaged_file_errors

#: Smallest accepted threshold, in steps of 2^threshold_shift grid units (relative error ≤ 1/32).
MIN_THRESHOLD_STEPS = 16
#: With ``allow_saturation``: the membrane range must hold this many times max(θ_c) + max|b_c|.
SATURATION_HEADROOM = 4
#: Worst-case event count per input cell and step assumed by the bound (``input_max`` overrides).
DEFAULT_EVENT_INPUT_MAX = 15
LOWEST_SHIFT = -40


# --------------------------------------------------------------------------------------------------
# The worst-case membrane bound


def membrane_bound(acc_max: np.ndarray, acc_min: np.ndarray, shift: int, bias: np.ndarray, theta: np.ndarray,
                   leak_const: int, profile: ChipProfile, num_steps: int) -> tuple[np.ndarray, np.ndarray]:
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
        no_reset = lo <= theta                     # some u ≤ θ in [lo, hi]: u in [lo, min(hi, θ)]
        resets = hi > theta                        # some u > θ in [lo, hi]: u in [max(lo, θ + 1), hi]
        lo_n, hi_n = step(lo, cmin), step(np.minimum(hi, theta), cmax)
        lo_r, hi_r = step(np.maximum(lo, theta + 1), cmin), step(hi, cmax)
        lo = np.minimum(np.where(no_reset, lo_n, big), np.where(resets, lo_r, big))
        hi = np.maximum(np.where(no_reset, hi_n, -big), np.where(resets, hi_r, -big))
        ext_lo, ext_hi = np.minimum(ext_lo, lo), np.maximum(ext_hi, hi)
    return ext_lo, ext_hi


# --------------------------------------------------------------------------------------------------
# Reading the float graph


@dataclass
class FloatLayer:
    """One layer as the float graph describes it (real-valued parameters)."""

    name: str
    kind: str                 # conv | dense
    q: np.ndarray | None      # integer weights (O, I[, k, k]) from the Quant node, or None (fp32)
    w_real: np.ndarray        # the real weights (q·scale, or the fp32 initializer), float64
    w_scale: np.ndarray | None  # per output channel scale of q, float64
    bit_width: int | None
    pool: int
    gain: np.ndarray          # BatchNorm g_c (ones without BN), float64
    shift: np.ndarray         # BatchNorm h_c (zeros without BN), float64
    membrane: str             # u1 | u2 | u3
    beta: float
    theta: float
    reset: str


class _Graph:
    def __init__(self, model: onnx.ModelProto, where: str) -> None:
        self.model = model
        self.where = where
        self.inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        for node in model.graph.node:  # Constant nodes count as initializers
            if node.op_type == "Constant" and node.attribute:
                attr = next((a for a in node.attribute if a.name == "value"), None)
                if attr is not None:
                    self.inits[node.output[0]] = numpy_helper.to_array(attr.t)
        self.producer = {o: n for n in model.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)

    def fail(self, what: str) -> ExportError:
        return ExportError(f"{self.where}: the graph does not have the qsnn layer structure: {what}")

    def attr(self, node: onnx.NodeProto, name: str, default: Any = None) -> Any:
        for a in node.attribute:
            if a.name == name:
                return onnx.helper.get_attribute_value(a)
        return default

    def const(self, name: str) -> np.ndarray | None:
        return self.inits.get(name)

    def only_consumer(self, tensor: str, what: str) -> onnx.NodeProto:
        users = [n for n in self.consumers.get(tensor, []) if n.op_type not in ("Identity",)]
        if len(users) != 1:
            raise self.fail(f"{what}: expected one consumer of {tensor!r}, found {[n.op_type for n in users]}")
        return users[0]

    def skip_identity(self, tensor: str) -> str:
        node = self.producer.get(tensor)
        while node is not None and node.op_type in ("Identity", "Dropout"):
            tensor = node.input[0]
            node = self.producer.get(tensor)
        return tensor

    def spike_source(self, tensor: str) -> str | None:
        """The membrane a spike tensor is computed from: Cast(Greater(Sub(u, θ), 0)) or Greater(u, θ)."""
        tensor = self.skip_identity(tensor)
        node = self.producer.get(tensor)
        while node is not None and node.op_type in ("Flatten", "Reshape", "Cast", "Identity", "Dropout"):
            tensor = node.input[0]
            node = self.producer.get(tensor)
        if node is None or node.op_type != "Greater":
            return None
        a, b = node.input
        sub = self.producer.get(a)
        if sub is not None and sub.op_type == "Sub" and self.const(b) is not None and float(self.const(b)) == 0.0:
            return sub.input[0]
        return a


def _quant_int(w: np.ndarray, scale: np.ndarray, zp: np.ndarray, bits: int, signed: int, narrow: int,
               mode: str) -> np.ndarray:
    """The integers of a qonnx ``Quant`` node (same steps as qonnx's ``int_quant``)."""
    from qonnx.custom_op.general.intquant import max_int, min_int, resolve_rounding_mode

    y = w / scale + zp
    lo, hi = min_int(signed, narrow, bits), max_int(signed, narrow, bits)
    y = np.where(y > hi, np.asarray(hi).astype(y.dtype), y)
    y = np.where(y < lo, np.asarray(lo).astype(y.dtype), y)
    y = resolve_rounding_mode(mode)(y) - zp
    return y.astype(np.int64)


def quant_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """{layer name: integer weights} recovered from the float export's ``Quant`` nodes (conv1, conv2, fc)."""
    layers = parse_float_graph(model, check_qsnn_model(model, kind="float")[1], "the ONNX model")
    out = {}
    for layer in layers:
        if layer.q is None:
            raise ExportError(f"layer {layer.name} has float weights (an fp32 export): no Quant node")
        out[layer.name] = layer.q
    return out


def _per_channel(scale: np.ndarray, shape: tuple[int, ...], axis: int, g: _Graph, name: str) -> np.ndarray:
    full = np.broadcast_to(np.asarray(scale, dtype=np.float64), shape)
    per = np.moveaxis(full, axis, 0).reshape(shape[axis], -1)
    if not np.all(per == per[:, :1]):
        raise g.fail(f"{name}: weight scale varies within an output channel (only per-tensor or per-output-channel scales)")
    return per[:, 0].copy()


def _weights(g: _Graph, node: onnx.NodeProto, name: str) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None, int | None]:
    """(q, w_real, per-channel scale, bit width) of a synapse, weights as (O, I[, k, k])."""
    tensor = node.input[1]
    transpose = node.op_type == "MatMul" or (node.op_type == "Gemm" and not g.attr(node, "transB", 0))
    src = g.producer.get(tensor)
    if src is not None and src.op_type == "Transpose":
        transpose = not transpose
        tensor = src.input[0]
        src = g.producer.get(tensor)
    if src is None:
        w = g.const(tensor)
        if w is None:
            raise g.fail(f"{name}: weight {tensor!r} is neither an initializer nor a Quant node output")
        w = np.asarray(w, dtype=np.float64)
        return None, (w.T if transpose else w), None, None
    if src.op_type != "Quant":
        raise g.fail(f"{name}: weight comes from a {src.op_type} node, expected Quant or an initializer")
    w, scale, zp, bits = (g.const(i) for i in src.input[:4])
    if any(v is None for v in (w, scale, zp, bits)):
        raise g.fail(f"{name}: Quant node inputs must be initializers")
    if np.any(zp != 0):
        raise g.fail(f"{name}: Quant zero point must be 0")
    bits_i = int(np.asarray(bits).item())
    signed, narrow = int(g.attr(src, "signed", 1)), int(g.attr(src, "narrow", 0))
    mode = g.attr(src, "rounding_mode", b"ROUND")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    q = _quant_int(w, scale, zp, bits_i, signed, narrow, mode)
    real = q * np.asarray(scale, dtype=np.float64)
    out_axis = q.ndim - 1 if transpose else 0
    per = _per_channel(np.broadcast_to(scale, q.shape), q.shape, out_axis, g, name)
    if transpose:
        q, real = q.T, real.T
    return q, np.asarray(real, dtype=np.float64), per, bits_i


def parse_float_graph(model: onnx.ModelProto, meta: dict[str, Any], where: str) -> list[FloatLayer]:
    """The layers of a float qsnn export, checked against its structure and metadata."""
    check_ops(model, FLOAT_OPS, where)
    g = _Graph(model, where)
    synapses = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    info = meta["layers"]
    if len(synapses) != len(info):
        raise g.fail(f"{len(synapses)} synaptic layers (Conv/MatMul) but the metadata lists {len(info)}")
    layers = []
    for i, (node, li) in enumerate(zip(synapses, info)):
        name = li["name"]
        # the input: x for the first layer, the previous layer's spikes after that
        src = g.skip_identity(node.input[0])
        if i == 0:
            if src != INPUT:
                raise g.fail(f"{name}: the first synapse must read the graph input 'x', reads {src!r}")
        elif g.spike_source(src) != f"{STATE_INPUTS[i - 1]}_out":
            raise g.fail(f"{name}: input is not the spikes of the previous layer ({STATE_INPUTS[i - 1]}_out > θ)")
        if node.op_type == "Conv":
            if any(v != 1 for v in g.attr(node, "strides", [1, 1])) or any(g.attr(node, "pads", [0, 0, 0, 0])) \
                    or g.attr(node, "group", 1) != 1 or any(v != 1 for v in g.attr(node, "dilations", [1, 1])):
                raise g.fail(f"{name}: only stride-1, unpadded, ungrouped convolutions")
            if len(node.input) > 2 and node.input[2]:
                raise g.fail(f"{name}: convolutions have no bias in a QSNN")
        elif node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
            raise g.fail(f"{name}: dense layers have no bias in a QSNN")
        q, w_real, w_scale, bits = _weights(g, node, name)
        kind = "conv" if node.op_type == "Conv" else "dense"
        if kind != li["kind"]:
            raise g.fail(f"{name}: graph has a {kind} layer, metadata says {li['kind']}")
        tensor = node.output[0]
        nxt = g.only_consumer(tensor, name)
        pool = 1
        if nxt.op_type == "AveragePool":
            ks, st = g.attr(nxt, "kernel_shape"), g.attr(nxt, "strides", None)
            if len(set(ks)) != 1 or list(st or ks) != list(ks) or any(g.attr(nxt, "pads", [0] * 4)):
                raise g.fail(f"{name}: pooling must be p×p with stride p and no padding")
            pool = int(ks[0])
            tensor = nxt.output[0]
            nxt = g.only_consumer(tensor, name)
        out_ch = w_real.shape[0]
        gain, shift = np.ones(out_ch), np.zeros(out_ch)
        if nxt.op_type == "BatchNormalization":
            gamma, b, mu, var = (np.asarray(g.const(t), dtype=np.float64) for t in nxt.input[1:5])
            eps = float(g.attr(nxt, "epsilon", 1e-5))
            gain = gamma / np.sqrt(var + eps)
            shift = b - mu * gain
            tensor = nxt.output[0]
            nxt = g.only_consumer(tensor, name)
        elif nxt.op_type in ("Cast", "Mul"):
            # x·α + β (the exact-BatchNorm form of the exporter), optionally in float64 between Casts
            cast_in = nxt.op_type == "Cast"
            mul = g.only_consumer(nxt.output[0], name) if cast_in else nxt
            add = g.only_consumer(mul.output[0], name) if mul.op_type == "Mul" else None
            if mul.op_type != "Mul" or add is None or add.op_type != "Add":
                raise g.fail(f"{name}: expected BatchNorm as Mul then Add after the pooling")
            alpha = next((g.const(t) for t in mul.input if g.const(t) is not None), None)
            beta_bn = next((g.const(t) for t in add.input if g.const(t) is not None), None)
            if alpha is None or beta_bn is None:
                raise g.fail(f"{name}: BatchNorm Mul/Add constants are not initializers")
            gain = np.asarray(alpha, dtype=np.float64).reshape(-1)
            shift = np.asarray(beta_bn, dtype=np.float64).reshape(-1)
            tensor = add.output[0]
            nxt = g.only_consumer(tensor, name)
            if cast_in:
                if nxt.op_type != "Cast":
                    raise g.fail(f"{name}: expected a Cast back to float after the BatchNorm")
                tensor = nxt.output[0]
                nxt = g.only_consumer(tensor, name)
            if gain.size == 1:
                gain = np.full(out_ch, gain.item())
            if shift.size == 1:
                shift = np.full(out_ch, shift.item())
            if gain.size != out_ch or shift.size != out_ch:
                raise g.fail(f"{name}: BatchNorm has {gain.size} channels, the synapse {out_ch}")
        # the LIF: Add(leaked membrane, I) [→ Sub(·, r·θ)] = u_out
        if nxt.op_type != "Add":
            raise g.fail(f"{name}: the current must enter the neuron through Add, found {nxt.op_type}")
        membrane = li["membrane"]
        out_name = f"{membrane}_out"
        if nxt.output[0] == out_name:
            reset = "zero"
        else:
            sub = g.only_consumer(nxt.output[0], name)
            if sub.op_type != "Sub" or sub.output[0] != out_name:
                raise g.fail(f"{name}: expected the membrane output {out_name!r} after the neuron's Add")
            reset = "subtract"
        other = next(t for t in nxt.input if t != tensor)
        mul = g.producer.get(other)
        if mul is None or mul.op_type != "Mul":
            raise g.fail(f"{name}: the leak must be a Mul by β")
        beta = next((g.const(t) for t in mul.input if g.const(t) is not None), None)
        if beta is None:
            raise g.fail(f"{name}: the leak factor β is not a constant")
        theta_node = next((n for n in g.consumers.get(membrane, []) if n.op_type == "Sub"), None)
        if theta_node is None or g.const(theta_node.input[1]) is None:
            raise g.fail(f"{name}: no reset comparison Sub({membrane}, θ)")
        theta = float(np.asarray(g.const(theta_node.input[1])).item())
        beta = float(np.asarray(beta).item())
        if not (np.float32(beta) == np.float32(meta["beta"]) and np.float32(theta) == np.float32(meta["threshold"])):
            raise ExportError(f"{where}: {name}: graph has β={beta}, θ={theta} but the metadata says "
                              f"β={meta['beta']}, θ={meta['threshold']}; the file was edited")
        if reset != meta["reset"]:
            raise ExportError(f"{where}: {name}: graph has {reset} reset, metadata says {meta['reset']}")
        layers.append(FloatLayer(name, kind, q, w_real, w_scale, bits, pool, gain, shift, membrane, beta, theta, reset))
    if g.spike_source(OUTPUT) != f"{STATE_INPUTS[-1]}_out":
        raise g.fail("output 'z3' is not the spikes of the last layer (u3_out > θ)")
    return layers


# --------------------------------------------------------------------------------------------------
# Compiling


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _quantize_fp32(w: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Per-tensor narrow-range quantization of fp32 weights: (q, per-channel scale, max |error|)."""
    qmax = 2 ** (bits - 1) - 1
    amax = float(np.max(np.abs(w))) if w.size else 0.0
    scale = amax / qmax if amax > 0 else 1.0
    q = np.clip(np.rint(w / scale), -qmax, qmax).astype(np.int64)
    err = float(np.max(np.abs(w - q * scale))) if w.size else 0.0
    return q, np.full(w.shape[0], scale), err


def _layer_fan(q: np.ndarray, pool: int, x_max: int) -> tuple[np.ndarray, np.ndarray]:
    """(largest, smallest) accumulator per channel for non-negative inputs ≤ x_max, sum-pooled p×p."""
    flat = q.reshape(q.shape[0], -1)
    pos = np.where(flat > 0, flat, 0).sum(axis=1)
    neg = np.where(flat < 0, flat, 0).sum(axis=1)
    return pos * x_max * pool * pool, neg * x_max * pool * pool


@dataclass
class _Choice:
    e: int
    s: int
    k: int
    theta: np.ndarray
    bias: np.ndarray
    delta: np.ndarray
    lo: np.ndarray
    hi: np.ndarray


def _grid(e: int, frac_bits: int, k_max: int, s_c: np.ndarray, theta: float, h: np.ndarray, ts: int):
    k = min(max(e - frac_bits, 0), k_max)
    s = e - k
    delta = s_c / 2.0**e
    th = np.rint(theta / delta / 2.0**ts) * 2.0**ts
    b = np.rint(h / delta)
    return s, k, delta, th, b


def _choose_shift(name: str, s_c: np.ndarray, h: np.ndarray, theta: float, acc_max: np.ndarray,
                  acc_min: np.ndarray, decay: int, profile: ChipProfile, T: int, k_max: int,
                  allow_saturation: bool) -> tuple[_Choice, bool, str]:
    """Pick the effective shift e by the rule of the module docstring; (choice, fits, note)."""
    p = profile
    ts = p.threshold_shift
    e_top = p.frac_bits + k_max
    last = None

    def regs_ok(th, b):
        return (np.all(th <= p.threshold_max) and np.all(np.abs(b) <= p.bias_max)
                and np.all(th < p.membrane_max) and np.all(np.abs(b) < 2**61))

    for e in range(e_top, LOWEST_SHIFT - 1, -1):
        s, k, delta, th, b = _grid(e, p.frac_bits, k_max, s_c, theta, h, ts)
        if not regs_ok(th, b):
            continue
        if np.min(th) < MIN_THRESHOLD_STEPS * 2**ts:
            break
        th_i, b_i = th.astype(np.int64), b.astype(np.int64)
        lo, hi = membrane_bound(acc_max << k, acc_min << k, s, b_i, th_i, decay, p, T)
        last = (e, int(lo.min()), int(hi.max()), int(th_i.min()))
        if lo.min() >= p.membrane_min and hi.max() <= p.membrane_max:
            return _Choice(e, s, k, th_i, b_i, delta, lo, hi), True, ""
    if not allow_saturation:
        detail = (f"at the lowest usable shift {last[0]} the bound is [{last[1]}, {last[2]}] with thresholds from "
                  f"{last[3]}" if last else "no shift keeps its thresholds and biases inside the registers")
        raise ProfileError(
            f"layer {name}: the worst-case membrane over T={T} steps does not fit the {p.name} profile's "
            f"{p.membrane_bits}-bit membrane [{p.membrane_min}, {p.membrane_max}] with thresholds of at least "
            f"{MIN_THRESHOLD_STEPS} steps ({detail}); widen the membrane (--profile-set membrane_bits=N) or allow "
            "saturation (--allow-saturation)")
    for e in range(e_top, LOWEST_SHIFT - 1, -1):
        s, k, delta, th, b = _grid(e, p.frac_bits, k_max, s_c, theta, h, ts)
        if not regs_ok(th, b) or np.max(th) <= 0:
            continue
        if SATURATION_HEADROOM * (np.max(th) + np.max(np.abs(b))) > p.membrane_max:
            continue
        th_i, b_i = th.astype(np.int64), b.astype(np.int64)
        lo, hi = membrane_bound(acc_max << k, acc_min << k, s, b_i, th_i, decay, p, T)
        note = (f"{name}: worst-case membrane [{int(lo.min())}, {int(hi.max())}] exceeds the {p.membrane_bits}-bit "
                f"range; allowed to saturate, it uses current shift {s}" + (f" with weights x{2**k}" if k else "")
                + f" (thresholds {int(th_i.min())}..{int(th_i.max())})")
        return _Choice(e, s, k, th_i, b_i, delta, lo, hi), False, note
    raise ProfileError(f"layer {name}: no current shift puts threshold θ={theta:g} on the {p.name} profile's "
                       f"{p.membrane_bits}-bit membrane with {SATURATION_HEADROOM}x headroom and a nonzero threshold "
                       f"(thresholds ≤ {p.threshold_max}, biases ≤ {p.bias_max})")


def compile_layers(layers: list[FloatLayer], meta: dict[str, Any], profile: ChipProfile, *,
                   allow_saturation: bool = False, input_max: int | None = None) -> tuple[IntegerNetwork, dict[str, Any]]:
    """Fold parsed float layers into an :class:`IntegerNetwork` under ``profile`` (see module docstring)."""
    p = profile
    T = int(meta["num_steps"])
    encoding = meta["encoding"]
    if input_max is None:
        input_max = 255 if encoding == "static" else DEFAULT_EVENT_INPUT_MAX
    beta, theta = float(np.float32(meta["beta"])), float(np.float32(meta["threshold"]))
    decay = leak_const_of(beta, p)
    beta_int = effective_beta(decay, p)
    notes: list[str] = []
    if meta["reset"] != p.reset:
        notes.append(f"trained with {meta['reset']} reset, profile {p.name!r} uses {p.reset} reset: "
                     "spikes can differ from the trained model")
    if encoding == "events":
        notes.append(f"worst-case bound assumes at most {input_max} events per input cell and step "
                     "(compile_qonnx(input_max=...)); larger counts may saturate")
    int_layers, reports = [], []
    saturation_possible = False
    for idx, layer in enumerate(layers):
        name = layer.name
        s_in = float(meta["input_scale"]) if idx == 0 else 1.0
        x_max = input_max if idx == 0 else 1
        report: dict[str, Any] = {"name": name, "kind": layer.kind, "pool": layer.pool}
        if layer.q is None:
            q, w_scale, err = _quantize_fp32(layer.w_real, p.weight_bits)
            amax = float(np.max(np.abs(layer.w_real))) or 1.0
            report["weight_quantization"] = {"bits": p.weight_bits, "max_abs_error": err,
                                             "max_rel_error": err / amax}
            if idx == 0:
                notes.append(f"fp32 checkpoint: weights quantized per tensor to {p.weight_bits} bits at compile time "
                             "(post-training quantization); expect an accuracy change")
        else:
            q, w_scale = layer.q.copy(), layer.w_scale
        wmax = int(np.max(np.abs(q))) if q.size else 0
        if wmax > p.weight_max:
            raise ProfileError(f"layer {name}: weights reach ±{wmax} but profile {p.name!r} holds "
                               f"{p.weight_bits}-bit weights (±{p.weight_max})")
        if p.max_fan_in and q[0].size > p.max_fan_in:
            raise ProfileError(f"layer {name}: fan-in {q[0].size} exceeds profile {p.name!r}'s limit {p.max_fan_in}")
        n_neurons = int(np.prod(meta["layers"][idx]["shape"]))
        if p.max_neurons and n_neurons > p.max_neurons:
            raise ProfileError(f"layer {name}: {n_neurons} neurons exceed profile {p.name!r}'s limit {p.max_neurons}")
        a = w_scale * s_in / layer.pool**2
        g = layer.gain
        flip = g < 0
        q[flip] = -q[flip]
        s_c = np.abs(g) * a
        dead = ~(s_c > 0)
        if np.any(dead):  # γ = 0: the current is the constant h_c
            q[dead] = 0
            s_c = np.where(dead, a, s_c)
            notes.append(f"{name}: {int(dead.sum())} channel(s) with BatchNorm γ = 0 carry only their bias")
        k_max = 0
        while wmax and wmax * 2 ** (k_max + 1) <= p.weight_max:
            k_max += 1
        acc_max, acc_min = _layer_fan(q, layer.pool, x_max)
        choice, fits, note = _choose_shift(name, s_c, layer.shift, theta, acc_max, acc_min, decay, p, T, k_max,
                                           allow_saturation)
        if note:
            notes.append(note)
        saturation_possible |= not fits
        weight = q << choice.k
        dtype = np.int8 if p.weight_bits <= 8 else (np.int16 if p.weight_bits <= 16 else np.int32)
        int_layers.append(IntegerLayer(
            name=name, kind=layer.kind, weight=weight.astype(dtype), pool=layer.pool, current_shift=choice.s,
            threshold=choice.theta, bias=choice.bias, decay=decay, scale=choice.delta.astype(np.float64), weight_exp=0))
        th_err = np.abs(choice.theta * choice.delta - theta)
        b_err = np.abs(choice.bias * choice.delta - layer.shift)
        bound_abs = max(abs(int(choice.lo.min())), abs(int(choice.hi.max())), 1)
        report.update({
            "current_shift": choice.s, "weight_multiplier": 2**choice.k, "effective_shift": choice.e,
            "weight_max_abs": int(np.max(np.abs(weight))) if weight.size else 0,
            "flipped_channels": int(flip.sum()),
            "threshold": {"min": int(choice.theta.min()), "max": int(choice.theta.max()),
                          "max_abs_error": float(th_err.max()), "max_rel_error": float(th_err.max() / theta)},
            "bias": {"max_abs": int(np.abs(choice.bias).max()), "max_abs_error": float(b_err.max()),
                     "max_rel_error": float(b_err.max() / theta)},
            "grid_unit": {"min": float(choice.delta.min()), "max": float(choice.delta.max())},
            "bound": {"min": int(choice.lo.min()), "max": int(choice.hi.max())},
            "membrane_range": [p.membrane_min, p.membrane_max],
            "headroom_bits": float(math.log2(p.membrane_max / bound_abs)),
            "saturation_possible": not fits,
        })
        reports.append(report)
    report = {
        "profile": p.name, "profile_fields": p.to_dict(),
        "trained": {"beta": beta, "threshold": theta, "reset": meta["reset"], "precision": meta["precision"]},
        "leak": {"kind": p.leak, "decay": decay, "beta": beta, "beta_integer": beta_int,
                 "abs_error": abs(beta - beta_int)},
        "num_steps": T, "input_max": input_max, "layers": reports,
        "saturation_possible": saturation_possible, "notes": notes,
        "rules": {"shift": "largest shift whose worst-case membrane bound fits (module qsnn.export.compile)",
                  "min_threshold_steps": MIN_THRESHOLD_STEPS, "saturation_headroom": SATURATION_HEADROOM},
    }
    report = _json_safe(report)
    net_meta = {k: v for k, v in meta.items() if k not in ("profile", "network", "compile_report")}
    net_meta["compile_report"] = report
    net = IntegerNetwork(
        layers=tuple(int_layers), profile=p, input_shape=tuple(int(v) for v in meta["input_shape"]),
        num_steps=T, encoding=encoding, classes=tuple(meta["classes"]), metadata=net_meta)
    return net, report


def compile_qonnx(onnx_path: str | os.PathLike, profile: ChipProfile, *, allow_saturation: bool = False,
                  input_max: int | None = None) -> tuple[IntegerNetwork, dict[str, Any]]:
    """Compile a float qsnn QONNX export to an :class:`IntegerNetwork` under ``profile``.

    Reads only the ONNX file. Returns the network (its ``metadata`` holds the ONNX metadata and the
    report under ``"compile_report"``) and the report: per layer the current shift, weight
    multiplier, threshold and bias errors (real units and relative to θ), worst-case membrane bound
    versus the profile's range and whether saturation may occur; the leak error; notes.

    Raises :class:`~qsnn.errors.ExportError` if the file is not a float qsnn export and
    :class:`~qsnn.errors.ProfileError` if the network cannot be represented under ``profile``.
    """
    where = str(onnx_path) if isinstance(onnx_path, (str, os.PathLike)) else "the ONNX model"
    model, meta = check_qsnn_model(onnx_path, kind="float")
    with damaged_file_errors(where):
        layers = parse_float_graph(model, meta, where)
        return compile_layers(layers, meta, profile, allow_saturation=allow_saturation, input_max=input_max)


# --------------------------------------------------------------------------------------------------
# Reading the integer graph back


def read_integer_qonnx(path: str | os.PathLike) -> IntegerNetwork:
    """The :class:`IntegerNetwork` of an integer qsnn export (:func:`qsnn.export.qonnx_int.export_integer`).

    Weights, thresholds and biases come from the graph's initializers (``<layer>.weight``,
    ``<layer>.threshold``, ``<layer>.bias``), the rest from the metadata; the two are cross-checked.
    """
    where = str(path) if isinstance(path, (str, os.PathLike)) else "the ONNX model"
    model, meta = check_qsnn_model(path, kind="integer")
    with damaged_file_errors(where):
        return _read_integer(model, meta, where)


def _read_integer(model: onnx.ModelProto, meta: dict[str, Any], where: str) -> IntegerNetwork:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    try:
        profile = ChipProfile.from_dict(meta["profile"])
        spec = meta["network"]
        layers = []
        for ls in spec["layers"]:
            name = ls["name"]
            arrays = {}
            for field in ("weight", "threshold", "bias"):
                arr = inits.get(f"{name}.{field}")
                if arr is None:
                    raise ExportError(f"{where}: initializer {name}.{field} is missing")
                if np.any(arr != np.round(arr)):
                    raise ExportError(f"{where}: {name}.{field} holds non-integers")
                arrays[field] = arr.astype(np.int64)
            w = arrays["weight"]
            if ls["kind"] == "dense":
                w = w.T  # stored (I, O) for MatMul
            dtype = np.int8 if profile.weight_bits <= 8 else (np.int16 if profile.weight_bits <= 16 else np.int32)
            layers.append(IntegerLayer(
                name=name, kind=ls["kind"], weight=np.ascontiguousarray(w).astype(dtype), pool=int(ls["pool"]),
                current_shift=int(ls["current_shift"]), threshold=arrays["threshold"].reshape(-1),
                bias=arrays["bias"].reshape(-1), decay=int(ls["decay"]),
                scale=np.asarray(ls["scale"], dtype=np.float64), weight_exp=int(ls.get("weight_exp", 0))))
        net_meta = {k: v for k, v in meta.items() if k not in ("profile", "network")}
        return IntegerNetwork(layers=tuple(layers), profile=profile, input_shape=tuple(spec["input_shape"]),
                              num_steps=int(spec["num_steps"]), encoding=spec["encoding"],
                              classes=tuple(spec["classes"]), metadata=net_meta)
    except ExportError:
        raise
    except (KeyError, TypeError, ValueError, ProfileError) as exc:
        raise ExportError(f"{where}: integer qsnn export has inconsistent metadata: {exc}") from None


def network_spec(net: IntegerNetwork) -> dict[str, Any]:
    """The JSON-able description of ``net`` (everything but the weight, threshold and bias arrays)."""
    return _json_safe({
        "input_shape": list(net.input_shape), "num_steps": net.num_steps, "encoding": net.encoding,
        "classes": list(net.classes),
        "layers": [{"name": l.name, "kind": l.kind, "pool": l.pool, "current_shift": l.current_shift,
                    "decay": l.decay, "weight_exp": l.weight_exp, "scale": [float(v) for v in l.scale],
                    "out_channels": l.out_channels} for l in net.layers],
    })
