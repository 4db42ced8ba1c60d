"""``qsnn-export``: write a trained QSNN in a deployable form.

    qsnn-export CHECKPOINT --to qonnx [-o model.onnx]                      float QONNX, one time step
    qsnn-export CHECKPOINT --to qonnx --profile fpga [-o model.fpga.onnx]  integer QONNX under a profile
    qsnn-export CHECKPOINT_OR_ONNX --to fpga|loihi2|nir [-o OUTDIR]         weight tables + manifest.json
    qsnn-export CHECKPOINT_OR_ONNX --to TARGET [--profile P] --check        every limit it breaks; writes nothing

Adding a target is adding one writer function and one entry in :data:`TARGETS` (the ``--to``
choices come from it). A writer receives an :class:`ExportJob` and returns summary rows; it can get
the float QONNX of the source with :func:`float_qonnx` and the compiled network with
:func:`integer_network`, whether the source is a checkpoint or an ``.onnx`` export.
"""

from __future__ import annotations

import dataclasses
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from qsnn.cli import (
    allow_saturation_option,
    debug_option,
    force_option,
    friendly_errors,
    list_profiles_option,
    note_user_path,
    print_table,
    profile_option,
    profile_set_option,
    version_option,
)
from qsnn.errors import ExportError, ProfileError
from qsnn.options import PowerOfTwo
from qsnn.output_guard import QONNX, Kind, check_outputs, target_folder
from qsnn.profiles import PROFILES, ChipProfile, get_profile, parse_overrides
from qsnn.targets.nir.graph import FLAVORS as NIR_FLAVORS


@dataclass(frozen=True)
class ExportJob:
    """What the command line asked for."""

    source: Path  # a checkpoint (.pt) or a qsnn QONNX file (.onnx)
    output: Path | None  # -o, or None for the target's default
    profile_name: str | None
    profile_overrides: dict[str, Any]
    allow_saturation: bool
    force: bool
    batch_size: int | None = None  # --batch-size: static batch of a qonnx export
    target_options: dict[str, Any] = field(default_factory=dict)  # e.g. lanes for fpga

    @property
    def source_is_onnx(self) -> bool:
        return self.source.suffix.lower() == ".onnx"

    def profile(self, default: str | None = None) -> ChipProfile | None:
        """``--profile``, else ``default`` (the profile the target uses without one, None for none), with every
        ``--profile-set`` applied (as in qsnn-sim: a --profile-set changes the profile used anyway)."""
        base = self.profile_name or default
        if base is None:
            if self.profile_overrides:
                raise ProfileError(
                    "--profile-set: there is no profile to change (--to qonnx without --profile writes "
                    f"the float graph); add --profile NAME ({', '.join(sorted(PROFILES))})"
                )
            return None
        return get_profile(base, **self.profile_overrides)

    def default_output(self, target: str) -> Path:
        """Where ``--to target`` writes without ``-o``: next to the source."""
        stem = self.source.name.split(".")[0]
        if target != "qonnx":
            return self.source.with_name(f"{stem}.{target}")
        profile = self.profile()
        if profile is None:
            if self.source_is_onnx:
                raise ExportError(
                    f"{self.source} is already a QONNX file; add --profile NAME to compile it to integers"
                )
            return self.source.with_suffix(".onnx")
        return self.source.with_name(f"{stem}.{profile.name}.onnx")


@contextmanager
def float_qonnx(job: ExportJob) -> Iterator[Path]:
    """The float QONNX of the job's source: the source itself (.onnx) or a temporary export of the checkpoint."""
    if job.source_is_onnx:
        yield job.source
        return
    from .qonnx_float import export_float

    with tempfile.TemporaryDirectory(prefix="qsnn-export-") as tmp:
        note_user_path(tmp)  # the command's own scratch folder: a full disk there is the user's to know
        yield export_float(job.source, Path(tmp) / "float.onnx")


