"""SIGKILL during training, and determinism across processes.

Real ``qsnn-train run`` subprocesses (tiny mnist5k config, ``--no-progress``) are killed with
SIGKILL at chosen moments, including half way through writing a checkpoint (the launcher
``tests/pause_in_write.py`` runs ``qsnn-train`` with that write stopped half way), and at random
moments. After every kill the run directory must hold only complete files (every ``last.pt`` /
``best.pt`` present loads and passes its digest); ``--resume`` must then finish the run with
weights and optimizer state equal, tensor for tensor, to those of an uninterrupted run with the same
seed, and leave no temporary files behind.

``QSNN_FAULT_SEED`` (default 0) picks the random kill moments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from qsnn.train.checkpoint import load_checkpoint

EXE = Path(sys.prefix) / "bin" / "qsnn-train"
PAUSER = Path(__file__).with_name("pause_in_write.py")
ARGS = [
    "run",
    "--dataset",
    "mnist5k",
    "--steps",
    "4",
    "--epochs",
    "3",
    "--subset",
    "200",
    "--val-subset",
    "50",
    "--test-subset",
    "50",
    "--batch-size",
    "50",
    "--cosine-period",
    "1",
    "--seed",
    "3",
    "--no-progress",
]
OUTPUTS = ("last.pt", "best.pt", "log.csv", "log.json", "iters.csv", "metrics.json", "training.png")

#: Kill points of the chained run: the file being written and which write of it in that process
#: (each process resumes the run the previous one left). Every kill lands half way through writing.
HOOKED_KILLS = (
    ("best.pt", 1),  # epoch 1's best.pt: nothing complete on disk yet
    ("last.pt", 1),  # epoch 1's last.pt: best.pt complete, last.pt not yet
    ("last.pt", 1),  # (resumed, nothing to resume) epoch 1's last.pt again, best.pt rewritten
    ("last.pt", 2),  # (fresh again) epoch 2's last.pt: the complete epoch 1 file must survive
    ("metrics.json", 1),  # the final file: training done, best.pt rewritten with the test accuracy
)
RANDOM_KILLS = 2
WAIT_S = 120

# real training processes, killed and resumed at wall-clock moments: run alone (make test runs them after the rest)
pytestmark = [pytest.mark.slow, pytest.mark.alone]


def _start(out: Path, log: Path, *, resume: bool, pause: tuple[str, Path] | None = None) -> subprocess.Popen:
    """qsnn-train in a new process; with ``pause=("NAME#K", marker)`` that write stops half way."""
    args = [*ARGS, "--out", str(out), *(["--resume"] if resume else [])]
    cmd = [sys.executable, str(PAUSER), pause[0], str(pause[1]), *args] if pause else [str(EXE), *args]
    with open(log, "w") as fh:
        return subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _finish(proc: subprocess.Popen, log: Path) -> None:
    assert proc.wait(timeout=300) == 0, log.read_text()


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)


def _state(run: Path) -> dict[str, int]:
    """What the run directory holds: file names and modification times (temporaries come and go)."""
    state = {}
    for path in run.iterdir() if run.exists() else ():
        try:
            state[path.name] = path.stat().st_mtime_ns
        except FileNotFoundError:
            state[path.name] = -1
    return state


def _temporaries(run: Path) -> list[str]:
    return sorted(p.name for p in run.glob(".*.tmp")) if run.exists() else []


def check_run_dir(run: Path) -> dict[str, int]:
    """Everything complete in ``run``: checkpoints load (digest checked), JSON parses. Returns epochs."""
    epochs = {}
    for name in ("last.pt", "best.pt"):
        path = run / name
        if path.exists():
            assert path.stat().st_size > 0, f"{path} is empty"
            epochs[name] = int(load_checkpoint(path)["epoch"])
    for name in ("log.json", "metrics.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())
    if "last.pt" in epochs:
        assert "best.pt" in epochs, "last.pt without best.pt"
    return epochs


def assert_same_state(a, b, where: str = "") -> None:
    """Nested dicts/lists of tensors and numbers, equal bit for bit (torch.equal on every tensor)."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same_state(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_state(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(run: Path, ref: Path) -> None:
    for name in ("last.pt", "best.pt"):
        a, b = load_checkpoint(run / name), load_checkpoint(ref / name)
        assert a["epoch"] == b["epoch"], name
        assert_same_state(a["model"], b["model"], f"{name}:model")
        assert_same_state(a["optimizer"], b["optimizer"], f"{name}:optimizer")
        assert_same_state(a["schedule"], b["schedule"], f"{name}:schedule")
    ours, theirs = (json.loads((d / "metrics.json").read_text()) for d in (run, ref))
    assert (ours["best_epoch"], ours["best_val_acc"], ours["test_acc"]) == (
        theirs["best_epoch"],
        theirs["best_val_acc"],
        theirs["test_acc"],
    )
    losses = [[r["train_loss"] for r in json.loads((d / "log.json").read_text())] for d in (run, ref)]
    assert losses[0] == losses[1]
    assert sorted(p.name for p in run.iterdir()) == sorted(OUTPUTS), "stray files in the run directory"


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, Path]:
    """Two uninterrupted runs of the same seed and config, in two separate processes (concurrently)."""
    root = tmp_path_factory.mktemp("faults-reference")
    runs = [root / "a", root / "b"]
    procs = [_start(run, root / f"{run.name}.log", resume=False) for run in runs]
    for proc, run in zip(procs, runs):
        _finish(proc, root / f"{run.name}.log")
    return runs[0], runs[1]


