// Which instruction set's kernel table runs (csrc/kernels/kernels.h).
#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/kernels.h"
#include "ops.h"

// ---- kernel selection -------------------------------------------------------------

namespace tk::kern {

namespace {

// The tables this CPU can run, baseline first, best last.
std::vector<const Table*> supported() {
  std::vector<const Table*> out = {&base::table};
#if defined(TK_HAVE_V3)
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")) {
    out.push_back(&v3::table);
    if (__builtin_cpu_supports("avxvnni")) {
      out.push_back(&v3_vnni::table);
    }
#if defined(TK_HAVE_V4)
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512cd")) {
      out.push_back(&v4::table);
      if (__builtin_cpu_supports("avx512vnni")) {
        out.push_back(&v4_vnni::table);
        if (__builtin_cpu_supports("avx512bf16")) {
          out.push_back(&v4_bf16::table);
        }
      }
    }
#endif
  }
#endif
  return out;
}

const Table* best() {
  return supported().back();
}

std::atomic<const Table*> g_table{nullptr};

} // namespace

const Table& select() {
  const Table* t = g_table.load(std::memory_order_relaxed);
  if (t == nullptr) {
    t = best();
    g_table.store(t, std::memory_order_relaxed);
  }
  return *t;
}

} // namespace tk::kern

namespace tk {

std::vector<std::string> available_isas() {
  std::vector<std::string> out;
  for (const kern::Table* t : kern::supported()) {
    out.push_back(t->isa);
  }
  return out;
}

void use_isa(const std::string& name) {
  for (const kern::Table* t : kern::supported()) {
    if (name == t->isa) {
      kern::g_table.store(t, std::memory_order_relaxed);
      return;
    }
  }
  throw std::invalid_argument("[use_isa] unknown or unsupported instruction set '" + name + "'.");
}

} // namespace tk
