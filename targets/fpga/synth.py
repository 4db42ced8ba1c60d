"""Synthesize the reference FPGA core with Yosys for an FPGA family: resource counts and the smallest
device of the family it fits (:func:`synthesize`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

from qsnn.errors import ExportError

from . import core
from .tools import ToolError, need_tool, tool_version

#: What each Yosys flow is called, its command, and how to count its cells.
FAMILIES: dict[str, dict[str, Any]] = {
    "ecp5": {
        "synth": "synth_ecp5 -top qsnn_core",
        "name": "Lattice ECP5",
        "lut": ("LUT4",),
        "ff": ("TRELLIS_FF",),
        "bram": {"DP16KD": 18432},
        "dsp": ("MULT18X18D",),
        "lutram": {"TRELLIS_DPR16X4": 64},
        "carry": ("CCU2C",),
        # LUT4 sites a cell occupies besides the LUT4 cells: a CCU2C fills a slice's two LUT4s,
        # a 16x4 distributed RAM two slices and the write slice
        "lut_sites": {"CCU2C": 2, "TRELLIS_DPR16X4": 6},
    },
    "ice40": {
        "synth": "synth_ice40 -dsp -top qsnn_core",
        "name": "Lattice iCE40 (UltraPlus)",
        "lut": ("SB_LUT4",),
        "ff": (
            "SB_DFF",
            "SB_DFFE",
            "SB_DFFSR",
            "SB_DFFR",
            "SB_DFFS",
            "SB_DFFESR",
            "SB_DFFER",
            "SB_DFFES",
            "SB_DFFESS",
            "SB_DFFSS",
            "SB_DFFN",
        ),
        "bram": {"SB_RAM40_4K": 4096},
        "dsp": ("SB_MAC16",),
        "lutram": {},
        "carry": ("SB_CARRY",),
        "lut_sites": {},
    },
    "xilinx": {
        "synth": "synth_xilinx -family xc7 -top qsnn_core",
        "name": "AMD/Xilinx 7 series",
        "lut": ("LUT1", "LUT2", "LUT3", "LUT4", "LUT5", "LUT6"),
        "ff": ("FDRE", "FDSE", "FDCE", "FDPE"),
        "bram": {"RAMB18E1": 18432, "RAMB36E1": 36864},
        "dsp": ("DSP48E1",),
        "lutram": {
            "RAM32M": 128,
            "RAM64M": 256,
            "RAM32X1D": 32,
            "RAM64X1D": 64,
            "RAM128X1D": 128,
            "RAM256X1S": 256,
            "RAM64X1S": 64,
            "RAM32X1S": 32,
        },
        "carry": ("CARRY4",),
        "lut_sites": {
            "RAM32M": 4,
            "RAM64M": 4,
            "RAM32X1D": 2,
            "RAM64X1D": 2,
            "RAM128X1D": 4,
            "RAM256X1S": 4,
            "RAM64X1S": 1,
            "RAM32X1S": 1,
            "SRL16E": 1,
            "SRLC32E": 1,
        },
    },
}

#: A few devices per family (vendor data sheets): logic cells, flip-flops, block RAM blocks, DSPs.
DEVICES: dict[str, list[dict[str, Any]]] = {
    "ecp5": [
        {"device": "LFE5U-12F", "luts": 12288, "ffs": 12288, "bram": 32, "dsp": 28},
        {"device": "LFE5U-25F", "luts": 24288, "ffs": 24288, "bram": 56, "dsp": 28},
        {"device": "LFE5U-45F", "luts": 43848, "ffs": 43848, "bram": 108, "dsp": 72},
        {"device": "LFE5U-85F", "luts": 83640, "ffs": 83640, "bram": 208, "dsp": 156},
    ],
    "ice40": [
        {"device": "iCE40UP5K", "luts": 5280, "ffs": 5280, "bram": 30, "dsp": 8},
    ],
    "xilinx": [
        {"device": "XC7A35T", "luts": 20800, "ffs": 41600, "bram": 50, "dsp": 90},
        {"device": "XC7A100T", "luts": 63400, "ffs": 126800, "bram": 135, "dsp": 240},
    ],
}


def synthesize(rtl: Path, family: str, *, timeout: float | None = None) -> dict[str, Any]:
    """Yosys synthesis of the core in ``rtl/`` for ``family``: resources, latches, the smallest device it fits."""
    if family not in FAMILIES:
        raise ExportError(f"unknown FPGA family {family!r}; choose one of {', '.join(FAMILIES)}")
    yosys = need_tool("yosys")
    fam = FAMILIES[family]
    with tempfile.TemporaryDirectory(prefix="qsnn-yosys-") as tmp:
        work = Path(tmp)
        for name in (core.CORE_FILE, core.HEADER_FILE, *core.TABLE_FILES):
            shutil.copy(rtl / name, work / name)
        script = (
            "\n".join(
                [
                    "read_verilog -I. qsnn_core.v",
                    "hierarchy -check -top qsnn_core",
                    "proc",
                    "tee -q -o latches.txt select -count t:$dlatch t:$adlatch t:$dlatchsr t:$sr",
                    fam["synth"],
                    "tee -q -o stat.json stat -json",
                ]
            )
            + "\n"
        )
        (work / "synth.ys").write_text(script)
        t0 = time.perf_counter()
        res = subprocess.run(
            [yosys, "-q", "-l", "yosys.log", "synth.ys"], cwd=work, capture_output=True, text=True, timeout=timeout
        )
        seconds = time.perf_counter() - t0
        if res.returncode != 0:
            tail = (work / "yosys.log").read_text().strip().splitlines()[-10:] if (work / "yosys.log").is_file() else []
            raise ToolError(f"Yosys ({fam['synth']}) failed:\n" + "\n".join(tail or [res.stderr.strip()]))
        stat = json.loads((work / "stat.json").read_text())
        latch_text = (work / "latches.txt").read_text()
        log = (work / "yosys.log").read_text()
    cells = _cells(stat)
    m = re.search(r"(\d+)\s+objects", latch_text)
    latches = int(m.group(1)) if m else 0
    bram_blocks = {k: cells.get(k, 0) for k in fam["bram"]}
    out = {
        "family": family,
        "family_name": fam["name"],
        "flow": f"yosys {fam['synth']}",
        "yosys": tool_version(yosys),
        "seconds": round(seconds, 1),
        "luts": sum(cells.get(k, 0) for k in fam["lut"]),
        "lut_sites": sum(cells.get(k, 0) for k in fam["lut"])
        + sum(cells.get(k, 0) * n for k, n in fam["lut_sites"].items()),
        "flip_flops": sum(v for k, v in cells.items() if k in fam["ff"] or k.startswith(("SB_DFF", "TRELLIS_FF"))),
        "carry_cells": sum(cells.get(k, 0) for k in fam["carry"]),
        "bram_blocks": bram_blocks,
        "bram_bits": sum(n * fam["bram"][k] for k, n in bram_blocks.items()),
        "lutram_bits": sum(cells.get(k, 0) * bits for k, bits in fam["lutram"].items()),
        "dsps": sum(cells.get(k, 0) for k in fam["dsp"]),
        "latches": latches,
        "cells": dict(sorted(cells.items())),
        "warnings": len(re.findall(r"^Warning:", log, flags=re.M)),
    }
    bram_equiv = (
        sum(bram_blocks.values())
        if family != "xilinx"
        else bram_blocks.get("RAMB36E1", 0) + (bram_blocks.get("RAMB18E1", 0) + 1) // 2
    )
    out["fits"] = None
    for dev in DEVICES[family]:
        if (
            out["lut_sites"] <= dev["luts"]
            and out["flip_flops"] <= dev["ffs"]
            and bram_equiv <= dev["bram"]
            and out["dsps"] <= dev["dsp"]
        ):
            out["fits"] = dev["device"]
            break
    out["devices_checked"] = [d["device"] for d in DEVICES[family]]
    return out


def _design(stat: Mapping[str, Any]) -> Mapping[str, Any]:
    if "design" in stat:
        return stat["design"]
    mods = stat.get("modules", {})
    return next(iter(mods.values())) if mods else {}


def _cells(stat: Mapping[str, Any]) -> dict[str, int]:
    design = _design(stat)
    return {str(k): int(v) for k, v in dict(design.get("num_cells_by_type", {})).items()}
