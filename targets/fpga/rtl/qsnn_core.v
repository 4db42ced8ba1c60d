// qsnn_core.v -- the qsnn reference FPGA core: an event-driven, time-multiplexed integer LIF engine.
//
// One core runs any network qsnn compiles for the `fpga` profile (conv layers of any stride and zero
// padding, each with optional sum-pooling, then dense layers, all with LIF neurons; any depth). Everything network-specific comes from two kinds of generated files:
//
//   qsnn_params.vh       sizes, bit widths and current shifts (included below; written by
//                        `qsnn-export --to fpga`)
//   qsnn_weights.mem     4-bit weights, PAR output channels per word          ($readmemh)
//   qsnn_neurons.mem     threshold and bias of PAR output channels per word   ($readmemh)
//   qsnn_layers.mem      per layer: the leak constant                         ($readmemh)
//
// so the RTL itself never changes. Verilog-2005; Yosys, Icarus and Verilator accept it.
//
// The integer step of every neuron (qsnn/profiles.py, profile fpga), c its output channel:
//
//   acc_t = sumpool_p( W (*)_{s,pad} z_in,t )       event-driven scatter, exact
//   cur_t = shl(acc_t, s)                           s < 0: arithmetic right shift (floor)
//   r_t   = [u_{t-1} > theta_c]                     reset decided by the previous step
//   u_t   = sat( (m*u_{t-1}) >>> F + cur_t + b_c - r_t*theta_c )      leak "mul", reset "subtract"
//   z_t   = [u_t > theta_c]                         strict >
//
// (leak "shift": u - (u >>> d); reset "zero": the leak acts on (1-r_t)*u_{t-1} and nothing is
// subtracted; overflow "wrap": the low MEM_W bits instead of the clamp.)
//
// Architecture. One datapath of PAR lanes (PAR output channels per cycle) serves every neuron of
// every layer, one layer after another within a time step:
//
//   scatter  for every input event of the layer (an input pixel/event count from the host, or a
//            spike of the previous layer) and every kernel tap that reaches a pooled output,
//            acc[y', x', g] += W[ci, ky, kx, g] * value for the PAR channels of group g:
//            an input (y, x) feeds conv output (oy, ox) through tap (ky, kx) where
//            oy*s - pad + ky = y, i.e. ky = ky0, ky0 + s, ... with ky0 = (y + pad) mod s and
//            oy = (y + pad) div s, one less per step (the zero padding costs nothing:
//            a padded cell is never an event); the pooled output is (oy div p, ox div p).
//            one read-modify-write of PAR accumulators per cycle (pipelined, forwarding).
//            Only spikes that occurred are processed; for a static image the first layer's
//            sums are computed once, at t = 0, and kept.
//   update   for every word of PAR neurons: the LIF step above, membrane written back,
//            accumulators cleared, the word's spike mask written to the event buffer (the next
//            layer's input events) or, for the last layer, added to the output spike counts.
//
// Memories (word = PAR lanes, lane j = output channel g*PAR + j, lane 0 in the low bits):
//   weights   conv:  word WBASE + ((ci*K + ky)*K + kx)*G + g
//             dense: word WBASE + g*ROWS + i, i = previous layer's word*PAR + lane (its storage
//                    order) or, for a dense first layer, the input index (c*H + y)*W + x
//   acc, membrane:   word ABASE + (y*WO + x)*G + g  (neuron order y, x, channel group)
//   neurons:         word NBASE + g (threshold in the low THR_W bits of a lane, bias above)
//
// Interfaces (all synchronous to clk):
//   start            pulse while idle or done: clear the state and run one inference of T steps
//   in_*             input events: valid/ready handshake, one (c, y, x, value) per beat; a beat
//                    with in_end = 1 ends the frame and carries no event. The core takes one frame
//                    per step for event input, a single frame (at t = 0) for a static image.
//   done, pred       after T steps: the class with the most output spikes (first index wins ties)
//   rd_addr/rd_data  status registers: output spike counts [0, NUM_CLASSES), then per layer the
//                    saturation events at the low rail, then at the high rail
//   mon_*            monitor of every layer's spikes: one beat per update word that spiked
`default_nettype none

module qsnn_core (clk, rst, start, busy, done, pred,
                  in_valid, in_ready, in_end, in_c, in_y, in_x, in_val,
                  rd_addr, rd_data,
                  mon_valid, mon_layer, mon_step, mon_word, mon_mask, mon_phase);

`include "qsnn_params.vh"

  // ---------------------------------------------------------------------------------------------
  // Ports
  input  wire                 clk;
  input  wire                 rst;
  input  wire                 start;
  output wire                 busy;
  output reg                  done;
  output reg  [CLS_W-1:0]     pred;
  input  wire                 in_valid;
  output wire                 in_ready;
  input  wire                 in_end;
  input  wire [IN_CW-1:0]     in_c;
  input  wire [IN_YW-1:0]     in_y;
  input  wire [IN_XW-1:0]     in_x;
  input  wire [IN_BITS-1:0]   in_val;
  input  wire [RD_AW-1:0]     rd_addr;
  output reg  [31:0]          rd_data;
  output wire                 mon_valid;
  output wire [LYR_W-1:0]     mon_layer;
  output wire [STEP_W-1:0]    mon_step;
  output wire [A_AW-1:0]      mon_word;
  output wire [PAR-1:0]       mon_mask;
  output wire [1:0]           mon_phase;

  // ---------------------------------------------------------------------------------------------
  // Derived constants
  localparam NB_W = THR_W + BIAS_W;                 // one lane of the neuron table
  localparam [SUM_W-1:0] ONE = 1;
  localparam signed [SUM_W-1:0] U_MAX = (ONE << (MEM_W - 1)) - ONE;
  localparam signed [SUM_W-1:0] U_MIN = ~U_MAX + (SYM_CLIP ? ONE : {SUM_W{1'b0}});
  // first layer (fed by the host): its constants are known at elaboration
  localparam L0_CONV = L_CONV[31:0];
  localparam L0_POOL = L_POOL[31:0];
  localparam L0_WO   = L_WO[31:0];
  localparam L0_G    = L_G[31:0];
  localparam L0_S    = L_S[31:0];
  localparam L0_PAD  = L_PAD[31:0];

  // event buffer entry: {mask, tgt, xr, yr, xq, yq, kx0, ky0, gp, q}
  localparam E_Q    = 0;
  localparam E_GP   = E_Q + A_AW;
  localparam E_KY   = E_GP + GW;
  localparam E_KX   = E_KY + K_W;
  localparam E_YQ   = E_KX + K_W;
  localparam E_XQ   = E_YQ + CRD_W;
  localparam E_YR   = E_XQ + CRD_W;
  localparam E_XR   = E_YR + PW;
  localparam E_TGT  = E_XR + PW;
  localparam E_MASK = E_TGT + A_AW;
  localparam EV_W   = E_MASK + PAR;

  localparam [3:0] S_IDLE = 4'd0, S_CLEAR = 4'd1, S_IN = 4'd2, S_EVWAIT = 4'd3, S_EVLOAD = 4'd4,
                   S_TAPS = 4'd5, S_DRAIN = 4'd6, S_UPD = 4'd7, S_UPDEND = 4'd8, S_NEXT = 4'd9,
                   S_ARGMAX = 4'd10, S_DONE = 4'd11;

  // ---------------------------------------------------------------------------------------------
  // Small arithmetic helpers (shift-and-add, so that only the leak uses multipliers)

  // a * b for unsigned a, b (result modulo 2^32; every use is an address well below that)
  function [31:0] umul;
    input [31:0] a;
    input [31:0] b;
    integer i;
    begin
      umul = 32'd0;
      for (i = 0; i < 32; i = i + 1)
        if (b[i]) umul = umul + (a << i);
    end
  endfunction

  // w * v for a WB-bit two's complement weight and an unsigned IN_BITS-bit input value
  function signed [ACC_W-1:0] wprod;
    input [WB-1:0] w;
    input [IN_BITS-1:0] v;
    reg [WB-1:0] mag;
    reg [ACC_W-1:0] p;
    integer i;
    begin
      mag = w[WB-1] ? (~w + 1'b1) : w;
      p = {ACC_W{1'b0}};
      for (i = 0; i < WB; i = i + 1)
        if (mag[i]) p = p + ({{(ACC_W-IN_BITS){1'b0}}, v} << i);
      wprod = w[WB-1] ? (~p + 1'b1) : p;
    end
  endfunction

  // the same, modulo 2^W_AW (weight addresses)
  function [W_AW-1:0] umulw;
    input [W_AW-1:0] a;
    input [W_AW-1:0] b;
    integer i;
    begin
      umulw = {W_AW{1'b0}};
      for (i = 0; i < W_AW; i = i + 1)
        if (b[i]) umulw = umulw + (a << i);
    end
  endfunction

  // field i of a per-layer constant vector (a multiplexer of constants, not a shifter)
  function [31:0] lsel;
    input [32*(NL+1)-1:0] vec;
    input [LYR_W-1:0] i;
    integer k;
    begin
      lsel = 32'd0;
      for (k = 0; k <= NL; k = k + 1)
        if (i == k) lsel = vec[32*k +: 32];
    end
  endfunction

  function [31:0] popcount;
    input [PAR-1:0] m;
    integer i;
    begin
      popcount = 32'd0;
      for (i = 0; i < PAR; i = i + 1)
        popcount = popcount + m[i];
    end
  endfunction

  // index of the lowest set bit (0 if none)
  function [LOG2_PAR_W-1:0] lowest;
    input [PAR-1:0] m;
    integer i;
    begin
      lowest = {LOG2_PAR_W{1'b0}};
      for (i = PAR - 1; i >= 0; i = i - 1)
        if (m[i]) lowest = i;
    end
  endfunction

  // ---------------------------------------------------------------------------------------------
  // Memories

  reg [PAR*WB-1:0]    wmem  [0:W_DEPTH-1];
  reg [PAR*NB_W-1:0]  nmem  [0:N_DEPTH-1];
  reg [LEAK_W-1:0]    ltab  [0:NL-1];
  reg [PAR*ACC_W-1:0] amem  [0:A_DEPTH-1];
  reg [PAR*MEM_W-1:0] umem  [0:A_DEPTH-1];
  reg [EV_W-1:0]      evbuf [0:EV_DEPTH-1];

  initial begin
    $readmemh("qsnn_weights.mem", wmem);
    $readmemh("qsnn_neurons.mem", nmem);
    $readmemh("qsnn_layers.mem", ltab);
  end

  // ---------------------------------------------------------------------------------------------
  // Control state

  reg [3:0]          state;
  reg [LYR_W-1:0]    lyr;
  reg [STEP_W-1:0]   t;
  reg [A_AW-1:0]     clr;
  reg [EV_AW:0]      ev_ptr, ev_n;
  reg [CLS_W:0]      cls;
  reg [CNT_W-1:0]    best;

  // per-layer constants of the current layer (and of the next one, for the event coordinates)
  wire [LYR_W-1:0] nxt = lyr + 1'b1;
  wire        c_conv  = lsel(L_CONV, lyr) != 0;
  wire [31:0] c_k     = lsel(L_K, lyr);
  wire [31:0] c_pool  = lsel(L_POOL, lyr);
  wire [31:0] c_ho    = lsel(L_HO, lyr);
  wire [31:0] c_wo    = lsel(L_WO, lyr);
  wire [31:0] c_g     = lsel(L_G, lyr);
  wire [31:0] c_o     = lsel(L_O, lyr);
  wire [31:0] c_nw    = lsel(L_NW, lyr);
  wire [31:0] c_abase = lsel(L_ABASE, lyr);
  wire [31:0] c_wbase = lsel(L_WBASE, lyr);
  wire [31:0] c_nbase = lsel(L_NBASE, lyr);
  wire [31:0] c_kg    = lsel(L_KG, lyr);
  wire [31:0] c_kkg   = lsel(L_KKG, lyr);
  wire [31:0] c_wog   = lsel(L_WOG, lyr);
  wire [31:0] c_rows  = lsel(L_ROWS, lyr);
  wire [31:0] c_s     = lsel(L_S, lyr);
  wire [31:0] c_sg    = lsel(L_SG, lyr);
  wire [31:0] c_skg   = lsel(L_SKG, lyr);
  wire [31:0] n_pool  = lsel(L_POOL, nxt);
  wire [31:0] n_g     = lsel(L_G, nxt);
  wire [31:0] n_wog   = lsel(L_WOG, nxt);
  wire [31:0] n_s     = lsel(L_S, nxt);
  wire [31:0] n_s0    = lsel(L_S0, nxt);
  wire [31:0] n_q0    = lsel(L_Q0, nxt);
  wire [31:0] n_r0    = lsel(L_R0, nxt);
  wire        last_layer = (lyr == NL - 1);
  wire        keep_acc   = STATIC_INPUT && (lyr == 0);      // a static image's sums stay all T steps

  wire [LEAK_W-1:0] leak_k = ltab[lyr];             // m of the mul leak, d of the shift leak

  // ---------------------------------------------------------------------------------------------
  // Scatter: event registers, tap counters, and the lane set-up shared by its three sources
  //   S_IN: a host beat; S_EVLOAD: the event buffer's output; S_TAPS: the next lane of the event

  reg [A_AW-1:0]    ev_q, ev_tgt;
  reg [GW-1:0]      ev_gp;
  reg [K_W-1:0]     ev_ky0, ev_kx0;
  reg [CRD_W-1:0]   ev_yq, ev_xq;
  reg [PW-1:0]      ev_yr, ev_xr;
  reg [PAR-1:0]     ev_mask;                    // lanes (input channels) still to process
  reg [IN_BITS-1:0] ev_val;

  reg [K_W-1:0]     ky, kx;
  reg [GW-1:0]      g;
  reg [CRD_W-1:0]   pyq, pxq;
  reg [PW-1:0]      pyr, pxr;
  reg [A_AW-1:0]    a_row, a_tap;
  reg [W_AW-1:0]    w_row, w_tap;

  // host beat → event fields (constants of the first layer)
  wire [31:0] h_flat = umul({{(32-IN_CW){1'b0}}, in_c}, IN_H * IN_W)
                     + umul({{(32-IN_YW){1'b0}}, in_y}, IN_W) + in_x;
  wire [31:0] h_yp   = in_y + L0_PAD;               // the row in the zero-padded input
  wire [31:0] h_xp   = in_x + L0_PAD;
  wire [31:0] h_oy   = h_yp / L0_S;                  // the conv output row of tap ky0
  wire [31:0] h_ox   = h_xp / L0_S;
  wire [31:0] h_ky0  = h_yp % L0_S;
  wire [31:0] h_kx0  = h_xp % L0_S;
  wire [31:0] h_yq   = h_oy / L0_POOL;
  wire [31:0] h_xq   = h_ox / L0_POOL;
  wire [31:0] h_yr   = h_oy % L0_POOL;
  wire [31:0] h_xr   = h_ox % L0_POOL;
  wire [31:0] h_tgt  = umul(umul(h_yq, L0_WO) + h_xq, L0_G);
  wire [31:0] h_sel  = L0_CONV ? {{(32-IN_CW){1'b0}}, in_c} : h_flat;   // channel, or dense row
  wire [31:0] h_lane = h_sel & (PAR - 1);

  wire [EV_W-1:0] ev_rd;                        // event buffer output (registered read)

  // the lane set-up source
  wire src_host = (state == S_IN);
  wire src_buf  = (state == S_EVLOAD);
  wire [PAR-1:0]     su_mask = src_host ? ({{(PAR-1){1'b0}}, 1'b1} << h_lane)
                             : src_buf ? ev_rd[E_MASK +: PAR] : ev_mask;
  wire [LOG2_PAR_W-1:0] su_lane = lowest(su_mask);
  wire [31:0]        su_gq   = src_host ? (h_sel >> LOG2_PAR)
                             : src_buf ? (c_conv ? ev_rd[E_GP +: GW] : ev_rd[E_Q +: A_AW])
                             : (c_conv ? ev_gp : ev_q);
  wire [31:0]        su_sel  = (su_gq << LOG2_PAR) | su_lane;          // input channel ci or dense row i
  wire [K_W-1:0]     su_ky0  = src_host ? h_ky0[K_W-1:0] : src_buf ? ev_rd[E_KY +: K_W] : ev_ky0;
  wire [K_W-1:0]     su_kx0  = src_host ? h_kx0[K_W-1:0] : src_buf ? ev_rd[E_KX +: K_W] : ev_kx0;
  wire [CRD_W-1:0]   su_yq   = src_host ? h_yq[CRD_W-1:0] : src_buf ? ev_rd[E_YQ +: CRD_W] : ev_yq;
  wire [CRD_W-1:0]   su_xq   = src_host ? h_xq[CRD_W-1:0] : src_buf ? ev_rd[E_XQ +: CRD_W] : ev_xq;
  wire [PW-1:0]      su_yr   = src_host ? h_yr[PW-1:0] : src_buf ? ev_rd[E_YR +: PW] : ev_yr;
  wire [PW-1:0]      su_xr   = src_host ? h_xr[PW-1:0] : src_buf ? ev_rd[E_XR +: PW] : ev_xr;
  wire [A_AW-1:0]    su_tgt  = src_host ? h_tgt[A_AW-1:0] : src_buf ? ev_rd[E_TGT +: A_AW] : ev_tgt;
  wire [W_AW-1:0]    su_wrow = c_conv ? (c_wbase[W_AW-1:0] + umulw(su_sel[W_AW-1:0], c_kkg[W_AW-1:0])
                                        + umulw({{(W_AW-K_W){1'b0}}, su_ky0}, c_kg[W_AW-1:0])
                                        + umulw({{(W_AW-K_W){1'b0}}, su_kx0}, c_g[W_AW-1:0]))
                             : (c_wbase[W_AW-1:0] + su_sel[W_AW-1:0]);

  // tap validity and the loop's end conditions
  // (a tap is inside the kernel and reaches a pooled output; the last tap of a row or column is
  // the last one inside the kernel, or the one that reaches conv output 0)
  wire [31:0] ky32 = {{(32-K_W){1'b0}}, ky};
  wire [31:0] kx32 = {{(32-K_W){1'b0}}, kx};
  wire row_ok   = (pyq < c_ho) && (ky32 < c_k);
  wire col_ok   = (pxq < c_wo) && (kx32 < c_k);
  wire g_last   = (g == c_g - 1);
  wire kx_end   = (kx32 + c_s >= c_k) || (pxq == {CRD_W{1'b0}} && pxr == {PW{1'b0}});
  wire ky_end   = (ky32 + c_s >= c_k) || (pyq == {CRD_W{1'b0}} && pyr == {PW{1'b0}});
  // this cycle issues a read-modify-write of PAR accumulators
  wire issue    = (state == S_TAPS) && (!c_conv || (row_ok && col_ok));
  // the current lane is finished after this cycle
  // (a column is finished after its last group, or at once when it lies outside the pooled area;
  // a row when its last column is finished, or at once when it lies outside)
  wire col_done = !col_ok || g_last;
  wire row_done = !row_ok || (kx_end && col_done);
  wire lane_end = (state == S_TAPS) && (c_conv ? (row_done && ky_end) : g_last);
  wire more_lanes = (ev_mask != {PAR{1'b0}});

  // ---------------------------------------------------------------------------------------------
  // Update: word counters (neuron order y, x, g) and the next layer's event coordinates

  reg [A_AW-1:0]    uw;
  reg [GW-1:0]      ug;
  reg [CRD_W-1:0]   ux, uy;
  reg [CRD_W-1:0]   nyq, nxq;
  reg [PW-1:0]      nyr, nxr;
  reg [K_W-1:0]     nys, nxs;                   // (y + pad) mod s of the next layer
  reg [A_AW-1:0]    ntrow, ntgt;

  // stage-1 registers of the two pipelines
  reg               s1_valid;
  reg [A_AW-1:0]    s1_addr;
  reg [IN_BITS-1:0] s1_val;
  reg               fw_valid;
  reg [A_AW-1:0]    fw_addr;
  reg [PAR*ACC_W-1:0] fw_data;

  reg               u1_valid;
  reg [A_AW-1:0]    u1_addr, u1_w, u1_ntgt;
  reg [GW-1:0]      u1_g;
  reg [K_W-1:0]     u1_nys, u1_nxs;
  reg [CRD_W-1:0]   u1_nyq, u1_nxq;
  reg [PW-1:0]      u1_nyr, u1_nxr;

  // memory read ports (registered)
  wire [A_AW-1:0] a_raddr = (state == S_UPD) ? (c_abase + uw) : (a_tap + g);
  wire [W_AW-1:0] w_raddr = c_conv ? (w_tap + g) : w_tap;
  wire [N_AW-1:0] n_raddr = c_nbase + ug;
  reg  [PAR*ACC_W-1:0] acc_q;
  reg  [PAR*MEM_W-1:0] mem_q;
  reg  [PAR*WB-1:0]    w_q;
  reg  [PAR*NB_W-1:0]  n_q;
  reg  [EV_W-1:0]      ev_q_rd;
  assign ev_rd = ev_q_rd;

  always @(posedge clk) begin
    acc_q   <= amem[a_raddr];
    mem_q   <= umem[a_raddr];
    w_q     <= wmem[w_raddr];
    n_q     <= nmem[n_raddr];
    ev_q_rd <= evbuf[ev_ptr[EV_AW-1:0]];
  end

  // ---------------------------------------------------------------------------------------------
  // Stage 1 of the scatter: PAR accumulators + weight * value (forwarding the previous write)

  wire [PAR*ACC_W-1:0] acc_old = (fw_valid && fw_addr == s1_addr) ? fw_data : acc_q;
  wire [PAR*ACC_W-1:0] acc_new;

  // Stage 1 of the update: the LIF step of PAR neurons
  wire [PAR*MEM_W-1:0] u_new;
  wire [PAR-1:0]       z_mask, hi_mask, lo_mask;

  genvar j, li;
  generate
    for (j = 0; j < PAR; j = j + 1) begin : lane
      // scatter
      wire signed [ACC_W-1:0] a_old = acc_old[j*ACC_W +: ACC_W];
      assign acc_new[j*ACC_W +: ACC_W] = a_old + wprod(w_q[j*WB +: WB], s1_val);

      // update
      wire               ok   = (((u1_g << LOG2_PAR) + j) < c_o);   // a real channel, not padding
      wire signed [ACC_W-1:0]  a    = acc_q[j*ACC_W +: ACC_W];
      wire signed [MEM_W-1:0]  u    = mem_q[j*MEM_W +: MEM_W];
      wire        [THR_W-1:0]  th   = n_q[j*NB_W +: THR_W];
      wire signed [BIAS_W-1:0] bi   = n_q[j*NB_W + THR_W +: BIAS_W];
      wire signed [SUM_W-1:0]  a_x  = a;
      wire signed [SUM_W-1:0]  u_x  = u;
      wire signed [SUM_W-1:0]  b_x  = bi;
      wire signed [SUM_W-1:0]  th_x = {{(SUM_W-THR_W){1'b0}}, th};
      // cur = shl(acc, s): each layer's shift s is a constant of the header, so this is wiring
      // and a layer select, not a barrel shifter
      wire [NL*SUM_W-1:0]      cur_all;
      for (li = 0; li < NL; li = li + 1) begin : shl
        localparam integer S = L_SHIFT[32*li +: 32];
        if (S >= 0) begin : left
          assign cur_all[li*SUM_W +: SUM_W] = a_x <<< S;
        end else begin : right
          assign cur_all[li*SUM_W +: SUM_W] = a_x >>> (-S);
        end
      end
      wire signed [SUM_W-1:0]  cur  = cur_all[lyr*SUM_W +: SUM_W];
      wire                     r    = (u_x > th_x);
      wire signed [MEM_W-1:0]  u_s  = (RESET_ZERO && r) ? {MEM_W{1'b0}} : u;     // what leaks
      wire signed [SUM_W-1:0]  u_sx = u_s;
      wire signed [MEM_W+LEAK_W:0] prod = $signed({1'b0, leak_k}) * u_s;
      wire signed [MEM_W+LEAK_W:0] prod_f = prod >>> LEAK_BITS;                    // floor
      wire signed [SUM_W-1:0]  lk_mul = prod_f;
      wire signed [SUM_W-1:0]  lk_sh  = u_sx - (u_sx >>> leak_k);
      wire signed [SUM_W-1:0]  lk   = LEAK_SHIFT ? lk_sh : lk_mul;
      wire signed [SUM_W-1:0]  rst_th = (!RESET_ZERO && r) ? th_x : {SUM_W{1'b0}};
      wire signed [SUM_W-1:0]  v    = lk + cur + b_x - rst_th;
      wire                     hi   = (v > U_MAX);
      wire                     lo   = (v < U_MIN);
      wire signed [MEM_W-1:0]  un   = (WRAP || !(hi || lo)) ? v[MEM_W-1:0]
                                    : hi ? U_MAX[MEM_W-1:0] : U_MIN[MEM_W-1:0];
      wire signed [SUM_W-1:0]  un_x = un;
      assign u_new[j*MEM_W +: MEM_W] = un;
      assign z_mask[j]  = ok && (un_x > th_x);
      assign hi_mask[j] = ok && hi;
      assign lo_mask[j] = ok && lo;
    end
  endgenerate

  // ---------------------------------------------------------------------------------------------
  // Memory writes

  wire                 acc_we    = (state == S_CLEAR) || s1_valid || (u1_valid && !keep_acc);
  wire [A_AW-1:0]      acc_waddr = (state == S_CLEAR) ? clr : s1_valid ? s1_addr : u1_addr;
  wire [PAR*ACC_W-1:0] acc_wdata = s1_valid ? acc_new : {PAR*ACC_W{1'b0}};
  wire                 mem_we    = (state == S_CLEAR) || u1_valid;
  wire [PAR*MEM_W-1:0] mem_wdata = (state == S_CLEAR) ? {PAR*MEM_W{1'b0}} : u_new;
  wire                 ev_we     = u1_valid && !last_layer && (z_mask != {PAR{1'b0}});
  wire [EV_W-1:0]      ev_wdata;
  assign ev_wdata[E_Q +: A_AW]    = u1_w;
  assign ev_wdata[E_GP +: GW]     = u1_g;
  assign ev_wdata[E_KY +: K_W]    = u1_nys;
  assign ev_wdata[E_KX +: K_W]    = u1_nxs;
  assign ev_wdata[E_YQ +: CRD_W]  = u1_nyq;
  assign ev_wdata[E_XQ +: CRD_W]  = u1_nxq;
  assign ev_wdata[E_YR +: PW]     = u1_nyr;
  assign ev_wdata[E_XR +: PW]     = u1_nxr;
  assign ev_wdata[E_TGT +: A_AW]  = u1_ntgt;
  assign ev_wdata[E_MASK +: PAR]  = z_mask;

  always @(posedge clk) begin
    if (acc_we) amem[acc_waddr] <= acc_wdata;
    if (mem_we) umem[(state == S_CLEAR) ? clr : u1_addr] <= mem_wdata;
    if (ev_we)  evbuf[ev_n[EV_AW-1:0]] <= ev_wdata;
  end

  // ---------------------------------------------------------------------------------------------
  // Output spike counts and saturation counters

  reg [CNT_W-1:0] counts [0:NUM_CLASSES-1];
  reg [31:0]      sat_lo [0:NL-1];
  reg [31:0]      sat_hi [0:NL-1];
  integer c, l;

  always @(posedge clk) begin
    if (state == S_CLEAR && clr == 0) begin
      for (c = 0; c < NUM_CLASSES; c = c + 1) counts[c] <= {CNT_W{1'b0}};
      for (l = 0; l < NL; l = l + 1) begin
        sat_lo[l] <= 32'd0;
        sat_hi[l] <= 32'd0;
      end
    end else if (u1_valid) begin
      if (last_layer)
        for (c = 0; c < NUM_CLASSES; c = c + 1)
          if (u1_g == (c >> LOG2_PAR) && z_mask[c % PAR]) counts[c] <= counts[c] + 1'b1;
      sat_lo[lyr] <= sat_lo[lyr] + popcount(lo_mask);
      sat_hi[lyr] <= sat_hi[lyr] + popcount(hi_mask);
    end
  end

  always @* begin
    rd_data = 32'd0;
    if (rd_addr < NUM_CLASSES)
      rd_data = {{(32-CNT_W){1'b0}}, counts[rd_addr]};
    else if (rd_addr < NUM_CLASSES + NL)
      rd_data = sat_lo[rd_addr - NUM_CLASSES];
    else if (rd_addr < NUM_CLASSES + 2 * NL)
      rd_data = sat_hi[rd_addr - NUM_CLASSES - NL];
  end

  // ---------------------------------------------------------------------------------------------
  // The sequencer

  assign busy     = (state != S_IDLE) && (state != S_DONE);
  assign in_ready = (state == S_IN);

  assign mon_valid = u1_valid && (z_mask != {PAR{1'b0}});
  assign mon_layer = lyr;
  assign mon_step  = t;
  assign mon_word  = u1_w;
  assign mon_mask  = z_mask;
  assign mon_phase = (state == S_IN || state == S_EVWAIT || state == S_EVLOAD || state == S_TAPS
                      || state == S_DRAIN) ? 2'd1
                   : (state == S_UPD || state == S_UPDEND) ? 2'd2
                   : (state == S_IDLE || state == S_DONE) ? 2'd0 : 2'd3;

  // set-up of an update phase whose spikes feed layer nl (the event coordinates of its first neuron,
  // (0, 0): the row/column pad in layer nl's padded input)
  task upd_setup;
    input [LYR_W-1:0] nl;
    begin
      uw <= {A_AW{1'b0}}; ug <= {GW{1'b0}}; ux <= {CRD_W{1'b0}}; uy <= {CRD_W{1'b0}};
      nys <= lsel(L_S0, nl); nxs <= lsel(L_S0, nl);
      nyq <= lsel(L_Q0, nl); nxq <= lsel(L_Q0, nl);
      nyr <= lsel(L_R0, nl); nxr <= lsel(L_R0, nl);
      ntrow <= lsel(L_T0, nl); ntgt <= lsel(L_T0, nl);
      ev_n <= {(EV_AW+1){1'b0}};
    end
  endtask

  // the first state of layer L's scatter at step T_
  function [3:0] layer_entry;
    input first;             // layer 0?
    input [STEP_W-1:0] step;
    input any_events;
    begin
      if (first) layer_entry = (STATIC_INPUT && step != 0) ? S_UPD : S_IN;
      else       layer_entry = any_events ? S_EVWAIT : S_UPD;
    end
  endfunction

  always @(posedge clk) begin
    s1_valid <= issue;
    s1_addr  <= a_tap + g;
    s1_val   <= ev_val;
    fw_valid <= s1_valid;
    fw_addr  <= s1_addr;
    fw_data  <= acc_new;
    u1_valid <= (state == S_UPD);
    u1_addr  <= c_abase + uw;
    u1_w     <= uw;
    u1_g     <= ug;
    u1_nys   <= nys;
    u1_nxs   <= nxs;
    u1_nyq   <= nyq;
    u1_nxq   <= nxq;
    u1_nyr   <= nyr;
    u1_nxr   <= nxr;
    u1_ntgt  <= ntgt;
    if (u1_valid && ev_we) ev_n <= ev_n + 1'b1;

    if (rst) begin
      state    <= S_IDLE;
      done     <= 1'b0;
      s1_valid <= 1'b0;
      u1_valid <= 1'b0;
      fw_valid <= 1'b0;
      pred     <= {CLS_W{1'b0}};
    end else begin
      case (state)
        S_IDLE, S_DONE: if (start) begin
          done  <= 1'b0;
          clr   <= {A_AW{1'b0}};
          state <= S_CLEAR;
        end

        S_CLEAR: begin
          clr <= clr + 1'b1;
          if (clr == A_DEPTH - 1) begin
            t     <= {STEP_W{1'b0}};
            lyr   <= {LYR_W{1'b0}};
            ev_n  <= {(EV_AW+1){1'b0}};
            state <= layer_entry(1'b1, {STEP_W{1'b0}}, 1'b0);
          end
        end

        S_IN: if (in_valid) begin
          if (in_end) state <= S_DRAIN;
          else begin
            ev_val <= in_val;
            state  <= S_TAPS;
          end
        end

        S_EVWAIT: state <= S_EVLOAD;

        S_EVLOAD: begin
          ev_val <= {{(IN_BITS-1){1'b0}}, 1'b1};
          ev_ptr <= ev_ptr + 1'b1;
          state  <= S_TAPS;
        end

        S_TAPS: if (lane_end) begin
          if (more_lanes)             state <= S_TAPS;          // set-up below, same cycle
          else if (lyr == 0)          state <= S_IN;
          else if (ev_ptr == ev_n)    state <= S_DRAIN;
          else                        state <= S_EVLOAD;
        end

        S_DRAIN: begin
          upd_setup(nxt);
          state <= S_UPD;
        end

        S_UPD: begin
          if (uw == c_nw - 1) state <= S_UPDEND;
          uw <= uw + 1'b1;
          if (ug != c_g - 1) ug <= ug + 1'b1;
          else begin
            ug <= {GW{1'b0}};
            // (x + pad) mod s, then (x + pad) div s mod p, then its div p: the next layer's
            // coordinates of this neuron's spike (likewise for y at the end of a row)
            if (ux != c_wo - 1) begin
              ux <= ux + 1'b1;
              if (nxs != n_s - 1) nxs <= nxs + 1'b1;
              else begin
                nxs <= {K_W{1'b0}};
                if (nxr != n_pool - 1) nxr <= nxr + 1'b1;
                else begin
                  nxr  <= {PW{1'b0}};
                  nxq  <= nxq + 1'b1;
                  ntgt <= ntgt + n_g[A_AW-1:0];
                end
              end
            end else begin
              ux  <= {CRD_W{1'b0}};
              uy  <= uy + 1'b1;
              nxs <= n_s0[K_W-1:0];
              nxq <= n_q0[CRD_W-1:0];
              nxr <= n_r0[PW-1:0];
              ntgt <= ntrow;
              if (nys != n_s - 1) nys <= nys + 1'b1;
              else begin
                nys <= {K_W{1'b0}};
                if (nyr != n_pool - 1) nyr <= nyr + 1'b1;
                else begin
                  nyr   <= {PW{1'b0}};
                  nyq   <= nyq + 1'b1;
                  ntrow <= ntrow + n_wog[A_AW-1:0];
                  ntgt  <= ntrow + n_wog[A_AW-1:0];
                end
              end
            end
          end
        end

        S_UPDEND: state <= S_NEXT;

        S_NEXT: begin
          ev_ptr <= {(EV_AW+1){1'b0}};
          if (!last_layer) begin
            lyr   <= nxt;
            state <= layer_entry(1'b0, t, ev_n != 0);
            if (ev_n == 0) begin
              // an update without scatter: same set-up as S_DRAIN, for the layer after nxt
              upd_setup(nxt + 1'b1);
            end
          end else if (t == NUM_STEPS - 1) begin
            cls   <= {{CLS_W{1'b0}}, 1'b1};
            best  <= counts[0];
            pred  <= {CLS_W{1'b0}};
            state <= S_ARGMAX;
          end else begin
            t     <= t + 1'b1;
            lyr   <= {LYR_W{1'b0}};
            state <= layer_entry(1'b1, t + 1'b1, 1'b0);
            if (STATIC_INPUT) begin
              upd_setup({{(LYR_W-1){1'b0}}, 1'b1});     // layer 0's update: layer 1's coordinates
            end
          end
        end

        S_ARGMAX: begin
          if (cls == NUM_CLASSES) begin
            done  <= 1'b1;
            state <= S_DONE;
          end else begin
            if (counts[cls[CLS_W-1:0]] > best) begin
              best <= counts[cls[CLS_W-1:0]];
              pred <= cls[CLS_W-1:0];
            end
            cls <= cls + 1'b1;
          end
        end

        default: state <= S_IDLE;
      endcase

      // lane set-up (a host beat, an event from the buffer, or the event's next lane)
      if ((state == S_IN && in_valid && !in_end) || state == S_EVLOAD || (state == S_TAPS && lane_end && more_lanes)) begin
        if (state != S_TAPS) begin
          ev_q  <= su_gq[A_AW-1:0];
          ev_gp <= su_gq[GW-1:0];
          ev_ky0 <= su_ky0; ev_kx0 <= su_kx0;
          ev_yq <= su_yq;  ev_xq <= su_xq;
          ev_yr <= su_yr;  ev_xr <= su_xr;
          ev_tgt <= su_tgt;
        end
        ev_mask <= su_mask & ~({{(PAR-1){1'b0}}, 1'b1} << su_lane);
        ky <= su_ky0; kx <= su_kx0; g <= {GW{1'b0}};
        pyq <= su_yq; pyr <= su_yr;
        pxq <= su_xq; pxr <= su_xr;
        a_row <= c_conv ? c_abase[A_AW-1:0] + su_tgt : c_abase[A_AW-1:0];
        a_tap <= c_conv ? c_abase[A_AW-1:0] + su_tgt : c_abase[A_AW-1:0];
        w_row <= su_wrow;
        w_tap <= su_wrow;
      end else if (state == S_TAPS && !lane_end) begin
        // advance (g innermost, then kx, then ky); invalid taps cost one cycle and no access
        if (!c_conv) begin
          g     <= g + 1'b1;
          w_tap <= w_tap + c_rows[W_AW-1:0];
        end else if (row_ok && col_ok && !g_last) begin
          g <= g + 1'b1;
        end else if (row_ok && !kx_end) begin
          g     <= {GW{1'b0}};
          kx    <= kx + c_s[K_W-1:0];
          w_tap <= w_tap + c_sg[W_AW-1:0];
          if (pxr == 0) begin
            pxr   <= c_pool[PW-1:0] - 1'b1;
            pxq   <= pxq - 1'b1;
            a_tap <= a_tap - c_g[A_AW-1:0];
          end else pxr <= pxr - 1'b1;
        end else begin
          // next kernel row (this one is done, or lies outside the pooled area)
          g     <= {GW{1'b0}};
          kx    <= ev_kx0;
          ky    <= ky + c_s[K_W-1:0];
          w_row <= w_row + c_skg[W_AW-1:0];
          w_tap <= w_row + c_skg[W_AW-1:0];
          pxq   <= ev_xq;
          pxr   <= ev_xr;
          if (pyr == 0) begin
            pyr   <= c_pool[PW-1:0] - 1'b1;
            pyq   <= pyq - 1'b1;
            a_row <= a_row - c_wog[A_AW-1:0];
            a_tap <= a_row - c_wog[A_AW-1:0];
          end else begin
            pyr   <= pyr - 1'b1;
            a_tap <= a_row;
          end
        end
      end
    end
  end

endmodule

`default_nettype wire
