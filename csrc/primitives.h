// The Primitives behind the ops of ops.h: each computes on the CPU with the
// loops of csrc/kernels/ and differentiates through its plain-MLX fallback.
#pragma once

#include <functional>
#include <utility>
#include <vector>

#include "mlx/primitives.h"
#include "ops.h"

namespace tk {

using Fallback = std::function<std::vector<mx::array>(std::vector<mx::array>)>;

// The role of MLX's fast::Custom (which libmlx does not export): a Primitive
// whose transformations are those of its plain-ops fallback. vjp and jvp
// differentiate the fallback with respect to the requested inputs only, the
// others (the integer offset) held constant.
class FallbackPrimitive : public mx::Primitive {
 public:
  FallbackPrimitive(mx::Stream s, Fallback fallback)
      : Primitive(s), fallback_(std::move(fallback)) {}
  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums,
      const std::vector<mx::array>& outputs) override;
  std::vector<mx::array> jvp(
      const std::vector<mx::array>& primals,
      const std::vector<mx::array>& tangents,
      const std::vector<int>& argnums) override;
  std::pair<std::vector<mx::array>, std::vector<int>> vmap(
      const std::vector<mx::array>& inputs,
      const std::vector<int>& axes) override;

 protected:
  Fallback fallback_;
};

// Inputs: {x}. Outputs: {normed}.
class TalkieRMSNorm : public FallbackPrimitive {
 public:
  TalkieRMSNorm(mx::Stream s, Fallback fallback, float eps)
      : FallbackPrimitive(s, std::move(fallback)), eps_(eps) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  DEFINE_NAME(TalkieRMSNorm)
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    return {in[0].shape()};
  }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  float eps_;
};

// Inputs: {x, offset}. Outputs: {rotated}.
class TalkieRoPE : public FallbackPrimitive {
 public:
  TalkieRoPE(mx::Stream s, Fallback fallback, double base)
      : FallbackPrimitive(s, std::move(fallback)), base_(base) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  DEFINE_NAME(TalkieRoPE)
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    return {in[0].shape()};
  }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  double base_;
};

// Inputs: {q, k, head_gain, offset}. Outputs: {q, k}.
class TalkieRoPEQKNorm : public FallbackPrimitive {
 public:
  TalkieRoPEQKNorm(mx::Stream s, Fallback fallback, double base, float eps)
      : FallbackPrimitive(s, std::move(fallback)), base_(base), eps_(eps) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  DEFINE_NAME(TalkieRoPEQKNorm)
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    return {in[0].shape(), in[1].shape()};
  }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  double base_;
  float eps_;
};

// Inputs: {x, y, gain} or {x, y, gain, skip, skip_gain}. Outputs: {x_new, normed}.
class TalkieResidualNorm : public FallbackPrimitive {
 public:
  TalkieResidualNorm(mx::Stream s, Fallback fallback, bool has_skip, float eps)
      : FallbackPrimitive(s, std::move(fallback)), has_skip_(has_skip), eps_(eps) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  DEFINE_NAME(TalkieResidualNorm)
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    return {in[0].shape(), in[0].shape()};
  }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  bool has_skip_;
  float eps_;
};

// Inputs: {gate, x}. Outputs: {silu(gate) * x}.
class TalkieSwiGLU : public FallbackPrimitive {
 public:
  TalkieSwiGLU(mx::Stream s, Fallback fallback) : FallbackPrimitive(s, std::move(fallback)) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  DEFINE_NAME(TalkieSwiGLU)
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    return {in[0].shape()};
  }
  bool is_equivalent(const mx::Primitive&) const override {
    return true;
  }
};

// Inputs: {x (M, K), w} or {x, w, scales, biases}. Outputs: {(M, N)}.
class TalkieLinear : public FallbackPrimitive {
 public:
  TalkieLinear(mx::Stream s, Fallback fallback, int kind, int group_size)
      : FallbackPrimitive(s, std::move(fallback)), kind_(kind), group_size_(group_size) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  DEFINE_NAME(TalkieLinear)
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    return {{in[0].shape(0), in[1].shape(0)}};
  }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  int kind_;  // kern::WeightKind
  int group_size_;
};

// Inputs: {q, k, v} or, quantized, {q, k codes, k scales, k biases, v codes,
// v scales, v biases}; then the mask for array masks. Outputs: {(B, Hq, L, Dv)}.
class TalkieAttention : public FallbackPrimitive {
 public:
  TalkieAttention(mx::Stream s, Fallback fallback, float scale, int mask, int bits, int group_size)
      : FallbackPrimitive(s, std::move(fallback)), scale_(scale), mask_(mask), bits_(bits), group_size_(group_size) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  DEFINE_NAME(TalkieAttention)
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  float scale_;
  int mask_;  // kern::AttnMask
  int bits_;  // 0: dense K/V
  int group_size_;
};

// Inputs: {buffer, rows}. Outputs: {buffer with rows written at start}, in
// buffer's memory (ops.h: kv_write).
class TalkieKVWrite : public FallbackPrimitive {
 public:
  TalkieKVWrite(mx::Stream s, Fallback fallback, int start)
      : FallbackPrimitive(s, std::move(fallback)), start_(start) {}
  void eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  void eval_gpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) override;
  DEFINE_NAME(TalkieKVWrite)
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& in) override {
    return {in[0].shape()};
  }
  bool is_equivalent(const mx::Primitive& other) const override;

 private:
  int start_;
};

} // namespace tk
