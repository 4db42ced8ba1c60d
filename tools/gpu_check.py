"""``make gpu-check``: qsnn on a GPU in a few minutes, one summary table.

Run whenever a GPU machine is available (``make gpu-check``; on a bare machine with the wheels and
data of ``make gpu-bundle`` carried along, see docs/training.md "On a GPU"). Four steps, each timed:

1. **tests**: ``pytest -m cuda`` (tests/test_cuda.py) on the device: fast vs plain path, the LIF scan
   vs the CPU, resume equality, the export of a GPU-trained model;
2. **throughput**: ``bench/training.py`` at batch 128, T = 100 — the paper's eager snnTorch + Brevitas
   loop, qsnn's fast path and the fast path with the step-by-step LIF graph — for the paper's MNIST
   network (also with the fast path's other spike layout and under ``QSNN_CUDA_MODE=fast``, the
   choices made for the CPU, measured here on the device) and one other spec;
3. **paper scale**: FashionMNIST (all 60k), int4, cosine, T = 100, a few epochs on the device, then
   ``qsnn-export`` and ``qsnn-sim --profile fpga --check`` on the 10k test images (the integer side
   runs on the CPU);
4. **data parallel**: with N > 1 GPUs, one epoch of the same run under ``torchrun --nproc-per-node=N``.

``--dry-run`` runs every step with tiny sizes (``--device cpu`` works), so that CI runs this script and
it cannot rot (tests/test_gpu_check.py). Results: ``OUT/gpu_check.json`` and ``OUT/gpu_check.md``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import click
import torch

from qsnn.cli import friendly_errors

ROOT = Path(__file__).resolve().parents[1]

#: The second network of the throughput step: strided, padded convolutions without pooling.
OTHER_SPEC = "32C3s2p1-64C3s2p1-D10"


class StepFailed(Exception):
    """A sub-command failed; its output has been printed."""


def _run(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` with its output shown and copied into ``log``; raise StepFailed on a non-zero exit."""
    click.echo(f"$ {' '.join(cmd)}")
    with open(log, "a") as sink:
        sink.write(f"$ {' '.join(cmd)}\n")
        sink.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        lines = []
        for line in proc.stdout:
            sys.stdout.write(line)
            sink.write(line)
            lines.append(line)
        proc.wait()
    if proc.returncode:
        raise StepFailed(f"{cmd[0] if cmd[0] != sys.executable else ' '.join(cmd[1:3])} exited {proc.returncode}")
    return subprocess.CompletedProcess(cmd, proc.returncode, "".join(lines), "")


MODULES = {"qsnn-train": "qsnn.train.cli", "qsnn-export": "qsnn.export.cli", "qsnn-sim": "qsnn.sim.cli"}


def _bin(name: str) -> list[str]:
    """A console script of this interpreter's environment (qsnn-train, ...) as a command."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    return [found] if found else [sys.executable, "-m", MODULES[name]]


def _run_args(dry_run: bool, data_dir) -> list[str]:
    """qsnn-train's size and data options of the paper-scale and torchrun steps (tiny on a dry run)."""
    size = ["--subset", "256", "--val-subset", "128", "--test-subset", "128", "--steps", "4"] if dry_run else []
    return (size or ["--steps", "100"]) + (["--data-dir", str(data_dir)] if data_dir else [])


def _junit_counts(path: Path) -> dict[str, int]:
    suite = ET.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def step_tests(device: str, out: Path, log: Path, dry_run: bool) -> dict:
    junit = out / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "tests/test_cuda.py", "-p", "no:cacheprovider"]
    env = {"QSNN_TEST_DEVICE": device}
    try:
        _run([*cmd, f"--junitxml={junit}"], log, env)
    except StepFailed:
        if not junit.exists():
            raise
    counts = _junit_counts(junit)
    if counts["failures"] or counts["errors"]:
        raise StepFailed(f"{counts['failures'] + counts['errors']} of {counts['tests']} cuda tests failed ({junit})")
    if counts["passed"] == 0:
        raise StepFailed(f"no cuda test ran on {device} (all {counts['skipped']} skipped: see {log})")
    return counts


def step_throughput(device: str, out: Path, log: Path, dry_run: bool, on_cuda: bool) -> list[dict]:
    T, batch, repeats = (4, 16, 2) if dry_run else (100, 128, 7)
    runs = [("paper network", None, [], {})]
    # the choices made on the CPU, measured on the device: the spike layout and the CUDA numerics
    layout = "--channels-last" if on_cuda else "--contiguous"  # the default is channels-last on the CPU only
    runs.append(("paper network, other spike layout", None, [layout], {}))
    if on_cuda:
        runs.append(("paper network, QSNN_CUDA_MODE=fast", None, [], {"QSNN_CUDA_MODE": "fast"}))
    runs.append((f"{OTHER_SPEC}", OTHER_SPEC, [], {}))
    rows = []
    for i, (what, arch, extra, env) in enumerate(runs):
        path = out / f"train_bench_{i}.json"
        cmd = [sys.executable, "bench/training.py", "--steps", str(T), "--batch-size", str(batch)]
        cmd += ["--repeats", str(repeats), "--device", device, "--out", str(path), *extra]
        cmd += ["--arch", arch] if arch else []
        _run(cmd, log, env)
        result = json.loads(path.read_text())
        rows.append({"what": what, **result})
    return rows


