"""``qsnn-sim --explain``: where the integer network's spikes part from the trained model's, and why.

The agreement and the divergences are checked against a direct comparison of the two recorded runs,
the causes against the arithmetic (a profile that differs from the trained model in one effect
only), the re-simulated fixes against a direct compile + simulate; on real mnist5k digits, over
several network specs."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from qsnn.profiles import get_profile

SPECS = ["8C3-AP2-D10", "16C3s2p1-D10", "D32-D10"]
N = 48


@pytest.fixture(scope="module")
def digits():
    from qsnn.data import load_split

    data = load_split("mnist5k", "test", num_steps=8, subset=N)
    return data.x, data.y


def _explain(onnx, profile, x, y, **kw):
    from qsnn.export.compile import compile_qonnx, trained_neurons
    from qsnn.export.float_eval import FloatEvaluator
    from qsnn.sim.explain import TrainedNeurons, explain

    net, _ = compile_qonnx(onnx, profile)
    ev = FloatEvaluator(onnx)
    trained = [TrainedNeurons(**t) for t in trained_neurons(ev.graph)]
    out = explain(net, x, y, lambda xc: ev.run(xc, record=True), trained, **kw)
    return net, ev, out


@pytest.mark.parametrize("spec", SPECS)
def test_agreement_divergences_and_replay(synthetic_export, digits, spec):
    """Per layer and step, the agreement is the share of equal spike entries of the two runs; a layer's
    divergence is 'upstream' exactly when the layer below differed at that step or before; every
    replay of the chip's arithmetic gives the chip's spikes; records only for differing predictions."""
    from qsnn.sim import simulate
    from qsnn.sim.explain import UPSTREAM

    x, y = digits
    _, onnx = synthetic_export(precision="int4", arch=spec)
    net, ev, out = _explain(onnx, get_profile("fpga"), x, y, compile=None, chunk=20)
    flt = ev.run(x, record=True)
    chip = simulate(net, x, record=True)
    big = 10**9
    first_prev = None
    for i, layer in enumerate(net.layers):
        zf = flt[f"z{i + 1}"] > 0.5
        zc = chip.spikes[f"z{i + 1}"].astype(bool)
        equal = (zf == zc).reshape(net.num_steps, -1).mean(axis=1) * 100
        np.testing.assert_allclose(out["agreement_pct"][layer.name], equal, rtol=0, atol=1e-9)
        differs = (zf != zc).reshape(net.num_steps, len(x), -1).any(axis=2)
        first = np.where(differs.any(axis=0), differs.argmax(axis=0), big)
        started = out["causes"]["per_layer"][layer.name]
        diverging = int((first < big).sum())
        assert sum(started.values()) == diverging
        upstream = 0 if first_prev is None else int(((first < big) & (first_prev <= first)).sum())
        assert started.get(UPSTREAM, 0) == upstream
        first_prev = first
    checks = out["replay_checks"]
    assert checks["neurons"] > 0 and checks["equal_to_chip"] == checks["neurons"]
    differ = np.flatnonzero(chip.predictions != np.argmax(flt[f"z{len(net.layers)}"].sum(axis=0), axis=1))
    assert [e["sample"] for e in out["examples"]] == differ.tolist() and out["predictions_differ"] == len(differ)
    for e in out["examples"]:
        f = e["first"]
        if "layer" in f:
            assert f["step"] == min(r["step"] for r in e["layers"])
            assert f["neurons"] and all(n["trained_spike"] != n["chip_spike"] for n in f["neurons"])


def test_chunks_do_not_change_the_answer(synthetic_export, digits):
    """Memory is bounded by chunks of samples; the totals do not depend on the chunk size."""
    x, y = digits
    _, onnx = synthetic_export(precision="int4", arch="8C3-AP2-D10")
    _, _, a = _explain(onnx, get_profile("fpga"), x, y, compile=None, chunk=7)
    _, _, b = _explain(onnx, get_profile("fpga"), x, y, compile=None, chunk=N)
    for key in ("causes", "agreement_pct", "examples", "causes_of_differing_predictions"):
        assert json.dumps(a[key], sort_keys=True) == json.dumps(b[key], sort_keys=True), key


def test_one_effect_is_named_the_cause(synthetic_export, digits):
    """A 40-bit membrane with many guard bits leaves the roundings far below θ; with the chip's zero reset
    against a subtract-trained model, the divergences that start in a layer are the reset's."""
    from qsnn.sim.explain import FLOAT, RESET, UPSTREAM

    x, y = digits
    _, onnx = synthetic_export(precision="int4", arch="8C3-AP2-D10")
    profile = get_profile("fpga", membrane_bits=40, frac_bits=24, leak_bits=20, reset="zero")
    _, _, out = _explain(onnx, profile, x, y, compile=None)
    local = {c: n for c, n in out["causes"]["started"].items() if c not in (UPSTREAM, FLOAT)}
    assert local.get(RESET, 0) > 0
    assert local[RESET] >= 0.9 * sum(local.values()), local
    # and the same network under the trained model's own reset: no reset cause at all
    _, _, same = _explain(onnx, profile.replace(reset="subtract"), x, y, compile=None)
    assert RESET not in same["causes"]["started"]


