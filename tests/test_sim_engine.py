"""The integer engine (qsnn.sim) on hand-built networks: values computed by hand in each test."""

from __future__ import annotations

import subprocess
import sys
import time
import zlib

import numpy as np
import pytest

from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import FPGA, LOIHI2
from qsnn.sim import engine, layers, results, simulate
from qsnn.sim.reference import simulate_reference


@pytest.fixture(autouse=True)
def _compiled_kernels_where_installed(monkeypatch):
    """Every test here runs the engine's default path with the compiled kernels where numba is
    installed, however small its call (QSNN_SIM_ACCEL=auto would keep small calls in NumPy's loops
    until a large one loads them): tests/test_engine_accel.py holds the loops to the same integers."""
    monkeypatch.setenv("QSNN_SIM_ACCEL", "numba")


#: The kernels that compute sums in integers: onnxruntime's MatMulInteger (int32 accumulation) and, with the
#: compiled kernels on an AVX2 CPU, qsnn's own vpmaddubsw kernel where every sum fits int16.
INTEGER_KERNELS = {"onnxruntime", "avx2"}

NO_LEAK_MUL = 4096  # m = 2^12: β = 1 in Q0.12
NO_LEAK_LOIHI = 0  # dv = 0: 4096 − dv = 4096


def dense(name, w, threshold, bias=0, decay=NO_LEAK_MUL, shift=0, weight_exp=0):
    w = np.atleast_2d(np.asarray(w, dtype=np.int16))
    o = w.shape[0]
    return IntegerLayer(
        name,
        "dense",
        w,
        1,
        shift,
        np.full(o, threshold, np.int64),
        np.full(o, bias, np.int64),
        decay,
        np.ones(o),
        weight_exp,
    )


def net_of(profile, layers, T, encoding="static", input_shape=(1, 1, 1)):
    classes = tuple(str(i) for i in range(layers[-1].out_channels))
    return IntegerNetwork(tuple(layers), profile, input_shape, T, encoding, classes)


def pixel(value, n=1):
    return np.full((n, 1, 1, 1), value, dtype=np.uint8)


def run(net, x):
    res = simulate(net, x, record=True, record_membranes=True)
    return res, res.spikes, res.membranes


def frames(values):
    """Event input (1, T, 1, 1, 1) with the given count per step."""
    return np.asarray(values, dtype=np.uint16).reshape(1, -1, 1, 1, 1)


# --------------------------------------------------------------------------------------------------
# threshold, reset


@pytest.mark.parametrize("profile", [FPGA, FPGA.replace(reset="zero")], ids=["subtract", "zero"])
def test_threshold_equality_does_not_spike(profile):
    # θ = 10, no leak, current 5: u = 5, 10 (= θ: no spike), 15 (spike) ...
    net = net_of(profile, [dense("fc", [[1]], threshold=10)], T=3)
    res, z, u = run(net, pixel(5))
    assert u["u1"][:, 0, 0].tolist() == [5, 10, 15]
    assert z["z1"][:, 0, 0].tolist() == [0, 0, 1]
    # current 11 = θ + 1 spikes at once
    res, z, u = run(net, pixel(11))
    assert z["z1"][0, 0, 0] == 1


def test_subtract_versus_zero_reset():
    # θ = 10, no leak, current 7 every step.
    # subtract: 7, 14*, 14+7−10=11*, 11+7−10=8, 15*, 12*, 9, 16*
    # zero:     7, 14*, 0+7=7,       14*,       7, 14*, 7, 14*
    layer = dense("fc", [[1]], threshold=10)
    _, z, u = run(net_of(FPGA, [layer], T=8), pixel(7))
    assert u["u1"][:, 0, 0].tolist() == [7, 14, 11, 8, 15, 12, 9, 16]
    assert z["z1"][:, 0, 0].tolist() == [0, 1, 1, 0, 1, 1, 0, 1]
    _, z, u = run(net_of(FPGA.replace(reset="zero"), [layer], T=8), pixel(7))
    assert u["u1"][:, 0, 0].tolist() == [7, 14, 7, 14, 7, 14, 7, 14]
    assert z["z1"][:, 0, 0].tolist() == [0, 1, 0, 1, 0, 1, 0, 1]


def test_loihi_zero_reset_and_delay():
    # loihi2: zero reset, one-step delay: nothing arrives at t = 0, then 7, 14*, 0+7, 14*, ...
    layer = dense("fc", [[1]], threshold=10, decay=NO_LEAK_LOIHI)
    _, z, u = run(net_of(LOIHI2, [layer], T=6), pixel(7))
    assert u["u1"][:, 0, 0].tolist() == [0, 7, 14, 7, 14, 7]
    assert z["z1"][:, 0, 0].tolist() == [0, 0, 1, 0, 1, 0]


def test_loihi_current_wrap_in_the_engine_and_reference():
    # a_in = 127·255 = 32385 per input, 3 inputs: 97155 << 6 = 6217920 (fits), 4 inputs: 8290560 (fits),
    # 5 inputs: 10363200 > 2^23 → wraps to 10363200 − 2^24 = −6414016 (the chip's current turns negative)
    for n, current in ((4, 8290560), (5, 10363200 - 2**24)):
        layer = dense("fc", [[127] * n], threshold=64 * 131071, decay=NO_LEAK_LOIHI, shift=6)  # vth: 17-bit max
        net = net_of(LOIHI2, [layer], T=3, input_shape=(1, 1, n))
        x = np.full((1, 1, 1, n), 255, dtype=np.uint8)
        res, _, u = run(net, x)
        assert u["u1"][:, 0, 0].tolist() == [0, current, max(min(2 * current, 2**23 - 1), -(2**23 - 1))]
        assert res.layers[0].current_wraps == (2 if current < 0 else 0)
        ref = simulate_reference(net, x)
        assert np.array_equal(ref["u1"], u["u1"])


