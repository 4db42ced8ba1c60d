"""Inference throughput: the integer engine against snnTorch + Brevitas eager inference, same run.

``python bench/inference.py`` (part of ``make bench``) trains the mnist5k int4 QSNN for one short epoch (or takes
``--checkpoint``), exports it to QONNX and compiles it under a profile, then times on the same
mnist5k test images, T and batch:

* ``engine``: :func:`qsnn.sim.simulate` on the uint8 images (integer arithmetic, NumPy);
* ``eager``: :meth:`QSNN.forward_plain` in eval mode under ``torch.no_grad()``, the paper's loop
  (Brevitas layers re-quantizing their weights at every step, snnTorch ``Leaky`` neurons).

The two alternate (A B A B ...) so that drift of a shared machine hits both alike; the table
shows the median samples/s of each and their ratio. It also checks, in the same run, that the
engine is bit-exact: its spike trains against :func:`qsnn.export.integer_torch.run_integer_torch`.

This module imports torch (for the baseline); the engine it measures does not.
"""

from __future__ import annotations

import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import click
import numpy as np

from qsnn.cli import print_table
from qsnn.data import INPUT_SCALE, load_split
from qsnn.files import write_json
from qsnn.profiles import PROFILES, get_profile

from qsnn.sim import simulate


def build(num_steps: int, profile_name: str, workdir: Path, checkpoint: str | None = None,
          train_samples: int = 512, seed: int = 0):
    """(QSNN model in eval mode, its IntegerNetwork under the profile, description).

    The model is ``checkpoint`` if given, else trained here for one short epoch on
    ``train_samples`` mnist5k images (an untrained network hardly spikes, which would make the
    comparison meaningless). The network is compiled from the model's float QONNX export.
    """
    import torch

    from qsnn.config import TrainConfig
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.qonnx_float import export_float
    from qsnn.train.checkpoint import model_from_checkpoint
    from qsnn.train.loop import train

    if checkpoint is None:
        torch.manual_seed(seed)
        cfg = TrainConfig.from_preset("mnist5k", "int4", num_steps=num_steps, epochs=1, subset=train_samples,
                                      val_subset=100, batch_size=64, seed=seed)
        metrics = train(cfg, workdir / "run", progress=False, log=lambda _msg: None, evaluate_test=False)
        checkpoint = str(workdir / "run" / "best.pt")
        what = f"mnist5k int4 QSNN trained 1 epoch on {train_samples} images (val {metrics.get('best_val_acc', float('nan')):.1f} %)"
    else:
        what = f"checkpoint {checkpoint}"
    model = model_from_checkpoint(checkpoint)
    if model.cfg.num_steps != num_steps:
        model.cfg = model.cfg.replace(num_steps=num_steps)
    onnx_path = export_float(checkpoint, workdir / "bench.onnx")
    net, _ = compile_qonnx(onnx_path, get_profile(profile_name), allow_saturation=True)
    if net.num_steps != num_steps:
        net = dataclasses.replace(net, num_steps=num_steps)
    return model.eval(), net, what


@click.command()
@click.option("--steps", "num_steps", default=25, show_default=True, help="Time steps T.")
@click.option("--batch-size", default=64, show_default=True, help="Samples per inference call (both sides).")
@click.option("--repeats", default=5, show_default=True, help="Timed calls per side (after one warm-up each).")
@click.option("--profile", "profile_name", type=click.Choice(sorted(PROFILES)), default="fpga", show_default=True)
@click.option("--checkpoint", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Use this trained checkpoint (e.g. runs/demo/best.pt) instead of a quick 1-epoch training.")
@click.option("--train-samples", default=512, show_default=True, help="Images of the quick training.")
@click.option("--threads", default=2, show_default=True, help="torch threads (NumPy's BLAS uses its own default).")
@click.option("--out", default="runs/bench/sim.json", show_default=True, help="JSON file for the figures.")
def main(num_steps: int, batch_size: int, repeats: int, profile_name: str, checkpoint: str | None,
         train_samples: int, threads: int, out: str) -> None:
    """Inference samples/s: integer engine vs the snnTorch + Brevitas eager loop."""
    import torch

    from qsnn.export.integer_torch import run_integer_torch

    torch.set_num_threads(threads)
    split = load_split("mnist5k", "test", seed=0)
    x = split.x[:batch_size]
    xt = torch.from_numpy(x.astype(np.float32) * np.float32(INPUT_SCALE["static"]))
    with tempfile.TemporaryDirectory() as tmp:
        model, net, what = build(num_steps, profile_name, Path(tmp), checkpoint, train_samples)

    def eager() -> np.ndarray:
        with torch.no_grad():
            return model.forward_plain(xt).spikes.sum(0).numpy()

    def engine() -> np.ndarray:
        return simulate(net, x, batch_size=batch_size).counts

    runs = {"engine": engine, "eager": eager}
    for fn in runs.values():   # warm-up
        fn()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    rate = {name: len(x) / statistics.median(ts) for name, ts in times.items()}
    ratio = rate["engine"] / rate["eager"]

    # bit-exactness in the same run: every spike train of the engine vs the PyTorch integer mode
    res = simulate(net, x, batch_size=batch_size, record=True)
    ref = run_integer_torch(net, x, batch_size=batch_size)
    exact = {key: bool(np.array_equal(res.spikes[key], np.asarray(ref[key]))) for key in res.spikes}
    with torch.no_grad():
        eager_pred = model.forward_plain(xt).spikes.sum(0).argmax(1).numpy()
    agree = float(np.mean(eager_pred == res.predictions))

    figures = {
        "network": what, "num_steps": num_steps, "batch_size": len(x), "repeats": repeats, "profile": profile_name,
        "torch_threads": threads, "cpu_count": os.cpu_count(),
        "engine_samples_per_s": rate["engine"], "eager_samples_per_s": rate["eager"], "ratio": ratio,
        "engine_seconds": times["engine"], "eager_seconds": times["eager"],
        "bit_exact_vs_integer_torch": exact, "predictions_equal_eager_vs_engine": agree,
        "firing_rates": {s.name: float(s.spikes_per_step.sum() / (len(x) * num_steps * s.neurons)) for s in res.layers},
    }
    print_table([
        ("network", f"{what}; T={num_steps}, batch {len(x)}, profile {profile_name}"),
        ("firing rates", ", ".join(f"{k} {100 * v:.1f} %" for k, v in figures["firing_rates"].items())),
        ("engine (NumPy, integer)", f"{rate['engine']:.1f} samples/s  (median of {repeats})"),
        ("eager (snnTorch + Brevitas)", f"{rate['eager']:.1f} samples/s  (median of {repeats})"),
        ("ratio engine / eager", f"{ratio:.2f}x  (goal >= 3x)"),
        ("bit-exact vs integer torch", ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in exact.items())),
        ("predictions equal eager / engine", f"{100 * agree:.2f} %"),
    ], title="qsnn-sim bench: inference throughput")
    write_json(out, figures)
    click.echo(f"figures: {out}")
    if not all(exact.values()):
        raise SystemExit("the engine is NOT bit-exact against the PyTorch integer evaluation")


if __name__ == "__main__":  # pragma: no cover
    main()
