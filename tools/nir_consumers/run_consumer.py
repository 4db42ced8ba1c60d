"""Run a NIR file in one NIR consumer with that consumer's own importer, record every layer's spikes.

    python run_consumer.py CONSUMER network.nir inputs.npz out.npz [--subtract]

Self-contained (numpy, nir and the consumer only), so it runs in the consumer's own venv too
(Sinabs and Spyx live in venvs of their own: ``make nir-venvs``). ``inputs.npz`` holds ``x``, the
raw integers the graph takes, and ``num_steps`` T: a static image (N, C, H, W), fed at every step, or
event count frames (N, T, C, H, W), frame t fed at step t (:func:`step_inputs`, the rule of
``qsnn-sim``); ``out.npz`` gets ``z1, z2, ...`` (T, N, ...) uint8, the spikes of each LIF node in
graph order, and ``log``. Every consumer here takes a new input at every step.

How each consumer is called is exactly what the NIR folder's README says, nothing patched:

* ``snntorch``: ``snntorch.import_nir.import_from_nir(nir.read(path))``, a batch per call;
* ``spikingjelly``: ``spikingjelly.activation_based.nir_exchange.import_from_nir(path)``, the state
  passed back every step as its docstring says;
* ``norse``: ``norse.torch.from_nir(nir.read(path), dt=<graph metadata dt>)``;
* ``spyx``: ``spyx.nir.from_nir(nir.read(path), x, dt=<graph metadata dt>)`` on (T, N, H, W, C)
  channels-last inputs (Spyx's layout: step t's input at x[t]);
* ``sinabs``: ``sinabs.from_nir(nir.read(path), batch_size=N)`` on (N·T, C, H, W) inputs (Sinabs'
  squeezed layout: sample n's step t at row n·T + t).

``--subtract`` switches the imported neurons to the consumer's own subtract-reset option, where it
has one (snnTorch: ``reset_mechanism="subtract"`` with its delayed reset, spikingjelly:
``v_reset=None`` soft reset, Norse: ``reset_subtract``; Sinabs and Spyx subtract already).
"""

from __future__ import annotations

import contextlib
import io
import sys
from typing import Callable

import numpy as np

CONSUMERS = ("snntorch", "spikingjelly", "norse", "spyx", "sinabs")


def step_inputs(x: np.ndarray, T: int) -> np.ndarray:
    """The input of each step, (T, N, C, H, W): a static image batch (N, C, H, W) at every step t, or
    frame t of event counts (N, T, C, H, W) at step t (qsnn's two encodings, as ``qsnn-sim`` feeds them)."""
    x = np.asarray(x)
    if x.ndim == 4:
        return np.broadcast_to(x[None], (T, *x.shape))
    if x.ndim == 5 and x.shape[1] == T:
        return np.moveaxis(x, 1, 0)
    raise ValueError(f"inputs of shape {x.shape}: give static images (N, C, H, W) or event frames (N, T={T}, C, H, W)")


def _dt(graph) -> float:
    return float(graph.metadata.get("dt", 1e-4))


def _record(outputs: dict[str, list], key: str, value) -> None:
    outputs.setdefault(key, []).append(np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value))


def _record_spikes(modules: list) -> Callable[[], list[np.ndarray]]:
    """Forward hooks that keep every output of each neuron module; the returned call stacks them (T, ...)."""
    spikes: dict[int, list] = {}
    for i, m in enumerate(modules):
        m.register_forward_hook(
            lambda mod, args, out, i=i: spikes.setdefault(i, []).append(
                (out[0] if isinstance(out, tuple) else out).detach().numpy().copy()
            )
        )
    return lambda: [np.stack(spikes[i]) for i in range(len(modules))]


def _run_stateful(module, x: np.ndarray, T: int) -> None:
    """T steps of a module called as ``module(x_t, state) -> (out, state)`` (spikingjelly's and Norse's graphs)."""
    import torch

    state = None
    with torch.no_grad():
        for xt in step_inputs(x, T):
            _, state = module(torch.from_numpy(xt.astype(np.float32)), state)


def run_snntorch(path: str, x: np.ndarray, T: int, subtract: bool) -> tuple[list[np.ndarray], str]:
    import nir
    import snntorch as snn
    import snntorch.utils
    import torch
    from snntorch.import_nir import import_from_nir

    log = io.StringIO()
    with contextlib.redirect_stdout(log):
        module = import_from_nir(nir.read(path))
    leaky = [m for m in module.modules() if isinstance(m, snn.Leaky)]
    if subtract:
        for m in leaky:
            m.reset_mechanism = "subtract"
            m.state_function = m._base_sub
            m.reset_delay = True
    spikes = _record_spikes(leaky)
    with torch.no_grad():
        snntorch.utils.reset(module)
        for xt in step_inputs(x, T):
            module(torch.from_numpy(xt.astype(np.float32)))
    return spikes(), log.getvalue()


