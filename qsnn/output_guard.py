"""One rule for every path a command writes: nothing a user has is lost to an output.

Every command declares, in one call before any work starts, what it reads and what it writes::

    check_outputs({"-o": (out, QONNX)}, inputs={"CHECKPOINT": source}, force=force)

and :func:`check_outputs` raises :class:`OutputError` (one line: the path, what is wrong, what to
do) for an output that

1. **collides**: it is one of the inputs, or a folder holding an input, or the path of another
   output of the same command, or lies inside another output that is replaced as a whole. Paths
   are compared after resolving symlinks and ``..`` (and by inode, so hard links count);
2. **has the wrong type**: a folder where a file goes, a file where a folder goes, or a file in
   the way of a folder the output needs;
3. **exists** without ``--force``; with ``--force`` it is replaced only when it is an earlier
   output *of the same kind written by qsnn*, recognised by its format marker (:class:`Kind`): a
   QONNX file by its ``format`` metadata, a table folder by its ``manifest.json``, a simulation
   report by its ``format`` key, a plot by its PNG text chunk. Never an input, a run directory,
   another kind of qsnn file, or a file or folder qsnn did not write;
4. **cannot be written**: a probe file cannot be created in the nearest existing folder (a
   read-only file system, missing permissions), found now rather than after the work.

Folders a command writes *into* rather than replaces (a run directory, a study or tune folder;
``Kind.update``) may exist when they are empty or hold an earlier output of the same kind; what
happens then (resume, skip, start over) is the command's own rule.

Every kind of output is declared here (:data:`KINDS`), so any command, whatever stage it belongs
to, recognises every other command's files without importing that stage. A new command adds its
kinds here and makes the one call; :func:`os_error_message` turns an ``OSError`` met later (a full
disk while writing) into the same one-line form.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Union

from qsnn.errors import QsnnError
from qsnn.locks import hold_in_scope, is_lock_file_name, lock_holder

#: Format markers of the files qsnn writes (the one place each is spelled).
CHECKPOINT_FORMAT = "qsnn-checkpoint"  # train/checkpoint.py: the "format" entry of a .pt
QONNX_FORMAT = "qsnn-qonnx"  # export/format.py: the "format" metadata of a QONNX file
TARGET_FORMAT = "qsnn-target"  # targets/manifest.py: the "format" of manifest.json
SIM_REPORT_FORMAT = "qsnn-sim-report"  # sim/cli.py: the "format" key of a --report JSON
RUN_METRICS_FORMAT = "qsnn-run-metrics"  # train/loop.py: the "format" key of metrics.json
PLOT_KEY = "qsnn-format"  # PNG text chunk keyword of a qsnn plot ...
SIM_PLOT_FORMAT = "qsnn-sim-plot"  # ... and its value for qsnn-sim --plot
SIM_RECORD_FORMAT = "qsnn-sim-record"  # sim/user_input.py: the "format" array of a --record .npz
RTL_REPORT_FORMAT = "qsnn-rtl-sim-report"  # targets/fpga/cli.py: the "format" key of a --report JSON
RTL_RESOURCES_FORMAT = "qsnn-rtl-resources"  # targets/fpga/cli.py: FOLDER/resources.json
RESOURCES_FILE = "resources.json"  # ... its name inside a table folder
LAVA_REPORT_FORMAT = "qsnn-lava-check-report"  # targets/loihi2/lava_check.py: the "format" key of --report
PNR_FORMAT = "qsnn-fpga-pnr"  # targets/fpga/pnr.py: the "format" key of OUT/pnr.json and --report
PNR_REPORT_FILE = "pnr.json"  # ... its name inside qsnn-fpga-pnr's output folder

#: Bytes read from a file to look for its marker (markers sit in the first kilobytes of each format,
#: except ONNX metadata, which comes after the graph: QONNX files are read whole up to this size).
_SCAN_BYTES = 64 << 20


class OutputError(QsnnError):
    """An output path that would destroy or mix up a user's files, or cannot be written."""


