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

Every file is written atomically. ``resume=True`` continues from ``last.pt`` with the optimizer,
schedule and every random generator restored, so the result equals an uninterrupted run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from qsnn.atomic import atomic_write_bytes, atomic_write_text
from qsnn.config import TrainConfig
from qsnn.data import ArraySplit, load_split
from qsnn.errors import QsnnError

from .checkpoint import load_checkpoint, save_checkpoint
from .data import Batches
from .loss import mse_count_loss, predict
from .model import QSNN
from .schedules import Schedule

EVAL_BATCH = 256


def resolve_device(device: str | None = None) -> torch.device:
    """The requested device, else CUDA when present, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator that shuffles the training set."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def load_splits(cfg: TrainConfig, data_dir=None) -> dict[str, ArraySplit]:
    """Train, validation and test splits for ``cfg`` (subsets drawn with the run's seed)."""
    sizes = {"train": cfg.subset, "val": cfg.val_subset, "test": cfg.test_subset}
    return {split: load_split(cfg.dataset, split, data_dir, seed=cfg.seed, num_steps=cfg.num_steps, subset=n)
            for split, n in sizes.items()}


@torch.no_grad()
def evaluate(model: QSNN, split: ArraySplit, device: torch.device) -> float:
    """Accuracy (%) of ``model`` on ``split``: argmax of output spike counts."""
    model.eval()
    correct = 0
    for x, y in Batches(split, EVAL_BATCH, shuffle=False, device=device):
        correct += int((predict(model(x).spikes) == y).sum())
    return 100.0 * correct / max(1, len(split.y))


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "generator": generator.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])],
            "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()]}


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
    ax_loss.plot(it[window - 1:], smooth, color="C0", label=f"loss (moving avg, {window})")
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


