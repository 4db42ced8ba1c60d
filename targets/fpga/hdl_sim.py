"""Run the reference FPGA core in an HDL simulator (Verilator, Icarus Verilog).

* :func:`check_folder` loads an fpga target folder and checks, before anything is simulated, that
  its ``rtl/`` part is complete and belongs to the network in ``manifest.json``: the core's
  parameter header and tables are regenerated from the network and must equal the files.
* :func:`run_verilator` builds the core with Verilator (C++ harness ``qsnn_tb.cpp``; one build per
  network shape, cached under ``~/.cache/qsnn/rtl`` or ``$QSNN_CACHE_DIR``), feeds it inputs and
  returns every layer's spike trains, the output spike counts, the saturation counters and the
  cycles of every inference, measured in simulation.
* :func:`run_icarus` does the same with Icarus Verilog and the plain Verilog testbench
  ``qsnn_tb.v`` (slow; a second opinion on small networks).

Synthesis (Yosys) is :mod:`.synth`; finding the tools, :mod:`.tools`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from qsnn.errors import ExportError, InputError
from qsnn.network import IntegerNetwork
from qsnn.sim.engine import check_input

from ..manifest import MANIFEST, read_manifest
from ..memfiles import parse_mem
from ..registry import read_target
from . import core, uart
from .tools import ToolError, need_tool, tool_version

VERILATOR_FLAGS = (
    "-O3",
    "--x-assign",
    "fast",
    "--x-initial",
    "fast",
    "--noassert",
    "-Wno-fatal",
    "-Wno-lint",
    "-Wno-style",
)
CXX_FLAGS = "-O2"


def cache_root() -> Path:
    env = os.environ.get("QSNN_CACHE_DIR")
    return Path(env) / "rtl" if env else Path.home() / ".cache" / "qsnn" / "rtl"


# --------------------------------------------------------------------------------------------------
# The folder


@dataclass(frozen=True)
class RTLFolder:
    """An fpga target folder whose ``rtl/`` part has been checked against its network."""

    folder: Path
    net: IntegerNetwork
    config: core.CoreConfig
    manifest: Mapping[str, Any]

    @property
    def rtl(self) -> Path:
        return self.folder / core.RTL_DIR


def _words_of(path: Path, what: str) -> list[int]:
    try:
        return parse_mem(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, ExportError) as exc:
        raise ExportError(f"{path}: not a readable $readmemh table ({exc}); export the folder again") from None


def check_folder(folder: str | os.PathLike) -> RTLFolder:
    """The checked :class:`RTLFolder`; :class:`ExportError` (one line, before any simulation) if

    the folder is not an fpga folder, its network is outside the core's family, a table is missing,
    truncated or damaged, or the core's header or tables do not match ``manifest.json``.
    """
    folder = Path(folder)
    manifest = read_manifest(folder, verify=False)
    if manifest.get("target") != "fpga":
        source = manifest.get("source") if isinstance(manifest.get("source"), dict) else {}
        model = source.get("file") or source.get("checkpoint") or "MODEL"
        raise ExportError(
            f"{folder}: a {manifest.get('target')!r} folder; the FPGA core runs fpga folders "
            f"(qsnn-export {model} --to fpga -o {folder.parent / (folder.name + '-fpga')})"
        )
    rtl = manifest.get("rtl")
    if not isinstance(rtl, Mapping):
        raise ExportError(
            f"{folder}/{MANIFEST}: no 'rtl' section; this folder was written without the FPGA core: "
            "export it again with this qsnn"
        )
    if not rtl.get("supported"):
        raise ExportError(f"{folder}: the network is outside the FPGA core's family: {rtl.get('reason')}")
    # every table the manifest lists must be there, whole, before the hashes are compared
    files = manifest.get("files", {})
    for name in sorted(files):
        if not name.endswith(".mem"):
            continue
        path = folder / name
        if not path.is_file():
            raise ExportError(f"{path} is missing; export the folder again (qsnn-export ... --to fpga --force)")
    expected_depth = {f"{core.RTL_DIR}/{k}": v["depth"] for k, v in dict(rtl.get("tables", {})).items()}
    for rec in manifest.get("layers", []):
        for key in ("threshold_memory", "bias_memory", "leak_memory"):
            if isinstance(rec.get(key), Mapping):
                expected_depth[rec[key]["file"]] = rec[key]["depth"]
        if isinstance(rec.get("weight_memory"), Mapping):
            expected_depth[rec["weight_memory"]["files"]["mem"]] = rec["weight_memory"]["depth"]
    for name, depth in sorted(expected_depth.items()):
        path = folder / name
        if not path.is_file():
            raise ExportError(f"{path} is missing; export the folder again (qsnn-export ... --to fpga --force)")
        words = _words_of(path, name)
        if len(words) != depth:
            raise ExportError(
                f"{path}: {len(words)} words, the core needs {depth} (the file is truncated or "
                f"from another network); export the folder again"
            )
    net = read_target(folder)  # SHA-256 of every file, then the tables
    lanes = rtl.get("lanes")
    wb = manifest.get("options", {}).get("weight_bits")
    try:
        cfg = core.core_config(net, lanes, wb)
    except ExportError as exc:
        raise ExportError(f"{folder}: {exc}") from None
    header_path = folder / core.RTL_DIR / core.HEADER_FILE
    have = core.parse_header(header_path.read_text())
    want = core.parse_header(core.params_header(cfg))
    for name, value in want.items():
        if have.get(name) != value:
            raise ExportError(
                f"{header_path}: {name} = {have.get(name)} but the network in {MANIFEST} needs "
                f"{value}; the core's parameters do not match the manifest: export the folder again"
            )
    for name, text in core.table_texts(net, cfg).items():
        path = folder / core.RTL_DIR / name
        if _words_of(path, name) != parse_mem(text):
            raise ExportError(
                f"{path} does not hold the network of {MANIFEST} (it differs from the per-layer "
                f"tables); export the folder again"
            )
    return RTLFolder(folder=folder, net=net, config=cfg, manifest=manifest)


# --------------------------------------------------------------------------------------------------
# Inputs and outputs of the harnesses


def input_events(net: IntegerNetwork, x: np.ndarray) -> list[list[np.ndarray]]:
    """Per sample, per frame: the nonzero inputs as an (n, 4) array of (c, y, x, value)."""
    x = np.asarray(x)
    try:
        check_input(net, x)  # the engine's rule: shape, encoding, T, values within input_max
    except InputError as exc:
        raise ExportError(f"the core's input: {exc}") from None
    frames = x[:, None] if net.encoding == "static" else x
    out = []
    for sample in frames:
        per = []
        for frame in sample:
            idx = np.nonzero(frame)
            per.append(
                np.stack([*idx, frame[idx]], axis=1).astype(np.int64)
                if len(idx[0])
                else np.zeros((0, 4), dtype=np.int64)
            )
        out.append(per)
    return out


_EVENT = np.dtype([("c", "<u2"), ("y", "<u2"), ("x", "<u2"), ("pad", "<u2"), ("value", "<u4")])
_RECORD = np.dtype([("step", "<u2"), ("layer", "<u2"), ("word", "<u4"), ("mask", "<u8")])


def write_harness_input(path: Path, events: list[list[np.ndarray]], layers: int, classes: int) -> None:
    frames = len(events[0]) if events else 1
    with open(path, "wb") as fh:
        fh.write(b"QSNNIN01")
        fh.write(np.array([len(events), frames, layers, classes], dtype="<u4").tobytes())
        for sample in events:
            for ev in sample:
                rec = np.zeros(len(ev), dtype=_EVENT)
                rec["c"], rec["y"], rec["x"], rec["value"] = ev[:, 0], ev[:, 1], ev[:, 2], ev[:, 3]
                fh.write(np.array([len(ev)], dtype="<u4").tobytes())
                fh.write(rec.tobytes())


@dataclass
class RTLResult:
    """What the core did on N inputs (measured in the HDL simulation).

    Attributes:
        spikes: ``{"z1": (T, N, ...), ...}`` uint8 spike trains, the layout of qsnn-sim's.
        counts: (N, classes) output spike counts (the core's status registers).
        predictions: (N,) the core's predicted class.
        saturation_low / saturation_high: (N, layers) saturation events per sample and layer.
        cycles: (N,) clock cycles of each inference (start to done).
        phase_cycles: (N, layers, 2) cycles each layer spent in its scatter and update phases.
        other_cycles: (N,) cycles in neither (clearing the state, sequencing, argmax).
        simulator: e.g. ``"verilator 5.006"``.
        wall_s: seconds the simulation took (build excluded).
        build: how the model was built (cache path, whether it was reused, build seconds).
    """

    spikes: dict[str, np.ndarray]
    counts: np.ndarray
    predictions: np.ndarray
    saturation_low: np.ndarray
    saturation_high: np.ndarray
    cycles: np.ndarray
    phase_cycles: np.ndarray
    other_cycles: np.ndarray
    simulator: str
    wall_s: float
    build: dict[str, Any] = field(default_factory=dict)


def _spike_arrays(net: IntegerNetwork, cfg: core.CoreConfig, n: int) -> dict[str, np.ndarray]:
    return {f"z{i + 1}": np.zeros((net.num_steps, n, *shape), dtype=np.uint8) for i, shape in enumerate(net.shapes())}


def _scatter_records(
    spikes: dict[str, np.ndarray],
    net: IntegerNetwork,
    cfg: core.CoreConfig,
    sample: int,
    step: np.ndarray,
    layer: np.ndarray,
    word: np.ndarray,
    mask: np.ndarray,
) -> None:
    P = cfg.lanes
    lanes = np.arange(P, dtype=np.uint64)
    for li, cl in enumerate(cfg.layers):
        sel = layer == li
        if not np.any(sel):
            continue
        bits = ((mask[sel, None] >> lanes[None, :]) & np.uint64(1)).astype(bool)
        r, j = np.nonzero(bits)
        w = word[sel].astype(np.int64)[r]
        t = step[sel].astype(np.int64)[r]
        g = w % cl.g
        pos = w // cl.g
        c = g * P + j
        if np.any(c >= cl.o) or np.any(t >= net.num_steps) or np.any(w >= cl.nw):
            raise ExportError(f"the core reported a spike outside layer {li + 1}'s neurons")
        z = spikes[f"z{li + 1}"]
        if cl.conv:
            z[t, sample, c, pos // cl.wo, pos % cl.wo] = 1
        else:
            z[t, sample, c] = 1


# --------------------------------------------------------------------------------------------------
# Verilator


def build_verilator(rtl: Path, *, progress=None) -> tuple[Path, dict[str, Any]]:
    """The harness binary for the core in ``rtl/`` (built once per header; cached)."""
    sources = {name: (rtl / name).read_bytes() for name in (core.CORE_FILE, core.HEADER_FILE, core.HARNESS_FILE)}
    return _verilator_build(sources, "qsnn_core", core.HARNESS_FILE, [core.CORE_FILE], progress=progress)


def build_uart_verilator(rtl: Path, clks_per_bit: int, *, progress=None) -> tuple[Path, dict[str, Any]]:
    """The harness binary of the board top ``qsnn_uart_top`` (:mod:`.uart`) around the core in ``rtl/``."""
    sources = {name: (rtl / name).read_bytes() for name in (core.CORE_FILE, core.HEADER_FILE)}
    for name in (uart.TOP_FILE, uart.UART_FILE, uart.HARNESS_FILE):
        sources[name] = core.package_file(name).encode()
    return _verilator_build(
        sources,
        "qsnn_uart_top",
        uart.HARNESS_FILE,
        [core.CORE_FILE, uart.UART_FILE, uart.TOP_FILE],
        params={"CLKS_PER_BIT": clks_per_bit},
        progress=progress,
    )


def _verilator_build(
    sources: Mapping[str, bytes],
    top: str,
    harness: str,
    verilog: list[str],
    *,
    params: Mapping[str, int] | None = None,
    progress=None,
) -> tuple[Path, dict[str, Any]]:
    """Build ``top`` with its C++ ``harness`` (cached by the hash of the sources, tool and flags)."""
    verilator = need_tool("verilator")
    version = tool_version(verilator)
    gflags = [f"-G{k}={v}" for k, v in sorted((params or {}).items())]
    h = hashlib.sha256()
    for name in sorted(sources):
        h.update(name.encode() + b"\0" + sources[name] + b"\0")
    h.update(version.encode() + " ".join([*VERILATOR_FLAGS, *gflags, top]).encode() + CXX_FLAGS.encode())
    key = h.hexdigest()[:20]
    root = cache_root()
    final = root / f"verilator-{key}"
    binary = final / "qsnn_tb"
    if binary.is_file() and os.access(binary, os.X_OK):
        return binary, {"cache": str(final), "reused": True, "seconds": 0.0, "verilator": version}
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=root))
    t0 = time.perf_counter()
    try:
        for name, data in sources.items():
            (work / name).write_bytes(data)
        cmd = [
            verilator,
            "--cc",
            "--exe",
            "--build",
            "-j",
            str(max(1, min(4, os.cpu_count() or 1))),
            "--top-module",
            top,
            *VERILATOR_FLAGS,
            *gflags,
            "-CFLAGS",
            CXX_FLAGS,
            "-I.",
            "--Mdir",
            "obj",
            "-o",
            "qsnn_tb",
            *verilog,
            harness,
        ]
        if progress:
            progress(f"building {top} with Verilator ({version}) ...")
        res = subprocess.run(cmd, cwd=work, capture_output=True, text=True)
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-12:]
            raise ToolError(f"Verilator could not build {top}:\n" + "\n".join(tail))
        dest = work / "qsnn_tb"
        shutil.move(str(work / "obj" / "qsnn_tb"), dest)
        shutil.rmtree(work / "obj", ignore_errors=True)
        try:
            os.replace(work, final)
        except OSError:  # another process finished the same build first
            shutil.rmtree(work, ignore_errors=True)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return binary, {
        "cache": str(final),
        "reused": False,
        "seconds": round(time.perf_counter() - t0, 1),
        "verilator": version,
    }


def _run_harness(
    binary: Path,
    rtl: Path,
    write_input: Callable[[Path], None],
    args: list[str],
    what: str,
    timeout: float | None = None,
) -> tuple[bytes, float]:
    """Run a Verilator harness ``binary RTL IN OUT *args`` in a temporary folder: ``write_input`` writes
    IN; returns OUT's bytes and the run's wall time; a failed run is a ToolError naming ``what``."""
    with tempfile.TemporaryDirectory(prefix="qsnn-rtl-") as tmp:
        inp, outp = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        write_input(inp)
        t0 = time.perf_counter()
        res = subprocess.run(
            [str(binary), str(rtl.resolve()), str(inp), str(outp), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise ToolError(f"{what} failed: {(res.stderr or res.stdout).strip()[-400:]}")
        return outp.read_bytes(), wall


def run_verilator(checked: RTLFolder, x: np.ndarray, *, progress=None, timeout: float | None = None) -> RTLResult:
    """Run the core in Verilator on inputs ``x`` (the layout of :func:`qsnn.sim.simulate`)."""
    net, cfg = checked.net, checked.config
    events = input_events(net, x)
    binary, build = build_verilator(checked.rtl, progress=progress)
    data, wall = _run_harness(
        binary,
        checked.rtl,
        lambda inp: write_harness_input(inp, events, len(cfg.layers), cfg.num_classes),
        [str(2 * cfg.cycle_bound())],
        f"the Verilator model of {checked.rtl}",
        timeout,
    )
    result = _parse_harness_output(data, net, cfg, len(events))
    result.simulator = build["verilator"]
    result.wall_s = wall
    result.build = build
    return result


def _parse_harness_output(data: bytes, net: IntegerNetwork, cfg: core.CoreConfig, n: int) -> RTLResult:
    if data[:8] != b"QSNNOUT1":
        raise ToolError("the harness wrote no result")
    samples, layers, classes = np.frombuffer(data, "<u4", 3, 8)
    if (samples, layers, classes) != (n, len(cfg.layers), cfg.num_classes):
        raise ToolError("the harness result does not match the request")
    off = 20
    L, C = int(layers), int(classes)
    spikes = _spike_arrays(net, cfg, n)
    counts = np.zeros((n, C), dtype=np.int64)
    preds = np.zeros(n, dtype=np.int64)
    sat_lo = np.zeros((n, L), dtype=np.int64)
    sat_hi = np.zeros((n, L), dtype=np.int64)
    cycles = np.zeros(n, dtype=np.int64)
    phases = np.zeros((n, L, 2), dtype=np.int64)
    other = np.zeros(n, dtype=np.int64)
    for s in range(n):
        cycles[s] = int(np.frombuffer(data, "<u8", 1, off)[0])
        preds[s] = int(np.frombuffer(data, "<u4", 1, off + 8)[0])
        regs = np.frombuffer(data, "<u4", C + 2 * L, off + 12).astype(np.int64)
        off += 12 + 4 * (C + 2 * L)
        counts[s], sat_lo[s], sat_hi[s] = regs[:C], regs[C : C + L], regs[C + L :]
        ph = np.frombuffer(data, "<u8", 2 * L + 1, off).astype(np.int64)
        off += 8 * (2 * L + 1)
        phases[s], other[s] = ph[: 2 * L].reshape(L, 2), ph[2 * L]
        nrec = int(np.frombuffer(data, "<u4", 1, off)[0])
        off += 4
        rec = np.frombuffer(data, _RECORD, nrec, off)
        off += nrec * _RECORD.itemsize
        _scatter_records(spikes, net, cfg, s, rec["step"], rec["layer"], rec["word"], rec["mask"])
    return RTLResult(
        spikes=spikes,
        counts=counts,
        predictions=preds,
        saturation_low=sat_lo,
        saturation_high=sat_hi,
        cycles=cycles,
        phase_cycles=phases,
        other_cycles=other,
        simulator="",
        wall_s=0.0,
    )


# --------------------------------------------------------------------------------------------------
# Icarus Verilog


def run_icarus(checked: RTLFolder, x: np.ndarray, *, timeout: float | None = None) -> RTLResult:
    """Run the core under Icarus Verilog with the plain testbench ``qsnn_tb.v`` (slow: small inputs)."""
    iverilog = need_tool("iverilog")
    vvp = need_tool("vvp")
    net, cfg = checked.net, checked.config
    events = input_events(net, x)
    beats: list[int] = []
    for sample in events:
        for frame in sample:
            for c, y, xx, v in frame.tolist():
                beats.append((c << 48) | (y << 34) | (xx << 20) | v)
            beats.append(1 << 62)
        beats.append(2 << 62)
    beats.append(3 << 62)
    with tempfile.TemporaryDirectory(prefix="qsnn-icarus-") as tmp:
        work = Path(tmp)
        for name in (core.CORE_FILE, core.HEADER_FILE, core.TESTBENCH_FILE, *core.TABLE_FILES):
            shutil.copy(checked.rtl / name, work / name)
        (work / "in.hex").write_text("\n".join(f"{b:016x}" for b in beats) + "\n")
        res = subprocess.run(
            [iverilog, "-g2005", "-I", ".", "-o", "tb.vvp", core.TESTBENCH_FILE, core.CORE_FILE],
            cwd=work,
            capture_output=True,
            text=True,
        )
        if res.returncode != 0:
            raise ToolError("Icarus could not compile the core:\n" + (res.stderr or res.stdout).strip()[-800:])
        t0 = time.perf_counter()
        res = subprocess.run(
            [vvp, "-n", "tb.vvp", "+input=in.hex", "+output=out.txt"],
            cwd=work,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        wall = time.perf_counter() - t0
        if res.returncode != 0 or not (work / "out.txt").is_file():
            raise ToolError("the Icarus simulation failed:\n" + (res.stderr or res.stdout).strip()[-800:])
        lines = (work / "out.txt").read_text().splitlines()
    n, L, C = len(events), len(cfg.layers), cfg.num_classes
    spikes = _spike_arrays(net, cfg, n)
    counts = np.zeros((n, C), dtype=np.int64)
    preds = np.zeros(n, dtype=np.int64)
    regs = np.zeros((n, C + 2 * L), dtype=np.int64)
    cycles = np.zeros(n, dtype=np.int64)
    sample, recs = 0, []
    for line in lines:
        parts = line.split()
        if parts[0] == "R":
            recs.append((int(parts[1]), int(parts[2]), int(parts[3]), int(parts[4], 16)))
        elif parts[0] == "S":
            sample = int(parts[1])
            cycles[sample], preds[sample] = int(parts[2]), int(parts[3])
            if recs:
                arr = np.array(recs, dtype=np.uint64)
                _scatter_records(spikes, net, cfg, sample, arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3])
            recs = []
        elif parts[0] == "D":
            regs[sample, int(parts[1])] = int(parts[2])
    counts = regs[:, :C]
    return RTLResult(
        spikes=spikes,
        counts=counts,
        predictions=preds,
        saturation_low=regs[:, C : C + L],
        saturation_high=regs[:, C + L :],
        cycles=cycles,
        phase_cycles=np.zeros((n, L, 2), dtype=np.int64),
        other_cycles=np.zeros(n, dtype=np.int64),
        simulator=tool_version(iverilog),
        wall_s=wall,
    )


# --------------------------------------------------------------------------------------------------
# The board top (rtl/qsnn_uart_top.v) over its UART


@dataclass
class UartResult:
    """What the top answered over its UART for N images."""

    predictions: np.ndarray
    counts: np.ndarray
    cycles: np.ndarray  # core cycles from 'R' to done (the scan of the stored image included)
    identify: dict[str, int]
    transaction_cycles: np.ndarray  # per image: clock cycles of 'L' ... 'K' and 'R' ... answer
    clks_per_bit: int
    wall_s: float
    build: dict[str, Any]


def run_uart_verilator(
    checked: RTLFolder, x: np.ndarray, *, clks_per_bit: int = uart.SIM_CLKS_PER_BIT, progress=None
) -> UartResult:
    """Run ``qsnn_uart_top`` around the checked folder's core (:class:`RTLFolder`) in Verilator:

    'I', then for every image 'L' + pixels and 'R', the host's bytes driven onto rx bit by bit and
    the answers decoded from tx bit by bit.
    """
    net, cfg = checked.net, checked.config
    problem = uart.supported(cfg)
    if problem:
        raise ExportError(f"{checked.folder}: {problem}")
    input_events(net, x)  # the engine's input rules (shape, values)
    binary, build = build_uart_verilator(checked.rtl, clks_per_bit, progress=progress)
    C = cfg.num_classes
    transactions: list[tuple[bytes, int]] = [(uart.IDENTIFY, uart.IDENT_LEN)]
    for img in np.asarray(x):
        transactions += [(uart.load_command(img), 1), (uart.RUN, uart.run_reply_len(C))]

    def write_input(inp: Path) -> None:
        with open(inp, "wb") as fh:
            fh.write(b"QSNNUAI1" + np.array([len(transactions)], "<u4").tobytes())
            for data, expect in transactions:
                fh.write(np.array([len(data)], "<u4").tobytes() + data + np.array([expect], "<u4").tobytes())

    data, wall = _run_harness(
        binary,
        checked.rtl,
        write_input,
        [str(clks_per_bit), str(2 * cfg.cycle_bound())],
        "the Verilator model of the board top",
    )
    if data[:8] != b"QSNNUAO1" or int(np.frombuffer(data, "<u4", 1, 8)[0]) != len(transactions):
        raise ToolError("the UART harness wrote no result")
    off, replies, tcycles = 12, [], []
    for _ in transactions:
        k = int(np.frombuffer(data, "<u4", 1, off)[0])
        replies.append(data[off + 4 : off + 4 + k])
        tcycles.append(int(np.frombuffer(data, "<u8", 1, off + 4 + k)[0]))
        off += 12 + k
    ident = uart.parse_identify(replies[0])
    n = len(x)
    preds, counts, cycles = np.zeros(n, np.int64), np.zeros((n, C), np.int64), np.zeros(n, np.int64)
    for i in range(n):
        if replies[1 + 2 * i] != uart.LOADED:
            raise ExportError(f"the board top answered {replies[1 + 2 * i]!r} to 'L' of image {i}; expected b'K'")
        r = uart.parse_run(replies[2 + 2 * i], C)
        preds[i], counts[i], cycles[i] = r.prediction, r.counts, r.cycles
    return UartResult(
        predictions=preds,
        counts=counts,
        cycles=cycles,
        identify=ident,
        transaction_cycles=np.array(tcycles[1:], np.int64).reshape(n, 2),
        clks_per_bit=clks_per_bit,
        wall_s=wall,
        build=build,
    )
