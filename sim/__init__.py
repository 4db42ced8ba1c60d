"""The bit-accurate integer simulator (NumPy only, never torch).

:func:`simulate` runs a compiled :class:`~qsnn.network.IntegerNetwork` on a batch of inputs with
its profile's integer arithmetic (the step of :func:`qsnn.arith.int_lif_step`);
:mod:`qsnn.sim.report` turns a run into the validation and hardware report that ``qsnn-sim``
prints, saves and plots.
"""

from .engine import check_input, simulate
from .results import LayerStats, SimResult, combine, predict

__all__ = ["LayerStats", "SimResult", "check_input", "combine", "predict", "simulate"]
