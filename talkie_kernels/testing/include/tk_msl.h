// Metal Shading Language on C++17 for the talkie_kernels emulator.
// Compiled with -nostdinc: no C or C++ library headers, only compiler builtins.
#pragma once
#include "tk_simt.h"

// ---------------------------------------------------------------------------
// Scalar types
// ---------------------------------------------------------------------------
typedef __INT8_TYPE__ int8_t;
typedef __INT16_TYPE__ int16_t;
typedef __INT32_TYPE__ int32_t;
typedef __INT64_TYPE__ int64_t;
typedef __UINT8_TYPE__ uint8_t;
typedef __UINT16_TYPE__ uint16_t;
typedef __UINT32_TYPE__ uint32_t;
typedef __UINT64_TYPE__ uint64_t;
typedef __SIZE_TYPE__ size_t;
typedef __PTRDIFF_TYPE__ ptrdiff_t;
typedef unsigned char uchar;
typedef unsigned short ushort;
typedef unsigned int uint;
typedef unsigned long ulong;

// Address spaces are plain memory here. `threadgroup` variable declarations
// are rewritten by the generator into references to the running
// threadgroup's arena (tk_rt_threadgroup_alloc), so only pointer and
// reference uses reach this macro.
#define device
#define constant
#define thread
#define threadgroup
#define ray_data
#define object_data
#define METAL_FUNC inline

namespace tk {
template <class T> struct type_identity { using type = T; };
template <class T> using identity_t = typename type_identity<T>::type;
template <class T> struct remove_cvref { using type = T; };
template <class T> struct remove_cvref<const T> { using type = T; };
template <class T> struct remove_cvref<T&> { using type = T; };
template <class T> struct remove_cvref<const T&> { using type = T; };
template <bool B, class T = void> struct enable_if {};
template <class T> struct enable_if<true, T> { using type = T; };
template <bool B, class T = void> using enable_if_t = typename enable_if<B, T>::type;
template <class A, class B> struct is_same { static constexpr bool value = false; };
template <class A> struct is_same<A, A> { static constexpr bool value = true; };
template <bool B, class T, class F> struct conditional { using type = T; };
template <class T, class F> struct conditional<false, T, F> { using type = F; };
template <class T> struct is_integral { static constexpr bool value = false; };
#define TK_INTEGRAL(T) template <> struct is_integral<T> { static constexpr bool value = true; };
TK_INTEGRAL(bool) TK_INTEGRAL(char) TK_INTEGRAL(signed char) TK_INTEGRAL(unsigned char)
TK_INTEGRAL(short) TK_INTEGRAL(unsigned short) TK_INTEGRAL(int) TK_INTEGRAL(unsigned int)
TK_INTEGRAL(long) TK_INTEGRAL(unsigned long) TK_INTEGRAL(long long) TK_INTEGRAL(unsigned long long)
#undef TK_INTEGRAL
template <class T> constexpr bool is_builtin_arith = is_integral<T>::value || is_same<T, float>::value;

inline uint32_t f2u(float f) { return __builtin_bit_cast(uint32_t, f); }
inline float u2f(uint32_t u) { return __builtin_bit_cast(float, u); }

// IEEE binary16 <-> binary32, round to nearest even.
inline uint16_t f32_to_f16(float f) {
  uint32_t x = f2u(f);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) {  // inf or nan
    return static_cast<uint16_t>(sign | 0x7C00u | (ax > 0x7F800000u ? 0x200u | ((ax >> 13) & 0x3FFu) : 0u));
  }
  if (ax >= 0x477FF000u) return static_cast<uint16_t>(sign | 0x7C00u);  // rounds to inf
  if (ax < 0x38800000u) {  // subnormal half (or zero)
    // value * 2^24 rounded to an integer = the subnormal mantissa.
    float v = u2f(ax) * 16777216.0f;
    // round-to-nearest-even via the float adder
    float r = (v + 8388608.0f) - 8388608.0f;
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(r));
  }
  uint32_t mant = ax + 0xC8000FFFu + ((ax >> 13) & 1u);  // rebias exponent (-112<<23) and round
  return static_cast<uint16_t>(sign | (mant >> 13));
}
inline float f16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t e = (h >> 10) & 0x1Fu;
  uint32_t m = h & 0x3FFu;
  if (e == 0) {
    float v = static_cast<float>(m) * 5.9604644775390625e-08f;  // 2^-24
    return u2f(f2u(v) | sign);
  }
  if (e == 31) return u2f(sign | 0x7F800000u | (m << 13));
  return u2f(sign | ((e + 112u) << 23) | (m << 13));
}
inline uint16_t f32_to_bf16(float f) {
  uint32_t x = f2u(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);
  return static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16);
}
inline float bf16_to_f32(uint16_t b) { return u2f(static_cast<uint32_t>(b) << 16); }
}  // namespace tk

struct bfloat16_t;
// half: 16-bit storage; each operation computes in fp32 and rounds once,
// which is exact IEEE half arithmetic for + - * / (fp32 has > 2·11+2 bits).
struct half {
  uint16_t bits_;
  half() = default;
  constexpr half(const half&) = default;
  half(float f) : bits_(tk::f32_to_f16(f)) {}
  template <class I, tk::enable_if_t<tk::is_integral<I>::value, int> = 0>
  half(I i) : bits_(tk::f32_to_f16(static_cast<float>(i))) {}
  explicit half(bfloat16_t b);
  operator float() const { return tk::f16_to_f32(bits_); }
  static half from_bits(uint16_t b) { half h; h.bits_ = b; return h; }
};
struct bfloat16_t {
  uint16_t bits_;
  bfloat16_t() = default;
  constexpr bfloat16_t(const bfloat16_t&) = default;
  bfloat16_t(float f) : bits_(tk::f32_to_bf16(f)) {}
  template <class I, tk::enable_if_t<tk::is_integral<I>::value, int> = 0>
  bfloat16_t(I i) : bits_(tk::f32_to_bf16(static_cast<float>(i))) {}
  explicit bfloat16_t(half h) : bits_(tk::f32_to_bf16(static_cast<float>(h))) {}
  operator float() const { return tk::bf16_to_f32(bits_); }
  static bfloat16_t from_bits(uint16_t b) { bfloat16_t h; h.bits_ = b; return h; }
};
inline half::half(bfloat16_t b) : bits_(tk::f32_to_f16(static_cast<float>(b))) {}
typedef bfloat16_t bfloat;

