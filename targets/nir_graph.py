"""The ``nir`` target: the network as a NIR graph (``network.nir``) for the neuromorphic ecosystem.

Graph, per layer i (names from the layer, e.g. ``conv1``)::

    input ─► conv1 (Conv2d) ─► conv1_pool (AvgPool2d) ─► conv1_lif (LIF) ─► …
          … ─► fc_flatten (Flatten) ─► fc (Affine) ─► fc_lif (LIF) ─► output

What NIR can express, and how the integer network is written in it:

* **Synapse.** ``Conv2d`` (stride 1, no padding) or ``Affine``, weights ``W·2^(s+e)·P²/θ_c`` and bias
  ``b_c/θ_c`` for output channel c (W the integer weights, s the current shift, e the weight
  exponent, P the pooling side, θ_c and b_c the integer threshold and bias). Dividing each channel
  by its θ_c makes every ``v_threshold`` 1 (snnTorch's importer needs one threshold per layer);
  the membrane is then in units of the channel's threshold (real membrane = v · θ_c · scale_c).
* **Pooling.** ``AvgPool2d`` (P×P, stride P) with the P² folded into the synapse above: it equals
  the integer network's sum-pooling and is the pooling node snnTorch's importer understands. The
  bias passes through an average unchanged.
* **Neuron.** ``LIF`` with per-neuron arrays: NIR's ``τ·dv/dt = (v_leak − v) + R·I`` discretised with
  forward Euler at ``dt = 1e-4`` (the step snnTorch's NIR import and export assume) gives
  ``v_t = (1 − dt/τ)·v_{t−1} + (R·dt/τ)·I_t``; so ``τ = dt/(1 − β)``, ``R = τ/dt`` (unit input
  gain) and ``v_leak = 0`` give ``v_t = β·v_{t−1} + I_t``, with β the integer leak's factor
  (``m/2^F`` for ``mul``, ``1 − 2^−d`` for ``shift``, ``1 − dv/2^12`` for ``loihi``).

What NIR cannot express (recorded in the graph metadata ``qsnn_differences`` and the manifest):
NIR's LIF resets to ``v_reset = 0`` right after a spike (zero reset), while the integer network
(profile ``reset="subtract"``) subtracts θ one step later; and NIR is real-valued, while the chip
floors the leak and the negative current shift and saturates the membrane. A NIR simulator
therefore computes a close float relative of the integer network, not the same spikes.

:func:`read` needs no approximation: the graph metadata ``qsnn`` (JSON) records every integer
(thresholds, biases, leak constants, shifts, the profile), and the integer weights are recovered
exactly from the synapse nodes (checked against the recorded normalisers).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from qsnn.arith import effective_beta
from qsnn.errors import PARSE_ERRORS, ExportError, ProfileError
from qsnn.files import to_jsonable
from qsnn.network import IntegerLayer, IntegerNetwork

from .manifest import layer_from_parts, network_from_parts, network_record

NAME = "nir"
DESCRIPTION = "a NIR graph (network.nir) readable by nir.read, snnTorch, Norse, Lava-dl, ..."
FILE = "network.nir"
#: The Euler step snnTorch's NIR import and export assume (snntorch/import_nir.py: dt = 1e-4).
DT = 1e-4
GRAPH_FORMAT = "qsnn-nir"
GRAPH_FORMAT_VERSION = 1


def beta_of(net: IntegerNetwork, layer: IntegerLayer) -> float:
    """The real leak factor β of a layer's integer leak constant (:func:`qsnn.arith.effective_beta`)."""
    return effective_beta(int(layer.leak_const), net.profile)


