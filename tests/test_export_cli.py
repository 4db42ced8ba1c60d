"""``qsnn-export`` and bad input: broken checkpoints, ONNX files that are not qsnn exports, profiles
that cannot hold the network, and atomic writes (a failed export never leaves a half file).
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from onnx import TensorProto, helper

from qsnn.errors import CheckpointError, ExportError, ProfileError
from qsnn.export.cli import TARGETS, main
from qsnn.export.compile import compile_qonnx
from qsnn.export.format import read_metadata, set_metadata
from qsnn.export.qonnx_float import export_float
from qsnn.export.qonnx_int import read_integer_qonnx
from qsnn.export.runtime import run_integer_onnx, run_onnx_steps
from qsnn.profiles import get_profile


@pytest.fixture(scope="module")
def workdir(trained_run, tmp_path_factory):
    """A folder with a copy of the po2 fixture checkpoint (ckpt.pt) and its float export (float.onnx)."""
    folder = tmp_path_factory.mktemp("export-cli")
    ckpt = folder / "ckpt.pt"
    shutil.copy(trained_run(quant_scale="po2") / "best.pt", ckpt)
    export_float(ckpt, folder / "float.onnx")
    return folder


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    for frag in fragments:
        assert frag in lines[0], (frag, lines[0])


def test_help_explains_every_option():
    result = invoke("--help")
    assert result.exit_code == 0
    for opt in ("--to", "-o, --output", "--profile", "--profile-set", "--allow-saturation", "--force", "--debug"):
        assert opt in result.output
    assert list(TARGETS) == ["qonnx", "fpga", "loihi2", "nir"]  # one list: the --to choices
    for target in TARGETS:
        assert target in result.output


def test_cli_float_then_integer_export(workdir):
    ckpt = workdir / "ckpt.pt"
    result = invoke(ckpt, "--to", "qonnx", "-o", workdir / "cli.onnx")
    assert result.exit_code == 0, result.output
    for word in ("cli.onnx", "KiB", "time steps T", "8", "classes", "subtract reset", "po2"):
        assert word in result.output
    assert read_metadata(onnx.load(str(workdir / "cli.onnx")))["kind"] == "float"
    result = invoke(ckpt, "--to", "qonnx", "--profile", "fpga")  # default name: next to the checkpoint
    assert result.exit_code == 0, result.output
    out = workdir / "ckpt.fpga.onnx"
    assert "integer (profile fpga)" in result.output and "conv1" in result.output and "shift" in result.output
    net = read_integer_qonnx(out)
    assert net.profile == get_profile("fpga")
    # an existing output is not replaced without --force
    before = out.read_bytes()
    result = invoke(ckpt, "--to", "qonnx", "--profile", "fpga")
    assert_one_line_error(result, "exists", "--force")
    assert out.read_bytes() == before
    result = invoke(ckpt, "--to", "qonnx", "--profile", "fpga", "--profile-set", "membrane_bits=24", "--force")
    assert result.exit_code == 0, result.output
    assert read_integer_qonnx(out).profile.membrane_bits == 24
    # the float export as the source, compiled under another profile
    result = invoke(workdir / "float.onnx", "--to", "qonnx", "--profile", "loihi2", "-o", workdir / "l2.onnx")
    assert result.exit_code == 0, result.output
    assert "zero reset" in result.output and read_integer_qonnx(workdir / "l2.onnx").profile.name == "loihi2"
    assert_one_line_error(invoke(workdir / "float.onnx", "--to", "qonnx"), "already a QONNX file", "--profile")


def test_cli_profile_options(workdir):
    ckpt = workdir / "ckpt.pt"
    out = workdir / "p.onnx"
    assert_one_line_error(
        invoke(ckpt, "--to", "qonnx", "--profile", "fpga", "--profile-set", "membrane_bits=8", "-o", out),
        "layer conv1",
        "8-bit membrane",
        "--allow-saturation",
    )
    assert not out.exists()
    assert_one_line_error(
        invoke(ckpt, "--to", "qonnx", "--profile", "fpga", "--profile-set", "colour=blue", "-o", out),
        "unknown profile field 'colour'",
    )
    assert_one_line_error(
        invoke(ckpt, "--to", "qonnx", "--profile", "fpga", "--profile-set", "membrane_bits=many", "-o", out),
        "membrane_bits",
        "not a valid int",
    )
    assert_one_line_error(invoke(ckpt, "--to", "qonnx", "--profile-set", "membrane_bits=24", "-o", out), "--profile")
    assert_one_line_error(
        invoke(ckpt, "--to", "qonnx", "--profile", "fpga", "--profile-set", "weight_bits=3", "-o", out),
        "layer conv1",
        "3-bit weights",
    )
    result = invoke(
        ckpt, "--to", "qonnx", "--profile", "fpga", "--profile-set", "membrane_bits=10", "--allow-saturation", "-o", out
    )
    assert result.exit_code == 0, result.output
    assert "SATURATION POSSIBLE" in result.output
    net = read_integer_qonnx(out)
    assert net.metadata["compile_report"]["saturation_possible"] is True


def test_profile_too_small_is_refused_unless_saturation_is_allowed(workdir):
    path = workdir / "float.onnx"
    with pytest.raises(ProfileError, match=r"layer conv1: .*8-bit membrane"):
        compile_qonnx(path, get_profile("fpga", membrane_bits=8))
    net, report = compile_qonnx(path, get_profile("fpga", membrane_bits=8), allow_saturation=True)
    assert report["saturation_possible"] and any("saturate" in n for n in report["notes"])
    for layer in net.layers:
        assert 4 * (layer.threshold.max() + np.abs(layer.bias).max()) <= 127
    with pytest.raises(ProfileError, match="fan-in"):
        compile_qonnx(path, get_profile("fpga", max_fan_in=100))
    with pytest.raises(ProfileError, match="neurons"):
        compile_qonnx(path, get_profile("fpga", max_neurons=1000))


# --------------------------------------------------------------------------------------------------
# Broken checkpoints


def _bad_checkpoints(folder, good):
    data = torch.load(good, weights_only=True)
    other = dict(data, format_version=99)
    torch.save(other, folder / "other_version.pt")
    torch.save({"weights": torch.zeros(3)}, folder / "not_qsnn.pt")
    (folder / "text.pt").write_text("this is not a checkpoint\n")
    raw = good.read_bytes()
    (folder / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    return {
        "other_version.pt": "version 99",
        "not_qsnn.pt": "not a qsnn checkpoint",
        "text.pt": "not a readable qsnn checkpoint",
        "truncated.pt": "not a readable qsnn checkpoint",
    }


def test_bad_checkpoints_one_line_error_and_no_output(workdir, tmp_path):
    cases = _bad_checkpoints(tmp_path, workdir / "ckpt.pt")
    existing = export_float(
        workdir / "ckpt.pt", tmp_path / "existing.onnx"
    )  # an earlier export: --force may replace it
    previous = existing.read_bytes()
    for name, fragment in cases.items():
        src = tmp_path / name
        with pytest.raises(CheckpointError, match=fragment):
            export_float(src, tmp_path / "x.onnx")
        assert_one_line_error(invoke(src, "--to", "qonnx", "-o", tmp_path / "new.onnx"), name, fragment)
        assert_one_line_error(invoke(src, "--to", "qonnx", "--profile", "fpga", "-o", existing, "--force"), fragment)
        assert not (tmp_path / "new.onnx").exists() and not (tmp_path / "x.onnx").exists()
        assert existing.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temporary files left


def test_failed_write_leaves_the_existing_file_untouched(workdir, tmp_path, monkeypatch):
    out = export_float(workdir / "ckpt.pt", tmp_path / "model.onnx")  # an earlier export: --force may replace it
    previous = out.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("qsnn.atomic.os.fsync", disk_full)
    with pytest.raises(OSError):
        export_float(workdir / "ckpt.pt", out)
    assert out.read_bytes() == previous
    assert_one_line_error(
        invoke(workdir / "ckpt.pt", "--to", "qonnx", "--profile", "fpga", "-o", out, "--force"), "No space left"
    )
    assert out.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


# --------------------------------------------------------------------------------------------------
# ONNX files that are not qsnn exports


def _edit(src, dst, fn):
    model = onnx.load(str(src))
    fn(model)
    onnx.save(model, str(dst))
    return dst


def _all_readers(path):
    """Every entry point that reads a qsnn QONNX file."""
    x = np.zeros((2, 1, 28, 28), np.float32)
    return [
        lambda: compile_qonnx(path, get_profile("fpga")),
        lambda: run_onnx_steps(path, x),
        lambda: run_onnx_steps(path, x, engine="qonnx"),
    ]


def _rename_input(model, old, new):
    for vi in model.graph.input:
        if vi.name == old:
            vi.name = new
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _insert_relu(model):
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    out = conv.output[0]
    conv.output[0] = out + "_pre"
    idx = list(model.graph.node).index(conv)
    model.graph.node.insert(idx + 1, helper.make_node("Relu", [out + "_pre"], [out], name="sneaky_relu"))


def _set_meta(model, **changes):
    meta = {p.key: p.value for p in model.metadata_props}
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v is not None}
    set_metadata(model, meta)


def test_not_an_onnx_file(tmp_path):
    path = tmp_path / "noise.onnx"
    path.write_bytes(np.random.default_rng(0).integers(0, 256, size=300, dtype=np.uint8).tobytes())
    for read in _all_readers(path) + [lambda: read_integer_qonnx(path)]:
        with pytest.raises(ExportError, match="not an ONNX model|no such|qsnn"):
            read()
    assert_one_line_error(invoke(path, "--to", "qonnx", "--profile", "fpga", "-o", tmp_path / "o.onnx"), "noise.onnx")


def test_foreign_onnx_model(tmp_path):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 28, 28])],
    )
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph), str(path))
    for read in _all_readers(path):
        with pytest.raises(ExportError, match="not a qsnn QONNX export .*no 'format' metadata"):
            read()


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("missing_state_input", "the graph has 3 inputs and 4 outputs, its metadata 'interface' lists 4 and 4"),
        ("missing_state_output", "graph output 'v3' .role 'u3_out'. is produced by no node"),
        ("unknown_op", r"unsupported op\(s\) \['Relu'\]"),
        ("custom_op", r"unsupported op\(s\) \['Mystery'\]"),
        ("wrong_format", "format 'onnx-model'"),
        ("no_metadata", "no 'format' metadata"),
        ("future_version", "format version 99"),
        ("missing_field", r"lacks \['num_steps'\]"),
        ("unreadable_field", "metadata field 'classes'"),
    ],
)
def test_onnx_that_is_not_a_qsnn_export(workdir, tmp_path, case, fragment):
    src = workdir / "float.onnx"
    edits = {
        "missing_state_input": lambda m: m.graph.input.remove(next(i for i in m.graph.input if i.name == "u2")),
        "missing_state_output": lambda m: [setattr(o, "name", "v3") for o in m.graph.output if o.name == "u3_out"],
        "unknown_op": _insert_relu,
        "custom_op": lambda m: m.graph.node.append(helper.make_node("Mystery", ["x"], ["m_out"], domain="acme")),
        "wrong_format": lambda m: _set_meta(m, format="onnx-model"),
        "no_metadata": lambda m: m.ClearField("metadata_props"),
        "future_version": lambda m: _set_meta(m, format_version="99"),
        "missing_field": lambda m: _set_meta(m, num_steps=None),
        "unreadable_field": lambda m: _set_meta(m, classes="[0, 1"),
    }
    path = _edit(src, tmp_path / f"{case}.onnx", edits[case])
    for read in _all_readers(path):
        with pytest.raises(ExportError, match=fragment):
            read()


def test_renamed_interface_is_read_by_role(workdir, tmp_path):
    """A graph input renamed by a tool (qonnx-cleanup does this) keeps its role: position + structure."""
    src = workdir / "float.onnx"
    renamed = _edit(src, tmp_path / "renamed.onnx", lambda m: _rename_input(m, "u2", "global_in_2"))
    a, _ = compile_qonnx(src, get_profile("fpga"))
    b, _ = compile_qonnx(renamed, get_profile("fpga"))
    assert all(
        np.array_equal(la.weight, lb.weight) and np.array_equal(la.threshold, lb.threshold)
        for la, lb in zip(a.layers, b.layers)
    )


def test_edited_or_mismatched_exports(workdir, tmp_path):
    src = workdir / "float.onnx"
    edited = _edit(src, tmp_path / "beta.onnx", lambda m: _set_meta(m, beta="0.5"))
    with pytest.raises(ExportError, match="edited"):
        compile_qonnx(edited, get_profile("fpga"))
    with pytest.raises(ExportError, match="reset"):
        compile_qonnx(_edit(src, tmp_path / "reset.onnx", lambda m: _set_meta(m, reset="zero")), get_profile("fpga"))
    # the integer kind where the float kind is expected, and the other way round
    net, _ = compile_qonnx(src, get_profile("fpga"))
    from qsnn.export.qonnx_int import export_integer

    int_path = export_integer(net, tmp_path / "int.onnx")
    with pytest.raises(ExportError, match="'integer' kind .* expected 'float'"):
        compile_qonnx(int_path, get_profile("fpga"))
    with pytest.raises(ExportError, match="'float' kind .* expected 'integer'"):
        read_integer_qonnx(src)
    with pytest.raises(ExportError, match="'float' kind .* expected 'integer'"):
        run_integer_onnx(src, np.zeros((1, 1, 28, 28), np.uint8))
    # inputs that do not fit
    with pytest.raises(ExportError, match="does not match the model's input"):
        run_onnx_steps(src, np.zeros((2, 3, 28, 28), np.float32))
    with pytest.raises(ExportError, match=r"must lie in \[0, 255\]"):
        run_integer_onnx(int_path, np.full((1, 1, 28, 28), 300))
    with pytest.raises(ExportError, match="integer inputs"):
        run_integer_onnx(int_path, np.full((1, 1, 28, 28), 0.5))
    with pytest.raises(ExportError, match="engine"):
        run_onnx_steps(src, np.zeros((1, 1, 28, 28), np.float32), engine="tvm")
