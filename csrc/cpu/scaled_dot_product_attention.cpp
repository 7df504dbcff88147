// scaled_dot_product_attention's eval_cpu (dense and quantized K/V): the
// arrays' strides into kern::AttentionArgs, then decode pieces + merge or
// prefill tiles across threads, through csrc/kernels/scaled_dot_product_attention.cpp.
#include <memory>

#include "cpu/eval.h"
#include "cpu/parallel.h"

namespace tk {

namespace {

kern::Strided3 strided3(const Input& a) {
  return {a.ptr, a.strides[0], a.strides[1], a.strides[2]};
}

// Work (elements touched) under which one thread does it all.
constexpr int64_t kAttnMinWork = int64_t(1) << 16;

} // namespace

void TalkieAttention::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
  auto& enc = encoder_for(stream(), in, outs);
  auto& out = outs[0];
  if (out.size() == 0) {
    return;
  }
  const int n_qkv = bits_ > 0 ? 7 : 3;
  const auto& q = in[0];
  kern::AttentionArgs args{};
  args.q_dtype = kernel_dtype(q.dtype());
  args.out_dtype = kernel_dtype(out.dtype());
  args.B = q.shape(0);
  args.Hq = q.shape(1);
  args.L = q.shape(2);
  args.D = q.shape(3);
  args.Hkv = in[1].shape(1);
  args.S = in[1].shape(2);
  args.Dv = out.shape(3);
  args.group_size = group_size_;
  args.scale = scale_;
  args.mask = kern::AttnMask(mask_);
  args.out = out.data<char>();
  if (in.size() > size_t(n_qkv)) {  // array mask: its strides, broadcast axes 0
    const auto& m = in[n_qkv];
    args.mask_ptr = m.data<char>();
    args.mask_dtype = m.dtype() == mx::bool_ ? kern::Dtype::f32 : kernel_dtype(m.dtype());
    for (int i = 0; i < 4; ++i) {
      const int d = int(m.ndim()) - 4 + i;
      args.mask_strides[i] = d >= 0 && m.shape(d) > 1 ? m.strides(d) : 0;
    }
  }
  // K/V (and q) are read in place: mlx-lm's cache views have a contiguous
  // last axis; anything else is gathered (and counted) in the task.
  std::vector<Input> inputs;
  for (int i = 0; i < n_qkv; ++i) {
    inputs.emplace_back(in[i]);
  }
  std::vector<mx::Dtype> dtypes;
  for (int i = 0; i < n_qkv; ++i) {
    dtypes.push_back(in[i].dtype());
  }
  enc.dispatch([args, inputs = std::move(inputs), dtypes = std::move(dtypes), bits = bits_]() mutable {
    for (auto& a : inputs) {
      a.materialize();
    }
    args.q = strided3(inputs[0]);
    auto kv = [&](int at) {
      kern::KVArgs r{};
      r.x = strided3(inputs[at]);
      r.bits = bits;
      if (bits > 0) {
        r.dtype = kernel_dtype(dtypes[at + 1]);
        r.scales = strided3(inputs[at + 1]);
        r.biases = strided3(inputs[at + 2]);
      } else {
        r.dtype = kernel_dtype(dtypes[at]);
      }
      return r;
    };
    args.k = kv(1);
    args.v = kv(bits > 0 ? 4 : 2);
    const auto& kernels = kern::select();
    const int64_t per_slot = kern::attention_scratch_floats(args);
    std::unique_ptr<float[]> scratch(new float[max_chunks() * per_slot]);
    const int64_t row_work = args.D + args.Dv;
    if (args.L <= kern::kAttnDecodeMaxL) {
      // 1. pieces of kAttnSplit keys for each kv head's G·L rows, then 2. their merge.
      const int64_t splits = kern::attention_splits(args), rows = kern::attention_rows(args);
      std::unique_ptr<float[]> partial(new float[kern::attention_partial_floats(args)]);
      args.partial = partial.get();
      const int64_t keys = args.S < kern::kAttnSplit ? args.S : kern::kAttnSplit;
      parallel_for(args.B * args.Hkv * splits, keys * row_work * rows, kAttnMinWork, [&](int64_t b, int64_t e, int slot) {
        kernels.attention_decode(args, b, e, scratch.get() + slot * per_slot);
      });
      parallel_for(args.B * args.Hkv, splits * rows * args.Dv, kAttnMinWork, [&](int64_t b, int64_t e, int) {
        kernels.attention_merge(args, b, e);
      });
    } else {
      const int64_t positions = kern::attention_tile_positions(args);
      const int64_t tiles = (args.L + positions - 1) / positions;
      parallel_for(args.B * args.Hkv * tiles, kern::attention_tile_rows(args) * args.S * row_work, kAttnMinWork,
                   [&](int64_t b, int64_t e, int slot) {
                     kernels.attention_prefill(args, b, e, scratch.get() + slot * per_slot);
                   });
    }
  });
}

} // namespace tk
