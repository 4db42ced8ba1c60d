"""Malformed inputs, fuzzed with hypothesis, at every stage of the pipeline.

Each damaged input must give either a clean error (a :class:`~qsnn.errors.QsnnError` naming the file
and the problem in the API; exit code 1 with one ``error: ...`` line and no traceback from the
command-line tools) or, when the damage happens to leave a valid file, a correct result. Never a
traceback, a hang, or a silently wrong load.

Inputs: checkpoints (load_checkpoint, ``qsnn-export``), QONNX files (``compile_qonnx``,
``read_integer_qonnx``, ``qsnn-sim``), target folders (manifests and weight tables, ``read_target``),
IDX files, tonic DVSGesture recordings, and chip profiles with impossible widths.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from faults_helpers import assert_clean_cli_error, assert_clean_error, damaged, fuzz, zip_regions
from fixtures import gesture_events, write_mnist_idx_dir
from hypothesis import given
from hypothesis import strategies as st

from qsnn.data import load_split, read_idx
from qsnn.errors import CheckpointError, DataError, ProfileError, QsnnError
from qsnn.events import events_to_frames
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import FPGA, LOIHI2, PROFILES, ChipProfile, get_profile
from qsnn.sim import simulate
from qsnn.train.checkpoint import load_checkpoint, model_from_checkpoint

# Examples per fuzz test: small, the whole fault suite has ~150 s on 2 shared cores.
N_CKPT, N_CKPT_CLI, N_ONNX, N_SIM_CLI, N_TARGET, N_IDX, N_EVENTS, N_PROFILE = 40, 8, 40, 25, 30, 40, 40, 60


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults-inputs")


def _fresh(work: Path, name: str) -> Path:
    """A path in ``work`` no earlier example used (hypothesis reuses the module's folder)."""
    _fresh.n = getattr(_fresh, "n", 0) + 1
    return work / f"{_fresh.n}-{name}"


# --------------------------------------------------------------------------------------------------
# Checkpoints


@pytest.fixture(scope="module")
def checkpoint(trained_run) -> tuple[Path, bytes, dict]:
    path = trained_run() / "best.pt"
    return path, path.read_bytes(), load_checkpoint(path)


def _regions(raw: bytes) -> dict[str, tuple[int, int]]:
    zones = zip_regions(raw)
    tensors = sorted((k for k in zones if k.startswith("data/")), key=lambda k: zones[k][1] - zones[k][0])
    keep = {k: zones[k] for k in zones if not k.startswith("data/")}
    keep["largest tensor"] = zones[tensors[-1]]
    return keep


def _same_checkpoint(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    assert a["config"] == b["config"] and a["epoch"] == b["epoch"] and a["classes"] == b["classes"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


def test_digest_catches_a_flipped_weight(checkpoint, work):
    path, raw, original = checkpoint
    start, stop = _regions(raw)["largest tensor"]
    bad = bytearray(raw)
    bad[(start + stop) // 2] ^= 0x10  # one bit of one weight: torch's zip has no checksum of its own
    target = work / "one-weight-flipped.pt"
    target.write_bytes(bytes(bad))
    with pytest.raises(CheckpointError, match="digest") as err:
        load_checkpoint(target)
    assert_clean_error(err.value, str(target), "damaged")


@fuzz(N_CKPT)
@given(data=st.data())
def test_checkpoint_truncated_or_flipped(checkpoint, work, data):
    path, raw, original = checkpoint
    how, blob = data.draw(damaged(raw, _regions(raw)))
    target = _fresh(work, "ckpt.pt")
    target.write_bytes(blob)
    try:
        loaded = load_checkpoint(target)
    except QsnnError as exc:
        assert_clean_error(exc, str(target))
        assert isinstance(exc, CheckpointError), how
        return
    _same_checkpoint(loaded, original)  # a flip the digest cannot see changed nothing
    model_from_checkpoint(loaded)


@fuzz(N_CKPT_CLI)
@given(data=st.data())
def test_export_cli_on_damaged_checkpoints(checkpoint, work, data):
    from qsnn.export.cli import main

    path, raw, _ = checkpoint
    how, blob = data.draw(damaged(raw, _regions(raw)))
    target = _fresh(work, "ckpt.pt")
    target.write_bytes(blob)
    out = target.with_suffix(".onnx")
    result = CliRunner().invoke(main, [str(target), "--to", "qonnx", "-o", str(out)])
    if result.exit_code == 0:
        from qsnn.export.format import check_qsnn_model

        check_qsnn_model(out, kind="float")
    else:
        assert_clean_cli_error(result, target.name)
        assert not out.exists(), how


# --------------------------------------------------------------------------------------------------
# QONNX files


@pytest.fixture(scope="module")
def onnx_files(float_onnx, work) -> dict[str, Path]:
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.qonnx_int import export_integer

    net, _ = compile_qonnx(float_onnx, FPGA)
    return {"float": float_onnx, "integer": export_integer(net, work / "model.fpga.onnx")}


def _metadata_regions(raw: bytes, model: onnx.ModelProto) -> dict[str, tuple[int, int]]:
    spans = {}
    for prop in model.metadata_props:
        at = raw.find(prop.value.encode())
        if at >= 0 and prop.value:
            spans[f"metadata {prop.key}"] = (at, at + len(prop.value.encode()))
    return spans


def _images(n: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, 1, 28, 28)).astype(np.uint8)


def _check_network(net: IntegerNetwork) -> None:
    assert isinstance(net, IntegerNetwork)
    for layer in net.layers:
        assert np.abs(np.asarray(layer.weight, dtype=np.int64)).max() <= net.profile.weight_max
    res = simulate(net, _images())
    assert res.counts.shape == (3, len(net.classes))


@pytest.mark.parametrize("kind", ["float", "integer"])
def test_onnx_truncated_or_flipped(onnx_files, work, kind):
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.qonnx_int import read_integer_qonnx

    raw = onnx_files[kind].read_bytes()
    regions = _metadata_regions(raw, onnx.load_from_string(raw))

    @fuzz(N_ONNX // 2)
    @given(data=st.data())
    def run(data):
        how, blob = data.draw(damaged(raw, regions))
        target = _fresh(work, f"{kind}.onnx")
        target.write_bytes(blob)
        try:
            net = (
                compile_qonnx(target, FPGA, allow_saturation=True)[0] if kind == "float" else read_integer_qonnx(target)
            )
        except QsnnError as exc:
            assert_clean_error(exc, str(target))
            return
        _check_network(net)

    run()


@fuzz(N_SIM_CLI)
@given(data=st.data())
def test_sim_cli_on_damaged_onnx(onnx_files, work, data):
    from qsnn.sim.cli import main

    kind = data.draw(st.sampled_from(["float", "integer"]))
    raw = onnx_files[kind].read_bytes()
    how, blob = data.draw(damaged(raw, _metadata_regions(raw, onnx.load_from_string(raw))))
    target = _fresh(work, f"{kind}.onnx")
    target.write_bytes(blob)
    float_graph = [] if data.draw(st.booleans()) else ["--no-float"]  # also run the float graph in onnxruntime
    result = CliRunner().invoke(
        main,
        [str(target), "--dataset", "mnist5k", "--subset", "10", *float_graph, "--no-progress", "--allow-saturation"],
    )
    if result.exit_code != 0:
        assert_clean_cli_error(result, target.name)


def test_cli_errors_on_real_stderr_and_debug_traceback(work):
    """The installed commands themselves: one ``error:`` line on stderr, exit 1; ``--debug`` shows the traceback."""
    bad = work / "not-a-model.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 10)
    sim = Path(sys.prefix) / "bin" / "qsnn-sim"
    res = subprocess.run([str(sim), str(bad), "--no-progress"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and res.stderr.startswith("error: ") and str(bad) in res.stderr, res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = subprocess.run([str(sim), str(bad), "--no-progress", "--debug"], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "Traceback" in res.stderr and "ExportError" in res.stderr
    res = subprocess.run(
        [str(sim), str(bad), "--profile", "fpga", "--profile-set", "membrane_bits=99"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 1 and res.stderr.startswith("error: ") and "membrane_bits=99" in res.stderr, res.stderr


# --------------------------------------------------------------------------------------------------
# Target folders: manifests and weight tables


def _tiny_net(profile: ChipProfile) -> IntegerNetwork:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_targets import tiny_net

    return tiny_net(profile)


@pytest.fixture(scope="module")
def target_folders(work) -> dict[str, Path]:
    from qsnn.targets import write_target

    return {
        name: write_target(name, _tiny_net(LOIHI2 if name == "loihi2" else FPGA), work / f"target-{name}")
        for name in ("fpga", "loihi2", "nir")
    }


_JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.sampled_from(["conv", "dense", "fpga", "loihi2", "nir", "static"]),
    st.lists(st.integers(-5, 40), max_size=4),
    st.just({}),
)


@st.composite
def _edited_manifest(draw, manifest: dict) -> tuple[str, dict]:
    """The manifest with 1-3 values somewhere in its tree replaced by arbitrary JSON, or deleted."""
    m = json.loads(json.dumps(manifest))
    edits = []
    for _ in range(draw(st.integers(1, 3))):
        node, path = m, []
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node)))
            if not keys:
                break
            key = draw(st.sampled_from(keys))
            path.append(key)
            child = node[key]
            if isinstance(child, (dict, list)) and child and draw(st.booleans()):
                node = child
                continue
            if isinstance(node, dict) and draw(st.integers(0, 5)) == 0:
                del node[key]
                edits.append(f"del {path}")
            else:
                node[key] = draw(_JSON_VALUES)
                edits.append(f"{path} = {node[key]!r}")
            break
    return "; ".join(edits), m


def _read_edited(work: Path, target: str, base: Path, manifest: dict):
    """Read a copy of the target folder ``base`` with ``manifest`` as its manifest: the network, or the
    QsnnError it raised (checked clean: one line naming the folder)."""
    from qsnn.targets import read_target
    from qsnn.targets.manifest import MANIFEST

    folder = _fresh(work, target)
    shutil.copytree(base, folder)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    try:
        return read_target(folder)
    except QsnnError as exc:
        assert_clean_error(exc, str(folder))
        return exc


def _manifest(base: Path) -> dict:
    from qsnn.targets.manifest import MANIFEST

    return json.loads((base / MANIFEST).read_text())


@pytest.mark.parametrize("target", ["fpga", "loihi2", "nir"])
def test_edited_manifests(target_folders, work, target):
    base = target_folders[target]
    manifest = _manifest(base)

    @fuzz(N_TARGET)
    @given(data=st.data())
    def run(data):
        how, edited = data.draw(_edited_manifest(manifest))
        net = _read_edited(work, target, base, edited)
        if isinstance(net, QsnnError):
            return
        sim = simulate(net, np.random.default_rng(1).integers(0, 256, (2, 1, 14, 14)).astype(np.uint8))
        assert sim.counts.shape == (2, len(net.classes))

    run()


@pytest.mark.parametrize("target", ["fpga", "loihi2", "nir"])
@pytest.mark.parametrize("input_max", [True, 1, 254, 255.0, "255", 256])
def test_edited_input_range_is_refused(target_folders, work, target, input_max):
    """A static network's input range is 255, an integer: a manifest edited to anything else (even a
    value JSON or int() would coerce to an integer) is refused naming the folder, not read as a
    network that then refuses the images it was trained on (the fuzz above found ``True``). A target
    whose reader takes the network from its own file (loihi2's netx, nir's graph) ignores the edit."""
    manifest = _manifest(target_folders[target])
    manifest["network"]["input_max"] = input_max
    net = _read_edited(work, target, target_folders[target], manifest)
    if isinstance(net, QsnnError):
        assert "input_max" in str(net)
    else:  # fpga's reader takes the network from the manifest
        assert target != "fpga" and net.input_max == 255


@pytest.mark.parametrize("target", ["fpga", "loihi2", "nir"])
def test_damaged_tables_are_refused_by_their_hash(target_folders, work, target):
    from qsnn.targets import read_target
    from qsnn.targets.manifest import MANIFEST

    base = target_folders[target]
    tables = sorted(json.loads((base / MANIFEST).read_text())["files"])

    @fuzz(N_TARGET // 3)
    @given(data=st.data())
    def run(data):
        name = data.draw(st.sampled_from(tables))
        how, blob = data.draw(damaged((base / name).read_bytes()))
        folder = _fresh(work, target)
        shutil.copytree(base, folder)
        (folder / name).write_bytes(blob)
        with pytest.raises(QsnnError) as err:
            read_target(folder)
        assert_clean_error(err.value, name)

    run()


def test_damaged_fpga_tables_with_a_matching_manifest(target_folders, work):
    """Damage the tables *and* re-hash them in the manifest: the parsers themselves must cope.

    (Only the text tables of the fpga target: libhdf5, under loihi2 and nir, can hang on some damaged
    files, which is why read_target checks the SHA-256 before any parser sees a file.)
    """
    from qsnn.jsonio import dumps
    from qsnn.targets import read_target
    from qsnn.targets.manifest import MANIFEST, file_table

    base = target_folders["fpga"]
    manifest = json.loads((base / MANIFEST).read_text())
    tables = sorted(n for n in manifest["files"] if not n.endswith(".md"))

    @fuzz(N_TARGET)
    @given(data=st.data())
    def run(data):
        name = data.draw(st.sampled_from(tables))
        how, blob = data.draw(damaged((base / name).read_bytes()))
        folder = _fresh(work, "fpga")
        shutil.copytree(base, folder)
        (folder / name).write_bytes(blob)
        (folder / MANIFEST).write_text(dumps({**manifest, "files": file_table(folder)}))
        try:
            net = read_target(folder)
        except QsnnError as exc:
            assert_clean_error(exc, str(folder))
            return
        simulate(net, np.zeros((1, 1, 14, 14), dtype=np.uint8))

    run()


# --------------------------------------------------------------------------------------------------
# IDX files


_IMAGES = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)


@st.composite
def _idx_file(draw) -> tuple[str, bytes]:
    """IDX bytes with a wrong magic, wrong dimensions or a payload of the wrong size (gzipped or not)."""
    magic = draw(
        st.one_of(st.sampled_from([0x0801, 0x0803, 0x0802, 0x0C03, 0x0D03, 0, 0x08030000]), st.integers(0, 2**32 - 1))
    )
    ndim = draw(st.integers(0, 4))
    dims = draw(st.lists(st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1)), min_size=ndim, max_size=ndim))
    payload = draw(st.integers(0, 3 * 28 * 28 + 10))
    data = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims) + _IMAGES.tobytes()[:payload]
    if draw(st.booleans()):
        data = gzip.compress(data, mtime=0)
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] if draw(st.booleans()) else data
    return f"magic {magic:#x} dims {dims} payload {payload}", data


@fuzz(N_IDX)
@given(case=_idx_file())
def test_idx_wrong_magic_or_sizes(work, case):
    how, blob = case
    target = _fresh(work, "images-idx3-ubyte")
    target.write_bytes(blob)
    try:
        array = read_idx(target)
    except QsnnError as exc:
        assert_clean_error(exc, str(target))
        assert isinstance(exc, DataError)
        return
    raw = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    magic = int.from_bytes(raw[:4], "big")
    header = 4 + 4 * {0x0801: 1, 0x0803: 3}[magic]
    assert array.dtype == np.uint8 and array.size == len(raw) - header
    assert array.tobytes() == raw[header:]


def test_bad_idx_file_through_train_cli(work):
    from qsnn.train.cli import main

    root = write_mnist_idx_dir(work / "idx-bad", n_train=60, n_test=20, seed=0, gz=False)
    labels = root / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-7])  # 7 labels short
    result = CliRunner().invoke(
        main,
        [
            "run",
            "--dataset",
            "mnist",
            "--data-dir",
            str(root),
            "--epochs",
            "1",
            "--steps",
            "2",
            "--out",
            str(work / "idx-run"),
            "--no-progress",
        ],
    )
    assert_clean_cli_error(result, str(labels), "truncated")
    assert not (work / "idx-run" / "last.pt").exists()


