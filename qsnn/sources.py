"""A user's own data as a dataset: ``arrays:DIR`` (NumPy ``.npz`` files) and ``folder:DIR`` (an ImageFolder).

``--dataset arrays:DIR`` — ``DIR/train.npz`` and ``DIR/test.npz`` (``DIR/val.npz`` optional; else the
validation split is carved from train, stratified and seeded, as for the named datasets), each
written with ``np.savez(path, x=..., y=..., classes=...)``:

- ``x``: uint8 images ``(N, C, H, W)`` or ``(N, H, W)`` (one channel), the pixels 0..255 the first
  layer takes (real value pixel/255); or integer event frames ``(N, T, C, H, W)`` of per-bin counts
  ≥ 0, which qsnn clips to the encoding's 2^event_bits − 1 (:class:`qsnn.events.EventFrames`) and
  cuts or zero-pads to the run's T steps (the first T bins, as for recordings);
- ``y``: integer class indices 0..K−1, one per sample;
- ``classes`` (optional): K class names; without it the classes are ``"0"``..``"K−1"`` with K one
  more than the largest label.

``--dataset folder:DIR`` — torchvision's ``ImageFolder`` layout: ``DIR/train/<class>/*.png|jpg|...``
and ``DIR/test/<class>/...`` (``DIR/val/`` optional), the classes being the train folder's subfolders
in sorted order (as ``ImageFolder`` numbers them). Images are read with Pillow. They are grayscale
(C = 1) when every image of the dataset is (Pillow modes 1, L, LA), else RGB (C = 3; each image
``convert("RGB")``, alpha dropped). They must share one size, unless the value states a resize rule:
``folder:DIR@WxH`` resizes every image of another size to W×H (Pillow's bilinear filter, after the
conversion); the rule is part of the dataset's name, so a model trained on it remembers it.

Any H×W, any C, any number of classes: the architecture spec is checked against what the data holds
(:func:`info` reads only the headers). Every class must have training samples. A file that breaks
these rules stops the load with one line naming the file, what is wrong and what to do.
"""

from __future__ import annotations

import functools
import os
import re
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qsnn.errors import DataError
from qsnn.events import EventFrames
from qsnn.jsonio import file_key, readonly

#: The user-data kinds of a ``--dataset`` value ``KIND:DIR``, and what DIR holds.
KINDS = {
    "arrays": "train.npz and test.npz (optionally val.npz) with x, y and optionally classes",
    "folder": "train/<class>/*.png|jpg and test/<class>/... (torchvision's ImageFolder layout)",
}
NPZ = {"train": "train.npz", "val": "val.npz", "test": "test.npz"}
#: The image files an ImageFolder reads (torchvision's IMG_EXTENSIONS that Pillow opens).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
#: Pillow modes read as one grayscale channel; any other mode makes the dataset RGB.
GRAY_MODES = ("1", "L", "LA")
#: Pillow modes of more than 8 bits per value (16/32-bit integer, float): Pillow's conversion to L or
#: RGB would clip them at 255, so they are refused rather than read.
DEEP_MODES = ("I", "F")
#: Share of the training set carved out as validation when DIR has no val.npz / val/ folder.
VAL_FRACTION = 0.1


#: ``folder:DIR@WxH``: the resize rule of an ImageFolder (every image to W×H, Pillow's bilinear filter).
_SIZE = re.compile(r"@(\d+)x(\d+)$")


def parse(name: str) -> tuple[str, Path] | None:
    """``("arrays" | "folder", DIR)`` for a user-data ``--dataset`` value, else ``None`` (a named dataset)."""
    kind, sep, rest = str(name).partition(":")
    if not sep or kind not in KINDS:
        return None
    if kind == "folder":
        rest = _SIZE.sub("", rest)
    if not rest:
        raise DataError(f"{name!r}: give the folder after '{kind}:', e.g. {kind}:data/mine (it holds {KINDS[kind]})")
    return kind, Path(rest).expanduser()


