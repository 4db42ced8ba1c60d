"""Any QSNN through the whole pipeline: train → export → simulate → every target, one row per spec.

``python tools/spec_table.py [--out runs/spec-table] [--epochs 3] [--subset 2000] [--steps 10]
[--images 200] [--spec "NAME=SPEC [training options]" ...]`` trains each network briefly on mnist5k
(the embedded MNIST subset) with ``qsnn-train run --arch``, exports it to QONNX, runs ``qsnn-sim
--check`` under the ``fpga`` profile (integer engine vs the PyTorch integer mode, spike for spike, and
the trained float model's accuracy against the integer network's), then each target: ``qsnn-export
--to fpga`` + ``qsnn-rtl-sim`` (the Verilog core in Verilator), ``--to loihi2`` + the stock-Lava check
(when the Lava venv is built: ``make lava``), ``--to nir`` + the NIR consumers. A target that cannot
hold a feature of a network shows its one-line refusal. Prints a markdown table (and writes it with
the raw figures as JSON) and the wall time; every command runs as a user would run it.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

import click

#: The default specs: the paper's two networks, a dense-only MLP, a three-conv net with stride and
#: padding, 2-bit and 8-bit weights, per-channel scales with bias, a four-layer net.
SPECS = (
    "paper-mnist=16C5-AP2-64C5-AP2-D10",
    "paper-dvs-shape=16C5-AP2-32C5-AP2-D10",
    "mlp=D128-D10",
    "3conv-s2p1=8C3s2p1-16C3s2p1-32C3s2p1-D10",
    "2bit=16C5w2-AP2-32C5w2-AP2-D10 --threshold 1.0",
    "8bit=16C5-AP2-32C5-AP2-D10 --weight-bits 8 @weight_bits=8",
    "channel-bias=16C5-AP2-32C5-AP2-D10 --weight-scale channel --bias",
    "4layer=8C3p1-16C3-AP2-32C3-AP2-D10",
)

BIN = Path(sys.executable).parent


def _run(cmd: list[str], log: Path) -> tuple[int, str]:
    res = subprocess.run(cmd, capture_output=True, text=True)
    with log.open("a") as f:
        f.write(f"$ {shlex.join(cmd)}\n{res.stdout}\n{res.stderr}\n")
    tail = (res.stderr.strip().splitlines() or res.stdout.strip().splitlines() or [""])[-1]
    return res.returncode, tail


def _refusal(text: str) -> str:
    return text.removeprefix("error: ").strip()[:160]


def row(
    name: str,
    spec: str,
    extra: list[str],
    sets: list[str],
    out: Path,
    epochs: int,
    subset: int,
    steps: int,
    images: int,
) -> dict:
    run = out / name
    log = out / f"{name}.log"
    log.unlink(missing_ok=True)
    r: dict = {"name": name, "spec": spec, "options": " ".join(extra + [f"--profile-set {s}" for s in sets])}
    if not (run / "best.pt").exists():
        code, tail = _run(
            [
                str(BIN / "qsnn-train"),
                "run",
                "--arch",
                spec,
                "--epochs",
                str(epochs),
                "--subset",
                str(subset),
                "--val-subset",
                "500",
                "--test-subset",
                "500",
                "--steps",
                str(steps),
                "--out",
                str(run),
                "--no-progress",
                *extra,
            ],
            log,
        )
        if code:
            r["error"] = _refusal(tail)
            return r
    metrics = json.loads((run / "metrics.json").read_text())
    r["trained_acc"] = metrics["test_acc"]
    onnx = run / "model.onnx"
    code, tail = _run(
        [str(BIN / "qsnn-export"), str(run / "best.pt"), "--to", "qonnx", "-o", str(onnx), "--force"], log
    )
    if code:
        r["error"] = _refusal(tail)
        return r
    profile_sets = [a for s in sets for a in ("--profile-set", s)]
    code, tail = _run(
        [
            str(BIN / "qsnn-sim"),
            str(onnx),
            "--profile",
            "fpga",
            *profile_sets,
            "--split",
            "test",
            "--subset",
            str(images),
            "--check",
            "--no-progress",
            "--report",
            str(run / "sim.json"),
            "--force",
        ],
        log,
    )
    if code:
        r["sim"] = _refusal(tail)
    else:
        sim = json.loads((run / "sim.json").read_text())
        acc = sim["accuracy"]
        r["float_acc"] = 100 * acc["float_model"] if acc.get("float_model") is not None else None
        r["integer_acc"] = 100 * acc["integer_sim"]
        check = sim["agreement"].get("spike_trains_vs_integer_torch") or {}
        r["bit_exact_vs_torch_int"] = check.get("bit_exact")
        r["predictions_equal_pct"] = (sim["agreement"].get("vs_float_model") or {}).get("predictions_equal_pct")
    for target in ("fpga", "loihi2", "nir"):
        folder = run / target
        t_sets = profile_sets if target in ("fpga", "nir") else []  # nir compiles under the fpga profile
        code, tail = _run(
            [str(BIN / "qsnn-export"), str(run / "best.pt"), "--to", target, "-o", str(folder), "--force", *t_sets], log
        )
        if code:
            r[target] = "refused: " + _refusal(tail)
            continue
        if target == "fpga":
            code, tail = _run(
                [
                    str(BIN / "qsnn-rtl-sim"),
                    str(folder),
                    "-n",
                    str(min(images, 50)),
                    "--no-progress",
                    "--report",
                    str(run / "rtl.json"),
                    "--force",
                ],
                log,
            )
            r[target] = _rtl_figure(run / "rtl.json") if not code else "rtl: " + _refusal(tail)
        elif target == "loihi2":
            code, tail = _run(
                [
                    str(BIN / "python"),
                    "-c",
                    "from qsnn.targets.loihi2.lava_env import is_built; raise SystemExit(not is_built())",
                ],
                log,
            )
            if code:
                r[target] = "tables written; Lava venv not built (make lava)"
                continue
            code, tail = _run(
                [
                    str(BIN / "python"),
                    "-m",
                    "qsnn.targets.loihi2.lava_check",
                    "--checkpoint",
                    str(run / "best.pt"),
                    "--images",
                    str(min(images, 20)),
                    "--report",
                    str(run / "lava.json"),
                ],
                log,
            )
            r[target] = _lava_figure(run / "lava.json") if not code else "lava: " + _refusal(tail)
        else:
            code, tail = _run(
                [
                    str(BIN / "python"),
                    str(Path(__file__).parent / "nir_consumers" / "check.py"),
                    str(run / "best.pt"),
                    *t_sets,
                    "--images",
                    str(min(images, 50)),
                    "--out",
                    str(run / "nir-check"),
                ],
                log,
            )
            r[target] = _nir_figure(run / "nir-check") if not code else "nir: " + _refusal(tail)
    return r


def _rtl_figure(path: Path) -> str:
    agree = json.loads(path.read_text())["agreement"]
    trains = agree.get("spike_trains", {})
    worst = min((v["samples_equal_pct"] for v in trains.values()), default=None)
    word = "bit-exact" if agree.get("bit_exact") else f"samples equal {worst:.2f} % (worst layer)"
    return f"Verilator core vs qsnn-sim, {agree['samples']} images, {len(trains)} layers: {word}"


def _lava_figure(path: Path) -> str:
    rep = json.loads(path.read_text())
    keys = [k for k in ("bit_exact", "samples_equal_pct", "predictions_equal_pct", "images") if k in rep]
    return "stock Lava vs qsnn-sim: " + ", ".join(f"{k} {rep[k]}" for k in keys) if keys else json.dumps(rep)[:160]


def _nir_figure(folder: Path) -> str:
    consumers = json.loads((folder / "nir_check.json").read_text())["consumers"]
    parts = []
    for name, c in consumers.items():
        if not c.get("runs"):
            continue
        worst = (
            min(layer["entries"] for layer in c.get("spikes_vs_real_valued", []))
            if c.get("spikes_vs_real_valued")
            else None
        )
        parts.append(f"{name} {worst:.2f} %" if worst is not None else name)
    return (
        ("spike entries equal to the real-valued net (worst layer): " + ", ".join(parts))
        if parts
        else "no consumer ran"
    )


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=Path("runs/spec-table"), show_default=True)
@click.option("--epochs", default=3, show_default=True)
@click.option("--subset", default=2000, show_default=True)
@click.option("--steps", default=10, show_default=True)
@click.option(
    "--images", default=200, show_default=True, help="Test images for qsnn-sim (and at most 50 for the targets)."
)
@click.option(
    "--spec", "specs", multiple=True, help="NAME=SPEC [qsnn-train options] [@profile_field=value] (repeatable)."
)
def main(out: Path, epochs: int, subset: int, steps: int, images: int, specs: tuple[str, ...]) -> None:
    """Train, export, simulate and run every target for each spec; print the table."""
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    rows = []
    for text in specs or SPECS:
        name, rest = text.split("=", 1)
        words = shlex.split(rest)
        spec, extra = words[0], [w for w in words[1:] if not w.startswith("@")]
        sets = [w[1:] for w in words[1:] if w.startswith("@")]
        click.echo(f"{name}: {spec} {' '.join(extra)}", err=True)
        rows.append(row(name, spec, extra, sets, out, epochs, subset, steps, images))
        click.echo(json.dumps(rows[-1]), err=True)
    lines = [
        f"| network | spec | trained acc (test 500) | float / integer acc (fpga, test {images}) | integer vs PyTorch integer mode | fpga core | loihi2 | nir |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:

        def pct(v):
            return f"{v:.2f} %" if isinstance(v, (int, float)) else "-"

        lines.append(
            f"| {r['name']} | `{r['spec']}` {r['options']} | {pct(r.get('trained_acc'))} | "
            f"{pct(r.get('float_acc'))} / {pct(r.get('integer_acc'))} | {'bit-exact' if r.get('bit_exact_vs_torch_int') else r.get('sim', r.get('error', 'DIFFERS'))} | "
            f"{r.get('fpga', '-')} | {r.get('loihi2', '-')} | {r.get('nir', '-')} |"
        )
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    (out / "table.json").write_text(json.dumps(rows, indent=1))
    click.echo(table)
    click.echo(f"\n{len(rows)} networks in {time.perf_counter() - started:.0f} s; {out / 'table.md'}")


if __name__ == "__main__":
    main()
