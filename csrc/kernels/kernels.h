// Raw CPU loops behind the talkie_kernels Primitives (no MLX types here).
//
// The files of csrc/kernels/ are compiled once per instruction set (baseline,
// and on x86-64 also x86-64-v3 = AVX2/FMA/F16C and x86-64-v4 = AVX-512) into
// their own namespace; the VNNI tables (v3_vnni: + AVX-VNNI, v4_vnni: +
// AVX512-VNNI) compile only linear_int8.cpp and linear_gemm8.cpp and take every
// other entry from v3 / v4, and v4_bf16 (v4_vnni + AVX512-BF16) also
// linear.cpp, for its bf16 dot-product loops, and probe.cpp's peak of them; `select()`
// picks the table for the running CPU. Every loop works on a range of
// independent items [begin, end) so csrc/parallel.cpp can split the work.
//
// Element types: fp32, fp16, bf16 storage; all arithmetic in fp32 (angles in
// double); every output element is rounded to the storage type exactly once.
#pragma once

#include <cstdint>

namespace tk::kern {

enum class Dtype : int { f32 = 0, f16 = 1, bf16 = 2 };

// p rounded up to a 64-byte (cache line) boundary: scratch buffers allocated
// with 64 bytes to spare.
template <class T>
inline T* align64(T* p) {
  return reinterpret_cast<T*>((reinterpret_cast<uintptr_t>(p) + 63) & ~uintptr_t(63));
}

// A strided view of an array as rows over its contiguous last axis: `nlead`
// leading dims with sizes `shape` and element strides `strides` (the caller
// copies inputs whose last axis is not contiguous). `ptr` already includes
// the array's offset.
struct Rows {
  const void* ptr;
  int nlead;
  const int64_t* shape;
  const int64_t* strides;
};

// rms_norm over rows of length D: out[r] = x[r] / sqrt(mean(x[r]^2) + eps).
struct RmsNormArgs {
  Dtype dtype;
  int64_t D;
  Rows x;
  void* out;  // row-contiguous
  float eps;
};

// residual_norm over rows of length D:
// x_new = round(x + g*y [+ sg*skip]); normed = rms_norm(x_new).
struct ResidualNormArgs {
  Dtype dtype;
  int64_t D;
  Rows x, y, skip;  // skip.ptr == nullptr: no skip term
  float gain, skip_gain;
  void* x_new;  // row-contiguous
  void* normed;  // row-contiguous
  float eps;
};

// swiglu over rows of length D: out[r] = silu(gate[r]) · x[r], where
// silu(g) = g / (1 + e^-g), in fp32 and rounded once.
struct SwigluArgs {
  Dtype dtype;
  int64_t D;
  Rows gate, x;
  void* out;  // row-contiguous
};

// cos/sin table for RoPE: item = tb * L + l, pos = offset[tb] + l,
// cos[item * D2 + i] = cos(pos * inv_freq[i]) (likewise sin), i < D2.
struct RopeTableArgs {
  int64_t L, D2;
  const int32_t* offset;  // one per table row tb
  const double* inv_freq;  // D2 values base^(-2i/D)
  float* cos;
  float* sin;
};

// RoPE (and optionally RMSNorm and a per-head gain) on n_in (B, H, L, D)
// tensors with element strides for B, H, L (D contiguous), written to
// row-contiguous (B, H, L, D) outputs. Work items are the B * H * L rows.
struct RopeArgs {
  Dtype dtype;
  int64_t B, H, L, D;
  int n_in;  // 1 (rope) or 2 (q and k)
  const void* in[2];
  int64_t strides[2][3];
  void* out[2];
  const float* cos;  // from RopeTableArgs
  const float* sin;
  bool table_per_batch;  // table row tb = b (else 0)
  bool norm;  // rms-normalize each rotated row
  float eps;
  const float* head_gain;  // H values applied to in[0] after the norm, or null
};

// Rows normalized together (see inv_rms in kernels/common.inc).
inline constexpr int64_t kRowBlock = 8;

// Scratch the rope loop needs per concurrent call: a block of rotated fp32
// rows of q and k.
inline int64_t rope_scratch_floats(int64_t D) {
  return kRowBlock * 2 * D;
}

// ---- linear: out = x @ w.T ------------------------------------------------

// The weight's element format: dense storage, or MLX's affine quantization
// (q4/q8: whole elements per byte, element j of a row at bit j*bits of the
// row's bytes; q6: the same little-endian bit stream, 4 elements per 3 bytes).
enum class WeightKind : int { f32 = 0, f16 = 1, bf16 = 2, q4 = 3, q6 = 4, q8 = 5 };

// The loops take K in blocks of 32 columns. Within a block the kernels read
// a quantized weight's values in the order its packing yields them without
// shuffles (q4: the 16 even columns, then the 16 odd ones; q6: columns 4i+j
// ordered by j then i), so x is stored in that same order (linear_prepare_x).
inline constexpr int64_t kLinearBlock = 32;

// Rows of x from which linear packs the weights into panels (the prefill
// GEMM) instead of streaming them straight from memory once per few rows (the
// decode loops; measured on Zen 4 with the earlier panel kernel).
inline constexpr int64_t kLinearGemmMinM = 8;

// x as the op received it: (M, K) with element strides, any float storage.
struct LinearX {
  const void* ptr;
  Dtype dtype;
  int64_t M, K, row_stride, col_stride;
};

struct LinearArgs {
  WeightKind kind;
  Dtype scale_dtype, bias_dtype;  // quantized kinds
  Dtype out_dtype;
  int64_t M, N, K;
  int64_t Kp;  // K rounded up to kLinearBlock: the row stride of x
  int64_t group_size;  // quantized kinds: a multiple of kLinearBlock
  const float* x;  // (M, Kp) fp32 from linear_prepare_x: block-permuted, zero padded
  const float* xsum;  // quantized kinds: (M, K/group_size) sums of x over each group
  // Quantized kinds, few rows: compute s·(q·x) + b·Σx instead of (s·q + b)·x.
  // Faster, but s·(q·x) and b·Σx may nearly cancel, so it is only used for
  // fp16/bf16 outputs, whose own rounding is far larger than that loss.
  bool factored;
  // The integer paths (quantized kinds, bf16 x, fp16/bf16 out). linear_int8:
  // x from linear_quantize_x, rows of int8_units(K) units of 64 columns;
  // linear_gemm8: from linear_quantize_x8 (gemm8_ldx).
  const int8_t* x8;  // int8: (M, units·64) codes of x, each unit in the kind's order (linear_int8.cpp's x8_at)
  const float* dx;  // int8: (M, int8_dx_stride(K, M)): the 32-column blocks' scales (int8_dx_expanded), zero-padded
  // linear_bf16 (bf16 weights, bf16 x): (M, Kp) bf16 x, zero past K.
  const uint16_t* xb;
  const void* w;  // (N, K) elements or (N, K*bits/32) uint32, row-contiguous
  const void* scales;  // (N, K/group_size), row-contiguous
  const void* biases;
  void* out;  // (M, N) row-contiguous, out_dtype
};

// The integer path's x: quantized per 32-column block, stored in units of 64
// columns (two blocks) laid out as the kind's codes unpack (linear_int8.cpp).
inline constexpr int64_t kInt8MaxM = kLinearGemmMinM - 1;  // rows of x it handles (decode)
inline int64_t int8_units(int64_t K) {
  return (K + 2 * kLinearBlock - 1) / (2 * kLinearBlock);
}
// Its dx, one scale per 32-column block: for M = 2 one float per block
// ("compact"), otherwise "expanded", each block's scale in the 4 lanes of a
// unit's result it scales (8 floats per unit). Expanded, the loop scales
// each row of x's result with one multiply instead of a lane-crossing
// permute and a multiply (vpermps takes ~1.5 cycles on Zen 3, whose
// vpmaddubsw, vpmaddwd, vcvtdq2ps, vmulps and vfmadd share two pipes), which
// pays where the loop is bound by instructions. Measured on Zen 3 (v3, 2
// cores, interleaved builds, medians): M = 4-7, q4 weights in L3, 1.02-1.17x
// the compact loop's speed; M = 1, from DRAM with a 33-36 GB/s probe,
// expanded dx with two accumulators and aligned x8/dx read q4 at 93-95 % of
// the probe against 86 %, q6 at 86-89 % against 81-83 % (q8, bound by
// memory, alike within noise). Compact keeps x's codes and scales at K 13696
// in L1 beside the weight stream, which pays where the loop is bound by
// memory: at M = 2 from DRAM q8 read 76-79 % of the probe expanded against
// 84-85 % compact (77-80 % against 90-92 % in a later run).
constexpr bool int8_dx_expanded(int64_t M) {
  return M != 2;
}
// Floats per row of dx: compact, two blocks per unit and four of zeros,
// which the kernels' 4-float loads at the last unit read; expanded, 8 per unit.
inline int64_t int8_dx_stride(int64_t K, int64_t M) {
  return int8_dx_expanded(M) ? 8 * int8_units(K) : 2 * int8_units(K) + 4;
}

// The integer prefill GEMM's x (linear_gemm8.cpp; M >= kLinearGemmMinM):
// rows of K int8 codes in column order at row stride gemm8_ldx(K) (x8), one
// scale per 32-column block (dx: (rows, K/32)) and Σx̂ per group (xsum),
// followed by kGemm8PadRows rows of zeros that the last register block reads.
inline constexpr int64_t kGemm8PadRows = 8;
inline int64_t gemm8_ldx(int64_t K) {
  return K + 64;  // not a multiple of 4 KB: rows of a register block in different L1 sets
}

// ---- scaled_dot_product_attention -------------------------------------------

enum class AttnMask : int { none = 0, causal = 1, boolean = 2, additive = 3 };

// A (B, H, S, ·) array: element strides of its first three axes (the last
// one contiguous); `ptr` includes the array's offset.
struct Strided3 {
  const void* ptr;
  int64_t b, h, s;
};

// K or V (B, Hkv, S, ·): dense rows of `dtype`, or MLX affine codes (bits 4
// or 8; x in uint32 words, element i of a row at bit i·bits) with a scale
// and a bias (of `dtype`) per group of the row.
struct KVArgs {
  Strided3 x;
  Dtype dtype;
  int bits;  // 0: dense
  Strided3 scales, biases;
};

// Decode: L at most this many query positions (work items are pieces of keys).
inline constexpr int64_t kAttnDecodeMaxL = 7;
// Decode: keys per work item, a function of S only (bit-equal at any thread
// count); 256 keys × 40 heads give 320 items at S = 2048.
inline constexpr int64_t kAttnSplit = 256;
// Prefill: keys per block of the online softmax (panels of K and V rows in fp32).
inline constexpr int64_t kAttnBlock = 16;
// Prefill: query rows per work item (a multiple of two vectors of every ISA).
inline constexpr int64_t kAttnRows = 32;

struct AttentionArgs {
  Dtype q_dtype, out_dtype;
  int64_t B, Hq, Hkv, L, S, D, Dv;
  int64_t group_size;  // quantized K/V
  float scale;
  Strided3 q;  // (B, Hq, L, D)
  KVArgs k, v;
  AttnMask mask;
  Dtype mask_dtype;  // additive masks (boolean ones are bytes)
  const void* mask_ptr;
  int64_t mask_strides[4];  // elements, broadcast axes 0
  void* out;  // (B, Hq, L, Dv) row-contiguous
  float* partial;  // decode: attention_partial_floats(), filled by attention_decode
};

inline int64_t attention_rows(const AttentionArgs& a) {  // decode rows per item: G·L
  return a.Hq / a.Hkv * a.L;
}
inline int64_t attention_splits(const AttentionArgs& a) {
  return (a.S + kAttnSplit - 1) / kAttnSplit;
}
inline int64_t attention_pad16(int64_t n) {
  return (n + 15) / 16 * 16;
}
inline int64_t attention_partial_floats(const AttentionArgs& a) {
  return a.B * a.Hkv * attention_splits(a) * attention_rows(a) * (attention_pad16(a.Dv) + 2);
}
// Prefill: query positions per tile (all G heads of each), and its rows padded.
inline int64_t attention_tile_positions(const AttentionArgs& a) {
  const int64_t G = a.Hq / a.Hkv;
  return G >= kAttnRows ? 1 : kAttnRows / G;
}
inline int64_t attention_tile_rows(const AttentionArgs& a) {
  const int64_t R = attention_tile_positions(a) * (a.Hq / a.Hkv);
  return (R + kAttnRows - 1) / kAttnRows * kAttnRows;
}
// Scratch floats per concurrent call of attention_decode / attention_prefill.
inline int64_t attention_scratch_floats(const AttentionArgs& a) {
  const int64_t ldk = attention_pad16(a.D), ldv = attention_pad16(a.Dv);
  if (a.L <= kAttnDecodeMaxL) {
    return attention_rows(a) * (ldk + kAttnSplit);
  }
  const int64_t Rp = attention_tile_rows(a);
  return Rp * (a.D + ldv + kAttnBlock + 5) + kAttnBlock * (ldk + ldv) + ldk;
}

struct Table {
  const char* isa;
  void (*rms_norm)(const RmsNormArgs&, int64_t begin, int64_t end);
  void (*residual_norm)(const ResidualNormArgs&, int64_t begin, int64_t end);
  void (*swiglu)(const SwigluArgs&, int64_t begin, int64_t end);
  void (*rope_table)(const RopeTableArgs&, int64_t begin, int64_t end);
  // scratch: rope_scratch_floats(D) floats owned by the caller, one buffer
  // per concurrent call.
  void (*rope)(const RopeArgs&, int64_t begin, int64_t end, float* scratch);
  // Rows [begin, end) of x (M, K) -> dst (M, Kp) fp32 in `kind`'s block order.
  void (*linear_prepare_x)(const LinearX&, WeightKind kind, float* dst, int64_t begin, int64_t end);
  // Output columns [begin, end) (rows of w) for all M rows of x; scratch is
  // per thread, inside the loop.
  void (*linear)(const LinearArgs&, int64_t begin, int64_t end);
  // The integer path (null in tables without AVX2): rows [begin, end) of x
  // -> x8, dx (LinearArgs) and Σx̂ per group (M, K/group_size); then output
  // columns [begin, end) of a quantized weight from them.
  void (*linear_quantize_x)(const LinearX&, WeightKind kind, int64_t group_size, int8_t* x8, float* dx,
                            float* xsum, int64_t begin, int64_t end);
  void (*linear_int8)(const LinearArgs&, int64_t begin, int64_t end);
  // The integer prefill GEMM (null in tables without AVX2): rows [begin, end)
  // of x -> x8, dx, xsum in its layout (kGemm8PadRows); then output columns
  // [begin, end) of a quantized weight (q4, q6, q8).
  void (*linear_quantize_x8)(const LinearX&, WeightKind kind, int64_t group_size, int8_t* x8, float* dx,
                             float* xsum, int64_t begin, int64_t end);
  void (*linear_gemm8)(const LinearArgs&, int64_t begin, int64_t end);
  // The bf16 dot-product loops (null in tables without AVX512-BF16): output
  // columns [begin, end) of a bf16 weight against a.xb, by the GEMM for
  // M >= kLinearGemmMinM, else the decode loop (linear.cpp).
  void (*linear_bf16)(const LinearArgs&, int64_t begin, int64_t end);
  // The probes (probe.cpp). Sum of n 64-bit words (a streaming read, for the
  // bandwidth probe).
  uint64_t (*read_sum)(const uint64_t* p, int64_t n);
  // At least `flops` fp32 flops of independent FMA chains at this table's
  // vector width (for the FMA-peak probe; on v4_bf16, chains of its GEMM's
  // vdpbf16ps, four flops a lane); returns the flops done and writes the
  // chains' sum to *sink.
  int64_t (*fma_chains)(int64_t flops, float* sink);
  // The instruction fma_chains runs ("fp32 FMA", or "vdpbf16ps" on v4_bf16),
  // for the bench's report.
  const char* peak_instruction;
  // Attention (see AttentionArgs). Decode: items are B·Hkv·attention_splits
  // pieces of keys, each writing its rows' (max, sum, accumulator) to
  // a.partial; merge: items are the B·Hkv kv heads, combining their pieces
  // into out. Prefill: items are B·Hkv·ceil(L / tile positions) tiles of
  // query rows. scratch: attention_scratch_floats(a), one per concurrent call.
  void (*attention_decode)(const AttentionArgs&, int64_t begin, int64_t end, float* scratch);
  void (*attention_merge)(const AttentionArgs&, int64_t begin, int64_t end);
  void (*attention_prefill)(const AttentionArgs&, int64_t begin, int64_t end, float* scratch);
};

// Each instruction set's entry points (csrc/kernels/<op>.cpp, compiled once
// per ISA; the namespace keeps the copies apart) and their table (table.cpp).
#define TK_KERNEL_DECLS                                                                         \
  void rms_norm(const RmsNormArgs&, int64_t, int64_t);                                          \
  void residual_norm(const ResidualNormArgs&, int64_t, int64_t);                                \
  void swiglu(const SwigluArgs&, int64_t, int64_t);                                              \
  void rope_table(const RopeTableArgs&, int64_t, int64_t);                                      \
  void rope(const RopeArgs&, int64_t, int64_t, float*);                                         \
  void linear_prepare_x(const LinearX&, WeightKind, float*, int64_t, int64_t);                  \
  void linear(const LinearArgs&, int64_t, int64_t);                                             \
  void linear_quantize_x(const LinearX&, WeightKind, int64_t, int8_t*, float*, float*, int64_t, int64_t); \
  void linear_int8(const LinearArgs&, int64_t, int64_t);                                        \
  void linear_quantize_x8(const LinearX&, WeightKind, int64_t, int8_t*, float*, float*, int64_t, int64_t); \
  void linear_gemm8(const LinearArgs&, int64_t, int64_t);                                       \
  void linear_bf16(const LinearArgs&, int64_t, int64_t);                                        \
  uint64_t read_sum(const uint64_t*, int64_t);                                                  \
  int64_t fma_chains(int64_t, float*);                                                          \
  void attention_decode(const AttentionArgs&, int64_t, int64_t, float*);                        \
  void attention_merge(const AttentionArgs&, int64_t, int64_t);                                 \
  void attention_prefill(const AttentionArgs&, int64_t, int64_t, float*);                       \
  extern const Table table;
namespace base {
TK_KERNEL_DECLS
}
namespace v3 {
TK_KERNEL_DECLS
}
namespace v4 {
TK_KERNEL_DECLS
}
namespace v3_vnni {
TK_KERNEL_DECLS
}
namespace v4_vnni {
TK_KERNEL_DECLS
}
namespace v4_bf16 {
TK_KERNEL_DECLS
}
#undef TK_KERNEL_DECLS

// The table in use: the best one for the running CPU (v4-bf16 / v4-vnni / v4 with
// AVX-512, v3-vnni / v3 with AVX2/FMA/F16C, else base) unless tk::use_isa() (ops.h) picked another.
const Table& select();

} // namespace tk::kern
