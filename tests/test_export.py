"""Export to QONNX (issue 3): the float one-step graph against PyTorch, the integer graph against an
independent PyTorch evaluation of the integer semantics, and the integers recovered from the file.

Models come from the session fixture ``trained_run`` (tiny mnist5k / DVS-fixture runs, T = 8); the
comparisons use the full 500-image mnist5k test split, with onnxruntime and with qonnx's
node-by-node executor (one graph call per step for the whole split: about 2 s on an idle CPU).

Float graph vs PyTorch asserts only what float arithmetic guarantees (``float_compare``): onnxruntime
(MLAS) and PyTorch (oneDNN, MKL) sum the same products in other orders, and each library in another
order on AVX-512 than on AVX2. Tests marked ``float_kernels`` run a second time in CI with oneDNN,
ATen and MKL held to AVX2 (``make test-float-kernels``), so both kernel families are covered.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from float_compare import BOUNDS, FEW_SAMPLES, assert_float_agreement
from onnx import numpy_helper

from qsnn.config import TrainConfig
from qsnn.data import load_split
from qsnn.errors import ExportError
from qsnn.export.compile import compile_qonnx, mismatch_warning
from qsnn.export.float_graph import quant_weights, read_float_graph
from qsnn.export.format import FORMAT, check_qsnn_model, read_metadata, set_metadata
from qsnn.export.integer_torch import run_integer_torch
from qsnn.export.qonnx_float import export_float
from qsnn.export.qonnx_int import export_integer, read_integer_qonnx
from qsnn.export.runtime import predictions, run_integer_onnx, run_onnx_steps
from qsnn.jsonio import sha256_file
from qsnn.network import fold_pool
from qsnn.profiles import get_profile
from qsnn.train.checkpoint import model_from_checkpoint
from qsnn.train.data import to_tensor

KEYS = ("z1", "u1", "z2", "u2", "z3", "u3")

#: Membrane tolerance per layer with power-of-two weight scales. Layers fed by spikes sum exact
#: products (spike × 4-bit integer × 2⁻ᵏ, partial sums far below 2²⁴ ulps), so they equal PyTorch bit
#: for bit wherever the layers below agree (0: ``array_equal``; BatchNorm is exported as the
#: arithmetic PyTorch's kernel performs on the exporting machine). The first layer's current,
#: pixels/255 × weights, is float arithmetic: bit-exact here with the AVX2 kernels, 9.5e-6 off with
#: oneDNN capped at AVX or SSE4.1, so it gets the float bound.
PO2_MEMBRANE_ATOL = {1: BOUNDS["membrane_atol"], 2: 0.0, 3: 0.0}


@pytest.fixture(scope="module")
def mnist_test():
    return load_split("mnist5k", "test")


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """Factory: (checkpoint, float ONNX path) for a trained_run configuration, exported once."""
    cache = {}

    def make(**overrides):
        key = tuple(sorted(overrides.items()))
        if key not in cache:
            ckpt = trained_run(**overrides) / "best.pt"
            out = tmp_path_factory.mktemp("onnx") / "model.onnx"
            cache[key] = (ckpt, export_float(ckpt, out))
        return cache[key]

    return make


def torch_reference(ckpt, x: torch.Tensor, plain: bool = False) -> dict[str, np.ndarray]:
    """Spikes and membranes (T, N, ...) of the trained PyTorch model (the fast path, or the paper's loop)."""
    model = model_from_checkpoint(ckpt)
    with torch.no_grad():
        out = (model.forward_plain if plain else model)(x, record=True)
    return {k: v.numpy() for k, v in out.layers.items()}


# --------------------------------------------------------------------------------------------------
# The float graph


def test_float_graph_interface_quant_nodes_and_metadata(exported):
    ckpt, path = exported(quant_scale="po2")
    model, meta = check_qsnn_model(path, kind="float")
    graph = model.graph
    assert [i.name for i in graph.input] == ["x", "u1", "u2", "u3"]
    assert [o.name for o in graph.output] == ["z3", "u1_out", "u2_out", "u3_out"]
    for vi in list(graph.input) + list(graph.output):
        assert vi.type.tensor_type.shape.dim[0].dim_param == "N"  # dynamic batch
    quants = [n for n in graph.node if n.op_type == "Quant"]
    assert len(quants) == 3
    inits = {i.name: onnx.numpy_helper.to_array(i) for i in graph.initializer}
    for q in quants:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in q.attribute}
        assert attrs["signed"] == 1 and attrs["narrow"] == 1
        assert float(inits[q.input[3]]) == 4.0
    assert "Dropout" not in {n.op_type for n in graph.node}
    # the LIF update of lif_step, in order: r = [u − θ > 0]; u' = β·u + I − r·θ
    ops = [n.op_type for n in graph.node if "u1" in n.input or any(o == "u1_out" for o in n.output)]
    assert ops == ["Sub", "Mul", "Sub"]  # Sub(u1, θ), Mul(u1, β), u1_out = Sub(Add(...), Mul(r, θ))
    cfg = model_from_checkpoint(ckpt).cfg
    assert meta["format"] == FORMAT and meta["kind"] == "float"
    assert meta["dataset"] == "mnist5k" and meta["classes"] == [str(d) for d in range(10)]
    assert meta["num_steps"] == cfg.num_steps and meta["encoding"] == "static"
    assert meta["input_scale"] == pytest.approx(1 / 255) and meta["input_shape"] == [1, 28, 28]
    assert np.float32(meta["beta"]) == np.float32(cfg.beta) and np.float32(meta["threshold"]) == np.float32(
        cfg.threshold
    )
    assert meta["reset"] == "subtract" and meta["weight_bits"] == 4 and meta["quant_scale"] == "po2"
    assert meta["checkpoint_sha256"] == sha256_file(ckpt)
    assert meta["qsnn_version"] and meta["slope"] == pytest.approx(cfg.slope)


