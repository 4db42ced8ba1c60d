"""The ``loihi2`` target: a lava-dl ``netx`` HDF5 network (``network.net``) that stock Lava runs bit for bit.

Loaded as the folder's README says (lava-nc 0.10, lava-dl 0.6, Python 3.10)::

    net = netx.hdf5.Network(net_config="network.net", input_message_bits=8)
    RingBuffer(data=frames).s_out.connect(net.inp)     # uint8 frames → 8-bit graded spikes
    net.run(condition=RunSteps(T), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))

Lava then computes exactly what ``qsnn-sim --profile loihi2`` computes (tested spike for spike on
every layer and step, ``make lava-check``). netx layout (shapes stored (C, H, W) / (O,); netx
reverses them to Lava's (X, Y, Z))::

    simulation/{Ts = 1, tSample = T}
    layer/0  type "input", shape (C, H, W)            no neuron: netx then builds no Input block and
                                                      the graded input goes straight to layer/1
    layer/1  type "conv",  shape, inChannels, outChannels, kernelSize, stride, padding, dilation,
             groups, weight (O, I, kh, kw), bias (O,), neuron {...}
    …        type "flatten", shape (N,)               before the first dense layer (also right after
                                                      the input: a dense-only net); Lava flattens
                                                      (C, H, W) C-major, as torch
    layer/n  type "dense", shape (O,), inFeatures, outFeatures, weight (O, I), bias (O,), neuron {...}

Any stack of conv and dense layers, any depth; a conv of kernel k, stride s, zero padding pad and
P×P pooling is one netx conv of kernel k+s(P−1), stride s·P, padding pad.
    neuron = {type "CUBA", iDecay = 4096, vDecay = dv, vThMant = vth (scalar or per channel),
              refDelay = 1, gradedSpike = False}

How the loihi2 profile's integers map onto Lava (``PyConvModelFixed`` / ``PyDenseModelBitAcc`` and
``PyLifModelBitAcc``; see :data:`qsnn.profiles.LOIHI2`):

* ``weight``: the layer's integers as they are; conv kernels with the P×P pooling **folded in**
  (:func:`qsnn.network.fold_pool`: one convolution of stride s·P and kernel k+s(P−1) for a conv of
  stride s, the same zero padding, taps the sums of up to P² weights: exact, and what
  Loihi's weight memory holds). The profile keeps them within 8 bits (folded taps too). Lava's Conv
  ignores ``weight_exp`` and netx derives the Dense exponent from the values, undoing its own
  scaling exactly: the synaptic sum is the plain integer sum on every layer. The compiler's
  resolution multiplier 2^k is already in the weights.
* current: Lava's ``u = a_in << 6`` (iDecay = 4096 → du = 4095: nothing persists) — the profile's
  fixed current shift 6 — wrapping in Lava's 24-bit current register; ``v`` saturates at ±(2^23 − 1).
* ``bias`` = b >> 6: netx fixes Lava's bias exponent at 6; the profile's biases are multiples of 2^6
  with a 13-bit mantissa (Lava keeps an int16).
* ``vThMant`` = θ >> 6 (17 bits), one value when all channels share θ, else one per channel (Lava's
  LIF compares ``v`` against the array, broadcast over the channel axis).
* ``vDecay`` = dv (12 bits); zero reset and the one-step delay per layer are Lava's own behaviour.

What the target refuses (:class:`~qsnn.errors.ProfileError`, naming the layer and the limit): a
network without exactly this arithmetic (compile it under ``--profile loihi2``), a current shift
other than 6 or a weight exponent (netx cannot carry them), and anything beyond Loihi's limits
(8-bit weights after folding, 17-bit vth, 13-bit bias mantissa, 12-bit dv, 8192 neurons per layer,
4096 synapses per neuron with the pooling folded in), and the one dense matrix netx + Lava would not sum
exactly: no positive weight and a most negative weight −2^j (:func:`inhibitory_clip`).

What qsnn needs besides (netx has no place for it): the group ``qsnn/`` (format, profile, network:
JSON) and per layer ``layer/{i}/qsnn/`` (name, kind, kernel, stride, padding, pool, current_shift,
weight_exp, decay, threshold, bias, scale as datasets; a file without stride/padding has 1 and 0). :func:`read` rebuilds the network from the netx datasets
(un-folding the pooled kernels) and checks them against these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from qsnn.errors import ExportError, LimitsError
from qsnn.jsonio import to_jsonable
from qsnn.network import IntegerLayer, IntegerNetwork, fold_pool
from qsnn.optional import require
from qsnn.profiles import LOIHI2

from ..fit import fit_problems, folded_fan_in, profile_limits, unfold_pool
from ..manifest import layer_from_parts, network_from_parts, network_record

NAME = "loihi2"
DESCRIPTION = "a lava-dl netx HDF5 network (network.net) that stock Lava runs bit for bit (loihi2 profile)"
FILE = "network.net"
EXAMPLE = "example_input.npy"
NETX_FORMAT = "qsnn-netx"
NETX_FORMAT_VERSION = 2
#: Lava's hardware left shift of synaptic input, threshold and bias (a_in << 6, vth << 6, bias_exp 6).
LAVA_SHIFT = 6
#: netx iDecay giving Lava du = 4095 (netx: du = iDecay − 1): the current is cleared every step.
I_DECAY = 4096
#: Graded input: 8-bit messages (uint8 pixels, event counts up to 255).
INPUT_MESSAGE_BITS = 8
#: The versions this folder's semantics were checked against (``make lava-check``).
LAVA_VERSIONS = {"lava-nc": "0.10.0", "lava-dl": "0.6.0"}
#: Arithmetic fields Lava's netx network fixes, with the value it needs: the loihi2 profile's.
REQUIRED = {
    field: getattr(LOIHI2, field)
    for field in (
        "leak",
        "leak_bits",
        "reset",
        "membrane_bits",
        "overflow",
        "symmetric_clip",
        "synaptic_delay",
        "threshold_shift",
        "frac_bits",
        "fixed_shift",
        "current_bits",
        "bias_shift",
        "fold_pool",
    )
}


def netx_weight(layer: IntegerLayer) -> np.ndarray:
    """The netx ``weight``: the integer kernel Lava convolves with (pooling folded in for conv)."""
    if layer.kind == "conv":
        return fold_pool(layer.weight, layer.pool, stride=layer.stride)
    return np.asarray(layer.weight, dtype=np.int64)


def netx_stride(layer: IntegerLayer) -> int:
    """The netx conv ``stride``: the conv's own stride times the folded pooling's."""
    return layer.stride * layer.pool


def netx_bias(layer: IntegerLayer) -> np.ndarray:
    """The netx ``bias``: the mantissa b >> 6 (exact: compiled biases are multiples of 2^6)."""
    return np.asarray(layer.bias, dtype=np.int64) >> LAVA_SHIFT


def inhibitory_clip(weight: np.ndarray) -> bool:
    """Stock netx + Lava would not compute this dense matrix exactly: lava-dl's ``optimize_weight_bits`` scales
    it by 2^k (``weight_exp = −k``, undone exactly elsewhere) so that a most negative weight −2^j becomes −256,
    and where no weight is positive Lava's ``determine_sign_mode`` calls the matrix inhibitory and clips it to
    −255 (``clip_weights``). Checked in Lava by tests/test_lava.py."""
    w = np.asarray(weight, dtype=np.int64)
    low = int(w.min(initial=0))
    return int(w.max(initial=0)) <= 0 and low < 0 and (-low & (-low - 1)) == 0


def arithmetic_differences(profile) -> list[str]:
    """The fields of ``profile`` (a :class:`~qsnn.profiles.ChipProfile`) whose arithmetic Lava's netx
    network does not compute, each as ``field=value (needs value)``; empty for the loihi2 profile and for
    any change of a field outside :data:`REQUIRED` (a register width or limit the fit checks hold)."""
    return [f"{k}={getattr(profile, k)!r} (needs {v!r})" for k, v in REQUIRED.items() if getattr(profile, k) != v]


def check(net: IntegerNetwork, example: Any = None) -> None:
    """Raise :class:`ProfileError` unless stock netx + Lava compute exactly this network (every
    problem at once: :func:`problems`)."""
    found = problems(net, example)
    if found:
        raise LimitsError(found, f"the {NAME} target cannot hold this network")


def problems(net: IntegerNetwork, example: Any = None) -> list[str]:
    """Every reason stock netx + Lava cannot compute exactly this network.

    The network must have the loihi2 profile's arithmetic, the fixed current shift and no weight
    exponent on every layer, and fit Loihi's limits (:data:`qsnn.profiles.LOIHI2`).
    """
    p = net.profile
    found = []
    wrong = arithmetic_differences(p)
    if wrong and p.name == "loihi2":  # the loihi2 profile with its arithmetic changed (--profile-set)
        found.append(
            f"loihi2: the network was compiled for the loihi2 profile with {', '.join(wrong)}, arithmetic "
            "Lava's netx network does not compute; leave those --profile-set fields out (qsnn-sim --profile "
            "loihi2 --profile-set simulates them)"
        )
    elif wrong:
        found.append(
            f"loihi2: the network was compiled for profile {p.name!r} whose arithmetic Lava's netx network does "
            f"not compute: {', '.join(wrong)}. Compile it under the loihi2 profile (--profile loihi2)."
        )
    for i, layer in enumerate(net.layers, start=1):
        if layer.current_shift != LAVA_SHIFT or layer.weight_exp != 0:
            found.append(
                f"loihi2: layer {i} ({layer.name}) has current shift {layer.current_shift} and weight exponent "
                f"{layer.weight_exp}; Lava's LIF shifts every synaptic sum by exactly {LAVA_SHIFT} (a_in << 6) and "
                "netx has no weight exponent. Compile it under the loihi2 profile (--profile loihi2)."
            )
        if int(layer.leak_const) > 4095:
            found.append(
                f"loihi2: layer {i} ({layer.name}): vDecay {layer.leak_const} exceeds Loihi's 12-bit dv (4095)"
            )
        if not np.any(np.asarray(layer.weight)):
            found.append(
                f"loihi2: layer {i} ({layer.name}) has no nonzero weight; netx cannot load an all-zero weight matrix"
            )
        elif layer.kind == "dense" and inhibitory_clip(layer.weight):
            found.append(
                f"loihi2: layer {i} ({layer.name}) is dense with no positive weight and its most negative weight, "
                f"{int(np.min(layer.weight))}, a power of two: netx stores it as -256, which Lava's inhibitory-only "
                "synapse clips to -255, so Lava's sum would differ; a layer that only inhibits carries no signal: retrain"
            )
    return found + fit_problems(net, profile_limits(LOIHI2, NAME))  # netx stores Loihi's registers


# --------------------------------------------------------------------------------------------------
# Writer


def _neuron(group, layer: IntegerLayer) -> dict[str, Any]:
    theta = np.asarray(layer.threshold, dtype=np.int64) >> LAVA_SHIFT
    uniform = bool(np.all(theta == theta[0]))
    group.create_dataset("type", data="CUBA")
    group.create_dataset("iDecay", data=np.int64(I_DECAY))
    group.create_dataset("vDecay", data=np.int64(layer.leak_const))
    group.create_dataset("vThMant", data=np.int64(theta[0]) if uniform else theta)
    group.create_dataset("refDelay", data=np.int64(1))
    group.create_dataset("gradedSpike", data=False)
    return {
        "type": "CUBA",
        "iDecay": I_DECAY,
        "vDecay": int(layer.leak_const),
        "vThMant": int(theta[0]) if uniform else [int(t) for t in theta],
        "refDelay": 1,
        "gradedSpike": False,
    }


def write(net: IntegerNetwork, folder: Path, example: np.ndarray | None = None) -> dict[str, Any]:
    """Write ``network.net`` (and ``example_input.npy``: ``example``, one input sample for the README's
    snippet, or zeros when none is given) into ``folder``; returns the manifest's target part."""
    h5py = require("h5py", "qsnn-export --to loihi2 (a netx HDF5 file)")

    shapes = net.shapes()
    layers_out: list[dict[str, Any]] = []
    report = (net.metadata or {}).get("compile_report", {}) if isinstance(net.metadata, Mapping) else {}
    compiled = {rec.get("name"): rec for rec in report.get("layers", []) if isinstance(rec, Mapping)}
    with h5py.File(folder / FILE, "w", track_order=True) as f:
        sim = f.create_group("simulation")
        sim.create_dataset("Ts", data=np.int64(1))
        sim.create_dataset("tSample", data=np.int64(net.num_steps))
        q = f.create_group("qsnn")
        q.create_dataset("format", data=NETX_FORMAT)
        q.create_dataset("format_version", data=np.int64(NETX_FORMAT_VERSION))
        q.create_dataset("profile", data=json.dumps(net.profile.to_dict()))
        q.create_dataset("network", data=json.dumps(to_jsonable(network_record(net))))
        top = f.create_group("layer", track_order=True)
        idx = 0
        g = top.create_group(str(idx))
        g.create_dataset("type", data="input")
        g.create_dataset("shape", data=np.array(net.input_shape, dtype=np.int64))
        prev_shape: tuple[int, ...] = tuple(net.input_shape)
        for layer, shape in zip(net.layers, shapes):
            entry: dict[str, Any] = {}
            if layer.kind == "dense" and len(prev_shape) > 1:
                idx += 1
                g = top.create_group(str(idx))
                g.create_dataset("type", data="flatten")
                g.create_dataset("shape", data=np.array([int(np.prod(prev_shape))], dtype=np.int64))
                entry["netx_flatten_layer"] = idx
            idx += 1
            g = top.create_group(str(idx))
            w = netx_weight(layer)
            bias = netx_bias(layer)
            if layer.kind == "conv":
                side = w.shape[2]
                g.create_dataset("type", data="conv")
                g.create_dataset("shape", data=np.array(shape, dtype=np.int64))
                g.create_dataset("inChannels", data=np.int64(layer.in_channels))
                g.create_dataset("outChannels", data=np.int64(layer.out_channels))
                g.create_dataset("kernelSize", data=np.array([side, side], dtype=np.int64))
                stride = netx_stride(layer)
                g.create_dataset("stride", data=np.array([stride, stride], dtype=np.int64))
                g.create_dataset("padding", data=np.array([layer.padding, layer.padding], dtype=np.int64))
                g.create_dataset("dilation", data=np.array([1, 1], dtype=np.int64))
                g.create_dataset("groups", data=np.int64(1))
                entry["netx_kernel"] = [side, side]
                entry["netx_stride"] = [stride, stride]
                entry["netx_padding"] = [layer.padding, layer.padding]
            else:
                g.create_dataset("type", data="dense")
                g.create_dataset("shape", data=np.array(shape, dtype=np.int64))
                g.create_dataset("inFeatures", data=np.int64(layer.in_channels))
                g.create_dataset("outFeatures", data=np.int64(layer.out_channels))
            g.create_dataset("weight", data=w.astype(np.int32))
            g.create_dataset("bias", data=bias.astype(np.int32))
            neuron = _neuron(g.create_group("neuron"), layer)
            extra = g.create_group("qsnn")
            extra.create_dataset("name", data=layer.name)
            extra.create_dataset("kind", data=layer.kind)
            for key, value in (
                ("pool", layer.pool),
                ("current_shift", layer.current_shift),
                ("weight_exp", layer.weight_exp),
                ("decay", layer.leak_const),
            ):  # "decay": format 1's name
                extra.create_dataset(key, data=np.int64(value))
            extra.create_dataset("kernel", data=np.int64(layer.kernel))
            extra.create_dataset("stride", data=np.int64(layer.stride))
            extra.create_dataset("padding", data=np.int64(layer.padding))
            extra.create_dataset("threshold", data=np.asarray(layer.threshold, dtype=np.int64))
            extra.create_dataset("bias", data=np.asarray(layer.bias, dtype=np.int64))
            extra.create_dataset("scale", data=np.asarray(layer.scale, dtype=np.float64))
            rec = compiled.get(layer.name, {})
            entry.update(
                {
                    "netx_layer": idx,
                    "netx_weight_shape": list(w.shape),
                    "weight_max_abs": int(np.abs(w).max(initial=0)),
                    "weight_bits": LOIHI2.weight_bits,
                    "fan_in_folded": folded_fan_in(layer),
                    "pool_folded": layer.kind == "conv" and layer.pool > 1,
                    "neuron": neuron,
                    "bias_mantissa_range": [int(bias.min()), int(bias.max())],
                    "bias_exp": LAVA_SHIFT,
                }
            )
            if rec:  # what the compiler proved about this layer (absent for a network built by hand)
                entry["saturation_possible"] = bool(rec.get("saturation_possible", False))
                entry["current_wrap_possible"] = bool(rec.get("current_wrap_possible", False))
            layers_out.append(entry)
            prev_shape = shape
    if example is None:
        example_arr = np.zeros(
            (net.num_steps, *net.input_shape) if net.encoding == "events" else net.input_shape, dtype=np.uint8
        )
        example_what = "zeros (no test sample was given to the exporter)"
    else:
        example_arr = np.asarray(example)
        want = (net.num_steps, *net.input_shape) if net.encoding == "events" else tuple(net.input_shape)
        if tuple(example_arr.shape) != want or not np.issubdtype(example_arr.dtype, np.integer):
            raise ExportError(
                f"loihi2: the example input must be integers of shape {want}, got "
                f"{example_arr.dtype} {example_arr.shape}"
            )
        example_what = "the first sample of the model's test split"
    np.save(folder / EXAMPLE, example_arr)
    return {
        "options": {},
        "layers": layers_out,
        "files_by_role": {"netx": FILE, "example_input": EXAMPLE},
        "netx": {
            "iDecay": I_DECAY,
            "du": I_DECAY - 1,
            "bias_exp": LAVA_SHIFT,
            "threshold_shift": LAVA_SHIFT,
            "input_message_bits": INPUT_MESSAGE_BITS,
            "input": "layer/0 has no neuron: hdf5.Network(..., input_message_bits=8) feeds net.inp straight "
            "to layer/1's synapses as 8-bit graded spikes (uint8 pixels or event counts)",
        },
        "lava": {
            "load": "lava.lib.dl.netx.hdf5.Network(net_config='network.net', input_message_bits=8)",
            "run_cfg": "Loihi2SimCfg(select_tag='fixed_pt')",
            "checked_with": dict(LAVA_VERSIONS),
            "bit_exact_with": "qsnn-sim --profile loihi2 (every layer's spikes, every step)",
        },
        "example_input": {"file": EXAMPLE, "shape": list(example_arr.shape), "what": example_what},
        "saturation_possible": any(e.get("saturation_possible", False) for e in layers_out),
        "notes": [
            "Pooling is folded into the convolution (a conv of kernel k, stride s and P x P pooling: kernel "
            "k+s(P-1), stride s*P, the same padding): exact, and what Loihi stores.",
            "The input is graded (input_message_bits=8): feed the uint8 frames unchanged, every one of the T steps "
            "(static images: the same frame T times).",
            "Each layer's output reaches the next layer one step later (Lava's synapse buffer); the first layer's "
            "current too: nothing arrives at step 0.",
            "saturation_possible per layer: the compiler's worst-case bound exceeds Loihi's 24-bit v (which "
            "saturates) or u (which wraps); qsnn-sim --profile loihi2 counts the events that actually happen.",
        ],
    }


