// The Python module talkie_kernels._native.
//
// It takes arrays and numbers only: the Python API checks and normalizes
// every argument first (talkie_kernels/_checks.py: one function per op, for
// every backend), and the C++ op functions keep their checks of the arrays
// (ValueError/TypeError "[op_name] ...", the same messages).
#include <atomic>
#include <stdexcept>
#include <string>

#include <nanobind/nanobind.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/variant.h>
#include <nanobind/stl/vector.h>

#include "kernels/kernels.h"
#include "mlx/mlx.h"
#include "ops.h"
#include "cpu/parallel.h"

namespace nb = nanobind;
namespace mx = mlx::core;
using namespace nb::literals;

namespace {

// An offset: an int32 array (shape () or (B,)), or a Python int, which
// becomes an int32 scalar input of the primitive.
using Offset = std::variant<mx::array, int>;

mx::array offset_array(const Offset& offset) {
  if (const int* v = std::get_if<int>(&offset)) {
    return mx::array(*v, mx::int32);
  }
  return std::get<mx::array>(offset);
}

// An attention mask: None, a mode string ("causal") or an array.
using Mask = std::optional<std::variant<mx::array, std::string>>;

std::pair<std::string, std::optional<mx::array>> mask_args(const Mask& mask) {
  if (!mask) {
    return {"", std::nullopt};
  }
  if (const auto* mode = std::get_if<std::string>(&*mask)) {
    return {*mode, std::nullopt};
  }
  return {"array", std::get<mx::array>(*mask)};
}

} // namespace

