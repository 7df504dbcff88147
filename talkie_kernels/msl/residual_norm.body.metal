  // Body of talkie_residual_norm (header: rms_norm.header.metal).
  // Inputs: x, y, skip (..., D) row-contiguous; gain, skip_gain (1,); eps fp32
  // scalar. Outputs: x_new, normed, x's shape.
  // Template: T output type; HAS_SKIP adds skip_gain * skip (otherwise skip
  // and skip_gain are unread placeholders); N_READS / LOOPED as in rms_norm.
  // Grid (n_threads * rows): one threadgroup of n_threads per row.
  threadgroup float partials[32];
  const int D = x_shape[x_ndim - 1];
  const int lid = thread_position_in_threadgroup.x;
  const int n_threads = threads_per_threadgroup.x;
  const int64_t row = int64_t(threadgroup_position_in_grid.x) * D;

  const float g = static_cast<float>(gain[0]);
  const float sg = HAS_SKIP ? static_cast<float>(skip_gain[0]) : 0.0f;
  // 1. x_new = x + g*y (+ sg*skip) in fp32, rounded once to T; the norm reads
  //    the rounded value, as the next layer of the plain model does.
  float v[N_READS];
  float ss = 0.0f;
  if (LOOPED) {
    for (int i = lid; i < D; i += n_threads) {
      float a = metal::fma(g, static_cast<float>(y[row + i]), static_cast<float>(x[row + i]));
      if (HAS_SKIP) {
        a = metal::fma(sg, static_cast<float>(skip[row + i]), a);
      }
      const T stored = static_cast<T>(a);
      x_new[row + i] = stored;
      a = static_cast<float>(stored);
      ss += a * a;
    }
  } else {
    for (int r = 0; r < N_READS; r++) {
      const int i = lid + r * n_threads;
      v[r] = 0.0f;
      if (i < D) {
        float a = metal::fma(g, static_cast<float>(y[row + i]), static_cast<float>(x[row + i]));
        if (HAS_SKIP) {
          a = metal::fma(sg, static_cast<float>(skip[row + i]), a);
        }
        const T stored = static_cast<T>(a);
        x_new[row + i] = stored;
        v[r] = static_cast<float>(stored);
      }
      ss += v[r] * v[r];
    }
  }
  // 2. scale = rsqrt(mean + eps), 3. normed = x_new * scale rounded once.
  const float scale = metal::precise::rsqrt(
      talkie_threadgroup_sum(
          ss, partials, simdgroup_index_in_threadgroup,
          thread_index_in_simdgroup, n_threads / 32) / D + eps);
  if (LOOPED) {
    // Each thread rereads the elements it wrote itself.
    for (int i = lid; i < D; i += n_threads) {
      normed[row + i] = static_cast<T>(static_cast<float>(x_new[row + i]) * scale);
    }
  } else {
    for (int r = 0; r < N_READS; r++) {
      const int i = lid + r * n_threads;
      if (i < D) {
        normed[row + i] = static_cast<T>(v[r] * scale);
      }
    }
  }
