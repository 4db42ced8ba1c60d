"""Bring your own model: a user's snnTorch + Brevitas nn.Sequential through qsnn's export."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import brevitas.nn as qnn
import numpy as np
import pytest
import snntorch as snn
import torch
import torch.nn as nn

from qsnn.data import load_split
from qsnn.errors import ExportError, QsnnError
from qsnn.export import export_torch
from qsnn.export.float_graph import read_float_graph
from qsnn.export.runtime import run_onnx_steps


def users_model(seed: int = 0) -> nn.Sequential:
    """Written as a user would: stride, padding, pooling, BatchNorm, a bias, 4- and 8-bit weights,
    a per-channel scale, each Leaky with its own β and θ."""
    from brevitas.quant import Int8WeightPerChannelFloat

    torch.manual_seed(seed)
    net = nn.Sequential(
        qnn.QuantConv2d(1, 8, 3, stride=2, padding=1, weight_bit_width=4, bias=False),
        nn.BatchNorm2d(8),
        snn.Leaky(beta=0.9, threshold=0.5, init_hidden=False),
        qnn.QuantConv2d(8, 16, 3, weight_bit_width=4, weight_quant=Int8WeightPerChannelFloat, bias=False),
        nn.AvgPool2d(2),
        snn.Leaky(beta=0.8, threshold=0.7),
        nn.Flatten(),
        nn.Dropout(0.2),
        qnn.QuantLinear(16 * 6 * 6, 10, weight_bit_width=8, bias=True),
        snn.Leaky(beta=0.95, threshold=0.3),
    )
    with torch.no_grad():  # trained-looking BatchNorm statistics and weights that make every layer spike
        bn = net[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        for m in net:
            if hasattr(m, "weight") and m.weight.dim() > 1:
                m.weight.mul_(3.0)
    return net.eval()


def run_users_loop(net: nn.Sequential, x: torch.Tensor, T: int) -> torch.Tensor:
    """The user's own inference loop (snnTorch's idiom): output spikes (T, B, classes)."""
    leakies = [m for m in net if isinstance(m, snn.Leaky)]
    mem = [lif.init_leaky() for lif in leakies]
    out = []
    with torch.no_grad():
        for _ in range(T):
            h, i = x, 0
            for m in net:
                if isinstance(m, snn.Leaky):
                    h, mem[i] = m(h, mem[i])
                    i += 1
                else:
                    h = m(h)
            out.append(h)
    return torch.stack(out)


@pytest.fixture(scope="module")
def mnist_test():
    return load_split("mnist5k", "test", seed=0)


def test_users_sequential_exports_the_graph_its_own_loop_runs(tmp_path, mnist_test):
    net = users_model()
    path = export_torch(net, (1, 28, 28), num_steps=8, out=tmp_path / "mine.onnx")
    graph = read_float_graph(path)
    assert [(la.kind, la.stride, la.padding, la.pool, la.bit_width) for la in graph.layers] == [
        ("conv", 2, 1, 1, 4),
        ("conv", 1, 0, 2, 4),
        ("dense", 1, 0, 1, 8),
    ]
    assert graph.layers[2].bias is not None and graph.layers[0].bias is None
    assert [round(la.beta, 6) for la in graph.layers] == [0.9, 0.8, 0.95]  # each layer its own β
    assert graph.metadata["arch"] == "8C3s2p1w4-16C3w4-AP2-D10w8"
    x = torch.as_tensor(mnist_test.x[:64], dtype=torch.float32) / 255
    ref = run_users_loop(net, x, 8).numpy()
    got = run_onnx_steps(path, x.numpy())["z3"]
    assert ref.sum() > 0
    # float scales: the graph's sums are the model's in another order, so a spike may flip where a
    # membrane lands within float32 rounding of θ; predictions are what a user compares
    assert np.mean(got.sum(0).argmax(1) == ref.sum(0).argmax(1)) >= 0.95
    assert np.mean(got != ref) <= 0.01


def test_every_unsupported_module_is_listed_in_one_error():
    bad = nn.Sequential(
        qnn.QuantConv2d(1, 4, 3),
        nn.MaxPool2d(2),
        snn.Leaky(beta=torch.rand(4, 1, 1), learn_beta=True),
        snn.RLeaky(beta=0.9, linear_features=10),
        qnn.QuantConv2d(4, 4, 3),
        nn.ReLU(),
        snn.Leaky(beta=0.5, init_hidden=True),
    )
    with pytest.raises(ExportError) as err:
        export_torch(bad, (1, 28, 28), 5)
    msg = str(err.value)
    assert "\n" not in msg and "problems" in msg
    for position, words in (
        ("[1] MaxPool2d", "max pooling"),
        ("[2] Leaky", "β per neuron"),
        ("[3] RLeaky", "feed-forward"),
        ("[5] ReLU", "not a layer"),
        ("[6] Leaky", "init_hidden=True"),
        ("[end]", "must be dense"),
    ):
        assert position in msg and words in msg, (position, msg)


def test_a_model_that_does_not_fit_its_input_is_refused_before_writing(tmp_path):
    net = nn.Sequential(
        qnn.QuantConv2d(1, 4, 5), snn.Leaky(beta=0.9), nn.Flatten(), qnn.QuantLinear(100, 10), snn.Leaky(beta=0.9)
    )
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="gets 2304 inputs"):
        export_torch(net, (1, 28, 28), 4, out=out)
    assert not out.exists()


def test_settings_no_chip_can_hold_are_refused_in_one_error_before_writing(tmp_path):
    """Quantizers besides the weights', β outside [0, 1], θ ≤ 0 and batch-statistics BatchNorm: each
    named with its position, nothing written (Brevitas 0.13 keeps quantizers in ``*_quant`` proxies)."""
    from brevitas.quant import Int8ActPerTensorFloat, Int8Bias, Uint8ActPerTensorFloat

    bad = nn.Sequential(
        qnn.QuantConv2d(1, 4, 3, weight_bit_width=3, input_quant=Uint8ActPerTensorFloat),
        nn.BatchNorm2d(4, track_running_stats=False),
        snn.Leaky(beta=1.5, threshold=0.5),
        nn.Flatten(),
        qnn.QuantLinear(4 * 26 * 26, 16, weight_bit_width=5, bias=True, bias_quant=Int8Bias),
        snn.Leaky(beta=-0.2, threshold=0.0),
        qnn.QuantLinear(16, 10, weight_bit_width=4, output_quant=Int8ActPerTensorFloat),
        snn.Leaky(beta=0.9, threshold=-1.0),
    )
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError) as err:
        export_torch(bad, (1, 28, 28), 4, out=out)
    msg = str(err.value)
    assert "\n" not in msg and "8 problems" in msg, msg
    items = re.split(r"; (?=\[)", msg.split(": ", 1)[1])
    for position, words in (
        ("[0] QuantConv2d", "input activation quantizer (input_quant=...)"),
        ("[1] BatchNorm2d", "track_running_stats=False"),
        ("[2] Leaky", "beta=1.5: β must be a finite number in [0, 1]"),
        ("[4] QuantLinear", "bias quantizer (bias_quant=...)"),
        ("[5] Leaky", "beta=-0.2: β must be"),
        ("[5] Leaky", "threshold=0: θ must be a finite number > 0"),
        ("[6] QuantLinear", "output activation quantizer (output_quant=...)"),
        ("[7] Leaky", "threshold=-1: θ must be"),
    ):
        assert any(item.startswith(position) and words in item for item in items), (position, words, msg)
    assert not out.exists()


def test_export_arguments_are_checked_with_the_model_before_writing(tmp_path):
    """classes (count, duplicates) and batch_size are listed in the one error with the model's own problems."""
    net = users_model()
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError) as err:
        export_torch(net, (1, 28, 28), 4, out=out, classes=["a", "b", "a"], batch_size=0)
    msg = str(err.value)
    assert "3 problems" in msg and "classes: 3 names for the last layer's 10 output neurons" in msg
    assert "the name 'a' appears twice" in msg and "batch_size 0: a positive integer" in msg
    with pytest.raises(ExportError, match=r"2 problems.*\[2\] Leaky: beta=1\.5.*the name 'x' appears twice"):
        net[2].beta = torch.tensor(1.5)
        export_torch(net, (1, 28, 28), 4, out=out, classes=["x"] * 10)
    assert not out.exists()
    net[2].beta = torch.tensor(0.9)
    names = [f"c{i}" for i in range(10)]
    assert read_float_graph(export_torch(net, (1, 28, 28), 4, out=out, classes=names, batch_size=2)).classes == tuple(
        names
    )


