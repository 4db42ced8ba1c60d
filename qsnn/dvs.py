"""DVS128 Gesture: both on-disk forms people have, read, checked and cut into gestures (with a cache).

The two forms (``--data-dir DIR``; the first one found is used):

1. **tonic's layout** (what ``tonic.datasets.DVSGesture`` downloads, tonic 1.7): recordings already
   cut into gestures, ``DIR/DVSGesture/ibmGestureTrain|ibmGestureTest/user<NN>_<lighting>/<label>.npy``,
   each an ``(N, 4)`` array of x, y, p, t with **t in milliseconds** (tonic multiplies by 1000).
2. **IBM's original release** (``DvsGesture.tar.gz``): ``DIR/DvsGesture/user<NN>_<lighting>.aedat``
   (AEDAT 3.1, several gestures per recording) with ``user<NN>_<lighting>_labels.csv`` (rows
   ``class,startTime_usec,endTime_usec``, class 1..11, times in µs) and ``trials_to_train.txt`` /
   ``trials_to_test.txt``. Each recording is read with tonic's AEDAT reader (:mod:`tonic.io`), its
   packet headers are checked, and it is cut into one sample per CSV row (events with
   start ≤ t < end); the gestures are converted once into a cache beside the data
   (``DIR/DvsGesture.qsnn-cache/``: one ``.npz`` per recording and ``manifest.json`` with the size,
   mtime and SHA-256 of every source file), so later runs read the cache and a changed source is
   converted again.

Timestamp units are checked from the spans: one gesture lasts seconds, so a tonic recording whose
t spans more than :data:`MAX_GESTURE_MS` is in µs (or less than :data:`MIN_GESTURE_MS` with many
events: in seconds), and a labels CSV whose median window is shorter than :data:`MIN_GESTURE_US`
is not in µs; either stops with one line naming the file and the fix.

The frames a gesture becomes (binning, downsampling, the count clip, how a test gesture is cut
into samples) are the encoding of :mod:`qsnn.events`.
"""

from __future__ import annotations

import csv
import fcntl
import functools
import hashlib
import importlib.util
import io
import json
import os
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qsnn.atomic import atomic_open, atomic_write_text
from qsnn.errors import DataError
from qsnn.events import DVS_SENSOR_SIZE, EventFrames, gesture_windows
from qsnn.jsonio import file_key, readonly, sha256_file

# tonic.datasets.DVSGesture.classes (tonic 1.7); copied because importing tonic imports torch.
DVS_GESTURE_CLASSES = (
    "Hand clapping",
    "Right hand wave",
    "Left hand wave",
    "Right arm cw",
    "Right arm ccw",
    "Left arm cw",
    "Left arm ccw",
    "Arm roll",
    "Air drums",
    "Air guitar",
    "Other gestures",
)
DVS_FOLDERS = {"train": "ibmGestureTrain", "test": "ibmGestureTest"}  # tonic's layout
IBM_FOLDER = "DvsGesture"  # IBM's release
IBM_TRIALS = {"train": "trials_to_train.txt", "test": "trials_to_test.txt"}
#: IBM's README: users 1-23 train, 24-29 test (used when the trials_to_*.txt files are absent).
IBM_LAST_TRAIN_USER = 23

#: One gesture lasts seconds (IBM's are about 6 s); spans outside these bounds mean another unit.
MAX_GESTURE_MS = 60_000
MIN_GESTURE_MS = 10
MIN_EVENTS_FOR_SHORT_SPAN = 100
MIN_GESTURE_US = 100_000
MAX_GESTURE_US = 60_000_000

CACHE_FORMAT = "qsnn-dvsgesture-cache"
CACHE_VERSION = 1
CACHE_SUFFIX = ".qsnn-cache"

# AEDAT 3.1 (inivation's format description): a 28-byte little-endian header per event packet,
# then eventCapacity events of eventSize bytes. Polarity events (type 1) are 8 bytes: a 32-bit
# word (bit 0 valid, bit 1 polarity, bits 2-16 y, bits 17-31 x) and a 32-bit timestamp in µs,
# extended by eventTSOverflow << 31.
AEDAT_PACKET_HEADER = np.dtype(
    [
        ("type", "<i2"),
        ("source", "<i2"),
        ("size", "<i4"),
        ("ts_offset", "<i4"),
        ("ts_overflow", "<i4"),
        ("capacity", "<i4"),
        ("number", "<i4"),
        ("valid", "<i4"),
    ]
)
AEDAT_POLARITY_EVENT = 1
AEDAT_EVENT_BYTES = 8


