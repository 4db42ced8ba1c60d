"""qsnn's QONNX files through qonnx's own tools: cleanup, static batch, datatypes, inference cost, determinism.

* ``qonnx-cleanup`` renames graph inputs/outputs (``global_in``...): compile_qonnx, the runtime and
  read_integer_qonnx find the roles from the metadata and the graph's structure and give the same
  network and the same spikes as on the original file.
* ``--batch-size 1`` fixes every input and output; the runtime runs such a file on any number of
  samples.
* spikes are annotated ``BINARY``: qonnx's ``inference_cost`` counts 1-bit × 4-bit MACs for the
  spiking layers, and its MACs and weight bits equal qsnn-sim's dense MACs / (N·T) and weight memory.
* two exports of one checkpoint are byte-identical.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from qsnn.errors import ExportError


@pytest.fixture(scope="module")
def exports(trained_run, tmp_path_factory):
    from qsnn.export.qonnx_float import export_float

    folder = tmp_path_factory.mktemp("qonnx-tools")
    ckpt = trained_run() / "best.pt"
    return {
        "ckpt": ckpt,
        "folder": folder,
        "float": export_float(ckpt, folder / "a.onnx"),
        "batch1": export_float(ckpt, folder / "b1.onnx", batch_size=1),
    }


def _cleaned(path, out):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.util.cleanup import cleanup_model

    model = cleanup_model(ModelWrapper(str(path)))
    model.save(str(out))
    return out


def test_two_exports_of_one_checkpoint_are_byte_identical(exports):
    from qsnn.export.qonnx_float import export_float

    again = export_float(exports["ckpt"], exports["folder"] / "again.onnx")
    assert again.read_bytes() == exports["float"].read_bytes()


def test_batch_size_fixes_every_input_and_output(exports):
    from qsnn.export.format import check_qsnn_model
    from qsnn.export.runtime import run_onnx_steps

    model, meta = check_qsnn_model(exports["batch1"])
    for vi in (*model.graph.input, *model.graph.output):
        assert vi.type.tensor_type.shape.dim[0].dim_value == 1, vi.name
    assert meta["batch"].startswith("static: 1")
    from qsnn.data import load_split

    x = (load_split("mnist5k", "test").x[:5] / 255.0).astype(np.float32)
    # the same graph, one sample per call either way (kernels may sum in another order for other batch sizes)
    ref = run_onnx_steps(exports["float"], x, record=True, batch_size=1)
    got = run_onnx_steps(exports["batch1"], x, record=True, batch_size=64)  # the file's batch 1 wins
    for key in ref:
        assert np.array_equal(ref[key], got[key]), key


def test_qonnx_cleanup_renamed_graph_compiles_and_runs_the_same(exports, tmp_path):
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.runtime import run_onnx_steps
    from qsnn.profiles import FPGA
    from qsnn.sim.engine import simulate

    cleaned = _cleaned(exports["float"], tmp_path / "clean.onnx")
    names = [i.name for i in onnx.load(str(cleaned)).graph.input]
    assert "x" not in names and names[0].startswith("global_in")  # qonnx really renamed them
    a, _ = compile_qonnx(exports["float"], FPGA)
    b, _ = compile_qonnx(cleaned, FPGA)
    for la, lb in zip(a.layers, b.layers):
        assert np.array_equal(la.weight, lb.weight) and np.array_equal(la.threshold, lb.threshold)
        assert np.array_equal(la.bias, lb.bias) and la.current_shift == lb.current_shift
    from qsnn.data import load_split

    split = load_split("mnist5k", "test")
    x = split.x[:50]
    ra, rb = simulate(a, x, record=True), simulate(b, x, record=True)
    for key in ra.spikes:
        assert np.array_equal(ra.spikes[key], rb.spikes[key])
    xf = (x / 255.0).astype(np.float32)
    assert np.array_equal(run_onnx_steps(exports["float"], xf)["z3"], run_onnx_steps(cleaned, xf)["z3"])


def test_qonnx_cleanup_of_the_integer_graph_reads_back(exports, tmp_path):
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.qonnx_int import export_integer, read_integer_qonnx
    from qsnn.export.runtime import run_integer_onnx
    from qsnn.profiles import FPGA

    net, _ = compile_qonnx(exports["float"], FPGA)
    path = export_integer(net, tmp_path / "int.onnx")
    cleaned = _cleaned(path, tmp_path / "int_clean.onnx")
    back = read_integer_qonnx(cleaned)
    for la, lb in zip(net.layers, back.layers):
        assert np.array_equal(la.weight, lb.weight)
    from qsnn.data import load_split

    x = load_split("mnist5k", "test").x[:8]
    a, b = run_integer_onnx(path, x, engine="ort"), run_integer_onnx(cleaned, x, engine="ort")
    for key in a:
        assert np.array_equal(a[key], b[key])


def test_reordered_interface_is_refused(exports):
    """Roles go by position; a graph whose inputs were reordered is refused, not misread."""
    from qsnn.export.format import check_qsnn_model

    model = onnx.load(str(exports["float"]))
    first, second = onnx.ValueInfoProto(), onnx.ValueInfoProto()
    first.CopyFrom(model.graph.input[0])
    second.CopyFrom(model.graph.input[1])
    model.graph.input[0].CopyFrom(second)  # u1 where x was
    model.graph.input[1].CopyFrom(first)
    with pytest.raises(ExportError, match="reordered"):
        check_qsnn_model(model)


def test_inference_cost_counts_binary_spikes_and_matches_qsnn_sim(exports, tmp_path):
    from qonnx.util.inference_cost import inference_cost

    from qsnn.data import load_split
    from qsnn.export.compile import compile_qonnx
    from qsnn.profiles import FPGA
    from qsnn.sim.engine import simulate
    from qsnn.sim.report import hardware_figures

    cost = inference_cost(str(exports["batch1"]), discount_sparsity=False, cost_breakdown=True)
    total = cost["total_cost"]
    assert total["op_mac_BINARY_SCALEDINT<4>"] > 0  # conv2 and fc: spikes × 4-bit weights
    binary = {
        k: v["op_mac_BINARY_SCALEDINT<4>"] for k, v in cost["node_cost"].items() if v.get("op_mac_BINARY_SCALEDINT<4>")
    }
    assert len(binary) == 2  # the two layers fed by spikes
    assert not any("FLOAT32_SCALEDINT" in k for k, v in cost["node_cost"].items() if k in binary)
    assert set(eval(total["unsupported"])) <= {"Cast", "Greater"}  # the LIF's comparison only
    net, _ = compile_qonnx(exports["float"], FPGA)
    x = load_split("mnist5k", "test").x[:20]
    hw = hardware_figures(net, simulate(net, x))
    n_steps = net.num_steps
    assert total["total_macs"] == pytest.approx(hw["total"]["dense_macs_per_inference"] / n_steps, abs=0)
    assert total["total_mem_w_bits"] == hw["total"]["weight_memory_bits"]
    assert total["mem_w_SCALEDINT<4>"] * 4 == total["total_mem_w_bits"]  # 4 bits per weight


def test_qsnn_sim_report_of_the_cleaned_file_equals_the_original(exports, tmp_path):
    """`qonnx-cleanup model.onnx` then `qsnn-sim` on the cleaned file: the same report."""
    import json

    from click.testing import CliRunner

    from qsnn.sim.cli import main

    cleaned = _cleaned(exports["batch1"], tmp_path / "clean_b1.onnx")
    reports = []
    for src in (exports["float"], cleaned):
        out = tmp_path / f"{src.stem}.json"
        res = CliRunner().invoke(
            main, [str(src), "--profile", "fpga", "--subset", "40", "--no-progress", "--report", str(out)]
        )
        assert res.exit_code == 0, res.output
        rep = json.loads(out.read_text())
        rep.pop("model"), rep.pop("timing")
        reports.append(rep)
    assert reports[0] == reports[1]