def test_delay_is_aligned_and_named(synthetic_export, digits):
    """A one-step synaptic delay the model was not trained with: layer l is compared l steps later, and
    what differs is put down to the delay or the rounding, never to a misaligned comparison."""
    from qsnn.sim.explain import DELAY, FLOAT, TRUNCATED

    x, y = digits
    _, onnx = synthetic_export(precision="int4", arch="8C3-AP2-D10")
    profile = get_profile("fpga", membrane_bits=40, frac_bits=24, leak_bits=20, synaptic_delay=1)
    net, _, out = _explain(onnx, profile, x, y, compile=None)
    assert out["alignment"]["chip_step_offset"] == {layer.name: i + 1 for i, layer in enumerate(net.layers)}
    first = net.layers[0].name
    # the first layer sees the same image one step later; what differs there comes from its warm-up step
    # (the bias alone at chip step 0), computed as the delay's effect, not as a rounding
    started = out["causes"]["per_layer"][first]
    assert started.get(DELAY, 0) > 0 and set(started) <= {DELAY, FLOAT}, started
    assert set(out["causes_of_differing_predictions"]) <= {DELAY, TRUNCATED, FLOAT}
    # at the first aligned step only one warm-up step lies behind: nearly every spike is the trained one
    assert out["agreement_pct"][first][0] > 99.0


def test_fixes_are_resimulated(synthetic_export, digits):
    """Each re-simulated fix is what compiling and simulating with that field gives."""
    from qsnn.export.compile import compile_qonnx
    from qsnn.sim import simulate

    x, y = digits
    _, onnx = synthetic_export(precision="int4", arch="8C3-AP2-D10")
    profile = get_profile("fpga")
    _, ev, out = _explain(onnx, profile, x, y, compile=lambda p: compile_qonnx(onnx, p))
    pf = np.argmax(ev.run(x)[f"z{2}"].sum(axis=0), axis=1)
    rows = [r for row in out["fixes"][1:] for r in row["resimulated"]]
    assert rows, out["fixes"]
    for r in rows:
        net, _ = compile_qonnx(onnx, profile.replace(**r["change"]))
        res = simulate(net, x)
        assert r["accuracy"] == pytest.approx(float(np.mean(res.predictions == y)))
        assert r["predictions_equal_pct"] == pytest.approx(100 * float(np.mean(res.predictions == pf)))


def test_cli_explain_report_plot_and_refusals(synthetic_export, tmp_path):
    from qsnn.export.qonnx_int import export_integer
    from qsnn.sim.cli import main

    ckpt, onnx = synthetic_export(precision="int4", arch="8C3-AP2-D10")
    report, png = tmp_path / "r.json", tmp_path / "a.png"
    args = [str(onnx), "--subset", "30", "--explain", "--explain-plot", str(png), "--report", str(report)]
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "cause" in res.output and "what to change" in res.output and f"explain plot: {png}" in res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads(report.read_text())
    assert len(data["explain"]["agreement_pct"]) == 2 and data["explain"]["replay_checks"]["neurons"] > 0
    # without the trained model there is nothing to compare: one line each, nothing written
    out2 = tmp_path / "r2.json"
    bad = CliRunner().invoke(main, [str(onnx), "--explain", "--no-float", "--report", str(out2)])
    assert bad.exit_code == 1 and "--no-float" in bad.output and len(bad.output.strip().splitlines()) == 1
    from qsnn.export.compile import compile_qonnx

    net, _ = compile_qonnx(onnx, get_profile("fpga"))
    integer = export_integer(net, tmp_path / "m.fpga.onnx")
    bad = CliRunner().invoke(main, [str(integer), "--explain", "--report", str(out2)])
    assert bad.exit_code == 1 and "float export" in bad.output and len(bad.output.strip().splitlines()) == 1
    assert not out2.exists()
