"""The import graph of the installed ``qsnn`` package, and its cycles.

    python tools/import_graph.py [--folders] [--dot]

Reads every module of ``qsnn`` (the core ``qsnn``, ``qsnn.train``, ``qsnn.export``, ``qsnn.sim``,
``qsnn.targets`` and their subpackages, wherever the install maps them) with :mod:`ast`, without
importing any of them, and resolves each import of a qsnn module, at module level, inside a
function (marked ``*``: run only when the function is) or under ``if TYPE_CHECKING:`` (marked
``(t)``: never run; left out of the cycles, listed apart). ``from PKG import NAME`` is an edge to the
submodule ``PKG.NAME`` when there is one, else to ``PKG`` (its ``__init__``). The parent packages a
submodule import runs implicitly are not edges (as in pydeps or grimp).

Prints the graph (module → the modules it imports), then a per-folder summary (package → the
packages its modules import, with counts), and exits 1 listing every cycle: a strongly connected
component of more than one module. ``--folders`` prints only the summary; ``--dot`` prints the
module graph in Graphviz's format instead.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

#: The package and its stages (each a separate folder of the checkout, mapped by pyproject.toml).
ROOTS = ("qsnn", "qsnn.train", "qsnn.export", "qsnn.sim", "qsnn.targets")


#: Where an import statement sits, in the order one edge's kinds merge (the first wins).
KINDS = ("module", "function", "typing")
MARK = {"module": "", "function": "*", "typing": " (t)"}


@dataclass
class Graph:
    """Modules (name → file), and per module the qsnn modules it imports (name → one of :data:`KINDS`)."""

    files: dict[str, Path] = field(default_factory=dict)
    packages: set[str] = field(default_factory=set)
    imports: dict[str, dict[str, str]] = field(default_factory=dict)

    def edges(self) -> list[tuple[str, str, str]]:
        return [(a, b, kind) for a in sorted(self.imports) for b, kind in sorted(self.imports[a].items())]

    def running(self) -> Graph:
        """The graph without the imports that never run (``if TYPE_CHECKING:``)."""
        return Graph(
            self.files,
            self.packages,
            {a: {b: k for b, k in t.items() if k != "typing"} for a, t in self.imports.items()},
        )

    def folder(self, module: str) -> str:
        """The package a module lives in (a package's ``__init__`` is its own folder)."""
        return module if module in self.packages else module.rpartition(".")[0]


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)  # imports the parents only (qsnn/__init__.py)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def discover(roots: tuple[str, ...] = ROOTS) -> tuple[dict[str, Path], set[str]]:
    """Every module of the package: ``{module name: file}`` and the names of the packages."""
    names = list(roots)
    qsnn_dir = _package_dir("qsnn")
    if qsnn_dir is not None:  # packages inside qsnn/ besides the mapped stages
        names += [f"qsnn.{m.name}" for m in pkgutil.iter_modules([str(qsnn_dir)]) if m.ispkg]
    files: dict[str, Path] = {}
    packages: set[str] = set()
    for root in dict.fromkeys(names):
        folder = _package_dir(root)
        if folder is None:
            raise SystemExit(f"import_graph: package {root} is not installed (run `make install`)")
        _walk(root, folder, files, packages)
    return files, packages


def _walk(name: str, folder: Path, files: dict[str, Path], packages: set[str]) -> None:
    if not (folder / "__init__.py").is_file():
        return  # data folders (rtl/, lava/) are not packages
    packages.add(name)
    files[name] = folder / "__init__.py"
    for path in sorted(folder.iterdir()):
        if path.is_dir() and not path.name.startswith((".", "__")):
            _walk(f"{name}.{path.name}", path, files, packages)
        elif path.suffix == ".py" and path.name != "__init__.py":
            files[f"{name}.{path.stem}"] = path


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_in(nodes: list[ast.AST]) -> list[ast.AST]:
    return [n for node in nodes for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]


def _import_kinds(tree: ast.AST) -> dict[int, str]:
    """``{id(import node): kind}``: under ``if TYPE_CHECKING:``, else inside a function, else module level."""
    kinds = {id(n): "module" for n in _imports_in([tree])}
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for n in _imports_in([node]):
                if kinds[id(n)] == "module":
                    kinds[id(n)] = "function"
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for n in _imports_in(node.body):
                kinds[id(n)] = "typing"
    return kinds


