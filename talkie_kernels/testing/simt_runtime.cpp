// SIMT runtime of the Metal emulator: runs a dispatchThreads grid threadgroup
// by threadgroup; each GPU thread is a cooperative fiber that switches out
// only at a simdgroup operation or a threadgroup barrier. Compiled once per
// machine (cached like the kernels) and loaded RTLD_GLOBAL so that kernel
// units resolve tk_rt_* against it.
#include "tk_simt.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#if !defined(__x86_64__) || defined(TK_FORCE_UCONTEXT)
#include <ucontext.h>
#endif

namespace {

constexpr unsigned kSimdWidth = 32;
constexpr unsigned kMaxThreadsPerGroup = 1024;


// ---------------------------------------------------------------------------
// Context switch. x86-64: six callee-saved registers, MXCSR and the x87
// control word; a new fiber starts in tk_fiber_trampoline with r12 = lane and
// r13 = entry function.
// ---------------------------------------------------------------------------
#if defined(__x86_64__) && !defined(TK_FORCE_UCONTEXT)
extern "C" void tk_switch(void** save_sp, void* to_sp)
    __attribute__((visibility("hidden")));
extern "C" void tk_fiber_trampoline() __attribute__((visibility("hidden")));
asm(R"(
  .text
  .p2align 4
  .globl tk_switch
  .hidden tk_switch
  .type tk_switch,@function
tk_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size tk_switch, .-tk_switch

  .p2align 4
  .globl tk_fiber_trampoline
  .hidden tk_fiber_trampoline
  .type tk_fiber_trampoline,@function
tk_fiber_trampoline:
  movq %r12, %rdi
  callq *%r13
  ud2
  .size tk_fiber_trampoline, .-tk_fiber_trampoline
)");

void* fiber_init(char* top, size_t, void (*entry)(tk_lane*), tk_lane* lane) {
  // After the final `ret` of tk_switch, rsp = top - 16 (16-byte aligned), as
  // the trampoline's `call` expects.
  uint64_t* ret_slot = reinterpret_cast<uint64_t*>(top - 24);
  ret_slot[0] = reinterpret_cast<uint64_t>(&tk_fiber_trampoline);
  ret_slot[-1] = 0;                                   // rbp
  ret_slot[-2] = 0;                                   // rbx
  ret_slot[-3] = reinterpret_cast<uint64_t>(lane);    // r12
  ret_slot[-4] = reinterpret_cast<uint64_t>(entry);   // r13
  ret_slot[-5] = 0;                                   // r14
  ret_slot[-6] = 0;                                   // r15
  uint32_t* fp_state = reinterpret_cast<uint32_t*>(ret_slot - 7);
  fp_state[0] = 0x1F80;  // default MXCSR
  fp_state[1] = 0x037F;  // default x87 control word
  return ret_slot - 7;
}
inline void fiber_switch(void** save, void* to) { tk_switch(save, to); }
#else
// Portable fallback: ucontext (slower: swapcontext saves the signal mask).
// A fiber's ucontext sits at the top of its stack; the scheduler's is per OS
// thread. `sp` slots hold ucontext pointers.
struct Ctx {
  ucontext_t uc;
};
void ucontext_entry(unsigned entry_hi, unsigned entry_lo, unsigned lane_hi, unsigned lane_lo) {
  auto join = [](unsigned hi, unsigned lo) {
    return (static_cast<uintptr_t>(hi) << 16 << 16) | static_cast<uintptr_t>(lo);
  };
  auto entry = reinterpret_cast<void (*)(tk_lane*)>(join(entry_hi, entry_lo));
  entry(reinterpret_cast<tk_lane*>(join(lane_hi, lane_lo)));
}
void* fiber_init(char* top, size_t size, void (*entry)(tk_lane*), tk_lane* lane) {
  Ctx* c = reinterpret_cast<Ctx*>(
      (reinterpret_cast<uintptr_t>(top) - sizeof(Ctx)) & ~uintptr_t(63));
  char* bottom = top - size;
  getcontext(&c->uc);
  c->uc.uc_stack.ss_sp = bottom;
  c->uc.uc_stack.ss_size = static_cast<size_t>(reinterpret_cast<char*>(c) - bottom);
  c->uc.uc_link = nullptr;
  const uintptr_t e = reinterpret_cast<uintptr_t>(entry);
  const uintptr_t l = reinterpret_cast<uintptr_t>(lane);
  makecontext(&c->uc, reinterpret_cast<void (*)()>(ucontext_entry), 4,
              static_cast<unsigned>(e >> 16 >> 16), static_cast<unsigned>(e),
              static_cast<unsigned>(l >> 16 >> 16), static_cast<unsigned>(l));
  return c;
}
thread_local Ctx t_sched_ctx;
inline void fiber_switch(void** save, void* to) {
  if (!*save) *save = &t_sched_ctx;  // the scheduler's first switch
  swapcontext(&static_cast<Ctx*>(*save)->uc, &static_cast<Ctx*>(to)->uc);
}
#endif

// ---------------------------------------------------------------------------
// Stacks: one arena of kMaxThreadsPerGroup stacks per worker, pooled across
// launches. A PROT_NONE page under each stack turns an overflow into SIGSEGV.
// ---------------------------------------------------------------------------
struct Arena {
  char* base = nullptr;
  size_t requested = 0;  // pool key
  size_t usable = 0;     // bytes per fiber stack, page-rounded
  size_t stride = 0;     // usable + guard page
  char* top(unsigned i) const { return base + (i + 1) * stride; }
};

std::mutex g_pool_mutex;
std::vector<Arena> g_pool;

Arena acquire_arena(size_t stack) {
  {
    std::lock_guard<std::mutex> lock(g_pool_mutex);
    for (size_t i = 0; i < g_pool.size(); ++i) {
      if (g_pool[i].requested == stack) {
        Arena a = g_pool[i];
        g_pool.erase(g_pool.begin() + static_cast<long>(i));
        return a;
      }
    }
  }
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  Arena a;
  a.requested = stack;
  a.usable = (stack + page - 1) / page * page;
  a.stride = a.usable + page;
  void* mem = mmap(nullptr, a.stride * kMaxThreadsPerGroup, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) {
    std::fprintf(stderr, "talkie_kernels emulator: cannot map fiber stacks\n");
    std::abort();
  }
  a.base = static_cast<char*>(mem);
  for (unsigned i = 0; i < kMaxThreadsPerGroup; ++i) {
    mprotect(a.base + i * a.stride, page, PROT_NONE);
  }
  return a;
}

void release_arena(Arena a) {
  std::lock_guard<std::mutex> lock(g_pool_mutex);
  g_pool.push_back(a);
}

// ---------------------------------------------------------------------------
// Launch state shared by the workers.
// ---------------------------------------------------------------------------
struct Shared {
  const tk_launch* launch;
  unsigned groups[3];
  unsigned long long n_groups;
  std::atomic<unsigned long long> next{0};
  std::atomic<bool> failed{false};
  std::mutex error_mutex;
  std::string error;