namespace tk {
template <class T> constexpr bool is_lowp = is_same<T, half>::value || is_same<T, bfloat16_t>::value;
template <class T> constexpr bool is_scalar = is_builtin_arith<T> || is_lowp<T>;
// Result type of a binary operation where at least one side is half/bfloat16:
// same type -> that type; with float -> float; half with an integer -> half;
// bfloat16 with an integer -> float (as MLX's bfloat16 struct); mixed -> float.
template <class A, class B, class = void> struct lowp_result {};
template <class A, class B>
struct lowp_result<A, B, enable_if_t<(is_lowp<A> || is_lowp<B>) && is_scalar<A> && is_scalar<B>>> {
  using type = typename conditional<
      is_same<A, B>::value, A,
      typename conditional<(is_same<A, half>::value && is_integral<B>::value) ||
                               (is_same<B, half>::value && is_integral<A>::value),
                           half, float>::type>::type;
};
template <class A, class B> using lowp_result_t = typename lowp_result<A, B>::type;
}  // namespace tk

#define TK_LOWP_BINOP(op)                                                     \
  template <class A, class B, class R = tk::lowp_result_t<A, B>>             \
  inline R operator op(A a, B b) {                                            \
    return R(static_cast<float>(a) op static_cast<float>(b));                 \
  }
TK_LOWP_BINOP(+) TK_LOWP_BINOP(-) TK_LOWP_BINOP(*) TK_LOWP_BINOP(/)
#undef TK_LOWP_BINOP
#define TK_LOWP_CMP(op)                                                       \
  template <class A, class B, class R = tk::lowp_result_t<A, B>>             \
  inline bool operator op(A a, B b) {                                         \
    return static_cast<float>(a) op static_cast<float>(b);                    \
  }
TK_LOWP_CMP(<) TK_LOWP_CMP(>) TK_LOWP_CMP(<=) TK_LOWP_CMP(>=) TK_LOWP_CMP(==) TK_LOWP_CMP(!=)
#undef TK_LOWP_CMP
#define TK_LOWP_ASSIGN(op)                                                    \
  template <class L, class B, tk::enable_if_t<tk::is_lowp<L> && tk::is_scalar<B>, int> = 0> \
  inline L& operator op##=(L& a, B b) {                                       \
    a = L(static_cast<float>(a) op static_cast<float>(b));                    \
    return a;                                                                 \
  }
TK_LOWP_ASSIGN(+) TK_LOWP_ASSIGN(-) TK_LOWP_ASSIGN(*) TK_LOWP_ASSIGN(/)
#undef TK_LOWP_ASSIGN
inline half operator-(half a) { return half::from_bits(static_cast<uint16_t>(a.bits_ ^ 0x8000u)); }
inline bfloat16_t operator-(bfloat16_t a) { return bfloat16_t::from_bits(static_cast<uint16_t>(a.bits_ ^ 0x8000u)); }
inline half operator+(half a) { return a; }
inline bfloat16_t operator+(bfloat16_t a) { return a; }
template <class L, tk::enable_if_t<tk::is_lowp<L>, int> = 0> inline L& operator++(L& a) { a = L(float(a) + 1.0f); return a; }
template <class L, tk::enable_if_t<tk::is_lowp<L>, int> = 0> inline L& operator--(L& a) { a = L(float(a) - 1.0f); return a; }

// ---------------------------------------------------------------------------
// Vectors: vec<T, N> with .x .y .z .w (.r .g .b .a), swizzles, arithmetic.
// vec<T, 3> occupies four elements, like Metal's float3.
// ---------------------------------------------------------------------------
template <class T, int N> struct vec;
template <class T, int S, int... I> struct swz;

namespace tk {
template <class X> struct vtraits { static constexpr int n = 0; using elem = X; };
template <class T, int N> struct vtraits<vec<T, N>> { static constexpr int n = N; using elem = T; };
template <class T, int S, int... I> struct vtraits<swz<T, S, I...>> {
  static constexpr int n = sizeof...(I);
  using elem = T;
};
template <class X> constexpr bool is_vec_like = vtraits<typename remove_cvref<X>::type>::n != 0;
template <class X> using velem = typename vtraits<typename remove_cvref<X>::type>::elem;
template <class X> constexpr int vsize = vtraits<typename remove_cvref<X>::type>::n;
template <class X, class = void> struct to_vec_t {};
template <class X> struct to_vec_t<X, enable_if_t<is_vec_like<X>>> { using type = vec<velem<X>, vsize<X>>; };
}  // namespace tk

template <class T, int S, int... I> struct swz {
  T d_[S];
  static constexpr int n = sizeof...(I);
  operator vec<T, sizeof...(I)>() const { return vec<T, sizeof...(I)>(d_[I]...); }
  swz& operator=(const vec<T, sizeof...(I)>& v) {
    int k = 0;
    ((d_[I] = v[k++]), ...);
    return *this;
  }
  swz& operator=(const swz& o) { return *this = vec<T, sizeof...(I)>(o); }
  template <class U, int S2, int... J>
  swz& operator=(const swz<U, S2, J...>& o) { return *this = vec<T, sizeof...(I)>(vec<U, sizeof...(J)>(o)); }
  T operator[](int i) const { const int idx[] = {I...}; return d_[idx[i]]; }
};

#define TK_VEC_COMMON(N)                                                      \
  using value_type = T;                                                       \
  vec() = default;                                                            \
  template <class U, tk::enable_if_t<tk::is_scalar<U>, int> = 0>            \
  vec(U s) { for (int i = 0; i < N; ++i) v_[i] = T(s); }                     \
  template <class U>                                                          \
  explicit vec(const vec<U, N>& o) { for (int i = 0; i < N; ++i) v_[i] = T(o[i]); } \
  vec(const vec& o) = default;                                                \
  vec& operator=(const vec& o) {                                              \
    for (int i = 0; i < SLOTS; ++i) v_[i] = o.v_[i];                          \
    return *this;                                                             \
  }                                                                           \
  template <class U, int S, int... I, tk::enable_if_t<sizeof...(I) == N, int> = 0> \
  vec(const swz<U, S, I...>& s) {                                             \
    const int idx[] = {I...};                                                 \
    for (int k = 0; k < N; ++k) v_[k] = T(s.d_[idx[k]]);                      \
  }                                                                           \
  T& operator[](int i) { return v_[i]; }                                      \
  const T& operator[](int i) const { return v_[i]; }

#define TK_S(name, ...) swz<T, SLOTS, __VA_ARGS__> name;