def train(cfg: TrainConfig, run_dir: str | Path, *, data_dir=None, resume: bool = False,
          device: str | None = None, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train (or resume) one run in ``run_dir``; return the final metrics."""
    run_dir = Path(run_dir)
    last, best = run_dir / "last.pt", run_dir / "best.pt"
    ckpt = None
    if last.exists():
        if not resume:
            raise QsnnError(f"{run_dir} already holds a run (last.pt); pass --resume to continue it or choose another --out")
        ckpt = load_checkpoint(last)
        saved = ckpt["config_obj"]
        if saved != cfg:
            diff = {k: (v, getattr(cfg, k)) for k, v in saved.to_dict().items() if v != cfg.to_dict()[k]}
            log(f"resuming {run_dir} with its saved configuration (ignoring differing arguments: {sorted(diff)})")
        cfg = saved
    run_dir.mkdir(parents=True, exist_ok=True)
    dev = resolve_device(device)

    # -- data, model, optimiser -----------------------------------------------------------------
    generator = seed_everything(cfg.seed)
    splits = load_splits(cfg, data_dir)
    train_split = splits["train"]
    batches = Batches(train_split, cfg.batch_size, shuffle=True, generator=generator, device=dev)
    model = QSNN(cfg, train_split.input_shape, len(train_split.classes)).to(dev)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas)
    schedule = Schedule.from_config(cfg, len(batches))
    state = {"best_val": -1.0, "best_epoch": 0, "bad_epochs": 0, "stopped_early": False}
    history: list[dict[str, Any]] = []
    iters: list[dict[str, Any]] = []
    start_epoch = 0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        schedule.load_state_dict(ckpt["schedule"])
        _set_rng_state(ckpt["rng"], generator)
        state, history, iters = dict(ckpt["state"]), list(ckpt["history"]), list(ckpt["iters"])
        start_epoch = int(ckpt["epoch"])
        log(f"resumed {run_dir} after epoch {start_epoch} (LR {schedule.current:.3g}, best val {state['best_val']:.2f} %)")

    def payload(epoch: int) -> dict[str, Any]:
        return {"config": cfg.to_dict(), "input_shape": list(train_split.input_shape),
                "classes": list(train_split.classes), "encoding": train_split.encoding,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "rng": _rng_state(generator), "epoch": epoch,
                "state": dict(state), "history": history, "iters": iters,
                "metrics": {"best_val": state["best_val"], "best_epoch": state["best_epoch"]}}

    # -- epochs ----------------------------------------------------------------------------------
    done = state["stopped_early"] or start_epoch >= cfg.epochs
    for epoch in range(start_epoch + 1, cfg.epochs + 1) if not done else ():
        model.train()
        t0, loss_sum, correct, seen = time.perf_counter(), 0.0, 0, 0
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", disable=not progress, leave=False, unit="batch")
        for x, y in bar:
            lr = schedule.apply(optimizer)
            out = model(x)
            loss = mse_count_loss(out.spikes, y, cfg.correct_rate, cfg.incorrect_rate)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            if cfg.weight_clip:
                model.clip_weights(1.0)
            loss_value = float(loss.detach())
            iters.append({"iteration": schedule.t, "epoch": epoch, "loss": loss_value, "lr": lr})
            schedule.step()
            loss_sum += loss_value * len(y)
            correct += int((predict(out.spikes) == y).sum())
            seen += len(y)
            bar.set_postfix(loss=f"{loss_value:.4f}", lr=f"{lr:.2e}")
        train_time = time.perf_counter() - t0
        train_loss = loss_sum / seen
        if not math.isfinite(train_loss):
            raise QsnnError(f"training diverged at epoch {epoch} (loss {train_loss}); lower --lr or enable --grad-clip")
        schedule.end_epoch(train_loss)
        val_acc = evaluate(model, splits["val"], dev)
        history.append({"epoch": epoch, "train_loss": train_loss, "train_acc": 100.0 * correct / seen,
                        "val_acc": val_acc, "lr": lr, "time_s": train_time, "samples_per_s": seen / train_time})
        improved = val_acc > state["best_val"]
        if improved:
            state.update(best_val=val_acc, best_epoch=epoch, bad_epochs=0)
        else:
            state["bad_epochs"] += 1
        state["stopped_early"] = state["bad_epochs"] >= cfg.patience and epoch < cfg.epochs
        if improved:
            save_checkpoint(best, payload(epoch))
        save_checkpoint(last, payload(epoch))
        _write_csv(run_dir / "log.csv", history)
        atomic_write_text(run_dir / "log.json", json.dumps(history, indent=1))
        log(f"epoch {epoch:3d}  loss {train_loss:.4f}  train {history[-1]['train_acc']:6.2f} %  "
            f"val {val_acc:6.2f} %{' *' if improved else '  '}  lr {lr:.3g}  {seen / train_time:7.1f} samples/s")
        if state["stopped_early"]:
            log(f"early stop: validation accuracy has not improved for {cfg.patience} epochs (best {state['best_val']:.2f} % at epoch {state['best_epoch']})")
            break

    # -- the best checkpoint on the test split -----------------------------------------------------
    best_ckpt = load_checkpoint(best)
    model.load_state_dict(best_ckpt["model"])
    test_acc = evaluate(model, splits["test"], dev)
    metrics = {"dataset": cfg.dataset, "precision": cfg.precision, "schedule": cfg.schedule, "seed": cfg.seed,
               "best_epoch": state["best_epoch"], "best_val_acc": state["best_val"], "test_acc": test_acc,
               "epochs_run": len(history), "stopped_early": state["stopped_early"],
               "train_samples": len(train_split.y), "val_samples": len(splits["val"].y),
               "test_samples": len(splits["test"].y), "num_steps": cfg.num_steps, "device": str(dev),
               "samples_per_s_median": float(np.median([r["samples_per_s"] for r in history])) if history else None}
    best_ckpt.pop("config_obj")
    best_ckpt["metrics"] = metrics
    save_checkpoint(best, {k: v for k, v in best_ckpt.items() if k not in ("format", "format_version", "qsnn_version", "versions")})
    atomic_write_text(run_dir / "metrics.json", json.dumps(metrics, indent=1))
    _write_csv(run_dir / "iters.csv", iters)
    if history:
        plot_training(run_dir, iters, history)
    return metrics
