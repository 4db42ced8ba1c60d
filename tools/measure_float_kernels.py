"""Measure how float evaluations of the fixture models differ across CPU kernel paths.

    .venv/bin/python tools/measure_float_kernels.py [--out DIR] [--retrain]

Trains the test suite's fixture models (``conftest.TINY``: mnist5k int4, T = 8; float weight scales
and power-of-two scales), exports them, and then, in one subprocess per kernel setting (oneDNN ISA
cap, ATen capability, MKL ISA cap, thread count), evaluates PyTorch's fast path and plain loop on
the 500-image test split and compares them with onnxruntime (and once with qonnx's executor) and
with the default setting's PyTorch run, using :func:`float_compare.layer_agreement`. With
``--retrain`` each setting also trains and exports its own fixture model first, as ``make test``
does on a machine of that kind. Prints one line per comparison and layer; the bounds in
:data:`float_compare.BOUNDS` and the figures in docs/export.md come from this output.

A tool, not a test; it imports the test suite's helpers (``tests/float_compare.py``, ``conftest``,
``fixtures``) from ``tests/``. A few minutes per setting on 2 shared cores.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

TESTS = Path(__file__).resolve().parents[1] / "tests"  # float_compare, conftest, fixtures
sys.path.insert(0, str(TESTS))

#: name → environment overrides; "default" is the machine as it is.
SETTINGS = {
    "default": {},
    "1 thread": {"QSNN_MEASURE_THREADS": "1"},
    "oneDNN AVX2 + ATen avx2 (CI pass 2)": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
    "oneDNN AVX": {"ONEDNN_MAX_CPU_ISA": "AVX"},
    "oneDNN SSE4.1": {"ONEDNN_MAX_CPU_ISA": "SSE41"},
    "ATen default": {"ATEN_CPU_CAPABILITY": "default"},
    "MKL SSE4.2": {"MKL_ENABLE_INSTRUCTIONS": "SSE4_2"},
    "all capped (SSE4.1, ATen default, MKL SSE4.2, 1 thread)": {
        "ONEDNN_MAX_CPU_ISA": "SSE41",
        "ATEN_CPU_CAPABILITY": "default",
        "MKL_ENABLE_INSTRUCTIONS": "SSE4_2",
        "QSNN_MEASURE_THREADS": "1",
    },
}


def train_and_export(folder: Path, **overrides) -> tuple[Path, Path]:
    from conftest import TINY

    from qsnn.config import TrainConfig
    from qsnn.export.qonnx_float import export_float
    from qsnn.train.loop import train

    if (folder / "best.pt").exists() and (folder / "model.onnx").exists():  # a rerun reuses it
        return folder / "best.pt", folder / "model.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    cfg = TrainConfig.from_preset("mnist5k", "int4", **{**TINY, **overrides})
    train(cfg, folder, progress=False, log=lambda _m: None)
    return folder / "best.pt", export_float(folder / "best.pt", folder / "model.onnx")


def torch_records(ckpt: Path, x, plain: bool) -> dict[str, np.ndarray]:
    import torch

    from qsnn.train.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(ckpt)
    with torch.no_grad():
        out = (model.forward_plain if plain else model)(x, record=True)
    return {k: v.numpy() for k, v in out.layers.items()}


def evaluate(args) -> None:
    """In a subprocess: one kernel setting; writes PyTorch records and agreement figures."""
    import conftest  # noqa: F401  (sets torch's thread count on import, as in the test suite)
    import torch
    from float_compare import layer_agreement, prediction_share

    from qsnn.data import load_split
    from qsnn.export.runtime import run_onnx_steps
    from qsnn.train.data import to_tensor

    torch.set_num_threads(int(os.environ.get("QSNN_MEASURE_THREADS", "2")))
    out = Path(args.eval)
    models = json.loads((out / "models.json").read_text())
    if args.retrain:
        ckpt, onnx_path = train_and_export(out / "retrained" / args.tag)
        models["float (trained here)"] = [str(ckpt), str(onnx_path)]
    split = load_split("mnist5k", "test")
    x = to_tensor(split.x, "static")
    result = {"capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(), "rows": []}
    for name, (ckpt, onnx_path) in models.items():
        ort = run_onnx_steps(onnx_path, x.numpy(), engine="ort", record=True)
        recs = {"fast": torch_records(Path(ckpt), x, plain=False), "plain": torch_records(Path(ckpt), x, plain=True)}
        pairs = [
            ("fast vs ort", recs["fast"], ort),
            ("plain vs ort", recs["plain"], ort),
            ("fast vs plain", recs["fast"], recs["plain"]),
        ]
        base = out / "default" / f"{name}.npz"
        if base.exists() and "trained here" not in name:
            ref = dict(np.load(base))
            pairs.append(("fast vs fast(default setting)", recs["fast"], ref))
        elif "trained here" not in name:
            base.parent.mkdir(parents=True, exist_ok=True)
            np.savez(base, **recs["fast"])
        if args.qonnx and "trained here" not in name:
            pairs.append(("qonnx vs ort", run_onnx_steps(onnx_path, x.numpy(), engine="qonnx", record=True), ort))
        for label, a, b in pairs:
            for s in layer_agreement(a, b):
                result["rows"].append(
                    {
                        "model": name,
                        "pair": label,
                        "layer": s.layer,
                        "flips": s.flips,
                        "entries": s.entries,
                        "compared_share": s.compared_share,
                        "du_agreeing": s.membrane_max_diff,
                        "du_all": s.membrane_max_diff_all,
                        "exact": bool(
                            np.array_equal(a[f"z{s.layer}"], b[f"z{s.layer}"])
                            and np.array_equal(a[f"u{s.layer}"], b[f"u{s.layer}"])
                        ),
                    }
                )
            result["rows"].append(
                {"model": name, "pair": label, "predictions_equal": prediction_share(a["z3"], b["z3"])}
            )
    (out / "result.json").write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--retrain", action="store_true", help="each setting also trains its own fixture model")
    parser.add_argument("--settings", default=None, help="comma list of setting names (default: all)")
    parser.add_argument("--eval", help=argparse.SUPPRESS)
    parser.add_argument("--qonnx", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tag", default="default", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.eval:
        return evaluate(args)
    out = args.out or Path(tempfile.mkdtemp(prefix="qsnn-float-kernels-"))
    models = {}
    for name, overrides in (("float", {}), ("po2", {"quant_scale": "po2"})):
        ckpt, onnx_path = train_and_export(out / "models" / name, **overrides)
        models[name] = [str(ckpt), str(onnx_path)]
    (out / "models.json").write_text(json.dumps(models))
    names = args.settings.split(",") if args.settings else list(SETTINGS)
    if "default" in names:  # first: the other settings compare against its records
        names.remove("default")
        names.insert(0, "default")
    for name in names:
        env = {**os.environ, **SETTINGS[name]}
        tag = "".join(c if c.isalnum() else "-" for c in name)
        cmd = (
            [sys.executable, __file__, "--eval", str(out), "--tag", tag]
            + (["--retrain"] if args.retrain else [])
            + (["--qonnx"] if name == "default" else [])
        )
        subprocess.run(cmd, env=env, check=True)
        result = json.loads((out / "result.json").read_text())
        print(
            f"\n== {name} (ATen {result['capability']}, {result['threads']} threads; "
            f"{' '.join(f'{k}={v}' for k, v in SETTINGS[name].items()) or 'no variables'})"
        )
        for row in result["rows"]:
            if "predictions_equal" in row:
                print(f"  {row['model']:<22} {row['pair']:<30} predictions equal {row['predictions_equal']:.2%}")
            else:
                print(
                    f"  {row['model']:<22} {row['pair']:<30} layer {row['layer']}: "
                    f"{'bit-exact' if row['exact'] else 'differs'}, flips {row['flips']} of {row['entries']}, "
                    f"max|du| {row['du_agreeing']:.3g} where histories agree ({row['compared_share']:.4%}), "
                    f"{row['du_all']:.3g} overall"
                )
    print(f"\nfolder: {out}")


if __name__ == "__main__":
    main()