def differences(net: IntegerNetwork) -> list[str]:
    """What the NIR graph does not carry, for this network."""
    p = net.profile
    out = []
    if p.reset == "subtract":
        out.append("reset: NIR's LIF resets the membrane to v_reset = 0 right after a spike (zero reset); the "
                   "integer network subtracts its threshold, one step later (reset='subtract', delayed reset)")
    else:
        out.append("reset: NIR's LIF resets to v_reset = 0 in the same step as the spike; the integer network "
                   "clears the membrane before the next step's input (the same spikes)")
    out.append("integer grid: NIR is real-valued; the chip floors the leak product"
               + (" and the right-shifted current (negative current shift)" if any(l.current_shift < 0 for l in net.layers) else "")
               + f", and {'saturates' if p.overflow == 'saturate' else 'wraps'} the membrane at {p.membrane_bits} bits")
    if p.synaptic_delay:
        out.append(f"synaptic delay: the chip delivers spikes {p.synaptic_delay} step(s) later per layer; NIR "
                   "edges have no delay here")
    out.append(f"time: NIR LIF parameters assume forward Euler with dt = {DT} (snnTorch's convention): "
               "tau = dt/(1-beta), r = tau/dt")
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


def build_graph(net: IntegerNetwork):
    """The :class:`nir.NIRGraph` of ``net`` (see the module docstring)."""
    import nir

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
        theta = np.asarray(layer.threshold, dtype=np.int64)
        norm = np.where(theta > 0, theta, 1).astype(np.float64)           # θ_c, or 1 for θ_c = 0
        gain = 2.0 ** (int(layer.current_shift) + int(layer.weight_exp)) * float(layer.pool ** 2)
        w = np.asarray(layer.weight, dtype=np.float64)
        w_eff = w * gain / norm.reshape((-1,) + (1,) * (w.ndim - 1))
        b_eff = np.asarray(layer.bias, dtype=np.float64) / norm
        names: dict[str, str] = {}
        if layer.kind == "conv":
            names["synapse"] = base
            nodes[base] = nir.Conv2d(input_shape=(int(shape[1]), int(shape[2])), weight=w_eff, stride=1,
                                     padding=0, dilation=1, groups=1, bias=b_eff)
            edges.append((prev, base))
            prev = base
            if layer.pool > 1:
                names["pool"] = f"{base}_pool"
                p = layer.pool
                nodes[names["pool"]] = nir.AvgPool2d(kernel_size=np.array([p, p]), stride=np.array([p, p]),
                                                     padding=np.array([0, 0]))
                edges.append((prev, names["pool"]))
                prev = names["pool"]
        else:
            if len(shape) > 1:
                names["flatten"] = f"{base}_flatten"
                # NIR shapes carry no batch axis: start_dim 0 flattens the whole (C, H, W) sample
                nodes[names["flatten"]] = nir.Flatten(input_type={"input": np.array(shape)}, start_dim=0, end_dim=-1)
                edges.append((prev, names["flatten"]))
                prev = names["flatten"]
            names["synapse"] = base
            nodes[base] = nir.Affine(weight=w_eff, bias=b_eff)
            edges.append((prev, base))
            prev = base
        beta = beta_of(net, layer)
        names["neuron"] = f"{base}_lif"
        per_neuron = np.ones(out_shape, dtype=np.float64)
        v_thr = per_neuron * (theta / norm).reshape((-1,) + (1,) * (len(out_shape) - 1))
        if beta >= 1.0:
            nodes[names["neuron"]] = nir.IF(r=per_neuron.copy(), v_threshold=v_thr,
                                            v_reset=np.zeros_like(per_neuron))
        else:
            tau = DT / (1.0 - beta)
            nodes[names["neuron"]] = nir.LIF(tau=per_neuron * tau, r=per_neuron * (tau / DT),
                                             v_leak=np.zeros_like(per_neuron), v_threshold=v_thr,
                                             v_reset=np.zeros_like(per_neuron))
        edges.append((prev, names["neuron"]))
        prev = names["neuron"]
        records.append({
            "name": layer.name, "kind": layer.kind, "nodes": names, "weight_shape": list(layer.weight.shape),
            "pool": int(layer.pool), "current_shift": int(layer.current_shift), "weight_exp": int(layer.weight_exp),
            "decay": int(layer.leak_const), "beta": beta, "threshold": theta.tolist(),
            "bias": np.asarray(layer.bias, dtype=np.int64).tolist(),
            "normaliser": norm.astype(np.int64).tolist(), "synapse_gain": gain,
            "scale": [float(s) for s in np.asarray(layer.scale, dtype=np.float64)],
        })
        shape = out_shape
    nodes["output"] = nir.Output(output_type={"output": np.array(shape)})
    edges.append((prev, "output"))
    qsnn = {"format": GRAPH_FORMAT, "format_version": GRAPH_FORMAT_VERSION, "profile": net.profile.to_dict(),
            "network": network_record(net), "layers": records}
    metadata = {
        "qsnn": json.dumps(to_jsonable(qsnn)),
        "qsnn_format": GRAPH_FORMAT,
        "qsnn_reset": net.profile.reset,
        "nir_reset": "zero (v_reset = 0, right after the spike)",
        "qsnn_dt": DT,
        "qsnn_membrane_units": "per channel, membrane / theta_c (every v_threshold is 1); real value = v * theta_c * scale_c",
        "qsnn_differences": "; ".join(differences(net)),
        "qsnn_num_steps": int(net.num_steps),
        "qsnn_classes": json.dumps(list(net.classes)),
    }
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=metadata), records