# --------------------------------------------------------------------------------------------------
# tonic DVSGesture recordings


@st.composite
def _bad_recording(draw) -> tuple[str, np.ndarray]:
    """A short (N, 4) recording x, y, p, t (t in µs) with one kind of damage."""
    n = draw(st.integers(2, 30))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    ev = np.stack(
        [rng.integers(0, 128, n), rng.integers(0, 128, n), rng.integers(0, 2, n), np.sort(rng.integers(0, 600_000, n))],
        axis=1,
    ).astype(np.float64)
    kind = draw(st.sampled_from(["x", "y", "p", "unsorted", "nan", "fraction"]))
    i = draw(st.integers(0, n - 1))
    if kind in ("x", "y"):
        ev[i, "xy".index(kind)] = draw(st.one_of(st.integers(128, 10**6), st.integers(-(10**6), -1)))
    elif kind == "p":
        ev[i, 2] = draw(st.sampled_from([-1, 2, 3, 255, 0.5]))
    elif kind == "unsorted":
        j = draw(st.integers(0, n - 2))
        ev[j + 1, 3] = ev[j, 3] - draw(st.integers(1, 10**6))
    elif kind == "nan":
        ev[i, draw(st.integers(0, 3))] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    else:
        ev[i, draw(st.integers(0, 1))] += 0.5
    return kind, ev