template <class T> struct vec<T, 2> {
  static constexpr int SLOTS = 2;
  union {
    T v_[2];
    struct { T x, y; };
    struct { T r, g; };
    TK_S(xy, 0, 1) TK_S(yx, 1, 0) TK_S(xx, 0, 0) TK_S(yy, 1, 1)
  };
  TK_VEC_COMMON(2)
  vec(T a, T b) { v_[0] = a; v_[1] = b; }
};
template <class T> struct vec<T, 3> {
  static constexpr int SLOTS = 4;
  union {
    T v_[4];
    struct { T x, y, z; };
    struct { T r, g, b; };
    TK_S(xy, 0, 1) TK_S(yx, 1, 0) TK_S(xz, 0, 2) TK_S(zx, 2, 0) TK_S(yz, 1, 2) TK_S(zy, 2, 1)
    TK_S(xyz, 0, 1, 2) TK_S(zyx, 2, 1, 0)
  };
  TK_VEC_COMMON(3)
  vec(T a, T b, T c) { v_[0] = a; v_[1] = b; v_[2] = c; }
  vec(const vec<T, 2>& a, T c) { v_[0] = a[0]; v_[1] = a[1]; v_[2] = c; }
  vec(T a, const vec<T, 2>& b) { v_[0] = a; v_[1] = b[0]; v_[2] = b[1]; }
};
template <class T> struct vec<T, 4> {
  static constexpr int SLOTS = 4;
  union {
    T v_[4];
    struct { T x, y, z, w; };
    struct { T r, g, b, a; };
    TK_S(xy, 0, 1) TK_S(yx, 1, 0) TK_S(xz, 0, 2) TK_S(zx, 2, 0) TK_S(xw, 0, 3) TK_S(wx, 3, 0)
    TK_S(yz, 1, 2) TK_S(zy, 2, 1) TK_S(yw, 1, 3) TK_S(wy, 3, 1) TK_S(zw, 2, 3) TK_S(wz, 3, 2)
    TK_S(xyz, 0, 1, 2) TK_S(yzw, 1, 2, 3) TK_S(zyx, 2, 1, 0) TK_S(wzyx, 3, 2, 1, 0)
    TK_S(xyzw, 0, 1, 2, 3)
  };
  TK_VEC_COMMON(4)
  vec(T a, T b, T c, T d) { v_[0] = a; v_[1] = b; v_[2] = c; v_[3] = d; }
  vec(const vec<T, 2>& a, const vec<T, 2>& b) { v_[0] = a[0]; v_[1] = a[1]; v_[2] = b[0]; v_[3] = b[1]; }
  vec(const vec<T, 2>& a, T c, T d) { v_[0] = a[0]; v_[1] = a[1]; v_[2] = c; v_[3] = d; }
  vec(T a, T b, const vec<T, 2>& c) { v_[0] = a; v_[1] = b; v_[2] = c[0]; v_[3] = c[1]; }
  vec(const vec<T, 3>& a, T d) { v_[0] = a[0]; v_[1] = a[1]; v_[2] = a[2]; v_[3] = d; }
  vec(T a, const vec<T, 3>& b) { v_[0] = a; v_[1] = b[0]; v_[2] = b[1]; v_[3] = b[2]; }
};
#undef TK_S
#undef TK_VEC_COMMON

namespace tk {
template <class X> inline auto vget(const X& x, int i) {
  if constexpr (is_vec_like<X>) { return x[i]; } else { (void)i; return x; }
}
template <class A, class B> constexpr int vn = vsize<A> ? vsize<A> : vsize<B>;
// Element type of a vector operation: the vector's element type (Metal
// converts a scalar operand to it).
template <class A, class B> using vres_elem =
    typename conditional<(vsize<A> != 0), velem<A>, velem<B>>::type;
template <class A, class B> constexpr bool vec_op_ok =
    (is_vec_like<A> || is_vec_like<B>) &&
    (is_vec_like<A> ? true : is_scalar<typename remove_cvref<A>::type>) &&
    (is_vec_like<B> ? true : is_scalar<typename remove_cvref<B>::type>) &&
    (!is_vec_like<A> || !is_vec_like<B> || vsize<A> == vsize<B>);
}  // namespace tk

#define TK_VEC_BINOP(op)                                                      \
  template <class A, class B, tk::enable_if_t<tk::vec_op_ok<A, B>, int> = 0> \
  inline auto operator op(const A& a, const B& b) {                           \
    using E = tk::vres_elem<A, B>;                                            \
    constexpr int N = tk::vn<A, B>;                                           \
    vec<E, N> r;                                                              \
    for (int i = 0; i < N; ++i) r[i] = E(E(tk::vget(a, i)) op E(tk::vget(b, i))); \
    return r;                                                                 \
  }                                                                           \
  template <class T, int N, class B, tk::enable_if_t<tk::vec_op_ok<vec<T, N>, B>, int> = 0> \
  inline vec<T, N>& operator op##=(vec<T, N>& a, const B& b) {                \
    for (int i = 0; i < N; ++i) a[i] = T(a[i] op T(tk::vget(b, i)));         \
    return a;                                                                 \
  }
TK_VEC_BINOP(+) TK_VEC_BINOP(-) TK_VEC_BINOP(*) TK_VEC_BINOP(/) TK_VEC_BINOP(%)
TK_VEC_BINOP(&) TK_VEC_BINOP(|) TK_VEC_BINOP(^) TK_VEC_BINOP(<<) TK_VEC_BINOP(>>)
#undef TK_VEC_BINOP
#define TK_VEC_CMP(op)                                                        \
  template <class A, class B, tk::enable_if_t<tk::vec_op_ok<A, B>, int> = 0> \
  inline auto operator op(const A& a, const B& b) {                           \
    using E = tk::vres_elem<A, B>;                                            \
    constexpr int N = tk::vn<A, B>;                                           \
    vec<bool, N> r;                                                           \
    for (int i = 0; i < N; ++i) r[i] = E(tk::vget(a, i)) op E(tk::vget(b, i)); \
    return r;                                                                 \
  }
TK_VEC_CMP(<) TK_VEC_CMP(>) TK_VEC_CMP(<=) TK_VEC_CMP(>=) TK_VEC_CMP(==) TK_VEC_CMP(!=)
TK_VEC_CMP(&&) TK_VEC_CMP(||)
#undef TK_VEC_CMP
template <class T, int N> inline vec<T, N> operator-(const vec<T, N>& a) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = -a[i];
  return r;
}
template <class T, int N> inline vec<T, N> operator+(const vec<T, N>& a) { return a; }
template <class T, int N> inline vec<bool, N> operator!(const vec<T, N>& a) {
  vec<bool, N> r;
  for (int i = 0; i < N; ++i) r[i] = !a[i];
  return r;
}
template <class T, int N> inline vec<T, N> operator~(const vec<T, N>& a) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = ~a[i];
  return r;
}

#define TK_VEC_TYPES(T, name) \
  typedef vec<T, 2> name##2;  \
  typedef vec<T, 3> name##3;  \
  typedef vec<T, 4> name##4;
