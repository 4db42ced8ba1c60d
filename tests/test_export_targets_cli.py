"""``qsnn-export --to fpga|loihi2|nir``: the command line writes each target's folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

EXE = f"{sys.prefix}/bin/qsnn-export"


def _run(*args):
    return subprocess.run([EXE, *map(str, args)], capture_output=True, text=True)


@pytest.mark.parametrize("target", ["fpga", "loihi2", "nir"])
def test_export_writes_target_folder_with_manifest(trained_run, tmp_path, target):
    ckpt = trained_run(quant_scale="po2") / "best.pt"
    out = tmp_path / target
    res = _run(ckpt, "--to", target, "-o", out)
    assert res.returncode == 0, res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["target"] == target
    assert manifest["profile"]["name"] == ("loihi2" if target == "loihi2" else "fpga")
    assert (out / "README.md").exists()
    assert "output folder" in res.stdout


def test_existing_folder_needs_force_and_is_kept(trained_run, tmp_path):
    ckpt = trained_run(quant_scale="po2") / "best.pt"
    out = tmp_path / "fpga"
    assert _run(ckpt, "--to", "fpga", "-o", out).returncode == 0
    before = (out / "manifest.json").read_bytes()
    res = _run(ckpt, "--to", "fpga", "-o", out)
    assert res.returncode == 1 and res.stderr.startswith("error: ") and "--force" in res.stderr
    assert "Traceback" not in res.stderr
    assert (out / "manifest.json").read_bytes() == before
    res = _run(ckpt, "--to", "fpga", "-o", out, "--force", "--profile-set", "frac_bits=4")
    assert res.returncode == 0, res.stderr
    assert json.loads((out / "manifest.json").read_text())["profile"]["frac_bits"] == 4


def test_table_target_from_the_onnx_export(trained_run, tmp_path):
    ckpt = trained_run(quant_scale="po2") / "best.pt"
    onnx = tmp_path / "model.onnx"
    assert _run(ckpt, "--to", "qonnx", "-o", onnx).returncode == 0
    res = _run(onnx, "--to", "nir", "-o", tmp_path / "nir")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "nir" / "manifest.json").exists()
    res = _run(onnx, "--to", "nir", "--nir-flavor", "spyx", "-o", tmp_path / "nir-spyx")
    assert res.returncode == 0, res.stderr
    assert json.loads((tmp_path / "nir-spyx" / "manifest.json").read_text())["nir"]["flavor"] == "spyx"
    # options that belong to other targets are refused with one line
    for args in (("--to", "fpga", "--nir-flavor", "spyx"), ("--to", "nir", "--batch-size", "1")):
        res = _run(onnx, *args, "-o", tmp_path / "bad")
        assert res.returncode == 1 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
        assert not (tmp_path / "bad").exists()
