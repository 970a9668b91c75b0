// CUDA implementations of the cache kernels: the math of csrc/cpu/cache_ops.cpp (shared through rfrt/rope.h,
// rfrt/ema.h and rfrt/dispatch.h). Positions are read from the device-side cursor and the RoPE (cos, sin)
// come from the cache's tables (the per-chunk time rows are filled on the device by rope_time_rows_kernel),
// so every launch is capturable in a CUDA graph and replayable for every chunk. Launchers
// (csrc/launch.cpp) have validated all sizes before we get here.
//
// Indexing. Write and fold use a 3-D grid: x = (head, pair) within a token row, y = token, z = batch (and
// layer for the fold); per-thread offsets are 32-bit (a row is heads * head_dim <= 2^31 elements and a
// layer's K is < 2^31 elements at every supported geometry; the launcher computes the 64-bit layer bases).
// Each thread moves one adjacent pair with a single 4-byte (bf16x2 / half2) or 8-byte (float2) access.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "rfrt/dispatch.h"
#include "rfrt/ema.h"
#include "rfrt/launch.h"
#include "rfrt/rope.h"

namespace rfrt::cuda {
namespace {

__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const __nv_bfloat16* p) { return __bfloat162float(*p); }
__device__ __forceinline__ float load(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ void store(float* p, float x) { *p = x; }
__device__ __forceinline__ void store(__nv_bfloat16* p, float x) { *p = __float2bfloat16_rn(x); }
__device__ __forceinline__ void store(__half* p, float x) { *p = __float2half_rn(x); }

// One adjacent pair in one access (pairs start at even elements, so the address is 2*sizeof(T) aligned).
__device__ __forceinline__ float2 load2(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 load2(const __nv_bfloat16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
__device__ __forceinline__ float2 load2(const __half* p) { return __half22float2(*reinterpret_cast<const __half2*>(p)); }
__device__ __forceinline__ void store2(float* p, float2 x) { *reinterpret_cast<float2*>(p) = x; }
__device__ __forceinline__ void store2(__nv_bfloat16* p, float2 x) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __float22bfloat162_rn(x);
}
__device__ __forceinline__ void store2(__half* p, float2 x) { *reinterpret_cast<__half2*>(p) = __float22half2_rn(x); }
template <typename T>
__device__ __forceinline__ void copy2(const T* src, T* dst) {
  if constexpr (sizeof(T) == 4) {
    *reinterpret_cast<float2*>(dst) = *reinterpret_cast<const float2*>(src);
  } else {
    *reinterpret_cast<uint32_t*>(dst) = *reinterpret_cast<const uint32_t*>(src);
  }
}

template <typename A>
struct Round {
  __device__ static float apply(float x) {
    A t;
    store(&t, x);
    return load(&t);
  }
};

__device__ __forceinline__ float2 rotate(float2 x, float c, float s) {
  float2 y;
  rotate_pair(x.x, x.y, c, s, &y.x, &y.y);
  return y;
}

__device__ __forceinline__ void flag(int32_t* error, int32_t bit) {
  if (error && blockIdx.x == 0 && blockIdx.y == 0 && blockIdx.z == 0 && threadIdx.x == 0) atomicOr(error, bit);
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("rfrt: ") + what + ": " + cudaGetErrorString(e));
}

// Launch on the device the tensors live on, whatever device is current, and restore it afterwards.
class DeviceGuard {
 public:
  explicit DeviceGuard(int32_t index) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != index) check(cudaSetDevice(index), "cudaSetDevice");
    switched_ = prev_ != index;
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(prev_);
  }

 private:
  int prev_ = 0;
  bool switched_ = false;
};

constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }
cudaStream_t stream_of(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// 32-bit sizes of one launch, computed once on the host.
struct Dims {
  int32_t pairs_per_row, half, time_pairs, space_pairs, tpf, row;
};
Dims dims_of(const CacheGeometry& g, int64_t grid_y, int64_t grid_z) {
  // The 32-bit per-thread offsets and the grid's y/z extents must hold at this geometry.
  if (g.batch * g.window_tokens * g.heads * g.head_dim >= (int64_t(1) << 31))
    throw std::invalid_argument("rfrt: one layer of the cache exceeds 2^31 elements (32-bit kernel offsets)");
  if (grid_y > 65535 || grid_z > 65535)
    throw std::invalid_argument("rfrt: more than 65535 tokens per chunk or layers*batch for one launch");
  const RopeAxes a = rope_axes(int32_t(g.head_dim));
  return Dims{int32_t(g.heads * g.head_dim / 2), int32_t(g.head_dim / 2), a.time, a.h + a.w,
              int32_t(g.tokens_per_frame), int32_t(g.heads * g.head_dim)};
}

// Time rows: one thread per (row, time pair). fp64 pow/cos/sin here only, a few hundred threads per chunk.
__global__ void rope_time_rows_kernel(RopeTimeParams p, int32_t time_pairs) {
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  const int32_t rows = int32_t(p.write_frames + 2 * p.sink_frames);
  if (i >= rows * time_pairs) return;
  const int32_t r = i / time_pairs, j = i % time_pairs, wf = int32_t(p.write_frames), sf = int32_t(p.sink_frames);
  const int64_t pos = r < wf ? p.write_cursor[1] + r : r < wf + sf ? p.fold_cursor[1] + (r - wf) : p.fold_cursor[2] + (r - wf - sf);
  rope_time_pair(j, pos, int32_t(p.head_dim), p.rope_theta, p.rope_time + 2 * i);
}

// Q rotation + K rotation/write + V copy (+ sink seeding on chunk 0) of one layer.
// grid (ceil(pairs_per_row / kThreads), chunk_tokens, batch).
template <typename T, typename A>
__global__ void cache_write_kernel(CacheWriteParams p, Dims d, T* kc, T* vc, A* ka, A* va) {
  const int32_t hj = blockIdx.x * blockDim.x + threadIdx.x;
  if (hj >= d.pairs_per_row) return;
  const int32_t t = blockIdx.y, b = blockIdx.z, chunk = int32_t(p.chunk_tokens);
  const int32_t j = hj % d.half, e = 2 * hj;  // element offset in the row: h*head_dim + 2j == 2*hj
  const float2 cs = *reinterpret_cast<const float2*>(
      j < d.time_pairs ? p.rope_time + 2 * ((t / d.tpf) * d.time_pairs + j)
                       : p.rope_space + 2 * ((t % d.tpf) * d.space_pairs + (j - d.time_pairs)));
  const int32_t src = (b * chunk + t) * d.row + e;
  store2(static_cast<T*>(p.q_out) + src, rotate(load2(static_cast<const T*>(p.q) + src), cs.x, cs.y));
  const int64_t slot = p.cursor[0];
  const CacheGeometry& g = p.g;
  if (slot < 0 || slot % d.tpf != 0 || slot + chunk > g.window_tokens ||
      (slot < g.sink_tokens && slot + chunk > g.sink_tokens)) {
    flag(p.error, RFRT_ERR_WRITE_CURSOR);  // refuse: never write outside the ring
    return;
  }
  const float2 k = load2(static_cast<const T*>(p.k) + src);
  const int32_t dst = (b * int32_t(g.window_tokens) + int32_t(slot) + t) * d.row + e;
  store2(kc + dst, rotate(k, cs.x, cs.y));
  copy2(static_cast<const T*>(p.v) + src, vc + dst);
  if (slot < g.sink_tokens) {  // chunk 0 seeds the EMA accumulator with its unrotated K/V
    const int32_t a = (b * int32_t(g.sink_tokens) + int32_t(slot) + t) * d.row + e;
    store(ka + a, k.x);
    store(ka + a + 1, k.y);
    const float2 v = load2(static_cast<const T*>(p.v) + src);
    store(va + a, v.x);
    store(va + a + 1, v.y);
  }
}

// EMA fold of one (layer, batch, sink token, head, pair): read evicted, fold, write the re-rotated sink.
// grid (ceil(pairs_per_row / kThreads), sink_tokens, layers * batch); bases are per layer*batch (64-bit host
// math folded into the per-(l,b) stride products below, each < 2^31 elements).
template <typename T, typename A>
__global__ void sink_fold_kernel(SinkFoldParams p, Dims d) {
  const int32_t hj = blockIdx.x * blockDim.x + threadIdx.x;
  if (hj >= d.pairs_per_row) return;
  const CacheGeometry& g = p.g;
  const int64_t ev_slot = p.cursor[0];
  if (ev_slot < g.sink_tokens || ev_slot + g.sink_tokens > g.window_tokens) {
    flag(p.error, RFRT_ERR_FOLD_CURSOR);
    return;
  }
  const int32_t t = blockIdx.y, lb = blockIdx.z, l = lb / int32_t(g.batch), b = lb % int32_t(g.batch);
  const int32_t j = hj % d.half, e = 2 * hj, frame = t / d.tpf, sink_frames = int32_t(g.sink_tokens) / d.tpf;
  const int64_t layer_stride = g.batch * g.window_tokens * d.row, acc_layer_stride = g.batch * g.sink_tokens * d.row;
  T* kc = static_cast<T*>(p.kv) + l * layer_stride + int64_t(b) * g.window_tokens * d.row;
  T* vc = kc + g.layers * layer_stride;
  A* ka = static_cast<A*>(p.sink_acc) + l * acc_layer_stride + int64_t(b) * g.sink_tokens * d.row;
  A* va = ka + g.layers * acc_layer_stride;
  const bool is_time = j < d.time_pairs;
  const int32_t space_at = 2 * ((t % d.tpf) * d.space_pairs + (j - d.time_pairs));
  const int32_t wf = int32_t(p.write_frames);
  const float2 ev_cs = *reinterpret_cast<const float2*>(
      is_time ? p.rope_time + 2 * ((wf + frame) * d.time_pairs + j) : p.rope_space + space_at);
  const float2 sk_cs = *reinterpret_cast<const float2*>(
      is_time ? p.rope_time + 2 * ((wf + sink_frames + frame) * d.time_pairs + j) : p.rope_space + space_at);
  const int32_t ev = (int32_t(ev_slot) + t) * d.row + e, s_off = t * d.row + e;
  const float alpha = float(p.alpha), oma = float(1.0 - p.alpha);
  const bool ref_round = p.acc_dtype != DType::F32;
  const float2 ek = rotate(load2(kc + ev), ev_cs.x, -ev_cs.y);  // un-rotate from its stored position
  const float a0 = ema<Round<A>>(load(ka + s_off), ek.x, alpha, oma, ref_round);
  const float a1 = ema<Round<A>>(load(ka + s_off + 1), ek.y, alpha, oma, ref_round);
  store(ka + s_off, a0);
  store(ka + s_off + 1, a1);
  const float2 ev_v = load2(vc + ev);
  store(va + s_off, ema<Round<A>>(load(va + s_off), ev_v.x, alpha, oma, ref_round));
  store(va + s_off + 1, ema<Round<A>>(load(va + s_off + 1), ev_v.y, alpha, oma, ref_round));
  store2(vc + s_off, make_float2(load(va + s_off), load(va + s_off + 1)));
  // the sink's K (read back from the accumulator's storage type, as the CPU path does), rotated to sit just
  // before the window
  store2(kc + s_off, rotate(make_float2(load(ka + s_off), load(ka + s_off + 1)), sk_cs.x, sk_cs.y));
}

// Self-contained rope_apply (no tables, off the cache's hot path): one thread per (batch, token, head, pair).
template <typename T>
__global__ void rope_apply_kernel(RopeApplyParams p) {
  const int64_t half = p.head_dim / 2;
  const int64_t n = p.batch * p.tokens * p.heads * half;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % half, t = (i / (half * p.heads)) % p.tokens, in_frame = t % p.tokens_per_frame;
    float c, s;
    rope_cos_sin(rope_angle(int32_t(j), p.cursor[0] + t / p.tokens_per_frame, in_frame / p.grid_w,
                            in_frame % p.grid_w, int32_t(p.head_dim), p.rope_theta), &c, &s);
    store2(static_cast<T*>(p.out) + 2 * i, rotate(load2(static_cast<const T*>(p.x) + 2 * i), c, s));
  }
}

