"""Every limit at once: the compiler, the targets and ``qsnn-export --check`` list all the limits a
model breaks for a profile (each with its layer and fix) in one run, and write nothing."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from qsnn.errors import LimitsError, ProfileError
from qsnn.network import fold_pool
from qsnn.profiles import get_profile

#: Specs with pooling, stride/padding and a dense-only net; 8-bit weights so loihi2's folded kernels overflow.
SPECS = ["8C3-AP2-D10", "16C3s2p1-AP2-D10", "D32-D10"]


def _expected(onnx, profile) -> list[tuple[str, str]]:
    """(layer, what) of every limit the profile's fields say the float export breaks, from its own weights."""
    from qsnn.export.float_graph import read_float_graph

    graph = read_float_graph(onnx)
    expected = []
    if graph.input_max > profile.input_max:
        expected.append(("input", "input port"))
    for layer, shape in zip(graph.layers, graph.layer_shapes):
        q = layer.q
        stored = fold_pool(q, layer.pool, stride=layer.stride) if layer.kind == "conv" and layer.pool > 1 else q
        if np.abs(stored).max() > profile.weight_max:
            expected.append((layer.name, "weights"))
        if stored[0].size > profile.max_fan_in:
            expected.append((layer.name, "fan-in"))
        if int(np.prod(shape)) > profile.max_neurons:
            expected.append((layer.name, "neurons"))
    return expected


@pytest.mark.parametrize("spec", SPECS)
def test_compile_lists_every_limit_of_every_layer(synthetic_export, spec):
    """loihi2 with a narrower input port, fan-in and neuron count: the compile error lists every broken
    limit of every layer (as computed here from the weights and shapes), in one error."""
    from qsnn.export.compile import compile_qonnx

    _, onnx = synthetic_export(precision="int4", arch=spec, weight_bits=8)
    profile = get_profile("loihi2", input_bits=6, max_fan_in=20, max_neurons=300)
    expected = _expected(onnx, profile)
    assert len(expected) >= 3, expected
    with pytest.raises(LimitsError) as info:
        compile_qonnx(onnx, profile)
    problems = info.value.problems
    assert len(problems) >= len(expected)
    for layer, what in expected:
        hits = [p for p in problems if (layer == "input" or f"layer {layer}" in p) and what in p]
        assert hits, (layer, what, problems)
    # each problem names its fix, and the one-line message holds them all
    assert all("--profile-set" in p or "--profile " in p or "train with" in p for p in problems)
    assert f"({len(problems)} limits)" in str(info.value) and "\n" not in str(info.value)


def test_grid_limits_join_the_register_limits(synthetic_export):
    """A membrane too narrow for any shift (a grid limit, per layer) is listed with a weight-width limit."""
    from qsnn.export.compile import compile_qonnx

    _, onnx = synthetic_export(precision="int4", arch="8C3-AP2-D10", weight_bits=8)
    with pytest.raises(LimitsError) as info:
        compile_qonnx(onnx, get_profile("fpga", membrane_bits=6, frac_bits=0))
    text = " | ".join(info.value.problems)
    assert "weight_bits=" in text  # 8-bit weights on a 4-bit profile
    grid = [p for p in info.value.problems if "membrane" in p or "threshold" in p]
    assert len(grid) >= 2, info.value.problems  # both layers' membranes


def test_target_lists_every_problem(synthetic_export):
    """A network compiled for fpga, checked for loihi2: Lava's arithmetic and every layer's shift at once."""
    from qsnn.export.compile import compile_qonnx
    from qsnn.targets import check_target, target_problems

    _, onnx = synthetic_export(precision="int4", arch="8C3-AP2-D10")
    net, _ = compile_qonnx(onnx, get_profile("fpga"))
    assert target_problems("fpga", net) == []
    problems = target_problems("loihi2", net)
    assert any("arithmetic" in p for p in problems)
    shifts = [p for p in problems if "current shift" in p]
    assert len(shifts) == sum(layer.current_shift != 6 for layer in net.layers) >= 1
    with pytest.raises(ProfileError) as info:
        check_target("loihi2", net)
    assert all(p in str(info.value) for p in problems)