NB_MODULE(_native, m) {
  m.doc() = "Native CPU kernels for Talkie's fused ops, as MLX Primitives (csrc/).";

  // tk::type_error derives from std::invalid_argument (-> ValueError), so it
  // needs its own translator to surface as TypeError.
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const tk::type_error& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    }
  });

  m.def(
      "roundtrip",
      [](const mx::array& a) { return a; },
      "a"_a,
      "Returns its argument: a smoke test that mx.array crosses into the extension.");

  m.def(
      "rms_norm",
      [](const mx::array& x, double eps) { return tk::rms_norm(x, eps); },
      "x"_a,
      "eps"_a,
      "Weightless RMSNorm over the last axis, fp32 reduction, one rounding.");

  m.def(
      "rope",
      [](const mx::array& x, const Offset& offset, double base) { return tk::rope(x, offset_array(offset), base); },
      "x"_a,
      "offset"_a,
      "base"_a,
      "Talkie's inverse-rotation RoPE (rotate-half) on x (B, H, L, D).");

  m.def(
      "rope_qk_norm",
      [](const mx::array& q, const mx::array& k, const mx::array& head_gain, const Offset& offset, double base,
         double eps) { return tk::rope_qk_norm(q, k, head_gain, offset_array(offset), base, eps); },
      "q"_a,
      "k"_a,
      "head_gain"_a,
      "offset"_a,
      "base"_a,
      "eps"_a,
      "Fused RoPE -> RMSNorm -> head gain (q only) on q, k (B, H, L, D) -> (q, k).");

  m.def(
      "residual_norm",
      [](const mx::array& x, const mx::array& y, const mx::array& gain, const std::optional<mx::array>& skip,
         const std::optional<mx::array>& skip_gain,
         double eps) { return tk::residual_norm(x, y, gain, skip, skip_gain, eps); },
      "x"_a,
      "y"_a,
      "gain"_a,
      "skip"_a.none(),
      "skip_gain"_a.none(),
      "eps"_a,
      "Fused x_new = x + gain*y [+ skip_gain*skip] (rounded once), normed = rms_norm(x_new).");

  m.def(
      "swiglu",
      [](const mx::array& gate, const mx::array& x) { return tk::swiglu(gate, x); },
      "gate"_a,
      "x"_a,
      "silu(gate) * x in fp32, one rounding.");

  m.def(
      "linear",
      [](const mx::array& x, const mx::array& weight, const std::optional<mx::array>& scales,
         const std::optional<mx::array>& biases, std::optional<int> group_size, std::optional<int> bits,
         const std::string& mode) { return tk::linear(x, weight, scales, biases, group_size, bits, mode); },
      "x"_a,
      "weight"_a,
      "scales"_a.none(),
      "biases"_a.none(),
      "group_size"_a.none(),
      "bits"_a.none(),
      "mode"_a,
      "x @ weight.T, dense or MLX-quantized (mx.quantized_matmul's semantics, transpose=True).");

  m.def(
      "scaled_dot_product_attention",
      [](const mx::array& q, const mx::array& k, const mx::array& v, double scale, const Mask& mask) {
        auto [mode, arr] = mask_args(mask);
        return tk::scaled_dot_product_attention(q, k, v, scale, mode, arr);
      },
      "q"_a,
      "k"_a,
      "v"_a,
      "scale"_a,
      "mask"_a.none(),
      "Attention (mx.fast.scaled_dot_product_attention's semantics); mask None, 'causal' or an array.");

  m.def(
      "quantized_scaled_dot_product_attention",
      [](const mx::array& q, const std::vector<mx::array>& q_keys, const std::vector<mx::array>& q_values,
         double scale, const Mask& mask, int group_size, int bits) {
        auto [mode, arr] = mask_args(mask);
        return tk::quantized_scaled_dot_product_attention(q, q_keys, q_values, scale, mode, arr, group_size, bits);
      },
      "q"_a,
      "q_keys"_a,
      "q_values"_a,
      "scale"_a,
      "mask"_a.none(),
      "group_size"_a,
      "bits"_a,
      "Attention over mx.quantize'd K/V (mlx-lm's quantized_scaled_dot_product_attention).");

  m.def(
      "memory_read_gbps",
      &tk::memory_read_gbps,
      "nbytes"_a = int64_t(1) << 29,
      "repeats"_a = 5,
      "GB/s of a streaming read of an nbytes buffer with the kernels' threads (median of repeats).");
  m.def(
      "memory_read_gbps_of",
      &tk::memory_read_gbps_of,
      "buffer"_a,
      "repeats"_a = 1,
      "memory_read_gbps over a kept buffer: a 1-D uint64 array of ones (at least 1 MiB).");
  m.def(
      "huge_pages",
      &tk::huge_pages,
      "a"_a,
      "Asks that an evaluated CPU array's memory be 2 MiB pages and collapses it into them in place (Linux 6.1+); "
      "returns the bytes now in 2 MiB pages (0 where the array holds no whole one, and off Linux).");
  m.def(
      "fma_peak_gflops",
      &tk::fma_peak_gflops,
      "flops_per_thread"_a = int64_t(1) << 30,
      "repeats"_a = 5,
      "GFLOP/s of fp32 FMA chains on the kernels' threads at the current ISA's vector width (median of repeats); "
      "on v4-bf16, of vdpbf16ps chains (fma_peak_instruction).");
  m.def(
      "fma_peak_instruction",
      [] { return std::string(tk::kern::select().peak_instruction); },
      "The instruction fma_peak_gflops runs with the current ISA: 'fp32 FMA', or 'vdpbf16ps' on v4-bf16.");

  m.def(
      "kv_write",
      [](const mx::array& buffer, const mx::array& rows, int start) { return tk::kv_write(buffer, rows, start); },
      "buffer"_a,
      "rows"_a,
      "start"_a,
      "buffer with rows written at [start, start + n) of its axis 2, in buffer's own memory (not functional: "
      "see talkie_kernels/kv_cache.py).");
  m.def("num_threads", &tk::num_threads, "Threads the kernels use for large inputs.");
  m.def(
      "set_num_threads",
      &tk::set_num_threads,
      "n"_a,
      "Caps the kernels' threads (1 = single-threaded); clamped to the CPU's cores.");
  m.def(
      "isa",
      [] { return std::string(tk::kern::select().isa); },
      "The instruction set of the kernels in use (one of available_isas()).");
  m.def(
      "int8_gemm_bits",
      [] {
        return tk::kern::select().linear_gemm8 != nullptr ? std::vector<int>{4, 6, 8} : std::vector<int>{};
      },
      "The quantized widths whose prefill (bf16 x, at least 8 rows, bf16/fp16 output) runs the integer GEMM "
      "(x rounded to int8 per 32 columns) on the instruction set in use; the others run the fp32 GEMM.");
  m.def(
      "contiguous_copies",
      &tk::contiguous_copies,
      "How many inputs were copied because their last axis was strided (others are read in place).");
  m.def(
      "parallel_for_check",
      [](int64_t n, int64_t fail_at) {
        std::atomic<int64_t> sum{0};
        tk::parallel_for(n, int64_t(1) << 30, 1, [&](int64_t begin, int64_t end, int) {
          for (int64_t i = begin; i < end; ++i) {
            if (i == fail_at) {
              throw std::runtime_error("[parallel_for_check] item " + std::to_string(i));
            }
            sum += i;
          }
        });
        return sum.load();
      },
      "n"_a,
      "fail_at"_a = int64_t(-1),
      "Σ i over [0, n) split by parallel_for over the kernels' threads, the loop throwing RuntimeError at item "
      "fail_at (for tests).");
  m.def("available_isas", &tk::available_isas, "Instruction sets this CPU can run the kernels with.");
  m.def("use_isa", &tk::use_isa, "name"_a, "Switches the kernels to another instruction set (for tests).");
}
