// bilevel_combine on the CPU: one read pass for the three inner products and the non-finite count, one
// update pass g_outer + lambda * g_inner.
#include "kernels.h"

#include "../bilevel_lambda.h"
#include "../checks.h"
#include "dispatch.h"
#include "simd_avx2.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <cstring>
#include <vector>

namespace fastunlearn {
namespace cpu {
namespace {

// Independent accumulators per statistic: a whole number of SIMD registers, and enough to hide the add latency
// of the three fused chains; -O3 vectorises the lane loop without reassociation.
constexpr int kLanes = 8;

struct Partial {
  float dot, nn_i, nn_o, nonfinite;
};

template <int N>
float tree_sum(float (&acc)[N]) {
  for (int width = N / 2; width > 0; width /= 2) {
    for (int k = 0; k < width; ++k) acc[k] += acc[k + width];
  }
  return acc[0];
}

// (<o, i>, ||i||^2, ||o||^2, #elements where o or i is NaN/Inf) over n <= kChunk elements (so the count is
// exact in fp32).
template <typename T>
Partial stats_chunk(const T* __restrict__ go, const T* __restrict__ gi, int64_t n) {
  float dot[kLanes] = {}, nn_i[kLanes] = {}, nn_o[kLanes] = {}, bad[kLanes] = {};
  int64_t i = 0;
  auto step = [&](int k, int64_t j) {
    const float o = static_cast<float>(go[j]);
    const float v = static_cast<float>(gi[j]);
    dot[k] += o * v;
    nn_i[k] += v * v;
    nn_o[k] += o * o;
    // (o - o) + (v - v) is 0 when both are finite and NaN otherwise; a self-compare is NaN-safe without
    // -ffast-math and vectorises (unlike std::isfinite on some compilers).
    const float z = (o - o) + (v - v);
    bad[k] += z == z ? 0.0f : 1.0f;
  };
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) step(k, i + k);
  }
  for (int k = 0; i < n; ++i, ++k) step(k, i);
  return {tree_sum(dot), tree_sum(nn_i), tree_sum(nn_o), tree_sum(bad)};
}

template <typename T>
void combine(const T* __restrict__ go, const T* __restrict__ gi, T* __restrict__ out, int64_t n, float lam) {
  for (int64_t i = 0; i < n; ++i) {
    out[i] = static_cast<T>(static_cast<float>(go[i]) + lam * static_cast<float>(gi[i]));
  }
}

// Same as combine with out == g_outer: separate so both loops keep __restrict__ (and so vectorise).
template <typename T>
void combine_inplace(T* __restrict__ go, const T* __restrict__ gi, int64_t n, float lam) {
  for (int64_t i = 0; i < n; ++i) {
    go[i] = static_cast<T>(static_cast<float>(go[i]) + lam * static_cast<float>(gi[i]));
  }
}

}  // namespace

// stats = (<g_outer, g_inner>, ||g_inner||^2, ||g_outer||^2, nonfinite_count) in float32: fp32 sums per fixed
// chunk of kChunk elements, fp64 sum of the chunk partials in chunk order (bitwise reproducible for any
// thread count).
at::Tensor bilevel_stats(const at::Tensor& g_outer, const at::Tensor& g_inner) {
  check_bilevel_pair(g_outer, g_inner, "bilevel_stats");
  const int64_t n = g_outer.numel();
  const int64_t n_chunks = (n + kChunk - 1) / kChunk;
  std::vector<Partial> partial(static_cast<size_t>(n_chunks));
  dispatch_float_types(g_outer.scalar_type(), "bilevel_stats", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    const scalar_t* go = g_outer.const_data_ptr<scalar_t>();
    const scalar_t* gi = g_inner.const_data_ptr<scalar_t>();
    const bool avx2 = use_avx2();
    at::parallel_for(0, n_chunks, kGrainChunks, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t lo = c * kChunk;
#if FASTUNLEARN_HAVE_AVX2_PATH
        if (avx2) {
          float s4[4];
          avx2::stats_chunk(go + lo, gi + lo, std::min(kChunk, n - lo), s4);
          partial[c] = {s4[0], s4[1], s4[2], s4[3]};
          continue;
        }
#endif
        partial[c] = stats_chunk(go + lo, gi + lo, std::min(kChunk, n - lo));
      }
    });
  });
  double dot = 0.0, nn_i = 0.0, nn_o = 0.0, bad = 0.0;
  for (const Partial& p : partial) {
    dot += p.dot;
    nn_i += p.nn_i;
    nn_o += p.nn_o;
    bad += p.nonfinite;
  }
  at::Tensor stats = at::empty({4}, g_outer.options().dtype(at::kFloat));
  float* s = stats.data_ptr<float>();
  s[0] = static_cast<float>(dot);
  s[1] = static_cast<float>(nn_i);
  s[2] = static_cast<float>(nn_o);
  s[3] = static_cast<float>(bad);
  return stats;
}

// out = g_outer + lambda * g_inner (fp32 math, stored in out's dtype) when the stats are finite, else out =
// g_outer; lambda from bilevel_lambda(stats, rule, eta). Returns (lambda, finite ? 1 : 0) in float32.
at::Tensor bilevel_apply(const at::Tensor& g_outer, const at::Tensor& g_inner, const at::Tensor& stats,
                         int64_t rule, double eta, at::Tensor& out) {
  check_bilevel_apply(g_outer, g_inner, stats, rule, out);
  const float* s = stats.const_data_ptr<float>();
  const BilevelLambda r = bilevel_lambda(s[0], s[1], s[2], s[3], static_cast<int>(rule), static_cast<float>(eta));
  const int64_t n = g_outer.numel();
  const bool in_place = out.data_ptr() == g_outer.data_ptr();
  dispatch_float_types(g_outer.scalar_type(), "bilevel_apply", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    const scalar_t* go = g_outer.const_data_ptr<scalar_t>();
    const scalar_t* gi = g_inner.const_data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    if (!r.finite && in_place) return;  // out already holds g_outer
    const bool avx2 = use_avx2();
    // Same chunk split over the threads as bilevel_stats, but each thread walks its chunks last to first: the
    // chunks it reduced last are the ones still in its cache (L2/L3) when the update starts, which saves part
    // of the second read of g_outer and g_inner.
    const int64_t n_chunks = (n + kChunk - 1) / kChunk;
    at::parallel_for(0, n_chunks, kGrainChunks, [&](int64_t chunk_begin, int64_t chunk_end) {
      for (int64_t c = chunk_end - 1; c >= chunk_begin; --c) {
        const int64_t begin = c * kChunk;
        const int64_t len = std::min(kChunk, n - begin);
        if (!r.finite) {
          std::memcpy(o + begin, go + begin, static_cast<size_t>(len) * sizeof(scalar_t));
          continue;
        }
#if FASTUNLEARN_HAVE_AVX2_PATH
        if (avx2) {
          avx2::combine(go + begin, gi + begin, o + begin, len, r.lam);
          continue;
        }
#endif
        if (in_place) {
          combine_inplace(o + begin, gi + begin, len, r.lam);
        } else {
          combine(go + begin, gi + begin, o + begin, len, r.lam);
        }
      }
    });
  });
  at::Tensor result = at::empty({2}, g_outer.options().dtype(at::kFloat));
  float* res = result.data_ptr<float>();
  res[0] = r.lam;
  res[1] = r.finite ? 1.0f : 0.0f;
  return result;
}

}  // namespace cpu
}  // namespace fastunlearn