def check(net: IntegerNetwork) -> None:
    """NIR holds any network whose constants are finite; the profile's own limits are checked upstream."""
    for i, layer in enumerate(net.layers, start=1):
        beta = beta_of(net, layer)
        if not 0.0 <= beta <= 1.0:
            raise ProfileError(f"nir: layer {i} ({layer.name}): leak factor beta={beta} outside [0, 1] "
                               f"(leak constant {layer.leak_const}); NIR's LIF needs 0 <= beta <= 1")


def write(net: IntegerNetwork, folder: Path) -> dict[str, Any]:
    import nir

    graph, records = build_graph(net)
    nir.write(folder / FILE, graph)
    layers = [{"nodes": r["nodes"], "beta": r["beta"], "synapse_gain": r["synapse_gain"],
               "normaliser": r["normaliser"]} for r in records]
    return {
        "options": {},
        "layers": layers,
        "files_by_role": {"graph": FILE},
        "nir": {"dt": DT, "nir_version": getattr(nir, "version", None), "reset": "zero (NIR LIF)",
                "qsnn_reset": net.profile.reset},
        "differences": differences(net),
        "notes": ["The exact integers (thresholds, biases, leak constants, shifts, profile) are in the graph "
                  "metadata key 'qsnn' (JSON); qsnn reads the network back bit-exactly from network.nir."],
    }


