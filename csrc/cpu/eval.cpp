#include "cpu/eval.h"

namespace tk {

std::atomic<int64_t> g_copies{0};

int64_t contiguous_copies() {
  return g_copies.load(std::memory_order_relaxed);
}

// Reuse the donor's buffer only when MLX reports it donatable (no other
// reference to it) and it is laid out exactly as the output; a strided or
// broadcast donor would be read as if it were contiguous.
void set_output(mx::array& out, const mx::array* donor) {
  if (donor && donor->is_donatable() && donor->dtype() == out.dtype() && donor->flags().row_contiguous &&
      donor->size() == out.size() && donor->data_size() == donor->size()) {
    out.copy_shared_buffer(*donor);
  } else {
    out.set_data(mx::allocator::malloc(out.nbytes()));
  }
}

mx::cpu::CommandEncoder& encoder_for(
    const mx::Stream& s,
    const std::vector<mx::array>& in,
    std::vector<mx::array>& outs,
    const std::vector<const mx::array*>& donors) {
  auto& enc = mx::cpu::get_command_encoder(s);
  for (auto& a : in) {
    enc.set_input_array(a);
  }
  for (size_t i = 0; i < outs.size(); ++i) {
    set_output(outs[i], i < donors.size() ? donors[i] : nullptr);
    enc.set_output_array(outs[i]);
  }
  return enc;
}

} // namespace tk
