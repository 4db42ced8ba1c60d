"""Where the accuracy goes between the trained model and the chip: per layer, per step, and why.

``explain(net, x, labels, run_float, trained)`` runs the integer network (:func:`qsnn.sim.simulate`,
every layer recorded) and the trained model (``run_float``: the float export layer by layer over T,
e.g. ``qsnn.export.float_eval.FloatEvaluator(path).run(x, record=True)``) on the same inputs, in
chunks of samples (memory bounded: per-sample records are kept only for samples whose prediction
differs, counts for the rest), and reports:

* per layer and step, the share of spike entries equal in both (the *agreement*);
* per sample and layer, the first step where the layer's spikes differ (a *divergence*), and
  whether its inputs already differed there (an *upstream difference propagated*) or it started
  in the layer itself; for one that started there, the neurons involved and the **cause**;
* for every sample whose prediction differs, the first divergence, its neurons and cause, and the
  layers it reached;
* totals: how many divergences each cause started, what to change for each, and the measured
  effect of that change (the compile is re-run and the data re-simulated): of a post-training field
  (``frac_bits``, ``membrane_bits``, ``leak_bits``) as the chip would run it; of the reset mode or
  the synaptic delay, which only retraining for the chip changes, as a what-if (``not_the_chip``).
  A semantic difference or a clamped membrane is measured whenever present, as it also acts after
  the first divergence that the table counts.

Time alignment. A chip whose synaptic delay d exceeds the trained model's by Δ sees layer l's
input Δ steps later per layer: its layer l at step t + l·Δ computes what the trained layer l
computes at step t (from the same input), so spikes are compared at those steps; the first l·Δ
chip steps of layer l are its warm-up and the trained model's last l·Δ steps never reach the chip.

The cause of a divergence is computed from the arithmetic, not guessed. In the layer's grid units
(one unit is δ_c, the real value ``IntegerLayer.scale``), the trained neuron and the chip's are::

    trained:  u_t = β·u_{t−1} + acc_t·2^(e+s) + o_c/δ_c − r_t·θ/δ_c      z_t = [u_t > θ/δ_c]
    chip:     u_t = ovf( leak(u_{t−1}) + cur(shl(shl(acc_t, e), s)) + b_c − r_t·θ_c )   z_t = [u_t > θ_c]

(:func:`qsnn.arith.int_lif_step`; o_c the trained constant current, the reset as each side's
reset mode). They differ by seven *effects*, each switchable between its chip form and its exact
form: the reset mode, the warm-up of the synaptic delay, saturation or wrap at the rails (``ovf``
and the current register ``cur``), the floor of the current shift (``shl`` with s < 0), θ on the
grid (θ_c vs θ/δ_c), the bias on the grid, and the leak (``leak``, its constant and its floor, vs
β·u). Each neuron whose spike differs is replayed from the layer's input (the same on both sides
up to that step) in float64 (exact for these integers) with effect sets: the cause is the first
effect in :data:`CAUSES` order whose exact form alone, all others as the chip does them, brings
back the trained spikes up to that step; failing that, the first whose chip form alone, all others
exact, departs from them; failing both, ``several roundings together``. When the exact replay of
every effect departs from the trained model itself, the trained model's own float32 arithmetic
decided the spike (``float32 rounding in the trained model``). The all-chip replay equals the
chip's spikes by construction (counted in ``replay_checks``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from qsnn.arith import overflow
from qsnn.errors import DataError
from qsnn.network import IntegerLayer, IntegerNetwork, fold_pool
from qsnn.profiles import ChipProfile

from . import report as rep
from .engine import simulate
from .results import predict

#: Samples per chunk: the trained model and the engine record every layer of a chunk.
CHUNK = 128
#: Neurons shown per example divergence.
SHOWN_NEURONS = 4

RESET, DELAY, RAIL, SHIFT, THETA, BIAS, LEAK = (
    "reset mode",
    "synaptic delay",
    "saturation or wrap at the rail",
    "current shift floor",
    "threshold rounding",
    "bias rounding",
    "leak rounding",
)
#: The effects, in the order a cause is looked for (a semantic difference before a rail, a rail before a rounding).
CAUSES = (RESET, DELAY, RAIL, SHIFT, THETA, BIAS, LEAK)
FLOAT = "float32 rounding in the trained model"
SEVERAL = "several roundings together"
UPSTREAM = "upstream difference propagated"
TRUNCATED = "synaptic delay (the trained model's last steps never reach the output)"

RunFloat = Callable[[np.ndarray], Mapping[str, np.ndarray]]
Compiler = Callable[[ChipProfile], tuple[IntegerNetwork, dict[str, Any]]]


@dataclass(frozen=True)
class TrainedNeurons:
    """The trained model's LIF constants of one layer (what the chip's integers approximate).

    Attributes:
        beta: β; theta: θ (real units); reset: ``"subtract"`` or ``"zero"``.
        offset: o_c, the constant current per output channel in real units (synaptic bias through BatchNorm).
        delay: the trained synaptic delay (steps).
    """

    beta: float
    theta: float
    reset: str
    offset: np.ndarray
    delay: int = 0


# --------------------------------------------------------------------------------------------------
# The replay of single neurons


@dataclass
class _Sites:
    """Neurons to replay, one row each: their constants (grid units) and their synaptic sums over aligned steps."""

    acc: np.ndarray  # (S, T) int64, aligned steps
    theta: np.ndarray  # θ_c
    theta_exact: np.ndarray  # θ/δ_c
    bias: np.ndarray  # b_c
    bias_exact: np.ndarray  # o_c/δ_c
    u0_chip: np.ndarray  # membrane before the first compared step (chip's warm-up), grid units
    u0_exact: np.ndarray
    start: np.ndarray  # first aligned step of the replay (per site)
    stop: np.ndarray  # the divergence step (inclusive)


def _leak_real(u: np.ndarray, layer: IntegerLayer, p: ChipProfile) -> np.ndarray:
    """The profile's leak of :func:`qsnn.arith.leak` on membranes that may be non-integers (floor where it floors)."""
    L, F = int(layer.leak_const), p.leak_bits
    if p.leak == "mul":
        return np.floor(u * L / 2.0**F)
    if p.leak == "shift":
        return u - np.floor(u / 2.0**L)
    x = u * (2**F - L)
    return np.sign(x) * np.floor(np.abs(x) / 2.0**F)