@dataclass(frozen=True)
class Kind:
    """A kind of output: its name in messages, whether it is a folder, and how to recognise one.

    ``recognise(path)`` is true when the existing ``path`` is an earlier output of this kind written
    by qsnn (never raises). ``update``: a folder the command writes into (a run directory), not a
    file or folder replaced as a whole. ``shared``: several processes write into it at once by design
    (a study or tune folder, an Optuna database), so it is not locked (what they write inside is).
    ``foreign(path)``: the entries of an existing folder of this kind that qsnn did not write there
    (``--force`` refuses to replace a folder that has any).
    """

    name: str
    recognise: Callable[[Path], bool] = field(repr=False)
    folder: bool = False
    update: bool = False
    shared: bool = False
    foreign: Callable[[Path], list[str]] | None = field(default=None, repr=False)

    @property
    def what(self) -> str:
        return ("an " if self.name[0] in "aeiouAEIOU" else "a ") + self.name


# --------------------------------------------------------------------------------------------------
# Recognisers (cheap, never raise: a damaged or unreadable file is simply not recognised)


def _read_head(path: Path, size: int) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


def _onnx_format(marker: str) -> Callable[[Path], bool]:
    """An ONNX file whose metadata holds ``format = marker`` (the entry as protobuf serialises it)."""
    token = b"\x0a\x06format\x12" + bytes([len(marker)]) + marker.encode()
    return lambda path: path.is_file() and token in _read_head(path, _SCAN_BYTES)


def _json_format(marker: str, legacy_keys: frozenset[str] = frozenset()) -> Callable[[Path], bool]:
    """A JSON object whose ``format`` is ``marker`` (or, written before the marker, holding ``legacy_keys``)."""

    def recognise(path: Path) -> bool:
        if not path.is_file():
            return False
        try:
            data = json.loads(_read_head(path, _SCAN_BYTES).decode("utf-8"))
        except (ValueError, UnicodeDecodeError):
            return False
        if not isinstance(data, dict):
            return False
        return data.get("format") == marker or bool(legacy_keys and "format" not in data and legacy_keys <= set(data))

    return recognise


def _png_text(key: str, value: str) -> Callable[[Path], bool]:
    """A PNG file with the text chunk ``key`` = ``value`` (matplotlib's ``savefig(metadata=...)``)."""
    chunk = key.encode("latin-1") + b"\x00" + value.encode("latin-1")

    def recognise(path: Path) -> bool:
        head = _read_head(path, 1 << 16) if path.is_file() else b""
        return head.startswith(b"\x89PNG\r\n\x1a\n") and chunk in head

    return recognise


def _npz_format(marker: str) -> Callable[[Path], bool]:
    """A NumPy .npz archive whose array ``format`` is the string ``marker``."""

    def recognise(path: Path) -> bool:
        import zipfile

        import numpy as np

        try:
            with zipfile.ZipFile(path) as zf, zf.open("format.npy") as fh:
                return str(np.lib.format.read_array(fh, allow_pickle=False)) == marker
        except Exception:  # noqa: BLE001 - anything unreadable is simply not one
            return False

    return recognise


def is_checkpoint(path: Path) -> bool:
    """A qsnn checkpoint (.pt): a zip whose pickle names the checkpoint format."""
    head = _read_head(path, 1 << 20) if path.is_file() else b""
    return head.startswith(b"PK\x03\x04") and CHECKPOINT_FORMAT.encode() in head


_is_metrics = _json_format(
    RUN_METRICS_FORMAT, frozenset({"dataset", "precision", "schedule", "best_epoch", "test_acc"})
)


#: The files a ``qsnn-train run`` directory holds (all written atomically; train/loop.py writes them).
RUN_FILES = ("last.pt", "best.pt", "log.csv", "log.json", "iters.csv", "metrics.json", "training.png")


def _is_temporary_of(entry: Path, names: Iterable[str]) -> bool:
    """``entry`` is a temporary that qsnn.atomic.atomic_open left for one of ``names`` (``.NAME.XXXX.tmp``)."""
    return entry.is_file() and entry.name.endswith(".tmp") and any(entry.name.startswith(f".{n}.") for n in names)


