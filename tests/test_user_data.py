"""A user's own data (``arrays:DIR``, ``folder:DIR``) and N-MNIST in tonic's layout: read as written,
checked against the architecture, remembered by the model (checkpoint, export, qsnn-sim, targets), and
refused in one line naming the file when it is wrong, with no run folder left behind."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from faults_helpers import assert_clean_cli_error
from fixtures import (
    balanced_labels,
    nmnist_bytes,
    nmnist_events,
    pattern_images,
    write_arrays_dataset,
    write_image_folder,
    write_nmnist_fixture,
)

from qsnn.config import TrainConfig
from qsnn.data import dataset_input, event_frames, load_for_model, load_split
from qsnn.errors import DataError, QsnnError

TINY_USER = dict(num_steps=4, epochs=1, batch_size=32, patience=5, cosine_period_epochs=1.0)


@pytest.fixture(scope="module")
def nmnist_dir(tmp_path_factory) -> Path:
    return write_nmnist_fixture(tmp_path_factory.mktemp("nmnist"), n_train_per_class=4, n_test_per_class=2)


# --------------------------------------------------------------------------------------------------
# Reading: any H×W, channels and classes, exactly as written


@pytest.mark.parametrize(
    "shape, classes, squeeze",
    [((3, 32, 32), 12, False), ((1, 20, 24), 3, True), ((2, 9, 7), 5, False)],
    ids=["32x32-rgb-12", "20x24-gray-3-as-NHW", "2ch-9x7-5"],
)
def test_arrays_split_as_written(tmp_path, shape, classes, squeeze):
    rng = np.random.default_rng(1)
    data = {}
    for split, n in (("train", 10 * classes), ("test", 3 * classes)):
        y = balanced_labels(n, classes, rng)
        x = pattern_images(y, shape, classes, rng)
        data[split] = (x, y)
        np.savez(tmp_path / f"{split}.npz", x=x[:, 0] if squeeze else x, y=y.astype(np.int32))
    name = f"arrays:{tmp_path}"
    assert dataset_input(name) == (shape, classes)
    test = load_split(name, "test")
    assert np.array_equal(test.x, data["test"][0]) and np.array_equal(test.y, data["test"][1])
    assert test.classes == tuple(str(k) for k in range(classes)) and test.encoding == "static"
    train, val = load_split(name, "train", seed=3), load_split(name, "val", seed=3)
    assert len(train) + len(val) == 10 * classes and len(val) == classes  # 10 % carved, one per class
    rows = {r.tobytes() for r in data["train"][0]}
    assert all(r.tobytes() in rows for r in np.concatenate([train.x, val.x]))
    assert not {r.tobytes() for r in train.x} & {r.tobytes() for r in val.x}


def test_arrays_event_frames_and_val_file(tmp_path):
    """(N, T, C, H, W) counts: clipped to 2^event_bits - 1, cut or padded to T; val.npz used as given."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        x = rng.integers(0, 9, size=(n, 6, 3, 5, 4)).astype(np.uint16)
        np.savez(tmp_path / f"{split}.npz", x=x, y=np.arange(n) % 4, classes=np.array(["a", "b", "c", "d"]))
    name = f"arrays:{tmp_path}"
    assert dataset_input(name) == ((3, 5, 4), 4)
    frames = TrainConfig.from_preset(name, arch="D4", event_bits=2, num_steps=4).event_frames()
    assert (frames.count_max, frames.bin_us, frames.frame_shape()) == (3, 0, (3, 5, 4))
    raw = np.load(tmp_path / "val.npz")["x"]
    val = load_split(name, "val", num_steps=4, events=frames)
    assert val.encoding == "events" and np.array_equal(val.x, np.minimum(raw[:, :4], 3))
    long = load_split(name, "test", num_steps=9, events=frames)
    assert long.x.shape == (6, 9, 3, 5, 4) and not long.x[:, 6:].any()
    assert len(load_split(name, "train", num_steps=4, events=frames)) == 12  # nothing carved: val.npz exists