  void fail(const std::string& message) {
    std::lock_guard<std::mutex> lock(error_mutex);
    if (!failed.load()) {
      error = message;
      failed.store(true);
    }
  }
};

constexpr size_t kThreadgroupMemory = 32768;  // Metal's limit per threadgroup

struct Worker {
  Shared* shared;
  void* sched_sp = nullptr;
  tk_lane* lanes = nullptr;
  Arena arena;
  // Threadgroup memory of the running threadgroup: blocks by declaration site.
  alignas(64) unsigned char tg_memory[kThreadgroupMemory];
  size_t tg_used = 0;
  std::vector<std::pair<unsigned, size_t>> tg_sites;
  void begin_group() {
    tg_used = 0;
    tg_sites.clear();
  }
};

thread_local tk_lane* t_current = nullptr;
thread_local Worker* t_worker = nullptr;
thread_local const tk_ids* t_direct = nullptr;  // the thread running as a plain call

// ---------------------------------------------------------------------------
// Crash reports: a fault inside a kernel (wild pointer, integer division by
// zero) names the kernel and the GPU thread, then the previous handler (e.g.
// Python's faulthandler) runs as if we were not there.
// ---------------------------------------------------------------------------
struct sigaction g_previous[32];
std::once_flag g_handlers_once;

void crash_handler(int sig, siginfo_t*, void*) {
  const tk_ids* ids = t_current ? &t_current->ids : t_direct;
  if (ids && t_worker) {
    const char* what = sig == SIGFPE ? "SIGFPE (integer division by zero?)"
        : sig == SIGBUS ? "SIGBUS" : "SIGSEGV (out-of-bounds access?)";
    char msg[512];
    int n = std::snprintf(
        msg, sizeof(msg),
        "\ntalkie_kernels emulator: %s in kernel `%s`, thread_position_in_grid (%u, %u, %u), "
        "threadgroup_position_in_grid (%u, %u, %u)\n",
        what, t_worker->shared->launch->name ? t_worker->shared->launch->name : "?",
        ids->thread_position_in_grid[0], ids->thread_position_in_grid[1],
        ids->thread_position_in_grid[2], ids->threadgroup_position_in_grid[0],
        ids->threadgroup_position_in_grid[1], ids->threadgroup_position_in_grid[2]);
    if (n > 0) {
      ssize_t ignored = write(2, msg, static_cast<size_t>(n < 512 ? n : 511));
      (void)ignored;
    }
  }
  // Returning re-executes the faulting instruction under the previous handler.
  sigaction(sig, &g_previous[sig], nullptr);
}

void install_crash_handlers() {
  std::call_once(g_handlers_once, [] {
    for (int sig : {SIGSEGV, SIGFPE, SIGBUS}) {
      struct sigaction sa;
      std::memset(&sa, 0, sizeof(sa));
      sa.sa_sigaction = crash_handler;
      sa.sa_flags = SA_SIGINFO | SA_NODEFER;
      sigemptyset(&sa.sa_mask);
      sigaction(sig, &sa, &g_previous[sig]);
    }
  });
}

void fiber_main(tk_lane* lane) {
  Worker* w = static_cast<Worker*>(lane->worker);
  const tk_launch* L = w->shared->launch;
  L->fn(L->args, &lane->ids);
  lane->state = TK_DONE;
  fiber_switch(&lane->sp, w->sched_sp);
  __builtin_unreachable();
}

std::string source_line(const tk_launch* L, int line) {
  std::string s = "line " + std::to_string(line);
  if (L->lines && line >= 1 && line <= L->n_lines) {
    std::string text = L->lines[line - 1];
    size_t b = text.find_first_not_of(" \t");
    s += " `" + (b == std::string::npos ? text : text.substr(b)) + "`";
  }
  return s;
}

std::string group_name(const unsigned* g) {
  return "(" + std::to_string(g[0]) + ", " + std::to_string(g[1]) + ", " +
      std::to_string(g[2]) + ")";
}

// Fills the ids of every thread of threadgroup `g`; returns the thread count.
unsigned setup_group(const Shared& S, const unsigned* g, tk_lane* lanes,
                     Worker* w) {
  const tk_launch* L = S.launch;
  unsigned actual[3];
  for (int d = 0; d < 3; ++d) {
    unsigned start = g[d] * L->threadgroup[d];
    unsigned left = L->grid[d] - start;
    actual[d] = left < L->threadgroup[d] ? left : L->threadgroup[d];
  }
  const unsigned n = actual[0] * actual[1] * actual[2];
  const unsigned n_simd = (n + kSimdWidth - 1) / kSimdWidth;
  for (unsigned i = 0; i < n; ++i) {
    tk_lane& lane = lanes[i];
    tk_ids& id = lane.ids;
    const unsigned p[3] = {i % actual[0], (i / actual[0]) % actual[1],
                           i / (actual[0] * actual[1])};
    for (int d = 0; d < 3; ++d) {
      id.thread_position_in_threadgroup[d] = p[d];
      id.thread_position_in_grid[d] = g[d] * L->threadgroup[d] + p[d];
      id.threads_per_grid[d] = L->grid[d];
      id.threads_per_threadgroup[d] = actual[d];
      id.dispatch_threads_per_threadgroup[d] = L->threadgroup[d];
      id.threadgroup_position_in_grid[d] = g[d];
      id.threadgroups_per_grid[d] = S.groups[d];
    }
    id.thread_index_in_threadgroup = i;
    id.thread_index_in_simdgroup = i % kSimdWidth;
    id.simdgroup_index_in_threadgroup = i / kSimdWidth;
    id.simdgroups_per_threadgroup = n_simd;
    id.thread_index_in_quadgroup = i % 4;
    id.quadgroup_index_in_threadgroup = i / 4;
    id.quadgroups_per_threadgroup = (n + 3) / 4;
    lane.lane_id = i % kSimdWidth;
    lane.worker = w;
  }
  return n;
}

inline void resume(Worker* w, tk_lane* lane) {
  t_current = lane;
  fiber_switch(&w->sched_sp, lane->sp);
  t_current = nullptr;
}

// Runs one threadgroup on fibers. Returns false after a failure.
bool run_group_fibers(Worker* w, const unsigned* g) {
  Shared& S = *w->shared;
  tk_lane* lanes = w->lanes;
  const unsigned n = setup_group(S, g, lanes, w);
  for (unsigned i = 0; i < n; ++i) {
    lanes[i].state = TK_READY;
    lanes[i].sp = fiber_init(w->arena.top(i), w->arena.usable, fiber_main, &lanes[i]);
  }
  const unsigned n_simd = (n + kSimdWidth - 1) / kSimdWidth;
  tk_lane* active[kSimdWidth];
  for (;;) {
    // Run each simdgroup until all its lanes wait at a barrier or are done,
    // resolving its simd operations whenever all of its live lanes wait.
    for (unsigned sg = 0; sg < n_simd; ++sg) {
      const unsigned lo = sg * kSimdWidth;
      const unsigned hi = lo + kSimdWidth < n ? lo + kSimdWidth : n;
      for (;;) {
        for (unsigned i = lo; i < hi; ++i) {
          if (lanes[i].state == TK_READY) {
            resume(w, &lanes[i]);
          }
        }
        if (S.failed.load(std::memory_order_relaxed)) {
          return false;
        }
        // The lanes waiting at the lowest source line resolve first: an
        // operation inside a divergent branch or loop (earlier in the source)
        // completes before the lanes that already left it meet again.
        int line = -1;
        for (unsigned i = lo; i < hi; ++i) {
          if (lanes[i].state == TK_SIMD && (line < 0 || lanes[i].line < line)) {
            line = lanes[i].line;
          }
        }
        const bool any = line >= 0;
        for (unsigned i = lo; i < hi && any; ++i) {
          if (lanes[i].state != TK_SIMD || lanes[i].line != line) continue;
          // Same line, same operation and type: one active set.
          tk_resolver r = lanes[i].resolver;
          for (unsigned j = 0; j < kSimdWidth; ++j) active[j] = nullptr;
          for (unsigned j = i; j < hi; ++j) {
            if (lanes[j].state == TK_SIMD && lanes[j].resolver == r && lanes[j].line == line) {
              active[j - lo] = &lanes[j];
            }
          }
          r(active);
          for (unsigned j = 0; j < kSimdWidth; ++j) {
            if (active[j]) active[j]->state = TK_READY;
          }
        }
        if (!any) break;
      }
    }
    unsigned at_barrier = 0, done = 0;
    for (unsigned i = 0; i < n; ++i) {
      at_barrier += lanes[i].state == TK_BARRIER;
      done += lanes[i].state == TK_DONE;
    }
    if (at_barrier == 0) {
      return true;
    }
    // Every thread must wait at the same barrier.
    int line = -1;
    bool same = true;
    for (unsigned i = 0; i < n; ++i) {
      if (lanes[i].state != TK_BARRIER) continue;
      if (line < 0) line = lanes[i].line;
      same = same && lanes[i].line == line;
    }
    if (done != 0 || !same) {
      std::string msg = "threadgroup_barrier not reached by every thread of threadgroup " +
          group_name(g) + " (" + std::to_string(n) + " threads): ";
      // Count threads per barrier line.
      std::vector<std::pair<int, unsigned>> counts;
      for (unsigned i = 0; i < n; ++i) {
        if (lanes[i].state != TK_BARRIER) continue;
        bool found = false;
        for (auto& c : counts) {
          if (c.first == lanes[i].line) {
            ++c.second;
            found = true;
          }
        }
        if (!found) counts.push_back({lanes[i].line, 1u});
      }
      for (auto& c : counts) {
        msg += std::to_string(c.second) + " wait at " + source_line(S.launch, c.first) + "; ";
      }
      msg += std::to_string(done) + " have returned";
      unsigned first_done = n;
      for (unsigned i = 0; i < n && first_done == n; ++i) {
        if (lanes[i].state == TK_DONE) first_done = i;
      }
      if (first_done < n) {
        msg += " (first: thread_index_in_threadgroup " + std::to_string(first_done) + ")";
      }
      msg += ". On a GPU this is undefined behaviour (a hang or wrong results).";
      S.fail(msg);
      return false;
    }
    for (unsigned i = 0; i < n; ++i) lanes[i].state = TK_READY;
  }
}

void run_group_direct(Worker* w, const unsigned* g) {
  Shared& S = *w->shared;
  const unsigned n = setup_group(S, g, w->lanes, w);
  const tk_launch* L = S.launch;
  for (unsigned i = 0; i < n; ++i) {
    t_direct = &w->lanes[i].ids;
    L->fn(L->args, t_direct);
  }
  t_direct = nullptr;
}

void worker_loop(Shared* S) {
  std::unique_ptr<Worker> owner(new Worker);
  Worker& w = *owner;
  w.shared = S;
  std::vector<tk_lane> lanes(kMaxThreadsPerGroup);
  w.lanes = lanes.data();
  const bool sync = S->launch->has_sync != 0;
  if (sync) w.arena = acquire_arena(S->launch->stack_bytes);
  t_worker = &w;
  for (;;) {
    if (S->failed.load(std::memory_order_relaxed)) break;
    unsigned long long idx = S->next.fetch_add(1);
    if (idx >= S->n_groups) break;
    unsigned g[3];
    g[0] = static_cast<unsigned>(idx % S->groups[0]);
    g[1] = static_cast<unsigned>((idx / S->groups[0]) % S->groups[1]);
    g[2] = static_cast<unsigned>(idx / (static_cast<unsigned long long>(S->groups[0]) * S->groups[1]));
    w.begin_group();
    if (sync) {
      if (!run_group_fibers(&w, g)) break;
    } else {
      run_group_direct(&w, g);
    }
  }
  t_worker = nullptr;
  if (sync) release_arena(w.arena);
}

}  // namespace

