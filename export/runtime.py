"""Host loops over T for the one-step qsnn QONNX graphs (no torch needed).

The exported graph is one time step; :func:`run_onnx_steps` runs it T times, feeding each state
output (``u1_out``... and, for delayed profiles, ``d1_out``...) back into its input, zeros at t = 0.

Engines:

* ``"ort"``: onnxruntime. A float graph is first converted with qonnx's ``QuantToQCDQ`` (each
  ``Quant`` becomes ``QuantizeLinear → Clip → DequantizeLinear``, which onnxruntime runs); graph
  optimisations are off so every op runs as written. Fast: this is the "trained model" of qsnn-sim.
  What does not change over T (for a static image everything computed from x and the weights
  alone, e.g. layer 1's current; for frames the weights' QCDQ chains) runs once per batch as a
  prefix graph (:func:`split_time_invariant`): the same nodes on the same inputs, so the same bits.
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

from .format import (
    FLOAT_OPS,
    INPUT,
    INTEGER_OPS,
    check_ops,
    check_qsnn_model,
    fix_batch_size,
    layer_count,
    membrane_name,
    output_name,
    spike_name,
    static_batch,
)

ENGINES = ("ort", "qonnx")
_ONNX_TO_NP = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64}


def _input_dtype(model: onnx.ModelProto, name: str) -> np.dtype:
    vi = next(i for i in model.graph.input if i.name == name)
    return np.dtype(_ONNX_TO_NP.get(vi.type.tensor_type.elem_type, np.float32))


def _state_names(model: onnx.ModelProto) -> list[str]:
    """State inputs (u1..uL, then any delay lines d1..dL), each fed back from ``<name>_out``."""
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
        raise ExportError(
            f"input of shape {x.shape} does not match the model's input (N, {', '.join(map(str, shape))}) "
            f"or (N, T, {', '.join(map(str, shape))})"
        )
    if T < 1:
        raise ExportError(f"num_steps must be >= 1, got {T}")
    if meta["kind"] == "integer":
        if not np.issubdtype(x.dtype, np.integer):
            if not np.all(np.isfinite(x)) or np.any(x != np.round(x)):
                raise ExportError(
                    "the integer graph takes integer inputs (uint8 pixels or event counts), got non-integers"
                )
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
                raise ExportError(
                    f"{where}: QuantToQCDQ cannot convert the graph ({type(exc).__name__}: {reason}); "
                    "the file is damaged or edited: export the checkpoint again"
                ) from None
            left = [n.op_type for n in model.graph.node if n.op_type == "Quant"]
            if left:
                raise ExportError("QuantToQCDQ could not convert every Quant node (bit width > 8?); use engine='qonnx'")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        opts.log_severity_level = 3
        # no busy-waiting of onnxruntime's pool between the host loop's calls (it steals the core the
        # rest of the loop, or another process, needs)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ExportError(f"{where}: onnxruntime cannot load the graph: {str(exc).splitlines()[0][:200]}") from None
        self.outputs = [o.name for o in model.graph.output]
        # the time-invariant part of the step (for a static image: everything computed from x and the
        # weights alone, e.g. layer 1's current; for event frames: the weights' QCDQ chains) as a
        # prefix run once per batch, and the rest as the per-step graph (None: nothing to hoist)
        self.hoisted: dict[bool, tuple[Any, Any, list[str], list[str]] | None] = {}
        self._model, self._opts = model, opts

    def __call__(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return dict(zip(self.outputs, self.session.run(self.outputs, feeds)))

    def split(self, static: bool):
        """(prefix session, step session, prefix outputs, step inputs) for the host loop, or None."""
        if static not in self.hoisted:
            import onnxruntime as ort

            parts = split_time_invariant(self._model, static)
            if parts is None:
                self.hoisted[static] = None
            else:
                prefix, step, frontier = parts
                try:
                    sessions = [
                        ort.InferenceSession(m.SerializeToString(), self._opts, providers=["CPUExecutionProvider"])
                        for m in (prefix, step)
                    ]
                except Exception:  # an unusual graph: run it whole, as written
                    self.hoisted[static] = None
                else:
                    self.hoisted[static] = (sessions[0], sessions[1], frontier, [i.name for i in step.graph.input])
        return self.hoisted[static]


def split_time_invariant(
    model: onnx.ModelProto, static: bool
) -> tuple[onnx.ModelProto, onnx.ModelProto, list[str]] | None:
    """Split a one-step graph into (prefix, step, frontier): the prefix computes every tensor that does
    not change over T (it depends on the weights only, and on ``x`` when ``static``), the step graph
    the rest from the frontier tensors, ``x`` and the states. The same nodes run on the same inputs,
    so the loop's results are the unsplit graph's, bit for bit. None when nothing is hoisted.
    """
    from onnx import helper, shape_inference

    graph = model.graph
    states = {i.name for i in graph.input if i.name != INPUT}
    varying = set(states) | (set() if static else {INPUT})
    pre_nodes, step_nodes = [], []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if any(name in varying for name in node.input if name):
            step_nodes.append(node)
            varying.update(node.output)
        else:
            pre_nodes.append(node)
    produced = {o for n in pre_nodes for o in n.output}
    outputs = {o.name for o in graph.output}
    frontier = sorted({name for n in step_nodes for name in n.input if name in produced})
    if not pre_nodes or not frontier or produced & outputs:
        return None
    try:
        typed = shape_inference.infer_shapes(model)
    except Exception:
        return None
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(typed.graph.value_info) + list(typed.graph.output)}
    if any(not types.get(name) for name in frontier):
        return None
    inits = {i.name: i for i in graph.initializer}
    graph_inputs = {i.name: i for i in graph.input}

    def used(nodes):
        return {name for n in nodes for name in n.input if name}

    def sub(name, nodes, inputs, outs):
        need = used(nodes)
        g = helper.make_graph(nodes, name, inputs, outs, initializer=[inits[k] for k in inits if k in need])
        m = helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)
        return m

    pre_in = [graph_inputs[INPUT]] if INPUT in used(pre_nodes) else []
    prefix = sub("prefix", pre_nodes, pre_in, [helper.make_tensor_value_info(f, types[f], None) for f in frontier])
    step_in = [helper.make_tensor_value_info(f, types[f], None) for f in frontier]
    step_in += [i for i in graph.input if i.name in used(step_nodes)]
    step = sub("step", step_nodes, step_in, list(graph.output))
    return prefix, step, frontier


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


def run_onnx_steps(
    onnx_path_or_model: Any,
    x: Any,
    num_steps: int | None = None,
    engine: str = "ort",
    record: bool = False,
    batch_size: int | None = None,
) -> dict[str, np.ndarray]:
    """Run a qsnn QONNX graph (float or integer kind) over T steps on a batch.

    Args:
        onnx_path_or_model: path, ``onnx.ModelProto`` or qonnx ``ModelWrapper`` of a qsnn export.
        x: static frames (N, C, H, W), repeated every step, or event frames (N, T, C, H, W). Float
            kind: the real-valued input (pixels/255, counts). Integer kind: the integers.
        num_steps: T; default the metadata's ``num_steps`` (static) or the number of frames (events).
        engine: ``"ort"`` (onnxruntime, after ``QuantToQCDQ``) or ``"qonnx"`` (``execute_onnx``).
        record: also return every layer's membranes ``u1..uL`` and the hidden spikes ``z1..z(L−1)``.
        batch_size: samples per graph call (default: 512 for ort, all of x for qonnx).

    Returns:
        ``{"zL": (T, N, classes)}`` (L the number of layers: ``z3`` for the paper's network) plus, with
        ``record``, ``z1..z(L−1)`` and ``u1..uL`` (T, N, ...).
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
    fixed = static_batch(model)  # a --batch-size export takes exactly that many samples per call
    if fixed is not None:
        batch_size = fixed
    elif batch_size is None:
        batch_size = 512 if engine == "ort" else max(n, 1)
    L = layer_count(meta)
    last = output_name(L)
    thetas = [np.float32(layer.get("threshold", meta["threshold"])) for layer in meta["layers"]]
    keep = (
        [*(spike_name(i) for i in range(1, L + 1)), *(membrane_name(i) for i in range(1, L + 1))] if record else [last]
    )
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in keep}
    for lo in range(0, n, batch_size):
        xb = x[lo : lo + batch_size]
        real = len(xb)
        if fixed is not None and real < fixed:  # pad the last chunk of a static-batch graph with zeros
            xb = np.concatenate([xb, np.zeros((fixed - real, *xb.shape[1:]), dtype=xb.dtype)])
        b = len(xb)
        state = {s: np.zeros(_state_shape(model, s, b), dtype=_input_dtype(model, s)) for s in states}
        frame = xb.astype(dtype) if static else None
        rec: dict[str, list[np.ndarray]] = {k: [] for k in keep}
        hoisted = runner.split(static) if engine == "ort" else None
        if hoisted is not None:  # the time-invariant prefix, once per batch
            prefix, step, frontier, step_inputs = hoisted
            pre_feed = {INPUT: frame} if static and INPUT in {i.name for i in prefix.get_inputs()} else {}
            invariant = dict(zip(frontier, prefix.run(frontier, pre_feed)))
        for t in range(T):
            feeds = {INPUT: frame if static else np.ascontiguousarray(xb[:, t]).astype(dtype), **state}
            if hoisted is not None:
                feeds.update(invariant)
                out = dict(zip(runner.outputs, step.run(runner.outputs, {k: feeds[k] for k in step_inputs})))
            else:
                out = runner(feeds)
            state = {s: out[f"{s}_out"] for s in states}
            rec[last].append(out[last])
            if record:
                for i in range(1, L + 1):
                    rec[membrane_name(i)].append(out[f"{membrane_name(i)}_out"])
                for i in range(1, L):
                    z = spike_name(i)
                    if z in outputs:
                        rec[z].append(out[z])
                    else:  # the float graph: z = [u − θ > 0] ⟺ [u > θ] in IEEE arithmetic
                        rec[z].append((out[f"{membrane_name(i)}_out"] > thetas[i - 1]).astype(out[last].dtype))
        for k in keep:
            chunks[k].append(np.stack(rec[k])[:, :real])
    result = {k: np.concatenate(v, axis=1) for k, v in chunks.items()}
    if kind == "integer":
        for k in result:
            result[k] = result[k].astype(np.uint8 if k.startswith("z") else np.int64)
    return result


def run_integer_onnx(
    onnx_path_or_model: Any, x_int: Any, *, engine: str = "qonnx", record: bool = False, batch_size: int | None = None
) -> dict[str, np.ndarray]:
    """Run the integer kind of graph over T steps on integer inputs (see :func:`run_onnx_steps`).

    Returns the spikes ``z1..zL`` as uint8 (T, N, ...) always, and the membranes ``u1..uL`` int64 with ``record``.
    """
    model, meta = check_qsnn_model(onnx_path_or_model, kind="integer")
    out = run_onnx_steps(model, x_int, engine=engine, record=True, batch_size=batch_size)
    if not record:
        out = {k: v for k, v in out.items() if k.startswith("z")}
    return out


def predictions(z_out: np.ndarray) -> np.ndarray:
    """Class per sample: argmax of output spike counts (T, N, classes) over T (first index wins ties)."""
    return np.asarray(z_out).sum(axis=0).argmax(axis=1)
