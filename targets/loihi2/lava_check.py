"""``make lava-check N=…``: stock Lava versus ``qsnn-sim --profile loihi2`` on real test images.

Takes a trained model (a ``best.pt`` or its float QONNX export; default ``runs/demo/best.pt``, the
``make demo`` model), compiles it under the loihi2 profile (with each ``--profile-set FIELD=VALUE``
applied, as ``qsnn-export --to loihi2 --profile-set`` does), writes the loihi2 folder exactly as
``qsnn-export --to loihi2`` does, runs that folder in the Lava venv (:mod:`qsnn.targets.loihi2.lava_env`,
as the folder's README says) on a stratified subset of N samples of the dataset's test split, simulates
the same samples with qsnn's engine, and compares every layer's spikes at every step. Prints the
per-layer agreement, the predictions and the time; exits 1 unless everything is equal. ``--report``
saves the figures as JSON.

A ``--profile-set`` may change what Lava's netx network holds: a register width or limit (``weight_bits``
up to 8, ``threshold_bits``, ``bias_bits``, ``max_fan_in``, ``max_neurons``, ``input_bits``; a network
beyond Loihi's own limits is refused by the target, naming the fix). One that changes the arithmetic Lava
computes (:data:`~qsnn.targets.loihi2.netx.REQUIRED`: reset, leak, membrane width, delay, shifts) is
refused in one line before anything is compiled. The Lava venv is built (``make lava``) or started only
once the folder is written: a model the compile or the target refuses never waits for it.

The data are the model's own (:func:`qsnn.data.load_for_model`): its dataset, read with the event
encoding it was trained with (bins, count clip ``input_max``, test cut) and T; an event model's
samples are (T, C, H, W) count frames, fed to Lava as T graded 8-bit frames, and the folder's
``example_input.npy`` is the first of them. A test split cut into windows (``--test-cut windows``)
is taken by recording: N gestures with all their windows, each window run from a
clean state, and the accuracies are per gesture (output counts summed over its windows).

    python -m qsnn.targets.loihi2.lava_check --images 50 [--checkpoint runs/demo/best.pt] [--data-dir DIR]
        [--profile-set FIELD=VALUE ...] [--allow-saturation] [--report lava.json]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np


def compare(sim_spikes: dict[str, np.ndarray], lava: dict[str, np.ndarray], sim_pred: np.ndarray) -> dict[str, Any]:
    """Per layer: % of spike entries equal over all steps and images, and the first differing (step, image)."""
    layers = {}
    for key, ours in sim_spikes.items():
        theirs = lava[key]
        if ours.shape != theirs.shape:
            layers[key] = {"equal_pct": 0.0, "shape": [list(ours.shape), list(theirs.shape)]}
            continue
        same = ours == theirs
        per_step = same.reshape(same.shape[0], -1).all(axis=1)
        bad = np.argwhere(~same.reshape(same.shape[0], same.shape[1], -1).all(axis=2))
        layers[key] = {
            "equal_pct": 100.0 * float(same.mean()),
            "entries": int(same.size),
            "steps_all_equal": int(per_step.sum()),
            "steps": int(per_step.size),
            "spikes_qsnn": int(ours.sum()),
            "spikes_lava": int(theirs.sum()),
            "first_difference": [int(v) for v in bad[0]] if len(bad) else None,
        }
    pred_equal = float(np.mean(sim_pred == lava["predictions"])) * 100.0
    return {
        "layers": layers,
        "predictions_equal_pct": pred_equal,
        "bit_exact": all(v["equal_pct"] == 100.0 for v in layers.values()) and pred_equal == 100.0,
    }


def lava_profile(profile_sets: tuple[str, ...] = ()):
    """The loihi2 profile with each ``--profile-set FIELD=VALUE`` applied (:func:`qsnn.cli.chosen_profile`).

    Raises :class:`~qsnn.errors.ProfileError` in one line for a setting that cannot be parsed or built, and
    for one that changes the arithmetic stock Lava computes (:func:`.netx.arithmetic_differences`)."""
    from qsnn.cli import chosen_profile
    from qsnn.errors import ProfileError

    from .netx import arithmetic_differences

    profile = chosen_profile("loihi2", profile_sets, None)
    wrong = arithmetic_differences(profile)
    if wrong:
        raise ProfileError(
            f"--profile-set {' '.join(profile_sets)}: stock Lava computes the loihi2 profile's arithmetic only, "
            f"not {', '.join(wrong)}; leave those fields out (qsnn-sim --profile loihi2 --profile-set simulates them)"
        )
    return profile


def check(
    source: Path,
    images: int,
    *,
    data_dir: str | None = None,
    dataset: str | None = None,
    python: str | None = None,
    allow_saturation: bool = False,
    profile_sets: tuple[str, ...] = (),
    log=print,
) -> dict[str, Any]:
    """Lava against ``qsnn-sim --profile loihi2`` (with ``profile_sets`` applied: :func:`lava_profile`) on
    ``images`` test samples (recordings) of the model's dataset, or of ``dataset`` (a name or a user source:
    what a model of one's own ``nn.Sequential`` needs): a stratified subset, the whole split when it has
    no more (:func:`~qsnn.targets.inputs.check_inputs`)."""
    from qsnn.export.compile import compile_qonnx
    from qsnn.sim import simulate

    from ..inputs import check_inputs
    from ..registry import read_target, write_target
    from .lava_env import ensure, run_folder

    profile = lava_profile(tuple(profile_sets))
    with tempfile.TemporaryDirectory(prefix="qsnn-lava-check-") as tmp:
        onnx_path = source
        if source.suffix != ".onnx":
            from qsnn.export.qonnx_float import export_float

            onnx_path = export_float(source, Path(tmp) / "model.onnx")
        net, _ = compile_qonnx(onnx_path, profile, allow_saturation=allow_saturation)
        dataset, data = check_inputs(net, images, "test", data_dir, dataset=dataset, where=str(source))
        x = data.x
        folder = write_target("loihi2", net, Path(tmp) / "loihi2", example=x[0])
        net = read_target(folder)  # what the folder holds, as a user would load it
        python = python or str(ensure(log))  # after the compile: what the target refuses never waits for Lava
        start = time.perf_counter()
        lava = run_folder(folder, x, python=python)
        lava_wall = time.perf_counter() - start
        sim = simulate(net, x, record=True)
    result = compare(sim.spikes, lava, sim.predictions)
    result.update(
        {
            "source": str(source),
            "profile_sets": list(profile_sets),
            "profile": net.profile.to_dict(),
            "images": data.num_recordings,
            "samples": len(data),
            "windows": None if data.group is None else len(data),
            "encoding": net.encoding,
            "input_max": int(net.input_max),
            "dataset": dataset,
            "split": "test",
            "num_steps": net.num_steps,
            "lava_run_seconds": float(lava["seconds"]),
            "lava_wall_seconds": lava_wall,
            "accuracy_lava_pct": 100.0 * data.accuracy(lava["counts"]),
            "accuracy_qsnn_pct": 100.0 * data.accuracy(sim.counts),
            "saturation_events": {s.name: s.saturation_events for s in sim.layers},
            "current_wraps": {s.name: s.current_wraps for s in sim.layers},
        }
    )
    return result


def main(argv: list[str] | None = None) -> int:
    import click

    from qsnn.atomic import atomic_write_text
    from qsnn.cli import (
        allow_saturation_option,
        data_dir_option,
        dataset_option,
        force_option,
        friendly_errors,
        print_table,
        profile_set_option,
    )
    from qsnn.output_guard import LAVA_REPORT, LAVA_REPORT_FORMAT, check_outputs

    @click.command()
    @click.option(
        "--checkpoint",
        "source",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default="runs/demo/best.pt",
        show_default=True,
        help="A qsnn-train best.pt or its float QONNX export.",
    )
    @click.option(
        "--images",
        type=click.IntRange(1),
        default=50,
        show_default=True,
        help="Test images: a stratified subset of N of the test split (the whole split if it is smaller).",
    )
    @dataset_option("the checkpoint")
    @data_dir_option
    @profile_set_option
    @allow_saturation_option
    @click.option(
        "--report", type=click.Path(dir_okay=False, path_type=Path), default=None, help="Write the figures as JSON."
    )
    @force_option
    @friendly_errors
    def cli(
        source: Path,
        images: int,
        dataset: str | None,
        data_dir: str | None,
        profile_sets: tuple[str, ...],
        allow_saturation: bool,
        report: Path | None,
        force: bool,
    ) -> None:
        check_outputs({"--report": (report, LAVA_REPORT)}, inputs={"--checkpoint": source}, force=force)
        result = check(
            source,
            images,
            data_dir=data_dir,
            dataset=dataset,
            allow_saturation=allow_saturation,
            profile_sets=profile_sets,
        )
        rows = [
            (
                k,
                f"{v['equal_pct']:.2f} % of {v.get('entries', 0)} spike entries equal "
                f"({v.get('steps_all_equal', 0)}/{v.get('steps', 0)} steps identical; spikes qsnn "
                f"{v.get('spikes_qsnn', 0)}, lava {v.get('spikes_lava', 0)})",
            )
            for k, v in result["layers"].items()
        ]
        rows += [
            ("predictions equal", f"{result['predictions_equal_pct']:.2f} % of {result['samples']} samples"),
            (
                "accuracy lava / qsnn",
                f"{result['accuracy_lava_pct']:.2f} % / {result['accuracy_qsnn_pct']:.2f} % on {result['images']} "
                f"{result['dataset']} test {'recordings' if result['encoding'] == 'events' else 'images'}"
                + (f" ({result['windows']} windows of T = {result['num_steps']})" if result["windows"] else ""),
            ),
            ("saturation events (qsnn)", result["saturation_events"]),
            ("current wraps (qsnn)", result["current_wraps"]),
            ("lava time", f"{result['lava_run_seconds']:.1f} s run, {result['lava_wall_seconds']:.1f} s with start-up"),
            ("verdict", "BIT-EXACT" if result["bit_exact"] else "DIFFERENT"),
        ]
        sets = "".join(f" --profile-set {item}" for item in result["profile_sets"])
        print_table(rows, title=f"stock Lava vs qsnn-sim --profile loihi2{sets} ({result['source']})")
        if report:
            atomic_write_text(report, json.dumps({"format": LAVA_REPORT_FORMAT, **result}, indent=2))
        if not result["bit_exact"]:
            raise SystemExit(1)

    cli.main(args=argv, standalone_mode=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
