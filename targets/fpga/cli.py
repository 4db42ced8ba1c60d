"""``qsnn-rtl-sim``: run the reference FPGA core of an fpga folder in an HDL simulator and compare
it with ``qsnn-sim``, spike for spike.

    qsnn-rtl-sim FOLDER [--dataset mnist5k] [--split test] [-n 20] [--data-dir DIR]
                 [--simulator verilator|icarus] [--synth ecp5 --synth ice40 --synth xilinx]
                 [--clock-mhz 100] [--report rtl.json]

FOLDER is the output of ``qsnn-export MODEL --to fpga -o FOLDER``: its ``rtl/`` part holds the core,
the parameter header generated from the manifest, the tables in the core's order and the
testbenches. Before anything is simulated the folder is checked (every table present and whole,
SHA-256 as in the manifest, the header and tables regenerated from the network equal to the
files). Then N real images of the split run through the core (Verilator, built once per network
shape and cached) and through the NumPy engine; every layer's spike train at every step, the
output spike counts, the predictions and the saturation counters must be equal.

Reported: agreement (100.00 % means ``array_equal``), cycles per inference measured in the
simulation and the inferences per second they give at ``--clock-mhz`` (a stated clock: Yosys does
not time the design), and next to qsnn-sim's synaptic operations and weight memory the core's
memories and, with ``--synth``, the Yosys resource counts (written to ``FOLDER/resources.json``).
Exit status 1 when anything differs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

from qsnn.atomic import atomic_write_text
from qsnn.cli import (
    claim_stdout,
    dataset_option,
    debug_option,
    force_option,
    friendly_errors,
    print_table,
    progress_option,
    say,
    version_option,
    write_stdout,
)
from qsnn.data import SPLITS, describe_files
from qsnn.jsonio import dumps
from qsnn.options import FiniteFloat
from qsnn.output_guard import RTL_REPORT, RTL_REPORT_FORMAT, RTL_RESOURCES, RTL_RESOURCES_FORMAT, check_outputs
from qsnn.sim.report import percent

from ..inputs import check_inputs
from . import core, hdl_sim
from .synth import FAMILIES, synthesize
from .tools import need_tool

RESOURCES = "resources.json"
CHUNK = 50


def compare(rtl: hdl_sim.RTLResult, sim: Any) -> dict[str, Any]:
    """Agreement of the core with the engine's :class:`~qsnn.sim.engine.SimResult` (recorded spikes)."""
    layers = {}
    exact = True
    for key, ours in sim.spikes.items():
        theirs = rtl.spikes[key]
        T, n = ours.shape[:2]
        diff = (ours != theirs).reshape(T, n, -1)
        per_step = ~diff.any(axis=2)  # (T, N)
        same_samples = int(per_step.all(axis=0).sum())
        layers[key] = {
            "samples_equal_pct": percent(same_samples, n),
            "steps_equal_pct": percent(int(per_step.sum()), T * n),
            "entries_different": int(diff.sum()),
            "bit_exact": bool(np.array_equal(ours, theirs)),
        }
        exact &= layers[key]["bit_exact"]
    n = len(sim.counts)
    same_counts = int(np.all(sim.counts == rtl.counts, axis=1).sum())
    same_pred = int((sim.predictions == rtl.predictions).sum())
    sat = {}
    for i, stats in enumerate(sim.layers):
        ours = (int(stats.saturation_low), int(stats.saturation_high))
        theirs = (int(rtl.saturation_low[:, i].sum()), int(rtl.saturation_high[:, i].sum()))
        sat[stats.name] = {"qsnn_sim": list(ours), "rtl": list(theirs), "equal": ours == theirs}
    exact = exact and same_counts == n and same_pred == n and all(v["equal"] for v in sat.values())
    return {
        "samples": n,
        "bit_exact": bool(exact),
        "spike_trains": layers,
        "output_counts_equal_pct": percent(same_counts, n),
        "predictions_equal_pct": percent(same_pred, n),
        "saturation": sat,
    }


