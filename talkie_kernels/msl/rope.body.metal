  // Body of talkie_rope (header: rope.header.metal).
  // Inputs: x (B, H, L, D) read through its strides; offset (1,) or (B,)
  // int32; inv_freq (2D,) fp32. Output: out (B, H, L, D), row-contiguous.
  // Template: T output type; P = ceil(D / 64) rotation pairs per lane; HEADS
  // heads per simdgroup. Grid (32, B * L * ceil(H / HEADS)).
  const uint lane = thread_position_in_grid.x;
  const int H = x_shape[1];
  const int L = x_shape[2];
  const int D = x_shape[3];
  const int half_d = D / 2;
  const TalkieRopeRows rows = talkie_rope_rows(thread_position_in_grid.y, H, L, HEADS);
  const int b = rows.b;
  const int l = rows.l;
  const int off = offset[(offset_shape[0] == 1 ? 0 : b) * offset_strides[0]];
  float cos_t[P], sin_t[P];
  talkie_rope_lane_cos_sin<P>(cos_t, sin_t, lane, half_d, off, l, inv_freq);

  for (int h = rows.h_begin; h < rows.h_end; h++) {
    const int64_t x_row = b * x_strides[0] + h * x_strides[1] + l * x_strides[2];
    const int64_t x_d = x_strides[3];
    const int64_t out_row = ((int64_t(b) * H + h) * L + l) * D;
    for (int t = 0; t < P; t++) {
      const int i = lane + 32 * t;
      if (i < half_d) {
        const float x1 = static_cast<float>(x[x_row + i * x_d]);
        const float x2 = static_cast<float>(x[x_row + (i + half_d) * x_d]);
        out[out_row + i] = static_cast<T>(x1 * cos_t[t] + x2 * sin_t[t]);
        out[out_row + i + half_d] = static_cast<T>(x2 * cos_t[t] - x1 * sin_t[t]);
      }
    }
  }
