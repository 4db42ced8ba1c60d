"""Training on a GPU: the fast path, the LIF scan, resume and the export of a GPU-trained model.

Marked ``cuda``. They run on ``QSNN_TEST_DEVICE`` (default ``cuda``; skipped, saying so, where no
CUDA device is visible). ``make gpu-check`` runs them on the GPU; its ``--dry-run`` runs the same
tests on the CPU (``QSNN_TEST_DEVICE=cpu``), which is how CI keeps them from rotting.

What is asserted is what float arithmetic guarantees on that device, under qsnn's default
``QSNN_CUDA_MODE=exact`` (float32, no TF32, deterministic cuDNN; :mod:`qsnn.train.distributed`):

* fast path vs the paper's plain loop with power-of-two weight scales: spikes, membranes and loss
  equal (exact products, summed exactly), gradients to float rounding — as on the CPU;
* the fused LIF scan vs T calls of ``lif_step`` on the device: equal spikes and membranes; and vs
  the CPU: elementwise IEEE operations, so equal too;
* a run interrupted after epoch 1 and resumed ends with the tensors of an uninterrupted run;
* a checkpoint trained on the device loads in a process that sees no GPU, and its float QONNX export
  (onnxruntime, CPU) agrees with the model evaluated on the device up to float rounding.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from float_compare import FEW_SAMPLES, assert_float_agreement
from test_train import (
    _assert_grads_close,
    _assert_same_scan,
    _input,
    _loss_and_grads,
    _pair,
    _tiny_cfg,
    step_by_step_scan,
)

from qsnn.train.checkpoint import load_checkpoint, model_from_checkpoint
from qsnn.train.distributed import cuda_numerics
from qsnn.train.lif import lif_scan

pytestmark = pytest.mark.cuda


@pytest.fixture(scope="module")
def device() -> torch.device:
    name = os.environ.get("QSNN_TEST_DEVICE", "cuda")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device here: make gpu-check runs these on a GPU (QSNN_TEST_DEVICE=cpu runs them here)")
    cuda_numerics(dev)  # what qsnn-train sets (QSNN_CUDA_MODE, default exact)
    return dev


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_fast_path_equals_plain_path_on_the_device(device, mode):
    """po2 scales on the device: every layer's spikes and membranes and the loss torch.equal between
    the fast path and the plain loop; gradients to float rounding (test_train's GRAD_SCALE_RTOL)."""
    _, model = _pair("po2")
    model = model.to(device)
    x, y = (t.to(device) for t in _input((1, 28, 28)))
    with torch.no_grad():  # BatchNorm running statistics from real batches, so eval mode spikes too
        model.train().forward_fast(x)
    getattr(model, mode)()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    l_fast, rec_fast, g_fast = _loss_and_grads(model, model.forward_fast, x, y, 7)
    model.load_state_dict(state)
    l_plain, rec_plain, g_plain = _loss_and_grads(model, model.forward_plain, x, y, 7)
    assert rec_plain["z1"].device.type == device.type
    assert rec_plain["z1"].sum() > 0 and rec_plain["z2"].sum() > 0
    for key in rec_plain:
        assert torch.equal(rec_fast[key], rec_plain[key]), key
    assert torch.equal(l_fast, l_plain)
    _assert_grads_close(g_fast, g_plain)


@pytest.mark.parametrize("reset", ["subtract", "zero"])
def test_lif_scan_on_the_device_equals_the_step_by_step_graph_and_the_cpu(device, reset):
    torch.manual_seed(1)
    currents = torch.randn(30, 6, 40) * 1.2
    beta, theta, k = torch.tensor(0.921), torch.tensor(1.3), 6.03
    u0, wz, wu = torch.randn(6, 40), torch.randn(30, 6, 40), torch.randn(30, 6, 40)
    runs = []
    for dev, fused in ((device, True), (device, False), (torch.device("cpu"), True)):
        I = currents.to(dev).clone().requires_grad_()
        start = u0.to(dev).clone().requires_grad_()
        b, th = beta.to(dev), theta.to(dev)
        if fused:
            z, u = lif_scan(I, b, th, k, reset, u0=start)
        else:
            z, u = step_by_step_scan(I, start, b, th, k, reset)
        ((z * wz.to(dev)).sum() + 0.1 * (u * wu.to(dev)).sum()).backward()
        runs.append(tuple(t.detach().cpu() for t in (z, u, I.grad, start.grad)))
    _assert_same_scan(runs[0], runs[1])  # fused vs step-by-step, on the device
    _assert_same_scan(runs[0], runs[2])  # the device vs the CPU


@pytest.mark.slow
def test_resume_on_the_device_equals_an_uninterrupted_run(device, tmp_path):
    from qsnn.train.loop import train

    cfg = _tiny_cfg(epochs=2)
    dev = str(device)
    full = train(cfg, tmp_path / "full", device=dev, progress=False, log=lambda m: None)

    class Stop(Exception):
        pass

    def interrupt(msg):
        if msg.startswith("epoch   1"):
            raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "cut", device=dev, progress=False, log=interrupt)
    resumed = train(cfg, tmp_path / "cut", resume=True, device=dev, progress=False, log=lambda m: None)
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "cut" / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert [r["train_loss"] for r in a["history"]] == [r["train_loss"] for r in b["history"]]
    assert full["test_acc"] == resumed["test_acc"]


@pytest.mark.slow
def test_export_of_a_device_trained_model_agrees_with_the_model_on_the_device(device, tmp_path):
    """Train on the device; export in a process that sees no GPU (CUDA_VISIBLE_DEVICES=""); the float
    QONNX on onnxruntime agrees with the model evaluated on the device (float_compare's bounds)."""
    from qsnn.data import load_split
    from qsnn.export.runtime import predictions, run_onnx_steps
    from qsnn.train.data import to_tensor
    from qsnn.train.loop import train

    cfg = _tiny_cfg(epochs=1, arch="8C3p1-AP2-D10")
    train(cfg, tmp_path / "run", device=str(device), progress=False, log=lambda m: None)
    ckpt, onnx_path = tmp_path / "run" / "best.pt", tmp_path / "model.onnx"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    cli = [sys.executable, "-m", "qsnn.export.cli", str(ckpt), "--to", "qonnx", "-o", str(onnx_path)]
    done = subprocess.run(cli, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    x = to_tensor(load_split("mnist5k", "test", seed=cfg.seed).x[:64], "static")
    model = model_from_checkpoint(ckpt).to(device).eval()
    with torch.no_grad():
        ref = {k: v.cpu().numpy() for k, v in model(x.to(device), record=True).layers.items()}
    got = run_onnx_steps(onnx_path, x.numpy(), engine="ort", record=True)
    n = sum(k.startswith("z") for k in ref)
    what = f"ort (cpu) vs {device.type}-trained torch on {device.type}"
    assert_float_agreement(got, ref, layers=tuple(range(1, n + 1)), what=what, **FEW_SAMPLES)
    out = f"z{n}"
    assert np.mean(predictions(got[out]) == predictions(ref[out])) >= 0.95
