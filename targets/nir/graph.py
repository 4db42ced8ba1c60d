"""The ``nir`` target: the network as a NIR graph (``network.nir``) that NIR simulators run unmodified.

Graph (flavour ``standard``, the default), per layer i (names from the layer, e.g. ``conv1``)::

    input ─► conv1 (Conv2d, stride P) ─► conv1_lif (LIF) ─► conv2 (Conv2d, stride P) ─► conv2_lif (LIF)
          ─► fc_flatten (Flatten) ─► fc (Affine) ─► fc_lif (LIF) ─► output

for the paper's network; any stack of conv and dense layers of any depth is written the same way:
one ``Conv2d`` (a conv of stride s and zero padding pad, pooling folded in: stride s·P, padding pad)
or ``Affine`` and one ``LIF`` per layer, a ``Flatten`` before the first dense layer (right after the
input for a dense-only net), none between dense layers.

The conventions, each chosen so that the importers of snnTorch 1.0, spikingjelly 2.0 and Norse 1.1
read the file as it is (measured: ``make nir-check``):

* **Pooling folded into the synapse.** P×P sum-pooling of the current, stride P, after a conv of
  stride s is the stride-s·P convolution with the folded kernel ``W'[a, b] = Σ_{i,j<P} W[a−s·i, b−s·j]``
  (side k+s(P−1), :func:`qsnn.network.fold_pool`; the conv's zero padding unchanged): exact in
  real arithmetic, and a plain ``Conv2d`` is the one node every importer maps (snnTorch and
  spikingjelly know only ``AvgPool2d``, Norse and Spyx only ``SumPool2d``).
* **Synapse scale.** Weights ``W'·2^(s+e)/(θ_c·(1−β))`` and bias ``b_c/(θ_c·(1−β))`` for output
  channel c (W the integer weights, s the current shift, e the weight exponent, θ_c and b_c the
  integer threshold and bias). Dividing by θ_c makes every ``v_threshold`` 1 (spikingjelly and
  snnTorch need one threshold per layer); the membrane is in units of the channel's threshold
  (real membrane = v · θ_c · scale_c).
* **Neuron.** ``LIF`` with per-neuron arrays of the layer's shape, ``τ = dt/(1−β)``, ``r = 1``,
  ``v_leak = 0``, ``v_reset = 0``, ``v_threshold = 1``. NIR's ``τ·dv/dt = (v_leak − v) + r·I``
  by forward Euler at ``dt = 1e-4`` (the step snnTorch and spikingjelly assume; Norse takes it as
  ``from_nir(graph, dt=1e-4)``) gives ``v_t = β·v_{t−1} + (1−β)·I_t``; the synapse's 1/(1−β) makes
  that ``β·v_{t−1} + W·x``. With ``r = 1`` the input gain lives in the weights, which Norse (it
  ignores ``r``) needs; snnTorch and spikingjelly read ``r = 1`` as well. β is the integer leak's
  factor (``m/2^F`` for ``mul``, ``1 − 2^−d`` for ``shift``, ``1 − dv/2^12`` for ``loihi``).
* **Flatten.** ``Flatten(start_dim=−3, end_dim=−1)``: the whole (C, H, W) sample in NIR's
  batch-free shapes, and the same axes for importers that hand the numbers to ``torch.nn.Flatten``
  on a batch (snnTorch, Norse) and for those that shift them past the batch axis (spikingjelly,
  Sinabs). Dense weights in (C, H, W) order.

Flavours (``write(..., flavor=...)``, ``qsnn-export --nir-flavor``) for importers that read NIR
differently: ``spyx`` (Spyx 1.0 flattens channels-last and ignores ``r``: dense weights in (H, W, C)
order, ``r = τ/dt`` and unscaled weights) and ``sinabs`` (Sinabs 3.1.3 with nir ≤ 1.0.4: no
``v_reset`` field, scalar neuron parameters, τ in steps with its exponential leak
``β = exp(−1/τ)``). See :data:`FLAVORS`.

What NIR cannot express (graph metadata ``qsnn_differences`` and the manifest): NIR's LIF resets to
``v_reset = 0`` right after a spike (zero reset), while the integer network (profile
``reset="subtract"``) subtracts θ one step later; and NIR is real-valued, while the chip floors the
leak and the negative current shift and saturates the membrane. A NIR simulator therefore computes a
close float relative of the integer network, not the same spikes.

:func:`read` needs no approximation: the graph metadata ``qsnn`` (JSON) records every integer
(thresholds, biases, leak constants, shifts, the profile), and the integer weights are recovered
exactly from the synapse nodes (unfolded, checked against the recorded normalisers).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from qsnn.arith import effective_beta
from qsnn.errors import PARSE_ERRORS, ExportError, LimitsError, ProfileError
from qsnn.jsonio import to_jsonable
from qsnn.network import IntegerLayer, IntegerNetwork, fold_pool
from qsnn.optional import require

from ..fit import unfold_pool
from ..manifest import layer_from_parts, network_from_parts, network_record

NAME = "nir"
DESCRIPTION = "a NIR graph (network.nir) that snnTorch, spikingjelly, Norse (and, by flavour, Spyx, Sinabs) import"
FILE = "network.nir"
#: The Euler step of the graph's time constants (snnTorch's NIR import hard-codes dt = 1e-4).
DT = 1e-4
GRAPH_FORMAT = "qsnn-nir"
GRAPH_FORMAT_VERSION = 2


@dataclass(frozen=True)
class Flavor:
    """How one family of NIR importers wants the same network written.

    Attributes:
        name: the ``--nir-flavor`` value.
        consumers: the importers (and how to call them) that run this flavour unmodified.
        input_gain: ``"weights"``: r = 1 and the synapse carries 1/(1−β) (importers that ignore r);
            ``"r"``: r = τ/dt and unit weights (importers that ignore r but add the current unscaled).
        dense_order: ``"chw"`` (NIR's, PyTorch's) or ``"hwc"`` (the flatten order of a channels-last
            runtime) for the columns of a dense layer after a convolution.
        tau: ``"euler"`` (τ = dt/(1−β): v ← (1 − dt/τ)·v) or ``"exp"`` (τ = −dt/ln β: v ← e^(−dt/τ)·v).
        dt: the time step the graph's τ assume.
        v_reset: write NIR 1.0.5+'s ``v_reset`` field (nir ≤ 1.0.4 cannot read it).
        scalar_neurons: neuron parameters as one-element arrays instead of per-neuron arrays.
    """

    name: str
    consumers: str
    input_gain: str = "weights"
    dense_order: str = "chw"
    tau: str = "euler"
    dt: float = DT
    v_reset: bool = True
    scalar_neurons: bool = False


FLAVORS: dict[str, Flavor] = {
    f.name: f
    for f in (
        Flavor(
            "standard",
            "snnTorch 1.0 snntorch.import_nir.import_from_nir(graph); spikingjelly 2.0 "
            "spikingjelly.activation_based.nir_exchange.import_from_nir(graph); Norse 1.1 "
            "norse.torch.from_nir(graph, dt=1e-4); nirtorch 2.x nir_to_torch",
        ),
        Flavor(
            "spyx",
            "Spyx 1.0 spyx.nir.from_nir(graph, x, dt=1e-4) (JAX, channels-last)",
            input_gain="r",
            dense_order="hwc",
        ),
        Flavor(
            "sinabs",
            "Sinabs 3.1.3 sinabs.from_nir(graph, batch_size=N) with nir 1.0.4 (τ in steps)",
            input_gain="r",
            tau="exp",
            dt=1.0,
            v_reset=False,
            scalar_neurons=True,
        ),
    )
}
DEFAULT_FLAVOR = "standard"


def get_flavor(name: str) -> Flavor:
    try:
        return FLAVORS[name]
    except KeyError:
        raise ProfileError(f"unknown NIR flavour {name!r}; choose one of {', '.join(FLAVORS)}") from None


def beta_of(net: IntegerNetwork, layer: IntegerLayer) -> float:
    """The real leak factor β of a layer's integer leak constant (:func:`qsnn.arith.effective_beta`)."""
    return effective_beta(int(layer.leak_const), net.profile)


