// qsnn_uart_top.v -- a board top for qsnn_core: a static input image over a UART, one inference of
// T steps, the class and the output spike counts back over the UART.
//
// The same file serves every board and every network: the network is qsnn_params.vh and the
// qsnn_*.mem tables (qsnn-export --to fpga), the board is a constraint file (qsnn-fpga-pnr writes
// it: ULX3S, iCEBreaker) and CLKS_PER_BIT = clock / baud rate.
//
// Protocol (8N1, bytes; little-endian fields; N = IN_C*IN_H*IN_W, C = NUM_CLASSES):
//   host -> 'L' (0x4C), then N bytes: the input pixels in (c, y, x) order, each <= 2^IN_BITS - 1
//   top  -> 'K' (0x4B)                       when all N bytes are stored
//   host -> 'R' (0x52)                       run one inference (T = NUM_STEPS steps) on the stored image
//   top  -> 'D' (0x44), class (1 byte), C x uint16 output spike counts, uint32 core cycles
//   host -> 'I' (0x49)                       identify
//   top  -> 'Q' (0x51), uint16 IN_C, IN_H, IN_W, NUM_STEPS, uint8 C, uint8 PAR
//   any other byte while idle -> '?' (0x3F)
// A command is answered before the next one is read; bytes sent while an answer is pending are lost.
// The image stays stored: 'R' again runs it again. led[0] is lit while the core runs, led[4:1]
// show the last class (its low four bits).
//
// Input to the core: the stored pixels are scanned in (c, y, x) order, one per cycle, and every
// nonzero pixel is one input event (c, y, x, value) on the core's valid/ready port; a beat with
// in_end closes the frame (the core takes a single frame for a static image).
`default_nettype none

module qsnn_uart_top #(parameter CLKS_PER_BIT = 217) (
  input  wire       clk,
  input  wire       rx,
  output wire       tx,
  output wire [4:0] led
);

`include "qsnn_params.vh"

  localparam IN_N  = IN_C * IN_H * IN_W;
  localparam IN_AW = (IN_N > 1) ? $clog2(IN_N) : 1;
  localparam NBYTES_RUN = 2 + 2 * NUM_CLASSES + 4;     // 'D', class, counts, cycles
  localparam NBYTES_ID  = 11;                          // 'Q', 4 x uint16, 2 x uint8
  localparam RB_W = (NBYTES_RUN > NBYTES_ID) ? $clog2(NBYTES_RUN + 1) : $clog2(NBYTES_ID + 1);

  // ---------------------------------------------------------------------------------------------
  // Power-on reset (the FPGA's flip-flops start from their initial values)
  reg [3:0] por = 4'd0;
  wire rst = ~&por;
  always @(posedge clk) if (rst) por <= por + 1'b1;

  // ---------------------------------------------------------------------------------------------
  // UART
  wire       rx_valid;
  wire [7:0] rx_data;
  reg        tx_send = 1'b0;
  reg  [7:0] tx_byte = 8'd0;
  wire       tx_ready;
  qsnn_uart_rx #(.CLKS_PER_BIT(CLKS_PER_BIT)) u_rx (.clk(clk), .rst(rst), .rx(rx), .valid(rx_valid), .data(rx_data));
  qsnn_uart_tx #(.CLKS_PER_BIT(CLKS_PER_BIT)) u_tx (.clk(clk), .rst(rst), .send(tx_send), .data(tx_byte),
                                                    .ready(tx_ready), .tx(tx));

  // ---------------------------------------------------------------------------------------------
  // The input image (one block RAM: N words of IN_BITS)
  reg [IN_BITS-1:0] img [0:IN_N-1];
  reg [IN_AW-1:0]   wa = 0;                  // write address while loading
  reg [IN_AW-1:0]   ra = 0;                  // next address to read while scanning
  reg [IN_BITS-1:0] px = 0;                  // img[address of the pixel held], registered read

  // ---------------------------------------------------------------------------------------------
  // The core
  reg               start = 1'b0;
  wire              busy, done, in_ready, mon_valid;
  wire [CLS_W-1:0]  pred;
  reg  [RD_AW-1:0]  rd_addr = 0;
  wire [31:0]       rd_data;
  wire [LYR_W-1:0]  mon_layer;
  wire [STEP_W-1:0] mon_step;
  wire [A_AW-1:0]   mon_word;
  wire [PAR-1:0]    mon_mask;
  wire [1:0]        mon_phase;

  // the scan: (rc, ry, rx_) are the coordinates of ra, (pc, py, pxx) those of the pixel in px
  reg              scanning = 1'b0, pv = 1'b0, issued_all = 1'b0;
  reg [IN_CW-1:0]  rc = 0, pc = 0;
  reg [IN_YW-1:0]  ry = 0, py = 0;
  reg [IN_XW-1:0]  rxc = 0, pxc = 0;
  wire pix_event = pv && (px != {IN_BITS{1'b0}});
  wire in_valid  = scanning && (pix_event || (!pv && issued_all));
  wire in_end    = !pv;
  // the held pixel is gone (consumed, zero or none) and the next one may be read
  wire scan_adv  = scanning && !(!pv && issued_all) && (!pv || !pix_event || in_ready);

  qsnn_core core (.clk(clk), .rst(rst), .start(start), .busy(busy), .done(done), .pred(pred),
                  .in_valid(in_valid), .in_ready(in_ready), .in_end(in_end), .in_c(pc), .in_y(py),
                  .in_x(pxc), .in_val(px), .rd_addr(rd_addr), .rd_data(rd_data),
                  .mon_valid(mon_valid), .mon_layer(mon_layer), .mon_step(mon_step), .mon_word(mon_word),
                  .mon_mask(mon_mask), .mon_phase(mon_phase));

  always @(posedge clk) begin
    if (rst || !scanning) begin
      ra <= 0; rc <= 0; ry <= 0; rxc <= 0;
      pv <= 1'b0;
      issued_all <= 1'b0;
    end else if (scan_adv) begin
      if (issued_all) begin
        pv <= 1'b0;
      end else begin
        pv <= 1'b1;
        pc <= rc; py <= ry; pxc <= rxc;
        ra <= ra + 1'b1;
        if (ra == IN_N - 1) issued_all <= 1'b1;
        if (rxc == IN_W - 1) begin
          rxc <= 0;
          if (ry == IN_H - 1) begin
            ry <= 0;
            rc <= rc + 1'b1;
          end else begin
            ry <= ry + 1'b1;
          end
        end else begin
          rxc <= rxc + 1'b1;
        end
      end
    end
  end

  // ---------------------------------------------------------------------------------------------
  // Command sequencer
  localparam [2:0] C_IDLE = 3'd0, C_LOAD = 3'd1, C_RUN = 3'd2, C_SEND = 3'd3;
  reg [2:0]      cmd = C_IDLE;
  reg [7:0]      reply = 8'd0;             // the command being answered
  reg [RB_W-1:0] nb = 0;                   // bytes of the answer sent
  reg [RB_W-1:0] nlen = 0;                 // bytes of the answer
  reg [31:0]     cycles = 32'd0;
  reg [3:0]      last_class = 4'd0;
  wire load_we = (cmd == C_LOAD) && rx_valid;

  // byte nb of the answer to `reply`
  reg [7:0] abyte;
  always @* begin
    abyte = 8'h3F;
    rd_addr = 0;
    if (reply == 8'h52) begin
      if (nb == 0) abyte = 8'h44;
      else if (nb == 1) abyte = pred;
      else if (nb < 2 + 2 * NUM_CLASSES) begin
        rd_addr = (nb - 2) >> 1;
        abyte = nb[0] ? rd_data[15:8] : rd_data[7:0];
      end else begin
        case (nb - (2 + 2 * NUM_CLASSES))
          0: abyte = cycles[7:0];
          1: abyte = cycles[15:8];
          2: abyte = cycles[23:16];
          default: abyte = cycles[31:24];
        endcase
      end
    end else if (reply == 8'h4C) begin
      abyte = 8'h4B;
    end else if (reply == 8'h49) begin
      case (nb)
        0: abyte = 8'h51;
        1: abyte = IN_C[7:0];
        2: abyte = IN_C[15:8];
        3: abyte = IN_H[7:0];
        4: abyte = IN_H[15:8];
        5: abyte = IN_W[7:0];
        6: abyte = IN_W[15:8];
        7: abyte = NUM_STEPS[7:0];
        8: abyte = NUM_STEPS[15:8];
        9: abyte = NUM_CLASSES[7:0];
        default: abyte = PAR[7:0];
      endcase
    end
  end

  always @(posedge clk) begin
    start   <= 1'b0;
    tx_send <= 1'b0;
    if (rst) begin
      cmd <= C_IDLE;
      scanning <= 1'b0;
    end else begin
      case (cmd)
        C_IDLE: if (rx_valid) begin
          reply <= rx_data;
          nb <= 0;
          if (rx_data == 8'h4C) begin
            wa <= 0;
            cmd <= C_LOAD;
          end else if (rx_data == 8'h52) begin
            start <= 1'b1;
            scanning <= 1'b1;
            cycles <= 32'd0;
            cmd <= C_RUN;
          end else begin
            nlen <= (rx_data == 8'h49) ? NBYTES_ID[RB_W-1:0] : 1;
            cmd <= C_SEND;
          end
        end
        C_LOAD: if (rx_valid) begin
          wa <= wa + 1'b1;
          if (wa == IN_N - 1) begin
            nlen <= 1;
            cmd <= C_SEND;
          end
        end
        C_RUN: begin
          cycles <= cycles + 1'b1;
          if (in_valid && in_ready && in_end) scanning <= 1'b0;
          if (done && !start) begin
            scanning <= 1'b0;
            last_class <= pred;  // (low four bits)
            nlen <= NBYTES_RUN[RB_W-1:0];
            cmd <= C_SEND;
          end
        end
        C_SEND: if (tx_ready && !tx_send) begin
          if (nb == nlen) begin
            cmd <= C_IDLE;
          end else begin
            tx_byte <= abyte;
            tx_send <= 1'b1;
            nb <= nb + 1'b1;
          end
        end
        default: cmd <= C_IDLE;
      endcase
    end
  end

  // the image RAM: written while loading, read one pixel ahead while scanning
  always @(posedge clk) if (load_we) img[wa] <= rx_data[IN_BITS-1:0];
  always @(posedge clk) if (scan_adv && !issued_all) px <= img[ra];

  assign led = {last_class, cmd == C_RUN};

endmodule

`default_nettype wire
