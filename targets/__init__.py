"""Target adapters: the files a chip loads, one folder per target, each with its reader and its check.

* :mod:`.fpga`     ``.mem`` / ``.coe`` / ``.mif`` weight memories, threshold/bias/leak tables and a C
                   header for the reference FPGA core (profile ``fpga``); the Verilog core (``rtl/``),
                   its HDL simulation, Yosys synthesis and ``qsnn-rtl-sim``.
* :mod:`.loihi2`   a lava-dl ``netx`` HDF5 network with the ``loihi2`` profile's integers; the Lava venv
                   and ``make lava-check``.
* :mod:`.nir`      a NIR graph (``nir.read``-able; snnTorch, Norse, spikingjelly ...).

Shared by them: :mod:`.registry` (the targets by name), :mod:`.manifest` (``manifest.json``),
:mod:`.fit` (does a network fit a target's registers, and the change that makes it fit),
:mod:`.memfiles` (memory-file formats) and :mod:`.inputs` (the inputs every check runs: a stratified
subset of the model's own data).

:func:`write_target` writes one into a folder atomically (tables, ``README.md``, ``manifest.json``
with the SHA-256 of every file); :func:`read_target` loads any of them back into an
:class:`~qsnn.network.IntegerNetwork`.
"""

from .manifest import FORMAT_VERSION, read_manifest
from .registry import (
    TARGETS,
    Target,
    check_target,
    get_target,
    read_target,
    summarize,
    target_notes,
    target_problems,
    write_target,
)

__all__ = [
    "FORMAT_VERSION",
    "TARGETS",
    "Target",
    "check_target",
    "get_target",
    "read_manifest",
    "read_target",
    "summarize",
    "target_notes",
    "target_problems",
    "write_target",
]
