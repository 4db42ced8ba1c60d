"""``qsnn-sim --fit``: the narrowest membrane free of saturation (proven or observed) within a stated
accuracy of the trained model, checked by compiling and simulating the choice again, on real digits."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from qsnn.profiles import get_profile, parse_overrides

N = 40


@pytest.fixture(scope="module")
def digits():
    from qsnn.data import load_split

    return load_split("mnist5k", "test", num_steps=8, subset=N)


@pytest.mark.parametrize("spec", ["8C3-AP2-D10", "D32-D10"])
def test_fit_choice_holds_and_is_the_narrowest(synthetic_export, digits, spec):
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.float_eval import FloatEvaluator
    from qsnn.sim import simulate
    from qsnn.sim.fit import MAX_TAU_CHANGE, fit, membrane_memory_bits
    from qsnn.sim.validate import float_model_counts

    _, onnx = synthetic_export(precision="int4", arch=spec)
    profile = get_profile("fpga")
    counts = float_model_counts(FloatEvaluator(onnx), digits.x, "static", codes=True)
    tolerance = 0.05

    def compile(p, allow_saturation=False):
        return compile_qonnx(onnx, p, allow_saturation=allow_saturation)

    out = fit(compile, profile, digits.x, digits.accuracy, counts, tolerance=tolerance)
    chosen = out["chosen"]
    assert chosen is not None, out["rows"]
    acc_trained = digits.accuracy(counts)
    # the --profile-set line gives the chosen fields back
    fields = parse_overrides(part.split(" ", 1)[1] for part in out["profile_set"].split(" --")[1:] if "=" in part)
    assert {k: chosen[k] for k in fields} == fields and fields.get("membrane_bits") == chosen["membrane_bits"]
    chosen_profile = profile.replace(
        **{k: chosen[k] for k in ("membrane_bits", "frac_bits", "leak_bits") if k in chosen}
    )
    # compiled and simulated again: the reported accuracy, within the tolerance, saturation as stated
    proven = chosen["saturation_free"] == "proven"
    net, _ = compile(chosen_profile, allow_saturation=not proven)
    res = simulate(net, digits.x)
    assert digits.accuracy(res.counts) == pytest.approx(chosen["accuracy"])
    assert chosen["accuracy"] >= acc_trained - tolerance - 1e-9
    assert sum(layer.saturation_events for layer in res.layers) == 0
    if not proven:
        with pytest.raises(Exception):
            compile(chosen_profile)
    # nothing narrower passed; the memory figure is neurons × width against the profile's
    assert all(not r.get("ok") for r in out["rows"] if r["membrane_bits"] < chosen["membrane_bits"])
    assert (
        chosen["membrane_memory_bits"]
        == membrane_memory_bits(net)
        == sum(int(np.prod(s)) for s in net.shapes()) * chosen["membrane_bits"]
    )
    # a narrower leak constant keeps the neuron: its time constant τ = 1/(1 − β) within MAX_TAU_CHANGE
    tau = [1 / (1 - r["beta_chip"]) for r in (out["baseline"], chosen)]
    assert abs(tau[0] / tau[1] - 1) <= MAX_TAU_CHANGE
    base = out["baseline"]["membrane_memory_bits"]
    assert out["membrane_memory_saved_pct"] == pytest.approx(100 * (1 - chosen["membrane_memory_bits"] / base))


def test_fixed_shift_profile_keeps_its_shift(synthetic_export, digits):
    """loihi2 fixes the current shift (Lava's a_in << 6): frac_bits is never searched there."""
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.float_eval import FloatEvaluator
    from qsnn.sim.fit import fit
    from qsnn.sim.validate import float_model_counts

    _, onnx = synthetic_export(precision="int4", arch="8C3-AP2-D10", threshold=4.0)
    counts = float_model_counts(FloatEvaluator(onnx), digits.x, "static", codes=True)
    out = fit(
        lambda p, allow_saturation=False: compile_qonnx(onnx, p, allow_saturation=allow_saturation),
        get_profile("loihi2"),
        digits.x,
        digits.accuracy,
        counts,
        tolerance=1.0,
    )
    assert {r.get("frac_bits", 6) for r in out["rows"]} == {6}


def test_cli_fit_and_refusal(synthetic_export, tmp_path):
    from qsnn.sim.cli import main

    _, onnx = synthetic_export(precision="int4", arch="D32-D10")
    report = tmp_path / "r.json"
    args = [str(onnx), "--subset", "30", "--fit", "--fit-tolerance", "5", "--report", str(report)]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())["fit"]
    assert data["tolerance_pp"] == 5 and f"use: {data['profile_set']}" in res.output
    bad = CliRunner().invoke(main, [str(onnx), "--fit", "--no-float"])
    assert bad.exit_code == 1 and "--no-float" in bad.output and len(bad.output.strip().splitlines()) == 1


