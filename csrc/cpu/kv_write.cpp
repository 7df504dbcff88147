// kv_write's eval_cpu: the output takes the buffer's memory as it is, shared
// or not (ops.h: kv_write), and the task copies the new rows into it.
#include <cstring>

#include "cpu/eval.h"

namespace tk {

void TalkieKVWrite::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& outs) {
  const auto& buffer = in[0];
  auto& out = outs[0];
  auto& enc = mx::cpu::get_command_encoder(stream());
  enc.set_input_array(buffer);
  enc.set_input_array(in[1]);
  if (buffer.flags().row_contiguous && buffer.data_size() == buffer.size()) {
    out.copy_shared_buffer(buffer);
  } else {
    // A strided buffer (not one mlx-lm's caches make): a contiguous copy
    // first, so the output is the buffer's values with the rows written.
    out.set_data(mx::allocator::malloc(out.nbytes()));
    enc.dispatch([src = Input(buffer), dst = out.data<char>(), n = out.nbytes()]() mutable {
      src.materialize();
      std::memcpy(dst, src.ptr, n);
    });
  }
  enc.set_output_array(out);
  const int64_t B = out.shape(0), H = out.shape(1), S = out.shape(2), D = out.shape(3);
  enc.dispatch([rows = Input(in[1]), dst = out.data<char>(), B, H, S, D, start = int64_t(start_)]() mutable {
    rows.materialize();  // a contiguous last axis
    const size_t item = rows.itemsize, line = size_t(D) * item;
    const int64_t n = rows.shape[2];
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t h = 0; h < H; ++h) {
        for (int64_t i = 0; i < n; ++i) {
          const char* src = rows.ptr + (b * rows.strides[0] + h * rows.strides[1] + i * rows.strides[2]) * item;
          std::memcpy(dst + (((b * H + h) * S) + start + i) * line, src, line);
        }
      }
    }
  });
}

} // namespace tk