TK_VEC_TYPES(float, float)
TK_VEC_TYPES(half, half)
TK_VEC_TYPES(bfloat16_t, bfloat)
TK_VEC_TYPES(int, int)
TK_VEC_TYPES(uint, uint)
TK_VEC_TYPES(short, short)
TK_VEC_TYPES(ushort, ushort)
TK_VEC_TYPES(char, char)
TK_VEC_TYPES(uchar, uchar)
TK_VEC_TYPES(long, long)
TK_VEC_TYPES(ulong, ulong)
TK_VEC_TYPES(bool, bool)
#undef TK_VEC_TYPES
// packed_T2/4 share the layout of T2/T4 (packed_T3 would need 12 bytes: absent).
typedef vec<float, 2> packed_float2;
typedef vec<float, 4> packed_float4;
typedef vec<half, 2> packed_half2;
typedef vec<half, 4> packed_half4;

// ---------------------------------------------------------------------------
// metal:: library
// ---------------------------------------------------------------------------
namespace metal {

template <class T> struct numeric_limits;
template <> struct numeric_limits<float> {
  static constexpr bool is_specialized = true;
  static constexpr float max() { return 3.40282346638528859812e+38f; }
  static constexpr float min() { return 1.17549435082228750797e-38f; }
  static constexpr float lowest() { return -3.40282346638528859812e+38f; }
  static constexpr float epsilon() { return 1.1920928955078125e-07f; }
  static constexpr float infinity() { return __builtin_inff(); }
  static constexpr float quiet_NaN() { return __builtin_nanf(""); }
  static constexpr float denorm_min() { return 1.40129846432481707092e-45f; }
};
template <> struct numeric_limits<half> {
  static constexpr bool is_specialized = true;
  static half max() { return half::from_bits(0x7BFF); }
  static half min() { return half::from_bits(0x0400); }
  static half lowest() { return half::from_bits(0xFBFF); }
  static half epsilon() { return half::from_bits(0x1400); }
  static half infinity() { return half::from_bits(0x7C00); }
  static half quiet_NaN() { return half::from_bits(0x7E00); }
  static half denorm_min() { return half::from_bits(0x0001); }
};
template <> struct numeric_limits<bfloat16_t> {
  static constexpr bool is_specialized = true;
  static bfloat16_t max() { return bfloat16_t::from_bits(0x7F7F); }
  static bfloat16_t min() { return bfloat16_t::from_bits(0x0080); }
  static bfloat16_t lowest() { return bfloat16_t::from_bits(0xFF7F); }
  static bfloat16_t epsilon() { return bfloat16_t::from_bits(0x3C00); }
  static bfloat16_t infinity() { return bfloat16_t::from_bits(0x7F80); }
  static bfloat16_t quiet_NaN() { return bfloat16_t::from_bits(0x7FC0); }
  static bfloat16_t denorm_min() { return bfloat16_t::from_bits(0x0001); }
};
#define TK_INT_LIMITS(T, lo, hi)                                       \
  template <> struct numeric_limits<T> {                               \
    static constexpr bool is_specialized = true;                       \
    static constexpr T max() { return hi; }                            \
    static constexpr T min() { return lo; }                            \
    static constexpr T lowest() { return lo; }                         \
  };
TK_INT_LIMITS(bool, false, true)
TK_INT_LIMITS(int8_t, -128, 127)
TK_INT_LIMITS(uint8_t, 0, 255)
TK_INT_LIMITS(int16_t, -32768, 32767)
TK_INT_LIMITS(uint16_t, 0, 65535)
TK_INT_LIMITS(int32_t, (-2147483647 - 1), 2147483647)
TK_INT_LIMITS(uint32_t, 0u, 4294967295u)
TK_INT_LIMITS(int64_t, (-9223372036854775807L - 1), 9223372036854775807L)
TK_INT_LIMITS(uint64_t, 0ul, 18446744073709551615ul)
#undef TK_INT_LIMITS

template <class T, class U> inline T as_type(const U& u) {
  static_assert(sizeof(T) == sizeof(U), "as_type: sizes differ");
  T t;
  __builtin_memcpy((void*)&t, (const void*)&u, sizeof(T));
  return t;
}

// Scalar float functions; half/bfloat16 compute in float and round once;
// vectors apply per element. metal::precise:: and metal::fast:: are the same
// functions (the emulator is never less accurate than precise::).
namespace precise {
#define TK_F1(name, expr)                                                         \
  inline float name(float x) { return expr; }                                     \
  inline half name(half x) { return half(name(static_cast<float>(x))); }          \
  inline bfloat16_t name(bfloat16_t x) { return bfloat16_t(name(static_cast<float>(x))); } \
  template <class T, int N> inline vec<T, N> name(const vec<T, N>& v) {          \
    vec<T, N> r;                                                                  \
    for (int i = 0; i < N; ++i) r[i] = name(v[i]);                               \
    return r;                                                                     \
  }
TK_F1(sqrt, __builtin_sqrtf(x))
TK_F1(rsqrt, 1.0f / __builtin_sqrtf(x))
TK_F1(exp, __builtin_expf(x))
TK_F1(exp2, __builtin_exp2f(x))
TK_F1(exp10, __builtin_powf(10.0f, x))
TK_F1(log, __builtin_logf(x))
TK_F1(log2, __builtin_log2f(x))
TK_F1(log10, __builtin_log10f(x))
TK_F1(sin, __builtin_sinf(x))
TK_F1(cos, __builtin_cosf(x))
TK_F1(tan, __builtin_tanf(x))
TK_F1(asin, __builtin_asinf(x))
TK_F1(acos, __builtin_acosf(x))
TK_F1(atan, __builtin_atanf(x))
TK_F1(sinh, __builtin_sinhf(x))
TK_F1(cosh, __builtin_coshf(x))
TK_F1(tanh, __builtin_tanhf(x))
TK_F1(asinh, __builtin_asinhf(x))
TK_F1(acosh, __builtin_acoshf(x))
TK_F1(atanh, __builtin_atanhf(x))
TK_F1(sinpi, __builtin_sinf(x * 3.14159265358979323846f))
TK_F1(cospi, __builtin_cosf(x * 3.14159265358979323846f))
TK_F1(floor, __builtin_floorf(x))
TK_F1(ceil, __builtin_ceilf(x))
TK_F1(trunc, __builtin_truncf(x))
TK_F1(round, __builtin_roundf(x))
TK_F1(rint, __builtin_rintf(x))
TK_F1(fabs, __builtin_fabsf(x))
TK_F1(fract, __builtin_fminf(x - __builtin_floorf(x), 0x1.fffffep-1f))
TK_F1(erf, __builtin_erff(x))
TK_F1(log1p, __builtin_log1pf(x))
TK_F1(expm1, __builtin_expm1f(x))
TK_F1(recip, 1.0f / x)
#undef TK_F1
#define TK_F2(name, expr)                                                         \
  inline float name(float x, float y) { return expr; }                            \
  inline half name(half x, half y) { return half(name(float(x), float(y))); }     \
  inline bfloat16_t name(bfloat16_t x, bfloat16_t y) { return bfloat16_t(name(float(x), float(y))); } \
  template <class T, int N> inline vec<T, N> name(const vec<T, N>& a, const vec<T, N>& b) { \
    vec<T, N> r;                                                                  \
    for (int i = 0; i < N; ++i) r[i] = name(a[i], b[i]);                          \
    return r;                                                                     \
  }                                                                               \
  template <class T, int N> inline vec<T, N> name(const vec<T, N>& a, T b) {     \
    vec<T, N> r;                                                                  \
    for (int i = 0; i < N; ++i) r[i] = name(a[i], b);                             \
    return r;                                                                     \
  }
TK_F2(pow, __builtin_powf(x, y))
TK_F2(powr, __builtin_powf(x, y))
TK_F2(atan2, __builtin_atan2f(x, y))
TK_F2(fmod, __builtin_fmodf(x, y))
TK_F2(copysign, __builtin_copysignf(x, y))
TK_F2(fmin, __builtin_fminf(x, y))
TK_F2(fmax, __builtin_fmaxf(x, y))
TK_F2(fdim, __builtin_fdimf(x, y))
TK_F2(divide, x / y)
TK_F2(step, y < x ? 0.0f : 1.0f)
#undef TK_F2
inline float fma(float a, float b, float c) { return __builtin_fmaf(a, b, c); }
inline half fma(half a, half b, half c) { return half(__builtin_fmaf(a, b, c)); }
inline bfloat16_t fma(bfloat16_t a, bfloat16_t b, bfloat16_t c) { return bfloat16_t(__builtin_fmaf(a, b, c)); }
template <class T, int N> inline vec<T, N> fma(const vec<T, N>& a, const vec<T, N>& b, const vec<T, N>& c) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = fma(a[i], b[i], c[i]);
  return r;
}
inline float sincos(float x, float& c) { c = __builtin_cosf(x); return __builtin_sinf(x); }
inline half sincos(half x, half& c) { c = half(__builtin_cosf(x)); return half(__builtin_sinf(x)); }
template <class T, int N> inline vec<T, N> sincos(const vec<T, N>& x, vec<T, N>& c) {
  vec<T, N> s;
  for (int i = 0; i < N; ++i) s[i] = sincos(x[i], c[i]);
  return s;
}
}  // namespace precise
namespace fast { using namespace precise; }
using namespace precise;

