// Launchers: check every size and pointer of a params struct, then dispatch by device. Errors are
// std::invalid_argument with a message that names the problem (pybind11 turns them into ValueError).
#include "rfrt/launch.h"

#include <stdexcept>
#include <string>

namespace rfrt {
namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("rfrt: " + what);
}

void check_dtype(DType t, const char* name) {
  require(t == DType::F32 || t == DType::BF16 || t == DType::F16, std::string(name) + " has an unsupported dtype");
}

void check_geometry(const CacheGeometry& g) {
  require(g.layers > 0 && g.batch > 0 && g.heads > 0, "cache layers, batch and heads must be positive");
  require(g.head_dim >= 6 && g.head_dim % 2 == 0 && g.head_dim <= 512,
          "head_dim must be even and in [6, 512], got " + std::to_string(g.head_dim));
  require(g.tokens_per_frame > 0 && g.grid_w > 0 && g.tokens_per_frame % g.grid_w == 0,
          "tokens_per_frame must be a positive multiple of grid_w");
  require(g.sink_tokens > 0 && g.sink_tokens % g.tokens_per_frame == 0, "sink_tokens must be whole frames");
  require(g.window_tokens > g.sink_tokens && g.window_tokens % g.tokens_per_frame == 0,
          "window_tokens must be whole frames and larger than the sink");
  require(g.rope_theta > 0.0, "rope_theta must be positive");
}

void check_device(Device d) {
  require(d == Device::CPU || d == Device::CUDA, "unknown device");
  if (d == Device::CUDA && !cuda::available())
    throw std::runtime_error("rfrt: this build of rfrt._C has no CUDA kernels (rebuild with a CUDA compiler)");
}

}  // namespace

void cache_write(const CacheWriteParams& p) {
  check_geometry(p.g);
  check_dtype(p.cache_dtype, "cache");
  check_dtype(p.acc_dtype, "sink accumulator");
  check_device(p.device);
  require(p.kv && p.sink_acc && p.q && p.q_out && p.k && p.v && p.cursor && p.rope_space && p.rope_time,
          "cache_write got a null pointer");
  require(p.layer >= 0 && p.layer < p.g.layers,
          "layer " + std::to_string(p.layer) + " is outside [0, " + std::to_string(p.g.layers) + ")");
  require(p.chunk_tokens > 0 && p.chunk_tokens % p.g.tokens_per_frame == 0,
          "chunk_tokens must be a positive number of whole frames");
  require(p.chunk_tokens <= p.g.window_tokens - p.g.sink_tokens || p.chunk_tokens == p.g.sink_tokens,
          "a chunk must fit the ring or be exactly the sink");
  if (p.device == Device::CPU && !p.error) {
    // Without an error flag a CPU caller gets the error at once. With one (the cache), the CPU kernel behaves
    // like the CUDA one, whose cursor lives in device memory: it refuses the write and sets the flag.
    const int64_t slot = p.cursor[0];
    require(slot >= 0 && slot % p.g.tokens_per_frame == 0, "write slot must be a frame boundary >= 0");
    require(slot + p.chunk_tokens <= p.g.window_tokens,
            "writing tokens [" + std::to_string(slot) + ", " + std::to_string(slot + p.chunk_tokens) +
                ") past the ring of " + std::to_string(p.g.window_tokens) + " tokens");
    require(slot >= p.g.sink_tokens || slot + p.chunk_tokens <= p.g.sink_tokens,
            "a chunk write may not straddle the sink and the ring");
  }
  return p.device == Device::CPU ? cpu::cache_write(p) : cuda::cache_write(p);
}

void rope_time_rows(const RopeTimeParams& p) {
  check_device(p.device);
  require(p.rope_time && p.write_cursor && p.fold_cursor, "rope_time_rows got a null pointer");
  require(p.write_frames > 0 && p.sink_frames > 0, "rope_time_rows needs positive frame counts");
  require(p.head_dim >= 6 && p.head_dim % 2 == 0 && p.head_dim <= 512, "head_dim must be even and in [6, 512]");
  require(p.rope_theta > 0.0, "rope_theta must be positive");
  return p.device == Device::CPU ? cpu::rope_time_rows(p) : cuda::rope_time_rows(p);
}

void sink_fold(const SinkFoldParams& p) {
  check_geometry(p.g);
  check_dtype(p.cache_dtype, "cache");
  check_dtype(p.acc_dtype, "sink accumulator");
  check_device(p.device);
  require(p.kv && p.sink_acc && p.cursor && p.rope_space && p.rope_time, "sink_fold got a null pointer");
  require(p.write_frames > 0, "sink_fold needs the table's write_frames");
  require(p.alpha >= 0.0 && p.alpha <= 1.0, "sink_ema_alpha must lie in [0, 1], got " + std::to_string(p.alpha));
  require(p.acc_dtype == DType::F32 || p.acc_dtype == p.cache_dtype,
          "the sink accumulator must be float32 or the cache dtype");
  if (p.device == Device::CPU && !p.error) {
    const int64_t slot = p.cursor[0];
    require(slot >= p.g.sink_tokens && slot + p.g.sink_tokens <= p.g.window_tokens,
            "evicted slot must lie inside the ring, after the sink");
  }
  return p.device == Device::CPU ? cpu::sink_fold(p) : cuda::sink_fold(p);
}

void rope_apply(const RopeApplyParams& p) {
  check_dtype(p.dtype, "rope input");
  check_device(p.device);
  require(p.x && p.out && p.cursor, "rope_apply got a null pointer");
  require(p.batch > 0 && p.tokens > 0 && p.heads > 0, "rope_apply sizes must be positive");
  require(p.head_dim >= 6 && p.head_dim % 2 == 0 && p.head_dim <= 512, "head_dim must be even and in [6, 512]");
  require(p.tokens_per_frame > 0 && p.grid_w > 0 && p.tokens_per_frame % p.grid_w == 0,
          "tokens_per_frame must be a positive multiple of grid_w");
  require(p.rope_theta > 0.0, "rope_theta must be positive");
  return p.device == Device::CPU ? cpu::rope_apply(p) : cuda::rope_apply(p);
}

void ring_attention(const RingAttentionParams& p) {
  // Attention reads only the buffer's shape: the sink/frame geometry does not matter to it.
  const CacheGeometry& g = p.g;
  require(g.layers > 0 && g.batch > 0 && g.heads > 0 && g.window_tokens > 0, "ring_attention sizes must be positive");
  require(g.head_dim > 0 && g.head_dim <= 512, "head_dim must be in (0, 512]");
  check_dtype(p.dtype, "attention");
  check_device(p.device);
  require(p.kv && p.q && p.out, "ring_attention got a null pointer");
  require(p.layer >= 0 && p.layer < p.g.layers, "layer outside the cache");
  require(p.q_tokens > 0, "ring_attention needs queries");
  require(p.keys > 0 && p.keys <= p.g.window_tokens,
          "keys " + std::to_string(p.keys) + " outside (0, " + std::to_string(p.g.window_tokens) + "]");
  return p.device == Device::CPU ? cpu::ring_attention(p) : cuda::ring_attention(p);
}

}  // namespace rfrt
