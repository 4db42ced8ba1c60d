"""Nothing lost to a second writer, to ``--force`` or to a failing disk: locks, foreign entries, OS errors.

Adversarial cases, each asserting its outcome class: **ok** (exit 0, the output complete and
recognised, no lock file or temporary left) or **refused-clean** (exit 1, one ``error:`` line naming
the path, no traceback, and the SHA-256 of every earlier output and user file in the scratch folder
byte-identical before and after). The other classes, traceback / destroyed / silent, fail the test.

Classes (cases per class; outcome counts at the end):

- ``--force`` onto a table folder holding the user's files, fpga / loihi2 / nir × 8 (a notes file, a
  vendor project folder, an empty folder, a hidden file, a symbolic link, a lock file a live process
  holds, a file appearing while the tables are written, one appearing during the folder swap):
  24 refused-clean, and a user's file inside fpga's own ``rtl/`` folder: 1 refused-clean; the same
  folder holding only qsnn's files (plus ``resources.json``, a stale lock
  and a killed writer's temporary): 3 ok.
- Two writers at once, per command (``qsnn-export --to qonnx|fpga|loihi2|nir``, ``qsnn-sim --report``,
  ``--plot``, ``--record``, ``qsnn-rtl-sim --report`` and ``FOLDER/resources.json``, ``qsnn-train run`` and
  ``--resume``), with a real second process holding the path: a helper that takes the lock (11
  refused-clean) and the real command stopped after its output check (11 refused-clean); that
  holder then SIGKILLed, its stale lock taken over by the next run (8 ok; the rtl resources and
  train cases of this row are not run to the end here (yosys, training): the next run takes the stale
  lock over and is stopped by the test after its output check, 3 refused-clean). ``train()`` holds its
  run directory for the whole run (1 ok, 1 refused-clean). Two real processes started together on one
  output (qonnx, fpga, sim report): exactly one writes, the other refused-clean (3 ok + 3 refused-clean).
  A real ``qsnn-train run`` stopped half way through ``last.pt`` (slow): a second run and a
  ``--resume`` refused (2 refused-clean), then SIGKILLed and resumed to the end (1 ok).
- A stale lock file of a dead process id (no holder): 4 ok.
- OS errors on a write (ENOSPC, EACCES, EIO, EROFS injected into the data write or the final rename)
  × 5 outputs (integer QONNX, fpga and nir folders, qsnn-sim and qsnn-rtl-sim reports): 20
  refused-clean; a real "file too large" (RLIMIT_FSIZE in a subprocess) × 3: 3 refused-clean;
  ``--report -`` to a closed pipe or a full device (``/dev/full``) × 2 commands: 4 refused-clean.
- Leftover temporaries of killed writers beside 4 outputs: removed by the next run, look-alike
  files of the user kept (4 ok); with a live holder: refused, temporaries kept (1 refused-clean).
- No lock file left after a normal exit, nor the folders made for it after a refusal (1 ok,
  1 refused-clean).

Counts (each command run is one case): ok 25, refused-clean 85, traceback 0, destroyed 0, silent 0
(110 cases in 93 tests, about 50 s on 2 shared cores, 17 s of it the slow training case).
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from faults_helpers import assert_clean_cli_error, snapshot
from fixtures import synthetic_checkpoint

import qsnn.atomic
from qsnn.locks import LockedError, lock_file, lock_holder
from qsnn.output_guard import QONNX, RTL_REPORT, SIM_PLOT, SIM_RECORD, SIM_REPORT, target_folder

HOLD = Path(__file__).with_name("hold_lock.py")
TABLES = ("fpga", "loihi2", "nir")
MODULES = {
    "export": "qsnn.export.cli",
    "sim": "qsnn.sim.cli",
    "rtl": "qsnn.targets.fpga.cli",
    "train": "qsnn.train.cli",
}
SIM = ["--allow-saturation", "--no-float", "--no-progress", "--subset", "10"]
TRAIN = ["--dataset", "mnist5k", "--steps", "2", "--epochs", "1", "--subset", "50", "--val-subset", "20"]
TRAIN += ["--test-subset", "20", "--batch-size", "25", "--seed", "1", "--no-progress"]


def _main(module: str):
    import importlib

    return importlib.import_module(MODULES.get(module, module)).main


def invoke(module: str, argv: list[str]):
    return CliRunner().invoke(_main(module), [str(a) for a in argv])


def leftovers(root: Path) -> list[str]:
    """Lock files and temporaries of qsnn anywhere under ``root``."""
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob(".*")
        if p.name.endswith(".lock") or ".tmp" in p.name or p.name.startswith(".qsnn-probe-")
    )


def refused_clean(result, before: dict[str, str], root: Path, *fragments: str) -> str:
    line = assert_clean_cli_error(result, *fragments)
    assert snapshot(root) == before, line
    return line


# --------------------------------------------------------------------------------------------------
# Scratch folder: a checkpoint, its QONNX exports, three table folders, reports, a run directory


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("locks-originals")
    ckpt = synthetic_checkpoint(root / "ckpt.pt", threshold=0.5)  # spiking, and fits loihi2's threshold range
    from qsnn.export.qonnx_float import export_float

    export_float(ckpt, root / "model.onnx")
    for args in (
        ["--to", "qonnx", "--profile", "fpga", "--allow-saturation", "-o", root / "int.onnx"],
        *(["--to", t, "--allow-saturation", "-o", root / t] for t in TABLES),
    ):
        res = invoke("export", [root / "model.onnx", *args])
        assert res.exit_code == 0, res.output
    res = invoke("sim", [root / "model.onnx", *SIM, "--report", root / "r.json", "--plot", root / "r.png"])
    assert res.exit_code == 0, res.output
    res = invoke("rtl", [root / "fpga", "--no-sim", "--report", root / "rtl.json"])
    assert res.exit_code == 0, res.output
    run = root / "run"
    run.mkdir()
    for name in ("last.pt", "best.pt"):
        shutil.copy2(ckpt, run / name)
    (root / "notes.txt").write_text("a user's notes\n")
    assert leftovers(root) == []
    return root


@pytest.fixture
def scratch(originals, tmp_path) -> Path:
    root = tmp_path / "work"
    shutil.copytree(originals, root, symlinks=True)
    return root


@contextmanager
def holder(tmp_path: Path, mode: str, *args, cwd: Path | None = None):
    """A second process holding locks (``tests/hold_lock.py``), killed (SIGKILL) at the end."""
    marker = tmp_path / f"held-{time.monotonic_ns()}"
    log = marker.with_suffix(".log")
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(HOLD), mode, str(marker), *map(str, args)],
            stdout=fh,
            stderr=subprocess.STDOUT,
            cwd=cwd,
        )
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the holder did not start"
            time.sleep(0.02)
        yield proc
    finally:
        kill(proc)


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


# --------------------------------------------------------------------------------------------------
# 1. --force onto a table folder that also holds the user's files


def _export_tables(target: str, out: Path, source: Path, *extra):
    return invoke("export", [source, "--to", target, "--allow-saturation", "-o", out, "--force", *extra])


FOREIGN = ("notes_file", "vendor_folder", "empty_folder", "hidden_file", "symlink", "live_lock")


@pytest.mark.parametrize("target", TABLES)
@pytest.mark.parametrize("what", FOREIGN)
def test_force_refuses_a_table_folder_with_user_files(scratch, tmp_path, target, what):
    out = scratch / target
    named = {
        "notes_file": "notes.md",
        "vendor_folder": "vivado/",
        "empty_folder": "build/",
        "hidden_file": ".gitignore",
        "symlink": "board",
        "live_lock": ".resources.json.lock",
    }[what]
    if what == "notes_file":
        (out / "notes.md").write_text("timing constraints: see board rev B\n")
    elif what == "vendor_folder":
        (out / "vivado").mkdir()
        (out / "vivado" / "project.xpr").write_text("<Project/>\n")
    elif what == "empty_folder":
        (out / "build").mkdir()
    elif what == "hidden_file":
        (out / ".gitignore").write_text("*.bit\n")
    elif what == "symlink":
        (out / "board").symlink_to(scratch / "notes.txt")
    with holder(tmp_path, "locks", out / "resources.json") if what == "live_lock" else _nothing() as proc:
        before = snapshot(scratch)
        result = _export_tables(target, out, scratch / "model.onnx")
        line = refused_clean(result, before, scratch, str(out), named)
        if proc is not None:
            assert f"PID {proc.pid}" in line
        else:
            assert "nothing was changed" in line


@contextmanager
def _nothing():
    yield None


def test_force_refuses_a_user_file_inside_a_qsnn_subfolder(scratch):
    """fpga's rtl/ is qsnn's folder, but a file the user added there is theirs."""
    out = scratch / "fpga"
    (out / "rtl" / "board_top.v").write_text("module board_top; endmodule\n")
    before = snapshot(scratch)
    refused_clean(_export_tables("fpga", out, scratch / "model.onnx"), before, scratch, str(out), "rtl/board_top.v")


@pytest.mark.parametrize("target", TABLES)
def test_a_user_file_arriving_while_the_tables_are_written_is_kept(scratch, monkeypatch, target):
    """The check at the start is repeated just before the swap: a file written meanwhile stops it."""
    from qsnn.targets.registry import TARGETS

    module = TARGETS[target].module
    out = scratch / target
    write = module.write

    @functools.wraps(write)
    def write_then_user(net, folder, **options):
        part = write(net, folder, **options)
        (out / "late-notes.txt").write_text("written while qsnn-export ran\n")
        return part

    monkeypatch.setattr(module, "write", write_then_user)
    before = snapshot(scratch)
    result = _export_tables(target, out, scratch / "model.onnx")
    before["/".join((target, "late-notes.txt"))] = hashlib.sha256(b"written while qsnn-export ran\n").hexdigest()
    refused_clean(result, before, scratch, str(out), "late-notes.txt")


@pytest.mark.parametrize("target", TABLES)
def test_a_user_file_arriving_during_the_swap_swaps_back(scratch, monkeypatch, target):
    """After the atomic exchange the old folder is checked again: a file that slipped in between the
    last check and the exchange puts the old folder back, with the file."""
    out = scratch / target
    exchange = qsnn.atomic._exchange
    calls = []

    def user_writes_then_exchange(a, b):
        if not calls:
            (out / "slipped-in.txt").write_text("mine\n")
        calls.append((a, b))
        return exchange(a, b)

    monkeypatch.setattr(qsnn.atomic, "_exchange", user_writes_then_exchange)
    before = snapshot(scratch)
    result = _export_tables(target, out, scratch / "model.onnx")
    before["/".join((target, "slipped-in.txt"))] = hashlib.sha256(b"mine\n").hexdigest()
    refused_clean(result, before, scratch, str(out), "slipped-in.txt")
    assert len(calls) == 2  # swapped, then swapped back


@pytest.mark.parametrize("target", TABLES)
def test_force_replaces_a_table_folder_holding_only_qsnn_files(scratch, target):
    """resources.json of qsnn-rtl-sim, a stale lock file and a killed writer's temporary are qsnn's."""
    from qsnn.targets import read_target

    out = scratch / target
    (out / "resources.json").write_text(json.dumps({"format": "qsnn-rtl-resources", "synthesis": {}}))
    (out / ".resources.json.lock").write_text("999999999\nqsnn-rtl-sim (killed)\n")
    (out / ".resources.json.k3x9a_2q.tmp").write_text("{")
    result = _export_tables(target, out, scratch / "model.onnx")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".", "resources"))) == []
    read_target(out)
    assert leftovers(scratch) == []


# --------------------------------------------------------------------------------------------------
# 2. Two writers at once, per command

#: command → (module, arguments writing a new output, the output path held, how the output is recognised)
WRITERS = {
    "export-qonnx": (
        "export",
        ["{root}/model.onnx", "--to", "qonnx", "--profile", "fpga", "--allow-saturation", "-o", "{root}/new.onnx"],
        "{root}/new.onnx",
        QONNX.recognise,
    ),
    **{
        f"export-{t}": (
            "export",
            ["{root}/model.onnx", "--to", t, "--allow-saturation", "-o", "{root}/new-" + t],
            "{root}/new-" + t,
            target_folder(t).recognise,
        )
        for t in TABLES
    },
    "sim-report": (
        "sim",
        ["{root}/model.onnx", *SIM, "--report", "{root}/new.json"],
        "{root}/new.json",
        SIM_REPORT.recognise,
    ),
    "sim-plot": ("sim", ["{root}/model.onnx", *SIM, "--plot", "{root}/new.png"], "{root}/new.png", SIM_PLOT.recognise),
    "sim-record": (
        "sim",
        ["{root}/model.onnx", *SIM, "--record", "{root}/new-rec.npz"],
        "{root}/new-rec.npz",
        SIM_RECORD.recognise,
    ),
    "rtl-report": (
        "rtl",
        ["{root}/fpga", "--no-sim", "--report", "{root}/new-rtl.json"],
        "{root}/new-rtl.json",
        RTL_REPORT.recognise,
    ),
    "rtl-resources": ("rtl", ["{root}/fpga", "--no-sim", "--synth", "ecp5"], "{root}/fpga/resources.json", None),
    "train-run": ("train", ["run", *TRAIN, "--out", "{root}/new-run"], "{root}/new-run", None),
    "train-resume": ("train", ["run", "--resume", "--no-progress", "--out", "{root}/run"], "{root}/run", None),
}


def _writer(name: str, root: Path):
    module, args, held, recognise = WRITERS[name]
    fill = lambda s: s.format(root=root)  # noqa: E731
    return module, [fill(a) for a in args], Path(fill(held)), recognise


@pytest.mark.parametrize("name", list(WRITERS))
def test_second_writer_refused_while_a_helper_holds_the_lock(scratch, tmp_path, name):
    module, args, held, _ = _writer(name, scratch)
    with holder(tmp_path, "locks", held) as proc:
        before = snapshot(scratch)
        line = refused_clean(invoke(module, args), before, scratch, str(held), f"PID {proc.pid}", "hold_lock.py")
        assert "another qsnn process" in line


@pytest.mark.parametrize("name", list(WRITERS))
def test_second_writer_refused_while_the_real_command_writes_then_the_stale_lock_is_taken_over(
    scratch, tmp_path, monkeypatch, name
):
    """The holder is the same command line in another process, stopped after its output check; killed
    (SIGKILL), it leaves its lock file, which the next run takes over (and removes when done)."""
    module, args, held, recognise = _writer(name, scratch)
    with holder(tmp_path, "command", MODULES[module], *args) as proc:
        before = snapshot(scratch)
        line = refused_clean(invoke(module, args), before, scratch, str(held), f"PID {proc.pid}")
        assert MODULES[module] in line  # the holder's command line
        kill(proc)
    assert lock_file(held).exists() and lock_holder(lock_file(held)) is None  # stale: nobody holds it
    if recognise is None:  # yosys / training: not run to the end here; the stale lock must not stop them
        import qsnn.targets.fpga.hdl_sim as hdl_sim
        import qsnn.train.loop as loop

        def stop(*_a, **_k):
            raise LockedError("stopped here by the test, after the output check")

        monkeypatch.setattr(hdl_sim, "check_folder", stop)
        monkeypatch.setattr(loop, "train", stop)
        assert_clean_cli_error(invoke(module, args), "stopped here by the test")
    else:
        result = invoke(module, args)
        assert result.exit_code == 0, result.output
        assert recognise(held)
    assert not lock_file(held).exists()
    assert leftovers(scratch) == []


def test_train_holds_its_run_directory_for_the_whole_run(tmp_path, monkeypatch):
    """train() (the library function the CLI, the study and the tuner call) takes the lock itself."""
    import qsnn.train.loop as loop
    from qsnn.config import TrainConfig

    seen = {}

    def setup_run(cfg, run_dir, *_a, **_k):
        seen["holder"] = lock_holder(lock_file(run_dir))
        raise LockedError("stopped here by the test")

    monkeypatch.setattr(loop, "setup_run", setup_run)
    with pytest.raises(LockedError, match="stopped here"):
        loop.train(TrainConfig.from_preset("mnist5k", "int4"), tmp_path / "run", progress=False, log=lambda _m: None)
    assert seen["holder"] and f"PID {os.getpid()}" in seen["holder"]
    assert not lock_file(tmp_path / "run").exists() and not (tmp_path / "run").exists()


def test_train_refuses_a_run_directory_another_process_trains(tmp_path):
    from qsnn.config import TrainConfig
    from qsnn.train.loop import train

    run = tmp_path / "run"
    with holder(tmp_path, "locks", run) as proc:
        with pytest.raises(LockedError, match=f"{run}.*PID {proc.pid}"):
            train(TrainConfig.from_preset("mnist5k", "int4"), run, progress=False, log=lambda _m: None)
    assert not run.exists()


RACES = ("export-qonnx", "export-fpga", "sim-report")


@pytest.mark.parametrize("name", RACES)
def test_two_processes_started_together_one_writes(scratch, tmp_path, name):
    """Two real processes on one output at the same moment: one writes it, the other is refused (by the
    lock while the first writes, or because the output exists once it has finished)."""
    module, args, held, recognise = _writer(name, scratch)
    exe = {"export": "qsnn-export", "sim": "qsnn-sim"}[module]
    procs = [
        subprocess.Popen(
            [str(Path(sys.prefix) / "bin" / exe), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=120), *p.communicate()) for p in procs]
    codes = sorted(r[0] for r in results)
    assert codes == [0, 1], results
    rc, out, err = next(r for r in results if r[0] == 1)
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and str(held) in errors[0] and "Traceback" not in err, err
    assert ("another qsnn process" in errors[0]) or ("exists" in errors[0]), errors[0]
    assert recognise(held) and leftovers(scratch) == []


@pytest.mark.parametrize("name", ["export-qonnx", "export-fpga", "sim-report", "rtl-report"])
def test_a_stale_lock_of_a_dead_process_is_taken_over(scratch, name):
    module, args, held, recognise = _writer(name, scratch)
    lock_file(held).write_text("2147483646\nqsnn-export (a process that no longer exists)\n")
    result = invoke(module, args)
    assert result.exit_code == 0, result.output
    assert recognise(held) and not lock_file(held).exists() and leftovers(scratch) == []


# --------------------------------------------------------------------------------------------------
# 3. OS errors on a write: one line naming the path, no temporary, the earlier output intact

ERRNOS = {errno.ENOSPC: "disk is full", errno.EACCES: "permission denied", errno.EIO: "input/output error"}
ERRNOS[errno.EROFS] = "read-only"

#: output → (module, arguments replacing an earlier output with --force, the output)
REPLACING = {
    "qonnx": (
        "export",
        [
            "{root}/model.onnx",
            "--to",
            "qonnx",
            "--profile",
            "fpga",
            "--allow-saturation",
            "-o",
            "{root}/int.onnx",
            "--force",
        ],
        "{root}/int.onnx",
    ),
    "fpga": (
        "export",
        ["{root}/model.onnx", "--to", "fpga", "--allow-saturation", "-o", "{root}/fpga", "--force"],
        "{root}/fpga",
    ),
    "nir": (
        "export",
        ["{root}/model.onnx", "--to", "nir", "--allow-saturation", "-o", "{root}/nir", "--force"],
        "{root}/nir",
    ),
    "sim-report": ("sim", ["{root}/model.onnx", *SIM, "--report", "{root}/r.json", "--force"], "{root}/r.json"),
    "rtl-report": ("rtl", ["{root}/fpga", "--no-sim", "--report", "{root}/rtl.json", "--force"], "{root}/rtl.json"),
}


def _replacing(name: str, root: Path):
    module, args, out = REPLACING[name]
    return module, [a.format(root=root) for a in args], Path(out.format(root=root))


@pytest.mark.parametrize("err", list(ERRNOS), ids=[errno.errorcode[e] for e in ERRNOS])
@pytest.mark.parametrize("name", list(REPLACING))
def test_os_error_while_writing_is_one_line_and_keeps_the_earlier_output(scratch, monkeypatch, name, err):
    module, args, out = _replacing(name, scratch)
    strerror = os.strerror(err)
    if name in TABLES:  # the table writer fails half way through a file of the temporary folder
        from qsnn.targets.registry import TARGETS

        mod = TARGETS[name].module
        write = mod.write

        @functools.wraps(write)
        def failing(net, folder, **options):
            (Path(folder) / "weights.bin").write_bytes(b"\0" * 100)
            raise OSError(err, strerror, str(Path(folder) / "weights.bin"))

        monkeypatch.setattr(mod, "write", failing)
    elif err == errno.EROFS:  # the final rename of the atomic file fails
        replace = os.replace

        def failing_replace(src, dst, *a, **k):
            if os.fspath(dst) == str(out):
                raise OSError(err, strerror, os.fspath(src), None, os.fspath(dst))
            return replace(src, dst, *a, **k)

        monkeypatch.setattr(qsnn.atomic.os, "replace", failing_replace)
    else:  # half the data written, then the error (a full disk, an I/O error)

        def failing_write(fh, data, file_name):
            fh.write(data[: len(data) // 2])
            raise OSError(err, strerror)

        monkeypatch.setattr(qsnn.atomic, "_write", failing_write)
    before = snapshot(scratch)
    line = refused_clean(invoke(module, args), before, scratch, str(out), strerror)
    assert ERRNOS[err] in line.lower(), line
    assert ".tmp" not in line  # the output is named, not its temporary
    assert leftovers(scratch) == []


@pytest.mark.parametrize("name", ["qonnx", "fpga", "sim-report"])
def test_a_real_file_size_limit_is_one_line_and_keeps_the_earlier_output(scratch, name):
    """RLIMIT_FSIZE in a subprocess: the kernel's own EFBIG (Python ignores SIGXFSZ) half way through."""
    import resource

    module, args, out = _replacing(name, scratch)
    limit = 1500
    biggest = max((p.stat().st_size for p in ([out] if out.is_file() else out.rglob("*")) if p.is_file()), default=0)
    assert biggest > limit
    exe = {"export": "qsnn-export", "sim": "qsnn-sim"}[module]
    before = snapshot(scratch)
    proc = subprocess.run(
        [str(Path(sys.prefix) / "bin" / exe), *args],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit)),
    )
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert str(out) in errors[0] and "too large" in errors[0].lower(), errors[0]
    assert snapshot(scratch) == before and leftovers(scratch) == []


