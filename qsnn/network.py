"""The integer network: what a chip runs, as plain data.

An :class:`IntegerNetwork` is the compiled form of a trained QSNN under a
:class:`~qsnn.profiles.ChipProfile`. Every stage after compilation starts from it: the NumPy
simulator (``sim/``), the weight-table emitters and readers (``targets/``), and the integer QONNX
graph (``export/``). It holds integers only, plus the real value of one membrane unit per channel
so that reports can translate back.

Each :class:`IntegerLayer` is a synapse (conv of stride s and zero padding, or dense) followed by
sum-pooling of the current and a population of LIF neurons, one time step being::

    acc_t = sumpool_p( W ⊛_{s,pad} z_in,t−d )  integer synaptic sum, W in the narrow signed range
    z_t, u_t = int_lif_step(acc_t, u_{t−1})    the neuron, :func:`qsnn.arith.int_lif_step`:
               u_t = overflow( leak(u_{t−1}) + shl(shl(acc_t, e), s) + b_c − r_t·θ_c ),  z_t = [u_t > θ_c]

with per-channel integer threshold θ_c and bias b_c. The synapse, precisely:

* ``acc_t`` is an exact integer sum: convolution of stride s with zero padding pad on every side
  (output side ``⌊(H + 2·pad − k)/s⌋ + 1``), then p×p stride-p sum-pooling (side ``⌊·/p⌋``);
  dense: on the input flattened C-major, as torch's flatten; a trained synaptic bias is part of b_c;
* d = ``profile.synaptic_delay``: the layer sees its input (the previous layer's spikes, or the
  input frame for the first layer) d steps late, zeros for t < d (its bias is still added every
  step);
* a static image (uint8 pixels) is the input frame at every step, event counts give frame t at
  step t; the class is the argmax of output spike counts over T, first index winning ties.

The real membrane of the trained network is ``u_real ≈ u_t · scale_c``.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from qsnn.data import ENCODINGS, input_max_problem
from qsnn.errors import NetworkError
from qsnn.profiles import ChipProfile

LAYER_KINDS = ("conv", "dense")
#: The largest |current_shift| and |weight_exp| (shifting an int64 further leaves nothing).
MAX_SHIFT = 62
#: The most time steps a network may run (a file claiming more is damaged: the simulator could not hold it).
MAX_NUM_STEPS = 1 << 20


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def fold_pool(weight: np.ndarray, pool: int, dtype: Any = np.int64, stride: int = 1) -> np.ndarray:
    """The kernel of ``sumpool_p(W ⊛_s x)`` as one convolution of stride s·p.

    ``W'[o, c, a, b] = Σ_{i,j<p} W[o, c, a−s·i, b−s·j]``, shape ``(O, C, k+s(p−1), k+s(p−1))``, in
    ``dtype`` (int64: the integer kernel; float64 for real weights). On the (zero-padded) input it
    gives exactly the pooled sums: ``⌊(H' − k − s(p−1))/(s·p)⌋ + 1 = ⌊(⌊(H' − k)/s⌋ + 1)/p⌋`` outputs.
    """
    w = np.asarray(weight, dtype=dtype)
    if pool == 1:
        return w
    o, c, side, _ = w.shape
    full = side + stride * (pool - 1)
    out = np.zeros((o, c, full, full), dtype=dtype)
    for i in range(pool):
        for j in range(pool):
            out[:, :, stride * i : stride * i + side, stride * j : stride * j + side] += w
    return out


@dataclass(frozen=True, eq=False)
class IntegerLayer:
    """One synaptic layer and its LIF population, in integers.

    Attributes:
        name: layer name, e.g. ``"conv1"``.
        kind: ``"conv"`` (weight ``(O, I, k, k)``) or ``"dense"`` (weight ``(O, I)``).
        weight: signed integer weights (int8 or wider for wide profiles).
        pool: side p of the p×p, stride-p sum-pooling applied to the current (1 = none).
        current_shift: s, the left shift of the integer current onto the membrane grid (negative:
            arithmetic right shift, floor).
        threshold: θ_c per output channel, int64, on the membrane grid.
        bias: b_c per output channel, int64, on the membrane grid, added every step.
        leak_const: the integer leak constant L: m for ``mul``, d for ``shift``, dv for ``loihi``
            (:func:`qsnn.arith.leak_const_of`; the files qsnn writes call it ``decay``).
        scale: real membrane value of one grid unit per output channel (float64, > 0).
        weight_exp: exponent of the weights (Loihi), the synaptic sum being ``acc · 2^weight_exp``
            before the shift; 0 elsewhere.
        stride: s of a conv (1 for dense).
        padding: zeros added on every side of a conv's input (0 for dense).
    """

    name: str
    kind: str
    weight: np.ndarray
    pool: int
    current_shift: int
    threshold: np.ndarray
    bias: np.ndarray
    leak_const: int
    scale: np.ndarray
    weight_exp: int = 0
    stride: int = 1
    padding: int = 0

    def __post_init__(self) -> None:
        if self.kind not in LAYER_KINDS:
            raise NetworkError(f"layer {self.name}: kind {self.kind!r} not in {LAYER_KINDS}")
        w = np.asarray(self.weight)
        if not np.issubdtype(w.dtype, np.integer):
            raise NetworkError(f"layer {self.name}: weights must be integers, got {w.dtype}")
        if self.kind == "conv" and (w.ndim != 4 or w.shape[2] != w.shape[3]):
            raise NetworkError(f"layer {self.name}: conv weight must be (O, I, k, k), got {w.shape}")
        if self.kind == "dense" and w.ndim != 2:
            raise NetworkError(f"layer {self.name}: dense weight must be (O, I), got {w.shape}")
        for attr, low, high in (
            ("pool", 1, None),
            ("current_shift", -MAX_SHIFT, MAX_SHIFT),
            ("weight_exp", -MAX_SHIFT, MAX_SHIFT),
            ("leak_const", 0, None),
            ("stride", 1, None),
            ("padding", 0, None),
        ):
            value = getattr(self, attr)
            if not _is_int(value) or value < low or (high is not None and value > high):
                bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
                raise NetworkError(f"layer {self.name}: {attr} must be an integer {bounds}, got {value!r}")
            object.__setattr__(self, attr, int(value))  # NumPy integers → int: plain data
        if self.kind == "dense" and (self.stride != 1 or self.padding or self.pool != 1):
            raise NetworkError(f"layer {self.name}: a dense layer has no stride, padding or pooling")
        if self.kind == "conv" and self.padding >= w.shape[2]:
            raise NetworkError(
                f"layer {self.name}: padding {self.padding} must be smaller than the kernel {w.shape[2]}"
            )
        out = w.shape[0]
        for attr in ("threshold", "bias", "scale"):
            arr = np.asarray(getattr(self, attr))
            if arr.shape != (out,):
                raise NetworkError(f"layer {self.name}: {attr} must have shape ({out},), got {arr.shape}")
        if not np.issubdtype(np.asarray(self.threshold).dtype, np.integer):
            raise NetworkError(f"layer {self.name}: threshold must be integers")
        if not np.issubdtype(np.asarray(self.bias).dtype, np.integer):
            raise NetworkError(f"layer {self.name}: bias must be integers")
        if np.any(np.asarray(self.threshold) < 0):
            raise NetworkError(f"layer {self.name}: thresholds must be >= 0")

    @property
    def out_channels(self) -> int:
        return int(self.weight.shape[0])

    @property
    def in_channels(self) -> int:
        return int(self.weight.shape[1])

    @property
    def kernel(self) -> int:
        return int(self.weight.shape[2]) if self.kind == "conv" else 1

    @property
    def fan_in(self) -> int:
        """Synapses into one neuron before pooling."""
        return int(np.prod(self.weight.shape[1:]))

    def output_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of this layer's spikes for one sample given its input's shape (no batch)."""
        if self.kind == "dense":
            n = int(np.prod(input_shape))
            if n != self.in_channels:
                raise NetworkError(f"layer {self.name}: expects {self.in_channels} inputs, got {input_shape} ({n})")
            return (self.out_channels,)
        if len(input_shape) != 3 or input_shape[0] != self.in_channels:
            raise NetworkError(f"layer {self.name}: expects ({self.in_channels}, H, W) input, got {input_shape}")
        h, w = ((n + 2 * self.padding - self.kernel) // self.stride + 1 for n in input_shape[1:])
        h, w = h // self.pool, w // self.pool
        if h < 1 or w < 1:
            raise NetworkError(
                f"layer {self.name}: input {input_shape} too small for kernel {self.kernel}, "
                f"stride {self.stride}, padding {self.padding}, pool {self.pool}"
            )
        return (self.out_channels, h, w)


@dataclass(frozen=True, eq=False)
class IntegerNetwork:
    """A compiled QSNN: layers in order, the profile they obey, and how to feed it.

    Attributes:
        layers: the synaptic layers, first to last; the last layer's spikes are the output.
        profile: the chip profile whose arithmetic the integers follow.
        input_shape: (C, H, W) of one input frame.
        num_steps: T, time steps per inference.
        encoding: ``"static"`` (uint8 image repeated for T steps) or ``"events"`` (per-bin counts).
        classes: class names, in output-neuron order; the prediction is the argmax of output spike
            counts, first index winning ties.
        metadata: provenance (dataset, trained reset, β, θ, checkpoint hash, compile report, ...).
        input_max: the largest input value of one cell per step the network takes (and the
            compiler's worst-case bound assumes): 255 for uint8 pixels, the encoding's count clip
            2^event_bits − 1 for event frames.
    """

    layers: tuple[IntegerLayer, ...]
    profile: ChipProfile
    input_shape: tuple[int, int, int]
    num_steps: int
    encoding: str
    classes: tuple[str, ...]
    metadata: Mapping[str, Any] = field(default_factory=dict)
    input_max: int = 255

    def __post_init__(self) -> None:
        if not self.layers:
            raise NetworkError("an IntegerNetwork needs at least one layer")
        if self.encoding not in ENCODINGS:
            raise NetworkError(f"encoding {self.encoding!r} not in {ENCODINGS}")
        if not _is_int(self.num_steps) or not 1 <= self.num_steps <= MAX_NUM_STEPS:
            raise NetworkError(f"num_steps must be an integer in [1, {MAX_NUM_STEPS}], got {self.num_steps!r}")
        if not _is_int(self.input_max) or not 1 <= self.input_max <= np.iinfo(np.uint16).max:
            raise NetworkError(f"input_max must be an integer in 1..65535, got {self.input_max!r}")
        object.__setattr__(self, "input_max", int(self.input_max))
        problem = input_max_problem(self.encoding, self.input_max)
        if problem:
            raise NetworkError(
                f"input_max of a network of {self.encoding} encoding must be {problem}, got {self.input_max}"
            )
        shape = tuple(self.input_shape)
        if len(shape) != 3 or not all(_is_int(v) and v >= 1 for v in shape):
            raise NetworkError(f"input_shape must be (C, H, W) of positive integers, got {self.input_shape!r}")
        object.__setattr__(self, "num_steps", int(self.num_steps))
        object.__setattr__(self, "input_shape", tuple(int(v) for v in shape))
        shape = self.input_shape
        for layer in self.layers:
            shape = layer.output_shape(shape)
        if shape != (len(self.classes),):
            raise NetworkError(f"the last layer has output shape {shape} but there are {len(self.classes)} classes")

    def shapes(self) -> list[tuple[int, ...]]:
        """Spike shape of every layer for one sample (no batch), first to last."""
        out, shape = [], tuple(self.input_shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
            out.append(shape)
        return out