def _replay(sites: _Sites, layer: IntegerLayer, p: ChipProfile, tr: TrainedNeurons, chip: frozenset) -> np.ndarray:
    """Spikes (S, T) of the sites' neurons with the effects in ``chip`` as the chip does them, the others exact."""
    S, T = sites.acc.shape
    e, s = layer.weight_exp, layer.current_shift
    acc = sites.acc.astype(np.float64)
    if SHIFT in chip:  # shl(shl(acc, e), s): exact for e, s ≥ 0, a floor below
        cur = acc * 2.0**e if e >= 0 else np.floor(acc / 2.0**-e)
        cur = cur * 2.0**s if s >= 0 else np.floor(cur / 2.0**-s)
    else:
        cur = acc * 2.0 ** (e + s)
    if RAIL in chip and p.current_bits:  # qsnn.arith.wrap_current, on values that may be non-integers
        half = 2.0 ** (p.current_bits - 1)
        cur = np.where(cur > half, cur - 2 * half, np.where(cur <= -half, cur + 2 * half, cur))
    cur = cur + (sites.bias if BIAS in chip else sites.bias_exact)[:, None]
    theta = sites.theta if THETA in chip else sites.theta_exact
    reset = p.reset if RESET in chip else tr.reset
    u = (sites.u0_chip if DELAY in chip else sites.u0_exact).astype(np.float64)
    z = np.zeros((S, T), dtype=bool)
    for t in range(T):
        live = (t >= sites.start) & (t <= sites.stop)
        if not live.any():
            continue
        r = u > theta
        keep = np.where(r, 0.0, u) if reset == "zero" else u
        leaked = _leak_real(keep, layer, p) if LEAK in chip else tr.beta * keep
        v = leaked + cur[:, t] - (r * theta if reset == "subtract" else 0.0)
        if RAIL in chip:
            v = _overflow_real(v, p)
        u = np.where(live, v, u)
        z[:, t] = live & (u > theta)
    return z


def _overflow_real(v: np.ndarray, p: ChipProfile) -> np.ndarray:
    """:func:`qsnn.arith.overflow` on values that may be non-integers (the integers go through it as they are)."""
    if np.array_equal(v, np.floor(v)) and np.all(np.abs(v) < 2**62):
        return overflow(v.astype(np.int64), p).astype(np.float64)
    if p.overflow == "saturate":
        return np.clip(v, p.membrane_min, p.membrane_max)
    half = 2.0 ** (p.membrane_bits - 1)
    return np.mod(v + half, 2 * half) - half


