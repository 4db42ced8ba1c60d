"""Shared fixtures: small models really trained once per test session.

``trained_run(**overrides)`` trains a QSNN on mnist5k (or the DVS fixture for ``dataset="dvs128"``)
with CPU-sized settings and returns its run directory (``best.pt``, ``metrics.json``, ...). Runs
are cached per set of overrides for the whole session, so every test file can ask for the same
model without training it again.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
from fixtures import DVS_FIXTURE_NEURON, synthetic_checkpoint, write_dvsgesture_fixture

# Two cores shared by everything: keep torch from oversubscribing them.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

#: Fixtures that train a model: every test that uses one (directly or through another fixture) is
#: ``slow``, so ``make test-fast`` (``-m "not slow"``) leaves it out; ``make test`` runs everything.
TRAINING_FIXTURES = ("trained_run", "float_onnx", "demo_run")


#: The HDL tools of the fpga target (``make install`` installs them as root); ``@pytest.mark.hdl(...)``
#: names the ones a test needs, all of them when it names none.
HDL_TOOLS = ("verilator", "g++", "iverilog", "vvp", "yosys")


def _missing_hdl(*tools: str) -> str | None:
    missing = [t for t in (tools or HDL_TOOLS) if shutil.which(t) is None]
    if not missing:
        return None
    return f"HDL tools missing: {' '.join(missing)} (`make install` as root installs them with apt-get)"


def _missing_lava() -> str | None:
    from qsnn.targets.loihi2 import lava_env

    if lava_env.is_built():
        return None
    return (
        f"no Lava venv at {lava_env.venv_dir()} (Python 3.10, lava-nc 0.10, lava-dl 0.6): build it with "
        "`make lava` (about 7 minutes, 5.6 GB), or run `make test-lava`"
    )


def _missing_postgres() -> str | None:
    from postgres import find_bin

    if find_bin() is not None:
        return None
    return (
        "PostgreSQL's initdb/postgres not found (QSNN_PG_BIN, /usr/lib/postgresql/*/bin, PATH): "
        "`make install` as root installs Debian's postgresql"
    )


def _missing_nir_venv(name: str) -> str | None:
    tools = str(Path(__file__).resolve().parent.parent / "tools" / "nir_consumers")  # check.py, as the test imports it
    if tools not in sys.path:
        sys.path.insert(0, tools)
    import check as nir_check

    if nir_check.python_for(name) is not None:
        return None
    return f"{name}'s venv is not built ({nir_check.venv_path(name)}); `make nir-venvs` builds it"


#: marker → the reason its tool is missing (None: present). The markers are registered in pyproject.toml.
TOOL_MARKERS = {
    "hdl": _missing_hdl,
    "lava": _missing_lava,
    "postgres": _missing_postgres,
    "nir_venv": _missing_nir_venv,
}


def pytest_collection_modifyitems(config, items):
    slow = pytest.mark.slow
    missing: dict[tuple, str | None] = {}  # one probe per marker and arguments
    for item in items:
        if any(name in getattr(item, "fixturenames", ()) for name in TRAINING_FIXTURES):
            item.add_marker(slow)
        for name, probe in TOOL_MARKERS.items():
            for mark in item.iter_markers(name):
                key = (name, *mark.args)
                if key not in missing:
                    missing[key] = probe(*mark.args)
                if missing[key]:
                    item.add_marker(pytest.mark.skip(reason=missing[key]))


TINY = dict(num_steps=8, epochs=2, subset=800, val_subset=100, batch_size=64, patience=5, cosine_period_epochs=2.0)


@pytest.fixture
def one_torch_thread():
    """One intra-op thread for tiny models: on 2 shared cores a second thread only waits."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def dvs_data_dir(tmp_path_factory) -> Path:
    """A DVS128 Gesture folder in tonic's layout (generated recordings, 110 per split)."""
    root = tmp_path_factory.mktemp("dvsdata")
    write_dvsgesture_fixture(root, seed=0)
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, dvs_data_dir):
    """Factory: ``trained_run(quant_scale="po2", ...)`` → run directory of a trained tiny model."""
    from qsnn.config import TrainConfig
    from qsnn.train.loop import train

    cache: dict[tuple, Path] = {}

    def make(dataset: str = "mnist5k", precision: str = "int4", **overrides) -> Path:
        key = (dataset, precision, tuple(sorted(overrides.items())))
        if key not in cache:
            settings = {**TINY, **overrides}
            data_dir = None
            if dataset == "dvs128":
                # DVS_FIXTURE_NEURON: Table I's DVS128 int4 row (no BatchNorm, θ 0.4) stays at chance on the
                # fixture's sparse recordings in 2 epochs at T = 8 (it learns in 8: tests/test_lava.py).
                settings = {
                    **DVS_FIXTURE_NEURON,
                    **settings,
                    "subset": None,
                    "val_subset": None,
                    "num_steps": settings.get("num_steps", 8),
                    "batch_size": 16,
                }
                data_dir = dvs_data_dir
            cfg = TrainConfig.from_preset(dataset, precision, **settings)
            run_dir = tmp_path_factory.mktemp(f"run-{dataset}-{precision}")
            train(cfg, run_dir, data_dir=data_dir, progress=False, log=lambda _msg: None)
            cache[key] = run_dir
        return cache[key]

    return make


