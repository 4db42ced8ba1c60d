"""The training loop, readable top to bottom (nanoGPT style).

``train(cfg, run_dir)`` trains the QSNN of ``cfg`` with Adam, the MSE spike-count loss (eq. 6) and
the chosen LR schedule (stepped every minibatch), optional gradient-norm clipping (1.0) and weight
clipping ([−1, 1]), and early stopping on *validation* accuracy (the test split is read once, at
the end, to report the best checkpoint's accuracy). The run directory holds::

    last.pt        full state after the latest epoch (resume from here)
    best.pt        the checkpoint with the best validation accuracy
    log.csv/.json  one row per epoch: train loss/acc, val acc, LR, time, samples/s
    iters.csv      one row per minibatch: iteration, loss, LR (for loss/LR figures)
    metrics.json   final summary: best epoch, val and test accuracy of best.pt, early stop
    training.png   loss and LR per iteration, validation accuracy per epoch

Every file is written atomically, ``metrics.json`` last (its presence marks a finished run).
``resume=True`` continues from ``last.pt`` with the optimizer, schedule and every random generator
restored, so the result equals an uninterrupted run. Under ``torchrun`` (``WORLD_SIZE > 1``) the
same function trains with DistributedDataParallel and one-process semantics (global batch, averaged
gradients, all-reduced metrics, rank 0 the only writer): see :mod:`qsnn.train.distributed`.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from qsnn.atomic import atomic_write_bytes, atomic_write_text, remove_stale_temporaries
from qsnn.config import TrainConfig
from qsnn.data import ArraySplit, data_warnings, describe_files, load_split, resolve_data_dir
from qsnn.errors import QsnnError
from qsnn.locks import holding
from qsnn.output_guard import RUN_FILES

from .checkpoint import load_checkpoint, nonfinite_tensors, save_checkpoint
from .data import Batches
from .distributed import SINGLE, DistContext, rank_seed, shard_batch, shard_bounds, wrap_model
from .distributed import setup as setup_distributed
from .loss import mse_count_loss, predict
from .model import QSNN
from .schedules import Schedule

EVAL_BATCH = 256


#: The configuration fields ``--resume`` may change (everything else is the run's saved configuration).
RESUME_CHANGES = ("epochs", "patience")


class TrainingDiverged(QsnnError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator that shuffles the training set."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def load_splits(cfg: TrainConfig, data_dir=None) -> dict[str, ArraySplit]:
    """Train, validation and test splits for ``cfg`` (subsets drawn with the run's seed; a subset larger
    than its split is refused naming the option that asked for it)."""
    sizes = {"train": (cfg.subset, "--subset"), "val": (cfg.val_subset, "--val-subset")}
    sizes["test"] = (cfg.test_subset, "--test-subset")
    return {
        split: load_split(
            cfg.dataset,
            split,
            data_dir,
            seed=cfg.seed,
            num_steps=cfg.num_steps,
            subset=n,
            events=cfg.event_frames(),
            subset_option=option,
        )
        for split, (n, option) in sizes.items()
    }


@torch.no_grad()
def evaluate(
    model: QSNN,
    split: ArraySplit,
    device: torch.device,
    dist_ctx: DistContext = SINGLE,
    *,
    progress: bool = False,
    desc: str = "evaluating",
    stats: dict[str, float] | None = None,
) -> float:
    """Accuracy (%) of ``model`` on ``split``: argmax of output spike counts (summed over a recording's
    windows when the split groups its samples, see :meth:`ArraySplit.accuracy`).

    ``progress`` shows a bar per batch; ``stats``, when given, receives ``output_spikes`` (this rank's
    total output spike count: 0 means the output layer never fired).

    Under data parallelism each rank evaluates its slice of every batch and the results are summed
    over the ranks, so every rank returns the accuracy on the whole split.
    """
    model.eval()
    grouped = split.group is not None
    correct = 0
    counts = np.zeros((len(split.y), len(split.classes)), dtype=np.float64) if grouped else None
    offset = 0
    output_spikes = 0.0
    for x, y in tqdm(
        Batches(split, EVAL_BATCH, shuffle=False, device=device),
        desc=desc,
        disable=not progress,
        leave=False,
        unit="batch",
    ):
        n_batch = len(y)
        start, stop = 0, n_batch
        if dist_ctx.enabled:
            start, stop = shard_bounds(len(y), dist_ctx.rank, dist_ctx.world_size)
            x, y = x[start:stop], y[start:stop]
        if len(y):
            spikes = model(x).spikes
            output_spikes += float(spikes.sum())
            if grouped:
                counts[offset + start : offset + stop] = spikes.sum(0).cpu().numpy()
            else:
                correct += int((predict(spikes) == y).sum())
        offset += n_batch
    if stats is not None:
        stats["output_spikes"] = output_spikes
    if grouped:
        if dist_ctx.enabled:
            counts = np.asarray(dist_ctx.all_reduce_sum(counts.ravel().tolist(), device)).reshape(counts.shape)
        return 100.0 * split.accuracy(counts)
    if dist_ctx.enabled:
        correct = int(round(dist_ctx.all_reduce_sum([correct], device)[0]))
    return 100.0 * correct / max(1, len(split.y))


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "generator": generator.get_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }


def _set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["generator"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    if not rows:
        return
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def plot_training(run_dir: Path, iters: list[dict[str, Any]], history: list[dict[str, Any]]) -> Path:
    """Loss and LR per iteration, validation accuracy per epoch → ``training.png``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
    it = [r["iteration"] for r in iters]
    loss = np.array([r["loss"] for r in iters])
    window = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid") if len(loss) >= window else loss
    ax_loss.plot(it, loss, color="0.8", lw=0.6, label="loss")
    ax_loss.plot(it[window - 1 :], smooth, color="C0", label=f"loss (moving avg, {window})")
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("MSE spike-count loss")
    ax_lr = ax_loss.twinx()
    ax_lr.plot(it, [r["lr"] for r in iters], color="C3", lw=1, label="LR")
    ax_lr.set_ylabel("learning rate", color="C3")
    ax_loss.legend(loc="upper right")
    ax_acc.plot([r["epoch"] for r in history], [r["val_acc"] for r in history], "o-", label="validation")
    ax_acc.plot([r["epoch"] for r in history], [r["train_acc"] for r in history], "s--", label="train")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    out = run_dir / "training.png"
    atomic_write_bytes(out, buf.getvalue())
    return out


