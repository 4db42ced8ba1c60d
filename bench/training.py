"""Training throughput: the fast path against the paper's eager loop, measured in the same run.

``python bench/training.py`` (part of ``make bench``) trains the same mnist5k int4 network (same T, same batch, same
preset) with both forward paths, alternating minibatches A B A B ... so that drift of a shared
machine hits both alike, and prints the median training samples/s of each and their ratio. The
baseline is written the way the paper's published code trains: Brevitas layers called at every
time step (weights re-quantized each step) and snnTorch ``Leaky`` neurons in a Python loop.
A third path, the fast path with the LIF scan as the step-by-step autograd graph
(``qsnn.train.lif.FUSED = False``), shows what the fused :class:`~qsnn.train.lif.LIFScan` adds.
It also checks, on that run's data, that the paths give the same loss. OpenMP pools do not spin
between measurements (``OMP_WAIT_POLICY=PASSIVE``, set before torch loads).
"""

from __future__ import annotations

import os

for _key, _value in (("OMP_WAIT_POLICY", "PASSIVE"), ("GOMP_SPINCOUNT", "0"), ("KMP_BLOCKTIME", "0")):
    os.environ.setdefault(_key, _value)

import statistics  # noqa: E402
import time  # noqa: E402

import click  # noqa: E402
import torch  # noqa: E402

from qsnn.cli import print_table  # noqa: E402
from qsnn.config import TrainConfig  # noqa: E402
from qsnn.data import load_split  # noqa: E402
from qsnn.jsonio import write_json  # noqa: E402
from qsnn.train import lif  # noqa: E402
from qsnn.train import model as model_module  # noqa: E402
from qsnn.train.alloc import keep_freed_memory  # noqa: E402
from qsnn.train.data import Batches  # noqa: E402
from qsnn.train.distributed import cuda_numerics, resolve_device  # noqa: E402
from qsnn.train.loss import mse_count_loss  # noqa: E402
from qsnn.train.model import QSNN  # noqa: E402


def _sync(dev: torch.device) -> None:
    """Wait for the device's queued kernels, so that a timer measures them (CUDA runs asynchronously)."""
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _train_step(model: QSNN, forward, optimizer, x, y, cfg: TrainConfig) -> float:
    out = forward(x)
    loss = mse_count_loss(out.spikes, y, cfg.correct_rate, cfg.incorrect_rate)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    model.clip_weights(1.0)
    return float(loss.detach())


