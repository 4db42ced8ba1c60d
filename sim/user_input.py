"""A user's own arrays through the integer simulator: ``qsnn-sim MODEL --input X.npy|X.npz [--record OUT.npz]``.

**Input** (:func:`read_input`). ``X.npy`` holds the inputs; ``X.npz`` holds them as ``x``, with
optional integer labels ``y`` (N,) and optional class names ``classes`` (which must then be the
model's). The inputs are the integers the network's first layer receives, as the export says
(``input_shape`` (C, H, W), ``encoding``, ``input_max``):

* ``encoding="static"``: pixels 0..255 of one image per sample, the same image at each of the T
  steps, as uint8 (any integer dtype whose values fit): ``(N, C, H, W)``; ``(N, H, W)`` or one
  image ``(H, W)`` for a one-channel model; one image ``(C, H, W)``;
* ``encoding="events"``: per-bin event counts 0..``input_max`` (the model's count clip
  2^event_bits − 1), frame t at step t: ``(N, T, C, H, W)``, or one sample ``(T, C, H, W)``;
  bool spikes count as 0/1.

Anything else (float values, another shape, values out of range, labels outside the classes) is one
:class:`~qsnn.errors.InputError` naming the file, what the model takes and what to do. The engine's
own check (:func:`qsnn.sim.engine.check_input`) is the contract; this module only adds the
shapes one may leave out (N, C) and the file's name.

**Record** (:func:`write_record`). ``--record OUT.npz`` keeps every layer's spike trains and
membranes, step by step, as :func:`qsnn.sim.simulate` returns them with ``record=True,
record_membranes=True``, one key per layer named after it (``net.layers[i].name``):

=====================  =====================  ==========================================================
key                    shape                  what
=====================  =====================  ==========================================================
``z_<layer>``          (T, N, C, H, W) or     z_t, the layer's spikes at each step t (uint8 0/1); a conv
                       (T, N, O)              layer's (C, H, W) is after pooling, a dense layer's O units
``u_<layer>``          same as ``z_<layer>``  u_t, its membrane after step t (after the reset of a spike
                                              at t−1), integers on the membrane grid (real ≈ u · scale)
``scale_<layer>``      (C,) or (O,)           real value of one membrane unit per channel
``theta_<layer>``      (C,) or (O,)           θ_c, the integer threshold (z_t = [u_t > θ_c])
``input``              as simulated           the inputs, (N, C, H, W) or (N, T, C, H, W)
``counts``             (N, classes)           output spike counts over T (= ``z_<last>`` summed over t)
``predictions``        (N,)                   argmax of ``counts``, first index winning ties
``labels``             (N,)                   the labels, when the input had them
``layers``             (L,)                   layer names, first to last
``classes``            (classes,)             class names, in output-neuron order
``format``             ()                     ``"qsnn-sim-record"``
``meta``               ()                     JSON: model, profile, T, encoding, input_max, shapes
=====================  =====================  ==========================================================

The file is written atomically (:func:`qsnn.atomic.atomic_open`): complete or not at all.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qsnn.atomic import atomic_open
from qsnn.errors import InputError, not_a_regular_file
from qsnn.network import IntegerNetwork
from qsnn.output_guard import SIM_RECORD_FORMAT
from qsnn.sources import one_hot_hint

from .engine import check_input
from .results import SimResult, predict

#: The most memory a --record may hold (its spike trains and membranes, for every layer, step and sample).
RECORD_LIMIT_BYTES = 4 << 30


# --------------------------------------------------------------------------------------------------
# Input


@dataclass
class UserInput:
    """A user's inputs, checked against a network: ``x`` as the engine takes it, labels ``y`` or None.

    Reads like :class:`qsnn.data.ArraySplit` where ``qsnn-sim`` uses one (``accuracy``, ``source``,
    ``files``, ``num_recordings``); ``accuracy`` is None without labels.
    """

    x: np.ndarray
    y: np.ndarray | None
    source: str
    given_shape: tuple[int, ...]
    files: tuple[str, ...] = field(default=())

    @property
    def num_recordings(self) -> int:
        return len(self.x)

    def accuracy(self, counts: np.ndarray) -> float | None:
        """Fraction of samples whose prediction (argmax of output spike counts) is the label; None unlabelled."""
        if self.y is None or not len(self.y):
            return None
        return float(np.mean(predict(counts) == self.y))


def expected_shapes(net: IntegerNetwork) -> str:
    """The shapes ``--input`` takes for ``net``, for a message: ``(N, 1, 28, 28), (N, 28, 28) or (28, 28)``."""
    c, h, w = net.input_shape
    if net.encoding == "events":
        T = net.num_steps
        return f"event counts (N, {T}, {c}, {h}, {w}) or one sample ({T}, {c}, {h}, {w})"
    forms = [f"(N, {c}, {h}, {w})", f"one image ({c}, {h}, {w})"]
    if c == 1:
        forms = [f"(N, 1, {h}, {w})", f"(N, {h}, {w})", f"one image ({h}, {w})"]
    return "uint8 images " + ", ".join(forms[:-1]) + " or " + forms[-1]


def _with_batch_axes(net: IntegerNetwork, x: np.ndarray) -> np.ndarray | None:
    """``x`` as the engine's (N, C, H, W) / (N, T, C, H, W), or None when its shape is none of the accepted ones."""
    c, h, w = net.input_shape
    frame = (c, h, w)
    if net.encoding == "events":
        if x.ndim == 5 and x.shape[2:] == frame:
            return x
        if x.ndim == 4 and x.shape[1:] == frame:
            return x[None]
        return None
    if x.ndim == 4 and x.shape[1:] == frame:
        return x
    if x.ndim == 3 and x.shape == frame:
        return x[None]
    if c == 1 and x.ndim == 3 and x.shape[1:] == (h, w):
        return x[:, None]
    if c == 1 and x.ndim == 2 and x.shape == (h, w):
        return x[None, None]
    return None


