#include "cpu/parallel.h"

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <atomic>
#include <exception>
#include <memory>
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

// How long a thread that waits for another watches before it sleeps
// (Workers, below: waking a sleeping thread costs about as long in a VM).
constexpr auto kWatch = std::chrono::microseconds(300);

// Waits until `a` no longer holds `old`, returning what it holds then:
// watching it (yielding the core to any other runnable thread) until
// `until`, then asleep on it.
template <class T>
T await_change(const std::atomic<T>& a, T old, std::chrono::steady_clock::time_point until) {
  T v;
  while ((v = a.load(std::memory_order_acquire)) == old) {
    if (std::chrono::steady_clock::now() > until) {
      a.wait(old, std::memory_order_acquire);
    } else {
      sched_yield();
    }
  }
  return v;
}

// One parallel_for's pieces, handed out dynamically: on a busy machine a
// worker may wake late (or be descheduled mid-way), and a static split
// would leave the caller waiting for it. The caller takes pieces too and
// then waits only for pieces in progress, never for a worker that has not
// started; such a worker later finds nothing left (the job outlives the
// call through the workers' shared_ptr, and fn is only called for a piece).
// A piece that throws is caught where it ran: the pieces not yet begun are
// then counted done without running, and parallel_for rethrows the first
// exception once every piece is done and the workers are free again (an
// exception escaping a worker thread would end the process).
struct Job {
  const std::function<void(int64_t, int64_t, int)>* fn;
  int64_t n, pieces;
  int threads;
  std::atomic<int64_t> next{0}, done{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;  // written once, by the piece that set `failed`; read after `done` reaches pieces

  void work(int slot) {
    for (;;) {
      const int64_t p = next.fetch_add(1);
      if (p >= pieces) {
        return;
      }
      if (!failed.load(std::memory_order_relaxed)) {
        try {
          (*fn)(n * p / pieces, n * (p + 1) / pieces, slot);
        } catch (...) {
          if (!failed.exchange(true)) {
            error = std::current_exception();
          }
        }
      }
      if (done.fetch_add(1) + 1 == pieces) {
        done.notify_all();
      }
    }
  }
};

// Worker threads that, after a job, watch for the next one for kWatch before
// sleeping. A decode step is a chain of ops each a few hundred µs or less,
// tens of µs apart, and waking a sleeping thread costs about as much in a
// VM: measured on Zen 3 (Firecracker guest, 2 cores), reading 2 MiB from L3
// took 32 µs on one thread and 46-48 µs on two with the workers sleeping,
// and `linear` q4 5120 -> 5120 from DRAM read 89 % of the read probe on one
// thread, 60-76 % on two (5120 -> 61440, whose calls are 12x longer: 87 %).
// While watching, a worker yields its core to any other runnable thread
// (sched_yield), so it does not hold off the Python thread that builds the
// next token's graph.
class Workers {
 public:
  explicit Workers(int n) {
    for (int slot = 1; slot <= n; ++slot) {
      std::thread([this, slot] { loop(slot); }).detach();
    }
  }

  // Runs job->work(slot) on the workers below job->threads, or returns
  // false if another caller's job holds them.
  bool try_start(const std::shared_ptr<Job>& job) {
    if (!busy_.try_lock()) {
      return false;
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      job_ = job;
    }
    gen_.fetch_add(1, std::memory_order_release);
    gen_.notify_all();
    return true;
  }

  void finish() {
    busy_.unlock();
  }

 private:
  void loop(int slot) {
    uint64_t seen = gen_.load(std::memory_order_acquire);
    for (;;) {
      seen = await_change(gen_, seen, std::chrono::steady_clock::now() + kWatch);
      std::shared_ptr<Job> job;
      {
        std::lock_guard<std::mutex> lock(mu_);
        job = job_;
      }
      if (job && slot < job->threads) {
        job->work(slot);
      }
    }
  }

  std::mutex busy_, mu_;
  std::atomic<uint64_t> gen_{0};
  std::shared_ptr<Job> job_;
};

// This process's T of hardware_threads() - 1 threads (the caller is the
// last one): the spinning workers, and MLX's pool for a second caller.
// Created on first use and deliberately never destroyed: joining at
// interpreter exit can deadlock, and after fork() the child must not touch
// the parent's threads, so a forked child builds its own.
template <class T>
T& threads_of_this_process() {
  static std::mutex mu;
  static T* p = nullptr;
  static pid_t owner = 0;
  std::lock_guard<std::mutex> lock(mu);
  if (p == nullptr || owner != getpid()) {
    p = new T(std::max(hardware_threads() - 1, 1));
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
  auto job = std::make_shared<Job>();
  job->fn = &fn;
  job->n = n;
  job->pieces = std::min<int64_t>(n, int64_t(threads) * 8);
  job->threads = threads;
  Workers& spin = threads_of_this_process<Workers>();
  const bool spun = spin.try_start(job);
  if (!spun) {
    // Another thread's parallel_for holds the spinning workers: MLX's pool.
    ThreadPool& workers = threads_of_this_process<ThreadPool>();
    for (int slot = 1; slot < threads; ++slot) {
      workers.enqueue([job, slot] { job->work(slot); });
    }
  }
  job->work(0);
  // The pieces still in progress end within a piece's time (an eighth of a
  // thread's share): watch for them before sleeping, as the workers do, since
  // being woken costs this thread about as long.
  const auto until = std::chrono::steady_clock::now() + kWatch;
  for (int64_t d = job->done.load(); d < job->pieces;) {
    d = await_change(job->done, d, until);
  }
  if (spun) {
    spin.finish();
  }
  if (job->error) {
    std::rethrow_exception(job->error);
  }
}

} // namespace tk