@pytest.mark.parametrize("mode, size, classes", [("L", (24, 20), 3), ("RGB", (16, 12), 4)], ids=["gray", "rgb"])
def test_image_folder_reads_pngs_bit_exact(tmp_path, mode, size, classes):
    from PIL import Image

    root = write_image_folder(tmp_path, size=size, mode=mode, num_classes=classes, n_train=8 * classes)
    c = 1 if mode == "L" else 3
    assert dataset_input(f"folder:{root}") == ((c, size[1], size[0]), classes)
    test = load_split(f"folder:{root}", "test")
    names = sorted(p.name for p in (root / "train").iterdir())
    assert test.classes == tuple(names)  # ImageFolder's numbering: sorted class folders
    files = sorted((root / "test").glob("*/*.png"))
    assert len(test) == len(files)
    for i, f in enumerate(files):
        pixels = np.asarray(Image.open(f))
        expect = pixels[None] if c == 1 else np.moveaxis(pixels, -1, 0)
        assert np.array_equal(test.x[i], expect) and test.classes[test.y[i]] == f.parent.name


def test_image_folder_gray_and_color_mix_is_rgb(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for k, cls in enumerate(("a", "b")):
            (tmp_path / split / cls).mkdir(parents=True)
            gray = np.full((6, 5), 40 * (k + 1), np.uint8)
            Image.fromarray(gray, "L").save(tmp_path / split / cls / "0.png")
            Image.fromarray(np.stack([gray] * 3, -1), "RGB").save(tmp_path / split / cls / "1.png")
    data = load_split(f"folder:{tmp_path}", "test")
    assert data.x.shape == (4, 3, 6, 5) and np.array_equal(data.x[0], np.full((3, 6, 5), 40, np.uint8))


def test_image_folder_resize_rule(tmp_path):
    """folder:DIR@WxH: images of several sizes, each resized to W×H with Pillow's bilinear filter."""
    from PIL import Image

    rng = np.random.default_rng(4)
    for split in ("train", "test"):
        for k, cls in enumerate(("a", "b", "c")):
            (tmp_path / split / cls).mkdir(parents=True)
            for i, (w, h) in enumerate(((16, 12), (20, 15), (9, 7))):
                Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), "L").save(
                    tmp_path / split / cls / f"{i}.png"
                )
    with pytest.raises(DataError, match=r"is 20x15 \(W x H\) but .* is 16x12; .*--dataset folder:DIR@16x12 resizes"):
        load_split(f"folder:{tmp_path}", "test")
    name = f"folder:{tmp_path}@16x12"
    assert dataset_input(name) == ((1, 12, 16), 3)
    assert TrainConfig.from_preset(name, arch="D3").dataset == f"folder:{tmp_path}@16x12"  # the rule is recorded
    test = load_split(name, "test")
    for i, f in enumerate(sorted((tmp_path / "test").glob("*/*.png"))):
        with Image.open(f) as im:
            want = im if im.size == (16, 12) else im.resize((16, 12), Image.Resampling.BILINEAR)
            assert np.array_equal(test.x[i, 0], np.asarray(want)), f


# --------------------------------------------------------------------------------------------------
# N-MNIST through tonic's class