// One warp per (batch, query, head); lanes split head_dim; online softmax in fp32. A correctness-first
// kernel: the fast path on Hopper is SDPA (FlashAttention / cuDNN) on the same buffer (SPEC §2.3, option b).
constexpr int kMaxPerLane = 16;  // head_dim <= 512
template <typename T>
__global__ void ring_attention_kernel(RingAttentionParams p) {
  const CacheGeometry& g = p.g;
  const int64_t row = g.heads * g.head_dim, layer_stride = g.batch * g.window_tokens * row;
  const int64_t warp = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (warp >= g.batch * p.q_tokens * g.heads) return;
  const int64_t h = warp % g.heads, i = (warp / g.heads) % p.q_tokens, b = warp / (g.heads * p.q_tokens);
  const T* q = static_cast<const T*>(p.q) + (b * p.q_tokens + i) * row + h * g.head_dim;
  const T* kc = static_cast<const T*>(p.kv) + p.layer * layer_stride + b * g.window_tokens * row + h * g.head_dim;
  const T* vc = kc + g.layers * layer_stride;
  float qf[kMaxPerLane], acc[kMaxPerLane];
  int n = 0;
  for (int64_t d = lane; d < g.head_dim; d += 32, ++n) { qf[n] = load(q + d) * p.scale; acc[n] = 0.f; }
  float m = -INFINITY, denom = 0.f;
  for (int64_t jk = 0; jk < p.keys; ++jk) {
    float s = 0.f;
    int u = 0;
    for (int64_t d = lane; d < g.head_dim; d += 32, ++u) s += qf[u] * load(kc + jk * row + d);
    for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
    const float m_new = fmaxf(m, s), corr = __expf(m - m_new), w = __expf(s - m_new);
    denom = denom * corr + w;
    u = 0;
    for (int64_t d = lane; d < g.head_dim; d += 32, ++u) acc[u] = acc[u] * corr + w * load(vc + jk * row + d);
    m = m_new;
  }
  T* out = static_cast<T*>(p.out) + (b * p.q_tokens + i) * row + h * g.head_dim;
  int u = 0;
  for (int64_t d = lane; d < g.head_dim; d += 32, ++u) store(out + d, acc[u] / denom);
}