def _load(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(x, y or None, classes or None) of a .npy or .npz file (no pickles)."""
    why = not_a_regular_file(path)
    if why:
        raise InputError(f"{path}: --input {why}; give a .npy file of inputs or a .npz with x (and y)")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
    except OSError as exc:
        raise InputError(f"{path}: --input cannot be read ({exc.strerror or exc})") from None
    try:
        if magic.startswith(b"PK"):
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if "x" not in names:
                    held = ", ".join(names[:8]) or "nothing"
                    raise InputError(
                        f"{path}: --input holds {held} but no array 'x'; save the inputs as x "
                        "(and labels as y): np.savez(path, x=x, y=y)"
                    )
                x = archive["x"]
                y = archive["y"] if "y" in names else None
                classes = archive["classes"] if "classes" in names else None
            return x, y, classes
        if magic == b"\x93NUMPY":
            return np.load(path, allow_pickle=False), None, None
    except InputError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise InputError(
            f"{path}: --input is not a readable NumPy file ({reason}); save plain numeric arrays with "
            "np.save (x) or np.savez (x, y), without object arrays"
        ) from None
    raise InputError(f"{path}: --input is neither a .npy nor a .npz file; save the inputs with np.save or np.savez")


def read_input(path: str | Path, net: IntegerNetwork) -> UserInput:
    """The inputs (and labels) in ``path``, checked against ``net``; raises :class:`InputError` in one line."""
    path = Path(path)
    x, y, classes = _load(path)
    given = tuple(x.shape)
    c, h, w = net.input_shape
    what = expected_shapes(net)
    if x.dtype == np.bool_:
        x = x.astype(np.uint8)
    if not np.issubdtype(x.dtype, np.integer):
        finite = x.dtype.kind not in "fc" or bool(np.isfinite(x).all())
        if not finite:
            hint = "; they hold NaN or infinite values: replace them (e.g. np.nan_to_num) and convert to integers"
        elif x.dtype.kind == "f" and x.size and net.encoding == "static" and np.max(x) <= 1.0:
            hint = "; scaled to [0, 1]? pass (x * 255).round().astype(np.uint8)"
        else:
            hint = f"; convert with x.astype(np.uint8) after checking the values are whole numbers 0..{net.input_max}"
        raise InputError(f"{path}: inputs are {x.dtype}, the model takes {what}, integers 0..{net.input_max}{hint}")
    batched = _with_batch_axes(net, x)
    wrong_frames = batched is not None and net.encoding == "events" and batched.shape[1] != net.num_steps
    if batched is None or wrong_frames:
        frames = ""
        if net.encoding == "events" and x.ndim in (4, 5) and x.shape[-3:] == (c, h, w):
            frames = f" ({x.shape[-4]} frames: the model runs T={net.num_steps} steps, one frame per step)"
        todo = "reshape or resize them to that"
        if x.ndim >= 3 and given[-3:] == (h, w, c) != (c, h, w):  # the same pixels, channels last
            todo = "they look channels-last (..., H, W, C): pass np.moveaxis(x, -1, -3)"
        raise InputError(
            f"{path}: inputs have shape {given}{frames}, the model {_model_name(net)} takes {what}; {todo}"
        )
    if not len(batched):
        raise InputError(f"{path}: --input holds no samples (shape {given}); give at least one input, {what}")
    if batched.size and (batched.min() < 0 or batched.max() > net.input_max):
        bad = int(batched.min()) if batched.min() < 0 else int(batched.max())
        if net.encoding == "events":
            todo = (
                f"the model's event encoding clips counts at {net.input_max} per cell and bin: "
                f"pass np.clip(x, 0, {net.input_max})"
            )
        else:
            todo = "pixels are 0..255: rescale them into that range"
        raise InputError(f"{path}: a value {bad} is outside 0..{net.input_max}, which the model takes; {todo}")
    try:
        check_input(net, batched)
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    labels = None
    if y is not None:
        labels = _labels(path, np.asarray(y), len(batched), net)
    if classes is not None:
        names = tuple(str(v) for v in np.asarray(classes).reshape(-1).tolist())
        if names != tuple(net.classes):
            raise InputError(
                f"{path}: classes {_short(names)} are not the model's {_short(net.classes)} (in output order); "
                "relabel y to the model's classes or leave classes out"
            )
    return UserInput(x=batched, y=labels, source=str(path), given_shape=given, files=(str(path),))


def _labels(path: Path, y: np.ndarray, n: int, net: IntegerNetwork) -> np.ndarray:
    k = len(net.classes)
    if y.ndim == 0 and n == 1:
        y = y.reshape(1)
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise InputError(f"{path}: labels y are {y.dtype}, expected integer class indices 0..{k - 1}")
    if y.shape != (n,):
        hint = one_hot_hint(y, n)
        raise InputError(
            f"{path}: labels y have shape {y.shape} for {n} inputs; give one label per input, ({n},){hint}"
        )
    if n and (y.min() < 0 or y.max() >= k):
        bad = int(y.min()) if y.min() < 0 else int(y.max())
        raise InputError(
            f"{path}: label {bad} is outside the model's {k} classes (0..{k - 1}: {_short(net.classes)}); "
            "fix y or use the model trained on these classes"
        )
    return y.astype(np.int64)


def _short(names) -> str:
    names = [str(v) for v in names]
    return "(" + ", ".join(names[:6]) + (", ..." if len(names) > 6 else "") + ")"


def _model_name(net: IntegerNetwork) -> str:
    meta = net.metadata if isinstance(net.metadata, dict) else {}
    return f"({meta['arch']})" if meta.get("arch") else ""


# --------------------------------------------------------------------------------------------------
# Predictions


def prediction_rows(
    net: IntegerNetwork, counts: np.ndarray, y: np.ndarray | None, limit: int = 20
) -> list[tuple[str, str]]:
    """Rows ``(sample i, "class NAME (k)  [label ...]  counts ...")`` of the first ``limit`` samples."""
    pred = predict(counts)
    rows = []
    for i in range(min(limit, len(pred))):
        k = int(pred[i])
        text = f"{net.classes[k]!s:>6} ({k})"
        if y is not None:
            text += f"  label {net.classes[int(y[i])]!s} ({int(y[i])}) {'ok' if y[i] == k else 'WRONG'}"
        text += "  spikes per class " + " ".join(str(int(v)) for v in counts[i])
        rows.append((f"sample {i}", text))
    if len(pred) > limit:
        rows.append(("...", f"{len(pred) - limit} more samples (all in --report or --record)"))
    return rows


# --------------------------------------------------------------------------------------------------
# Record


def record_bytes(net: IntegerNetwork, samples: int) -> int:
    """An upper bound of the memory a record of ``samples`` takes: a uint8 spike and an int64 membrane per
    neuron, layer and step."""
    neurons = sum(int(np.prod(s)) for s in net.shapes())
    return samples * net.num_steps * neurons * (1 + 8)


def check_record_size(net: IntegerNetwork, samples: int, label: str = "--record") -> None:
    need = record_bytes(net, samples)
    if need > RECORD_LIMIT_BYTES:
        neurons = sum(int(np.prod(s)) for s in net.shapes())
        raise InputError(
            f"{label}: {samples} samples × T={net.num_steps} steps × {neurons:,} neurons would hold up to "
            f"{need / 2**30:.1f} GiB (limit {RECORD_LIMIT_BYTES / 2**30:.0f} GiB); record fewer samples "
            f"(e.g. save x[:{max(1, samples * RECORD_LIMIT_BYTES // need)}])"
        )


def record_arrays(
    net: IntegerNetwork, x: np.ndarray, result: SimResult, y: np.ndarray | None = None, meta: dict | None = None
) -> dict[str, np.ndarray]:
    """The arrays of a record file (module docstring) from a run with spike trains and membranes."""
    if result.spikes is None or result.membranes is None:
        raise ValueError("a record needs simulate(..., record=True, record_membranes=True)")
    arrays: dict[str, np.ndarray] = {"format": np.array(SIM_RECORD_FORMAT)}
    names = [layer.name for layer in net.layers]
    for i, layer in enumerate(net.layers):
        arrays[f"z_{layer.name}"] = result.spikes[f"z{i + 1}"]
        arrays[f"u_{layer.name}"] = result.membranes[f"u{i + 1}"]
        arrays[f"scale_{layer.name}"] = np.asarray(layer.scale, dtype=np.float64)
        arrays[f"theta_{layer.name}"] = np.asarray(layer.threshold, dtype=np.int64)
    arrays["input"] = np.asarray(x)
    arrays["counts"] = result.counts
    arrays["predictions"] = result.predictions
    if y is not None:
        arrays["labels"] = np.asarray(y, dtype=np.int64)
    arrays["layers"] = np.array(names)
    arrays["classes"] = np.array([str(c) for c in net.classes])
    info = {
        "profile": net.profile.to_dict(),
        "num_steps": net.num_steps,
        "encoding": net.encoding,
        "input_max": net.input_max,
        "input_shape": list(net.input_shape),
        "layer_shapes": {n: list(s) for n, s in zip(names, net.shapes())},
        "layout": "z_/u_<layer>: (T, N, C, H, W) for conv layers, (T, N, O) for dense layers",
        **(meta or {}),
    }
    arrays["meta"] = np.array(json.dumps(info))
    return arrays


def write_record(path: str | Path, arrays: dict[str, np.ndarray]) -> Path:
    """Write a record's arrays to ``path`` (.npz, compressed), atomically; returns the path."""
    path = Path(path)
    with atomic_open(path, "wb") as fh:
        np.savez_compressed(fh, **arrays)
    return path


def read_record(path: str | Path) -> dict[str, Any]:
    """A record file's arrays (``meta`` parsed from JSON) — what :func:`write_record` wrote."""
    with np.load(path, allow_pickle=False) as data:
        out: dict[str, Any] = {k: data[k] for k in data.files}
    out["meta"] = json.loads(str(out["meta"]))
    return out