@fuzz(N_EVENTS)
@given(case=_bad_recording())
def test_recordings_with_bad_coordinates_or_timestamps(case):
    kind, events = case
    with pytest.raises(DataError) as err:
        events_to_frames(events, num_steps=10)
    assert_clean_error(err.value)


def _dvs_layout(root: Path) -> Path:
    """tonic's DVSGesture layout, small: one user folder per split with one recording per class."""
    rng = np.random.default_rng(0)
    for folder in ("ibmGestureTrain", "ibmGestureTest"):
        user = root / "DVSGesture" / folder / "user01_lab"
        user.mkdir(parents=True)
        for label in range(11):
            np.save(user / f"{label}.npy", gesture_events(label, rng, duration_ms=50, n_events=200))
    return root


@pytest.mark.parametrize("damage", ["out of range", "unsorted", "truncated file", "wrong shape"])
def test_bad_recording_through_the_loader_names_the_file(work, damage):
    root = _dvs_layout(work / f"dvs-{damage.replace(' ', '-')}")
    bad = root / "DVSGesture" / "ibmGestureTest" / "user01_lab" / "4.npy"
    ev = np.load(bad)
    if damage == "out of range":
        ev[7, 0] = 128
    elif damage == "unsorted":
        ev[[3, 150], 3] = ev[[150, 3], 3]
    if damage == "truncated file":
        bad.write_bytes(bad.read_bytes()[:40])
    elif damage == "wrong shape":
        np.save(bad, ev[:, :3])
    else:
        np.save(bad, ev)
    with pytest.raises(DataError) as err:
        load_split("dvs128", "test", root, num_steps=6)
    assert_clean_error(err.value, str(bad))


