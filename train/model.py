"""The QSNN of an architecture spec (:mod:`qsnn.arch`): synaptic layers of LIF neurons.

The paper's networks (Table II footnote) are the default specs of their datasets:

MNIST / FashionMNIST (1×28×28):  16C5-AP2-64C5-AP2-D10     (the paper: 16Conv5-AP2-64Conv5-AP2-1024Dense10)
DVS128 Gesture (2×32×32):        16C5-AP2-32C5-AP2-D11     (Dense 800 → 11)

and any other spec builds the same way: layer l of L, at time step t (pooling acts on the current,
before the neuron; BatchNorm after every conv when the run asks for it; dropout on the spikes
entering the output layer; a synaptic bias b^l when the run asks for it)::

    I^l_t = BN_l(AP_p(W^l ⊛_{s,pad} z^{l−1}_t + b^l))      conv
    I^l_t = W^l · drop(flat(z^{l−1}_t)) + b^l               dense
    z^l_t, u^l_t = LIF(I^l_t, u^l_{t−1}),      z^0_t = x_t

Trained for a chip profile (``cfg.synaptic_delay = d``, Loihi: 1), every synapse sees its input d
steps late (``z^{l−1}_{t−d}``), and before its input arrives (t < d) a layer's current is what it
gets from a zero input: its bias and BatchNorm's shift (running statistics), as the integer network
adds its bias every step.

Weights are Brevitas b-bit signed narrow-range integers (``cfg.weight_bits``, or the spec's ``w<b>``
per layer) times a scale per tensor or per output channel (``cfg.weight_scale``), a float as in the
paper or a power of two (``cfg.quant_scale``), for quantized runs; plain floats for ``fp32``. A static
image is fed unchanged at every step (no encoding); event frames supply one frame per step.

The layers live in three parallel ``nn.ModuleList`` s, ``synapses``, ``norms`` and ``neurons``, one
entry per layer (so every parameter keeps the order the paper's three-layer model registered it in:
all synapses, then all BatchNorms); :attr:`QSNN.blocks` views them layer by layer.

Two forward paths compute the same function:

* :meth:`QSNN.forward_plain` is the loop the paper's code runs: at every step each Brevitas layer
  quantizes its weights again and each snnTorch ``Leaky`` updates its membrane.
* :meth:`QSNN.forward_fast` (the default) quantizes each weight once per forward pass, computes the
  first layer's current once for a static image, and runs each layer over all T steps before the
  next, so each synaptic layer is one large convolution / matmul over T·B samples; on spike (and
  event-count) inputs it folds the average pooling into the convolution (one stride-2 6×6
  convolution, :func:`pool_into_kernel`; with stride s a stride s·p one). Because the
  network is feed-forward, layer l at step t depends only on layer l−1 at steps ≤ t, so the order
  of evaluation changes nothing but speed. Folding the pooling changes only the order of float
  additions: with power-of-two weight scales (``quant_scale="po2"``) every partial sum of binary
  spikes times 4-bit weights is exact in float32, so the two paths give bit-identical spikes,
  membranes and losses; with float scales they agree to float32 rounding (~1e-7 relative), which
  can flip a spike whose membrane lands within rounding of θ. BatchNorm in training mode keeps the
  plain loop's per-step batch statistics and running-stat updates: after a convolution over T·B
  samples it runs once per step on contiguous tensors (its CPU reduction order depends on the
  layout), and for a static image, whose layer-1 current is the same at every step, it normalises
  once (every step would get that output) and repeats only the running-statistics update
  (:meth:`QSNN._bn_repeated`, the same update bit for bit). Dropout draws its masks step by step in
  the same order, so the random streams match too (one draw for all T steps would be another
  stream: on CPU each ``bernoulli_`` call seeds MKL's generator afresh; it measured only ~1.3x faster
  for the dropout of 25 × 128 × 1024 spikes). On CPU layer 1's spikes are laid out channels-last
  (``lif_scan(memory_format=torch.channels_last)``), the layout oneDNN convolves fastest in layer 2
  (forward and backward); layout changes no value.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import snntorch as snn
import torch
import torch.nn as nn
import torch.nn.functional as F
from snntorch import surrogate

from qsnn.arch import Arch, LayerSpec, layer_names
from qsnn.config import TrainConfig

from .lif import LIFState, lif_scan, lif_step


def pool_into_kernel(w: torch.Tensor, p: int, stride: int = 1) -> torch.Tensor:
    """The kernel of ``AP_p(W ⊛_s x)`` as one convolution of stride s·p:
    W' = (1/p²) Σ_{a,b<p} shift_{a·s, b·s}(W), of side k + (p − 1)·s.

    ``F.conv2d(x, pool_into_kernel(w, p, s), stride=s * p, padding=pad)`` equals
    ``F.avg_pool2d(F.conv2d(x, w, stride=s, padding=pad), p)`` up to float rounding (the same sums in
    another order, and the same output size) and needs p²·k²/(k+(p−1)s)² fewer multiplies.
    """
    s = stride
    return sum(F.pad(w, (b * s, (p - 1 - b) * s, a * s, (p - 1 - a) * s)) for a in range(p) for b in range(p)) / (p * p)


def _steps(seq: torch.Tensor, n: int) -> torch.Tensor:
    """The first n steps of a (T, ...) sequence; the sequence itself when n = T (a slice's backward
    would fill and copy a (T, ...) gradient)."""
    return seq if n == seq.shape[0] else seq[:n]


#: Device types on which the fast path lays spikes feeding a convolution out channels-last: the CPU,
#: where oneDNN convolves that layout fastest (bench/training.py). On CUDA the choice is measured by
#: ``make gpu-check`` (its "channels-last on CUDA" row); a layout changes no value.
CHANNELS_LAST_DEVICES: tuple[str, ...] = ("cpu",)


class SNNOutput(NamedTuple):
    """Output spikes and membranes of the last layer, (T, B, C); per-layer records if asked."""

    spikes: torch.Tensor
    membrane: torch.Tensor
    layers: dict[str, torch.Tensor] | None = None


def weight_quantizer(scale: str, per: str = "tensor"):
    """Brevitas weight quantizer: float scale (``float``) or power-of-two (``po2``), one per tensor
    (``tensor``, the paper) or one per output channel (``channel``); the bit width is set per layer."""
    from brevitas import quant

    if per == "tensor":
        return {"float": quant.Int8WeightPerTensorFloat, "po2": quant.Int8WeightPerTensorFixedPoint}[scale]
    if scale == "float":
        return quant.Int8WeightPerChannelFloat

    class Int8WeightPerChannelFixedPoint(quant.Int8WeightPerTensorFixedPoint):
        """Brevitas' power-of-two weight quantizer with one scale per output channel."""

        scaling_per_output_channel = True

    return Int8WeightPerChannelFixedPoint