def tau_of(beta: float, flavor: Flavor) -> float:
    """NIR's τ for leak factor β (0 < β < 1) under the flavour's discretisation."""
    if flavor.tau == "exp":
        return -flavor.dt / math.log(beta)
    return flavor.dt / (1.0 - beta)


def differences(net: IntegerNetwork, flavor: Flavor | None = None) -> list[str]:
    """What the NIR graph does not carry, for this network."""
    flavor = flavor or FLAVORS[DEFAULT_FLAVOR]
    p = net.profile
    out = []
    if p.reset == "subtract":
        out.append(
            "reset: NIR's LIF resets the membrane to v_reset = 0 right after a spike (zero reset); the "
            "integer network subtracts its threshold, one step later (reset='subtract', delayed reset)"
        )
    else:
        out.append(
            "reset: NIR's LIF resets to v_reset = 0 in the same step as the spike; the integer network "
            "clears the membrane before the next step's input (the same spikes)"
        )
    out.append(
        "integer grid: NIR is real-valued; the chip floors the leak product"
        + (
            " and the right-shifted current (negative current shift)"
            if any(l.current_shift < 0 for l in net.layers)
            else ""
        )
        + f", and {'saturates' if p.overflow == 'saturate' else 'wraps'} the membrane at {p.membrane_bits} bits"
    )
    if p.synaptic_delay:
        out.append(
            f"synaptic delay: the chip delivers spikes {p.synaptic_delay} step(s) later per layer; NIR "
            "edges have no delay here"
        )
    if flavor.tau == "exp":
        out.append(
            f"time: tau is in steps (dt = {flavor.dt:g}) for an exponential leak, tau = -1/ln(beta), "
            f"r = 1 (Sinabs' convention)"
        )
    else:
        gain = "r = 1, the synapse carries 1/(1-beta)" if flavor.input_gain == "weights" else "r = tau/dt"
        out.append(f"time: LIF parameters assume forward Euler with dt = {flavor.dt:g}: tau = dt/(1-beta), {gain}")
    if any(layer.kind == "conv" and layer.pool > 1 for layer in net.layers):
        out.append(
            "pooling: the chip's p x p sum-pooling of the current is folded into the convolution (a conv of "
            "kernel k and stride s: kernel k+s(p-1), stride s*p, same padding), exact in real arithmetic"
        )
    if flavor.dense_order == "hwc":
        out.append(
            "dense weights: columns in (H, W, C) order, the flatten order of a channels-last runtime (Spyx); "
            "other NIR importers need the standard flavour"
        )
    out.append("input: the graph takes the raw integer input (uint8 pixels 0..255, or event counts) at every step")
    return out


