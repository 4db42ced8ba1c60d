"""The reference FPGA core (``targets/fpga/rtl/qsnn_core.v``): which networks it runs, its parameter
header and its memory images.

The core is one Verilog module for every network of its family; what a network needs is

* ``qsnn_params.vh``: sizes and bit widths (layer geometry, lanes, memory depths, register widths)
  and each layer's current shift s, included by the core. A shift known at synthesis is wiring, not
  a barrel shifter in every lane; networks of one shape and shifts share a Verilator build.
* ``qsnn_weights.mem``, ``qsnn_neurons.mem``, ``qsnn_layers.mem``: the weights, the per-channel
  thresholds and biases, and the per-layer leak constant, in the core's order, loaded with
  ``$readmemh``.

**The family**: conv layers (any stride s and zero padding, optional p×p sum-pooling) followed by
dense layers, any depth, under
a profile with the ``mul`` or ``shift`` leak, ``subtract`` or ``zero`` reset, ``saturate`` or
``wrap`` overflow, no synaptic delay and no weight exponent; input uint8 pixels (a static image)
or event counts up to the encoding's clip (one frame per step; the input bus is input_max.bit_length() wide). :func:`family_problem` says why a network is not in it.

**Memory order** (a word holds ``PAR`` lanes, lane j = output channel ``g·PAR + j`` of channel
group g, lane 0 in the least significant bits; ``G = ceil(O / PAR)`` groups, padding lanes zero):

* weights, conv layer: word ``WBASE + ((ci·K + ky)·K + kx)·G + g`` holds ``W[g·PAR + j, ci, ky, kx]``
  (stride and padding change no table: the core walks the taps ky = ky0, ky0 + s, ... of an input
  row y with ky0 = (y + pad) mod s, reaching conv output row (y + pad − ky) / s);
* weights, dense layer: word ``WBASE + g·ROWS + i`` holds ``W[g·PAR + j, n(i)]``, where i runs over
  the previous layer's neurons in the core's storage order, ``i = ((y·WO + x)·G' + g')·PAR + j'``
  (channel ``c' = g'·PAR + j'``; n(i) = ``(c'·H + y)·W + x`` is torch's flatten index; rows of padding
  channels are zero), or, for a dense first layer, i = n = ``(c·H + y)·W + x`` itself;
* neurons: word ``NBASE + g``, lane j = ``θ`` in the low THR_W bits, the bias (two's complement)
  in the next BIAS_W bits;
* layers: word l = the leak constant (LEAK_W bits);
* membranes and accumulators (the core's own RAMs): word ``ABASE + (y·WO + x)·G + g``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from qsnn.arith import check_leak_const, shl
from qsnn.errors import ExportError, NetworkError
from qsnn.network import IntegerNetwork

from ..memfiles import format_mem, pack_lanes

#: Lanes (output channels per cycle) of the core when none are asked for.
DEFAULT_LANES = 16
MAX_LANES = 64
#: Input encodings the core reads: a static image's pixels (its first-layer sums computed once), or
#: per-step event counts. The input bus is as wide as the network's own input range
#: (``IntegerNetwork.input_max``: 255 for pixels, the event encoding's count clip).
ENCODINGS = ("static", "events")
MAX_SHIFT = 31

RTL_DIR = "rtl"
CORE_FILE = "qsnn_core.v"
HEADER_FILE = "qsnn_params.vh"
WEIGHTS_FILE = "qsnn_weights.mem"
NEURONS_FILE = "qsnn_neurons.mem"
LAYERS_FILE = "qsnn_layers.mem"
HARNESS_FILE = "qsnn_tb.cpp"
TESTBENCH_FILE = "qsnn_tb.v"
TABLE_FILES = (WEIGHTS_FILE, NEURONS_FILE, LAYERS_FILE)


def _shl_bound(bound: int, s: int) -> int:
    """Largest |shl(a, s)| for |a| ≤ bound (shl floors, so the extreme is shl(−bound, s))."""
    return -int(shl(-bound, s))


def _bits(value: int) -> int:
    """Bits of an unsigned counter that must hold ``value`` (at least 1)."""
    return max(1, int(value).bit_length())


# --------------------------------------------------------------------------------------------------
# The family


def family_problem(net: IntegerNetwork, lanes: int = DEFAULT_LANES, weight_bits: int | None = None) -> str | None:
    """Why the core cannot run ``net`` (one sentence), or ``None`` if it can."""
    p = net.profile
    if not (isinstance(lanes, int) and 1 <= lanes <= MAX_LANES and lanes & (lanes - 1) == 0):
        return f"lanes={lanes!r}: the core has a power of two of lanes, 1 to {MAX_LANES}"
    if p.leak not in ("mul", "shift"):
        return f"the {p.leak!r} leak (the core has the 'mul' and 'shift' leaks): compile under --profile fpga"
    if p.synaptic_delay:
        return (
            f"a synaptic delay of {p.synaptic_delay} step(s) (the core has none): compile with --profile-set "
            "synaptic_delay=0 (a model trained with the delay, --profile loihi2, is then simulated without it: "
            "retrain with --profile fpga)"
        )
    if p.weight_exp_bits or any(layer.weight_exp for layer in net.layers):
        return "weight exponents (the core has none): compile under --profile fpga"
    if net.encoding not in ENCODINGS:
        return f"encoding {net.encoding!r}"
    kinds = [layer.kind for layer in net.layers]
    first_dense = kinds.index("dense") if "dense" in kinds else len(kinds)
    if "conv" in kinds[first_dense:]:
        return (
            "a convolution after a dense layer (the core runs conv layers, then dense layers): put every conv "
            "layer of the spec before its first dense layer"
        )
    for i, layer in enumerate(net.layers, start=1):
        if not -MAX_SHIFT <= layer.current_shift <= MAX_SHIFT:
            return f"layer {i} ({layer.name}): current shift {layer.current_shift} (the core takes -{MAX_SHIFT}..{MAX_SHIFT})"
        try:
            check_leak_const(layer.leak_const, p, f"{i} ({layer.name})")
        except NetworkError as exc:
            return str(exc)
    wb = int(weight_bits if weight_bits is not None else p.weight_bits)
    if not 2 <= wb <= 16:
        return f"weight_bits={wb}"
    return None


# --------------------------------------------------------------------------------------------------
# Geometry and widths: everything qsnn_params.vh says


@dataclass(frozen=True)
class CoreLayer:
    """One layer as the core sees it (see the module docstring for the memory order)."""

    name: str
    conv: bool
    cin: int
    hin: int
    win: int
    k: int
    pool: int
    ho: int
    wo: int
    o: int
    g: int
    nw: int  # storage words: HO·WO·G
    abase: int  # first word in the accumulator / membrane RAMs
    wbase: int  # first word in the weight memory
    wdepth: int  # weight words
    nbase: int  # first word in the neuron table
    rows: int  # dense: input rows (0 for conv)
    acc_bound: int  # largest |synaptic sum| any weights and inputs can give
    shift: int  # s of cur = shl(acc, s)
    stride: int = 1  # conv stride (1 for dense)
    pad: int = 0  # zeros on every side of a conv's input (0 for dense)

    # an input cell at row 0 (padded row pad): its first tap ky0 = pad mod s reaches conv output row
    # pad div s, i.e. pooled row q0 = (pad div s) div p, remainder r0 = (pad div s) mod p
    @property
    def s0(self) -> int:
        return self.pad % self.stride

    @property
    def q0(self) -> int:
        return (self.pad // self.stride) // self.pool

    @property
    def r0(self) -> int:
        return (self.pad // self.stride) % self.pool

    @property
    def t0(self) -> int:
        """Accumulator word (relative to ABASE) of pooled output (q0, q0), channel group 0."""
        return (self.q0 * self.wo + self.q0) * self.g

    @property
    def kg(self) -> int:
        return self.k * self.g

    @property
    def kkg(self) -> int:
        return self.k * self.k * self.g

    @property
    def wog(self) -> int:
        return self.wo * self.g

    @property
    def sg(self) -> int:
        return self.stride * self.g

    @property
    def skg(self) -> int:
        return self.stride * self.k * self.g


@dataclass(frozen=True)
class CoreConfig:
    """The contents of ``qsnn_params.vh``: shapes and widths, no trained values."""

    lanes: int
    weight_bits: int
    in_bits: int
    static: bool
    in_shape: tuple[int, int, int]
    num_steps: int
    num_classes: int
    membrane_bits: int
    sym_clip: bool
    wrap: bool
    reset_zero: bool
    leak_shift: bool
    leak_bits: int
    leak_w: int
    acc_w: int
    sum_w: int
    thr_w: int
    bias_w: int
    layers: tuple[CoreLayer, ...]

    @property
    def log2_lanes(self) -> int:
        return self.lanes.bit_length() - 1

    @property
    def w_depth(self) -> int:
        return sum(layer.wdepth for layer in self.layers)

    @property
    def a_depth(self) -> int:
        return sum(layer.nw for layer in self.layers)

    @property
    def n_depth(self) -> int:
        return sum(layer.g for layer in self.layers)

    @property
    def ev_depth(self) -> int:
        return max([1] + [layer.nw for layer in self.layers[:-1]])

    def cycle_bound(self) -> int:
        """More cycles than any inference can take (every input nonzero, every neuron spiking)."""
        total = self.a_depth + self.num_classes + 16
        inputs = self.in_shape[0] * self.in_shape[1] * self.in_shape[2]
        for i, layer in enumerate(self.layers):
            taps = (layer.k * layer.k if layer.conv else 1) * layer.g + 2
            n_in = inputs if i == 0 else self.layers[i - 1].nw * self.lanes
            scatter = n_in * taps + (self.layers[i - 1].nw if i else 1) + 4
            if i == 0 and self.static:
                total += scatter
                scatter = 0
            total += self.num_steps * (scatter + layer.nw + 8)
        return total

    def widths(self) -> dict[str, int]:
        """Every localparam of the header, by name."""
        ls = self.layers
        crd = max([self.in_shape[1], self.in_shape[2]] + [max(layer.hin, layer.win) + layer.pad for layer in ls])
        return {
            "NL": len(ls),
            "PAR": self.lanes,
            "LOG2_PAR": self.log2_lanes,
            "LOG2_PAR_W": max(1, self.log2_lanes),
            "WB": self.weight_bits,
            "IN_BITS": self.in_bits,
            "STATIC_INPUT": int(self.static),
            "IN_C": self.in_shape[0],
            "IN_H": self.in_shape[1],
            "IN_W": self.in_shape[2],
            "IN_CW": _bits(self.in_shape[0] - 1),
            "IN_YW": _bits(self.in_shape[1] - 1),
            "IN_XW": _bits(self.in_shape[2] - 1),
            "NUM_STEPS": self.num_steps,
            "NUM_CLASSES": self.num_classes,
            "MEM_W": self.membrane_bits,
            "SYM_CLIP": int(self.sym_clip),
            "WRAP": int(self.wrap),
            "RESET_ZERO": int(self.reset_zero),
            "LEAK_SHIFT": int(self.leak_shift),
            "LEAK_BITS": self.leak_bits,
            "LEAK_W": self.leak_w,
            "ACC_W": self.acc_w,
            "SUM_W": self.sum_w,
            "THR_W": self.thr_w,
            "BIAS_W": self.bias_w,
            "W_DEPTH": self.w_depth,
            # (at least K_W: the tap offsets ky0, kx0 enter the weight address)
            "W_AW": max(_bits(self.w_depth - 1), _bits(max(max(layer.k, layer.stride) for layer in self.layers))),
            "A_DEPTH": self.a_depth,
            "A_AW": _bits(self.a_depth - 1),
            "N_DEPTH": self.n_depth,
            "N_AW": _bits(self.n_depth - 1),
            "EV_DEPTH": self.ev_depth,
            "EV_AW": _bits(self.ev_depth - 1),
            "CRD_W": _bits(crd) + 1,
            "PW": _bits(max(layer.pool for layer in ls)),
            "GW": _bits(max(layer.g for layer in ls) - 1),
            "K_W": _bits(max(max(layer.k, layer.stride) for layer in ls)),
            "CNT_W": _bits(self.num_steps),
            "CLS_W": _bits(self.num_classes - 1),
            "LYR_W": _bits(len(ls)),
            "STEP_W": _bits(self.num_steps - 1),
            "RD_AW": _bits(self.num_classes + 2 * len(ls)),
        }

    def layer_vectors(self) -> dict[str, list[int]]:
        """Per-layer localparam vectors (one 32-bit field per layer, plus an inert entry after the last)."""
        fields = {
            "L_CONV": lambda layer: int(layer.conv),
            "L_K": lambda layer: layer.k,
            "L_POOL": lambda layer: layer.pool,
            "L_HO": lambda layer: layer.ho,
            "L_WO": lambda layer: layer.wo,
            "L_G": lambda layer: layer.g,
            "L_O": lambda layer: layer.o,
            "L_NW": lambda layer: layer.nw,
            "L_ABASE": lambda layer: layer.abase,
            "L_WBASE": lambda layer: layer.wbase,
            "L_NBASE": lambda layer: layer.nbase,
            "L_KG": lambda layer: layer.kg,
            "L_KKG": lambda layer: layer.kkg,
            "L_WOG": lambda layer: layer.wog,
            "L_ROWS": lambda layer: layer.rows,
            "L_SHIFT": lambda layer: layer.shift & 0xFFFFFFFF,  # 32-bit two's complement
            "L_S": lambda layer: layer.stride,
            "L_PAD": lambda layer: layer.pad,
            "L_SG": lambda layer: layer.sg,
            "L_SKG": lambda layer: layer.skg,
            "L_S0": lambda layer: layer.s0,
            "L_Q0": lambda layer: layer.q0,
            "L_R0": lambda layer: layer.r0,
            "L_T0": lambda layer: layer.t0,
        }
        inert = {"L_POOL": 1, "L_G": 1, "L_K": 1, "L_S": 1}
        return {name: [f(layer) for layer in self.layers] + [inert.get(name, 0)] for name, f in fields.items()}

    def record(self) -> dict[str, Any]:
        """The manifest's description of the core configuration."""
        return {
            "params": self.widths(),
            "layers": [
                {
                    **{k: v for k, v in asdict(layer).items()},
                    "kg": layer.kg,
                    "kkg": layer.kkg,
                    "wog": layer.wog,
                    "sg": layer.sg,
                    "skg": layer.skg,
                    "s0": layer.s0,
                    "q0": layer.q0,
                    "r0": layer.r0,
                    "t0": layer.t0,
                }
                for layer in self.layers
            ],
        }


