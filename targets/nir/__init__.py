"""The ``nir`` target: the network as a NIR graph that snnTorch, spikingjelly, Norse, Spyx and Sinabs import.

* :mod:`.graph`  what ``qsnn-export --to nir`` writes (``network.nir``, by flavour) and its reader.

``make nir-check`` runs the files in every consumer (``tools/nir_consumers/``). This package
exposes the target's interface for :mod:`qsnn.targets.registry`: ``NAME``, ``DESCRIPTION``,
``check``, ``write``, ``read``, ``readme``.
"""

from .graph import DESCRIPTION, NAME, check, problems, read, readme, write

__all__ = ["DESCRIPTION", "NAME", "check", "problems", "read", "readme", "write"]
