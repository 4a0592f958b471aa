// dual_noise_loss on the CPU: both batch halves' mean squared errors in one read of pred and target, and the
// gradient of both in one read + one write.
#include "kernels.h"

#include "../checks.h"
#include "dispatch.h"
#include "simd_avx2.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

namespace fastunlearn {
namespace cpu {
namespace {

// Number of independent fp32 accumulators: breaks the add dependency chain and is a whole number of SIMD
// registers, so -O3 vectorises the inner loop without reassociating (no -ffast-math needed).
constexpr int kLanes = 16;

// sum_i (p[i] - t[i])^2 over n elements, fp32 lanes combined in a fixed tree.
template <typename T>
float squared_diff_sum(const T* __restrict__ p, const T* __restrict__ t, int64_t n) {
  float acc[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      const float d = static_cast<float>(p[i + k]) - static_cast<float>(t[i + k]);
      acc[k] += d * d;
    }
  }
  for (int k = 0; i < n; ++i, ++k) {
    const float d = static_cast<float>(p[i]) - static_cast<float>(t[i]);
    acc[k] += d * d;
  }
  for (int width = kLanes / 2; width > 0; width /= 2) {
    for (int k = 0; k < width; ++k) acc[k] += acc[k + width];
  }
  return acc[0];
}

// g[i] = (p[i] - t[i]) * scale, where scale = 2 * dL/dloss_side / count_side.
template <typename T>
void scaled_diff(const T* __restrict__ p, const T* __restrict__ t, T* __restrict__ g, int64_t n, float scale) {
  for (int64_t i = 0; i < n; ++i) {
    g[i] = static_cast<T>((static_cast<float>(p[i]) - static_cast<float>(t[i])) * scale);
  }
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

// (loss_forget, loss_retain) = (mean((pred - target)[:n_forget]^2), mean((pred - target)[n_forget:]^2)),
// an empty side giving 0. fp32 per-chunk sums, fp64 sum of the chunk partials in chunk order.
at::Tensor dual_noise_loss_forward(const at::Tensor& pred, const at::Tensor& target, int64_t n_forget) {
  check_dual_noise_loss(pred, target, n_forget, "dual_noise_loss_forward");
  const int64_t n = pred.numel();
  const int64_t batch = pred.size(0);
  const int64_t split = batch == 0 ? 0 : n_forget * (n / batch);
  // Chunks never straddle the forget/retain boundary: chunks [0, n_chunks_f) cover the forget rows.
  const int64_t n_chunks_f = ceil_div(split, kChunk);
  const int64_t n_chunks = n_chunks_f + ceil_div(n - split, kChunk);
  std::vector<float> partial(static_cast<size_t>(n_chunks));

  dispatch_float_types(pred.scalar_type(), "dual_noise_loss_forward", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    const scalar_t* p = pred.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    const bool avx2 = use_avx2();
    at::parallel_for(0, n_chunks, kGrainChunks, [&](int64_t begin, int64_t end) {
      for (int64_t c = begin; c < end; ++c) {
        const int64_t lo = c < n_chunks_f ? c * kChunk : split + (c - n_chunks_f) * kChunk;
        const int64_t hi = std::min(lo + kChunk, c < n_chunks_f ? split : n);
#if FASTUNLEARN_HAVE_AVX2_PATH
        if (avx2) {
          partial[c] = avx2::squared_diff_sum(p + lo, t + lo, hi - lo);
          continue;
        }
#endif
        partial[c] = squared_diff_sum(p + lo, t + lo, hi - lo);
      }
    });
  });

  double sum_f = 0.0, sum_r = 0.0;
  for (int64_t c = 0; c < n_chunks_f; ++c) sum_f += partial[c];
  for (int64_t c = n_chunks_f; c < n_chunks; ++c) sum_r += partial[c];
  at::Tensor out = at::empty({2}, pred.options().dtype(at::kFloat));
  float* o = out.data_ptr<float>();
  o[0] = split > 0 ? static_cast<float>(sum_f / static_cast<double>(split)) : 0.0f;
  o[1] = n - split > 0 ? static_cast<float>(sum_r / static_cast<double>(n - split)) : 0.0f;
  return out;
}

// grad_pred = 2 * (pred - target) * g_side / count_side, g = grad_losses = (dL/dloss_forget, dL/dloss_retain),
// count_side = rows_side * elements_per_row. One read of pred and target, one write of the gradient.
at::Tensor dual_noise_loss_backward(const at::Tensor& pred, const at::Tensor& target, int64_t n_forget,
                                    const at::Tensor& grad_losses) {
  check_dual_noise_loss(pred, target, n_forget, "dual_noise_loss_backward");
  check_grad_losses(grad_losses, pred, "dual_noise_loss_backward");
  const int64_t n = pred.numel();
  const int64_t batch = pred.size(0);
  const int64_t split = batch == 0 ? 0 : n_forget * (n / batch);
  const float* g = grad_losses.const_data_ptr<float>();
  const float scale_f = split > 0 ? 2.0f * g[0] / static_cast<float>(split) : 0.0f;
  const float scale_r = n - split > 0 ? 2.0f * g[1] / static_cast<float>(n - split) : 0.0f;
  at::Tensor grad = at::empty_like(pred);

  dispatch_float_types(pred.scalar_type(), "dual_noise_loss_backward", [&](auto tag) {
    using scalar_t = typename decltype(tag)::type;
    const scalar_t* p = pred.const_data_ptr<scalar_t>();
    const scalar_t* t = target.const_data_ptr<scalar_t>();
    scalar_t* out = grad.data_ptr<scalar_t>();
    const bool avx2 = use_avx2();
    at::parallel_for(0, n, kGrainChunks * kChunk, [&](int64_t begin, int64_t end) {
      const int64_t mid = std::min(std::max(begin, split), end);
#if FASTUNLEARN_HAVE_AVX2_PATH
      if (avx2) {
        avx2::scaled_diff(p + begin, t + begin, out + begin, mid - begin, scale_f);
        avx2::scaled_diff(p + mid, t + mid, out + mid, end - mid, scale_r);
        return;
      }
#endif
      scaled_diff(p + begin, t + begin, out + begin, mid - begin, scale_f);
      scaled_diff(p + mid, t + mid, out + mid, end - mid, scale_r);
    });
  });
  return grad;
}

}  // namespace cpu
}  // namespace fastunlearn
