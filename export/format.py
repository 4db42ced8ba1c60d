"""The qsnn QONNX file: one time step of the network, membranes as explicit graph inputs/outputs.

Graph interface (both kinds), for a network of L synaptic layers (L from the metadata ``layers``;
the names come from :func:`state_inputs`, :func:`state_outputs`, :func:`delay_inputs`,
:func:`output_name`, the one place that derives them from L)::

    inputs:  x   the input frame of this step, (N, C, H, W)
             u1 .. uL   membrane potentials after the previous step (zeros at t = 0)
    outputs: zL  output spikes of this step, (N, classes)
             u1_out .. uL_out   membranes after this step (feed them back as u1 .. uL)

The ``"float"`` kind (:mod:`.qonnx_float`) takes the real-valued input (pixels/255 or event counts)
in float32 and reproduces the trained PyTorch model; the ``"integer"`` kind (:mod:`.qonnx_int`)
takes the integer input (uint8 pixels or counts) in float64 and carries the chip arithmetic of a
profile, with extra outputs ``z1 .. z(L−1)`` (spikes of the hidden layers) and, for a profile with a
synaptic delay k, delay-line states ``d1..dL`` → ``d1_out..dL_out`` of shape (N, k, ...). A float
export of a model trained with a one-step synaptic delay has the delay lines ``d1..dL`` (x, z1, ...,
z(L−1) of the previous step) too.

The batch dimension is dynamic (``N``) unless the file was exported with ``batch_size=n``
(``qsnn-export --to qonnx --batch-size n``, FINN's convention is 1), which fixes it on every input,
output and intermediate tensor (:func:`fix_batch_size`).

Roles, not names: the metadata ``interface`` lists the role of each graph input and output by
position; a graph whose inputs/outputs a tool renamed (``qonnx-cleanup``: ``global_in``...) is
mapped back by :func:`restore_interface`, checked against the graph's structure.

Datatypes: spike tensors carry the qonnx annotation ``BINARY`` (:func:`annotate_datatypes`), so
``InferDataTypes`` and ``inference_cost`` see 1-bit activations next to the b-bit ``Quant`` weights.

Weights: ``<layer>.weight`` initializers (behind a ``Quant`` node for quantized checkpoints), a
synaptic bias ``<layer>.bias``; a dense layer's weight is stored (in, out) for ``MatMul``.

Versions: 2 (this qsnn) describes any depth and records per layer its stride, padding, bias, weight
bits, β and θ, and the architecture spec (``arch``); version 1 files (the paper's three-layer
network, from earlier qsnn releases) are read as version 2 with the defaults filled in
(:func:`upgrade_metadata`); any other version is refused, saying to export again.

Everything a deployer needs is in the ONNX ``metadata_props`` (all values are strings; lists and
dicts are JSON): see :data:`FLOAT_KEYS`, :data:`LAYER_KEYS` and :func:`read_metadata`.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
from typing import Any

import onnx

from qsnn.atomic import atomic_write_bytes
from qsnn.errors import ExportError, damaged_file, not_a_regular_file
from qsnn.jsonio import to_jsonable

FORMAT = "qsnn-qonnx"
FORMAT_VERSION = 2
#: Versions this qsnn reads: 1 (three layers, no per-layer record of stride/padding/bias/bits) is
#: read as a version-2 file with the defaults filled in (:func:`upgrade_metadata`).
READS_VERSIONS = (1, 2)
KINDS = ("float", "integer")
INPUT = "x"


# --------------------------------------------------------------------------------------------------
# The graph interface of an L-layer network: the one place its names are derived from L


def state_inputs(n: int) -> tuple[str, ...]:
    """Membrane inputs of an n-layer graph: ``u1 .. un``."""
    return tuple(f"u{i}" for i in range(1, n + 1))


def state_outputs(n: int) -> tuple[str, ...]:
    """Membrane outputs of an n-layer graph: ``u1_out .. un_out`` (fed back as ``u1 .. un``)."""
    return tuple(f"{u}_out" for u in state_inputs(n))


def delay_inputs(n: int) -> tuple[str, ...]:
    """Delay-line inputs of an n-layer graph with a synaptic delay: ``d1 .. dn`` (the input of layer i
    at the previous step: x, z1, ..., z(n−1))."""
    return tuple(f"d{i}" for i in range(1, n + 1))


def delay_outputs(n: int) -> tuple[str, ...]:
    """Delay-line outputs ``d1_out .. dn_out`` (fed back as ``d1 .. dn``)."""
    return tuple(f"{d}_out" for d in delay_inputs(n))


def spike_name(i: int) -> str:
    """Spikes of layer i (1-based): ``z<i>``."""
    return f"z{i}"


def output_name(n: int) -> str:
    """The output spikes of an n-layer graph: ``z<n>``."""
    return spike_name(n)


def membrane_name(i: int) -> str:
    """Membrane of layer i (1-based): ``u<i>``."""
    return f"u{i}"


def graph_inputs(n: int, delay: bool = False) -> list[str]:
    """Graph inputs in order: ``x, u1..un`` (``, d1..dn`` with a synaptic delay)."""
    return [INPUT, *state_inputs(n), *(delay_inputs(n) if delay else ())]


def graph_outputs(n: int, delay: bool = False) -> list[str]:
    """Graph outputs in order: ``zn, u1_out..un_out`` (``, d1_out..dn_out`` with a synaptic delay)."""
    return [output_name(n), *state_outputs(n), *(delay_outputs(n) if delay else ())]


def layer_count(meta: dict[str, Any]) -> int:
    """L, the number of synaptic layers a file's metadata lists."""
    layers = meta.get("layers")
    return len(layers) if isinstance(layers, list) else 0


