"""Reports of a simulation: hardware figures, agreement with other evaluations, a plot.

Everything here works on :class:`~qsnn.sim.engine.SimResult` and NumPy arrays (no torch); the
``qsnn-sim`` command assembles these pieces into its printed table and JSON report.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import numpy as np

from qsnn.atomic import atomic_open
from qsnn.network import IntegerNetwork
from qsnn.output_guard import PLOT_KEY, SIM_PLOT_FORMAT

from .results import SimResult, predict


def percent(part: int, whole: int) -> float:
    """100·part/whole; never rounds a shortfall up to 100 (99.996 % reads 99.99, not 100.00)."""
    if whole == 0:
        return float("nan")
    value = 100.0 * part / whole
    if part != whole:
        value = math.floor(value * 100) / 100
    return value


def format_percent(value: float) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f} %"


# --------------------------------------------------------------------------------------------------
# Hardware figures


def hardware_figures(net: IntegerNetwork, result: SimResult) -> dict[str, Any]:
    """Per layer and in total: activity, synaptic operations, memory, membrane range, saturation.

    Per-inference figures are averages over the simulated samples. ``weight_memory_bits`` is
    ``weight_bits × number of weights`` of the layer as stored on the chip (before pooling is
    folded); ``state_memory_bits`` the membranes (``membrane_bits × neurons``).
    """
    profile = net.profile
    n = max(1, result.num_samples)
    T = result.num_steps
    layers = []
    for layer, stats in zip(net.layers, result.layers):
        spikes = int(stats.spikes_per_step.sum())
        weights = int(np.asarray(layer.weight).size)
        lo, hi = stats.membrane_min, stats.membrane_max
        layers.append(
            {
                "name": stats.name,
                "kind": stats.kind,
                "shape": list(stats.shape),
                "neurons": stats.neurons,
                "spikes_per_inference": spikes / n,
                "spikes_per_step": (stats.spikes_per_step / n).tolist(),
                "firing_rate": spikes / (n * T * stats.neurons),
                "sparsity": 1.0 - spikes / (n * T * stats.neurons),
                "synops_per_inference": stats.synops / n,
                "dense_macs_per_inference": stats.dense_macs / n,
                "weights": weights,
                "weight_memory_bits": weights * profile.weight_bits,
                "state_memory_bits": stats.neurons * profile.membrane_bits,
                "membrane_min": lo,
                "membrane_max": hi,
                "membrane_bits_used": _signed_bits(lo, hi),
                "membrane_bits": profile.membrane_bits,
                "current_min": stats.current_min,
                "current_max": stats.current_max,
                "saturation_low": stats.saturation_low,
                "saturation_high": stats.saturation_high,
                "saturation_events": stats.saturation_events,
                "current_wraps": stats.current_wraps,
                "current_bits": profile.current_bits,
                "overflow": profile.overflow,
                "synaptic_sum": f"{stats.sum_dtype} in {stats.sum_kernel or 'numpy'} (|sum| <= {stats.sum_bound})",
                "state_dtype": stats.state_dtype,
            }
        )
    total = {
        "spikes_per_inference": sum(layer["spikes_per_inference"] for layer in layers),
        "synops_per_inference": sum(layer["synops_per_inference"] for layer in layers),
        "dense_macs_per_inference": sum(layer["dense_macs_per_inference"] for layer in layers),
        "weight_memory_bits": sum(layer["weight_memory_bits"] for layer in layers),
        "state_memory_bits": sum(layer["state_memory_bits"] for layer in layers),
        "saturation_events": sum(layer["saturation_events"] for layer in layers),
        "current_wraps": sum(layer["current_wraps"] for layer in layers),
    }
    return {"layers": layers, "total": total}


def _signed_bits(lo: int, hi: int) -> int:
    """Two's complement bits needed to hold every value in [lo, hi]."""
    need = max(int(hi).bit_length(), (-int(lo) - 1).bit_length() if lo < 0 else 0)
    return need + 1


# --------------------------------------------------------------------------------------------------
# Agreement


