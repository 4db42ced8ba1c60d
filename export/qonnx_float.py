"""PyTorch → QONNX: one time step of the trained QSNN, membranes as explicit graph inputs/outputs.

``export_float(checkpoint, out)`` exports :meth:`QSNN.step <qsnn.train.model.QSNN.step>` with
Brevitas' ``export_qonnx`` (TorchScript path, ``dynamo=False``):

* weights: a ``Quant`` node per synapse (4-bit signed narrow, the Brevitas scale) for ``int4``
  checkpoints, plain float initializers for ``fp32`` ones;
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
from qsnn.jsonio import sha256_file
from qsnn.train.checkpoint import load_checkpoint, model_from_checkpoint
from qsnn.train.model import POOL

from .format import (DELAY_INPUTS, FORMAT, FORMAT_VERSION, INPUT, OUTPUT, STATE_INPUTS, STATE_OUTPUTS, cleanup,
                     finish_model, save_model)

LAYER_NAMES = ("conv1", "conv2", "fc")


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
    out = [_round_f32(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
           for x, y, z in zip(a.ravel(), b.ravel(), c.ravel())]
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
        self.register_buffer("alpha", torch.from_numpy(alpha.astype(np.float64 if fused else np.float32)).view(-1, 1, 1).to(dtype))
        self.register_buffer("beta", torch.from_numpy(beta.astype(np.float64 if fused else np.float32)).view(-1, 1, 1).to(dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fused:
            return (x.to(torch.float64) * self.alpha + self.beta).to(torch.float32)
        return x * self.alpha + self.beta


class OneStep(nn.Module):
    """``(x, u1, u2, u3) → (z3, u1_out, u2_out, u3_out)``: :meth:`QSNN.step` as a module to export."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.m = model

    def forward(self, x, u1, u2, u3, *delayed):
        return self.m.step(x, u1, u2, u3, *delayed)


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


def _readable_names(model: onnx.ModelProto, order: list[str], beta: float, theta: float) -> None:
    """Deterministic, readable tensor names and the exporter's node order.

    Weights ``conv1.weight`` / ``conv1.weight_scale`` (...), BatchNorm ``bn1.alpha`` / ``bn1.beta``;
    identical scalar constants merged and named by value (``theta``, ``beta``, ``zero``, ``one``,
    else ``const_<i>``); nodes in the order the exporter wrote them (qonnx's cleanup sorts them
    otherwise). Graph inputs and outputs keep their names.
    """
    graph = model.graph
    for init in list(graph.initializer):
        if init.name.startswith("m."):
            _rename(model, init.name, init.name[2:])
    # nodes back in the exporter's order (every remaining output name existed in the export)
    position = {name: i for i, name in enumerate(order)}
    nodes = sorted(graph.node, key=lambda n: min(position.get(o, len(position)) for o in n.output))
    del graph.node[:]
    graph.node.extend(nodes)
    producers = {o: n for n in graph.node for o in n.output}
    synapses = [n for n in graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    for layer, node in zip(LAYER_NAMES, synapses):
        src = producers.get(node.input[1])
        if src is not None and src.op_type == "Quant":
            for old, new in ((src.input[0], f"{layer}.weight"), (src.input[1], f"{layer}.weight_scale")):
                if old != new and len(_consumers(model, old)) == 1:
                    _rename(model, old, new)
        elif node.input[1] in {i.name for i in graph.initializer} and node.input[1] != f"{layer}.weight":
            _rename(model, node.input[1], f"{layer}.weight")
    # merge identical scalars, name them by value
    named = {"theta": np.float32(theta), "beta": np.float32(beta), "zero": np.float32(0), "one": np.float32(1)}
    first_use = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            first_use.setdefault(name, i)
    scalars: dict[tuple, str] = {}
    taken = {i.name for i in graph.initializer}
    count = 0
    for init in sorted(graph.initializer, key=lambda t: first_use.get(t.name, 1 << 30)):
        if "." in init.name or init.name in (INPUT, *STATE_INPUTS):
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


def float_metadata(data: dict[str, Any], sha256: str, model: nn.Module, bn_exact: bool | None) -> dict[str, Any]:
    cfg = data["config_obj"]
    encoding = data["encoding"]
    events = cfg.event_frames() if encoding == "events" else None
    c, h, w = (int(v) for v in data["input_shape"])
    layers = []
    for i, (name, lif) in enumerate(zip(LAYER_NAMES, ("lif1", "lif2", "lif3"))):
        layers.append({"name": name, "kind": "dense" if name == "fc" else "conv",
                       "pool": 1 if name == "fc" else POOL, "membrane": STATE_INPUTS[i],
                       "shape": list(model.layer_shapes[lif])})
    import brevitas
    from importlib.metadata import version

    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "kind": "float",
        "dataset": cfg.dataset, "classes": list(data["classes"]), "num_steps": cfg.num_steps,
        "encoding": encoding, "input_scale": float(INPUT_SCALE[encoding]), "input_max": events.count_max if events else INPUT_MAX["static"],
        "input_shape": [c, h, w],
        **({"event_frames": events.to_dict()} if events else {}),
        # β and θ as the model holds them (float32), written as the float64 of that float32
        "beta": float(np.float32(cfg.beta)), "threshold": float(np.float32(cfg.threshold)), "slope": cfg.slope,
        "reset": cfg.reset, "precision": cfg.precision,
        # the chip profile the model was trained for ("" = none) and the delay it was trained with
        "trained_profile": getattr(cfg, "profile", ""), "synaptic_delay": int(getattr(cfg, "synaptic_delay", 0)),
        "weight_bits": cfg.weight_bits if cfg.quantized else 32,
        "quant_scale": cfg.quant_scale if cfg.quantized else "none",
        "batch_norm": bool(cfg.batch_norm), "dropout": cfg.dropout, "layers": layers,
        "bn_exact": bn_exact, "qsnn_version": qsnn.__version__,
        "checkpoint_sha256": sha256, "checkpoint_name": data.get("_path_name", ""),
        "batch": "dynamic dimension 'N'; to fix it: qonnx ModelWrapper(path).transform(ChangeBatchSize(n))",
        "versions": {"torch": str(torch.__version__), "brevitas": str(brevitas.__version__),
                     "onnx": str(onnx.__version__), "qonnx": version("qonnx")},
    }


