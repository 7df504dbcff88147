#include "cpu/parallel.h"

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "mlx/threadpool.h"

namespace tk {
namespace {

int hardware_threads() {
  static const int n = std::clamp<int>(std::thread::hardware_concurrency(), 1, 64);
  return n;
}

// TALKIE_KERNELS_NUM_THREADS caps the threads from the start (e.g. 1 in each
// of two processes sharing two cores); set_num_threads overrides it.
int env_threads() {
  static const int n = [] {
    const char* v = std::getenv("TALKIE_KERNELS_NUM_THREADS");
    if (v == nullptr || *v == '\0') {
      return 0;
    }
    char* end = nullptr;
    long t = std::strtol(v, &end, 10);
    if (*end != '\0' || t < 1) {
      std::fprintf(stderr, "talkie_kernels: ignoring TALKIE_KERNELS_NUM_THREADS=%s (not a positive integer)\n", v);
      return 0;
    }
    return std::clamp<int>(int(std::min<long>(t, 1 << 20)), 1, hardware_threads());
  }();
  return n;
}

std::atomic<int> g_threads{0};  // 0: not set, use env_threads() or hardware_threads()

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
  if (n > 0) {
    return n;
  }
  return env_threads() > 0 ? env_threads() : hardware_threads();
}

void set_num_threads(int n) {
  // As TALKIE_KERNELS_NUM_THREADS refuses values below 1 (0 and -1 silently
  // meant one thread).
  if (n < 1) {
    throw std::invalid_argument("[set_num_threads] n must be >= 1, got " + std::to_string(n));
  }
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
  int threads = int(std::min<int64_t>({num_threads(), n, std::max<int64_t>(by_work, 1)}));
  if (threads <= 1) {
    if (n > 0) {
      fn(0, n, 0);
    }
    return;
  }
  // Pieces are handed out dynamically: on a busy machine a worker may wake
  // late (or be descheduled mid-way), and a static split would leave the
  // caller waiting for it. The caller takes pieces too and then waits only
  // for pieces in progress, never for a worker that has not started; such a
  // worker later finds nothing left (the shared state outlives the call).
  struct Shared {
    int64_t n, pieces;
    std::atomic<int64_t> next{0}, done{0};
  };
  auto shared = std::make_shared<Shared>();
  shared->n = n;
  shared->pieces = std::min<int64_t>(n, int64_t(threads) * 8);
  auto work = [&fn](Shared& s, int slot) {
    for (;;) {
      int64_t p = s.next.fetch_add(1);
      if (p >= s.pieces) {
        return;
      }
      fn(s.n * p / s.pieces, s.n * (p + 1) / s.pieces, slot);
      if (s.done.fetch_add(1) + 1 == s.pieces) {
        s.done.notify_all();
      }
    }
  };
  ThreadPool& workers = pool();
  for (int slot = 1; slot < threads; ++slot) {
    workers.enqueue([shared, work, slot] { work(*shared, slot); });
  }
  work(*shared, 0);
  for (int64_t d = shared->done.load(); d < shared->pieces; d = shared->done.load()) {
    shared->done.wait(d);
  }
}

} // namespace tk