// Integer and generic helpers.
template <class T, tk::enable_if_t<tk::is_integral<T>::value, int> = 0>
inline T abs(T x) { return x < 0 ? T(-x) : x; }
inline float abs(float x) { return __builtin_fabsf(x); }
inline half abs(half x) { return half::from_bits(static_cast<uint16_t>(x.bits_ & 0x7FFFu)); }
inline bfloat16_t abs(bfloat16_t x) { return bfloat16_t::from_bits(static_cast<uint16_t>(x.bits_ & 0x7FFFu)); }
template <class T, int N> inline vec<T, N> abs(const vec<T, N>& v) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = abs(v[i]);
  return r;
}
// min/max: IEEE fmin/fmax for floating point (a NaN operand is ignored).
template <class T> inline T min(T a, T b) {
  if constexpr (tk::is_integral<T>::value) { return b < a ? b : a; } else { return fmin(a, b); }
}
template <class T> inline T max(T a, T b) {
  if constexpr (tk::is_integral<T>::value) { return a < b ? b : a; } else { return fmax(a, b); }
}
template <class T, int N> inline vec<T, N> min(const vec<T, N>& a, const vec<T, N>& b) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = min(a[i], b[i]);
  return r;
}
template <class T, int N> inline vec<T, N> max(const vec<T, N>& a, const vec<T, N>& b) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = max(a[i], b[i]);
  return r;
}
inline float min(float a, float b) { return __builtin_fminf(a, b); }
inline float max(float a, float b) { return __builtin_fmaxf(a, b); }
inline float clamp(float x, float lo, float hi) { return __builtin_fminf(__builtin_fmaxf(x, lo), hi); }
template <class T> inline T clamp(T x, T lo, T hi) { return min(max(x, lo), hi); }
template <class T, int N> inline vec<T, N> clamp(const vec<T, N>& x, T lo, T hi) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = clamp(x[i], lo, hi);
  return r;
}
template <class T> inline T max3(T a, T b, T c) { return max(max(a, b), c); }
template <class T> inline T min3(T a, T b, T c) { return min(min(a, b), c); }
template <class T> inline T median3(T a, T b, T c) { return max(min(a, b), min(max(a, b), c)); }
inline float fmax3(float a, float b, float c) { return __builtin_fmaxf(__builtin_fmaxf(a, b), c); }
inline float fmin3(float a, float b, float c) { return __builtin_fminf(__builtin_fminf(a, b), c); }
template <class T> inline T saturate(T x) { return clamp(x, T(0), T(1)); }
template <class T> inline T mix(T x, T y, T a) { return x + (y - x) * a; }
template <class T> inline T smoothstep(T e0, T e1, T x) {
  T t = clamp(T((x - e0) / (e1 - e0)), T(0), T(1));
  return t * t * (T(3) - T(2) * t);
}
template <class T> inline T sign(T x) { return x > T(0) ? T(1) : (x < T(0) ? T(-1) : T(0)); }
template <class T> inline T select(T a, T b, bool c) { return c ? b : a; }
template <class T, int N> inline vec<T, N> select(const vec<T, N>& a, const vec<T, N>& b, const vec<bool, N>& c) {
  vec<T, N> r;
  for (int i = 0; i < N; ++i) r[i] = c[i] ? b[i] : a[i];
  return r;
}
inline bool isnan(float x) { return __builtin_isnan(x); }
inline bool isinf(float x) { return __builtin_isinf(x); }
inline bool isfinite(float x) { return __builtin_isfinite(x); }
inline bool signbit(float x) { return __builtin_signbit(x); }
#define TK_PRED(name)                                                         \
  inline bool name(half x) { return name(static_cast<float>(x)); }            \
  inline bool name(bfloat16_t x) { return name(static_cast<float>(x)); }      \
  template <class T, int N> inline vec<bool, N> name(const vec<T, N>& v) {    \
    vec<bool, N> r;                                                           \
    for (int i = 0; i < N; ++i) r[i] = name(v[i]);                            \
    return r;                                                                 \
  }
