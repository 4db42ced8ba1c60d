"""What every target shares: fit checks, the manifest, hashing and the atomic output folder.

A target folder (``OUTDIR``) always holds the target's tables, a ``README.md`` and a
``manifest.json``; the manifest lists every other file with its SHA-256, so a reader (or a person)
can tell a complete, untouched folder from a damaged one.

The folder is written as a whole: everything goes into a temporary sibling folder
(``.OUTDIR.tmp-XXXX``) which is renamed onto ``OUTDIR`` only once complete. An existing ``OUTDIR``
is refused unless ``force=True``; then the two folders are swapped in one atomic step (Linux
``renameat2``) and the old one deleted; where that call is missing, the old folder is moved aside,
the new one renamed into place and the old one deleted (restored if the rename fails). On any failure the temporary folder is removed, so
no partial ``OUTDIR`` is ever left behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from qsnn.atomic import fsync_path
from qsnn.errors import ExportError, ProfileError
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import ChipProfile

#: Version of the target folder layout (manifest keys, file naming); bump on incompatible changes.
FORMAT = "qsnn-target"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
README = "README.md"


# --------------------------------------------------------------------------------------------------
# Fit checks


@dataclass(frozen=True)
class Limits:
    """What a target can hold; 0 (or None) means no limit.

    Attributes:
        target: target name, for messages.
        weight_bits: width of a stored weight (two's complement); weights must lie in the narrow
            range ±(2^(b−1) − 1).
        threshold_max: largest threshold on the membrane grid.
        threshold_multiple: thresholds must be multiples of this (Loihi: 2^6).
        bias_max: largest |bias| on the membrane grid.
        bias_multiple: biases must be multiples of this (Loihi's netx: bias mantissa << 6).
        max_neurons: most neurons in one layer.
        max_fan_in: most synapses into one neuron.
        fold_pool: the fan-in counted with the pooling folded into the kernel (C·(k+p−1)²), as a
            target that folds it sees it; else C·k² (the IntegerLayer's fan_in).
    """

    target: str
    weight_bits: int
    threshold_max: int = 0
    threshold_multiple: int = 1
    bias_max: int = 0
    bias_multiple: int = 1
    max_neurons: int = 0
    max_fan_in: int = 0
    fold_pool: bool = False


def folded_fan_in(layer: IntegerLayer) -> int:
    """Synapses into one neuron when p×p sum-pooling is folded into a stride-p kernel."""
    if layer.kind == "dense":
        return layer.fan_in
    side = layer.kernel + layer.pool - 1
    return layer.in_channels * side * side


def profile_limits(profile: ChipProfile, target: str) -> Limits:
    """The limits a network's own profile promises (its registers)."""
    return Limits(target=target, weight_bits=profile.weight_bits, threshold_max=profile.threshold_max,
                  threshold_multiple=1 << profile.threshold_shift, bias_max=profile.bias_max,
                  max_neurons=profile.max_neurons, max_fan_in=profile.max_fan_in)


def check_fit(net: IntegerNetwork, limits: Limits) -> None:
    """Raise :class:`ProfileError` naming the first layer (and the limit) that does not fit."""
    shapes = net.shapes()
    for i, (layer, shape) in enumerate(zip(net.layers, shapes), start=1):
        where = f"layer {i} ({layer.name})"
        w = np.asarray(layer.weight, dtype=np.int64)
        wmax = (1 << (limits.weight_bits - 1)) - 1
        big = int(np.abs(w).max(initial=0))
        if big > wmax:
            need = big.bit_length() + 1
            raise ProfileError(
                f"{where}: weights reach |{big}|, which needs {need}-bit two's complement; the "
                f"{limits.target} target stores {limits.weight_bits}-bit weights (narrow range ±{wmax}). "
                f"Compile the network for a {limits.weight_bits}-bit profile or choose a target with wider weights.")
        theta = np.asarray(layer.threshold, dtype=np.int64)
        if limits.threshold_max and int(theta.max(initial=0)) > limits.threshold_max:
            raise ProfileError(
                f"{where}: threshold {int(theta.max())} exceeds the {limits.target} target's largest "
                f"threshold {limits.threshold_max}.")
        if limits.threshold_multiple > 1 and np.any(theta % limits.threshold_multiple):
            bad = int(theta[theta % limits.threshold_multiple != 0][0])
            raise ProfileError(
                f"{where}: threshold {bad} is not a multiple of {limits.threshold_multiple}, which the "
                f"{limits.target} target needs (it stores threshold / {limits.threshold_multiple}).")
        bias = np.asarray(layer.bias, dtype=np.int64)
        if limits.bias_max and int(np.abs(bias).max(initial=0)) > limits.bias_max:
            raise ProfileError(
                f"{where}: bias |{int(np.abs(bias).max())}| exceeds the {limits.target} target's largest "
                f"bias {limits.bias_max}.")
        if limits.bias_multiple > 1 and np.any(bias % limits.bias_multiple):
            bad = int(bias[bias % limits.bias_multiple != 0][0])
            raise ProfileError(
                f"{where}: bias {bad} is not a multiple of {limits.bias_multiple}, which the "
                f"{limits.target} target needs (it stores bias / {limits.bias_multiple}).")
        neurons = int(np.prod(shape))
        if limits.max_neurons and neurons > limits.max_neurons:
            raise ProfileError(
                f"{where}: {neurons} neurons {tuple(shape)} exceed the {limits.target} target's limit of "
                f"{limits.max_neurons} neurons per layer (max_neurons).")
        fan_in = folded_fan_in(layer) if limits.fold_pool else layer.fan_in
        if limits.max_fan_in and fan_in > limits.max_fan_in:
            how = " with the pooling folded into the kernel" if limits.fold_pool and layer.pool > 1 else ""
            raise ProfileError(
                f"{where}: fan-in {fan_in}{how} exceeds the {limits.target} target's limit of "
                f"{limits.max_fan_in} synapses per neuron (max_fan_in).")


def check_profile_fit(net: IntegerNetwork, target: str) -> None:
    """The network must obey its own profile's registers before any target writes it."""
    check_fit(net, profile_limits(net.profile, target))


# --------------------------------------------------------------------------------------------------
# JSON


def jsonable(value: Any) -> Any:
    """Plain JSON data from numpy scalars/arrays, tuples, paths and dataclass-like objects."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "to_dict"):
        return jsonable(value.to_dict())
    return str(value)


def _dump(value: Any, indent: int) -> str:
    pad, inner = " " * indent, " " * (indent + 2)
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = [f"{inner}{json.dumps(k)}: {_dump(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return json.dumps(value)                      # lists of numbers/strings on one line
        return "[\n" + ",\n".join(inner + _dump(v, indent + 2) for v in value) + "\n" + pad + "]"
    return json.dumps(value)


def dumps(data: Any) -> str:
    """JSON with two-space indentation, lists of scalars kept on one line."""
    return _dump(jsonable(data), 0) + "\n"


# --------------------------------------------------------------------------------------------------
# The network in the manifest


def network_record(net: IntegerNetwork) -> dict[str, Any]:
    """Network-level facts every target folder states (and every reader needs)."""
    return {
        "input_shape": list(net.input_shape),
        "num_steps": int(net.num_steps),
        "encoding": net.encoding,
        "classes": list(net.classes),
        "metadata": jsonable(dict(net.metadata)),
    }


def layer_record(index: int, layer: IntegerLayer, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> dict[str, Any]:
    """The target-independent description of one layer (shapes, kinds, constants, scale factors)."""
    theta = np.asarray(layer.threshold, dtype=np.int64)
    bias = np.asarray(layer.bias, dtype=np.int64)
    return {
        "index": index,
        "name": layer.name,
        "kind": layer.kind,
        "weight_shape": list(layer.weight.shape),
        "weight_order": "(out, in, ky, kx)" if layer.kind == "conv" else "(out, in); in = flattened (C, H, W) of the previous layer",
        "weight_count": int(layer.weight.size),
        "input_shape": list(in_shape),
        "output_shape": list(out_shape),
        "neurons": int(np.prod(out_shape)),
        "fan_in": layer.fan_in,
        "kernel": layer.kernel,
        "pool": int(layer.pool),
        "current_shift": int(layer.current_shift),
        "weight_exp": int(layer.weight_exp),
        "decay": int(layer.decay),
        "threshold_range": [int(theta.min()), int(theta.max())],
        "bias_range": [int(bias.min()), int(bias.max())],
        "scale": [float(s) for s in np.asarray(layer.scale, dtype=np.float64)],
    }


def layer_from_parts(record: Mapping[str, Any], weight: np.ndarray, threshold: np.ndarray, bias: np.ndarray,
                     decay: int, scale: Any = None, **overrides: Any) -> IntegerLayer:
    """An :class:`IntegerLayer` from a manifest record plus the tables a reader parsed."""
    fields = dict(
        name=str(record["name"]), kind=str(record["kind"]),
        weight=np.asarray(weight, dtype=np.int64).reshape(tuple(record["weight_shape"])).astype(np.int8 if
               int(np.abs(weight).max(initial=0)) < 128 else np.int64),
        pool=int(record["pool"]), current_shift=int(record["current_shift"]),
        threshold=np.asarray(threshold, dtype=np.int64), bias=np.asarray(bias, dtype=np.int64),
        decay=int(decay),
        scale=np.asarray(record["scale"] if scale is None else scale, dtype=np.float64),
        weight_exp=int(record.get("weight_exp", 0)),
    )
    fields.update(overrides)
    return IntegerLayer(**fields)


def network_from_parts(manifest: Mapping[str, Any], layers: list[IntegerLayer]) -> IntegerNetwork:
    net = manifest["network"]
    return IntegerNetwork(
        layers=tuple(layers), profile=ChipProfile.from_dict(dict(manifest["profile"])),
        input_shape=tuple(int(d) for d in net["input_shape"]), num_steps=int(net["num_steps"]),
        encoding=str(net["encoding"]), classes=tuple(str(c) for c in net["classes"]),
        metadata=dict(net.get("metadata", {})))


# --------------------------------------------------------------------------------------------------
# Files and hashes


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


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
        raise ExportError(f"{folder}: no {MANIFEST}; this is not a qsnn target folder (write one with "
                          f"`qsnn-export MODEL --to fpga|loihi2|nir -o {folder}`)")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ExportError(f"{path}: not a readable JSON manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ExportError(f"{path}: not a qsnn target manifest (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ExportError(f"{path}: format version {version!r}, this qsnn reads version {FORMAT_VERSION}; "
                          f"write the folder again with this qsnn")
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
                raise ExportError(f"{file}: SHA-256 {digest[:12]}… does not match the manifest "
                                  f"({str(entry.get('sha256'))[:12]}…); the file was changed or damaged")
    return manifest


# --------------------------------------------------------------------------------------------------
# The atomic output folder


def _fsync_tree(folder: Path) -> None:
    for path in [*folder.rglob("*"), folder]:
        fsync_path(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_directory(outdir: str | os.PathLike, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty temporary sibling folder; on success it becomes ``outdir``.

    Raises :class:`ExportError` if ``outdir`` exists and ``force`` is false (checked before any work
    and again at the end). With ``force`` the old ``outdir`` is replaced only after the new one is
    complete. On any exception the temporary folder is deleted and ``outdir`` is left as it was.
    """
    outdir = Path(outdir)
    if outdir.exists() and not force:
        raise ExportError(f"{outdir} already exists; choose another output folder or pass --force "
                          f"(force=True) to replace it")
    parent = outdir.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.tmp-", dir=parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)                     # mkdtemp makes it 0700; OUTDIR gets the usual mode
        yield tmp
        _fsync_tree(tmp)
        if outdir.exists() or outdir.is_symlink():
            if not force:
                raise ExportError(f"{outdir} appeared while it was being written; nothing was replaced "
                                  f"(pass --force to replace it)")
            if outdir.is_dir() and not outdir.is_symlink() and _exchange(tmp, outdir):
                _remove(tmp)                              # tmp now holds the old folder
                fsync_path(parent)
                return
            old = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.old-", dir=parent))
            old.rmdir()
            os.replace(outdir, old)
            try:
                os.replace(tmp, outdir)
            except BaseException:
                os.replace(old, outdir)
                raise
            _remove(old)
        else:
            os.replace(tmp, outdir)
        fsync_path(parent)
    except BaseException:
        _remove(tmp)
        raise


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``).

    Replacing a folder otherwise takes two renames (old out of the way, new into place), and a
    process killed between them would leave no ``OUTDIR`` at all. Returns False where the call is
    not available (other systems, old kernels or file systems); raises ``OSError`` if it fails.
    """
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))
