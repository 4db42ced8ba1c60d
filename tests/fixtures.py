"""Helpers that write tiny datasets in the real on-disk formats (IDX, tonic's DVSGesture layout), and
an untrained but spiking checkpoint (no training: fast).

Import from tests as ``from fixtures import write_mnist_idx_dir``: pytest puts ``tests/`` on ``sys.path``
(rootdir-relative "prepend" import mode, no ``__init__.py`` needed).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DVS_LIGHTINGS = ("fluorescent", "fluorescent_led", "lab", "led", "natural")
DVS_NUM_CLASSES = 11


def write_idx(path, array: np.ndarray, gz: bool) -> Path:
    """Write ``array`` (uint8, 1-D labels or 3-D images) as an IDX file, gzipped if ``gz``."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    if array.ndim not in (1, 3):
        raise ValueError(f"IDX fixtures are labels (N,) or images (N, H, W), got shape {array.shape}")
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def class_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """28x28 uint8 images whose bright 7x7 block position encodes the label, over faint noise."""
    images = rng.integers(0, 40, size=(len(labels), 28, 28), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), 4)
        r, c = 7 * row + 1, 7 * col
        images[i, r : r + 7, c : c + 7] = rng.integers(180, 256, size=(7, 7), dtype=np.uint8)
    return images


def _labels(n: int, rng: np.random.Generator) -> np.ndarray:
    if n < 10:
        raise ValueError(f"need at least 10 samples so that labels 0..9 all appear, got {n}")
    return rng.permutation(np.arange(n) % 10).astype(np.uint8)


