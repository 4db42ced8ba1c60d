"""Target adapters: weight tables a chip loads, one module per target, each with its reader.

* :mod:`.fpga`      ``.mem`` / ``.coe`` / ``.mif`` weight memories, threshold/bias/leak tables and a C
                    header for the reference FPGA core (profile ``fpga``).
* :mod:`.loihi2`    a lava-dl ``netx`` HDF5 network with the ``loihi2`` profile's integers.
* :mod:`.nir_graph` a NIR graph (``nir.read``-able; snnTorch, Norse, Lava-dl ...).

:func:`write_target` writes one into a folder atomically (tables, ``README.md``, ``manifest.json``
with the SHA-256 of every file); :func:`read_target` loads any of them back into an
:class:`~qsnn.network.IntegerNetwork`.
"""

from .manifest import FORMAT_VERSION, read_manifest
from .registry import TARGETS, Target, check_target, get_target, read_target, summarize, write_target

__all__ = ["FORMAT_VERSION", "TARGETS", "Target", "check_target", "get_target", "read_manifest", "read_target",
           "summarize", "write_target"]
