"""N-MNIST through tonic's own dataset class: its on-disk layout, sensor, classes and reader.

``tonic.datasets.NMNIST`` (tonic 1.7) keeps the recordings as ``DIR/NMNIST/Train|Test/<digit>/*.bin``
(the label is the last character of the folder's name, as tonic takes it), each file the ATIS
camera's 5-byte events read by ``tonic.io.read_mnist_file`` (x, y, p, t with t in µs). Everything
qsnn needs to know about the dataset comes from that class, not from constants here: the sensor
size (``NMNIST.sensor_size``: 34 × 34, 2 polarities), the class names, the folder names. The class
is read from tonic's source (:func:`tonic_class`) and the files with ``tonic.io`` loaded on its own,
because importing tonic imports torch, which ``qsnn-sim`` never does.

Time binning: a recording is three saccades of the camera; tonic's own ``stabilize`` times them at
:data:`SACCADE_US` each, so a recording lasts :data:`RECORDING_US` and, unless ``--event-bin-us``
says otherwise, T steps cover it: Δ = ⌈RECORDING_US / T⌉. The frames are then the encoding of
:mod:`qsnn.events` (:class:`~qsnn.events.EventFrames`: downsampling d, count clip 2^event_bits − 1).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from qsnn.errors import DataError
from qsnn.events import EventFrames, events_to_frames
from qsnn.jsonio import file_key, readonly

#: One saccade of the N-MNIST camera, µs (the 105e3 of ``tonic.datasets.nmnist.stabilize``).
SACCADE_US = 105_000
#: A recording: three saccades.
RECORDING_US = 3 * SACCADE_US
#: The structured events tonic's reader returns (tonic's ``NMNIST.dtype`` field order x, y, t, p).
EVENT_DTYPE = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])
INSTALL = "N-MNIST is read through tonic (one of qsnn's dependencies): pip install tonic"


def _tonic_source(module: str) -> Path:
    spec = importlib.util.find_spec("tonic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(INSTALL)
    for root in spec.submodule_search_locations:
        path = Path(root, *module.split(".")).with_suffix(".py")
        if path.is_file():
            return path
    raise DataError(f"tonic has no {module}.py here; {INSTALL} (tonic 1.7 or later)")


@functools.lru_cache(maxsize=8)
def tonic_class(name: str, module: str = "datasets.nmnist") -> dict[str, Any]:
    """The literal class attributes of ``tonic.<module>.<name>`` (``sensor_size``, ``classes``,
    ``train_folder``, ...), read from tonic's source without importing tonic (which imports torch)."""
    path = _tonic_source(module)
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            attrs = {}
            for stmt in node.body:
                if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                    try:
                        attrs[stmt.targets[0].id] = ast.literal_eval(stmt.value)
                    except ValueError:
                        continue  # not a literal (a dtype, a method call)
            return attrs
    raise DataError(f"{path}: tonic has no class {name}; {INSTALL} (tonic 1.7 or later)")


def nmnist_class() -> dict[str, Any]:
    """tonic's ``NMNIST``: ``sensor_size`` (W, H, polarities), ``classes``, ``train_folder``, ``test_folder``."""
    attrs = tonic_class("NMNIST")
    missing = [k for k in ("sensor_size", "classes", "train_folder", "test_folder") if k not in attrs]
    if missing:
        raise DataError(f"tonic's NMNIST class lacks {', '.join(missing)}; {INSTALL} (tonic 1.7 or later)")
    return attrs


def sensor() -> tuple[int, int]:
    """(W, H) of the N-MNIST sensor, tonic's ``NMNIST.sensor_size`` without its polarity count."""
    width, height, _ = nmnist_class()["sensor_size"]
    return int(width), int(height)


def classes() -> tuple[str, ...]:
    return tuple(str(c) for c in nmnist_class()["classes"])


