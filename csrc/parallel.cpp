#include "parallel.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <future>
#include <mutex>
#include <thread>
#include <vector>

#include "mlx/threadpool.h"

namespace tk {
namespace {

int hardware_threads() {
  static const int n = std::clamp<int>(std::thread::hardware_concurrency(), 1, 64);
  return n;
}

std::atomic<int> g_threads{0};  // 0: not set, use hardware_threads()

// The worker pool (hardware_threads() - 1 threads; the caller is the last
// one). Created on first use and deliberately never destroyed: joining at
// interpreter exit can deadlock, and after fork() the child must not touch
// the parent's threads, so a forked child builds its own pool.
ThreadPool& pool() {
  static std::mutex mu;
  static ThreadPool* p = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (p == nullptr || owner != getpid()) {
    p = new ThreadPool(std::max(hardware_threads() - 1, 1));
    owner = getpid();
  }
  return *p;
}

} // namespace

int num_threads() {
  int n = g_threads.load(std::memory_order_relaxed);
  return n > 0 ? n : hardware_threads();
}

void set_num_threads(int n) {
  g_threads.store(std::clamp(n, 1, hardware_threads()), std::memory_order_relaxed);
}

int max_chunks() {
  return hardware_threads();
}

void parallel_for(
    int64_t n,
    int64_t work_per_item,
    int64_t min_work,
    const std::function<void(int64_t, int64_t, int)>& fn) {
  int64_t by_work = (n * std::max<int64_t>(work_per_item, 1)) / std::max<int64_t>(min_work, 1);
  int chunks = int(std::min<int64_t>({num_threads(), n, std::max<int64_t>(by_work, 1)}));
  if (chunks <= 1) {
    if (n > 0) {
      fn(0, n, 0);
    }
    return;
  }
  auto bound = [&](int c) { return n * c / chunks; };
  std::vector<std::future<void>> pending;
  pending.reserve(chunks - 1);
  ThreadPool& workers = pool();
  for (int c = 1; c < chunks; ++c) {
    pending.push_back(workers.enqueue([&fn, &bound, c] { fn(bound(c), bound(c + 1), c); }));
  }
  fn(0, bound(1), 0);
  for (auto& f : pending) {
    f.get();
  }
}

} // namespace tk
