"""PyTorch → QONNX: one time step of a trained QSNN of any depth, membranes as explicit graph inputs/outputs.

``export_float(checkpoint, out)`` exports :meth:`QSNN.step <qsnn.train.model.QSNN.step>` with
Brevitas' ``export_qonnx`` (TorchScript path, ``dynamo=False``); :func:`build_float_from_module`
does the same for a QSNN-like module in memory (no checkpoint file), given the metadata a
checkpoint would carry (input shape, classes, encoding, config). Per layer (``model.blocks``):

* weights: a ``Quant`` node per synapse (b-bit signed narrow, the Brevitas scale per tensor or per
  output channel) for quantized models, plain float initializers for ``fp32`` ones; ``<layer>.weight``,
  a synaptic bias ``<layer>.bias`` (the ``Conv`` / ``Gemm`` bias input, or an ``Add`` after ``MatMul``);
  convolutions with their stride and (symmetric) padding;
* synapse → average pooling → BatchNorm (if trained with it) → LIF, the LIF update as plain ONNX ops
  in the order of :func:`qsnn.train.lif.lif_step` (``Sub, Greater, Cast`` for the reset, ``Mul, Add,
  Mul, Sub`` for the subtract-reset update, or ``Sub, Mul, Mul, Add`` for zero reset);
* BatchNorm written as the arithmetic PyTorch's CPU kernel performs (``x·α + β`` with
  α = γ·(1/√(σ²+ε)) and β = b − μ·α, fused multiply-adds where PyTorch's kernel fuses them:
  a float64 ``Mul, Add`` between two ``Cast``), so that onnxruntime and qonnx's executor reproduce the
  PyTorch membranes bit for bit; if PyTorch's arithmetic is not recognised on this machine the
  standard ``BatchNormalization`` op is written instead (metadata ``bn_exact: false``);
* dynamic batch dimension ``N``; metadata described in :mod:`.format`.

The graph is cleaned with :func:`.format.cleanup` (names kept) and written atomically.
"""

from __future__ import annotations

import copy
import os
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn as nn

import qsnn
from qsnn.data import INPUT_MAX, INPUT_SCALE
from qsnn.errors import ExportError
from qsnn.jsonio import sha256_file
from qsnn.train.checkpoint import load_checkpoint, model_from_checkpoint

from .format import (
    FORMAT,
    FORMAT_VERSION,
    INPUT,
    cleanup,
    finish_model,
    graph_inputs,
    graph_outputs,
    membrane_name,
    output_name,
    precision_name,
    save_model,
    set_metadata,
    state_inputs,
)

# --------------------------------------------------------------------------------------------------
# BatchNorm exactly as PyTorch's CPU kernel computes it


def _round_f32(value: Fraction) -> np.float32:
    """``value`` rounded to the nearest float32 (ties to even), exactly."""
    guess = np.float32(float(value))
    cands = [guess, np.nextafter(guess, np.float32(-np.inf)), np.nextafter(guess, np.float32(np.inf))]
    cands = [c for c in cands if np.isfinite(c)]
    best = min(cands, key=lambda c: (abs(Fraction(float(c)) - value), int(np.array(c).view(np.uint32)) & 1))
    return np.float32(best)


def fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Elementwise float32 fused multiply-add a·b + c with one rounding (exact, for small arrays)."""
    a, b, c = np.broadcast_arrays(np.asarray(a, np.float32), np.asarray(b, np.float32), np.asarray(c, np.float32))
    out = [
        _round_f32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
        for x, y, z in zip(a.ravel(), b.ravel(), c.ravel())
    ]
    return np.array(out, dtype=np.float32).reshape(a.shape)


def bn_linear_terms(bn: nn.BatchNorm2d, fused: bool) -> tuple[np.ndarray, np.ndarray]:
    """(α, β) per channel in float32 as PyTorch's CPU inference kernel forms them.

    α = γ · (1 / √(σ² + ε)) and β = b − μ·α (one rounding if ``fused``, else two).
    """
    var = bn.running_var.detach().cpu().numpy().astype(np.float32)
    mean = bn.running_mean.detach().cpu().numpy().astype(np.float32)
    gamma = bn.weight.detach().cpu().numpy().astype(np.float32) if bn.weight is not None else np.ones_like(var)
    bias = bn.bias.detach().cpu().numpy().astype(np.float32) if bn.bias is not None else np.zeros_like(var)
    invstd = (np.float32(1.0) / np.sqrt(var + np.float32(bn.eps))).astype(np.float32)
    alpha = (invstd * gamma).astype(np.float32)
    beta = fma_f32(-mean, alpha, bias) if fused else (bias - mean * alpha).astype(np.float32)
    return alpha, beta


def _apply_bn(x: np.ndarray, alpha: np.ndarray, beta: np.ndarray, fused: bool) -> np.ndarray:
    shape = (1, -1) + (1,) * (x.ndim - 2)
    a, b = alpha.reshape(shape), beta.reshape(shape)
    if fused:  # x·α is exact in float64; one rounding to float64, then to float32
        return (x.astype(np.float64) * a.astype(np.float64) + b.astype(np.float64)).astype(np.float32)
    return (x * a + b).astype(np.float32)


def detect_bn_arithmetic(bn: nn.BatchNorm2d, seed: int = 0) -> bool | None:
    """Which arithmetic PyTorch's eval BatchNorm uses here: True (fused), False (mul, add), None (neither).

    Probes the layer with random inputs and compares against both emulations, so the export follows
    the kernel of this PyTorch build and CPU.
    """
    gen = torch.Generator().manual_seed(seed)
    probe = torch.randn(64, bn.num_features, 6, 6, generator=gen) * 3.0
    with torch.no_grad():
        ref = bn.eval()(probe).numpy()
    x = probe.numpy()
    for fused in (True, False):
        alpha, beta = bn_linear_terms(bn, fused)
        if np.array_equal(_apply_bn(x, alpha, beta, fused), ref):
            return fused
    return None


class ExportBatchNorm(nn.Module):
    """Eval BatchNorm as ``x·α + β``: float64 multiply-add rounded once to float32 (``fused``) or float32."""

    def __init__(self, bn: nn.BatchNorm2d, fused: bool) -> None:
        super().__init__()
        alpha, beta = bn_linear_terms(bn, fused)
        dtype = torch.float64 if fused else torch.float32
        self.fused = fused
        self.register_buffer(
            "alpha", torch.from_numpy(alpha.astype(np.float64 if fused else np.float32)).view(-1, 1, 1).to(dtype)
        )
        self.register_buffer(
            "beta", torch.from_numpy(beta.astype(np.float64 if fused else np.float32)).view(-1, 1, 1).to(dtype)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return (x.to(torch.float64) * self.alpha + self.beta).to(torch.float32)
        return x * self.alpha + self.beta


class OneStep(nn.Module):
    """``(x, u1..uL[, d1..dL]) → (zL, u1_out..uL_out[, d1_out..dL_out])``: :meth:`QSNN.step` as a module to export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x, *state):
        return self.m.step(x, *state)


# --------------------------------------------------------------------------------------------------
# Graph touch-ups


def _rename(model: onnx.ModelProto, old: str, new: str) -> None:
    graph = model.graph
    for init in graph.initializer:
        if init.name == old:
            init.name = new
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
    for vi in graph.value_info:
        if vi.name == old:
            vi.name = new


def _consumers(model: onnx.ModelProto, tensor: str) -> list[onnx.NodeProto]:
    return [n for n in model.graph.node if tensor in n.input]


