"""Reading the float graph: a float qsnn QONNX export as the compiler needs it (no torch).

:func:`read_float_graph` is the first pass of the compiler (:mod:`.compile`): it checks the file
(:func:`.format.check_qsnn_model`), walks the graph in the exporter's op order
(:mod:`.qonnx_float`) and recovers per layer the integer weights of its ``Quant`` node (or the
fp32 weights), the pooling, BatchNorm's gain and offset and the LIF constants, all checked
against the metadata. What it returns is a :class:`FloatGraph` of plain, validated values; a
file it cannot read gives an :class:`~qsnn.errors.ExportError` naming the file.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from qsnn.data import ENCODINGS, input_max_problem
from qsnn.errors import ExportError
from qsnn.network import MAX_NUM_STEPS
from qsnn.profiles import RESETS

from .format import (
    FLOAT_OPS,
    INPUT,
    check_ops,
    check_qsnn_model,
    damaged_file_errors,
    delay_inputs,
    output_name,
    state_outputs,
)


@dataclass(frozen=True)
class FloatGraph:
    """A float qsnn export: its layers and the metadata the compiler uses, plain and checked.

    Attributes:
        layers: the synaptic layers, first to last.
        num_steps: T. encoding: ``"static"`` | ``"events"``. input_scale: real value of one integer
        input unit (1/255 for pixels). input_shape: (C, H, W). classes: class names.
        input_max: the largest integer input of one cell per step (255 for pixels; the event
        encoding's count clip), what the worst-case bound assumes.
        beta, theta, reset, precision: as trained (β and θ of the first layer as the model's float32
        values; every layer's are in its :class:`FloatLayer`), precision as the metadata names it
        (``int4``, ``int8``, ``mixed 2..8-bit``, ``fp32``).
        arch: the architecture spec (:mod:`qsnn.arch`) the metadata records.
        synaptic_delay: steps each synapse's input arrives late in the trained model (0, or 1 with
        the delay lines d1..dL as graph state). trained_profile: the chip profile the model was
        trained for ("" = none, the paper's semantics).
        layer_shapes: spike shape of each layer for one sample.
        metadata: the file's whole metadata (decoded).
        where: the file, for messages.
    """

    layers: tuple["FloatLayer", ...]
    num_steps: int
    encoding: str
    input_scale: float
    input_shape: tuple[int, int, int]
    input_max: int
    classes: tuple[str, ...]
    beta: float
    theta: float
    reset: str
    precision: str
    synaptic_delay: int
    trained_profile: str
    layer_shapes: tuple[tuple[int, ...], ...]
    metadata: dict[str, Any]
    where: str
    arch: str = ""


def read_float_graph(source: Any) -> FloatGraph:
    """The :class:`FloatGraph` of a float qsnn export (a path, ``ModelProto`` or qonnx ``ModelWrapper``).

    Everything the compiler uses is checked here (types, finite values, shapes that chain from the
    input to the classes), so that the passes after this one work on sound values. Raises
    :class:`~qsnn.errors.ExportError` naming the file if it is not a float qsnn export or is damaged.
    """
    where = str(source) if isinstance(source, (str, os.PathLike)) else "the ONNX model"
    model, meta = check_qsnn_model(source, kind="float")
    with damaged_file_errors(where):
        check = _Checker(meta, where)
        graph = FloatGraph(
            layers=(),
            num_steps=check.integer("num_steps", low=1, high=MAX_NUM_STEPS),
            encoding=check.choice("encoding", ENCODINGS),
            input_scale=check.real("input_scale", positive=True),
            input_shape=check.shape("input_shape", 3),
            input_max=check.integer("input_max", low=1, high=65535),
            classes=check.names("classes"),
            beta=float(np.float32(check.real("beta"))),
            theta=float(np.float32(check.real("threshold", positive=True))),
            reset=check.choice("reset", RESETS),
            precision=check.text("precision"),
            synaptic_delay=check.integer("synaptic_delay", low=0, high=1, default=0),
            trained_profile=check.text("trained_profile", default=""),
            layer_shapes=check.layer_shapes(),
            metadata=meta,
            where=where,
            arch=check.text("arch", default=""),
        )
        _check_input_range(graph, check)
        layers = parse_layers(model, meta, where)
        _check_layers(layers, graph, where)
        return dataclasses.replace(graph, layers=tuple(layers))


def _check_input_range(graph: FloatGraph, check: "_Checker") -> None:
    """``input_max`` is what the encoding makes it: 255 for uint8 pixels, an event encoding's count clip
    2^b − 1 (its ``event_frames`` when recorded); anything else is a damaged or edited file, which the
    compiler's worst-case bound and the simulator's input check must not trust."""
    m = graph.input_max
    problem = input_max_problem(graph.encoding, m)
    if graph.encoding == "static" and problem:
        raise check.fail("input_max", problem)
    if graph.encoding == "events":
        frames = graph.metadata.get("event_frames")
        bits = frames.get("count_bits") if isinstance(frames, dict) else None
        if problem or (isinstance(bits, int) and not isinstance(bits, bool) and m != (1 << bits) - 1):
            clip = f"{(1 << bits) - 1} (event_frames count_bits {bits})" if isinstance(bits, int) else "2^b − 1"
            raise check.fail("input_max", f"{clip}: an event encoding's count clip")


class _Checker:
    """Typed reads of metadata fields; a value of the wrong type or range is an ExportError naming the field."""

    def __init__(self, meta: dict[str, Any], where: str) -> None:
        self.meta, self.where = meta, where

    def fail(self, key: str, expected: str) -> ExportError:
        value = repr(self.meta.get(key))[:60]
        return ExportError(
            f"{self.where}: metadata field {key!r} is {value}, expected {expected}; the file is damaged "
            "or was edited (export the checkpoint again with qsnn-export)"
        )

    def integer(self, key: str, low: int, high: int, default: int | None = None) -> int:
        value = self.meta[key] if default is None else self.meta.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise self.fail(key, f"an integer in [{low}, {high}]")
        return value

    def real(self, key: str, positive: bool = False) -> float:
        value = self.meta[key]
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or (positive and not value > 0)
        ):
            raise self.fail(key, "a finite number" + (" > 0" if positive else ""))
        return float(value)

    def text(self, key: str, default: str | None = None) -> str:
        value = self.meta[key] if default is None else self.meta.get(key, default)
        if not isinstance(value, str):
            raise self.fail(key, "a string")
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.meta[key]
        if value not in choices:
            raise self.fail(key, f"one of {choices}")
        return value

    def shape(self, key: str, ndim: int | None = None, value: Any = None) -> tuple[int, ...]:
        value = self.meta[key] if value is None else value
        if (
            not isinstance(value, list)
            or (ndim is not None and len(value) != ndim)
            or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        ):
            raise self.fail(key, f"a list of {ndim or 'some'} positive integers")
        return tuple(value)

    def names(self, key: str) -> tuple[str, ...]:
        value = self.meta[key]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise self.fail(key, "a non-empty list of class names")
        return tuple(value)

    def layer_shapes(self) -> tuple[tuple[int, ...], ...]:
        layers = self.meta["layers"]
        if not isinstance(layers, list) or not all(isinstance(li, dict) for li in layers):
            raise self.fail("layers", "a list of layer records")
        for li in layers:
            for key in ("name", "kind", "membrane"):
                if not isinstance(li.get(key), str):
                    raise self.fail("layers", f"layer records with a {key!r} string")
        return tuple(self.shape("layers", value=li.get("shape")) for li in layers)


def _check_layers(layers: list["FloatLayer"], graph: FloatGraph, where: str) -> None:
    """The parsed layers' numbers are finite and their shapes chain from the input to the classes."""
    shape = graph.input_shape
    for layer, expected in zip(layers, graph.layer_shapes):
        arrays = {"weights": layer.w_real, "BatchNorm gain": layer.bn_gain, "BatchNorm offset": layer.bn_offset}
        if layer.w_scale is not None:
            arrays["weight scale"] = layer.w_scale
        if layer.bias is not None:
            arrays["bias"] = layer.bias
            if layer.bias.shape != (layer.w_real.shape[0],):
                raise ExportError(
                    f"{where}: layer {layer.name}: a bias of shape {layer.bias.shape} for "
                    f"{layer.w_real.shape[0]} output channels; the file is damaged or was edited"
                )
        for what, values in arrays.items():
            if not np.all(np.isfinite(values)):
                raise ExportError(
                    f"{where}: layer {layer.name}: its {what} are not all finite numbers; the file is "
                    "damaged or was edited"
                )
        if layer.w_scale is not None and not np.all(layer.w_scale > 0):
            raise ExportError(
                f"{where}: layer {layer.name}: the weight scale must be > 0; the file is damaged or was edited"
            )
        w = layer.w_real.shape
        if layer.kind == "conv":
            if len(w) != 4 or w[2] != w[3] or len(shape) != 3 or shape[0] != w[1]:
                raise ExportError(f"{where}: layer {layer.name}: conv weights {w} do not fit its input {shape}")
            side = tuple(((n + 2 * layer.padding - w[2]) // layer.stride + 1) // layer.pool for n in shape[1:])
            shape = (w[0], *side)
        else:
            if len(w) != 2 or w[1] != int(np.prod(shape)):
                raise ExportError(f"{where}: layer {layer.name}: dense weights {w} do not fit its input {shape}")
            shape = (w[0],)
        if shape != expected or min(shape) < 1:
            raise ExportError(
                f"{where}: layer {layer.name}: the graph gives spikes of shape {shape}, the metadata says "
                f"{expected}; the file is damaged or was edited"
            )
    if shape != (len(graph.classes),):
        raise ExportError(
            f"{where}: the last layer has {shape} outputs but the metadata lists {len(graph.classes)} "
            "classes; the file is damaged or was edited"
        )


@dataclass(frozen=True)
class FloatLayer:
    """One layer as the float graph describes it (real-valued parameters).

    Attributes:
        name, kind: the layer's name and ``"conv"`` | ``"dense"``.
        q: integer weights (O, I[, k, k]) from the ``Quant`` node, or None (an fp32 export).
        w_real: the real weights (q·scale, or the fp32 initializer), float64.
        w_scale: per-output-channel scale of q (float64), or None (fp32).
        bit_width: the ``Quant`` node's bit width, or None (fp32).
        pool: side p of the p×p stride-p average pooling (1 = none).
        bn_gain: BatchNorm's g_c = γ/√(σ² + ε) per channel (ones without BatchNorm), float64.
        bn_offset: BatchNorm's h_c = b − μ·g_c per channel (zeros without BatchNorm), float64.
        bn_arith: how the graph computes BatchNorm: ``"none"`` (no BatchNorm), ``"float64"``
            (``Cast, Mul, Add, Cast``: x·g + h in float64, rounded to float32), ``"float32"``
            (``Mul, Add`` in float32; g, h are then float32 values) or ``"op"`` (the standard
            ``BatchNormalization`` op, whose arithmetic is the runtime's).
        membrane: the layer's state input, ``u1`` .. ``uL``.
        beta, theta, reset: the LIF constants the graph holds (checked against the metadata).
        stride: the convolution's stride (1 for dense layers).
        padding: the convolution's zero padding on each side (symmetric; 0 for dense layers).
        bias: the real synaptic bias per output channel (float64), added to the synapse's output
            before the pooling (so the pooled current carries it once), or None without one.
    """

    name: str
    kind: str
    q: np.ndarray | None
    w_real: np.ndarray
    w_scale: np.ndarray | None
    bit_width: int | None
    pool: int
    bn_gain: np.ndarray
    bn_offset: np.ndarray
    bn_arith: str
    membrane: str
    beta: float
    theta: float
    reset: str
    stride: int = 1
    padding: int = 0
    bias: np.ndarray | None = None


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
        bad = [n for n, a in self.inits.items() if a.dtype.kind in "fc" and not np.all(np.isfinite(a))]
        if bad:  # a NaN weight would become an arbitrary integer in the cast below
            raise ExportError(
                f"{where}: the weights hold NaN or infinity (tensor {', '.join(bad[:4])}); the model it was "
                "exported from diverged, or the file was edited: export an earlier checkpoint"
            )
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

    def graph_input_of(self, tensor: str) -> str | None:
        """The graph input a tensor is, through Identity/Flatten/Reshape/Cast; None if it is computed."""
        node = self.producer.get(tensor)
        while node is not None and node.op_type in ("Flatten", "Reshape", "Cast", "Identity", "Dropout"):
            tensor = node.input[0]
            node = self.producer.get(tensor)
        return tensor if node is None and tensor in {i.name for i in self.model.graph.input} else None

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


def _quant_int(
    w: np.ndarray, scale: np.ndarray, zp: np.ndarray, bits: int, signed: int, narrow: int, mode: str
) -> np.ndarray:
    """The integers of a qonnx ``Quant`` node (same steps as qonnx's ``int_quant``)."""
    from qonnx.custom_op.general.intquant import max_int, min_int, resolve_rounding_mode

    y = w / scale + zp
    lo, hi = min_int(signed, narrow, bits), max_int(signed, narrow, bits)
    y = np.where(y > hi, np.asarray(hi).astype(y.dtype), y)
    y = np.where(y < lo, np.asarray(lo).astype(y.dtype), y)
    y = resolve_rounding_mode(mode)(y) - zp
    return y.astype(np.int64)


def quant_weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """{layer name: integer weights} recovered from the float export's ``Quant`` nodes (conv1, ..., fc)."""
    out = {}
    for layer in read_float_graph(model).layers:
        if layer.q is None:
            raise ExportError(f"layer {layer.name} has float weights (an fp32 export): no Quant node")
        out[layer.name] = layer.q
    return out


def _per_channel(scale: np.ndarray, shape: tuple[int, ...], axis: int, g: _Graph, name: str) -> np.ndarray:
    full = np.broadcast_to(np.asarray(scale, dtype=np.float64), shape)
    per = np.moveaxis(full, axis, 0).reshape(shape[axis], -1)
    if not np.all(per == per[:, :1]):
        raise g.fail(
            f"{name}: weight scale varies within an output channel (only per-tensor or per-output-channel scales)"
        )
    return per[:, 0].copy()


def _weights(
    g: _Graph, node: onnx.NodeProto, name: str
) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None, int | None]:
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
    if not (2 <= bits_i <= 32 and signed in (0, 1) and narrow in (0, 1)):
        raise g.fail(
            f"{name}: Quant node with bit width {bits_i}, signed={signed}, narrow={narrow} "
            "(a qsnn export has 2..32-bit weights)"
        )
    mode = g.attr(src, "rounding_mode", b"ROUND")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    q = _quant_int(w, scale, zp, bits_i, signed, narrow, mode)
    real = q * np.asarray(scale, dtype=np.float64)
    out_axis = q.ndim - 1 if transpose else 0
    per = _per_channel(np.broadcast_to(scale, q.shape), q.shape, out_axis, g, name)
    if transpose:
        q, real = q.T, real.T
    return q, np.asarray(real, dtype=np.float64), per, bits_i


def parse_layers(model: onnx.ModelProto, meta: dict[str, Any], where: str) -> list[FloatLayer]:
    """The layers of a float qsnn export, checked against its structure and metadata.

    The graph must have the exporter's op order per layer: synapse (Conv with its stride, symmetric
    pads and optional bias input | MatMul [→ Add of a bias] | Gemm [with a bias], weights from a
    ``Quant`` node, per tensor or per output channel, or an initializer) → AveragePool (optional) →
    BatchNorm (optional: ``BatchNormalization``, or ``Mul, Add`` between optional ``Cast``) → ``Add``
    into the membrane (→ ``Sub`` of r·θ for subtract reset). Stride, padding, bias, β and θ are
    checked against each layer's metadata record (a version-1 file: stride 1, no padding, no bias).
    With ``synaptic_delay`` 1 in the metadata each synapse reads its delay line (``d1`` for the
    first layer, ..., ``dL``), which the step refills through ``d*_out`` with this step's input (x,
    then the previous layer's spikes).
    """
    check_ops(model, FLOAT_OPS, where)
    g = _Graph(model, where)
    synapses = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    info = meta["layers"]
    lines, u_outs = delay_inputs(len(info)), state_outputs(len(info))
    delay = meta.get("synaptic_delay", 0)
    if delay not in (0, 1) or isinstance(delay, bool):
        raise g.fail(f"synaptic delay {delay!r} (a float export has delay 0 or 1)")
    if len(synapses) != len(info):
        raise g.fail(f"{len(synapses)} synaptic layers (Conv/MatMul) but the metadata lists {len(info)}")
    layers = []
    for i, (node, li) in enumerate(zip(synapses, info)):
        name = li["name"]
        # the input: x for the first layer, the previous layer's spikes after that
        src = g.skip_identity(node.input[0])
        if delay:  # the synapse reads its delay line, which the step refills with this step's input
            line, out = lines[i], f"{lines[i]}_out"
            feeds = g.skip_identity(out) if out in g.producer else None
            if g.graph_input_of(src) != line:
                raise g.fail(
                    f"{name}: with synaptic delay 1 the synapse must read the delay line {line!r}, reads {src!r}"
                )
            if i == 0 and feeds != INPUT:
                raise g.fail(f"{name}: the delay line {out} must be the input frame 'x'")
            if i > 0 and g.spike_source(feeds or "") != u_outs[i - 1]:
                raise g.fail(f"{name}: the delay line {out} must be the spikes of the previous layer")
        elif i == 0:
            if g.graph_input_of(src) != INPUT:  # x itself, or x flattened for a dense first layer
                raise g.fail(f"{name}: the first synapse must read the graph input 'x', reads {src!r}")
        elif g.spike_source(src) != u_outs[i - 1]:
            raise g.fail(f"{name}: input is not the spikes of the previous layer ({u_outs[i - 1]} > θ)")
        stride, padding, bias = 1, 0, None
        if node.op_type == "Conv":
            strides = list(g.attr(node, "strides", [1, 1]))
            pads = list(g.attr(node, "pads", [0, 0, 0, 0]))
            if g.attr(node, "group", 1) != 1 or any(v != 1 for v in g.attr(node, "dilations", [1, 1])):
                raise g.fail(f"{name}: only ungrouped, undilated convolutions")
            if len(set(strides)) != 1:
                raise g.fail(f"{name}: strides {strides} differ per axis; a qsnn layer has one stride")
            if len(set(pads)) > 1:
                raise g.fail(f"{name}: asymmetric padding {pads}; a qsnn layer pads every side alike")
            if g.attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                raise g.fail(f"{name}: auto_pad {g.attr(node, 'auto_pad')!r}; a qsnn export writes explicit pads")
            stride, padding = int(strides[0]), int(pads[0]) if pads else 0
            if stride < 1 or padding < 0:
                raise g.fail(f"{name}: stride {stride}, padding {padding}")
            if len(node.input) > 2 and node.input[2]:
                bias = _bias(g, node.input[2], name)
        elif node.op_type == "Gemm":
            if (
                float(g.attr(node, "alpha", 1.0)) != 1.0
                or float(g.attr(node, "beta", 1.0)) != 1.0
                or g.attr(node, "transA", 0)
            ):
                raise g.fail(f"{name}: Gemm with alpha, beta or transA; a qsnn export writes y = x·Wᵀ + b")
            if len(node.input) > 2 and node.input[2]:
                bias = _bias(g, node.input[2], name)
        q, w_real, w_scale, bits = _weights(g, node, name)
        kind = "conv" if node.op_type == "Conv" else "dense"
        if kind != li["kind"]:
            raise g.fail(f"{name}: graph has a {kind} layer, metadata says {li['kind']}")
        tensor = node.output[0]
        nxt = g.only_consumer(tensor, name)
        if node.op_type == "MatMul" and nxt.op_type == "Add":  # the bias of a MatMul synapse
            other = next((t for t in nxt.input if t != tensor), None)
            if other is not None and g.const(other) is not None:
                bias = _bias(g, other, name)
                tensor = nxt.output[0]
                nxt = g.only_consumer(tensor, name)
        if bias is not None and bias.size not in (1, w_real.shape[0]):
            raise g.fail(f"{name}: a bias of {bias.size} values for {w_real.shape[0]} output channels")
        if bias is not None and bias.size == 1:
            bias = np.full(w_real.shape[0], bias.item())
        for key, value, default in (("stride", stride, 1), ("padding", padding, 0), ("bias", bias is not None, False)):
            if li.get(key, default) != value:
                raise g.fail(f"{name}: the graph has {key} {value}, the metadata says {li.get(key)!r}")
        pool = 1
        if nxt.op_type == "AveragePool":
            ks, st = g.attr(nxt, "kernel_shape"), g.attr(nxt, "strides", None)
            if len(set(ks)) != 1 or list(st or ks) != list(ks) or any(g.attr(nxt, "pads", [0] * 4)):
                raise g.fail(f"{name}: pooling must be p×p with stride p and no padding")
            pool = int(ks[0])
            if pool < 1:
                raise g.fail(f"{name}: pooling of size {pool}")
            tensor = nxt.output[0]
            nxt = g.only_consumer(tensor, name)
        out_ch = w_real.shape[0]
        gain, offset, bn_arith = np.ones(out_ch), np.zeros(out_ch), "none"
        if nxt.op_type == "BatchNormalization":
            gamma, b, mu, var = (np.asarray(g.const(t), dtype=np.float64) for t in nxt.input[1:5])
            eps = float(g.attr(nxt, "epsilon", 1e-5))
            gain = gamma / np.sqrt(var + eps)
            offset = b - mu * gain
            bn_arith = "op"
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
            offset = np.asarray(beta_bn, dtype=np.float64).reshape(-1)
            bn_arith = "float64" if cast_in else "float32"
            tensor = add.output[0]
            nxt = g.only_consumer(tensor, name)
            if cast_in:
                if nxt.op_type != "Cast":
                    raise g.fail(f"{name}: expected a Cast back to float after the BatchNorm")
                tensor = nxt.output[0]
                nxt = g.only_consumer(tensor, name)
            if gain.size == 1:
                gain = np.full(out_ch, gain.item())
            if offset.size == 1:
                offset = np.full(out_ch, offset.item())
            if gain.size != out_ch or offset.size != out_ch:
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
        want_beta, want_theta = li.get("beta", meta["beta"]), li.get("threshold", meta["threshold"])
        if i == 0 and not (
            np.float32(meta["beta"]) == np.float32(beta) and np.float32(meta["threshold"]) == np.float32(theta)
        ):
            # the top-level β and θ are the first layer's (what readers of version 1 see)
            raise ExportError(
                f"{where}: {name}: graph has β={beta}, θ={theta} but the metadata's top-level "
                f"beta/threshold say β={meta['beta']}, θ={meta['threshold']}; the file was edited"
            )
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (want_beta, want_theta)) or not (
            np.float32(beta) == np.float32(want_beta) and np.float32(theta) == np.float32(want_theta)
        ):
            raise ExportError(
                f"{where}: {name}: graph has β={beta}, θ={theta} but the metadata says "
                f"β={want_beta}, θ={want_theta}; the file was edited"
            )
        if reset != meta["reset"]:
            raise ExportError(f"{where}: {name}: graph has {reset} reset, metadata says {meta['reset']}")
        layers.append(
            FloatLayer(
                name,
                kind,
                q,
                w_real,
                w_scale,
                bits,
                pool,
                gain,
                offset,
                bn_arith,
                membrane,
                beta,
                theta,
                reset,
                stride=stride,
                padding=padding,
                bias=bias,
            )
        )
    last, u_last = output_name(len(info)), state_outputs(len(info))[-1]
    if g.spike_source(last) != u_last:
        raise g.fail(f"output {last!r} is not the spikes of the last layer ({u_last} > θ)")
    return layers


def _bias(g: _Graph, tensor: str, name: str) -> np.ndarray:
    """A synapse's bias: a constant (initializer or Constant node), as float64, one value per output."""
    value = g.const(tensor)
    if value is None:
        raise g.fail(f"{name}: the bias {tensor!r} is not an initializer")
    return np.asarray(value, dtype=np.float64).reshape(-1).copy()