def write_mnist_idx_dir(root, n_train: int, n_test: int, seed: int, gz: bool = True) -> Path:
    """Write the four MNIST IDX files (standard names) into ``root``; labels 0..9 all present. Returns ``root``."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = _labels(n, rng)
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", class_images(labels, rng), gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", labels, gz)
    return root


def gesture_events(label: int, rng: np.random.Generator, duration_ms: int = 600, n_events: int = 1500) -> np.ndarray:
    """An (N, 4) float64 recording x, y, p, t (t in ms, sorted, first event at 0) for class ``label``.

    Class c fires inside its own 32x32 block of the 128x128 sensor (block c of a 4x4 grid), with
    ON-polarity share c/10, so a tiny model can tell the classes apart after downsampling by 4.
    """
    row, col = divmod(int(label), 4)
    x = rng.integers(32 * col, 32 * col + 32, size=n_events)
    y = rng.integers(32 * row, 32 * row + 32, size=n_events)
    p = (rng.random(n_events) < label / 10).astype(np.int64)
    t = np.sort(rng.integers(0, duration_ms, size=n_events))
    t[0] = 0
    return np.stack([x, y, p, t], axis=1).astype(np.float64)


#: The neuron the DVS fixture models train with: the published code's dvs/conf.py values with BatchNorm
#: (measured on the fixture, 2 epochs, T = 8: 97 % test accuracy; Table I's int4 row: 9 %, chance).
DVS_FIXTURE_NEURON = {"batch_norm": True, "beta": 0.93, "threshold": 1.47, "slope": 9.7}


def write_dvsgesture_fixture(
    root,
    n_train_per_class: int = 10,
    n_test_per_class: int = 10,
    seed: int = 0,
    duration_ms: int = 600,
    n_events: int = 1500,
) -> Path:
    """Write tonic 1.7's DVSGesture layout under ``root``; returns ``root`` (the data directory).

    ``root/DVSGesture/ibmGestureTrain|ibmGestureTest/user<NN>_<lighting>/<label>.npy``: one folder per
    (user, lighting) with one recording of each of the 11 classes, so ``n_*_per_class`` folders per
    split; plus empty ``ibmGesture*.tar.gz`` files. tonic reads the layout without downloading only
    with at least 100 .npy files per split, hence at least 10 per class.
    """
    if min(n_train_per_class, n_test_per_class) * DVS_NUM_CLASSES < 100:
        raise ValueError("tonic wants at least 100 .npy files per split: use at least 10 per class")
    root = Path(root)
    base = root / "DVSGesture"
    rng = np.random.default_rng(seed)
    user = 1
    for folder, n in (("ibmGestureTrain", n_train_per_class), ("ibmGestureTest", n_test_per_class)):
        for k in range(n):
            session = base / folder / f"user{user:02d}_{DVS_LIGHTINGS[k % len(DVS_LIGHTINGS)]}"
            session.mkdir(parents=True, exist_ok=True)
            for label in range(DVS_NUM_CLASSES):
                np.save(session / f"{label}.npy", gesture_events(label, rng, duration_ms, n_events))
            if k % len(DVS_LIGHTINGS) == len(DVS_LIGHTINGS) - 1 or k == n - 1:
                user += 1
        (base / f"{folder}.tar.gz").touch()
    return root


def synthetic_checkpoint(
    path, precision: str = "int4", *, dataset: str = "mnist5k", input_shape=(1, 28, 28), classes=None, **overrides
):
    """An untrained but spiking checkpoint of a Table I configuration (no training: fast).

    Weights are the seeded initialisation scaled ×4 (so the network spikes); BatchNorm gets random
    statistics and γ of both signs (the compiler must flip the weights of channels with γ < 0).
    ``dataset`` picks the preset row (``"dvs128"``: an event model), ``input_shape`` (C, H, W) and
    ``classes`` (default the ten digits) the data the model takes.
    """
    import torch

    from qsnn.config import TrainConfig
    from qsnn.data import MNIST_CLASSES
    from qsnn.train.checkpoint import save_checkpoint
    from qsnn.train.model import QSNN

    # The neuron of the MNIST row of the paper's published code (β 0.921, θ 2.04, k 6.03): with it these
    # weights spike in every layer over T = 8 steps; Table I's int4 row (β 0.99, θ 2.9) leaves the output
    # layer silent, and a silent layer compares nothing.
    neuron = {"beta": 0.921, "threshold": 2.04, "slope": 6.03}
    cfg = TrainConfig.from_preset(dataset, precision, num_steps=8, **{**neuron, **overrides})
    classes = list(classes or MNIST_CLASSES)
    torch.manual_seed(0)
    model = QSNN(cfg, tuple(input_shape), len(classes))
    with torch.no_grad():
        for layer in model.synapses:
            layer.weight.mul_(4.0).clamp_(-1, 1)
        for bn in model.norms:
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.uniform_(-0.3, 0.3)
                bn.running_var.uniform_(0.2, 2.0)
                bn.weight.uniform_(-1.5, 1.5)
                bn.bias.uniform_(-0.3, 0.5)
    save_checkpoint(
        path,
        {
            "config": cfg.to_dict(),
            "model": model.state_dict(),
            "input_shape": list(input_shape),
            "classes": classes,
            "encoding": "events" if dataset == "dvs128" else "static",
        },
    )
    return path


# --------------------------------------------------------------------------------------------------
# IBM's original DvsGesture release: AEDAT 3.1 recordings with label CSVs

#: The text header of the IBM release's .aedat files (AEDAT 3.1: '#' lines ending in CR LF).
AEDAT31_HEADER = (
    b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n"
    b"#Start-Time: 2017-05-03 11:31:04 (TZ+0000)\r\n#!END-HEADER\r\n"
)
AEDAT_PACKET = np.dtype(
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
AEDAT_EVENT = np.dtype([("data", "<u4"), ("ts", "<u4")])
IBM_EVENTS = np.dtype([("x", np.uint8), ("y", np.uint8), ("p", np.uint8), ("t", np.int64)])


def aedat_packet(
    kind: int,
    data: np.ndarray,
    ts: np.ndarray,
    *,
    overflow: int = 0,
    number: int | None = None,
    capacity: int | None = None,
    valid: int | None = None,
) -> bytes:
    """One AEDAT 3.1 event packet: the 28-byte header then ``capacity`` 8-byte events (data word, timestamp)."""
    n = len(data)
    capacity = n if capacity is None else capacity
    number = n if number is None else number
    head = np.zeros(1, AEDAT_PACKET)
    head[0] = (kind, 1, 8, 4, overflow, capacity, number, n if valid is None else valid)
    body = np.zeros(capacity, AEDAT_EVENT)
    body["data"][:n], body["ts"][:n] = data, ts
    return head.tobytes() + body.tobytes()


def polarity_words(x, y, p, valid=1) -> np.ndarray:
    """The 32-bit word of an AEDAT 3.1 polarity event: x in bits 17-31, y in 2-16, polarity bit 1, valid bit 0."""
    x, y, p = (np.asarray(v, dtype=np.uint32) for v in (x, y, p))
    return (x << 17) | (y << 2) | (p << 1) | np.uint32(valid)


def write_aedat31(path, events: np.ndarray, packet_events: int = 700, extra: bytes = b"") -> Path:
    """Write polarity ``events`` (fields x, y, p, t in µs, sorted) as an AEDAT 3.1 file like IBM's release.

    Events go into polarity packets (type 1) of at most ``packet_events`` events, the timestamp's
    upper bits in each packet's eventTSOverflow; ``extra`` (raw packets) is appended after them.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chunks = [AEDAT31_HEADER]
    t = np.asarray(events["t"], dtype=np.int64)
    start = 0
    while start < len(t):
        stop = min(start + packet_events, len(t))
        overflow = int(t[start] >> 31)
        stop = start + int(np.count_nonzero((t[start:stop] >> 31) == overflow))  # one overflow per packet
        sl = slice(start, stop)
        chunks.append(
            aedat_packet(
                1,
                polarity_words(events["x"][sl], events["y"][sl], events["p"][sl]),
                (t[sl] & 0x7FFFFFFF).astype(np.uint32),
                overflow=overflow,
            )
        )
        start = stop
    chunks.append(extra)
    path.write_bytes(b"".join(chunks))
    return path