def _readable_names(
    model: onnx.ModelProto, order: list[str], names: list[str], betas: list[float], thetas: list[float]
) -> None:
    """Deterministic, readable tensor names and the exporter's node order.

    Weights ``<layer>.weight`` / ``<layer>.weight_scale`` and biases ``<layer>.bias`` (``conv1``, ...,
    ``fc``: ``names``), BatchNorm of layer i ``bn<i>.alpha`` / ``bn<i>.beta``; identical scalar
    constants merged and named by value (``theta``, ``beta`` of the first layer, ``beta<i>`` /
    ``theta<i>`` of a later layer whose value differs, ``zero``, ``one``, else ``const_<i>``); nodes in
    the order the exporter wrote them (qonnx's cleanup sorts them otherwise). Graph inputs and outputs
    keep their names.
    """
    graph = model.graph
    prefixes = {}
    for i, name in enumerate(names):
        prefixes[f"m.synapses.{i}."] = f"{name}."
        prefixes[f"m.norms.{i}."] = f"bn{i + 1}."
    for init in list(graph.initializer):
        prefix = next((p for p in prefixes if init.name.startswith(p)), None)
        if prefix is not None:
            _rename(model, init.name, prefixes[prefix] + init.name[len(prefix) :])
        elif init.name.startswith("m."):
            _rename(model, init.name, init.name[2:])
    # the exporter's scope names of the layer lists as the layers' names: /synapses.0/... → /conv1/...
    scopes = {f"/synapses.{i}/": f"/{name}/" for i, name in enumerate(names)}
    scopes.update({f"/norms.{i}/": f"/bn{i + 1}/" for i in range(len(names))})
    scopes.update({f"/neurons.{i}/": f"/lif{i + 1}/" for i in range(len(names))})

    def scoped(t: str) -> str:
        for old, new in scopes.items():
            if t.startswith(old):
                return new + t[len(old) :]
        return t

    for init in graph.initializer:
        init.name = scoped(init.name)
    for vi in graph.value_info:
        vi.name = scoped(vi.name)
    for node in graph.node:
        node.input[:] = [scoped(t) for t in node.input]
        node.output[:] = [scoped(t) for t in node.output]
        node.name = scoped(node.name)
    order = [scoped(t) for t in order]
    # nodes back in the exporter's order (every remaining output name existed in the export)
    position = {name: i for i, name in enumerate(order)}
    nodes = sorted(graph.node, key=lambda n: min(position.get(o, len(position)) for o in n.output))
    del graph.node[:]
    graph.node.extend(nodes)
    producers = {o: n for n in graph.node for o in n.output}
    inits = {i.name for i in graph.initializer}
    synapses = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    for layer, node in zip(names, synapses):
        src = producers.get(node.input[1])
        if src is not None and src.op_type == "Transpose":
            src = producers.get(src.input[0])
        if src is not None and src.op_type == "Quant":
            for old, new in ((src.input[0], f"{layer}.weight"), (src.input[1], f"{layer}.weight_scale")):
                if old != new and len(_consumers(model, old)) == 1:
                    _rename(model, old, new)
        elif node.input[1] in inits and node.input[1] != f"{layer}.weight":
            _rename(model, node.input[1], f"{layer}.weight")
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if bias is None and node.op_type == "MatMul":  # MatMul then Add of the bias
            add = _consumers(model, node.output[0])
            if len(add) == 1 and add[0].op_type == "Add":
                bias = next((t for t in add[0].input if t != node.output[0] and t in inits), None)
        if bias is not None and bias in inits and bias != f"{layer}.bias" and len(_consumers(model, bias)) == 1:
            _rename(model, bias, f"{layer}.bias")
    # merge identical scalars, name them by value
    named = {"theta": np.float32(thetas[0]), "beta": np.float32(betas[0]), "zero": np.float32(0), "one": np.float32(1)}
    for i, (b, t) in enumerate(zip(betas, thetas), start=1):
        if np.float32(b) not in [v for k, v in named.items() if k.startswith("beta")]:
            named[f"beta{i}"] = np.float32(b)
        if np.float32(t) not in [v for k, v in named.items() if k.startswith("theta")]:
            named[f"theta{i}"] = np.float32(t)
    first_use = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            first_use.setdefault(name, i)
    scalars: dict[tuple, str] = {}
    taken = {i.name for i in graph.initializer}
    count = 0
    for init in sorted(graph.initializer, key=lambda t: first_use.get(t.name, 1 << 30)):
        if "." in init.name or init.name == INPUT or init.name in state_inputs(len(names)):
            continue
        arr = onnx.numpy_helper.to_array(init)
        if arr.size != 1:
            continue
        key = (init.data_type, arr.shape, arr.tobytes())
        if key in scalars:
            _rename(model, init.name, scalars[key])
            graph.initializer.remove(init)
            continue
        roles = {(n.op_type, list(n.input).index(init.name)) for n in _consumers(model, init.name)}
        base = "weight_bit_width" if roles == {("Quant", 3)} else None
        if base is None:
            base = next((n for n, v in named.items() if arr.dtype == np.float32 and arr.item() == float(v)), None)
        if base is None:
            base, count = f"const_{count}", count + 1
        new = base
        k = 1
        while new in taken and new != init.name:
            new, k = f"{base}_{k}", k + 1
        taken.discard(init.name)
        taken.add(new)
        _rename(model, init.name, new)
        scalars[key] = new
    inits = {i.name for i in graph.initializer}
    seen: set[str] = set()
    for vi in list(graph.value_info):
        if vi.name in inits or vi.name in seen:
            graph.value_info.remove(vi)
        seen.add(vi.name)