def cycle_figures(rtl: hdl_sim.RTLResult, cfg: core.CoreConfig, names: list[str], clock_mhz: float) -> dict[str, Any]:
    c = rtl.cycles.astype(np.float64)
    mean = float(c.mean())
    return {
        "lanes": cfg.lanes,
        "per_inference": {"min": int(c.min()), "median": float(np.median(c)), "mean": mean, "max": int(c.max())},
        "per_layer_mean": {
            name: {
                "scatter": float(rtl.phase_cycles[:, i, 0].mean()),
                "update": float(rtl.phase_cycles[:, i, 1].mean()),
            }
            for i, name in enumerate(names)
        },
        "other_mean": float(rtl.other_cycles.mean()),
        "clock_mhz": clock_mhz,
        "inferences_per_s": clock_mhz * 1e6 / mean if mean else None,
        "latency_ms": mean / (clock_mhz * 1e3) if clock_mhz else None,
        "note": "cycles measured in the HDL simulation (start to done, including clearing the state); the clock is "
        "stated, not timed (Yosys reports no timing)",
    }


def memory_figures(cfg: core.CoreConfig) -> dict[str, int]:
    """Bits of each memory of the core (its sizes, from the parameter header)."""
    P, w = cfg.lanes, cfg.widths()
    e_w = 2 * w["A_AW"] + w["GW"] + 4 * w["CRD_W"] + 2 * w["PW"] + P  # an event-buffer entry
    return {
        "weights": cfg.w_depth * P * cfg.weight_bits,
        "neurons": cfg.n_depth * P * (cfg.thr_w + cfg.bias_w),
        "layers": len(cfg.layers) * cfg.leak_w,
        "accumulators": cfg.a_depth * P * cfg.acc_w,
        "membranes": cfg.a_depth * P * cfg.membrane_bits,
        "event_buffer": cfg.ev_depth * e_w,
    }


def _load_resources(folder: Path) -> dict[str, Any]:
    path = folder / RESOURCES
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _inputs_line(report: dict[str, Any]) -> str:
    """``N samples``, or for a test cut into windows ``R recordings (N windows, scored per recording)``."""
    n, recordings = report["samples"], report.get("recordings", report["samples"])
    if recordings == n:
        return f"{n} samples"
    return f"{recordings} recordings ({n} windows, scored per recording by their summed output spike counts)"


