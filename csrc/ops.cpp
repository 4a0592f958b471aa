// The fastunlearn._C extension: op schemas (TORCH_LIBRARY), the CPU and Meta implementations, and a tiny Python
// module so `import fastunlearn._C` loads the library and runs the registrations. The CUDA implementations
// register themselves from cuda/ops_cuda_launch.cpp, compiled only in CUDA builds (FASTUNLEARN_WITH_CUDA).
#include <Python.h>

#include "checks.h"
#include "cpu/kernels.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

namespace fastunlearn {
namespace {

// Meta ("fake") kernels: validate like the real ones and give output shapes/dtypes, so the ops trace under
// torch.compile and FakeTensor without running anything.
at::Tensor dual_noise_loss_forward_meta(const at::Tensor& pred, const at::Tensor& target, int64_t n_forget) {
  check_dual_noise_loss(pred, target, n_forget, "dual_noise_loss_forward");
  return at::empty({2}, pred.options().dtype(at::kFloat));
}

at::Tensor dual_noise_loss_backward_meta(const at::Tensor& pred, const at::Tensor& target, int64_t n_forget,
                                         const at::Tensor& grad_losses) {
  check_dual_noise_loss(pred, target, n_forget, "dual_noise_loss_backward");
  check_grad_losses(grad_losses, pred, "dual_noise_loss_backward");
  return at::empty_like(pred);
}

at::Tensor bilevel_stats_meta(const at::Tensor& g_outer, const at::Tensor& g_inner) {
  check_bilevel_pair(g_outer, g_inner, "bilevel_stats");
  return at::empty({4}, g_outer.options().dtype(at::kFloat));
}

at::Tensor bilevel_apply_meta(const at::Tensor& g_outer, const at::Tensor& g_inner, const at::Tensor& stats,
                              int64_t rule, double eta, at::Tensor& out) {
  (void)eta;
  check_bilevel_apply(g_outer, g_inner, stats, rule, out);
  return at::empty({2}, g_outer.options().dtype(at::kFloat));
}

}  // namespace
}  // namespace fastunlearn

TORCH_LIBRARY(fastunlearn, m) {
  m.def("dual_noise_loss_forward(Tensor pred, Tensor target, int n_forget) -> Tensor");
  m.def("dual_noise_loss_backward(Tensor pred, Tensor target, int n_forget, Tensor grad_losses) -> Tensor");
  m.def("bilevel_stats(Tensor g_outer, Tensor g_inner) -> Tensor");
  m.def("bilevel_apply(Tensor g_outer, Tensor g_inner, Tensor stats, int rule, float eta, Tensor(a!) out) -> Tensor");
}

TORCH_LIBRARY_IMPL(fastunlearn, CPU, m) {
  m.impl("dual_noise_loss_forward", &fastunlearn::cpu::dual_noise_loss_forward);
  m.impl("dual_noise_loss_backward", &fastunlearn::cpu::dual_noise_loss_backward);
  m.impl("bilevel_stats", &fastunlearn::cpu::bilevel_stats);
  m.impl("bilevel_apply", &fastunlearn::cpu::bilevel_apply);
}

TORCH_LIBRARY_IMPL(fastunlearn, Meta, m) {
  m.impl("dual_noise_loss_forward", &fastunlearn::dual_noise_loss_forward_meta);
  m.impl("dual_noise_loss_backward", &fastunlearn::dual_noise_loss_backward_meta);
  m.impl("bilevel_stats", &fastunlearn::bilevel_stats_meta);
  m.impl("bilevel_apply", &fastunlearn::bilevel_apply_meta);
}

// ---- Python module -----------------------------------------------------------------------------------------
// Plain CPython API rather than pybind11: the module only needs to exist (importing it runs the registrations
// above) and to say whether CUDA kernels were compiled in; skipping torch/extension.h roughly halves the JIT
// build time of this file.

namespace {

PyObject* has_cuda(PyObject* /*self*/, PyObject* /*args*/) {
#ifdef FASTUNLEARN_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyMethodDef kMethods[] = {
    {"has_cuda", has_cuda, METH_NOARGS, "has_cuda() -> bool: whether this build contains the CUDA kernels."},
    {nullptr, nullptr, 0, nullptr},
};

#define FU_STR2(x) #x
#define FU_STR(x) FU_STR2(x)
#define FU_CONCAT2(a, b) a##b
#define FU_CONCAT(a, b) FU_CONCAT2(a, b)

// The module name must match the file name: "_C" in the ahead-of-time build (fastunlearn._C), the JIT name
// otherwise; torch's build passes it as TORCH_EXTENSION_NAME in both cases.
PyModuleDef kModule = {
    PyModuleDef_HEAD_INIT,
    FU_STR(TORCH_EXTENSION_NAME),
    "fastunlearn C++/CUDA kernels; the ops are torch.ops.fastunlearn.*",
    -1,
    kMethods,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC FU_CONCAT(PyInit_, TORCH_EXTENSION_NAME)(void) { return PyModule_Create(&kModule); }
