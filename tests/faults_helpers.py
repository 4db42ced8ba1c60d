"""Shared pieces of the fault suites (``tests/test_faults_*.py``): damaging bytes, clean-error checks."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from qsnn.errors import QsnnError

#: Every fuzz test: no per-example deadline (2 shared cores), a fixed budget of examples.
FUZZ = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def fuzz(max_examples: int):
    """``@fuzz(n)``: hypothesis settings of the fault suites with ``n`` examples."""
    return settings(max_examples=max_examples, **FUZZ)


class Damage(tuple):
    """``(description, bytes)`` whose repr is the description (hypothesis prints it on failure)."""

    def __repr__(self) -> str:
        return f"<{self[0]}>"


@st.composite
def damaged(draw, raw: bytes, regions: dict[str, tuple[int, int]] | None = None) -> Damage:
    """``(description, bytes)``: ``raw`` truncated, or with 1-8 bits flipped (anywhere or in one region)."""
    if draw(st.booleans()):
        n = draw(st.integers(0, len(raw) - 1))
        return Damage((f"truncated to {n} of {len(raw)} bytes", raw[:n]))
    spans = {"anywhere": (0, len(raw)), **(regions or {})}
    name = draw(st.sampled_from(sorted(spans)))
    lo, hi = spans[name]
    flips = draw(st.lists(st.tuples(st.integers(lo, hi - 1), st.integers(0, 7)), min_size=1, max_size=8))
    out = bytearray(raw)
    for pos, bit in flips:
        out[pos] ^= 1 << bit
    return Damage((f"bits flipped ({name}): {flips}", bytes(out)))


def zip_regions(raw: bytes) -> dict[str, tuple[int, int]]:
    """Byte spans of the members of a zip file (a torch checkpoint) and of its central directory."""
    regions = {}
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        infos = z.infolist()
    for info in infos:
        h = info.header_offset  # the local header's own name and extra lengths (torch pads the extra field)
        start = h + 30 + int.from_bytes(raw[h + 26 : h + 28], "little") + int.from_bytes(raw[h + 28 : h + 30], "little")
        if info.compress_size:
            regions[info.filename.split("/", 1)[-1]] = (start, min(len(raw), start + info.compress_size))
    end = max(info.header_offset for info in infos)
    regions["tail: last member + central directory"] = (end, len(raw))
    return regions


def assert_clean_error(exc: BaseException, *fragments: str) -> None:
    """An API error: a QsnnError whose message holds every fragment (e.g. the file name)."""
    assert isinstance(exc, QsnnError), f"{type(exc).__name__}: {exc}"
    for fragment in fragments:
        assert fragment in str(exc), (fragment, str(exc))


def assert_clean_cli_error(result, *fragments: str) -> str:
    """A click CliRunner result: exit 1 through friendly_errors, one ``error:`` line, no traceback."""
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), (result.output, repr(result.exception))
    assert "Traceback" not in result.output
    lines = [ln for ln in result.output.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, result.output
    for fragment in fragments:
        assert fragment in result.output, (fragment, result.output)
    return lines[0]


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: a file's SHA-256, a link's target, ``dir`` for a folder."""
    out = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                out[rel] = "link -> " + os.readlink(path)
            elif path.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out