def ibm_recording(
    labels: list[int],
    rng: np.random.Generator,
    *,
    gesture_ms: int = 600,
    n_events: int = 1500,
    gap_ms: int = 150,
    noise_events: int = 60,
    start_us: int = 3_000_000,
):
    """Events (``IBM_EVENTS``, t in µs) of one recording performing ``labels`` (0-based) in turn, and its
    label rows (class 1..11, start µs, end µs). Gesture c fires as :func:`gesture_events` (its own block,
    ON share c/10) with µs timestamps; sparse noise events fill the gaps between gestures."""
    parts, rows = [], []
    t = start_us
    for label in labels:
        noise_t = np.sort(rng.integers(t, t + gap_ms * 1000, size=noise_events))
        parts.append(
            np.stack(
                [
                    rng.integers(0, 128, noise_events),
                    rng.integers(0, 128, noise_events),
                    rng.integers(0, 2, noise_events),
                    noise_t,
                ],
                axis=1,
            )
        )
        t += gap_ms * 1000
        ev = gesture_events(label, rng, duration_ms=gesture_ms, n_events=n_events).astype(np.int64)
        ev[:, 3] = t + np.sort(rng.integers(0, gesture_ms * 1000, size=n_events))
        ev[0, 3] = t
        parts.append(ev)
        rows.append((label + 1, t, t + gesture_ms * 1000))
        t += gesture_ms * 1000
    allev = np.concatenate(parts)
    allev = allev[np.argsort(allev[:, 3], kind="stable")]
    out = np.empty(len(allev), IBM_EVENTS)
    out["x"], out["y"], out["p"], out["t"] = allev[:, 0], allev[:, 1], allev[:, 2], allev[:, 3]
    return out, rows


def write_labels_csv(path, rows, newline: str = "\n") -> Path:
    path = Path(path)
    lines = ["class,startTime_usec,endTime_usec"] + [f"{c},{s},{e}" for c, s, e in rows]
    path.write_text(newline.join(lines) + newline)
    return path


