"""qsnn's NIR files in the NIR consumers, each through its own importer, on real mnist5k test images.

The trained fixture model (T = 8) is compiled under ``fpga`` and written as a NIR folder of the
consumer's flavour; ``tools/nir_consumers/run_consumer.py`` loads it with the consumer's importer,
unmodified, and records every layer's spikes over T steps on 100 test images (10 of each digit).

What NIR's semantics allow us to assert:

* NIR is real-valued and resets to 0 right after a spike; the chip floors and saturates on an
  integer grid and subtracts θ one step later. So a consumer's spikes are compared with the same
  network in real arithmetic under the consumer's own neuron rule (``check.real_valued``: zero
  reset, ``>=`` for spikingjelly's Heaviside, Spyx's previous-step spikes, Sinabs' MultiSpike): ≥ 99 % of spike
  entries equal in every layer (the rest is float32 vs float64 rounding at the threshold), and
  predictions within 1 point of that reference's accuracy.
* With the consumer's subtract-reset option the same holds against its rule; snnTorch's option
  (``reset_mechanism="subtract"``, delayed) is qsnn's own rule.
* Sinabs and Spyx run in venvs of their own (``make nir-venvs``, about 2 and 3 minutes to build on
  2 cores, 1.1 GB and 0.8 GB): their tests run when the venv is there and are skipped otherwise
  (``make nir-check`` builds them), to keep CI lean.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools" / "nir_consumers"))

import check as nir_check  # noqa: E402

from qsnn.profiles import FPGA  # noqa: E402

IMAGES = 100
MAIN_ENV = ["snntorch", "spikingjelly", "norse"]


@pytest.fixture(scope="module")
def model(trained_run, tmp_path_factory):
    from qsnn.sim.engine import simulate
    from qsnn.targets.inputs import check_inputs

    folder = tmp_path_factory.mktemp("nir-consumers")
    net = nir_check.compile_fpga(trained_run() / "best.pt", folder)
    _, split = check_inputs(net, IMAGES)  # what make nir-check runs: 10 of each digit
    x, y = split.x, split.y
    zero = dataclasses.replace(net, profile=net.profile.replace(reset="zero"))
    return {
        "net": net,
        "x": x,
        "y": y,
        "folder": folder,
        "qsnn": simulate(net, x, record=True),
        "qsnn_zero_reset": simulate(zero, x),
        "files": {},
    }


def _nir_file(model, flavor: str) -> Path:
    from qsnn.targets import write_target

    if flavor not in model["files"]:
        model["files"][flavor] = (
            write_target("nir", model["net"], model["folder"] / flavor, flavor=flavor) / "network.nir"
        )
    return model["files"][flavor]


def _accuracy(spikes, y) -> float:
    return 100.0 * float(np.mean(nir_check.predictions(spikes[max(spikes)]) == y))


def _check_consumer(model, consumer: str, subtract: bool) -> None:
    flavor = nir_check.CONSUMERS[consumer][0]
    net, x, y = model["net"], model["x"], model["y"]
    got = nir_check.run_consumer(consumer, _nir_file(model, flavor), x, net.num_steps, subtract=subtract)
    assert sorted(got) == ["z1", "z2", "z3"]
    ref = nir_check.real_valued(net, x, *nir_check.SEMANTICS[consumer][int(subtract)])
    rows = nir_check.agreement(got, ref)
    for row in rows:
        assert row["entries"] >= 99.0, f"{consumer}: {row}"
    assert abs(_accuracy(got, y) - _accuracy(ref, y)) <= 1.0
    # the real-valued network is a close relative of the chip's under the same reset: the same class for
    # most images (measured on 10 of each digit: 97 % under NIR's zero reset, 96-100 % with the subtract
    # option; against the chip's own delayed subtract a zero-reset consumer agrees on 77 %). Spyx's layers
    # pass on the previous step's spikes, one step later per layer: 78-81 %.
    reset, _compare, emit_previous = nir_check.SEMANTICS[consumer][int(subtract)]
    chip = model["qsnn_zero_reset"] if reset == "zero" else model["qsnn"]
    agree = np.mean(nir_check.predictions(got[max(got)]) == chip.predictions)
    assert agree >= (0.75 if emit_previous else 0.9), f"{consumer}: {agree:.2f} of predictions equal"


@pytest.mark.parametrize("subtract", [False, True], ids=["nir-zero-reset", "subtract-option"])
@pytest.mark.parametrize("consumer", MAIN_ENV)
def test_consumer_runs_the_standard_file_unmodified(model, consumer, subtract):
    _check_consumer(model, consumer, subtract)


def test_snntorch_subtract_option_is_qsnns_rule(model):
    """snnTorch's delayed subtract reset is qsnn's neuron: only the integer grid differs from the chip."""
    net, x = model["net"], model["x"]
    got = nir_check.run_consumer("snntorch", _nir_file(model, "standard"), x, net.num_steps, subtract=True)
    ref = nir_check.real_valued(net, x, "subtract-delayed", ">", False)
    assert all(row["entries"] >= 99.0 for row in nir_check.agreement(got, ref))


@pytest.mark.parametrize(
    "consumer", [pytest.param(name, marks=pytest.mark.nir_venv(name)) for name in ("spyx", "sinabs")]
)
def test_consumer_in_its_own_venv(model, consumer):
    _check_consumer(model, consumer, subtract=False)


@pytest.fixture(scope="module")
def stacks(tmp_path_factory):
    """Hand-built fpga networks of other shapes (test_targets.STACKS), their NIR files and qsnn-sim runs."""
    from test_targets import images, stack_net

    from qsnn.sim.engine import simulate
    from qsnn.targets import write_target

    folder = tmp_path_factory.mktemp("nir-stacks")
    x = images(IMAGES, seed=2)
    out = {}
    for name in ("conv3_s2p1", "s3p2_pool3", "dense2", "dense3", "four", "w8"):
        net = stack_net(FPGA, name, seed=5, num_steps=8)
        standard = write_target("nir", net, folder / name / "standard") / "network.nir"
        out[name] = {
            "net": net,
            "folder": folder / name,
            "files": {c: standard for c in MAIN_ENV},
            "qsnn": simulate(net, x, record=True),
        }
    return x, out


@pytest.mark.parametrize("subtract", [False, True], ids=["nir-zero-reset", "subtract-option"])
@pytest.mark.parametrize(
    "consumer", [*MAIN_ENV, pytest.param("spyx", marks=[pytest.mark.nir_venv("spyx"), pytest.mark.slow])]
)
@pytest.mark.parametrize("stack", ["conv3_s2p1", "s3p2_pool3", "dense2", "dense3", "four", "w8"])
def test_consumer_runs_any_stack(stacks, stack, consumer, subtract):
    """Conv stride and zero padding (Conv2d's own fields), dense-only nets, four layers, 8-bit weights: every
    layer's spikes as the real-valued network's under the consumer's rule (this network's thresholds are odd
    and its currents even, so no membrane sits on a threshold and float32 decides every spike as float64).
    Spyx in its own venv (flavour spyx); Sinabs runs these files too, but its MultiSpike is not held to
    these bounds (98.2 % of entries in the 4th layer of ``four``, 64 % of predictions equal to qsnn-sim's)."""
    x, nets = stacks
    case = nets[stack]
    net = case["net"]
    if consumer == "spyx" and subtract:
        pytest.skip("Spyx subtracts already: no option to switch")
    nir_file = case["files"].get(consumer)
    if nir_file is None:
        from qsnn.targets import write_target

        flavor = nir_check.CONSUMERS[consumer][0]
        nir_file = case["files"][consumer] = (
            write_target("nir", net, case["folder"] / flavor, flavor=flavor) / "network.nir"
        )
    got = nir_check.run_consumer(consumer, nir_file, x, net.num_steps, subtract=subtract)
    assert sorted(got) == [f"z{i}" for i in range(1, len(net.layers) + 1)]
    ref = nir_check.real_valued(net, x, *nir_check.SEMANTICS[consumer][int(subtract)])
    for row in nir_check.agreement(got, ref):
        assert row["entries"] >= 99.0, f"{consumer} on {stack}: {row}"
    last = f"z{len(net.layers)}"
    assert np.mean(nir_check.predictions(got[last]) == nir_check.predictions(ref[last])) >= 0.98
    assert np.mean(nir_check.predictions(got[last]) == case["qsnn"].predictions) >= 0.8


def test_standard_file_is_valid_nir_and_states_dt_and_reset(model):
    import nir

    graph = nir.read(_nir_file(model, "standard"))  # type-checks every edge
    assert graph.metadata["dt"] == 1e-4
    assert "zero" in graph.metadata["reset"] and "subtract" in graph.metadata["qsnn_reset"]
    assert not any(type(n).__name__ in ("AvgPool2d", "SumPool2d") for n in graph.nodes.values())


#: Hand-built stacks run as event models (a new count frame at every step).
EVENT_STACKS = ("conv3_s2p1", "dense2", "w8")


@pytest.fixture(scope="module")
def event_stacks(tmp_path_factory):
    """The stacks of ``stacks`` as event models: random count frames (N, T, C, H, W) clipped at 255 (8-bit
    event counts), a new frame at every step, and their qsnn-sim runs (frame t at step t)."""
    from test_targets import stack_net

    from qsnn.sim.engine import simulate

    folder = tmp_path_factory.mktemp("nir-event-stacks")
    T = 8
    x = np.random.default_rng(3).integers(0, 256, size=(IMAGES // 2, T, 1, 14, 14)).astype(np.uint8)
    out = {}
    for name in EVENT_STACKS:
        net = dataclasses.replace(stack_net(FPGA, name, seed=5, num_steps=T), encoding="events", input_max=255)
        out[name] = {"net": net, "folder": folder / name, "files": {}, "qsnn": simulate(net, x, record=True)}
    return x, out


@pytest.mark.parametrize("stack", EVENT_STACKS)
def test_real_valued_reference_takes_event_frames_as_qsnn_sim(event_stacks, stack):
    """The reference the consumers are held to feeds frame t at step t, as qsnn-sim does: under the chip's
    rule (delayed subtract) its first layer's spikes are qsnn-sim's but for the integer grid (≥ 98.5 % of
    entries); fed the first frame at every step, as a static image, they would not (81-86 %)."""
    x, nets = event_stacks
    net, ours = nets[stack]["net"], nets[stack]["qsnn"]
    assert x.ndim == 5 and ours.num_steps == x.shape[1]

    def z1_equal(inputs) -> float:
        ref = nir_check.real_valued(net, inputs, "subtract-delayed", ">", False)
        return nir_check.agreement({"z1": ref["z1"]}, {"z1": ours.spikes["z1"]})[0]["entries"]

    assert z1_equal(x) >= 98.5
    assert z1_equal(x[:, 0]) < 95.0


@pytest.mark.parametrize(
    "consumer",
    [
        *MAIN_ENV,
        pytest.param("spyx", marks=[pytest.mark.nir_venv("spyx"), pytest.mark.slow]),
        pytest.param("sinabs", marks=pytest.mark.nir_venv("sinabs")),
    ],
)
@pytest.mark.parametrize("stack", EVENT_STACKS)
def test_consumer_takes_event_frames_step_by_step(event_stacks, stack, consumer):
    """An event model's NIR file in each consumer, its input a new count frame at every step (run_consumer's
    step_inputs: frame t at step t in each consumer's own layout): every layer's spikes as the real-valued
    network's under the consumer's rule, and the same predictions."""
    from qsnn.targets import write_target

    x, nets = event_stacks
    case = nets[stack]
    net, flavor = case["net"], nir_check.CONSUMERS[consumer][0]
    if flavor not in case["files"]:
        case["files"][flavor] = write_target("nir", net, case["folder"] / flavor, flavor=flavor) / "network.nir"
    got = nir_check.run_consumer(consumer, case["files"][flavor], x, net.num_steps, subtract=False)
    ref = nir_check.real_valued(net, x, *nir_check.SEMANTICS[consumer][0])
    assert sorted(got) == sorted(ref) == [f"z{i}" for i in range(1, len(net.layers) + 1)]
    for row in nir_check.agreement(got, ref):
        assert row["entries"] >= 99.0, f"{consumer} on {stack}: {row}"
    last = f"z{len(net.layers)}"
    assert np.mean(nir_check.predictions(got[last]) == nir_check.predictions(ref[last])) >= 0.98


def test_check_runs_an_event_model(trained_run, dvs_data_dir, tmp_path):
    """make nir-check on a DVS128 model (the fixture's, T = 8): its test recordings read with the model's
    encoding, each consumer fed frame t at step t, every layer's spikes as the real-valued network's under
    the consumer's rule (and with its subtract option), accuracies per recording. Binary events put many
    first-layer membranes exactly on a threshold (a sum of integer weights), which float32 decides either
    way (measured: every z1 entry that differs sits on its threshold, 16 of 67 such entries); a flipped spike
    carries on to the next layers: 99.99-100 / 99.8-99.96 / 98.9-99.85 % of entries (z1 / z2 / z3)."""
    from qsnn.errors import DataError
    from qsnn.targets.inputs import check_inputs

    source = trained_run(dataset="dvs128") / "best.pt"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=str(empty)):  # --data-dir is where the recordings are read
        nir_check.check(source, tmp_path / "out", 22, MAIN_ENV, log=lambda _m: None, data_dir=str(empty))
    assert not (tmp_path / "out").exists()
    results = nir_check.check(source, tmp_path / "out", 22, MAIN_ENV, log=lambda _m: None, data_dir=str(dvs_data_dir))
    net = nir_check.compile_fpga(source, tmp_path)
    _, split = check_inputs(net, 22)
    assert split.x.ndim == 5 and split.x.shape[1] == net.num_steps == results["num_steps"] == 8
    assert results["encoding"] == "events" and results["images"] == results["samples"] == 22
    assert sorted(set(split.y)) == list(range(11))  # two recordings of each gesture
    for consumer in MAIN_ENV:
        row = results["consumers"][consumer]
        assert row["runs"], row.get("error")
        for key in ("spikes_vs_real_valued", "spikes_subtract_vs_real_valued"):
            assert [r["layer"] for r in row[key]] == ["z1", "z2", "z3"]
            assert row[key][0]["entries"] >= 99.9 and all(r["entries"] >= 98.5 for r in row[key]), (consumer, row)
    table = (tmp_path / "out" / "nir_check.md").read_text()
    assert "22 dvs128 test recordings" in table and "clipped at 1," in table


def test_output_spikes_are_the_last_layers_of_a_deep_net():
    """Ten layers or more: z10 is the output, not z9 (which the keys' string order puts last)."""
    spikes = {f"z{i}": np.full((2, 1, 3), i, dtype=np.uint8) for i in range(1, 12)}
    assert int(nir_check.output_spikes(spikes).max()) == 11


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_check_runs_a_model_of_your_own_on_the_dataset_given(tmp_path, kind):
    """make nir-check NIR_CHECK_SOURCE=mine.onnx NIR_CHECK_ARGS="--dataset D": an export_torch model records
    no dataset; without --dataset the check says to give one (the option it takes) and writes nothing, with
    it snnTorch runs the NIR file on D's test samples with every layer's spikes those of the real-valued
    network (a conv net on mnist5k, a dense net on RGB arrays:), the table naming D."""
    from fixtures import own_sequential_export

    from qsnn.errors import DataError

    onnx_path, dataset = own_sequential_export(tmp_path / "mine.onnx", kind, tmp_path / "data")
    out = tmp_path / "out"
    with pytest.raises(DataError, match="does not record a dataset.*pass --dataset"):
        nir_check.check(onnx_path, out, 6, ["snntorch"], log=lambda _m: None)
    assert not out.exists()
    assert (
        nir_check.main(
            [str(onnx_path), "--images", "6", "--consumers", "snntorch", "--out", str(out), "--dataset", dataset]
        )
        == 0
    )
    results = nir_check.check(onnx_path, out, 6, ["snntorch"], log=lambda _m: None, dataset=dataset)
    assert results["dataset"] == dataset and results["samples"] == 6
    row = results["consumers"]["snntorch"]
    assert row["runs"], row.get("error")
    assert all(r["entries"] >= 99.0 for r in row["spikes_vs_real_valued"]), row
    assert f"6 {dataset} test" in (out / "nir_check.md").read_text()
