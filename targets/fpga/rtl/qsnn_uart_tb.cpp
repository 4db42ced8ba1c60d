// qsnn_uart_tb.cpp -- Verilator harness of the board top qsnn_uart_top: a host on the other end of
// the UART, driving the rx pin bit by bit and decoding the tx pin bit by bit (8N1).
//
//   qsnn_uart_tb TABLES_DIR INPUT.bin OUTPUT.bin CLKS_PER_BIT [MAX_CYCLES_PER_TRANSACTION]
//
// TABLES_DIR holds the qsnn_*.mem tables ($readmemh; the harness changes into it). CLKS_PER_BIT
// must be the value the model was built with (verilator -GCLKS_PER_BIT=...). Little-endian files:
//
// INPUT.bin   "QSNNUAI1", uint32 transactions; per transaction: uint32 n, n bytes the host sends
//             (start bit, 8 data bits LSB first, stop bit, back to back), uint32 m: the bytes of
//             the answer the host then waits for.
// OUTPUT.bin  "QSNNUAO1", uint32 transactions; per transaction: uint32 m' (bytes received), the
//             bytes, uint64 clock cycles from the first start bit to the last stop bit received.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>
#include <unistd.h>

#include "Vqsnn_uart_top.h"
#include "verilated.h"

namespace {

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "qsnn_uart_tb: %s\n", what);
    std::exit(2);
}

uint32_t read_u32(FILE* f) {
    uint32_t v;
    if (std::fread(&v, 4, 1, f) != 1) fail("input file is truncated");
    return v;
}

void write_raw(FILE* f, const void* p, size_t n) {
    if (std::fwrite(p, 1, n, f) != n) fail("cannot write the output file");
}

// The host's receiver: samples tx once per clock cycle.
struct Receiver {
    uint32_t cpb;
    int bit = -1;        // -1 idle, 0 start bit, 1..8 data bits, 9 stop bit
    uint32_t wait = 0;
    uint8_t shift = 0;
    bool step(bool tx, uint8_t& out) {
        if (bit < 0) {
            if (!tx) { bit = 0; wait = cpb / 2; }
            return false;
        }
        if (wait) { --wait; return false; }
        wait = cpb - 1;
        if (bit == 0) {
            if (tx) bit = -1;  // a glitch
            else bit = 1;
            return false;
        }
        if (bit <= 8) {
            shift = static_cast<uint8_t>((shift >> 1) | (tx ? 0x80 : 0));
            ++bit;
            return false;
        }
        bit = -1;
        if (!tx) fail("a frame from the top has no stop bit");
        out = shift;
        return true;
    }
};

}  // namespace

int main(int argc, char** argv) {
    if (argc < 5) fail("usage: qsnn_uart_tb TABLES_DIR INPUT.bin OUTPUT.bin CLKS_PER_BIT [MAX_CYCLES]");
    const uint32_t cpb = static_cast<uint32_t>(std::strtoul(argv[4], nullptr, 10));
    const uint64_t max_cycles = argc > 5 ? std::strtoull(argv[5], nullptr, 10) : 4000000000ull;
    if (cpb < 4) fail("CLKS_PER_BIT must be at least 4");

    FILE* in = std::fopen(argv[2], "rb");
    if (!in) fail("cannot open the input file");
    char magic[8];
    if (std::fread(magic, 1, 8, in) != 8 || std::memcmp(magic, "QSNNUAI1", 8) != 0) fail("not a qsnn_uart_tb input");
    const uint32_t transactions = read_u32(in);
    FILE* out = std::fopen(argv[3], "wb");
    if (!out) fail("cannot open the output file");
    if (chdir(argv[1]) != 0) fail("cannot change into the tables folder");

    auto ctx = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vqsnn_uart_top>(ctx.get());
    auto tick = [&]() {
        top->clk = 1;
        top->eval();
        top->clk = 0;
        top->eval();
    };
    top->clk = 0;
    top->rx = 1;
    top->eval();
    for (int i = 0; i < 32; ++i) tick();  // past the power-on reset

    write_raw(out, "QSNNUAO1", 8);
    write_raw(out, &transactions, 4);
    std::vector<uint8_t> send, got;
    Receiver rcv{cpb};
    for (uint32_t t = 0; t < transactions; ++t) {
        const uint32_t n = read_u32(in);
        send.resize(n);
        if (n && std::fread(send.data(), 1, n, in) != n) fail("input file is truncated");
        const uint32_t m = read_u32(in);
        got.clear();
        uint64_t cycles = 0;
        // the host's transmitter: bit b of byte i for cpb cycles each (10 bits a byte)
        const uint64_t send_cycles = static_cast<uint64_t>(n) * 10 * cpb;
        while (cycles < send_cycles || got.size() < m) {
            if (cycles < send_cycles) {
                const uint64_t bit_index = cycles / cpb;
                const uint32_t i = static_cast<uint32_t>(bit_index / 10), b = static_cast<uint32_t>(bit_index % 10);
                top->rx = b == 0 ? 0 : b == 9 ? 1 : (send[i] >> (b - 1)) & 1;
            } else {
                top->rx = 1;
            }
            tick();
            ++cycles;
            uint8_t byte;
            if (rcv.step(top->tx, byte)) got.push_back(byte);
            if (cycles > max_cycles + send_cycles) break;  // the answer is short: the caller says so
        }
        // the rest of the last stop bit, so that the next transaction starts on an idle line
        for (uint32_t i = 0; i < cpb; ++i) {
            top->rx = 1;
            tick();
            ++cycles;
            uint8_t byte;
            if (rcv.step(top->tx, byte)) got.push_back(byte);
        }
        const uint32_t k = static_cast<uint32_t>(got.size());
        write_raw(out, &k, 4);
        if (k) write_raw(out, got.data(), k);
        write_raw(out, &cycles, 8);
    }
    top->final();
    if (std::fclose(out) != 0) fail("cannot write the output file");
    std::fclose(in);
    return 0;
}
