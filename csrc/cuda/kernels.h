// Launchers of the fastunlearn CUDA kernels. Plain CUDA: raw device pointers, element counts and a stream in,
// a cudaError_t out (the launch status; kernels run asynchronously on `stream`). No torch types, so the .cu
// files compile with `nvcc -c` alone; ops_cuda_launch.cpp adapts torch Tensors to these calls.
//
// Every pointer is device memory. Reductions are two-stage and deterministic: a grid whose size depends only
// on the element count writes per-block fp32 partials into `workspace`, then one block sums them in a fixed
// order (in fp64). No atomics, so repeated runs give bitwise-identical results.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fastunlearn {
namespace cuda {

// Floats of workspace the reductions need (at least 1).
int64_t dual_noise_loss_workspace_size(int64_t n, int64_t split);
int64_t bilevel_stats_workspace_size(int64_t n);

// out[0..1] = (mean((pred-target)^2) over elements [0, split), same over [split, n)); an empty side gives 0.
// split = n_forget * elements_per_row.
cudaError_t dual_noise_loss_forward(const float* pred, const float* target, int64_t n, int64_t split,
                                    float* workspace, float* out, cudaStream_t stream);
cudaError_t dual_noise_loss_forward(const __nv_bfloat16* pred, const __nv_bfloat16* target, int64_t n,
                                    int64_t split, float* workspace, float* out, cudaStream_t stream);
cudaError_t dual_noise_loss_forward(const __half* pred, const __half* target, int64_t n, int64_t split,
                                    float* workspace, float* out, cudaStream_t stream);

// grad[i] = 2 * (pred[i] - target[i]) * g_side / count_side, g = grad_losses[0] (i < split) or grad_losses[1],
// read on the device; count_forget = split, count_retain = n - split.
cudaError_t dual_noise_loss_backward(const float* pred, const float* target, int64_t n, int64_t split,
                                     const float* grad_losses, float* grad, cudaStream_t stream);
cudaError_t dual_noise_loss_backward(const __nv_bfloat16* pred, const __nv_bfloat16* target, int64_t n,
                                     int64_t split, const float* grad_losses, __nv_bfloat16* grad,
                                     cudaStream_t stream);
cudaError_t dual_noise_loss_backward(const __half* pred, const __half* target, int64_t n, int64_t split,
                                     const float* grad_losses, __half* grad, cudaStream_t stream);

// stats[0..3] = (<g_outer, g_inner>, ||g_inner||^2, ||g_outer||^2, #i with g_outer[i] or g_inner[i] NaN/Inf).
cudaError_t bilevel_stats(const float* g_outer, const float* g_inner, int64_t n, float* workspace, float* stats,
                          cudaStream_t stream);
cudaError_t bilevel_stats(const __nv_bfloat16* g_outer, const __nv_bfloat16* g_inner, int64_t n, float* workspace,
                          float* stats, cudaStream_t stream);
cudaError_t bilevel_stats(const __half* g_outer, const __half* g_inner, int64_t n, float* workspace, float* stats,
                          cudaStream_t stream);

// lambda from stats (read on the device, see bilevel_lambda.h); out = g_outer + lambda * g_inner when finite,
// else g_outer (skipped when out == g_outer). result[0..1] = (lambda, finite ? 1 : 0). out may equal g_outer.
cudaError_t bilevel_apply(const float* g_outer, const float* g_inner, const float* stats, int rule, float eta,
                          float* out, float* result, int64_t n, cudaStream_t stream);
cudaError_t bilevel_apply(const __nv_bfloat16* g_outer, const __nv_bfloat16* g_inner, const float* stats, int rule,
                          float eta, __nv_bfloat16* out, float* result, int64_t n, cudaStream_t stream);
cudaError_t bilevel_apply(const __half* g_outer, const __half* g_inner, const float* stats, int rule, float eta,
                          __half* out, float* result, int64_t n, cudaStream_t stream);

}  // namespace cuda
}  // namespace fastunlearn