def resize_rule(name: str) -> tuple[int, int] | None:
    """(W, H) of ``folder:DIR@WxH`` (every image resized to W×H), else ``None`` (images keep their one size)."""
    m = _SIZE.search(str(name)) if str(name).startswith("folder:") else None
    if m is None:
        return None
    size = (int(m.group(1)), int(m.group(2)))
    if min(size) < 1:
        raise DataError(f"{name!r}: the size after '@' is W x H in pixels, each at least 1 (e.g. @32x32)")
    return size


def is_user(name: str) -> bool:
    return parse(name) is not None


def canonical(name: str) -> str:
    """``KIND:/absolute/DIR`` for a user source (what a checkpoint records), a named dataset unchanged."""
    parsed = parse(name)
    if parsed is None:
        return name
    kind, root = parsed
    size = resize_rule(name)
    return f"{kind}:{Path(os.path.abspath(root))}" + (f"@{size[0]}x{size[1]}" if size else "")


def label(name: str) -> str:
    """A name for folders and titles: ``arrays-DIRNAME`` for a user source, a named dataset unchanged."""
    parsed = parse(name)
    return name if parsed is None else f"{parsed[0]}-{parsed[1].name or 'data'}"


@dataclass(frozen=True)
class SourceInfo:
    """What a user source holds, from headers only: one frame's (C, H, W), the class names, the
    encoding, and T of event frames (``None`` for images)."""

    input_shape: tuple[int, int, int]
    classes: tuple[str, ...]
    encoding: str
    num_steps: int | None = None

    def event_frames(self, count_bits: int, test_cut: str) -> EventFrames:
        """The encoding of pre-binned frames: nothing binned here (Δ = 0), the frame is the sensor."""
        c, h, w = self.input_shape
        return EventFrames(bin_us=0, downsample=1, count_bits=count_bits, test_cut=test_cut, sensor=(w, h), channels=c)


def info(name: str) -> SourceInfo:
    """:class:`SourceInfo` of ``arrays:DIR`` or ``folder:DIR``; raises :class:`DataError` naming the file."""
    kind, root = _root(name)
    return _arrays_info(root) if kind == "arrays" else _folder_info(root, resize_rule(name))


def load(name: str, split: str, num_steps: int, frames: EventFrames | None) -> tuple:
    """The ``split`` of a user source: ``(x, y, classes, encoding, source, carve)``, x uint8/uint16 ready
    for the first layer, y int64; ``carve`` when the split is train or val and the source has no val
    split, so :mod:`qsnn.data` carves it from these (the whole training set)."""
    kind, root = _root(name)
    if kind == "arrays":
        return _load_arrays(root, split, num_steps, frames)
    return _load_folder(root, split, resize_rule(name))


def _root(name: str) -> tuple[str, Path]:
    parsed = parse(name)
    if parsed is None:
        raise DataError(f"--dataset {name}: not a user source (arrays:DIR or folder:DIR)")
    kind, root = parsed
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        base, at, rule = str(root).rpartition("@")
        if kind == "folder" and at and not root.exists() and Path(base).is_dir():  # a resize rule mistyped
            raise DataError(
                f"--dataset {name}: '@{rule}' is not a resize rule ({base} is the folder); write W x H in pixels, "
                f"e.g. folder:{base}@32x32, or leave the rule out when every image has one size"
            )
        raise DataError(f"--dataset {kind}:{root}: {root} {what}; it should hold {KINDS[kind]}")
    return kind, root


# --------------------------------------------------------------------------------------------------
# arrays:DIR


def _npz_files(root: Path) -> dict[str, Path]:
    files = {split: root / f for split, f in NPZ.items() if (root / f).is_file()}
    for split in ("train", "test"):
        if split not in files:
            raise DataError(
                f"{root / NPZ[split]}: missing; an arrays: dataset holds {KINDS['arrays']} "
                "(np.savez(DIR/'train.npz', x=x, y=y))"
            )
    return files


