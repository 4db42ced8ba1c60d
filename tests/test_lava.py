"""Stock Lava runs the loihi2 folder exactly as ``qsnn-sim --profile loihi2`` says (the ground truth).

The folder is written by ``qsnn-export --to loihi2`` from a really trained mnist5k model and run in
the Lava venv (Python 3.10, lava-nc 0.10, lava-dl 0.6, about 5.6 GB, cached outside the checkout
under ``~/.cache/qsnn/lava-<requirements hash>``) exactly as its README says: ``netx.hdf5.Network(net_config=…, input_message_bits=8)``, a
RingBuffer of uint8 frames, ``Loihi2SimCfg(select_tag="fixed_pt")``. Every layer's spikes at every
step must equal qsnn's engine on real test images; the README's snippet must run unedited and print
the class qsnn predicts. ``make lava-check N=50`` runs the same comparison on more images. Event models
(DVS128 fixture recordings: event frames read with the model's encoding, a test split cut into windows,
Table I's DVS int4 row) go through lava_check's own ``check()``.

The venv is built by ``make lava`` (about 7 minutes), not by ``make test``: without it these tests
are skipped, saying so, before any model is trained. ``make test-lava`` builds it and runs them.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qsnn.data import load_split
from qsnn.sim import simulate
from qsnn.targets import read_target
from qsnn.targets.loihi2 import lava_env
from qsnn.targets.loihi2.lava_check import compare

IMAGES = 10

pytestmark = [pytest.mark.slow, pytest.mark.lava]  # lava: skipped, saying so, without the Lava venv


@pytest.fixture(scope="module")
def lava_python() -> Path:
    return lava_env.venv_python()


@pytest.fixture(scope="module")
def loihi2_folder(lava_python, trained_run, tmp_path_factory) -> Path:
    from click.testing import CliRunner

    from qsnn.export.cli import main

    run = trained_run("mnist5k", "int4")
    out = tmp_path_factory.mktemp("lava") / "loihi2"
    result = CliRunner().invoke(main, [str(run / "best.pt"), "--to", "loihi2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_lava_equals_qsnn_sim_on_every_layer_and_step(lava_python, loihi2_folder):
    net = read_target(loihi2_folder)
    x = load_split("mnist5k", "test").x[:IMAGES]
    lava = lava_env.run_folder(loihi2_folder, x, python=lava_python)
    sim = simulate(net, x, record=True)
    result = compare(sim.spikes, lava, sim.predictions)
    for key, layer in result["layers"].items():
        assert layer["equal_pct"] == 100.0, (key, layer)
        assert np.array_equal(sim.spikes[key], lava[key])
        assert layer["spikes_qsnn"] > 0  # the layers are active: the comparison says something
    assert np.array_equal(sim.predictions, lava["predictions"])
    assert np.array_equal(sim.counts, lava["counts"])


@pytest.fixture(scope="module")
def stack_folders(lava_python, tmp_path_factory):
    """Hand-built loihi2 networks of other shapes (test_targets.STACKS) written as loihi2 folders."""
    from test_targets import STACKS, images, stack_net

    from qsnn.profiles import LOIHI2
    from qsnn.targets import write_target

    root = tmp_path_factory.mktemp("lava-stacks")
    x = images(4, seed=3)
    return x, {
        name: write_target("loihi2", stack_net(LOIHI2, name, seed=6, num_steps=12), root / name, example=x[0])
        for name in STACKS
    }


@pytest.mark.parametrize("stack", ["conv3_s2p1", "s3p2_pool3", "dense2", "dense3", "four", "w8"])
def test_lava_runs_any_stack_bit_exactly(lava_python, stack_folders, stack):
    """Conv stride and zero padding (netx's own conv fields; with pooling folded in: kernel k+s(P−1), stride
    s·P), dense-only nets (input → flatten → dense), four layers, 8-bit weights: every layer's spikes at
    every step equal to qsnn-sim's (and to the literal reference simulator's)."""
    from qsnn.sim.reference import simulate_reference

    x, folders = stack_folders
    folder = folders[stack]
    net = read_target(folder)
    lava = lava_env.run_folder(folder, x, python=lava_python)
    sim = simulate(net, x, record=True)
    ref = simulate_reference(net, x)
    assert sorted(lava) == sorted([*sim.spikes, "counts", "predictions", "seconds"])
    for key in sim.spikes:
        assert np.array_equal(sim.spikes[key], ref[key]), key
        assert np.array_equal(sim.spikes[key], lava[key]), (stack, key, compare(sim.spikes, lava, sim.predictions))
        assert sim.spikes[key].any(), key  # every layer is active: the comparison says something
    assert np.array_equal(sim.predictions, lava["predictions"])


def test_readme_snippet_of_a_dense_only_net(lava_python, stack_folders):
    """A dense-only net's input port is the flat (C·H·W,) vector: the README's snippet feeds it so."""
    _, folders = stack_folders
    folder = folders["dense2"]
    snippet = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    assert "x.reshape(-1, 1)" in snippet
    proc = subprocess.run([str(lava_python), "-c", snippet], cwd=folder, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = simulate(read_target(folder), np.load(folder / "example_input.npy")[None]).predictions[0]
    assert f"predicted class: {int(expected)}" in proc.stdout


def test_readme_snippet_runs_unedited_and_prints_the_class(lava_python, loihi2_folder):
    readme = (loihi2_folder / "README.md").read_text()
    snippet = re.search(r"```python\n(.*?)```", readme, re.S).group(1)
    proc = subprocess.run(
        [str(lava_python), "-c", snippet], cwd=loihi2_folder, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = re.search(r"predicted class: (\d+)", proc.stdout)
    assert printed, proc.stdout
    example = np.load(loihi2_folder / "example_input.npy")
    assert np.array_equal(example, load_split("mnist5k", "test").x[0])  # a real test image
    expected = simulate(read_target(loihi2_folder), example[None]).predictions[0]
    assert int(printed.group(1)) == int(expected)


# --------------------------------------------------------------------------------------------------
# Event models (DVS128 Gesture frames): the encoding travels with the model into Lava

DVS_SAMPLES = 12


def table1_dvs_neuron() -> dict:
    """Table I's DVS128 int4 row's neuron (β 0.61, θ 0.4, k 4.4, no BatchNorm), read from the preset table."""
    from fixtures import DVS_FIXTURE_NEURON

    from qsnn.config import TrainConfig

    row = TrainConfig.from_preset("dvs128", "int4")
    return {key: getattr(row, key) for key in DVS_FIXTURE_NEURON}


#: case → (trained_run options, samples or recordings). "table1": Table I's row, trained longer (at 2
#: epochs its output layer stays silent on the fixture, and a silent layer compares nothing).
DVS_CASES = {
    "fixture": ({}, DVS_SAMPLES),
    "windows": ({"test_cut": "windows"}, 2),
    "table1": ({**table1_dvs_neuron(), "epochs": 8, "cosine_period_epochs": 8.0}, DVS_SAMPLES),
}


def test_lava_check_with_a_profile_change_bit_exactly(lava_python, trained_run):
    """lava_check's check() with --profile-set weight_bits=6 (a 6-bit weight memory: the compiler's resolution
    multiplier stops at ±31): Lava runs the folder compiled with the change, every layer's spikes at every step
    equal to qsnn-sim's under the same profile."""
    from qsnn.targets.loihi2.lava_check import check

    result = check(
        trained_run("mnist5k", "int4") / "best.pt",
        IMAGES,
        python=str(lava_python),
        profile_sets=("weight_bits=6",),
        log=lambda _m: None,
    )
    assert result["profile"]["weight_bits"] == 6 and result["bit_exact"], result
    for key, layer in result["layers"].items():
        assert layer["equal_pct"] == 100.0 and layer["spikes_qsnn"] == layer["spikes_lava"] > 0, (key, layer)
    assert result["accuracy_lava_pct"] == result["accuracy_qsnn_pct"]


