"""The README and docs/ point at things that exist: every relative link, every repository path in backticks.

Two simple rules, over README.md and docs/**/*.md:

* a markdown link ``[text](target)`` whose target is relative (not ``http…``, ``mailto:`` or a bare
  ``#anchor``) names an existing file or folder, relative to the page; with ``#anchor`` on a ``.md``
  page, that page has a heading of that anchor (GitHub's slug: lower case, punctuation dropped,
  spaces to ``-``);
* a backticked token that starts with a top folder of the repository (``qsnn/``, ``export/``, …) and
  ends in ``.py``, ``.md``, ``.v``, ``.toml`` or ``/`` names an existing file or folder, relative to
  the repository root. Tokens with placeholders or wildcards (``<…>``, ``*``, ``…``) are not paths.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
TOP_FOLDERS = ("qsnn/", "train/", "export/", "sim/", "targets/", "tests/", "docs/", "bench/", "tools/")
PATH_ENDINGS = (".py", ".md", ".v", ".toml", "/")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {_slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def _links(page: Path) -> list[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return [t for t in LINK.findall(text) if not re.match(r"[a-z][a-z0-9+.-]*:|#", t)]


def _repo_paths(page: Path) -> list[str]:
    tokens = CODE.findall(page.read_text(encoding="utf-8"))
    return sorted(
        {
            t
            for t in tokens
            if t.startswith(TOP_FOLDERS) and t.endswith(PATH_ENDINGS) and not re.search(r"[<>*…{}$ ]", t)
        }
    )


def test_there_are_pages_to_check():
    assert (ROOT / "README.md").is_file() and len(PAGES) > 5


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_relative_links_resolve(page):
    dead = []
    for target in _links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve()
        if not dest.exists():
            dead.append(f"{target} (no {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest})")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            dead.append(f"{target} (no heading #{anchor} in {dest.relative_to(ROOT)})")
    assert not dead, f"{_rel(page)}: dead links: {dead}"


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_backticked_repository_paths_exist(page):
    missing = [p for p in _repo_paths(page) if not (ROOT / p).exists()]
    assert not missing, f"{_rel(page)}: paths that are not in the repository: {missing}"


def test_the_rules_see_links_anchors_and_paths(tmp_path):
    """The checker itself: a dead link, a dead anchor and a missing path are found; real ones are not."""
    assert _slug("Training for the chip") == "training-for-the-chip"
    assert _slug("Export: QONNX with explicit `LIF` state") == "export-qonnx-with-explicit-lif-state"
    page = ROOT / "docs" / "architecture.md"
    assert "adding-a-chip" in _anchors(page)
    assert "engine.md" in _links(page)
    assert "qsnn/profiles.py" in _repo_paths(page)
    assert not any(p.startswith(("http", "#")) for p in _links(ROOT / "README.md"))
