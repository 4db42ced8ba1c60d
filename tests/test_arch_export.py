"""The float QONNX export of any architecture spec (issue 24): format version 2, N layers.

For each spec — the paper's network, a dense-only MLP, strided and padded convs with bias and
per-channel scales, 2-bit and 8-bit layers, a four-layer net, and an event model with a synaptic
delay — an untrained but spiking model is exported and:

* :func:`read_float_graph` recovers every layer (stride, padding, bias, weight bits, β, θ) and the
  metadata describes it (``arch``, per-layer records, a truthful ``precision``);
* onnxruntime running the graph T times (:func:`run_onnx_steps`) reproduces the PyTorch model
  (``forward_plain``, eval mode). What float arithmetic guarantees is asserted: with power-of-two
  scales on integer-valued inputs (0/1 images, event counts) and no bias every partial sum is exact,
  so every spike and membrane of every layer is ``array_equal``; with a bias (added in an order each
  library chooses) or float scales the two agree as float evaluations do (``tests/float_compare.py``);
* :class:`FloatEvaluator` (the layer-by-layer reference, stride/padding/bias on its general path)
  equals onnxruntime on the graph where the graph's sums are exact, and agrees as float evaluations
  do otherwise.

Format versions: a version-1 file (the paper's three layers) still reads; version 3 is refused.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from float_compare import FEW_SAMPLES, assert_float_agreement

from qsnn.arch import parse_arch
from qsnn.config import TrainConfig
from qsnn.data import INPUT_SCALE, MNIST_CLASSES, load_split, model_input
from qsnn.dvs import DVS_GESTURE_CLASSES
from qsnn.errors import ExportError
from qsnn.export.float_eval import FloatEvaluator
from qsnn.export.float_graph import read_float_graph
from qsnn.export.format import (
    FORMAT_VERSION,
    check_qsnn_model,
    graph_inputs,
    graph_outputs,
    read_metadata,
    set_metadata,
)
from qsnn.export.qonnx_float import build_float_from_module, export_float
from qsnn.export.runtime import run_onnx_steps
from qsnn.train.checkpoint import model_from_checkpoint, save_checkpoint
from qsnn.train.model import QSNN

#: The neuron of the synthetic fixture (tests/fixtures.py): untrained ×4 weights spike with it.
NEURON = {"beta": 0.921, "threshold": 2.04, "slope": 6.03}
T = 6

SPECS = {
    "paper": dict(arch="16C5-AP2-64C5-AP2-D10"),
    "dense": dict(arch="D32-D10"),
    "strided-bias-channel": dict(arch="8C3s2p1-16C3s2p1-AP2-D10", bias=True, weight_scale="channel"),
    "bits-2-8": dict(arch="8C5w2-AP2-D10w8"),
    "four-layer": dict(arch="4C3p1-8C3-AP2-16C3-D10"),
    "events-delay": dict(arch="4C3-AP2-8C3-AP2-D11", dataset="dvs128", synaptic_delay=1),
}
#: (C, H, W) input of the event model: DVS128 frames downsampled to 16×16 (small and fast).
EVENT_SHAPE = (2, 16, 16)


def write_checkpoint(path, arch: str, dataset: str = "mnist5k", **overrides):
    """An untrained but spiking checkpoint of ``arch`` (as tests/fixtures.synthetic_checkpoint does
    for the paper's network): the seeded initialisation ×4, BatchNorm with random statistics and γ of
    both signs."""
    cfg = TrainConfig.from_preset(dataset, "int4", num_steps=T, arch=arch, **{**NEURON, **overrides})
    events = dataset == "dvs128"
    shape, classes = (EVENT_SHAPE, DVS_GESTURE_CLASSES) if events else ((1, 28, 28), MNIST_CLASSES)
    torch.manual_seed(0)
    model = QSNN(cfg, shape, len(classes))
    with torch.no_grad():
        for layer in model.synapses:
            layer.weight.mul_(4.0).clamp_(-1, 1)
            if layer.bias is not None:
                layer.bias.uniform_(-0.5, 0.5)
        for bn in model.norms:
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.3, 0.3)
                bn.running_var.uniform_(0.2, 2.0)
                bn.weight.uniform_(-1.5, 1.5)
                bn.bias.uniform_(-0.3, 0.5)
    save_checkpoint(
        path,
        {
            "config": cfg.to_dict(),
            "model": model.state_dict(),
            "input_shape": list(shape),
            "classes": list(classes),
            "encoding": "events" if events else "static",
        },
    )
    return path


@pytest.fixture(scope="module")
def arch_export(tmp_path_factory):
    """Factory: (checkpoint, float export) of a spec of :data:`SPECS` with ``quant_scale``, made once."""
    cache = {}

    def make(name: str, quant_scale: str = "po2"):
        key = (name, quant_scale)
        if key not in cache:
            folder = tmp_path_factory.mktemp(f"arch-{name}-{quant_scale}")
            ckpt = write_checkpoint(folder / "best.pt", quant_scale=quant_scale, **SPECS[name])
            cache[key] = (ckpt, export_float(ckpt, folder / "model.onnx"))
        return cache[key]

    return make


@pytest.fixture(scope="module")
def images():
    """32 real test images thresholded to 0 / 255: the model sees 0.0 / 1.0, integer values."""
    x = load_split("mnist5k", "test", num_steps=T).x[:32]
    return np.where(x >= 128, 255, 0).astype(np.uint8)


def _inputs(name: str, images: np.ndarray) -> tuple[np.ndarray, str]:
    """(integer inputs, encoding): binary images, or event counts (N, T, C, H, W) for the event model."""
    if SPECS[name].get("dataset") == "dvs128":
        rng = np.random.default_rng(1)
        # binary event frames (the dvs128 preset's 1-bit counts), 12 steps: enough for the delayed layers
        return (rng.random((24, 12, *EVENT_SHAPE)) < 0.4).astype(np.uint8), "events"
    return images, "static"


def _torch(ckpt, x_real: np.ndarray) -> dict[str, np.ndarray]:
    model = model_from_checkpoint(ckpt)
    with torch.no_grad():
        out = model.forward_plain(torch.from_numpy(x_real), record=True)
    return {k: v.numpy() for k, v in out.layers.items()}


def _keys(n: int) -> list[str]:
    return [f"{k}{i}" for i in range(1, n + 1) for k in "zu"]


@pytest.mark.parametrize("name", list(SPECS))
def test_graph_and_metadata_describe_every_layer(arch_export, name):
    ckpt, path = arch_export(name)
    spec = SPECS[name]
    arch = parse_arch(spec["arch"])
    n = len(arch)
    model, meta = check_qsnn_model(path, kind="float")
    delay = bool(spec.get("synaptic_delay"))
    assert [i.name for i in model.graph.input] == graph_inputs(n, delay)
    assert [o.name for o in model.graph.output] == graph_outputs(n, delay)
    assert meta["format_version"] == FORMAT_VERSION == 2 and meta["arch"] == str(arch)
    graph = read_float_graph(path)
    torch_model = model_from_checkpoint(ckpt)
    bits = arch.layer_bits(4)
    assert len(graph.layers) == n and graph.arch == str(arch)
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in model.graph.initializer}
    for layer, rec, ls, syn, b in zip(graph.layers, meta["layers"], arch.layers, torch_model.synapses, bits):
        assert layer.name == rec["name"] and layer.kind == ls.kind == rec["kind"]
        assert f"{layer.name}.weight" in inits
        assert (layer.stride, layer.padding) == ((ls.stride, ls.padding) if ls.kind == "conv" else (1, 0))
        assert (rec["stride"], rec["padding"]) == (layer.stride, layer.padding)
        assert layer.pool == rec["pool"] == (ls.pool if ls.kind == "conv" else 1)
        assert layer.bit_width == rec["weight_bits"] == b
        assert rec["bias"] == (layer.bias is not None) == bool(spec.get("bias"))
        if layer.bias is not None:
            assert f"{layer.name}.bias" in inits
            assert np.array_equal(layer.bias, syn.bias.detach().numpy().astype(np.float64))
        per_channel = spec.get("weight_scale") == "channel"
        assert rec["weight_scale"] == ("channel" if per_channel else "tensor")
        assert inits[f"{layer.name}.weight_scale"].size == (layer.q.shape[0] if per_channel else 1)
        assert np.array_equal(layer.q, syn.quant_weight().int().detach().numpy().astype(np.int64))
        assert layer.beta == rec["beta"] == pytest.approx(NEURON["beta"], abs=1e-7)
        assert layer.theta == rec["threshold"] == pytest.approx(NEURON["threshold"], abs=1e-7)
        assert tuple(rec["shape"]) == tuple(torch_model.layer_shapes[graph.layers.index(layer)])
    assert meta["precision"] == ("mixed 2..8-bit" if name == "bits-2-8" else "int4")
    assert meta["weight_bits"] == max(bits)


@pytest.mark.parametrize("name", list(SPECS))
def test_onnxruntime_equals_pytorch_with_po2_scales(arch_export, images, name):
    """Power-of-two scales on integer-valued inputs: without a bias every sum is exact in both, so every
    spike and membrane of every layer is equal; with a bias (added in each library's own order) they
    agree as two float evaluations do."""
    ckpt, path = arch_export(name)
    x, encoding = _inputs(name, images)
    x_real = model_input(x, INPUT_SCALE[encoding])
    ref = _torch(ckpt, x_real)
    got = run_onnx_steps(path, x_real, record=True)
    n = len(parse_arch(SPECS[name]["arch"]))
    assert sorted(got) == sorted(_keys(n))
    if SPECS[name].get("bias"):
        assert_float_agreement(got, ref, layers=tuple(range(1, n + 1)), **FEW_SAMPLES, what=f"{name}: ort vs torch")
    else:
        for key in _keys(n):
            assert got[key].shape == ref[key].shape, key
            assert np.array_equal(got[key], ref[key]), key
    # a silent network compares nothing: spikes in every hidden layer, a moving output membrane
    assert all(got[f"z{i}"].any() for i in range(1, n)) and np.abs(got[f"u{n}"]).max() > 0


@pytest.mark.parametrize("name", ["paper", "strided-bias-channel", "dense"])
def test_onnxruntime_agrees_with_pytorch_with_float_scales(arch_export, images, name):
    """Float scales: the products are rounded float32 values summed in each library's order, so spikes
    differ only where a membrane lies within rounding of θ, membranes within float32 rounding
    elsewhere, and predictions agree on ≥ 75 % of these few samples (FEW_SAMPLES)."""
    ckpt, path = arch_export(name, "float")
    x_real = model_input(images, INPUT_SCALE["static"])
    ref = _torch(ckpt, x_real)
    got = run_onnx_steps(path, x_real, record=True)
    n = len(parse_arch(SPECS[name]["arch"]))
    assert_float_agreement(got, ref, layers=tuple(range(1, n + 1)), **FEW_SAMPLES, what=f"{name}: ort vs torch")


@pytest.mark.parametrize("name", list(SPECS))
def test_float_evaluator_equals_onnxruntime(arch_export, images, name):
    """The layer-by-layer float reference on the graph's parsed layers (stride, padding and bias on its
    general path): equal to onnxruntime running the graph where the graph's sums are exact (po2 scales,
    integer inputs, no bias), from the integer codes and from the real values alike; with a bias
    within float rounding."""
    _, path = arch_export(name)
    x, encoding = _inputs(name, images)
    x_real = model_input(x, INPUT_SCALE[encoding])
    ref = run_onnx_steps(path, x_real, record=True)
    evaluator = FloatEvaluator(path)
    n = len(evaluator.layers)
    for got in (evaluator.run(x, record=True), evaluator.run(x_real, record=True)):
        assert sorted(got) == sorted(_keys(n))
        if SPECS[name].get("bias"):
            assert_float_agreement(
                got, ref, layers=tuple(range(1, n + 1)), **FEW_SAMPLES, what=f"{name}: float_eval vs ort"
            )
        else:
            for key in _keys(n):
                assert got[key].dtype == np.float32 and np.array_equal(got[key], ref[key]), key


def test_float_evaluator_agrees_with_onnxruntime_with_float_scales(arch_export, images):
    _, path = arch_export("strided-bias-channel", "float")
    x_real = model_input(images, INPUT_SCALE["static"])
    ref = run_onnx_steps(path, x_real, record=True)
    got = FloatEvaluator(path).run(images, record=True)
    assert_float_agreement(got, ref, layers=(1, 2, 3), **FEW_SAMPLES, what="float_eval vs ort")


def test_export_from_a_module_in_memory_equals_the_checkpoint_export(arch_export):
    """build_float_from_module (no checkpoint file) writes the graph the checkpoint export writes, and
    leaves the module unchanged."""
    ckpt, path = arch_export("strided-bias-channel")
    model = model_from_checkpoint(ckpt)
    data = torch.load(ckpt, weights_only=False)
    norms = [type(m) for m in model.norms]
    built, meta = build_float_from_module(model, classes=data["classes"], encoding="static")
    assert [type(m) for m in model.norms] == norms
    saved = onnx.load(str(path))
    assert [(n.op_type, list(n.input), list(n.output)) for n in built.graph.node] == [
        (n.op_type, list(n.input), list(n.output)) for n in saved.graph.node
    ]
    a = {i.name: onnx.numpy_helper.to_array(i) for i in built.graph.initializer}
    b = {i.name: onnx.numpy_helper.to_array(i) for i in saved.graph.initializer}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert meta["checkpoint_sha256"] == "" and meta["layers"] == read_metadata(saved)["layers"]


def test_precision_is_named_as_it_is(tmp_path):
    """An 8-bit model is ``int8``, not ``int4``; the widest layer's bits are the top-level ``weight_bits``."""
    ckpt = write_checkpoint(tmp_path / "best.pt", "8C5-AP2-D10", weight_bits=8)
    meta = read_metadata(onnx.load(str(export_float(ckpt, tmp_path / "m.onnx"))))
    assert meta["precision"] == "int8" and meta["weight_bits"] == 8
    assert [rec["weight_bits"] for rec in meta["layers"]] == [8, 8]


