// Device helpers shared by the fastunlearn CUDA kernels: dtype conversion, 16-byte vector loads/stores and a
// deterministic block reduction.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace fastunlearn {
namespace cuda {
namespace detail {

constexpr int kThreads = 256;  // threads per block of every kernel (the block reductions assume a multiple of 32)

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Elements per 16-byte vector: 4 floats, 8 halves / bfloat16s.
template <typename T>
struct Vec {
  static constexpr int kWidth = 16 / static_cast<int>(sizeof(T));
};

// kReadOnly loads go through the read-only data cache (__ldg): only for buffers no thread writes during the
// kernel, so not for g_outer when it is updated in place.
template <typename T, bool kReadOnly = true>
__device__ __forceinline__ void load_vec(const T* p, float (&v)[Vec<T>::kWidth]) {
  const uint4 raw = kReadOnly ? __ldg(reinterpret_cast<const uint4*>(p)) : *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int k = 0; k < Vec<T>::kWidth; ++k) v[k] = to_float(e[k]);
}

template <typename T>
__device__ __forceinline__ void store_vec(T* p, const float (&v)[Vec<T>::kWidth]) {
  uint4 raw;
  T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
  for (int k = 0; k < Vec<T>::kWidth; ++k) e[k] = from_float<T>(v[k]);
  *reinterpret_cast<uint4*>(p) = raw;
}

inline bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

// Sum of v over the block, valid in thread 0. Fixed shuffle tree, so deterministic for a given blockDim.
// Ends with a barrier so consecutive calls may reuse the shared buffer.
template <typename Acc>
__device__ __forceinline__ Acc block_sum(Acc v) {
  __shared__ Acc warp_sums[32];
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int n_warps = static_cast<int>(blockDim.x) >> 5;
  v = threadIdx.x < n_warps ? warp_sums[threadIdx.x] : Acc(0);
  if (warp == 0) {
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  }
  __syncthreads();
  return v;
}

// Blocks of a reduction over `len` elements: about 4 vectors per thread per block, capped; a function of len
// only (never of the device), which is what makes the result reproducible everywhere.
template <typename T>
inline int reduction_blocks(int64_t len) {
  constexpr int64_t kPerBlock = static_cast<int64_t>(kThreads) * Vec<T>::kWidth * 4;
  constexpr int64_t kMaxBlocks = 1024;
  const int64_t blocks = (len + kPerBlock - 1) / kPerBlock;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

// Blocks of a grid-stride elementwise kernel over `len` elements.
template <typename T>
inline int elementwise_blocks(int64_t len) {
  constexpr int64_t kPerBlock = static_cast<int64_t>(kThreads) * Vec<T>::kWidth;
  constexpr int64_t kMaxBlocks = 8192;
  const int64_t blocks = (len + kPerBlock - 1) / kPerBlock;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > kMaxBlocks ? kMaxBlocks : blocks));
}

}  // namespace detail
}  // namespace cuda
}  // namespace fastunlearn