TK_PRED(isnan) TK_PRED(isinf) TK_PRED(isfinite) TK_PRED(signbit)
#undef TK_PRED
template <int N> inline bool all(const vec<bool, N>& v) {
  for (int i = 0; i < N; ++i) if (!v[i]) return false;
  return true;
}
template <int N> inline bool any(const vec<bool, N>& v) {
  for (int i = 0; i < N; ++i) if (v[i]) return true;
  return false;
}
inline bool all(bool b) { return b; }
inline bool any(bool b) { return b; }
template <class T, int N> inline T dot(const vec<T, N>& a, const vec<T, N>& b) {
  T s = a[0] * b[0];
  for (int i = 1; i < N; ++i) s = s + a[i] * b[i];
  return s;
}
template <class T, int N> inline T length(const vec<T, N>& a) { return sqrt(dot(a, a)); }
template <class T, int N> inline vec<T, N> normalize(const vec<T, N>& a) { return a * rsqrt(dot(a, a)); }
inline uint popcount(uint x) { return __builtin_popcount(x); }
inline uint clz(uint x) { return x ? __builtin_clz(x) : 32u; }
inline uint ctz(uint x) { return x ? __builtin_ctz(x) : 32u; }
inline ulong popcount(ulong x) { return __builtin_popcountl(x); }
inline int mulhi(int a, int b) { return static_cast<int>((static_cast<int64_t>(a) * b) >> 32); }
inline uint mulhi(uint a, uint b) { return static_cast<uint>((static_cast<uint64_t>(a) * b) >> 32); }

// ---------------------------------------------------------------------------
// Synchronisation: threadgroup_barrier is a macro (below) that records the
// calling line, so threads waiting at different barriers are caught.
// ---------------------------------------------------------------------------
enum class mem_flags : unsigned {
  mem_none = 0,
  mem_device = 1,
  mem_threadgroup = 2,
  mem_texture = 4,
  mem_threadgroup_imageblock = 8,
  mem_object_data = 16,
};
constexpr mem_flags operator|(mem_flags a, mem_flags b) {
  return static_cast<mem_flags>(static_cast<unsigned>(a) | static_cast<unsigned>(b));
}
inline void tk_threadgroup_barrier(mem_flags, int line) { tk_rt_barrier(line); }

// simdgroup operations: each lane deposits its value and switches to the
// scheduler; when every live lane of the simdgroup waits, the lanes at the
// lowest source line (same operation) are resolved together. `tk_line`
// defaults to the caller's line, so divergent branches stay apart.
namespace sg {
template <class T> inline void store(tk_lane* l, const T& v) { __builtin_memcpy(l->out, (const void*)&v, sizeof(T)); }
template <class T> inline T in(const tk_lane* l) { T v; __builtin_memcpy((void*)&v, l->in, sizeof(T)); return v; }
template <class T> inline T call(tk_resolver r, const T& v, unsigned arg, int line) {
  static_assert(sizeof(T) <= 64, "simd operation on a value larger than 64 bytes");
  tk_lane* l = tk_rt_simd(r, (const void*)&v, sizeof(T), arg, line);
  T out;
  __builtin_memcpy((void*)&out, l->out, sizeof(T));
  return out;
}
template <class T> inline T zero() { return T(0); }
// Butterfly (xor) tree over 32 lanes, inactive lanes contribute zero.
template <class T> void res_sum(tk_lane* const* L) {
  T v[32];
  for (int i = 0; i < 32; ++i) v[i] = L[i] ? in<T>(L[i]) : zero<T>();
  for (int off = 16; off >= 1; off >>= 1)
    for (int i = 0; i < 32; ++i) if (!(i & off)) v[i] = v[i] + v[i | off];
  for (int i = 0; i < 32; ++i) if (L[i]) store(L[i], v[0]);
}
template <class T> void res_product(tk_lane* const* L) {
  bool first = true; T acc{};
  for (int i = 0; i < 32; ++i) if (L[i]) { acc = first ? in<T>(L[i]) : T(acc * in<T>(L[i])); first = false; }
  for (int i = 0; i < 32; ++i) if (L[i]) store(L[i], acc);
}
#define TK_SG_FOLD(name, expr)                                                 \
  template <class T> void res_##name(tk_lane* const* L) {                      \
    bool first = true; T acc{};                                                \
    for (int i = 0; i < 32; ++i) if (L[i]) {                                   \
      T b = in<T>(L[i]);                                                       \
      if (first) { acc = b; first = false; } else { T a = acc; acc = (expr); } \
    }                                                                          \
    for (int i = 0; i < 32; ++i) if (L[i]) store(L[i], acc);                   \
  }
TK_SG_FOLD(max, metal::max(a, b))
TK_SG_FOLD(min, metal::min(a, b))
TK_SG_FOLD(and, a & b)
TK_SG_FOLD(or, a | b)
TK_SG_FOLD(xor, a ^ b)
#undef TK_SG_FOLD
template <class T> void res_prefix_inclusive(tk_lane* const* L) {
  bool first = true; T acc{};
  for (int i = 0; i < 32; ++i) if (L[i]) { acc = first ? in<T>(L[i]) : T(acc + in<T>(L[i])); first = false; store(L[i], acc); }
}
template <class T> void res_prefix_exclusive(tk_lane* const* L) {
  T acc = zero<T>();
  for (int i = 0; i < 32; ++i) if (L[i]) { store(L[i], acc); acc = T(acc + in<T>(L[i])); }
}
template <class T> void res_prefix_inclusive_product(tk_lane* const* L) {
  bool first = true; T acc{};
  for (int i = 0; i < 32; ++i) if (L[i]) { acc = first ? in<T>(L[i]) : T(acc * in<T>(L[i])); first = false; store(L[i], acc); }
}
template <class T> void res_prefix_exclusive_product(tk_lane* const* L) {
  T acc = T(1);
  for (int i = 0; i < 32; ++i) if (L[i]) { store(L[i], acc); acc = T(acc * in<T>(L[i])); }
}
// Reads from an inactive (exited or divergent) lane are undefined on a GPU;
// here they return the reading lane's own value.
#define TK_SG_SHUFFLE(name, src)                                               \
  template <class T> void res_##name(tk_lane* const* L) {                      \
    for (int i = 0; i < 32; ++i) if (L[i]) {                                   \
      long s = (src);                                                          \
      T v = (s >= 0 && s < 32 && L[s]) ? in<T>(L[s]) : in<T>(L[i]);            \
      store(L[i], v);                                                          \
    }                                                                          \
  }
