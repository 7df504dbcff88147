// Header of the RoPE kernels talkie_rope and talkie_rope_qk_norm.
//
// One simdgroup per (b, l) and run of HEADS heads; lane j holds the rotation
// pairs (i, i + D/2) for i = j + 32 t, t < P, so a rotation never leaves its
// lane.

// The position offset + l (offset int32, l >= 0; the sum may pass 2^31 - 1)
// as pos = hi * 2^16 + lo with 0 <= lo < 2^16 and -2^15 <= hi <= 2^15 +
// l / 2^16: both exact in fp32, which pos itself is not past 2^24. 32-bit
// integer arithmetic only: offset + 2^31 is offset's bits with the top one
// flipped, so no sum overflows.
inline float2 talkie_rope_position(int offset, int l) {
  const uint biased = uint(offset) ^ 0x80000000u;
  const uint lo = (biased & 0xFFFFu) + (uint(l) & 0xFFFFu);
  const int hi = int(biased >> 16) - 32768 + (l >> 16) + int(lo >> 16);
  return float2(float(hi), float(lo & 0xFFFFu));
}

// cos and sin of theta = pos * inv_freq, pos = hi * 2^16 + lo as above, from
// two fp32 pairs computed on the host from the float64 inv_freq (metal.py's
// _inv_freq_table): f = f_hi + f_lo = inv_freq, and g = g_hi + g_lo =
// 2^16 * inv_freq reduced mod 2pi into [-pi, pi] (each pair to ~2^-48
// relative). As hi is an integer, theta = hi * g + lo * f (mod 2pi), whose
// products stay below 2^17 (|hi| <= 2^15, lo < 2^16, f <= 1 for base >= 1)
// whatever the position.
// 1. theta = p + e, p the fp32 sum of the two leading products and e the
//    rest: each product's rounding error by fma, the sum's by two-sum, and
//    the products with the lo parts (|p| < 2^18, |e| < 2^-5).
// 2. Cody-Waite reduction by k = rint(p / 2pi), 2pi = P1 + P2 + P3 (three fp32
//    parts whose sum is 2pi to ~2^-72; tests/test_metal.py derives them):
//    p - k * P1 is exact (|k| < 2^22, p and k * P1 share the grid of P1's ulp);
//    the small terms go into t.
// 3. a + a_lo = r + t by two-sum; sin/cos(a + a_lo) to first order in a_lo.
// The reduced angle is within ~2e-9 of pos * inv_freq (exact product, reduced
// exactly) at every position, 2^31 included; fp32 cos/sin round by 3e-8.
// Plain fp32 (pos * inv_freq rounded) is off by up to ulp(theta) / 2, e.g.
// 2e-4 at 5000. The error-free steps need IEEE fp32 arithmetic as written:
// no reassociation (MLX compiles kernels with fast math off); an fma
// contracted from a product and a sum in one expression is harmless.
inline float2 talkie_rope_cos_sin(float2 pos, float f_hi, float f_lo, float g_hi, float g_lo) {
  const float P1 = 6.283185482e+00f;
  const float P2 = -1.748455531e-07f;
  const float P3 = -7.105427358e-15f;
  const float INV_2PI = 1.591549367e-01f;
  const float hi = pos.x;
  const float lo = pos.y;
  const float p_hi = hi * g_hi;
  const float e_hi = metal::fma(hi, g_hi, -p_hi);
  const float p_lo = lo * f_hi;
  const float e_lo = metal::fma(lo, f_hi, -p_lo);
  const float p = p_hi + p_lo;
  const float p_part = p - p_hi;
  const float p_err = (p_hi - (p - p_part)) + (p_lo - p_part);
  const float e = metal::fma(hi, g_lo, metal::fma(lo, f_lo, p_err + e_hi + e_lo));
  const float k = metal::rint(p * INV_2PI);
  const float r = metal::fma(-k, P1, p);
  const float t = metal::fma(-k, P3, metal::fma(-k, P2, e));
  const float a = r + t;
  const float t_part = a - r;
  const float a_lo = (r - (a - t_part)) + (t - t_part);
  const float s = metal::precise::sin(a);
  const float c = metal::precise::cos(a);
  return float2(c - a_lo * s, s + a_lo * c);
}

// The rows of the simdgroup in grid row `run` (of B * L * ceil(H / heads)):
// batch b, position l and heads [h_begin, h_end), the runs of heads fastest.
struct TalkieRopeRows {
  int b;
  int l;
  int h_begin;
  int h_end;
};

inline TalkieRopeRows talkie_rope_rows(uint run, int H, int L, int heads) {
  const int n_runs = (H + heads - 1) / heads;
  TalkieRopeRows rows;
  rows.h_begin = (run % n_runs) * heads;
  rows.h_end = rows.h_begin + heads < H ? rows.h_begin + heads : H;
  rows.l = (run / n_runs) % L;
  rows.b = run / (n_runs * L);
  return rows;
}

// cos_t[t], sin_t[t]: cos and sin of the lane's pair i = lane + 32 t at
// position offset + l, (1, 0) past D/2; computed once for all the heads of a
// run (the angle does not depend on h). inv_freq is the (2D,) table of four
// runs of D/2: f_hi, f_lo, g_hi, g_lo (see talkie_rope_cos_sin). Its type is a
// template parameter because MLX passes arrays of fewer than 8 elements in
// constant memory, others in device memory.
template <int P, typename Table>
inline void talkie_rope_lane_cos_sin(
    thread float* cos_t,
    thread float* sin_t,
    uint lane,
    int half_d,
    int offset,
    int l,
    Table inv_freq) {
  const float2 pos = talkie_rope_position(offset, l);
  for (int t = 0; t < P; t++) {
    const int i = lane + 32 * t;
    const float2 cs = i < half_d
        ? talkie_rope_cos_sin(pos, inv_freq[i], inv_freq[half_d + i],
                              inv_freq[2 * half_d + i], inv_freq[3 * half_d + i])
        : float2(1.0f, 0.0f);
    cos_t[t] = cs.x;
    sin_t[t] = cs.y;
  }
}
