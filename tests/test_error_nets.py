"""Error nets that do not hide bugs.

A damaged file is reported as damaged (one ``error:`` line naming the file) only by the code that
parses it; user-input errors are :class:`~qsnn.errors.QsnnError` subclasses raised where they are
detected; the command-line wrapper turns those, and OS errors on the user's paths, into one line.
Anything else is a bug: it keeps its traceback, which names the code at fault.
"""

from __future__ import annotations

import subprocess
import sys
import traceback

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from faults_helpers import assert_clean_cli_error

from qsnn.cli import on_user_path
from qsnn.errors import ExportError, InputError, NetworkError, QsnnError
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import FPGA

#: A bug injected into the compiler: one of its passes trips over a missing dictionary key.
INJECT_BUG = "import qsnn.export.compile as c; c.accumulator_range = lambda *a: {}['acc_max']"


def _traceback(exc: BaseException) -> str:
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


def test_a_bug_in_the_compiler_surfaces_as_a_traceback_naming_the_compiler(synthetic_onnx, monkeypatch):
    import qsnn.export.compile as compiler
    from qsnn.export.cli import main as export_main

    monkeypatch.setattr(compiler, "accumulator_range", lambda *a: {}["acc_max"])
    with pytest.raises(KeyError) as err:  # not an ExportError "damaged file"
        compiler.compile_qonnx(synthetic_onnx, FPGA)
    text = _traceback(err.value)
    assert "export/compile.py" in text and "choose_membrane_grid" in text and "compile_qonnx" in text
    result = CliRunner().invoke(
        export_main,
        [str(synthetic_onnx), "--to", "qonnx", "--profile", "fpga", "-o", str(synthetic_onnx.with_name("bug.onnx"))],
    )
    assert type(result.exception) is KeyError and "error:" not in result.output
    assert "choose_membrane_grid" in "".join(traceback.format_exception(*result.exc_info))


def test_a_bug_in_the_compiler_through_the_installed_command(synthetic_onnx):
    """The real qsnn-sim process: a traceback on stderr naming the compiler's pass, no ``error:`` line."""
    code = f"{INJECT_BUG}; import sys; from qsnn.sim.cli import main; sys.argv[0] = 'qsnn-sim'; main()"
    res = subprocess.run(
        [sys.executable, "-c", code, str(synthetic_onnx), "--no-progress", "--no-float", "--subset", "5"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 1, res.stderr
    assert "Traceback" in res.stderr and "KeyError: 'acc_max'" in res.stderr
    assert "export/compile.py" in res.stderr and "choose_membrane_grid" in res.stderr
    assert not [line for line in res.stderr.splitlines() if line.startswith("error:")], res.stderr


def _edit(src, dst, fn):
    model = onnx.load(str(src))
    fn(model)
    onnx.save(model, str(dst))
    return dst


def _rounding(model: onnx.ModelProto, mode: bytes) -> None:
    quant = next(n for n in model.graph.node if n.op_type == "Quant")
    for attr in quant.attribute:
        if attr.name == "rounding_mode":
            attr.s = mode


@pytest.mark.parametrize("damage", ["unknown rounding mode", "truncated", "bits flipped"])
def test_a_truly_damaged_file_still_gives_the_one_line_message(synthetic_onnx, tmp_path, damage):
    from qsnn.export.compile import compile_qonnx
    from qsnn.sim.cli import main as sim_main

    raw = synthetic_onnx.read_bytes()
    path = tmp_path / "damaged.onnx"
    if damage == "unknown rounding mode":  # the parser trips (ValueError in qonnx's rounding table)
        _edit(synthetic_onnx, path, lambda m: _rounding(m, b"BANANA"))
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 3])
    else:
        at = raw.find(b"conv2.weight_scale")  # the name of a tensor the graph needs
        path.write_bytes(raw[:at] + bytes([raw[at] ^ 0x20]) + raw[at + 1 :])
    with pytest.raises(ExportError) as err:
        compile_qonnx(path, FPGA)
    assert str(path) in str(err.value)
    if damage == "unknown rounding mode":
        assert "damaged or edited qsnn QONNX file (ValueError" in str(err.value)
    result = CliRunner().invoke(sim_main, [str(path), "--no-progress", "--no-float", "--subset", "5"])
    assert_clean_cli_error(result, path.name)