def _assert_po2_agreement(got, ref, what):
    """Layer 1 within float rounding; layers 2, 3 array_equal wherever layer 1 agrees (PO2_MEMBRANE_ATOL)."""
    assert_float_agreement(got, ref, membrane_atol=PO2_MEMBRANE_ATOL, what=what)
    if np.array_equal(got["z1"], ref["z1"]):  # then everything above layer 1 is exact arithmetic
        for key in KEYS[2:]:
            assert np.array_equal(got[key], ref[key]), key
        assert np.array_equal(predictions(got["z3"]), predictions(ref["z3"]))


def test_po2_qonnx_executor_equals_pytorch(exported, mnist_test):
    """execute_onnx over T steps on the test split, po2 scales: layers 2 and 3 array_equal to PyTorch
    wherever layer 1's spikes agree, layer 1 within float rounding (see PO2_MEMBRANE_ATOL).

    Measured: every spike and membrane of every layer equal with the AVX2 kernels; with oneDNN at
    AVX or SSE4.1 layer 1's membranes differ by ≤ 9.5e-6 (no spike), layers 2 and 3 stay bit-exact.
    """
    ckpt, path = exported(quant_scale="po2")
    x = to_tensor(mnist_test.x, "static")
    ref = torch_reference(ckpt, x)
    got = run_onnx_steps(path, x.numpy(), engine="qonnx", record=True)
    for key in KEYS:
        assert got[key].shape == ref[key].shape, key
    _assert_po2_agreement(got, ref, "po2 qonnx vs torch")


@pytest.mark.float_kernels
def test_po2_onnxruntime_equals_pytorch_on_the_test_split(exported, mnist_test):
    """QuantToQCDQ + onnxruntime on all 500 test images, po2 scales: as the qonnx test above."""
    ckpt, path = exported(quant_scale="po2")
    x = to_tensor(mnist_test.x, "static")
    ref = torch_reference(ckpt, x)
    got = run_onnx_steps(path, x.numpy(), engine="ort", record=True)
    _assert_po2_agreement(got, ref, "po2 ort vs torch")