@click.command()
@click.option("--steps", "num_steps", default=25, show_default=True, help="Time steps T.")
@click.option("--batch-size", default=128, show_default=True, help="Minibatch size.")
@click.option("--repeats", default=7, show_default=True, help="Timed minibatches per path (after one warm-up each).")
@click.option("--quant-scale", type=click.Choice(["float", "po2"]), default="float", show_default=True)
@click.option("--arch", default=None, help="Network spec (qsnn/arch.py); default: the preset's (Table II).")
@click.option("--device", default="cpu", show_default=True, help="torch device: cpu, cuda, cuda:1.")
@click.option(
    "--channels-last/--contiguous",
    default=None,
    help="Lay the fast path's conv spikes out channels-last (default: on the CPU only, train/model.py).",
)
@click.option("--out", default="runs/bench/train.json", show_default=True, help="JSON file for the figures.")
def main(num_steps, batch_size, repeats, quant_scale, arch, device, channels_last, out) -> None:
    """Training samples/s: fast path vs the paper's snnTorch + Brevitas eager loop."""
    keep_freed_memory()  # as qsnn-train does (train/alloc.py); the same for every path
    dev = resolve_device(device)
    if channels_last is not None:
        others = tuple(d for d in model_module.CHANNELS_LAST_DEVICES if d != dev.type)
        model_module.CHANNELS_LAST_DEVICES = others + ((dev.type,) if channels_last else ())
    layout = "channels-last" if dev.type in model_module.CHANNELS_LAST_DEVICES else "contiguous"
    cuda_mode = cuda_numerics(dev)  # as qsnn-train sets it (QSNN_CUDA_MODE)
    torch.manual_seed(0)
    cfg = TrainConfig.from_preset(
        "mnist5k",
        "int4",
        num_steps=num_steps,
        batch_size=batch_size,
        quant_scale=quant_scale,
        **({"arch": arch} if arch else {}),
    )
    split = load_split("mnist5k", "train", seed=0)
    batches = list(
        Batches(split, batch_size, shuffle=True, generator=torch.Generator().manual_seed(0), drop_last=True, device=dev)
    )
    models = {}
    for name in ("fast", "fast, step-by-step LIF", "plain"):  # identical initial weights, separate optimisers
        torch.manual_seed(0)
        model = QSNN(cfg, split.input_shape, len(split.classes)).to(dev).train()
        models[name] = (
            model,
            model.forward_plain if name == "plain" else model.forward_fast,
            torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.betas),
        )
    times: dict[str, list[float]] = {name: [] for name in models}
    losses: dict[str, list[float]] = {name: [] for name in models}
    for i in range(repeats + 1):
        x, y = batches[i % len(batches)]
        for name, (model, forward, opt) in models.items():
            torch.manual_seed(1000 + i)  # same dropout masks for every path
            lif.FUSED = name != "fast, step-by-step LIF"
            _sync(dev)
            t0 = time.perf_counter()
            loss = _train_step(model, forward, opt, x, y, cfg)
            _sync(dev)
            elapsed = time.perf_counter() - t0
            lif.FUSED = True
            if i:  # the first minibatch warms up allocators and caches
                times[name].append(elapsed)
                losses[name].append(loss)
    sps = {k: batch_size / statistics.median(v) for k, v in times.items()}
    ratios = [p / f for f, p in zip(times["fast"], times["plain"])]
    fused = [s / f for f, s in zip(times["fast"], times["fast, step-by-step LIF"])]
    first_equal = losses["fast"][0] == losses["plain"][0] == losses["fast, step-by-step LIF"][0]
    result = {
        "arch": cfg.arch,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else str(dev),
        "cuda_mode": cuda_mode,
        "fast_path_layout": layout,
        "T": num_steps,
        "batch_size": batch_size,
        "quant_scale": quant_scale,
        "repeats": repeats,
        "threads": torch.get_num_threads(),
        "samples_per_s": sps,
        "speedup_median": statistics.median(ratios),
        "speedup_min": min(ratios),
        "speedup_max": max(ratios),
        "fused_lif_speedup_median": statistics.median(fused),
        "fused_lif_speedup_min": min(fused),
        "fused_lif_speedup_max": max(fused),
        "losses": losses,
        "load_avg": os.getloadavg(),
        "malloc_tuned": keep_freed_memory(),
        "first_step_loss_equal": first_equal,
    }
    write_json(out, result)
    print_table(
        [
            (
                "network / T / batch",
                f"mnist {cfg.arch} int4 ({quant_scale} scale) / {num_steps} / {batch_size}",
            ),
            ("device", result["device"] + (f" (QSNN_CUDA_MODE {cuda_mode})" if cuda_mode else "")),
            ("fast path's conv spikes", layout),
            ("baseline (snnTorch + Brevitas eager loop)", f"{sps['plain']:8.1f} samples/s (median of {repeats})"),
            ("qsnn fast path", f"{sps['fast']:8.1f} samples/s (median of {repeats})"),
            (
                "fast path with the step-by-step LIF graph",
                f"{sps['fast, step-by-step LIF']:8.1f} samples/s (median of {repeats})",
            ),
            (
                "speed-up, median [min, max] of pairs",
                f"{result['speedup_median']:.2f}x [{result['speedup_min']:.2f}, {result['speedup_max']:.2f}]",
            ),
            (
                "fused LIF vs step-by-step, same",
                f"{result['fused_lif_speedup_median']:.2f}x [{result['fused_lif_speedup_min']:.2f}, {result['fused_lif_speedup_max']:.2f}]",
            ),
            ("load average (1, 5, 15 min)", ", ".join(f"{v:.2f}" for v in result["load_avg"])),
            ("glibc malloc thresholds (train/alloc.py)", "raised" if result["malloc_tuned"] else "default"),
            (
                "same loss on the first timed step (all three)",
                "yes" if first_equal else f"no ({losses['fast'][0]!r} vs {losses['plain'][0]!r})",
            ),
            ("written", out),
        ],
        title="training throughput",
    )


if __name__ == "__main__":
    main()