def _header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype] | None:
    """Shape and dtype of ``key`` in an .npz without reading its data (``None`` if absent)."""
    try:
        with zipfile.ZipFile(path) as z:
            if f"{key}.npy" not in z.namelist():
                return None
            with z.open(f"{key}.npy") as f:
                version = np.lib.format.read_magic(f)
                read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                shape, _, dtype = read(f)
                return tuple(shape), np.dtype(dtype)
    except (OSError, zipfile.BadZipFile, ValueError) as e:
        raise DataError(
            f"{path}: not an .npz file ({type(e).__name__}: {e}); write it with np.savez(path, x=x, y=y)"
        ) from None


def _x_layout(path: Path, shape: tuple[int, ...], dtype: np.dtype) -> tuple[str, tuple[int, int, int], int | None]:
    """(encoding, (C, H, W), T or None) of an ``x`` array, or a :class:`DataError` saying what x should be."""
    if len(shape) == 3:
        encoding, chw, steps = "static", (1, *shape[1:]), None
    elif len(shape) == 4:
        encoding, chw, steps = "static", tuple(shape[1:]), None
        if shape[3] in (1, 3, 4) and shape[1] > 4:
            raise DataError(
                f"{path}: x has shape {shape}, which looks channels-last (N, H, W, C); qsnn takes (N, C, H, W): "
                "save np.moveaxis(x, -1, 1) instead"
            )
    elif len(shape) == 5:
        encoding, chw, steps = "events", tuple(shape[2:]), shape[1]
    else:
        raise DataError(
            f"{path}: x has shape {shape}; an arrays: file holds uint8 images (N, C, H, W) or (N, H, W), or "
            "integer event frames (N, T, C, H, W)"
        )
    if encoding == "static" and dtype != np.uint8:
        hint = (
            ": for values in [0, 1] save np.clip(np.round(x * 255), 0, 255).astype(np.uint8)"
            if dtype.kind == "f"
            else ": save x.astype(np.uint8) if every value is in 0..255"
        )
        if len(shape) == 4 and dtype.kind in "ui":  # integer counts (N, T, H, W): event frames without C
            hint += (
                f"; or, if x holds event frames (N, T, H, W) of T = {shape[1]} bins, give them their channel "
                "axis: save x[:, :, None] (N, T, 1, H, W)"
            )
        raise DataError(f"{path}: x is {dtype}; images are uint8 pixels 0..255{hint}")
    if encoding == "events" and dtype.kind not in "uib":
        raise DataError(
            f"{path}: x is {dtype}; event frames (N, T, C, H, W) are integer counts per bin: save x.astype(np.uint16)"
        )
    if min(shape) < 1:
        raise DataError(f"{path}: x has shape {shape}: no samples or an empty dimension")
    return encoding, tuple(int(v) for v in chw), steps


def _classes(path: Path, z) -> tuple[str, ...] | None:
    if "classes" not in z.files:
        return None
    try:
        names = z["classes"]
    except ValueError:
        raise DataError(
            f"{path}: classes must be an array of strings (np.array(['cat', 'dog'])), not objects"
        ) from None
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) == 0:
        raise DataError(
            f"{path}: classes is {names.dtype} {names.shape}; give a 1-D array of class names (np.array(['cat', 'dog']))"
        )
    names = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names.tolist())
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{path}: the class name {dup!r} appears twice in classes; each class needs its own name")
    return names