@pytest.mark.float_kernels
def test_float_scale_matches_pytorch(exported, mnist_test):
    """Float weight scales: onnxruntime and qonnx equal PyTorch (fast path and plain loop) up to float
    rounding, as :func:`float_compare.assert_float_agreement` states it (bounds: ``BOUNDS``).

    Measured on the fixture model (``python tools/measure_float_kernels.py``), PyTorch vs
    onnxruntime: with the AVX2 kernels no spike differs and membranes differ by ≤ 1.34e-5
    (θ = 2.04); with oneDNN at AVX or SSE4.1, or ATen's "default" kernels, up to 2 of 9,216,000
    layer-1 and 6 of 4,096,000 layer-2 spikes differ; on issue 17's AVX-512 machine 2 of 4,096,000
    layer-2 spikes, and with them those neurons' membranes by θ (max |Δu| 2.04), which is why
    membranes are compared only where the histories agree (there: ≤ 1.34e-5 on every path).
    Predictions equal on 100 % everywhere. qonnx vs onnxruntime: bit-exact (the same MLAS kernels),
    asserted with the same bounds.
    """
    ckpt, path = exported()
    x = to_tensor(mnist_test.x, "static")
    got = run_onnx_steps(path, x.numpy(), engine="ort", record=True)
    by_qonnx = run_onnx_steps(path, x.numpy(), engine="qonnx", record=True)
    for plain in (False, True):
        ref = torch_reference(ckpt, x, plain=plain)
        assert_float_agreement(got, ref, what=f"ort vs {'plain' if plain else 'fast'}")
    assert_float_agreement(by_qonnx, got, what="qonnx vs ort")


def _with_wrong(path, name: str, factor: float) -> onnx.ModelProto:
    """The export at ``path`` with the initializer ``name`` (β or θ) scaled by ``factor``, as a buggy
    export would write it (θ also in the metadata, from which the host loop derives z1, z2)."""
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if i.name == name)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(factor), name))
    if name == "theta":
        meta = read_metadata(model)
        set_metadata(model, {**meta, "threshold": float(np.float32(meta["threshold"]) * np.float32(factor))})
    return model


@pytest.mark.float_kernels
@pytest.mark.parametrize("name", ["beta", "theta"])
def test_float_comparison_catches_a_wrong_beta_or_theta(exported, mnist_test, name):
    """The float bounds still catch a real bug: β or θ written 0.1 % off (β 0.921 → 0.92192) fails.

    Measured on the fixture model: β × 1.001 flips 0.1 % of layer-1 spikes, leaves histories agreeing
    on 30 % of layer-2 entries and moves membranes there by 0.03; θ × 1.001 alike. Even × (1 + 1e-5)
    still fails the bounds (histories agree on < 96 % of layer-2 entries).
    """
    ckpt, path = exported()
    x = to_tensor(mnist_test.x, "static")
    ref = torch_reference(ckpt, x)
    assert_float_agreement(run_onnx_steps(path, x.numpy(), record=True), ref, what="correct export")
    with pytest.raises(AssertionError, match="differ|histories agree|predictions"):
        assert_float_agreement(
            run_onnx_steps(_with_wrong(path, name, 1.001), x.numpy(), record=True), ref, what=f"{name} × 1.001"
        )


def test_batch_dimension_is_dynamic(exported, mnist_test):
    _, path = exported(quant_scale="po2")
    x = to_tensor(mnist_test.x[:5], "static").numpy()
    whole = run_onnx_steps(path, x)["z3"]
    for bs in (1, 2):
        assert np.array_equal(run_onnx_steps(path, x, batch_size=bs)["z3"], whole)


@pytest.mark.parametrize("scale", ["po2", "float"])
def test_integers_recovered_from_the_onnx_equal_brevitas(exported, scale):
    ckpt, path = exported(**({"quant_scale": "po2"} if scale == "po2" else {}))
    model = model_from_checkpoint(ckpt)
    recovered = quant_weights(onnx.load(str(path)))
    net, _ = compile_qonnx(path, get_profile("fpga"))
    bn = {blk.name: (blk.bn if isinstance(blk.bn, torch.nn.BatchNorm2d) else None) for blk in model.blocks}
    for layer, name in zip(net.layers, ("conv1", "conv2", "fc")):
        brevitas_int = model.synapse_by_name()[name].quant_weight().int().numpy().astype(np.int64)
        assert np.array_equal(recovered[name], brevitas_int), name
        sign = np.ones(brevitas_int.shape[0], np.int64)
        if bn[name] is not None:  # a negative BatchNorm γ flips the channel's weights
            sign = np.where(bn[name].weight.detach().numpy() < 0, -1, 1)
        expect = brevitas_int * sign.reshape(-1, *([1] * (brevitas_int.ndim - 1)))
        assert np.array_equal(layer.weight.astype(np.int64), expect), name