def precision_name(weight_bits: list[int] | tuple[int, ...] | None) -> str:
    """The weight precision a model really has: ``"int4"``, ``"int8"``, ``"mixed 2..8-bit"`` (layers
    of different widths), or ``"fp32"`` (``None``: float weights)."""
    if not weight_bits:
        return "fp32"
    bits = sorted(set(int(b) for b in weight_bits))
    return f"int{bits[0]}" if len(bits) == 1 else f"mixed {bits[0]}..{bits[-1]}-bit"


#: Metadata every qsnn QONNX file carries (values are strings; JSON for lists and dicts).
#: ``input_max`` is the largest integer input of one cell per step, what the first layer and the
#: chip's input port take and what the compiler's worst-case bound assumes: 255 for pixels, the
#: encoding's clip 2^event_bits − 1 for event counts; event exports also carry ``event_frames``
#: (:class:`qsnn.events.EventFrames`: bin, downsampling, count clip, test cut), which ``qsnn-sim``
#: uses to bin the data exactly as training did.
FLOAT_KEYS = (
    "format",
    "format_version",
    "kind",
    "dataset",
    "classes",
    "num_steps",
    "encoding",
    "input_scale",
    "input_max",
    "input_shape",
    "beta",
    "threshold",
    "slope",
    "reset",
    "precision",
    "weight_bits",
    "quant_scale",
    "batch_norm",
    "dropout",
    "layers",
    "arch",
    "qsnn_version",
    "checkpoint_sha256",
)
#: Per-layer record in the metadata ``layers`` (format version 2): ``name`` (``conv1``, ..., ``fc``),
#: ``kind`` ``"conv"`` | ``"dense"``, ``kernel`` (conv: k; dense: 1), ``stride``, ``padding`` (symmetric,
#: each side), ``pool`` (p×p average pooling of the current, 1 = none), ``bias`` (a synaptic bias),
#: ``weight_bits`` (b; 32 for float weights), ``weight_scale`` ``"tensor"`` | ``"channel"`` | ``"none"``,
#: ``membrane`` (its state input ``u<i>``), ``shape`` (its spikes for one sample), ``beta``, ``threshold``.
#: ``precision`` names the weights as they are (:func:`precision_name`), ``weight_bits`` the widest layer's.
LAYER_KEYS = (
    "name",
    "kind",
    "kernel",
    "stride",
    "padding",
    "pool",
    "bias",
    "weight_bits",
    "weight_scale",
    "membrane",
    "shape",
    "beta",
    "threshold",
)
#: Extra metadata of the integer kind.
INTEGER_KEYS = ("profile", "network", "compile_report")

