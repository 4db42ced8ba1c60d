"""The paper's QSNNs: two conv layers and a dense layer of LIF neurons (Table II footnote).

MNIST / FashionMNIST (1×28×28):  16C5 - AP2 - 64C5 - AP2 - Dense(1024 → 10)
DVS128 Gesture (2×32×32):        16C5 - AP2 - 32C5 - AP2 - Dense(800 → 11)

Per layer and time step t (pooling acts on the current, before the neuron; BatchNorm optional;
dropout on the spikes entering the dense layer; no biases)::

    I¹_t = BN₁(AP₂(W¹ ⊛ x_t))       z¹_t, u¹_t = LIF(I¹_t, u¹_{t-1})
    I²_t = BN₂(AP₂(W² ⊛ z¹_t))      z²_t, u²_t = LIF(I²_t, u²_{t-1})
    I³_t = W³ · drop(flat(z²_t))    z³_t, u³_t = LIF(I³_t, u³_{t-1})

Trained for a chip profile (``cfg.synaptic_delay = d``, Loihi: 1), every synapse sees its input d
steps late: ``I¹_t = BN₁(AP₂(W¹ ⊛ x_{t−d}))``, ``I²_t`` from ``z¹_{t−d}``, ``I³_t`` from ``z²_{t−d}``,
and before its input arrives (t < d) a layer's current is BatchNorm's shift alone (running
statistics), as the integer network adds its bias every step.

Weights are Brevitas 4-bit signed narrow-range integers times a per-tensor scale (a float as in
the paper, or a power of two) for ``int4``, or plain floats for ``fp32``. A static image is fed
unchanged at every step (no encoding); event frames supply one frame per step.

Two forward paths compute the same function:

* :meth:`QSNN.forward_plain` is the loop the paper's code runs: at every step each Brevitas layer
  quantizes its weights again and each snnTorch ``Leaky`` updates its membrane.
* :meth:`QSNN.forward_fast` (the default) quantizes each weight once per forward pass, computes the
  first layer's current once for a static image, and runs each layer over all T steps before the
  next, so each synaptic layer is one large convolution / matmul over T·B samples; on spike (and
  event-count) inputs it folds the average pooling into the convolution (one stride-2 6×6
  convolution, :func:`pool_into_kernel`). Because the
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
from typing import NamedTuple

import snntorch as snn
import torch
import torch.nn as nn
import torch.nn.functional as F
from snntorch import surrogate

from qsnn.config import PRESET_ROW, TrainConfig
from .lif import LIFState, lif_scan, lif_step

#: Conv channels (C1, C2) per dataset family; kernel 5, average pooling 2 after each conv.
ARCHITECTURES = {"mnist": (16, 64), "fmnist": (16, 64), "dvs128": (16, 32)}
KERNEL = 5
POOL = 2


def pool_into_kernel(w: torch.Tensor, p: int = POOL) -> torch.Tensor:
    """The kernel of ``AP_p(W ⊛ x)`` as one convolution of stride p: W' = (1/p²) Σ_{a,b<p} shift_{a,b}(W).

    ``F.conv2d(x, pool_into_kernel(w), stride=p)`` equals ``F.avg_pool2d(F.conv2d(x, w), p)`` up to
    float rounding (the same sums in another order) and needs p²·k²/(k+p−1)² fewer multiplies.
    """
    return sum(F.pad(w, (b, p - 1 - b, a, p - 1 - a)) for a in range(p) for b in range(p)) / (p * p)


def _pooled_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """AP₂(W ⊛ x) as one stride-2 convolution (the fast path's synapse on spike or count inputs)."""
    return F.conv2d(x, pool_into_kernel(w), stride=POOL)


def _steps(seq: torch.Tensor, n: int) -> torch.Tensor:
    """The first n steps of a (T, ...) sequence; the sequence itself when n = T (a slice's backward
    would fill and copy a (T, ...) gradient)."""
    return seq if n == seq.shape[0] else seq[:n]


class SNNOutput(NamedTuple):
    """Output spikes and membranes of the last layer, (T, B, C); per-layer records if asked."""

    spikes: torch.Tensor
    membrane: torch.Tensor
    layers: dict[str, torch.Tensor] | None = None


def weight_quantizer(scale: str):
    """Brevitas weight quantizer: per-tensor float scale (``float``) or power-of-two (``po2``)."""
    from brevitas.quant import Int8WeightPerTensorFixedPoint, Int8WeightPerTensorFloat

    return {"float": Int8WeightPerTensorFloat, "po2": Int8WeightPerTensorFixedPoint}[scale]


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


class QSNN(nn.Module):
    """The QSNN of the paper for one dataset; see the module docstring for the equations."""

    def __init__(self, cfg: TrainConfig, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        c_in, h, w = self.input_shape
        c1, c2 = ARCHITECTURES[PRESET_ROW[cfg.dataset]]
        h1, w1 = (h - KERNEL + 1) // POOL, (w - KERNEL + 1) // POOL
        h2, w2 = (h1 - KERNEL + 1) // POOL, (w1 - KERNEL + 1) // POOL
        self.dense_in = c2 * h2 * w2
        self.layer_shapes = {"lif1": (c1, h1, w1), "lif2": (c2, h2, w2), "lif3": (num_classes,)}
        if cfg.quantized:
            import brevitas.nn as qnn

            quant = dict(weight_bit_width=cfg.weight_bits, weight_quant=weight_quantizer(cfg.quant_scale))
            self.conv1 = qnn.QuantConv2d(c_in, c1, KERNEL, bias=False, **quant)
            self.conv2 = qnn.QuantConv2d(c1, c2, KERNEL, bias=False, **quant)
            self.fc = qnn.QuantLinear(self.dense_in, num_classes, bias=False, **quant)
        else:
            self.conv1 = nn.Conv2d(c_in, c1, KERNEL, bias=False)
            self.conv2 = nn.Conv2d(c1, c2, KERNEL, bias=False)
            self.fc = nn.Linear(self.dense_in, num_classes, bias=False)
        for layer in (self.conv1, self.conv2, self.fc):
            init_weights(layer)
        self.bn1 = nn.BatchNorm2d(c1) if cfg.batch_norm else nn.Identity()
        self.bn2 = nn.BatchNorm2d(c2) if cfg.batch_norm else nn.Identity()
        self.dropout = nn.Dropout(cfg.dropout)
        # β and θ as float32 buffers, the way snnTorch stores them (one place for their dtype).
        self.register_buffer("beta", torch.as_tensor(cfg.beta, dtype=torch.float32))
        self.register_buffer("theta", torch.as_tensor(cfg.threshold, dtype=torch.float32))
        # snnTorch neurons for the plain (reference) path.
        leaky = dict(beta=cfg.beta, threshold=cfg.threshold, spike_grad=surrogate.fast_sigmoid(slope=cfg.slope),
                     init_hidden=False, reset_mechanism=cfg.reset)
        self.lif1, self.lif2, self.lif3 = snn.Leaky(**leaky), snn.Leaky(**leaky), snn.Leaky(**leaky)

    # -- weights -------------------------------------------------------------------------------
    def synapses(self) -> dict[str, nn.Module]:
        return {"conv1": self.conv1, "conv2": self.conv2, "fc": self.fc}

    def effective_weight(self, layer: nn.Module) -> torch.Tensor:
        """The weight the layer multiplies by: dequantized 4-bit integers × scale, or the float."""
        return layer.quant_weight().value if self.cfg.quantized else layer.weight

    @torch.no_grad()
    def clip_weights(self, bound: float = 1.0) -> None:
        """Weight clipping: clamp the float (latent) weights to [−bound, bound]."""
        for layer in self.synapses().values():
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

    # -- the paper's loop ----------------------------------------------------------------------
    def forward_plain(self, x: torch.Tensor, record: bool = False) -> SNNOutput:
        """Step-by-step loop with Brevitas layers and snnTorch ``Leaky`` neurons (the baseline)."""
        x, static, T = self._time_major(x)
        B = x.shape[1] if not static else x.shape[0]
        d = self.cfg.synaptic_delay
        mems = [torch.zeros(B, *self.layer_shapes[n], device=x.device) for n in ("lif1", "lif2", "lif3")]
        rec: dict[str, list[torch.Tensor]] = {k: [] for k in ("z1", "u1", "z2", "u2", "z3", "u3")}
        inputs: list[list[torch.Tensor]] = [[], [], []]   # each layer's input by step (delay d)
        for t in range(T):
            inputs[0].append(x if static else x[t])
            if t >= d:
                cur1 = self.bn1(F.avg_pool2d(self.conv1(inputs[0][t - d]), POOL))
            else:
                cur1 = self._no_input(self.bn1, "lif1", B, x.device)
            z1, mems[0] = self.lif1(cur1, mems[0])
            inputs[1].append(z1)
            if t >= d:
                cur2 = self.bn2(F.avg_pool2d(self.conv2(inputs[1][t - d]), POOL))
            else:
                cur2 = self._no_input(self.bn2, "lif2", B, x.device)
            z2, mems[1] = self.lif2(cur2, mems[1])
            inputs[2].append(z2)
            if t >= d:
                cur3 = self.fc(self.dropout(inputs[2][t - d].flatten(1)))
            else:
                cur3 = self._no_input(None, "lif3", B, x.device)
            z3, mems[2] = self.lif3(cur3, mems[2])
            for key, val in zip(rec, (z1, mems[0], z2, mems[1], z3, mems[2])):
                rec[key].append(val)
        out = {k: torch.stack(v) for k, v in rec.items()}
        return SNNOutput(out["z3"], out["u3"], out if record else None)

    # -- the fast path -------------------------------------------------------------------------
    def _no_input(self, bn: nn.Module | None, layer: str, batch: int, device) -> torch.Tensor:
        """A layer's current at a step its (delayed) input has not arrived yet: the synapse gives 0,
        so the current is BatchNorm's shift h = b − μ·γ/√(σ² + ε) on the running statistics (what
        the integer network adds as its bias), without a statistics update; 0 without BatchNorm."""
        zeros = torch.zeros(batch, *self.layer_shapes[layer], device=device)
        if bn is None or isinstance(bn, nn.Identity):
            return zeros
        return F.batch_norm(zeros, bn.running_mean, bn.running_var, bn.weight, bn.bias, False, 0.0, bn.eps)

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

    def forward_fast(self, x: torch.Tensor, record: bool = False) -> SNNOutput:
        """Layer-by-layer evaluation over all T steps; same values as :meth:`forward_plain`."""
        x, static, T = self._time_major(x)
        cfg = self.cfg
        d = cfg.synaptic_delay            # layer l at step t sees its input of step t − d (zeros before)
        Tl = T - d                        # steps whose input has arrived
        w1, w2, w3 = (self.effective_weight(m) for m in (self.conv1, self.conv2, self.fc))
        B = x.shape[0] if static else x.shape[1]
        none = [self._no_input(bn, name, B, x.device) if d else None
                for bn, name in ((self.bn1, "lif1"), (self.bn2, "lif2"), (None, "lif3"))]
        # Layer 1's spikes laid out channels-last on CPU, where oneDNN's convolution of them (layer 2,
        # forward and backward) runs ~1.6x faster; BatchNorm stays on contiguous tensors as in the
        # plain loop (its CPU reduction order depends on the layout). Values do not depend on layout.
        spikes_format = torch.channels_last if x.device.type == "cpu" else None
        if static:
            cur1 = F.avg_pool2d(F.conv2d(x, w1), POOL)  # the same at every step: compute once
            cur1 = self._bn_repeated(self.bn1, cur1, Tl)
            if spikes_format is not None:
                cur1 = cur1.contiguous(memory_format=spikes_format)
        else:
            cur1 = _pooled_conv(_steps(x, Tl).flatten(0, 1), w1)
            cur1 = self._bn_per_step(self.bn1, cur1.view(Tl, -1, *cur1.shape[1:]))
        if static and not d:   # one current at every step: the scan sums its gradient over T itself
            z1, u1 = lif_scan(cur1, self.beta, self.theta, cfg.slope, cfg.reset, memory_format=spikes_format,
                              steps=T)
        else:
            cur1 = cur1.expand(Tl, *cur1.shape) if static else cur1
            z1, u1 = lif_scan(self._delayed(cur1, none[0]), self.beta, self.theta, cfg.slope, cfg.reset,
                              memory_format=spikes_format)
        cur2 = _pooled_conv(_steps(z1, Tl).flatten(0, 1), w2).contiguous()
        cur2 = self._bn_per_step(self.bn2, cur2.view(Tl, -1, *cur2.shape[1:]))
        z2, u2 = lif_scan(self._delayed(cur2, none[1]), self.beta, self.theta, cfg.slope, cfg.reset)
        flat = _steps(z2, Tl).flatten(2)
        if self.training and self.dropout.p > 0:
            flat = torch.stack([self.dropout(f) for f in flat])  # masks drawn step by step
        cur3 = F.linear(flat, w3)
        z3, u3 = lif_scan(self._delayed(cur3, none[2]), self.beta, self.theta, cfg.slope, cfg.reset)
        layers = {"z1": z1, "u1": u1, "z2": z2, "u2": u2, "z3": z3, "u3": u3} if record else None
        return SNNOutput(z3, u3, layers)

    # -- one time step with explicit state (export) ----------------------------------------------
    def step(self, x_t: torch.Tensor, u1: torch.Tensor, u2: torch.Tensor, u3: torch.Tensor, *delayed: torch.Tensor):
        """One time step in eval semantics: (x_t, u¹, u², u³) → (z³_t, u¹_t, u²_t, u³_t).

        The membrane state is explicit, so a graph exported from this has it as inputs/outputs. With
        a synaptic delay of one step the delay lines are explicit too: ``delayed`` = (d¹, d², d³), the
        inputs of the previous step (x_{t−1}, z¹_{t−1}, z²_{t−1}; zeros at t = 0), each synapse reads
        its d, and the step also returns the new delay lines (x_t, z¹_t, z²_t).
        """
        cfg = self.cfg
        if cfg.synaptic_delay not in (0, 1) or len(delayed) != (3 if cfg.synaptic_delay else 0):
            raise ValueError(f"step() takes {3 * cfg.synaptic_delay} delay lines for synaptic delay "
                             f"{cfg.synaptic_delay} (0 or 1), got {len(delayed)}")
        d1, d2, d3 = delayed if delayed else (x_t, None, None)
        cur1 = self.bn1(F.avg_pool2d(self.conv1(d1), POOL))
        z1, s1 = lif_step(cur1, LIFState(u1), self.beta, self.theta, cfg.slope, cfg.reset)
        cur2 = self.bn2(F.avg_pool2d(self.conv2(d2 if delayed else z1), POOL))
        z2, s2 = lif_step(cur2, LIFState(u2), self.beta, self.theta, cfg.slope, cfg.reset)
        cur3 = self.fc(self.dropout((d3 if delayed else z2).flatten(1)))
        z3, s3 = lif_step(cur3, LIFState(u3), self.beta, self.theta, cfg.slope, cfg.reset)
        if delayed:
            return z3, s1.u, s2.u, s3.u, x_t, z1, z2
        return z3, s1.u, s2.u, s3.u

    def delay_state(self, batch: int, device=None) -> tuple[torch.Tensor, ...]:
        """Zero delay lines (x, z¹, z²) for :meth:`step` when the model has a synaptic delay, else ()."""
        if not self.cfg.synaptic_delay:
            return ()
        shapes = (self.input_shape, self.layer_shapes["lif1"], self.layer_shapes["lif2"])
        return tuple(torch.zeros(batch, *s, device=device) for s in shapes)

    def initial_state(self, batch: int, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Zero membranes (u¹, u², u³) for a batch."""
        return tuple(torch.zeros(batch, *self.layer_shapes[n], device=device) for n in ("lif1", "lif2", "lif3"))