# --------------------------------------------------------------------------------------------------
# The integer graph


def test_compile_report_fpga(exported):
    _, path = exported(quant_scale="po2")
    net, report = compile_qonnx(path, get_profile("fpga"))
    p = net.profile
    assert report["profile"] == "fpga" and report["leak"]["decay"] == round(report["leak"]["beta"] * 4096)
    assert report["leak"]["abs_error"] < 2**-12
    for layer, rep in zip(net.layers, report["layers"]):
        assert layer.current_shift == rep["current_shift"] <= p.frac_bits
        assert np.abs(layer.weight).max() <= p.weight_max
        assert rep["bound"]["min"] >= p.membrane_min and rep["bound"]["max"] <= p.membrane_max
        assert not rep["saturation_possible"]
        assert rep["threshold"]["max_rel_error"] < 1 / 32
        # θ_c·δ_c ≈ θ, the grid unit δ_c is scale
        assert np.allclose(layer.threshold * layer.scale, report["trained"]["threshold"], rtol=1 / 32)
    assert net.metadata["compile_report"] == report and net.metadata["dataset"] == "mnist5k"
    assert report["notes"] == []


def test_compile_report_loihi2(exported):
    _, path = exported(quant_scale="po2")
    net, report = compile_qonnx(path, get_profile("loihi2"))
    assert any("zero reset" in n for n in report["notes"])
    assert report["leak"]["decay"] == round((1 - report["leak"]["beta"]) * 4096)
    for layer, rep in zip(net.layers, report["layers"]):
        assert np.all(layer.threshold % 64 == 0)  # vth << 6
        assert np.all((layer.threshold >> 6) < 2**17)
        assert np.abs(layer.weight).max() <= 127
        if rep["weight_multiplier"] > 1:  # 4-bit integers scaled into the 8-bit mantissa
            assert layer.current_shift == net.profile.frac_bits


def test_integer_graph_qonnx_and_ort_equal_integer_torch(exported, mnist_test, tmp_path):
    _, path = exported(quant_scale="po2")
    net, _ = compile_qonnx(path, get_profile("fpga"))
    int_path = export_integer(net, tmp_path / "model.fpga.onnx")
    meta = read_metadata(onnx.load(str(int_path)))
    assert meta["kind"] == "integer" and meta["profile"]["name"] == "fpga"
    assert {o.name for o in onnx.load(str(int_path)).graph.output} >= {"z1", "z2", "z3"}
    ref = run_integer_torch(net, mnist_test.x, record=True)
    by_qonnx = run_integer_onnx(int_path, mnist_test.x, engine="qonnx", record=True)
    by_ort = run_integer_onnx(int_path, mnist_test.x, engine="ort", record=True)
    for key in KEYS:
        assert np.array_equal(by_qonnx[key], ref[key]), key
        assert np.array_equal(by_ort[key], ref[key]), key
    assert ref["z1"].dtype == np.uint8 and ref["u1"].dtype == np.int64
    # the integer network still classifies like the trained one (tiny model, T = 8)
    float_pred = predictions(run_onnx_steps(path, to_tensor(mnist_test.x, "static").numpy())["z3"])
    agree = float((predictions(ref["z3"]) == float_pred).mean())
    print(f"fpga integer vs float predictions agree on {agree:.1%}")
    assert agree > 0.8


def test_read_integer_qonnx_round_trip(exported, tmp_path):
    _, path = exported(quant_scale="po2")
    for profile in (get_profile("fpga"), get_profile("loihi2")):
        net, _ = compile_qonnx(path, profile)
        back = read_integer_qonnx(export_integer(net, tmp_path / f"{profile.name}.onnx"))
        assert back.profile == net.profile and back.num_steps == net.num_steps and back.classes == net.classes
        assert back.input_shape == net.input_shape and back.encoding == net.encoding
        for a, b in zip(net.layers, back.layers):
            assert (a.name, a.kind, a.pool, a.current_shift, a.leak_const, a.weight_exp) == (
                b.name,
                b.kind,
                b.pool,
                b.current_shift,
                b.leak_const,
                b.weight_exp,
            )
            for field in ("weight", "threshold", "bias", "scale"):
                assert np.array_equal(getattr(a, field), getattr(b, field)), (a.name, field)
        assert back.metadata["compile_report"] == net.metadata["compile_report"]