def test_loihi2_with_changed_arithmetic_names_the_setting_not_the_profile():
    """A network compiled under loihi2 with --profile-set reset=zero: the target names that setting and
    says to leave it out; it does not advise compiling "under --profile loihi2", which it already was."""
    from test_arch_integer import hand_net

    from qsnn.data import load_split
    from qsnn.profiles import LOIHI2
    from qsnn.targets import target_problems

    x = load_split("mnist5k", "test").x[:8]
    for reset in ("zero", "subtract"):  # loihi2's own, then a change
        net = hand_net("6C3s2p1-D10", LOIHI2.replace(reset=reset), (8, 8), "static", x)
        arith = [p for p in target_problems("loihi2", net) if "arithmetic" in p]
        if reset == LOIHI2.reset:
            assert arith == []
        else:
            assert len(arith) == 1 and f"reset={reset!r}" in arith[0], arith
            assert "leave those --profile-set fields out" in arith[0]
            assert "Compile it under the loihi2 profile" not in arith[0]


def test_export_check_lists_all_and_writes_nothing(synthetic_export, tmp_path):
    from qsnn.export.cli import main

    _, onnx = synthetic_export(precision="int4", arch="8C3-AP2-D10", weight_bits=8)
    out = tmp_path / "out.loihi2"
    args = [str(onnx), "--to", "loihi2", "-o", str(out), "--check"]
    bad = CliRunner().invoke(
        main, args + ["--profile-set", "input_bits=6", "--profile-set", "max_fan_in=20"], catch_exceptions=False
    )
    assert bad.exit_code == 1, bad.output
    listed = [line for line in bad.output.splitlines() if re.match(r"\s+\d+\. ", line)]
    assert len(listed) >= 3, bad.output
    assert "input_bits" in bad.output and "fan-in" in bad.output and "weight" in bad.output
    assert bad.output.strip().splitlines()[-1].startswith("error:") and "nothing written" in bad.output
    assert not out.exists() and list(tmp_path.iterdir()) == []
    # under fpga the same model fits (8-bit weights named by a profile-set): exit 0, still nothing written
    good = CliRunner().invoke(
        main,
        [str(onnx), "--to", "fpga", "-o", str(tmp_path / "f"), "--check", "--profile-set", "weight_bits=8"],
        catch_exceptions=False,
    )
    assert good.exit_code == 0, good.output
    assert "no limit broken" in good.output and list(tmp_path.iterdir()) == []
    assert "note:" not in good.output  # the core runs it: nothing to note
    # tables that fit a network the core cannot run (a synaptic delay): it fits, and --check says the
    # folder will have no core and why, with the fix the export would write into its manifest
    delayed = CliRunner().invoke(
        main,
        [str(onnx), "--to", "fpga", "-o", str(tmp_path / "f"), "--check"]
        + ["--profile-set", "weight_bits=8", "--profile-set", "synaptic_delay=1"],
        catch_exceptions=False,
    )
    assert delayed.exit_code == 0, delayed.output
    note = [line for line in delayed.output.splitlines() if "note:" in line]
    assert len(note) == 1 and "no Verilog core" in note[0] and "synaptic_delay=0" in note[0]
    assert "no limit broken" in delayed.output and list(tmp_path.iterdir()) == []
    # --check of the float graph has nothing to check: one line that says what to add
    none = CliRunner().invoke(main, [str(onnx), "--to", "qonnx", "--check"], catch_exceptions=False)
    assert none.exit_code == 1 and "--profile" in none.output and len(none.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "spec, fits, too_big",
    [
        ("8C1-D10", ["5C1-D10", "8C1-AP2-D10"], ["6C1-D10"]),  # fc's fan-in 8·28·28 = 6272 > 4096
        ("16C5-AP2-D32-D10", [], []),  # fits as it is: the control
    ],
)
def test_a_fan_in_refusal_names_the_network_that_fits(synthetic_export, spec, fits, too_big):
    """Beyond loihi2's 4096 synapses per neuron the compiler names the smallest network change first
    (the chip cannot raise it: --profile-set max_fan_in only simulates beyond it), and the networks it
    names compile while one channel more does not."""
    from qsnn.export.compile import compile_qonnx

    def problems(arch: str) -> list[str]:
        try:
            compile_qonnx(synthetic_export(precision="int4", arch=arch)[1], get_profile("loihi2"))
        except LimitsError as exc:
            return [p for p in exc.problems if "fan-in" in p]
        return []

    found = problems(spec)
    if not fits:
        assert found == []
        return
    assert len(found) == 1 and "make it fit with at most 5 channels in layer conv1 (now 8)" in found[0]
    assert "pooled by 2 (AP2: 8×14×14 = 1568 inputs)" in found[0]
    assert found[0].index("make it fit") < found[0].index("--profile-set max_fan_in=6272")
    assert all(problems(arch) == [] for arch in fits)
    assert all(problems(arch) for arch in too_big)
