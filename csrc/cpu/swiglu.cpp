// swiglu's eval_cpu: hands the rows to csrc/kernels/swiglu.cpp.
#include "cpu/eval.h"
#include "cpu/parallel.h"

namespace tk {

void TalkieSwiGLU::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
  const auto& gate = in[0];
  auto& enc = encoder_for(stream(), in, outs, {&gate});
  if (gate.size() == 0) {
    return;
  }
  kern::SwigluArgs args{kernel_dtype(gate.dtype()), gate.shape(-1), {}, {}, outs[0].data<char>()};
  // (gate and x are usually the two halves of one projection's output: row
  // strided views, read in place.)
  enc.dispatch([args, inputs = std::vector<Input>{Input(in[0]), Input(in[1])}, rows = rows_of(gate)]() mutable {
    for (auto& i : inputs) {
      i.materialize();
    }
    args.gate = inputs[0].rows();
    args.x = inputs[1].rows();
    const auto& kernels = kern::select();
    parallel_for(rows, 3 * args.D, kMinWorkPerThread, [&](int64_t b, int64_t e, int) { kernels.swiglu(args, b, e); });
  });
}

} // namespace tk