@pytest.mark.parametrize("spec", ["8C3-AP2-D10", "D32-D10"])
def test_fit_where_no_narrower_membrane_holds_says_so(synthetic_export, digits, spec):
    """A model that only the profile's own membrane holds (here: only the trained model's exact counts
    score): the search reaches the profile's width, whose network is the baseline's, and ends with no
    choice and no --profile-set line; the repeated candidate names the baseline's fields."""
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.float_eval import FloatEvaluator
    from qsnn.sim.fit import fit
    from qsnn.sim.validate import float_model_counts

    _, onnx = synthetic_export(precision="int4", arch=spec)
    profile = get_profile("fpga")
    counts = float_model_counts(FloatEvaluator(onnx), digits.x, "static", codes=True)

    def only_the_trained_counts(c):
        return 1.0 if np.array_equal(c, counts) else 0.0

    def compile(p, allow_saturation=False):
        return compile_qonnx(onnx, p, allow_saturation=allow_saturation)

    out = fit(compile, profile, digits.x, only_the_trained_counts, counts)
    assert out["chosen"] is None and "profile_set" not in out
    repeats = [r for r in out["rows"] if "same_as" in r]
    own = [r for r in repeats if r["membrane_bits"] == profile.membrane_bits and r["frac_bits"] == profile.frac_bits]
    assert own and own[0]["same_as"] == {"membrane_bits": profile.membrane_bits, "frac_bits": profile.frac_bits}


@pytest.mark.parametrize("spec", ["8C3w8-AP2-D10", "D32w8-D10"])
def test_fit_use_line_keeps_the_callers_own_profile_set(synthetic_export, digits, spec):
    """Searched from a profile the caller changed (8-bit weights under fpga), the "use:" line names
    that change too: the profile it rebuilds compiles the chosen network, as written."""
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.float_eval import FloatEvaluator
    from qsnn.sim.fit import _signature, fit
    from qsnn.sim.validate import float_model_counts

    _, onnx = synthetic_export(precision="int4", arch=spec)
    profile = get_profile("fpga", weight_bits=8)
    counts = float_model_counts(FloatEvaluator(onnx), digits.x, "static", codes=True)

    def compile(p, allow_saturation=False):
        return compile_qonnx(onnx, p, allow_saturation=allow_saturation)

    out = fit(compile, profile, digits.x, digits.accuracy, counts, tolerance=0.05)
    chosen = out["chosen"]
    assert chosen is not None, out["rows"]
    words = out["profile_set"].split()
    assert words[:2] == ["--profile", "fpga"]
    fields = parse_overrides(words[3::2])
    assert fields["weight_bits"] == 8 and fields["membrane_bits"] == chosen["membrane_bits"]
    rebuilt = get_profile(words[1], **fields)
    picked = profile.replace(**{k: chosen[k] for k in ("membrane_bits", "frac_bits", "leak_bits") if k in chosen})
    assert rebuilt == picked
    proven = chosen["saturation_free"] == "proven"
    assert _signature(compile(rebuilt, allow_saturation=not proven)[0]) == _signature(
        compile(picked, allow_saturation=not proven)[0]
    )
