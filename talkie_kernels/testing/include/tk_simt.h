// ABI between the SIMT runtime (simt_runtime.cpp, compiled once) and each
// emulated kernel's translation unit. Plain C layout, no standard headers:
// kernel units are compiled with -nostdinc.
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

// Every thread-position attribute a kernel may ask for.
typedef struct tk_ids {
  unsigned thread_position_in_grid[3];
  unsigned threads_per_grid[3];
  unsigned thread_position_in_threadgroup[3];
  unsigned threads_per_threadgroup[3];
  unsigned dispatch_threads_per_threadgroup[3];
  unsigned threadgroup_position_in_grid[3];
  unsigned threadgroups_per_grid[3];
  unsigned thread_index_in_threadgroup;
  unsigned thread_index_in_simdgroup;
  unsigned simdgroup_index_in_threadgroup;
  unsigned simdgroups_per_threadgroup;
  unsigned thread_index_in_quadgroup;
  unsigned quadgroup_index_in_threadgroup;
  unsigned quadgroups_per_threadgroup;
} tk_ids;

enum { TK_READY = 0, TK_SIMD = 1, TK_BARRIER = 2, TK_DONE = 3 };

struct tk_lane;
// Computes a simdgroup operation: `lanes` has 32 entries, the lanes taking
// part (same operation, same element type) or null. Reads `in`/`arg`, writes `out`.
typedef void (*tk_resolver)(struct tk_lane* const* lanes);

// One GPU thread: a fiber with its saved context and its simd-op mailbox.
typedef struct tk_lane {
  unsigned char in[64] __attribute__((aligned(16)));
  unsigned char out[64] __attribute__((aligned(16)));
  tk_resolver resolver;
  unsigned arg;
  int state;
  int line;  // generated-source line of the barrier or simd operation
  unsigned lane_id;
  tk_ids ids;
  void* sp;  // saved stack pointer (or ucontext*) while switched out
  void* worker;
} tk_lane;

typedef void (*tk_thread_fn)(void* const* args, const tk_ids* ids);

typedef struct tk_launch {
  const char* name;  // kernel name, for crash reports
  unsigned grid[3];
  unsigned threadgroup[3];
  int has_sync;   // 0: no barrier/simd op in the source -> plain calls, no fibers
  int workers;    // OS threads sharing the threadgroups
  unsigned long stack_bytes;  // per fiber
  tk_thread_fn fn;
  void* const* args;
  char* error;    // out: message when tk_run returns nonzero
  int error_size;
  const char* const* lines;  // generated source lines, for error messages
  int n_lines;
} tk_launch;

int tk_run(tk_launch* launch);
// Called from kernel code on the current fiber.
tk_lane* tk_rt_simd(tk_resolver resolver, const void* in, unsigned size, unsigned arg, int line);
void tk_rt_barrier(int line);
void tk_rt_fail(const char* message);
// Threadgroup memory: the block of declaration `site` for the running
// threadgroup (allocated and poisoned by the first thread that asks).
void* tk_rt_threadgroup_alloc(unsigned site, unsigned long size, unsigned long align);

#ifdef __cplusplus
}
#endif
