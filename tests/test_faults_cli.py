"""Bad options and the commands as one tool: one ``error:`` line (or click's usage error), never a traceback.

:data:`BAD` is the bad-input suite of the command lines (devices, seeds, resume, profiles, options
of the wrong target, missing or wrong-kind inputs); with the output collisions of
``test_faults_outputs.py`` it is what docs/faults.md counts. Every case runs without ``--debug``
and must exit 1 (an ``error:`` line naming what is wrong) or 2 (a click usage error), with no
traceback and nothing written. The rest checks what makes the four commands one tool: ``--version``
everywhere, ``--list-profiles`` from the ChipProfile dataclass, ``--report -``, the same
``--progress/--no-progress``, ``--force`` and ``--profile-set`` in every command.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures import synthetic_checkpoint

import qsnn
from qsnn.profiles import PROFILES, ChipProfile

TRAIN, EXPORT, SIM, RTL = "qsnn-train", "qsnn-export", "qsnn-sim", "qsnn-rtl-sim"

#: (command, arguments, what the error line must hold). ``{x}``: paths of the scratch folder.
BAD: list[tuple[str, list[str], str]] = [
    (TRAIN, ["run", "--device", "banana"], "available here: cpu"),
    (TRAIN, ["run", "--device", "cuda:7"], "available here"),
    (TRAIN, ["run", "--device", "tpu"], "--device tpu"),
    (TRAIN, ["study", "--device", "banana"], "available here"),
    (TRAIN, ["tune", "--device", "banana"], "available here"),
    (TRAIN, ["run", "--seed", "-1"], "--seed"),
    (TRAIN, ["run", "--seed", str(2**32)], "--seed"),
    (TRAIN, ["run", "--resume", "--out", "{root}/missing"], "no run directory"),
    (TRAIN, ["run", "--epochs", "0"], "epochs 0"),
    (TRAIN, ["run", "--beta", "2"], "beta 2"),
    (TRAIN, ["run", "--dropout", "1"], "dropout"),
    (TRAIN, ["run", "--lr", "-1"], "lr -1"),
    (TRAIN, ["run", "--dataset", "mnist", "--data-dir", "{notes}", "--out", "{root}/r"], "mnist"),
    (TRAIN, ["study", "--precision", "int3"], "int3"),
    (TRAIN, ["study", "--schedules", "cosine,banana"], "banana"),
    (TRAIN, ["study", "--study-name", "x"], "--storage"),
    (TRAIN, ["run", "--dataset", "imagenet"], "imagenet"),
    (EXPORT, ["{ckpt}", "--to", "qonnx", "--profile-set", "membrane_bits=24"], "no profile to change"),
    (EXPORT, ["{ckpt}", "--to", "qonnx", "--lanes", "4"], "--lanes"),
    (EXPORT, ["{ckpt}", "--to", "fpga", "--nir-flavor", "spyx", "-o", "{root}/f"], "--nir-flavor"),
    (EXPORT, ["{ckpt}", "--to", "fpga", "--batch-size", "1", "-o", "{root}/f"], "--batch-size"),
    (EXPORT, ["{ckpt}", "--to", "qonnx", "--profile", "fpga", "--profile-set", "banana=3"], "banana"),
    (EXPORT, ["{ckpt}", "--to", "qonnx", "--profile", "fpga", "--profile-set", "membrane_bits=abc"], "membrane_bits"),
    (EXPORT, ["{ckpt}", "--to", "qonnx", "--profile", "fpga", "--profile-set", "membrane_bits"], "membrane_bits"),
    (EXPORT, ["{root}/missing.pt", "--to", "qonnx"], "missing.pt"),
    (EXPORT, ["{notes}", "--to", "qonnx"], "notes"),
    (EXPORT, ["{unrelated}", "--to", "qonnx", "-o", "{root}/u.onnx"], "unrelated.txt"),
    (EXPORT, ["{ckpt}", "--to", "banana"], "banana"),
    (EXPORT, ["{ckpt}", "--to", "qonnx", "-o", "{unrelated}/x.onnx"], "not a folder"),
    (SIM, ["{root}/missing.onnx"], "missing.onnx"),
    (SIM, ["{notes}"], "notes"),
    (SIM, ["{ckpt}"], "ckpt.pt"),
    (SIM, ["{unrelated}"], "unrelated.txt"),
    (SIM, ["{model}", "--frac-bits-sweep", "a,b"], "frac"),
    (SIM, ["{model}", "--frac-bits-sweep", "-1"], "frac_bits"),
    (SIM, ["{model}", "--subset", "0"], "--subset"),
    (SIM, ["{model}", "--profile-set", "overflow=banana"], "overflow"),
    (SIM, ["{model}", "--profile", "tpu"], "tpu"),
    (SIM, ["{model}", "--report", "{root}/a/b.json", "--plot", "{root}/a/b.json"], "same path"),
    (RTL, ["{root}/missing"], "missing"),
    (RTL, ["{notes}", "--no-sim"], "notes"),
    (RTL, ["{unrelated}", "--no-sim"], "unrelated.txt"),
]


def _main(command: str):
    if command == TRAIN:
        from qsnn.train.cli import main
    elif command == EXPORT:
        from qsnn.export.cli import main
    elif command == SIM:
        from qsnn.sim.cli import main
    else:
        from qsnn.targets.fpga.cli import main
    return main


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Path:
    from qsnn.export.qonnx_float import export_float

    root = tmp_path_factory.mktemp("cli-originals")
    export_float(synthetic_checkpoint(root / "ckpt.pt"), root / "model.onnx")
    return root


@pytest.fixture
def scratch(originals, tmp_path) -> dict[str, str]:
    import shutil

    root = tmp_path / "work"
    root.mkdir()
    for name in ("ckpt.pt", "model.onnx"):
        shutil.copy2(originals / name, root / name)
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("keep me\n")
    (root / "unrelated.txt").write_text("a user's notes\n")
    return {
        "root": str(root),
        "ckpt": str(root / "ckpt.pt"),
        "model": str(root / "model.onnx"),
        "notes": str(root / "notes"),
        "unrelated": str(root / "unrelated.txt"),
    }


def assert_no_traceback(result) -> str:
    """Exit 1 with one ``error:`` line, or click's usage error (exit 2); never a traceback."""
    assert isinstance(result.exception, SystemExit), (result.output, repr(result.exception))
    assert result.exit_code in (1, 2), result.output
    assert "Traceback" not in result.output, result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith(("error: ", "Error: "))]
    assert len(lines) == 1, result.output
    return lines[0]


