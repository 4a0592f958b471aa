// bilevel_combine on CUDA: one read pass for <g_o, g_i>, ||g_i||^2, ||g_o||^2 and the non-finite count
// (two-stage deterministic reduction), then one update pass out = g_o + lambda * g_i with lambda formed on the
// device from the stats pointer (no host sync; CUDA-graph safe; the stats may have been all-reduced between).
#include "../bilevel_lambda.h"
#include "common.cuh"
#include "kernels.h"

namespace fastunlearn {
namespace cuda {
namespace {

using detail::kThreads;
using detail::Vec;

struct StatsAcc {
  float dot = 0.0f, nn_i = 0.0f, nn_o = 0.0f, bad = 0.0f;

  __device__ __forceinline__ void add(float o, float v) {
    dot = fmaf(o, v, dot);
    nn_i = fmaf(v, v, nn_i);
    nn_o = fmaf(o, o, nn_o);
    // (o - o) + (v - v) is 0 when both are finite and NaN otherwise.
    const float z = (o - o) + (v - v);
    bad += z == z ? 0.0f : 1.0f;
  }
};

template <typename T, bool kVectorised>
__global__ void __launch_bounds__(kThreads)
    bilevel_stats_partials_kernel(const T* __restrict__ go, const T* __restrict__ gi, int64_t n,
                                  float* __restrict__ partials) {
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  StatsAcc acc;
  int64_t scalar_from = 0;
  if (kVectorised) {
    constexpr int W = Vec<T>::kWidth;
    const int64_t n_vec = n / W;
    for (int64_t v = tid; v < n_vec; v += stride) {
      float a[W], b[W];
      detail::load_vec(go + v * W, a);
      detail::load_vec(gi + v * W, b);
#pragma unroll
      for (int k = 0; k < W; ++k) acc.add(a[k], b[k]);
    }
    scalar_from = n_vec * W;
  }
  for (int64_t i = scalar_from + tid; i < n; i += stride) acc.add(detail::to_float(go[i]), detail::to_float(gi[i]));

  // Layout [stat][block] so the finalize kernel reads each statistic contiguously.
  const float dot = detail::block_sum(acc.dot);
  const float nn_i = detail::block_sum(acc.nn_i);
  const float nn_o = detail::block_sum(acc.nn_o);
  const float bad = detail::block_sum(acc.bad);
  if (threadIdx.x == 0) {
    partials[blockIdx.x] = dot;
    partials[gridDim.x + blockIdx.x] = nn_i;
    partials[2 * gridDim.x + blockIdx.x] = nn_o;
    partials[3 * gridDim.x + blockIdx.x] = bad;
  }
}

// One block: fp64 sum of each statistic's per-block partials in a fixed order.
__global__ void __launch_bounds__(kThreads)
    bilevel_stats_finalize_kernel(const float* __restrict__ partials, int n_blocks, float* __restrict__ stats) {
  for (int s = 0; s < 4; ++s) {
    double acc = 0.0;
    for (int b = threadIdx.x; b < n_blocks; b += kThreads) acc += static_cast<double>(partials[s * n_blocks + b]);
    acc = detail::block_sum(acc);
    if (threadIdx.x == 0) stats[s] = static_cast<float>(acc);
  }
}

template <typename T, bool kVectorised>
__global__ void __launch_bounds__(kThreads)
    bilevel_apply_kernel(const T* go, const T* __restrict__ gi, const float* __restrict__ stats, int rule, float eta,
                         T* out, float* __restrict__ result, int64_t n) {
  // go and out may be the same buffer (in-place update), hence no __restrict__ on them; each element is read
  // before it is written by the same thread.
  const BilevelLambda r = bilevel_lambda(__ldg(stats), __ldg(stats + 1), __ldg(stats + 2), __ldg(stats + 3), rule, eta);
  if (blockIdx.x == 0 && threadIdx.x == 0) {
    result[0] = r.lam;
    result[1] = r.finite ? 1.0f : 0.0f;
  }
  if (!r.finite && go == out) return;
  const float lam = r.finite ? r.lam : 0.0f;
  const float keep = r.finite ? 1.0f : 0.0f;  // !finite: out = g_outer exactly (0 * NaN would poison it)
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  int64_t scalar_from = 0;
  if (kVectorised) {
    constexpr int W = Vec<T>::kWidth;
    const int64_t n_vec = n / W;
    for (int64_t v = tid; v < n_vec; v += stride) {
      float a[W], b[W];
      detail::load_vec<T, false>(go + v * W, a);
      if (keep != 0.0f) {
        detail::load_vec(gi + v * W, b);
#pragma unroll
        for (int k = 0; k < W; ++k) a[k] = fmaf(lam, b[k], a[k]);
      }
      detail::store_vec(out + v * W, a);
    }
    scalar_from = n_vec * W;
  }
  for (int64_t i = scalar_from + tid; i < n; i += stride) {
    const float o = detail::to_float(go[i]);
    out[i] = detail::from_float<T>(keep != 0.0f ? fmaf(lam, detail::to_float(gi[i]), o) : o);
  }
}

template <typename T>
cudaError_t stats_impl(const T* go, const T* gi, int64_t n, float* workspace, float* stats, cudaStream_t stream) {
  const int blocks = detail::reduction_blocks<T>(n);
  if (detail::aligned16(go) && detail::aligned16(gi)) {
    bilevel_stats_partials_kernel<T, true><<<blocks, kThreads, 0, stream>>>(go, gi, n, workspace);
  } else {
    bilevel_stats_partials_kernel<T, false><<<blocks, kThreads, 0, stream>>>(go, gi, n, workspace);
  }
  bilevel_stats_finalize_kernel<<<1, kThreads, 0, stream>>>(workspace, blocks, stats);
  return cudaGetLastError();
}

template <typename T>
cudaError_t apply_impl(const T* go, const T* gi, const float* stats, int rule, float eta, T* out, float* result,
                       int64_t n, cudaStream_t stream) {
  const int blocks = detail::elementwise_blocks<T>(n);  // >= 1, so result is written even when n == 0
  if (detail::aligned16(go) && detail::aligned16(gi) && detail::aligned16(out)) {
    bilevel_apply_kernel<T, true><<<blocks, kThreads, 0, stream>>>(go, gi, stats, rule, eta, out, result, n);
  } else {
    bilevel_apply_kernel<T, false><<<blocks, kThreads, 0, stream>>>(go, gi, stats, rule, eta, out, result, n);
  }
  return cudaGetLastError();
}

}  // namespace

int64_t bilevel_stats_workspace_size(int64_t n) { return 4 * static_cast<int64_t>(detail::reduction_blocks<float>(n)); }

cudaError_t bilevel_stats(const float* g_outer, const float* g_inner, int64_t n, float* workspace, float* stats,
                          cudaStream_t stream) {
  return stats_impl(g_outer, g_inner, n, workspace, stats, stream);
}
cudaError_t bilevel_stats(const __nv_bfloat16* g_outer, const __nv_bfloat16* g_inner, int64_t n, float* workspace,
                          float* stats, cudaStream_t stream) {
  return stats_impl(g_outer, g_inner, n, workspace, stats, stream);
}
cudaError_t bilevel_stats(const __half* g_outer, const __half* g_inner, int64_t n, float* workspace, float* stats,
                          cudaStream_t stream) {
  return stats_impl(g_outer, g_inner, n, workspace, stats, stream);
}

cudaError_t bilevel_apply(const float* g_outer, const float* g_inner, const float* stats, int rule, float eta,
                          float* out, float* result, int64_t n, cudaStream_t stream) {
  return apply_impl(g_outer, g_inner, stats, rule, eta, out, result, n, stream);
}
cudaError_t bilevel_apply(const __nv_bfloat16* g_outer, const __nv_bfloat16* g_inner, const float* stats, int rule,
                          float eta, __nv_bfloat16* out, float* result, int64_t n, cudaStream_t stream) {
  return apply_impl(g_outer, g_inner, stats, rule, eta, out, result, n, stream);
}
cudaError_t bilevel_apply(const __half* g_outer, const __half* g_inner, const float* stats, int rule, float eta,
                          __half* out, float* result, int64_t n, cudaStream_t stream) {
  return apply_impl(g_outer, g_inner, stats, rule, eta, out, result, n, stream);
}

}  // namespace cuda
}  // namespace fastunlearn
