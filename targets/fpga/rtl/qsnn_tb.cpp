// qsnn_tb.cpp -- Verilator harness of qsnn_core: feeds input events, records every layer's spikes.
//
//   qsnn_tb TABLES_DIR INPUT.bin OUTPUT.bin [MAX_CYCLES_PER_SAMPLE]
//
// TABLES_DIR holds the qsnn_*.mem files the core loads with $readmemh (the harness changes into it
// before the model starts). All files are little-endian.
//
// INPUT.bin   "QSNNIN01", uint32 samples, frames per sample (1 for a static image, T for events),
//             layers, classes; then per sample and frame: uint32 n, n x {uint16 c, y, x, uint16 0,
//             uint32 value} -- the nonzero inputs, in any order.
// OUTPUT.bin  "QSNNOUT1", uint32 samples, layers, classes; then per sample: uint64 cycles,
//             uint32 predicted class, uint32 counts[classes], uint32 saturation_low[layers],
//             uint32 saturation_high[layers], uint64 cycles[layers][2] (scatter, update),
//             uint64 other cycles, uint32 records, records x {uint16 step, uint16 layer,
//             uint32 word, uint64 mask}: every update word of every layer that spiked.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>
#include <unistd.h>

#include "Vqsnn_core.h"
#include "verilated.h"

namespace {

struct Event { uint16_t c, y, x, pad; uint32_t value; };
struct Record { uint16_t step, layer; uint32_t word; uint64_t mask; };

[[noreturn]] void fail(const char* what) {
    std::fprintf(stderr, "qsnn_tb: %s\n", what);
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

template <typename T> void put(FILE* f, T v) { write_raw(f, &v, sizeof v); }

}  // namespace

int main(int argc, char** argv) {
    if (argc < 4) fail("usage: qsnn_tb TABLES_DIR INPUT.bin OUTPUT.bin [MAX_CYCLES_PER_SAMPLE]");
    const uint64_t max_cycles = argc > 4 ? std::strtoull(argv[4], nullptr, 10) : 4000000000ull;

    FILE* in = std::fopen(argv[2], "rb");
    if (!in) fail("cannot open the input file");
    char magic[8];
    if (std::fread(magic, 1, 8, in) != 8 || std::memcmp(magic, "QSNNIN01", 8) != 0) fail("not a qsnn_tb input file");
    const uint32_t samples = read_u32(in), frames = read_u32(in), layers = read_u32(in), classes = read_u32(in);
    FILE* out = std::fopen(argv[3], "wb");
    if (!out) fail("cannot open the output file");
    if (chdir(argv[1]) != 0) fail("cannot change into the tables folder");

    auto ctx = std::make_unique<VerilatedContext>();
    auto top = std::make_unique<Vqsnn_core>(ctx.get());
    auto tick = [&]() {
        top->clk = 1;
        top->eval();
        top->clk = 0;
        top->eval();
    };
    top->clk = 0;
    top->rst = 1;
    top->start = 0;
    top->in_valid = 0;
    top->eval();
    tick();
    tick();
    top->rst = 0;

    write_raw(out, "QSNNOUT1", 8);
    put<uint32_t>(out, samples);
    put<uint32_t>(out, layers);
    put<uint32_t>(out, classes);

    std::vector<std::vector<Event>> frame_events(frames);
    std::vector<Record> records;
    std::vector<uint64_t> phase(2 * layers + 1);
    for (uint32_t s = 0; s < samples; ++s) {
        for (uint32_t f = 0; f < frames; ++f) {
            const uint32_t n = read_u32(in);
            frame_events[f].resize(n);
            if (n && std::fread(frame_events[f].data(), sizeof(Event), n, in) != n) fail("input file is truncated");
        }
        records.clear();
        std::fill(phase.begin(), phase.end(), 0);
        top->start = 1;
        tick();
        top->start = 0;
        uint64_t cycles = 1;
        uint32_t frame = 0;
        size_t next = 0;
        while (!top->done) {
            if (frame < frames) {
                const bool end = next == frame_events[frame].size();
                top->in_valid = 1;
                top->in_end = end;
                if (!end) {
                    const Event& e = frame_events[frame][next];
                    top->in_c = e.c;
                    top->in_y = e.y;
                    top->in_x = e.x;
                    top->in_val = e.value;
                }
            } else {
                top->in_valid = 0;
            }
            // (the monitor and in_ready depend on registers only: no evaluation needed here)
            const unsigned ph = top->mon_phase, ly = top->mon_layer;
            if (ph == 1 || ph == 2) phase[2 * ly + (ph - 1)]++;
            else phase[2 * layers]++;
            if (top->mon_valid)
                records.push_back({static_cast<uint16_t>(top->mon_step), static_cast<uint16_t>(top->mon_layer),
                                   static_cast<uint32_t>(top->mon_word), static_cast<uint64_t>(top->mon_mask)});
            const bool fire = top->in_valid && top->in_ready;
            tick();
            ++cycles;
            if (fire) {
                if (next == frame_events[frame].size()) { ++frame; next = 0; }
                else ++next;
            }
            if (cycles > max_cycles) fail("the core did not finish within the cycle limit");
        }
        top->in_valid = 0;
        put<uint64_t>(out, cycles);
        put<uint32_t>(out, static_cast<uint32_t>(top->pred));
        for (uint32_t a = 0; a < classes + 2 * layers; ++a) {
            top->rd_addr = a;
            top->eval();
            put<uint32_t>(out, static_cast<uint32_t>(top->rd_data));
        }
        for (uint64_t v : phase) put<uint64_t>(out, v);
        put<uint32_t>(out, static_cast<uint32_t>(records.size()));
        if (!records.empty()) write_raw(out, records.data(), records.size() * sizeof(Record));
    }
    top->final();
    if (std::fclose(out) != 0) fail("cannot write the output file");
    std::fclose(in);
    return 0;
}
