  // Body of talkie_rope_qk_norm (header: rope.header.metal).
  // Inputs: q, k (B, H, L, D) read through their strides; head_gain (H,);
  // offset (1,) or (B,) int32; inv_freq (2D,) fp32; eps fp32 scalar.
  // Outputs: q_out, k_out (B, H, L, D), row-contiguous.
  // Template: T output type; P = ceil(D / 64) rotation pairs per lane; HEADS
  // heads per simdgroup. Grid (32, B * L * ceil(H / HEADS)): one simdgroup
  // per (b, l) and run of HEADS heads, doing those rows of q and of k.
  const uint lane = thread_position_in_grid.x;
  const int H = q_shape[1];
  const int L = q_shape[2];
  const int D = q_shape[3];
  const int half_d = D / 2;
  const TalkieRopeRows rows = talkie_rope_rows(thread_position_in_grid.y, H, L, HEADS);
  const int b = rows.b;
  const int l = rows.l;
  const int off = offset[(offset_shape[0] == 1 ? 0 : b) * offset_strides[0]];
  float cos_t[P], sin_t[P];
  talkie_rope_lane_cos_sin<P>(cos_t, sin_t, lane, half_d, off, l, inv_freq);

  for (int h = rows.h_begin; h < rows.h_end; h++) {
    const int64_t q_row = b * q_strides[0] + h * q_strides[1] + l * q_strides[2];
    const int64_t k_row = b * k_strides[0] + h * k_strides[1] + l * k_strides[2];
    const int64_t q_d = q_strides[3];
    const int64_t k_d = k_strides[3];
    const int64_t out_row = ((int64_t(b) * H + h) * L + l) * D;

    // 1. Rotate in fp32 (inverse rotation: y1 = x1 c + x2 s, y2 = x2 c - x1 s).
    float q1[P], q2[P], k1[P], k2[P];
    float q_ss = 0.0f;
    float k_ss = 0.0f;
    for (int t = 0; t < P; t++) {
      const int i = lane + 32 * t;
      q1[t] = q2[t] = k1[t] = k2[t] = 0.0f;
      if (i < half_d) {
        const float qa = static_cast<float>(q[q_row + i * q_d]);
        const float qb = static_cast<float>(q[q_row + (i + half_d) * q_d]);
        const float ka = static_cast<float>(k[k_row + i * k_d]);
        const float kb = static_cast<float>(k[k_row + (i + half_d) * k_d]);
        q1[t] = qa * cos_t[t] + qb * sin_t[t];
        q2[t] = qb * cos_t[t] - qa * sin_t[t];
        k1[t] = ka * cos_t[t] + kb * sin_t[t];
        k2[t] = kb * cos_t[t] - ka * sin_t[t];
        q_ss += q1[t] * q1[t] + q2[t] * q2[t];
        k_ss += k1[t] * k1[t] + k2[t] * k2[t];
      }
    }

    // 2. RMS over D of the fp32 rotated rows: the simdgroup holds the whole
    //    row, so simd_sum alone reduces it (no threadgroup memory, no barrier).
    q_ss = simd_sum(q_ss);
    k_ss = simd_sum(k_ss);
    // 3. The head gain folds into q's scale; one rounding per output.
    const float q_scale = metal::precise::rsqrt(q_ss / D + eps) *
        static_cast<float>(head_gain[h * head_gain_strides[0]]);
    const float k_scale = metal::precise::rsqrt(k_ss / D + eps);
    for (int t = 0; t < P; t++) {
      const int i = lane + 32 * t;
      if (i < half_d) {
        q_out[out_row + i] = static_cast<T>(q1[t] * q_scale);
        q_out[out_row + i + half_d] = static_cast<T>(q2[t] * q_scale);
        k_out[out_row + i] = static_cast<T>(k1[t] * k_scale);
        k_out[out_row + i + half_d] = static_cast<T>(k2[t] * k_scale);
      }
    }
  }