def run_spikingjelly(path: str, x: np.ndarray, T: int, subtract: bool) -> tuple[list[np.ndarray], str]:
    from spikingjelly.activation_based import neuron
    from spikingjelly.activation_based.nir_exchange import import_from_nir

    module = import_from_nir(path)
    # the importer wraps each neuron in a stateful module that returns (spikes, state)
    nodes = [m for m in module.modules() if isinstance(getattr(m, "module", None), neuron.BaseNode)]
    if subtract:
        for m in nodes:
            m.module.v_reset = None
    spikes = _record_spikes(nodes)
    _run_stateful(module, x, T)
    return spikes(), ""


def run_norse(path: str, x: np.ndarray, T: int, subtract: bool) -> tuple[list[np.ndarray], str]:
    import nir
    import norse.torch as norse
    from norse.torch.functional.reset import reset_subtract
    from norse.torch.module.lif_box import LIFBoxCell

    graph = nir.read(path)
    module = norse.from_nir(graph, dt=_dt(graph))
    cells = [m for m in module.modules() if isinstance(m, LIFBoxCell)]
    if subtract:
        for m in cells:
            m.p = m.p._replace(reset_method=reset_subtract)
    spikes = _record_spikes(cells)
    _run_stateful(module, x, T)
    return spikes(), ""


def run_spyx(path: str, x: np.ndarray, T: int, subtract: bool) -> tuple[list[np.ndarray], str]:
    import jax.numpy as jnp
    import nir
    import spyx.nir

    graph = nir.read(path)
    xs = step_inputs(x, T).transpose(0, 1, 3, 4, 2).astype(np.float32)  # (T, N, H, W, C)
    model, (out, states) = spyx.nir.from_nir(graph, jnp.asarray(xs), dt=_dt(graph), return_all_states=True)
    # per-layer spikes: run the layers one by one over time to read each neuron's output
    from spyx.nn import IF, LIF

    layers = list(model.layers)
    h = jnp.asarray(xs)
    result = []
    for layer in layers:
        if isinstance(layer, (LIF, IF)):
            V = layer.initial_state(h.shape[1])
            zs = []
            for t in range(T):
                z, V = layer(h[t], V)
                zs.append(z)
            h = jnp.stack(zs)
            arr = np.asarray(h)
            result.append(arr.transpose(0, 1, 4, 2, 3) if arr.ndim == 5 else arr)  # back to (T, N, C, H, W)
        else:
            h = jnp.stack([layer(h[t]) for t in range(T)])
    # The layer-by-layer run must be spyx.nir.from_nir's own: the same output spikes but for float32 rounding
    # (its jitted scan fuses operations differently; a membrane on its threshold can fall either way: 2 of
    # 19,360 output entries of 110 event recordings at T = 16). A wiring error differs in far more.
    differ = int(np.sum(np.asarray(out) != np.asarray(result[-1])))
    if differ > 1e-3 * np.asarray(out).size:
        raise RuntimeError(f"spyx: layer-by-layer run differs from spyx.nir.from_nir's output in {differ} entries")
    return result, f"spyx: {differ} output entries differ from spyx.nir.from_nir's jitted run (float32 rounding)"


def run_sinabs(path: str, x: np.ndarray, T: int, subtract: bool) -> tuple[list[np.ndarray], str]:
    import nir
    import sinabs
    import sinabs.layers as sl
    import torch

    graph = nir.read(path)
    n = len(x)
    module = sinabs.from_nir(graph, batch_size=n)
    cells = [m for m in module.modules() if isinstance(m, (sl.LIFSqueeze, sl.IAFSqueeze))]
    spikes: dict[int, np.ndarray] = {}
    for i, m in enumerate(cells):
        m.register_forward_hook(lambda mod, args, out, i=i: spikes.__setitem__(i, out.detach().numpy().copy()))
    frames = step_inputs(x, T).swapaxes(0, 1)  # (N, T, C, H, W): sample-major, as Sinabs squeezes time
    xt = torch.from_numpy(frames.reshape(n * T, *frames.shape[2:]).astype(np.float32))
    with torch.no_grad():
        module(xt)
    out = []
    for i in range(len(cells)):
        s = spikes[i]
        out.append(s.reshape(n, T, *s.shape[1:]).swapaxes(0, 1))
    return out, ""


def main(argv: list[str]) -> int:
    consumer, path, inp, outp = argv[:4]
    subtract = "--subtract" in argv[4:]
    data = np.load(inp)
    x, T = data["x"], int(data["num_steps"])
    runner = globals()[f"run_{consumer}"]
    spikes, log = runner(path, x, T, subtract)
    np.savez(outp, **{f"z{i}": (np.asarray(s) > 0).astype(np.uint8) for i, s in enumerate(spikes, start=1)}, log=log)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
