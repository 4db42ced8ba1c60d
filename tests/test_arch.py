"""The architecture as data: the spec grammar, its shape checks, and the QSNN built from any spec."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from qsnn.arch import ArchError, ConvSpec, DenseSpec, layer_names, parse_arch
from qsnn.config import TrainConfig
from qsnn.errors import QsnnError
from qsnn.train.model import QSNN


@pytest.mark.parametrize(
    "spec, canonical, shapes",
    [
        # the paper's Table II footnote strings, as printed, and their canonical form
        ("16Conv5-AP2-64Conv5-AP2-1024Dense10", "16C5-AP2-64C5-AP2-D10", [(16, 12, 12), (64, 4, 4), (10,)]),
        ("16C5-AP2-64C5-AP2-D10", "16C5-AP2-64C5-AP2-D10", [(16, 12, 12), (64, 4, 4), (10,)]),
        ("D256-D10", "D256-D10", [(256,), (10,)]),
        ("32C3s2p1-64C3s2p1-D10", "32C3s2p1-64C3s2p1-D10", [(32, 14, 14), (64, 7, 7), (10,)]),
        ("8C3p1-AP3-12C3-D10", "8C3p1-AP3-12C3-D10", [(8, 9, 9), (12, 7, 7), (10,)]),
        ("16C5w8-AP2-D10w2", "16C5w8-AP2-D10w2", [(16, 12, 12), (10,)]),
        ("4C3p1-8C3-AP2-16C3-D10", "4C3p1-8C3-AP2-16C3-D10", [(4, 28, 28), (8, 13, 13), (16, 11, 11), (10,)]),
    ],
)
def test_spec_parses_to_canonical_form_and_shapes(spec, canonical, shapes):
    arch = parse_arch(spec)
    assert str(arch) == canonical
    assert parse_arch(str(arch)) == arch  # the canonical form parses to the same network
    assert arch.shapes((1, 28, 28), 10) == shapes
    # the shapes are torch's: conv ⌊(H + 2p − k)/s⌋ + 1, then ⌊·/pool⌋
    model = QSNN(TrainConfig(arch=spec, num_steps=2), (1, 28, 28), 10).eval()
    out = model.forward_plain(torch.rand(2, 1, 28, 28), record=True)
    assert [tuple(out.layers[f"z{i + 1}"].shape[2:]) for i in range(len(shapes))] == shapes


def test_layer_fields_and_names():
    arch = parse_arch("32C3s2p1w8-AP2-D64-D10")
    assert arch.layers[0] == ConvSpec(32, 3, stride=2, padding=1, pool=2, weight_bits=8)
    assert arch.layers[1:] == (DenseSpec(64), DenseSpec(10))
    assert arch.layer_bits(4) == [8, 4, 4]
    assert layer_names(arch) == ["conv1", "fc1", "fc2"]
    assert layer_names(parse_arch("16C5-AP2-64C5-AP2-D10")) == ["conv1", "conv2", "fc"]  # the paper's names


@pytest.mark.parametrize(
    "spec, words",
    [
        ("16C5-AP2-32C5-AP2-8800Dense11", ["8800Dense11", "800 inputs", "32×5×5", "write 800Dense11"]),
        ("16C5-AP2-D10-AP2", ["'AP2'", "pooling after a dense layer"]),
        ("AP2-16C5-D11", ["'AP2'", "must follow a conv"]),
        ("16C5-AP2-D10", ["10 outputs", "11 classes", "D11"]),
        ("16C5-D11-8C3", ["'8C3'", "after a dense layer"]),
        ("16C5", ["last layer must be dense"]),
        ("16X5-D11", ["'16X5'", "unknown token"]),
        ("16C5w9-D11", ["'16C5w9'", "2..8"]),
        ("16C5p5-D11", ["padding 5", "kernel 5"]),
        ("16C5s0-D11", ["stride must be >= 1"]),
        ("16C5-AP2-AP2-D11", ["one AP per conv"]),
        ("16C9-AP2-64C9-AP2-8C3-D11", ["8C3 (layer 3)", "2×2 input below 1×1"]),
        ("", ["empty"]),
    ],
)
def test_bad_spec_names_the_token_and_what_to_write(spec, words):
    with pytest.raises(ArchError) as err:
        parse_arch(spec).shapes((2, 32, 32), 11)
    for word in words:
        assert word in str(err.value)


def test_presets_carry_the_papers_networks():
    assert TrainConfig.from_preset("mnist", "int4").arch == "16C5-AP2-64C5-AP2-D10"
    assert TrainConfig.from_preset("fmnist", "fp32").arch == "16C5-AP2-64C5-AP2-D10"
    assert TrainConfig.from_preset("dvs128", "int4").arch == "16C5-AP2-32C5-AP2-D11"
    assert TrainConfig(dataset="dvs128").arch == "16C5-AP2-32C5-AP2-D11"  # "" = the dataset's paper network
    cfg = TrainConfig(arch="D32-D10", weight_bits=2, bias=True, weight_scale="channel")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # recorded in checkpoints
    with pytest.raises(QsnnError, match="--arch"):
        TrainConfig(dataset="mnist", arch="D11")  # checked against the data
    with pytest.raises(QsnnError, match="--weight-bits"):
        TrainConfig(weight_bits=9)
    with pytest.raises(QsnnError, match="--weight-scale"):
        TrainConfig(weight_scale="row")


def test_paper_network_keeps_its_weights_for_a_seed():
    """The spec-built paper network draws the same initial weights, in the same parameter order, as
    the three named layers did (built first, then initialised U(−1/√N_in, 1/√N_in) in order)."""
    torch.manual_seed(0)
    c1, c2, fc = (
        torch.nn.Conv2d(1, 16, 5, bias=False),
        torch.nn.Conv2d(16, 64, 5, bias=False),
        torch.nn.Linear(1024, 10, bias=False),
    )
    for layer in (c1, c2, fc):
        bound = 1.0 / layer.weight[0].numel() ** 0.5
        with torch.no_grad():
            layer.weight.uniform_(-bound, bound)
    torch.manual_seed(0)
    model = QSNN(TrainConfig(precision="fp32", arch="16Conv5-AP2-64Conv5-AP2-1024Dense10"), (1, 28, 28), 10)
    for got, want in zip(model.synapses, (c1, c2, fc)):
        assert torch.equal(got.weight, want.weight)
    assert [n for n, _ in model.named_parameters()][:3] == [
        "synapses.0.weight",
        "synapses.1.weight",
        "synapses.2.weight",
    ]


SPECS = [
    ("16C5-AP2-64C5-AP2-D10", (1, 28, 28), {}),
    ("D64-D10", (1, 28, 28), {}),
    ("8C5w2-AP2-D10w8", (1, 16, 16), {"batch_norm": False}),
    ("4C3p1-8C3-AP2-16C3-D10", (1, 20, 20), {}),
    ("8C3s2p1-8C3s2-AP2-D10", (1, 28, 28), {"weight_scale": "channel"}),
]


@pytest.mark.parametrize("spec, shape, extra", SPECS)
@pytest.mark.parametrize("events", [False, True])
def test_fast_path_equals_plain_loop_on_any_spec(spec, shape, extra, events):
    """With power-of-two scales every partial sum is exact in float32, so the fast path's reordered
    sums (pool folded into the kernel, T·B samples per call, channels-last) give the plain loop's
    spikes and membranes bit for bit, in training (dropout, BatchNorm statistics) and eval mode."""
    cfg = TrainConfig(arch=spec, num_steps=5, quant_scale="po2", **extra)
    torch.manual_seed(0)
    model = QSNN(cfg, shape, 10)
    x = (torch.rand(3, 5, *shape) < 0.3).float() * 2 if events else torch.rand(3, *shape)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        torch.manual_seed(1)
        plain = model.forward_plain(x, record=True).layers
        torch.manual_seed(1)
        fast = model.forward_fast(x, record=True).layers
        assert plain.keys() == fast.keys() == {f"{k}{i + 1}" for i in range(len(model.blocks)) for k in "zu"}
        for key in plain:
            assert torch.equal(plain[key], fast[key]), (mode, key)
        assert plain[f"z{len(model.blocks)}"].shape == (5, 3, 10)


def test_bias_agrees_to_float_rounding():
    """A float bias makes the sums inexact: the paths then agree to float32 rounding only."""
    cfg = TrainConfig(arch="8C3s2p1-16C3s2p1-AP2-D10", num_steps=5, bias=True, weight_scale="channel")
    torch.manual_seed(0)
    model = QSNN(cfg, (1, 28, 28), 10).eval()
    assert all(s.bias is not None for s in model.synapses)
    x = torch.rand(3, 1, 28, 28)
    plain, fast = model.forward_plain(x, record=True).layers, model.forward_fast(x, record=True).layers
    for key in plain:
        if key[0] == "u":
            torch.testing.assert_close(fast[key], plain[key], rtol=1e-5, atol=1e-5)
        else:  # a spike flips only where a membrane lands within rounding of θ
            assert (fast[key] != plain[key]).float().mean() <= 0.01


def test_step_carries_one_state_per_layer():
    cfg = TrainConfig(arch="4C3p1-8C3-AP2-16C3-D10", num_steps=4, quant_scale="po2").for_profile("loihi2")
    torch.manual_seed(0)
    model = QSNN(cfg, (1, 20, 20), 10).eval()
    x = torch.rand(2, 1, 20, 20)
    state = (*model.initial_state(2), *model.delay_state(2))
    assert len(state) == 8
    zs = []
    for _ in range(4):
        z, *state = model.step(x, *state)
        zs.append(z)
    assert torch.equal(torch.stack(zs), model.forward_plain(x).spikes)


def test_train_cli_refuses_a_bad_spec_before_any_file(tmp_path):
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "qsnn.train.cli", "run", "--arch", "16C5-AP2-64C5-AP2-1000Dense10", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode != 0
    assert "1000Dense10" in res.stderr and "1024 inputs" in res.stderr and "write 1024Dense10" in res.stderr
    assert not out.exists()


@pytest.mark.parametrize("spec, shape, extra", SPECS)
def test_weight_count_is_the_models(spec, shape, extra):
    model = QSNN(TrainConfig(arch=spec, **extra), shape, 10)
    weights = sum(s.weight.numel() for s in model.synapses)
    assert parse_arch(spec).num_weights(shape) == weights


def test_a_network_larger_than_memory_is_refused_before_any_file(tmp_path):
    """A spec typo (99999999C3, 2.5 TB of weights) is one line naming the spec, not torch's allocator failing
    after the run directory was made."""
    with pytest.raises(ArchError, match=r"16C5-AP2-D10: 23,440 weights take 0\.0 GiB.*more than this machine's"):
        parse_arch("16C5-AP2-D10").check_memory((1, 28, 28), 4 * 23_439)
    parse_arch("16C5-AP2-D10").check_memory((1, 28, 28), 4 * 23_440)
    out = tmp_path / "run"
    res = subprocess.run(
        [sys.executable, "-m", "qsnn.train.cli", "run", "--arch", "99999999C3-D10", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    assert "99999999C3-D10: 676,899,993,231 weights take 2,521.6 GiB" in res.stderr and "fewer channels" in res.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["--arch", "D32-D10", "--weight-bits", "3"], "--weight-bits with --precision fp32"),
        (["--arch", "8C3-D10", "--weight-scale", "channel", "--quant-scale", "po2"], "--weight-scale, --quant-scale"),
        (["--arch", "8C3w2-AP2-D10w8"], "--arch 8C3w2-AP2-D10w8's w<bits> with --precision fp32"),
    ],
)
def test_fp32_refuses_the_weight_quantizers_options_before_any_file(tmp_path, args, words):
    """fp32 weights are not quantized: a bit width or scale kind given with them would be silently ignored."""
    from click.testing import CliRunner
    from faults_helpers import assert_clean_cli_error

    from qsnn.train.cli import main

    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--precision", "fp32", "--steps", "2", "--out", str(out), *args])
    assert_clean_cli_error(result, words, "--precision int4")
    assert not out.exists()
    cfg = TrainConfig(precision="int4", arch=args[1])  # the same options are int4's
    assert cfg.arch == str(parse_arch(args[1]))
