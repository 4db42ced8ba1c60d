"""The integer arithmetic (qsnn.arith) and every implementation of the integer LIF step held equal to it.

:func:`qsnn.arith.int_lif_step` is the reference step (the literal simulator
:func:`qsnn.sim.reference.simulate_reference` calls it). Three independent implementations must
give the same spike trains and membranes, ``array_equal`` at every step of every layer, on real
mnist5k images:

* the fast NumPy engine (:func:`qsnn.sim.simulate`),
* the PyTorch integer mode (:func:`qsnn.export.integer_torch.run_integer_torch`),
* the integer QONNX graph (:func:`qsnn.export.qonnx_int.export_integer`, run by onnxruntime).

Hand-made networks of every profile variant run in the fast tier; the trained fixture model, under
the ``fpga`` and ``loihi2`` profiles, in the full suite.
"""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch

from qsnn import arith
from qsnn.arith import IntLIFState, int_lif_step
from qsnn.data import load_split
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import FPGA, LOIHI2
from qsnn.sim import simulate
from qsnn.sim.reference import simulate_reference

KEYS = ("z1", "z2", "z3", "u1", "u2", "u3")


# --------------------------------------------------------------------------------------------------
# The primitives, by hand


def test_shl_floors_right_shifts():
    assert arith.shl(np.array([5, 4, 3, -1, -4, -5, -8]), -2).tolist() == [1, 1, 0, -1, -1, -2, -2]
    assert arith.shl(np.array([3, -3]), 2).tolist() == [12, -12]


def test_leak_kinds():
    shift = FPGA.replace(leak="shift")
    loihi = FPGA.replace(leak="loihi")
    assert arith.leak(np.array([-7, 7, -3]), 2048, FPGA).tolist() == [-4, 3, -2]  # floor(u/2)
    assert arith.leak(np.array([-7, 7, -3]), 2048, loihi).tolist() == [-3, 3, -1]  # toward zero
    assert arith.leak(np.array([-7, 16, -3]), 3, shift).tolist() == [-6, 14, -2]  # u − floor(u/8)
    assert arith.leak(np.array([123, -5]), 4096, FPGA).tolist() == [123, -5]  # m = 2^12: β = 1


def test_overflow_saturates_or_wraps():
    p8 = FPGA.replace(membrane_bits=8)
    assert arith.overflow(np.array([-200, -128, 127, 150]), p8).tolist() == [-128, -128, 127, 127]
    assert arith.overflow(np.array([-200, -128]), p8.replace(symmetric_clip=True)).tolist() == [-127, -127]
    wrap = p8.replace(overflow="wrap", symmetric_clip=True)  # wrap ignores symmetric_clip
    assert arith.overflow(np.array([128, 150, -129, -200, 127]), wrap).tolist() == [-128, -106, 127, 56, 127]
    assert arith.overflow_range(p8) == (-128, 127) and arith.overflow_range(wrap) == (-128, 127)
    assert arith.overflow_range(p8.replace(symmetric_clip=True)) == (-127, 127)
    assert arith.wrap_range(16) == (-32768, 32767)


def test_current_register_wraps_once_as_lava():
    # Lava's LIF (24 bits): u − 2^24 where u > 2^23, u + 2^24 where u ≤ −2^23, once (not modulo)
    c = np.array([2**23, 2**23 + 5, -(2**23) + 1, -(2**23), 2**25, -(2**25), 0])
    assert arith.wrap_current(c, 24).tolist() == [
        2**23,
        -(2**23) + 5,
        -(2**23) + 1,
        2**23,
        2**25 - 2**24,
        -(2**25) + 2**24,
        0,
    ]
    # in the step: the register comes before the bias (Lava adds bias to v, not to u)
    layer = _neuron(2**30, bias=3, shift=6, leak_const=4095)
    assert _run_steps(layer, LOIHI2.replace(membrane_bits=40), [(2**23 >> 6) + 1])[0] == [2**23 + 64 - 2**24 + 3]


def test_twos_complement_codes_round_trip():
    values = np.array([-8, -1, 0, 1, 7])
    codes = arith.to_twos_complement(values, 4)
    assert codes.tolist() == [8, 15, 0, 1, 7]
    assert arith.from_twos_complement(codes, 4).tolist() == values.tolist()
    with pytest.raises(ValueError, match="4-bit"):
        arith.to_twos_complement(np.array([8]), 4)


@pytest.mark.parametrize("leak", ["mul", "shift", "loihi"])
def test_leak_constant_realises_beta(leak):
    profile = FPGA.replace(leak=leak)
    for beta in (0.0, 0.5, 0.75, 0.921, 0.99, 1.0):
        const = arith.leak_const_of(beta, profile)
        realised = arith.effective_beta(const, profile)
        tolerance = 2.0**-profile.leak_bits if leak != "shift" else max(abs(1 - beta), 2.0**-profile.membrane_bits)
        assert abs(realised - beta) <= tolerance, (beta, const, realised)
    assert arith.leak_const_of(0.5, FPGA) == 2048 and arith.leak_const_of(0.5, FPGA.replace(leak="loihi")) == 2048
    assert arith.leak_const_of(0.875, FPGA.replace(leak="shift")) == 3


