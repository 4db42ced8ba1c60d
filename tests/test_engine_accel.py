"""The engine's compiled kernels (qsnn.sim.kernels_numba, numba) against its NumPy loops.

The accelerator is optional: with numba importable ``simulate`` runs the current tail and the LIF
step in one compiled, GIL-free kernel per layer; the NumPy loops stay the reference. Every spike,
membrane, output count and statistic must be the same integers (``np.array_equal``) on every layer
stack of the architecture issue (dense-only, strided, padded, pooled, 2..8-bit, events), under both
profiles and the overflow/reset/delay variants, on real mnist5k digits; and the NumPy loops must
still run, and agree, when the accelerator is switched off (``accel=False``, ``QSNN_SIM_ACCEL=numpy``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_arch_integer import HAND, event_input, hand_net
from test_sim_engine import _random_net, _same_result, net_of

from qsnn.data import load_split
from qsnn.errors import InputError
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import FPGA, LOIHI2
from qsnn.sim import engine, layers, simulate

numba = pytest.importorskip("numba", reason="the accelerator needs numba (pip install -e '.[fast]')")
from qsnn.sim import kernels_numba  # noqa: E402  (after the skip: it imports numba)

needs_avx2 = pytest.mark.skipif(not kernels_numba.avx2(), reason="the int16 kernel needs AVX2 (this CPU has none)")


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_split("mnist5k", "test").x[:48]


def _three_ways(net, x, **kw):
    """(compiled kernels, NumPy loops with the integer matmul, NumPy reference path) of one input."""
    common = dict(record=True, record_membranes=True, **kw)
    fast = simulate(net, x, accel=True, **common)
    loops = simulate(net, x, accel=False, **common)
    ref = simulate(net, x, kernel="numpy", **{**common, "threads": 1})
    return fast, loops, ref


@pytest.mark.parametrize("name", list(HAND))
def test_compiled_kernels_equal_numpy_loops_on_every_stack(name, digits, monkeypatch):
    """Every hand-built stack (dense-only, stride, padding, pooling, 2/8-bit weights, fpga and loihi2,
    saturating, wrapping, delayed, events): spikes, membranes, counts and statistics equal, with
    small buffers (several time chunks and matmul blocks per batch: the kernel's state crosses them)
    and pieces over two threads."""
    spec, profile, bits, encoding = HAND[name]
    x = digits[:16] if encoding == "static" else event_input((2, 16, 16), 8, n=16)
    net = hand_net(spec, profile, bits, encoding, x, T=8)
    monkeypatch.setattr(layers, "CHUNK_BYTES", 8192)
    monkeypatch.setattr(layers, "GEMM_BYTES", 4096)
    monkeypatch.setattr(engine, "MIN_PIECE_ACCEL", 4)  # pieces over both threads, however little work
    monkeypatch.setattr(engine, "MIN_PIECE_MACS", 1)
    fast, loops, ref = _three_ways(net, x, threads=2, batch_size=12)
    assert all(el.accel is not None for el in layers.compile_layers(net, int(x.max()), accel=True))
    assert sum(int(s.spikes_per_step.sum()) for s in ref.layers) > 0, "a silent network proves nothing"
    if kernels_numba.avx2():  # the int16 kernel ran on some layer (every stack here has sums within int16)
        assert "avx2" in {s.sum_kernel for s in fast.layers}
        assert "avx2" not in {s.sum_kernel for s in loops.layers}
    _same_result(fast, loops)
    _same_result(fast, ref)


@pytest.mark.parametrize("profile", ["fpga", "loihi2"])
def test_compiled_kernels_equal_numpy_loops_on_a_compiled_export(profile, synthetic_export, digits):
    """The paper's network compiled from its QONNX export, real digits, batch 48 over two threads."""
    from qsnn.export.compile import compile_qonnx
    from qsnn.profiles import get_profile

    _, onnx_path = synthetic_export(threshold=1.0) if profile == "loihi2" else synthetic_export()
    net, _ = compile_qonnx(onnx_path, get_profile(profile), allow_saturation=True)
    fast, loops, ref = _three_ways(net, digits, threads=2, batch_size=48)
    assert sum(int(s.spikes_per_step.sum()) for s in ref.layers[1:]) > 0
    _same_result(fast, loops)
    _same_result(fast, ref)
    # statistics off: the same integers, and what the membrane update sees anyway
    bare = simulate(net, digits, accel=True, stats=False, record=True)
    for key in bare.spikes:
        assert np.array_equal(bare.spikes[key], fast.spikes[key]), key
    assert [s.saturation_events for s in bare.layers] == [s.saturation_events for s in fast.layers]


@pytest.mark.parametrize(
    "profile",
    [
        LOIHI2,
        FPGA.replace(leak="shift", reset="zero", synaptic_delay=2),
        FPGA.replace(overflow="wrap", membrane_bits=9),
    ],
    ids=["loihi2", "shift-zero-delay", "wrap"],
)
def test_static_first_layer_without_a_table_runs_in_the_kernel(profile, monkeypatch):
    """A static first layer too large for its lookup table is scanned: in the kernel, its one current
    row at every step (the bias alone before the synaptic delay), equal to NumPy's scan."""
    monkeypatch.setattr(layers, "TABLE_CELLS", 1)
    monkeypatch.setattr(layers, "_COMPILED", type(layers._COMPILED)())
    monkeypatch.setattr(engine, "MIN_PIECE_ACCEL", 4)
    monkeypatch.setattr(engine, "MIN_PIECE_MACS", 1)
    rng = np.random.default_rng(18)
    net = _random_net(rng, profile, "static", 7, (1, 12, 12))
    x = rng.integers(0, 256, size=(40, 1, 12, 12)).astype(np.uint8)
    fast, loops, ref = _three_ways(net, x, threads=2, batch_size=16)
    assert not layers.compile_layers(net, 255, accel=True)[0]._tables  # scanned, not looked up
    assert ref.layers[0].spikes_per_step.sum() > 0
    _same_result(fast, loops)
    _same_result(fast, ref)


@pytest.mark.parametrize("shift, weight_exp", [(-40, 0), (-31, 0), (-3, -2), (5, 1), (0, -33)])
def test_shifts_beyond_the_state_width_floor_as_numpy(shift, weight_exp):
    """Floor shifts of the sum by the state's width or more leave its sign (0 or −1), as NumPy's."""
    rng = np.random.default_rng(abs(shift) + abs(weight_exp))
    w = rng.integers(-7, 8, size=(6, 16)).astype(np.int8)
    hidden = IntegerLayer("h", "dense", w, 1, shift, np.full(6, 3), np.arange(-3, 3), 3000, np.ones(6), weight_exp)
    out = IntegerLayer(
        "o", "dense", np.ones((2, 6), np.int8), 1, 2, np.full(2, 5), np.zeros(2, np.int64), 3000, np.ones(2)
    )
    profile = LOIHI2.replace(leak="mul", membrane_bits=16) if weight_exp else FPGA
    net = IntegerNetwork((hidden, out), profile, (1, 4, 4), 5, "events", ("a", "b"), input_max=3)
    x = rng.integers(0, 4, size=(9, 5, 1, 4, 4)).astype(np.uint8)
    fast, loops, ref = _three_ways(net, x)
    _same_result(fast, loops)
    _same_result(fast, ref)


def test_switched_off_the_numpy_loops_run(digits, monkeypatch):
    """accel=False and QSNN_SIM_ACCEL=numpy compile layers without the kernels (the NumPy loops run)
    and give the accelerated integers; a wrong QSNN_SIM_ACCEL is refused in one line naming it."""
    spec, profile, bits, encoding = HAND["conv3-stride2-pad1"]
    net = hand_net(spec, profile, bits, encoding, digits[:8], T=6)
    x = digits[:8]
    assert all(el.accel is None for el in layers.compile_layers(net, 255, accel=False))
    assert all(el.accel is None for el in layers.compile_layers(net, 255, kernel="numpy", accel=True))
    fast = simulate(net, x, accel=True, record=True, record_membranes=True)
    monkeypatch.setenv("QSNN_SIM_ACCEL", "numpy")
    assert all(el.accel is None for el in layers.compile_layers(net, 255))
    off = simulate(net, x, record=True, record_membranes=True)
    _same_result(fast, off)
    monkeypatch.setenv("QSNN_SIM_ACCEL", "numba")
    assert all(el.accel is not None for el in layers.compile_layers(net, 255))
    monkeypatch.setenv("QSNN_SIM_ACCEL", "gpu")
    with pytest.raises(InputError, match=r"QSNN_SIM_ACCEL must be one of \('auto', 'numba', 'numpy'\), got 'gpu'"):
        simulate(net, x)


def test_batch_64_runs_as_two_pieces_on_two_threads(digits, synthetic_export, monkeypatch):
    """With the compiled kernels a batch of 64 of the paper's network (10.6 M MACs per sample at
    T = 25) is two pieces of 32 (both cores busy); the NumPy loops keep whole pieces of 64 (their many
    small calls contend for the GIL); a small network's batch stays one piece (too little work for
    a second thread)."""
    import dataclasses

    from qsnn.export.compile import compile_qonnx
    from qsnn.profiles import get_profile

    net, _ = compile_qonnx(synthetic_export()[1], get_profile("fpga"), allow_saturation=True)
    net = dataclasses.replace(net, num_steps=25)
    x = np.concatenate([digits, digits])[:64]
    pieces: list[int] = []
    real = engine._run_batch

    def spy(layers_, accs, xb, *args, **kwargs):
        pieces.append(len(xb))
        return real(layers_, accs, xb, *args, **kwargs)

    monkeypatch.setattr(engine, "_run_batch", spy)
    simulate(net, x, batch_size=64, threads=2, accel=True)
    assert sorted(pieces) == [32, 32]
    pieces.clear()
    simulate(net, x, batch_size=64, threads=2, accel=False)
    assert pieces == [64]
    spec, profile, bits, encoding = HAND["dense-2"]  # D64-D10: 0.05 M MACs per sample
    small = hand_net(spec, profile, bits, encoding, digits[:8], T=4)
    pieces.clear()
    simulate(small, x, batch_size=64, threads=2, accel=True)
    assert pieces == [64]


def test_no_work_at_import():
    """Importing the engine imports no numba (nor compiles anything); a run with the accelerator
    switched off never imports it; a run with it on does."""
    code = (
        "import os, sys, numpy as np\n"
        "from qsnn.network import IntegerLayer, IntegerNetwork\n"
        "from qsnn.profiles import FPGA\n"
        "import qsnn.sim, qsnn.sim.engine, qsnn.sim.layers\n"
        "assert 'numba' not in sys.modules\n"
        "fc = IntegerLayer('f', 'dense', np.ones((3, 4), np.int8), 1, 0, np.array([1]*3), np.zeros(3, np.int64),"
        " 3000, np.ones(3))\n"
        "out = IntegerLayer('o', 'dense', np.ones((2, 3), np.int8), 1, 0, np.array([1]*2), np.zeros(2, np.int64),"
        " 3000, np.ones(2))\n"
        "net = IntegerNetwork((fc, out), FPGA, (1, 2, 2), 4, 'static', ('a', 'b'))\n"
        "qsnn.sim.simulate(net, np.full((2, 1, 2, 2), 9, np.uint8), accel=False)\n"
        "assert 'numba' not in sys.modules\n"
        "qsnn.sim.simulate(net, np.full((2, 1, 2, 2), 9, np.uint8), accel=True)\n"
        "print('numba' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"  # the second layer is scanned in the compiled kernel


@pytest.mark.slow
def test_a_second_process_loads_every_kernel_from_the_disk_cache(tmp_path):
    """The compiled kernels a network needs (LIF, table lookup, im2col and box-sum im2col per window
    shape) are compiled by the first process and loaded by the next one: nothing is compiled or
    saved again (a kernel numba cannot key in its cache would cost every ``qsnn-sim`` run its
    compile time, and grow the cache)."""
    code = (
        "import sys, numpy as np\n"
        "sys.path.insert(0, %r)\n"
        "from test_arch_integer import hand_net\n"
        "from qsnn.data import load_split\n"
        "from qsnn.profiles import FPGA\n"
        "from qsnn.sim import simulate\n"
        "x = load_split('mnist5k', 'test').x[:8]\n"
        "net = hand_net('4C5-AP2-6C3s2p1-AP2-8C3p1-D10', FPGA, (4, 4, 4, 4), 'static', x, T=8)\n"
        "simulate(net, x, accel=True)\n"
    ) % str(Path(__file__).parent)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_DEBUG_CACHE": "1"}
    runs = [
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
        for _ in range(2)
    ]
    assert all(r.returncode == 0 for r in runs), runs[-1].stderr
    assert "data saved" in runs[0].stdout, "the first process compiled nothing: the test proves nothing"
    saved = [line for line in runs[1].stdout.splitlines() if "data saved" in line]
    assert not saved, f"compiled again in a second process: {saved}"


def test_auto_loads_the_kernels_once_the_work_adds_up(digits):
    """QSNN_SIM_ACCEL=auto (the default): a batch-1 one-off runs NumPy's loops without importing numba;
    once the process's calls add up to ACCEL_MIN_MACS multiply-accumulates (a qsnn-sim chunk of a
    test set, or a loop over batches) the kernels load, and from then on every call uses them; the
    same integers throughout."""
    code = (
        "import pickle, sys, numpy as np\n"
        "from qsnn.sim import layers, simulate\n"
        "net, x = pickle.loads(sys.stdin.buffer.read())\n"
        "one = simulate(net, x[:1], record=True)\n"
        "assert 'numba' not in sys.modules\n"
        "assert layers.dense_macs(net) < layers.ACCEL_MIN_MACS <= 8 * 2**32\n"
        "layers.ACCEL_MIN_MACS = 3 * layers.dense_macs(net)  # in this test's units: one call seen\n"
        "assert not layers.compile_layers(net, 255, work=layers.dense_macs(net))[0].accel  # 2 of 3\n"
        "big = simulate(net, x[:2], record=True)  # 3 of 3\n"
        "assert 'numba' in sys.modules\n"
        "assert layers.compile_layers(net, 255, work=1)[0].accel  # loaded: always on\n"
        "again = simulate(net, x[:1], record=True)\n"
        "for key in one.spikes:\n"
        "    assert np.array_equal(one.spikes[key][:, :1], big.spikes[key][:, :1]), key\n"
        "    assert np.array_equal(one.spikes[key], again.spikes[key]), key\n"
        "print('ok')\n"
    )
    import os
    import pickle

    spec, profile, bits, encoding = HAND["conv3-stride2-pad1"]
    net = hand_net(spec, profile, bits, encoding, digits[:8], T=6)
    env = {k: v for k, v in os.environ.items() if k != "QSNN_SIM_ACCEL"}
    out = subprocess.run(
        [sys.executable, "-c", code], input=pickle.dumps((net, digits[:2])), capture_output=True, timeout=300, env=env
    )
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == "ok"


@pytest.mark.parametrize(
    "m, hw, c, pool, k, pad",
    [
        (3, (12, 12), 16, 2, 5, 0),
        (2, (9, 11), 3, 3, 3, 1),
        (4, (8, 8), 8, 2, 3, 2),
        (2, (7, 7), 5, 1, 3, 0),
        (2, (10, 6), 12, 4, 2, 0),
    ],
)
def test_box_im2col_is_box_sums_then_windows(m, hw, c, pool, k, pad):
    """The compiled pass of a pooled stride-1 conv layer on spikes gives the rows of qsnn.kernels'
    two steps (pad, box sums, windows at stride p), for odd channel counts (narrower words), padding
    and pools of 1..4."""
    from qsnn.kernels import box_sums, im2col
    from qsnn.sim.kernels_numba import box_im2col

    x = (np.random.default_rng(m + c).random((m, *hw, c)) < 0.3).astype(np.uint8)
    s = box_sums(np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))), pool)
    out_hw = ((s.shape[1] - k) // pool + 1, (s.shape[2] - k) // pool + 1)
    assert np.array_equal(box_im2col(x, pool, k, pool, pad, out_hw), im2col(s, k, pool, out_hw))


@pytest.mark.parametrize(
    "dtype, top, rows",
    [
        (np.bool_, 1, 700),  # spikes: uint8 counters, blocks of 255 rows
        (np.uint8, 1, 256),
        (np.uint8, 3, 900),  # small event counts: uint16 counters
        (np.uint8, 255, 600),  # pixels: uint16, blocks of 257 rows
        (np.uint16, 3000, 1500),  # wide event counts: uint32
        (np.uint16, 65535, 40),
    ],
)
@pytest.mark.parametrize("nonzero", [False, True])
def test_synops_counts_every_input_once_per_fan_out(dtype, top, rows, nonzero):
    """The synaptic operations Σ_units (Σ_rows x) · fan-out (or each nonzero input once) in the compiled
    pass equal int64 NumPy, on inputs at their bound in every row (a narrow per-unit counter that
    overflowed inside a block, or a block longer than its counter allows, would lose counts) and on
    random ones; with the bound given and taken from the dtype."""
    rng = np.random.default_rng(top + rows)
    units = 37
    fan = rng.integers(0, 50, units).astype(np.int64)
    for x in (np.full((rows, units), top), rng.integers(0, top + 1, (rows, units))):
        x = x.astype(dtype)
        wide = (x != 0) if nonzero else x.astype(np.int64)
        want = int(wide.sum(axis=0, dtype=np.int64) @ fan)
        assert kernels_numba.synops(x, fan, nonzero, top) == want
        assert kernels_numba.synops(x, fan, nonzero) == want


@needs_avx2
@pytest.mark.parametrize("m", [0, 1, 7, 8, 9, 23])
@pytest.mark.parametrize("k, o", [(1, 1), (9, 10), (72, 16), (25, 17), (144, 33), (401, 64)])
def test_int16_matmul_is_the_exact_product(m, k, o):
    """kernels_numba.int16_matmul (vpmaddubsw, int16 accumulation) against int64 arithmetic and
    onnxruntime's MatMulInteger: odd K (the last pair reads a zero weight), O not a multiple of 16
    (the last block's whole store), M not a multiple of the rows per call, inputs up to 255, and
    columns whose sums reach the int16 bound exactly (+32767 and −32767)."""
    from qsnn.kernels import OrtIntMatmul

    rng = np.random.default_rng(m * 1000 + k * 10 + o)
    for top in (1, 4, 255):
        x = rng.integers(0, top + 1, size=(m, k)).astype(np.uint8)
        if m:
            x[0] = top  # a row of maximal inputs
        wmax = min(127, (2**15 - 1) // (2 * top))
        w = rng.integers(-wmax, wmax + 1, size=(k, o)).astype(np.int64)
        # each column keeps the weights (in a random order) whose running Σ|w|·top stays ≤ 32767; column 0
        # reaches the bound exactly
        for col in range(o):
            order = rng.permutation(k)
            w[order[np.cumsum(np.abs(w[order, col])) * top > 2**15 - 1], col] = 0
        if top * k * wmax >= 2**15 - 1 >= top:
            w[:, 0] = 0
            w[: (2**15 - 1) // (top * wmax), 0] = wmax
            w[(2**15 - 1) // (top * wmax), 0] = ((2**15 - 1) % (top * wmax)) // top
            if o > 1:
                w[:, 1] = -w[:, 0]
        bound = int(np.abs(w).sum(axis=0).max()) * top
        assert kernels_numba.int16_exact(top, int(np.abs(w).max()), bound)
        got = kernels_numba.int16_matmul(x, kernels_numba.Int16Weights(w.astype(np.int8)))
        exact = x.astype(np.int64) @ w
        assert got.dtype == np.int16 and got.shape == (m, o)
        assert np.array_equal(got, exact)
        assert np.array_equal(got, OrtIntMatmul(w.astype(np.int8))(x))


def test_int16_kernel_only_within_its_bound():
    """The engine runs a layer's sums in int16 only where its proven bound is ≤ 32767 (an 8-bit dense
    layer on spikes: 258 weights of 127 and one of 1 reach 32767 exactly; one of 2 makes the bound
    32768, which goes to onnxruntime's int32), and the membranes are the exact sums either way."""
    for last, want in ((1, "avx2"), (2, "onnxruntime")):
        w = np.array([[127] * 258 + [last], [-127] * 258 + [-last]], np.int16)
        layer = IntegerLayer("fc", "dense", w, 1, 0, np.array([10**6] * 2), np.array([0] * 2), 0, np.ones(2))
        net = net_of(FPGA.replace(weight_bits=8, membrane_bits=24), [layer], T=1, input_shape=(1, 1, 259))
        res = simulate(net, np.ones((2, 1, 1, 259), np.uint8), record_membranes=True, accel=True)
        if kernels_numba.avx2() or want == "onnxruntime":
            assert res.layers[0].sum_kernel == want
        total = 127 * 258 + last
        assert res.layers[0].sum_bound == total
        assert np.array_equal(res.membranes["u1"][0], [[total, -total]] * 2)