def _known(name: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a qsnn module."""
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        candidate = ".".join(parts[:k])
        if candidate in modules:
            return candidate
    return None


def resolve(module: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path], packages: set[str]) -> list[str]:
    """The qsnn modules one import statement of ``module`` imports."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names if alias.name.split(".")[0] == "qsnn"]
        return [t for t in (_known(n, modules) for n in targets) if t]
    if node.level:
        base = module if module in packages else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        full = f"{base}.{node.module}" if node.module else base
    else:
        full = node.module or ""
    if full.split(".")[0] != "qsnn":
        return []
    out = []
    for alias in node.names:
        sub = f"{full}.{alias.name}"
        target = sub if sub in modules else _known(full, modules)
        if target:
            out.append(target)
    return out


def build_graph(roots: tuple[str, ...] = ROOTS) -> Graph:
    """The import graph of the installed package (no module is imported)."""
    files, packages = discover(roots)
    graph = Graph(files=files, packages=packages)
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        kinds = _import_kinds(tree)
        edges: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                kind = kinds[id(node)]
                for target in resolve(module, node, files, packages):
                    if target != module:
                        edges[target] = min(edges.get(target, kind), kind, key=KINDS.index)
        graph.imports[module] = edges
    return graph


def find_cycles(graph: Graph) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted, largest first;
    over every edge of ``graph`` (pass ``graph.running()`` to leave out ``TYPE_CHECKING`` imports)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = 0
    for start in sorted(graph.imports):
        if start in index:
            continue
        # iterative DFS: (node, iterator over its successors)
        work = [(start, iter(sorted(graph.imports[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph.imports.get(nxt, {})))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    comp.append(member)
                    if member == node:
                        break
                if len(comp) > 1:
                    components.append(sorted(comp))
    return sorted(components, key=lambda c: (-len(c), c))


def folder_summary(graph: Graph) -> dict[str, dict[str, int]]:
    """``{package: {package it imports: number of module imports}}`` (imports within a package left out)."""
    out: dict[str, dict[str, int]] = {graph.folder(m): {} for m in graph.files}
    for a, b, _ in graph.edges():
        fa, fb = graph.folder(a), graph.folder(b)
        if fa != fb:
            out[fa][fb] = out[fa].get(fb, 0) + 1
    return out


def format_graph(graph: Graph) -> str:
    n_edges = sum(len(v) for v in graph.imports.values())
    count = {k: sum(kind == k for v in graph.imports.values() for kind in v.values()) for k in KINDS}
    lines = [
        f"qsnn import graph: {len(graph.files)} modules, {n_edges} imports ({count['function']} only inside "
        f"functions, marked *; {count['typing']} only for type checking, marked (t))",
        "",
    ]
    for module in sorted(graph.imports):
        targets = graph.imports[module]
        shown = ", ".join(t + MARK[kind] for t, kind in sorted(targets.items())) or "-"
        lines.append(f"{module}\n    -> {shown}")
    return "\n".join(lines)


def format_folders(graph: Graph) -> str:
    lines = ["Per folder (package -> packages its modules import, number of module imports):", ""]
    for folder, targets in sorted(folder_summary(graph).items()):
        shown = ", ".join(f"{t} ({n})" for t, n in sorted(targets.items())) or "-"
        lines.append(f"{folder:24s} -> {shown}")
    return "\n".join(lines)


def format_dot(graph: Graph) -> str:
    lines = ["digraph qsnn {", "  rankdir=LR; node [shape=box, fontsize=10];"]
    style = {"module": "", "function": " [style=dashed]", "typing": " [style=dotted]"}
    for a, b, kind in graph.edges():
        lines.append(f'  "{a}" -> "{b}"{style[kind]};')
    lines.append("}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folders", action="store_true", help="print only the per-folder summary")
    parser.add_argument("--dot", action="store_true", help="print the module graph for Graphviz (dot -Tsvg)")
    args = parser.parse_args(argv)
    graph = build_graph()
    cycles = find_cycles(graph.running())
    typing_only = [c for c in find_cycles(graph) if c not in cycles]
    if args.dot:
        print(format_dot(graph))
    else:
        if not args.folders:
            print(format_graph(graph), end="\n\n")
        print(format_folders(graph), end="\n\n")
    for comp in typing_only:
        print("note: a cycle only through `if TYPE_CHECKING:` imports (never run): " + " <-> ".join(comp))
    if cycles:
        print(f"{len(cycles)} import cycle(s) (strongly connected components):", file=sys.stderr)
        for comp in cycles:
            print("  " + " <-> ".join(comp), file=sys.stderr)
        return 1
    if not args.dot:
        print("No import cycles.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
