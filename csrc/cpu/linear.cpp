// linear's eval_cpu: x to int8 for the integer paths (csrc/kernels/linear_int8.cpp
// for decode, linear_gemm8.cpp for prefill), x as bf16 rows for the bf16
// dot-product loops (bf16 x × bf16 w on v4-bf16), else x in fp32 for the
// fp32 decode loops or the prefill GEMM (csrc/kernels/linear.cpp); then
// output columns across threads.
#include <algorithm>
#include <cstring>
#include <numeric>

#include "cpu/eval.h"
#include "cpu/parallel.h"

namespace tk {

namespace {

// `a` in row-major order: its own data, or a copy gathered into `keep` (a
// transposed or sliced view). Runs inside the task, where the data is ready.
const void* row_major(const mx::array& a, std::vector<char>& keep) {
  if (a.flags().row_contiguous) {
    return a.data<char>();
  }
  const size_t item = a.itemsize();
  keep.resize(a.size() * item);
  const char* src = a.data<char>();
  std::vector<int64_t> idx(a.ndim(), 0);
  for (size_t j = 0; j < a.size(); ++j) {
    int64_t off = 0;
    for (size_t d = 0; d < a.ndim(); ++d) {
      off += idx[d] * a.strides()[d];
    }
    std::memcpy(keep.data() + j * item, src + off * item, item);
    for (int d = int(a.ndim()) - 1; d >= 0 && ++idx[d] == a.shape(d); --d) {
      idx[d] = 0;
    }
  }
  return keep.data();
}

// n elements of x's copy for one call: a buffer this thread keeps between
// calls up to 64 MB (a prefill-sized buffer would otherwise be page-faulted
// in every call), else `owned`, freed with the call.
template <class T>
T* x_buffer(std::vector<T>& owned, size_t n) {
  thread_local std::vector<T> kept;
  std::vector<T>& v = n * sizeof(T) <= (size_t(1) << 26) ? kept : owned;
  if (v.size() < n) {
    v.resize(n);
  }
  return v.data();
}

// Output rows of w are handed to threads in blocks of this many (a multiple
// of every kernel's row block), so each thread streams whole rows.
constexpr int64_t kRowsPerItem = 16;
// Weight elements (times rows of x) below which a second thread costs more
// to wake than it saves.
constexpr int64_t kLinearMinWork = int64_t(1) << 17;

// Output columns (rows of w) in blocks of whole rows, across threads.
void output_rows(const kern::LinearArgs& args, void (*fn)(const kern::LinearArgs&, int64_t, int64_t)) {
  const int64_t items = (args.N + kRowsPerItem - 1) / kRowsPerItem;
  const int64_t work = kRowsPerItem * args.K * std::max<int64_t>(1, args.M / 4);
  parallel_for(items, work, kLinearMinWork, [&](int64_t b, int64_t e, int) {
    fn(args, b * kRowsPerItem, std::min(e * kRowsPerItem, args.N));
  });
}

// Quantized weights against bf16 x, few rows, bf16/fp16 output: x to int8
// once, then integer dot products (kernels/linear_int8.cpp, whose comments
// give the measured rates: on Zen 3 with AVX2, M = 1, 82-98 % of the read
// probe for q4 / q6 and 73-93 % for q8 at Talkie 13B's shapes, against ~28 %
// for the fp32 FMA loop it replaced). x is quantized here, on the calling
// thread: ~9 µs per row of x at K 13696 on Zen 3 (quantize_x.inc), ~1 % of
// a call's weight read at M = 1.
// False where the path does not apply: fp32 output (the factored form's
// cancellation, kernels.h) and fp32/fp16 x keep the FMA loops, as does the
// base table (no AVX2).
bool linear_int8(const kern::Table& kernels, kern::LinearArgs& args, const kern::LinearX& xv) {
  if (kernels.linear_int8 == nullptr || args.kind < kern::WeightKind::q4 || xv.dtype != kern::Dtype::bf16 ||
      args.out_dtype == kern::Dtype::f32 || args.M > kern::kInt8MaxM) {
    return false;
  }
  const int64_t units = kern::int8_units(args.K);
  thread_local std::vector<int8_t> x8;
  thread_local std::vector<float> dx, xsum;
  // On 64-byte boundaries, so the loop's 32-byte loads of x8 and dx never
  // straddle two cache lines (malloc gives 16): 1.1-1.2x its speed on Zen 3.
  x8.resize(args.M * units * 64 + 64);
  dx.resize(args.M * kern::int8_dx_stride(args.K, args.M) + 16);
  xsum.resize(args.M * (args.K / args.group_size));
  int8_t* x8a = kern::align64(x8.data());
  float* dxa = kern::align64(dx.data());
  kernels.linear_quantize_x(xv, args.kind, args.group_size, x8a, dxa, xsum.data(), 0, args.M);
  args.x8 = x8a;
  args.dx = dxa;
  args.xsum = xsum.data();
  output_rows(args, kernels.linear_int8);
  return true;
}

// Quantized weights against bf16 x, prefill rows, bf16/fp16 output, on a
// table with the integer GEMM (AVX2): x to int8 once, then the integer GEMM
// (kernels/linear_gemm8.cpp). False elsewhere: the fp32 GEMM.
bool linear_gemm8(const kern::Table& kernels, kern::LinearArgs& args, const kern::LinearX& xv) {
  if (kernels.linear_gemm8 == nullptr || args.kind < kern::WeightKind::q4 || xv.dtype != kern::Dtype::bf16 ||
      args.out_dtype == kern::Dtype::f32 || args.M < kern::kLinearGemmMinM) {
    return false;
  }
  const int64_t rows = args.M + kern::kGemm8PadRows, ldx = kern::gemm8_ldx(args.K);
  const int64_t blocks = args.K / kern::kLinearBlock, groups = args.K / args.group_size;
  // Kept between calls up to 64 MB of codes, as x in fp32 for the fp32 GEMM.
  thread_local std::vector<int8_t> kept_x8;
  thread_local std::vector<float> kept_dx, kept_xsum;
  std::vector<int8_t> owned_x8;
  std::vector<float> owned_dx, owned_xsum;
  const bool keep = rows * ldx <= (int64_t(1) << 26);
  std::vector<int8_t>& x8 = keep ? kept_x8 : owned_x8;
  std::vector<float>& dx = keep ? kept_dx : owned_dx;
  std::vector<float>& xsum = keep ? kept_xsum : owned_xsum;
  x8.resize(rows * ldx);
  dx.resize(rows * blocks);
  xsum.resize(rows * groups);
  std::memset(x8.data() + args.M * ldx, 0, kern::kGemm8PadRows * ldx);
  std::memset(dx.data() + args.M * blocks, 0, sizeof(float) * kern::kGemm8PadRows * blocks);
  std::memset(xsum.data() + args.M * groups, 0, sizeof(float) * kern::kGemm8PadRows * groups);
  parallel_for(args.M, args.K, int64_t(1) << 18, [&](int64_t b, int64_t e, int) {
    kernels.linear_quantize_x8(xv, args.kind, args.group_size, x8.data(), dx.data(), xsum.data(), b, e);
  });
  args.x8 = x8.data();
  args.dx = dx.data();
  args.xsum = xsum.data();
  output_rows(args, kernels.linear_gemm8);
  return true;
}

// Dense bf16 weights against bf16 x, on a table with AVX512-BF16 (v4-bf16):
// x as bf16 rows of Kp, zero past K (no fp32 copy), then the bf16
// dot-product loops (kernels/linear.cpp, linear_bf16: the GEMM for prefill
// rows, decode_dot for fewer). False elsewhere: the fp32 loops.
bool linear_bf16(const kern::Table& kernels, kern::LinearArgs& args, const kern::LinearX& xv) {
  if (kernels.linear_bf16 == nullptr || args.kind != kern::WeightKind::bf16 || xv.dtype != kern::Dtype::bf16) {
    return false;
  }
  std::vector<uint16_t> owned;
  uint16_t* xb = x_buffer(owned, size_t(args.M * args.Kp));
  const auto* src = static_cast<const uint16_t*>(xv.ptr);
  parallel_for(args.M, args.Kp, int64_t(1) << 18, [&](int64_t b, int64_t e, int) {
    for (int64_t m = b; m < e; ++m) {
      uint16_t* d = xb + m * args.Kp;
      const uint16_t* r = src + m * xv.row_stride;
      if (xv.col_stride == 1) {
        std::memcpy(d, r, sizeof(uint16_t) * args.K);
      } else {
        for (int64_t k = 0; k < args.K; ++k) {
          d[k] = r[k * xv.col_stride];
        }
      }
      std::fill(d + args.K, d + args.Kp, uint16_t(0));
    }
  });
  args.xb = xb;
  output_rows(args, kernels.linear_bf16);
  return true;
}

} // namespace

void TalkieLinear::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
  auto& enc = encoder_for(stream(), in, outs);
  auto& out = outs[0];
  if (out.size() == 0) {
    return;
  }
  const auto& x = in[0];
  kern::LinearArgs args{};
  args.kind = kern::WeightKind(kind_);
  args.scale_dtype = in.size() > 2 ? kernel_dtype(in[2].dtype()) : kern::Dtype::f32;
  args.bias_dtype = in.size() > 3 ? kernel_dtype(in[3].dtype()) : kern::Dtype::f32;
  args.out_dtype = kernel_dtype(out.dtype());
  args.M = x.shape(0);
  args.N = in[1].shape(0);
  args.K = x.shape(1);
  args.Kp = (args.K + kern::kLinearBlock - 1) / kern::kLinearBlock * kern::kLinearBlock;
  args.group_size = group_size_;
  args.out = out.data<char>();
  kern::LinearX xv{x.data<char>(), kernel_dtype(x.dtype()), args.M, args.K, x.strides(0), x.strides(1)};
  std::vector<mx::array> weights;
  for (size_t i = 1; i < in.size(); ++i) {
    weights.push_back(mx::array::unsafe_weak_copy(in[i]));
  }
  enc.dispatch([args, xv, weights = std::move(weights)]() mutable {
    std::vector<char> keep[3];
    args.w = row_major(weights[0], keep[0]);
    if (weights.size() > 1) {
      args.scales = row_major(weights[1], keep[1]);
      args.biases = row_major(weights[2], keep[2]);
    }
    const auto& kernels = kern::select();
    if (linear_int8(kernels, args, xv) || linear_gemm8(kernels, args, xv) || linear_bf16(kernels, args, xv)) {
      return;
    }
    // 1. x in fp32, in the weight's block order (x_buffer).
    std::vector<float> owned;
    float* xf = x_buffer(owned, size_t(args.M * args.Kp));
    parallel_for(args.M, args.Kp, int64_t(1) << 18, [&](int64_t b, int64_t e, int) {
      kernels.linear_prepare_x(xv, args.kind, xf, b, e);
    });
    args.x = xf;
    // 2. Σx per group, once for all output columns (the decode loops' bias
    //    term b·Σx_g; the prefill GEMM dequantizes its panels instead).
    std::vector<float> xsum;
    if (args.kind >= kern::WeightKind::q4 && args.M < kern::kLinearGemmMinM) {
      const int64_t groups = args.K / args.group_size;
      xsum.resize(args.M * groups);
      for (int64_t m = 0; m < args.M; ++m) {
        for (int64_t g = 0; g < groups; ++g) {
          const float* p = args.x + m * args.Kp + g * args.group_size;
          xsum[m * groups + g] = float(std::accumulate(p, p + args.group_size, 0.0));
        }
      }
      args.xsum = xsum.data();
      args.factored = args.out_dtype != kern::Dtype::f32;
    }
    // 3. Output columns in blocks of whole weight rows, across threads.
    output_rows(args, kernels.linear);
  });
}

} // namespace tk