def test_same_seed_gives_bit_identical_checkpoints_across_processes(reference):
    a, b = reference
    assert_same_run(a, b)
    for name in ("last.pt", "best.pt"):
        ca, cb = load_checkpoint(a / name), load_checkpoint(b / name)
        assert_same_state(ca["rng"], cb["rng"], f"{name}:rng")
        assert [r["loss"] for r in ca["iters"]] == [r["loss"] for r in cb["iters"]]


def test_sigkill_mid_write_at_every_stage_then_resume(reference, tmp_path):
    run = tmp_path / "run"
    for i, (name, nth) in enumerate(HOOKED_KILLS):
        marker, log = tmp_path / f"paused-{i}", tmp_path / f"kill-{i}.log"
        proc = _start(run, log, resume=i > 0, pause=(f"{name}#{nth}", marker))
        deadline = time.monotonic() + WAIT_S
        while not marker.exists():
            assert proc.poll() is None, f"kill point {name}#{nth} never reached:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"timed out waiting for {name}#{nth}"
            time.sleep(0.02)
        _kill(proc)
        # killed half way through writing `name`: its temporary is there, the file itself complete or absent
        assert any(t.startswith(f".{name}.") for t in _temporaries(run)), _temporaries(run)
        check_run_dir(run)
    _finish(_start(run, tmp_path / "final.log", resume=True), tmp_path / "final.log")
    assert "removed" in (tmp_path / "final.log").read_text()  # the stray temporaries were cleared
    assert _temporaries(run) == []
    assert_same_run(run, reference[0])


def test_sigkill_at_random_moments_then_resume(reference, tmp_path):
    rng = random.Random(int(os.environ.get("QSNN_FAULT_SEED", "0")))
    run = tmp_path / "run"
    seen = []
    for i in range(RANDOM_KILLS):
        log = tmp_path / f"kill-{i}.log"
        before = _state(run)
        proc = _start(run, log, resume=i > 0)
        # from the process's first write into the run directory (its first epoch done) the other
        # epochs, the test evaluation and the final files take ≈ 1.5 s here: kill at a random moment
        deadline = time.monotonic() + WAIT_S
        while _state(run) == before and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        delay = rng.uniform(0.0, 1.5)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            pass
        finished = proc.poll() is not None
        _kill(proc)
        seen.append((round(delay, 2), "finished" if finished else "killed", check_run_dir(run)))
    _finish(_start(run, tmp_path / "final.log", resume=True), tmp_path / "final.log")
    assert _temporaries(run) == []
    assert_same_run(run, reference[0])
    print("random kills (delay s, outcome, epochs on disk):", seen)
