// C++ CPU implementations of the fastunlearn ops (registered for the CPU dispatch key in ops.cpp).
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fastunlearn {
namespace cpu {

// Reductions split the data into chunks of this many elements, whatever the thread count: each chunk gets its
// own fp32 partial and the partials are summed in chunk order, so results are bitwise identical for 1 or N
// threads. 32K elements (128 KiB of fp32 per input) keeps a chunk's two inputs in L2 and amortises the
// per-chunk bookkeeping.
constexpr int64_t kChunk = 32768;

// Fewest chunks worth handing to the thread pool (the parallel_for grain, in chunks). Below it the work runs on
// the calling thread: waking OpenMP workers costs microseconds on an idle machine and milliseconds on a loaded
// one, far more than a few chunks of arithmetic (measured: 11 ms for a 4K-element loss on a busy 2-core box).
constexpr int64_t kGrainChunks = 4;

at::Tensor dual_noise_loss_forward(const at::Tensor& pred, const at::Tensor& target, int64_t n_forget);
at::Tensor dual_noise_loss_backward(const at::Tensor& pred, const at::Tensor& target, int64_t n_forget,
                                    const at::Tensor& grad_losses);
at::Tensor bilevel_stats(const at::Tensor& g_outer, const at::Tensor& g_inner);
at::Tensor bilevel_apply(const at::Tensor& g_outer, const at::Tensor& g_inner, const at::Tensor& stats,
                         int64_t rule, double eta, at::Tensor& out);

}  // namespace cpu
}  // namespace fastunlearn