def _node_name(layer: IntegerLayer, index: int, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_]", "_", layer.name) or f"layer{index}"
    if base[0].isdigit():
        base = f"l{base}"
    name, k = base, 2
    while name in taken or name in ("input", "output"):
        name, k = f"{base}_{k}", k + 1
    return name


def _hwc_columns(shape: tuple[int, ...]) -> np.ndarray:
    """Column permutation: position j of a channels-last flatten of (C, H, W) reads CHW column perm[j]."""
    return np.arange(int(np.prod(shape))).reshape(shape).transpose(1, 2, 0).reshape(-1)


def _input_gain(beta: float, flavor: Flavor) -> float:
    """The factor the synapse carries so that NIR's LIF adds exactly W·x to the membrane."""
    if beta >= 1.0:
        return 1.0
    return 1.0 / (1.0 - beta) if flavor.input_gain == "weights" and flavor.tau == "euler" else 1.0


def build_graph(net: IntegerNetwork, flavor: str = DEFAULT_FLAVOR):
    """The :class:`nir.NIRGraph` of ``net`` (see the module docstring) and the per-layer records."""
    nir = require("nir", "a NIR graph (qsnn-export --to nir)")

    fl = get_flavor(flavor)
    nodes: dict[str, Any] = {"input": nir.Input(input_type={"input": np.array(net.input_shape)})}
    edges: list[tuple[str, str]] = []
    prev = "input"
    shape: tuple[int, ...] = tuple(net.input_shape)
    taken: set[str] = set()
    records = []
    for i, layer in enumerate(net.layers, start=1):
        base = _node_name(layer, i, taken)
        taken.add(base)
        out_shape = layer.output_shape(shape)
        beta = beta_of(net, layer)
        theta = np.asarray(layer.threshold, dtype=np.int64)
        norm = np.where(theta > 0, theta, 1).astype(np.float64)  # θ_c, or 1 for θ_c = 0
        gain = 2.0 ** (int(layer.current_shift) + int(layer.weight_exp))
        in_gain = _input_gain(beta, fl)
        w = (
            fold_pool(layer.weight, layer.pool, stride=layer.stride)
            if layer.kind == "conv"
            else np.asarray(layer.weight, dtype=np.int64)
        )
        w = w.astype(np.float64)
        per_channel = gain * in_gain / norm
        w_eff = w * per_channel.reshape((-1,) + (1,) * (w.ndim - 1))
        b_eff = np.asarray(layer.bias, dtype=np.float64) * in_gain / norm
        names: dict[str, str] = {}
        order = "chw"
        if layer.kind == "conv":
            names["synapse"] = base
            stride, pad = int(layer.stride) * int(layer.pool), int(layer.padding)
            nodes[base] = nir.Conv2d(
                input_shape=(int(shape[1]), int(shape[2])),
                weight=w_eff,
                stride=(stride, stride),
                padding=(pad, pad),
                dilation=1,
                groups=1,
                bias=b_eff,
            )
            edges.append((prev, base))
            prev = base
        else:
            if len(shape) > 1:
                names["flatten"] = f"{base}_flatten"
                # −len(shape)..−1: the whole sample, whether or not the importer's tensors carry a batch axis
                nodes[names["flatten"]] = nir.Flatten(
                    input_type={"input": np.array(shape)}, start_dim=-len(shape), end_dim=-1
                )
                edges.append((prev, names["flatten"]))
                prev = names["flatten"]
                if fl.dense_order == "hwc" and len(shape) == 3:
                    w_eff = w_eff[:, _hwc_columns(shape)]
                    order = "hwc"
            names["synapse"] = base
            nodes[base] = nir.Affine(weight=w_eff, bias=b_eff)
            edges.append((prev, base))
            prev = base
        names["neuron"] = f"{base}_lif"
        pshape = (1,) if fl.scalar_neurons else out_shape
        ones = np.ones(pshape, dtype=np.float64)
        v_thr = ones * (
            (theta / norm)[0] if fl.scalar_neurons else (theta / norm).reshape((-1,) + (1,) * (len(out_shape) - 1))
        )
        reset = {"v_reset": np.zeros_like(ones)} if fl.v_reset else {}
        if beta >= 1.0:
            nodes[names["neuron"]] = nir.IF(r=ones / fl.dt, v_threshold=v_thr, **reset)
            tau = math.inf
        else:
            tau = tau_of(beta, fl)
            r = 1.0 if fl.input_gain == "weights" or fl.tau == "exp" else tau / fl.dt
            nodes[names["neuron"]] = nir.LIF(
                tau=ones * tau, r=ones * r, v_leak=np.zeros_like(ones), v_threshold=v_thr, **reset
            )
        edges.append((prev, names["neuron"]))
        prev = names["neuron"]
        records.append(
            {
                "name": layer.name,
                "kind": layer.kind,
                "nodes": names,
                "weight_shape": list(layer.weight.shape),
                "pool": int(layer.pool),
                "stride": int(layer.stride),
                "padding": int(layer.padding),
                "current_shift": int(layer.current_shift),
                "weight_exp": int(layer.weight_exp),
                "decay": int(layer.leak_const),
                "beta": beta,
                "tau": tau,
                "input_gain": in_gain,
                "threshold": theta.tolist(),
                "bias": np.asarray(layer.bias, dtype=np.int64).tolist(),
                "normaliser": norm.astype(np.int64).tolist(),
                "synapse_gain": gain,
                "dense_order": order,
                "flatten_shape": list(shape) if order == "hwc" else None,
                "scale": [float(s) for s in np.asarray(layer.scale, dtype=np.float64)],
            }
        )
        shape = out_shape
    nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    edges.append((prev, "output"))
    qsnn = {
        "format": GRAPH_FORMAT,
        "format_version": GRAPH_FORMAT_VERSION,
        "flavor": fl.name,
        "profile": net.profile.to_dict(),
        "network": network_record(net),
        "layers": records,
    }
    metadata = {
        "qsnn": json.dumps(to_jsonable(qsnn)),
        "qsnn_format": GRAPH_FORMAT,
        "qsnn_flavor": fl.name,
        "qsnn_consumers": fl.consumers,
        "dt": fl.dt,
        "qsnn_dt": fl.dt,
        "time_discretisation": (
            "exponential: v <- exp(-dt/tau) v + r I"
            if fl.tau == "exp"
            else "forward Euler: v <- (1 - dt/tau) v + (dt/tau) r I"
        ),
        "reset": "zero (v_reset = 0, right after the spike)",
        "qsnn_reset": f"{net.profile.reset}"
        + (" (delayed: theta is subtracted one step after the spike)" if net.profile.reset == "subtract" else ""),
        "nir_reset": "zero (v_reset = 0, right after the spike)",
        "qsnn_membrane_units": "per channel, membrane / theta_c (every v_threshold is 1); real value = v * theta_c * scale_c",
        "qsnn_differences": "; ".join(differences(net, fl)),
        "qsnn_num_steps": int(net.num_steps),
        "qsnn_classes": json.dumps(list(net.classes)),
    }
    # one-element neuron parameters (sinabs) do not type-check against the layer's shape in nir 1.0.5+
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata, type_check=not fl.scalar_neurons), records


