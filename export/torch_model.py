"""Bring your own model: a user's snnTorch + Brevitas ``nn.Sequential`` as a qsnn float QONNX file.

``export_torch(model, input_shape, num_steps, out)`` writes the same one-step float QONNX that
``qsnn-export --to qonnx`` writes for a trained checkpoint, so ``qsnn-sim`` and every target take it::

    net = nn.Sequential(
        qnn.QuantConv2d(1, 8, 3, stride=2, padding=1, weight_bit_width=4, bias=False),
        nn.BatchNorm2d(8),
        snn.Leaky(beta=0.9, threshold=1.0, init_hidden=False),
        qnn.QuantConv2d(8, 16, 3, weight_bit_width=4),
        nn.AvgPool2d(2),
        snn.Leaky(beta=0.8, threshold=1.5, reset_mechanism="zero"),
        nn.Flatten(),
        nn.Dropout(0.2),
        qnn.QuantLinear(16 * 6 * 6, 10, weight_bit_width=8, bias=True),
        snn.Leaky(beta=0.95, threshold=1.0),
    )
    export_torch(net, (1, 28, 28), num_steps=25, out="mine.onnx")

The model is read as a stack of layers, each ``synapse [AvgPool2d] [BatchNorm2d] Leaky`` (pooling
and BatchNorm after a conv only, in that order: the paper's ``BN(AP(W ⊛ z))``), with ``Flatten``
before the first dense layer and ``Dropout`` (any kind) or ``Identity`` anywhere (the identity at
inference). Synapses are Brevitas ``QuantConv2d`` / ``QuantLinear`` (2..8-bit weights, per-tensor or
per-channel scale, with or without a float bias) or float ``nn.Conv2d`` / ``nn.Linear``; every ``snn.Leaky`` keeps its own β and θ
(``reset_delay=True``, subtract or zero reset, the same reset in every layer). The input is what the
model takes: pixels/255 for ``encoding="static"`` (uint8 images, the chip's input), event counts for
``"events"``.

Everything the model holds that qsnn cannot run is listed in ONE :class:`~qsnn.errors.ExportError`,
each with its position in the Sequential and why (max pooling, recurrent or synaptic neurons, hidden
state baked in with ``init_hidden=True``, per-neuron β, ...), before anything is written.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import onnx
import torch
import torch.nn as nn

from qsnn.arch import Arch, ConvSpec, DenseSpec
from qsnn.config import range_problem
from qsnn.data import ENCODINGS
from qsnn.errors import ExportError
from qsnn.events import EventFrames

from .qonnx_float import as_pair, synapse_problems

#: Modules that are the identity at inference (a Sequential may hold them anywhere).
IDENTITIES = ("Dropout", "Dropout1d", "Dropout2d", "AlphaDropout", "FeatureAlphaDropout", "Identity")
#: What a Sequential may hold, for messages.
SUPPORTED = (
    "Brevitas QuantConv2d / QuantLinear or torch Conv2d / Linear, nn.AvgPool2d, nn.BatchNorm2d, "
    "nn.Flatten, nn.Dropout (any kind) or nn.Identity, snntorch.Leaky"
)


@dataclass(frozen=True)
class UserConfig:
    """The run settings a user's model implies: what :func:`.qonnx_float.float_metadata` and
    :class:`~qsnn.train.model.QSNN`'s forward passes read from a training configuration."""

    num_steps: int
    reset: str
    slope: float
    batch_norm: bool
    quant_scale: str
    weight_scale: str
    dataset: str = "custom"
    synaptic_delay: int = 0
    profile: str = ""
    dropout: float = 0.0
    fast: bool = True
    arch: str = ""
    frames: EventFrames = field(default_factory=EventFrames)

    def event_frames(self) -> EventFrames:
        return self.frames


@dataclass
class _Layer:
    synapse: nn.Module
    synapse_at: int
    pool: int = 1
    bn: nn.Module | None = None
    lif: nn.Module | None = None


def _is(module: nn.Module, *names: str) -> bool:
    return type(module).__name__ in names