def _within(z: np.ndarray, ref: np.ndarray, sites: _Sites) -> np.ndarray:
    """Per site: ``z`` equals ``ref`` on every replayed step (start .. stop)."""
    t = np.arange(z.shape[1])[None, :]
    live = (t >= sites.start[:, None]) & (t <= sites.stop[:, None])
    return ~np.any((z != ref) & live, axis=1)


def classify(
    sites: _Sites, layer: IntegerLayer, p: ChipProfile, tr: TrainedNeurons, trained: np.ndarray, chip: np.ndarray
) -> tuple[list[str], int]:
    """The cause of each site's divergence (module docstring) and how many all-chip replays equal the chip."""
    active = [c for c in CAUSES if c != DELAY or np.any(sites.u0_chip != sites.u0_exact)]
    if p.reset == tr.reset:
        active = [c for c in active if c != RESET]
    all_chip = frozenset(CAUSES)
    checks = int(_within(_replay(sites, layer, p, tr, all_chip), chip, sites).sum())
    S = len(sites.acc)
    causes: list[str | None] = [None] * S
    exact_ok = _within(_replay(sites, layer, p, tr, frozenset()), trained, sites)
    for i in np.flatnonzero(~exact_ok):
        causes[i] = FLOAT
    for effect in active:  # its exact form alone brings the trained spikes back
        open_ = [i for i in range(S) if causes[i] is None]
        if not open_:
            break
        ok = _within(_replay(sites, layer, p, tr, all_chip - {effect}), trained, sites)
        for i in open_:
            if ok[i]:
                causes[i] = effect
    for effect in active:  # its chip form alone departs from them
        open_ = [i for i in range(S) if causes[i] is None]
        if not open_:
            break
        ok = _within(_replay(sites, layer, p, tr, frozenset({effect})), trained, sites)
        for i in open_:
            if not ok[i]:
                causes[i] = effect
    return [c or SEVERAL for c in causes], checks


# --------------------------------------------------------------------------------------------------
# Synaptic sums of chosen neurons


def _site_sums(layer: IntegerLayer, inputs: np.ndarray, neuron: tuple[int, ...], T: int, delay: int) -> np.ndarray:
    """acc_t (T,) of one neuron from the layer's input ``inputs`` (T, ...) over the trained model's steps
    (input of step t − delay, zeros before): the folded kernel on the padded input window, or a dense row."""
    w = np.asarray(layer.weight, dtype=np.int64)
    if layer.kind == "dense":
        flat = inputs.reshape(len(inputs), -1).astype(np.int64)
        sums = flat @ w[neuron[0]]
    else:
        c, y, x = neuron
        kernel = fold_pool(w[c : c + 1], layer.pool, stride=layer.stride)[0]
        side, step, pad = kernel.shape[-1], layer.stride * layer.pool, layer.padding
        padded = np.pad(inputs.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        window = padded[:, :, y * step : y * step + side, x * step : x * step + side]
        sums = np.einsum("tchw,chw->t", window, kernel)
    out = np.zeros(T, dtype=np.int64)
    if delay < T:
        out[delay:] = sums[: T - delay]
    return out


# --------------------------------------------------------------------------------------------------
# The explanation


class _Tally:
    """What :func:`explain` accumulates over chunks (bounded: counts, plus records of differing predictions)."""

    def __init__(self, net: IntegerNetwork, offsets: list[int]) -> None:
        T = net.num_steps
        self.names = [layer.name for layer in net.layers]
        self.offsets = offsets
        self.equal = [np.zeros(T, np.int64) for _ in net.layers]
        self.total = [np.zeros(T, np.int64) for _ in net.layers]
        self.starts = {name: {} for name in self.names}  # layer → cause → divergences started
        self.neuron_causes: dict[str, int] = {}
        self.samples = 0
        self.samples_diverging = 0
        self.pred_float: list[np.ndarray] = []
        self.pred_chip: list[np.ndarray] = []
        self.examples: list[dict[str, Any]] = []
        self.replay_checks = [0, 0]


def explain(
    net: IntegerNetwork,
    x: np.ndarray,
    labels: np.ndarray | None,
    run_float: RunFloat,
    trained: Sequence[TrainedNeurons],
    *,
    chunk: int = CHUNK,
    batch_size: int = 256,
    progress: bool = False,
    compile: Compiler | None = None,
    accuracy: Callable[[np.ndarray], float] | None = None,
) -> dict[str, Any]:
    """Explain where the integer network's spikes part from the trained model's (module docstring).

    Args:
        net: the compiled network; ``x`` its integer inputs; ``labels`` for accuracies (or None).
        run_float: the trained model on integer inputs with every layer recorded: ``{"z1".., "u1"..}``
            (T, n, ...) float32 (e.g. ``FloatEvaluator(path).run(x, record=True)``).
        trained: the trained LIF constants of every layer (:class:`TrainedNeurons`).
        compile: the compiler (``profile → (network, report)``), to re-simulate the suggested
            post-training changes; None skips them.
        accuracy: counts (N, classes) → accuracy (default: mean of ``predict == labels``).

    Returns a JSON-ready dict: ``agreement`` (per layer, per step), ``causes`` (divergences started
    per cause, per layer), ``examples`` (every sample whose prediction differs), ``fixes``.
    """
    if len(trained) != len(net.layers):
        raise DataError(f"explain needs the trained constants of all {len(net.layers)} layers, got {len(trained)}")
    started = time.perf_counter()
    p = net.profile
    delta = p.synaptic_delay - trained[0].delay
    offsets = [(i + 1) * delta for i in range(len(net.layers))]
    tally = _Tally(net, offsets)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(x), unit="sample", desc=f"explain ({p.name})", leave=False)
    try:
        for s0 in range(0, len(x), chunk):
            xc = np.asarray(x[s0 : s0 + chunk])
            _explain_chunk(net, xc, s0, None if labels is None else labels[s0 : s0 + chunk], run_float, trained, tally)
            if bar is not None:
                bar.update(len(xc))
    finally:
        if bar is not None:
            bar.close()
    out = _summary(net, x, labels, trained, tally, compile, accuracy, batch_size, time.perf_counter() - started)
    out["seconds"]["total"] = time.perf_counter() - started
    return out