def check(net: IntegerNetwork, flavor: str = DEFAULT_FLAVOR) -> None:
    """NIR holds any network whose constants are finite; the profile's own limits are checked upstream."""
    found = problems(net, flavor)
    if found:
        raise LimitsError(found, "the nir target cannot hold this network")


def problems(net: IntegerNetwork, flavor: str = DEFAULT_FLAVOR) -> list[str]:
    """Every layer whose leak or thresholds the flavour's NIR graph cannot express (an unknown flavour raises)."""
    fl = get_flavor(flavor)
    found = []
    for i, layer in enumerate(net.layers, start=1):
        beta = beta_of(net, layer)
        if not 0.0 <= beta <= 1.0:
            found.append(
                f"nir: layer {i} ({layer.name}): leak factor beta={beta} outside [0, 1] "
                f"(leak constant {layer.leak_const}); NIR's LIF needs 0 <= beta <= 1"
            )
        elif fl.tau == "exp" and beta <= 0.0:
            found.append(
                f"nir: layer {i} ({layer.name}): beta = 0 has no time constant for an exponential "
                f"leak (flavour {fl.name}); use the standard flavour"
            )
        if fl.scalar_neurons and np.any(np.asarray(layer.threshold) <= 0):
            found.append(
                f"nir: layer {i} ({layer.name}): a channel with threshold 0 needs per-neuron "
                f"thresholds, which flavour {fl.name} does not write; use the standard flavour"
            )
    return found


