  // Body of talkie_rms_norm (header: rms_norm.header.metal).
  // Inputs: x (..., D) row-contiguous; eps fp32 scalar. Output: out, x's shape.
  // Template: T output type; N_READS elements per thread held in registers,
  // or LOOPED: any row length, read twice. Grid (n_threads * rows): one
  // threadgroup of n_threads (a multiple of 32) per row.
  threadgroup float partials[32];
  const int D = x_shape[x_ndim - 1];
  const int lid = thread_position_in_threadgroup.x;
  const int n_threads = threads_per_threadgroup.x;
  const int64_t row = int64_t(threadgroup_position_in_grid.x) * D;

  // 1. Sum of squares in fp32.
  float v[N_READS];
  float ss = 0.0f;
  if (LOOPED) {
    for (int i = lid; i < D; i += n_threads) {
      const float a = static_cast<float>(x[row + i]);
      ss += a * a;
    }
  } else {
    for (int r = 0; r < N_READS; r++) {
      const int i = lid + r * n_threads;
      v[r] = i < D ? static_cast<float>(x[row + i]) : 0.0f;
      ss += v[r] * v[r];
    }
  }
  // 2. scale = rsqrt(mean + eps), 3. y = x * scale rounded once.
  const float scale = metal::precise::rsqrt(
      talkie_threadgroup_sum(
          ss, partials, simdgroup_index_in_threadgroup,
          thread_index_in_simdgroup, n_threads / 32) / D + eps);
  if (LOOPED) {
    for (int i = lid; i < D; i += n_threads) {
      out[row + i] = static_cast<T>(static_cast<float>(x[row + i]) * scale);
    }
  } else {
    for (int r = 0; r < N_READS; r++) {
      const int i = lid + r * n_threads;
      if (i < D) {
        out[row + i] = static_cast<T>(v[r] * scale);
      }
    }
  }
