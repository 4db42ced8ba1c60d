"""Training configuration as plain data, and the Table I presets (``presets.toml``).

:class:`TrainConfig` is the single record of a run's settings. It is saved in every checkpoint, and
``TrainConfig.from_preset(dataset, precision, **overrides)`` builds it from the preset table and
command-line overrides.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from qsnn.arch import MAX_WEIGHT_BITS, MIN_WEIGHT_BITS, PAPER_ARCH, Arch, ArchError, machine_memory, parse_arch
from qsnn.errors import DataError, QsnnError
from qsnn.events import EventFrames

PRECISIONS = ("int4", "fp32")
SCHEDULES = ("cosine", "none", "lrstep", "lossstep")
QUANT_SCALES = ("float", "po2")
#: Weight scale granularity: one scale per tensor (the paper) or one per output channel.
WEIGHT_SCALES = ("tensor", "channel")
#: Datasets whose hyperparameter rows are shared: mnist5k is MNIST; N-MNIST (digits, no row in the
#: paper) takes MNIST's. A user's ``arrays:``/``folder:`` data takes MNIST's row for images and
#: DVS128's for event frames (:func:`preset_row`).
PRESET_ROW = {"mnist": "mnist", "mnist5k": "mnist", "fmnist": "fmnist", "dvs128": "dvs128", "nmnist": "mnist"}
#: The datasets of the paper, whose default network is the paper's (Table II); any other dataset's
#: default is its preset row's network with the output layer sized to its classes (:func:`default_arch`).
PAPER_DATASETS = ("mnist", "mnist5k", "fmnist", "dvs128")

#: λ of ``qsnn-train finetune``'s distillation toward the float model it starts from, when not given
#: (``TrainConfig.distill``; :func:`qsnn.train.loss.distill_count_loss`). A plain run does not distill (0).
FINETUNE_DISTILL = 1.0

#: The one place the ``make demo`` model is defined (``qsnn-train run --demo``, and the test suite's
#: ``demo_run`` fixture): the embedded mnist5k, int4 (Table I's row), cosine, CPU-sized: T = 25 and
#: 6 epochs, with a 2-epoch cosine period so that the run ends where eq. 4 reaches η_min (epoch 6),
#: about 2 minutes of training on two idle CPU cores.
DEMO = {
    "dataset": "mnist5k",
    "precision": "int4",
    "schedule": "cosine",
    "num_steps": 25,
    "epochs": 6,
    "cosine_period_epochs": 2.0,
    "batch_size": 64,
}


#: The range of every numeric field: (type, low, low excluded, high, high excluded, the range in words).
#: ``float`` fields take ints too and must be finite; bools are never numbers here.
NUMERIC_RULES: dict[str, tuple[type, float | None, bool, float | None, bool, str]] = {
    "beta": (float, 0.0, False, 1.0, False, "a finite number in [0, 1]"),
    "threshold": (float, 0.0, True, None, False, "a finite number > 0"),
    "slope": (float, 0.0, True, None, False, "a finite number > 0"),
    "synaptic_delay": (int, 0, False, 255, False, "an integer in 0..255, below --steps"),
    "weight_bits": (int, MIN_WEIGHT_BITS, False, MAX_WEIGHT_BITS, False, f"{MIN_WEIGHT_BITS}..{MAX_WEIGHT_BITS}"),
    "dropout": (float, 0.0, False, 1.0, True, "a finite number in [0, 1)"),
    "num_steps": (int, 1, False, None, False, "an integer >= 1"),
    "batch_size": (int, 1, False, None, False, "an integer >= 1"),
    "subset": (int, 1, False, None, False, "an integer >= 1"),
    "val_subset": (int, 1, False, None, False, "an integer >= 1"),
    "test_subset": (int, 1, False, None, False, "an integer >= 1"),
    "lr": (float, 0.0, True, 1.0, False, "a finite number in (0, 1]: Adam's step size"),
    "cosine_period_epochs": (float, 0.0, True, None, False, "a finite number of epochs > 0"),
    "eta_min": (float, 0.0, False, None, False, "a finite number >= 0, below --lr"),
    "step_epochs": (int, 1, False, None, False, "an integer >= 1"),
    "gamma": (float, 0.0, True, 1.0, False, "a finite number in (0, 1]"),
    "loss_patience": (int, 0, False, None, False, "an integer >= 0"),
    "correct_rate": (float, 0.0, False, 1.0, False, "a finite fraction of T in [0, 1]"),
    "incorrect_rate": (float, 0.0, False, 1.0, False, "a finite fraction of T in [0, 1]"),
    "distill": (float, 0.0, False, None, False, "a finite weight >= 0"),
    "epochs": (int, 1, False, None, False, "an integer >= 1"),
    "patience": (int, 0, False, None, False, "an integer >= 0"),
    "seed": (int, 0, False, 2**32 - 1, False, f"an integer in 0..{2**32 - 1}"),
}
OPTIONAL_FIELDS = ("subset", "val_subset", "test_subset")
#: The command-line option of a field, where it is not ``--`` + the field name with dashes.
OPTION_NAMES = {
    "num_steps": "--steps",
    "cosine_period_epochs": "--cosine-period",
    "synaptic_delay": "synaptic_delay",
    "correct_rate": "correct_rate",
    "incorrect_rate": "incorrect_rate",
    "eta_min": "eta_min",
}


def _option(name: str) -> str:
    return OPTION_NAMES.get(name, "--" + name.replace("_", "-"))


def _show(value: Any) -> str:
    return repr(value) if isinstance(value, (str, bool)) or value is None else str(value)


def _in_range(value: Any, kind: type, lo, lo_open: bool, hi, hi_open: bool) -> bool:
    """Whether ``value`` is a number of ``kind`` (a float field takes ints; never a bool) in the range."""
    if isinstance(value, bool):
        return False
    if kind is int:
        if not isinstance(value, (int, np.integer)):
            return False
    elif not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        return False
    if lo is not None and (value <= lo if lo_open else value < lo):
        return False
    if hi is not None and (value >= hi if hi_open else value > hi):
        return False
    return True


def range_problem(name: str, value: Any) -> str | None:
    """The range in words (:data:`NUMERIC_RULES`) when ``value`` is outside field ``name``'s range, else None."""
    kind, lo, lo_open, hi, hi_open, what = NUMERIC_RULES[name]
    return None if _in_range(value, kind, lo, lo_open, hi, hi_open) else what


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run.

    Neuron (eqs. 1-2, 5): ``beta`` β, ``threshold`` θ, ``slope`` k of the fast-sigmoid surrogate,
    ``reset`` "subtract" | "zero", ``synaptic_delay`` (steps each layer's input arrives late, zeros
    before: 1 on Loihi), ``profile`` (the chip profile the run trains for, "" = none: see
    :meth:`TrainConfig.for_profile`), ``integer_exact`` (the run's forward pass was that profile's
    compiled integer network: ``qsnn-train finetune``, :mod:`qsnn.train.finetune`).
    Network: ``arch``, the architecture spec (:mod:`qsnn.arch`;
    "" = the paper's network of the dataset's preset row), ``precision`` "int4" | "fp32" (quantized
    or float weights), ``weight_bits`` b (2..8; a layer's ``w<bits>`` suffix in the spec wins),
    ``quant_scale`` "float" (float scale, as the paper) | "po2" (power-of-two scale),
    ``weight_scale`` "tensor" (one scale per layer, as the paper) | "channel" (one per output
    channel), ``bias`` (synaptic biases), ``batch_norm`` (after every conv), ``dropout`` p (on the
    spikes entering the output layer). Data: ``dataset`` (a name of :data:`qsnn.data.DATASETS`, or a
    user source ``arrays:DIR`` / ``folder:DIR``, recorded with an absolute path), ``num_steps`` T, ``subset`` (train samples,
    None = all), ``val_subset``/``test_subset``; for event datasets the input encoding
    (:class:`qsnn.events.EventFrames`): ``event_bits`` (per-cell, per-step counts clipped to
    2^event_bits − 1: 1 = binary spikes), ``event_bin_us`` (Δ of one step, µs) and ``event_downsample``
    (d; ``None`` for both: the dataset's own, :func:`qsnn.data.event_frames`) and ``test_cut``
    (``"first"`` T steps of a test gesture, or every T-step ``"windows"`` with summed spike counts).
    Recipe: Adam with ``lr`` η and ``betas``;
    ``schedule`` and its parameters (``cosine_period_epochs``: T of eq. 4 in epochs, ``eta_min``,
    ``warm_restarts``; ``step_epochs``/``gamma`` for lrstep; ``loss_patience``/``gamma`` for
    lossstep); ``grad_clip`` (norm 1) and ``weight_clip`` ([−1, 1]); ``correct_rate`` and
    ``incorrect_rate`` (eq. 6 targets, as fractions of T); ``distill`` λ (a fine-tuning's weight of
    the distance to its float model's output counts, :mod:`qsnn.train.loss`; 0 = eq. 6 alone);
    ``epochs``, ``patience`` (early stopping on validation accuracy), ``seed``, ``fast`` (the fast
    forward path; numerics equal the plain path).
    """

    dataset: str = "mnist5k"
    precision: str = "int4"
    schedule: str = "cosine"
    # neuron
    beta: float = 0.921
    threshold: float = 2.04
    slope: float = 6.03
    reset: str = "subtract"
    synaptic_delay: int = 0
    profile: str = ""
    integer_exact: bool = False
    # network
    arch: str = ""
    weight_bits: int = 4
    quant_scale: str = "float"
    weight_scale: str = "tensor"
    bias: bool = False
    batch_norm: bool = True
    dropout: float = 0.094
    # data
    num_steps: int = 100
    batch_size: int = 128
    subset: int | None = None
    val_subset: int | None = None
    test_subset: int | None = None
    event_bits: int = EventFrames.count_bits
    event_bin_us: int | None = None
    event_downsample: int | None = None
    test_cut: str = EventFrames.test_cut
    # optimiser and schedule
    lr: float = 1.9e-3
    betas: tuple[float, float] = (0.9, 0.999)
    cosine_period_epochs: float = 10.0
    eta_min: float = 0.0
    warm_restarts: bool = False
    step_epochs: int = 15
    gamma: float = 0.5
    loss_patience: int = 0
    grad_clip: bool = True
    weight_clip: bool = True
    # loss (eq. 6)
    correct_rate: float = 0.8
    incorrect_rate: float = 0.2
    distill: float = 0.0
    # run
    epochs: int = 100
    patience: int = 10
    seed: int = 0
    fast: bool = True
    preset_source: str = ""

    def __post_init__(self) -> None:
        problems = []
        from qsnn import sources

        user = sources.is_user(self.dataset)
        if user:
            object.__setattr__(self, "dataset", sources.canonical(self.dataset))
        elif self.dataset not in PRESET_ROW:
            problems.append(f"dataset {self.dataset!r} (one of {sorted(PRESET_ROW)}, arrays:DIR or folder:DIR)")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} (one of {PRECISIONS})")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule {self.schedule!r} (one of {SCHEDULES})")
        if self.reset not in ("subtract", "zero"):
            problems.append(f"reset {self.reset!r} (subtract or zero)")
        if self.weight_scale not in WEIGHT_SCALES:
            problems.append(f"weight_scale {self.weight_scale!r} (--weight-scale: one of {WEIGHT_SCALES})")
        if self.dataset in PRESET_ROW or user:
            try:  # "" = the default network; any spec is stored in canonical form, checked against the data
                from qsnn.data import dataset_input

                try:
                    shape, classes = dataset_input(self.dataset, self._frames_or_none())
                except DataError:
                    if not (user and self.arch):
                        raise  # a new run on data that cannot be read: the reader's one line
                    shape = classes = None  # a saved run whose data has gone: its checkpoint knows the shapes
                arch = parse_arch(self.arch or default_arch(self.dataset, classes))
                object.__setattr__(self, "arch", str(arch))
                if shape is not None:
                    arch.shapes(shape, classes)
                    if (memory := machine_memory()) is not None:
                        arch.check_memory(shape, memory)
            except ArchError as exc:
                problems.append(f"{exc} (--arch)")
        if self.quant_scale not in QUANT_SCALES:
            problems.append(f"quant_scale {self.quant_scale!r} (one of {QUANT_SCALES})")
        problems += self._numeric_problems()
        if not user:  # a user source's frames come from its data (checked when it is read)
            try:
                self.event_frames()
            except DataError as exc:
                problems.append(str(exc))
        if problems:
            raise QsnnError("invalid training configuration: " + "; ".join(problems))

    def _numeric_problems(self) -> list[str]:
        """Every numeric field against its range (:data:`NUMERIC_RULES`) and the others (delay < T,
        eta_min < lr): one entry per problem, naming the command-line option and the range."""
        problems = []
        for name, (kind, lo, lo_open, hi, hi_open, what) in NUMERIC_RULES.items():
            value = getattr(self, name)
            if value is None and name in OPTIONAL_FIELDS:
                continue
            if not _in_range(value, kind, lo, lo_open, hi, hi_open):
                problems.append(f"{_option(name)} {_show(value)} ({what})")
        betas = self.betas
        if (
            not isinstance(betas, (tuple, list))
            or len(betas) != 2
            or not all(_in_range(b, float, 0.0, False, 1.0, True) for b in betas)
        ):
            problems.append(f"betas {betas!r} (Adam's two betas, each a finite number in [0, 1))")
        if _in_range(self.num_steps, int, 1, False, None, False) and _in_range(
            self.synaptic_delay, int, 0, False, None, False
        ):
            if self.synaptic_delay >= self.num_steps:
                problems.append(
                    f"synaptic_delay {self.synaptic_delay}"
                    + (f" (of --profile {self.profile})" if self.profile else "")
                    + f" with --steps {self.num_steps} (the delay per layer "
                    f"must be below T, 0..{self.num_steps - 1}, or the output layer never receives an input; "
                    "raise --steps)"
                )
        if (
            _in_range(self.eta_min, float, 0.0, False, None, False)
            and _in_range(self.lr, float, 0.0, True, None, False)
            and self.eta_min >= self.lr
        ):
            problems.append(f"eta_min {_show(self.eta_min)} with --lr {_show(self.lr)} (eta_min must be below --lr)")
        return problems

    @property
    def quantized(self) -> bool:
        return self.precision != "fp32"

    @property
    def architecture(self) -> Arch:
        """The parsed architecture spec (:mod:`qsnn.arch`)."""
        return parse_arch(self.arch)

    def _frames_or_none(self) -> EventFrames | None:
        try:
            return self.event_frames()
        except DataError:
            return None  # reported on its own

    def event_frames(self) -> EventFrames:
        """The event encoding of this run (used by event datasets only): the dataset's sensor, and Δ and d
        as given or the dataset's own (:func:`qsnn.data.event_frames`)."""
        from qsnn.data import event_frames

        return event_frames(
            self.dataset,
            self.num_steps if isinstance(self.num_steps, int) and self.num_steps >= 1 else 1,
            count_bits=self.event_bits,
            bin_us=self.event_bin_us,
            downsample=self.event_downsample,
            test_cut=self.test_cut,
        )

    def replace(self, **changes: Any) -> "TrainConfig":
        unknown = set(changes) - set(field_names())
        if unknown:
            raise QsnnError(f"unknown configuration field(s) {sorted(unknown)}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        data = dict(data)
        unknown = set(data) - set(field_names())
        if unknown:
            raise QsnnError(f"unknown configuration field(s) {sorted(unknown)}")
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)

    @classmethod
    def from_preset(cls, dataset: str, precision: str = "int4", **overrides: Any) -> "TrainConfig":
        """The Table I row for (dataset, precision), then ``overrides`` (None values ignored)."""
        row = preset(dataset, precision)
        values = {k: v for k, v in row.items() if k != "source" and (k != "arch" or dataset in PAPER_DATASETS)}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict({"dataset": dataset, "precision": precision, "preset_source": row["source"], **values})

    def for_profile(self, name: str) -> "TrainConfig":
        """This configuration trained for chip profile ``name`` (:mod:`qsnn.profiles`): its reset, its
        synaptic delay per layer and β rounded to its leak grid, so the integer network the chip runs
        is the network that was trained (up to the rounding of weights, thresholds and biases)."""
        from qsnn.arith import beta_on_grid
        from qsnn.profiles import get_profile

        p = get_profile(name)
        return self.replace(
            profile=p.name, reset=p.reset, synaptic_delay=p.synaptic_delay, beta=float(beta_on_grid(self.beta, p))
        )


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


@functools.lru_cache(maxsize=1)
def presets() -> dict[str, dict[str, dict[str, Any]]]:
    """The preset table: ``presets()[row][precision]`` → field values (and ``source``)."""
    return tomllib.loads(resources.files("qsnn").joinpath("presets.toml").read_text())


def preset_row(dataset: str) -> str:
    """The preset row (Table I) of a dataset: :data:`PRESET_ROW`, or for a user source MNIST's row for
    images and DVS128's for event frames (read from its headers)."""
    from qsnn import sources

    if sources.is_user(dataset):
        from qsnn.data import encoding_of

        return "dvs128" if encoding_of(dataset) == "events" else "mnist"
    if dataset not in PRESET_ROW:
        raise QsnnError(f"no preset for dataset {dataset!r}; datasets: {sorted(PRESET_ROW)}, arrays:DIR, folder:DIR")
    return PRESET_ROW[dataset]


def default_arch(dataset: str, num_classes: int | None) -> str:
    """The network a run gets without ``--arch``: the paper's for its datasets; for any other, its
    preset row's paper network with the last layer sized to the data's classes (D<K>)."""
    spec = PAPER_ARCH[preset_row(dataset)]
    if dataset in PAPER_DATASETS or num_classes is None:
        return spec
    arch = parse_arch(spec)
    return str(
        dataclasses.replace(
            arch, layers=(*arch.layers[:-1], dataclasses.replace(arch.layers[-1], out_features=num_classes))
        )
    )


def preset(dataset: str, precision: str) -> dict[str, Any]:
    row = preset_row(dataset)
    if precision not in PRECISIONS:
        raise QsnnError(f"no preset for precision {precision!r}; precisions: {list(PRECISIONS)}")
    return dict(presets()[row][precision])