def _strip_v_reset(path: Path) -> None:
    """Remove NIR 1.0.5+'s ``v_reset`` datasets, which nir ≤ 1.0.4 rejects (every one is 0 here)."""
    h5py = require("h5py", "a NIR graph (qsnn-export --to nir)")

    with h5py.File(path, "r+") as f:

        def visit(group):
            for key in list(group.keys()):
                item = group[key]
                if isinstance(item, h5py.Group):
                    visit(item)
                elif key == "v_reset" and "type" in group and np.all(np.asarray(item[()]) == 0):
                    del group[key]

        visit(f)


def write(net: IntegerNetwork, folder: Path, flavor: str = DEFAULT_FLAVOR) -> dict[str, Any]:
    nir = require("nir", "qsnn-export --to nir")
    require("h5py", "qsnn-export --to nir")  # nir writes its HDF5 file with it (imported there, lazily)

    fl = get_flavor(flavor)
    graph, records = build_graph(net, fl.name)
    nir.write(folder / FILE, graph)
    if not fl.v_reset:
        _strip_v_reset(folder / FILE)
    layers = [
        {
            "nodes": r["nodes"],
            "beta": r["beta"],
            "tau": r["tau"],
            "synapse_gain": r["synapse_gain"],
            "input_gain": r["input_gain"],
            "normaliser": r["normaliser"],
            "dense_order": r["dense_order"],
        }
        for r in records
    ]
    return {
        "options": {"flavor": fl.name},
        "layers": layers,
        "files_by_role": {"graph": FILE},
        "nir": {
            "flavor": fl.name,
            "consumers": fl.consumers,
            "dt": fl.dt,
            "tau": fl.tau,
            "input_gain": fl.input_gain,
            "dense_order": fl.dense_order,
            "nir_version": getattr(nir, "version", None),
            "reset": "zero (NIR LIF)",
            "qsnn_reset": net.profile.reset,
        },
        "differences": differences(net, fl),
        "notes": [
            "The exact integers (thresholds, biases, leak constants, shifts, profile) are in the graph "
            "metadata key 'qsnn' (JSON); qsnn reads the network back bit-exactly from network.nir."
        ],
    }