#: Metadata values stored as JSON (decoded by :func:`read_metadata`).
JSON_KEYS = (
    "classes",
    "input_shape",
    "layers",
    "batch_norm",
    "profile",
    "network",
    "compile_report",
    "versions",
    "bn_exact",
    "interface",
    "event_frames",
)
NUMBER_KEYS = (
    "format_version",
    "num_steps",
    "input_scale",
    "input_max",
    "beta",
    "threshold",
    "slope",
    "weight_bits",
    "dropout",
    "synaptic_delay",
)

#: The ONNX ops a float export may contain (besides qonnx's Quant).
FLOAT_OPS = frozenset(
    {
        "Quant",
        "Conv",
        "AveragePool",
        "BatchNormalization",
        "MatMul",
        "Gemm",
        "Transpose",
        "Flatten",
        "Reshape",
        "Sub",
        "Greater",
        "Cast",
        "Clip",
        "Mul",
        "Add",
        "Identity",
        "Dropout",
        "Constant",
    }
)

#: The ONNX ops an integer export may contain.
INTEGER_OPS = frozenset(
    {
        "Conv",
        "AveragePool",
        "MatMul",
        "Flatten",
        "Cast",
        "Mul",
        "Add",
        "Sub",
        "Floor",
        "Abs",
        "Sign",
        "Greater",
        "Clip",
        "Gather",
        "Unsqueeze",
        "Slice",
        "Concat",
        "Identity",
    }
)


def load_model(source: Any) -> onnx.ModelProto:
    """An ``onnx.ModelProto`` from a path, a ModelProto or a qonnx ``ModelWrapper``.

    Raises :class:`ExportError` naming the file if it does not exist or is not an ONNX model.
    """
    if isinstance(source, onnx.ModelProto):
        return source
    if hasattr(source, "model") and isinstance(getattr(source, "model"), onnx.ModelProto):
        return source.model
    path = Path(os.fspath(source))
    problem = not_a_regular_file(path)
    if problem:
        raise ExportError(f"{path}: {problem}; expected an ONNX file written by qsnn-export")
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # DecodeError and friends
        raise ExportError(
            f"{path}: not an ONNX model ({type(exc).__name__}); pass a file written by qsnn-export"
        ) from None
    if not model.graph.node:
        raise ExportError(f"{path}: not an ONNX model (empty graph); pass a file written by qsnn-export")
    return model


def _where(source: Any) -> str:
    return str(source) if isinstance(source, (str, os.PathLike)) else "the ONNX model"


def read_metadata(model: onnx.ModelProto, where: str = "the ONNX model") -> dict[str, Any]:
    """The metadata_props as a dict, JSON values decoded and numbers parsed."""
    meta: dict[str, Any] = {}
    for prop in model.metadata_props:
        value: Any = prop.value
        try:
            if prop.key in JSON_KEYS:
                value = json.loads(value)
            elif prop.key in NUMBER_KEYS:
                value = float(value) if any(c in value for c in ".eE") or "inf" in value else int(value)
        except ValueError:
            raise ExportError(
                f"{where}: metadata field {prop.key!r} has an unreadable value {prop.value[:60]!r}"
            ) from None
        meta[prop.key] = value
    return meta


def set_metadata(model: onnx.ModelProto, meta: dict[str, Any]) -> None:
    """Replace the metadata_props with ``meta`` (values: str, numbers, or JSON-able lists/dicts)."""
    del model.metadata_props[:]
    for key, value in meta.items():
        if isinstance(value, str):
            text = value
        elif isinstance(value, bool) or isinstance(value, (list, tuple, dict)) or value is None:
            text = json.dumps(to_jsonable(value))
        elif isinstance(value, float):
            text = repr(float(value))
        else:
            text = str(value)
        model.metadata_props.add(key=key, value=text)


