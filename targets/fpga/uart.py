"""The board top's UART protocol (``rtl/qsnn_uart_top.v``) from the host's side, and the top in Verilator
with the UART driven bit by bit (:func:`run_verilator`).

The protocol (8N1; little-endian fields; N = C·H·W input pixels, C_out = classes)::

    host -> 'L', N bytes (pixels in (c, y, x) order)       top -> 'K'
    host -> 'R'  (one inference of T steps)                 top -> 'D', class, C_out x uint16 counts, uint32 cycles
    host -> 'I'  (identify)                                 top -> 'Q', uint16 C, H, W, T, uint8 C_out, uint8 lanes
    any other byte                                          top -> '?'

The functions :func:`load_command`, :func:`parse_run` and :func:`parse_identify` are all a host needs
(with pyserial: ``port.write(load_command(net, image)); port.read(1)`` then ``port.write(RUN)`` and
``parse_run(port.read(run_reply_len(C_out)), C_out)``).
"""

from __future__ import annotations

import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def supported(cfg: Any) -> str | None:
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


@dataclass
class UartResult:
    """What the top answered over its UART for N images."""

    predictions: np.ndarray
    counts: np.ndarray
    cycles: np.ndarray  # core cycles from 'R' to done (the scan of the stored image included)
    identify: dict[str, int]
    transaction_cycles: np.ndarray  # per image: clock cycles of 'L' ... 'K' and 'R' ... answer
    clks_per_bit: int
    wall_s: float
    build: dict[str, Any]


def run_verilator(checked: Any, x: np.ndarray, *, clks_per_bit: int = SIM_CLKS_PER_BIT, progress=None) -> UartResult:
    """Run ``qsnn_uart_top`` around the checked folder's core (:class:`~.hdl_sim.RTLFolder`) in Verilator:

    'I', then for every image 'L' + pixels and 'R', the host's bytes driven onto rx bit by bit and
    the answers decoded from tx bit by bit.
    """
    from . import hdl_sim
    from .tools import ToolError

    net, cfg = checked.net, checked.config
    problem = supported(cfg)
    if problem:
        raise ExportError(f"{checked.folder}: {problem}")
    hdl_sim.input_events(net, x)  # the engine's input rules (shape, values)
    binary, build = hdl_sim.build_uart_verilator(checked.rtl, clks_per_bit, progress=progress)
    C = cfg.num_classes
    transactions: list[tuple[bytes, int]] = [(IDENTIFY, IDENT_LEN)]
    for img in np.asarray(x):
        transactions += [(load_command(img), 1), (RUN, run_reply_len(C))]
    with tempfile.TemporaryDirectory(prefix="qsnn-uart-") as tmp:
        inp, outp = Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        with open(inp, "wb") as fh:
            fh.write(b"QSNNUAI1" + np.array([len(transactions)], "<u4").tobytes())
            for data, expect in transactions:
                fh.write(np.array([len(data)], "<u4").tobytes() + data + np.array([expect], "<u4").tobytes())
        t0 = time.perf_counter()
        res = subprocess.run(
            [
                str(binary),
                str(checked.rtl.resolve()),
                str(inp),
                str(outp),
                str(clks_per_bit),
                str(2 * cfg.cycle_bound()),
            ],
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - t0
        if res.returncode != 0:
            raise ToolError(f"the Verilator model of the board top failed: {(res.stderr or res.stdout).strip()[-400:]}")
        data = outp.read_bytes()
    if data[:8] != b"QSNNUAO1" or int(np.frombuffer(data, "<u4", 1, 8)[0]) != len(transactions):
        raise ToolError("the UART harness wrote no result")
    off, replies, tcycles = 12, [], []
    for _ in transactions:
        k = int(np.frombuffer(data, "<u4", 1, off)[0])
        replies.append(data[off + 4 : off + 4 + k])
        tcycles.append(int(np.frombuffer(data, "<u8", 1, off + 4 + k)[0]))
        off += 12 + k
    ident = parse_identify(replies[0])
    n = len(x)
    preds, counts, cycles = np.zeros(n, np.int64), np.zeros((n, C), np.int64), np.zeros(n, np.int64)
    for i in range(n):
        if replies[1 + 2 * i] != LOADED:
            raise ExportError(f"the board top answered {replies[1 + 2 * i]!r} to 'L' of image {i}; expected b'K'")
        r = parse_run(replies[2 + 2 * i], C)
        preds[i], counts[i], cycles[i] = r.prediction, r.counts, r.cycles
    return UartResult(
        predictions=preds,
        counts=counts,
        cycles=cycles,
        identify=ident,
        transaction_cycles=np.array(tcycles[1:], np.int64).reshape(n, 2),
        clks_per_bit=clks_per_bit,
        wall_s=wall,
        build=build,
    )
