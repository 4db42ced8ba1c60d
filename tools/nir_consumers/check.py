"""``make nir-check``: run qsnn's NIR files in every NIR consumer, unmodified, against qsnn-sim.

    python tools/nir_consumers/check.py CHECKPOINT_OR_ONNX [--images 100] [--out runs/nir-check]
                                        [--consumers snntorch,spikingjelly,norse,spyx,sinabs]
                                        [--profile-set FIELD=VALUE ...] [--data-dir DIR]

For each consumer: compile the model under the ``fpga`` profile, write the NIR folder of the
consumer's flavour (``qsnn-export --to nir --nir-flavor F``), load it with the consumer's own
importer (:mod:`run_consumer`, in the consumer's venv for Sinabs and Spyx), run N test inputs of the
model's own dataset (a stratified subset, :func:`qsnn.targets.inputs.check_inputs`, the inputs
``qsnn-rtl-sim -n N`` and ``make lava-check`` take) for T steps and compare with qsnn-sim. The inputs
are what qsnn-sim takes: a static image, fed at every step, or an event model's count frames
(N, T, C, H, W, read with the encoding, count clip and T it was trained with), frame t fed at step t
(:func:`run_consumer.step_inputs`); N event recordings with all their windows for a windows test cut,
scored per recording. Compared:

* accuracy of the consumer vs qsnn-sim's (the chip: delayed subtract reset);
* spike agreement per layer, as NIR's semantics allow: against qsnn-sim under *zero* reset (NIR's
  reset; float vs integer grid is all that differs), as % of spike entries equal and % of samples
  whose whole spike train is equal;
* the same with the consumer's own subtract-reset option (where it has one) against qsnn-sim's
  delayed subtract reset.

Writes ``nir_check.md`` (the table) and ``nir_check.json`` into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "run_consumer.py"
sys.path.insert(0, str(HERE))
from run_consumer import step_inputs  # noqa: E402 - the runner beside this file, self-contained for the venvs

#: consumer → (NIR flavour, venv name or None for the main environment, how to call it, subtract option)
CONSUMERS: dict[str, tuple[str, str | None, str, str]] = {
    "snntorch": (
        "standard",
        None,
        "snntorch.import_nir.import_from_nir(nir.read(f))",
        'Leaky reset_mechanism="subtract", reset_delay=True',
    ),
    "spikingjelly": (
        "standard",
        None,
        "spikingjelly.activation_based.nir_exchange.import_from_nir(f)",
        "LIFNode v_reset=None (soft reset)",
    ),
    "norse": ("standard", None, "norse.torch.from_nir(nir.read(f), dt=1e-4)", "LIFBox reset_subtract"),
    "spyx": ("spyx", "spyx", "spyx.nir.from_nir(nir.read(f), x, dt=1e-4)", "built in (LIF subtracts θ)"),
    "sinabs": ("sinabs", "sinabs", "sinabs.from_nir(nir.read(f), batch_size=N)", "built in (MembraneSubtract)"),
}
#: How each consumer's imported neuron runs, (default, with its subtract option): reset rule, spike
#: comparison, and whether a layer emits the spike of this step or of the previous one (Spyx).
SEMANTICS: dict[str, tuple[tuple[str, str, bool], tuple[str, str, bool]]] = {
    "snntorch": (("zero", ">", False), ("subtract-delayed", ">", False)),
    "spikingjelly": (("zero", ">=", False), ("subtract", ">=", False)),
    "norse": (("zero", ">", False), ("subtract", ">", False)),
    "spyx": (("subtract-delayed", ">", True), ("subtract-delayed", ">", True)),
    "sinabs": (("subtract", "multi", False), ("subtract", "multi", False)),  # MultiSpike: ⌊v/θ⌋ spikes
}
VENV_ROOT = Path(os.environ.get("QSNN_CACHE", Path.home() / ".cache" / "qsnn"))


def venv_path(name: str) -> Path:
    """~/.cache/qsnn/nir-<name>-<hash of its requirements file> (what ``make nir-venvs`` builds)."""
    req = HERE / f"requirements-{name}.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()[:12]
    return VENV_ROOT / f"nir-{name}-{digest}"


def python_for(consumer: str) -> Path | None:
    venv = CONSUMERS[consumer][1]
    if venv is None:
        return Path(sys.executable)
    py = venv_path(venv) / "bin" / "python"
    return py if (venv_path(venv) / ".installed").exists() else None


def run_consumer(
    consumer: str, nir_file: Path, x: np.ndarray, T: int, subtract: bool, python: Path | None = None
) -> dict[str, np.ndarray]:
    """Spikes ``z1..`` (T, N, ...) of ``consumer`` running ``nir_file`` in its own interpreter on ``x``: static
    images (N, C, H, W), fed at every step, or event count frames (N, T, C, H, W), frame t at step t."""
    python = python or python_for(consumer)
    if python is None:
        raise FileNotFoundError(f"{consumer}: no venv at {venv_path(CONSUMERS[consumer][1])}; run `make nir-venvs`")
    if Path(python) == Path(sys.executable):  # a consumer of the main environment: run it in-process
        import run_consumer as runner

        spikes, _log = getattr(runner, f"run_{consumer}")(str(nir_file), x, T, subtract)
        return {f"z{i}": (np.asarray(s) > 0).astype(np.uint8) for i, s in enumerate(spikes, start=1)}
    with tempfile.TemporaryDirectory(prefix=f"nir-{consumer}-") as tmp:
        inp, out = Path(tmp) / "in.npz", Path(tmp) / "out.npz"
        np.savez(inp, x=x, num_steps=T)
        cmd = [str(python), str(RUNNER), consumer, str(nir_file), str(inp), str(out)] + (
            ["--subtract"] if subtract else []
        )
        env = {**os.environ, "PYTHONWARNINGS": "ignore", "JAX_PLATFORMS": "cpu"}
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()
            raise RuntimeError(f"{consumer}: {tail[-1] if tail else 'failed'}")
        data = np.load(out)
        return {k: data[k] for k in data.files if k.startswith("z")}


def agreement(got: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> list[dict[str, float]]:
    """Per layer: % of spike entries equal, % of samples with identical spike trains, and the rates."""
    rows = []
    for key in sorted(ref):
        r, g = ref[key], got.get(key)
        if g is None or g.shape != r.shape:
            rows.append(
                {
                    "layer": key,
                    "entries": float("nan"),
                    "samples": float("nan"),
                    "shape": str(None if g is None else g.shape),
                }
            )
            continue
        eq = g == r
        rows.append(
            {
                "layer": key,
                "entries": 100.0 * float(eq.mean()),
                "samples": 100.0 * float(eq.reshape(eq.shape[0], eq.shape[1], -1).all(axis=(0, 2)).mean()),
                "rate_consumer": float(g.mean()),
                "rate_qsnn": float(r.mean()),
            }
        )
    return rows


def _currents(layer, x: np.ndarray) -> np.ndarray:
    """Real-valued current of an integer layer on the membrane grid: (sumpool(W ⊛ x))·2^(s+e) + b, no flooring
    (a conv of stride s and zero padding pad with p×p pooling: the folded kernel at stride s·p on the padded x)."""
    from qsnn.network import fold_pool

    scale = 2.0 ** (int(layer.current_shift) + int(layer.weight_exp))
    if layer.kind == "dense":
        w = np.asarray(layer.weight, dtype=np.float64)
        out = x.reshape(len(x), -1).astype(np.float64) @ w.T
        return out * scale + np.asarray(layer.bias, dtype=np.float64)
    w = fold_pool(layer.weight, layer.pool, stride=layer.stride).astype(np.float64)
    step, side, pad = int(layer.stride) * int(layer.pool), w.shape[-1], int(layer.padding)
    xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    win = np.lib.stride_tricks.sliding_window_view(xp, (side, side), axis=(2, 3))[:, :, ::step, ::step]
    out = np.einsum("nchwij,ocij->nohw", win, w, optimize=True)
    return out * scale + np.asarray(layer.bias, dtype=np.float64)[None, :, None, None]


def real_valued(net, x: np.ndarray, reset: str, compare: str, emit_previous: bool) -> dict[str, np.ndarray]:
    """The integer network in real arithmetic (float64, no floors or saturation) under a consumer's
    neuron semantics: what a NIR simulator can compute at best from qsnn's file.

    ``reset``: ``zero`` (NIR: v ← 0 right after the spike), ``subtract`` (v ← v − z·θ right after the
    spike), ``subtract-delayed`` (qsnn: θ subtracted one step later). ``compare``: ``>``, ``>=``, or
    ``multi`` (Sinabs' default MultiSpike: z = ⌊v/θ⌋ spikes for v ≥ θ, passed on as counts).
    ``emit_previous``: a layer outputs the spike of its previous membrane (Spyx's LIF).
    """
    from qsnn.targets.nir.graph import beta_of

    T = int(net.num_steps)
    spikes: dict[str, np.ndarray] = {}
    inp = step_inputs(x, T)  # x_t: the static image at every step, or event frame t
    for i, layer in enumerate(net.layers, start=1):
        beta = beta_of(net, layer)
        theta = np.asarray(layer.threshold, dtype=np.float64)
        static = i == 1 and x.ndim == 4  # the same current at every step
        cur0 = _currents(layer, inp[0]) if static else None
        v = th = None
        out = []
        for t in range(T):
            cur = cur0 if static else _currents(layer, inp[t])
            if v is None:
                v = np.zeros_like(cur)
                th = theta.reshape((1, -1) + (1,) * (cur.ndim - 2))

            def fire(a):
                if compare == "multi":
                    return np.where(a >= th, np.floor(a / np.where(th > 0, th, 1)), 0.0)
                return a > th if compare == ">" else a >= th

            if reset == "subtract-delayed":
                r = fire(v)
                v = beta * v + cur - r * th
                z = r if emit_previous else fire(v)
            else:
                v = beta * v + cur
                z = fire(v)
                v = v * (1 - z) if reset == "zero" else v - z * th
            out.append(np.asarray(z, dtype=np.float64))
        counts = np.stack(out)
        spikes[f"z{i}"] = (counts > 0).astype(np.uint8)
        inp = list(counts)
    return spikes


def output_spikes(spikes: dict[str, np.ndarray]) -> np.ndarray:
    """The last layer's spikes (T, N, classes) of ``z1, z2, …`` (by number: z10 follows z9)."""
    return spikes[max(spikes, key=lambda key: int(key[1:]))]


def predictions(z_last: np.ndarray) -> np.ndarray:
    return np.asarray(z_last).sum(axis=0).argmax(axis=1)


def compile_fpga(source: Path, workdir: Path, profile_sets: tuple[str, ...] = ()):
    """The network under the ``fpga`` profile (with ``--profile-set`` changes, e.g. ``weight_bits=8``)."""
    from qsnn.cli import chosen_profile
    from qsnn.export.compile import compile_qonnx

    if source.suffix != ".onnx":
        from qsnn.export.qonnx_float import export_float

        source = export_float(source, workdir / "model.onnx")
    net, _ = compile_qonnx(source, chosen_profile("fpga", profile_sets, None))
    return net


def check(
    source: Path,
    out: Path,
    images: int = 100,
    consumers: list[str] | None = None,
    log=print,
    profile_sets: tuple[str, ...] = (),
    data_dir: str | None = None,
    dataset: str | None = None,
) -> dict[str, Any]:
    from qsnn.sim.engine import simulate
    from qsnn.targets import write_target
    from qsnn.targets.inputs import check_inputs

    consumers = consumers or list(CONSUMERS)
    with tempfile.TemporaryDirectory(prefix="qsnn-nir-check-") as tmp:
        net = compile_fpga(source, Path(tmp), profile_sets)
    dataset, split = check_inputs(net, images, "test", data_dir, dataset=dataset, where=str(source))
    x = split.x  # (N, C, H, W) images or (N, T, C, H, W) event counts, as qsnn-sim takes them
    out.mkdir(parents=True, exist_ok=True)
    T = int(net.num_steps)
    ours = simulate(net, x, record=True)
    ours_zero = simulate(dataclasses.replace(net, profile=net.profile.replace(reset="zero")), x, record=True)

    def accuracy(spikes: dict[str, np.ndarray]) -> float:  # per recording where windows are summed
        return 100.0 * split.accuracy(output_spikes(spikes).sum(axis=0))

    folders = {}
    results: dict[str, Any] = {
        "dataset": dataset,
        "encoding": net.encoding,
        "input_max": int(net.input_max),
        "images": split.num_recordings,
        "samples": len(split),
        "num_steps": T,
        "qsnn_sim_accuracy": accuracy(ours.spikes),
        "qsnn_sim_zero_reset_accuracy": accuracy(ours_zero.spikes),
        "consumers": {},
    }
    for c in consumers:
        flavor, venv, call, sub_option = CONSUMERS[c]
        if flavor not in folders:
            folders[flavor] = write_target("nir", net, out / f"nir-{flavor}", force=True, flavor=flavor)
        nir_file = folders[flavor] / "network.nir"
        row: dict[str, Any] = {
            "flavor": flavor,
            "call": call,
            "subtract_option": sub_option,
            "file": str(nir_file),
            "loads_unmodified": False,
            "runs": False,
        }
        t0 = time.perf_counter()
        try:
            got = run_consumer(c, nir_file, x, T, subtract=False)
            row["loads_unmodified"] = row["runs"] = True
            row["accuracy"] = accuracy(got)
            row["agree_predictions_vs_qsnn"] = 100.0 * float(
                np.mean(predictions(output_spikes(got)) == ours.predictions)
            )
            row["spikes_vs_real_valued"] = agreement(got, real_valued(net, x, *SEMANTICS[c][0]))
            row["spikes_vs_qsnn_zero_reset"] = agreement(got, ours_zero.spikes)
            row["spikes_vs_qsnn"] = agreement(got, ours.spikes)
            sub = run_consumer(c, nir_file, x, T, subtract=True)
            row["accuracy_subtract"] = accuracy(sub)
            row["spikes_subtract_vs_real_valued"] = agreement(sub, real_valued(net, x, *SEMANTICS[c][1]))
            row["spikes_subtract_vs_qsnn"] = agreement(sub, ours.spikes)
        except Exception as exc:  # noqa: BLE001 - the table reports what failed
            row["error"] = str(exc)[:300]
        row["seconds"] = round(time.perf_counter() - t0, 1)
        results["consumers"][c] = row
        log(f"{c}: {row.get('accuracy', row.get('error'))}")
    md = table(results)
    (out / "nir_check.md").write_text(md)
    (out / "nir_check.json").write_text(json.dumps(results, indent=1))
    return results


def _layers(rows: list[dict[str, float]] | None, key: str) -> str:
    if not rows:
        return "—"
    return " / ".join(f"{r[key]:.2f}" for r in rows)


def table(results: dict[str, Any]) -> str:
    what = "test images (a stratified subset)"
    if results.get("encoding") == "events":
        windows = results.get("samples", results["images"])
        what = (
            "test recordings (a stratified subset"
            + (f", {windows} windows" if windows != results["images"] else "")
            + f"; event count frames clipped at {results['input_max']}, frame t at step t)"
        )
    lines = [
        f"NIR consumers on {results['images']} {results.get('dataset', 'mnist5k')} {what}, "
        f"T = {results['num_steps']}: qsnn-sim "
        f"{results['qsnn_sim_accuracy']:.1f} % (fpga, delayed subtract reset), "
        f"{results['qsnn_sim_zero_reset_accuracy']:.1f} % with zero reset.",
        "",
        "| consumer | flavour | loads unmodified | runs | accuracy % (qsnn-sim "
        f"{results['qsnn_sim_accuracy']:.1f}) | spikes equal vs real-valued qsnn net, consumer's semantics: "
        "% entries per layer (z1/z2/…) | % samples | vs qsnn-sim zero reset, % entries | subtract option: accuracy % "
        "| its spikes vs qsnn-sim (delayed subtract), % entries | % samples |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c, row in results["consumers"].items():
        if "error" in row and not row["runs"]:
            lines.append(f"| {c} | {row['flavor']} | no | no | — | — | — | — | — | — | {row['error'][:80]} |")
            continue
        lines.append(
            f"| {c} | {row['flavor']} | yes | yes | {row['accuracy']:.1f} | "
            f"{_layers(row.get('spikes_vs_real_valued'), 'entries')} | "
            f"{_layers(row.get('spikes_vs_real_valued'), 'samples')} | "
            f"{_layers(row.get('spikes_vs_qsnn_zero_reset'), 'entries')} | "
            f"{row.get('accuracy_subtract', float('nan')):.1f} | "
            f"{_layers(row.get('spikes_subtract_vs_qsnn'), 'entries')} | "
            f"{_layers(row.get('spikes_subtract_vs_qsnn'), 'samples')} |"
        )
    lines += ["", "Calls: " + "; ".join(f"{c}: `{r['call']}`" for c, r in results["consumers"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path, help="a qsnn checkpoint (best.pt) or its float QONNX export")
    ap.add_argument("--images", type=int, default=100, help="test inputs (event recordings for an event model)")
    ap.add_argument("--out", type=Path, default=Path("runs/nir-check"))
    ap.add_argument("--consumers", default=",".join(CONSUMERS))
    ap.add_argument(
        "--profile-set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a field of the fpga profile the network is compiled under (e.g. weight_bits=8)",
    )
    ap.add_argument(
        "--data-dir",
        default=None,
        help="folder with the model's dataset (env QSNN_DATA_DIR; default: where training read it); see docs/data.md",
    )
    ap.add_argument(
        "--dataset",
        default=None,
        help="the dataset to check on: a name, arrays:DIR or folder:DIR (default: the model's own; a model of your "
        "own nn.Sequential records none)",
    )
    args = ap.parse_args(argv)
    if args.images < 1:
        ap.error(f"--images {args.images}: give a number of test images, 1 or more")
    unknown = sorted(set(args.consumers.split(",")) - set(CONSUMERS))
    if unknown:
        ap.error(f"--consumers: unknown {', '.join(unknown)}; choose from {','.join(CONSUMERS)}")
    from qsnn.cli import friendly_errors

    results = friendly_errors(check)(
        args.source,
        args.out,
        args.images,
        args.consumers.split(","),
        profile_sets=tuple(args.profile_set),
        data_dir=args.data_dir,
        dataset=args.dataset,
    )
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