# --------------------------------------------------------------------------------------------------
# saturation and wrap at both rails


@pytest.mark.parametrize("sign", [1, -1])
def test_saturation_at_both_rails(sign):
    # 8-bit saturating membrane [−128, 127], θ = 200 (never reached), current ±50:
    # ±50, ±100, ±150 → rail, ±200 → rail
    profile = FPGA.replace(membrane_bits=8)
    net = net_of(profile, [dense("fc", [[sign]], threshold=200)], T=4)
    res, z, u = run(net, pixel(50))
    rail = 127 if sign > 0 else -128
    assert u["u1"][:, 0, 0].tolist() == [sign * 50, sign * 100, rail, rail]
    stats = res.layers[0]
    assert (stats.saturation_high, stats.saturation_low) == ((2, 0) if sign > 0 else (0, 2))
    assert (stats.membrane_min, stats.membrane_max) == ((0, 127) if sign > 0 else (-128, 0))
    assert not z["z1"].any()


def test_symmetric_clip_low_rail():
    profile = FPGA.replace(membrane_bits=8, symmetric_clip=True)
    net = net_of(profile, [dense("fc", [[-1]], threshold=200)], T=3)
    _, _, u = run(net, pixel(100))
    assert u["u1"][:, 0, 0].tolist() == [-100, -127, -127]


@pytest.mark.parametrize("sign", [1, -1])
def test_wrap_at_both_rails(sign):
    # 8-bit two's complement wrap, θ = 127 (unreachable), current ±50:
    # +: 50, 100, 150−256=−106, −56, −6, 44, 94, 144−256=−112
    profile = FPGA.replace(membrane_bits=8, overflow="wrap")
    net = net_of(profile, [dense("fc", [[sign]], threshold=127)], T=8)
    res, z, u = run(net, pixel(50))
    expected = [50, 100, -106, -56, -6, 44, 94, -112]
    assert u["u1"][:, 0, 0].tolist() == [sign * v for v in expected]
    stats = res.layers[0]
    assert (stats.saturation_high, stats.saturation_low) == ((2, 0) if sign > 0 else (0, 2))
    assert not z["z1"].any()


def test_wrap_ignores_symmetric_clip():
    # −100 − 100 = −200 wraps to 56 (two's complement), whatever symmetric_clip says
    profile = FPGA.replace(membrane_bits=8, overflow="wrap", symmetric_clip=True)
    net = net_of(profile, [dense("fc", [[-1]], threshold=127)], T=2)
    _, _, u = run(net, pixel(100))
    assert u["u1"][:, 0, 0].tolist() == [-100, 56]


# --------------------------------------------------------------------------------------------------
# rounding of the leak and of the current shift


def test_mul_leak_floors_negative_membranes():
    # β = 0.5 (m = 2048 in Q0.12), one input of −3 at t = 0, nothing after:
    # u = −3, floor(−1.5) = −2, floor(−1) = −1, floor(−0.5) = −1 (floor never reaches 0)
    net = net_of(FPGA, [dense("fc", [[-1]], threshold=100, decay=2048)], T=5, encoding="events")
    _, _, u = run(net, frames([3, 0, 0, 0, 0]))
    assert u["u1"][:, 0, 0].tolist() == [-3, -2, -1, -1, -1]
    net = net_of(FPGA, [dense("fc", [[1]], threshold=100, decay=2048)], T=4, encoding="events")
    _, _, u = run(net, frames([3, 0, 0, 0]))
    assert u["u1"][:, 0, 0].tolist() == [3, 1, 0, 0]


def test_loihi_leak_rounds_toward_zero():
    # loihi2: dv = 2048 (4096 − dv = 2048), one-step delay, input −3 at t = 0 arrives at t = 1:
    # u = 0, −3, rz(−1.5) = −1, rz(−0.5) = 0, 0
    net = net_of(LOIHI2, [dense("fc", [[-1]], threshold=100, decay=2048)], T=5, encoding="events")
    _, _, u = run(net, frames([3, 0, 0, 0, 0]))
    assert u["u1"][:, 0, 0].tolist() == [0, -3, -1, 0, 0]
    net = net_of(LOIHI2, [dense("fc", [[1]], threshold=100, decay=2048)], T=5, encoding="events")
    _, _, u = run(net, frames([3, 0, 0, 0, 0]))
    assert u["u1"][:, 0, 0].tolist() == [0, 3, 1, 0, 0]


def test_shift_leak_floors():
    # u − (u >> 1): −3 − (−2) = −1, −1 − (−1) = 0; 3 − 1 = 2, 2 − 1 = 1, 1 − 0 = 1
    profile = FPGA.replace(leak="shift")
    net = net_of(profile, [dense("fc", [[-1]], threshold=100, decay=1)], T=3, encoding="events")
    _, _, u = run(net, frames([3, 0, 0]))
    assert u["u1"][:, 0, 0].tolist() == [-3, -1, 0]
    net = net_of(profile, [dense("fc", [[1]], threshold=100, decay=1)], T=4, encoding="events")
    _, _, u = run(net, frames([3, 0, 0, 0]))
    assert u["u1"][:, 0, 0].tolist() == [3, 2, 1, 1]


@pytest.mark.parametrize("value, expected", [(5, 1), (4, 1), (3, 0), (-1, -1), (-4, -1), (-5, -2), (-8, -2)])
def test_negative_current_shift_floors(value, expected):
    # s = −2: shl(acc, −2) = floor(acc / 4); m = 0 so u_t is the current of step t alone
    w = 1 if value >= 0 else -1
    net = net_of(FPGA, [dense("fc", [[w]], threshold=100, decay=0, shift=-2)], T=2)
    _, _, u = run(net, pixel(abs(value)))
    assert u["u1"][:, 0, 0].tolist() == [expected, expected]


