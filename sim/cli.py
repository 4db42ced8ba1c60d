"""``qsnn-sim``: run a compiled QSNN bit-accurately on a dataset split and report.

    qsnn-sim MODEL.onnx --profile fpga|loihi2 [--profile-set KEY=VALUE ...] [--allow-saturation]
             [--dataset mnist5k] [--split test] [--data-dir DIR] [--subset N] [--batch-size 256]
             [--report out.json] [--plot out.png] [--check] [--frac-bits-sweep 0,2,4,6]
             [--float-engine layers|graph] [--float/--no-float] [--debug]
    qsnn-sim MODEL.onnx --input X.npy|X.npz [--record OUT.npz] [--float] [...]
    qsnn-sim MODEL.onnx [...] --explain [--explain-plot P.png]   where and why spikes part from the trained model
    qsnn-sim MODEL.onnx [...] --fit [--fit-tolerance 0.5]        the narrowest safe membrane (sim/fit.py)

MODEL.onnx is the float QONNX export of ``qsnn-export CHECKPOINT --to qonnx`` (compiled here under
the profile) or its integer variant (``--to qonnx --profile ...``, which carries its own profile).
The report has three parts:

1. accuracy of the trained model (the float export evaluated over T steps: by default layer by layer
   with exact integer synaptic sums, :mod:`qsnn.export.float_eval`; ``--float-engine graph`` runs the
   one-step graph in onnxruntime; either agrees with PyTorch as two float evaluations of one network
   do; a model fine-tuned integer-exactly for this profile, ``qsnn-train finetune``, was trained with
   the compiled network as its forward pass, which is then what runs: :func:`trained_on_integers`),
   of the integer simulation, and their difference;
2. agreement with the trained model (predictions, output spike counts) and, with ``--check``,
   spike trains per layer against the independent PyTorch evaluation of the integer semantics
   (``100.00 %`` only when every train is ``array_equal``);
3. hardware figures per layer: spikes per step, synaptic operations per inference, weight memory,
   membrane range seen against the profile's width, saturation events.

``--input X.npy|X.npz`` runs one's own arrays instead of a dataset (uint8 images or event counts of
the export's input shape; an .npz with labels ``y`` gives the accuracy too) and prints the predictions
with the spike counts per class; ``--record OUT.npz`` keeps every layer's spikes and membranes per
step (:mod:`qsnn.sim.user_input` has the shapes and keys).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from qsnn.cli import (
    DatasetChoice,
    allow_saturation_option,
    chosen_profile,
    claim_stdout,
    debug_option,
    force_option,
    friendly_errors,
    list_profiles_option,
    print_table,
    profile_option,
    profile_set_option,
    progress_option,
    say,
    version_option,
    write_stdout,
)
from qsnn.data import DATASETS, SPLITS, data_warnings, describe_files, files_line, load_for_model
from qsnn.errors import DataError, ExportError, ProfileError
from qsnn.events import event_frames_from_metadata
from qsnn.jsonio import dumps, write_json
from qsnn.network import IntegerNetwork
from qsnn.output_guard import SIM_PLOT, SIM_RECORD, SIM_REPORT, SIM_REPORT_FORMAT, check_outputs
from qsnn.profiles import ChipProfile, get_profile
from qsnn.summary import silent_output_warning

from . import report as rep
from .engine import simulate
from .explain import TrainedNeurons, plot_agreement
from .explain import explain as explain_model
from .explain import summary_lines as explain_lines
from .fit import fit as fit_membrane
from .fit import summary_lines as fit_lines
from .results import SimResult
from .user_input import check_record_size, prediction_rows, read_input, record_arrays, write_record
from .validate import float_model_counts, frac_bits_sweep, simulate_checked

#: The profile a float export is compiled under when neither --profile nor --profile-set is given.
DEFAULT_PROFILE = "fpga"

#: ``--float-engine`` choices: how the trained model (the float export) is evaluated.
FLOAT_ENGINES = {
    "layers": "qsnn.export.float_eval.FloatEvaluator: layer by layer over T, synaptic sums exact in integers",
    "graph": "qsnn.export.runtime.run_onnx_steps: the one-step QONNX graph T times in onnxruntime, as written",
}
#: How the trained model of an integer-exact fine-tuning (qsnn-train finetune) under this profile is evaluated.
INTEGER_EXACT_ENGINE = (
    "qsnn.export.integer_torch.run_integer_torch: the model was fine-tuned on this profile's integer network "
    "(qsnn-train finetune), so its trained forward pass is the compiled network"
)


def trained_on_integers(meta: Any, profile: ChipProfile) -> bool:
    """The export says its model was fine-tuned integer-exactly for ``profile`` (the named profile, no
    --profile-set changes): its trained forward pass is the integer network compiled here, not the
    float LIF the graph spells out (:mod:`qsnn.train.finetune`)."""
    return (
        isinstance(meta, dict)
        and bool(meta.get("integer_exact"))
        and meta.get("trained_profile") == profile.name
        and profile == get_profile(profile.name)
    )


# --------------------------------------------------------------------------------------------------
# Inputs


def load_network(
    model: Path, profile: ChipProfile | None, *, allow_saturation: bool = False
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
            raise ProfileError(
                f"{model} is compiled for profile {net.profile.name!r} "
                f"({_profile_diff(profile, net.profile)}); drop --profile/--profile-set to use "
                "it, or pass the float export to compile under another profile"
            )
        return net, dict(meta.get("compile_report") or {}), "integer"
    from qsnn.export.compile import compile_qonnx

    net, compile_report = compile_qonnx(
        model, profile or get_profile(DEFAULT_PROFILE), allow_saturation=allow_saturation
    )
    return net, dict(compile_report), "float"


def _profile_diff(a: ChipProfile, b: ChipProfile) -> str:
    diff = [f"{k}: {v} vs {b.to_dict()[k]}" for k, v in a.to_dict().items() if b.to_dict()[k] != v]
    return "; ".join(diff) or "same"


def _int_list(text: str | None) -> list[int]:
    if not text:
        return []
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise click.BadParameter(
            f"expected a comma-separated list of integers, got {text!r}", param_hint="--frac-bits-sweep"
        ) from None
    if any(v < 0 for v in values):
        raise click.BadParameter("frac_bits values must be >= 0", param_hint="--frac-bits-sweep")
    return values


# --------------------------------------------------------------------------------------------------
# The command


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("model", type=click.Path(path_type=Path, dir_okay=False))
@version_option("qsnn-sim")
@list_profiles_option
@profile_option(f"Chip profile to compile under [default: {DEFAULT_PROFILE}; an integer export keeps its own].")
@profile_set_option
@allow_saturation_option
@click.option(
    "--dataset",
    type=DatasetChoice(DATASETS),
    default=None,
    help="Dataset: a name, arrays:DIR or folder:DIR [default: the one the model was trained on, as its metadata records it].",
)
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with the dataset files (else $QSNN_DATA_DIR, then installed copies).",
)
@click.option("--subset", type=click.IntRange(min=1), default=None, help="Simulate a stratified subset of N samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=256, show_default=True)
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path, allow_dash=True),
    default=None,
    help="Write the report as JSON here (- for stdout; the summary then goes to stderr).",
)
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Write a PNG: spike raster of the first sample and firing rates per layer.",
)
@click.option(
    "--check", is_flag=True, help="Compare every spike train with the PyTorch evaluation of the integer semantics."
)
@click.option(
    "--frac-bits-sweep",
    "sweep",
    default=None,
    metavar="F1,F2,...",
    help="Also report the accuracy for each of these frac_bits (e.g. 0,2,4,6).",
)
@click.option(
    "--input",
    "input_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Simulate your own arrays instead of a dataset: X.npy (inputs) or X.npz (x, optional labels y): "
    "uint8 images (N, C, H, W), (N, H, W), one image, or event counts (N, T, C, H, W).",
)
@click.option(
    "--record",
    "record_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Write every layer's spikes z_<layer> and membranes u_<layer>, (T, N, ...) per step, to this .npz.",
)
@click.option(
    "--float/--no-float",
    "float_model",
    default=None,
    help="Run the trained (float) model beside the integer one and report their agreement [default: on "
    "for a float export]; --float on an integer export is an error (it has no float twin).",
)
@click.option(
    "--float-engine",
    type=click.Choice(FLOAT_ENGINES),
    default="layers",
    show_default=True,
    help="How the trained model is run: 'layers' (layer by layer over T, synaptic sums exact in "
    "integers: fast, the same on every CPU) or 'graph' (the one-step QONNX graph T times in "
    "onnxruntime, as written).",
)
@click.option(
    "--explain",
    is_flag=True,
    help="Where the spikes part from the trained model: agreement per layer and step, the first divergence "
    "of every differing prediction with its cause (threshold/leak rounding, shift floor, rails, reset, delay), "
    "totals, and the re-simulated effect of the suggested fixes (sim/explain.py).",
)
@click.option(
    "--explain-plot",
    "explain_plot",
    type=click.Path(path_type=Path),
    default=None,
    help="With --explain: write a PNG of the agreement per layer over time steps.",
)
@click.option(
    "--fit",
    "fit_search",
    is_flag=True,
    help="Search membrane_bits, frac_bits and leak_bits for the narrowest membrane free of saturation "
    "(proven, or observed on these samples) within --fit-tolerance of the trained model; prints the "
    "--profile-set line to use (sim/fit.py).",
)
@click.option(
    "--fit-tolerance",
    type=click.FloatRange(min=0, max=100),
    default=0.5,
    show_default=True,
    help="--fit: accuracy loss accepted against the trained model, in percentage points.",
)
@force_option
@progress_option
@debug_option
@friendly_errors
def main(
    model: Path,
    profile_name: str | None,
    profile_sets: tuple[str, ...],
    allow_saturation: bool,
    dataset: str | None,
    split: str,
    data_dir: Path | None,
    subset: int | None,
    batch_size: int,
    report_path: Path | None,
    plot_path: Path | None,
    input_path: Path | None,
    record_path: Path | None,
    check: bool,
    sweep: str | None,
    float_model: bool | None,
    float_engine: str,
    explain: bool,
    explain_plot: Path | None,
    fit_search: bool,
    fit_tolerance: float,
    force: bool,
    progress: bool,
) -> None:
    """Simulate MODEL.onnx bit-accurately under a chip profile and report accuracy, agreement and hardware figures."""
    started = time.perf_counter()
    sweep_values = _int_list(sweep)
    to_stdout = report_path is not None and str(report_path) == "-"
    if to_stdout:
        claim_stdout()
    check_outputs(
        {
            "--report": (None if to_stdout else report_path, SIM_REPORT),
            "--plot": (plot_path, SIM_PLOT),
            "--record": (record_path, SIM_RECORD),
            "--explain-plot": (explain_plot, SIM_PLOT),
        },
        inputs={"MODEL": model, "--data-dir": data_dir, "--input": input_path},
        force=force,
    )
    # --profile-set changes the profile used anyway: --profile, else the default a float export compiles under
    profile = chosen_profile(profile_name, profile_sets, DEFAULT_PROFILE) if (profile_name or profile_sets) else None
    net, compile_report, kind = load_network(model, profile, allow_saturation=allow_saturation)
    profile = net.profile
    if float_model and kind != "float":
        raise ExportError(
            f"{model}: --float needs the float export (qsnn-export --to qonnx without --profile); this is "
            f"the integer export for {profile.name!r}, which has no float model: drop --float"
        )
    needs_trained_model(model, kind, float_model, explain=explain or explain_plot is not None, fit=fit_search)
    events = None
    if input_path is not None:
        given_split = click.get_current_context().get_parameter_source("split") != click.core.ParameterSource.DEFAULT
        both = [
            opt
            for opt, v in (
                ("--dataset", dataset),
                ("--data-dir", data_dir),
                ("--subset", subset),
                ("--split", given_split),
            )
            if v
        ]
        if both:
            raise DataError(f"--input {input_path} and {both[0]} are two sources of samples: give one of them")
        data, dataset, split = read_input(input_path, net), None, None
        if sweep_values and data.y is None:
            raise DataError(
                f"--frac-bits-sweep compares accuracies: {input_path} needs labels (np.savez(path, x=x, y=y))"
            )
    else:
        events = event_frames_from_metadata(dict(net.metadata)) if net.encoding == "events" else None
        dataset, data = load_for_model(net, split, data_dir, dataset=dataset, subset=subset, where=str(model))
    x, y = data.x, data.y
    if record_path is not None:
        check_record_size(net, len(x))

    # the other evaluations come from export/ (sim/validate.py takes them as functions)
    float_counts = None
    if kind == "float" and float_model is not False:
        t0 = time.perf_counter()
        if trained_on_integers(net.metadata, profile):
            from qsnn.export.integer_torch import run_integer_torch

            float_engine = "integer-exact"
            float_counts = float_model_counts(
                lambda xs, bs: run_integer_torch(net, xs, batch_size=bs), x, net.encoding, batch_size, codes=True
            )
        elif float_engine == "layers":
            from qsnn.export.float_eval import FloatEvaluator

            float_counts = float_model_counts(
                FloatEvaluator(model), x, net.encoding, batch_size, progress=progress, codes=True
            )
        else:
            from qsnn.export.runtime import run_onnx_steps

            float_counts = float_model_counts(
                lambda xf, bs: run_onnx_steps(model, xf, batch_size=bs), x, net.encoding, batch_size, progress=progress
            )
        float_seconds = time.perf_counter() - t0
    reference = None
    if check:
        from qsnn.export.integer_torch import run_integer_torch

        reference = lambda n, xc, bs: run_integer_torch(n, xc, batch_size=bs)  # noqa: E731
    result, check_summary, seconds = simulate_checked(
        net, x, reference=reference, batch_size=batch_size, progress=progress, record=record_path is not None
    )

    acc_int = data.accuracy(result.counts)
    acc_float = data.accuracy(float_counts) if float_counts is not None else None
    report: dict[str, Any] = {
        "format": SIM_REPORT_FORMAT,
        "model": str(model),
        "model_kind": kind,
        "dataset": dataset,
        "split": split,
        "samples": data.num_recordings,
        "num_steps": net.num_steps,
        "encoding": net.encoding,
        "input_max": int(net.input_max),
        **({"event_frames": events.to_dict(), "windows": len(y)} if events is not None else {}),
        "profile": profile.to_dict(),
        "accuracy": {
            "float_model": acc_float,
            "integer_sim": acc_int,
            "difference": None if acc_float is None or acc_int is None else acc_int - acc_float,
        },
        "agreement": {},
        "data_source": data.source,
        "data_files": describe_files(data.files or [data.source]),
        "hardware": rep.hardware_figures(net, result),
        "compile_report": compile_report,
        "timing": {"engine_seconds": seconds, "engine_samples_per_s": len(x) / seconds if seconds else None},
    }
    if input_path is not None:
        report["input"] = {"path": str(input_path), "shape": list(data.given_shape), "labelled": y is not None}
        report["predictions"] = result.predictions.tolist()
        report["output_counts"] = result.counts.tolist()
        if y is not None:
            report["labels"] = y.tolist()
    if float_counts is not None:
        report["agreement"]["vs_float_model"] = rep.output_agreement(result.counts, float_counts)
        report["float_engine"] = {**FLOAT_ENGINES, "integer-exact": INTEGER_EXACT_ENGINE}[float_engine]
        report["timing"]["float_model_seconds"] = float_seconds
    if check_summary is not None:
        check_summary["reference"] = "qsnn.export.integer_torch.run_integer_torch"
        report["agreement"]["spike_trains_vs_integer_torch"] = check_summary
    from qsnn.export.compile import mismatch_warning

    mismatch = mismatch_warning(net.metadata, profile) if isinstance(net.metadata, dict) else ""
    if mismatch:
        report["note"] = mismatch
    if sweep_values:
        from qsnn.export.compile import compile_qonnx

        report["frac_bits_sweep"] = frac_bits_sweep(
            lambda p: compile_qonnx(model, p, allow_saturation=allow_saturation),
            profile,
            x,
            y,
            sweep_values,
            float_counts=float_counts,
            batch_size=batch_size,
            data=data,
        )

    if explain or explain_plot is not None:
        report["explain"] = run_explain(model, net, x, y, data, allow_saturation, batch_size, progress)
    if fit_search:
        report["fit"] = run_fit(model, net, x, data, float_counts, fit_tolerance, batch_size, progress)
    report["timing"]["total_seconds"] = time.perf_counter() - started
    report["timing"]["peak_rss_mb"] = _peak_rss_mb()
    out_layer = report["hardware"]["layers"][-1]
    silent = silent_output_warning(out_layer["spikes_per_inference"], len(x), f"the output layer ({out_layer['name']})")
    warnings = (data_warnings(data, dataset, split) if input_path is None else []) + ([silent] if silent else [])
    if warnings:
        report["warnings"] = warnings

    _print_summary(report, result, check_summary)
    if input_path is not None:
        say("")
        print_table(prediction_rows(net, result.counts, y), title="predictions (integer sim)")
    for part, lines in (("explain", explain_lines), ("fit", fit_lines)):
        if part in report:
            say("")
            say("\n".join(lines(report[part])))
    if explain_plot is not None:
        plot_agreement(explain_plot, report["explain"], title=f"{model.name} · {profile.name}")
        say(f"explain plot: {explain_plot}")
    if record_path is not None:
        record = record_arrays(net, x, result, y, meta={"model": str(model), "source": data.source})
        write_record(record_path, record)
        layers = ", ".join(f"{layer.name} {record['z_' + layer.name].shape}" for layer in net.layers)
        say(f"record: {record_path} (z_<layer> spikes and u_<layer> membranes, (T, N, ...): {layers})")
    if plot_path is not None:
        one = simulate(net, x[:1], record=True)
        rep.plot_activity(
            plot_path,
            one.spikes,
            result,
            [layer.name for layer in net.layers],
            sample=0,
            title=f"{model.name} · {profile.name} · {input_path.name if input_path else f'{dataset} {split}'}",
        )
        say(f"plot: {plot_path}")
    if to_stdout:
        write_stdout(dumps(report))
    elif report_path is not None:
        write_json(report_path, report)
        say(f"report: {report_path}")


def needs_trained_model(model: Path, kind: str, float_model: bool | None, *, explain: bool, fit: bool) -> None:
    """--explain and --fit compare with the trained model: refuse (one line) where there is none."""
    what = "--explain" if explain else "--fit" if fit else ""
    if not what:
        return
    if kind != "float":
        raise ExportError(
            f"{model}: {what} compares the integer network with the trained model, and this integer export has "
            "no float twin; pass the float export (qsnn-export CHECKPOINT --to qonnx) with --profile NAME"
        )
    if float_model is False:
        raise ExportError(f"{what} compares with the trained model: drop --no-float")


def run_explain(model, net, x, y, data, allow_saturation, batch_size, progress) -> dict[str, Any]:
    """:func:`qsnn.sim.explain.explain` of the float export ``model`` against ``net`` on ``x``."""
    from qsnn.export.compile import compile_qonnx, trained_neurons
    from qsnn.export.float_eval import FloatEvaluator

    evaluator = FloatEvaluator(model)
    return explain_model(
        net,
        x,
        y,
        lambda xc: evaluator.run(xc, record=True),
        [TrainedNeurons(**layer) for layer in trained_neurons(evaluator.graph)],
        batch_size=batch_size,
        progress=progress,
        compile=lambda p: compile_qonnx(model, p, allow_saturation=allow_saturation),
        accuracy=data.accuracy if y is not None else None,
    )


def run_fit(model, net, x, data, float_counts, tolerance, batch_size, progress) -> dict[str, Any]:
    """:func:`qsnn.sim.fit.fit` of the float export ``model`` from ``net``'s profile."""
    from qsnn.export.compile import compile_qonnx

    if data.y is None:
        raise DataError("--fit compares accuracies: the samples need labels (np.savez(path, x=x, y=y))")
    return fit_membrane(
        lambda p, allow_saturation=False: compile_qonnx(model, p, allow_saturation=allow_saturation),
        net.profile,
        x,
        data.accuracy,
        float_counts,
        tolerance=tolerance / 100,
        batch_size=batch_size,
        progress=progress,
    )