def core_config(net: IntegerNetwork, lanes: int = DEFAULT_LANES, weight_bits: int | None = None) -> CoreConfig:
    """The core configuration of ``net``; :class:`ExportError` if it is outside the family."""
    problem = family_problem(net, lanes, weight_bits)
    if problem:
        raise ExportError(f"the network is outside the FPGA core's family: {problem}")
    p = net.profile
    wb = int(weight_bits if weight_bits is not None else p.weight_bits)
    in_bits = int(net.input_max).bit_length()
    wmax = (1 << (wb - 1)) - 1
    layers: list[CoreLayer] = []
    shape: tuple[int, ...] = tuple(net.input_shape)
    abase = wbase = nbase = 0
    for i, layer in enumerate(net.layers):
        out = layer.output_shape(shape)
        o = layer.out_channels
        g = -(-o // lanes)
        in_max = (1 << in_bits) - 1 if i == 0 else 1
        if layer.kind == "conv":
            _, hin, win = shape
            ho, wo = out[1], out[2]
            rows = 0
            wdepth = layer.in_channels * layer.kernel * layer.kernel * g
            acc_bound = layer.in_channels * layer.kernel**2 * layer.pool**2 * wmax * in_max
            hin_, win_ = hin, win
        else:
            ho = wo = 1
            hin_ = win_ = 1
            if i == 0:
                rows = int(np.prod(shape))
            else:
                rows = layers[-1].nw * lanes
            wdepth = g * rows
            acc_bound = layer.in_channels * wmax * in_max
        nw = ho * wo * g
        layers.append(
            CoreLayer(
                name=layer.name,
                conv=layer.kind == "conv",
                cin=int(shape[0]) if layer.kind == "conv" else layer.in_channels,
                hin=hin_,
                win=win_,
                k=layer.kernel,
                pool=layer.pool if layer.kind == "conv" else 1,
                ho=ho,
                wo=wo,
                o=o,
                g=g,
                nw=nw,
                abase=abase,
                wbase=wbase,
                wdepth=wdepth,
                nbase=nbase,
                rows=rows,
                acc_bound=acc_bound,
                shift=int(layer.current_shift),
                stride=int(layer.stride),
                pad=int(layer.padding),
            )
        )
        abase += nw
        wbase += wdepth
        nbase += g
        shape = out
    thr_w = p.threshold_bits + p.threshold_shift
    bias_w = p.bias_bits
    acc_w = max(max(layer.acc_bound for layer in layers).bit_length() + 1, in_bits + wb + 1)
    # |leak(u) + shl(acc, s) + b − r·θ| ≤ 2^(MEM_W−1) + |shl(acc, s)| + 2^(BIAS_W−1) + 2^THR_W, per layer
    worst = max(
        (1 << (p.membrane_bits - 1)) + _shl_bound(layer.acc_bound, layer.shift) + (1 << (bias_w - 1)) + (1 << thr_w)
        for layer in layers
    )
    sum_w = max(worst.bit_length() + 1, p.membrane_bits + 1, thr_w + 2, acc_w)
    return CoreConfig(
        lanes=lanes,
        weight_bits=wb,
        in_bits=in_bits,
        static=net.encoding == "static",
        in_shape=tuple(int(d) for d in net.input_shape),
        num_steps=int(net.num_steps),
        num_classes=len(net.classes),
        membrane_bits=p.membrane_bits,
        sym_clip=bool(p.symmetric_clip),
        wrap=p.overflow == "wrap",
        reset_zero=p.reset == "zero",
        leak_shift=p.leak == "shift",
        leak_bits=p.leak_bits,
        leak_w=p.leak_bits + 1 if p.leak == "mul" else 8,
        acc_w=acc_w,
        sum_w=sum_w,
        thr_w=thr_w,
        bias_w=bias_w,
        layers=tuple(layers),
    )


def params_header(cfg: CoreConfig, comment: str = "") -> str:
    """``qsnn_params.vh``: localparams included by ``qsnn_core.v``."""
    lines = [
        "// qsnn_params.vh: sizes and widths of one compiled qsnn network for qsnn_core.v",
        "// (generated by qsnn-export --to fpga from manifest.json; do not edit). No trained value is",
        "// here: weights, thresholds, biases, shifts and leaks are in the qsnn_*.mem tables.",
    ]
    if comment:
        lines.append(f"// {comment}")
    for name, value in cfg.widths().items():
        lines.append(f"localparam {name} = {value};")
    lines.append("// per layer: one 32-bit field per layer (layer 1 in the low bits), then an inert entry")
    for name, values in cfg.layer_vectors().items():
        body = ", ".join(f"32'd{v}" for v in reversed(values))
        lines.append(f"localparam [{32 * len(values) - 1}:0] {name} = {{{body}}};")
    lines.append(
        "// L_SHIFT (current shift s of each layer, two's complement above): "
        + ", ".join(str(layer.shift) for layer in cfg.layers)
    )
    return "\n".join(lines) + "\n"


def parse_header(text: str) -> dict[str, Any]:
    """The localparams of a ``qsnn_params.vh`` (scalars as int, vectors as lists, layer 1 first)."""
    out: dict[str, Any] = {}
    for m in re.finditer(r"localparam\s+(?:\[[^\]]*\]\s*)?(\w+)\s*=\s*([^;]+);", text):
        name, value = m.group(1), m.group(2).strip()
        if value.startswith("{"):
            out[name] = [int(v) for v in re.findall(r"32'd(\d+)", value)][::-1]
        else:
            out[name] = int(value)
    return out


# --------------------------------------------------------------------------------------------------
# Memory images


def _dense_source_index(cfg: CoreConfig, index: int) -> np.ndarray:
    """For dense layer ``index``: n(i) per input row i (torch flatten index), −1 for padding rows."""
    layer = cfg.layers[index]
    if index == 0:
        return np.arange(layer.rows, dtype=np.int64)
    prev = cfg.layers[index - 1]
    i = np.arange(layer.rows, dtype=np.int64)
    q, lane = i // cfg.lanes, i % cfg.lanes
    pos, gp = q // prev.g, q % prev.g
    y, x = pos // prev.wo, pos % prev.wo
    c = gp * cfg.lanes + lane
    n = (c * prev.ho + y) * prev.wo + x
    return np.where(c < prev.o, n, -1)


def weight_words(net: IntegerNetwork, cfg: CoreConfig) -> np.ndarray:
    """(W_DEPTH, PAR) signed weights in the core's order (see the module docstring)."""
    P = cfg.lanes
    parts = []
    for i, (layer, cl) in enumerate(zip(net.layers, cfg.layers)):
        w = np.asarray(layer.weight, dtype=np.int64)
        padded = np.zeros((cl.g * P, *w.shape[1:]), dtype=np.int64)
        padded[: cl.o] = w
        if cl.conv:
            # (G, P, C, K, K) → (C, K, K, G, P): word ((ci·K + ky)·K + kx)·G + g
            words = padded.reshape(cl.g, P, *w.shape[1:]).transpose(2, 3, 4, 0, 1).reshape(-1, P)
        else:
            src = _dense_source_index(cfg, i)
            cols = np.where(src[None, :] >= 0, padded[:, np.maximum(src, 0)], 0)  # (G·P, ROWS)
            words = cols.reshape(cl.g, P, cl.rows).transpose(0, 2, 1).reshape(-1, P)  # word g·ROWS + i
        assert len(words) == cl.wdepth
        parts.append(words)
    return np.concatenate(parts)


def neuron_words(net: IntegerNetwork, cfg: CoreConfig) -> tuple[np.ndarray, np.ndarray]:
    """(N_DEPTH, PAR) thresholds and biases in the core's order (padding lanes 0)."""
    P = cfg.lanes
    th, bi = [], []
    for layer, cl in zip(net.layers, cfg.layers):
        t = np.zeros(cl.g * P, dtype=np.int64)
        b = np.zeros(cl.g * P, dtype=np.int64)
        t[: cl.o] = np.asarray(layer.threshold, dtype=np.int64)
        b[: cl.o] = np.asarray(layer.bias, dtype=np.int64)
        th.append(t.reshape(cl.g, P))
        bi.append(b.reshape(cl.g, P))
    return np.concatenate(th), np.concatenate(bi)


def table_words(net: IntegerNetwork, cfg: CoreConfig) -> dict[str, tuple[list[int], int]]:
    """``{file: (words, word width)}`` of the three tables."""
    P = cfg.lanes
    th, bi = neuron_words(net, cfg)
    nb = cfg.thr_w + cfg.bias_w
    neurons = []
    for trow, brow in zip(th.tolist(), bi.tolist()):
        word = 0
        for j in range(P):
            lane = (trow[j] & ((1 << cfg.thr_w) - 1)) | ((brow[j] & ((1 << cfg.bias_w) - 1)) << cfg.thr_w)
            word |= lane << (nb * j)
        neurons.append(word)
    layers = [int(layer.leak_const) for layer in net.layers]
    return {
        WEIGHTS_FILE: (pack_lanes(weight_words(net, cfg), cfg.weight_bits), P * cfg.weight_bits),
        NEURONS_FILE: (neurons, P * nb),
        LAYERS_FILE: (layers, cfg.leak_w),
    }


def table_texts(net: IntegerNetwork, cfg: CoreConfig) -> dict[str, str]:
    """The three ``$readmemh`` files of the core."""
    P, wb = cfg.lanes, cfg.weight_bits
    notes = {
        WEIGHTS_FILE: [
            f"qsnn_core weights: {P} lanes x {wb}-bit two's complement per word, lane j = output channel "
            f"g*{P}+j in bits [{wb}j, {wb}j+{wb})",
            "conv: word WBASE + ((ci*K + ky)*K + kx)*G + g; dense: word WBASE + g*ROWS + i "
            "(see README.md and manifest.json 'rtl')",
        ],
        NEURONS_FILE: [
            f"qsnn_core neurons: word NBASE + g, {P} lanes of {cfg.thr_w + cfg.bias_w} bits: threshold "
            f"(unsigned, low {cfg.thr_w} bits), bias ({cfg.bias_w}-bit two's complement, above)"
        ],
        LAYERS_FILE: [
            f"qsnn_core layers: word l = the leak constant ({cfg.leak_w} bits, "
            f"{'m of (m*u) >>> ' + str(cfg.leak_bits) if not cfg.leak_shift else 'd of u - (u >>> d)'})"
        ],
    }
    return {name: format_mem(words, width, notes[name]) for name, (words, width) in table_words(net, cfg).items()}


def package_file(name: str) -> str:
    """Text of a file shipped in ``qsnn.targets.fpga`` under ``rtl/`` (the core, the harness, the testbench)."""
    return resources.files("qsnn.targets.fpga").joinpath(RTL_DIR, name).read_text()


# --------------------------------------------------------------------------------------------------
# Writing and checking an rtl/ folder


def write_rtl(
    net: IntegerNetwork, folder: Path, *, lanes: int = DEFAULT_LANES, weight_bits: int | None = None
) -> dict[str, Any]:
    """Write the core, its header, tables and testbenches into ``folder``; returns the manifest part."""
    cfg = core_config(net, lanes, weight_bits)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CORE_FILE).write_text(package_file(CORE_FILE))
    (folder / HARNESS_FILE).write_text(package_file(HARNESS_FILE))
    (folder / TESTBENCH_FILE).write_text(package_file(TESTBENCH_FILE))
    (folder / HEADER_FILE).write_text(params_header(cfg))
    for name, text in table_texts(net, cfg).items():
        (folder / name).write_text(text)
    rec = cfg.record()
    return {
        "supported": True,
        "folder": RTL_DIR,
        "lanes": lanes,
        "files": {
            "core": f"{RTL_DIR}/{CORE_FILE}",
            "params": f"{RTL_DIR}/{HEADER_FILE}",
            "weights": f"{RTL_DIR}/{WEIGHTS_FILE}",
            "neurons": f"{RTL_DIR}/{NEURONS_FILE}",
            "layers": f"{RTL_DIR}/{LAYERS_FILE}",
            "verilator_harness": f"{RTL_DIR}/{HARNESS_FILE}",
            "testbench": f"{RTL_DIR}/{TESTBENCH_FILE}",
        },
        "tables": {
            name: {"depth": len(words), "width": width} for name, (words, width) in table_words(net, cfg).items()
        },
        "order": {
            "weights": f"{lanes} lanes per word, lane j = output channel g*{lanes}+j, lane 0 in the least significant "
            "bits; conv: word WBASE + ((ci*K + ky)*K + kx)*G + g; dense: word WBASE + g*ROWS + i with i the "
            "previous layer's neuron in storage order ((y*WO + x)*G' + g')*PAR + j' (torch flatten index "
            "(c'*H + y)*W + x, c' = g'*PAR + j'; padding rows zero), or the flatten index for a dense first layer",
            "neurons": "word NBASE + g, lane j: threshold (unsigned, low THR_W bits), bias (two's complement, next BIAS_W bits)",
            "layers": "word l: leak constant (low LEAK_W bits), current shift (8-bit two's complement) above",
            "state": "membrane and accumulator RAMs: word ABASE + (y*WO + x)*G + g",
        },
        **rec,
    }


