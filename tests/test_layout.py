"""The package's layout: no import cycles between qsnn's modules (tools/import_graph.py)."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))

from import_graph import Graph, build_graph, find_cycles, folder_summary  # noqa: E402
from import_graph import _import_kinds as import_kinds  # noqa: E402


def test_no_import_cycles():
    graph = build_graph()
    assert find_cycles(graph.running()) == [], "import cycles: run python tools/import_graph.py"


def test_the_graph_reads_every_stage_and_imports_inside_functions():
    graph = build_graph()
    folders = {graph.folder(m) for m in graph.files}
    assert {
        "qsnn",
        "qsnn.train",
        "qsnn.export",
        "qsnn.sim",
        "qsnn.targets",
        "qsnn.targets.fpga",
        "qsnn.targets.loihi2",
        "qsnn.targets.nir",
    } <= folders
    # `from ..registry import ...` inside a function: resolved, and marked as such
    assert graph.imports["qsnn.targets.loihi2.lava_check"]["qsnn.targets.registry"] == "function"
    # `from . import core, hdl_sim` names submodules; `from .synth import FAMILIES` the module
    assert {"qsnn.targets.fpga.core", "qsnn.targets.fpga.hdl_sim", "qsnn.targets.fpga.synth"} <= set(
        graph.imports["qsnn.targets.fpga.cli"]
    )
    # the core depends on no stage
    assert set(folder_summary(graph)["qsnn"]) == set()


def test_import_kinds():
    tree = ast.parse(
        "import a\nif TYPE_CHECKING:\n    import b\nelse:\n    import c\n"
        "def f():\n    import d\n    if typing.TYPE_CHECKING:\n        import e\n"
    )
    names = {n.names[0].name: n for n in ast.walk(tree) if isinstance(n, ast.Import)}
    kinds = import_kinds(tree)
    assert {k: kinds[id(n)] for k, n in names.items()} == {
        "a": "module",
        "b": "typing",
        "c": "module",
        "d": "function",
        "e": "typing",
    }


def test_find_cycles_reports_each_strongly_connected_component():
    graph = Graph(
        imports={
            "a": {"b": "module"},
            "b": {"c": "function"},
            "c": {"a": "module"},
            "d": {"a": "module"},
            "e": {"f": "module"},
            "f": {"e": "typing"},
            "g": {},
        }
    )
    assert find_cycles(graph) == [["a", "b", "c"], ["e", "f"]]
    assert find_cycles(graph.running()) == [["a", "b", "c"]]
