"""click parameter types for the numeric options that only a command line has (the training settings
are checked by :class:`qsnn.config.TrainConfig` itself, where the fact lives).

``FiniteFloat``: click's ``FloatRange`` lets ``nan`` through every bound (a comparison with NaN is
false) and ``inf`` through an open upper end; this one refuses both, naming the option and the range.
"""

from __future__ import annotations

import math

import click


class FiniteFloat(click.FloatRange):
    """A finite float, optionally in a range (``min_open``/``max_open`` as click's ``FloatRange``)."""

    name = "finite float"

    def convert(self, value, param, ctx):
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            where = f" in the range {self._describe_range()}" if self.min is not None or self.max is not None else ""
            self.fail(f"{value!r} is not a finite number{where}", param, ctx)
        return super().convert(number, param, ctx)


#: The seeds NumPy takes: 0..2**32-1 (``--seed``, ``--sampler-seed``).
SEED = click.IntRange(0, 2**32 - 1)


class PowerOfTwo(click.IntRange):
    """An integer power of two in ``[min, max]`` (``qsnn-export --lanes``)."""

    name = "power of two"

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if number < 1 or number & (number - 1):
            self.fail(f"{number} is not a power of two in the range {self._describe_range()}", param, ctx)
        return number