# --------------------------------------------------------------------------------------------------
# Reader


def _str(value: Any) -> str:
    value = value[()] if hasattr(value, "shape") else value
    return value.decode() if isinstance(value, bytes) else str(value)


def read(folder: Path, manifest: Mapping[str, Any] | None = None) -> IntegerNetwork:
    """The :class:`IntegerNetwork` of a ``network.net`` written by :func:`write`."""
    path = folder / FILE if folder.is_dir() else folder
    h5py = require("h5py", f"reading {path} (a netx HDF5 file)")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ExportError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        if "qsnn" not in f or _str(f["qsnn/format"]) != NETX_FORMAT:
            raise ExportError(f"{path}: a netx file without qsnn data; qsnn reads the netx files it wrote")
        if int(f["qsnn/format_version"][()]) != NETX_FORMAT_VERSION:
            raise ExportError(
                f"{path}: qsnn netx data version {int(f['qsnn/format_version'][()])}, expected {NETX_FORMAT_VERSION}"
            )
        head = {"profile": json.loads(_str(f["qsnn/profile"])), "network": json.loads(_str(f["qsnn/network"]))}
        layers = []
        for key in sorted(f["layer"].keys(), key=int):
            g = f["layer"][key]
            kind = _str(g["type"])
            if kind not in ("conv", "dense"):
                continue
            q = g["qsnn"]
            pool = int(q["pool"][()])
            stride = int(q["stride"][()]) if "stride" in q else 1
            padding = int(q["padding"][()]) if "padding" in q else 0
            w = np.asarray(g["weight"][()], dtype=np.int64)
            if kind == "conv":
                try:
                    w = unfold_pool(w, pool, stride=stride)
                except ValueError:
                    raise ExportError(
                        f"{path}: layer/{key}/weight is not a {pool}×{pool}-pooled kernel of stride {stride}"
                    ) from None
                got = [np.asarray(g[name][()], dtype=np.int64).reshape(-1).tolist() for name in ("stride", "padding")]
                if got != [[stride * pool] * 2, [padding] * 2]:
                    raise ExportError(
                        f"{path}: layer/{key} has netx stride {got[0]} and padding {got[1]}, expected "
                        f"{[stride * pool] * 2} and {[padding] * 2} (stride {stride} × pool {pool})"
                    )
            neuron = g["neuron"]
            vth = np.asarray(neuron["vThMant"][()], dtype=np.int64)
            theta = np.asarray(q["threshold"][()], dtype=np.int64)
            bias = np.asarray(q["bias"][()], dtype=np.int64)
            vth_full = np.broadcast_to(vth, theta.shape) << LAVA_SHIFT
            rounded = bias >> LAVA_SHIFT
            decay = int(neuron["vDecay"][()])
            if not (
                np.array_equal(vth_full, theta)
                and np.array_equal(np.asarray(g["bias"][()], dtype=np.int64), rounded)
                and not np.any(bias % (1 << LAVA_SHIFT))
                and decay == int(q["decay"][()])
                and int(neuron["iDecay"][()]) == I_DECAY
            ):
                raise ExportError(f"{path}: layer/{key}: netx neuron parameters differ from the qsnn integers")
            record = {
                "name": _str(q["name"]),
                "kind": kind,
                "weight_shape": list(w.shape),
                "pool": pool,
                "current_shift": int(q["current_shift"][()]),
                "weight_exp": int(q["weight_exp"][()]),
                "scale": np.asarray(q["scale"][()], dtype=np.float64).tolist(),
            }
            layers.append(layer_from_parts(record, w, theta, bias, decay, stride=stride, padding=padding))
    return network_from_parts(head, layers)