def _aligned(off: int, T: int) -> tuple[int, int]:
    """Trained-model steps [a, b) that have a chip step t + off."""
    return max(0, -off), min(T, T - off)


def _explain_chunk(
    net: IntegerNetwork,
    xc: np.ndarray,
    s0: int,
    labels: np.ndarray | None,
    run_float: RunFloat,
    trained: Sequence[TrainedNeurons],
    tally: _Tally,
) -> None:
    T, n = net.num_steps, len(xc)
    chip = simulate(net, xc, record=True, record_membranes=True, stats=False)
    flt = run_float(xc)
    L = len(net.layers)
    z_f = [np.asarray(flt[f"z{i + 1}"]) > 0.5 for i in range(L)]
    u_f = [np.asarray(flt.get(f"u{i + 1}")) if f"u{i + 1}" in flt else None for i in range(L)]
    z_c = [chip.spikes[f"z{i + 1}"].astype(bool) for i in range(L)]
    u_c = [chip.membranes[f"u{i + 1}"] for i in range(L)]
    pf, pc = predict(z_f[-1].sum(axis=0).reshape(n, -1)), chip.predictions
    tally.pred_float.append(pf)
    tally.pred_chip.append(pc)
    tally.samples += n
    first = np.full((L, n), np.iinfo(np.int64).max)  # first aligned step where the layer differs
    local: dict[tuple[int, int], tuple[str, list[dict[str, Any]]]] = {}
    for li, layer in enumerate(net.layers):
        off, tr = tally.offsets[li], trained[li]
        a, b = _aligned(off, T)
        if b <= a:
            continue
        F = z_f[li][a:b].reshape(b - a, n, -1)
        C = z_c[li][a + off : b + off].reshape(b - a, n, -1)
        diff = F != C
        tally.equal[li][a:b] += (~diff).sum(axis=(1, 2))
        tally.total[li][a:b] += n * F.shape[2]
        any_t = diff.any(axis=2)
        has = any_t.any(axis=0)
        first[li, has] = a + np.argmax(any_t[:, has], axis=0)
        shape = z_f[li].shape[2:]
        for k in np.flatnonzero(has):
            t = int(first[li, k])
            if li > 0 and first[li - 1, k] <= t - tr.delay:
                tally.starts[layer.name][UPSTREAM] = tally.starts[layer.name].get(UPSTREAM, 0) + 1
                continue
            flat = np.flatnonzero(diff[t - a, k])
            neurons = [tuple(int(v) for v in np.unravel_index(j, shape)) for j in flat]
            causes, details = _local_causes(net, li, xc, z_f, u_f, z_c, u_c, tally, trained, k, t, neurons, flat)
            for c in causes:
                tally.neuron_causes[c] = tally.neuron_causes.get(c, 0) + 1
            cause = max(CAUSES + (FLOAT, SEVERAL), key=lambda c: (causes.count(c), -_rank(c)))
            tally.starts[layer.name][cause] = tally.starts[layer.name].get(cause, 0) + 1
            local[(li, k)] = (cause, details)
    tally.samples_diverging += int((first < np.iinfo(np.int64).max).any(axis=0).sum())
    for k in np.flatnonzero(pf != pc):
        tally.examples.append(_example(net, s0 + int(k), k, labels, pf, pc, first, local, tally))


