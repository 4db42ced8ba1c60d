"""An independent implementation of :func:`qsnn.arith.int_lif_step` as a QONNX graph, held equal to it by ``tests/test_arith.py``.

The integer-domain one-step graph of an :class:`~qsnn.network.IntegerNetwork` (no torch):
``export_integer(net, out)`` writes the compiled network as a QONNX/ONNX graph whose every value is
an integer held exactly, so that any executor (qonnx's ``execute_onnx``, onnxruntime) reproduces the
chip arithmetic of :mod:`qsnn.arith` bit for bit::

    inputs  x (N, C, H, W) integer input (uint8 pixels or event counts) as float64
            u1 .. uL membranes (float64 holding integers); d1 .. dL delay lines if the profile delays
    outputs zL, u1_out .. uL_out, z1 .. z(L−1) (and d1_out .. dL_out)

for a network of any depth L (the names from :mod:`.format`'s :func:`~.format.state_inputs` and
friends). Per layer (the names of the ONNX ops in brackets)::

    acc   = SP_p(W ⊛_{s,pad} in)         [Cast→float32, Conv (strides s, pads pad), AveragePool, Mul p²,
                                           Cast→float64]   (or [Flatten, MatMul] in float64 for a dense layer)
    acc   = shl(acc, weight_exp)         [Mul 2^e (, Floor if e < 0)], only if weight_exp ≠ 0
    cur   = shl(acc, s) + b              [Mul 2^s (s ≥ 0) | Mul 2^s, Floor (s < 0); Add]
    r     = [u > θ]                      [Greater, Cast]
    pre   = leak(u) + cur − r·θ          (subtract)   | leak((1 − r)·u) + cur   (zero)
            leak: mul  Floor(u·m·2^−F)  |  shift  u − Floor(u·2^−d)  |  loihi  Sign(x)·Floor(|x|·2^−F), x = u·(2^F − dv)
    u_out = Clip(pre, min, max)          (saturate) | pre − 2^w·Floor((pre + 2^(w−1))·2^−w)   (wrap)
    z     = [u_out > θ]

Exactness: float64 holds every integer below 2^53 and multiplications by powers of two and Floor are
exact, so the export checks that every intermediate stays below 2^52. The convolution runs in float32
(onnxruntime has no float64 Conv), exact because every partial sum stays below 2^24: the export
checks this, and for wide inputs (16-bit event counts) splits the input into base-2^b digits, convolves
each digit and recombines them in float64.

:func:`read_integer_qonnx` reads such a file back into the :class:`~qsnn.network.IntegerNetwork`
(the initializers ``<layer>.weight``, ``.threshold``, ``.bias`` and the metadata ``network``, cross-checked).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import qsnn
from qsnn.arith import check_leak_const, effective_beta
from qsnn.data import INPUT_SCALE
from qsnn.errors import ExportError, ProfileError
from qsnn.jsonio import to_jsonable
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import ChipProfile

from .format import (
    FORMAT,
    FORMAT_VERSION,
    INPUT,
    check_qsnn_model,
    damaged_file_errors,
    delay_inputs,
    finish_model,
    membrane_name,
    output_name,
    save_model,
    spike_name,
    state_inputs,
)

OPSET = 17
F32_EXACT = 2**24
F64_EXACT = 2**52


class _Builder:
    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self._consts: dict[tuple, str] = {}

    def const(self, value: Any, name: str | None = None, dtype=np.float64) -> str:
        arr = np.asarray(value, dtype=dtype)
        if name is None:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._consts:
                return self._consts[key]
            name = f"c{len(self._consts)}_{format_number(arr)}" if arr.size == 1 else f"c{len(self._consts)}"
            self._consts[key] = name
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], out: str | None = None, prefix: str = "", **attrs) -> str:
        self._n += 1
        out = out or f"{prefix}{op_type.lower()}_{self._n}"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=f"{prefix}{op_type}_{self._n}", **attrs))
        return out


def format_number(arr: np.ndarray) -> str:
    v = arr.reshape(-1)[0].item()
    text = f"{v:g}".replace("-", "m").replace(".", "p").replace("+", "")
    return text


def _leak(b: _Builder, u: str, layer, profile, pre: str) -> str:
    bits = profile.leak_bits
    if profile.leak == "mul":
        prod = b.op("Mul", [u, b.const(layer.leak_const)], prefix=pre)
        return b.op("Floor", [b.op("Mul", [prod, b.const(2.0**-bits)], prefix=pre)], prefix=pre + "leak_")
    if profile.leak == "shift":
        down = b.op("Floor", [b.op("Mul", [u, b.const(2.0**-layer.leak_const)], prefix=pre)], prefix=pre)
        return b.op("Sub", [u, down], prefix=pre + "leak_")
    x = b.op("Mul", [u, b.const(2**bits - layer.leak_const)], prefix=pre)
    mag = b.op("Floor", [b.op("Mul", [b.op("Abs", [x], prefix=pre), b.const(2.0**-bits)], prefix=pre)], prefix=pre)
    return b.op("Mul", [b.op("Sign", [x], prefix=pre), mag], prefix=pre + "leak_")


def _digits(acc_per_unit: int, input_max: int) -> int:
    """Bits per input digit so that every float32 partial sum of a digit's convolution is exact."""
    if acc_per_unit * input_max < F32_EXACT:
        return max(1, int(math.ceil(math.log2(input_max + 1))))
    bits = int(math.floor(math.log2(F32_EXACT / max(acc_per_unit, 1) + 1))) - 1
    while bits >= 1 and acc_per_unit * (2**bits - 1) >= F32_EXACT:
        bits -= 1
    if bits < 1:
        raise ExportError("a convolution's partial sums exceed 2^24 even for binary inputs; cannot export it exactly")
    return bits