def test_nmnist_facts_come_from_tonics_class():
    import tonic

    from qsnn import nmnist

    assert nmnist.sensor() == tuple(tonic.datasets.NMNIST.sensor_size[:2])
    assert nmnist.classes() == tuple(tonic.datasets.NMNIST.classes)
    frames = event_frames("nmnist", 10)
    assert frames.frame_shape() == (2, 34, 34) and frames.bin_us == -(-nmnist.RECORDING_US // 10)
    assert event_frames("nmnist", 10, downsample=2).frame_shape() == (2, 17, 17)


def test_nmnist_frames_equal_tonics_toframe(nmnist_dir):
    """Each sample is tonic's own pipeline: NMNIST's reader, ToFrame(time_window=Δ), first T bins."""
    import tonic

    frames = event_frames("nmnist", 12, count_bits=8, bin_us=20_000)
    data = load_split("nmnist", "test", nmnist_dir, num_steps=12, events=frames)
    ds = tonic.datasets.NMNIST.__new__(tonic.datasets.NMNIST)  # tonic's class, its file list as it walks it
    files = sorted((nmnist_dir / "NMNIST" / "Test").glob("*/*.bin"))
    assert len(data) == len(files) == 20 and data.classes == tuple(ds.classes)
    to_frame = tonic.transforms.ToFrame(sensor_size=tonic.datasets.NMNIST.sensor_size, time_window=20_000)
    for i, f in enumerate(files):
        events = tonic.io.read_mnist_file(str(f), dtype=tonic.datasets.NMNIST.dtype)
        events["t"] -= events["t"][0]  # tonic bins from t = 0, qsnn from the first event
        theirs = to_frame(events)[:12]
        assert np.array_equal(data.x[i, : len(theirs)], np.minimum(theirs, 255)), f
        assert data.y[i] == int(f.parent.name)


def test_nmnist_is_read_without_torch(nmnist_dir):
    code = (
        "import sys\nfrom qsnn.data import load_split\n"
        f"x = load_split('nmnist', 'test', {str(nmnist_dir)!r}, num_steps=5).x\n"
        "assert 'torch' not in sys.modules, 'torch imported'\nprint('ok', x.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok (20, 5, 2, 34, 34)")


# --------------------------------------------------------------------------------------------------
# The architecture against the data


def test_spec_checked_against_the_data(tmp_path, nmnist_dir):
    rgb = write_arrays_dataset(tmp_path / "rgb", n_train=24, n_test=12)
    gray = write_image_folder(tmp_path / "gray", n_train=9, n_test=3)
    assert TrainConfig.from_preset(f"arrays:{rgb}").arch == "16C5-AP2-64C5-AP2-D12"  # the paper's net, D<K>
    assert TrainConfig.from_preset(f"folder:{gray}").arch == "16C5-AP2-64C5-AP2-D3"
    assert TrainConfig.from_preset("nmnist").arch == "16C5-AP2-64C5-AP2-D10"
    assert TrainConfig.from_preset(f"arrays:{rgb}", arch="8C3s2p1-D12").dataset == f"arrays:{rgb}"
    with pytest.raises(QsnnError, match="has 10 outputs but the data has 12 classes; end the spec with D12"):
        TrainConfig.from_preset(f"arrays:{rgb}", arch="8C3-AP2-D10")
    with pytest.raises(QsnnError, match="shrinks its 4×5 input below 1×1"):
        TrainConfig.from_preset(f"folder:{gray}", arch="8C5-AP4-8C5-D3")
    with pytest.raises(QsnnError, match=r"1800Dense10 or D10"):
        TrainConfig.from_preset("nmnist", arch="8C5-AP2-1024Dense10")


# --------------------------------------------------------------------------------------------------
# Bad input: one line naming the file, what is wrong, what to do; no run folder


def _bad(tmp_path: Path, case: str) -> tuple[str, tuple[str, ...]]:
    """(--dataset, fragments of the expected message) for one broken dataset."""
    rng = np.random.default_rng(0)
    root = tmp_path / case
    root.mkdir()
    y = np.arange(12) % 3
    x = pattern_images(y, (1, 8, 8), 3, rng)

    def save(split="train", **arrays):
        np.savez(root / f"{split}.npz", **{"x": x, "y": y, **arrays})

    if case == "mixed-sizes":
        write_image_folder(root, size=(8, 8), n_train=6, n_test=3)
        from PIL import Image

        Image.fromarray(np.zeros((9, 8), np.uint8), "L").save(root / "train" / "bee" / "odd.png")
        return f"folder:{root}", (str(root / "train" / "bee" / "odd.png"), "is 8x9", "one size", "folder:DIR@8x8")
    if case == "empty-class-folder":
        write_image_folder(root, size=(8, 8), n_train=6, n_test=3)
        (root / "train" / "zebra").mkdir()
        return f"folder:{root}", (str(root / "train" / "zebra"), "has no images", "add some, or remove the folder")
    if case == "not-an-image":
        write_image_folder(root, size=(8, 8), n_train=6, n_test=3)
        (root / "test" / "ant" / "broken.png").write_bytes(b"not a png")
        return f"folder:{root}", (str(root / "test" / "ant" / "broken.png"), "not an image", "replace or remove")
    if case == "no-test-folder":
        write_image_folder(root, size=(8, 8), n_train=6, n_test=3)
        shutil.rmtree(root / "test")
        return f"folder:{root}", (str(root / "test"), "missing", "subfolder per class")
    if case == "one-class-folder":
        write_image_folder(root, size=(8, 8), num_classes=1, n_train=6, n_test=3)
        return f"folder:{root}", (str(root / "train"), "one class ('ant')", "at least 2 classes")
    if case == "16-bit-images":  # Pillow's convert("L") would clip every value above 255
        write_image_folder(root, size=(8, 8), n_train=6, n_test=3)
        from PIL import Image

        deep = root / "train" / "cat" / "deep.png"
        Image.fromarray(rng.integers(0, 65535, (8, 8), dtype=np.uint16)).save(deep)
        return f"folder:{root}", (str(deep), "mode I;16 holds more than 8 bits", "save it as 8-bit")
    if case == "one-class-arrays":
        np.savez(root / "train.npz", x=x, y=np.zeros_like(y))
        np.savez(root / "test.npz", x=x, y=np.zeros_like(y))
        return f"arrays:{root}", (str(root / "train.npz"), "one class ('0')", "at least 2 classes")
    save(classes=np.array(["a", "b", "c"]))
    if case == "label-out-of-range":
        np.savez(root / "test.npz", x=x, y=y + 1, classes=np.array(["a", "b", "c"]))
        return f"arrays:{root}", (str(root / "test.npz"), "label 3 is out of range", "fix y")
    np.savez(root / "test.npz", x=x, y=y)
    if case == "class-without-samples":
        save(y=np.where(y == 1, 0, y), classes=np.array(["a", "b", "c"]))
        return f"arrays:{root}", (str(root / "train.npz"), "class 1 ('b') has no samples", "add some")
    if case == "float-images":
        save(x=x.astype(np.float32) / 255)
        return f"arrays:{root}", (str(root / "train.npz"), "x is float32", "np.round(x * 255)")
    if case == "one-hot-labels":
        save(y=np.eye(3, dtype=np.int64)[y])
        return f"arrays:{root}", (str(root / "train.npz"), "y is int64 (12, 3)", "save y.argmax(axis=1)")
    if case == "float-labels":
        save(y=y.astype(np.float64))
        return f"arrays:{root}", (str(root / "train.npz"), "y is float64", "y.astype(np.int64)")
    if case == "channels-last":
        save(x=np.zeros((12, 8, 8, 3), np.uint8))
        return f"arrays:{root}", (str(root / "train.npz"), "channels-last", "np.moveaxis(x, -1, 1)")
    if case == "no-labels":
        np.savez(root / "train.npz", x=x)
        return f"arrays:{root}", (str(root / "train.npz"), "no y in it", "np.savez(path, x=x, y=y)")
    if case == "shapes-differ":
        np.savez(root / "test.npz", x=x[:, :, :7], y=y)
        return f"arrays:{root}", (str(root / "test.npz"), "(1, 7, 8)", "one input shape")
    if case == "missing-test":
        (root / "test.npz").unlink()
        return f"arrays:{root}", (str(root / "test.npz"), "missing", "np.savez")
    if case == "not-npz":
        (root / "test.npz").write_text("x,y\n1,2\n")
        return f"arrays:{root}", (str(root / "test.npz"), "not an .npz file")
    raise AssertionError(case)


BAD_CASES = [
    "mixed-sizes",
    "empty-class-folder",
    "not-an-image",
    "no-test-folder",
    "label-out-of-range",
    "class-without-samples",
    "float-images",
    "float-labels",
    "channels-last",
    "no-labels",
    "shapes-differ",
    "missing-test",
    "not-npz",
    "one-class-folder",
    "16-bit-images",
    "one-class-arrays",
    "one-hot-labels",
]


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_user_data_one_line_no_run_folder(tmp_path, case):
    from qsnn.train.cli import main

    dataset, fragments = _bad(tmp_path, case)
    before = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["run", "--dataset", dataset, "--arch", "D3", "--steps", "2", "--epochs", "1", "--out", str(out)]
    )
    assert_clean_cli_error(result, *fragments)
    assert not out.exists()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == before