@dataclass
class Run:
    """Everything one training run holds between its steps (rank-local under torchrun)."""

    cfg: TrainConfig
    run_dir: Path
    ctx: DistContext
    dev: torch.device
    progress: bool
    log: Callable[[str], None]
    generator: torch.Generator
    splits: dict[str, ArraySplit]
    batches: Batches
    model: QSNN
    net: torch.nn.Module  # the model, wrapped in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    state: dict[str, Any]  # best_val, best_epoch, bad_epochs, stopped_early
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per epoch
    iters: list[dict[str, Any]] = field(default_factory=list)  # one row per minibatch
    start_epoch: int = 0
    data_warnings: list[str] = field(default_factory=list)  # qsnn.data.data_warnings of every split
    data_dir: str = ""  # the data directory the splits were read from ("": none given)
    #: the training loss of (cfg, output, x, y), None = eq. (6) (a fine-tuning's distillation: train/finetune.py)
    objective: Callable[[TrainConfig, Any, torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def last(self) -> Path:
        return self.run_dir / "last.pt"

    @property
    def best(self) -> Path:
        return self.run_dir / "best.pt"


@holding("run_dir", "the run directory")  # one process per run directory, for the whole run
def train(
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    data_dir=None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    evaluate_test: bool = True,
    extend: dict[str, Any] | None = None,
    build_model: Callable[..., QSNN] = QSNN,
    init_state: dict[str, Any] | None = None,
    objective: Callable[[TrainConfig, Any, torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, Any]:
    """Train (or resume) one run in ``run_dir``; return the final metrics.

    ``on_epoch(epoch, row)``, when given, is called after each epoch's checkpoint and log are
    written, with the epoch's log row (``train_loss``, ``train_acc``, ``val_acc``, ``lr``, ...); it
    may raise (e.g. ``optuna.TrialPruned``) to stop the run there, leaving a resumable run
    directory. ``evaluate_test=False`` never reads the test split (``test_acc`` is None), for
    hyperparameter searches that must not see it.

    ``resume=True`` needs ``run_dir/last.pt`` (a :class:`QsnnError` otherwise). The run continues with
    its saved configuration, except the fields in ``extend`` (``epochs``, ``patience``: the options
    given on the command line): a finished or stopped run then goes on to the new ``epochs``, and
    ends as a run started with them would have (same weights, optimizer, schedule, random streams).

    Started by ``torchrun`` with ``WORLD_SIZE > 1``, the same call trains data-parallel with the
    semantics of one process (see :mod:`qsnn.train.distributed`); ``on_epoch`` then runs on every
    rank with the same row, and only rank 0 writes to ``run_dir``.

    ``build_model(cfg, input_shape, num_classes)`` builds the network (a :class:`QSNN` or a subclass
    with the same parameters, e.g. the integer-exact model of :mod:`qsnn.train.finetune`); a new run
    starts from the weights ``init_state`` when given (a fine-tuning), else from the initialisation;
    such a run validates its starting weights first (epoch 0, :func:`validate_start`).
    ``objective(cfg, output, x, y)``, when given, is the training loss in place of eq. (6), with the
    run's configuration (the fine-tuning's distillation toward its float model).
    """
    run_dir = Path(run_dir)
    ctx, dev = setup_distributed(device)
    if not ctx.is_main:
        progress, log = False, (lambda _msg: None)
    ckpt, cfg, extending = read_resume_point(cfg, run_dir, ctx, resume, extend, log)
    run = setup_run(cfg, run_dir, ctx, dev, progress, log, data_dir, ckpt, extending, build_model, init_state)
    run.objective = objective
    if init_state is not None and ckpt is None:
        val = validate_start(run)
        log(f"epoch   0  val {val:6.2f} % (the weights the run starts from: best.pt until an epoch beats them)")
    del ckpt  # restored into the run; not kept through training

    done = run.state["stopped_early"] or run.start_epoch >= cfg.epochs
    for epoch in range(run.start_epoch + 1, cfg.epochs + 1) if not done else ():
        row = train_epoch(run, epoch)
        improved = validate_epoch(run, epoch, row)
        save_epoch(run, epoch, improved)
        log(
            f"epoch {epoch:3d}  loss {row['train_loss']:.4f}  train {run.history[-1]['train_acc']:6.2f} %  "
            f"val {row['val_acc']:6.2f} %{' *' if improved else '  '}  lr {row['lr']:.3g}  {row['samples_per_s']:7.1f} samples/s"
        )
        if on_epoch is not None:
            on_epoch(epoch, dict(run.history[-1]))
        if run.state["stopped_early"]:
            log(
                f"early stop: validation accuracy has not improved for {cfg.patience} epochs (best {run.state['best_val']:.2f} % at epoch {run.state['best_epoch']})"
            )
            break
    return finish(run, evaluate_test)


# --------------------------------------------------------------------------------------------------
# The steps of train(), in the order it calls them


def read_resume_point(
    cfg: TrainConfig,
    run_dir: Path,
    ctx: DistContext,
    resume: bool,
    extend: dict[str, Any] | None,
    log: Callable[[str], None],
) -> tuple[dict[str, Any] | None, TrainConfig, bool]:
    """The checkpoint to continue from (``last.pt``, or None for a new run), the configuration the run
    goes on with (the saved one, with ``extend``'s changes) and whether it is extended."""
    last = run_dir / "last.pt"

    def read_last():
        if not last.exists():
            if resume and not run_dir.is_dir():
                raise QsnnError(
                    f"{run_dir}: --resume continues a run, and there is no run directory here; "
                    "drop --resume to start a new run, or give the --out of an existing one"
                )
            if resume:
                log(f"{run_dir} holds no finished epoch yet (no last.pt): the run starts from the beginning")
            return None
        if not resume:
            raise QsnnError(
                f"{run_dir} already holds a run (last.pt); pass --resume to continue it or choose another --out"
            )
        return load_checkpoint(last)

    ckpt = ctx.run_on_main(read_last)  # rank 0 reads, every rank gets it
    extending = False
    if ckpt is not None:
        saved = ckpt["config_obj"]
        changes = {k: v for k, v in (extend or {}).items() if v is not None and getattr(saved, k) != v}
        unknown = set(changes) - set(RESUME_CHANGES)
        if unknown:
            raise QsnnError(f"resume can change only {', '.join(RESUME_CHANGES)}, not {sorted(unknown)}")
        done_epochs = int(ckpt["epoch"])
        if changes.get("epochs", done_epochs) < done_epochs:
            raise QsnnError(
                f"{run_dir} has already run {done_epochs} epochs; --epochs {changes['epochs']} would "
                f"shorten it: give --epochs of at least {done_epochs} (or start a new run)"
            )
        target = saved.replace(**changes)
        ignored = {k for k, v in saved.to_dict().items() if v != cfg.to_dict()[k] and k not in changes}
        if ignored:
            log(f"resuming {run_dir} with its saved configuration (ignoring differing arguments: {sorted(ignored)})")
        if changes:
            extending = True
            log(
                f"extending {run_dir}: "
                + ", ".join(f"{k} {getattr(saved, k)} -> {v}" for k, v in changes.items())
                + f" (continuing after epoch {done_epochs})"
            )
        cfg = target
    if ctx.is_main and run_dir.is_dir():
        removed = remove_stale_temporaries(run_dir, RUN_FILES)  # left by a process killed mid-write
        if removed:
            log(f"removed {len(removed)} temporary file(s) of an interrupted write from {run_dir}")
    return ckpt, cfg, extending


def setup_run(
    cfg: TrainConfig,
    run_dir: Path,
    ctx: DistContext,
    dev: torch.device,
    progress: bool,
    log: Callable[[str], None],
    data_dir,
    ckpt: dict[str, Any] | None,
    extending: bool,
    build_model: Callable[..., QSNN] = QSNN,
    init_state: dict[str, Any] | None = None,
) -> Run:
    """Data, model, optimiser and schedule, seeded; restored from ``ckpt`` (weights, optimizer,
    schedule, random generators, history) when the run continues."""
    generator = seed_everything(cfg.seed)
    splits = load_splits(cfg, data_dir)
    if ctx.is_main:  # only now: a start that fails on its data leaves no empty run directory behind
        run_dir.mkdir(parents=True, exist_ok=True)
        if extending and (run_dir / "metrics.json").exists():
            (run_dir / "metrics.json").unlink()  # the run is not finished any more (study: resume, not skip)
    warnings = [w for name, split in splits.items() for w in data_warnings(split, cfg.dataset, name)]
    for warning in warnings:
        log(f"warning: {warning}")
    train_split = splits["train"]
    batches = Batches(train_split, cfg.batch_size, shuffle=True, generator=generator, device=dev)
    model = build_model(cfg, train_split.input_shape, len(train_split.classes)).to(dev)
    if ckpt is None and init_state is not None:
        model.load_state_dict(init_state)
    if ctx.enabled:  # same initial weights on every rank; then each rank its own dropout stream
        torch.manual_seed(rank_seed(cfg.seed, ctx.rank))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    schedule = Schedule.from_config(cfg, len(batches))
    state = {"best_val": -1.0, "best_epoch": 0, "bad_epochs": 0, "stopped_early": False}
    run = Run(
        cfg, run_dir, ctx, dev, progress, log, generator, splits, batches, model, model, optimizer, schedule, state
    )
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        rng = ckpt["rng"]
        if ctx.enabled:
            per_rank = ckpt.get("rng_ranks")
            if per_rank is not None and len(per_rank) == ctx.world_size:
                rng = per_rank[ctx.rank]
            else:
                log(
                    f"note: {run.last} was written by {len(per_rank) if per_rank else 1} process(es); "
                    f"every rank restarts from rank 0's random state"
                )
        _set_rng_state(rng, generator)
        run.state, run.history, run.iters = dict(ckpt["state"]), list(ckpt["history"]), list(ckpt["iters"])
        run.start_epoch = start_epoch = int(ckpt["epoch"])
        if ctx.is_main:  # a process killed between last.pt and the logs left them an epoch short
            write_logs(run)
        state = run.state
        if extending:  # as a run started with the new epochs/patience would have decided at start_epoch
            state["stopped_early"] = state["bad_epochs"] >= cfg.patience and start_epoch < cfg.epochs
            if state["stopped_early"]:
                log(
                    f"{run_dir} stopped early at epoch {start_epoch} (no better validation accuracy for "
                    f"{state['bad_epochs']} epochs, patience {cfg.patience}): nothing to extend; raise --patience"
                )
        log(
            f"resumed {run_dir} after epoch {start_epoch} (LR {schedule.current:.3g}, best val {state['best_val']:.2f} %)"
        )
    run.data_warnings = warnings
    run.data_dir = str(resolve_data_dir(data_dir) or "")
    run.net = wrap_model(model, ctx, dev, log)  # DistributedDataParallel under torchrun, else the model
    return run


def validate_start(run: Run) -> float:
    """Epoch 0 of a run that starts from trained weights (a fine-tuning): their validation accuracy is
    the one to beat, and ``best.pt`` holds them until an epoch does (early stopping counts from here),
    so the run never ends worse on validation than it started. Returns that accuracy."""
    val = evaluate(run.model, run.splits["val"], run.dev, run.ctx, progress=run.progress, desc="epoch 0 validation")
    run.state.update(best_val=val, best_epoch=0, start_val=val)
    if run.ctx.is_main:
        save_checkpoint(run.best, checkpoint_payload(run, 0, None))
    return val


def train_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """One pass over the training set, the LR schedule stepped every minibatch; returns the epoch's
    ``train_loss``, ``correct``, ``seen``, ``lr`` (of its last minibatch) and ``time_s``.
    Raises :class:`TrainingDiverged` when the loss is not finite."""
    cfg, ctx, dev, model, optimizer, schedule = run.cfg, run.ctx, run.dev, run.model, run.optimizer, run.schedule
    net = run.net
    net.train()
    t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
    bar = tqdm(run.batches, desc=f"epoch {epoch}/{cfg.epochs}", disable=not run.progress, leave=False, unit="batch")
    for batch, (x, y) in enumerate(bar, start=1):
        lr = schedule.apply(optimizer)
        n_batch = len(y)  # the global batch
        if ctx.enabled:
            x, y, real = shard_batch(x, y, ctx)
        out = net(x)
        if run.objective is None:
            loss = mse_count_loss(out.spikes, y, cfg.correct_rate, cfg.incorrect_rate)
        else:
            loss = run.objective(cfg, out, x, y)
        # DDP averages gradients over ranks: weight each rank's mean by its share of the
        # global batch so the update is the gradient of the global-batch mean.
        objective = loss * (real * ctx.world_size / n_batch) if ctx.enabled else loss
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if cfg.weight_clip:
            model.clip_weights(1.0)
        if ctx.enabled:
            batch_correct = int((predict(out.spikes[:, :real]) == y[:real]).sum())
            loss_total, batch_correct = ctx.all_reduce_sum([float(loss.detach()) * real, batch_correct], dev)
            loss_value, batch_correct = loss_total / n_batch, int(round(batch_correct))
        else:
            loss_value = float(loss.detach())
            batch_correct = int((predict(out.spikes) == y).sum())
        _check_finite(run, epoch, batch, loss_value)
        run.iters.append({"iteration": schedule.t, "epoch": epoch, "loss": loss_value, "lr": lr})
        schedule.step()
        loss_sum += loss_value * n_batch
        correct += batch_correct
        seen += n_batch
        bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
    train_time = time.perf_counter() - t0
    train_loss = loss_sum / seen
    if not math.isfinite(train_loss):  # finite per batch, yet the sum overflowed
        raise TrainingDiverged(
            f"epoch {epoch}: the training loss summed over the epoch is {train_loss}; lower --lr or enable --grad-clip"
        )
    return {"train_loss": train_loss, "correct": correct, "seen": seen, "lr": lr, "time_s": train_time}


def _check_finite(run: Run, epoch: int, batch: int, loss_value: float) -> None:
    """Stop at the first minibatch whose loss or updated weights are NaN or infinite, naming which; the
    run directory keeps the last good epoch (``last.pt``, ``best.pt`` are written only after an epoch)."""
    tensors = [*run.model.named_parameters(), *run.model.named_buffers()]
    weights_ok = bool(torch.stack([torch.isfinite(t).all() for _, t in tensors if t.is_floating_point()]).all())
    if math.isfinite(loss_value) and weights_ok:
        return
    problems = [] if math.isfinite(loss_value) else [f"the loss is {'NaN' if math.isnan(loss_value) else loss_value}"]
    bad = [] if weights_ok else nonfinite_tensors(tensors, run.model.names)
    if bad:
        problems.append("non-finite " + ", ".join(bad))
    kept = f"{run.last} (epoch {epoch - 1}) is kept" if epoch > 1 else "no checkpoint was written"
    raise TrainingDiverged(
        f"training diverged at epoch {epoch}, batch {batch}: {'; '.join(problems)}; {kept}. "
        "Lower --lr, enable --grad-clip, or check the data"
    )


def validate_epoch(run: Run, epoch: int, row: dict[str, Any]) -> bool:
    """End the epoch: step the plateau schedule, measure validation accuracy, append the epoch's log
    row, and decide early stopping. Returns whether validation accuracy improved; adds ``val_acc``
    and ``samples_per_s`` to ``row``."""
    cfg, ctx, state = run.cfg, run.ctx, run.state
    train_loss, correct, seen, lr, train_time = (row[k] for k in ("train_loss", "correct", "seen", "lr", "time_s"))
    run.schedule.end_epoch(train_loss)
    ctx.broadcast_buffers(run.model)  # evaluate (and save) rank 0's BatchNorm statistics everywhere
    val_acc = evaluate(
        run.model, run.splits["val"], run.dev, ctx, progress=run.progress, desc=f"epoch {epoch} validation"
    )
    run.history.append(
        {
            "epoch": epoch,
            "train_loss": train_loss,
            "train_acc": 100.0 * correct / seen,
            "val_acc": val_acc,
            "lr": lr,
            "time_s": train_time,
            "samples_per_s": seen / train_time,
        }
    )
    row.update(val_acc=val_acc, samples_per_s=seen / train_time)
    improved = val_acc > state["best_val"]
    if improved:
        state.update(best_val=val_acc, best_epoch=epoch, bad_epochs=0)
    else:
        state["bad_epochs"] += 1
    state["stopped_early"] = state["bad_epochs"] >= cfg.patience and epoch < cfg.epochs
    return improved


def save_epoch(run: Run, epoch: int, improved: bool) -> None:
    """``last.pt`` (and ``best.pt`` when validation improved) and the epoch logs, written by rank 0."""
    ctx = run.ctx
    rng_ranks = ctx.gather_objects(_rng_state(run.generator)) if ctx.enabled else None
    if ctx.is_main:
        if improved:
            save_checkpoint(run.best, checkpoint_payload(run, epoch, rng_ranks))
        save_checkpoint(run.last, checkpoint_payload(run, epoch, rng_ranks))
        write_logs(run)


def write_logs(run: Run) -> None:
    """``log.csv`` and ``log.json``: one row per epoch of ``run.history``."""
    _write_csv(run.run_dir / "log.csv", run.history)
    atomic_write_text(run.run_dir / "log.json", json.dumps(run.history, indent=1))


def checkpoint_payload(run: Run, epoch: int, rng_ranks: list[Any] | None) -> dict[str, Any]:
    """What ``last.pt``/``best.pt`` hold after ``epoch``: enough to continue exactly (resume)."""
    train_split, state = run.splits["train"], run.state
    data = {
        "config": run.cfg.to_dict(),
        "input_shape": list(train_split.input_shape),
        "classes": list(train_split.classes),
        "encoding": train_split.encoding,
        "data_dir": run.data_dir,  # where the data was read: qsnn.data.load_for_model looks there later
        "model": run.model.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "schedule": run.schedule.state_dict(),
        "rng": _rng_state(run.generator),
        "epoch": epoch,
        "state": dict(state),
        "history": run.history,
        "iters": run.iters,
        "metrics": {"best_val": state["best_val"], "best_epoch": state["best_epoch"]},
    }
    if rng_ranks is not None:
        data.update(rng=rng_ranks[0], rng_ranks=rng_ranks, world_size=run.ctx.world_size)
    return data


def finish(run: Run, evaluate_test: bool) -> dict[str, Any]:
    """The best checkpoint on the test split; the summary (``metrics.json``, written last: its
    presence marks a finished run), ``iters.csv``, ``training.png`` and ``best.pt`` with the metrics."""
    cfg, ctx, dev, model, splits, state, history = (
        run.cfg,
        run.ctx,
        run.dev,
        run.model,
        run.splits,
        run.state,
        run.history,
    )
    best_ckpt = ctx.run_on_main(lambda: load_checkpoint(run.best))
    model.load_state_dict(best_ckpt["model"])
    test_stats: dict[str, float] = {}
    test_acc = (
        evaluate(model, splits["test"], dev, ctx, progress=run.progress, desc="test split", stats=test_stats)
        if evaluate_test
        else None
    )
    metrics = {
        "dataset": cfg.dataset,
        "precision": cfg.precision,
        "schedule": cfg.schedule,
        "seed": cfg.seed,
        "best_epoch": state["best_epoch"],
        "best_val_acc": state["best_val"],
        "start_val_acc": state.get("start_val"),  # a run from given weights (validate_start), else None
        "test_acc": test_acc,
        "epochs_run": len(history),
        "stopped_early": state["stopped_early"],
        "train_samples": len(splits["train"].y),
        "val_samples": len(splits["val"].y),
        "test_samples": splits["test"].num_recordings,
        "test_windows": len(splits["test"].y),
        "test_cut": cfg.test_cut if cfg.dataset == "dvs128" else None,
        "num_steps": cfg.num_steps,
        "device": str(dev),
        "world_size": ctx.world_size,
        "data_sources": {name: split.source for name, split in splits.items()},
        "data_files": describe_files([f for split in splits.values() for f in split.files or [split.source]]),
        "data_warnings": run.data_warnings,
        "test_output_spikes": test_stats.get("output_spikes"),
        "samples_per_s_median": float(np.median([r["samples_per_s"] for r in history])) if history else None,
        "config": cfg.to_dict(),
    }
    if ctx.is_main:
        # metrics.json last: its presence marks a finished run (qsnn-train study relies on it)
        _write_csv(run.run_dir / "iters.csv", run.iters)
        if history:
            plot_training(run.run_dir, run.iters, history)
        best_ckpt.pop("config_obj")
        best_ckpt["config"] = cfg.to_dict()  # an extended run's best.pt may date from before the extension
        best_ckpt["metrics"] = metrics
        save_checkpoint(
            run.best,
            {k: v for k, v in best_ckpt.items() if k not in ("format", "format_version", "qsnn_version", "versions")},
        )
        atomic_write_text(run.run_dir / "metrics.json", json.dumps(metrics, indent=1))
    return metrics
