// Built instead of the .cu sources when no CUDA compiler was found: the launchers refuse CUDA pointers.
#include <stdexcept>

#include "rfrt/launch.h"

namespace rfrt::cuda {
namespace {
[[noreturn]] void missing() { throw std::runtime_error("rfrt: built without CUDA kernels"); }
}  // namespace
bool available() { return false; }
std::string architectures() { return ""; }
void cache_write(const CacheWriteParams&) { missing(); }
void sink_fold(const SinkFoldParams&) { missing(); }
void rope_apply(const RopeApplyParams&) { missing(); }
void rope_time_rows(const RopeTimeParams&) { missing(); }
void ring_attention(const RingAttentionParams&) { missing(); }
}  // namespace rfrt::cuda
