// CUDA implementations of the cache kernels: the math of csrc/cpu/cache_ops.cpp, one thread per rotated pair.
// Positions are read from the device-side cursor, so launches are capturable in a CUDA graph and replayable for
// every chunk. Launchers (csrc/launch.cpp) have validated all sizes before we get here.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

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

template <typename T>
__device__ __forceinline__ float round_to(float x) {
  T t;
  store(&t, x);
  return load(&t);
}

__device__ __forceinline__ void pair_rotation(int32_t j, int64_t time_pos, int64_t in_frame, int64_t grid_w,
                                              int32_t head_dim, double theta, float* c, float* s) {
  double sd, cd;
  sincos(rope_angle(j, time_pos, in_frame / grid_w, in_frame % grid_w, head_dim, theta), &sd, &cd);
  *c = static_cast<float>(cd);
  *s = static_cast<float>(sd);
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("rfrt: ") + what + ": " + cudaGetErrorString(e));
}

constexpr int kThreads = 256;
inline unsigned blocks_for(int64_t n) { return static_cast<unsigned>((n + kThreads - 1) / kThreads); }

// One thread per (batch, token, head, pair).
template <typename T>
__global__ void rope_apply_kernel(RopeApplyParams p) {
  const int64_t half = p.head_dim / 2;
  const int64_t n = p.batch * p.tokens * p.heads * half;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % half, t = (i / (half * p.heads)) % p.tokens;
    float c, s, y0, y1;
    pair_rotation(int32_t(j), p.cursor[0] + t / p.tokens_per_frame, t % p.tokens_per_frame, p.grid_w,
                  int32_t(p.head_dim), p.rope_theta, &c, &s);
    const T* x = static_cast<const T*>(p.x) + 2 * i;
    rotate_pair(load(x), load(x + 1), c, s, &y0, &y1);
    T* out = static_cast<T*>(p.out) + 2 * i;
    store(out, y0);
    store(out + 1, y1);
  }
}

template <typename T, typename A>
__global__ void cache_write_kernel(CacheWriteParams p) {
  const CacheGeometry& g = p.g;
  const int64_t half = g.head_dim / 2, row = g.heads * g.head_dim;
  const int64_t n = g.batch * p.chunk_tokens * g.heads * half;
  const int64_t slot = p.cursor[0], time_pos = p.cursor[1];
  if (slot < 0 || slot + p.chunk_tokens > g.window_tokens) return;  // the host checked; never write past the ring
  const int64_t layer_stride = g.batch * g.window_tokens * row, acc_layer_stride = g.batch * g.sink_tokens * row;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % half, h = (i / half) % g.heads, t = (i / (half * g.heads)) % p.chunk_tokens;
    const int64_t b = i / (half * g.heads * p.chunk_tokens);
    const int64_t src = (b * p.chunk_tokens + t) * row + h * g.head_dim + 2 * j;
    const int64_t dst = p.layer * layer_stride + (b * g.window_tokens + slot + t) * row + h * g.head_dim + 2 * j;
    const T* k = static_cast<const T*>(p.k) + src;
    const T* v = static_cast<const T*>(p.v) + src;
    T* kc = static_cast<T*>(p.kv) + dst;
    T* vc = static_cast<T*>(p.kv) + g.layers * layer_stride + dst;
    float c, s, y0, y1;
    pair_rotation(int32_t(j), time_pos + t / g.tokens_per_frame, t % g.tokens_per_frame, g.grid_w,
                  int32_t(g.head_dim), g.rope_theta, &c, &s);
    const float k0 = load(k), k1 = load(k + 1);
    rotate_pair(k0, k1, c, s, &y0, &y1);
    store(kc, y0);
    store(kc + 1, y1);
    vc[0] = v[0];
    vc[1] = v[1];
    if (slot < g.sink_tokens) {  // chunk 0 seeds the EMA accumulator with its unrotated K/V
      const int64_t a = p.layer * acc_layer_stride + (b * g.sink_tokens + slot + t) * row + h * g.head_dim + 2 * j;
      A* ka = static_cast<A*>(p.sink_acc) + a;
      A* va = static_cast<A*>(p.sink_acc) + g.layers * acc_layer_stride + a;
      store(ka, k0);
      store(ka + 1, k1);
      store(va, load(v));
      store(va + 1, load(v + 1));
    }
  }
}

template <typename A>
__device__ __forceinline__ float ema(float acc, float x, float alpha, float oma, bool ref_round) {
  if (!ref_round) return alpha * acc + oma * x;
  return round_to<A>(round_to<A>(alpha * acc) + round_to<A>(oma * x));
}

