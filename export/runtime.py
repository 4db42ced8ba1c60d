"""Host loops over T for the one-step qsnn QONNX graphs (no torch needed).

The exported graph is one time step; :func:`run_onnx_steps` runs it T times, feeding each state
output (``u1_out``... and, for delayed profiles, ``d1_out``...) back into its input, zeros at t = 0.

Engines:

* ``"ort"``: onnxruntime. A float graph is first converted with qonnx's ``QuantToQCDQ`` (each
  ``Quant`` becomes ``QuantizeLinear → Clip → DequantizeLinear``, which onnxruntime runs); graph
  optimisations are off so every op runs as written. Fast: this is the "trained model" of qsnn-sim.
* ``"qonnx"``: ``qonnx.core.onnx_exec.execute_onnx``, node by node (``Quant`` in qonnx's own NumPy
  implementation, standard ops through onnxruntime). Slow; the reference executor.

Inputs: the float kind takes the real-valued input (static images ``pixels/255`` as float32
(N, C, H, W), repeated every step; event frames (N, T, C, H, W)); the integer kind takes the integer
input (uint8 pixels, event counts), as integers or integer-valued floats.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any

import numpy as np
import onnx

from qsnn.errors import ExportError

from .format import (FLOAT_OPS, INPUT, INTEGER_OPS, OUTPUT, STATE_INPUTS, check_ops, check_qsnn_model, fix_batch_size,
                     static_batch)

ENGINES = ("ort", "qonnx")
_ONNX_TO_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}


def _input_dtype(model: onnx.ModelProto, name: str) -> np.dtype:
    vi = next(i for i in model.graph.input if i.name == name)
    return np.dtype(_ONNX_TO_NP.get(vi.type.tensor_type.elem_type, np.float32))


def _state_names(model: onnx.ModelProto) -> list[str]:
    """State inputs (u1..u3, then any delay lines d1..), each fed back from ``<name>_out``."""
    outputs = {o.name for o in model.graph.output}
    names = [i.name for i in model.graph.input if i.name != INPUT]
    missing = [n for n in names if f"{n}_out" not in outputs]
    if missing:
        raise ExportError(f"graph state input(s) {missing} have no matching '<name>_out' output")
    return names


def _state_shape(model: onnx.ModelProto, name: str, batch: int) -> tuple[int, ...]:
    vi = next(i for i in model.graph.input if i.name == name)
    dims = vi.type.tensor_type.shape.dim
    shape = [batch] + [d.dim_value for d in dims[1:]]
    if any(s <= 0 for s in shape[1:]):
        raise ExportError(f"graph input {name!r} has no static shape beyond the batch dimension")
    return tuple(shape)


def prepare_input(meta: dict[str, Any], x: Any, num_steps: int | None) -> tuple[np.ndarray, bool, int]:
    """(x, static, T) checked against the metadata: shape, and integer values for the integer kind."""
    x = np.asarray(x)
    shape = tuple(meta["input_shape"])
    if x.ndim == 4 and x.shape[1:] == shape:
        static, T = True, int(num_steps or meta["num_steps"])
    elif x.ndim == 5 and x.shape[2:] == shape:
        static = False
        T = int(num_steps or x.shape[1])
        if T > x.shape[1]:
            raise ExportError(f"asked for {T} steps but the input has only {x.shape[1]} frames")
    else:
        raise ExportError(f"input of shape {x.shape} does not match the model's input (N, {', '.join(map(str, shape))}) "
                          f"or (N, T, {', '.join(map(str, shape))})")
    if T < 1:
        raise ExportError(f"num_steps must be >= 1, got {T}")
    if meta["kind"] == "integer":
        if not np.issubdtype(x.dtype, np.integer):
            if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
                raise ExportError("the integer graph takes integer inputs (uint8 pixels or event counts), got non-integers")
        if x.size and (x.min() < 0 or x.max() > meta["input_max"]):
            raise ExportError(f"integer inputs must lie in [0, {meta['input_max']}], got [{x.min()}, {x.max()}]")
    return x, static, T


class _OrtStep:
    def __init__(self, model: onnx.ModelProto, kind: str, where: str = "the graph") -> None:
        import onnxruntime as ort

        if kind == "float" and any(n.op_type == "Quant" for n in model.graph.node):
            from qonnx.core.modelwrapper import ModelWrapper
            from qonnx.transformation.qonnx_to_qcdq import QuantToQCDQ

            try:
                model = ModelWrapper(model).transform(QuantToQCDQ()).model
            except Exception as exc:  # a damaged graph breaks the converter in many ways (SerdeError, ...)
                reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
                raise ExportError(f"{where}: QuantToQCDQ cannot convert the graph ({type(exc).__name__}: {reason}); "
                                  "the file is damaged or edited: export the checkpoint again") from None
            left = [n.op_type for n in model.graph.node if n.op_type == "Quant"]
            if left:
                raise ExportError("QuantToQCDQ could not convert every Quant node (bit width > 8?); use engine='qonnx'")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportError(f"{where}: onnxruntime cannot load the graph: {str(exc).splitlines()[0][:200]}") from None
        self.outputs = [o.name for o in model.graph.output]

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))


class _QonnxStep:
    def __init__(self, model: onnx.ModelProto, kind: str) -> None:
        self.model = model
        self._fixed: dict[int, Any] = {}

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from qonnx.core.modelwrapper import ModelWrapper
        from qonnx.core.onnx_exec import execute_onnx

        batch = len(feeds[INPUT])
        if batch not in self._fixed:
            self._fixed[batch] = ModelWrapper(fix_batch_size(self.model, batch))
        return execute_onnx(self._fixed[batch], feeds)


_ORT_CACHE: "OrderedDict[tuple, _OrtStep]" = OrderedDict()


def _ort_runner(source: Any, model: onnx.ModelProto, kind: str) -> _OrtStep:
    """An onnxruntime session for ``model``; sessions of files are cached (path, mtime, size)."""
    if not isinstance(source, (str, os.PathLike)):
        return _OrtStep(model, kind)
    where = str(source)
    st = os.stat(source)
    key = (os.path.abspath(source), st.st_mtime_ns, st.st_size)
    if key not in _ORT_CACHE:
        _ORT_CACHE[key] = _OrtStep(model, kind, where)
        while len(_ORT_CACHE) > 4:
            _ORT_CACHE.popitem(last=False)
    _ORT_CACHE.move_to_end(key)
    return _ORT_CACHE[key]


def run_onnx_steps(onnx_path_or_model: Any, x: Any, num_steps: int | None = None, engine: str = "ort",
                   record: bool = False, batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Run a qsnn QONNX graph (float or integer kind) over T steps on a batch.

    Args:
        onnx_path_or_model: path, ``onnx.ModelProto`` or qonnx ``ModelWrapper`` of a qsnn export.
        x: static frames (N, C, H, W), repeated every step, or event frames (N, T, C, H, W). Float
            kind: the real-valued input (pixels/255, counts). Integer kind: the integers.
        num_steps: T; default the metadata's ``num_steps`` (static) or the number of frames (events).
        engine: ``"ort"`` (onnxruntime, after ``QuantToQCDQ``) or ``"qonnx"`` (``execute_onnx``).
        record: also return every layer's membranes ``u1, u2, u3`` and spikes ``z1, z2``.
        batch_size: samples per graph call (default: 512 for ort, all of x for qonnx).

    Returns:
        ``{"z3": (T, N, classes)}`` plus, with ``record``, ``z1, z2`` and ``u1, u2, u3`` (T, N, ...).
        Float kind: float32 arrays as the graph computes them. Integer kind: spikes uint8, membranes
        int64.

    Raises :class:`~qsnn.errors.ExportError` if the file is not a qsnn export or x does not fit it.
    """
    if engine not in ENGINES:
        raise ExportError(f"engine must be one of {ENGINES}, got {engine!r}")
    model, meta = check_qsnn_model(onnx_path_or_model)
    kind = meta["kind"]
    where = str(onnx_path_or_model) if isinstance(onnx_path_or_model, (str, os.PathLike)) else "the ONNX model"
    check_ops(model, FLOAT_OPS if kind == "float" else INTEGER_OPS, where)
    x, static, T = prepare_input(meta, x, num_steps)
    dtype = _input_dtype(model, INPUT)
    states = _state_names(model)
    outputs = {o.name for o in model.graph.output}
    runner = _ort_runner(onnx_path_or_model, model, kind) if engine == "ort" else _QonnxStep(model, kind)
    n = len(x)
    fixed = static_batch(model)      # a --batch-size export takes exactly that many samples per call
    if fixed is not None:
        batch_size = fixed
    elif batch_size is None:
        batch_size = 512 if engine == "ort" else max(n, 1)
    theta = np.float32(meta["threshold"])
    keep = ["z1", "z2", "z3", "u1", "u2", "u3"] if record else ["z3"]
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in keep}
    for lo in range(0, n, batch_size):
        xb = x[lo:lo + batch_size]
        real = len(xb)
        if fixed is not None and real < fixed:   # pad the last chunk of a static-batch graph with zeros
            xb = np.concatenate([xb, np.zeros((fixed - real, *xb.shape[1:]), dtype=xb.dtype)])
        b = len(xb)
        state = {s: np.zeros(_state_shape(model, s, b), dtype=_input_dtype(model, s)) for s in states}
        frame = xb.astype(dtype) if static else None
        rec: dict[str, list[np.ndarray]] = {k: [] for k in keep}
        for t in range(T):
            feeds = {INPUT: frame if static else np.ascontiguousarray(xb[:, t]).astype(dtype), **state}
            out = runner(feeds)
            state = {s: out[f"{s}_out"] for s in states}
            rec["z3"].append(out[OUTPUT])
            if record:
                for i, u in enumerate(STATE_INPUTS, start=1):
                    rec[f"u{i}"].append(out[f"{u}_out"])
                for i in (1, 2):
                    if f"z{i}" in outputs:
                        rec[f"z{i}"].append(out[f"z{i}"])
                    else:  # the float graph: z = [u − θ > 0] ⟺ [u > θ] in IEEE arithmetic
                        rec[f"z{i}"].append((out[f"u{i}_out"] > theta).astype(out[OUTPUT].dtype))
        for k in keep:
            chunks[k].append(np.stack(rec[k])[:, :real])
    result = {k: np.concatenate(v, axis=1) for k, v in chunks.items()}
    if kind == "integer":
        for k in result:
            result[k] = result[k].astype(np.uint8 if k.startswith("z") else np.int64)
    return result


def run_integer_onnx(onnx_path_or_model: Any, x_int: Any, *, engine: str = "qonnx", record: bool = False,
                     batch_size: int | None = None) -> dict[str, np.ndarray]:
    """Run the integer kind of graph over T steps on integer inputs (see :func:`run_onnx_steps`).

    Returns ``z1, z2, z3`` as uint8 (T, N, ...) always, and ``u1, u2, u3`` int64 with ``record``.
    """
    model, meta = check_qsnn_model(onnx_path_or_model, kind="integer")
    out = run_onnx_steps(model, x_int, engine=engine, record=True, batch_size=batch_size)
    if not record:
        out = {k: v for k, v in out.items() if k.startswith("z")}
    return out


def predictions(z3: np.ndarray) -> np.ndarray:
    """Class per sample: argmax of output spike counts over T (first index wins ties)."""
    return np.asarray(z3).sum(axis=0).argmax(axis=1)
