"""The board top's UART protocol (``rtl/qsnn_uart_top.v``) from the host's side (the top in Verilator with
the UART driven bit by bit is :func:`.hdl_sim.run_uart_verilator`).

The protocol (8N1; little-endian fields; N = C·H·W input pixels, C_out = classes)::

    host -> 'L', N bytes (pixels in (c, y, x) order)       top -> 'K'
    host -> 'R'  (one inference of T steps)                 top -> 'D', class, C_out x uint16 counts, uint32 cycles
    host -> 'I'  (identify)                                 top -> 'Q', uint16 C, H, W, T, uint8 C_out, uint8 lanes
    any other byte                                          top -> '?'

The functions :func:`load_command`, :func:`parse_run` and :func:`parse_identify` are all a host needs
(with pyserial: ``port.write(load_command(image)); port.read(1)`` then ``port.write(RUN)`` and
``parse_run(port.read(run_reply_len(C_out)), C_out)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qsnn.errors import ExportError

TOP_FILE = "qsnn_uart_top.v"
UART_FILE = "qsnn_uart.v"
HARNESS_FILE = "qsnn_uart_tb.cpp"
TOP_MODULE = "qsnn_uart_top"

LOAD, LOADED, RUN, DONE, IDENTIFY, IDENT, UNKNOWN = b"L", b"K", b"R", b"D", b"I", b"Q", b"?"
#: Baud rate of the board bitstreams (qsnn-fpga-pnr --baud).
DEFAULT_BAUD = 115200
#: Clock cycles per bit in the Verilator runs (the protocol is the same at any rate).
SIM_CLKS_PER_BIT = 8


def clks_per_bit(clock_hz: float, baud: int) -> int:
    """Clock cycles per UART bit; :class:`ExportError` when the clock is too slow for the rate (< 4 or > 3 % off)."""
    cpb = round(clock_hz / baud)
    if cpb < 4 or abs(clock_hz / cpb - baud) / baud > 0.03:
        raise ExportError(
            f"--baud {baud}: a {clock_hz / 1e6:g} MHz clock cannot time it (needs at least 4 cycles per bit "
            f"within 3 %); choose a lower baud rate"
        )
    return int(cpb)


def supported(cfg) -> str | None:
    """Why the top cannot serve a core configuration (:class:`~.core.CoreConfig`), or None."""
    if not cfg.static:
        return "the board top loads a static image; this network reads event frames (one per step)"
    if cfg.in_bits > 8:
        return f"the board top sends one byte per input value; this network's inputs are {cfg.in_bits}-bit"
    if cfg.num_steps > 0xFFFF:
        return f"the board top reports 16-bit spike counts; T = {cfg.num_steps} is too many steps"
    return None


def load_command(image: np.ndarray) -> bytes:
    """'L' and the image's pixels (C, H, W) as bytes in (c, y, x) order."""
    flat = np.asarray(image).reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() > 255):
        raise ExportError("the board top takes input values 0..255 (one byte each)")
    return LOAD + flat.astype(np.uint8).tobytes()


def run_reply_len(num_classes: int) -> int:
    return 2 + 2 * num_classes + 4


IDENT_LEN = 11


@dataclass(frozen=True)
class RunReply:
    """The top's answer to 'R'."""

    prediction: int
    counts: np.ndarray
    cycles: int


def parse_run(reply: bytes, num_classes: int) -> RunReply:
    """The class, the output spike counts and the cycles of an answer to 'R'."""
    if len(reply) != run_reply_len(num_classes) or reply[:1] != DONE:
        raise ExportError(
            f"the board top's answer to 'R' is {len(reply)} bytes starting {reply[:1]!r}; expected "
            f"{run_reply_len(num_classes)} starting {DONE!r}"
        )
    counts = np.frombuffer(reply, "<u2", num_classes, 2).astype(np.int64)
    cycles = int(np.frombuffer(reply, "<u4", 1, 2 + 2 * num_classes)[0])
    return RunReply(prediction=reply[1], counts=counts, cycles=cycles)


def parse_identify(reply: bytes) -> dict[str, int]:
    if len(reply) != IDENT_LEN or reply[:1] != IDENT:
        raise ExportError(f"the board top's answer to 'I' is {reply!r}; expected {IDENT_LEN} bytes starting 'Q'")
    c, h, w, t = np.frombuffer(reply, "<u2", 4, 1).tolist()
    return {"in_c": c, "in_h": h, "in_w": w, "num_steps": t, "num_classes": reply[9], "lanes": reply[10]}
