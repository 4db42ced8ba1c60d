"""The study's grid as an Optuna trial queue: any number of workers, on any machines, run it once.

``qsnn-train study --storage URL`` hands the cells of the plan (every precision × schedule × seed
run of :func:`qsnn.train.study.plan`) out through one Optuna study in a shared storage, with
Optuna's own mechanisms and no scheduler of ours:

1. **Enqueued once.** The worker that creates the study (the storage's unique study name lets
   exactly one succeed) records the plan's digest, enqueues every cell as a waiting trial
   (``Study.enqueue_trial``, the cell's name as the user attribute ``cell``) and then marks the
   plan complete. Every other worker waits for that mark and checks that its own plan has the
   same digest (every cell's name and full configuration).
2. **Popped by one worker each.** A worker takes the next waiting trial with ``Study.optimize``:
   Optuna moves it from WAITING to RUNNING in one locked update, so only one worker gets it. The
   cell trains in ``OUT/{cell}``: resumed from ``last.pt`` when that folder holds an interrupted
   run of it, not trained again when it holds the finished one.
3. **Re-queued when its worker dies.** While a cell trains, Optuna's heartbeat thread records a
   heartbeat every ``heartbeat`` seconds. Before a worker takes a trial, and every few seconds while
   it waits, it fails the running trials whose last heartbeat is older than ``grace`` seconds
   (``optuna.storages.fail_stale_trials``; again one locked update per trial) and Optuna's
   ``RetryHeartbeatStaleTrialCallback`` enqueues a copy of each (same cell), up to ``max_retry``
   times. With ``OUT`` on a shared file system the copy resumes from the dead worker's ``last.pt``;
   otherwise it trains the cell from the start.
4. A worker stops when no trial is waiting and none is running (a running one may still come back
   as a waiting one). Ctrl-C (and SIGTERM, e.g. a SLURM time limit) leaves the worker's trial to the
   heartbeat, exactly like a kill, so the cell is re-queued rather than lost.

A worker whose own trial was failed by the others (its heartbeats came too late) stops at the end
of the epoch instead of going on in a folder another worker now owns; training is deterministic,
so the files both wrote agree. A cell whose training raises an error (a diverged run, a missing
data set) is marked FAIL with the error as the user attribute ``error`` and that worker stops with
the error, as the plain study does; ``retry_failed`` re-queues such cells once their cause is fixed.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Any, Callable, Sequence

from qsnn.errors import QsnnError
from qsnn.optional import require

from .storage import DEFAULT_HEARTBEAT, open_storage, redact, retry_callback
from .study import StudyRun, run_status

#: User attributes: of the study (the plan) and of each trial (its cell, and what the worker did).
PLAN_ATTR, ENQUEUED_ATTR, CELL_ATTR = "qsnn_plan", "qsnn_plan_enqueued", "cell"
PLAN_FORMAT = 1
DEFAULT_MAX_RETRY = 3


class _NoCell(Exception):
    """``Study.optimize`` made a fresh trial: the queue emptied in the instant before this worker asked."""


class _Superseded(Exception):
    """This worker's trial is no longer RUNNING: the others failed it for a late heartbeat."""