def test_a_resize_rule_beyond_memory_is_refused_before_reading(tmp_path, monkeypatch):
    """folder:DIR@WxH with a typo (@10000x10000) would allocate the split before any message."""
    import qsnn.arch
    from qsnn.train.cli import main

    root = write_image_folder(tmp_path / "f", size=(8, 8), n_train=6, n_test=3)
    monkeypatch.setattr(qsnn.arch, "machine_memory", lambda: 6 * 64 * 64 - 1)  # 6 training images at 64x64
    out = tmp_path / "run"
    args = ["run", "--arch", "D3", "--steps", "2", "--epochs", "1", "--out", str(out), "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--dataset", f"folder:{root}@64x64"])
    assert_clean_cli_error(result, f"{root}: 6 images of 1×64×64 (@64x64)", "state a smaller size")
    assert not out.exists()
    result = CliRunner().invoke(main, [*args, "--dataset", f"folder:{root}@32x32"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "kind, options, named",
    [
        ("static", ["--event-bits", "4"], "--event-bits"),
        ("static", ["--test-cut", "windows", "--event-downsample", "2"], "--event-downsample, --test-cut"),
        ("events", ["--event-bin-us", "100", "--event-bits", "2"], "--event-bin-us"),
        ("mnist5k", ["--event-bin-us", "100"], "--event-bin-us"),
    ],
)
def test_event_options_that_do_nothing_to_the_data_are_refused(tmp_path, kind, options, named):
    """Options for raw event recordings given for images or pre-binned frames were silently ignored."""
    from qsnn.train.cli import main

    if kind == "mnist5k":
        dataset, arch = "mnist5k", "D10"
    else:
        rng, root = np.random.default_rng(0), tmp_path / kind
        root.mkdir()
        for split, n in (("train", 12), ("test", 6)):
            x = rng.integers(0, 9, size=(n, 1, 8, 8) if kind == "static" else (n, 3, 2, 8, 8))
            np.savez(root / f"{split}.npz", x=x.astype(np.uint8), y=np.arange(n) % 3)
        dataset, arch = f"arrays:{root}", "D3"
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main, ["run", "--dataset", dataset, "--arch", arch, "--steps", "2", "--out", str(out), *options]
    )
    line = assert_clean_cli_error(result, f"{named} with --dataset {dataset}", "drop")
    assert ("static images" if kind != "events" else "pre-binned event frames") in line
    assert "--event-bits" not in line or kind == "static"  # the count clip acts on every event source
    assert not out.exists()