def test_positive_current_shift_and_weight_exponent():
    # shl(acc · 2^e, s) with acc = 3, e = 1, s = 2: 3·2·4 = 24; bias 1 every step; dv = 4096: no memory
    net = net_of(
        LOIHI2.replace(synaptic_delay=0),
        [dense("fc", [[1]], threshold=1000, bias=1, decay=4096, shift=2, weight_exp=1)],
        T=2,
    )
    _, _, u = run(net, pixel(3))
    assert u["u1"][:, 0, 0].tolist() == [25, 25]


def test_negative_weight_exponent_floors_before_the_shift():
    # acc = −5, e = −1, s = 1: shl(shl(−5, −1), 1) = floor(−2.5)·2 = −6 (not the single shift's −5)
    profile = FPGA.replace(weight_bits=8)
    net = net_of(profile, [dense("fc", [[-1]], threshold=100, decay=0, shift=1, weight_exp=-1)], T=1)
    _, _, u = run(net, pixel(5))
    assert u["u1"][0, 0, 0] == -6
    assert simulate_reference(net, pixel(5))["u1"][0, 0, 0] == -6


# --------------------------------------------------------------------------------------------------
# synaptic delay


def test_one_step_delay_through_two_layers():
    # θ = 0, no leak, zero reset. fpga (no delay): both layers spike from t = 0.
    # loihi2 (delay 1): layer 1 gets the pixel from t = 1, layer 2 its spikes one step later again.
    l1 = dense("fc1", [[1]], threshold=0, decay=NO_LEAK_LOIHI)
    l2 = dense("fc2", [[1]], threshold=0, decay=NO_LEAK_LOIHI)
    _, z, _ = run(net_of(LOIHI2, [l1, l2], T=5), pixel(1))
    assert z["z1"][:, 0, 0].tolist() == [0, 1, 1, 1, 1]
    assert z["z2"][:, 0, 0].tolist() == [0, 0, 1, 1, 1]
    profile = FPGA.replace(leak="loihi", reset="zero")
    _, z, _ = run(net_of(profile, [l1, l2], T=3), pixel(1))
    assert z["z1"][:, 0, 0].tolist() == [1, 1, 1]
    assert z["z2"][:, 0, 0].tolist() == [1, 1, 1]


def test_delay_events_and_bias_before_arrival():
    # delay 2: event frame t reaches the layer at t + 2; the bias (1) is added from t = 0
    profile = FPGA.replace(synaptic_delay=2)
    net = net_of(profile, [dense("fc", [[1]], threshold=100, bias=1, decay=0)], T=5, encoding="events")
    _, _, u = run(net, frames([10, 20, 30, 40, 50]))
    assert u["u1"][:, 0, 0].tolist() == [1, 1, 11, 21, 31]


# --------------------------------------------------------------------------------------------------
# synapses: conv, pooling, flatten order


def test_conv_and_sum_pool_by_hand():
    # kernel [[1, 2], [3, 4]] over [[1, 0, 2], [0, 1, 0], [3, 0, 1]]:
    # conv = [[1+4, 4+3], [2+9, 1+4]] = [[5, 7], [11, 5]], 2×2 sum-pool = 28
    w = np.array([[[[1, 2], [3, 4]]]], dtype=np.int8)
    x = np.array([[[[1, 0, 2], [0, 1, 0], [3, 0, 1]]]], dtype=np.uint8)
    for pool, expected in ((1, [[5, 7], [11, 5]]), (2, [[28]])):
        layer = IntegerLayer("conv", "conv", w, pool, 0, np.array([1000]), np.array([0]), 0, np.ones(1))
        shape = layer.output_shape((1, 3, 3))
        fc = dense("fc", np.zeros((1, int(np.prod(shape))), np.int8), threshold=5)
        net = net_of(FPGA, [layer, fc], T=1, input_shape=(1, 3, 3))
        _, _, u = run(net, x)
        assert u["u1"][0, 0, 0].tolist() == expected


def test_dense_flattens_channel_major():
    # input (C, H, W) = (2, 1, 2) = [[[1, 2]], [[3, 4]]] flattened C-major as torch: 1, 2, 3, 4
    layer = dense("fc", [[1, 10, 100, 1000]], threshold=10**6, decay=0)
    net = net_of(FPGA.replace(membrane_bits=24), [layer], T=1, input_shape=(2, 1, 2))
    x = np.array([1, 2, 3, 4], dtype=np.uint8).reshape(1, 2, 1, 2)
    _, _, u = run(net, x)
    assert u["u1"][0, 0, 0] == 4321


def test_prediction_ties_go_to_the_first_index():
    # three outputs with the same weights, u = 11, 12, 13, 14 (a spike every step): a 3-way tie
    layer = dense("fc", [[1], [1], [1]], threshold=10)
    res = simulate(net_of(FPGA, [layer], T=4), pixel(11))
    assert res.counts[0].tolist() == [4, 4, 4]
    assert res.predictions.tolist() == [0]
    assert results.predict(np.array([[1, 3, 3], [0, 0, 0]])).tolist() == [1, 0]


# --------------------------------------------------------------------------------------------------
# exactness of the float BLAS path, and agreement with the literal reference