def step_paper_scale(device: str, out: Path, log: Path, dry_run: bool, dataset: str, epochs: int, data_dir) -> dict:
    run_dir = out / f"{dataset}-int4-cosine"
    shutil.rmtree(run_dir, ignore_errors=True)  # this script's own output folder, rebuilt each time
    train = [*_bin("qsnn-train"), "run", "--dataset", dataset, "--precision", "int4", "--schedule", "cosine"]
    train += ["--epochs", str(epochs), "--device", device, "--out", str(run_dir), "--no-progress"]
    train += _run_args(dry_run, data_dir)
    t0 = time.perf_counter()
    _run(train, log)
    train_s = time.perf_counter() - t0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "log.json").read_text())
    onnx_path = run_dir / "model.onnx"
    _run([*_bin("qsnn-export"), str(run_dir / "best.pt"), "--to", "qonnx", "-o", str(onnx_path)], log)
    report = run_dir / "sim_fpga.json"
    sim = [*_bin("qsnn-sim"), str(onnx_path), "--profile", "fpga", "--split", "test", "--check"]
    sim += ["--report", str(report), *(["--subset", "128"] if dry_run else [])]
    sim += ["--data-dir", str(data_dir)] if data_dir else []
    t0 = time.perf_counter()
    _run(sim, log, {"CUDA_VISIBLE_DEVICES": ""})  # the integer side runs on the CPU
    sim_s = time.perf_counter() - t0
    rep = json.loads(report.read_text())
    return {
        "dataset": dataset,
        "epochs": len(history),
        "T": metrics["num_steps"],
        "train_samples": metrics["train_samples"],
        "test_samples": metrics["test_samples"],
        "test_acc": metrics["test_acc"],
        "epoch_s": [row["time_s"] for row in history],
        "samples_per_s_median": metrics["samples_per_s_median"],
        "train_wall_s": train_s,
        "integer_acc": 100 * rep["accuracy"]["integer_sim"],
        "float_acc_sim": 100 * rep["accuracy"]["float_model"],
        "predictions_equal_pct": rep["agreement"]["vs_float_model"]["predictions_equal_pct"],
        "bit_exact_vs_integer_torch": rep["agreement"]["spike_trains_vs_integer_torch"]["bit_exact"],
        "sim_samples": rep["samples"],
        "sim_wall_s": sim_s,
    }


def step_ddp(n_gpus: int, out: Path, log: Path, dry_run: bool, dataset: str, data_dir) -> dict:
    run_dir = out / f"{dataset}-ddp{n_gpus}"
    shutil.rmtree(run_dir, ignore_errors=True)
    script = _bin("qsnn-train")
    train = ["-m", MODULES["qsnn-train"]] if script[0] == sys.executable else script  # torchrun's -m or a script
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={n_gpus}", *train]
    cmd += ["run", "--dataset", dataset, "--precision", "int4", "--schedule", "cosine", "--epochs", "1"]
    cmd += ["--out", str(run_dir), "--no-progress", *_run_args(dry_run, data_dir)]
    _run(cmd, log)
    history = json.loads((run_dir / "log.json").read_text())
    return {"gpus": n_gpus, "epoch_s": history[0]["time_s"], "samples_per_s": history[0]["samples_per_s"]}