extern "C" {

int tk_run(tk_launch* L) {
  install_crash_handlers();
  Shared S;
  S.launch = L;
  unsigned long long total = 1;
  for (int d = 0; d < 3; ++d) {
    if (L->grid[d] == 0) return 0;
    if (L->threadgroup[d] == 0 || L->threadgroup[d] > L->grid[d]) {
      L->threadgroup[d] = L->threadgroup[d] == 0 ? 1 : L->grid[d];
    }
    S.groups[d] = (L->grid[d] + L->threadgroup[d] - 1) / L->threadgroup[d];
    total *= S.groups[d];
  }
  if (static_cast<unsigned long long>(L->threadgroup[0]) * L->threadgroup[1] *
          L->threadgroup[2] > kMaxThreadsPerGroup) {
    std::snprintf(L->error, L->error_size, "threadgroup larger than %u threads",
                  kMaxThreadsPerGroup);
    return 1;
  }
  S.n_groups = total;
  unsigned long long threads = static_cast<unsigned long long>(L->grid[0]) *
      L->grid[1] * L->grid[2];
  int workers = L->workers < 1 ? 1 : L->workers;
  if (threads < 8192) workers = 1;
  if (static_cast<unsigned long long>(workers) > total) workers = static_cast<int>(total);
  std::vector<std::thread> pool;
  for (int i = 1; i < workers; ++i) pool.emplace_back(worker_loop, &S);
  worker_loop(&S);
  for (auto& t : pool) t.join();
  if (S.failed.load()) {
    std::snprintf(L->error, L->error_size, "%s", S.error.c_str());
    return 1;
  }
  return 0;
}

tk_lane* tk_rt_simd(tk_resolver resolver, const void* in, unsigned size, unsigned arg, int line) {
  tk_lane* lane = t_current;
  if (!lane) {
    std::fprintf(stderr,
                 "talkie_kernels emulator: simdgroup operation outside a fiber "
                 "(the source-scan missed a sync point)\n");
    std::abort();
  }
  if (size > sizeof(lane->in)) size = sizeof(lane->in);
  std::memcpy(lane->in, in, size);
  lane->resolver = resolver;
  lane->arg = arg;
  lane->line = line;
  lane->state = TK_SIMD;
  Worker* w = static_cast<Worker*>(lane->worker);
  fiber_switch(&lane->sp, w->sched_sp);
  return lane;
}

void tk_rt_barrier(int line) {
  tk_lane* lane = t_current;
  if (!lane) {
    std::fprintf(stderr,
                 "talkie_kernels emulator: barrier outside a fiber (the "
                 "source-scan missed a sync point)\n");
    std::abort();
  }
  lane->line = line;
  lane->state = TK_BARRIER;
  Worker* w = static_cast<Worker*>(lane->worker);
  fiber_switch(&lane->sp, w->sched_sp);
}

void* tk_rt_threadgroup_alloc(unsigned site, unsigned long size, unsigned long align) {
  Worker* w = t_worker;
  for (const auto& entry : w->tg_sites) {
    if (entry.first == site) return w->tg_memory + entry.second;
  }
  size_t offset = (w->tg_used + align - 1) / align * align;
  if (offset + size > kThreadgroupMemory) {
    std::string msg = "threadgroup memory exceeds Metal's limit of " +
        std::to_string(kThreadgroupMemory) + " bytes (" + std::to_string(offset + size) +
        " requested)";
    if (t_current) tk_rt_fail(msg.c_str());
    // A plain call (no fibers): record the failure, hand out scratch memory
    // and let the launch stop before the next threadgroup.
    w->shared->fail(msg);
    static thread_local std::vector<unsigned char> scratch;
    scratch.assign(size + align, 0xFF);
    uintptr_t p = reinterpret_cast<uintptr_t>(scratch.data());
    return reinterpret_cast<void*>((p + align - 1) / align * align);
  }
  std::memset(w->tg_memory + offset, 0xFF, size);
  w->tg_used = offset + size;
  w->tg_sites.push_back({site, offset});
  return w->tg_memory + offset;
}

void tk_rt_fail(const char* message) {
  tk_lane* lane = t_current;
  if (!lane) {
    std::fprintf(stderr, "talkie_kernels emulator: %s\n", message);
    std::abort();
  }
  Worker* w = static_cast<Worker*>(lane->worker);
  w->shared->fail(message);
  lane->state = TK_DONE;
  fiber_switch(&lane->sp, w->sched_sp);
  __builtin_unreachable();
}

}  // extern "C"