def test_events_outside_the_sensor_name_the_recording(tmp_path):
    root = write_nmnist_fixture(tmp_path, n_train_per_class=1, n_test_per_class=1)
    bad = root / "NMNIST" / "Test" / "3" / "00000.bin"
    events = nmnist_events(3, np.random.default_rng(0), n_events=50)
    events[20, 0] = 40  # x = 40 on a 34-wide sensor
    bad.write_bytes(nmnist_bytes(events))
    with pytest.raises(DataError) as err:
        load_split("nmnist", "test", root, num_steps=4)
    msg = str(err.value)
    assert msg.startswith(str(bad)) and "x coordinate 40 outside the 34x34 sensor" in msg and "copy it again" in msg
    (root / "NMNIST" / "Train" / "2" / "00000.bin").write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match=r"00000\.bin: 3 bytes is not a whole number of 5-byte N-MNIST events"):
        load_split("nmnist", "train", root, num_steps=4)


def test_missing_nmnist_says_where_to_put_it(tmp_path):
    with pytest.raises(DataError) as err:
        load_split("nmnist", "test", tmp_path, num_steps=4)
    msg = str(err.value)
    assert str(tmp_path / "NMNIST" / "Test") in msg and "tonic's NMNIST folder" in msg and "--data-dir" in msg


