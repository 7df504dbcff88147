// Weights in 2 MiB pages (ops.h: huge_pages).
//
// Why. A decode step reads every weight once, from DRAM, through the TLB: in
// 4 KiB pages that is one page walk per 4 KiB read, and in a VM each walk
// goes through the host's tables too. MLX's CPU allocator takes its memory
// from malloc, which maps it in 4 KiB pages unless the process asked for
// more (Linux's THP "madvise" mode, the default of most distributions). So
// once a weight is loaded its memory is asked to be 2 MiB pages
// (MADV_HUGEPAGE, so it stays so) and collapsed into them at once
// (MADV_COLLAPSE, Linux 6.1+: each 2 MiB page is copied into place, so the
// weight is never held twice). Measured on Zen 3 (2 cores, v3, DRAM,
// interleaved processes, 6 rounds, M = 1): linear q4 13696 -> 5120 /
// 5120 -> 27392 / 5120 -> 5120 1.17 / 1.13 / 1.15x, q8 1.15 / 1.21 / 1.08x.
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "errors.h"
#include "ops.h"

#if defined(__linux__) && !defined(MADV_COLLAPSE)
#define MADV_COLLAPSE 25  // (Linux 6.1; older headers lack the name)
#endif

namespace tk {

namespace {

// huge_pages for the bytes [p, p + nbytes).
int64_t collapse(const char* op, const void* p, int64_t nbytes) {
#if defined(__linux__)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  // Only whole 2 MiB pages inside the range: the ends may share pages with
  // other allocations, which are not ours to change.
  const uintptr_t lo = (reinterpret_cast<uintptr_t>(p) + kHuge - 1) & ~(kHuge - 1);
  const uintptr_t hi = (reinterpret_cast<uintptr_t>(p) + uintptr_t(nbytes)) & ~(kHuge - 1);
  if (hi <= lo) {
    return 0;
  }
  void* start = reinterpret_cast<void*>(lo);
  if (madvise(start, hi - lo, MADV_HUGEPAGE) != 0) {
    // EINVAL: this kernel has no transparent huge pages (or THP is "never").
    throw std::runtime_error(std::string("[") + op + "] madvise(MADV_HUGEPAGE) failed: " + std::strerror(errno));
  }
  if (madvise(start, hi - lo, MADV_COLLAPSE) == 0) {
    return int64_t(hi - lo);
  }
  // Best effort, page by page: EAGAIN / ENOMEM where 2 MiB pages could not
  // be had (memory fragmented or short), EINVAL for a stretch the kernel will
  // not collapse (and everywhere before Linux 6.1, which lacks the call: the
  // range stays marked for khugepaged). Count the pages that took.
  int64_t done = 0;
  for (uintptr_t q = lo; q < hi; q += kHuge) {
    if (madvise(reinterpret_cast<void*>(q), kHuge, MADV_COLLAPSE) == 0) {
      done += int64_t(kHuge);
    }
  }
  return done;
#else
  (void)op, (void)p, (void)nbytes;
  return 0;  // (macOS: no transparent huge pages to ask for)
#endif
}

} // namespace

int64_t huge_pages(const mx::array& a) {
  constexpr const char* op = "huge_pages";
  mx::array b = a;
  b.eval();
  if (!b.flags().contiguous) {
    fail(op, "array must be contiguous, got strides of a view.");
  }
  return collapse(op, b.data<uint8_t>(), int64_t(b.nbytes()));
}

} // namespace tk
