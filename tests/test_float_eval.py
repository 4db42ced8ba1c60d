"""qsnn-sim's float reference (:mod:`qsnn.export.float_eval`): the trained model layer by layer with exact sums.

What a user relies on: it predicts what the trained model predicts. Where the one-step graph's own
arithmetic is exact (power-of-two weight scales, integer-valued inputs) every spike and membrane is
the graph's (``array_equal``); with float scales it agrees with onnxruntime and with PyTorch as two
float evaluations of one network do (``tests/float_compare.py``); its sums are the exact integers
whatever the kernel, batch split or thread count.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from click.testing import CliRunner
from fixtures import synthetic_checkpoint
from float_compare import BOUNDS, FEW_SAMPLES, assert_float_agreement

import qsnn.export.float_eval as float_eval
from qsnn.data import INPUT_SCALE, load_split
from qsnn.errors import ExportError
from qsnn.export.float_eval import FloatEvaluator
from qsnn.export.qonnx_float import export_float
from qsnn.export.runtime import run_onnx_steps
from qsnn.sim.validate import float_input

KEYS = ("z1", "u1", "z2", "u2", "z3", "u3")


@pytest.fixture(scope="module")
def mnist_test():
    return load_split("mnist5k", "test", num_steps=8)


@pytest.fixture(scope="module")
def synthetic(synthetic_export):
    """Factory: the float export of a synthetic (untrained, spiking) checkpoint with these overrides."""
    return lambda **overrides: synthetic_export(**overrides)[1]


def _binary(x: np.ndarray) -> np.ndarray:
    """Real images thresholded to 0 / 255: the model then sees 0.0 / 1.0, integer values."""
    return np.where(x >= 128, 255, 0).astype(np.uint8)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"reset": "zero"},
        {"synaptic_delay": 1},
        {"batch_norm": False},
        {"reset": "zero", "synaptic_delay": 1, "batch_norm": False},
    ],
    ids=["subtract", "zero-reset", "delay", "no-bn", "zero-delay-no-bn"],
)
def test_equals_the_graph_where_its_arithmetic_is_exact(synthetic, mnist_test, overrides):
    """Power-of-two scales on 0/1 inputs: the graph's sums are exact too, so every spike and membrane of
    every layer and step equals onnxruntime's run of the graph (subtract and zero reset, synaptic
    delay, with and without BatchNorm), from the integer codes and from the real-valued input alike."""
    path = synthetic(quant_scale="po2", **overrides)
    codes = _binary(mnist_test.x[:48])
    ref = run_onnx_steps(path, float_input(codes, "static"), record=True)
    evaluator = FloatEvaluator(path)
    for got in (evaluator.run(codes, record=True), evaluator.run(float_input(codes, "static"), record=True)):
        for key in KEYS:
            assert got[key].shape == ref[key].shape and got[key].dtype == np.float32, key
            assert np.array_equal(got[key], ref[key]), key
        # a silent network would compare nothing: spikes in layers 1 and 2, a moving membrane in layer 3
        assert got["z1"].any() and got["z2"].any() and np.abs(got["u3"]).max() > 0


def test_float32_batchnorm_form_equals_the_graph(monkeypatch, mnist_test, tmp_path):
    """The exporter's other BatchNorm form (float32 ``Mul, Add``, written where PyTorch's kernel does not
    fuse) is evaluated as the graph computes it: equal again with power-of-two scales."""
    import qsnn.export.qonnx_float as qonnx_float

    monkeypatch.setattr(qonnx_float, "detect_bn_arithmetic", lambda bn, seed=0: False)
    path = export_float(synthetic_checkpoint(tmp_path / "best.pt", quant_scale="po2"), tmp_path / "model.onnx")
    evaluator = FloatEvaluator(path)
    assert [layer.bn_arith for layer in evaluator.layers] == ["float32", "float32", "none"]
    codes = _binary(mnist_test.x[:32])
    ref = run_onnx_steps(path, float_input(codes, "static"), record=True)
    got = evaluator.run(codes, record=True)
    for key in KEYS:
        assert np.array_equal(got[key], ref[key]), key


@pytest.mark.float_kernels
@pytest.mark.parametrize("precision", ["int4", "fp32"])
def test_float_scales_agree_with_the_graph(synthetic, mnist_test, precision):
    """Float scales, real pixels: onnxruntime adds rounded float32 products, the evaluator exact ones
    (an fp32 export's real weights: float64 products), so they agree as float evaluations do (spikes
    differ only where a membrane is within rounding of θ)."""
    path = synthetic(precision=precision)
    x = mnist_test.x[:200]
    ref = run_onnx_steps(path, float_input(x, "static"), record=True)
    assert_float_agreement(FloatEvaluator(path).run(x, record=True), ref, what="float_eval vs onnxruntime")


@pytest.mark.parametrize("top", [1, 3, 255])
def test_codes_are_worth_their_pixel_value(synthetic, mnist_test, top):
    """Integer codes are the pixels the model is fed, code·fl32(1/255), whatever the batch's largest
    code (dim images whose codes are all 0 or 1 included): as onnxruntime's graph on those values."""
    path = synthetic()
    codes = (mnist_test.x[:40].astype(np.int64) * top // 255).astype(np.uint8)
    assert codes.max() == top
    ref = run_onnx_steps(path, float_input(codes, "static"), record=True)
    got = FloatEvaluator(path).run(codes, record=True)
    # u1 at t = 0 is layer 1's current itself (no history): the two differ by float rounding only
    current = np.abs(ref["u1"][0] - ref["u1"][0].min())  # BatchNorm's offset aside, what the pixels add
    assert current.max() > 100 * BOUNDS["membrane_atol"]
    assert np.abs(got["u1"][0] - ref["u1"][0]).max() <= BOUNDS["membrane_atol"]


def test_sums_are_the_exact_integers(synthetic):
    """Σ_i v(p_i)·q_i with v(p) = fl32(p · fl32(1/255)), the float32 pixel the model is fed: computed
    from two uint8 products, equal to the exact rational sum; event counts above 255 (byte limbs) too;
    spikes into the pooled conv2 through box sums and its own kernel equal the folded kernel's sums."""
    path = synthetic()
    rng = np.random.default_rng(0)
    layer = FloatEvaluator(path).layers[0]
    codes = rng.integers(0, 256, size=(3, 28, 28, 1)).astype(np.uint8)
    counts = rng.integers(0, 3000, size=(2, 28, 28, 1)).astype(np.int64)
    for x, unit in ((codes, INPUT_SCALE["static"]), (counts, 1.0)):
        sums, w = layer.sums(x, unit)
        values = np.arange(int(x.max()) + 1, dtype=np.float32) * np.float32(unit)
        # the exact sums of the real products, over the folded kernel's window (stride p), as fractions
        kernel = layer._mat.reshape(-1, layer.window, layer.window, 1)
        for sample, row, col, out in [(0, 0, 0, 0), (1, 5, 7, 9), (x.shape[0] - 1, 11, 11, 15)]:
            patch = x[sample, 2 * row : 2 * row + layer.window, 2 * col : 2 * col + layer.window, :]
            exact = sum(Fraction(float(values[p])) * int(q) for p, q in zip(patch.ravel(), kernel[out].ravel()))
            assert Fraction(int(sums[sample, row, col, out])) * Fraction(w) == exact
    spikes = rng.random((4, 12, 12, 16)) < 0.3
    conv2 = FloatEvaluator(path).layers[1]
    by_ort = conv2.sums(spikes)[0]
    assert conv2.sum_kernels[1] == "onnxruntime MatMulInteger on 2x2 box sums"  # the layer's own 5×5 kernel
    windows = np.lib.stride_tricks.sliding_window_view(spikes, (conv2.window,) * 2, axis=(1, 2))[:, ::2, ::2]
    reference = np.einsum(
        "nhwckl,oklc->nhwo", windows[:, :4, :4].astype(np.int64), conv2._mat.reshape(-1, conv2.window, conv2.window, 16)
    )
    assert np.array_equal(by_ort, reference)


def test_without_onnxruntime_the_same_spikes(synthetic, mnist_test, monkeypatch):
    """Without onnxruntime's integer kernel (NumPy sums, exact below 2^24) nothing changes, bit for bit."""
    path = synthetic()
    x = mnist_test.x[:40]
    with_ort = FloatEvaluator(path).run(x, record=True)
    import qsnn.kernels

    for module in (float_eval, qsnn.kernels):  # the evaluator's own check and box_kernel's
        monkeypatch.setattr(module, "ort_available", lambda: False)
    plain = FloatEvaluator(path)
    assert {layer.sum_kernels[1] for layer in plain.layers} == {"numpy float32"}
    without = plain.run(x, record=True)
    for key in KEYS:
        assert np.array_equal(with_ort[key], without[key]), key


def test_batch_split_and_threads_do_not_change_a_spike(synthetic, mnist_test):
    """Exact sums make every sample's result independent of its batch, its piece and the thread count."""
    path = synthetic()
    x = mnist_test.x[:150]
    whole = FloatEvaluator(path, threads=2).run(x, record=True)
    one = FloatEvaluator(path, threads=1)
    alone = [one.run(x[i : i + 1], record=True) for i in (0, 77, 149)]
    for key in KEYS:
        assert np.array_equal(whole[key], FloatEvaluator(path, threads=1).run(x, record=True)[key]), key
        for i, part in zip((0, 77, 149), alone):
            assert np.array_equal(whole[key][:, i : i + 1], part[key]), key


def test_bad_inputs_name_the_file(synthetic, mnist_test):
    path = synthetic()
    evaluator = FloatEvaluator(path)
    with pytest.raises(ExportError, match=r"model\.onnx.*\[0, 255\]"):
        evaluator.run(mnist_test.x[:2].astype(np.int32) + 300)
    with pytest.raises(ExportError, match="does not match the model's input"):
        evaluator.run(np.zeros((2, 3, 28, 28), np.uint8))


@pytest.mark.float_kernels
def test_trained_model_agrees_with_pytorch(float_onnx, trained_run):
    """A trained float-scale model on the 500 test images: the evaluator against PyTorch's fast path,
    the model's own evaluation (bounds of tests/float_compare.py)."""
    import torch

    from qsnn.train.checkpoint import model_from_checkpoint
    from qsnn.train.data import to_tensor

    data = load_split("mnist5k", "test")
    model = model_from_checkpoint(trained_run() / "best.pt")
    with torch.no_grad():
        ref = {k: v.numpy() for k, v in model(to_tensor(data.x, "static"), record=True).layers.items()}
    assert_float_agreement(FloatEvaluator(float_onnx).run(data.x, record=True), ref, what="float_eval vs torch")


@pytest.mark.float_kernels
def test_event_model_agrees_with_the_graph(trained_run, dvs_data_dir, tmp_path):
    """Event frames (integer counts, a per-step first layer) on the DVS fixture model."""
    import onnx

    from qsnn.events import event_frames_from_metadata
    from qsnn.export.format import read_metadata

    path = export_float(trained_run(dataset="dvs128") / "best.pt", tmp_path / "dvs.onnx")
    meta = read_metadata(onnx.load(str(path)))
    data = load_split(
        "dvs128", "test", dvs_data_dir, num_steps=meta["num_steps"], events=event_frames_from_metadata(meta)
    )
    x = data.x[:40]
    ref = run_onnx_steps(path, x.astype(np.float32), record=True)
    got = FloatEvaluator(path).run(x, record=True)
    assert_float_agreement(got, ref, what="dvs float_eval vs onnxruntime", **FEW_SAMPLES)


def test_qsnn_sim_float_engines(synthetic, tmp_path):
    """``qsnn-sim --float-engine layers`` (the default) and ``graph`` report the same trained-model
    accuracy within what float rounding allows, and say which one ran."""
    import json

    from qsnn.sim.cli import main

    path = synthetic()
    reports = {}
    for engine in ("layers", "graph"):
        out = tmp_path / f"{engine}.json"
        result = CliRunner().invoke(
            main, [str(path), "--subset", "200", "--float-engine", engine, "--report", str(out), "--no-progress"]
        )
        assert result.exit_code == 0, result.output
        reports[engine] = json.loads(out.read_text())
        assert "trained model" in result.output and "peak RSS" in result.output
    assert reports["layers"]["float_engine"].startswith("qsnn.export.float_eval")
    assert reports["graph"]["float_engine"].startswith("qsnn.export.runtime")
    accs = [reports[e]["accuracy"]["float_model"] for e in ("layers", "graph")]
    assert abs(accs[0] - accs[1]) <= 1 - FEW_SAMPLES["min_prediction_share"] + 1e-9
    assert reports["layers"]["accuracy"]["integer_sim"] == reports["graph"]["accuracy"]["integer_sim"]
