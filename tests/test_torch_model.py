"""Bring your own model: a user's snnTorch + Brevitas nn.Sequential through qsnn's export."""

from __future__ import annotations

import brevitas.nn as qnn
import numpy as np
import pytest
import snntorch as snn
import torch
import torch.nn as nn

from qsnn.data import load_split
from qsnn.errors import ExportError
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
    with torch.no_grad():   # trained-looking BatchNorm statistics and weights that make every layer spike
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
        ("conv", 2, 1, 1, 4), ("conv", 1, 0, 2, 4), ("dense", 1, 0, 1, 8)]
    assert graph.layers[2].bias is not None and graph.layers[0].bias is None
    assert [round(la.beta, 6) for la in graph.layers] == [0.9, 0.8, 0.95]         # each layer its own β
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
    for position, words in (("[1] MaxPool2d", "max pooling"), ("[2] Leaky", "β per neuron"), ("[3] RLeaky", "feed-forward"),
                            ("[5] ReLU", "not a layer"), ("[6] Leaky", "init_hidden=True"), ("[end]", "must be dense")):
        assert position in msg and words in msg, (position, msg)


def test_a_model_that_does_not_fit_its_input_is_refused_before_writing(tmp_path):
    net = nn.Sequential(qnn.QuantConv2d(1, 4, 5), snn.Leaky(beta=0.9), nn.Flatten(), qnn.QuantLinear(100, 10),
                        snn.Leaky(beta=0.9))
    out = tmp_path / "m.onnx"
    with pytest.raises(ExportError, match="gets 2304 inputs"):
        export_torch(net, (1, 28, 28), 4, out=out)
    assert not out.exists()