def snippet(manifest: Mapping[str, Any]) -> str:
    """The Python the README gives: load the folder in stock Lava, run the example input, print the class."""
    T = manifest["network"]["num_steps"]
    events = manifest["network"]["encoding"] == "events"
    if manifest["layers"][0]["kind"] == "dense":  # netx's input port is then the flat (C·H·W,) vector
        frames = (
            "frames = x.reshape(T, -1).T.astype(np.int32)              # (T, C, H, W) counts -> (C*H*W, T)"
            if events
            else "frames = np.repeat(x.reshape(-1, 1), T, axis=-1).astype(np.int32)  # (C, H, W) -> (C*H*W, T), C-major"
        )
    else:
        frames = (
            "frames = x.transpose(3, 2, 1, 0).astype(np.int32)           # (T, C, H, W) counts -> (W, H, C, T)"
            if events
            else "frames = np.repeat(x.transpose(2, 1, 0)[..., None], T, axis=-1).astype(np.int32)  # (C, H, W) -> (W, H, C, T)"
        )
    return f"""import numpy as np
from lava.lib.dl import netx
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.io.sink import RingBuffer as Sink
from lava.proc.io.source import RingBuffer as Source

T = {T}
x = np.load("{EXAMPLE}")                  # one input, uint8 {"event counts (T, C, H, W)" if events else "pixels (C, H, W)"}
{frames}
net = netx.hdf5.Network(net_config="{FILE}", input_message_bits={INPUT_MESSAGE_BITS})
source = Source(data=frames)              # graded 8-bit spikes, one frame per step
sink = Sink(shape=net.out.shape, buffer=T)
source.s_out.connect(net.inp)
net.out.connect(sink.a_in)
net.run(condition=RunSteps(num_steps=T), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
counts = sink.data.get().sum(axis=-1)     # output spikes per class over the T steps
net.stop()
print("predicted class:", int(np.argmax(counts)))
"""


