// What the Primitives' eval_cpu (csrc/cpu/<op>.cpp) share: the kernels'
// view of an input, output buffers, and the dtype names of the kernels.
#pragma once

#include <atomic>
#include <cstring>
#include <vector>

#include "kernels/kernels.h"
#include "mlx/backend/cpu/encoder.h"
#include "primitives.h"

namespace tk {

// A float32/float16/bfloat16 dtype as the kernels name it.
inline kern::Dtype kernel_dtype(mx::Dtype d) {
  if (d == mx::float16) {
    return kern::Dtype::f16;
  }
  if (d == mx::bfloat16) {
    return kern::Dtype::bf16;
  }
  return kern::Dtype::f32;
}


// Reads element i (counted in elements from the array's data pointer) of a
// floating array as float: gains are tiny and may come in any float dtype.
inline float read_float(const mx::array& a, int64_t i) {
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


// Counts the inputs Input::materialize copied (contiguous_copies() in ops.h).
extern std::atomic<int64_t> g_copies;


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

inline int64_t rows_of(const mx::array& a) {
  return a.shape(-1) == 0 ? 0 : int64_t(a.size()) / a.shape(-1);
}

// Work sizes (elements touched) below which splitting across threads costs
// more than it saves.
inline constexpr int64_t kMinWorkPerThread = 1 << 15;

// The output's buffer: the input's when MLX allows reusing it, else a fresh
// allocation (see eval.cpp).
void set_output(mx::array& out, const mx::array* donor);

// The start of every eval_cpu: the stream's CPU command encoder with every
// input registered and every output given a buffer (output i may take the
// buffer of donors[i], see set_output) and registered.
mx::cpu::CommandEncoder& encoder_for(
    const mx::Stream& s,
    const std::vector<mx::array>& in,
    std::vector<mx::array>& outs,
    const std::vector<const mx::array*>& donors = {});

} // namespace tk