def _rank(cause: str) -> int:
    order = CAUSES + (FLOAT, SEVERAL)
    return order.index(cause) if cause in order else len(order)


def _local_causes(
    net: IntegerNetwork,
    li: int,
    xc: np.ndarray,
    z_f: list[np.ndarray],
    u_f: list[np.ndarray | None],
    z_c: list[np.ndarray],
    u_c: list[np.ndarray],
    tally: _Tally,
    trained: Sequence[TrainedNeurons],
    k: int,
    t: int,
    neurons: list[tuple[int, ...]],
    flat: np.ndarray,
) -> tuple[list[str], list[dict[str, Any]]]:
    """Replay the neurons (of sample k, layer li) whose spikes part at aligned step t; their causes and details."""
    p, T = net.profile, net.num_steps
    layer, tr, off = net.layers[li], trained[li], tally.offsets[li]
    a, b = _aligned(off, T)
    if li == 0:
        inputs = np.repeat(xc[k][None], T, axis=0) if net.encoding == "static" else xc[k]
    else:
        inputs = z_f[li - 1][:, k].astype(np.uint8)
    S = len(neurons)
    acc = np.stack([_site_sums(layer, inputs, nr, T, tr.delay) for nr in neurons])
    ch = np.array([nr[0] for nr in neurons])
    unit = np.asarray(layer.scale, np.float64)[ch]
    uc = u_c[li][:, k].reshape(T, -1)[:, flat].T.astype(np.float64)  # (S, T) chip steps
    zc = z_c[li][:, k].reshape(T, -1)[:, flat].T
    zf = z_f[li][:, k].reshape(T, -1)[:, flat].T
    uf = None if u_f[li] is None else u_f[li][:, k].reshape(T, -1)[:, flat].T.astype(np.float64)
    # aligned (trained-model) step index for the chip's arrays: chip step = t + off
    chip_al = np.zeros((S, T), bool)
    chip_al[:, a:b] = zc[:, a + off : b + off]
    u0_chip = uc[:, a + off - 1] if a + off > 0 else np.zeros(S)
    u0_exact = uf[:, a - 1] / unit if a > 0 and uf is not None else np.zeros(S)
    sites = _Sites(
        acc=acc,
        theta=np.asarray(layer.threshold, np.float64)[ch],
        theta_exact=tr.theta / unit,
        bias=np.asarray(layer.bias, np.float64)[ch],
        bias_exact=np.asarray(tr.offset, np.float64)[ch] / unit,
        u0_chip=u0_chip,
        u0_exact=u0_exact,
        start=np.full(S, a),
        stop=np.full(S, t),
    )
    causes, checks = classify(sites, layer, p, tr, zf, chip_al)
    tally.replay_checks[0] += checks
    tally.replay_checks[1] += S
    details = []
    for i in range(min(S, SHOWN_NEURONS)):
        c = int(ch[i])
        details.append(
            {
                "neuron": list(neurons[i]),
                "cause": causes[i],
                "trained_spike": bool(zf[i, t]),
                "chip_spike": bool(chip_al[i, t]),
                "u_trained": None if uf is None else float(uf[i, t]),
                "u_chip": float(uc[i, t + off] * unit[i]),
                "u_chip_grid": int(uc[i, t + off]),
                "theta": float(tr.theta),
                "theta_chip": float(layer.threshold[c] * unit[i]),
                "theta_chip_grid": int(layer.threshold[c]),
                "grid_unit": float(unit[i]),
            }
        )
    return causes, details


def _example(
    net: IntegerNetwork,
    index: int,
    k: int,
    labels: np.ndarray | None,
    pf: np.ndarray,
    pc: np.ndarray,
    first: np.ndarray,
    local: dict,
    tally: _Tally,
) -> dict[str, Any]:
    """The record of one sample whose prediction differs: its first divergence and the layers it reached."""
    big = np.iinfo(np.int64).max
    record: dict[str, Any] = {
        "sample": index,
        "label": None if labels is None else int(labels[k]),
        "prediction_trained": int(pf[k]),
        "prediction_chip": int(pc[k]),
        "layers": [],
    }
    origin = None
    for li, layer in enumerate(net.layers):
        t = int(first[li, k])
        if t == big:
            continue
        cause, details = local.get((li, k), (UPSTREAM, []))
        record["layers"].append({"layer": layer.name, "step": t, "cause": cause})
        if origin is None or (t, li) < (origin[0], origin[1]):
            origin = (t, li, cause, details)
    if origin is None:
        record["first"] = {"cause": TRUNCATED if any(tally.offsets) else SEVERAL}
    else:
        t, li, cause, details = origin
        record["first"] = {
            "layer": net.layers[li].name,
            "step": t,
            "chip_step": t + tally.offsets[li],
            "cause": cause,
            "neurons": details,
        }
    return record