template <typename Fn>
void with_type(DType t, const char* what, Fn&& fn) { dispatch<float, __nv_bfloat16, __half>(t, what, fn); }

}  // namespace

bool available() { return true; }

std::string architectures() { return RFRT_CUDA_ARCHS; }

void cache_write(const CacheWriteParams& p) {
  DeviceGuard guard(p.device_index);
  const Dims d = dims_of(p.g, p.chunk_tokens, p.g.batch);
  const dim3 grid((d.pairs_per_row + kThreads - 1) / kThreads, unsigned(p.chunk_tokens), unsigned(p.g.batch));
  const int64_t layer_stride = p.g.batch * p.g.window_tokens * d.row, acc_stride = p.g.batch * p.g.sink_tokens * d.row;
  with_type(p.cache_dtype, "cache", [&](auto tt) {
    with_type(p.acc_dtype, "sink accumulator", [&](auto at) {
      using T = typename decltype(tt)::type;
      using A = typename decltype(at)::type;
      T* kc = static_cast<T*>(p.kv) + p.layer * layer_stride;
      A* ka = static_cast<A*>(p.sink_acc) + p.layer * acc_stride;
      cache_write_kernel<T, A><<<grid, kThreads, 0, stream_of(p.stream)>>>(
          p, d, kc, kc + p.g.layers * layer_stride, ka, ka + p.g.layers * acc_stride);
    });
  });
  check(cudaGetLastError(), "cache_write launch");
}

void rope_time_rows(const RopeTimeParams& p) {
  DeviceGuard guard(p.device_index);
  const int32_t tp = rope_axes(int32_t(p.head_dim)).time;
  rope_time_rows_kernel<<<blocks_for((p.write_frames + 2 * p.sink_frames) * tp), kThreads, 0, stream_of(p.stream)>>>(p, tp);
  check(cudaGetLastError(), "rope_time_rows launch");
}

void sink_fold(const SinkFoldParams& p) {
  DeviceGuard guard(p.device_index);
  const Dims d = dims_of(p.g, p.g.sink_tokens, p.g.layers * p.g.batch);
  const dim3 grid((d.pairs_per_row + kThreads - 1) / kThreads, unsigned(p.g.sink_tokens),
                  unsigned(p.g.layers * p.g.batch));
  with_type(p.cache_dtype, "cache", [&](auto tt) {
    with_type(p.acc_dtype, "sink accumulator", [&](auto at) {
      sink_fold_kernel<typename decltype(tt)::type, typename decltype(at)::type>
          <<<grid, kThreads, 0, stream_of(p.stream)>>>(p, d);
    });
  });
  check(cudaGetLastError(), "sink_fold launch");
}

void rope_apply(const RopeApplyParams& p) {
  DeviceGuard guard(p.device_index);
  const int64_t n = p.batch * p.tokens * p.heads * (p.head_dim / 2);
  with_type(p.dtype, "rope input", [&](auto tt) {
    rope_apply_kernel<typename decltype(tt)::type><<<blocks_for(n), kThreads, 0, stream_of(p.stream)>>>(p);
  });
  check(cudaGetLastError(), "rope_apply launch");
}

void ring_attention(const RingAttentionParams& p) {
  DeviceGuard guard(p.device_index);
  const int64_t warps = p.g.batch * p.q_tokens * p.g.heads;
  with_type(p.dtype, "attention", [&](auto tt) {
    ring_attention_kernel<typename decltype(tt)::type>
        <<<blocks_for(warps * 32), kThreads, 0, stream_of(p.stream)>>>(p);
  });
  check(cudaGetLastError(), "ring_attention launch");
}

}  // namespace rfrt::cuda
