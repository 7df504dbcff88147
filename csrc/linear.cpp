// linear: the op function (checks -> fallback -> Primitive) and its eval_cpu,
// which hands the loops of csrc/linear_kernels.cpp raw pointers.
#include <algorithm>
#include <chrono>
#include <cstring>
#include <numeric>

#include "cpu_eval.h"
#include "errors.h"
#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "ops.h"
#include "parallel.h"

namespace tk {

namespace {

constexpr const char* kOp = "linear";

void check_float(const char* name, const mx::array& a) {
  if (a.dtype() != mx::float32 && a.dtype() != mx::float16 && a.dtype() != mx::bfloat16) {
    fail_type(kOp, std::string(name) + " must be float32, float16 or bfloat16, got " + fmt(a.dtype()) + ".");
  }
}

// The kernel for a checked weight, or -1 where MLX's own op runs.
int weight_kind(const mx::array& w, bool quantized, int group_size, int bits, const std::string& mode) {
  if (!quantized) {
    return int(w.dtype() == mx::float32 ? kern::WeightKind::f32
               : w.dtype() == mx::float16 ? kern::WeightKind::f16
                                           : kern::WeightKind::bf16);
  }
  if (mode != "affine" || (group_size != 32 && group_size != 64 && group_size != 128)) {
    return -1;
  }
  switch (bits) {
    case 4:
      return int(kern::WeightKind::q4);
    case 6:
      return int(kern::WeightKind::q6);
    case 8:
      return int(kern::WeightKind::q8);
    default:
      return -1;
  }
}

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

bool cpu_has_avx512bf16() {
#if defined(__x86_64__) || defined(_M_X64)
  static const bool has = __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

// Output rows of w are handed to threads in blocks of this many (a multiple
// of every kernel's row block), so each thread streams whole rows.
constexpr int64_t kRowsPerItem = 16;
// Weight elements (times rows of x) below which a second thread costs more
// to wake than it saves.
constexpr int64_t kLinearMinWork = int64_t(1) << 17;

} // namespace

mx::array linear(
    const mx::array& x,
    const mx::array& w,
    const std::optional<mx::array>& scales,
    const std::optional<mx::array>& biases,
    std::optional<int> group_size_in,
    std::optional<int> bits_in,
    const std::string& mode,
    mx::StreamOrDevice s_) {
  check_float("x", x);
  if (x.ndim() < 1) {
    fail(kOp, "x must have at least 1 dimensions, got shape " + fmt(x.shape()) + ".");
  }
  if (w.ndim() != 2) {
    fail(kOp, "weight must have shape (N, K), got " + fmt(w.shape()) + ".");
  }
  auto s = mx::to_stream(s_);
  const int K = x.shape(-1), N = w.shape(0);
  const bool quantized = scales.has_value();
  int group_size = 0, bits = 0;
  if (!quantized) {
    if (biases) {
      fail(kOp, "biases were given without scales (a quantized weight needs both).");
    }
    if (group_size_in || bits_in) {
      fail(kOp, "group_size and bits apply to a quantized weight; no scales were given.");
    }
    check_float("weight", w);
    if (w.shape(1) != K) {
      fail(kOp, "x has " + std::to_string(K) + " features but weight " + fmt(w.shape()) + " expects " +
                    std::to_string(w.shape(1)) + " (K).");
    }
  } else {
    if (w.dtype() != mx::uint32) {
      fail_type(kOp, "a quantized weight must be uint32 (as mx.quantize packs it), got " + fmt(w.dtype()) + ".");
    }
    if (mode != "affine") {  // MLX checks and runs the other modes
      try {
        return mx::quantized_matmul(x, w, *scales, biases, true, group_size_in, bits_in, mode, s);
      } catch (const std::invalid_argument& e) {
        fail(kOp, e.what());
      }
    }
    check_float("scales", *scales);
    if (!biases) {
      fail(kOp, "affine quantization needs biases (mx.quantize returns weight, scales, biases).");
    }
    check_float("biases", *biases);
    group_size = group_size_in.value_or(64);
    bits = bits_in.value_or(4);
    if (bits < 2 || bits > 8 || bits == 7) {
      fail(kOp, "bits must be one of 2, 3, 4, 5, 6, 8 for affine quantization, got " + std::to_string(bits) + ".");
    }
    if (group_size != 32 && group_size != 64 && group_size != 128) {
      fail(kOp, "group_size must be 32, 64 or 128 for affine quantization, got " + std::to_string(group_size) + ".");
    }
    if (K % group_size) {
      fail(kOp, "x has " + std::to_string(K) + " features, not a multiple of group_size " +
                    std::to_string(group_size) + ".");
    }
    if (int64_t(w.shape(1)) * 32 != int64_t(K) * bits) {
      fail(kOp, "weight " + fmt(w.shape()) + " does not hold " + std::to_string(K) + " features at " +
                    std::to_string(bits) + " bits (expected (" + std::to_string(N) + ", " +
                    std::to_string(int64_t(K) * bits / 32) + ")).");
    }
    const mx::Shape want = {N, K / group_size};
    for (auto [name, a] : {std::pair{"scales", &*scales}, std::pair{"biases", &*biases}}) {
      if (a->shape() != want) {
        fail(kOp, std::string(name) + " must have shape " + fmt(want) + " (N, K/group_size), got " +
                      fmt(a->shape()) + ".");
      }
    }
  }

  // (..., K) -> (M, K): the primitive works on rows; the leading dims come back at the end.
  mx::Shape out_shape(x.shape().begin(), x.shape().end() - 1);
  out_shape.push_back(N);
  const int M = std::accumulate(x.shape().begin(), x.shape().end() - 1, 1, std::multiplies<int>());
  std::vector<mx::array> inputs = {mx::reshape(x, {M, K}, s), w};
  if (quantized) {
    inputs.push_back(*scales);
    inputs.push_back(*biases);
  }
  auto fallback = [quantized, group_size, bits, s](std::vector<mx::array> in) {
    if (!quantized) {
      return std::vector<mx::array>{mx::matmul(in[0], mx::transpose(in[1], s), s)};
    }
    return std::vector<mx::array>{
        mx::quantized_matmul(in[0], in[1], in[2], in[3], true, group_size, bits, "affine", s)};
  };
  const int kind = weight_kind(w, quantized, group_size, bits, mode);
  bool native = !use_fallback(s) && kind >= 0;
#if defined(__APPLE__)
  // Accelerate's fp32 GEMM beats these loops on Apple silicon for prefill.
  native = native && !(kind == int(kern::WeightKind::f32) && M >= 8);
#endif
  mx::array out = native
      ? mx::array({M, N},
                  quantized ? mx::promote_types(mx::promote_types(x.dtype(), scales->dtype()), biases->dtype())
                            : mx::promote_types(x.dtype(), w.dtype()),
                  std::make_shared<TalkieLinear>(s, fallback, kind, group_size),
                  inputs)
      : fallback(inputs)[0];
  return mx::reshape(out, out_shape, s);
}

void TalkieLinear::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
  auto& enc = mx::cpu::get_command_encoder(stream());
  for (auto& a : in) {
    enc.set_input_array(a);
  }
  auto& out = outs[0];
  out.set_data(mx::allocator::malloc(out.nbytes()));
  enc.set_output_array(out);
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
    // 1. x in fp32, in the weight's block order; kept between calls (a
    //    prefill-sized buffer would otherwise be page-faulted in every call).
    thread_local std::vector<float> kept;
    std::vector<float> owned;
    const size_t need = size_t(args.M * args.Kp);
    std::vector<float>& xbuf = need <= (size_t(1) << 24) ? kept : owned;
    if (xbuf.size() < need) {
      xbuf.resize(need);
    }
    parallel_for(args.M, args.Kp, int64_t(1) << 18, [&](int64_t b, int64_t e, int) {
      kernels.linear_prepare_x(xv, args.kind, xbuf.data(), b, e);
    });
    args.x = xbuf.data();
    // 2. Σx per group, once for all output columns (the bias term b·Σx_g).
    std::vector<float> xsum;
    if (args.kind >= kern::WeightKind::q4) {
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
    // 3. q4 against bf16 x with vdpbf16ps, where the CPU has it (see q4_bf16_tile).
    std::vector<uint16_t> xbf;
    if (args.kind == kern::WeightKind::q4 && args.factored && xv.dtype == kern::Dtype::bf16 && args.M <= 2 &&
        args.K % 64 == 0 &&
        std::strcmp(kernels.isa, "v4") == 0 && cpu_has_avx512bf16()) {
      xbf.resize(args.M * args.K);
      const auto* src = static_cast<const uint16_t*>(xv.ptr);
      for (int64_t m = 0; m < args.M; ++m) {
        for (int64_t k = 0; k < args.K; ++k) {  // chunk c: column 64c + 2j -> j, 64c + 2j + 1 -> 32 + j
          const int64_t c = k / 64, j = (k % 64) / 2, odd = k % 2;
          xbf[m * args.K + c * 64 + odd * 32 + j] = src[m * xv.row_stride + k * xv.col_stride];
        }
      }
      args.xbf = xbf.data();
    }
    // 4. Output columns in blocks of whole weight rows, across threads.
    const int64_t items = (args.N + kRowsPerItem - 1) / kRowsPerItem;
    const int64_t work = kRowsPerItem * args.K * std::max<int64_t>(1, args.M / 4);
    parallel_for(items, work, kLinearMinWork, [&](int64_t b, int64_t e, int) {
      kernels.linear(args, b * kRowsPerItem, std::min(e * kRowsPerItem, args.N));
    });
  });
}