def _synapse(b: _Builder, inp: str, layer, in_max: int, pre: str) -> tuple[str, dict[str, Any]]:
    """acc = SP_p(W ⊛ in) in float64, exact; returns (tensor, facts)."""
    w = np.asarray(layer.weight, dtype=np.int64)
    wsum = int(np.abs(w.reshape(w.shape[0], -1)).sum(axis=1).max()) if w.size else 0
    if layer.kind == "dense":
        if wsum * in_max >= F64_EXACT:
            raise ExportError(f"layer {layer.name}: dense sums reach 2^52; cannot export exactly")
        flat = b.op("Flatten", [inp], prefix=pre, axis=1)
        acc = b.op("MatMul", [flat, b.const(w.T.astype(np.float64), name=f"{layer.name}.weight")], prefix=pre)
        return acc, {"digits": 1, "acc_max": wsum * in_max}
    if np.abs(w).max(initial=0) >= F32_EXACT:
        raise ExportError(f"layer {layer.name}: weights too large for an exact float32 convolution")
    per_unit = wsum * layer.pool**2
    bits = _digits(per_unit, in_max)
    n_digits = max(1, int(math.ceil(math.log2(in_max + 1) / bits)))
    wname = b.const(w.astype(np.float32), name=f"{layer.name}.weight", dtype=np.float32)
    total = None
    for j in range(n_digits):
        if n_digits == 1:
            digit = inp
        else:
            hi = b.op("Floor", [b.op("Mul", [inp, b.const(2.0 ** (-bits * (j + 1)))], prefix=pre)], prefix=pre)
            lo = b.op("Floor", [b.op("Mul", [inp, b.const(2.0 ** (-bits * j))], prefix=pre)], prefix=pre)
            digit = b.op("Sub", [lo, b.op("Mul", [hi, b.const(2.0**bits)], prefix=pre)], prefix=pre + "digit_")
        x32 = b.op("Cast", [digit], prefix=pre, to=TensorProto.FLOAT)
        conv = b.op(
            "Conv",
            [x32, wname],
            prefix=pre,
            kernel_shape=[layer.kernel, layer.kernel],
            strides=[layer.stride, layer.stride],
            pads=[layer.padding] * 4,
        )
        if layer.pool > 1:
            p = layer.pool
            avg = b.op("AveragePool", [conv], prefix=pre, kernel_shape=[p, p], strides=[p, p])
            conv = b.op("Mul", [avg, b.const(float(p * p), dtype=np.float32)], prefix=pre + "sumpool_")
        part = b.op("Cast", [conv], prefix=pre, to=TensorProto.DOUBLE)
        if j:
            part = b.op("Mul", [part, b.const(2.0 ** (bits * j))], prefix=pre)
        total = part if total is None else b.op("Add", [total, part], prefix=pre)
    return total, {"digits": n_digits, "digit_bits": bits, "acc_max": per_unit * in_max}


