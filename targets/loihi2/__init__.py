"""The ``loihi2`` target: a lava-dl ``netx`` network that stock Lava runs bit for bit, and its check.

* :mod:`.netx`        what ``qsnn-export --to loihi2`` writes (``network.net``) and its reader.
* :mod:`.lava_env`    the Lava venv (Python 3.10, lava-nc 0.10, lava-dl 0.6; ``make lava``) and
                      running a folder in it with ``lava/run_netx.py``.
* :mod:`.lava_check`  ``make lava-check``: a trained model through qsnn-sim and Lava, spike for spike.

This package exposes the target's interface for :mod:`qsnn.targets.registry`: ``NAME``,
``DESCRIPTION``, ``check``, ``problems``, ``write``, ``read``, ``readme``.
"""

from .netx import DESCRIPTION, NAME, check, problems, read, readme, write

__all__ = ["DESCRIPTION", "NAME", "check", "problems", "read", "readme", "write"]
