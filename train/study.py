"""The paper's schedule study: every (precision, schedule, seed) run, then Table II and Figs. 2-3.

``run_study`` trains one run per combination of precision × schedule × seed 0..n−1 in its own
directory ``OUT/{precision}-{schedule}-s{seed}`` (all other settings from the presets and the
overrides), and ``write_report`` turns the run directories into the report::

    OUT/table2.md     Table II-style: per precision × schedule, test (and validation) accuracy
                      best / mean / sample σ over the trials, epochs run and early stops
    OUT/table2.csv    the same numbers, unrounded
    OUT/fig2_lr.png   Fig. 2-style: the LR of each schedule per iteration (from iters.csv)
    OUT/fig3_loss.png Fig. 3-style: moving average of the training loss per schedule, mean over
                      the trials (band: min..max of the trials)

The study is resumable: a finished run (``metrics.json`` whose configuration equals the requested
one) is skipped, an interrupted run (``last.pt`` without ``metrics.json``) resumes where it stopped,
and a directory holding a run with another configuration stops the study with an error instead of
mixing results. The report reads only the run directories (``metrics.json``, ``log.csv``,
``iters.csv``), so ``qsnn-train study report OUT`` regenerates it, identically, at any time.

Test accuracy is that of each run's best-validation checkpoint; no decision looks at the test split.
Note that the seed also draws the validation carve (and mnist5k's test carve) and any ``--subset``,
so trials differ in data split as well as in initialisation, shuffling and dropout.
"""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from qsnn.atomic import atomic_write_bytes, atomic_write_text
from qsnn.config import PRECISIONS, SCHEDULES, TrainConfig
from qsnn.errors import QsnnError

#: The paper's order of schedules (Table II rows, figure legends).
SCHEDULE_ORDER = ("none", "lrstep", "lossstep", "cosine")
#: Line style per schedule, so that curves that coincide (none and an undecayed lossstep) stay visible.
_STYLE = {
    "none": dict(ls="-", lw=2.6),
    "lrstep": dict(ls="--", lw=1.6),
    "lossstep": dict(ls="-.", lw=1.6),
    "cosine": dict(ls="-", lw=1.4),
}
TABLE_MD, TABLE_CSV = "table2.md", "table2.csv"
FIG_LR, FIG_LOSS = "fig2_lr.png", "fig3_loss.png"
REPORT_FILES = (TABLE_MD, TABLE_CSV, FIG_LR, FIG_LOSS)


def run_name(precision: str, schedule: str, seed: int) -> str:
    return f"{precision}-{schedule}-s{seed}"


def parse_list(text: str | Sequence[str], allowed: Sequence[str], what: str) -> list[str]:
    """``"int4,fp32"`` → ``["int4", "fp32"]``, checked against ``allowed``, duplicates dropped."""
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    bad = [s for s in items if s not in allowed]
    if bad or not items:
        raise QsnnError(
            f"{what}: {', '.join(bad) or 'nothing given'} not understood; choose from {', '.join(allowed)} (comma-separated)"
        )
    return list(dict.fromkeys(items))


@dataclass(frozen=True)
class StudyRun:
    """One cell of the study: its configuration and run directory."""

    cfg: TrainConfig
    run_dir: Path

    @property
    def name(self) -> str:
        return self.run_dir.name


def plan(
    dataset: str,
    precisions: Sequence[str],
    schedules: Sequence[str],
    trials: int,
    out: str | Path,
    overrides: dict[str, Any] | None = None,
) -> list[StudyRun]:
    """Every (precision, schedule, seed) run, precision-major, seeds 0..trials−1."""
    if trials < 1:
        raise QsnnError(f"--trials must be at least 1, got {trials}")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    fixed = {"dataset", "precision", "schedule", "seed"} & set(overrides)
    if fixed:
        raise QsnnError(f"the study sets {sorted(fixed)} itself; use --precision/--schedules/--trials")
    out = Path(out)
    runs = []
    for precision in precisions:
        for schedule in schedules:
            for seed in range(trials):
                cfg = TrainConfig.from_preset(dataset, precision, schedule=schedule, seed=seed, **overrides)
                runs.append(StudyRun(cfg, out / run_name(precision, schedule, seed)))
    return runs


def _config_diff(saved: dict[str, Any], wanted: TrainConfig) -> list[str]:
    want = wanted.to_dict()
    keys = sorted(set(saved) | set(want))
    return [f"{k} {saved.get(k)!r} ≠ {want.get(k)!r}" for k in keys if saved.get(k) != want.get(k)]


