"""Every integer stage on any layer stack (issue 24): depth, conv stride and padding, synaptic bias,
2..8-bit weights per layer, per-channel scales.

Four implementations of the integer contract (:mod:`qsnn.network`) must give the same spikes and
membranes, ``np.array_equal``, on every spec: the NumPy engine (``simulate``), the reference
simulator (``simulate_reference``), the PyTorch integer mode (``run_integer_torch``) and the integer
QONNX graph under onnxruntime (``run_integer_onnx``). The networks are hand-built (random integers of
the profile's widths, thresholds calibrated so that every layer spikes) and compiled from float
graphs (trained-free: a QSNN built from the spec, exported, compiled under a profile); the inputs are
real mnist5k digits for static networks and random event counts for event networks. The compiler's
fold of a trained synaptic bias is checked against the same bias written as BatchNorm's shift.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from qsnn.arch import parse_arch
from qsnn.data import load_split
from qsnn.export.integer_torch import run_integer_torch
from qsnn.export.qonnx_int import export_integer, read_integer_qonnx
from qsnn.export.runtime import run_integer_onnx
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import FPGA, LOIHI2
from qsnn.sim import simulate
from qsnn.sim.reference import simulate_reference

LEAK = {"mul": 3700, "shift": 3, "loihi": 400}

#: Hand-built networks: (spec, profile, per-layer weight bits, encoding). Static ones take 28×28 digits.
HAND = {
    "dense-2": ("D64-D10", FPGA, (4, 4), "static"),
    "dense-3": ("D48-D24-D10", FPGA, (4, 4, 4), "static"),
    "conv3-stride2-pad1": ("6C3s2p1-8C3s2p1-8C3p1-AP2-D10", FPGA, (4, 4, 4, 4), "static"),
    "pool-after-stride": ("4C5-AP2-6C3s2p1-AP2-8C3p1-D10", FPGA, (4, 4, 4, 4), "static"),
    "bits-2-and-8": ("6C5s2p2-AP2-D32-D10", FPGA.replace(weight_bits=8), (2, 8, 2), "static"),
    "loihi2-stride-pad": ("6C3s2p1-8C3p1-AP2-D10", LOIHI2, (8, 8, 8), "static"),
    "saturate": ("6C3s2p1-D32-D10", FPGA.replace(membrane_bits=10), (4, 4, 4), "static"),
    "wrap-delay": (
        "6C3s2p1-8C3p1-D10",
        FPGA.replace(membrane_bits=12, overflow="wrap", synaptic_delay=1),
        (4, 4, 4),
        "static",
    ),
    "events-stride-pad": ("4C3s2p1-6C3s1p1-AP2-D10", FPGA, (4, 4, 4), "events"),
    "loihi2-events": ("4C3s2p1-D16-D10", LOIHI2, (8, 8, 8), "events"),
}


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_split("mnist5k", "test").x[:10]


def event_input(shape: tuple[int, ...], T: int, n: int = 8, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((n, T, *shape)) < 0.25).astype(np.uint16) * rng.integers(1, 4, size=(n, T, *shape)).astype(
        np.uint16
    )


def _acc(layer: IntegerLayer, x: torch.Tensor) -> torch.Tensor:
    """sumpool_p(W ⊛_{s,pad} x) in float64 (for calibrating thresholds only)."""
    w = torch.from_numpy(np.asarray(layer.weight, np.float64))
    if layer.kind == "dense":
        return x.flatten(1) @ w.T
    acc = F.conv2d(x, w, stride=layer.stride, padding=layer.padding)
    return F.avg_pool2d(acc, layer.pool, divisor_override=1) if layer.pool > 1 else acc


def hand_net(
    spec: str, profile, bits: tuple[int, ...], encoding: str, x: np.ndarray, T: int = 8, seed: int = 0
) -> IntegerNetwork:
    """A network of ``spec`` with random weights of the given widths, per-channel scales and biases, its
    thresholds set layer by layer from the currents the previous layers' spikes give on ``x``."""
    rng = np.random.default_rng(seed)
    arch = parse_arch(spec)
    c_in = 1 if encoding == "static" else 2
    shape = (c_in, 28, 28) if encoding == "static" else (c_in, 16, 16)
    shapes = arch.shapes(shape)
    ts, bs = profile.threshold_shift, profile.bias_shift
    shift = profile.frac_bits if profile.fixed_shift else 1
    layers: list[IntegerLayer] = []
    for i, (spec_l, out_shape) in enumerate(zip(arch.layers, shapes)):
        in_shape = shape if i == 0 else shapes[i - 1]
        o = out_shape[0]
        wmax = 2 ** (bits[i] - 1) - 1
        wshape = (
            (o, in_shape[0], spec_l.kernel, spec_l.kernel) if spec_l.kind == "conv" else (o, int(np.prod(in_shape)))
        )
        weight = rng.integers(-wmax, wmax + 1, size=wshape)
        weight[:, ..., 0] = np.abs(weight[:, ..., 0])  # a bias towards excitation: every layer fires
        conv = (
            dict(stride=spec_l.stride, padding=spec_l.padding, pool=spec_l.pool)
            if spec_l.kind == "conv"
            else dict(pool=1)
        )
        probe = IntegerLayer(
            f"l{i + 1}",
            spec_l.kind,
            weight.astype(np.int16),
            current_shift=shift,
            threshold=np.ones(o, np.int64),
            bias=np.zeros(o, np.int64),
            leak_const=LEAK[profile.leak],
            scale=np.ones(o),
            **conv,
        )
        # the currents on the input spikes this layer gets: set θ_c near their upper quantile
        inputs = _layer_input(layers, profile, x, encoding, T, shape)
        acc = torch.stack([_acc(probe, inp) for inp in inputs]).numpy()
        cur = acc * 2.0**shift
        per_channel = np.moveaxis(cur, 2, 0).reshape(o, -1)
        theta = np.maximum(np.quantile(per_channel, 0.9, axis=1) * 1.5, 4.0 * 2**ts)
        if profile.name == "fpga" and profile.membrane_bits <= 10:
            theta = np.minimum(theta, profile.membrane_max // 4)  # currents beyond the rails: saturation
        theta = np.minimum(theta, min(profile.threshold_max, profile.membrane_max - 1))
        theta = (theta.astype(np.int64) >> ts) << ts
        bias = (rng.integers(-8, 9, size=o) * (theta // 64 + 1)) >> bs << bs
        scale = rng.uniform(0.005, 0.02, size=o)  # per-channel: one unit's real value
        layers.append(
            IntegerLayer(
                f"l{i + 1}",
                spec_l.kind,
                weight.astype(np.int16),
                current_shift=shift,
                threshold=theta,
                bias=bias.astype(np.int64),
                leak_const=LEAK[profile.leak],
                scale=scale,
                **conv,
            )
        )
    return IntegerNetwork(
        tuple(layers),
        profile,
        shape,
        T,
        encoding,
        tuple(str(c) for c in range(shapes[-1][0])),
        metadata={"dataset": "handmade"},
        input_max=255 if encoding == "static" else 3,
    )


def _layer_input(
    layers: list[IntegerLayer], profile, x: np.ndarray, encoding: str, T: int, shape: tuple[int, ...]
) -> list[torch.Tensor]:
    """The input frames of the next layer at each step (float64), from the layers built so far."""
    if not layers:
        frames = [x] * T if encoding == "static" else [x[:, t] for t in range(T)]
        return [torch.from_numpy(np.asarray(f, np.float64)) for f in frames]
    head = IntegerLayer(
        "probe",
        "dense",
        np.ones((1, _flat(layers, shape)), np.int8),
        1,
        0,
        np.ones(1, np.int64),
        np.zeros(1, np.int64),
        LEAK[profile.leak],
        np.ones(1),
    )
    net = IntegerNetwork(
        tuple(layers) + (head,), profile, shape, T, encoding, ("a",), input_max=255 if encoding == "static" else 3
    )
    z = run_integer_torch(net, x)[f"z{len(layers)}"]
    return [torch.from_numpy(z[t].astype(np.float64)) for t in range(T)]


def _flat(layers: list[IntegerLayer], shape: tuple[int, ...]) -> int:
    for layer in layers:
        shape = layer.output_shape(shape)
    return int(np.prod(shape))


def all_implementations(net: IntegerNetwork, x: np.ndarray, tmp_path, name: str) -> dict[str, dict[str, np.ndarray]]:
    """Spikes and membranes of every layer from the four implementations."""
    engine = simulate(net, x, batch_size=4, record=True, record_membranes=True)
    path = export_integer(net, tmp_path / f"{name}.onnx")
    return {
        "reference": simulate_reference(net, x),
        "engine": {**engine.spikes, **engine.membranes},
        "engine-numpy": (lambda r: {**r.spikes, **r.membranes})(
            simulate(net, x, batch_size=3, kernel="numpy", threads=1, record=True, record_membranes=True)
        ),
        "integer_torch": run_integer_torch(net, x, record=True, batch_size=4),
        "qonnx_int": run_integer_onnx(path, x, engine="ort", record=True),
        "qonnx_int_read_back": run_integer_torch(read_integer_qonnx(path), x, record=True),
    }


def assert_all_equal(net: IntegerNetwork, x: np.ndarray, tmp_path, name: str) -> dict[str, np.ndarray]:
    got = all_implementations(net, x, tmp_path, name)
    ref = got.pop("reference")
    keys = [f"{k}{i + 1}" for k in "zu" for i in range(len(net.layers))]
    for impl, res in got.items():
        for key in keys:
            assert res[key].shape == ref[key].shape, (impl, key)
            assert np.array_equal(res[key], ref[key]), (impl, key, int(np.sum(res[key] != ref[key])))
    return ref


@pytest.mark.parametrize("name", list(HAND))
def test_hand_built_stacks_are_bit_exact_everywhere(name, digits, tmp_path):
    spec, profile, bits, encoding = HAND[name]
    x = digits if encoding == "static" else event_input((2, 16, 16), T=8)
    net = hand_net(spec, profile, bits, encoding, x)
    assert [l.stride for l in net.layers if l.kind == "conv"] == [
        l.stride for l in parse_arch(spec).layers if l.kind == "conv"
    ]
    ref = assert_all_equal(net, x, tmp_path, name)
    for i in range(len(net.layers)):
        z = ref[f"z{i + 1}"]
        assert z.any(), f"layer {i + 1} never spikes: the comparison would be empty"
    if name == "saturate":  # the rails are reached
        u = ref["u1"]
        assert u.max() == profile.membrane_max or u.min() == profile.membrane_min
    if profile.overflow == "saturate":
        for i in range(len(net.layers)):
            assert profile.membrane_min <= ref[f"u{i + 1}"].min() and ref[f"u{i + 1}"].max() <= profile.membrane_max


def test_integer_qonnx_carries_stride_padding_and_depth(digits, tmp_path):
    spec, profile, bits, encoding = HAND["pool-after-stride"]
    net = hand_net(spec, profile, bits, encoding, digits)
    path = export_integer(net, tmp_path / "deep.onnx")
    back = read_integer_qonnx(path)
    assert len(back.layers) == 4
    for a, b in zip(net.layers, back.layers):
        assert (a.kind, a.stride, a.padding, a.pool) == (b.kind, b.stride, b.padding, b.pool)
        assert np.array_equal(a.weight, b.weight) and np.array_equal(a.bias, b.bias)
    from qsnn.export.format import check_qsnn_model

    model, meta = check_qsnn_model(path, kind="integer")
    assert [o.name for o in model.graph.output][0] == "z4"
    assert meta["arch"] == "4C5-AP2-6C3s2p1-AP2-8C3p1-D10"
    assert [(r["stride"], r["padding"]) for r in meta["layers"]] == [(1, 0), (2, 1), (1, 1), (1, 0)]
    pads = [next(a.ints for a in n.attribute if a.name == "pads") for n in model.graph.node if n.op_type == "Conv"]
    assert [list(p) for p in pads] == [[0] * 4, [1] * 4, [1] * 4]


# --------------------------------------------------------------------------------------------------
# Compiled from float exports (no training: a QSNN built from the spec, its weights scaled to spike)

SATURATE = FPGA.replace(membrane_bits=10)
#: (spec and training overrides, profile, allow_saturation[, the profile the compiled network then runs
#: under: a narrower membrane that the compiled currents drive onto its rails, saturating or wrapping])
COMPILED = {
    "dense-2": (dict(arch="D64-D10"), FPGA, False),
    "dense-3": (dict(arch="D48-D24-D10", weight_scale="channel", bias=True), FPGA, False),
    "conv3-s2p1-bias-channel": (
        dict(arch="8C3s2p1-16C3s2p1-16C3p1-D10", bias=True, weight_scale="channel"),
        FPGA,
        False,
    ),
    "conv3-s2p1-loihi2": (dict(arch="8C3s2p1-16C3s2p1-16C3p1-D10", bias=True, weight_scale="channel"), LOIHI2, False),
    "bits-2": (dict(arch="8C5s2p2-AP2-D32-D10", weight_bits=2), FPGA, False),
    "bits-8": (dict(arch="8C5-AP2-16C5-AP2-D10", weight_bits=8), FPGA.replace(weight_bits=8), False),
    "bits-mixed": (dict(arch="8C5w8-AP2-D32w2-D10"), FPGA.replace(weight_bits=8), False),
    "four-layers": (dict(arch="8C5-AP2-12C3s2p1-AP2-16C3p1-D10", bias=True), FPGA, False),
    "four-layers-loihi2": (dict(arch="8C5s2p2-16C3s2p1-AP2-16C3p1-D10", bias=True), LOIHI2, False),
    "allow-saturation": (dict(arch="8C3s2p1-16C3s2p1-16C3p1-D10", bias=True), SATURATE, True),
    "runs-saturated": (
        dict(arch="8C3s2p1-16C3s2p1-16C3p1-D10", bias=True, weight_scale="channel"),
        FPGA,
        False,
        FPGA.replace(membrane_bits=14),
    ),
    "runs-wrapped": (
        dict(arch="8C3s2p1-16C3s2p1-16C3p1-D10", bias=True, weight_scale="channel"),
        FPGA,
        False,
        FPGA.replace(membrane_bits=14, overflow="wrap"),
    ),
}


def compiled(synthetic_export, name: str):
    from qsnn.export.compile import compile_qonnx

    overrides, profile, saturate, *run_under = COMPILED[name]
    _, onnx_path = synthetic_export(**overrides)
    net, report = compile_qonnx(onnx_path, profile, allow_saturation=saturate)
    return (dataclasses.replace(net, profile=run_under[0]) if run_under else net), report


@pytest.mark.parametrize("name", list(COMPILED))
def test_compiled_stacks_are_bit_exact_everywhere(name, synthetic_export, digits, tmp_path):
    overrides = COMPILED[name][0]
    net, report = compiled(synthetic_export, name)
    arch = parse_arch(overrides["arch"])
    assert len(net.layers) == len(arch.layers)
    for layer, spec in zip(net.layers, arch.layers):
        if spec.kind == "conv":
            assert (layer.stride, layer.padding, layer.pool) == (spec.stride, spec.padding, spec.pool)
    for rec, layer in zip(report["layers"], net.layers):
        assert (rec["stride"], rec["padding"]) == (layer.stride, layer.padding)
        assert rec["synaptic_bias"] == bool(overrides.get("bias"))
    ref = assert_all_equal(net, digits, tmp_path, name)
    if name == "allow-saturation":  # thresholds with 4x headroom on a 10-bit membrane: coarse, deep layers quiet
        assert report["saturation_possible"] and ref["z1"].any()
    else:
        for i in range(len(net.layers)):
            assert ref[f"z{i + 1}"].any(), f"layer {i + 1} never spikes: the comparison would be empty"
    if not name.startswith("runs-"):  # the compiler's worst-case bound holds on strided, padded layers too
        for i, rec in enumerate(report["layers"]):
            u = ref[f"u{i + 1}"]
            assert rec["bound"]["min"] <= u.min() and u.max() <= rec["bound"]["max"], rec["name"]
    else:  # the narrow membrane's rails are reached (and wrapped past)
        p = net.profile
        if p.overflow == "saturate":
            assert ref["u1"].max() == p.membrane_max and ref["u1"].min() == p.membrane_min
        else:
            wide = run_integer_torch(dataclasses.replace(net, profile=FPGA), digits, record=True)
            assert not np.array_equal(wide["u1"], ref["u1"])


def test_a_synaptic_bias_folds_as_batchnorm_shift_would(synthetic_export):
    """Compiling a graph whose layers carry a synaptic bias β_c gives the same integer network as the
    graph with no bias and BatchNorm's shift h_c + g_c·β_c: the bias enters before the pooling (a
    constant pools to itself) and passes through BatchNorm's gain."""
    from qsnn.export.compile import compile_graph
    from qsnn.export.float_graph import read_float_graph

    _, path = synthetic_export(arch="8C3s2p1-AP2-16C3p1-D10", bias=True, weight_scale="channel")
    graph = read_float_graph(path)
    assert all(layer.bias is not None and np.any(layer.bias != 0) for layer in graph.layers)
    assert any(np.any(layer.bn_gain != 1) for layer in graph.layers)  # BatchNorm's gain is in the fold
    as_shift = dataclasses.replace(
        graph,
        layers=tuple(
            dataclasses.replace(layer, bias=None, bn_offset=layer.bn_gain * layer.bias + layer.bn_offset)
            for layer in graph.layers
        ),
    )
    for profile in (FPGA, LOIHI2):
        a, _ = compile_graph(graph, profile)
        b, _ = compile_graph(as_shift, profile)
        for la, lb in zip(a.layers, b.layers):
            for attr in ("weight", "threshold", "bias", "scale"):
                assert np.array_equal(getattr(la, attr), getattr(lb, attr)), (profile.name, la.name, attr)
            assert (la.current_shift, la.stride, la.padding, la.pool) == (
                lb.current_shift,
                lb.stride,
                lb.padding,
                lb.pool,
            )
        # and the bias is really there: without it the integer biases differ
        no_bias = dataclasses.replace(
            graph, layers=tuple(dataclasses.replace(layer, bias=None) for layer in graph.layers)
        )
        c, _ = compile_graph(no_bias, profile)
        assert any(not np.array_equal(la.bias, lc.bias) for la, lc in zip(a.layers, c.layers))


def test_a_real_bias_reaches_the_integer_bias_on_its_grid(synthetic_export):
    """b_c·δ_c ≈ g_c·β_c + h_c within half a grid unit (a bias step on profiles with a bias shift)."""
    from qsnn.export.compile import compile_graph
    from qsnn.export.float_graph import read_float_graph

    graph = read_float_graph(synthetic_export(arch="8C3s2p1-AP2-16C3p1-D10", bias=True, weight_scale="channel")[1])
    net, _ = compile_graph(graph, FPGA)
    for src, layer in zip(graph.layers, net.layers):
        real = src.bn_gain * src.bias + src.bn_offset
        assert np.all(np.abs(layer.bias * layer.scale - real) <= 0.5 * layer.scale + 1e-12)


def test_every_failing_limit_is_listed_in_one_error(synthetic_export):
    from qsnn.errors import ProfileError
    from qsnn.export.compile import compile_qonnx

    _, path = synthetic_export(arch="8C5-AP2-16C5-AP2-D10", weight_bits=8)
    with pytest.raises(ProfileError) as err:
        compile_qonnx(path, FPGA)
    text = str(err.value)
    assert "\n" not in text
    for layer in ("conv1", "conv2", "fc"):
        assert f"layer {layer}: 8-bit weights reach" in text
    assert "--profile-set weight_bits=8" in text and "4-bit weights" in text
    with pytest.raises(ProfileError) as err:
        compile_qonnx(path, FPGA.replace(max_fan_in=100, max_neurons=1000))
    text = str(err.value)
    assert "limits)" in text and "fan-in" in text and "neurons" in text and "weight_bits=8" in text
    assert "--profile-set max_fan_in=" in text and "--profile-set max_neurons=" in text
    # the widened profile holds it
    net, _ = compile_qonnx(path, FPGA.replace(weight_bits=8))
    assert max(int(np.abs(layer.weight).max()) for layer in net.layers) > 7


@pytest.mark.parametrize("stride,padding,pool", [(1, 0, 2), (2, 1, 1), (2, 1, 2), (3, 2, 2), (1, 2, 3)])
def test_engine_fanout_counts_the_synapses_of_strided_padded_layers(stride, padding, pool):
    """The synaptic-operation count's fan-out per input unit is what the convolution really reads: one
    input at a time through the reference's synaptic sum with all-ones weights."""
    from qsnn.sim.layers import compile_layers
    from qsnn.sim.reference import synaptic_sum

    k, side, o = 3, 11, 2
    layer = IntegerLayer(
        "c",
        "conv",
        np.ones((o, 1, k, k), np.int8),
        pool,
        0,
        np.ones(o, np.int64),
        np.zeros(o, np.int64),
        4096,
        np.ones(o),
        stride=stride,
        padding=padding,
    )
    out = layer.output_shape((1, side, side))
    head = IntegerLayer(
        "d",
        "dense",
        np.ones((1, int(np.prod(out))), np.int8),
        1,
        0,
        np.ones(1, np.int64),
        np.zeros(1, np.int64),
        4096,
        np.ones(1),
    )
    net = IntegerNetwork((layer, head), FPGA, (1, side, side), 1, "static", ("a",))
    fan = compile_layers(net, 255)[0].fanout
    one_hot = np.eye(side * side, dtype=np.int64).reshape(-1, 1, side, side)
    assert np.array_equal(fan.reshape(-1), synaptic_sum(layer, one_hot).reshape(side * side, -1).sum(axis=1))


@pytest.mark.parametrize("name", ["pool-after-stride", "loihi2-stride-pad"])
def test_integer_graph_under_the_qonnx_executor(name, digits, tmp_path):
    """qonnx's node-by-node executor on the strided, padded, four-layer graphs (two digits: it is slow)."""
    spec, profile, bits, encoding = HAND[name]
    net = hand_net(spec, profile, bits, encoding, digits)
    x = digits[:2]
    got = run_integer_onnx(export_integer(net, tmp_path / "g.onnx"), x, engine="qonnx", record=True)
    ref = simulate_reference(net, x)
    for key in [f"{k}{i + 1}" for k in "zu" for i in range(len(net.layers))]:
        assert np.array_equal(got[key], ref[key]), key


def test_read_back_keeps_the_input_range(tmp_path):
    spec, profile, bits, encoding = HAND["events-stride-pad"]
    x = event_input((2, 16, 16), T=8)
    net = hand_net(spec, profile, bits, encoding, x)
    assert read_integer_qonnx(export_integer(net, tmp_path / "e.onnx")).input_max == net.input_max == 3


def test_engine_cache_tells_strides_and_paddings_apart():
    """Two networks equal in every weight and shape but a conv's stride and padding (7×7 input, k = 3:
    stride 2 unpadded and stride 3 padded by 1 both give 3×3) are compiled apart."""
    rng = np.random.default_rng(5)
    w = rng.integers(-7, 8, size=(4, 1, 3, 3)).astype(np.int8)
    w_fc = rng.integers(-7, 8, size=(3, 36)).astype(np.int8)
    x = rng.integers(0, 256, size=(6, 1, 7, 7)).astype(np.uint8)

    def net(stride, padding):
        conv = IntegerLayer(
            "c",
            "conv",
            w,
            1,
            0,
            np.full(4, 300, np.int64),
            np.zeros(4, np.int64),
            3700,
            np.ones(4),
            stride=stride,
            padding=padding,
        )
        fc = IntegerLayer("d", "dense", w_fc, 1, 0, np.full(3, 5, np.int64), np.zeros(3, np.int64), 3700, np.ones(3))
        return IntegerNetwork((conv, fc), FPGA, (1, 7, 7), 4, "static", ("a", "b", "c"))

    a, b = net(2, 0), net(3, 1)
    runs = [simulate(n, x, record_membranes=True).membranes["u1"] for n in (a, b)]
    assert not np.array_equal(*runs)
    for n, got in zip((a, b), runs):
        assert np.array_equal(got, simulate_reference(n, x)["u1"])