def build_float_model(checkpoint_path: str | os.PathLike,
                      batch_size: int | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """The float QONNX ModelProto of a checkpoint (not written), and its metadata.

    ``batch_size``: fix the batch dimension of every input and output (else dynamic ``N``).
    """
    from brevitas.export import export_qonnx

    checkpoint_path = Path(checkpoint_path)
    data = load_checkpoint(checkpoint_path)
    data["_path_name"] = checkpoint_path.name
    model = model_from_checkpoint(data)
    sha = sha256_file(checkpoint_path)
    bn_exact: bool | None = None
    if model.cfg.batch_norm:
        modes = [detect_bn_arithmetic(bn) for bn in (model.bn1, model.bn2)]
        if all(m is not None for m in modes):
            bn_exact = True
            model.bn1 = ExportBatchNorm(model.bn1, modes[0])
            model.bn2 = ExportBatchNorm(model.bn2, modes[1])
        else:
            bn_exact = False
    step = OneStep(model).eval()
    x = torch.zeros(1, *model.input_shape)
    states = (*model.initial_state(1), *model.delay_state(1))
    lines = list(DELAY_INPUTS) if model.cfg.synaptic_delay else []
    names_in = [INPUT, *STATE_INPUTS, *lines]
    names_out = [OUTPUT, *STATE_OUTPUTS, *(f"{d}_out" for d in lines)]
    with warnings.catch_warnings():   # an exporter failure is a bug (the checkpoint was checked): a traceback
        warnings.simplefilter("ignore")
        exported = export_qonnx(step, args=(x, *states), export_path=None, input_names=names_in,
                                output_names=names_out, dynamic_axes={n: {0: "N"} for n in names_in + names_out},
                                dynamo=False)
    order = [o for n in exported.graph.node for o in n.output]
    onnx_model = cleanup(exported)
    _readable_names(onnx_model, order, model.cfg.beta, model.cfg.threshold)
    onnx_model.producer_name = "qsnn"
    onnx_model.producer_version = qsnn.__version__
    onnx_model.doc_string = (
        "qsnn QSNN, one time step: (x, u1, u2, u3) -> (z3, u1_out, u2_out, u3_out). Run it T times "
        "(metadata num_steps), feeding u*_out back as u* (zeros at t=0); the class is the argmax of the "
        "summed z3. Batch dimension N is dynamic."
        + (" Synaptic delay 1 (metadata synaptic_delay): each synapse reads the delay line d1 (x), d2 (z1), "
           "d3 (z2) of the previous step, fed back from d*_out like the membranes." if lines else ""))
    meta = float_metadata(data, sha, model, bn_exact)
    finish_model(onnx_model, meta, batch_size)
    return onnx_model, meta


def export_float(checkpoint_path: str | os.PathLike, out_path: str | os.PathLike, *,
                 batch_size: int | None = None) -> Path:
    """Export a checkpoint as the one-time-step float QONNX graph; returns ``out_path``.

    The file is written atomically: if anything fails, an existing ``out_path`` is left untouched.
    Raises :class:`~qsnn.errors.CheckpointError` for a bad checkpoint and
    :class:`~qsnn.errors.ExportError` if the export fails.
    """
    onnx_model, _ = build_float_model(checkpoint_path, batch_size=batch_size)
    return save_model(onnx_model, out_path)


