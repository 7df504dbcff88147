// Op functions (validation -> fallback -> Primitive) and the Primitives'
// eval_cpu, which hands raw pointers to the loops in csrc/kernels.cpp.
#include "ops.h"

#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <sstream>

#include "cpu_eval.h"
#include "errors.h"
#include "kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "parallel.h"

namespace tk {

namespace {

bool is_supported_float(mx::Dtype d) {
  return d == mx::float32 || d == mx::float16 || d == mx::bfloat16;
}

void check_array(const char* op, const char* name, const mx::array& a) {
  if (!is_supported_float(a.dtype())) {
    fail_type(op, std::string(name) + " must be float32, float16 or bfloat16, got " + fmt(a.dtype()) + ".");
  }
  if (a.ndim() < 1) {
    fail(op, std::string(name) + " must have at least 1 dimensions, got shape " + fmt(a.shape()) + ".");
  }
}

void check_rope_input(const char* op, const char* name, const mx::array& x) {
  check_array(op, name, x);
  if (x.ndim() != 4) {
    fail(op, std::string(name) + " must have shape (B, H, L, D), got " + fmt(x.shape()) + ".");
  }
  if (x.shape(-1) % 2) {
    fail(op, "head_dim must be even, got " + std::to_string(x.shape(-1)) + " (" + name + " shape " + fmt(x.shape()) + ").");
  }
}

// offset: integer dtype, shape () or (B,); returned as int32 (a no-op for int32).
mx::array check_offset(const char* op, const mx::array& offset, int batch, mx::Stream s) {
  if (!mx::issubdtype(offset.dtype(), mx::integer)) {
    fail_type(op, "offset array must have an integer dtype, got " + fmt(offset.dtype()) + ".");
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

// ---- eval_cpu helpers --------------------------------------------------------


// Reads element i (counted in elements from the array's data pointer) of a
// floating array as float: gains are tiny and may come in any float dtype.
float read_float(const mx::array& a, int64_t i) {
  switch (a.dtype()) {
    case mx::float16:
      return static_cast<float>(a.data<mx::float16_t>()[i]);
    case mx::bfloat16:
      return static_cast<float>(a.data<mx::bfloat16_t>()[i]);
    case mx::float64:
      return static_cast<float>(a.data<double>()[i]);
    default:
      return a.data<float>()[i];
  }
}

std::atomic<int64_t> g_copies{0};

// An input as the loops see it: rows over a contiguous last axis. Inputs
// whose last axis is strided (rare: a transpose that moved the last axis)
// are gathered into a contiguous buffer inside the task (`materialize`),
// since the data is only ready when the task runs.
struct Input {
  const char* ptr;
  size_t itemsize;
  std::vector<int64_t> shape, strides;  // all axes, strides in elements
  std::vector<char> copy;

  explicit Input(const mx::array& a)
      : ptr(a.data<char>()),
        itemsize(a.itemsize()),
        shape(a.shape().begin(), a.shape().end()),
        strides(a.strides().begin(), a.strides().end()) {}

  bool needs_copy() const {
    return !shape.empty() && shape.back() > 1 && strides.back() != 1;
  }

  void materialize() {
    if (!needs_copy()) {
      return;
    }
    g_copies.fetch_add(1, std::memory_order_relaxed);
    int64_t n = 1;
    for (auto d : shape) {
      n *= d;
    }
    copy.resize(n * itemsize);
    std::vector<int64_t> idx(shape.size(), 0);
    for (int64_t j = 0; j < n; ++j) {
      int64_t off = 0;
      for (size_t d = 0; d < shape.size(); ++d) {
        off += idx[d] * strides[d];
      }
      std::memcpy(copy.data() + j * itemsize, ptr + off * itemsize, itemsize);
      for (int d = int(shape.size()) - 1; d >= 0 && ++idx[d] == shape[d]; --d) {
        idx[d] = 0;
      }
    }
    ptr = copy.data();
    int64_t st = 1;
    for (int d = int(shape.size()) - 1; d >= 0; --d) {
      strides[d] = st;
      st *= shape[d];
    }
  }

  // Leading axes merged where their strides allow (usually into one axis),
  // so the loops compute a row's address with one multiply.
  kern::Rows rows() {
    lead_shape.clear();
    lead_strides.clear();
    for (size_t d = 0; d + 1 < shape.size(); ++d) {
      if (shape[d] == 1) {
        continue;
      }
      if (!lead_shape.empty() && lead_strides.back() == strides[d] * shape[d]) {
        lead_shape.back() *= shape[d];
        lead_strides.back() = strides[d];
      } else {
        lead_shape.push_back(shape[d]);
        lead_strides.push_back(strides[d]);
      }
    }
    return {ptr, int(lead_shape.size()), lead_shape.data(), lead_strides.data()};
  }

  std::vector<int64_t> lead_shape, lead_strides;
};

int64_t rows_of(const mx::array& a) {
  return a.shape(-1) == 0 ? 0 : int64_t(a.size()) / a.shape(-1);
}

// Work sizes (elements touched) below which splitting across threads costs
// more than it saves.
constexpr int64_t kMinWorkPerThread = 1 << 15;

// inv_freq[i] = base^(-2i/D) in double, cached for the last (base, D) seen on
// this thread (every call of a model uses the same pair).
const std::vector<double>& inverse_freqs(double base, int64_t D) {
  thread_local double cached_base = 0;
  thread_local std::vector<double> cached;
  if (cached_base != base || int64_t(cached.size()) != D / 2) {
    cached.resize(D / 2);
    for (int64_t i = 0; i < D / 2; ++i) {
      cached[i] = std::pow(base, -2.0 * double(i) / double(D));
    }
    cached_base = base;
  }
  return cached;
}

// The output's buffer: the input's, when MLX allows reusing it (nothing else
// references it; same dtype and size; row-contiguous, so each output row is
// the same memory as that input row, and the loops read a row before they
// write it), else a fresh allocation. Chained ops then run in place: no
// allocation, no first-touch page faults, half the cache footprint. Only
// the single-output ops (rms_norm, rope) can use it: each output of a
// multi-output primitive holds its own reference to the inputs, so MLX
// never reports them donatable.
void set_output(mx::array& out, const mx::array* donor) {
  if (donor && donor->is_donatable() && donor->dtype() == out.dtype() && donor->flags().row_contiguous &&
      donor->size() == out.size() && donor->data_size() == donor->size()) {
    out.copy_shared_buffer(*donor);
  } else {
    out.set_data(mx::allocator::malloc(out.nbytes()));
  }
}

// Working memory of the rope task (cos/sin table, scratch rows): up to a
// cap, kept per thread between calls, since a fresh prefill-sized table
// would cost a zero-fill and page faults on every call; beyond it, owned by
// the task. `which` names the buffer.
struct TaskBuffers {
  static constexpr size_t kKeep = size_t(1) << 20;  // floats kept between calls
  std::unique_ptr<float[]> owned[2];

  float* get(int which, int64_t floats) {
    thread_local std::vector<float> kept[2];
    if (size_t(floats) > kKeep) {
      owned[which].reset(new float[floats]);
      return owned[which].get();
    }
    if (kept[which].size() < size_t(floats)) {
      kept[which].resize(floats);
    }
    return kept[which].data();
  }
};

// Shared by TalkieRoPE and TalkieRoPEQKNorm: inputs in[0 .. n_in) are the
// (B, H, L, D) tensors, in[offset_at] the offset array, in[gain_at] the
// head gain (gain_at < 0: none); outputs row-contiguous.
void eval_rope(
    mx::Stream stream,
    const std::vector<mx::array>& in,
    int n_in,
    int offset_at,
    int gain_at,
    std::vector<mx::array>& outs,
    double base,
    bool norm,
    float eps) {
  auto& enc = mx::cpu::get_command_encoder(stream);
  for (auto& a : in) {
    enc.set_input_array(a);
  }
  for (int t = 0; t < n_in; ++t) {
    set_output(outs[t], n_in == 1 ? &in[t] : nullptr);
    enc.set_output_array(outs[t]);
  }
  const mx::array& offset = in[offset_at];
  const mx::array* head_gain = gain_at >= 0 ? &in[gain_at] : nullptr;
  const auto& x0 = in[0];
  kern::RopeArgs args{};
  args.dtype = kernel_dtype(x0.dtype());
  args.B = x0.shape(0);
  args.H = x0.shape(1);
  args.L = x0.shape(2);
  args.D = x0.shape(3);
  args.n_in = n_in;
  args.norm = norm;
  args.eps = eps;
  if (x0.size() == 0) {
    return;
  }
  std::vector<Input> inputs;
  for (int t = 0; t < args.n_in; ++t) {
    inputs.emplace_back(in[t]);
    args.out[t] = outs[t].data<char>();
  }
  // Pointers are known now; the data only when the task runs.
  enc.dispatch([args,
                inputs = std::move(inputs),
                offset = mx::array::unsafe_weak_copy(offset),
                head_gain = head_gain ? std::optional(mx::array::unsafe_weak_copy(*head_gain)) : std::nullopt,
                base]() mutable {
    const int64_t L = args.L, D2 = args.D / 2;
    for (int t = 0; t < args.n_in; ++t) {
      inputs[t].materialize();
      args.in[t] = inputs[t].ptr;
      for (int d = 0; d < 3; ++d) {
        args.strides[t][d] = inputs[t].strides[d];
      }
    }
    // One table row per distinct offset: (B,) offsets give B rows.
    const int64_t n_off = offset.size();
    std::vector<int32_t> offs(n_off);
    const int64_t off_stride = offset.ndim() ? offset.strides(0) : 0;
    for (int64_t b = 0; b < n_off; ++b) {
      offs[b] = offset.data<int32_t>()[b * off_stride];
    }
    args.table_per_batch = n_off > 1;
    std::vector<float> gains;
    if (head_gain) {
      gains.resize(args.H);
      for (int64_t h = 0; h < args.H; ++h) {
        gains[h] = read_float(*head_gain, h * head_gain->strides(0));
      }
      args.head_gain = gains.data();
    }
    const auto& kernels = kern::select();

    // 1. cos/sin once per (offset row, position), shared by all heads and q/k.
    const int64_t n_table = n_off * L;
    TaskBuffers buffers;
    float* cos_sin = buffers.get(0, 2 * n_table * D2);
    kern::RopeTableArgs targs{L, D2, offs.data(), inverse_freqs(base, args.D).data(),
                              cos_sin, cos_sin + n_table * D2};
    // (A prefill table is ~40 us of work: split only from a few thousand rows.)
    parallel_for(n_table, D2, kMinWorkPerThread, [&](int64_t b, int64_t e, int) {
      kernels.rope_table(targs, b, e);
    });
    args.cos = targs.cos;
    args.sin = targs.sin;

    // 2. every (b, h, l) row of every input.
    const int64_t per_slot = kern::rope_scratch_floats(args.D);
    float* scratch = buffers.get(1, max_chunks() * per_slot);
    parallel_for(args.B * args.H * L, args.n_in * args.D, kMinWorkPerThread, [&](int64_t b, int64_t e, int slot) {
      kernels.rope(args, b, e, scratch + slot * per_slot);
    });
  });
}

} // namespace

// ---- transformations through the fallback ------------------------------------------

namespace {

// fallback_ as a function of the inputs listed in `argnums`, the others fixed.
auto partial(const Fallback& fallback, const std::vector<mx::array>& primals, const std::vector<int>& argnums) {
  return [fallback, primals, argnums](const std::vector<mx::array>& varying) {
    auto all = primals;
    for (size_t j = 0; j < argnums.size(); ++j) {
      all[argnums[j]] = varying[j];
    }
    return fallback(std::move(all));
  };
}

} // namespace

std::vector<mx::array> FallbackPrimitive::vjp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums,
    const std::vector<mx::array>&) {
  // Integer inputs (offsets) get zero gradients, as in plain MLX.
  std::vector<int> diff;
  std::vector<mx::array> diff_primals;
  for (int a : argnums) {
    if (mx::issubdtype(primals[a].dtype(), mx::inexact)) {
      diff.push_back(a);
      diff_primals.push_back(primals[a]);
    }
  }
  std::vector<mx::array> grads;
  if (!diff.empty()) {
    grads = mx::vjp(partial(fallback_, primals, diff), diff_primals, cotangents).second;
  }
  std::vector<mx::array> out;
  for (size_t i = 0, j = 0; i < argnums.size(); ++i) {
    if (j < diff.size() && diff[j] == argnums[i]) {
      out.push_back(grads[j++]);
    } else {
      out.push_back(mx::zeros_like(primals[argnums[i]], stream()));
    }
  }
  return out;
}

std::vector<mx::array> FallbackPrimitive::jvp(
    const std::vector<mx::array>& primals,
    const std::vector<mx::array>& tangents,
    const std::vector<int>& argnums) {
  std::vector<int> diff;
  std::vector<mx::array> diff_primals, diff_tangents;
  for (size_t i = 0; i < argnums.size(); ++i) {
    if (mx::issubdtype(primals[argnums[i]].dtype(), mx::inexact)) {
      diff.push_back(argnums[i]);
      diff_primals.push_back(primals[argnums[i]]);
      diff_tangents.push_back(tangents[i]);
    }
  }
  if (diff.empty()) {
    std::vector<mx::array> zeros;
    for (auto& o : fallback_(primals)) {
      zeros.push_back(mx::zeros_like(o, stream()));
    }
    return zeros;
  }
  return mx::jvp(partial(fallback_, primals, diff), diff_primals, diff_tangents).second;
}

std::pair<std::vector<mx::array>, std::vector<int>> FallbackPrimitive::vmap(
    const std::vector<mx::array>& inputs,
    const std::vector<int>& axes) {
  auto fn = [f = fallback_](const std::vector<mx::array>& in) { return f(in); };
  auto outputs = mx::vmap(fn, axes)(inputs);
  return {outputs, std::vector<int>(outputs.size(), 0)};
}

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

void TalkieRMSNorm::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
  auto& enc = mx::cpu::get_command_encoder(stream());
  const auto& x = in[0];
  auto& out = outs[0];
  enc.set_input_array(x);
  set_output(out, &x);
  enc.set_output_array(out);
  if (x.size() == 0) {
    return;
  }
  kern::RmsNormArgs args{kernel_dtype(x.dtype()), x.shape(-1), {}, out.data<char>(), eps_};
  enc.dispatch([args, input = Input(x), rows = rows_of(x)]() mutable {
    input.materialize();
    args.x = input.rows();
    const auto& kernels = kern::select();
    parallel_for(rows, 2 * args.D, kMinWorkPerThread, [&](int64_t b, int64_t e, int) {
      kernels.rms_norm(args, b, e);
    });
  });
}

void TalkieRMSNorm::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[rms_norm] TalkieRMSNorm has no GPU kernel; the op uses its fallback there.");
}