@functools.lru_cache(maxsize=6)
def _read_npz(key: tuple[str, int, int]):
    """(x, y, classes, encoding) of one file: x as stored (read-only), y int64."""
    path = Path(key[0])
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(
            f"{path}: not an .npz file ({type(e).__name__}: {e}); write it with np.savez(path, x=x, y=y)"
        ) from None
    with z:
        missing = [k for k in ("x", "y") if k not in z.files]
        if missing:
            raise DataError(
                f"{path}: no {' and no '.join(missing)} in it (it holds {', '.join(z.files) or 'nothing'}); an arrays: "
                "file holds x (images or event frames), y (labels) and optionally classes: np.savez(path, x=x, y=y)"
            )
        try:
            x, y = z["x"], z["y"]
        except ValueError:
            raise DataError(f"{path}: x and y must be numeric arrays, not Python objects (allow_pickle)") from None
        classes = _classes(path, z)
    encoding, _, _ = _x_layout(path, x.shape, x.dtype)
    if y.dtype.kind not in "ui" or y.ndim != 1:
        hint = ": save y.astype(np.int64)" if y.dtype.kind in "fb" and y.ndim == 1 else one_hot_hint(y, len(x))
        raise DataError(f"{path}: y is {y.dtype} {y.shape}; labels are integer class indices, one per sample{hint}")
    if len(y) != len(x):
        raise DataError(f"{path}: x has {len(x)} samples but y has {len(y)} labels; give one label per sample")
    if len(y) and y.min() < 0:
        raise DataError(f"{path}: label {int(y.min())} is negative; labels are class indices 0..K-1")
    if encoding == "events" and x.dtype.kind == "i" and x.size and x.min() < 0:
        raise DataError(f"{path}: event frames hold a negative count ({int(x.min())}); counts are >= 0")
    if x.ndim == 3:
        x = x[:, None]
    return readonly(x), readonly(y.astype(np.int64)), classes, encoding


def _arrays_info(root: Path) -> SourceInfo:
    files = _npz_files(root)
    layouts = {}
    for split, path in files.items():
        head = _header(path, "x")
        if head is None or _header(path, "y") is None:
            _read_npz(file_key(path))  # names what is missing
        layouts[split] = _x_layout(path, *head)
    encoding, shape, steps = layouts["train"]
    for split, (enc, chw, _) in layouts.items():
        if (enc, chw) != (encoding, shape):
            raise DataError(
                f"{files[split]}: x holds {enc} {chw} (C, H, W) per step but {files['train']} holds {encoding} {shape}; "
                "every file of an arrays: dataset has one input shape"
            )
    classes = _all_classes(files)
    return _classifier(SourceInfo(shape, classes, encoding, steps), files["train"])


def one_hot_hint(y: np.ndarray, n: int) -> str:
    """The advice for labels ``y`` given as one row of K > 1 values per sample (one-hot or scores) for
    ``n`` samples, else "": labels are class indices (``arrays:`` data and ``qsnn-sim --input``)."""
    return (
        " (one-hot or scores per class? save y.argmax(axis=1))"
        if y.ndim == 2 and y.shape[0] == n and y.shape[1] > 1
        else ""
    )


def _classifier(meta: SourceInfo, train: Path) -> SourceInfo:
    """``meta`` when its data has two classes or more (the output layer's argmax picks one of K), else a
    :class:`DataError` naming the training data."""
    if len(meta.classes) < 2:
        raise DataError(
            f"{train}: the data holds one class ({meta.classes[0]!r}); a classifier needs at least 2 classes: add "
            "samples of another class (labels 0..K-1, or one subfolder per class)"
        )
    return meta


def _all_classes(files: dict[str, Path]) -> tuple[str, ...]:
    """The class names (the first file's ``classes``, the same in every file that has them), else
    ``"0"``..``"K-1"`` with K one more than the largest label of any file."""
    named: tuple[str, ...] | None = None
    for split, path in files.items():
        classes = _read_npz(file_key(path))[2]
        if classes is None:
            continue
        if named is not None and classes != named:
            raise DataError(
                f"{path}: classes {_show(classes)} differ from {_show(named)} in the other files; give every file "
                "the same class names (or only train.npz)"
            )
        named = classes
    if named is not None:
        return named
    top = max(int(_read_npz(file_key(p))[1].max(initial=0)) for p in files.values())
    return tuple(str(i) for i in range(top + 1))


def _show(names: tuple[str, ...]) -> str:
    return "(" + ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") + f"; {len(names)})"