def run_status(run: StudyRun) -> str:
    """``"done"`` (finished, same configuration), ``"resume"`` (interrupted) or ``"new"``.

    Raises :class:`QsnnError` when the directory holds a run with another configuration.
    """
    metrics_path, last = run.run_dir / "metrics.json", run.run_dir / "last.pt"
    if metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text())
            saved = metrics["config"]
        except (ValueError, KeyError, TypeError):
            saved = None
        if saved is not None:
            diff = _config_diff(saved, run.cfg)
            if diff:
                raise QsnnError(
                    f"{run.run_dir} holds a finished run with another configuration ({'; '.join(diff[:4])}); "
                    f"use another --out or remove that folder"
                )
            if (run.run_dir / "iters.csv").is_file() and (run.run_dir / "log.csv").is_file():
                return "done"
    if last.is_file():
        from .checkpoint import load_checkpoint

        saved_cfg = load_checkpoint(last)["config_obj"]
        if saved_cfg != run.cfg:
            diff = _config_diff(saved_cfg.to_dict(), run.cfg)
            raise QsnnError(
                f"{run.run_dir} holds an interrupted run with another configuration ({'; '.join(diff[:4])}); "
                f"use another --out or remove that folder"
            )
        return "resume"
    return "new"


def run_study(
    runs: Sequence[StudyRun],
    *,
    data_dir=None,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    shard: tuple[int, int] = (0, 1),
) -> dict[str, list[str]]:
    """Train every run of ``runs`` that is not finished (``shard=(k, n)``: only runs i with i mod n == k).

    Returns the run names by outcome: ``{"trained": [...], "resumed": [...], "skipped": [...]}``.
    Under torchrun each run trains data-parallel; rank 0 decides what to skip and resume.
    """
    from tqdm.auto import tqdm

    from .distributed import setup as setup_distributed
    from .loop import train

    ctx, _ = setup_distributed(device)
    k, n = shard
    mine = [r for i, r in enumerate(runs) if i % n == k]
    outcome: dict[str, list[str]] = {"trained": [], "resumed": [], "skipped": []}
    show = progress and ctx.is_main
    say = log or (tqdm.write if show else print)
    if not ctx.is_main:
        say = lambda _msg: None  # noqa: E731
    bar = tqdm(mine, desc="study", unit="run", disable=not show)
    for run in bar:
        bar.set_postfix_str(run.name)
        status = ctx.run_on_main(lambda: run_status(run))
        if status == "done":
            outcome["skipped"].append(run.name)
            continue
        say(f"{'resuming' if status == 'resume' else 'training'} {run.name}")
        metrics = train(
            run.cfg, run.run_dir, data_dir=data_dir, resume=status == "resume", device=device, progress=show, log=say
        )
        outcome["resumed" if status == "resume" else "trained"].append(run.name)
        say(
            f"{run.name}: best val {metrics['best_val_acc']:.2f} %, test {metrics['test_acc']:.2f} % "
            f"({metrics['epochs_run']} epochs{', early stop' if metrics['stopped_early'] else ''})"
        )
    return outcome


# -- the report, from the run directories alone ----------------------------------------------------
def _read_csv(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def collect(out: str | Path) -> list[dict[str, Any]]:
    """One record per finished run directory under ``out``: its metrics, per-epoch log and per-iteration log."""
    out = Path(out)
    if not out.is_dir():
        raise QsnnError(f"{out}: no such study folder (run `qsnn-train study --out {out}` first)")
    records = []
    for metrics_path in sorted(out.glob("*/metrics.json")):
        run_dir = metrics_path.parent
        try:
            metrics = json.loads(metrics_path.read_text())
        except ValueError as exc:
            raise QsnnError(
                f"{metrics_path}: not valid JSON ({exc}); remove the run folder or rerun the study"
            ) from None
        if not {"precision", "schedule", "seed", "test_acc", "best_val_acc"} <= set(metrics):
            continue  # not a training run (e.g. an export folder)
        missing = [f for f in ("iters.csv", "log.csv") if not (run_dir / f).is_file()]
        if missing:
            raise QsnnError(f"{run_dir} lacks {', '.join(missing)}; rerun the study to complete it")
        records.append(
            {
                "name": run_dir.name,
                "metrics": metrics,
                "history": _read_csv(run_dir / "log.csv"),
                "iters": _read_csv(run_dir / "iters.csv"),
            }
        )
    if not records:
        raise QsnnError(f"{out} holds no finished runs (no */metrics.json); run `qsnn-train study --out {out}` first")
    return records


def _order(precision: str, schedule: str) -> tuple[int, int]:
    p = PRECISIONS.index(precision) if precision in PRECISIONS else len(PRECISIONS)
    s = SCHEDULE_ORDER.index(schedule) if schedule in SCHEDULE_ORDER else len(SCHEDULE_ORDER)
    return p, s


def _groups(records: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str], list[dict[str, Any]]]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for rec in records:
        m = rec["metrics"]
        groups.setdefault((m["dataset"], m["precision"], m["schedule"]), []).append(rec)
    keys = sorted(groups, key=lambda k: (k[0], *_order(k[1], k[2])))
    return {k: sorted(groups[k], key=lambda r: r["metrics"]["seed"]) for k in keys}