def is_run_directory(path: Path) -> bool:
    """A ``qsnn-train run`` directory: it holds a qsnn ``last.pt``/``best.pt`` or a run's ``metrics.json``,
    or it is a run killed while writing its first checkpoint: nothing in it but a run's files and the
    temporaries of qsnn's atomic writes, one of them a checkpoint's."""
    if not path.is_dir():
        return False
    if is_checkpoint(path / "last.pt") or is_checkpoint(path / "best.pt") or _is_metrics(path / "metrics.json"):
        return True
    try:
        entries = list(path.iterdir())
    except OSError:
        return False
    return any(_is_temporary_of(e, ("last.pt", "best.pt")) for e in entries) and all(
        e.name in RUN_FILES and e.is_file() or _is_temporary_of(e, RUN_FILES) for e in entries
    )


def _subfolders(path: Path) -> list[Path]:
    try:
        return [p for p in path.iterdir() if p.is_dir()]
    except OSError:
        return []


def is_study_folder(path: Path) -> bool:
    """A ``qsnn-train study`` folder: its report (table2.md) or run directories one level down."""
    return path.is_dir() and ((path / "table2.md").is_file() or any(is_run_directory(p) for p in _subfolders(path)))


def is_tune_folder(path: Path) -> bool:
    """A ``qsnn-train tune`` folder: best_params.toml, its SQLite storage or its trials/ folder."""
    return path.is_dir() and (
        (path / "best_params.toml").is_file() or is_sqlite(path / "tune.db") or (path / "trials").is_dir()
    )


def is_sqlite(path: Path) -> bool:
    return _read_head(path, 16) == b"SQLite format 3\x00" if path.is_file() else False


def _is_target(name: str) -> Callable[[Path], bool]:
    manifest = _json_format(TARGET_FORMAT)

    def recognise(path: Path) -> bool:
        if not (path.is_dir() and manifest(path / "manifest.json")):
            return False
        with contextlib.suppress(OSError, ValueError):
            return json.loads((path / "manifest.json").read_text()).get("target") == name
        return False

    return recognise


_QSNN_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp|\.qsnn-probe-[a-z0-9_]{8}")


def target_foreign_entries(folder: Path) -> list[str]:
    """What a table folder holds besides qsnn's own files (relative names, sorted).

    qsnn's own: ``manifest.json``, ``README.md``, every file the manifest lists (and the folders
    holding them), ``resources.json`` of ``qsnn-rtl-sim``, the temporaries of qsnn's atomic writes of
    those files and stale lock files. Anything else is the user's (notes, a vendor project folder, a
    symbolic link), and so is a lock file a live process holds (named with its holder).
    """
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        manifest = {}
    files = manifest.get("files") if isinstance(manifest, dict) else None
    listed = {"manifest.json", "README.md"} | {str(n) for n in (files if isinstance(files, dict) else {})}
    listed_dirs = {p.as_posix() for n in listed for p in Path(n).parents if p.as_posix() != "."}
    foreign: list[str] = []
    for root, dirs, names in os.walk(folder):
        here = Path(root).relative_to(folder)
        for name in sorted(dirs):
            rel = (here / name).as_posix()
            if rel not in listed_dirs or (Path(root) / name).is_symlink():
                foreign.append(rel + "/")
                dirs.remove(name)
        for name in sorted(names):
            rel = (here / name).as_posix()
            path = Path(root) / name
            if path.is_symlink():
                foreign.append(rel)
            elif rel in listed or (rel == RESOURCES_FILE and RTL_RESOURCES.recognise(path)):
                continue
            elif is_lock_file_name(name):
                holder = lock_holder(path)
                if holder:
                    foreign.append(f"{rel} (held by {holder})")
            elif not (
                (m := _QSNN_TEMPORARY.fullmatch(name))
                and (m.group("name") is None or (here / m.group("name")).as_posix() in listed | {RESOURCES_FILE})
            ):
                foreign.append(rel)
    return foreign


# --------------------------------------------------------------------------------------------------
# The kinds of output of every command

