// dual_noise_loss on CUDA: both batch halves' mean squared errors in one read of pred and target (two-stage
// deterministic reduction), and the gradient of both halves in one read + one write.
#include "common.cuh"
#include "kernels.h"

namespace fastunlearn {
namespace cuda {
namespace {

using detail::kThreads;
using detail::Vec;

// This thread's fp32 sum of (p - t)^2 over [lo, hi), the range being walked by `n_blocks` blocks starting at
// `block`. 16-byte vector loads over the aligned middle when pred and target share their misalignment; scalar
// head and tail.
template <typename T>
__device__ float thread_sq_diff(const T* __restrict__ p, const T* __restrict__ t, int64_t lo, int64_t hi,
                                int block, int n_blocks) {
  constexpr int W = Vec<T>::kWidth;
  const int64_t tid = static_cast<int64_t>(block) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(n_blocks) * kThreads;
  const int64_t len = hi - lo;
  p += lo;
  t += lo;
  const uintptr_t mis_p = reinterpret_cast<uintptr_t>(p) & 15u;
  const uintptr_t mis_t = reinterpret_cast<uintptr_t>(t) & 15u;
  int64_t head = len;  // scalar everything unless the two inputs can be vector-loaded together
  if (mis_p == mis_t && mis_p % sizeof(T) == 0) {
    head = static_cast<int64_t>(((16u - mis_p) & 15u) / sizeof(T));
    if (head > len) head = len;
  }
  float acc0 = 0.0f, acc1 = 0.0f;
  for (int64_t i = tid; i < head; i += stride) {
    const float d = detail::to_float(p[i]) - detail::to_float(t[i]);
    acc0 += d * d;
  }
  const int64_t n_vec = (len - head) / W;
  for (int64_t v = tid; v < n_vec; v += stride) {
    float a[W], b[W];
    detail::load_vec(p + head + v * W, a);
    detail::load_vec(t + head + v * W, b);
#pragma unroll
    for (int k = 0; k < W; k += 2) {
      const float d0 = a[k] - b[k];
      const float d1 = a[k + 1] - b[k + 1];
      acc0 += d0 * d0;
      acc1 += d1 * d1;
    }
  }
  for (int64_t i = head + n_vec * W + tid; i < len; i += stride) {
    const float d = detail::to_float(p[i]) - detail::to_float(t[i]);
    acc1 += d * d;
  }
  return acc0 + acc1;
}

// Stage 1: blocks [0, blocks_f) reduce the forget range [0, split), the rest the retain range [split, n); one
// partial per block.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    sq_diff_partials_kernel(const T* __restrict__ pred, const T* __restrict__ target, int64_t split, int64_t n,
                            int blocks_f, float* __restrict__ partials) {
  const bool forget = static_cast<int>(blockIdx.x) < blocks_f;
  const int64_t lo = forget ? 0 : split;
  const int64_t hi = forget ? split : n;
  const int block = forget ? static_cast<int>(blockIdx.x) : static_cast<int>(blockIdx.x) - blocks_f;
  const int n_blocks = forget ? blocks_f : static_cast<int>(gridDim.x) - blocks_f;
  const float sum = detail::block_sum(thread_sq_diff(pred, target, lo, hi, block, n_blocks));
  if (threadIdx.x == 0) partials[blockIdx.x] = sum;
}

// Stage 2 (one block): fp64 sums of each side's partials in a fixed order, divided by the side's count.
__global__ void __launch_bounds__(kThreads)
    dual_noise_loss_finalize_kernel(const float* __restrict__ partials, int blocks_f, int blocks_r, int64_t split,
                                    int64_t n, float* __restrict__ out) {
  for (int side = 0; side < 2; ++side) {
    const int first = side == 0 ? 0 : blocks_f;
    const int count = side == 0 ? blocks_f : blocks_r;
    double acc = 0.0;
    for (int b = threadIdx.x; b < count; b += kThreads) acc += static_cast<double>(partials[first + b]);
    acc = detail::block_sum(acc);
    if (threadIdx.x == 0) {
      const int64_t elems = side == 0 ? split : n - split;
      out[side] = elems > 0 ? static_cast<float>(acc / static_cast<double>(elems)) : 0.0f;
    }
  }
}

template <typename T, bool kVectorised>
__global__ void __launch_bounds__(kThreads)
    dual_noise_loss_backward_kernel(const T* __restrict__ pred, const T* __restrict__ target, int64_t n,
                                    int64_t split, const float* __restrict__ grad_losses, T* __restrict__ grad) {
  // The scales come from device memory, so the backward never waits on the host (CUDA-graph safe).
  const float scale_f = split > 0 ? 2.0f * __ldg(grad_losses) / static_cast<float>(split) : 0.0f;
  const float scale_r = n - split > 0 ? 2.0f * __ldg(grad_losses + 1) / static_cast<float>(n - split) : 0.0f;
  const int64_t tid = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * kThreads;
  int64_t scalar_from = 0;
  if (kVectorised) {
    constexpr int W = Vec<T>::kWidth;
    const int64_t n_vec = n / W;
    for (int64_t v = tid; v < n_vec; v += stride) {
      float a[W], b[W];
      detail::load_vec(pred + v * W, a);
      detail::load_vec(target + v * W, b);
#pragma unroll
      for (int k = 0; k < W; ++k) a[k] = (a[k] - b[k]) * (v * W + k < split ? scale_f : scale_r);
      detail::store_vec(grad + v * W, a);
    }
    scalar_from = n_vec * W;
  }
  for (int64_t i = scalar_from + tid; i < n; i += stride) {
    const float d = detail::to_float(pred[i]) - detail::to_float(target[i]);
    grad[i] = detail::from_float<T>(d * (i < split ? scale_f : scale_r));
  }
}

template <typename T>
void side_blocks(int64_t n, int64_t split, int* blocks_f, int* blocks_r) {
  *blocks_f = split > 0 ? detail::reduction_blocks<T>(split) : 0;
  *blocks_r = n - split > 0 ? detail::reduction_blocks<T>(n - split) : 0;
}

template <typename T>
cudaError_t forward_impl(const T* pred, const T* target, int64_t n, int64_t split, float* workspace, float* out,
                         cudaStream_t stream) {
  int blocks_f = 0, blocks_r = 0;
  side_blocks<T>(n, split, &blocks_f, &blocks_r);
  if (blocks_f + blocks_r > 0) {
    sq_diff_partials_kernel<T><<<blocks_f + blocks_r, kThreads, 0, stream>>>(pred, target, split, n, blocks_f,
                                                                             workspace);
  }
  dual_noise_loss_finalize_kernel<<<1, kThreads, 0, stream>>>(workspace, blocks_f, blocks_r, split, n, out);
  return cudaGetLastError();
}

template <typename T>
cudaError_t backward_impl(const T* pred, const T* target, int64_t n, int64_t split, const float* grad_losses,
                          T* grad, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const int blocks = detail::elementwise_blocks<T>(n);
  if (detail::aligned16(pred) && detail::aligned16(target) && detail::aligned16(grad)) {
    dual_noise_loss_backward_kernel<T, true><<<blocks, kThreads, 0, stream>>>(pred, target, n, split, grad_losses,
                                                                              grad);
  } else {
    dual_noise_loss_backward_kernel<T, false><<<blocks, kThreads, 0, stream>>>(pred, target, n, split,
                                                                               grad_losses, grad);
  }
  return cudaGetLastError();
}

}  // namespace

int64_t dual_noise_loss_workspace_size(int64_t n, int64_t split) {
  // float needs the most blocks per element (4 per vector vs 8), so its count bounds every dtype's.
  int blocks_f = 0, blocks_r = 0;
  side_blocks<float>(n, split, &blocks_f, &blocks_r);
  return blocks_f + blocks_r > 0 ? blocks_f + blocks_r : 1;
}

cudaError_t dual_noise_loss_forward(const float* pred, const float* target, int64_t n, int64_t split,
                                    float* workspace, float* out, cudaStream_t stream) {
  return forward_impl(pred, target, n, split, workspace, out, stream);
}
cudaError_t dual_noise_loss_forward(const __nv_bfloat16* pred, const __nv_bfloat16* target, int64_t n,
                                    int64_t split, float* workspace, float* out, cudaStream_t stream) {
  return forward_impl(pred, target, n, split, workspace, out, stream);
}
cudaError_t dual_noise_loss_forward(const __half* pred, const __half* target, int64_t n, int64_t split,
                                    float* workspace, float* out, cudaStream_t stream) {
  return forward_impl(pred, target, n, split, workspace, out, stream);
}

cudaError_t dual_noise_loss_backward(const float* pred, const float* target, int64_t n, int64_t split,
                                     const float* grad_losses, float* grad, cudaStream_t stream) {
  return backward_impl(pred, target, n, split, grad_losses, grad, stream);
}
cudaError_t dual_noise_loss_backward(const __nv_bfloat16* pred, const __nv_bfloat16* target, int64_t n,
                                     int64_t split, const float* grad_losses, __nv_bfloat16* grad,
                                     cudaStream_t stream) {
  return backward_impl(pred, target, n, split, grad_losses, grad, stream);
}
cudaError_t dual_noise_loss_backward(const __half* pred, const __half* target, int64_t n, int64_t split,
                                     const float* grad_losses, __half* grad, cudaStream_t stream) {
  return backward_impl(pred, target, n, split, grad_losses, grad, stream);
}

}  // namespace cuda
}  // namespace fastunlearn