def _stats(values: list[float]) -> tuple[float, float, float]:
    """best, mean, sample standard deviation (n − 1; NaN for one trial)."""
    return max(values), statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Table II rows: one per (dataset, precision, schedule)."""
    rows = []
    for (dataset, precision, schedule), recs in _groups(records).items():
        ms = [r["metrics"] for r in recs]
        test = _stats([m["test_acc"] for m in ms])
        val = _stats([m["best_val_acc"] for m in ms])
        epochs = [m["epochs_run"] for m in ms]
        rows.append(
            {
                "dataset": dataset,
                "precision": precision,
                "schedule": schedule,
                "trials": len(ms),
                "seeds": " ".join(str(m["seed"]) for m in ms),
                "test_best": test[0],
                "test_mean": test[1],
                "test_std": test[2],
                "val_best": val[0],
                "val_mean": val[1],
                "val_std": val[2],
                "epochs_run_mean": statistics.fmean(epochs),
                "epochs_run_min": min(epochs),
                "epochs_run_max": max(epochs),
                "best_epoch_mean": statistics.fmean(m["best_epoch"] for m in ms),
                "stopped_early": sum(bool(m["stopped_early"]) for m in ms),
                "max_epochs": max(m.get("config", {}).get("epochs", m["epochs_run"]) for m in ms),
                "num_steps": ms[0]["num_steps"],
            }
        )
    return rows


def _fmt(x: float, digits: int = 2) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _setting(records: list[dict[str, Any]], key: str) -> str:
    values = sorted({str(r["metrics"].get(key)) for r in records})
    return "/".join(values)


def table_markdown(records: list[dict[str, Any]]) -> str:
    """Table II as markdown: accuracy best, mean ± sample σ over the trials, epochs to early stop."""
    rows = summarize(records)
    cfgs = [r["metrics"].get("config", {}) for r in records]
    lines = [
        "# Table II (reproduction): test accuracy per schedule",
        "",
        f"dataset {_setting(records, 'dataset')}; T = {_setting(records, 'num_steps')} steps; "
        f"up to {'/'.join(sorted({str(c.get('epochs', '?')) for c in cfgs}))} epochs "
        f"(early-stopping patience {'/'.join(sorted({str(c.get('patience', '?')) for c in cfgs}))}); "
        f"samples train/val/test {_setting(records, 'train_samples')}/{_setting(records, 'val_samples')}/"
        f"{_setting(records, 'test_samples')}; {len(records)} runs.",
        "",
        "| dataset | precision | schedule | trials | test best (%) | test mean ± σ (%) | val best (%) | val mean ± σ (%) | epochs run (min–max) | best epoch (mean) | early stops |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['precision']} | {r['schedule']} | {r['trials']} | {_fmt(r['test_best'])} | "
            f"{_fmt(r['test_mean'])} ± {_fmt(r['test_std'])} | {_fmt(r['val_best'])} | "
            f"{_fmt(r['val_mean'])} ± {_fmt(r['val_std'])} | {_fmt(r['epochs_run_mean'], 1)} "
            f"({r['epochs_run_min']}–{r['epochs_run_max']}) | {_fmt(r['best_epoch_mean'], 1)} | "
            f"{r['stopped_early']}/{r['trials']} |"
        )
    lines += [
        "",
        "Test accuracy of each run's best-validation checkpoint (best.pt); best, mean and sample standard",
        "deviation (n − 1) over the trials (seeds). Early stopping and model selection use the validation",
        'split only. "epochs run" is where training ended: an early stop, or the epoch limit.',
        "",
    ]
    return "\n".join(lines)


def table_csv(records: list[dict[str, Any]]) -> str:
    rows = summarize(records)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow(
            {
                k: ("" if isinstance(v, float) and math.isnan(v) else repr(v) if isinstance(v, float) else v)
                for k, v in r.items()
            }
        )
    return buf.getvalue()


def moving_average(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over the last ``window`` values (fewer at the start), same length as ``x``."""
    x = np.asarray(x, dtype=np.float64)
    if window <= 1 or len(x) == 0:
        return x
    c = np.cumsum(np.insert(x, 0, 0.0))
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(0, idx - window)
    return (c[idx] - c[lo]) / (idx - lo)