# --------------------------------------------------------------------------------------------------


def as_pair(value: Any) -> tuple[int, ...]:
    """A torch size argument (``3`` or ``(3, 3)``) as a tuple."""
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _quant_enabled(module: nn.Module, proxy: str) -> bool:
    """Whether a Brevitas layer's quantizer proxy (``input_quant``, ``output_quant``, ``bias_quant``) is on."""
    return bool(getattr(getattr(module, proxy, None), "is_quant_enabled", False))


def synapse_problems(module: nn.Module) -> list[str]:
    """Everything about one conv / linear synapse that a qsnn export cannot hold (empty: it can):
    non-square kernels, strides or paddings, grouped or dilated convs, non-zero padding modes, weights
    outside 2..8 bits, unsigned or zero-pointed weights, activation or bias quantizers."""
    problems = []
    if type(module).__name__ in ("QuantConv2d", "Conv2d"):
        k, s, p = as_pair(module.kernel_size), as_pair(module.stride), module.padding
        if isinstance(p, str):
            problems.append(f"padding={p!r}: give the padding as a number")
            p = (0, 0)
        p = as_pair(p)
        if len(set(k)) != 1 or len(set(s)) != 1 or len(set(p)) != 1:
            problems.append(
                f"kernel {k}, stride {s}, padding {p}: square kernels, one stride and the same padding on both sides"
            )
        if module.groups != 1 or any(d != 1 for d in as_pair(module.dilation)):
            problems.append("grouped or dilated convolution")
        if getattr(module, "padding_mode", "zeros") != "zeros":
            problems.append(f"padding_mode={module.padding_mode!r}: zero padding only")
    if hasattr(module, "quant_weight"):
        try:
            qw = module.quant_weight()
            bits = int(round(float(qw.bit_width)))
            if not 2 <= bits <= 8:
                problems.append(f"{bits}-bit weights: 2..8 bits")
            if not bool(qw.signed):
                problems.append("unsigned weights: a signed weight quantizer (e.g. Int8WeightPerTensorFloat)")
            zero_point = getattr(qw, "zero_point", None)
            if zero_point is not None and bool(torch.any(torch.as_tensor(zero_point) != 0)):
                problems.append("a weight zero point: symmetric weight quantization only")
        except Exception as exc:  # a quantizer Brevitas cannot evaluate here
            problems.append(f"its weight quantizer fails ({type(exc).__name__}: {exc})")
        for proxy, what in (("input_quant", "input"), ("output_quant", "output")):
            if _quant_enabled(module, proxy):
                problems.append(
                    f"an {what} activation quantizer ({proxy}=...): qsnn's inputs are spikes or the model's input; "
                    f"build the layer without {proxy}"
                )
        if _quant_enabled(module, "bias_quant"):
            problems.append(
                "a bias quantizer (bias_quant=...): a float bias only (the compiler puts it on the membrane grid); "
                "build the layer without bias_quant"
            )
    return problems