# --------------------------------------------------------------------------------------------------
# Locating the data


def find_dvs(data_dir: Path | None, split: str) -> tuple[str, Path, list[str]]:
    """Where ``split`` ("train" or "test") is: ``("tonic", DIR/DVSGesture/ibmGesture<Split>)`` or
    ``("ibm", DIR/DvsGesture)``, tonic's layout first; and the paths searched."""
    searched: list[str] = []
    if data_dir is None:
        return "", Path(), searched
    for base in (data_dir / "DVSGesture", data_dir):
        folder = base / DVS_FOLDERS[split]
        searched.append(f"{folder}/user<NN>_<lighting>/<label>.npy")
        if folder.is_dir() and any(folder.glob("user*_*/*.npy")):
            return "tonic", folder, searched
    for base in (data_dir / IBM_FOLDER, data_dir):
        searched.append(f"{base}/user<NN>_<lighting>.aedat with user<NN>_<lighting>_labels.csv")
        if base.is_dir() and any(base.glob("user*_*.aedat")):
            return "ibm", base, searched
    return "", Path(), searched


def load_frames(
    data_dir: Path | None, split: str, frames: EventFrames, num_steps: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, str]:
    """(x, y, group, source) of the official ``split`` ("train" or "test") as read-only arrays.

    x: ``(N, T, 2, H, W)`` frames in ``frames.dtype``; y: int64 labels; group: for the test split
    cut into windows, the gesture index of each sample (else ``None``); source: the folder.
    Raises :class:`DataError` (``missing`` attribute set) when neither form is found.
    """
    form, base, searched = find_dvs(data_dir, split)
    if not form:
        other = "test" if split == "train" else "train"
        other_form, other_base, _ = find_dvs(data_dir, other)
        detail = ""
        if other_form == "tonic":  # one split there, the other not: name the missing folder
            missing = other_base.parent / DVS_FOLDERS[split]
            state = "has no user<NN>_<lighting>/<label>.npy recordings" if missing.is_dir() else "does not exist"
            detail = (
                f"dvs128: the {split} split is missing: {missing} {state}, while the {other} split is in "
                f"{other_base}; copy tonic's {DVS_FOLDERS[split]} folder there"
            )
        raise MissingDVS(searched, detail)
    cut = frames.test_cut if split == "test" else "first"
    if form == "tonic":
        folder = base
        recordings = _tonic_recordings(folder)
        keys = tuple(file_key(f) for f, _ in recordings)
        x, y, g = _frames_tonic(keys, tuple(label for _, label in recordings), frames, num_steps, cut)
        return x, y, g, str(folder)
    cache = ibm_cache(base)
    names = ibm_split(base, split, cache)
    keys = tuple((name, *file_key(cache.folder / cache.entry(name)["cache"]["file"])[1:]) for name in names)
    x, y, g = _frames_ibm(str(cache.folder), keys, frames, num_steps, cut)
    return x, y, g, str(base)


class MissingDVS(DataError):
    """Neither of the DVS128 Gesture forms was found; ``searched`` lists where."""

    def __init__(self, searched: list[str], detail: str = ""):
        super().__init__(detail or "dvs128 not found")
        self.searched = searched
        self.detail = detail  # when only one split is missing: which folder


def _stack(samples: list[np.ndarray], labels: list[int], frames: EventFrames, num_steps: int, cut: str):
    if samples:
        x = np.concatenate(samples)
    else:
        x = np.zeros((0, num_steps, *frames.frame_shape()), dtype=frames.dtype)
    counts = [len(s) for s in samples]
    y = np.repeat(np.asarray(labels, dtype=np.int64), counts)
    group = np.repeat(np.arange(len(samples), dtype=np.int64), counts) if cut == "windows" else None
    return readonly(x), readonly(y), (None if group is None else readonly(group))


# --------------------------------------------------------------------------------------------------
# tonic's layout


