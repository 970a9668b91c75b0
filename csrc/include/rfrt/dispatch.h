// dtype dispatch shared by the CPU and CUDA launchers: a runtime DType picks a compile-time element type.
// Each backend names its own element types (cpu::bf16 vs __nv_bfloat16), so the types are parameters:
//   dispatch<float, bf16, f16>(p.dtype, "cache", [&](auto tag) { using T = typename decltype(tag)::type; ... });
#pragma once
#include <stdexcept>
#include <string>

#include "common.h"

namespace rfrt {

template <typename T>
struct Tag {
  using type = T;
};

template <typename F32, typename BF16, typename F16, typename Fn>
void dispatch(DType t, const char* what, Fn&& fn) {
  switch (t) {
    case DType::F32: fn(Tag<F32>{}); return;
    case DType::BF16: fn(Tag<BF16>{}); return;
    case DType::F16: fn(Tag<F16>{}); return;
  }
  throw std::invalid_argument(std::string("rfrt: unsupported ") + what + " dtype");
}

}  // namespace rfrt