def unsupported_record(problem: str) -> dict[str, Any]:
    return {"supported": False, "reason": problem}


def readme_section(manifest: Mapping[str, Any]) -> str:
    """The README part about ``rtl/`` (the core) of an fpga folder."""
    rtl = manifest.get("rtl") or {}
    if not rtl.get("supported"):
        return (
            f"\n## The reference core\n\nNot included: the network is outside the core's family "
            f"({rtl.get('reason', 'unknown')}).\n"
        )
    prm = rtl["params"]
    P = rtl["lanes"]
    rows = []
    for i, layer in enumerate(rtl["layers"], start=1):
        rows.append(
            f"| {i} | {layer['name']} | {'conv' if layer['conv'] else 'dense'} | {layer['g']} | "
            f"{layer['nw']} | {layer['abase']} | {layer['wbase']} | {layer['wdepth']} | {layer['nbase']} | "
            f"{layer['rows'] or ''} |"
        )
    tables = "\n".join(f"| `rtl/{name}` | {t['depth']} | {t['width']} |" for name, t in rtl["tables"].items())
    return f"""
## The reference core (`rtl/`)

`rtl/qsnn_core.v` is qsnn's FPGA core (Verilog-2005, synthesizable; Yosys, Verilator and Icarus
accept it). It runs this network as the tables above describe, bit for bit as `qsnn-sim --profile
{manifest["profile"]["name"]}`: an event-driven, time-multiplexed engine with **{P} lanes** (output
channels updated per cycle). Per time step and layer it scatters every input event (a nonzero pixel
or event count, or a spike of the previous layer) through the kernel taps into sum-pooled
accumulators, {P} channels per cycle, then updates every neuron ({P} per cycle), writing the
spikes into an event buffer for the next layer or into the output spike counters.

| file | what |
|---|---|
| `rtl/qsnn_core.v` | the core (the same file for every network) |
| `rtl/qsnn_params.vh` | sizes, widths and current shifts of this network (generated from `manifest.json`) |
| `rtl/qsnn_weights.mem` | the weights in the core's order, {P} × {prm["WB"]}-bit lanes per word |
| `rtl/qsnn_neurons.mem` | thresholds and biases, {P} lanes of {prm["THR_W"]} + {prm["BIAS_W"]} bits per word |
| `rtl/qsnn_layers.mem` | per layer: the leak constant ({prm["LEAK_W"]} bits) |
| `rtl/qsnn_tb.cpp` | Verilator harness (`qsnn-rtl-sim` builds and runs it) |
| `rtl/qsnn_tb.v` | plain Verilog testbench for any simulator |

Memory order (lane j of a word is output channel g·{P} + j of channel group g, lane 0 in the least
significant bits, G = ceil(O / {P}) groups per layer, padding lanes zero):

* conv weights: word `WBASE + ((ci·K + ky)·K + kx)·G + g`;
* dense weights: word `WBASE + g·ROWS + i`, i the previous layer's neuron in the core's storage
  order `((y·WO + x)·G' + g')·{P} + j'` (its channel c' = g'·{P} + j', i.e. torch's flatten index
  `(c'·H + y)·W + x`; rows of padding channels are zero), or the flatten index for a dense first layer;
* neurons: word `NBASE + g`, lane j = threshold (unsigned, low {prm["THR_W"]} bits) | bias << {prm["THR_W"]};
* membranes and accumulators (RAMs inside the core): word `ABASE + (y·WO + x)·G + g`.

| # | layer | kind | G | words (state) | ABASE | WBASE | weight words | NBASE | ROWS |
|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

| table | depth | width (bits) |
|---|---|---|
{tables}

Interface: `start` begins an inference; the input arrives on a valid/ready stream of events
(`in_c`, `in_y`, `in_x`, `in_val`; a beat with `in_end` closes a frame: one frame per step for event
input, one frame at t = 0 for a static image, whose first-layer sums the core keeps); `done` and
`pred` (the class with most output spikes, first index wins ties) follow T steps; `rd_addr`/`rd_data`
read the output spike counts and the per-layer saturation counters; `mon_*` shows every layer's
spikes as they are made.

Run it against qsnn-sim on real data, and synthesize it:

```
qsnn-rtl-sim THIS_FOLDER --split test -n 200 --synth ecp5      # Verilator; resources into resources.json
cd rtl && iverilog -g2005 -I . -o tb.vvp qsnn_tb.v qsnn_core.v && vvp tb.vvp +input=IN.hex +output=OUT.txt
cd rtl && yosys -p "read_verilog -I. qsnn_core.v; synth_ecp5 -top qsnn_core; stat"
```
"""