def _tonic_recordings(folder: Path) -> list[tuple[Path, int]]:
    """The recordings of a split with their labels, by user folder name then label."""
    recordings = []
    for user in sorted(d for d in folder.glob("user*_*") if d.is_dir()):
        for f in user.glob("*.npy"):
            if not f.stem.isdigit() or int(f.stem) >= len(DVS_GESTURE_CLASSES):
                raise DataError(f"{f}: expected a file named <label>.npy with label 0..{len(DVS_GESTURE_CLASSES) - 1}")
            recordings.append((f, int(f.stem)))
    recordings.sort(key=lambda r: (r[0].parent.name, r[1]))
    return recordings


def read_tonic_recording(path: Path) -> np.ndarray:
    """One ``<label>.npy`` of tonic's layout as an (N, 4) float64 array x, y, p, t with t in µs.

    Like ``tonic.datasets.DVSGesture.__getitem__``: t is multiplied by 1000 in the file's dtype
    and truncated to an integer number of µs. Checks the timestamp unit from the span
    (:func:`check_ms_span`). Raises :class:`DataError` naming the file.
    """
    try:
        events = np.load(path, allow_pickle=False)
    except Exception as e:  # noqa: BLE001 - a damaged .npy header fails in many ways (tokenize, EOF, ...)
        raise DataError(f"{path}: not a readable .npy recording ({type(e).__name__}: {e})") from None
    if events.ndim != 2 or events.shape[1] != 4 or events.dtype.kind not in "iuf":
        raise DataError(f"{path}: expected an (N, 4) numeric array of x, y, p, t, got {events.dtype} {events.shape}")
    t = events[:, 3]
    if len(t) and not np.all(np.isfinite(t)):
        raise DataError(f"{path}: timestamps are not all finite")
    check_column_order(path, events)
    check_ms_span(path, t)
    out = events.astype(np.float64)
    out[:, 3] = (t * 1000).astype(np.int64)  # ms -> µs, as tonic does (in the file's dtype, truncated)
    return out


_COLUMNS = ("x", "y", "p", "t")


def check_column_order(path: Path, events: np.ndarray) -> None:
    """Stop when column 3 of a tonic recording is evidently not the timestamp (sorted, not 0/1), with
    advice that matches the columns the file has: which column looks like t and like the polarity,
    and the reordering that gives x, y, p, t."""
    if len(events) < MIN_EVENTS_FOR_SHORT_SPAN:
        return  # too few events to tell the columns apart
    cols = [events[:, k] for k in range(4)]
    if not all(np.all(np.isfinite(c)) for c in cols):
        return  # reported by the checks of each field
    binary = [bool(np.all((c == 0) | (c == 1))) for c in cols]
    sorted_ = [bool(np.all(np.diff(c) >= 0)) and not b for c, b in zip(cols, binary)]
    if sorted_[3] or not (binary[3] or any(sorted_[:3])):
        return  # t in its place, or merely out of order (events_to_frames names the event)
    roles = []
    for k in range(4):
        c = cols[k]
        lo, hi = float(c.min()), float(c.max())
        kind = "0/1 values (a polarity?)" if binary[k] else ("sorted (timestamps?)" if sorted_[k] else "")
        roles.append(f"column {k}: {lo:g}..{hi:g}" + (f", {kind}" if kind else ""))
    advice = "tonic's DVSGesture layout is x, y, p, t (t in ms, sorted)"
    t_cols = [k for k in range(4) if sorted_[k]]
    p_cols = [k for k in range(4) if binary[k] and k not in t_cols]
    if len(t_cols) == 1 and p_cols:
        t_col, p_col = t_cols[0], p_cols[-1]
        xy = [k for k in range(4) if k not in (t_col, p_col)]
        order = [*xy, p_col, t_col]
        have = ", ".join(_COLUMNS[order.index(k)] for k in range(4))
        advice = f"the columns look like {have}; {advice}: reorder them with a = a[:, {order}] and save the array again"
    else:
        advice = f"column 3 should hold the timestamps; {advice}"
    raise DataError(f"{path}: column 3 is not sorted like timestamps ({'; '.join(roles)}): {advice}")