# --------------------------------------------------------------------------------------------------
# Table I configurations


@pytest.fixture(scope="module")
def synthetic(synthetic_export):
    """Factory: (checkpoint, float ONNX) of an untrained spiking model of a configuration."""
    return synthetic_export


def _float_graph_matches_torch(ckpt, path, x, what: str) -> dict[str, np.ndarray]:
    """The float graph (onnxruntime) against PyTorch within the float bounds of ``float_compare``."""
    ref = torch_reference(ckpt, x)
    got = run_onnx_steps(path, x.numpy(), record=True)
    assert_float_agreement(got, ref, what=what)
    return ref


def _integer_graph_matches_torch(net, x_int, path) -> dict[str, np.ndarray]:
    int_path = export_integer(net, path)
    ref = run_integer_torch(net, x_int)
    got = run_integer_onnx(int_path, x_int, engine="ort")
    for key in ("z1", "z2", "z3"):
        assert np.array_equal(got[key], ref[key]), key
    return ref


@pytest.mark.float_kernels
def test_no_batch_norm_export(synthetic, mnist_test, tmp_path):
    ckpt, path = synthetic(batch_norm=False)
    model, meta = check_qsnn_model(path)
    assert meta["batch_norm"] is False
    assert "BatchNormalization" not in {n.op_type for n in model.graph.node}
    casts = [n for n in model.graph.node if n.op_type == "Cast"]
    assert all(onnx.helper.get_attribute_value(n.attribute[0]) == onnx.TensorProto.FLOAT for n in casts)
    _float_graph_matches_torch(ckpt, path, to_tensor(mnist_test.x[:100], "static"), "no BatchNorm")
    net, _ = compile_qonnx(path, get_profile("fpga"))
    assert all(np.all(layer.bias == 0) for layer in net.layers)
    _integer_graph_matches_torch(net, mnist_test.x[:50], tmp_path / "nobn.onnx")


@pytest.mark.float_kernels
def test_negative_batchnorm_gamma_flips_channel_weights(synthetic, mnist_test, tmp_path):
    """γ < 0 channels: weights negated, scale |γ|/σ; the integer network then tracks the float one."""
    ckpt, path = synthetic()
    model = model_from_checkpoint(ckpt)
    ref = _float_graph_matches_torch(ckpt, path, to_tensor(mnist_test.x[:100], "static"), "BatchNorm γ < 0")
    net, report = compile_qonnx(path, get_profile("fpga"))
    gammas = [bn.weight.detach().numpy() for bn in model.norms if isinstance(bn, torch.nn.BatchNorm2d)]
    for layer, rep, gamma in zip(net.layers[:2], report["layers"], gammas):
        assert rep["flipped_channels"] == int((gamma < 0).sum()) > 0
        brevitas_int = model.synapse_by_name()[layer.name].quant_weight().int().numpy()
        sign = np.where(gamma < 0, -1, 1).reshape(-1, 1, 1, 1)
        assert np.array_equal(layer.weight, brevitas_int * sign)
    got = _integer_graph_matches_torch(net, mnist_test.x[:100], tmp_path / "flip.onnx")
    for i in (1, 2, 3):  # rounding to the int16 grid changes few spikes (a wrong sign would change most)
        assert float((got[f"z{i}"] == ref[f"z{i}"]).mean()) > 0.95


@pytest.mark.float_kernels
def test_fp32_export_and_compile(synthetic, mnist_test, tmp_path):
    ckpt, path = synthetic(precision="fp32")
    model, meta = check_qsnn_model(path)
    assert meta["precision"] == "fp32" and meta["weight_bits"] == 32 and meta["quant_scale"] == "none"
    assert "Quant" not in {n.op_type for n in model.graph.node}
    with pytest.raises(ExportError, match="float weights"):
        quant_weights(model)
    _float_graph_matches_torch(ckpt, path, to_tensor(mnist_test.x[:100], "static"), "fp32")
    net, report = compile_qonnx(path, get_profile("fpga"))
    assert any("post-training quantization" in n for n in report["notes"])
    for layer, rep in zip(net.layers, report["layers"]):
        assert np.abs(layer.weight).max() <= 7
        assert 0 < rep["weight_quantization"]["max_rel_error"] <= 1 / 14 + 1e-9  # half a step of max|W|/7
    _integer_graph_matches_torch(net, mnist_test.x[:30], tmp_path / "fp32.onnx")
    # loihi2: quantized so that the folded taps fit 8 bits and θ fits the 17-bit vth at the fixed shift 6
    net8, report8 = compile_qonnx(path, get_profile("loihi2"))
    for layer, rep in zip(net8.layers, report8["layers"]):
        assert 2 <= rep["weight_quantization"]["bits"] <= 8
        assert np.abs(fold_pool(layer.weight, layer.pool) if layer.kind == "conv" else layer.weight).max() <= 127
        assert layer.current_shift == 6 and (layer.threshold >> 6).max() < 2**17


