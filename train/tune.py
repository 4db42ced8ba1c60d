"""Hyperparameter search as in Table I's footnote: Optuna's TPE sampler, short trials, median pruning.

``qsnn-train tune --dataset D --precision P --trials N`` searches β, θ, slope k, LR, dropout,
BatchNorm, gradient clipping and weight clipping (:data:`SEARCH_SPACE`; an option given on the
command line fixes that hyperparameter instead). Each trial trains ``--epochs`` (5) epochs and
reports its validation accuracy after every epoch, so the median pruner can stop a trial that falls
below the median of earlier trials at the same epoch. The objective is the best validation accuracy
of the trial; the test split is never read.

**Many workers, one study.** The study lives in an Optuna storage: a URL such as
``sqlite:///runs/tune/tune.db`` (the default), ``postgresql://user:pw@host/db`` for workers on many
machines, or ``journal:PATH`` for Optuna's journal file. Every ``qsnn-train tune`` process pointed at
the same storage and ``--study-name`` joins the same study (``load_if_exists``) and the trial budget
N is shared: a worker stops when N trials are finished, pruned or running, and a trial started in
the instant between another worker's check and its own is marked FAIL with the user attribute
``over_budget`` before it trains, so exactly N trials train (numbers are assigned by the storage
and never repeat). With an RDB storage, heartbeats mark the trials of a killed worker FAIL after
a grace period, so they do not hold budget forever and get redone.

At the end each worker writes the study's best trial so far to ``OUT/best_params.toml`` in the
format of ``qsnn/presets.toml`` (a ``[row.precision]`` table whose ``source`` names the study), ready
to paste into the preset file.
"""

from __future__ import annotations

import math
import random
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from qsnn.atomic import atomic_write_text
from qsnn.config import TrainConfig, preset_row
from qsnn.errors import QsnnError
from qsnn.optional import require

from .storage import DEFAULT_HEARTBEAT, default_storage, open_storage, redact

#: What the search varies, one place: name → ("float", low, high, log) | ("bool",).
#: The paper does not publish its ranges; these bracket its Table I values with room on both sides.
SEARCH_SPACE: dict[str, tuple] = {
    "beta": ("float", 0.3, 0.99, False),  # β, membrane decay
    "threshold": ("float", 0.5, 3.0, False),  # θ
    "slope": ("float", 1.0, 15.0, False),  # k of the fast-sigmoid surrogate (eq. 5)
    "lr": ("float", 1e-4, 1e-2, True),  # Adam's η
    "dropout": ("float", 0.0, 0.5, False),
    "batch_norm": ("bool",),
    "grad_clip": ("bool",),
    "weight_clip": ("bool",),
}
#: The fields of a preset row (qsnn/presets.toml), in the file's order.
PRESET_FIELDS = (
    "batch_size",
    "beta",
    "threshold",
    "slope",
    "lr",
    "grad_clip",
    "weight_clip",
    "batch_norm",
    "dropout",
    "num_steps",
)
DEFAULT_EPOCHS = 5


class _OverBudget(Exception):
    """The study already has its N trials; this one was created in a race and will not train."""


def open_study(
    storage_url: str,
    study_name: str,
    *,
    sampler_seed: int | None = None,
    prune: bool = True,
    startup_trials: int = 5,
    heartbeat: int = DEFAULT_HEARTBEAT,
):
    """Create or join the study (``load_if_exists``) with a TPE sampler and a median pruner."""
    optuna = require("optuna", "qsnn-train tune")

    storage = open_storage(storage_url, heartbeat)
    sampler = optuna.samplers.TPESampler(seed=sampler_seed)
    pruner = (
        optuna.pruners.MedianPruner(n_startup_trials=startup_trials, n_warmup_steps=1)
        if prune
        else optuna.pruners.NopPruner()
    )
    for attempt in range(8):
        try:
            return optuna.create_study(
                storage=storage,
                study_name=study_name,
                direction="maximize",
                sampler=sampler,
                pruner=pruner,
                load_if_exists=True,
            )
        except optuna.exceptions.DuplicatedStudyError:  # created by another worker in the same instant
            time.sleep(0.1 + random.random() * (attempt + 1))
    raise QsnnError(f"cannot create or load study {study_name!r} in {redact(storage_url)}")


def search_space(fixed: dict[str, Any]) -> dict[str, tuple]:
    """:data:`SEARCH_SPACE` less the hyperparameters fixed on the command line."""
    return {k: v for k, v in SEARCH_SPACE.items() if fixed.get(k) is None}