def plan_digest(runs: Sequence[StudyRun]) -> str:
    """SHA-256 over every cell's name and configuration (not its folder: machines may differ there)."""
    text = json.dumps([[r.name, r.cfg.to_dict()] for r in runs], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def default_study_name(dataset: str, runs: Sequence[StudyRun]) -> str:
    """``qsnn-study-DATASET-<digest>``: the same settings join the same study, other settings get their own."""
    return f"qsnn-study-{dataset}-{plan_digest(runs)[:12]}"


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _quiet_optuna():
    optuna = require("optuna", "qsnn-train study --storage")

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # this command prints its own lines
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def open_queue(
    url: str,
    study_name: str,
    runs: Sequence[StudyRun],
    *,
    heartbeat: int = DEFAULT_HEARTBEAT,
    grace: int | None = None,
    max_retry: int | None = DEFAULT_MAX_RETRY,
    wait: float = 120.0,
    log: Callable[[str], None] = print,
):
    """Create the study and enqueue the plan, or join it once its plan is complete. Returns (study, storage)."""
    optuna = require("optuna", "qsnn-train study --storage")

    _quiet_optuna()
    if url.startswith("journal:"):
        raise QsnnError(
            "--storage journal:… has no heartbeats, so a dead worker's run would never be re-queued; "
            "use postgresql://… (many machines) or sqlite:///… (one machine)"
        )
    storage = open_storage(url, heartbeat, grace, retry=retry_callback(max_retry))
    digest, names = plan_digest(runs), [r.name for r in runs]
    sampler = optuna.samplers.RandomSampler()  # nothing is sampled: every trial is a cell from the queue
    try:
        study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", sampler=sampler)
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(storage=storage, study_name=study_name, sampler=sampler)
    else:
        study.set_user_attr(PLAN_ATTR, {"format": PLAN_FORMAT, "digest": digest, "cells": names})
        for i, run in enumerate(runs):
            study.enqueue_trial({}, user_attrs={CELL_ATTR: run.name, "index": i})
        study.set_user_attr(ENQUEUED_ATTR, len(runs))
        log(f"study {study_name!r} in {redact(url)}: created, {len(runs)} cells enqueued")
        return study, storage
    deadline = time.monotonic() + wait
    while True:
        attrs = study.user_attrs
        plan = attrs.get(PLAN_ATTR)
        if plan is not None and plan.get("digest") != digest:
            raise QsnnError(
                f"study {study_name!r} in {redact(url)} holds another plan ({len(plan.get('cells', []))} "
                f"cells, digest {str(plan.get('digest'))[:12]} ≠ {digest[:12]}): the settings differ. "
                f"Use the same options on every worker, or another --study-name"
            )
        if plan is not None and attrs.get(ENQUEUED_ATTR) == len(names):
            break
        if time.monotonic() > deadline:
            raise QsnnError(
                f"study {study_name!r} in {redact(url)} exists but its plan was never completely "
                f"enqueued (the worker that created it stopped while enqueueing). Nothing has run yet: "
                f"delete it with `optuna delete-study --storage URL --study-name {study_name}` and start "
                f"the workers again"
            )
        time.sleep(0.5)
    log(f"study {study_name!r} in {redact(url)}: joined ({len(names)} cells)")
    return study, storage


def cell_states(study) -> dict[str, dict[str, Any]]:
    """Per cell: the state of its latest trial, the number of trials and of completed ones."""
    out: dict[str, dict[str, Any]] = {}
    for t in study.get_trials(deepcopy=False):
        cell = t.user_attrs.get(CELL_ATTR)
        if cell is None:
            continue
        rec = out.setdefault(cell, {"state": None, "trials": 0, "complete": 0, "numbers": []})
        rec["trials"] += 1
        rec["numbers"].append(t.number)
        rec["complete"] += t.state.name == "COMPLETE"
        if rec["state"] != "COMPLETE":  # a COMPLETE trial decides; otherwise the latest one
            rec["state"] = t.state.name
    return out


def counts(study) -> dict[str, int]:
    TrialState = require("optuna.trial", "qsnn-train study --storage").TrialState

    return {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}


@contextmanager
def _interrupt_leaves_trial_to_heartbeat(grace: int, enabled: bool):
    """Ctrl-C/SIGTERM end the process at once, leaving the running trial for the heartbeat to re-queue.

    (Left to Optuna, Ctrl-C would mark the trial FAIL, which no callback re-queues: the cell would be lost.)
    """
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return

    def leave(signum, _frame):
        sys.stderr.write(
            f"\ninterrupted (signal {signum}): this worker's cell stays RUNNING until its heartbeat is "
            f"{grace} s old; then any worker of the study re-queues it (resuming from last.pt)\n"
        )
        sys.stderr.flush()
        os._exit(128 + signum)

    previous = {s: signal.signal(s, leave) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def run_worker(
    study,
    storage,
    runs: Sequence[StudyRun],
    *,
    data_dir=None,
    device: str | None = None,
    progress: bool = False,
    log: Callable[[str], None] = print,
    poll: float | None = None,
    handle_signals: bool = True,
) -> dict[str, Any]:
    """Take waiting cells of ``study`` until none is waiting or running; return what this worker did."""
    optuna = require("optuna", "qsnn-train study --storage")
    TrialState = require("optuna.trial", "qsnn-train study --storage").TrialState

    from .loop import train

    _quiet_optuna()
    by_name = {r.name: r for r in runs}
    me = worker_id()
    heartbeat = storage.get_heartbeat_interval() or DEFAULT_HEARTBEAT
    grace = storage.grace_period or 2 * heartbeat
    poll = poll if poll is not None else max(1.0, min(float(heartbeat), 10.0))
    study_id = storage.get_study_id_from_name(study.study_name)
    done: dict[str, list[str]] = {"trained": [], "resumed": [], "skipped": [], "superseded": []}
    superseded = {"flag": False}

    def objective(trial) -> float:
        cell = trial.user_attrs.get(CELL_ATTR)
        run = by_name.get(cell)
        if run is None:
            trial.set_user_attr("no_cell", True)
            raise _NoCell(f"trial {trial.number} is not a cell of the plan")
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        trial.set_user_attr("worker", me)
        retried = storage.get_trial(trial_id).system_attrs.get("failed_trial")  # set by the retry callback

        def still_mine(epoch: int | None = None, row: dict[str, Any] | None = None) -> None:
            if storage.get_trial(trial_id).state != TrialState.RUNNING:
                raise _Superseded(f"{cell}: trial {trial.number} was failed by another worker (late heartbeat)")
            if row is not None:
                trial.report(row["val_acc"], epoch)

        try:
            status = run_status(run)
            start = 0
            if status == "done":
                metrics = json.loads((run.run_dir / "metrics.json").read_text())
                outcome = "skipped"
                log(f"{cell}: already finished in {run.run_dir} (trial {trial.number})")
            else:
                if status == "resume":
                    from .checkpoint import load_checkpoint

                    start = int(load_checkpoint(run.run_dir / "last.pt")["epoch"])
                outcome = "resumed" if status == "resume" else "trained"
                log(
                    f"{'resuming' if status == 'resume' else 'training'} {cell} (trial {trial.number}"
                    f"{f', re-queued from trial {retried}' if retried is not None else ''}"
                    f"{f', after epoch {start}' if start else ''})"
                )
                metrics = train(
                    run.cfg,
                    run.run_dir,
                    data_dir=data_dir,
                    resume=status == "resume",
                    device=device,
                    progress=progress,
                    log=log,
                    on_epoch=still_mine,
                )
            still_mine()
        except _Superseded:
            superseded["flag"] = True
            raise
        except Exception as exc:
            try:
                trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:1000])
            except Exception:  # noqa: BLE001 - the error itself is what matters
                pass
            raise
        trial.set_user_attr("outcome", outcome)
        trial.set_user_attr("start_epoch", start)
        for key in ("test_acc", "best_val_acc", "best_epoch", "epochs_run", "stopped_early"):
            trial.set_user_attr(key, metrics[key])
        done[outcome].append(cell)
        if outcome != "skipped":
            log(
                f"{cell}: best val {metrics['best_val_acc']:.2f} %, test {metrics['test_acc']:.2f} % "
                f"({metrics['epochs_run']} epochs{', early stop' if metrics['stopped_early'] else ''})"
            )
        return float(metrics["best_val_acc"])

    waited = False
    with _interrupt_leaves_trial_to_heartbeat(grace, handle_signals):
        while True:
            optuna.storages.fail_stale_trials(study)  # re-queues the cells of dead workers
            if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
                superseded["flag"] = False
                try:
                    study.optimize(objective, n_trials=1, catch=(_NoCell,), gc_after_trial=True)
                except (_Superseded, ValueError) as exc:
                    if not superseded["flag"]:
                        raise
                    done["superseded"].append(str(exc))
                    log(f"stopped: {exc}; its new owner continues")
                waited = False
                continue
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running:
                break
            if not waited:
                log(
                    f"waiting: {len(running)} cell(s) running on other workers (a dead worker's cell is re-queued "
                    f"once its heartbeat is {grace} s old)"
                )
                waited = True
            time.sleep(poll)
    return {"worker": me, **done, "counts": counts(study), "cells": cell_states(study)}


def retry_failed(study, storage, runs: Sequence[StudyRun], log: Callable[[str], None] = print) -> list[str]:
    """Re-queue every cell of the plan whose trials all failed (none waiting, running or complete).

    Each re-queue is claimed by creating a marker study ``<study>:requeued:<trial number>`` (the
    storage's unique study name lets one worker win), so workers started together never enqueue a
    cell twice.
    """
    optuna = require("optuna", "qsnn-train study --storage")

    states = cell_states(study)
    queued = []
    for i, run in enumerate(runs):
        rec = states.get(run.name)
        if rec is None or rec["state"] != "FAIL":
            continue
        claim = f"{study.study_name}:requeued:{max(rec['numbers'])}"
        try:
            optuna.create_study(storage=storage, study_name=claim)
        except optuna.exceptions.DuplicatedStudyError:
            continue  # another worker re-queued it
        study.enqueue_trial({}, user_attrs={CELL_ATTR: run.name, "index": i})
        queued.append(run.name)
    if queued:
        log(f"re-queued {len(queued)} failed cell(s): {', '.join(queued)}")
    return queued


__all__ = ["plan_digest", "default_study_name", "open_queue", "run_worker", "retry_failed", "cell_states", "counts"]
