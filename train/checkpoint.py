"""Checkpoints: one ``.pt`` file with everything needed to resume, export or audit a run.

Contents (plain dicts, lists, numbers, strings and tensors, so ``torch.load(weights_only=True)``
reads them without executing code)::

    format: "qsnn-checkpoint"      format_version: FORMAT_VERSION       qsnn_version
    config: TrainConfig.to_dict()   input_shape: [C, H, W]   classes: [...]   encoding
    model: state_dict               optimizer: state_dict   schedule: Schedule.state_dict()
    rng: {torch, generator, numpy, python}      epoch: epochs completed
    state: {best_val, best_epoch, bad_epochs}   history: per-epoch log rows
    metrics: {...}                 versions: {torch, snntorch, brevitas, numpy, python}
    digest: SHA-256 of everything above (:func:`content_digest`)

Writes are atomic (temporary file + rename); reads check the format and the digest and say what is
wrong. torch's zip container has no checksum of its own, so without the digest a flipped bit in a
weight would load silently; with it a damaged file is refused. A version-2 checkpoint without a
``digest`` (written before it existed, or with the digest removed) is refused unless it is read
unchecked on purpose: ``load_checkpoint(..., unchecked=True)`` or ``QSNN_UNCHECKED_CHECKPOINTS=1``
in the environment (every command). Version 1 never had a digest and is read unchecked.
"""

from __future__ import annotations

import hashlib
import io
import os
import platform
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

import qsnn
from qsnn.atomic import atomic_write_bytes
from qsnn.config import TrainConfig
from qsnn.errors import CheckpointError, not_a_regular_file

FORMAT = "qsnn-checkpoint"
FORMAT_VERSION = 2
#: Versions this qsnn reads: 1 is the paper's three-layer model with named layers (conv1, conv2, fc,
#: bn1, bn2, lif1..3), read as version 2's layer lists (same parameters in the same order).
READS_VERSIONS = (1, 2)
_V1_PREFIXES = {
    "conv1.": "synapses.0.",
    "conv2.": "synapses.1.",
    "fc.": "synapses.2.",
    "bn1.": "norms.0.",
    "bn2.": "norms.1.",
    "lif1.": "neurons.0.",
    "lif2.": "neurons.1.",
    "lif3.": "neurons.2.",
}
REQUIRED = ("config", "model", "input_shape", "classes", "encoding")
#: Set to 1 to read a version-2 checkpoint that carries no digest (unchecked).
UNCHECKED_ENV = "QSNN_UNCHECKED_CHECKPOINTS"
#: The first format version whose checkpoints always carry a digest.
DIGEST_SINCE = 2


def package_versions() -> dict[str, str]:
    import numpy
    import snntorch

    versions = {
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "snntorch": str(snntorch.__version__),
        "numpy": str(numpy.__version__),
        "qsnn": qsnn.__version__,
    }
    try:
        import brevitas

        versions["brevitas"] = str(brevitas.__version__)
    except ImportError:  # pragma: no cover - brevitas is a dependency
        pass
    return versions


