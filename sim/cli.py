"""``qsnn-sim``: run a compiled QSNN bit-accurately on a dataset split and report.

    qsnn-sim MODEL.onnx --profile fpga|loihi2 [--profile-set KEY=VALUE ...] [--allow-saturation]
             [--dataset mnist5k] [--split test] [--data-dir DIR] [--subset N] [--batch-size 256]
             [--report out.json] [--plot out.png] [--check] [--frac-bits-sweep 0,2,4,6] [--debug]

MODEL.onnx is the float QONNX export of ``qsnn-export CHECKPOINT --to qonnx`` (compiled here under
the profile) or its integer variant (``--to qonnx --profile ...``, which carries its own profile).
The report has three parts:

1. accuracy of the trained model (the float graph run over T steps by onnxruntime, which equals
   PyTorch spike for spike), of the integer simulation, and their difference;
2. agreement with the trained model (predictions, output spike counts) and, with ``--check``,
   spike trains per layer against the independent PyTorch evaluation of the integer semantics
   (``100.00 %`` only when every train is ``array_equal``);
3. hardware figures per layer: spikes per step, synaptic operations per inference, weight memory,
   membrane range seen against the profile's width, saturation events.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from qsnn.cli import debug_option, friendly_errors, print_table
from qsnn.data import DATASETS, INPUT_SCALE, SPLITS, ArraySplit, load_split
from qsnn.errors import DataError, ProfileError
from qsnn.network import IntegerNetwork
from qsnn.profiles import PROFILES, ChipProfile, get_profile

from . import report as rep
from .engine import SimResult, combine, predict, simulate

#: Samples per chunk of the main loop (each chunk: engine, and with --check the PyTorch reference).
CHUNK = 512


# --------------------------------------------------------------------------------------------------
# Inputs


def parse_profile_sets(items: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``["membrane_bits=24", "overflow=wrap"]`` → typed overrides of :class:`ChipProfile` fields."""
    types = {f.name: f.type for f in dataclasses.fields(ChipProfile)}
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key, text = key.strip(), text.strip()
        if not sep or not key:
            raise ProfileError(f"--profile-set {item!r}: expected KEY=VALUE, e.g. membrane_bits=24")
        if key not in types or key == "name":
            raise ProfileError(f"--profile-set {item!r}: unknown profile field {key!r}; fields are "
                               f"{sorted(k for k in types if k != 'name')}")
        kind = str(types[key])
        try:
            if "bool" in kind:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(text)
                value: Any = text.lower() in ("true", "1", "yes")
            elif "int" in kind:
                value = int(text, 0)
            else:
                value = text
        except ValueError:
            raise ProfileError(f"--profile-set {item!r}: {key} takes {'true/false' if 'bool' in kind else 'an integer'}, "
                               f"got {text!r}") from None
        out[key] = value
    return out


def load_network(model: Path, profile: ChipProfile | None, *, allow_saturation: bool = False
                 ) -> tuple[IntegerNetwork, dict[str, Any], str]:
    """The network of a qsnn QONNX file: (network, compile report, kind "float" | "integer").

    A float export is compiled under ``profile``; an integer export is read back with its own
    profile (``profile`` must then be ``None`` or the same). Raises ExportError / ProfileError.
    """
    from qsnn.export.format import check_qsnn_model

    _, meta = check_qsnn_model(model)
    if meta["kind"] == "integer":
        from qsnn.export.qonnx_int import read_integer_qonnx

        net = read_integer_qonnx(model)
        if profile is not None and profile != net.profile:
            raise ProfileError(f"{model} is compiled for profile {net.profile.name!r} "
                               f"({_profile_diff(profile, net.profile)}); drop --profile/--profile-set to use "
                               "it, or pass the float export to compile under another profile")
        return net, dict(meta.get("compile_report") or {}), "integer"
    from qsnn.export.compile import compile_qonnx

    net, compile_report = compile_qonnx(model, profile or get_profile("fpga"), allow_saturation=allow_saturation)
    return net, dict(compile_report), "float"


def _profile_diff(a: ChipProfile, b: ChipProfile) -> str:
    diff = [f"{k}: {v} vs {b.to_dict()[k]}" for k, v in a.to_dict().items() if b.to_dict()[k] != v]
    return "; ".join(diff) or "same"


