// EMA-Sink fold arithmetic shared by the CPU and CUDA kernels (SPEC §2.2):
//   acc <- alpha*acc + (1-alpha)*x
// In reference-rounding mode (accumulator stored in a 16-bit type) each product and the sum are rounded to
// that type, exactly as `alpha * sink + (1 - alpha) * evicted` on bf16 tensors rounds. `Round` is the
// backend's round-to-storage-type-and-back (cpu::Round<A> / cuda::Round<A>), the only part that differs.
#pragma once
#include "common.h"

namespace rfrt {

#if defined(__CUDACC__)
#pragma nv_exec_check_disable
#endif
template <typename Round>
RFRT_HD float ema(float acc, float x, float alpha, float one_minus_alpha, bool round_like_reference) {
  if (!round_like_reference) return alpha * acc + one_minus_alpha * x;
  return Round::apply(Round::apply(alpha * acc) + Round::apply(one_minus_alpha * x));
}

}  // namespace rfrt
