"""Integer overflow: saturation is counted per layer and reported; wrap-around is two's complement.

Hand-built networks, values computed by hand, and an independent oracle: the membrane register of
the hardware modelled with C integer types (``ctypes.c_int8`` / ``c_int16`` truncate to their width
exactly as a two's-complement adder does), checked against the engine on random current sequences.
"""

from __future__ import annotations

import ctypes
import json

import numpy as np
import pytest
from click.testing import CliRunner
from faults_helpers import fuzz
from hypothesis import given
from hypothesis import strategies as st

from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import FPGA
from qsnn.sim import simulate
from qsnn.sim.report import hardware_figures

NO_LEAK = 1 << FPGA.leak_bits  # m = 2^12: β = 1


def dense(name, w, threshold, shift=0, bias=0, decay=NO_LEAK):
    w = np.asarray(w, dtype=np.int8)
    o = w.shape[0]
    return IntegerLayer(
        name, "dense", w, 1, shift, np.full(o, threshold, np.int64), np.full(o, bias, np.int64), decay, np.ones(o)
    )


def relay_then_push(profile, T=4):
    """fc1 relays the input as one spike per step (θ = 10, input 20: u = 20, 30, 40, ... always > θ);
    fc2 pushes ±7 << 4 = ±112 per spike into two neurons that never fire (θ = 127)."""
    layers = (dense("fc1", [[1]], threshold=10), dense("fc2", [[7], [-7]], threshold=127, shift=4))
    return IntegerNetwork(layers, profile, (1, 1, 1), T, "static", ("up", "down"))


def test_saturation_is_counted_in_the_layer_that_saturates():
    net = relay_then_push(FPGA.replace(membrane_bits=8))
    res = simulate(net, np.full((1, 1, 1, 1), 20, np.uint8), record_membranes=True)
    assert res.membranes["u1"][:, 0, 0].tolist() == [20, 30, 40, 50]  # fc1: no overflow
    assert res.membranes["u2"][:, 0].tolist() == [[112, -112], [127, -128], [127, -128], [127, -128]]
    fc1, fc2 = res.layers
    assert (fc1.saturation_low, fc1.saturation_high) == (0, 0)
    assert (fc2.saturation_low, fc2.saturation_high) == (3, 3)  # t = 1, 2, 3 on each rail
    hw = hardware_figures(net, res)
    assert [(layer["name"], layer["saturation_low"], layer["saturation_high"]) for layer in hw["layers"]] == [
        ("fc1", 0, 0),
        ("fc2", 3, 3),
    ]
    assert hw["total"]["saturation_events"] == 6
    assert hw["layers"][1]["membrane_min"] == -128 and hw["layers"][1]["membrane_max"] == 127


def test_wrap_counts_and_wraps_in_the_same_layer():
    # fc2 with wrap: up 112, 224-256 = -32, 80, 192-256 = -64; down -112, 32, -80, 64
    net = relay_then_push(FPGA.replace(membrane_bits=8, overflow="wrap"))
    res = simulate(net, np.full((1, 1, 1, 1), 20, np.uint8), record_membranes=True)
    assert res.membranes["u2"][:, 0].tolist() == [[112, -112], [-32, 32], [80, -80], [-64, 64]]
    assert (res.layers[1].saturation_low, res.layers[1].saturation_high) == (2, 2)
    assert (res.layers[0].saturation_low, res.layers[0].saturation_high) == (0, 0)


@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
@pytest.mark.parametrize("bits", [8, 16])
def test_exactly_at_both_rails(overflow, bits):
    """u sits on a rail, then one more unit pushes it past: clamp stays there, wrap jumps to the other rail."""
    hi, lo = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    profile = FPGA.replace(membrane_bits=bits, overflow=overflow)
    # currents +hi then +1 (from the two input channels: c = x_up − x_down), threshold out of reach
    layer = IntegerLayer(
        "fc", "dense", np.array([[1, -1]], np.int8), 1, 0, np.array([hi]), np.array([0]), NO_LEAK, np.ones(1)
    )
    net = IntegerNetwork((layer,), profile, (2, 1, 1), 2, "events", ("only",), input_max=65535)

    def run(currents):
        x = np.zeros((1, len(currents), 2, 1, 1), np.uint16)
        for t, c in enumerate(currents):
            x[0, t, 0 if c > 0 else 1] = abs(c)
        res = simulate(net, x, record=True, record_membranes=True)
        return res.membranes["u1"][:, 0, 0].tolist(), res.layers[0], res.spikes["z1"].any()

    u, stats, spiked = run([hi, 1])
    assert u == ([hi, hi] if overflow == "saturate" else [hi, lo])
    assert (stats.saturation_high, stats.saturation_low) == (1, 0) and not spiked
    u, stats, spiked = run([lo, -1])  # down to the low rail, then one below it
    assert u == ([lo, lo] if overflow == "saturate" else [lo, hi])
    assert (stats.saturation_high, stats.saturation_low) == (0, 1)
    assert not spiked  # wrapped to +hi: still not above θ = hi


