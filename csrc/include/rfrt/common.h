// Framework-free basics shared by the CPU and CUDA implementations: no torch, no pybind11 here.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define RFRT_HD __host__ __device__ __forceinline__
#else
#define RFRT_HD inline
#endif

namespace rfrt {

// Element types the kernels accept. The numbering is part of the binding ABI (python/rfrt/ops.py mirrors it).
enum class DType : int32_t { F32 = 0, BF16 = 1, F16 = 2 };

// Where the pointers of one call live.
enum class Device : int32_t { CPU = 0, CUDA = 1 };

RFRT_HD int64_t dtype_size(DType t) { return t == DType::F32 ? 4 : 2; }

}  // namespace rfrt
