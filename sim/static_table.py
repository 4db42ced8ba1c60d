"""A static first layer by lookup: every spike train it can produce, by neuron current.

With a static image the first layer's current is the same at every step, so each neuron's whole
trajectory is a function of its channel and its current alone; :class:`StaticTable` holds them all
(the engine's :mod:`qsnn.sim.layers` builds and caches one per layer, T and delay).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .results import LayerStats

if TYPE_CHECKING:
    from .layers import _Layer

#: Bit 0 of every byte of a uint64 word.
LOW_BITS = np.uint64(0x0101010101010101)


class StaticTable:
    """Every spike train a static first layer can produce, by neuron current: the layer's scan once
    per possible (current, channel), then a lookup per neuron.

    With a static image the first layer's current c_t is the same at every step (c_t = b before
    the synaptic delay d), so a neuron's whole trajectory (u_t, z_t, saturation events) is a
    function of its channel (θ, b) and its current c alone: the engine's own :meth:`_Layer.scan`
    runs once on a state of shape (currents lo..hi, channels) and a batch's spikes are gathered
    from it (bit planes of 8 steps, one byte gather per plane and a shift per step), the same
    integers as scanning every neuron (``tests/test_sim_engine.py`` holds it to the NumPy path,
    which scans). The statistics come from the table weighted by how many neurons use each entry.
    """

    def __init__(self, layer: "_Layer", T: int, delay: int, lo: int, hi: int, membranes: bool) -> None:
        self.lo, self.hi = int(lo), int(hi)
        channels = layer.out_nhwc[-1]
        self.channels = channels
        shape = (self.hi - self.lo + 1, channels)
        dtype = layer.state_dtype
        c = np.ascontiguousarray(np.broadcast_to(np.arange(self.lo, self.hi + 1, dtype=dtype)[:, None], shape))
        bias = np.ascontiguousarray(np.broadcast_to(layer.bias, shape))
        z = np.zeros((T, *shape), dtype=bool)
        u_rec = np.empty((T, *shape), dtype=dtype)
        sat = np.zeros((T, *shape), dtype=np.int8)
        scratch = LayerStats(layer.name, layer.layer.kind, shape, 0, np.zeros(T, dtype=np.int64))
        layer.scan(
            [bias if t < delay else c for t in range(T)],
            np.zeros(shape, dtype),
            np.zeros(shape, dtype),
            z,
            scratch,
            u_rec,
            sat,
        )
        size = shape[0] * channels
        # entries channel-major (entry = channel·R + c − lo): a neuron's index is one add to its current
        z, u_rec, sat = (a.transpose(0, 2, 1).reshape(T, size) for a in (z, u_rec, sat))
        self.planes = np.packbits(z, axis=0, bitorder="little")  # (⌈T/8⌉, entries)
        # the same bits as 64-step words (⌈T/64⌉, entries), byte k of a little-endian word = plane k
        planes = np.zeros((-(-len(self.planes) // 8) * 8, size), dtype=np.uint8)
        planes[: len(self.planes)] = self.planes
        words = np.ascontiguousarray(planes.reshape(-1, 8, size).transpose(0, 2, 1)).view("<u8")[..., 0]
        # where T ≤ 32 every step's bit is in the low half: 32-bit words, twice the lanes per vector
        self.words = words.astype(np.uint32) if T <= 32 else words
        self.u = np.ascontiguousarray(u_rec) if membranes else None
        self.u_min = u_rec.min(axis=0, initial=0)  # the engine's range starts at 0
        self.u_max = u_rec.max(axis=0, initial=0)
        self.sat_high = (sat == 1).sum(axis=0, dtype=np.int64)
        self.sat_low = (sat == -1).sum(axis=0, dtype=np.int64)
        self.saturates = bool(self.sat_high.any() or self.sat_low.any())
        # the same four figures side by side, one cache line per entry (the compiled lookup's)
        self.figures = np.stack([self.sat_high, self.sat_low, self.u_min, self.u_max], axis=1).astype(np.int64)
        self.offset = np.arange(channels, dtype=np.intp) * shape[0] - self.lo
        self.accel = layer.accel  # the compiled lookup (qsnn.sim.kernels_numba), or None: NumPy's

    def index(self, cur: np.ndarray) -> np.ndarray:
        """The table entry of every neuron of a (..., channels) current array (the caller checks the range)."""
        idx = cur.astype(np.intp)
        idx += self.offset
        return idx

    def absorb_stats(self, idx: np.ndarray, stats: LayerStats) -> None:
        """Add the saturation events and membrane range of the neurons ``idx`` over all T steps."""
        flat = idx.reshape(-1)
        if flat.size < len(self.sat_low):  # fewer neurons than entries: gather their figures
            if self.saturates:
                stats.saturation_high += int(self.sat_high.take(flat).sum())
                stats.saturation_low += int(self.sat_low.take(flat).sum())
            if flat.size:
                stats.membrane_min = min(stats.membrane_min, int(self.u_min.take(flat).min()))
                stats.membrane_max = max(stats.membrane_max, int(self.u_max.take(flat).max()))
            return
        uses = np.bincount(flat, minlength=len(self.sat_low))  # else weight each entry by its uses
        if self.saturates:
            stats.saturation_high += int(uses @ self.sat_high)
            stats.saturation_low += int(uses @ self.sat_low)
        used = uses > 0
        if used.any():
            stats.membrane_min = min(stats.membrane_min, int(self.u_min[used].min()))
            stats.membrane_max = max(stats.membrane_max, int(self.u_max[used].max()))

    def lookup(
        self, cur: np.ndarray, t0: int, z_out: np.ndarray, scratch: dict, stats: LayerStats | None = None
    ) -> np.ndarray | None:
        """z_t of the neurons with currents ``cur`` (..., channels) for steps t0 … t0 + len(z_out) − 1
        into ``z_out`` (bool); with ``stats``, also their saturation events and membrane range over
        all T (:meth:`absorb_stats`). ``scratch`` is a dict the caller keeps for one batch (its entries
        and gathered bit planes, between chunks).

        With the compiled kernels, one pass (:func:`qsnn.sim.kernels_numba.table_lookup`) that also
        counts the spikes of each step, which it returns. Else NumPy: bit t mod 8 of each byte is
        extracted eight bytes at a time: (word >> b) & 0x0101…01 keeps bit b of every byte (the bits
        shifted in from the next byte land above bit 0, which the mask drops); returns None (the
        engine counts)."""
        if self.accel is not None:
            counts = np.zeros(len(z_out), dtype=np.int64)
            out = np.array([0, 0, 0, 0] if stats is None else [0, 0, stats.membrane_min, stats.membrane_max])
            z = z_out.view(np.uint8).reshape(len(z_out), -1)
            c = self.channels
            k = self.accel
            k.table_lookup(
                cur.reshape(-1, c), self.offset, self.words, t0, z, counts, self.figures, out, stats is not None
            )
            if stats is not None:
                stats.saturation_high += int(out[0])
                stats.saturation_low += int(out[1])
                stats.membrane_min, stats.membrane_max = int(out[2]), int(out[3])
            return counts
        idx = self.entries(cur, scratch)
        if stats is not None:
            self.absorb_stats(idx, stats)
        planes = scratch.setdefault("planes", {})
        wide = idx.size % 8 == 0
        for i in range(len(z_out)):
            t = t0 + i
            g, bit = divmod(t, 8)
            gathered = planes.get(g)
            if gathered is None:
                planes.clear()
                gathered = planes[g] = np.take(self.planes[g], idx)
            src, out = gathered.reshape(-1), z_out[i].view(np.uint8).reshape(-1)
            if wide:
                src, out = src.view(np.uint64), out.view(np.uint64)
            np.right_shift(src, bit, out=out)
            np.bitwise_and(out, LOW_BITS if wide else 1, out=out)
        return None

    def membranes(self, cur: np.ndarray, t0: int, u_out: np.ndarray, scratch: dict) -> None:
        """u_t of the neurons with currents ``cur`` for steps t0 … t0 + len(u_out) − 1 into ``u_out``."""
        idx = self.entries(cur, scratch)
        for i in range(len(u_out)):
            np.take(self.u[t0 + i], idx, out=u_out[i])

    def entries(self, cur: np.ndarray, scratch: dict) -> np.ndarray:
        """:meth:`index` of ``cur``, kept in ``scratch`` for the batch's later chunks."""
        idx = scratch.get("entries")
        if idx is None:
            idx = scratch["entries"] = self.index(cur)
        return idx