def test_a_bug_in_a_target_reader_is_not_called_a_damaged_folder(tmp_path, monkeypatch):
    from test_targets import tiny_net

    from qsnn.targets import read_target, write_target
    from qsnn.targets.fpga import tables as fpga

    folder = write_target("fpga", tiny_net(FPGA), tmp_path / "tables")
    monkeypatch.setattr(fpga, "unpack_weights", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("reader bug")))
    with pytest.raises(RuntimeError, match="reader bug"):
        read_target(folder)
    monkeypatch.undo()
    manifest = folder / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"weight_shape"', '"weight_shapes"'))  # an edited manifest
    with pytest.raises(ExportError, match=r"damaged or edited manifest.json or tables \(KeyError"):
        read_target(folder)


def test_user_input_errors_are_qsnn_errors_where_they_are_detected():
    from qsnn.sim import simulate

    layer = IntegerLayer(
        "fc", "dense", np.ones((2, 1), np.int8), 1, 0, np.array([5, 5]), np.zeros(2, np.int64), 4096, np.ones(2)
    )
    net = IntegerNetwork((layer,), FPGA, (1, 1, 1), 2, "static", ("a", "b"))
    with pytest.raises(InputError, match="static images"):
        simulate(net, np.zeros((1, 1, 2, 2), np.uint8))
    with pytest.raises(NetworkError, match="leak constant 9999"):
        simulate(
            IntegerNetwork(
                (
                    IntegerLayer(
                        "fc",
                        "dense",
                        np.ones((2, 1), np.int8),
                        1,
                        0,
                        np.array([5, 5]),
                        np.zeros(2, np.int64),
                        9999,
                        np.ones(2),
                    ),
                ),
                FPGA,
                (1, 1, 1),
                2,
                "static",
                ("a", "b"),
            ),
            np.zeros((1, 1, 1, 1), np.uint8),
        )
    with pytest.raises(NetworkError, match="but there are 3 classes"):
        IntegerNetwork((layer,), FPGA, (1, 1, 1), 2, "static", ("a", "b", "c"))
    for cls in (InputError, NetworkError):  # and still ValueErrors, as before
        assert issubclass(cls, QsnnError) and issubclass(cls, ValueError)


def test_os_errors_count_only_on_the_users_paths(tmp_path):
    out = tmp_path / "out" / "model.onnx"
    assert on_user_path(OSError(28, "No space left", str(out)), [out])
    assert on_user_path(OSError(28, "No space left", str(out.parent / ".model.onnx.x1.tmp")), [out])  # its temporary
    assert on_user_path(OSError(13, "Permission denied", str(tmp_path / "tables" / "L1.mem")), [tmp_path / "tables"])
    assert not on_user_path(OSError(2, "No such file", "/usr/lib/somewhere/else.so"), [out])
    assert not on_user_path(OSError(5, "I/O error"), [out])  # no file named: not the user's


def test_an_os_error_elsewhere_keeps_its_traceback(synthetic_onnx, monkeypatch, tmp_path):
    import qsnn.export.compile as compiler
    from qsnn.export.cli import main as export_main

    def broken(*args):
        raise FileNotFoundError(2, "No such file or directory", "/nonexistent/qsnn/internal/table.bin")

    monkeypatch.setattr(compiler, "accumulator_range", broken)
    args = [str(synthetic_onnx), "--to", "qonnx", "--profile", "fpga", "-o", str(tmp_path / "x.onnx")]
    result = CliRunner().invoke(export_main, args)
    assert isinstance(result.exception, FileNotFoundError) and "error:" not in result.output
    monkeypatch.undo()
    (tmp_path / "x.onnx").mkdir()  # the user's output is a folder
    assert_clean_cli_error(CliRunner().invoke(export_main, args + ["--force"]), "x.onnx")
