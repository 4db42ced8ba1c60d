"""The engine against the independent evaluations of the same integer semantics, on trained models.

* PyTorch integer mode (:func:`qsnn.export.integer_torch.run_integer_torch`): every spike train of
  every layer at every step equal (``array_equal``) on the whole mnist5k test split (500 images),
  under the ``fpga`` and ``loihi2`` profiles, and on a DVS-shaped model;
* qonnx's executor running the integer QONNX graph (``fpga``), on a subset (it is slow).
"""

from __future__ import annotations

import numpy as np
import pytest

from qsnn.data import load_split
from qsnn.profiles import get_profile
from qsnn.sim import simulate

pytest.importorskip("qsnn.export.compile")
pytest.importorskip("qsnn.export.integer_torch")

from qsnn.export.compile import compile_qonnx  # noqa: E402
from qsnn.export.integer_torch import run_integer_torch  # noqa: E402
from qsnn.export.qonnx_float import export_float  # noqa: E402


@pytest.fixture(scope="module")
def mnist_onnx(trained_run, tmp_path_factory):
    return export_float(trained_run() / "best.pt", tmp_path_factory.mktemp("sim-mnist") / "model.onnx")


@pytest.fixture(scope="module")
def dvs_onnx(trained_run, tmp_path_factory):
    return export_float(trained_run(dataset="dvs128") / "best.pt", tmp_path_factory.mktemp("sim-dvs") / "model.onnx")


@pytest.fixture(scope="module")
def mnist_test():
    return load_split("mnist5k", "test")


def assert_spike_trains_equal(res, ref, n):
    assert set(res.spikes) == {"z1", "z2", "z3"}
    for key, ours in res.spikes.items():
        theirs = np.asarray(ref[key])
        assert ours.shape == theirs.shape, key
        assert ours.shape[1] == n
        mismatched = np.flatnonzero(np.any((ours != theirs).reshape(ours.shape[0], n, -1), axis=(0, 2)))
        assert np.array_equal(ours, theirs), f"{key}: {len(mismatched)} of {n} samples differ, first {mismatched[:5]}"


@pytest.mark.parametrize("profile", ["fpga", "loihi2"])
def test_bit_exact_vs_integer_torch_on_mnist5k_test(mnist_onnx, mnist_test, profile):
    net, _ = compile_qonnx(mnist_onnx, get_profile(profile), allow_saturation=True)
    assert len(mnist_test) == 500
    res = simulate(net, mnist_test.x, record=True)
    ref = run_integer_torch(net, mnist_test.x)
    assert_spike_trains_equal(res, ref, 500)
    assert sum(s.spikes_per_step.sum() for s in res.layers) > 0, "a silent network proves nothing"
    counts = np.asarray(ref["z3"]).sum(axis=0).reshape(500, -1)
    assert np.array_equal(res.counts, counts)


def test_bit_exact_vs_qonnx_integer_graph(mnist_onnx, mnist_test, tmp_path):
    from qsnn.export.qonnx_int import export_integer
    from qsnn.export.runtime import run_integer_onnx

    net, _ = compile_qonnx(mnist_onnx, get_profile("fpga"))
    path = export_integer(net, tmp_path / "model_int.onnx")
    x = mnist_test.x[:64]
    res = simulate(net, x, record=True)
    ref = run_integer_onnx(path, x, engine="qonnx")
    assert_spike_trains_equal(res, ref, len(x))


@pytest.mark.parametrize("profile", ["fpga", "loihi2"])
def test_bit_exact_on_dvs_shaped_model(dvs_onnx, dvs_data_dir, profile):
    net, _ = compile_qonnx(dvs_onnx, get_profile(profile), allow_saturation=True)
    data = load_split("dvs128", "test", dvs_data_dir, num_steps=net.num_steps)
    assert net.encoding == "events" and data.x.shape[2:] == (2, 32, 32)
    res = simulate(net, data.x, record=True, batch_size=16)
    ref = run_integer_torch(net, data.x)
    assert_spike_trains_equal(res, ref, len(data))


def test_frac_bits_sweep_marks_what_a_fixed_shift_chip_cannot_run():
    """Lava always computes a_in << 6: under loihi2 only frac_bits = 6 is the chip, other rows are what-ifs."""
    from qsnn.network import IntegerLayer, IntegerNetwork
    from qsnn.sim.validate import frac_bits_sweep

    def compile(profile):
        layer = IntegerLayer(
            "fc",
            "dense",
            np.ones((2, 4), np.int8),
            profile.frac_bits,
            0,
            np.array([3 << profile.frac_bits] * 2),
            np.zeros(2, np.int64),
            4096,
            np.ones(2),
        )
        return IntegerNetwork((layer,), profile, (1, 2, 2), 3, "events", ("a", "b"), input_max=1), {}

    x, y = np.ones((4, 3, 1, 2, 2), np.uint8), np.zeros(4, np.int64)
    for name, marked in (("loihi2", {4}), ("fpga", set())):
        profile = get_profile(name)
        rows = frac_bits_sweep(compile, profile, x, y, [4, profile.frac_bits])
        assert {r["frac_bits"] for r in rows if "not_the_chip" in r} == marked, name
        assert all("accuracy" in r or "error" in r for r in rows)
