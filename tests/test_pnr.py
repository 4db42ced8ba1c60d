"""Place and route (targets/fpga/pnr.py, qsnn-fpga-pnr) and the board top with its UART (rtl/qsnn_uart_top.v).

* The board top in Verilator, its rx pin driven bit by bit and its tx pin decoded bit by bit, gives the
  class and output spike counts of qsnn-sim on real mnist5k test images: the ``make demo`` model (20
  images) and hand-built layer stacks (dense-only, strided and padded convolutions).
* A tiny network is synthesized, placed and routed for the iCE40 UP5K (the smallest part): a bitstream of
  the part's size, a routed f_max from nextpnr's timing analysis, resources and utilisation.
* Bad input: an unknown part, a design too big for the part (which resource, by how much), a missing
  tool -- one line each, and an earlier output folder left as it was.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from test_rtl import random_net, stack_net

from qsnn.sim.engine import simulate
from qsnn.targets import write_target
from qsnn.targets.fpga import hdl_sim, pnr, uart

BIN = Path(sys.prefix) / "bin"


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    from qsnn.data import load_split

    return load_split("mnist5k", "test").x[:16]


def _uart_equals_sim(checked: hdl_sim.RTLFolder, x: np.ndarray) -> hdl_sim.UartResult:
    top = hdl_sim.run_uart_verilator(checked, x)
    sim = simulate(checked.net, x)
    assert np.array_equal(top.predictions, sim.predictions), "the UART top's classes differ from qsnn-sim"
    assert np.array_equal(top.counts, sim.counts), "the UART top's output spike counts differ from qsnn-sim"
    cfg = checked.config
    assert top.identify == {
        "in_c": cfg.in_shape[0],
        "in_h": cfg.in_shape[1],
        "in_w": cfg.in_shape[2],
        "num_steps": cfg.num_steps,
        "num_classes": cfg.num_classes,
        "lanes": cfg.lanes,
    }
    # the core's cycles plus one cycle per scanned pixel at most (the top feeds nonzero pixels only)
    core_cycles = hdl_sim.run_verilator(checked, x).cycles
    assert np.all(top.cycles >= core_cycles) and np.all(top.cycles <= core_cycles + np.prod(cfg.in_shape) + 4)
    return top


@pytest.mark.slow  # builds the core and the top with Verilator
@pytest.mark.hdl("verilator", "g++")
def test_uart_top_on_the_demo_model_equals_qsnn_sim(demo_run, tmp_path):
    from qsnn.data import load_split

    res = subprocess.run(
        [BIN / "qsnn-export", demo_run / "best.pt", "--to", "fpga", "-o", tmp_path / "fpga"],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    checked = hdl_sim.check_folder(tmp_path / "fpga")
    data = load_split("mnist5k", "test", num_steps=checked.net.num_steps).subset(20, 0)
    top = _uart_equals_sim(checked, data.x)
    assert len(set(top.predictions.tolist())) > 5 and top.counts.sum() > 0  # not an empty comparison
    assert np.mean(top.predictions == data.y) > 0.7


@pytest.mark.slow  # builds the core and the top with Verilator
@pytest.mark.hdl("verilator", "g++")
@pytest.mark.parametrize("name", ["dense-2", "conv3-stride2-pad1"])
def test_uart_top_on_layer_stacks_equals_qsnn_sim(name, digits, tmp_path):
    net, x, lanes = stack_net(name, digits)
    checked = hdl_sim.check_folder(write_target("fpga", net, tmp_path / "fpga", lanes=lanes))
    top = _uart_equals_sim(checked, x)
    assert top.counts.sum() > 0


def test_uart_protocol_round_trip():
    img = np.arange(12, dtype=np.uint8).reshape(1, 3, 4) * 20
    cmd = uart.load_command(img)
    assert cmd[:1] == uart.LOAD and list(cmd[1:]) == img.reshape(-1).tolist()
    reply = uart.DONE + bytes([3]) + np.array([1, 2, 300, 4], "<u2").tobytes() + np.array([123456], "<u4").tobytes()
    r = uart.parse_run(reply, 4)
    assert (r.prediction, r.counts.tolist(), r.cycles) == (3, [1, 2, 300, 4], 123456)
    with pytest.raises(Exception, match="expected 14"):
        uart.parse_run(reply[:-1], 4)
    assert uart.clks_per_bit(25e6, 115200) == 217 and uart.clks_per_bit(12e6, 115200) == 104
    with pytest.raises(Exception, match="--baud 4000000"):
        uart.clks_per_bit(12e6, 4_000_000)


@pytest.mark.slow  # Yosys, nextpnr-ice40 and icepack on a tiny network
@pytest.mark.hdl("yosys", "nextpnr-ice40", "icepack")
def test_tiny_network_places_and_routes_on_the_up5k(tmp_path):
    net = random_net(3, in_shape=(1, 4, 4), convs=(), denses=(4,), num_steps=4)
    folder = write_target("fpga", net, tmp_path / "fpga", lanes=1)
    r = pnr.place_and_route(folder / "rtl", "iCE40UP5K", tmp_path / "pnr")
    assert r["board"] == "icebreaker" and r["clks_per_bit"] == 104
    assert r["fmax_mhz"] and r["fmax_mhz"] > 5  # nextpnr's timing analysis of the routed design
    res = r["resources"]
    assert res["luts"] > 100 and res["ffs"] > 50 and 0 < res["luts_util_pct"] < 100
    bit = tmp_path / "pnr" / r["bitstream"]
    assert bit.suffix == ".bin" and bit.stat().st_size == r["bitstream_bytes"] == 104090  # the UP5K's image
    assert [s["step"] for s in r["steps"]][:3] == ["synthesis", "place and route", "bitstream"]
    assert all(s["seconds"] >= 0 for s in r["steps"])
    assert (tmp_path / "pnr" / "qsnn_uart_top.pcf").read_text().count("set_io") == 8


# --------------------------------------------------------------------------------------------------
# Bad input: one line, nothing written over


@pytest.fixture
def folder(digits, tmp_path):
    net, _, _ = stack_net("dense-2", digits)
    return write_target("fpga", net, tmp_path / "fpga", lanes=8)


@pytest.fixture
def earlier(tmp_path):
    """An earlier qsnn-fpga-pnr output folder, and a snapshot of its bytes."""
    out = tmp_path / "pnr"
    out.mkdir()
    (out / "pnr.json").write_text(json.dumps({"format": "qsnn-fpga-pnr", "runs": []}))
    (out / "bitstreams").mkdir()
    (out / "bitstreams" / "old.bit").write_bytes(b"\x01\x02old")
    return out, _snapshot(out)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error(*args) -> str:
    res = CliRunner().invoke(pnr.main, [*map(str, args), "--no-progress"])
    assert res.exit_code != 0, res.output
    lines = [line for line in res.output.splitlines() if line.strip()]
    # one line saying what is wrong (after the progress lines of the work done before it, if any)
    assert lines[-1].startswith("error: ") and "Traceback" not in res.output, res.output
    assert sum("error" in line.lower() for line in lines) == 1, res.output
    return lines[-1]


def test_unknown_part_is_one_line(folder, earlier):
    out, before = earlier
    line = _error(folder, "--part", "LFE5U-99F", "-o", out, "--force")
    assert "--part 'LFE5U-99F'" in line and "LFE5U-25F" in line and "iCE40UP5K" in line
    assert _snapshot(out) == before


def test_missing_tool_is_one_line(folder, earlier, monkeypatch, tmp_path):
    out, before = earlier
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(pnr.os, "sys", type("S", (), {"prefix": str(empty), "executable": str(empty / "python")}))
    line = _error(folder, "--part", "iCE40UP5K", "-o", out, "--force")
    assert "is not installed" in line and "apt-get install" in line
    assert _snapshot(out) == before


def test_design_too_big_names_the_resource_and_the_excess(folder, earlier, monkeypatch):
    cells = {"SB_LUT4": 6000, "SB_CARRY": 900, "SB_DFFE": 2000, "SB_RAM40_4K": 34, "SB_MAC16": 8}
    msg = pnr.fit_problem(cells, "iCE40UP5K")
    assert "6,000 LUT4 sites of its 5,280 (720 too many, 114 %)" in msg
    assert "34 block RAMs (SB_RAM40_4K) of its 30 (4 too many, 113 %)" in msg
    assert "DSP" not in msg and pnr.fit_problem({"SB_LUT4": 5000}, "iCE40UP5K") is None
    ecp5 = pnr.fit_problem({"LUT4": 12000, "CCU2C": 400, "DP16KD": 10}, "LFE5U-12F")
    assert ecp5.startswith("the design does not fit the LFE5U-12F: it needs 12,800 LUT4 sites of its 12,288")
    assert ecp5.endswith("by these counts it fits the LFE5U-25F (--part LFE5U-25F)")  # the smallest that does
    assert pnr.fit_problem({"LUT4": 12000, "CCU2C": 400, "DP16KD": 10}, "LFE5U-25F") is None
    assert "--part" not in msg  # no larger iCE40 part here

    # through the command: the run stops with that line and the earlier folder is left as it was
    def too_big(rtl, part, out_dir, **_):
        raise pnr.DoesNotFit(pnr.fit_problem(cells, part))

    monkeypatch.setattr(pnr, "find_tool", lambda name: name)
    monkeypatch.setattr(pnr, "need_tool", lambda name: name)
    monkeypatch.setattr(pnr, "measure_cycles", lambda checked, x, **_: {"mean": 1000.0, "bit_exact_vs_qsnn_sim": True,
                        "uart_top": {"predictions_equal": True, "counts_equal": True}})  # fmt: skip
    monkeypatch.setattr(pnr, "place_and_route", too_big)
    out, before = earlier
    line = _error(folder, "--part", "iCE40UP5K", "--dataset", "mnist5k", "-n", "2", "-o", out, "--force")
    assert "does not fit the iCE40UP5K" in line and "720 too many" in line
    lanes = json.loads((folder / "manifest.json").read_text())["rtl"]["lanes"]
    assert lanes > 1 and line.endswith(
        f"or fewer lanes (--lanes {lanes // 2}: fewer multipliers, adders and memory ports)"
    )
    assert _snapshot(out) == before


def test_existing_output_without_force_and_bad_lanes(folder, earlier):
    out, before = earlier
    assert "--force" in _error(folder, "--part", "iCE40UP5K", "-o", out)
    res = CliRunner().invoke(pnr.main, [str(folder), "--part", "iCE40UP5K", "--lanes", "1,3", "-o", str(out)])
    assert res.exit_code == 2 and "'--lanes': '3' is not a lane count" in res.output  # at parse time
    assert _snapshot(out) == before


def test_event_input_network_is_refused_by_the_board_top(digits, tmp_path, monkeypatch):
    net, _, lanes = stack_net("events-stride-pad", digits)
    folder = write_target("fpga", net, tmp_path / "fpga", lanes=lanes)
    monkeypatch.setattr(pnr, "find_tool", lambda name: name)
    monkeypatch.setattr(pnr, "need_tool", lambda name: name)
    line = _error(folder, "--part", "iCE40UP5K", "-o", tmp_path / "pnr")
    assert "static image" in line and not (tmp_path / "pnr").exists()