def integer_network(job: ExportJob, profile: ChipProfile):
    """(IntegerNetwork, compile report) of the job's source under ``profile``."""
    from .compile import compile_qonnx
    from .format import check_qsnn_model
    from .qonnx_int import read_integer_qonnx

    if job.source_is_onnx and check_qsnn_model(job.source)[1]["kind"] == "integer":
        net = read_integer_qonnx(job.source)
        if net.profile != profile:
            raise ExportError(
                f"{job.source} is already compiled for profile {net.profile.name!r}; "
                "start from the checkpoint or the float export"
            )
        return net, dict(net.metadata.get("compile_report", {}))
    with float_qonnx(job) as path:
        return compile_qonnx(path, profile, allow_saturation=job.allow_saturation)


def compile_rows(report: dict[str, Any]) -> list[tuple[str, Any]]:
    """Summary rows of a compile report."""
    rows: list[tuple[str, Any]] = [
        (
            "leak",
            f"{report['leak']['kind']}, leak constant {report['leak']['decay']} "
            f"(beta {report['leak']['beta']:.6g} -> {report['leak']['beta_integer']:.6g})",
        )
    ]
    for layer in report["layers"]:
        th = layer["threshold"]
        rows.append(
            (
                f"  {layer['name']}",
                f"shift {layer['current_shift']:+d}"
                + (f", weights x{layer['weight_multiplier']}" if layer["weight_multiplier"] != 1 else "")
                + f", threshold {th['min']}..{th['max']} (err {th['max_rel_error']:.2%})"
                + f", bound [{layer['bound']['min']}, {layer['bound']['max']}] in "
                f"[{layer['membrane_range'][0]}, {layer['membrane_range'][1]}]"
                + (" SATURATION POSSIBLE" if layer["saturation_possible"] else ""),
            )
        )
    for note in report.get("notes", []):
        rows.append(("warning" if note.startswith("the model was") else "note", note))
    return rows


def write_qonnx(job: ExportJob) -> list[tuple[str, Any]]:
    """--to qonnx: the float one-step graph, or with --profile the integer one."""
    from .format import check_qsnn_model
    from .qonnx_float import export_float
    from .qonnx_int import export_integer

    profile = job.profile()
    if profile is None:
        if job.source_is_onnx:
            raise ExportError(f"{job.source} is already a QONNX file; add --profile NAME to compile it to integers")
        out = job.output or job.default_output("qonnx")
        export_float(job.source, out, batch_size=job.batch_size)
        report = None
    else:
        out = job.output or job.default_output("qonnx")
        net, report = integer_network(job, profile)
        export_integer(net, out, batch_size=job.batch_size)
    _, meta = check_qsnn_model(out)
    rows: list[tuple[str, Any]] = [
        ("file", str(out)),
        ("size", f"{out.stat().st_size / 1024:.1f} KiB"),
        ("kind", meta["kind"] + (f" (profile {profile.name})" if profile else "")),
        ("dataset", meta["dataset"]),
        ("time steps T", meta["num_steps"]),
        ("classes", f"{len(meta['classes'])}: {', '.join(map(str, meta['classes'][:11]))}"),
        (
            "input",
            f"{meta['encoding']} {tuple(meta['input_shape'])}, scale {meta['input_scale']:.6g}, "
            f"values 0..{meta['input_max']} per cell and step",
        ),
        ("neuron", f"beta {meta['beta']:.6g}, theta {meta['threshold']:.6g}, {meta['reset']} reset"),
        ("weights", weights_summary(meta)),
        ("batch", meta.get("batch", "dynamic")),
    ]
    if report:
        rows += compile_rows(report)
    return rows


def weights_summary(meta: dict[str, Any]) -> str:
    """The weights as the file holds them: ``int4, 4 bits, scale float per tensor``, ``int8, 8 bits,
    ...``, ``mixed 2..8-bit (conv1 2, fc 8 bits), ...``: from the per-layer ``weight_bits`` where the
    metadata records them, never a precision the layers do not have."""
    from .format import precision_name

    layers = [rec for rec in meta.get("layers", []) if isinstance(rec, dict)]
    bits = [rec.get("weight_bits") for rec in layers]
    if layers and all(isinstance(b, int) and not isinstance(b, bool) for b in bits):
        quantized = max(bits) < 32 and meta.get("precision") != "fp32"
        text = precision_name(bits if quantized else None)
        text += (
            f", {bits[0]} bits"
            if len(set(bits)) == 1
            else " ("
            + ", ".join(f"{rec.get('name', i + 1)} {b}" for i, (rec, b) in enumerate(zip(layers, bits)))
            + " bits)"
        )
    else:
        text = f"{meta.get('precision')}, {meta.get('weight_bits')} bits"
    per = meta.get("weight_scale")
    return text + f", scale {meta.get('quant_scale')}" + (f" per {per}" if per in ("tensor", "channel") else "")


