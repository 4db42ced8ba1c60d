"""Inference throughput: the integer engine against its peers, interleaved in one run.

``python bench/inference.py`` (part of ``make bench``) trains the mnist5k int4 QSNN for one short
epoch (or takes ``--checkpoint``, e.g. ``runs/demo/best.pt``), exports it to QONNX, compiles it under
a profile and, on the same mnist5k test images, T and batch, times:

* ``engine``: :func:`qsnn.sim.simulate` (integer arithmetic; onnxruntime's uint8 × int8 kernel where
  proven exact, the current tail and LIF step in the compiled kernels of :mod:`qsnn.sim.kernels_numba`
  when numba is importable, batch split over the cores);
* ``engine, NumPy loops``: the same engine with the compiled kernels off (``accel=False``: the
  engine as it was before them), same threads: before/after in one run;
* ``engine numpy``: the same engine on its NumPy reference path (``kernel="numpy"``), one thread;
* ``float fast path``: qsnn's own float model, :meth:`QSNN.forward_fast` in eval mode under
  ``torch.no_grad()`` (one convolution per layer over all T);
* ``eager``: :meth:`QSNN.forward_plain`, the paper's loop (Brevitas layers re-quantizing their
  weights at every step, snnTorch ``Leaky`` neurons);
* ``float reference``: :class:`qsnn.export.float_eval.FloatEvaluator`, the trained model layer by
  layer with exact integer sums: what ``qsnn-sim`` runs for the float accuracy (``--float-engine
  layers``); the bench also checks its predictions against the float fast path;
* ``onnxruntime``: the float QONNX graph (after QuantToQCDQ) run step by step by onnxruntime
  (``qsnn-sim --float-engine graph``).

How it stays honest on a shared machine:

* every timed call is warm: right before it, the same peer runs untimed for 50 ms (:func:`warm`; an
  idle core of these machines runs slower for the next tens of milliseconds, so a cold call would
  time what the previous peer left idle); the peers alternate within each repetition, in a rotating
  order, and the ratios are taken per repetition (engine vs peer of the same repetition), then
  summarised as median and [min, max];
* thread pools do not spin into the next peer's measurement: ``OMP_WAIT_POLICY=PASSIVE``,
  ``GOMP_SPINCOUNT=0``, ``KMP_BLOCKTIME=0`` are set before torch/NumPy load, onnxruntime's sessions
  run with ``allow_spinning=0``, and the engine's NumPy path runs NumPy's BLAS on one thread (its
  OpenBLAS pool would otherwise spin into the next peer: it ignores ``OMP_WAIT_POLICY``);
* it prints the load average before and after, the BLAS and thread configuration and the CPU's
  integer dot-product extensions;
* a roofline line: the machine's GEMM rates measured here (float32 BLAS, onnxruntime's
  MatMulInteger, qsnn's own int16-accumulating vpmaddubsw kernel where the CPU has AVX2 and, if
  present, ``torch._int_mm``) times the engine's own multiply-accumulates per inference (pooling
  folded or summed first, the static first layer once) bound its samples/s; the goal's roofline is
  onnxruntime's on the engine's threads (the issue's), the int16 kernel's reported beside it;
* exactness is asserted in the same run: every spike train of the engine equals the PyTorch
  evaluation of the integer semantics (:func:`qsnn.export.integer_torch.run_integer_torch`) and the
  engine's NumPy path, with ``array_equal``; the bench fails otherwise.

Then, for each further spec (``--specs``: by default a dense-only MLP and a strided conv net, each
trained one short epoch here), the engine with and without its compiled kernels, interleaved with the
engine on the main network, and their samples/s per multiply-accumulate against the main network's from
those paired calls (median [min, max] over the repetitions: on a machine whose speed drifts over minutes,
rates measured minutes apart gave the strided net 0.39x-0.77x in three runs), bit-exact against each other
and the PyTorch integer evaluation. Last, the first call's cost of a fresh process (import, layers, the kernels' JIT: with an
empty numba cache and with the cache warm), against the NumPy loops and the default (``QSNN_SIM_ACCEL=auto``:
a batch-1 one-off stays in NumPy). The summary ends with the issue's goal figures (``GOAL`` rows), each marked met or not.

This module imports torch (for the peers); the engine it measures does not.
"""

from __future__ import annotations

import os

for _key, _value in (("OMP_WAIT_POLICY", "PASSIVE"), ("GOMP_SPINCOUNT", "0"), ("KMP_BLOCKTIME", "0")):
    os.environ.setdefault(_key, _value)