# --------------------------------------------------------------------------------------------------
# Totals and fixes


#: Fields the chip's semantics fix (not post-training): a change of them is re-simulated as a what-if only.
SEMANTIC_FIELDS = ("reset", "synaptic_delay")


def _fixes_for(cause: str, p: ChipProfile, tr: TrainedNeurons) -> tuple[str, list[dict[str, Any]]]:
    """What to change for a cause: (advice, profile changes to re-simulate; a change of
    :data:`SEMANTIC_FIELDS` is the what-if of training for the chip, not something the chip runs)."""
    wider = {"membrane_bits": min(p.membrane_bits + 8, 62 - p.leak_bits if p.leak != "shift" else 62)}
    finer = {"frac_bits": p.frac_bits + 2} if p.frac_bits + 2 < p.membrane_bits else {}
    if cause in (THETA, BIAS, SHIFT):
        return (
            "more grid resolution: a wider membrane lets the compiler keep more guard bits (--profile-set "
            "membrane_bits=N), a larger frac_bits adds them where the bound allows",
            [c for c in (wider, finer) if c],
        )
    if cause == LEAK:
        leak = {"leak_bits": min(p.leak_bits + 4, 30, 63 - p.membrane_bits)} if p.leak != "shift" else {}
        return "a finer leak constant (--profile-set leak_bits=N), or train with β on the grid (--profile)", [
            c for c in (leak,) if c and c["leak_bits"] != p.leak_bits
        ]
    if cause == RAIL:
        return "a wider membrane (--profile-set membrane_bits=N) or smaller currents (train with --profile)", [wider]
    if cause == RESET:
        return (
            f"train with the chip's {p.reset} reset (qsnn-train run --profile {p.name}); not a post-training field",
            [{"reset": tr.reset}],
        )
    if cause in (DELAY, TRUNCATED):
        return (
            f"train with the chip's synaptic delay (qsnn-train run --profile {p.name}), or more steps T; "
            "not a post-training field",
            [{"synaptic_delay": tr.delay}],
        )
    if cause == FLOAT:
        return "none on the chip: the trained model's own float32 rounding decided this spike", []
    if cause == SEVERAL:
        return "more grid resolution (as for threshold rounding)", [c for c in (wider, finer) if c]
    return "fix the layer where the divergence started", []


def _summary(
    net: IntegerNetwork,
    x: np.ndarray,
    labels: np.ndarray | None,
    trained: Sequence[TrainedNeurons],
    tally: _Tally,
    compile: Compiler | None,
    accuracy: Callable[[np.ndarray], float] | None,
    batch_size: int,
    seconds: float,
) -> dict[str, Any]:
    p = net.profile
    pf = np.concatenate(tally.pred_float) if tally.pred_float else np.zeros(0, np.int64)
    pc = np.concatenate(tally.pred_chip) if tally.pred_chip else np.zeros(0, np.int64)
    agreement = {
        name: [None if tot == 0 else 100.0 * eq / tot for eq, tot in zip(tally.equal[i], tally.total[i])]
        for i, name in enumerate(tally.names)
    }
    totals: dict[str, int] = {}
    for per_layer in tally.starts.values():
        for cause, count in per_layer.items():
            totals[cause] = totals.get(cause, 0) + count
    for ex in tally.examples:
        if ex["first"]["cause"] == TRUNCATED:
            totals[TRUNCATED] = totals.get(TRUNCATED, 0) + 1
    origin_causes: dict[str, int] = {}
    for ex in tally.examples:
        origin_causes[ex["first"]["cause"]] = origin_causes.get(ex["first"]["cause"], 0) + 1
    out: dict[str, Any] = {
        "profile": p.name,
        "samples": tally.samples,
        "samples_diverging": tally.samples_diverging,
        "predictions_differ": int(np.sum(pf != pc)),
        "alignment": {
            "delta": tally.offsets[0] if tally.offsets else 0,
            "chip_step_offset": dict(zip(tally.names, tally.offsets)),
            "note": "chip step t + offset is compared with the trained model's step t" if any(tally.offsets) else "",
        },
        "agreement_pct": agreement,
        "agreement_pct_layer": {
            name: (100.0 * tally.equal[i].sum() / tally.total[i].sum() if tally.total[i].sum() else None)
            for i, name in enumerate(tally.names)
        },
        "causes": {"started": totals, "per_layer": tally.starts, "neurons": tally.neuron_causes},
        "causes_of_differing_predictions": origin_causes,
        "replay_checks": {"equal_to_chip": tally.replay_checks[0], "neurons": tally.replay_checks[1]},
        "examples": tally.examples,
    }
    out["fixes"] = _measure_fixes(net, x, labels, trained, totals, origin_causes, compile, accuracy, batch_size, pf)
    out["seconds"] = {"explain": seconds}
    return out