def check_dataset(net: IntegerNetwork, data: ArraySplit, model: Path, dataset: str) -> None:
    """Raise DataError naming both sides when the split does not fit the network."""
    ours = (f"{net.encoding} input {tuple(net.input_shape)}, {len(net.classes)} classes, T={net.num_steps}")
    theirs = f"{data.encoding} input {tuple(data.input_shape)}, {len(data.classes)} classes"
    trained_on = net.metadata.get("dataset") if isinstance(net.metadata, dict) else None
    hint = f"; the model was trained on {trained_on!r}: pass --dataset {trained_on}" if trained_on else ""
    if (data.encoding != net.encoding or tuple(data.input_shape) != tuple(net.input_shape)
            or len(data.classes) != len(net.classes)):
        raise DataError(f"dataset {dataset!r} ({theirs}) does not match the model {model.name} ({ours}){hint}")
    if tuple(data.classes) != tuple(net.classes):
        raise DataError(f"dataset {dataset!r} has classes {_short(data.classes)} but the model {model.name} was trained "
                        f"on classes {_short(net.classes)}{hint}")
    if data.encoding == "events" and data.x.shape[1] != net.num_steps:
        raise DataError(f"dataset {dataset!r} has {data.x.shape[1]} frames per sample but the model {model.name} "
                        f"runs T={net.num_steps} steps")


def _short(classes: tuple[str, ...] | list[str]) -> str:
    names = [str(c) for c in classes]
    return "(" + ", ".join(names[:4]) + (", ..." if len(names) > 4 else "") + ")"


# --------------------------------------------------------------------------------------------------
# The evaluations


def float_input(x: np.ndarray, encoding: str) -> np.ndarray:
    """The float model's input from the integers, as training feeds it: float32 ``x · INPUT_SCALE``."""
    xf = np.asarray(x).astype(np.float32)
    return xf * np.float32(INPUT_SCALE[encoding]) if encoding == "static" else xf


def float_model_counts(model: Path, x: np.ndarray, encoding: str, batch_size: int = 256,
                       engine: str = "ort") -> np.ndarray:
    """Output spike counts (N, classes) of the float QONNX graph run over T steps on integer inputs."""
    from qsnn.export.runtime import run_onnx_steps

    counts = []
    for s in range(0, len(x), max(batch_size, 1)):
        out = run_onnx_steps(model, float_input(x[s:s + batch_size], encoding), engine=engine,
                             batch_size=batch_size)
        z3 = np.asarray(out["z3"])
        counts.append(z3.sum(axis=0).reshape(z3.shape[1], -1).astype(np.int64))
    return np.concatenate(counts) if counts else np.zeros((0, 0), np.int64)


def simulate_checked(net: IntegerNetwork, x: np.ndarray, *, batch_size: int = 256, check: bool = False,
                     progress: bool = True) -> tuple[SimResult, dict[str, Any] | None, float]:
    """Simulate ``x`` in chunks; with ``check``, compare every spike train with run_integer_torch.

    Returns (combined result without spike trains, the check's summary or None, engine seconds).
    """
    run_integer_torch = None
    if check:
        from qsnn.export.integer_torch import run_integer_torch
    comparison = rep.SpikeTrainComparison()
    results, seconds = [], 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(x), unit="sample", desc=f"simulate ({net.profile.name})", leave=False)
    try:
        for s in range(0, len(x), CHUNK):
            xc = x[s:s + CHUNK]
            t0 = time.perf_counter()
            res = simulate(net, xc, batch_size=batch_size, record=check)
            seconds += time.perf_counter() - t0
            if check:
                ref = run_integer_torch(net, xc, batch_size=batch_size)
                comparison.add(res.spikes, {k: np.asarray(v) for k, v in ref.items() if k in res.spikes}, offset=s)
                res.spikes = None
            results.append(res)
            if bar is not None:
                bar.update(len(xc))
    finally:
        if bar is not None:
            bar.close()
    return combine(results), (comparison.summary() if check else None), seconds


def frac_bits_sweep(model: Path, profile: ChipProfile, x: np.ndarray, y: np.ndarray, values: list[int], *,
                    float_counts: np.ndarray | None = None, allow_saturation: bool = False,
                    batch_size: int = 256) -> list[dict[str, Any]]:
    """Accuracy of the integer simulation for each ``frac_bits`` in ``values`` (same model and data).

    Each row: frac_bits, accuracy, difference to the float model and agreement with it (if
    ``float_counts`` is given), saturation events, or ``error`` when the profile cannot hold the net.
    """
    from qsnn.export.compile import compile_qonnx

    rows = []
    for f in values:
        row: dict[str, Any] = {"frac_bits": f}
        try:
            p = profile.replace(frac_bits=f)
            net, compile_report = compile_qonnx(model, p, allow_saturation=allow_saturation)
        except ProfileError as exc:
            row["error"] = str(exc).splitlines()[0]
            rows.append(row)
            continue
        res = simulate(net, x, batch_size=batch_size)
        row["accuracy"] = res.accuracy(y)
        row["saturation_events"] = sum(layer.saturation_events for layer in res.layers)
        row["current_shifts"] = [layer.current_shift for layer in net.layers]
        if float_counts is not None:
            acc_float = float(np.mean(predict(float_counts) == y))
            row["accuracy_float"] = acc_float
            row["difference"] = row["accuracy"] - acc_float
            row.update({k: v for k, v in rep.output_agreement(res.counts, float_counts).items()
                        if k.endswith("_pct")})
        rows.append(row)
    return rows