def arch_of(net: IntegerNetwork) -> str:
    """The architecture spec (:mod:`qsnn.arch`) of an integer network's layers."""
    from qsnn.arch import Arch, ConvSpec, DenseSpec

    return str(
        Arch(
            tuple(
                ConvSpec(l.out_channels, l.kernel, l.stride, l.padding, l.pool)
                if l.kind == "conv"
                else DenseSpec(l.out_channels)
                for l in net.layers
            )
        )
    )


def _layer_records(net: IntegerNetwork) -> list[dict[str, Any]]:
    """The metadata ``layers`` (:data:`.format.LAYER_KEYS`): the structure from the integer layers; what
    only the trained model knows (its synaptic bias, weight bits and scale) from the float export's
    records where the network carries them."""
    records = net.metadata.get("layers")
    trained = {rec.get("name"): rec for rec in records if isinstance(rec, dict)} if isinstance(records, list) else {}
    out = []
    for i, (l, shape) in enumerate(zip(net.layers, net.shapes())):
        rec = trained.get(l.name, {})
        out.append(
            {
                "name": l.name,
                "kind": l.kind,
                "kernel": l.kernel,
                "stride": l.stride,
                "padding": l.padding,
                "pool": l.pool,
                "bias": bool(rec.get("bias", False)),
                "weight_bits": int(rec.get("weight_bits", net.profile.weight_bits)),
                "weight_scale": rec.get("weight_scale", "none"),
                "membrane": membrane_name(i + 1),
                "shape": list(shape),
                "beta": effective_beta(l.leak_const, net.profile),
                "threshold": float(l.threshold[0] * l.scale[0]),
            }
        )
    return out


def integer_metadata(net: IntegerNetwork) -> dict[str, Any]:
    """Metadata of the integer export: the network's metadata, completed, plus profile and network spec."""
    meta = dict(net.metadata)
    layer0 = net.layers[0]
    defaults = {
        "dataset": "unknown",
        "slope": 0.0,
        "precision": "int",
        "quant_scale": "none",
        "batch_norm": False,
        "dropout": 0.0,
        "checkpoint_sha256": "",
        "beta": effective_beta(layer0.leak_const, net.profile),
        "threshold": float(layer0.threshold[0] * layer0.scale[0]),
        "reset": net.profile.reset,
        "weight_bits": net.profile.weight_bits,
        "arch": arch_of(net),
    }
    for key, value in defaults.items():
        meta.setdefault(key, value)
    meta.update(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "kind": "integer",
            "classes": list(net.classes),
            "num_steps": net.num_steps,
            "encoding": net.encoding,
            "input_scale": float(meta.get("input_scale", INPUT_SCALE[net.encoding])),
            "input_max": int(net.input_max),
            "input_shape": list(net.input_shape),
            "layers": _layer_records(net),
            "qsnn_version": qsnn.__version__,
            "profile": net.profile.to_dict(),
            "network": network_spec(net),
            "compile_report": net.metadata.get("compile_report", {}),
            "batch": "dynamic dimension 'N'; to fix it: qonnx ModelWrapper(path).transform(ChangeBatchSize(n))",
        }
    )
    return meta


