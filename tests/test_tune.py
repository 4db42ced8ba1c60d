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
from qsnn.train.storage import open_storage, sqlalchemy_url  # noqa: E402
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


# Enqueued first (in this order) so that pruning is certain: every worker finishes a good trial before
# it takes a bad one, and a bad trial (a silent output layer: chance, 10 %) is then below the median of
# the finished trials at epoch 1. The rest of the budget is TPE's.
GOOD = dict(
    beta=0.99, threshold=2.9, slope=13.8, lr=5.4e-3, dropout=0.0, batch_norm=True, grad_clip=True, weight_clip=False
)
BAD = dict(beta=0.3, threshold=3.0, slope=1.0, lr=1e-4, dropout=0.5, batch_norm=False, grad_clip=True, weight_clip=True)


@pytest.mark.slow
@pytest.mark.postgres
def test_two_tune_workers_on_a_postgresql_server(tmp_path, postgres):
    """Two `qsnn-train tune` processes on a real PostgreSQL server share one study and its budget exactly."""
    storage = postgres.create_database("tune_two_workers")  # postgresql://qsnn@127.0.0.1:PORT/... as users write it
    n_trials = 6
    study = open_study(storage, "shared", prune=False)
    for params in (GOOD, {**GOOD, "lr": 4e-3}, BAD, {**BAD, "beta": 0.31}):
        study.enqueue_trial(params)
    common = [
        "tune",
        "--dataset",
        "mnist5k",
        "--precision",
        "int4",
        "--trials",
        str(n_trials),
        "--epochs",
        "2",
        "--steps",
        "4",
        "--subset",
        "300",
        "--val-subset",
        "100",
        "--batch-size",
        "20",
        "--prune-startup",
        "1",
        "--storage",
        storage,
        "--study-name",
        "shared",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [str(BIN / "qsnn-train"), *common, "--out", str(tmp_path / f"w{i}"), "--sampler-seed", str(i)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    wall = time.perf_counter() - t0
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text

    study = optuna.load_study(study_name="shared", storage=open_storage(storage))
    S = optuna.trial.TrialState
    trials = study.get_trials()
    counted = [t for t in trials if t.state in (S.COMPLETE, S.PRUNED)]
    assert len(counted) == n_trials  # the exact budget
    assert all(t.state == S.FAIL and t.user_attrs.get("over_budget") for t in trials if t not in counted)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    ran = [
        int(line.split()[-1])
        for text in outputs
        for line in text.splitlines()
        if line.startswith("trials run by this worker")
    ]
    assert len(ran) == 2 and sum(ran) == n_trials and min(ran) >= 1, outputs  # both took part, none ran a trial twice
    # no trial trained twice: one run directory per trial, each epoch logged once
    dirs = sorted(tmp_path.glob("w*/trials/shared-*"))
    assert sorted(d.name for d in dirs) == sorted(f"shared-{t.number:04d}" for t in counted)
    for d in dirs:
        epochs = [int(line.split(",")[0]) for line in (d / "log.csv").read_text().splitlines()[1:]]
        assert epochs == list(range(1, len(epochs) + 1))
    sampled = [tuple(sorted(t.params.items())) for t in counted]
    assert len(set(sampled)) == len(sampled)  # no parameter set tried twice
    # pruned trials are recorded: state PRUNED, stopped after epoch 1, with their intermediate value
    pruned = [t for t in counted if t.state == S.PRUNED]
    assert {t.number for t in pruned} >= {2, 3}, [(t.number, t.state, t.intermediate_values) for t in trials]
    for t in pruned:
        assert (
            t.intermediate_values and t.value == t.intermediate_values[max(t.intermediate_values)]
        )  # Optuna keeps the last
        if t.number in (2, 3):
            assert set(t.intermediate_values) == {1}
    for t in counted:
        assert set(SEARCH_SPACE) <= set(t.params)
    metrics = [json.loads(p.read_text()) for p in tmp_path.glob("w*/trials/shared-*/metrics.json")]
    assert metrics and all(m["test_acc"] is None for m in metrics)  # the test split is never read

    # the best parameters, as a presets row
    best, final = study.best_trial, 0
    for i in range(2):
        table = tomllib.loads((tmp_path / f"w{i}" / "best_params.toml").read_text())["mnist"]["int4"]
        assert table["source"] == "qsnn-train tune shared"
        assert set(table) == {"source", *PRESET_FIELDS}
        assert table["num_steps"] == 4 and table["batch_size"] == 20
        TrainConfig.from_dict(
            {"dataset": "mnist5k", "precision": "int4", **{k: v for k, v in table.items() if k != "source"}}
        )  # a valid preset row
        final += all(table[k] == pytest.approx(v, rel=1e-5) for k, v in best.params.items())
    assert final >= 1  # the worker that ended last wrote the study's best trial
    print(
        f"\ntwo tune workers on PostgreSQL: {n_trials} trials ({len(pruned)} pruned), {ran} per worker, "
        f"{wall:.1f} s; server start {postgres.start_s:.1f} s"
    )


def test_on_epoch_hook_can_stop_a_run(tmp_path):
    """train(on_epoch=...) sees each epoch's row and may stop the run (Optuna pruning)."""
    from qsnn.train.loop import train

    cfg = TrainConfig.from_preset(
        "mnist5k", "int4", num_steps=2, epochs=3, subset=40, val_subset=20, test_subset=20, batch_size=20
    )
    seen = []

    def on_epoch(epoch, row):
        seen.append((epoch, row["val_acc"]))
        raise optuna.TrialPruned("stop")

    with pytest.raises(optuna.TrialPruned):
        train(cfg, tmp_path / "run", progress=False, log=lambda _m: None, on_epoch=on_epoch)
    assert [e for e, _ in seen] == [1]
    assert (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "metrics.json").exists()


def test_postgresql_urls_get_the_installed_driver():
    pytest.importorskip("psycopg")
    import importlib.util

    url = sqlalchemy_url("postgresql://u:pw@db.example:5432/optuna")
    want = "postgresql://" if importlib.util.find_spec("psycopg2") else "postgresql+psycopg://"
    assert url == want + "u:pw@db.example:5432/optuna"
    assert sqlalchemy_url("postgres://u@h/db").endswith("://u@h/db") and sqlalchemy_url("postgres://u@h/db").startswith(
        "postgresql"
    )
    assert sqlalchemy_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"  # an explicit driver stays
    assert sqlalchemy_url("sqlite:///x.db") == "sqlite:///x.db"
