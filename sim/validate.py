"""Validation: the integer simulation against the other evaluations of a model, which the caller passes in.

``sim/`` needs numpy only, never torch and never ``export/``: whoever validates (``qsnn-sim``, a
test) hands over the evaluations as functions:

* ``reference(net, x, batch_size) -> {"z1": (T, N, ...), ...}``: an independent evaluation of the
  integer semantics, e.g. :func:`qsnn.export.integer_torch.run_integer_torch`;
* ``run_float(x, batch_size) -> {"z<L>": (T, N, classes)}``: the trained (float) model's output
  spikes (the last layer L; the highest-numbered ``z`` key when more layers are recorded), e.g.
  :class:`qsnn.export.float_eval.FloatEvaluator` (on the integer codes: ``codes=True``) or the float
  QONNX graph under onnxruntime (``functools.partial(qsnn.export.runtime.run_onnx_steps, path)``, on
  real-valued inputs);
* ``compile(profile) -> (network, report)``: the compiler, e.g.
  ``lambda p: qsnn.export.compile.compile_qonnx(path, p)``.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import numpy as np

from qsnn.data import INPUT_SCALE, ArraySplit, model_input
from qsnn.errors import ProfileError
from qsnn.network import IntegerNetwork
from qsnn.profiles import ChipProfile

from . import report as rep
from .engine import simulate
from .results import SimResult, combine, predict

#: Samples per chunk of :func:`simulate_checked` (each chunk: the engine, then the reference).
CHUNK = 512

Reference = Callable[[IntegerNetwork, np.ndarray, int], Mapping[str, np.ndarray]]
FloatRunner = Callable[[np.ndarray, int], Mapping[str, np.ndarray]]
Compiler = Callable[[ChipProfile], tuple[IntegerNetwork, dict[str, Any]]]


def float_input(x: np.ndarray, encoding: str) -> np.ndarray:
    """The float model's input from the integers, as training feeds it (:func:`qsnn.data.model_input`)."""
    return model_input(x, INPUT_SCALE[encoding])


def float_model_counts(
    run_float: FloatRunner,
    x: np.ndarray,
    encoding: str,
    batch_size: int = 256,
    progress: bool = False,
    codes: bool = False,
) -> np.ndarray:
    """Output spike counts (N, classes) of the trained model (``run_float``) over T steps on integer inputs.

    ``run_float`` gets the real-valued input (:func:`float_input`), or with ``codes`` the integer
    inputs themselves (a runner that knows the encoding's ``input_scale``, e.g.
    :class:`qsnn.export.float_eval.FloatEvaluator`).
    """
    from tqdm import tqdm

    counts = []
    with tqdm(total=len(x), unit="sample", desc="float model", leave=False, disable=not progress) as bar:
        for s in range(0, len(x), max(batch_size, 1)):
            xs = x[s : s + batch_size]
            out = run_float(xs if codes else float_input(xs, encoding), batch_size)
            z = np.asarray(out[output_key(out)])
            counts.append(z.sum(axis=0).reshape(z.shape[1], -1).astype(np.int64))
            bar.update(len(z[0]) if z.ndim > 1 else 0)
    return np.concatenate(counts) if counts else np.zeros((0, 0), np.int64)


def output_key(record: dict[str, Any]) -> str:
    """The output layer's key of a record ``{"z1": ..., "z<L>": ...}``: the highest-numbered spike train."""
    keys = [k for k in record if k[:1] == "z" and k[1:].isdigit()]
    if not keys:
        raise KeyError(f"no spike train (z1, z2, ...) among {sorted(record)}")
    return max(keys, key=lambda k: int(k[1:]))


def simulate_checked(
    net: IntegerNetwork,
    x: np.ndarray,
    *,
    reference: Reference | None = None,
    batch_size: int = 256,
    progress: bool = True,
    record: bool = False,
) -> tuple[SimResult, dict[str, Any] | None, float]:
    """Simulate ``x`` in chunks; with ``reference``, compare every spike train of every layer with it.

    Returns (combined result, the comparison's summary or None, engine seconds); the result keeps
    every layer's spike trains and membranes with ``record`` (``simulate(record=True,
    record_membranes=True)``), else neither.
    """
    comparison = rep.SpikeTrainComparison()
    results, seconds = [], 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(x), unit="sample", desc=f"simulate ({net.profile.name})", leave=False)
    try:
        for s in range(0, len(x), CHUNK):
            xc = x[s : s + CHUNK]
            t0 = time.perf_counter()
            res = simulate(
                net, xc, batch_size=batch_size, record=record or reference is not None, record_membranes=record
            )
            seconds += time.perf_counter() - t0
            if reference is not None:
                ref = reference(net, xc, batch_size)
                comparison.add(res.spikes, {k: np.asarray(v) for k, v in ref.items() if k in res.spikes}, offset=s)
            if not record:
                res.spikes = None
            results.append(res)
            if bar is not None:
                bar.update(len(xc))
    finally:
        if bar is not None:
            bar.close()
    return combine(results), (comparison.summary() if reference is not None else None), seconds


def frac_bits_sweep(
    compile: Compiler,
    profile: ChipProfile,
    x: np.ndarray,
    y: np.ndarray,
    values: list[int],
    *,
    float_counts: np.ndarray | None = None,
    batch_size: int = 256,
    data: ArraySplit | None = None,
) -> list[dict[str, Any]]:
    """Accuracy of the integer simulation for each ``frac_bits`` in ``values`` (same model and data).

    Each row: frac_bits, accuracy, difference to the float model and agreement with it (if
    ``float_counts`` is given), saturation events, or ``error`` when the profile cannot hold the net.
    With ``data`` (the split ``x``, ``y`` come from) accuracies count recordings as :meth:`ArraySplit.accuracy`.
    Under a ``fixed_shift`` profile (Loihi 2: Lava always computes ``a_in << 6``) only the profile's own
    frac_bits is what the chip runs; the other rows carry ``not_the_chip`` (what-if figures).
    """
    score = data.accuracy if data is not None else (lambda counts: float(np.mean(predict(counts) == y)))
    rows = []
    for f in values:
        row: dict[str, Any] = {"frac_bits": f}
        if profile.fixed_shift and f != profile.frac_bits:
            row["not_the_chip"] = (
                f"the {profile.name} profile's current shift is fixed at {profile.frac_bits}: "
                f"the chip cannot run frac_bits={f}"
            )
        try:
            net, _ = compile(profile.replace(frac_bits=f))
        except ProfileError as exc:
            row["error"] = str(exc).splitlines()[0]
            rows.append(row)
            continue
        res = simulate(net, x, batch_size=batch_size)
        row["accuracy"] = score(res.counts)
        row["saturation_events"] = sum(layer.saturation_events for layer in res.layers)
        row["current_shifts"] = [layer.current_shift for layer in net.layers]
        if float_counts is not None:
            acc_float = score(float_counts)
            row["accuracy_float"] = acc_float
            row["difference"] = row["accuracy"] - acc_float
            row.update({k: v for k, v in rep.output_agreement(res.counts, float_counts).items() if k.endswith("_pct")})
        rows.append(row)
    return rows