def read(folder: Path, manifest: Mapping[str, Any] | None = None) -> IntegerNetwork:
    """The :class:`IntegerNetwork` of a ``network.nir`` written by :func:`write` (manifest optional)."""
    path = folder / FILE if folder.is_dir() else folder
    nir = require("nir", f"reading {path} (a NIR graph)")
    require("h5py", f"reading {path} (a NIR graph)")  # nir reads its HDF5 file with it
    try:
        graph = nir.read(path, type_check=False)  # the sinabs flavour does not type-check; read() checks the rest
    except (OSError, *PARSE_ERRORS) as exc:  # h5py and nir raise many kinds
        raise ExportError(f"{path}: not a readable NIR file ({exc})") from None
    raw = graph.metadata.get("qsnn")
    if raw is None:
        raise ExportError(
            f"{path}: a NIR graph without qsnn metadata; qsnn can only read graphs it wrote "
            f"(the integers are in the metadata key 'qsnn')"
        )
    meta = json.loads(raw if isinstance(raw, str) else raw.decode())
    if meta.get("format") != GRAPH_FORMAT or meta.get("format_version") != GRAPH_FORMAT_VERSION:
        raise ExportError(
            f"{path}: qsnn NIR metadata of format {meta.get('format')!r} "
            f"v{meta.get('format_version')!r}, expected {GRAPH_FORMAT!r} v{GRAPH_FORMAT_VERSION}"
        )
    layers = []
    for rec in meta["layers"]:
        names = rec["nodes"]
        try:
            syn = graph.nodes[names["synapse"]]
            neuron = graph.nodes[names["neuron"]]
        except KeyError as exc:
            raise ExportError(f"{path}: node {exc} of layer {rec['name']} is missing") from None
        norm = np.asarray(rec["normaliser"], dtype=np.float64)
        scale = float(rec["synapse_gain"]) * float(rec["input_gain"])
        w_eff = np.asarray(syn.weight, dtype=np.float64)
        if rec.get("dense_order") == "hwc":
            cols = _hwc_columns(tuple(rec["flatten_shape"]))
            unperm = np.empty_like(w_eff)
            unperm[:, cols] = w_eff
            w_eff = unperm
        w_real = w_eff * norm.reshape((-1,) + (1,) * (w_eff.ndim - 1)) / scale
        folded = np.rint(w_real)
        if not np.allclose(w_real, folded, rtol=0, atol=1e-6):
            raise ExportError(f"{path}: the weights of node {names['synapse']} are not the integers qsnn wrote")
        stride, padding = int(rec.get("stride", 1)), int(rec.get("padding", 0))
        try:
            weight = (
                unfold_pool(folded.astype(np.int64), int(rec["pool"]), stride=stride)
                if rec["kind"] == "conv"
                else folded
            )
        except ValueError:
            raise ExportError(f"{path}: the kernel of node {names['synapse']} is not a pooled qsnn kernel") from None
        if weight.shape != tuple(rec["weight_shape"]):
            raise ExportError(
                f"{path}: node {names['synapse']} has weights {weight.shape}, expected {tuple(rec['weight_shape'])}"
            )
        if rec["kind"] == "conv":
            want = stride * int(rec["pool"])
            got_stride = np.broadcast_to(np.asarray(syn.stride).reshape(-1), (2,)).tolist()
            got_pad = np.broadcast_to(np.asarray(syn.padding).reshape(-1), (2,)).tolist()
            if got_stride != [want, want] or got_pad != [padding, padding]:
                raise ExportError(
                    f"{path}: node {names['synapse']} has stride {got_stride} and padding {got_pad}, "
                    f"expected {[want] * 2} (stride {stride} × pool {rec['pool']}) and {[padding] * 2}"
                )
        theta = np.asarray(rec["threshold"], dtype=np.int64)
        bias = np.asarray(rec["bias"], dtype=np.int64)
        v_thr = np.asarray(neuron.v_threshold, dtype=np.float64)
        thr_nodes = (
            np.broadcast_to(v_thr.reshape(-1)[:1], (len(theta), 1))
            if v_thr.size == 1
            else v_thr.reshape(len(theta), -1)
        ) * norm[:, None]
        bias_nodes = np.asarray(syn.bias, dtype=np.float64) * norm / float(rec["input_gain"])
        if not (
            np.allclose(thr_nodes, theta[:, None], rtol=1e-9, atol=1e-9)
            and np.allclose(bias_nodes, bias, rtol=1e-9, atol=1e-6)
        ):
            raise ExportError(f"{path}: thresholds or biases of layer {rec['name']} differ from the recorded integers")
        layers.append(
            layer_from_parts(
                rec, weight.astype(np.int64), theta, bias, int(rec["decay"]), stride=stride, padding=padding
            )
        )
    return network_from_parts({"profile": meta["profile"], "network": meta["network"]}, layers)


