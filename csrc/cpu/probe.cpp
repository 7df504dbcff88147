// The machine probes the bench reports its kernels against: read bandwidth
// (a streaming read) and the fp32 FMA peak (independent FMA chains), both run
// with the kernels' threads and the kernels' current instruction-set table
// (csrc/kernels/probe.cpp), so use_isa("v3") measures AVX2's peak and "v4"
// AVX-512's.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <stdexcept>
#include <vector>

#include "cpu/parallel.h"
#include "errors.h"
#include "kernels/kernels.h"
#include "ops.h"

namespace tk {

namespace {

// The median of `repeats` runs of fn(), which returns one rate.
template <class F>
double median_of(int repeats, F&& fn) {
  std::vector<double> rates;
  for (int r = 0; r < repeats; ++r) {
    rates.push_back(fn());
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// GB/s of `repeats` reads of `words` ones at p (their median), checked by their sum.
double read_gbps(const char* op, const uint64_t* p, int64_t words, int repeats) {
  constexpr int64_t kChunk = (int64_t(1) << 20) / 8;
  const int64_t chunks = (words + kChunk - 1) / kChunk;
  const auto& kernels = kern::select();
  std::atomic<uint64_t> sink{0};
  const double gbps = median_of(repeats, [&] {
    const auto t0 = std::chrono::steady_clock::now();
    parallel_for(chunks, kChunk, 1, [&](int64_t b, int64_t e, int) {
      const int64_t lo = b * kChunk, hi = std::min(e * kChunk, words);
      sink.fetch_add(kernels.read_sum(p + lo, hi - lo), std::memory_order_relaxed);
    });
    return double(words * 8) / seconds_since(t0) / 1e9;
  });
  if (sink.load() != uint64_t(words) * repeats) {
    throw std::runtime_error(std::string("[") + op + "] the read summed wrong (the buffer must hold ones)");
  }
  return gbps;
}

} // namespace

double memory_read_gbps(int64_t nbytes, int repeats) {
  if (nbytes < (int64_t(1) << 20) || repeats < 1) {
    throw std::invalid_argument("[memory_read_gbps] nbytes must be at least 1 MiB and repeats at least 1.");
  }
  const std::vector<uint64_t> buf(nbytes / 8, 1);  // written once, so every page is resident
  return read_gbps("memory_read_gbps", buf.data(), int64_t(buf.size()), repeats);
}

double memory_read_gbps_of(const mx::array& buffer, int repeats) {
  constexpr const char* op = "memory_read_gbps_of";
  if (buffer.dtype() != mx::uint64 || buffer.ndim() != 1) {
    fail_type(op, "buffer must be a 1-D mlx.core.uint64 array of ones, got " + fmt(buffer.shape()) + " " +
                      fmt(buffer.dtype()) + ".");
  }
  if (buffer.nbytes() < (size_t(1) << 20) || repeats < 1) {
    fail(op, "buffer must hold at least 1 MiB and repeats be at least 1.");
  }
  mx::array b = buffer;
  b.eval();
  if (!b.flags().row_contiguous) {
    fail(op, "buffer must be contiguous.");
  }
  return read_gbps(op, b.data<uint64_t>(), int64_t(b.size()), repeats);
}

double fma_peak_gflops(int64_t flops_per_thread, int repeats) {
  if (flops_per_thread < 1000000 || repeats < 1) {
    throw std::invalid_argument("[fma_peak_gflops] flops_per_thread must be at least 1e6 and repeats at least 1.");
  }
  const auto& kernels = kern::select();
  const int threads = num_threads();
  std::atomic<int64_t> done{0};
  std::atomic<bool> diverged{false};
  const double gflops = median_of(repeats, [&] {
    done.store(0);
    const auto t0 = std::chrono::steady_clock::now();
    // One item per thread (min_work 1: always spread).
    parallel_for(threads, 1, 1, [&](int64_t b, int64_t e, int) {
      for (int64_t i = b; i < e; ++i) {
        float s = 0.0f;
        done.fetch_add(kernels.fma_chains(flops_per_thread, &s), std::memory_order_relaxed);
        // Each chain settles near 1, so the sum is finite and positive.
        if (!(s > 0.0f && s < 1e30f)) {
          diverged.store(true);
        }
      }
    });
    return double(done.load()) / seconds_since(t0) / 1e9;
  });
  if (diverged.load()) {
    throw std::runtime_error("[fma_peak_gflops] the FMA chains diverged");
  }
  return gflops;
}

} // namespace tk
