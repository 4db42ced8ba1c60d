"""qsnn-train study --storage: the plan as an Optuna trial queue on a real PostgreSQL server.

Three workers share a 4-cell plan; one is killed (SIGKILL) in the middle of a cell. Every cell must
then have run exactly once to completion, the killed cell resumed from its last.pt by another
worker, and the table equal that of the plain single-process study with the same seeds.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from qsnn.errors import QsnnError  # noqa: E402
from qsnn.train.storage import open_storage  # noqa: E402
from qsnn.train.study import plan  # noqa: E402
from qsnn.train.study_queue import default_study_name, open_queue, plan_digest  # noqa: E402

BIN = Path(sys.executable).parent
SCHEDULES = ["none", "cosine"]
EPOCHS = 4
SETTINGS = [
    "--dataset",
    "mnist5k",
    "--precision",
    "int4",
    "--schedules",
    ",".join(SCHEDULES),
    "--trials",
    "2",
    "--epochs",
    str(EPOCHS),
    "--steps",
    "4",
    "--subset",
    "200",
    "--val-subset",
    "60",
    "--test-subset",
    "60",
    "--batch-size",
    "25",
    "--cosine-period",
    "1",
    "--no-progress",
]
OVERRIDES = dict(
    epochs=EPOCHS, num_steps=4, subset=200, val_subset=60, test_subset=60, batch_size=25, cosine_period_epochs=1.0
)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _epochs_logged(run_dir: Path) -> list[int]:
    return (
        [int(r["epoch"]) for r in csv.DictReader(open(run_dir / "log.csv"))] if (run_dir / "log.csv").exists() else []
    )


@pytest.mark.slow
@pytest.mark.postgres
def test_three_workers_one_killed_every_cell_once(tmp_path, postgres):
    url = postgres.create_database("study_three_workers")
    out, ref = tmp_path / "shared", tmp_path / "single"
    args = ["study", *SETTINGS, "--out", str(out), "--storage", url, "--heartbeat", "1", "--grace", "8"]
    runs = plan("mnist5k", ["int4"], SCHEDULES, 2, out, OVERRIDES)
    cells, name = [r.name for r in runs], default_study_name("mnist5k", runs)
    # the reference: one process, no storage (the plain study), same seeds
    reference = subprocess.Popen(
        [str(BIN / "qsnn-train"), "study", *SETTINGS, "--out", str(ref)],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    t0 = time.perf_counter()
    logs = [open(tmp_path / f"worker{i}.log", "w+") for i in range(3)]
    workers = [
        subprocess.Popen([str(BIN / "qsnn-train"), *args], env=ENV, stdout=log, stderr=subprocess.STDOUT, text=True)
        for log in logs
    ]
    pids = {p.pid: i for i, p in enumerate(workers)}

    # Kill the first worker seen with a cell past its first epoch (last.pt written) and not finished.
    storage = open_storage(url, heartbeat=1, grace=8)
    victim = killed_cell = epochs_at_kill = None
    deadline = time.monotonic() + 400
    while victim is None and time.monotonic() < deadline:
        try:
            study = optuna.load_study(study_name=name, storage=storage)
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            running = []
        for t in running:
            pid = int(str(t.user_attrs.get("worker", ":0")).rsplit(":", 1)[1])
            run_dir = out / t.user_attrs["cell"]
            if pid in pids and len(_epochs_logged(run_dir)) >= 1 and not (run_dir / "metrics.json").exists():
                workers[pids[pid]].send_signal(signal.SIGKILL)
                victim, killed_cell, epochs_at_kill = pids[pid], t.user_attrs["cell"], len(_epochs_logged(run_dir))
                killed_trial = t.number
                break
        time.sleep(0.05)
    assert victim is not None, "no worker was caught in the middle of a cell"
    for i, p in enumerate(workers):
        p.wait(timeout=600)
    wall = time.perf_counter() - t0
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    assert workers[victim].returncode == -signal.SIGKILL
    for i, p in enumerate(workers):
        if i != victim:
            assert p.returncode == 0, outputs[i]
    assert epochs_at_kill < EPOCHS

    # -- every cell ran exactly once to completion --------------------------------------------------
    S = optuna.trial.TrialState
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials()
    by_cell: dict[str, list] = {}
    for t in trials:
        if "cell" in t.user_attrs:
            by_cell.setdefault(t.user_attrs["cell"], []).append(t)
        else:  # a fresh trial made when the queue emptied in the same instant: it trained nothing
            assert t.state == S.FAIL and t.user_attrs.get("no_cell"), t
    assert sorted(by_cell) == sorted(cells)
    for cell, ts in by_cell.items():
        assert [t.state for t in ts].count(S.COMPLETE) == 1, (cell, ts)
        assert _epochs_logged(out / cell) == list(range(1, EPOCHS + 1))  # each epoch once
        if cell == killed_cell:
            # the killed trial failed by heartbeat, re-queued by Optuna's retry callback, resumed by another worker
            assert [(t.number, t.state) for t in ts] == [(killed_trial, S.FAIL), (ts[1].number, S.COMPLETE)]
            retry = ts[1]
            assert retry.system_attrs["failed_trial"] == killed_trial
            assert retry.user_attrs["outcome"] == "resumed" and retry.user_attrs["start_epoch"] >= epochs_at_kill
            assert int(retry.user_attrs["worker"].rsplit(":", 1)[1]) != workers[victim].pid
        else:
            assert [t.state for t in ts] == [S.COMPLETE], (cell, ts)
            assert ts[0].user_attrs["outcome"] == "trained" and ts[0].user_attrs["start_epoch"] == 0
    text = "".join(outputs)
    for cell in cells:
        assert text.count(f"training {cell} (") == 1, (cell, text)  # started from scratch once, on one worker
    assert text.count(f"resuming {killed_cell} (") == 1
    assert f"re-queued from trial {killed_trial}" in text

    # -- the table equals the single-worker run's ---------------------------------------------------
    ref_output = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, ref_output
    result = subprocess.run(
        [str(BIN / "qsnn-train"), "study", "report", str(out)], env=ENV, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("table2.md", "table2.csv"):
        assert (out / name).read_bytes() == (ref / name).read_bytes(), name
    for cell in cells:
        a, b = (json.loads((d / cell / "metrics.json").read_text()) for d in (out, ref))
        assert (a["test_acc"], a["best_val_acc"], a["best_epoch"]) == (
            b["test_acc"],
            b["best_val_acc"],
            b["best_epoch"],
        )
    print(
        f"\nthree workers, one killed after epoch {epochs_at_kill} of {killed_cell}: {len(trials)} trials, "
        f"{wall:.1f} s (server start {postgres.start_s:.1f} s)"
    )


def test_a_joining_worker_checks_the_plan(tmp_path):
    """Workers with other settings cannot join a study's queue; the default name separates plans."""
    url = f"sqlite:///{tmp_path / 'q.db'}"
    runs = plan("mnist5k", ["int4"], ["none", "cosine"], 2, tmp_path / "o", OVERRIDES)
    other = plan("mnist5k", ["int4"], ["none", "cosine"], 2, tmp_path / "o", {**OVERRIDES, "epochs": 5})
    assert plan_digest(runs) != plan_digest(other)
    assert default_study_name("mnist5k", runs) != default_study_name("mnist5k", other)
    assert plan_digest(runs) == plan_digest(plan("mnist5k", ["int4"], ["none", "cosine"], 2, "/elsewhere", OVERRIDES))
    messages = []
    study, _ = open_queue(url, "q", runs, heartbeat=1, grace=3, log=messages.append)
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.user_attrs["cell"] for t in waiting] == [r.name for r in runs] and "created" in messages[0]
    study2, _ = open_queue(url, "q", runs, heartbeat=1, grace=3, log=messages.append)  # joins, enqueues nothing
    assert len(study2.get_trials()) == len(runs) and "joined" in messages[1]
    with pytest.raises(QsnnError, match="another plan"):
        open_queue(url, "q", other, heartbeat=1, grace=3, log=messages.append)
    with pytest.raises(QsnnError, match="heartbeat"):
        open_queue(f"journal:{tmp_path / 'j.log'}", "q", runs)
    with pytest.raises(QsnnError, match="longer than"):
        open_queue(url, "q", runs, heartbeat=10, grace=5)