def check_ms_span(path: Path, t: np.ndarray) -> None:
    """Stop when a tonic recording's timestamps are evidently not in ms (one gesture lasts seconds)."""
    if len(t) < 2:
        return
    span = float(t[-1]) - float(t[0])
    if span > MAX_GESTURE_MS:
        raise DataError(
            f"{path}: timestamps span {span:.6g} ms ({span / 3.6e6:.3g} h) for one gesture; tonic's DVSGesture "
            f"layout stores t in milliseconds and these look like microseconds: divide column 3 by 1000 "
            f"(a[:, 3] /= 1000, then save the array again) or pass IBM's .aedat release instead"
        )
    if 0 <= span < MIN_GESTURE_MS and len(t) >= MIN_EVENTS_FOR_SHORT_SPAN:
        raise DataError(
            f"{path}: {len(t)} events within {span:.6g} ms for one gesture; tonic's DVSGesture layout stores t in "
            f"milliseconds and these look like seconds: multiply column 3 by 1000 (a[:, 3] *= 1000, then save it again)"
        )


@functools.lru_cache(maxsize=4)
def _frames_tonic(
    keys: tuple[tuple[str, int, int], ...], labels: tuple[int, ...], frames: EventFrames, num_steps: int, cut: str
):
    samples = []
    for path, _, _ in keys:
        events = read_tonic_recording(Path(path))
        try:
            samples.append(gesture_windows(events, frames, num_steps, cut))
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
    return _stack(samples, list(labels), frames, num_steps, cut)


# --------------------------------------------------------------------------------------------------
# IBM's release: AEDAT 3.1 through tonic's reader