def init_weights(layer: nn.Module) -> None:
    """Uniform initialisation W ~ U(−1/√N_in, 1/√N_in), N_in the fan-in of one output neuron.

    This is the initialisation the paper's published code trains with (PyTorch's default for
    conv and linear layers, which Brevitas' layers inherit); it keeps the initial weights inside
    the weight-clipping range [−1, 1].
    """
    fan_in = layer.weight[0].numel()
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound)


class Block(NamedTuple):
    """One layer of the network as the forward passes read it: its spec, synapse, BatchNorm (or
    Identity), neurons, output shape and whether dropout acts on its input."""

    name: str
    spec: LayerSpec
    synapse: nn.Module
    bn: nn.Module
    lif: nn.Module
    shape: tuple[int, ...]
    dropout: bool


class QSNN(nn.Module):
    """The QSNN of ``cfg.arch``; see the module docstring for the equations."""

    def __init__(self, cfg: TrainConfig, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.arch = cfg.architecture
        self.layer_shapes = [tuple(s) for s in self.arch.shapes(self.input_shape, num_classes)]
        self.names = layer_names(self.arch)
        in_shapes = [self.input_shape, *self.layer_shapes[:-1]]
        bits = self.arch.layer_bits(cfg.weight_bits)
        # every synapse is built (drawing PyTorch's default initialisation) before any is initialised:
        # the paper's network then gets the weights it always got for the same seed
        self.synapses = nn.ModuleList(
            self._synapse(spec, shape, b) for spec, shape, b in zip(self.arch.layers, in_shapes, bits)
        )
        for layer in self.synapses:
            init_weights(layer)
        self.norms = nn.ModuleList(
            nn.BatchNorm2d(spec.out_channels) if spec.kind == "conv" and cfg.batch_norm else nn.Identity()
            for spec in self.arch.layers
        )
        self.dropout = nn.Dropout(cfg.dropout)
        # β and θ as float32 buffers, the way snnTorch stores them (one place for their dtype).
        self.register_buffer("beta", torch.as_tensor(cfg.beta, dtype=torch.float32))
        self.register_buffer("theta", torch.as_tensor(cfg.threshold, dtype=torch.float32))
        # snnTorch neurons for the plain (reference) path.
        leaky = dict(
            beta=cfg.beta,
            threshold=cfg.threshold,
            spike_grad=surrogate.fast_sigmoid(slope=cfg.slope),
            init_hidden=False,
            reset_mechanism=cfg.reset,
        )
        self.neurons = nn.ModuleList(snn.Leaky(**leaky) for _ in self.arch.layers)
        last = len(self.arch) - 1  # dropout acts on the spikes entering the output layer (not on an input image)
        self._dropout_at = last if last > 0 and self.arch.layers[last].kind == "dense" else None

    @classmethod
    def from_layers(
        cls,
        cfg: Any,
        input_shape: tuple[int, int, int],
        arch: Arch,
        *,
        synapses: list[nn.Module],
        norms: list[nn.Module],
        neurons: list[nn.Module],
    ) -> "QSNN":
        """A QSNN around modules built elsewhere (a user's own Sequential: :mod:`qsnn.export.torch_model`),
        shared, not copied: ``synapses`` (Brevitas or torch conv/linear), ``norms`` (BatchNorm2d or
        Identity) and ``neurons`` (snnTorch ``Leaky``, each with its own β and θ), one per layer of
        ``arch``; ``cfg`` carries num_steps, reset, slope, synaptic_delay and fast."""
        self = cls.__new__(cls)
        nn.Module.__init__(self)
        self.cfg, self.input_shape, self.arch = cfg, tuple(input_shape), arch
        self.layer_shapes = [tuple(s) for s in arch.shapes(self.input_shape)]
        self.num_classes = self.layer_shapes[-1][0]
        self.names = layer_names(arch)
        self.synapses, self.norms, self.neurons = nn.ModuleList(synapses), nn.ModuleList(norms), nn.ModuleList(neurons)
        self.dropout = nn.Dropout(0.0)
        # detached: a learnable β/θ (learn_beta=True) is a Parameter, and a buffer cloned from it would be a
        # non-leaf tensor that copy.deepcopy (the exporter's copy) refuses
        self.register_buffer("beta", torch.as_tensor(neurons[0].beta, dtype=torch.float32).detach().clone())
        self.register_buffer("theta", torch.as_tensor(neurons[0].threshold, dtype=torch.float32).detach().clone())
        self._dropout_at = None
        return self

    def _synapse(self, spec: LayerSpec, in_shape: tuple[int, ...], bits: int) -> nn.Module:
        cfg = self.cfg
        if spec.kind == "conv":
            args = (in_shape[0], spec.out_channels, spec.kernel)
            kw = dict(stride=spec.stride, padding=spec.padding, bias=cfg.bias)
        else:
            args, kw = (math.prod(in_shape), spec.out_features), dict(bias=cfg.bias)
        if cfg.quantized:
            import brevitas.nn as qnn

            kw.update(weight_bit_width=bits, weight_quant=weight_quantizer(cfg.quant_scale, cfg.weight_scale))
            return (qnn.QuantConv2d if spec.kind == "conv" else qnn.QuantLinear)(*args, **kw)
        return (nn.Conv2d if spec.kind == "conv" else nn.Linear)(*args, **kw)

    @property
    def blocks(self) -> list[Block]:
        """The layers in order, each as a :class:`Block`."""
        return [
            Block(n, spec, syn, bn, lif, shape, i == self._dropout_at)
            for i, (n, spec, syn, bn, lif, shape) in enumerate(
                zip(self.names, self.arch.layers, self.synapses, self.norms, self.neurons, self.layer_shapes)
            )
        ]

    # -- weights -------------------------------------------------------------------------------
    def synapse_by_name(self) -> dict[str, nn.Module]:
        """The synaptic layers by layer name (``conv1``, ..., ``fc``)."""
        return dict(zip(self.names, self.synapses))

    def effective_weight(self, layer: nn.Module) -> torch.Tensor:
        """The weight the layer multiplies by: dequantized b-bit integers × scale (a Brevitas layer),
        or the float."""
        return layer.quant_weight().value if hasattr(layer, "quant_weight") else layer.weight

    @staticmethod
    def neuron_constants(block: Block) -> tuple[torch.Tensor, torch.Tensor]:
        """(β, θ) of a layer: its snnTorch ``Leaky``'s float32 values (each layer may have its own)."""
        return block.lif.beta, block.lif.threshold

    @torch.no_grad()
    def clip_weights(self, bound: float = 1.0) -> None:
        """Weight clipping: clamp the float (latent) weights to [−bound, bound]."""
        for layer in self.synapses:
            layer.weight.clamp_(-bound, bound)

    # -- inputs --------------------------------------------------------------------------------
    def _time_major(self, x: torch.Tensor) -> tuple[torch.Tensor, bool, int]:
        """(x, static, T): static images (B, C, H, W) repeat for cfg.num_steps; frames are (B, T, C, H, W)."""
        if x.dim() == 4:
            return x, True, self.cfg.num_steps
        if x.dim() == 5:
            return x.transpose(0, 1), False, x.shape[1]
        raise ValueError(f"input must be (B, C, H, W) or (B, T, C, H, W), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor, record: bool = False) -> SNNOutput:
        return self.forward_fast(x, record) if self.cfg.fast else self.forward_plain(x, record)

    # -- one layer's current, module by module (the plain loop and the exported step) -----------
    def current(self, block: Block, z_in: torch.Tensor) -> torch.Tensor:
        """I_t of one layer from its input at one step, through the Brevitas/torch modules:
        ``BN(AP_p(conv(z)))`` or ``fc(drop(flat(z)))``."""
        spec = block.spec
        if spec.kind == "conv":
            cur = block.synapse(z_in)
            return block.bn(F.avg_pool2d(cur, spec.pool) if spec.pool > 1 else cur)
        flat = z_in.flatten(1)
        return block.synapse(self.dropout(flat) if block.dropout else flat)

    # -- the paper's loop ----------------------------------------------------------------------
    def forward_plain(self, x: torch.Tensor, record: bool = False) -> SNNOutput:
        """Step-by-step loop with Brevitas layers and snnTorch ``Leaky`` neurons (the baseline)."""
        x, static, T = self._time_major(x)
        B = x.shape[1] if not static else x.shape[0]
        d = self.cfg.synaptic_delay
        blocks = self.blocks
        mems = [torch.zeros(B, *blk.shape, device=x.device) for blk in blocks]
        rec: dict[str, list[torch.Tensor]] = {f"{k}{i}": [] for i in range(1, len(blocks) + 1) for k in "zu"}
        inputs: list[list[torch.Tensor]] = [[] for _ in blocks]  # each layer's input by step (delay d)
        for t in range(T):
            z = x if static else x[t]
            for i, blk in enumerate(blocks):
                inputs[i].append(z)
                cur = self.current(blk, inputs[i][t - d]) if t >= d else self._no_input(blk, B, x.device)
                z, mems[i] = blk.lif(cur, mems[i])
                rec[f"z{i + 1}"].append(z)
                rec[f"u{i + 1}"].append(mems[i])
        out = {k: torch.stack(v) for k, v in rec.items()}
        L = len(blocks)
        return SNNOutput(out[f"z{L}"], out[f"u{L}"], out if record else None)

    # -- the fast path -------------------------------------------------------------------------
    def _no_input(self, block: Block, batch: int, device) -> torch.Tensor:
        """A layer's current at a step its (delayed) input has not arrived yet: the synapse gives its
        bias b alone, then BatchNorm (conv layers) on the running statistics, h = (b − μ)·γ/√(σ² + ε) + β_BN
        (what the integer network adds as its bias), without a statistics update; 0 without either."""
        cur = torch.zeros(batch, *block.shape, device=device)
        bias = getattr(block.synapse, "bias", None)
        if bias is not None:
            cur = cur + (bias.view(-1, 1, 1) if block.spec.kind == "conv" else bias)
        bn = block.bn
        if isinstance(bn, nn.Identity):
            return cur
        return F.batch_norm(cur, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

    def _delayed(self, cur: torch.Tensor, first: torch.Tensor | None) -> torch.Tensor:
        """(T − d, B, ...) currents of the steps whose input has arrived → (T, B, ...), the d no-input
        currents ``first`` in front (computed before this layer's BatchNorm updated its statistics,
        as in the step-by-step loop)."""
        d = self.cfg.synaptic_delay
        if d == 0:
            return cur
        return torch.cat([first.expand(d, *first.shape), cur])

    def _bn_per_step(self, bn: nn.Module, cur: torch.Tensor) -> torch.Tensor:
        """BatchNorm on (T, B, ...) exactly as T separate calls would apply it."""
        if isinstance(bn, nn.Identity):
            return cur
        if not self.training:
            return bn(cur.flatten(0, 1)).view_as(cur)  # running statistics: pointwise, order-free
        return torch.stack([bn(c) for c in cur])

    def _bn_repeated(self, bn: nn.Module, cur: torch.Tensor, steps: int) -> torch.Tensor:
        """BatchNorm of the same current at ``steps`` steps (a static image's layer 1), exactly as
        ``steps`` separate calls would apply it, for the cost of one.

        In training mode every call normalises with the batch statistics of its input, so all steps
        get the output of the first call; only the running statistics move at each call. They are
        moved ``steps − 1`` more times by ``torch.batch_norm_update_stats``, the update the training
        forward itself runs (the same statistics, the same formula), with ``num_batches_tracked``
        counted as T calls count it. The gradient reaches BatchNorm summed over the steps (one
        backward call instead of T), equal to the sum of T backward calls up to the order of float
        additions.
        """
        out = bn(cur)
        if self.training and not isinstance(bn, nn.Identity) and bn.track_running_stats and steps > 1:
            with torch.no_grad():
                for _ in range(steps - 1):
                    bn.num_batches_tracked.add_(1)
                    factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
                    torch.batch_norm_update_stats(cur.detach(), bn.running_mean, bn.running_var, factor)
        return out

    def _static_current(self, block: Block, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """The first layer's synaptic current of a static image (the same at every step)."""
        spec, bias = block.spec, getattr(block.synapse, "bias", None)
        if spec.kind == "dense":
            return F.linear(x.flatten(1), w, bias)
        cur = F.conv2d(x, w, bias, stride=spec.stride, padding=spec.padding)
        return F.avg_pool2d(cur, spec.pool) if spec.pool > 1 else cur

    def _sequence_current(self, block: Block, seq: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """Currents (T', B, ...) of a layer over a (T', B, ...) input sequence (spikes or event
        counts), one convolution / matmul over T'·B samples; average pooling folded into the kernel."""
        spec, bias = block.spec, getattr(block.synapse, "bias", None)
        T = seq.shape[0]
        if spec.kind == "dense":
            flat = seq.flatten(2)
            if block.dropout and self.training and self.dropout.p > 0:
                flat = torch.stack([self.dropout(f) for f in flat])  # masks drawn step by step
            return F.linear(flat, w, bias)
        x = seq.flatten(0, 1)
        if spec.pool > 1:  # pooling folded into the kernel (a bias is then added after the sum: float rounding)
            cur = F.conv2d(
                x,
                pool_into_kernel(w, spec.pool, spec.stride),
                bias,
                stride=spec.stride * spec.pool,
                padding=spec.padding,
            )
        else:
            cur = F.conv2d(x, w, bias, stride=spec.stride, padding=spec.padding)
            cur = F.avg_pool2d(cur, spec.pool) if spec.pool > 1 else cur
        return self._bn_per_step(block.bn, cur.contiguous().view(T, -1, *cur.shape[1:]))

    def forward_fast(self, x: torch.Tensor, record: bool = False) -> SNNOutput:
        """Layer-by-layer evaluation over all T steps; same values as :meth:`forward_plain`."""
        x, static, T = self._time_major(x)
        cfg = self.cfg
        d = cfg.synaptic_delay  # layer l at step t sees its input of step t − d (zeros before)
        Tl = T - d  # steps whose input has arrived
        B = x.shape[0] if static else x.shape[1]
        blocks = self.blocks
        layers: dict[str, torch.Tensor] = {}
        z = x
        for i, blk in enumerate(blocks):
            w = self.effective_weight(blk.synapse)
            beta, theta = self.neuron_constants(blk)
            none = self._no_input(blk, B, x.device) if d else None
            # Spikes of a conv feeding a conv are laid out channels-last on CPU, the layout oneDNN
            # convolves fastest (forward and backward); BatchNorm stays on contiguous tensors as in the
            # plain loop (its CPU reduction order depends on the layout). Layout changes no value.
            feeds_conv = i + 1 < len(blocks) and blocks[i + 1].spec.kind == "conv"
            cl = x.device.type in CHANNELS_LAST_DEVICES
            fmt = torch.channels_last if cl and blk.spec.kind == "conv" and feeds_conv else None
            if static and i == 0:
                cur = self._bn_repeated(blk.bn, self._static_current(blk, z, w), Tl)  # once for all steps
                if fmt is not None:
                    cur = cur.contiguous(memory_format=fmt)
                if not d:  # one current at every step: the scan sums its gradient over T itself
                    z, u = lif_scan(cur, beta, theta, cfg.slope, cfg.reset, memory_format=fmt, steps=T)
                else:
                    z, u = lif_scan(
                        self._delayed(cur.expand(Tl, *cur.shape), none),
                        beta,
                        theta,
                        cfg.slope,
                        cfg.reset,
                        memory_format=fmt,
                    )
            else:
                cur = self._sequence_current(blk, _steps(z, Tl), w)
                z, u = lif_scan(self._delayed(cur, none), beta, theta, cfg.slope, cfg.reset, memory_format=fmt)
            if record:
                layers[f"z{i + 1}"], layers[f"u{i + 1}"] = z, u
        return SNNOutput(z, u, layers if record else None)

    # -- one time step with explicit state (export) ----------------------------------------------
    def step(self, x_t: torch.Tensor, *state: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """One time step in eval semantics: (x_t, u¹..u^L) → (z^L_t, u¹_t..u^L_t).

        The membrane state is explicit, so a graph exported from this has it as inputs/outputs. With
        a synaptic delay of one step the delay lines are explicit too: ``state`` = (u¹..u^L, d¹..d^L),
        d^l the input of layer l at the previous step (x_{t−1}, z¹_{t−1}, ..., z^{L−1}_{t−1}; zeros at
        t = 0); each synapse reads its d, and the step also returns the new delay lines
        (x_t, z¹_t, ..., z^{L−1}_t).
        """
        cfg, blocks = self.cfg, self.blocks
        L = len(blocks)
        lines = L if cfg.synaptic_delay else 0
        if cfg.synaptic_delay not in (0, 1) or len(state) != L + lines:
            raise ValueError(
                f"step() takes {L} membranes and {L * cfg.synaptic_delay} delay lines for "
                f"{L} layers and synaptic delay {cfg.synaptic_delay} (0 or 1), got {len(state)} tensors"
            )
        us, delayed = state[:L], state[L:]
        new_u, new_d = [], []
        z = x_t
        for i, blk in enumerate(blocks):
            if lines:
                new_d.append(z)
            cur = self.current(blk, delayed[i] if lines else z)
            z, s = lif_step(cur, LIFState(us[i]), *self.neuron_constants(blk), cfg.slope, cfg.reset)
            new_u.append(s.u)
        return (z, *new_u, *new_d)

    def delay_state(self, batch: int, device=None) -> tuple[torch.Tensor, ...]:
        """Zero delay lines (x, z¹, ..., z^{L−1}) for :meth:`step` when the model has a synaptic delay, else ()."""
        if not self.cfg.synaptic_delay:
            return ()
        shapes = [self.input_shape, *self.layer_shapes[:-1]]
        return tuple(torch.zeros(batch, *s, device=device) for s in shapes)

    def initial_state(self, batch: int, device=None) -> tuple[torch.Tensor, ...]:
        """Zero membranes (u¹, ..., u^L) for a batch."""
        return tuple(torch.zeros(batch, *s, device=device) for s in self.layer_shapes)