def write_ibm_gesture_fixture(
    root, n_train: int = 6, n_test: int = 3, seed: int = 0, gesture_ms: int = 600, n_events: int = 1500
) -> Path:
    """Write IBM's DvsGesture release layout under ``root``; returns ``root`` (the data directory).

    ``root/DvsGesture/user<NN>_<lighting>.aedat`` (AEDAT 3.1, all 11 gestures in a shuffled order),
    ``user<NN>_<lighting>_labels.csv`` and ``trials_to_train.txt`` / ``trials_to_test.txt``: ``n_train``
    recordings of users 1.. and ``n_test`` of users 24.. (IBM's split).
    """
    root = Path(root)
    base = root / "DvsGesture"
    base.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    trials = {"train": [], "test": []}
    for split, n, first_user in (("train", n_train, 1), ("test", n_test, 24)):
        for k in range(n):
            name = f"user{first_user + k // 3:02d}_{DVS_LIGHTINGS[k % 3]}"
            events, rows = ibm_recording(
                list(rng.permutation(DVS_NUM_CLASSES)), rng, gesture_ms=gesture_ms, n_events=n_events
            )
            write_aedat31(base / f"{name}.aedat", events)
            write_labels_csv(base / f"{name}_labels.csv", rows)
            trials[split].append(f"{name}.aedat")
    for split, names in trials.items():
        (base / f"trials_to_{split}.txt").write_text("\n".join(names) + "\n")
    return root


# --------------------------------------------------------------------------------------------------
# A user's own data (arrays:DIR, folder:DIR) and N-MNIST in tonic's layout


def pattern_images(labels: np.ndarray, shape: tuple[int, int, int], num_classes: int, rng) -> np.ndarray:
    """uint8 images (N, C, H, W) over faint noise whose bright block's place in a ⌈√K⌉-wide grid encodes
    the label (and, with C > 1, which channel is brightest), so a tiny model can tell K classes apart."""
    c, h, w = shape
    grid = int(np.ceil(np.sqrt(num_classes)))
    bh, bw = max(1, h // grid), max(1, w // grid)
    x = rng.integers(0, 40, size=(len(labels), c, h, w), dtype=np.uint8)
    for i, label in enumerate(labels):
        row, col = divmod(int(label), grid)
        x[i, :, row * bh : (row + 1) * bh, col * bw : (col + 1) * bw] = rng.integers(150, 200, dtype=np.uint8)
        x[i, int(label) % c, row * bh : (row + 1) * bh, col * bw : (col + 1) * bw] = 255
    return x


def balanced_labels(n: int, num_classes: int, rng) -> np.ndarray:
    return rng.permutation(np.arange(n) % num_classes).astype(np.int64)


def write_arrays_dataset(
    root, shape=(3, 32, 32), num_classes: int = 12, n_train: int = 240, n_test: int = 60, seed: int = 0, names=True
) -> Path:
    """``root/train.npz`` and ``root/test.npz`` of :func:`pattern_images` (x uint8 (N, C, H, W), y int64,
    classes ``class00``..); returns ``root``."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    classes = np.array([f"class{k:02d}" for k in range(num_classes)])
    for split, n in (("train", n_train), ("test", n_test)):
        y = balanced_labels(n, num_classes, rng)
        extra = {"classes": classes} if names else {}
        np.savez(root / f"{split}.npz", x=pattern_images(y, shape, num_classes, rng), y=y, **extra)
    return root


def write_image_folder(
    root, size=(24, 20), mode: str = "L", num_classes: int = 3, n_train: int = 60, n_test: int = 15, seed: int = 0
) -> Path:
    """torchvision's ImageFolder layout of PNGs: ``root/train|test/<class>/<i>.png`` (W×H ``size``,
    Pillow ``mode`` "L" or "RGB"); returns ``root``."""
    from PIL import Image

    root = Path(root)
    rng = np.random.default_rng(seed)
    c = 1 if mode == "L" else 3
    names = ["ant", "bee", "cat", "dog", "eel", "fox", "gnu", "hen", "ibis"][:num_classes]
    for split, n in (("train", n_train), ("test", n_test)):
        y = balanced_labels(n, num_classes, rng)
        x = pattern_images(y, (c, size[1], size[0]), num_classes, rng)
        for i, (img, label) in enumerate(zip(x, y)):
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img[0] if c == 1 else np.moveaxis(img, 0, -1), mode).save(folder / f"{i:04d}.png")
    return root


def nmnist_events(label: int, rng, n_events: int = 600, duration_us: int = 300_000, sensor: int = 34) -> np.ndarray:
    """(N, 4) int64 x, y, p, t (µs, sorted) of a digit: events in the label's 8×8 block of the 34×34
    sensor (a 4-wide grid), ON share label/10, over three saccades' time."""
    row, col = divmod(int(label), 4)
    x = rng.integers(8 * col + 1, 8 * col + 9, size=n_events)
    y = rng.integers(8 * row + 1, 8 * row + 9, size=n_events)
    p = (rng.random(n_events) < label / 10).astype(np.int64)
    t = np.sort(rng.integers(0, duration_us, size=n_events))
    return np.stack([x, y, p, t], axis=1).astype(np.int64)


