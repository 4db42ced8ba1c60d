"""The target registry: ``write_target`` and ``read_target`` for every target by name.

``write_target(name, net, outdir)`` checks that ``net`` fits the target (else
:class:`~qsnn.errors.ProfileError` naming the layer and the limit), writes the target's tables, a
``README.md`` and a ``manifest.json`` (format version, target, profile, layers with shapes, kinds,
bit widths, memory depth and width, packing order, scale factors, pooling, current shift, and the
SHA-256 of every file) into a temporary sibling folder and renames it onto ``outdir`` (see
:func:`~qsnn.atomic.atomic_directory`). ``read_target(outdir)`` verifies the hashes and
loads the tables back into an :class:`~qsnn.network.IntegerNetwork`.
"""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Mapping

from qsnn.atomic import atomic_directory
from qsnn.errors import ExportError, LimitsError, ProfileError, QsnnError, damaged_file
from qsnn.jsonio import dumps, to_jsonable
from qsnn.network import IntegerNetwork
from qsnn.output_guard import target_foreign_entries

from . import fpga, loihi2, nir
from .fit import profile_fit_problems
from .manifest import FORMAT, FORMAT_VERSION, MANIFEST, README, file_table, layer_record, network_record, read_manifest


@dataclass(frozen=True)
class Target:
    """One target: its name, what it writes, and its module's check / write / read / readme."""

    name: str
    description: str
    module: ModuleType

    @property
    def check(self) -> Callable[..., None]:
        return self.module.check

    def write(self, net: IntegerNetwork, folder: Path, **options: Any) -> dict[str, Any]:
        return self.module.write(net, folder, **options)

    def read(self, folder: Path, manifest: Mapping[str, Any]) -> IntegerNetwork:
        return self.module.read(folder, manifest)

    def readme(self, manifest: Mapping[str, Any]) -> str:
        return self.module.readme(manifest)


TARGETS: dict[str, Target] = {m.NAME: Target(m.NAME, m.DESCRIPTION, m) for m in (fpga, loihi2, nir)}


def get_target(name: str) -> Target:
    try:
        return TARGETS[name]
    except KeyError:
        raise ProfileError(f"unknown target {name!r}; choose one of {', '.join(sorted(TARGETS))}") from None


def check_target(name: str, net: IntegerNetwork, **options: Any) -> None:
    """Raise :class:`~qsnn.errors.LimitsError` (naming every layer and limit) unless ``net`` fits target ``name``."""
    found = target_problems(name, net, **options)
    if found:
        raise LimitsError(found, f"the {name} target cannot hold this network")