def damaged_file_errors(where: str):
    """:func:`qsnn.errors.damaged_file` for a qsnn QONNX file: around its parsing only."""
    return damaged_file(where, "qsnn QONNX file", "export the checkpoint again with qsnn-export")


def check_qsnn_model(source: Any, kind: str | None = None) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Load ``source`` and check that it is a qsnn QONNX export (of ``kind``, if given).

    Checks the metadata (format, version, kind, the fields a runner needs) and the graph interface
    of its L layers (inputs ``x, u1..uL``, outputs ``zL, u1_out..uL_out``). Raises :class:`ExportError`
    saying what is wrong. A version-1 file's metadata comes back upgraded (:func:`upgrade_metadata`).
    """
    where = _where(source)
    model = load_model(source)
    with damaged_file_errors(where):
        return _check_qsnn_model(model, kind, where)


def _check_qsnn_model(model: onnx.ModelProto, kind: str | None, where: str) -> tuple[onnx.ModelProto, dict[str, Any]]:
    meta = read_metadata(model, where)
    if meta.get("format") != FORMAT:
        found = f"format {meta['format']!r}" if "format" in meta else "no 'format' metadata"
        raise ExportError(
            f"{where}: not a qsnn QONNX export ({found}; expected format {FORMAT!r}); "
            "write one with `qsnn-export CHECKPOINT --to qonnx`"
        )
    version = meta.get("format_version")
    if version not in READS_VERSIONS or isinstance(version, bool):
        raise ExportError(
            f"{where}: qsnn QONNX format version {version!r}, this qsnn ({qsnn_version()}) reads "
            f"versions {list(READS_VERSIONS)}; export the checkpoint again with this qsnn: "
            "`qsnn-export CHECKPOINT --to qonnx`"
        )
    if meta.get("kind") not in KINDS:
        raise ExportError(f"{where}: metadata 'kind' is {meta.get('kind')!r}, expected one of {KINDS}")
    if kind is not None and meta["kind"] != kind:
        hint = (
            "compile it under a profile first (`qsnn-export ... --to qonnx --profile fpga`)"
            if kind == "integer"
            else "pass the float export (`qsnn-export CHECKPOINT --to qonnx` without --profile)"
        )
        raise ExportError(f"{where}: this is the {meta['kind']!r} kind of qsnn export, expected {kind!r}; {hint}")
    meta = upgrade_metadata(meta)
    required = FLOAT_KEYS + (INTEGER_KEYS if meta["kind"] == "integer" else ())
    missing = [k for k in required if k not in meta]
    if missing:
        raise ExportError(f"{where}: qsnn QONNX metadata lacks {missing}; the file is incomplete or was edited")
    n = layer_count(meta)
    if n < 1:
        raise ExportError(f"{where}: metadata 'layers' lists no layers; the file is incomplete or was edited")
    model = restore_interface(model, meta, where)
    inputs = [i.name for i in model.graph.input]
    outputs = [o.name for o in model.graph.output]
    for name in (INPUT, *state_inputs(n)):
        if name not in inputs:
            raise ExportError(
                f"{where}: graph input {name!r} is missing (inputs: {inputs}); a qsnn export of {n} "
                f"layers has the input frame 'x' and the membranes {list(state_inputs(n))} as inputs"
            )
    for name in (output_name(n), *state_outputs(n)):
        if name not in outputs:
            raise ExportError(
                f"{where}: graph output {name!r} is missing (outputs: {outputs}); a qsnn export of {n} "
                f"layers has the output spikes {output_name(n)!r} and the membranes "
                f"{list(state_outputs(n))} as outputs"
            )
    return model, meta


def qsnn_version() -> str:
    import qsnn

    return str(getattr(qsnn, "__version__", "?"))


def upgrade_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """A version-1 file's metadata as version 2 describes it (a new dict; a version-2 one unchanged).

    Version 1 held the paper's three-layer network only: every conv 5×5 of stride 1 without padding,
    no synaptic biases, the run's ``weight_bits`` and one β and θ for all layers; the architecture
    spec is the paper's network of the dataset.
    """
    if meta.get("format_version") != 1:
        return meta
    meta = dict(meta)
    quantized = meta.get("precision") != "fp32"
    bits = meta.get("weight_bits", 4 if quantized else 32)
    layers = []
    for layer in meta.get("layers", []) if isinstance(meta.get("layers"), list) else []:
        if not isinstance(layer, dict):
            layers.append(layer)
            continue
        conv = layer.get("kind") == "conv"
        layers.append(
            {
                "kernel": 5 if conv else 1,
                "stride": 1,
                "padding": 0,
                "bias": False,
                "weight_bits": bits,
                "weight_scale": "tensor" if quantized else "none",
                "beta": meta.get("beta"),
                "threshold": meta.get("threshold"),
                **layer,
            }
        )
    meta["layers"] = layers
    if "arch" not in meta:
        meta["arch"] = _v1_arch(layers)
    return meta


def _v1_arch(layers: list[Any]) -> str:
    """The spec of a version-1 file's three layers (5×5 convs as the paper's network)."""
    tokens = []
    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("shape"), list) or not layer["shape"]:
            return ""
        if layer.get("kind") == "conv":
            tokens.append(f"{layer['shape'][0]}C5" + (f"-AP{layer['pool']}" if layer.get("pool", 1) > 1 else ""))
        else:
            tokens.append(f"D{layer['shape'][0]}")
    return "-".join(tokens)


def interface(model: onnx.ModelProto) -> dict[str, list[str]]:
    """The roles of the graph's inputs and outputs, in graph order (metadata ``interface``)."""
    return {"inputs": [i.name for i in model.graph.input], "outputs": [o.name for o in model.graph.output]}


