"""The loihi2 profile's fixed current shift (Lava's ``a_in << 6``): a layer whose threshold it cannot resolve.

On a fixed-shift profile the compiler gains threshold resolution only by scaling the weights by 2^m
(:mod:`qsnn.export.compile`). A layer whose θ is fewer than 16 steps of 2^6 at m = 0, and whose worst-case
membrane leaves the 24-bit range at every m that would give it 16 steps, is refused: the refusal names the
layer and computes the two changes that make it fit — the ``--threshold`` (at these weights; checked here to
be the smallest, or for too small weights the largest, at 3 significant digits) and the weight multiplier
``--allow-saturation`` then uses (checked: that is what it compiles to, saturation possible). Networks that
compile without ``--allow-saturation`` get the same integers with it (the flag acts only where the layer
would be refused), over several specs, static images and event frames.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from qsnn.errors import ProfileError
from qsnn.export.compile import MIN_THRESHOLD_STEPS, compile_graph
from qsnn.export.float_graph import read_float_graph
from qsnn.profiles import LOIHI2

DVS = {"dataset": "dvs128", "input_shape": (2, 32, 32), "classes": tuple(str(c) for c in range(11)), "event_bits": 4}
#: (spec, checkpoint options, θ): a layer that θ leaves with fewer than 16 steps, and the layer.
TOO_FINE = [
    ("8C3-AP2-D10", {}, 0.02, "fc"),
    ("16C3s2p1-D10", {}, 0.05, "fc"),
    ("8C5-AP2-D11", DVS, 0.1, "conv1"),  # event counts up to 15 (--event-bits 4)
]


@pytest.fixture(scope="module")
def graphs(synthetic_export):
    """spec → the float graph of an untrained, spiking checkpoint of it (read once)."""
    cache = {}

    def get(spec: str, options: dict):
        if spec not in cache:
            cache[spec] = read_float_graph(synthetic_export(precision="int4", arch=spec, **options)[1])
        return cache[spec]

    return get


def with_theta(graph, theta: float):
    """The graph with every layer's θ set to ``theta`` as training stores ``--threshold`` (float32)."""
    theta = float(np.float32(theta))
    return dataclasses.replace(graph, layers=tuple(dataclasses.replace(lay, theta=theta) for lay in graph.layers))


def compiles(graph, **kw) -> bool:
    try:
        compile_graph(graph, LOIHI2, **kw)
    except ProfileError:
        return False
    return True


def last_digit_before(value: float, up: bool) -> float:
    """The 3-significant-digit number next to ``value`` on the side that should not fit."""
    step = 10.0 ** (math.floor(math.log10(value)) - 2)
    return value - step if up else value + step


def refusal_of(graph, layer: str) -> str:
    with pytest.raises(ProfileError) as info:
        compile_graph(graph, LOIHI2)
    lines = [line for line in getattr(info.value, "problems", [str(info.value)]) if line.startswith(f"layer {layer}:")]
    assert len(lines) == 1, str(info.value)
    assert "\n" not in lines[0]
    return lines[0]


@pytest.mark.parametrize("spec, options, theta, layer", TOO_FINE, ids=[c[0] for c in TOO_FINE])
def test_refusal_computes_the_smallest_threshold_and_the_saturating_multiplier(graphs, spec, options, theta, layer):
    graph = with_theta(graphs(spec, options), theta)
    line = refusal_of(graph, layer)
    assert f"fewer than {MIN_THRESHOLD_STEPS}" in line and "24 bits" in line
    found = re.search(r"--threshold ≥ ([0-9.e-]+)", line)
    assert found, line
    smallest = float(found.group(1))
    assert smallest > theta
    assert compiles(with_theta(graph, smallest))  # the whole network, every layer at that θ
    assert not compiles(with_theta(graph, last_digit_before(smallest, up=True)))  # smallest at 3 digits
    mult = re.search(r"--allow-saturation \(weights x(\d+): θ then (\d+) steps", line)
    assert mult, line
    net, report = compile_graph(graph, LOIHI2, allow_saturation=True)
    rec = next(r for r in report["layers"] if r["name"] == layer)
    assert rec["weight_multiplier"] == int(mult.group(1)) > 1
    assert rec["saturation_possible"]
    steps = int(mult.group(2))
    assert steps >= MIN_THRESHOLD_STEPS and rec["threshold"]["min"] == steps << LOIHI2.threshold_shift
    chosen = next(lay for lay in net.layers if lay.name == layer)
    assert chosen.current_shift == LOIHI2.frac_bits and chosen.weight_exp == 0  # what netx can carry
    assert int(np.abs(chosen.weight).max()) <= LOIHI2.weight_max
    assert any("--allow-saturation" in note and layer in note for note in report["notes"])


