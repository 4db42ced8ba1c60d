"""What a simulation returns: per-layer statistics, the output spike counts and predictions.

:class:`SimResult` is the output of :func:`qsnn.sim.simulate`; :class:`LayerStats` holds what one
layer did over all samples (spikes per step, saturation events, membrane and current ranges,
synaptic operations, how its sums were computed). Results of consecutive chunks of a dataset merge
with :func:`combine`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np


@dataclass
class LayerStats:
    """What one layer did over a simulation (all samples).

    Attributes:
        name, kind: the layer's name and kind.
        shape: spike shape of one sample (C, H, W) or (O,).
        neurons: neurons in the layer.
        spikes_per_step: (T,) total spikes of all samples at each step.
        saturation_low / saturation_high: neuron-steps whose membrane before ``sat`` lay below the
            low rail / above the high rail (clamped for ``saturate``, wrapped for ``wrap``).
        membrane_min / membrane_max: extremes of the membrane u_t seen (after ``sat``).
        current_min / current_max: extremes of the synaptic current shl(acc, s) seen (before
            the current register).
        current_wraps: neuron-steps whose current wrapped in the profile's current register.
        synops: synaptic operations, all samples: every nonzero input (spike, pixel, event count
            times its count) times the synapses it drives (its fan-out into this layer).
        dense_macs: multiply-accumulates a dense (non event-driven) evaluation needs, all samples.
        sum_dtype: how the synaptic sums were computed exactly (int16 or int32 accumulation of uint8 ×
            int8, float32, float64 or int64).
        sum_kernel: which kernel computed them: ``"avx2"`` (qsnn's int16 kernel,
            :func:`qsnn.sim.kernels_numba.int16_matmul`), ``"onnxruntime"`` (integer MatMulInteger) or ``"numpy"``.
        sum_bound: the proven bound of every partial synaptic sum.
        state_dtype: the integer type of the membrane update.
    """

    name: str
    kind: str
    shape: tuple[int, ...]
    neurons: int
    spikes_per_step: np.ndarray
    saturation_low: int = 0
    saturation_high: int = 0
    membrane_min: int = 0
    membrane_max: int = 0
    current_min: int = 0
    current_max: int = 0
    current_wraps: int = 0
    synops: int = 0
    dense_macs: int = 0
    sum_dtype: str = ""
    sum_kernel: str = ""
    sum_bound: int = 0
    state_dtype: str = ""

    def absorb(self, other: "LayerStats") -> None:
        """Add the figures of ``other`` (the same layer on other samples) to these, in place: counts
        and operations add up, extremes take the outer value. The one merge rule of the engine."""
        self.spikes_per_step = self.spikes_per_step + other.spikes_per_step
        for key in ("saturation_low", "saturation_high", "current_wraps", "synops", "dense_macs"):
            setattr(self, key, getattr(self, key) + getattr(other, key))
        for key in ("membrane_min", "current_min"):
            setattr(self, key, min(getattr(self, key), getattr(other, key)))
        for key in ("membrane_max", "current_max", "sum_bound"):
            setattr(self, key, max(getattr(self, key), getattr(other, key)))

    @property
    def saturation_events(self) -> int:
        return self.saturation_low + self.saturation_high


@dataclass
class SimResult:
    """Output of :func:`simulate`.

    Attributes:
        counts: (N, classes) output spike counts over T.
        predictions: (N,) argmax of ``counts``, first index winning ties.
        layers: per-layer :class:`LayerStats`, first to last.
        num_steps: T.
        spikes: with ``record=True``, ``{"z1": (T, N, ...), ...}`` uint8 spike trains per layer
            (layout (T, N, C, H, W) for conv layers, (T, N, O) for dense ones); else ``None``.
        membranes: with ``record_membranes=True``, ``{"u1": (T, N, ...), ...}`` integer membranes.
    """

    counts: np.ndarray
    predictions: np.ndarray
    layers: tuple[LayerStats, ...]
    num_steps: int
    spikes: dict[str, np.ndarray] | None = None
    membranes: dict[str, np.ndarray] | None = None

    @property
    def num_samples(self) -> int:
        return int(len(self.predictions))

    def accuracy(self, labels: np.ndarray) -> float:
        """Fraction of samples whose prediction equals ``labels``."""
        labels = np.asarray(labels)
        return float(np.mean(self.predictions == labels)) if len(labels) else float("nan")


def predict(counts: np.ndarray) -> np.ndarray:
    """Argmax of spike counts over the last axis, first index winning ties (as torch.argmax)."""
    return np.argmax(np.asarray(counts), axis=-1).astype(np.int64, copy=False)


def combine(results: Sequence[SimResult]) -> SimResult:
    """One :class:`SimResult` from runs on consecutive chunks of a dataset (same network)."""
    if not results:
        raise ValueError("nothing to combine")
    first = results[0]
    layers = []
    for i, stats in enumerate(first.layers):
        merged = replace(stats)
        for r in results[1:]:
            merged.absorb(r.layers[i])
        layers.append(merged)

    def join(attr: str) -> dict[str, np.ndarray] | None:
        if any(getattr(r, attr) is None for r in results):
            return None
        return {k: np.concatenate([getattr(r, attr)[k] for r in results], axis=1) for k in getattr(first, attr)}

    counts = np.concatenate([r.counts for r in results])
    return SimResult(
        counts=counts,
        predictions=predict(counts),
        layers=tuple(layers),
        num_steps=first.num_steps,
        spikes=join("spikes"),
        membranes=join("membranes"),
    )