def _synapse_record(block: Any, where: str) -> dict[str, Any]:
    """What the graph of one synapse holds, read from the module itself (not the config): kernel,
    stride, symmetric padding, bias, weight bits and scale granularity."""
    syn, spec = block.synapse, block.spec
    rec: dict[str, Any] = {"name": block.name, "kind": spec.kind}
    problems = synapse_problems(syn)
    if problems:
        raise ExportError(f"{where}: layer {block.name}: " + "; ".join(problems))
    if spec.kind == "conv":
        k, st, pad = (as_pair(getattr(syn, a))[0] for a in ("kernel_size", "stride", "padding"))
        rec.update(kernel=int(k), stride=int(st), padding=int(pad), pool=int(spec.pool))
    else:
        rec.update(kernel=1, stride=1, padding=0, pool=1)
    rec["bias"] = getattr(syn, "bias", None) is not None
    if hasattr(syn, "quant_weight"):
        qw = syn.quant_weight()
        rec["weight_bits"] = int(round(float(qw.bit_width)))
        rec["weight_scale"] = "channel" if qw.scale.numel() > 1 else "tensor"
    else:
        rec.update(weight_bits=32, weight_scale="none")
    return rec


def _neuron_constants(model: nn.Module, block: Any) -> tuple[float, float]:
    """(β, θ) of a layer's neurons as float32 values (written as the float64 of that float32): the
    layer's ``Leaky`` if it holds them, else the model's."""
    beta = getattr(block.lif, "beta", None)
    theta = getattr(block.lif, "threshold", None)
    beta = model.beta if beta is None else beta
    theta = model.theta if theta is None else theta
    return (
        float(np.float32(torch.as_tensor(beta).detach().float().item())),
        float(np.float32(torch.as_tensor(theta).detach().float().item())),
    )


def layer_records(model: nn.Module, where: str = "the model") -> list[dict[str, Any]]:
    """The metadata ``layers`` of a QSNN-like module (:data:`.format.LAYER_KEYS`), one record per block."""
    records = []
    for i, block in enumerate(model.blocks):
        rec = _synapse_record(block, where)
        beta, theta = _neuron_constants(model, block)
        rec.update(membrane=membrane_name(i + 1), shape=[int(v) for v in block.shape], beta=beta, threshold=theta)
        records.append(
            {
                k: rec[k]
                for k in (
                    "name",
                    "kind",
                    "pool",
                    "membrane",
                    "shape",
                    "kernel",
                    "stride",
                    "padding",
                    "bias",
                    "weight_bits",
                    "weight_scale",
                    "beta",
                    "threshold",
                )
            }
        )
    return records