@pytest.fixture(scope="session")
def float_onnx(trained_run, tmp_path_factory) -> Path:
    """The float QONNX export of ``trained_run()``'s best.pt (exported once per session)."""
    from qsnn.export.qonnx_float import export_float

    return export_float(trained_run() / "best.pt", tmp_path_factory.mktemp("float-onnx") / "model.onnx")


@pytest.fixture(scope="session")
def synthetic_export(tmp_path_factory):
    """Factory: ``synthetic_export(**overrides)`` → (checkpoint, float QONNX export) of an untrained but
    spiking checkpoint (:func:`fixtures.synthetic_checkpoint`) of that configuration, made once per session."""
    from qsnn.export.qonnx_float import export_float

    cache: dict[tuple, tuple[Path, Path]] = {}

    def make(**overrides):
        key = tuple(sorted(overrides.items()))
        if key not in cache:
            folder = tmp_path_factory.mktemp("synthetic")
            ckpt = synthetic_checkpoint(folder / "best.pt", **overrides)
            cache[key] = (ckpt, export_float(ckpt, folder / "model.onnx"))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def synthetic_onnx(tmp_path_factory) -> Path:
    """The float QONNX export of an untrained but spiking int4 mnist5k checkpoint (no training: seconds)."""
    from qsnn.export.qonnx_float import export_float

    folder = tmp_path_factory.mktemp("synthetic-onnx")
    return export_float(synthetic_checkpoint(folder / "best.pt"), folder / "model.onnx")


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Path:
    """The ``make demo`` model (``qsnn.config.DEMO``: mnist5k int4, T = 25), trained once per session.

    For tests whose claim is about the model people get from ``make demo`` (hardware and Lava
    agreement on real test images); about 1.5 minutes on 2 CPU cores.
    """
    from qsnn.config import DEMO, TrainConfig
    from qsnn.train.loop import train

    settings = dict(DEMO)
    cfg = TrainConfig.from_preset(settings.pop("dataset"), settings.pop("precision"), **settings)
    run_dir = tmp_path_factory.mktemp("run-demo")
    train(cfg, run_dir, progress=False, log=lambda _msg: None)
    return run_dir


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for this test session (tests/postgres.py): started here, stopped after.

    Tests create their own database with ``postgres.create_database(name)`` (a ``postgresql://`` URL).
    """
    from postgres import _port_open, postgres_server

    with postgres_server() as server:
        yield server
    assert server.proc.returncode is not None and not _port_open(server.port), "PostgreSQL server still running"
    assert not server.root.exists()