def _print(report: dict[str, Any], names: list[str], hw: dict[str, Any] | None) -> None:
    cmp_ = report["agreement"]
    cyc = report["cycles"]
    rows: list[tuple[str, Any]] = [
        ("folder", report["folder"]),
        (
            "simulator",
            f"{report['simulator']} ({report['simulation_seconds']:.1f} s for {report['samples']} inputs"
            + (
                f"; build {report['build']['seconds']:.0f} s"
                if report["build"].get("seconds")
                else "; cached build"
                if report["build"].get("reused")
                else ""
            )
            + ")",
        ),
        ("data", f"{report['dataset']} {report['split']}, {_inputs_line(report)}, T={report['num_steps']}"),
        (
            "accuracy",
            f"core {100 * report['accuracy']['rtl']:.2f} %, qsnn-sim {100 * report['accuracy']['qsnn_sim']:.2f} %",
        ),
    ]
    for key, v in cmp_["spike_trains"].items():
        rows.append(
            (
                f"  {key} spike trains",
                f"{v['samples_equal_pct']:.2f} % of samples, {v['steps_equal_pct']:.2f} % of "
                f"steps equal ({v['entries_different']} entries differ)",
            )
        )
    rows.append(
        (
            "  output counts / predictions",
            f"{cmp_['output_counts_equal_pct']:.2f} % / {cmp_['predictions_equal_pct']:.2f} % equal",
        )
    )
    sat = ", ".join(
        f"{k} {v['rtl'][0]}/{v['rtl'][1]}{'' if v['equal'] else ' (sim ' + str(v['qsnn_sim']) + ')'}"
        for k, v in cmp_["saturation"].items()
    )
    rows.append(("  saturation low/high", sat))
    rows.append(("RTL vs qsnn-sim", "BIT-EXACT (every layer, every step)" if cmp_["bit_exact"] else "MISMATCH"))
    pi = cyc["per_inference"]
    rows.append(
        (
            "cycles / inference",
            f"median {pi['median']:.0f}, mean {pi['mean']:.0f} (min {pi['min']}, max {pi['max']}), "
            f"{cyc['lanes']} lanes",
        )
    )
    rows.append(
        (
            f"  at {cyc['clock_mhz']:g} MHz",
            f"{cyc['inferences_per_s']:.1f} inferences/s, {cyc['latency_ms']:.3f} ms each",
        )
    )
    print_table(rows, title="qsnn-rtl-sim: the FPGA core vs qsnn-sim")

    if hw is None:
        return
    say("")
    head = f"{'layer':<10} {'neurons':>8} {'synops/inf':>12} {'weight bits':>12} {'scatter cyc':>12} {'update cyc':>11}"
    say("hardware (per inference; synops and weight bits from qsnn-sim, cycles from the core)")
    say(head)
    say("-" * len(head))
    for layer, name in zip(hw["layers"], names):
        pl = cyc["per_layer_mean"][name]
        say(
            f"{name:<10} {layer['neurons']:>8} {layer['synops_per_inference']:>12.0f} {layer['weight_memory_bits']:>12} "
            f"{pl['scatter']:>12.0f} {pl['update']:>11.0f}"
        )
    tot = hw["total"]
    say(
        f"{'total':<10} {'':>8} {tot['synops_per_inference']:>12.0f} {tot['weight_memory_bits']:>12} "
        f"{'':>12} {'':>11}   + {cyc['other_mean']:.0f} other"
    )
    mem = report["core_memory_bits"]
    say("core memories (bits): " + ", ".join(f"{k} {v}" for k, v in mem.items()) + f"; total {sum(mem.values())}")
    synth = report.get("synthesis") or {}
    if synth:
        say("")
        head = (
            f"{'family (yosys)':<16} {'LUT':>7} {'carry':>6} {'LUT sites':>9} {'FF':>7} {'BRAM':>12} {'BRAM bits':>10} "
            f"{'DSP':>4} {'latches':>7}  fits (by cell counts)"
        )
        say(head)
        say("-" * len(head))
        for fam, r in synth.items():
            bram = "+".join(f"{n}×{k}" for k, n in r["bram_blocks"].items() if n) or "0"
            say(
                f"{fam:<16} {r['luts']:>7} {r['carry_cells']:>6} {r['lut_sites']:>9} {r['flip_flops']:>7} {bram:>12} "
                f"{r['bram_bits']:>10} {r['dsps']:>4} {r['latches']:>7}  "
                f"{r['fits'] or 'none of ' + ', '.join(r['devices_checked'])}"
            )


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@version_option("qsnn-rtl-sim")
@dataset_option("the network")
@click.option("--split", type=click.Choice(SPLITS), default="test", show_default=True)
@click.option(
    "-n",
    "--samples",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="Inputs to run: a stratified subset of the split (the whole split if it is smaller).",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Folder with the dataset files (else $QSNN_DATA_DIR, then installed copies).",
)
@click.option(
    "--simulator",
    type=click.Choice(["verilator", "icarus"]),
    default="verilator",
    show_default=True,
    help="verilator: C++ harness, fast; icarus: the plain Verilog testbench, slow (small runs).",
)
@click.option(
    "--synth",
    "families",
    multiple=True,
    type=click.Choice(sorted(FAMILIES)),
    help="Also synthesize the core with Yosys for this FPGA family (repeatable); the resources go to "
    "FOLDER/resources.json.",
)
@click.option("--no-sim", is_flag=True, help="Only check the folder (and synthesize with --synth); simulate nothing.")
@click.option(
    "--clock-mhz",
    type=FiniteFloat(min=0, min_open=True),
    default=100.0,
    show_default=True,
    help="The clock the inferences per second are stated at.",
)
@click.option(
    "--report",
    "report_path",
    type=click.Path(path_type=Path, allow_dash=True),
    default=None,
    help="Write the whole report as JSON here (- for stdout; the summary then goes to stderr).",
)
@force_option
@progress_option
@debug_option
@friendly_errors
def main(
    folder: Path,
    dataset: str | None,
    split: str,
    samples: int,
    data_dir: Path | None,
    simulator: str,
    families: tuple[str, ...],
    no_sim: bool,
    clock_mhz: float,
    report_path: Path | None,
    force: bool,
    progress: bool,
) -> None:
    """Run the FPGA core of FOLDER (qsnn-export --to fpga) on real inputs and compare it with qsnn-sim."""
    to_stdout = report_path is not None and str(report_path) == "-"
    if to_stdout:
        claim_stdout()
    resources_path = folder / RESOURCES
    folder_files = [p for p in folder.rglob("*") if p.is_file() and p != resources_path]
    check_outputs(
        {
            "--report": (None if to_stdout else report_path, RTL_REPORT),
            f"FOLDER/{RESOURCES}": (resources_path if (families or not no_sim) else None, RTL_RESOURCES),
        },
        inputs={"FOLDER": [folder, *folder_files], "--data-dir": data_dir},
        force=force,
    )
    checked = hdl_sim.check_folder(folder)
    net, cfg = checked.net, checked.config
    if not no_sim:
        need_tool("verilator" if simulator == "verilator" else "iverilog")
    if families:
        need_tool("yosys")
    names = [layer.name for layer in net.layers]
    report: dict[str, Any] = {
        "format": RTL_REPORT_FORMAT,
        "folder": str(folder),
        "core": {"lanes": cfg.lanes, "params": cfg.widths()},
        "core_memory_bits": memory_figures(cfg),
    }
    hw = None
    if not no_sim:
        from qsnn.sim.engine import simulate
        from qsnn.sim.report import hardware_figures

        dataset, data = check_inputs(net, samples, split, data_dir, dataset=dataset, where=f"the network of {folder}")
        x = data.x
        if simulator == "verilator":
            hdl_sim.build_verilator(checked.rtl, progress=say)
        parts = []
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(x), unit="input", desc=f"core ({simulator})", leave=False)
        t0 = time.perf_counter()
        try:
            for s0 in range(0, len(x), CHUNK):
                xs = x[s0 : s0 + CHUNK]
                parts.append(
                    hdl_sim.run_verilator(checked, xs) if simulator == "verilator" else hdl_sim.run_icarus(checked, xs)
                )
                if bar is not None:
                    bar.update(len(xs))
        finally:
            if bar is not None:
                bar.close()
        wall = time.perf_counter() - t0
        rtl = _join(parts)
        sim = simulate(net, x, record=True)
        hw = hardware_figures(net, sim)
        report.update(
            {
                "dataset": dataset,
                "split": split,
                "data_files": describe_files(data.files or [data.source]),
                "samples": len(x),
                "num_steps": net.num_steps,
                "simulator": rtl.simulator,
                "simulation_seconds": wall,
                "build": parts[0].build,
                "recordings": data.num_recordings,
                # scored as training and qsnn-sim score: per recording, a test cut into windows by the
                # output spike counts summed over its windows
                "accuracy": {"rtl": data.accuracy(rtl.counts), "qsnn_sim": data.accuracy(sim.counts)},
                "agreement": compare(rtl, sim),
                "cycles": cycle_figures(rtl, cfg, names, clock_mhz),
                "qsnn_sim_hardware": hw,
            }
        )
    synth = {}
    for fam in families:
        say(f"synthesizing for {FAMILIES[fam]['name']} with Yosys ...")
        synth[fam] = synthesize(checked.rtl, fam)
    if synth or "cycles" in report:
        resources = _load_resources(folder)
        resources.update(
            {"format": RTL_RESOURCES_FORMAT, "core": report["core"], "core_memory_bits": report["core_memory_bits"]}
        )
        resources.setdefault("synthesis", {}).update(synth)
        if "cycles" in report:
            resources["cycles"] = {
                **report["cycles"],
                "measured_on": f"{report['samples']} {report['dataset']} {report['split']} inputs",
            }
        atomic_write_text(folder / RESOURCES, dumps(resources))
        report["synthesis"] = resources.get("synthesis", {})
    if "agreement" in report:
        _print(report, names, hw)
    elif report.get("synthesis"):
        say(json.dumps(report["synthesis"], indent=1))
    if to_stdout:
        write_stdout(dumps(report))
    elif report_path is not None:
        atomic_write_text(report_path, dumps(report))
        say(f"report: {report_path}")
    if "agreement" in report and not report["agreement"]["bit_exact"]:
        raise SystemExit(1)


def _join(parts: list[hdl_sim.RTLResult]) -> hdl_sim.RTLResult:
    first = parts[0]
    cat = lambda attr: np.concatenate([getattr(p, attr) for p in parts])  # noqa: E731
    return hdl_sim.RTLResult(
        spikes={k: np.concatenate([p.spikes[k] for p in parts], axis=1) for k in first.spikes},
        counts=cat("counts"),
        predictions=cat("predictions"),
        saturation_low=cat("saturation_low"),
        saturation_high=cat("saturation_high"),
        cycles=cat("cycles"),
        phase_cycles=cat("phase_cycles"),
        other_cycles=cat("other_cycles"),
        simulator=first.simulator,
        wall_s=sum(p.wall_s for p in parts),
        build=first.build,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