def _measure_fixes(
    net: IntegerNetwork,
    x: np.ndarray,
    labels: np.ndarray | None,
    trained: Sequence[TrainedNeurons],
    totals: Mapping[str, int],
    origin_causes: Mapping[str, int],
    compile: Compiler | None,
    accuracy: Callable[[np.ndarray], float] | None,
    batch_size: int,
    pred_float: np.ndarray,
) -> list[dict[str, Any]]:
    """One row per cause seen (and per semantic difference or clamped membrane present, which act after a first
    divergence too): the advice and the measured effect of its change (re-simulated; what-if where not post-training)."""
    p = net.profile
    score = accuracy or (lambda counts: float(np.mean(predict(counts) == labels)) if labels is not None else None)
    base = simulate(net, x, batch_size=batch_size, stats=False)
    base_row = {
        "accuracy": score(base.counts),
        "predictions_equal_pct": rep.percent(int(np.sum(base.predictions == pred_float)), len(pred_float)),
    }
    base_row["saturation_events"] = int(sum(layer.saturation_events for layer in base.layers))
    measured: dict[tuple, dict[str, Any]] = {}
    rows = []
    causes = sorted(set(totals) | set(origin_causes), key=lambda c: (-origin_causes.get(c, 0), -totals.get(c, 0)))
    # semantic differences and a clamped membrane act after the first divergence too: measured whenever present
    for cause, present in (
        (RESET, p.reset != trained[0].reset),
        (DELAY, p.synaptic_delay != trained[0].delay),
        (RAIL, base_row["saturation_events"] > 0),
    ):
        if present and cause not in causes:
            causes.append(cause)
    for cause in causes:
        if cause == UPSTREAM:
            continue
        advice, changes = _fixes_for(cause, p, trained[0])
        row: dict[str, Any] = {
            "cause": cause,
            "divergences_started": totals.get(cause, 0),
            "differing_predictions_started": origin_causes.get(cause, 0),
            "advice": advice,
            "resimulated": [],
        }
        for change in changes if compile is not None else []:
            key = tuple(sorted(change.items()))
            if key not in measured:
                measured[key] = _resimulate(net, x, change, compile, score, batch_size, pred_float)
            row["resimulated"].append(measured[key])
        rows.append(row)
    return [{"baseline": base_row}] + rows


def _resimulate(
    net: IntegerNetwork,
    x: np.ndarray,
    change: dict[str, int],
    compile: Compiler,
    score: Callable[[np.ndarray], Any],
    batch_size: int,
    pred_float: np.ndarray,
) -> dict[str, Any]:
    from qsnn.errors import ProfileError

    p = net.profile
    text = " ".join(f"--profile-set {k}={v}" for k, v in change.items())
    row: dict[str, Any] = {"change": change, "option": text}
    semantic = [k for k in change if k in SEMANTIC_FIELDS]
    if semantic:
        row["not_the_chip"] = f"what-if: the chip's {', '.join(semantic)} as trained; retrain for the chip instead"
    elif p.fixed_shift:
        row["not_the_chip"] = f"what-if: the {p.name} chip's registers are fixed"
    try:
        other, _ = compile(p.replace(**change))
    except ProfileError as exc:
        row["error"] = str(exc).splitlines()[0]
        return row
    res = simulate(other, x, batch_size=batch_size)
    row["accuracy"] = score(res.counts)
    row["predictions_equal_pct"] = rep.percent(int(np.sum(res.predictions == pred_float)), len(pred_float))
    row["saturation_events"] = sum(layer.saturation_events for layer in res.layers)
    return row


# --------------------------------------------------------------------------------------------------
# Plot and printing


