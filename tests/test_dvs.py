"""DVS128 Gesture as people have it: IBM's .aedat release and tonic's layout, read event for event, cut by the
labels, cached, binned exactly as tonic's transforms bin them, timestamp units checked, and the event encoding
carried from training through export and simulation to the hardware tables."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from faults_helpers import assert_clean_cli_error
from fixtures import (
    AEDAT31_HEADER,
    DVS_FIXTURE_NEURON,
    aedat_packet,
    ibm_recording,
    polarity_words,
    write_aedat31,
    write_dvsgesture_fixture,
    write_ibm_gesture_fixture,
    write_labels_csv,
)

from qsnn import dvs
from qsnn.data import ArraySplit, load_split
from qsnn.errors import DataError
from qsnn.events import EventFrames, events_to_frames

RAW = EventFrames(count_bits=16)
TONIC_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])


@pytest.fixture(scope="module")
def tonic():
    return pytest.importorskip("tonic")


@pytest.fixture(scope="module")
def ibm_dir(tmp_path_factory):
    """IBM's release layout: 6 train and 3 test recordings of 11 gestures each (99 gestures)."""
    return write_ibm_gesture_fixture(tmp_path_factory.mktemp("ibm"), n_train=6, n_test=3, seed=0)


@pytest.fixture(scope="module")
def tonic_dir(tmp_path_factory):
    root = write_dvsgesture_fixture(tmp_path_factory.mktemp("tonic-layout"), seed=3)
    # two recordings with sub-millisecond timestamps (float ms), as a converted recording may have
    rng = np.random.default_rng(5)
    for f in sorted((root / "DVSGesture" / "ibmGestureTest").glob("user*_*/*.npy"))[:2]:
        ev = np.load(f)
        ev[:, 3] = np.sort(rng.uniform(0, 600, len(ev))).round(3)
        np.save(f, ev)
    return root


def _tonic_decode(tonic, path):
    """What ``tonic.io.read_dvs_ibm`` computes, from tonic's two AEDAT functions (tonic 1.7's own
    ``read_dvs_ibm`` unpacks the header's three values into two: neuromorphs/tonic#302)."""
    version, start = tonic.io.read_aedat_header_from_file(str(path))[:2]
    raw = tonic.io.get_aer_events_from_file(str(path), version, start)
    addr = raw["address"]
    return version, start, raw, ((addr >> 17) & 0x1FFF, (addr >> 2) & 0x1FFF, (addr >> 1) & 1, raw["timeStamp"])


# --------------------------------------------------------------------------------------------------
# The AEDAT 3.1 bytes of IBM's release, read back


def test_aedat31_bytes_read_back_event_for_event_by_tonic_and_qsnn(tmp_path, tonic):
    events, _ = ibm_recording([3, 7, 0], np.random.default_rng(1), n_events=900)
    path = write_aedat31(tmp_path / "user01_lab.aedat", events, packet_events=333)
    raw = path.read_bytes()
    # the byte format: CR LF header lines, then packets of a 28-byte header and 8-byte events
    assert (
        raw.startswith(b"#!AER-DAT3.1\r\n")
        and raw[len(AEDAT31_HEADER) - 14 : len(AEDAT31_HEADER)] == b"#!END-HEADER\r\n"
    )
    pos, sizes = len(AEDAT31_HEADER), []
    while pos < len(raw):
        kind, size, capacity = (int.from_bytes(raw[pos + a : pos + b], "little") for a, b in ((0, 2), (4, 8), (20, 24)))
        assert (kind, size) == (1, 8)
        sizes.append(capacity)
        pos += 28 + 8 * capacity
    assert pos == len(raw) and sum(sizes) == len(events) and max(sizes) == 333
    first_word = int.from_bytes(raw[len(AEDAT31_HEADER) + 28 : len(AEDAT31_HEADER) + 32], "little")
    assert first_word == (int(events["x"][0]) << 17) | (int(events["y"][0]) << 2) | (int(events["p"][0]) << 1) | 1

    version, start, _, (x, y, p, t) = _tonic_decode(tonic, path)
    assert version == pytest.approx(3.1) and start == len(AEDAT31_HEADER)
    for got, want in ((x, "x"), (y, "y"), (p, "p"), (t, "t")):
        np.testing.assert_array_equal(got, events[want])
    try:  # if a tonic release fixes read_dvs_ibm, it must read the same events
        _, xytp = tonic.io.read_dvs_ibm(str(path))
    except ValueError as exc:
        assert "unpack" in str(exc)  # neuromorphs/tonic#302
    else:
        for name in "xypt":
            np.testing.assert_array_equal(xytp[name].astype(np.int64), events[name].astype(np.int64))

    ours, info = dvs.read_ibm_aedat(path)
    assert ours.dtype.names == ("x", "y", "p", "t") and np.array_equal(ours, events)
    assert info["packets"] == len(sizes) and info["invalid_events"] == 0 and info["other_packet_events"] == {}


