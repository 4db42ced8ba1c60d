"""Fit checks: does a compiled network fit a target's registers and limits?

Every target checks the network's own profile first (:func:`check_profile_fit`), then its own
:class:`Limits` (:func:`check_fit`); what does not fit gives one :class:`~qsnn.errors.LimitsError`
(a ProfileError) listing every layer and limit at once, each with its fix (:func:`fit_problems`). Targets that store conv kernels
with the pooling folded in (loihi2, nir) read them back with :func:`unfold_pool`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from qsnn.arch import fan_in_fix, smaller_map_fix
from qsnn.errors import LimitsError
from qsnn.network import IntegerLayer, IntegerNetwork, fold_pool
from qsnn.profiles import ChipProfile


@dataclass(frozen=True)
class Limits:
    """What a target can hold; 0 (or None) means no limit. Build it from a profile with
    :func:`profile_limits` (the register fields are the profile's), overriding what a target stores
    differently.

    Attributes:
        target: target name, for messages.
        weight_bits: width of a stored weight (two's complement); weights must lie in the narrow
            range ±(2^(b−1) − 1). Profile: ``weight_bits``.
        threshold_max: largest threshold on the membrane grid. Profile: ``threshold_max``.
        threshold_multiple: thresholds must be multiples of this (Loihi: 2^6). Profile:
            2^``threshold_shift``.
        bias_max: largest |bias| on the membrane grid. Profile: ``bias_max``.
        bias_multiple: biases must be multiples of this (Loihi's netx: bias mantissa << 6). Profile:
            2^``bias_shift``.
        max_neurons: most neurons in one layer. Profile: ``max_neurons``.
        max_fan_in: most synapses into one neuron. Profile: ``max_fan_in``.
        fold_pool: the target stores conv kernels with the pooling folded in: the weight range
            applies to the folded taps (sums of up to p² weights) and the fan-in is C·(k+p−1)²;
            else the weights as they are and C·k² (the IntegerLayer's fan_in). Profile: ``fold_pool``.
    """

    target: str
    weight_bits: int
    threshold_max: int = 0
    threshold_multiple: int = 1
    bias_max: int = 0
    bias_multiple: int = 1
    max_neurons: int = 0
    max_fan_in: int = 0
    fold_pool: bool = False


def folded_fan_in(layer: IntegerLayer) -> int:
    """Synapses into one neuron when p×p sum-pooling is folded into the kernel (side k+s(p−1), stride s·p)."""
    if layer.kind == "dense":
        return layer.fan_in
    side = layer.kernel + layer.stride * (layer.pool - 1)
    return layer.in_channels * side * side


def unfold_pool(folded: np.ndarray, pool: int, stride: int = 1) -> np.ndarray:
    """Inverse of :func:`fold_pool` (exact): the box sum is separable, and along one axis
    ``y[a] = Σ_{i<p} x[a−s·i]`` gives ``x[a] = y[a] − Σ_{i=1}^{p−1} x[a−s·i]`` (s: the conv's stride).

    Raises ValueError if ``folded`` is not the fold of any kernel.
    """
    f = np.asarray(folded, dtype=np.int64)
    if pool == 1:
        return f
    side = f.shape[2]
    k = side - stride * (pool - 1)
    if k < 1:
        raise ValueError("not a pooled kernel")

    def along(y: np.ndarray, axis: int) -> np.ndarray:
        y = np.moveaxis(y, axis, 0)
        x = np.zeros_like(y)
        for a in range(side):
            x[a] = y[a] - sum(x[a - stride * i] for i in range(1, pool) if a - stride * i >= 0)
        if np.any(x[k:]):
            raise ValueError("not a pooled kernel")
        return np.moveaxis(x[:k], 0, axis)

    w = along(along(f, 2), 3)
    if not np.array_equal(fold_pool(w, pool, stride=stride), f):
        raise ValueError("not a pooled kernel")
    return w


def profile_limits(profile: ChipProfile, target: str, **overrides: Any) -> Limits:
    """The limits a profile's registers promise, with ``overrides`` where ``target`` stores a
    field differently (e.g. the fpga tables: another weight width, biases stored unshifted)."""
    limits = Limits(
        target=target,
        weight_bits=profile.weight_bits,
        threshold_max=profile.threshold_max,
        threshold_multiple=1 << profile.threshold_shift,
        bias_max=profile.bias_max,
        bias_multiple=1 << profile.bias_shift,
        max_neurons=profile.max_neurons,
        max_fan_in=profile.max_fan_in,
        fold_pool=profile.fold_pool,
    )
    return dataclasses.replace(limits, **overrides)


def check_fit(net: IntegerNetwork, limits: Limits) -> None:
    """Raise :class:`~qsnn.errors.LimitsError` listing every layer and limit that does not fit (:func:`fit_problems`)."""
    problems = fit_problems(net, limits)
    if problems:
        raise LimitsError(problems, f"the {limits.target} target cannot hold this network")


def fit_problems(net: IntegerNetwork, limits: Limits) -> list[str]:
    """Every limit the network breaks, one sentence each naming the layer, the limit and the fix:
    weight width (on the folded kernel where the target folds pooling), threshold and bias registers
    (range and multiple), neurons per layer, fan-in."""
    problems: list[str] = []
    shapes = net.shapes()
    for i, (layer, shape) in enumerate(zip(net.layers, shapes), start=1):
        where = f"layer {i} ({layer.name})"
        w = np.asarray(layer.weight, dtype=np.int64)
        folded = limits.fold_pool and layer.kind == "conv" and layer.pool > 1
        if folded:
            w = fold_pool(w, layer.pool, stride=layer.stride)
        wmax = (1 << (limits.weight_bits - 1)) - 1
        big = int(np.abs(w).max(initial=0))
        if big > wmax:
            need = big.bit_length() + 1
            what = f"weights (the kernel with its {layer.pool}×{layer.pool} pooling folded in)" if folded else "weights"
            if net.profile.weight_bits > limits.weight_bits:  # the profile was widened beyond what the target stores
                fix = (
                    f"The network was compiled with weight_bits={net.profile.weight_bits}: compile it with "
                    f"--profile-set weight_bits={limits.weight_bits} (or fewer) for this target."
                )
            else:
                fix = (
                    f"Compile it with wider weights (--profile-set weight_bits={max(need, limits.weight_bits + 1)}) "
                    f"where the target allows, or for a {limits.weight_bits}-bit profile."
                )
            problems.append(
                f"{where}: {what} reach |{big}|, which needs {need}-bit two's complement; the "
                f"{limits.target} target stores {limits.weight_bits}-bit weights (narrow range ±{wmax}). {fix}"
            )
        problems += _register_problems(
            where, "threshold", layer.threshold, limits.threshold_max, limits.threshold_multiple, limits.target
        )
        problems += _register_problems(
            where, "bias", layer.bias, limits.bias_max, limits.bias_multiple, limits.target, signed=True
        )
        neurons = int(np.prod(shape))
        if limits.max_neurons and neurons > limits.max_neurons:
            fix = smaller_map_fix(tuple(shape), limits.max_neurons, f"layer {layer.name}", "neurons")
            problems.append(
                f"{where}: {neurons} neurons {tuple(shape)} exceed the {limits.target} target's limit of "
                f"{limits.max_neurons} neurons per layer (max_neurons); {fix}."
            )
        fan_in = folded_fan_in(layer) if limits.fold_pool else layer.fan_in
        if limits.max_fan_in and fan_in > limits.max_fan_in:
            how = " with the pooling folded into the kernel" if limits.fold_pool and layer.pool > 1 else ""
            source = net.layers[i - 2].name if i > 1 else None
            in_shape = (net.input_shape, *shapes)[i - 1]
            fix = fan_in_fix(
                layer.kind, layer.in_channels, fan_in // layer.in_channels, in_shape, limits.max_fan_in, source
            )
            problems.append(
                f"{where}: fan-in {fan_in}{how} exceeds the {limits.target} target's limit of "
                f"{limits.max_fan_in} synapses per neuron (max_fan_in); {fix}."
            )
    return problems


def _register_problems(
    where: str, what: str, values: np.ndarray, largest: int, multiple: int, target: str, signed: bool = False
) -> list[str]:
    """Per-channel constants within the register (|v| ≤ largest when ``signed``) and multiples of ``multiple``."""
    v = np.asarray(values, dtype=np.int64)
    big = int((np.abs(v) if signed else v).max(initial=0))
    problems = []
    if largest and big > largest:
        shown = f"|{big}|" if signed else str(big)
        problems.append(f"{where}: {what} {shown} exceeds the {target} target's largest {what} {largest}.")
    if multiple > 1 and np.any(v % multiple):
        bad = int(v[v % multiple != 0][0])
        problems.append(
            f"{where}: {what} {bad} is not a multiple of {multiple}, which the {target} target needs "
            f"(it stores {what} / {multiple})."
        )
    return problems


def check_profile_fit(net: IntegerNetwork, target: str) -> None:
    """The network must obey its own profile's registers before any target writes it."""
    check_fit(net, profile_limits(net.profile, target))


def profile_fit_problems(net: IntegerNetwork, target: str) -> list[str]:
    """:func:`fit_problems` of the network's own profile's registers (what :func:`check_profile_fit` raises)."""
    return fit_problems(net, profile_limits(net.profile, target))