#: The profile each table target compiles under when --profile is not given.
TABLE_PROFILES = {"fpga": "fpga", "loihi2": "loihi2", "nir": "fpga"}


def write_tables(job: ExportJob, target: str) -> list[tuple[str, Any]]:
    """--to fpga|loihi2|nir: compile under the target's profile and write its tables into OUTDIR."""
    from qsnn.targets import summarize, write_target

    profile = job.profile(TABLE_PROFILES[target])
    outdir = job.output or job.default_output(target)
    net, report = integer_network(job, profile)
    options = dict(job.target_options)
    if target == "loihi2":
        options["example"] = example_input(net)
    write_target(
        target, net, outdir, force=job.force, source_info={"file": str(job.source), "profile": profile.name}, **options
    )
    return [("output folder", str(outdir)), *summarize(outdir), *compile_rows(report)]


def example_input(net) -> Any:
    """The first test sample of the data the network was trained on (for the loihi2 README's snippet):
    the dataset its metadata records, read with its encoding and T (:func:`qsnn.data.load_for_model`),
    or None if it cannot be read here (the folder then gets a zero input and says so)."""
    from qsnn.data import load_for_model
    from qsnn.errors import DataError

    try:
        return load_for_model(net, "test")[1].x[0]
    except (DataError, OSError, ValueError):
        return None


def limit_problems(job: ExportJob, target: str) -> tuple[ChipProfile, list[str], list[str]]:
    """(profile, every limit the job's model breaks for ``target`` under it, notes): the compiler's
    limits (all layers at once, :func:`.compile.refuse_limits`), then, when it compiles, the target's
    own (:func:`qsnn.targets.target_problems`) and what its folder would lack
    (:func:`qsnn.targets.target_notes`, e.g. the fpga core). Writes nothing."""
    from qsnn.errors import LimitsError

    profile = job.profile(TABLE_PROFILES.get(target))
    if profile is None:
        raise ExportError(
            "--check --to qonnx without --profile has nothing to check (the float graph holds any network); "
            f"add --profile NAME ({', '.join(sorted(PROFILES))})"
        )
    try:
        net, _ = integer_network(job, profile)
    except LimitsError as exc:
        return profile, exc.problems, []
    if target == "qonnx":
        return profile, [], []
    from qsnn.targets import target_notes, target_problems

    found = target_problems(target, net, **job.target_options)
    return profile, found, target_notes(target, net, **job.target_options)


def check_limits(job: ExportJob, target: str) -> None:
    """``--check``: print every limit (one per line, with its layer and fix) and exit non-zero if any."""
    from qsnn.cli import say

    profile, problems, notes = limit_problems(job, target)
    where = f"--to {target} under profile {profile.name!r}"
    for note in notes:
        say(f"{job.source}: note: {note}")
    if not problems:
        say(f"{job.source}: fits {where}: no limit broken (nothing written)")
        return
    say(f"{job.source}: {len(problems)} limit(s) broken {where}:")
    for i, problem in enumerate(problems, start=1):
        say(f"  {i}. {problem}")
    raise ProfileError(f"{job.source} breaks {len(problems)} limit(s) {where} (listed above); nothing written")