# --------------------------------------------------------------------------------------------------
# int_lif_step: by hand, and side by side with the float step


def _neuron(theta, bias=0, shift=0, leak_const=4096, weight_exp=0):
    return IntegerLayer(
        "n",
        "dense",
        np.ones((1, 1), np.int8),
        1,
        shift,
        np.array([theta]),
        np.array([bias]),
        leak_const,
        np.ones(1),
        weight_exp,
    )


def _run_steps(layer, profile, accs):
    state, us, zs = IntLIFState(np.zeros((1, 1), np.int64)), [], []
    for acc in accs:
        z, state = int_lif_step(np.array([[acc]]), state, layer, profile)
        us.append(int(state.u[0, 0]))
        zs.append(int(z[0, 0]))
    return us, zs


def test_int_lif_step_by_hand():
    # θ = 10, no leak, current 7: subtract 7, 14*, 11*, 8, 15*; zero reset 7, 14*, 7, 14*, 7
    assert _run_steps(_neuron(10), FPGA, [7] * 5) == ([7, 14, 11, 8, 15], [0, 1, 1, 0, 1])
    assert _run_steps(_neuron(10), FPGA.replace(reset="zero"), [7] * 5) == ([7, 14, 7, 14, 7], [0, 1, 0, 1, 0])
    # m = 2048 (β = 0.5), s = −1, b = 1, θ = 5, acc = 6: 4, 6*, 2, 5 (= θ: no spike), 6*
    assert _run_steps(_neuron(5, bias=1, shift=-1, leak_const=2048), FPGA, [6] * 5) == (
        [4, 6, 2, 5, 6],
        [0, 1, 0, 0, 1],
    )
    # a negative exponent floors the sum before the shift: shl(shl(−5, −1), 1) = −6
    assert _run_steps(_neuron(100, shift=1, leak_const=0, weight_exp=-1), FPGA.replace(weight_bits=8), [-5]) == (
        [-6],
        [0],
    )
    # 8-bit saturation holds the rail, wrap jumps to the other one
    p8 = FPGA.replace(membrane_bits=8)
    assert _run_steps(_neuron(200), p8, [100, 100])[0] == [100, 127]
    assert _run_steps(_neuron(200), p8.replace(overflow="wrap"), [100, 100])[0] == [100, -56]


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_int_lif_step_equals_the_float_step_where_floats_are_exact(reset):
    """No leak (β = 1, m = 2^F), shift 0, integer currents: train.lif.lif_step in float32 is exact
    on these small integers, so both steps give the same membranes and spikes."""
    from qsnn.train.lif import LIFState, lif_step

    rng = np.random.default_rng(0)
    theta = rng.integers(1, 40, size=6)
    layer = IntegerLayer("fc", "dense", np.ones((6, 1), np.int8), 1, 0, theta, np.zeros(6, np.int64), 4096, np.ones(6))
    profile = FPGA.replace(reset=reset)
    accs = rng.integers(-20, 30, size=(25, 3, 6))
    state, fstate = IntLIFState(np.zeros((3, 6), np.int64)), LIFState(torch.zeros(3, 6))
    beta, ftheta = torch.tensor(1.0), torch.from_numpy(theta.astype(np.float32))
    for acc in accs:
        z, state = int_lif_step(acc, state, layer, profile)
        fz, fstate = lif_step(torch.from_numpy(acc.astype(np.float32)), fstate, beta, ftheta, 1.0, reset)
        assert np.array_equal(state.u, fstate.u.numpy().astype(np.int64))
        assert np.array_equal(z, fz.numpy().astype(np.uint8))


def test_membrane_bound_holds_every_input_sequence():
    """The compiler's interval bound contains the membrane of every input sequence (brute force)."""
    from qsnn.export.compile import membrane_bound

    theta, bias, T = np.array([9]), np.array([-1]), 4
    sequences = np.array(list(itertools.product(range(-5, 13), repeat=T)), dtype=np.int64)  # (18^T, T)
    for profile, leak_const in (
        (FPGA, 2900),
        (FPGA.replace(reset="zero"), 4096),
        (FPGA.replace(leak="loihi"), 700),
        (FPGA.replace(leak="shift"), 2),
    ):
        lo, hi = membrane_bound(np.array([12]), np.array([-5]), -1, bias, theta, leak_const, profile, T)
        u = np.zeros(len(sequences), np.int64)
        low, high = 0, 0
        for t in range(T):
            u = arith.pre_overflow(u, arith.shl(sequences[:, t], -1) + bias, theta, leak_const, profile)
            low, high = min(low, int(u.min())), max(high, int(u.max()))
        assert lo[0] <= low and high <= hi[0], (profile.leak, profile.reset, lo, hi, low, high)


# --------------------------------------------------------------------------------------------------
# The independent implementations, on real images


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_split("mnist5k", "test").x[:12]


