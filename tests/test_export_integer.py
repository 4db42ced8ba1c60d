"""The integer QONNX graph and the PyTorch integer evaluation on hand-made networks (no training).

Every profile variant (saturate at both rails, wrap, mul/shift/loihi leak, subtract/zero reset,
synaptic delay, negative current shifts, weight exponents, 16-bit event counts) must give the same
spikes and membranes in ``run_integer_torch`` and in the exported graph run by onnxruntime and by
qonnx's executor; a tiny network is also checked against values worked out by hand from the
contract in :mod:`qsnn.arith`.
"""

from __future__ import annotations

import numpy as np
import pytest

from qsnn.arith import leak
from qsnn.errors import ExportError
from qsnn.export.integer_torch import run_integer_torch
from qsnn.export.qonnx_int import export_integer, read_integer_qonnx
from qsnn.export.runtime import run_integer_onnx
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import ChipProfile, get_profile


def random_net(
    profile: ChipProfile,
    *,
    seed: int = 0,
    encoding: str = "static",
    T: int = 6,
    shifts=(-3, 1, 3),
    theta_scale: float | tuple = 1.0,
    weight_exp: int = 0,
) -> IntegerNetwork:
    """A 3-layer QSNN-shaped network: conv 5×5 + sum-pool 2, conv 3×3, dense; random integers."""
    rng = np.random.default_rng(seed)
    c_in = 1 if encoding == "static" else 2
    wmax = profile.weight_max
    shapes = [(4, c_in, 5, 5), (6, 4, 3, 3), (3, 54)]
    scales = theta_scale if isinstance(theta_scale, tuple) else (theta_scale,) * 3
    layers = []
    for i, (name, kind, shape, pool, s) in enumerate(
        zip(("conv1", "conv2", "fc"), ("conv", "conv", "dense"), shapes, (2, 1, 1), shifts)
    ):
        out = shape[0]
        theta = (rng.integers(20, 200, size=out) * scales[i]).astype(np.int64)
        theta = (theta >> profile.threshold_shift) << profile.threshold_shift
        theta = np.maximum(theta, 1 << profile.threshold_shift)
        layers.append(
            IntegerLayer(
                name=name,
                kind=kind,
                weight=rng.integers(-wmax, wmax + 1, size=shape).astype(np.int16),
                pool=pool,
                current_shift=s,
                threshold=theta,
                bias=rng.integers(-15, 16, size=out).astype(np.int64),
                leak_const={"mul": 3700, "shift": 3, "loihi": 400}[profile.leak],
                scale=np.full(out, 0.01),
                weight_exp=weight_exp if i == 1 else 0,
            )
        )
    return IntegerNetwork(
        layers=tuple(layers),
        profile=profile,
        input_shape=(c_in, 14, 14),
        num_steps=T,
        encoding=encoding,
        classes=("a", "b", "c"),
        metadata={"dataset": "handmade"},
        input_max=255 if encoding == "static" else 65535,
    )  # events: raw 16-bit counts


