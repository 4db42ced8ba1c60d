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