bool TalkieRMSNorm::is_equivalent(const mx::Primitive& other) const {
  return eps_ == static_cast<const TalkieRMSNorm&>(other).eps_;
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

void TalkieRoPE::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
  eval_rope(stream(), in, /* n_in */ 1, /* offset_at */ 1, /* gain_at */ -1, outs, base_, /* norm */ false, 0.0f);
}

void TalkieRoPE::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[rope] TalkieRoPE has no GPU kernel; the op uses its fallback there.");
}

bool TalkieRoPE::is_equivalent(const mx::Primitive& other) const {
  return base_ == static_cast<const TalkieRoPE&>(other).base_;
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
  if (q.shape() != k.shape()) {
    fail(op, "q and k must have the same shape, got " + fmt(q.shape()) + " and " + fmt(k.shape()) + ".");
  }
  if (q.dtype() != k.dtype()) {
    fail_type(op, "q and k must have the same dtype, got " + fmt(q.dtype()) + " and " + fmt(k.dtype()) + ".");
  }
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

void TalkieRoPEQKNorm::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
  eval_rope(stream(), in, /* n_in */ 2, /* offset_at */ 3, /* gain_at */ 2, outs, base_, /* norm */ true, eps_);
}

void TalkieRoPEQKNorm::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[rope_qk_norm] TalkieRoPEQKNorm has no GPU kernel; the op uses its fallback there.");
}

