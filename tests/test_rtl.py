"""The reference FPGA core (targets/fpga/rtl/qsnn_core.v) in an HDL simulator, spike for spike with qsnn-sim.

Ground truth for the ``fpga`` profile is the Verilog core run on the emitted tables: these tests
build it with Verilator (once per network shape, cached) and compare every layer's spike train at
every step, the output counts, the predictions and the saturation counters with the NumPy engine
(``array_equal``), on real mnist5k test images of the ``make demo`` model, on a DVS-shaped model with
event-count input, and on random networks that hit both saturation rails (also under Icarus).
Bad folders must fail with one clear line before anything is simulated.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qsnn.errors import ExportError, ProfileError
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import FPGA
from qsnn.sim.engine import simulate
from qsnn.targets import read_target, write_target
from qsnn.targets.fpga import core as fpga_core
from qsnn.targets.fpga import hdl_sim

BIN = Path(sys.prefix) / "bin"


def random_net(
    seed: int,
    profile=FPGA,
    *,
    in_shape=(2, 12, 12),
    convs=((6, 3, 2), (5, 3, 1)),
    denses=(7, 4),
    num_steps: int = 6,
    encoding: str = "static",
    theta=(40, 400),
    bias=30,
    shift=(-2, 3),
) -> IntegerNetwork:
    """conv(+pool) layers then dense layers with random integers of the profile's ranges."""
    rng = np.random.default_rng(seed)
    wm = profile.weight_max

    def neuron(o):
        leak = int(rng.integers(0, (1 << profile.leak_bits) + 1)) if profile.leak == "mul" else int(rng.integers(1, 8))
        return dict(
            current_shift=int(rng.integers(*shift)),
            threshold=rng.integers(*theta, size=o).astype(np.int64),
            bias=rng.integers(-bias, bias + 1, size=o).astype(np.int64),
            leak_const=leak,
            scale=np.ones(o),
        )

    layers, shape = [], tuple(in_shape)
    for i, (o, k, p) in enumerate(convs):
        w = rng.integers(-wm, wm + 1, size=(o, shape[0], k, k)).astype(np.int8)
        layers.append(IntegerLayer(f"conv{i + 1}", "conv", w, p, **neuron(o)))
        shape = layers[-1].output_shape(shape)
    for i, o in enumerate(denses):
        w = rng.integers(-wm, wm + 1, size=(o, int(np.prod(shape)))).astype(np.int8)
        layers.append(IntegerLayer(f"fc{i + 1}", "dense", w, 1, **neuron(o)))
        shape = layers[-1].output_shape(shape)
    return IntegerNetwork(
        tuple(layers),
        profile,
        tuple(in_shape),
        num_steps,
        encoding,
        tuple(f"c{i}" for i in range(shape[0])),
        {"dataset": "random"},
    )


def random_inputs(net: IntegerNetwork, n: int, seed: int, density: float = 0.4, top: int = 255) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (n, *net.input_shape) if net.encoding == "static" else (n, net.num_steps, *net.input_shape)
    x = rng.integers(0, top + 1, size=shape) * (rng.random(shape) < density)
    return x.astype(np.uint8 if net.encoding == "static" else np.uint16)


def assert_core_equals_sim(result: hdl_sim.RTLResult, net: IntegerNetwork, x: np.ndarray):
    sim = simulate(net, x, record=True)
    for key in sim.spikes:
        assert np.array_equal(sim.spikes[key], result.spikes[key]), f"{key}: the core's spike train differs"
    assert np.array_equal(sim.counts, result.counts)
    assert np.array_equal(sim.predictions, result.predictions)
    for i, stats in enumerate(sim.layers):
        assert (stats.saturation_low, stats.saturation_high) == (
            int(result.saturation_low[:, i].sum()),
            int(result.saturation_high[:, i].sum()),
        ), stats.name
    return sim