def _figure_axes(n: int, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4), squeeze=False)
    fig.suptitle(title)
    return plt, fig, axes[0]


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, metadata={"Software": None})
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def _panels(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, list[dict[str, Any]]]]:
    panels: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = {}
    for (dataset, precision, schedule), recs in _groups(records).items():
        panels.setdefault((dataset, precision), {})[schedule] = recs
    return panels


def plot_lr(records: list[dict[str, Any]], path: Path) -> Path:
    """Fig. 2-style: LR per iteration of each schedule (the lowest seed's run), one panel per precision."""
    panels = _panels(records)
    plt, fig, axes = _figure_axes(len(panels), "Learning-rate schedules (Fig. 2)")
    for ax, ((dataset, precision), by_schedule) in zip(axes, panels.items()):
        for schedule, recs in by_schedule.items():
            it = recs[0]["iters"]
            ax.plot(
                [r["iteration"] for r in it],
                [r["lr"] for r in it],
                color=f"C{_order(precision, schedule)[1]}",
                label=f"{schedule} (seed {recs[0]['metrics']['seed']})",
                **_STYLE.get(schedule, {}),
            )
        ax.set_title(f"{dataset} {precision}")
        ax.set_xlabel("iteration (minibatch)")
        ax.set_ylabel("learning rate")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(plt, fig, path)


def plot_loss(records: list[dict[str, Any]], path: Path, window: int | None = None) -> Path:
    """Fig. 3-style: moving average of the training loss per schedule (mean over trials; band min..max)."""
    panels = _panels(records)
    plt, fig, axes = _figure_axes(len(panels), "Training loss, moving average (Fig. 3)")
    for ax, ((dataset, precision), by_schedule) in zip(axes, panels.items()):
        longest = max(len(r["iters"]) for recs in by_schedule.values() for r in recs)
        w = window or max(1, longest // 25)
        for schedule, recs in by_schedule.items():
            curves = [moving_average([r["loss"] for r in rec["iters"]], w) for rec in recs]
            n = max(len(c) for c in curves)
            stack = np.full((len(curves), n), np.nan)
            for j, c in enumerate(curves):
                stack[j, : len(c)] = c
            x = np.arange(n)
            color = f"C{_order(precision, schedule)[1]}"
            ax.plot(
                x,
                np.nanmean(stack, axis=0),
                color=color,
                label=f"{schedule} ({len(recs)} trials)",
                **_STYLE.get(schedule, {}),
            )
            if len(recs) > 1:
                ax.fill_between(x, np.nanmin(stack, axis=0), np.nanmax(stack, axis=0), color=color, alpha=0.15, lw=0)
        ax.set_title(f"{dataset} {precision} (window {w})")
        ax.set_xlabel("iteration (minibatch)")
        ax.set_ylabel("MSE spike-count loss")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(plt, fig, path)


def write_report(out: str | Path, window: int | None = None) -> dict[str, Any]:
    """Write table2.md/.csv and the two figures into ``out`` from its run directories; return paths and the table."""
    out = Path(out)
    records = collect(out)
    markdown = table_markdown(records)
    atomic_write_text(out / TABLE_MD, markdown)
    atomic_write_text(out / TABLE_CSV, table_csv(records))
    plot_lr(records, out / FIG_LR)
    plot_loss(records, out / FIG_LOSS, window)
    return {
        "table_md": out / TABLE_MD,
        "table_csv": out / TABLE_CSV,
        "fig_lr": out / FIG_LR,
        "fig_loss": out / FIG_LOSS,
        "markdown": markdown,
        "runs": len(records),
    }


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"K/N"`` → (K, N): this process trains runs K, K+N, K+2N, ... of the plan."""
    if not text:
        return 0, 1
    try:
        k, n = (int(s) for s in text.split("/"))
    except ValueError:
        raise QsnnError(f"--shard {text!r}: expected K/N, e.g. 0/4 for the first of four processes") from None
    if not (n >= 1 and 0 <= k < n):
        raise QsnnError(f"--shard {text!r}: need 0 <= K < N")
    return k, n


__all__ = [
    "SCHEDULES",
    "StudyRun",
    "plan",
    "run_status",
    "run_study",
    "collect",
    "summarize",
    "table_markdown",
    "table_csv",
    "plot_lr",
    "plot_loss",
    "write_report",
    "parse_list",
    "parse_shard",
]