def _load_arrays(root: Path, split: str, num_steps: int, frames: EventFrames | None) -> tuple:
    files = _npz_files(root)
    meta = _arrays_info(root)
    k = len(meta.classes)
    for name, path in files.items():  # labels in range, every class trained
        y = _read_npz(file_key(path))[1]
        if len(y) and y.max() >= k:  # only with named classes: else K is one more than the largest label
            raise DataError(
                f"{path}: label {int(y.max())} is out of range: classes lists {k} names (labels 0..{k - 1}); "
                "fix y, or add the class's name to classes"
            )
        if name == "train":
            absent = sorted(set(range(k)) - set(np.unique(y).tolist()))
            if absent:
                shown = ", ".join(f"{c} ({meta.classes[c]!r})" for c in absent[:5]) + (
                    ", ..." if len(absent) > 5 else ""
                )
                raise DataError(
                    f"{path}: class {shown} has no samples ({len(absent)} of {k} classes); every class needs training "
                    "samples: add some, or drop the class from classes and renumber y"
                )
    source = split if split in files else "train"
    path = files[source]
    x, y, _, encoding = _read_npz(file_key(path))
    if encoding == "events":
        frames = frames or meta.event_frames(EventFrames.count_bits, EventFrames.test_cut)
        x = _fit_steps(np.minimum(x, frames.count_max).astype(frames.dtype), num_steps)
    return np.ascontiguousarray(x), y, meta.classes, encoding, str(path), split != "test" and "val" not in files


def _fit_steps(x: np.ndarray, num_steps: int) -> np.ndarray:
    """The first T steps of each sample, zeros after the last bin (as a recording's frames)."""
    if x.shape[1] >= num_steps:
        return x[:, :num_steps]
    pad = np.zeros((len(x), num_steps - x.shape[1], *x.shape[2:]), dtype=x.dtype)
    return np.concatenate([x, pad], axis=1)


# --------------------------------------------------------------------------------------------------
# folder:DIR (torchvision's ImageFolder layout)


def _pillow():
    try:
        from PIL import Image
    except ImportError:
        raise DataError("a folder: dataset is read with Pillow: pip install Pillow") from None
    return Image


