"""The HDL tools the fpga target runs (Verilator, Icarus Verilog, Yosys): finding them, their versions.

:mod:`.hdl_sim` simulates the core with them and :mod:`.synth` synthesizes it; both find a tool with
:func:`need_tool`, which says how to install a missing one.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from qsnn.errors import ExportError

#: Debian/Ubuntu packages of the HDL tools (``make install`` installs them when run as root).
TOOL_PACKAGES = {"verilator": "verilator", "yosys": "yosys", "iverilog": "iverilog"}


class ToolError(ExportError):
    """An HDL tool is missing or failed."""


def need_tool(name: str) -> str:
    """The path of an HDL tool, or a :class:`ToolError` saying how to install it."""
    path = shutil.which(name)
    if path is None:
        raise ToolError(
            f"{name} is not installed; run `make install` as root (it installs the HDL tools with "
            f"apt-get), or `sudo apt-get install {TOOL_PACKAGES.get(name, name)}`"
        )
    return path


def tool_version(tool: str) -> str:
    """The first line of ``tool --version`` (``-V`` for iverilog), or the tool's name."""
    try:
        out = subprocess.run(
            [tool, "-V" if Path(tool).name == "iverilog" else "--version"], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return tool
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else tool