def test_identity_modules_anywhere_change_nothing(tmp_path, mnist_test):
    """nn.Identity and every Dropout kind are the identity at inference: the export equals the plain model's."""
    plain = users_model()
    padded = []
    for i, m in enumerate(plain):
        padded += [m] + ([nn.Identity(), nn.Dropout2d(0.3)] if i == 0 else [nn.AlphaDropout(0.1)] if i == 6 else [])
    a = export_torch(plain, (1, 28, 28), num_steps=6, out=tmp_path / "plain.onnx")
    b = export_torch(nn.Sequential(*padded).eval(), (1, 28, 28), num_steps=6, out=tmp_path / "padded.onnx")
    x = mnist_test.x[:16].astype(np.float32) / 255
    got, want = run_onnx_steps(b, x), run_onnx_steps(a, x)
    assert want["z3"].sum() > 0
    assert all(np.array_equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("spec", ["conv", "dense"])
def test_learnable_beta_and_threshold_export_with_their_trained_values(tmp_path, mnist_test, spec):
    """snnTorch's learn_beta / learn_threshold make β and θ Parameters; the export takes their values."""
    torch.manual_seed(1)
    first = (
        [qnn.QuantConv2d(1, 6, 5, stride=2, padding=2, weight_bit_width=3), nn.Flatten()]
        if spec == "conv"
        else [nn.Flatten(), qnn.QuantLinear(784, 6 * 14 * 14, weight_bit_width=3)]
    )
    lifs = [
        snn.Leaky(beta=torch.tensor(0.85), threshold=torch.tensor(0.4), learn_beta=True, learn_threshold=True)
        for _ in range(2)
    ]
    net = nn.Sequential(
        first[0],
        *([lifs[0], first[1]] if spec == "conv" else [first[1], lifs[0]]),
        qnn.QuantLinear(6 * 14 * 14, 10, weight_bit_width=6),
        lifs[1],
    )
    with torch.no_grad():
        lifs[1].beta.fill_(0.7)  # as if trained: each layer its own value
        lifs[1].threshold.fill_(0.25)
        for m in net:
            if hasattr(m, "weight") and m.weight.dim() > 1:
                m.weight.mul_(4.0)
    path = export_torch(net.eval(), (1, 28, 28), num_steps=6, out=tmp_path / "learned.onnx")
    graph = read_float_graph(path)
    assert [(round(la.beta, 6), round(la.theta, 6)) for la in graph.layers] == [(0.85, 0.4), (0.7, 0.25)]
    x = torch.as_tensor(mnist_test.x[:32], dtype=torch.float32) / 255
    ref = run_users_loop(net, x, 6).numpy()
    got = run_onnx_steps(path, x.numpy())["z2"]
    assert ref.sum() > 0
    assert np.mean(got.sum(0).argmax(1) == ref.sum(0).argmax(1)) >= 0.95


# -- the user's model through qsnn-sim and every target -------------------------------------------


@pytest.fixture(scope="module")
def users_onnx(tmp_path_factory):
    return export_torch(users_model(), (1, 28, 28), num_steps=8, out=tmp_path_factory.mktemp("users") / "mine.onnx")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True)


