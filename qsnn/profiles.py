"""Chip profiles: a target's arithmetic as data.

A profile says how the integer form of the network behaves on a chip; it is a small frozen
dataclass, not a code path. Adding a chip means adding a profile (and an emitter in ``targets/``).

The fields parameterise the integer LIF step of :func:`qsnn.arith.int_lif_step` (whose docstring
has the equations): the leak kind (``mul``: u ← (m·u) >> leak_bits, ``shift``: u ← u − (u >> d),
``loihi``: Loihi's 12-bit ``rz(u·(2^leak_bits − dv))``), the membrane width and its overflow
(saturate or wrap), the reset mode (subtract or zero), the guard bits ``frac_bits`` of the
current shift (exactly ``frac_bits`` with ``fixed_shift``, as Lava's ``a_in << 6``), the width of a
current register the shifted synaptic sum passes through (``current_bits``: Lava's ``u``, which wraps),
and the register widths the compiler must respect; ``synaptic_delay`` delays every layer's input
(:mod:`qsnn.network`). What ``sim/``, the integer QONNX graph and the PyTorch
integer mode compute is that step, under these fields.
"""

from __future__ import annotations

import dataclasses
import numbers
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from qsnn.errors import ProfileError

LEAK_KINDS = ("mul", "shift", "loihi")
RESETS = ("subtract", "zero")
OVERFLOWS = ("saturate", "wrap")
MAX_SYNAPTIC_DELAY = 255