#: ``--to`` targets: name → writer(job) → summary rows. Add a target here (one function, one entry).
TARGETS: dict[str, Callable[[ExportJob], list[tuple[str, Any]]]] = {
    "qonnx": write_qonnx,
    **{name: (lambda job, name=name: write_tables(job, name)) for name in TABLE_PROFILES},
}


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source", type=click.Path(exists=True, dir_okay=False, path_type=Path), metavar="CHECKPOINT_OR_ONNX")
@click.option(
    "--to",
    "target",
    type=click.Choice(list(TARGETS)),
    required=True,
    help="What to write. qonnx: the network as a QONNX graph of one time step (membrane potentials "
    "are graph inputs u1..uL and outputs u1_out..uL_out, L the layer count; run it T times). Without --profile the "
    "graph has the trained float semantics (Brevitas Quant nodes for b-bit weights); with "
    "--profile it is the integer graph of that chip's arithmetic. fpga: weight memories (.mem for "
    "$readmemh, Xilinx .coe, Intel .mif), threshold/bias/leak tables and qsnn_model.h; loihi2: a "
    "lava-dl netx HDF5 file; nir: a NIR graph (nir.read). Table targets write a folder (-o OUTDIR) "
    "with manifest.json (shapes, widths, packing, SHA-256 of every file) and a README.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Output file for qonnx [default: next to CHECKPOINT, CHECKPOINT.onnx or CHECKPOINT.<profile>.onnx]; "
    "output folder for fpga/loihi2/nir [default: CHECKPOINT.<target>/].",
)
@version_option("qsnn-export")
@list_profiles_option
@profile_option("Compile to integers under this chip profile (a table target without it: the target's own).")
@profile_set_option
@allow_saturation_option
@force_option
@click.option(
    "--batch-size",
    "batch_size",
    type=click.IntRange(min=1),
    default=None,
    help="qonnx: fix the batch dimension of every graph input and output to N (FINN's convention is 1); "
    "default: dynamic.",
)
@click.option(
    "--nir-flavor",
    "nir_flavor",
    type=click.Choice(list(NIR_FLAVORS)),
    default=None,
    help="nir: which importers the graph is written for. standard (default): snnTorch, spikingjelly, "
    "Norse (from_nir(..., dt=1e-4)); spyx: Spyx's channels-last dense order; sinabs: Sinabs with "
    "nir <= 1.0.4 (tau in steps). See the NIR folder's README.",
)
@click.option(
    "--lanes",
    type=PowerOfTwo(1, 64),
    default=None,
    help="fpga: output channels the reference FPGA core (rtl/ in the folder) updates per cycle, a power "
    "of two from 1 to 64 [default: 16]. More lanes: fewer cycles, more logic and wider memories.",
)
@click.option(
    "--check",
    "check_only",
    is_flag=True,
    help="Only check: list every limit the model breaks for the profile and target (weight width, threshold "
    "and bias registers, membrane bound, fan-in, neurons per layer, input width, unsupported features), each "
    "with its layer and fix; exit 1 if any. Nothing is written.",
)
@debug_option
@friendly_errors
def main(
    source: Path,
    target: str,
    output: Path | None,
    profile_name: str | None,
    profile_sets: tuple[str, ...],
    allow_saturation: bool,
    force: bool,
    batch_size: int | None,
    nir_flavor: str | None,
    lanes: int | None,
    check_only: bool,
) -> None:
    """Export a trained QSNN checkpoint (the best.pt of a qsnn-train run) or a qsnn QONNX file.

    The output is written atomically: on any error an existing file is left as it was. A source
    ending in .onnx is taken as a qsnn QONNX export (compile it with --profile).
    """
    # options of another target: refused before any work
    if lanes is not None and target != "fpga":
        raise ExportError(f"--lanes is an option of --to fpga (the FPGA core), not of --to {target}")
    if nir_flavor is not None and target != "nir":
        raise ExportError(f"--nir-flavor applies to --to nir only, not --to {target}")
    if batch_size is not None and target != "qonnx":
        raise ExportError(f"--batch-size applies to --to qonnx only, not --to {target}")
    job = ExportJob(
        source=source,
        output=output,
        profile_name=profile_name,
        profile_overrides=parse_overrides(profile_sets),
        allow_saturation=allow_saturation,
        force=force,
        batch_size=batch_size,
        target_options={k: v for k, v in (("flavor", nir_flavor), ("lanes", lanes)) if v is not None},
    )
    if check_only:
        check_limits(job, target)
        return
    output = output or job.default_output(target)
    kind: Kind = QONNX if target == "qonnx" else target_folder(target)
    check_outputs({"-o": (output, kind)}, inputs={"CHECKPOINT_OR_ONNX": source}, force=force)
    job = dataclasses.replace(job, output=output)
    rows = TARGETS[target](job)
    print_table(rows, title=f"qsnn-export --to {target}")


if __name__ == "__main__":  # pragma: no cover
    main()
