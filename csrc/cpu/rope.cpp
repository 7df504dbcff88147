// rope's and rope_qk_norm's eval_cpu: one cos/sin table per call, then the
// rows, through csrc/kernels/rope.cpp.
#include <cmath>
#include <memory>
#include <optional>

#include "cpu/eval.h"
#include "cpu/parallel.h"

namespace tk {

namespace {

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
  auto& enc = encoder_for(stream, in, outs, {n_in == 1 ? &in[0] : nullptr});
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

void TalkieRoPE::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
  eval_rope(stream(), in, /* n_in */ 1, /* offset_at */ 1, /* gain_at */ -1, outs, base_, /* norm */ false, 0.0f);
}

void TalkieRoPEQKNorm::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
  eval_rope(stream(), in, /* n_in */ 2, /* offset_at */ 3, /* gain_at */ 2, outs, base_, /* norm */ true, eps_);
}

} // namespace tk