def _dims(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]


def _role_shapes(meta: dict[str, Any]) -> dict[str, list[int]]:
    """Per-sample shapes the metadata promises for the graph's inputs and outputs."""
    n = layer_count(meta)
    shapes: dict[str, list[int]] = {
        INPUT: list(meta.get("input_shape", [])),
        output_name(n): [len(meta.get("classes", []))],
    }
    for i, layer in enumerate(meta.get("layers", []) if n else []):
        if isinstance(layer, dict):
            shape = list(layer.get("shape", []))
            shapes[membrane_name(i + 1)] = shapes[f"{membrane_name(i + 1)}_out"] = shapes[spike_name(i + 1)] = shape
    return shapes


def restore_interface(model: onnx.ModelProto, meta: dict[str, Any], where: str = "the ONNX model") -> onnx.ModelProto:
    """``model`` with its graph inputs/outputs under qsnn's role names (``x``, ``u1``..., ``zL``, ``u1_out``...).

    Tools such as ``qonnx-cleanup`` rename graph inputs and outputs (``global_in``, ``global_out_1``...)
    but keep their order. The metadata ``interface`` records each position's role; a renamed graph is
    mapped back by position, and the mapping is checked against the graph's structure: the shapes the
    metadata promises (the frame, each layer's membrane, the class spikes) and the ops that use each
    tensor (the frame feeds a synapse, a membrane feeds its leak and reset, spikes come from a
    comparison). A copy is returned when anything is renamed; the model itself otherwise.
    """
    roles = meta.get("interface")
    names_in = [i.name for i in model.graph.input]
    names_out = [o.name for o in model.graph.output]
    if not isinstance(roles, dict):
        return model
    want_in, want_out = list(roles.get("inputs", [])), list(roles.get("outputs", []))
    if want_in == names_in and want_out == names_out:
        return model
    if len(want_in) != len(names_in) or len(want_out) != len(names_out):
        raise ExportError(
            f"{where}: the graph has {len(names_in)} inputs and {len(names_out)} outputs, its metadata "
            f"'interface' lists {len(want_in)} and {len(want_out)}; the file was edited"
        )
    consumers: dict[str, list[str]] = {}
    producer: dict[str, str] = {}
    for node in model.graph.node:
        for t in node.input:
            consumers.setdefault(t, []).append(node.op_type)
        for t in node.output:
            producer[t] = node.op_type
    shapes = _role_shapes(meta)
    ios = list(zip(model.graph.input, want_in)) + list(zip(model.graph.output, want_out))
    for vi, role in ios:
        dims = _dims(vi)
        want = shapes.get(role)
        if want is not None and want and dims[1:] and [d for d in dims[1:]] != want and -1 not in dims[1:]:
            raise ExportError(
                f"{where}: graph {'input' if vi in model.graph.input else 'output'} {vi.name!r} "
                f"(role {role!r} by position) has shape {dims}, the metadata says (N, {want}); "
                "the inputs or outputs were reordered"
            )
    ops_of = {role: set(consumers.get(vi.name, [])) for vi, role in zip(model.graph.input, want_in)}
    if INPUT in ops_of and not ops_of[INPUT] & {"Conv", "MatMul", "Gemm", "Cast", "Identity", "Unsqueeze", "Mul"}:
        raise ExportError(f"{where}: graph input {names_in[want_in.index(INPUT)]!r} (role 'x') feeds no synapse")
    for role in state_inputs(layer_count(meta)):
        if role in ops_of and not ops_of[role] & {"Sub", "Greater"}:
            raise ExportError(
                f"{where}: graph input {names_in[want_in.index(role)]!r} (role {role!r}) is not a "
                "membrane (no reset comparison reads it)"
            )
    for vi, role in zip(model.graph.output, want_out):
        if vi.name not in producer:
            raise ExportError(
                f"{where}: graph output {vi.name!r} (role {role!r}) is produced by no node; the file was edited"
            )
        if role.startswith("z") and producer.get(vi.name) not in ("Cast", "Identity"):
            raise ExportError(f"{where}: graph output {vi.name!r} (role {role!r}) is not a spike tensor")
    rename = {vi.name: role for vi, role in ios if vi.name != role}
    taken = {t for n in model.graph.node for t in (*n.input, *n.output)} | {i.name for i in model.graph.initializer}
    clash = sorted((taken - set(rename)) & set(rename.values()))
    if clash:
        raise ExportError(f"{where}: cannot restore the role names {clash}: other tensors carry them")
    model = copy.deepcopy(model)
    graph = model.graph
    for vi in (*graph.input, *graph.output, *graph.value_info):
        if vi.name in rename:
            vi.name = rename[vi.name]
    for node in graph.node:
        for i, t in enumerate(node.input):
            if t in rename:
                node.input[i] = rename[t]
        for i, t in enumerate(node.output):
            if t in rename:
                node.output[i] = rename[t]
    for ann in graph.quantization_annotation:
        if ann.tensor_name in rename:
            ann.tensor_name = rename[ann.tensor_name]
    return model