QONNX = Kind("qsnn QONNX file", _onnx_format(QONNX_FORMAT))
SIM_REPORT = Kind(
    "qsnn-sim JSON report",
    _json_format(SIM_REPORT_FORMAT, frozenset({"model", "model_kind", "profile", "accuracy", "hardware"})),
)
SIM_PLOT = Kind("qsnn-sim plot (PNG)", _png_text(PLOT_KEY, SIM_PLOT_FORMAT))
SIM_RECORD = Kind("qsnn-sim record (.npz)", _npz_format(SIM_RECORD_FORMAT))
RTL_REPORT = Kind(
    "qsnn-rtl-sim JSON report", _json_format(RTL_REPORT_FORMAT, frozenset({"folder", "core", "core_memory_bits"}))
)
LAVA_REPORT = Kind("make lava-check JSON report", _json_format(LAVA_REPORT_FORMAT))
RTL_RESOURCES = Kind("qsnn-rtl-sim resources file", _json_format(RTL_RESOURCES_FORMAT), update=True)
PNR_REPORT = Kind("qsnn-fpga-pnr JSON report", _json_format(PNR_FORMAT))
PNR_DIR = Kind(
    "qsnn-fpga-pnr output folder", lambda p: p.is_dir() and _json_format(PNR_FORMAT)(p / PNR_REPORT_FILE), folder=True
)
RUN_DIR = Kind("qsnn-train run directory", is_run_directory, folder=True, update=True)
STUDY_DIR = Kind("qsnn-train study folder", is_study_folder, folder=True, update=True, shared=True)
TUNE_DIR = Kind("qsnn-train tune folder", is_tune_folder, folder=True, update=True, shared=True)
SQLITE = Kind("SQLite database (Optuna storage)", is_sqlite, update=True, shared=True)
CHECKPOINT = Kind("qsnn checkpoint", is_checkpoint)
#: Table folders by target name (qsnn-export --to NAME); :func:`target_folder` adds new targets.
TARGET_FOLDERS: dict[str, Kind] = {}


def target_folder(name: str) -> Kind:
    """The kind of ``qsnn-export --to NAME``'s folder (recognised by its manifest's format and target)."""
    if name not in TARGET_FOLDERS:
        TARGET_FOLDERS[name] = Kind(
            f"qsnn {name} tables folder", _is_target(name), folder=True, foreign=target_foreign_entries
        )
    return TARGET_FOLDERS[name]


for _name in ("fpga", "loihi2", "nir"):
    target_folder(_name)


def kinds() -> list[Kind]:
    """Every kind, most specific first (how :func:`describe` names an existing path)."""
    return [
        RUN_DIR,
        STUDY_DIR,
        TUNE_DIR,
        *TARGET_FOLDERS.values(),
        CHECKPOINT,
        QONNX,
        SIM_REPORT,
        SIM_PLOT,
        SIM_RECORD,
        RTL_REPORT,
        RTL_RESOURCES,
        LAVA_REPORT,
        PNR_DIR,
        PNR_REPORT,
        SQLITE,
    ]


def describe(path: Path) -> str:
    """What an existing path is, for a message: "a qsnn-train run directory", "a folder not written by qsnn", ..."""
    for kind in kinds():
        if kind.recognise(path):
            return kind.what
    if path.is_dir():
        return "an empty folder" if not any(path.iterdir()) else "a folder not written by qsnn"
    return "a file not written by qsnn"


# --------------------------------------------------------------------------------------------------
# The check

PathLike = Union[str, os.PathLike]
Outputs = Mapping[str, "tuple[PathLike | None, Kind]"]
Inputs = Mapping[str, "PathLike | Iterable[PathLike] | None"]


@dataclass(frozen=True)
class _Path:
    label: str  # the option or argument, e.g. "--report"
    given: Path  # as the user wrote it
    real: Path  # absolute, symlinks resolved

    def same(self, other: "_Path") -> bool:
        if self.real == other.real:
            return True
        with contextlib.suppress(OSError):
            return self.given.exists() and other.given.exists() and os.path.samefile(self.given, other.given)
        return False

    def inside(self, other: "_Path") -> bool:
        """``self`` lies strictly inside the folder ``other``."""
        return other.real in self.real.parents


def _entry(label: str, path: PathLike) -> _Path:
    given = Path(os.fspath(path))
    return _Path(label, given, Path(os.path.realpath(given)))


