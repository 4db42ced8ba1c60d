"""The architecture of a QSNN as data: one spec string in the paper's own notation.

A spec is a list of tokens joined by ``-``. Every conv or dense token is a *synaptic layer followed
by a population of LIF neurons*; ``AP<p>`` average-pools the preceding conv's current before its
neurons (the paper's placement)::

    <out>C<k>[s<stride>][p<pad>][w<bits>]     conv, k×k kernel (also the paper's <out>Conv<k>)
    AP<p>                                     p×p average pooling, stride p, of that conv's current
    D<out>[w<bits>]                           dense (flatten implied before the first dense layer)
    <in>Dense<out>[w<bits>]                   the paper's dense, <in> checked against the shape

Examples: the paper's MNIST/FashionMNIST network (Table II footnote) ``16C5-AP2-64C5-AP2-D10``
(``16Conv5-AP2-64Conv5-AP2-1024Dense10`` parses to the same), a strided net ``32C3s2p1-64C3s2p1-D10``,
a dense-only net ``D256-D10``, per-layer 8-bit weights ``16C5w8-AP2-D10``.

Per layer l and step t (BatchNorm after a conv when the run asks for it)::

    I^l_t = BN_l( AP_p( W^l ⊛_{s,pad} z^{l−1}_t + b^l ) )      conv
    I^l_t = W^l · flat(z^{l−1}_t) + b^l                         dense
    z^l_t, u^l_t = LIF(I^l_t, u^l_{t−1})

Shapes (torch's rules): a conv gives ``⌊(H + 2·pad − k)/s⌋ + 1`` per side, pooling ``⌊H/p⌋``.

:func:`parse_arch` checks the grammar; :meth:`Arch.shapes` checks a spec against an input shape and
a class count before any work is done, naming the token and what to write instead.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field, replace

from qsnn.errors import QsnnError

#: Weight widths a layer may have (narrow signed range ±(2^(b−1) − 1)).
MIN_WEIGHT_BITS, MAX_WEIGHT_BITS = 2, 8

#: The paper's networks (Table II footnote), in canonical form, per preset row.
PAPER_ARCH = {
    "mnist": "16C5-AP2-64C5-AP2-D10",
    "fmnist": "16C5-AP2-64C5-AP2-D10",
    "dvs128": "16C5-AP2-32C5-AP2-D11",
}


class ArchError(QsnnError):
    """A spec that cannot describe a network (grammar, shapes or classes)."""


@dataclass(frozen=True)
class ConvSpec:
    """A k×k convolution of stride s and zero padding pad, then p×p average pooling (1 = none)."""

    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    pool: int = 1
    weight_bits: int | None = None  # None: the run's --weight-bits
    kind: str = field(default="conv", init=False)

    def token(self) -> str:
        t = f"{self.out_channels}C{self.kernel}"
        t += f"s{self.stride}" if self.stride != 1 else ""
        t += f"p{self.padding}" if self.padding else ""
        t += f"w{self.weight_bits}" if self.weight_bits is not None else ""
        return t + (f"-AP{self.pool}" if self.pool > 1 else "")

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, int, int]:
        _, h, w = shape
        conv = [(n + 2 * self.padding - self.kernel) // self.stride + 1 for n in (h, w)]
        return (self.out_channels, conv[0] // self.pool, conv[1] // self.pool)


@dataclass(frozen=True)
class DenseSpec:
    """A dense layer on the input flattened C-major (torch's flatten); ``in_features`` only checks."""

    out_features: int
    in_features: int | None = field(default=None, compare=False)  # the paper's <in>Dense: a check only
    weight_bits: int | None = None
    kind: str = field(default="dense", init=False)

    def token(self) -> str:
        return f"D{self.out_features}" + (f"w{self.weight_bits}" if self.weight_bits is not None else "")

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int]:
        return (self.out_features,)


LayerSpec = ConvSpec | DenseSpec