@pytest.mark.parametrize("stdout", ["closed-pipe", "full-device"])
@pytest.mark.parametrize("command", ["sim", "rtl"])
def test_report_to_a_closed_or_full_stdout_is_one_line(scratch, command, stdout):
    args = (
        [scratch / "model.onnx", *SIM, "--report", "-"]
        if command == "sim"
        else [scratch / "fpga", "--no-sim", "--report", "-"]
    )
    exe = Path(sys.prefix) / "bin" / {"sim": "qsnn-sim", "rtl": "qsnn-rtl-sim"}[command]
    before = snapshot(scratch)
    if stdout == "closed-pipe":
        proc = subprocess.Popen([str(exe), *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        proc.stdout.close()  # the reader went away before the report (qsnn-sim ... --report - | head -c0)
        err = proc.stderr.read()
        rc = proc.wait(timeout=120)
    else:
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [str(exe), *map(str, args)], stdout=full, stderr=subprocess.PIPE, text=True, timeout=120
            )
        rc, err = done.returncode, done.stderr
    errors = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert rc == 1 and len(errors) == 1, err
    assert "standard output" in errors[0] and "--report -" in errors[0], errors[0]
    assert "Traceback" not in err and "Exception ignored" not in err, err
    assert snapshot(scratch) == before and leftovers(scratch) == []


# --------------------------------------------------------------------------------------------------
# 4. Leftover temporaries of killed writers

#: output → (module, arguments, the output, its temporaries (ours), look-alikes that are the user's)
TEMPORARIES = {
    "qonnx": (
        "export-qonnx",
        [".new.onnx.k3x9a_2q.tmp"],
        ["new.onnx.tmp", ".new.onnx.notes.tmp", ".new.onnx.K3X9A_2Q.tmp"],
    ),
    "fpga": (
        "export-fpga",
        [".new-fpga.tmp-a1b2c3d4/", ".new-fpga.tmp-zz99__00/"],
        [".new-fpga.old-a1b2c3d4/", "new-fpga.tmp-a1b2c3d4/"],
    ),
    "sim-report": (
        "sim-report",
        [".new.json.0a1b2c3d.tmp"],
        [".other.json.0a1b2c3d.tmp", ".new.json.0a1b2c3d.tmp.bak"],
    ),
    "rtl-report": ("rtl-report", [".new-rtl.json.qqqqqqqq.tmp"], [".new-rtl.json.qqqqqqq.tmp"]),
}


def _plant(root: Path, names: list[str]) -> None:
    for name in names:
        if name.endswith("/"):
            (root / name).mkdir()
            (root / name / "weights.mem").write_text("00\n")
        else:
            (root / name).write_text("half a file")


@pytest.mark.parametrize("name", list(TEMPORARIES))
def test_leftover_temporaries_are_removed_by_the_next_run(scratch, name):
    writer, ours, users = TEMPORARIES[name]
    module, args, held, recognise = _writer(writer, scratch)
    _plant(scratch, ours + users)
    kept = {k: v for k, v in snapshot(scratch).items() if k.split("/")[0] in {u.rstrip("/") for u in users}}
    result = invoke(module, args)
    assert result.exit_code == 0, result.output
    assert recognise(held)
    assert not any((scratch / n.rstrip("/")).exists() for n in ours)
    after = snapshot(scratch)
    assert {k: after.get(k) for k in kept} == kept  # the user's look-alikes, byte for byte


def test_temporaries_of_a_live_writer_are_kept(scratch, tmp_path):
    module, args, held, _ = _writer("export-qonnx", scratch)
    with holder(tmp_path, "locks", held):
        _plant(scratch, [".new.onnx.k3x9a_2q.tmp"])  # the live writer's own temporary
        before = snapshot(scratch)
        refused_clean(invoke(module, args), before, scratch, str(held), "another qsnn process")
    assert (scratch / ".new.onnx.k3x9a_2q.tmp").exists()


# --------------------------------------------------------------------------------------------------


def test_lock_files_never_count_as_foreign_and_are_gone_after_a_normal_exit(scratch):
    """A normal run leaves no lock file (beside the output, or in folders it had to create)."""
    out = scratch / "deep" / "er" / "new.onnx"
    result = invoke(
        "export", [scratch / "model.onnx", "--to", "qonnx", "--profile", "fpga", "--allow-saturation", "-o", out]
    )
    assert result.exit_code == 0, result.output
    assert leftovers(scratch) == []
    refused = invoke(
        "export",
        [
            scratch / "model.onnx",
            "--to",
            "fpga",
            "-o",
            scratch / "nope" / "x" / "fpga",
            "--profile-set",
            "membrane_bits=99",
        ],
    )
    assert_clean_cli_error(refused, "membrane_bits")
    assert not (scratch / "nope").exists()  # the folders made for the lock file are gone again


@pytest.mark.slow
def test_training_holds_its_run_directory_until_killed_then_resume_finishes(tmp_path):
    """A real ``qsnn-train run`` stopped half way through writing last.pt (tests/pause_in_write.py):
    a second run and a --resume of the same directory are refused naming it; SIGKILLed, its stale lock
    is taken over and --resume finishes the run."""
    run = tmp_path / "run"
    marker = tmp_path / "paused"
    log = tmp_path / "train.log"
    pauser = Path(__file__).with_name("pause_in_write.py")
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(pauser), "last.pt#1", str(marker), "run", *TRAIN, "--out", str(run)],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "training did not reach its first last.pt"
            time.sleep(0.1)
        before = snapshot(tmp_path)
        for args in (["run", "--resume", "--no-progress", "--out", run], ["run", *TRAIN, "--out", run]):
            refused_clean(invoke("train", args), before, tmp_path, str(run), f"PID {proc.pid}")
    finally:
        kill(proc)
    result = invoke("train", ["run", "--resume", *TRAIN, "--out", run])  # (no last.pt yet: starts again)
    assert result.exit_code == 0, result.output
    assert (run / "metrics.json").is_file() and not lock_file(run).exists()
    assert not list(run.glob(".*.tmp"))