def suggest(trial, space: dict[str, tuple]) -> dict[str, Any]:
    params = {}
    for name, spec in space.items():
        if spec[0] == "bool":
            params[name] = trial.suggest_categorical(name, [True, False])
        else:
            _, low, high, log = spec
            params[name] = trial.suggest_float(name, low, high, log=log)
    return params


_COUNTED = None


def _counted_states():
    global _COUNTED
    if _COUNTED is None:
        TrialState = require("optuna.trial", "qsnn-train tune").TrialState

        _COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    return _COUNTED


def budget_used(study, before_number: int | None = None) -> int:
    """Trials that count against the budget: finished, pruned, running or waiting (not failed)."""
    trials = study.get_trials(deepcopy=False, states=_counted_states())
    if before_number is not None:
        trials = [t for t in trials if t.number < before_number]
    return len(trials)


def run_worker(study, n_trials: int, objective: Callable, log: Callable[[str], None] = print) -> int:
    """Run trials of ``objective`` until the study holds ``n_trials`` counted trials; return how many ran here.

    The check before each trial keeps workers from starting trials past the budget; the check inside
    (on the trials numbered below this one) settles the race of two workers asking at the same time,
    so at most ``n_trials`` trials ever train, whatever the number of workers.
    """
    optuna = require("optuna", "qsnn-train tune")

    ran = 0

    def guarded(trial):
        nonlocal ran
        if budget_used(study, before_number=trial.number) >= n_trials:
            trial.set_user_attr("over_budget", True)
            raise _OverBudget(f"study already has {n_trials} trials")
        ran += 1
        return objective(trial)

    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        while budget_used(study) < n_trials:
            study.optimize(guarded, n_trials=1, catch=(_OverBudget,), gc_after_trial=True)
    finally:
        optuna.logging.set_verbosity(previous)
    return ran


def make_objective(
    dataset: str,
    precision: str,
    fixed: dict[str, Any],
    out: Path,
    study_name: str,
    *,
    epochs: int = DEFAULT_EPOCHS,
    data_dir=None,
    device: str | None = None,
    prune: bool = True,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> Callable:
    """The objective: train a short run with the trial's hyperparameters, return its best validation accuracy."""
    optuna = require("optuna", "qsnn-train tune")

    from .loop import TrainingDiverged, train

    space = search_space(fixed)
    fixed = {k: v for k, v in fixed.items() if v is not None}

    def objective(trial) -> float:
        params = suggest(trial, space)
        cfg = TrainConfig.from_preset(dataset, precision, **{**fixed, "epochs": epochs, **params})
        trial.set_user_attr("config", cfg.to_dict())
        run_dir = out / "trials" / f"{study_name}-{trial.number:04d}"
        if run_dir.exists():  # left by an earlier study of the same name (trial numbers restart)
            shutil.rmtree(run_dir)
        best = {"val": 0.0}

        def on_epoch(epoch: int, row: dict[str, Any]) -> None:
            best["val"] = max(best["val"], row["val_acc"])
            trial.report(row["val_acc"], epoch)
            if prune and trial.should_prune():
                raise optuna.TrialPruned(f"epoch {epoch}: validation {row['val_acc']:.2f} % below the median")

        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())
        try:
            metrics = train(
                cfg,
                run_dir,
                data_dir=data_dir,
                device=device,
                progress=progress,
                log=lambda _msg: None,
                on_epoch=on_epoch,
                evaluate_test=False,
            )
        except optuna.TrialPruned:
            log(f"trial {trial.number}: pruned at validation {best['val']:.2f} %  ({shown})")
            raise
        except TrainingDiverged as exc:
            trial.set_user_attr("diverged", str(exc))
            log(f"trial {trial.number}: diverged, best validation {best['val']:.2f} %  ({shown})")
            return best["val"]
        log(
            f"trial {trial.number}: validation {metrics['best_val_acc']:.2f} % (epoch {metrics['best_epoch']})  ({shown})"
        )
        return float(metrics["best_val_acc"])

    return objective


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise QsnnError(f"cannot write {v} as a preset value")
        text = f"{v:.6g}"
        return text if any(c in text for c in ".en") else text + ".0"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


