"""Target adapters on hand-built integer networks: round trips, file formats, fit checks, atomic output.

The trained-model round trips (mnist5k, the simulator, snnTorch's NIR import) are in
``test_targets_trained.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
from pathlib import Path

import numpy as np
import pytest

from qsnn.errors import ExportError, ProfileError
from qsnn.network import IntegerLayer, IntegerNetwork
from qsnn.profiles import FPGA, LOIHI2
from qsnn.sim.engine import simulate
from qsnn.targets import TARGETS, read_manifest, read_target, target_problems, write_target
from qsnn.targets.fpga import tables as fpga_target
from qsnn.targets.loihi2 import netx as loihi2_target

PROFILE_OF = {"fpga": FPGA, "nir": FPGA, "loihi2": LOIHI2}


def tiny_net(profile=FPGA, seed: int = 0, *, uniform_theta: bool = False, num_steps: int = 6) -> IntegerNetwork:
    """conv(4, 3×3) → pool 2 → conv(6, 3×3) → pool 2 → dense(3) on 1×14×14, random integers that fit ``profile``."""
    rng = np.random.default_rng(seed)
    loihi = profile.leak == "loihi"
    wmax = min(profile.weight_max, 7)
    step = 1 << profile.threshold_shift

    def theta(n):
        t = np.full(n, 500) if uniform_theta else rng.integers(150, 700, size=n)
        return (t * 64 if loihi else t).astype(np.int64) // step * step

    def bias(n):
        return (rng.integers(-20, 21, size=n) * (64 if loihi else 1)).astype(np.int64)

    decay = 700 if loihi else 3400

    def layer(name, kind, shape, pool):
        w = rng.integers(-wmax, wmax + 1, size=shape).astype(np.int8)
        n = shape[0]
        return IntegerLayer(name, kind, w, pool, 6, theta(n), bias(n), decay, rng.uniform(1e-3, 1e-2, n))

    layers = (
        layer("conv1", "conv", (4, 1, 3, 3), 2),
        layer("conv2", "conv", (6, 4, 3, 3), 2),
        layer("fc", "dense", (3, 24), 1),
    )
    return IntegerNetwork(
        layers, profile, (1, 14, 14), num_steps, "static", ("a", "b", "c"), {"dataset": "hand-built", "seed": seed}
    )


#: Hand-built layer stacks on a 1×14×14 input: ("conv", out, k, stride, padding, pool) or ("dense", out).
STACKS = {
    "dense2": [("dense", 32), ("dense", 3)],
    "dense3": [("dense", 48), ("dense", 24), ("dense", 3)],
    "conv3_s2p1": [("conv", 4, 3, 2, 1, 1), ("conv", 6, 3, 2, 1, 2), ("conv", 8, 3, 1, 1, 1), ("dense", 3)],
    "four": [("conv", 4, 3, 1, 0, 2), ("conv", 8, 3, 1, 0, 1), ("dense", 16), ("dense", 3)],
    "w8": [("conv", 6, 3, 2, 1, 1), ("dense", 24), ("dense", 3)],  # 8-bit weights (see stack_net)
    # stride 3, padding 2, then 3×3 pooling of a 5×5 map (the last 2 rows/columns dropped, as torch does)
    "s3p2_pool3": [("conv", 4, 5, 3, 2, 1), ("conv", 6, 3, 1, 1, 3), ("dense", 3)],
}


def stack_net(profile, stack: str, seed: int = 0, *, num_steps: int = 6) -> IntegerNetwork:
    """The hand-built network ``STACKS[stack]`` with random integers that fit ``profile`` (``w8``: ±127
    weights, on an 8-bit profile), per-channel thresholds sized to each layer's typical current so
    that every layer spikes on random pixels, per-channel biases. The current shift is 6 under loihi2
    (Lava's fixed a_in << 6); elsewhere it is 1 with odd thresholds and even biases, so that no
    membrane sits exactly on its threshold (a real-valued NIR consumer then decides every spike as
    the integer network does, instead of by float32 rounding)."""
    rng = np.random.default_rng(seed)
    loihi = profile.leak == "loihi"
    wmax = 127 if stack == "w8" else 7
    if profile.weight_max < wmax:  # 8-bit weights on pixels need a wider membrane than the fpga's int16
        profile = profile.replace(weight_bits=8, membrane_bits=24, threshold_bits=24, bias_bits=24)
    shift = 6 if loihi else 1
    step, bstep = 1 << profile.threshold_shift, max(1 << profile.bias_shift, 2)
    shape: tuple[int, ...] = (1, 14, 14)
    x_rms, layers = 147.0, []  # uint8 pixels, then spikes (a low rate: every layer fires)
    for i, entry in enumerate(STACKS[stack], start=1):
        kind, out = entry[0], entry[1]
        stride, padding, pool = entry[3:] if kind == "conv" else (1, 0, 1)
        wshape = (out, shape[0], entry[2], entry[2]) if kind == "conv" else (out, int(np.prod(shape)))
        w = rng.integers(-wmax, wmax + 1, size=wshape).astype(np.int8)
        typical = wmax / np.sqrt(3) * np.sqrt(np.prod(wshape[1:])) * pool * x_rms * 2.0**shift
        theta = np.maximum((typical * rng.uniform(0.6, 1.4, out)).astype(np.int64) // step * step, step)
        theta = theta if loihi else theta // 2 * 2 + 1
        bias = (typical * rng.uniform(-0.2, 0.2, out)).clip(-profile.bias_max, profile.bias_max).astype(np.int64)
        bias = bias // bstep * bstep
        layer = IntegerLayer(
            f"{kind}{i}",
            kind,
            w,
            pool,
            shift,
            theta,
            bias,
            700 if loihi else 3400,
            rng.uniform(1e-3, 1e-2, out),
            stride=stride,
            padding=padding,
        )
        shape, x_rms = layer.output_shape(shape), np.sqrt(0.05)
        layers.append(layer)
    return IntegerNetwork(
        tuple(layers),
        profile,
        (1, 14, 14),
        num_steps,
        "static",
        ("a", "b", "c"),
        {"dataset": "hand-built", "stack": stack, "seed": seed},
    )


def images(n: int = 24, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 1, 14, 14)).astype(np.uint8)


def assert_same_network(a: IntegerNetwork, b: IntegerNetwork) -> None:
    assert a.profile == b.profile
    assert tuple(a.input_shape) == tuple(b.input_shape)
    assert (a.num_steps, a.encoding, tuple(a.classes)) == (b.num_steps, b.encoding, tuple(b.classes))
    assert len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers):
        assert (la.name, la.kind, la.pool, la.current_shift, la.weight_exp, la.leak_const, la.stride, la.padding) == (
            lb.name,
            lb.kind,
            lb.pool,
            lb.current_shift,
            lb.weight_exp,
            lb.leak_const,
            lb.stride,
            lb.padding,
        )
        assert la.weight.shape == lb.weight.shape
        assert np.array_equal(la.weight.astype(np.int64), lb.weight.astype(np.int64))
        assert np.array_equal(la.threshold, lb.threshold)
        assert np.array_equal(la.bias, lb.bias)
        assert np.array_equal(np.asarray(la.scale, dtype=np.float64), np.asarray(lb.scale, dtype=np.float64))


def assert_same_spikes(a: IntegerNetwork, b: IntegerNetwork, x: np.ndarray) -> None:
    ra, rb = simulate(a, x, record=True), simulate(b, x, record=True)
    assert ra.spikes.keys() == rb.spikes.keys()
    for key in ra.spikes:
        assert np.array_equal(ra.spikes[key], rb.spikes[key]), key
    assert np.array_equal(ra.counts, rb.counts)


# --------------------------------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize("target", ["fpga", "nir", "loihi2"])
@pytest.mark.parametrize("uniform", [False, True])
def test_round_trip_hand_built(tmp_path, target, uniform):
    net = tiny_net(PROFILE_OF[target], seed=3, uniform_theta=uniform)
    out = write_target(target, net, tmp_path / "out", source_info={"test": "hand-built"})
    assert out == tmp_path / "out"
    back = read_target(out)
    assert_same_network(net, back)
    assert_same_spikes(net, back, images())
    assert dict(back.metadata)["dataset"] == "hand-built"


@pytest.mark.parametrize("stack", list(STACKS))
@pytest.mark.parametrize("target,flavor", [("loihi2", None), ("nir", "standard"), ("nir", "spyx"), ("nir", "sinabs")])
def test_round_trip_any_stack(tmp_path, target, flavor, stack):
    """read(write(net)) == net for dense-only nets, conv stride/padding, 4 layers, 8-bit weights."""
    net = stack_net(LOIHI2 if target == "loihi2" else FPGA, stack, seed=4)
    options = {"flavor": flavor} if flavor else {}
    back = read_target(write_target(target, net, tmp_path / "out", **options))
    assert_same_network(net, back)
    assert_same_spikes(net, back, images(8))


def test_registry_lists_the_three_targets():
    assert set(TARGETS) == {"fpga", "loihi2", "nir"}
    for t in TARGETS.values():
        assert t.description


# --------------------------------------------------------------------------------------------------
# fpga: memory files read by independent minimal parsers (not the writer's code)


def parse_mem_words(text: str) -> list[int]:
    words = []
    for line in text.splitlines():
        line = line.split("//")[0].strip()
        if line:
            words.append(int(line, 16))
    return words


def parse_coe_words(text: str) -> tuple[int, list[int]]:
    body = "\n".join(line.split(";")[0] if line.lstrip().startswith(";") else line for line in text.splitlines())
    body = re.sub(r"^\s*;.*$", "", body, flags=re.M)
    radix = int(re.search(r"memory_initialization_radix\s*=\s*(\d+)\s*;", body).group(1))
    vector = body.split("memory_initialization_vector", 1)[1].split("=", 1)[1]
    vector = vector.split(";")[0]
    return radix, [int(v, radix) for v in re.split(r"[,\s]+", vector) if v]


def parse_mif_words(text: str) -> tuple[int, int, list[int]]:
    text = re.sub(r"--.*", "", text)
    width = int(re.search(r"WIDTH\s*=\s*(\d+)\s*;", text).group(1))
    depth = int(re.search(r"DEPTH\s*=\s*(\d+)\s*;", text).group(1))
    assert re.search(r"DATA_RADIX\s*=\s*HEX\s*;", text)
    content = text.split("CONTENT", 1)[1].split("BEGIN", 1)[1].rsplit("END", 1)[0]
    words = {}
    for addr, data in re.findall(r"(\w+)\s*:\s*(\w+)\s*;", content):
        words[int(addr)] = int(data, 16)
    return width, depth, [words[a] for a in range(depth)]


def unpack(words: list[int], bits: int, word_bits: int, count: int) -> np.ndarray:
    out = []
    for w in words:
        for lane in range(word_bits // bits):
            code = (w >> (bits * lane)) & ((1 << bits) - 1)
            out.append(code - (1 << bits) if code >= 1 << (bits - 1) else code)
    return np.array(out[:count], dtype=np.int64)


def check_fpga_files(folder: Path, net: IntegerNetwork) -> None:
    """Every layer's .mem, .coe and .mif decode (independently) to the network's weights."""
    manifest = json.loads((folder / "manifest.json").read_text())
    for layer, rec in zip(net.layers, manifest["layers"]):
        mem = rec["weight_memory"]
        bits, word = mem["weight_bits"], mem["word_bits"]
        want = np.asarray(layer.weight, dtype=np.int64).reshape(-1)
        w_mem = parse_mem_words((folder / mem["files"]["mem"]).read_text())
        radix, w_coe = parse_coe_words((folder / mem["files"]["coe"]).read_text())
        width, depth, w_mif = parse_mif_words((folder / mem["files"]["mif"]).read_text())
        assert radix == 16 and width == word and depth == mem["depth"]
        assert w_mem == w_coe == w_mif
        assert len(w_mem) == mem["depth"]
        assert all(0 <= w < (1 << word) for w in w_mem)
        assert np.array_equal(unpack(w_mem, bits, word, want.size), want)
        # the padding the manifest states is zeros
        tail = unpack(w_mem, bits, word, len(w_mem) * (word // bits))[want.size :]
        assert len(tail) == mem["padding_weights"] and not tail.any()
        # threshold / bias tables
        theta = parse_mem_words((folder / rec["threshold_memory"]["file"]).read_text())
        assert theta == [int(t) for t in layer.threshold]
        bias_codes = parse_mem_words((folder / rec["bias_memory"]["file"]).read_text())
        bb = rec["bias_memory"]["width"]
        assert [c - (1 << bb) if c >= 1 << (bb - 1) else c for c in bias_codes] == [int(b) for b in layer.bias]
        assert parse_mem_words((folder / rec["leak_memory"]["file"]).read_text()) == [int(layer.leak_const)]


@pytest.mark.parametrize("word_bits", [8, 16, 32, 64, 128, 36])
def test_fpga_word_widths_and_independent_parsers(tmp_path, word_bits):
    net = tiny_net(FPGA, seed=5)
    out = write_target("fpga", net, tmp_path / "fpga", word_bits=word_bits)
    check_fpga_files(out, net)
    manifest = read_manifest(out)
    per = word_bits // 4
    for layer, rec in zip(net.layers, manifest["layers"]):
        mem = rec["weight_memory"]
        assert mem["weights_per_word"] == per and mem["width"] == word_bits
        assert mem["bits"] == mem["depth"] * word_bits == 4 * (layer.weight.size + mem["padding_weights"])
        assert 0 <= mem["padding_weights"] < per
    assert_same_network(net, read_target(out))


@pytest.mark.parametrize("weight_bits", range(2, 17))
def test_fpga_every_profile_weight_width_packs_by_default(tmp_path, weight_bits):
    """Every weight width the profile allows (``--profile-set weight_bits=b``, 2..16) gets tables with
    the default options: words of ⌊32/b⌋ whole weights (no unused bits), weights reaching ±(2^(b−1)−1)
    decoded independently from .mem/.coe/.mif and read back equal (3, 5, 6, 7 and 9..15 bits were
    refused with 'word_bits=32 must be a multiple of the weight width', an option the CLI cannot set)."""
    profile = FPGA.replace(weight_bits=weight_bits)
    net = tiny_net(profile, seed=weight_bits)
    rng = np.random.default_rng(weight_bits)
    layers = tuple(
        dataclasses.replace(
            layer, weight=rng.integers(-profile.weight_max, profile.weight_max + 1, layer.weight.shape).astype(np.int16)
        )
        for layer in net.layers
    )
    layers[0].weight.reshape(-1)[:2] = [profile.weight_max, -profile.weight_max]
    net = dataclasses.replace(net, layers=layers)
    out = write_target("fpga", net, tmp_path / "fpga")
    check_fpga_files(out, net)
    for rec in read_manifest(out)["layers"]:
        mem = rec["weight_memory"]
        assert mem["word_bits"] == weight_bits * (32 // weight_bits) and mem["weights_per_word"] == 32 // weight_bits
    assert_same_network(net, read_target(out))


def test_fpga_packing_order_documented_example(tmp_path):
    """First weight in the least significant nibble, (out, in, ky, kx) order, zero padding."""
    w = np.zeros((3, 1, 3, 3), dtype=np.int8)
    w.reshape(-1)[:10] = [1, -1, 2, -2, 3, -3, 7, -7, 5, 0]
    base = tiny_net(FPGA)
    layer = dataclasses.replace(
        base.layers[0],
        weight=w,
        threshold=base.layers[0].threshold[:3],
        bias=base.layers[0].bias[:3],
        scale=base.layers[0].scale[:3],
    )
    conv2 = dataclasses.replace(base.layers[1], weight=base.layers[1].weight[:, :3])
    net = dataclasses.replace(base, layers=(layer, conv2, base.layers[2]))
    out = write_target("fpga", net, tmp_path / "o")
    words = parse_mem_words((out / "L1_conv1_weights.mem").read_text())
    # lanes 0..7 = 1, -1(f), 2, -2(e), 3, -3(d), 7, -7(9)  →  read from the most significant nibble down
    assert words[0] == 0x97D3E2F1
    assert words[1] == 0x00000005
    assert len(words) == 4 and words[3] == 0  # 27 weights → 4 words, 5 padding slots
    assert read_manifest(out)["layers"][0]["weight_memory"]["padding_weights"] == 5


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("word_bits", [32, 8])
def test_fpga_c_header_compiles_and_unpacks(tmp_path, word_bits):
    net = tiny_net(FPGA, seed=7)
    out = write_target("fpga", net, tmp_path / "fpga", word_bits=word_bits)
    prog = tmp_path / "main.c"
    lines = ["#include <stdio.h>", '#include "qsnn_model.h"', "int main(void) {"]
    for i in range(1, len(net.layers) + 1):
        lines += [
            f'  for (uint32_t n = 0; n < QSNN_L{i}_WEIGHT_COUNT; n++) printf("%d ", qsnn_weight(qsnn_l{i}_weights, n));',
            '  printf("\\n");',
            f'  for (int c = 0; c < QSNN_L{i}_OUT_CHANNELS; c++) printf("%d:%d ", (int)qsnn_l{i}_threshold[c], (int)qsnn_l{i}_bias[c]);',
            '  printf("\\n");',
        ]
    lines += [
        '  printf("%d %d %d %d\\n", QSNN_MEMBRANE_BITS, QSNN_FRAC_BITS, QSNN_LEAK_BITS, QSNN_RESET_SUBTRACT);',
        "  return 0;",
        "}",
    ]
    prog.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "main"
    subprocess.run(
        ["cc", "-std=c99", "-Wall", "-Werror", "-I", str(out), str(prog), "-o", str(exe)],
        check=True,
        capture_output=True,
    )
    rows = subprocess.run([str(exe)], check=True, capture_output=True, text=True).stdout.splitlines()
    for i, layer in enumerate(net.layers):
        assert [int(v) for v in rows[2 * i].split()] == [int(v) for v in layer.weight.reshape(-1)]
        assert rows[2 * i + 1].split() == [f"{int(t)}:{int(b)}" for t, b in zip(layer.threshold, layer.bias)]
    assert rows[-1].split() == ["16", "6", "12", "1"]


# --------------------------------------------------------------------------------------------------
# Manifest and README


@pytest.mark.parametrize("target", ["fpga", "nir", "loihi2"])
def test_manifest_lists_every_file_with_sha256(tmp_path, target):
    net = tiny_net(PROFILE_OF[target])
    out = write_target(target, net, tmp_path / "t", source_info={"checkpoint": "x.pt"})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["target"] == target
    assert manifest["profile"] == net.profile.to_dict()
    assert manifest["source"] == {"checkpoint": "x.pt"}
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "manifest.json")
    assert sorted(manifest["files"]) == on_disk
    assert "README.md" in on_disk
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"]
    for layer, rec in zip(net.layers, manifest["layers"]):
        assert rec["weight_shape"] == list(layer.weight.shape)
        assert rec["kind"] == layer.kind and rec["pool"] == layer.pool
        assert rec["current_shift"] == layer.current_shift
        assert rec["scale"] == [float(s) for s in layer.scale]
    readme = (out / "README.md").read_text()
    assert len(readme) > 500 and "manifest.json" in readme
    assert not list(tmp_path.glob(".t.*"))  # no temporary siblings left


def test_read_target_rejects_changed_or_foreign_folders(tmp_path):
    out = write_target("fpga", tiny_net(), tmp_path / "f")
    mem = out / "L2_conv2_weights.mem"
    text = mem.read_text().splitlines()
    text[-1] = "%08x" % (int(text[-1], 16) ^ 1)
    mem.write_text("\n".join(text) + "\n")
    with pytest.raises(ExportError, match="SHA-256"):
        read_target(out)
    (out / "manifest.json").unlink()
    with pytest.raises(ExportError, match="manifest"):
        read_target(out)


# --------------------------------------------------------------------------------------------------
# Format specifics


def test_loihi2_netx_layout(tmp_path):
    import h5py

    net = tiny_net(LOIHI2, uniform_theta=True)
    out = write_target("loihi2", net, tmp_path / "l")
    with h5py.File(out / "network.net", "r") as f:
        types = [f["layer"][k]["type"][()].decode() for k in sorted(f["layer"], key=int)]
        assert types == ["input", "conv", "conv", "flatten", "dense"]
        assert int(f["simulation/tSample"][()]) == net.num_steps
        for key, layer in zip(("1", "2", "4"), net.layers):
            g = f["layer"][key]
            n = g["neuron"]
            assert n["type"][()].decode() == "CUBA"
            assert int(n["iDecay"][()]) == 4096  # du = iDecay - 1 = 4095
            assert int(n["vDecay"][()]) == layer.leak_const
            assert int(n["vThMant"][()]) == int(layer.threshold[0]) >> 6
            assert int(n["refDelay"][()]) == 1 and not bool(n["gradedSpike"][()])
            assert list(g["shape"][()]) == list(net.shapes()[net.layers.index(layer)])
            assert np.array_equal(g["bias"][()], layer.bias >> 6)
            w = g["weight"][()]
            if layer.kind == "conv":
                k = layer.kernel + layer.pool - 1
                assert list(g["kernelSize"][()]) == [k, k] and list(g["stride"][()]) == [layer.pool] * 2
                assert np.array_equal(w, loihi2_target.fold_pool(layer.weight, layer.pool))
            else:
                assert np.array_equal(w, layer.weight)
        assert "neuron" not in f["layer/0"]  # no Input block: graded input goes to layer/1
    manifest = read_manifest(out)
    assert manifest["netx"]["input_message_bits"] == 8
    assert manifest["lava"]["run_cfg"] == "Loihi2SimCfg(select_tag='fixed_pt')"
    assert np.load(out / "example_input.npy").shape == net.input_shape  # zeros: no sample was given
    readme = (out / "README.md").read_text()
    assert "input_message_bits=8" in readme and 'select_tag="fixed_pt"' in readme


def test_loihi2_netx_stride_padding_and_dense_only(tmp_path):
    """A conv of stride s, padding pad and P×P pooling is a netx conv of kernel k+s(P−1), stride s·P, padding
    pad; a dense-only net is input → flatten → dense → dense."""
    import h5py

    net = stack_net(LOIHI2, "conv3_s2p1")
    out = write_target("loihi2", net, tmp_path / "c")
    with h5py.File(out / "network.net", "r") as f:
        types = [f["layer"][k]["type"][()].decode() for k in sorted(f["layer"], key=int)]
        assert types == ["input", "conv", "conv", "conv", "flatten", "dense"]
        for key, layer, shape in zip(("1", "2", "3"), net.layers, net.shapes()):
            g = f["layer"][key]
            side = layer.kernel + layer.stride * (layer.pool - 1)
            assert list(g["kernelSize"][()]) == [side, side]
            assert list(g["stride"][()]) == [layer.stride * layer.pool] * 2
            assert list(g["padding"][()]) == [layer.padding] * 2
            assert list(g["shape"][()]) == list(shape)
            assert np.array_equal(
                g["weight"][()], loihi2_target.fold_pool(layer.weight, layer.pool, stride=layer.stride)
            )
            # Lava's output side on the padded input equals the pooled conv's
            h = 14 if key == "1" else net.shapes()[int(key) - 2][1]
            assert (h + 2 * layer.padding - side) // (layer.stride * layer.pool) + 1 == shape[1]
    rows = {r["name"]: r for r in read_manifest(out)["layers"]}
    assert rows["conv2"]["netx_stride"] == [4, 4] and rows["conv2"]["netx_padding"] == [1, 1]
    assert "| 4 / 1 |" in (out / "README.md").read_text()
    dense = write_target("loihi2", stack_net(LOIHI2, "dense3"), tmp_path / "d")
    with h5py.File(dense / "network.net", "r") as f:
        types = [f["layer"][k]["type"][()].decode() for k in sorted(f["layer"], key=int)]
        assert types == ["input", "flatten", "dense", "dense", "dense"]
        assert list(f["layer/1/shape"][()]) == [196]


def test_loihi2_reader_checks_stride_and_padding(tmp_path):
    import h5py

    out = write_target("loihi2", stack_net(LOIHI2, "conv3_s2p1"), tmp_path / "c")
    os.chmod(out / "network.net", 0o644)
    with h5py.File(out / "network.net", "r+") as f:
        f["layer/2/padding"][...] = [0, 0]
    with pytest.raises(ExportError, match=r"layer/2 has netx stride \[4, 4\] and padding \[0, 0\]"):
        loihi2_target.read(out)


@pytest.mark.parametrize(
    "change, limit",
    [
        (dict(current_shift=4), "current shift 4"),  # netx/Lava: always a_in << 6
        (dict(weight_exp=1), "weight exponent 1"),  # no place for one in netx
        (dict(bias_add=5), "not a multiple of 64"),  # netx's fixed bias exponent 6
        (dict(bias_add=64 * 5000), "largest bias"),  # 13-bit bias mantissa
        (dict(weight_scale=6), "pooling folded in"),  # folded taps beyond 8 bits
        (dict(threshold_add=64 * 140000), "largest threshold"),  # 17-bit vth
        (dict(leak_const=4096), "12-bit dv"),
    ],
)
def test_loihi2_refuses_what_stock_lava_cannot_run(tmp_path, change, limit):
    net = tiny_net(LOIHI2, uniform_theta=False)
    first = net.layers[0]
    fields = {k: v for k, v in change.items() if k in ("current_shift", "weight_exp", "leak_const")}
    if "bias_add" in change:
        fields["bias"] = first.bias + change["bias_add"]
    if "threshold_add" in change:
        fields["threshold"] = first.threshold + change["threshold_add"]
    if "weight_scale" in change:
        fields["weight"] = (first.weight.astype(np.int64) * change["weight_scale"]).clip(-127, 127).astype(np.int8)
    net = dataclasses.replace(net, layers=(dataclasses.replace(first, **fields), *net.layers[1:]))
    with pytest.raises(ProfileError, match="conv1") as err:
        write_target("loihi2", net, tmp_path / "l")
    assert limit in str(err.value)
    assert not (tmp_path / "l").exists() and not any(tmp_path.iterdir())  # no partial folder


def test_loihi2_refuses_networks_beyond_loihi_limits(tmp_path):
    wide = tiny_net(LOIHI2, uniform_theta=True)
    fc = wide.layers[2]
    big = IntegerLayer(
        "fc",
        "dense",
        np.ones((9000, 24), dtype=np.int8),
        1,
        6,
        np.full(9000, 64 * 500),
        np.zeros(9000, dtype=np.int64),
        fc.leak_const,
        np.full(9000, 1e-3),
    )
    net = dataclasses.replace(wide, layers=(*wide.layers[:2], big), classes=tuple(str(i) for i in range(9000)))
    with pytest.raises(ProfileError, match=r"layer 3 \(fc\): 9000 neurons .* 8192 neurons per layer"):
        write_target("loihi2", net, tmp_path / "l")
    assert not any(tmp_path.iterdir())


def test_fold_unfold_pool_inverse():
    rng = np.random.default_rng(0)
    for pool in (1, 2, 3):
        w = rng.integers(-7, 8, size=(5, 3, 4, 4))
        folded = loihi2_target.fold_pool(w, pool)
        assert folded.shape[2] == 4 + pool - 1
        assert np.array_equal(loihi2_target.unfold_pool(folded, pool), w)
        for stride in (2, 3, 5):  # a strided conv: kernel k+s(p-1), taps s apart
            folded = loihi2_target.fold_pool(w, pool, stride=stride)
            assert folded.shape[2] == 4 + stride * (pool - 1)
            assert np.array_equal(loihi2_target.unfold_pool(folded, pool, stride=stride), w)
    bad = loihi2_target.fold_pool(rng.integers(-7, 8, size=(2, 2, 3, 3)), 2)
    bad[0, 0, -1, -1] += 1
    with pytest.raises(ValueError):
        loihi2_target.unfold_pool(bad, 2)


def test_nir_graph_nodes_and_metadata(tmp_path):
    import nir

    from qsnn.network import fold_pool

    net = tiny_net(FPGA, seed=2)
    out = write_target("nir", net, tmp_path / "n")
    graph = nir.read(out / "network.nir")
    kinds = {name: type(node).__name__ for name, node in graph.nodes.items()}
    assert kinds == {
        "input": "Input",
        "conv1": "Conv2d",
        "conv1_lif": "LIF",
        "conv2": "Conv2d",
        "conv2_lif": "LIF",
        "fc_flatten": "Flatten",
        "fc": "Affine",
        "fc_lif": "LIF",
        "output": "Output",
    }
    dt = 1e-4
    assert graph.metadata["dt"] == dt and graph.metadata["qsnn_flavor"] == "standard"
    beta = net.layers[0].leak_const / 4096
    lif = graph.nodes["conv1_lif"]
    assert lif.tau.shape == (4, 6, 6)  # per-neuron parameters
    assert np.allclose(1 - dt / lif.tau, beta) and np.all(lif.r == 1.0)
    assert np.all(lif.v_threshold == 1.0) and np.all(lif.v_leak == 0) and np.all(lif.v_reset == 0)
    conv = graph.nodes["conv1"]  # the 2x2 sum-pool folded into a stride-2 kernel
    assert tuple(np.asarray(conv.stride).reshape(-1)) in ((2,), (2, 2)) and conv.weight.shape[-1] == 3 + 2 - 1
    theta = net.layers[0].threshold.astype(float)
    w = conv.weight * theta[:, None, None, None] * (1 - beta) / 2.0**6
    assert np.allclose(w, fold_pool(net.layers[0].weight, 2))
    flat = graph.nodes["fc_flatten"]
    assert (flat.start_dim, flat.end_dim) == (-3, -1) and list(flat.output_type["output"]) == [6 * 2 * 2]
    assert "subtract" in graph.metadata["qsnn_reset"]
    assert "zero reset" in graph.metadata["qsnn_differences"]
    manifest = read_manifest(out)
    assert any("reset" in d for d in manifest["differences"]) and manifest["nir"]["dt"] == dt


def test_nir_graph_of_strided_padded_and_dense_only_nets(tmp_path):
    import nir

    from qsnn.network import fold_pool

    net = stack_net(FPGA, "conv3_s2p1", seed=2)
    graph = nir.read(write_target("nir", net, tmp_path / "c") / "network.nir")  # type-checks every edge
    assert [type(graph.nodes[n]).__name__ for n in ("conv1", "conv2", "conv3", "dense4_flatten", "dense4")] == [
        "Conv2d",
        "Conv2d",
        "Conv2d",
        "Flatten",
        "Affine",
    ]
    for layer, shape in zip(net.layers[:3], net.shapes()):
        conv = graph.nodes[layer.name]
        assert tuple(np.asarray(conv.stride).reshape(-1)) == (layer.stride * layer.pool,) * 2
        assert tuple(np.asarray(conv.padding).reshape(-1)) == (layer.padding,) * 2
        assert list(conv.output_type["output"]) == list(shape)
        beta = layer.leak_const / 4096
        w = conv.weight * layer.threshold.astype(float)[:, None, None, None] * (1 - beta) / 2.0**layer.current_shift
        assert np.allclose(w, fold_pool(layer.weight, layer.pool, stride=layer.stride))
    dense = stack_net(FPGA, "dense2")
    graph = nir.read(write_target("nir", dense, tmp_path / "d") / "network.nir")
    assert [e for e in graph.edges] == [
        ("input", "dense1_flatten"),
        ("dense1_flatten", "dense1"),
        ("dense1", "dense1_lif"),
        ("dense1_lif", "dense2"),
        ("dense2", "dense2_lif"),
        ("dense2_lif", "output"),
    ]
    assert "pooling" not in graph.metadata["qsnn_differences"]


@pytest.mark.parametrize("flavor", ["standard", "spyx", "sinabs"])
def test_nir_flavours_round_trip(tmp_path, flavor):
    """Every flavour reads back to the same integer network, spike for spike."""
    import h5py

    net = tiny_net(FPGA, seed=3)
    out = write_target("nir", net, tmp_path / flavor, flavor=flavor)
    back = read_target(out)
    assert_same_network(net, back)
    assert_same_spikes(net, back, images())
    manifest = read_manifest(out)
    assert manifest["options"] == {"flavor": flavor}
    with h5py.File(out / "network.nir") as f:
        names = []
        f.visit(names.append)
    assert any(n.endswith("v_reset") for n in names) == (flavor != "sinabs")  # nir <= 1.0.4 rejects the field


def test_nir_flavour_unknown(tmp_path):
    with pytest.raises(ProfileError, match="unknown NIR flavour 'lava'.*standard"):
        write_target("nir", tiny_net(FPGA), tmp_path / "x", flavor="lava")


# --------------------------------------------------------------------------------------------------
# Fit checks: the layer and the limit are named


def _swap_layer(net: IntegerNetwork, index: int, **changes) -> IntegerNetwork:
    layers = list(net.layers)
    layers[index] = dataclasses.replace(layers[index], **changes)
    return dataclasses.replace(net, layers=tuple(layers))


def test_fit_weight_bits(tmp_path):
    net = tiny_net(FPGA)
    w = net.layers[1].weight.copy()
    w[0, 0, 0, 0] = 9
    with pytest.raises(ProfileError, match=r"layer 2 \(conv2\).*\|9\|.*4-bit"):
        write_target("fpga", _swap_layer(net, 1, weight=w), tmp_path / "a")
    # an 8-bit network asked into 4-bit weight memories
    wide = tiny_net(FPGA.replace(weight_bits=8))
    w = wide.layers[0].weight.astype(np.int16) * 10
    wide = _swap_layer(wide, 0, weight=w.astype(np.int8))
    with pytest.raises(ProfileError, match=r"layer 1 \(conv1\).*4-bit"):
        write_target("fpga", wide, tmp_path / "b", weight_bits=4)
    write_target("fpga", wide, tmp_path / "c")  # 8-bit memories are fine
    # Loihi: 8-bit weights
    lo = tiny_net(LOIHI2)
    w = lo.layers[2].weight.astype(np.int16)
    w[1, 3] = 200
    with pytest.raises(ProfileError, match=r"layer 3 \(fc\).*\|200\|.*8-bit"):
        write_target("loihi2", _swap_layer(lo, 2, weight=w), tmp_path / "d")
    # a profile widened beyond what the target stores (qsnn-export --to loihi2 --profile-set weight_bits=9):
    # the fix is to undo the change, not to widen once more
    lo9 = _swap_layer(tiny_net(LOIHI2.replace(weight_bits=9)), 2, weight=w)
    found = target_problems("loihi2", lo9)
    assert len(found) == 1 and "|200|" in found[0] and "--profile-set weight_bits=8 (or fewer)" in found[0], found
    assert "weight_bits=9)" not in found[0]
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "d").exists()


def test_fit_neurons_and_fan_in(tmp_path):
    rng = np.random.default_rng(0)
    ones = lambda n: np.full(n, 64 * 10, dtype=np.int64)  # noqa: E731
    big = IntegerLayer(
        "wide",
        "conv",
        rng.integers(-7, 8, size=(64, 1, 3, 3)).astype(np.int8),
        1,
        6,
        ones(64),
        np.zeros(64, dtype=np.int64),
        700,
        np.ones(64),
    )
    fc = IntegerLayer(
        "fc",
        "dense",
        rng.integers(-7, 8, size=(2, 64 * 26 * 26)).astype(np.int8),
        1,
        6,
        ones(2),
        np.zeros(2, dtype=np.int64),
        700,
        np.ones(2),
    )
    net = IntegerNetwork((big, fc), LOIHI2, (1, 28, 28), 4, "static", ("a", "b"))
    with pytest.raises(ProfileError, match=r"layer 1 \(wide\): 43264 neurons.*8192"):
        write_target("loihi2", net, tmp_path / "n")
    small = IntegerLayer(
        "c",
        "conv",
        rng.integers(-7, 8, size=(8, 1, 3, 3)).astype(np.int8),
        1,
        6,
        ones(8),
        np.zeros(8, dtype=np.int64),
        700,
        np.ones(8),
    )
    fc = IntegerLayer(
        "fc",
        "dense",
        rng.integers(-7, 8, size=(2, 8 * 26 * 26)).astype(np.int8),
        1,
        6,
        ones(2),
        np.zeros(2, dtype=np.int64),
        700,
        np.ones(2),
    )
    net = IntegerNetwork((small, fc), LOIHI2, (1, 28, 28), 4, "static", ("a", "b"))
    with pytest.raises(ProfileError, match=r"layer 2 \(fc\): fan-in 5408.*4096"):
        write_target("loihi2", net, tmp_path / "f")
    # the fpga target obeys the limits of the network's profile
    limited = dataclasses.replace(tiny_net(FPGA), profile=FPGA.replace(max_neurons=100))
    with pytest.raises(ProfileError, match=r"layer 1 \(conv1\): 144 neurons.*100"):
        write_target("fpga", limited, tmp_path / "g")


def test_fit_thresholds_and_arithmetic(tmp_path):
    net = tiny_net(FPGA)
    theta = net.layers[2].threshold.copy()
    theta[0] = 70000
    with pytest.raises(ProfileError, match=r"layer 3 \(fc\): threshold 70000.*65535"):
        write_target("nir", _swap_layer(net, 2, threshold=theta), tmp_path / "t")
    lo = tiny_net(LOIHI2)
    theta = lo.layers[0].threshold.copy()
    theta[1] += 1
    with pytest.raises(ProfileError, match=r"layer 1 \(conv1\): threshold .* multiple of 64"):
        write_target("loihi2", _swap_layer(lo, 0, threshold=theta), tmp_path / "u")
    with pytest.raises(ProfileError, match=r"profile 'fpga'.*leak='mul'.*loihi2 profile"):
        write_target("loihi2", tiny_net(FPGA), tmp_path / "v")
    with pytest.raises(ProfileError, match=r"'loihi' leak"):
        write_target("fpga", tiny_net(LOIHI2), tmp_path / "w")
    with pytest.raises(ProfileError, match="unknown target"):
        write_target("spinnaker", net, tmp_path / "x")
    with pytest.raises(ProfileError, match="no option"):
        write_target("nir", net, tmp_path / "y", word_bits=32)
    with pytest.raises(ProfileError, match="word_bits=30"):
        write_target("fpga", net, tmp_path / "z", word_bits=30)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------------
# The output folder: refused when it exists, replaced only with force, nothing partial on failure


def _tree(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_existing_outdir_needs_force(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists.*--force"):
        write_target("fpga", tiny_net(), out)
    assert _tree(out) == {"keep.txt": b"mine"}
    # --force replaces only what qsnn wrote: a folder holding the user's file is refused, the file kept
    with pytest.raises(ExportError, match="1 other entry: keep.txt"):
        write_target("fpga", tiny_net(seed=1), out, force=True)
    assert _tree(out) == {"keep.txt": b"mine"}
    (out / "keep.txt").unlink()
    write_target("fpga", tiny_net(seed=1), out, force=True)
    assert_same_network(tiny_net(seed=1), read_target(out))
    # force over a complete target folder
    write_target("nir", tiny_net(seed=2), out, force=True)
    assert read_manifest(out)["target"] == "nir"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_failure_leaves_no_partial_outdir(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = fpga_target.format_mif

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second layer's .mif: some files are already written
            raise OSError("disk full (injected)")
        return real(*args, **kwargs)

    monkeypatch.setattr(fpga_target, "format_mif", failing)
    with pytest.raises(OSError, match="injected"):
        write_target("fpga", tiny_net(), tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # neither OUTDIR nor a temporary sibling

    # with force over an existing folder: the old folder survives untouched
    monkeypatch.setattr(fpga_target, "format_mif", real)
    old = write_target("fpga", tiny_net(seed=4), tmp_path / "old")
    before = _tree(old)
    calls["n"] = 0
    monkeypatch.setattr(fpga_target, "format_mif", failing)
    with pytest.raises(OSError, match="injected"):
        write_target("fpga", tiny_net(seed=5), old, force=True)
    assert _tree(old) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_nir_holds_a_loihi2_network_and_event_inputs(tmp_path):
    net = tiny_net(LOIHI2, seed=8)
    back = read_target(write_target("nir", net, tmp_path / "n"))
    assert_same_network(net, back)
    assert_same_spikes(net, back, images())
    # event-count input (N, T, C, H, W) through the fpga tables
    ev = tiny_net(FPGA, seed=9)
    conv1 = ev.layers[0]
    w = np.concatenate([conv1.weight, -conv1.weight], axis=1)  # 2 polarity channels
    ev = dataclasses.replace(
        ev, layers=(dataclasses.replace(conv1, weight=w), *ev.layers[1:]), input_shape=(2, 14, 14), encoding="events"
    )
    back = read_target(write_target("fpga", ev, tmp_path / "e"))
    assert back.encoding == "events" and back.input_shape == (2, 14, 14)
    x = np.random.default_rng(0).integers(0, 4, size=(10, ev.num_steps, 2, 14, 14)).astype(np.uint8)
    assert_same_spikes(ev, back, x)


def test_summarize_rows(tmp_path):
    from qsnn.targets import summarize

    out = write_target("fpga", tiny_net(), tmp_path / "s")
    rows = dict(summarize(out))
    assert rows["target"] == "fpga" and rows["profile"] == "fpga"
    assert "36 × 4 bit in 5 × 32-bit words (160 bits, 4 padding)" == rows["conv1 weights"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask  # not mkdtemp's 0700


FAN_IN_CASES = {  # (stack on 1×14×14, limit, the layer over it): what each one-line fix must make fit
    "conv_then_dense": ([("conv", 20, 3, 1, 0, 1), ("dense", 3)], 200, 2),
    "conv_then_conv": ([("conv", 12, 3, 1, 1, 1), ("conv", 2, 5, 2, 0, 1), ("dense", 3)], 200, 2),
    "dense_then_dense": ([("dense", 300), ("dense", 3)], 200, 2),
    "pooled_conv_folded": ([("conv", 12, 3, 1, 1, 1), ("conv", 2, 3, 1, 0, 2), ("dense", 3)], 150, 2),
}
NEURON_CASES = {  # (stack on 1×14×14, max_neurons, the layer over it)
    "conv": ([("conv", 16, 3, 1, 0, 1), ("dense", 3)], 1000, 1),
    "strided_conv": ([("conv", 4, 3, 1, 1, 1), ("conv", 40, 3, 2, 1, 1), ("dense", 3)], 1500, 2),
    "dense": ([("dense", 300), ("dense", 3)], 200, 1),
}


@pytest.mark.parametrize("case", [f"fan-in:{c}" for c in sorted(FAN_IN_CASES)] + [f"neurons:{c}" for c in NEURON_CASES])
def test_fan_in_refusal_names_the_smallest_change_that_fits(monkeypatch, case):
    """A fan-in or a layer size beyond the target's limit (Loihi 2: 4096 synapses, 8192 neurons; raising
    max_fan_in or max_neurons only moves the refusal to the target) names the network change that fits:
    at most N channels (neurons) in the layer named, the smallest such change (N + 1 does not fit), or
    that layer's map pooled by f; each applied here and checked by the same rule."""
    from qsnn.targets.fit import Limits, fit_problems

    kind, name = case.split(":")
    stack, limit, over = (FAN_IN_CASES if kind == "fan-in" else NEURON_CASES)[name]
    field = {"fan-in": "max_fan_in", "neurons": "max_neurons"}[kind]
    limits = Limits("loihi2", 8, fold_pool=name.endswith("folded"), **{field: limit})

    def fan_in_problems(layers):
        monkeypatch.setitem(STACKS, "probe", layers)
        return [p for p in fit_problems(stack_net(FPGA, "probe"), limits) if f"({field})" in p]

    (found,) = fan_in_problems(stack)
    assert found.startswith(f"layer {over} (") and f"limit of {limit} " in found, found
    fixes = 0
    for most, name in re.findall(r"at most (\d+) (?:channels|neurons) in layer (\w+)", found):
        before = int(name[-1]) - 1  # stack_net names layers kind + index
        assert int(most) < stack[before][1]
        for n, fits in ((int(most), True), (int(most) + 1, False)):
            changed = [*stack[:before], (stack[before][0], n, *stack[before][2:]), *stack[before + 1 :]]
            assert (not fan_in_problems(changed)) is fits, (found, n)
        fixes += 1
    for name, f in re.findall(r"map of layer (\w+) pooled by (\d+)", found):
        before = int(name[-1]) - 1
        assert stack[before][0] == "conv"
        assert not fan_in_problems([*stack[:before], (*stack[before][:5], int(f)), *stack[before + 1 :]]), found
        fixes += 1
    assert fixes, found