@pytest.mark.parametrize("command, args, fragment", BAD, ids=[f"{c}-{' '.join(a)[:40]}" for c, a, _ in BAD])
def test_bad_input_is_one_line_and_no_traceback(scratch, monkeypatch, command, args, fragment):
    from faults_helpers import snapshot

    monkeypatch.chdir(scratch["root"])
    monkeypatch.delenv("QSNN_DATA_DIR", raising=False)
    before = snapshot(Path(scratch["root"]))
    line = assert_no_traceback(CliRunner().invoke(_main(command), [a.format(**scratch) for a in args]))
    assert fragment in line, line
    assert snapshot(Path(scratch["root"])) == before, line  # nothing written, no empty run directory left


# --------------------------------------------------------------------------------------------------
# One tool


@pytest.mark.parametrize(
    "command, args",
    [(TRAIN, []), (TRAIN, ["run"]), (TRAIN, ["study"]), (TRAIN, ["tune"]), (EXPORT, []), (SIM, []), (RTL, [])],
)
def test_version_everywhere(tmp_path, monkeypatch, command, args):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(_main(command), [*args, "--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip().endswith(f"(qsnn) {qsnn.__version__}") and result.output.startswith(command)
    assert list(tmp_path.iterdir()) == []  # qsnn-train --version does not fall through to a training run


@pytest.mark.parametrize("command", [EXPORT, SIM])
def test_list_profiles_from_the_dataclass(command):
    result = CliRunner().invoke(_main(command), ["--list-profiles"])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    for f in dataclasses.fields(ChipProfile):
        if f.name == "name":
            continue
        row = rows[f.name]
        assert row[2] == str(f.default), row  # the dataclass default ...
        for i, name in enumerate(sorted(PROFILES)):
            assert row[3 + i] == str(getattr(PROFILES[name], f.name)), (name, row)  # ... and each profile's value


def test_the_same_options_in_every_command():
    from qsnn.export.cli import main as export_main
    from qsnn.sim.cli import main as sim_main
    from qsnn.targets.fpga.cli import main as rtl_main
    from qsnn.train.cli import run, study_run, tune_cmd

    def opts(cmd):
        return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}

    for cmd in (export_main, sim_main, rtl_main, run, study_run, tune_cmd):
        assert {"--version", "--debug"} <= opts(cmd), cmd.name
    for cmd in (sim_main, rtl_main, run, study_run, tune_cmd):
        assert {"--progress", "--no-progress"} <= opts(cmd), cmd.name
    for cmd in (export_main, sim_main, rtl_main):
        assert "--force" in opts(cmd), cmd.name
    for cmd in (export_main, sim_main):
        assert {"--profile", "--profile-set", "--list-profiles"} <= opts(cmd), cmd.name


def test_profile_set_changes_the_profile_a_command_uses_anyway(scratch, monkeypatch):
    """--profile-set without --profile: export --to fpga changes the fpga target's profile, as sim does its default."""
    from qsnn.export.cli import main as export_main

    out = Path(scratch["root"]) / "f"
    result = CliRunner().invoke(
        export_main, [scratch["ckpt"], "--to", "fpga", "--profile-set", "membrane_bits=24", "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert json.loads((out / "manifest.json").read_text())["profile"]["membrane_bits"] == 24


def test_report_to_stdout(scratch):
    """``--report -``: the JSON report alone on stdout, the summary on stderr, no file called "-"."""
    from qsnn.sim.cli import main

    result = CliRunner().invoke(
        main, [scratch["model"], "--allow-saturation", "--subset", "10", "--no-float", "--no-progress", "--report", "-"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["format"] == "qsnn-sim-report" and report["samples"] == 10 and "data_source" in report
    assert "qsnn-sim" in result.stderr and "accuracy, integer sim" in result.stderr
    assert not os.path.exists("-") and not (Path(scratch["root"]) / "-").exists()


def test_silent_output_layer_is_a_warning(scratch, tmp_path):
    """A network whose output layer never fires: qsnn-sim says so on stderr/stdout and in the report."""
    import torch

    from qsnn.export.qonnx_float import export_float
    from qsnn.sim.cli import main
    from qsnn.train.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(scratch["ckpt"])
    ckpt.pop("config_obj", None)
    state = ckpt["model"]
    last = [k for k in state if k.endswith("weight") and state[k].ndim == 2][-1]  # the dense output layer
    state[last] = torch.zeros_like(state[last])
    for k in [k for k in state if k.startswith(last.rsplit(".", 1)[0]) and k.endswith("bias")]:
        state[k] = torch.zeros_like(state[k])
    save_checkpoint(
        tmp_path / "silent.pt",
        {k: v for k, v in ckpt.items() if k not in ("format", "format_version", "qsnn_version", "versions", "digest")},
    )
    model = export_float(tmp_path / "silent.pt", tmp_path / "silent.onnx")
    result = CliRunner().invoke(
        main,
        [
            str(model),
            "--allow-saturation",
            "--subset",
            "10",
            "--no-float",
            "--no-progress",
            "--report",
            str(tmp_path / "r.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "warning: the output layer" in result.output and "never fired on 10 samples" in result.output
    assert any("never fired" in w for w in json.loads((tmp_path / "r.json").read_text())["warnings"])


def test_device_errors_list_what_is_available(monkeypatch):
    """On a 2-GPU machine (simulated): cuda:3 is refused naming cuda:0 and cuda:1; cuda:1 and cpu are taken."""
    import torch

    from qsnn.errors import QsnnError
    from qsnn.train.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(
        QsnnError, match=r"--device cuda:3: there is no GPU with that index; available here: cpu, cuda:0, cuda:1"
    ):
        resolve_device("cuda:3")
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cpu") == torch.device("cpu")
