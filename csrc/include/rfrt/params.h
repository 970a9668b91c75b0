// Parameter structs of the cache kernels: raw pointers plus sizes, nothing framework-specific.
//
// Layouts (all contiguous, row-major):
//   kv        [2, layers, batch, window_tokens, heads, head_dim]  cache dtype; [0] = K rotated, [1] = V
//   sink_acc  [2, layers, batch, sink_tokens, heads, head_dim]    acc dtype; unrotated EMA accumulator
//   k, v, x   [batch, chunk_tokens, heads, head_dim]              cache dtype
// Ring K is stored rotated at its absolute frame position (option (b) of SPEC §2.3), so attention is plain
// softmax(QK^T)V over a prefix of the buffer; only the sink is re-rotated, once per chunk, by the fold.
// Positions arrive through a small int64 `cursor` array in device memory so that a captured CUDA graph can
// be replayed for every chunk without re-recording kernel arguments.
#pragma once
#include "common.h"

namespace rfrt {

struct CacheGeometry {
  int64_t layers = 0, batch = 0, heads = 0, head_dim = 0;
  int64_t window_tokens = 0, sink_tokens = 0, tokens_per_frame = 0, grid_w = 0;
  double rope_theta = 10000.0;
};

// Write one chunk's K (rotated at its position) and V into its slots of one layer. When the slots are the
// sink's (chunk 0), the unrotated K/V also seed the EMA accumulator.
// cursor: [slot_token, time_pos] — first physical token of the chunk and the RoPE time position of its
// first frame.
struct CacheWriteParams {
  CacheGeometry g;
  void* kv = nullptr;
  void* sink_acc = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const int64_t* cursor = nullptr;
  int64_t layer = 0, chunk_tokens = 0;
  DType cache_dtype = DType::F32, acc_dtype = DType::F32;
  Device device = Device::CPU;
  uintptr_t stream = 0;
};

// EMA-Sink fold over all layers, in place, one pass:
//   acc <- alpha*acc + (1-alpha)*evicted   (K un-rotated from its stored position first; V as is)
//   kv sink slots <- acc, K rotated to the new sink position.
// cursor: [evicted_slot_token, evicted_time_pos, new_sink_time_pos].
// round_like_reference: acc is in the cache dtype and each product/sum is rounded to it, as the reference's
// bf16 tensor expression does.
struct SinkFoldParams {
  CacheGeometry g;
  void* kv = nullptr;
  void* sink_acc = nullptr;
  const int64_t* cursor = nullptr;
  double alpha = 0.999;
  DType cache_dtype = DType::F32, acc_dtype = DType::F32;
  Device device = Device::CPU;
  uintptr_t stream = 0;
};

// Rotate tokens [batch, tokens, heads, head_dim] (ordered frame, row, column) by Wan RoPE with time positions
// cursor[0] + token / tokens_per_frame. out may alias x.
struct RopeApplyParams {
  const void* x = nullptr;
  void* out = nullptr;
  const int64_t* cursor = nullptr;
  int64_t batch = 0, tokens = 0, heads = 0, head_dim = 0, tokens_per_frame = 0, grid_w = 0;
  double rope_theta = 10000.0;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  uintptr_t stream = 0;
};

// Attention of a chunk's (already rotated) queries over the first `keys` tokens of one layer's ring:
// out = softmax(q k^T * scale) v, no mask (SPEC §2.2), online softmax in fp32, no workspace.
// q, out [batch, q_tokens, heads, head_dim] in the cache dtype.
struct RingAttentionParams {
  CacheGeometry g;
  const void* kv = nullptr;
  const void* q = nullptr;
  void* out = nullptr;
  int64_t layer = 0, q_tokens = 0, keys = 0;
  float scale = 1.0f;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  uintptr_t stream = 0;
};

}  // namespace rfrt