def _scan(root: Path) -> dict[str, list[tuple[Path, str]]]:
    """Image files per split (train, test, val if present) with their class folder's name."""
    out: dict[str, list[tuple[Path, str]]] = {}
    for split in ("train", "val", "test"):
        folder = root / split
        if not folder.is_dir():
            if split != "val":
                raise DataError(
                    f"{folder}: missing; a folder: dataset holds {KINDS['folder']}; make the {split}/ folder with one "
                    "subfolder per class"
                )
            continue
        items = []
        for cls in sorted(d for d in folder.iterdir() if d.is_dir()):
            files = sorted(f for f in cls.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not files and split == "train":
                raise DataError(
                    f"{cls}: class {cls.name!r} has no images ({', '.join(IMAGE_SUFFIXES)}); every class needs training "
                    "samples: add some, or remove the folder"
                )
            items += [(f, cls.name) for f in files]
        if not items:
            raise DataError(f"{folder}: no class subfolders with images; put the images in {folder}/<class>/")
        out[split] = items
    classes = sorted({c for _, c in out["train"]})
    for split in ("val", "test"):
        extra = sorted({c for _, c in out.get(split, [])} - set(classes))
        if extra:
            raise DataError(
                f"{root / split / extra[0]}: class {extra[0]!r} is not among the training classes ({len(classes)} "
                f"folders in {root / 'train'}); add it to train/ or remove it"
            )
    return out


def _image_header(path: Path) -> tuple[tuple[int, int], str]:
    Image = _pillow()
    try:
        with Image.open(path) as im:
            return im.size, im.mode
    except (OSError, ValueError, SyntaxError) as e:  # PIL.UnidentifiedImageError is an OSError
        raise DataError(f"{path}: not an image Pillow can read ({e}); replace or remove the file") from None


@functools.lru_cache(maxsize=4)
def _folder_headers(keys: tuple[tuple[str, int, int], ...], one_size: bool) -> tuple[tuple[int, int], int]:
    """(W, H) of the first image and the channel count; with ``one_size`` a :class:`DataError` at the
    first image of another size."""
    size0, first, gray = None, None, True
    for path, _, _ in keys:
        size, mode = _image_header(Path(path))
        if mode.split(";")[0] in DEEP_MODES:
            raise DataError(
                f"{path}: Pillow mode {mode} holds more than 8 bits per value; qsnn's input is 8-bit "
                "pixels 0..255 and reading it would clip every value above 255: save it as 8-bit PNG/JPEG "
                "(e.g. Image.fromarray((a >> 8).astype(np.uint8)) for 16-bit data)"
            )
        if size0 is None:
            size0, first = size, path
        elif size != size0 and one_size:
            raise DataError(
                f"{path}: image is {size[0]}x{size[1]} (W x H) but {first} is {size0[0]}x{size0[1]}; every image of "
                f"a folder: dataset has one size: resize them to one size first (e.g. PIL's Image.resize), or "
                f"state the rule: --dataset folder:DIR@{size0[0]}x{size0[1]} resizes every image to that W x H"
            )
        gray = gray and mode in GRAY_MODES
    return size0, 1 if gray else 3


def _folder_scan(root: Path, resize: tuple[int, int] | None):
    scan = _scan(root)
    keys = tuple(file_key(f) for items in scan.values() for f, _ in items)
    size, channels = _folder_headers(keys, resize is None)
    return scan, resize or size, channels


def _folder_info(root: Path, resize: tuple[int, int] | None) -> SourceInfo:
    from qsnn.arch import machine_memory

    scan, (w, h), channels = _folder_scan(root, resize)
    n, memory = max(len(items) for items in scan.values()), machine_memory()
    if memory is not None and n * channels * h * w > memory:  # the largest split is read as one uint8 array
        size = f"@{resize[0]}x{resize[1]}" if resize else f"{w}x{h}"
        raise DataError(
            f"{root}: {n} images of {channels}×{h}×{w} ({size}) take {n * channels * h * w / 2**30:,.1f} GiB as uint8, "
            f"more than this machine's {memory / 2**30:.1f} GiB of memory; state a smaller size, folder:DIR@WxH"
        )
    return _classifier(
        SourceInfo((channels, h, w), tuple(sorted({c for _, c in scan["train"]})), "static"), root / "train"
    )


@functools.lru_cache(maxsize=4)
def _read_images(
    keys: tuple[tuple[str, int, int], ...], channels: int, desc: str, resize: tuple[int, int] | None
) -> np.ndarray:
    from tqdm.auto import tqdm

    Image = _pillow()
    mode = "L" if channels == 1 else "RGB"
    x = None
    for i, (path, _, _) in enumerate(tqdm(keys, desc=desc, unit="image", leave=False, file=sys.stderr, disable=None)):
        try:
            with Image.open(path) as im:
                im = im.convert(mode)
                if resize is not None and im.size != resize:
                    im = im.resize(resize, Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"{path}: not an image Pillow can read ({e}); replace or remove the file") from None
        a = a[None] if a.ndim == 2 else np.moveaxis(a, -1, 0)
        if x is None:
            x = np.empty((len(keys), *a.shape), dtype=np.uint8)
        x[i] = a
    return readonly(x)


def _load_folder(root: Path, split: str, resize: tuple[int, int] | None) -> tuple:
    scan, _, channels = _folder_scan(root, resize)
    classes = tuple(sorted({c for _, c in scan["train"]}))
    source = split if split in scan else "train"
    items = scan[source]
    x = _read_images(tuple(file_key(f) for f, _ in items), channels, f"{root.name}/{source}: reading images", resize)
    y = np.array([classes.index(c) for _, c in items], dtype=np.int64)
    return x, y, classes, "static", str(root / source), split != "test" and "val" not in scan
