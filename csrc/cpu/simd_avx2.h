// AVX2 + FMA + F16C versions of the CPU hot loops, chosen at run time (use_avx2()) so the extension is built
// with the compiler's default flags (runs on any x86-64) yet uses 8-wide FMA and hardware fp16 conversion
// where the CPU has them. Without them, the portable loops (auto-vectorised SSE2) reach only ~half the
// memory bandwidth on the three-product reduction, and c10::Half's scalar conversion dominates fp16.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define FASTUNLEARN_HAVE_AVX2_PATH 1
#include <immintrin.h>
#define FU_AVX2 __attribute__((target("avx2,fma,f16c")))
#else
#define FASTUNLEARN_HAVE_AVX2_PATH 0
#endif

namespace fastunlearn {
namespace cpu {

// True when the CPU has AVX2, FMA and F16C, unless FASTUNLEARN_CPU_ISA=default asks for the portable loops
// (tests use it to cover both). Read once per process.
inline bool use_avx2() {
#if FASTUNLEARN_HAVE_AVX2_PATH
  static const bool enabled = [] {
    const char* isa = std::getenv("FASTUNLEARN_CPU_ISA");
    if (isa != nullptr && std::strcmp(isa, "default") == 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  }();
  return enabled;
#else
  return false;
#endif
}

#if FASTUNLEARN_HAVE_AVX2_PATH
namespace avx2 {

FU_AVX2 inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
FU_AVX2 inline __m256 load8(const c10::BFloat16* p) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}
FU_AVX2 inline __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

FU_AVX2 inline void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
FU_AVX2 inline void store8(c10::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// Round to nearest even, NaN -> 0x7fc0: the same bits as c10::BFloat16(float).
FU_AVX2 inline void store8(c10::BFloat16* p, __m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i rounded = _mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7fc00000), is_nan);
  const __m256i hi = _mm256_srli_epi32(rounded, 16);
  const __m128i packed = _mm_packus_epi32(_mm256_castsi256_si128(hi), _mm256_extracti128_si256(hi, 1));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), packed);
}

// Horizontal sum in a fixed order (lanes stored, then a pairwise tree).
FU_AVX2 inline float hsum(__m256 v) {
  alignas(32) float lanes[8];
  _mm256_store_ps(lanes, v);
  return ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
}

// sum_i (p[i] - t[i])^2; four independent 8-lane FMA chains.
template <typename T>
FU_AVX2 float squared_diff_sum(const T* __restrict__ p, const T* __restrict__ t, int64_t n) {
  __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps(), a2 = _mm256_setzero_ps(), a3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m256 d0 = _mm256_sub_ps(load8(p + i), load8(t + i));
    const __m256 d1 = _mm256_sub_ps(load8(p + i + 8), load8(t + i + 8));
    const __m256 d2 = _mm256_sub_ps(load8(p + i + 16), load8(t + i + 16));
    const __m256 d3 = _mm256_sub_ps(load8(p + i + 24), load8(t + i + 24));
    a0 = _mm256_fmadd_ps(d0, d0, a0);
    a1 = _mm256_fmadd_ps(d1, d1, a1);
    a2 = _mm256_fmadd_ps(d2, d2, a2);
    a3 = _mm256_fmadd_ps(d3, d3, a3);
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 d = _mm256_sub_ps(load8(p + i), load8(t + i));
    a0 = _mm256_fmadd_ps(d, d, a0);
  }
  float sum = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
  for (; i < n; ++i) {
    const float d = static_cast<float>(p[i]) - static_cast<float>(t[i]);
    sum += d * d;
  }
  return sum;
}

// g[i] = (p[i] - t[i]) * scale.
template <typename T>
FU_AVX2 void scaled_diff(const T* __restrict__ p, const T* __restrict__ t, T* __restrict__ g, int64_t n,
                         float scale) {
  const __m256 s = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8(g + i, _mm256_mul_ps(_mm256_sub_ps(load8(p + i), load8(t + i)), s));
  for (; i < n; ++i) g[i] = static_cast<T>((static_cast<float>(p[i]) - static_cast<float>(t[i])) * scale);
}