@pytest.mark.float_kernels
def test_dvs_export_and_integer_graph(exported, trained_run, dvs_data_dir, tmp_path):
    """Event inputs: the float graph within the float bounds of PyTorch (40 samples: FEW_SAMPLES), the
    integer graph bit-exact under both executors."""
    ckpt, path = exported(dataset="dvs128")
    model, meta = check_qsnn_model(path)
    assert meta["encoding"] == "events" and meta["input_shape"] == [2, 32, 32] and len(meta["classes"]) == 11
    assert meta["input_scale"] == 1.0
    split = load_split("dvs128", "test", data_dir=dvs_data_dir, num_steps=meta["num_steps"])
    x = to_tensor(split.x[:40], "events")
    ref = torch_reference(ckpt, x)
    got = run_onnx_steps(path, x.numpy(), record=True)
    assert_float_agreement(got, ref, what="dvs ort vs torch", **FEW_SAMPLES)
    # an int16 membrane cannot hold the worst case of 15 events per cell: refused, or compiled when allowed
    net, report = compile_qonnx(path, get_profile("fpga", membrane_bits=24))
    assert not report["saturation_possible"]
    int_path = export_integer(net, tmp_path / "dvs.onnx")
    sub = run_integer_onnx(int_path, split.x[:5], engine="qonnx")
    ref_int = run_integer_torch(net, split.x[:40])
    full = run_integer_onnx(int_path, split.x[:40], engine="ort")
    for key in ("z1", "z2", "z3"):
        assert np.array_equal(full[key], ref_int[key]) and np.array_equal(sub[key], ref_int[key][:, :5]), key


@pytest.mark.float_kernels
def test_model_trained_for_loihi2_exports_its_delay_lines(synthetic, mnist_test, tmp_path):
    """A model trained with --profile loihi2 (zero reset, one-step synaptic delay, β on the 12-bit dv
    grid): the float graph has the delay lines d1..d3 as state and equals PyTorch; the compiler reads
    them back; a profile the model was not trained for gets a warning note, its own profile none."""
    chip = TrainConfig.from_preset("mnist5k", "int4").for_profile("loihi2")
    ckpt, path = synthetic(
        quant_scale="po2",
        reset=chip.reset,
        synaptic_delay=chip.synaptic_delay,
        profile=chip.profile,
        beta=chip.beta,
        threshold=1.0,
    )  # spikes up to z3 within T = 8
    model, meta = check_qsnn_model(path)
    assert [i.name for i in model.graph.input] == ["x", "u1", "u2", "u3", "d1", "d2", "d3"]
    assert {"d1_out", "d2_out", "d3_out"} <= {o.name for o in model.graph.output}
    assert (meta["synaptic_delay"], meta["trained_profile"], meta["reset"]) == (1, "loihi2", "zero")
    ref = _float_graph_matches_torch(ckpt, path, to_tensor(mnist_test.x[:100], "static"), "synaptic delay 1")
    assert ref["z2"].sum() > 0 and ref["z3"].sum() > 0
    graph = read_float_graph(path)
    assert (graph.synaptic_delay, graph.trained_profile) == (1, "loihi2")
    net, report = compile_qonnx(path, get_profile("loihi2"))
    assert report["trained"]["synaptic_delay"] == 1 and report["trained"]["profile"] == "loihi2"
    assert not any(n.startswith("the model was") for n in report["notes"])
    _, fpga = compile_qonnx(path, get_profile("fpga"), allow_saturation=True)
    warned = [n for n in fpga["notes"] if n.startswith("the model was trained for profile 'loihi2'")]
    assert warned and "synaptic delay 1 (the profile: 0)" in warned[0] and "zero reset" in warned[0]
    # the paper's semantics (subtract reset, no delay): nothing under fpga, a warning under loihi2
    _, plain = synthetic(quant_scale="po2")
    plain_meta = check_qsnn_model(plain)[1]
    assert mismatch_warning(plain_meta, get_profile("fpga")) == ""
    assert mismatch_warning(plain_meta, get_profile("loihi2")).startswith(
        "the model was not trained for a chip profile with subtract reset"
    )
    # a graph whose metadata no longer says it is delayed does not parse as an undelayed one
    edited = onnx.load(path)
    set_metadata(edited, {**meta, "synaptic_delay": 0})
    onnx.save(edited, tmp_path / "edited.onnx")
    with pytest.raises(ExportError, match="first synapse must read the graph input"):
        compile_qonnx(tmp_path / "edited.onnx", get_profile("loihi2"))