def plot_agreement(path: Any, explanation: Mapping[str, Any], title: str = "") -> None:
    """A PNG: per layer, the share of spike entries equal to the trained model's over time steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from qsnn.atomic import atomic_open
    from qsnn.output_guard import PLOT_KEY, SIM_PLOT_FORMAT

    fig, ax = plt.subplots(figsize=(8, 3.6), constrained_layout=True)
    for name, values in explanation["agreement_pct"].items():
        steps = [t for t, v in enumerate(values) if v is not None]
        ax.plot(steps, [values[t] for t in steps], marker=".", label=name)
    ax.set_xlabel("time step (trained model)")
    ax.set_ylabel("spike entries equal (%)")
    ax.set_title(
        f"agreement with the trained model per layer ({explanation['samples']} samples, "
        f"{explanation['predictions_differ']} predictions differ)",
        fontsize=9,
    )
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=10)
    with atomic_open(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=110, metadata={PLOT_KEY: SIM_PLOT_FORMAT})
    plt.close(fig)


def summary_lines(explanation: Mapping[str, Any], examples: int = 3) -> list[str]:
    """The explanation as lines for a terminal: the cause table, example divergences, the fixes."""
    e = explanation
    lines = [
        f"explain ({e['profile']}): {e['samples']} samples, {e['samples_diverging']} with some spike differing, "
        f"{e['predictions_differ']} predictions differ"
    ]
    if e["alignment"]["note"]:
        lines.append(f"  aligned: {e['alignment']['note']} ({e['alignment']['chip_step_offset']})")
    lines.append(
        "  spike entries equal per layer: "
        + ", ".join(f"{k} {rep.format_percent(v)}" for k, v in e["agreement_pct_layer"].items() if v is not None)
    )
    lines.append("")
    lines.append(f"  {'cause':<42} {'started':>8} {'of them first in a differing prediction':>40}")
    started = e["causes"]["started"]
    first = e["causes_of_differing_predictions"]
    for cause in sorted(set(started) | set(first), key=lambda c: (-first.get(c, 0), -started.get(c, 0))):
        lines.append(f"  {cause:<42} {started.get(cause, 0):>8} {first.get(cause, 0):>40}")
    checks = e["replay_checks"]
    lines.append(
        f"  (replay of the chip's arithmetic equal to the chip: {checks['equal_to_chip']}/{checks['neurons']} neurons)"
    )
    for ex in e["examples"][:examples]:
        f = ex["first"]
        lines.append("")
        head = f"  sample {ex['sample']} (label {ex['label']}): trained predicts {ex['prediction_trained']}, chip {ex['prediction_chip']}"
        lines.append(head)
        if "layer" not in f:
            lines.append(f"    no aligned spike differs: {f['cause']}")
            continue
        lines.append(
            f"    first divergence: layer {f['layer']} step {f['step']} (chip step {f['chip_step']}): {f['cause']}"
        )
        for nr in f["neurons"]:
            ut = "n/a" if nr["u_trained"] is None else f"{nr['u_trained']:.4f}"
            lines.append(
                f"      neuron {tuple(nr['neuron'])}: trained u={ut} vs θ={nr['theta']:.4f} → "
                f"{int(nr['trained_spike'])}; chip u={nr['u_chip']:.4f} ({nr['u_chip_grid']} units) vs "
                f"θ_c={nr['theta_chip']:.4f} ({nr['theta_chip_grid']}) → {int(nr['chip_spike'])}: {nr['cause']}"
            )
        reached = ", ".join(f"{r['layer']}@{r['step']}" for r in ex["layers"])
        lines.append(f"    layers differing (first step): {reached}")
    lines.append("")
    base = e["fixes"][0]["baseline"]
    lines.append(
        f"  what to change (measured on these samples; now: accuracy {_pct(base['accuracy'])}, "
        f"predictions equal {base['predictions_equal_pct']:.2f} %)"
    )
    measured: dict[str, dict[str, Any]] = {}
    for row in e["fixes"][1:]:
        options = [r["option"] for r in row["resimulated"]]
        lines.append(f"  - {row['cause']}: {row['advice']}" + (f" (measured: {', '.join(options)})" if options else ""))
        measured.update({r["option"]: r for r in row["resimulated"]})
    for option, r in measured.items():
        if "error" in r:
            lines.append(f"      {option}: does not compile ({r['error']})")
            continue
        lines.append(
            f"      {option}: accuracy {_pct(r['accuracy'])}, predictions equal "
            f"{r['predictions_equal_pct']:.2f} %, saturation events {r['saturation_events']}"
            + (f" ({r['not_the_chip']})" if "not_the_chip" in r else "")
        )
    return lines


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.2f} %"
