// Input validation shared by the CPU, CUDA and Meta implementations, so every backend rejects the same
// inputs with the same message (the Python layer relies on these for user-facing errors).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

namespace fastunlearn {

inline void check_float_dtype(const at::Tensor& t, const char* op, const char* name) {
  const auto st = t.scalar_type();
  TORCH_CHECK(st == at::kFloat || st == at::kBFloat16 || st == at::kHalf, op, ": ", name,
              " must be float32, bfloat16 or float16, got ", st);
}

inline void check_pair(const at::Tensor& a, const at::Tensor& b, const char* op, const char* na,
                       const char* nb) {
  check_float_dtype(a, op, na);
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), op, ": ", na, " and ", nb,
              " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), op, ": ", na, " and ", nb, " must be on the same device, got ",
              a.device(), " and ", b.device());
  TORCH_CHECK(a.is_contiguous(), op, ": ", na, " must be contiguous (call .contiguous() first)");
  TORCH_CHECK(b.is_contiguous(), op, ": ", nb, " must be contiguous (call .contiguous() first)");
}

// pred/target: [B, ...], same shape, dtype and device, contiguous; 0 <= n_forget <= B.
inline void check_dual_noise_loss(const at::Tensor& pred, const at::Tensor& target, int64_t n_forget,
                                  const char* op) {
  TORCH_CHECK(pred.dim() >= 1, op, ": pred must have a batch dimension (dim >= 1), got a 0-d tensor");
  TORCH_CHECK(pred.sizes() == target.sizes(), op, ": pred and target must have the same shape, got ",
              pred.sizes(), " and ", target.sizes());
  check_pair(pred, target, op, "pred", "target");
  const int64_t batch = pred.size(0);
  TORCH_CHECK(n_forget >= 0 && n_forget <= batch, op, ": n_forget must be in [0, ", batch,
              "] (the batch size), got ", n_forget);
}

inline void check_grad_losses(const at::Tensor& grad_losses, const at::Tensor& pred, const char* op) {
  TORCH_CHECK(grad_losses.scalar_type() == at::kFloat && grad_losses.numel() == 2, op,
              ": grad_losses must be a float32 tensor of 2 elements (dL/dloss_forget, dL/dloss_retain), got ",
              grad_losses.scalar_type(), " of shape ", grad_losses.sizes());
  TORCH_CHECK(grad_losses.device() == pred.device(), op, ": grad_losses must be on pred's device ",
              pred.device(), ", got ", grad_losses.device());
  TORCH_CHECK(grad_losses.is_contiguous(), op, ": grad_losses must be contiguous");
}

// g_outer/g_inner: 1-D, same numel, dtype and device, contiguous.
inline void check_bilevel_pair(const at::Tensor& g_outer, const at::Tensor& g_inner, const char* op) {
  TORCH_CHECK(g_outer.dim() == 1 && g_inner.dim() == 1, op,
              ": g_outer and g_inner must be 1-D (flat gradient buffers), got shapes ", g_outer.sizes(),
              " and ", g_inner.sizes());
  TORCH_CHECK(g_outer.numel() == g_inner.numel(), op, ": g_outer and g_inner must have the same numel, got ",
              g_outer.numel(), " and ", g_inner.numel());
  check_pair(g_outer, g_inner, op, "g_outer", "g_inner");
}

enum class BilevelRule : int64_t { kBome = 0, kCosine = 1, kFixed = 2 };

inline void check_bilevel_apply(const at::Tensor& g_outer, const at::Tensor& g_inner, const at::Tensor& stats,
                                int64_t rule, const at::Tensor& out) {
  const char* op = "bilevel_apply";
  check_bilevel_pair(g_outer, g_inner, op);
  TORCH_CHECK(stats.scalar_type() == at::kFloat && stats.dim() == 1 && stats.numel() == 4, op,
              ": stats must be the float32 [4] tensor from bilevel_stats (dot, ||g_inner||^2, ||g_outer||^2, "
              "nonfinite_count), got ", stats.scalar_type(), " of shape ", stats.sizes());
  TORCH_CHECK(stats.device() == g_outer.device(), op, ": stats must be on g_outer's device ", g_outer.device(),
              ", got ", stats.device());
  TORCH_CHECK(stats.is_contiguous(), op, ": stats must be contiguous");
  TORCH_CHECK(rule >= 0 && rule <= 2, op, ": rule must be 0 (bome), 1 (cosine) or 2 (fixed), got ", rule);
  TORCH_CHECK(out.scalar_type() == g_outer.scalar_type() && out.numel() == g_outer.numel() && out.dim() == 1,
              op, ": out must be 1-D with g_outer's dtype and numel (", g_outer.scalar_type(), ", ",
              g_outer.numel(), "), got ", out.scalar_type(), " of shape ", out.sizes());
  TORCH_CHECK(out.device() == g_outer.device(), op, ": out must be on g_outer's device");
  TORCH_CHECK(out.is_contiguous(), op, ": out must be contiguous");
}

}  // namespace fastunlearn