@pytest.mark.parametrize("case", sorted(DVS_CASES))
def test_event_model_through_lava_check_bit_exactly(lava_python, trained_run, dvs_data_dir, case):
    """A DVS128 model (event frames: binary counts, T = 8) through lava_check's check(): the loihi2 folder
    compiled with no overrides, its data read with the model's encoding, every layer's spikes at every step
    equal in stock Lava and qsnn-sim, predictions and per-gesture accuracies equal. "windows": gestures
    of different classes cut into all their T-step windows, scored per gesture; "table1": Table I's DVS int4 row
    (θ 0.4) compiles under loihi2 with every threshold at least 16 steps of 2^6 and no saturation possible."""
    from qsnn.export.compile import MIN_THRESHOLD_STEPS, compile_qonnx
    from qsnn.export.qonnx_float import export_float
    from qsnn.profiles import LOIHI2
    from qsnn.targets.inputs import check_inputs
    from qsnn.targets.loihi2.lava_check import check

    options, n = DVS_CASES[case]
    run = trained_run("dvs128", "int4", **options)
    result = check(run / "best.pt", n, data_dir=str(dvs_data_dir), python=str(lava_python), log=lambda _m: None)
    assert result["bit_exact"], result
    assert result["encoding"] == "events" and result["num_steps"] == 8 and result["input_max"] == 1
    for key, layer in result["layers"].items():
        assert layer["equal_pct"] == 100.0 and layer["spikes_qsnn"] == layer["spikes_lava"] > 0, (key, layer)
    assert result["predictions_equal_pct"] == 100.0
    assert result["accuracy_lava_pct"] == result["accuracy_qsnn_pct"]
    net, report = compile_qonnx(export_float(run / "best.pt", run / "lava-check.onnx"), LOIHI2)
    _, data = check_inputs(net, n, "test", str(dvs_data_dir))  # n gestures of different classes
    assert len(set(data.recording_labels())) == min(n, len(data.classes))
    if case == "windows":
        assert result["images"] == n and result["windows"] == result["samples"] == len(data) > n
    else:
        assert result["windows"] is None and result["samples"] == n
    if case == "table1":
        assert all(rec["theta"] == pytest.approx(options["threshold"]) for rec in report["layers"])
        assert not report["saturation_possible"]
        assert min(rec["threshold"]["min"] for rec in report["layers"]) >= MIN_THRESHOLD_STEPS << LOIHI2.threshold_shift