def _tonic_io():
    """tonic's ``io`` module (its AEDAT readers).

    tonic's package ``__init__`` imports torch (seconds, and ``qsnn-sim`` never imports torch);
    ``tonic/io.py`` itself needs only NumPy, so it is loaded on its own when possible.
    """
    if "tonic.io" in sys.modules:
        return sys.modules["tonic.io"]
    spec = importlib.util.find_spec("tonic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("reading IBM's .aedat files needs tonic (pip install tonic)")
    for root in spec.submodule_search_locations:
        path = Path(root) / "io.py"
        if path.is_file():
            mod_spec = importlib.util.spec_from_file_location("qsnn._tonic_io", path)
            module = importlib.util.module_from_spec(mod_spec)
            try:
                mod_spec.loader.exec_module(module)
                return module
            except ImportError:
                break
    import tonic.io

    return tonic.io


def tonic_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("tonic")
    except PackageNotFoundError:
        return "unknown"


def _aedat_packets(path: Path, raw: bytes, start: int) -> list[tuple[int, np.void]]:
    """(byte offset, header) of every event packet after the text header; checks the layout tonic assumes."""
    packets = []
    pos = start
    size = len(raw)
    while pos < size:
        if pos + AEDAT_PACKET_HEADER.itemsize > size:
            raise DataError(
                f"{path}: truncated AEDAT file: {size - pos} stray bytes after the last event packet "
                f"(byte {pos}); download the recording again"
            )
        head = np.frombuffer(raw, dtype=AEDAT_PACKET_HEADER, count=1, offset=pos)[0]
        capacity, number = int(head["capacity"]), int(head["number"])
        if int(head["size"]) != AEDAT_EVENT_BYTES or capacity < 0 or not 0 <= number <= capacity:
            raise DataError(
                f"{path}: event packet at byte {pos} has type {int(head['type'])}, eventSize "
                f"{int(head['size'])}, capacity {capacity}, number {number}; an AEDAT 3.1 DVS128 recording "
                f"has 8-byte events (is this a DvsGesture .aedat file?)"
            )
        end = pos + AEDAT_PACKET_HEADER.itemsize + capacity * AEDAT_EVENT_BYTES
        if end > size:
            raise DataError(
                f"{path}: truncated AEDAT file: the packet at byte {pos} needs {end - pos} bytes, "
                f"{size - pos} are left; download the recording again"
            )
        packets.append((pos, head))
        pos = end
    return packets


def read_ibm_aedat(path: str | os.PathLike) -> tuple[np.ndarray, dict[str, Any]]:
    """The polarity events of one recording of IBM's release: structured x, y, p (uint8), t (int64, µs).

    Reads the file with tonic's AEDAT reader (``tonic.io.read_aedat_header_from_file`` and
    ``get_aer_events_from_file``, the two halves of ``tonic.io.read_dvs_ibm``, which tonic 1.7 cannot
    call itself: https://github.com/neuromorphs/tonic/issues/302) and decodes addresses as
    ``read_dvs_ibm`` does (x = bits 17-31, y = bits 2-16, p = bit 1). tonic reads every packet's
    ``eventCapacity`` events as polarity events; qsnn walks the packet headers too and keeps only
    events of polarity packets (type 1) that are within ``eventNumber`` and marked valid (bit 0),
    with timestamps extended by ``eventTSOverflow``. Events out of time order are sorted (stable).
    Returns the events and a dict of what was dropped. Raises :class:`DataError` naming the file.
    """
    path = Path(path)
    tio = _tonic_io()
    try:
        header = tio.read_aedat_header_from_file(str(path))
        version, start = float(header[0]), int(header[1])
    except Exception as e:  # noqa: BLE001 - tonic's header parser fails with Assertion/Value/UnboundLocal errors
        raise DataError(
            f"{path}: not an AEDAT 3.1 recording: tonic cannot read its header "
            f"({type(e).__name__}: {str(e)[:80]}); expected '#!AER-DAT3.1' header lines"
        ) from None
    if not 3.0 <= version < 4.0:
        raise DataError(f"{path}: AEDAT version {version:g}; IBM's DvsGesture release is AEDAT 3.1")
    raw = path.read_bytes()
    packets = _aedat_packets(path, raw, start)
    if not packets:
        raise DataError(f"{path}: no event packets after the header")
    raw_events = tio.get_aer_events_from_file(str(path), version, start)
    capacities = np.array([int(h["capacity"]) for _, h in packets], dtype=np.int64)
    if len(raw_events) != int(capacities.sum()):
        raise DataError(
            f"{path}: tonic read {len(raw_events)} events but the packet headers hold "
            f"{int(capacities.sum())}; the file is damaged"
        )
    first = np.concatenate([[0], np.cumsum(capacities)[:-1]])
    keep = np.zeros(len(raw_events), dtype=bool)
    overflow = np.zeros(len(raw_events), dtype=np.int64)
    other_types: dict[int, int] = {}
    for (_, head), i0, cap in zip(packets, first, capacities):
        number = int(head["number"])
        if int(head["type"]) == AEDAT_POLARITY_EVENT:
            keep[i0 : i0 + number] = True
            overflow[i0 : i0 + cap] = int(head["ts_overflow"])
        else:
            other_types[int(head["type"])] = other_types.get(int(head["type"]), 0) + number
    addr = raw_events["address"].astype(np.int64)
    invalid = keep & ((addr & 1) == 0)
    keep &= ~invalid
    addr = addr[keep]
    t = raw_events["timeStamp"].astype(np.int64)[keep] + (overflow[keep] << 31)
    x = (addr >> 17) & 0x1FFF
    y = (addr >> 2) & 0x1FFF
    p = (addr >> 1) & 0x1
    width, height = DVS_SENSOR_SIZE
    bad = np.flatnonzero((x >= width) | (y >= height))
    if len(bad):
        raise DataError(
            f"{path}: event at ({x[bad[0]]}, {y[bad[0]]}) outside the {width}x{height} DVS128 sensor; "
            "not a DvsGesture recording"
        )
    out_of_order = int(np.count_nonzero(np.diff(t) < 0))
    events = np.empty(len(t), dtype=[("x", np.uint8), ("y", np.uint8), ("p", np.uint8), ("t", np.int64)])
    events["x"], events["y"], events["p"], events["t"] = x, y, p, t
    if out_of_order:
        events = events[np.argsort(t, kind="stable")]
    return events, {
        "other_packet_events": {str(k): v for k, v in sorted(other_types.items())},
        "invalid_events": int(invalid.sum()),
        "out_of_order": out_of_order,
        "packets": len(packets),
        "aedat_version": version,
    }


def read_ibm_labels(path: str | os.PathLike) -> np.ndarray:
    """A ``*_labels.csv`` of IBM's release: int64 rows (class 0..10, start µs, end µs).

    The file has the header ``class,startTime_usec,endTime_usec`` and classes 1..11. The median
    gesture must last between :data:`MIN_GESTURE_US` and :data:`MAX_GESTURE_US` µs, else the times
    are not in µs. Raises :class:`DataError` naming the file (and line).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(
            f"{path}: labels file missing; IBM's release has one <recording>_labels.csv per .aedat"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read the labels CSV ({e})") from None
    rows = []
    for line_no, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if line_no == 1 and not cells[0].lstrip("-").isdigit():
            continue  # the header
        try:
            label, start, end = (int(float(c)) for c in cells[:3])
        except ValueError:
            raise DataError(
                f"{path}, line {line_no}: expected class,startTime_usec,endTime_usec, got {','.join(cells)!r}"
            ) from None
        if not 1 <= label <= len(DVS_GESTURE_CLASSES):
            raise DataError(f"{path}, line {line_no}: class {label} outside 1..{len(DVS_GESTURE_CLASSES)}")
        if end <= start:
            raise DataError(f"{path}, line {line_no}: gesture ends ({end}) before it starts ({start})")
        rows.append((label - 1, start, end))
    if not rows:
        raise DataError(f"{path}: no gestures listed")
    length = float(np.median([e - s for _, s, e in rows]))  # the unit shows in every row, a glitch in one
    if length < MIN_GESTURE_US:
        raise DataError(
            f"{path}: gestures last {length:g} (median) in the file's time unit; IBM's labels give start and end in "
            f"microseconds and gestures last seconds, so these times look like milliseconds: multiply them by 1000 "
            f"or use the CSV that came with the .aedat file"
        )
    if length > MAX_GESTURE_US:
        raise DataError(
            f"{path}: gestures last {length / 1e6:g} s (median) if the times are µs; IBM's gestures last "
            "seconds: check the unit of the start and end times"
        )
    return np.array(rows, dtype=np.int64).reshape(-1, 3)


def cut_gestures(events: np.ndarray, labels: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Split sorted events into gestures by label windows: (offsets (G+1,), kept-event indices).

    Gesture g is the events with start_g ≤ t < end_g. Raises :class:`DataError` when a window lies
    outside the recording's time range (the CSV belongs to another recording or another unit).
    """
    t = events["t"]
    if len(t) == 0:
        raise DataError(f"{where}: the recording holds no polarity events")
    t0, t1 = int(t[0]), int(t[-1])
    idx, offsets = [], [0]
    for g, (_, start, end) in enumerate(labels):
        if end <= t0 or start > t1:
            raise DataError(
                f"{where}: gesture {g + 1} of the labels CSV ({start}..{end} µs) lies outside the "
                f"recording's events ({t0}..{t1} µs); the CSV belongs to another recording, or its "
                "times are not in µs"
            )
        lo, hi = np.searchsorted(t, [start, end], side="left")
        idx.append(np.arange(lo, hi))
        offsets.append(offsets[-1] + int(hi - lo))
    return np.asarray(offsets, dtype=np.int64), np.concatenate(idx)


# --------------------------------------------------------------------------------------------------
# The cache of IBM recordings


def _stat(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def cache_folder(source: Path) -> Path:
    """Where the cache of ``source`` lives: beside it, or (read-only data) under ``~/.cache/qsnn``."""
    beside = source.parent / f"{source.name}{CACHE_SUFFIX}"
    try:
        beside.mkdir(exist_ok=True)
        with tempfile.TemporaryFile(dir=beside):  # can we write there?
            pass
        return beside
    except OSError:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "qsnn"
        digest = hashlib.sha256(str(source.resolve()).encode()).hexdigest()[:12]
        folder = base / f"dvsgesture-{digest}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder


@dataclass
class IBMCache:
    """The converted recordings of one IBM release folder: ``folder`` and its ``manifest``."""

    source: Path
    folder: Path
    manifest: dict[str, Any]
    converted: list[str]
    seconds: float

    def entry(self, name: str) -> dict[str, Any]:
        return self.manifest["recordings"][name]


def _ibm_recordings(source: Path) -> list[str]:
    names = sorted(p.stem for p in source.glob("user*_*.aedat") if p.is_file())
    for name in names:
        csv_path = source / f"{name}_labels.csv"
        if not csv_path.is_file():
            raise DataError(
                f"{csv_path}: labels file missing for {name}.aedat; IBM's release has one "
                "<recording>_labels.csv per .aedat (from DvsGesture.tar.gz)"
            )
    return names


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        manifest = json.loads(path.read_text())
        if (
            manifest.get("format") == CACHE_FORMAT
            and manifest.get("version") == CACHE_VERSION
            and isinstance(manifest.get("recordings"), dict)
        ):
            return manifest
    except (OSError, ValueError, AttributeError):
        pass
    return {}


def _source_unchanged(entry: dict[str, Any], aedat: Path, labels: Path, folder: Path) -> bool | None:
    """True if the cached entry still describes the sources and its cache file; None if only mtimes moved."""
    try:
        cache_ok = _stat(folder / entry["cache"]["file"]) == {k: entry["cache"][k] for k in ("bytes", "mtime_ns")}
        same = [
            _stat(p) == {k: entry[key][k] for k in ("bytes", "mtime_ns")}
            for p, key in ((aedat, "aedat"), (labels, "labels"))
        ]
        sizes = [p.stat().st_size == entry[key]["bytes"] for p, key in ((aedat, "aedat"), (labels, "labels"))]
    except (OSError, KeyError, TypeError):
        return False
    if not cache_ok or not all(sizes):
        return False
    return True if all(same) else None


def _convert(source: Path, folder: Path, name: str) -> dict[str, Any]:
    aedat, labels_csv = source / f"{name}.aedat", source / f"{name}_labels.csv"
    labels = read_ibm_labels(labels_csv)
    events, dropped = read_ibm_aedat(aedat)
    offsets, idx = cut_gestures(events, labels, str(labels_csv))
    gestures = events[idx]
    cache_name = f"{name}.npz"
    with atomic_open(folder / cache_name, "wb") as fh:
        np.savez(
            fh,
            x=gestures["x"],
            y=gestures["y"],
            p=gestures["p"],
            t=gestures["t"],
            offsets=offsets,
            labels=labels[:, 0],
            windows=labels[:, 1:],
        )
    return {
        "aedat": {**_stat(aedat), "sha256": sha256_file(aedat)},
        "labels": {**_stat(labels_csv), "sha256": sha256_file(labels_csv)},
        "cache": {"file": cache_name, **_stat(folder / cache_name)},
        "gestures": [
            [int(label), int(s), int(e), int(offsets[g + 1] - offsets[g])] for g, (label, s, e) in enumerate(labels)
        ],
        "events": {"recording": int(len(events)), "in_gestures": int(len(idx)), **dropped},
    }


def ibm_cache(source: Path, *, progress: bool = True) -> IBMCache:
    """Convert every recording of ``source`` not yet (or no longer correctly) in the cache; return the cache.

    A recording is converted again when its .aedat or labels CSV changed (size, or content by
    SHA-256 when only the mtime moved) or its cache file is missing or was modified. Processes
    sharing the data folder take turns (a lock file); each file is written atomically, the manifest last.
    """
    t_start = time.perf_counter()
    names = _ibm_recordings(source)
    folder = cache_folder(source)
    converted: list[str] = []
    lock = os.open(folder / ".lock", os.O_CREAT | os.O_RDWR, 0o666)  # an empty lock file, never read
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # several ranks/runs on one data folder take turns
        except OSError:
            pass  # a file system without locks: atomic writes still hold
        manifest_path = folder / "manifest.json"
        manifest = _read_manifest(manifest_path)
        old = dict(manifest.get("recordings", {}))
        recordings: dict[str, Any] = {}
        todo, changed = [], False
        for name in names:
            aedat, labels = source / f"{name}.aedat", source / f"{name}_labels.csv"
            entry = old.get(name)
            state = _source_unchanged(entry, aedat, labels, folder) if entry else False
            if state is None:  # touched or copied: compare contents
                if sha256_file(aedat) == entry["aedat"]["sha256"] and sha256_file(labels) == entry["labels"]["sha256"]:
                    entry["aedat"].update(_stat(aedat))
                    entry["labels"].update(_stat(labels))
                    state, changed = True, True
                else:
                    state = False
            if state:
                recordings[name] = entry
            else:
                todo.append(name)
        bar = None
        if todo and progress:
            from tqdm import tqdm

            what = "converting" if not old else "converting changed/new"
            bar = tqdm(
                todo,
                desc=f"DvsGesture: {what} .aedat recordings",
                unit="recording",
                leave=False,
                file=sys.stderr,
                disable=None,
            )  # no bar when stderr is not a terminal
        for name in bar if bar is not None else todo:
            recordings[name] = _convert(source, folder, name)
            converted.append(name)
        for gone in set(old) - set(names):
            cache_file = folder / str(old[gone].get("cache", {}).get("file", ""))
            if cache_file.is_file() and cache_file.parent == folder:
                cache_file.unlink()
            changed = True
        if converted or changed or not manifest:
            manifest = {
                "format": CACHE_FORMAT,
                "version": CACHE_VERSION,
                "source": str(source),
                "reader": f"tonic.io.read_aedat_header_from_file + get_aer_events_from_file (tonic {tonic_version()})"
                if converted
                else manifest.get("reader", ""),
                "cut": "one sample per labels-CSV row: events with start <= t < end (µs)",
                "recordings": dict(sorted(recordings.items())),
            }
            atomic_write_text(manifest_path, json.dumps(manifest, indent=1) + "\n")
    finally:
        os.close(lock)  # releases the lock
    seconds = time.perf_counter() - t_start
    if converted and progress:
        n_gestures = sum(len(recordings[n]["gestures"]) for n in converted)
        print(
            f"DvsGesture: converted {len(converted)} recording(s), {n_gestures} gestures, into {folder} "
            f"in {seconds:.1f} s (later runs read the cache)",
            file=sys.stderr,
        )
    return IBMCache(source, folder, manifest, converted, seconds)


def _user_number(name: str) -> int | None:
    head = name.split("_", 1)[0]
    return int(head[4:]) if head.startswith("user") and head[4:].isdigit() else None


def ibm_split(source: Path, split: str, cache: IBMCache) -> list[str]:
    """The recordings of ``split``: those listed in ``trials_to_train.txt`` / ``trials_to_test.txt``,
    else by user (IBM's README: users 1-23 train, 24-29 test)."""
    names = list(cache.manifest["recordings"])
    trials = source / IBM_TRIALS[split]
    if trials.is_file():
        listed = [Path(line.strip()).stem for line in trials.read_text().splitlines() if line.strip()]
        missing = [n for n in listed if n not in cache.manifest["recordings"]]
        if missing:
            raise DataError(
                f"{trials} lists {missing[0]}.aedat (and {len(missing) - 1} more) but {source} does not "
                "hold it; copy the whole DvsGesture folder"
            )
        return sorted(listed)
    out = []
    for name in names:
        user = _user_number(name)
        if user is None:
            continue
        if (user <= IBM_LAST_TRAIN_USER) == (split == "train"):
            out.append(name)
    return out


def read_cached_gestures(folder: Path, name: str) -> list[tuple[np.ndarray, int]]:
    """The gestures of one converted recording: (structured events x, y, p, t in µs, label 0..10)."""
    path = folder / f"{name}.npz"
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y, p, t, offsets, labels = (z[k] for k in ("x", "y", "p", "t", "offsets", "labels"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(
            f"{path}: damaged cache file ({type(e).__name__}); delete it and run again to convert the recording anew"
        ) from None
    events = np.empty(len(t), dtype=[("x", np.uint8), ("y", np.uint8), ("p", np.uint8), ("t", np.int64)])
    events["x"], events["y"], events["p"], events["t"] = x, y, p, t
    return [(events[offsets[g] : offsets[g + 1]], int(labels[g])) for g in range(len(labels))]


@functools.lru_cache(maxsize=4)
def _frames_ibm(folder: str, keys: tuple[tuple[str, int, int], ...], frames: EventFrames, num_steps: int, cut: str):
    samples, labels = [], []
    for name, _, _ in keys:
        for events, label in read_cached_gestures(Path(folder), name):
            samples.append(gesture_windows(events, frames, num_steps, cut))
            labels.append(label)
    return _stack(samples, labels, frames, num_steps, cut)