bool TalkieRoPEQKNorm::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const TalkieRoPEQKNorm&>(other);
  return base_ == o.base_ && eps_ == o.eps_;
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
  if (x.shape() != y.shape()) {
    fail(op, "x and y must have the same shape, got " + fmt(x.shape()) + " and " + fmt(y.shape()) + ".");
  }
  if (x.dtype() != y.dtype()) {
    fail_type(op, "x and y must have the same dtype, got " + fmt(x.dtype()) + " and " + fmt(y.dtype()) + ".");
  }
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

void TalkieResidualNorm::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
  auto& enc = mx::cpu::get_command_encoder(stream());
  for (auto& a : in) {
    enc.set_input_array(a);
  }
  for (auto& o : outs) {
    set_output(o, nullptr);
    enc.set_output_array(o);
  }
  const auto& x = in[0];
  if (x.size() == 0) {
    return;
  }
  kern::ResidualNormArgs args{};
  args.dtype = kernel_dtype(x.dtype());
  args.D = x.shape(-1);
  args.x_new = outs[0].data<char>();
  args.normed = outs[1].data<char>();
  args.eps = eps_;
  std::vector<Input> inputs = {Input(in[0]), Input(in[1])};
  if (has_skip_) {
    inputs.emplace_back(in[3]);
  }
  enc.dispatch([args,
                inputs = std::move(inputs),
                gain = mx::array::unsafe_weak_copy(in[2]),
                skip_gain = has_skip_ ? std::optional(mx::array::unsafe_weak_copy(in[4])) : std::nullopt,
                rows = rows_of(x)]() mutable {
    for (auto& i : inputs) {
      i.materialize();
    }
    args.x = inputs[0].rows();
    args.y = inputs[1].rows();
    args.skip = inputs.size() > 2 ? inputs[2].rows() : kern::Rows{};
    args.gain = read_float(gain, 0);
    args.skip_gain = skip_gain ? read_float(*skip_gain, 0) : 0.0f;
    const auto& kernels = kern::select();
    parallel_for(rows, int64_t(inputs.size() + 2) * args.D, kMinWorkPerThread, [&](int64_t b, int64_t e, int) {
      kernels.residual_norm(args, b, e);
    });
  });
}