def test_aedat_packets_tonic_reads_blindly_are_dropped_or_extended(tmp_path, tonic):
    """tonic's reader takes every packet's eventCapacity events as polarity events and ignores the valid bit
    and eventTSOverflow; qsnn keeps only valid events of polarity packets, with the overflow applied."""
    rng = np.random.default_rng(2)
    events, _ = ibm_recording([1], rng, start_us=2**31 - 300_000, n_events=400)  # crosses 2^31 µs
    assert events["t"].min() < 2**31 <= events["t"].max()
    t_late = int(events["t"][-1]) + 10
    special = aedat_packet(
        0, np.array([7, 9, 11], np.uint32), np.full(3, t_late & 0x7FFFFFFF, np.uint32), overflow=t_late >> 31
    )
    words = polarity_words([5, 6, 7], [1, 2, 3], [1, 0, 1], valid=1)
    words[1] &= ~np.uint32(1)  # one event marked invalid
    slack = aedat_packet(
        1, words, np.full(3, (t_late + 5) & 0x7FFFFFFF, np.uint32), overflow=t_late >> 31, capacity=5
    )  # 2 unused slots at the end
    path = write_aedat31(tmp_path / "user02_led.aedat", events, extra=special + slack)

    *_, raw, (x, _, _, t) = _tonic_decode(tonic, path)
    assert len(raw) == len(events) + 3 + 5  # tonic: every slot of every packet
    assert t.max() < 2**31  # and 31-bit timestamps

    ours, info = dvs.read_ibm_aedat(path)
    assert len(ours) == len(events) + 2
    np.testing.assert_array_equal(ours[: len(events)], events)
    assert ours["x"][-2:].tolist() == [5, 7] and ours["t"][-1] == t_late + 5
    assert info["other_packet_events"] == {"0": 3} and info["invalid_events"] == 1


