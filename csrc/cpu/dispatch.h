// Dispatch over exactly the three dtypes the ops accept (float32, bfloat16, float16). AT_DISPATCH_* would also
// instantiate double, which the ops reject anyway: this keeps the JIT build smaller and faster.
#pragma once

#include <c10/core/ScalarType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Exception.h>
#include <c10/util/Half.h>

namespace fastunlearn {
namespace cpu {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls fn(TypeTag<scalar>{}) for the scalar type st; fn reads the type as typename decltype(tag)::type.
template <typename Fn>
void dispatch_float_types(c10::ScalarType st, const char* op, Fn&& fn) {
  switch (st) {
    case c10::ScalarType::Float:
      fn(TypeTag<float>{});
      break;
    case c10::ScalarType::BFloat16:
      fn(TypeTag<c10::BFloat16>{});
      break;
    case c10::ScalarType::Half:
      fn(TypeTag<c10::Half>{});
      break;
    default:
      TORCH_CHECK(false, op, ": unsupported dtype ", st, " (expected float32, bfloat16 or float16)");
  }
}

}  // namespace cpu
}  // namespace fastunlearn
