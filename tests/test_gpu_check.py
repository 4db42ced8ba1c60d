"""``make gpu-check``'s script (tools/gpu_check.py) in its ``--dry-run`` on the CPU, so that it cannot rot
between the rare occasions a GPU is available: every step runs (the cuda tests on the CPU, the
throughput of three paths on two specs, a train → export → qsnn-sim run, its table and JSON)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from qsnn.data import DEBIAN_FMNIST_DIR

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tools" / "gpu_check.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.slow
def test_dry_run_on_the_cpu_runs_every_step_and_writes_its_table(tmp_path):
    dataset = "fmnist" if DEBIAN_FMNIST_DIR.is_dir() else "mnist5k"
    done = _run("--dry-run", "--device", "cpu", "--dataset", dataset, "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["dry_run"] and result["device"] == "cpu" and result["gpus"] == 0
    steps = result["steps"]
    assert set(steps) == {"tests", "throughput", "paper"} and all(s["ok"] for s in steps.values())
    tests = steps["tests"]["result"]
    assert tests["passed"] == tests["tests"] >= 6 and tests["skipped"] == 0  # ran on the CPU, none skipped
    bench = steps["throughput"]["result"]
    assert [r["arch"] for r in bench][-1] == "32C3s2p1-64C3s2p1-D10"
    assert {r["fast_path_layout"] for r in bench[:2]} == {"channels-last", "contiguous"}
    for r in bench:
        assert r["first_step_loss_equal"] and all(v > 0 for v in r["samples_per_s"].values())
    paper = steps["paper"]["result"]
    assert paper["dataset"] == dataset and paper["epochs"] == 1 and paper["T"] == 4
    assert paper["bit_exact_vs_integer_torch"] and paper["sim_samples"] == 128
    table = (tmp_path / "gpu_check.md").read_text()
    for row in ("cuda tests", "train samples/s: paper network", f"{dataset} int4 cosine", "qsnn-sim --profile fpga"):
        assert row in table and row in done.stdout
    assert "FAILED" not in table


def test_a_cpu_without_dry_run_or_a_missing_gpu_is_one_line(tmp_path):
    done = _run("--device", "cpu", "--out", str(tmp_path))
    assert done.returncode == 2 and "--dry-run" in done.stderr and "Traceback" not in done.stderr
    done = _run("--device", "cuda:7", "--dry-run", "--out", str(tmp_path))
    assert done.returncode != 0 and "--device cuda:7" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "gpu_check.json").exists()
