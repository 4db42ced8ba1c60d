"""``qsnn-sim MODEL --input X.npy|X.npz [--record OUT.npz]``: one's own arrays through the integer engine.

Over several networks (the paper's, strided convs, a dense-only net, a 3×32×32 colour model and an
event model; untrained but spiking, so no training is needed) on real mnist5k digits (event frames
for the event model):

* the record holds every layer's spikes and membranes per step under the layer's name, shaped as
  the network's layers are, bit-exact (``np.array_equal``) with the Python API
  (``compile_qonnx`` + ``simulate(record=True, record_membranes=True)``) and, through ``--check``,
  with the PyTorch evaluation of the integer semantics; every spike is ``u_t > θ`` of its membrane;
* the predictions printed and reported are the argmax of the output spike counts, the accuracy the
  share of labels they hit; the forms of one input (one image, (N, H, W), (N, C, H, W)) agree, and
  a dataset's arrays given with ``--input`` give the dataset run's figures;
* bad input (float values, wrong shape, counts over the model's clip, labels outside its classes,
  another file kind) is one ``error:`` line naming the file and what the model takes, and nothing
  is written.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from test_sim_cli import assert_clean_error, invoke

from qsnn.data import load_split

pytest.importorskip("qsnn.export.compile")

from qsnn.export.compile import compile_qonnx  # noqa: E402
from qsnn.profiles import get_profile  # noqa: E402
from qsnn.sim import simulate  # noqa: E402
from qsnn.sim.user_input import read_record  # noqa: E402

#: name → (synthetic_export overrides, input kind)
SPECS = {
    "paper": (dict(), "digits"),
    "strided": (dict(arch="8C3s2p1-16C3s2p1-D10"), "digits"),
    "dense": (dict(arch="D32-D10"), "digits"),
    "rgb32": (
        dict(arch="8C3s2p1-16C3s2p1-AP2-D10", input_shape=(3, 32, 32), classes=tuple(f"c{i}" for i in range(10))),
        "rgb",
    ),
    "events": (
        dict(
            arch="8C3s2p1-16C3-D11",
            dataset="dvs128",
            input_shape=(2, 16, 16),
            classes=tuple(f"g{i}" for i in range(11)),
        ),
        "events",
    ),
}
N = 24


@pytest.fixture(scope="module")
def digits():
    split = load_split("mnist5k", "test", num_steps=8)
    return split.x[:N], split.y[:N]


def inputs(kind: str, digits) -> tuple[np.ndarray, np.ndarray]:
    """(x as a user would save it, labels) for a spec's input kind, from real digits."""
    x, y = digits
    if kind == "digits":
        return x[:, 0], y  # (N, 28, 28): the channel left out
    if kind == "rgb":
        padded = np.pad(x[:, 0], ((0, 0), (2, 2), (2, 2)))  # 32×32
        tint = np.array([1.0, 0.6, 0.3])[None, :, None, None]
        return np.round(padded[:, None] * tint).astype(np.uint8), y  # (N, 3, 32, 32) RGB
    rng = np.random.default_rng(7)
    events = (rng.random((N, 8, 2, 16, 16)) < 0.5).astype(np.uint8)  # binary counts (1-bit encoding)
    return events, y % 11


def network(synthetic_export, name: str):
    _, onnx_path = synthetic_export(**SPECS[name][0])
    net, _ = compile_qonnx(onnx_path, get_profile("fpga"))
    return onnx_path, net