def test_readme_snippet_of_an_event_model(lava_python, trained_run, dvs_data_dir, tmp_path, monkeypatch):
    """qsnn-export --to loihi2 of a DVS128 model: example_input.npy is the first test gesture's (T, C, H, W)
    count frames, read with the model's encoding; the README's snippet feeds them to Lava as T frames and
    prints qsnn's class."""
    from click.testing import CliRunner

    from qsnn.data import load_for_model
    from qsnn.export.cli import main

    monkeypatch.setenv("QSNN_DATA_DIR", str(dvs_data_dir))
    run = trained_run("dvs128", "int4")
    folder = tmp_path / "loihi2"
    result = CliRunner().invoke(main, [str(run / "best.pt"), "--to", "loihi2", "-o", str(folder)])
    assert result.exit_code == 0, result.output
    net = read_target(folder)
    example = np.load(folder / "example_input.npy")
    assert np.array_equal(example, load_for_model(net, "test")[1].x[0])
    assert example.shape == (net.num_steps, *net.input_shape) and 0 < example.max() <= net.input_max
    snippet = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    proc = subprocess.run([str(lava_python), "-c", snippet], cwd=folder, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"predicted class: {int(simulate(net, example[None]).predictions[0])}" in proc.stdout


NETX_DENSE_EXPONENT = """
import sys
import numpy as np
from lava.lib.dl.netx.utils import optimize_weight_bits
from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

data = np.load(sys.argv[1])
exact, exps = [], []
for W, s in zip(data["w"], data["s"]):
    w, bits, exp, _ = optimize_weight_bits(W.copy())          # what netx.hdf5.Network stores
    mode = determine_sign_mode(np.asarray(w))                 # what PyDenseModelBitAcc does with it
    stored = truncate_weights(clip_weights(np.asarray(w), mode, num_bits=8), mode, bits)
    acc = stored.dot(s)
    out = np.left_shift(acc, exp) if exp > 0 else np.right_shift(acc, -exp)
    exact.append(bool(np.array_equal(stored, W << -exp) and np.array_equal(out, W.dot(s))))
    exps.append(exp)
np.savez(sys.argv[2], exact=np.array(exact), exp=np.array(exps))
"""


def test_netx_undoes_its_own_dense_weight_exponent(lava_python, tmp_path):
    """Why a netx file cannot choose a dense layer's weight exponent (docs/targets/loihi2.md): lava-dl's
    ``optimize_weight_bits`` stores W·2^k with ``weight_exp = −k`` (k from the largest weight), and Lava's
    bit-accurate Dense truncates and shifts back exactly: the sum is Σ W·s for 8-bit matrices of either sign,
    so the only lever for threshold resolution is the weights' own scale 2^m. The one exception, a matrix with
    no positive weight whose most negative is −2^j (Lava clips the scaled −256 to −255), is exactly what the
    loihi2 target refuses (``netx.inhibitory_clip``)."""
    from qsnn.targets.loihi2.netx import inhibitory_clip

    rng = np.random.default_rng(0)
    mats, inputs = [], []
    for hi in (1, 2, 3, 7, 8, 28, 112, 127):
        for lo in (-hi, -1, 0, 1):
            for sign in (1, -1):  # mixed, excitatory and inhibitory matrices
                w = sign * rng.integers(lo, hi + 1, size=(11, 40))
                w[0, 0] = sign * hi
                mats.append(w)
                inputs.append(rng.integers(0, 256, size=40))
    np.savez(tmp_path / "in.npz", w=np.stack(mats), s=np.stack(inputs))
    proc = subprocess.run(
        [str(lava_python), "-c", NETX_DENSE_EXPONENT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    refused = np.array([inhibitory_clip(w) for w in mats])
    assert refused.any() and (~refused).sum() > 40
    assert np.array_equal(out["exact"], ~refused)
    assert np.all(out["exp"] <= 0)


@pytest.mark.parametrize("kind", ["conv", "dense"])
def test_lava_check_of_a_model_of_your_own_on_the_dataset_given(lava_python, tmp_path, capsys, kind):
    """make lava-check LAVA_CHECK_ARGS="--checkpoint mine.onnx --dataset D": an export_torch model records
    no dataset; without --dataset the check says to give one (the option it takes), with it Lava runs the
    folder bit-exactly against qsnn-sim on D's test samples (a conv net on mnist5k, a dense net on RGB
    arrays:)."""
    from fixtures import own_sequential_export

    from qsnn.errors import DataError
    from qsnn.targets.loihi2.lava_check import check, main

    onnx_path, dataset = own_sequential_export(tmp_path / "mine.onnx", kind, tmp_path / "data")
    with pytest.raises(DataError, match="records no dataset|does not record a dataset.*pass --dataset"):
        check(onnx_path, 4, python=str(lava_python), log=lambda _m: None)
    result = check(onnx_path, 4, dataset=dataset, python=str(lava_python), log=lambda _m: None)
    assert result["bit_exact"] and result["samples"] == 4 and result["predictions_equal_pct"] == 100.0, result
    assert sum(layer["spikes_qsnn"] for layer in result["layers"].values()) > 0
    assert result["accuracy_lava_pct"] == result["accuracy_qsnn_pct"] and result["dataset"] == dataset
    with pytest.raises(SystemExit) as exit_info:  # a dataset that is none: refused before Lava starts
        main(["--checkpoint", str(onnx_path), "--images", "2", "--dataset", "nope"])
    assert exit_info.value.code == 2 and "'nope' is not one of" in capsys.readouterr().err