def _as_version_1(model: onnx.ModelProto) -> onnx.ModelProto:
    """The paper's network's export as qsnn wrote it in format version 1 (no arch, three-key layers)."""
    meta = read_metadata(model)
    meta["format_version"] = 1
    for key in ("arch", "weight_scale"):
        meta.pop(key)
    meta["layers"] = [{k: rec[k] for k in ("name", "kind", "pool", "membrane", "shape")} for rec in meta["layers"]]
    set_metadata(model, meta)
    return model


def test_version_1_file_still_reads(arch_export, images):
    _, path = arch_export("paper")
    v2 = read_float_graph(path)
    old = _as_version_1(onnx.load(str(path)))
    _, meta = check_qsnn_model(old, kind="float")
    assert meta["format_version"] == 1 and meta["arch"] == "16C5-AP2-64C5-AP2-D10"
    assert [(r["stride"], r["padding"], r["bias"], r["weight_bits"]) for r in meta["layers"]] == [(1, 0, False, 4)] * 3
    v1 = read_float_graph(old)
    for a, b in zip(v1.layers, v2.layers):
        assert (a.name, a.stride, a.padding, a.bias, a.bit_width) == (b.name, 1, 0, None, 4)
        assert np.array_equal(a.q, b.q)
    x_real = model_input(images[:8], INPUT_SCALE["static"])
    assert np.array_equal(run_onnx_steps(old, x_real)["z3"], run_onnx_steps(path, x_real)["z3"])


def test_other_versions_are_refused_saying_to_export_again(arch_export):
    _, path = arch_export("dense")
    model = onnx.load(str(path))
    meta = read_metadata(model)
    meta["format_version"] = 3
    set_metadata(model, meta)
    with pytest.raises(ExportError, match=r"format version 3.*export the checkpoint again.*qsnn-export .* --to qonnx"):
        read_float_graph(model)


def test_asymmetric_padding_is_refused_in_one_line(arch_export):
    _, path = arch_export("strided-bias-channel")
    model = onnx.load(str(path))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    pads = next(a for a in conv.attribute if a.name == "pads")
    pads.ints[:] = [1, 1, 0, 0]
    with pytest.raises(ExportError, match="asymmetric padding") as info:
        read_float_graph(model)
    assert "\n" not in str(info.value)