@dataclass(frozen=True)
class ChipProfile:
    """The arithmetic of one target.

    Attributes:
        name: profile name, e.g. ``"fpga"``.
        weight_bits: b; weights are signed integers in the narrow range [−(2^(b−1)−1), 2^(b−1)−1].
        membrane_bits: width of the membrane register (two's complement).
        overflow: ``"saturate"`` (clamp at the rails) or ``"wrap"`` (two's complement wrap-around).
        symmetric_clip: saturate to ±(2^(w−1)−1) (Loihi) instead of [−2^(w−1), 2^(w−1)−1].
        frac_bits: F, the most guard bits below the integer current (``acc << F``), like Loihi's
            ``a_in << 6``; the compiler may use fewer on a layer whose membrane would not fit.
        leak: ``"mul"``, ``"shift"`` or ``"loihi"`` (see the module docstring).
        leak_bits: fractional bits of the leak multiplier (``mul``) or Loihi's 12-bit decay.
        reset: ``"subtract"`` (θ subtracted after a spike) or ``"zero"`` (membrane cleared).
        synaptic_delay: steps between a layer's spikes and the next layer's current (Loihi: 1).
        threshold_bits: width of the threshold register (its largest value is 2^bits − 1 before
            ``threshold_shift``).
        threshold_shift: thresholds are stored as ``vth`` and compared as ``vth << shift`` (Loihi:
            6), so a compiled threshold is a multiple of 2^threshold_shift.
        bias_bits: width of the signed bias mantissa; the bias on the grid is ``mantissa << bias_shift``.
        bias_shift: biases are stored as mantissas added as ``mantissa << bias_shift`` (netx fixes
            Lava's bias exponent at 6), so a compiled bias is a multiple of 2^bias_shift.
        weight_exp_bits: bits of a per-layer weight exponent (0 = none; netx has no place for one:
            Lava's Conv ignores it and netx derives the Dense one from the weights).
        current_bits: width w of the current register the shifted synaptic sum passes through
            before the membrane (Lava's ``u``), 0 = none. It wraps as Lava's fixed-point LIF does,
            once, not modulo (:func:`qsnn.arith.wrap_current`): c − 2^w where c > 2^(w−1), c + 2^w
            where c ≤ −2^(w−1). The synaptic sum itself must also fit it (Lava's Conv wraps
            ``a_out`` at 24 bits): the compiler checks.
        fixed_shift: the current shift is always ``frac_bits`` (Lava's ``a_in << 6`` on every layer);
            the compiler may only gain resolution by multiplying the stored weights by 2^m.
        fold_pool: the target stores convolution kernels with the p×p sum-pooling folded in (one
            stride-p kernel, k+p−1 wide): its weight range and fan-in apply to the folded taps.
        max_fan_in: largest number of synapses into one neuron the target supports (0 = no limit).
        max_neurons: largest neuron count of a layer the target supports (0 = no limit).
        input_bits: width of one unsigned input value per cell and step at the chip's input port
            (8: uint8 pixels or 8-bit event counts; Loihi 2: graded spikes with 8 message bits). A
            network whose inputs reach above 2^input_bits − 1 (``IntegerNetwork.input_max``, set by
            the training's event encoding) is refused by the compiler.
    """

    name: str
    weight_bits: int = 4
    membrane_bits: int = 16
    overflow: str = "saturate"
    symmetric_clip: bool = False
    frac_bits: int = 6
    leak: str = "mul"
    leak_bits: int = 12
    reset: str = "subtract"
    synaptic_delay: int = 0
    threshold_bits: int = 16
    threshold_shift: int = 0
    bias_bits: int = 16
    bias_shift: int = 0
    weight_exp_bits: int = 0
    current_bits: int = 0
    fixed_shift: bool = False
    fold_pool: bool = False
    max_fan_in: int = 0
    max_neurons: int = 0
    input_bits: int = 8

    def __post_init__(self) -> None:
        wrong_type = [
            f"{f.name}={getattr(self, f.name)!r} (must be {_KIND_NAMES[f.type]})"
            for f in dataclasses.fields(self)
            if not _is_kind(getattr(self, f.name), f.type)
        ]
        if wrong_type:
            raise ProfileError(f"profile {self.name!r} is impossible: " + "; ".join(wrong_type))
        for f in dataclasses.fields(self):  # NumPy integers → int, so the profile stays plain data
            if f.type == "int":
                object.__setattr__(self, f.name, int(getattr(self, f.name)))
        problems = []
        if not 2 <= self.weight_bits <= 16:
            problems.append(f"weight_bits={self.weight_bits} (must be 2..16)")
        if not 4 <= self.membrane_bits <= 62:
            problems.append(f"membrane_bits={self.membrane_bits} (must be 4..62)")
        if self.overflow not in OVERFLOWS:
            problems.append(f"overflow={self.overflow!r} (one of {OVERFLOWS})")
        if self.leak not in LEAK_KINDS:
            problems.append(f"leak={self.leak!r} (one of {LEAK_KINDS})")
        if self.reset not in RESETS:
            problems.append(f"reset={self.reset!r} (one of {RESETS})")
        if not 0 <= self.frac_bits < self.membrane_bits:
            problems.append(f"frac_bits={self.frac_bits} (must be 0..membrane_bits-1)")
        if not 1 <= self.leak_bits <= 30:
            problems.append(f"leak_bits={self.leak_bits} (must be 1..30)")
        if not 0 <= self.synaptic_delay <= MAX_SYNAPTIC_DELAY:
            problems.append(f"synaptic_delay={self.synaptic_delay} (must be 0..{MAX_SYNAPTIC_DELAY})")
        if not 1 <= self.threshold_bits <= 62 or not 0 <= self.threshold_shift <= 62 - self.threshold_bits:
            problems.append(
                f"threshold_bits={self.threshold_bits}, threshold_shift={self.threshold_shift} "
                "(bits 1..62, shift >= 0, bits + shift <= 62)"
            )
        if not 2 <= self.bias_bits <= 62 or not 0 <= self.bias_shift <= 62 - self.bias_bits:
            problems.append(
                f"bias_bits={self.bias_bits}, bias_shift={self.bias_shift} (bits 2..62, shift >= 0, bits + shift <= 62)"
            )
        if self.current_bits and not 4 <= self.current_bits <= 62:
            problems.append(f"current_bits={self.current_bits} (0 = no current register, else 4..62)")
        if self.leak != "shift" and self.membrane_bits + self.leak_bits > 63:
            problems.append(
                f"membrane_bits + leak_bits = {self.membrane_bits + self.leak_bits} (the {self.leak} leak "
                "multiplies the membrane by a leak_bits-wide constant: the product must fit 63 bits)"
            )
        if not 0 <= self.weight_exp_bits <= 8:
            problems.append(f"weight_exp_bits={self.weight_exp_bits} (must be 0..8)")
        if not 1 <= self.input_bits <= 16:
            problems.append(f"input_bits={self.input_bits} (must be 1..16)")
        if self.max_fan_in < 0 or self.max_neurons < 0:
            problems.append(
                f"max_fan_in={self.max_fan_in}, max_neurons={self.max_neurons} (must be >= 0; 0 = no limit)"
            )
        if problems:
            raise ProfileError(f"profile {self.name!r} is impossible: " + "; ".join(problems))

    @property
    def weight_max(self) -> int:
        """Largest weight magnitude of the narrow signed range, 2^(b−1) − 1."""
        return 2 ** (self.weight_bits - 1) - 1

    @property
    def input_max(self) -> int:
        """Largest input value of one cell per step the input port carries, 2^input_bits − 1."""
        return 2**self.input_bits - 1

    @property
    def membrane_min(self) -> int:
        return -(2 ** (self.membrane_bits - 1)) + (1 if self.symmetric_clip else 0)

    @property
    def membrane_max(self) -> int:
        return 2 ** (self.membrane_bits - 1) - 1

    @property
    def threshold_max(self) -> int:
        """Largest threshold on the membrane grid the register can hold."""
        return (2**self.threshold_bits - 1) << self.threshold_shift

    @property
    def bias_max(self) -> int:
        """Largest |bias| on the membrane grid the register can hold (a multiple of 2^bias_shift)."""
        return (2 ** (self.bias_bits - 1) - 1) << self.bias_shift

    def summary(self) -> str:
        """One line from the fields, e.g. ``fpga (4-bit weights, 16-bit saturating membrane, mul leak, subtract reset)``."""
        overflow = {"saturate": "saturating", "wrap": "wrapping"}[self.overflow]
        parts = [
            f"{self.weight_bits}-bit weights",
            f"{self.membrane_bits}-bit {overflow} membrane",
            f"{self.leak} leak",
            f"{self.reset} reset",
        ]
        if self.synaptic_delay:
            parts.append(f"{self.synaptic_delay}-step synaptic delay")
        return f"{self.name} ({', '.join(parts)})"

    def replace(self, **changes: Any) -> "ChipProfile":
        """A copy with some fields changed (validated again)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ProfileError(
                f"unknown profile field(s) {sorted(unknown)}; fields are {[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def changes(self) -> dict[str, Any]:
        """The fields in which this profile differs from the named one (``get_profile(self.name)``): what
        ``--profile NAME --profile-set KEY=VALUE ...`` must say to rebuild it ({} for a profile of another name)."""
        named = PROFILES.get(self.name)
        if named is None:
            return {}
        return {k: v for k, v in self.to_dict().items() if getattr(named, k) != v}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ChipProfile":
        if not isinstance(data, dict):
            raise ProfileError(f"a profile is a table of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise ProfileError(f"unknown profile field(s) {sorted(map(str, unknown))}")
        if "name" not in data:
            raise ProfileError("a profile needs a 'name'")
        return cls(**data)


_KIND_NAMES = {"str": "a string", "int": "an integer", "bool": "true or false"}


def _is_kind(value: Any, kind: str) -> bool:
    """``value`` has the type the field annotation ``kind`` names (a bool is not an integer here)."""
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    return isinstance(value, str)


#: Our reference FPGA core: 4-bit narrow weights, int16 saturating membrane, multiplicative leak
#: in Q0.12, subtract reset, up to 6 guard bits, an 8-bit input port.
FPGA = ChipProfile(
    name="fpga",
    weight_bits=4,
    membrane_bits=16,
    overflow="saturate",
    frac_bits=6,
    leak="mul",
    leak_bits=12,
    reset="subtract",
    synaptic_delay=0,
    threshold_bits=16,
    bias_bits=16,
    input_bits=8,
)

#: Intel Loihi 2 as stock Lava 0.10 runs a lava-dl 0.6 netx file (``Loihi2SimCfg(select_tag=
#: "fixed_pt")``: ``PyConvModelFixed``, ``PyDenseModelBitAcc``, ``PyLifModelBitAcc``)::
#:
#:     a_in = W ⊛ s (Conv: wrapped to 24 bits; weight_exp ignored)   one step late
#:     u    = wrap24(a_in << 6)            du = 4095: the current does not persist (a single state)
#:     v    = clip(rz(v·(4096 − dv)) + u + (bias_mant << 6), ±(2^23 − 1))
#:     spike v > vth << 6, then v = 0
#:
#: 8-bit weights (the folded pooled kernel too), no weight exponent (netx has no place for one),
#: the shift fixed at 6 (``a_in << 6``), 12-bit dv (0..4095), 17-bit vth, 13-bit bias mantissa
#: (Loihi's; Lava keeps an int16) at netx's fixed exponent 6, zero reset, one step per layer; input as
#: graded spikes of 8 message bits.
LOIHI2 = ChipProfile(
    name="loihi2",
    weight_bits=8,
    membrane_bits=24,
    overflow="saturate",
    symmetric_clip=True,
    frac_bits=6,
    leak="loihi",
    leak_bits=12,
    reset="zero",
    synaptic_delay=1,
    threshold_bits=17,
    threshold_shift=6,
    bias_bits=13,
    bias_shift=6,
    weight_exp_bits=0,
    current_bits=24,
    fixed_shift=True,
    fold_pool=True,
    max_fan_in=4096,
    max_neurons=8192,
    input_bits=8,
)

PROFILES: dict[str, ChipProfile] = {p.name: p for p in (FPGA, LOIHI2)}


def get_profile(name: str, **overrides: Any) -> ChipProfile:
    """The named profile, with optional field overrides (e.g. ``membrane_bits=24``)."""
    try:
        profile = PROFILES[name]
    except KeyError:
        raise ProfileError(f"unknown profile {name!r}; choose one of {sorted(PROFILES)}") from None
    return profile.replace(**overrides) if overrides else profile


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Field overrides from ``KEY=VALUE`` strings (the command lines' ``--profile-set``), typed by the field.

    ``["membrane_bits=24", "overflow=wrap", "symmetric_clip=true"]`` → ``{"membrane_bits": 24, ...}``.
    Keys may use ``-`` for ``_``; integers take a base prefix (``0x10``); booleans are
    true/false, 1/0 or yes/no. ``name`` cannot be set. The values are checked when the profile is
    built (:meth:`ChipProfile.replace`). Raises :class:`~qsnn.errors.ProfileError` naming the item.
    """
    kinds = {f.name: f.type for f in dataclasses.fields(ChipProfile) if f.name != "name"}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip().replace("-", "_"), text.strip()
        if not sep or not key:
            raise ProfileError(f"--profile-set {item!r}: expected KEY=VALUE, e.g. membrane_bits=24")
        if key not in kinds:
            raise ProfileError(f"--profile-set {item!r}: unknown profile field {key!r}; fields are {sorted(kinds)}")
        kind = kinds[key]
        try:
            if kind == "bool":
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                out[key] = text.lower() in ("true", "1", "yes")
            elif kind == "int":
                out[key] = int(text, 0)
            else:
                out[key] = text
        except ValueError:
            takes = "true or false" if kind == "bool" else "an integer"
            raise ProfileError(
                f"--profile-set {item!r}: {text!r} is not a valid {kind} ({key} takes {takes})"
            ) from None
    return out