def content_digest(data: Mapping[str, Any]) -> str:
    """SHA-256 of a checkpoint's contents, every key but ``digest``: tensors by dtype, shape and bytes.

    The walk is canonical (dict keys sorted, every value tagged with its type), so the digest is a
    function of the loaded values, not of how torch laid out the file.
    """
    h = hashlib.sha256()

    def feed(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            t = value.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        elif isinstance(value, Mapping):
            h.update(f"D{len(value)}:".encode())
            for key in sorted(value, key=lambda k: (type(k).__name__, repr(k))):
                feed(key)
                feed(value[key])
        elif isinstance(value, (list, tuple)):
            h.update(f"{type(value).__name__[0]}{len(value)}:".encode())
            for item in value:
                feed(item)
        elif isinstance(value, str):
            raw = value.encode("utf-8", "surrogatepass")
            h.update(f"S{len(raw)}:".encode() + raw)
        elif isinstance(value, (bytes, bytearray)):
            h.update(f"B{len(value)}:".encode() + bytes(value))
        else:  # None, bool, int, float (repr is exact and type-tagged)
            h.update(f"{type(value).__name__}:{value!r};".encode())

    feed({k: v for k, v in data.items() if k != "digest"})
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus format fields, versions and the digest) atomically to ``path``."""
    data = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "qsnn_version": qsnn.__version__,
        "versions": package_versions(),
        **{k: v for k, v in payload.items() if k != "digest"},
    }
    data["digest"] = content_digest(data)
    buf = io.BytesIO()
    torch.save(data, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", *, unchecked: bool | None = None
) -> dict[str, Any]:
    """Read and check a checkpoint; raise :class:`CheckpointError` naming the file and the problem.

    ``unchecked`` (default: ``QSNN_UNCHECKED_CHECKPOINTS=1`` in the environment) reads a checkpoint
    without a digest; a digest that is there is always checked."""
    path = Path(path)
    problem = not_a_regular_file(path)
    if problem:
        raise CheckpointError(f"{path}: {problem} (expected the .pt written by qsnn-train)")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, pickle error, not a torch file at all
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(
            f"{path}: not a readable qsnn checkpoint (truncated or not a torch file: {reason[:160]})"
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a qsnn checkpoint (no 'format: {FORMAT}' field); pass the best.pt or last.pt of a qsnn-train run"
        )
    if data.get("format_version") not in READS_VERSIONS:
        raise CheckpointError(
            f"{path}: checkpoint format version {data.get('format_version')} (qsnn {data.get('qsnn_version')}); "
            f"this qsnn ({qsnn.__version__}) reads versions {list(READS_VERSIONS)}: retrain or use the matching qsnn release"
        )
    if unchecked is None:
        unchecked = os.environ.get(UNCHECKED_ENV, "") not in ("", "0")
    if "digest" not in data and data["format_version"] >= DIGEST_SINCE and not unchecked:
        raise CheckpointError(
            f"{path}: this version-{data['format_version']} checkpoint carries no SHA-256 digest (written by an "
            "older qsnn, or the digest was removed), so a damaged weight would go unnoticed; to read it anyway, "
            f"unchecked, set {UNCHECKED_ENV}=1"
        )
    if "digest" in data and data["digest"] != content_digest(data):
        raise CheckpointError(
            f"{path}: contents do not match the checkpoint's SHA-256 digest: the file is damaged "
            "(bit rot, a bad copy) or was edited; use another copy, or best.pt / last.pt of the run"
        )
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {missing}; it is incomplete")
    if data["format_version"] == 1 and isinstance(data["model"], Mapping):
        data["model"] = _v1_state(data["model"])
    config = dict(data["config"]) if isinstance(data["config"], dict) else data["config"]
    if isinstance(config, dict) and config.get("dataset") == "dvs128" and "event_bits" not in config:
        config["event_bits"] = 16  # written before the event encoding was recorded: raw uint16 counts
    try:
        data["config_obj"] = TrainConfig.from_dict(config)
    except Exception as exc:
        raise CheckpointError(f"{path}: checkpoint configuration is invalid: {exc}") from None
    return data


def nonfinite_tensors(tensors: Iterable[tuple[str, Any]], layer_names: Sequence[str] = ()) -> list[str]:
    """The tensors among ``(key, tensor)`` (a state dict's items, a model's named parameters) holding NaN
    or infinity, each as ``"weights of conv2 (NaN)"``: a key ``synapses.i.*``/``norms.i.*`` is named
    after layer i (``layer_names``, :func:`qsnn.arch.layer_names`), any other key as it is."""
    found: dict[str, set[str]] = {}
    for key, value in tensors:
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            continue
        if bool(torch.isfinite(value).all()):
            continue
        parts = key.split(".")
        what = key
        if len(parts) >= 2 and parts[0] in ("synapses", "norms") and parts[1].isdigit():
            i = int(parts[1])
            layer = layer_names[i] if i < len(layer_names) else f"layer {i + 1}"
            kind = "BatchNorm" if parts[0] == "norms" else ("bias" if parts[-1] == "bias" else "weights")
            what = f"{kind} of {layer}"
        kinds = found.setdefault(what, set())
        if bool(torch.isnan(value).any()):
            kinds.add("NaN")
        if bool(torch.isinf(value).any()):
            kinds.add("inf")
    return [f"{what} ({'/'.join(sorted(kinds))})" for what, kinds in found.items()]


def _v1_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """A version-1 state dict (named layers) with version 2's keys (layer lists)."""
    out = {}
    for key, value in state.items():
        prefix = next((p for p in _V1_PREFIXES if key.startswith(p)), None)
        out[_V1_PREFIXES[prefix] + key[len(prefix) :] if prefix else key] = value
    return out


def model_from_checkpoint(path_or_data, map_location="cpu", *, where: str | None = None):
    """Rebuild the trained :class:`~train.model.QSNN` (eval mode) from a checkpoint path or dict.

    ``where`` names the file in messages when a dict is given (default: the path, or "the checkpoint").
    Raises :class:`CheckpointError` when the weights do not fit the network of its configuration, or
    hold NaN or infinity, naming the file and the layers."""
    from .model import QSNN

    is_data = isinstance(path_or_data, dict)
    where = where or ("the checkpoint" if is_data else str(path_or_data))
    data = path_or_data if is_data else load_checkpoint(path_or_data, map_location)
    cfg = data["config_obj"]
    try:
        model = QSNN(cfg, tuple(data["input_shape"]), len(data["classes"]))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{where}: its input_shape/classes do not fit its network {cfg.arch}: {exc}") from None
    state = data["model"]
    if not isinstance(state, Mapping):
        raise CheckpointError(f"{where}: 'model' is a {type(state).__name__}, not a state dict of weights")
    bad = nonfinite_tensors(state.items(), model.names)
    if bad:
        raise CheckpointError(
            f"{where}: the weights hold NaN or infinity: {', '.join(bad)}; the run diverged before this file "
            "was written: use an earlier checkpoint, or train again with a lower --lr"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        reason = " ".join(str(exc).split())
        raise CheckpointError(
            f"{where}: the weights do not match the network its configuration describes ({cfg.arch}, "
            f"input {list(data['input_shape'])}, {len(data['classes'])} classes): {reason[:240]}"
        ) from None
    return model.eval()