BIN = Path(sys.executable).parent
#: the user's model has an 8-bit output layer: the fpga profile holds it with 8-bit weight registers
FPGA8 = ("--profile", "fpga", "--profile-set", "weight_bits=8")


def test_users_model_in_qsnn_sim_is_bit_exact(users_onnx, tmp_path):
    """qsnn-sim on the user's file, as a user runs it: the integer engine equals the PyTorch integer
    mode spike for spike in every layer, and the trained float model is the accuracy reference."""
    report = tmp_path / "sim.json"
    res = _cli(
        "qsnn-sim",
        str(users_onnx),
        "--profile",
        "fpga",
        "--dataset",
        "mnist5k",
        "--subset",
        "100",
        "--check",
        "--no-progress",
    )
    assert res.returncode != 0 and "--profile-set weight_bits=8" in res.stderr  # the 8-bit layer, named
    res = _cli(
        "qsnn-sim",
        str(users_onnx),
        *FPGA8,
        "--dataset",
        "mnist5k",
        "--subset",
        "100",
        "--check",
        "--no-progress",
        "--report",
        str(report),
    )
    assert res.returncode == 0, res.stderr
    rep = json.loads(report.read_text())
    check = rep["agreement"]["spike_trains_vs_integer_torch"]
    assert check["bit_exact"] and set(check["equal_pct"]) == {"z1", "z2", "z3"}
    assert rep["agreement"]["vs_float_model"]["predictions_equal_pct"] >= 90.0