def test_float_path_chosen_by_proven_bound():
    rng = np.random.default_rng(1)
    # 8-bit weights at ±127, fan-in 1000, pixels up to 255: 127·1000·255 ≈ 3.2e7 > 2^24 → float64
    w = np.full((2, 1000), 127, np.int16)
    w[1] = -127
    layer = IntegerLayer("fc", "dense", w, 1, 0, np.array([10**9] * 2), np.array([0, 0]), 0, np.ones(2))
    profile = FPGA.replace(weight_bits=8, membrane_bits=40)
    net = net_of(profile, [layer], T=1, input_shape=(1, 1, 1000))
    x = np.full((3, 1, 1, 1000), 255, np.uint8)
    x[1] = rng.integers(0, 256, size=(1, 1, 1000))
    res = simulate(net, x, record_membranes=True)
    assert res.layers[0].sum_dtype == "float64"
    assert res.layers[0].sum_bound == 127 * 1000 * 255
    exact = x.reshape(3, -1).astype(np.int64) @ w.T.astype(np.int64)
    assert np.array_equal(res.membranes["u1"][0], exact)
    # sums beyond int32 before a right shift: 127·255·70000 = 2,266,950,000 > 2^31, shifted by −16
    big = IntegerLayer(
        "fc", "dense", np.full((1, 70000), 127, np.int16), 1, -16, np.array([10**6]), np.array([0]), 0, np.ones(1)
    )
    net = net_of(FPGA.replace(weight_bits=8, membrane_bits=24, leak="shift"), [big], T=1, input_shape=(1, 1, 70000))
    res = simulate(net, np.full((1, 1, 1, 70000), 255, np.uint8), record_membranes=True)
    assert res.membranes["u1"][0, 0, 0] == (127 * 255 * 70000) >> 16 == 34590
    assert res.layers[0].state_dtype == "int64"
    # a 4-bit layer on spikes stays on float32 in the NumPy path, and runs uint8 × int8 → int32 in
    # onnxruntime's integer kernel otherwise (exact: 2·1·7 ≤ 2^15 − 1, 8·7 < 2^31); with the compiled
    # kernels on an AVX2 CPU its sums (≤ 56) accumulate in int16
    small = net_of(FPGA, [dense("fc", np.full((1, 8), 7), threshold=10)], T=1, input_shape=(1, 1, 8))
    ones = np.ones((1, 1, 1, 8), np.uint8)
    assert simulate(small, ones, kernel="numpy").layers[0].sum_dtype == "float32"
    stats = simulate(small, ones, accel=False).layers[0]
    assert (stats.sum_dtype, stats.sum_kernel) == ("int32", "onnxruntime")
    if layers.accel_wanted(True):
        from qsnn.sim import kernels_numba

        stats = simulate(small, ones, accel=True).layers[0]
        want = ("int16", "avx2") if kernels_numba.avx2() else ("int32", "onnxruntime")
        assert (stats.sum_dtype, stats.sum_kernel) == want