def test_bad_recording_through_train_cli(work):
    from qsnn.train.cli import main

    root = _dvs_layout(work / "dvs-cli")
    bad = root / "DVSGesture" / "ibmGestureTrain" / "user01_lab" / "2.npy"
    ev = np.load(bad)
    ev[5, 1] = -3
    np.save(bad, ev)
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
            str(work / "dvs-run"),
            "--no-progress",
        ],
    )
    assert_clean_cli_error(result, str(bad), "y coordinate -3")


# --------------------------------------------------------------------------------------------------
# Chip profiles with impossible widths


_FIELDS = [f.name for f in dataclasses.fields(ChipProfile) if f.name != "name"]
_ANY = st.one_of(
    st.integers(-5, 70),
    st.integers(-(2**80), 2**80),
    st.booleans(),
    st.none(),
    st.floats(),
    st.text(max_size=4),
    st.sampled_from(["saturate", "wrap", "mul", "shift", "loihi", "subtract", "zero"]),
)


def _decay_for(profile: ChipProfile) -> int:
    return {"mul": 1 << profile.leak_bits, "shift": 62, "loihi": 0}[profile.leak]  # no leak


@fuzz(N_PROFILE)
@given(
    base=st.sampled_from(sorted(PROFILES)),
    changes=st.dictionaries(st.sampled_from(_FIELDS), _ANY, min_size=1, max_size=4),
)
def test_profiles_with_impossible_fields(base, changes):
    try:
        profile = get_profile(base, **changes)
    except QsnnError as exc:
        assert isinstance(exc, ProfileError)
        bad = [k for k in changes if f"{k}=" in str(exc) or k in str(exc)]
        assert bad, str(exc)  # the message names a field it refuses
        return
    # a profile that constructs must be usable: the rails are sound and the engine simulates under it
    assert profile.membrane_min < 0 < profile.membrane_max
    assert 0 <= profile.frac_bits < profile.membrane_bits
    theta = min(profile.membrane_max, profile.threshold_max)
    layer = IntegerLayer(
        "fc", "dense", np.ones((1, 1), np.int8), 1, 0, np.array([theta]), np.array([0]), _decay_for(profile), np.ones(1)
    )
    net = IntegerNetwork((layer,), profile, (1, 1, 1), 4, "static", ("a",))
    res = simulate(net, np.full((1, 1, 1, 1), 255, np.uint8), record_membranes=True)
    u = res.membranes["u1"]
    assert u.min() >= -(2 ** (profile.membrane_bits - 1)) and u.max() <= profile.membrane_max


