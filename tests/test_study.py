"""qsnn-train study: a CPU-sized schedule study, its report, regeneration, skipping and resuming."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from qsnn.errors import QsnnError
from qsnn.train.cli import main
from qsnn.train.study import REPORT_FILES, moving_average, parse_list, parse_shard, plan, summarize, table_markdown

# Two schedules keep the end-to-end test inside the CPU budget (2 cores shared with other suites);
# all four schedules go through the report in test_report_figures_with_all_four_schedules, and
# docs/study.md shows a real four-schedule run.
SCHEDULES = ["none", "cosine"]
TINY = [
    "--epochs",
    "2",
    "--steps",
    "2",
    "--subset",
    "60",
    "--val-subset",
    "30",
    "--test-subset",
    "30",
    "--batch-size",
    "30",
    "--cosine-period",
    "1",
]
TINY_OVERRIDES = dict(
    epochs=2, num_steps=2, subset=60, val_subset=30, test_subset=30, batch_size=30, cosine_period_epochs=1.0
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Stop(Exception):
    pass


def _stop_after_first_epoch(epoch, row):
    raise _Stop(f"interrupted after epoch {epoch}")


@pytest.mark.slow
def test_study_runs_reports_regenerates_skips_and_resumes(tmp_path):
    from qsnn.train.loop import train

    out = tmp_path / "study"
    args = [
        "study",
        "--dataset",
        "mnist5k",
        "--precision",
        "int4",
        "--schedules",
        ",".join(SCHEDULES),
        "--trials",
        "2",
        *TINY,
        "--out",
        str(out),
        "--no-progress",
    ]

    # An interrupted run of the plan: stopped after its first epoch (last.pt, no metrics.json).
    runs = plan("mnist5k", ["int4"], SCHEDULES, 2, out, TINY_OVERRIDES)
    assert [r.name for r in runs] == [f"int4-{s}-s{k}" for s in SCHEDULES for k in (0, 1)]
    interrupted = runs[-1]
    with pytest.raises(_Stop):
        train(
            interrupted.cfg, interrupted.run_dir, progress=False, log=lambda _m: None, on_epoch=_stop_after_first_epoch
        )
    assert (interrupted.run_dir / "last.pt").exists() and not (interrupted.run_dir / "metrics.json").exists()

    runner = CliRunner()
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "3 trained, 1 resumed, 0 already finished" in result.output
    for name in REPORT_FILES:
        assert (out / name).stat().st_size > 0, name
    for fig in ("fig2_lr.png", "fig3_loss.png"):
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the resumed run finished both epochs
    log = list(csv.DictReader(open(interrupted.run_dir / "log.csv")))
    assert [int(r["epoch"]) for r in log] == [1, 2]

    # Table II: one row per schedule, 2 trials each, sample σ over the trials
    rows = list(csv.DictReader(open(out / "table2.csv")))
    assert [r["schedule"] for r in rows] == SCHEDULES
    for row in rows:
        accs = [
            json.loads((out / f"int4-{row['schedule']}-s{k}" / "metrics.json").read_text())["test_acc"] for k in (0, 1)
        ]
        assert row["trials"] == "2"
        assert float(row["test_best"]) == max(accs)
        assert float(row["test_mean"]) == pytest.approx(np.mean(accs))
        assert float(row["test_std"]) == pytest.approx(np.std(accs, ddof=1))
    table = (out / "table2.md").read_text()
    assert table.count("| mnist5k | int4 |") == 2 and "T = 2" in table
    assert table in result.output  # the printed summary is the table

    # the report from the run directories alone, identical
    saved = {name: (out / name).read_bytes() for name in ("table2.md", "table2.csv")}
    for name in REPORT_FILES:
        (out / name).unlink()
    result = runner.invoke(main, ["study", "report", str(out)])
    assert result.exit_code == 0, result.output
    assert {name: (out / name).read_bytes() for name in saved} == saved
    assert (out / "fig2_lr.png").exists() and (out / "fig3_loss.png").exists()

    # rerunning the command trains nothing
    stamps = {r.name: (r.run_dir / "metrics.json").stat().st_mtime_ns for r in runs}
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "0 trained, 0 resumed, 4 already finished (skipped)" in result.output
    assert {r.name: (r.run_dir / "metrics.json").stat().st_mtime_ns for r in runs} == stamps
    assert (out / "table2.md").read_bytes() == saved["table2.md"]

    # a different configuration in the same folder is refused, not mixed in
    result = runner.invoke(main, [*args[:-1], "--epochs", "3", "--no-progress"])
    assert result.exit_code == 1
    assert "another configuration" in result.output and "epochs 2" in result.output


def _record(precision, schedule, seed, test, val, epochs=3, stopped=False):
    return {
        "name": f"{precision}-{schedule}-s{seed}",
        "history": [],
        "iters": [{"iteration": 0, "loss": 1.0, "lr": 1e-3}],
        "metrics": {
            "dataset": "mnist",
            "precision": precision,
            "schedule": schedule,
            "seed": seed,
            "test_acc": test,
            "best_val_acc": val,
            "epochs_run": epochs,
            "best_epoch": 1,
            "stopped_early": stopped,
            "num_steps": 100,
            "train_samples": 10,
            "val_samples": 5,
            "test_samples": 5,
            "config": {"epochs": 10, "patience": 2},
        },
    }


def test_summary_statistics_and_order():
    records = [
        _record("fp32", "cosine", 0, 90.0, 91.0),
        _record("int4", "cosine", 1, 80.0, 81.0, 5, True),
        _record("int4", "cosine", 0, 70.0, 71.0),
        _record("int4", "none", 0, 60.0, 61.0),
    ]
    rows = summarize(records)
    assert [(r["precision"], r["schedule"]) for r in rows] == [("int4", "none"), ("int4", "cosine"), ("fp32", "cosine")]
    cos = rows[1]
    assert (cos["test_best"], cos["test_mean"]) == (80.0, 75.0)
    assert cos["test_std"] == pytest.approx(math.sqrt(50.0))  # sample σ (n − 1) of 70, 80
    assert cos["seeds"] == "0 1" and cos["stopped_early"] == 1 and cos["epochs_run_mean"] == 4.0
    assert math.isnan(rows[0]["test_std"])  # one trial: no σ
    md = table_markdown(records)
    assert "| mnist | int4 | none | 1 | 60.00 | 60.00 ± – |" in md


def test_report_figures_with_all_four_schedules(tmp_path):
    """The report from run directories alone, for two precisions × four schedules (synthetic runs)."""
    from qsnn.train.study import write_report

    rng = np.random.default_rng(0)
    for precision in ("int4", "fp32"):
        for k, schedule in enumerate(["none", "lrstep", "lossstep", "cosine"]):
            for seed in (0, 1):
                run = tmp_path / f"{precision}-{schedule}-s{seed}"
                run.mkdir()
                rec = _record(precision, schedule, seed, 80.0 + k + seed, 81.0 + k)
                (run / "metrics.json").write_text(json.dumps(rec["metrics"]))
                loss = 0.2 * np.exp(-np.arange(40) / (10 + k)) + 0.01 * rng.random(40)
                lr = (
                    1e-3 * (0.5 + 0.5 * np.cos(np.pi * np.arange(40) / 10))
                    if schedule == "cosine"
                    else np.full(40, 1e-3)
                )
                (run / "iters.csv").write_text(
                    "iteration,epoch,loss,lr\n" + "".join(f"{i},{i // 10 + 1},{loss[i]},{lr[i]}\n" for i in range(40))
                )
                (run / "log.csv").write_text(
                    "epoch,train_loss,train_acc,val_acc,lr,time_s,samples_per_s\n1,0.1,50,50,0.001,1,1\n"
                )
    report = write_report(tmp_path, window=5)
    assert report["runs"] == 16
    rows = list(csv.DictReader(open(tmp_path / "table2.csv")))
    assert [(r["precision"], r["schedule"]) for r in rows] == [
        (p, s) for p in ("int4", "fp32") for s in ("none", "lrstep", "lossstep", "cosine")
    ]
    assert float(rows[3]["test_mean"]) == 83.5 and float(rows[3]["test_std"]) == pytest.approx(math.sqrt(0.5))
    for fig in ("fig2_lr.png", "fig3_loss.png"):
        assert (tmp_path / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_moving_average_and_argument_parsing():
    np.testing.assert_allclose(moving_average([1, 2, 3, 4], 2), [1, 1.5, 2.5, 3.5])
    np.testing.assert_allclose(moving_average([1, 2, 3], 1), [1, 2, 3])
    assert parse_list("int4, fp32,int4", ["int4", "fp32"], "--precision") == ["int4", "fp32"]
    with pytest.raises(QsnnError, match="int3"):
        parse_list("int3", ["int4", "fp32"], "--precision")
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) == (0, 1)
    with pytest.raises(QsnnError):
        parse_shard("4/4")
    with pytest.raises(QsnnError, match="sets"):
        plan("mnist5k", ["int4"], ["none"], 1, "x", {"seed": 3})


def test_report_of_an_empty_folder_says_what_to_do(tmp_path):
    result = CliRunner().invoke(main, ["study", "report", str(tmp_path)])
    assert result.exit_code == 1 and "no finished runs" in result.output