def build_integer_model(net: IntegerNetwork, batch_size: int | None = None) -> onnx.ModelProto:
    """The integer one-step ModelProto of ``net`` (not written); ``batch_size`` fixes the batch dimension."""
    p = net.profile
    if p.leak_bits + p.membrane_bits + 2 > 53:
        raise ExportError(
            f"profile {p.name!r}: membrane_bits + leak_bits = {p.membrane_bits + p.leak_bits} is too wide "
            "for an exact float64 graph (at most 51)"
        )
    b = _Builder()
    delay = p.synaptic_delay
    shapes = [tuple(net.input_shape)] + net.shapes()
    L = len(net.layers)
    membranes, lines = state_inputs(L), delay_inputs(L)
    inputs = [helper.make_tensor_value_info(INPUT, TensorProto.DOUBLE, ["N", *shapes[0]])]
    outputs_head = []
    outputs_tail = []
    state_in, state_out = [], []
    delay_in, delay_out = [], []
    in_max = int(net.input_max)
    spikes = INPUT
    facts = []
    for i, layer in enumerate(net.layers):
        pre = f"{layer.name}/"
        li = i + 1
        inp = spikes
        if delay > 0:
            d = lines[i]
            delay_in.append(helper.make_tensor_value_info(d, TensorProto.DOUBLE, ["N", delay, *shapes[i]]))
            inp = b.op("Gather", [d, b.const(np.int64(0), dtype=np.int64)], prefix=pre + "delayed_", axis=1)
            newest = b.op("Unsqueeze", [spikes, b.const(np.array([1], np.int64), dtype=np.int64)], prefix=pre)
            if delay == 1:
                b.op("Identity", [newest], out=f"{d}_out", prefix=pre)
            else:
                rest = b.op(
                    "Slice",
                    [
                        d,
                        b.const(np.array([1], np.int64), dtype=np.int64),
                        b.const(np.array([delay], np.int64), dtype=np.int64),
                        b.const(np.array([1], np.int64), dtype=np.int64),
                    ],
                    prefix=pre,
                )
                b.op("Concat", [rest, newest], out=f"{d}_out", prefix=pre, axis=1)
            delay_out.append(helper.make_tensor_value_info(f"{d}_out", TensorProto.DOUBLE, ["N", delay, *shapes[i]]))
        acc, fact = _synapse(b, inp, layer, in_max if i == 0 else 1, pre)
        if layer.weight_exp:  # shl(acc, weight_exp): exact for e ≥ 0, floor for e < 0
            acc = b.op("Mul", [acc, b.const(2.0**layer.weight_exp)], prefix=pre)
            if layer.weight_exp < 0:
                acc = b.op("Floor", [acc], prefix=pre)
        s = layer.current_shift
        cur = b.op("Mul", [acc, b.const(2.0**s)], prefix=pre)
        if s < 0:
            cur = b.op("Floor", [cur], prefix=pre + "shl_")
        if p.current_bits:  # the current register (Lava's u): c − 2^w if c > 2^(w−1), c + 2^w if c ≤ −2^(w−1)
            half = 2.0 ** (p.current_bits - 1)
            high = b.op(
                "Cast", [b.op("Greater", [cur, b.const(half)], prefix=pre)], prefix=pre + "wrap_", to=TensorProto.DOUBLE
            )
            low = b.op(
                "Cast",
                [b.op("Greater", [b.const(0.5 - half), cur], prefix=pre)],  # c ≤ −half (integers)
                prefix=pre + "wrap_",
                to=TensorProto.DOUBLE,
            )
            cur = b.op(
                "Add",
                [cur, b.op("Mul", [b.op("Sub", [low, high], prefix=pre), b.const(2 * half)], prefix=pre)],
                prefix=pre + "wrap_",
            )
        bshape = (-1, 1, 1) if layer.kind == "conv" else (-1,)
        theta = b.const(np.asarray(layer.threshold, np.float64).reshape(bshape), name=f"{layer.name}.threshold")
        bias = b.const(np.asarray(layer.bias, np.float64).reshape(bshape), name=f"{layer.name}.bias")
        cur = b.op("Add", [cur, bias], prefix=pre + "current_")
        cur_max = fact["acc_max"] * 2.0**layer.weight_exp * 2.0**s + float(np.abs(layer.bias).max())
        u = membranes[i]
        r = b.op("Cast", [b.op("Greater", [u, theta], prefix=pre)], prefix=pre + "reset_", to=TensorProto.DOUBLE)
        if p.reset == "subtract":
            pre_u = b.op(
                "Sub",
                [b.op("Add", [_leak(b, u, layer, p, pre), cur], prefix=pre), b.op("Mul", [r, theta], prefix=pre)],
                prefix=pre,
            )
        else:
            kept = b.op("Mul", [b.op("Sub", [b.const(1.0), r], prefix=pre), u], prefix=pre)
            pre_u = b.op("Add", [_leak(b, kept, layer, p, pre), cur], prefix=pre)
        span = 2.0 ** (p.membrane_bits - 1) * 2 ** (p.leak_bits + 1) + cur_max + float(np.max(layer.threshold))
        if span >= F64_EXACT:
            raise ExportError(f"layer {layer.name}: intermediate values reach {span:.3g} ≥ 2^52; cannot export exactly")
        out_u = f"{u}_out"
        if p.overflow == "saturate":
            b.op("Clip", [pre_u, b.const(float(p.membrane_min)), b.const(float(p.membrane_max))], out=out_u, prefix=pre)
        else:
            w = p.membrane_bits
            shifted = b.op("Add", [pre_u, b.const(2.0 ** (w - 1))], prefix=pre)
            wraps = b.op("Floor", [b.op("Mul", [shifted, b.const(2.0**-w)], prefix=pre)], prefix=pre)
            b.op("Sub", [pre_u, b.op("Mul", [wraps, b.const(2.0**w)], prefix=pre)], out=out_u, prefix=pre)
        z = spike_name(li)
        b.op("Cast", [b.op("Greater", [out_u, theta], prefix=pre)], out=z, prefix=pre, to=TensorProto.DOUBLE)
        spikes = z
        shape = ["N", *shapes[i + 1]]
        state_in.append(helper.make_tensor_value_info(u, TensorProto.DOUBLE, shape))
        state_out.append(helper.make_tensor_value_info(out_u, TensorProto.DOUBLE, shape))
        (outputs_head if li == L else outputs_tail).append(helper.make_tensor_value_info(z, TensorProto.DOUBLE, shape))
        facts.append(fact)
    graph = helper.make_graph(
        b.nodes,
        "qsnn_integer_step",
        inputs + state_in + delay_in,
        outputs_head + state_out + outputs_tail + delay_out,
        b.inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="qsnn", producer_version=qsnn.__version__
    )
    model.ir_version = 8
    model.doc_string = (
        f"qsnn integer QSNN of {L} layers under profile {p.name!r}, one time step: (x, u1..u{L}) -> "
        f"({output_name(L)}, u1_out..u{L}_out, z1..z{L - 1}); all values are integers held exactly in "
        "float64. Run it T times, feeding the *_out states back (zeros at t=0)."
    )
    return finish_model(model, integer_metadata(net), batch_size)