def _random_net(rng, profile, encoding, T, shape):
    wm = profile.weight_max

    def layer(name, kind, wshape, pool, shift, th):
        o = wshape[0]
        w = rng.integers(-wm, wm + 1, size=wshape).astype(np.int16)
        decay = int(rng.integers(0, 6)) if profile.leak == "shift" else int(rng.integers(0, 2**profile.leak_bits + 1))
        exp = int(rng.integers(0, 2)) if profile.weight_exp_bits else 0
        return IntegerLayer(
            name,
            kind,
            w,
            pool,
            shift,
            rng.integers(0, th, size=o).astype(np.int64),
            rng.integers(-th // 4, th // 4 + 1, size=o).astype(np.int64),
            decay,
            np.ones(o),
            exp,
        )

    c0, h, _ = shape
    l1 = layer("conv1", "conv", (3, c0, 3, 3), 2, int(rng.integers(-3, 3)), 2000)
    h1 = (h - 2) // 2
    l2 = layer("conv2", "conv", (4, 3, 3, 3), 2, int(rng.integers(-1, 4)), 300)
    h2 = (h1 - 2) // 2
    l3 = layer("fc", "dense", (5, 4 * h2 * h2), 1, int(rng.integers(-1, 4)), 300)
    return IntegerNetwork((l1, l2, l3), profile, shape, T, encoding, tuple("abcde"))


PROFILES = [
    FPGA,
    LOIHI2,
    FPGA.replace(overflow="wrap", membrane_bits=10),
    FPGA.replace(membrane_bits=9),
    FPGA.replace(leak="shift", reset="zero", synaptic_delay=2),
    LOIHI2.replace(membrane_bits=12),
    FPGA.replace(leak="loihi", overflow="wrap", membrane_bits=8, synaptic_delay=1),
]


@pytest.mark.parametrize("encoding", ["static", "events"])
@pytest.mark.parametrize("profile", PROFILES, ids=lambda p: f"{p.name}-{p.leak}-{p.overflow}-{p.membrane_bits}")
def test_engine_equals_literal_reference(profile, encoding, monkeypatch):
    """Random 3-layer networks (many saturations): the fast engine equals the literal reading.

    A small chunk budget forces several time chunks and im2col chunks per batch.
    """
    monkeypatch.setattr(layers, "CHUNK_BYTES", 4096)
    rng = np.random.default_rng(zlib.crc32(repr((profile, encoding)).encode()))
    for _ in range(3):
        T = int(rng.integers(1, 8))
        shape = (2, 14, 14) if encoding == "events" else (1, 12, 12)
        net = _random_net(rng, profile, encoding, T, shape)
        if encoding == "static":
            x = rng.integers(0, 256, size=(5, *shape)).astype(np.uint8)
        else:
            x = rng.poisson(0.7, size=(5, T, *shape)).astype(np.uint16)
        ref = simulate_reference(net, x)
        res = simulate(net, x, batch_size=2, record=True, record_membranes=True)
        for key in res.spikes:
            assert np.array_equal(res.spikes[key], ref[key]), key
        for key in res.membranes:
            assert np.array_equal(res.membranes[key], ref[key]), key
        assert np.array_equal(res.counts, ref["counts"])
        assert np.array_equal(res.predictions, ref["predictions"])
        for i, stats in enumerate(res.layers):
            assert stats.spikes_per_step.tolist() == ref[f"z{i + 1}"].reshape(T, -1).sum(1).tolist()
            assert stats.membrane_min == min(0, int(ref[f"u{i + 1}"].min()))
            assert stats.membrane_max == max(0, int(ref[f"u{i + 1}"].max()))


def test_batch_size_does_not_change_results():
    rng = np.random.default_rng(3)
    net = _random_net(rng, FPGA, "static", 5, (1, 12, 12))
    x = rng.integers(0, 256, size=(9, 1, 12, 12)).astype(np.uint8)
    a = simulate(net, x, batch_size=9, record=True)
    b = simulate(net, x, batch_size=2, record=True)
    for key in a.spikes:
        assert np.array_equal(a.spikes[key], b.spikes[key])
    for la, lb in zip(a.layers, b.layers):
        assert la.synops == lb.synops and la.saturation_events == lb.saturation_events
        assert np.array_equal(la.spikes_per_step, lb.spikes_per_step)


def test_synops_count_spikes_times_fanout():
    # 1×3×3 input into a 2-channel 2×2 conv (pool 1): the centre pixel reaches 4 outputs per
    # channel (fan-out 8), a corner 1 (fan-out 2), an edge 2 (fan-out 4)
    w = np.ones((2, 1, 2, 2), np.int8)
    conv = IntegerLayer("conv", "conv", w, 1, 0, np.array([1000, 1000]), np.zeros(2, np.int64), 0, np.ones(2))
    fc = dense("fc", np.zeros((1, 8), np.int8), threshold=5)
    net = net_of(FPGA, [conv, fc], T=3, input_shape=(1, 3, 3))
    x = np.zeros((1, 1, 3, 3), np.uint8)
    x[0, 0, 1, 1] = 9  # centre: 8 synapses
    x[0, 0, 0, 0] = 200  # corner: 2 synapses
    x[0, 0, 0, 1] = 1  # edge: 4 synapses
    res = simulate(net, x)
    assert res.layers[0].synops == 3 * (8 + 2 + 4)
    assert res.layers[1].synops == 0  # no spikes in layer 1
    assert res.layers[0].dense_macs == 3 * 2 * 2 * 2 * 4


@pytest.mark.parametrize("delay", [0, 2])
def test_synops_of_spike_layers_count_the_spikes_they_receive(delay):
    """A layer's synaptic operations are the spikes it receives (each step its input's spikes of d
    steps before: the last d steps' spikes are never delivered) times their fan-out: for a dense layer
    out_channels each, for a conv layer the outputs each input position reaches (here: no padding,
    stride 1, pool 1, so a 3×3 kernel on a 6×6 input reaches 1..9 positions per channel)."""
    rng = np.random.default_rng(40 + delay)
    profile = FPGA.replace(synaptic_delay=delay)
    conv1 = IntegerLayer(
        "c1", "conv", rng.integers(-3, 8, (4, 1, 3, 3)), 1, 0, np.full(4, 6), np.zeros(4, np.int64), 3000, np.ones(4)
    )
    conv2 = IntegerLayer(
        "c2", "conv", rng.integers(-3, 8, (3, 4, 3, 3)), 1, 0, np.full(3, 6), np.zeros(3, np.int64), 3000, np.ones(3)
    )
    fc = dense("fc", rng.integers(-3, 8, (5, 3 * 4 * 4)), threshold=4)
    net = net_of(profile, [conv1, conv2, fc], T=9, input_shape=(1, 8, 8))
    x = rng.integers(0, 256, (7, 1, 8, 8)).astype(np.uint8)
    res = simulate(net, x, record=True, batch_size=4, threads=2)
    z1, z2 = res.spikes["z1"][: 9 - delay], res.spikes["z2"][: 9 - delay]
    assert z1.sum() > 0 and z2.sum() > 0
    reach = np.array([1, 2, 3, 3, 2, 1])  # conv2's outputs (4 per axis) a 6-wide input row reaches
    fan = 3 * reach[:, None] * reach[None, :]
    assert res.layers[1].synops == int((z1.sum(axis=(0, 1, 2)) * fan).sum())
    assert res.layers[2].synops == int(z2.sum()) * 5
    ref = simulate(net, x, record=True, kernel="numpy", threads=1)
    assert [la.synops for la in ref.layers] == [la.synops for la in res.layers]


def test_bad_inputs_are_refused():
    net = net_of(FPGA, [dense("fc", [[1]], threshold=10)], T=2)
    with pytest.raises(ValueError, match=r"static images \(N, 1, 1, 1\)"):
        simulate(net, np.zeros((2, 1, 2, 2), np.uint8))
    with pytest.raises(ValueError, match="integers"):
        simulate(net, np.zeros((2, 1, 1, 1), np.float32))
    ev = net_of(FPGA, [dense("fc", [[1]], threshold=10)], T=3, encoding="events")
    with pytest.raises(ValueError, match="T=3 steps but the input has 2 frames"):
        simulate(ev, np.zeros((1, 2, 1, 1, 1), np.uint16))
    bad = net_of(FPGA, [dense("fc", [[1]], threshold=10, decay=5000)], T=2)
    with pytest.raises(ValueError, match="leak constant 5000"):
        simulate(bad, pixel(1))


def test_engine_never_imports_torch():
    code = (
        "import sys, numpy as np\n"
        "from qsnn.network import IntegerLayer, IntegerNetwork\n"
        "from qsnn.profiles import FPGA\n"
        "import qsnn.sim, qsnn.sim.engine, qsnn.sim.report, qsnn.sim.cli, qsnn.export.compile\n"
        "w = np.ones((2, 1, 3, 3), np.int8)\n"
        "conv = IntegerLayer('c', 'conv', w, 2, 0, np.array([5, 5]), np.zeros(2, np.int64), 3000, np.ones(2))\n"
        "fc = IntegerLayer('f', 'dense', np.ones((3, 8), np.int8), 1, 0, np.array([1]*3), np.zeros(3, np.int64), 3000, np.ones(3))\n"
        "net = IntegerNetwork((conv, fc), FPGA, (1, 6, 6), 4, 'static', ('a', 'b', 'c'))\n"
        "r = qsnn.sim.simulate(net, np.full((2, 1, 6, 6), 9, np.uint8), record=True, progress=True)\n"
        "qsnn.sim.report.hardware_figures(net, r)\n"
        "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith('torch'))\n"
        "print('ok', r.predictions.tolist())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok")


def test_sim_imports_neither_export_nor_torch():
    """sim/ needs numpy only: validation takes the other evaluations as functions (qsnn-sim, a command
    line front end, is the one module of sim/ that may reach into export/, lazily)."""
    import re
    from pathlib import Path

    sim = Path(__file__).resolve().parents[1] / "sim"
    for path in sorted(sim.glob("*.py")):
        if path.name == "cli.py":
            continue
        text = path.read_text()
        assert not re.search(r"^\s*(from|import)\s+(qsnn\.export|torch)\b", text, re.M), path.name
        assert not re.search(r"^\s*from\s+\.\.export\b", text, re.M), path.name
    code = (
        "import sys, qsnn.sim, qsnn.sim.engine, qsnn.sim.reference, qsnn.sim.report, qsnn.sim.validate; "
        "print(sorted(m for m in sys.modules if m.startswith(('torch', 'qsnn.export'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------------------------------
# the integer kernel (onnxruntime) against the NumPy reference path; threads; the layer cache


def _same_result(a, b):
    for key in a.spikes:
        assert np.array_equal(a.spikes[key], b.spikes[key]), key
    if a.membranes is not None:
        for key in a.membranes:
            assert np.array_equal(a.membranes[key], b.membranes[key]), key
    assert np.array_equal(a.counts, b.counts)
    for la, lb in zip(a.layers, b.layers):
        for field in (
            "saturation_low",
            "saturation_high",
            "membrane_min",
            "membrane_max",
            "current_min",
            "current_max",
            "synops",
            "dense_macs",
        ):
            assert getattr(la, field) == getattr(lb, field), (la.name, field)
        assert np.array_equal(la.spikes_per_step, lb.spikes_per_step)


def test_integer_kernel_equals_numpy_path_on_real_images(synthetic_onnx, tmp_path):
    """A spiking int4 network compiled from its QONNX export, the 500 real mnist5k test images:
    the integer kernel (conv2 and fc on spikes, conv1 on uint8 pixels) gives the NumPy path's
    integers, every spike and membrane, with any number of threads."""
    from fixtures import synthetic_checkpoint

    from qsnn.data import load_split
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.qonnx_float import export_float
    from qsnn.profiles import get_profile

    x = load_split("mnist5k", "test").x
    # loihi2's fixed current shift (6) caps θ at 2^17 vth units of the weight grid: θ 2.04 of the
    # fixture does not fit these small untrained weights, θ 1.0 does
    low_theta = export_float(synthetic_checkpoint(tmp_path / "best.pt", threshold=1.0), tmp_path / "model.onnx")
    for profile, model in (("fpga", synthetic_onnx), ("loihi2", low_theta)):
        net, _ = compile_qonnx(model, get_profile(profile), allow_saturation=True)
        ref = simulate(net, x, kernel="numpy", threads=1, record=True, record_membranes=True, batch_size=200)
        res = simulate(net, x, record=True, record_membranes=True, threads=3, batch_size=200)
        assert all(s.sum_kernel in INTEGER_KERNELS for s in res.layers[1:])
        assert all(s.sum_kernel == "numpy" for s in ref.layers)
        assert sum(int(s.spikes_per_step.sum()) for s in ref.layers[1:]) > 0, "a silent network proves nothing"
        _same_result(res, ref)


@pytest.mark.parametrize(
    "profile", [FPGA, LOIHI2, FPGA.replace(overflow="wrap", membrane_bits=10)], ids=["fpga", "loihi2", "wrap"]
)
def test_kernels_and_threads_agree_on_random_networks(profile, monkeypatch):
    monkeypatch.setattr(engine, "MIN_PIECE", 4)  # small pieces: the threads really split each batch
    rng = np.random.default_rng(7)
    for encoding in ("static", "events"):
        T = 6
        shape = (2, 14, 14) if encoding == "events" else (1, 12, 12)
        net = _random_net(rng, profile, encoding, T, shape)
        x = (
            rng.integers(0, 256, size=(70, *shape)).astype(np.uint8)
            if encoding == "static"
            else rng.poisson(0.7, size=(70, T, *shape)).astype(np.uint16)
        )
        ref = simulate(net, x, kernel="numpy", threads=1, record=True, record_membranes=True)
        for threads in (1, 2, 4):
            res = simulate(net, x, threads=threads, batch_size=33, record=True, record_membranes=True)
            assert INTEGER_KERNELS & {s.sum_kernel for s in res.layers}
            _same_result(res, ref)


def test_an_error_in_any_piece_reaches_the_caller_and_every_piece_runs_once(monkeypatch):
    """Pieces over the worker threads: a piece that fails (the first or the last) raises from simulate,
    and with no error each piece of the batch runs exactly once."""
    monkeypatch.setattr(engine, "MIN_PIECE", 4)
    monkeypatch.setattr(engine, "MIN_PIECE_ACCEL", 4)
    monkeypatch.setattr(engine, "PIECE_BYTES", 1)  # pieces of 4 samples: more pieces than threads
    rng = np.random.default_rng(3)
    net = _random_net(rng, FPGA, "static", 4, (1, 12, 12))
    x = rng.integers(0, 256, size=(40, 1, 12, 12)).astype(np.uint8)
    original = engine._run_batch
    for threads in (2, 3):
        seen: list[int] = []

        def record(*args, seen=seen):
            seen.append(args[-2])  # the piece's first sample (b0)
            original(*args)

        monkeypatch.setattr(engine, "_run_batch", record)
        simulate(net, x, threads=threads, batch_size=40)
        assert sorted(seen) == list(range(0, 40, 4))
        for bad in (0, max(seen)):  # a worker's piece, the calling thread's piece
            started: list[int] = []
            ended: list[int] = []

            def fail(*args, bad=bad, started=started, ended=ended):
                started.append(args[-2])
                try:
                    if args[-2] == bad:
                        raise RuntimeError(f"piece at {bad} failed")
                    original(*args)
                finally:
                    ended.append(args[-2])

            monkeypatch.setattr(engine, "_run_batch", fail)
            with pytest.raises(RuntimeError, match=f"piece at {bad} failed"):
                simulate(net, x, threads=threads, batch_size=40)
            # when simulate raises, no piece is still running, and none starts later
            at_raise = sorted(started)
            assert sorted(ended) == at_raise
            time.sleep(0.05)
            assert sorted(started) == at_raise


def test_integer_kernel_only_where_its_bound_holds():
    # 8-bit weights ±127 on pixels: 2·255·127 > 2^15 − 1 (an AVX2 int16 pair could saturate): NumPy;
    # the same layer on inputs ≤ 127 (bound 2^7 − 1: 2·127·127 = 32,258): onnxruntime, and the sums are exact
    w = np.array([[127, -127, 127, 127]], np.int16)
    layer = IntegerLayer("fc", "dense", w, 1, 0, np.array([10**9]), np.array([0]), 0, np.ones(1))
    net = net_of(FPGA.replace(weight_bits=8, membrane_bits=32), [layer], T=1, input_shape=(1, 1, 4))
    hi = np.array([[[[255, 0, 255, 255]]]], np.uint8)
    res = simulate(net, hi, record_membranes=True)
    assert res.layers[0].sum_kernel == "numpy"
    assert res.membranes["u1"][0, 0, 0] == 3 * 127 * 255
    lo = np.array([[[[100, 3, 126, 127]]]], np.uint8)
    res = simulate(net, lo, record_membranes=True)
    assert res.layers[0].sum_kernel == "onnxruntime"
    assert res.membranes["u1"][0, 0, 0] == 127 * (100 - 3 + 126 + 127)
    with pytest.raises(ValueError, match="kernel must be one of"):
        simulate(net, lo, kernel="gpu")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        simulate(net, lo, threads=0)


def test_compiled_layers_are_cached_per_network_content():
    rng = np.random.default_rng(11)
    net = _random_net(rng, FPGA, "static", 3, (1, 12, 12))
    first = layers.compile_layers(net, 255)
    assert layers.compile_layers(net, 200) is first  # same bound 2^8 − 1: the same layers
    # a network with other weights (same shapes) never gets the stale layers
    w = net.layers[1].weight.copy()
    w[0, 0, 0, 0] = -w[0, 0, 0, 0] if w[0, 0, 0, 0] else 1
    other = IntegerNetwork(
        (net.layers[0], IntegerLayer(**{**net.layers[1].__dict__, "weight": w}), net.layers[2]),
        net.profile,
        net.input_shape,
        net.num_steps,
        net.encoding,
        net.classes,
    )
    assert layers.compile_layers(other, 255) is not first
    x = rng.integers(0, 256, size=(4, 1, 12, 12)).astype(np.uint8)
    ref_other = simulate_reference(other, x)
    assert np.array_equal(simulate(other, x, record=True).spikes["z2"], ref_other["z2"])


def test_statistics_off_keeps_the_integers():
    rng = np.random.default_rng(5)
    net = _random_net(rng, FPGA.replace(membrane_bits=9), "static", 5, (1, 12, 12))
    x = rng.integers(0, 256, size=(6, 1, 12, 12)).astype(np.uint8)
    full = simulate(net, x, record=True)
    bare = simulate(net, x, record=True, stats=False)
    for key in full.spikes:
        assert np.array_equal(full.spikes[key], bare.spikes[key])
    assert np.array_equal(full.counts, bare.counts)
    assert [s.saturation_events for s in bare.layers] == [s.saturation_events for s in full.layers]
    assert all(s.synops == 0 and not s.spikes_per_step.any() for s in bare.layers)


# --------------------------------------------------------------------------------------------------
# the engine's shortcuts against its NumPy reference path (which scans every neuron, folds every pool)


_SATURATE, _SHIFT_ZERO = FPGA.replace(membrane_bits=9), FPGA.replace(leak="shift", reset="zero", synaptic_delay=2)
_WRAP = FPGA.replace(leak="loihi", overflow="wrap", membrane_bits=8, synaptic_delay=1)


@pytest.mark.parametrize(
    "profile, T",
    [(_SATURATE, 7), (LOIHI2, 7), (_SHIFT_ZERO, 7), (_WRAP, 7), (_SATURATE, 40), (_SHIFT_ZERO, 70), (_WRAP, 70)],
    ids=["saturate", "loihi2", "shift-zero-delay", "wrap-delay", "saturate-T40", "shift-zero-T70", "wrap-T70"],
)
def test_static_layer_table_equals_scanning_every_neuron(profile, T, monkeypatch):
    """A static first layer is looked up from the table of every (current, channel) trajectory
    (StaticTable): every spike, membrane and statistic equals the scan of every neuron, with the
    table over the proven current range, with a table over the currents seen that a later batch
    widens, and with no table at all (too big: the layer is scanned); its steps in 32-bit words
    (T ≤ 32), one 64-bit word, and two (T > 64; loihi2's 24-bit membranes make a table of
    millions of cells, which only T = 7 keeps short)."""
    rng = np.random.default_rng(18)  # a seed whose layers spike under every profile here
    net = _random_net(rng, profile, "static", T, (1, 12, 12))
    x = rng.integers(0, 256, size=(40, 1, 12, 12)).astype(np.uint8)
    ref = simulate(net, x, kernel="numpy", threads=1, record=True, record_membranes=True)
    assert ref.layers[0].spikes_per_step.sum() > 0 and ref.layers[1].spikes_per_step.sum() > 0
    if profile.membrane_bits == 9:
        assert ref.layers[0].saturation_events > 0, "the weighted saturation counts must be exercised"
    first = layers.compile_layers(net, 255)[0]
    proven = (2 * first.cur_limit + 1) * first.out_nhwc[-1] * net.num_steps
    monkeypatch.setattr(engine, "MIN_PIECE", 4)  # pieces over both threads share the table
    for cells, built in ((proven, "proven"), (proven - 1, "seen"), (1, None)):
        monkeypatch.setattr(layers, "TABLE_CELLS", cells)
        layers._COMPILED.clear()
        small = simulate(net, x[:3], record=True, record_membranes=True, threads=1)
        res = simulate(net, x, record=True, record_membranes=True, threads=2, batch_size=16)
        tables = layers.compile_layers(net, 255)[0]._tables
        if built is None:
            assert not tables
        else:
            (table,) = tables.values()
            limit = layers.compile_layers(net, 255)[0].cur_limit
            assert (table.lo, table.hi) == (-limit, limit) if built == "proven" else table.hi - table.lo < 2 * limit
        _same_result(res, ref)
        for key in small.spikes:
            assert np.array_equal(small.spikes[key], ref.spikes[key][:, :3]), key


def test_pooled_spike_layer_sums_the_pool_first():
    """A pooled conv layer on spikes runs its own k×k kernel at stride p on the p×p box sums of its
    input in the integer kernel (k²/(k+p−1)² of the folded kernel's multiplies); its currents equal
    the NumPy path's folded kernel, also where every input spikes (box sums of p² everywhere). On
    pixels the box sums would pass 255: the folded kernel runs."""
    rng = np.random.default_rng(17)
    net = _random_net(rng, FPGA, "static", 4, (1, 12, 12))
    fast, ref = layers.compile_layers(net, 255), layers.compile_layers(net, 255, kernel="numpy")
    assert fast[0].box_matmul is None and fast[0].int_matmul is not None  # 2²·255 > 255
    assert fast[1].box_matmul is not None and ref[1].box_matmul is None
    conv2 = fast[1]
    z = rng.random((9, *conv2.in_shape[1:], conv2.in_shape[0])) < 0.3
    z[0] = True
    z[1] = False
    for steps in (1, 3):
        got, rng_got, _ = conv2.currents(z, track=True, steps=steps)
        want, rng_want, _ = ref[1].currents(z, track=True, steps=steps)
        assert len(got) == steps and rng_got == rng_want
        for a, b in zip(got, want):
            assert a.dtype == b.dtype and np.array_equal(a, b)


@pytest.mark.parametrize("in_max, rows, units", [(1, 1000, 64), (3, 700, 24), (255, 50, 16), (1, 300, 13)])
def test_column_sums_add_up_exactly(in_max, rows, units):
    """Σ over rows by carry-free byte lanes, also with every entry at its bound (the largest lane sums)."""
    rng = np.random.default_rng(in_max + rows)
    for x in (
        rng.integers(0, in_max + 1, size=(rows, units)).astype(np.uint8),
        np.full((rows, units), in_max, np.uint8),
    ):
        assert np.array_equal(layers.column_sums(x, in_max), x.sum(axis=0, dtype=np.int64))


def test_compiled_layers_follow_the_networks_arrays():
    """The compiled layers are cached per network (a batch-1 call does not rebuild them), keyed on its
    content: weights, thresholds or biases changed in place after a run give the changed network's
    integers at the next call, as a fresh copy of it does."""
    import dataclasses

    rng = np.random.default_rng(21)
    net = _random_net(rng, FPGA, "static", 6, (1, 12, 12))
    x = rng.integers(0, 256, size=(5, 1, 12, 12)).astype(np.uint8)
    before = simulate(net, x, record=True, record_membranes=True)
    assert layers.compile_layers(net, 255) is layers.compile_layers(net, 255)  # cached
    changes = (("weight", lambda a: np.negative(a, out=a)), ("threshold", lambda a: a.__ifloordiv__(2)))
    for attr, change in changes:
        for layer in net.layers:
            change(getattr(layer, attr))
        after = simulate(net, x, record=True, record_membranes=True)
        fresh = dataclasses.replace(
            net, layers=tuple(dataclasses.replace(la, **{attr: getattr(la, attr).copy()}) for la in net.layers)
        )
        _same_result(after, simulate(fresh, x, record=True, record_membranes=True, kernel="numpy", threads=1))
    assert any(not np.array_equal(before.spikes[k], after.spikes[k]) for k in before.spikes)
