"""Where a batch's time goes: the engine's compiled kernels and onnxruntime products against the rest.

``python bench/kernel_share.py --checkpoint runs/demo/best.pt`` times, per network (the main one and
``--specs``, each trained one short epoch as in ``bench/inference.py``), a batch of mnist5k test images
on one and on two threads, and inside the one-thread call the time spent in the compiled kernels of
:mod:`qsnn.sim.kernels_numba` and in :class:`qsnn.kernels.OrtIntMatmul` (each wrapped in a timer). From
it, the samples/s per multiply-accumulate against the main network's (``bench/inference.py``'s per-MAC
figure) and what it would be if nothing outside the kernels cost anything: the bound the kernels set,
whatever the orchestration in Python does (docs/benchmarks.md, issue 31's fifth round).

Each timed call follows 30 ms of untimed calls of the same network (an idle core of these machines runs
slower for a while); the networks alternate call by call; medians of ``--repeats`` calls; the load average
is printed before and after.
"""

from __future__ import annotations

import functools
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import click  # noqa: E402
import inference as bench  # noqa: E402  (build, engine_macs, the default specs: one place for each)

from qsnn import kernels as qk  # noqa: E402
from qsnn.data import load_split  # noqa: E402
from qsnn.sim import kernels_numba as kn  # noqa: E402
from qsnn.sim.engine import simulate  # noqa: E402

KERNELS = ("table_lookup", "im2col", "box_im2col", "synops", "int16_matmul")


def instrument(spent: dict[str, float], on: list[bool]) -> None:
    """Wrap the compiled kernels, the LIF and layer kernels they build and onnxruntime's product in timers adding
    to ``spent`` while ``on[0]``."""

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            if on[0]:
                spent[name] += time.perf_counter() - t0
            return out

        return wrapper

    qk.OrtIntMatmul.__call__ = timed("onnxruntime", qk.OrtIntMatmul.__call__)
    for name in KERNELS:
        setattr(kn, name, timed(name, getattr(kn, name)))
    lif_kernel, layer_kernel = kn.lif_kernel, kn.layer_kernel
    kn.lif_kernel = lambda *args: timed("lif", lif_kernel(*args))
    kn.layer_kernel = lambda *args: timed("layer", layer_kernel(*args))


def measure(nets: list, x, repeats: int, spent: dict[str, float], on: list[bool]) -> list[dict]:
    """Per network, the median seconds of a call on one and on two threads, and of the kernels inside the
    one-thread call; the networks and thread counts alternate call by call (a repetition times each once),
    so a machine whose speed drifts over minutes moves every figure alike."""
    calls: list[dict] = [{1: [], 2: [], "kernels": []} for _ in nets]
    for _ in range(repeats):
        for net, got in zip(nets, calls):
            for threads in (1, 2):
                t0 = time.perf_counter()
                while time.perf_counter() - t0 < 0.03:
                    simulate(net, x, batch_size=len(x), threads=threads, accel=True)
                spent.clear()
                on[0] = threads == 1
                t0 = time.perf_counter()
                simulate(net, x, batch_size=len(x), threads=threads, accel=True)
                got[threads].append(time.perf_counter() - t0)
                on[0] = False
                if threads == 1:
                    got["kernels"].append(sum(spent.values()))
    return [{key: statistics.median(values) for key, values in got.items()} for got in calls]


@click.command(help=__doc__.splitlines()[0])
@click.option("--checkpoint", help="The main network [default: trained one short epoch here].")
@click.option(
    "--specs", default=",".join(bench.DEFAULT_SPECS), show_default=True, help="Further networks (spec strings)."
)
@click.option("--batch", default=64, show_default=True, type=click.IntRange(min=1))
@click.option("--repeats", default=40, show_default=True, type=click.IntRange(min=1))
@click.option("--steps", default=25, show_default=True, type=click.IntRange(min=1), help="Time steps T.")
def main(checkpoint: str | None, specs: str, batch: int, repeats: int, steps: int) -> None:
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    spent: dict[str, float] = defaultdict(float)
    on = [False]
    instrument(spent, on)
    x = load_split("mnist5k", "test", seed=0).x[:batch]
    built = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, spec in enumerate([None, *[s for s in specs.split(",") if s]]):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            ckpt = checkpoint if spec is None else None
            _, net, _, what = bench.build(steps, "fpga", folder, ckpt, arch=spec or "")
            built.append((spec or what, bench.engine_macs(net)[0], net))
    times = measure([net for _, _, net in built], x, repeats, spent, on)
    rows = [(name, macs, t) for (name, macs, _), t in zip(built, times)]
    main_rate = rows[0][1] / rows[0][2][2]  # MACs per second of the main network on two threads
    print(f"batch {batch}, T = {steps}; per MAC = samples/s x MACs against the main network on two threads")
    for name, macs, t in rows:
        per_mac = macs / t[2] / main_rate
        alone = macs / t["kernels"] / main_rate
        print(
            f"{name}: {macs / 1e6:.2f} M MACs; 1 thread {t[1] * 1e3:.2f} ms, 2 threads {t[2] * 1e3:.2f} ms; "
            f"kernels {t['kernels'] * 1e3:.2f} ms = {100 * t['kernels'] / t[1]:.0f} % of the 1-thread call; "
            f"per MAC {per_mac:.2f}x, kernels alone {alone:.2f}x (1 thread) / {2 * alone:.2f}x (2 ideal threads)"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
