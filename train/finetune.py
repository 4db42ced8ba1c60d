"""Integer-exact fine-tuning: train on the chip's own arithmetic.

``qsnn-train finetune RUN --profile NAME [--epochs N]`` starts from a trained run and trains the
network whose forward pass *is* the compiled integer network of that profile: at every step the
model is compiled by the compiler's own passes (:func:`qsnn.export.compile.compile_plan`: integer
weights, the shift e = s + m, per-channel θ_c and b_c on the membrane grid, the leak constant), and
each layer runs the profile's integer LIF step (:func:`qsnn.export.integer_torch.integer_lif_scan`:
leak with its floor, shifts, current register, saturation or wrap, reset, synaptic delay), so the
spikes are the integers ``qsnn-sim`` computes on the exported model, bit for bit.

Per layer and step, forward (integers, exactly) and backward (what each integer is differentiated as)::

    q      = Q(W)                       the compiler's weights: Brevitas' b-bit integers (or the fp32
                                        rule), BatchNorm-negated channels flipped, times 2^m
             ∂q/∂W = ±2^m / s_w,c       straight-through rounding and clipping (s_w,c the weight scale)
    acc_t  = sumpool_p(q ⊛ in_{t−d})    exact integer sums (in_0 = the pixel codes, in_l = spikes)
    θ_c    = round(θ / δ_c)             δ_c = |g_c|·s_w·s_in/p² / 2^e: the compiled grid unit
    b_c    = round(o_c / δ_c)           o_c = g_c·β_c + h_c (synaptic bias, BatchNorm)
             rounding straight through: θ_c and b_c get the gradients of θ/δ_c and o_c/δ_c, which
             reach BatchNorm's γ (a per-channel threshold: θ_c ∝ 1/γ_c) and β, and a synaptic bias
    u_t, z_t = the profile's integer LIF step; backward: the leak as β_L·u, the clamp and the shift
             straight through, the spike through the fast-sigmoid surrogate of slope k on the real
             membrane δ_c·(u − θ_c) (:mod:`qsnn.export.integer_torch`)

The loss is eq. (6) plus ``distill`` λ (default :data:`qsnn.config.FINETUNE_DISTILL`) times the squared distance of the
output counts to those of the float model the fine-tuning starts from, on the same minibatch
(:func:`qsnn.train.loss.distill_count_loss`)::

    L_λ = 1/(T·B·C) · Σ_b Σ_c [ (n_{b,c} − n̂_{b,c})² + λ·(n_{b,c} − n^F_{b,c})² ]

(n = Σ_t z_t the integer network's counts, n̂ eq. 6's targets, n^F the float model's counts under its
own reset and delay): "match the float model" is the target, so it is trained for directly.

The discrete choices of the compiler (the shift e, the multiplier 2^m, which channels flip) are
made afresh at every step from the current weights and carry no gradient. BatchNorm runs on its
running statistics throughout (the integer network has no batch statistics); dropout is off (the
chip has none). Everything else — data, Adam, the LR schedule, checkpoints, ``--resume``, early
stopping on validation accuracy, the run folder and its lock, progress bars, ``metrics.json`` — is
the training loop's (:func:`qsnn.train.loop.train`), so a fine-tuned run folder is a run folder, and
its ``best.pt`` is an ordinary checkpoint (the float latent weights; ``qsnn-export`` takes it) whose
configuration records the profile (reset, synaptic delay, β on the leak grid).

The validation and test accuracies the loop reports are the integer network's. After training,
``metrics.json`` gains a ``finetune`` block: the float model's accuracy, the integer accuracy before
and after, and the agreement of the fine-tuned forward pass with ``qsnn-sim``'s engine on the
exported, compiled ``best.pt`` (predictions and output spike counts equal, in %).
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from qsnn.atomic import atomic_write_text
from qsnn.config import FINETUNE_DISTILL, TrainConfig
from qsnn.data import INPUT_SCALE
from qsnn.errors import ProfileError, QsnnError
from qsnn.profiles import PROFILES, ChipProfile, get_profile

from .model import QSNN, SNNOutput

#: Accumulators below this bound are exact in float32 (their convolutions run in float32, else float64).
FLOAT32_EXACT = 2**24


class IntegerExactQSNN(QSNN):
    """The QSNN of ``cfg`` whose forward pass is its compiled integer network under ``profile``.

    The same parameters and state-dict keys as :class:`~qsnn.train.model.QSNN` (a checkpoint of it is
    an ordinary checkpoint); ``forward`` returns the integer network's spikes (T, B, classes) as 0/1
    floats, differentiable as the module docstring says. ``classes`` and ``encoding`` are what the
    export records (the compiler reads them).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        input_shape: tuple[int, int, int],
        num_classes: int,
        *,
        profile: ChipProfile,
        classes: list[str] | tuple[str, ...],
        encoding: str,
    ) -> None:
        super().__init__(cfg, input_shape, num_classes)
        self.profile = profile
        self.classes = tuple(classes)
        self.encoding = encoding
        self._base = None  # the float graph of the first export (structure, metadata, BatchNorm arithmetic)

    def train(self, mode: bool = True) -> "IntegerExactQSNN":
        """Train mode, with BatchNorm on its running statistics (the integer network's constants)."""
        super().train(mode)
        for bn in self.norms:
            bn.eval()
        return self

    # -- the compiler's view of the current weights ---------------------------------------------------
    def float_graph(self):
        """The :class:`~qsnn.export.float_graph.FloatGraph` the float export of the current weights reads
        as: the first call exports the model (in memory) and reads it back; later calls replace each
        layer's weights, scale, BatchNorm terms and bias by the current ones, computed as the exporter
        writes them (Brevitas' integers and scale; :func:`~qsnn.export.qonnx_float.bn_linear_terms`)."""
        from qsnn.export.float_graph import read_float_graph
        from qsnn.export.qonnx_float import bn_linear_terms, build_float_from_module

        if self._base is None:  # the exporter reads the model's float step (QSNN.step), not this forward
            onnx_model, _ = build_float_from_module(self, classes=list(self.classes), encoding=self.encoding)
            self._base = read_float_graph(onnx_model)
            return self._base
        layers = []
        for fl, blk in zip(self._base.layers, self.blocks):
            syn, changes = blk.synapse, {}
            with torch.no_grad():
                if hasattr(syn, "quant_weight"):
                    qw = syn.quant_weight()
                    q = qw.int().cpu().numpy().astype(np.int64)
                    scale = np.broadcast_to(qw.scale.cpu().numpy().astype(np.float64).reshape(-1), (q.shape[0],))
                    changes.update(q=q, w_scale=scale.copy(), w_real=q * scale.reshape((-1,) + (1,) * (q.ndim - 1)))
                else:
                    changes.update(w_real=syn.weight.detach().cpu().numpy().astype(np.float64))
                if isinstance(blk.bn, nn.modules.batchnorm._BatchNorm):
                    gain, offset = bn_linear_terms(blk.bn, fused=fl.bn_arith == "float64")
                    changes.update(bn_gain=gain.astype(np.float64), bn_offset=offset.astype(np.float64))
                if getattr(syn, "bias", None) is not None:
                    changes.update(bias=syn.bias.detach().cpu().numpy().astype(np.float64))
            layers.append(dataclasses.replace(fl, **changes))
        return dataclasses.replace(self._base, layers=tuple(layers))

    def compile(self):
        """The compiler's :class:`~qsnn.export.compile.Plan` of the current weights under the profile."""
        from qsnn.export.compile import compile_plan

        return compile_plan(self.float_graph(), self.profile)

    # -- the forward pass -----------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, record: bool = False) -> SNNOutput:  # type: ignore[override]
        """Spikes of the compiled integer network on ``x`` (the training pipeline's real-valued input:
        pixels/255 (B, C, H, W) or event counts (B, T, C, H, W)), with straight-through gradients."""
        from qsnn.export.integer_torch import integer_lif_scan

        plan = self.compile()
        x, static, T = self._time_major(x)
        d = self.profile.synaptic_delay
        codes = torch.round(x.double() / INPUT_SCALE[self.encoding])  # the integer inputs the chip gets
        layers: dict[str, torch.Tensor] = {}
        z = codes
        for i, (lp, blk) in enumerate(zip(plan.layers, self.blocks)):
            layer = lp.layer
            big = max(int(lp.acc_range[0].max(initial=0)), int(-lp.acc_range[1].min(initial=0)))
            dtype = torch.float32 if big << lp.grid.weight_mult_exp < FLOAT32_EXACT else torch.float64
            w = self._weight(lp, blk, dtype)
            if static and i == 0:
                once = self._sums(layer, z.to(dtype), w)  # a static image: the same sums at every step
                acc = once.unsqueeze(0).expand(T - d, *once.shape)
            else:
                seq = z[: T - d].to(dtype)
                acc = self._sums(layer, seq.flatten(0, 1), w)
                acc = acc.view(T - d, seq.shape[1], *acc.shape[1:])
            if d:
                acc = torch.cat([acc.new_zeros(d, *acc.shape[1:]), acc])
            theta_src, bias_src = self._constants(lp, blk)
            z, u = integer_lif_scan(acc, layer, self.profile, self.cfg.slope, theta_src, bias_src)
            if record:
                unit = torch.as_tensor(layer.scale, dtype=torch.float64).view((1, 1, -1) + (1,) * (u.dim() - 3))
                layers[f"z{i + 1}"], layers[f"u{i + 1}"] = z, (u * unit).float()
        z = z.float()
        out_u = layers.get(f"u{len(plan.layers)}", torch.zeros_like(z))
        return SNNOutput(z, out_u, layers if record else None)

    def _weight(self, lp, blk, dtype: torch.dtype) -> torch.Tensor:
        """The compiled integer weights, carrying the gradient ±2^m/s_w,c to the latent float weights."""
        layer = lp.layer
        latent = blk.synapse.weight
        sign = np.where(lp.flipped, -1.0, 1.0) * np.where(lp.dead, 0.0, 1.0)
        per = sign * 2.0**lp.grid.weight_mult_exp / np.asarray(lp.weight_scale, np.float64)
        k = torch.as_tensor(per, dtype=dtype, device=latent.device).view((-1,) + (1,) * (latent.dim() - 1))
        soft = latent.to(dtype) * k
        exact = torch.as_tensor(np.asarray(layer.weight, np.float64), dtype=dtype, device=latent.device)
        return exact + (soft - soft.detach())

    @staticmethod
    def _sums(layer, inp: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """acc = sumpool_p(W ⊛_{s,pad} in) (conv) or W·flat(in) (dense): exact integers."""
        if layer.kind == "dense":
            return inp.flatten(1) @ w.T
        acc = F.conv2d(inp, w, stride=layer.stride, padding=layer.padding)
        return F.avg_pool2d(acc, layer.pool, divisor_override=1) if layer.pool > 1 else acc

    def _constants(self, lp, blk) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """θ/δ_c and o_c/δ_c as functions of the trainable parameters (BatchNorm's γ, β, a synaptic bias):
        the real values the compiled θ_c and b_c round, through which their gradients flow."""
        bn, bias = blk.bn, getattr(blk.synapse, "bias", None)
        has_bn = isinstance(bn, nn.modules.batchnorm._BatchNorm)
        if not has_bn and bias is None:
            return None, None
        src = lp.source
        dev = blk.synapse.weight.device
        if has_bn:
            gain = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            offset = bn.bias - bn.running_mean * gain
        else:
            gain = torch.ones(lp.layer.out_channels, device=dev)
            offset = torch.zeros(lp.layer.out_channels, device=dev)
        const = offset if bias is None else gain * bias + offset
        per_unit = torch.as_tensor(lp.weight_scale * lp.input_scale / src.pool**2 / 2.0**lp.grid.effective_shift)
        unit = gain.double().abs() * per_unit.to(dev)
        unit = torch.where(torch.as_tensor(lp.dead, device=dev), per_unit.to(dev), unit)
        return src.theta / unit, const.double() / unit


# --------------------------------------------------------------------------------------------------
# The command


def source_checkpoint(run: str | Path) -> Path:
    """The checkpoint a fine-tuning starts from: RUN/best.pt for a run folder, else RUN itself."""
    path = Path(run)
    if path.is_dir():
        path = path / "best.pt"
        if not path.is_file():
            raise QsnnError(f"{run}: no best.pt in this run folder; give a finished qsnn-train run or a checkpoint")
    elif not path.is_file():
        raise QsnnError(f"{run}: no such run folder or checkpoint; give a qsnn-train run folder or its best.pt")
    return path


#: Configuration fields that define the data and its splits: a fine-tuning keeps the source run's.
SOURCE_DATA_FIELDS = ("dataset", "seed")


def finetune_config(source: TrainConfig, profile: str, **changes: Any) -> TrainConfig:
    """The fine-tuning's configuration: the source run's, trained for ``profile`` (its reset, synaptic
    delay, β on its leak grid) and on its integer network (``integer_exact``: the export says so, and
    ``qsnn-sim`` evaluates the trained model as that network), no dropout, and ``changes`` (None
    values ignored). The data stay the source run's: its dataset and its seed, from which the
    validation and test splits are drawn (another seed would carve them from other images, some of
    them the source run's training images), so changing either is refused."""
    changes = {k: v for k, v in changes.items() if v is not None}
    for key in SOURCE_DATA_FIELDS:
        if key in changes and changes[key] != getattr(source, key):
            raise QsnnError(
                f"{key}: fine-tuning keeps the source run's {key} ({getattr(source, key)!r}; asked for "
                f"{changes[key]!r}): its validation and test splits are drawn from it, and another would mix "
                "the source's training images into them; train a new run (qsnn-train run) for other data"
            )
    cfg = source.for_profile(profile).replace(dropout=0.0, integer_exact=True)
    return cfg.replace(**changes)


def check_fits(model: IntegerExactQSNN, source: Path) -> None:
    """Refuse, in one line and before any data is read or written, a run its profile cannot hold (weights
    wider than the profile's, a threshold beyond its register, a membrane bound beyond its width): the
    compiler's limits, and what fine-tuning can do about them. The compiler's own advice names
    ``--profile-set`` and ``--allow-saturation``, options of ``qsnn-export`` and ``qsnn-sim``; a
    fine-tuning trains the named profile's network as defined, so it takes neither."""
    try:
        model.compile()
    except ProfileError as exc:
        name = model.profile.name
        others = ", ".join(n for n in sorted(PROFILES) if n != name)
        raise ProfileError(
            f"{source} cannot be fine-tuned under profile {name!r}: {exc}. qsnn-train finetune trains {name!r}'s "
            f"network as defined (it takes no --profile-set or --allow-saturation): fine-tune it under another "
            f"--profile that holds it ({others}), or fine-tune a run trained to fit {name!r}"
        ) from None


#: What makes a fine-tuning the fine-tuning of one network under one profile (its data included).
NETWORK_FIELDS = (
    "arch",
    "dataset",
    "precision",
    "weight_bits",
    "weight_scale",
    "quant_scale",
    "bias",
    "batch_norm",
    "num_steps",
    "profile",
)


def check_same_network(
    saved: dict[str, Any], folder: Path, cfg: TrainConfig, source: dict[str, Any], source_path: Path
) -> None:
    """``--resume`` continues the fine-tuning in ``folder`` (``saved``: its loaded ``last.pt``) only from
    the run it started from, under the same profile: the float model (the teacher), the data and the
    integer network all come from RUN, the weights and optimizer from ``last.pt``. Another network is
    refused in one line, before anything in the folder is touched (its ``metrics.json`` is kept)."""
    was, now = saved["config_obj"], cfg
    differ = [
        f"{k} {getattr(was, k)!r} (now: {getattr(now, k)!r})"
        for k in NETWORK_FIELDS
        if getattr(was, k) != getattr(now, k)
    ]
    for key in ("input_shape", "classes", "encoding"):
        a, b = saved[key], source[key]
        if (list(a) if isinstance(a, (list, tuple)) else a) != (list(b) if isinstance(b, (list, tuple)) else b):
            differ.append(f"{key} {a!r} (now: {b!r})")
    if differ:
        raise QsnnError(
            f"{folder}: --resume continues a fine-tuning from the run it started from under the same profile, "
            f"and this one is of another network than {source_path} under --profile {now.profile}: "
            + ", ".join(differ)
            + "; give the RUN and --profile it was fine-tuned from, or another --out for a new fine-tuning"
        )


def agreement_with_sim(model: IntegerExactQSNN, checkpoint: Path, split, batch_size: int = 256) -> dict[str, Any]:
    """Export ``checkpoint`` (in memory), compile it under the model's profile, run ``qsnn-sim``'s engine
    on ``split`` and compare with ``model``'s forward pass (the fine-tuned PyTorch model with those
    weights): predictions and output spike counts equal (%), accuracies of both."""
    from qsnn.data import model_input
    from qsnn.export.compile import compile_graph
    from qsnn.export.float_graph import read_float_graph
    from qsnn.export.qonnx_float import build_float_model
    from qsnn.sim.engine import simulate
    from qsnn.sim.results import predict

    onnx_model, _ = build_float_model(checkpoint)
    net, _ = compile_graph(read_float_graph(onnx_model), model.profile)
    sim_counts = simulate(net, split.x, batch_size=batch_size).counts
    dev = next(model.parameters()).device
    counts = []
    model.eval()
    with torch.no_grad():
        for lo in range(0, len(split.y), batch_size):
            xb = torch.from_numpy(model_input(split.x[lo : lo + batch_size], INPUT_SCALE[split.encoding])).to(dev)
            counts.append(model(xb).spikes.sum(0).cpu().numpy().astype(np.int64))
    torch_counts = np.concatenate(counts)
    return {
        "samples": int(len(split.y)),
        "predictions_equal_pct": 100.0 * float(np.mean(predict(sim_counts) == predict(torch_counts))),
        "output_counts_equal_pct": 100.0 * float(np.mean(np.all(sim_counts == torch_counts, axis=1))),
        "accuracy_torch": 100.0 * split.accuracy(torch_counts),
        "accuracy_sim": 100.0 * split.accuracy(sim_counts),
    }


def finetune(
    run: str | Path,
    profile: str,
    out: str | Path,
    *,
    data_dir=None,
    resume: bool = False,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    **changes: Any,
) -> dict[str, Any]:
    """Fine-tune the run (folder or checkpoint) ``run`` integer-exactly under ``profile`` into ``out``.

    ``changes`` are configuration fields (``epochs``, ``lr``, ``patience``, ``batch_size``, subsets;
    None = the source run's, except ``lr``: a tenth of it). Returns the loop's metrics with the
    ``finetune`` block of the module docstring (also written into ``out/metrics.json``).
    """
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .distributed import setup as setup_distributed
    from .loop import evaluate, load_splits, train
    from .loss import distill_count_loss

    started = time.perf_counter()
    source = source_checkpoint(run)
    data = load_checkpoint(source)
    p = get_profile(profile)
    if changes.get("lr") is None:
        changes["lr"] = data["config_obj"].lr / 10
    if changes.get("distill") is None:
        changes["distill"] = FINETUNE_DISTILL
    out = Path(out)
    if (out / "last.pt").exists() and not resume:
        raise QsnnError(f"{out} already holds a run (last.pt); pass --resume to continue it or choose another --out")
    saved = load_checkpoint(out / "last.pt") if resume and (out / "last.pt").exists() else None
    if saved is not None and changes.get("num_steps") is None:
        changes["num_steps"] = saved["config_obj"].num_steps  # the run's --steps
    cfg = finetune_config(data["config_obj"], p.name, **changes)
    build = partial(IntegerExactQSNN, profile=p, classes=list(data["classes"]), encoding=data["encoding"])
    shape, n_classes = tuple(data["input_shape"]), len(data["classes"])
    if saved is not None:
        check_same_network(saved, out, cfg, data, source)
    start = build(cfg, shape, n_classes)
    start.load_state_dict(data["model"])
    check_fits(start, source)
    # the float model and its integer network before fine-tuning (the splits the loop will read)
    _, dev = setup_distributed(device)
    splits = load_splits(cfg, data_dir)
    start = start.to(dev)
    teacher = model_from_checkpoint(data, where=str(source)).to(dev)  # the float model (eval mode)
    before = {
        "float_test_acc": evaluate(teacher, splits["test"], dev, progress=progress, desc="float"),
        "integer_test_acc_before": evaluate(start, splits["test"], dev, progress=progress, desc=f"{p.name} before"),
    }
    log(
        f"{source}: test accuracy float {before['float_test_acc']:.2f} %, integer under {p.name} "
        f"{before['integer_test_acc_before']:.2f} % before fine-tuning"
    )

    def objective(run_cfg: TrainConfig, out: SNNOutput, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """L_λ (train/loss.py) with the run's λ (a resumed run keeps its own): eq. (6) plus λ times the
        distance of the output counts to the float model's on the same inputs."""
        teacher_counts = None
        if run_cfg.distill:
            with torch.no_grad():
                teacher_counts = teacher(x).spikes.sum(0)
        return distill_count_loss(
            out.spikes, y, teacher_counts, run_cfg.distill, run_cfg.correct_rate, run_cfg.incorrect_rate
        )

    metrics = train(
        cfg,
        out,
        data_dir=data_dir,
        resume=resume,
        device=device,
        progress=progress,
        log=log,
        extend={k: changes.get(k) for k in ("epochs", "patience")} if resume else None,
        build_model=build,
        init_state=data["model"],
        objective=objective,
    )
    best = build(cfg, shape, n_classes).to(dev)
    best.load_state_dict(load_checkpoint(out / "best.pt")["model"])
    metrics["finetune"] = {
        "source": str(source),
        "profile": p.name,
        "source_num_steps": data["config_obj"].num_steps,
        **before,
        "integer_test_acc_after": metrics["test_acc"],
        "vs_qsnn_sim": agreement_with_sim(best, out / "best.pt", splits["test"]),
        "wall_s": time.perf_counter() - started,
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1))
    return metrics