def read(folder: Path, manifest: Mapping[str, Any] | None = None) -> IntegerNetwork:
    """The :class:`IntegerNetwork` of a ``network.nir`` written by :func:`write` (manifest optional)."""
    import nir

    path = folder / FILE if folder.is_dir() else folder
    try:
        graph = nir.read(path)
    except (OSError, *PARSE_ERRORS) as exc:      # h5py and nir raise many kinds
        raise ExportError(f"{path}: not a readable NIR file ({exc})") from None
    raw = graph.metadata.get("qsnn")
    if raw is None:
        raise ExportError(f"{path}: a NIR graph without qsnn metadata; qsnn can only read graphs it wrote "
                          f"(the integers are in the metadata key 'qsnn')")
    meta = json.loads(raw if isinstance(raw, str) else raw.decode())
    if meta.get("format") != GRAPH_FORMAT or meta.get("format_version") != GRAPH_FORMAT_VERSION:
        raise ExportError(f"{path}: qsnn NIR metadata of format {meta.get('format')!r} "
                          f"v{meta.get('format_version')!r}, expected {GRAPH_FORMAT!r} v{GRAPH_FORMAT_VERSION}")
    layers = []
    for rec in meta["layers"]:
        names = rec["nodes"]
        try:
            syn = graph.nodes[names["synapse"]]
            neuron = graph.nodes[names["neuron"]]
        except KeyError as exc:
            raise ExportError(f"{path}: node {exc} of layer {rec['name']} is missing") from None
        norm = np.asarray(rec["normaliser"], dtype=np.float64)
        gain = 2.0 ** (int(rec["current_shift"]) + int(rec["weight_exp"])) * float(rec["pool"] ** 2)
        w_eff = np.asarray(syn.weight, dtype=np.float64)
        w_real = w_eff * norm.reshape((-1,) + (1,) * (w_eff.ndim - 1)) / gain
        weight = np.rint(w_real)
        if weight.shape != tuple(rec["weight_shape"]) or not np.allclose(w_real, weight, rtol=0, atol=1e-6):
            raise ExportError(f"{path}: the weights of node {names['synapse']} are not the integers qsnn wrote")
        theta = np.asarray(rec["threshold"], dtype=np.int64)
        bias = np.asarray(rec["bias"], dtype=np.int64)
        thr_nodes = np.asarray(neuron.v_threshold, dtype=np.float64).reshape(len(theta), -1) * norm[:, None]
        bias_nodes = np.asarray(syn.bias, dtype=np.float64) * norm
        if not (np.allclose(thr_nodes, theta[:, None], rtol=1e-9, atol=1e-9)
                and np.allclose(bias_nodes, bias, rtol=1e-9, atol=1e-9)):
            raise ExportError(f"{path}: thresholds or biases of layer {rec['name']} differ from the recorded integers")
        if "pool" in names:
            pool_node = graph.nodes[names["pool"]]
            if int(np.asarray(pool_node.kernel_size).reshape(-1)[0]) != int(rec["pool"]):
                raise ExportError(f"{path}: pooling node {names['pool']} does not match pool {rec['pool']}")
        layers.append(layer_from_parts(rec, weight.astype(np.int64), theta, bias, int(rec["decay"])))
    return network_from_parts({"profile": meta["profile"], "network": meta["network"]}, layers)


def readme(manifest: Mapping[str, Any]) -> str:
    rows = []
    for rec in manifest["layers"]:
        nodes = " → ".join(rec["nodes"][k] for k in ("flatten", "synapse", "pool", "neuron") if k in rec["nodes"])
        rows.append(f"| {rec['index']} | {rec['name']} | {nodes} | {tuple(rec['output_shape'])} | {rec['beta']:.6g} |")
    diffs = "\n".join(f"- {d}" for d in manifest["differences"])
    return f"""# qsnn NIR graph

`network.nir` is the network as a [NIR](https://neuroir.org) graph (HDF5), readable with
`nir.read("network.nir")` and importable by NIR-aware simulators (e.g. snnTorch:
`snntorch.import_nir.import_from_nir(nir.read("network.nir"))`, which needs `nirtorch`; snnTorch 1.0
hands NIR's batch-free `Flatten(start_dim=0)` to `torch.nn.Flatten`, so set that module's
`start_dim = 1` to run a batch of images at once).
It was compiled from a qsnn integer network (profile `{manifest['profile']['name']}`), T =
{manifest['network']['num_steps']} steps per input; the class is the output neuron that spiked most.

## Graph

| # | layer | nodes | output | β |
|---|---|---|---|---|
{chr(10).join(rows)}

- Synapses: weights = W·2^(shift+exp)·P²/θ_c and bias = b_c/θ_c per output channel c (W, θ, b the
  integer weights, thresholds and biases), so every LIF threshold is 1 and the membrane is in units of
  the channel's threshold (real membrane = v · θ_c · scale_c; scale_c in `manifest.json`).
- Pooling: `AvgPool2d` P×P (the P² is in the synapse weights), i.e. the chip's sum-pooling.
- Neurons: NIR `LIF`, τ = dt/(1−β), R = τ/dt, v_leak = 0 for dt = {DT}: forward Euler gives
  v_t = β·v_(t−1) + I_t.
- Input: the raw integer input (uint8 pixels 0..255) at every step.

## What NIR cannot say (differences to the chip)

{diffs}

The exact integers are in the graph metadata key `qsnn` (JSON), so qsnn reads the integer network
back from `network.nir` bit for bit; `manifest.json` lists the files and their SHA-256.
"""