def export_integer(net: IntegerNetwork, out_path: str | os.PathLike, *, batch_size: int | None = None) -> Path:
    """Write the integer-domain one-step graph of ``net`` atomically; returns ``out_path``.

    ``batch_size``: fix the batch dimension of every input and output (else dynamic ``N``).
    """
    return save_model(build_integer_model(net, batch_size=batch_size), out_path)


# --------------------------------------------------------------------------------------------------
# Reading the integer graph back (the writer's inverse)


def read_integer_qonnx(path: str | os.PathLike) -> IntegerNetwork:
    """The :class:`IntegerNetwork` of an integer qsnn export (:func:`qsnn.export.qonnx_int.export_integer`).

    Weights, thresholds and biases come from the graph's initializers (``<layer>.weight``,
    ``<layer>.threshold``, ``<layer>.bias``; found by structure, :func:`initializers_by_structure`,
    where a tool such as ``qonnx-cleanup`` renamed them), the rest from the metadata; the two are
    cross-checked.
    """
    where = str(path) if isinstance(path, (str, os.PathLike)) else "the ONNX model"
    model, meta = check_qsnn_model(path, kind="integer")
    with damaged_file_errors(where):
        return _read_integer(model, meta, where)


def _read_integer(model: onnx.ModelProto, meta: dict[str, Any], where: str) -> IntegerNetwork:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    if not all(f"{layer['name']}.weight" in inits for layer in meta.get("layers", [])):
        inits = {**initializers_by_structure(model, meta), **inits}  # renamed by a tool (qonnx-cleanup)
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
            layers.append(
                IntegerLayer(
                    name=name,
                    kind=ls["kind"],
                    weight=np.ascontiguousarray(w).astype(dtype),
                    pool=int(ls["pool"]),
                    current_shift=int(ls["current_shift"]),
                    threshold=arrays["threshold"].reshape(-1),
                    bias=arrays["bias"].reshape(-1),
                    leak_const=int(ls["decay"]),
                    scale=np.asarray(ls["scale"], dtype=np.float64),
                    weight_exp=int(ls.get("weight_exp", 0)),
                    stride=int(ls.get("stride", 1)),
                    padding=int(ls.get("padding", 0)),
                )
            )
        for layer in layers:  # a constant the profile's leak cannot use: a damaged file
            check_leak_const(layer.leak_const, profile, layer.name)
        net_meta = {k: v for k, v in meta.items() if k not in ("profile", "network")}
        return IntegerNetwork(
            layers=tuple(layers),
            profile=profile,
            input_shape=tuple(spec["input_shape"]),
            num_steps=int(spec["num_steps"]),
            encoding=spec["encoding"],
            classes=tuple(spec["classes"]),
            metadata=net_meta,
            input_max=meta.get("input_max", 255),  # IntegerNetwork checks its type and its encoding's rule
        )
    except ExportError:
        raise
    except (KeyError, TypeError, ValueError, ProfileError) as exc:
        raise ExportError(f"{where}: integer qsnn export has inconsistent metadata: {exc}") from None


