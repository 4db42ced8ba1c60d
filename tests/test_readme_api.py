"""The README's Python API example runs as written and does what it says.

The ```python block under the README's "From Python" heading is executed in a folder holding
``model.onnx`` (a float export) and ``inputs.npy`` (the user's arrays), for several networks: the
paper's, a strided one, a dense-only one, a 3×32×32 colour model and an event model (untrained but
spiking), and a trained model (``float_onnx``: slow). What it leaves behind is checked: the per-layer
records have the layers' shapes, the predictions are those ``qsnn-sim --input`` prints for the same
file, and the hardware figures add up.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_sim_input import SPECS

from qsnn.data import load_split

pytest.importorskip("qsnn.export.compile")

ROOT = Path(__file__).resolve().parent.parent
HEADING = "### From Python"


def readme_snippet() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert HEADING in text, f"README.md has no {HEADING!r} section"
    block = re.search(r"```python\n(.*?)```", text[text.index(HEADING) :], re.S)
    assert block, f"no ```python block after {HEADING!r}"
    return block.group(1)


def run_snippet(onnx_path: Path, x: np.ndarray, folder: Path, monkeypatch) -> dict:
    shutil.copy(onnx_path, folder / "model.onnx")
    np.save(folder / "inputs.npy", x)
    monkeypatch.chdir(folder)
    namespace: dict = {"__name__": "readme"}
    exec(compile(readme_snippet(), "README.md", "exec"), namespace)  # noqa: S102 - the documented example
    return namespace


def check_namespace(ns: dict, folder: Path) -> None:
    from qsnn.sim.cli import main

    net, result, hw = ns["net"], ns["result"], ns["hw"]
    n = len(ns["x"])
    for i, shape in enumerate(net.shapes()):
        assert result.spikes[f"z{i + 1}"].shape == result.membranes[f"u{i + 1}"].shape == (net.num_steps, n, *shape)
    assert ns["z1"] is result.spikes["z1"] and ns["u1"] is result.membranes["u1"]
    assert np.array_equal(result.counts, result.spikes[f"z{len(net.layers)}"].sum(axis=0))
    assert hw["total"]["synops_per_inference"] == pytest.approx(sum(la["synops_per_inference"] for la in hw["layers"]))
    assert [la["name"] for la in hw["layers"]] == [layer.name for layer in net.layers]
    # the command line on the same file predicts the same
    cli = CliRunner().invoke(
        main, ["model.onnx", "--input", "inputs.npy", "--report", "r.json", "--no-float", "--no-progress"]
    )
    assert cli.exit_code == 0, cli.output
    assert json.loads((folder / "r.json").read_text())["predictions"] == result.predictions.tolist()


def _inputs(kind: str) -> np.ndarray:
    digits = load_split("mnist5k", "test", num_steps=8).x[:16]
    if kind == "rgb":
        return np.repeat(np.pad(digits, ((0, 0), (0, 0), (2, 2), (2, 2))), 3, axis=1)
    if kind == "events":
        return (np.random.default_rng(5).random((16, 8, 2, 16, 16)) < 0.5).astype(np.uint8)
    return digits


@pytest.mark.parametrize("name", list(SPECS))
def test_readme_api_example(name, synthetic_export, tmp_path, monkeypatch):
    overrides, kind = SPECS[name]
    _, onnx_path = synthetic_export(**overrides)
    ns = run_snippet(onnx_path, _inputs(kind), tmp_path, monkeypatch)
    check_namespace(ns, tmp_path)


def test_readme_api_example_on_a_trained_model(float_onnx, tmp_path, monkeypatch):
    ns = run_snippet(float_onnx, _inputs("digits"), tmp_path, monkeypatch)
    check_namespace(ns, tmp_path)
    labels = load_split("mnist5k", "test", num_steps=8).y[:16]
    assert np.mean(ns["result"].predictions == labels) > 0.5  # a trained model: the digits mostly right