def check_outputs(outputs: Outputs, *, inputs: Inputs | None = None, force: bool = False) -> list[Path]:
    """Refuse, before any work, every output of a command that would destroy or clash with a file.

    Args:
        outputs: ``{label: (path, kind)}`` — each output the command will write, ``label`` being the
            option or argument that named it (``"-o"``, ``"--report"``, ``"--out"``). ``None`` paths
            (an output not asked for) are skipped.
        inputs: ``{label: path or paths}`` — everything the command reads (files or folders).
        force: the command's ``--force``.

    Returns the output paths (as given), in order. Raises :class:`OutputError` naming the path, the
    problem and what to do (see the module docstring for the rule).
    """
    ins = [
        _entry(label, p)
        for label, value in (inputs or {}).items()
        if value is not None
        for p in ([value] if isinstance(value, (str, os.PathLike)) else value)
        if p is not None
    ]
    outs = [(_entry(label, path), kind) for label, (path, kind) in outputs.items() if path is not None]
    for i, (out, kind) in enumerate(outs):
        for inp in ins:
            if out.same(inp):
                raise OutputError(
                    f"{out.given}: {out.label} is also the input {inp.label} ({inp.given}); "
                    f"writing it would destroy what the command reads: choose another path for {out.label}"
                )
            if inp.inside(out) and not kind.update:
                raise OutputError(
                    f"{out.given}: {out.label} would replace a folder holding the input {inp.label} "
                    f"({inp.given}): choose a path for {out.label} outside it"
                )
        for other, other_kind in outs[:i]:
            if out.same(other):
                raise OutputError(
                    f"{out.given}: {other.label} and {out.label} are the same path; give each output its own path"
                )
            for a, b, b_kind in ((out, other, other_kind), (other, out, kind)):
                if a.inside(b) and not b_kind.update:
                    raise OutputError(
                        f"{a.given}: {a.label} lies inside {b.label} ({b.given}), which is replaced "
                        f"as a whole: give {a.label} a path outside it"
                    )
    for out, kind in outs:
        if kind.shared:
            continue
        try:  # held from here to the command's end (inside a command's lock scope: qsnn.cli.friendly_errors)
            hold_in_scope(out.given, out.label)
        except OSError as exc:  # no lock file there: the checks below say why in the usual words
            _check_existing(out, kind, force)
            _probe(out, kind)
            raise OutputError(f"{out.given}: {out.label} cannot be written: {os_error_message(exc)}") from None
    for out, kind in outs:
        _check_existing(out, kind, force)
        _probe(out, kind)
    return [out.given for out, _ in outs]


def _check_existing(out: _Path, kind: Kind, force: bool) -> None:
    path, label = out.given, out.label
    if not (path.exists() or path.is_symlink()):
        return
    if path.is_symlink() and not path.exists():
        raise OutputError(f"{path}: {label} is a broken symbolic link; remove it or choose another path for {label}")
    if kind.folder and not path.is_dir():
        raise OutputError(
            f"{path}: {label} needs a folder, and this is {describe(path)}; choose another path for {label}"
        )
    if not kind.folder and path.is_dir():
        raise OutputError(
            f"{path}: {label} needs a file path, and this is {describe(path)}; choose a file path "
            f"for {label} (e.g. {path / 'NAME'})"
        )
    if kind.update:
        if kind.recognise(path) or (path.is_dir() and not _has_entries(path)) or (path.is_file() and _empty(path)):
            return
        raise OutputError(
            f"{path}: {label} must be new, empty or {kind.what}, and this is {describe(path)}; "
            f"choose another path for {label}"
        )
    if not force:
        raise OutputError(
            f"{path} exists: pass --force to replace it (--force replaces only {kind.what} written "
            f"by qsnn), or choose another path for {label}"
        )
    if not kind.recognise(path):
        what = describe(path)
        extra = " (its checkpoints would be lost)" if what == RUN_DIR.what else ""
        raise OutputError(
            f"{path}: {label} with --force replaces only {kind.what} written by qsnn, and this is "
            f"{what}{extra}; nothing was changed: choose another path for {label}"
        )
    foreign = kind.foreign(path) if kind.foreign is not None else []
    if foreign:
        raise OutputError(foreign_message(path, label, kind, foreign))


