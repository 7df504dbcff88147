// Header of the norm kernels talkie_rms_norm and talkie_residual_norm.

// Sum of v over the threadgroup: simd_sum, one partial per simdgroup in
// threadgroup memory, simd_sum of the partials (every simdgroup does the last
// step itself, so a single barrier suffices). Call once per kernel.
inline float talkie_threadgroup_sum(
    float v,
    threadgroup float* partials,
    uint simd_group,
    uint simd_lane,
    uint n_simd_groups) {
  v = simd_sum(v);
  if (simd_lane == 0) {
    partials[simd_group] = v;
  }
  threadgroup_barrier(mem_flags::mem_threadgroup);
  return simd_sum(simd_lane < n_simd_groups ? partials[simd_lane] : 0.0f);
}