def float_metadata(
    model: nn.Module,
    *,
    cfg: Any,
    input_shape: tuple[int, ...],
    classes: list[str],
    encoding: str,
    sha256: str = "",
    source_name: str = "",
    bn_exact: bool | None = None,
) -> dict[str, Any]:
    """The metadata of the float export of ``model`` (see :mod:`.format`)."""
    events = cfg.event_frames() if encoding == "events" else None
    c, h, w = (int(v) for v in input_shape)
    layers = layer_records(model)
    quantized = all(rec["weight_bits"] < 32 for rec in layers)
    bits = [rec["weight_bits"] for rec in layers] if quantized else None
    from importlib.metadata import version

    import brevitas

    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": "float",
        "dataset": cfg.dataset,
        "classes": list(classes),
        "num_steps": cfg.num_steps,
        "encoding": encoding,
        "input_scale": float(INPUT_SCALE[encoding]),
        "input_max": events.count_max if events else INPUT_MAX["static"],
        "input_shape": [c, h, w],
        **({"event_frames": events.to_dict()} if events else {}),
        # β and θ of the first layer (float32 values written as float64); every layer's in ``layers``
        "beta": layers[0]["beta"],
        "threshold": layers[0]["threshold"],
        "slope": cfg.slope,
        "reset": cfg.reset,
        "precision": precision_name(bits),
        # the chip profile the model was trained for ("" = none) and the delay it was trained with
        "trained_profile": getattr(cfg, "profile", ""),
        # trained on that profile's integer network itself (qsnn-train finetune): its forward pass IS the compile
        "integer_exact": bool(getattr(cfg, "integer_exact", False)),
        "synaptic_delay": int(getattr(cfg, "synaptic_delay", 0)),
        "weight_bits": max(bits) if bits else 32,
        "quant_scale": cfg.quant_scale if quantized else "none",
        "weight_scale": getattr(cfg, "weight_scale", "tensor") if quantized else "none",
        "batch_norm": bool(cfg.batch_norm),
        "dropout": cfg.dropout,
        "arch": str(getattr(model, "arch", "") or getattr(cfg, "arch", "")),
        "layers": layers,
        "bn_exact": bn_exact,
        "qsnn_version": qsnn.__version__,
        "checkpoint_sha256": sha256,
        "checkpoint_name": source_name,
        "batch": "dynamic dimension 'N'; to fix it: qonnx ModelWrapper(path).transform(ChangeBatchSize(n))",
        "versions": {
            "torch": str(torch.__version__),
            "brevitas": str(brevitas.__version__),
            "onnx": str(onnx.__version__),
            "qonnx": version("qonnx"),
        },
    }


def _doc_string(n: int, delay: bool) -> str:
    ins, outs = graph_inputs(n), graph_outputs(n)
    last = output_name(n)
    text = (
        f"qsnn QSNN, one time step: ({', '.join(ins)}) -> ({', '.join(outs)}). Run it T times "
        f"(metadata num_steps), feeding u*_out back as u* (zeros at t=0); the class is the argmax of the "
        f"summed {last}. Batch dimension N is dynamic."
    )
    if delay:
        lines = ", ".join(f"d{i + 1} ({'x' if i == 0 else f'z{i}'})" for i in range(n))
        text += (
            f" Synaptic delay 1 (metadata synaptic_delay): each synapse reads the delay line {lines} of the "
            "previous step, fed back from d*_out like the membranes."
        )
    return text