# --------------------------------------------------------------------------------------------------
# The engine against a register modelled with C integer types


_C_INT = {8: ctypes.c_int8, 16: ctypes.c_int16}


def hardware_register(bits, overflow, currents, theta, bias, decay, reset):
    """One neuron's u_t and z_t, step by step, as a register of ``bits`` bits (the profiles.py step)."""
    hi, lo = 2 ** (bits - 1) - 1, -(2 ** (bits - 1))
    u, fired, us, zs, events = 0, False, [], [], 0
    for c in currents:
        if reset == "zero" and fired:
            u = 0
        v = ((u * decay) >> FPGA.leak_bits) + c + bias - (theta if (fired and reset == "subtract") else 0)
        if v > hi or v < lo:
            events += 1
            v = max(lo, min(hi, v)) if overflow == "saturate" else _C_INT[bits](v).value  # C truncation
        u, fired = v, v > theta
        us.append(u)
        zs.append(int(fired))
    return us, zs, events


@fuzz(40)
@given(
    bits=st.sampled_from([8, 16]),
    overflow=st.sampled_from(["saturate", "wrap"]),
    reset=st.sampled_from(["subtract", "zero"]),
    data=st.data(),
)
def test_engine_equals_a_c_integer_register(bits, overflow, reset, data):
    hi = 2 ** (bits - 1) - 1
    big = min(3 * hi, 65535)  # event counts are uint16
    currents = data.draw(st.lists(st.integers(-big, big), min_size=1, max_size=12))
    theta = data.draw(st.integers(0, hi))
    bias = data.draw(st.integers(-hi // 4, hi // 4))
    decay = data.draw(st.integers(0, NO_LEAK))
    profile = FPGA.replace(membrane_bits=bits, overflow=overflow, reset=reset)
    layer = IntegerLayer(
        "fc", "dense", np.array([[1, -1]], np.int8), 1, 0, np.array([theta]), np.array([bias]), decay, np.ones(1)
    )
    net = IntegerNetwork((layer,), profile, (2, 1, 1), len(currents), "events", ("only",), input_max=65535)
    x = np.zeros((1, len(currents), 2, 1, 1), np.uint16)
    for t, c in enumerate(currents):
        x[0, t, 0 if c > 0 else 1] = abs(c)
    res = simulate(net, x, record=True, record_membranes=True)
    us, zs, events = hardware_register(bits, overflow, currents, theta, bias, decay, reset)
    assert res.membranes["u1"][:, 0, 0].tolist() == us
    assert res.spikes["z1"][:, 0, 0].tolist() == zs
    assert res.layers[0].saturation_events == events


# --------------------------------------------------------------------------------------------------
# A real trained network driven into saturation: qsnn-sim reports it


def test_qsnn_sim_reports_saturation_per_layer(float_onnx, tmp_path):
    from qsnn.data import load_split
    from qsnn.export.compile import compile_qonnx
    from qsnn.profiles import get_profile
    from qsnn.sim.cli import main

    report_path = tmp_path / "sim.json"
    result = CliRunner().invoke(
        main,
        [
            str(float_onnx),
            "--profile",
            "fpga",
            "--profile-set",
            "membrane_bits=8",
            "--allow-saturation",
            "--subset",
            "40",
            "--no-float",
            "--no-progress",
            "--report",
            str(report_path),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    layers = report["hardware"]["layers"]
    total = report["hardware"]["total"]["saturation_events"]
    assert total > 0 and total == sum(layer["saturation_events"] for layer in layers)
    hit = [layer for layer in layers if layer["saturation_events"]]
    assert "warning:" in result.output and f"{total} membrane updates overflowed the 8-bit register" in result.output
    for layer in hit:
        assert (
            f"{layer['name']} {layer['saturation_events']} ({layer['saturation_low']} low, "
            f"{layer['saturation_high']} high)" in result.output
        )
        assert layer["membrane_min"] >= -128 and layer["membrane_max"] <= 127
    # the report holds exactly what the simulator counted
    net, _ = compile_qonnx(float_onnx, get_profile("fpga", membrane_bits=8), allow_saturation=True)
    data = load_split("mnist5k", "test", subset=40)
    sim = simulate(net, data.x)
    assert [(s.name, s.saturation_low, s.saturation_high) for s in sim.layers] == [
        (layer["name"], layer["saturation_low"], layer["saturation_high"]) for layer in layers
    ]