@pytest.mark.parametrize("name", list(SPECS))
def test_record_is_every_layer_bit_exact(name, synthetic_export, digits, tmp_path):
    onnx_path, net = network(synthetic_export, name)
    x, y = inputs(SPECS[name][1], digits)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    rec_path, report_path = tmp_path / "out" / "rec.npz", tmp_path / "out" / "report.json"
    result = invoke(
        onnx_path, "--input", tmp_path / "mine.npz", "--record", rec_path, "--report", report_path, "--check"
    )
    assert result.exit_code == 0, result.output
    rec, report = read_record(rec_path), json.loads(report_path.read_text())

    # the Python API on the same integers: the record is what it returns, layer by layer, step by step
    x_engine = x[:, None] if x.ndim == 3 else x
    api = simulate(net, x_engine, record=True, record_membranes=True)
    names = [layer.name for layer in net.layers]
    assert list(rec["layers"]) == names and list(rec["classes"]) == list(net.classes)
    assert np.array_equal(rec["input"], x_engine)
    for i, (layer, shape) in enumerate(zip(net.layers, net.shapes())):
        z, u = rec[f"z_{layer.name}"], rec[f"u_{layer.name}"]
        assert z.shape == u.shape == (net.num_steps, N, *shape)
        assert z.dtype == np.uint8 and np.issubdtype(u.dtype, np.integer)
        assert np.array_equal(z, api.spikes[f"z{i + 1}"]) and np.array_equal(u, api.membranes[f"u{i + 1}"])
        theta = rec[f"theta_{layer.name}"].reshape((-1,) + (1,) * (len(shape) - 1))
        assert np.array_equal(z, (u > theta).astype(np.uint8))  # z_t = [u_t > θ_c]
        assert z.any(), f"{layer.name} silent: the comparison would be empty"
    out = rec[f"z_{names[-1]}"]
    assert np.array_equal(rec["counts"], out.sum(axis=0)) and np.array_equal(rec["counts"], api.counts)
    assert np.array_equal(rec["predictions"], np.argmax(rec["counts"], axis=1))
    assert np.array_equal(rec["labels"], y)
    assert rec["meta"]["num_steps"] == net.num_steps and rec["meta"]["profile"]["name"] == "fpga"

    # --check: every spike train equals the PyTorch evaluation of the integer semantics
    check = report["agreement"]["spike_trains_vs_integer_torch"]
    assert check["bit_exact"] is True and set(check["equal_pct"].values()) == {100.0}
    assert report["predictions"] == rec["predictions"].tolist() and report["labels"] == y.tolist()
    accuracy = float(np.mean(rec["predictions"] == y))
    assert report["accuracy"]["integer_sim"] == pytest.approx(accuracy)
    assert re.search(rf"accuracy, integer sim +{100 * accuracy:.2f} %", result.output)
    # the printed predictions: one row per sample with its class and spike counts per class
    first = rec["predictions"][0]
    row = next(line for line in result.output.splitlines() if line.startswith("sample 0 "))
    assert f"{net.classes[first]} ({first})" in row and " ".join(map(str, rec["counts"][0])) in row
    assert f"record: {rec_path}" in result.output


@pytest.mark.parametrize("name", ["paper", "rgb32", "events"])
def test_the_forms_of_one_input_agree(name, synthetic_export, digits, tmp_path):
    onnx_path, net = network(synthetic_export, name)
    x, _ = inputs(SPECS[name][1], digits)
    forms = {"batch": x[:3], "one": x[0]}
    if x.ndim == 3:  # a one-channel model: (N, 1, H, W) too
        forms["with channel"] = x[:3, None]
    predictions = {}
    for form, arr in forms.items():
        np.save(tmp_path / f"{form}.npy", arr)
        result = invoke(onnx_path, "--input", tmp_path / f"{form}.npy", "--report", tmp_path / f"{form}.json")
        assert result.exit_code == 0, result.output
        report = json.loads((tmp_path / f"{form}.json").read_text())
        assert report["input"]["shape"] == list(arr.shape) and report["input"]["labelled"] is False
        assert report["accuracy"]["integer_sim"] is None and "n/a" in result.output
        predictions[form] = report["output_counts"]
    batch = predictions.pop("batch")
    assert predictions.pop("one") == batch[:1]
    for other in predictions.values():
        assert other == batch


def test_a_datasets_arrays_give_the_dataset_run(synthetic_export, tmp_path):
    """--input on the arrays of mnist5k's test split reports what --dataset mnist5k does (one code path)."""
    onnx_path, _ = network(synthetic_export, "strided")
    split = load_split("mnist5k", "test", num_steps=8, subset=60)
    np.savez(tmp_path / "test.npz", x=split.x, y=split.y, classes=np.array(split.classes))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert invoke(onnx_path, "--dataset", "mnist5k", "--subset", 60, "--report", a).exit_code == 0
    result = invoke(onnx_path, "--input", tmp_path / "test.npz", "--report", b)
    assert result.exit_code == 0, result.output
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    assert ra["accuracy"] == rb["accuracy"] and ra["agreement"] == rb["agreement"]
    drop = ("spikes_per_step",)
    strip = lambda hw: [{k: v for k, v in layer.items() if k not in drop} for layer in hw["layers"]]  # noqa: E731
    assert strip(ra["hardware"]) == strip(rb["hardware"]) and ra["hardware"]["total"] == rb["hardware"]["total"]


