"""Target round trips on a really trained model, through the simulator, on the full mnist5k test split.

trained_run() → export_float → compile_qonnx (fpga profile for the fpga and nir targets, loihi2 for
loihi2) → write_target → read_target → simulate: spike trains identical to the original's, every
layer, all 500 test images, the fixture's T. Plus: the fpga memories parsed by independent parsers,
the weight-memory size of the int4 network. The NIR consumers: test_nir_consumers.py.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_targets import assert_same_network, check_fpga_files

from qsnn.profiles import FPGA, LOIHI2
from qsnn.sim.engine import simulate
from qsnn.targets import read_manifest, read_target, write_target

PROFILES = {"fpga": FPGA, "loihi2": LOIHI2}


@pytest.fixture(scope="module")
def trained(trained_run, tmp_path_factory):
    """The trained mnist5k int4 model compiled under both profiles, the test split, and reference runs."""
    from qsnn.data import load_split
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.qonnx_float import export_float

    run = trained_run()
    folder = tmp_path_factory.mktemp("targets-trained")
    onnx_path = export_float(run / "best.pt", folder / "model.onnx")
    split = load_split("mnist5k", "test")
    nets, refs = {}, {}
    for name, profile in PROFILES.items():
        nets[name], _ = compile_qonnx(onnx_path, profile)
        refs[name] = simulate(nets[name], split.x, record=True)
    metrics = json.loads((run / "metrics.json").read_text())
    return {
        "folder": folder,
        "split": split,
        "nets": nets,
        "refs": refs,
        "metrics": metrics,
        "checkpoint": run / "best.pt",
    }


@pytest.mark.parametrize("target,profile", [("fpga", "fpga"), ("nir", "fpga"), ("loihi2", "loihi2")])
def test_round_trip_trained_model_spikes_identical(trained, target, profile):
    net = trained["nets"][profile]
    split = trained["split"]
    assert len(split.x) == 500
    out = write_target(target, net, trained["folder"] / target, source_info={"checkpoint": str(trained["checkpoint"])})
    back = read_target(out)
    assert_same_network(net, back)
    ref = trained["refs"][profile]
    got = simulate(back, split.x, record=True)
    assert got.num_steps == net.num_steps == 8
    assert ref.spikes.keys() == got.spikes.keys() == {"z1", "z2", "z3"}
    for key in ref.spikes:
        assert np.array_equal(ref.spikes[key], got.spikes[key]), f"{target}: {key} differs"
    assert np.array_equal(ref.predictions, got.predictions)


def test_fpga_files_of_trained_model_parse_independently(trained):
    net = trained["nets"]["fpga"]
    out = trained["folder"] / "fpga"
    if not out.exists():
        write_target("fpga", net, out)
    check_fpga_files(out, net)


def test_weight_memory_bits_of_the_mnist_int4_network(trained):
    net = trained["nets"]["fpga"]
    out = write_target("fpga", net, trained["folder"] / "fpga-bits", force=True)
    manifest = read_manifest(out)
    expected = {"conv1": 16 * 1 * 5 * 5, "conv2": 64 * 16 * 5 * 5, "fc": 10 * 1024}
    for layer, rec in zip(net.layers, manifest["layers"]):
        mem = rec["weight_memory"]
        assert mem["weights"] == layer.weight.size == expected[layer.name]
        assert mem["weight_bits"] == 4 and mem["word_bits"] == 32
        # 4 bits per weight, plus the padding the packing states (at most one word)
        assert mem["bits"] == mem["depth"] * mem["width"] == 4 * (mem["weights"] + mem["padding_weights"])
        assert 0 <= mem["padding_weights"] < mem["weights_per_word"]
        assert manifest["weight_memory_bits"][layer.name] == mem["bits"]
    # these shapes pack exactly: 400, 25600 and 10240 weights are multiples of 8
    assert manifest["weight_memory_bits"] == {"conv1": 1600, "conv2": 102400, "fc": 40960}


def test_target_checks_run_a_stratified_subset(trained, monkeypatch, tmp_path):
    """make lava-check and make nir-check run N inputs of every class (check_inputs, as qsnn-rtl-sim -n N),
    not the first N of the split: mnist5k's test split is stored digit by digit, so the first 10 were ten
    zeros and a network whose output never fires scored 100 %. The consumers are replaced by qsnn-sim
    (Lava and the NIR importers have tests of their own); what is checked is the inputs each check feeds."""
    import sys
    from pathlib import Path

    from qsnn.targets.inputs import check_inputs
    from qsnn.targets.loihi2 import lava_check, lava_env

    assert set(trained["split"].y[:10]) == {0}  # why the first N would not do
    fed: dict[str, np.ndarray] = {}

    def fake_lava(folder, x, python=None):
        fed["lava"] = x
        sim = simulate(read_target(folder), x, record=True)
        return {**sim.spikes, "predictions": sim.predictions, "counts": sim.counts, "seconds": 0.0}

    monkeypatch.setattr(lava_env, "ensure", lambda log=print: sys.executable)
    monkeypatch.setattr(lava_env, "run_folder", fake_lava)
    result = lava_check.check(trained["checkpoint"], 10, log=lambda _m: None)
    _, want = check_inputs(trained["nets"]["loihi2"], 10)
    assert np.array_equal(fed["lava"], want.x) and sorted(want.y) == list(range(10))
    assert result["images"] == result["samples"] == 10 and result["bit_exact"]
    assert result["accuracy_qsnn_pct"] == 100.0 * want.accuracy(simulate(trained["nets"]["loihi2"], want.x).counts)

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "nir_consumers"))
    import check as nir_check

    def fake_consumer(consumer, nir_file, x, T, subtract, python=None):
        fed["nir"] = x
        return simulate(read_target(Path(nir_file).parent), x, record=True).spikes

    monkeypatch.setattr(nir_check, "run_consumer", fake_consumer)
    results = nir_check.check(trained["checkpoint"], tmp_path / "nir-check", 10, ["snntorch"], log=lambda _m: None)
    _, want = check_inputs(trained["nets"]["fpga"], 10)
    assert np.array_equal(fed["nir"], want.x) and results["images"] == 10 and results["dataset"] == "mnist5k"
    assert "10 mnist5k test images" in (tmp_path / "nir-check" / "nir_check.md").read_text()


def test_lava_check_report_follows_the_output_rule(trained, monkeypatch, tmp_path, capsys):
    """make lava-check --report never overwrites without --force, never replaces a file qsnn did not write
    (refused in one line before Lava starts), and replaces its own earlier report with --force."""
    import sys

    from qsnn.targets.loihi2 import lava_check, lava_env

    runs = []

    def fake_lava(folder, x, python=None):  # qsnn-sim in Lava's place: this test is about the report file
        runs.append(len(x))
        sim = simulate(read_target(folder), x, record=True)
        return {**sim.spikes, "predictions": sim.predictions, "counts": sim.counts, "seconds": 0.0}

    monkeypatch.setattr(lava_env, "ensure", lambda log=print: sys.executable)
    monkeypatch.setattr(lava_env, "run_folder", fake_lava)
    base = ["--checkpoint", str(trained["checkpoint"]), "--images", "10", "--report"]

    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": 1}')
    with pytest.raises(SystemExit) as info:
        lava_check.main([*base, str(notes), "--force"])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1 and len(err.splitlines()) == 1 and str(notes) in err
    assert notes.read_text() == '{"mine": 1}' and runs == []  # refused before Lava ran

    report = tmp_path / "lava.json"
    with pytest.raises(SystemExit) as info:
        lava_check.main([*base, str(report)])
    assert info.value.code == 0 and json.loads(report.read_text())["bit_exact"] and runs == [10]
    first = report.read_text()
    with pytest.raises(SystemExit) as info:
        lava_check.main([*base, str(report)])  # exists: --force is needed
    assert info.value.code == 1 and "--force" in capsys.readouterr().err and runs == [10]
    assert report.read_text() == first
    with pytest.raises(SystemExit) as info:
        lava_check.main([*base, str(report), "--force"])
    assert info.value.code == 0 and runs == [10, 10]


@pytest.mark.parametrize("dataset,bits", [("mnist5k", 6), ("dvs128", 8)])
def test_lava_check_profile_set_reaches_the_compile(trained_run, dataset, bits, monkeypatch, tmp_path, capsys):
    """make lava-check LAVA_CHECK_ARGS="--profile-set FIELD=VALUE": the loihi2 folder Lava runs is compiled
    with the change, as qsnn-export --to loihi2 --profile-set compiles it (mnist5k: a 6-bit weight memory, where
    the compiler's resolution multiplier stops at ±31 instead of the folded ±112 of 8 bits; the DVS model needs
    its 8 bits: at 6 or 7 its conv1 threshold would be under 16 steps); a setting Lava cannot compute, a misspelt field, or weights the network does not fit are refused
    in one line, with nothing written and Lava never started. qsnn-sim runs in Lava's place (tests/test_lava.py
    holds Lava itself to the folder)."""
    import sys

    from qsnn.export.compile import compile_qonnx
    from qsnn.export.qonnx_float import export_float
    from qsnn.targets.inputs import check_inputs
    from qsnn.targets.loihi2 import lava_check, lava_env
    from qsnn.targets.loihi2.netx import netx_weight

    source = trained_run(dataset) / "best.pt"  # its data where training read them (the export's metadata)
    ran: list = []

    def fake_lava(folder, x, python=None):
        net = read_target(folder)
        ran.append((net, x))
        sim = simulate(net, x, record=True)
        return {**sim.spikes, "predictions": sim.predictions, "counts": sim.counts, "seconds": 0.0}

    monkeypatch.setattr(lava_env, "ensure", lambda log=print: ran.append("ensure") or sys.executable)
    monkeypatch.setattr(lava_env, "run_folder", fake_lava)
    report = tmp_path / "lava.json"
    base = ["--checkpoint", str(source), "--images", "11", "--report", str(report)]
    with pytest.raises(SystemExit) as info:
        lava_check.main([*base, "--profile-set", f"weight_bits={bits}"])
    assert info.value.code == 0
    net, x = ran[-1]
    want, _ = compile_qonnx(export_float(source, tmp_path / "model.onnx"), LOIHI2.replace(weight_bits=bits))
    assert net.profile.weight_bits == bits and net.profile == want.profile
    assert_same_network(net, want)
    wmax = (1 << (bits - 1)) - 1
    assert max(int(abs(netx_weight(layer)).max()) for layer in net.layers) <= wmax
    plain, _ = compile_qonnx(tmp_path / "model.onnx", LOIHI2)
    if bits < LOIHI2.weight_bits:  # the setting changed the network
        assert max(int(abs(netx_weight(layer)).max()) for layer in plain.layers) > wmax
    assert np.array_equal(x, check_inputs(want, 11)[1].x)
    saved = json.loads(report.read_text())
    assert saved["profile_sets"] == [f"weight_bits={bits}"] and saved["profile"]["weight_bits"] == bits
    assert saved["bit_exact"] and f"--profile-set weight_bits={bits}" in capsys.readouterr().out

    report.unlink()
    calls = len(ran)
    for setting, says in [
        ("reset=subtract", "reset='subtract' (needs 'zero')"),
        ("membrane_bits=32", "membrane_bits=32 (needs 24)"),
        ("weight_bit=6", "unknown profile field 'weight_bit'"),
        ("weight_bits=six", "'six' is not a valid int"),
        ("weight_bits=3", "use --profile-set weight_bits="),
        ("max_neurons=1000", "neurons"),
    ]:
        with pytest.raises(SystemExit) as info:
            lava_check.main([*base, "--profile-set", setting])
        err = capsys.readouterr().err.strip()
        assert info.value.code == 1 and len(err.splitlines()) == 1, err
        assert says in err and err.startswith("error: "), err
        assert len(ran) == calls and not report.exists()  # refused before Lava was built or run
