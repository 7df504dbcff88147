#include "cpu/eval.h"

namespace tk {

std::atomic<int64_t> g_copies{0};

int64_t contiguous_copies() {
  return g_copies.load(std::memory_order_relaxed);
}

// never reports them donatable.
void set_output(mx::array& out, const mx::array* donor) {
  if (donor && donor->is_donatable() && donor->dtype() == out.dtype() && donor->flags().row_contiguous &&
      donor->size() == out.size() && donor->data_size() == donor->size()) {
    out.copy_shared_buffer(*donor);
  } else {
    out.set_data(mx::allocator::malloc(out.nbytes()));
  }
}

// Working memory of the rope task (cos/sin table, scratch rows): up to a
// cap, kept per thread between calls, since a fresh prefill-sized table
// would cost a zero-fill and page faults on every call; beyond it, owned by

} // namespace tk