def test_users_model_on_data_with_other_class_names_says_how_to_name_them(users_onnx):
    """The export's classes default to 0..K-1; FashionMNIST's names differ, and the message says where
    a model of one's own gets its names."""
    from qsnn.data import load_for_model

    net = _users_net(users_onnx, weight_bits=8)
    with pytest.raises(QsnnError) as err:
        load_for_model(net, "test", dataset="fmnist", subset=10)
    msg = str(err.value)
    assert "class names (T-shirt/top, Trouser, Pullover, Dress, ...) (the model's: (0, 1, 2, 3, ...)" in msg
    assert "export_torch(..., classes=[...])" in msg and "\n" not in msg


def _users_net(users_onnx, **sets):
    from qsnn.export.compile import compile_qonnx
    from qsnn.profiles import get_profile

    return compile_qonnx(users_onnx, get_profile("fpga").replace(**sets) if sets else get_profile("loihi2"))[0]


@pytest.mark.slow
@pytest.mark.hdl("verilator", "g++")
def test_users_model_on_the_fpga_core(users_onnx, tmp_path, mnist_test):
    from qsnn.sim.engine import simulate
    from qsnn.targets.fpga import hdl_sim

    out = tmp_path / "fpga"
    res = _cli("qsnn-export", str(users_onnx), "--to", "fpga", "--profile-set", "weight_bits=8", "-o", str(out))
    assert res.returncode == 0, res.stderr
    x = mnist_test.x[:8]
    result = hdl_sim.run_verilator(hdl_sim.check_folder(out), x)
    sim = simulate(_users_net(users_onnx, weight_bits=8), x, record=True)
    for key in ("z1", "z2", "z3"):
        assert np.array_equal(sim.spikes[key], result.spikes[key]), key
    assert sim.spikes["z1"].any() and sim.spikes["z2"].any()


@pytest.mark.slow
@pytest.mark.lava
def test_users_model_in_stock_lava(users_onnx, tmp_path, mnist_test):
    from qsnn.sim.engine import simulate
    from qsnn.targets import read_target
    from qsnn.targets.loihi2 import lava_env

    out = tmp_path / "loihi2"
    res = _cli("qsnn-export", str(users_onnx), "--to", "loihi2", "-o", str(out))
    assert res.returncode == 0, res.stderr
    x = mnist_test.x[:4]
    net = read_target(out)
    lava = lava_env.run_folder(out, x, python=lava_env.venv_python())
    sim = simulate(net, x, record=True)
    for key in sim.spikes:
        assert np.array_equal(sim.spikes[key], lava[key]), key


def test_users_model_as_nir_in_snntorch(users_onnx, tmp_path, mnist_test):
    """The NIR graph of the user's model, loaded unmodified by snnTorch, against the same integer
    network computed in real numbers under snnTorch's rule (as tests/test_nir_consumers.py measures)."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "tools" / "nir_consumers"))
    import check as nir_check

    out = tmp_path / "nir"
    res = _cli("qsnn-export", str(users_onnx), "--to", "nir", "--profile-set", "weight_bits=8", "-o", str(out))
    assert res.returncode == 0, res.stderr
    net = _users_net(users_onnx, weight_bits=8)
    x = mnist_test.x[:50]
    got = nir_check.run_consumer("snntorch", out / "network.nir", x, net.num_steps, subtract=False)
    ref = nir_check.real_valued(net, x, *nir_check.SEMANTICS["snntorch"][0])
    for row in nir_check.agreement(got, ref):
        assert row["entries"] >= 99.0, row
