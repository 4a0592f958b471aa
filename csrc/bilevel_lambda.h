// The bi-level multiplier lambda, formed from the reduced statistics. Shared verbatim by the C++ CPU kernel
// and the CUDA apply kernel (it includes only <math.h>, so nvcc compiles it without torch headers) so both
// backends make the same decision from the same stats.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define FU_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FU_HOST_DEVICE inline
#endif

namespace fastunlearn {

// x - x is 0 for every finite x and NaN for +-Inf and NaN; this stays correct without -ffast-math and needs no
// isfinite overload (which differs between the host and device compilers).
FU_HOST_DEVICE bool fu_isfinite(float x) { return (x - x) == 0.0f; }

struct BilevelLambda {
  float lam;
  bool finite;
};

// stats = (dot = <g_outer, g_inner>, nn_i = ||g_inner||^2, nn_o = ||g_outer||^2, nonfinite_count).
//   finite = nonfinite_count == 0 and dot, nn_i, nn_o finite;  lam = 0 if !finite or nn_i == 0, else
//   rule 0 (bome):   lam = max(0, (eta * nn_i - dot) / nn_i)
//   rule 1 (cosine): lam = max(0, eta - cos), cos = dot / (sqrt(nn_o) * sqrt(nn_i)) (0 when the denominator is 0)
//   rule 2 (fixed):  lam = eta
FU_HOST_DEVICE BilevelLambda bilevel_lambda(float dot, float nn_i, float nn_o, float nonfinite, int rule,
                                            float eta) {
  const bool finite = nonfinite == 0.0f && fu_isfinite(dot) && fu_isfinite(nn_i) && fu_isfinite(nn_o);
  float lam = 0.0f;
  if (finite && nn_i != 0.0f) {
    if (rule == 0) {
      lam = (eta * nn_i - dot) / nn_i;
    } else if (rule == 1) {
      const float denom = sqrtf(nn_o) * sqrtf(nn_i);
      const float cos_sim = denom > 0.0f ? dot / denom : 0.0f;
      lam = eta - cos_sim;
    } else {
      lam = eta;
    }
    if (rule != 2) lam = lam > 0.0f ? lam : 0.0f;
  }
  return {lam, finite};
}

}  // namespace fastunlearn
