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
//
// RoPE tables (rope.h), fp32 (cos, sin) pairs from fp64 angles:
//   rope_space [tokens_per_frame, h_pairs + w_pairs, 2]  built once per cache
//   rope_time  [write_frames + 2 * sink_frames, time_pairs, 2]  filled per chunk from the cursors by
//              rope_time_rows: rows [0, write_frames) are the chunk's frames (write and query positions),
//              then sink_frames rows at the evicted chunk's positions, then sink_frames rows at the new sink's.
// Error flag: `error` (int32, optional) collects RFRT_ERR_* bits when a kernel refuses an out-of-range cursor
// instead of writing; the host reads it when it wants to know (RingCache.check()).
#pragma once
#include "common.h"

namespace rfrt {

enum ErrorBits : int32_t { RFRT_ERR_WRITE_CURSOR = 1, RFRT_ERR_FOLD_CURSOR = 2 };

struct CacheGeometry {
  int64_t layers = 0, batch = 0, heads = 0, head_dim = 0;
  int64_t window_tokens = 0, sink_tokens = 0, tokens_per_frame = 0, grid_w = 0;
  double rope_theta = 10000.0;
};

// Write one chunk's K (rotated at its position) and V into its slots of one layer, and rotate its queries
// (same positions) into q_out: one launch per layer for Q, K and V. When the slots are the sink's (chunk 0),
// the unrotated K/V also seed the EMA accumulator.
// cursor: [slot_token, time_pos] — first physical token of the chunk and the RoPE time position of its
// first frame (the time rows of rope_time must be those of cursor[1]).
struct CacheWriteParams {
  CacheGeometry g;
  void* kv = nullptr;
  void* sink_acc = nullptr;
  const void* q = nullptr;
  void* q_out = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const int64_t* cursor = nullptr;
  const float* rope_space = nullptr;
  const float* rope_time = nullptr;
  int32_t* error = nullptr;
  int64_t layer = 0, chunk_tokens = 0;
  DType cache_dtype = DType::F32, acc_dtype = DType::F32;
  Device device = Device::CPU;
  int32_t device_index = 0;
  uintptr_t stream = 0;
};

// Fill the chunk's time rows of rope_time (layout above) from the device cursors: write_cursor[1] + f,
// fold_cursor[1] + f and fold_cursor[2] + f. One tiny launch per chunk, inside the graph.
struct RopeTimeParams {
  float* rope_time = nullptr;
  const int64_t* write_cursor = nullptr;
  const int64_t* fold_cursor = nullptr;
  int64_t write_frames = 0, sink_frames = 0, head_dim = 0;
  double rope_theta = 10000.0;
  Device device = Device::CPU;
  int32_t device_index = 0;
  uintptr_t stream = 0;
};

// EMA-Sink fold over all layers, in place, one pass:
//   acc <- alpha*acc + (1-alpha)*evicted   (K un-rotated from its stored position first; V as is)
//   kv sink slots <- acc, K rotated to the new sink position.
// cursor: [evicted_slot_token, evicted_time_pos, new_sink_time_pos].
// round_like_reference: acc is in the cache dtype and each product/sum is rounded to it, as the reference's
// bf16 tensor expression does.
// rope_time rows [write_frames, write_frames + sink_frames) must hold evicted_time_pos + f, the next
// sink_frames rows new_sink_time_pos + f (rope_time_rows does this).
struct SinkFoldParams {
  CacheGeometry g;
  void* kv = nullptr;
  void* sink_acc = nullptr;
  const int64_t* cursor = nullptr;
  const float* rope_space = nullptr;
  const float* rope_time = nullptr;
  int64_t write_frames = 0;
  int32_t* error = nullptr;
  double alpha = 0.999;
  DType cache_dtype = DType::F32, acc_dtype = DType::F32;
  Device device = Device::CPU;
  int32_t device_index = 0;
  uintptr_t stream = 0;
};

// Rotate tokens [batch, tokens, heads, head_dim] (ordered frame, row, column) by Wan RoPE with time positions
// cursor[0] + token / tokens_per_frame. out may alias x. A self-contained op (no tables) for callers outside
// the cache; the cache's queries are rotated by the write kernel.
struct RopeApplyParams {
  const void* x = nullptr;
  void* out = nullptr;
  const int64_t* cursor = nullptr;
  int64_t batch = 0, tokens = 0, heads = 0, head_dim = 0, tokens_per_frame = 0, grid_w = 0;
  double rope_theta = 10000.0;
  DType dtype = DType::F32;
  Device device = Device::CPU;
  int32_t device_index = 0;
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
  int32_t device_index = 0;
  uintptr_t stream = 0;
};

}  // namespace rfrt