def spike_tensors(model: onnx.ModelProto) -> list[str]:
    """Tensors that hold spikes: ``Cast(Greater(·, ·))``, the {0, 1} outputs of every LIF."""
    producer = {o: n for n in model.graph.node for o in n.output}
    out = []
    for node in model.graph.node:
        if node.op_type == "Cast" and node.input and getattr(producer.get(node.input[0]), "op_type", None) == "Greater":
            out.append(node.output[0])
    return out


def annotate_datatypes(model: onnx.ModelProto, meta: dict[str, Any] | None = None) -> onnx.ModelProto:
    """qonnx datatype annotations: spikes ``BINARY`` (so ``InferDataTypes`` and ``inference_cost``
    count 1-bit activations), the integer kind's input ``UINT8`` / ``UINT16``; annotations of
    tensors no longer in the graph (left by constant folding, with random names) are dropped."""
    graph = model.graph
    present = (
        {t for n in graph.node for t in (*n.input, *n.output)}
        | {i.name for i in graph.initializer}
        | {i.name for i in graph.input}
        | {o.name for o in graph.output}
    )
    keep = [a for a in graph.quantization_annotation if a.tensor_name in present]
    wanted = {t: "BINARY" for t in spike_tensors(model)}
    if meta and meta.get("kind") == "integer":
        wanted[INPUT] = "UINT8" if meta.get("encoding") == "static" else "UINT16"
    del graph.quantization_annotation[:]
    for ann in keep:
        if ann.tensor_name not in wanted:
            graph.quantization_annotation.append(ann)
    for name, dtype in wanted.items():
        ann = graph.quantization_annotation.add()
        ann.tensor_name = name
        entry = ann.quant_parameter_tensor_names.add()
        entry.key, entry.value = "finn_datatype", dtype
    return model


