"""The inputs a target's check runs on: ``qsnn-rtl-sim -n N``, ``make lava-check N=…``, ``make nir-check``.

Every check takes the model's own data (:func:`qsnn.data.load_for_model`: its dataset, read with the
encoding, count clip, test cut and T it was trained with) and a **stratified** subset of N inputs,
the same for every target, so that their figures can be set side by side. Not the first N: a split
stored class by class (mnist5k's test split is 50 zeros, then 50 ones, …) would give a check of one
class, whose accuracy says nothing (a network whose output never fires predicts class 0 and scores
100 %).
"""

from __future__ import annotations

import os

from qsnn.data import ArraySplit, load_for_model

#: The seed of the stratified subset (the same inputs for every target and every run).
CHECK_SEED = 0


def check_inputs(
    model,
    n: int,
    split: str = "test",
    data_dir: str | os.PathLike | None = None,
    *,
    dataset: str | None = None,
    where: str = "the model",
) -> tuple[str, ArraySplit]:
    """(dataset, inputs) of a target check: ``model``'s data (``dataset`` if given) cut to a stratified,
    seeded subset of ``n`` inputs in split order (``n`` recordings with all their windows when the split
    is cut into windows), or the whole split when it has no more than ``n``.

    Raises :class:`~qsnn.errors.DataError` as :func:`~qsnn.data.load_for_model` does (no dataset
    known, unreadable, or not the model's shape, classes or encoding)."""
    name, data = load_for_model(model, split, data_dir, dataset=dataset, where=where)
    if n < data.num_recordings:
        data = data.subset(n, CHECK_SEED)
    return name, data
