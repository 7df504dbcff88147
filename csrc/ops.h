// talkie_kernels native CPU ops: the four Talkie ops as MLX Primitives.
//
// Modelled on MLX's `fast` ops (mlx/fast.cpp): each op function (ops.cpp)
// validates its arrays (std::invalid_argument -> ValueError, tk::type_error ->
// TypeError, messages "[op_name] ..." as in talkie_kernels/_checks.py),
// builds a fallback from plain MLX ops composed exactly like
// talkie_kernels/reference.py, and returns arrays backed by a Primitive
// (primitives.h) that uses the fallback for vjp, jvp and vmap (so gradients
// equal plain MLX's). eval_cpu (csrc/cpu/<op>.cpp) runs the loops of
// csrc/kernels/<op>.cpp; on a GPU stream the op returns the fallback instead.
//
// Numerics of the fused loops: inputs fp32/fp16/bf16, outputs in the input
// dtype, all arithmetic in fp32 (RoPE angles in double), each output rounded
// once (round to nearest even).
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "mlx/mlx.h"

namespace tk {

namespace mx = mlx::core;

// Raised for wrong argument types and dtypes; the bindings map it to TypeError.
struct type_error : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

// Talkie's norm epsilon: fp32 machine epsilon.
inline constexpr double kFp32Eps = 1.1920928955078125e-07;

// Weightless RMSNorm over the last axis. x (..., D) -> (..., D), x.dtype.
// 1. ss = sum(x^2) over D, fp32.
// 2. out = round(x * 1 / sqrt(ss / D + eps)).
mx::array rms_norm(const mx::array& x, double eps, mx::StreamOrDevice s = {});

// Talkie's inverse-rotation RoPE (rotate-half layout).
// x (B, H, L, D), D even; offset integer array () or (B,) -> (B, H, L, D).
// 1. pos = offset[b] + l; theta_i = pos * base^(-2i/D), i < D/2, in double,
//    reduced mod pi/2 before fp32 sin/cos (accurate at any position); one
//    cos/sin row per (offset row, position), shared by heads (and q, k).
// 2. x1, x2 = x[..., :D/2], x[..., D/2:];
//    out = round([x1 cos + x2 sin, x2 cos - x1 sin]) in fp32.
mx::array rope(
    const mx::array& x,
    const mx::array& offset,
    double base,
    mx::StreamOrDevice s = {});

// RoPE -> RMSNorm -> head gain on q (not k), in one pass, in fp32.
// q, k (B, H, L, D) (any strides but a contiguous D: transposed views of a
// (B, L, H, D) projection are read in place); head_gain (H,) -> (q, k),
// row-contiguous (B, H, L, D).
// 1. y = rope(x) as above, kept in fp32.
// 2. y = y / sqrt(mean(y^2) + eps)  (fp32).
// 3. q: y = y * head_gain[h]; out = round(y), once.
std::pair<mx::array, mx::array> rope_qk_norm(
    const mx::array& q,
    const mx::array& k,
    const mx::array& head_gain,
    const mx::array& offset,
    double base,
    double eps,
    mx::StreamOrDevice s = {});

// Gated residual add and the next weightless RMSNorm.
// x, y, skip (..., D), one dtype; gain, skip_gain floating arrays of shape
// (1,) or () -> (x_new, normed), both (..., D) in x.dtype.
// 1. x_new = round(x + gain*y [+ skip_gain*skip]), summed in fp32.
// 2. normed = rms_norm(x_new) of the stored (rounded) x_new, as the next
//    layer of the plain model reads it.
std::pair<mx::array, mx::array> residual_norm(
    const mx::array& x,
    const mx::array& y,
    const mx::array& gain,
    const std::optional<mx::array>& skip,
    const std::optional<mx::array>& skip_gain,
    double eps,
    mx::StreamOrDevice s = {});

// The gated activation of Talkie's MLP. gate, x (..., D), one dtype ->
// (..., D) in that dtype.
// 1. silu = gate / (1 + e^-gate)  (fp32).
// 2. out = round(silu * x), once.
mx::array swiglu(const mx::array& gate, const mx::array& x, mx::StreamOrDevice s = {});

// x @ w.T for a dense or MLX-affine-quantized weight (mx.quantized_matmul's
// semantics, transpose=True). x (..., K) float; w (N, K) float, or (N,
// K*bits/32) uint32 with scales, biases (N, K/group_size) -> (..., N) in
// promote(x, w) (dense) or promote(x, scales, biases) (quantized).
// 1. xf = x in fp32 (M = prod(leading dims) rows of K).
// 2. per output (m, n): acc = sum_k xf[m,k] * w[n,k], where a quantized
//    w[n,k] = scale[n,g] * q[n,k] + bias[n,g] (g = k / group_size), all fp32.
// 3. out = round(acc), once.
// Native kernels: dense fp32/fp16/bf16 and affine bits 4/6/8 at group sizes
// 32/64/128; anything else (other modes or bits) returns MLX's own op.
mx::array linear(
    const mx::array& x,
    const mx::array& w,
    const std::optional<mx::array>& scales,
    const std::optional<mx::array>& biases,
    std::optional<int> group_size,
    std::optional<int> bits,
    const std::string& mode,
    mx::StreamOrDevice s = {});

// Attention with mx.fast.scaled_dot_product_attention's semantics.
// q (B, Hq, L, D), k (B, Hkv, S, D), v (B, Hkv, S, Dv), Hq a multiple of Hkv
// (query head h reads kv head h / (Hq/Hkv)); mask_mode "" (none), "causal"
// (key s visible to query l iff s <= l + S - L) or "array" with `mask` bool
// (keep) or float (added), broadcastable to (B, Hq, L, S) -> (B, Hq, L, Dv)
// in promote(q, k, v). In fp32, per query row:
// 1. s_j = scale · q·k_j, masked (a masked score is the lowest float);
// 2. out = Σ_j e^(s_j − max s) v_j / Σ_j e^(s_j − max s), rounded once.
// K and V are read in place with their strides (mlx-lm's cache views).
mx::array scaled_dot_product_attention(
    const mx::array& q,
    const mx::array& k,
    const mx::array& v,
    double scale,
    const std::string& mask_mode,
    const std::optional<mx::array>& mask,
    mx::StreamOrDevice s = {});

// The same with K and V as mx.quantize triples (codes (B, Hkv, S, D·bits/32)
// uint32, scales and biases (B, Hkv, S, D/group_size)), bits 4 or 8:
// mlx-lm's quantized_scaled_dot_product_attention, whose output dtype is
// promote(q, scales, biases). Each K/V element is dequantized in fp32
// (scale·q + bias) as it is read.
mx::array quantized_scaled_dot_product_attention(
    const mx::array& q,
    const std::vector<mx::array>& q_keys,
    const std::vector<mx::array>& q_values,
    double scale,
    const std::string& mask_mode,
    const std::optional<mx::array>& mask,
    int group_size,
    int bits,
    mx::StreamOrDevice s = {});

// GB/s of a streaming read of an `nbytes` buffer with the kernels' threads
// (the median of `repeats` reads): the machine's read bandwidth, for the bench.
double memory_read_gbps(int64_t nbytes, int repeats);
// The same read of a caller's buffer (an evaluated 1-D uint64 array of ones),
// which it can keep between reads: the bench interleaves one with each
// linear row's samples, where allocating 512 MiB per read would cost more
// than the read.
double memory_read_gbps_of(const mx::array& buffer, int repeats);

// Asks that an evaluated CPU array's memory be 2 MiB pages and collapses it
// into them in place (Linux: madvise MADV_HUGEPAGE, then MADV_COLLAPSE);
// see csrc/cpu/huge_pages.cpp for why. Returns the bytes now in 2 MiB pages:
// the whole 2 MiB pages inside the array (0 for arrays under ~4 MiB and on
// other systems), less any the kernel would not collapse (all of them before
// Linux 6.1). Raises RuntimeError naming the failed call where the kernel has
// no THP at all.
int64_t huge_pages(const mx::array& a);

// GFLOP/s of fp32 FMAs with the kernels' threads, at the current instruction
// set's vector width (the median of `repeats` runs of `flops_per_thread` flops
// on each thread, in independent chains that fill both FMA ports): the
// machine's arithmetic peak, for the bench's prefill GEMM rows.
double fma_peak_gflops(int64_t flops_per_thread, int repeats);

// How many inputs eval_cpu has gathered into a contiguous buffer because
// their last axis was strided (transposed (B, L, H, D) views are read in
// place and do not count).
int64_t contiguous_copies();

// The kernels' instruction sets this CPU can run, worst first: "base", plus
// where supported "v3" = AVX2/FMA/F16C, "v3-vnni" = v3 + AVX-VNNI, "v4" =
// AVX-512 (F/BW/CD/DQ/VL), "v4-vnni" = v4 + AVX512-VNNI (the VNNI ones
// differ in linear's integer path only), "v4-bf16" = v4-vnni + AVX512-BF16
// (differs in linear's bf16 x × bf16 w loops and the FMA-peak probe); and switching between them (for
// tests; the best one, the last, is used by default).
std::vector<std::string> available_isas();
void use_isa(const std::string& name);

// Writes rows into a KV cache buffer in place (the one op here that is not
// functional: see talkie_kernels/kv_cache.py for the ownership rule that
// makes it safe). buffer (B, H, S, D), rows (B, H, n, D), one dtype,
// 0 <= start, start + n <= S -> (B, H, S, D) sharing buffer's memory.
// 1. out = buffer (its memory, not a copy, whoever else holds it).
// 2. out[:, :, start:start + n, :] = rows.
// Readers of buffer's other rows, scheduled earlier on the same stream, read
// them unchanged; MLX's slice_update instead copies the whole buffer whenever
// a reader is still pending (mlx-lm's pipelined generate_step: every token).
// Off the CPU: mx::slice_update.
mx::array kv_write(const mx::array& buffer, const mx::array& rows, int start, mx::StreamOrDevice s = {});

} // namespace tk
