// Op functions, as MLX's fast.cpp: check the arguments, build the plain-MLX
// fallback (which also gives each op its vjp, jvp and vmap), and return
// arrays backed by a Primitive (primitives.h) on a CPU stream, or the
// fallback itself anywhere else. The Primitives' eval_cpu live in csrc/cpu/.
#include "ops.h"

#include <algorithm>
#include <numeric>

#include "errors.h"
#include "kernels/kernels.h"
#include "primitives.h"

namespace tk {

namespace {

// The op functions return their plain-MLX fallback on any stream but the CPU.
bool use_fallback(mx::Stream s) {
  return s.device != mx::Device::cpu;
}

void check_float(const char* op, const char* name, const mx::array& a) {
  if (a.dtype() != mx::float32 && a.dtype() != mx::float16 && a.dtype() != mx::bfloat16) {
    fail_type(op, std::string(name) + " must be float32, float16 or bfloat16, got " + fmt(a.dtype()) + ".");
  }
}

void check_array(const char* op, const char* name, const mx::array& a) {
  check_float(op, name, a);
  if (a.ndim() < 1) {
    fail(op, std::string(name) + " must have at least 1 dimensions, got shape " + fmt(a.shape()) + ".");
  }
}

// Two arrays an op combines element by element: same shape, same dtype.
void check_pair(const char* op, const char* a_name, const mx::array& a, const char* b_name, const mx::array& b) {
  const std::string names = std::string(a_name) + " and " + b_name;
  if (a.shape() != b.shape()) {
    fail(op, names + " must have the same shape, got " + fmt(a.shape()) + " and " + fmt(b.shape()) + ".");
  }
  if (a.dtype() != b.dtype()) {
    fail_type(op, names + " must have the same dtype, got " + fmt(a.dtype()) + " and " + fmt(b.dtype()) + ".");
  }
}

void check_rope_input(const char* op, const char* name, const mx::array& x) {
  check_array(op, name, x);
  if (x.ndim() != 4) {
    fail(op, std::string(name) + " must have shape (B, H, L, D), got " + fmt(x.shape()) + ".");
  }
  if (x.shape(-1) % 2 || x.shape(-1) == 0) {
    fail(op, "head_dim must be even and positive, got " + std::to_string(x.shape(-1)) + " (" + name + " shape " + fmt(x.shape()) + ").");
  }
}

// offset: integer dtype, shape () or (B,); returned as int32 (a no-op for int32).
mx::array check_offset(const char* op, const mx::array& offset, int batch, mx::Stream s) {
  if (!mx::issubdtype(offset.dtype(), mx::integer)) {
    fail_type(op, "offset array must have an integer dtype, got " + fmt(offset.dtype()) + ".");
  }
  // Wider integers may not fit, and checking values would synchronize.
  if (offset.dtype().size() > 4 || offset.dtype() == mx::uint32) {
    fail(op, "offset array must be int32 (as mlx-lm's caches hold it), got " + fmt(offset.dtype()) +
                 ": its values may not fit in int32.");
  }
  if (offset.ndim() > 1 || (offset.ndim() == 1 && offset.shape(0) != batch)) {
    fail(op, "offset array must have shape () or (B,) = (" + std::to_string(batch) + ",), got " + fmt(offset.shape()) + ".");
  }
  return mx::astype(offset, mx::int32, s);
}

float check_eps(const char* op, double eps) {
  if (!(eps > 0)) {
    fail(op, "eps must be positive, got " + fmt(eps) + ".");
  }
  return static_cast<float>(eps);
}

double check_base(const char* op, double base) {
  if (!(base > 0)) {
    fail(op, "base must be positive, got " + fmt(base) + ".");
  }
  return base;
}

void check_gain(const char* op, const char* name, const mx::array& g) {
  if (!mx::issubdtype(g.dtype(), mx::floating)) {
    fail_type(op, std::string(name) + " must have a floating dtype, got " + fmt(g.dtype()) + ".");
  }
  if (g.size() != 1 || g.ndim() > 1) {
    fail(op, std::string(name) + " must have shape (1,), got " + fmt(g.shape()) + ".");
  }
}


// ---- plain-MLX fallbacks, composed as in talkie_kernels/reference.py ---------

// mx.fast.rope periods -(base ** (arange(0, D, 2) / D)) in fp32: negative
// periods turn the standard rotation into Talkie's inverse one.
mx::array reference_rope(const mx::array& x, const mx::array& offset, double base, mx::Stream s) {
  int D = x.shape(-1);
  auto exps = mx::divide(mx::arange(0.0, double(D), 2.0, mx::float32, s), mx::array(float(D), mx::float32), s);
  auto freqs = mx::negative(mx::power(mx::array(float(base), mx::float32), exps, s), s);
  return mx::fast::rope(x, D, /* traditional */ false, std::nullopt, 1.0f, offset, freqs, s);
}


// ---- linear's checks ----------------------------------------------------------

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

} // namespace

// ---- rms_norm -----------------------------------------------------------------

mx::array rms_norm(const mx::array& x, double eps_in, mx::StreamOrDevice s_) {
  constexpr const char* op = "rms_norm";
  check_array(op, "x", x);
  const float eps = check_eps(op, eps_in);
  auto s = mx::to_stream(s_);
  auto fallback = [eps, s](std::vector<mx::array> in) {
    return std::vector<mx::array>{mx::fast::rms_norm(in[0], std::nullopt, eps, s)};
  };
  if (use_fallback(s)) {
    return fallback({x})[0];
  }
  return mx::array(x.shape(), x.dtype(), std::make_shared<TalkieRMSNorm>(s, fallback, eps), {x});
}

// ---- rope ---------------------------------------------------------------------

mx::array rope(const mx::array& x, const mx::array& offset_in, double base_in, mx::StreamOrDevice s_) {
  constexpr const char* op = "rope";
  check_rope_input(op, "x", x);
  auto s = mx::to_stream(s_);
  auto offset = check_offset(op, offset_in, x.shape(0), s);
  const double base = check_base(op, base_in);
  auto fallback = [base, s](std::vector<mx::array> in) {
    return std::vector<mx::array>{reference_rope(in[0], in[1], base, s)};
  };
  if (use_fallback(s)) {
    return fallback({x, offset})[0];
  }
  return mx::array(x.shape(), x.dtype(), std::make_shared<TalkieRoPE>(s, fallback, base), {x, offset});
}

// ---- rope_qk_norm ---------------------------------------------------------------

std::pair<mx::array, mx::array> rope_qk_norm(
    const mx::array& q,
    const mx::array& k,
    const mx::array& head_gain,
    const mx::array& offset_in,
    double base_in,
    double eps_in,
    mx::StreamOrDevice s_) {
  constexpr const char* op = "rope_qk_norm";
  check_rope_input(op, "q", q);
  check_rope_input(op, "k", k);
  check_pair(op, "q", q, "k", k);
  if (!mx::issubdtype(head_gain.dtype(), mx::floating)) {
    fail_type(op, "head_gain must have a floating dtype, got " + fmt(head_gain.dtype()) + ".");
  }
  if (head_gain.ndim() != 1 || head_gain.shape(0) != q.shape(1)) {
    fail(op, "head_gain must have shape (H,) = (" + std::to_string(q.shape(1)) + ",), got " + fmt(head_gain.shape()) + ".");
  }
  auto s = mx::to_stream(s_);
  auto offset = check_offset(op, offset_in, q.shape(0), s);
  const double base = check_base(op, base_in);
  const float eps = check_eps(op, eps_in);

  // reference.rope_qk_norm: rope, rms_norm (each rounded), then q * gain in q's dtype.
  auto fallback = [base, eps, s](std::vector<mx::array> in) {
    auto& q = in[0];
    auto q_out = mx::fast::rms_norm(reference_rope(q, in[3], base, s), std::nullopt, eps, s);
    auto k_out = mx::fast::rms_norm(reference_rope(in[1], in[3], base, s), std::nullopt, eps, s);
    auto g = mx::reshape(mx::astype(in[2], q.dtype(), s), {1, -1, 1, 1}, s);
    return std::vector<mx::array>{mx::multiply(q_out, g, s), k_out};
  };
  if (use_fallback(s)) {
    auto out = fallback({q, k, head_gain, offset});
    return {out[0], out[1]};
  }
  auto out = mx::array::make_arrays(
      {q.shape(), k.shape()},
      {q.dtype(), k.dtype()},
      std::make_shared<TalkieRoPEQKNorm>(s, fallback, base, eps),
      {q, k, head_gain, offset});
  return {out[0], out[1]};
}

// ---- residual_norm ----------------------------------------------------------------

std::pair<mx::array, mx::array> residual_norm(
    const mx::array& x,
    const mx::array& y,
    const mx::array& gain,
    const std::optional<mx::array>& skip,
    const std::optional<mx::array>& skip_gain,
    double eps_in,
    mx::StreamOrDevice s_) {
  constexpr const char* op = "residual_norm";
  check_array(op, "x", x);
  check_array(op, "y", y);
  check_pair(op, "x", x, "y", y);
  check_gain(op, "gain", gain);
  if (skip.has_value() != skip_gain.has_value()) {
    fail(op, "skip and skip_gain must be given together.");
  }
  const bool has_skip = skip.has_value();
  if (has_skip) {
    check_array(op, "skip", *skip);
    if (skip->shape() != x.shape()) {
      fail(op, "skip must have the shape of x " + fmt(x.shape()) + ", got " + fmt(skip->shape()) + ".");
    }
    if (skip->dtype() != x.dtype()) {
      fail_type(op, "skip must have the dtype of x (" + fmt(x.dtype()) + "), got " + fmt(skip->dtype()) + ".");
    }
    check_gain(op, "skip_gain", *skip_gain);
  }
  const float eps = check_eps(op, eps_in);
  auto s = mx::to_stream(s_);

  // reference.residual_norm: each product and sum rounded to x.dtype.
  auto fallback = [eps, s](std::vector<mx::array> in) {
    auto dt = in[0].dtype();
    auto x_new = mx::add(in[0], mx::multiply(mx::astype(in[2], dt, s), in[1], s), s);
    if (in.size() == 5) {
      x_new = mx::add(x_new, mx::multiply(mx::astype(in[4], dt, s), in[3], s), s);
    }
    return std::vector<mx::array>{x_new, mx::fast::rms_norm(x_new, std::nullopt, eps, s)};
  };
  std::vector<mx::array> inputs = {x, y, gain};
  if (has_skip) {
    inputs.push_back(*skip);
    inputs.push_back(*skip_gain);
  }
  if (use_fallback(s)) {
    auto out = fallback(inputs);
    return {out[0], out[1]};
  }
  auto out = mx::array::make_arrays(
      {x.shape(), x.shape()},
      {x.dtype(), x.dtype()},
      std::make_shared<TalkieResidualNorm>(s, fallback, has_skip, eps),
      std::move(inputs));
  return {out[0], out[1]};
}

// ---- linear -------------------------------------------------------------------

mx::array linear(
    const mx::array& x,
    const mx::array& w,
    const std::optional<mx::array>& scales,
    const std::optional<mx::array>& biases,
    std::optional<int> group_size_in,
    std::optional<int> bits_in,
    const std::string& mode,
    mx::StreamOrDevice s_) {
  constexpr const char* op = "linear";
  check_array(op, "x", x);
  if (w.ndim() != 2) {
    fail(op, "weight must have shape (N, K), got " + fmt(w.shape()) + ".");
  }
  auto s = mx::to_stream(s_);
  const int K = x.shape(-1), N = w.shape(0);
  const bool quantized = scales.has_value();
  int group_size = 0, bits = 0;
  if (!quantized) {
    if (biases) {
      fail(op, "biases were given without scales (a quantized weight needs both).");
    }
    if (group_size_in || bits_in) {
      fail(op, "group_size and bits apply to a quantized weight; no scales were given.");
    }
    check_float(op, "weight", w);
    if (w.shape(1) != K) {
      fail(op, "x has " + std::to_string(K) + " features but weight " + fmt(w.shape()) + " expects " +
                    std::to_string(w.shape(1)) + " (K).");
    }
  } else {
    if (w.dtype() != mx::uint32) {
      fail_type(op, "a quantized weight must be uint32 (as mx.quantize packs it), got " + fmt(w.dtype()) + ".");
    }
    if (mode != "affine") {  // MLX checks and runs the other modes
      try {
        return mx::quantized_matmul(x, w, *scales, biases, true, group_size_in, bits_in, mode, s);
      } catch (const std::invalid_argument& e) {
        fail(op, e.what());
      }
    }
    check_float(op, "scales", *scales);
    if (!biases) {
      fail(op, "affine quantization needs biases (mx.quantize returns weight, scales, biases).");
    }
    check_float(op, "biases", *biases);
    group_size = group_size_in.value_or(64);
    bits = bits_in.value_or(4);
    if (bits < 2 || bits > 8 || bits == 7) {
      fail(op, "bits must be one of 2, 3, 4, 5, 6, 8 for affine quantization, got " + std::to_string(bits) + ".");
    }
    if (group_size != 32 && group_size != 64 && group_size != 128) {
      fail(op, "group_size must be 32, 64 or 128 for affine quantization, got " + std::to_string(group_size) + ".");
    }
    if (K % group_size) {
      fail(op, "x has " + std::to_string(K) + " features, not a multiple of group_size " +
                    std::to_string(group_size) + ".");
    }
    if (int64_t(w.shape(1)) * 32 != int64_t(K) * bits) {
      fail(op, "weight " + fmt(w.shape()) + " does not hold " + std::to_string(K) + " features at " +
                    std::to_string(bits) + " bits (expected (" + std::to_string(N) + ", " +
                    std::to_string(int64_t(K) * bits / 32) + ")).");
    }
    const mx::Shape want = {N, K / group_size};
    for (auto [name, a] : {std::pair{"scales", &*scales}, std::pair{"biases", &*biases}}) {
      if (a->shape() != want) {
        fail(op, std::string(name) + " must have shape " + fmt(want) + " (N, K/group_size), got " +
                      fmt(a->shape()) + ".");
      }
    }
  }

  // (..., K) -> (M, K): the primitive works on rows; the leading dims come back at the end.
  mx::Shape out_shape(x.shape().begin(), x.shape().end() - 1);
  out_shape.push_back(N);
  const int M = std::accumulate(x.shape().begin(), x.shape().end() - 1, 1, std::multiplies<int>());
  // (No reshape nodes for a 2-D x: at decode sizes each node costs as much as the product.)
  const bool flat = x.ndim() == 2;
  std::vector<mx::array> inputs = {flat ? x : mx::reshape(x, {M, K}, s), w};
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
  return flat ? out : mx::reshape(out, out_shape, s);
}

} // namespace tk
