// Header of the RoPE kernels talkie_rope and talkie_rope_qk_norm.
//
// One simdgroup per (b, l) and run of HEADS heads; lane j holds the rotation
// pairs (i, i + D/2) for i = j + 32 t, t < P, so a rotation never leaves its
// lane.

// cos and sin of theta = pos * inv_freq, pos an exact integer in fp32 and
// inv_freq = f_hi + f_lo (an fp32 pair holding the float64 value).
// 1. theta = p + e exactly enough: p = fl(pos * f_hi), e = (pos * f_hi - p) by
//    fma, plus pos * f_lo.
// 2. Cody-Waite reduction by k = rint(p / 2pi), 2pi = P1 + P2 + P3 (three fp32
//    parts whose sum is 2pi to ~2^-72; tests/test_metal.py derives them):
//    p - k * P1 is exact (|k| < 2^22, p and k * P1 share the grid of P1's ulp);
//    the small terms go into t.
// 3. a + a_lo = r + t by two-sum; sin/cos(a + a_lo) to first order in a_lo.
// The reduced angle is correct to ~1e-8 for |pos| < 2^24, where plain fp32
// (pos * inv_freq rounded) is off by up to ulp(theta) / 2, e.g. 2e-4 at 5000.
// Should a compiler reassociate the two-sum (fast math), a_lo becomes 0 and
// the angle is still within ulp(a) / 2.
inline float2 talkie_rope_cos_sin(float pos, float f_hi, float f_lo) {
  const float P1 = 6.283185482e+00f;
  const float P2 = -1.748455531e-07f;
  const float P3 = -7.105427358e-15f;
  const float INV_2PI = 1.591549367e-01f;
  const float p = pos * f_hi;
  const float e = metal::fma(pos, f_hi, -p) + pos * f_lo;
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
// position pos, (1, 0) past D/2; computed once for all the heads of a run
// (the angle does not depend on h). inv_freq is the (D,) table: D/2 hi parts,
// then the lo parts. Its type is a template parameter because MLX passes
// arrays of fewer than 8 elements in constant memory, others in device memory.
template <int P, typename Table>
inline void talkie_rope_lane_cos_sin(
    thread float* cos_t,
    thread float* sin_t,
    uint lane,
    int half_d,
    float pos,
    Table inv_freq) {
  for (int t = 0; t < P; t++) {
    const int i = lane + 32 * t;
    const float2 cs = i < half_d
        ? talkie_rope_cos_sin(pos, inv_freq[i], inv_freq[half_d + i])
        : float2(1.0f, 0.0f);
    cos_t[t] = cs.x;
    sin_t[t] = cs.y;
  }
}
