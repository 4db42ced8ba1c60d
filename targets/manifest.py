"""The target folder's manifest: what every target folder states about itself, and reading it back.

A target folder (``OUTDIR``) always holds the target's tables, a ``README.md`` and a
``manifest.json``; the manifest lists every other file with its SHA-256, so a reader (or a person)
can tell a complete, untouched folder from a damaged one. It also holds the network-level facts
(:func:`network_record`) and the target-independent description of each layer
(:func:`layer_record`) from which the readers rebuild the network (:func:`layer_from_parts`,
:func:`network_from_parts`). The folder itself is written atomically by
:func:`qsnn.atomic.atomic_directory`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from qsnn.arith import check_leak_const
from qsnn.errors import ExportError
from qsnn.jsonio import sha256_file, to_jsonable
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import ChipProfile

#: Version of the target folder layout (manifest keys, file naming); bump on incompatible changes.
FORMAT = "qsnn-target"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
README = "README.md"


def network_record(net: IntegerNetwork) -> dict[str, Any]:
    """Network-level facts every target folder states (and every reader needs)."""
    return {
        "input_shape": list(net.input_shape),
        "num_steps": int(net.num_steps),
        "encoding": net.encoding,
        "input_max": int(net.input_max),
        "input_bits": int(net.input_max).bit_length(),
        "classes": list(net.classes),
        "metadata": to_jsonable(dict(net.metadata)),
    }


def layer_record(
    index: int, layer: IntegerLayer, in_shape: tuple[int, ...], out_shape: tuple[int, ...]
) -> dict[str, Any]:
    """The target-independent description of one layer (shapes, kinds, constants, scale factors)."""
    theta = np.asarray(layer.threshold, dtype=np.int64)
    bias = np.asarray(layer.bias, dtype=np.int64)
    return {
        "index": index,
        "name": layer.name,
        "kind": layer.kind,
        "weight_shape": list(layer.weight.shape),
        "weight_order": "(out, in, ky, kx)"
        if layer.kind == "conv"
        else "(out, in); in = flattened (C, H, W) of the previous layer",
        "weight_count": int(layer.weight.size),
        "input_shape": list(in_shape),
        "output_shape": list(out_shape),
        "neurons": int(np.prod(out_shape)),
        "fan_in": layer.fan_in,
        "kernel": layer.kernel,
        "stride": int(layer.stride),
        "padding": int(layer.padding),
        "pool": int(layer.pool),
        "current_shift": int(layer.current_shift),
        "weight_exp": int(layer.weight_exp),
        "decay": int(layer.leak_const),  # the leak constant (key kept from format 1)
        "threshold_range": [int(theta.min()), int(theta.max())],
        "bias_range": [int(bias.min()), int(bias.max())],
        "scale": [float(s) for s in np.asarray(layer.scale, dtype=np.float64)],
    }


def layer_from_parts(
    record: Mapping[str, Any],
    weight: np.ndarray,
    threshold: np.ndarray,
    bias: np.ndarray,
    leak_const: int,
    scale: Any = None,
    **overrides: Any,
) -> IntegerLayer:
    """An :class:`IntegerLayer` from a manifest record plus the tables a reader parsed."""
    fields = dict(
        name=str(record["name"]),
        kind=str(record["kind"]),
        weight=np.asarray(weight, dtype=np.int64)
        .reshape(tuple(record["weight_shape"]))
        .astype(np.int8 if int(np.abs(weight).max(initial=0)) < 128 else np.int64),
        pool=int(record["pool"]),
        current_shift=int(record["current_shift"]),
        threshold=np.asarray(threshold, dtype=np.int64),
        bias=np.asarray(bias, dtype=np.int64),
        leak_const=int(leak_const),
        scale=np.asarray(record["scale"] if scale is None else scale, dtype=np.float64),
        weight_exp=int(record.get("weight_exp", 0)),
    )
    fields.update(overrides)
    return IntegerLayer(**fields)


def network_from_parts(manifest: Mapping[str, Any], layers: list[IntegerLayer]) -> IntegerNetwork:
    """The network a reader parsed, checked: every leak constant must be one its profile's leak can use."""
    net = manifest["network"]
    profile = ChipProfile.from_dict(dict(manifest["profile"]))
    for layer in layers:
        check_leak_const(layer.leak_const, profile, layer.name)
    return IntegerNetwork(
        layers=tuple(layers),
        profile=profile,
        input_shape=tuple(int(d) for d in net["input_shape"]),
        num_steps=int(net["num_steps"]),
        encoding=str(net["encoding"]),
        classes=tuple(str(c) for c in net["classes"]),
        metadata=dict(net.get("metadata", {})),
        input_max=net.get("input_max", 255),  # IntegerNetwork checks its type and its encoding's rule
    )


def file_table(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative name: {sha256, bytes}}`` of every file in ``folder`` except the manifest."""
    table = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel == MANIFEST:
            continue
        table[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return table


def read_manifest(outdir: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of a target folder; with ``verify``, every listed file's SHA-256 is checked."""
    folder = Path(outdir)
    path = folder / MANIFEST
    if not path.is_file():
        raise ExportError(
            f"{folder}: no {MANIFEST}; this is not a qsnn target folder (write one with "
            f"`qsnn-export MODEL --to fpga|loihi2|nir -o {folder}`)"
        )
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: not a readable JSON manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(
            f"{path}: not a qsnn target manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r})"
        )
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ExportError(
            f"{path}: format version {version!r}, this qsnn reads version {FORMAT_VERSION}; "
            f"write the folder again with this qsnn"
        )
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(isinstance(e, dict) for e in files.values()):
        raise ExportError(f"{path}: 'files' must map each file name to its sha256 and size; the manifest is damaged")
    outside = [n for n in files if Path(n).is_absolute() or ".." in Path(n).parts]
    if outside:
        raise ExportError(f"{path}: lists {outside[0]!r}, outside the folder; the manifest is damaged or was edited")
    if verify:
        for name, entry in files.items():
            file = folder / name
            if not file.is_file():
                raise ExportError(f"{folder}: {name} is listed in the manifest but missing")
            digest = sha256_file(file)
            if digest != entry.get("sha256"):
                raise ExportError(
                    f"{file}: SHA-256 {digest[:12]}… does not match the manifest "
                    f"({str(entry.get('sha256'))[:12]}…); the file was changed or damaged"
                )
    return manifest
