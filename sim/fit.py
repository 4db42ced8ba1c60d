"""The smallest safe integer form: search the post-training fields for the narrowest membrane.

``fit(compile, profile, x, score, float_counts)`` compiles the model under profiles that differ
only in fields chosen after training — the membrane width ``membrane_bits``, the guard bits
``frac_bits`` (not on a ``fixed_shift`` profile: Lava fixes ``a_in << 6``) and the leak constant's
``leak_bits`` — simulates each on the given data, and returns the narrowest membrane that is

* free of saturation: **proven** when the compiler's worst-case bound fits the membrane (the
  compile succeeds without ``allow_saturation``: no input can saturate it), else **observed** (it
  compiles only with ``allow_saturation`` and no saturation event occurs on these samples: a
  statement about this data, reported as such);
* and within ``tolerance`` of the trained model's accuracy on the same samples.

Widths run upwards from :data:`MIN_MEMBRANE_BITS` to the profile's own; at each width every
``frac_bits`` from 0 to the profile's is tried (the compiler takes fewer guard bits on a layer
whose bound needs it, so several values often give the same network: simulated once). At the
chosen width the leak constant is narrowed (``leak_bits`` downwards) while the result still holds
and the realised β keeps the neuron's time constant within :data:`MAX_TAU_CHANGE`.
The membrane memory is Σ_layers neurons × membrane_bits (one register per neuron), against the
profile's.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from qsnn.arith import effective_beta
from qsnn.errors import ProfileError
from qsnn.network import IntegerNetwork
from qsnn.profiles import ChipProfile

from . import report as rep
from .engine import simulate
from .results import predict

#: The narrowest membrane tried.
MIN_MEMBRANE_BITS = 6
#: The narrowest leak constant tried (in steps of 2 below the profile's).
MIN_LEAK_BITS = 4
#: How far a narrower leak constant may move the neuron's time constant τ = 1/(1 − β) from the
#: profile's (relative): past that the chip runs another neuron (β = 0.99 on a 4-bit leak is β = 1,
#: no leak at all), which a fit of post-training fields must not do, whatever the accuracy on the data.
MAX_TAU_CHANGE = 0.10

Compiler = Callable[..., tuple[IntegerNetwork, dict[str, Any]]]


def _same_leak(row: dict[str, Any], baseline: dict[str, Any]) -> bool:
    """The row's realised β keeps the baseline's time constant τ = 1/(1 − β) within MAX_TAU_CHANGE."""
    b_new, b_base = row.get("beta_chip"), baseline.get("beta_chip")
    if b_new is None or b_base is None:
        return False
    if b_base >= 1.0:
        return b_new >= 1.0
    if b_new >= 1.0:
        return False
    return abs((1 - b_base) / (1 - b_new) - 1) <= MAX_TAU_CHANGE


def membrane_memory_bits(net: IntegerNetwork, membrane_bits: int | None = None) -> int:
    """Bits of membrane state: one ``membrane_bits``-wide register (the profile's by default) per neuron."""
    width = net.profile.membrane_bits if membrane_bits is None else membrane_bits
    return sum(int(np.prod(shape)) for shape in net.shapes()) * width


def _signature(net: IntegerNetwork) -> tuple:
    """What makes two compiles the same network (shift, thresholds, biases, leak of every layer)."""
    return tuple(
        (layer.current_shift, layer.weight_exp, layer.leak_const, layer.threshold.tobytes(), layer.bias.tobytes())
        + (np.asarray(layer.weight).tobytes(),)
        for layer in net.layers
    )


def fit(
    compile: Compiler,
    profile: ChipProfile,
    x: np.ndarray,
    score: Callable[[np.ndarray], float],
    float_counts: np.ndarray,
    *,
    tolerance: float = 0.005,
    batch_size: int = 256,
    progress: bool = False,
) -> dict[str, Any]:
    """Search ``membrane_bits``, ``frac_bits`` and ``leak_bits`` (module docstring).

    Args:
        compile: ``compile(profile, allow_saturation=...) -> (network, report)``; raises ProfileError
            when the profile cannot hold the network.
        profile: the profile to start from (its other fields stay as they are).
        x: the inputs; ``score(counts)`` their accuracy; ``float_counts`` the trained model's output
            spike counts on them.
        tolerance: the largest accuracy loss against the trained model accepted (a fraction: 0.005 = 0.5 pp).

    Returns a JSON-ready dict: ``rows`` (every candidate tried), ``chosen`` (or None), the
    ``--profile-set`` line, accuracies and the membrane memory against ``profile``'s.
    """
    started = time.perf_counter()
    acc_trained = score(float_counts)
    pred_float = predict(float_counts)
    rows: list[dict[str, Any]] = []
    seen: dict[tuple, dict[str, Any]] = {}
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(unit="candidate", desc=f"fit ({profile.name})", leave=False)

    def try_profile(changes: dict[str, int]) -> dict[str, Any]:
        row: dict[str, Any] = dict(changes)
        try:
            candidate = profile.replace(**changes)
        except ProfileError as exc:
            row["error"] = str(exc).splitlines()[0]
            return row
        safety = "proven"
        try:
            net, _ = compile(candidate)
        except ProfileError:
            try:
                net, _ = compile(candidate, allow_saturation=True)
                safety = "observed"
            except ProfileError as exc:
                row["error"] = str(exc).splitlines()[0]
                rows.append(row)
                return row
        key = (safety, _signature(net))
        if key in seen:
            row.update({k: v for k, v in seen[key].items() if k not in changes})
            # the row it equals may not name the field (the baseline names only membrane_bits): the profile's own
            row["same_as"] = {k: seen[key].get(k, getattr(profile, k)) for k in changes}
        else:
            res = simulate(net, x, batch_size=batch_size, stats=False)
            sat = sum(layer.saturation_events for layer in res.layers)
            acc = score(res.counts)
            row.update(
                {
                    "accuracy": acc,
                    "difference": acc - acc_trained,
                    "predictions_equal_pct": rep.percent(int(np.sum(res.predictions == pred_float)), len(pred_float)),
                    "saturation_events": int(sat),
                    "saturation_free": "proven" if safety == "proven" else ("observed" if sat == 0 else "no"),
                    "current_shifts": [layer.current_shift for layer in net.layers],
                    "beta_chip": effective_beta(net.layers[0].leak_const, candidate),
                    "membrane_memory_bits": membrane_memory_bits(net),
                }
            )
            seen[key] = row
        row["ok"] = row["saturation_free"] != "no" and row["accuracy"] >= acc_trained - tolerance - 1e-12
        rows.append(row)
        if bar is not None:
            bar.update(1)
        return row

    try:
        baseline = try_profile({"membrane_bits": profile.membrane_bits})
        frac_values = [profile.frac_bits] if profile.fixed_shift else list(range(profile.frac_bits + 1))
        chosen = None
        for bits in range(MIN_MEMBRANE_BITS, profile.membrane_bits + 1):
            passing = []
            for f in frac_values:
                if f >= bits:
                    continue
                row = try_profile({"membrane_bits": bits, "frac_bits": f})
                if row.get("ok"):
                    passing.append(row)
            if passing:
                chosen = max(  # proven first, then accuracy, agreement, and the most guard bits
                    passing,
                    key=lambda r: (
                        r["saturation_free"] == "proven",
                        r["accuracy"],
                        r["predictions_equal_pct"],
                        r["frac_bits"],
                    ),
                )
                break
        if chosen is not None and profile.leak != "shift":
            leak = profile.leak_bits - 2
            while leak >= MIN_LEAK_BITS:
                row = try_profile(
                    {"membrane_bits": chosen["membrane_bits"], "frac_bits": chosen["frac_bits"], "leak_bits": leak}
                )
                if not row.get("ok") or not _same_leak(row, baseline):
                    break
                chosen = row
                leak -= 2
    finally:
        if bar is not None:
            bar.close()
    out: dict[str, Any] = {
        "profile": profile.name,
        "tolerance_pp": 100 * tolerance,
        "accuracy_trained": acc_trained,
        "baseline": baseline,
        "rows": rows,
        "chosen": chosen,
        "seconds": time.perf_counter() - started,
    }
    if chosen is not None:
        # every field the chosen profile changes from the named one, the caller's own --profile-set included
        fields = profile.replace(
            **{k: chosen[k] for k in ("membrane_bits", "frac_bits", "leak_bits") if k in chosen}
        ).changes()
        out["profile_set"] = f"--profile {profile.name} " + " ".join(
            f"--profile-set {k}={v}" for k, v in fields.items()
        )
        base_bits = baseline.get("membrane_memory_bits")
        if base_bits:
            out["membrane_memory_saved_pct"] = 100.0 * (1 - chosen["membrane_memory_bits"] / base_bits)
    return out


def summary_lines(result: dict[str, Any]) -> list[str]:
    """The search as lines for a terminal: the table of candidates, the choice and the line to use."""
    pct = lambda v: "n/a" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    lines = [
        f"fit ({result['profile']}): narrowest membrane free of saturation within {result['tolerance_pp']:.2f} pp "
        f"of the trained model ({pct(result['accuracy_trained'])})",
        f"  {'membrane':>8} {'frac':>4} {'leak':>4}  {'accuracy':>9} {'diff pp':>8} {'pred. equal':>11} "
        f"{'saturation':>14} {'shifts':>14} {'β (chip)':>9} {'memory':>9}",
    ]
    repeats = 0
    for row in result["rows"]:
        if "same_as" in row and row is not result["chosen"]:
            repeats += 1  # the compiler made the same network as an earlier row: not shown again
            continue
        frac = row.get("frac_bits", "-")
        leak = row.get("leak_bits", "-")
        if "error" in row:
            lines.append(f"  {row['membrane_bits']:>8} {frac:>4} {leak:>4}  does not compile: {row['error'][:90]}")
            continue
        sat = row["saturation_free"] if row["saturation_free"] != "no" else f"{row['saturation_events']} events"
        lines.append(
            f"  {row['membrane_bits']:>8} {frac:>4} {leak:>4}  {pct(row['accuracy']):>9} "
            f"{100 * row['difference']:>+8.2f} {row['predictions_equal_pct']:>10.2f}% {sat:>14} "
            f"{str(row['current_shifts']):>14} {row['beta_chip']:>9.5f} {row['membrane_memory_bits'] / 1000:>7.1f}kb"
            + ("  ok" if row["ok"] else "")
        )
    if repeats:
        lines.append(f"  ({repeats} more candidates compiled to a network already shown and are not repeated)")
    chosen = result["chosen"]
    if chosen is None:
        lines.append("  no membrane up to the profile's width meets both conditions on these samples")
        return lines
    base = result["baseline"]
    lines.append(
        f"  chosen: membrane_bits={chosen['membrane_bits']}, frac_bits={chosen['frac_bits']}"
        + (f", leak_bits={chosen['leak_bits']}" if "leak_bits" in chosen else "")
        + f": accuracy {pct(chosen['accuracy'])} (trained {pct(result['accuracy_trained'])}, default profile "
        f"{pct(base.get('accuracy'))}), saturation {chosen['saturation_free']}"
        + (" (on these samples only)" if chosen["saturation_free"] == "observed" else " (worst case)")
    )
    if "membrane_memory_saved_pct" in result:
        lines.append(
            f"  membrane memory {chosen['membrane_memory_bits']} bits vs {base['membrane_memory_bits']} "
            f"({result['membrane_memory_saved_pct']:.1f} % saved)"
        )
    lines.append(f"  use: {result['profile_set']}")
    return lines