@pytest.mark.parametrize(
    "damage, match",
    [
        ("truncated", "truncated AEDAT file"),
        ("no header", "not an AEDAT 3.1 recording"),
        ("wide events", "8-byte events"),
    ],
)
def test_damaged_aedat_names_the_file(tmp_path, damage, match):
    events, rows = ibm_recording([2], np.random.default_rng(4), n_events=300)
    base = tmp_path / "DvsGesture"
    path = write_aedat31(base / "user01_lab.aedat", events)
    write_labels_csv(base / "user01_lab_labels.csv", rows)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:-13])
    elif damage == "no header":
        path.write_bytes(path.read_bytes()[len(AEDAT31_HEADER) :])
    else:
        raw = bytearray(path.read_bytes())
        raw[len(AEDAT31_HEADER) + 4] = 16  # eventSize 16 in the first packet
        path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=match) as err:
        load_split("dvs128", "train", tmp_path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------
# Labels CSV, cutting, splits


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_labels_csv(tmp_path, newline):
    path = write_labels_csv(tmp_path / "a_labels.csv", [(1, 1_000_000, 7_000_000), (11, 8_000_000, 9_500_000)], newline)
    np.testing.assert_array_equal(dvs.read_ibm_labels(path), [[0, 1_000_000, 7_000_000], [10, 8_000_000, 9_500_000]])
    rows = [(1, 1_000_000, 7_000_000), (2, 8_000_000, 8_050_000), (3, 9_000_000, 15_000_000)]  # one 50 ms glitch
    assert len(dvs.read_ibm_labels(write_labels_csv(tmp_path / "b_labels.csv", rows, newline))) == 3


@pytest.mark.parametrize(
    "rows, match",
    [
        ([(12, 0, 1_000_000)], "class 12 outside 1..11"),
        ([(3, 5_000_000, 4_000_000)], "ends"),
        ([(3, 1000, 7000)], "look like milliseconds"),
    ],
)
def test_bad_labels_csv_names_the_file(tmp_path, rows, match):
    path = write_labels_csv(tmp_path / "user01_lab_labels.csv", rows)
    with pytest.raises(DataError, match=match) as err:
        dvs.read_ibm_labels(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_gestures_are_cut_by_the_labels_csv(ibm_dir, tonic):
    base = ibm_dir / "DvsGesture"
    cache = dvs.ibm_cache(base, progress=False)
    name = "user24_fluorescent"
    gestures = dvs.read_cached_gestures(cache.folder, name)
    *_, (x, y, p, t) = _tonic_decode(tonic, base / f"{name}.aedat")
    rows = np.loadtxt(base / f"{name}_labels.csv", delimiter=",", skiprows=1, dtype=np.int64)
    assert len(gestures) == len(rows) == 11
    kept = 0
    for (events, label), (cls, start, end) in zip(gestures, rows):
        inside = (t >= start) & (t < end)
        assert label == cls - 1
        for got, want in ((events["x"], x), (events["y"], y), (events["p"], p), (events["t"], t)):
            np.testing.assert_array_equal(got, want[inside])
        kept += int(inside.sum())
    assert kept < len(t)  # the noise between gestures is left out
    entry = cache.entry(name)
    assert [g[0] for g in entry["gestures"]] == list(rows[:, 0] - 1)
    assert entry["events"]["in_gestures"] == kept and entry["events"]["recording"] == len(t)


def test_ibm_splits_follow_the_trials_files(ibm_dir, tmp_path):
    train, val, test = (load_split("dvs128", s, ibm_dir, num_steps=10) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (59, 7, 33)
    assert train.source == test.source == str(ibm_dir / "DvsGesture")
    assert list(np.bincount(test.y)) == [3] * 11
    # without the trials files: IBM's user rule (1-23 train, 24-29 test) gives the same split
    copy = tmp_path / "DvsGesture"
    copy.mkdir()
    for f in (ibm_dir / "DvsGesture").iterdir():
        if not f.name.startswith("trials_"):
            (copy / f.name).symlink_to(f)
    np.testing.assert_array_equal(load_split("dvs128", "test", tmp_path, num_steps=10).x, test.x)


def test_cache_converts_once_and_detects_a_changed_source(tmp_path):
    root = write_ibm_gesture_fixture(tmp_path, n_train=1, n_test=2, seed=7, n_events=200)
    base = root / "DvsGesture"
    first = load_split("dvs128", "test", root, events=RAW, num_steps=20)
    cache = dvs.ibm_cache(base, progress=False)
    assert cache.folder == root / "DvsGesture.qsnn-cache" and cache.converted == []
    manifest = json.loads((cache.folder / "manifest.json").read_text())
    assert manifest["format"] == dvs.CACHE_FORMAT and sorted(manifest["recordings"]) == sorted(
        p.stem for p in base.glob("*.aedat")
    )
    name = "user24_fluorescent"
    assert manifest["recordings"][name]["aedat"]["sha256"] == dvs.sha256_file(base / f"{name}.aedat")

    aedat, labels = base / f"{name}.aedat", base / f"{name}_labels.csv"
    st = aedat.stat()
    os.utime(aedat, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same content
    assert dvs.ibm_cache(base, progress=False).converted == []

    rows = np.loadtxt(labels, delimiter=",", skiprows=1, dtype=np.int64)
    rows[[0, 1], 0] = rows[[1, 0], 0]  # relabel two gestures
    write_labels_csv(labels, [tuple(r) for r in rows])
    assert dvs.ibm_cache(base, progress=False).converted == [name]
    second = load_split("dvs128", "test", root, events=RAW, num_steps=20)
    np.testing.assert_array_equal(second.x, first.x)
    changed = np.flatnonzero(second.y != first.y)
    assert len(changed) == 2 and set(second.y[changed]) == set(first.y[changed])

    (cache.folder / f"{name}.npz").write_bytes(b"broken")  # a damaged cache file is converted again
    assert dvs.ibm_cache(base, progress=False).converted == [name]
    np.testing.assert_array_equal(load_split("dvs128", "test", root, events=RAW, num_steps=20).x, first.x)

    for f in (aedat, labels):
        f.unlink()
    (base / "trials_to_test.txt").write_text("user24_fluorescent_led.aedat\n")
    cache = dvs.ibm_cache(base, progress=False)
    assert name not in cache.manifest["recordings"] and not (cache.folder / f"{name}.npz").exists()
    assert len(load_split("dvs128", "test", root, num_steps=20)) == 11


# --------------------------------------------------------------------------------------------------
# Frames equal tonic's transforms


def _tonic_frames(tonic, events, bin_us=EventFrames.bin_us, **kw):
    transform = tonic.transforms.Compose(
        [
            tonic.transforms.Downsample(spatial_factor=1 / EventFrames.downsample),
            tonic.transforms.ToFrame(sensor_size=(32, 32, 2), time_window=bin_us, **kw),
        ]
    )
    return transform(events)


def _check_frames(tonic, events, ours_t, ours_all):
    """ours (T steps) vs tonic on the same events: bin for bin equal; the one difference is the length."""
    t = events["t"]
    every = _tonic_frames(tonic, events, include_incomplete=True, end_time=int(t[-1]) + 1)
    np.testing.assert_array_equal(ours_all, every)  # every bin up to the last event
    whole = _tonic_frames(tonic, events)  # tonic's default: whole bins only
    np.testing.assert_array_equal(ours_all[: len(whole)], whole)
    n = min(len(every), len(ours_t))
    np.testing.assert_array_equal(ours_t[:n], every[:n])
    assert not ours_t[n:].any()  # T steps: zeros after the last event


def test_frames_equal_tonic_on_tonics_layout(tonic_dir, tonic, monkeypatch):
    monkeypatch.setattr(tonic.datasets.DVSGesture, "download", lambda self: pytest.fail("tonic tried to download"))
    assert tuple(tonic.datasets.DVSGesture.classes) == dvs.DVS_GESTURE_CLASSES
    ds = tonic.datasets.DVSGesture(str(tonic_dir), train=False)
    ours_raw = load_split("dvs128", "test", tonic_dir, events=RAW)
    ours_bin = load_split("dvs128", "test", tonic_dir)  # the default encoding: binary spikes
    order = sorted(ds.data, key=lambda f: (Path(f).parent.name, int(Path(f).stem)))
    fractional = [i for i, f in enumerate(ds.data) if np.any(np.load(f)[:, 3] % 1)]
    assert len(fractional) == 2
    for i in sorted({0, 57, *fractional}):
        events, label = ds[i]
        k = order.index(ds.data[i])
        assert ours_raw.y[k] == label
        ours_all = events_to_frames(dvs.read_tonic_recording(Path(ds.data[i])), num_steps=None)
        _check_frames(tonic, events, ours_raw.x[k], ours_all)
        np.testing.assert_array_equal(ours_bin.x[k], np.minimum(ours_raw.x[k], 1))


def test_frames_equal_tonic_on_ibms_release(ibm_dir, tonic):
    """The IBM release through qsnn (tonic's reader, the CSV cut, the cache, the binning) against tonic's
    transforms on the same gestures cut here independently."""
    base = ibm_dir / "DvsGesture"
    ours = load_split("dvs128", "test", ibm_dir, events=RAW)
    ours4 = load_split("dvs128", "test", ibm_dir, events=EventFrames(count_bits=4))
    k = 0
    for name in sorted(Path(n).stem for n in (base / "trials_to_test.txt").read_text().split()):
        *_, (x, y, p, t) = _tonic_decode(tonic, base / f"{name}.aedat")
        rows = np.loadtxt(base / f"{name}_labels.csv", delimiter=",", skiprows=1, dtype=np.int64)
        for cls, start, end in rows:
            inside = (t >= start) & (t < end)
            events = np.empty(int(inside.sum()), TONIC_DTYPE)
            events["x"], events["y"], events["p"], events["t"] = x[inside], y[inside], p[inside], t[inside]
            assert ours.y[k] == cls - 1
            if k % 5 == 0:
                ours_all = events_to_frames(events, num_steps=None)
                _check_frames(tonic, events, ours.x[k], ours_all)
                np.testing.assert_array_equal(ours4.x[k], np.minimum(ours.x[k], 15))
            k += 1
    assert k == len(ours) == 33


# --------------------------------------------------------------------------------------------------
# Timestamp units


def test_microsecond_recording_in_tonics_layout_is_refused_naming_the_file(tmp_path):
    root = write_dvsgesture_fixture(tmp_path, seed=4, n_events=200)
    victim = root / "DVSGesture" / "ibmGestureTrain" / "user02_fluorescent" / "6.npy"
    ev = np.load(victim)
    ev[:, 3] *= 1000  # t in µs instead of ms
    np.save(victim, ev)
    with pytest.raises(DataError) as err:
        load_split("dvs128", "train", root)
    message = str(err.value)
    assert message.startswith(str(victim)) and "\n" not in message
    assert "microseconds" in message and "divide column 3 by 1000" in message

    from qsnn.train.cli import main

    result = CliRunner().invoke(
        main,
        [
            "run",
            "--dataset",
            "dvs128",
            "--data-dir",
            str(root),
            "--epochs",
            "1",
            "--steps",
            "4",
            "--out",
            str(tmp_path / "run"),
            "--no-progress",
        ],
    )
    line = assert_clean_cli_error(result, "microseconds")
    assert line.startswith(f"error: {victim}: timestamps span")
    assert not (tmp_path / "run" / "last.pt").exists()


def test_second_recording_in_tonics_layout_is_refused(tmp_path):
    root = write_dvsgesture_fixture(tmp_path, seed=4, n_events=200)
    victim = root / "DVSGesture" / "ibmGestureTest" / "user04_lab" / "0.npy"
    ev = np.load(victim)
    ev[:, 3] /= 1000  # t in s
    np.save(victim, ev)
    with pytest.raises(DataError, match="look like seconds") as err:
        load_split("dvs128", "test", root)
    assert str(victim) in str(err.value)


def test_millisecond_labels_of_ibms_release_are_refused(tmp_path):
    root = write_ibm_gesture_fixture(tmp_path, n_train=1, n_test=1, n_events=100)
    labels = root / "DvsGesture" / "user24_fluorescent_labels.csv"
    rows = np.loadtxt(labels, delimiter=",", skiprows=1, dtype=np.int64)
    rows[:, 1:] //= 1000
    write_labels_csv(labels, [tuple(r) for r in rows])
    with pytest.raises(DataError, match="look like milliseconds") as err:
        load_split("dvs128", "test", root)
    assert str(labels) in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------------
# Test cut: windows, aggregated per gesture


def test_windows_cut_and_aggregation(tonic_dir):
    cut = EventFrames(count_bits=16, test_cut="windows")
    first = load_split("dvs128", "test", tonic_dir, events=RAW, num_steps=8)
    windows = load_split("dvs128", "test", tonic_dir, events=cut, num_steps=8)
    assert first.group is None and windows.num_recordings == len(first) == 110
    starts = np.flatnonzero(np.diff(windows.group, prepend=-1))
    np.testing.assert_array_equal(windows.x[starts], first.x)  # window 0 is the first cut
    np.testing.assert_array_equal(windows.recording_labels(), first.y)
    f = sorted(
        (tonic_dir / "DVSGesture" / "ibmGestureTest").glob("user*_*/*.npy"), key=lambda f: (f.parent.name, int(f.stem))
    )[3]
    events = dvs.read_tonic_recording(f)
    every = events_to_frames(events, num_steps=None)
    k = int((events[-1, 3] - events[0, 3]) // (8 * 5000))
    assert np.count_nonzero(windows.group == 3) == k >= 10
    np.testing.assert_array_equal(windows.x[windows.group == 3].reshape(-1, 2, 32, 32), every[: 8 * k])
    # a gesture is predicted from its windows' summed counts, ties to the first class
    counts = np.zeros((len(windows), 11), np.int64)
    counts[np.arange(len(windows)), windows.y] = 1
    assert windows.accuracy(counts) == 1.0
    counts[starts] = 0
    counts[starts, (windows.y[starts] + 1) % 11] = 50  # one loud wrong window outvotes the others
    assert windows.accuracy(counts) == 0.0
    sub = windows.subset(22, seed=0)
    assert sub.num_recordings == 22 and list(np.bincount(sub.recording_labels())) == [2] * 11
    assert all(np.count_nonzero(sub.group == g) == k_ for g, k_ in enumerate(np.bincount(sub.group)))
    with pytest.raises(ValueError, match="share its label"):
        ArraySplit(windows.x[:2], np.array([0, 1]), windows.classes, "events", "", np.array([0, 0]))


# --------------------------------------------------------------------------------------------------
# The encoding through export, compile, simulation and tables


def test_engine_refuses_inputs_above_the_encoding():
    from qsnn.network import IntegerLayer, IntegerNetwork
    from qsnn.profiles import FPGA
    from qsnn.sim import simulate

    layer = IntegerLayer(
        "fc", "dense", np.ones((2, 4), np.int8), 1, 0, np.array([3, 3]), np.zeros(2, np.int64), 4096, np.ones(2)
    )
    net = IntegerNetwork((layer,), FPGA, (1, 2, 2), 3, "events", ("a", "b"), input_max=1)
    x = np.ones((1, 3, 1, 2, 2), np.uint8)
    assert simulate(net, x).counts.shape == (1, 2)
    with pytest.raises(ValueError, match="up to 1 per input cell"):
        simulate(net, x * 2)


def neuron_options(neuron: dict) -> list[str]:
    """``qsnn-train run`` options for a neuron setting (``batch_norm``, ``beta``, ``threshold``, ``slope``)."""
    out = ["--batch-norm" if neuron["batch_norm"] else "--no-batch-norm"]
    for key in ("beta", "threshold", "slope"):
        out += [f"--{key}", str(neuron[key])]
    return out


@pytest.mark.slow
def test_pipeline_on_ibms_release(ibm_dir, tmp_path):
    """qsnn-train → qsnn-export → qsnn-sim (fpga, loihi2: no overrides) → fpga and loihi2 tables, on .aedat files."""
    from qsnn.export.cli import main as export_main
    from qsnn.export.format import check_qsnn_model
    from qsnn.sim.cli import main as sim_main
    from qsnn.targets import read_target
    from qsnn.train.cli import main as train_main

    run = tmp_path / "run"
    cli = CliRunner()
    result = cli.invoke(
        train_main,
        [
            "run",
            "--dataset",
            "dvs128",
            "--data-dir",
            str(ibm_dir),
            "--epochs",
            "2",
            "--steps",
            "8",
            "--test-cut",
            "windows",
            *neuron_options(DVS_FIXTURE_NEURON),  # Table I's DVS int4 row does not learn it
            "--out",
            str(run),
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test_samples"] == 33 and metrics["test_windows"] > 33 and metrics["test_acc"] > 50
    onnx_path = tmp_path / "model.onnx"
    assert cli.invoke(export_main, [str(run / "best.pt"), "--to", "qonnx", "-o", str(onnx_path)]).exit_code == 0
    _, meta = check_qsnn_model(onnx_path)
    assert meta["input_max"] == 1 and meta["event_frames"]["count_bits"] == 1
    assert meta["event_frames"]["test_cut"] == "windows"
    for profile in ("fpga", "loihi2"):
        report_path = tmp_path / f"sim_{profile}.json"
        result = cli.invoke(
            sim_main,
            [
                str(onnx_path),
                "--profile",
                profile,
                "--data-dir",
                str(ibm_dir),
                "--check",
                "--no-progress",
                "--report",
                str(report_path),
            ],
        )
        assert result.exit_code == 0, result.output
        report = json.loads(report_path.read_text())
        assert report["hardware"]["total"]["saturation_events"] == 0
        assert report["compile_report"]["input_max"] == 1 and not report["compile_report"]["saturation_possible"]
        assert report["samples"] == 33 and report["windows"] == metrics["test_windows"]
        assert report["agreement"]["spike_trains_vs_integer_torch"]["bit_exact"]
        if profile == "fpga":  # the same gestures and windows as training's test evaluation (float32 rounding aside)
            assert report["accuracy"]["float_model"] == pytest.approx(metrics["test_acc"] / 100, abs=2 / 33 + 1e-9)
        folder = tmp_path / profile
        result = cli.invoke(export_main, [str(run / "best.pt"), "--to", profile, "-o", str(folder)])
        assert result.exit_code == 0, result.output
        manifest = json.loads((folder / "manifest.json").read_text())
        assert manifest["network"]["input_max"] == 1 and manifest["network"]["input_bits"] == 1
        assert read_target(folder).input_max == 1
    assert "#define QSNN_INPUT_MAX 1" in (tmp_path / "fpga" / "qsnn_model.h").read_text()
    assert "binary spikes" in (tmp_path / "fpga" / "README.md").read_text()


def test_compile_refuses_inputs_wider_than_the_profiles_port(trained_run, tmp_path):
    """A model trained on 8-bit counts cannot go to a chip with a 4-bit input port; widening the port allows it."""
    import onnx

    from qsnn.errors import ProfileError
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.format import read_metadata, set_metadata
    from qsnn.export.qonnx_float import export_float
    from qsnn.profiles import get_profile

    path = export_float(trained_run(dataset="dvs128") / "best.pt", tmp_path / "dvs.onnx")
    net, report = compile_qonnx(path, get_profile("fpga"))
    assert net.input_max == 1 and report["input_max"] == 1
    model = onnx.load(str(path))
    meta = read_metadata(model)
    meta.update(input_max=255, event_frames={**meta["event_frames"], "count_bits": 8, "count_max": 255})
    set_metadata(model, meta)
    onnx.save(model, str(tmp_path / "dvs8.onnx"))
    with pytest.raises(ProfileError, match="event counts up to 255 .* 4-bit values .* --event-bits 4"):
        compile_qonnx(tmp_path / "dvs8.onnx", get_profile("fpga", input_bits=4))
    with pytest.raises(ProfileError, match="worst-case membrane"):  # the bound follows the declared range
        compile_qonnx(tmp_path / "dvs8.onnx", get_profile("fpga"))
    wide = get_profile("fpga", membrane_bits=40)
    net1, report1 = compile_qonnx(path, wide)
    net8, report8 = compile_qonnx(tmp_path / "dvs8.onnx", wide)
    assert net8.input_max == 255 and report8["input_max"] == 255
    grid = [r["layers"][0]["grid_unit"]["max"] for r in (report1, report8)]
    bounds = [r["layers"][0]["bound"]["max"] * g for r, g in zip((report1, report8), grid)]  # in real units
    assert bounds[1] > 100 * bounds[0]


def test_reading_ibms_release_never_imports_torch(tmp_path):
    """qsnn-sim reads (and converts) .aedat files without torch: tonic's io module is loaded on its own."""
    import subprocess
    import sys

    root = write_ibm_gesture_fixture(tmp_path, n_train=1, n_test=1, n_events=100)
    code = (
        "import sys\nfrom qsnn.data import load_split\n"
        f"x = load_split('dvs128', 'test', {str(root)!r}, num_steps=10).x\n"
        "assert 'torch' not in sys.modules and 'tonic' not in sys.modules, 'torch imported'\n"
        "print('ok', x.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("ok (11, 10, 2, 32, 32)")
    assert "converted 2 recording(s), 22 gestures" in out.stderr