def check_ops(model: onnx.ModelProto, allowed: frozenset[str], where: str = "the ONNX model") -> None:
    """Raise :class:`ExportError` if the graph has an op outside ``allowed``."""
    unknown = sorted({n.op_type for n in model.graph.node if n.op_type not in allowed})
    if unknown:
        raise ExportError(
            f"{where}: unsupported op(s) {unknown} in the graph; a qsnn export uses only {sorted(allowed)}"
        )


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Check and write ``model`` atomically (a reader never sees a half-written file)."""
    path = Path(path)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:
        raise ExportError(f"the exported graph does not pass onnx.checker: {str(exc).splitlines()[0][:200]}") from None
    atomic_write_bytes(path, model.SerializeToString())
    return path


def cleanup(model: onnx.ModelProto) -> onnx.ModelProto:
    """qonnx's cleanup without renaming tensors, so ``x``, ``u1``... keep their names.

    Shape inference, constant folding that keeps the ``Quant`` nodes, Transpose folded into the
    Quant initializer, unused tensors and initializer-inputs removed, unique node names.
    """
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.fold_constants import FoldConstants
    from qonnx.transformation.general import GiveUniqueNodeNames, RemoveStaticGraphInputs, RemoveUnusedTensors
    from qonnx.transformation.infer_shapes import InferShapes
    from qonnx.transformation.quant_constant_folding import FoldTransposeIntoQuantInit

    wrapper = ModelWrapper(copy.deepcopy(model))
    for node in wrapper.graph.node:  # Brevitas may tag Quant with the old domain
        if node.op_type in ("Quant", "BipolarQuant", "Trunc"):
            node.domain = "qonnx.custom_op.general"
    for transform in (
        InferShapes(),
        FoldConstants(exclude_op_types=["Quant", "BipolarQuant"]),
        FoldTransposeIntoQuantInit(),
        RemoveUnusedTensors(),
        RemoveStaticGraphInputs(),
        GiveUniqueNodeNames(),
        InferShapes(),
    ):
        wrapper = wrapper.transform(transform)
    return wrapper.model


def static_batch(model: onnx.ModelProto) -> int | None:
    """The fixed batch size of the graph's input frame, or None for a dynamic batch."""
    for vi in model.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if dims:
            return int(dims[0].dim_value) if dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    return None


def fix_batch_size(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of ``model`` whose batch dimension is ``batch`` on every input, output and intermediate
    tensor (qonnx's executor and FINN need it; ``qsnn-export --to qonnx --batch-size N``)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.infer_shapes import InferShapes

    model = copy.deepcopy(model)
    del model.graph.value_info[:]
    for vi in list(model.graph.input) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if dims:
            dims[0].Clear()
            dims[0].dim_value = int(batch)
    return ModelWrapper(model).transform(InferShapes()).model


def finish_model(onnx_model: onnx.ModelProto, meta: dict[str, Any], batch_size: int | None) -> onnx.ModelProto:
    """The touches every qsnn QONNX export gets, in place: a static batch if asked, qonnx datatype
    annotations (spikes BINARY), the interface roles and the metadata."""
    if batch_size is not None:
        fixed = fix_batch_size(onnx_model, batch_size)
        onnx_model.graph.CopyFrom(fixed.graph)
        meta["batch"] = f"static: {int(batch_size)} (every input and output)"
        onnx_model.doc_string = onnx_model.doc_string.replace(
            "Batch dimension N is dynamic.", f"Batch dimension fixed to {int(batch_size)}."
        )
    annotate_datatypes(onnx_model, meta)
    meta["interface"] = interface(onnx_model)
    set_metadata(onnx_model, meta)
    return onnx_model