void TalkieResidualNorm::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[residual_norm] TalkieResidualNorm has no GPU kernel; the op uses its fallback there.");
}

bool TalkieResidualNorm::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const TalkieResidualNorm&>(other);
  return has_skip_ == o.has_skip_ && eps_ == o.eps_;
}

} // namespace tk

// ---- kernel selection -------------------------------------------------------------

namespace tk::kern {

namespace {

// The tables this CPU can run, baseline first, best last.
std::vector<const Table*> supported() {
  std::vector<const Table*> out = {&base::table};
#if defined(TK_HAVE_V3)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    out.push_back(&v3::table);
#if defined(TK_HAVE_V4)
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512cd")) {
      out.push_back(&v4::table);
    }
#endif
  }
#endif
  return out;
}

const Table* best() {
  return supported().back();
}

std::atomic<const Table*> g_table{nullptr};

} // namespace

const Table& select() {
  const Table* t = g_table.load(std::memory_order_relaxed);
  if (t == nullptr) {
    t = best();
    g_table.store(t, std::memory_order_relaxed);
  }
  return *t;
}

} // namespace tk::kern

namespace tk {

int64_t contiguous_copies() {
  return g_copies.load(std::memory_order_relaxed);
}

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const kern::Table* t : kern::supported()) {
    out.push_back(t->isa);
  }
  return out;
}

void use_isa(const std::string& name) {
  for (const kern::Table* t : kern::supported()) {
    if (name == t->isa) {
      kern::g_table.store(t, std::memory_order_relaxed);
      return;
    }
  }
  throw std::invalid_argument("[use_isa] unknown or unsupported instruction set '" + name + "'.");
}

} // namespace tk
