"""qsnn-train tune: Optuna workers sharing one storage and one trial budget; best_params.toml."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from qsnn.config import TrainConfig  # noqa: E402
from qsnn.train.tune import PRESET_FIELDS, SEARCH_SPACE, open_study, run_worker  # noqa: E402

BIN = Path(sys.executable).parent


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_workers_share_the_budget_exactly(tmp_path):
    """Three threads, each with its own study object on one SQLite file, run exactly N trials."""
    url = f"sqlite:///{tmp_path / 'budget.db'}"
    n_trials, ran = 5, []

    def objective(trial):
        x = trial.suggest_float("x", -1, 1)
        time.sleep(0.05)
        return -x * x

    errors = []

    def worker(seed):
        try:
            study = open_study(url, "budget", sampler_seed=seed, prune=False)
            ran.append(run_worker(study, n_trials, objective, log=lambda _m: None))
        except Exception as exc:  # a thread's exception would not fail the test by itself
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(ran) == 3
    study = optuna.load_study(study_name="budget", storage=url)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == n_trials and sum(ran) == n_trials
    numbers = [t.number for t in study.get_trials()]
    assert len(numbers) == len(set(numbers))
    # anything else is a trial that lost the race and never trained
    others = [t for t in study.get_trials() if t.state != optuna.trial.TrialState.COMPLETE]
    assert all(t.state == optuna.trial.TrialState.FAIL and t.user_attrs.get("over_budget") for t in others)


@pytest.mark.slow
def test_two_tune_processes_on_one_sqlite_storage(tmp_path):
    storage = f"sqlite:///{tmp_path / 'tune.db'}"
    n_trials = 4
    common = ["tune", "--dataset", "mnist5k", "--precision", "int4", "--trials", str(n_trials), "--epochs", "1",
              "--steps", "2", "--subset", "40", "--val-subset", "20", "--batch-size", "20",
              "--storage", storage, "--study-name", "shared"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = [subprocess.Popen([str(BIN / "qsnn-train"), *common, "--out", str(tmp_path / f"w{i}"), "--sampler-seed", str(i)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for i in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text

    study = optuna.load_study(study_name="shared", storage=storage)
    counted = study.get_trials(states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED))
    assert len(counted) == n_trials
    numbers = [t.number for t in study.get_trials()]
    assert len(numbers) == len(set(numbers))
    ran = [int(line.split()[-1]) for text in outputs for line in text.splitlines() if line.startswith("trials run by this worker")]
    assert len(ran) == 2 and sum(ran) == n_trials
    assert all(r >= 1 for r in ran), outputs  # both workers took part
    # every trial searched the space and trained its own run directory, without reading the test split
    for t in counted:
        assert set(SEARCH_SPACE) <= set(t.params)
    metrics = [json.loads(p.read_text()) for p in tmp_path.glob("w*/trials/shared-*/metrics.json")]
    assert metrics and all(m["test_acc"] is None for m in metrics)

    for i in range(2):
        text = (tmp_path / f"w{i}" / "best_params.toml").read_text()
        table = tomllib.loads(text)["mnist"]["int4"]
        assert table["source"] == "qsnn-train tune shared"
        assert set(table) == {"source", *PRESET_FIELDS}
        best = study.best_trial
        assert table["beta"] == pytest.approx(best.params["beta"], rel=1e-5)
        assert table["num_steps"] == 2 and table["batch_size"] == 20
        # the row is a valid preset: it builds a configuration
        TrainConfig.from_dict({"dataset": "mnist5k", "precision": "int4",
                               **{k: v for k, v in table.items() if k != "source"}})


def test_on_epoch_hook_can_stop_a_run(tmp_path):
    """train(on_epoch=...) sees each epoch's row and may stop the run (Optuna pruning)."""
    from qsnn.train.loop import train

    cfg = TrainConfig.from_preset("mnist5k", "int4", num_steps=2, epochs=3, subset=40, val_subset=20, test_subset=20,
                                  batch_size=20)
    seen = []

    def on_epoch(epoch, row):
        seen.append((epoch, row["val_acc"]))
        raise optuna.TrialPruned("stop")

    with pytest.raises(optuna.TrialPruned):
        train(cfg, tmp_path / "run", progress=False, log=lambda _m: None, on_epoch=on_epoch)
    assert [e for e, _ in seen] == [1]
    assert (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "metrics.json").exists()