def _flat(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules in order, nested Sequentials opened, each with its position (``3`` or ``2.1``)."""
    out = []
    for name, child in model.named_children():
        if isinstance(child, nn.Sequential):
            out.extend((f"{name}.{sub}", m) for sub, m in _flat(child))
        else:
            out.append((name, child))
    return out


def _leaky_problems(module: nn.Module) -> list[str]:
    problems = []
    if getattr(module, "init_hidden", False):
        problems.append("init_hidden=True bakes the membrane into the module: build it with init_hidden=False")
    if not getattr(module, "reset_delay", True):
        problems.append("reset_delay=False: qsnn's neuron resets on the previous step's spike (reset_delay=True)")
    if getattr(module, "reset_mechanism", "subtract") not in ("subtract", "zero"):
        problems.append(f"reset_mechanism={module.reset_mechanism!r}: subtract or zero")
    for symbol, name in (("β", "beta"), ("θ", "threshold")):
        value = torch.as_tensor(getattr(module, name)).detach()
        if value.numel() != 1:
            problems.append(f"a {symbol} per neuron: one {name} per layer")
        elif (what := range_problem(name, float(value))) is not None:
            problems.append(f"{name}={float(value):g}: {symbol} must be {what}")
    if getattr(module, "inhibition", False):
        problems.append("inhibition=True")
    if getattr(module, "state_quant", False):
        problems.append("state_quant: the membrane's integer form comes from the chip profile")
    if float(torch.as_tensor(getattr(module, "graded_spikes_factor", 1.0)).detach().reshape(-1)[0]) != 1.0:
        problems.append("graded spikes: binary spikes only")
    return problems


def read_sequential(model: nn.Module) -> tuple[list[_Layer], list[str]]:
    """The layers of a user's Sequential and every problem found (position, module, why)."""
    problems: list[str] = []
    layers: list[_Layer] = []
    current: _Layer | None = None
    flattened = False

    def bad(at: str, module: nn.Module, why: str) -> None:
        problems.append(f"[{at}] {type(module).__name__}: {why}")

    for at, m in _flat(model):
        if _is(m, "QuantConv2d", "Conv2d", "QuantLinear", "Linear"):
            if current is not None and current.lif is None:
                bad(
                    at,
                    m,
                    "two synapses without a Leaky between them: every synaptic layer ends in snntorch.Leaky neurons",
                )
            dense = _is(m, "QuantLinear", "Linear")
            if not dense and (flattened or any(_is(x.synapse, "QuantLinear", "Linear") for x in layers)):
                bad(at, m, "a convolution after flattening: put every conv before the first dense layer")
            for why in synapse_problems(m):
                bad(at, m, why)
            current = _Layer(m, len(layers))
            layers.append(current)
        elif _is(m, "AvgPool2d"):
            k, s = as_pair(m.kernel_size), as_pair(m.stride if m.stride is not None else m.kernel_size)
            if current is None or current.lif is not None or not _is(current.synapse, "QuantConv2d", "Conv2d"):
                bad(at, m, "average pooling acts on a conv's current: put it between the conv and its Leaky")
            elif current.bn is not None:
                bad(at, m, "pooling after BatchNorm: write conv, AvgPool2d, BatchNorm2d (qsnn computes BN(AP(conv)))")
            elif len(set(k)) != 1 or k != s or as_pair(m.padding) != (0, 0) or m.ceil_mode:
                bad(at, m, f"kernel {k}, stride {s}, padding {m.padding}: p×p pooling of stride p, no padding, floor")
            elif m.divisor_override is not None:
                bad(at, m, "divisor_override: the pooling divides by p²")
            else:
                current.pool = k[0]
        elif _is(m, "BatchNorm2d"):
            if current is None or current.lif is not None or not _is(current.synapse, "QuantConv2d", "Conv2d"):
                bad(at, m, "BatchNorm2d acts on a conv's (pooled) current: put it between the conv and its Leaky")
            elif current.bn is not None:
                bad(at, m, "a second BatchNorm on one layer")
            elif m.running_mean is None or m.running_var is None:
                bad(
                    at,
                    m,
                    "track_running_stats=False normalises with each batch's own statistics, which no chip can "
                    "fold: build it with track_running_stats=True (the default) and train it",
                )
            else:
                current.bn = m
        elif _is(m, "Leaky"):
            for why in _leaky_problems(m):
                bad(at, m, why)
            if current is None or current.lif is not None:
                bad(at, m, "a Leaky without a synapse before it")
            else:
                current.lif = m
        elif _is(m, "Flatten"):
            if flattened:
                bad(at, m, "flattening twice")
            if current is not None and current.lif is None:
                bad(at, m, "flattening inside a layer: flatten the spikes, after the Leaky")
            flattened = True
        elif _is(m, *IDENTITIES):
            pass  # the identity at inference
        elif _is(m, "MaxPool2d", "AdaptiveMaxPool2d", "MaxPool1d"):
            bad(at, m, "max pooling has no integer form on qsnn's targets: use nn.AvgPool2d (sum pooling on the chip)")
        elif _is(m, "BatchNorm1d"):
            bad(at, m, "BatchNorm after a dense layer is not supported: use it after convolutions only, or drop it")
        elif _is(m, "RLeaky", "RSynaptic", "Synaptic", "Alpha", "Lapicque", "SConv2dLSTM", "SLSTM"):
            bad(
                at,
                m,
                "only feed-forward snntorch.Leaky neurons run on qsnn's targets (no recurrence, no synaptic current state)",
            )
        else:
            bad(at, m, f"not a layer qsnn runs (supported: {SUPPORTED})")
    if not layers:
        problems.append("the model has no synaptic layer (QuantConv2d / QuantLinear)")
    elif layers[-1].lif is None:
        problems.append("[end] the last synapse has no Leaky after it: the output layer's neurons are the classes")
    elif not _is(layers[-1].synapse, "QuantLinear", "Linear"):
        problems.append("[end] the last layer must be dense (QuantLinear): its neurons are the classes")
    resets = {getattr(x.lif, "reset_mechanism", None) for x in layers if x.lif is not None}
    if len(resets) > 1:
        problems.append(f"reset mechanisms {sorted(map(str, resets))}: one reset for every layer")
    return layers, problems


def _arch_of(layers: list[_Layer]) -> Arch:
    specs = []
    for x in layers:
        m = x.synapse
        bits = int(round(float(m.quant_weight().bit_width))) if hasattr(m, "quant_weight") else None
        if _is(m, "QuantConv2d", "Conv2d"):
            specs.append(
                ConvSpec(
                    m.out_channels,
                    as_pair(m.kernel_size)[0],
                    stride=as_pair(m.stride)[0],
                    padding=as_pair(m.padding)[0],
                    pool=x.pool,
                    weight_bits=bits,
                )
            )
        else:
            specs.append(DenseSpec(m.out_features, m.in_features, weight_bits=bits))
    return Arch(tuple(specs))


def qsnn_from_sequential(
    model: nn.Module,
    input_shape: Sequence[int],
    num_steps: int,
    *,
    num_classes: int | None = None,
    encoding: str = "static",
    frames: EventFrames | None = None,
    where: str = "the model",
    problems: Sequence[str] = (),
):
    """A :class:`~qsnn.train.model.QSNN` that runs the user's own modules (shared, not copied), or
    one :class:`ExportError` listing every problem (``problems``: the caller's own, listed with them)."""
    from qsnn.arch import ArchError
    from qsnn.train.model import QSNN

    layers, found = read_sequential(model)
    problems = [*found, *problems]
    shape = tuple(int(v) for v in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        problems.append(f"input_shape {tuple(input_shape)}: give (C, H, W) of one input frame")
    if encoding not in ENCODINGS:
        problems.append(f"encoding {encoding!r}: one of {ENCODINGS}")
    if not isinstance(num_steps, int) or num_steps < 1:
        problems.append(f"num_steps {num_steps!r}: a positive integer T")
    arch = None
    if not problems:
        arch = _arch_of(layers)
        try:
            arch.shapes(shape, num_classes)
        except ArchError as exc:
            problems.append(f"shapes: {exc}")
    if problems:
        raise ExportError(
            f"{where} cannot be exported ({len(problems)} problem{'s' * (len(problems) > 1)}): " + "; ".join(problems)
        )
    quant = [x.synapse for x in layers if hasattr(x.synapse, "quant_weight")]
    scales = [m.quant_weight().scale.detach().double() for m in quant]
    po2 = bool(quant) and all(bool(torch.all(torch.log2(s) == torch.round(torch.log2(s)))) for s in scales)
    per_channel = any(s.numel() > 1 for s in scales)
    cfg = UserConfig(
        num_steps=num_steps,
        reset=getattr(layers[0].lif, "reset_mechanism", "subtract"),
        slope=float(_slope_of(layers[0].lif)),
        batch_norm=any(x.bn is not None for x in layers),
        quant_scale="po2" if po2 else ("float" if quant else "none"),
        weight_scale="channel" if per_channel else "tensor",
        arch=str(arch),
        frames=frames or EventFrames(),
    )
    return QSNN.from_layers(
        cfg,
        shape,
        arch,
        synapses=[x.synapse for x in layers],
        norms=[x.bn if x.bn is not None else nn.Identity() for x in layers],
        neurons=[x.lif for x in layers],
    )


def _slope_of(lif: nn.Module) -> float:
    """k of a fast-sigmoid surrogate, recorded in the metadata (not used by inference); 25 (snnTorch's
    default) when the surrogate does not say."""
    grad = getattr(lif, "spike_grad", None)
    for cell in getattr(grad, "__closure__", None) or ():
        value = cell.cell_contents
        if isinstance(value, (int, float)) and value > 0:
            return float(value)
    return 25.0


def export_torch(
    model: nn.Module,
    input_shape: Sequence[int],
    num_steps: int,
    out: str | os.PathLike | None = None,
    *,
    classes: Sequence[str] | None = None,
    encoding: str = "static",
    frames: EventFrames | None = None,
    batch_size: int | None = None,
) -> Path | onnx.ModelProto:
    """Export a user's snnTorch + Brevitas ``nn.Sequential`` as qsnn's float QONNX (see the module doc).

    Args:
        model: the Sequential (it is not changed; its eval-mode function is exported).
        input_shape: (C, H, W) of one input frame.
        num_steps: T, time steps per inference.
        out: the ``.onnx`` file to write (atomically); None returns the ``ModelProto``.
        classes: class names in output-neuron order (default ``"0"``, ``"1"``, ...).
        encoding: ``"static"`` (uint8 images, the model fed pixels/255 at every step) or ``"events"``
            (per-bin event counts, encoded as ``frames`` says).
        batch_size: fix the batch dimension (else dynamic ``N``).

    Raises:
        ExportError: listing every unsupported module or setting, each with its position and why.
    """
    from .format import save_model
    from .qonnx_float import build_float_from_module

    n_out = getattr(_last_synapse(model), "out_features", None)
    names = [str(c) for c in classes] if classes is not None else [str(i) for i in range(n_out or 0)]
    problems = []
    if classes is not None and n_out is not None and len(names) != n_out:
        problems.append(
            f"classes: {len(names)} names for the last layer's {n_out} output neurons; give one name per output neuron"
        )
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        problems.append(f"classes: the name {dup!r} appears twice; each output neuron needs its own name")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        problems.append(f"batch_size {batch_size!r}: a positive integer N (or None: a dynamic batch)")
    qsnn_model = qsnn_from_sequential(
        model, input_shape, num_steps, encoding=encoding, frames=frames, problems=problems
    )
    onnx_model, _ = build_float_from_module(
        qsnn_model,
        classes=names,
        encoding=encoding,
        cfg=qsnn_model.cfg,
        input_shape=tuple(input_shape),
        source_name=type(model).__name__,
        batch_size=batch_size,
    )
    return save_model(onnx_model, out) if out is not None else onnx_model


def _last_synapse(model: nn.Module) -> nn.Module | None:
    found = None
    for _, m in _flat(model):
        if _is(m, "QuantConv2d", "Conv2d", "QuantLinear", "Linear"):
            found = m
    return found


__all__ = ["export_torch", "qsnn_from_sequential", "read_sequential", "SUPPORTED"]