// One thread per (layer, batch, sink token, head, pair): read evicted, fold, write the re-rotated sink.
template <typename T, typename A>
__global__ void sink_fold_kernel(SinkFoldParams p) {
  const CacheGeometry& g = p.g;
  const int64_t half = g.head_dim / 2, row = g.heads * g.head_dim;
  const int64_t n = g.layers * g.batch * g.sink_tokens * g.heads * half;
  const int64_t ev_slot = p.cursor[0], ev_pos = p.cursor[1], sink_pos = p.cursor[2];
  if (ev_slot < g.sink_tokens || ev_slot + g.sink_tokens > g.window_tokens) return;
  const float alpha = float(p.alpha), oma = float(1.0 - p.alpha);
  const bool ref_round = p.acc_dtype != DType::F32;
  const int64_t layer_stride = g.batch * g.window_tokens * row, acc_layer_stride = g.batch * g.sink_tokens * row;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = i % half, h = (i / half) % g.heads, t = (i / (half * g.heads)) % g.sink_tokens;
    const int64_t b = (i / (half * g.heads * g.sink_tokens)) % g.batch;
    const int64_t l = i / (half * g.heads * g.sink_tokens * g.batch);
    const int64_t in_frame = t % g.tokens_per_frame, frame = t / g.tokens_per_frame, col = h * g.head_dim + 2 * j;
    T* kc = static_cast<T*>(p.kv) + l * layer_stride + b * g.window_tokens * row;
    T* vc = kc + g.layers * layer_stride;
    A* ka = static_cast<A*>(p.sink_acc) + l * acc_layer_stride + b * g.sink_tokens * row;
    A* va = ka + g.layers * acc_layer_stride;
    const int64_t e = (ev_slot + t) * row + col, s_off = t * row + col;
    float c, s, e0, e1, y0, y1;
    pair_rotation(int32_t(j), ev_pos + frame, in_frame, g.grid_w, int32_t(g.head_dim), g.rope_theta, &c, &s);
    rotate_pair(load(kc + e), load(kc + e + 1), c, -s, &e0, &e1);
    const float a0 = ema<A>(load(ka + s_off), e0, alpha, oma, ref_round);
    const float a1 = ema<A>(load(ka + s_off + 1), e1, alpha, oma, ref_round);
    store(ka + s_off, a0);
    store(ka + s_off + 1, a1);
    for (int d = 0; d < 2; ++d) {
      store(va + s_off + d, ema<A>(load(va + s_off + d), load(vc + e + d), alpha, oma, ref_round));
      store(vc + s_off + d, load(va + s_off + d));
    }
    pair_rotation(int32_t(j), sink_pos + frame, in_frame, g.grid_w, int32_t(g.head_dim), g.rope_theta, &c, &s);
    rotate_pair(load(ka + s_off), load(ka + s_off + 1), c, s, &y0, &y1);
    store(kc + s_off, y0);
    store(kc + s_off + 1, y1);
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

cudaStream_t stream_of(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

template <typename T, typename A>
void launch_write(const CacheWriteParams& p) {
  const int64_t n = p.g.batch * p.chunk_tokens * p.g.heads * (p.g.head_dim / 2);
  cache_write_kernel<T, A><<<blocks_for(n), kThreads, 0, stream_of(p.stream)>>>(p);
  check(cudaGetLastError(), "cache_write launch");
}

template <typename T, typename A>
void launch_fold(const SinkFoldParams& p) {
  const int64_t n = p.g.layers * p.g.batch * p.g.sink_tokens * p.g.heads * (p.g.head_dim / 2);
  sink_fold_kernel<T, A><<<blocks_for(n), kThreads, 0, stream_of(p.stream)>>>(p);
  check(cudaGetLastError(), "sink_fold launch");
}

template <typename T>
void launch_rope(const RopeApplyParams& p) {
  const int64_t n = p.batch * p.tokens * p.heads * (p.head_dim / 2);
  rope_apply_kernel<T><<<blocks_for(n), kThreads, 0, stream_of(p.stream)>>>(p);
  check(cudaGetLastError(), "rope_apply launch");
}

template <typename T>
void launch_attention(const RingAttentionParams& p) {
  const int64_t warps = p.g.batch * p.q_tokens * p.g.heads;
  ring_attention_kernel<T><<<blocks_for(warps * 32), kThreads, 0, stream_of(p.stream)>>>(p);
  check(cudaGetLastError(), "ring_attention launch");
}

template <typename T, template <typename, typename> class L, typename P>
void with_acc(const P& p) {
  switch (p.acc_dtype) {
    case DType::F32: return L<T, float>::run(p);
    case DType::BF16: return L<T, __nv_bfloat16>::run(p);
    case DType::F16: return L<T, __half>::run(p);
  }
}
template <typename T, typename A> struct Write { static void run(const CacheWriteParams& p) { launch_write<T, A>(p); } };
template <typename T, typename A> struct Fold { static void run(const SinkFoldParams& p) { launch_fold<T, A>(p); } };

}  // namespace

bool available() { return true; }

std::string architectures() { return RFRT_CUDA_ARCHS; }

void cache_write(const CacheWriteParams& p) {
  switch (p.cache_dtype) {
    case DType::F32: return with_acc<float, Write>(p);
    case DType::BF16: return with_acc<__nv_bfloat16, Write>(p);
    case DType::F16: return with_acc<__half, Write>(p);
  }
}

void sink_fold(const SinkFoldParams& p) {
  switch (p.cache_dtype) {
    case DType::F32: return with_acc<float, Fold>(p);
    case DType::BF16: return with_acc<__nv_bfloat16, Fold>(p);
    case DType::F16: return with_acc<__half, Fold>(p);
  }
}

void rope_apply(const RopeApplyParams& p) {
  switch (p.dtype) {
    case DType::F32: return launch_rope<float>(p);
    case DType::BF16: return launch_rope<__nv_bfloat16>(p);
    case DType::F16: return launch_rope<__half>(p);
  }
}

void ring_attention(const RingAttentionParams& p) {
  switch (p.dtype) {
    case DType::F32: return launch_attention<float>(p);
    case DType::BF16: return launch_attention<__nv_bfloat16>(p);
    case DType::F16: return launch_attention<__half>(p);
  }
}

}  // namespace rfrt::cuda