def test_float_model_beside_it(synthetic_export, digits, tmp_path):
    from qsnn.export.qonnx_int import export_integer

    onnx_path, net = network(synthetic_export, "paper")
    x, y = inputs("digits", digits)
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    result = invoke(onnx_path, "--input", tmp_path / "mine.npz", "--float", "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["agreement"]["vs_float_model"]["samples"] == N and "predictions equal" in result.output
    result = invoke(onnx_path, "--input", tmp_path / "mine.npz", "--no-float", "--report", tmp_path / "n.json")
    assert "vs_float_model" not in json.loads((tmp_path / "n.json").read_text())["agreement"]
    integer = export_integer(net, tmp_path / "int.onnx")
    assert_clean_error(invoke(integer, "--input", tmp_path / "mine.npz", "--float"), "int.onnx", "--float needs")
    assert invoke(integer, "--input", tmp_path / "mine.npz").exit_code == 0


# --------------------------------------------------------------------------------------------------
# Bad input: one line naming the file and what the model takes; nothing written


def _bad_cases(digits):
    x, y = digits
    images = x[:4, 0]
    yield "float", images.astype(np.float32) / 255, None, ("bad.npy", "float32", "(N, 28, 28)", "* 255")
    yield "shape", images[:, :27], None, ("bad.npy", "shape (4, 27, 28)", "(N, 1, 28, 28)", "one image (28, 28)")
    yield "negative", images.astype(np.int16) - 1, None, ("bad.npy", "value -1 is outside 0..255")
    yield "too bright", images.astype(np.int32) * 2, None, ("bad.npy", "value 510 is outside 0..255", "rescale")
    yield "labels", images, {"y": np.full(4, 10)}, ("bad.npz", "label 10", "10 classes")
    yield "label count", images, {"y": y[:3]}, ("bad.npz", "labels y have shape (3,)", "one label per input")
    yield "float labels", images, {"y": y[:4].astype(float)}, ("bad.npz", "labels y are float64")
    yield "classes", images, {"y": y[:4], "classes": np.array(list("abcdefghij"))}, ("bad.npz", "are not the model's")
    yield "no x", None, {"images": images}, ("bad.npz", "holds images but no array 'x'")
    yield "object", None, {"x": np.array([images, None], dtype=object)}, ("bad.npz", "not a readable NumPy file")
    nan = images.astype(np.float32)
    nan[1, 3, 3] = np.nan
    yield "nan", nan, None, ("bad.npy", "float32", "NaN or infinite", "np.nan_to_num")
    yield "empty", images[:0], None, ("bad.npy", "no samples (shape (0, 28, 28))", "at least one input")
    yield "one-hot", images, {"y": np.eye(10, dtype=np.int64)[y[:4]]}, ("bad.npz", "(4, 10)", "y.argmax(axis=1)")
    yield "empty npz", None, {"x": x[:0], "y": y[:0]}, ("bad.npz", "no samples (shape (0, 1, 28, 28))")


BAD = [
    "float",
    "shape",
    "negative",
    "too bright",
    "labels",
    "label count",
    "float labels",
    "classes",
    "no x",
    "object",
    "nan",
    "empty",
    "empty npz",
    "one-hot",
]


@pytest.mark.parametrize("case", BAD)
def test_bad_arrays_are_one_line(case, synthetic_export, digits, tmp_path):
    onnx_path, _ = network(synthetic_export, "paper")
    _, x, extra, fragments = next(c for c in _bad_cases(digits) if c[0] == case)
    if extra is None:
        path = tmp_path / "bad.npy"
        np.save(path, x)
    else:
        path = tmp_path / "bad.npz"
        arrays = ({"x": x} if x is not None else {}) | extra
        np.savez(path, **arrays)  # an object array is pickled
    record = tmp_path / "rec.npz"
    assert_clean_error(invoke(onnx_path, "--input", path, "--record", record), *fragments)
    assert not record.exists() and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_event_counts_over_the_clip_and_wrong_frames(synthetic_export, digits, tmp_path):
    onnx_path, net = network(synthetic_export, "events")
    x, _ = inputs("events", digits)
    np.save(tmp_path / "counts.npy", x * 2)  # counts 0..2, the model's 1-bit encoding takes 0..1
    assert_clean_error(
        invoke(onnx_path, "--input", tmp_path / "counts.npy"), "counts.npy", "value 2", "0..1", "np.clip(x, 0, 1)"
    )
    np.save(tmp_path / "frames.npy", x[:, :5])
    assert_clean_error(
        invoke(onnx_path, "--input", tmp_path / "frames.npy"), "frames.npy", "5 frames", "T=8", "(N, 8, 2, 16, 16)"
    )


@pytest.mark.parametrize("name", ["paper", "rgb32", "events"])
def test_channels_last_inputs_are_told_to_move_the_axis(name, synthetic_export, digits, tmp_path):
    """Images or frames saved channels-last (as PIL, OpenCV and TensorFlow hold them): the one line says
    np.moveaxis(x, -1, -3), which gives the model's layout back (a reshape would scramble the pixels)."""
    onnx_path, net = network(synthetic_export, name)
    x, _ = inputs(SPECS[name][1], digits)
    x = x[:, None] if x.ndim == 3 else x  # (N, C, H, W) or (N, T, C, H, W)
    last = np.ascontiguousarray(np.moveaxis(x, -3, -1))
    np.save(tmp_path / "last.npy", last)
    assert_clean_error(
        invoke(onnx_path, "--input", tmp_path / "last.npy"), "last.npy", str(last.shape), "np.moveaxis(x, -1, -3)"
    )
    np.save(tmp_path / "moved.npy", np.moveaxis(last, -1, -3))  # as told: runs, and as the right layout does
    np.save(tmp_path / "right.npy", x)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert invoke(onnx_path, "--input", tmp_path / "moved.npy", "--report", a).exit_code == 0
    assert invoke(onnx_path, "--input", tmp_path / "right.npy", "--report", b).exit_code == 0
    assert json.loads(a.read_text())["hardware"] == json.loads(b.read_text())["hardware"]


def test_sources_and_outputs_are_checked_first(synthetic_export, digits, tmp_path):
    onnx_path, _ = network(synthetic_export, "paper")
    x, _ = inputs("digits", digits)
    mine = tmp_path / "mine.npy"
    np.save(mine, x)
    assert_clean_error(invoke(onnx_path, "--input", mine, "--dataset", "mnist5k"), "two sources", "--dataset")
    assert_clean_error(invoke(onnx_path, "--input", mine, "--split", "val"), "two sources", "--split")
    assert_clean_error(invoke(onnx_path, "--input", mine, "--frac-bits-sweep", "0,6"), "needs labels")
    assert_clean_error(invoke(onnx_path, "--input", mine, "--record", mine), "--record is also the input --input")
    assert_clean_error(invoke(onnx_path, "--input", tmp_path / "none.npy"), "none.npy", "no such file")
    users = tmp_path / "notes.npz"
    users.write_bytes(b"my own file")
    assert_clean_error(invoke(onnx_path, "--input", mine, "--record", users), "notes.npz", "--force")
    assert_clean_error(invoke(onnx_path, "--input", mine, "--record", users, "--force"), "not written by qsnn")
    assert users.read_bytes() == b"my own file"
    # an earlier record is replaced with --force, and only then
    rec = tmp_path / "rec.npz"
    assert invoke(onnx_path, "--input", mine, "--record", rec).exit_code == 0
    assert_clean_error(invoke(onnx_path, "--input", mine, "--record", rec), "rec.npz exists")
    np.save(mine, x[:2])
    assert invoke(onnx_path, "--input", mine, "--record", rec, "--force").exit_code == 0
    assert read_record(rec)["input"].shape[0] == 2


def test_a_record_too_large_is_refused_before_the_run(synthetic_export, digits, tmp_path, monkeypatch):
    import qsnn.sim.user_input as user_input

    onnx_path, net = network(synthetic_export, "strided")
    x, _ = inputs("digits", digits)
    np.save(tmp_path / "mine.npy", x)
    # the bound: a uint8 spike and an int64 membrane per neuron, layer and step
    neurons = sum(int(np.prod(s)) for s in net.shapes())
    assert user_input.record_bytes(net, N) == N * net.num_steps * neurons * 9
    monkeypatch.setattr(user_input, "RECORD_LIMIT_BYTES", user_input.record_bytes(net, N) - 1)
    rec = tmp_path / "rec.npz"
    assert_clean_error(
        invoke(onnx_path, "--input", tmp_path / "mine.npy", "--record", rec), "--record", f"{N} samples", "x[:23]"
    )
    assert not rec.exists()
