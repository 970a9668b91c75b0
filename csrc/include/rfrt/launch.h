// Launchers: validate a params struct, then dispatch to the CPU or CUDA implementation. Framework-free.
#pragma once
#include <string>
#include "params.h"

namespace rfrt {

void cache_write(const CacheWriteParams& p);
void sink_fold(const SinkFoldParams& p);
void rope_time_rows(const RopeTimeParams& p);
void rope_apply(const RopeApplyParams& p);
void ring_attention(const RingAttentionParams& p);

// Implementations (csrc/cpu/*.cpp, csrc/cuda/*.cu). Callers go through the launchers above.
namespace cpu {
void cache_write(const CacheWriteParams& p);
void sink_fold(const SinkFoldParams& p);
void rope_time_rows(const RopeTimeParams& p);
void rope_apply(const RopeApplyParams& p);
void ring_attention(const RingAttentionParams& p);
}  // namespace cpu
namespace cuda {
bool available();  // compiled in (not: a device is present)
std::string architectures();
void cache_write(const CacheWriteParams& p);
void sink_fold(const SinkFoldParams& p);
void rope_time_rows(const RopeTimeParams& p);
void rope_apply(const RopeApplyParams& p);
void ring_attention(const RingAttentionParams& p);
}  // namespace cuda

}  // namespace rfrt
