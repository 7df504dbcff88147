// The Primitives' transformations (through their plain-MLX fallback), GPU
// stubs and equivalence. eval_cpu of each lives in csrc/cpu/<op>.cpp.
#include "primitives.h"

namespace tk {

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

void TalkieRMSNorm::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[rms_norm] TalkieRMSNorm has no GPU kernel; the op uses its fallback there.");
}

bool TalkieRMSNorm::is_equivalent(const mx::Primitive& other) const {
  return eps_ == static_cast<const TalkieRMSNorm&>(other).eps_;
}

void TalkieRoPE::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[rope] TalkieRoPE has no GPU kernel; the op uses its fallback there.");
}

bool TalkieRoPE::is_equivalent(const mx::Primitive& other) const {
  return base_ == static_cast<const TalkieRoPE&>(other).base_;
}

void TalkieRoPEQKNorm::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[rope_qk_norm] TalkieRoPEQKNorm has no GPU kernel; the op uses its fallback there.");
}

bool TalkieRoPEQKNorm::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const TalkieRoPEQKNorm&>(other);
  return base_ == o.base_ && eps_ == o.eps_;
}

void TalkieResidualNorm::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[residual_norm] TalkieResidualNorm has no GPU kernel; the op uses its fallback there.");
}

bool TalkieResidualNorm::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const TalkieResidualNorm&>(other);
  return has_skip_ == o.has_skip_ && eps_ == o.eps_;
}

void TalkieSwiGLU::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[swiglu] TalkieSwiGLU has no GPU kernel; the op uses its fallback there.");
}

void TalkieLinear::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[linear] TalkieLinear has no GPU kernel; the op uses its fallback there.");
}

bool TalkieLinear::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const TalkieLinear&>(other);
  return kind_ == o.kind_ && group_size_ == o.group_size_;
}

void TalkieAttention::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[scaled_dot_product_attention] TalkieAttention has no GPU kernel; the op uses its fallback there.");
}

bool TalkieAttention::is_equivalent(const mx::Primitive& other) const {
  const auto& o = static_cast<const TalkieAttention&>(other);
  return scale_ == o.scale_ && mask_ == o.mask_ && bits_ == o.bits_ && group_size_ == o.group_size_;
}

void TalkieKVWrite::eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) {
  throw std::runtime_error("[kv_write] TalkieKVWrite has no GPU kernel; the op uses its fallback there.");
}

bool TalkieKVWrite::is_equivalent(const mx::Primitive& other) const {
  return start_ == static_cast<const TalkieKVWrite&>(other).start_;
}

} // namespace tk