def default_bin_us(num_steps: int) -> int:
    """Δ that makes T steps cover one recording (three saccades): ⌈RECORDING_US / T⌉."""
    return -(-RECORDING_US // max(1, int(num_steps)))


def split_folder(data_dir: Path | None, split: str) -> tuple[Path | None, list[str]]:
    """``DIR/NMNIST/Train`` (or ``Test``) if it holds recordings, and the paths searched."""
    if data_dir is None:
        return None, []
    attrs = nmnist_class()
    name = attrs["train_folder"] if split == "train" else attrs["test_folder"]
    searched = []
    for base in (data_dir / "NMNIST", data_dir):
        folder = base / name
        searched.append(f"{folder}/<digit>/*.bin")
        if folder.is_dir() and any(folder.glob("*/*.bin")):
            return folder, searched
    return None, searched


def recordings(folder: Path) -> list[tuple[Path, int]]:
    """The ``.bin`` files of a split with their labels, in tonic's order (``os.walk``, sorted folders
    and files; the label is the folder name's last character)."""
    n = len(classes())
    out = []
    for path, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            if not f.endswith("bin"):
                continue
            if not path[-1].isdigit() or int(path[-1]) >= n:
                raise DataError(
                    f"{Path(path, f)}: tonic's NMNIST layout keeps a digit's recordings in a folder named "
                    f"after it (0..{n - 1}); move the file into {folder}/<digit>/"
                )
            out.append((Path(path, f), int(path[-1])))
    return out


def _tonic_io():
    from qsnn.dvs import _tonic_io as load  # one place that loads tonic.io without torch

    return load()


def read_recording(path: Path) -> np.ndarray:
    """One ``.bin`` recording as tonic reads it: structured events x, y, t (µs), p. Raises
    :class:`DataError` naming the file when it is not whole 5-byte events."""
    size = path.stat().st_size
    if size % 5:
        raise DataError(
            f"{path}: {size} bytes is not a whole number of 5-byte N-MNIST events; the file is truncated or "
            "not an N-MNIST recording: copy it again from the dataset"
        )
    try:
        return _tonic_io().read_mnist_file(str(path), dtype=EVENT_DTYPE)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read the N-MNIST recording ({e})") from None


@functools.lru_cache(maxsize=4)
def _frames(keys: tuple[tuple[str, int, int], ...], labels: tuple[int, ...], frames: EventFrames, num_steps: int):
    x = np.zeros((len(keys), num_steps, *frames.frame_shape()), dtype=frames.dtype)
    for i, (path, _, _) in enumerate(keys):
        events = read_recording(Path(path))
        try:
            x[i] = events_to_frames(
                events,
                sensor_size=frames.sensor,
                downsample=frames.downsample,
                bin_us=frames.bin_us,
                num_steps=num_steps,
                count_max=frames.count_max,
            )
        except DataError as e:
            raise DataError(
                f"{path}: {e}; an N-MNIST recording has events inside tonic's {frames.sensor[0]}x"
                f"{frames.sensor[1]} sensor with polarity 0/1: copy it again from the dataset"
            ) from None
    return readonly(x), readonly(np.asarray(labels, dtype=np.int64))


def load_frames(data_dir: Path | None, split: str, frames: EventFrames, num_steps: int):
    """(x, y, source) of the official ``split`` ("train" or "test"): frames ``(N, T, 2, H, W)``, int64
    labels, the folder read. Raises :class:`DataError` listing where it looked when the split is missing."""
    folder, searched = split_folder(data_dir, split)
    if folder is None:
        where = "; ".join(searched) or "nowhere: no --data-dir and QSNN_DATA_DIR unset"
        raise DataError(
            f"dataset 'nmnist': the {split} split not found (searched {where}); put tonic's NMNIST folder "
            f"(NMNIST/Train|Test/<digit>/*.bin, as tonic.datasets.NMNIST downloads it) in DIR and pass --data-dir DIR "
            "or set QSNN_DATA_DIR"
        )
    found = recordings(folder)
    keys = tuple(file_key(p) for p, _ in found)
    x, y = _frames(keys, tuple(label for _, label in found), frames, num_steps)
    return x, y, str(folder)