@pytest.mark.parametrize(
    "setting, fragment",
    [
        ("membrane_bits=99", "membrane_bits=99"),
        ("membrane_bits=3", "membrane_bits=3"),
        ("frac_bits=16", "frac_bits=16"),
        ("weight_bits=1", "weight_bits=1"),
        ("leak_bits=40", "leak_bits=40"),
        ("membrane_bits=62", "membrane_bits + leak_bits"),
        ("overflow=banana", "overflow='banana'"),
        ("membrane_bits=sixteen", "sixteen"),
        ("threshold_shift=99", "threshold_shift=99"),
    ],
)
def test_impossible_profile_settings_on_the_command_lines(onnx_files, checkpoint, work, setting, fragment):
    from qsnn.export.cli import main as export_main
    from qsnn.sim.cli import main as sim_main

    result = CliRunner().invoke(
        sim_main, [str(onnx_files["float"]), "--profile", "fpga", "--profile-set", setting, "--no-progress"]
    )
    assert_clean_cli_error(result, fragment)
    out = work / f"profile-{setting.split('=')[0]}.onnx"
    result = CliRunner().invoke(
        export_main,
        [str(checkpoint[0]), "--to", "qonnx", "--profile", "fpga", "--profile-set", setting, "-o", str(out)],
    )
    assert_clean_cli_error(result, fragment)
    assert not out.exists()


def test_impossible_profiles_in_the_api():
    for bad in (
        dict(membrane_bits=99),
        dict(membrane_bits="16"),
        dict(symmetric_clip=1),
        dict(leak="square"),
        dict(membrane_bits=62, leak_bits=12),
        dict(threshold_shift=10**9),
        dict(synaptic_delay=10**9),
        dict(weight_bits=16.0),
        dict(max_fan_in=-1),
    ):
        with pytest.raises(ProfileError) as err:
            FPGA.replace(**bad)
        assert next(iter(bad)) in str(err.value)
    with pytest.raises(ProfileError, match="unknown profile field"):
        get_profile("fpga", membrane_width=16)
    with pytest.raises(ProfileError, match="unknown profile"):
        get_profile("tpu")
    with pytest.raises(ProfileError):
        ChipProfile.from_dict(["not", "a", "table"])
    assert get_profile("fpga", membrane_bits=np.int64(24)).to_dict()["membrane_bits"] == 24
    assert type(get_profile("fpga", membrane_bits=np.int64(24)).membrane_bits) is int