def _int_list(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(f"expected a comma-separated list of integers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise click.BadParameter("frac_bits values must be >= 0")
    return values


# --------------------------------------------------------------------------------------------------
# The command


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--profile", "profile_name", type=click.Choice(sorted(PROFILES)), default=None,
              help="Chip profile to compile under [default: fpga; an integer export keeps its own].")
@click.option("--profile-set", "profile_sets", multiple=True, metavar="KEY=VALUE",
              help="Override a profile field, e.g. membrane_bits=24 or overflow=wrap (repeatable).")
@click.option("--allow-saturation", is_flag=True,
              help="Compile even if the worst-case membrane exceeds the profile's width (it saturates).")
@click.option("--dataset", type=click.Choice(DATASETS), default=None,
              help="Dataset [default: the one the model was trained on].")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder with the dataset files (else $QSNN_DATA_DIR, then installed copies).")
@click.option("--subset", type=click.IntRange(min=1), default=None, help="Simulate a stratified subset of N samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option("--report", "report_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write the report as JSON here.")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Write a PNG: spike raster of the first sample and firing rates per layer.")
@click.option("--check", is_flag=True,
              help="Compare every spike train with the PyTorch evaluation of the integer semantics.")
@click.option("--frac-bits-sweep", "sweep", default=None, metavar="F1,F2,...",
              help="Also report the accuracy for each of these frac_bits (e.g. 0,2,4,6).")
@click.option("--no-float", is_flag=True, help="Skip running the float model (no accuracy difference).")
@click.option("--progress/--no-progress", default=True, show_default=True)
@debug_option
@friendly_errors
def main(model: Path, profile_name: str | None, profile_sets: tuple[str, ...], allow_saturation: bool,
         dataset: str | None, split: str, data_dir: Path | None, subset: int | None, batch_size: int,
         report_path: Path | None, plot_path: Path | None, check: bool, sweep: str | None, no_float: bool,
         progress: bool) -> None:
    """Simulate MODEL.onnx bit-accurately under a chip profile and report accuracy, agreement and hardware figures."""
    sweep_values = _int_list(sweep)
    overrides = parse_profile_sets(profile_sets)
    profile = get_profile(profile_name or "fpga", **overrides) if (profile_name or overrides) else None
    net, compile_report, kind = load_network(model, profile, allow_saturation=allow_saturation)
    profile = net.profile
    dataset = dataset or net.metadata.get("dataset")
    if dataset not in DATASETS:
        raise DataError(f"{model}: the model does not say which dataset it was trained on; pass --dataset")
    data = load_split(dataset, split, data_dir, num_steps=net.num_steps, subset=subset)
    check_dataset(net, data, model, dataset)
    x, y = data.x, data.y

    float_counts = None
    if kind == "float" and not no_float:
        t0 = time.perf_counter()
        float_counts = float_model_counts(model, x, net.encoding, batch_size)
        float_seconds = time.perf_counter() - t0
    result, check_summary, seconds = simulate_checked(net, x, batch_size=batch_size, check=check, progress=progress)

    acc_int = result.accuracy(y)
    acc_float = float(np.mean(predict(float_counts) == y)) if float_counts is not None else None
    report: dict[str, Any] = {
        "model": str(model), "model_kind": kind, "dataset": dataset, "split": split, "samples": len(y),
        "num_steps": net.num_steps, "encoding": net.encoding, "profile": profile.to_dict(),
        "accuracy": {"float_model": acc_float, "integer_sim": acc_int,
                     "difference": None if acc_float is None else acc_int - acc_float},
        "agreement": {},
        "hardware": rep.hardware_figures(net, result),
        "compile_report": compile_report,
        "timing": {"engine_seconds": seconds, "engine_samples_per_s": len(y) / seconds if seconds else None},
    }
    if float_counts is not None:
        report["agreement"]["vs_float_model"] = rep.output_agreement(result.counts, float_counts)
        report["timing"]["float_graph_seconds"] = float_seconds
    if check_summary is not None:
        check_summary["reference"] = "qsnn.export.integer_torch.run_integer_torch"
        report["agreement"]["spike_trains_vs_integer_torch"] = check_summary
    trained_reset = net.metadata.get("reset") if isinstance(net.metadata, dict) else None
    if trained_reset and trained_reset != profile.reset:
        report["note"] = (f"trained with {trained_reset} reset, simulated with the profile's {profile.reset} reset")
    if sweep_values:
        report["frac_bits_sweep"] = frac_bits_sweep(model, profile, x, y, sweep_values, float_counts=float_counts,
                                                    allow_saturation=allow_saturation, batch_size=batch_size)

    _print_summary(report, result, check_summary)
    if plot_path is not None:
        one = simulate(net, x[:1], record=True)
        rep.plot_activity(plot_path, one.spikes, result, [layer.name for layer in net.layers], sample=0,
                          title=f"{model.name} · {profile.name} · {dataset} {split}")
        click.echo(f"plot: {plot_path}")
    if report_path is not None:
        rep.write_json(report_path, report)
        click.echo(f"report: {report_path}")


def _print_summary(report: dict[str, Any], result: SimResult, check: dict[str, Any] | None) -> None:
    acc = report["accuracy"]
    fmt = lambda v: "n/a" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    rows: list[tuple[str, Any]] = [
        ("model", f"{report['model']} ({report['model_kind']} export)"),
        ("profile", report["profile"]["name"]),
        ("data", f"{report['dataset']} {report['split']}, {report['samples']} samples, T={report['num_steps']}"),
        ("accuracy, trained model", fmt(acc["float_model"])),
        ("accuracy, integer sim", fmt(acc["integer_sim"])),
        ("difference (int - float)", "n/a" if acc["difference"] is None else f"{100 * acc['difference']:+.2f} pp"),
    ]
    agree = report["agreement"].get("vs_float_model")
    if agree:
        rows += [("predictions equal", rep.format_percent(agree["predictions_equal_pct"])),
                 ("output counts equal", rep.format_percent(agree["output_counts_equal_pct"]))]
    if check:
        for key, pct in check["equal_pct"].items():
            rows.append((f"spike trains equal {key}", rep.format_percent(pct)))
        rows.append(("bit-exact vs integer torch", "yes" if check["bit_exact"] else f"NO, first {check['first_mismatch']}"))
    timing = report["timing"]
    if timing.get("engine_samples_per_s"):
        rows.append(("engine speed", f"{timing['engine_samples_per_s']:.0f} samples/s"))
    print_table(rows, title="qsnn-sim")
    click.echo("")
    hw_rows = []
    for layer in report["hardware"]["layers"]:
        hw_rows.append((layer["name"],
                        f"rate {100 * layer['firing_rate']:.2f} %  spikes/inf {layer['spikes_per_inference']:.1f}  "
                        f"synops/inf {layer['synops_per_inference']:.0f}  weights {layer['weight_memory_bits']} bit  "
                        f"u in [{layer['membrane_min']}, {layer['membrane_max']}] "
                        f"({layer['membrane_bits_used']}/{layer['membrane_bits']} bit)  "
                        f"sat {layer['saturation_low']}/{layer['saturation_high']}"))
    total = report["hardware"]["total"]
    hw_rows.append(("total", f"synops/inf {total['synops_per_inference']:.0f} (dense MACs "
                             f"{total['dense_macs_per_inference']:.0f})  weights {total['weight_memory_bits']} bit  "
                             f"saturation events {total['saturation_events']}"))
    print_table(hw_rows, title="hardware (per inference = mean over samples; sat = low/high rail events)")
    hit = [layer for layer in report["hardware"]["layers"] if layer["saturation_events"]]
    if hit:
        profile = report["profile"]
        how = "clamped" if profile["overflow"] == "saturate" else "wrapped around (two's complement)"
        click.echo(f"\nwarning: {total['saturation_events']} membrane updates overflowed the {profile['membrane_bits']}-bit "
                   f"register and were {how}: " + ", ".join(
                       f"{layer['name']} {layer['saturation_events']} ({layer['saturation_low']} low, "
                       f"{layer['saturation_high']} high)" for layer in hit)
                   + "; widen the membrane (--profile-set membrane_bits=N) or lower frac_bits")
    if report.get("frac_bits_sweep"):
        click.echo("")
        sweep_rows = []
        for row in report["frac_bits_sweep"]:
            if "error" in row:
                sweep_rows.append((f"frac_bits={row['frac_bits']}", f"error: {row['error']}"))
                continue
            text = f"accuracy {fmt(row['accuracy'])}"
            if "difference" in row:
                text += f"  diff {100 * row['difference']:+.2f} pp  predictions equal {row['predictions_equal_pct']:.2f} %"
            text += f"  saturation events {row['saturation_events']}"
            sweep_rows.append((f"frac_bits={row['frac_bits']}", text))
        print_table(sweep_rows, title="accuracy vs frac_bits")
    if report.get("note"):
        click.echo(f"\nnote: {report['note']}")


if __name__ == "__main__":  # pragma: no cover
    main()