import dataclasses  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402
import numpy as np  # noqa: E402

from qsnn.cli import print_table  # noqa: E402
from qsnn.data import INPUT_SCALE, load_split, model_input  # noqa: E402
from qsnn.jsonio import write_json  # noqa: E402
from qsnn.profiles import PROFILES, get_profile  # noqa: E402
from qsnn.sim import engine as sim_engine  # noqa: E402
from qsnn.sim import layers as sim_layers  # noqa: E402
from qsnn.sim import simulate  # noqa: E402

#: The engine as timed here: its compiled kernels wherever numba is importable (``accel=True``; the
#: default ``QSNN_SIM_ACCEL=auto`` would leave a fresh process's small calls in NumPy's loops until a
#: large call loads the kernels, which the ``first call`` rows measure).
ACCEL = sim_layers.accel_wanted(True)


#: The further networks the bench times beside the main one (``--specs``): a dense-only MLP and a strided conv net.
DEFAULT_SPECS = ("D128-D10", "8C3s2p1-16C3s2p1-32C3s2p1-D10")


def build(
    num_steps: int,
    profile_name: str,
    workdir: Path,
    checkpoint: str | None = None,
    train_samples: int = 512,
    seed: int = 0,
    arch: str = "",
):
    """(QSNN model in eval mode, its IntegerNetwork under the profile, float QONNX path, description).

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
        cfg = TrainConfig.from_preset(
            "mnist5k",
            "int4",
            num_steps=num_steps,
            epochs=1,
            subset=train_samples,
            val_subset=100,
            batch_size=64,
            seed=seed,
            **({"arch": arch} if arch else {}),
        )
        metrics = train(cfg, workdir / "run", progress=False, log=lambda _msg: None, evaluate_test=False)
        checkpoint = str(workdir / "run" / "best.pt")
        what = f"trained 1 epoch on {train_samples} images (val {metrics.get('best_val_acc', float('nan')):.1f} %)"
    else:
        what = f"checkpoint {checkpoint}"
    model = model_from_checkpoint(checkpoint)
    what = f"{model.cfg.dataset} {model.cfg.precision} QSNN {model.cfg.arch}, {what}"
    if model.cfg.num_steps != num_steps:
        model.cfg = model.cfg.replace(num_steps=num_steps)
    onnx_path = export_float(checkpoint, workdir / f"bench{'-' + arch if arch else ''}.onnx")
    net, _ = compile_qonnx(onnx_path, get_profile(profile_name), allow_saturation=True)
    if net.num_steps != num_steps:
        net = dataclasses.replace(net, num_steps=num_steps)
    return model.eval(), net, onnx_path, what


# --------------------------------------------------------------------------------------------------
# The machine: configuration and GEMM rates


def machine_config() -> dict[str, object]:
    """BLAS, threads, CPU extensions and library versions, as the bench ran."""
    import onnxruntime
    import torch

    try:
        cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        cpuinfo = []
    flags = next((set(line.split(":", 1)[1].split()) for line in cpuinfo if line.startswith("flags")), set())
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    blas = []
    try:
        from threadpoolctl import threadpool_info

        blas = [
            f"{i.get('internal_api')} {i.get('version')} ({i.get('threading_layer', '')}, "
            f"{i.get('num_threads')} threads, {i.get('architecture', '')})"
            for i in threadpool_info()
        ]
    except ImportError:
        pass
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "int_dot_products": [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags],
        "numpy": np.__version__,
        "torch": torch.__version__,
        "onnxruntime": onnxruntime.__version__,
        "torch_threads": torch.get_num_threads(),
        "engine_threads": sim_engine.default_threads(),
        "thread_pools": blas,
        "env": {
            k: os.environ.get(k)
            for k in (
                "OMP_WAIT_POLICY",
                "GOMP_SPINCOUNT",
                "KMP_BLOCKTIME",
                "OMP_NUM_THREADS",
                "OPENBLAS_NUM_THREADS",
                "QSNN_SIM_THREADS",
            )
        },
    }


def numpy_blas_one_thread():
    """A context manager that runs NumPy's own BLAS on one thread (threadpoolctl, when installed):
    the engine's NumPy path is timed as "one thread", and a multi-threaded OpenBLAS would keep its
    workers spinning into the next peer's measurement (OpenBLAS's pthreads pool ignores
    ``OMP_WAIT_POLICY``). torch's and onnxruntime's pools are left alone."""
    import contextlib

    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return contextlib.nullcontext
    ctl = ThreadpoolController()
    paths = [i["filepath"] for i in ctl.info() if i["user_api"] == "blas" and "numpy" in i["filepath"]]
    if not paths:
        return contextlib.nullcontext
    mine = ctl.select(filepath=paths)
    return lambda: mine.limit(limits=1)


#: untimed calls of a peer right before each timed one, at least this long (seconds) and at least one
WARM_S = 0.05


def warm(fn, seconds: float = WARM_S) -> None:
    """Call ``fn`` untimed until ``seconds`` have passed (at least once).

    Why before every timed call: on these 2-vCPU machines a core that sat idle runs slower for the
    next tens of milliseconds. Two threads of onnxruntime's int8 matmul (6 calls each, 12 ms) take
    10.6 ms right after both cores were busy, 16.0 ms right after the eager loop (418 ms wall, 509 ms
    CPU: the second core mostly idle) and 20.8 ms after a 0.2 s sleep; one thread 22.9 against 30.0 ms.
    Timed cold, a fast two-threaded peer measured what the peer before it left idle; warmed, each peer
    is timed in its own steady state, as a run of many batches sees it.
    """
    t_end = time.perf_counter() + seconds
    fn()
    while time.perf_counter() < t_end:
        fn()


def _median_time(fn, repeats: int = 5) -> float:
    """Median seconds of ``repeats`` calls of ``fn``, each right after :func:`warm` calls of it."""
    ts = []
    for _ in range(repeats):
        warm(fn)
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def gemm_rates(m: int, k: int, n: int, threads: int = 1, block: int | None = None) -> dict[str, float]:
    """Measured multiply-accumulates per second of an (m, k) × (k, n) product of spikes and weights:
    float32 BLAS (NumPy), each integer kernel the engine has (onnxruntime's uint8 × int8 MatMulInteger;
    with the compiled kernels on an AVX2 CPU, qsnn's vpmaddubsw kernel accumulating in int16,
    :func:`qsnn.sim.kernels_numba.int16_matmul`), on one thread and on ``threads`` threads splitting
    the rows, as the engine splits a batch, in calls of ``block`` rows, as the engine makes them
    (:data:`qsnn.sim.layers.GEMM_BYTES` of input); and ``torch._int_mm`` where the torch build has it."""
    import torch

    from qsnn.kernels import OrtIntMatmul

    rng = np.random.default_rng(0)
    a = (rng.random((m, k)) < 0.15).astype(np.uint8)
    w = rng.integers(-28, 29, (k, n)).astype(np.int8)
    af, wf = a.astype(np.float32), w.astype(np.float32)
    macs = float(m) * k * n
    rates = {"float32 BLAS (NumPy)": macs / _median_time(lambda: af @ wf)}
    mm = OrtIntMatmul(w)
    kernels = {"int8 onnxruntime": mm}
    if ACCEL:
        from qsnn.sim import kernels_numba

        # the bound of these weights on spikes (Σ|w| over k rows) fits int16 for the engine's shapes
        aw = np.abs(w.astype(np.int64))
        if kernels_numba.int16_exact(1, int(aw.max()), int(aw.sum(axis=0).max())):
            packed = kernels_numba.Int16Weights(w)
            assert np.array_equal(kernels_numba.int16_matmul(a, packed), mm(a)), "the int16 kernel is not exact"
            kernels["int16 vpmaddubsw (qsnn)"] = lambda rows: kernels_numba.int16_matmul(rows, packed)
    block = max(1, block or m)
    for name, kernel in kernels.items():

        def blocks(rows: np.ndarray, kernel=kernel) -> None:
            for r0 in range(0, len(rows), block):
                kernel(rows[r0 : r0 + block])

        rates[f"{name}, 1 thread"] = macs / _median_time(lambda: blocks(a))
        if threads > 1:  # as the engine runs it: rows split over its threads
            from concurrent.futures import ThreadPoolExecutor

            parts = np.array_split(a, threads)
            with ThreadPoolExecutor(threads) as pool:
                rates[f"{name}, {threads} threads"] = macs / _median_time(lambda: list(pool.map(blocks, parts)))
    try:
        at, wt = torch.from_numpy(a.astype(np.int8)), torch.from_numpy(w)
        rates["int8 torch._int_mm"] = macs / _median_time(lambda: torch._int_mm(at, wt))
    except (AttributeError, RuntimeError):
        pass
    return rates


def engine_macs(net) -> tuple[int, tuple[int, int, int]]:
    """(multiply-accumulates of one inference as the engine computes it, the largest GEMM's (m, k, n) per sample-step).

    Pooling is folded into the kernel, or, for a pooled layer on spikes, summed over the pool window
    first (the layer's own k×k kernel at stride p); a static first layer is computed once, other
    layers every step.
    """
    layers = sim_layers.compile_layers(net, net.input_max)
    total, largest = 0, (0, 0, 0)
    for i, el in enumerate(layers):
        rows = 1 if el.layer.kind == "dense" else el.out_nhwc[0] * el.out_nhwc[1]
        cols = el.box_cols if el.box_matmul is not None else el.cols
        per_step = rows * cols * el.kernel.shape[1]
        steps = 1 if (i == 0 and net.encoding == "static") else net.num_steps
        total += per_step * steps
        if per_step > largest[0] * largest[1] * largest[2]:
            largest = (rows, cols, el.kernel.shape[1])
    return total, largest


# --------------------------------------------------------------------------------------------------
# The interleaved measurement


def interleaved(runs: dict, n_samples: int, repeats: int, reference: str = "engine") -> dict[str, dict]:
    """Time every peer once per repetition in rotating order, each right after :func:`warm` calls of
    itself; per-repetition ratios against ``reference``."""
    names = list(runs)
    for fn in runs.values():  # warm: sessions, caches, allocators, thread pools
        fn()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            warm(runs[name])
            t0 = time.perf_counter()
            runs[name]()
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name in names:
        ratios = [tp / te for tp, te in zip(times[name], times[reference])]
        out[name] = {
            "samples_per_s": n_samples / statistics.median(times[name]),
            "seconds": times[name],
            "ratio_median": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
        }
    return out


def back_to_back(fn, n_samples: int, repeats: int) -> dict[str, float]:
    """samples/s of ``repeats`` consecutive calls of ``fn`` after a warm one: median, min and max."""
    fn()
    rates = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        rates.append(n_samples / (time.perf_counter() - t0))
    return {"samples_per_s": statistics.median(rates), "min": min(rates), "max": max(rates), "calls": repeats}


def spec_rates(
    spec: str,
    num_steps: int,
    profile_name: str,
    workdir: Path,
    train_samples: int,
    sizes: list[int],
    repeats: int,
    threads: int,
    images: np.ndarray,
    main_net,
) -> dict:
    """The engine with and without its compiled kernels on one more network (``spec``, trained one
    short epoch), interleaved per batch size with the engine on the main network (``main_net``, the
    same images): its per-MAC ratio pairs each repetition's two calls, so a machine whose speed drifts
    over minutes moves both alike; bit-exact against each other and PyTorch integer mode."""
    from qsnn.export.integer_torch import run_integer_torch

    folder = workdir / spec
    folder.mkdir(parents=True, exist_ok=True)
    _, net, _, what = build(num_steps, profile_name, folder, None, train_samples, arch=spec)
    macs, _ = engine_macs(net)
    per_batch, exact = {}, {}
    for b in sizes:
        x = np.concatenate([images] * -(-b // len(images)))[:b]
        per_batch[b] = interleaved(
            {
                "engine": lambda x=x, b=b: simulate(net, x, batch_size=b, threads=threads, accel=ACCEL),
                "engine, NumPy loops": lambda x=x, b=b: simulate(net, x, batch_size=b, threads=threads, accel=False),
                "main network": lambda x=x, b=b: simulate(main_net, x, batch_size=b, threads=threads, accel=ACCEL),
            },
            b,
            repeats,
        )
        fast = simulate(net, x, batch_size=b, threads=threads, record=True, accel=ACCEL)
        loops = simulate(net, x, batch_size=b, threads=threads, record=True, accel=False)
        ref = run_integer_torch(net, x, batch_size=b)
        exact[b] = all(
            np.array_equal(fast.spikes[k], loops.spikes[k]) and np.array_equal(fast.spikes[k], np.asarray(ref[k]))
            for k in fast.spikes
        )
    return {"network": what, "macs": macs, "per_batch": per_batch, "bit_exact": exact}


_FIRST_CALL = """
import pickle, sys, time
t0 = time.perf_counter()
import numpy as np
from qsnn.sim import simulate
t1 = time.perf_counter()
net, x, accel = pickle.load(open(sys.argv[1], "rb"))
t2 = time.perf_counter()
simulate(net, x, batch_size=1, accel=accel)
t3 = time.perf_counter()
simulate(net, x, batch_size=1, accel=accel)
t4 = time.perf_counter()
print(t1 - t0, t3 - t2, t4 - t3)
"""


def first_call_cost(net, x: np.ndarray, workdir: Path) -> dict[str, dict[str, float]]:
    """Seconds of a fresh process: ``import qsnn.sim``, its first batch-1 ``simulate`` (layers,
    tables, the kernels' JIT or their load from numba's cache) and its second: with the compiled
    kernels and an empty numba cache (cold), then the same cache again (warm), with the NumPy
    loops, and as a user's one-off gets it (the default, ``auto``: a batch-1 call is too small to
    load the kernels)."""
    import pickle
    import subprocess
    import sys

    cache = workdir / "numba-cache"
    out = {}
    cases = (
        ("compiled, cold cache", True),
        ("compiled, warm cache", True),
        ("NumPy loops", False),
        ("default (QSNN_SIM_ACCEL=auto)", None),
    )
    for case, accel in cases:
        arg = workdir / "first-call.pkl"
        arg.write_bytes(pickle.dumps((net, x, accel)))
        env = {**os.environ, "NUMBA_CACHE_DIR": str(cache)}
        env.pop("QSNN_SIM_ACCEL", None)
        res = subprocess.run(
            [sys.executable, "-c", _FIRST_CALL, str(arg)], env=env, capture_output=True, text=True, check=True
        )
        imp, first, second = (float(v) for v in res.stdout.split())
        out[case] = {"import": imp, "first call": first, "second call": second}
    return out


def goal_rows(per_batch: dict, latency: dict, rates: dict, macs: int, others: dict, first_call: dict, threads: int):
    """The issue's goal figures, each against its goal (met / not met), from the figures of this run:
    at batch 64 (or the smallest batch timed) the engine ≥ 20× the eager loop, ≥ 3× the float fast
    path, ≥ 60 % of the int8 roofline on the engine's threads, ≥ 2× the engine without its compiled
    kernels, every other spec within 1.5× of the main network's samples/s per MAC; batch-1 latency
    ≤ 1 ms; and the first call of a fresh process (no goal: reported)."""
    b = 64 if 64 in per_batch else min(per_batch)
    pb = per_batch[b]
    rows = []

    def goal(name: str, value: float, target: float, text: str, higher: bool = True) -> None:
        met = value >= target if higher else value <= target
        rows.append((f"GOAL {name}", f"{text}  [{'met' if met else 'NOT met'}]"))

    for peer, target in (("eager", 20.0), ("float fast path", 3.0), ("engine, NumPy loops", 2.0)):
        if peer in pb:
            goal(
                f"batch {b} vs {peer}",
                pb[peer]["ratio_median"],
                target,
                f"{_fmt_ratio(pb[peer])} (goal >= {target:g}x)",
            )
    # the goal's roofline is onnxruntime's int8 MatMulInteger on the engine's threads (the issue's); the
    # engine's own int16 kernel, faster where it applies, is a higher bar, reported beside it
    ends = f"{threads} threads" if threads > 1 else "1 thread"
    key = f"int8 onnxruntime, {ends}"
    frac = pb["engine"]["samples_per_s"] * macs / rates[key]
    goal(f"batch {b} roofline", frac, 0.6, f"{100 * frac:.0f} % of {key} ({rates[key] / 1e9:.1f} GMAC/s; goal >= 60 %)")
    own = f"int16 vpmaddubsw (qsnn), {ends}"
    for name in (key, own) if own in rates else (key,):
        back = pb["engine, back to back"]["samples_per_s"] * macs / rates[name]
        here = pb["engine"]["samples_per_s"] * macs / rates[name]
        rows.append(
            (
                f"batch {b} roofline, {name}",
                f"{100 * here:.0f} % interleaved, {100 * back:.0f} % back to back ({rates[name] / 1e9:.1f} GMAC/s)",
            )
        )
    ms = 1e3 * statistics.median(latency["engine"]["seconds"])
    goal("batch 1 latency", ms, 1.0, f"{ms:.2f} ms (goal <= 1 ms)", higher=False)
    for spec, fig in others.items():
        if b in fig["per_batch"]:
            lo, mid, hi = per_mac(fig, b, macs)
            goal(
                f"{spec} per MAC, batch {b}",
                mid,
                1 / 1.5,
                f"{mid:.2f}x [{lo:.2f}, {hi:.2f}] the main network's, interleaved (goal >= 0.67x)",
            )
    warm, loops = first_call.get("compiled, warm cache"), first_call.get("NumPy loops")
    if warm and loops:
        rows.append(
            (
                "first call (warm cache)",
                f"import {warm['import']:.2f} s + first batch-1 simulate {warm['first call']:.2f} s; NumPy loops "
                f"{loops['import']:.2f} + {loops['first call']:.2f} s",
            )
        )
    return rows


def per_mac(fig: dict, b: int, macs: int) -> tuple[float, float, float]:
    """A spec's samples/s per MAC against the main network's at batch ``b`` (min, median, max over the
    repetitions of :func:`spec_rates`, each pairing a call of either): (t_main / t_spec) · MACs_spec / MACs_main."""
    row = fig["per_batch"][b]["main network"]
    scale = fig["macs"] / macs
    return row["ratio_min"] * scale, row["ratio_median"] * scale, row["ratio_max"] * scale


def _fmt_ratio(row: dict) -> str:
    return f"{row['ratio_median']:.2f}x [{row['ratio_min']:.2f}, {row['ratio_max']:.2f}]"


@click.command()
@click.option("--steps", "num_steps", default=25, show_default=True, help="Time steps T.")
@click.option("--batch-sizes", default="64,512", show_default=True, help="Batch sizes, comma-separated.")
@click.option(
    "--repeats", default=5, show_default=True, help="Timed repetitions per batch size (after a warm call of each peer)."
)
@click.option("--latency-repeats", default=30, show_default=True, help="Timed batch-1 calls per engine setting.")
@click.option("--profile", "profile_name", type=click.Choice(sorted(PROFILES)), default="fpga", show_default=True)
@click.option(
    "--checkpoint",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Use this trained checkpoint (e.g. runs/demo/best.pt) instead of a quick 1-epoch training.",
)
@click.option("--train-samples", default=512, show_default=True, help="Images of the quick training.")
@click.option(
    "--threads",
    default=None,
    type=click.IntRange(min=1),
    help="torch threads and engine threads [default: the usable cores, at most 4].",
)
@click.option(
    "--eager-max-batch",
    default=512,
    show_default=True,
    help="Time the eager loop only up to this batch size (it is the slowest peer).",
)
@click.option(
    "--specs",
    default=",".join(DEFAULT_SPECS),
    show_default=True,
    help="Further networks (spec strings, each trained 1 short epoch here): the engine with and without "
    "its compiled kernels at every batch size; empty for none.",
)
@click.option("--out", default="runs/bench/sim.json", show_default=True, help="JSON file for the figures.")
def main(
    num_steps: int,
    batch_sizes: str,
    repeats: int,
    latency_repeats: int,
    profile_name: str,
    checkpoint: str | None,
    train_samples: int,
    threads: int | None,
    eager_max_batch: int,
    specs: str,
    out: str,
) -> None:
    """Inference samples/s: integer engine vs eager snnTorch + Brevitas, qsnn's float fast path and onnxruntime."""
    import torch

    from qsnn.export.float_eval import FloatEvaluator
    from qsnn.export.integer_torch import run_integer_torch
    from qsnn.export.runtime import run_onnx_steps

    threads = threads or sim_engine.default_threads()
    torch.set_num_threads(threads)
    sizes = [int(b) for b in batch_sizes.split(",") if b.strip()]
    load_before = os.getloadavg()
    split = load_split("mnist5k", "test", seed=0)
    tmp = tempfile.TemporaryDirectory()
    model, net, onnx_path, what = build(num_steps, profile_name, Path(tmp.name), checkpoint, train_samples)
    evaluator = FloatEvaluator(onnx_path, threads=threads)
    config = machine_config()

    def images(b: int) -> np.ndarray:
        reps = -(-b // len(split.x))
        return np.concatenate([split.x] * reps)[:b]

    one_blas = numpy_blas_one_thread()

    def numpy_path(x: np.ndarray, b: int, **kw):
        with one_blas():
            return simulate(net, x, batch_size=b, kernel="numpy", threads=1, **kw)

    per_batch, exactness = {}, {}
    for b in sizes:
        x = images(b)
        xt = torch.from_numpy(model_input(x, INPUT_SCALE["static"]))
        xf = xt.numpy()

        def eager(xt=xt):
            with torch.no_grad():
                return model.forward_plain(xt).spikes.sum(0).numpy()

        def fast(xt=xt):
            with torch.no_grad():
                return model.forward_fast(xt).spikes.sum(0).numpy()

        runs = {
            "engine": lambda x=x, b=b: simulate(net, x, batch_size=b, threads=threads, accel=ACCEL).counts,
            "engine, NumPy loops": lambda x=x, b=b: simulate(net, x, batch_size=b, threads=threads, accel=False).counts,
            "engine numpy": lambda x=x, b=b: numpy_path(x, b).counts,
            "float fast path": fast,
            "float reference": lambda x=x: evaluator.run(x)["z3"],
            "onnxruntime": lambda xf=xf, b=b: run_onnx_steps(onnx_path, xf, batch_size=b)["z3"],
        }
        if b <= eager_max_batch:
            runs["eager"] = eager
        per_batch[b] = interleaved(runs, len(x), repeats)
        # and as a qsnn-sim run calls it, back to back (no peer in between at all)
        per_batch[b]["engine, back to back"] = back_to_back(runs["engine"], len(x), 2 * repeats)

        # exactness in the same run: every spike train of the engine vs PyTorch integer mode and the NumPy path
        res = simulate(net, x, batch_size=b, threads=threads, record=True, accel=ACCEL)
        ref = run_integer_torch(net, x, batch_size=b)
        ref_np = numpy_path(x, b, record=True)
        loops = simulate(net, x, batch_size=b, threads=threads, record=True, accel=False)
        exactness[b] = {
            key: bool(
                np.array_equal(res.spikes[key], np.asarray(ref[key]))
                and np.array_equal(res.spikes[key], ref_np.spikes[key])
                and np.array_equal(res.spikes[key], loops.spikes[key])
            )
            for key in res.spikes
        }
        with torch.no_grad():
            fast_pred = model.forward_fast(xt).spikes.sum(0).argmax(1).numpy()
        per_batch[b]["predictions_equal_float_vs_engine"] = float(np.mean(fast_pred == res.predictions))
        # the float reference predicts what the trained model predicts (float rounding apart)
        ref_pred = evaluator.run(x)["z3"].sum(0).argmax(1)
        per_batch[b]["predictions_equal_float_reference_vs_fast_path"] = float(np.mean(ref_pred == fast_pred))
        per_batch[b]["firing_rates"] = {
            s.name: float(s.spikes_per_step.sum() / (len(x) * num_steps * s.neurons)) for s in res.layers
        }
        per_batch[b]["sum_kernels"] = {s.name: f"{s.sum_kernel} {s.sum_dtype}" for s in res.layers}

    # batch-1 latency: the engine now, and as before (NumPy path, one thread, layers rebuilt every call)
    x1 = split.x[:1]

    def rebuilt():
        # drop only this path's compiled layers: the engine's own stay cached, as in any warm call
        for key in [k for k in sim_layers._COMPILED if k[2] == "numpy"]:
            sim_layers._COMPILED.pop(key, None)
        return numpy_path(x1, 1)

    latency = interleaved(
        {
            "engine": lambda: simulate(net, x1, batch_size=1, accel=ACCEL),
            "NumPy loops": lambda: simulate(net, x1, batch_size=1, accel=False),
            "numpy, rebuilt per call": rebuilt,
        },
        1,
        latency_repeats,
    )

    macs, (m, k, n) = engine_macs(net)
    rates = gemm_rates(m * num_steps * 64, k, n, threads, block=sim_layers.GEMM_BYTES // k)
    others = {
        spec: spec_rates(
            spec, num_steps, profile_name, Path(tmp.name), train_samples, sizes, repeats, threads, split.x, net
        )
        for spec in (t.strip() for t in specs.split(","))
        if spec
    }
    first_call = first_call_cost(net, split.x[:1], Path(tmp.name))
    load_after = os.getloadavg()

    rows = [
        ("network", f"{what}; T={num_steps}, profile {profile_name}"),
        (
            "machine",
            f"{config['cpu']}, {config['cores']} cores, {', '.join(config['int_dot_products'])}; "
            f"load avg {load_before[0]:.2f} before, {load_after[0]:.2f} after",
        ),
        (
            "threads",
            f"engine {threads}, torch {config['torch_threads']}; "
            + "; ".join(config["thread_pools"])
            + f"; {config['env']}",
        ),
        ("versions", f"numpy {config['numpy']}, torch {config['torch']}, onnxruntime {config['onnxruntime']}"),
    ]
    for b in sizes:
        pb = per_batch[b]
        rows.append(
            (
                f"batch {b}: engine",
                f"{pb['engine']['samples_per_s']:8.0f} samples/s  "
                f"(median of {repeats}; {', '.join(pb['sum_kernels'].values())})",
            )
        )
        btb = pb["engine, back to back"]
        rows.append(
            (
                f"batch {b}: engine, back to back",
                f"{btb['samples_per_s']:8.0f} samples/s  (median of {btb['calls']} consecutive calls "
                f"[{btb['min']:.0f}, {btb['max']:.0f}]; no peer in between, as in a qsnn-sim run)",
            )
        )
        for name in (
            "engine, NumPy loops",
            "engine numpy",
            "float fast path",
            "float reference",
            "onnxruntime",
            "eager",
        ):
            if name in pb:
                rows.append(
                    (
                        f"batch {b}: {name}",
                        f"{pb[name]['samples_per_s']:8.0f} samples/s  engine is {_fmt_ratio(pb[name])} faster",
                    )
                )
        rows.append(
            (
                f"batch {b}: bit-exact",
                ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in exactness[b].items())
                + f"; predictions equal float fast path {100 * pb['predictions_equal_float_vs_engine']:.2f} %"
                + f"; float reference vs fast path {100 * pb['predictions_equal_float_reference_vs_fast_path']:.2f} %",
            )
        )
    rows.append(
        (
            "batch 1 latency",
            f"engine {1e3 * statistics.median(latency['engine']['seconds']):.2f} ms, "
            f"NumPy loops {1e3 * statistics.median(latency['NumPy loops']['seconds']):.2f} ms, "
            f"NumPy path rebuilt per call {1e3 * statistics.median(latency['numpy, rebuilt per call']['seconds']):.2f} ms "
            f"({_fmt_ratio(latency['numpy, rebuilt per call'])})",
        )
    )
    rows.append(
        ("engine MACs / inference", f"{macs / 1e6:.2f} M (pooling folded or summed first, static layer 1 once)")
    )
    for name, rate in rates.items():
        bound = rate / macs
        rows.append(
            (
                f"roofline {name}",
                f"{rate / 1e9:6.1f} GMAC/s -> {bound:8.0f} samples/s; engine "
                + ", ".join(
                    f"{100 * per_batch[b]['engine']['samples_per_s'] / bound:.0f} % at batch {b}" for b in sizes
                ),
            )
        )
    for spec, fig in others.items():
        for b in sizes:
            eng, loops_ = fig["per_batch"][b]["engine"], fig["per_batch"][b]["engine, NumPy loops"]
            rows.append(
                (
                    f"{spec} batch {b}",
                    f"engine {eng['samples_per_s']:8.0f} samples/s, NumPy loops {loops_['samples_per_s']:8.0f} "
                    f"(engine {_fmt_ratio(loops_)} faster); {fig['macs'] / 1e6:.2f} M MACs/inference: "
                    f"{eng['samples_per_s'] * fig['macs'] / 1e9:.2f} GMAC/s, "
                    f"{per_mac(fig, b, macs)[1]:.2f}x the main network's per MAC (interleaved); "
                    f"bit-exact {'yes' if fig['bit_exact'][b] else 'NO'}",
                )
            )
    for case, secs in first_call.items():
        rows.append((f"first call, {case}", ", ".join(f"{k} {v:.2f} s" for k, v in secs.items())))
    rows.extend(goal_rows(per_batch, latency, rates, macs, others, first_call, threads))
    print_table(
        rows, title="qsnn-sim bench: inference throughput (engine ratios: median [min, max] of per-repetition ratios)"
    )
    figures = {
        "network": what,
        "num_steps": num_steps,
        "profile": profile_name,
        "repeats": repeats,
        "machine": config,
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        "per_batch": {str(b): v for b, v in per_batch.items()},
        "bit_exact": {str(b): v for b, v in exactness.items()},
        "batch1_latency": latency,
        "engine_macs_per_inference": macs,
        "gemm_macs_per_s": rates,
        "specs": {
            spec: {**fig, "per_batch": {str(b): v for b, v in fig["per_batch"].items()}} for spec, fig in others.items()
        },
        "first_call_s": first_call,
    }
    write_json(out, figures)
    click.echo(f"figures: {out}")
    tmp.cleanup()
    exact = all(all(v.values()) for v in exactness.values())
    exact = exact and all(all(fig["bit_exact"].values()) for fig in others.values())
    if not exact:
        raise SystemExit("the engine is NOT bit-exact against the PyTorch integer evaluation and its NumPy path")


if __name__ == "__main__":  # pragma: no cover
    main()