def test_refusal_of_too_small_weights_computes_the_largest_threshold(graphs):
    graph = with_theta(graphs("16C3s2p1-D10", {}), 0.5)
    line = refusal_of(graph, "conv1")
    assert "beyond its largest threshold" in line
    found = re.search(r"--threshold ≤ ([0-9.e-]+)", line)
    assert found, line
    largest = float(found.group(1))
    assert largest < 0.5
    assert compiles(with_theta(graph, largest))
    assert not compiles(with_theta(graph, last_digit_before(largest, up=False)))


@pytest.mark.parametrize("spec, theta, layer", [("16C3s2p1-D10", 0.5, "conv1"), ("8C3-AP2-D10", 0.02, "fc")])
def test_refusal_advises_training_for_the_chip_only_when_the_model_was_not(graphs, spec, theta, layer):
    """A model trained with --profile loihi2 that still does not fit is told what changes it (--threshold),
    not to do what it did; one trained for the paper's semantics is also told to train for the chip."""
    graph = with_theta(graphs(spec, {}), theta)
    hint = "train for the chip (qsnn-train run --profile loihi2)"
    assert hint in refusal_of(graph, layer)
    line = refusal_of(dataclasses.replace(graph, trained_profile="loihi2"), layer)
    assert hint not in line and "--threshold" in line, line


@pytest.mark.parametrize(
    "spec, options, theta",
    [
        ("8C3-AP2-D10", {}, 0.05),
        ("16C3s2p1-D10", {}, 0.1),
        ("784Dense32-D10", {}, 0.2),
        ("8C5-AP2-D11", DVS, 0.5),
        ("8C5-AP2-D11", DVS, 2.04),
    ],
)
def test_allow_saturation_changes_no_network_that_compiles_without_it(graphs, spec, options, theta):
    graph = with_theta(graphs(spec, options), theta)
    plain, _ = compile_graph(graph, LOIHI2)
    flagged, _ = compile_graph(graph, LOIHI2, allow_saturation=True)
    for a, b in zip(plain.layers, flagged.layers, strict=True):
        for field in ("weight", "threshold", "bias"):
            assert np.array_equal(getattr(a, field), getattr(b, field)), (spec, a.name, field)
        assert (a.current_shift, a.leak_const) == (b.current_shift, b.leak_const)


@pytest.mark.parametrize("low, refused", [(-4, True), (-1, True), (-3, False), (-6, False)])
def test_loihi2_refuses_a_dense_layer_that_lava_would_clip(tmp_path, low, refused):
    """A dense layer with no positive weight whose most negative is −2^j: netx scales it to −256, which Lava's
    inhibitory synapse clips to −255 (tests/test_lava.py shows it in Lava); refused, naming the layer, nothing
    written. Other one-signed matrices go through."""
    from test_targets import tiny_net

    from qsnn.targets import write_target

    net = tiny_net(LOIHI2)
    fc = net.layers[-1]
    weight = -np.abs(np.asarray(fc.weight, np.int64)) % (-low + 1) * -1
    weight.flat[0] = low
    net = dataclasses.replace(net, layers=(*net.layers[:-1], dataclasses.replace(fc, weight=weight.astype(np.int8))))
    if refused:
        with pytest.raises(
            ProfileError, match=f"layer 3 \\(fc\\) is dense with no positive weight.*{low}, a power of two"
        ):
            write_target("loihi2", net, tmp_path / "l")
        assert not any(tmp_path.iterdir())
    else:
        write_target("loihi2", net, tmp_path / "l")