@dataclass(frozen=True)
class Arch:
    """A parsed spec: the synaptic layers in order (pooling folded into its conv)."""

    layers: tuple[LayerSpec, ...]
    source: str = field(default="", compare=False)  # the spec as the user wrote it (for messages)

    def __str__(self) -> str:
        return "-".join(layer.token() for layer in self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def shapes(self, input_shape: tuple[int, ...], num_classes: int | None = None) -> list[tuple[int, ...]]:
        """The spike shape of every layer for one sample; :class:`ArchError` where a shape fails.

        Checks that every conv sees a (C, H, W) input large enough for its kernel and pooling, that a
        paper-style ``<in>Dense<out>`` gets <in> inputs, and that the last layer has ``num_classes``
        outputs.
        """
        shape = tuple(int(v) for v in input_shape)
        spec = self.source or str(self)
        out = []
        for i, layer in enumerate(self.layers):
            tok = _source_token(layer)
            if layer.kind == "conv":
                if len(shape) != 3:
                    raise ArchError(f"architecture {spec}: {tok} (layer {i + 1}) needs a (C, H, W) input, got {shape}")
                new = layer.out_shape(shape)
                if min(new[1:]) < 1:
                    h, w = shape[1:]
                    raise ArchError(
                        f"architecture {spec}: {tok} (layer {i + 1}) shrinks its {h}×{w} input below 1×1; "
                        "use a smaller kernel, stride or pooling, padding, or fewer layers"
                    )
            else:
                n = math.prod(shape)
                if layer.in_features is not None and layer.in_features != n:
                    desc = "×".join(map(str, shape))
                    raise ArchError(
                        f"architecture {spec}: {layer.in_features}Dense{layer.out_features} (layer {i + 1}) "
                        f"gets {n} inputs ({desc}), not {layer.in_features}; write {n}Dense{layer.out_features} "
                        f"or D{layer.out_features}"
                    )
                new = layer.out_shape(shape)
            out.append(new)
            shape = new
        if num_classes is not None and shape != (num_classes,):
            last = self.layers[-1]
            raise ArchError(
                f"architecture {spec}: the last layer {_source_token(last)} has {math.prod(shape)} outputs but the "
                f"data has {num_classes} classes; end the spec with D{num_classes}"
            )
        return out

    def num_weights(self, input_shape: tuple[int, ...]) -> int:
        """The synaptic weights of the network for ``input_shape`` (biases not counted): a conv has
        out·C_in·k² of them, a dense layer out·(inputs)."""
        shape, total = tuple(int(v) for v in input_shape), 0
        for layer, out in zip(self.layers, self.shapes(input_shape)):
            if layer.kind == "conv":
                total += layer.out_channels * shape[0] * layer.kernel**2
            else:
                total += layer.out_features * math.prod(shape)
            shape = out
        return total

    def check_memory(self, input_shape: tuple[int, ...], memory_bytes: int) -> None:
        """:class:`ArchError` when the network's float32 weights alone exceed ``memory_bytes`` (a spec
        typo such as 99999999C3 would otherwise fail deep inside torch's allocator)."""
        n = self.num_weights(input_shape)
        if 4 * n > memory_bytes:
            raise ArchError(
                f"architecture {self.source or self}: {n:,} weights take {4 * n / 2**30:,.1f} GiB as float32, more "
                f"than this machine's {memory_bytes / 2**30:.1f} GiB of memory; use fewer channels or features"
            )

    def layer_bits(self, default: int) -> list[int]:
        """Each layer's weight width: its ``w<bits>`` suffix, else ``default`` (the run's)."""
        return [layer.weight_bits if layer.weight_bits is not None else default for layer in self.layers]


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (POSIX), None where it cannot be asked."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None


def _source_token(layer: LayerSpec) -> str:
    return layer.token().split("-")[0]


_CONV = re.compile(r"(?P<out>\d+)(?:C|Conv)(?P<k>\d+)(?P<suffix>(?:[spw]\d+)*)")
_DENSE = re.compile(r"(?:(?P<in>\d+)Dense(?P<out1>\d+)|D(?P<out2>\d+))(?P<suffix>(?:w\d+)*)")
_POOL = re.compile(r"AP(?P<p>\d+)")
_SUFFIX = re.compile(r"([spw])(\d+)")

SPEC_HELP = (
    "tokens joined by '-': <out>C<k>[s<stride>][p<pad>][w<bits>] (conv), AP<p> (average pooling of "
    "the conv before it), D<out>[w<bits>] or <in>Dense<out> (dense); e.g. 16C5-AP2-64C5-AP2-D10"
)


def parse_arch(spec: str | Arch) -> Arch:
    """Parse a spec string (see the module docstring); :class:`ArchError` names the bad token."""
    if isinstance(spec, Arch):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise ArchError(f"architecture {spec!r}: empty; {SPEC_HELP}")
    text = spec.strip()
    layers: list[LayerSpec] = []
    for raw in text.split("-"):
        tok = raw.strip()
        where = f"architecture {text!r}: token {tok!r}"
        if m := _POOL.fullmatch(tok):
            p = int(m["p"])
            if not layers:
                raise ArchError(f"{where}: pooling must follow a conv layer; {SPEC_HELP}")
            prev = layers[-1]
            if prev.kind != "conv":
                raise ArchError(
                    f"{where}: pooling after a dense layer is not defined (pooling acts on a conv's "
                    "current); move it before the first dense layer or drop it"
                )
            if prev.pool > 1:
                raise ArchError(f"{where}: the conv before it is already pooled (AP{prev.pool}); write one AP per conv")
            if p < 2:
                raise ArchError(f"{where}: pooling side must be >= 2 (AP2, AP3, ...)")
            layers[-1] = replace(prev, pool=p)
        elif m := _CONV.fullmatch(tok):
            if layers and layers[-1].kind == "dense":
                raise ArchError(
                    f"{where}: a conv layer after a dense layer is not supported (dense layers "
                    "flatten); put every conv before the first dense layer"
                )
            sfx = _suffixes(m["suffix"], where)
            layer = ConvSpec(
                int(m["out"]), int(m["k"]), stride=sfx.get("s", 1), padding=sfx.get("p", 0), weight_bits=sfx.get("w")
            )
            _check_positive(where, out_channels=layer.out_channels, kernel=layer.kernel, stride=layer.stride)
            if layer.padding >= layer.kernel:
                raise ArchError(f"{where}: padding {layer.padding} must be smaller than the kernel {layer.kernel}")
            layers.append(layer)
        elif m := _DENSE.fullmatch(tok):
            sfx = _suffixes(m["suffix"], where)
            out = int(m["out1"] or m["out2"])
            layer = DenseSpec(out, int(m["in"]) if m["in"] else None, weight_bits=sfx.get("w"))
            _check_positive(where, out_features=out)
            layers.append(layer)
        else:
            raise ArchError(f"{where}: unknown token; {SPEC_HELP}")
        bits = layers[-1].weight_bits
        if bits is not None and not MIN_WEIGHT_BITS <= bits <= MAX_WEIGHT_BITS:
            raise ArchError(f"{where}: w{bits}: weight bits must be {MIN_WEIGHT_BITS}..{MAX_WEIGHT_BITS}")
    if layers[-1].kind != "dense":
        raise ArchError(
            f"architecture {text!r}: the last layer must be dense (its neurons are the classes); "
            "end the spec with D<number of classes>"
        )
    return Arch(tuple(layers), source=text)


def _suffixes(text: str, where: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in _SUFFIX.findall(text or ""):
        if key in out:
            raise ArchError(f"{where}: suffix {key!r} given twice")
        out[key] = int(value)
    return out


def _check_positive(where: str, **values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise ArchError(f"{where}: {name} must be >= 1, got {value}")


def layer_names(arch: Arch) -> list[str]:
    """The name of each synaptic layer, the one place they are made: convs ``conv1``, ``conv2``, ...,
    dense layers ``fc`` when there is one (the paper's network: conv1, conv2, fc), else ``fc1``, ``fc2``, ..."""
    dense = sum(layer.kind == "dense" for layer in arch.layers)
    names, counts = [], {"conv": 0, "dense": 0}
    for layer in arch.layers:
        counts[layer.kind] += 1
        if layer.kind == "conv":
            names.append(f"conv{counts['conv']}")
        else:
            names.append("fc" if dense == 1 else f"fc{counts['dense']}")
    return names


def fan_in_fix(
    kind: str, in_channels: int, taps: int, in_shape: tuple[int, ...], limit: int, source: str | None
) -> str:
    """The smallest change to the network that brings a layer's fan-in within ``limit``, as a sentence.

    A conv neuron sums C_in · taps synapses (taps = k², or the folded (k+s(p−1))²): at most
    ⌊limit / taps⌋ input channels. A dense neuron sums every value of its C×H×W (or N) input: at most
    ⌊limit / (H·W)⌋ channels, or a map pooled by the smallest f with C·⌊H/f⌋·⌊W/f⌋ ≤ limit (or at most
    ``limit`` neurons before it). ``kind``: ``"conv"`` or ``"dense"``; ``in_channels``: C_in; ``source``
    names the layer whose output that is (None: the input); ``taps``: synapses per input channel (conv;
    unused for dense). One sentence for the compiler's profile limits and the targets' own."""
    where = f"layer {source}" if source else "the input"
    if kind == "conv":
        most = limit // taps
        if most < 1:
            return f"its kernel alone has {taps} taps: use a smaller kernel (or pooling)"
        return f"make it fit with at most {most} channels in {where} (now {in_channels}), or a smaller kernel"
    return smaller_map_fix(in_shape, limit, where, "inputs")


def smaller_map_fix(shape: tuple[int, ...], limit: int, where: str, what: str) -> str:
    """How the C×H×W (or N) output of ``where`` gets to at most ``limit`` values, as a sentence: at most
    ⌊limit / (H·W)⌋ channels (N: ``limit`` neurons), or its map pooled by the smallest f with
    C·⌊H/f⌋·⌊W/f⌋ ≤ limit (the pooling a spec writes APf)."""
    if len(shape) != 3:
        return f"make it fit with at most {limit} neurons in {where} (now {math.prod(shape)})"
    c, h, w = (int(v) for v in shape)
    fits = [f"at most {limit // (h * w)} channels in {where} (now {c})"] if limit >= h * w else []
    f = next((f for f in range(2, min(h, w) + 1) if c * (h // f) * (w // f) <= limit), None)
    if f:
        fits.append(
            f"the {h}×{w} map of {where} pooled by {f} (AP{f}: {c}×{h // f}×{w // f} = {c * (h // f) * (w // f)} {what})"
        )
    return "make it fit with " + (
        ", or ".join(fits) if fits else f"fewer than {c} channels and a smaller map in {where}"
    )