def readme(manifest: Mapping[str, Any]) -> str:
    rows = []
    for rec in manifest["layers"]:
        nrn = rec["neuron"]
        vth = (
            nrn["vThMant"]
            if isinstance(nrn["vThMant"], int)
            else f"per channel ({min(nrn['vThMant'])}..{max(nrn['vThMant'])})"
        )
        sat = (
            "may saturate"
            if rec.get("saturation_possible")
            else ("cannot saturate" if "saturation_possible" in rec else "")
        )
        geometry = f"{rec['netx_stride'][0]} / {rec['netx_padding'][0]}" if "netx_padding" in rec else "—"
        rows.append(
            f"| layer/{rec['netx_layer']} | {rec['name']} | {rec['kind']} | {tuple(rec['netx_weight_shape'])} | "
            f"{geometry} | {tuple(rec['output_shape'])} | {rec['pool']}{' (folded)' if rec['pool_folded'] else ''} | "
            f"{nrn['vDecay']} | {vth} | {sat} |"
        )
    notes = "\n".join(f"- {n}" for n in manifest["notes"])
    classes = manifest["network"].get("classes", [])
    versions = ", ".join(f"{k} {v}" for k, v in manifest["lava"]["checked_with"].items())
    return f"""# qsnn Loihi 2 network (lava-dl netx)

`network.net` is an HDF5 file in lava-dl's `netx` format. Stock Lava ({versions}, Python 3.10)
runs it with `Loihi2SimCfg(select_tag="fixed_pt")` and computes exactly what
`qsnn-sim --profile {manifest["profile"]["name"]}` computes: the same spikes on every layer at every
step (checked in qsnn's test suite and by `make lava-check`). T = {manifest["network"]["num_steps"]}
steps per input; the class is the output neuron that spiked most (first index on ties){": " + ", ".join(map(str, classes)) if classes else ""}.

## Run it

In a Python 3.10 environment with `pip install lava-nc==0.10.0 lava-dl==0.6.0`, in this folder:

```python
{snippet(manifest)}```

`{EXAMPLE}` holds {manifest["example_input"]["what"]}; put your own input there (same shape and
dtype) to classify it. The input layer (`layer/0`) has no neuron, so `input_message_bits=8` sends the
uint8 values straight to the first layer's synapses as graded spikes.

## What Lava computes (`PyConvModelFixed`/`PyDenseModelBitAcc` + `PyLifModelBitAcc`)

```
a_in = W ⊛ s                                   the synapse's output reaches the neuron one step later
u = a_in << 6                                  du = iDecay − 1 = 4095: nothing persists; 24-bit, wraps
v = clip(rz(v·(4096 − dv)) + u + (bias << 6), ±(2^23 − 1))      rz: round toward zero, dv = vDecay
spike if v > vThMant << 6, then v = 0
```
`neuron` of every layer: `type = CUBA`, `iDecay = 4096`, `vDecay`, `vThMant`, `refDelay = 1`,
`gradedSpike = False`.

## Layers

| netx | layer | type | weight | stride / padding | output | pool | vDecay | vThMant | worst case |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

- `weight`: integers (8-bit), (out, in, ky, kx) for conv, (out, in) for dense (inputs flattened (C, H, W)).
- Pooling P×P (on the synaptic sum) is folded into the convolution: a conv of kernel k, stride s and
  padding pad becomes kernel k+s(P−1), stride s·P, padding pad, each tap the sum of up to P² weights;
  exactly the pooled network, no netx `pool` layer needed.
- `bias`: per output channel, the mantissa (Lava adds `bias << 6`).
- "may saturate": the compiler's worst-case bound exceeds Loihi's 24-bit state (Lava's `a_in << 6`
  leaves no smaller shift); Lava then clips `v` / wraps `u` exactly as `qsnn-sim` models and counts.

## Notes

{notes}

## Extra data for qsnn

netx has no place for the per-channel scale factors (real membrane value of one integer unit) and
qsnn's own layer constants; they are in `qsnn/` (profile and network as JSON) and
`layer/<i>/qsnn/` (name, kind, kernel, stride, padding, pool, current_shift, weight_exp, decay,
threshold, bias, scale). Lava ignores them. `manifest.json` lists every file with its SHA-256.
"""
