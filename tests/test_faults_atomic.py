"""Atomic outputs everywhere: a write that fails midway leaves the previous good file in place.

Failures are injected two ways: ``os.replace`` raising for one output (the rename that publishes a
finished temporary file: disk full, permissions, a vanished folder), and the writer itself raising
half way through the data. Covered: every file of a training run (checkpoints, logs, plot,
metrics), the simulator's report and plot, QONNX files, target tables, the study's tables and
figures. A scan of the sources keeps new code from writing user outputs any other way.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from faults_helpers import assert_clean_cli_error

import qsnn.atomic
from qsnn.atomic import atomic_write_bytes, atomic_write_text
from qsnn.config import TrainConfig
from qsnn.profiles import FPGA
from qsnn.train.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(num_steps=4, epochs=2, subset=100, val_subset=50, test_subset=50, batch_size=50, cosine_period_epochs=1.0)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class Injected(OSError):
    pass


def fail_replace_of(monkeypatch, name: str) -> None:
    """``os.replace`` raises (disk full) when it would publish a file or folder called ``name``."""
    real = os.replace

    def replace(src, dst, *args, **kwargs):
        if Path(dst).name == name:
            raise Injected(28, f"No space left on device (injected, publishing {name})")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)


def fail_midway(monkeypatch) -> None:
    """Every atomic write raises after half of its data reached the temporary file."""

    def write(fh, data, name):
        fh.write(data[: len(data) // 2])
        fh.flush()
        raise Injected(5, f"I/O error half way through {name} (injected)")

    monkeypatch.setattr(qsnn.atomic, "_write", write)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def no_temporaries(folder: Path) -> None:
    left = [
        p.name for p in folder.parent.rglob(".*") if p.name.endswith(".tmp") or ".tmp-" in p.name or ".old-" in p.name
    ]
    assert not left, left


# --------------------------------------------------------------------------------------------------
# Training runs


class _Stop(Exception):
    pass


@pytest.fixture(scope="module")
def half_run(tmp_path_factory) -> tuple[TrainConfig, Path]:
    """A run stopped after epoch 1 of 2, plus earlier versions of the files written at the end."""
    from qsnn.train.loop import train

    cfg = TrainConfig.from_preset("mnist5k", "int4", **TINY)
    run = tmp_path_factory.mktemp("atomic-run") / "run"

    def stop(epoch, row):
        raise _Stop

    with pytest.raises(_Stop):
        train(cfg, run, progress=False, log=lambda _m: None, on_epoch=stop)
    for name in ("iters.csv", "training.png", "metrics.json"):
        (run / name).write_bytes(f"previous {name}\n".encode())
    return cfg, run


@pytest.mark.parametrize(
    "name", ["last.pt", "best.pt", "log.csv", "log.json", "iters.csv", "training.png", "metrics.json"]
)
@pytest.mark.slow
def test_failed_publish_of_a_run_file_keeps_the_previous_one(half_run, tmp_path, monkeypatch, name):
    from qsnn.train.loop import RUN_FILES, train

    assert name in RUN_FILES
    cfg, base = half_run
    run = tmp_path / "run"
    shutil.copytree(base, run)
    before = snapshot(run)
    fail_replace_of(monkeypatch, name)
    with pytest.raises(Injected):
        train(cfg, run, resume=True, progress=False, log=lambda _m: None)
    assert (run / name).read_bytes() == before[name]
    no_temporaries(run)
    for ckpt in ("last.pt", "best.pt"):
        load_checkpoint(run / ckpt)
    monkeypatch.undo()  # and the run still resumes to the end
    train(cfg, run, resume=True, progress=False, log=lambda _m: None)
    assert load_checkpoint(run / "last.pt")["epoch"] == 2


@pytest.mark.slow
def test_writer_failing_midway_keeps_the_previous_checkpoint_and_log(half_run, tmp_path, monkeypatch):
    _, base = half_run
    ckpt, log = tmp_path / "last.pt", tmp_path / "log.json"
    shutil.copy(base / "last.pt", ckpt)
    shutil.copy(base / "log.json", log)
    before = snapshot(tmp_path)
    data = load_checkpoint(ckpt)
    data.pop("config_obj")
    fail_midway(monkeypatch)
    with pytest.raises(Injected):
        save_checkpoint(ckpt, {**data, "epoch": 99})
    with pytest.raises(Injected):
        atomic_write_text(log, "[]")
    assert snapshot(tmp_path) == before
    assert load_checkpoint(ckpt)["epoch"] == 1


def test_outputs_get_the_usual_permissions(tmp_path):
    """A temporary file is private (0600); the published file gets what open() would give (0666 − umask)."""
    umask = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        plain = tmp_path / "plain.bin"
        plain.write_bytes(b"x")
    finally:
        os.umask(umask)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == stat.S_IMODE(plain.stat().st_mode) == 0o644


# --------------------------------------------------------------------------------------------------
# Simulator report and plot, QONNX files, target tables


@pytest.mark.parametrize("name", ["sim.json", "sim.png"])
def test_qsnn_sim_report_and_plot(float_onnx, tmp_path, monkeypatch, name):
    from qsnn.sim.cli import main

    args = [
        str(float_onnx),
        "--subset",
        "10",
        "--no-float",
        "--no-progress",
        "--report",
        str(tmp_path / "sim.json"),
        "--plot",
        str(tmp_path / "sim.png"),
    ]
    assert CliRunner().invoke(main, args).exit_code == 0
    before = snapshot(tmp_path)
    fail_replace_of(monkeypatch, name)
    assert_clean_cli_error(CliRunner().invoke(main, args + ["--force"]), "injected")
    assert snapshot(tmp_path) == before
    no_temporaries(tmp_path / "sim.json")


def test_qonnx_file(float_onnx, tmp_path, monkeypatch):
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.qonnx_int import export_integer

    out = tmp_path / "model.fpga.onnx"
    net, _ = compile_qonnx(float_onnx, FPGA)
    export_integer(net, out)
    before = snapshot(tmp_path)
    fail_replace_of(monkeypatch, out.name)
    with pytest.raises(Injected):
        export_integer(net, out)
    monkeypatch.undo()
    fail_midway(monkeypatch)
    with pytest.raises(Injected):
        export_integer(net, out)
    assert snapshot(tmp_path) == before
    no_temporaries(out)


@pytest.mark.parametrize("target", ["fpga", "loihi2", "nir"])
def test_target_tables(tmp_path, monkeypatch, target):
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from test_targets import PROFILE_OF, tiny_net

    from qsnn.targets import read_target, registry, write_target

    out = tmp_path / "tables"
    write_target(target, tiny_net(PROFILE_OF[target], seed=0), out)
    before = snapshot(out)

    def replace_with_new():
        with pytest.raises(Injected):
            write_target(target, tiny_net(PROFILE_OF[target], seed=1), out, force=True)
        monkeypatch.undo()
        assert snapshot(out) == before
        no_temporaries(out)

    def broken(*args, **kwargs):
        raise Injected(5, "I/O error (injected)")

    monkeypatch.setattr(registry, "dumps", broken)  # the writer dies half way through the folder
    replace_with_new()
    monkeypatch.setattr(qsnn.atomic, "_exchange", broken)  # the atomic swap of old and new folder fails
    replace_with_new()
    # where the swap is unavailable: old folder aside, new one in; the second rename fails once
    monkeypatch.setattr(qsnn.atomic, "_exchange", lambda a, b: False)
    real, calls = os.replace, []

    def replace_fails_once(src, dst):
        calls.append(Path(dst).name)
        if Path(dst).name == out.name and len(calls) == 2:
            raise Injected(28, "No space left on device (injected)")
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace_fails_once)
    replace_with_new()
    assert calls[1:] == [out.name, out.name]  # new → OUTDIR failed, old restored
    read_target(out)
    write_target(target, tiny_net(PROFILE_OF[target], seed=1), out, force=True)  # and a real swap works
    assert snapshot(out) != before and not [p for p in tmp_path.iterdir() if p.name != out.name]


# --------------------------------------------------------------------------------------------------
# Study tables and figures


@pytest.mark.slow
def test_study_tables_and_figures(tmp_path, monkeypatch):
    from qsnn.train.loop import train
    from qsnn.train.study import REPORT_FILES, plan, write_report

    out = tmp_path / "study"
    (run,) = plan("mnist5k", ["int4"], ["cosine"], 1, out, TINY)
    train(run.cfg, run.run_dir, progress=False, log=lambda _m: None, evaluate_test=True)
    write_report(out)
    before = snapshot(out)
    for name in REPORT_FILES:
        fail_replace_of(monkeypatch, name)
        with pytest.raises(Injected):
            write_report(out)
        monkeypatch.undo()
        assert snapshot(out) == before, name
    no_temporaries(out / "x")


# --------------------------------------------------------------------------------------------------
# No other way to write a user output


WRITERS = re.compile(
    r"""open\([^)]*['"][wax]b?['"]|\.write_text\(|\.write_bytes\(|savefig\(|torch\.save\(|"""
    r"""onnx\.save\(|h5py\.File\([^)]*['"][wa]['"]|np\.save\(|nir\.write\("""
)
#: Writes that are atomic for a reason the line shows: into a buffer or an atomic_open handle, or
#: into the temporary folder of qsnn.atomic.atomic_directory (``folder`` / ``tmp`` in targets/), or
#: scratch files of the HDL tools in a tempfile folder (``work`` and the harness inputs in fpga/hdl_sim.py, synth.py),
#: and fpga/pnr.py's tool logs, sources and plot: in its tempfile folder (``work``, the run's ``cwd``) or in
#: the staging folder of atomic_directory that the command renames whole (``out`` of one part, the plot's ``path``).
SAFE = [
    (r"qsnn/atomic\.py$", r".*"),
    (r".*", r"atomic_open\("),
    (r".*", r"savefig\((buf|fh)\b"),
    (r".*", r"torch\.save\(data, buf\)"),
    (r"targets/.*\.py$", r"\((folder|tmp) / |\(folder / |File\(folder / |write\(folder / "),
    (r"targets/fpga/(hdl_sim|synth)\.py$", r"\(work / |open\((path|inp), \"wb\"\) as fh"),
    (r"targets/fpga/pnr\.py$", r"\((work|cwd|out) / |savefig\(path, "),
]


def test_every_writer_of_user_outputs_is_atomic():
    offenders = []
    for folder in ("qsnn", "train", "sim", "targets", "export"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for lineno, line in enumerate(path.read_text().splitlines(), start=1):
                code = line.split("#", 1)[0]
                if not WRITERS.search(code) or code.lstrip().startswith(('"', "'")):
                    continue
                if any(re.search(f, rel) and re.search(p, code) for f, p in SAFE):
                    continue
                offenders.append(f"{rel}:{lineno}: {line.strip()}")
    assert not offenders, "write user outputs through qsnn.atomic:\n" + "\n".join(offenders)