def foreign_message(path: PathLike, label: str, kind: Kind, foreign: list[str]) -> str:
    """One line: ``--force`` keeps the user's entries of a qsnn folder, so it does not replace it."""
    shown = ", ".join(foreign[:8]) + (f", ... ({len(foreign) - 8} more)" if len(foreign) > 8 else "")
    return (
        f"{path}: {label} with --force replaces only qsnn's own files of {kind.what}, and it also holds "
        f"{len(foreign)} other entr{'y' if len(foreign) == 1 else 'ies'}: {shown}; nothing was changed: "
        f"move them out of the folder or choose another path for {label}"
    )


def _empty(path: Path) -> bool:
    try:
        return path.stat().st_size == 0
    except OSError:
        return False


def _has_entries(folder: Path) -> bool:
    try:
        return any(folder.iterdir())
    except OSError:
        return True


def _probe(out: _Path, kind: Kind) -> None:
    """Create and delete a probe file where the output's first new file will go."""
    path, label = out.given, out.label
    if kind.update and path.is_dir():
        where = path
    else:
        where = Path(os.path.abspath(path)).parent
        while not (where.exists() or where.is_symlink()):
            where = where.parent
        if not where.is_dir():
            raise OutputError(
                f"{path}: {label} cannot be created, {where} is {describe(where)}, not a folder; "
                f"choose another path for {label}"
            )
    try:
        fd, probe = tempfile.mkstemp(prefix=".qsnn-probe-", dir=where)
    except OSError as exc:
        raise OutputError(f"{path}: {label} cannot be written: {os_error_message(exc, where)}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(probe)


# --------------------------------------------------------------------------------------------------
# OS errors in one line

_HINTS = {
    errno.ENOSPC: "the disk is full: free space there or write somewhere else",
    errno.EDQUOT: "the disk quota is exceeded: free space or write somewhere else",
    errno.EACCES: "permission denied: check the folder's permissions or choose another path",
    errno.EPERM: "operation not permitted: check the permissions or choose another path",
    errno.EROFS: "the file system is read-only: choose a path on a writable one",
    errno.EISDIR: "a folder is in the way: choose a file path",
    errno.ENOTDIR: "a file is in the way where a folder should be: choose another path",
    errno.EEXIST: "it already exists: choose another path",
    errno.ENOENT: "no such file or folder: check the path",
    errno.ENAMETOOLONG: "the name is too long: choose a shorter path",
    errno.EIO: "an input/output error on the device: check the disk",
    errno.EPIPE: "the reader closed the pipe before the end",
    errno.EFBIG: "the file is larger than the system allows here (ulimit -f): free the limit or write elsewhere",
}


def os_error_message(exc: OSError, path: PathLike | None = None) -> str:
    """``"PATH: what happened (what to do)"`` for an ``OSError`` (instead of ``[Errno 28] ...``)."""
    name = exc.filename if exc.filename is not None else path
    where = os.fsdecode(name) if name is not None else ""
    if exc.filename2 is not None:
        where += f" -> {os.fsdecode(exc.filename2)}"
    hint = _HINTS.get(exc.errno or -1)
    said = exc.strerror or (str(exc) if exc.args else "") or type(exc).__name__
    reason = f"{said} ({hint})" if hint and said.lower() not in hint else said
    return f"{where}: {reason}" if where else reason


__all__ = [
    "Kind",
    "OutputError",
    "check_outputs",
    "describe",
    "os_error_message",
    "target_folder",
    "kinds",
    "QONNX",
    "SIM_REPORT",
    "SIM_PLOT",
    "SIM_RECORD",
    "RTL_REPORT",
    "RTL_RESOURCES",
    "LAVA_REPORT",
    "RUN_DIR",
    "STUDY_DIR",
    "TUNE_DIR",
    "SQLITE",
    "CHECKPOINT",
    "TARGET_FOLDERS",
    "target_foreign_entries",
    "foreign_message",
    "is_run_directory",
    "is_checkpoint",
]