def build_float_from_module(
    model: nn.Module,
    *,
    classes: list[str] | tuple[str, ...],
    encoding: str,
    cfg: Any = None,
    input_shape: tuple[int, ...] | None = None,
    sha256: str = "",
    source_name: str = "",
    batch_size: int | None = None,
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The float QONNX ModelProto of a QSNN-like module in memory (not written), and its metadata.

    ``model`` has what :class:`~qsnn.train.model.QSNN` has: ``blocks`` (name, spec, synapse, bn,
    lif, shape per layer), ``names``, ``norms``, ``step(x, *state)``, ``initial_state(b)``,
    ``delay_state(b)``, ``cfg``, ``input_shape``; it is copied, not changed. ``cfg`` (default
    ``model.cfg``: a :class:`~qsnn.config.TrainConfig`) and ``input_shape`` (default
    ``model.input_shape``), ``classes`` and ``encoding`` (``"static"`` | ``"events"``) are what a
    checkpoint would record; ``sha256`` / ``source_name`` name the file it came from ("" = none).
    ``batch_size``: fix the batch dimension of every input and output (else dynamic ``N``).
    """
    from brevitas.export import export_qonnx

    model = copy.deepcopy(model).eval()
    cfg = model.cfg if cfg is None else cfg
    input_shape = tuple(model.input_shape if input_shape is None else input_shape)
    blocks = model.blocks
    n = len(blocks)
    bn_exact: bool | None = None
    norms = [(i, b.bn) for i, b in enumerate(blocks) if isinstance(b.bn, nn.modules.batchnorm._BatchNorm)]
    if norms:
        modes = [detect_bn_arithmetic(bn) for _, bn in norms]
        if all(m is not None for m in modes):
            bn_exact = True
            for (i, bn), mode in zip(norms, modes):
                model.norms[i] = ExportBatchNorm(bn, mode)
        else:
            bn_exact = False
    records = layer_records(model)  # checks every synapse before the exporter runs
    step = OneStep(model).eval()
    x = torch.zeros(1, *input_shape)
    states = (*model.initial_state(1), *model.delay_state(1))
    delay = bool(getattr(cfg, "synaptic_delay", 0))
    names_in, names_out = graph_inputs(n, delay), graph_outputs(n, delay)
    with warnings.catch_warnings():  # an exporter failure is a bug (the model was checked): a traceback
        warnings.simplefilter("ignore")
        exported = export_qonnx(
            step,
            args=(x, *states),
            export_path=None,
            input_names=names_in,
            output_names=names_out,
            dynamic_axes={k: {0: "N"} for k in names_in + names_out},
            dynamo=False,
        )
    order = [o for node in exported.graph.node for o in node.output]
    onnx_model = cleanup(exported)
    _readable_names(
        onnx_model, order, list(model.names), [r["beta"] for r in records], [r["threshold"] for r in records]
    )
    onnx_model.producer_name = "qsnn"
    onnx_model.producer_version = qsnn.__version__
    onnx_model.doc_string = _doc_string(n, delay)
    meta = float_metadata(
        model,
        cfg=cfg,
        input_shape=input_shape,
        classes=list(classes),
        encoding=encoding,
        sha256=sha256,
        source_name=source_name,
        bn_exact=bn_exact,
    )
    finish_model(onnx_model, meta, batch_size)
    return onnx_model, meta


def build_float_model(
    checkpoint_path: str | os.PathLike, batch_size: int | None = None
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The float QONNX ModelProto of a checkpoint (not written), and its metadata.

    ``batch_size``: fix the batch dimension of every input and output (else dynamic ``N``).
    """
    checkpoint_path = Path(checkpoint_path)
    data = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(data, where=str(checkpoint_path))
    onnx_model, meta = build_float_from_module(
        model,
        classes=list(data["classes"]),
        encoding=data["encoding"],
        cfg=data["config_obj"],
        input_shape=tuple(int(v) for v in data["input_shape"]),
        sha256=sha256_file(checkpoint_path),
        source_name=checkpoint_path.name,
        batch_size=batch_size,
    )
    if data.get("data_dir"):  # the data directory training read (qsnn.data.load_for_model looks there)
        meta["data_dir"] = str(data["data_dir"])
        set_metadata(onnx_model, meta)
    return onnx_model, meta


def export_float(
    checkpoint_path: str | os.PathLike, out_path: str | os.PathLike, *, batch_size: int | None = None
) -> Path:
    """Export a checkpoint as the one-time-step float QONNX graph; returns ``out_path``.

    The file is written atomically: if anything fails, an existing ``out_path`` is left untouched.
    Raises :class:`~qsnn.errors.CheckpointError` for a bad checkpoint and
    :class:`~qsnn.errors.ExportError` if the export fails.
    """
    onnx_model, _ = build_float_model(checkpoint_path, batch_size=batch_size)
    return save_model(onnx_model, out_path)