def test_compile_and_runtime_do_not_import_torch():
    code = (
        "import sys; import qsnn.export.compile, qsnn.export.runtime, qsnn.export.qonnx_int, "
        "qsnn.export.format; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.float_kernels
def test_standard_batchnorm_op_when_pytorch_arithmetic_is_not_recognised(synthetic, mnist_test, tmp_path, monkeypatch):
    """If the probe cannot reproduce PyTorch's BatchNorm rounding, the export falls back to the
    standard BatchNormalization op (metadata bn_exact false), which onnxruntime rounds its own way:
    the graph still agrees within the float bounds; compile reads that form as well."""
    import qsnn.export.qonnx_float as qf

    ckpt, exact_path = synthetic()
    monkeypatch.setattr(qf, "detect_bn_arithmetic", lambda bn, seed=0: None)
    path = export_float(ckpt, tmp_path / "bn.onnx")
    model, meta = check_qsnn_model(path)
    assert meta["bn_exact"] is False
    assert [n.op_type for n in model.graph.node].count("BatchNormalization") == 2
    x = to_tensor(mnist_test.x[:50], "static")
    ref = torch_reference(ckpt, x)
    got = run_onnx_steps(path, x.numpy(), record=True)
    assert_float_agreement(got, ref, what="BatchNormalization op")
    a, _ = compile_qonnx(path, get_profile("fpga"))
    b, _ = compile_qonnx(exact_path, get_profile("fpga"))
    for la, lb in zip(a.layers, b.layers):
        assert np.array_equal(la.weight, lb.weight) and la.current_shift == lb.current_shift
        assert np.abs(la.threshold - lb.threshold).max() <= 1 and np.abs(la.bias - lb.bias).max() <= 1


def test_host_loop_hoists_the_time_invariant_prefix_without_changing_a_bit(synthetic_onnx, monkeypatch):
    """onnxruntime's host loop runs what does not change over T (layer 1 of a static image, the
    weights' QCDQ chains) once per batch: every spike and membrane equals the whole graph's run per
    step, on real images (static) and on frames (nothing but the weights is invariant)."""
    import onnx as onnx_lib

    from qsnn.export import runtime

    x = load_split("mnist5k", "test").x[:40].astype(np.float32) / np.float32(255)
    frames = np.random.default_rng(0).poisson(0.4, size=(12, 6, 1, 28, 28)).astype(np.float32)
    model = onnx_lib.load(str(synthetic_onnx))
    assert runtime.split_time_invariant(model, static=True) is not None
    split = {
        "static": runtime.run_onnx_steps(synthetic_onnx, x, record=True, batch_size=16),
        "frames": runtime.run_onnx_steps(synthetic_onnx, frames, record=True, batch_size=5),
    }
    runner = runtime._ort_runner(synthetic_onnx, model, "float")
    assert runner.split(True) is not None and runner.split(False) is not None
    monkeypatch.setattr(runtime._OrtStep, "split", lambda self, static: None)
    whole = {
        "static": runtime.run_onnx_steps(synthetic_onnx, x, record=True, batch_size=16),
        "frames": runtime.run_onnx_steps(synthetic_onnx, frames, record=True, batch_size=5),
    }
    for kind in split:
        assert split[kind]["z1"].sum() > 0
        for key in whole[kind]:
            assert np.array_equal(split[kind][key], whole[kind][key]), (kind, key)