def target_problems(name: str, net: IntegerNetwork, **options: Any) -> list[str]:
    """Every limit ``net`` breaks for target ``name``: its own profile's registers, then the target's
    (unsupported features, its registers), each once; an unknown target or option raises."""
    target = get_target(name)
    known = [p for p in inspect.signature(target.module.write).parameters if p not in ("net", "folder")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ProfileError(f"target {name!r} has no option(s) {unknown}; its options are {known or 'none'}")
    found = profile_fit_problems(net, name)
    found += [p for p in target.module.problems(net, **options) if p not in found]
    return found


def target_notes(name: str, net: IntegerNetwork, **options: Any) -> list[str]:
    """What a folder of target ``name`` written for ``net`` would lack that a user may expect, though
    the network fits (the fpga folder's Verilog core); a target without such parts has none."""
    notes = getattr(get_target(name).module, "notes", None)
    return notes(net, **options) if notes else []


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("qsnn")
    except PackageNotFoundError:  # not installed as a distribution
        return "unknown"


def write_target(
    name: str,
    net: IntegerNetwork,
    outdir: str | os.PathLike,
    *,
    force: bool = False,
    source_info: Mapping[str, Any] | None = None,
    **options: Any,
) -> Path:
    """Write ``net`` for target ``name`` into the folder ``outdir``; returns ``outdir``.

    Args:
        name: ``"fpga"``, ``"loihi2"`` or ``"nir"`` (see :data:`TARGETS`).
        net: the compiled network (compile it under the target's profile: fpga for fpga and nir,
            loihi2 for loihi2).
        outdir: the folder to create; it must not exist unless ``force``.
        force: replace an existing ``outdir`` (only once the new folder is complete, and only when it holds
            nothing but qsnn's own files: a folder with a user's files in it is refused, naming them).
        source_info: provenance recorded in the manifest (e.g. checkpoint path and SHA-256).
        options: target options, e.g. ``word_bits=32`` / ``weight_bits`` for fpga.

    Raises:
        ProfileError: the network does not fit the target (message names the layer and the limit).
        ExportError: ``outdir`` exists and ``force`` is false.
    """
    target = get_target(name)
    if not isinstance(net, IntegerNetwork):
        raise ExportError(
            f"write_target needs a compiled IntegerNetwork, got {type(net).__name__}; compile "
            f"the model first (qsnn.export.compile.compile_qonnx)"
        )
    check_target(name, net, **options)
    outdir = Path(outdir)
    with atomic_directory(outdir, force=force, foreign=target_foreign_entries) as tmp:  # keeps users' files
        part = target.write(net, tmp, **options)
        shapes = net.shapes()
        in_shapes = [tuple(net.input_shape), *shapes[:-1]]
        layers = []
        for i, (layer, extra) in enumerate(zip(net.layers, part.pop("layers")), start=1):
            layers.append({**layer_record(i, layer, in_shapes[i - 1], shapes[i - 1]), **extra})
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "target": name,
            "description": target.description,
            "qsnn_version": _version(),
            "profile": net.profile.to_dict(),
            "network": network_record(net),
            "source": to_jsonable(dict(source_info or {})),
            **part,
            "layers": layers,
        }
        (tmp / README).write_text(target.readme(manifest))
        manifest["files"] = file_table(tmp)
        manifest["weight_memory_bits"] = {
            rec["name"]: rec["weight_memory"]["bits"] for rec in layers if "weight_memory" in rec
        }
        (tmp / MANIFEST).write_text(dumps(manifest))
    return outdir


def read_target(outdir: str | os.PathLike, *, verify: bool = True) -> IntegerNetwork:
    """The :class:`IntegerNetwork` stored in a target folder (its own tables, hashes checked).

    Every failure of a damaged, edited or inconsistent folder is an :class:`~qsnn.errors.ExportError`
    or :class:`~qsnn.errors.ProfileError` naming the folder: what a parser trips over
    (:data:`qsnn.errors.PARSE_ERRORS`, e.g. a ``KeyError`` for a missing manifest field) is turned
    into one; an OS error reading the folder stays an ``OSError``.
    ``verify=False`` skips the SHA-256 check, the only guard against damaged HDF5 files (loihi2,
    nir), which libhdf5 may fail to read in any way, including not returning.
    """
    folder = Path(outdir)
    try:
        with damaged_file(str(folder), f"{MANIFEST} or tables", "write the folder again with qsnn-export"):
            manifest = read_manifest(folder, verify=verify)
            target = get_target(str(manifest.get("target")))
            return target.read(folder, manifest)
    except QsnnError as exc:
        if str(folder) in str(exc):
            raise
        raise type(exc)(f"{folder}: {exc}") from None


def summarize(outdir: str | os.PathLike) -> list[tuple[str, Any]]:
    """Rows (key, value) describing a target folder, for a CLI summary table."""
    folder = Path(outdir)
    m = read_manifest(folder, verify=False)
    rows: list[tuple[str, Any]] = [
        ("target", m["target"]),
        ("profile", m["profile"]["name"]),
        ("folder", str(folder)),
        ("files", len(m["files"]) + 1),
    ]
    for rec in m["layers"]:
        if "weight_memory" in rec:
            mem = rec["weight_memory"]
            rows.append(
                (
                    f"{rec['name']} weights",
                    f"{mem['weights']} × {mem['weight_bits']} bit in {mem['depth']} × "
                    f"{mem['width']}-bit words ({mem['bits']} bits, {mem['padding_weights']} padding)",
                )
            )
        else:
            rows.append(
                (f"{rec['name']}", f"{rec['kind']} {tuple(rec['weight_shape'])} → {tuple(rec['output_shape'])}")
            )
    rtl = m.get("rtl")
    if isinstance(rtl, dict):
        rows.append(
            (
                "FPGA core",
                f"{rtl.get('folder')}/: {rtl.get('lanes')} lanes (run it: qsnn-rtl-sim {folder})"
                if rtl.get("supported")
                else f"not included: outside the core's family ({rtl.get('reason')})",
            )
        )
    return rows