def best_params_toml(study, dataset: str, precision: str, storage_url: str) -> str:
    """The best trial as a preset row: ``[row.precision]`` with ``source = "qsnn-train tune <study>"``."""
    TrialState = require("optuna.trial", "qsnn-train tune").TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        raise QsnnError(f"study {study.study_name!r} has no finished trial yet; nothing to write")
    best = study.best_trial
    cfg = best.user_attrs.get("config") or {}
    values = {k: cfg.get(k, best.params.get(k)) for k in PRESET_FIELDS}
    missing = [k for k, v in values.items() if v is None]
    if missing:
        raise QsnnError(f"trial {best.number} lacks {missing}; was it run by qsnn-train tune?")
    pruned = len(study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)))
    lines = [
        f"# Written by qsnn-train tune: the best of {len(complete)} finished trials ({pruned} pruned) of study",
        f"# {study.study_name!r} in {redact(storage_url)}.",
        f"# Objective: best validation accuracy {best.value:.2f} % (trial {best.number}, {cfg.get('epochs')} epochs, "
        f"T = {cfg.get('num_steps')}, {cfg.get('subset') or 'all'} training samples, schedule {cfg.get('schedule')}).",
        f"# Searched: {', '.join(sorted(best.params))}. Paste the table into qsnn/presets.toml to use it.",
        "",
        f"[{preset_row(dataset)}.{precision}]",
        f"source = {_toml_value('qsnn-train tune ' + study.study_name)}",
    ]
    lines += [f"{k} = {_toml_value(values[k])}" for k in PRESET_FIELDS]
    return "\n".join(lines) + "\n"


def write_best_params(study, out: Path, dataset: str, precision: str, storage_url: str) -> Path:
    path = out / "best_params.toml"
    atomic_write_text(path, best_params_toml(study, dataset, precision, storage_url))
    return path


def tune(
    dataset: str,
    precision: str,
    *,
    n_trials: int,
    out: str | Path,
    fixed: dict[str, Any] | None = None,
    epochs: int = DEFAULT_EPOCHS,
    storage: str | None = None,
    study_name: str | None = None,
    sampler_seed: int | None = None,
    prune: bool = True,
    prune_startup: int = 5,
    data_dir=None,
    device: str | None = None,
    log: Callable[[str], None] = print,
    progress: bool = False,
) -> dict[str, Any]:
    """Join (or create) the study and run trials until it holds ``n_trials``; write best_params.toml.

    ``progress`` shows each trial's epoch and evaluation bars (qsnn-train tune --progress)."""
    from .distributed import env_world_size

    if env_world_size() > 1:
        raise QsnnError(
            "qsnn-train tune is not meant to run under torchrun: start one worker per GPU instead "
            "(e.g. CUDA_VISIBLE_DEVICES=k qsnn-train tune --storage URL ...), all on the same storage"
        )
    if n_trials < 1:
        raise QsnnError(f"--trials must be at least 1, got {n_trials}")
    if epochs < 1:
        raise QsnnError(f"--epochs must be at least 1, got {epochs}")
    fixed = dict(fixed or {})
    for name in ("dataset", "precision", "epochs"):
        if fixed.get(name) is not None:
            raise QsnnError(f"tune sets {name} itself (use --dataset/--precision/--epochs)")
    if prune_startup < 0:
        raise QsnnError(f"--prune-startup must be >= 0, got {prune_startup}")
    TrainConfig.from_preset(dataset, precision, **fixed, epochs=epochs)  # the fixed options, before any folder
    optuna = require("optuna", "qsnn-train tune")  # before any folder too
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(out)
    study_name = study_name or f"{dataset}-{precision}"

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # this command prints its own progress lines
    study = open_study(storage, study_name, sampler_seed=sampler_seed, prune=prune, startup_trials=prune_startup)
    log(
        f"study {study_name!r} in {redact(storage)}: {budget_used(study)} of {n_trials} trials already counted; "
        f"searching {', '.join(search_space(fixed))}"
    )
    objective = make_objective(
        dataset,
        precision,
        fixed,
        out,
        study_name,
        epochs=epochs,
        data_dir=data_dir,
        device=device,
        prune=prune,
        log=log,
        progress=progress,
    )
    ran = run_worker(study, n_trials, objective, log)
    TrialState = require("optuna.trial", "qsnn-train tune").TrialState

    counts = {
        s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,)))
        for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    }
    result: dict[str, Any] = {
        "study": study_name,
        "storage": redact(storage),
        "ran_here": ran,
        **counts,
        "best_params": None,
        "best_value": None,
        "best_trial": None,
    }
    if counts["complete"]:
        result["best_params"] = write_best_params(study, out, dataset, precision, storage)
        result["best_value"] = study.best_value
        result["best_trial"] = study.best_trial.number
    return result
