// Splitting a loop over independent items across the CPU's cores.
#pragma once

#include <cstdint>
#include <functional>

namespace tk {

// Threads used for large inputs: the CPU's cores unless set_num_threads
// lowered it (1 = always run on the calling thread).
int num_threads();
void set_num_threads(int n);

// Runs fn(begin, end, slot) over pieces of [0, n) on up to num_threads()
// threads, the calling thread (MLX's CPU stream thread) among them; `slot`
// (< max_chunks()) names the thread, for per-thread scratch. It only uses
// more threads when each gets at least `min_work` units of work, where one
// item is `work_per_item` units (elements touched): waking a thread costs
// tens of microseconds, more than a decode-sized op takes.
void parallel_for(
    int64_t n,
    int64_t work_per_item,
    int64_t min_work,
    const std::function<void(int64_t, int64_t, int)>& fn);

// Upper bound on the slot parallel_for may pass (for scratch sizing).
int max_chunks();

} // namespace tk
