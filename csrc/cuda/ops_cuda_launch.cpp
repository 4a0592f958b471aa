// Torch glue for the CUDA kernels: validates the Tensors, allocates outputs and reduction workspaces on the
// current stream's device (caching allocator), calls the plain-CUDA launchers in kernels.h and checks the
// launch status. Registered for the CUDA dispatch key; compiled only in CUDA builds (FASTUNLEARN_WITH_CUDA).
// Nothing here reads device memory from the host: lambda and the loss scales stay on the device.
#include "../checks.h"
#include "kernels.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>
#include <torch/library.h>

namespace fastunlearn {
namespace cuda {
namespace {

// torch's element types -> the CUDA types the launchers take (same size and bit layout).
template <typename T>
struct CudaType;
template <>
struct CudaType<float> {
  using type = float;
};
template <>
struct CudaType<c10::Half> {
  using type = __half;
};
template <>
struct CudaType<c10::BFloat16> {
  using type = __nv_bfloat16;
};

template <typename T>
const typename CudaType<T>::type* cuda_ptr(const at::Tensor& t) {
  return reinterpret_cast<const typename CudaType<T>::type*>(t.const_data_ptr<T>());
}
template <typename T>
typename CudaType<T>::type* cuda_mutable_ptr(at::Tensor& t) {
  return reinterpret_cast<typename CudaType<T>::type*>(t.data_ptr<T>());
}

template <typename Fn>
void dispatch(c10::ScalarType st, const char* op, Fn&& fn) {
  switch (st) {
    case at::kFloat:
      fn(float{});
      break;
    case at::kBFloat16:
      fn(c10::BFloat16{});
      break;
    case at::kHalf:
      fn(c10::Half{});
      break;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", st, " (expected float32, bfloat16 or float16)");
  }
}

void check_cuda(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t.device());
}

int64_t split_of(const at::Tensor& pred, int64_t n_forget) {
  const int64_t batch = pred.size(0);
  return batch == 0 ? 0 : n_forget * (pred.numel() / batch);
}

at::Tensor dual_noise_loss_forward_cuda(const at::Tensor& pred, const at::Tensor& target, int64_t n_forget) {
  const char* op = "dual_noise_loss_forward";
  check_dual_noise_loss(pred, target, n_forget, op);
  check_cuda(pred, op, "pred");
  const c10::cuda::CUDAGuard guard(pred.device());
  const int64_t n = pred.numel();
  const int64_t split = split_of(pred, n_forget);
  const auto f32 = pred.options().dtype(at::kFloat);
  at::Tensor out = at::empty({2}, f32);
  at::Tensor workspace = at::empty({dual_noise_loss_workspace_size(n, split)}, f32);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(pred.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    C10_CUDA_CHECK(dual_noise_loss_forward(cuda_ptr<T>(pred), cuda_ptr<T>(target), n, split,
                                           workspace.data_ptr<float>(), out.data_ptr<float>(), stream));
  });
  return out;
}

at::Tensor dual_noise_loss_backward_cuda(const at::Tensor& pred, const at::Tensor& target, int64_t n_forget,
                                         const at::Tensor& grad_losses) {
  const char* op = "dual_noise_loss_backward";
  check_dual_noise_loss(pred, target, n_forget, op);
  check_grad_losses(grad_losses, pred, op);
  check_cuda(pred, op, "pred");
  const c10::cuda::CUDAGuard guard(pred.device());
  at::Tensor grad = at::empty_like(pred);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(pred.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    C10_CUDA_CHECK(dual_noise_loss_backward(cuda_ptr<T>(pred), cuda_ptr<T>(target), pred.numel(),
                                            split_of(pred, n_forget), grad_losses.const_data_ptr<float>(),
                                            cuda_mutable_ptr<T>(grad), stream));
  });
  return grad;
}

at::Tensor bilevel_stats_cuda(const at::Tensor& g_outer, const at::Tensor& g_inner) {
  const char* op = "bilevel_stats";
  check_bilevel_pair(g_outer, g_inner, op);
  check_cuda(g_outer, op, "g_outer");
  const c10::cuda::CUDAGuard guard(g_outer.device());
  const int64_t n = g_outer.numel();
  const auto f32 = g_outer.options().dtype(at::kFloat);
  at::Tensor stats = at::empty({4}, f32);
  at::Tensor workspace = at::empty({bilevel_stats_workspace_size(n)}, f32);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(g_outer.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    C10_CUDA_CHECK(bilevel_stats(cuda_ptr<T>(g_outer), cuda_ptr<T>(g_inner), n, workspace.data_ptr<float>(),
                                 stats.data_ptr<float>(), stream));
  });
  return stats;
}

at::Tensor bilevel_apply_cuda(const at::Tensor& g_outer, const at::Tensor& g_inner, const at::Tensor& stats,
                              int64_t rule, double eta, at::Tensor& out) {
  const char* op = "bilevel_apply";
  check_bilevel_apply(g_outer, g_inner, stats, rule, out);
  check_cuda(g_outer, op, "g_outer");
  const c10::cuda::CUDAGuard guard(g_outer.device());
  at::Tensor result = at::empty({2}, g_outer.options().dtype(at::kFloat));
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  dispatch(g_outer.scalar_type(), op, [&](auto tag) {
    using T = decltype(tag);
    C10_CUDA_CHECK(bilevel_apply(cuda_ptr<T>(g_outer), cuda_ptr<T>(g_inner), stats.const_data_ptr<float>(),
                                 static_cast<int>(rule), static_cast<float>(eta), cuda_mutable_ptr<T>(out),
                                 result.data_ptr<float>(), g_outer.numel(), stream));
  });
  return result;
}

}  // namespace
}  // namespace cuda
}  // namespace fastunlearn

TORCH_LIBRARY_IMPL(fastunlearn, CUDA, m) {
  m.impl("dual_noise_loss_forward", &fastunlearn::cuda::dual_noise_loss_forward_cuda);
  m.impl("dual_noise_loss_backward", &fastunlearn::cuda::dual_noise_loss_backward_cuda);
  m.impl("bilevel_stats", &fastunlearn::cuda::bilevel_stats_cuda);
  m.impl("bilevel_apply", &fastunlearn::cuda::bilevel_apply_cuda);
}
