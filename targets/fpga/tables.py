"""The ``fpga`` target: weight memories and neuron tables for our reference FPGA core (and a C header).

Per layer ``L{i}_{name}`` (i from 1):

* ``..._weights.mem`` / ``.coe`` / ``.mif``: the weight memory, the same words in three formats
  (Verilog ``$readmemh``, Xilinx COE, Intel MIF). Weights are b-bit two's complement
  (b = the profile's ``weight_bits``, 4 for the paper's QSNNs), flattened in the order
  ``(out, in, ky, kx)`` for conv (``(out, in)`` for dense, ``in`` being the previous layer's spikes
  flattened in ``(C, H, W)`` order) and packed ``word_bits // b`` to a word (default: the widest
  word of whole weights within 32 bits, :func:`default_word_bits`: 32 bits = 8 weights of 4 bits,
  30 bits = 5 weights of 6 bits): weight n lies in word ``n // per_word`` at bits ``[b·(n mod per_word), b·(n mod per_word) + b)``,
  i.e. the **first weight in the least significant bits**. The memory is one continuous
  little-endian bit stream; the last word is padded with zero weights (stated in the manifest).
* ``..._threshold.mem``: one word per output channel, ``threshold_bits`` wide, unsigned,
  holding θ_c >> ``threshold_shift`` (0 for fpga).
* ``..._bias.mem``: one word per output channel, ``bias_bits`` wide, two's complement.
* ``..._leak.mem``: one word, the layer's leak constant (m of ``u ← (m·u) >> leak_bits`` for the
  ``mul`` leak, d of ``u ← u − (u >> d)`` for ``shift``).

``qsnn_model.h`` repeats all of it for a microcontroller or soft core: the profile constants
(membrane bits, guard bits, leak kind and bits, reset, overflow), per-layer geometry, the packed
weight words, thresholds, biases and scales, and ``qsnn_weight()`` that unpacks one weight.

Everything else a core needs (pooling, current shift, shapes, scale factors) is in
``manifest.json``; :func:`read` rebuilds the :class:`~qsnn.network.IntegerNetwork` from the
``.mem`` files and the manifest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from qsnn.arith import from_twos_complement, to_twos_complement
from qsnn.errors import ExportError, LimitsError, ProfileError
from qsnn.network import IntegerLayer, IntegerNetwork

from ..fit import fit_problems, profile_limits
from ..manifest import layer_from_parts, network_from_parts
from ..memfiles import format_coe, format_mem, format_mif, hex_digits, pack_lanes, parse_mem
from . import core

NAME = "fpga"
DESCRIPTION = "weight memories (.mem/.coe/.mif), neuron tables and a C header for the reference FPGA core"
DEFAULT_WORD_BITS = 32
C_WORD_TYPES = {8: "uint8_t", 16: "uint16_t", 32: "uint32_t", 64: "uint64_t"}


# --------------------------------------------------------------------------------------------------
# Options and fit


def default_word_bits(weight_bits: int) -> int:
    """The default memory word for b-bit weights: the widest word of whole weights within
    :data:`DEFAULT_WORD_BITS` (b·⌊32/b⌋: 32 for 2, 4, 8 and 16 bits, 30 for 3, 5, 6, 28 for 7), so that
    every width the profile allows packs as one continuous bit stream with no unused bits."""
    return weight_bits * max(1, DEFAULT_WORD_BITS // weight_bits)


def _options(net: IntegerNetwork, word_bits: int | None = None, weight_bits: int | None = None) -> dict[str, int]:
    wb = int(weight_bits if weight_bits is not None else net.profile.weight_bits)
    if not 2 <= wb <= 16:
        raise ProfileError(f"fpga: weight_bits={wb} must be 2..16")
    word = int(word_bits if word_bits is not None else default_word_bits(wb))
    if word < wb or word > 1024 or word % wb:
        raise ProfileError(
            f"fpga: word_bits={word} must be a multiple of the weight width ({wb} bits), "
            f"between {wb} and 1024 (e.g. 8, 16, 32, 64)"
        )
    return {"word_bits": word, "weight_bits": wb}


def _lanes(lanes: int | None) -> int:
    lanes = core.DEFAULT_LANES if lanes is None else lanes
    if not (
        isinstance(lanes, int)
        and not isinstance(lanes, bool)
        and 1 <= lanes <= core.MAX_LANES
        and lanes & (lanes - 1) == 0
    ):
        raise ProfileError(
            f"fpga: lanes={lanes!r} must be a power of two from 1 to {core.MAX_LANES} "
            "(output channels the core updates per cycle)"
        )
    return lanes


def check(
    net: IntegerNetwork, *, word_bits: int | None = None, weight_bits: int | None = None, lanes: int | None = None
) -> None:
    """Raise :class:`ProfileError` unless the fpga tables can hold ``net`` with these memory widths
    (every problem at once: :func:`problems`)."""
    found = problems(net, word_bits=word_bits, weight_bits=weight_bits, lanes=lanes)
    if found:
        raise LimitsError(found, f"the {NAME} target cannot hold this network")


def problems(
    net: IntegerNetwork, *, word_bits: int | None = None, weight_bits: int | None = None, lanes: int | None = None
) -> list[str]:
    """Every reason the fpga tables cannot hold ``net`` (the leak kind, a weight exponent, the registers:
    :func:`~qsnn.targets.fit.fit_problems`); a wrong option raises :class:`ProfileError` at once."""
    opts = _options(net, word_bits, weight_bits)
    _lanes(lanes)
    p = net.profile
    found = []
    if p.leak not in ("mul", "shift"):
        found.append(
            f"fpga: the network was compiled for profile {p.name!r} with the {p.leak!r} leak; the FPGA core "
            f"implements the 'mul' and 'shift' leaks. Compile it under the fpga profile (--profile fpga)."
        )
    if p.weight_exp_bits or any(layer.weight_exp for layer in net.layers):
        bad = next(
            (f"layer {i} ({layer.name})" for i, layer in enumerate(net.layers, 1) if layer.weight_exp), "the profile"
        )
        found.append(
            f"fpga: {bad} uses a weight exponent, which the FPGA core has no register for; "
            f"compile under the fpga profile."
        )
    # the fpga tables store the bias as it is (no mantissa shift) and the kernels without the pooling folded in
    return found + fit_problems(
        net, profile_limits(p, NAME, weight_bits=opts["weight_bits"], bias_multiple=1, fold_pool=False)
    )


def notes(
    net: IntegerNetwork, *, word_bits: int | None = None, weight_bits: int | None = None, lanes: int | None = None
) -> list[str]:
    """What the folder written for ``net`` will lack: its ``rtl/`` part (the Verilog core) when the core
    cannot run the network (:func:`~.core.family_problem`, with the fix); the tables are written anyway."""
    wb = _options(net, word_bits, weight_bits)["weight_bits"]
    problem = core.family_problem(net, _lanes(lanes), wb)
    return [f"the tables fit, but the folder will have no Verilog core (rtl/): {problem}"] if problem else []


# --------------------------------------------------------------------------------------------------
# Packing


def pack_weights(weight: np.ndarray, weight_bits: int, word_bits: int) -> tuple[list[int], int]:
    """Flatten (C order), pack LSB-first into ``word_bits`` words; returns (words, padding weights)."""
    codes = to_twos_complement(np.asarray(weight).reshape(-1), weight_bits)
    per = word_bits // weight_bits
    pad = (-len(codes)) % per
    codes = np.concatenate([codes, np.zeros(pad, dtype=np.uint64)]).reshape(-1, per)
    return pack_lanes(codes, weight_bits), pad


def unpack_weights(words: list[int], weight_bits: int, word_bits: int, count: int) -> np.ndarray:
    """Inverse of :func:`pack_weights`: the first ``count`` signed weights of the words."""
    per = word_bits // weight_bits
    mask = (1 << weight_bits) - 1
    codes = [(w >> (weight_bits * lane)) & mask for w in words for lane in range(per)]
    if len(codes) < count:
        raise ExportError(f"weight memory holds {len(codes)} weights, the layer needs {count}")
    return from_twos_complement(np.array(codes[:count], dtype=np.int64), weight_bits)


# --------------------------------------------------------------------------------------------------
# Writer


def _leak_width(net: IntegerNetwork) -> int:
    return net.profile.leak_bits + 1 if net.profile.leak == "mul" else 8


def _prefix(i: int, layer: IntegerLayer) -> str:
    safe = re.sub(r"[^A-Za-z0-9_]+", "_", layer.name) or "layer"
    return f"L{i}_{safe}"


def write(
    net: IntegerNetwork,
    folder: Path,
    *,
    word_bits: int | None = None,
    weight_bits: int | None = None,
    lanes: int | None = None,
) -> dict[str, Any]:
    """Write the tables of ``net`` into ``folder``; returns the manifest's target part.

    With the tables comes the reference core (``rtl/``: the Verilog core, its generated parameter
    header, the tables in the core's order and two testbenches) when ``net`` is in the core's family;
    ``lanes`` is the core's number of output channels per cycle (see :mod:`.core`).
    """
    opts = _options(net, word_bits, weight_bits)
    lanes = _lanes(lanes)
    wb, word = opts["weight_bits"], opts["word_bits"]
    p = net.profile
    per = word // wb
    layers_out: list[dict[str, Any]] = []
    c_layers: list[dict[str, Any]] = []
    for i, layer in enumerate(net.layers, start=1):
        prefix = _prefix(i, layer)
        words, pad = pack_weights(layer.weight, wb, word)
        shape = "x".join(str(d) for d in layer.weight.shape)
        comments = [
            f"qsnn fpga weight memory, layer {i} ({layer.name}, {layer.kind}), weights {shape} in "
            f"{'(out, in, ky, kx)' if layer.kind == 'conv' else '(out, in)'} order",
            f"{wb}-bit two's complement, {per} per {word}-bit word, first weight in the least significant bits; "
            f"{len(words)} words, last {pad} weight slot(s) zero padding",
        ]
        names = {ext: f"{prefix}_weights.{ext}" for ext in ("mem", "coe", "mif")}
        (folder / names["mem"]).write_text(format_mem(words, word, comments))
        (folder / names["coe"]).write_text(format_coe(words, word, comments))
        (folder / names["mif"]).write_text(format_mif(words, word, comments))

        theta = np.asarray(layer.threshold, dtype=np.int64) >> p.threshold_shift
        bias = np.asarray(layer.bias, dtype=np.int64)
        t_name, b_name, l_name = f"{prefix}_threshold.mem", f"{prefix}_bias.mem", f"{prefix}_leak.mem"
        (folder / t_name).write_text(
            format_mem(
                [int(v) for v in theta],
                p.threshold_bits,
                [
                    f"qsnn fpga thresholds, layer {i} ({layer.name}): one per output channel, {p.threshold_bits}-bit "
                    f"unsigned, value = threshold >> {p.threshold_shift}"
                ],
            )
        )
        (folder / b_name).write_text(
            format_mem(
                [int(v) for v in to_twos_complement(bias, p.bias_bits)],
                p.bias_bits,
                [
                    f"qsnn fpga biases, layer {i} ({layer.name}): one per output channel, {p.bias_bits}-bit two's "
                    f"complement, added to the membrane every step"
                ],
            )
        )
        leak_text = f"m of u <- (m*u) >> {p.leak_bits} (floor)" if p.leak == "mul" else "d of u <- u - (u >> d) (floor)"
        (folder / l_name).write_text(
            format_mem(
                [int(layer.leak_const)],
                _leak_width(net),
                [f"qsnn fpga leak, layer {i} ({layer.name}): {leak_text}, {_leak_width(net)}-bit unsigned"],
            )
        )
        layers_out.append(
            {
                "prefix": prefix,
                "stride": int(layer.stride),
                "padding": int(layer.padding),
                "weight_memory": {
                    "files": names,
                    "weight_bits": wb,
                    "word_bits": word,
                    "weights_per_word": per,
                    "depth": len(words),
                    "width": word,
                    "weights": int(layer.weight.size),
                    "padding_weights": pad,
                    "bits": len(words) * word,
                    "order": "(out, in, ky, kx)" if layer.kind == "conv" else "(out, in)",
                    "packing": f"weight n in word n // {per}, bits [{wb}*(n % {per}), {wb}*(n % {per}) + {wb}); "
                    f"first weight in the least significant bits; zero padding after the last weight",
                    "encoding": f"{wb}-bit two's complement, narrow range ±{(1 << (wb - 1)) - 1}",
                },
                "threshold_memory": {
                    "file": t_name,
                    "depth": layer.out_channels,
                    "width": p.threshold_bits,
                    "encoding": f"unsigned, threshold >> {p.threshold_shift}",
                },
                "bias_memory": {
                    "file": b_name,
                    "depth": layer.out_channels,
                    "width": p.bias_bits,
                    "encoding": "two's complement",
                },
                "leak_memory": {
                    "file": l_name,
                    "depth": 1,
                    "width": _leak_width(net),
                    "kind": p.leak,
                    "encoding": "unsigned",
                    "value": int(layer.leak_const),
                },
            }
        )
        c_layers.append({"prefix": prefix, "layer": layer, "words": words, "pad": pad})
    (folder / "qsnn_model.h").write_text(c_header(net, c_layers, wb, word))
    problem = core.family_problem(net, lanes, wb)
    rtl = (
        core.unsupported_record(problem)
        if problem
        else core.write_rtl(net, folder / core.RTL_DIR, lanes=lanes, weight_bits=wb)
    )
    return {
        "options": opts,
        "layers": layers_out,
        "rtl": rtl,
        "files_by_role": {"c_header": "qsnn_model.h"},
        "notes": [
            "Each weight memory is one continuous little-endian bit stream: weight n occupies bits "
            f"[{wb}n, {wb}n + {wb}) counting from bit 0 of word 0.",
            "Sum-pooling (pool > 1) is applied to the integer synaptic sum before the neuron; the current "
            "reaches the membrane shifted left by current_shift (right, floor, if negative).",
        ],
    }


def _c_ident(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


def _c_array(ctype: str, name: str, values: list[str], per_line: int = 8) -> str:
    rows = [", ".join(values[k : k + per_line]) for k in range(0, len(values), per_line)]
    body = ",\n    ".join(rows) if rows else "0"
    return f"static const {ctype} {name}[{max(1, len(values))}] = {{\n    {body}\n}};\n"


def c_header(net: IntegerNetwork, layers: list[dict[str, Any]], weight_bits: int, word_bits: int) -> str:
    """``qsnn_model.h``: the profile constants and every table, for C on a soft core or MCU."""
    p = net.profile
    packed = word_bits in C_WORD_TYPES
    out = [
        "/* qsnn_model.h: a compiled qsnn network for the qsnn FPGA core (generated by qsnn; do not edit).",
        " *",
        " * One time step of layer l, all integers (see manifest.json and README.md):",
        " *   acc = sumpool_P( W *_{S,PAD} z_in )          W: QSNN_WEIGHT_BITS-bit two's complement",
        " *         (conv of stride S over z_in with PAD zeros on every side; P x P sum-pooling)",
        " *   cur = acc << SHIFT  (acc >> -SHIFT, floor, if SHIFT < 0)",
        " *   r   = [u_prev > THETA[c]]",
        " *   u   = sat( leak(u_prev) + cur + BIAS[c] - r*THETA[c] )     QSNN_RESET_SUBTRACT",
        " *   u   = sat( leak((1 - r)*u_prev) + cur + BIAS[c] )           QSNN_RESET_ZERO",
        " *   z   = [u > THETA[c]]",
        " * leak: mul  u -> (LEAK*u) >> QSNN_LEAK_BITS (floor);  shift  u -> u - (u >> LEAK).",
        " * Input: uint8 pixels (the same image at every step) or per-step event counts.",
        " * Weights are packed QSNN_WEIGHTS_PER_WORD to a word, first weight in the least significant",
        " * bits, flattened in (out, in, ky, kx) order (dense: (out, in), in = (C, H, W) flattened).",
        " */",
        "#ifndef QSNN_MODEL_H",
        "#define QSNN_MODEL_H",
        "",
        "#include <stdint.h>",
        "",
        f'#define QSNN_PROFILE "{p.name}"',
        f"#define QSNN_WEIGHT_BITS {weight_bits}",
        f"#define QSNN_WORD_BITS {word_bits}",
        f"#define QSNN_WEIGHTS_PER_WORD {word_bits // weight_bits}",
        f"#define QSNN_MEMBRANE_BITS {p.membrane_bits}",
        f"#define QSNN_MEMBRANE_MIN ({p.membrane_min}L)",
        f"#define QSNN_MEMBRANE_MAX ({p.membrane_max}L)",
        f"#define QSNN_OVERFLOW_SATURATE {int(p.overflow == 'saturate')}",
        f"#define QSNN_OVERFLOW_WRAP {int(p.overflow == 'wrap')}",
        f"#define QSNN_FRAC_BITS {p.frac_bits}",
        f"#define QSNN_LEAK_MUL {int(p.leak == 'mul')}",
        f"#define QSNN_LEAK_SHIFT {int(p.leak == 'shift')}",
        f"#define QSNN_LEAK_BITS {p.leak_bits}",
        f"#define QSNN_RESET_SUBTRACT {int(p.reset == 'subtract')}",
        f"#define QSNN_RESET_ZERO {int(p.reset == 'zero')}",
        f"#define QSNN_SYNAPTIC_DELAY {p.synaptic_delay}",
        f"#define QSNN_THRESHOLD_BITS {p.threshold_bits}",
        f"#define QSNN_THRESHOLD_SHIFT {p.threshold_shift}",
        f"#define QSNN_BIAS_BITS {p.bias_bits}",
        f"#define QSNN_NUM_STEPS {net.num_steps}",
        f"#define QSNN_ENCODING_STATIC {int(net.encoding == 'static')}",
        f"#define QSNN_INPUT_MAX {int(net.input_max)}",
        f"#define QSNN_INPUT_BITS {int(net.input_max).bit_length()}",
        f"#define QSNN_INPUT_C {net.input_shape[0]}",
        f"#define QSNN_INPUT_H {net.input_shape[1]}",
        f"#define QSNN_INPUT_W {net.input_shape[2]}",
        f"#define QSNN_NUM_LAYERS {len(net.layers)}",
        f"#define QSNN_NUM_CLASSES {len(net.classes)}",
        "",
    ]
    if packed:
        ctype = C_WORD_TYPES[word_bits]
        out += [
            f"typedef {ctype} qsnn_word_t;",
            "",
            "/* Weight n of a packed weight memory, sign-extended. */",
            "static inline int qsnn_weight(const qsnn_word_t *words, uint32_t n)",
            "{",
            "    uint64_t word = (uint64_t)words[n / QSNN_WEIGHTS_PER_WORD];",
            "    uint32_t code = (uint32_t)((word >> (QSNN_WEIGHT_BITS * (n % QSNN_WEIGHTS_PER_WORD)))",
            "                               & ((1u << QSNN_WEIGHT_BITS) - 1u));",
            "    return (code & (1u << (QSNN_WEIGHT_BITS - 1))) ? (int)code - (1 << QSNN_WEIGHT_BITS) : (int)code;",
            "}",
            "",
        ]
    else:
        wtype = "int8_t" if weight_bits <= 8 else "int16_t"
        out += [
            f"/* QSNN_WORD_BITS = {word_bits} has no C integer type: the header stores the weights",
            f" * unpacked ({wtype}, same order); the .mem/.coe/.mif files hold the packed words. */",
            "",
        ]
    for i, entry in enumerate(layers, start=1):
        layer: IntegerLayer = entry["layer"]
        pre = f"QSNN_L{i}"
        low = f"qsnn_l{i}"
        shape = net.shapes()[i - 1]
        out += [
            f"/* layer {i}: {layer.name} ({layer.kind}), weights {tuple(layer.weight.shape)}, output {tuple(shape)} */",
            f'#define {pre}_NAME "{_c_ident(layer.name)}"',
            f"#define {pre}_IS_CONV {int(layer.kind == 'conv')}",
            f"#define {pre}_IN_CHANNELS {layer.in_channels}",
            f"#define {pre}_OUT_CHANNELS {layer.out_channels}",
            f"#define {pre}_KERNEL {layer.kernel}",
            f"#define {pre}_POOL {layer.pool}",
            f"#define {pre}_STRIDE {layer.stride}",
            f"#define {pre}_PADDING {layer.padding}",
            f"#define {pre}_CURRENT_SHIFT ({layer.current_shift})",
            f"#define {pre}_LEAK {int(layer.leak_const)}",
            f"#define {pre}_OUT_H {shape[1] if len(shape) == 3 else 1}",
            f"#define {pre}_OUT_W {shape[2] if len(shape) == 3 else 1}",
            f"#define {pre}_WEIGHT_COUNT {layer.weight.size}",
            f"#define {pre}_WEIGHT_WORDS {len(entry['words'])}",
            f"#define {pre}_WEIGHT_PADDING {entry['pad']}",
        ]
        if packed:
            digits = hex_digits(word_bits)
            suffix = "ULL" if word_bits == 64 else "u"
            out.append(_c_array("qsnn_word_t", f"{low}_weights", [f"0x{w:0{digits}x}{suffix}" for w in entry["words"]]))
        else:
            wtype = "int8_t" if weight_bits <= 8 else "int16_t"
            out.append(
                _c_array(wtype, f"{low}_weights", [str(int(v)) for v in np.asarray(layer.weight).reshape(-1)], 16)
            )
        out.append(_c_array("int32_t", f"{low}_threshold", [str(int(v)) for v in np.asarray(layer.threshold)]))
        out.append(_c_array("int32_t", f"{low}_bias", [str(int(v)) for v in np.asarray(layer.bias)]))
        out.append("/* real membrane value of one grid unit, per output channel */")
        out.append(_c_array("double", f"{low}_scale", [repr(float(v)) for v in np.asarray(layer.scale)], 4))
    out += ["#endif /* QSNN_MODEL_H */", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------------------
# Reader


def read(folder: Path, manifest: Mapping[str, Any]) -> IntegerNetwork:
    """The :class:`IntegerNetwork` of an fpga folder, from its ``.mem`` tables and the manifest."""
    p = manifest["profile"]
    layers = []
    for record in manifest["layers"]:
        mem = record["weight_memory"]
        words = parse_mem((folder / mem["files"]["mem"]).read_text())
        if len(words) != mem["depth"]:
            raise ExportError(f"{mem['files']['mem']}: {len(words)} words, the manifest says {mem['depth']}")
        weight = unpack_weights(words, mem["weight_bits"], mem["word_bits"], mem["weights"])
        tmem, bmem, lmem = record["threshold_memory"], record["bias_memory"], record["leak_memory"]
        theta = np.array(parse_mem((folder / tmem["file"]).read_text()), dtype=np.int64) << int(p["threshold_shift"])
        bias = from_twos_complement(
            np.array(parse_mem((folder / bmem["file"]).read_text()), dtype=np.int64), bmem["width"]
        )
        leak = parse_mem((folder / lmem["file"]).read_text())
        if len(theta) != tmem["depth"] or len(bias) != bmem["depth"] or len(leak) != 1:
            raise ExportError(f"layer {record['name']}: threshold/bias/leak tables do not match the manifest")
        conv = (
            {"stride": int(record.get("stride", 1)), "padding": int(record.get("padding", 0))}
            if record["kind"] == "conv"
            else {}
        )
        layers.append(layer_from_parts(record, weight, theta, bias, leak[0], **conv))
    return network_from_parts(manifest, layers)


def _input_text(network: Mapping[str, Any]) -> str:
    """What layer 1 reads, for the README: pixels, or event counts clipped to the encoding's range."""
    top = int(network.get("input_max", 255))
    if network.get("encoding") == "static":
        return f"the uint8 image (0..{top}), the same at every step"
    kind = "binary spikes (0 or 1)" if top == 1 else f"event counts 0..{top} ({top.bit_length()}-bit)"
    return f"one event frame per step, {kind} per cell (the training's encoding; never larger)"


def readme(manifest: Mapping[str, Any]) -> str:
    """README.md of an fpga folder."""
    opts = manifest["options"]
    p = manifest["profile"]
    wb, word = opts["weight_bits"], opts["word_bits"]
    per = word // wb
    rows = []
    for rec in manifest["layers"]:
        m = rec["weight_memory"]
        rows.append(
            f"| {rec['index']} | {rec['name']} | {rec['kind']} | {tuple(rec['weight_shape'])} | "
            f"{tuple(rec['output_shape'])} | {rec.get('stride', 1)} | {rec.get('padding', 0)} | "
            f"{rec['pool']} | {rec['current_shift']} | "
            f"{m['depth']} × {m['width']} | {m['padding_weights']} | `{rec['prefix']}_*` |"
        )
    return f"""# qsnn FPGA tables

A spiking neural network compiled to integers for the qsnn FPGA core (profile `{p["name"]}`).
It runs T = {manifest["network"]["num_steps"]} time steps per input; the class is the output neuron
that spiked most (first index wins ties). `manifest.json` holds every number below, the SHA-256 of
every file, and the per-channel scale factors (real membrane value of one integer unit).

## One time step of a layer (all integers)

```
acc = sumpool_P( W *_(S,PAD) z_in )  W: {wb}-bit weights, z_in: previous spikes (layer 1: the input frame)
cur = acc << SHIFT                   (acc >> -SHIFT, rounding down, when SHIFT < 0)
r   = [u_prev > THETA[c]]            did the neuron fire last step?
u   = sat( leak(u_prev) + cur + BIAS[c] - r*THETA[c] )     reset: {p["reset"]}
z   = [u > THETA[c]]
```
Layer 1's input `z_in` is {_input_text(manifest["network"])}.
leak `{p["leak"]}`: {"u → (LEAK·u) >> " + str(p["leak_bits"]) + " (floor)" if p["leak"] == "mul" else "u → u − (u >> LEAK) (floor)"};
membrane {p["membrane_bits"]}-bit two's complement, overflow `{p["overflow"]}`; reset `{p["reset"]}`
(`zero`: u_prev is cleared instead of θ subtracted).

## Files per layer `L<i>_<name>_…`

| file | content |
|---|---|
| `_weights.mem` | weight memory for Verilog `$readmemh` (hex, one word per line, `//` comments) |
| `_weights.coe` | the same words for Xilinx Block Memory Generator (radix 16) |
| `_weights.mif` | the same words for Intel memories (`ADDRESS_RADIX=UNS`, `DATA_RADIX=HEX`) |
| `_threshold.mem` | one {p["threshold_bits"]}-bit unsigned word per output channel: THETA[c] |
| `_bias.mem` | one {p["bias_bits"]}-bit two's-complement word per output channel: BIAS[c] |
| `_leak.mem` | one word: the leak constant LEAK |

`qsnn_model.h` has the same tables and the profile constants for C code (`qsnn_weight()` unpacks a weight).

## Weight memory layout

Weights are {wb}-bit two's complement (range ±{(1 << (wb - 1)) - 1}), in the order **output channel,
input channel, kernel row ky, kernel column kx** (dense layers: output, input; the input index
is the previous layer's spikes flattened as channel, row, column). They are packed {per} per
{word}-bit word, **first weight in the least significant bits**: weight n is in word n // {per}, bits
[{wb}·(n mod {per}), {wb}·(n mod {per}) + {wb}). After the last weight the word is filled with zeros
("padding" below). Memory size in bits = {wb} × (weights + padding).

| # | layer | kind | weights (O, I, k, k) | output | stride S | padding PAD | pool P | SHIFT | depth × width | padding weights | files |
|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

A convolution of stride S and padding PAD reads input row S·oy − PAD + ky for output row oy (zeros
outside the input); pooling is P×P, stride P, on the synaptic sum (rows beyond the last whole pool
window are dropped). Dense layers have S = 1, PAD = 0.
""" + core.readme_section(manifest)
