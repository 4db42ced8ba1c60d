"""Integer-exact fine-tuning (qsnn.train.finetune, ``qsnn-train finetune``).

* the forward pass is the compiled integer network: after an optimizer step (new weights, compiled
  again), its spikes equal, layer by layer (``np.array_equal``), what ``qsnn-sim``'s engine computes on
  the exported and compiled checkpoint, on real mnist5k digits, for three specs and both profiles;
* the backward pass is the documented straight-through estimate: the scan's hand-written backward
  equals autograd through an explicit soft graph whose values are the integers;
* the distillation (L_λ of train/loss.py): eq. 6 plus λ times the distance to the float model's
  counts, its gradient, and steps on it pulling the integer network toward the float model;
* the command: a run folder like ``run``'s, predictions 100 % equal to qsnn-sim on the exported
  best.pt (its own check, and ``qsnn-sim --check`` on the export: 100.00 %, 0.00 pp), --resume, and
  one-line refusals of bad input.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from fixtures import synthetic_checkpoint

from qsnn.data import INPUT_SCALE, load_split, model_input
from qsnn.export.compile import compile_qonnx
from qsnn.export.integer_torch import _leak, _overflow, integer_lif_scan
from qsnn.export.qonnx_float import export_float
from qsnn.profiles import get_profile
from qsnn.sim.engine import simulate
from qsnn.train.checkpoint import load_checkpoint, save_checkpoint
from qsnn.train.finetune import IntegerExactQSNN, finetune_config
from qsnn.train.loss import distill_count_loss, mse_count_loss, spike_count_targets

#: Specs from the architecture grammar with what each exercises: BatchNorm with γ of both signs (flipped
#: channels, trainable per-channel θ_c through γ), stride/padding with a synaptic bias, a dense-only net.
SPECS = {
    "8C3-AP2-D10": {"batch_norm": True},
    "16C3s2p1-D10": {"batch_norm": False, "bias": True},
    "784Dense32-D10": {"batch_norm": False, "bias": True},
}
#: loihi2's current shift is fixed (a_in << 6): θ = 2.04 on these small conv weights needs more than its
#: 17-bit vth (refused by the compiler), θ = 0.3 fits.
LOIHI2_SPECS = {"8C3-AP2-D10": {"threshold": 0.3}}


@pytest.fixture(scope="module")
def digits():
    """32 real mnist5k test digits (stratified)."""
    return load_split("mnist5k", "test", None, subset=32, num_steps=8)


def _model(ckpt, profile: str) -> IntegerExactQSNN:
    data = load_checkpoint(ckpt)
    cfg = finetune_config(data["config_obj"], profile)
    model = IntegerExactQSNN(
        cfg,
        tuple(data["input_shape"]),
        len(data["classes"]),
        profile=get_profile(profile),
        classes=data["classes"],
        encoding=data["encoding"],
    )
    model.load_state_dict(data["model"])
    return model


@pytest.mark.parametrize("profile", ["fpga", "loihi2"])
@pytest.mark.parametrize(
    "arch", [pytest.param(a, marks=pytest.mark.slow) if "C" in a else a for a in sorted(SPECS)]
)  # the conv specs take 10-30 s each on 2 shared cores (T = 8, 32 digits)
def test_forward_is_the_compiled_network_after_a_step(tmp_path, digits, arch, profile):
    overrides = {**SPECS[arch], **(LOIHI2_SPECS.get(arch, {}) if profile == "loihi2" else {})}
    model = _model(synthetic_checkpoint(tmp_path / "src.pt", arch=arch, **overrides), profile)
    x = torch.from_numpy(model_input(digits.x, INPUT_SCALE["static"]))
    y = torch.from_numpy(digits.y)
    first = [lp.layer.weight.copy() for lp in model.compile().layers]

    # one Adam step: the weights (and BatchNorm's γ, β or the bias) move, the compiler runs again
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    out = model(x)
    mse_count_loss(out.spikes, y, model.cfg.correct_rate, model.cfg.incorrect_rate).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert all(float(p.grad.abs().sum()) > 0 for p in model.parameters())
    opt.step()

    # the stepped model as an ordinary checkpoint, exported and compiled as qsnn-export / qsnn-sim do
    data = load_checkpoint(tmp_path / "src.pt")
    ckpt = tmp_path / "ft.pt"
    save_checkpoint(
        ckpt,
        {
            "config": model.cfg.to_dict(),
            "model": model.state_dict(),
            "input_shape": data["input_shape"],
            "classes": data["classes"],
            "encoding": "static",
        },
    )
    net, _ = compile_qonnx(export_float(ckpt, tmp_path / "ft.onnx"), get_profile(profile))
    assert any(not np.array_equal(a, lay.weight) for a, lay in zip(first, net.layers)), "the step changed nothing"
    sim = simulate(net, digits.x, record=True).spikes
    model.eval()
    with torch.no_grad():
        ours = model(x, record=True).layers
    for key, spikes in sim.items():
        assert spikes.any(), f"{arch} {profile}: {key} is silent (compares nothing)"
        assert np.array_equal(ours[key].numpy().astype(np.uint8), spikes), f"{arch} {profile}: {key} differs"


def _soft_scan(acc, layer, p, slope, theta_src, bias_src):
    """The backward of the module docstring through autograd: each integer value as
    ``exact + (soft − soft.detach())``, soft = the real-valued operation it rounds."""
    from qsnn.arith import effective_beta

    view = (1, -1)
    theta_i = torch.as_tensor(layer.threshold).view(view)
    unit = torch.as_tensor(layer.scale).view(view)
    beta = effective_beta(layer.leak_const, p)
    u = torch.zeros(acc.shape[1:], dtype=torch.float64)
    u_int = torch.zeros(acc.shape[1:], dtype=torch.int64)
    zs = []
    for t in range(acc.shape[0]):
        r = (u_int > theta_i).double()
        current = acc[t] * 2.0**layer.current_shift + bias_src.view(view)
        if p.reset == "subtract":
            soft = beta * u + current - r * theta_src.view(view)
        else:
            soft = beta * (1 - r) * u + current
        cur_int = (torch.round(acc[t].detach()).long() << layer.current_shift) + torch.as_tensor(layer.bias).view(view)
        if p.reset == "subtract":
            pre = _leak(u_int, layer.leak_const, p.leak, p.leak_bits) + cur_int - r.long() * theta_i
        else:
            pre = _leak(torch.where(r > 0, 0, u_int), layer.leak_const, p.leak, p.leak_bits) + cur_int
        u_int = _overflow(pre, p)
        u = u_int.double() + (soft - soft.detach())
        dist = unit * (u - theta_src.view(view))
        antiderivative = dist / (1 + slope * dist.abs())  # d/du = δ / (1 + k|δ(u − θ)|)²
        zs.append((u_int > theta_i).double() + (antiderivative - antiderivative.detach()))
    return torch.stack(zs)


@pytest.mark.parametrize("profile", ["fpga", "loihi2"])
def test_backward_is_the_documented_straight_through_estimate(profile):
    from qsnn.network import IntegerLayer

    p = get_profile(profile)
    gen = torch.Generator().manual_seed(1)
    T, N, C = 12, 5, 3
    layer = IntegerLayer(
        name="fc",
        kind="dense",
        weight=np.ones((C, 4), np.int8),
        pool=1,
        current_shift=6,
        threshold=np.array([64 * 40, 64 * 55, 64 * 70]),
        bias=np.array([-64, 0, 128]),
        leak_const=3900 if p.leak == "mul" else 200,
        scale=np.array([0.01, 0.02, 0.015]),
    )
    acc = torch.randint(-20, 90, (T, N, C), generator=gen).double().requires_grad_()
    theta = torch.as_tensor(layer.threshold, dtype=torch.float64).requires_grad_()
    bias = torch.as_tensor(layer.bias, dtype=torch.float64).requires_grad_()
    upstream = torch.randn(T, N, C, generator=gen, dtype=torch.float64)

    z, _ = integer_lif_scan(acc, layer, p, 3.0, theta, bias)
    ref = _soft_scan(acc, layer, p, 3.0, theta, bias)
    assert np.array_equal(z.detach().numpy(), ref.detach().numpy())  # the same spikes
    assert 0 < float(ref.detach().sum()) < T * N * C  # some spike, some do not
    grads = torch.autograd.grad((z.double() * upstream).sum(), (acc, theta, bias))
    expected = torch.autograd.grad((ref * upstream).sum(), (acc, theta, bias))
    for name, got, want in zip(("acc", "theta", "bias"), grads, expected):
        assert torch.allclose(got.double(), want, rtol=1e-4, atol=1e-6), name


# --------------------------------------------------------------------------------------------------
# Distillation toward the float model (train/loss.py's L_λ)


@pytest.mark.parametrize("shape", [(8, 5, 10), (25, 3, 4), (1, 7, 2)])
@pytest.mark.parametrize("lam", [0.0, 0.3, 2.0])
def test_distill_loss_is_eq6_plus_lambda_times_the_distance_to_the_float_counts(shape, lam):
    T, B, C = shape
    gen = torch.Generator().manual_seed(T * B + C)
    spikes = (torch.rand(shape, generator=gen) < 0.4).double().requires_grad_()
    y = torch.randint(0, C, (B,), generator=gen)
    teacher = torch.randint(0, T + 1, (B, C), generator=gen).double()
    got = distill_count_loss(spikes, y, teacher, lam, 0.8, 0.2)
    target = spike_count_targets(y, C, T, 0.8, 0.2).double()
    counts = spikes.sum(0)
    want = ((counts - target) ** 2).sum() / (T * B * C) + lam * ((counts - teacher) ** 2).sum() / (T * B * C)
    assert torch.allclose(got, want)
    if lam == 0:
        assert torch.equal(got, mse_count_loss(spikes, y, 0.8, 0.2))
        assert torch.equal(distill_count_loss(spikes, y, None, 0.0), got)  # λ = 0 never reads a teacher
    # the blended target: L_λ = (1 + λ)·MSE to (target + λ n^F)/(1 + λ), up to a constant in the counts
    (grad,) = torch.autograd.grad(got, spikes)
    blended = (target + lam * teacher) / (1 + lam)
    expected = 2 * (1 + lam) * (counts.detach() - blended) / (T * B * C)
    assert torch.allclose(grad, expected.expand(T, B, C))


@pytest.mark.parametrize("profile", ["fpga", "loihi2"])
def test_distillation_pulls_the_integer_network_toward_the_float_model(tmp_path, digits, profile):
    """Steps on L_λ with a large λ bring the integer network's output counts toward the float model's
    (the teacher the fine-tuning distils from), on real digits: the loss is wired to do what it says.
    The student starts from the teacher's weights with noise (under fpga the two nearly agree)."""
    from qsnn.train.checkpoint import model_from_checkpoint

    ckpt = synthetic_checkpoint(tmp_path / "src.pt", arch="784Dense32-D10", **SPECS["784Dense32-D10"])
    model = _model(ckpt, profile)
    teacher = model_from_checkpoint(ckpt)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for syn in model.synapses:
            syn.weight.add_(0.5 * syn.weight.std() * torch.randn(syn.weight.shape, generator=gen))
    x = torch.from_numpy(model_input(digits.x, INPUT_SCALE["static"]))
    y = torch.from_numpy(digits.y)
    with torch.no_grad():
        n_float = teacher(x).spikes.sum(0)

    def distance() -> float:
        model.eval()
        with torch.no_grad():
            return float(((model(x).spikes.sum(0) - n_float) ** 2).mean())

    before = distance()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(15):
        model.train()
        opt.zero_grad()
        distill_count_loss(model(x).spikes, y, n_float, 50.0).backward()
        opt.step()
    assert before > 0.3  # the integer network starts away from the float model (something to pull)
    assert distance() < 0.75 * before  # with λ = 0 the distance grows (×3.7 fpga, ×5.8 loihi2): eq. 6 alone


