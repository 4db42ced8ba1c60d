"""The ``loihi2`` target: a lava-dl ``netx`` HDF5 network (``network.net``) with the loihi2 integers.

netx layout (``lava.lib.dl.netx.hdf5.Network(net_config="network.net")``; shapes are stored
(C, H, W) / (O,), netx reverses them to Lava's (X, Y, Z))::

    simulation/{Ts = 1, tSample = T}
    layer/0  type "input",   shape (C, H, W), neuron {...}
    layer/1  type "conv",    shape (C', H', W'), inChannels, outChannels, kernelSize, stride, padding,
             dilation, groups, weight (O, I, kh, kw), bias (O,), neuron {...}
    …        type "flatten", shape (N,)
    layer/n  type "dense",   shape (O,), inFeatures, outFeatures, weight (O, I), bias (O,), neuron {...}
    neuron = {type "CUBA", iDecay, vDecay, vThMant, refDelay, gradedSpike}

How the loihi2 profile's integers map onto Lava's fixed-point LIF (``PyLifModelBitAcc``,
``u = rz(u·(4096 − (du+1))) + (a_in << 6)``, ``v = rz(v·(4096 − dv)) + u + (bias_mant << 6)``,
spike ``v > vth << 6``, netx passing ``du = iDecay − 1``, ``dv = vDecay``, ``vth = vThMant``, bias
exponent 6):

* ``iDecay = 4096`` → ``du = 4095``: the current does not persist (a single state, as the profile).
  (netx passes ``du = iDecay − 1``; Lava's decay factor is ``4096 − (du + 1)`` = 0.)
* ``vDecay`` = the layer's integer leak constant dv.
* ``vThMant`` = θ >> 6 (the compiled thresholds are multiples of 2^6); one value per layer when all
  channels share θ, else a per-channel array.
* ``bias`` = b / 2^6 rounded (netx fixes Lava's bias exponent at 6).
* ``weight``: the integer kernel times ``2^X``, X = s + e − 6 (s the current shift, e the weight
  exponent), so that Lava's ``a_in << 6`` gives the profile's ``shl(acc, s + e)``. **Pooling is
  folded into the convolution**: ``sumpool_P(W ⊛ z)`` is one stride-P convolution with the
  (k+P−1)² kernel whose taps are sums of up to P² weights (exact; netx's own "pool" layers put
  neurons after the pooling, which is not this network).
* The Dense/Conv output reaching the neuron one step later is Lava's own behaviour (the profile's
  ``synaptic_delay = 1``).

Not everything a loihi2-profile network holds can be run bit for bit by stock netx + Lava: a current
shift below 6 (Lava would floor the synaptic sum through a negative weight exponent), folded pooled
kernels wider than Loihi's 8-bit mantissa, biases that are not multiples of 2^6 (netx's fixed bias
exponent) and per-channel thresholds (Lava's LIF takes one ``vth``). Such layers are still written
(exactly, for qsnn) and flagged: ``lava_exact`` / ``lava_issues`` per layer in the manifest and the
README. What the target refuses (:class:`~qsnn.errors.ProfileError`) is a network without Loihi's
arithmetic (leak, reset, widths, delay) or beyond its limits (8-bit weights, thresholds, biases,
8192 neurons per layer, 4096 synapses per neuron with the pooling folded in).

What qsnn needs besides (netx has no place for it): the group ``qsnn/`` (format, profile, network:
JSON) and per layer ``layer/{i}/qsnn/`` (name, kind, kernel, pool, current_shift, weight_exp, decay,
lava_weight_exp,
threshold, bias, scale as datasets). :func:`read` rebuilds the network from the netx datasets
(un-folding the pooled kernels) and checks them against these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from qsnn.errors import ExportError, ProfileError
from qsnn.files import to_jsonable
from qsnn.network import IntegerLayer, IntegerNetwork, fold_pool
from qsnn.profiles import LOIHI2

from .fit import Limits, check_fit, folded_fan_in
from .manifest import layer_from_parts, network_from_parts, network_record

NAME = "loihi2"
DESCRIPTION = "a lava-dl netx HDF5 network (network.net) carrying the loihi2 profile's integers"
FILE = "network.net"
NETX_FORMAT = "qsnn-netx"
NETX_FORMAT_VERSION = 1
#: Lava's hardware left shift of synaptic input, threshold and bias (a_in << 6, vth << 6, bias_exp 6).
LAVA_SHIFT = 6
#: netx iDecay giving Lava du = 4095 (netx: du = iDecay − 1): the current is cleared every step.
I_DECAY = 4096
#: Arithmetic fields the netx/Lava LIF fixes, with the value it needs: the loihi2 profile's.
REQUIRED = {field: getattr(LOIHI2, field) for field in ("leak", "leak_bits", "reset", "membrane_bits", "overflow",
                                                         "symmetric_clip", "synaptic_delay", "threshold_shift")}


def unfold_pool(folded: np.ndarray, pool: int) -> np.ndarray:
    """Inverse of :func:`fold_pool` (exact): the box sum is separable, and along one axis
    ``y[a] = Σ_{i<p} x[a−i]`` gives ``x[a] = y[a] − Σ_{i=1}^{p−1} x[a−i]``.

    Raises ValueError if ``folded`` is not the fold of any kernel.
    """
    f = np.asarray(folded, dtype=np.int64)
    if pool == 1:
        return f
    side = f.shape[2]
    k = side - pool + 1

    def along(y: np.ndarray, axis: int) -> np.ndarray:
        y = np.moveaxis(y, axis, 0)
        x = np.zeros_like(y)
        for a in range(side):
            x[a] = y[a] - sum(x[a - i] for i in range(1, pool) if a - i >= 0)
        if np.any(x[k:]):
            raise ValueError("not a pooled kernel")
        return np.moveaxis(x[:k], 0, axis)

    w = along(along(f, 2), 3)
    if not np.array_equal(fold_pool(w, pool), f):
        raise ValueError("not a pooled kernel")
    return w


def weight_shift(layer: IntegerLayer) -> int:
    """X = s + e − 6: Lava shifts the synaptic sum left by 6 (``a_in << 6``), the profile by s + e."""
    return int(layer.current_shift) + int(layer.weight_exp) - LAVA_SHIFT


def synapse_kernel(layer: IntegerLayer) -> np.ndarray:
    """The integer kernel Lava convolves with: pooling folded in for conv layers."""
    if layer.kind == "conv":
        return fold_pool(layer.weight, layer.pool)
    return np.asarray(layer.weight, dtype=np.int64)


def netx_weight(layer: IntegerLayer) -> np.ndarray:
    """The netx ``weight``: the kernel times 2^X when X ≥ 0 (Lava then needs no weight exponent
    beyond the one netx derives from the values); the plain kernel when X < 0 (see :func:`lava_issues`)."""
    k = synapse_kernel(layer)
    x = weight_shift(layer)
    return k << x if x >= 0 else k


def mantissa(weights: np.ndarray) -> tuple[int, int]:
    """(largest |mantissa|, exponent) of the weights as mantissa·2^exponent with one exponent ≤ 7."""
    w = np.asarray(weights, dtype=np.int64)
    nz = w[w != 0]
    if nz.size == 0:
        return 0, 0
    z = 0
    while z < 7 and not np.any(nz % (1 << (z + 1))):
        z += 1
    return int(np.abs(nz).max() >> z), z


def round_bias(bias: np.ndarray) -> np.ndarray:
    """b / 2^6 rounded half away from zero (exact when b is a multiple of 2^6)."""
    b = np.asarray(bias, dtype=np.int64)
    return np.sign(b) * ((np.abs(b) + (1 << (LAVA_SHIFT - 1))) >> LAVA_SHIFT)


def netx_bias(layer: IntegerLayer) -> np.ndarray:
    """The netx ``bias``: b / 2^6 rounded (netx fixes Lava's bias exponent at 6)."""
    return round_bias(layer.bias)


def lava_issues(layer: IntegerLayer) -> list[str]:
    """Why Lava (loading the netx file) would not reproduce this layer bit for bit; [] if it does."""
    issues = []
    x = weight_shift(layer)
    if x < 0:
        issues.append(
            f"current shift {layer.current_shift + layer.weight_exp} < Lava's fixed {LAVA_SHIFT}: Lava needs weight "
            f"exponent {x}, which floors the synaptic sum before its << {LAVA_SHIFT} "
            f"(floor(acc / {1 << -x})·{1 << LAVA_SHIFT} instead of acc·{1 << (LAVA_SHIFT + x)}); netx holds the "
            f"plain kernel, set the exponent {x} by hand")
    else:
        m, z = mantissa(netx_weight(layer))
        if m > LOIHI2.weight_max:
            folded = " (pooling folded into the kernel)" if layer.kind == "conv" and layer.pool > 1 else ""
            issues.append(f"weights{folded} need a {m.bit_length() + 1}-bit mantissa (|{m}|·2^{z}); Loihi holds "
                          f"{LOIHI2.weight_bits}-bit mantissas (±{LOIHI2.weight_max}) and Lava clips them")
    b = np.asarray(layer.bias, dtype=np.int64)
    if np.any(b % (1 << LAVA_SHIFT)):
        err = int(np.abs(b - (netx_bias(layer) << LAVA_SHIFT)).max())
        issues.append(f"biases are not multiples of 2^{LAVA_SHIFT}: netx fixes the bias exponent at {LAVA_SHIFT}, so "
                      f"its bias is rounded (error up to {err} grid units); Lava's LIF runs the exact bias with "
                      f"bias_mant = qsnn/bias, bias_exp = 0")
    theta = np.asarray(layer.threshold, dtype=np.int64)
    if np.any(theta != theta[0]):
        issues.append(f"per-channel thresholds ({int(theta.min() >> LAVA_SHIFT)}..{int(theta.max() >> LAVA_SHIFT)} "
                      f"<< {LAVA_SHIFT}): vThMant is an array; Lava's LIF process takes one vth, so split the layer "
                      f"per channel")
    return issues


def check(net: IntegerNetwork) -> None:
    """Raise :class:`ProfileError` unless the network has Loihi 2's arithmetic and fits its limits.

    What fits but that stock netx/Lava would not run bit for bit (see :func:`lava_issues`) is
    written anyway and listed per layer in the manifest (``lava_exact``, ``lava_issues``).
    """
    p = net.profile
    wrong = [f"{k}={getattr(p, k)!r} (needs {v!r})" for k, v in REQUIRED.items() if getattr(p, k) != v]
    if wrong:
        raise ProfileError(
            f"loihi2: the network was compiled for profile {p.name!r} whose arithmetic Lava's LIF cannot run: "
            f"{', '.join(wrong)}. Compile it under the loihi2 profile (--profile loihi2).")
    hw = LOIHI2
    check_fit(net, Limits(target=NAME, weight_bits=hw.weight_bits, threshold_max=hw.threshold_max,
                          threshold_multiple=1 << LAVA_SHIFT, bias_max=hw.bias_max,
                          max_neurons=hw.max_neurons, max_fan_in=hw.max_fan_in, fold_pool=True))


# --------------------------------------------------------------------------------------------------
# Writer


def _neuron(group, layer: IntegerLayer) -> None:
    theta = np.asarray(layer.threshold, dtype=np.int64) >> LAVA_SHIFT
    group.create_dataset("type", data="CUBA")
    group.create_dataset("iDecay", data=np.int64(I_DECAY))
    group.create_dataset("vDecay", data=np.int64(layer.leak_const))
    if np.all(theta == theta[0]):
        group.create_dataset("vThMant", data=np.int64(theta[0]))
    else:
        group.create_dataset("vThMant", data=theta)
    group.create_dataset("refDelay", data=np.int64(1))
    group.create_dataset("gradedSpike", data=False)


def write(net: IntegerNetwork, folder: Path) -> dict[str, Any]:
    import h5py

    shapes = net.shapes()
    layers_out: list[dict[str, Any]] = []
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
        n = g.create_group("neuron")
        n.create_dataset("type", data="CUBA")
        n.create_dataset("gradedSpike", data=True)
        n.create_dataset("iDecay", data=np.int64(I_DECAY))
        n.create_dataset("vDecay", data=np.int64(4096))
        n.create_dataset("vThMant", data=np.int64(0))
        n.create_dataset("refDelay", data=np.int64(1))
        prev_shape: tuple[int, ...] = tuple(net.input_shape)
        for i, (layer, shape) in enumerate(zip(net.layers, shapes), start=1):
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
                g.create_dataset("stride", data=np.array([layer.pool, layer.pool], dtype=np.int64))
                g.create_dataset("padding", data=np.array([0, 0], dtype=np.int64))
                g.create_dataset("dilation", data=np.array([1, 1], dtype=np.int64))
                g.create_dataset("groups", data=np.int64(1))
                entry["netx_kernel"] = [side, side]
                entry["netx_stride"] = [layer.pool, layer.pool]
            else:
                g.create_dataset("type", data="dense")
                g.create_dataset("shape", data=np.array(shape, dtype=np.int64))
                g.create_dataset("inFeatures", data=np.int64(layer.in_channels))
                g.create_dataset("outFeatures", data=np.int64(layer.out_channels))
            g.create_dataset("weight", data=w.astype(np.int32))
            g.create_dataset("bias", data=bias.astype(np.int32))
            _neuron(g.create_group("neuron"), layer)
            extra = g.create_group("qsnn")
            extra.create_dataset("name", data=layer.name)
            extra.create_dataset("kind", data=layer.kind)
            for key, value in (("pool", layer.pool), ("current_shift", layer.current_shift),
                               ("weight_exp", layer.weight_exp), ("decay", layer.leak_const)):   # "decay": format 1's name
                extra.create_dataset(key, data=np.int64(value))
            extra.create_dataset("kernel", data=np.int64(layer.kernel))
            extra.create_dataset("lava_weight_exp", data=np.int64(min(weight_shift(layer), 0)))
            extra.create_dataset("threshold", data=np.asarray(layer.threshold, dtype=np.int64))
            extra.create_dataset("bias", data=np.asarray(layer.bias, dtype=np.int64))
            extra.create_dataset("scale", data=np.asarray(layer.scale, dtype=np.float64))
            theta = np.asarray(layer.threshold, dtype=np.int64) >> LAVA_SHIFT
            uniform = bool(np.all(theta == theta[0]))
            issues = lava_issues(layer)
            m, z = mantissa(w)
            entry.update({
                "netx_layer": idx,
                "netx_weight_shape": list(w.shape),
                "netx_weight_scale_log2": weight_shift(layer) if weight_shift(layer) >= 0 else 0,
                "lava_weight_exp": min(weight_shift(layer), 0),
                "weight_mantissa": {"max_abs": m, "exponent": z, "bits": LOIHI2.weight_bits},
                "fan_in_folded": folded_fan_in(layer),
                "pool_folded": layer.kind == "conv" and layer.pool > 1,
                "neuron": {"type": "CUBA", "iDecay": I_DECAY, "vDecay": int(layer.leak_const),
                           "vThMant": int(theta[0]) if uniform else [int(t) for t in theta],
                           "refDelay": 1, "gradedSpike": False},
                "bias_mantissa_range": [int(bias.min()), int(bias.max())],
                "lava_exact": not issues,
                "lava_issues": issues,
            })
            layers_out.append(entry)
            prev_shape = shape
    return {
        "options": {},
        "layers": layers_out,
        "files_by_role": {"netx": FILE},
        "netx": {"iDecay": I_DECAY, "du": I_DECAY - 1, "bias_exp": LAVA_SHIFT, "threshold_shift": LAVA_SHIFT,
                 "input": "layer/0: the uint8 image (or event counts) presented at every step as graded "
                          "spikes to layer/1's synapses"},
        "lava_exact": all(e["lava_exact"] for e in layers_out),
        "notes": [
            "Pooling is folded into the convolution (kernel k+P-1, stride P): exact, and Lava-loadable.",
            "netx's Input block puts a neuron behind an affine transform of binary spikes; to feed the "
            "uint8 image, connect the pixel values as graded spikes to the first conv layer "
            "(hdf5.Network(..., has_graded_input=True) or a graded RingBuffer).",
            "lava_exact per layer says whether stock netx + Lava reproduce the layer bit for bit; "
            "lava_issues says why not. qsnn's own reader is exact either way (qsnn/ datasets).",
        ],
    }


# --------------------------------------------------------------------------------------------------
# Reader


def _str(value: Any) -> str:
    value = value[()] if hasattr(value, "shape") else value
    return value.decode() if isinstance(value, bytes) else str(value)


def read(folder: Path, manifest: Mapping[str, Any] | None = None) -> IntegerNetwork:
    """The :class:`IntegerNetwork` of a ``network.net`` written by :func:`write`."""
    import h5py

    path = folder / FILE if folder.is_dir() else folder
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise ExportError(f"{path}: not a readable HDF5 file ({exc})") from None
    with f:
        if "qsnn" not in f or _str(f["qsnn/format"]) != NETX_FORMAT:
            raise ExportError(f"{path}: a netx file without qsnn data; qsnn reads the netx files it wrote")
        if int(f["qsnn/format_version"][()]) != NETX_FORMAT_VERSION:
            raise ExportError(f"{path}: qsnn netx data version {int(f['qsnn/format_version'][()])}, "
                              f"expected {NETX_FORMAT_VERSION}")
        head = {"profile": json.loads(_str(f["qsnn/profile"])), "network": json.loads(_str(f["qsnn/network"]))}
        layers = []
        for key in sorted(f["layer"].keys(), key=int):
            g = f["layer"][key]
            kind = _str(g["type"])
            if kind not in ("conv", "dense"):
                continue
            q = g["qsnn"]
            pool = int(q["pool"][()])
            shift = max(int(q["current_shift"][()]) + int(q["weight_exp"][()]) - LAVA_SHIFT, 0)
            w = np.asarray(g["weight"][()], dtype=np.int64)
            if np.any(w % (1 << shift)):
                raise ExportError(f"{path}: layer/{key}/weight is not a multiple of 2^{shift}")
            w = w >> shift
            if kind == "conv":
                try:
                    w = unfold_pool(w, pool)
                except ValueError:
                    raise ExportError(f"{path}: layer/{key}/weight is not a {pool}×{pool}-pooled kernel") from None
            neuron = g["neuron"]
            vth = np.asarray(neuron["vThMant"][()], dtype=np.int64)
            theta = np.asarray(q["threshold"][()], dtype=np.int64)
            bias = np.asarray(q["bias"][()], dtype=np.int64)
            vth_full = np.broadcast_to(vth, theta.shape) << LAVA_SHIFT
            rounded = round_bias(bias)
            decay = int(neuron["vDecay"][()])
            if not (np.array_equal(vth_full, theta) and np.array_equal(np.asarray(g["bias"][()], dtype=np.int64), rounded)
                    and decay == int(q["decay"][()]) and int(neuron["iDecay"][()]) == I_DECAY):
                raise ExportError(f"{path}: layer/{key}: netx neuron parameters differ from the qsnn integers")
            record = {"name": _str(q["name"]), "kind": kind, "weight_shape": list(w.shape), "pool": pool,
                      "current_shift": int(q["current_shift"][()]), "weight_exp": int(q["weight_exp"][()]),
                      "scale": np.asarray(q["scale"][()], dtype=np.float64).tolist()}
            layers.append(layer_from_parts(record, w, theta, bias, decay))
    return network_from_parts(head, layers)


def readme(manifest: Mapping[str, Any]) -> str:
    rows = []
    for rec in manifest["layers"]:
        nrn = rec["neuron"]
        vth = nrn["vThMant"] if isinstance(nrn["vThMant"], int) else f"per channel ({min(nrn['vThMant'])}..{max(nrn['vThMant'])})"
        rows.append(f"| layer/{rec['netx_layer']} | {rec['name']} | {rec['kind']} | {tuple(rec['netx_weight_shape'])} | "
                    f"{tuple(rec['output_shape'])} | {rec['pool']}{' (folded)' if rec['pool_folded'] else ''} | "
                    f"{nrn['vDecay']} | {vth} |")
    notes = "\n".join(f"- {n}" for n in manifest["notes"])
    exact = []
    for rec in manifest["layers"]:
        if rec["lava_exact"]:
            exact.append(f"- layer {rec['index']} ({rec['name']}): bit-exact in Lava")
        else:
            exact += [f"- layer {rec['index']} ({rec['name']}): {issue}" for issue in rec["lava_issues"]]
    exact_text = "\n".join(exact)
    verdict = ("Stock netx + Lava reproduce every layer bit for bit."
               if manifest["lava_exact"] else
               "**Not every layer is bit-exact in stock netx + Lava** (the file still carries the exact "
               "integers; qsnn reads them back bit for bit):")
    return f"""# qsnn Loihi 2 network (lava-dl netx)

`network.net` is an HDF5 file in lava-dl's `netx` format: load it in Lava with
`lava.lib.dl.netx.hdf5.Network(net_config="network.net")`. It holds a spiking network compiled to
the integers of Lava's fixed-point LIF (profile `{manifest['profile']['name']}`), T =
{manifest['network']['num_steps']} steps per input; the class is the output neuron that spiked most.

## Neuron (Lava `PyLifModelBitAcc`)

```
u = rz(u·(4096 − (du+1))) + (a_in << 6)        du = iDecay − 1 = 4095: u = a_in << 6 every step
v = rz(v·(4096 − dv)) + u + (bias << 6)        dv = vDecay
spike if v > vThMant << 6, then v = 0
```
`neuron` of every layer: `type = CUBA`, `iDecay = 4096`, `vDecay`, `vThMant`, `refDelay = 1`,
`gradedSpike = False`. Each layer's output reaches the next layer one step later (Lava's delay).

## Layers

| netx | layer | type | weight | output | pool | vDecay | vThMant |
|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

- `weight`: integers, (out, in, ky, kx) for conv, (out, in) for dense (inputs flattened (C, H, W)).
- Pooling P×P (on the synaptic sum) is folded into the convolution: kernel k+P−1, stride P, each tap
  the sum of up to P² weights; this is exactly the pooled network, and needs no netx `pool` layer.
- `bias`: per output channel, mantissa (Lava adds `bias << 6`).

## Does Lava run it bit for bit?

{verdict}

{exact_text}

## Notes

{notes}

## Extra data for qsnn

netx has no place for the per-channel scale factors (real membrane value of one integer unit) and
qsnn's own layer constants; they are in `qsnn/` (profile and network as JSON) and
`layer/<i>/qsnn/` (name, kind, kernel, pool, current_shift, weight_exp, decay, threshold, bias,
scale). Lava ignores them. `manifest.json` lists every file with its SHA-256.
"""