def test_a_failing_cell_is_recorded_and_requeued_once(tmp_path, monkeypatch):
    """A cell whose training raises stops the worker with the error, recorded on its trial; --retry-failed
    re-queues it once however many workers ask (no training happens here: the data set is missing)."""
    from qsnn.train.study_queue import cell_states, retry_failed, run_worker

    url = f"sqlite:///{tmp_path / 'q.db'}"
    runs = plan("mnist", ["int4"], ["none"], 2, tmp_path / "o", OVERRIDES)  # the MNIST IDX files are not there
    study, storage = open_queue(url, "q", runs, heartbeat=1, grace=3, log=lambda _m: None)
    with pytest.raises(QsnnError, match="mnist"):
        run_worker(study, storage, runs, data_dir=tmp_path / "empty", log=lambda _m: None, handle_signals=False)
    failed = study.get_trials(states=(optuna.trial.TrialState.FAIL,))
    assert [t.user_attrs["cell"] for t in failed] == ["int4-none-s0"] and "mnist" in failed[0].user_attrs["error"]
    assert cell_states(study)["int4-none-s1"]["state"] == "WAITING"  # the other cell is still queued
    # two workers seeing the same failed cell at once: the claim in the storage lets one of them re-queue it
    view = cell_states(study)
    assert retry_failed(study, storage, runs, log=lambda _m: None) == ["int4-none-s0"]
    with monkeypatch.context() as m:
        m.setattr("qsnn.train.study_queue.cell_states", lambda _study: view)  # the second worker's (old) view
        assert retry_failed(study, storage, runs, log=lambda _m: None) == []
    assert retry_failed(study, storage, runs, log=lambda _m: None) == []  # and later: nothing failed any more
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["cell"] for t in waiting) == ["int4-none-s0", "int4-none-s1"]
