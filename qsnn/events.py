"""Event frames: how event recordings become the integer frames a chip's first layer receives.

The input encoding of event data; the same in training, export, simulation and the hardware tables.
The dataset readers that produce the events (DVS128 Gesture's two on-disk forms, and the cache of
IBM's recordings) are :mod:`qsnn.dvs`.

**Frames** (:class:`EventFrames`). With Δ = ``bin_us``, d = ``downsample``, c = ``count_max``, the
sensor's W×H (``sensor``: 128×128 for DVS128 Gesture, 34×34 for N-MNIST, as the dataset says) and
t₀ the time of the recording's first event, step k of a sample is

    frame[k, p, y // d, x // d] = min(#{events i : ⌊(t_i − t₀) / Δ⌋ = k}, c)

which is tonic's ``Downsample(spatial_factor=1/d)`` then ``ToFrame(time_window=Δ)`` followed by the
clip to c (tested against tonic on the same events). The one intended difference: a sample has
exactly T frames — the first T bins from t₀, zeros after the last event — where tonic's ``ToFrame``
gives as many whole bins as the recording holds. ``c = 2^count_bits − 1`` is what one input cell of
the chip can carry per step: 1 for binary spikes, 15 for 4-bit counts, 255 for 8-bit counts; the
compiler's worst-case membrane bound assumes exactly this.

Samples: a training (and validation) sample is the first T steps of a gesture. A test gesture is
cut by ``test_cut``: ``"first"`` — its first T steps, one prediction (the paper's recipe: "1 s per
sample", training and test alike); ``"windows"`` — every whole T-step window of the gesture (at
least one), each run from zero membranes as one inference, the gesture's prediction being the
argmax of the output spike counts summed over its windows.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from qsnn.errors import DataError

DVS_SENSOR_SIZE = (128, 128)  # (width, height) of the DVS128 sensor
TEST_CUTS = ("first", "windows")


# --------------------------------------------------------------------------------------------------
# The encoding


@dataclass(frozen=True)
class EventFrames:
    """How event recordings become the integer frames the first layer, and the chip's input port, receive.

    Attributes:
        bin_us: Δ, the length of one time step in µs (paper: 5 ms); 0 for frames a user gives already
            binned (``arrays:`` event frames: qsnn bins nothing).
        downsample: d, sensor pixels per frame cell along x and y (paper: 4, 128×128 → 32×32).
        count_bits: width of one input cell per step; counts are clipped to ``2^count_bits − 1``
            (1: binary spikes, 4: counts 0..15, 8: counts 0..255).
        test_cut: ``"first"`` or ``"windows"``: how a test gesture becomes samples (module docstring).
        sensor: (W, H) of the sensor the events come from (the dataset's; frames are ⌈H/d⌉×⌈W/d⌉).
        channels: C of a frame: 2 polarities for a sensor's events, any C for pre-binned frames.
    """

    bin_us: int = 5000
    downsample: int = 4
    count_bits: int = 1
    test_cut: str = "first"
    sensor: tuple[int, int] = DVS_SENSOR_SIZE
    channels: int = 2

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.sensor, list):
            object.__setattr__(self, "sensor", tuple(self.sensor))
        for name, lo, hi in (
            ("bin_us", 0, 10**9),
            ("downsample", 1, 128),
            ("count_bits", 1, 16),
            ("channels", 1, 2**16),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                problems.append(f"{name}={value!r} (an integer in {lo}..{hi})")
        sensor = self.sensor
        if (
            not isinstance(sensor, tuple)
            or len(sensor) != 2
            or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in sensor)
        ):
            problems.append(f"sensor={sensor!r} (width and height, integers >= 1)")
        if self.test_cut not in TEST_CUTS:
            problems.append(f"test_cut={self.test_cut!r} (one of {', '.join(TEST_CUTS)})")
        if problems:
            raise DataError("invalid event encoding: " + "; ".join(problems))

    @property
    def count_max(self) -> int:
        """c, the largest value of one input cell per step."""
        return 2**self.count_bits - 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.count_max <= 255 else np.uint16)

    def frame_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one frame: ⌈H/d⌉ × ⌈W/d⌉ cells of the sensor."""
        width, height = self.sensor
        return self.channels, -(-height // self.downsample), -(-width // self.downsample)

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "sensor": list(self.sensor), "count_max": self.count_max}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EventFrames":
        if not isinstance(data, dict):
            raise DataError(f"an event encoding is a table of fields, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def event_frames_from_metadata(meta: dict[str, Any]) -> EventFrames:
    """The encoding a model was trained with, from its export or network metadata.

    Exports written before the encoding was recorded carry only ``input_max`` (65535: raw counts);
    before the sensor was recorded, every event model was DVS128 Gesture's (the default sensor).
    """
    if isinstance(meta.get("event_frames"), dict):
        return EventFrames.from_dict(meta["event_frames"])
    return EventFrames(count_bits=max(1, int(meta.get("input_max", 65535)).bit_length()))


# --------------------------------------------------------------------------------------------------
# Frames


def events_to_frames(
    events: np.ndarray,
    *,
    sensor_size=DVS_SENSOR_SIZE,
    downsample: int = 4,
    bin_us: int = 5000,
    num_steps: int | None = 100,
    count_max: int | None = None,
) -> np.ndarray:
    """Event counts per time bin, polarity and downsampled pixel: ``(T, 2, H/d, W/d)``.

    ``events``: an ``(N, 4)`` array of x, y, p, t (t in µs, sorted) or a structured array with those
    fields. Event i lands in frame ``[(t_i − t_0) // bin_us, p_i, y_i // d, x_i // d]``, t_0 being
    the first event's time (as tonic's ``ToFrame(time_window=...)``); the first ``num_steps`` bins
    are kept and a shorter recording is zero-padded (``num_steps=None``: every bin up to the last
    event). Counts are clipped to ``count_max`` (uint8 when it is ≤ 255), or, with ``None``, kept
    as uint16 saturating at 65535. Raises :class:`DataError` for coordinates outside
    ``sensor_size`` (width, height), polarity other than 0/1, or timestamps that are not sorted.
    """
    width, height = sensor_size
    if bin_us < 1:
        raise DataError(f"bin_us={bin_us}: events are binned in steps of at least 1 µs")
    if events.dtype.names:
        cols = [np.asarray(events[f], dtype=np.float64) for f in ("x", "y", "p", "t")]
    else:
        if events.ndim != 2 or events.shape[1] != 4:
            raise DataError(f"events must be an (N, 4) array of x, y, p, t, got shape {events.shape}")
        cols = [np.asarray(events[:, i], dtype=np.float64) for i in range(4)]
    x, y, p, t = cols
    out_h, out_w = -(-height // downsample), -(-width // downsample)
    limit = np.iinfo(np.uint16).max if count_max is None else int(count_max)
    dtype = np.uint8 if limit <= np.iinfo(np.uint8).max else np.uint16
    if len(t) == 0:
        return np.zeros((num_steps or 1, 2, out_h, out_w), dtype=dtype)
    if not np.all(np.isfinite(t)):
        raise DataError("timestamps are not all finite")
    for name, v, size in (("x", x, width), ("y", y, height)):
        bad = (v < 0) | (v >= size) | (v != np.floor(v))
        if bad.any():
            raise DataError(f"{name} coordinate {v[bad][0]:g} outside the {width}x{height} sensor")
    bad_p = (p != 0) & (p != 1)
    if bad_p.any():
        raise DataError(f"polarity {p[bad_p][0]:g} is not 0 or 1")
    backwards = np.flatnonzero(np.diff(t) < 0)
    if len(backwards):
        i = backwards[0]
        raise DataError(f"timestamps not sorted: event {i + 1} at t={t[i + 1]:g} follows t={t[i]:g}")
    step = np.floor((t - t[0]) / bin_us).astype(np.int64)
    steps = int(step[-1]) + 1 if num_steps is None else int(num_steps)
    keep = step < steps
    flat = ((step[keep] * 2 + p[keep].astype(np.int64)) * out_h + y[keep].astype(np.int64) // downsample) * out_w + x[
        keep
    ].astype(np.int64) // downsample
    counts = np.bincount(flat, minlength=steps * 2 * out_h * out_w)
    return np.minimum(counts, limit).astype(dtype).reshape(steps, 2, out_h, out_w)


def gesture_windows(events: np.ndarray, frames: EventFrames, num_steps: int, cut: str) -> np.ndarray:
    """The samples of one gesture, ``(K, T, 2, H, W)``: its first T steps (``cut="first"``, K = 1) or
    every whole T-step window (``"windows"``, K = max(1, ⌊span / (T·Δ)⌋), span = t_last − t₀)."""
    binning = {"sensor_size": frames.sensor, "downsample": frames.downsample, "bin_us": frames.bin_us}
    if cut == "first":
        return events_to_frames(events, **binning, num_steps=num_steps, count_max=frames.count_max)[None]
    t = np.asarray(events["t"] if events.dtype.names else events[:, 3], dtype=np.float64)
    span = float(t[-1] - t[0]) if len(t) else 0.0
    k = max(1, int(span // (num_steps * frames.bin_us)))
    full = events_to_frames(events, **binning, num_steps=k * num_steps, count_max=frames.count_max)
    return full.reshape(k, num_steps, *full.shape[1:])