def initializers_by_structure(model: onnx.ModelProto, meta: dict[str, Any]) -> dict[str, Any]:
    """``{"<layer>.weight" | ".threshold" | ".bias": array}`` of an integer graph, found by structure.

    For graphs whose initializers a tool renamed (``qonnx-cleanup``): layer i's weight is the i-th
    distinct weight of the Conv/MatMul nodes in graph order, its threshold the constant that
    ``Greater(u_i, ·)`` compares the membrane with, its bias the per-channel constant added between
    the synapse and ``u_i_out``. Call it on a graph whose interface names are restored.
    """
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    nodes = list(model.graph.node)
    producer = {o: n for n in nodes for o in n.output}
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for t in n.input:
            users.setdefault(t, []).append(n)
    weights: list[str] = []
    for n in nodes:
        if n.op_type in ("Conv", "MatMul") and len(n.input) > 1 and n.input[1] in inits and n.input[1] not in weights:
            weights.append(n.input[1])

    def below(start: list[str]) -> set[int]:
        seen, todo = set(), list(start)
        while todo:
            t = todo.pop()
            for n in users.get(t, []):
                if id(n) not in seen:
                    seen.add(id(n))
                    todo.extend(n.output)
        return seen

    def above(tensor: str) -> set[int]:
        seen, todo = set(), [tensor]
        while todo:
            n = producer.get(todo.pop())
            if n is not None and id(n) not in seen:
                seen.add(id(n))
                todo.extend(n.input)
        return seen

    out: dict[str, Any] = {}
    for i, layer in enumerate(meta.get("layers", [])):
        name = layer["name"]
        if i < len(weights):
            out[f"{name}.weight"] = inits[weights[i]]
        u = membrane_name(i + 1)
        theta = next((n.input[1] for n in users.get(u, []) if n.op_type == "Greater" and n.input[1] in inits), None)
        if theta is None:
            continue
        out[f"{name}.threshold"] = inits[theta]
        if i < len(weights):
            syn = [o for n in nodes if n.op_type in ("Conv", "MatMul") and n.input[1] == weights[i] for o in n.output]
            between = below(syn) & above(f"{u}_out")
            shape = np.shape(inits[theta])
            bias = [
                t
                for n in nodes
                if id(n) in between and n.op_type == "Add"
                for t in n.input
                if t in inits and t != theta and np.shape(inits[t]) == shape
            ]
            if len(bias) == 1:
                out[f"{name}.bias"] = inits[bias[0]]
    return out


def network_spec(net: IntegerNetwork) -> dict[str, Any]:
    """The JSON-able description of ``net`` (everything but the weight, threshold and bias arrays)."""
    return to_jsonable(
        {
            "input_shape": list(net.input_shape),
            "num_steps": net.num_steps,
            "encoding": net.encoding,
            "classes": list(net.classes),
            "layers": [
                {
                    "name": l.name,
                    "kind": l.kind,
                    "pool": l.pool,
                    "stride": l.stride,
                    "padding": l.padding,
                    "current_shift": l.current_shift,
                    "decay": l.leak_const,
                    "weight_exp": l.weight_exp,
                    "scale": [float(v) for v in l.scale],
                    "out_channels": l.out_channels,
                }
                for l in net.layers
            ],
        }
    )