# --------------------------------------------------------------------------------------------------
# The model remembers its data


@pytest.fixture(scope="module")
def arrays_model(tmp_path_factory):
    """A tiny model trained on arrays: 3×16×16 RGB, 12 classes; its float export."""
    from qsnn.export.qonnx_float import export_float
    from qsnn.train.loop import train

    tmp = tmp_path_factory.mktemp("arrays-model")
    data = write_arrays_dataset(tmp / "data", shape=(3, 16, 16), n_train=96, n_test=24)
    cfg = TrainConfig.from_preset(f"arrays:{data}", arch="4C3s2-D12", **TINY_USER)
    train(cfg, tmp / "run", progress=False, log=lambda _m: None)
    return data, export_float(tmp / "run" / "best.pt", tmp / "model.onnx")


def test_export_records_the_data(arrays_model):
    from qsnn.export.format import load_model, read_metadata

    data, onnx_path = arrays_model
    meta = read_metadata(load_model(onnx_path))
    assert meta["dataset"] == f"arrays:{data}" and meta["input_shape"] == [3, 16, 16]
    assert meta["classes"] == [f"class{k:02d}" for k in range(12)] and meta["encoding"] == "static"


def test_sim_reads_the_recorded_source_or_says_what_differs(arrays_model, tmp_path):
    from qsnn.sim.cli import main

    data, onnx_path = arrays_model
    result = CliRunner().invoke(main, [str(onnx_path), "--check", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"arrays:{data} test, 24 samples" in result.output
    assert re.search(r"bit-exact vs integer torch\s+yes", result.output)
    same = CliRunner().invoke(main, [str(onnx_path), "--dataset", f"arrays:{data}", "--no-float", "--no-progress"])
    assert same.exit_code == 0, same.output
    other = CliRunner().invoke(main, [str(onnx_path), "--dataset", "mnist5k", "--no-progress"])
    line = assert_clean_cli_error(other, "input shape 1×28×28 (the model's: 3×16×16)", "10 classes")
    assert f"the model was trained on arrays:{data}: leave --dataset out" in line
    assert "pass --dataset mnist5k" not in line  # no contradiction
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    renamed = np.load(moved / "test.npz")
    np.savez(moved / "test.npz", x=renamed["x"], y=renamed["y"], classes=np.array([f"k{i}" for i in range(12)]))
    np.savez(moved / "train.npz", **{**np.load(moved / "train.npz"), "classes": np.array([f"k{i}" for i in range(12)])})
    names = CliRunner().invoke(main, [str(onnx_path), "--dataset", f"arrays:{moved}", "--no-progress"])
    assert_clean_cli_error(names, "class names (k0, k1, k2, k3, ...)", "class 0 is 'class00' there")


def test_recorded_source_gone_is_one_line(arrays_model, tmp_path):
    from qsnn.export.compile import compile_qonnx
    from qsnn.profiles import get_profile

    data, onnx_path = arrays_model
    net, _ = compile_qonnx(onnx_path, get_profile("fpga"))
    name, split = load_for_model(net, "test")
    assert name == f"arrays:{data}" and split.x.shape == (24, 3, 16, 16)
    net.metadata["dataset"] = f"arrays:{tmp_path / 'gone'}"
    with pytest.raises(DataError, match=r"was trained on arrays:.*gone, which cannot be read here: .*does not exist"):
        load_for_model(net, "test")


def test_a_subset_larger_than_the_recorded_data_is_not_unreadable_data(arrays_model):
    """The recorded data is read; only --subset is wrong, and the message says just that."""
    from qsnn.sim.cli import main

    data, onnx_path = arrays_model
    result = CliRunner().invoke(main, [str(onnx_path), "--subset", "25", "--no-progress"])
    line = assert_clean_cli_error(result, f"subset=25 for arrays:{data} test, which has 24 samples; choose 1..24")
    assert "cannot be read" not in line
    ok = CliRunner().invoke(main, [str(onnx_path), "--subset", "24", "--no-float", "--no-progress"])
    assert ok.exit_code == 0 and f"arrays:{data} test, 24 samples" in ok.output, ok.output


def test_loihi2_example_input_is_the_first_test_sample(arrays_model, tmp_path):
    from qsnn.export.cli import main

    data, onnx_path = arrays_model
    result = CliRunner().invoke(main, [str(onnx_path), "--to", "loihi2", "--output", str(tmp_path / "l2")])
    assert result.exit_code == 0, result.output
    example = np.load(tmp_path / "l2" / "example_input.npy")
    assert np.array_equal(example, np.load(data / "test.npz")["x"][0])


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, arch, steps",
    [("folder", "8C5-AP2-D3", 4), ("nmnist", "8C5-AP2-16C5-AP2-D10", 6), ("events", "8C3-AP2-D4", 5)],
    ids=["png-folder-20x24-gray-3", "nmnist-2x34x34", "arrays-event-frames-3ch"],
)
def test_train_export_sim_targets_on_user_data(tmp_path, nmnist_dir, kind, arch, steps):
    """Train (tiny) → export → qsnn-sim --check bit-exact with no --dataset → fpga, loihi2 and NIR folders
    whose networks simulate like the export (the loihi2 example input is the first test sample)."""
    from qsnn.export.cli import main as export_main
    from qsnn.export.compile import compile_qonnx
    from qsnn.profiles import get_profile
    from qsnn.sim import simulate
    from qsnn.sim.cli import main as sim_main
    from qsnn.targets.registry import read_target
    from qsnn.train.cli import main as train_main

    data_dir = []
    if kind == "folder":
        dataset = f"folder:{write_image_folder(tmp_path / 'pngs', n_train=45, n_test=12)}"
    elif kind == "nmnist":
        dataset, data_dir = "nmnist", ["--data-dir", str(nmnist_dir)]
    else:
        rng = np.random.default_rng(2)
        for split, n in (("train", 40), ("test", 12)):
            y = np.arange(n) % 4
            x = rng.integers(0, 2, size=(n, 7, 3, 10, 10)).astype(np.uint8)
            for i, label in enumerate(y):
                x[i, :, label % 3, 2 * label : 2 * label + 3] += 2  # a class's rows fire in its channel
            np.savez(tmp_path / f"{split}.npz", x=x, y=y)
        dataset = f"arrays:{tmp_path}"
    run = tmp_path / "run"
    args = ["run", "--dataset", dataset, "--arch", arch, "--steps", str(steps), "--epochs", "1", "--batch-size", "16"]
    clip = [] if kind == "folder" else ["--event-bits", "2"]  # the count clip acts on events only (refused on images)
    result = CliRunner().invoke(train_main, [*args, *data_dir, *clip, "--no-progress", "--out", str(run)])
    assert result.exit_code == 0, result.output
    onnx_path = tmp_path / "model.onnx"
    result = CliRunner().invoke(export_main, [str(run / "best.pt"), "--to", "qonnx", "-o", str(onnx_path)])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(sim_main, [str(onnx_path), "--check", "--no-progress", *data_dir])
    assert result.exit_code == 0, result.output
    assert re.search(r"bit-exact vs integer torch\s+yes", result.output), result.output
    for target in ("fpga", "loihi2", "nir"):
        env = {"QSNN_DATA_DIR": str(nmnist_dir)} if kind == "nmnist" else {}
        out = tmp_path / target
        result = CliRunner(env=env).invoke(export_main, [str(onnx_path), "--to", target, "-o", str(out)])
        assert result.exit_code == 0, result.output
        net = read_target(out)
        ref, _ = compile_qonnx(onnx_path, get_profile(net.profile.name))
        _, test = load_for_model(ref, "test", nmnist_dir if kind == "nmnist" else None)
        assert np.array_equal(simulate(net, test.x).counts, simulate(ref, test.x).counts), target
        if target == "loihi2":
            assert np.array_equal(np.load(out / "example_input.npy"), test.x[0])


def test_event_model_remembers_its_data_directory(trained_run, dvs_data_dir, tmp_path, monkeypatch):
    """A checkpoint records the data directory training read; the export carries it, and qsnn-sim and
    the loihi2 example input find the data there with no --data-dir (while it exists)."""
    from qsnn.export.cli import main as export_main
    from qsnn.export.format import load_model, read_metadata
    from qsnn.export.qonnx_float import export_float
    from qsnn.sim.cli import main as sim_main

    monkeypatch.delenv("QSNN_DATA_DIR", raising=False)
    onnx_path = export_float(trained_run(dataset="dvs128") / "best.pt", tmp_path / "dvs.onnx")
    assert read_metadata(load_model(onnx_path))["data_dir"] == str(dvs_data_dir)
    result = CliRunner().invoke(sim_main, [str(onnx_path), "--no-float", "--no-progress", "--allow-saturation"])
    assert result.exit_code == 0, result.output
    assert str(dvs_data_dir / "DVSGesture" / "ibmGestureTest") in result.output  # "data read from"
    out = tmp_path / "l2"
    result = CliRunner().invoke(export_main, [str(onnx_path), "--to", "loihi2", "-o", str(out), "--allow-saturation"])
    assert result.exit_code == 0, result.output
    first = load_split("dvs128", "test", dvs_data_dir, num_steps=8).x[0]
    assert np.array_equal(np.load(out / "example_input.npy"), first)


@pytest.mark.parametrize("rule", ["@32", "@32x", "@x24", "@32X24", "@32*24"])
@pytest.mark.parametrize("mode, arch", [("L", "4C3-AP2-D3"), ("RGB", "D16-D3")])
def test_a_mistyped_resize_rule_is_named_not_reported_as_a_missing_folder(tmp_path, rule, mode, arch):
    """folder:DIR@32 (W x H meant): the folder exists, so the message names the rule and its form, not
    'DIR@32 does not exist'; one line, no run folder. The rule written right trains."""
    from qsnn.train.cli import main

    root = write_image_folder(tmp_path / "photos", size=(16, 12), mode=mode, n_train=30, n_test=9)
    out = tmp_path / "run"
    args = ["run", "--arch", arch, "--epochs", "1", "--steps", "2", "--no-progress", "--out", str(out)]
    result = CliRunner().invoke(main, [*args, "--dataset", f"folder:{root}{rule}"])
    line = assert_clean_cli_error(result, f"'{rule}' is not a resize rule ({root} is the folder)", f"{root}@32x32")
    assert "does not exist" not in line and not out.exists()
    with pytest.raises(DataError, match="is not a resize rule"):
        load_split(f"folder:{root}{rule}", "test")
    assert load_split(f"folder:{root}@20x10", "test").x.shape == (9, 1 if mode == "L" else 3, 10, 20)


@pytest.mark.parametrize("shape, dtype", [((24, 6, 10, 12), np.uint16), ((24, 4, 9, 9), np.int32)])
def test_event_frames_without_their_channel_axis_are_told_how_to_add_it(tmp_path, shape, dtype):
    """Integer counts (N, T, H, W), one polarity, read as images of T channels: the refusal says that event
    frames take (N, T, 1, H, W) and how to save them; saved that way they load as events of T steps."""
    rng = np.random.default_rng(0)
    y = np.arange(shape[0]) % 3
    x = rng.integers(0, 3, size=shape).astype(dtype)
    for split in ("train", "test"):
        np.savez(tmp_path / f"{split}.npz", x=x, y=y)
    with pytest.raises(
        DataError,
        match=rf"train.npz: x is {np.dtype(dtype)}; .*event frames \(N, T, H, W\) of T = "
        rf"{shape[1]} bins.*x\[:, :, None\] \(N, T, 1, H, W\)",
    ):
        load_split(f"arrays:{tmp_path}", "test")
    for split in ("train", "test"):
        np.savez(tmp_path / f"{split}.npz", x=x[:, :, None], y=y)
    data = load_split(f"arrays:{tmp_path}", "test", num_steps=shape[1])
    assert data.encoding == "events" and data.x.shape == (shape[0], shape[1], 1, *shape[2:])