TK_SG_SHUFFLE(shuffle, static_cast<long>(L[i]->arg))
TK_SG_SHUFFLE(shuffle_xor, static_cast<long>(i ^ (L[i]->arg & 31u)))
TK_SG_SHUFFLE(shuffle_down, static_cast<long>(i) + L[i]->arg)
TK_SG_SHUFFLE(shuffle_up, static_cast<long>(i) - static_cast<long>(L[i]->arg))
TK_SG_SHUFFLE(shuffle_rotate_down, static_cast<long>((i + L[i]->arg) & 31u))
TK_SG_SHUFFLE(shuffle_rotate_up, static_cast<long>((i + 32u - (L[i]->arg & 31u)) & 31u))
#undef TK_SG_SHUFFLE
// quad_* operations: the same over groups of four consecutive lanes.
struct OpAdd { template <class T> T operator()(T a, T b) const { return T(a + b); } };
struct OpMul { template <class T> T operator()(T a, T b) const { return T(a * b); } };
struct OpMax { template <class T> T operator()(T a, T b) const { return metal::max(a, b); } };
struct OpMin { template <class T> T operator()(T a, T b) const { return metal::min(a, b); } };
template <class T, class Op> void res_quad_fold(tk_lane* const* L) {
  for (int i = 0; i < 32; ++i) if (L[i]) {
    bool first = true; T acc{};
    for (int j = i & ~3; j < (i & ~3) + 4; ++j) if (L[j]) {
      acc = first ? in<T>(L[j]) : Op()(acc, in<T>(L[j]));
      first = false;
    }
    store(L[i], acc);
  }
}
#define TK_QUAD_SHUFFLE(name, src)                                              \
  template <class T> void res_##name(tk_lane* const* L) {                       \
    for (int i = 0; i < 32; ++i) if (L[i]) {                                    \
      int q = i & ~3, k = i & 3, a = static_cast<int>(L[i]->arg);               \
      int s = (src);                                                            \
      store(L[i], (s >= 0 && s < 4 && L[q + s]) ? in<T>(L[q + s]) : in<T>(L[i])); \
    }                                                                           \
  }
TK_QUAD_SHUFFLE(quad_shuffle, a)
TK_QUAD_SHUFFLE(quad_shuffle_xor, k ^ (a & 3))
TK_QUAD_SHUFFLE(quad_shuffle_down, k + a)
TK_QUAD_SHUFFLE(quad_shuffle_up, k - a)
#undef TK_QUAD_SHUFFLE
template <class T> void res_broadcast_first(tk_lane* const* L) {
  int first = 0;
  while (!L[first]) ++first;
  T v = in<T>(L[first]);
  for (int i = 0; i < 32; ++i) if (L[i]) store(L[i], v);
}
inline void res_ballot(tk_lane* const* L) {
  uint64_t bits = 0;
  for (int i = 0; i < 32; ++i) if (L[i] && in<uint64_t>(L[i]) != 0) bits |= uint64_t(1) << i;
  for (int i = 0; i < 32; ++i) if (L[i]) store(L[i], bits);
}
inline void res_barrier(tk_lane* const*) {}
inline void res_is_first(tk_lane* const* L) {
  bool first = true;
  for (int i = 0; i < 32; ++i) if (L[i]) { bool v = first; first = false; store(L[i], v); }
}
inline void res_all(tk_lane* const* L) {
  bool r = true;
  for (int i = 0; i < 32; ++i) if (L[i]) r = r && in<bool>(L[i]);
  for (int i = 0; i < 32; ++i) if (L[i]) store(L[i], r);
}
inline void res_any(tk_lane* const* L) {
  bool r = false;
  for (int i = 0; i < 32; ++i) if (L[i]) r = r || in<bool>(L[i]);
  for (int i = 0; i < 32; ++i) if (L[i]) store(L[i], r);
}
}  // namespace sg

#define TK_SG_OP(name, res)                                                    \
  template <class T> inline T name(T v, int tk_line = __builtin_LINE()) {      \
    return sg::call<T>(&sg::res<T>, v, 0, tk_line);                            \
  }
TK_SG_OP(simd_sum, res_sum)
TK_SG_OP(simd_product, res_product)
TK_SG_OP(simd_max, res_max)
TK_SG_OP(simd_min, res_min)
TK_SG_OP(simd_and, res_and)
TK_SG_OP(simd_or, res_or)
TK_SG_OP(simd_xor, res_xor)
TK_SG_OP(simd_prefix_inclusive_sum, res_prefix_inclusive)
TK_SG_OP(simd_prefix_exclusive_sum, res_prefix_exclusive)
TK_SG_OP(simd_prefix_inclusive_product, res_prefix_inclusive_product)
TK_SG_OP(simd_prefix_exclusive_product, res_prefix_exclusive_product)
#undef TK_SG_OP
#define TK_QUAD_OP(name, op)                                                   \
  template <class T> inline T name(T v, int tk_line = __builtin_LINE()) {      \
    return sg::call<T>(&sg::res_quad_fold<T, sg::op>, v, 0, tk_line);          \
  }
TK_QUAD_OP(quad_sum, OpAdd)
TK_QUAD_OP(quad_product, OpMul)
TK_QUAD_OP(quad_max, OpMax)
TK_QUAD_OP(quad_min, OpMin)
#undef TK_QUAD_OP
#define TK_SG_OP2(name, res)                                                   \
  template <class T> inline T name(T v, ushort a, int tk_line = __builtin_LINE()) { \
    return sg::call<T>(&sg::res<T>, v, a, tk_line);                            \
  }
TK_SG_OP2(simd_shuffle, res_shuffle)
TK_SG_OP2(simd_broadcast, res_shuffle)
TK_SG_OP2(simd_shuffle_xor, res_shuffle_xor)
TK_SG_OP2(simd_shuffle_down, res_shuffle_down)
TK_SG_OP2(simd_shuffle_up, res_shuffle_up)
TK_SG_OP2(simd_shuffle_rotate_down, res_shuffle_rotate_down)
TK_SG_OP2(simd_shuffle_rotate_up, res_shuffle_rotate_up)
TK_SG_OP2(quad_shuffle, res_quad_shuffle)
TK_SG_OP2(quad_broadcast, res_quad_shuffle)
TK_SG_OP2(quad_shuffle_xor, res_quad_shuffle_xor)
TK_SG_OP2(quad_shuffle_down, res_quad_shuffle_down)
TK_SG_OP2(quad_shuffle_up, res_quad_shuffle_up)
#undef TK_SG_OP2
template <class T> inline T simd_broadcast_first(T v, int tk_line = __builtin_LINE()) {
  return sg::call<T>(&sg::res_broadcast_first<T>, v, 0, tk_line);
}
inline bool simd_all(bool b, int tk_line = __builtin_LINE()) { return sg::call<bool>(&sg::res_all, b, 0, tk_line); }
inline bool simd_any(bool b, int tk_line = __builtin_LINE()) { return sg::call<bool>(&sg::res_any, b, 0, tk_line); }
inline bool simd_is_first(int tk_line = __builtin_LINE()) { return sg::call<bool>(&sg::res_is_first, false, 0, tk_line); }
inline bool simd_is_helper_thread() { return false; }
struct simd_vote {
  typedef uint64_t vote_t;
  vote_t v_;
  explicit simd_vote(vote_t v = 0) : v_(v) {}
  explicit operator vote_t() const { return v_; }
  bool all() const { return v_ == ~vote_t(0); }
  bool any() const { return v_ != 0; }
};
inline simd_vote simd_ballot(bool b, int tk_line = __builtin_LINE()) {
  return simd_vote(sg::call<uint64_t>(&sg::res_ballot, uint64_t(b), 0, tk_line));
}
inline simd_vote simd_active_threads_mask(int tk_line = __builtin_LINE()) {
  return simd_ballot(true, tk_line);
}
inline void simdgroup_barrier(mem_flags, int tk_line = __builtin_LINE()) { sg::call<int>(&sg::res_barrier, 0, 0, tk_line); }

