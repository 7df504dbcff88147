// residual_norm's eval_cpu: hands the rows to csrc/kernels/residual_norm.cpp.
#include "cpu/eval.h"
#include "cpu/parallel.h"

namespace tk {

void TalkieResidualNorm::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
  auto& enc = encoder_for(stream(), in, outs);
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

} // namespace tk