def random_input(net: IntegerNetwork, n: int, seed: int = 1, high: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if net.encoding == "static":
        return rng.integers(0, 256 if high is None else high + 1, size=(n, *net.input_shape)).astype(np.uint8)
    counts = rng.integers(0, 4 if high is None else high + 1, size=(n, net.num_steps, *net.input_shape))
    return counts.astype(np.uint16)


def assert_same(a: dict, b: dict, keys=("z1", "z2", "z3", "u1", "u2", "u3")) -> None:
    for key in keys:
        assert a[key].shape == b[key].shape, key
        assert np.array_equal(a[key], b[key]), key


FPGA = get_profile("fpga")
VARIANTS = {
    "fpga": FPGA,
    "saturate-narrow": FPGA.replace(membrane_bits=9),
    "wrap": FPGA.replace(membrane_bits=9, overflow="wrap"),
    "shift-leak-zero-reset": FPGA.replace(leak="shift", reset="zero"),
    "loihi-leak-symmetric": FPGA.replace(leak="loihi", membrane_bits=10, symmetric_clip=True),
    "delay-2": FPGA.replace(synaptic_delay=2),
    "loihi2": get_profile("loihi2"),
}


def exported_variant(name: str, tmp_path):
    """(profile, input, the variant's integer graph, run_integer_torch's result) of a VARIANTS network."""
    profile = VARIANTS[name]
    net = random_net(
        profile,
        theta_scale=64.0 if profile.name == "loihi2" else 1.0,
        shifts=(0, 6, 6) if profile.name == "loihi2" else (-3, 1, 3),
        T=10,
    )
    x = random_input(net, 24)
    return (
        profile,
        x,
        export_integer(net, tmp_path / f"{name}.onnx"),
        run_integer_torch(net, x, record=True, batch_size=10),
    )


@pytest.mark.parametrize("name", list(VARIANTS))
def test_integer_graph_equals_integer_torch(name, tmp_path):
    profile, x, path, ref = exported_variant(name, tmp_path)
    assert_same(run_integer_onnx(path, x, engine="ort", record=True), ref)
    for i in (1, 2, 3):
        u = ref[f"u{i}"]
        assert u.min() >= profile.membrane_min and u.max() <= profile.membrane_max
        assert ref[f"z{i}"].any(), f"layer {i} never spikes: the comparison would be empty"
    if name == "saturate-narrow":  # both rails are reached, and held
        assert ref["u1"].max() == profile.membrane_max and ref["u1"].min() == profile.membrane_min
    if name == "loihi-leak-symmetric":
        assert ref["u1"].min() >= -(2**9 - 1)
    if name == "wrap":  # the wrapped run differs from the saturating one
        sat = run_integer_torch(random_net(VARIANTS["saturate-narrow"], T=10), x, record=True)
        assert not np.array_equal(sat["u1"], ref["u1"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fpga", "wrap", "loihi2"])
def test_integer_graph_under_the_qonnx_executor_equals_integer_torch(name, tmp_path):
    """qonnx's node-by-node executor (slow; the same kernels as onnxruntime for standard ops)."""
    _, x, path, ref = exported_variant(name, tmp_path)
    assert_same(run_integer_onnx(path, x[:3], engine="qonnx", record=True), {k: v[:, :3] for k, v in ref.items()})


def test_synaptic_delay_shifts_each_layer_by_k_steps():
    """Without biases, layer l of a k-delayed network at step t equals the undelayed layer at t − l·k."""
    k, T = 2, 12
    base = random_net(FPGA, T=T)
    unbiased = tuple(
        IntegerLayer(
            l.name, l.kind, l.weight, l.pool, l.current_shift, l.threshold, np.zeros_like(l.bias), l.leak_const, l.scale
        )
        for l in base.layers
    )
    plain = IntegerNetwork(unbiased, FPGA, base.input_shape, T, "static", base.classes)
    delayed = IntegerNetwork(unbiased, FPGA.replace(synaptic_delay=k), base.input_shape, T, "static", base.classes)
    x = random_input(plain, 8)
    a, b = run_integer_torch(plain, x), run_integer_torch(delayed, x)
    for i in (1, 2, 3):
        assert a[f"z{i}"].any()
        assert not b[f"z{i}"][: i * k].any()
        assert np.array_equal(b[f"z{i}"][i * k :], a[f"z{i}"][: T - i * k])


def test_wide_event_counts_and_weight_exponents_are_exact(tmp_path):
    """16-bit counts overflow float32 convolutions: the graph splits the input into digits."""
    profile = FPGA.replace(membrane_bits=36, frac_bits=8)
    net = random_net(profile, encoding="events", shifts=(0, 1, 3), theta_scale=(20000.0, 1.0, 1.0), weight_exp=2)
    x = random_input(net, 6, high=65535)
    path = export_integer(net, tmp_path / "events.onnx")
    ref = run_integer_torch(net, x, record=True)
    assert np.abs(ref["u1"]).max() > 2**24  # beyond float32's exact integers
    assert all(ref[f"z{i}"].any() for i in (1, 2, 3))
    assert_same(run_integer_onnx(path, x, engine="ort", record=True), ref)
    assert_same(run_integer_onnx(path, x[:2], engine="qonnx", record=True), {k: v[:, :2] for k, v in ref.items()})
    negative = random_net(FPGA, encoding="events", weight_exp=-1)  # floors the sum first
    path = export_integer(negative, tmp_path / "negexp.onnx")
    xs = random_input(negative, 8)
    assert_same(run_integer_onnx(path, xs, engine="ort", record=True), run_integer_torch(negative, xs, record=True))


def test_read_back_a_handmade_network(tmp_path):
    net = random_net(FPGA.replace(synaptic_delay=1, reset="zero"))
    back = read_integer_qonnx(export_integer(net, tmp_path / "n.onnx"))
    assert back.profile == net.profile and back.metadata["dataset"] == "handmade"
    for a, b in zip(net.layers, back.layers):
        for field in ("weight", "threshold", "bias", "scale"):
            assert np.array_equal(getattr(a, field), getattr(b, field))


def test_exactness_limits_are_checked(tmp_path):
    with pytest.raises(ExportError, match="too wide"):
        export_integer(random_net(FPGA.replace(membrane_bits=44)), tmp_path / "wide.onnx")
    assert not (tmp_path / "wide.onnx").exists()


def test_any_depth_exports(tmp_path):
    """A two-layer network is a graph of two layers (u1, u2 → z2), equal to the PyTorch integer mode."""
    two = IntegerNetwork(
        layers=random_net(FPGA).layers[1:],
        profile=FPGA,
        input_shape=(4, 5, 5),
        num_steps=4,
        encoding="static",
        classes=("a", "b", "c"),
    )
    x = np.random.default_rng(0).integers(0, 2, size=(5, 4, 5, 5)).astype(np.uint8)
    path = export_integer(two, tmp_path / "two.onnx")
    assert_same(
        run_integer_onnx(path, x, engine="ort", record=True),
        run_integer_torch(two, x, record=True),
        keys=("z1", "z2", "u1", "u2"),
    )
    assert len(read_integer_qonnx(path).layers) == 2


def _chain(profile: ChipProfile, w: int, s: int, b: int, theta: int, decay: int, T: int) -> IntegerNetwork:
    """One neuron per layer; layer 1 sees the pixel, layers 2 and 3 copy the spikes through."""
    one = lambda v: np.array([v], np.int64)  # noqa: E731
    l1 = IntegerLayer("conv1", "conv", np.full((1, 1, 1, 1), w, np.int8), 1, s, one(theta), one(b), decay, np.ones(1))
    l2 = IntegerLayer("conv2", "conv", np.ones((1, 1, 1, 1), np.int8), 1, 0, one(0), one(0), 0, np.ones(1))
    l3 = IntegerLayer("fc", "dense", np.ones((1, 1), np.int8), 1, 0, one(0), one(0), 0, np.ones(1))
    return IntegerNetwork((l1, l2, l3), profile, (1, 1, 1), T, "static", ("only",))


def test_hand_worked_steps(tmp_path):
    """The contract of qsnn.profiles, step by step, for one neuron (x = 3, F = 12)."""
    # mul leak m = 2048 (β = 0.5), w = 2, s = −1, b = 1, θ = 5, subtract reset:
    #   t0: 0 + (6 >> 1) + 1 = 4;  t1: (4·2048 >> 12) + 3 + 1 = 6 (spike);  t2: 3 + 4 − 5 = 2;
    #   t3: 1 + 4 = 5 (5 > 5 is false: no spike);  t4: (5·2048 >> 12 = 2) + 4 = 6 (spike)
    net = _chain(FPGA, w=2, s=-1, b=1, theta=5, decay=2048, T=5)
    x = np.full((1, 1, 1, 1), 3, np.uint8)
    ref = run_integer_torch(net, x, record=True)
    assert ref["u1"][:, 0, 0, 0, 0].tolist() == [4, 6, 2, 5, 6]
    assert ref["z1"][:, 0, 0, 0, 0].tolist() == [0, 1, 0, 0, 1]
    assert ref["z3"][:, 0, 0].tolist() == [0, 1, 0, 0, 1]  # θ = 0 layers pass spikes on (u = z > 0)
    assert_same(run_integer_onnx(export_integer(net, tmp_path / "a.onnx"), x, engine="qonnx", record=True), ref)
    # negative membrane: w = −3, s = −1 → shl(−9, −1) = −5 (floor), b = 1: current −4 every step
    #   mul (floor): 0 → −4 → −2−4 = −6 → −3−4 = −7 → floor(−3.5)−4 = −8
    #   loihi (toward zero, dv = 2048): 0 → −4 → −6 → −7 → −3−4 = −7
    floor = run_integer_torch(_chain(FPGA, -3, -1, 1, 5, 2048, 4), x, record=True)["u1"][:, 0, 0, 0, 0]
    loihi_p = FPGA.replace(leak="loihi")
    rz_net = _chain(loihi_p, -3, -1, 1, 5, 2048, 4)
    rz = run_integer_torch(rz_net, x, record=True)
    assert floor.tolist() == [-4, -6, -7, -8] and rz["u1"][:, 0, 0, 0, 0].tolist() == [-4, -6, -7, -7]
    assert_same(run_integer_onnx(export_integer(rz_net, tmp_path / "b.onnx"), x, engine="ort", record=True), rz)
    # zero reset: after the spike at t1 the membrane restarts from 0: t2 = 0 + 4 = 4, t3 = 2 + 4 = 6 (spike)
    zero = run_integer_torch(_chain(FPGA.replace(reset="zero"), 2, -1, 1, 5, 2048, 4), x, record=True)
    assert zero["u1"][:, 0, 0, 0, 0].tolist() == [4, 6, 4, 6]
    # the bound's leak helper agrees with these formulas
    assert leak(np.array([-7, 7]), 2048, FPGA).tolist() == [-4, 3]
    assert leak(np.array([-7, 7]), 2048, loihi_p).tolist() == [-3, 3]
    assert leak(np.array([-7, 16]), 3, FPGA.replace(leak="shift")).tolist() == [-6, 14]
