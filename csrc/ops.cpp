// Op functions, as MLX's fast.cpp: check the arguments, build the plain-MLX
// fallback (which also gives each op its vjp, jvp and vmap), and return
// arrays backed by a Primitive (primitives.h) on a CPU stream, or the
// fallback itself anywhere else. The Primitives' eval_cpu live in csrc/cpu/.
#include "ops.h"

#include <algorithm>
#include <cmath>
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

// ---- swiglu -------------------------------------------------------------------

mx::array swiglu(const mx::array& gate, const mx::array& x, mx::StreamOrDevice s_) {
  constexpr const char* op = "swiglu";
  check_array(op, "gate", gate);
  check_array(op, "x", x);
  check_pair(op, "gate", gate, "x", x);
  auto s = mx::to_stream(s_);
  // reference.swiglu (mlx-lm's): silu(gate) = gate * sigmoid(gate), then * x,
  // each rounded to the dtype.
  auto fallback = [s](std::vector<mx::array> in) {
    return std::vector<mx::array>{
        mx::multiply(mx::multiply(in[0], mx::sigmoid(in[0], s), s), in[1], s)};
  };
  if (use_fallback(s)) {
    return fallback({gate, x})[0];
  }
  return mx::array(gate.shape(), gate.dtype(), std::make_shared<TalkieSwiGLU>(s, fallback), {gate, x});
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

// ---- scaled_dot_product_attention -------------------------------------------

namespace {

void check_4d(const char* op, const std::string& name, const mx::array& a) {
  if (a.ndim() != 4) {
    fail(op, name + " must have 4 dimensions (B, H, L, D), got shape " + fmt(a.shape()) + ".");
  }
}

void check_attention_input(const char* op, const std::string& name, const mx::array& a) {
  check_float(op, name.c_str(), a);
  check_4d(op, name, a);
}

// q against K/V of (B, Hkv, S) with head_dim Dk: the shapes attention needs.
void check_attention_shapes(const char* op, const mx::array& q, const mx::Shape& k_shape, int Dk, const char* k_name) {
  if (q.shape(0) != k_shape[0] || q.shape(3) != Dk) {
    fail(op, std::string("q (B, Hq, L, D) and ") + k_name + " (B, Hkv, S, D) must agree on B and D, got q " +
                 fmt(q.shape()) + " and B = " + std::to_string(k_shape[0]) + ", D = " + std::to_string(Dk) + ".");
  }
  if (q.shape(1) % k_shape[1]) {
    fail(op, "q's heads Hq = " + std::to_string(q.shape(1)) + " must be a multiple of the kv heads Hkv = " +
                 std::to_string(k_shape[1]) + ".");
  }
}

// The mask's kind (kern::AttnMask), checked against the output (B, Hq, L, S).
int check_attention_mask(
    const char* op,
    const std::string& mode,
    const std::optional<mx::array>& mask,
    const mx::Shape& scores,
    mx::Dtype out_dtype) {
  if (mode.empty() || mode == "causal") {
    if (mask) {
      fail(op, "mask_mode '" + mode + "' takes no mask array.");
    }
    return int(mode.empty() ? kern::AttnMask::none : kern::AttnMask::causal);
  }
  if (mode != "array") {
    fail(op, "mask_mode must be '', 'causal' or 'array', got '" + mode + "'.");
  }
  if (!mask) {
    fail(op, "mask_mode 'array' needs a mask array.");
  }
  const auto& m = *mask;
  if (m.dtype() != mx::bool_ && !mx::issubdtype(m.dtype(), mx::floating)) {
    fail_type(op, "mask must be bool or floating, got " + fmt(m.dtype()) + ".");
  }
  if (m.dtype() != mx::bool_ && mx::promote_types(m.dtype(), out_dtype) != out_dtype) {
    fail(op, "a float mask must not be wider than the output dtype " + fmt(out_dtype) + ", got " + fmt(m.dtype()) + ".");
  }
  bool ok = m.ndim() <= 4;
  for (int i = 1; ok && i <= int(m.ndim()); ++i) {
    ok = m.shape(-i) == 1 || m.shape(-i) == scores[4 - i];
  }
  if (!ok) {
    fail(op, "mask of shape " + fmt(m.shape()) + " does not broadcast to (B, Hq, L, S) = " + fmt(scores) + ".");
  }
  return int(m.dtype() == mx::bool_ ? kern::AttnMask::boolean : kern::AttnMask::additive);
}

// mlx-lm's quantized_scaled_dot_product_attention (models/base.py), in C++.
mx::array reference_quantized_attention(
    const std::vector<mx::array>& in,
    float scale,
    int mask_kind,
    int group_size,
    int bits,
    mx::Stream s) {
  auto q = mx::multiply(in[0], mx::array(scale, in[0].dtype()), s);
  const int B = q.shape(0), Hq = q.shape(1), L = q.shape(2), Hkv = in[1].shape(1);
  const int G = Hq / Hkv;
  std::vector<mx::array> kv(in.begin() + 1, in.begin() + 7);
  if (G > 1) {
    q = mx::reshape(q, {B, Hkv, G, L, q.shape(3)}, s);
    for (auto& a : kv) {
      a = mx::expand_dims(a, -3, s);
    }
  }
  auto scores = mx::quantized_matmul(q, kv[0], kv[1], kv[2], true, group_size, bits, "affine", s);
  if (mask_kind != int(kern::AttnMask::none)) {
    const int S = in[1].shape(2);
    mx::array mask = mask_kind == int(kern::AttnMask::causal)
        ? mx::greater_equal(mx::expand_dims(mx::arange(S - L, S, s), 1, s), mx::expand_dims(mx::arange(0, S, s), 0, s), s)
        : in[7];
    // mlx-lm expands a (B, 1, L, S) mask; a mask with a head axis splits it as MLX's own op does.
    if (G > 1 && mask.ndim() >= 3) {
      mask = mask.shape(-3) == 1 ? mx::expand_dims(mask, -3, s) : mx::unflatten(mask, -3, {Hkv, G}, s);
    }
    scores = mask.dtype() == mx::bool_
        ? mx::where(mask, scores, mx::array(mx::finfo(scores.dtype()).min, scores.dtype()), s)
        : mx::add(scores, mask, s);
  }
  scores = mx::softmax(scores, std::vector<int>{-1}, true, s);
  auto out = mx::quantized_matmul(scores, kv[3], kv[4], kv[5], false, group_size, bits, "affine", s);
  return G > 1 ? mx::reshape(out, {B, Hq, L, out.shape(-1)}, s) : out;
}

} // namespace

mx::array scaled_dot_product_attention(
    const mx::array& q_in,
    const mx::array& k_in,
    const mx::array& v_in,
    double scale_in,
    const std::string& mask_mode,
    const std::optional<mx::array>& mask,
    mx::StreamOrDevice s_) {
  constexpr const char* op = "scaled_dot_product_attention";
  check_attention_input(op, "q", q_in);
  check_attention_input(op, "k", k_in);
  check_attention_input(op, "v", v_in);
  if (k_in.shape(0) != v_in.shape(0) || k_in.shape(1) != v_in.shape(1) || k_in.shape(2) != v_in.shape(2)) {
    fail(op, "k and v must have the same (B, Hkv, S), got k " + fmt(k_in.shape()) + " and v " + fmt(v_in.shape()) + ".");
  }
  check_attention_shapes(op, q_in, k_in.shape(), k_in.shape(3), "k");
  if (!std::isfinite(scale_in)) {
    fail(op, "scale must be a finite float, got " + fmt(scale_in) + ".");
  }
  const float scale = float(scale_in);
  auto s = mx::to_stream(s_);
  const auto dtype = mx::promote_types(mx::promote_types(q_in.dtype(), k_in.dtype()), v_in.dtype());
  const mx::Shape scores = {q_in.shape(0), q_in.shape(1), q_in.shape(2), k_in.shape(2)};
  const int kind = check_attention_mask(op, mask_mode, mask, scores, dtype);
  // As MLX's op: one dtype for q, k, v (astype is a no-op when they agree).
  std::vector<mx::array> inputs = {mx::astype(q_in, dtype, s), mx::astype(k_in, dtype, s), mx::astype(v_in, dtype, s)};
  if (mask) {
    inputs.push_back(mask->dtype() == mx::bool_ ? *mask : mx::astype(*mask, dtype, s));
  }
  auto fallback = [scale, mask_mode, s](std::vector<mx::array> in) {
    std::optional<mx::array> m;
    if (in.size() > 3) {
      m = in[3];
    }
    return std::vector<mx::array>{
        mx::fast::scaled_dot_product_attention(in[0], in[1], in[2], scale, mask_mode, m, {}, false, s)};
  };
  if (use_fallback(s) || k_in.shape(2) == 0) {
    return fallback(inputs)[0];
  }
  mx::Shape out_shape = {q_in.shape(0), q_in.shape(1), q_in.shape(2), v_in.shape(3)};
  return mx::array(
      out_shape, dtype, std::make_shared<TalkieAttention>(s, fallback, scale, kind, 0, 0), std::move(inputs));
}

mx::array quantized_scaled_dot_product_attention(
    const mx::array& q,
    const std::vector<mx::array>& q_keys,
    const std::vector<mx::array>& q_values,
    double scale_in,
    const std::string& mask_mode,
    const std::optional<mx::array>& mask,
    int group_size,
    int bits,
    mx::StreamOrDevice s_) {
  constexpr const char* op = "quantized_scaled_dot_product_attention";
  check_attention_input(op, "q", q);
  if (q_keys.size() != 3 || q_values.size() != 3) {
    fail_type(op, "q_keys and q_values must each be mx.quantize's (codes, scales, biases).");
  }
  if (bits != 4 && bits != 8) {
    fail(op, "bits must be 4 or 8, got " + std::to_string(bits) + ".");
  }
  if (group_size != 32 && group_size != 64 && group_size != 128) {
    fail(op, "group_size must be 32, 64 or 128, got " + std::to_string(group_size) + ".");
  }
  auto dtype = q.dtype();
  int Dv = 0;
  for (auto [name, t] : {std::pair{"q_keys", &q_keys}, std::pair{"q_values", &q_values}}) {
    const std::string n = name;
    const auto& codes = (*t)[0];
    if (codes.dtype() != mx::uint32) {
      fail_type(op, n + "[0] must be uint32 (as mx.quantize packs it), got " + fmt(codes.dtype()) + ".");
    }
    check_4d(op, n + "[0]", codes);
    check_attention_input(op, n + "[1]", (*t)[1]);
    check_attention_input(op, n + "[2]", (*t)[2]);
    const int D = int(int64_t(codes.shape(3)) * 32 / bits);
    if (D % group_size) {
      fail(op, n + " holds rows of " + std::to_string(D) + " elements, not a multiple of group_size " +
                   std::to_string(group_size) + ".");
    }
    const mx::Shape want = {codes.shape(0), codes.shape(1), codes.shape(2), D / group_size};
    for (int i = 1; i < 3; ++i) {
      if ((*t)[i].shape() != want) {
        fail(op, n + "[" + std::to_string(i) + "] must have shape " + fmt(want) +
                     " (B, Hkv, S, D/group_size), got " + fmt((*t)[i].shape()) + ".");
      }
      dtype = mx::promote_types(dtype, (*t)[i].dtype());
    }
    if (t == &q_values) {
      Dv = D;
      const auto& kc = q_keys[0];
      if (kc.shape(0) != codes.shape(0) || kc.shape(1) != codes.shape(1) || kc.shape(2) != codes.shape(2)) {
        fail(op, "q_keys and q_values must have the same (B, Hkv, S), got " + fmt(kc.shape()) + " and " +
                     fmt(codes.shape()) + ".");
      }
    } else {
      check_attention_shapes(op, q, codes.shape(), D, "k");
    }
  }
  if (!std::isfinite(scale_in)) {
    fail(op, "scale must be a finite float, got " + fmt(scale_in) + ".");
  }
  const float scale = float(scale_in);
  auto s = mx::to_stream(s_);
  const mx::Shape scores = {q.shape(0), q.shape(1), q.shape(2), q_keys[0].shape(2)};
  const int kind = check_attention_mask(op, mask_mode, mask, scores, dtype);
  // The kernel reads every scale and bias in one dtype: their promoted one (exact).
  auto sb = q_keys[1].dtype();
  for (const auto* a : {&q_keys[2], &q_values[1], &q_values[2]}) {
    sb = mx::promote_types(sb, a->dtype());
  }
  std::vector<mx::array> inputs = {q};
  for (const auto* t : {&q_keys, &q_values}) {
    inputs.push_back((*t)[0]);
    inputs.push_back(mx::astype((*t)[1], sb, s));
    inputs.push_back(mx::astype((*t)[2], sb, s));
  }
  if (mask) {
    inputs.push_back(mask->dtype() == mx::bool_ ? *mask : mx::astype(*mask, dtype, s));
  }
  auto fallback = [scale, kind, group_size, bits, s](std::vector<mx::array> in) {
    return std::vector<mx::array>{reference_quantized_attention(in, scale, kind, group_size, bits, s)};
  };
  if (use_fallback(s) || scores[3] == 0) {
    return fallback(inputs)[0];
  }
  mx::Shape out_shape = {q.shape(0), q.shape(1), q.shape(2), Dv};
  return mx::array(
      out_shape, dtype, std::make_shared<TalkieAttention>(s, fallback, scale, kind, bits, group_size),
      std::move(inputs));
}

// ---- kv_write -----------------------------------------------------------------

mx::array kv_write(const mx::array& buffer, const mx::array& rows, int start, mx::StreamOrDevice s_) {
  constexpr const char* op = "kv_write";
  check_array(op, "buffer", buffer);
  if (buffer.ndim() != 4 || rows.ndim() != 4) {
    fail(op, "buffer and rows must have shape (B, H, S, D) and (B, H, n, D), got " + fmt(buffer.shape()) + " and " + fmt(rows.shape()) + ".");
  }
  if (rows.dtype() != buffer.dtype()) {
    fail_type(op, "rows must have buffer's dtype " + fmt(buffer.dtype()) + ", got " + fmt(rows.dtype()) + ".");
  }
  if (rows.shape(0) != buffer.shape(0) || rows.shape(1) != buffer.shape(1) || rows.shape(3) != buffer.shape(3)) {
    fail(op, "rows " + fmt(rows.shape()) + " do not match buffer " + fmt(buffer.shape()) + " in B, H and D.");
  }
  if (start < 0 || start + rows.shape(2) > buffer.shape(2)) {
    fail(op, "rows [" + std::to_string(start) + ", " + std::to_string(start + rows.shape(2)) +
                 ") do not fit a buffer of " + std::to_string(buffer.shape(2)) + " rows.");
  }
  auto s = mx::to_stream(s_);
  auto fallback = [start, s](std::vector<mx::array> in) {
    const auto& sh = in[1].shape();
    return std::vector<mx::array>{
        mx::slice_update(in[0], in[1], mx::Shape{0, 0, start, 0}, mx::Shape{sh[0], sh[1], start + sh[2], sh[3]}, s)};
  };
  if (use_fallback(s)) {
    return fallback({buffer, rows})[0];
  }
  return mx::array(buffer.shape(), buffer.dtype(), std::make_shared<TalkieKVWrite>(s, fallback, start), {buffer, rows});
}

} // namespace tk
