// rms_norm's eval_cpu: hands the rows to csrc/kernels/rms_norm.cpp.
#include "cpu/eval.h"
#include "cpu/parallel.h"

namespace tk {

void TalkieRMSNorm::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
  const auto& x = in[0];
  auto& enc = encoder_for(stream(), in, outs, {&x});
  auto& out = outs[0];
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

} // namespace tk
