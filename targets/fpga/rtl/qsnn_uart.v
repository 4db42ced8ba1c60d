// qsnn_uart.v -- 8N1 UART receiver and transmitter for the qsnn board top (qsnn_uart_top.v).
//
// One bit lasts CLKS_PER_BIT clock cycles (clock / baud rate, e.g. 25 MHz / 115200 = 217). The
// receiver synchronises rx with two flip-flops, finds the falling edge of the start bit, samples
// each bit in its middle and checks the stop bit (a frame with a low stop bit is dropped).
// Verilog-2005; Yosys, Icarus and Verilator accept it.
`default_nettype none

module qsnn_uart_rx #(parameter CLKS_PER_BIT = 217) (
  input  wire       clk,
  input  wire       rst,
  input  wire       rx,
  output reg        valid,    // one-cycle pulse: data holds a received byte
  output reg  [7:0] data
);
  localparam CW = $clog2(CLKS_PER_BIT + 1);
  reg [1:0] sync = 2'b11;
  reg [CW-1:0] cnt = 0;
  reg [3:0] bitn = 0;          // 0: idle, 1: start bit, 2..9: data bits, 10: stop bit
  reg [7:0] shift = 0;
  wire rxs = sync[1];

  always @(posedge clk) begin
    sync <= {sync[0], rx};
    valid <= 1'b0;
    if (rst) begin
      bitn <= 0;
      cnt <= 0;
    end else if (bitn == 0) begin
      if (!rxs) begin                       // falling edge: wait half a bit, then sample the start bit
        bitn <= 1;
        cnt <= CLKS_PER_BIT / 2;
      end
    end else if (cnt != 0) begin
      cnt <= cnt - 1'b1;
    end else begin
      cnt <= CLKS_PER_BIT - 1;
      if (bitn == 1) begin
        bitn <= rxs ? 4'd0 : 4'd2;          // a glitch, not a start bit
      end else if (bitn <= 9) begin
        shift <= {rxs, shift[7:1]};         // least significant bit first
        bitn <= bitn + 1'b1;
      end else begin
        bitn <= 0;
        if (rxs) begin
          valid <= 1'b1;
          data <= shift;
        end
      end
    end
  end
endmodule

module qsnn_uart_tx #(parameter CLKS_PER_BIT = 217) (
  input  wire       clk,
  input  wire       rst,
  input  wire       send,     // while ready: take data and transmit it
  input  wire [7:0] data,
  output wire       ready,
  output reg        tx = 1'b1
);
  localparam CW = $clog2(CLKS_PER_BIT + 1);
  reg [CW-1:0] cnt = 0;
  reg [3:0] bitn = 0;          // bits left to send (start, 8 data, stop)
  reg [8:0] shift = 9'h1ff;
  assign ready = (bitn == 0);

  always @(posedge clk) begin
    if (rst) begin
      bitn <= 0;
      tx <= 1'b1;
    end else if (bitn == 0) begin
      if (send) begin
        tx <= 1'b0;                         // start bit
        shift <= {1'b1, data};              // then data (LSB first) and the stop bit
        bitn <= 10;
        cnt <= CLKS_PER_BIT - 1;
      end
    end else if (cnt != 0) begin
      cnt <= cnt - 1'b1;
    end else begin
      bitn <= bitn - 1'b1;
      cnt <= CLKS_PER_BIT - 1;
      if (bitn != 1) begin
        tx <= shift[0];
        shift <= {1'b1, shift[8:1]};
      end
    end
  end
endmodule

`default_nettype wire
