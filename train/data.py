"""Torch side of the datasets: integer arrays from :mod:`qsnn.data` as float tensors, in minibatches.

The whole split stays in memory as its integer tensor (uint8 pixels, int16/int32 event counts) on the
target device; each minibatch is turned into float32 on the way out, so a 55,000-image training set
costs 43 MB rather than 172 MB.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qsnn.data import INPUT_SCALE, ArraySplit


def _int_tensor(x: np.ndarray) -> torch.Tensor:
    """``x`` as an integer tensor torch can index and convert (uint16 counts become int16 or int32)."""
    if x.dtype == np.uint16:
        x = x.astype(np.int16 if x.size == 0 or x.max() <= np.iinfo(np.int16).max else np.int32)
    return torch.tensor(x) if not x.flags.writeable else torch.from_numpy(x)


def _scale(x: torch.Tensor, encoding: str) -> torch.Tensor:
    if encoding not in INPUT_SCALE:
        raise ValueError(f"encoding must be one of {tuple(INPUT_SCALE)}, got {encoding!r}")
    x = x.to(torch.float32)
    return x * INPUT_SCALE[encoding] if encoding == "static" else x


def to_tensor(x: np.ndarray, encoding: str, device="cpu") -> torch.Tensor:
    """float32 model input: static ``x * INPUT_SCALE["static"]`` (N,1,28,28); events float counts (N,T,2,32,32)."""
    return _scale(_int_tensor(np.asarray(x)).to(device), encoding)


class Batches:
    """Minibatches ``(x, y)`` over an :class:`ArraySplit` held in memory: x float32 as :func:`to_tensor`, y int64.

    With ``shuffle`` each epoch draws its order with ``torch.randperm(N, generator=generator)``
    (torch's global generator when none is given), so saving and restoring the generator's state
    reproduces the batch order of a resumed run.
    """

    def __init__(
        self,
        split: ArraySplit,
        batch_size: int,
        *,
        shuffle: bool,
        generator: torch.Generator | None = None,
        device="cpu",
        drop_last: bool = False,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.split = split
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator
        self.device = torch.device(device)
        self.drop_last = drop_last
        self.encoding = split.encoding
        self._x = _int_tensor(split.x).to(self.device)
        self._y = torch.as_tensor(np.array(split.y, dtype=np.int64)).to(self.device)

    def __len__(self) -> int:
        n = len(self._y)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self):
        n = len(self._y)
        order = torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)
        order = order.to(self.device)
        for b in range(len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield _scale(self._x[idx], self.encoding), self._y[idx]
