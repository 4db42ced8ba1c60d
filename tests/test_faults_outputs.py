"""No command destroys a user's files: every command × every output-path collision class.

Each case runs a real command line (in process) in a scratch folder holding what a user has next to
a run — a checkpoint, its QONNX export, a dataset folder, a training run directory, an fpga table
folder, an unrelated file and folder, symbolic links — and asserts that the command is **refused
before any work** (the function that would do the work is replaced by one that fails the test),
with one ``error:`` line naming the path and no traceback, and that **nothing changed**: the
SHA-256 of every file (and every link target and folder) in the scratch folder before and after.

``python tests/test_faults_outputs.py`` prints the table of the cases (commands × classes).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from faults_helpers import assert_clean_cli_error, snapshot
from fixtures import synthetic_checkpoint, write_mnist_idx_dir

from qsnn.output_guard import (
    QONNX,
    SIM_PLOT,
    SIM_REPORT,
    OutputError,
    check_outputs,
    describe,
    os_error_message,
    target_folder,
)

#: Collision classes (the columns of the table).
CLASSES = {
    "input": "output == an input",
    "other": "output == the other output",
    "holds": "output folder holds an input",
    "rundir": "output onto a run directory",
    "dir_on_file": "folder output onto a file",
    "file_on_dir": "file output onto a folder",
    "unrelated": "unrelated existing file/folder (with --force where the command has it)",
    "symlink": "output is a symlink to an input",
}

#: command → class → (arguments, fragment of the error). ``{x}`` are scratch paths (see :func:`scratch`).
CASES: dict[str, dict[str, tuple[list[str], str]]] = {
    "qsnn-export --to qonnx": {
        "input": (["{ckpt}", "--to", "qonnx", "--profile", "fpga", "-o", "{ckpt}", "--force"], "is also the input"),
        "rundir": (["{ckpt}", "--to", "qonnx", "-o", "{run}", "--force"], "qsnn-train run directory"),
        "file_on_dir": (["{ckpt}", "--to", "qonnx", "-o", "{notes}", "--force"], "needs a file path"),
        "unrelated": (["{ckpt}", "--to", "qonnx", "-o", "{unrelated}", "--force"], "not written by qsnn"),
        "symlink": (["{ckpt}", "--to", "qonnx", "-o", "{link_ckpt}", "--force"], "is also the input"),
    },
    "qsnn-export --to fpga": {
        "input": (["{ckpt}", "--to", "fpga", "-o", "{ckpt}", "--force"], "is also the input"),
        "holds": (["{ckpt}", "--to", "fpga", "-o", "{root}", "--force"], "holding the input"),
        "rundir": (["{ckpt}", "--to", "fpga", "-o", "{run}", "--force"], "its checkpoints would be lost"),
        "dir_on_file": (["{ckpt}", "--to", "fpga", "-o", "{unrelated}", "--force"], "needs a folder"),
        "unrelated": (["{ckpt}", "--to", "fpga", "-o", "{notes}", "--force"], "not written by qsnn"),
        "symlink": (["{ckpt}", "--to", "fpga", "-o", "{link_ckpt}", "--force"], "is also the input"),
    },
    "qsnn-sim": {
        "input": (["{model}", "--report", "{model}", "--force"], "is also the input"),
        "other": (["{model}", "--report", "{root}/r.json", "--plot", "{root}/r.json"], "same path"),
        "rundir": (["{model}", "--report", "{run}", "--force"], "qsnn-train run directory"),
        "file_on_dir": (["{model}", "--plot", "{notes}", "--force"], "needs a file path"),
        "unrelated": (["{model}", "--report", "{unrelated}", "--force"], "not written by qsnn"),
        "symlink": (["{model}", "--report", "{link_model}", "--force"], "is also the input"),
    },
    "qsnn-rtl-sim": {
        "input": (
            ["{fpga}", "--no-sim", "--synth", "ecp5", "--report", "{fpga}/manifest.json", "--force"],
            "is also the input",
        ),
        "other": (["{fpga}", "--report", "{fpga}/resources.json"], "same path"),
        "rundir": (["{fpga}", "--report", "{run}", "--force"], "qsnn-train run directory"),
        "file_on_dir": (["{fpga}", "--report", "{notes}", "--force"], "needs a file path"),
        "unrelated": (["{fpga}", "--report", "{unrelated}", "--force"], "not written by qsnn"),
        "symlink": (["{fpga}", "--report", "{link_manifest}", "--force"], "is also the input"),
    },
    "qsnn-train run": {
        "input": (["run", "--data-dir", "{data}", "--out", "{data}"], "is also the input"),
        "holds": (["run", "--data-dir", "{data}", "--out", "{root}"], "must be new, empty"),
        "rundir": (["run", "--out", "{run}"], "already holds a run"),
        "dir_on_file": (["run", "--out", "{unrelated}"], "needs a folder"),
        "unrelated": (["run", "--out", "{notes}"], "not written by qsnn"),
        "symlink": (["run", "--data-dir", "{data}", "--out", "{link_data}"], "is also the input"),
    },
    "qsnn-train study": {
        "input": (["study", "--data-dir", "{data}", "--out", "{data}"], "is also the input"),
        "other": (["study", "--out", "{root}/s", "--storage", "sqlite:///{root}/s"], "same path"),
        "holds": (["study", "--data-dir", "{fpga}/rtl", "--out", "{fpga}"], "must be new, empty"),
        "rundir": (["study", "--out", "{run}"], "qsnn-train run directory"),
        "dir_on_file": (["study", "--out", "{unrelated}"], "needs a folder"),
        "unrelated": (["study", "--out", "{notes}"], "not written by qsnn"),
        "symlink": (["study", "--data-dir", "{data}", "--out", "{link_data}"], "is also the input"),
    },
    "qsnn-train tune": {
        "input": (["tune", "--data-dir", "{data}", "--out", "{data}"], "is also the input"),
        "other": (["tune", "--out", "{root}/t", "--storage", "sqlite:///{root}/t"], "same path"),
        "holds": (["tune", "--data-dir", "{fpga}/rtl", "--out", "{fpga}"], "must be new, empty"),
        "rundir": (["tune", "--out", "{run}"], "qsnn-train run directory"),
        "dir_on_file": (["tune", "--out", "{unrelated}"], "needs a folder"),
        "file_on_dir": (["tune", "--out", "{root}/t", "--storage", "sqlite:///{notes}"], "needs a file path"),
        "unrelated": (["tune", "--out", "{root}/t", "--storage", "sqlite:///{unrelated}"], "not written by qsnn"),
        "symlink": (["tune", "--data-dir", "{data}", "--out", "{link_data}"], "is also the input"),
    },
}


def _command(name: str):
    if name.startswith("qsnn-export"):
        from qsnn.export.cli import main
    elif name == "qsnn-sim":
        from qsnn.sim.cli import main
    elif name == "qsnn-rtl-sim":
        from qsnn.targets.fpga.cli import main
    else:
        from qsnn.train.cli import main
    return main


def _no_work(monkeypatch) -> None:
    """Replace what each command does after its checks by a function that fails the test."""

    def boom(*_a, **_k):
        raise AssertionError("the command started its work before refusing the output path")

    import qsnn.export.cli as export_cli
    import qsnn.sim.cli as sim_cli
    import qsnn.targets.fpga.hdl_sim as hdl_sim
    import qsnn.train.loop as loop
    import qsnn.train.study as study
    import qsnn.train.tune as tune

    for target in list(export_cli.TARGETS):
        monkeypatch.setitem(export_cli.TARGETS, target, boom)
    monkeypatch.setattr(sim_cli, "load_network", boom)
    monkeypatch.setattr(hdl_sim, "check_folder", boom)
    monkeypatch.setattr(loop, "train", boom)
    monkeypatch.setattr(study, "run_study", boom)
    monkeypatch.setattr(study, "write_report", boom)
    monkeypatch.setattr(tune, "tune", boom)


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Path:
    """A checkpoint, its float QONNX export and its fpga folder (made once; each test copies them)."""
    from qsnn.export.cli import main as export_main

    root = tmp_path_factory.mktemp("outputs-originals")
    synthetic_checkpoint(root / "ckpt.pt")
    for args in (
        ["--to", "qonnx", "-o", root / "model.onnx"],
        ["--to", "fpga", "--allow-saturation", "-o", root / "fpga"],
    ):
        res = CliRunner().invoke(export_main, [str(root / "ckpt.pt"), *map(str, args)])
        assert res.exit_code == 0, res.output
    return root


@pytest.fixture
def scratch(originals, tmp_path) -> dict[str, str]:
    root = tmp_path / "work"
    root.mkdir()
    shutil.copy2(originals / "ckpt.pt", root / "ckpt.pt")
    shutil.copy2(originals / "model.onnx", root / "model.onnx")
    shutil.copytree(originals / "fpga", root / "fpga")
    write_mnist_idx_dir(root / "data", 20, 20, seed=0)
    run = root / "run"  # a training run directory: checkpoints and metrics
    run.mkdir()
    for name in ("last.pt", "best.pt"):
        shutil.copy2(originals / "ckpt.pt", run / name)
    (run / "metrics.json").write_text(json.dumps({"format": "qsnn-run-metrics", "test_acc": 91.0}))
    (root / "unrelated.txt").write_text("a user's notes\n")
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("keep me\n")
    for link, target in (
        ("link_ckpt", "ckpt.pt"),
        ("link_model", "model.onnx"),
        ("link_data", "data"),
        ("link_manifest", "fpga/manifest.json"),
    ):
        (root / link).symlink_to(target)
    names = {
        "root": root,
        "ckpt": root / "ckpt.pt",
        "model": root / "model.onnx",
        "fpga": root / "fpga",
        "data": root / "data",
        "run": run,
        "unrelated": root / "unrelated.txt",
        "notes": root / "notes",
        **{k: root / k for k in ("link_ckpt", "link_model", "link_data", "link_manifest")},
    }
    return {k: str(v) for k, v in names.items()}


def _cases():
    for command, row in CASES.items():
        for cls, (args, fragment) in row.items():
            yield pytest.param(command, cls, args, fragment, id=f"{command.replace(' ', '_')}-{cls}")


@pytest.mark.parametrize("command, cls, args, fragment", list(_cases()))
def test_refused_before_work_and_nothing_changed(scratch, monkeypatch, command, cls, args, fragment):
    _no_work(monkeypatch)
    monkeypatch.chdir(scratch["root"])
    argv = [a.format(**scratch) for a in args]
    before = snapshot(Path(scratch["root"]))
    result = CliRunner().invoke(_command(command), argv)
    line = assert_clean_cli_error(result, fragment)
    assert snapshot(Path(scratch["root"])) == before, line
    named = {a for a in argv if a.startswith(scratch["root"])} | {
        a[len("sqlite:///") :] for a in argv if a.startswith("sqlite:///")
    }
    assert any(path in line for path in named), line  # the message names the path at fault


def test_every_command_has_every_applicable_class():
    """The table has no hole a command could fall through: each class is tried on every command that
    has such a pair of paths (commands with one output have no "other"; file-only ones no "dir_on_file")."""
    for command, row in CASES.items():
        assert {"input", "rundir", "unrelated", "symlink"} <= set(row), command
        assert set(row) <= set(CLASSES), command


# --------------------------------------------------------------------------------------------------
# What --force does replace: an earlier output of the same kind written by qsnn


def test_force_replaces_an_earlier_output_of_the_same_kind(originals, tmp_path):
    shutil.copy2(originals / "model.onnx", tmp_path / "old.onnx")
    shutil.copytree(originals / "fpga", tmp_path / "old_fpga")
    report = tmp_path / "old.json"
    report.write_text(json.dumps({"format": "qsnn-sim-report", "accuracy": {}}))
    ins = {"SOURCE": originals / "ckpt.pt"}
    assert check_outputs({"-o": (tmp_path / "old.onnx", QONNX)}, inputs=ins, force=True)
    assert check_outputs({"-o": (tmp_path / "old_fpga", target_folder("fpga"))}, inputs=ins, force=True)
    assert check_outputs({"--report": (report, SIM_REPORT)}, inputs=ins, force=True)
    # not without --force, and not as another kind
    with pytest.raises(OutputError, match="pass --force"):
        check_outputs({"-o": (tmp_path / "old.onnx", QONNX)}, inputs=ins)
    with pytest.raises(OutputError, match="qsnn QONNX file"):
        check_outputs({"--report": (tmp_path / "old.onnx", SIM_REPORT)}, inputs=ins, force=True)
    with pytest.raises(OutputError, match="qsnn fpga tables folder"):
        check_outputs({"-o": (tmp_path / "old_fpga", target_folder("loihi2"))}, inputs=ins, force=True)
    assert describe(tmp_path / "old_fpga") == "a qsnn fpga tables folder"


def test_sim_plot_is_recognised_by_its_marker(synthetic_onnx, tmp_path):
    """qsnn-sim writes its marker into the PNG and the report, so a second run with --force may replace them."""
    from qsnn.sim.cli import main

    args = [
        str(synthetic_onnx),
        "--allow-saturation",
        "--subset",
        "10",
        "--no-float",
        "--no-progress",
        "--report",
        str(tmp_path / "r.json"),
        "--plot",
        str(tmp_path / "r.png"),
    ]
    assert CliRunner().invoke(main, args).exit_code == 0
    assert SIM_PLOT.recognise(tmp_path / "r.png") and SIM_REPORT.recognise(tmp_path / "r.json")
    assert_clean_cli_error(CliRunner().invoke(main, args), "exists", "--force")
    assert CliRunner().invoke(main, args + ["--force"]).exit_code == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_folder_is_found_before_the_work(synthetic_onnx, tmp_path, monkeypatch):
    from qsnn.sim.cli import main

    _no_work(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = assert_clean_cli_error(
            CliRunner().invoke(main, [str(synthetic_onnx), "--report", str(locked / "r.json")]), "cannot be written"
        )
        assert str(locked / "r.json") in line and "Permission denied" in line
    finally:
        locked.chmod(0o755)


def test_unwritable_output_folder_as_root(tmp_path, monkeypatch):
    """The probe's failure in one line (an injected EROFS: root can write anywhere on this machine)."""
    import tempfile

    def read_only(*_a, **_k):
        raise OSError(30, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    with pytest.raises(OutputError, match="cannot be written.*Read-only file system.*choose a path on a writable one"):
        check_outputs({"--report": (tmp_path / "r.json", SIM_REPORT)})


def test_os_error_message_names_the_path_and_what_to_do():
    msg = os_error_message(OSError(28, "No space left on device", "/data/run/last.pt"))
    assert msg.startswith("/data/run/last.pt: No space left on device") and "free space" in msg
    msg = os_error_message(IsADirectoryError(21, "Is a directory", "/tmp/x"))
    assert msg.startswith("/tmp/x: Is a directory") and "choose a file path" in msg


if __name__ == "__main__":  # the table for docs/faults.md and the closing note
    cols = list(CLASSES)
    print("| command | " + " | ".join(CLASSES[c] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for command, row in CASES.items():
        print(f"| `{command}` | " + " | ".join("refused, nothing changed" if c in row else "n/a" for c in cols) + " |")
    sys.exit(0)