void TalkieLinear::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[linear] TalkieLinear has no GPU kernel; the op uses its fallback there.");
}

bool TalkieLinear::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const TalkieLinear&>(other);
  return kind_ == o.kind_ && group_size_ == o.group_size_;
}

double memory_read_gbps(int64_t nbytes, int repeats) {
  if (nbytes < (int64_t(1) << 20) || repeats < 1) {
    throw std::invalid_argument("[memory_read_gbps] nbytes must be at least 1 MiB and repeats at least 1.");
  }
  const int64_t words = nbytes / 8;
  std::vector<uint64_t> buf(words, 1);  // written once, so every page is resident
  constexpr int64_t kChunk = (int64_t(1) << 20) / 8;
  const int64_t chunks = (words + kChunk - 1) / kChunk;
  const auto& kernels = kern::select();
  std::vector<double> gbps;
  std::atomic<uint64_t> sink{0};
  for (int r = 0; r < repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    parallel_for(chunks, kChunk, 1, [&](int64_t b, int64_t e, int) {
      const int64_t lo = b * kChunk, hi = std::min(e * kChunk, words);
      sink.fetch_add(kernels.read_sum(buf.data() + lo, hi - lo), std::memory_order_relaxed);
    });
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    gbps.push_back(double(words * 8) / s / 1e9);
  }
  if (sink.load() != uint64_t(words) * repeats) {
    throw std::runtime_error("[memory_read_gbps] the read summed wrong");
  }
  std::sort(gbps.begin(), gbps.end());
  return gbps[gbps.size() / 2];
}

} // namespace tk