def mnist_net(profile, seed: int, T: int = 10, shifts: tuple[int, int, int] | None = None) -> IntegerNetwork:
    """A QSNN-shaped network for 28×28 images (conv 5×5 + pool 2, conv 5×5 + pool 2, dense) with random
    integers of the profile's widths, thresholds set so that every layer spikes on mnist digits
    (``shifts``: the layers' current shifts instead of the defaults)."""
    rng = np.random.default_rng(seed)
    wmax, ts = profile.weight_max, profile.threshold_shift
    leak_const = {"mul": 3700, "shift": 3, "loihi": 400}[profile.leak]
    s1, s2, s3 = shifts or ((-1, 2, 2) if ts else (-3, 0, 0))
    specs = [
        ("conv1", "conv", (4, 1, 5, 5), 2, s1, (200, 900)),
        ("conv2", "conv", (6, 4, 5, 5), 2, s2, (20, 120)),
        ("fc", "dense", (5, 96), 1, s3, (5, 60)),
    ]
    layers = []
    for name, kind, shape, pool, shift, (t_lo, t_hi) in specs:
        out = shape[0]
        t_hi = min(t_hi, (profile.membrane_max >> ts) // 2)  # below the rail of a narrow membrane
        theta = rng.integers(min(t_lo, t_hi // 2), t_hi, size=out).astype(np.int64) << ts
        layers.append(
            IntegerLayer(
                name,
                kind,
                rng.integers(-wmax, wmax + 1, size=shape).astype(np.int16),
                pool,
                shift,
                theta,
                rng.integers(-20, 21, size=out).astype(np.int64) << (ts // 2),
                leak_const,
                np.full(out, 0.01),
            )
        )
    return IntegerNetwork(tuple(layers), profile, (1, 28, 28), T, "static", tuple("abcde"))


VARIANTS = {
    "fpga": FPGA,
    "saturate-narrow": FPGA.replace(membrane_bits=10),
    "wrap": FPGA.replace(membrane_bits=10, overflow="wrap"),
    "shift-leak-zero-reset-delay-2": FPGA.replace(leak="shift", reset="zero", synaptic_delay=2),
    "loihi-leak-symmetric": FPGA.replace(leak="loihi", membrane_bits=12, symmetric_clip=True),
    "loihi2": LOIHI2,
}


def assert_equal_to_reference(net: IntegerNetwork, x: np.ndarray, tmp_path, name: str) -> dict:
    from qsnn.export.integer_torch import run_integer_torch
    from qsnn.export.qonnx_int import export_integer
    from qsnn.export.runtime import run_integer_onnx

    ref = simulate_reference(net, x)
    engine = simulate(net, x, batch_size=5, record=True, record_membranes=True)
    implementations = {
        "engine": {**engine.spikes, **engine.membranes},
        "integer_torch": run_integer_torch(net, x, record=True, batch_size=5),
        "qonnx_int": run_integer_onnx(export_integer(net, tmp_path / f"{name}.onnx"), x, engine="ort", record=True),
    }
    for impl, got in implementations.items():
        for key in KEYS:
            assert got[key].shape == ref[key].shape, (impl, key)
            assert np.array_equal(got[key], ref[key]), (impl, key)
    return ref


@pytest.mark.parametrize("name", list(VARIANTS))
def test_independent_implementations_equal_int_lif_step(name, images, tmp_path):
    profile = VARIANTS[name]
    net = mnist_net(profile, seed=len(name))
    ref = assert_equal_to_reference(net, images, tmp_path, name)
    for i in (1, 2, 3):
        assert ref[f"z{i}"].any(), f"layer {i} never spikes: the comparison would be empty"
    if name == "saturate-narrow":
        assert ref["u1"].max() == profile.membrane_max or ref["u1"].min() == profile.membrane_min


def test_independent_implementations_wrap_the_current_register(images, tmp_path):
    """Loihi 2 at its fixed shift 6: conv1's currents leave the 24-bit register and wrap (as Lava's u does);
    every implementation wraps them the same way, and the wrap changes what the network does."""
    net = mnist_net(LOIHI2, seed=3, shifts=(6, 6, 6))
    ref = assert_equal_to_reference(net, images, tmp_path, "wrap")
    engine = simulate(net, images)
    assert engine.layers[0].current_wraps > 0 and engine.layers[0].current_max > 2**23
    unwrapped = simulate_reference(dataclasses.replace(net, profile=LOIHI2.replace(current_bits=0)), images)
    assert not np.array_equal(unwrapped["u1"], ref["u1"])
    for i in (1, 2, 3):
        assert ref[f"z{i}"].any(), f"layer {i} never spikes: the comparison would be empty"


@pytest.mark.parametrize("profile", ["fpga", "loihi2"])
def test_independent_implementations_equal_int_lif_step_on_a_trained_model(float_onnx, images, tmp_path, profile):
    from qsnn.export.compile import compile_qonnx
    from qsnn.profiles import get_profile

    net, _ = compile_qonnx(float_onnx, get_profile(profile), allow_saturation=True)
    ref = assert_equal_to_reference(net, images, tmp_path, profile)
    assert ref["z3"].any()
