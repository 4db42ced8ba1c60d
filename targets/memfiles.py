"""Memory files: words packed from signed lanes, and the three formats a memory is initialised from.

* :func:`pack_lanes` / :func:`unpack_lanes`: rows of signed values → words, lane 0 in the least
  significant bits (two's complement), and back.
* :func:`format_mem` (Verilog ``$readmemh``), :func:`format_coe` (Xilinx COE), :func:`format_mif`
  (Intel MIF): one word per address from address 0, with comments in each format's syntax.
* :func:`parse_mem`: the words of a ``$readmemh`` file.

The fpga target's per-layer tables and the reference core's tables are both written with these.
"""

from __future__ import annotations

import re

import numpy as np

from qsnn.errors import ExportError


def pack_lanes(values: np.ndarray, bits: int) -> list[int]:
    """Rows of signed lane values → words, lane 0 in the least significant bits (two's complement)."""
    codes = np.asarray(values, dtype=np.int64) & ((1 << bits) - 1)
    words = []
    for row in codes.tolist():
        word = 0
        for lane, code in enumerate(row):
            word |= int(code) << (bits * lane)
        words.append(word)
    return words


def unpack_lanes(words: list[int], bits: int, lanes: int) -> np.ndarray:
    """Inverse of :func:`pack_lanes` (signed)."""
    mask = (1 << bits) - 1
    codes = np.array([[(w >> (bits * j)) & mask for j in range(lanes)] for w in words], dtype=np.int64)
    return np.where(codes >= (1 << (bits - 1)), codes - (1 << bits), codes) if len(words) else codes.reshape(0, lanes)


def hex_digits(bits: int) -> int:
    """Hex digits of a ``bits``-wide word."""
    return (bits + 3) // 4


def format_mem(words: list[int], width: int, comments: list[str]) -> str:
    """Verilog ``$readmemh``: ``//`` comments, then one hex word per line from address 0."""
    digits = hex_digits(width)
    lines = [f"// {c}" for c in comments]
    lines += [f"{w:0{digits}x}" for w in words]
    return "\n".join(lines) + "\n"


def format_coe(words: list[int], width: int, comments: list[str]) -> str:
    """Xilinx COE (Block Memory Generator): radix 16, comma-separated vector ending in ``;``."""
    digits = hex_digits(width)
    lines = [f"; {c}" for c in comments]
    lines += ["memory_initialization_radix=16;", "memory_initialization_vector="]
    body = [f"{w:0{digits}x}" for w in words]
    lines += [v + ("," if i < len(body) - 1 else ";") for i, v in enumerate(body)]
    return "\n".join(lines) + "\n"


def format_mif(words: list[int], width: int, comments: list[str]) -> str:
    """Intel (Altera) MIF: WIDTH, DEPTH, radixes, ``addr : data;`` lines between CONTENT BEGIN/END."""
    digits = hex_digits(width)
    lines = [f"-- {c}" for c in comments]
    lines += [
        f"WIDTH={width};",
        f"DEPTH={len(words)};",
        "",
        "ADDRESS_RADIX=UNS;",
        "DATA_RADIX=HEX;",
        "",
        "CONTENT BEGIN",
    ]
    lines += [f"    {a} : {w:0{digits}X};" for a, w in enumerate(words)]
    lines += ["END;"]
    return "\n".join(lines) + "\n"


def parse_mem(text: str) -> list[int]:
    """Words of a ``$readmemh`` file (``//`` and ``/* */`` comments, ``@addr`` jumps, ``_`` separators)."""
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    memory: dict[int, int] = {}
    addr = 0
    for line in text.splitlines():
        line = line.split("//", 1)[0]
        for token in line.split():
            if token.startswith("@"):
                addr = int(token[1:], 16)
                continue
            memory[addr] = int(token.replace("_", ""), 16)
            addr += 1
    if not memory:
        return []
    if sorted(memory) != list(range(len(memory))):
        raise ExportError("the .mem file has gaps in its addresses")
    return [memory[a] for a in range(len(memory))]