// 1.0f in each lane where o or v is NaN/Inf: (o - o) + (v - v) is 0 when both are finite and NaN otherwise.
FU_AVX2 inline __m256 nonfinite(__m256 o, __m256 v) {
  const __m256 z = _mm256_add_ps(_mm256_sub_ps(o, o), _mm256_sub_ps(v, v));
  return _mm256_and_ps(_mm256_cmp_ps(z, z, _CMP_UNORD_Q), _mm256_set1_ps(1.0f));
}

// (<o, i>, ||i||^2, ||o||^2, #elements where o or i is NaN/Inf) of one chunk; two 8-lane chains per statistic.
template <typename T>
FU_AVX2 void stats_chunk(const T* __restrict__ go, const T* __restrict__ gi, int64_t n, float* out4) {
  __m256 dot0 = _mm256_setzero_ps(), dot1 = _mm256_setzero_ps();
  __m256 ni0 = _mm256_setzero_ps(), ni1 = _mm256_setzero_ps();
  __m256 no0 = _mm256_setzero_ps(), no1 = _mm256_setzero_ps();
  __m256 bad0 = _mm256_setzero_ps(), bad1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256 o0 = load8(go + i), v0 = load8(gi + i);
    const __m256 o1 = load8(go + i + 8), v1 = load8(gi + i + 8);
    dot0 = _mm256_fmadd_ps(o0, v0, dot0);
    dot1 = _mm256_fmadd_ps(o1, v1, dot1);
    ni0 = _mm256_fmadd_ps(v0, v0, ni0);
    ni1 = _mm256_fmadd_ps(v1, v1, ni1);
    no0 = _mm256_fmadd_ps(o0, o0, no0);
    no1 = _mm256_fmadd_ps(o1, o1, no1);
    bad0 = _mm256_add_ps(bad0, nonfinite(o0, v0));
    bad1 = _mm256_add_ps(bad1, nonfinite(o1, v1));
  }
  for (; i + 8 <= n; i += 8) {
    const __m256 o0 = load8(go + i), v0 = load8(gi + i);
    dot0 = _mm256_fmadd_ps(o0, v0, dot0);
    ni0 = _mm256_fmadd_ps(v0, v0, ni0);
    no0 = _mm256_fmadd_ps(o0, o0, no0);
    bad0 = _mm256_add_ps(bad0, nonfinite(o0, v0));
  }
  float dot = hsum(_mm256_add_ps(dot0, dot1));
  float nn_i = hsum(_mm256_add_ps(ni0, ni1));
  float nn_o = hsum(_mm256_add_ps(no0, no1));
  float bad = hsum(_mm256_add_ps(bad0, bad1));
  for (; i < n; ++i) {
    const float o = static_cast<float>(go[i]);
    const float v = static_cast<float>(gi[i]);
    dot += o * v;
    nn_i += v * v;
    nn_o += o * o;
    const float z = (o - o) + (v - v);
    bad += z == z ? 0.0f : 1.0f;
  }
  out4[0] = dot;
  out4[1] = nn_i;
  out4[2] = nn_o;
  out4[3] = bad;
}

// out[i] = go[i] + lam * gi[i]; out may be go (each vector is loaded before it is stored).
template <typename T>
FU_AVX2 void combine(const T* go, const T* __restrict__ gi, T* out, int64_t n, float lam) {
  const __m256 l = _mm256_set1_ps(lam);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) store8(out + i, _mm256_fmadd_ps(l, load8(gi + i), load8(go + i)));
  for (; i < n; ++i) out[i] = static_cast<T>(static_cast<float>(go[i]) + lam * static_cast<float>(gi[i]));
}

}  // namespace avx2
#endif  // FASTUNLEARN_HAVE_AVX2_PATH

}  // namespace cpu
}  // namespace fastunlearn