def _peak_rss_mb() -> float | None:
    """This process's peak resident memory so far, in MB (None where the OS does not say)."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def _encoding_text(report: dict[str, Any]) -> str:
    ev = report.get("event_frames")
    if not ev:
        return ""
    counts = "binary spikes" if ev["count_max"] == 1 else f"counts 0..{ev['count_max']}"
    text = f", {ev['bin_us'] / 1000:g} ms bins, {counts} per cell"
    if ev["test_cut"] == "windows" and report["split"] == "test":
        text += f", {report['windows']} windows (spike counts summed per gesture)"
    return text


def _print_summary(report: dict[str, Any], result: SimResult, check: dict[str, Any] | None) -> None:
    acc = report["accuracy"]
    fmt = lambda v: "n/a" if v is None else f"{100 * v:.2f} %"  # noqa: E731
    rows: list[tuple[str, Any]] = [
        ("model", f"{report['model']} ({report['model_kind']} export)"),
        ("profile", report["profile"]["name"]),
        (
            "data",
            (
                f"{report['dataset']} {report['split']}"
                if "input" not in report
                else f"--input {tuple(report['input']['shape'])}, {'labelled' if report['input']['labelled'] else 'no labels'}"
            )
            + f", {report['samples']} samples, T={report['num_steps']}"
            + _encoding_text(report),
        ),
        ("data read from", files_line(report["data_files"]) if report.get("data_files") else report["data_source"]),
        ("accuracy, trained model", fmt(acc["float_model"])),
        ("accuracy, integer sim", fmt(acc["integer_sim"])),
        ("difference (int - float)", "n/a" if acc["difference"] is None else f"{100 * acc['difference']:+.2f} pp"),
    ]
    agree = report["agreement"].get("vs_float_model")
    if agree:
        rows += [
            ("predictions equal", rep.format_percent(agree["predictions_equal_pct"])),
            ("output counts equal", rep.format_percent(agree["output_counts_equal_pct"])),
        ]
    if check:
        for key, pct in check["equal_pct"].items():
            rows.append((f"spike trains equal {key}", rep.format_percent(pct)))
        rows.append(
            ("bit-exact vs integer torch", "yes" if check["bit_exact"] else f"NO, first {check['first_mismatch']}")
        )
    timing = report["timing"]
    if timing.get("engine_samples_per_s"):
        rows.append(("engine speed", f"{timing['engine_samples_per_s']:.0f} samples/s"))
    if "total_seconds" in timing:
        parts = [f"engine {timing['engine_seconds']:.1f} s"]
        if "float_model_seconds" in timing:
            engine = next((name for name, what in FLOAT_ENGINES.items() if what == report["float_engine"]), None)
            how = f"--float-engine {engine}" if engine else "its integer network: fine-tuned integer-exactly"
            parts.append(f"trained model {timing['float_model_seconds']:.1f} s ({how})")
        parts.append(f"total {timing['total_seconds']:.1f} s")
        if timing.get("peak_rss_mb"):
            parts.append(f"peak RSS {timing['peak_rss_mb']:.0f} MB")
        rows.append(("time", ", ".join(parts)))
    print_table(rows, title="qsnn-sim")
    say("")
    hw_rows = []
    for layer in report["hardware"]["layers"]:
        hw_rows.append(
            (
                layer["name"],
                f"rate {100 * layer['firing_rate']:.2f} %  spikes/inf {layer['spikes_per_inference']:.1f}  "
                f"synops/inf {layer['synops_per_inference']:.0f}  weights {layer['weight_memory_bits']} bit  "
                f"u in [{layer['membrane_min']}, {layer['membrane_max']}] "
                f"({layer['membrane_bits_used']}/{layer['membrane_bits']} bit)  "
                f"sat {layer['saturation_low']}/{layer['saturation_high']}"
                + (f"  current wraps {layer['current_wraps']}" if layer.get("current_bits") else ""),
            )
        )
    total = report["hardware"]["total"]
    hw_rows.append(
        (
            "total",
            f"synops/inf {total['synops_per_inference']:.0f} (dense MACs "
            f"{total['dense_macs_per_inference']:.0f})  weights {total['weight_memory_bits']} bit  "
            f"saturation events {total['saturation_events']}",
        )
    )
    print_table(hw_rows, title="hardware (per inference = mean over samples; sat = low/high rail events)")
    hit = [layer for layer in report["hardware"]["layers"] if layer["saturation_events"]]
    if hit:
        profile = report["profile"]
        how = "clamped" if profile["overflow"] == "saturate" else "wrapped around (two's complement)"
        say(
            f"\nwarning: {total['saturation_events']} membrane updates overflowed the {profile['membrane_bits']}-bit "
            f"register and were {how}: "
            + ", ".join(
                f"{layer['name']} {layer['saturation_events']} ({layer['saturation_low']} low, "
                f"{layer['saturation_high']} high)"
                for layer in hit
            )
            + (
                "; the chip clamps the same way (its current shift is fixed, so no lower frac_bits is "
                "possible; training does not model the clamp, smaller first-layer weights or currents avoid it)"
                if profile.get("fixed_shift")
                else "; widen the membrane (--profile-set membrane_bits=N) or lower frac_bits"
            )
        )
    wrapped = [layer for layer in report["hardware"]["layers"] if layer.get("current_wraps")]
    if wrapped:
        say(
            f"\nwarning: {total['current_wraps']} synaptic currents wrapped around the "
            f"{wrapped[0]['current_bits']}-bit current register (as the chip does): "
            + ", ".join(f"{layer['name']} {layer['current_wraps']}" for layer in wrapped)
        )
    for warning in report.get("warnings", []):
        say(f"\nwarning: {warning}")
    if report.get("frac_bits_sweep"):
        say("")
        sweep_rows = []
        for row in report["frac_bits_sweep"]:
            if "error" in row:
                sweep_rows.append((f"frac_bits={row['frac_bits']}", f"error: {row['error']}"))
                continue
            text = f"accuracy {fmt(row['accuracy'])}"
            if "difference" in row:
                text += (
                    f"  diff {100 * row['difference']:+.2f} pp  predictions equal {row['predictions_equal_pct']:.2f} %"
                )
            text += f"  saturation events {row['saturation_events']}"
            if "not_the_chip" in row:
                text += "  (what-if: the chip's current shift is fixed)"
            sweep_rows.append((f"frac_bits={row['frac_bits']}", text))
        print_table(sweep_rows, title="accuracy vs frac_bits")
    if report.get("note"):
        say(f"\nwarning: {report['note']}")


if __name__ == "__main__":  # pragma: no cover
    main()