def readme(manifest: Mapping[str, Any]) -> str:
    info = manifest["nir"]
    fl = get_flavor(info.get("flavor", DEFAULT_FLAVOR))
    rows = []
    for rec in manifest["layers"]:
        nodes = " → ".join(rec["nodes"][k] for k in ("flatten", "synapse", "neuron") if k in rec["nodes"])
        rows.append(f"| {rec['index']} | {rec['name']} | {nodes} | {tuple(rec['output_shape'])} | {rec['beta']:.6g} |")
    diffs = "\n".join(f"- {d}" for d in manifest["differences"])
    if fl.tau == "exp":
        neuron = (
            "NIR `LIF`, τ = −1/ln β in steps, r = 1, v_leak = 0, one-element parameter arrays; Sinabs' "
            "exponential leak exp(−1/τ) gives v_t = β·v_(t−1) + I_t"
        )
    elif fl.input_gain == "weights":
        neuron = (
            f"NIR `LIF`, τ = dt/(1−β), r = 1, v_leak = 0, v_reset = 0, dt = {fl.dt:g}: forward Euler "
            f"gives v_t = β·v_(t−1) + (1−β)·I_t, and the synapse's 1/(1−β) makes it β·v_(t−1) + W·x"
        )
    else:
        neuron = (
            f"NIR `LIF`, τ = dt/(1−β), r = τ/dt, v_leak = 0, dt = {fl.dt:g}: forward Euler gives v_t = β·v_(t−1) + I_t"
        )
    return f"""# qsnn NIR graph (flavour `{fl.name}`)

`network.nir` is the network as a [NIR](https://neuroir.org) graph (HDF5), readable with
`nir.read("network.nir")`. Importers that run this file as it is: {fl.consumers}.
It was compiled from a qsnn integer network (profile `{manifest["profile"]["name"]}`), T =
{manifest["network"]["num_steps"]} steps per input; the class is the output neuron that spiked most.
Time step: dt = {fl.dt:g} (graph metadata `dt`); reset: NIR's zero reset (metadata `reset`).

## Graph

| # | layer | nodes | output | β |
|---|---|---|---|---|
{chr(10).join(rows)}

- Synapses: a convolution of stride s and padding pad followed by the chip's P×P sum-pooling is one
  `Conv2d` of stride s·P and padding pad whose kernel is the pooled kernel
  W'[a, b] = Σ_(i,j<P) W[a−s·i, b−s·j]; weights = W'·2^(shift+exp)/θ_c and
  bias = b_c/θ_c per output channel c{" (times 1/(1−β), see neurons)" if fl.input_gain == "weights" and fl.tau == "euler" else ""},
  so every LIF threshold is 1 and the membrane is in units of the channel's threshold (real
  membrane = v · θ_c · scale_c; scale_c in `manifest.json`).
- Flatten: `start_dim = −3, end_dim = −1` (the whole sample, with or without a batch axis);
  dense weights in {"(H, W, C) order for a channels-last runtime" if fl.dense_order == "hwc" else "(C, H, W) order"}.
- Neurons: {neuron}.
- Input: the raw integer input (uint8 pixels 0..255) at every step.

## What NIR cannot say (differences to the chip)

{diffs}

The exact integers are in the graph metadata key `qsnn` (JSON), so qsnn reads the integer network
back from `network.nir` bit for bit; `manifest.json` lists the files and their SHA-256.
"""
