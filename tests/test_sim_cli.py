"""``qsnn-sim``: the report, the plot, the --check agreement, the frac_bits sweep, and bad input."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from qsnn.errors import ProfileError
from qsnn.profiles import parse_overrides
from qsnn.sim.cli import main

pytest.importorskip("qsnn.export.compile")
pytest.importorskip("qsnn.export.integer_torch")

from qsnn.export.qonnx_float import export_float  # noqa: E402


@pytest.fixture(scope="module")
def onnx_model(trained_run, tmp_path_factory):
    return export_float(trained_run() / "best.pt", tmp_path_factory.mktemp("sim-cli") / "model.onnx")


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args] + ["--no-progress"])


def assert_clean_error(result, *fragments):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_report_plot_check_and_sweep(onnx_model, tmp_path):
    report_path, plot_path = tmp_path / "out" / "report.json", tmp_path / "out" / "activity.png"
    result = invoke(
        onnx_model,
        "--profile",
        "fpga",
        "--dataset",
        "mnist5k",
        "--split",
        "test",
        "--subset",
        100,
        "--report",
        report_path,
        "--plot",
        plot_path,
        "--check",
        "--frac-bits-sweep",
        "0,6",
    )
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    acc = report["accuracy"]
    assert 0 <= acc["float_model"] <= 1 and 0 <= acc["integer_sim"] <= 1
    assert acc["difference"] == pytest.approx(acc["integer_sim"] - acc["float_model"])
    agree = report["agreement"]["vs_float_model"]
    assert agree["samples"] == 100 and 0 <= agree["predictions_equal_pct"] <= 100
    check = report["agreement"]["spike_trains_vs_integer_torch"]
    assert check["bit_exact"] is True and check["samples"] == 100
    assert check["equal_pct"] == {"z1": 100.0, "z2": 100.0, "z3": 100.0}
    assert "100.00 %" in result.output and "bit-exact vs integer torch  yes" in result.output
    layers = report["hardware"]["layers"]
    assert [layer["name"] for layer in layers] == ["conv1", "conv2", "fc"]
    assert [layer["weight_memory_bits"] for layer in layers] == [16 * 25 * 4, 64 * 16 * 25 * 4, 10 * 1024 * 4]
    for layer in layers:
        assert len(layer["spikes_per_step"]) == report["num_steps"]
        assert layer["membrane_bits"] == 16 and layer["membrane_bits_used"] <= 16
        assert layer["synops_per_inference"] >= 0 and 0 <= layer["sparsity"] <= 1
    assert [row["frac_bits"] for row in report["frac_bits_sweep"]] == [0, 6]
    assert all("accuracy" in row or "error" in row for row in report["frac_bits_sweep"])
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "accuracy vs frac_bits" in result.output


def test_loihi2_report_notes_the_reset_change(onnx_model, tmp_path):
    report_path = tmp_path / "r.json"
    result = invoke(onnx_model, "--profile", "loihi2", "--allow-saturation", "--subset", 50, "--report", report_path)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["profile"]["name"] == "loihi2" and report["profile"]["reset"] == "zero"
    assert "subtract reset" in report["note"] and "zero reset" in report["note"]


def test_event_model_end_to_end(trained_run, dvs_data_dir, tmp_path):
    model = export_float(trained_run(dataset="dvs128") / "best.pt", tmp_path / "dvs.onnx")
    result = invoke(
        model,
        "--data-dir",
        dvs_data_dir,
        "--allow-saturation",
        "--check",
        "--report",
        tmp_path / "r.json",
        "--batch-size",
        16,
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["dataset"] == "dvs128" and report["encoding"] == "events"
    assert report["agreement"]["spike_trains_vs_integer_torch"]["bit_exact"] is True
    assert report["accuracy"]["float_model"] is not None
    assert report["agreement"]["vs_float_model"]["samples"] == report["samples"]


def test_integer_export_is_accepted(onnx_model, tmp_path):
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.qonnx_int import export_integer
    from qsnn.profiles import FPGA

    net, _ = compile_qonnx(onnx_model, FPGA)
    path = export_integer(net, tmp_path / "int.onnx")
    result = invoke(path, "--subset", 20, "--report", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r.json").read_text())["model_kind"] == "integer"
    assert_clean_error(invoke(path, "--profile", "loihi2", "--subset", 20), "compiled for profile 'fpga'")


# --------------------------------------------------------------------------------------------------
# bad input: one line, exit 1, no traceback


def test_onnx_that_is_not_a_qsnn_export(tmp_path):
    node = onnx.helper.make_node("Identity", ["x"], ["y"])
    graph = onnx.helper.make_graph(
        [node],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    path = tmp_path / "other.onnx"
    onnx.save(onnx.helper.make_model(graph), str(path))
    assert_clean_error(invoke(path), "not a qsnn QONNX export")


def test_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    assert_clean_error(invoke(path), "junk.onnx")
    assert_clean_error(invoke(tmp_path / "missing.onnx"), "missing.onnx")


def test_dataset_that_does_not_fit_the_model(onnx_model, dvs_data_dir):
    result = invoke(onnx_model, "--dataset", "dvs128", "--data-dir", dvs_data_dir)
    assert_clean_error(
        result,
        "dataset dvs128 does not fit",
        "encoding events (the model's: static)",
        "input shape 2×32×32 (the model's: 1×28×28)",
        "11 classes (Hand clapping, Right hand wave, Left hand wave, Right arm cw, ...) (the model's: 10 (0, 1, 2, 3, ...))",
        "the model was trained on mnist5k: leave --dataset out",
    )
    assert "pass --dataset" not in result.output  # the old hint contradicted the message


def test_dataset_with_other_classes(onnx_model, tmp_path):
    # FashionMNIST has MNIST's shapes but other classes: refused, naming both
    from fixtures import write_mnist_idx_dir

    write_mnist_idx_dir(tmp_path / "fmnist", n_train=20, n_test=20, seed=0)
    result = invoke(onnx_model, "--dataset", "fmnist", "--data-dir", tmp_path)
    assert_clean_error(
        result, "dataset fmnist does not fit", "class names (T-shirt/top", "(the model's: (0, 1, 2, 3, ...)", "mnist5k"
    )


def test_profile_that_cannot_hold_the_network(onnx_model, tmp_path):
    assert_clean_error(
        invoke(onnx_model, "--profile-set", "membrane_bits=8", "--subset", 10),
        "layer conv1",
        "8-bit membrane",
        "--allow-saturation",
    )
    # told to saturate, it runs and counts the saturation events
    result = invoke(
        onnx_model,
        "--profile-set",
        "membrane_bits=8",
        "--allow-saturation",
        "--subset",
        20,
        "--report",
        tmp_path / "r.json",
        "--no-float",
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["compile_report"]["saturation_possible"] is True
    assert report["hardware"]["total"]["saturation_events"] >= 0
    assert report["accuracy"]["float_model"] is None
    # a profile that is impossible in itself
    assert_clean_error(invoke(onnx_model, "--profile-set", "membrane_bits=6"), "profile 'fpga' is impossible")


def test_bad_profile_settings(onnx_model):
    assert_clean_error(
        invoke(onnx_model, "--profile-set", "membrane_width=24"), "unknown profile field 'membrane_width'"
    )
    assert_clean_error(invoke(onnx_model, "--profile-set", "membrane_bits=wide"), "an integer")
    assert_clean_error(invoke(onnx_model, "--profile-set", "overflow=explode"), "overflow")


def test_parse_profile_sets_types():
    assert parse_overrides(["membrane_bits=24", "symmetric_clip=true", "overflow=wrap", "frac_bits=0x4"]) == {
        "membrane_bits": 24,
        "symmetric_clip": True,
        "overflow": "wrap",
        "frac_bits": 4,
    }
    with pytest.raises(ProfileError, match="KEY=VALUE"):
        parse_overrides(["membrane_bits"])
    assert np.isscalar(parse_overrides(["leak_bits=10"])["leak_bits"])
