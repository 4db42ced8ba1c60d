"""``pip install .`` without extras: whatever needs an optional package says which extra installs it.

Each missing package is simulated (``sys.modules[name] = None`` makes its import fail as a missing one
does) and each command or reader that needs it is run: one ``error:`` line naming what was asked
for, the package and ``pip install 'qsnn[EXTRA]'``; no traceback, nothing written. The table of
extras (:data:`qsnn.optional.EXTRAS`) is held to ``pyproject.toml``, and no module of the package
imports an optional package except through :func:`qsnn.optional.require`.
"""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner
from fixtures import synthetic_checkpoint

from qsnn.optional import EXTRAS, MissingDependencyError, install_hint, require

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("qsnn", "train", "export", "sim", "targets")
#: Runs inside the Lava venv (its own interpreter and packages), never in qsnn's.
OUTSIDE = {"targets/loihi2/lava/run_netx.py"}


def _missing(monkeypatch, *names: str) -> None:
    for name in names:
        for loaded in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, loaded)
        monkeypatch.setitem(sys.modules, name, None)


def _one_line(result, *fragments: str) -> str:
    assert result.exit_code == 1 and result.exception is None or isinstance(result.exception, SystemExit), (
        f"{result.output}{result.exception!r}"
    )
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and "ModuleNotFoundError" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_the_extras_table_is_pyprojects():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    listed = {
        req.split("[")[0].split(">")[0].split("=")[0].split("<")[0].strip().lower(): extra
        for extra, reqs in extras.items()
        for req in reqs
    }
    for module, extra in EXTRAS.items():
        assert listed.get(module) == extra, f"{module}: EXTRAS says {extra!r}, pyproject.toml {listed.get(module)!r}"
    for name in ("targets", "study", "postgres", "data"):  # the extras qsnn's own code needs
        assert {m for m, e in listed.items() if e == name} <= set(EXTRAS), name


def test_no_module_imports_an_optional_package_directly():
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel in OUTSIDE:
                continue
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom) and node.level == 0
                    else []
                )
                found += [f"{rel}:{node.lineno} {n}" for n in names if n.split(".")[0] in EXTRAS]
    assert not found, f"import these through qsnn.optional.require: {found}"


def test_require_names_the_extra(monkeypatch):
    _missing(monkeypatch, "nir")
    with pytest.raises(MissingDependencyError) as err:
        require("nir", "qsnn-export --to nir")
    text = str(err.value)
    assert text == (
        "qsnn-export --to nir needs the Python package nir, which is not installed "
        "(import of nir halted; None in sys.modules): pip install 'qsnn[targets]'"
    )
    assert isinstance(err.value, ImportError) and "\n" not in text
    assert require("numpy", "anything").__name__ == "numpy"
    assert install_hint("optuna.trial") == "pip install 'qsnn[study]'"


# --------------------------------------------------------------------------------------------------
# Every command path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained but spiking checkpoint whose θ fits loihi2 (as tests/test_faults_locks.py's)."""
    return synthetic_checkpoint(tmp_path_factory.mktemp("optional") / "ckpt.pt", threshold=0.5)


@pytest.mark.parametrize(
    "target, module, preload",
    [("nir", "nir", None), ("nir", "h5py", None), ("nir", "h5py", "nir"), ("loihi2", "h5py", None)],
    ids=["nir-nir", "nir-h5py", "nir-h5py-nir-loaded", "loihi2-h5py"],
)
def test_export_to_a_target(target, module, preload, checkpoint, tmp_path, monkeypatch):
    """``preload``: a package already imported when the other one is missing (nir imports h5py lazily)."""
    from qsnn.export.cli import main

    if preload:
        __import__(preload)
    _missing(monkeypatch, module)
    out = tmp_path / "out"
    result = CliRunner().invoke(main, [str(checkpoint), "--to", target, "--allow-saturation", "-o", str(out)])
    # nir without h5py: "needs the Python package nir, which needs h5py, not installed"
    _one_line(result, f"--to {target}", "needs the Python package", module, "pip install 'qsnn[targets]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("target, module", [("nir", "nir"), ("loihi2", "h5py")])
def test_reading_a_target_folder(target, module, checkpoint, tmp_path, monkeypatch):
    from qsnn.export.cli import TABLE_PROFILES
    from qsnn.export.compile import compile_qonnx
    from qsnn.export.qonnx_float import export_float
    from qsnn.profiles import get_profile
    from qsnn.targets import read_target, write_target

    profile = get_profile(TABLE_PROFILES[target])
    net, _ = compile_qonnx(export_float(checkpoint, tmp_path / "m.onnx"), profile, allow_saturation=True)
    folder = write_target(target, net, tmp_path / target)
    _missing(monkeypatch, module)
    with pytest.raises(MissingDependencyError, match=rf"reading .*needs the Python package {module}.*qsnn\[targets\]"):
        read_target(folder)


def test_tune_and_study(tmp_path, monkeypatch):
    from qsnn.train.cli import main

    _missing(monkeypatch, "optuna")
    runner = CliRunner()
    out = tmp_path / "tune"
    result = runner.invoke(main, ["tune", "--trials", "1", "--epochs", "1", "--out", str(out)])
    _one_line(result, "qsnn-train tune", "Python package optuna", "pip install 'qsnn[study]'")
    db = tmp_path / "study.db"
    args = ["study", "--dataset", "mnist5k", "--trials", "1", "--out", str(tmp_path / "study")]
    result = runner.invoke(main, [*args, "--storage", f"sqlite:///{db}"])
    _one_line(result, "Python package optuna", "pip install 'qsnn[study]'")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_postgres_storage_without_a_driver(monkeypatch):
    from qsnn.train.storage import sqlalchemy_url

    _missing(monkeypatch, "psycopg", "psycopg2")
    with pytest.raises(Exception, match=r"psycopg, which is not installed: pip install 'qsnn\[postgres\]'"):
        sqlalchemy_url("postgresql://u:secret@host/db")
