"""Run a qsnn loihi2 folder in stock Lava and save every layer's spikes (runs in the Lava venv).

This file is executed by the Python 3.10 interpreter that has lava-nc 0.10 and lava-dl 0.6 (``make
lava`` builds it); it imports only numpy and Lava, never qsnn. It loads the folder's ``network.net``
exactly as the folder's README does::

    net = netx.hdf5.Network(net_config="network.net", input_message_bits=8)
    RingBuffer(data=frames).s_out.connect(net.inp)        # uint8 frames as 8-bit graded spikes
    net.run(RunSteps(T), Loihi2SimCfg(select_tag="fixed_pt"))

and adds what a comparison needs: one stock ``Extractor`` per layer (on ``net.layers[i].out``) that
streams its spikes to this script, and several inputs in one run. Each input gets exactly T steps
from a clean state: between inputs the runner sets every neuron's ``v`` (and ``u`` unless du = 4095,
where Lava recomputes it from the input every step) and every synapse's one-step buffer (Conv
``a_buf``, Dense ``a_buff``) back to zero, the state Lava starts from; the source ring buffer holds
all inputs back to back.

Usage::

    python run_netx.py FOLDER INPUTS.npy OUT.npz

``INPUTS.npy``: uint8/int images (N, C, H, W) repeated for T steps, or event counts (N, T, C, H, W)
(flattened C-major for a network whose first layer is dense: its input port is (C·H·W,)).
``OUT.npz``: ``z1 … zL`` spike trains (T, N, C, H, W) or (T, N, O) as uint8 — qsnn's layout —,
``counts`` (N, classes), ``predictions`` (N,), ``seconds`` (the Lava run time).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

# Lava runs every process in its own OS process; torch (which Lava's Conv uses when importable) would
# start a thread pool in each. One thread each keeps a small machine from thrashing (same results).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402


def frames_of(inputs: np.ndarray, steps: int, flat: bool = False) -> np.ndarray:
    """Lava (X, Y, C, N·T) int32 frames of (N, C, H, W) images or (N, T, C, H, W) event counts; with
    ``flat`` (the first layer is dense: netx's input port is (C·H·W,)), (C·H·W, N·T) flattened C-major."""
    x = np.asarray(inputs)
    if x.ndim == 4:
        x = np.repeat(x[:, None], steps, axis=1)
    n, t = x.shape[:2]
    if t != steps:
        raise SystemExit(f"error: the inputs have {t} frames per sample, the network runs T={steps}")
    if flat:  # (N, T, C, H, W) -> (C·H·W, N, T) -> (C·H·W, N·T), the order of the dense weights' columns
        return np.ascontiguousarray(x.reshape(n, t, -1).transpose(2, 0, 1).reshape(-1, n * t)).astype(np.int32)
    # (N, T, C, H, W) -> (W, H, C, N, T) -> (W, H, C, N·T): Lava's (X, Y, Z) layout, time last
    return np.ascontiguousarray(x.transpose(4, 3, 2, 0, 1).reshape(*x.shape[:1:-1], n * t)).astype(np.int32)


def to_qsnn(spikes: np.ndarray) -> np.ndarray:
    """A sink's (X, Y, C, T) or (O, T) buffer → qsnn's (T, C, H, W) or (T, O)."""
    if spikes.ndim == 4:
        return spikes.transpose(3, 2, 1, 0)
    return spikes.transpose(1, 0)


def run(folder: Path, inputs: np.ndarray) -> dict[str, np.ndarray]:
    import h5py
    from lava.lib.dl import netx
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.extractor import Extractor, PyLoihiExtractorModel
    from lava.proc.io.source import RingBuffer as Source

    net_file = folder / "network.net"
    with h5py.File(net_file, "r") as f:
        steps = int(f["simulation/tSample"][()])
        # u needs no reset where du = 4095 (iDecay 4096): Lava then recomputes it from the input each step
        reset_u = any(int(f["layer"][k]["neuron/iDecay"][()]) != 4096 for k in f["layer"] if "neuron" in f["layer"][k])
    n = len(inputs)
    net = netx.hdf5.Network(net_config=str(net_file), input_message_bits=8)
    source = Source(data=frames_of(inputs, steps, flat=len(net.inp.shape) == 1))
    source.s_out.connect(net.inp)
    # one Extractor per layer streams its spikes out (a Var get() would copy them one value at a time)
    taps = []
    for layer in net.layers:
        tap = Extractor(shape=layer.out.shape, buffer_size=max(steps, 2))
        layer.out.connect(tap.in_port)
        taps.append(tap)
    # the network's processes as the README runs them; the Extractor's model has no tag to select by
    cfg = Loihi2SimCfg(select_tag="fixed_pt", exception_proc_model_map={Extractor: PyLoihiExtractorModel})
    out = [np.zeros((steps, n, *to_qsnn(np.zeros((*t.in_port.shape, 1))).shape[1:]), dtype=np.uint8) for t in taps]
    timing = os.environ.get("QSNN_LAVA_TIMING")
    start = time.perf_counter()
    try:
        for i in range(n):
            t0 = time.perf_counter()
            if i:  # back to Lava's initial state: membranes and the synapses' one-step buffers at zero
                for layer in net.layers:
                    neuron = layer.neuron
                    neuron.v.set(np.zeros(neuron.v.shape, dtype=np.int32))
                    if reset_u:
                        neuron.u.set(np.zeros(neuron.u.shape, dtype=np.int32))
                    buf = layer.synapse.a_buf if hasattr(layer.synapse, "a_buf") else layer.synapse.a_buff
                    buf.set(np.zeros(buf.shape, dtype=np.int32))
            t1 = time.perf_counter()
            net.run(condition=RunSteps(num_steps=steps), run_cfg=cfg)
            t2 = time.perf_counter()
            for k, tap in enumerate(taps):
                got = np.stack([tap.receive() for _ in range(steps)], axis=-1)
                out[k][:, i] = to_qsnn(got) != 0
            if timing:
                print(
                    f"input {i}: reset {t1 - t0:.2f} s, run {t2 - t1:.2f} s, read {time.perf_counter() - t2:.2f} s",
                    file=sys.stderr,
                )
    finally:
        net.stop()
    seconds = time.perf_counter() - start
    result = {f"z{k + 1}": z for k, z in enumerate(out)}
    counts = out[-1].sum(axis=0, dtype=np.int64).reshape(n, -1)
    result.update(counts=counts, predictions=np.argmax(counts, axis=1), seconds=np.float64(seconds))
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__.split("Usage::")[1].split("``INPUTS")[0].strip(), file=sys.stderr)
        return 2
    folder, inputs_path, out_path = Path(argv[0]), Path(argv[1]), Path(argv[2])
    result = run(folder, np.load(inputs_path))
    tmp = out_path.with_name(out_path.name + ".tmp.npz")
    np.savez(tmp, **result)
    tmp.replace(out_path)
    print(f"lava: {len(result['predictions'])} inputs in {float(result['seconds']):.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
