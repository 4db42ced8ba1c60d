// qsnn_tb.v -- a plain Verilog testbench of qsnn_core, for any simulator (Icarus: see README.md).
//
//   iverilog -g2005 -I . -o qsnn_tb.vvp qsnn_tb.v qsnn_core.v && vvp qsnn_tb.vvp +input=IN.hex +output=OUT.txt
//
// Run it in the folder that holds the qsnn_*.mem tables. IN.hex ($readmemh, one 64-bit word per
// beat): bits [63:62] kind (0 event, 1 end of frame, 2 end of sample, 3 end of input), then for
// an event c [61:48], y [47:34], x [33:20], value [19:0]. OUT.txt, one line per item:
//   S <sample> <cycles> <predicted class>           after each sample
//   R <step> <layer> <word> <mask, hex>              every update word that spiked
//   D <index> <value>                                status registers (counts, saturation)
`timescale 1ns / 1ps
`default_nettype none

module qsnn_tb;
`include "qsnn_params.vh"

  localparam MAX_BEATS = 1 << 20;

  reg clk = 1'b0, rst = 1'b1, start = 1'b0;
  reg in_valid = 1'b0, in_end = 1'b0;
  reg [IN_CW-1:0] in_c = 0;
  reg [IN_YW-1:0] in_y = 0;
  reg [IN_XW-1:0] in_x = 0;
  reg [IN_BITS-1:0] in_val = 0;
  reg [RD_AW-1:0] rd_addr = 0;
  wire busy, done, in_ready, mon_valid;
  wire [CLS_W-1:0] pred;
  wire [31:0] rd_data;
  wire [LYR_W-1:0] mon_layer;
  wire [STEP_W-1:0] mon_step;
  wire [A_AW-1:0] mon_word;
  wire [PAR-1:0] mon_mask;
  wire [1:0] mon_phase;

  qsnn_core dut (.clk(clk), .rst(rst), .start(start), .busy(busy), .done(done), .pred(pred),
                 .in_valid(in_valid), .in_ready(in_ready), .in_end(in_end), .in_c(in_c), .in_y(in_y),
                 .in_x(in_x), .in_val(in_val), .rd_addr(rd_addr), .rd_data(rd_data),
                 .mon_valid(mon_valid), .mon_layer(mon_layer), .mon_step(mon_step), .mon_word(mon_word),
                 .mon_mask(mon_mask), .mon_phase(mon_phase));

  always #5 clk = ~clk;

  reg [63:0] beats [0:MAX_BEATS-1];
  reg [8*1024-1:0] in_name, out_name;
  integer fd, b, sample, a;
  reg [63:0] cycles;

  // the monitor: sampled in the middle of every cycle, before the edge that ends it
  always @(negedge clk)
    if (!rst && mon_valid) $fwrite(fd, "R %0d %0d %0d %h\n", mon_step, mon_layer, mon_word, mon_mask);

  // cycles of an inference: the edge that takes start, and every edge until done rises
  always @(posedge clk)
    if (start) cycles <= 64'd1;
    else if (!done) cycles <= cycles + 64'd1;

  initial begin
    if (!$value$plusargs("input=%s", in_name)) in_name = "qsnn_tb_input.hex";
    if (!$value$plusargs("output=%s", out_name)) out_name = "qsnn_tb_output.txt";
    $readmemh(in_name, beats);
    fd = $fopen(out_name, "w");
    repeat (2) @(posedge clk);
    #1 rst = 1'b0;
    b = 0;
    sample = 0;
    while (beats[b][63:62] != 2'd3) begin
      @(negedge clk) start = 1'b1;
      @(negedge clk) start = 1'b0;
      while (beats[b][63:62] != 2'd2) begin
        // present the beat, wait for the edge that takes it
        in_valid = 1'b1;
        in_end   = (beats[b][63:62] == 2'd1);
        in_c     = beats[b][61:48];
        in_y     = beats[b][47:34];
        in_x     = beats[b][33:20];
        in_val   = beats[b][19:0];
        @(negedge clk);
        while (!in_ready) @(negedge clk);
        @(posedge clk);
        #1 b = b + 1;
      end
      in_valid = 1'b0;
      b = b + 1;
      while (!done) @(posedge clk);
      #1;
      $fwrite(fd, "S %0d %0d %0d\n", sample, cycles, pred);
      for (a = 0; a < NUM_CLASSES + 2 * NL; a = a + 1) begin
        rd_addr = a;
        #1 $fwrite(fd, "D %0d %0d\n", a, rd_data);
      end
      sample = sample + 1;
    end
    $fclose(fd);
    $finish;
  end
endmodule

`default_nettype wire