def _export(src: Path, out: Path, *extra: str) -> None:
    res = subprocess.run([BIN / "qsnn-export", src, "--to", "fpga", "-o", out, *extra], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def _rtl_sim(*args) -> subprocess.CompletedProcess:
    return subprocess.run([BIN / "qsnn-rtl-sim", *map(str, args), "--no-progress"], capture_output=True, text=True)


# --------------------------------------------------------------------------------------------------
# The demo model on real mnist5k test images (the claim of the issue)


@pytest.mark.slow  # builds the core with Verilator (or synthesizes it with Yosys)
@pytest.mark.hdl("verilator", "g++")
def test_demo_model_on_mnist5k_test_images_equals_qsnn_sim(demo_run, tmp_path):
    out = tmp_path / "fpga"
    _export(demo_run / "best.pt", out)  # exactly as the README says
    report = tmp_path / "rtl.json"
    res = _rtl_sim(out, "--split", "test", "-n", 24, "--report", report)
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads(report.read_text())
    agree = rep["agreement"]
    assert rep["dataset"] == "mnist5k" and rep["samples"] == 24 and rep["num_steps"] == 25
    assert agree["bit_exact"] is True
    for key, layer in agree["spike_trains"].items():
        assert layer["samples_equal_pct"] == 100.0 and layer["steps_equal_pct"] == 100.0, key
        assert layer["entries_different"] == 0
    assert agree["output_counts_equal_pct"] == 100.0 and agree["predictions_equal_pct"] == 100.0
    assert all(s["equal"] for s in agree["saturation"].values())
    assert rep["accuracy"]["rtl"] == rep["accuracy"]["qsnn_sim"] > 0.5
    cyc = rep["cycles"]
    assert cyc["lanes"] == fpga_core.DEFAULT_LANES and cyc["per_inference"]["min"] > 0
    assert cyc["inferences_per_s"] == pytest.approx(100e6 / cyc["per_inference"]["mean"])
    # every layer really worked: it spiked, and the scatter and update phases took cycles
    hw = rep["qsnn_sim_hardware"]["layers"]
    assert all(layer["spikes_per_inference"] > 0 for layer in hw)
    assert all(v["scatter"] > 0 and v["update"] > 0 for v in cyc["per_layer_mean"].values())
    assert "BIT-EXACT" in res.stdout
    resources = json.loads((out / "resources.json").read_text())
    assert resources["cycles"]["per_inference"] == cyc["per_inference"]


# --------------------------------------------------------------------------------------------------
# A DVS-shaped model: event-count input, one frame per step


@pytest.mark.slow  # builds the core with Verilator (or synthesizes it with Yosys)
@pytest.mark.hdl("verilator", "g++")
def test_dvs_model_with_event_counts_equals_qsnn_sim(trained_run, dvs_data_dir, tmp_path):
    from qsnn.data import load_split
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.qonnx_float import export_float

    run = trained_run(dataset="dvs128")
    net, _ = compile_qonnx(export_float(run / "best.pt", tmp_path / "model.onnx"), FPGA, allow_saturation=True)
    out = write_target("fpga", net, tmp_path / "fpga", lanes=8)
    checked = hdl_sim.check_folder(out)
    # the input bus is as wide as the event encoding's count clip (net.input_max), not a fixed 16 bits
    assert checked.config.static is False and checked.config.in_bits == net.input_max.bit_length() < 16
    x = load_split("dvs128", "test", dvs_data_dir, num_steps=net.num_steps).x[:6]
    assert x.ndim == 5 and x.sum() > 0 and int(x.max()) <= net.input_max
    result = hdl_sim.run_verilator(checked, x)
    sim = assert_core_equals_sim(result, checked.net, x)
    assert int(sim.spikes["z1"].sum()) > 0 and int(sim.spikes["z2"].sum()) > 0


@pytest.mark.slow  # trains the DVS fixture model, builds the core with Verilator
@pytest.mark.hdl("verilator", "g++")
@pytest.mark.parametrize("arch", ["8C5s2-AP2-D11", "4C3s2p1-D11"])
def test_a_test_split_cut_into_windows_is_scored_per_recording(trained_run, dvs_data_dir, tmp_path, arch):
    """qsnn-rtl-sim -n 3 on a DVS128 model trained with --test-cut windows: three gestures with all their
    T-step windows, every window bit-exact, and the accuracies per gesture from the output spike counts
    summed over its windows (as training, qsnn-sim and make lava-check score them), not per window."""
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.qonnx_float import export_float
    from qsnn.targets.inputs import check_inputs

    run = trained_run("dvs128", "int4", test_cut="windows", arch=arch)
    out = tmp_path / "fpga"
    _export(run / "best.pt", out, "--profile-set", "membrane_bits=24")
    report = tmp_path / "rtl.json"
    res = _rtl_sim(out, "-n", 3, "--data-dir", dvs_data_dir, "--report", report)
    assert res.returncode == 0, res.stdout + res.stderr
    rep = json.loads(report.read_text())
    net, _ = compile_qonnx(export_float(run / "best.pt", tmp_path / "m.onnx"), FPGA.replace(membrane_bits=24))
    _, data = check_inputs(net, 3, "test", dvs_data_dir)
    assert data.group is not None and data.num_recordings == 3 < len(data)
    assert rep["agreement"]["bit_exact"] and rep["samples"] == len(data) and rep["recordings"] == 3
    counts = simulate(net, data.x).counts
    assert rep["accuracy"]["qsnn_sim"] == rep["accuracy"]["rtl"] == data.accuracy(counts)
    assert f"3 recordings ({len(data)} windows, scored per recording" in res.stdout


# --------------------------------------------------------------------------------------------------
# Random networks: both saturation rails, the profile's variants, other lane counts, Icarus


def saturating_net(seed: int = 5) -> IntegerNetwork:
    """Large pixels times 4-bit weights shifted left overflow int16 both ways in the first layer."""
    return random_net(seed, shift=(2, 4), theta=(30, 300), bias=200)


@pytest.mark.slow  # builds the core with Verilator (or synthesizes it with Yosys)
@pytest.mark.hdl("verilator", "g++")
def test_random_network_hits_both_rails_and_equals_qsnn_sim(tmp_path):
    net = saturating_net()
    x = random_inputs(net, 8, seed=1)
    out = write_target("fpga", net, tmp_path / "fpga", lanes=4)
    result = hdl_sim.run_verilator(hdl_sim.check_folder(out), x)
    sim = assert_core_equals_sim(result, net, x)
    assert sum(s.saturation_low for s in sim.layers) > 0 and sum(s.saturation_high for s in sim.layers) > 0
    assert all(int(z.sum()) > 0 for z in sim.spikes.values())


VARIANTS = {
    "wrap-zero-reset-pool3": (
        FPGA.replace(overflow="wrap", reset="zero", membrane_bits=12),
        dict(in_shape=(3, 13, 11), convs=((5, 3, 3), (7, 2, 1)), denses=(9, 4), shift=(0, 3)),
    ),
    "shift-leak-symmetric-dense-first-events": (
        FPGA.replace(leak="shift", symmetric_clip=True, membrane_bits=10),
        dict(in_shape=(2, 5, 6), convs=(), denses=(13, 3), encoding="events", theta=(5, 100), shift=(-1, 4)),
    ),
}


@pytest.mark.slow  # builds the core with Verilator (or synthesizes it with Yosys)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.hdl("verilator", "g++")
def test_profile_variants_equal_qsnn_sim(tmp_path, variant):
    profile, shape = VARIANTS[variant]
    net = random_net(7, profile, **shape)
    x = random_inputs(net, 6, seed=2, top=255 if net.encoding == "static" else 40)
    out = write_target("fpga", net, tmp_path / "fpga", lanes=8 if net.encoding == "static" else 1)
    sim = assert_core_equals_sim(hdl_sim.run_verilator(hdl_sim.check_folder(out), x), net, x)
    assert sum(s.saturation_events for s in sim.layers) > 0
    assert int(sim.spikes["z1"].sum()) > 0


@pytest.mark.slow  # builds the core with Verilator (or synthesizes it with Yosys)
@pytest.mark.hdl("verilator", "g++", "iverilog", "vvp")
def test_icarus_runs_the_plain_testbench_with_the_same_result(tmp_path):
    net = saturating_net()
    x = random_inputs(net, 2, seed=3)
    checked = hdl_sim.check_folder(write_target("fpga", net, tmp_path / "fpga", lanes=4))
    icarus = hdl_sim.run_icarus(checked, x)
    assert_core_equals_sim(icarus, net, x)
    assert np.array_equal(icarus.cycles, hdl_sim.run_verilator(checked, x).cycles)


@pytest.mark.slow  # builds the core with Verilator (or synthesizes it with Yosys)
@pytest.mark.hdl("verilator", "g++")
def test_a_build_is_reused_for_the_same_shape(tmp_path):
    net = saturating_net()
    x = random_inputs(net, 2, seed=4)
    first = hdl_sim.run_verilator(hdl_sim.check_folder(write_target("fpga", net, tmp_path / "a", lanes=4)), x)
    other = random_net(6, shift=(2, 4), theta=(30, 300), bias=200)  # same shape, other integers
    other = dataclasses.replace(
        other,
        layers=tuple(dataclasses.replace(b, current_shift=a.current_shift) for a, b in zip(net.layers, other.layers)),
    )  # and shifts
    second = hdl_sim.run_verilator(hdl_sim.check_folder(write_target("fpga", other, tmp_path / "b", lanes=4)), x)
    assert second.build["reused"] and second.build["cache"] == first.build["cache"]
    assert_core_equals_sim(second, other, x)


@pytest.mark.slow  # builds the core with Verilator (or synthesizes it with Yosys)
@pytest.mark.hdl("verilator", "g++")
def test_comparison_reports_a_single_flipped_spike(tmp_path):
    from qsnn.targets.fpga.cli import compare

    net = saturating_net()
    x = random_inputs(net, 3, seed=5)
    result = hdl_sim.run_verilator(hdl_sim.check_folder(write_target("fpga", net, tmp_path / "f", lanes=4)), x)
    sim = simulate(net, x, record=True)
    assert compare(result, sim)["bit_exact"] is True
    t, n, c = 2, 1, 0
    result.spikes["z2"][t, n, c, 0, 0] ^= 1
    report = compare(result, sim)
    assert report["bit_exact"] is False
    assert report["spike_trains"]["z2"]["entries_different"] == 1
    assert report["spike_trains"]["z2"]["samples_equal_pct"] == pytest.approx(66.66)
    assert report["spike_trains"]["z1"]["bit_exact"] is True


# --------------------------------------------------------------------------------------------------
# Any layer stack (issue 24): depth, dense-only nets, several dense layers, conv stride and zero
# padding, 2..8-bit weights, per-channel thresholds and biases; real mnist5k digits


#: (spec, profile, per-layer weight bits, encoding, lanes): networks of tests/test_arch_integer.hand_net
#: (random weights of those widths, per-channel biases, per-channel thresholds calibrated on real
#: digits so that every layer spikes)
STACKS = {
    "dense-2": ("D64-D10", FPGA, (4, 4), "static", 8),
    "dense-3": ("D48-D24-D10", FPGA, (4, 4, 4), "static", 16),
    "conv3-stride2-pad1": ("6C3s2p1-8C3s2p1-8C3p1-AP2-D10", FPGA, (4, 4, 4, 4), "static", 4),
    "four-pool-after-stride": ("4C5-AP2-6C3s2p1-AP2-8C3p1-D10", FPGA, (4, 4, 4, 4), "static", 16),
    "bits-2-and-8": ("6C5s2p2-AP2-D32-D10", FPGA.replace(weight_bits=8), (2, 8, 2), "static", 8),
    # stride above the kernel (taps that reach no output), padding beyond a pool window (the first
    # input row feeds pooled row 2)
    "stride3-k2-pad4-pool": ("5C2s3p1-4C5p4-AP2-6C3s2p2-D10", FPGA, (4, 4, 4, 4), "static", 2),
    "saturate-stride-pad": ("6C3s2p1-D32-D10", FPGA.replace(membrane_bits=10), (4, 4, 4), "static", 2),
    "events-stride-pad": ("4C3s2p1-6C3s1p1-AP2-D10", FPGA, (4, 4, 4), "events", 1),
}


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from qsnn.data import load_split

    return load_split("mnist5k", "test").x[:16]


def stack_net(name: str, digits: np.ndarray) -> tuple[IntegerNetwork, np.ndarray, int]:
    """The network ``STACKS[name]``, its inputs (8 real digits, or random event counts) and its lanes."""
    from test_arch_integer import event_input, hand_net

    spec, profile, bits, encoding, lanes = STACKS[name]
    x = digits if encoding == "static" else event_input((2, 16, 16), T=8, n=10)
    net = hand_net(spec, profile, bits, encoding, x[:10])  # thresholds from these inputs
    return net, (digits[8:16] if encoding == "static" else x[:8]), lanes


@pytest.mark.slow  # builds the core with Verilator (or synthesizes it with Yosys)
@pytest.mark.parametrize("name", list(STACKS))
@pytest.mark.hdl("verilator", "g++")
def test_any_layer_stack_equals_qsnn_sim(name, digits, tmp_path):
    net, x, lanes = stack_net(name, digits)
    out = write_target("fpga", net, tmp_path / "fpga", lanes=lanes)
    assert json.loads((out / "manifest.json").read_text())["rtl"]["supported"] is True
    checked = hdl_sim.check_folder(out)
    sim = assert_core_equals_sim(hdl_sim.run_verilator(checked, x), checked.net, x)  # every layer, every step
    assert all(int(z.sum()) > 0 for z in sim.spikes.values()), "a layer never spikes: the comparison is empty"
    if name.startswith("saturate"):
        assert sum(s.saturation_events for s in sim.layers) > 0


@pytest.mark.slow  # builds the core with Icarus
@pytest.mark.hdl("iverilog", "vvp")
def test_icarus_runs_a_strided_padded_stack(digits, tmp_path):
    net, x, lanes = stack_net("stride3-k2-pad4-pool", digits)
    checked = hdl_sim.check_folder(write_target("fpga", net, tmp_path / "fpga", lanes=lanes))
    assert_core_equals_sim(hdl_sim.run_icarus(checked, x[:2]), net, x[:2])


@pytest.mark.parametrize("name", ["conv3-stride2-pad1", "stride3-k2-pad4-pool", "bits-2-and-8", "dense-3"])
def test_stack_tables_carry_stride_and_padding(name, digits, tmp_path):
    """read(write(net)) == net (stride, padding, weights, per-channel θ and b), spike for spike; the
    manifest, README, C header and the core's header state every layer's stride and padding."""
    net, x, lanes = stack_net(name, digits)
    out = write_target("fpga", net, tmp_path / "fpga", lanes=lanes)
    back = read_target(out)
    for a, b in zip(net.layers, back.layers):
        assert (a.kind, a.stride, a.padding, a.pool, a.current_shift) == (
            b.kind,
            b.stride,
            b.padding,
            b.pool,
            b.current_shift,
        )
        assert np.array_equal(a.weight.astype(np.int64), b.weight.astype(np.int64))
        assert np.array_equal(a.threshold, b.threshold) and np.array_equal(a.bias, b.bias)
    ra, rb = simulate(net, x[:4], record=True), simulate(back, x[:4], record=True)
    assert all(np.array_equal(ra.spikes[k], rb.spikes[k]) for k in ra.spikes)
    manifest = json.loads((out / "manifest.json").read_text())
    assert [(r["stride"], r["padding"]) for r in manifest["layers"]] == [(la.stride, la.padding) for la in net.layers]
    params = fpga_core.parse_header((out / "rtl" / "qsnn_params.vh").read_text())
    assert params["L_S"] == [la.stride for la in net.layers] + [1]
    assert params["L_PAD"] == [la.padding for la in net.layers] + [0]
    header = (out / "qsnn_model.h").read_text()
    for i, la in enumerate(net.layers, start=1):
        assert (
            f"#define QSNN_L{i}_STRIDE {la.stride}\n" in header
            and f"#define QSNN_L{i}_PADDING {la.padding}\n" in header
        )


def test_weights_wider_than_the_tables_are_refused_in_one_line(digits, tmp_path):
    """8-bit weights under the 4-bit fpga profile: one line naming the layer, before any file is written."""
    net, _, _ = stack_net("bits-2-and-8", digits)
    narrow = dataclasses.replace(net, profile=FPGA)
    with pytest.raises(ProfileError) as err:
        write_target("fpga", narrow, tmp_path / "fpga")
    msg = str(err.value)
    assert "\n" not in msg and "layer 2 (l2)" in msg and "4-bit" in msg
    assert not (tmp_path / "fpga").exists()


# --------------------------------------------------------------------------------------------------
# The memory order the README documents, read back without the writer's code


def test_core_tables_follow_the_documented_order(tmp_path):
    net = random_net(8, in_shape=(3, 9, 9), convs=((5, 3, 2),), denses=(6,))
    P = 4
    out = write_target("fpga", net, tmp_path / "fpga", lanes=P)
    manifest = json.loads((out / "manifest.json").read_text())
    rtl = manifest["rtl"]
    assert rtl["supported"] and rtl["lanes"] == P and "WBASE" in rtl["order"]["weights"]

    def words(name):
        return [
            int(line, 16)
            for line in (out / "rtl" / name).read_text().splitlines()
            if line.strip() and not line.startswith("//")
        ]

    def lane(word, j, bits):
        v = (word >> (bits * j)) & ((1 << bits) - 1)
        return v - (1 << bits) if v >> (bits - 1) else v

    w = words("qsnn_weights.mem")
    conv, fc = net.layers
    G1, G2 = 2, 2  # ceil(5 / 4), ceil(6 / 4)
    for o in range(5):
        for ci in range(3):
            for ky in range(3):
                for kx in range(3):
                    word = w[((ci * 3 + ky) * 3 + kx) * G1 + o // P]
                    assert lane(word, o % P, 4) == conv.weight[o, ci, ky, kx]
    wbase, (ho, wo) = 3 * 3 * 3 * G1, (3, 3)
    rows = ho * wo * G1 * P
    for o in range(6):
        for c in range(5):
            for y in range(ho):
                for x in range(wo):
                    i = ((y * wo + x) * G1 + c // P) * P + c % P
                    word = w[wbase + (o // P) * rows + i]
                    assert lane(word, o % P, 4) == fc.weight[o, (c * ho + y) * wo + x]
    assert len(w) == wbase + G2 * rows
    neurons = words("qsnn_neurons.mem")
    for li, layer in enumerate(net.layers):
        for o in range(layer.out_channels):
            word = neurons[li * G1 + o // P] >> (32 * (o % P))
            assert word & 0xFFFF == layer.threshold[o]
            assert lane(word >> 16, 0, 16) == layer.bias[o]
    assert words("qsnn_layers.mem") == [layer.leak_const for layer in net.layers]
    header = (out / "rtl" / "qsnn_params.vh").read_text()
    assert "localparam PAR = 4;" in header and "localparam NUM_STEPS = 6;" in header
    params = fpga_core.parse_header(header)
    assert params["L_G"] == [G1, G2, 1]
    assert [lane(v, 0, 32) for v in params["L_SHIFT"][:2]] == [layer.current_shift for layer in net.layers]
    assert "## The reference core" in (out / "README.md").read_text()


# --------------------------------------------------------------------------------------------------
# Bad input: one clear line, before anything is simulated


@pytest.fixture
def folder(tmp_path):
    return write_target("fpga", saturating_net(), tmp_path / "fpga", lanes=4)


@pytest.fixture
def no_simulation(monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("simulation started on a bad folder")

    monkeypatch.setattr(hdl_sim, "build_verilator", refuse)
    monkeypatch.setattr(hdl_sim, "run_icarus", refuse)


def _cli_error(folder, *args) -> str:
    from click.testing import CliRunner

    from qsnn.targets.fpga.cli import main

    res = CliRunner().invoke(main, [str(folder), "--dataset", "mnist5k", "-n", "2", "--no-progress", *args])
    assert res.exit_code == 1, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    return lines[0]


def test_manifest_that_does_not_match_the_core_parameters(folder, no_simulation):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["network"]["num_steps"] += 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    msg = _cli_error(folder)
    assert "qsnn_params.vh" in msg and "NUM_STEPS" in msg and "do not match the manifest" in msg
    manifest["network"]["num_steps"] -= 1
    manifest["rtl"]["lanes"] = 8
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert "PAR" in _cli_error(folder)


def test_missing_core_table(folder, no_simulation):
    (folder / "rtl" / "qsnn_neurons.mem").unlink()
    msg = _cli_error(folder)
    assert "qsnn_neurons.mem is missing" in msg


def test_missing_layer_table(folder, no_simulation):
    (folder / "L2_conv2_weights.mem").unlink()
    assert "L2_conv2_weights.mem is missing" in _cli_error(folder)


def test_truncated_core_table(folder, no_simulation):
    path = folder / "rtl" / "qsnn_weights.mem"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    msg = _cli_error(folder)
    assert "qsnn_weights.mem" in msg and "truncated" in msg and "the core needs" in msg


def test_edited_core_table_of_the_right_length(folder, no_simulation):
    from qsnn.jsonio import sha256_file

    path = folder / "rtl" / "qsnn_weights.mem"
    lines = path.read_text().splitlines()
    lines[-1] = "f" * len(lines[-1])
    path.write_text("\n".join(lines) + "\n")
    assert "SHA-256" in _cli_error(folder)
    # even with the manifest's hash updated to match, the table must hold the network's weights
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["rtl/qsnn_weights.mem"]["sha256"] = sha256_file(path)
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match="qsnn_weights.mem does not hold the network"):
        hdl_sim.check_folder(folder)


def test_network_outside_the_core_family(tmp_path, no_simulation):
    net = saturating_net()
    delayed = dataclasses.replace(net, profile=net.profile.replace(synaptic_delay=1))
    out = write_target("fpga", delayed, tmp_path / "delay")  # the tables are still written
    rtl = json.loads((out / "manifest.json").read_text())["rtl"]
    assert rtl["supported"] is False
    assert rtl["reason"].startswith("a synaptic delay of 1 step(s) (the core has none): compile with --profile-set ")
    assert not (out / "rtl").exists()
    assert read_target(out).profile.synaptic_delay == 1
    msg = _cli_error(out)
    assert "outside the FPGA core's family" in msg and "synaptic delay" in msg
    # the fix it names gives the core
    fixed = write_target(
        "fpga", dataclasses.replace(net, profile=net.profile.replace(synaptic_delay=0)), tmp_path / "f"
    )
    assert json.loads((fixed / "manifest.json").read_text())["rtl"]["supported"] is True
    assert "--profile-set synaptic_delay=0" in rtl["reason"]
    with pytest.raises(ProfileError, match="lanes=3"):
        write_target("fpga", net, tmp_path / "l3", lanes=3)


def test_a_folder_of_another_target(tmp_path, no_simulation):
    from test_targets import tiny_net

    from qsnn.profiles import LOIHI2

    out = write_target("loihi2", tiny_net(LOIHI2), tmp_path / "loihi", source_info={"file": "run/best.pt"})
    msg = _cli_error(out)
    # the export it names writes a new folder (not over the loihi2 one, which --force would not replace)
    assert "'loihi2' folder" in msg and f"(qsnn-export run/best.pt --to fpga -o {tmp_path / 'loihi-fpga'})" in msg


# --------------------------------------------------------------------------------------------------
# Yosys: synthesizable, no latches, resources.json


@pytest.mark.slow  # builds the core with Verilator (or synthesizes it with Yosys)
@pytest.mark.hdl("verilator", "g++", "yosys")
def test_yosys_synthesis_of_a_small_core(tmp_path):
    net = random_net(9, in_shape=(1, 8, 8), convs=((4, 3, 2),), denses=(3,), num_steps=4)
    out = write_target("fpga", net, tmp_path / "fpga", lanes=2)
    from click.testing import CliRunner

    from qsnn.targets.fpga.cli import main

    res = CliRunner().invoke(main, [str(out), "--no-sim", "--synth", "ecp5"])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "resources.json").read_text())["synthesis"]["ecp5"]
    assert r["latches"] == 0
    assert r["luts"] > 100 and r["flip_flops"] > 50
    assert r["dsps"] == 2  # one leak multiplier per lane
    assert r["fits"] == "LFE5U-12F"


def test_export_lanes_option(trained_run, tmp_path):
    ckpt = trained_run() / "best.pt"
    _export(ckpt, tmp_path / "f8", "--lanes", "8")
    manifest = json.loads((tmp_path / "f8" / "manifest.json").read_text())
    assert manifest["rtl"]["lanes"] == 8 and manifest["rtl"]["params"]["PAR"] == 8
    assert "localparam PAR = 8;" in (tmp_path / "f8" / "rtl" / "qsnn_params.vh").read_text()
    # a lane count that is no power of two is refused when the options are parsed (click's usage error)
    res = subprocess.run(
        [BIN / "qsnn-export", ckpt, "--to", "fpga", "--lanes", "3", "-o", tmp_path / "bad"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "'--lanes': 3 is not a power of two" in res.stderr, res.stderr
    res = subprocess.run(
        [BIN / "qsnn-export", ckpt, "--to", "nir", "--lanes", "4", "-o", tmp_path / "bad"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and res.stderr.startswith("error: ") and "--lanes" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()