# --------------------------------------------------------------------------------------------------
# The command


@pytest.mark.slow
def test_finetune_command_run_folder_resume_and_agreement(tmp_path):
    from qsnn.train.cli import main

    src = synthetic_checkpoint(tmp_path / "src.pt", arch="8C3-AP2-D10", **LOIHI2_SPECS["8C3-AP2-D10"])
    out = tmp_path / "ft"
    args = ["finetune", str(src), "--profile", "loihi2", "--epochs", "1", "--subset", "40"]
    args += ["--val-subset", "20", "--test-subset", "20", "--batch-size", "20", "--out", str(out), "--no-progress"]
    # --steps: RUN's T = 8 plus one step per delaying layer (3 layers under loihi2), the compiled network's T
    args += ["--steps", "11"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "fine-tuning summary" in result.output and "11 (RUN's 8)" in result.output
    for name in ("best.pt", "last.pt", "log.csv", "metrics.json", "training.png"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    ft = metrics["finetune"]
    assert metrics["best_val_acc"] >= metrics["start_val_acc"]  # epoch 0: never worse than the start on val
    assert ft["profile"] == "loihi2" and ft["vs_qsnn_sim"]["samples"] == 20
    assert ft["vs_qsnn_sim"]["predictions_equal_pct"] == 100.0
    assert ft["vs_qsnn_sim"]["output_counts_equal_pct"] == 100.0
    assert ft["vs_qsnn_sim"]["accuracy_torch"] == ft["vs_qsnn_sim"]["accuracy_sim"] == ft["integer_test_acc_after"]
    cfg = load_checkpoint(out / "best.pt")["config_obj"]
    assert (cfg.profile, cfg.reset, cfg.synaptic_delay, cfg.num_steps) == ("loihi2", "zero", 1, 11)

    again = CliRunner().invoke(main, args)  # the folder holds a run: refused, nothing touched
    assert again.exit_code != 0 and "--resume" in again.output
    resumed = CliRunner().invoke(main, [*args[:5], "2", *args[6:], "--resume"])
    assert resumed.exit_code == 0, resumed.output
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 2
    no_steps = [a for i, a in enumerate(args) if a != "--steps" and args[i - 1] != "--steps"]
    resumed = CliRunner().invoke(main, [*no_steps[:5], "3", *no_steps[6:], "--resume"])  # --steps is the run's
    assert resumed.exit_code == 0, resumed.output
    assert load_checkpoint(out / "last.pt")["config_obj"].num_steps == 11

    # qsnn-sim on the export: the trained model is the integer network it was fine-tuned as
    from qsnn.sim.cli import main as sim_main

    onnx = export_float(out / "best.pt", tmp_path / "ft.onnx")
    report = tmp_path / "sim.json"
    sim_args = [str(onnx), "--profile", "loihi2", "--check", "--subset", "20", "--report", str(report)]
    result = CliRunner().invoke(sim_main, [*sim_args, "--no-progress"])
    assert result.exit_code == 0, result.output
    rep = json.loads(report.read_text())
    assert rep["num_steps"] == 11
    assert rep["agreement"]["vs_float_model"]["predictions_equal_pct"] == 100.0
    assert rep["accuracy"]["difference"] == 0.0
    assert rep["agreement"]["spike_trains_vs_integer_torch"]["bit_exact"]
    assert "fine-tuned" in rep["float_engine"]


@pytest.mark.slow  # four fine-tunings of a dense net: 12-25 s on 2 shared cores
def test_finetune_distill_option_trains_with_its_lambda_and_records_it(tmp_path):
    """--distill λ changes the training (the same seeded run, other weights) and is the run's: best.pt's
    configuration records it, and --resume goes on with the saved λ, whatever --distill says."""
    from qsnn.config import FINETUNE_DISTILL as DISTILL
    from qsnn.train.cli import main

    src = synthetic_checkpoint(tmp_path / "src.pt", arch="784Dense32-D10", **SPECS["784Dense32-D10"])
    common = ["--profile", "fpga", "--subset", "40", "--val-subset", "20", "--test-subset", "20"]
    common += ["--batch-size", "10", "--no-progress", "--lr", "0.01"]
    weights = {}
    for lam in (None, "0", "4"):
        out = tmp_path / f"ft-{lam}"
        args = ["finetune", str(src), *common, "--epochs", "1", "--out", str(out)]
        result = CliRunner().invoke(main, args + ([] if lam is None else ["--distill", lam]))
        assert result.exit_code == 0, result.output
        last = load_checkpoint(out / "last.pt")
        assert last["config_obj"].distill == (DISTILL if lam is None else float(lam))
        weights[lam] = [v for k, v in last["model"].items() if k.endswith("weight")]
    for a, b in (("0", "4"), ("0", None)):
        assert any(not torch.equal(u, v) for u, v in zip(weights[a], weights[b])), f"λ {a} and {b}: same weights"

    out = tmp_path / "ft-4"
    again = ["finetune", str(src), *common, "--epochs", "2", "--out", str(out), "--resume", "--distill", "0"]
    result = CliRunner().invoke(main, again)
    assert result.exit_code == 0, result.output
    assert load_checkpoint(out / "last.pt")["config_obj"].distill == 4.0


def test_qsnn_sim_takes_the_integer_network_only_for_the_profile_fine_tuned_for():
    from qsnn.sim.cli import trained_on_integers

    loihi2 = get_profile("loihi2")
    meta = {"integer_exact": True, "trained_profile": "loihi2"}
    assert trained_on_integers(meta, loihi2)
    assert not trained_on_integers(meta, get_profile("fpga"))
    assert not trained_on_integers(meta, loihi2.replace(membrane_bits=20))  # --profile-set: another network
    assert not trained_on_integers({**meta, "integer_exact": False}, loihi2)  # run --profile loihi2
    assert not trained_on_integers({"trained_profile": "loihi2"}, loihi2)  # exports from before the flag


def test_finetune_refuses_a_missing_run_in_one_line(tmp_path):
    from qsnn.train.cli import main

    result = CliRunner().invoke(main, ["finetune", str(tmp_path / "nowhere"), "--profile", "fpga"])
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "nowhere" in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("change", [{"seed": 1}, {"dataset": "fmnist"}])
def test_finetune_keeps_the_source_runs_data_and_splits(change):
    """Another seed would draw mnist5k's validation and test splits from other images (some of them the
    source's training images): refused in one message naming the field; the source's own value is accepted."""
    from qsnn.config import TrainConfig
    from qsnn.errors import QsnnError

    source = TrainConfig(dataset="mnist5k", seed=0)
    (key,) = change
    with pytest.raises(QsnnError, match=rf"^{key}: fine-tuning keeps the source run's {key}"):
        finetune_config(source, "fpga", **change)
    same = finetune_config(source, "fpga", **{key: getattr(source, key)}, epochs=2)
    assert (same.seed, same.dataset, same.epochs) == (0, "mnist5k", 2)


@pytest.mark.parametrize(
    "arch, bits",
    [("8C3-AP2-D10", {"weight_bits": 6}), ("784Dense32w8-D10", {}), ("16C3s2p1w5-D10", {"bias": True})],
)
def test_finetune_refuses_a_run_its_profile_cannot_hold_in_one_line_naming_what_works(tmp_path, arch, bits):
    """A 5..8-bit run under fpga (4-bit weights): the compiler's limits advise --profile-set, which
    qsnn-train finetune does not take; the refusal is one line on stderr (no library warning), before
    any data is read or any folder written, and says what fine-tuning can do (the other profile)."""
    import subprocess
    import sys

    ckpt = synthetic_checkpoint(tmp_path / "best.pt", arch=arch, batch_norm=False, threshold=0.3, **bits)
    out = tmp_path / "ft"
    cmd = [sys.executable, "-m", "qsnn.train.cli", "finetune", str(ckpt), "--profile", "fpga", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"error: {ckpt} cannot be fine-tuned under profile 'fpga': ")
    assert "bit weights reach" in lines[0] and "takes no --profile-set" in lines[0] and "(loihi2)" in lines[0]
    assert not out.exists()
    # the advice holds: loihi2 (8-bit weights) compiles the same run for fine-tuning
    from qsnn.train.finetune import check_fits

    check_fits(_model(ckpt, "loihi2"), ckpt)


@pytest.mark.parametrize(
    "other, profile",
    [
        (("784Dense32-D10", {"bias": True}), "fpga"),  # another spec and data shape
        (("8C3-AP2-D10", {"batch_norm": True}), "loihi2"),  # the same network under another profile
    ],
)
def test_finetune_resume_refuses_another_network_and_keeps_the_folder(tmp_path, other, profile):
    """--resume --out FT with a RUN (or --profile) other than the one FT was fine-tuned from would train
    the saved weights against another teacher, data and integer network, and removed FT's metrics.json
    before failing: refused in one line naming what differs, every file of FT byte for byte as it was;
    the RUN and profile it was fine-tuned from pass the check."""
    from faults_helpers import assert_clean_cli_error, snapshot

    from qsnn.train.cli import main
    from qsnn.train.finetune import check_same_network

    first = synthetic_checkpoint(tmp_path / "a.pt", arch="8C3-AP2-D10", batch_norm=True, threshold=0.3)
    ft = tmp_path / "ft"
    tiny = ["--epochs", "1", "--subset", "20", "--val-subset", "10", "--test-subset", "10", "--no-progress"]
    done = CliRunner().invoke(main, ["finetune", str(first), "--profile", "fpga", "--out", str(ft), *tiny])
    assert done.exit_code == 0, done.output
    assert (ft / "metrics.json").exists()
    before = snapshot(ft)
    arch, opts = other
    source = (
        synthetic_checkpoint(tmp_path / "b.pt", arch=arch, threshold=0.3, **opts) if arch != "8C3-AP2-D10" else first
    )
    args = ["finetune", str(source), "--profile", profile, "--out", str(ft), "--resume", "--epochs", "2", *tiny[2:]]
    line = assert_clean_cli_error(CliRunner().invoke(main, args), f"{ft}: --resume continues a fine-tuning")
    assert ("arch '8C3-AP2-D10' (now: 'D32-D10')" if source != first else "profile 'fpga' (now: 'loihi2')") in line
    assert snapshot(ft) == before
    data = load_checkpoint(first)
    saved = load_checkpoint(ft / "last.pt")
    check_same_network(saved, ft, finetune_config(data["config_obj"], "fpga"), data, first)  # its own: passes
