"""``python -m qsnn.summary RUN_DIR``: one table of what the pipeline produced in a run directory.

Reads the files the stages wrote — ``metrics.json`` (qsnn-train), ``sim_*.json`` (qsnn-sim reports)
and ``*/manifest.json`` (qsnn-export table targets) — so it depends on no stage's code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from qsnn.cli import print_table


def silent_output_warning(output_spikes: float, samples: int, layer: str = "the output layer") -> str | None:
    """The warning for a model whose output layer never fired (every prediction is then class 0, the
    argmax of all-zero counts), or None when it fired at least once. Used by qsnn-train and qsnn-sim."""
    if samples <= 0 or output_spikes > 0:
        return None
    return (
        f"{layer} never fired on {samples} samples: every prediction is the first class by default and the "
        "accuracy means nothing; train longer, lower the threshold (--threshold) or check the input scale"
    )


def _load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise click.ClickException(f"{path}: cannot read ({exc})") from None


def summary_rows(run_dir: Path) -> list[tuple[str, object]]:
    rows: list[tuple[str, object]] = []
    metrics_path = run_dir / "metrics.json"
    if metrics_path.exists():
        m = _load(metrics_path)
        rows += [
            (
                "train",
                f"{m['dataset']} {m['precision']} {m['schedule']}, T={m['num_steps']}, "
                f"{m['epochs_run']} epochs (best {m['best_epoch']}), {m['train_samples']} training samples",
            ),
            (
                "  PyTorch test accuracy",
                f"{m['test_acc']:.2f} % ({m['test_samples']} images; validation {m['best_val_acc']:.2f} %)",
            ),
        ]
    for onnx in sorted(run_dir.glob("*.onnx")):
        rows.append(("export", f"{onnx.name} ({onnx.stat().st_size / 1024:.1f} KiB)"))
    for report_path in sorted(run_dir.glob("sim_*.json")):
        r = _load(report_path)
        acc, agree = r["accuracy"], r["agreement"]
        rows.append(
            (
                f"simulate ({r['profile']['name']})",
                f"integer {100 * acc['integer_sim']:.2f} % vs trained {100 * acc['float_model']:.2f} % "
                f"({100 * acc['difference']:+.2f} pp), predictions equal {agree['vs_float_model']['predictions_equal_pct']:.2f} %",
            )
        )
        check = agree.get("spike_trains_vs_integer_torch")
        if check:
            per_layer = ", ".join(f"{k} {v:.2f} %" for k, v in check["equal_pct"].items())
            rows.append(
                (
                    "  spike trains vs PyTorch integer mode",
                    f"{per_layer} ({'bit-exact' if check['bit_exact'] else 'MISMATCH'})",
                )
            )
    for manifest_path in sorted(run_dir.glob("*/manifest.json")):
        man = _load(manifest_path)
        layers = ", ".join(
            f"{layer['name']} {layer['weight_count']}x{man['profile']['weight_bits']}b" for layer in man["layers"]
        )
        bits = man.get("weight_memory_bits") or {}
        total = f", {sum(bits.values())} weight-memory bits" if bits else ""
        rows.append(
            (f"tables ({man['target']})", f"{manifest_path.parent}/: {len(man['files'])} files, {layers}{total}")
        )
        resources_path = manifest_path.parent / "resources.json"
        if resources_path.exists():
            res = _load(resources_path)
            cyc = res.get("cycles")
            if cyc:
                rows.append(
                    (
                        "  FPGA core cycles",
                        f"{cyc['per_inference']['mean']:.0f} per inference ({cyc['lanes']} lanes) "
                        f"= {cyc['inferences_per_s']:.0f} inferences/s at {cyc['clock_mhz']:g} MHz",
                    )
                )
            for fam, r in res.get("synthesis", {}).items():
                rows.append(
                    (
                        f"  FPGA core, yosys {fam}",
                        f"{r['luts']} LUT + {r['carry_cells']} carry ({r.get('lut_sites')} LUT sites), "
                        f"{r['flip_flops']} FF, {r['bram_bits']} BRAM bits, {r['dsps']} DSP, "
                        f"{r['latches']} latches; fits {r['fits'] or 'none of those checked'}",
                    )
                )
    for report_path in sorted(run_dir.glob("rtl_*.json")):
        r = _load(report_path)
        agree = r.get("agreement", {})
        rows.append(
            (
                "RTL vs qsnn-sim",
                f"{r.get('samples')} {r.get('dataset')} {r.get('split')} inputs: "
                f"{'bit-exact, every layer and step' if agree.get('bit_exact') else 'MISMATCH'}",
            )
        )
    return rows


@click.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def main(run_dir: Path) -> None:
    """Summarise a run directory after train -> export -> simulate -> tables."""
    rows = summary_rows(run_dir)
    if not rows:
        click.echo(f"error: {run_dir} holds no qsnn results (metrics.json, sim_*.json, */manifest.json)", err=True)
        sys.exit(1)
    print_table(rows, title=f"qsnn pipeline summary: {run_dir}")


if __name__ == "__main__":
    main()