// Atomics (device or threadgroup). Workers run threadgroups on several OS
// threads, so these are real atomic operations.
enum memory_order { memory_order_relaxed = __ATOMIC_RELAXED, memory_order_seq_cst = __ATOMIC_SEQ_CST };
template <class T> struct atomic { T v_; };
typedef atomic<int> atomic_int;
typedef atomic<uint> atomic_uint;
typedef atomic<float> atomic_float;
template <class T> inline void atomic_store_explicit(atomic<T>* o, tk::identity_t<T> v, memory_order) { __atomic_store(&o->v_, &v, __ATOMIC_SEQ_CST); }
template <class T> inline T atomic_load_explicit(const atomic<T>* o, memory_order) { T r; __atomic_load(&o->v_, &r, __ATOMIC_SEQ_CST); return r; }
template <class T> inline T atomic_exchange_explicit(atomic<T>* o, tk::identity_t<T> v, memory_order) { T r; __atomic_exchange(&o->v_, &v, &r, __ATOMIC_SEQ_CST); return r; }
template <class T> inline bool atomic_compare_exchange_weak_explicit(atomic<T>* o, T* expected, tk::identity_t<T> desired, memory_order, memory_order) {
  return __atomic_compare_exchange(&o->v_, expected, &desired, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
}
template <class T, class F> inline T tk_atomic_rmw(atomic<T>* o, F f) {
  T old;
  __atomic_load(&o->v_, &old, __ATOMIC_RELAXED);
  T next = f(old);
  while (!__atomic_compare_exchange(&o->v_, &old, &next, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) next = f(old);
  return old;
}
#define TK_ATOMIC_RMW(name, expr)                                               \
  template <class T> inline T atomic_fetch_##name##_explicit(atomic<T>* o, tk::identity_t<T> v, memory_order) { \
    return tk_atomic_rmw(o, [v](T a) { return T(expr); });                      \
  }
TK_ATOMIC_RMW(add, a + v)
TK_ATOMIC_RMW(sub, a - v)
TK_ATOMIC_RMW(min, metal::min(a, v))
TK_ATOMIC_RMW(max, metal::max(a, v))
TK_ATOMIC_RMW(and, a & v)
TK_ATOMIC_RMW(or, a | v)
TK_ATOMIC_RMW(xor, a ^ v)
#undef TK_ATOMIC_RMW

}  // namespace metal
using namespace metal;

#define threadgroup_barrier(flags) ::metal::tk_threadgroup_barrier(flags, __LINE__)

// MLX's utils.h helpers that custom kernels commonly call.
inline int64_t elem_to_loc(uint elem, const int* shape, const int64_t* strides, int ndim) {
  int64_t loc = 0;
  for (int i = ndim - 1; i >= 0 && elem > 0; --i) {
    loc += static_cast<int64_t>(elem % shape[i]) * strides[i];
    elem /= shape[i];
  }
  return loc;
}
inline int64_t elem_to_loc(uint3 elem, const int* shape, const int64_t* strides, int ndim) {
  int64_t loc = elem.x * strides[ndim - 1] + elem.y * strides[ndim - 2];
  for (int d = ndim - 3; d >= 0; --d) {
    loc += (elem.z % shape[d]) * strides[d];
    elem.z /= shape[d];
  }
  return loc;
}
inline size_t ceildiv(size_t n, size_t m) { return (n + m - 1) / m; }

template <class U> struct Limits;
#define TK_INT_LIMIT(T)                                                        \
  template <> struct Limits<T> {                                               \
    static constexpr T max = metal::numeric_limits<T>::max();                  \
    static constexpr T min = metal::numeric_limits<T>::min();                  \
    static constexpr T finite_max = metal::numeric_limits<T>::max();           \
    static constexpr T finite_min = metal::numeric_limits<T>::min();           \
  };
TK_INT_LIMIT(uint8_t) TK_INT_LIMIT(uint16_t) TK_INT_LIMIT(uint32_t) TK_INT_LIMIT(uint64_t)
TK_INT_LIMIT(int8_t) TK_INT_LIMIT(int16_t) TK_INT_LIMIT(int32_t) TK_INT_LIMIT(int64_t)
TK_INT_LIMIT(bool)
#undef TK_INT_LIMIT
#define TK_FLOAT_LIMIT(T)                                                      \
  template <> struct Limits<T> {                                               \
    static inline const T max = metal::numeric_limits<T>::infinity();          \
    static inline const T min = -metal::numeric_limits<T>::infinity();         \
    static inline const T finite_max = metal::numeric_limits<T>::max();        \
    static inline const T finite_min = -metal::numeric_limits<T>::max();       \
  };
TK_FLOAT_LIMIT(float) TK_FLOAT_LIMIT(half) TK_FLOAT_LIMIT(bfloat16_t)
#undef TK_FLOAT_LIMIT

#define INFINITY __builtin_inff()
#define NAN __builtin_nanf("")
#define MAXFLOAT 3.40282346638528859812e+38f
#define FLT_MAX 3.40282346638528859812e+38f
#define FLT_MIN 1.17549435082228750797e-38f
#define FLT_EPSILON 1.1920928955078125e-07f
#define HALF_MAX 65504.0f
#define HALF_MIN 6.103515625e-05f
#define HALF_EPSILON 9.765625e-04f
#define M_PI_F 3.14159265358979323846f
#define M_PI_2_F 1.57079632679489661923f
#define M_PI_4_F 0.785398163397448309616f
#define M_1_PI_F 0.318309886183790671538f
#define M_2_PI_F 0.636619772367581343076f
#define M_E_F 2.71828182845904523536f
#define M_LOG2E_F 1.44269504088896340736f
#define M_LOG10E_F 0.434294481903251827651f
#define M_LN2_F 0.693147180559945309417f
#define M_LN10_F 2.30258509299404568402f
#define M_SQRT2_F 1.41421356237309504880f
#define M_SQRT1_2_F 0.707106781186547524401f