def output_agreement(counts_a: np.ndarray, counts_b: np.ndarray) -> dict[str, Any]:
    """Predictions equal and output spike counts equal (% of samples) between two evaluations."""
    counts_a, counts_b = np.asarray(counts_a), np.asarray(counts_b)
    if counts_a.shape != counts_b.shape:
        raise ValueError(f"output counts differ in shape: {counts_a.shape} vs {counts_b.shape}")
    n = len(counts_a)
    same_pred = int(np.sum(predict(counts_a) == predict(counts_b)))
    same_counts = int(np.sum(np.all(counts_a.reshape(n, -1) == counts_b.reshape(n, -1), axis=1)))
    return {
        "samples": n,
        "predictions_equal": same_pred,
        "predictions_equal_pct": percent(same_pred, n),
        "output_counts_equal": same_counts,
        "output_counts_equal_pct": percent(same_counts, n),
    }


class SpikeTrainComparison:
    """Accumulates, per layer, how many samples have identical spike trains (every step, neuron).

    Feed it chunks of (T, N, ...) trains from two evaluations; ``summary()`` gives the % of
    samples per layer and ``bit_exact`` (every chunk ``array_equal``).
    """

    def __init__(self) -> None:
        self.equal: dict[str, int] = {}
        self.samples = 0
        self.bit_exact = True
        self.first_mismatch: dict[str, Any] | None = None

    def add(self, ours: Mapping[str, np.ndarray], theirs: Mapping[str, np.ndarray], offset: int = 0) -> None:
        n = None
        for key, a in ours.items():
            if key not in theirs:
                raise ValueError(f"the reference has no spike train {key!r} (has {sorted(theirs)})")
            b = np.asarray(theirs[key])
            if a.shape != b.shape:
                raise ValueError(f"spike train {key}: shapes differ, {a.shape} vs {b.shape}")
            n = a.shape[1]
            same = np.all((a == b).reshape(a.shape[0], n, -1), axis=(0, 2))
            self.equal[key] = self.equal.get(key, 0) + int(same.sum())
            if not np.array_equal(a, b):
                self.bit_exact = False
                if self.first_mismatch is None:
                    t, i = (int(v[0]) for v in np.nonzero(a != b)[:2])
                    self.first_mismatch = {"layer": key, "sample": offset + i, "step": t}
        self.samples += n or 0

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "bit_exact": self.bit_exact,
            "equal_pct": {k: percent(v, self.samples) for k, v in self.equal.items()},
            "first_mismatch": self.first_mismatch,
        }


# --------------------------------------------------------------------------------------------------
# Plot


def plot_activity(
    path: str | os.PathLike,
    trains: Mapping[str, np.ndarray],
    result: SimResult,
    names: list[str],
    sample: int = 0,
    title: str = "",
) -> None:
    """A PNG: the spike raster of one sample per layer, and every layer's firing rate per step.

    ``trains``: ``{"z1": (T, N, ...)}`` of the sample's run (``sample`` indexes its N axis).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(trains, key=lambda k: int(k[1:]))
    fig, axes = plt.subplots(len(keys) + 1, 1, figsize=(8, 2.2 * (len(keys) + 1)), constrained_layout=True)
    T = result.num_steps
    for ax, key, name in zip(axes, keys, names):
        z = np.asarray(trains[key])[:, sample].reshape(T, -1)
        ax.imshow(
            z.T,
            aspect="auto",
            interpolation="nearest",
            cmap="Greys",
            vmin=0,
            vmax=1,
            origin="lower",
            extent=(-0.5, T - 0.5, -0.5, z.shape[1] - 0.5),
        )
        ax.set_ylabel(f"{name}\nneuron")
        ax.set_title(f"{name}: spike raster of sample {sample} ({int(z.sum())} spikes)", fontsize=9)
    ax = axes[-1]
    for stats in result.layers:
        rate = stats.spikes_per_step / max(1, result.num_samples * stats.neurons)
        ax.plot(np.arange(T), rate, marker=".", label=stats.name)
    ax.set_xlabel("time step")
    ax.set_ylabel("firing rate")
    ax.set_title(f"firing rate per layer (mean over {result.num_samples} samples)", fontsize=9)
    ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, metadata={PLOT_KEY: SIM_PLOT_FORMAT})  # recognised by --force
    plt.close(fig)
