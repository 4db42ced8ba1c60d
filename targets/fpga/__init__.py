"""The ``fpga`` target: weight tables for qsnn's reference FPGA core, the core itself and its HDL tooling.

Read in this order, from a compiled network to a core running on real inputs:

* :mod:`.tables`   what ``qsnn-export --to fpga`` writes: per-layer weight memories (``.mem`` /
                   ``.coe`` / ``.mif``), threshold, bias and leak tables, a C header; and the reader.
* :mod:`.core`     which networks the core (``rtl/qsnn_core.v``) runs, its parameter header and its
                   tables in the core's order (the folder's ``rtl/`` part).
* :mod:`.hdl_sim`  checks an fpga folder's ``rtl/`` part against its network and runs the core in
                   Verilator or Icarus Verilog (spike trains, counts, cycles).
* :mod:`.synth`    Yosys synthesis for an FPGA family (resources, the smallest device it fits).
* :mod:`.tools`    finding the HDL tools.
* :mod:`.cli`      ``qsnn-rtl-sim``: the core against ``qsnn-sim``, spike for spike.

The memory-file formats are shared (:mod:`qsnn.targets.memfiles`). This package exposes the target's
interface for :mod:`qsnn.targets.registry`: ``NAME``, ``DESCRIPTION``, ``check``, ``problems``, ``notes``, ``write``,
``read``, ``readme``.
"""

from .tables import DESCRIPTION, NAME, check, notes, problems, read, readme, write

__all__ = ["DESCRIPTION", "NAME", "check", "notes", "problems", "read", "readme", "write"]