def _markdown(rows: list[tuple[str, str]], title: str) -> str:
    lines = [f"## {title}", "", "| | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


@click.command()
@friendly_errors
@click.option("--device", default=None, help="torch device (default: cuda when present, else cpu).")
@click.option("--dry-run", is_flag=True, help="Tiny sizes everywhere (T = 4, a few hundred images): checks the script.")
@click.option("--dataset", default="fmnist", show_default=True, help="Dataset of the paper-scale run.")
@click.option("--epochs", default=3, show_default=True, help="Epochs of the paper-scale run.")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Folder holding the dataset's files.")
@click.option(
    "--skip", multiple=True, type=click.Choice(["tests", "throughput", "paper", "ddp"]), help="Leave a step out."
)
@click.option("--out", default="runs/gpu-check", show_default=True, help="Folder for the logs, JSON and table.")
def main(device, dry_run, dataset, epochs, data_dir, skip, out) -> None:
    """qsnn on a GPU: CUDA tests, training throughput, a paper-scale run, data-parallel (one table)."""
    from qsnn.cli import print_table
    from qsnn.jsonio import write_json
    from qsnn.train.distributed import resolve_device

    start = time.perf_counter()
    dev = resolve_device(device)  # a one-line error for a device this machine lacks
    on_cuda = dev.type == "cuda"
    if not on_cuda and not dry_run:
        raise click.UsageError(f"--device {dev}: no GPU to check; on a CPU run the script with --dry-run")
    if epochs < 1:
        raise click.BadParameter("must be at least 1", param_hint="--epochs")
    if dry_run:
        epochs = 1
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "gpu_check.log"
    log.write_text("")
    n_gpus = torch.cuda.device_count() if on_cuda else 0
    name = torch.cuda.get_device_name(dev) if on_cuda else platform.processor() or platform.machine()
    result = {
        "device": str(dev),
        "device_name": name,
        "gpus": n_gpus,
        "dry_run": dry_run,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "steps": {},
    }
    steps = [
        ("tests", lambda: step_tests(str(dev), out, log, dry_run)),
        ("throughput", lambda: step_throughput(str(dev), out, log, dry_run, on_cuda)),
        ("paper", lambda: step_paper_scale(str(dev), out, log, dry_run, dataset, epochs, data_dir)),
    ]
    if n_gpus > 1:
        steps.append(("ddp", lambda: step_ddp(n_gpus, out, log, dry_run, dataset, data_dir)))
    failed = []
    for key, fn in steps:
        if key in skip:
            continue
        click.echo(f"\n=== gpu-check: {key} ===")
        t0 = time.perf_counter()
        try:
            value = fn()
            result["steps"][key] = {"ok": True, "wall_s": time.perf_counter() - t0, "result": value}
        except StepFailed as exc:
            failed.append(key)
            result["steps"][key] = {"ok": False, "wall_s": time.perf_counter() - t0, "error": str(exc)}
    result["wall_s"] = time.perf_counter() - start
    rows = [("device", f"{name} ({dev}; {n_gpus} GPU)" if on_cuda else f"{name} ({dev}, dry run)")]
    rows.append(("torch / CUDA / Python", f"{torch.__version__} / {torch.version.cuda} / {platform.python_version()}"))
    for key, step in result["steps"].items():
        if not step["ok"]:
            rows.append((key, f"FAILED: {step['error']}"))
            continue
        value = step["result"]
        if key == "tests":
            rows.append(
                ("cuda tests", f"{value['passed']} passed, {value['skipped']} skipped ({step['wall_s']:.0f} s)")
            )
        elif key == "throughput":
            for r in value:
                sps = r["samples_per_s"]
                rows.append(
                    (
                        f"train samples/s: {r['what']}",
                        f"eager {sps['plain']:.0f} · fast {sps['fast']:.0f} · step-by-step LIF "
                        f"{sps['fast, step-by-step LIF']:.0f}; fast/eager {r['speedup_median']:.2f}x "
                        f"[{r['speedup_min']:.2f}, {r['speedup_max']:.2f}] (T {r['T']}, batch {r['batch_size']}, "
                        f"{r['fast_path_layout']})",
                    )
                )
        elif key == "paper":
            rows.append(
                (
                    f"{value['dataset']} int4 cosine, T {value['T']}",
                    f"{value['epochs']} epochs on {value['train_samples']} images, "
                    f"epoch {min(value['epoch_s']):.1f}–{max(value['epoch_s']):.1f} s, "
                    f"test {value['test_acc']:.2f} %",
                )
            )
            rows.append(
                (
                    "qsnn-sim --profile fpga (CPU)",
                    f"{value['sim_samples']} test images: integer {value['integer_acc']:.2f} % vs float "
                    f"{value['float_acc_sim']:.2f} %, predictions equal {value['predictions_equal_pct']:.2f} %, "
                    f"bit-exact vs integer torch: {'yes' if value['bit_exact_vs_integer_torch'] else 'NO'} "
                    f"({value['sim_wall_s']:.0f} s)",
                )
            )
        elif key == "ddp":
            rows.append(
                (
                    f"torchrun, {value['gpus']} GPUs",
                    f"epoch {value['epoch_s']:.1f} s, {value['samples_per_s']:.0f} samples/s",
                )
            )
    rows.append(("wall time", f"{result['wall_s']:.0f} s"))
    title = "gpu-check" + (" (dry run)" if dry_run else "")
    write_json(out / "gpu_check.json", result)
    (out / "gpu_check.md").write_text(_markdown(rows, title))
    print_table(rows, title=title)
    click.echo(f"written: {out / 'gpu_check.json'}, {out / 'gpu_check.md'}, {log}")
    if failed:
        raise SystemExit(f"gpu-check: {', '.join(failed)} failed (see {log})")


if __name__ == "__main__":
    main()