def nmnist_bytes(events: np.ndarray) -> bytes:
    """N-MNIST's 5-byte events (what ``tonic.io.read_mnist_file`` reads): x, y, p<<7 | t[22:16], t[15:8], t[7:0]."""
    x, y, p, t = (events[:, k].astype(np.int64) for k in range(4))
    if t.max(initial=0) >= 2**23:
        raise ValueError("N-MNIST timestamps have 23 bits")
    raw = np.stack([x, y, (p << 7) | (t >> 16), (t >> 8) & 255, t & 255], axis=1)
    return raw.astype(np.uint8).tobytes()


def write_nmnist_fixture(root, n_train_per_class: int = 6, n_test_per_class: int = 3, seed: int = 0, **kw) -> Path:
    """tonic's NMNIST layout under ``root``: ``root/NMNIST/Train|Test/<digit>/<n>.bin`` (+ the empty
    ``train.zip``/``test.zip`` tonic's class looks for); returns ``root`` (the data directory)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    for folder, n in (("Train", n_train_per_class), ("Test", n_test_per_class)):
        for digit in range(10):
            d = root / "NMNIST" / folder / str(digit)
            d.mkdir(parents=True, exist_ok=True)
            for k in range(n):
                (d / f"{k:05d}.bin").write_bytes(nmnist_bytes(nmnist_events(digit, rng, **kw)))
        (root / "NMNIST" / f"{folder.lower()}.zip").touch()
    return root


def own_sequential_export(path, kind: str, data_root=None) -> tuple[Path, str]:
    """A user's own snnTorch + Brevitas ``nn.Sequential`` (not qsnn's model) exported with
    ``export_torch``, which records no dataset; returns (the .onnx, the ``--dataset`` it takes).

    ``"conv"``: mnist5k's 1×28×28 digits, stride and padding, BatchNorm, 2×2 average pooling, 4-bit
    weights, 10 classes. ``"dense"``: a 3×12×10 RGB ``arrays:`` dataset of 6 classes written under
    ``data_root``, 2-bit weights with a bias, then a float ``Linear``. Weights are the seeded
    initialisation scaled so that every layer spikes (untrained: the checks compare, they do not score).
    """
    import brevitas.nn as qnn
    import snntorch as snn
    import torch
    import torch.nn as nn

    from qsnn.export import export_torch

    torch.manual_seed(1)
    if kind == "conv":
        net = nn.Sequential(
            qnn.QuantConv2d(1, 6, 3, stride=2, padding=1, weight_bit_width=4, bias=False),
            nn.BatchNorm2d(6),
            snn.Leaky(beta=0.9, threshold=0.5),
            qnn.QuantConv2d(6, 8, 3, weight_bit_width=4, bias=False),
            nn.AvgPool2d(2),
            snn.Leaky(beta=0.8, threshold=0.7),
            nn.Flatten(),
            qnn.QuantLinear(8 * 6 * 6, 10, weight_bit_width=4, bias=False),
            snn.Leaky(beta=0.95, threshold=0.3),
        )
        shape, dataset, steps = (1, 28, 28), "mnist5k", 6
    else:
        shape, steps = (3, 12, 10), 5
        dataset = (
            f"arrays:{write_arrays_dataset(data_root, shape=shape, num_classes=6, n_train=36, n_test=18, names=False)}"
        )
        net = nn.Sequential(
            nn.Flatten(),
            qnn.QuantLinear(3 * 12 * 10, 16, weight_bit_width=2, bias=True),
            snn.Leaky(beta=0.7, threshold=0.4),
            nn.Linear(16, 6),
            snn.Leaky(beta=0.9, threshold=0.2),
        )
    with torch.no_grad():
        for m in net:
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
            elif hasattr(m, "weight") and m.weight.dim() > 1:
                m.weight.mul_(3.0)
    return export_torch(net.eval(), input_shape=shape, num_steps=steps, out=Path(path)), dataset
